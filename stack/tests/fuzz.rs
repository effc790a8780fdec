//! Property tests: random and mutated frames never panic the interface, every frame is counted
//! somewhere, and mutated connection states decode to an error or thaw safely.

use ds_stack::{Config, ConnState, Instant, Interface, TcpHandle};
use proptest::prelude::*;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn a_ip() -> Ipv6Addr {
    "fd00::1".parse().unwrap()
}
fn b_ip() -> Ipv6Addr {
    "fd00::2".parse().unwrap()
}

/// Two interfaces with an established connection, and every frame they exchanged to get there
/// (handshake, data, SACKs, NDP, echo, UDP, a fragmented datagram).
struct Fixture {
    a: Interface,
    b: Interface,
    now: Instant,
    frames: Vec<Vec<u8>>,
    conn_a: TcpHandle,
    conn_b: TcpHandle,
}

fn exchange(a: &mut Interface, b: &mut Interface, now: Instant, log: &mut Vec<Vec<u8>>) {
    for _ in 0..200 {
        let mut fa = Vec::new();
        let mut fb = Vec::new();
        a.transmit(now, &mut |f: &[u8]| fa.push(f.to_vec()));
        b.transmit(now, &mut |f: &[u8]| fb.push(f.to_vec()));
        if fa.is_empty() && fb.is_empty() {
            return;
        }
        for f in &fa {
            b.receive(now, f);
        }
        for f in &fb {
            a.receive(now, f);
        }
        log.extend(fa);
        log.extend(fb);
    }
}

fn fixture() -> Fixture {
    let now = Instant::from_millis(5000);
    let mut a = Interface::new(Config::new(MAC_A, vec![a_ip()]), now);
    let mut b = Interface::new(Config::new(MAC_B, vec![b_ip()]), now);
    let mut frames = Vec::new();
    let l = b
        .tcp_listen(SocketAddrV6::new(b_ip(), 80, 0, 0), 4)
        .unwrap();
    let c = a
        .tcp_connect(
            now,
            SocketAddrV6::new(a_ip(), 0, 0, 0),
            SocketAddrV6::new(b_ip(), 80, 0, 0),
        )
        .unwrap();
    exchange(&mut a, &mut b, now, &mut frames);
    let s = b.tcp_accept(l).unwrap();
    a.tcp_send(c, &vec![0xab; 20_000]).unwrap();
    exchange(&mut a, &mut b, now, &mut frames);
    let ua = a.udp_bind(SocketAddrV6::new(a_ip(), 7000, 0, 0)).unwrap();
    let _ub = b.udp_bind(SocketAddrV6::new(b_ip(), 7001, 0, 0)).unwrap();
    a.udp_send_to(now, ua, &[1u8; 3000], SocketAddrV6::new(b_ip(), 7001, 0, 0))
        .unwrap();
    a.udp_send_to(now, ua, b"x", SocketAddrV6::new(b_ip(), 9, 0, 0))
        .unwrap();
    exchange(&mut a, &mut b, now, &mut frames);
    frames.extend(handmade());
    Fixture {
        a,
        b,
        now,
        frames,
        conn_a: c,
        conn_b: s,
    }
}

/// IPv6 packets with extension headers our own stack never sends.
fn handmade() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let eth = |payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(payload);
        f
    };
    let ip6 = |nh: u8, body: &[u8]| {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.push(nh);
        p.push(64);
        p.extend_from_slice(&a_ip().octets());
        p.extend_from_slice(&b_ip().octets());
        p.extend_from_slice(body);
        p
    };
    // Hop-by-hop with an unknown "discard + ICMP" option, then No Next Header.
    out.push(eth(&ip6(0, &[59, 0, 0x87, 2, 0, 0, 1, 0])));
    // Destination options with a Home Address option (no hook: discard).
    let mut hao = vec![59, 2, 201, 16];
    hao.extend_from_slice(&[0xfd; 16]);
    hao.extend_from_slice(&[1, 0]);
    out.push(eth(&ip6(60, &hao)));
    // Routing header type 0 with segments left (deprecated: Parameter Problem).
    let mut rh0 = vec![59, 2, 0, 1, 0, 0, 0, 0];
    rh0.extend_from_slice(&[0xfd; 16]);
    out.push(eth(&ip6(43, &rh0)));
    // Type 2 routing header.
    let mut rh2 = vec![59, 2, 2, 1, 0, 0, 0, 0];
    rh2.extend_from_slice(&b_ip().octets());
    out.push(eth(&ip6(43, &rh2)));
    // Mobility Header (no hook).
    out.push(eth(&ip6(
        135,
        &[59, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )));
    // A lone middle fragment.
    out.push(eth(&ip6(
        44,
        &[17, 0, 0, 9, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8],
    )));
    out
}

