//! ICMPv6 (RFC 4443): echo, errors received and errors sent.

use super::conn_table::ConnKey;
use super::ndisc::ND_HOP_LIMIT;
use super::{caps, fill_upper_checksum, Interface, ICMP_ERRORS_PER_SEC};
use crate::tcp::seq::{ge, le};
use crate::time::{Duration, Instant};
use ds_mipv6::wire::{pseudo_checksum, IPPROTO_ICMPV6};
use smoltcp::wire::{
    Icmpv6DstUnreachable, Icmpv6Message, Icmpv6Packet, Icmpv6ParamProblem, Icmpv6Repr, IpProtocol,
    Ipv6Packet, TcpPacket, IPV6_HEADER_LEN, IPV6_MIN_MTU,
};
use std::net::Ipv6Addr;

impl Interface {
    /// An ICMPv6 message for us (RFC 4443 §2.4: checksum verified, unknown types ignored):
    /// echo (§4.1, §4.2), errors for our TCP connections (§3.1, RFC 5927), Packet Too Big
    /// (§3.2, RFC 8201), and Neighbour Discovery (RFC 4861).
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
        if pseudo_checksum(src, dst, IPPROTO_ICMPV6, payload) != 0 {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let Ok(repr) = Icmpv6Repr::parse(&src, &dst, &pkt, &caps()) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if matches!(
            repr,
            Icmpv6Repr::PktTooBig { .. } | Icmpv6Repr::DstUnreachable { .. }
        ) {
            // RFC 8201 §4 / RFC 5927: every sibling applies it to what it holds.
            self.pass_to_sibling(src, dst, IpProtocol::Icmpv6, hop_limit, payload);
        }
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
                if hop_limit != ND_HOP_LIMIT {
                    self.stats.rx_malformed += 1;
                    return;
                }
                // Every sibling keeps its own neighbour cache: each learns from it too.
                self.pass_to_sibling(src, dst, IpProtocol::Icmpv6, ND_HOP_LIMIT, payload);
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
                    || data.len() < TCP_QUOTE_LEN
                    || !self.is_ours(&header.src_addr)
                {
                    return;
                }
                let hard = matches!(
                    reason,
                    U::PortUnreachable | U::AdminProhibit | U::RejectRoute | U::FailedPolicy
                );
                // Only the quoted octets are read: ports and sequence number.
                let quoted = TcpPacket::new_unchecked(&data[..TCP_QUOTE_LEN]);
                let (sport, dport) = (quoted.src_port(), quoted.dst_port());
                let seq = quoted.seq_number().0 as u32;
                let key = ConnKey(header.src_addr, sport, header.dst_addr, dport);
                if let (true, Some(idx)) = (hard, self.conns.lookup(&key)) {
                    if let Some(t) = self.conns.get_mut(idx) {
                        t.on_hard_icmp_error(seq);
                    }
                    self.conns.mark_ready(idx);
                    self.after_tcb_event(idx);
                }
            }
            Icmpv6Repr::PktTooBig { mtu, header, data } => {
                // RFC 8201 §4: never below 1280.
                let mtu = (mtu as usize).max(IPV6_MIN_MTU).min(self.cfg.mtu);
                let target = header.dst_addr;
                let cur = self.path_mtu(now, &target);
                if mtu >= cur {
                    return;
                }
                // RFC 4443 §3.2: the message quotes a packet we sent, but anyone can send one
                // naming any destination, and each lowered path costs an entry and a look at
                // every connection. A quoted TCP segment counts only if its connection has
                // its sequence number in flight (RFC 5927 §7.2, as Linux's `tcp_v6_err`);
                // other quotes (UDP, a segment behind extension headers) within a budget a
                // second. The table itself is bounded (`set_path_mtu`).
                let credible = self.is_ours(&header.src_addr)
                    && if header.next_header == IpProtocol::Tcp {
                        self.quotes_segment_in_flight(&header, data)
                    } else {
                        self.pmtu_budget
                            .allow(now, PMTU_UNVERIFIED_PER_SEC, Duration::from_secs(1))
                    };
                if !credible {
                    self.stats.pmtu_ignored += 1;
                    return;
                }
                self.stats.pmtu_updates += 1;
                self.set_path_mtu(now, target, mtu);
            }
            _ => {}
        }
    }

    /// Send an ICMPv6 message from `src` to `dst`.
    pub(super) fn send_icmp(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        repr: &Icmpv6Repr<'_>,
        hop_limit: Option<u8>,
    ) {
        let hop_limit = hop_limit.unwrap_or(self.cfg.hop_limit);
        let buf = self.icmp_frame(src, dst, repr, hop_limit);
        self.send_frame(now, buf, dst, None);
    }

    /// Whether `data`, the start of a TCP segment quoted after `header` in an ICMPv6 error,
    /// is one of ours in flight: its connection exists and its sequence number is within
    /// [SND.UNA, SND.MAX] (RFC 5927 §4.1, §7.2).
    fn quotes_segment_in_flight(&self, header: &smoltcp::wire::Ipv6Repr, data: &[u8]) -> bool {
        let Some(q) = data.get(..TCP_QUOTE_LEN) else {
            return false;
        };
        let quoted = TcpPacket::new_unchecked(q);
        let key = ConnKey(
            header.src_addr,
            quoted.src_port(),
            header.dst_addr,
            quoted.dst_port(),
        );
        let seq = quoted.seq_number().0 as u32;
        self.conns
            .lookup(&key)
            .and_then(|idx| self.conns.get(idx))
            .is_some_and(|t| ge(seq, t.snd_una) && le(seq, t.snd_max))
    }

    /// RFC 4443 §2.4(f): a token per error, `ICMP_ERRORS_PER_SEC` a second.
    pub(super) fn icmp_error_allowed(&mut self, now: Instant) -> bool {
        self.icmp_budget
            .allow(now, ICMP_ERRORS_PER_SEC, Duration::from_secs(1))
    }

    /// RFC 4443 §3.4 Parameter Problem: `pointer` is the offset in `pkt` of the octet at fault.
    pub(super) fn param_problem(
        &mut self,
        now: Instant,
        pkt: &[u8],
        reason: Icmpv6ParamProblem,
        pointer: usize,
    ) {
        let pointer = u32::try_from(pointer).unwrap_or(u32::MAX);
        self.icmp_error(
            now,
            pkt,
            Icmpv6Message::ParamProblem,
            u8::from(reason),
            pointer,
        );
    }

    /// RFC 4443 §3.1 Destination Unreachable.
    pub(super) fn dst_unreachable(
        &mut self,
        now: Instant,
        pkt: &[u8],
        reason: Icmpv6DstUnreachable,
    ) {
        self.icmp_error(now, pkt, Icmpv6Message::DstUnreachable, u8::from(reason), 0);
    }

    /// RFC 4443 §2.4: errors quote as much of the packet as fits in the minimum MTU (c), never
    /// answer a multicast destination (except a Parameter Problem for an unrecognised option
    /// whose type asks for one, (e.3)) or an unspecified or multicast source (e.5, e.6), and
    /// are rate-limited (f). `param` is the Pointer of a Parameter Problem, the unused word
    /// (zero) of the others.
    pub(super) fn icmp_error(
        &mut self,
        now: Instant,
        pkt: &[u8],
        msg: Icmpv6Message,
        code: u8,
        param: u32,
    ) {
        let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
            return;
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let to_multicast_allowed = msg == Icmpv6Message::ParamProblem
            && code == u8::from(Icmpv6ParamProblem::UnrecognizedOption);
        if src.is_unspecified()
            || src.is_multicast()
            || (dst.is_multicast() && !to_multicast_allowed)
        {
            return;
        }
        if !self.icmp_error_allowed(now) {
            return;
        }
        let quote = &pkt[..pkt
            .len()
            .min(IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_ERROR_HEADER_LEN)];
        let from = if self.is_ours(&dst) {
            dst
        } else {
            self.source_for(&src)
        };
        let icmp_len = ICMP_ERROR_HEADER_LEN + quote.len();
        let mut buf = self.ip_frame(from, src, IpProtocol::Icmpv6, icmp_len);
        let start = buf.len();
        buf.resize(start + icmp_len, 0);
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[start..]);
        p.set_msg_type(msg);
        p.set_msg_code(code);
        // The Pointer of a Parameter Problem, and the unused word of the other errors, are
        // one 32-bit field after the checksum (RFC 4443 §3.1, §3.4).
        p.set_param_problem_ptr(param);
        p.payload_mut().copy_from_slice(quote);
        fill_upper_checksum(from, src, IPPROTO_ICMPV6, &mut buf[start..], 2);
        self.send_frame(now, buf, src, None);
    }
}

/// Type, Code, Checksum and the 32-bit field that follow them in every ICMPv6 error message
/// (RFC 4443 §3).
const ICMP_ERROR_HEADER_LEN: usize = 8;

/// The part of a TCP header an ICMPv6 error must quote for us to match it to a connection:
/// ports and sequence number (RFC 5927 §4.1: the first 8 octets).
const TCP_QUOTE_LEN: usize = 8;

/// Packet Too Big messages a second that may lower a path MTU without quoting a TCP segment
/// in flight (UDP datagrams, segments behind extension headers): what a sender of forged
/// ones can make us apply.
const PMTU_UNVERIFIED_PER_SEC: u32 = 10;
