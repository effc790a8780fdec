//! Handoff protocol messages: a version byte, then postcard.
//!
//! ```text
//! donor                         acceptor
//!   Prepare{client} ────────────▶  (drain starts) run the care-of test ahead
//!   Offer{state, ticket} ───────▶  decode + validate, decide
//!   ◀──────── Refuse{reason}       (donor thaws back: nothing lost)
//!   ◀──────── Accept               (acceptor now owns the connection)
//!   ◀──────── Activated{timings}   (thawed, address taken, announced)
//!   ◀──────── Steered{phase 6}     (steering ahead: the home agent confirmed the move later)
//!   Abort ──────────────────────▶  (donor gave up before an Accept)
//!   Forward{packets} ───────────▶  (held in the gap, after Accept)
//!
//! acceptor                      home agent (transparent mode, phases 4–6)
//!   MoveFlow{client, server, to} ─▶ one flow-map update
//!   ◀──────── FlowMoved{ok}
//!
//! donor (its handoff failed)    home agent (transparent mode)
//!   MoveFlow{reclaim} ──────────▶  the flow back here, unless the acceptor's move came first
//!   ◀──────── FlowMoved{ok, taken}  (taken: the connection is the acceptor's; not resumed)
//!
//! draining node                 home agent (transparent mode)
//!   Rebind{home, to} ───────────▶  new flows of `home` go to `to` (the binding)
//!   ◀──────── Rebound{ok}
//! ```

use ds_stack::Packets;
use serde::{Deserialize, Serialize};

/// Message encoding version (first byte of every plaintext). 2: Activated names the
/// acceptor's host kind. 3: offers carry the donor's membership fence. 4: offers and flow
/// moves carry the handoff's flow generation (the home agent orders moves by it). 5: steering
/// ahead of the commit ([`AcceptorTimes::steer_ahead`], [`Message::Steered`]). 6: offers say
/// how long the donor waits for the Accept ([`Offer::commit_within_us`]), refusals may say
/// [`RefuseReason::TooLate`]. 7: the home agent is the commit point of a transparent
/// handoff: of the acceptor's move and the donor's reclaim of one generation the first it
/// reads wins ([`crate::flows`]); moves say how long they may wait there
/// ([`Message::MoveFlow`]'s `valid_us`), reclaims whether they insist (`force`), and answers
/// whether the other side won (`taken`).
pub const PROTOCOL_VERSION: u8 = 7;

/// Bit set in the id of a donor's [`Message::MoveFlow`] reclaim (the acceptor numbers its own
/// moves from 1 upwards, so the home agent's answers to the two never match each other).
pub const RECLAIM_ID: u64 = 1 << 63;

/// A membership fence: the epoch with which the current holder of the DS address registered
/// at the home agent (`ds-membership`'s `Member::fence`; ordered by view, then node). An
/// acceptor that knows a newer fence than the offer carries refuses it, so a node acting for
/// a deposed contact cannot hand connections off.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Fence {
    /// The view number.
    pub view: u64,
    /// The node that committed the view.
    pub by: u64,
}

/// Which host a connection lives on (for the report's path, e.g. `"kernel->user"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostKind {
    /// The userspace stack.
    #[default]
    User,
    /// The kernel's sockets (`TCP_REPAIR`).
    Kernel,
}

impl HostKind {
    /// `"user"` or `"kernel"`.
    pub fn label(self) -> &'static str {
        match self {
            HostKind::User => "user",
            HostKind::Kernel => "kernel",
        }
    }
}

/// Errors decoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Empty plaintext.
    #[error("empty message")]
    Empty,
    /// Another protocol version.
    #[error("unsupported handoff protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The bytes do not decode.
    #[error("corrupt handoff message: {0}")]
    Corrupt(String),
}

