//! Extension headers as the interface walks them, checked against `ds-mipv6`'s parser: both
//! must agree on what a packet carries.
//!
//! RFC 6275 §6.3: for each IPv6 packet header the Home Address option appears at most once. A
//! packet with a second one (in the same Destination Options header or in a second one) is
//! dropped before anyone is asked about a binding, exactly as `ParsedIpv6` refuses it.

use ds_mipv6::wire::{pseudo_checksum, DestOptsRepr, PacketBuilder, ParsedIpv6};
use ds_stack::hooks::{HaoVerdict, MhMeta, MobilityHook};
use ds_stack::{Config, Instant, Interface};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const IPPROTO_UDP: u8 = 17;
const IPPROTO_DSTOPTS: u8 = 60;
const IPV6_HEADER_LEN: usize = 40;

/// A mobile-node role that takes every Home Address option, counting the questions.
struct AcceptAll(Arc<AtomicUsize>);

impl MobilityHook for AcceptAll {
    fn on_mobility_header(&mut self, _: Instant, _: MhMeta, _: &[u8]) -> Option<Vec<Vec<u8>>> {
        Some(Vec::new())
    }

    fn on_home_address_option(&mut self, _: Instant, _: Ipv6Addr, _: Ipv6Addr) -> HaoVerdict {
        self.0.fetch_add(1, Ordering::SeqCst);
        HaoVerdict::Accept
    }

    fn on_type2_routing(&mut self, _: Instant, _: Ipv6Addr, _: Ipv6Addr) -> bool {
        false
    }
}

struct Node {
    iface: Interface,
    asked: Arc<AtomicUsize>,
    sock: ds_stack::UdpHandle,
}

const OURS: &str = "fd00::1";
const CARE_OF: &str = "fd00:c::9";
const HOME: &str = "fd00:d5::80";
const OTHER_HOME: &str = "fd00:d5::81";

fn node() -> Node {
    let mut cfg = Config::new([2, 0, 0, 0, 0, 1], vec![ip(OURS)]);
    cfg.correspondent = false;
    let mut iface = Interface::new(cfg, Instant::from_millis(0));
    let asked = Arc::new(AtomicUsize::new(0));
    iface.set_mobility_hook(Box::new(AcceptAll(asked.clone())));
    let sock = iface
        .udp_bind(SocketAddrV6::new(ip(OURS), 7000, 0, 0))
        .unwrap();
    Node { iface, asked, sock }
}

