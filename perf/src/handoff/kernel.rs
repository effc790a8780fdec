//! Kernel-path nodes for `dsperf handoff`: standard Linux sockets that hand their connections
//! off and take them over with `TCP_REPAIR` (`ds-kernel`), through the same protocol as the
//! userspace [`ds_apps::node::HandoffNode`], so that kernel and userspace nodes interoperate.
//!
//! ```text
//!  HA ── IPv6-in-IPv6 to the care-of address ──▶ n0: XDP steer (decapsulate, XDP_PASS)
//!                                                 └─▶ kernel TCP, socket on [DS]:80
//! ```
//!
//! The node's kernel owns its care-of address (on `n0`) and the DS address (on `lo`, see
//! `configure`); the steering program passes both to the kernel after decapsulating the home
//! agent's tunnel (this kernel has no `ip6_tunnel`). The HTTP side is `ds_apps`' own
//! [`HttpConn`] over a non-blocking [`TcpStream`]: the response bytes and the exported
//! [`HttpConnState`] are exactly the userspace server's, so either kind of node continues the
//! other's response.
//!
//! Donor: after `quota` response bytes it drains (SIOCOUTQ reaches 0, bounded by the drain
//! deadline), holds the client's packets (the node's [`HoldTable`]: one map update in the
//! steering program, which then copies them to userspace and drops them), freezes the socket
//! ([`ds_kernel::freeze`]) and offers TCP and HTTP state; on Refuse, an error or a timeout before
//! Accept it restores the socket here, nothing lost; after Activated it forwards what it held
//! for a grace period. Acceptor: restores the socket ([`ds_kernel::restore_with_held`]), moves
//! the flow at the home agent ([`FlowMover`]), answers Accept and Activated with its timings
//! and continues the response; packets the donor forwards go in with [`ds_kernel::inject`].

use super::{ip, DrainChoice, NodeOut, Options, COA, CTL, CTL_PORT, DS, HA, HA_PORT, MAC, SECRET};
use anyhow::{anyhow, Context, Result};
use ds_apps::flow_agent::FlowMover;
use ds_apps::http::{HttpConn, HttpConnState};
use ds_apps::node::{AcceptorFault, NodeEvent};
use ds_handoff::msg::AcceptorTimes;
use ds_handoff::{
    Channel, ChannelError, ClusterSecret, HandoffReport, Message, Mode, Offer, Phase, PhaseTimes,
    RefuseReason,
};
use ds_kernel::{HoldLimits, HoldTable};
use ds_stack::ConnState;
use ds_testbed::Netns;
use ds_xdp::maps::{Action, LocalAddr, PROTO_ALL};
use ds_xdp::{Kind, LoadOptions, Program};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which implementation serves a node's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// Our stack over AF_XDP ([`ds_apps::node::HandoffNode`]).
    #[default]
    User,
    /// Standard kernel sockets, moved with `TCP_REPAIR`.
    Kernel,
}

impl Side {
    /// `"user"` or `"kernel"`, as in the report's `path`.
    pub fn label(self) -> &'static str {
        match self {
            Side::User => "user",
            Side::Kernel => "kernel",
        }
    }
}

/// The implementations of node 1 and node 2, written `"kernel->user"` etc. (node 1 serves
/// first, so the first handoff goes in the direction written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandoffPath {
    /// Node 1 (the contact node, first donor).
    pub node1: Side,
    /// Node 2 (first acceptor).
    pub node2: Side,
}

impl HandoffPath {
    /// The four paths, as accepted by [`std::str::FromStr`].
    pub const ALL: [&'static str; 4] = [
        "user->user",
        "kernel->user",
        "user->kernel",
        "kernel->kernel",
    ];

    /// The side of node `i` (0 or 1).
    pub fn side(self, i: usize) -> Side {
        if i == 0 {
            self.node1
        } else {
            self.node2
        }
    }

    /// The report's `path` of a handoff started by node `i` (0 or 1).
    pub fn label_from(self, i: usize) -> String {
        format!(
            "{}->{}",
            self.side(i).label(),
            self.side(1 - i.min(1)).label()
        )
    }

    /// Whether any node is on the kernel path.
    pub fn has_kernel(self) -> bool {
        self.node1 == Side::Kernel || self.node2 == Side::Kernel
    }
}

impl std::fmt::Display for HandoffPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.node1.label(), self.node2.label())
    }
}

