//! TCP demultiplexing (RFC 9293 §3.10.7), the connection lifecycle around the TCBs, and the
//! socket API, including freeze, hold and thaw for the handoff.

use super::conn_table::{ConnKey, HoldOutcome};
use super::ethernet::WARM_FROM;
use super::mobility::MOBILITY_EXT_LEN;
use super::siblings::write_plain_packet;
use super::{put_in_free_slot, Error, Interface, ListenHandle, TcpHandle};
use crate::isn::{IsnGenerator, SynCookies};
use crate::state::ConnState;
use crate::tcp::tcb::{SegIn, SegOut, Tcb};
use crate::tcp::{TcpConfig, TcpState};
use crate::time::Instant;
use crate::Packets;
use ds_mipv6::wire::{pseudo_checksum, IPPROTO_TCP};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetProtocol, IpAddress, IpProtocol, TcpControl, TcpPacket, TcpRepr, ETHERNET_HEADER_LEN,
    IPV6_HEADER_LEN, TCP_HEADER_LEN,
};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

/// The first port of the dynamic range, 49152–65535 (RFC 6335 §6).
pub(super) const EPHEMERAL_FIRST: u16 = 49152;

/// Hop limit of a held packet rebuilt for the node that thaws its connection.
const HELD_HOP_LIMIT: u8 = 64;

#[derive(Debug)]
pub(super) struct Listener {
    pub(super) local: SocketAddrV6,
    pub(super) backlog: usize,
    pub(super) accept: VecDeque<u32>,
    pub(super) embryonic: usize,
    /// Settings of the accepted connections, shared with them.
    pub(super) cfg: Arc<TcpConfig>,
}

/// A segment's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    src: u16,
    dst: u16,
}

/// The segment in `pkt` (its length and checksum checked) as the control block takes it, and
/// its ports; `None` for one malformed: a port zero, more than one of SYN, FIN and RST, or
/// options smoltcp's parse rejects (a length that does not fit).
///
/// An established connection's segments carry a timestamp and no other option (RFC 7323
/// §3.2; SACK blocks only while data is missing): those are read at fixed offsets in the two
/// layouts senders use, Linux's NOP, NOP, timestamp (RFC 7323 Appendix A) and ours
/// (smoltcp's: the timestamp, then end-of-list padding), and so is a header without options.
/// Every other segment is parsed by smoltcp's `TcpRepr::parse`, which walks the options as a
/// list and returns a 100-byte representation: ~250 instructions a segment where the fixed
/// reads take a fraction of that (`dsperf conns`, callgrind). Either way the result is the
/// same; a test compares them on segments of every kind.
fn segment<'a>(pkt: &TcpPacket<&'a [u8]>) -> Option<(SegIn<'a>, Ports)> {
    let Some(ts) = fixed_options(pkt.options()) else {
        return segment_parsed(pkt);
    };
    let ports = Ports {
        src: pkt.src_port(),
        dst: pkt.dst_port(),
    };
    if ports.src == 0 || ports.dst == 0 {
        return None;
    }
    // One control value, as smoltcp's representation has (PSH only alone).
    let (syn, fin, rst, psh) = match (pkt.syn(), pkt.fin(), pkt.rst(), pkt.psh()) {
        (false, false, false, psh) => (false, false, false, psh),
        (true, false, false, _) => (true, false, false, false),
        (false, true, false, _) => (false, true, false, false),
        (false, false, true, _) => (false, false, true, false),
        _ => return None,
    };
    let seg = SegIn {
        seq: pkt.seq_number().0 as u32,
        ack: pkt.ack().then(|| pkt.ack_number().0 as u32),
        syn,
        fin,
        rst,
        psh,
        window: pkt.window_len(),
        mss: None,
        wscale: None,
        sack_permitted: false,
        sack: [None; 3],
        ts,
        payload: pkt.payload(),
    };
    Some((seg, ports))
}

/// The timestamp (TSval, TSecr) of options in a layout [`segment`] reads at fixed offsets:
/// `Some(None)` for no options, `Some(Some(..))` for a timestamp alone in Linux's layout or
/// ours, `None` for any other options.
fn fixed_options(opts: &[u8]) -> Option<Option<(u32, u32)>> {
    /// RFC 9293 §3.2 option kinds: no-operation (end of list is 0, below it); RFC 7323
    /// §3.2: the timestamp, 10 octets.
    const NOP: u8 = 1;
    const TS: [u8; 2] = [8, 10];
    let ts = |o: &[u8]| {
        let word = |at: usize| o.get(at..at + 4).and_then(|w| w.try_into().ok());
        Some((u32::from_be_bytes(word(0)?), u32::from_be_bytes(word(4)?)))
    };
    match opts {
        [] => Some(None),
        [NOP, NOP, k, l, rest @ ..] if [*k, *l] == TS && rest.len() == 8 => Some(ts(rest)),
        [k, l, rest @ .., p, q] if [*k, *l] == TS && rest.len() == 8 && *p <= NOP && *q <= NOP => {
            Some(ts(rest))
        }
        _ => None,
    }
}

/// [`segment`] by smoltcp's parse, for segments with other options (RFC 9293 §3.1; MSS,
/// window scale and SACK-permitted on a SYN, SACK blocks, RFC 2018 §3) or other layouts.
fn segment_parsed<'a>(pkt: &TcpPacket<&'a [u8]>) -> Option<(SegIn<'a>, Ports)> {
    // The addresses serve only the checksum, not asked for here (the caller verified it),
    // and smoltcp's debug log of an oversized window scale, which shows them unspecified.
    let none = IpAddress::Ipv6(Ipv6Addr::UNSPECIFIED);
    let repr = TcpRepr::parse(pkt, &none, &none, &ChecksumCapabilities::ignored()).ok()?;
    let seg = SegIn {
        seq: repr.seq_number.0 as u32,
        ack: repr.ack_number.map(|a| a.0 as u32),
        syn: repr.control == TcpControl::Syn,
        fin: repr.control == TcpControl::Fin,
        rst: repr.control == TcpControl::Rst,
        psh: repr.control == TcpControl::Psh,
        window: repr.window_len,
        mss: repr.max_seg_size,
        wscale: repr.window_scale,
        sack_permitted: repr.sack_permitted,
        sack: repr.sack_ranges,
        ts: repr.timestamp.map(|t| (t.tsval, t.tsecr)),
        payload: repr.payload,
    };
    let ports = Ports {
        src: repr.src_port,
        dst: repr.dst_port,
    };
    Some((seg, ports))
}

