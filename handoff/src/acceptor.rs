//! The acceptor's side: a sans-IO state machine answering offers from any number of donors.
//!
//! Fed `(now, input)` — [`Acceptor::handle`] for a message from a donor's channel (named by
//! the caller's key `K`), [`Acceptor::handle_home_agent`] for the home agent's answers,
//! [`Acceptor::poll`] after the caller's loop ran, [`Acceptor::channel_failed`] /
//! [`Acceptor::home_agent_failed`] when a channel broke — it drives the [`Host`] and the
//! [`Service`] (passed per call), queues messages ([`Acceptor::poll_transmit`]) and reports
//! what happened ([`Acceptor::poll_event`]). Nothing blocks: a slow home agent delays only the
//! offers waiting for it, never the caller's loop.
//!
//! ```text
//! Offer ─▶ checks (service, load, state) ─▶ [RO: wait for the care-of token] ─▶ thaw, dormant
//!   (phase 3) ─▶ steering (phases 4–6: MoveFlow→FlowMoved at the home agent, or the Binding
//!   Update) ─▶ Accept (commit) ─▶ next poll: activate (phase 7), Activated, service adopts
//! any failure before Accept ─▶ discard the thaw, Refuse: the donor keeps the connection
//! ```
//!
//! Steering ahead ([`AcceptorConfig::steer_ahead`], transparent mode): the MoveFlow leaves
//! and the Accept follows at once, without waiting for FlowMoved; the home agent's answer
//! becomes [`Message::Steered`] to the donor, which forwards what still reaches it until
//! then. The home agent's round trip (two process wake-ups) leaves the handoff's critical
//! path; the price is that a move the home agent never applies cannot be undone by a
//! refusal any more: the acceptor asks again every `steer_timeout`, and the donor forwards
//! meanwhile ([`crate::donor::MAX_FORWARD`] at most).
//!
//! The commit is the Accept leaving: the connection is activated only at the next
//! [`Acceptor::poll`], after the caller wrote the Accept; a channel that fails in between
//! ([`Acceptor::channel_failed`]) discards it instead, and the donor resumes it — unless the
//! client was steered here already: route-optimised, the Binding Update sent; transparent,
//! the home agent applied the move, which makes it refuse the donor's reclaim
//! ([`crate::flows`]): activated all the same.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use ds_stack::{ConnState, Packets};

use crate::host::{ns, Host, Service, Takeover};
use crate::msg::{AcceptorTimes, Message, Offer, RefuseReason};

/// How the acceptor steers a moved flow to itself (handoff phases 4–6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Nothing to do (the address takeover's announcement is the steering).
    None,
    /// Transparent mode: ask the home agent to tunnel the flow to `coa`, this node's care-of
    /// address ([`Message::MoveFlow`], answered by [`Message::FlowMoved`]).
    HomeAgentFlow {
        /// This node's care-of address.
        coa: Ipv6Addr,
    },
    /// Route-optimised mode: send the client (a correspondent node) a Binding Update built
    /// from the home keygen ticket that came with the connection and this node's care-of
    /// keygen token (RFC 6275 §5.2.5, §11.7.2). An offer waits for the care-of test.
    RouteOptimised {
        /// Binding lifetime asked for.
        lifetime: Duration,
    },
}

/// Acceptor policy.
#[derive(Debug, Clone)]
pub struct AcceptorConfig {
    /// Refuse with [`RefuseReason::Load`] when the host already has this many connections.
    pub max_connections: usize,
    /// Offers in progress at once (waiting for steering or a care-of token); more are refused
    /// with [`RefuseReason::Load`].
    pub max_pending: usize,
    /// Address takeover.
    pub takeover: Takeover,
    /// Steering.
    pub steering: Steering,
    /// Longest wait for the home agent's answer before the offer is refused.
    pub steer_timeout: Duration,
    /// Route-optimised: longest wait for the care-of test before the offer is refused.
    pub care_of_wait: Duration,
    /// The newest membership fence this node knows: offers with an older one (or none) are
    /// refused ([`RefuseReason::StaleFence`]). `None`: no membership, no check.
    pub fence: Option<crate::msg::Fence>,
    /// Transparent mode: commit as soon as the flow move is sent, without waiting for the
    /// home agent's answer, when the channel to the home agent is up
    /// ([`Acceptor::set_home_agent_ready`]); see the module's documentation.
    pub steer_ahead: bool,
}

impl Default for AcceptorConfig {
    /// Up to 10 000 connections, 64 offers in progress, the address taken over, no steering,
    /// 1 s steering timeout, 2 s care-of wait.
    fn default() -> Self {
        AcceptorConfig {
            max_connections: 10_000,
            max_pending: 64,
            takeover: Takeover::Address,
            steering: Steering::None,
            steer_timeout: Duration::from_secs(1),
            care_of_wait: Duration::from_secs(2),
            fence: None,
            steer_ahead: false,
        }
    }
}

/// Where an acceptor's message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<K> {
    /// The donor on the caller's channel `K`.
    Donor(K),
    /// The home agent's flow agent (transparent mode).
    HomeAgent,
}

