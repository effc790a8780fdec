//! Deterministic simulation: members and the home agent's registry under a seeded network
//! that drops, duplicates, delays, reorders and partitions, with crashes and restarts.
//!
//! Everything random comes from one seed (the network, the faults, each node's identity and
//! nonces), time is simulated, and every collection iterated is ordered, so a seed replays
//! exactly: [`SimReport::trace_hash`] is the same on every run of the same seed and
//! [`SimConfig::trace`] prints the run. Invariants are checked after every step:
//!
//! 1. the registry never accepts an older epoch than it accepted before, and no epoch is held
//!    by two nodes (at most one contact per epoch at the home agent);
//! 2. a node's fence never decreases, and no node admits a handoff fenced older than its own
//!    fence (a deposed contact cannot act);
//! 3. once quiet (no faults for [`SimConfig::quiet`]): the holder is a live contact that knows it
//!    holds the registration; the live backups agree on the view, which lists exactly the live
//!    backup-capable nodes; every live snode is in the contact's list and follows the contact;
//!    every live node knows the current fence.

use crate::member::{Config, Member, Role, Status};
use crate::registry::{Registry, RegistryConfig};
use crate::wire::Key;
use crate::{Epoch, NodeId, Time};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Backup-capable nodes.
    pub backups: usize,
    /// Snodes.
    pub snodes: usize,
    /// Simulated time per run.
    pub duration: Duration,
    /// Faults stop this long before the end; the quiet-state invariants are checked at the end.
    pub quiet: Duration,
    /// Inject faults (drops, duplicates, delays, partitions, crashes).
    pub faults: bool,
    /// Probability that a datagram is lost.
    pub drop: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Largest ordinary one-way delay (uniform from 50 µs; so datagrams reorder).
    pub max_delay: Duration,
    /// Mean time between fault events (crash, partition, heal).
    pub fault_every: Duration,
    /// Record a human-readable trace.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            backups: 4,
            snodes: 3,
            duration: Duration::from_secs(60),
            quiet: Duration::from_secs(15),
            faults: true,
            drop: 0.05,
            duplicate: 0.02,
            max_delay: Duration::from_millis(3),
            fault_every: Duration::from_secs(2),
            trace: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Invariant violations (empty: passed).
    pub violations: Vec<String>,
    /// FNV-1a over every delivered datagram and event: equal for equal seeds.
    pub trace_hash: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Datagrams lost to drops or partitions.
    pub lost: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Holder changes at the home agent.
    pub handovers: u64,
    /// Handoffs the fence refused (a node acting for a deposed contact).
    pub fenced_handoffs: u64,
    /// Dead members reported to the home agent.
    pub dead_reported: u64,
    /// The trace, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: Time,
    seq: u64,
    to: usize,
    from: usize,
    bytes: Vec<u8>,
}

struct Node {
    role: Role,
    addr: SocketAddr,
    member: Option<Member>,
    down_until: Time,
    last_fence: Epoch,
}

/// The index of the home agent in `side`.
const HA: usize = usize::MAX;

