//! The membership protocol through its public API: a short fault-injecting simulation, exact
//! replay, and the security properties (wrong key, replayed join, deposed contact).

use ds_membership::sim::{run_many, Sim, SimConfig};
use ds_membership::{Config, Key, Member, Registry, RegistryConfig, Role, Status, Time};
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn short_simulation_keeps_every_invariant() {
    // The acceptance run is `dsmsim --seeds 10000` (release build, under a minute); the suite
    // runs a slice of it.
    let failed = run_many(0, 150, 2, &SimConfig::default());
    for r in &failed {
        eprintln!("seed {}: {:?}", r.seed, r.violations);
    }
    assert!(
        failed.is_empty(),
        "{} seeds broke an invariant",
        failed.len()
    );
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig {
        trace: true,
        ..SimConfig::default()
    };
    let a = Sim::new(77, cfg.clone()).run();
    let b = Sim::new(77, cfg).run();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.trace, b.trace);
    assert!(a.crashes > 0 && a.partitions > 0, "faults were injected");
    let c = Sim::new(78, SimConfig::default()).run();
    assert_ne!(a.trace_hash, c.trace_hash);
}

/// A hand-driven cluster: the home agent's registry and members, datagrams routed at once.
struct Net {
    now: Time,
    ha: SocketAddr,
    registry: Registry,
    members: Vec<Member>,
    /// Every datagram delivered: (from, to, bytes).
    log: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Members that do not receive (stopped).
    stopped: Vec<bool>,
}

fn addr(i: u16) -> SocketAddr {
    format!("[fd00::{i}]:7100").parse().unwrap()
}

impl Net {
    fn new() -> Net {
        Net {
            now: Time(0),
            ha: addr(0xa),
            registry: Registry::new(Key::new(b"the cluster secret"), RegistryConfig::new(1)),
            members: Vec::new(),
            log: Vec::new(),
            stopped: Vec::new(),
        }
    }

    fn add(&mut self, id: u64, role: Role, key: &[u8]) -> usize {
        let a = addr(self.members.len() as u16 + 1);
        let coa = match a {
            SocketAddr::V6(v) => *v.ip(),
            _ => unreachable!(),
        };
        let cfg = Config::new(id, a, coa, role, self.ha);
        self.members
            .push(Member::new(cfg, Key::new(key), id, self.now));
        self.stopped.push(false);
        self.members.len() - 1
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.log.push((from, to, bytes.clone()));
        if to == self.ha {
            self.registry.handle(self.now, &bytes);
        } else if let Some(i) = self.members.iter().position(|m| m.config().addr == to) {
            if !self.stopped[i] {
                self.members[i].handle(self.now, from, &bytes);
            }
        }
    }

