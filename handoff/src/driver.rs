//! Poll-driven donor and acceptor for the userspace path.
//!
//! Both are sans-IO with respect to the data path: the caller owns the [`Interface`] and its
//! clock and calls `poll` from its loop (after stepping the interface). The control channel is
//! a non-blocking [`Channel`], so one thread can drive donor, acceptor and interfaces.
//!
//! Commit rule: the acceptor sends [`Message::Accept`] only after the thaw and the steering
//! (phases 4–6) succeeded, and the
//! donor treats Accept as the commit point. Before it (Refuse, channel error, timeout) the donor
//! thaws the connection back: nothing is lost. After it the connection belongs to the acceptor;
//! a missing Activated is reported as [`HandoffError::InDoubt`] and the state stays frozen.
//! The remaining window — an Accept in flight when the donor's reply timeout fires — cannot be
//! closed by two parties alone; keep the reply timeout well above the control path's delay.

use std::time::{Duration, Instant as MonoInstant};

use ds_stack::state::StateError;
use ds_stack::{ConnState, Instant, Interface, TcpHandle};

use crate::channel::{Channel, ChannelError};
use crate::drain::{Drain, DrainEnd, DrainGate};
use crate::msg::{AcceptorTimes, Message, Offer, RefuseReason};
use crate::report::{HandoffReport, Mode, Phase, PhaseTimes};

