//! The HTTP content service as a handoff node over the userspace stack: [`HandoffNode`] wires
//! the HTTP server ([`crate::server::HttpServer`]) to the library's handoff engine
//! ([`dserver::engine::Coordinator`]), as [`crate::kernel_node::KernelNode`] does for kernel
//! sockets. The engine's types are re-exported here for the daemon and its tests.

use crate::drain::{DrainInfo, Draining};
use crate::http::HttpConnState;
use crate::server::HttpServer;
use ds_handoff::{Mode, Service, UserConn, UserHost};
use ds_stack::mobile::MobileRole;
use ds_stack::{Instant as StackInstant, Interface, TcpHandle};
pub use dserver::engine::{
    AcceptorFault, Coordinator, HandoffConfig, NodeEvent, NodeStats, Steering,
};
use dserver::ro::{RouteOptimisation, Ticket};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// The HTTP service of a userspace node as the engine's [`Service`], for one call.
pub struct HttpService<'a> {
    /// The server.
    pub server: &'a mut HttpServer,
    /// The service name offers must carry.
    pub name: &'a str,
    /// The stack's time of the caller's step.
    pub now: StackInstant,
}

impl Service<UserConn> for HttpService<'_> {
    fn accepts(&self, name: &str) -> bool {
        name == self.name
    }

    fn export(&mut self, conn: &UserConn) -> Result<Vec<u8>, String> {
        let h = conn.handle().ok_or("not a live connection")?;
        match self.server.detach(h) {
            Some(Ok(st)) => Ok(st.encode()),
            Some(Err(e)) => Err(format!("{e:#}")),
            None => Err("not served here".into()),
        }
    }

    fn adopt(&mut self, conn: UserConn, state: &[u8]) -> Result<(), (UserConn, String)> {
        let Some(h) = conn.handle() else {
            return Err((conn, "not a live connection".into()));
        };
        let st = match HttpConnState::decode(state) {
            Ok(st) => st,
            Err(e) => return Err((conn, format!("HTTP state: {e}"))),
        };
        self.server
            .adopt(h, st, self.now)
            .map_err(|e| (conn, format!("{e:#}")))
    }
}

/// The HTTP service over a userspace interface plus live handoff to and from a peer.
pub struct HandoffNode {
    server: HttpServer,
    core: Coordinator<UserConn>,
    service: String,
    max_handoffs: Option<u64>,
    mode: Mode,
    /// This node's mobile role until [`HandoffNode::install_mobility`] gives it to the
    /// interface, which owns it from then on (route-optimised mode: it steers connections that
    /// arrive, with a Binding Update or a deregistration at home, and gives the tickets that go
    /// with connections that leave).
    role: Option<MobileRole>,
    /// Connections that reached their quota, waiting for their handoff.
    queue: VecDeque<TcpHandle>,
    /// Connections the operator asked to move to one peer in particular (`dsctl handoff`).
    requested_to: std::collections::HashMap<TcpHandle, SocketAddr>,
    /// Route-optimised: the home test and the bindings of connections leaving.
    ro: RouteOptimisation,
    /// Set while the node drains ([`HandoffNode::start_drain`]).
    drain: Option<Draining>,
}

impl HandoffNode {
    /// Wrap `server` (already listening on the interface) with handoff per `cfg`.
    pub fn new(mut server: HttpServer, mut cfg: HandoffConfig) -> anyhow::Result<Self> {
        let core = Coordinator::new(&mut cfg)?;
        server.set_handoff_quota(if cfg.peer.is_some() { cfg.quota } else { None });
        let role = cfg.mobile_role.take();
        Ok(HandoffNode {
            server,
            core,
            service: cfg.service.clone(),
            max_handoffs: cfg.max_handoffs,
            mode: cfg.mode,
            role,
            queue: VecDeque::new(),
            requested_to: std::collections::HashMap::new(),
            ro: RouteOptimisation::default(),
            drain: None,
        })
    }

    /// The HTTP server.
    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    /// Give this node's mobile role (route-optimised mode) to the interface, which owns it
    /// from then on; the node drives it through the interface. Nothing without one.
    pub fn install_mobility(&mut self, iface: &mut Interface) {
        if let Some(r) = self.role.take() {
            iface.set_mobility_hook(Box::new(r));
        }
    }

