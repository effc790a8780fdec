//! # dserver: Distributed Servers as a library
//!
//! A *distributed server* is a set of nodes that clients reach at one IPv6 address (the DS
//! address). Any node may hand a live TCP connection to another node while the client keeps
//! talking: only the server end moves (its TCP state, unread and unacknowledged bytes, and the
//! application's own per-connection state), so the client's socket never notices.
//!
//! This crate lets a server process join a distributed server: build a [`Node`] (the DS
//! address, this node's care-of address, the device, the cluster secret, the home agent and
//! the peer), accept connections, read and write them, and hand them off with
//! [`Node::handoff`]. A connection that arrives from another node comes out of the same
//! [`Node::accept`] call as a new client, with the state its previous node gave it.
//!
//! ```no_run
//! use dserver::{Device, Node};
//! use std::io::{Read, Write};
//!
//! # fn main() -> Result<(), dserver::Error> {
//! let mut node = Node::builder()
//!     .ds_addr("fd00:80::80".parse().unwrap())
//!     .care_of("fd00:1::1".parse().unwrap())
//!     .device(Device::AfXdp { iface: "eth0".into() })
//!     .port(8080)
//!     .secret_file("/etc/dserver/secret")
//!     .control_listen("[fd00:1::11]:7000".parse().unwrap())
//!     .peer("[fd00:1::12]:7000".parse().unwrap())
//!     .home_agent("[fd00:1::a]:7001".parse().unwrap())
//!     .build()?;
//! loop {
//!     let client = node.accept()?;
//!     if let Some(state) = &client.state {
//!         // Handed over by another node: continue from `state`.
//!         let _ = state;
//!     }
//!     let mut conn = node.stream(client.conn);
//!     let mut buf = [0u8; 1024];
//!     let n = conn.read(&mut buf)?;
//!     conn.write_all(&buf[..n])?;
//!     // Let the peer answer the rest; it gets b"echoed once" with the connection.
//!     let peer = "[fd00:1::12]:7000".parse().unwrap();
//!     let report = node.handoff(client.conn, peer, b"echoed once".to_vec())?;
//!     println!("moved in {} µs", report.total_us);
//! }
//! # }
//! ```
//!
//! Servers with many connections use the non-blocking calls instead: [`Node::poll`],
//! [`Node::try_accept`], [`Node::take_ready`], [`Node::read`], [`Node::write`],
//! [`Node::start_handoff`] and [`Node::take_events`], and wait on [`Node::readiness_fd`] in
//! their own `epoll` set (no thread per connection).
//!
//! The [`engine`] module is the handoff engine's I/O half, shared with the `dsnode` daemon's
//! HTTP and kernel-socket nodes.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod engine;
mod kernel;
pub mod mac;
mod node;
mod policy;
mod readiness;
pub mod ro;
#[cfg(feature = "tokio")]
pub mod tokio_io;

pub use ds_handoff::{ClusterSecret, HandoffReport, Phase};
pub use kernel::{kernel_steering, KernelAccepted, KernelNode};
pub use node::{
    Accepted, Builder, ConnId, Device, Event, Node, Queue, Stream, TcpState, UdpSocketId,
};
pub use policy::{PlaceFn, Placement, Policy};

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or device operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A control channel (to the peer, the home agent) could not be used.
    #[error("control channel: {0}")]
    Channel(#[from] ds_handoff::ChannelError),
    /// The node's settings are incomplete or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// No such connection on this node (closed, or handed off).
    #[error("no connection {0} on this node")]
    NoConnection(ConnId),
    /// The connection is being handed off and cannot be used here now.
    #[error("connection {0} is leaving this node")]
    Leaving(ConnId),
    /// A handoff did not happen; unless the cause says otherwise the connection continues
    /// here.
    #[error("handoff of connection {conn}: {cause}")]
    Handoff {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: String,
    },
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io {
            what: "I/O".into(),
            source,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { source, .. } => source,
            Error::NoConnection(_) => std::io::Error::new(std::io::ErrorKind::NotConnected, e),
            other => std::io::Error::other(other),
        }
    }
}
