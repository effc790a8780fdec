//! The serializable state of a frozen TCP connection.
//!
//! [`ConnState`] is the one format every path produces and consumes: the userspace stack's
//! `freeze`/`thaw`, and (later) the kernel path's `TCP_REPAIR` dump. Its binary encoding is one
//! version byte followed by `postcard` (varint integers), so a drained, idle connection encodes to
//! well under 96 bytes; sequence-like fields are stored as offsets from SND.UNA / RCV.NXT so they
//! stay small.
//!
//! Times are relative: timers as "due this long after the freeze", the timestamp clock as the
//! last TSval we sent, so a connection thawed on a host whose clock differs stays correct.

use crate::tcp::cc::Cc;
use crate::tcp::ring::ByteRing;
use crate::tcp::tcb::{OooQueue, Pace, Tcb};
use crate::tcp::{Congestion, Keepalive, TcpConfig, TcpState};
use crate::time::{Duration, Instant, Micros};
use serde::{Deserialize, Serialize};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

/// Current encoding version.
pub const STATE_VERSION: u8 = 1;

/// Errors decoding or applying a [`ConnState`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// Empty input.
    #[error("empty connection state")]
    Empty,
    /// A version this build does not understand.
    #[error("unsupported connection-state version {0} (this build reads {STATE_VERSION})")]
    Version(u8),
    /// The bytes do not decode.
    #[error("corrupt connection state: {0}")]
    Corrupt(String),
    /// The bytes decode but describe an impossible connection.
    #[error("inconsistent connection state: {0}")]
    Inconsistent(&'static str),
}

/// An address and port, 18 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// IPv6 address octets.
    pub addr: [u8; 16],
    /// Port.
    pub port: u16,
}

impl From<SocketAddrV6> for Endpoint {
    fn from(s: SocketAddrV6) -> Self {
        Endpoint {
            addr: s.ip().octets(),
            port: s.port(),
        }
    }
}

impl From<Endpoint> for SocketAddrV6 {
    fn from(e: Endpoint) -> Self {
        SocketAddrV6::new(Ipv6Addr::from(e.addr), e.port, 0, 0)
    }
}

/// Flag bits in [`ConnState::state_flags`].
pub mod flags {
    /// Window scaling negotiated.
    pub const WS: u16 = 1 << 0;
    /// Timestamps negotiated.
    pub const TS: u16 = 1 << 1;
    /// SACK negotiated.
    pub const SACK: u16 = 1 << 2;
    /// Nagle on.
    pub const NAGLE: u16 = 1 << 3;
    /// Application closed the sending side (FIN follows the buffer).
    pub const FIN_QUEUED: u16 = 1 << 4;
    /// Peer's FIN received.
    pub const FIN_RCVD: u16 = 1 << 5;
    /// CUBIC (else NewReno).
    pub const CUBIC: u16 = 1 << 6;
    /// Delayed ACKs on.
    pub const DELACK: u16 = 1 << 7;
    /// TS.Recent is not known (a kernel socket exported with TCP_REPAIR does not reveal it):
    /// the next segment's TSval is taken, and PAWS waits for it.
    pub const TS_RECENT_UNKNOWN: u16 = 1 << 8;
    /// An empty unacceptable segment (a drain's or keepalive's probe) left less than 500 ms
    /// before the freeze: the receiver's rate limit (RFC 5961 §7) may still silence the next,
    /// so the thawed side's first drain probe carries an octet. (Readers that predate it
    /// ignore the bit.)
    pub const EMPTY_PROBED: u16 = 1 << 9;
}

/// Loss/RTT state that only matters while data is in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// SND.NXT − SND.UNA.
    pub nxt_off: u32,
    /// SND.MAX − SND.UNA.
    pub max_off: u32,
    /// Retransmission timer: due this many µs after the freeze (None: not running).
    pub rto_due_us: Option<u32>,
    /// RTO back-off exponent.
    pub backoff: u8,
}

/// Congestion state once a loss has happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterLoss {
    /// ssthresh, bytes.
    pub ssthresh: u32,
    /// CUBIC W_max, segments.
    pub w_max: u32,
}

