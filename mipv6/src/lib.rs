//! # ds-mipv6: sans-IO Mobile IPv6 signalling (RFC 6275)
//!
//! Everything here is a pure function of its inputs: received bytes, addresses and the current
//! time ([`Instant`]). Outputs are complete IPv6 packets to send ([`Transmit`]) and timer
//! deadlines. No sockets, threads or clocks; `ds-stack` (or a daemon) does the I/O.
//!
//! - [`wire`]: zero-copy views and owned representations of the Mobility Header (RFC 6275 §6.1),
//!   mobility options (§6.2, RFC 4285, RFC 5648, RFC 6089), the Home Address destination option
//!   (§6.3) and the type 2 routing header (§6.4), plus builders of whole IPv6 packets.
//! - [`rr`]: return-routability cryptography (§5.2) with `ring`.
//! - [`cn`]: the correspondent node (§9): binding cache, Binding Update validation, Binding
//!   Acknowledgement / Binding Error / Binding Refresh Request, per-flow bindings (RFC 6089).
//! - [`mn`]: the mobile-node role of a distributed-server node for the DS address towards one
//!   correspondent (§11): home/care-of tests, Binding Update list entry, retransmission.
//! - [`ha`]: the home agent (§10) with RFC 4285 authentication and replay protection.
//!
//! ## Using it as the correspondent node of a stack
//!
//! The stack keeps one [`cn::Correspondent`] per interface and converts its own clock with
//! `Instant::from_micros(t.total_micros())`:
//!
//! - **Mobility Header received** (next header 135 addressed to us): call
//!   [`cn::Correspondent::on_mobility_header`] with an [`MhMeta`] holding the packet's source,
//!   destination and, importantly, the Home Address option of the same packet (a Binding
//!   Update always carries one and must not go through the HAO check first, §9.3.1); send
//!   every [`Transmit`] it returns. [`cn::CnEvent::Ignored`] means the message is for a
//!   mobile-node role (HoT, CoT, BA, BE, BRR): offer it to [`mn::TestInit`] /
//!   [`mn::MnBinding`] if this node runs one.
//! - **Home Address option on any other packet**: [`cn::Correspondent::check_hao`]; on
//!   `Reject` drop the packet and send the Binding Error if one is returned; on `Accept`
//!   deliver it with the home address as source (upper-layer checksums use it, §6.3).
//! - **Every outgoing packet** (except Mobility Header packets, §6.1):
//!   [`cn::Correspondent::route_out`]`(now, dst, Some(FlowKey{..}))`; when it returns a
//!   route, send to `route.care_of` with a type 2 routing header carrying `dst`
//!   ([`wire::Rh2Repr::emit`] gives the 24 octets to put right after the IPv6 header, or use
//!   [`wire::packet::insert_rh2`] / [`cn::Correspondent::rewrite_outgoing`] on a built packet).
//! - **Timers**: [`cn::Correspondent::poll`] at [`cn::Correspondent::poll_at`].

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cn;
pub mod common;
pub mod ha;
pub mod mn;
pub mod rr;
pub mod time;
pub mod wire;

pub use common::{Backoff, MhMeta};
pub use time::Instant;

use std::net::Ipv6Addr;
use std::time::Duration;

/// Protocol constants of RFC 6275 §12.
pub mod consts {
    use std::time::Duration;
    /// INITIAL_BINDACK_TIMEOUT: first Binding Update retransmission timeout (§12).
    pub const INITIAL_BINDACK_TIMEOUT: Duration = Duration::from_secs(1);
    /// MAX_BINDACK_TIMEOUT: cap of the exponential back-off (§12).
    pub const MAX_BINDACK_TIMEOUT: Duration = Duration::from_secs(32);
    /// MAX_NONCE_LIFETIME: a correspondent accepts a nonce at most this long (§12, §5.2.7).
    pub const MAX_NONCE_LIFETIME: Duration = Duration::from_secs(240);
    /// MAX_TOKEN_LIFETIME: a mobile node uses a keygen token at most this long (§12, §5.2.7).
    pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(210);
    /// MAX_RR_BINDING_LIFETIME: longest binding created by return routability (§12, §5.2.6).
    pub const MAX_RR_BINDING_LIFETIME: Duration = Duration::from_secs(420);
    /// MAX_UPDATE_RATE: at most this many Binding Updates per second to one node (§12).
    pub const MAX_UPDATE_RATE: u32 = 3;
    /// InitialBindackTimeoutFirstReg default for a first home registration (§13).
    pub const INITIAL_BINDACK_TIMEOUT_FIRST_REG: Duration = Duration::from_millis(1500);
}

/// One IPv6 packet (starting at the IPv6 header, no link-layer header) that the caller must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Source address of the outermost IPv6 header (for route/interface selection).
    pub src: Ipv6Addr,
    /// Destination address of the outermost IPv6 header (the next hop's target).
    pub dst: Ipv6Addr,
    /// The complete packet bytes.
    pub packet: Vec<u8>,
}

/// Lifetimes on the wire are in units of 4 seconds (RFC 6275 §6.1.7, §6.1.8).
pub fn lifetime_to_units(d: Duration) -> u16 {
    u16::try_from(d.as_secs() / 4).unwrap_or(u16::MAX)
}

/// Inverse of [`lifetime_to_units`].
pub fn units_to_lifetime(units: u16) -> Duration {
    Duration::from_secs(u64::from(units) * 4)
}

/// Sequence-number comparison modulo 2^16 (RFC 6275 §9.5.1): `a` is less than `b` when
/// `b - a` (mod 2^16) lies in `1..2^15`.
pub fn seq_less(a: u16, b: u16) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 0x8000
}