impl std::str::FromStr for HandoffPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let side = |w: &str| match w {
            "user" => Ok(Side::User),
            "kernel" => Ok(Side::Kernel),
            _ => Err(format!("{s:?}: expected one of {:?}", Self::ALL)),
        };
        let (a, b) = s
            .split_once("->")
            .ok_or_else(|| format!("{s:?}: expected one of {:?}", Self::ALL))?;
        Ok(HandoffPath {
            node1: side(a)?,
            node2: side(b)?,
        })
    }
}

/// How long the donor forwards held packets after Activated (as `HandoffConfig`'s default).
const FORWARD_GRACE: Duration = Duration::from_millis(200);
/// Service name offered and accepted (as the userspace node's).
const SERVICE: &str = "http";

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

fn v6(a: SocketAddr) -> Result<SocketAddrV6> {
    match a {
        SocketAddr::V6(v) => Ok(v),
        SocketAddr::V4(v) => Err(anyhow!("IPv4 address {v} on an IPv6-only node")),
    }
}

/// Run kernel-path node `i` (0 or 1) until `stop`; the counterpart of `super::node`.
#[allow(clippy::too_many_arguments)]
pub(super) fn node(
    ns: &Netns,
    i: usize,
    opts: &Options,
    root: &Path,
    quota: u64,
    max_handoffs: u64,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<()>>,
) -> Result<NodeOut> {
    ns.try_run(|| -> Result<NodeOut> {
        let mut node = match KernelNode::new(ns, i, opts, root, quota, max_handoffs) {
            Ok(n) => n,
            Err(e) => {
                // Tell the runner at once rather than let it wait for a node that never starts.
                let _ = ready.send(Err(anyhow!("kernel node {}: {e:#}", i + 1)));
                return Err(e);
            }
        };
        let _ = ready.send(Ok(()));
        while !stop.load(Ordering::Relaxed) {
            node.step();
        }
        if let Ok(c) = ds_testbed::tcp_counters(ns) {
            // The kernel's own view of this node's sending, for the log: server-side
            // retransmissions show up in the run's duplicate count, not in the client's.
            let get = |k: &str| c.get(k).copied().unwrap_or(0);
            tracing::info!(
                node = i + 1,
                retrans_segs = get("TcpRetransSegs"),
                loss_probes = get("TcpExtTCPLossProbes"),
                timeouts = get("TcpExtTCPTimeouts"),
                dsack_recv = get("TcpExtTCPDSACKRecv"),
                "kernel node done"
            );
        }
        Ok(node.finish())
    })?
}

/// Give the kernel of node `i` its addresses and the steering program (returned: it must stay
/// loaded while the node runs).
///
/// The DS address goes on `lo`, not on `n0`: Linux sources a neighbour solicitation from the
/// address of the packet that needs it when that address is on the outgoing device
/// (`ndisc_solicit`), and the client's answer to the DS address would go to the home agent and
/// on to whichever node the binding names, never to an acceptor resolving the client. On `lo`
/// the solicitation comes from the node's own address on `n0` and the answer comes straight
/// back; the DS address is local all the same (no DAD runs on `lo`).
fn configure(ns: &Netns, i: usize) -> Result<(Program, u32)> {
    let mac = MAC[i]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    // The home agent's neighbour entry for the care-of address names this MAC (the userspace
    // node answers to it on AF_XDP; the kernel only takes frames for its own).
    ns.ip(&["link", "set", "n0", "address", &mac])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/128", COA[i]),
        "dev",
        "n0",
        "nodad",
    ])?;
    ns.ip(&["-6", "addr", "add", &format!("{DS}/128"), "dev", "lo"])?;
    let prog = Program::load(Kind::Steer, &LoadOptions::default())?;
    let idx = ds_xdp::loader::ifindex("n0")?;
    prog.attach(idx, ds_xdp::Mode::Native, false)?;
    for a in [COA[i], DS] {
        prog.add_local(
            ip(a),
            LocalAddr {
                protos: PROTO_ALL,
                action: Action::Pass,
            },
        )?;
    }
    Ok((prog, idx))
}

/// A client connection served here.
struct Conn {
    sock: TcpStream,
    http: HttpConn,
    /// Response bytes written to the socket here since accept, adoption or a failed handoff
    /// (the quota counter, as the userspace server's).
    sent_here: u64,
    local: SocketAddrV6,
    client: SocketAddrV6,
    /// Our FIN is out.
    fin: bool,
    /// The client's FIN arrived.
    eof: bool,
}

enum Verdict {
    Continue,
    Quota,
    Close,
}

/// A moved connection whose client packets still reach this node.
struct Forwarding {
    conn_id: u64,
    local: SocketAddrV6,
    client: SocketAddrV6,
    until: Instant,
}