/// Why an acceptor refuses a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Too loaded to take it.
    Load,
    /// No such service here.
    UnknownService,
    /// The state did not decode or validate.
    BadState(String),
    /// The state decoded but the thaw failed (e.g. the address is not ours, already in use).
    ThawFailed(String),
    /// The offer's fence is older than the newest the acceptor knows: the donor acts for a
    /// deposed contact.
    StaleFence {
        /// The acceptor's fence.
        known: Fence,
    },
    /// The offer could no longer be accepted in time for its donor ([`Offer::commit_within_us`]):
    /// the donor gives up on it, or soon will.
    TooLate,
    /// Another reason.
    Other(String),
}

/// The donor proposes a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Donor-chosen identifier, echoed in the replies.
    pub conn_id: u64,
    /// [`ds_stack::ConnState::encode`] bytes.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    /// Optional mobility ticket (an encoded `HomeTicket`) for route-optimised mode.
    pub ticket: Option<serde_bytes::ByteBuf>,
    /// The service the connection belongs to (e.g. "http").
    pub service: String,
    /// The service's own state of the connection (e.g. an HTTP response in progress), opaque
    /// here; the acceptor's service continues from it.
    pub app: Option<serde_bytes::ByteBuf>,
    /// The donor's membership fence (none when the node runs without membership).
    pub fence: Option<Fence>,
    /// The flow's generation for this handoff: greater than that of every earlier handoff of
    /// the connection (a Lamport clock of the nodes: the donor's counter, raised by every
    /// offer it received). The acceptor's [`Message::MoveFlow`] carries it, so that the home
    /// agent applies the moves of one flow in the order of its handoffs.
    pub generation: u64,
    /// How long after sending the offer the donor waits for its Accept, microseconds (its
    /// reply timeout); `None`: no limit. An Accept that arrives later finds the connection
    /// thawed back at the donor, and activating it too would leave it live at both nodes,
    /// so the acceptor commits only within the first three quarters of this from the
    /// offer's arrival and refuses ([`RefuseReason::TooLate`]) after: the last quarter
    /// covers the offer's and the Accept's way and the processes' delays in reading them
    /// (the acceptor has no other clock of the donor's; durations need no synchronised
    /// clocks).
    pub commit_within_us: Option<u64>,
}

