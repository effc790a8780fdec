//! A Distributed Servers node that hands live HTTP connections to a peer node and takes them
//! from it: the HTTP service ([`HttpServer`]) plus the handoff protocol (`ds-handoff`) on one
//! userspace [`Interface`].
//!
//! Data flow of one handoff (the donor is the node that served so far):
//!
//! 1. the donor's server pauses a connection that reached its per-node quota
//!    ([`HttpServer::set_handoff_quota`]) and detaches its HTTP state;
//! 2. a [`Donor`] drains (policy [`Drain`]), freezes the TCP connection and offers TCP state
//!    plus HTTP state to the peer over the encrypted control channel;
//! 3. the peer's [`Acceptor`] thaws it, steers the flow (transparent mode: one flow-map update
//!    at the home agent through [`FlowMover`]), activates it and adopts the HTTP state into its
//!    own server, which continues the response where the donor stopped;
//! 4. the donor forwards packets that still reached it during a grace period, then forgets
//!    the connection. If the acceptor refused, crashed or timed out, the donor thaws the
//!    connection back and its server continues it: nothing is lost.
//!
//! The node never blocks on the data path; the control channels are non-blocking sockets
//! polled from the same loop ([`HandoffNode::poll`] after each runner step).

use crate::flow_agent::FlowMover;
use crate::http::HttpConnState;
use crate::server::HttpServer;
use ds_handoff::{
    forward_held, forward_packets, Acceptor, AcceptorConfig, AcceptorEvent, Channel, ClusterSecret,
    Donor, DonorConfig, DonorOutcome, Drain, HandoffReport, Mode, Takeover,
};
use ds_stack::mobile::MobileRole;
use ds_stack::{ConnState, Instant, Interface, TcpHandle};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::time::Duration;

/// How the acceptor steers a moved flow to itself (handoff phases 4–6).
#[derive(Debug, Clone)]
pub enum Steering {
    /// Nothing to do (the address takeover's announcement is the steering).
    None,
    /// Transparent mode: ask the home agent's flow agent at `ha` to tunnel the flow to `coa`,
    /// this node's care-of address.
    HomeAgentFlow {
        /// The flow agent's control address.
        ha: SocketAddr,
        /// This node's care-of address.
        coa: Ipv6Addr,
    },
    /// Route-optimised mode: this node serves the DS address as a home address away from
    /// home; it sends the client (a correspondent node) a Binding Update built from the home
    /// keygen ticket that came with the connection and its own care-of keygen token (RFC 6275
    /// §5.2.5, §11.7.2). The care-of test must have completed before the offer arrives.
    RouteOptimised {
        /// This node's mobile role (installed as the interface's mobility hook).
        role: MobileRole,
        /// Binding lifetime asked for.
        lifetime: Duration,
    },
}

/// Misbehaviour injected into the acceptor side, for failure tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptorFault {
    /// Refuse every offer (reason: load).
    Refuse,
    /// Close the control channel when an offer arrives, as a crashed process would.
    Crash,
    /// Read offers and never answer.
    Hang,
}

/// A node's handoff settings.
#[derive(Debug)]
pub struct HandoffConfig {
    /// Service name offered and accepted.
    pub service: String,
    /// The cluster secret keying the control channels.
    pub secret: ClusterSecret,
    /// Where this node accepts offers (a kernel socket on the node's control network).
    pub listen: Option<TcpListener>,
    /// Where this node sends its offers.
    pub peer: Option<SocketAddr>,
    /// Hand a connection off after it sent this many response bytes here.
    pub quota: Option<u64>,
    /// Stop handing off after this many handoffs started here.
    pub max_handoffs: Option<u64>,
    /// Drain policy of the donor.
    pub drain: Drain,
    /// The donor's wait for each reply before it takes the connection back.
    pub reply_timeout: Duration,
    /// Steering mode (for the report).
    pub mode: Mode,
    /// Path label for the report, e.g. `"user->user"`.
    pub path: String,
    /// Address takeover at the acceptor.
    pub takeover: Takeover,
    /// Steering at the acceptor.
    pub steering: Steering,
    /// Injected acceptor failure.
    pub fault: Option<AcceptorFault>,
    /// How long the donor forwards packets that still reach the frozen connection.
    pub forward_grace: Duration,
    /// Route-optimised donor: the mobile role whose home keygen token travels with each
    /// connection (the contact node runs the home test, RFC 6275 §5.2.5).
    pub home_role: Option<MobileRole>,
}

