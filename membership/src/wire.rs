//! Membership messages, their authentication and the anti-replay window.
//!
//! A datagram is `postcard(Envelope) ‖ HMAC-SHA256(key, postcard(Envelope))` (RFC 2104 with
//! SHA-256, the full 32-byte tag). The envelope names its sender, a per-sender sequence number
//! (checked against a 64-entry sliding window, as IPsec's anti-replay in RFC 4303 §3.4.3) and
//! the sender's epoch. Joins answer a fresh challenge nonce, so a recorded join cannot be
//! replayed; a node's identity is random per process, so a restarted node's numbers start
//! afresh without colliding with its previous life.
//!
//! Everything is bounded before the tag is checked (datagram size) and after decoding
//! (members per view, string lengths), and a malformed or forged datagram is an error value,
//! never a panic.

use crate::{Epoch, NodeId, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};

/// Largest datagram accepted or produced.
pub const MAX_DATAGRAM: usize = 60_000;
/// Most backups in a view.
pub const MAX_BACKUPS: usize = 16;
/// Most snodes in a list (a larger cluster needs a paged list; refused for now).
pub const MAX_SNODES: usize = 1024;
/// Most dead care-of addresses in one registration.
pub const MAX_DEAD: usize = 64;
/// Views numbered this high or higher are refused as malformed: views count up by one per
/// committed change, so no honest node ever gets near, while a number near `u64::MAX` taken
/// in from one message (every authentic message raises the highest view a node has seen,
/// and its fence) would overflow the next proposal's `view + 1` or leave the node fenced
/// off for good.
pub const MAX_VIEW: u64 = 1 << 62;
/// HMAC-SHA256 tag length.
const TAG: usize = 32;

/// Why a datagram was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Larger than [`MAX_DATAGRAM`] or shorter than a tag.
    #[error("datagram size out of bounds")]
    Size,
    /// The tag does not verify under the cluster key.
    #[error("authentication failed")]
    Auth,
    /// The envelope does not decode or breaks a bound.
    #[error("malformed message")]
    Malformed,
    /// A sequence number already seen or too old for the window.
    #[error("replayed or too old")]
    Replay,
}

/// The cluster key: HMAC-SHA256 under a key derived from the cluster secret with a label of
/// its own, so the membership key differs from the handoff channel's.
#[derive(Clone)]
pub struct Key(ring::hmac::Key);

impl Key {
    /// Derive from the cluster secret's bytes.
    pub fn new(secret: &[u8]) -> Key {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        // v2: envelopes name their recipient; an older node's datagrams fail to authenticate
        // (counted as such) rather than decode into a different layout.
        let derived = ring::hmac::sign(&k, b"ds-membership v2");
        Key(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            derived.as_ref(),
        ))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// What a node asks to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinAs {
    /// May become the contact node.
    Backup,
    /// Serves, never the contact.
    Snode,
}

/// A member as others reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its identity.
    pub id: NodeId,
    /// Where its membership endpoint listens.
    pub addr: SocketAddr,
    /// Its care-of address: where the home agent tunnels the DS address's flows for it.
    pub coa: Ipv6Addr,
}

/// The backups, in rank order (the first is the contact), as of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The view's epoch.
    pub epoch: Epoch,
    /// Backups in join order; `backups[0]` is the contact node.
    pub backups: Vec<MemberInfo>,
}

impl View {
    /// The contact node.
    pub fn contact(&self) -> Option<&MemberInfo> {
        self.backups.first()
    }
    /// Whether `id` is a backup in this view.
    pub fn has(&self, id: NodeId) -> bool {
        self.backups.iter().any(|m| m.id == id)
    }
    /// The backup ranked just before `id`.
    pub fn predecessor(&self, id: NodeId) -> Option<&MemberInfo> {
        let i = self.backups.iter().position(|m| m.id == id)?;
        i.checked_sub(1).map(|p| &self.backups[p])
    }
}

