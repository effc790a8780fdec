//! The library's node: one userspace TCP/IPv6 stack on a device, a listener on the DS
//! address, the application's connections, and the handoff engine moving them to and from
//! the peer.

use crate::engine::{Coordinator, HandoffConfig, NodeEvent, NodeStats, Steering};
use crate::policy::{Chooser, Placement, Policy};
use crate::readiness::Readiness;
use crate::ro::{RouteOptimisation, Ticket};
use crate::{ClusterSecret, Error, HandoffReport};
use ds_handoff::{Drain, Mode, Service, UserConn, UserHost};
use ds_stack::runner::{Clock, Runner};
pub use ds_stack::TcpState;
use ds_stack::{Config, Interface, ListenHandle, TcpHandle};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Hashing for the node's own small keys (connection ids, stack handles): a multiplicative
/// hash (Fibonacci hashing), since SipHash's DoS resistance buys nothing for keys the node
/// makes itself and costs a measurable share of a small request's time.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A connection on a [`Node`]: a number that is never reused by the node that gave it. A
/// connection that moves to another node gets a new one there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The link the node's stack runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// AF_XDP sockets on a network interface, behind the XDP steering program (needs root;
    /// the fast path).
    AfXdp {
        /// The network interface.
        iface: String,
    },
    /// A TAP interface (created if missing; needs root or CAP_NET_ADMIN).
    Tap {
        /// The TAP interface's name.
        iface: String,
    },
    /// The kernel's own sockets ([`Builder::build_kernel`]); the XDP steering program on
    /// this interface holds moving connections' packets.
    Kernel {
        /// The network interface.
        iface: String,
    },
}

impl Device {
    /// AF_XDP on `iface`.
    pub fn afxdp(iface: impl Into<String>) -> Self {
        Device::AfXdp {
            iface: iface.into(),
        }
    }

    /// The TAP interface `iface`.
    pub fn tap(iface: impl Into<String>) -> Self {
        Device::Tap {
            iface: iface.into(),
        }
    }
}

/// One receive queue of an AF_XDP device, for one [`Node`] of several in a process
/// ([`Builder::open_queues`], [`Builder::queue`]): each node runs its own stack and handoff
/// engine on its own thread, sharing nothing with the others (several cores). The device's
/// queue picks a flow's node; a segment that reaches another node than its connection's is
/// passed round to it (`ds_stack::runner::siblings`). `Send`: move each to its thread.
pub struct Queue {
    dev: ds_xdp::device::AfXdpDevice,
    link: ds_stack::runner::SiblingLink,
    /// Shared by the queues' stacks: any of them can check another's SYN cookie.
    isn_secret: [u8; 16],
    /// Shared by the queues' handoff engines (flow generations stay above the last).
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    index: usize,
    of: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("of", &self.of)
            .field("queues", &self.dev.queue_ids())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// This queue's place among the device's (0-based) and how many there are.
    pub fn index(&self) -> (usize, usize) {
        (self.index, self.of)
    }
}

/// A connection handed to the application by [`Node::accept`].
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub conn: ConnId,
    /// The client's end.
    pub peer: SocketAddrV6,
    /// `None` for a new client; for a connection handed over by another node, the state that
    /// node gave with it ([`Node::handoff`]).
    pub state: Option<Vec<u8>>,
}

impl Accepted {
    /// The travelling state as a serde value (encoded by [`Node::handoff_value`]); `None` for
    /// a new client.
    pub fn state_value<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, Error>> {
        self.state.as_ref().map(|s| {
            postcard::from_bytes(s).map_err(|e| Error::Handoff {
                conn: self.conn,
                cause: format!("state does not decode: {e}"),
            })
        })
    }
}

/// What happened to connections outside the application's calls.
#[derive(Debug)]
pub enum Event {
    /// The connection now runs on another node (it is gone from this one).
    HandedOff {
        /// The connection (no longer valid here).
        conn: ConnId,
        /// The seven phase timings.
        report: Box<HandoffReport>,
        /// The client.
        client: SocketAddrV6,
        /// The client's sequence number where the acceptor's first byte starts (to match the
        /// report with a packet capture).
        boundary_seq: u32,
    },
    /// A handoff did not happen; the connection continues here and may be used again.
    KeptHere {
        /// The connection.
        conn: ConnId,
        /// Whether the handoff was tried (the connection frozen and offered, then resumed);
        /// false when it could not start (no peer could take it now: backing off after
        /// failures, unreachable, no route-optimisation ticket).
        tried: bool,
        /// Why.
        cause: String,
    },
    /// A handoff ended in doubt: the connection is no longer here and may not be anywhere.
    Lost {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: String,
    },
    /// An offer from another node was refused here.
    Declined {
        /// Why.
        cause: String,
    },
    /// Route-optimised acceptor: the client acknowledged the Binding Update sent for a
    /// connection that arrived (binding management, handoff phase 6, ends here).
    Bound {
        /// The client (the correspondent).
        client: Ipv6Addr,
        /// Since the Binding Update left.
        after: Duration,
    },
    /// Steering ahead ([`crate::HandoffConfig::steer_ahead`]): the home agent did not apply
    /// the flow move of a connection that arrived (a newer handoff of the flow outranked it,
    /// or it was refused or unanswered); the connection runs here.
    SteerRefused {
        /// The client.
        client: Ipv6Addr,
        /// Why.
        detail: String,
    },
    /// The home agent answered [`Node::rebind`].
    Rebound {
        /// Whether new flows now go to the node asked for.
        ok: bool,
        /// Why not.
        detail: String,
    },
}

impl Event {
    /// The connection a handoff outcome is about (`None` for the node-wide events).
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Event::HandedOff { conn, .. }
            | Event::KeptHere { conn, .. }
            | Event::Lost { conn, .. } => Some(*conn),
            Event::Declined { .. }
            | Event::Rebound { .. }
            | Event::Bound { .. }
            | Event::SteerRefused { .. } => None,
        }
    }
}

/// Settings of a [`Node`]; see [`Node::builder`].
#[derive(Debug)]
pub struct Builder {
    ds_addr: Option<Ipv6Addr>,
    care_of: Option<Ipv6Addr>,
    device: Option<Device>,
    mac: Option<[u8; 6]>,
    gateway: Option<Ipv6Addr>,
    routes: Vec<ds_stack::iface::Route>,
    port: u16,
    secret_file: Option<PathBuf>,
    secret: Option<ClusterSecret>,
    home_agent: Option<SocketAddr>,
    control_listen: Option<SocketAddr>,
    peers: Vec<SocketAddr>,
    service: String,
    policy: Policy,
    drain: Drain,
    /// Every engine setting at once ([`Builder::engine`]).
    engine: Option<HandoffConfig>,
    /// More addresses of this node ([`Builder::also_addr`]).
    also: Vec<Ipv6Addr>,
    /// Receive queues to open ([`Builder::queue_count`]); `None`: all.
    queue_count: Option<usize>,
    /// TCP super-frames on the AF_XDP device ([`Builder::super_frames`]).
    super_frames: bool,
    /// Route-optimised steering ([`Builder::route_optimised`]): away from home or not.
    ro_away: Option<bool>,
    reply_timeout: Duration,
    /// [`Builder::steer_ahead`].
    steer_ahead: bool,
    backlog: usize,
    queue: Option<Queue>,
}

impl Builder {
    /// The distributed server's address, which clients connect to.
    pub fn ds_addr(mut self, a: Ipv6Addr) -> Self {
        self.ds_addr = Some(a);
        self
    }

    /// This node's own (care-of) address. With one, the DS address is shared by every node
    /// and reached through the home agent; without, this node owns the DS address alone.
    pub fn care_of(mut self, a: Ipv6Addr) -> Self {
        self.care_of = Some(a);
        self
    }

    /// The link the stack runs on.
    pub fn device(mut self, d: Device) -> Self {
        self.device = Some(d);
        self
    }

