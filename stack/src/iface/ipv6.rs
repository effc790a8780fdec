//! IPv6 input: the fixed header, the extension-header chain (RFC 8200 §4), fragments, and
//! the hand-off to the upper layers; path MTU (RFC 8201).

use super::mobility::Mobility;
use super::ndisc::{solicited_node, ALL_NODES};
use super::{Interface, MAX_PMTU_PATHS, PMTU_AGE};
use crate::time::Instant;
use ds_mipv6::wire::{
    HomeAddressOptions, Type2RoutingHeader, HAO_OPTION_TYPE, IPPROTO_IPV6, IPPROTO_MH,
};
use smoltcp::wire::{
    Icmpv6ParamProblem, IpProtocol, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6FragmentRepr,
    Ipv6Option, Ipv6OptionFailureType, Ipv6OptionType, Ipv6Packet, Ipv6RoutingHeader,
    Ipv6RoutingType, IPV6_HEADER_LEN, IPV6_MIN_MTU,
};
use std::net::Ipv6Addr;

/// `ff02::/16`: link-local scope multicast (RFC 4291 §2.7, scope 2).
pub(super) fn is_link_scope_multicast(a: &Ipv6Addr) -> bool {
    a.is_multicast() && a.octets()[1] == LINK_LOCAL_MULTICAST_FLAGS_SCOPE
}

/// Flags 0 and scope 2 (link-local), the second octet of `ff02::/16` (RFC 4291 §2.7).
const LINK_LOCAL_MULTICAST_FLAGS_SCOPE: u8 = 0x02;

impl Interface {
    /// Destinations we receive for: ours, all-nodes, and the solicited-node groups of ours
    /// and of the addresses we proxy (RFC 4861 §7.2.1, RFC 4291 §2.8).
    pub(super) fn accepts_dst(&self, a: &Ipv6Addr) -> bool {
        if self.is_ours(a) || *a == ALL_NODES {
            return true;
        }
        is_link_scope_multicast(a)
            && (*a == solicited_node(self.link_local)
                || self.cfg.addrs.iter().any(|x| solicited_node(*x) == *a)
                || self.proxied.iter().any(|x| solicited_node(*x) == *a))
    }

    /// Source address for a destination (a small part of RFC 6724 §5).
    pub(super) fn source_for(&self, dst: &Ipv6Addr) -> Ipv6Addr {
        // RFC 6724 §4: a link-scope destination gets the link-local source.
        if dst.is_unicast_link_local() || is_link_scope_multicast(dst) {
            return self.link_local;
        }
        self.cfg.addrs.first().copied().unwrap_or(self.link_local)
    }

    /// Process one IPv6 packet (without link header): for devices without Ethernet, and for
    /// packets decapsulated from a tunnel.
    pub fn receive_ipv6(&mut self, now: Instant, pkt: &[u8], src_mac: Option<[u8; 6]>) {
        // The view checks that the buffer holds the header and the Payload Length it claims.
        let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if ip.version() != 6 {
            self.stats.rx_malformed += 1;
            return;
        }
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        // Link padding past the Payload Length is not part of the packet (RFC 8200 §3).
        let pkt = &pkt[..ip.total_len()];
        if self.proxied.contains(&dst) {
            self.intercept(pkt);
            return;
        }
        if !self.accepts_dst(&dst) {
            self.stats.rx_not_ours += 1;
            return;
        }
        // RFC 4291 §2.7: a multicast address is never a source.
        if src.is_multicast() {
            self.stats.rx_malformed += 1;
            return;
        }
        self.walk_headers(now, pkt, src, dst, ip.hop_limit(), src_mac);
    }

    /// Walk the extension-header chain (RFC 8200 §4) and hand the upper layer on.
    pub(super) fn walk_headers(
        &mut self,
        now: Instant,
        pkt: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
    ) {
        let mob = Mobility {
            src,
            dst,
            hao: None,
            rh2: None,
        };
        let at = Walk {
            nh: Ipv6Packet::new_unchecked(pkt).next_header(),
            off: IPV6_HEADER_LEN,
            nh_field: IPV6_NEXT_HEADER_AT,
            first: true,
            reassembled: false,
        };
        self.walk_from(
            now,
            pkt,
            at,
            mob,
            HomeAddressOptions::default(),
            hop_limit,
            src_mac,
        );
    }

