//! Reproducible evaluation of Distributed Servers.
//!
//! * [`stack`]: `dsperf stack`, throughput and latency of our TCP against the Linux kernel's
//!   and smoltcp's, each behind a TAP device in network namespaces, in the same run.
//! * [`handoff`]: `dsperf handoff`, the seed's handoff experiment in namespaces (client, home
//!   agent, two nodes), one JSON line per handoff.
//! * [`api`]: `dsperf api`, what the library's connection API costs against the raw stack.
//! * [`plot`]: SVG charts of the results.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod handoff;
pub mod plot;
pub mod stack;

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