    /// The stack's MAC address (default: derived from this node's address).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    /// The default router of the userspace stack (RFC 4861 §5.2 next-hop choice): clients
    /// off this node's link are reached through it. Default: none, every destination is on
    /// the link. (Kernel sockets use the kernel's routes.)
    pub fn gateway(mut self, router: Ipv6Addr) -> Self {
        self.gateway = Some(router);
        self
    }

    /// A route of the userspace stack: destinations in its prefix are reached through its
    /// router (longest prefix first, before the [`gateway`](Self::gateway); RFC 4861 §5.2).
    /// Repeat for more.
    pub fn route(mut self, route: ds_stack::iface::Route) -> Self {
        self.routes.push(route);
        self
    }

    /// The TCP port served on the DS address (default 80).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The cluster secret keying the control channels, read from a file (at least 16 bytes).
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_file = Some(path.into());
        self
    }

    /// The cluster secret itself.
    pub fn secret(mut self, s: ClusterSecret) -> Self {
        self.secret = Some(s);
        self
    }

    /// The home agent's flow agent (transparent steering: each handed-off flow is tunnelled
    /// to its new node by the home agent).
    pub fn home_agent(mut self, a: SocketAddr) -> Self {
        self.home_agent = Some(a);
        self
    }

    /// Where this node accepts connections handed over by other nodes (a kernel TCP socket
    /// on the nodes' control network).
    pub fn control_listen(mut self, a: SocketAddr) -> Self {
        self.control_listen = Some(a);
        self
    }

    /// Another node, by its control address: connections may be handed to it. Call once per
    /// node (the membership service will give the cluster).
    pub fn peer(mut self, a: SocketAddr) -> Self {
        self.peers.push(a);
        self
    }

    /// The service name: a node accepts only connections offered for its own service
    /// (default "app").
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// The distribution policy of [`Node::place`] (default [`Policy::Local`]).
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }

    /// Hand off immediately instead of first waiting (up to 100 ms) until the client has
    /// acknowledged what was sent.
    pub fn drain_immediately(mut self) -> Self {
        self.drain = Drain::Immediate;
        self
    }

    /// How long a handoff waits for each answer of the other node before the connection is
    /// taken back (default 1 s).
    pub fn reply_timeout(mut self, t: Duration) -> Self {
        self.reply_timeout = t;
        self
    }

    /// With a [`Builder::home_agent`]: as the acceptor, commit a handoff as soon as the flow
    /// move is sent, without waiting for the home agent's answer
    /// ([`HandoffConfig::steer_ahead`]; its answer comes later as [`Event::Bound`] or
    /// [`Event::SteerRefused`]). Without a home agent it changes nothing.
    pub fn steer_ahead(mut self) -> Self {
        self.steer_ahead = true;
        self
    }

    /// Every handoff-engine setting at once, for a daemon that exposes them all (fault
    /// injection, busy-polling, route-optimised steering with its mobile role, a shared
    /// flow-generation clock): replaces [`Builder::secret`], [`Builder::secret_file`],
    /// [`Builder::peer`], [`Builder::control_listen`], [`Builder::home_agent`],
    /// [`Builder::service`], [`Builder::drain_immediately`], [`Builder::reply_timeout`] and
    /// [`Builder::steer_ahead`].
    /// With [`HandoffConfig::mobile_role`] set, the role becomes the stack's mobility hook and
    /// handoffs carry the home keygen ticket (RFC 6275 §5.2.5).
    pub fn engine(mut self, cfg: HandoffConfig) -> Self {
        self.engine = Some(cfg);
        self
    }

    /// Route-optimised steering (RFC 6275 route optimisation: the clients are correspondent
    /// nodes, e.g. the `ds-stack` client role, and talk to whichever node holds their
    /// connection directly). Not away from home (`away: false`), this node is the contact node:
    /// it owns the DS address as its home address and runs the home test when a connection is
    /// to leave (its home keygen ticket goes with the connection, §5.2.5). Away from home
    /// (`away: true`, the care-of address is required) the node does not own the DS address:
    /// it serves connections handed to it under the DS address as a home address, from its
    /// care-of address, after a Binding Update to the client (§11.7.2). Instead of
    /// [`Builder::home_agent`].
    ///
    /// ```no_run
    /// # fn build() -> Result<(), dserver::Error> {
    /// use dserver::{Device, Node};
    /// // A node away from home; the contact node has `.route_optimised(false)`.
    /// let node = Node::builder()
    ///     .ds_addr("fd00:80::80".parse().unwrap())
    ///     .care_of("fd00:1::2".parse().unwrap())
    ///     .device(Device::afxdp("eth0"))
    ///     .secret_file("/etc/dserver/secret")
    ///     .control_listen("[fd00:1::2]:7000".parse().unwrap())
    ///     .peer("[fd00:1::1]:7000".parse().unwrap())
    ///     .route_optimised(true)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn route_optimised(mut self, away: bool) -> Self {
        self.ro_away = Some(away);
        self
    }

    /// One more address of this node's (besides the DS and care-of addresses), reached like
    /// them.
    pub fn also_addr(mut self, a: Ipv6Addr) -> Self {
        self.also.push(a);
        self
    }

    /// [`Builder::open_queues`] opens the first `n` receive queues (default: all of them).
    pub fn queue_count(mut self, n: usize) -> Self {
        self.queue_count = Some(n);
        self
    }

    /// Whether the device (AF_XDP or TAP) takes new TCP data as super-frames of up to 64 KiB
    /// that the kernel segments (default: yes; `ds_xdp::gso_tx`, `IFF_VNET_HDR`). Off: one
    /// frame per segment, for a driver that mishandles the segmentation requests, or to
    /// measure what super-frames bring.
    ///
    /// ```no_run
    /// use dserver::{Device, Node};
    /// # fn main() -> Result<(), dserver::Error> {
    /// let node = Node::builder()
    ///     .ds_addr("fd00:80::80".parse().unwrap())
    ///     .device(Device::AfXdp { iface: "eth0".into() })
    ///     .super_frames(false) // one frame per TCP segment
    ///     .build()?;
    /// # let _ = node; Ok(()) }
    /// ```
    pub fn super_frames(mut self, on: bool) -> Self {
        self.super_frames = on;
        self
    }

    /// Connections waiting for [`Node::accept`] at most (default 1024).
    pub fn backlog(mut self, n: usize) -> Self {
        self.backlog = n;
        self
    }

    /// Open the AF_XDP device ([`Builder::device`]) with one [`Queue`] per receive queue of
    /// the interface, for a node per queue, each on its own core: give each to a builder of
    /// its own ([`Builder::queue`]) in its own thread. The other settings are the node's
    /// (every queue's builder has the same addresses, port, peers and control address; the
    /// control port is shared with `SO_REUSEPORT`).
    ///
    /// ```no_run
    /// use dserver::{Device, Node};
    /// # fn main() -> Result<(), dserver::Error> {
    /// let node = || Node::builder()
    ///     .ds_addr("fd00:80::80".parse().unwrap())
    ///     .care_of("fd00:1::1".parse().unwrap())
    ///     .device(Device::afxdp("eth0"));
    /// let workers: Vec<_> = node()
    ///     .open_queues()?
    ///     .into_iter()
    ///     .map(|q| std::thread::spawn(move || -> Result<(), dserver::Error> {
    ///         let mut n = node().queue(q).build()?;
    ///         loop {
    ///             let c = n.accept()?;
    ///             let _ = n.write(c.conn, b"hello from one core\n");
    ///             let _ = n.close(c.conn);
    ///         }
    ///     }))
    ///     .collect();
    /// # Ok(()) }
    /// ```
    pub fn open_queues(&self) -> Result<Vec<Queue>, Error> {
        let (_, addrs) = self.addresses()?;
        let Some(Device::AfXdp { iface }) = &self.device else {
            return Err(Error::Config(
                "one node per receive queue needs the AF_XDP device".into(),
            ));
        };
        let mut cfg = ds_xdp::device::AfXdpConfig::new(addrs);
        cfg.gso = self.super_frames;
        if let Some(n) = self.queue_count {
            cfg.queues = u32::try_from(n).unwrap_or(u32::MAX);
        }
        let devs =
            ds_xdp::device::AfXdpDevice::open_per_queue(iface, &cfg).map_err(|e| Error::Io {
                what: format!("AF_XDP on {iface} (needs root and no other XDP program)"),
                source: io::Error::other(e),
            })?;
        let links = ds_stack::runner::siblings(devs.len()).map_err(|source| Error::Io {
            what: "sibling links".into(),
            source,
        })?;
        let isn_secret = ds_stack::isn::random_secret();
        let generation = crate::engine::new_generation_clock();
        let of = devs.len();
        Ok(devs
            .into_iter()
            .zip(links)
            .enumerate()
            .map(|(index, (dev, link))| Queue {
                dev,
                link,
                isn_secret,
                generation: generation.clone(),
                index,
                of,
            })
            .collect())
    }

    /// Serve one receive queue ([`Builder::open_queues`]) instead of opening the device.
    ///
    /// With route-optimised steering only the first queue's node takes the control port's
    /// offers (the control listener of the others is closed): it adopts every connection
    /// that arrives, so one mobile role holds the bindings towards the clients.
    pub fn queue(mut self, q: Queue) -> Self {
        self.queue = Some(q);
        self
    }

    fn handoff_config(&mut self) -> Result<Option<HandoffConfig>, Error> {
        if let Some(cfg) = self.engine.take() {
            if self.ro_away.is_some() || self.home_agent.is_some() {
                return Err(Error::Config(
                    "steering is part of the engine configuration given to engine()".into(),
                ));
            }
            self.service = cfg.service.clone();
            self.peers = cfg.peer.into_iter().chain(cfg.more_peers.clone()).collect();
            return Ok(Some(cfg));
        }
        let wanted =
            self.control_listen.is_some() || !self.peers.is_empty() || self.home_agent.is_some();
        let secret = match (self.secret.take(), &self.secret_file) {
            (Some(s), _) => Some(s),
            (None, Some(p)) => Some(
                ClusterSecret::from_file(p)
                    .map_err(|e| Error::Config(format!("secret file {}: {e}", p.display())))?,
            ),
            (None, None) => None,
        };
        if !wanted {
            return Ok(None);
        }
        let secret = secret.ok_or_else(|| {
            Error::Config("handing off needs the cluster secret (secret_file)".into())
        })?;
        let mut cfg = HandoffConfig::new(secret);
        cfg.service = self.service.clone();
        // Route-optimised, the queues after the first take no offers (see `build`): no
        // listener that would take a peer's channel only to drop it.
        let offers = self.ro_away.is_none() || self.queue.as_ref().is_none_or(|q| q.index == 0);
        if let Some(l) = self.control_listen.filter(|_| offers) {
            let shared = self.queue.is_some();
            cfg.listen = Some(
                crate::engine::control_listener(l, shared).map_err(|source| Error::Io {
                    what: format!("control_listen {l}"),
                    source,
                })?,
            );
        }
        cfg.peer = self.peers.first().copied();
        cfg.more_peers = self.peers.iter().skip(1).copied().collect();
        cfg.drain = self.drain;
        cfg.reply_timeout = self.reply_timeout;
        cfg.steer_ahead = self.steer_ahead;
        if let Some(ha) = self.home_agent {
            let coa = self.care_of.ok_or_else(|| {
                Error::Config("a home agent needs this node's care_of address".into())
            })?;
            cfg.steering = Steering::HomeAgentFlow { ha, coa };
        }
        if let Some(away) = self.ro_away {
            if self.home_agent.is_some() {
                return Err(Error::Config(
                    "route-optimised steering replaces the home agent's: not both".into(),
                ));
            }
            let (ds, _) = self.addresses()?;
            cfg.mode = Mode::Ro;
            // One role for both directions: it steers connections that arrive (a Binding
            // Update away from home, a deregistration at home) and gives the home keygen
            // ticket to connections that leave.
            cfg.mobile_role = Some(ds_stack::mobile::MobileRole::new(
                ds,
                if away { self.care_of } else { None },
            ));
            if away {
                cfg.takeover = ds_handoff::Takeover::HomeAddress;
            }
            cfg.steering = Steering::RouteOptimised {
                lifetime: Duration::from_secs(120),
            };
        }
        Ok(Some(cfg))
    }

    /// A node for a server whose connections are kernel sockets (device
    /// [`Device::Kernel`]): it hands them off and takes connections over, as sockets. It
    /// needs a peer or a control listener (handing off is all it does).
    pub fn build_kernel(mut self) -> Result<crate::KernelNode, Error> {
        let Some(Device::Kernel { iface }) = self.device.take() else {
            return Err(Error::Config("build_kernel needs Device::Kernel".into()));
        };
        let (_, addrs) = self.addresses()?;
        let cfg = self.handoff_config()?.ok_or_else(|| {
            Error::Config("a kernel node needs a peer or a control listener".into())
        })?;
        crate::kernel::KernelNode::new(&iface, &addrs, cfg)
    }

    /// The DS address and the stack's addresses (care-of first), checked.
    fn addresses(&self) -> Result<(Ipv6Addr, Vec<Ipv6Addr>), Error> {
        let ds = self
            .ds_addr
            .ok_or_else(|| Error::Config("ds_addr is required".into()))?;
        for a in std::iter::once(ds).chain(self.care_of) {
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
                return Err(Error::Config(format!("{a}: need a unicast address")));
            }
        }
        for a in &self.also {
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || *a == ds {
                return Err(Error::Config(format!(
                    "{a}: need a unicast address other than the DS address"
                )));
            }
        }
        // Away from home the DS address is a home address only, not the stack's own.
        let owned = (self.ro_away != Some(true)).then_some(ds);
        if self.ro_away == Some(true) && self.care_of.is_none() {
            return Err(Error::Config(
                "route-optimised away from home needs this node's care_of address".into(),
            ));
        }
        Ok((
            ds,
            self.care_of
                .into_iter()
                .chain(owned)
                .chain(self.also.iter().copied())
                .collect(),
        ))
    }

    /// Open the device, listen on the DS address and connect to the cluster.
    pub fn build(mut self) -> Result<Node, Error> {
        let (_, addrs) = self.addresses()?;
        if self.queue.is_some() {
            // Settings first (the control port is shared by the queues' nodes).
            let mut handoff = self.handoff_config()?;
            if let Some(q) = self.queue.take() {
                if let Some(h) = handoff.as_mut() {
                    if h.mode == Mode::Ro && q.index != 0 {
                        // Route-optimised, the first queue's node adopts every connection
                        // offered: its mobile role holds the bindings, and the client's
                        // segments to the care-of address reach it round the siblings. The
                        // others keep their roles for what they give away (the home test
                        // that yields the ticket); the correspondent's answers reach them
                        // round the siblings too.
                        if h.listen.take().is_some() {
                            tracing::info!(
                                queue = q.index,
                                "route-optimised: only the first queue takes offers; this \
                                 queue's control listener is closed"
                            );
                        }
                    }
                    h.generation = Some(q.generation.clone());
                }
                tracing::info!(queue = q.index, of = q.of, "device queue taken");
                return self.finish_queue(q, handoff);
            }
        }
        let device = self
            .device
            .take()
            .ok_or_else(|| Error::Config("device is required".into()))?;
        // Settings first, so a mistake fails before any device is touched.
        let handoff = self.handoff_config()?;
        let dev: Box<dyn ds_stack::device::Device> = match &device {
            Device::AfXdp { iface } => {
                let mut cfg = ds_xdp::device::AfXdpConfig::new(addrs.clone());
                cfg.gso = self.super_frames;
                Box::new(
                    ds_xdp::device::AfXdpDevice::open(iface, &cfg).map_err(|e| Error::Io {
                        what: format!("AF_XDP on {iface} (needs root and no other XDP program)"),
                        source: io::Error::other(e),
                    })?,
                )
            }
            Device::Kernel { .. } => {
                return Err(Error::Config(
                    "kernel sockets are served by build_kernel".into(),
                ))
            }
            Device::Tap { iface } => Box::new(
                ds_stack::device::TapDevice::open_with(iface, self.super_frames).map_err(
                    |source| Error::Io {
                        what: format!("TAP device {iface}"),
                        source,
                    },
                )?,
            ),
        };
        tracing::info!(?device, "device open");
        self.finish(dev, handoff)
    }

    /// A node on a device of the caller's (an in-memory link in tests and benchmarks, a
    /// device of its own); the [`Builder::device`] setting is not used.
    pub fn build_on(mut self, dev: Box<dyn ds_stack::device::Device>) -> Result<Node, Error> {
        self.addresses()?;
        let handoff = self.handoff_config()?;
        self.finish(dev, handoff)
    }

    fn finish_queue(self, q: Queue, handoff: Option<HandoffConfig>) -> Result<Node, Error> {
        let Queue {
            dev,
            link,
            isn_secret,
            index,
            ..
        } = q;
        // (The generation clock went into `handoff` in `build`.)
        self.finish_with(Box::new(dev), handoff, Some((link, isn_secret, index)))
    }

    fn finish(
        self,
        dev: Box<dyn ds_stack::device::Device>,
        handoff: Option<HandoffConfig>,
    ) -> Result<Node, Error> {
        self.finish_with(dev, handoff, None)
    }

    fn finish_with(
        self,
        dev: Box<dyn ds_stack::device::Device>,
        handoff: Option<HandoffConfig>,
        queue: Option<(ds_stack::runner::SiblingLink, [u8; 16], usize)>,
    ) -> Result<Node, Error> {
        let (ds, addrs) = self.addresses()?;
        let own = addrs[0];
        let mac = self.mac.unwrap_or_else(|| crate::mac::mac_from_addr(own));
        let clock = Clock::new();
        let mut cfg = Config::new(mac, addrs);
        cfg.gateway = self.gateway;
        cfg.routes = self.routes.clone();
        if let Some((_, secret, index)) = &queue {
            cfg.isn_secret = *secret;
            // One correspondent role (RFC 6275 §9) per node, on the first queue: its keys,
            // nonces and bindings must be one set for a mobile client's messages, which hash
            // to any queue; the others pass those round to it.
            cfg.correspondent = *index == 0;
        }
        let iface = Interface::new(cfg, clock.now());
        let mut rt = Runner::with_clock(dev, iface, clock);
        if let Some((link, _, _)) = queue {
            rt.set_siblings(link);
        }
        // A shared DS address (a care-of address given) is reached on every address of ours.
        let listen_ip = if self.care_of.is_some() {
            Ipv6Addr::UNSPECIFIED
        } else {
            ds
        };
        let listener = rt
            .iface
            .tcp_listen(SocketAddrV6::new(listen_ip, self.port, 0, 0), self.backlog)
            .map_err(|e| Error::Config(format!("listen on port {}: {e}", self.port)))?;
        let mut mode = Mode::Transparent;
        let core = match handoff {
            Some(mut cfg) => {
                mode = cfg.mode;
                let mut c = Coordinator::new(&mut cfg)?;
                if let Some(role) = cfg.mobile_role.take() {
                    rt.iface.set_mobility_hook(Box::new(role));
                }
                // The peer may not be up yet: then the first handoff connects.
                if let Err(e) = c.connect_peer() {
                    tracing::info!("peer not reachable yet: {e}");
                }
                Some(c)
            }
            None => None,
        };
        let started = Instant::now();
        let started_stack = rt.now();
        tracing::info!(%ds, port = self.port, "node up");
        Ok(Node {
            rt,
            ds,
            listener: Some(listener),
            core,
            mode,
            ro: RouteOptimisation::default(),
            service: self.service,
            chooser: Chooser::new(self.policy),
            peers: self.peers,
            next_id: 1,
            conns: IdMap::default(),
            by_handle: IdMap::default(),
            accepted: VecDeque::new(),
            queue: VecDeque::new(),
            export: None,
            current: None,
            adopted: Vec::new(),
            events: VecDeque::new(),
            ready: Vec::new(),
            fds: Vec::new(),
            dev_fds: ds_stack::device::PollSet::default(),
            readiness: None,
            // Announce an address we own alone at start and twice more, since the device
            // may be bridged only after it exists (RFC 4861 §7.2.6 allows a few repeats); a
            // shared DS address is never announced (every node has it).
            announce: if self.care_of.is_some() {
                VecDeque::new()
            } else {
                [0, 1, 3].map(Duration::from_secs).into()
            },
            started,
            started_stack,
        })
    }
}

