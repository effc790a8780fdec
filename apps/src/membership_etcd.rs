//! The etcd backend of the contact election, for operators who already run etcd: the same
//! [`MembershipAgent`](crate::membership::MembershipAgent) interface (snapshot, fence, peers),
//! the same home-agent registration and fencing, with etcd's lease and election instead of
//! the seed's two-phase commit among backups.
//!
//! - Every node keeps a lease (TTL [`LEASE_TTL_S`]) alive and puts its member record under
//!   `/ds/<DS name>/members/<id>` with it: a node that dies disappears with its lease.
//! - Backups campaign for `/ds/<DS name>/contact` (etcd's election API, v3election). The
//!   winner's key has a creation revision that etcd never hands out twice, so the epoch
//!   (revision, node id) is unique and grows with every new leader; the winner registers at
//!   the home agent with it (the registry refuses older epochs and live holders as for the
//!   native protocol) and refreshes the registration while it leads.
//! - Every node reads the leader and the members every [`POLL`]: the fence is the leader's
//!   epoch, the peers are the members; the contact reports members whose records vanished as
//!   dead, so the home agent resets their clients.
//! - A leader that loses its lease (stopped, cut off from etcd) stops registering and
//!   campaigns again with a new lease; a registration the home agent refuses because a live
//!   contact with a newer epoch holds it makes it resign.
//!
//! Failover takes about the lease's TTL (etcd grants at least its minimum TTL, ~2 s with the
//! default election timeout) against ~0.2 s for the native protocol.

use crate::membership::{Member, MembershipConfig, Published, Snapshot};
use ds_membership::wire::{self, Body, Endpoint, Key, MemberInfo};
use ds_membership::{Epoch, Role, Status, Time};
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The lease's TTL, seconds.
pub const LEASE_TTL_S: i64 = 2;
/// How often the leader and the members are read, and the registration refreshed.
pub const POLL: Duration = Duration::from_millis(50);
/// The lease the home agent is asked for.
const HA_LEASE: Duration = Duration::from_millis(200);

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
struct Record {
    id: u64,
    addr: SocketAddr,
    coa: Ipv6Addr,
    backup: bool,
}

impl Record {
    fn info(&self) -> MemberInfo {
        MemberInfo {
            id: self.id,
            addr: self.addr,
            coa: self.coa,
        }
    }
}

/// The first snapshot, before etcd answered.
pub(crate) fn initial_snapshot(id: u64, cfg: &MembershipConfig) -> Snapshot {
    Snapshot {
        id: format!("{id:016x}"),
        role: role_name(cfg.role),
        status: Status::Joining,
        holds_registration: false,
        epoch: Epoch::default().to_string(),
        fence: Epoch::default().to_string(),
        contact: None,
        backups: Vec::new(),
        snodes: Vec::new(),
        stats: Default::default(),
        loads: Vec::new(),
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Backup => "backup",
        Role::Snode => "snode",
    }
}

/// The etcd keys of a distributed server, named after its home agent's endpoint (one DS
/// address per home agent endpoint).
fn prefix(cfg: &MembershipConfig) -> String {
    format!("/ds/{}", cfg.home_agent)
}

/// State of one node's view through etcd.
struct View {
    leader: Option<(Record, Epoch)>,
    members: BTreeMap<u64, Record>,
}

/// How long a member that left the view is remembered, to be reported dead by whichever
/// backup leads next (it takes the lease's TTL, 2 s, and an election to get there).
const VANISHED_MEMORY: Duration = Duration::from_secs(5);

/// The registration half: the same authenticated messages as the native protocol's contact.
struct Registrant {
    wire: Endpoint,
    registered: Option<Epoch>,
    dead: Vec<(u64, Ipv6Addr, Instant)>,
    buf: Vec<u8>,
}

impl Registrant {
    fn register(&mut self, sock: &UdpSocket, ha: SocketAddr, me: MemberInfo, epoch: Epoch) {
        let now = Instant::now();
        self.dead.retain(|(_, _, until)| *until > now);
        let body = Body::Register {
            me,
            lease_us: HA_LEASE.as_micros() as u64,
            dead: self
                .dead
                .iter()
                .map(|(id, coa, _)| (*id, *coa))
                .take(wire::MAX_DEAD)
                .collect(),
        };
        let _ = sock.send_to(
            &self.wire.seal(ds_membership::wire::ANY, epoch, epoch, body),
            ha,
        );
    }