/// A frozen TCP connection: everything needed to resume it on another interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnState {
    /// Our end (the server's DS address and port, typically).
    pub local: Endpoint,
    /// The peer.
    pub remote: Endpoint,
    /// RFC 9293 state (as [`TcpState`] discriminant) in the low 4 bits, [`flags`] above.
    pub state_flags: u16,
    /// SND.UNA.
    pub snd_una: u32,
    /// Present when data is unacknowledged.
    pub in_flight: Option<InFlight>,
    /// SND.WND, bytes (already scaled).
    pub snd_wnd: u32,
    /// RCV.NXT.
    pub rcv_nxt: u32,
    /// Right edge of the advertised window − RCV.NXT.
    pub rcv_adv_off: u32,
    /// Send MSS.
    pub snd_mss: u16,
    /// Send window shift (high nibble) and receive window shift (low nibble).
    pub wscales: u8,
    /// TS.Recent (peer's clock).
    pub ts_recent: u32,
    /// The last TSval we sent (our clock); the thawing side continues from it.
    pub ts_last: u32,
    /// Smoothed RTT, µs (0 = no sample yet).
    pub srtt_us: u32,
    /// RTT variance, µs.
    pub rttvar_us: u32,
    /// Congestion window, bytes.
    pub cwnd: u32,
    /// ssthresh and CUBIC W_max, once a loss happened.
    pub after_loss: Option<AfterLoss>,
    /// Send buffer size, KiB.
    pub send_buf_kib: u32,
    /// Receive buffer size, KiB.
    pub recv_buf_kib: u32,
    /// Keep-alive (idle s, interval s, count).
    pub keepalive: Option<(u32, u32, u32)>,
    /// Unacknowledged then unsent data, starting at SND.UNA.
    #[serde(with = "serde_bytes")]
    pub send_data: Vec<u8>,
    /// Received in order, not yet read by the application.
    #[serde(with = "serde_bytes")]
    pub recv_data: Vec<u8>,
    /// Out-of-order segments: (offset above RCV.NXT, bytes).
    pub ooo: Vec<(u32, serde_bytes::ByteBuf)>,
}

impl ConnState {
    /// The connection's state.
    pub fn tcp_state(&self) -> Option<TcpState> {
        TcpState::from_code((self.state_flags & 0xf) as u8)
    }

    /// Whether a [`flags`] bit is set.
    pub fn has(&self, f: u16) -> bool {
        (self.state_flags >> 4) & f != 0
    }

    /// Our endpoint.
    pub fn local(&self) -> SocketAddrV6 {
        self.local.into()
    }

    /// The peer's endpoint.
    pub fn remote(&self) -> SocketAddrV6 {
        self.remote.into()
    }

    /// Encode: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![STATE_VERSION];
        // Serializing plain data into a Vec cannot fail.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(_) => vec![STATE_VERSION],
        }
    }

    /// Decode and validate bytes from [`ConnState::encode`]. Foreign or corrupt input is an
    /// error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ConnState, StateError> {
        let (&v, rest) = bytes.split_first().ok_or(StateError::Empty)?;
        if v != STATE_VERSION {
            return Err(StateError::Version(v));
        }
        let (s, tail): (ConnState, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| StateError::Corrupt(e.to_string()))?;
        if !tail.is_empty() {
            return Err(StateError::Corrupt(format!(
                "{} trailing bytes",
                tail.len()
            )));
        }
        s.validate()?;
        Ok(s)
    }

    /// Check the invariants a thaw relies on.
    pub fn validate(&self) -> Result<(), StateError> {
        use StateError::Inconsistent as I;
        let st = self.tcp_state().ok_or(I("unknown TCP state"))?;
        if !st.is_movable() {
            return Err(I(
                "only synchronized, not-yet-closed connections can be thawed",
            ));
        }
        if self.local.port == 0 || self.remote.port == 0 {
            return Err(I("zero port"));
        }
        if self.snd_mss < 64 {
            return Err(I("MSS below 64"));
        }
        if self.wscales >> 4 > 14 || self.wscales & 0xf > 14 {
            return Err(I("window scale above 14"));
        }
        if self.send_buf_kib > 1 << 20 || self.recv_buf_kib > 1 << 20 {
            return Err(I("buffer sizes above 1 GiB"));
        }
        let send_cap = (self.send_buf_kib as usize) << 10;
        let recv_cap = (self.recv_buf_kib as usize) << 10;
        if self.send_data.len() > send_cap.max(1 << 30)
            || self.recv_data.len() > recv_cap.max(1 << 30)
        {
            return Err(I("buffer larger than its capacity"));
        }
        let fin_extra = u32::from(self.has(flags::FIN_QUEUED));
        if let Some(f) = &self.in_flight {
            if f.nxt_off > f.max_off
                || f.max_off as usize > self.send_data.len() + fin_extra as usize
            {
                return Err(I("in-flight offsets beyond the send data"));
            }
            if f.backoff > 16 {
                return Err(I("RTO back-off out of range"));
            }
        }
        // Past the unread bytes, within the buffer the thaw gives the connection (its size in
        // KiB rounds down: up to 1 KiB more). Not at RCV.NXT itself: that would have been read.
        let ooo_cap = (recv_cap.max(self.recv_data.len()) + 1024) as u64;
        let mut prev_end = 1u64;
        for (off, data) in &self.ooo {
            let start = *off as u64;
            if start < prev_end
                || data.is_empty()
                || self.recv_data.len() as u64 + start + data.len() as u64 > ooo_cap
            {
                return Err(I("out-of-order segments overlap or exceed the window"));
            }
            prev_end = start + data.len() as u64;
        }
        Ok(())
    }
}

