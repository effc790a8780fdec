//! The membership protocol's I/O half for a node: a thread that owns a UDP socket and a
//! [`ds_membership::Member`], and publishes what it knows (a [`Snapshot`]) to the node's loop
//! and to `dsctl members`.
//!
//! Membership is control traffic: it runs beside the data path on its own thread and is read
//! through a snapshot, so a slow or hostile peer on the membership port never delays the
//! node's packets, and the node's loop never waits for membership.

use ds_membership::wire::MemberInfo;
use ds_membership::{Config, Epoch, Event, Key, Role, Status, Time};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a node takes part.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Backup (may become the contact) or snode.
    pub role: Role,
    /// The node's membership endpoint (UDP), on its kernel address.
    pub listen: SocketAddr,
    /// The home agent's membership endpoint.
    pub home_agent: SocketAddr,
    /// The node's care-of address (where the home agent tunnels the DS address to it).
    pub coa: Ipv6Addr,
    /// The cluster secret's bytes (the HMAC key is derived from them).
    pub secret: Vec<u8>,
}

/// What the node knows of the membership, as of the last datagram or timer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// This node's identity (random per process).
    pub id: String,
    /// Backup or snode.
    pub role: &'static str,
    /// Joining, backup, contact or snode.
    pub status: Status,
    /// Whether the home agent accepted this node's registration: it receives new clients.
    pub holds_registration: bool,
    /// The epoch this node speaks with.
    pub epoch: String,
    /// The newest fence known (handoffs from older fences are refused).
    pub fence: String,
    /// The contact node.
    pub contact: Option<Member>,
    /// The backups in rank order (the contact first), for a backup.
    pub backups: Vec<Member>,
    /// The snodes the contact knows, for a backup.
    pub snodes: Vec<Member>,
    /// Counters.
    pub stats: ds_membership::member::MemberStats,
    /// The members' reported loads (connections served, report time in µs), on the contact.
    pub loads: Vec<(SocketAddr, u32, u64)>,
}

/// One member as `dsctl members` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    /// Its identity.
    pub id: String,
    /// Its membership endpoint (its handoff control listener has the same address and port,
    /// over TCP).
    pub addr: SocketAddr,
    /// Its care-of address.
    pub coa: Ipv6Addr,
}

impl From<&MemberInfo> for Member {
    fn from(m: &MemberInfo) -> Self {
        Member {
            id: format!("{:016x}", m.id),
            addr: m.addr,
            coa: m.coa,
        }
    }
}

fn snapshot(m: &ds_membership::Member, now: Time) -> Snapshot {
    Snapshot {
        id: format!("{:016x}", m.id()),
        role: match m.config().role {
            Role::Backup => "backup",
            Role::Snode => "snode",
        },
        status: m.status(),
        holds_registration: m.holds_registration(),
        epoch: m.epoch().to_string(),
        fence: m.fence().to_string(),
        contact: m.contact().as_ref().map(Member::from),
        backups: m
            .view()
            .map(|v| v.backups.iter().map(Member::from).collect())
            .unwrap_or_default(),
        snodes: m.snodes().iter().map(Member::from).collect(),
        stats: m.stats(),
        loads: m
            .loads(now)
            .iter()
            .map(|(x, l, at)| (x.addr, *l, at.0))
            .collect(),
    }
}

/// What a membership thread publishes for the node (shared with it).
#[derive(Clone)]
pub(crate) struct Published {
    shared: Arc<Mutex<Snapshot>>,
    /// The fence alone, read by the node's loop every round (cheap, no clone of the view).
    fence: Arc<Mutex<Epoch>>,
    /// Raised whenever the set of known members changes.
    version: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Members the node's handoffs could not reach, for the thread to act on.
    unreachable: Arc<Mutex<Vec<SocketAddr>>>,
    /// This node's load, set by its loop.
    pub(crate) load: Arc<std::sync::atomic::AtomicU32>,
}