/// What the acceptor did.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptorEvent {
    /// A connection now runs here and the service continues it.
    Adopted {
        /// The offer's id.
        conn_id: u64,
        /// The connection's client end.
        client: SocketAddrV6,
        /// The acceptor's phase timings.
        times: AcceptorTimes,
    },
    /// A connection arrived but the service could not continue it: it was reset.
    AdoptFailed {
        /// The offer's id.
        conn_id: u64,
        /// Why.
        cause: String,
    },
    /// An offer was refused.
    Refused {
        /// The offer's id.
        conn_id: u64,
        /// Why.
        reason: RefuseReason,
    },
    /// The donor gave an offer up (or its channel failed) before the commit.
    Aborted {
        /// The offer's id.
        conn_id: u64,
    },
    /// The donor announced an offer for a connection with `client` (its drain started).
    Prepared {
        /// The coming offer's id.
        conn_id: u64,
        /// The connection's client end.
        client: SocketAddrV6,
    },
    /// Packets the donor held for a moved connection were delivered here.
    Forwarded {
        /// The offer's id.
        conn_id: u64,
        /// How many.
        packets: usize,
        /// How many were dropped: for no connection that donor handed here (or one handed
        /// longer ago than a donor forwards), or not packets of that connection.
        refused: usize,
    },
    /// Steering ahead: the home agent answered the flow move of a connection that already
    /// runs here: `Ok(phase 6)`, or why it did not apply it (then the client's packets still
    /// reach the donor, which forwards them while it can).
    Steered {
        /// The offer's id.
        conn_id: u64,
        /// The connection's client end.
        client: SocketAddrV6,
        /// The move's round trip, or the home agent's refusal (or silence).
        result: Result<Duration, String>,
    },
    /// Route-optimised: the Binding Update went to `client` at `at` (phase 6 ends with its
    /// acknowledgement, which the caller sees from the mobile role).
    BindingSent {
        /// The correspondent.
        client: Ipv6Addr,
        /// When.
        at: Instant,
    },
}

