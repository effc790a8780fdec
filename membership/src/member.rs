//! One node's membership state machine (seed §2.3.1 and §2.3.2), sans-IO.

use crate::wire::{self, Body, Endpoint, JoinAs, Key, MemberInfo, View};
use crate::{Epoch, NodeId, Time};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What a node may be: a backup (may become the contact node) or an snode.
pub type Role = JoinAs;

/// Load reports a contact keeps ([`Member::loads`]): the members' and snodes' (at most
/// `MAX_BACKUPS` + `MAX_SNODES`) with room to spare; when full, the stale go first.
pub const MAX_LOADS: usize = 4096;

/// Settings. The defaults aim at a failover well under 300 ms on a LAN: a backup suspects its
/// predecessor after 150 ms without an answer to 50 ms heartbeats, and the contact's lease at
/// the home agent (refreshed every 50 ms) lapses 200 ms after its last refresh.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node (random per process).
    pub id: NodeId,
    /// Where this node's membership endpoint listens.
    pub addr: SocketAddr,
    /// This node's care-of address (where the home agent tunnels to it).
    pub coa: Ipv6Addr,
    /// Backup or snode.
    pub role: Role,
    /// The home agent's membership endpoint (the registry; joins go through it).
    pub home_agent: SocketAddr,
    /// Heartbeat interval (backup → predecessor).
    pub heartbeat: Duration,
    /// Silence after which a predecessor is suspected.
    pub suspect: Duration,
    /// How long a two-phase commit waits for answers before it leaves the silent out.
    pub prepare_timeout: Duration,
    /// Lease asked of the home agent.
    pub lease: Duration,
    /// Registration refresh interval (the contact).
    pub refresh: Duration,
    /// Interval between join attempts.
    pub join_retry: Duration,
    /// Interval of the contact's pings to snodes.
    pub snode_ping: Duration,
    /// Silence after which the contact drops an snode.
    pub snode_dead: Duration,
    /// Silence after which an snode thinks it was forgotten and joins again.
    pub snode_forgotten: Duration,
    /// Most backups (joins beyond are refused).
    pub max_backups: usize,
    /// Most snodes the contact keeps.
    pub max_snodes: usize,
    /// Most joins waiting for a commit.
    pub max_pending_joins: usize,
    /// Most outstanding join challenges.
    pub max_challenges: usize,
    /// Senders whose replay windows are kept.
    pub replay_peers: usize,
    /// Most datagrams queued for sending (excess dropped, counted).
    pub max_queue: usize,
}

impl Config {
    /// Defaults for a node.
    pub fn new(
        id: NodeId,
        addr: SocketAddr,
        coa: Ipv6Addr,
        role: Role,
        home_agent: SocketAddr,
    ) -> Self {
        Config {
            id,
            addr,
            coa,
            role,
            home_agent,
            heartbeat: Duration::from_millis(50),
            suspect: Duration::from_millis(150),
            prepare_timeout: Duration::from_millis(60),
            lease: Duration::from_millis(200),
            refresh: Duration::from_millis(50),
            join_retry: Duration::from_millis(250),
            snode_ping: Duration::from_millis(300),
            snode_dead: Duration::from_millis(1000),
            snode_forgotten: Duration::from_millis(1000),
            max_backups: 7,
            max_snodes: wire::MAX_SNODES,
            max_pending_joins: 32,
            max_challenges: 64,
            replay_peers: 4096,
            max_queue: 4096,
        }
    }

    fn me(&self) -> MemberInfo {
        MemberInfo {
            id: self.id,
            addr: self.addr,
            coa: self.coa,
        }
    }
}

/// Where the node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Status {
    /// Looking for the contact (or an snode that thinks it was forgotten).
    Joining,
    /// A backup, not the contact.
    Backup,
    /// The first backup: the contact node (see [`Member::holds_registration`]).
    Contact,
    /// An snode that knows its contact.
    Snode,
}

/// What happened, for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Welcomed into the backups or as an snode.
    Joined {
        /// The epoch at the welcome.
        epoch: Epoch,
    },
    /// A new view was applied (backups).
    ViewChanged {
        /// Its epoch.
        epoch: Epoch,
    },
    /// The home agent accepted this node's registration: it holds the DS address.
    BecameContact {
        /// The fence it holds it with.
        fence: Epoch,
    },
    /// This node no longer holds the DS address (deposed, removed or superseded).
    NoLongerContact,
    /// This node left its view and joins again (removed, told to rejoin, or deposed).
    Rejoining {
        /// Why.
        reason: &'static str,
    },
    /// An snode's contact changed.
    ContactChanged {
        /// The new contact.
        contact: MemberInfo,
    },
    /// The contact's list of snodes changed.
    SnodesChanged,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberStats {
    /// Datagrams accepted.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Dropped: bad size or tag.
    pub dropped_auth: u64,
    /// Dropped: malformed.
    pub dropped_malformed: u64,
    /// Dropped: replayed.
    pub dropped_replay: u64,
    /// Dropped: authentic, but addressed to another node (a replay meant for it).
    pub dropped_misaddressed: u64,
    /// Dropped: from an older epoch than known.
    pub dropped_stale: u64,
    /// Dropped: not expected in this state.
    pub dropped_unexpected: u64,
    /// Dropped: the send queue was full.
    pub dropped_queue: u64,
    /// Joins refused (no challenge, bad nonce, full).
    pub joins_refused: u64,
    /// Two-phase commits completed.
    pub commits: u64,
    /// Two-phase commit attempts that left a silent backup out.
    pub commit_retries: u64,
    /// Predecessors suspected.
    pub suspicions: u64,
    /// Times this node became the contact.
    pub became_contact: u64,
    /// Times it rejoined.
    pub rejoins: u64,
}