    /// Run for `d` in 1 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now.after(d);
        while self.now < end {
            self.now = self.now.after(Duration::from_millis(1));
            for i in 0..self.members.len() {
                if !self.stopped[i] {
                    self.members[i].poll(self.now);
                }
            }
            loop {
                let mut moved = false;
                for i in 0..self.members.len() {
                    if self.stopped[i] {
                        continue;
                    }
                    while let Some((to, b)) = self.members[i].poll_transmit() {
                        let from = self.members[i].config().addr;
                        self.deliver(from, to, b);
                        moved = true;
                    }
                }
                while let Some((to, b)) = self.registry.poll_transmit() {
                    let ha = self.ha;
                    self.deliver(ha, to, b);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
        }
    }

    fn holder(&self) -> Option<u64> {
        self.registry.holder().map(|h| h.info.id)
    }
}

#[test]
fn contact_failover_and_a_deposed_contact_cannot_act() {
    let mut net = Net::new();
    let key = b"the cluster secret";
    let a = net.add(10, Role::Backup, key);
    net.run(Duration::from_millis(20));
    let b = net.add(20, Role::Backup, key);
    let c = net.add(30, Role::Backup, key);
    let s = net.add(40, Role::Snode, key);
    net.run(Duration::from_millis(500));
    assert_eq!(net.holder(), Some(10));
    assert_eq!(net.members[a].status(), Status::Contact);
    assert_eq!(net.members[b].status(), Status::Backup);
    assert_eq!(net.members[s].status(), Status::Snode);
    assert_eq!(net.members[a].view().unwrap().backups.len(), 3);
    assert_eq!(net.members[a].snodes().len(), 1);
    let old_fence = net.members[a].fence();

    // Stop the contact (SIGSTOP): its successor takes over within the suspicion time plus the
    // lease.
    net.stopped[a] = true;
    let stopped_at = net.now;
    let mut took = None;
    for _ in 0..1000 {
        net.run(Duration::from_millis(1));
        if net.holder() == Some(20) {
            took = Some(net.now.since(stopped_at));
            break;
        }
    }
    let took = took.expect("the successor registers");
    assert!(took <= Duration::from_millis(300), "failover took {took:?}");
    net.run(Duration::from_millis(400));
    let fence = net.members[b].fence();
    assert!(fence > old_fence);
    for i in [b, c, s] {
        assert_eq!(
            net.members[i].fence(),
            fence,
            "member {i} learned the new fence"
        );
        assert!(
            !net.members[i].admits(old_fence),
            "member {i} refuses the deposed contact"
        );
    }
    assert_eq!(net.members[s].contact().map(|m| m.id), Some(20));

    // Resume the old contact (SIGCONT): its registration is refused, it steps down and joins
    // the new contact's view; the home agent never went back to it.
    net.stopped[a] = false;
    net.run(Duration::from_millis(600));
    assert_eq!(net.holder(), Some(20));
    assert!(net.registry.stats().refused > 0);
    assert_eq!(net.members[a].status(), Status::Backup);
    assert_eq!(net.members[a].fence(), fence);
    let view = net.members[b].view().unwrap().clone();
    assert_eq!(net.members[a].view(), Some(&view));
    assert_eq!(view.backups.last().map(|m| m.id), Some(10), "rejoined last");
}

#[test]
fn the_contact_learns_the_members_loads() {
    let mut net = Net::new();
    let key = b"the cluster secret";
    let a = net.add(10, Role::Backup, key);
    net.run(Duration::from_millis(20));
    let b = net.add(20, Role::Backup, key);
    let s = net.add(40, Role::Snode, key);
    net.run(Duration::from_millis(400));
    net.members[b].set_load(7);
    net.members[s].set_load(3);
    net.run(Duration::from_millis(700));
    let now = net.now;
    let mut loads: Vec<(u64, u32)> = net.members[a]
        .loads(now)
        .iter()
        .map(|(m, l, _)| (m.id, *l))
        .collect();
    loads.sort_unstable();
    assert_eq!(loads, vec![(20, 7), (40, 3)]);
    // The backup stays a backup (its answers carry its load only).
    assert_eq!(net.members[a].snodes().len(), 1);
}

#[test]
fn wrong_key_cannot_join_or_register() {
    let mut net = Net::new();
    let a = net.add(10, Role::Backup, b"the cluster secret");
    net.run(Duration::from_millis(50));
    let x = net.add(66, Role::Backup, b"not the cluster secret");
    net.run(Duration::from_millis(600));
    assert_eq!(net.members[x].status(), Status::Joining);
    assert_eq!(net.members[a].view().unwrap().backups.len(), 1);
    assert_eq!(net.holder(), Some(10));
    // Its hellos die at the home agent's tag check; it cannot register either.
    assert!(net.registry.stats().dropped_auth > 0);
    assert_eq!(net.registry.stats().handovers, 1);
}

#[test]
fn a_replayed_join_is_refused() {
    let mut net = Net::new();
    let key = b"the cluster secret";
    let a = net.add(10, Role::Backup, key);
    net.run(Duration::from_millis(50));
    let b = net.add(20, Role::Backup, key);
    net.run(Duration::from_millis(300));
    assert_eq!(net.members[a].view().unwrap().backups.len(), 2);
    // Find b's join (the datagram from b to a answering the challenge) and replay it, as an
    // attacker on the path would, after b has left again.
    let b_addr = net.members[b].config().addr;
    let a_addr = net.members[a].config().addr;
    let joins: Vec<Vec<u8>> = net
        .log
        .iter()
        .filter(|(f, t, _)| *f == b_addr && *t == a_addr)
        .map(|(_, _, d)| d.clone())
        .collect();
    assert!(!joins.is_empty());
    let before = net.members[a].stats();
    for d in &joins {
        let now = net.now;
        net.members[a].handle(now, b_addr, d);
    }
    let after = net.members[a].stats();
    assert_eq!(
        after.dropped_replay - before.dropped_replay,
        joins.len() as u64,
        "replays are refused by the sequence window"
    );
    // And with a new sequence number, the old nonce still does not open the door: the
    // contact's challenge was used once. (Joins are only accepted with a live challenge.)
    assert_eq!(after.joins_refused, before.joins_refused);
    assert_eq!(net.members[a].view().unwrap().backups.len(), 2);
}

/// Load reports from more ids than a contact keeps (`MAX_LOADS`: churn of restarted nodes, or
/// a key holder) cannot keep a later member's load out for good: once they are stale, they
/// make room for it.
#[test]
fn stale_load_reports_make_room_for_a_new_members() {
    use ds_membership::member::MAX_LOADS;
    use ds_membership::wire::{seal, Envelope};
    let mut net = Net::new();
    let key = b"the cluster secret";
    let a = net.add(10, Role::Backup, key);
    net.run(Duration::from_millis(400));
    assert_eq!(net.members[a].status(), Status::Contact);
    let (epoch, fence, to) = (
        net.members[a].epoch(),
        net.members[a].fence(),
        net.members[a].config().addr,
    );
    let k = Key::new(key);
    for id in 1000..1000 + MAX_LOADS as u64 {
        let me = ds_membership::MemberInfo {
            id,
            addr: addr(0x99),
            coa: "fd00::99".parse().unwrap(),
        };
        let env = Envelope {
            from: id,
            to: 10,
            seq: 1,
            epoch,
            fence,
            body: ds_membership::Body::Pong { me, load: 1 },
        };
        net.deliver(addr(0x99), to, seal(&k, &env));
    }
    // Stale a second later (`snode_dead`); then a new snode reports.
    net.run(Duration::from_millis(1500));
    let s = net.add(40, Role::Snode, key);
    net.members[s].set_load(3);
    net.run(Duration::from_millis(700));
    let now = net.now;
    let loads: Vec<(u64, u32)> = net.members[a]
        .loads(now)
        .iter()
        .map(|(m, l, _)| (m.id, *l))
        .collect();
    assert_eq!(loads, vec![(40, 3)]);
}