impl Tcb {
    /// Snapshot this connection into a [`ConnState`] (the caller then forgets the TCB).
    pub(crate) fn to_state(&self, now: Instant) -> Option<ConnState> {
        if !self.state.is_movable() {
            return None;
        }
        let mut f = 0u16;
        let set = |f: &mut u16, bit: u16, on: bool| {
            if on {
                *f |= bit
            }
        };
        set(&mut f, flags::WS, self.ws_ok);
        set(&mut f, flags::TS, self.ts_ok);
        set(&mut f, flags::SACK, self.sack_ok);
        set(&mut f, flags::NAGLE, self.cfg.nagle);
        set(&mut f, flags::FIN_QUEUED, self.fin_queued);
        set(&mut f, flags::FIN_RCVD, self.fin_rcvd);
        set(&mut f, flags::CUBIC, self.cc.algo == Congestion::Cubic);
        set(&mut f, flags::DELACK, self.cfg.delayed_ack.is_some());
        set(
            &mut f,
            flags::TS_RECENT_UNKNOWN,
            self.ts_ok && !self.ts_recent_valid,
        );
        set(&mut f, flags::EMPTY_PROBED, self.empty_probe_recent(now));
        let in_flight = (self.snd_una != self.snd_max).then(|| InFlight {
            nxt_off: self.snd_nxt.wrapping_sub(self.snd_una),
            max_off: self.snd_max.wrapping_sub(self.snd_una),
            rto_due_us: self
                .t_rto
                .map(|t| (t - now).as_micros().min(u32::MAX as u128) as u32),
            backoff: self.backoff.min(16) as u8,
        });
        // Recovery state is not carried: the thawed side leaves recovery with cwnd = ssthresh.
        let cwnd = if self.recovery.is_some() {
            self.cc.ssthresh.min(self.cc.cwnd)
        } else {
            self.cc.cwnd
        };
        let after_loss = (self.cc.ssthresh != u32::MAX).then(|| AfterLoss {
            ssthresh: self.cc.ssthresh,
            w_max: self.cc.w_max.round().clamp(0.0, u32::MAX as f64) as u32,
        });
        let ooo = self
            .ooo
            .blocks()
            .iter()
            .map(|&(s, e)| {
                let off = s.wrapping_sub(self.rcv_nxt);
                // Past the held bytes, in the receive buffer's storage.
                let mut d = vec![0; e.wrapping_sub(s) as usize];
                self.rcv_buf
                    .copy_at(self.rcv_buf.len() + off as usize, &mut d);
                (off, serde_bytes::ByteBuf::from(d))
            })
            .collect();
        let (a, b) = self.snd_buf.as_slices();
        let mut send_data = Vec::with_capacity(self.snd_buf.len());
        send_data.extend_from_slice(a);
        send_data.extend_from_slice(b);
        let (a, b) = self.rcv_buf.as_slices();
        let mut recv_data = Vec::with_capacity(self.rcv_buf.len());
        recv_data.extend_from_slice(a);
        recv_data.extend_from_slice(b);
        Some(ConnState {
            local: self.local.into(),
            remote: self.remote.into(),
            state_flags: u16::from(self.state.code()) | (f << 4),
            snd_una: self.snd_una,
            in_flight,
            snd_wnd: self.snd_wnd,
            rcv_nxt: self.rcv_nxt,
            rcv_adv_off: self.rcv_adv.wrapping_sub(self.rcv_nxt),
            snd_mss: self.snd_mss.min(65535) as u16,
            wscales: (self.snd_wscale << 4) | (self.rcv_wscale & 0xf),
            ts_recent: self.ts_recent,
            ts_last: (now.total_millis() as u32).wrapping_add(self.ts_offset),
            srtt_us: self.srtt.map_or(0, Micros::as_micros),
            rttvar_us: self.rttvar.as_micros(),
            cwnd,
            after_loss,
            send_buf_kib: (self.cfg.send_buf >> 10) as u32,
            recv_buf_kib: (self.cfg.recv_buf >> 10) as u32,
            keepalive: self.cfg.keepalive.map(|k| {
                (
                    k.idle.as_secs() as u32,
                    k.interval.as_secs() as u32,
                    k.count,
                )
            }),
            send_data,
            recv_data,
            ooo,
        })
    }