    /// [`Interface::walk_headers`] from the header `at` names in `pkt`, with what the headers
    /// before it said (`mob`, `hao`).
    #[allow(clippy::too_many_arguments)]
    fn walk_from(
        &mut self,
        now: Instant,
        pkt: &[u8],
        at: Walk,
        mut mob: Mobility,
        mut hao: HomeAddressOptions,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
    ) {
        let (src, dst) = (mob.src, mob.dst);
        let Walk {
            mut nh,
            mut off,
            mut nh_field,
            mut first,
            reassembled,
        } = at;
        loop {
            match nh {
                IpProtocol::HopByHop | IpProtocol::Ipv6Opts => {
                    // RFC 8200 §4.1: a Hop-by-Hop Options header only right after the IPv6
                    // header; elsewhere its Next Header value is unrecognised (§4).
                    if nh == IpProtocol::HopByHop && !first {
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(
                            now,
                            pkt,
                            Icmpv6ParamProblem::UnrecognizedNxtHdr,
                            nh_field,
                        );
                        return;
                    }
                    let Ok(ext) = Ipv6ExtHeader::new_checked(&pkt[off..]) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    let dest_opts = nh == IpProtocol::Ipv6Opts;
                    if self
                        .process_options(now, pkt, off, ext.payload(), dest_opts, &mut hao)
                        .is_err()
                    {
                        return;
                    }
                    mob.hao = hao.home();
                    nh_field = off;
                    nh = ext.next_header();
                    off += ext_header_len(&ext);
                }
                IpProtocol::Ipv6Route => {
                    let Ok(ext) = Ipv6ExtHeader::new_checked(&pkt[off..]) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    let Ok(rh) = Ipv6RoutingHeader::new_checked(ext.payload()) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    let len = ext_header_len(&ext);
                    let left = rh.segments_left();
                    let rh2 = (rh.routing_type() == Ipv6RoutingType::Type2 && left == 1)
                        .then(|| Type2RoutingHeader::new_checked(&pkt[off..off + len]).ok())
                        .flatten();
                    if let Some(rh2) = rh2 {
                        // RFC 6275 §6.4: a type 2 routing header carrying our home address;
                        // §9.3.2 / §11.3.3: only for a home address served here, not any
                        // address of ours (an ordinary one would make a packet to the care-of
                        // address count as addressed to it). Only one per packet (§6.4:
                        // exactly one address), and only to a unicast (care-of) address: one
                        // to a multicast group would be taken as addressed to us.
                        let home = rh2.home_address();
                        let ok = !dst.is_multicast()
                            && mob.rh2.is_none()
                            && (self.home_addrs.contains(&home)
                                || self
                                    .hook
                                    .as_mut()
                                    .is_some_and(|h| h.on_type2_routing(now, dst, home)));
                        if !ok {
                            self.stats.rx_bad_exthdr += 1;
                            return;
                        }
                        self.stats.mobility_rx += 1;
                        mob.rh2 = Some(home);
                    } else if left != 0 {
                        // RFC 8200 §4.4: an unknown (or malformed) type with segments left →
                        // Parameter Problem code 0 pointing at the Routing Type (we are no
                        // router for other types).
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(
                            now,
                            pkt,
                            Icmpv6ParamProblem::ErroneousHdrField,
                            off + EXT_FIXED_LEN,
                        );
                        return;
                    }
                    nh_field = off;
                    nh = ext.next_header();
                    off += len;
                }
                IpProtocol::Ipv6Frag => {
                    if reassembled {
                        // A Fragment header inside a reassembled packet (RFC 8200 §4.5: the
                        // fragments of one packet are not fragmented again).
                        self.stats.rx_malformed += 1;
                        return;
                    }
                    let Some((next, frag)) = fragment_header(&pkt[off..]) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    self.stats.rx_fragments += 1;
                    let offset = usize::from(frag.frag_offset) * FRAGMENT_OFFSET_UNIT;
                    let data = &pkt[off + FRAGMENT_HEADER_LEN..];
                    if offset == 0 && !frag.more_frags {
                        // RFC 6946 §4: an atomic fragment is processed in isolation.
                        nh_field = off;
                        nh = next;
                        off += FRAGMENT_HEADER_LEN;
                        first = false;
                        continue;
                    }
                    // RFC 8200 §4.5: reassembly.
                    match self.frag.add(
                        now,
                        src,
                        dst,
                        frag.ident,
                        offset,
                        frag.more_frags,
                        u8::from(next),
                        data,
                    ) {
                        Ok(Some(done)) => {
                            self.stats.reassembled += 1;
                            // RFC 8200 §4.5: the reassembled packet is the unfragmentable part
                            // (this fragment's headers before its Fragment header; they were
                            // processed above) with the fragmentable part behind it, whose
                            // first header the Fragment header named. Its extension headers
                            // are walked like any packet's (a Destination Options header
                            // there is common), on from where the Fragment header was.
                            let Some(whole) = reassembled_packet(pkt, off, nh_field, &done) else {
                                self.stats.reassembly_failed += 1;
                                return;
                            };
                            let at = Walk {
                                nh: IpProtocol::from(done.next_header),
                                off,
                                nh_field,
                                first: false,
                                reassembled: true,
                            };
                            self.walk_from(now, &whole, at, mob, hao, hop_limit, src_mac);
                        }
                        Ok(None) => {}
                        Err(_) => self.stats.reassembly_failed += 1,
                    }
                    return;
                }
                IpProtocol::Ipv6NoNxt => {
                    // RFC 8200 §4.7: No Next Header; nothing to deliver (but a Home Address
                    // option on it is still checked, RFC 6275 §9.3.1).
                    if let Some(home) = mob.hao {
                        if !self.accept_hao(now, &mob, home) {
                            self.stats.rx_bad_exthdr += 1;
                            return;
                        }
                    }
                    self.stats.rx_ignored += 1;
                    return;
                }
                _ => {
                    let up = Upper {
                        nh,
                        nh_field,
                        payload: &pkt[off..],
                    };
                    self.upper(now, up, &mob, hop_limit, src_mac, pkt);
                    return;
                }
            }
            first = false;
        }
    }