    /// Read the home agent's answers; `Err` when a live contact with a newer epoch holds the
    /// registration (this node must resign).
    fn replies(
        &mut self,
        sock: &UdpSocket,
        ha: SocketAddr,
        epoch: Epoch,
        origin: Instant,
    ) -> Result<(), ()> {
        // Bounded per call, as `dsha` bounds its rounds: a stream of datagrams on this port
        // (junk, or forged as the home agent's, an HMAC each) must not keep the session from
        // its lease keep-alives and its reads of etcd. The rest wait for the next call.
        for _ in 0..REPLIES_PER_CALL {
            let (n, src) = match sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(_) => return Ok(()),
            };
            if src != ha {
                continue;
            }
            let now = Time(origin.elapsed().as_micros() as u64);
            let Some(env) = self.wire.open(now, &self.buf[..n]) else {
                continue;
            };
            if let Body::RegisterReply {
                ok,
                holder,
                lease_left_us,
            } = env.body
            {
                if ok {
                    if self.registered != Some(epoch) {
                        tracing::info!(fence = %epoch, "membership: this node is the contact (holds the DS address)");
                    }
                    self.registered = Some(epoch);
                } else if let Some((_, hepoch, _)) = holder {
                    if hepoch > epoch && lease_left_us > 0 {
                        return Err(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Datagrams [`Registrant::replies`] reads at most per call.
const REPLIES_PER_CALL: usize = 64;

/// The backend's thread: a single-threaded tokio runtime for etcd's client.
pub(crate) fn run(
    id: u64,
    cfg: MembershipConfig,
    endpoints: Vec<String>,
    sock: UdpSocket,
    published: Published,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("membership (etcd): no runtime: {e}");
            return;
        }
    };
    if let Err(e) = sock.set_nonblocking(true) {
        tracing::error!("membership (etcd): socket: {e}");
        return;
    }
    let mut reg = Registrant {
        wire: Endpoint::new(Key::new(&cfg.secret), id, 64),
        registered: None,
        dead: Vec::new(),
        buf: vec![0; wire::MAX_DATAGRAM + 1],
    };
    let mut known = Vec::new();
    let mut fence = Epoch::default();
    while !published.stopped() {
        let r = rt.block_on(session(
            id, &cfg, &endpoints, &sock, &published, &mut reg, &mut known, &mut fence,
        ));
        if let Err(e) = r {
            tracing::warn!("membership (etcd): {e}; starting over");
        }
        if reg.registered.take().is_some() {
            tracing::info!("membership: no longer the contact");
        }
        // Until etcd answers again this node knows no view: it is joining.
        let mut snap = initial_snapshot(id, &cfg);
        snap.fence = fence.to_string();
        published.publish(snap, fence, known.clone(), &mut known);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One lease's life: join, campaign (backups), follow the leader; returns when the lease is
/// lost, etcd fails, the home agent deposes this node, or the node stops.
#[allow(clippy::too_many_arguments)]
async fn session(
    id: u64,
    cfg: &MembershipConfig,
    endpoints: &[String],
    sock: &UdpSocket,
    published: &Published,
    reg: &mut Registrant,
    known: &mut Vec<SocketAddr>,
    fence: &mut Epoch,
) -> Result<(), etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(1));
    let mut client = Client::connect(endpoints, Some(opts)).await?;
    let lease = client.lease_grant(LEASE_TTL_S, None).await?.id();
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let me = Record {
        id,
        addr: cfg.listen,
        coa: cfg.coa,
        backup: cfg.role == Role::Backup,
    };
    let value = serde_json::to_string(&me).unwrap_or_default();
    let pfx = prefix(cfg);
    client
        .put(
            format!("{pfx}/members/{id:016x}"),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    tracing::info!(%lease, "membership: joined");
    // Backups campaign in the background; the answer comes when this node leads. The
    // campaign waits as long as another node leads, so its client has no request timeout
    // (with the 1 s one every backup's session failed each second and started over with a
    // new lease, and members that vanished meanwhile were never reported dead).
    let mut campaign = if me.backup {
        let mut c = Client::connect(
            endpoints,
            Some(ConnectOptions::new().with_connect_timeout(Duration::from_secs(1))),
        )
        .await?;
        let (name, v) = (format!("{pfx}/contact"), value.clone());
        Some(tokio::spawn(
            async move { c.campaign(name, v, lease).await },
        ))
    } else {
        None
    };
    let mut leading: Option<(etcd_client::LeaderKey, Epoch)> = None;
    let origin = Instant::now();
    let mut tick = tokio::time::interval(POLL);
    let mut last_keepalive = Instant::now() - Duration::from_secs(1);
    let mut prev_members: BTreeMap<u64, Record> = BTreeMap::new();
    // Members that left the view lately (their lease expired), seen whether or not this node
    // leads: a backup that becomes the contact because the contact died reports it too.
    let mut vanished: Vec<(u64, Ipv6Addr, Instant)> = Vec::new();
    loop {
        if published.stopped() {
            if let Some((k, _)) = leading.take() {
                let _ = client
                    .resign(Some(etcd_client::ResignOptions::new().with_leader(k)))
                    .await;
            }
            let _ = client.lease_revoke(lease).await;
            return Ok(());
        }
        tokio::select! {
            _ = tick.tick() => {}
            r = async { campaign.as_mut().expect("guarded").await }, if campaign.is_some() => {
                campaign = None;
                match r {
                    Ok(Ok(resp)) => {
                        if let Some(k) = resp.leader() {
                            let epoch = Epoch { view: k.rev() as u64, by: id };
                            tracing::info!(%epoch, "membership: elected (etcd)");
                            leading = Some((k.clone(), epoch));
                        }
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!("membership (etcd): campaign task: {e}");
                        return Ok(());
                    }
                }
            }
            m = acks.message() => {
                match m? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => {
                        tracing::info!("membership (etcd): lease lost");
                        return Ok(());
                    }
                }
            }
        }
        if last_keepalive.elapsed() >= Duration::from_millis(500) {
            keeper.keep_alive().await?;
            last_keepalive = Instant::now();
        }
        let view = read_view(&mut client, &pfx).await?;
        if let Some((_, e)) = view.leader {
            if e > *fence {
                *fence = e;
            }
        }
        let now = Instant::now();
        vanished.retain(|(_, _, at)| now.duration_since(*at) < VANISHED_MEMORY);
        for (mid, r) in &prev_members {
            if !view.members.contains_key(mid) && !vanished.iter().any(|(v, _, _)| v == mid) {
                vanished.push((*mid, r.coa, now));
            }
        }
        if let Some(epoch) = leading.as_ref().map(|l| l.1) {
            // The members that vanished (their lease expired) are dead: their clients are reset.
            for (mid, coa, _) in &vanished {
                if *coa != cfg.coa && !reg.dead.iter().any(|(d, _, _)| d == mid) {
                    reg.dead.push((*mid, *coa, now + Duration::from_secs(2)));
                }
            }
            reg.register(sock, cfg.home_agent, me.info(), epoch);
            if reg.replies(sock, cfg.home_agent, epoch, origin).is_err() {
                tracing::info!("membership: a live contact with a newer epoch holds the registration; resigning");
                if let Some((k, _)) = leading.take() {
                    let _ = client
                        .resign(Some(etcd_client::ResignOptions::new().with_leader(k)))
                        .await;
                }
                return Ok(());
            }
        }
        prev_members = view.members.clone();
        let led = leading.as_ref().map(|l| l.1);
        publish(published, &me, cfg, &view, led, reg, *fence, known);
    }
}

async fn read_view(client: &mut Client, pfx: &str) -> Result<View, etcd_client::Error> {
    let leader = match client.leader(format!("{pfx}/contact")).await {
        Ok(r) => r.kv().and_then(|kv| {
            let rec: Record = serde_json::from_slice(kv.value()).ok()?;
            Some((
                rec,
                Epoch {
                    view: kv.create_revision() as u64,
                    by: rec.id,
                },
            ))
        }),
        // No leader yet ("election: no leader").
        Err(_) => None,
    };
    let resp = client
        .get(
            format!("{pfx}/members/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let members = resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Record>(kv.value()).ok())
        .map(|r| (r.id, r))
        .collect();
    Ok(View { leader, members })
}

#[allow(clippy::too_many_arguments)]
fn publish(
    published: &Published,
    me: &Record,
    cfg: &MembershipConfig,
    view: &View,
    leading: Option<Epoch>,
    reg: &Registrant,
    fence: Epoch,
    known: &mut Vec<SocketAddr>,
) {
    let holds = leading.is_some() && reg.registered == leading;
    let status = match (cfg.role, holds) {
        (_, true) => Status::Contact,
        (Role::Backup, false) => Status::Backup,
        (Role::Snode, false) => Status::Snode,
    };
    let list = |backup: bool| -> Vec<Member> {
        view.members
            .values()
            .filter(|r| r.backup == backup)
            .map(|r| Member::from(&r.info()))
            .collect()
    };
    let epoch = leading.or(view.leader.map(|l| l.1)).unwrap_or_default();
    let snap = Snapshot {
        id: format!("{:016x}", me.id),
        role: role_name(cfg.role),
        status,
        holds_registration: holds,
        epoch: epoch.to_string(),
        fence: fence.to_string(),
        contact: view.leader.map(|(r, _)| Member::from(&r.info())),
        backups: list(true),
        snodes: list(false),
        stats: Default::default(),
        // Loads are not reported through etcd (least-connections sees only this node's).
        loads: Vec::new(),
    };
    let mut addrs: Vec<SocketAddr> = view.members.values().map(|r| r.addr).collect();
    addrs.sort_unstable();
    published.publish(snap, fence, addrs, known);
}