impl HandoffConfig {
    /// Defaults: service "http", no listener, no peer, no quota, drain until acknowledged
    /// (deadline 100 ms), reply timeout 1 s, transparent, "user->user", no takeover, no
    /// steering, 200 ms forwarding grace.
    pub fn new(secret: ClusterSecret) -> Self {
        HandoffConfig {
            service: "http".into(),
            secret,
            listen: None,
            peer: None,
            quota: None,
            max_handoffs: None,
            drain: Drain::UntilAcked {
                deadline: Duration::from_millis(100),
            },
            reply_timeout: Duration::from_secs(1),
            mode: Mode::Transparent,
            path: "user->user".into(),
            takeover: Takeover::None,
            steering: Steering::None,
            fault: None,
            forward_grace: Duration::from_millis(200),
            home_role: None,
        }
    }
}

/// What happened, for the node's owner (logs, reports).
#[derive(Debug)]
pub enum NodeEvent {
    /// A connection now runs on the peer.
    HandedOff {
        /// The measured handoff (client-side fields unset).
        report: HandoffReport,
        /// The connection's client end.
        client: SocketAddrV6,
        /// Sequence number just after the last byte this node sent (SND.MAX at the freeze;
        /// after a drain, everything the application wrote): the acceptor's first new segment
        /// starts here, so the client-perceived gap is measured at this boundary.
        boundary_seq: u32,
    },
    /// A handoff failed before the acceptor committed; the connection continues here.
    KeptHere {
        /// The connection's client end.
        client: SocketAddrV6,
        /// Why.
        cause: String,
    },
    /// A handoff ended in a state this node cannot repair (the connection is not here).
    Failed {
        /// Why.
        cause: String,
    },
    /// A connection arrived from the peer and continues here.
    Adopted {
        /// The connection's client end.
        client: SocketAddrV6,
    },
    /// Route-optimised acceptor: the client acknowledged our Binding Update (handoff phase 6
    /// ends; it is asynchronous to the Activated message).
    Bound {
        /// The correspondent.
        client: Ipv6Addr,
        /// From the Binding Update (sent at steering) to the acknowledgement.
        after: Duration,
    },
    /// An offer was refused or aborted here.
    Declined {
        /// Why.
        cause: String,
    },
}

/// Counters of the handoff side of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    /// Handoffs started here.
    pub started: u64,
    /// Handoffs completed (the connection moved away).
    pub moved: u64,
    /// Handoffs that came back (refused, crashed, timed out).
    pub kept: u64,
    /// Connections adopted from the peer.
    pub adopted: u64,
    /// Packets forwarded to the acceptor after a freeze.
    pub forwarded_packets: u64,
}

struct Pending {
    donor: Donor,
    client: SocketAddrV6,
    app: HttpConnState,
}

struct Forwarding {
    state: Box<ConnState>,
    conn_id: u64,
    until: std::time::Instant,
}

/// The HTTP service plus live handoff to and from a peer.
pub struct HandoffNode {
    server: HttpServer,
    cfg: HandoffConfig,
    acceptor: Acceptor,
    incoming: Vec<Channel>,
    to_peer: Option<Channel>,
    queue: VecDeque<TcpHandle>,
    current: Option<Pending>,
    forwarding: Vec<Forwarding>,
    events: Vec<NodeEvent>,
    stats: NodeStats,
    next_id: u64,
    /// Route-optimised acceptor: the Binding Update in flight (correspondent, when sent).
    bu_sent: Option<BuSent>,
    /// Route-optimised donor: since when the connection at the head of the queue waits for
    /// its home keygen token.
    ticket_wait: Option<std::time::Instant>,
    /// Route-optimised acceptor: an offer held back until the care-of test towards its
    /// client completes (channel index, offer, when it arrived).
    deferred: Option<(usize, ds_handoff::Message, std::time::Instant)>,
    /// How long the last care-of test took (phase 4), taken by the steering hook.
    rr_wait: std::sync::Arc<std::sync::Mutex<Duration>>,
    /// Route-optimised acceptor: when the running care-of test started.
    rr_started: Option<std::time::Instant>,
}

