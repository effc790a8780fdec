//! Mobile IPv6 (RFC 6275) in the data path: the Home Address option and type 2 routing header
//! on input, route optimisation on output, Mobility Header dispatch, proxying and interception.

use super::Interface;
use crate::hooks::{HaoVerdict, MobilityHook};
use crate::time::Instant;
use ds_mipv6::cn::{CnEvent, Correspondent, FlowKey, HaoCheck};
use ds_mipv6::wire::{DestOptsRepr, Rh2Repr};
use ds_mipv6::MhMeta;
use smoltcp::wire::{
    EthernetFrame, Icmpv6Message, Icmpv6Packet, Icmpv6ParamProblem, IpProtocol, Ipv6Packet,
    TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV6_HEADER_LEN,
};
use std::net::Ipv6Addr;

/// The mobility view of a received packet: addresses as on the wire and the home address
/// carried by a Home Address option or a type 2 routing header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mobility {
    pub(super) src: Ipv6Addr,
    pub(super) dst: Ipv6Addr,
    pub(super) hao: Option<Ipv6Addr>,
    pub(super) rh2: Option<Ipv6Addr>,
}

/// Intercepted packets held for the application at most.
pub(super) const MAX_INTERCEPTED: usize = 4096;
/// Buffers kept for intercepted packets at most (given back by
/// [`Interface::take_intercepted_into`]).
const INTERCEPT_SPARE: usize = 64;

/// What output route optimisation did to a frame.
pub(super) enum MobilityOut {
    Unchanged,
    /// Headers added; the frame now goes to this address.
    Rewritten(Ipv6Addr),
    /// With the added headers it would exceed the link MTU.
    TooBig {
        peer: Ipv6Addr,
        mtu: usize,
    },
}

/// RFC 6275 §6.4: a type 2 routing header is 24 octets; so is our Home Address option header
/// (§6.3, padded to 8n+6).
pub(super) const MOBILITY_EXT_LEN: usize = Rh2Repr::LEN;
const _: () = assert!(DestOptsRepr::LEN == MOBILITY_EXT_LEN);

/// Whether `part` lies in `whole` (a packet reassembled from fragments is a `whole` of its
/// own, [`super::ipv6`]'s `reassembled_packet`).
pub(super) fn in_whole(part: &[u8], whole: &[u8]) -> bool {
    whole.as_ptr_range().contains(&part.as_ptr())
}

/// Neighbour Discovery messages (RFC 4861 §4) never take mobility headers: they are link-local
/// and concern the addresses on the wire.
fn is_neighbor_discovery(m: Icmpv6Message) -> bool {
    matches!(
        m,
        Icmpv6Message::RouterSolicit
            | Icmpv6Message::RouterAdvert
            | Icmpv6Message::NeighborSolicit
            | Icmpv6Message::NeighborAdvert
            | Icmpv6Message::Redirect
    )
}

impl Interface {
    /// Install the Mobile IPv6 hook (the interface owns it from now on).
    pub fn set_mobility_hook(&mut self, hook: Box<dyn MobilityHook>) {
        self.hook = Some(hook);
    }