    /// The TLV options (`opts`, RFC 8200 §4.2) of a Hop-by-Hop or Destination Options header
    /// at `off`. A Home Address option (RFC 6275 §6.3, a destination option) goes into `hao`;
    /// whether it is accepted is decided with the upper layer in view (a Binding Update
    /// carries one and is checked differently). `Err`: the packet is dropped (counted, and
    /// answered as RFC 8200 §4.2 says).
    pub(super) fn process_options(
        &mut self,
        now: Instant,
        pkt: &[u8],
        off: usize,
        opts: &[u8],
        dest_opts: bool,
        hao: &mut HomeAddressOptions,
    ) -> Result<(), ()> {
        // The option is understood when we are a correspondent or run a mobility hook, or a
        // sibling may be the correspondent (`correspondent_elsewhere`); otherwise its type's
        // high-order bits say discard and send an ICMP error.
        let mobility = self.cn.is_some() || self.hook.is_some() || self.correspondent_elsewhere();
        let dst = Ipv6Packet::new_unchecked(pkt).dst_addr();
        let mut pos = 0;
        while pos < opts.len() {
            // Offset of the Option Type from the start of the header, and in the packet.
            let in_header = EXT_FIXED_LEN + pos;
            let at = off + in_header;
            let Ok(opt) = Ipv6Option::new_checked(&opts[pos..]) else {
                self.stats.rx_malformed += 1;
                return Err(());
            };
            let ty = opt.option_type();
            if ty == Ipv6OptionType::Pad1 {
                pos += PAD1_LEN;
                continue;
            }
            match ty {
                Ipv6OptionType::PadN => {}
                Ipv6OptionType::Unknown(HAO_OPTION_TYPE) if dest_opts && mobility => {
                    if let Err(e) = hao.add(in_header, opt.data()) {
                        // RFC 6275 §6.3: malformed, misaligned, or a second one.
                        tracing::debug!(%e, "home address option refused");
                        self.stats.rx_bad_exthdr += 1;
                        return Err(());
                    }
                }
                // RFC 8200 §4.2: the two high-order bits of an unrecognised option's type say
                // what to do with the packet.
                _ => match Ipv6OptionFailureType::from(ty) {
                    Ipv6OptionFailureType::Skip => {}
                    Ipv6OptionFailureType::Discard => {
                        self.stats.rx_bad_exthdr += 1;
                        return Err(());
                    }
                    Ipv6OptionFailureType::DiscardSendAll => {
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(now, pkt, Icmpv6ParamProblem::UnrecognizedOption, at);
                        return Err(());
                    }
                    Ipv6OptionFailureType::DiscardSendUnicast => {
                        self.stats.rx_bad_exthdr += 1;
                        if !dst.is_multicast() {
                            self.param_problem(
                                now,
                                pkt,
                                Icmpv6ParamProblem::UnrecognizedOption,
                                at,
                            );
                        }
                        return Err(());
                    }
                },
            }
            pos += OPTION_TLV_HEADER_LEN + usize::from(opt.data_len());
        }
        Ok(())
    }