/// One simulation run.
pub struct Sim {
    cfg: SimConfig,
    seed: u64,
    rng: StdRng,
    now: Time,
    key: Key,
    nodes: Vec<Node>,
    registry: Registry,
    ha_addr: SocketAddr,
    net: BinaryHeap<std::cmp::Reverse<Pending>>,
    seq: u64,
    /// Partition: each node's side; the home agent's side (`None`: reaches both).
    side: Vec<u8>,
    ha_side: Option<u8>,
    next_fault: Time,
    hash: u64,
    report: SimReport,
    epochs_held: BTreeMap<Epoch, NodeId>,
    last_accepted: Epoch,
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl Sim {
    /// A run for `seed`.
    pub fn new(seed: u64, cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let key = Key::new(b"simulated cluster secret");
        let ha_addr = SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xa),
            7100,
            0,
            0,
        ));
        let n = cfg.backups + cfg.snodes;
        let nodes = (0..n)
            .map(|i| Node {
                role: if i < cfg.backups {
                    Role::Backup
                } else {
                    Role::Snode
                },
                addr: SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16 + 1),
                    7100,
                    0,
                    0,
                )),
                member: None,
                down_until: Time(0),
                last_fence: Epoch::default(),
            })
            .collect();
        let registry = Registry::new(key.clone(), RegistryConfig::new(rng.gen()));
        let first_fault = Time(1_000_000 + rng.gen_range(0..1_000_000));
        let mut sim = Sim {
            report: SimReport {
                seed,
                violations: Vec::new(),
                trace_hash: 0,
                delivered: 0,
                lost: 0,
                crashes: 0,
                partitions: 0,
                handovers: 0,
                fenced_handoffs: 0,
                dead_reported: 0,
                trace: Vec::new(),
            },
            cfg,
            seed,
            rng,
            now: Time(0),
            key,
            nodes,
            registry,
            ha_addr,
            net: BinaryHeap::new(),
            seq: 0,
            side: vec![0; n],
            ha_side: None,
            next_fault: first_fault,
            hash: 0xcbf2_9ce4_8422_2325,
            epochs_held: BTreeMap::new(),
            last_accepted: Epoch::default(),
        };
        // Nodes start a little apart, as processes do.
        for i in 0..n {
            let at = Time(sim.rng.gen_range(0..300_000));
            sim.nodes[i].down_until = at;
        }
        sim
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = format!("{:>10.3} ms  {}", self.now.0 as f64 / 1000.0, line());
            self.report.trace.push(l);
        }
    }

    fn start_node(&mut self, i: usize) {
        // Never `wire::ANY`, which addresses the registry.
        let id: NodeId = self.rng.gen::<u64>().max(1);
        let seed: u64 = self.rng.gen();
        let (addr, role) = (self.nodes[i].addr, self.nodes[i].role);
        let coa = match addr {
            SocketAddr::V6(a) => *a.ip(),
            SocketAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
        };
        let cfg = Config::new(id, addr, coa, role, self.ha_addr);
        self.nodes[i].member = Some(Member::new(cfg, self.key.clone(), seed, self.now));
        self.nodes[i].last_fence = Epoch::default();
        self.trace(|| format!("node {i} starts as {id:016x} ({role:?})"));
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        if addr == self.ha_addr {
            return Some(HA);
        }
        self.nodes.iter().position(|n| n.addr == addr)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        let side = |i: usize| {
            if i == HA {
                self.ha_side
            } else {
                Some(self.side[i])
            }
        };
        match (side(a), side(b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
    }

    fn faulty(&self) -> bool {
        self.cfg.faults && self.now < Time(0).after(self.cfg.duration - self.cfg.quiet)
    }

    fn enqueue(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        let Some(to) = self.index_of(to) else {
            self.report.lost += 1;
            return;
        };
        let faulty = self.faulty();
        let copies = if faulty && self.rng.gen_bool(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if faulty && self.rng.gen_bool(self.cfg.drop) {
                self.report.lost += 1;
                continue;
            }
            let max = self.cfg.max_delay.as_micros() as u64;
            let mut d = self.rng.gen_range(50..=max.max(51));
            if faulty && self.rng.gen_bool(0.01) {
                d += self.rng.gen_range(0..100_000);
            }
            self.seq += 1;
            self.net.push(std::cmp::Reverse(Pending {
                at: Time(self.now.0 + d),
                seq: self.seq,
                to,
                from,
                bytes: bytes.clone(),
            }));
        }
    }

    fn flush(&mut self, i: usize) {
        loop {
            let out = if i == HA {
                self.registry.poll_transmit()
            } else {
                match self.nodes[i].member.as_mut() {
                    Some(m) => m.poll_transmit(),
                    None => None,
                }
            };
            let Some((to, bytes)) = out else { break };
            self.enqueue(i, to, bytes);
        }
        if i == HA {
            while let Some(ev) = self.registry.poll_event() {
                match ev {
                    crate::RegistryEvent::Bound { holder, epoch } => {
                        self.report.handovers += 1;
                        self.hash = fnv(self.hash, &epoch.view.to_le_bytes());
                        self.trace(|| format!("HA binds to {:016x} at {epoch}", holder.id));
                    }
                    crate::RegistryEvent::Dead { coa } => {
                        self.report.dead_reported += 1;
                        self.hash = fnv(self.hash, &coa.octets());
                        self.trace(|| format!("HA: {coa} reported dead"));
                    }
                }
            }
        } else if let Some(m) = self.nodes[i].member.as_mut() {
            let mut evs = Vec::new();
            while let Some(ev) = m.poll_event() {
                evs.push(ev);
            }
            for ev in evs {
                let s = format!("{ev:?}");
                self.hash = fnv(self.hash, s.as_bytes());
                self.trace(|| format!("node {i}: {s}"));
            }
        }
    }

    fn fault(&mut self) {
        let n = self.nodes.len();
        match self.rng.gen_range(0..10) {
            0..=3 => {
                // Crash a node for 0.2–4 s; it restarts as a new process.
                let i = self.rng.gen_range(0..n);
                if self.nodes[i].member.is_some() {
                    self.nodes[i].member = None;
                    self.nodes[i].down_until = self.now.after(Duration::from_micros(
                        self.rng.gen_range(200_000..4_000_000),
                    ));
                    self.report.crashes += 1;
                    self.trace(|| format!("node {i} crashes"));
                }
            }
            4..=6 => {
                // Split the nodes in two; the home agent on one side or reachable by both.
                for s in self.side.iter_mut() {
                    *s = 0;
                }
                for i in 0..n {
                    self.side[i] = self.rng.gen_range(0..2);
                }
                self.ha_side = match self.rng.gen_range(0..3) {
                    0 => None,
                    x => Some(x - 1),
                };
                self.report.partitions += 1;
                let (side, ha) = (self.side.clone(), self.ha_side);
                self.trace(|| format!("partition {side:?}, home agent {ha:?}"));
            }
            _ => {
                for s in self.side.iter_mut() {
                    *s = 0;
                }
                self.ha_side = None;
                self.trace(|| "heal".to_string());
            }
        }
    }

    fn violation(&mut self, what: String) {
        if self.report.violations.len() < 20 {
            let at = self.now.0 as f64 / 1e6;
            self.report.violations.push(format!("t={at:.6}s: {what}"));
        }
    }

    /// Invariants that hold at every step.
    fn check_always(&mut self) {
        if let Some(h) = self.registry.holder().copied() {
            if h.epoch < self.last_accepted {
                self.violation(format!(
                    "registry holds {} after accepting {}",
                    h.epoch, self.last_accepted
                ));
            }
            self.last_accepted = self.last_accepted.max(h.epoch);
            match self.epochs_held.get(&h.epoch) {
                Some(&id) if id != h.info.id => {
                    let e = h.epoch;
                    self.violation(format!(
                        "epoch {e} held by {id:016x} and by {:016x}",
                        h.info.id
                    ));
                }
                _ => {
                    self.epochs_held.insert(h.epoch, h.info.id);
                }
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(m) = &self.nodes[i].member {
                let f = m.fence();
                if f < self.nodes[i].last_fence {
                    let last = self.nodes[i].last_fence;
                    self.violation(format!("node {i}: fence went back from {last} to {f}"));
                }
                self.nodes[i].last_fence = f;
            }
        }
    }

    /// The contact tries a handoff to one of its snodes; when that snode is dead or cut off,
    /// the handoff fails and the contact drops it (seed §2.3.2) — a live one must join again.
    fn contact_hands_off(&mut self) {
        let Some(ci) = (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .member
                .as_ref()
                .is_some_and(|m| m.status() == Status::Contact)
        }) else {
            return;
        };
        let snodes = self.nodes[ci]
            .member
            .as_ref()
            .map(|m| m.snodes())
            .unwrap_or_default();
        if snodes.is_empty() {
            return;
        }
        let target = snodes[self.rng.gen_range(0..snodes.len())];
        let ti = self
            .nodes
            .iter()
            .position(|n| n.member.as_ref().map(|m| m.id()) == Some(target.id));
        let fails = match ti {
            None => true,
            Some(t) => !self.reachable(ci, t),
        };
        if fails {
            let now = self.now;
            if let Some(m) = self.nodes[ci].member.as_mut() {
                m.report_unreachable(target.id, now);
            }
            self.trace(|| format!("node {ci}: handoff to snode {:016x} failed", target.id));
            self.flush(ci);
        }
    }

    /// A handoff attempt between two random live nodes: the acceptor must refuse a donor whose
    /// fence is older than its own.
    fn try_handoff(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member.is_some())
            .collect();
        if live.len() < 2 {
            return;
        }
        let a = live[self.rng.gen_range(0..live.len())];
        let b = live[self.rng.gen_range(0..live.len())];
        if a == b || !self.reachable(a, b) {
            return;
        }
        let (Some(ma), Some(mb)) = (&self.nodes[a].member, &self.nodes[b].member) else {
            return;
        };
        let (fa, fb) = (ma.fence(), mb.fence());
        let admitted = mb.admits(fa);
        if admitted && fa < fb {
            self.violation(format!(
                "node {b} (fence {fb}) admitted a handoff from node {a} fenced {fa}"
            ));
        }
        if !admitted {
            self.report.fenced_handoffs += 1;
        }
    }

    /// Invariants of a quiet system (checked at the end of a run).
    fn check_quiet(&mut self) {
        let Some(h) = self.registry.holder().copied() else {
            self.violation("quiet, but nobody holds the registration".into());
            return;
        };
        let holder = self
            .nodes
            .iter()
            .position(|n| n.member.as_ref().map(|m| m.id()) == Some(h.info.id));
        let Some(hi) = holder else {
            self.violation(format!("quiet, but the holder {:016x} is dead", h.info.id));
            return;
        };
        let contact = self.nodes[hi].member.as_ref().expect("live");
        if contact.status() != Status::Contact || !contact.holds_registration() {
            let st = contact.status();
            self.violation(format!(
                "quiet, but the holder (node {hi}) is {st:?} and registered={}",
                contact.holds_registration()
            ));
            return;
        }
        let view = contact.view().cloned().expect("a contact has a view");
        let snodes = contact.snodes();
        let fence = h.since;
        let mut bad = Vec::new();
        let mut live_backups = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(m) = &n.member else { continue };
            if m.fence() != fence {
                bad.push(format!("node {i} knows fence {} not {fence}", m.fence()));
            }
            match n.role {
                Role::Backup => {
                    live_backups.push(m.id());
                    if m.view() != Some(&view) {
                        bad.push(format!(
                            "node {i} ({:?}) has view {:?}, the contact {:?}",
                            m.status(),
                            m.view().map(|v| v.epoch),
                            view.epoch
                        ));
                    }
                }
                Role::Snode => {
                    if !snodes.iter().any(|s| s.id == m.id()) {
                        bad.push(format!("snode {i} unknown to the contact"));
                    }
                    if m.status() != Status::Snode || m.contact().map(|c| c.id) != Some(h.info.id) {
                        bad.push(format!("snode {i} is {:?}, not following", m.status()));
                    }
                }
            }
        }
        let mut listed: Vec<NodeId> = view.backups.iter().map(|m| m.id).collect();
        listed.sort_unstable();
        live_backups.sort_unstable();
        if listed != live_backups {
            bad.push(format!(
                "the view lists {} backups, {} live",
                listed.len(),
                live_backups.len()
            ));
        }
        for b in bad {
            self.violation(format!("quiet: {b}"));
        }
    }

    /// Run to the end.
    pub fn run(mut self) -> SimReport {
        let end = Time(0).after(self.cfg.duration);
        let mut next_handoff = Time(500_000);
        while self.now < end {
            // The next thing to happen.
            let mut t = end;
            if let Some(p) = self.net.peek() {
                t = t.min(p.0.at);
            }
            for n in &self.nodes {
                match &n.member {
                    Some(m) => {
                        if let Some(x) = m.poll_timeout() {
                            t = t.min(x);
                        }
                    }
                    None => t = t.min(n.down_until),
                }
            }
            if self.faulty() {
                t = t.min(self.next_fault);
            }
            t = t.min(next_handoff);
            self.now = self.now.max(t);
            if self.now >= end {
                break;
            }
            // Faults.
            if self.faulty() && self.now >= self.next_fault {
                self.fault();
                let mean = self.cfg.fault_every.as_micros() as u64;
                self.next_fault = self.now.after(Duration::from_micros(
                    self.rng.gen_range(mean / 4..mean * 7 / 4 + 1),
                ));
            }
            if !self.faulty() && (self.side.iter().any(|s| *s != 0) || self.ha_side.is_some()) {
                for s in self.side.iter_mut() {
                    *s = 0;
                }
                self.ha_side = None;
                self.trace(|| "heal (quiet period)".into());
            }
            // Restarts.
            for i in 0..self.nodes.len() {
                if self.nodes[i].member.is_none() && self.now >= self.nodes[i].down_until {
                    self.start_node(i);
                }
            }
            // Deliveries due now.
            while let Some(p) = self.net.peek() {
                if p.0.at > self.now {
                    break;
                }
                let p = self.net.pop().expect("peeked").0;
                if !self.reachable(p.from, p.to) {
                    self.report.lost += 1;
                    continue;
                }
                let src = if p.from == HA {
                    self.ha_addr
                } else {
                    self.nodes[p.from].addr
                };
                if p.to == HA {
                    self.registry.handle(self.now, &p.bytes);
                } else if let Some(m) = self.nodes[p.to].member.as_mut() {
                    m.handle(self.now, src, &p.bytes);
                } else {
                    self.report.lost += 1;
                    continue;
                }
                self.report.delivered += 1;
                self.hash = fnv(self.hash, &p.bytes[..p.bytes.len().min(16)]);
                self.flush(p.to);
                self.check_always();
            }
            // Timers.
            for i in 0..self.nodes.len() {
                let due = match &self.nodes[i].member {
                    Some(m) => m.poll_timeout().is_some_and(|x| x <= self.now),
                    None => false,
                };
                if due {
                    if let Some(m) = self.nodes[i].member.as_mut() {
                        m.poll(self.now);
                    }
                    self.flush(i);
                    self.check_always();
                }
            }
            if self.now >= next_handoff {
                next_handoff = self.now.after(Duration::from_millis(100));
                self.try_handoff();
                self.contact_hands_off();
                self.check_always();
            }
        }
        self.check_quiet();
        for i in 0..self.nodes.len() {
            if let Some(m) = &self.nodes[i].member {
                let (st, stats) = (m.status(), m.stats());
                self.trace(|| format!("node {i} ends {st:?}: {stats:?}"));
            }
        }
        let rs = self.registry.stats();
        self.trace(|| format!("registry: {rs:?}"));
        self.report.trace_hash = self.hash;
        let _ = self.seed;
        self.report
    }
}

/// Run `seeds` from `first`, on `threads` threads; returns the failed reports (and how many
/// runs there were).
pub fn run_many(first: u64, seeds: u64, threads: usize, cfg: &SimConfig) -> Vec<SimReport> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= first + seeds {
                    break;
                }
                let r = Sim::new(seed, cfg.clone()).run();
                if !r.violations.is_empty() {
                    if let Ok(mut f) = failed.lock() {
                        f.push(r);
                    }
                }
            });
        }
    });
    let mut f = failed.into_inner().unwrap_or_default();
    f.sort_by_key(|r| r.seed);
    f
}
