//! Pieces shared by the three roles: packet metadata and the retransmission back-off.

use crate::consts::{INITIAL_BINDACK_TIMEOUT, MAX_BINDACK_TIMEOUT};
use crate::wire::{self, ParsedIpv6, IPPROTO_MH};
use crate::Instant;
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;
use std::time::Duration;

/// Where a received Mobility Header came from: the addresses of its IPv6 packet and the
/// mobility extension headers around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhMeta {
    /// IPv6 source address on the wire (the care-of address when `hao` is set).
    pub src: Ipv6Addr,
    /// IPv6 destination address on the wire (our care-of address when `rh2` is set).
    pub dst: Ipv6Addr,
    /// Home Address destination option (§6.3), if present.
    pub hao: Option<Ipv6Addr>,
    /// Type 2 routing header home address (§6.4), if present.
    pub rh2: Option<Ipv6Addr>,
}

impl MhMeta {
    /// Metadata of a plain packet.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        MhMeta {
            src,
            dst,
            hao: None,
            rh2: None,
        }
    }

    /// Source as the pseudo-header and upper layers see it (home address with an HAO).
    pub fn effective_src(&self) -> Ipv6Addr {
        self.hao.unwrap_or(self.src)
    }

    /// Destination as the pseudo-header sees it (home address with an RH2).
    pub fn effective_dst(&self) -> Ipv6Addr {
        self.rh2.unwrap_or(self.dst)
    }

    /// Split a whole IPv6 packet carrying a Mobility Header into metadata and MH bytes.
    pub fn from_packet(packet: &[u8]) -> wire::Result<(MhMeta, &[u8])> {
        let p = ParsedIpv6::parse(packet)?;
        if p.upper_proto != IPPROTO_MH {
            return Err(wire::Error::Malformed("not a mobility header packet"));
        }
        Ok((
            MhMeta {
                src: p.src,
                dst: p.dst,
                hao: p.hao,
                rh2: p.rh2,
            },
            p.upper(packet),
        ))
    }
}

/// Exponential back-off from INITIAL_BINDACK_TIMEOUT (or another initial value) doubling up to
/// MAX_BINDACK_TIMEOUT (RFC 6275 §11.8), after which retransmissions continue at that rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Current timeout.
    pub timeout: Duration,
    /// When the next retransmission is due.
    pub deadline: Instant,
    /// Transmissions so far.
    pub attempts: u32,
}

impl Backoff {
    /// Start after a first transmission at `now`.
    pub fn start(now: Instant, initial: Duration) -> Self {
        Backoff {
            timeout: initial,
            deadline: now + initial,
            attempts: 1,
        }
    }

    /// Start with INITIAL_BINDACK_TIMEOUT.
    pub fn bindack(now: Instant) -> Self {
        Self::start(now, INITIAL_BINDACK_TIMEOUT)
    }

    /// Whether a retransmission is due; if so, double the timeout (capped) and re-arm.
    pub fn fire(&mut self, now: Instant) -> bool {
        if now < self.deadline {
            return false;
        }
        self.timeout = (self.timeout * 2).min(MAX_BINDACK_TIMEOUT);
        self.deadline = now + self.timeout;
        self.attempts += 1;
        true
    }
}
