//! IPv6 input: the fixed header, the extension-header chain (RFC 8200 §4), fragments, and
//! the hand-off to the upper layers; path MTU (RFC 8201).

use super::*;

impl Interface {
    pub(super) fn accepts_dst(&self, a: &Ipv6Addr) -> bool {
        if self.is_ours(a) || *a == ALL_NODES {
            return true;
        }
        a.segments()[0] == 0xff02
            && (*a == solicited_node(self.link_local)
                || self.cfg.addrs.iter().any(|x| solicited_node(*x) == *a)
                || self.proxied.iter().any(|x| solicited_node(*x) == *a))
    }

    pub(super) fn source_for(&self, dst: &Ipv6Addr) -> Ipv6Addr {
        if dst.segments()[0] & 0xffc0 == 0xfe80 || dst.segments()[0] == 0xff02 {
            return self.link_local;
        }
        self.cfg.addrs.first().copied().unwrap_or(self.link_local)
    }

    /// Process one IPv6 packet (without link header): for devices without Ethernet, and for
    /// packets decapsulated from a tunnel.
    pub fn receive_ipv6(&mut self, now: Instant, pkt: &[u8], src_mac: Option<[u8; 6]>) {
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
        if self.proxied.contains(&dst) {
            let total = (IP6_HDR + ip.payload_len() as usize).min(pkt.len());
            self.intercept(&pkt[..total]);
            return;
        }
        if !self.accepts_dst(&dst) {
            self.stats.rx_not_ours += 1;
            return;
        }
        if src.is_multicast() {
            self.stats.rx_malformed += 1;
            return;
        }
        let total = IP6_HDR + ip.payload_len() as usize;
        let pkt = &pkt[..total];
        let hop_limit = ip.hop_limit();
        self.walk_headers(now, pkt, src, dst, hop_limit, src_mac);
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
        let mut nh = pkt[6];
        let mut off = IP6_HDR;
        let mut nh_field = 6usize;
        let mut mob = Mobility {
            src,
            dst,
            hao: None,
            rh2: None,
        };
        let mut first = true;
        loop {
            match nh {
                // Hop-by-hop (only first), destination options.
                0 | 60 => {
                    if nh == 0 && !first {
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(now, pkt, 1, nh_field as u32);
                        return;
                    }
                    let Some((next, len)) = ext_len(pkt, off) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    match self.process_options(now, pkt, off, len, dst) {
                        Ok(Some(home)) => mob.hao = Some(home),
                        Ok(None) => {}
                        Err(()) => return,
                    }
                    nh_field = off;
                    nh = next;
                    off += len;
                }
                // Routing header.
                43 => {
                    let Some((next, len)) = ext_len(pkt, off) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    let rtype = pkt[off + 2];
                    let left = pkt[off + 3];
                    if rtype == 2 && left == 1 && len == 24 {
                        // RFC 6275 §6.4: type 2 routing header carrying our home address.
                        let home = Ipv6Addr::from(
                            <[u8; 16]>::try_from(&pkt[off + 8..off + 24]).unwrap_or([0; 16]),
                        );
                        // RFC 6275 §9.3.2 / §11.3.3: only for a home address served here.
                        let ok = self.is_ours(&home)
                            || self
                                .hook
                                .as_mut()
                                .is_some_and(|h| h.on_type2_routing(now, dst, home));
                        if !ok {
                            self.stats.rx_bad_exthdr += 1;
                            return;
                        }
                        self.stats.mobility_rx += 1;
                        mob.rh2 = Some(home);
                    } else if left != 0 {
                        // RFC 8200 §4.4: unknown type with segments left → Parameter Problem
                        // pointing at the routing type (we are no router for other types).
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(now, pkt, 0, (off + 2) as u32);
                        return;
                    }
                    nh_field = off;
                    nh = next;
                    off += len;
                }
                // Fragment.
                44 => {
                    if pkt.len() < off + 8 {
                        self.stats.rx_malformed += 1;
                        return;
                    }
                    self.stats.rx_fragments += 1;
                    let next = pkt[off];
                    let fo = u16::from_be_bytes([pkt[off + 2], pkt[off + 3]]);
                    let offset = (fo & 0xfff8) as usize;
                    let more = fo & 1 == 1;
                    let ident = u32::from_be_bytes([
                        pkt[off + 4],
                        pkt[off + 5],
                        pkt[off + 6],
                        pkt[off + 7],
                    ]);
                    let data = &pkt[off + 8..];
                    if offset == 0 && !more {
                        // RFC 6946 atomic fragment: process in isolation.
                        nh_field = off;
                        nh = next;
                        off += 8;
                        first = false;
                        continue;
                    }
                    match self
                        .frag
                        .add(now, src, dst, ident, offset, more, next, data)
                    {
                        Ok(Some(done)) => {
                            self.stats.reassembled += 1;
                            self.upper(
                                now,
                                done.next_header,
                                &done.payload,
                                &mob,
                                hop_limit,
                                src_mac,
                                pkt,
                            );
                        }
                        Ok(None) => {}
                        Err(_) => self.stats.reassembly_failed += 1,
                    }
                    return;
                }
                59 => {
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
                    let _ = nh_field;
                    self.upper(now, nh, &pkt[off..], &mob, hop_limit, src_mac, pkt);
                    return;
                }
            }
            first = false;
            if off > pkt.len() {
                self.stats.rx_malformed += 1;
                return;
            }
        }
    }