/// Acceptor-side timings sent back with [`Message::Activated`], nanoseconds, measured on the acceptor's
/// monotonic clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorTimes {
    /// Phase 3: decode, validate, thaw.
    pub recreate_ns: u64,
    /// Phases 4–6 (return routability, BU construction, binding management; in transparent
    /// mode the flow-table update).
    pub steer_ns: [u64; 3],
    /// Phase 7: activation (address takeover, announcement).
    pub activate_ns: u64,
    /// From the Offer's arrival to sending Activated.
    pub elapsed_ns: u64,
    /// The acceptor's host.
    pub host: HostKind,
    /// The acceptor committed without waiting for the home agent's answer to its flow move
    /// (steering ahead): the flow may still reach the donor, which forwards what does until
    /// [`Message::Steered`] comes (and its grace after), [`crate::donor::MAX_FORWARD`] at
    /// most. Phase 6 then comes with `Steered`, not here.
    pub steer_ahead: bool,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Donor → acceptor: take this connection.
    Offer(Offer),
    /// Acceptor → donor: the state is valid and I take it; the donor must forget it.
    Accept {
        /// The offer's id.
        conn_id: u64,
    },
    /// Acceptor → donor: I do not take it; the donor resumes it.
    Refuse {
        /// The offer's id.
        conn_id: u64,
        /// Why.
        reason: RefuseReason,
    },
    /// Acceptor → donor: the connection runs here now.
    Activated {
        /// The offer's id.
        conn_id: u64,
        /// How long the acceptor's phases took.
        times: AcceptorTimes,
    },
    /// Acceptor → donor, after an Activated that said `steer_ahead`: the home agent applied
    /// the flow move, so the client's packets no longer reach the donor (but for those in
    /// flight: the donor still forwards for its grace period).
    Steered {
        /// The offer's id.
        conn_id: u64,
        /// Phase 6: the flow move's round trip to the home agent, nanoseconds.
        steer_ns: u64,
    },
    /// Either way: give this offer up.
    Abort {
        /// The offer's id.
        conn_id: u64,
        /// Free text.
        reason: String,
    },
    /// Donor → acceptor, after Accept: IPv6 packets of the connection that reached the donor
    /// after the freeze (issue item "nothing dropped in the gap"); the acceptor processes them
    /// as if received.
    Forward {
        /// The offer's id.
        conn_id: u64,
        /// Whole IPv6 packets (encoded as a sequence of byte strings).
        packets: Packets,
    },
    /// Donor → acceptor, when the drain starts: an offer for a connection with `client` will
    /// follow; the acceptor may start what can run ahead of it (the care-of test of return
    /// routability), so that it overlaps with the drain and the state transfer.
    Prepare {
        /// The coming offer's id.
        conn_id: u64,
        /// The connection's client end.
        client: std::net::SocketAddrV6,
    },
    /// Acceptor → home agent (transparent mode): send the flow `client` → `server` to the
    /// care-of address `to` from now on.
    MoveFlow {
        /// The offer's id.
        conn_id: u64,
        /// The client's end of the connection (the flow's source).
        client: std::net::SocketAddrV6,
        /// The served end (the DS address and port).
        server: std::net::SocketAddrV6,
        /// The node that now serves it.
        to: std::net::Ipv6Addr,
        /// The handoff's flow generation ([`Offer::generation`]).
        generation: u64,
        /// Sent by the donor of a handoff that failed before it saw the Accept, pointing the
        /// flow back at itself. Of the acceptor's move and this reclaim, the first the home
        /// agent reads wins; the other is refused with `taken` ([`crate::flows::judge`]). The
        /// donor resumes the connection only if its reclaim won, and the acceptor activates
        /// it only if its move did: the connection lives at exactly one node.
        reclaim: bool,
        /// A reclaim that wins over the acceptor's move of the same generation even after
        /// it: sent by a donor that got no answer to its reclaim (the home agent
        /// unreachable) and resumes the connection all the same, or one whose acceptor may
        /// commit before its move is answered (steering ahead).
        force: bool,
        /// The acceptor's move: how long after it reached the home agent it may still be
        /// applied, in microseconds (the acceptor gives up on its answer later than that,
        /// and a move applied after it gave up would steer the client to a node that dropped
        /// the connection). `None`: no limit.
        valid_us: Option<u64>,
    },
    /// Home agent → acceptor: the flow map was updated (`ok`), or why not.
    FlowMoved {
        /// The offer's id.
        conn_id: u64,
        /// Whether the flow now goes to the requested node.
        ok: bool,
        /// Not moved because the other side of the same handoff (or a newer handoff) had the
        /// flow moved first: for a donor's reclaim, the connection is the acceptor's.
        taken: bool,
        /// Free text when not.
        detail: String,
    },
    /// Node → home agent (transparent mode, a node that drains): tunnel the new flows of the
    /// home address `home` to the care-of address `to` from now on (the binding the flows
    /// not yet seen fall back to); flows already mapped keep their node.
    Rebind {
        /// The request's id.
        conn_id: u64,
        /// The home (DS) address.
        home: std::net::Ipv6Addr,
        /// The node that takes the new flows.
        to: std::net::Ipv6Addr,
    },
    /// Home agent → node: the binding was updated (`ok`), or why not.
    Rebound {
        /// The request's id.
        conn_id: u64,
        /// Whether new flows now go to the requested node.
        ok: bool,
        /// Free text when not.
        detail: String,
    },
}

