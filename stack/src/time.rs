//! Time as the sans-IO core sees it: plain values handed in by the caller.
//!
//! The core never reads a clock. The I/O layer (see [`crate::runner`]) converts the
//! monotonic OS clock into [`Instant`] values; tests drive time by hand. The type is
//! `ds_mipv6`'s, so the stack and the Mobile IPv6 state machines share one clock type.

pub use ds_mipv6::time::{Budget, Micros};
pub use ds_mipv6::Instant;
pub use std::time::Duration;
