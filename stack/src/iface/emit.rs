//! Frame emission: building Ethernet + IPv6 + upper-layer frames, neighbour resolution on the
//! way out, and the transmit path.

use super::ethernet::{emit_ethernet_header, multicast_mac, set_dst_mac, write_ethernet_header};
use super::ipv6::{FRAGMENT_HEADER_LEN, FRAGMENT_OFFSET_UNIT};
use super::mobility::MobilityOut;
use super::{caps, fill_upper_checksum, Interface};
use crate::device::{Gso, TxSink};
use crate::ndp::Lookup;
use crate::tcp::tcb::SegOut;
use crate::time::Instant;
use ds_mipv6::cn::FlowKey;
use ds_mipv6::wire::{checksum, pseudo_checksum, IPPROTO_ICMPV6, IPPROTO_TCP};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv6ExtHeader, Ipv6ExtHeaderRepr,
    Ipv6FragmentHeader, Ipv6FragmentRepr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, TcpTimestampRepr, ETHERNET_HEADER_LEN, IPV6_HEADER_LEN,
};
use std::net::{Ipv6Addr, SocketAddrV6};

/// Where frames go when the caller can take them at once.
pub(super) type Emit<'a> = &'a mut dyn TxSink;

impl Interface {
    /// Hand every frame that is ready to `emit` (for a device that cannot segment: super-frames
    /// off, [`Interface::set_gso_max`]).
    pub fn transmit(&mut self, now: Instant, emit: &mut dyn FnMut(&[u8])) {
        debug_assert_eq!(self.gso_max, 0, "super-frames need transmit_gso");
        self.transmit_gso(now, &mut |f, _| emit(f));
    }

    /// Hand every frame that is ready to `emit`, each TCP super-frame with its segmentation
    /// request.
    pub fn transmit_gso(&mut self, now: Instant, mut emit: &mut dyn FnMut(&[u8], Option<Gso>)) {
        self.transmit_to(now, &mut emit);
    }

    /// Hand every frame that is ready to `sink`; a TCP segment of one frame towards a resolved
    /// neighbour, without mobility headers to add, is built straight into the sink's buffer
    /// when it can take it so ([`TxSink::build`]: an AF_XDP device's UMEM), the rest are built
    /// here and handed over as frames.
    pub fn transmit_to(&mut self, now: Instant, sink: &mut dyn TxSink) {
        let emit = sink;
        self.now = self.now.max(now);
        // Signalling the mobility hook queued since the last poll (a Binding Update asked for
        // as a connection arrives) goes ahead of the connections' data: behind a burst on a
        // slow link it would wait a frame time or more, and until it is acknowledged the data
        // takes the home agent's longer path. (`has_queued` is O(1); `poll_at` scans peers.)
        if self.hook.as_ref().is_some_and(|h| h.has_queued()) {
            self.poll_hook(now);
        }
        while let Some(f) = self.ctrl.pop_front() {
            emit.frame(&f, None);
            self.stats.tx_frames += 1;
            self.recycle(f);
        }
        let dirty = self.conns.take_dirty();
        for &idx in &dirty {
            if !self.conns.start_drain(idx) {
                continue;
            }
            self.drain_tcb(now, idx, emit);
            self.after_tcb_event_quiet(idx);
        }
        self.conns.recycle_dirty(dirty);
        while let Some(f) = self.ctrl.pop_front() {
            emit.frame(&f, None);
            self.stats.tx_frames += 1;
            self.recycle(f);
        }
    }

    /// Give a sent frame's buffer back to the pool.
    pub(super) fn recycle(&mut self, mut f: Vec<u8>) {
        if self.pool.len() < 256 {
            f.clear();
            self.pool.push(f);
        }
    }

    /// A frame (from the pool) with our Ethernet and IPv6 headers for `payload_len` octets of
    /// `nh` from `src` to `dst`; the caller appends them.
    pub(super) fn ip_frame(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        nh: IpProtocol,
        payload_len: usize,
    ) -> Vec<u8> {
        let mut buf = self.buffer();
        let (mac, hop_limit) = (self.cfg.mac, self.cfg.hop_limit);
        build_ip_frame(&mut buf, mac, hop_limit, src, dst, nh, payload_len);
        buf
    }