    /// The installed hook, if it is an `H` (e.g. [`crate::mobile::MobileRole`]).
    pub fn mobility_hook<H: MobilityHook + 'static>(&self) -> Option<&H> {
        let h: &dyn MobilityHook = self.hook.as_deref()?;
        h.as_any().downcast_ref::<H>()
    }

    /// The installed hook, mutable, if it is an `H`: how its owner drives it (start tests,
    /// bind) without sharing it.
    pub fn mobility_hook_mut<H: MobilityHook + 'static>(&mut self) -> Option<&mut H> {
        let h: &mut dyn MobilityHook = self.hook.as_deref_mut()?;
        h.as_any_mut().downcast_mut::<H>()
    }

    /// Proxy an address on the link (a home agent for a registered home address, RFC 6275
    /// §10.4.1): answer Neighbour Solicitations for it and hand packets for it to the
    /// application ([`Interface::take_intercepted`]) instead of delivering them. Turning it
    /// on announces the address (unsolicited NA with override) so neighbours switch to us.
    pub fn set_proxy(&mut self, now: Instant, a: Ipv6Addr, on: bool) {
        if on {
            if !self.proxied.contains(&a) {
                self.proxied.push(a);
                self.announce_one(now, a);
            }
        } else {
            self.proxied.retain(|x| *x != a);
        }
    }

    /// The next intercepted IPv6 packet: one for a proxied address, or an IPv6-in-IPv6 packet
    /// addressed to us whose inner packet is for someone else (a reverse tunnel).
    pub fn take_intercepted(&mut self) -> Option<Vec<u8>> {
        self.intercepted.pop_front()
    }

    /// [`Interface::take_intercepted`] into `buf`, whose old storage the interface keeps for
    /// a later intercepted packet: a caller that passes the same buffer each time (a home
    /// agent tunnelling every packet for its mobile nodes) costs no allocation per packet.
    /// False (and `buf` untouched) when none waits.
    pub fn take_intercepted_into(&mut self, buf: &mut Vec<u8>) -> bool {
        let Some(mut pkt) = self.intercepted.pop_front() else {
            return false;
        };
        std::mem::swap(buf, &mut pkt);
        if self.intercept_spare.len() < INTERCEPT_SPARE {
            self.intercept_spare.push(pkt);
        }
        true
    }

    /// Queue a packet for the application (bounded by `MAX_INTERCEPTED`), in storage an
    /// earlier one left ([`Interface::take_intercepted_into`]) when there is some.
    pub(super) fn intercept(&mut self, pkt: &[u8]) {
        if self.intercepted.len() >= MAX_INTERCEPTED {
            self.stats.intercept_drops += 1;
            return;
        }
        self.stats.intercepted += 1;
        let mut buf = self.intercept_spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pkt);
        self.intercepted.push_back(buf);
    }

    /// Serve a home address away from home (the mobile-node role, RFC 6275 §11): connections
    /// may use it as their local address and packets for it are accepted (normally via a type
    /// 2 routing header), but it is not claimed on the link with Neighbour Advertisements.
    pub fn add_home_addr(&mut self, a: Ipv6Addr) {
        if !self.home_addrs.contains(&a) {
            self.home_addrs.push(a);
        }
    }

    /// Stop serving a home address.
    pub fn remove_home_addr(&mut self, a: Ipv6Addr) {
        self.home_addrs.retain(|x| *x != a);
    }

    /// Whether a sibling may act as the correspondent node for what reaches this interface
    /// (RFC 6275 §9): this one has no correspondent role (`Config::correspondent` off on the
    /// queues after the first of a node), and the packet has not been round every sibling.
    pub(super) fn correspondent_elsewhere(&self) -> bool {
        self.cn.is_none() && self.siblings() > 0 && !self.last_sibling()
    }

    /// A Mobility Header `mh` (in `whole`) that is for a sibling goes round, whole; the last
    /// sibling drops it. One reassembled from fragments goes round as the reassembled packet.
    fn pass_mobility_header(&mut self, mh: &[u8], whole: &[u8]) {
        if !(in_whole(mh, whole) && self.pass_whole_to_sibling(whole)) {
            self.stats.mobility_unexpected += 1;
        }
    }

    /// Whether this interface's own mobile role accepts a Home Address option.
    pub(super) fn hook_accepts_hao(
        &mut self,
        now: Instant,
        mob: &Mobility,
        home: Ipv6Addr,
    ) -> bool {
        self.hook
            .as_mut()
            .is_some_and(|h| h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept)
    }

    /// RFC 6275 §9.3.1: a Home Address option is honoured when the correspondent role has a
    /// binding for it (else a Binding Error may go back, §9.3.3) or the mobile role accepts it.
    pub(super) fn accept_hao(&mut self, now: Instant, mob: &Mobility, home: Ipv6Addr) -> bool {
        let t = now;
        if let Some(cn) = self.cn.as_mut() {
            match cn.check_hao(t, mob.dst, mob.src, home, false) {
                HaoCheck::Accept => return true,
                HaoCheck::Reject(be) => {
                    // Perhaps a binding of the node's own mobile role (hook) covers it.
                    if let Some(h) = self.hook.as_mut() {
                        if h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept {
                            return true;
                        }
                    }
                    if let Some(be) = be {
                        self.send_ipv6_packet(now, &be.packet);
                    }
                    return false;
                }
            }
        }
        self.hook
            .as_mut()
            .is_some_and(|h| h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept)
    }

    /// RFC 6275 §9.2: a Mobility Header for us. The correspondent role answers what is its
    /// (HoTI, CoTI, BU); the rest (HoT, CoT, BA, BE, BRR) goes to the node's mobile role.
    pub(super) fn receive_mobility_header(
        &mut self,
        now: Instant,
        mh: &[u8],
        mob: &Mobility,
        whole: &[u8],
        nh_field: usize,
    ) {
        let meta = MhMeta {
            src: mob.src,
            dst: mob.dst,
            hao: mob.hao,
            rh2: mob.rh2,
        };
        let mut handled = false;
        if let Some(cn) = self.cn.as_mut() {
            let out = cn.on_mobility_header(now, meta, mh);
            self.cn_next = None;
            handled = !matches!(out.event, CnEvent::Ignored);
            tracing::debug!(event = ?out.event, "mobility header (correspondent)");
            if let CnEvent::BindingUpdated { home, .. } = &out.event {
                // Packets to it now carry a routing header: make room for it.
                let cur = self.path_mtu(now, home);
                let home = *home;
                self.set_path_mtu(now, home, cur.min(self.cfg.mtu - MOBILITY_EXT_LEN));
            }
            for t in out.transmit {
                self.send_ipv6_packet(now, &t.packet);
            }
        }
        if !handled {
            let elsewhere = self.correspondent_elsewhere();
            match self
                .hook
                .as_mut()
                .map(|h| h.on_mobility_header(now, meta, mh))
            {
                Some(Some(reply)) => {
                    for r in reply {
                        self.send_ipv6_packet(now, &r);
                    }
                }
                // Nothing here asked for it: the sibling that started the test or sent the
                // Binding Update may serve another receive queue (the correspondent's answer
                // hashes to any).
                Some(None) => self.pass_mobility_header(mh, whole),
                // A correspondent's message (HoTI, CoTI, BU), for the sibling that has the
                // role (RFC 6275 §9).
                None if elsewhere => self.pass_mobility_header(mh, whole),
                None if self.cn.is_none() => {
                    // RFC 6275 §6.1.1 / RFC 8200: Mobility Header not implemented here.
                    self.stats.rx_bad_exthdr += 1;
                    self.param_problem(
                        now,
                        whole,
                        Icmpv6ParamProblem::UnrecognizedNxtHdr,
                        nh_field,
                    );
                    return;
                }
                None => {}
            }
        }
        self.stats.mobility_rx += 1;
    }

    /// Route optimisation on output (RFC 6275 §9.3.2 and §11.3.1): a packet to a home address
    /// bound at our correspondent goes to the care-of address with a type 2 routing header; a
    /// packet from a home address our mobile role serves away from home goes out from the
    /// care-of address with a Home Address option. Upper-layer checksums keep the home
    /// addresses (RFC 8200 §8.1, RFC 6275 §6.3), so only headers change. Returns the new
    /// IPv6 destination when it changed. `seg_payload`: the frame is a TCP super-frame cut
    /// into segments of that much payload (the link MTU bounds each segment, not the frame).
    pub(super) fn mobility_out(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        seg_payload: Option<usize>,
    ) -> MobilityOut {
        self.mobility_rewrite(now, buf, seg_payload)
            .unwrap_or(MobilityOut::Unchanged)
    }

    /// See [`Self::mobility_out`]; `None`: the frame is left as it is.
    pub(super) fn mobility_rewrite(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        seg_payload: Option<usize>,
    ) -> Option<MobilityOut> {
        let frame = EthernetFrame::new_checked(&buf[..]).ok()?;
        let ip = Ipv6Packet::new_checked(frame.payload()).ok()?;
        let (nh, src, dst) = (ip.next_header(), ip.src_addr(), ip.dst_addr());
        if dst.is_multicast() || dst.is_unicast_link_local() {
            return None;
        }
        let upper = ip.payload();
        // Only upper-layer packets we built (no Mobility Header, §6.1; no Neighbour Discovery).
        let flow = match nh {
            IpProtocol::Tcp => {
                let p = TcpPacket::new_checked(upper).ok()?;
                Some((p.src_port(), p.dst_port()))
            }
            IpProtocol::Udp => {
                let p = UdpPacket::new_checked(upper).ok()?;
                Some((p.src_port(), p.dst_port()))
            }
            IpProtocol::Icmpv6 => {
                let p = Icmpv6Packet::new_checked(upper).ok()?;
                if is_neighbor_discovery(p.msg_type()) {
                    return None;
                }
                None
            }
            _ => return None,
        }
        .map(|(local_port, remote_port)| FlowKey {
            next_header: u8::from(nh),
            local_port,
            remote_port,
        });
        let payload_len = ip.payload_len();
        // What one packet on the link carries above the IPv6 header, before our headers.
        let on_link = match (seg_payload, nh) {
            (Some(mss), IpProtocol::Tcp) => TcpPacket::new_checked(upper)
                .map_or(usize::from(payload_len), |p| p.header_len() as usize + mss),
            _ => usize::from(payload_len),
        };
        let t = now;
        let care_of = self
            .cn
            .as_mut()
            .and_then(|cn| cn.route_out(t, dst, flow))
            .map(|r| r.care_of);
        if care_of.is_some() {
            // A binding in use is refreshed before it expires (RFC 6275 §9.5.5): an earlier
            // deadline.
            self.cn_next = None;
        }
        let from = self
            .hook
            .as_mut()
            .and_then(|h| h.outgoing_from_home(now, src, dst));
        if care_of.is_none() && from.is_none() {
            return None;
        }
        // Headers in RFC 8200 §4.1 order: the routing header, then the Destination Options
        // header with the Home Address option (RFC 6275 §6.3: after the routing header). Built
        // back to front in a fixed buffer (no allocation per packet): `ext[at..]` is in use.
        let mut ext = [0u8; 2 * MOBILITY_EXT_LEN];
        let mut at = ext.len();
        let mut first_nh = nh;
        let mut ip = Ipv6Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
        if let Some(coa) = from {
            // RFC 6275 §11.3.1: from the care-of address, the home address in the option.
            let d = DestOptsRepr {
                next_header: u8::from(first_nh),
                home: src,
            };
            at -= MOBILITY_EXT_LEN;
            ext[at..at + MOBILITY_EXT_LEN].copy_from_slice(&d.emit());
            first_nh = IpProtocol::Ipv6Opts;
            ip.set_src_addr(coa);
        }
        if let Some(coa) = care_of {
            // RFC 6275 §6.4, §9.3.2: to the care-of address, the home address in a type 2
            // routing header with one segment left.
            let r = Rh2Repr {
                next_header: u8::from(first_nh),
                segments_left: 1,
                home: dst,
            };
            at -= MOBILITY_EXT_LEN;
            ext[at..at + MOBILITY_EXT_LEN].copy_from_slice(&r.emit());
            first_nh = IpProtocol::Ipv6Route;
            ip.set_dst_addr(coa);
        }
        let ext = &ext[at..];
        if IPV6_HEADER_LEN + on_link + ext.len() > self.cfg.mtu {
            // The connection's peer is the IPv6 destination as built (home address or
            // correspondent): that is the path MTU entry TCP looks up.
            return Some(MobilityOut::TooBig {
                peer: dst,
                mtu: self.cfg.mtu - ext.len(),
            });
        }
        let plen = usize::from(payload_len) + ext.len();
        ip.set_payload_len(u16::try_from(plen).unwrap_or(u16::MAX));
        ip.set_next_header(first_nh);
        let at = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
        buf.splice(at..at, ext.iter().copied());
        Some(MobilityOut::Rewritten(care_of.unwrap_or(dst)))
    }

    /// The correspondent node's binding cache entry for a home address (diagnostics, tests).
    pub fn correspondent(&self) -> Option<&Correspondent> {
        self.cn.as_ref()
    }
}