/// A UDP datagram from `HOME`:5000 to us:7000, checksummed for the home address (RFC 6275
/// §6.3: the pseudo-header uses the home address).
fn datagram() -> Vec<u8> {
    let mut udp = vec![0x13, 0x88, 0x1b, 0x58, 0, 12, 0, 0, b'h', b'a', b'o', b'!'];
    let c = pseudo_checksum(ip(HOME), ip(OURS), IPPROTO_UDP, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    udp
}

/// The datagram from the care-of address with one Home Address option.
fn with_one_hao() -> Vec<u8> {
    PacketBuilder::new(ip(CARE_OF), ip(OURS))
        .with_hao(ip(HOME))
        .payload(IPPROTO_UDP, &datagram())
}

/// Replace the extension headers of `with_one_hao()` by `ext` (its first header a
/// Destination Options header).
fn with_ext(ext: &[u8]) -> Vec<u8> {
    let one = with_one_hao();
    let udp = datagram();
    let mut p = one[..IPV6_HEADER_LEN].to_vec();
    let plen = (ext.len() + udp.len()) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p[6] = IPPROTO_DSTOPTS;
    p.extend_from_slice(ext);
    p.extend_from_slice(&udp);
    p
}

/// Feed `pkt`; returns whether the datagram reached the socket (and from where).
fn deliver(n: &mut Node, pkt: &[u8]) -> Option<SocketAddrV6> {
    n.iface.receive_ipv6(Instant::from_millis(1), pkt, None);
    let mut buf = [0u8; 64];
    n.iface
        .udp_recv_from(n.sock, &mut buf)
        .unwrap()
        .map(|(_, from)| from)
}

#[test]
fn one_home_address_option_is_honoured() {
    let mut n = node();
    let pkt = with_one_hao();
    assert_eq!(ParsedIpv6::parse(&pkt).unwrap().hao, Some(ip(HOME)));
    let from = deliver(&mut n, &pkt).expect("delivered");
    assert_eq!(*from.ip(), ip(HOME), "upper layers see the home address");
    assert_eq!(n.asked.load(Ordering::SeqCst), 1);
    assert_eq!(n.iface.stats().rx_bad_exthdr, 0);
}

#[test]
fn two_home_address_options_in_one_header_are_refused() {
    // PadN(4) HAO at 6, PadN(4) HAO at 30: both at 8n+6, only the count is wrong.
    let mut ext = vec![IPPROTO_UDP, 5, 1, 2, 0, 0, 201, 16];
    ext.extend_from_slice(&ip(HOME).octets());
    ext.extend_from_slice(&[1, 4, 0, 0, 0, 0, 201, 16]);
    ext.extend_from_slice(&ip(OTHER_HOME).octets());
    let pkt = with_ext(&ext);
    assert!(ParsedIpv6::parse(&pkt).is_err(), "ds-mipv6 refuses it");
    let mut n = node();
    assert_eq!(deliver(&mut n, &pkt), None, "the stack refuses it too");
    assert_eq!(n.iface.stats().rx_bad_exthdr, 1);
    assert_eq!(n.asked.load(Ordering::SeqCst), 0, "no binding is looked up");
}

#[test]
fn home_address_options_in_two_headers_are_refused() {
    // RFC 8200 §4.1 allows two Destination Options headers; the option still appears once.
    let mut ext = DestOptsRepr {
        next_header: IPPROTO_DSTOPTS,
        home: ip(HOME),
    }
    .emit()
    .to_vec();
    ext.extend_from_slice(
        &DestOptsRepr {
            next_header: IPPROTO_UDP,
            home: ip(HOME),
        }
        .emit(),
    );
    let pkt = with_ext(&ext);
    assert!(ParsedIpv6::parse(&pkt).is_err(), "ds-mipv6 refuses it");
    let mut n = node();
    assert_eq!(deliver(&mut n, &pkt), None, "the stack refuses it too");
    assert_eq!(n.iface.stats().rx_bad_exthdr, 1);
    assert_eq!(n.asked.load(Ordering::SeqCst), 0);
}

#[test]
fn a_misaligned_home_address_option_is_refused() {
    // Pad1 ×2 then the option at offset 4: §6.3 wants 8n+6.
    let mut ext = vec![IPPROTO_UDP, 2, 0, 0, 201, 16];
    ext.extend_from_slice(&ip(HOME).octets());
    ext.extend_from_slice(&[0, 0]);
    assert_eq!(ext.len(), 24);
    let pkt = with_ext(&ext);
    assert!(ParsedIpv6::parse(&pkt).is_err(), "ds-mipv6 refuses it");
    let mut n = node();
    assert_eq!(deliver(&mut n, &pkt), None, "the stack refuses it too");
    assert_eq!(n.asked.load(Ordering::SeqCst), 0);
}

const IPPROTO_FRAGMENT: u8 = 44;

/// `fragmentable` (its first header `first`) from fd00::9 to us in two fragments, the first
/// carrying 16 of its bytes (RFC 8200 §4.5).
fn in_two_fragments(first: u8, fragmentable: &[u8]) -> [Vec<u8>; 2] {
    let split = 16;
    let frag = |offset: usize, more: bool, part: &[u8]| {
        let mut p = PacketBuilder::new(ip("fd00::9"), ip(OURS)).payload(IPPROTO_FRAGMENT, &[]);
        let off_m = u16::try_from(offset).unwrap() | u16::from(more);
        p.extend_from_slice(&[first, 0]);
        p.extend_from_slice(&off_m.to_be_bytes());
        p.extend_from_slice(&0x5eed_u32.to_be_bytes());
        p.extend_from_slice(part);
        let plen = u16::try_from(p.len() - IPV6_HEADER_LEN).unwrap();
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    };
    [
        frag(0, true, &fragmentable[..split]),
        frag(split, false, &fragmentable[split..]),
    ]
}

/// A UDP datagram from fd00::9:5000 to us:7000 (24 bytes of data).
fn plain_datagram() -> Vec<u8> {
    let mut udp = vec![0x13, 0x88, 0x1b, 0x58, 0, 32, 0, 0];
    udp.extend_from_slice(b"behind a destination opts");
    udp.truncate(32);
    let c = pseudo_checksum(ip("fd00::9"), ip(OURS), IPPROTO_UDP, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    udp
}

/// RFC 8200 §4.5: the reassembled packet's extension headers are walked like any packet's. A
/// fragmented datagram whose fragmentable part starts with a Destination Options header
/// reaches its socket (it got a Parameter Problem before: the reassembled payload went to the
/// upper layer as if it began with UDP's header). A Fragment header inside a reassembled
/// packet is dropped and counted.
#[test]
fn extension_headers_after_a_fragment_header_are_walked() {
    let mut n = node();
    // Destination Options: UDP next, 8 octets, one PadN option of 4.
    let mut fragmentable = vec![IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0];
    fragmentable.extend_from_slice(&plain_datagram());
    let [f1, f2] = in_two_fragments(IPPROTO_DSTOPTS, &fragmentable);
    assert_eq!(deliver(&mut n, &f1), None, "the first fragment alone");
    let from = deliver(&mut n, &f2);
    assert_eq!(from, Some(SocketAddrV6::new(ip("fd00::9"), 5000, 0, 0)));
    assert_eq!(n.iface.stats().reassembled, 1);
    assert_eq!(n.iface.stats().rx_bad_exthdr, 0);

    // A Fragment header inside the reassembled part (an atomic fragment of UDP).
    let malformed = n.iface.stats().rx_malformed;
    let mut inner = vec![IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 1];
    inner.extend_from_slice(&plain_datagram());
    let [g1, g2] = in_two_fragments(IPPROTO_FRAGMENT, &inner);
    // Another identification than the first datagram's.
    let (mut g1, mut g2) = (g1, g2);
    g1[44] = 0x77;
    g2[44] = 0x77;
    assert_eq!(deliver(&mut n, &g1), None);
    assert_eq!(deliver(&mut n, &g2), None);
    assert_eq!(n.iface.stats().reassembled, 2);
    assert_eq!(n.iface.stats().rx_malformed, malformed + 1);
}
