//! Drain policy: freeze at once, or first let the client acknowledge the send buffer.
//!
//! The seed (§3.2.3, Figure 2) found a drained connection's state shrinks from ~90 kB to ~90
//! bytes; the price is the time the drain takes. The policy is a parameter so experiments can
//! sweep it. Everything here is sans-IO: [`DrainGate::ready`] is a predicate the caller's loop
//! checks after each [`ds_stack::Interface`] step, against the stack's own clock.

use ds_stack::{Duration, Instant, Interface, TcpHandle};

/// When the donor may freeze a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Freeze now, unacknowledged and unsent data travel in the state.
    Immediate,
    /// Wait until the send buffer is empty (all acknowledged) or `deadline` has passed since
    /// the drain started, whichever comes first. The application must stop writing meanwhile.
    UntilAcked {
        /// Longest wait.
        deadline: Duration,
    },
}

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// The policy is [`Drain::Immediate`].
    Immediate,
    /// Everything sent was acknowledged.
    Drained,
    /// The deadline passed with data still queued.
    Deadline,
    /// The handle no longer names a connection (it closed or was reset).
    Gone,
}

/// A drain in progress for one connection.
#[derive(Debug, Clone, Copy)]
pub struct DrainGate {
    handle: TcpHandle,
    policy: Drain,
    started: Instant,
    until: Option<Instant>,
    /// The peer has been asked for an immediate ACK.
    solicited: bool,
}

impl DrainGate {
    /// Start draining `handle` at `now` (the stack's clock).
    pub fn start(handle: TcpHandle, policy: Drain, now: Instant) -> Self {
        let until = match policy {
            Drain::Immediate => None,
            Drain::UntilAcked { deadline } => Some(now + deadline),
        };
        DrainGate {
            handle,
            policy,
            started: now,
            until,
            solicited: false,
        }
    }

    /// The connection being drained.
    pub fn handle(&self) -> TcpHandle {
        self.handle
    }

    /// The deadline, if any: the caller's loop should be woken no later than this.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// When the drain started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// `Some(why)` once the connection may be frozen. Once everything queued has been sent,
    /// the peer is asked for an immediate ACK ([`Interface::tcp_solicit_ack`]), so the drain
    /// does not wait for the peer's delayed-ACK timer.
    pub fn ready(&mut self, iface: &mut Interface, now: Instant) -> Option<DrainEnd> {
        if self.policy == Drain::Immediate {
            return Some(DrainEnd::Immediate);
        }
        if iface.tcp_state(self.handle).is_none() {
            return Some(DrainEnd::Gone);
        }
        if iface.tcp_send_queued(self.handle) == 0 {
            return Some(DrainEnd::Drained);
        }
        if !self.solicited {
            self.solicited = iface.tcp_solicit_ack(self.handle).unwrap_or(false);
        }
        match self.until {
            Some(t) if now >= t => Some(DrainEnd::Deadline),
            _ => None,
        }
    }
}