impl Interface {
    /// The key of the connection a frame's TCP segment is for and its hash
    /// ([`Interface::receive_batch`]); `None` for a frame not to our MAC, not of type IPv6,
    /// whose fixed IPv6 header is not followed by TCP, or shorter than the ports (the rest
    /// takes the full path only). Nothing else is checked (not the IP version, lengths or TCP
    /// header): a malformed or forged frame costs needless prefetches at most, since the hint
    /// counts only for an equal key, and [`Interface::receive`] judges every frame as if this
    /// had not run.
    ///
    /// Read at fixed offsets rather than parsed (the parse, with smoltcp's checks, was most of
    /// the look-ahead's own instructions, and `receive` parses the frame again anyway):
    /// Ethernet (RFC 2464 §3: destination, source, type 0x86DD), the fixed IPv6 header
    /// (RFC 8200 §3: next header at 6, source at 8, destination at 24), TCP's ports first
    /// (RFC 9293 §3.1).
    pub(super) fn segment_key(&self, frame: &[u8]) -> Option<(ConnKey, u64)> {
        const IP: usize = ETHERNET_HEADER_LEN;
        const TCP: usize = IP + IPV6_HEADER_LEN;
        let h: &[u8; TCP + 4] = frame.get(..TCP + 4)?.try_into().ok()?;
        if h[12..14] != u16::from(EthernetProtocol::Ipv6).to_be_bytes()
            || h[..6] != self.cfg.mac
            || h[IP + 6] != u8::from(IpProtocol::Tcp)
        {
            return None;
        }
        let addr = |at: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&h[at..at + 16]);
            Ipv6Addr::from(a)
        };
        let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
        // As `receive_tcp` keys it: (local, local port, remote, remote port).
        let key = ConnKey(addr(IP + 24), port(TCP + 2), addr(IP + 8), port(TCP));
        Some((key, self.conns.hash(&key)))
    }

    /// Whether the connections' small buffer storage goes through the interface's pool
    /// (`BufPool`): from as many connections as the look-ahead warms, where a connection's own
    /// buffer would be a cold line; fewer keep their own.
    fn pools_buffers(&self) -> bool {
        self.conns.len() >= WARM_FROM
    }

    /// Hand `seg` to connection `idx`, its receive buffer supplied from the pool before and
    /// the buffers it emptied given back after (from [`WARM_FROM`] connections): SND.UNA
    /// before and after, if the connection exists. Always inlined into the per-segment path:
    /// callgrind counts the same instructions an exchange as the code it replaced there.
    #[inline(always)]
    fn feed(&mut self, idx: u32, now: Instant, seg: &SegIn<'_>) -> Option<(u32, u32)> {
        let pooled = self.pools_buffers();
        let t = self.conns.get_mut(idx)?;
        let before = t.snd_una;
        if pooled {
            t.supply_recv(&mut self.bufs, seg.payload.len());
        }
        t.on_segment(now, seg);
        t.release_idle_receive_buffer(now);
        if pooled {
            t.release_buffers(&mut self.bufs);
        }
        Some((before, t.snd_una))
    }

    /// (Re-)arm the connection's timer at the TCB's next deadline.
    pub(super) fn arm(&mut self, idx: u32) {
        let at = self.conns.get(idx).and_then(|t| t.poll_at());
        self.conns.arm(idx, at);
    }

    /// Connections that saw a network event (data, ACKs that freed send space, FIN, RST,
    /// timeout) since the last call, appended to `out`. Lets an application with many
    /// connections service only those instead of scanning all of them each step.
    pub fn tcp_take_ready(&mut self, out: &mut Vec<TcpHandle>) {
        self.conns.take_ready(out);
    }

    /// Bookkeeping after anything touched a TCB: counters, timers, output, lifecycle.
    pub(super) fn after_tcb_event(&mut self, idx: u32) {
        self.after_tcb_event_inner(idx, true);
    }

    /// As [`Self::after_tcb_event`] but without queueing output (used right after draining).
    pub(super) fn after_tcb_event_quiet(&mut self, idx: u32) {
        self.after_tcb_event_inner(idx, false);
    }

    pub(super) fn after_tcb_event_inner(&mut self, idx: u32, output: bool) {
        let Some(tcb) = self.conns.get_mut(idx) else {
            return;
        };
        let ev = tcb.take_events();
        let state = tcb.state();
        let wants = tcb.wants_output();
        let listener = tcb.listener;
        self.stats.tcp_retransmits += u64::from(ev.retransmits);
        self.stats.tcp_rto += u64::from(ev.rto);
        self.stats.tcp_fast_recovery += u64::from(ev.fast_recovery);
        self.stats.tcp_challenge_acks += u64::from(ev.challenge_acks);
        self.stats.tcp_paws_rejected += u64::from(ev.paws_rejected);
        self.stats.tcp_oow_acks_limited += u64::from(ev.oow_acks_limited);
        self.stats.tcp_zero_window_probes += u64::from(ev.zero_window_probes);
        self.stats.tcp_tx_segments += u64::from(ev.segments_out);
        self.stats.tcp_ooo_segments += u64::from(ev.ooo_segments);
        self.stats.tcp_ooo_dropped += u64::from(ev.ooo_dropped);
        // An embryonic passive connection that completed the handshake joins the accept queue.
        if let Some(l) = listener {
            if state != TcpState::SynReceived {
                if let Some(t) = self.conns.get_mut(idx) {
                    t.listener = None;
                }
                if let Some(Some(lst)) = self.listeners.get_mut(l as usize) {
                    lst.embryonic = lst.embryonic.saturating_sub(1);
                    if state != TcpState::Closed {
                        lst.accept.push_back(idx);
                    } else {
                        self.conns.release(idx);
                    }
                } else {
                    self.conns.release(idx);
                }
            }
        }
        if wants && output {
            self.conns.mark_dirty(idx);
        }
        if state == TcpState::Closed {
            self.conns.unlink_slot(idx);
            if !wants && self.conns.is_released(idx) {
                self.conns.remove(idx);
                return;
            }
        }
        self.arm(idx);
    }

    /// A TCP segment for us (RFC 9293 §3.10.7): to its connection, else held for a frozen
    /// one, else a SYN to a listener (§3.10.7.2), else answered with a reset (§3.10.7.1).
    pub(super) fn receive_tcp(
        &mut self,
        now: Instant,
        payload: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        if dst.is_multicast() {
            self.stats.rx_malformed += 1;
            return;
        }
        let Ok(pkt) = TcpPacket::new_checked(payload) else {
            self.stats.rx_malformed += 1;
            return;
        };
        // RFC 9293 §3.1: the checksum covers the pseudo-header (RFC 8200 §8.1) and the segment.
        if pseudo_checksum(src, dst, IPPROTO_TCP, payload) != 0 {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let Some((seg, ports)) = segment(&pkt) else {
            self.stats.rx_malformed += 1;
            return;
        };
        self.stats.tcp_rx_segments += 1;
        let key = ConnKey(dst, ports.dst, src, ports.src);
        if let Some(idx) = self.conns.lookup(&key) {
            // A sibling may hold an established connection of this 4-tuple that a stray SYN
            // opened here as well: what this one cannot take goes round to it, and is reset
            // (RFC 9293 §3.10.7.4, §3.10.7.1) only where no sibling had it, as one interface
            // would have found the established connection and never opened this one.
            if self.siblings() > 0
                && self
                    .conns
                    .get(idx)
                    .is_some_and(|t| t.unacceptable_in_syn_received(&seg))
                && self.pass_to_sibling(src, dst, IpProtocol::Tcp, HELD_HOP_LIMIT, payload)
            {
                return;
            }
            if let Some((before, after)) = self.feed(idx, now, &seg) {
                if after != before {
                    self.nd.confirm(now, src);
                }
            }
            self.conns.mark_ready(idx);
            self.after_tcb_event(idx);
            return;
        }
        // A frozen connection: never answered with RST; its packets are held for the node
        // that thaws it (`tcp_take_held`), up to a bound.
        // Held as a plain IPv6 packet between the addresses TCP sees (home addresses, not
        // care-of ones), so the segment's checksum verifies wherever it is fed back.
        // Written straight into the hold's storage: no allocation per packet held.
        let held = self
            .conns
            .hold_packet(&key, IPV6_HEADER_LEN + payload.len(), |into| {
                write_plain_packet(into, src, dst, IpProtocol::Tcp, HELD_HOP_LIMIT, payload)
            });
        match held {
            HoldOutcome::NotFrozen => {}
            HoldOutcome::Held => {
                self.stats.tcp_held += 1;
                return;
            }
            HoldOutcome::Full => {
                self.stats.tcp_no_socket += 1;
                return;
            }
        }
        let listener = self
            .listen_map
            .get(&(dst, ports.dst))
            .or_else(|| self.listen_map.get(&(Ipv6Addr::UNSPECIFIED, ports.dst)))
            .copied();
        if let Some(l) = listener {
            if seg.syn && seg.ack.is_none() && !seg.rst {
                self.accept_syn(now, l, &seg, dst, ports.dst, src, ports.src);
                return;
            }
            // A segment a sibling passed on was checked there already (the siblings share
            // the cookie key).
            if !seg.syn
                && !seg.rst
                && seg.ack.is_some()
                && self.cfg.syn_cookies
                && !self.passed_by_sibling()
                && self.accept_cookie(
                    now,
                    l,
                    &seg,
                    SocketAddrV6::new(dst, ports.dst, 0, 0),
                    SocketAddrV6::new(src, ports.src, 0, 0),
                )
            {
                return;
            }
        }
        // Not ours: perhaps a sibling's (one interface per receive queue), which it gets
        // instead of a reset.
        if self.pass_to_sibling(src, dst, IpProtocol::Tcp, HELD_HOP_LIMIT, payload) {
            return;
        }
        self.stats.tcp_no_socket += 1;
        tracing::debug!(
            %src, sport = ports.src, %dst, dport = ports.dst, seq = seg.seq, ack = ?seg.ack,
            syn = seg.syn, rst = seg.rst, len = seg.seg_len(),
            "TCP segment for no connection"
        );
        if !seg.rst {
            // RFC 9293 §3.10.7.1: answer segments for no connection with RST.
            let (seq, ack) = match seg.ack {
                Some(a) => (a, None),
                None => (0, Some(seg.seq.wrapping_add(seg.seg_len()))),
            };
            let s = SegOut {
                seq,
                ack,
                rst: true,
                ..SegOut::default()
            };
            let local = SocketAddrV6::new(dst, ports.dst, 0, 0);
            let remote = SocketAddrV6::new(src, ports.src, 0, 0);
            self.emit_tcp_ctrl(now, &local, &remote, &s);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept_syn(
        &mut self,
        now: Instant,
        l: u32,
        seg: &SegIn<'_>,
        dst: Ipv6Addr,
        dport: u16,
        src: Ipv6Addr,
        sport: u16,
    ) {
        let Some(Some(lst)) = self.listeners.get(l as usize) else {
            return;
        };
        let full = lst.accept.len() + lst.embryonic >= lst.backlog;
        let cfg = lst.cfg.clone();
        let local = SocketAddrV6::new(dst, dport, 0, 0);
        let remote = SocketAddrV6::new(src, sport, 0, 0);
        if full {
            if self.cfg.syn_cookies {
                self.send_cookie(now, cfg, &local, &remote, seg);
            } else {
                self.stats.tcp_backlog_drops += 1;
            }
            return;
        }
        let iss = self.isn.iss_for(now, &local, &remote);
        let mss = self.mss_for(now, &dst, &src);
        let tcb = Tcb::accept_syn(local, remote, cfg, iss, mss, now, seg);
        let idx = self.insert_embryonic(l, tcb);
        self.after_tcb_event(idx);
    }

    /// A connection in SYN-RECEIVED for listener `l`: it counts against the backlog until it
    /// is accepted.
    fn insert_embryonic(&mut self, l: u32, mut tcb: Tcb) -> u32 {
        tcb.listener = Some(l);
        if let Some(Some(lst)) = self.listeners.get_mut(l as usize) {
            lst.embryonic += 1;
        }
        self.insert_tcb(tcb)
    }

    /// RFC 4987 §3.6: the backlog is full, so the SYN is answered with a SYN-ACK whose ISN is
    /// a cookie and nothing is kept. The SYN-ACK is the one a connection would send (built by
    /// a throwaway TCB), its TSval carrying the client's window scale and SACK-permitted.
    fn send_cookie(
        &mut self,
        now: Instant,
        cfg: Arc<TcpConfig>,
        local: &SocketAddrV6,
        remote: &SocketAddrV6,
        seg: &SegIn<'_>,
    ) {
        let cookie = self.cookies.make(now, local, remote, seg.seq, seg.mss);
        let mss = self.mss_for(now, local.ip(), remote.ip());
        let mut tcb = Tcb::accept_syn(*local, *remote, cfg, cookie, mss, now, seg);
        let Some(mut synack) = tcb.next_segment(now) else {
            return;
        };
        if let Some((tsval, tsecr)) = synack.ts {
            let ws = seg.wscale.filter(|_| synack.wscale.is_some());
            let sack = seg.sack_permitted && synack.sack_permitted;
            synack.ts = Some((SynCookies::ts_options(tsval, ws, sack), tsecr));
        } else {
            // Without timestamps the options cannot come back: offer none (as Linux does).
            synack.wscale = None;
            synack.sack_permitted = false;
        }
        self.stats.tcp_syncookies_sent += 1;
        self.emit_tcp_ctrl(now, local, remote, &synack);
    }

    /// An ACK for no connection on a listening port: if it returns a valid SYN cookie, the
    /// connection is made from it (RFC 4987 §3.6) and the ACK processed; false otherwise (it
    /// is then answered like any segment for no connection).
    fn accept_cookie(
        &mut self,
        now: Instant,
        l: u32,
        seg: &SegIn<'_>,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    ) -> bool {
        let Some(Some(lst)) = self.listeners.get(l as usize) else {
            return false;
        };
        let (Some(ack), client_isn) = (seg.ack, seg.seq.wrapping_sub(1)) else {
            return false;
        };
        let cookie = ack.wrapping_sub(1);
        let Some(syn) = self.cookies.check(now, &local, &remote, client_isn, cookie) else {
            self.stats.tcp_syncookies_failed += 1;
            return false;
        };
        if lst.accept.len() >= lst.backlog {
            // No room to accept it: dropped; the client retransmits (RFC 4987 §3.6).
            self.stats.tcp_backlog_drops += 1;
            return true;
        }
        let cfg = lst.cfg.clone();
        let (wscale, sack) = match seg.ts {
            Some((_, tsecr)) => SynCookies::options_of(tsecr),
            None => (None, false),
        };
        // The SYN as it was, from what the cookie and the TSval kept.
        let first = SegIn {
            seq: client_isn,
            ack: None,
            syn: true,
            fin: false,
            rst: false,
            psh: false,
            window: seg.window,
            mss: Some(syn.mss),
            wscale,
            sack_permitted: sack,
            sack: [None; 3],
            ts: seg.ts.map(|(tsval, _)| (tsval, 0)),
            payload: &[],
        };
        let mss = self.mss_for(now, local.ip(), remote.ip());
        let mut tcb = Tcb::accept_syn(local, remote, cfg, cookie, mss, now, &first);
        // Our SYN-ACK went out (statelessly): the connection takes it as sent.
        let _ = tcb.next_segment(now);
        let idx = self.insert_embryonic(l, tcb);
        // The ACK may carry the first request: into a pooled buffer, as on any segment.
        self.feed(idx, now, seg);
        self.stats.tcp_syncookies_ok += 1;
        self.conns.mark_ready(idx);
        self.after_tcb_event(idx);
        true
    }

    /// The MSS of a connection from `local` to `dst`, from the path MTU towards `dst`.
    pub(super) fn mss_for(&self, now: Instant, local: &Ipv6Addr, dst: &Ipv6Addr) -> u32 {
        self.mss_at(local, self.path_mtu(now, dst))
    }

    /// The MSS for a path MTU: IPv6 and TCP headers off (options are subtracted when sending,
    /// RFC 9293 §3.7.1), and, for a home address served away from home, the Home Address
    /// option every segment carries (RFC 6275 §6.3, §11.3.1).
    pub(super) fn mss_at(&self, local: &Ipv6Addr, mtu: usize) -> u32 {
        let hao = if self.home_addrs.contains(local) {
            MOBILITY_EXT_LEN
        } else {
            0
        };
        mtu.saturating_sub(IPV6_HEADER_LEN + TCP_HEADER_LEN + hao) as u32
    }

    /// Add a connection to the table under its 4-tuple.
    pub(super) fn insert_tcb(&mut self, tcb: Tcb) -> u32 {
        let key = ConnKey::of(&tcb.local, &tcb.remote);
        self.conns.insert(key, tcb)
    }

    /// The connection a handle names.
    pub(super) fn tcb(&self, h: TcpHandle) -> Result<&Tcb, Error> {
        self.conns.by_handle(h).ok_or(Error::InvalidHandle)
    }

    /// The connection a handle names.
    pub(super) fn tcb_mut(&mut self, h: TcpHandle) -> Result<&mut Tcb, Error> {
        self.conns.by_handle_mut(h).ok_or(Error::InvalidHandle)
    }

    /// Listen on `local` (unspecified address: all of ours) with the default TCP settings.
    pub fn tcp_listen(
        &mut self,
        local: SocketAddrV6,
        backlog: usize,
    ) -> Result<ListenHandle, Error> {
        let cfg = Arc::clone(&self.tcp_default);
        self.tcp_listen_with(local, backlog, cfg)
    }

    /// Listen with explicit TCP settings for accepted connections.
    pub fn tcp_listen_with(
        &mut self,
        local: SocketAddrV6,
        backlog: usize,
        cfg: impl Into<Arc<TcpConfig>>,
    ) -> Result<ListenHandle, Error> {
        let cfg = cfg.into();
        if !local.ip().is_unspecified() && !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        let key = (*local.ip(), local.port());
        if self.listen_map.contains_key(&key) {
            return Err(Error::AddrInUse);
        }
        let l = Listener {
            local,
            backlog: backlog.max(1),
            accept: VecDeque::new(),
            embryonic: 0,
            cfg,
        };
        let idx = put_in_free_slot(&mut self.listeners, l);
        self.listen_map.insert(key, idx as u32);
        Ok(ListenHandle(idx as u32))
    }

    /// Stop listening. Connections not yet accepted are reset.
    pub fn tcp_unlisten(&mut self, l: ListenHandle) {
        if let Some(slot) = self.listeners.get_mut(l.0 as usize) {
            if let Some(lst) = slot.take() {
                self.listen_map.remove(&(*lst.local.ip(), lst.local.port()));
                for idx in lst.accept {
                    if let Some(t) = self.conns.get_mut(idx) {
                        t.abort();
                    }
                    self.conns.release(idx);
                    self.after_tcb_event(idx);
                }
            }
        }
    }

    /// Take the next established connection from a listener's queue.
    pub fn tcp_accept(&mut self, l: ListenHandle) -> Option<TcpHandle> {
        let idx = self
            .listeners
            .get_mut(l.0 as usize)?
            .as_mut()?
            .accept
            .pop_front()?;
        Some(self.conns.handle(idx))
    }

    /// Active open from `local` (port 0: ephemeral) to `remote` with the default settings.
    pub fn tcp_connect(
        &mut self,
        now: Instant,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    ) -> Result<TcpHandle, Error> {
        let cfg = Arc::clone(&self.tcp_default);
        self.tcp_connect_with(now, local, remote, cfg)
    }

    /// Active open with explicit settings.
    pub fn tcp_connect_with(
        &mut self,
        now: Instant,
        local: SocketAddrV6,
        remote: SocketAddrV6,
        cfg: impl Into<Arc<TcpConfig>>,
    ) -> Result<TcpHandle, Error> {
        let cfg = cfg.into();
        self.now = self.now.max(now);
        let ip = if local.ip().is_unspecified() {
            self.source_for(remote.ip())
        } else {
            *local.ip()
        };
        if !self.is_ours(&ip) {
            return Err(Error::AddrNotAvailable);
        }
        let port = if local.port() == 0 {
            self.ephemeral_port(&ip, &remote)?
        } else {
            local.port()
        };
        let local = SocketAddrV6::new(ip, port, 0, 0);
        if self.conns.lookup(&ConnKey::of(&local, &remote)).is_some() {
            return Err(Error::AddrInUse);
        }
        let iss = self.isn.iss_for(now, &local, &remote);
        let mss = self.mss_for(now, &ip, remote.ip());
        let tcb = Tcb::connect(local, remote, cfg, iss, mss, now);
        let idx = self.insert_tcb(tcb);
        self.after_tcb_event(idx);
        self.conns.mark_dirty(idx);
        Ok(self.conns.handle(idx))
    }

    /// A free port from the dynamic range (RFC 6335 §6), tried in turn from where the last
    /// search stopped.
    pub(super) fn ephemeral_port(
        &mut self,
        ip: &Ipv6Addr,
        remote: &SocketAddrV6,
    ) -> Result<u16, Error> {
        for _ in 0..16384 {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                p + 1
            };
            let key = ConnKey(*ip, p, *remote.ip(), remote.port());
            if !self.conns.in_use(&key) {
                return Ok(p);
            }
        }
        Err(Error::NoPorts)
    }

    /// The connection's state (`None` for a stale handle).
    pub fn tcp_state(&self, h: TcpHandle) -> Option<TcpState> {
        self.tcb(h).ok().map(|t| t.state())
    }

    /// Local and remote endpoints.
    pub fn tcp_endpoints(&self, h: TcpHandle) -> Option<(SocketAddrV6, SocketAddrV6)> {
        self.tcb(h).ok().map(|t| (t.local, t.remote))
    }

    /// The error that ended the connection, if one did.
    pub(super) fn check_error(t: &Tcb) -> Result<(), Error> {
        match t.error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Queue data; returns the bytes accepted (0: the send buffer is full for now).
    pub fn tcp_send(&mut self, h: TcpHandle, data: &[u8]) -> Result<usize, Error> {
        let pooled = self.pools_buffers();
        // (The control block borrowed beside the buffer pool.)
        let t = self.conns.by_handle_mut(h).ok_or(Error::InvalidHandle)?;
        Self::check_error(t)?;
        if !matches!(
            t.state(),
            TcpState::Established | TcpState::CloseWait | TcpState::SynSent | TcpState::SynReceived
        ) || t.fin_queued
        {
            return Err(Error::InvalidState);
        }
        if pooled {
            t.supply_send(&mut self.bufs, data.len());
        }
        let n = t.send(data);
        if n > 0 {
            self.conns.mark_dirty(h.idx);
        }
        Ok(n)
    }

    /// Room in the send buffer.
    pub fn tcp_send_space(&self, h: TcpHandle) -> usize {
        self.tcb(h).map(|t| t.send_space()).unwrap_or(0)
    }

    /// Bytes queued for sending and not yet acknowledged (0: drained).
    pub fn tcp_send_queued(&self, h: TcpHandle) -> usize {
        self.tcb(h).map(|t| t.send_queued()).unwrap_or(0)
    }

    /// Bytes ready to read.
    pub fn tcp_recv_available(&self, h: TcpHandle) -> usize {
        self.tcb(h).map(|t| t.recv_available()).unwrap_or(0)
    }

    /// Read data: `Ok(0)` when nothing is ready yet, `Err(Eof)` after the peer's FIN.
    pub fn tcp_recv(&mut self, h: TcpHandle, buf: &mut [u8]) -> Result<usize, Error> {
        let pooled = self.pools_buffers();
        let t = self.conns.by_handle_mut(h).ok_or(Error::InvalidHandle)?;
        if t.recv_available() == 0 {
            Self::check_error(t)?;
            if t.at_eof() {
                return Err(Error::Eof);
            }
            if matches!(t.state(), TcpState::Closed) {
                return Err(Error::Eof);
            }
            return Ok(0);
        }
        let n = t.recv(buf);
        if pooled {
            t.release_buffers(&mut self.bufs);
        }
        if t.ack_now {
            self.conns.mark_dirty(h.idx);
        }
        Ok(n)
    }

    /// Close the sending side: a FIN follows the queued data.
    pub fn tcp_close(&mut self, h: TcpHandle) -> Result<(), Error> {
        let t = self.tcb_mut(h)?;
        t.close();
        self.after_tcb_event(h.idx);
        self.conns.mark_dirty(h.idx);
        Ok(())
    }

    /// Abort with RST.
    pub fn tcp_abort(&mut self, h: TcpHandle) -> Result<(), Error> {
        let t = self.tcb_mut(h)?;
        t.abort();
        self.conns.mark_dirty(h.idx);
        Ok(())
    }

    /// Give the handle up. A connection the application closed finishes on its own; one still
    /// open is aborted.
    pub fn tcp_release(&mut self, h: TcpHandle) {
        let Ok(t) = self.tcb_mut(h) else { return };
        if !t.fin_queued && !matches!(t.state(), TcpState::Closed | TcpState::TimeWait) {
            t.abort();
        }
        self.conns.release(h.idx);
        self.conns.mark_dirty(h.idx);
        self.after_tcb_event(h.idx);
    }

    /// Solicit an immediate ACK from the peer for everything sent (see the probe in RFC 9293
    /// §3.8.4): a drain before a handoff then ends one round trip after the last segment,
    /// not after the peer's delayed-ACK timer. `Ok(false)` while data is still unsent (ask
    /// again later) or nothing is unacknowledged.
    pub fn tcp_solicit_ack(&mut self, h: TcpHandle) -> Result<bool, Error> {
        let queued = self.tcb_mut(h)?.solicit_ack();
        if queued {
            self.after_tcb_event(h.idx);
            self.conns.mark_dirty(h.idx);
        }
        Ok(queued)
    }

    /// Configure Nagle on a connection.
    pub fn tcp_set_nodelay(&mut self, h: TcpHandle, nodelay: bool) -> Result<(), Error> {
        let t = self.tcb_mut(h)?;
        if t.cfg.nagle == nodelay {
            // Copy-on-write: the settings are shared until a connection changes its own.
            Arc::make_mut(&mut t.cfg).nagle = !nodelay;
        }
        Ok(())
    }

    /// Freeze: stop the connection (no more output, no timers) and return its state. Its
    /// packets arriving afterwards are dropped silently (not reset) until [`Self::tcp_thaw`]
    /// brings it back here or [`Self::tcp_forget_frozen`] is called.
    pub fn tcp_freeze(&mut self, now: Instant, h: TcpHandle) -> Result<ConnState, Error> {
        let t = self.tcb(h)?;
        let state = t.to_state(now).ok_or(Error::InvalidState)?;
        let key = ConnKey::of(&t.local, &t.remote);
        self.conns.freeze(key, now);
        self.conns.remove(h.idx);
        Ok(state)
    }

    /// Stop holding off packets of a frozen connection (it now lives elsewhere). Returns the
    /// packets still held.
    pub fn tcp_forget_frozen(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.conns.forget(&ConnKey::of(&local, &remote))
    }

    /// Take the packets that reached a frozen connection since its freeze (IPv6 packets, TCP
    /// inside, checksums valid for their addresses). Forward them to the node that thawed it,
    /// which feeds them to [`Interface::receive_ipv6`]: the handoff gap then costs the client
    /// no retransmission.
    pub fn tcp_take_held(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.conns.take_held(&ConnKey::of(&local, &remote))
    }

    /// Reserve the connection `local` ↔ `remote` for a thaw to come: its packets are held
    /// from now on (as a frozen connection's, [`Self::tcp_take_held`]) until
    /// [`Self::tcp_thaw`] or [`Self::tcp_forget_frozen`]. Fails when the local address is not
    /// ours or a live connection has these ends; a connection frozen here stays held.
    pub fn tcp_hold(
        &mut self,
        now: Instant,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    ) -> Result<(), Error> {
        if !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        let key = ConnKey::of(&local, &remote);
        if self.conns.lookup(&key).is_some() {
            return Err(Error::AddrInUse);
        }
        self.conns.hold(key, now);
        Ok(())
    }

    /// Resume a frozen connection on this interface. The local address must be ours.
    pub fn tcp_thaw(&mut self, now: Instant, state: &ConnState) -> Result<TcpHandle, Error> {
        self.now = self.now.max(now);
        state.validate()?;
        let local = state.local();
        let remote = state.remote();
        if !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        let key = ConnKey::of(&local, &remote);
        if self.conns.lookup(&key).is_some() {
            return Err(Error::AddrInUse);
        }
        self.conns.forget(&key);
        let mut tcb = Tcb::from_state(state, &self.tcp_default, now);
        let mss = self.mss_for(now, local.ip(), remote.ip());
        if mss < tcb.snd_mss {
            tcb.snd_mss = mss;
        }
        let idx = self.insert_tcb(tcb);
        self.after_tcb_event(idx);
        self.conns.mark_dirty(idx);
        Ok(self.conns.handle(idx))
    }

    /// Number of live connections (any state but closed-and-released).
    pub fn tcp_connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections that still owe their peer something: not yet closed, or closing with data
    /// or a FIN unacknowledged (every state but TIME-WAIT and CLOSED).
    pub fn tcp_unfinished_count(&self) -> usize {
        self.conns
            .live()
            .filter(|t| !matches!(t.state(), TcpState::TimeWait | TcpState::Closed))
            .count()
    }
}

impl IsnGenerator {
    fn iss_for(&self, now: Instant, local: &SocketAddrV6, remote: &SocketAddrV6) -> u32 {
        self.isn(now, local, remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::Config;
    use std::time::Duration;

    const ME: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0xc);

    fn server(port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 1), port, 0, 0)
    }

    /// The fixed reads of an established connection's segment give what smoltcp's parse
    /// gives, on segments of every flag combination with the option layouts they read, with
    /// layouts that look like them and are not, and with random options.
    #[test]
    fn a_segment_read_at_fixed_offsets_is_the_segment_parsed() {
        let ts = [8, 10, 0x11, 0x22, 0x33, 0x44, 0xa5, 0xb6, 0xc7, 0xd8];
        let with = |pre: &[u8], post: &[u8]| [pre, &ts[..], post].concat();
        let fixed = [
            vec![],
            with(&[1, 1], &[]),
            with(&[], &[0, 0]),
            with(&[], &[1, 1]),
            with(&[], &[1, 0]),
            with(&[], &[0, 1]),
        ];
        for opts in &fixed {
            let read = fixed_options(opts);
            let want = (!opts.is_empty()).then_some((0x1122_3344, 0xa5b6_c7d8));
            assert_eq!(read, Some(want), "{opts:?} is read at fixed offsets");
        }
        let mut layouts: Vec<Vec<u8>> = fixed.to_vec();
        layouts.extend([
            // Not read at fixed offsets: SACK blocks after the timestamp (RFC 2018 §3), a
            // SYN's options, padding that is not padding, a wrong length, another order.
            with(&[1, 1], &[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            with(&[2, 4, 5, 0xb4, 1, 3, 3, 7, 4, 2], &[]),
            with(&[], &[2, 0]),
            with(&[], &[1, 2]),
            vec![1, 1, 8, 9, 0, 0, 0, 1, 0, 0, 0, 2],
            vec![8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 1, 1, 1, 1],
            vec![1, 1, 1, 1],
        ]);
        for opts in &layouts[fixed.len()..] {
            assert_eq!(fixed_options(opts), None, "{opts:?} is parsed");
        }
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..64 {
            let n = 4 * (1 + next() as usize % 10);
            let mut random: Vec<u8> = (0..n).map(|_| next() as u8 % 12).collect();
            if next() % 2 == 0 {
                random[..2].copy_from_slice(&[8, 10]);
            }
            layouts.push(random);
        }
        let (mut compared, mut read) = (0, 0);
        for opts in &layouts {
            assert_eq!(opts.len() % 4, 0, "{opts:?}");
            for flags in 0..64u8 {
                let r = next();
                let ports = match r % 8 {
                    0 => [0, 80],
                    1 => [40000, 0],
                    _ => [40000 + (r >> 8) as u16 % 1000, 80],
                };
                let mut seg = vec![0u8; TCP_HEADER_LEN];
                seg[0..2].copy_from_slice(&ports[0].to_be_bytes());
                seg[2..4].copy_from_slice(&ports[1].to_be_bytes());
                seg[4..8].copy_from_slice(&((r >> 16) as u32).to_be_bytes());
                seg[8..12].copy_from_slice(&((r >> 24) as u32).to_be_bytes());
                seg[12] = (((TCP_HEADER_LEN + opts.len()) / 4) as u8) << 4;
                seg[13] = flags;
                seg[14..16].copy_from_slice(&((r >> 40) as u16).to_be_bytes());
                seg.extend_from_slice(opts);
                seg.extend((0..r % 70).map(|i| i as u8));
                let pkt = TcpPacket::new_checked(&seg[..]).expect("well-formed lengths");
                let (fast, parsed) = (segment(&pkt), segment_parsed(&pkt));
                assert_eq!(fast, parsed, "options {opts:?}, flags {flags:#x}");
                compared += 1;
                read += usize::from(fast.is_some_and(|(s, _)| s.ts.is_some()));
            }
        }
        assert!(
            compared > 4000 && read > 100,
            "{compared} compared, {read} with a timestamp"
        );
    }

    #[test]
    fn connections_share_their_settings_until_one_changes_its_own() {
        let mut i = Interface::new(Config::new([2, 0, 0, 0, 0, 0xc], vec![ME]), Instant::ZERO);
        let any = SocketAddrV6::new(ME, 0, 0, 0);
        let a = i.tcp_connect(Instant::ZERO, any, server(1)).expect("a");
        let b = i.tcp_connect(Instant::ZERO, any, server(2)).expect("b");
        let cfg = |i: &Interface, h| Arc::clone(&i.tcb(h).expect("tcb").cfg);
        assert!(Arc::ptr_eq(&cfg(&i, a), &cfg(&i, b)));
        assert!(Arc::ptr_eq(&cfg(&i, a), &i.tcp_default));

        // Setting what is already set keeps the shared copy; a change is the connection's own.
        i.tcp_set_nodelay(a, false).expect("nodelay");
        assert!(Arc::ptr_eq(&cfg(&i, a), &cfg(&i, b)));
        i.tcp_set_nodelay(a, true).expect("nodelay");
        assert!(!cfg(&i, a).nagle);
        assert!(cfg(&i, b).nagle);
        assert!(Arc::ptr_eq(&cfg(&i, b), &i.tcp_default));

        // New defaults apply to connections opened afterwards only.
        i.tcp_config_mut().max_retries = 3;
        let c = i.tcp_connect(Instant::ZERO, any, server(3)).expect("c");
        assert_eq!(cfg(&i, c).max_retries, 3);
        assert_ne!(cfg(&i, b).max_retries, 3);
        assert!(Arc::ptr_eq(&cfg(&i, c), &i.tcp_default));
    }

    /// The look-ahead's key, read at fixed offsets, is the one the full parse demultiplexes
    /// by, for every TCP frame of a connection's life here (SYN, handshake ACK, data), and
    /// those of an established connection find it (a wrong key would only cost the
    /// look-ahead its use, silently). Frames that are not plain IPv6 + TCP to our MAC, or too
    /// short to hold the ports, have none.
    #[test]
    fn the_look_ahead_keys_a_frame_as_its_connection() {
        let (srv_mac, srv_addr) = (
            [2, 0, 0, 0, 0, 0x80],
            Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x80),
        );
        let now = Instant::from_millis(1);
        let mut cli = Interface::new(Config::new([2, 0, 0, 0, 0, 0xc], vec![ME]), now);
        let mut srv = Interface::new(Config::new(srv_mac, vec![srv_addr]), now);
        let at = SocketAddrV6::new(srv_addr, 80, 0, 0);
        let l = srv.tcp_listen(at, 4).expect("listen");
        let h = cli
            .tcp_connect(now, SocketAddrV6::new(ME, 40_000, 0, 0), at)
            .expect("connect");
        use smoltcp::wire::{EthernetFrame, Ipv6Packet};
        // The key as `receive_tcp` makes it, from smoltcp's full parse.
        let parsed = |f: &[u8]| {
            let eth = EthernetFrame::new_checked(f).ok()?;
            if eth.dst_addr().0 != srv_mac || eth.ethertype() != EthernetProtocol::Ipv6 {
                return None;
            }
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            Some(ConnKey(
                ip.dst_addr(),
                tcp.dst_port(),
                ip.src_addr(),
                tcp.src_port(),
            ))
        };
        let (mut tcp_frames, mut keyed, mut f_known) = (0, 0, Vec::new());
        for round in 0..6 {
            if round == 3 {
                assert_eq!(cli.tcp_send(h, b"look ahead"), Ok(10));
            }
            let (mut up, mut down) = (Vec::new(), Vec::new());
            cli.poll(now);
            cli.transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
            for f in &up {
                let got = srv.segment_key(f);
                assert_eq!(got.map(|(key, _)| key), parsed(f), "{f:?}");
                // (The SYN's key is no connection's yet; ND's frames have none.)
                if let Some((key, hash)) = got {
                    tcp_frames += 1;
                    assert_eq!(hash, srv.conns.hash(&key));
                    if srv.conns.lookup(&key).is_some() {
                        keyed += 1;
                        f_known = f.clone();
                    }
                }
                srv.receive(now, f);
            }
            while srv.tcp_accept(l).is_some() {}
            srv.poll(now);
            srv.transmit(now, &mut |f: &[u8]| down.push(f.to_vec()));
            for f in &down {
                // Towards the client's MAC, not ours.
                assert_eq!(srv.segment_key(f), None);
                cli.receive(now, f);
            }
        }
        assert!(tcp_frames >= 3, "SYN, ACK and data: {tcp_frames}");
        assert!(
            keyed >= 2,
            "the handshake's ACK and the data, keyed: {keyed}"
        );
        let f = f_known;
        assert_eq!(
            srv.segment_key(&f[..14 + 40 + 3]),
            None,
            "short of the ports"
        );
        let mut udp = f.clone();
        udp[14 + 6] = 17;
        assert_eq!(srv.segment_key(&udp), None, "not TCP");
        let mut v4 = f.clone();
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(srv.segment_key(&v4), None, "not IPv6");
    }

    /// A client and a server interface in memory, the server listening on port 80 of its
    /// address (a backlog of one): the client, the server, where it listens, the listener.
    fn listening_pair(now: Instant) -> (Interface, Interface, SocketAddrV6, ListenHandle) {
        let srv_addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x80);
        let cli = Interface::new(Config::new([2, 0, 0, 0, 0, 0xc], vec![ME]), now);
        let mut srv = Interface::new(Config::new([2, 0, 0, 0, 0, 0x80], vec![srv_addr]), now);
        let at = SocketAddrV6::new(srv_addr, 80, 0, 0);
        let l = srv.tcp_listen(at, 1).expect("listen");
        (cli, srv, at, l)
    }

    /// One pass of frames from `cli` to `srv` and back, the server reading everything on
    /// connection `s` in between: the bytes it read and the frames that went.
    fn pass(
        cli: &mut Interface,
        srv: &mut Interface,
        now: Instant,
        s: Option<TcpHandle>,
    ) -> (usize, usize) {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        cli.poll(now);
        cli.transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
        for f in &up {
            srv.receive(now, f);
        }
        let mut read = 0;
        if let Some(h) = s {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = srv.tcp_recv(h, &mut buf) {
                read += n;
            }
        }
        srv.poll(now);
        srv.transmit(now, &mut |f: &[u8]| down.push(f.to_vec()));
        for f in &down {
            cli.receive(now, f);
        }
        (read, up.len() + down.len())
    }

    /// An upload that is over and read leaves its connection holding no more than a page of
    /// receive buffer once a segment brings it nothing (here the ACK of the answer); while
    /// the upload goes on, the buffer keeps its storage.
    #[test]
    fn a_read_upload_gives_up_its_receive_buffer() {
        use crate::tcp::tcb::KEEP_EMPTY_BUF;
        let mut now = Instant::from_millis(1);
        let (mut cli, mut srv, at, l) = listening_pair(now);
        // One round trip each way; the server reads what came after each.
        let mut read = 0;
        let mut round = |cli: &mut Interface, srv: &mut Interface, now, s: Option<TcpHandle>| {
            read += pass(cli, srv, now, s).0;
            read
        };
        let c = cli
            .tcp_connect(now, SocketAddrV6::new(ME, 20_000, 0, 0), at)
            .expect("connect");
        for _ in 0..3 {
            now += Duration::from_millis(1);
            round(&mut cli, &mut srv, now, None);
        }
        let s = srv.tcp_accept(l).expect("accepted");
        let upload = vec![5u8; 48 << 10];
        let mut sent = 0;
        let (mut grown, mut got) = (0, 0);
        for _ in 0..200 {
            if sent < upload.len() {
                sent += cli.tcp_send(c, &upload[sent..]).unwrap_or(0);
            }
            now += Duration::from_millis(1);
            got = round(&mut cli, &mut srv, now, Some(s));
            let cap = srv.tcb(s).map_or(0, |t| t.rcv_buf.capacity());
            if grown > KEEP_EMPTY_BUF && got < upload.len() {
                // Data segments, read at once, leave the storage in place.
                assert!(cap >= grown, "released mid-upload: {cap} after {grown}");
            }
            grown = grown.max(cap);
            if got == upload.len() {
                break;
            }
        }
        assert_eq!(got, upload.len(), "the whole upload was read");
        assert!(
            grown > KEEP_EMPTY_BUF,
            "the upload grew the buffer to {grown}"
        );
        // The answer, and the ACK of it: a segment that brings the server nothing.
        assert_eq!(srv.tcp_send(s, b"done"), Ok(4));
        for _ in 0..3 {
            now += Duration::from_millis(50);
            round(&mut cli, &mut srv, now, Some(s));
        }
        let t = srv.tcb(s).expect("open");
        assert!(t.rcv_buf.is_empty());
        assert!(
            t.rcv_buf.capacity() <= KEEP_EMPTY_BUF,
            "{}",
            t.rcv_buf.capacity()
        );
    }

    /// A stream both ways in bursts a millisecond apart, the server's bursts acknowledged by
    /// empty segments between the client's: the server's receive buffer, grown past a page by
    /// the first burst, keeps its storage from burst to burst (given up after each empty
    /// segment, it was allocated and filled again for every burst), and gives it up once the
    /// stream has been quiet for `RX_IDLE_RELEASE`.
    #[test]
    fn a_busy_stream_keeps_its_receive_buffer_between_bursts() {
        use crate::tcp::tcb::{KEEP_EMPTY_BUF, RX_IDLE_RELEASE};
        let mut now = Instant::from_millis(1);
        let (mut cli, mut srv, at, l) = listening_pair(now);
        // Passes until both sides are quiet.
        let exchange = |cli: &mut Interface, srv: &mut Interface, now, s: Option<TcpHandle>| {
            for _ in 0..8 {
                if pass(cli, srv, now, s).1 == 0 {
                    break;
                }
            }
        };
        let c = cli
            .tcp_connect(now, SocketAddrV6::new(ME, 20_001, 0, 0), at)
            .expect("connect");
        exchange(&mut cli, &mut srv, now, None);
        let s = srv.tcp_accept(l).expect("accepted");
        let burst = vec![7u8; 16 << 10];
        let mut caps = Vec::new();
        let mut sink = vec![0u8; 64 << 10];
        for _ in 0..20 {
            // The client's burst, read by the server, which answers with one of its own ...
            now += Duration::from_millis(1);
            assert_eq!(cli.tcp_send(c, &burst), Ok(burst.len()));
            exchange(&mut cli, &mut srv, now, Some(s));
            assert_eq!(srv.tcp_send(s, &burst), Ok(burst.len()));
            // ... which the client reads and acknowledges with empty segments.
            exchange(&mut cli, &mut srv, now, Some(s));
            while cli.tcp_recv(c, &mut sink).unwrap_or(0) > 0 {}
            now += Duration::from_millis(1);
            cli.poll(now);
            exchange(&mut cli, &mut srv, now, Some(s));
            caps.push(srv.tcb(s).map_or(0, |t| t.rcv_buf.capacity()));
        }
        assert!(
            caps[0] > KEEP_EMPTY_BUF,
            "the first burst grew it: {caps:?}"
        );
        assert!(
            caps.windows(2).all(|w| w[1] == w[0]),
            "kept from burst to burst: {caps:?}"
        );
        // Quiet, then a segment that brings nothing (the client's ACK of more answer).
        now += RX_IDLE_RELEASE + Duration::from_millis(1);
        assert_eq!(srv.tcp_send(s, b"bye"), Ok(3));
        exchange(&mut cli, &mut srv, now, Some(s));
        now += Duration::from_millis(200);
        cli.poll(now);
        srv.poll(now);
        exchange(&mut cli, &mut srv, now, Some(s));
        let cap = srv.tcb(s).map_or(0, |t| t.rcv_buf.capacity());
        assert!(cap <= KEEP_EMPTY_BUF, "given up once quiet: {cap}");
    }

    /// Two interfaces in memory, `n` connections from one to the other, a request and its
    /// echo on each; the server, its connections, and whether every echo came back whole.
    fn echo_on(n: usize) -> (Interface, Vec<TcpHandle>, bool) {
        let srv_addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x80);
        let mut now = Instant::from_millis(1);
        let mut cli = Interface::new(Config::new([2, 0, 0, 0, 0, 0xc], vec![ME]), now);
        let mut srv = Interface::new(Config::new([2, 0, 0, 0, 0, 0x80], vec![srv_addr]), now);
        let at = SocketAddrV6::new(srv_addr, 80, 0, 0);
        let l = srv.tcp_listen(at, n).expect("listen");
        let wire = |cli: &mut Interface, srv: &mut Interface, now: Instant| {
            for _ in 0..4 {
                let (mut up, mut down) = (Vec::new(), Vec::new());
                cli.poll(now);
                cli.transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
                for f in &up {
                    srv.receive(now, f);
                }
                srv.poll(now);
                srv.transmit(now, &mut |f: &[u8]| down.push(f.to_vec()));
                for f in &down {
                    cli.receive(now, f);
                }
            }
        };
        let mut conns = Vec::new();
        // A few hundred at a time: the client holds a bounded queue while it resolves the
        // server's address.
        for i in 0..n {
            let local = SocketAddrV6::new(ME, 20_000 + i as u16, 0, 0);
            conns.push(cli.tcp_connect(now, local, at).expect("connect"));
            if i % 200 == 199 || i + 1 == n {
                now += Duration::from_millis(1);
                wire(&mut cli, &mut srv, now);
            }
        }
        let mut accepted = Vec::new();
        while let Some(h) = srv.tcp_accept(l) {
            accepted.push(h);
        }
        for (i, &h) in conns.iter().enumerate() {
            let msg = (i as u32).to_be_bytes();
            assert_eq!(cli.tcp_send(h, &msg), Ok(4));
        }
        let mut buf = [0u8; 64];
        // Requests in, echoes out, echoes in; their ACKs in, delayed (40 ms) but before a
        // retransmission timer (200 ms at least) would fire.
        for r in 0..5 {
            now += Duration::from_millis(if r < 3 { 1 } else { 50 });
            wire(&mut cli, &mut srv, now);
            for &h in &accepted {
                if let Ok(k) = srv.tcp_recv(h, &mut buf) {
                    if k > 0 {
                        assert_eq!(srv.tcp_send(h, &buf[..k]), Ok(k));
                    }
                }
            }
        }
        let whole = conns.iter().enumerate().all(|(i, &h)| {
            cli.tcp_recv(h, &mut buf) == Ok(4) && buf[..4] == (i as u32).to_be_bytes()
        });
        (srv, accepted, whole)
    }

    #[test]
    fn many_connections_pool_their_emptied_buffers() {
        // From WARM_FROM connections a connection whose request was read and whose answer was
        // acknowledged holds no buffer storage; the interface's pool holds a few blocks (what
        // was in flight at once), not one per connection.
        let (srv, accepted, whole) = echo_on(WARM_FROM + 50);
        assert!(whole, "every echo came back whole");
        assert_eq!(accepted.len(), WARM_FROM + 50);
        for &h in &accepted {
            let t = srv.tcb(h).expect("tcb");
            assert_eq!((t.rcv_buf.capacity(), t.snd_buf.capacity()), (0, 0));
        }
        let held = srv.bufs.bytes();
        assert!(held > 0 && held <= crate::tcp::ring::POOL_BUDGET, "{held}");
        // Fewer keep their own (the pool would only add instructions there).
        let (srv, accepted, whole) = echo_on(100);
        assert!(whole, "every echo came back whole");
        for &h in &accepted {
            let t = srv.tcb(h).expect("tcb");
            assert!(t.rcv_buf.capacity() > 0 && t.snd_buf.capacity() > 0);
        }
        assert_eq!(srv.bufs.bytes(), 0);
    }
}