fn feed(iface: &mut Interface, now: Instant, f: &[u8]) {
    let before = iface.stats().clone();
    iface.receive(now, f);
    let after = iface.stats();
    assert_eq!(after.rx_frames, before.rx_frames + 1);
    assert!(
        after.rx_dispositions() > before.rx_dispositions(),
        "frame not counted anywhere: {f:02x?}"
    );
    iface.poll(now + Duration::from_millis(1));
    iface.transmit(now, &mut |_f: &[u8]| {});
}

/// XOR each flip's byte into its (non-empty `b`'s) position, then cut `b` where `cut` says.
fn mutate(
    b: &mut Vec<u8>,
    flips: Vec<(prop::sample::Index, u8)>,
    cut: Option<prop::sample::Index>,
) {
    for (i, v) in flips {
        let n = b.len();
        b[i.index(n)] ^= v;
    }
    if let Some(c) = cut {
        let n = c.index(b.len() + 1);
        b.truncate(n);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn mutated_frames_never_panic(pick in any::<prop::sample::Index>(),
                                  flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                                  cut in any::<Option<prop::sample::Index>>(),
                                  tail in prop::collection::vec(any::<u8>(), 0..16)) {
        let mut fx = fixture();
        let mut f = fx.frames[pick.index(fx.frames.len())].clone();
        mutate(&mut f, flips, cut);
        f.extend_from_slice(&tail);
        let now = fx.now;
        feed(&mut fx.b, now, &f);
        feed(&mut fx.a, now, &f);
        // The connection keeps working after whatever that was.
        let _ = fx.b.tcp_recv(fx.conn_b, &mut [0u8; 1024]);
    }

    /// A late copy of any frame either side sent (the handshake's, data, SACKs, ND, echo,
    /// UDP, a fragment), delivered again to the side it was for up to 2 s later, as a
    /// duplicate delayed in the network or a replay: the connection goes on both ways (RFC
    /// 5961: an old SYN gets a challenge ACK, old data and ACKs are duplicates).
    #[test]
    fn a_late_copy_of_any_frame_harms_the_connection_not(pick in any::<prop::sample::Index>(),
                                                         later in 0..2_000u64) {
        let mut fx = fixture();
        let f = fx.frames[pick.index(fx.frames.len())].clone();
        let mut now = fx.now + Duration::from_millis(later);
        // The 20,000 bytes sent while the fixture was made, read first.
        let mut buf = vec![0u8; 32 * 1024];
        while fx.b.tcp_recv(fx.conn_b, &mut buf).unwrap_or(0) > 0 {}
        if f.get(..6) == Some(&MAC_A[..]) {
            fx.a.receive(now, &f);
        } else {
            fx.b.receive(now, &f);
        }
        let mut log = Vec::new();
        for round in 0..3u8 {
            now += Duration::from_millis(10);
            fx.a.poll(now);
            fx.b.poll(now);
            fx.a.tcp_send(fx.conn_a, &[round; 100]).unwrap();
            fx.b.tcp_send(fx.conn_b, &[round ^ 0xff; 100]).unwrap();
            let mut to_b = Vec::new();
            let mut to_a = Vec::new();
            for _ in 0..20 {
                exchange(&mut fx.a, &mut fx.b, now, &mut log);
                while let Ok(n) = fx.b.tcp_recv(fx.conn_b, &mut buf) {
                    if n == 0 { break; }
                    to_b.extend_from_slice(&buf[..n]);
                }
                while let Ok(n) = fx.a.tcp_recv(fx.conn_a, &mut buf) {
                    if n == 0 { break; }
                    to_a.extend_from_slice(&buf[..n]);
                }
                if to_a.len() >= 100 && to_b.len() >= 100 { break; }
                now += Duration::from_millis(50);
                fx.a.poll(now);
                fx.b.poll(now);
            }
            prop_assert_eq!(&to_b, &vec![round; 100], "round {}", round);
            prop_assert_eq!(&to_a, &vec![round ^ 0xff; 100], "round {}", round);
        }
    }

    #[test]
    fn random_ipv6_frames_never_panic(nh in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..200), plen in any::<Option<u16>>()) {
        let mut fx = fixture();
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.unwrap_or(body.len() as u16).to_be_bytes());
        f.push(nh);
        f.push(255);
        f.extend_from_slice(&a_ip().octets());
        f.extend_from_slice(&b_ip().octets());
        f.extend_from_slice(&body);
        let now = fx.now;
        feed(&mut fx.b, now, &f);
    }

    #[test]
    fn random_bytes_never_panic(f in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut fx = fixture();
        let now = fx.now;
        feed(&mut fx.b, now, &f);
    }

    #[test]
    fn mutated_states_decode_or_fail_cleanly(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                                             cut in any::<Option<prop::sample::Index>>()) {
        let mut fx = fixture();
        let now = fx.now;
        let st = fx.b.tcp_freeze(now, fx.conn_b).unwrap();
        let mut bytes = st.encode();
        mutate(&mut bytes, flips, cut);
        if let Ok(st) = ConnState::decode(&bytes) {
            // Whatever decodes must thaw (or be refused) without panicking, and run.
            let mut other = Interface::new(Config::new([2, 0, 0, 0, 0, 9], vec![b_ip()]), now);
            if let Ok(h) = other.tcp_thaw(now, &st) {
                for i in 0..5u64 {
                    let t = now + Duration::from_millis(300 * i);
                    other.poll(t);
                    other.transmit(t, &mut |_f: &[u8]| {});
                    let _ = other.tcp_send(h, &[1, 2, 3]);
                    let _ = other.tcp_recv(h, &mut [0u8; 64]);
                }
            }
        }
    }
}