/// A two-phase commit this node coordinates.
#[derive(Debug)]
struct Txn {
    proposed: View,
    waiting: BTreeSet<NodeId>,
    joiners: Vec<MemberInfo>,
    deadline: Time,
}

#[derive(Debug)]
struct BackupState {
    view: View,
    promised: Epoch,
    /// Snodes (the contact pings them; the others keep the contact's list).
    snodes: BTreeMap<NodeId, (MemberInfo, Time)>,
    /// Heartbeat of the predecessor: whom, next send, last answer, already suspected.
    hb_target: Option<NodeId>,
    hb_next: Time,
    hb_last_ok: Time,
    hb_suspected: bool,
    txn: Option<Txn>,
    txn_not_before: Time,
    pending_joins: Vec<MemberInfo>,
    pending_removals: BTreeSet<NodeId>,
    /// Whether a commit must raise the view above an epoch seen at the home agent.
    need_bump: bool,
    /// Commit retransmissions: backup → (address, tries left).
    commit_unacked: BTreeMap<NodeId, (SocketAddr, u8)>,
    commit_next: Time,
    /// Contact duties.
    registered: bool,
    reg_next: Time,
    /// A refusal's holder and when its lease was to lapse.
    reg_lapse: Option<(NodeId, Time)>,
    /// Members found dead lately (identity, care-of address, until when to report it).
    dead: Vec<(NodeId, Ipv6Addr, Time)>,
    ping_next: Time,
    challenges: BTreeMap<u64, Time>,
}

impl BackupState {
    fn new(view: View, now: Time) -> Self {
        BackupState {
            promised: view.epoch,
            view,
            snodes: BTreeMap::new(),
            hb_target: None,
            hb_next: now,
            hb_last_ok: now,
            hb_suspected: false,
            txn: None,
            txn_not_before: now,
            pending_joins: Vec::new(),
            pending_removals: BTreeSet::new(),
            need_bump: false,
            commit_unacked: BTreeMap::new(),
            commit_next: now,
            registered: false,
            reg_next: now,
            reg_lapse: None,
            dead: Vec::new(),
            ping_next: now,
            challenges: BTreeMap::new(),
        }
    }

    fn snode_list(&self) -> Vec<MemberInfo> {
        self.snodes.values().map(|(m, _)| *m).collect()
    }
}

/// Remember `coa` as dead for a few registrations, unless a live member uses it (a node
/// restarted at the same address is alive). Item 6 of the membership issue: the home agent
/// answers the dead node's clients with a reset.
fn note_dead(b: &mut BackupState, dead: &MemberInfo, now: Time) {
    let coa = dead.coa;
    if b.view.backups.iter().any(|m| m.coa == coa) || b.snodes.values().any(|(m, _)| m.coa == coa) {
        return;
    }
    if !b.dead.iter().any(|(id, _, _)| *id == dead.id) && b.dead.len() < wire::MAX_DEAD {
        b.dead
            .push((dead.id, coa, now.after(Duration::from_secs(2))));
    }
}

#[derive(Debug)]
enum State {
    Joining {
        next: Time,
    },
    Backup(Box<BackupState>),
    Snode {
        contact: MemberInfo,
        last_heard: Time,
    },
}

/// One node's membership protocol.
///
/// ```
/// use ds_membership::{Config, Key, Member, Role, Time};
/// let ha = "[fd00::a]:7100".parse().unwrap();
/// let cfg = Config::new(1, "[fd00::1]:7100".parse().unwrap(), "fd00::1".parse().unwrap(),
///                       Role::Backup, ha);
/// let mut m = Member::new(cfg, Key::new(b"cluster secret, 16+ bytes"), 42, Time(0));
/// m.poll(Time(0));
/// // The first thing a node does is to look for the contact through the home agent.
/// let (to, _hello) = m.poll_transmit().unwrap();
/// assert_eq!(to, ha);
/// ```
#[derive(Debug)]
pub struct Member {
    cfg: Config,
    wire: Endpoint,
    rng: StdRng,
    state: State,
    /// The newest epoch seen in any authentic message.
    seen: Epoch,
    /// The newest fence known.
    fence: Epoch,
    /// The epoch to speak with (last view or contact epoch).
    epoch: Epoch,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    stats: MemberStats,
    /// This node's load, as the application sets it.
    load: u32,
    /// The loads members reported to this node (the contact), with when (at most
    /// [`MAX_LOADS`]).
    loads: std::collections::BTreeMap<NodeId, (u32, Time)>,
}

impl Member {
    /// A node that starts by joining. `seed` seeds its nonces and jitter (take it from the OS's
    /// random source outside simulations: join challenges must be unpredictable).
    pub fn new(cfg: Config, key: Key, seed: u64, now: Time) -> Self {
        Member {
            wire: Endpoint::new(key, cfg.id, cfg.replay_peers),
            cfg,
            rng: StdRng::seed_from_u64(seed),
            state: State::Joining { next: now },
            seen: Epoch::default(),
            fence: Epoch::default(),
            epoch: Epoch::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: MemberStats::default(),
            load: 0,
            loads: std::collections::BTreeMap::new(),
        }
    }

    /// This node's load (connections it serves), reported to the contact in its answers to
    /// the contact's pings.
    pub fn set_load(&mut self, load: u32) {
        self.load = load;
    }