/// Message bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Joiner → home agent → contact: I want to join; answer with a challenge.
    Hello {
        /// As what.
        role: JoinAs,
        /// Who and where.
        me: MemberInfo,
    },
    /// Home agent → joiner: no live contact holds the registration (epoch: the last one held).
    NoContact {
        /// The newest epoch the home agent accepted.
        last: Epoch,
    },
    /// Contact → joiner: prove you are fresh.
    Challenge {
        /// Echo this in the join.
        nonce: u64,
        /// The contact.
        contact: MemberInfo,
    },
    /// Joiner → contact: the join itself.
    Join {
        /// The challenge's nonce.
        nonce: u64,
        /// As what.
        role: JoinAs,
        /// Who and where.
        me: MemberInfo,
    },
    /// Contact → joiner: not now (free text, bounded).
    Refused {
        /// Why.
        reason: String,
    },
    /// Coordinator → backups: phase one of the two-phase commit.
    Prepare {
        /// The proposed view.
        view: View,
    },
    /// Backup → coordinator: promised.
    PrepareOk {
        /// The proposal's epoch.
        epoch: Epoch,
    },
    /// Backup → coordinator: I promised a newer epoch.
    PrepareNack {
        /// The proposal's epoch.
        epoch: Epoch,
        /// The newest epoch this backup knows or promised.
        seen: Epoch,
    },
    /// Coordinator → backups: phase two; also sent to catch a backup up.
    Commit {
        /// The committed view.
        view: View,
        /// The snodes the sender knows.
        snodes: Vec<MemberInfo>,
    },
    /// Backup → coordinator: applied.
    CommitOk {
        /// The view's epoch.
        epoch: Epoch,
    },
    /// Contact → joiner: you are in.
    Welcome {
        /// The view (for a backup; the snodes only need the contact).
        view: View,
        /// The snodes the contact knows (for a backup).
        snodes: Vec<MemberInfo>,
    },
    /// Backup → its predecessor: alive?
    Heartbeat {
        /// The node the sender believes it heartbeats.
        target: NodeId,
    },
    /// Predecessor → backup: alive.
    HeartbeatOk,
    /// "We consider you to have failed, please join again."
    Rejoin,
    /// Contact → backups: the snodes it knows (no two-phase commit).
    Snodes {
        /// The list.
        snodes: Vec<MemberInfo>,
    },
    /// Contact → snode: you are known; (new contact) I am the contact now.
    Ping {
        /// The contact.
        contact: MemberInfo,
    },
    /// Member → contact: alive, and how loaded (for the least-connections policy).
    Pong {
        /// Who and where.
        me: MemberInfo,
        /// Connections it serves.
        load: u32,
    },
    /// Contact → home agent: bind the DS address to my care-of address.
    Register {
        /// Who and where.
        me: MemberInfo,
        /// Requested lease, microseconds.
        lease_us: u64,
        /// Members found dead lately (identity, care-of address): their clients' flows are
        /// to be answered with a reset rather than black-holed (repeated for a few seconds).
        dead: Vec<(NodeId, std::net::Ipv6Addr)>,
    },
    /// Home agent → contact: the answer.
    RegisterReply {
        /// Whether the registration is held by the sender now.
        ok: bool,
        /// Who holds it: its id, its latest epoch and the epoch it first registered with
        /// (the fence).
        holder: Option<(NodeId, Epoch, Epoch)>,
        /// How long the holder's lease still runs, microseconds (0: lapsed).
        lease_left_us: u64,
    },
}

impl Body {
    /// Kind name for counters and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Hello { .. } => "hello",
            Body::NoContact { .. } => "no-contact",
            Body::Challenge { .. } => "challenge",
            Body::Join { .. } => "join",
            Body::Refused { .. } => "refused",
            Body::Prepare { .. } => "prepare",
            Body::PrepareOk { .. } => "prepare-ok",
            Body::PrepareNack { .. } => "prepare-nack",
            Body::Commit { .. } => "commit",
            Body::CommitOk { .. } => "commit-ok",
            Body::Welcome { .. } => "welcome",
            Body::Heartbeat { .. } => "heartbeat",
            Body::HeartbeatOk => "heartbeat-ok",
            Body::Rejoin => "rejoin",
            Body::Snodes { .. } => "snodes",
            Body::Ping { .. } => "ping",
            Body::Pong { .. } => "pong",
            Body::Register { .. } => "register",
            Body::RegisterReply { .. } => "register-reply",
        }
    }

    fn within_bounds(&self) -> bool {
        let view_ok = |v: &View| {
            !v.backups.is_empty() && v.backups.len() <= MAX_BACKUPS && v.epoch.view < MAX_VIEW
        };
        let epoch_ok = |e: &Epoch| e.view < MAX_VIEW;
        match self {
            Body::NoContact { last } => epoch_ok(last),
            Body::PrepareOk { epoch } | Body::CommitOk { epoch } => epoch_ok(epoch),
            Body::PrepareNack { epoch, seen } => epoch_ok(epoch) && epoch_ok(seen),
            Body::RegisterReply { holder, .. } => {
                holder.is_none_or(|(_, e, f)| epoch_ok(&e) && epoch_ok(&f))
            }
            Body::Refused { reason } => reason.len() <= 256,
            Body::Prepare { view } => view_ok(view),
            Body::Commit { view, snodes } | Body::Welcome { view, snodes } => {
                view_ok(view) && snodes.len() <= MAX_SNODES
            }
            Body::Snodes { snodes } => snodes.len() <= MAX_SNODES,
            Body::Register { dead, .. } => dead.len() <= MAX_DEAD,
            _ => true,
        }
    }
}