/// Handoff failures.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// Control channel failure.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The stack refused an operation (freeze, thaw).
    #[error("stack: {0}")]
    Stack(#[from] ds_stack::Error),
    /// The state did not decode.
    #[error(transparent)]
    State(#[from] StateError),
    /// The acceptor refused.
    #[error("refused by the acceptor: {0:?}")]
    Refused(RefuseReason),
    /// No reply in time.
    #[error("no reply from the acceptor in time")]
    Timeout,
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The acceptor accepted, then did not confirm activation: the connection is not thawed
    /// back here (it may run there).
    #[error("acceptor accepted but did not confirm activation: {0}")]
    InDoubt(String),
    /// The connection closed before it could be frozen.
    #[error("connection gone before the freeze")]
    Gone,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// What a handoff is and how the donor runs it.
#[derive(Debug, Clone)]
pub struct DonorConfig {
    /// Identifier echoed by the acceptor.
    pub conn_id: u64,
    /// Service name the acceptor checks.
    pub service: String,
    /// Optional encoded mobility ticket (route-optimised mode).
    pub ticket: Option<Vec<u8>>,
    /// The service's state of the connection, handed to the acceptor's service.
    pub app: Option<Vec<u8>>,
    /// When to freeze.
    pub drain: Drain,
    /// Longest wait for Accept/Refuse after the offer (monotonic clock), and then again for
    /// Activated.
    pub reply_timeout: Duration,
    /// Steering mode, for the report.
    pub mode: Mode,
    /// Path label for the report, e.g. `"user->user"`.
    pub path: String,
    /// Announce the coming offer when the drain starts ([`Message::Prepare`]), so the
    /// acceptor can run return routability meanwhile.
    pub prepare: bool,
}

impl DonorConfig {
    /// Defaults: immediate freeze, 2 s reply timeout, transparent, `"user->user"`.
    pub fn new(conn_id: u64, service: &str) -> Self {
        DonorConfig {
            conn_id,
            service: service.to_string(),
            ticket: None,
            app: None,
            drain: Drain::Immediate,
            reply_timeout: Duration::from_secs(2),
            mode: Mode::Transparent,
            path: "user->user".into(),
            prepare: true,
        }
    }
}

/// How a donor's handoff ended.
#[derive(Debug)]
pub enum DonorOutcome {
    /// The connection runs on the acceptor. The donor still holds off the connection's
    /// packets (frozen); call [`Interface::tcp_forget_frozen`] once steering is in effect.
    Moved {
        /// The measured handoff.
        report: HandoffReport,
        /// The frozen state (kept for the caller's records and `tcp_forget_frozen`).
        state: Box<ConnState>,
    },
    /// The handoff failed before the acceptor committed; the connection runs here again.
    Resumed {
        /// The thawed connection's new handle.
        handle: TcpHandle,
        /// Why it came back.
        cause: HandoffError,
    },
}

#[derive(Debug)]
struct InFlight {
    state: ConnState,
    t0: MonoInstant,
    offer_sent: MonoInstant,
    phases: PhaseTimes,
    drain: Duration,
    state_bytes: usize,
    offer_bytes: usize,
    accepted: Option<MonoInstant>,
}

#[derive(Debug)]
enum DonorPhase {
    Draining { gate: DrainGate, since: MonoInstant },
    Offered(Box<InFlight>),
    Done,
}

/// The donor side of one handoff.
#[derive(Debug)]
pub struct Donor {
    cfg: DonorConfig,
    phase: DonorPhase,
    /// The Prepare message went out (or is not wanted).
    prepared: bool,
}

impl Donor {
    /// Begin handing `handle` off (the drain starts at `now`, the stack's clock).
    pub fn start(handle: TcpHandle, cfg: DonorConfig, now: Instant) -> Self {
        let gate = DrainGate::start(handle, cfg.drain, now);
        Donor {
            prepared: !cfg.prepare,
            cfg,
            phase: DonorPhase::Draining {
                gate,
                since: MonoInstant::now(),
            },
        }
    }

    /// True while waiting for the drain: the application must not write to the connection.
    pub fn is_draining(&self) -> bool {
        matches!(self.phase, DonorPhase::Draining { .. })
    }

    /// The stack time by which the caller should poll again while draining.
    pub fn poll_at(&self) -> Option<Instant> {
        match &self.phase {
            DonorPhase::Draining { gate, .. } => gate.deadline(),
            _ => None,
        }
    }

    /// Advance the handoff. `Ok(Some(_))` once it ended; `Err` when it ended in a state this
    /// side cannot repair ([`HandoffError::InDoubt`], a failed thaw back, a vanished
    /// connection).
    pub fn poll(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
    ) -> Result<Option<DonorOutcome>, HandoffError> {
        match std::mem::replace(&mut self.phase, DonorPhase::Done) {
            DonorPhase::Done => Ok(None),
            DonorPhase::Draining { gate, since } => {
                if !self.prepared {
                    // Best effort: a lost Prepare only means return routability runs later.
                    self.prepared = true;
                    if let Some((_, client)) = iface.tcp_endpoints(gate.handle()) {
                        let _ = chan.send(&Message::Prepare {
                            conn_id: self.cfg.conn_id,
                            client,
                        });
                    }
                }
                self.drained(chan, iface, now, gate, since)
            }
            DonorPhase::Offered(f) => self.await_reply(chan, iface, now, f),
        }
    }

    fn drained(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        mut gate: DrainGate,
        since: MonoInstant,
    ) -> Result<Option<DonorOutcome>, HandoffError> {
        match gate.ready(iface, now) {
            None => {
                self.phase = DonorPhase::Draining { gate, since };
                Ok(None)
            }
            Some(DrainEnd::Gone) => Err(HandoffError::Gone),
            Some(_) => self.offer(chan, iface, now, gate.handle(), since.elapsed()),
        }
    }

    fn offer(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        handle: TcpHandle,
        drain: Duration,
    ) -> Result<Option<DonorOutcome>, HandoffError> {
        // Phase 1: socket extraction.
        let t0 = MonoInstant::now();
        let state = iface.tcp_freeze(now, handle)?;
        let bytes = state.encode();
        let mut phases = PhaseTimes::default();
        phases.set(Phase::SocketExtraction, t0.elapsed());
        let state_bytes = bytes.len();
        let offer = Message::Offer(Offer {
            conn_id: self.cfg.conn_id,
            state: bytes,
            ticket: self.cfg.ticket.clone().map(serde_bytes::ByteBuf::from),
            service: self.cfg.service.clone(),
            app: self.cfg.app.clone().map(serde_bytes::ByteBuf::from),
        });
        let before = chan.bytes_sent();
        let offer_sent = MonoInstant::now();
        if let Err(e) = chan.send(&offer) {
            return self.resume(chan, iface, now, &state, e.into());
        }
        tracing::debug!(
            conn_id = self.cfg.conn_id,
            state_bytes,
            unsent = chan.pending_output(),
            since_freeze = ?t0.elapsed(),
            send = ?offer_sent.elapsed(),
            "offer sent"
        );
        let offer_bytes = (chan.bytes_sent() - before) as usize;
        self.phase = DonorPhase::Offered(Box::new(InFlight {
            state,
            t0,
            offer_sent,
            phases,
            drain,
            state_bytes,
            offer_bytes,
            accepted: None,
        }));
        // The reply may already be there.
        self.poll(chan, iface, now)
    }

    fn resume(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        state: &ConnState,
        cause: HandoffError,
    ) -> Result<Option<DonorOutcome>, HandoffError> {
        // Tell the acceptor to drop the offer (unless it refused it already); best effort: the
        // channel may be what failed.
        if !matches!(cause, HandoffError::Refused(_)) {
            let _ = chan.send(&Message::Abort {
                conn_id: self.cfg.conn_id,
                reason: cause.to_string(),
            });
        }
        let handle = iface.tcp_thaw(now, state)?;
        self.phase = DonorPhase::Done;
        Ok(Some(DonorOutcome::Resumed { handle, cause }))
    }

    fn await_reply(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        mut f: Box<InFlight>,
    ) -> Result<Option<DonorOutcome>, HandoffError> {
        let id = self.cfg.conn_id;
        loop {
            let msg = match chan.poll() {
                Ok(m) => m,
                Err(e) if f.accepted.is_none() => {
                    return self.resume(chan, iface, now, &f.state, e.into())
                }
                Err(e) => return Err(HandoffError::InDoubt(e.to_string())),
            };
            let Some(msg) = msg else { break };
            if msg.conn_id() != id {
                // A late reply about an earlier offer: not ours to act on.
                continue;
            }
            match (msg, f.accepted) {
                (Message::Refuse { reason, .. }, None) => {
                    return self.resume(chan, iface, now, &f.state, HandoffError::Refused(reason))
                }
                (Message::Abort { .. }, None) => {
                    return self.resume(
                        chan,
                        iface,
                        now,
                        &f.state,
                        HandoffError::Protocol("acceptor aborted"),
                    )
                }
                (Message::Accept { .. }, None) => f.accepted = Some(MonoInstant::now()),
                (Message::Activated { times, .. }, Some(_)) => {
                    return Ok(Some(self.finish(*f, times)));
                }
                (_, None) => {
                    return self.resume(
                        chan,
                        iface,
                        now,
                        &f.state,
                        HandoffError::Protocol("unexpected reply to an offer"),
                    )
                }
                (_, Some(_)) => {
                    self.phase = DonorPhase::Done;
                    return Err(HandoffError::InDoubt(
                        "unexpected message after Accept".into(),
                    ));
                }
            }
        }
        let waited = f.accepted.unwrap_or(f.offer_sent).elapsed();
        if waited > self.cfg.reply_timeout {
            if f.accepted.is_none() {
                return self.resume(chan, iface, now, &f.state, HandoffError::Timeout);
            }
            self.phase = DonorPhase::Done;
            return Err(HandoffError::InDoubt("no Activated in time".into()));
        }
        self.phase = DonorPhase::Offered(f);
        Ok(None)
    }

    fn finish(&mut self, f: InFlight, times: AcceptorTimes) -> DonorOutcome {
        let done = MonoInstant::now();
        let mut phases = f.phases;
        // Phase 2: the exchange's network time as the donor sees it, minus the acceptor's own
        // processing (so the two clocks are never compared).
        let rtt = done.duration_since(f.offer_sent);
        phases.set(
            Phase::StateTransfer,
            rtt.saturating_sub(Duration::from_nanos(times.elapsed_ns)),
        );
        phases.set(
            Phase::SocketRecreation,
            Duration::from_nanos(times.recreate_ns),
        );
        for (i, p) in [
            Phase::ReturnRoutability,
            Phase::BuConstruction,
            Phase::BindingManagement,
        ]
        .into_iter()
        .enumerate()
        {
            phases.set(p, Duration::from_nanos(times.steer_ns[i]));
        }
        phases.set(
            Phase::SocketActivation,
            Duration::from_nanos(times.activate_ns),
        );
        let report = HandoffReport::new(
            self.cfg.mode,
            &self.cfg.path,
            &phases,
            done.duration_since(f.t0),
            f.drain,
            f.state_bytes,
            f.offer_bytes,
        );
        self.phase = DonorPhase::Done;
        DonorOutcome::Moved {
            report,
            state: Box::new(f.state),
        }
    }
}

/// How the acceptor makes the connection's local address its own before the thaw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The address must already be ours.
    None,
    /// Claim it on the link ([`Interface::add_addr`]) and announce it with an unsolicited
    /// Neighbour Advertisement with override (RFC 4861 §7.2.6) at activation.
    Address,
    /// Serve it as a Mobile IPv6 home address away from home ([`Interface::add_home_addr`]);
    /// no announcement (route-optimised mode: the Binding Update steers the client).
    HomeAddress,
}

/// Acceptor-side steering hook for phases 4–6 (e.g. a flow-table update at the home agent,
/// or starting return routability). Returns the three phases' durations.
pub type SteerFn = dyn FnMut(&mut Interface, Instant, &ConnState, Option<&[u8]>) -> Result<[Duration; 3], String>
    + Send;

/// Acceptor policy.
pub struct AcceptorConfig {
    /// Services offered here; an offer for another is refused with
    /// [`RefuseReason::UnknownService`].
    pub services: Vec<String>,
    /// Refuse with [`RefuseReason::Load`] when the interface already has this many
    /// connections.
    pub max_connections: usize,
    /// Address takeover.
    pub takeover: Takeover,
    /// Optional steering for phases 4–6 (zero when absent).
    pub steer: Option<Box<SteerFn>>,
}

impl std::fmt::Debug for AcceptorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptorConfig")
            .field("services", &self.services)
            .field("max_connections", &self.max_connections)
            .field("takeover", &self.takeover)
            .field("steer", &self.steer.is_some())
            .finish()
    }
}