    /// The loads the members reported (to the contact; within the last few pings), by
    /// member, with when each report arrived: for the least-connections policy.
    pub fn loads(&self, now: Time) -> Vec<(MemberInfo, u32, Time)> {
        let fresh = self.cfg.snode_dead;
        self.members()
            .into_iter()
            .filter_map(|m| {
                let (l, at) = self.loads.get(&m.id)?;
                (now.since(*at) < fresh).then_some((m, *l, *at))
            })
            .collect()
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Where the node stands.
    pub fn status(&self) -> Status {
        match &self.state {
            State::Joining { .. } => Status::Joining,
            State::Snode { .. } => Status::Snode,
            State::Backup(b) if b.view.contact().map(|c| c.id) == Some(self.cfg.id) => {
                Status::Contact
            }
            State::Backup(_) => Status::Backup,
        }
    }

    /// Whether the home agent last accepted this node's registration (it holds the DS
    /// address).
    pub fn holds_registration(&self) -> bool {
        matches!(&self.state, State::Backup(b) if b.registered)
    }

    /// The view, for a backup.
    pub fn view(&self) -> Option<&View> {
        match &self.state {
            State::Backup(b) => Some(&b.view),
            _ => None,
        }
    }

    /// The contact as this node knows it.
    pub fn contact(&self) -> Option<MemberInfo> {
        match &self.state {
            State::Backup(b) => b.view.contact().copied(),
            State::Snode { contact, .. } => Some(*contact),
            State::Joining { .. } => None,
        }
    }

    /// The snodes this node knows (the contact's list; empty on snodes).
    pub fn snodes(&self) -> Vec<MemberInfo> {
        match &self.state {
            State::Backup(b) => b.snode_list(),
            _ => Vec::new(),
        }
    }

    /// Every member this node knows, itself included: the contact's candidates for the
    /// distribution policy.
    pub fn members(&self) -> Vec<MemberInfo> {
        match &self.state {
            State::Backup(b) => {
                let mut v = b.view.backups.clone();
                v.extend(b.snodes.values().map(|(m, _)| *m));
                v
            }
            State::Snode { contact, .. } => vec![*contact, self.cfg.me()],
            State::Joining { .. } => vec![self.cfg.me()],
        }
    }

    /// The epoch this node speaks with.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The newest fence this node knows: the epoch with which the current holder of the DS
    /// address first registered at the home agent. The home agent accepts only newer epochs
    /// over time, so fences only grow; a handoff carries its donor's fence.
    pub fn fence(&self) -> Epoch {
        self.fence
    }

    /// Whether a handoff (or any action) fenced with `fence` may be accepted here: not when
    /// this node knows a newer holder than the sender did, i.e. the sender acts for a deposed
    /// contact.
    pub fn admits(&self, fence: Epoch) -> bool {
        fence >= self.fence
    }

    /// Counters.
    pub fn stats(&self) -> MemberStats {
        let d = self.wire.drops();
        MemberStats {
            dropped_auth: d.auth,
            dropped_malformed: d.malformed,
            dropped_replay: d.replay,
            dropped_misaddressed: d.misaddressed,
            ..self.stats
        }
    }

    /// A handoff to `id` failed: the contact drops that snode and tells the backups (seed
    /// §2.3.2). A backup is left to its successor's heartbeat.
    pub fn report_unreachable(&mut self, id: NodeId, now: Time) {
        let contact = self.status() == Status::Contact;
        if let State::Backup(b) = &mut self.state {
            if !contact {
                return;
            }
            if let Some((m, _)) = b.snodes.remove(&id) {
                note_dead(b, &m, now);
                self.events.push_back(Event::SnodesChanged);
                self.broadcast_snodes();
            }
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Member::poll`] must run next.
    pub fn poll_timeout(&self) -> Option<Time> {
        match &self.state {
            State::Joining { next } => Some(*next),
            State::Snode { last_heard, .. } => Some(last_heard.after(self.cfg.snode_forgotten)),
            State::Backup(b) => {
                let contact = b.view.contact().map(|c| c.id) == Some(self.cfg.id);
                let pending =
                    !b.pending_joins.is_empty() || !b.pending_removals.is_empty() || b.need_bump;
                // The earliest of the deadlines that are armed.
                [
                    b.hb_target.map(|_| b.hb_next),
                    b.hb_target
                        .filter(|_| !b.hb_suspected)
                        .map(|_| b.hb_last_ok.after(self.cfg.suspect)),
                    b.txn.as_ref().map(|x| x.deadline),
                    (b.txn.is_none() && pending).then_some(b.txn_not_before),
                    (!b.commit_unacked.is_empty()).then_some(b.commit_next),
                    contact.then_some(b.reg_next),
                    (contact && b.registered).then_some(b.ping_next),
                    b.challenges.values().min().copied(),
                ]
                .into_iter()
                .flatten()
                .min()
            }
        }
    }

    /// Queue `body` for the node `to` (its identity, [`wire::ANY`] for the registry, and its
    /// address).
    fn send(&mut self, to: (NodeId, SocketAddr), body: Body) {
        if self.out.len() >= self.cfg.max_queue {
            self.stats.dropped_queue += 1;
            return;
        }
        self.stats.sent += 1;
        let d = self.wire.seal(to.0, self.epoch, self.fence, body);
        self.out.push_back((to.1, d));
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        let us = d.as_micros() as u64;
        Duration::from_micros(us / 2 + self.rng.gen_range(0..=us / 2 + 1))
    }

    /// Leave the view (or the contact) and join again.
    fn rejoin(&mut self, now: Time, reason: &'static str) {
        if self.holds_registration() {
            self.events.push_back(Event::NoLongerContact);
        }
        self.stats.rejoins += 1;
        tracing::debug!(id = self.cfg.id, reason, "rejoining");
        self.events.push_back(Event::Rejoining { reason });
        self.state = State::Joining { next: now };
    }

    /// Run timers.
    pub fn poll(&mut self, now: Time) {
        match &mut self.state {
            State::Joining { next } => {
                if now >= *next {
                    let d = self.cfg.join_retry.as_micros() as u64;
                    let d = Duration::from_micros(d / 2 + self.rng.gen_range(0..=d / 2 + 1));
                    *next = now.after(d);
                    let body = Body::Hello {
                        role: self.cfg.role,
                        me: self.cfg.me(),
                    };
                    self.send((wire::ANY, self.cfg.home_agent), body);
                }
            }
            State::Snode { last_heard, .. } => {
                if now.since(*last_heard) >= self.cfg.snode_forgotten {
                    // Seed §2.3.2: re-register when it suspects it has been forgotten.
                    self.state = State::Joining { next: now };
                    self.poll(now);
                }
            }
            State::Backup(_) => self.poll_backup(now),
        }
    }

    fn backup(&mut self) -> Option<&mut BackupState> {
        match &mut self.state {
            State::Backup(b) => Some(b),
            _ => None,
        }
    }

    fn poll_backup(&mut self, now: Time) {
        let me = self.cfg.id;
        let cfg = self.cfg.clone();
        let mut sends: Vec<((NodeId, SocketAddr), Body)> = Vec::new();
        let mut start_txn = false;
        let mut broadcast = false;
        {
            let Some(b) = self.backup() else { return };
            b.challenges.retain(|_, exp| *exp > now);
            // Heartbeat the predecessor (seed §2.3.1).
            let pred = b.view.predecessor(me).copied();
            if pred.map(|p| p.id) != b.hb_target {
                b.hb_target = pred.map(|p| p.id);
                b.hb_next = now;
                b.hb_last_ok = now;
                b.hb_suspected = false;
            }
            if let Some(p) = pred {
                if now >= b.hb_next {
                    b.hb_next = now.after(cfg.heartbeat);
                    sends.push(((p.id, p.addr), Body::Heartbeat { target: p.id }));
                }
                if !b.hb_suspected && now.since(b.hb_last_ok) >= cfg.suspect {
                    b.hb_suspected = true;
                    b.pending_removals.insert(p.id);
                    tracing::debug!(id = me, suspect = p.id, "predecessor suspected");
                }
            }
            // Commit retransmissions.
            if !b.commit_unacked.is_empty() && now >= b.commit_next {
                b.commit_next = now.after(cfg.prepare_timeout);
                let snodes = b.snode_list();
                b.commit_unacked.retain(|id, (addr, left)| {
                    if *left == 0 {
                        return false;
                    }
                    *left -= 1;
                    sends.push((
                        (*id, *addr),
                        Body::Commit {
                            view: b.view.clone(),
                            snodes: snodes.clone(),
                        },
                    ));
                    true
                });
            }
            // The running commit: leave the silent out and try again.
            if let Some(t) = &b.txn {
                if now >= t.deadline {
                    start_txn = true;
                }
            } else if (!b.pending_joins.is_empty() || !b.pending_removals.is_empty() || b.need_bump)
                && now >= b.txn_not_before
            {
                start_txn = true;
            }
            // Contact duties.
            if b.view.contact().map(|c| c.id) == Some(me) {
                if now >= b.reg_next {
                    b.reg_next = now.after(cfg.refresh);
                    b.dead.retain(|(_, _, until)| *until > now);
                    let dead = b
                        .dead
                        .iter()
                        .map(|(id, coa, _)| (*id, *coa))
                        .take(wire::MAX_DEAD)
                        .collect();
                    sends.push((
                        (wire::ANY, cfg.home_agent),
                        Body::Register {
                            me: cfg.me(),
                            lease_us: cfg.lease.as_micros() as u64,
                            dead,
                        },
                    ));
                }
                // Only the holder of the registration acts as the contact towards snodes.
                if b.registered && now >= b.ping_next {
                    b.ping_next = now.after(cfg.snode_ping);
                    let before = b.snodes.len();
                    let gone: Vec<MemberInfo> = b
                        .snodes
                        .values()
                        .filter(|(_, last)| now.since(*last) >= cfg.snode_dead)
                        .map(|(m, _)| *m)
                        .collect();
                    b.snodes
                        .retain(|_, (_, last)| now.since(*last) < cfg.snode_dead);
                    for m in gone {
                        note_dead(b, &m, now);
                    }
                    broadcast = b.snodes.len() != before;
                    for (m, _) in b.snodes.values() {
                        sends.push(((m.id, m.addr), Body::Ping { contact: cfg.me() }));
                    }
                    // The backups are pinged too, for their loads only (their liveness is
                    // their successors' business).
                    for m in b.view.backups.iter().filter(|m| m.id != me) {
                        sends.push(((m.id, m.addr), Body::Ping { contact: cfg.me() }));
                    }
                }
            }
        }
        for (to, body) in sends {
            self.send(to, body);
        }
        if broadcast {
            self.events.push_back(Event::SnodesChanged);
            self.broadcast_snodes();
        }
        if start_txn {
            self.start_txn(now);
        }
    }

    /// Start (or restart, leaving the silent out) a two-phase commit of the pending changes.
    fn start_txn(&mut self, now: Time) {
        let me = self.cfg.id;
        let seen = self.seen;
        let max_backups = self.cfg.max_backups;
        let timeout = self.cfg.prepare_timeout;
        let commit_now;
        let mut prepares = Vec::new();
        let refused: Vec<MemberInfo>;
        {
            let Some(b) = self.backup() else { return };
            let mut joiners = Vec::new();
            if let Some(old) = b.txn.take() {
                // Seed §2.3.1: a backup that does not answer is considered failed.
                for id in &old.waiting {
                    b.pending_removals.insert(*id);
                }
                joiners = old.joiners;
            }
            for j in b.pending_joins.drain(..) {
                if !joiners.iter().any(|x| x.id == j.id) {
                    joiners.push(j);
                }
            }
            let mut backups: Vec<MemberInfo> = b
                .view
                .backups
                .iter()
                .filter(|m| {
                    m.id == me
                        || (!b.pending_removals.contains(&m.id)
                            && !joiners.iter().any(|j| j.id == m.id))
                })
                .copied()
                .collect();
            joiners.retain(|j| j.id != me);
            for j in &joiners {
                if backups.len() < max_backups {
                    backups.push(*j);
                }
            }
            let (fit, unfit): (Vec<_>, Vec<_>) = joiners
                .into_iter()
                .partition(|j| backups.iter().any(|m| m.id == j.id));
            joiners = fit;
            refused = unfit;
            let base = b.view.epoch.view.max(b.promised.view).max(seen.view);
            let proposed = View {
                epoch: Epoch {
                    // Below MAX_VIEW (`wire::open` refuses higher): no overflow.
                    view: base.saturating_add(1),
                    by: me,
                },
                backups,
            };
            b.promised = proposed.epoch;
            b.need_bump = false;
            let waiting: BTreeSet<NodeId> = proposed
                .backups
                .iter()
                .filter(|m| m.id != me && !joiners.iter().any(|j| j.id == m.id))
                .map(|m| m.id)
                .collect();
            for m in &proposed.backups {
                if waiting.contains(&m.id) {
                    prepares.push((
                        (m.id, m.addr),
                        Body::Prepare {
                            view: proposed.clone(),
                        },
                    ));
                }
            }
            commit_now = waiting.is_empty();
            b.txn = Some(Txn {
                proposed,
                waiting,
                joiners,
                deadline: now.after(timeout),
            });
        }
        if !prepares.is_empty() {
            self.stats.commit_retries += u64::from(self.stats.commits > 0);
        }
        for (to, body) in prepares {
            self.send(to, body);
        }
        for j in refused {
            self.stats.joins_refused += 1;
            self.send(
                (j.id, j.addr),
                Body::Refused {
                    reason: "backups full".into(),
                },
            );
        }
        if commit_now {
            self.finish_txn(now);
        }
    }

    /// Every participant promised: commit.
    fn finish_txn(&mut self, now: Time) {
        let me = self.cfg.id;
        let timeout = self.cfg.prepare_timeout;
        let Some(b) = self.backup() else { return };
        let Some(t) = b.txn.take() else { return };
        let view = t.proposed;
        // What this commit settles is no longer pending.
        b.pending_removals.retain(|id| view.has(*id));
        let snodes = b.snode_list();
        let mut unacked = BTreeMap::new();
        let mut sends = Vec::new();
        for m in &view.backups {
            if m.id == me {
                continue;
            }
            if t.joiners.iter().any(|j| j.id == m.id) {
                sends.push((
                    (m.id, m.addr),
                    Body::Welcome {
                        view: view.clone(),
                        snodes: snodes.clone(),
                    },
                ));
            } else {
                unacked.insert(m.id, (m.addr, 4u8));
                sends.push((
                    (m.id, m.addr),
                    Body::Commit {
                        view: view.clone(),
                        snodes: snodes.clone(),
                    },
                ));
            }
        }
        b.commit_unacked = unacked;
        b.commit_next = now.after(timeout);
        self.stats.commits += 1;
        self.apply_view(now, view);
        for (to, body) in sends {
            self.send(to, body);
        }
    }

    /// Install a committed view that contains this node.
    fn apply_view(&mut self, now: Time, view: View) {
        let me = self.cfg.id;
        let was_contact = self.status() == Status::Contact;
        let epoch = view.epoch;
        self.epoch = epoch;
        self.seen = self.seen.max(epoch);
        let Some(b) = self.backup() else { return };
        let removed: Vec<MemberInfo> = b
            .view
            .backups
            .iter()
            .filter(|m| !view.has(m.id))
            .copied()
            .collect();
        b.view = view;
        b.promised = b.promised.max(epoch);
        for m in removed {
            note_dead(b, &m, now);
        }
        let is_contact = b.view.contact().map(|c| c.id) == Some(me);
        let pred = b.view.predecessor(me).map(|p| p.id);
        if pred != b.hb_target {
            b.hb_target = pred;
            b.hb_next = now;
            b.hb_last_ok = now;
            b.hb_suspected = false;
        }
        b.pending_joins.retain(|j| !b.view.has(j.id));
        b.pending_removals.retain(|id| b.view.has(*id));
        if let Some(t) = &b.txn {
            if t.proposed.epoch <= epoch {
                // Superseded: what it carried is retried on the new view.
                let t = b.txn.take().expect("checked");
                for j in t.joiners {
                    if !b.view.has(j.id) {
                        b.pending_joins.push(j);
                    }
                }
            }
        }
        if is_contact {
            // Register the new epoch at once; announce to the snodes when newly the contact.
            b.reg_next = now;
            if !was_contact {
                b.ping_next = now;
                for (_, last) in b.snodes.values_mut() {
                    *last = now;
                }
            }
        }
        // A node that held the registration and is no longer first gives it up.
        let lost = !is_contact && std::mem::take(&mut b.registered);
        self.events.push_back(Event::ViewChanged { epoch });
        if lost {
            self.events.push_back(Event::NoLongerContact);
        }
    }

    fn broadcast_snodes(&mut self) {
        let me = self.cfg.id;
        let Some(b) = self.backup() else { return };
        let snodes = b.snode_list();
        let to: Vec<(NodeId, SocketAddr)> = b
            .view
            .backups
            .iter()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.addr))
            .collect();
        for a in to {
            self.send(
                a,
                Body::Snodes {
                    snodes: snodes.clone(),
                },
            );
        }
    }

    /// One datagram from `src`.
    pub fn handle(&mut self, now: Time, src: SocketAddr, datagram: &[u8]) {
        let Some(env) = self.wire.open(now, datagram) else {
            return;
        };
        if env.from == self.cfg.id {
            self.stats.dropped_unexpected += 1;
            return;
        }
        self.stats.received += 1;
        self.seen = self.seen.max(env.epoch);
        if env.fence > self.fence {
            self.fence = env.fence;
        }
        let from_ha = src == self.cfg.home_agent;
        match env.body {
            Body::Heartbeat { target } => self.on_heartbeat(env.from, env.epoch, src, target),
            Body::Rejoin => {
                let ok = match &self.state {
                    State::Backup(b) => env.epoch >= b.view.epoch,
                    _ => false,
                };
                if ok {
                    self.rejoin(now, "told to rejoin");
                } else {
                    self.stats.dropped_stale += 1;
                }
            }
            Body::HeartbeatOk => {
                let me = self.cfg.id;
                if let Some(b) = self.backup() {
                    if b.hb_target == Some(env.from) {
                        b.hb_last_ok = now;
                        b.hb_suspected = false;
                        b.pending_removals.remove(&env.from);
                        if env.epoch < b.view.epoch {
                            // The predecessor missed a commit: catch it up.
                            let view = b.view.clone();
                            let snodes = b.snode_list();
                            if view.has(me) {
                                self.send((env.from, src), Body::Commit { view, snodes });
                            }
                        }
                    }
                }
            }
            Body::Hello { role: _, me } => {
                if self.status() != Status::Contact || me.id != env.from {
                    self.stats.dropped_unexpected += 1;
                    return;
                }
                let max = self.cfg.max_challenges;
                let nonce: u64 = self.rng.gen();
                let Some(b) = self.backup() else { return };
                if b.challenges.len() >= max {
                    if let Some((&k, _)) = b.challenges.iter().min_by_key(|(_, e)| **e) {
                        b.challenges.remove(&k);
                    }
                }
                b.challenges
                    .insert(nonce, now.after(Duration::from_secs(2)));
                let contact = self.cfg.me();
                self.send((me.id, me.addr), Body::Challenge { nonce, contact });
            }
            Body::Challenge { nonce, contact } => {
                if matches!(self.state, State::Joining { .. }) && contact.id == env.from {
                    let body = Body::Join {
                        nonce,
                        role: self.cfg.role,
                        me: self.cfg.me(),
                    };
                    self.send((contact.id, contact.addr), body);
                } else {
                    self.stats.dropped_unexpected += 1;
                }
            }
            Body::NoContact { last } => {
                if !from_ha || !matches!(self.state, State::Joining { .. }) {
                    self.stats.dropped_unexpected += 1;
                    return;
                }
                self.seen = self.seen.max(last);
                if self.cfg.role == Role::Backup {
                    // No live contact: found a view of one and register.
                    let view = View {
                        epoch: Epoch {
                            view: self.seen.view.saturating_add(1),
                            by: self.cfg.id,
                        },
                        backups: vec![self.cfg.me()],
                    };
                    tracing::debug!(id = self.cfg.id, epoch = %view.epoch, "founding a view");
                    self.state = State::Backup(Box::new(BackupState::new(view.clone(), now)));
                    self.apply_view(now, view);
                    self.events.push_back(Event::Joined { epoch: self.epoch });
                    self.poll(now);
                }
            }
            Body::Join { nonce, role, me } => self.on_join(now, env.from, nonce, role, me),
            Body::Refused { .. } => {
                if let State::Joining { next } = &mut self.state {
                    *next = (*next).max(now.after(self.cfg.join_retry));
                }
            }
            Body::Welcome { view, snodes } => {
                self.on_welcome(now, env.from, env.epoch, view, snodes)
            }
            Body::Prepare { view } => {
                let me = self.cfg.id;
                let Some(b) = self.backup() else {
                    self.stats.dropped_unexpected += 1;
                    return;
                };
                let floor = b.view.epoch.max(b.promised);
                if view.epoch > floor && view.has(me) && view.epoch.by == env.from {
                    b.promised = view.epoch;
                    self.send((env.from, src), Body::PrepareOk { epoch: view.epoch });
                } else if !b.view.has(env.from) && env.epoch < b.view.epoch {
                    // The coordinator is not in this newer view: it was considered failed.
                    self.stats.dropped_stale += 1;
                    self.send((env.from, src), Body::Rejoin);
                } else {
                    self.stats.dropped_stale += 1;
                    self.send(
                        (env.from, src),
                        Body::PrepareNack {
                            epoch: view.epoch,
                            seen: floor,
                        },
                    );
                }
            }
            Body::PrepareOk { epoch } => {
                let mut done = false;
                if let Some(b) = self.backup() {
                    if let Some(t) = &mut b.txn {
                        if t.proposed.epoch == epoch {
                            t.waiting.remove(&env.from);
                            done = t.waiting.is_empty();
                        }
                    }
                }
                if done {
                    self.finish_txn(now);
                }
            }
            Body::PrepareNack { epoch, seen } => {
                self.seen = self.seen.max(seen);
                let backoff = self.jitter(self.cfg.prepare_timeout);
                if let Some(b) = self.backup() {
                    if b.txn.as_ref().map(|t| t.proposed.epoch) == Some(epoch) {
                        // Someone else coordinates a newer view: retry on top of it later.
                        let t = b.txn.take().expect("checked");
                        for j in t.joiners {
                            if !b.pending_joins.iter().any(|x| x.id == j.id) {
                                b.pending_joins.push(j);
                            }
                        }
                        b.txn_not_before = now.after(backoff);
                    }
                }
            }
            Body::Commit { view, snodes } => self.on_commit(now, env.from, src, view, snodes),
            Body::CommitOk { epoch } => {
                if let Some(b) = self.backup() {
                    if b.view.epoch == epoch {
                        b.commit_unacked.remove(&env.from);
                    }
                }
            }
            Body::Snodes { snodes } => {
                let Some(b) = self.backup() else { return };
                let from_contact = b.view.contact().map(|c| c.id) == Some(env.from);
                if from_contact && env.epoch >= b.view.epoch {
                    b.snodes = snodes.into_iter().map(|m| (m.id, (m, now))).collect();
                } else {
                    self.stats.dropped_stale += 1;
                }
            }
            Body::Ping { contact } => self.on_ping(now, env.from, env.epoch, env.fence, contact),
            Body::Pong { me, load } => {
                let contact = self.status() == Status::Contact;
                let max = self.cfg.max_snodes;
                if contact && me.id == env.from {
                    if self.loads.len() >= MAX_LOADS && !self.loads.contains_key(&me.id) {
                        // Full: the reports no longer fresh go (a departed member's, a
                        // restarted node's under its old id), so that churn cannot keep a new
                        // member's load out for good.
                        let fresh = self.cfg.snode_dead;
                        self.loads.retain(|_, (_, at)| now.since(*at) < fresh);
                    }
                    if self.loads.len() < MAX_LOADS || self.loads.contains_key(&me.id) {
                        self.loads.insert(me.id, (load, now));
                    }
                }
                let Some(b) = self.backup() else { return };
                if !contact || me.id != env.from {
                    self.stats.dropped_unexpected += 1;
                    return;
                }
                if b.view.has(me.id) {
                    // A backup's answer: its load only.
                    return;
                }
                let new = !b.snodes.contains_key(&me.id);
                if new && b.snodes.len() >= max {
                    return;
                }
                b.snodes.insert(me.id, (me, now));
                if new {
                    self.events.push_back(Event::SnodesChanged);
                    self.broadcast_snodes();
                }
            }
            Body::RegisterReply {
                ok,
                holder,
                lease_left_us,
            } => {
                if from_ha {
                    self.on_register_reply(now, ok, holder, lease_left_us);
                } else {
                    self.stats.dropped_unexpected += 1;
                }
            }
            Body::Register { .. } => self.stats.dropped_unexpected += 1,
        }
    }

    fn on_heartbeat(&mut self, from: NodeId, epoch: Epoch, src: SocketAddr, target: NodeId) {
        if target != self.cfg.id {
            // For a previous life of this address: let the sender suspect it.
            self.stats.dropped_unexpected += 1;
            return;
        }
        let me = self.cfg.id;
        let reply = match &self.state {
            State::Backup(b) if b.view.has(from) => {
                if epoch < b.view.epoch && b.view.has(me) {
                    Some(Body::Commit {
                        view: b.view.clone(),
                        snodes: b.snode_list(),
                    })
                } else {
                    Some(Body::HeartbeatOk)
                }
            }
            // The sender knows a newer view than this node: answer, it will catch us up.
            State::Backup(b) if epoch > b.view.epoch => Some(Body::HeartbeatOk),
            // Seed §2.3.1: "we consider you to have failed, please join again".
            _ => Some(Body::Rejoin),
        };
        if let Some(Body::Commit { view, snodes }) = reply {
            self.send((from, src), Body::HeartbeatOk);
            self.send((from, src), Body::Commit { view, snodes });
        } else if let Some(r) = reply {
            self.send((from, src), r);
        }
    }

    fn on_join(&mut self, now: Time, from: NodeId, nonce: u64, role: Role, me: MemberInfo) {
        let contact = self.status() == Status::Contact;
        let max_pending = self.cfg.max_pending_joins;
        let max_snodes = self.cfg.max_snodes;
        let Some(b) = self.backup() else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        if !contact || me.id != from || b.challenges.remove(&nonce).is_none() {
            // A replayed or forged join carries no live challenge of ours.
            self.stats.joins_refused += 1;
            return;
        }
        match role {
            Role::Backup => {
                // Whether it fits is decided by the commit, which first leaves out backups
                // that no longer answer (seed §2.3.1: failed backups are found at a join).
                if b.pending_joins.len() >= max_pending {
                    self.stats.joins_refused += 1;
                    self.send(
                        (me.id, me.addr),
                        Body::Refused {
                            reason: "backups full".into(),
                        },
                    );
                    return;
                }
                if !b.pending_joins.iter().any(|j| j.id == me.id) {
                    b.pending_joins.push(me);
                }
                self.poll(now);
            }
            Role::Snode => {
                if !b.snodes.contains_key(&me.id) && b.snodes.len() >= max_snodes {
                    self.stats.joins_refused += 1;
                    self.send(
                        (me.id, me.addr),
                        Body::Refused {
                            reason: "snodes full".into(),
                        },
                    );
                    return;
                }
                b.snodes.insert(me.id, (me, now));
                let view = b.view.clone();
                self.send(
                    (me.id, me.addr),
                    Body::Welcome {
                        view,
                        snodes: Vec::new(),
                    },
                );
                self.events.push_back(Event::SnodesChanged);
                self.broadcast_snodes();
            }
        }
    }

    fn on_welcome(
        &mut self,
        now: Time,
        from: NodeId,
        epoch: Epoch,
        view: View,
        snodes: Vec<MemberInfo>,
    ) {
        if !matches!(self.state, State::Joining { .. })
            || view.contact().map(|c| c.id) != Some(from)
        {
            self.stats.dropped_unexpected += 1;
            return;
        }
        match self.cfg.role {
            Role::Backup => {
                if !view.has(self.cfg.id) {
                    self.stats.dropped_unexpected += 1;
                    return;
                }
                let mut b = BackupState::new(view.clone(), now);
                b.snodes = snodes.into_iter().map(|m| (m.id, (m, now))).collect();
                self.state = State::Backup(Box::new(b));
                self.apply_view(now, view);
            }
            Role::Snode => {
                let contact = *view.contact().expect("checked");
                self.epoch = epoch;
                self.state = State::Snode {
                    contact,
                    last_heard: now,
                };
            }
        }
        self.events.push_back(Event::Joined { epoch: self.epoch });
    }

    fn on_commit(
        &mut self,
        now: Time,
        from: NodeId,
        src: SocketAddr,
        view: View,
        snodes: Vec<MemberInfo>,
    ) {
        let me = self.cfg.id;
        let current = match &self.state {
            State::Backup(b) => b.view.epoch,
            _ => {
                self.stats.dropped_unexpected += 1;
                return;
            }
        };
        if view.epoch < current {
            self.stats.dropped_stale += 1;
            return;
        }
        if view.epoch == current {
            self.send((from, src), Body::CommitOk { epoch: view.epoch });
            return;
        }
        if !view.has(me) {
            // Removed from a newer view: this node was considered failed.
            self.rejoin(now, "removed from the view");
            return;
        }
        let epoch = view.epoch;
        let from_contact = view.contact().map(|c| c.id) == Some(from) || view.epoch.by == from;
        if let Some(b) = self.backup() {
            if from_contact || b.snodes.is_empty() {
                b.snodes = snodes.into_iter().map(|m| (m.id, (m, now))).collect();
            }
        }
        self.apply_view(now, view);
        self.send((from, src), Body::CommitOk { epoch });
    }

    fn on_ping(
        &mut self,
        now: Time,
        from: NodeId,
        epoch: Epoch,
        fence: Epoch,
        contact: MemberInfo,
    ) {
        if contact.id != from {
            self.stats.dropped_unexpected += 1;
            return;
        }
        match &mut self.state {
            State::Snode {
                contact: c,
                last_heard,
            } => {
                if c.id != from && (fence, epoch) < (self.fence, self.epoch) {
                    // An older contact than the one this snode follows.
                    self.stats.dropped_stale += 1;
                    return;
                }
                *last_heard = now;
                let changed = c.id != from;
                *c = contact;
                self.epoch = self.epoch.max(epoch);
                if changed {
                    self.events.push_back(Event::ContactChanged { contact });
                }
            }
            State::Joining { .. } if self.cfg.role == Role::Snode => {
                // The contact knows this snode already (a new contact announcing itself).
                self.epoch = self.epoch.max(epoch);
                self.state = State::Snode {
                    contact,
                    last_heard: now,
                };
                self.events.push_back(Event::ContactChanged { contact });
            }
            State::Backup(b) if b.view.contact().map(|c| c.id) == Some(from) => {}
            _ => {
                self.stats.dropped_unexpected += 1;
                return;
            }
        }
        let me = self.cfg.me();
        let load = self.load;
        self.send((contact.id, contact.addr), Body::Pong { me, load });
    }

    fn on_register_reply(
        &mut self,
        now: Time,
        ok: bool,
        holder: Option<(NodeId, Epoch, Epoch)>,
        lease_left_us: u64,
    ) {
        let me = self.cfg.id;
        if self.status() != Status::Contact {
            return;
        }
        let my_epoch = self.epoch;
        let fence = holder.map(|h| h.2).unwrap_or_default();
        if fence > self.fence {
            self.fence = fence;
        }
        if ok {
            let became = {
                let Some(b) = self.backup() else { return };
                let became = !b.registered;
                b.registered = true;
                b.reg_lapse = None;
                became
            };
            if became {
                self.stats.became_contact += 1;
                let fence = self.fence;
                tracing::debug!(id = me, %fence, "holds the DS address");
                self.events.push_back(Event::BecameContact { fence });
                // Tell the snodes (and so the fence) at once.
                if let Some(b) = self.backup() {
                    b.ping_next = now;
                }
                self.poll(now);
            }
            return;
        }
        let Some((hid, hepoch, _)) = holder else {
            return;
        };
        let lapse = Duration::from_micros(lease_left_us);
        tracing::debug!(id = me, ok, ?holder, lease_left_us, epoch = %my_epoch, "registration refused");
        // The holder is known to be alive when its lease still runs past the time it was
        // last reported to lapse: only a refresh from the holder extends it.
        let alive = match self.backup() {
            Some(b) => !lapse.is_zero() && b.reg_lapse.is_some_and(|(h, t)| h == hid && now >= t),
            None => false,
        };
        if hid != me && !lapse.is_zero() && (hepoch > my_epoch || alive) {
            // A live contact holds the DS address: this node was deposed, or took over on a
            // false suspicion. The home agent decides: join the holder.
            self.rejoin(now, "a live contact holds the registration");
        } else if hepoch >= my_epoch {
            // Only a lapsed holder is newer: commit a newer view, then register.
            self.seen = self.seen.max(hepoch);
            if let Some(b) = self.backup() {
                b.registered = false;
                b.need_bump = true;
                b.txn_not_before = now;
            }
            self.poll(now);
        } else if let Some(b) = self.backup() {
            // An older holder whose lease still runs: try again as it lapses.
            b.registered = false;
            let at = now.after(lapse + Duration::from_micros(500));
            b.reg_next = at;
            b.reg_lapse = Some((hid, at));
        }
    }
}