type BuSent = std::sync::Arc<std::sync::Mutex<Option<(Ipv6Addr, std::time::Instant)>>>;

/// How long a route-optimised donor waits for the home test before keeping the connection.
const TICKET_WAIT: Duration = Duration::from_secs(2);

impl HandoffNode {
    /// Wrap `server` (already listening on the interface) with handoff per `cfg`.
    pub fn new(mut server: HttpServer, cfg: HandoffConfig) -> anyhow::Result<Self> {
        if let Some(l) = &cfg.listen {
            l.set_nonblocking(true)?;
        }
        server.set_handoff_quota(if cfg.peer.is_some() { cfg.quota } else { None });
        let mut acfg = AcceptorConfig::new(&[cfg.service.as_str()]);
        acfg.takeover = cfg.takeover;
        if cfg.fault == Some(AcceptorFault::Refuse) {
            acfg.max_connections = 0;
        }
        let mut bu_sent = None;
        let rr_wait = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        if let Steering::RouteOptimised { role, lifetime } = &cfg.steering {
            let (role, lifetime) = (role.clone(), *lifetime);
            let waited = rr_wait.clone();
            let sent = std::sync::Arc::new(std::sync::Mutex::new(None));
            bu_sent = Some(sent.clone());
            acfg.steer = Some(Box::new(move |_iface, now, st: &ConnState, ticket| {
                let ticket: ds_mipv6::mn::HomeTicket = postcard::from_bytes(
                    ticket.ok_or("route-optimised offer without a home ticket")?,
                )
                .map_err(|e| format!("home ticket: {e}"))?;
                // Phase 4 (return routability) ran ahead (tokens live for minutes, RFC 6275
                // §5.2.7) or while the offer was held back (`waited`); phase 5 builds and
                // queues the Binding Update; phase 6 (until the Binding Acknowledgement)
                // completes asynchronously: NodeEvent::Bound.
                let d4 = waited
                    .lock()
                    .map(|mut w| std::mem::take(&mut *w))
                    .unwrap_or_default();
                let t5 = std::time::Instant::now();
                role.bind(now, &ticket, *st.remote().ip(), lifetime)
                    .map_err(|e| format!("binding update: {e:?}"))?;
                let d5 = t5.elapsed();
                if let Ok(mut g) = sent.lock() {
                    *g = Some((*st.remote().ip(), std::time::Instant::now()));
                }
                Ok([d4, d5, Duration::ZERO])
            }));
        }
        if let Steering::HomeAgentFlow { ha, coa } = cfg.steering {
            let mut mover = FlowMover::new(ha, cfg.secret.clone(), Duration::from_secs(1));
            if let Err(e) = mover.connect() {
                // Not fatal: the first move retries (inside its timing).
                tracing::warn!("home agent flow agent at {ha} not reachable yet: {e:#}");
            }
            let mut id = 0u64;
            acfg.steer = Some(Box::new(move |_iface, _now, st: &ConnState, _ticket| {
                id += 1;
                // Phase 4 (return routability) does not exist in transparent mode; phase 5 is
                // building and sending the request, phase 6 the home agent's map update and
                // answer.
                let (build, bind) = mover
                    .move_flow(id, st.remote(), st.local(), coa)
                    .map_err(|e| format!("{e:#}"))?;
                Ok([Duration::ZERO, build, bind])
            }));
        }
        Ok(HandoffNode {
            server,
            acceptor: Acceptor::new(acfg),
            cfg,
            incoming: Vec::new(),
            to_peer: None,
            queue: VecDeque::new(),
            current: None,
            forwarding: Vec::new(),
            events: Vec::new(),
            stats: NodeStats::default(),
            next_id: 1,
            bu_sent,
            ticket_wait: None,
            deferred: None,
            rr_wait,
            rr_started: None,
        })
    }