/// The recipient of a message sent to whoever answers at an address: the registry (its
/// identity is random per process), or the holder of the registration that the registry
/// relays a [`Body::Hello`] to. No node has this identity.
pub const ANY: NodeId = 0;

/// An authenticated message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The recipient ([`ANY`]: the registry, or whoever holds the registration). A receiver
    /// takes only what is addressed to it: a message captured on its way to one node and
    /// replayed to another (within the other's replay window, which knows nothing of it) is
    /// dropped.
    pub to: NodeId,
    /// The sender's sequence number (from 1, one per message).
    pub seq: u64,
    /// The sender's epoch (its view's, for a backup; its contact's, for an snode).
    pub epoch: Epoch,
    /// The newest fence the sender knows (see [`crate::Member::fence`]).
    pub fence: Epoch,
    /// The message.
    pub body: Body,
}

/// Encode and authenticate.
pub fn seal(key: &Key, env: &Envelope) -> Vec<u8> {
    // Encoding a value of these types cannot fail (no maps with non-string keys, no
    // unsupported types); an empty vector would only fail to authenticate.
    let mut out = postcard::to_allocvec(env).unwrap_or_default();
    let tag = ring::hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Check size and tag, then decode and check bounds. The replay check is the receiver's
/// ([`ReplayGuard`]), after this.
pub fn open(key: &Key, datagram: &[u8]) -> Result<Envelope, WireError> {
    if datagram.len() > MAX_DATAGRAM || datagram.len() < TAG + 1 {
        return Err(WireError::Size);
    }
    let (msg, tag) = datagram.split_at(datagram.len() - TAG);
    ring::hmac::verify(&key.0, msg, tag).map_err(|_| WireError::Auth)?;
    let env: Envelope = postcard::from_bytes(msg).map_err(|_| WireError::Malformed)?;
    if !env.body.within_bounds()
        || env.seq == 0
        || env.epoch.view >= MAX_VIEW
        || env.fence.view >= MAX_VIEW
    {
        return Err(WireError::Malformed);
    }
    Ok(env)
}

/// Datagrams an [`Endpoint`] dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Bad size or tag.
    pub auth: u64,
    /// Authentic but malformed.
    pub malformed: u64,
    /// Replayed or too old for the window.
    pub replay: u64,
    /// Authentic, but addressed to another node.
    pub misaddressed: u64,
}

/// One party's side of the wire: its identity, key and sequence numbers for what it sends,
/// and the anti-replay windows and drop counters for what it receives.
#[derive(Debug)]
pub struct Endpoint {
    key: Key,
    id: NodeId,
    /// A registry's: messages to [`ANY`] are its.
    registry: bool,
    seq: u64,
    replay: ReplayGuard,
    drops: Drops,
}

impl Endpoint {
    /// The party `id`, remembering the windows of `replay_peers` senders.
    pub fn new(key: Key, id: NodeId, replay_peers: usize) -> Self {
        Endpoint {
            key,
            id,
            registry: false,
            seq: 0,
            replay: ReplayGuard::new(replay_peers),
            drops: Drops::default(),
        }
    }

    /// A registry's endpoint: it also takes messages addressed to [`ANY`].
    pub fn for_registry(mut self) -> Self {
        self.registry = true;
        self
    }

