//! Interception for a home agent (RFC 6275 §10.4.1): an interface that proxies a home address
//! answers Neighbour Solicitations for it and hands the packets sent to it to the
//! application, which takes them into a buffer it reuses: the storage it gives back carries
//! the next intercepted packet, so forwarding costs no allocation per packet. Sans-IO, no root.

use ds_stack::{Config, Instant, Interface};
use std::net::{Ipv6Addr, SocketAddrV6};

const HA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1c, 0, 0, 0, 0, 0, 1);
const HOME: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1c, 0, 0, 0, 0, 0, 0x77);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1c, 0, 0, 0, 0, 0, 2);
/// The capacity that marks the buffer given back (no packet here needs as much).
const MARK: usize = 16 * 1024;

/// Frames both ways for a few milliseconds.
fn settle(ha: &mut Interface, client: &mut Interface, now: &mut Instant) {
    for _ in 0..5 {
        *now += std::time::Duration::from_millis(1);
        let (mut up, mut down) = (Vec::new(), Vec::new());
        client.poll(*now);
        client.transmit(*now, &mut |f| up.push(f.to_vec()));
        for f in up {
            ha.receive(*now, &f);
        }
        ha.poll(*now);
        ha.transmit(*now, &mut |f| down.push(f.to_vec()));
        for f in down {
            client.receive(*now, &f);
        }
    }
}

#[test]
fn intercepted_packets_land_in_storage_the_application_gave_back() {
    let mut now = Instant::from_millis(1);
    let mut ha = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![HA]), now);
    let mut client = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT]), now);
    ha.set_proxy(now, HOME, true);
    let u = client
        .udp_bind(SocketAddrV6::new(CLIENT, 5000, 0, 0))
        .expect("bind");
    let to = SocketAddrV6::new(HOME, 9, 0, 0);
    let mut buf = Vec::with_capacity(MARK);
    assert!(!ha.take_intercepted_into(&mut buf), "nothing yet");
    assert_eq!(buf.capacity(), MARK, "untouched when nothing waits");

    client.udp_send_to(now, u, b"first", to).expect("send");
    settle(&mut ha, &mut client, &mut now);
    assert!(ha.take_intercepted_into(&mut buf), "the first, intercepted");
    assert!(buf.ends_with(b"first"), "{buf:?}");
    assert!(buf.capacity() < MARK, "the first was queued in new storage");

    // The marked storage went to the interface: the next packet is queued in it.
    client.udp_send_to(now, u, b"second", to).expect("send");
    settle(&mut ha, &mut client, &mut now);
    assert!(
        ha.take_intercepted_into(&mut buf),
        "the second, intercepted"
    );
    assert!(buf.ends_with(b"second"), "{buf:?}");
    assert!(buf.capacity() >= MARK, "queued in the storage given back");
    assert!(!ha.take_intercepted_into(&mut buf));
    assert_eq!(ha.stats().intercepted, 2);
}
