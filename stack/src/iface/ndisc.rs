//! Neighbour Discovery (RFC 4861): solicitations, advertisements, address resolution.

use super::ethernet::set_dst_mac;
use super::Interface;
use crate::ndp::NdAction;
use crate::time::Instant;
use smoltcp::phy::Medium;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv6Repr, NdiscNeighborFlags, NdiscRepr,
    RawHardwareAddress, IPV6_LINK_LOCAL_ALL_NODES,
};
use std::collections::VecDeque;
use std::net::Ipv6Addr;

/// RFC 4291 §2.7.1 solicited-node multicast address.
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address in a link-layer address option (RFC 4861 §4.6.1, RFC 2464 §8).
fn ethernet_lladdr(ll: RawHardwareAddress) -> Option<[u8; 6]> {
    match ll.parse(Medium::Ethernet) {
        Ok(HardwareAddress::Ethernet(EthernetAddress(mac))) => Some(mac),
        #[allow(unreachable_patterns)] // other media, when a crate of the workspace enables them
        _ => None,
    }
}

/// All-nodes multicast, `ff02::1` (RFC 4291 §2.7.1).
pub(super) const ALL_NODES: Ipv6Addr = IPV6_LINK_LOCAL_ALL_NODES;

/// Neighbour Discovery messages are sent with hop limit 255, and one received with another is
/// not from the link and is dropped (RFC 4861 §7.1.1, §7.1.2).
pub(super) const ND_HOP_LIMIT: u8 = 255;

impl Interface {
    /// Addresses we answer Neighbour Solicitations for (not home addresses served away
    /// from home: another node owns those on the link).
    pub(super) fn owns_on_link(&self, a: &Ipv6Addr) -> bool {
        *a == self.link_local || self.cfg.addrs.contains(a) || self.proxied.contains(a)
    }

    /// Neighbour Solicitations (RFC 4861 §7.2.3, §7.2.4) and Advertisements (§7.2.5) for us.
    pub(super) fn receive_ndisc(
        &mut self,
        now: Instant,
        nd: NdiscRepr<'_>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        _src_mac: Option<[u8; 6]>,
    ) {
        match nd {
            NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            } => {
                if !self.owns_on_link(&target_addr) {
                    return;
                }
                let dad = src.is_unspecified();
                // RFC 4861 §7.2.3: learn the solicitor's link-layer address (not from DAD,
                // whose source is unspecified).
                if let (Some(mac), false) = (lladdr.and_then(ethernet_lladdr), dad) {
                    if let Some((m, q)) = self.nd.learn(now, src, mac, false, true, true) {
                        self.release_queued(m, q);
                    }
                }
                let _ = dst;
                if self.passed_by_sibling() {
                    // The sibling that received it answers; this one only learns.
                    return;
                }
                // RFC 4861 §7.2.4: solicited NA with the override flag; to all-nodes for DAD.
                let (to, flags) = if dad {
                    (ALL_NODES, NdiscNeighborFlags::OVERRIDE)
                } else {
                    (
                        src,
                        NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
                    )
                };
                let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                    flags,
                    target_addr,
                    lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
                });
                self.send_icmp(now, target_addr, to, &na, Some(ND_HOP_LIMIT));
            }
            NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => {
                // RFC 4861 §7.2.5: an advertisement updates the cache as its flags say.
                let Some(mac) = lladdr.and_then(ethernet_lladdr) else {
                    return;
                };
                if let Some((m, q)) = self.nd.learn(
                    now,
                    target_addr,
                    mac,
                    flags.contains(NdiscNeighborFlags::SOLICITED),
                    flags.contains(NdiscNeighborFlags::OVERRIDE),
                    false,
                ) {
                    self.release_queued(m, q);
                }
            }
            _ => {}
        }
    }

    /// Send the frames that waited for a neighbour's link-layer address (RFC 4861 §7.2.2).
    pub(super) fn release_queued(&mut self, mac: [u8; 6], q: VecDeque<Vec<u8>>) {
        for mut f in q {
            set_dst_mac(&mut f, mac);
            self.ctrl.push_back(f);
        }
    }

    /// A Neighbour Solicitation: multicast to the solicited-node group to resolve, unicast to
    /// confirm reachability (RFC 4861 §7.2.2, §7.3.3).
    pub(super) fn solicit(&mut self, a: NdAction) {
        let (target, to) = match a {
            NdAction::SolicitMulticast(t) => (t, solicited_node(t)),
            NdAction::SolicitUnicast(t, _) => (t, t),
        };
        let ns = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
        });
        let src = self.source_for(&target);
        let now = self.now;
        match a {
            NdAction::SolicitUnicast(_, mac) => {
                let mut buf = self.icmp_frame(src, to, &ns, ND_HOP_LIMIT);
                set_dst_mac(&mut buf, mac);
                self.ctrl.push_back(buf);
            }
            NdAction::SolicitMulticast(_) => self.send_icmp(now, src, to, &ns, Some(ND_HOP_LIMIT)),
        }
    }

    /// Enter a neighbour's link-layer address known out of band (a router's, from the
    /// configuration) as if from a solicitation's source link-layer option: STALE (RFC 4861
    /// §7.2.3), so the first packet to it leaves without address resolution and the usual
    /// reachability confirmation follows (§7.3.3). Frames waiting for it leave at the next
    /// transmit.
    pub fn add_neighbour(&mut self, now: Instant, ip: Ipv6Addr, mac: [u8; 6]) {
        self.now = self.now.max(now);
        if let Some((mac, queued)) = self.nd.learn(now, ip, mac, false, true, true) {
            self.release_queued(mac, queued);
        }
    }

    /// Unsolicited Neighbour Advertisements with the override flag for all our addresses
    /// (RFC 4861 §7.2.6), e.g. after taking an address over from another node.
    pub fn announce(&mut self, now: Instant) {
        self.now = self.now.max(now);
        for a in self.cfg.addrs.clone() {
            self.announce_one(now, a);
        }
    }

    /// One unsolicited Neighbour Advertisement with the override flag (RFC 4861 §7.2.6).
    pub(super) fn announce_one(&mut self, now: Instant, a: Ipv6Addr) {
        let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: a,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
        });
        self.send_icmp(now, a, ALL_NODES, &na, Some(ND_HOP_LIMIT));
    }
}