/// A connection's record.
#[derive(Debug)]
struct Entry {
    h: TcpHandle,
    peer: SocketAddrV6,
    /// Handed off, or waiting to be.
    leaving: bool,
    /// When it was accepted here (`None`: it came from another node). Route-optimised, the
    /// home keygen token that leaves with it must be younger (see [`RouteOptimisation::ticket`]).
    opened: Option<ds_stack::Instant>,
}

/// A UDP socket of a [`Node`] ([`Node::udp_bind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSocketId(ds_stack::UdpHandle);

/// A member of a distributed server running the userspace stack (see the crate
/// documentation).
pub struct Node {
    rt: Runner<Box<dyn ds_stack::device::Device>>,
    /// The DS address.
    ds: Ipv6Addr,
    listener: Option<ListenHandle>,
    core: Option<Coordinator<UserConn>>,
    /// How moved flows are steered ([`HandoffConfig::mode`]).
    mode: Mode,
    /// Route-optimised: the home test and the bindings of connections leaving.
    ro: RouteOptimisation,
    service: String,
    chooser: Chooser,
    peers: Vec<SocketAddr>,
    next_id: u64,
    conns: IdMap<ConnId, Entry>,
    by_handle: IdMap<TcpHandle, ConnId>,
    accepted: VecDeque<Accepted>,
    /// Connections waiting for their handoff (one runs at a time), with their state and
    /// the node they go to (`None`: the peers in turn).
    queue: VecDeque<(ConnId, Vec<u8>, Option<SocketAddr>)>,
    /// The state of the connection whose handoff is starting, for the engine's export.
    export: Option<Vec<u8>>,
    /// The connection whose handoff the engine runs now (its outcome not yet taken).
    current: Option<ConnId>,
    /// Connections the engine handed to the service in the last round, with their state:
    /// arrivals, and connections whose handoff failed and that came back.
    adopted: Vec<(TcpHandle, Vec<u8>)>,
    events: VecDeque<Event>,
    ready: Vec<TcpHandle>,
    fds: Vec<RawFd>,
    /// The device's descriptors, for the readiness set (kept to avoid an allocation a poll).
    dev_fds: ds_stack::device::PollSet,
    readiness: Option<Readiness>,
    announce: VecDeque<Duration>,
    started: Instant,
    /// `started` on the stack's clock.
    started_stack: ds_stack::Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("service", &self.service)
            .field("connections", &self.conns.len())
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// The engine's view of the application: it exports the state the application gave to
/// [`Node::handoff`] and collects what is adopted for the node to sort out (it has no access
/// to the interface while the engine holds it).
struct AppService<'a> {
    name: &'a str,
    export: &'a mut Option<Vec<u8>>,
    adopted: &'a mut Vec<(TcpHandle, Vec<u8>)>,
}

