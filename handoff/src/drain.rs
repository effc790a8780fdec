//! Drain policy: freeze at once, first let the client acknowledge the send buffer (for as long
//! as it takes up to a deadline, or as long as the rate of acknowledgements says it can finish
//! within it), or wait a fixed time.
//!
//! The seed (§3.2.3, Figure 2) found a drained connection's state shrinks from ~90 kB to ~90
//! bytes; the price is the time the drain takes. The policy is a parameter so experiments can
//! sweep it. The donor ([`crate::Donor`]) applies it: it asks the host how much is still
//! unacknowledged after each of the caller's steps, and solicits the peer's ACK once
//! everything is sent.

use std::time::Duration;

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
    /// Wait until acknowledged, as [`Drain::UntilAcked`], but freeze as soon as the rate at
    /// which the client acknowledges shows that the rest cannot drain before `deadline`: a
    /// client (or a link) too slow to drain in time costs one measured stretch of the drain,
    /// not the whole deadline, and a fast one is drained as before. The rate is taken from
    /// the first acknowledgement of the drain on (so the first round trip does not count as
    /// a stall); without any acknowledgement the deadline ends the wait.
    Adaptive {
        /// Longest wait.
        deadline: Duration,
    },
    /// Wait exactly `period` after the drain starts, then freeze whatever is left — the
    /// seed's §3.2.3 experiment (the donor waits a given time after its last send; its TCP
    /// keeps sending and taking ACKs meanwhile, without soliciting one).
    Wait {
        /// How long.
        period: Duration,
    },
}