    /// A frame (from the pool) carrying the ICMPv6 message `repr` from `src` to `dst`.
    pub(super) fn icmp_frame(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        repr: &Icmpv6Repr<'_>,
        hop_limit: u8,
    ) -> Vec<u8> {
        let len = repr.buffer_len();
        let mut buf = self.buffer();
        let mac = self.cfg.mac;
        build_ip_frame(&mut buf, mac, hop_limit, src, dst, IpProtocol::Icmpv6, len);
        let start = buf.len();
        buf.resize(start + len, 0);
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[start..]);
        repr.emit(&src, &dst, &mut p, &caps());
        fill_upper_checksum(src, dst, IPPROTO_ICMPV6, &mut buf[start..], 2);
        buf
    }

    /// An empty frame buffer (pooled).
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        self.pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(ETHERNET_HEADER_LEN + self.cfg.mtu))
    }

    /// Send what the connection has to send now (segments, RFC 9293 §3.8), at most a bounded
    /// burst.
    pub(super) fn drain_tcb(&mut self, now: Instant, idx: u32, emit: Emit<'_>) {
        // Super-frames only towards a resolved neighbour: what waits for Neighbour Discovery
        // is queued and later sent as it is, without a segmentation request. (Looked up only
        // when more than a segment waits: a small response needs no super-frame.)
        let gso_max = match self.conns.get(idx) {
            Some(tcb) if self.gso_max > 0 && tcb.unsent() > tcb.eff_mss() as usize => {
                let hop = self.next_hop(tcb.remote.ip());
                match self.nd.state(&hop) {
                    Some((_, Some(_))) => self.gso_max,
                    _ => 0,
                }
            }
            _ => 0,
        };
        // Bound the burst per call so one connection cannot starve the others: 256 wire
        // segments, however they are packed into super-frames.
        let mut budget: usize = 256;
        while budget > 0 {
            let Some(tcb) = self.conns.get_mut(idx) else {
                return;
            };
            let mss = tcb.eff_mss() as usize;
            let max = gso_max.min(u32::try_from(budget * mss).unwrap_or(u32::MAX));
            let Some(seg) = tcb.next_segment_gso(now, max) else {
                return;
            };
            budget = budget.saturating_sub(seg.payload_len.div_ceil(mss.max(1)).max(1));
            let Some((local, remote)) = self.conns.endpoints(idx) else {
                return;
            };
            let super_frame = seg.payload_len > mss;
            if !super_frame
                && emit.builds_in_place()
                && self.hook.is_none()
                && !self.cn_binding(now, &local, &remote)
            {
                if let Some(mac) = self.resolved(now, remote.ip()) {
                    let Some(tcb) = self.conns.get(idx) else {
                        return;
                    };
                    let payload = tcb.payload(&seg);
                    let repr = tcp_repr(&local, &remote, &seg);
                    let len = tcp_frame_len(&repr, payload);
                    let (src_mac, hop_limit) = (self.cfg.mac, self.cfg.hop_limit);
                    let built = emit.build(len, &mut |frame| {
                        write_tcp_frame(
                            frame, src_mac, hop_limit, &local, &remote, &seg, &repr, payload,
                        );
                        set_dst_mac(frame, mac);
                    });
                    if built {
                        self.stats.tx_frames += 1;
                        self.stats.tx_in_place += 1;
                        continue;
                    }
                }
            }
            let mut buf = std::mem::take(&mut self.scratch);
            {
                let Some(tcb) = self.conns.get(idx) else {
                    return;
                };
                let payload = tcb.payload(&seg);
                build_tcp_frame(
                    &mut buf,
                    self.cfg.mac,
                    self.cfg.hop_limit,
                    &local,
                    &remote,
                    &seg,
                    payload,
                    super_frame,
                );
            }
            let gso = super_frame.then_some(mss);
            self.send_frame_gso(now, buf, *remote.ip(), Some(emit), gso);
        }
        self.conns.mark_dirty(idx);
    }

    /// Whether the correspondent has a binding for this TCP flow's peer, so that its segments
    /// take a routing header (RFC 6275 §9.3.2, added by `mobility_out`).
    fn cn_binding(&mut self, now: Instant, local: &SocketAddrV6, remote: &SocketAddrV6) -> bool {
        let flow = FlowKey {
            next_header: u8::from(IpProtocol::Tcp),
            local_port: local.port(),
            remote_port: remote.port(),
        };
        self.cn
            .as_mut()
            .is_some_and(|cn| cn.route_out(now, *remote.ip(), Some(flow)).is_some())
    }

    /// The MAC address of the next hop towards `dst` when Neighbour Discovery has one (its
    /// reachability bookkeeping done as for any frame sent, RFC 4861 §7.3.3); `None` when the
    /// frame would have to wait for it.
    fn resolved(&mut self, now: Instant, dst: &Ipv6Addr) -> Option<[u8; 6]> {
        let hop = self.next_hop(dst);
        if hop.is_multicast() {
            return None;
        }
        self.nd.resolved(now, hop)
    }

    /// Fill in the destination MAC and send (or queue pending resolution). `buf` is returned
    /// to the scratch slot.
    pub(super) fn send_frame(
        &mut self,
        now: Instant,
        buf: Vec<u8>,
        dst: Ipv6Addr,
        emit: Option<Emit<'_>>,
    ) {
        self.send_frame_gso(now, buf, dst, emit, None);
    }

    /// [`Self::send_frame`] for a frame that may be a TCP super-frame of `mss`-octet segments
    /// (built with a partial checksum by [`build_tcp_frame`]).
    fn send_frame_gso(
        &mut self,
        now: Instant,
        mut buf: Vec<u8>,
        dst: Ipv6Addr,
        emit: Option<Emit<'_>>,
        mss: Option<usize>,
    ) {
        let dst = if self.cn.is_some() || self.hook.is_some() {
            match self.mobility_out(now, &mut buf, mss) {
                MobilityOut::Unchanged => dst,
                MobilityOut::Rewritten(d) => d,
                MobilityOut::TooBig { peer, mtu } => {
                    // The added header would push it past the link MTU: shrink the path MTU
                    // so TCP re-segments (the dropped segment is resent, RFC 8201 §5.4).
                    self.stats.pmtu_updates += 1;
                    self.set_path_mtu(now, peer, mtu);
                    buf.clear();
                    self.scratch = buf;
                    return;
                }
            }
        } else {
            dst
        };
        let hop = self.next_hop(&dst);
        let mac = if hop.is_multicast() {
            Some(multicast_mac(hop))
        } else {
            match self.nd.lookup(now, hop) {
                Lookup::Ready(m) => Some(m),
                Lookup::Pending(action) => {
                    if let Some(a) = action {
                        self.solicit(a);
                    }
                    None
                }
            }
        };
        let gso = mss.and_then(|mss| super_frame_gso(&buf, mss));
        if mss.is_some() && (gso.is_none() || mac.is_none() || emit.is_none()) {
            // A super-frame that cannot leave now with its segmentation request is dropped like
            // a lost frame (TCP resends it in segments): queued frames go out without one
            // (rare: `drain_tcb` makes none towards an unresolved neighbour; this is a care-of
            // address's), and one we cannot describe (cannot happen: we built it) must not go
            // out with a partial checksum.
            self.stats.nd_drops += 1;
            buf.clear();
            self.scratch = buf;
            return;
        }
        match (mac, emit) {
            (Some(m), Some(emit)) => {
                set_dst_mac(&mut buf, m);
                emit.frame(&buf, gso);
                self.stats.tx_frames += 1;
                self.stats.tx_gso_frames += u64::from(gso.is_some());
                buf.clear();
                self.scratch = buf;
            }
            (Some(m), None) => {
                set_dst_mac(&mut buf, m);
                self.ctrl.push_back(buf);
            }
            (None, _) => {
                let copy = buf.clone();
                if !self.nd.enqueue(hop, copy) {
                    self.stats.nd_drops += 1;
                }
                buf.clear();
                self.scratch = buf;
            }
        }
    }

    /// Send a raw IPv6 packet (without link header), e.g. a Mobility Header message.
    pub fn send_ipv6_packet(&mut self, now: Instant, pkt: &[u8]) {
        let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
            return;
        };
        let dst = ip.dst_addr();
        let mut buf = self.buffer();
        emit_ethernet_header(&mut buf, self.cfg.mac);
        buf.extend_from_slice(&pkt[..ip.total_len()]);
        self.send_frame(now, buf, dst, None);
    }

    /// Send a segment that belongs to no connection (a RST, RFC 9293 §3.10.7.1).
    pub(super) fn emit_tcp_ctrl(
        &mut self,
        now: Instant,
        local: &SocketAddrV6,
        remote: &SocketAddrV6,
        s: &SegOut,
    ) {
        let mut buf = self.buffer();
        build_tcp_frame(
            &mut buf,
            self.cfg.mac,
            self.cfg.hop_limit,
            local,
            remote,
            s,
            (&[], &[]),
            false,
        );
        self.stats.tcp_tx_segments += 1;
        self.send_frame(now, buf, *remote.ip(), None);
    }
}