    /// TLV options of a hop-by-hop or destination-options header (RFC 8200 §4.2). Returns the
    /// home address of a Home Address option; whether it is accepted is decided with the
    /// upper layer in view (a Binding Update carries one and is checked differently).
    pub(super) fn process_options(
        &mut self,
        now: Instant,
        pkt: &[u8],
        off: usize,
        len: usize,
        dst: Ipv6Addr,
    ) -> Result<Option<Ipv6Addr>, ()> {
        let mut i = off + 2;
        let end = off + len;
        let mut home = None;
        while i < end {
            let t = pkt[i];
            if t == 0 {
                i += 1;
                continue;
            }
            if i + 2 > end {
                self.stats.rx_malformed += 1;
                return Err(());
            }
            let olen = pkt[i + 1] as usize;
            if i + 2 + olen > end {
                self.stats.rx_malformed += 1;
                return Err(());
            }
            match t {
                1 => {}
                // RFC 6275 §6.3 Home Address option (understood when we are a correspondent
                // or run a mobility hook; otherwise its type's high bits say discard + ICMP).
                201 if olen == 16 && (self.cn.is_some() || self.hook.is_some()) => {
                    home = Some(Ipv6Addr::from(
                        <[u8; 16]>::try_from(&pkt[i + 2..i + 18]).unwrap_or([0; 16]),
                    ));
                }
                _ => {
                    // RFC 8200 §4.2: the two high-order bits say what to do with unknown options.
                    match t >> 6 {
                        0 => {}
                        1 => {
                            self.stats.rx_bad_exthdr += 1;
                            return Err(());
                        }
                        2 => {
                            self.stats.rx_bad_exthdr += 1;
                            self.param_problem(now, pkt, 2, i as u32);
                            return Err(());
                        }
                        _ => {
                            self.stats.rx_bad_exthdr += 1;
                            if !dst.is_multicast() {
                                self.param_problem(now, pkt, 2, i as u32);
                            }
                            return Err(());
                        }
                    }
                }
            }
            i += 2 + olen;
        }
        Ok(home)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn upper(
        &mut self,
        now: Instant,
        nh: u8,
        payload: &[u8],
        mob: &Mobility,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
        whole: &[u8],
    ) {
        if nh == 135 {
            self.receive_mobility_header(now, payload, mob, whole);
            return;
        }
        // RFC 6275 §9.3.1: a Home Address option is honoured only with a binding for
        // (home address, source); then upper layers see the home address as the source.
        let mut src = mob.src;
        if let Some(home) = mob.hao {
            if !self.accept_hao(now, mob, home) {
                self.stats.rx_bad_exthdr += 1;
                return;
            }
            self.stats.mobility_rx += 1;
            src = home;
        }
        let dst = mob.rh2.unwrap_or(mob.dst);
        match nh {
            6 => self.receive_tcp(now, payload, src, dst),
            17 => self.receive_udp(now, payload, src, dst, whole),
            58 => self.receive_icmp(now, payload, src, dst, hop_limit, src_mac),
            // IPv6-in-IPv6 (RFC 2473): a home agent's tunnel to us (RFC 6275 §10.4.2), or a
            // reverse tunnel through us when we are a home agent (§10.4.5).
            41 => {
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
                // RFC 8200 §4: unrecognised Next Header → Parameter Problem code 1.
                self.param_problem(now, whole, 1, 6);
            }
        }
    }

    /// Set the path MTU towards `dst` (e.g. lower it by the 24 octets of a routing header when
    /// packets to it will carry one): later segments of connections to it shrink to fit.
    pub fn set_path_mtu(&mut self, now: Instant, dst: Ipv6Addr, mtu: usize) {
        let mtu = mtu.clamp(MIN_MTU, self.cfg.mtu);
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

    pub(super) fn next_hop(&self, dst: &Ipv6Addr) -> Ipv6Addr {
        match self.cfg.gateway {
            Some(gw) if !self.on_link(dst) => gw,
            _ => *dst,
        }
    }

    pub(super) fn on_link(&self, dst: &Ipv6Addr) -> bool {
        let d = dst.segments();
        if d[0] & 0xffc0 == 0xfe80 || dst.is_multicast() {
            return true;
        }
        self.cfg.addrs.iter().any(|a| a.segments()[..4] == d[..4])
    }
}

/// Length of the extension header at `off`: (next header, bytes).
pub(super) fn ext_len(pkt: &[u8], off: usize) -> Option<(u8, usize)> {
    if pkt.len() < off + 8 {
        return None;
    }
    let len = (pkt[off + 1] as usize + 1) * 8;
    if pkt.len() < off + len {
        return None;
    }
    Some((pkt[off], len))
}