impl AcceptorConfig {
    /// Accept these services, up to 10 000 connections, taking the address over.
    pub fn new(services: &[&str]) -> Self {
        AcceptorConfig {
            services: services.iter().map(|s| s.to_string()).collect(),
            max_connections: 10_000,
            takeover: Takeover::Address,
            steer: None,
        }
    }
}

/// What the acceptor did with an incoming message.
#[derive(Debug)]
pub enum AcceptorEvent {
    /// A connection now runs here.
    Activated {
        /// The offer's id.
        conn_id: u64,
        /// Its handle on this interface.
        handle: TcpHandle,
        /// Its service.
        service: String,
        /// The mobility ticket, if one came along.
        ticket: Option<Vec<u8>>,
        /// The service's state of the connection, if one came along.
        app: Option<Vec<u8>>,
        /// The acceptor's phase timings.
        times: AcceptorTimes,
    },
    /// An offer was refused.
    Refused {
        /// The offer's id.
        conn_id: u64,
        /// Why.
        reason: RefuseReason,
    },
    /// The donor gave an offer up.
    Aborted {
        /// The offer's id.
        conn_id: u64,
    },
    /// The donor announced an offer for a connection with `client` (its drain started).
    Prepare {
        /// The coming offer's id.
        conn_id: u64,
        /// The connection's client end.
        client: std::net::SocketAddrV6,
    },
    /// Packets the donor held for a moved connection were processed here.
    Forwarded {
        /// The offer's id.
        conn_id: u64,
        /// How many.
        packets: usize,
    },
}

