//! # ds-stack: a sans-IO userspace IPv6/TCP stack whose connections serialize
//!
//! [`Interface`] is the whole protocol engine: give it received Ethernet frames and the current
//! time ([`Interface::receive`], [`Interface::poll`]); take frames to send from
//! [`Interface::transmit`]; ask [`Interface::poll_at`] when to call again. It owns no thread,
//! socket or clock, so tests drive it with simulated time and any [`device::Device`] (an
//! in-memory pair, a TAP device, AF_XDP) can carry its frames through a [`runner::Runner`].
//!
//! A TCP connection can be frozen ([`Interface::tcp_freeze`]) into a [`ConnState`], a plain
//! versioned serde value with a compact binary encoding, and thawed on any other interface
//! ([`Interface::tcp_thaw`]): that is the handoff primitive of Distributed Servers.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod device;
pub mod frag;
pub mod hooks;
pub mod iface;
pub mod isn;
pub mod mobile;
pub mod ndp;
pub mod packets;
mod prefetch;
pub mod runner;
pub mod state;
pub mod stats;
pub mod tcp;
pub mod time;
pub mod udp;

pub use iface::{Config, Error, Interface, ListenHandle, Route, TcpHandle, UdpHandle};
pub use packets::Packets;
pub use state::ConnState;
pub use stats::Stats;
pub use tcp::{Congestion, TcpConfig, TcpState, DEFAULT_NOTSENT_LOWAT};
pub use time::{Duration, Instant};

/// Which checksums `wire` computes when emitting (re-exported for building packets with `wire`).
pub use smoltcp::phy::ChecksumCapabilities;
/// Wire formats, re-exported from `smoltcp::wire` (zero-copy views plus owned reprs).
pub use smoltcp::wire;