/// Build the Ethernet and IPv6 headers of a frame into `buf` (destination MAC left zero); the
/// caller appends `payload_len` octets of `nh`.
pub(super) fn build_ip_frame(
    buf: &mut Vec<u8>,
    mac: [u8; 6],
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: IpProtocol,
    payload_len: usize,
) {
    buf.clear();
    buf.resize(ETHERNET_HEADER_LEN + IPV6_HEADER_LEN, 0);
    write_ip_headers(buf, mac, hop_limit, src, dst, nh, payload_len);
}

/// [`build_ip_frame`] into the first octets of `frame` (at least both headers long).
fn write_ip_headers(
    frame: &mut [u8],
    mac: [u8; 6],
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: IpProtocol,
    payload_len: usize,
) {
    write_ethernet_header(frame, mac);
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: nh,
        payload_len,
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(
        &mut frame[ETHERNET_HEADER_LEN..],
    ));
}

/// Append a Fragment header (RFC 8200 §4.5): `next` follows it, its data starts at `offset`
/// octets (a multiple of 8) of the fragmentable part.
pub(super) fn emit_fragment_header(
    buf: &mut Vec<u8>,
    next: IpProtocol,
    offset: usize,
    more: bool,
    ident: u32,
) {
    let at = buf.len();
    buf.resize(at + FRAGMENT_HEADER_LEN, 0);
    let ext = Ipv6ExtHeaderRepr {
        next_header: next,
        // The Reserved octet of a Fragment header, zero on transmission.
        length: 0,
        data: &[],
    };
    ext.emit(&mut Ipv6ExtHeader::new_unchecked(&mut buf[at..]));
    Ipv6FragmentRepr {
        frag_offset: (offset / FRAGMENT_OFFSET_UNIT) as u16,
        more_frags: more,
        ident,
    }
    .emit(&mut Ipv6FragmentHeader::new_unchecked(
        &mut buf[at + ext.header_len()..],
    ));
}