/// Donor side, after [`DonorOutcome::Moved`]: send the packets that reached the frozen
/// connection here to the acceptor. Call it from the donor's loop until steering has moved
/// the flow, then call [`Interface::tcp_forget_frozen`] and send what it returns with
/// [`forward_packets`]. Returns how many packets went.
pub fn forward_held(
    chan: &mut Channel,
    iface: &mut Interface,
    conn_id: u64,
    state: &ConnState,
) -> Result<usize, HandoffError> {
    let held = iface.tcp_take_held(state.local(), state.remote());
    forward_packets(chan, conn_id, held)
}

/// Send packets held for `conn_id` to the acceptor (no message when there are none).
pub fn forward_packets(
    chan: &mut Channel,
    conn_id: u64,
    packets: Vec<Vec<u8>>,
) -> Result<usize, HandoffError> {
    if packets.is_empty() {
        return Ok(0);
    }
    let n = packets.len();
    let packets = packets
        .into_iter()
        .map(serde_bytes::ByteBuf::from)
        .collect();
    chan.send(&Message::Forward { conn_id, packets })?;
    Ok(n)
}

/// The acceptor side: answers offers arriving on a channel.
#[derive(Debug)]
pub struct Acceptor {
    cfg: AcceptorConfig,
}

impl Acceptor {
    /// An acceptor with this policy.
    pub fn new(cfg: AcceptorConfig) -> Self {
        Acceptor { cfg }
    }

    /// Handle the next message on the channel, if any.
    pub fn poll(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
    ) -> Result<Option<AcceptorEvent>, HandoffError> {
        let Some(msg) = chan.poll()? else {
            return Ok(None);
        };
        self.handle(chan, iface, now, msg)
    }

    /// Handle a message the caller already read from `chan` (e.g. an offer it held back
    /// until this node was ready to steer the flow).
    pub fn handle(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        msg: Message,
    ) -> Result<Option<AcceptorEvent>, HandoffError> {
        self.handle_since(chan, iface, now, msg, MonoInstant::now())
    }