impl Message {
    /// Version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail; fall back to the bare version byte.
        postcard::to_extend(self, vec![PROTOCOL_VERSION]).unwrap_or_else(|_| vec![PROTOCOL_VERSION])
    }

    /// Length of [`Message::encode`]'s output, counted without encoding (an offer carries the
    /// whole connection state; encoding it twice would cost the handoff's own phase 2).
    pub fn encoded_len(&self) -> usize {
        1 + postcard::experimental::serialized_size(self).unwrap_or(0)
    }

    /// Decode bytes from [`Message::encode`]; foreign input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message, MsgError> {
        let (&v, rest) = bytes.split_first().ok_or(MsgError::Empty)?;
        if v != PROTOCOL_VERSION {
            return Err(MsgError::Version(v));
        }
        let (m, tail): (Message, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| MsgError::Corrupt(e.to_string()))?;
        if !tail.is_empty() {
            return Err(MsgError::Corrupt(format!("{} trailing bytes", tail.len())));
        }
        Ok(m)
    }

    /// The connection id the message is about.
    pub fn conn_id(&self) -> u64 {
        match self {
            Message::Offer(o) => o.conn_id,
            Message::Accept { conn_id }
            | Message::Refuse { conn_id, .. }
            | Message::Activated { conn_id, .. }
            | Message::Steered { conn_id, .. }
            | Message::Abort { conn_id, .. }
            | Message::Forward { conn_id, .. }
            | Message::Prepare { conn_id, .. }
            | Message::MoveFlow { conn_id, .. }
            | Message::FlowMoved { conn_id, .. }
            | Message::Rebind { conn_id, .. }
            | Message::Rebound { conn_id, .. } => *conn_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let ms = [
            Message::Offer(Offer {
                conn_id: 7,
                state: vec![1, 2, 3],
                ticket: Some(serde_bytes::ByteBuf::from(vec![9; 40])),
                service: "http".into(),
                app: Some(serde_bytes::ByteBuf::from(vec![3; 12])),
                fence: Some(Fence { view: 4, by: 77 }),
                generation: 1 << 50,
                commit_within_us: Some(1_000_000),
            }),
            Message::Prepare {
                conn_id: 7,
                client: "[fd00::c]:40000".parse().unwrap(),
            },
            Message::MoveFlow {
                conn_id: 7,
                client: "[fd00::c]:40000".parse().unwrap(),
                server: "[fd00::80]:80".parse().unwrap(),
                to: "fd00::2".parse().unwrap(),
                generation: 12,
                reclaim: true,
                force: false,
                valid_us: Some(250_000),
            },
            Message::FlowMoved {
                conn_id: 7,
                ok: false,
                taken: true,
                detail: "no such flow".into(),
            },
            Message::Rebind {
                conn_id: 7,
                home: "fd00::80".parse().unwrap(),
                to: "fd00::2".parse().unwrap(),
            },
            Message::Rebound {
                conn_id: 7,
                ok: true,
                detail: String::new(),
            },
            Message::Accept { conn_id: 7 },
            Message::Refuse {
                conn_id: 7,
                reason: RefuseReason::UnknownService,
            },
            Message::Activated {
                conn_id: 7,
                times: AcceptorTimes {
                    recreate_ns: 5,
                    ..Default::default()
                },
            },
            Message::Activated {
                conn_id: 7,
                times: AcceptorTimes {
                    steer_ahead: true,
                    ..Default::default()
                },
            },
            Message::Steered {
                conn_id: 7,
                steer_ns: 91_000,
            },
            Message::Abort {
                conn_id: 7,
                reason: "timeout".into(),
            },
        ];
        for m in ms {
            let b = m.encode();
            assert_eq!(m.encoded_len(), b.len());
            assert_eq!(Message::decode(&b).unwrap(), m);
            assert_eq!(m.conn_id(), 7);
            for cut in 0..b.len() {
                assert!(Message::decode(&b[..cut]).is_err());
            }
            let mut extra = b.clone();
            extra.push(0);
            assert!(Message::decode(&extra).is_err());
        }
        // Another version (the next, or the previous one) is refused.
        let next = PROTOCOL_VERSION + 1;
        assert_eq!(Message::decode(&[next, 0]), Err(MsgError::Version(next)));
        assert_eq!(Message::decode(&[1, 0]), Err(MsgError::Version(1)));
        assert!(Message::decode(&[PROTOCOL_VERSION, 200, 200, 200]).is_err());
    }
}