    /// Handoff counters.
    pub fn stats(&self) -> NodeStats {
        self.core.stats()
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<NodeEvent> {
        self.core.take_events()
    }

    /// The control sockets (appended to `out`) to wait on together with the device
    /// ([`ds_stack::runner::Runner::step_with`]).
    pub fn wait_fds(&self, out: &mut Vec<RawFd>) {
        self.core.wait_fds(out)
    }

    /// How long the caller's loop may wait for input (see [`Coordinator::max_wait`]).
    pub fn max_wait(&self, idle: Duration) -> Duration {
        // Not for a non-empty queue: it may wait for a handoff in progress or a channel that
        // is opening, and the loop must sleep meanwhile, not spin.
        if self.server.has_work() {
            return Duration::ZERO;
        }
        self.core.max_wait(Instant::now(), idle)
    }

    /// True while a handoff is in progress or held packets are still being forwarded.
    pub fn busy(&self) -> bool {
        self.core.busy() || !self.queue.is_empty()
    }

    /// Whether the control channel to the peer is up.
    pub fn peer_connected(&self) -> bool {
        self.core.peer_connected()
    }

    /// The membership fence to carry in offers and to require of incoming ones
    /// ([`dserver::engine::Coordinator::set_fence`]).
    pub fn set_fence(&mut self, fence: Option<ds_handoff::Fence>) {
        self.core.set_fence(fence);
    }

    /// Open the channel to the peer now rather than inside the first handoff's timing.
    pub fn connect_peer(&mut self) -> anyhow::Result<()> {
        Ok(self.core.connect_peer()?)
    }

    /// Hand the connection of `client` to the peer `to` (`dsctl handoff`): it is paused now
    /// and queued like one that reached its quota; its report comes as a
    /// [`NodeEvent::HandedOff`], or a [`NodeEvent::KeptHere`] when it cannot leave. `to` must be
    /// this node's peer (the only one until membership lands).
    pub fn request_handoff(
        &mut self,
        iface: &Interface,
        client: SocketAddrV6,
        to: SocketAddr,
    ) -> Result<(), String> {
        self.core.check_handoff_to(Instant::now(), to)?;
        if !self.handoffs_left() {
            return Err("this node's --max-handoffs is reached".into());
        }
        let (h, paused) = self.server.handle_of(iface, client).ok_or_else(|| {
            if self.core.moving(client) {
                format!("the connection of {client} is already leaving")
            } else {
                format!("no connection of {client} here")
            }
        })?;
        if paused || self.queue.contains(&h) || !self.server.pause(h) {
            return Err(format!("the connection of {client} is already leaving"));
        }
        self.queue.push_back(h);
        self.requested_to.insert(h, to);
        Ok(())
    }

    fn handoffs_left(&self) -> bool {
        self.drain.is_some()
            || self
                .max_handoffs
                .is_none_or(|m| self.core.stats().started < m)
    }

    /// Drain (`dsctl drain`): hand every connection to the peer, stop accepting, and report
    /// [`HandoffNode::drained`] once none is left. With `rebind` (the DS address and the peer's
    /// care-of address, transparent mode) the home agent is first asked to send new clients
    /// to the peer, and this node stops accepting once it did (or after [`crate::drain::REBIND_WAIT`]), so
    /// that no client is refused. Returns the connections to move.
    pub fn start_drain(&mut self, rebind: Option<(Ipv6Addr, Ipv6Addr)>) -> Result<usize, String> {
        if self.drain.is_some() {
            return Err("already draining".into());
        }
        self.drain = Some(Draining::start(&mut self.core, rebind)?);
        tracing::info!(connections = self.server.connections(), "draining");
        Ok(self.server.connections())
    }

    /// The drain's progress, if the node drains.
    pub fn drain_info(&self) -> Option<DrainInfo> {
        self.drain
            .as_ref()
            .map(|d| d.info(self.server.connections(), self.server.is_accepting()))
    }

    /// True once a drain moved (or saw close) every connection and nothing is in flight:
    /// the node may exit.
    pub fn drained(&self) -> bool {
        self.drain.is_some()
            && !self.server.is_accepting()
            && self.server.connections() == 0
            && self.queue.is_empty()
            && !self.core.busy()
    }

    /// One round of the drain: the rebind's answer, then no more clients, then every
    /// established connection queued for its handoff.
    fn drive_drain(&mut self, iface: &mut Interface) {
        let Some(d) = self.drain.as_mut() else {
            return;
        };
        if !d.observe(self.core.events()) {
            return;
        }
        if self.server.is_accepting() {
            self.server.stop_accepting(iface);
            tracing::info!("drain: no longer accepting");
        }
        for h in self.server.active_handles() {
            // Connections closing already finish here; the others move.
            if iface.tcp_state(h) != Some(ds_stack::TcpState::Established) {
                continue;
            }
            let Some((_, client)) = iface.tcp_endpoints(h) else {
                continue;
            };
            if !d.may_try(client) {
                continue;
            }
            if !self.queue.contains(&h) && self.server.pause(h) {
                self.queue.push_back(h);
            }
        }
    }

    /// Run `f` with the engine's I/O half, the interface as its host and the HTTP server as
    /// its service, at the stack time `now`.
    fn with_engine<T>(
        &mut self,
        iface: &mut Interface,
        now: StackInstant,
        f: impl FnOnce(&mut Coordinator<UserConn>, &mut UserHost<'_>, &mut HttpService<'_>) -> T,
    ) -> T {
        let mut host = UserHost::new(iface, now, Instant::now);
        let mut svc = HttpService {
            server: &mut self.server,
            name: &self.service,
            now,
        };
        f(&mut self.core, &mut host, &mut svc)
    }

    /// One round: serve HTTP, answer offers, drive the handoff in progress and start the next
    /// one. Call after each runner step, with the stack's time of that step.
    pub fn poll(&mut self, iface: &mut Interface, now: StackInstant) {
        self.server.poll(iface, now);
        self.queue.extend(self.server.take_handoff_ready());
        let mono = Instant::now();
        self.with_engine(iface, now, |core, host, svc| core.poll(mono, host, svc));
        self.ro.observe(iface, self.core.events());
        self.drive_drain(iface);
        if !self.core.handing_off() {
            self.start_next(iface, now, mono);
        }
        RouteOptimisation::watch_binding(&mut self.core, iface, now);
        // A connection adopted or kept here by the engine just now is served in this same
        // round, not at the next wake-up: its client has been waiting since the drain, and
        // the next wake-up may be a whole idle wait away (a millisecond, measured as the
        // client-perceived gap of every handoff before this).
        if self.server.has_work() {
            self.server.poll(iface, now);
            self.queue.extend(self.server.take_handoff_ready());
            if !self.core.handing_off() {
                self.start_next(iface, now, mono);
            }
        }
    }

    /// A connection that cannot leave: its service continues it here.
    fn keep_here(&mut self, h: TcpHandle, client: SocketAddrV6, cause: &str) {
        tracing::warn!(%client, "connection kept here: {cause}");
        self.core.push_event(NodeEvent::KeptHere {
            client,
            cause: cause.into(),
        });
        self.server.resume(h);
    }

    /// `h` goes back to the head of the queue, with the peer the operator asked for.
    fn wait_at_head(&mut self, h: TcpHandle, wanted: Option<SocketAddr>) {
        self.queue.push_front(h);
        if let Some(p) = wanted {
            self.requested_to.insert(h, p);
        }
    }

    fn start_next(&mut self, iface: &mut Interface, now: StackInstant, mono: Instant) {
        while let Some(h) = self.queue.pop_front() {
            // Put back by `wait_at_head` when the connection waits again.
            let wanted = self.requested_to.remove(&h);
            let client = iface.tcp_endpoints(h).map(|(_, r)| r);
            if !self.handoffs_left() || !self.core.has_peer() || client.is_none() {
                self.server.resume(h);
                continue;
            }
            let ticket = match client {
                Some(c) if self.mode == Mode::Ro => match self.ro.ticket(iface, now, mono, c) {
                    Ticket::Ready(t) => Some(t),
                    Ticket::Wait => {
                        self.wait_at_head(h, wanted);
                        return;
                    }
                    Ticket::Missing(why) => {
                        self.keep_here(h, c, why);
                        continue;
                    }
                },
                _ => None,
            };
            let peer = match self.core.pick_peer(mono, wanted) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    // A channel is opening: the connection waits paused at the head.
                    self.wait_at_head(h, wanted);
                    return;
                }
                Err(why) => {
                    // Backing off or unreachable: the connection simply goes on here (the
                    // engine logged the failures that started the back-off).
                    tracing::debug!(client = ?client, "connection kept here: {why}");
                    self.server.resume(h);
                    continue;
                }
            };
            let started = self.with_engine(iface, now, |core, host, svc| {
                core.hand_off_to(mono, peer, UserConn::Live(h), ticket, host, svc)
            });
            match started {
                Ok(()) => {
                    if !self.handoffs_left() {
                        // The last one: no more connections get paused here.
                        self.server.set_handoff_quota(None);
                    }
                    return;
                }
                Err(_) => {
                    self.server.resume(h);
                }
            }
        }
    }
}
