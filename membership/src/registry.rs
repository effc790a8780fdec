//! The home agent's registration authority for the DS address.
//!
//! The home agent is the one place that decides which node receives the DS address's new
//! flows, so fencing is enforced here: a registration is accepted from the holder (a refresh,
//! with its current or a newer epoch) or, once the holder's lease has lapsed, from a newer
//! epoch than any accepted before; never from an older one. The accepted epochs therefore
//! increase over time, and the epoch with which the current holder first registered is the
//! cluster's *fence* ([`crate::Member::fence`]): handoffs carry it and nodes refuse older ones.
//!
//! The registry also relays a joiner's `Hello` to the holder (seed §2.3: a node finds the
//! contact by sending to the home address), or answers `NoContact` when no lease runs.

use crate::wire::{Body, Endpoint, Key, MemberInfo};
use crate::{Epoch, NodeId, Time};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The home agent's own identity (random per process).
    pub id: NodeId,
    /// Longest lease granted, whatever is asked.
    pub max_lease: Duration,
    /// Senders whose replay windows are kept.
    pub replay_peers: usize,
    /// Most datagrams queued for sending (excess dropped, counted).
    pub max_queue: usize,
    /// Where a previous run of this home agent stopped (it crashed or restarted): the
    /// newest epoch it accepted and the holder it had. Registrations must be newer than that
    /// epoch, except the same holder's continuing with it; without this a restarted registry
    /// would take an older epoch first (a deposed contact's).
    pub resume: Option<Resume>,
}

/// What a registry persists to be resumed after a restart ([`RegistryConfig::resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// The newest epoch accepted.
    pub last: Epoch,
    /// The holder then, if any.
    pub holder: Option<NodeId>,
}

impl RegistryConfig {
    /// Defaults for identity `id`.
    pub fn new(id: NodeId) -> Self {
        RegistryConfig {
            id,
            max_lease: Duration::from_secs(10),
            replay_peers: 4096,
            max_queue: 1024,
            resume: None,
        }
    }
}

/// What changed at the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A new holder: point the DS address's binding at its care-of address.
    Bound {
        /// The holder.
        holder: MemberInfo,
        /// The epoch it registered with (the new fence).
        epoch: Epoch,
    },
    /// The holder found a member dead: flows still pinned to its care-of address are to be
    /// answered with a reset (moved to the holder, whose stack resets unknown connections,
    /// and their clients solicited).
    Dead {
        /// The dead member's care-of address.
        coa: Ipv6Addr,
    },
}

/// How long a reported death is remembered (a repeat within it is ignored).
pub const DEAD_MEMORY: Duration = Duration::from_secs(10);

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryStats {
    /// Registrations accepted (refreshes included).
    pub accepted: u64,
    /// Holder changes.
    pub handovers: u64,
    /// Registrations refused (stale epoch or a live holder).
    pub refused: u64,
    /// Hellos relayed to the holder.
    pub relayed: u64,
    /// Hellos answered with NoContact.
    pub no_contact: u64,
    /// Datagrams dropped: bad size or tag.
    pub dropped_auth: u64,
    /// Datagrams dropped: malformed.
    pub dropped_malformed: u64,
    /// Datagrams dropped: replayed.
    pub dropped_replay: u64,
    /// Datagrams dropped: authentic, but addressed to a member.
    pub dropped_misaddressed: u64,
    /// Datagrams dropped: not for the registry.
    pub dropped_other: u64,
    /// Dead members reported.
    pub dead: u64,
}

/// The current holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Who.
    pub info: MemberInfo,
    /// Its latest registered epoch.
    pub epoch: Epoch,
    /// The epoch it first registered with: the fence.
    pub since: Epoch,
    /// Until when its lease runs.
    pub until: Time,
}

