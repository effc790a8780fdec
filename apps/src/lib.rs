//! # ds-apps: the Distributed Servers binaries and the services they run
//!
//! - [`http`]: an HTTP/1.1 content service as a per-connection state machine (request parser,
//!   path sanitising, file streaming), independent of any TCP implementation.
//! - [`server`]: that service written against the library's connection API
//!   (`dserver::Node`): accept, read, write as send space allows, close; hand connections to
//!   peers (quota, `dsctl handoff`, drain) and serve the ones handed over;
//!   [`kernel_node`]: the same over standard sockets (`TCP_REPAIR`); [`flow_agent`]: the home
//!   agent's transparent-mode flow steering.
//! - [`mac`], [`signal`], [`sched`]: small helpers of the daemons.
//!
//! The `dsnode` binary (`src/bin/dsnode.rs`) wires these to a device and a runner.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod control;
pub mod drain;
pub mod exchange;
pub mod flow_agent;
pub mod home_agent;
pub mod http;
pub mod kernel_node;
pub mod logging;
pub mod membership;
#[cfg(feature = "etcd")]
pub mod membership_etcd;
pub use dserver::mac;
pub mod proxy;
pub mod sched;
pub mod server;
pub mod signal;
pub mod udp_echo;