impl Published {
    pub(crate) fn new(first: Snapshot, fence: Epoch) -> Self {
        Published {
            shared: Arc::new(Mutex::new(first)),
            fence: Arc::new(Mutex::new(fence)),
            version: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            unreachable: Arc::new(Mutex::new(Vec::new())),
            load: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        }
    }

    pub(crate) fn take_unreachable(&self) -> Vec<SocketAddr> {
        match self.unreachable.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => Vec::new(),
        }
    }

    /// Publish a new state; `members` (sorted) raises the version when it changed since
    /// `known`.
    pub(crate) fn publish(
        &self,
        snap: Snapshot,
        fence: Epoch,
        members: Vec<SocketAddr>,
        known: &mut Vec<SocketAddr>,
    ) {
        if members != *known {
            *known = members;
            self.version.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut s) = self.shared.lock() {
            *s = snap;
        }
        if let Ok(mut f) = self.fence.lock() {
            *f = fence;
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The running membership thread.
pub struct MembershipAgent {
    listen: SocketAddr,
    published: Published,
    thread: Option<JoinHandle<()>>,
}

/// A member's identity: random, never [`ds_membership::wire::ANY`] (which addresses the
/// registry).
fn random_u64() -> u64 {
    random_any_u64().max(1)
}

fn random_any_u64() -> u64 {
    let mut b = [0u8; 8];
    // The OS's random source; the process id and time only if it fails, which on Linux it
    // does not once booted.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(b)
}

impl MembershipAgent {
    /// Bind the membership socket and start joining.
    pub fn start(cfg: MembershipConfig) -> std::io::Result<MembershipAgent> {
        let sock = UdpSocket::bind(cfg.listen)?;
        let id = random_u64();
        let mcfg = Config::new(id, cfg.listen, cfg.coa, cfg.role, cfg.home_agent);
        let origin = Instant::now();
        let member = ds_membership::Member::new(mcfg, Key::new(&cfg.secret), random_u64(), Time(0));
        let published = Published::new(snapshot(&member, Time(0)), member.fence());
        let p = published.clone();
        tracing::info!(id = %format!("{id:016x}"), listen = %cfg.listen, role = ?cfg.role, "membership: joining");
        let thread = std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || run(sock, member, origin, p))?;
        Ok(MembershipAgent {
            listen: cfg.listen,
            published,
            thread: Some(thread),
        })
    }

    /// Start the etcd backend of the contact election instead (`endpoints`: etcd's client
    /// URLs): see [`crate::membership_etcd`].
    #[cfg(feature = "etcd")]
    pub fn start_etcd(
        cfg: MembershipConfig,
        endpoints: Vec<String>,
    ) -> std::io::Result<MembershipAgent> {
        let sock = UdpSocket::bind(cfg.listen)?;
        let id = random_u64();
        let first = crate::membership_etcd::initial_snapshot(id, &cfg);
        let published = Published::new(first, Epoch::default());
        let p = published.clone();
        let listen = cfg.listen;
        tracing::info!(id = %format!("{id:016x}"), %listen, role = ?cfg.role, ?endpoints, "membership (etcd): joining");
        let thread = std::thread::Builder::new()
            .name("membership-etcd".into())
            .spawn(move || crate::membership_etcd::run(id, cfg, endpoints, sock, p))?;
        Ok(MembershipAgent {
            listen,
            published,
            thread: Some(thread),
        })
    }

    /// What the node knows now.
    pub fn snapshot(&self) -> Snapshot {
        match self.published.shared.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A handoff to the member at `addr` failed: the contact drops it if it is an snode and
    /// tells the backups (seed §2.3.2); it joins again if it is alive.
    pub fn report_unreachable(&self, addr: SocketAddr) {
        if let Ok(mut v) = self.published.unreachable.lock() {
            if v.len() < 64 && !v.contains(&addr) {
                v.push(addr);
            }
        }
    }

    /// This node's load (connections it serves): reported to the contact for the
    /// least-connections policy.
    pub fn set_load(&self, load: u32) {
        self.published.load.store(load, Ordering::Relaxed);
    }

    /// The loads the members reported (known on the contact): for
    /// `dserver::Node::set_peer_loads`.
    pub fn peer_loads(&self) -> Vec<(SocketAddr, u32, u64)> {
        self.snapshot().loads
    }

    /// A number that changes whenever the set of known members changes.
    pub fn version(&self) -> u64 {
        self.published.version.load(Ordering::Relaxed)
    }

    /// The other live members' endpoints (their handoff control listeners listen on the same
    /// address and port, over TCP): the peers of this node's distribution policy.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let s = self.snapshot();
        let me = self.listen;
        let mut v: Vec<SocketAddr> = s
            .backups
            .iter()
            .chain(s.snodes.iter())
            .chain(s.contact.iter())
            .map(|m| m.addr)
            .filter(|a| *a != me)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The newest fence this node knows, as the handoff engine takes it.
    pub fn fence(&self) -> ds_handoff::Fence {
        let e = match self.published.fence.lock() {
            Ok(f) => *f,
            Err(p) => *p.into_inner(),
        };
        ds_handoff::Fence {
            view: e.view,
            by: e.by,
        }
    }
}

impl Drop for MembershipAgent {
    fn drop(&mut self) {
        self.published.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(sock: UdpSocket, mut m: ds_membership::Member, origin: Instant, published: Published) {
    let mut known: Vec<SocketAddr> = Vec::new();
    let now = || Time(origin.elapsed().as_micros() as u64);
    let mut buf = vec![0u8; ds_membership::wire::MAX_DATAGRAM + 1];
    let mut send_errors = 0u64;
    while !published.stopped() {
        for addr in published.take_unreachable() {
            if let Some(id) = m.members().iter().find(|x| x.addr == addr).map(|x| x.id) {
                m.report_unreachable(id, now());
            }
        }
        m.set_load(published.load.load(Ordering::Relaxed));
        m.poll(now());
        while let Some((to, bytes)) = m.poll_transmit() {
            if let Err(e) = sock.send_to(&bytes, to) {
                // Unreachable peers are the protocol's business (it retries and suspects);
                // only note the first errors.
                send_errors += 1;
                if send_errors <= 3 {
                    tracing::debug!(%to, "membership: send: {e}");
                }
            }
        }
        while let Some(ev) = m.poll_event() {
            match ev {
                Event::BecameContact { fence } => {
                    tracing::info!(%fence, "membership: this node is the contact (holds the DS address)")
                }
                Event::NoLongerContact => tracing::info!("membership: no longer the contact"),
                Event::Rejoining { reason } => tracing::info!(reason, "membership: rejoining"),
                Event::Joined { epoch } => tracing::info!(%epoch, "membership: joined"),
                Event::ContactChanged { contact } => {
                    tracing::info!(contact = %contact.addr, "membership: new contact")
                }
                Event::ViewChanged { epoch } => tracing::debug!(%epoch, "membership: view"),
                Event::SnodesChanged => tracing::debug!("membership: snodes changed"),
            }
        }
        let mut members: Vec<SocketAddr> = m.members().iter().map(|x| x.addr).collect();
        members.sort_unstable();
        published.publish(snapshot(&m, now()), m.fence(), members, &mut known);
        let wait = m
            .poll_timeout()
            .map(|t| t.since(now()))
            .unwrap_or(Duration::from_millis(100))
            .clamp(Duration::from_micros(100), Duration::from_millis(100));
        let _ = sock.set_read_timeout(Some(wait));
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => m.handle(now(), src, &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // ICMP errors surface as ECONNREFUSED on the next receive: nothing to do.
                tracing::trace!("membership: receive: {e}");
            }
        }
    }
}
