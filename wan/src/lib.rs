//! A WAN emulator for namespace testbeds (the kernels this project runs on have no `netem`).
//!
//! The seed evaluated Distributed Servers behind NISTnet, a router that delays, shapes and
//! drops packets per link. `ds-wan` plays that part between Ethernet interfaces: with two, a
//! bump in the wire (every frame received on one is handed to a [`Shaper`] for its direction
//! and transmitted on the other when the shaper says so); with more, a switched core where
//! each pair of sites has its own path.
//!
//! * [`Shaper`] is the sans-IO core: frames and the current time in, frames and the next
//!   deadline out. Per direction: Bernoulli loss, a token bucket (rate, burst) in front of a
//!   drop-tail queue, then a one-way delay with uniform jitter that never reorders.
//! * [`port::PacketPort`] is one interface seen through an `AF_PACKET` socket, in any network
//!   namespace, with virtio-net headers so that GSO super-frames and partial checksums pass
//!   through intact.
//! * [`switch::Switch`] is the core: N ports, a learning switch, a shaper per directed path
//!   and optionally one per port in front (a site's shared upstream); two ports are a link.
//! * [`fwd::Forwarder`] is the event loop joining the ports through the switch; the `dswan`
//!   binary (in `ds-perf`) is its command line.
//!
//! ```
//! use ds_wan::{LinkParams, Shaper, Verdict};
//! use std::time::Duration;
//!
//! // 10 ms one way, 1 Mbit/s: a 1,250-byte frame takes 10 ms to serialize.
//! let p: LinkParams = "delay=10ms,rate=1mbit".parse().unwrap();
//! let mut s = Shaper::new(p, 1);
//! assert_eq!(s.push(Duration::ZERO, vec![0u8; 1250], 1250), Verdict::Queued);
//! assert_eq!(s.next_deadline(), Some(Duration::from_millis(20)));
//! let mut out = Vec::new();
//! s.poll(Duration::from_millis(20), |f| out.push(f));
//! assert_eq!(out.len(), 1);
//! ```

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod fwd;
pub mod params;
pub mod port;
pub mod shaper;
pub mod stamp;
pub mod switch;

pub use params::{LinkParams, ParamError};
pub use shaper::{Shaper, ShaperStats, Verdict};

/// Errors of the I/O half (ports and the forwarder).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bad argument (interface name, namespace).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn os(what: impl Into<String>) -> Error {
        Error::Os {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}
