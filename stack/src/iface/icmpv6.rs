//! ICMPv6 (RFC 4443): echo, errors received and errors sent.

use super::conn_table::ConnKey;
use super::*;

impl Interface {
    pub(super) fn receive_icmp(
        &mut self,
        now: Instant,
        payload: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
    ) {
        self.stats.rx_icmp += 1;
        let Ok(pkt) = Icmpv6Packet::new_checked(payload) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if !pkt.verify_checksum(&src, &dst) {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let Ok(repr) = Icmpv6Repr::parse(&src, &dst, &pkt, &caps()) else {
            self.stats.rx_malformed += 1;
            return;
        };
        match repr {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                if dst.is_multicast() {
                    return;
                }
                let reply = Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.send_icmp(now, dst, src, &reply, None);
            }
            Icmpv6Repr::Ndisc(nd) => {
                // RFC 4861 §7.1: hop limit must be 255.
                if hop_limit != 255 {
                    self.stats.rx_malformed += 1;
                    return;
                }
                self.receive_ndisc(now, nd, src, dst, src_mac);
            }
            Icmpv6Repr::DstUnreachable {
                reason,
                header,
                data,
            } => {
                // RFC 1122 §4.2.3.9 / RFC 5927 §4.1: a hard error aborts a connection that is
                // still opening, if the quoted sequence number is one we sent; otherwise
                // (established connections) it is a soft error and ignored.
                use smoltcp::wire::Icmpv6DstUnreachable as U;
                if header.next_header != IpProtocol::Tcp
                    || data.len() < 8
                    || !self.is_ours(&header.src_addr)
                {
                    return;
                }
                let hard = matches!(
                    reason,
                    U::PortUnreachable | U::AdminProhibit | U::RejectRoute | U::FailedPolicy
                );
                let sport = u16::from_be_bytes([data[0], data[1]]);
                let dport = u16::from_be_bytes([data[2], data[3]]);
                let seq = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                let key = ConnKey(header.src_addr, sport, header.dst_addr, dport);
                if let (true, Some(idx)) = (hard, self.conns.lookup(&key)) {
                    if let Some(t) = self.conns.get_mut(idx) {
                        t.on_hard_icmp_error(seq);
                    }
                    self.conns.mark_ready(idx);
                    self.after_tcb_event(idx);
                }
            }
            Icmpv6Repr::PktTooBig { mtu, header, .. } => {
                // RFC 8201 §4: never below 1280.
                let mtu = (mtu as usize).max(MIN_MTU).min(self.cfg.mtu);
                let target = header.dst_addr;
                let cur = self.pmtu.get(&target).map(|p| p.0).unwrap_or(self.cfg.mtu);
                if mtu < cur {
                    self.stats.pmtu_updates += 1;
                    self.set_path_mtu(now, target, mtu);
                }
            }
            _ => {}
        }
    }

    pub(super) fn send_icmp(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        repr: &Icmpv6Repr<'_>,
        hop_limit: Option<u8>,
    ) {
        let mut buf = self.buffer();
        build_icmp_frame(
            &mut buf,
            self.cfg.mac,
            hop_limit.unwrap_or(self.cfg.hop_limit),
            src,
            dst,
            repr,
        );
        self.send_frame(now, buf, dst, None);
    }

    pub(super) fn icmp_error_allowed(&mut self, now: Instant) -> bool {
        if now - self.icmp_budget.0 >= Duration::from_secs(1) {
            self.icmp_budget = (now, 0);
        }
        if self.icmp_budget.1 >= ICMP_ERRORS_PER_SEC {
            return false;
        }
        self.icmp_budget.1 += 1;
        true
    }

    pub(super) fn param_problem(&mut self, now: Instant, pkt: &[u8], code: u8, pointer: u32) {
        self.icmp_error(now, pkt, 4, code, pointer);
    }

    /// RFC 4443 §2.4: errors quote as much of the packet as fits in the minimum MTU, never
    /// answer a multicast destination (except as allowed) or an unspecified source.
    pub(super) fn icmp_error(&mut self, now: Instant, pkt: &[u8], ty: u8, code: u8, pointer: u32) {
        if pkt.len() < IP6_HDR {
            return;
        }
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).unwrap_or([0; 16]));
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).unwrap_or([0; 16]));
        if src.is_unspecified()
            || src.is_multicast()
            || (dst.is_multicast() && !(ty == 4 && code == 2))
        {
            return;
        }
        if !self.icmp_error_allowed(now) {
            return;
        }
        let quote = &pkt[..pkt.len().min(MIN_MTU - IP6_HDR - 8)];
        let from = if self.is_ours(&dst) {
            dst
        } else {
            self.source_for(&src)
        };
        let mut body = Vec::with_capacity(8 + quote.len());
        body.extend_from_slice(&[ty, code, 0, 0]);
        body.extend_from_slice(&pointer.to_be_bytes());
        body.extend_from_slice(quote);
        let mut buf = self.buffer();
        build_ip_frame(
            &mut buf,
            self.cfg.mac,
            self.cfg.hop_limit,
            from,
            src,
            58,
            body.len(),
        );
        buf.extend_from_slice(&body);
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[ETH_HDR + IP6_HDR..]);
        p.fill_checksum(&from, &src);
        self.send_frame(now, buf, src, None);
    }
}
