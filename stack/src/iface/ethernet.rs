//! Ethernet II framing (the link layer of the interface).

use super::Interface;
use crate::tcp::tcb::Tcb;
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

/// Frames of a batch whose connections are warmed before the first is processed
/// ([`Interface::receive_batch`]): more than the misses a core keeps in flight (10–16 line
/// fill buffers, a connection needs about ten lines), few enough that the first frame's lines
/// are still in the first-level cache when it is processed. A device that hands over this
/// many frames per call (AF_XDP's `recv_batch`) gives the look-ahead whole chunks.
pub const WARM_AHEAD: usize = 16;

/// Connections from which [`Interface::receive_batch`] warms them, and from which their small
/// buffers' storage is pooled (`Interface::pools_buffers`): fewer fit the core's second-level
/// cache (1,024 slots are 704 KiB), where the look ahead (a key read and hashed, an index
/// probe and the prefetches, ~100 instructions a frame beyond the hash the lookup would make
/// anyway) and the pool (taking and giving back, ~250 instructions an exchange) would only add
/// to the cost.
pub(super) const WARM_FROM: usize = 1024;

impl Interface {
    /// Process received Ethernet frames, as [`Interface::receive`] each in turn, having first
    /// asked for the cache lines of the connection each TCP segment is for without waiting for
    /// them: the cache misses of a batch overlap instead of following one another, which is
    /// what keeps the cost per packet from growing with the number of connections
    /// (`dsperf conns`). Give it what the device has received at once (an AF_XDP ring's batch).
    ///
    /// ```
    /// use ds_stack::{Config, Instant, Interface};
    /// let mut iface = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![]), Instant::ZERO);
    /// let junk: &[u8] = &[0; 20];
    /// iface.receive_batch(Instant::ZERO, &[junk, junk]);
    /// assert_eq!(iface.stats().rx_frames, 2);
    /// ```
    pub fn receive_batch(&mut self, now: Instant, frames: &[&[u8]]) {
        // Without a prefetch instruction (`crate::prefetch`) the look-ahead would only cost.
        if self.conns.len() < WARM_FROM || !cfg!(target_arch = "x86_64") {
            for f in frames {
                self.receive(now, f);
            }
            return;
        }
        for chunk in frames.chunks(WARM_AHEAD) {
            // Four passes: each frame's key (read at fixed offsets) and hash (SipHash: the
            // lookup reuses it; in the probes' pass it kept their waits apart); the
            // demultiplexer probed, and every line of the connection asked for that can be
            // named without reading it (the slot's key, its timer entry, the control block's
            // hot lines: `conn_table::Vacant`); the lines its buffers' next bytes land on,
            // named by those lines; then the frames. Where a pass waits it does a few
            // instructions a frame, so that the core has every frame's wait in flight at once.
            self.warmed.clear();
            for f in chunk {
                let w = self.segment_key(f).map(|(key, hash)| (key, hash, None));
                self.warmed.push(w);
            }
            for w in self.warmed.iter_mut().flatten() {
                w.2 = self.conns.prefetch(w.1, Tcb::prefetch_hot);
            }
            for idx in self.warmed.iter().flatten().filter_map(|w| w.2) {
                self.conns.warm(idx, Tcb::prefetch_data);
            }
            for (i, f) in chunk.iter().enumerate() {
                let hint = self.warmed.get(i).copied().flatten();
                self.conns.set_hint(hint.map(|(key, hash, _)| (key, hash)));
                self.receive(now, f);
            }
            self.conns.set_hint(None);
        }
    }

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