    /// Seal `body` as this party's next message, for `to` ([`ANY`]: the registry, or the
    /// holder of the registration).
    pub fn seal(&mut self, to: NodeId, epoch: Epoch, fence: Epoch, body: Body) -> Vec<u8> {
        self.seq += 1;
        seal(
            &self.key,
            &Envelope {
                from: self.id,
                to,
                seq: self.seq,
                epoch,
                fence,
                body,
            },
        )
    }

    /// Open a received datagram: authentic, well formed and not seen before, or `None`
    /// (counted in [`Endpoint::drops`]).
    pub fn open(&mut self, now: Time, datagram: &[u8]) -> Option<Envelope> {
        let env = match open(&self.key, datagram) {
            Ok(e) => e,
            Err(WireError::Malformed) => {
                self.drops.malformed += 1;
                return None;
            }
            Err(_) => {
                self.drops.auth += 1;
                return None;
            }
        };
        // A member takes a message to ANY only as the holder of the registration, for a Hello
        // the registry relays (its sender cannot know who holds it; a replayed one only gets
        // a challenge back).
        let to_any = self.registry || matches!(env.body, Body::Hello { .. });
        if env.to != self.id && !(env.to == ANY && to_any) {
            self.drops.misaddressed += 1;
            return None;
        }
        if self.replay.check(now, env.from, env.seq).is_err() {
            self.drops.replay += 1;
            return None;
        }
        Some(env)
    }

    /// What was dropped so far.
    pub fn drops(&self) -> Drops {
        self.drops
    }
}

/// Per-sender anti-replay windows (RFC 4303 §3.4.3's sliding window, 64 wide), for a bounded
/// number of senders: the least recently heard sender is forgotten first.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    peers: BTreeMap<NodeId, (u64, u64, Time)>,
    cap: usize,
}

impl ReplayGuard {
    /// Remember at most `cap` senders.
    pub fn new(cap: usize) -> Self {
        ReplayGuard {
            peers: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    /// Accept `seq` from `from` once; refuse a repeat or one older than the window.
    pub fn check(&mut self, now: Time, from: NodeId, seq: u64) -> Result<(), WireError> {
        if !self.peers.contains_key(&from) && self.peers.len() >= self.cap {
            if let Some(oldest) = self.peers.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| *k) {
                self.peers.remove(&oldest);
            }
        }
        let e = self.peers.entry(from).or_insert((0, 0, now));
        let (top, bits) = (e.0, e.1);
        if seq > top {
            let shift = seq - top;
            e.1 = if shift >= 64 { 1 } else { (bits << shift) | 1 };
            e.0 = seq;
        } else {
            let back = top - seq;
            if back >= 64 || bits & (1 << back) != 0 {
                return Err(WireError::Replay);
            }
            e.1 |= 1 << back;
        }
        e.2 = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            addr: "[fd00::1]:7100".parse().unwrap(),
            coa: "fd00::1".parse().unwrap(),
        }
    }

    #[test]
    fn seal_open_round_trip_and_forgery() {
        let k = Key::new(b"0123456789abcdef");
        let env = Envelope {
            from: 7,
            to: 8,
            seq: 1,
            epoch: Epoch { view: 3, by: 7 },
            fence: Epoch { view: 2, by: 7 },
            body: Body::Pong {
                me: info(7),
                load: 3,
            },
        };
        let d = seal(&k, &env);
        assert_eq!(open(&k, &d).unwrap(), env);
        let other = Key::new(b"another secret of sixteen");
        assert_eq!(open(&other, &d), Err(WireError::Auth));
        let mut bad = d.clone();
        bad[2] ^= 1;
        assert_eq!(open(&k, &bad), Err(WireError::Auth));
        assert_eq!(open(&k, &d[..10]), Err(WireError::Size));
        assert_eq!(open(&k, &vec![0; MAX_DATAGRAM + 1]), Err(WireError::Size));
    }