/// How a handoff's wait for the acceptor ended.
enum Reply {
    Activated(AcceptorTimes),
    /// Before Accept: the connection comes back here.
    Back(String, bool),
    /// After Accept without Activated: it may run there.
    InDoubt(String),
}

struct KernelNode {
    i: usize,
    root: PathBuf,
    listener: TcpListener,
    ctl: TcpListener,
    peer: SocketAddr,
    secret: ClusterSecret,
    mover: FlowMover,
    coa: Ipv6Addr,
    quota: u64,
    max_handoffs: u64,
    drain: DrainChoice,
    drain_deadline: Duration,
    reply_timeout: Duration,
    mode: Mode,
    fault: Option<AcceptorFault>,
    conns: Vec<Conn>,
    incoming: Vec<Channel>,
    to_peer: Option<Channel>,
    forwarding: Vec<Forwarding>,
    events: Vec<(u8, NodeEvent)>,
    started: u64,
    forwarded: u64,
    next_id: u64,
    moves: u64,
    prog: Option<(Program, u32)>,
    /// The flows held here (in the steering program) and their packets.
    holds: HoldTable,
    /// The report's `path` of this node's handoffs, e.g. `"kernel->user"`.
    path: String,
}

impl KernelNode {
    fn new(
        ns: &Netns,
        i: usize,
        opts: &Options,
        root: &Path,
        quota: u64,
        max_handoffs: u64,
    ) -> Result<Self> {
        let prog = configure(ns, i).context("configuring the kernel node")?;
        let holds =
            HoldTable::new(&prog.0, HoldLimits::default()).context("the node's packet hold")?;
        let listener = TcpListener::bind(SocketAddrV6::new(ip(DS), 80, 0, 0))
            .context("listening on the DS address")?;
        listener.set_nonblocking(true)?;
        let ctl = TcpListener::bind(SocketAddrV6::new(ip(CTL[i]), CTL_PORT, 0, 0))
            .context("control listener")?;
        ctl.set_nonblocking(true)?;
        let secret = ClusterSecret::new(SECRET)?;
        let ha = SocketAddr::V6(SocketAddrV6::new(ip(HA), HA_PORT, 0, 0));
        let mut mover = FlowMover::new(ha, secret.clone(), Duration::from_secs(1));
        if let Err(e) = mover.connect() {
            // Not fatal: the first move retries (inside its timing).
            tracing::warn!("home agent flow agent at {ha} not reachable yet: {e:#}");
        }
        Ok(KernelNode {
            i,
            root: std::fs::canonicalize(root)?,
            listener,
            ctl,
            peer: SocketAddr::V6(SocketAddrV6::new(ip(CTL[1 - i]), CTL_PORT, 0, 0)),
            secret,
            mover,
            coa: ip(COA[i]),
            quota,
            max_handoffs,
            drain: opts.drain,
            drain_deadline: opts.drain_deadline,
            reply_timeout: opts.reply_timeout,
            mode: opts.mode,
            fault: if i == 1 { opts.fault } else { None },
            conns: Vec::new(),
            incoming: Vec::new(),
            to_peer: None,
            forwarding: Vec::new(),
            events: Vec::new(),
            started: 0,
            forwarded: 0,
            next_id: 1,
            moves: 0,
            prog: Some(prog),
            holds,
            path: opts.path.label_from(i),
        })
    }

    fn event(&mut self, e: NodeEvent) {
        self.events.push((self.i as u8 + 1, e));
    }

    /// The quota in force: none once this node started all its handoffs.
    fn quota_now(&self) -> Option<u64> {
        (self.started < self.max_handoffs).then_some(self.quota)
    }

    /// One round: wait for work (at most a few ms), then serve everything that is ready.
    fn step(&mut self) {
        self.wait();
        // Held packets wait in the ring until read: read them every round (the ring's fd is
        // in the wait set and stays readable until then).
        self.holds.poll();
        self.accept_clients();
        self.accept_channels();
        self.serve_offers();
        self.serve_conns();
        self.forward();
    }

    fn finish(mut self) -> NodeOut {
        for f in std::mem::take(&mut self.forwarding) {
            let _ = self.holds.release(f.local, f.client);
        }
        if let Some((_, idx)) = self.prog.take() {
            let _ = ds_xdp::loader::detach(idx);
        }
        NodeOut {
            events: self.events,
            forwarded: self.forwarded,
            rr: None,
        }
    }