/// A donor broke the protocol on its channel; drop the channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation: {0}")]
pub struct Violation(pub &'static str);

#[derive(Debug)]
enum Stage<C> {
    /// Route-optimised: waiting for the care-of keygen token.
    CareOf {
        offer: Offer,
        state: Box<ConnState>,
        since: Instant,
    },
    /// Thawed (dormant); the home agent's answer to MoveFlow `move_id` is awaited.
    Steering {
        conn: C,
        client: SocketAddrV6,
        app: Option<Vec<u8>>,
        times: AcceptorTimes,
        move_id: u64,
        sent: Instant,
    },
    /// Accept queued; activated at the next poll.
    Committing {
        conn: C,
        app: Option<Vec<u8>>,
        client: SocketAddrV6,
        times: AcceptorTimes,
        /// The client is steered here already ([`Acceptor::bound`]).
        bound: bool,
        /// Steered ahead: the flow move on its way (its id), and when it was sent.
        ahead: Option<(u64, Instant)>,
    },
}

/// Deadlines run on the caller's `now`; measured instants are the host's clock.
#[derive(Debug)]
struct Pending<K, C> {
    from: K,
    conn_id: u64,
    /// Caller's clock: when the offer arrived.
    arrived: Instant,
    /// Host clock: when the offer arrived (the acceptor's elapsed time starts here).
    arrived_host: Instant,
    until: Instant,
    /// The Accept must have left by then, or the donor may have given up on it
    /// ([`Offer::commit_within_us`]); `None`: no limit.
    commit_by: Option<Instant>,
    stage: Stage<C>,
}

/// Whether an offer's commit window ([`Offer::commit_within_us`]) is over at `now` (`None`:
/// no window).
fn too_late(commit_by: Option<Instant>, now: Instant) -> bool {
    commit_by.is_some_and(|c| now >= c)
}

/// Care-of tests this acceptor started, per correspondent (bounded).
const MAX_CARE_OF: usize = 1024;

/// Flow moves steered ahead and not yet answered (bounded: the oldest is given up first).
const MAX_UNSTEERED: usize = 1024;

/// How long a flow move steered ahead is asked for again before it is given up: the donor
/// forwards no longer than this either.
const STEER_AHEAD_FOR: Duration = crate::donor::MAX_FORWARD;

/// A connection committed ahead of its flow move's answer.
#[derive(Debug)]
struct Unsteered<K> {
    from: K,
    conn_id: u64,
    client: SocketAddrV6,
    /// The MoveFlow, sent again every `steer_timeout` until answered.
    request: Message,
    move_id: u64,
    /// Host clock: when it was first sent (phase 6 starts).
    sent: Instant,
    /// Caller's clock: the next resend, and the last.
    again: Instant,
    until: Instant,
}

/// A connection this acceptor activated, whose donor may still forward packets to it
/// ([`Message::Forward`]).
#[derive(Debug)]
struct Forwarder<K> {
    from: K,
    conn_id: u64,
    local: SocketAddrV6,
    remote: SocketAddrV6,
    /// Caller's clock: forget it then.
    until: Instant,
}

/// How long after an activation its donor's Forwards are taken: twice the longest a donor
/// forwards ([`crate::donor::MAX_FORWARD`]), for the channel's and the processes' delays
/// (durations only: the nodes' clocks need not agree).
const FORWARDS_FOR: Duration = Duration::from_secs(2 * crate::donor::MAX_FORWARD.as_secs());

/// Activated connections whose Forwards are taken (bounded: the oldest is forgotten first).
const MAX_FORWARDERS: usize = 4096;

/// Whether `packet` is an IPv6 packet of the TCP connection `local` ↔ `remote` from its
/// remote end (RFC 8200 §4: the extension headers walked to TCP; RFC 6275 §6.3, §6.4: the
/// Home Address option's address as the source, a type 2 routing header's as the
/// destination).
fn of_connection(packet: &[u8], local: SocketAddrV6, remote: SocketAddrV6) -> bool {
    let Ok(p) = ds_mipv6::wire::ParsedIpv6::parse(packet) else {
        return false;
    };
    let tcp = p.upper(packet);
    p.upper_proto == 6
        && p.hao.unwrap_or(p.src) == *remote.ip()
        && p.rh2.unwrap_or(p.dst) == *local.ip()
        && tcp.len() >= 4
        && u16::from_be_bytes([tcp[0], tcp[1]]) == remote.port()
        && u16::from_be_bytes([tcp[2], tcp[3]]) == local.port()
}

/// The acceptor side of a node.
#[derive(Debug)]
pub struct Acceptor<K, C> {
    cfg: AcceptorConfig,
    pending: Vec<Pending<K, C>>,
    out: VecDeque<(Dest<K>, Message)>,
    events: VecDeque<AcceptorEvent>,
    next_move: u64,
    /// Route-optimised: when the care-of test towards a correspondent started, and how long
    /// it took once its token is at hand (phase 4, run ahead of the offer).
    care_of: HashMap<Ipv6Addr, (Instant, Option<Duration>)>,
    /// Steering ahead: connections committed before the home agent answered their move.
    unsteered: VecDeque<Unsteered<K>>,
    /// Whether the channel to the home agent is up (steering ahead needs it).
    ha_ready: bool,
    /// Activated connections, in the order they were: a donor's Forward is injected only
    /// for one of its own, and only the packets of that connection (another donor's
    /// connections are not its to feed, and a kernel host sends what it injects out).
    forwarders: VecDeque<Forwarder<K>>,
}

impl<K: Copy + Eq + std::fmt::Debug, C: std::fmt::Debug> Acceptor<K, C> {
    /// An acceptor with this policy.
    pub fn new(cfg: AcceptorConfig) -> Self {
        Acceptor {
            cfg,
            pending: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_move: 1,
            care_of: HashMap::new(),
            unsteered: VecDeque::new(),
            ha_ready: false,
            forwarders: VecDeque::new(),
        }
    }

    /// Whether the channel to the home agent is established: an offer is steered ahead
    /// ([`AcceptorConfig::steer_ahead`]) only then, since a move that cannot even be sent
    /// should refuse the offer (the donor keeps the connection) rather than leave it to the
    /// donor's forwarding.
    pub fn set_home_agent_ready(&mut self, up: bool) {
        self.ha_ready = up;
    }

    /// Connections committed ahead of their flow move's answer.
    pub fn unsteered(&self) -> usize {
        self.unsteered.len()
    }

    /// Raise (or set) the newest membership fence known; offers fenced older are refused.
    pub fn set_fence(&mut self, fence: Option<crate::msg::Fence>) {
        self.cfg.fence = fence;
    }

    /// The policy.
    pub fn config(&self) -> &AcceptorConfig {
        &self.cfg
    }

    /// The next message to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(Dest<K>, Message)> {
        self.out.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<AcceptorEvent> {
        self.events.pop_front()
    }

    /// Offers in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When to call [`Acceptor::poll`] at the latest (at once while an Accept waits for its
    /// activation).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| match p.stage {
                Stage::Committing { .. } => p.arrived,
                _ => p.until,
            })
            .chain(self.unsteered.iter().map(|u| u.again))
            .min()
    }

    /// A message from the donor on channel `from`. `Err` when the donor broke the protocol:
    /// drop its channel (and call [`Acceptor::channel_failed`]).
    pub fn handle<H, S>(
        &mut self,
        now: Instant,
        from: K,
        msg: Message,
        host: &mut H,
        svc: &mut S,
    ) -> Result<(), Violation>
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        match msg {
            Message::Offer(o) => self.on_offer(now, from, o, host, svc),
            Message::Abort { conn_id, .. } => {
                let mut k = 0;
                while k < self.pending.len() {
                    let p = &self.pending[k];
                    // An Abort means the donor thawed the connection back (it sends none once
                    // it has an Accept: after that it is in doubt, not resumed). An offer
                    // whose Accept is out (Committing: the Abort crossed it) is dropped too,
                    // before its activation, or the connection would run at both nodes: the
                    // donor's reclaim takes the flow back at the home agent, and no address
                    // was taken over yet. Route-optimised, the client was already sent the
                    // Binding Update and sends here, so the acceptor keeps it (the donor's
                    // copy hears nothing more and times out). The commit window
                    // ([`Offer::commit_within_us`]) leaves a crossing to a channel or a
                    // process slower than a quarter of the donor's reply timeout.
                    // Transparent and bound, an Abort comes only after the donor reclaimed with
                    // force (no answer from the home agent): the flow goes back there.
                    let kept = self.bound(p)
                        && matches!(self.cfg.steering, Steering::RouteOptimised { .. });
                    if p.from == from && p.conn_id == conn_id && !kept {
                        let p = self.pending.swap_remove(k);
                        Self::drop_pending(p, host);
                        self.events.push_back(AcceptorEvent::Aborted { conn_id });
                        // A flow move steered ahead for it is asked no more: the donor's
                        // reclaim outranks it at the home agent anyway.
                        self.unsteered
                            .retain(|u| !(u.from == from && u.conn_id == conn_id));
                    } else {
                        k += 1;
                    }
                }
            }
            Message::Prepare { conn_id, client } => {
                if matches!(self.cfg.steering, Steering::RouteOptimised { .. }) {
                    // Return routability overlaps with the donor's drain and the transfer.
                    self.start_care_of_test(now, *client.ip(), conn_id, host);
                }
                self.events
                    .push_back(AcceptorEvent::Prepared { conn_id, client });
            }
            Message::Forward { conn_id, packets } => {
                let ends = self
                    .forwarders
                    .iter()
                    .find(|f| f.from == from && f.conn_id == conn_id && now < f.until)
                    .map(|f| (f.local, f.remote));
                let n = packets.len();
                let ok = match ends {
                    None => Packets::new(),
                    Some((l, r)) if packets.iter().all(|p| of_connection(p, l, r)) => packets,
                    Some((l, r)) => {
                        let mut ok = Packets::new();
                        for p in packets.iter().filter(|p| of_connection(p, l, r)) {
                            ok.push(p);
                        }
                        ok
                    }
                };
                let delivered = ok.len();
                if delivered < n {
                    tracing::warn!(
                        conn_id,
                        refused = n - delivered,
                        "forwarded packets not of a connection this donor handed here: dropped"
                    );
                }
                if delivered > 0 {
                    host.inject(ok);
                }
                self.events.push_back(AcceptorEvent::Forwarded {
                    conn_id,
                    packets: delivered,
                    refused: n - delivered,
                });
            }
            Message::Accept { .. }
            | Message::Refuse { .. }
            | Message::Activated { .. }
            | Message::Steered { .. }
            | Message::MoveFlow { .. }
            | Message::FlowMoved { .. }
            | Message::Rebind { .. }
            | Message::Rebound { .. } => {
                return Err(Violation("an acceptor got a reply or home-agent message"))
            }
        }
        Ok(())
    }

    /// The home agent's answer to a flow move.
    pub fn handle_home_agent<H>(&mut self, now: Instant, msg: Message, host: &mut H)
    where
        H: Host<Conn = C>,
    {
        let Message::FlowMoved {
            conn_id,
            ok,
            detail,
            ..
        } = msg
        else {
            tracing::warn!("home agent sent {msg:?}: ignored");
            return;
        };
        if let Some(k) = self.unsteered.iter().position(|u| u.move_id == conn_id) {
            if let Some(u) = self.unsteered.remove(k) {
                self.steered(u, ok.then_some(()).ok_or(detail), host);
            }
            return;
        }
        let Some(k) = self
            .pending
            .iter()
            .position(|p| matches!(p.stage, Stage::Steering { move_id, .. } if move_id == conn_id))
        else {
            // A late answer to a move given up on.
            tracing::debug!(conn_id, "flow-move answer for no pending offer");
            return;
        };
        let p = self.pending.swap_remove(k);
        let Stage::Steering {
            conn,
            client,
            app,
            mut times,
            sent,
            ..
        } = p.stage
        else {
            return;
        };
        if !ok {
            host.discard(conn);
            self.refuse(
                p.from,
                p.conn_id,
                RefuseReason::Other(format!("steering: {detail}")),
            );
            return;
        }
        // The move won at the home agent, the commit point ([`crate::flows`]): the connection
        // is this node's now, however late (a donor that gave up meanwhile finds its reclaim
        // refused and drops its copy), and it is activated even if the channel to the donor
        // fails before the Accept leaves.
        times.steer_ns[2] = ns(host.now().saturating_duration_since(sent));
        self.commit(
            now,
            p.from,
            p.conn_id,
            (p.arrived, p.arrived_host),
            conn,
            client,
            app,
            times,
            true,
            None,
        );
    }

    /// The channel to the home agent failed: offers waiting for it are refused.
    pub fn home_agent_failed<H: Host<Conn = C>>(&mut self, host: &mut H) {
        let mut k = 0;
        while k < self.pending.len() {
            if matches!(self.pending[k].stage, Stage::Steering { .. }) {
                let p = self.pending.swap_remove(k);
                let (from, id) = (p.from, p.conn_id);
                Self::drop_pending(p, host);
                self.refuse(
                    from,
                    id,
                    RefuseReason::Other("steering: home agent unreachable".into()),
                );
            } else {
                k += 1;
            }
        }
    }

    /// The channel `from` failed: its offers in progress are dropped (its donor resumes them,
    /// or already gave up), including one whose Accept may not have left — except those
    /// whose flow move is out (transparent mode: the home agent's answer decides, as the
    /// donor's reclaim is answered by the same judgement) and one committed with the client
    /// steered here already: route-optimised,
    /// its Binding Update went to the client with the commit, so the client sends here from
    /// now on, and a dropped connection would answer it with a reset; transparent, the home
    /// agent applied the move and refuses the donor's reclaim, so the donor does not resume
    /// it. It is activated at the next poll as if the Accept had gone (its Activated has
    /// nowhere to go). (Route-optimised, the donor's copy, resumed on the same failure, hears
    /// nothing more from the client and times out, as after an Abort that crossed the
    /// Accept.)
    pub fn channel_failed<H: Host<Conn = C>>(&mut self, from: K, host: &mut H) {
        self.out.retain(|(d, _)| *d != Dest::Donor(from));
        // Committed ahead of the move's answer, the Accept not out: the move may still win at
        // the home agent (then the donor does not resume) or lose (then it does). The offer
        // waits for the answer as one not steered ahead would.
        let mut k = 0;
        while k < self.pending.len() {
            let p = &self.pending[k];
            let ahead = match p.stage {
                Stage::Committing { ahead: Some(a), .. } if p.from == from => a,
                _ => {
                    k += 1;
                    continue;
                }
            };
            let (move_id, sent) = ahead;
            self.unsteered.retain(|u| u.move_id != move_id);
            let p = self.pending.swap_remove(k);
            let Stage::Committing {
                conn,
                app,
                client,
                times,
                ..
            } = p.stage
            else {
                continue;
            };
            self.pending.push(Pending {
                // The move steered ahead has no validity limit: its answer is waited for as
                // long as such a move is asked for.
                until: p.arrived + STEER_AHEAD_FOR,
                stage: Stage::Steering {
                    conn,
                    client,
                    app,
                    times,
                    move_id,
                    sent,
                },
                ..p
            });
        }
        let mut k = 0;
        while k < self.pending.len() {
            // An offer whose flow move is out stays until the home agent answers: if the move
            // wins, the donor's reclaim is refused and only this node can serve the
            // connection (it is activated then, as a bound one); if not, it is discarded.
            let steering = matches!(self.pending[k].stage, Stage::Steering { .. });
            if self.pending[k].from == from && !self.bound(&self.pending[k]) && !steering {
                let p = self.pending.swap_remove(k);
                let id = p.conn_id;
                Self::drop_pending(p, host);
                self.events
                    .push_back(AcceptorEvent::Aborted { conn_id: id });
            } else {
                k += 1;
            }
        }
    }

    /// Advance: activate committed connections, give up on slow steering, take up offers
    /// whose care-of token arrived.
    pub fn poll<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        while self.forwarders.front().is_some_and(|f| now >= f.until) {
            self.forwarders.pop_front();
        }
        // Flow moves steered ahead and not answered: ask again, or give up (bounded).
        let mut k = 0;
        while k < self.unsteered.len() {
            let u = &mut self.unsteered[k];
            if now < u.again {
                k += 1;
            } else if now >= u.until {
                if let Some(u) = self.unsteered.remove(k) {
                    self.steered(u, Err("no answer from the home agent".into()), host);
                }
            } else {
                u.again = now + self.cfg.steer_timeout;
                let m = u.request.clone();
                self.out.push_back((Dest::HomeAgent, m));
                k += 1;
            }
        }
        // Care-of tests that completed (phase 4 ran ahead).
        for (cn, (started, took)) in self.care_of.iter_mut() {
            if took.is_none() && host.has_care_of_token(*cn) {
                *took = Some(now.saturating_duration_since(*started));
            }
        }
        let mut k = 0;
        while k < self.pending.len() {
            let p = &self.pending[k];
            let ready = match &p.stage {
                Stage::Committing { .. } => true,
                Stage::CareOf { state, .. } => {
                    host.has_care_of_token(*state.remote().ip()) || now >= p.until
                }
                Stage::Steering { .. } => now >= p.until,
            };
            if !ready {
                k += 1;
                continue;
            }
            let p = self.pending.swap_remove(k);
            match p.stage {
                Stage::Committing {
                    conn,
                    app,
                    client,
                    times,
                    ..
                } => self.activate(
                    now,
                    // The host's clock, as every phase: the caller's `now` of the round the
                    // offer came in may precede its arrival (and the donor's send), which made
                    // the acceptor's elapsed time exceed the donor's round trip and phase 2
                    // come out as zero.
                    p.from,
                    p.conn_id,
                    p.arrived_host,
                    conn,
                    app,
                    client,
                    times,
                    host,
                    svc,
                ),
                Stage::CareOf {
                    offer,
                    state,
                    since,
                } => {
                    let rr = now.saturating_duration_since(since);
                    self.care_of.remove(state.remote().ip());
                    let arrived = (p.arrived, p.arrived_host);
                    self.take_offer(now, p.from, offer, *state, arrived, rr, p.commit_by, host);
                }
                Stage::Steering { conn, .. } => {
                    host.discard(conn);
                    let reason = if too_late(p.commit_by, now) {
                        RefuseReason::TooLate
                    } else {
                        RefuseReason::Other(
                            "steering: no answer from the home agent in time".into(),
                        )
                    };
                    self.refuse(p.from, p.conn_id, reason);
                }
            }
        }
    }

    fn on_offer<H, S>(&mut self, now: Instant, from: K, o: Offer, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let id = o.conn_id;
        tracing::debug!(conn_id = id, state_bytes = o.state.len(), "offer received");
        // A window too long to add to the clock (any value can come) is no limit.
        let commit_by = o.commit_within_us.and_then(|us| {
            let within = Duration::from_micros(us);
            now.checked_add(within - within / 4)
        });
        if !svc.accepts(&o.service) {
            return self.refuse(from, id, RefuseReason::UnknownService);
        }
        if let Some(known) = self.cfg.fence {
            // Fencing (beyond seed §2.3): a donor that has not seen the current holder's
            // registration acts for a deposed contact.
            if o.fence.is_none_or(|f| f < known) {
                return self.refuse(from, id, RefuseReason::StaleFence { known });
            }
        }
        if host.connection_count() >= self.cfg.max_connections
            || self.pending.len() >= self.cfg.max_pending
        {
            return self.refuse(from, id, RefuseReason::Load);
        }
        let state = match ConnState::decode(&o.state) {
            Ok(s) => s,
            Err(e) => return self.refuse(from, id, RefuseReason::BadState(e.to_string())),
        };
        if let Steering::RouteOptimised { .. } = self.cfg.steering {
            let cn = *state.remote().ip();
            if !host.has_care_of_token(cn) {
                // The Binding Update needs the care-of keygen token (RFC 6275 §5.2.5): hold
                // the offer back until the test (started now if no Prepare started it)
                // answers; that wait is phase 4.
                tracing::debug!(client = %state.remote(), "offer held back for the care-of test");
                self.start_care_of_test(now, cn, id, host);
                let since = self.care_of.get(&cn).map_or(now, |c| c.0);
                let until = now + self.cfg.care_of_wait;
                self.pending.push(Pending {
                    from,
                    conn_id: id,
                    arrived: now,
                    arrived_host: host.now(),
                    until: until.min(commit_by.unwrap_or(until)),
                    commit_by,
                    stage: Stage::CareOf {
                        offer: o,
                        state: Box::new(state),
                        since,
                    },
                });
                return;
            }
            // The care-of test ran ahead (phase 4, overlapped with the drain and the
            // transfer); its token may have come in this very round.
            let rr = self
                .care_of
                .remove(&cn)
                .map(|(started, took)| took.unwrap_or(now.saturating_duration_since(started)))
                .unwrap_or_default();
            let arrived = (now, host.now());
            return self.take_offer(now, from, o, state, arrived, rr, commit_by, host);
        }
        let arrived = (now, host.now());
        self.take_offer(
            now,
            from,
            o,
            state,
            arrived,
            Duration::ZERO,
            commit_by,
            host,
        )
    }

    /// Phases 3–6 for an offer that passed the checks; `rr` is phase 4 when it ran ahead or
    /// while the offer waited.
    #[allow(clippy::too_many_arguments)]
    fn take_offer<H: Host<Conn = C>>(
        &mut self,
        now: Instant,
        from: K,
        o: Offer,
        state: ConnState,
        arrived: (Instant, Instant),
        rr: Duration,
        commit_by: Option<Instant>,
        host: &mut H,
    ) {
        let id = o.conn_id;
        if too_late(commit_by, now) {
            // Nothing done yet (no thaw, no flow move, no Binding Update): the donor keeps it.
            return self.refuse(from, id, RefuseReason::TooLate);
        }
        // Phase 3: socket re-creation (dormant until the commit).
        let t3 = host.now();
        let conn = match host.thaw(&state, self.cfg.takeover) {
            Ok(c) => c,
            Err(e) => return self.refuse(from, id, RefuseReason::ThawFailed(e.to_string())),
        };
        let mut times = AcceptorTimes {
            recreate_ns: ns(host.now().saturating_duration_since(t3)),
            host: host.kind(),
            ..Default::default()
        };
        let app = o.app.map(|b| b.into_vec());
        // Phases 4–6, before the commit: a flow that cannot be steered here is refused and
        // stays with the donor (a failed steering step changed nothing).
        match self.cfg.steering {
            Steering::None => {
                let client = state.remote();
                self.commit(
                    now, from, id, arrived, conn, client, app, times, false, None,
                )
            }
            Steering::HomeAgentFlow { coa } => {
                // Phase 5 builds the request; phase 6 is the home agent's map update and
                // answer (phase 4, return routability, does not exist in transparent mode).
                let t5 = host.now();
                let move_id = self.next_move;
                self.next_move += 1;
                tracing::debug!(conn_id = id, "flow move asked");
                let ahead = self.cfg.steer_ahead && self.ha_ready;
                let until = now + self.cfg.steer_timeout;
                let until = until.min(commit_by.unwrap_or(until));
                // The home agent may apply the move within three quarters of this acceptor's
                // wait for the answer (counted from its arrival there; durations only, the
                // clocks need not agree): the last quarter is for the request's and the
                // answer's ways and this loop's reading. Applied later, it would steer the
                // client here after the offer was given up. Moves steered ahead are asked for
                // until answered.
                let valid_us = (!ahead).then(|| {
                    let wait = until.saturating_duration_since(now) * 3 / 4;
                    u64::try_from(wait.as_micros()).unwrap_or(u64::MAX)
                });
                let request = Message::MoveFlow {
                    conn_id: move_id,
                    client: state.remote(),
                    server: state.local(),
                    to: coa,
                    generation: o.generation,
                    reclaim: false,
                    force: false,
                    valid_us,
                };
                self.out.push_back((Dest::HomeAgent, request.clone()));
                let sent = host.now();
                times.steer_ns[1] = ns(sent.saturating_duration_since(t5));
                if ahead {
                    // The move is on its way; the commit does not wait for its answer.
                    times.steer_ahead = true;
                    if self.unsteered.len() >= MAX_UNSTEERED {
                        if let Some(old) = self.unsteered.pop_front() {
                            self.steered(old, Err("too many moves unanswered".into()), host);
                        }
                    }
                    self.unsteered.push_back(Unsteered {
                        from,
                        conn_id: id,
                        client: state.remote(),
                        request,
                        move_id,
                        sent,
                        again: now + self.cfg.steer_timeout,
                        until: now + STEER_AHEAD_FOR,
                    });
                    // Not bound yet: if the channel fails before the Accept leaves, the offer
                    // waits for the move's answer like any other ([`Acceptor::channel_failed`]).
                    let ahead = Some((move_id, sent));
                    let client = state.remote();
                    return self.commit(
                        now, from, id, arrived, conn, client, app, times, false, ahead,
                    );
                }
                self.pending.push(Pending {
                    from,
                    conn_id: id,
                    arrived: arrived.0,
                    arrived_host: arrived.1,
                    until,
                    commit_by,
                    stage: Stage::Steering {
                        conn,
                        client: state.remote(),
                        app,
                        times,
                        move_id,
                        sent,
                    },
                });
            }
            Steering::RouteOptimised { lifetime } => {
                let cn = *state.remote().ip();
                let Some(ticket) = o.ticket else {
                    host.discard(conn);
                    return self.refuse(
                        from,
                        id,
                        RefuseReason::Other(
                            "steering: route-optimised offer without a home ticket".into(),
                        ),
                    );
                };
                // Phase 5 builds and queues the Binding Update; phase 6 (until the Binding
                // Acknowledgement) completes after the activation: AcceptorEvent::BindingSent.
                let t5 = host.now();
                if let Err(e) = host.bind(cn, &ticket, lifetime) {
                    host.discard(conn);
                    return self.refuse(from, id, RefuseReason::Other(format!("steering: {e}")));
                }
                let at = host.now();
                times.steer_ns = [ns(rr), ns(at.saturating_duration_since(t5)), 0];
                self.events
                    .push_back(AcceptorEvent::BindingSent { client: cn, at });
                let client = state.remote();
                self.commit(now, from, id, arrived, conn, client, app, times, true, None);
            }
        }
    }

    /// Queue the Accept; the activation follows at the next poll, after the caller sent it.
    /// `bound`: the client is steered here already (the home agent applied the move, or the
    /// Binding Update left), so the connection is activated even if the Accept cannot leave.
    /// `ahead`: steered ahead, the move's id and when it was sent.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        now: Instant,
        from: K,
        conn_id: u64,
        arrived: (Instant, Instant),
        conn: C,
        client: SocketAddrV6,
        app: Option<Vec<u8>>,
        times: AcceptorTimes,
        bound: bool,
        ahead: Option<(u64, Instant)>,
    ) {
        self.out
            .push_back((Dest::Donor(from), Message::Accept { conn_id }));
        self.pending.push(Pending {
            from,
            conn_id,
            arrived: arrived.0,
            arrived_host: arrived.1,
            until: now,
            commit_by: None,
            stage: Stage::Committing {
                conn,
                app,
                client,
                times,
                bound,
                ahead,
            },
        });
    }

    /// Phase 7 and the service's adoption.
    #[allow(clippy::too_many_arguments)]
    fn activate<H, S>(
        &mut self,
        now: Instant,
        from: K,
        conn_id: u64,
        arrived_host: Instant,
        mut conn: C,
        app: Option<Vec<u8>>,
        client: SocketAddrV6,
        mut times: AcceptorTimes,
        host: &mut H,
        svc: &mut S,
    ) where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let t7 = host.now();
        if let Err(e) = host.activate(&mut conn, self.cfg.takeover == Takeover::Address) {
            // After the commit: the connection is lost on both sides. Reset it rather than
            // leave the client hanging; the donor hears nothing more and reports it in doubt.
            tracing::error!(conn_id, "activation failed after the commit: {e}");
            host.abort(conn);
            self.events.push_back(AcceptorEvent::AdoptFailed {
                conn_id,
                cause: format!("activation: {e}"),
            });
            return;
        }
        let t7e = host.now();
        if let Some((local, remote)) = host.endpoints(&conn) {
            if self.forwarders.len() >= MAX_FORWARDERS {
                self.forwarders.pop_front();
            }
            self.forwarders.push_back(Forwarder {
                from,
                conn_id,
                local,
                remote,
                until: now + FORWARDS_FOR,
            });
        }
        times.activate_ns = ns(t7e.saturating_duration_since(t7));
        times.elapsed_ns = ns(t7e.saturating_duration_since(arrived_host));
        tracing::debug!(conn_id, "activated");
        self.out
            .push_back((Dest::Donor(from), Message::Activated { conn_id, times }));
        let res = match app {
            Some(a) => svc.adopt(conn, &a),
            None => Err((conn, "the offer carried no service state".to_string())),
        };
        match res {
            Ok(()) => self.events.push_back(AcceptorEvent::Adopted {
                conn_id,
                client,
                times,
            }),
            Err((conn, cause)) => {
                // The connection is ours but cannot be continued: a RST rather than a hang.
                tracing::error!(conn_id, "cannot continue an adopted connection: {cause}");
                host.abort(conn);
                self.events
                    .push_back(AcceptorEvent::AdoptFailed { conn_id, cause });
            }
        }
    }

    /// The home agent answered (or will not answer) a move steered ahead.
    fn steered<H: Host<Conn = C>>(
        &mut self,
        u: Unsteered<K>,
        result: Result<(), String>,
        host: &mut H,
    ) {
        let result = result.map(|()| host.now().saturating_duration_since(u.sent));
        match &result {
            Ok(took) => self.out.push_back((
                Dest::Donor(u.from),
                Message::Steered {
                    conn_id: u.conn_id,
                    steer_ns: ns(*took),
                },
            )),
            // The donor keeps forwarding what reaches it, as long as packets come.
            Err(why) => {
                tracing::warn!(conn_id = u.conn_id, client = %u.client, "flow move steered ahead not applied: {why}")
            }
        }
        self.events.push_back(AcceptorEvent::Steered {
            conn_id: u.conn_id,
            client: u.client,
            result,
        });
    }

    /// Whether the client was already steered to this node for `p`'s connection, after which
    /// only this node can serve it: a route-optimised offer is committed together with its
    /// Binding Update (RFC 6275 §5.2.5, sent by the steering before the Accept), a
    /// transparent one once the home agent applied its move (which then refuses the donor's
    /// reclaim, [`crate::flows`]).
    fn bound(&self, p: &Pending<K, C>) -> bool {
        matches!(p.stage, Stage::Committing { bound: true, .. })
    }

    fn refuse(&mut self, from: K, conn_id: u64, reason: RefuseReason) {
        tracing::warn!(conn_id, "offer refused: {reason:?}");
        self.out.push_back((
            Dest::Donor(from),
            Message::Refuse {
                conn_id,
                reason: reason.clone(),
            },
        ));
        self.events
            .push_back(AcceptorEvent::Refused { conn_id, reason });
    }

    fn drop_pending<H: Host<Conn = C>>(p: Pending<K, C>, host: &mut H) {
        match p.stage {
            Stage::CareOf { .. } => {}
            Stage::Steering { conn, .. } | Stage::Committing { conn, .. } => host.discard(conn),
        }
    }

    fn start_care_of_test<H: Host<Conn = C>>(
        &mut self,
        now: Instant,
        cn: Ipv6Addr,
        cookie: u64,
        host: &mut H,
    ) {
        // A test in flight serves this connection too. Otherwise a new one, even with a token
        // at hand: the correspondent may have restarted since that token (a new client
        // program on a userspace stack has new keys, RFC 6275 §5.2.7) and a Binding Update
        // built from it would be silently discarded (§9.5.1). The test overlaps with the
        // drain and the transfer; an offer that arrives first waits for it (phase 4).
        if self.care_of.get(&cn).is_some_and(|c| c.1.is_none()) {
            return;
        }
        if self.care_of.len() >= MAX_CARE_OF {
            // Bounded: forget the oldest test.
            if let Some(old) = self.care_of.iter().min_by_key(|c| c.1 .0).map(|c| *c.0) {
                self.care_of.remove(&old);
            }
        }
        match host.start_care_of_test(cn, cookie) {
            Ok(()) => {
                self.care_of.insert(cn, (now, None));
            }
            Err(e) => tracing::warn!(%cn, "care-of test not started: {e}"),
        }
    }
}
