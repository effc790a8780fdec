//! Membership of a distributed server, after the seed's §2.3 ("Membership protocol"), sans-IO.
//!
//! A distributed server has one **contact node** (it holds the DS address's registration at
//! the home agent and receives new clients), a few **backups** ready to take over, and any
//! number of **snodes** that serve but never become the contact. This crate holds:
//!
//! - [`Member`]: one node's protocol state machine. Time and datagrams go in
//!   ([`Member::handle`], [`Member::poll`]); datagrams to send ([`Member::poll_transmit`]),
//!   events ([`Member::poll_event`]) and the next deadline ([`Member::poll_timeout`]) come out.
//!   No clock, socket or sleep inside: the daemon's event loop and the simulation drive the
//!   same code.
//! - [`Registry`]: the home agent's side, the one place that decides which node holds the DS
//!   address (registration with a lease, refused for an older epoch), and which relays a
//!   joiner's first message to the current contact (seed: "any node may simply send a message
//!   to the home address of the distributed server").
//! - [`wire`]: the messages, authenticated with HMAC-SHA256 over a cluster key, with per-sender
//!   sequence numbers (anti-replay window) and a challenge nonce for joins.
//! - [`sim`]: N members and a registry under a seeded network that drops, duplicates, delays,
//!   reorders and partitions, with crashes and restarts; invariants checked after every step.
//!
//! # The protocol
//!
//! Backups are ordered by join rank; the contact is the first. A join goes to the contact
//! (through the home agent), which answers with a challenge, then runs a two-phase commit of
//! the new view among the backups; a backup that does not answer is left out and the commit
//! retried without it; then the joiner is welcomed. Each backup heartbeats its predecessor; on
//! a failure it runs the two-phase commit removing it, and when the predecessor was the
//! contact, the successor is now the first backup and registers the DS address. A node wrongly
//! removed hears "we consider you failed, please join again" ([`wire::Body::Rejoin`]). Snodes
//! join with the same challenge but without a commit; the contact pings them and tells the
//! backups its list; an snode that has not been pinged for a while joins again.
//!
//! # Epochs and partitions
//!
//! Every view has an [`Epoch`] (view number, coordinator id), strictly increasing along a
//! lineage and unique across coordinators. Every message carries the sender's epoch; nodes
//! drop two-phase-commit and contact messages from older epochs than they know, and the
//! handoff engine refuses offers from an older epoch ([`Member::admits`]). The home agent's
//! [`Registry`] accepts a registration only from the holder (refresh, same or newer epoch) or,
//! once the holder's lease has expired, from a newer epoch; its answer tells a refused contact
//! whether a live holder exists (it steps down and joins again) or only a dead one with a newer
//! epoch (it commits a newer view and registers again).
//!
//! So when the backups split, each side may elect a contact, but the home agent holds one
//! registration at any time and hands it over only after the holder's lease lapsed and only to
//! a newer epoch; the other side's contact learns it lost at its next refresh and joins the
//! holder, and its backups, heartbeating a node that left their view, are told to join again.
//! A side cut off from the home agent cannot take the DS address. The cost is availability on
//! the side without the registration, never two contacts.

pub mod member;
pub mod registry;
pub mod sim;
pub mod wire;

pub use member::{Config, Event, Member, Role, Status};
pub use registry::{Registry, RegistryConfig, RegistryEvent, Resume};
pub use wire::{Body, Key, MemberInfo, View, WireError};

use serde::{Deserialize, Serialize};

/// A node's identity: chosen at random by the node when it starts (a restarted process is a new
/// node), so identities are unique without coordination and never reused.
pub type NodeId = u64;

/// A fencing token: the view number and the node that committed it. Ordered by view number,
/// then by node, so two coordinators never produce the same epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch {
    /// The view number: one more than the highest the coordinator had seen.
    pub view: u64,
    /// The coordinator of the view.
    pub by: NodeId,
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:04x}", self.view, self.by & 0xffff)
    }
}

/// Time as microseconds since an arbitrary origin, given by the caller.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// `d` later.
    pub fn after(self, d: std::time::Duration) -> Time {
        Time(self.0.saturating_add(d.as_micros() as u64))
    }
    /// Time since `earlier` (zero if it is later).
    pub fn since(self, earlier: Time) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}
