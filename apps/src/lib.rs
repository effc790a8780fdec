//! # ds-apps: the Distributed Servers binaries and the services they run
//!
//! - [`http`]: an HTTP/1.1 content service as a per-connection state machine (request parser,
//!   path sanitising, file streaming), independent of any TCP implementation.
//! - [`server`]: that service on top of a `ds-stack` interface: accept, read, write as send
//!   space allows, close, release.
//! - [`mac`], [`signal`]: small helpers of the `dsnode` daemon.
//!
//! The `dsnode` binary (`src/bin/dsnode.rs`) wires these to a device and a runner.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod home_agent;
pub mod http;
pub mod mac;
pub mod server;
pub mod signal;