    /// [`Acceptor::handle`] for a message that arrived at `arrived` and was held back since:
    /// the acceptor's elapsed time sent back with Activated starts then, so the donor's
    /// state-transfer phase does not include the wait.
    pub fn handle_since(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        msg: Message,
        arrived: MonoInstant,
    ) -> Result<Option<AcceptorEvent>, HandoffError> {
        match msg {
            Message::Offer(o) => self.on_offer(chan, iface, now, o, arrived).map(Some),
            Message::Abort { conn_id, .. } => Ok(Some(AcceptorEvent::Aborted { conn_id })),
            Message::Prepare { conn_id, client } => {
                Ok(Some(AcceptorEvent::Prepare { conn_id, client }))
            }
            Message::Forward { conn_id, packets } => {
                for p in &packets {
                    iface.receive_ipv6(now, p, None);
                }
                Ok(Some(AcceptorEvent::Forwarded {
                    conn_id,
                    packets: packets.len(),
                }))
            }
            _ => Err(HandoffError::Protocol("acceptor got a reply message")),
        }
    }

    fn refuse(
        chan: &mut Channel,
        conn_id: u64,
        reason: RefuseReason,
    ) -> Result<AcceptorEvent, HandoffError> {
        chan.send(&Message::Refuse {
            conn_id,
            reason: reason.clone(),
        })?;
        Ok(AcceptorEvent::Refused { conn_id, reason })
    }

    /// Undo a thaw that will not be committed: freeze and forget (no RST reaches the client)
    /// and drop the address taken over for it.
    fn take_back(
        iface: &mut Interface,
        now: Instant,
        handle: TcpHandle,
        state: &ConnState,
        added: Option<std::net::Ipv6Addr>,
    ) {
        if iface.tcp_freeze(now, handle).is_ok() {
            iface.tcp_forget_frozen(state.local(), state.remote());
        }
        if let Some(ip) = added {
            iface.remove_addr(ip);
        }
    }

    fn on_offer(
        &mut self,
        chan: &mut Channel,
        iface: &mut Interface,
        now: Instant,
        o: Offer,
        arrived: MonoInstant,
    ) -> Result<AcceptorEvent, HandoffError> {
        let t0 = MonoInstant::now();
        let id = o.conn_id;
        tracing::debug!(conn_id = id, state_bytes = o.state.len(), "offer received");
        if !self.cfg.services.contains(&o.service) {
            return Self::refuse(chan, id, RefuseReason::UnknownService);
        }
        if iface.tcp_connection_count() >= self.cfg.max_connections {
            return Self::refuse(chan, id, RefuseReason::Load);
        }
        // Phase 3: socket re-creation.
        let state = match ConnState::decode(&o.state) {
            Ok(s) => s,
            Err(e) => return Self::refuse(chan, id, RefuseReason::BadState(e.to_string())),
        };
        let ip = *state.local().ip();
        let added = match self.cfg.takeover {
            Takeover::None => false,
            Takeover::Address => {
                let had = iface.addrs().contains(&ip);
                iface.add_addr(ip);
                !had
            }
            Takeover::HomeAddress => {
                iface.add_home_addr(ip);
                false
            }
        };
        let handle = match iface.tcp_thaw(now, &state) {
            Ok(h) => h,
            Err(e) => {
                if added {
                    iface.remove_addr(ip);
                }
                return Self::refuse(chan, id, RefuseReason::ThawFailed(e.to_string()));
            }
        };
        let mut times = AcceptorTimes {
            recreate_ns: ns(t0.elapsed()),
            ..Default::default()
        };
        // Phases 4–6, before the commit: a flow that cannot be steered here is refused and
        // stays with the donor (nothing was changed by a failed steering step).
        if let Some(steer) = self.cfg.steer.as_mut() {
            match steer(iface, now, &state, o.ticket.as_deref().map(|b| &b[..])) {
                Ok(d) => times.steer_ns = d.map(ns),
                Err(e) => {
                    Self::take_back(iface, now, handle, &state, added.then_some(ip));
                    return Self::refuse(chan, id, RefuseReason::Other(format!("steering: {e}")));
                }
            }
        }
        // Commit. If the Accept cannot be sent the donor will resume the connection: take
        // ours back out silently (freeze and forget: no RST reaches the client).
        if let Err(e) = chan.send(&Message::Accept { conn_id: id }) {
            Self::take_back(iface, now, handle, &state, added.then_some(ip));
            return Err(e.into());
        }
        // Phase 7: activation.
        let t7 = MonoInstant::now();
        if self.cfg.takeover == Takeover::Address {
            iface.announce(now);
        }
        times.activate_ns = ns(t7.elapsed());
        times.elapsed_ns = ns(arrived.elapsed());
        chan.send(&Message::Activated { conn_id: id, times })?;
        Ok(AcceptorEvent::Activated {
            conn_id: id,
            handle,
            service: o.service,
            ticket: o.ticket.map(|b| b.into_vec()),
            app: o.app.map(|b| b.into_vec()),
            times,
        })
    }
}
