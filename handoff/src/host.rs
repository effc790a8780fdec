//! What the handoff engine drives: the connection's *host* (the userspace stack or the
//! kernel's sockets) and the *service* whose per-connection state travels with it.
//!
//! Both are passed to the engine per call, as smoltcp passes its socket set: the engine owns
//! no host and no service, so one node can run many donors and an acceptor over the same
//! interface, and tests can drive the engine over simulated ones.

use ds_stack::{ConnState, Packets};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

/// A host operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

impl HostError {
    /// An error with this text.
    pub fn new(s: impl Into<String>) -> Self {
        HostError(s.into())
    }
}

/// How the acceptor makes the connection's local address its own before the thaw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The address must already be ours.
    None,
    /// Claim it on the link and announce it with an unsolicited Neighbour Advertisement with
    /// override (RFC 4861 §7.2.6) at activation.
    Address,
    /// Serve it as a Mobile IPv6 home address away from home (RFC 6275 §11.3.1); no
    /// announcement (route-optimised mode: the Binding Update steers the client).
    HomeAddress,
}

/// Where a connection lives: the userspace stack's interface or the kernel's sockets.
///
/// Every method is local and non-blocking (the kernel host's system calls return at once).
/// The engine reads time only through [`Host::now`], and only to time the host's own
/// operations (handoff phases 1, 3 and 7); a simulated host returns simulated time.
pub trait Host {
    /// A connection on this host (live, or thawed and not yet activated).
    type Conn: std::fmt::Debug;

    /// The host's monotonic clock.
    fn now(&self) -> Instant;

    /// Which kind of host this is (reported with each handoff).
    fn kind(&self) -> crate::msg::HostKind;

    /// The connection's ends `(local, remote)`, `None` once it is gone.
    fn endpoints(&self, conn: &Self::Conn) -> Option<(SocketAddrV6, SocketAddrV6)>;

    /// Bytes written and not yet acknowledged by the peer, `None` once the connection is
    /// gone (it closed or was reset).
    fn unacknowledged(&mut self, conn: &Self::Conn) -> Option<usize>;

    /// Ask the peer for an immediate ACK (RFC 9293 §3.8.4 probe) so a drain does not wait for
    /// its delayed-ACK timer. Returns whether a probe went out.
    fn solicit_ack(&mut self, _conn: &Self::Conn) -> bool {
        false
    }

    /// Stop the connection and hold the peer's packets from now on ([`Host::take_held`]).
    /// On error the connection still runs here, unchanged.
    fn freeze(&mut self, conn: &Self::Conn) -> Result<ConnState, HostError>;

    /// Re-create a connection from `state`, *dormant*: it sends nothing and the peer's packets
    /// are held until [`Host::activate`]. The local address is made ours per `takeover`.
    fn thaw(&mut self, state: &ConnState, takeover: Takeover) -> Result<Self::Conn, HostError>;

    /// Make a thawed connection live: packets held for it here are delivered first, then it
    /// sends. `announce` asks for the address announcement of [`Takeover::Address`].
    fn activate(&mut self, conn: &mut Self::Conn, announce: bool) -> Result<(), HostError>;

    /// Reset a live connection (RST to the peer): one that arrived but cannot be continued.
    fn abort(&mut self, conn: Self::Conn);

    /// Undo a thaw that will not be committed: nothing reaches the peer (no RST, no FIN), and
    /// an address taken over for it alone is given back.
    fn discard(&mut self, conn: Self::Conn);

    /// Packets of the frozen connection `local` ↔ `remote` held here since the freeze or the
    /// last take (whole IPv6 packets, oldest first).
    fn take_held(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets;

    /// Stop holding the frozen connection's packets (it lives elsewhere now); returns the
    /// packets still held.
    fn release(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets;

    /// Deliver packets a donor forwarded, as if they had arrived here.
    fn inject(&mut self, packets: Packets);

    /// Connections on this host (the acceptor's load limit).
    fn connection_count(&self) -> usize;

    /// Route-optimised mode: start the care-of test towards `client` (RFC 6275 §5.2.5,
    /// §11.6.1) unless a fresh care-of keygen token is at hand.
    fn start_care_of_test(&mut self, _client: Ipv6Addr, _cookie: u64) -> Result<(), HostError> {
        Err(HostError::new(
            "route optimisation needs the userspace host",
        ))
    }

    /// Route-optimised mode: a care-of keygen token for `client` is at hand.
    fn has_care_of_token(&self, _client: Ipv6Addr) -> bool {
        false
    }

    /// Route-optimised mode: send `client` a Binding Update for the connection's home address
    /// built from the home keygen `ticket` that travelled with it and this host's care-of
    /// keygen token (RFC 6275 §5.2.5, §11.7.2).
    fn bind(
        &mut self,
        _client: Ipv6Addr,
        _ticket: &[u8],
        _lifetime: Duration,
    ) -> Result<(), HostError> {
        Err(HostError::new(
            "route optimisation needs the userspace host",
        ))
    }
}

/// The application whose per-connection state travels with a handoff (an HTTP response in
/// progress, a session): exported at the freeze, adopted at activation.
pub trait Service<C> {
    /// Whether offers for `name` are taken here.
    fn accepts(&self, name: &str) -> bool;

    /// The connection is about to move: stop using it and return its state.
    fn export(&mut self, conn: &C) -> Result<Vec<u8>, String>;

    /// Continue a connection from `state`: one that arrived here, or one whose handoff failed
    /// before the commit (then `state` is what [`Service::export`] returned). On error the
    /// connection comes back and the engine resets it (the client gets a prompt RST, never a
    /// silent hang).
    fn adopt(&mut self, conn: C, state: &[u8]) -> Result<(), (C, String)>;
}

/// Phase durations as nanoseconds, saturating.
pub(crate) fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
