//! Ethernet II framing (the link layer of the interface).

use super::*;

pub(super) fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
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
        if dst.0 != self.cfg.mac && !dst.is_broadcast() && !(dst.0[0] == 0x33 && dst.0[1] == 0x33) {
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