    /// The upper layer (RFC 8200 §4: the header after the extension headers we process).
    pub(super) fn upper(
        &mut self,
        now: Instant,
        up: Upper<'_>,
        mob: &Mobility,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
        whole: &[u8],
    ) {
        let payload = up.payload;
        if up.nh == IpProtocol::Unknown(IPPROTO_MH) {
            self.receive_mobility_header(now, payload, mob, whole, up.nh_field);
            return;
        }
        // RFC 6275 §9.3.1: a Home Address option is honoured only with a binding for
        // (home address, source); then upper layers see the home address as the source.
        let mut src = mob.src;
        if let Some(home) = mob.hao {
            // (A reassembled packet is `whole` too: it goes round whole, unfragmented.)
            if self.correspondent_elsewhere()
                && super::mobility::in_whole(payload, whole)
                && !self.hook_accepts_hao(now, mob, home)
            {
                // The binding that covers it is a sibling's correspondent's (RFC 6275
                // §9.3.1): the packet goes round whole, options and all.
                if self.pass_whole_to_sibling(whole) {
                    self.stats.mobility_rx += 1;
                    return;
                }
            }
            if !self.accept_hao(now, mob, home) {
                self.stats.rx_bad_exthdr += 1;
                return;
            }
            self.stats.mobility_rx += 1;
            src = home;
            if self.passed_by_sibling() {
                // A sibling without the correspondent role passed it here for the check,
                // perhaps holding its connection itself: checked, it may go round again (as
                // a plain packet, so at most once more).
                self.restart_round();
            }
        }
        let dst = mob.rh2.unwrap_or(mob.dst);
        match up.nh {
            IpProtocol::Tcp => self.receive_tcp(now, payload, src, dst),
            IpProtocol::Udp => self.receive_udp(now, payload, src, dst, whole),
            IpProtocol::Icmpv6 => self.receive_icmp(now, payload, src, dst, hop_limit, src_mac),
            // IPv6-in-IPv6 (RFC 2473): a home agent's tunnel to us (RFC 6275 §10.4.2), or a
            // reverse tunnel through us when we are a home agent (§10.4.5).
            IpProtocol::Unknown(IPPROTO_IPV6) => {
                let inner_dst = Ipv6Packet::new_checked(payload).ok().map(|p| p.dst_addr());
                match inner_dst {
                    None => self.stats.rx_malformed += 1,
                    Some(d) if self.accepts_dst(&d) && self.decap_depth == 0 => {
                        self.stats.decapsulated += 1;
                        self.decap_depth += 1;
                        self.receive_ipv6(now, payload, None);
                        self.decap_depth -= 1;
                    }
                    Some(_) => self.intercept(whole),
                }
            }
            _ => {
                self.stats.rx_bad_exthdr += 1;
                // RFC 8200 §4: an unrecognised Next Header → Parameter Problem code 1
                // pointing at that Next Header value.
                self.param_problem(
                    now,
                    whole,
                    Icmpv6ParamProblem::UnrecognizedNxtHdr,
                    up.nh_field,
                );
            }
        }
    }