/// The TCP header of segment `s` from `local` to `remote` (no payload: it is copied apart).
pub(super) fn tcp_repr<'a>(
    local: &SocketAddrV6,
    remote: &SocketAddrV6,
    s: &'a SegOut,
) -> TcpRepr<'a> {
    let control = if s.syn {
        TcpControl::Syn
    } else if s.rst {
        TcpControl::Rst
    } else if s.fin {
        TcpControl::Fin
    } else if s.psh {
        TcpControl::Psh
    } else {
        TcpControl::None
    };
    TcpRepr {
        src_port: local.port(),
        dst_port: remote.port(),
        control,
        seq_number: TcpSeqNumber(s.seq as i32),
        ack_number: s.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: s.window,
        window_scale: s.wscale,
        max_seg_size: s.mss,
        sack_permitted: s.sack_permitted,
        sack_ranges: s.sack,
        timestamp: s.ts.map(|(v, e)| TcpTimestampRepr::new(v, e)),
        payload: &[],
    }
}

/// The length of the Ethernet + IPv6 + TCP frame of `repr` and `payload`.
pub(super) fn tcp_frame_len(repr: &TcpRepr<'_>, payload: (&[u8], &[u8])) -> usize {
    ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + repr.header_len() + payload.0.len() + payload.1.len()
}

/// Build an Ethernet + IPv6 + TCP frame into `buf` (destination MAC left zero).
// The frame's parts, each from a different owner (interface, connection, segment); a struct
// built per frame would only rename them.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_tcp_frame(
    buf: &mut Vec<u8>,
    mac: [u8; 6],
    hop_limit: u8,
    local: &SocketAddrV6,
    remote: &SocketAddrV6,
    s: &SegOut,
    payload: (&[u8], &[u8]),
    partial_checksum: bool,
) {
    let repr = tcp_repr(local, remote, s);
    buf.clear();
    // Headers zeroed, the payload appended (not zeroed first: a super-frame is 64 KiB).
    buf.resize(ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + repr.header_len(), 0);
    buf.extend_from_slice(payload.0);
    buf.extend_from_slice(payload.1);
    finish_tcp_frame(
        buf,
        mac,
        hop_limit,
        local,
        remote,
        s,
        &repr,
        partial_checksum,
    );
}