impl Service<UserConn> for AppService<'_> {
    fn accepts(&self, name: &str) -> bool {
        name == self.name
    }

    fn export(&mut self, _conn: &UserConn) -> Result<Vec<u8>, String> {
        self.export
            .take()
            .ok_or_else(|| "no application state for this connection".into())
    }

    fn adopt(&mut self, conn: UserConn, state: &[u8]) -> Result<(), (UserConn, String)> {
        match conn.handle() {
            Some(h) => {
                self.adopted.push((h, state.to_vec()));
                Ok(())
            }
            None => Err((conn, "not a live connection".into())),
        }
    }
}

/// A stack error as the `std::io` error a socket would give.
fn io_error(e: ds_stack::Error) -> io::Error {
    use ds_stack::Error as E;
    let kind = match e {
        E::Reset | E::Aborted => io::ErrorKind::ConnectionReset,
        E::Refused => io::ErrorKind::ConnectionRefused,
        E::TimedOut => io::ErrorKind::TimedOut,
        E::InvalidState => io::ErrorKind::BrokenPipe,
        E::InvalidHandle => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Node {
    /// Settings with their defaults: port 80, service "app", [`Policy::Local`], drain until
    /// acknowledged, 1 s reply timeout, backlog 1024.
    pub fn builder() -> Builder {
        Builder {
            ds_addr: None,
            care_of: None,
            device: None,
            mac: None,
            gateway: None,
            routes: Vec::new(),
            port: 80,
            secret_file: None,
            secret: None,
            home_agent: None,
            control_listen: None,
            peers: Vec::new(),
            service: "app".into(),
            policy: Policy::Local,
            drain: Drain::UntilAcked {
                deadline: Duration::from_millis(100),
            },
            engine: None,
            also: Vec::new(),
            queue_count: None,
            super_frames: true,
            ro_away: None,
            reply_timeout: Duration::from_secs(1),
            steer_ahead: false,
            backlog: 1024,
            queue: None,
        }
    }

    /// Wait up to `timeout` for input (frames, control messages), then process it: TCP,
    /// new connections, handoffs in both directions. Never blocks longer than `timeout`, and
    /// less when a timer is due.
    ///
    /// A non-blocking server with many connections (no thread per connection):
    ///
    /// ```no_run
    /// # fn serve(node: &mut dserver::Node) -> Result<(), dserver::Error> {
    /// use std::time::Duration;
    /// let mut ready = Vec::new();
    /// let mut buf = [0u8; 4096];
    /// loop {
    ///     let wait = node.poll_timeout().unwrap_or(Duration::from_millis(10));
    ///     node.poll(wait.min(Duration::from_millis(10)))?;
    ///     while let Some(c) = node.try_accept() {
    ///         ready.push(c.conn); // it may have data already
    ///     }
    ///     node.take_ready(&mut ready);
    ///     for c in ready.drain(..) {
    ///         match node.read(c, &mut buf) {
    ///             Ok(0) => { let _ = node.close(c); }
    ///             Ok(n) => { let _ = node.write(c, &buf[..n]); } // echo (a real server keeps what did not fit)
    ///             Err(_) => {} // nothing yet, or gone
    ///         }
    ///     }
    /// }
    /// # }
    /// ```
    pub fn poll(&mut self, timeout: Duration) -> Result<(), Error> {
        self.poll_with(timeout, &[])
    }

    /// [`Node::poll`], waking also when one of `extra` (the caller's own descriptors: a
    /// control socket, a pipe) turns readable, for a server whose one loop waits on the node
    /// and on those.
    pub fn poll_with(&mut self, timeout: Duration, extra: &[RawFd]) -> Result<(), Error> {
        self.fds.clear();
        self.fds.extend_from_slice(extra);
        let wait = match &self.core {
            Some(core) => {
                core.wait_fds(&mut self.fds);
                core.max_wait(Instant::now(), timeout)
            }
            None => timeout,
        };
        self.rt
            .step_with(wait, &self.fds)
            .map_err(|source| Error::Io {
                what: "device".into(),
                source,
            })?;
        // The engine reads only the control channels this wait found readable (a recvmsg per
        // channel per round otherwise, data-path rounds included).
        if let Some(core) = self.core.as_mut() {
            core.hint_readable(self.rt.readiness());
        }
        self.process();
        if self.readiness.is_some() {
            self.sync_readiness()?;
        }
        Ok(())
    }

    fn new_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    fn process(&mut self) {
        // The step just gave the interface the time: no clock read here.
        let now = self.rt.iface.now();
        let since = now.saturating_since(self.started_stack);
        while self.announce.front().is_some_and(|d| since >= *d) {
            self.announce.pop_front();
            self.rt.iface.announce(now);
        }
        if let Some(l) = self.listener {
            while let Some(h) = self.rt.iface.tcp_accept(l) {
                let Some((_, peer)) = self.rt.iface.tcp_endpoints(h) else {
                    continue;
                };
                let conn = self.new_id();
                self.conns.insert(
                    conn,
                    Entry {
                        h,
                        peer,
                        leaving: false,
                        opened: Some(now),
                    },
                );
                self.by_handle.insert(h, conn);
                self.accepted.push_back(Accepted {
                    conn,
                    peer,
                    state: None,
                });
            }
        }
        if self.core.is_some() {
            self.drive_engine(now);
        }
    }

    fn drive_engine(&mut self, now: ds_stack::Instant) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let mono = Instant::now();
        let mut host = UserHost::new(&mut self.rt.iface, now, Instant::now);
        let mut svc = AppService {
            name: &self.service,
            export: &mut self.export,
            adopted: &mut self.adopted,
        };
        core.poll(mono, &mut host, &mut svc);
        if self.mode == Mode::Ro {
            self.ro.observe(&mut self.rt.iface, core.events());
            RouteOptimisation::watch_binding(core, &self.rt.iface, now);
        }
        let evs = core.take_events();
        // Arrivals, and connections whose handoff failed (the donor resumed them: a new
        // handle for the same connection). Only the engine's outcome tells them apart: a
        // connection that left may come back as an arrival before its donor has the outcome
        // of its handoff (route-optimised, the acceptor reports after the binding).
        for (h, state) in std::mem::take(&mut self.adopted) {
            let Some((_, peer)) = self.rt.iface.tcp_endpoints(h) else {
                continue;
            };
            let resumed = evs
                .iter()
                .any(|e| matches!(e, NodeEvent::KeptHere { client, .. } if *client == peer));
            let back = if resumed {
                self.current
                    .filter(|c| self.conns.get(c).is_some_and(|e| e.peer == peer))
                    .or_else(|| self.leaving_of(peer))
            } else {
                None
            };
            match back {
                Some(conn) => {
                    if let Some(e) = self.conns.get_mut(&conn) {
                        self.by_handle.remove(&e.h);
                        e.h = h;
                        self.by_handle.insert(h, conn);
                    }
                }
                None => {
                    let conn = self.new_id();
                    self.conns.insert(
                        conn,
                        Entry {
                            h,
                            peer,
                            leaving: false,
                            opened: None,
                        },
                    );
                    self.by_handle.insert(h, conn);
                    self.accepted.push_back(Accepted {
                        conn,
                        peer,
                        state: Some(state),
                    });
                }
            }
        }
        for ev in evs {
            self.node_event(ev);
        }
        self.start_queued(now, mono);
    }

    /// Start the next queued handoff once the engine is free (one runs at a time).
    fn start_queued(&mut self, now: ds_stack::Instant, mono: Instant) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let mut not_started = Vec::new();
        // Not before the outcome of the last one was taken (it names `current`).
        while !core.handing_off() && self.current.is_none() {
            let Some((conn, state, wanted)) = self.queue.pop_front() else {
                break;
            };
            let Some(e) = self.conns.get(&conn) else {
                continue;
            };
            let (h, client, opened) = (e.h, e.peer, e.opened);
            let ready = match wanted {
                Some(to) => core.peer_ready(mono, to).map(|up| up.then_some(to)),
                None => core.pick_peer(mono, None),
            };
            let to = match ready {
                Ok(Some(to)) => to,
                Ok(None) => {
                    // Its channel is opening: in order, the queue waits for it.
                    self.queue.push_front((conn, state, wanted));
                    break;
                }
                Err(why) => {
                    not_started.push((conn, why));
                    continue;
                }
            };
            let ticket = if self.mode == Mode::Ro {
                match self
                    .ro
                    .ticket(&mut self.rt.iface, now, mono, client, opened)
                {
                    Ticket::Ready(t) => Some(t),
                    Ticket::Wait => {
                        self.queue.push_front((conn, state, wanted));
                        break;
                    }
                    Ticket::Missing(why) => {
                        not_started.push((conn, why.into()));
                        continue;
                    }
                }
            } else {
                None
            };
            let mut host = UserHost::new(&mut self.rt.iface, now, Instant::now);
            let mut svc = AppService {
                name: &self.service,
                export: &mut self.export,
                adopted: &mut self.adopted,
            };
            *svc.export = Some(state);
            match core.hand_off_to(mono, to, UserConn::Live(h), ticket, &mut host, &mut svc) {
                Ok(()) => self.current = Some(conn),
                Err(_) => {
                    *svc.export = None;
                    not_started.push((conn, "the handoff could not start (busy)".into()));
                }
            }
        }
        for (conn, cause) in not_started {
            if let Some(e) = self.conns.get_mut(&conn) {
                e.leaving = false;
            }
            tracing::debug!(%conn, "connection kept here: {cause}");
            self.events.push_back(Event::KeptHere {
                conn,
                tried: false,
                cause,
            });
        }
    }

    /// The connection whose handoff (the one in progress, `client`'s) just ended.
    fn outcome_of(&mut self, client: SocketAddrV6) -> Option<ConnId> {
        match self.current.take() {
            Some(c) if self.conns.get(&c).is_some_and(|e| e.peer == client) => Some(c),
            other => {
                self.current = other;
                self.leaving_of(client)
            }
        }
    }

    /// The leaving connection of `client`.
    fn leaving_of(&self, client: SocketAddrV6) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|(_, e)| e.leaving && e.peer == client)
            .map(|(c, _)| *c)
    }

    fn node_event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::HandedOff {
                report,
                client,
                boundary_seq,
            } => {
                if let Some(conn) = self.outcome_of(client) {
                    if let Some(e) = self.conns.remove(&conn) {
                        self.by_handle.remove(&e.h);
                    }
                    self.events.push_back(Event::HandedOff {
                        conn,
                        report: Box::new(report),
                        client,
                        boundary_seq,
                    });
                }
            }
            NodeEvent::KeptHere { client, cause } => {
                if let Some(conn) = self.outcome_of(client) {
                    if let Some(e) = self.conns.get_mut(&conn) {
                        e.leaving = false;
                    }
                    self.events.push_back(Event::KeptHere {
                        conn,
                        tried: true,
                        cause,
                    });
                }
            }
            NodeEvent::Failed { cause } => {
                // The handoff in progress ended in doubt: the connection is not here.
                if let Some(conn) = self.current.take() {
                    if let Some(e) = self.conns.remove(&conn) {
                        self.by_handle.remove(&e.h);
                    }
                    self.events.push_back(Event::Lost { conn, cause });
                }
            }
            NodeEvent::Declined { cause } => self.events.push_back(Event::Declined { cause }),
            NodeEvent::Rebound { ok, detail } => {
                self.events.push_back(Event::Rebound { ok, detail })
            }
            NodeEvent::Bound { client, after } => {
                self.events.push_back(Event::Bound { client, after })
            }
            NodeEvent::SteerRefused { client, detail } => self
                .events
                .push_back(Event::SteerRefused { client, detail }),
            NodeEvent::Adopted { .. } => {}
        }
    }

    /// The next new connection, or one handed over by another node, if there is one.
    pub fn try_accept(&mut self) -> Option<Accepted> {
        self.accepted.pop_front()
    }

    /// The next connection, waiting for one (running the node meanwhile).
    pub fn accept(&mut self) -> Result<Accepted, Error> {
        loop {
            if let Some(a) = self.try_accept() {
                return Ok(a);
            }
            self.poll(Duration::from_millis(10))?;
        }
    }

    /// Connections that saw input, send space, a close or a reset since the last call
    /// (appended to `out`), so a server with many connections visits only those.
    pub fn take_ready(&mut self, out: &mut Vec<ConnId>) {
        self.ready.clear();
        self.rt.iface.tcp_take_ready(&mut self.ready);
        out.extend(self.ready.iter().filter_map(|h| self.by_handle.get(h)));
    }

    fn live(&self, conn: ConnId) -> Result<TcpHandle, Error> {
        match self.conns.get(&conn) {
            None => Err(Error::NoConnection(conn)),
            Some(e) if e.leaving => Err(Error::Leaving(conn)),
            Some(e) => Ok(e.h),
        }
    }

    /// Read what arrived: `Ok(0)` at the end of the client's data, `WouldBlock` when nothing
    /// is there yet.
    pub fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> io::Result<usize> {
        let h = self.live(conn)?;
        match self.rt.iface.tcp_recv(h, buf) {
            Ok(0) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            // What the read made due (a window update) goes at the next poll, which
            // `poll_timeout` asks for at once.
            Ok(n) => Ok(n),
            Err(ds_stack::Error::Eof) => Ok(0),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Queue bytes to send: how many the send buffer took, `WouldBlock` when it is full.
    pub fn write(&mut self, conn: ConnId, buf: &[u8]) -> io::Result<usize> {
        let h = self.live(conn)?;
        match self.rt.iface.tcp_send(h, buf) {
            Ok(0) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            // Sent at the next poll, which `poll_timeout` asks for at once (no flush here:
            // a clock read per call is a tenth of a small exchange's cost).
            Ok(n) => Ok(n),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Close the connection (a FIN follows what was written) and forget it.
    pub fn close(&mut self, conn: ConnId) -> Result<(), Error> {
        let h = self.live(conn)?;
        let _ = self.rt.iface.tcp_close(h);
        self.rt.iface.tcp_release(h);
        self.conns.remove(&conn);
        self.by_handle.remove(&h);
        // The FIN goes now (best effort: the next poll sends it otherwise).
        let _ = self.rt.flush();
        Ok(())
    }

    /// The client's end of a connection.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddrV6> {
        self.conns.get(&conn).map(|e| e.peer)
    }

    /// Our end of a connection (the DS address, or another of the node's).
    pub fn local_addr(&self, conn: ConnId) -> Option<SocketAddrV6> {
        let e = self.conns.get(&conn)?;
        self.rt.iface.tcp_endpoints(e.h).map(|(l, _)| l)
    }

    /// The TCP state of a connection here (RFC 9293 §3.3.2), `None` once it is gone.
    pub fn tcp_state(&self, conn: ConnId) -> Option<TcpState> {
        let e = self.conns.get(&conn)?;
        self.rt.iface.tcp_state(e.h)
    }

    /// Bytes [`Node::write`] would take now (0 for a connection not usable here).
    pub fn send_space(&self, conn: ConnId) -> usize {
        self.live(conn)
            .map_or(0, |h| self.rt.iface.tcp_send_space(h))
    }

    /// Bytes written and not yet acknowledged by the client (what the connection holds in
    /// memory here).
    pub fn send_queued(&self, conn: ConnId) -> usize {
        self.live(conn)
            .map_or(0, |h| self.rt.iface.tcp_send_queued(h))
    }

    /// Reset the connection and forget it (one waiting for its handoff too, not the one
    /// being handed off now).
    pub fn abort(&mut self, conn: ConnId) -> Result<(), Error> {
        if self.current != Some(conn) {
            self.queue.retain(|(c, _, _)| *c != conn);
            if let Some(e) = self.conns.get_mut(&conn) {
                e.leaving = false;
            }
        }
        let h = self.live(conn)?;
        let _ = self.rt.iface.tcp_abort(h);
        self.rt.iface.tcp_release(h);
        self.conns.remove(&conn);
        self.by_handle.remove(&h);
        Ok(())
    }

    /// Whether new clients are still accepted ([`Node::stop_accepting`]).
    pub fn is_accepting(&self) -> bool {
        self.listener.is_some()
    }

    /// Open connections (including ones leaving).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A blocking view of a connection, implementing [`Read`] and [`Write`]: a call that
    /// would block runs the node (every connection, and handoffs) until it can go on.
    pub fn stream(&mut self, conn: ConnId) -> Stream<'_> {
        Stream { node: self, conn }
    }

    /// Where the client whose request begins with `first` should be served, per the
    /// node's [`Policy`].
    ///
    /// Content-aware placement, the seed's "client-specific processing":
    ///
    /// ```no_run
    /// # fn build() -> Result<(), dserver::Error> {
    /// use dserver::{Device, Node, Placement, Policy};
    /// let video = "[fd00:1::12]:7000".parse().unwrap();
    /// let mut node = Node::builder()
    ///     .ds_addr("fd00:80::80".parse().unwrap())
    ///     .device(Device::afxdp("eth0"))
    ///     .secret_file("/etc/dserver/secret")
    ///     .peer(video)
    ///     .policy(Policy::Callback(Box::new(move |first: &[u8]| {
    ///         if first.starts_with(b"GET /video/") {
    ///             Placement::Node(video)
    ///         } else {
    ///             Placement::Here
    ///         }
    ///     })))
    ///     .build()?;
    /// let c = node.accept()?;
    /// let mut head = vec![0u8; 1024];
    /// let n = node.stream(c.conn).read(&mut head)?;
    /// if let Placement::Node(to) = node.place(&head[..n]) {
    ///     // The request read so far goes with the connection.
    ///     node.handoff(c.conn, to, head[..n].to_vec())?;
    /// }
    /// # Ok(()) }
    /// # use std::io::Read;
    /// ```
    pub fn place(&mut self, first: &[u8]) -> Placement {
        let here = self.conns.len();
        self.chooser.place(first, &self.peers, here)
    }

    /// The other nodes, by control address.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// Start handing `conn` to the node at `to` with the application's `state` (any bytes,
    /// up to the offer's limit): from now on the connection cannot be used here. The outcome
    /// comes as an [`Event`] from [`Node::take_events`]: [`Event::HandedOff`], or
    /// [`Event::KeptHere`] when it stays (then it can be used again).
    pub fn start_handoff(
        &mut self,
        conn: ConnId,
        to: SocketAddr,
        state: Vec<u8>,
    ) -> Result<(), Error> {
        self.live(conn)?;
        let Some(core) = &self.core else {
            return Err(Error::Config("this node has no peer to hand off to".into()));
        };
        if !core.is_peer(to) {
            return Err(Error::Handoff {
                conn,
                cause: format!("{to} is not a peer of this node"),
            });
        }
        self.queue_handoff(conn, state, Some(to));
        Ok(())
    }

    /// [`Node::start_handoff`] to whichever peer can take the connection now: the peers in
    /// turn from the one after the last handed to, skipping those backing off after failures
    /// or unreachable (an [`Event::KeptHere`] when none can).
    pub fn start_handoff_any(&mut self, conn: ConnId, state: Vec<u8>) -> Result<(), Error> {
        self.live(conn)?;
        if self.core.is_none() {
            return Err(Error::Config("this node has no peer to hand off to".into()));
        }
        self.queue_handoff(conn, state, None);
        Ok(())
    }

    fn queue_handoff(&mut self, conn: ConnId, state: Vec<u8>, to: Option<SocketAddr>) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.leaving = true;
        }
        self.queue.push_back((conn, state, to));
        // Started now when the engine is free, not at the next poll: the client waits from
        // the drain on.
        let now = self.rt.iface.now();
        self.start_queued(now, Instant::now());
    }

    /// Whether an operator may ask for a handoff to `to` now: it must be one of this node's
    /// peers and not backing off after failures.
    pub fn check_handoff_to(&self, to: SocketAddr) -> Result<(), String> {
        match &self.core {
            Some(c) => c.check_handoff_to(Instant::now(), to),
            None => Err("handoff is off on this node (no peer)".into()),
        }
    }

    /// Whether the control channel to the first peer is up.
    pub fn peer_connected(&self) -> bool {
        self.core.as_ref().is_some_and(|c| c.peer_connected())
    }

    /// Whether the connection of `client` is the one being handed off now.
    pub fn moving(&self, client: SocketAddrV6) -> bool {
        self.core.as_ref().is_some_and(|c| c.moving(client))
    }

    /// Hand `conn` to the node at `to` with the application's `state`, waiting for the
    /// outcome (running the node meanwhile): the seven phase timings, or an error
    /// ([`Error::Handoff`]: the connection continues here).
    pub fn handoff(
        &mut self,
        conn: ConnId,
        to: SocketAddr,
        state: Vec<u8>,
    ) -> Result<HandoffReport, Error> {
        self.start_handoff(conn, to, state)?;
        loop {
            let pos = self.events.iter().position(|e| e.conn() == Some(conn));
            if let Some(ev) = pos.and_then(|i| self.events.remove(i)) {
                return match ev {
                    Event::HandedOff { report, .. } => Ok(*report),
                    Event::KeptHere { cause, .. } | Event::Lost { cause, .. } => {
                        Err(Error::Handoff { conn, cause })
                    }
                    Event::Declined { .. }
                    | Event::Rebound { .. }
                    | Event::Bound { .. }
                    | Event::SteerRefused { .. } => {
                        unreachable!("not matched above")
                    }
                };
            }
            self.poll(Duration::from_millis(10))?;
        }
    }

    /// [`Node::handoff`] with a serde value as the state (read it back with
    /// [`Accepted::state_value`]).
    ///
    /// ```no_run
    /// # fn f(node: &mut dserver::Node, conn: dserver::ConnId) -> Result<(), dserver::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Progress { sent: u64, size: u64 }
    /// let peer = "[fd00:1::12]:7000".parse().unwrap();
    /// let report = node.handoff_value(conn, peer, &Progress { sent: 1 << 20, size: 4 << 20 })?;
    /// println!("phase 2 (state transfer): {} µs", report.phases_us[1]);
    /// // On the peer: `let p: Progress = accepted.state_value().unwrap()?;`
    /// # Ok(()) }
    /// ```
    pub fn handoff_value<T: serde::Serialize>(
        &mut self,
        conn: ConnId,
        to: SocketAddr,
        state: &T,
    ) -> Result<HandoffReport, Error> {
        let bytes = postcard::to_allocvec(state).map_err(|e| Error::Handoff {
            conn,
            cause: format!("state does not encode: {e}"),
        })?;
        self.handoff(conn, to, bytes)
    }

    /// What happened since the last call.
    pub fn take_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.events.drain(..)
    }

    /// Peers a handoff could not reach since the last call (for a membership service: the
    /// contact drops an snode whose handoff fails, seed §2.3.2).
    pub fn take_unreachable(&mut self) -> Vec<SocketAddr> {
        self.core
            .as_mut()
            .map(|c| c.take_unreachable())
            .unwrap_or_default()
    }

    /// The peers' loads `(peer, connections it serves, report stamp)`, e.g. from the
    /// membership, for [`Policy::LeastConnections`]: a report with a new stamp replaces the
    /// clients this node placed on that peer since the previous one.
    pub fn set_peer_loads(&mut self, loads: &[(SocketAddr, u32, u64)]) {
        self.chooser.set_loads(loads);
    }

    /// Whether handoff is on (a control listener or a peer was configured).
    pub fn has_handoff(&self) -> bool {
        self.core.is_some()
    }

    /// True while a handoff is queued or in progress here, or packets held for a moved
    /// connection are still being forwarded (a node about to exit waits for this to end).
    pub fn handing_off(&self) -> bool {
        !self.queue.is_empty() || self.core.as_ref().is_some_and(|c| c.busy())
    }

    /// Replace the peers the policy places clients on and connections are handed to (e.g. the
    /// membership's live members). Returns false while a handoff of this node's is in
    /// progress (try again later) or when handoff is off (no control listener or peer was
    /// configured at build time).
    pub fn set_peers(&mut self, peers: Vec<SocketAddr>) -> bool {
        let Some(c) = self.core.as_mut() else {
            return false;
        };
        if !c.set_peers(&peers) {
            return false;
        }
        self.peers = c.peers().to_vec();
        true
    }

    /// The membership fence (the epoch with which the current contact registered the DS
    /// address): offers carry it and offers fenced older are refused, so a node acting for a
    /// deposed contact cannot hand off. `None` (the default) turns the check off.
    pub fn set_fence(&mut self, fence: Option<ds_handoff::Fence>) {
        if let Some(c) = self.core.as_mut() {
            c.set_fence(fence);
        }
    }

    /// Ask the home agent (transparent steering) to send the new flows of the DS address
    /// `home` to the node at care-of address `to` from now on (a node that drains); flows
    /// already mapped keep their node.
    pub fn rebind(&mut self, home: Ipv6Addr, to: Ipv6Addr) -> Result<(), Error> {
        match self.core.as_mut() {
            Some(c) => c.rebind(home, to),
            None => Err(Error::Config("this node has no home agent".into())),
        }
    }

    /// Stop accepting new clients (connections handed over by other nodes still arrive);
    /// clients connecting from now on are refused with a reset.
    pub fn stop_accepting(&mut self) {
        if let Some(l) = self.listener.take() {
            self.rt.iface.tcp_unlisten(l);
        }
    }

    /// A UDP socket on `port` of the DS address: datagrams to it are read with
    /// [`Node::udp_recv_from`], answers leave from the DS address. UDP does not move between
    /// nodes (each datagram is steered to a node on its own).
    pub fn udp_bind(&mut self, port: u16) -> Result<UdpSocketId, Error> {
        let local = SocketAddrV6::new(self.ds, port, 0, 0);
        self.rt
            .iface
            .udp_bind(local)
            .map(UdpSocketId)
            .map_err(|e| Error::Config(format!("UDP on {local}: {e}")))
    }

    /// The next datagram received on `s`: its length (cut to `buf`) and its sender.
    pub fn udp_recv_from(
        &mut self,
        s: UdpSocketId,
        buf: &mut [u8],
    ) -> Option<(usize, SocketAddrV6)> {
        self.rt.iface.udp_recv_from(s.0, buf).ok().flatten()
    }

    /// Send a datagram from `s` to `to` (fragmented when it exceeds the path MTU).
    pub fn udp_send_to(&mut self, s: UdpSocketId, data: &[u8], to: SocketAddrV6) -> io::Result<()> {
        let now = self.rt.iface.now();
        self.rt
            .iface
            .udp_send_to(now, s.0, data, to)
            .map_err(io_error)
    }

    /// Stop serving: accept no more clients, close every connection still open here (a FIN
    /// follows what was written), and run the node until the stack has delivered what
    /// closed connections still owe their clients (or `max` passes). Call before dropping a
    /// node that served, or clients may miss the end of their data.
    pub fn shutdown(&mut self, max: Duration) -> Result<(), Error> {
        self.stop_accepting();
        let open: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| !e.leaving)
            .map(|(c, _)| *c)
            .collect();
        for c in open {
            self.close(c)?;
        }
        let start = Instant::now();
        while self.rt.iface.tcp_unfinished_count() > 0 && start.elapsed() < max {
            self.poll(Duration::from_millis(10))?;
        }
        Ok(())
    }

    /// Handoff counters (zero without handoff).
    pub fn stats(&self) -> NodeStats {
        self.core.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// The stack's counters.
    pub fn interface_stats(&self) -> &ds_stack::Stats {
        self.rt.iface.stats()
    }

    /// What the device dropped on its own (AF_XDP: the kernel's ring counters, read now): a
    /// full receive ring means this node did not keep up with its traffic.
    pub fn device_stats(&self) -> ds_stack::device::DeviceStats {
        self.rt.dev.stats()
    }

    /// A descriptor that turns readable when the node has input: add it to your own
    /// `epoll`/`poll` set and call [`Node::poll`] with a zero timeout when it fires, or after
    /// [`Node::poll_timeout`] at the latest. Then serve [`Node::take_ready`] and
    /// [`Node::try_accept`].
    pub fn readiness_fd(&mut self) -> Result<RawFd, Error> {
        if self.readiness.is_none() {
            self.readiness = Some(Readiness::new()?);
            self.sync_readiness()?;
        }
        Ok(self.readiness.as_ref().map(Readiness::fd).unwrap_or(-1))
    }

    fn sync_readiness(&mut self) -> Result<(), Error> {
        let Some(r) = self.readiness.as_mut() else {
            return Ok(());
        };
        self.dev_fds.clear();
        self.rt.wait_fds(&mut self.dev_fds);
        self.fds.clear();
        let epoch = self.core.as_ref().map_or(0, |core| {
            core.wait_fds(&mut self.fds);
            core.channel_epoch()
        });
        r.sync(epoch, self.dev_fds.fds().chain(self.fds.iter().copied()))
            .map_err(|source| Error::Io {
                what: "readiness epoll".into(),
                source,
            })
    }

    /// The longest the caller may wait before the next [`Node::poll`] when nothing is
    /// readable (the stack's and the engine's next deadline); `None`: no deadline.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let now = self.rt.now();
        let stack = self
            .rt
            .iface
            .poll_at()
            .map(|t| if t <= now { Duration::ZERO } else { t - now });
        let engine = self
            .core
            .as_ref()
            .map(|c| c.max_wait(Instant::now(), Duration::from_secs(3600)))
            .filter(|d| *d < Duration::from_secs(3600));
        let announce = self
            .announce
            .front()
            .map(|d| d.saturating_sub(self.started.elapsed()));
        [stack, engine, announce].into_iter().flatten().min()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Reset what is still open here rather than leave clients to time out (and what
        // waited for its handoff; not the one in flight, which another node may hold now).
        for (c, e) in &self.conns {
            if Some(*c) != self.current {
                let _ = self.rt.iface.tcp_abort(e.h);
            }
        }
        let _ = self.rt.flush();
    }
}