    /// The HTTP server.
    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    /// Handoff counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<NodeEvent> {
        std::mem::take(&mut self.events)
    }

    /// The control sockets (into `out`, replacing its contents) to wait on together with the
    /// device
    /// ([`ds_stack::runner::Runner::step_with`]), so that an offer or a reply is handled as
    /// soon as it arrives.
    pub fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) {
        use std::os::fd::AsRawFd;
        out.clear();
        out.extend(self.cfg.listen.iter().map(|l| l.as_raw_fd()));
        out.extend(self.incoming.iter().map(|c| c.stream().as_raw_fd()));
        out.extend(self.to_peer.iter().map(|c| c.stream().as_raw_fd()));
    }

    /// How long the caller's loop may wait for input: `idle`, or zero while a control channel
    /// still has output the socket did not take (a large offer being written), since the
    /// wait only wakes on readable sockets.
    pub fn max_wait(&self, idle: Duration) -> Duration {
        let pending = self
            .to_peer
            .iter()
            .chain(self.incoming.iter())
            .any(|c| c.pending_output() > 0);
        if pending {
            Duration::ZERO
        } else {
            idle
        }
    }

    /// True while a handoff is in progress or held packets are still being forwarded.
    pub fn busy(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty() || !self.forwarding.is_empty()
    }

    /// One round: serve HTTP, accept control channels, answer offers, drive the handoff in
    /// progress and start the next one. Call after each runner step.
    pub fn poll(&mut self, iface: &mut Interface, now: Instant) {
        self.server.poll(iface, now);
        self.accept_channels();
        self.serve_offers(iface, now);
        self.queue.extend(self.server.take_handoff_ready());
        self.drive_donor(iface, now);
        self.forward(iface);
        self.watch_care_of_test();
        self.watch_binding(now);
    }

    fn watch_binding(&mut self, now: Instant) {
        let (Some(sent), Steering::RouteOptimised { role, .. }) =
            (&self.bu_sent, &self.cfg.steering)
        else {
            return;
        };
        let Ok(mut g) = sent.lock() else { return };
        if let Some((client, at)) = *g {
            if role.is_bound(now) {
                *g = None;
                self.events.push(NodeEvent::Bound {
                    client,
                    after: at.elapsed(),
                });
            }
        }
    }

    /// Open the channel to the peer now rather than inside the first handoff's timing.
    pub fn connect_peer(&mut self) -> anyhow::Result<()> {
        if let (None, Some(peer)) = (&self.to_peer, self.cfg.peer) {
            self.to_peer = Some(Channel::connect(
                peer,
                &self.cfg.secret,
                Duration::from_secs(2),
            )?);
        }
        Ok(())
    }

    fn accept_channels(&mut self) {
        let Some(l) = &self.cfg.listen else { return };
        loop {
            match l.accept() {
                Ok((s, peer)) => {
                    if s.set_nonblocking(false).is_err() {
                        continue;
                    }
                    match Channel::accept(s, &self.cfg.secret, Duration::from_secs(1)) {
                        Ok(c) => {
                            tracing::debug!(%peer, "control channel from a donor");
                            self.incoming.push(c);
                        }
                        Err(e) => tracing::warn!(%peer, "control channel refused: {e}"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("control accept: {e}");
                    break;
                }
            }
        }
    }

    fn serve_offers(&mut self, iface: &mut Interface, now: Instant) {
        let mut i = 0;
        while i < self.incoming.len() {
            let keep = match self.cfg.fault {
                Some(AcceptorFault::Crash) | Some(AcceptorFault::Hang) => self.faulty_acceptor(i),
                _ => self.accept_offers(i, iface, now),
            };
            if keep {
                i += 1;
            } else {
                self.incoming.swap_remove(i);
                // Channel indices moved: a held-back offer's donor has gone anyway (its
                // channel broke) or will time out and keep the connection.
                self.deferred = None;
            }
        }
    }

    /// Returns false when the channel is to be dropped.
    fn faulty_acceptor(&mut self, i: usize) -> bool {
        loop {
            match self.incoming[i].poll() {
                Ok(Some(ds_handoff::Message::Offer(_))) => {
                    if self.cfg.fault == Some(AcceptorFault::Crash) {
                        tracing::info!("injected fault: acceptor crashes on an offer");
                        return false;
                    }
                    tracing::info!("injected fault: acceptor ignores an offer");
                }
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Route-optimised acceptor: start the care-of test towards `client` (RFC 6275 §5.2.5)
    /// unless a token is at hand or a test is running.
    fn start_care_of_test(&mut self, now: Instant, client: Ipv6Addr, cookie: u64) {
        let Steering::RouteOptimised { role, .. } = &self.cfg.steering else {
            return;
        };
        if role.has_care_of_token() || self.rr_started.is_some() {
            return;
        }
        role.start_care_of_test(now, client, cookie.to_be_bytes());
        self.rr_started = Some(std::time::Instant::now());
    }

    /// Route-optimised acceptor: when the care-of test completes, its duration is phase 4.
    fn watch_care_of_test(&mut self) {
        let Steering::RouteOptimised { role, .. } = &self.cfg.steering else {
            return;
        };
        if let Some(t) = self.rr_started {
            if role.has_care_of_token() {
                self.rr_started = None;
                if let Ok(mut w) = self.rr_wait.lock() {
                    *w = t.elapsed();
                }
            }
        }
    }

    /// Route-optimised acceptor: an offer whose client has not answered our care-of test yet
    /// is held back (the test is started if the donor's Prepare did not start it) until it
    /// has, at most [`TICKET_WAIT`]; the Binding Update needs the care-of keygen token
    /// (RFC 6275 §5.2.5).
    fn hold_back(
        &mut self,
        i: usize,
        now: Instant,
        msg: ds_handoff::Message,
    ) -> Option<ds_handoff::Message> {
        let Steering::RouteOptimised { role, .. } = &self.cfg.steering else {
            return Some(msg);
        };
        let ds_handoff::Message::Offer(o) = &msg else {
            return Some(msg);
        };
        if role.has_care_of_token() {
            return Some(msg);
        }
        let Ok(st) = ConnState::decode(&o.state) else {
            return Some(msg);
        };
        let id = o.conn_id;
        tracing::debug!(client = %st.remote(), "offer held back for the care-of test");
        self.start_care_of_test(now, *st.remote().ip(), id);
        self.deferred = Some((i, msg, std::time::Instant::now()));
        None
    }

    fn next_message(
        &mut self,
        i: usize,
        iface: &mut Interface,
        now: Instant,
    ) -> Result<Option<AcceptorEvent>, ds_handoff::HandoffError> {
        if let Some((j, _, since)) = &self.deferred {
            if *j == i {
                let ready = match &self.cfg.steering {
                    Steering::RouteOptimised { role, .. } => role.has_care_of_token(),
                    _ => true,
                };
                if !ready && since.elapsed() < TICKET_WAIT {
                    return Ok(None);
                }
                if let Some((_, msg, since)) = self.deferred.take() {
                    self.watch_care_of_test();
                    return self.acceptor.handle_since(
                        &mut self.incoming[i],
                        iface,
                        now,
                        msg,
                        since,
                    );
                }
            }
        }
        let Some(msg) = self.incoming[i].poll()? else {
            return Ok(None);
        };
        match self.hold_back(i, now, msg) {
            Some(msg) => self.acceptor.handle(&mut self.incoming[i], iface, now, msg),
            None => Ok(None),
        }
    }

    fn accept_offers(&mut self, i: usize, iface: &mut Interface, now: Instant) -> bool {
        loop {
            match self.next_message(i, iface, now) {
                Ok(None) => return true,
                Ok(Some(AcceptorEvent::Activated { handle, app, .. })) => {
                    self.adopt(iface, now, handle, app)
                }
                Ok(Some(AcceptorEvent::Refused { reason, .. })) => {
                    self.events.push(NodeEvent::Declined {
                        cause: format!("refused: {reason:?}"),
                    });
                }
                Ok(Some(AcceptorEvent::Aborted { conn_id })) => {
                    self.events.push(NodeEvent::Declined {
                        cause: format!("offer {conn_id} aborted by the donor"),
                    });
                }
                Ok(Some(AcceptorEvent::Forwarded { .. })) => {}
                Ok(Some(AcceptorEvent::Prepare { conn_id, client })) => {
                    // Return routability overlaps with the donor's drain and the transfer.
                    self.start_care_of_test(now, *client.ip(), conn_id);
                }
                Err(e) => {
                    if !matches!(
                        e,
                        ds_handoff::HandoffError::Channel(ds_handoff::ChannelError::Closed)
                    ) {
                        tracing::warn!("control channel from a donor failed: {e}");
                    }
                    return false;
                }
            }
        }
    }

    /// Stop forwarding for a connection (it is live here again, or frozen anew).
    fn drop_forwarding(&mut self, local: SocketAddrV6, remote: SocketAddrV6) {
        self.forwarding
            .retain(|f| f.state.local() != local || f.state.remote() != remote);
    }

    fn adopt(&mut self, iface: &mut Interface, now: Instant, h: TcpHandle, app: Option<Vec<u8>>) {
        let ends = iface.tcp_endpoints(h);
        if let Some((local, remote)) = ends {
            self.drop_forwarding(local, remote);
        }
        let client = ends.map(|(_, r)| r);
        let res = app
            .ok_or_else(|| anyhow::anyhow!("the offer carried no HTTP state"))
            .and_then(|b| HttpConnState::decode(&b).map_err(anyhow::Error::from))
            .and_then(|st| self.server.adopt(h, st, now));
        match (res, client) {
            (Ok(()), Some(client)) => {
                self.stats.adopted += 1;
                self.events.push(NodeEvent::Adopted { client });
            }
            (res, _) => {
                // The connection is ours but cannot be continued: end it with a RST rather
                // than leave the client hanging (issue: never a silent hang).
                let cause = res.err().map(|e| format!("{e:#}")).unwrap_or_default();
                tracing::error!("cannot continue an adopted connection: {cause}");
                let _ = iface.tcp_abort(h);
                iface.tcp_release(h);
                self.events.push(NodeEvent::Failed { cause });
            }
        }
    }

    fn handoffs_left(&self) -> bool {
        self.cfg.max_handoffs.is_none_or(|m| self.stats.started < m)
    }

    fn drive_donor(&mut self, iface: &mut Interface, now: Instant) {
        if self.current.is_none() {
            self.start_next(iface, now);
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(chan) = self.to_peer.as_mut() else {
            return;
        };
        let res = cur.donor.poll(chan, iface, now);
        let client = cur.client;
        match res {
            Ok(None) => {}
            Ok(Some(DonorOutcome::Moved { report, state })) => {
                // SND.MAX at the freeze: the first new byte the client gets from the acceptor.
                let sent = state.in_flight.as_ref().map_or(0, |f| f.max_off);
                let boundary_seq = state.snd_una.wrapping_add(sent);
                self.stats.moved += 1;
                self.current = None;
                // An older entry for the same connection (it came back and left again within
                // the grace period) must not forget the new tombstone when it expires.
                self.drop_forwarding(state.local(), state.remote());
                tracing::info!(%client, "handed off: {}", report.to_json_line());
                self.forwarding.push(Forwarding {
                    state,
                    conn_id: self.next_id - 1,
                    until: std::time::Instant::now() + self.cfg.forward_grace,
                });
                self.events.push(NodeEvent::HandedOff {
                    report,
                    client,
                    boundary_seq,
                });
            }
            Ok(Some(DonorOutcome::Resumed { handle, cause })) => {
                let Some(cur) = self.current.take() else {
                    return;
                };
                self.stats.kept += 1;
                tracing::warn!(%client, "handoff failed, connection kept here: {cause}");
                if matches!(cause, ds_handoff::HandoffError::Channel(_))
                    || matches!(cause, ds_handoff::HandoffError::Timeout)
                {
                    // The channel may be broken or out of step: the next handoff reconnects.
                    self.to_peer = None;
                }
                if let Err(e) = self.server.adopt(handle, cur.app, now) {
                    tracing::error!("cannot continue the connection here: {e:#}");
                    let _ = iface.tcp_abort(handle);
                    iface.tcp_release(handle);
                }
                self.events.push(NodeEvent::KeptHere {
                    client,
                    cause: cause.to_string(),
                });
            }
            Err(e) => {
                self.current = None;
                self.to_peer = None;
                tracing::error!(%client, "handoff failed: {e}");
                self.events.push(NodeEvent::Failed {
                    cause: e.to_string(),
                });
            }
        }
    }

    fn start_next(&mut self, iface: &mut Interface, now: Instant) {
        while let Some(h) = self.queue.pop_front() {
            let client = iface.tcp_endpoints(h).map(|(_, r)| r);
            if !self.handoffs_left() || self.cfg.peer.is_none() || client.is_none() {
                self.server.resume(h);
                continue;
            }
            if let Err(e) = self.connect_peer() {
                tracing::warn!("peer unreachable, connection kept here: {e:#}");
                self.server.resume(h);
                continue;
            }
            let ticket = match (&self.cfg.home_role, client) {
                (Some(role), Some(c)) if self.cfg.mode == Mode::Ro => {
                    match role.home_ticket(now, 1).filter(|t| t.cn == *c.ip()) {
                        Some(t) => {
                            self.ticket_wait = None;
                            Some(postcard::to_allocvec(&t).unwrap_or_default())
                        }
                        None => {
                            // The home test has not completed yet: wait for it (bounded).
                            let since =
                                *self.ticket_wait.get_or_insert_with(std::time::Instant::now);
                            if since.elapsed() < TICKET_WAIT {
                                self.queue.push_front(h);
                                return;
                            }
                            self.ticket_wait = None;
                            tracing::warn!("no home keygen token for {c}: connection kept here");
                            self.server.resume(h);
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let app = match self.server.detach(h) {
                Some(Ok(app)) => app,
                Some(Err(e)) => {
                    // detach() leaves the connection in the server when the export fails.
                    tracing::warn!("HTTP state not exportable, connection kept here: {e:#}");
                    self.server.resume(h);
                    continue;
                }
                None => continue,
            };
            let mut dcfg = DonorConfig::new(self.next_id, &self.cfg.service);
            dcfg.ticket = ticket;
            self.next_id += 1;
            dcfg.app = Some(app.encode());
            dcfg.drain = self.cfg.drain;
            dcfg.reply_timeout = self.cfg.reply_timeout;
            dcfg.mode = self.cfg.mode;
            dcfg.path = self.cfg.path.clone();
            self.stats.started += 1;
            if !self.handoffs_left() {
                // The last one: no more connections get paused here.
                self.server.set_handoff_quota(None);
            }
            self.current = Some(Pending {
                donor: Donor::start(h, dcfg, now),
                client: client.unwrap_or_else(|| SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)),
                app,
            });
            return;
        }
    }

    fn forward(&mut self, iface: &mut Interface) {
        if self.forwarding.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let Some(chan) = self.to_peer.as_mut() else {
            // No channel: nothing can be forwarded any more; forget the tombstones.
            for f in self.forwarding.drain(..) {
                iface.tcp_forget_frozen(f.state.local(), f.state.remote());
            }
            return;
        };
        let mut sent = 0;
        self.forwarding.retain(|f| {
            let r = if now >= f.until {
                let rest = iface.tcp_forget_frozen(f.state.local(), f.state.remote());
                forward_packets(chan, f.conn_id, rest).map(|n| (n, false))
            } else {
                forward_held(chan, iface, f.conn_id, &f.state).map(|n| (n, true))
            };
            match r {
                Ok((n, keep)) => {
                    sent += n as u64;
                    keep
                }
                Err(e) => {
                    tracing::warn!("forwarding held packets failed: {e}");
                    iface.tcp_forget_frozen(f.state.local(), f.state.remote());
                    false
                }
            }
        });
        self.stats.forwarded_packets += sent;
    }
}
