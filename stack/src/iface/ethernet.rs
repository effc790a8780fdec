//! Ethernet II framing (the link layer of the interface).

use super::Interface;
use crate::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, ETHERNET_HEADER_LEN,
};
use std::net::Ipv6Addr;

/// The first two octets of every Ethernet address IPv6 multicast maps to (RFC 2464 §7).
const IPV6_MULTICAST_MAC_PREFIX: [u8; 2] = [0x33, 0x33];

/// RFC 2464 §7: an IPv6 multicast address maps to 33:33 and its last four octets.
pub(super) fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    let [p0, p1] = IPV6_MULTICAST_MAC_PREFIX;
    [p0, p1, o[12], o[13], o[14], o[15]]
}

fn is_ipv6_multicast_mac(m: &EthernetAddress) -> bool {
    m.0.starts_with(&IPV6_MULTICAST_MAC_PREFIX)
}

/// Fill in the destination of a frame built with a zero one (after neighbour resolution).
pub(super) fn set_dst_mac(frame: &mut [u8], mac: [u8; 6]) {
    EthernetFrame::new_unchecked(frame).set_dst_addr(EthernetAddress(mac));
}

/// Start `buf` with an Ethernet II header from `mac` carrying IPv6 (destination left zero
/// for [`set_dst_mac`]).
pub(super) fn emit_ethernet_header(buf: &mut Vec<u8>, mac: [u8; 6]) {
    buf.clear();
    buf.resize(ETHERNET_HEADER_LEN, 0);
    write_ethernet_header(buf, mac);
}

/// [`emit_ethernet_header`] into the first octets of `frame` (at least a header long).
pub(super) fn write_ethernet_header(frame: &mut [u8], mac: [u8; 6]) {
    EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress([0; 6]),
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(frame));
}

impl Interface {
    /// Process one received Ethernet frame.
    pub fn receive(&mut self, now: Instant, frame: &[u8]) {
        self.now = self.now.max(now);
        self.stats.rx_frames += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let dst = eth.dst_addr();
        if dst.0 != self.cfg.mac && !dst.is_broadcast() && !is_ipv6_multicast_mac(&dst) {
            self.stats.rx_not_ours += 1;
            return;
        }
        if eth.ethertype() != EthernetProtocol::Ipv6 {
            self.stats.rx_not_ours += 1;
            return;
        }
        let src_mac = eth.src_addr().0;
        self.receive_ipv6(now, eth.payload(), Some(src_mac));
    }
}