/// A blocking [`Read`] + [`Write`] view of one connection ([`Node::stream`]).
#[derive(Debug)]
pub struct Stream<'a> {
    node: &'a mut Node,
    conn: ConnId,
}

impl Stream<'_> {
    /// The connection.
    pub fn id(&self) -> ConnId {
        self.conn
    }
}

/// How long a blocked [`Stream`] call waits per round of the node.
const STREAM_WAIT: Duration = Duration::from_millis(10);

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.node.read(self.conn, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.node.poll(STREAM_WAIT)?;
                }
                r => return r,
            }
        }
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.node.write(self.conn, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.node.poll(STREAM_WAIT)?;
                }
                r => return r,
            }
        }
    }

    /// Send the frames that are ready now (the stack sends on its own as well).
    fn flush(&mut self) -> io::Result<()> {
        self.node.rt.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x80, 0, 0, 0, 0, 0, 0x80);
    const COA: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);

    fn ro(away: bool) -> Builder {
        Node::builder()
            .ds_addr(DS)
            .care_of(COA)
            .secret(ClusterSecret::new(b"0123456789abcdef0123456789abcdef").expect("secret"))
            .peer("[fd00:1::1]:7000".parse().expect("literal"))
            .route_optimised(away)
    }

    #[test]
    fn route_optimised_steering_gives_the_engine_its_mobile_role() {
        // Away from home: the DS address is a home address only; Binding Updates steer.
        let mut b = ro(true);
        assert_eq!(b.addresses().expect("addresses").1, vec![COA]);
        let cfg = b.handoff_config().expect("config").expect("handoff on");
        assert_eq!(cfg.mode, Mode::Ro);
        assert!(cfg.mobile_role.as_ref().is_some_and(|r| !r.is_at_home()));
        assert!(matches!(cfg.takeover, ds_handoff::Takeover::HomeAddress));
        assert!(matches!(cfg.steering, Steering::RouteOptimised { .. }));
        // At home: the contact node owns the DS address and runs the home test.
        let mut b = ro(false);
        assert_eq!(b.addresses().expect("addresses").1, vec![COA, DS]);
        let cfg = b.handoff_config().expect("config").expect("handoff on");
        assert!(cfg.mobile_role.as_ref().is_some_and(|r| r.is_at_home()));
        assert!(matches!(cfg.takeover, ds_handoff::Takeover::None));
        // Not with a home agent's steering, and not away without a care-of address.
        let mut both = ro(false).home_agent("[fd00:1::a]:7001".parse().expect("literal"));
        assert!(both.handoff_config().is_err());
        let no_coa = Node::builder().ds_addr(DS).route_optimised(true);
        assert!(no_coa.addresses().is_err());
        // The daemon's whole engine configuration carries its own steering: not both.
        let engine = HandoffConfig::new(
            ClusterSecret::new(b"0123456789abcdef0123456789abcdef").expect("secret"),
        );
        assert!(ro(false).engine(engine).handoff_config().is_err());
    }
}