    /// Rebuild a TCB from a validated [`ConnState`] at `now` on this host's clock.
    /// `base` supplies the settings the state does not carry (timeouts, limits).
    pub(crate) fn from_state(s: &ConnState, base: &Arc<TcpConfig>, now: Instant) -> Tcb {
        let mut cfg = TcpConfig::clone(base);
        cfg.send_buf = ((s.send_buf_kib as usize) << 10)
            .max(s.send_data.len())
            .max(1024);
        cfg.recv_buf = ((s.recv_buf_kib as usize) << 10)
            .max(s.recv_data.len())
            .max(1024);
        cfg.nagle = s.has(flags::NAGLE);
        cfg.congestion = if s.has(flags::CUBIC) {
            Congestion::Cubic
        } else {
            Congestion::NewReno
        };
        if !s.has(flags::DELACK) {
            cfg.delayed_ack = None;
        } else if cfg.delayed_ack.is_none() {
            cfg.delayed_ack = TcpConfig::default().delayed_ack;
        }
        cfg.keepalive = s.keepalive.map(|(idle, interval, count)| Keepalive {
            idle: Duration::from_secs(idle.into()),
            interval: Duration::from_secs(interval.into()),
            count,
        });
        let state = s.tcp_state().unwrap_or(TcpState::Established);
        let snd_mss = u32::from(s.snd_mss);
        // A thawed connection whose settings are the defaults shares them (as one opened
        // here would).
        let cfg = if cfg == **base {
            Arc::clone(base)
        } else {
            Arc::new(cfg)
        };
        let mut t = Tcb::connect(
            s.local(),
            s.remote(),
            cfg,
            s.snd_una.wrapping_sub(1),
            snd_mss,
            now,
        );
        t.state = state;
        t.snd_una = s.snd_una;
        let fin_queued = s.has(flags::FIN_QUEUED);
        let fin_acked = fin_queued && matches!(state, TcpState::FinWait2) && s.send_data.is_empty();
        t.snd_buf_seq = if fin_acked {
            s.snd_una.wrapping_sub(1)
        } else {
            s.snd_una
        };
        t.snd_buf = ByteRing::from(s.send_data.clone());
        t.fin_queued = fin_queued;
        let (nxt, max) = match &s.in_flight {
            Some(f) => (f.nxt_off, f.max_off),
            None => (0, 0),
        };
        t.snd_nxt = s.snd_una.wrapping_add(nxt);
        t.snd_max = s.snd_una.wrapping_add(max);
        t.recover = t.snd_una;
        t.high_rxt = t.snd_una;
        // No small segment is known to be in flight: the state does not carry `snd_sml`.
        t.snd_sml = t.snd_una;
        t.snd_wnd = s.snd_wnd;
        t.max_snd_wnd = s.snd_wnd;
        t.rcv_nxt = s.rcv_nxt;
        t.snd_wl1 = s.rcv_nxt.wrapping_sub(1);
        t.snd_wl2 = s.snd_una;
        t.irs = s.rcv_nxt.wrapping_sub(1);
        t.rcv_adv = s.rcv_nxt.wrapping_add(s.rcv_adv_off);
        t.last_ack_sent = s.rcv_nxt;
        t.rcv_buf = ByteRing::from(s.recv_data.clone());
        t.ooo = OooQueue::default();
        for (off, d) in &s.ooo {
            // Validated: in order, disjoint, within the buffer. One refused as a live
            // connection would refuse it (past `MAX_OOO_BLOCKS` or the growth out-of-order
            // data may cause, [`Tcb::ooo_fits`]: a state from an older build, or a forged one)
            // is left out: data SACKed and then dropped, which the sender resends (RFC 2018 §8).
            t.hold_out_of_order(*off as usize, d);
        }
        t.fin_rcvd = s.has(flags::FIN_RCVD);
        // When exactly is not carried: counted from the thaw, which errs towards an octet.
        t.empty_probe_at = s.has(flags::EMPTY_PROBED).then_some(now);
        t.snd_mss = snd_mss;
        t.rcv_mss = s.snd_mss;
        t.ws_ok = s.has(flags::WS);
        t.snd_wscale = s.wscales >> 4;
        t.rcv_wscale = s.wscales & 0xf;
        t.ts_ok = s.has(flags::TS);
        t.ts_recent = s.ts_recent;
        t.ts_recent_at = now;
        t.ts_recent_valid = !s.has(flags::TS_RECENT_UNKNOWN);
        // Continue our TSval from where the donor left it (RFC 7323 §5.4: monotonic per
        // connection), plus one tick.
        t.ts_offset = s
            .ts_last
            .wrapping_add(1)
            .wrapping_sub(now.total_millis() as u32);
        t.sack_ok = s.has(flags::SACK);
        if s.srtt_us > 0 {
            t.srtt = Some(Micros::from_micros(s.srtt_us));
            t.rttvar = Micros::from_micros(s.rttvar_us);
            t.rtt_inherited = true;
        }
        t.backoff = s
            .in_flight
            .as_ref()
            .map(|f| u32::from(f.backoff))
            .unwrap_or(0);
        let mut cc = Cc::new(t.cfg.congestion, snd_mss, t.cfg.initial_window);
        cc.cwnd = s.cwnd.max(snd_mss);
        if let Some(l) = &s.after_loss {
            cc.ssthresh = l.ssthresh;
            cc.w_max = f64::from(l.w_max);
        }
        t.cc = cc;
        t.update_rto();
        if let Some(f) = &s.in_flight {
            t.t_rto = Some(
                now + f
                    .rto_due_us
                    .map(|us| Duration::from_micros(us.into()))
                    .unwrap_or(t.rto.get()),
            );
        }
        if matches!(state, TcpState::FinWait2) {
            t.t_close = Some(now + t.cfg.fin_wait2_timeout);
        }
        if state == TcpState::Established {
            t.t_keepalive = t.cfg.keepalive.map(|k| now + k.idle);
        }
        if t.cfg.pace_after_thaw {
            if let Some(srtt) = t.srtt {
                t.pace = Pace::first_window(now, t.cc.cwnd, snd_mss, srtt.get(), t.snd_nxt)
                    .map(Box::new);
            }
        }
        // Tell the peer where we are at once: an ACK with our current window.
        t.ack_now = true;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnState {
        ConnState {
            local: Endpoint {
                addr: [0xfd; 16],
                port: 80,
            },
            remote: Endpoint {
                addr: [0xfe; 16],
                port: 54321,
            },
            state_flags: u16::from(TcpState::Established.code())
                | ((flags::WS
                    | flags::TS
                    | flags::SACK
                    | flags::NAGLE
                    | flags::CUBIC
                    | flags::DELACK)
                    << 4),
            snd_una: 0xdead_beef,
            in_flight: None,
            snd_wnd: 3_000_000,
            rcv_nxt: 0xcafe_f00d,
            rcv_adv_off: 4_000_000,
            snd_mss: 1428,
            wscales: 0x77,
            ts_recent: 0xf000_0000,
            ts_last: 0x8000_0000,
            srtt_us: 180,
            rttvar_us: 90,
            cwnd: 1_400_000,
            after_loss: None,
            send_buf_kib: 4096,
            recv_buf_kib: 4096,
            keepalive: None,
            send_data: vec![],
            recv_data: vec![],
            ooo: vec![],
        }
    }

    #[test]
    fn drained_state_is_small() {
        let s = sample();
        let b = s.encode();
        assert!(b.len() <= 96, "drained state is {} bytes", b.len());
        assert_eq!(ConnState::decode(&b).unwrap(), s);
    }

    #[test]
    fn corrupt_and_foreign_bytes_are_errors() {
        let b = sample().encode();
        assert_eq!(ConnState::decode(&[]), Err(StateError::Empty));
        assert!(matches!(
            ConnState::decode(&[9, 1, 2]),
            Err(StateError::Version(9))
        ));
        for cut in 1..b.len() {
            assert!(ConnState::decode(&b[..cut]).is_err());
        }
        let mut bad = b.clone();
        bad.push(0);
        assert!(ConnState::decode(&bad).is_err());
    }
}