/// The registration authority (sans-IO).
#[derive(Debug)]
pub struct Registry {
    wire: Endpoint,
    cfg: RegistryConfig,
    holder: Option<Holder>,
    last: Epoch,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<RegistryEvent>,
    stats: RegistryStats,
    dead_seen: std::collections::BTreeMap<NodeId, Time>,
}

impl Registry {
    /// A registry with no holder.
    pub fn new(key: Key, cfg: RegistryConfig) -> Self {
        Registry {
            wire: Endpoint::new(key, cfg.id, cfg.replay_peers).for_registry(),
            holder: None,
            last: cfg.resume.map(|r| r.last).unwrap_or_default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: RegistryStats::default(),
            dead_seen: std::collections::BTreeMap::new(),
            cfg,
        }
    }

    /// The holder, if any (its lease may have lapsed: it keeps the binding until replaced).
    pub fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }

    /// The newest epoch accepted.
    pub fn last_epoch(&self) -> Epoch {
        self.last
    }

    /// What to persist so that a restart resumes here ([`RegistryConfig::resume`]): changes
    /// only when the holder does.
    pub fn resume_point(&self) -> Resume {
        Resume {
            last: self.last,
            holder: self.holder.map(|h| h.info.id),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        let d = self.wire.drops();
        RegistryStats {
            dropped_auth: d.auth,
            dropped_malformed: d.malformed,
            dropped_replay: d.replay,
            dropped_misaddressed: d.misaddressed,
            ..self.stats
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<RegistryEvent> {
        self.events.pop_front()
    }

    /// Queue `body` for the member `to` (its identity and address).
    fn send(&mut self, to: (NodeId, SocketAddr), body: Body) {
        if self.out.len() >= self.cfg.max_queue {
            return;
        }
        let fence = self.holder.map(|h| h.since).unwrap_or_default();
        let d = self.wire.seal(to.0, self.last, fence, body);
        self.out.push_back((to.1, d));
    }

    /// One datagram from the network.
    pub fn handle(&mut self, now: Time, datagram: &[u8]) {
        let Some(env) = self.wire.open(now, datagram) else {
            return;
        };
        match env.body {
            Body::Register { me, lease_us, dead } if me.id == env.from => {
                if self.register(now, me, env.epoch, lease_us) {
                    self.dead(now, &dead);
                }
            }
            Body::Hello { me, .. } if me.id == env.from => match self.holder {
                Some(h) if h.until > now && h.info.id != me.id => {
                    self.stats.relayed += 1;
                    if self.out.len() < self.cfg.max_queue {
                        self.out.push_back((h.info.addr, datagram.to_vec()));
                    }
                }
                _ => {
                    self.stats.no_contact += 1;
                    let last = self.last;
                    self.send((me.id, me.addr), Body::NoContact { last });
                }
            },
            _ => self.stats.dropped_other += 1,
        }
    }

    /// The holder reports members found dead: each (node, care-of address) is acted on once
    /// (a node restarted at the same address is another node), never the holder's own
    /// address.
    fn dead(&mut self, now: Time, dead: &[(NodeId, Ipv6Addr)]) {
        self.dead_seen.retain(|_, t| now.since(*t) < DEAD_MEMORY);
        let holder = self.holder.map(|h| h.info.coa);
        for (id, coa) in dead {
            if Some(*coa) == holder || self.dead_seen.contains_key(id) {
                continue;
            }
            if self.dead_seen.len() >= 4096 {
                break;
            }
            self.dead_seen.insert(*id, now);
            self.stats.dead += 1;
            self.events.push_back(RegistryEvent::Dead { coa: *coa });
        }
    }

    fn register(&mut self, now: Time, me: MemberInfo, epoch: Epoch, lease_us: u64) -> bool {
        let lease = Duration::from_micros(lease_us).min(self.cfg.max_lease);
        let ok = match self.holder {
            Some(h) if h.info.id == me.id => epoch >= h.epoch,
            Some(h) => h.until <= now && epoch > self.last,
            // After a restart, the holder of the previous run may continue with its epoch.
            None => {
                epoch > self.last
                    || (epoch == self.last && self.cfg.resume.and_then(|r| r.holder) == Some(me.id))
            }
        };
        if ok {
            self.stats.accepted += 1;
            let same = self.holder.map(|h| h.info.id == me.id).unwrap_or(false);
            let since = match self.holder {
                Some(h) if same => h.since,
                _ => epoch,
            };
            self.holder = Some(Holder {
                info: me,
                epoch,
                since,
                until: now.after(lease),
            });
            self.last = self.last.max(epoch);
            if !same {
                self.stats.handovers += 1;
                self.events
                    .push_back(RegistryEvent::Bound { holder: me, epoch });
            }
        } else {
            self.stats.refused += 1;
        }
        let (holder, left) = match self.holder {
            Some(h) => (
                Some((h.info.id, h.epoch, h.since)),
                h.until.since(now).as_micros() as u64,
            ),
            None => (None, 0),
        };
        self.send(
            (me.id, me.addr),
            Body::RegisterReply {
                ok,
                holder,
                lease_left_us: left,
            },
        );
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Body, Endpoint, MemberInfo};

    const SECRET: &[u8] = b"the registry test's cluster secret";

    fn member(id: NodeId) -> (Endpoint, MemberInfo) {
        let me = MemberInfo {
            id,
            addr: format!("[fd00::{id}]:7100").parse().expect("address"),
            coa: format!("fd00::{id}").parse().expect("address"),
        };
        (Endpoint::new(Key::new(SECRET), id, 16), me)
    }

    fn register(r: &mut Registry, now: Time, m: &mut (Endpoint, MemberInfo), epoch: Epoch) {
        let d = m.0.seal(
            wire::ANY,
            epoch,
            epoch,
            Body::Register {
                me: m.1,
                lease_us: 200_000,
                dead: Vec::new(),
            },
        );
        r.handle(now, &d);
    }

    fn holder_id(r: &Registry) -> Option<NodeId> {
        r.holder().map(|h| h.info.id)
    }

    /// A restarted home agent resumes from its persisted point: the previous holder continues
    /// with its epoch, an older or equal epoch of anyone else is refused (a deposed contact
    /// cannot take the DS address first), a newer one is taken.
    #[test]
    fn a_restarted_registry_refuses_what_its_previous_run_had_passed() {
        let (mut a, mut b) = (member(1), member(2));
        let e = |view| Epoch { view, by: 1 };
        let mut first = Registry::new(Key::new(SECRET), RegistryConfig::new(100));
        register(&mut first, Time(1_000), &mut a, e(5));
        assert_eq!(holder_id(&first), Some(1));
        let point = first.resume_point();
        assert_eq!(
            point,
            Resume {
                last: e(5),
                holder: Some(1)
            }
        );

        // Without the resume point a deposed node (older epoch) would be taken at once.
        let mut fresh = Registry::new(Key::new(SECRET), RegistryConfig::new(101));
        register(&mut fresh, Time(1_000), &mut b, e(4));
        assert_eq!(
            holder_id(&fresh),
            Some(2),
            "the failure the resume point prevents"
        );

        let cfg = RegistryConfig {
            resume: Some(point),
            ..RegistryConfig::new(102)
        };
        let mut again = Registry::new(Key::new(SECRET), cfg.clone());
        register(&mut again, Time(1_000), &mut b, e(4));
        register(&mut again, Time(1_000), &mut b, e(5));
        assert_eq!(
            holder_id(&again),
            None,
            "older and equal epochs of another node refused"
        );
        register(&mut again, Time(1_000), &mut a, e(5));
        assert_eq!(holder_id(&again), Some(1), "the previous holder continues");

        let mut other = Registry::new(Key::new(SECRET), cfg);
        register(&mut other, Time(1_000), &mut b, e(6));
        assert_eq!(holder_id(&other), Some(2), "a newer epoch is taken");
    }
}