    /// Block in poll(2) until a socket we serve is ready or a short timeout passes (shorter
    /// while held packets are being forwarded: they wait in userspace).
    fn wait(&self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut add = |fd: i32, events: i16| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        add(self.listener.as_raw_fd(), libc::POLLIN);
        add(self.ctl.as_raw_fd(), libc::POLLIN);
        add(self.holds.fd().as_raw_fd(), libc::POLLIN);
        for c in &self.incoming {
            add(c.stream().as_raw_fd(), libc::POLLIN);
        }
        for c in &self.conns {
            let mut ev = 0;
            if c.http.wants_input() || !c.eof {
                ev |= libc::POLLIN;
            }
            if c.http.is_busy() {
                ev |= libc::POLLOUT;
            }
            add(c.sock.as_raw_fd(), ev);
        }
        let timeout = if self.forwarding.is_empty() { 5 } else { 1 };
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs; poll(2)
        // only writes their `revents` fields. The result is not needed: every socket is
        // non-blocking and is tried after the wait anyway.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout);
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => {
                    let conn = (|| -> Result<Conn> {
                        sock.set_nonblocking(true)?;
                        let local = v6(sock.local_addr()?)?;
                        let client = v6(peer)?;
                        Ok(Conn {
                            http: HttpConn::new(self.root.clone(), client.to_string()),
                            sock,
                            sent_here: 0,
                            local,
                            client,
                            fin: false,
                            eof: false,
                        })
                    })();
                    match conn {
                        Ok(c) => self.conns.push(c),
                        Err(e) => tracing::warn!("client connection dropped: {e:#}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    break;
                }
            }
        }
    }