/// The ICMPv6 checksum of an Ethernet + IPv6 (no extension header) + ICMPv6 frame, computed
/// again after its addresses changed (RFC 4443 §2.3 over the RFC 8200 §8.1 pseudo-header).
fn fix_icmpv6_checksum(f: &mut [u8]) {
    let body = 14 + 40;
    f[body + 2] = 0;
    f[body + 3] = 0;
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&f[22..54]);
    add(&((f.len() - body) as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&f[body..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    f[body + 2..body + 4].copy_from_slice(&c.to_be_bytes());
}

/// Hostile input: neighbour solicitations for our address from 12,288 made-up on-link
/// sources, each with a link-layer option. Each creates a neighbour entry (RFC 4861
/// §7.2.3); the cache stays within its bound, and the connection keeps working.
#[test]
fn a_flood_of_neighbour_solicitations_stays_bounded() {
    let mut fx = fixture();
    let now = fx.now;
    // The solicitation `a` sent for `b` while the fixture connected.
    let ns = fx
        .frames
        .iter()
        .find(|f| f.len() > 54 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 135)
        .expect("a neighbour solicitation in the fixture's frames")
        .clone();
    let before = fx.b.neighbors().len();
    for i in 0..3 * ds_stack::ndp::MAX_ENTRIES as u32 {
        let mut f = ns.clone();
        // Source fd00::1:<i>: on the link, new each time.
        f[22 + 10..22 + 12].copy_from_slice(&[0, 1]);
        f[22 + 12..22 + 16].copy_from_slice(&i.to_be_bytes());
        fix_icmpv6_checksum(&mut f);
        fx.b.receive(now, &f);
        assert!(fx.b.neighbors().len() <= ds_stack::ndp::MAX_ENTRIES);
    }
    assert!(
        fx.b.neighbors().len() > before + ds_stack::ndp::MAX_ENTRIES / 2,
        "the solicitations were taken (else this tests nothing)"
    );
    // The connection still works both ways.
    fx.b.tcp_send(fx.conn_b, b"after the flood").unwrap();
    let mut log = Vec::new();
    exchange(&mut fx.a, &mut fx.b, now, &mut log);
    let mut buf = [0u8; 64];
    let n = fx.a.tcp_recv(fx.conn_a, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"after the flood");
}