    /// The path MTU towards `dst` at `now`: the lowered one, until it is PMTU_AGE old (RFC
    /// 8201 §4: then the link's is tried again), else the link's.
    pub(super) fn path_mtu(&self, now: Instant, dst: &Ipv6Addr) -> usize {
        self.pmtu
            .get(dst)
            .filter(|p| now - p.1 < PMTU_AGE)
            .map(|p| p.0)
            .unwrap_or(self.cfg.mtu)
    }

    /// Set the path MTU towards `dst` (e.g. lower it by the 24 octets of a routing header when
    /// packets to it will carry one): later segments of connections to it shrink to fit.
    pub fn set_path_mtu(&mut self, now: Instant, dst: Ipv6Addr, mtu: usize) {
        let mtu = mtu.clamp(IPV6_MIN_MTU, self.cfg.mtu);
        if !self.pmtu.contains_key(&dst) && self.pmtu.len() >= MAX_PMTU_PATHS {
            // Full: paths not lowered for PMTU_AGE go first (RFC 8201 §4 has them tried at
            // the link's MTU again), else the least recently lowered one. A scan, but only
            // for a new path when full, which credible Packet Too Bigs make (`receive_icmp`).
            self.pmtu.retain(|_, p| now - p.1 < PMTU_AGE);
            if self.pmtu.len() >= MAX_PMTU_PATHS {
                let oldest = self.pmtu.iter().min_by_key(|(_, p)| p.1).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.pmtu.remove(&k);
                }
            }
        }
        self.pmtu.insert(dst, (mtu, now));
        for idx in self.conns.to_remote(dst) {
            let local = self.conns.get(idx).map(|t| *t.local.ip());
            let mss = local.map(|l| self.mss_at(&l, mtu));
            if let (Some(t), Some(mss)) = (self.conns.get_mut(idx), mss) {
                t.on_path_mtu(mss);
            }
            self.after_tcb_event(idx);
        }
    }

    /// Next hop (RFC 4861 §5.2): the destination on the link; otherwise the router of the
    /// longest matching route (RFC 4191 §3.2's more-specific routes, configured here), then
    /// the default router.
    pub(super) fn next_hop(&self, dst: &Ipv6Addr) -> Ipv6Addr {
        if self.on_link(dst) {
            return *dst;
        }
        let best = self
            .cfg
            .routes
            .iter()
            .filter(|r| r.covers(dst))
            .max_by_key(|r| r.len);
        match (best, self.cfg.gateway) {
            (Some(r), _) => r.via,
            (None, Some(gw)) => gw,
            (None, None) => *dst,
        }
    }

    /// On-link determination (RFC 4861 §5.2, from our own prefixes: no Router Advertisements).
    pub(super) fn on_link(&self, dst: &Ipv6Addr) -> bool {
        if dst.is_unicast_link_local() || dst.is_multicast() {
            return true;
        }
        // On-link: in the /64 of one of our addresses (RFC 4291 §2.5.4 interface IDs).
        let d = dst.segments();
        self.cfg.addrs.iter().any(|a| a.segments()[..4] == d[..4])
    }
}

/// An upper-layer payload and where its Next Header value was found.
pub(super) struct Upper<'a> {
    pub(super) nh: IpProtocol,
    /// Offset of the Next Header value in the packet (for Parameter Problem pointers).
    pub(super) nh_field: usize,
    pub(super) payload: &'a [u8],
}