    /// An authentic message naming a view at or past `MAX_VIEW` (anywhere: the sender's
    /// epoch, its fence, or an epoch in the body) is malformed: taken in, it overflowed the
    /// next proposal's view number (a panic with overflow checks) or fenced the node off.
    #[test]
    fn a_view_number_near_the_end_of_its_range_is_malformed() {
        let k = Key::new(b"0123456789abcdef");
        let huge = Epoch {
            view: u64::MAX,
            by: 9,
        };
        let env = |epoch, fence, body| Envelope {
            from: 9,
            to: 1,
            seq: 1,
            epoch,
            fence,
            body,
        };
        let e = Epoch::default();
        for bad in [
            env(huge, e, Body::HeartbeatOk),
            env(e, huge, Body::HeartbeatOk),
            env(
                e,
                e,
                Body::PrepareNack {
                    epoch: e,
                    seen: huge,
                },
            ),
            env(e, e, Body::CommitOk { epoch: huge }),
            env(e, e, Body::NoContact { last: huge }),
            env(
                e,
                e,
                Body::Prepare {
                    view: View {
                        epoch: huge,
                        backups: vec![info(9)],
                    },
                },
            ),
        ] {
            assert_eq!(
                open(&k, &seal(&k, &bad)),
                Err(WireError::Malformed),
                "{bad:?}"
            );
        }
        let near = Epoch {
            view: MAX_VIEW - 1,
            by: 9,
        };
        let ok = env(near, near, Body::HeartbeatOk);
        assert_eq!(open(&k, &seal(&k, &ok)), Ok(ok));
    }

    #[test]
    fn oversized_view_is_malformed_even_when_authentic() {
        let k = Key::new(b"0123456789abcdef");
        let env = Envelope {
            from: 1,
            to: 2,
            seq: 1,
            epoch: Epoch::default(),
            fence: Epoch::default(),
            body: Body::Prepare {
                view: View {
                    epoch: Epoch::default(),
                    backups: (0..MAX_BACKUPS as u64 + 1).map(info).collect(),
                },
            },
        };
        assert_eq!(open(&k, &seal(&k, &env)), Err(WireError::Malformed));
    }

    /// A message is taken only by the node it is addressed to: one captured on its way to
    /// node 2 and replayed to node 3 (whose replay window knows nothing of it) is dropped and
    /// counted. Messages to `ANY` are the registry's, and a member's only for a Hello.
    #[test]
    fn a_message_is_taken_only_by_its_recipient() {
        let k = Key::new(b"0123456789abcdef");
        let t = Time(0);
        let mut a = Endpoint::new(k.clone(), 1, 8);
        let (mut b, mut c) = (
            Endpoint::new(k.clone(), 2, 8),
            Endpoint::new(k.clone(), 3, 8),
        );
        let e = Epoch::default();
        let d = a.seal(2, e, e, Body::Rejoin);
        assert!(c.open(t, &d).is_none(), "replayed to another node");
        assert_eq!(c.drops().misaddressed, 1);
        assert_eq!(b.open(t, &d).map(|m| m.body), Some(Body::Rejoin));
        // To ANY: a registry takes anything, a member only a Hello.
        let mut reg = Endpoint::new(k.clone(), 77, 8).for_registry();
        let register = a.seal(
            ANY,
            e,
            e,
            Body::Register {
                me: info(1),
                lease_us: 1,
                dead: Vec::new(),
            },
        );
        assert!(reg.open(t, &register).is_some());
        assert!(b.open(t, &register).is_none());
        let hello = a.seal(
            ANY,
            e,
            e,
            Body::Hello {
                role: JoinAs::Snode,
                me: info(1),
            },
        );
        assert!(b.open(t, &hello).is_some());
        assert_eq!(b.drops().misaddressed, 1);
    }

    #[test]
    fn replay_window() {
        let mut g = ReplayGuard::new(2);
        let t = Time(0);
        assert!(g.check(t, 1, 5).is_ok());
        assert_eq!(g.check(t, 1, 5), Err(WireError::Replay));
        assert!(g.check(t, 1, 3).is_ok());
        assert_eq!(g.check(t, 1, 3), Err(WireError::Replay));
        assert!(g.check(t, 1, 100).is_ok());
        assert_eq!(g.check(t, 1, 30), Err(WireError::Replay));
        assert!(g.check(t, 1, 99).is_ok());
        // Bounded: a third sender evicts the least recently heard.
        assert!(g.check(Time(1), 2, 1).is_ok());
        assert!(g.check(Time(2), 3, 1).is_ok());
        assert_eq!(g.peers.len(), 2);
    }
}
