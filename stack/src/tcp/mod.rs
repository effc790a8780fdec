//! TCP (RFC 9293) with window scaling and timestamps (RFC 7323), SACK (RFC 2018, RFC 6675),
//! RFC 6298 retransmission timers, NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438) congestion
//! control, and the RFC 5961 mitigations. The connection logic ([`tcb::Tcb`]) is sans-IO: it takes
//! parsed segments and the time, and hands back segment descriptions to emit.

pub mod cc;
pub(crate) mod ring;
pub mod seq;
pub mod tcb;

pub use cc::Congestion;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Connection states of RFC 9293 §3.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum TcpState {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl TcpState {
    /// Whether the three-way handshake has completed (RFC 9293 "synchronized" states).
    pub fn is_synchronized(self) -> bool {
        !matches!(
            self,
            TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        )
    }

    /// Whether a connection in this state can be frozen and thawed elsewhere: synchronized
    /// and not yet finished (TIME-WAIT has nothing left to move).
    pub fn is_movable(self) -> bool {
        matches!(
            self,
            TcpState::Established
                | TcpState::CloseWait
                | TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::Closing
                | TcpState::LastAck
        )
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        use TcpState::*;
        [
            Closed,
            Listen,
            SynSent,
            SynReceived,
            Established,
            FinWait1,
            FinWait2,
            CloseWait,
            Closing,
            LastAck,
            TimeWait,
        ]
        .get(c as usize)
        .copied()
    }
}

/// Keep-alive parameters (RFC 9293 §3.8.4; RFC 1122 §4.2.3.6 defaults are hours, ours are set
/// per socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

/// The default [`TcpConfig::notsent_lowat`]: 256 KiB, enough to keep a 10 Gb/s path with a
/// 200 µs round trip busy between two refills by the application.
pub const DEFAULT_NOTSENT_LOWAT: usize = 256 << 10;

/// Per-socket TCP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpConfig {
    /// Send buffer size, bytes.
    pub send_buf: usize,
    /// At most this many bytes queued and not yet sent: the application's writes are
    /// accepted only below it (Linux's `TCP_NOTSENT_LOWAT`). With it a connection buffers
    /// what is in flight (bounded by the peer's window) plus this, not `send_buf` ahead of
    /// the peer; `None`: up to `send_buf`.
    #[serde(default)]
    pub notsent_lowat: Option<usize>,
    /// Receive buffer size, bytes (also the largest window we advertise).
    pub recv_buf: usize,
    /// Congestion-avoidance algorithm.
    pub congestion: Congestion,
    /// Nagle's algorithm (RFC 9293 §3.7.4).
    pub nagle: bool,
    /// Delayed-ACK timeout (RFC 9293 §3.8.6.3); `None` acknowledges every segment at once.
    pub delayed_ack: Option<Duration>,
    /// Keep-alive probing.
    pub keepalive: Option<Keepalive>,
    /// Offer/accept the RFC 7323 timestamps option.
    pub timestamps: bool,
    /// Offer/accept SACK (RFC 2018).
    pub sack: bool,
    /// Offer/accept window scaling (RFC 7323 §2).
    pub window_scale: bool,
    /// Largest MSS we announce and use; `None` derives it from the link MTU.
    pub mss: Option<u16>,
    /// Initial window in segments (RFC 6928).
    pub initial_window: u32,
    /// RTO before any RTT sample (RFC 6298 §2.1: 1 s).
    pub initial_rto: Duration,
    /// Lower bound on the RTO. RFC 6298 §2.4 says 1 s; like Linux we default to 200 ms,
    /// which suits data-centre paths; set 1 s for strict conformance.
    pub min_rto: Duration,
    /// Upper bound on the RTO (RFC 6298 §2.5: at least 60 s).
    pub max_rto: Duration,
    /// SYN / SYN-ACK retransmissions before giving up.
    pub syn_retries: u32,
    /// Data retransmission timeouts in a row before giving up.
    pub max_retries: u32,
    /// TIME-WAIT duration, 2×MSL (RFC 9293 §3.4.2).
    pub time_wait: Duration,
    /// How long an orphaned connection may sit in FIN-WAIT-2.
    pub fin_wait2_timeout: Duration,
    /// Pace the first window a thawed connection sends (after a handoff) instead of sending
    /// it back to back: see [`tcb::Tcb`]'s pacing.
    #[serde(default = "yes")]
    pub pace_after_thaw: bool,
}

fn yes() -> bool {
    true
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            send_buf: 4 << 20,
            notsent_lowat: Some(DEFAULT_NOTSENT_LOWAT),
            recv_buf: 4 << 20,
            congestion: Congestion::Cubic,
            nagle: true,
            delayed_ack: Some(Duration::from_millis(40)),
            keepalive: None,
            timestamps: true,
            sack: true,
            window_scale: true,
            mss: None,
            initial_window: 10,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            syn_retries: 6,
            max_retries: 15,
            time_wait: Duration::from_secs(60),
            fin_wait2_timeout: Duration::from_secs(60),
            pace_after_thaw: true,
        }
    }
}

#[cfg(test)]
mod tests;
