//! Next-hop determination (RFC 4861 §5.2) with more-specific routes: a host between two
//! routers sends to each site through its own router, the rest through the default router,
//! and its own link directly. Seen as the Neighbour Solicitation each first packet needs:
//! its target is the next hop.

use ds_stack::iface::Route;
use ds_stack::{Config, Instant, Interface};
use std::net::{Ipv6Addr, SocketAddrV6};

const ME: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5d, 0, 0, 0, 0, 0, 0xc);
const R1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5d, 0, 0, 0, 0, 0, 1);
const R2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5d, 0, 0, 0, 0, 0, 2);
const R3: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5d, 0, 0, 0, 0, 0, 3);

/// The target of every Neighbour Solicitation (ICMPv6 type 135) in `frames`.
fn solicited(frames: &[Vec<u8>]) -> Vec<Ipv6Addr> {
    frames
        .iter()
        .filter(|f| f.len() >= 14 + 40 + 24 && f[12..14] == [0x86, 0xdd] && f[14 + 6] == 58)
        .filter(|f| f[14 + 40] == 135)
        .filter_map(|f| {
            let t: [u8; 16] = f[14 + 48..14 + 64].try_into().ok()?;
            Some(Ipv6Addr::from(t))
        })
        .collect()
}

/// The next hop towards `dst` under `cfg`: the target of the solicitation a connection
/// attempt to it sends.
fn next_hop(cfg: Config, dst: Ipv6Addr) -> Vec<Ipv6Addr> {
    let now = Instant::ZERO;
    let mut iface = Interface::new(cfg, now);
    iface
        .tcp_connect(
            now,
            SocketAddrV6::new(ME, 0, 0, 0),
            SocketAddrV6::new(dst, 80, 0, 0),
        )
        .expect("connect");
    let mut frames = Vec::new();
    iface.poll(now);
    iface.transmit(now, &mut |f| frames.push(f.to_vec()));
    solicited(&frames)
}

fn config(default: Option<Ipv6Addr>) -> Config {
    let mut cfg = Config::new([2, 0, 0, 0, 0, 0xc], vec![ME]);
    cfg.gateway = default;
    cfg.routes = vec![
        Route {
            prefix: "fd00:5d:2::".parse().unwrap(),
            len: 64,
            via: R2,
        },
        // A more specific route inside the first: it wins for its /80.
        Route {
            prefix: "fd00:5d:2:0:1::".parse().unwrap(),
            len: 80,
            via: R3,
        },
    ];
    cfg
}

#[test]
fn the_longest_matching_route_then_the_default_router_then_the_link() {
    let site2: Ipv6Addr = "fd00:5d:2::12".parse().unwrap();
    let inner: Ipv6Addr = "fd00:5d:2:0:1::9".parse().unwrap();
    let site1: Ipv6Addr = "fd00:5d:1::80".parse().unwrap();
    let on_link: Ipv6Addr = "fd00:5d::7".parse().unwrap();
    assert_eq!(next_hop(config(Some(R1)), site2), vec![R2]);
    assert_eq!(next_hop(config(Some(R1)), inner), vec![R3]);
    assert_eq!(next_hop(config(Some(R1)), site1), vec![R1]);
    assert_eq!(next_hop(config(Some(R1)), on_link), vec![on_link]);
    // No default router: what no route covers is taken to be on the link.
    assert_eq!(next_hop(config(None), site1), vec![site1]);
    assert_eq!(next_hop(config(None), site2), vec![R2]);
}

#[test]
fn a_prefix_covers_by_its_length_only() {
    let r = |len| Route {
        prefix: "fd00:5d:2:ffff::".parse().unwrap(),
        len,
        via: R2,
    };
    let a: Ipv6Addr = "fd00:5d:2::1".parse().unwrap();
    assert!(r(48).covers(&a));
    assert!(!r(64).covers(&a));
    assert!(r(0).covers(&a));
    assert!(r(128).covers(&"fd00:5d:2:ffff::".parse().unwrap()));
    assert!(!r(128).covers(&a));
    // Past 128 means 128.
    assert!(!r(200).covers(&a));
}

#[test]
fn a_neighbour_known_out_of_band_needs_no_solicitation() {
    let now = Instant::ZERO;
    let mut iface = Interface::new(config(Some(R1)), now);
    let r2_mac = [2, 0, 0, 0, 0, 2];
    iface.add_neighbour(now, R2, r2_mac);
    iface
        .tcp_connect(
            now,
            SocketAddrV6::new(ME, 0, 0, 0),
            SocketAddrV6::new("fd00:5d:2::12".parse().unwrap(), 80, 0, 0),
        )
        .expect("connect");
    let mut frames = Vec::new();
    iface.poll(now);
    iface.transmit(now, &mut |f| frames.push(f.to_vec()));
    assert_eq!(solicited(&frames), Vec::<Ipv6Addr>::new());
    // The SYN went straight to router 2's MAC.
    let syn = frames
        .iter()
        .find(|f| f.len() > 14 + 40 && f[14 + 6] == 6)
        .expect("a TCP segment");
    assert_eq!(syn[..6], r2_mac);
}