    fn accept_channels(&mut self) {
        loop {
            match self.ctl.accept() {
                Ok((s, peer)) => {
                    if s.set_nonblocking(false).is_err() {
                        continue;
                    }
                    match Channel::accept(s, &self.secret, Duration::from_secs(1)) {
                        Ok(c) => self.incoming.push(c),
                        Err(e) => tracing::warn!(%peer, "control channel refused: {e}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("control accept: {e}");
                    break;
                }
            }
        }
    }

    fn serve_conns(&mut self) {
        let mut k = 0;
        while k < self.conns.len() {
            let quota = self.quota_now();
            match serve(&mut self.conns[k], quota) {
                Verdict::Continue => k += 1,
                Verdict::Close => {
                    self.conns.swap_remove(k);
                }
                Verdict::Quota => {
                    let c = self.conns.swap_remove(k);
                    if let Some(c) = self.hand_off(c) {
                        // Kept here: it is served again (at the end of the list) this round.
                        self.conns.push(c);
                    }
                }
            }
        }
    }

    fn connect_peer(&mut self) -> Result<&mut Channel> {
        if self.to_peer.is_none() {
            self.to_peer = Some(Channel::connect(
                self.peer,
                &self.secret,
                Duration::from_secs(2),
            )?);
        }
        self.to_peer
            .as_mut()
            .ok_or_else(|| anyhow!("no control channel"))
    }

    /// Hand `c` to the peer. Returns it when it stays here.
    fn hand_off(&mut self, mut c: Conn) -> Option<Conn> {
        let client = c.client;
        let app = match c.http.export() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("HTTP state not exportable, connection kept here: {e}");
                c.sent_here = 0;
                return Some(c);
            }
        };
        if let Err(e) = self.connect_peer() {
            tracing::warn!("peer unreachable, connection kept here: {e:#}");
            c.sent_here = 0;
            return Some(c);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.started += 1;

        // Drain: wait until the client acknowledged everything written (seed §3.2.3), bounded.
        let since = Instant::now();
        if self.drain == DrainChoice::Acked {
            while since.elapsed() < self.drain_deadline {
                match ds_kernel::send_queue_len(&c.sock) {
                    Ok(0) => break,
                    Ok(_) => std::thread::sleep(Duration::from_micros(50)),
                    Err(e) => {
                        tracing::warn!("drain: {e}");
                        break;
                    }
                }
            }
        }
        let drain = since.elapsed();

        // Phase 1: socket extraction. On the kernel path it includes holding the client's
        // packets (the flow must be held before the freeze; the userspace stack holds
        // them as part of its freeze).
        let t0 = Instant::now();
        match self.holds.hold(c.local, client) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("cannot hold the client's packets, connection kept here: {e}");
                self.event(NodeEvent::KeptHere {
                    client,
                    cause: format!("hold: {e}"),
                });
                c.sent_here = 0;
                return Some(c);
            }
        };
        let held_in = t0.elapsed();
        let state = match ds_kernel::freeze(&c.sock) {
            Ok(s) => s,
            Err(e) => {
                // Nothing left the node: release what was held to the socket (rule first, or
                // the injected packets would be held again).
                tracing::error!("freeze failed, connection kept here: {e}");
                if let Err(e) = self
                    .holds
                    .release(c.local, client)
                    .and_then(|p| ds_kernel::inject(&p))
                {
                    tracing::error!("releasing held packets: {e}");
                }
                self.event(NodeEvent::KeptHere {
                    client,
                    cause: format!("freeze: {e}"),
                });
                c.sent_here = 0;
                return Some(c);
            }
        };
        let Conn { sock, http, .. } = c;
        // In repair mode the close is silent (no FIN, no RST): the connection lives on in
        // `state` and the 4-tuple is free for a restore here if the handoff fails.
        drop(sock);
        let bytes = state.encode();
        let mut phases = PhaseTimes::default();
        phases.set(Phase::SocketExtraction, t0.elapsed());
        tracing::debug!(
            hold_us = held_in.as_secs_f64() * 1e6,
            freeze_us = (t0.elapsed() - held_in).as_secs_f64() * 1e6,
            "kernel extraction"
        );
        let state_bytes = bytes.len();
        let offer = Message::Offer(Offer {
            conn_id: id,
            state: bytes,
            ticket: None,
            service: SERVICE.into(),
            app: Some(app.encode().into()),
        });
        let reply_timeout = self.reply_timeout;
        let (reply, offer_sent, offer_bytes) = match self.connect_peer() {
            Ok(chan) => {
                let before = chan.bytes_sent();
                let offer_sent = Instant::now();
                let reply = match chan.send(&offer) {
                    Ok(()) => await_reply(chan, id, offer_sent, reply_timeout),
                    Err(e) => Reply::Back(format!("sending the offer: {e}"), true),
                };
                (reply, offer_sent, (chan.bytes_sent() - before) as usize)
            }
            Err(e) => (Reply::Back(format!("{e:#}"), true), Instant::now(), 0),
        };
        match reply {
            Reply::Activated(times) => {
                let done = Instant::now();
                // As the userspace donor (ds_handoff::Donor::finish): phase 2 is the exchange's
                // network time, the acceptor's own processing taken out.
                phases.set(
                    Phase::StateTransfer,
                    done.duration_since(offer_sent)
                        .saturating_sub(Duration::from_nanos(times.elapsed_ns)),
                );
                phases.set(
                    Phase::SocketRecreation,
                    Duration::from_nanos(times.recreate_ns),
                );
                for (k, p) in [
                    Phase::ReturnRoutability,
                    Phase::BuConstruction,
                    Phase::BindingManagement,
                ]
                .into_iter()
                .enumerate()
                {
                    phases.set(p, Duration::from_nanos(times.steer_ns[k]));
                }
                phases.set(
                    Phase::SocketActivation,
                    Duration::from_nanos(times.activate_ns),
                );
                let report = HandoffReport::new(
                    self.mode,
                    &self.path,
                    &phases,
                    done.duration_since(t0),
                    drain,
                    state_bytes,
                    offer_bytes,
                );
                tracing::info!(%client, "handed off: {}", report.to_json_line());
                // SND.MAX at the freeze (as the userspace node): the first new byte the client
                // gets from the acceptor, which also sends the never-sent rest of the queue.
                let sent = state.in_flight.as_ref().map_or(0, |f| f.max_off);
                let boundary_seq = state.snd_una.wrapping_add(sent);
                self.event(NodeEvent::HandedOff {
                    report,
                    client,
                    boundary_seq,
                });
                self.start_forwarding(id, &state);
                None
            }
            Reply::InDoubt(cause) => {
                tracing::error!(%client, "handoff in doubt: {cause}");
                self.to_peer = None;
                self.event(NodeEvent::Failed {
                    cause: format!("acceptor accepted but did not confirm activation: {cause}"),
                });
                // It may run there: what arrives here still goes there, for the grace period.
                self.start_forwarding(id, &state);
                None
            }
            Reply::Back(cause, broken) => {
                tracing::warn!(%client, "handoff failed, connection kept here: {cause}");
                if let Some(chan) = self.to_peer.as_mut() {
                    // Best effort: the acceptor drops the offer if it still has it.
                    let _ = chan.send(&Message::Abort {
                        conn_id: id,
                        reason: cause.clone(),
                    });
                }
                if broken {
                    self.to_peer = None;
                }
                match restore_here(&mut self.holds, &state, http) {
                    Ok(c) => {
                        self.event(NodeEvent::KeptHere { client, cause });
                        Some(c)
                    }
                    Err(e) => {
                        tracing::error!("cannot restore the connection here: {e:#}");
                        self.event(NodeEvent::Failed {
                            cause: format!("{cause}; restoring here: {e:#}"),
                        });
                        None
                    }
                }
            }
        }
    }

    fn start_forwarding(&mut self, conn_id: u64, state: &ConnState) {
        let f = Forwarding {
            conn_id,
            local: state.local(),
            client: state.remote(),
            until: Instant::now() + FORWARD_GRACE,
        };
        self.forwarding.push(f);
        // What was held during the handoff goes at once.
        self.forward();
    }

    /// Send held packets to the acceptor; stop holding once the grace period is over.
    fn forward(&mut self) {
        let now = Instant::now();
        let mut k = 0;
        while k < self.forwarding.len() {
            let expired = now >= self.forwarding[k].until;
            let (conn_id, packets) = if expired {
                let f = self.forwarding.swap_remove(k);
                (f.conn_id, self.holds.release(f.local, f.client))
            } else {
                k += 1;
                let f = &self.forwarding[k - 1];
                (f.conn_id, Ok(self.holds.take(f.local, f.client)))
            };
            let packets = match packets {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("held packets lost: {e}");
                    continue;
                }
            };
            if packets.is_empty() {
                continue;
            }
            let n = packets.len() as u64;
            let sent = self.to_peer.as_mut().map(|chan| {
                chan.send(&Message::Forward {
                    conn_id,
                    packets: packets.into_iter().map(Into::into).collect(),
                })
            });
            match sent {
                Some(Ok(())) => self.forwarded += n,
                Some(Err(e)) => {
                    tracing::warn!("forwarding held packets failed: {e}");
                    self.to_peer = None;
                }
                None => tracing::warn!("{n} held packet(s) dropped: no channel to the acceptor"),
            }
        }
    }

    /// A flow coming back while this node still forwards for it: stop holding it here, or
    /// the hold would take the restored socket's packets.
    fn stop_forwarding(&mut self, local: SocketAddrV6, client: SocketAddrV6) {
        let mut k = 0;
        while k < self.forwarding.len() {
            if self.forwarding[k].local == local && self.forwarding[k].client == client {
                let f = self.forwarding.swap_remove(k);
                match self.holds.release(f.local, f.client) {
                    Ok(p) if !p.is_empty() => {
                        let n = p.len() as u64;
                        if let Some(chan) = self.to_peer.as_mut() {
                            if chan
                                .send(&Message::Forward {
                                    conn_id: f.conn_id,
                                    packets: p.into_iter().map(Into::into).collect(),
                                })
                                .is_ok()
                            {
                                self.forwarded += n;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("held packets lost: {e}"),
                }
            } else {
                k += 1;
            }
        }
    }

    fn serve_offers(&mut self) {
        let mut k = 0;
        while k < self.incoming.len() {
            if self.serve_channel(k) {
                k += 1;
            } else {
                self.incoming.swap_remove(k);
            }
        }
    }

    /// Handle what arrived on incoming channel `k`; false when it is to be dropped.
    fn serve_channel(&mut self, k: usize) -> bool {
        loop {
            let msg = match self.incoming[k].poll() {
                Ok(Some(m)) => m,
                Ok(None) => return true,
                Err(ChannelError::Closed) => return false,
                Err(e) => {
                    tracing::warn!("control channel from a donor failed: {e}");
                    return false;
                }
            };
            let arrived = Instant::now();
            match msg {
                Message::Offer(o) => match self.fault {
                    Some(AcceptorFault::Crash) => {
                        tracing::info!("injected fault: acceptor crashes on an offer");
                        return false;
                    }
                    Some(AcceptorFault::Hang) => {
                        tracing::info!("injected fault: acceptor ignores an offer");
                    }
                    Some(AcceptorFault::Refuse) => {
                        if refuse(&mut self.incoming[k], o.conn_id, RefuseReason::Load).is_err() {
                            return false;
                        }
                        self.event(NodeEvent::Declined {
                            cause: format!("refused: {:?}", RefuseReason::Load),
                        });
                    }
                    None => {
                        if let Err(e) = self.on_offer(k, o, arrived) {
                            tracing::warn!("control channel from a donor failed: {e}");
                            return false;
                        }
                    }
                },
                Message::Forward { packets, .. } => {
                    let p: Vec<Vec<u8>> = packets.into_iter().map(|b| b.into_vec()).collect();
                    if let Err(e) = ds_kernel::inject(&p) {
                        tracing::warn!("injecting forwarded packets: {e}");
                    }
                }
                Message::Abort { conn_id, .. } => self.event(NodeEvent::Declined {
                    cause: format!("offer {conn_id} aborted by the donor"),
                }),
                Message::Accept { .. }
                | Message::Refuse { .. }
                | Message::Activated { .. }
                | Message::FlowMoved { .. } => {
                    tracing::warn!("protocol violation: acceptor got a reply message");
                    return false;
                }
                // Announcements a kernel acceptor has no use for (e.g. a donor's Prepare: there
                // is nothing to run ahead in transparent mode).
                other => tracing::debug!("ignored: {other:?}"),
            }
        }
    }

    /// Take a connection over (phases 3–7). `Err` only when the channel failed.
    fn on_offer(&mut self, k: usize, o: Offer, arrived: Instant) -> Result<(), ChannelError> {
        // Phase 3: socket re-creation (decode, HTTP state, restore).
        let t0 = Instant::now();
        let id = o.conn_id;
        if o.service != SERVICE {
            return refuse(&mut self.incoming[k], id, RefuseReason::UnknownService);
        }
        let state = match ConnState::decode(&o.state) {
            Ok(s) => s,
            Err(e) => {
                return refuse(
                    &mut self.incoming[k],
                    id,
                    RefuseReason::BadState(e.to_string()),
                )
            }
        };
        let http = o
            .app
            .as_deref()
            .ok_or_else(|| anyhow!("the offer carried no HTTP state"))
            .and_then(|b| HttpConnState::decode(b).map_err(anyhow::Error::from))
            .and_then(|st| {
                HttpConn::import(self.root.clone(), state.remote().to_string(), st)
                    .map_err(anyhow::Error::from)
            });
        let http = match http {
            Ok(h) => h,
            Err(e) => {
                return refuse(
                    &mut self.incoming[k],
                    id,
                    RefuseReason::BadState(format!("{e:#}")),
                )
            }
        };
        self.stop_forwarding(state.local(), state.remote());
        // Forward messages follow the Accept (the protocol's order), so nothing is held for
        // this connection yet: the restore sends its window probe, and the client's answer
        // reaches this socket once the flow has moved (or comes forwarded before).
        let sock = match ds_kernel::restore_with_held(&state, &[]) {
            Ok((s, _)) => s,
            Err(e) => {
                return refuse(
                    &mut self.incoming[k],
                    id,
                    RefuseReason::ThawFailed(e.to_string()),
                )
            }
        };
        let mut times = AcceptorTimes {
            recreate_ns: ns(t0.elapsed()),
            ..Default::default()
        };
        // Phases 4–6 (transparent mode: one flow-map update at the home agent), before the
        // commit: a flow that cannot be steered here stays with the donor.
        self.moves += 1;
        match self
            .mover
            .move_flow(self.moves, state.remote(), state.local(), self.coa)
        {
            Ok((build, bind)) => times.steer_ns = [0, ns(build), ns(bind)],
            Err(e) => {
                take_back(sock);
                return refuse(
                    &mut self.incoming[k],
                    id,
                    RefuseReason::Other(format!("steering: {e:#}")),
                );
            }
        }
        if let Err(e) = self.incoming[k].send(&Message::Accept { conn_id: id }) {
            // The donor will restore the connection: ours goes silently.
            take_back(sock);
            return Err(e);
        }
        // Phase 7: activation (the socket joins this node's server).
        let t7 = Instant::now();
        let client = state.remote();
        if let Err(e) = sock.set_nonblocking(true) {
            tracing::warn!("set_nonblocking on a restored socket: {e}");
        }
        self.conns.push(Conn {
            sock,
            http,
            sent_here: 0,
            local: state.local(),
            client,
            fin: false,
            eof: false,
        });
        times.activate_ns = ns(t7.elapsed());
        times.elapsed_ns = ns(arrived.elapsed());
        self.incoming[k].send(&Message::Activated { conn_id: id, times })?;
        self.event(NodeEvent::Adopted { client });
        Ok(())
    }
}

fn refuse(chan: &mut Channel, conn_id: u64, reason: RefuseReason) -> Result<(), ChannelError> {
    tracing::warn!("offer {conn_id} refused: {reason:?}");
    chan.send(&Message::Refuse { conn_id, reason })
}

/// Undo a restore that will not be committed: repair mode, then a silent close.
fn take_back(sock: TcpStream) {
    if let Err(e) = ds_kernel::freeze(&sock) {
        tracing::warn!("taking a restored socket back: {e}");
    }
    drop(sock);
}

/// The handoff failed before the commit: rebuild the socket here from its frozen state.
fn restore_here(holds: &mut HoldTable, state: &ConnState, http: HttpConn) -> Result<Conn> {
    // Restored while the hold is still in place (injected packets would be held again): the
    // restore's window probe and its answer order things, and the packets held since the
    // freeze, all older than anything the new socket sends, go in right after.
    let sock = ds_kernel::restore(state)?;
    let held = holds.release(state.local(), state.remote())?;
    ds_kernel::inject(&held)?;
    sock.set_nonblocking(true)?;
    Ok(Conn {
        sock,
        http,
        sent_here: 0,
        local: state.local(),
        client: state.remote(),
        fin: false,
        eof: false,
    })
}

/// Wait for the acceptor's answer to offer `id` (bounded by `timeout` per reply).
fn await_reply(chan: &mut Channel, id: u64, offer_sent: Instant, timeout: Duration) -> Reply {
    let mut accepted: Option<Instant> = None;
    loop {
        let msg = match chan.poll() {
            Ok(m) => m,
            Err(e) if accepted.is_none() => return Reply::Back(e.to_string(), true),
            Err(e) => return Reply::InDoubt(e.to_string()),
        };
        match msg {
            // A late reply about an earlier offer: not ours to act on.
            Some(m) if m.conn_id() != id => {}
            Some(Message::Refuse { reason, .. }) if accepted.is_none() => {
                return Reply::Back(format!("refused by the acceptor: {reason:?}"), false)
            }
            Some(Message::Abort { .. }) if accepted.is_none() => {
                return Reply::Back("acceptor aborted".into(), false)
            }
            Some(Message::Accept { .. }) if accepted.is_none() => accepted = Some(Instant::now()),
            Some(Message::Activated { times, .. }) if accepted.is_some() => {
                return Reply::Activated(times)
            }
            Some(_) if accepted.is_none() => {
                return Reply::Back("unexpected reply to an offer".into(), true)
            }
            Some(_) => return Reply::InDoubt("unexpected message after Accept".into()),
            None => {
                let waited = accepted.unwrap_or(offer_sent).elapsed();
                if waited > timeout {
                    return match accepted {
                        None => Reply::Back("no reply from the acceptor in time".into(), true),
                        Some(_) => Reply::InDoubt("no Activated in time".into()),
                    };
                }
                let left = (timeout - waited).min(Duration::from_millis(5));
                // Errors need no handling: the loop polls the channel again either way.
                let _ = ds_stack::device::wait_readable(&[chan.stream().as_raw_fd()], Some(left));
            }
        }
    }
}

/// Read what the client sent and write the response, at most up to the quota.
fn serve(c: &mut Conn, quota: Option<u64>) -> Verdict {
    let mut buf = [0u8; 16 * 1024];
    while c.http.wants_input() {
        let room = c.http.input_room().clamp(1, buf.len());
        match c.sock.read(&mut buf[..room]) {
            Ok(0) => {
                c.http.feed_eof();
                c.eof = true;
                break;
            }
            Ok(n) => c.http.feed(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(client = %c.client, "receive: {e}");
                return Verdict::Close;
            }
        }
    }
    loop {
        let left = quota.map(|q| q.saturating_sub(c.sent_here));
        let chunk = match c.http.poll_transmit() {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!("aborting a response: {e}");
                return Verdict::Close;
            }
        };
        if chunk.is_empty() {
            break;
        }
        // Never write more than the quota allows, so the handoff point is byte-exact.
        let cap = left.map_or(chunk.len(), |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(chunk.len())
        });
        if cap == 0 {
            return Verdict::Quota;
        }
        match c.sock.write(&chunk[..cap]) {
            Ok(0) => break,
            Ok(n) => {
                c.http.advance(n);
                c.sent_here += n as u64;
                if quota.is_some_and(|q| c.sent_here >= q) {
                    return Verdict::Quota;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(client = %c.client, "send: {e}");
                return Verdict::Close;
            }
        }
    }
    if !c.fin && c.http.is_finished() {
        if let Err(e) = c.sock.shutdown(std::net::Shutdown::Write) {
            tracing::debug!(client = %c.client, "shutdown: {e}");
            return Verdict::Close;
        }
        c.fin = true;
    }
    if c.fin && c.eof {
        return Verdict::Close;
    }
    Verdict::Continue
}