/// Offset of the Next Header field in the IPv6 header (RFC 8200 §3).
const IPV6_NEXT_HEADER_AT: usize = 6;
/// Where the Payload Length sits in the IPv6 header (RFC 8200 §3).
const IPV6_PAYLOAD_LEN_AT: usize = 4;
/// Next Header and Hdr Ext Len, the octets every extension header but the Fragment header
/// starts with (RFC 8200 §4.3, §4.4, §4.6); the Routing Type, or the options, follow.
const EXT_FIXED_LEN: usize = 2;
/// Option Type and Opt Data Len, before an option's data (RFC 8200 §4.2).
const OPTION_TLV_HEADER_LEN: usize = 2;
/// The Pad1 option is one octet, with no length (RFC 8200 §4.2).
const PAD1_LEN: usize = 1;
/// A Fragment header is 8 octets (RFC 8200 §4.5).
pub(super) const FRAGMENT_HEADER_LEN: usize = 8;
/// The Fragment Offset counts 8-octet units (RFC 8200 §4.5).
pub(super) const FRAGMENT_OFFSET_UNIT: usize = 8;

/// Length of an extension header in octets: its Hdr Ext Len counts 8-octet units after the
/// first 8 (RFC 8200 §4.3); smoltcp's view gives the octets after the first two.
fn ext_header_len(ext: &Ipv6ExtHeader<&[u8]>) -> usize {
    EXT_FIXED_LEN + ext.payload().len()
}

/// The Fragment header at the start of `b`: its Next Header and fields. Its second octet is
/// Reserved, "ignored on reception" (RFC 8200 §4.5), not a length: it is cleared before the
/// generic extension-header view reads the header.
fn fragment_header(b: &[u8]) -> Option<(IpProtocol, Ipv6FragmentRepr)> {
    let mut hdr = [0u8; FRAGMENT_HEADER_LEN];
    hdr.copy_from_slice(b.get(..FRAGMENT_HEADER_LEN)?);
    Ipv6ExtHeader::new_unchecked(&mut hdr[..]).set_header_len(0);
    let ext = Ipv6ExtHeader::new_checked(&hdr[..]).ok()?;
    let frag = Ipv6FragmentHeader::new_checked(ext.payload()).ok()?;
    let repr = Ipv6FragmentRepr::parse(&frag).ok()?;
    Some((ext.next_header(), repr))
}

/// Where a walk of the extension-header chain stands ([`Interface::walk_headers`]).
#[derive(Debug, Clone, Copy)]
struct Walk {
    /// The header to process next.
    nh: IpProtocol,
    /// Its offset in the packet.
    off: usize,
    /// Where the Next Header value naming it sits (Parameter Problem pointers name it, RFC
    /// 8200 §4).
    nh_field: usize,
    /// Right after the IPv6 header (a Hop-by-Hop Options header is allowed only there).
    first: bool,
    /// The packet was reassembled from fragments.
    reassembled: bool,
}

/// The packet `done` was reassembled into (RFC 8200 §4.5): `pkt`'s IPv6 header and headers
/// before its Fragment header at `frag_at`, then the reassembled fragmentable part, the Next
/// Header value at `nh_field` naming that part's first header and the Payload Length
/// recomputed. `None` when the payload would exceed 65,535 bytes (the reassembler does not
/// build one, but a Payload Length cannot say it).
fn reassembled_packet(
    pkt: &[u8],
    frag_at: usize,
    nh_field: usize,
    done: &crate::frag::Reassembled,
) -> Option<Vec<u8>> {
    let unfragmentable = pkt.get(..frag_at)?;
    let payload_len = u16::try_from(frag_at - IPV6_HEADER_LEN + done.payload.len()).ok()?;
    let mut whole = Vec::with_capacity(frag_at + done.payload.len());
    whole.extend_from_slice(unfragmentable);
    whole.extend_from_slice(&done.payload);
    *whole.get_mut(nh_field)? = done.next_header;
    whole[IPV6_PAYLOAD_LEN_AT..IPV6_PAYLOAD_LEN_AT + 2].copy_from_slice(&payload_len.to_be_bytes());
    Some(whole)
}