/// [`build_tcp_frame`] into `frame`, [`tcp_frame_len`] long, which may hold an earlier frame's
/// octets (a device's transmit buffer): the headers start from zero as in the `Vec` path
/// (reserved bits, option padding), the payload is copied once, full checksum.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_tcp_frame(
    frame: &mut [u8],
    mac: [u8; 6],
    hop_limit: u8,
    local: &SocketAddrV6,
    remote: &SocketAddrV6,
    s: &SegOut,
    repr: &TcpRepr<'_>,
    payload: (&[u8], &[u8]),
) {
    let at = frame.len() - payload.0.len() - payload.1.len();
    frame[..at].fill(0);
    let (p0, p1) = frame[at..].split_at_mut(payload.0.len());
    p0.copy_from_slice(payload.0);
    p1.copy_from_slice(payload.1);
    finish_tcp_frame(frame, mac, hop_limit, local, remote, s, repr, false);
}

/// Write the headers and the checksum of a TCP frame whose payload is already in place at its
/// end (`frame` is the whole frame, [`tcp_frame_len`] long; destination MAC left zero).
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_tcp_frame(
    frame: &mut [u8],
    mac: [u8; 6],
    hop_limit: u8,
    local: &SocketAddrV6,
    remote: &SocketAddrV6,
    s: &SegOut,
    repr: &TcpRepr<'_>,
    partial_checksum: bool,
) {
    let start = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let tcp_len = frame.len() - start;
    let (src, dst) = (*local.ip(), *remote.ip());
    write_ip_headers(frame, mac, hop_limit, src, dst, IpProtocol::Tcp, tcp_len);
    let src = IpAddress::Ipv6(*local.ip());
    let dst = IpAddress::Ipv6(*remote.ip());
    let mut p = TcpPacket::new_unchecked(&mut frame[start..]);
    repr.emit(&mut p, &src, &dst, &ChecksumCapabilities::ignored());
    // PSH alongside FIN (smoltcp's repr has one control value).
    if s.fin && s.psh {
        p.set_psh(true);
    }
    // RFC 9293 §3.1 over the pseudo-header of RFC 8200 §8.1 (`ds_mipv6`'s sum, not smoltcp's
    // slower `fill_checksum`).
    if partial_checksum {
        // CHECKSUM_PARTIAL: the device sums the segment from the TCP header on and adds this.
        let len = u32::try_from(tcp_len).unwrap_or(u32::MAX);
        p.set_checksum(checksum::pseudo_header(
            local.ip(),
            remote.ip(),
            IPPROTO_TCP,
            len,
        ));
    } else {
        p.set_checksum(0);
        p.set_checksum(pseudo_checksum(
            *local.ip(),
            *remote.ip(),
            IPPROTO_TCP,
            p.as_ref(),
        ));
    }
}

/// The segmentation request for the TCP super-frame `frame` (after any mobility headers were
/// added): where its TCP header starts and how long the headers are.
fn super_frame_gso(frame: &[u8], mss: usize) -> Option<Gso> {
    let ip = Ipv6Packet::new_checked(frame.get(ETHERNET_HEADER_LEN..)?).ok()?;
    let mut nh = ip.next_header();
    let mut at = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    // Only the extension headers route optimisation adds (RFC 6275 §6.3, §6.4).
    while matches!(nh, IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts) {
        let ext = Ipv6ExtHeader::new_checked(frame.get(at..)?).ok()?;
        nh = ext.next_header();
        at += ext.header_len() as usize * 8 + 8;
    }
    if nh != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(frame.get(at..)?).ok()?;
    let header_len = at + tcp.header_len() as usize;
    Some(Gso {
        mss: u16::try_from(mss).ok()?,
        csum_start: u16::try_from(at).ok()?,
        header_len: u16::try_from(header_len).ok()?,
    })
}
