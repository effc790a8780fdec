//! The handoff engine's I/O half: the sans-IO engine (`ds-handoff`) wired to its control
//! channels, over any host.
//!
//! [`Coordinator`] is the same for every host: it owns the control channels (to the peer, from
//! donors, to the home agent; all non-blocking), feeds what arrives to the engine's [`Donor`]
//! and [`Acceptor`], writes what they queue, and turns their results into [`NodeEvent`]s. It is
//! generic over the connection type of the [`Host`]; the host and the [`Service`] are passed
//! per call. [`crate::Node`] is the library's userspace node (any service over a `ds-stack`
//! interface); `ds-apps` builds its HTTP node and its kernel-socket node on it too.
//!
//! Data flow of one handoff (the donor is the node that served so far):
//!
//! 1. the donor's service pauses a connection that reached its per-node quota and the
//!    [`Donor`] exports its application state, drains (policy [`Drain`]), freezes the TCP
//!    connection and offers TCP state plus application state to the peer;
//! 2. the peer's [`Acceptor`] thaws it dormant, steers the flow (transparent mode: one
//!    flow-map update at the home agent; route-optimised: a Binding Update), commits with
//!    Accept, activates it and its service adopts the application state;
//! 3. the donor forwards packets that still reached it during a grace period, then forgets
//!    the connection. If the acceptor refused, crashed or timed out, the donor thaws the
//!    connection back and its service continues it: nothing is lost.
//!
//! Nothing blocks: a slow home agent delays only the offers waiting for it.

use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, Channel, ChannelGate, ClusterSecret, Dest, Donor,
    DonorConfig, DonorOutcome, Drain, HandoffReport, Host, Message, Mode, Service, Takeover,
};
use ds_stack::mobile::MobileRole;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Error;

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
    /// §5.2.5, §11.7.2).
    RouteOptimised {
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
    /// Bounds on control channels whose peer has not proved the cluster key yet.
    pub gate_limits: ds_handoff::GateLimits,
    /// Where this node sends its offers by default.
    pub peer: Option<SocketAddr>,
    /// Other nodes this one may hand connections to ([`Coordinator::hand_off_to`]), by
    /// control address.
    pub more_peers: Vec<SocketAddr>,
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
    /// Address takeover at the acceptor.
    pub takeover: Takeover,
    /// Steering at the acceptor.
    pub steering: Steering,
    /// Injected acceptor failure.
    pub fault: Option<AcceptorFault>,
    /// How long the donor forwards packets that still reach the frozen connection.
    pub forward_grace: Duration,
    /// The acceptor's longest wait for the home agent's answer to a flow move (then it
    /// refuses the offer and the donor keeps the connection).
    pub steer_timeout: Duration,
    /// Route-optimised mode: this node's mobile role for the DS address, at home (the contact
    /// node, which runs the home test, RFC 6275 §5.2.5) or away from home. The node installs
    /// it on its interface ([`crate::Node`] does) and drives it there ([`crate::ro`]).
    pub mobile_role: Option<MobileRole>,
    /// The flow-generation clock to share with the engines of this node's other queues (one
    /// node per receive queue): a connection that moves between them, or whose client reuses
    /// a 4-tuple on another queue, must still get generations above the last one the home
    /// agent saw. `None`: this engine's own.
    pub generation: Option<Arc<AtomicU64>>,
    /// Busy-polling while a handoff is in flight ([`BusyPoll`]; [`Coordinator::spinning`]):
    /// the owner's loop polls without sleeping, so what it waits for is taken without a
    /// wake-up (tens of microseconds each on a VM). Idle nodes still sleep.
    pub busy_poll: BusyPoll,
    /// Transparent mode: the acceptor commits as soon as its flow move is sent to the home
    /// agent, without waiting for the answer ([`ds_handoff::AcceptorConfig::steer_ahead`]):
    /// two process wake-ups (the home agent's, and the acceptor's for its answer) leave the
    /// handoff's critical path. The donor forwards what still reaches it until the acceptor
    /// relays the answer. A move the home agent never applies can then no longer send the
    /// connection back to the donor; it lives on the donor's forwarding (32 s at most).
    /// Only while the channel to the home agent is up. Off by default.
    pub steer_ahead: bool,
}

impl HandoffConfig {
    /// Defaults: service "http", no listener, no peer, no quota, drain until acknowledged
    /// (deadline 100 ms), reply timeout 1 s, transparent, no takeover, no steering, 200 ms
    /// forwarding grace, 1 s steering timeout.
    pub fn new(secret: ClusterSecret) -> Self {
        HandoffConfig {
            service: "http".into(),
            secret,
            listen: None,
            gate_limits: ds_handoff::GateLimits::default(),
            peer: None,
            more_peers: Vec::new(),
            quota: None,
            max_handoffs: None,
            drain: Drain::UntilAcked {
                deadline: Duration::from_millis(100),
            },
            reply_timeout: Duration::from_secs(1),
            mode: Mode::Transparent,
            takeover: Takeover::None,
            steering: Steering::None,
            fault: None,
            forward_grace: Duration::from_millis(200),
            steer_timeout: Duration::from_secs(1),
            mobile_role: None,
            busy_poll: BusyPoll::Off,
            steer_ahead: false,
            generation: None,
        }
    }
}

/// A new flow-generation clock ([`HandoffConfig::generation`]), at the realtime clock in
/// microseconds.
pub fn new_generation_clock() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(realtime_us()))
}

/// The realtime clock in microseconds since the Unix epoch (what flow generations start at).
fn realtime_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

/// How far above this node's realtime clock, in microseconds, an offered flow generation may
/// be and still raise the node's clock: honest generations start at their node's realtime
/// clock and grow by one per handoff, so nodes whose clocks disagree by seconds, after
/// millions of handoffs, stay far below this (2^40 us, ~12.7 days). Anything above comes
/// from a broken or hostile peer: taken in, it would have wrapped the clock (every later
/// handoff refused as stale at the home agent) or pinned its flow there.
pub const GENERATION_AHEAD: u64 = 1 << 40;

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
    /// This node's handoff ended in a state it cannot repair (the connection is not here).
    Failed {
        /// Why.
        cause: String,
    },
    /// A connection arrived from the peer and continues here.
    Adopted {
        /// The connection's client end.
        client: SocketAddrV6,
    },
    /// Handoff phase 6 ended after the activation (asynchronous to the Activated message):
    /// a route-optimised acceptor's Binding Update was acknowledged by the client, or a
    /// transparent acceptor that steered ahead ([`HandoffConfig::steer_ahead`]) got the home
    /// agent's answer to its flow move.
    Bound {
        /// The correspondent.
        client: Ipv6Addr,
        /// From the Binding Update or the flow move (sent at steering) to its answer.
        after: Duration,
    },
    /// A transparent acceptor that steered ahead learned that the home agent did not apply
    /// its flow move: a newer handoff of the flow outranked it (the flow went there), or the
    /// home agent refused it or never answered. The connection runs here; what still reaches
    /// the donor is forwarded while it forwards.
    SteerRefused {
        /// The correspondent.
        client: Ipv6Addr,
        /// The home agent's reason, or why there was none.
        detail: String,
    },
    /// An offer was refused or aborted here.
    Declined {
        /// Why.
        cause: String,
    },
    /// The home agent answered a rebind ([`Coordinator::rebind`]).
    Rebound {
        /// Whether new flows now go to the node asked for.
        ok: bool,
        /// Why not.
        detail: String,
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
    /// Control channels dropped before their handshake completed in time.
    pub handshake_timeouts: u64,
    /// What the control port's gate saw (issue 12: unauthenticated channels are bounded).
    pub gate: ds_handoff::GateStats,
    /// Reclaims sent to the home agent after failed handoffs (transparent mode), forced ones
    /// included.
    pub reclaims: u64,
    /// Reclaims the home agent did not apply: the acceptor's move of the same handoff came
    /// first (the connection is the acceptor's, not resumed here), or a newer one's.
    pub reclaims_refused: u64,
    /// Reclaims sent with force: after a refusal (the acceptor dropped its copy), or when the
    /// home agent did not answer a reclaim in time or its channel failed.
    pub reclaims_forced: u64,
    /// Flow moves steered ahead ([`HandoffConfig::steer_ahead`]) that the home agent refused
    /// or never answered (the connection lived on the donor's forwarding).
    pub steer_ahead_failed: u64,
    /// Offers dropped unread because their flow generation was far above this node's clock
    /// ([`GENERATION_AHEAD`]): a broken or hostile peer's, which raised into the shared
    /// clock would have wrapped it or pinned its flows at the home agent.
    pub implausible_generations: u64,
    /// Authenticated control channels closed at once: their address, or all, already held
    /// as many as a node keeps ([`ds_handoff::gate::AUTHENTICATED_PER_ADDRESS`],
    /// [`ds_handoff::gate::AUTHENTICATED_MAX`]).
    pub channels_refused: u64,
}

/// How long handoffs wait for a peer's control channel to come up (the engine freezes
/// nothing for a peer without a live, authenticated channel): then [`Coordinator::peer_ready`]
/// gives up, drops the channel and backs off.
pub const CHANNEL_WAIT: Duration = Duration::from_millis(500);

/// First redial of a peer's control channel after a failure; it doubles up to
/// [`REDIAL_MAX`].
const REDIAL_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between dials of a peer's control channel.
const REDIAL_MAX: Duration = Duration::from_secs(2);

/// First wait after a failed handoff to a peer; it doubles with each failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between handoff attempts to a failing peer.
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// When a peer that failed handoffs may be tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

/// An authenticated control channel from a donor.
struct Incoming {
    key: u64,
    chan: Channel,
    /// The peer's address ([`ds_handoff::gate::admits_authenticated`]).
    peer: std::net::IpAddr,
}

/// The descriptors an owner's wait found readable ([`Coordinator::hint_readable`]).
#[derive(Debug, Default)]
struct Readiness {
    fds: Vec<RawFd>,
    /// Whether `fds` is this round's hint; without one every descriptor may have input.
    hinted: bool,
}

impl Readiness {
    /// Whether `fd` may have input this round.
    fn may_read(&self, fd: RawFd) -> bool {
        !self.hinted || self.fds.contains(&fd)
    }
}

/// The engine's I/O half: control channels, the donor of the handoff in progress, donors
/// still forwarding, the acceptor; generic over the host's connection type `C`.
pub struct Coordinator<C> {
    service: String,
    secret: ClusterSecret,
    /// The control port: channels reach `incoming` once the donor proved the cluster key.
    gate: Option<ChannelGate>,
    /// The nodes offers go to (the default first), and the channel to each once open.
    peers: Vec<SocketAddr>,
    to_peers: Vec<Option<Channel>>,
    ha: Option<SocketAddr>,
    fault: Option<AcceptorFault>,
    donor_cfg: DonorConfig,
    acceptor: Acceptor<u64, C>,
    incoming: Vec<Incoming>,
    next_key: u64,
    to_ha: Option<Channel>,
    current: Option<Donor<C>>,
    /// The peer (index in `peers`) the handoff in progress goes to.
    current_to: usize,
    /// Peers a handoff could not reach, for the membership.
    unreachable: Vec<SocketAddr>,
    /// Peers whose handoffs failed lately, and when to try them again (issue 12: a hung peer
    /// must not cost a freeze per connection).
    backoff: std::collections::HashMap<SocketAddr, Backoff>,
    /// Peers whose channel a handoff waits for, and until when it may complete its handshake.
    opening: std::collections::HashMap<SocketAddr, Instant>,
    /// Peers without a channel: when to dial again, and the current delay.
    redial: std::collections::HashMap<SocketAddr, (Instant, Duration)>,
    /// Moved connections whose packets are still forwarded, with their peer's index.
    forwarding: Vec<(usize, Donor<C>)>,
    /// The acceptor's messages to the home agent held back within a round until the donors'
    /// answers are out ([`Coordinator::poll`]).
    ha_later: Vec<Message>,
    /// Forced reclaims not answered yet, and until when each is owed: sent again on every
    /// channel to the home agent opened anew (a home agent that restarted with the flow
    /// pointed at an acceptor that gave up must still get it, or the connection is at
    /// neither node). A repeat is answered as the first ([`ds_handoff::flows::judge`]).
    owed_reclaims: Vec<(Message, Instant)>,
    /// When owed reclaims are tried again without a channel to the home agent.
    owed_next: Option<Instant>,
    /// A channel to the home agent was opened since the owed reclaims were last sent.
    ha_fresh: bool,
    /// What the owner's last wait found readable, for the next [`Coordinator::poll`] only
    /// ([`Coordinator::hint_readable`]).
    readiness: Readiness,
    /// The donors' channels (by key) corked in this round: only those written to, as a cork
    /// and uncork of every channel would cost two system calls per channel in every round of
    /// the owner's loop, data-path rounds included.
    corked: Vec<u64>,
    events: Vec<NodeEvent>,
    stats: NodeStats,
    next_id: u64,
    /// Packets forwarded by donors no longer kept.
    forwarded_done: u64,
    /// Route-optimised acceptor: the last Binding Update sent (correspondent, when).
    pub bu_sent: Option<(Ipv6Addr, Instant)>,
    /// The id of the rebind request waiting for the home agent's answer.
    rebind_id: Option<u64>,
    /// Control channels opened so far (a new one may reuse a closed one's descriptor number).
    channel_epoch: u64,
    /// [`HandoffConfig::busy_poll`].
    busy_poll: BusyPoll,
    /// With several peers, the index of the one [`Coordinator::pick_peer`] tries first (the
    /// one after the last handed to: round robin).
    rotation: usize,
    /// Acceptor side: a donor announced an offer (`Prepare`); busy-poll until then at most.
    prepared_until: Option<Instant>,
    /// Since when the loop has been busy-polling without a break (set at the end of each
    /// [`Coordinator::poll`]); the spin stops after `SPIN_LIMIT`.
    spin_since: Option<Instant>,
    /// The flow generation of the last handoff this node offered or was offered: a Lamport
    /// clock (raised by every offer received), so each handoff of a connection carries a
    /// greater generation than the one before, whichever nodes it went through. Starts at
    /// the realtime clock in microseconds, so a restarted node starts above what it issued
    /// before. Shared by the engines of one node's queues ([`HandoffConfig::generation`]).
    generation: Arc<AtomicU64>,
    /// A channel had more than [`ds_handoff::MESSAGES_PER_TURN`] messages in this round's
    /// turn: the rest wait, and the owner's next wait is none ([`Coordinator::max_wait`]).
    more_input: bool,
    /// The channel to the home agent failed in this round: a donor waiting for its
    /// reclaim's answer will get none.
    ha_lost: bool,
}

/// Forced reclaims kept until answered ([`Coordinator::owe`]): the oldest is given up first.
const MAX_OWED: usize = 64;
/// How often owed reclaims are tried again while the home agent is unreachable.
const OWED_RETRY: Duration = Duration::from_secs(1);

/// How far a node busy-polls during a handoff ([`HandoffConfig::busy_poll`]). Spinning costs
/// a core while it lasts: where the nodes share cores with the clients or with each other
/// (as on a small test machine), a spin across the drain takes the CPU that the client needs
/// to acknowledge it; [`BusyPoll::Exchange`] spins only for the round trip of the offer.
/// Neither spins without a break for long (1 ms, 5 ms for [`BusyPoll::Handoff`]): see
/// `SPIN_LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusyPoll {
    /// Sleep between events (each is a wake-up).
    #[default]
    Off,
    /// Only across the control exchange: the donor from its offer to the acceptor's answer
    /// (the drain still sleeps between the client's acknowledgements), the acceptor from
    /// accepting an offer to activating it.
    Exchange,
    /// The whole handoff: the donor from the start of its drain, the acceptor from the
    /// donor's `Prepare` (the drain's start) to the activation.
    Handoff,
}

/// How long an acceptor busy-polls after a donor's `Prepare` for the offer to follow (the
/// donor's drain: about one round trip to the client, longer if it waits for the deadline).
const PREPARED_SPIN: Duration = Duration::from_millis(5);

/// Longest busy-poll without a break ([`BusyPoll::Exchange`]): then the loop sleeps between
/// events until the handoff's wait ends. An exchange takes 60–100 µs here; what takes longer
/// waits on something else (a route-optimised acceptor's care-of test, a round trip to the
/// client; an acceptor that does not answer), and a spinning node under `SCHED_FIFO` starves
/// every normal task of its core meanwhile, the kernel's softirq thread included, which moves
/// the very packets waited for: two nodes spinning on a 2-core machine held a care-of test's
/// packets until the donor's reply timeout, in 4 of 6 runs.
const SPIN_LIMIT: Duration = Duration::from_millis(1);

/// The same for [`BusyPoll::Handoff`], which spins across the drain too (0.7–1.4 ms here).
const SPIN_LIMIT_HANDOFF: Duration = Duration::from_millis(5);

impl<C: std::fmt::Debug> Coordinator<C> {
    /// A coordinator per `cfg` (the listener goes behind a [`ChannelGate`] with
    /// `cfg.gate_limits`). The service, peer,
    /// drain and report settings come from `cfg`; the acceptor takes `takeover` and the
    /// engine-level steering derived from `cfg.steering`.
    pub fn new(cfg: &mut HandoffConfig) -> Result<Self, Error> {
        let gate = match cfg.listen.take() {
            Some(l) => Some(ChannelGate::new(
                l,
                &cfg.secret,
                cfg.gate_limits,
                "control port",
            )?),
            None => None,
        };
        let (steering, ha) = match &cfg.steering {
            Steering::None => (ds_handoff::Steering::None, None),
            Steering::HomeAgentFlow { ha, coa } => {
                (ds_handoff::Steering::HomeAgentFlow { coa: *coa }, Some(*ha))
            }
            Steering::RouteOptimised { lifetime } => (
                ds_handoff::Steering::RouteOptimised {
                    lifetime: *lifetime,
                },
                None,
            ),
        };
        let mut acfg = AcceptorConfig {
            takeover: cfg.takeover,
            steering,
            steer_timeout: cfg.steer_timeout,
            steer_ahead: cfg.steer_ahead,
            ..Default::default()
        };
        if cfg.fault == Some(AcceptorFault::Refuse) {
            acfg.max_connections = 0;
        }
        let mut donor_cfg = DonorConfig::new(0, &cfg.service);
        if let Steering::HomeAgentFlow { coa, .. } = &cfg.steering {
            donor_cfg.reclaim_via = Some(*coa);
            donor_cfg.reclaim_timeout = cfg.reply_timeout;
        }
        donor_cfg.drain = cfg.drain;
        donor_cfg.reply_timeout = cfg.reply_timeout;
        donor_cfg.mode = cfg.mode;
        donor_cfg.forward_grace = cfg.forward_grace;
        let mut c = Coordinator {
            service: cfg.service.clone(),
            secret: cfg.secret.clone(),
            gate,
            peers: {
                let mut v: Vec<SocketAddr> = cfg.peer.into_iter().collect();
                for p in &cfg.more_peers {
                    if !v.contains(p) {
                        v.push(*p);
                    }
                }
                v
            },
            to_peers: Vec::new(),
            ha,
            fault: cfg.fault,
            donor_cfg,
            acceptor: Acceptor::new(acfg),
            incoming: Vec::new(),
            next_key: 1,
            to_ha: None,
            current: None,
            current_to: 0,
            forwarding: Vec::new(),
            ha_later: Vec::new(),
            owed_reclaims: Vec::new(),
            owed_next: None,
            ha_fresh: false,
            corked: Vec::new(),
            readiness: Readiness::default(),
            events: Vec::new(),
            stats: NodeStats::default(),
            next_id: 1,
            forwarded_done: 0,
            bu_sent: None,
            rebind_id: None,
            channel_epoch: 0,
            busy_poll: cfg.busy_poll,
            prepared_until: None,
            spin_since: None,
            generation: cfg.generation.clone().unwrap_or_else(new_generation_clock),
            more_input: false,
            ha_lost: false,
            rotation: 0,
            unreachable: Vec::new(),
            backoff: std::collections::HashMap::new(),
            opening: std::collections::HashMap::new(),
            redial: std::collections::HashMap::new(),
        };
        c.to_peers = c.peers.iter().map(|_| None).collect();
        // Open the home agent's channel ahead of the first move (a failure here is retried
        // at the first move).
        if c.ha.is_some() {
            if let Err(e) = c.connect_ha() {
                tracing::warn!("home agent flow agent not reachable yet: {e}");
            }
        }
        Ok(c)
    }

    /// The node's membership fence: carried in its offers, and offers fenced older are
    /// refused (a node acting for a deposed contact cannot hand off). Call it whenever the
    /// membership's fence may have changed; `None` (no membership) turns the check off.
    pub fn set_fence(&mut self, fence: Option<ds_handoff::Fence>) {
        if self.donor_cfg.fence != fence {
            self.donor_cfg.fence = fence;
            self.acceptor.set_fence(fence);
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        let mut s = self.stats;
        if let Some(g) = &self.gate {
            s.gate = g.stats();
            s.handshake_timeouts = s.gate.timeouts;
        }
        s
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<NodeEvent> {
        std::mem::take(&mut self.events)
    }

    /// Events not yet taken.
    pub fn events(&self) -> &[NodeEvent] {
        &self.events
    }

    /// Report an event of the node's own (a connection its owner kept, a binding confirmed)
    /// in order with the engine's.
    pub fn push_event(&mut self, ev: NodeEvent) {
        self.events.push(ev);
    }

    /// Whether a handoff to `to` can start at `now`: `Ok(true)` yes; `Ok(false)` not yet, its
    /// control channel is opening (opened here if needed; ask again soon); `Err` not now, with
    /// why (not a peer, unreachable, or backing off after failed handoffs).
    pub fn peer_ready(&mut self, now: Instant, to: SocketAddr) -> Result<bool, String> {
        let Some(i) = self.peers.iter().position(|p| *p == to) else {
            return Err(format!("{to} is not a peer of this node"));
        };
        if self.backing_off(now, to) {
            return Err(format!("handoffs to {to} back off after failures"));
        }
        match self.connect_to(i) {
            Ok(true) => {
                // A new channel: its handshake has its own time.
                self.opening.insert(to, now + CHANNEL_WAIT);
            }
            Ok(false) => {}
            Err(e) => {
                let why = format!("peer {to} unreachable: {e}");
                self.note_unreachable(to);
                self.back_off(now, to, &why);
                return Err(why);
            }
        }
        if self.peer_connected_to(i) {
            self.opening.remove(&to);
            return Ok(true);
        }
        let deadline = *self.opening.entry(to).or_insert(now + CHANNEL_WAIT);
        if now < deadline {
            return Ok(false);
        }
        // A peer that accepts connections but never proves the key (hung, stopped, or not
        // a member): drop the channel and wait before the next try.
        self.opening.remove(&to);
        self.to_peers[i] = None;
        self.channel_epoch += 1;
        let why = format!("no control channel to {to} in time");
        self.note_unreachable(to);
        self.back_off(now, to, &why);
        Err(why)
    }

    /// Whether a peer is configured.
    pub fn has_peer(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The default peer's control address, if there is one.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peers.first().copied()
    }

    /// Every peer's control address, the default first.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// Replace the peers (the membership's live members): channels to peers that stay are
    /// kept, the others closed. Not while a handoff of this node's runs or its packets are
    /// still forwarded (peer indices are in use): returns false, and the caller tries again.
    pub fn set_peers(&mut self, peers: &[SocketAddr]) -> bool {
        if self.peers == peers {
            return true;
        }
        if self.current.is_some() || !self.forwarding.is_empty() {
            return false;
        }
        let mut old: Vec<(SocketAddr, Option<Channel>)> =
            self.peers.drain(..).zip(self.to_peers.drain(..)).collect();
        for p in peers {
            if self.peers.contains(p) {
                continue;
            }
            let ch = old
                .iter_mut()
                .find(|(a, _)| a == p)
                .and_then(|(_, c)| c.take());
            self.peers.push(*p);
            self.to_peers.push(ch);
        }
        // The descriptor set changed: the node's wait set is rebuilt.
        self.channel_epoch += 1;
        true
    }

    /// A handoff to `peer` failed at `now`: wait before the next one, longer each time.
    fn back_off(&mut self, now: Instant, peer: SocketAddr, why: &str) {
        let delay = match self.backoff.get(&peer) {
            Some(b) => (b.delay * 2).min(BACKOFF_MAX),
            None => BACKOFF_FIRST,
        };
        // One line per failure: the back-off itself bounds their rate.
        tracing::warn!(%peer, ?delay, "handoffs to this peer back off: {why}");
        self.backoff.insert(
            peer,
            Backoff {
                until: now + delay,
                delay,
            },
        );
    }

    /// Whether handoffs to `peer` wait at `now` after failures.
    pub fn backing_off(&self, now: Instant, peer: SocketAddr) -> bool {
        self.backoff.get(&peer).is_some_and(|b| now < b.until)
    }

    /// Whether an operator may ask for a handoff to `to` now (`dsctl handoff --to`): it must
    /// be one of this node's peers and not backing off.
    pub fn check_handoff_to(&self, now: Instant, to: SocketAddr) -> Result<(), String> {
        if self.peers.is_empty() {
            return Err("this node has no peer (--peer)".into());
        }
        if !self.peers.contains(&to) {
            let list: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
            return Err(format!("this node hands off to {} only", list.join(", ")));
        }
        if self.backing_off(now, to) {
            return Err(format!(
                "handoffs to {to} back off after failures: try again later"
            ));
        }
        Ok(())
    }

    /// The peer the next handoff should go to: `wanted` if given, else the peers in turn from
    /// the one after the last handed to, the first whose channel is up
    /// ([`Coordinator::peer_ready`]). `Ok(None)`: a channel is opening, wait (nothing is
    /// frozen for a peer without one; the engine gives up on it after `CHANNEL_WAIT`);
    /// `Err`: none can take a connection now (no peer, or all back off or are unreachable).
    pub fn pick_peer(
        &mut self,
        now: Instant,
        wanted: Option<SocketAddr>,
    ) -> Result<Option<SocketAddr>, String> {
        let candidates: Vec<SocketAddr> = match wanted {
            Some(p) => vec![p],
            None => (0..self.peers.len())
                .map(|k| self.peers[(self.rotation + k) % self.peers.len()])
                .collect(),
        };
        let mut opening = false;
        let mut why = String::from("this node has no peer");
        for p in candidates {
            match self.peer_ready(now, p) {
                Ok(true) => return Ok(Some(p)),
                Ok(false) => opening = true,
                Err(e) => why = e,
            }
        }
        if opening {
            Ok(None)
        } else {
            Err(why)
        }
    }

    fn note_unreachable(&mut self, peer: SocketAddr) {
        // Bounded: the membership reads it every round; a flood of failures keeps the newest.
        if self.unreachable.len() >= 64 {
            self.unreachable.remove(0);
        }
        self.unreachable.push(peer);
    }

    /// Peers a handoff could not reach since the last call (the channel failed to open, broke,
    /// or the peer did not answer): the contact drops such snodes from its view (seed §2.3.2).
    pub fn take_unreachable(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.unreachable)
    }

    /// Whether `addr` is one of this node's peers.
    pub fn is_peer(&self, addr: SocketAddr) -> bool {
        self.peers.contains(&addr)
    }

    /// True while a handoff is in progress or held packets are still being forwarded.
    pub fn busy(&self) -> bool {
        self.current.is_some() || !self.forwarding.is_empty() || self.acceptor.pending() > 0
    }

    /// Whether the connection of `client` is the one this node is handing off now.
    pub fn moving(&self, client: SocketAddrV6) -> bool {
        self.current.as_ref().is_some_and(|d| d.flow().1 == client)
    }

    /// True while this node's own handoff is in progress (a new one must wait).
    pub fn handing_off(&self) -> bool {
        self.current.is_some()
    }

    /// Whether the owner's loop should poll again without sleeping: busy-polling is on
    /// ([`HandoffConfig::busy_poll`]) and a handoff is in flight here within its scope — as
    /// donor, waiting for the acceptor's answer to its offer ([`BusyPoll::Exchange`]) or from
    /// the drain on ([`BusyPoll::Handoff`]); as acceptor, between accepting and activating,
    /// or ([`BusyPoll::Handoff`]) from the donor's `Prepare` on — for `SPIN_LIMIT`
    /// (`SPIN_LIMIT_HANDOFF`) at most without a break.
    pub fn spinning(&self, now: Instant) -> bool {
        self.wants_spin(now)
            && self.spin_since.is_none_or(|t| {
                let limit = match self.busy_poll {
                    BusyPoll::Handoff => SPIN_LIMIT_HANDOFF,
                    _ => SPIN_LIMIT,
                };
                now.saturating_duration_since(t) < limit
            })
    }

    /// [`Coordinator::spinning`] without its time limit.
    fn wants_spin(&self, now: Instant) -> bool {
        let whole = match self.busy_poll {
            BusyPoll::Off => return false,
            BusyPoll::Exchange => false,
            BusyPoll::Handoff => true,
        };
        let donor = self
            .current
            .as_ref()
            .is_some_and(|d| whole || !d.is_draining());
        donor
            || self.acceptor.pending() > 0
            || (whole && self.prepared_until.is_some_and(|t| now < t))
    }

    /// Open the channels to the peers now rather than inside the first handoffs' timing;
    /// the first error, after trying every peer.
    pub fn connect_peer(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        for i in 0..self.peers.len() {
            if let Err(e) = self.connect_to(i) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Open the channel to the `i`-th peer unless there is one; true when a new one opened.
    fn connect_to(&mut self, i: usize) -> Result<bool, Error> {
        if let (Some(None), Some(peer)) = (self.to_peers.get(i), self.peers.get(i)) {
            self.to_peers[i] = Some(Channel::connect(*peer, &self.secret)?);
            self.channel_epoch += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Keep a channel open to every peer, so that a handoff finds it up: a peer without one
    /// is dialled again (50 ms after a failure, doubling to 2 s). Failures here only delay
    /// the next dial; handoffs back off only after failed handoffs.
    fn maintain_channels(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            match &self.to_peers[i] {
                Some(c) => {
                    if c.is_established() {
                        self.redial.remove(&peer);
                        self.opening.remove(&peer);
                    }
                }
                None => {
                    let (due, delay) = self
                        .redial
                        .get(&peer)
                        .copied()
                        .unwrap_or((now, Duration::ZERO));
                    if now < due {
                        continue;
                    }
                    let next = (delay * 2).clamp(REDIAL_FIRST, REDIAL_MAX);
                    self.redial.insert(peer, (now + next, next));
                    match self.connect_to(i) {
                        Ok(_) => {
                            self.opening.remove(&peer);
                        }
                        Err(e) => tracing::debug!(%peer, "control channel to a peer: {e}"),
                    }
                }
            }
        }
    }

    /// Ask the home agent to send the new flows of `home` to `to` (a node that drains); the
    /// answer comes as [`NodeEvent::Rebound`].
    pub fn rebind(&mut self, home: Ipv6Addr, to: Ipv6Addr) -> Result<(), Error> {
        if self.ha.is_none() {
            return Err(Error::Config("no home agent configured".into()));
        }
        self.connect_ha()?;
        let id = self.next_id;
        self.next_id += 1;
        let msg = Message::Rebind {
            conn_id: id,
            home,
            to,
        };
        match self.to_ha.as_mut() {
            Some(ch) => ch.send(&msg)?,
            None => return Err(Error::Config("no home agent channel".into())),
        }
        self.rebind_id = Some(id);
        Ok(())
    }

    /// Whether the channel to the peer is open and its handshake done.
    pub fn peer_connected(&self) -> bool {
        self.peer_connected_to(0)
    }

    /// Whether the channel to the `i`-th peer is open and its handshake done.
    pub fn peer_connected_to(&self, i: usize) -> bool {
        self.to_peers
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.is_established())
    }

    /// Write `m` to the home agent's flow agent, opening its channel first if needed.
    fn send_ha(&mut self, m: &Message) -> Result<(), String> {
        self.connect_ha().map_err(|e| e.to_string())?;
        match self.to_ha.as_mut() {
            Some(ch) => ch.send(m).map_err(|e| e.to_string()),
            None => Err("no home agent configured".into()),
        }
    }

    fn connect_ha(&mut self) -> Result<(), Error> {
        if let (None, Some(ha)) = (&self.to_ha, self.ha) {
            self.to_ha = Some(Channel::connect(ha, &self.secret)?);
            self.channel_epoch += 1;
            self.ha_fresh = true;
        }
        Ok(())
    }

    /// Changes whenever a control channel is opened: a caller that registered
    /// [`Coordinator::wait_fds`] elsewhere (an epoll set) re-registers them then, since a new
    /// channel may have a closed one's descriptor number.
    pub fn channel_epoch(&self) -> u64 {
        self.channel_epoch
    }

    /// The control sockets (appended to `out`) to wait on together with the data path, so
    /// that an offer or a reply is handled as soon as it arrives.
    pub fn wait_fds(&self, out: &mut Vec<RawFd>) {
        if let Some(g) = &self.gate {
            g.wait_fds(out);
        }
        out.extend(self.incoming.iter().map(|c| c.chan.stream().as_raw_fd()));
        out.extend(
            self.to_peers
                .iter()
                .flatten()
                .map(|c| c.stream().as_raw_fd()),
        );
        out.extend(self.to_ha.iter().map(|c| c.stream().as_raw_fd()));
    }

    /// Tell the next [`Coordinator::poll`] which descriptors (of [`Coordinator::wait_fds`],
    /// among others) the owner's wait just found readable: it then reads only those
    /// channels, and the ones that may progress without input ([`Channel::wants_poll`]),
    /// instead of a `recvmsg` on every channel in every round of the owner's loop. `None`
    /// (the owner did not wait, or does not know): every channel is read.
    pub fn hint_readable(&mut self, fds: Option<impl Iterator<Item = RawFd>>) {
        let r = &mut self.readiness;
        r.fds.clear();
        r.hinted = fds.is_some();
        if let Some(it) = fds {
            r.fds.extend(it);
        }
    }

    /// Whether this round reads `ch`: no hint, its socket is readable, or it may progress
    /// without input.
    fn reads(&self, ch: &Channel) -> bool {
        self.readiness.may_read(ch.stream().as_raw_fd()) || ch.wants_poll()
    }

    /// How long the caller's loop may wait for input at `now`: `idle` at most, less until the
    /// engine's next deadline, zero while a channel still has output the socket did not take
    /// (the wait only wakes on readable sockets), zero while busy-polling a handoff
    /// ([`Coordinator::spinning`]).
    pub fn max_wait(&self, now: Instant, idle: Duration) -> Duration {
        if self.spinning(now) {
            return Duration::ZERO;
        }
        let pending = self
            .to_peers
            .iter()
            .flatten()
            .chain(self.to_ha.iter())
            .chain(self.incoming.iter().map(|c| &c.chan))
            .any(|c| c.pending_output() > 0);
        if pending || self.more_input || self.gate.as_ref().is_some_and(|g| g.has_pending_output())
        {
            return Duration::ZERO;
        }
        let deadline = self
            .current
            .iter()
            .chain(self.forwarding.iter().map(|(_, d)| d))
            .filter_map(|d| d.poll_timeout())
            .chain(self.acceptor.poll_timeout())
            .chain(self.gate.as_ref().and_then(|g| g.poll_timeout()))
            // A handoff waiting for a channel asks again at its deadline (one past is nobody's).
            .chain(self.opening.values().copied().filter(|t| *t > now))
            .chain(self.owed_next.filter(|_| self.to_ha.is_none()))
            .chain(
                self.peers
                    .iter()
                    .zip(&self.to_peers)
                    .filter(|(_, c)| c.is_none())
                    .filter_map(|(p, _)| self.redial.get(p).map(|(due, _)| *due)),
            )
            .min();
        match deadline {
            Some(t) => idle.min(t.saturating_duration_since(now)),
            None => idle,
        }
    }

    /// Start handing `conn` off to the default peer (with a route-optimisation `ticket`).
    /// Returns the connection when no handoff can start now (one is in progress, no peer, the
    /// peer is unreachable, the service cannot export it): it stays with the caller.
    pub fn hand_off<H, S>(
        &mut self,
        now: Instant,
        conn: C,
        ticket: Option<Vec<u8>>,
        host: &mut H,
        svc: &mut S,
    ) -> Result<(), C>
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        match self.peer() {
            Some(to) => self.hand_off_to(now, to, conn, ticket, host, svc),
            None => Err(conn),
        }
    }

    /// [`Coordinator::hand_off`] to the peer `to` (one of [`Coordinator::peers`]).
    pub fn hand_off_to<H, S>(
        &mut self,
        now: Instant,
        to: SocketAddr,
        conn: C,
        ticket: Option<Vec<u8>>,
        host: &mut H,
        svc: &mut S,
    ) -> Result<(), C>
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let Some(i) = self.peers.iter().position(|p| *p == to) else {
            return Err(conn);
        };
        if self.current.is_some() || self.backing_off(now, to) {
            return Err(conn);
        }
        if let Err(e) = self.connect_to(i) {
            tracing::warn!(peer = %to, "peer unreachable, connection kept here: {e:#}");
            self.note_unreachable(to);
            self.back_off(now, to, "unreachable");
            return Err(conn);
        }
        if !self.peer_connected_to(i) {
            // Nothing is frozen for a peer that has not proved the key on a live channel (a
            // hung or stopped one never does): the connection stays, the channel opens
            // meanwhile, and a later handoff goes once it is up.
            return Err(conn);
        }
        let Some(generation) = self.next_generation() else {
            tracing::error!(
                "the flow-generation clock is exhausted: no handoff can outrank the last"
            );
            return Err(conn);
        };
        let mut cfg = self.donor_cfg.clone();
        cfg.conn_id = self.next_id;
        cfg.ticket = ticket;
        cfg.generation = generation;
        match Donor::start(now, conn, cfg, host, svc) {
            Ok(d) => {
                self.next_id += 1;
                self.stats.started += 1;
                // An older forwarding of the same connection (it came back and leaves again
                // within the grace period) must not release the new freeze's hold.
                let flow = d.flow();
                for (_, f) in &mut self.forwarding {
                    if f.flow() == flow {
                        f.stop_forwarding();
                    }
                }
                self.current = Some(d);
                self.current_to = i;
                self.rotation = i + 1;
                // Look at the drain now, not at the next round: what it waits for (the
                // client's ACK) may be in already, and the next round can be a whole idle
                // wait away (a millisecond, measured as the drain of one handoff in ten).
                self.drive_donors(now, host, svc);
                Ok(())
            }
            Err((conn, e)) => {
                tracing::warn!("handoff not started, connection kept here: {e}");
                Err(conn)
            }
        }
    }

    /// One round at `now`: accept control channels, answer offers, drive the handoff in
    /// progress and the forwarding, write what the engine queued.
    pub fn poll<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        self.more_input = false;
        self.accept_channels(now);
        self.maintain_channels(now);
        let ha_up = self.to_ha.as_ref().is_some_and(|c| c.is_established());
        self.acceptor.set_home_agent_ready(ha_up);
        // What the acceptor writes to donors in this round leaves together when uncorked: an
        // Accept and its Activated in one segment, so the donor wakes once for both.
        self.serve_incoming(now, host, svc);
        self.serve_home_agent(now, host, svc);
        // An Accept queued by an offer or the home agent's answer is written before the
        // acceptor's poll activates its connection (a channel that fails on the write
        // discards the connection instead; the donor resumes it).
        self.transmit_acceptor(host, false);
        // Twice: an Accept written in the first pass is activated in the second.
        for _ in 0..2 {
            self.acceptor.poll(now, host, svc);
            self.transmit_acceptor(host, false);
        }
        self.uncork_incoming();
        // The home agent's requests after the donors' answers: a flow move steered ahead
        // wakes the home agent, which on a shared core would otherwise run before the
        // Activated leaves (and the donor's wake-up is on the handoff's critical path, the
        // home agent's answer not).
        self.transmit_acceptor(host, true);
        self.acceptor_events(now);
        self.drive_donors(now, host, svc);
        let fresh = std::mem::take(&mut self.ha_fresh);
        self.resend_owed(now, fresh, host);
        // The hint was this round's.
        self.readiness.hinted = false;
        self.note_spin(now);
    }

    /// The generation of a handoff starting here: one above the last this node offered or
    /// was offered; `None` once the clock is exhausted (it never wraps: a wrapped clock's
    /// handoffs would all be refused as stale at the home agent).
    fn next_generation(&self) -> Option<u64> {
        self.generation
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| g.checked_add(1))
            .ok()
            .map(|g| g + 1)
    }

    /// Raise the clock to an offered generation (Lamport), unless it is implausibly far
    /// ahead of this node's realtime clock ([`GENERATION_AHEAD`]): then false, and the
    /// clock is unchanged.
    fn observe_generation(&self, g: u64) -> bool {
        if g > realtime_us().saturating_add(GENERATION_AHEAD) {
            return false;
        }
        self.generation.fetch_max(g, Ordering::Relaxed);
        true
    }

    /// After a round at `now`: when the current spin began (`None`: not spinning).
    fn note_spin(&mut self, now: Instant) {
        self.spin_since = if self.wants_spin(now) {
            Some(self.spin_since.unwrap_or(now))
        } else {
            None
        };
    }

    fn accept_channels(&mut self, now: Instant) {
        let Some(g) = self.gate.as_mut() else {
            return;
        };
        let epoch = g.epoch();
        let r = &self.readiness;
        for (chan, peer) in g.poll_hinted(now, |fd| r.may_read(fd)) {
            let held = self.incoming.iter().map(|c| c.peer);
            if !ds_handoff::gate::admits_authenticated(held, peer.ip()) {
                self.stats.channels_refused += 1;
                tracing::warn!(%peer, "control channel from a donor refused: too many held");
                continue;
            }
            tracing::debug!(%peer, "control channel from a donor");
            self.incoming.push(Incoming {
                key: self.next_key,
                chan,
                peer: peer.ip(),
            });
            self.next_key += 1;
        }
        if g.epoch() != epoch {
            self.channel_epoch += 1;
        }
    }

    /// End the round's corking: uncork the donors' channels written to (corked by
    /// [`Coordinator::transmit_acceptor`]), which sends what they hold at once.
    fn uncork_incoming(&mut self) {
        for key in std::mem::take(&mut self.corked) {
            let Some(c) = self.incoming.iter().find(|c| c.key == key) else {
                continue;
            };
            if let Err(e) = c.chan.set_cork(false) {
                tracing::debug!("TCP_CORK on a control channel: {e}");
            }
        }
    }

    fn serve_incoming<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let mut i = 0;
        while i < self.incoming.len() {
            if !self.reads(&self.incoming[i].chan) {
                i += 1;
                continue;
            }
            let key = self.incoming[i].key;
            // Everything that arrived first: an offer whose donor gave up on it (its Abort, or
            // the channel's end, came in the same batch: an acceptor that was stopped or slow
            // reads them together) must not be steered, or the home agent would move a flow
            // the donor kept.
            let mut batch = Vec::new();
            let mut open = true;
            loop {
                if batch.len() >= ds_handoff::MESSAGES_PER_TURN {
                    self.more_input = true;
                    break;
                }
                match self.incoming[i].chan.poll() {
                    Ok(Some(msg)) => batch.push(msg),
                    Ok(None) => break,
                    Err(ds_handoff::ChannelError::Closed) => {
                        open = false;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("control channel from a donor failed: {e}");
                        open = false;
                        break;
                    }
                }
            }
            let aborted: Vec<u64> = batch
                .iter()
                .filter_map(|m| match m {
                    Message::Abort { conn_id, .. } => Some(*conn_id),
                    _ => None,
                })
                .collect();
            let mut keep = open;
            for msg in batch {
                if let Message::Offer(o) = &msg {
                    // Lamport: the connection's next handoff, from here, outranks this one.
                    if !self.observe_generation(o.generation) {
                        self.stats.implausible_generations += 1;
                        tracing::warn!(
                            conn_id = o.conn_id,
                            generation = o.generation,
                            "an offer whose flow generation is far above this node's clock: dropped"
                        );
                        continue;
                    }
                    if !open || aborted.contains(&o.conn_id) {
                        tracing::warn!(
                            conn_id = o.conn_id,
                            "an offer its donor gave up on before it was read: ignored"
                        );
                        continue;
                    }
                    if let Some(f) = self.fault {
                        match f {
                            AcceptorFault::Crash => {
                                tracing::info!("injected fault: acceptor crashes on an offer");
                                keep = false;
                                break;
                            }
                            AcceptorFault::Hang => {
                                tracing::info!("injected fault: acceptor ignores an offer");
                                continue;
                            }
                            AcceptorFault::Refuse => {}
                        }
                    }
                }
                if let Err(e) = self.acceptor.handle(now, key, msg, host, svc) {
                    tracing::warn!("control channel from a donor: {e}");
                    keep = false;
                    break;
                }
            }
            if keep {
                i += 1;
            } else {
                self.incoming.swap_remove(i);
                self.acceptor.channel_failed(key, host);
            }
        }
    }

    fn serve_home_agent<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        if !self.to_ha.as_ref().is_some_and(|c| self.reads(c)) {
            return;
        }
        let Some(ch) = self.to_ha.as_mut() else {
            return;
        };
        for taken in 0.. {
            if taken >= ds_handoff::MESSAGES_PER_TURN {
                break;
            }
            match ch.poll() {
                Ok(Some(Message::Rebound {
                    conn_id,
                    ok,
                    detail,
                })) => {
                    if self.rebind_id == Some(conn_id) {
                        self.rebind_id = None;
                        self.events.push(NodeEvent::Rebound { ok, detail });
                    }
                }
                Ok(Some(
                    m @ Message::FlowMoved {
                        conn_id, ok, taken, ..
                    },
                )) if conn_id & ds_handoff::RECLAIM_ID != 0 => {
                    // The answer to a donor's reclaim: refused when the acceptor's move of the
                    // same handoff (or a newer handoff's) came first: the connection lives
                    // there, and the donor waiting for this answer does not resume it.
                    if !ok {
                        self.stats.reclaims_refused += 1;
                        tracing::info!(
                            conn_id = conn_id & !ds_handoff::RECLAIM_ID,
                            taken,
                            "reclaim of a flow not applied: {m:?}"
                        );
                    }
                    self.owed_reclaims.retain(|(r, _)| r.conn_id() != conn_id);
                    if let Some(d) = self.current.as_mut() {
                        d.handle_home_agent(now, m, host, svc);
                    }
                }
                Ok(Some(m)) => self.acceptor.handle_home_agent(now, m, host),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("channel to the home agent failed: {e}");
                    self.to_ha = None;
                    self.ha_lost = true;
                    self.acceptor.home_agent_failed(host);
                    return;
                }
            }
        }
        // Only the cap ends the loop: more may be waiting.
        self.more_input = true;
    }

    /// Write what the acceptor queued: to donors at once, to the home agent only when
    /// `to_ha` (until then it waits, in order, in `ha_later`).
    fn transmit_acceptor<H: Host<Conn = C>>(&mut self, host: &mut H, to_ha: bool) {
        let mut later = if to_ha {
            std::mem::take(&mut self.ha_later)
        } else {
            Vec::new()
        }
        .into_iter();
        while let Some((dest, msg)) = later
            .next()
            .map(|m| (Dest::HomeAgent, m))
            .or_else(|| self.acceptor.poll_transmit())
        {
            if !to_ha && dest == Dest::HomeAgent {
                self.ha_later.push(msg);
                continue;
            }
            match dest {
                Dest::Donor(key) => {
                    let Some(k) = self.incoming.iter().position(|c| c.key == key) else {
                        continue;
                    };
                    // Before the home agent's turn (`!to_ha`) the round's answers to donors
                    // are corked until [`Coordinator::uncork_incoming`].
                    if !to_ha && !self.corked.contains(&key) {
                        if let Err(e) = self.incoming[k].chan.set_cork(true) {
                            tracing::debug!("TCP_CORK on a control channel: {e}");
                        }
                        self.corked.push(key);
                    }
                    if let Err(e) = self.incoming[k].chan.send(&msg) {
                        tracing::warn!("control channel to a donor failed: {e}");
                        self.incoming.swap_remove(k);
                        self.acceptor.channel_failed(key, host);
                    }
                }
                Dest::HomeAgent => {
                    if let Err(e) = self.send_ha(&msg) {
                        tracing::warn!("home agent unreachable: {e}");
                        self.to_ha = None;
                        self.ha_lost = true;
                        self.acceptor.home_agent_failed(host);
                    }
                }
            }
        }
    }

    fn acceptor_events(&mut self, now: Instant) {
        while let Some(e) = self.acceptor.poll_event() {
            match e {
                AcceptorEvent::Adopted { client, .. } => {
                    self.prepared_until = None;
                    self.stats.adopted += 1;
                    // It lives here again: a forwarding of it from here is over.
                    for (_, f) in &mut self.forwarding {
                        if f.flow().1 == client {
                            f.stop_forwarding();
                        }
                    }
                    self.events.push(NodeEvent::Adopted { client });
                }
                // An offer taken here that could not be adopted: the acceptor's failure, not a
                // connection of this node's (its donor learns its own outcome).
                AcceptorEvent::AdoptFailed { cause, .. } => self.events.push(NodeEvent::Declined {
                    cause: format!("adopting an offered connection failed: {cause}"),
                }),
                AcceptorEvent::Refused { reason, .. } => self.events.push(NodeEvent::Declined {
                    cause: format!("refused: {reason:?}"),
                }),
                AcceptorEvent::Aborted { conn_id } => self.events.push(NodeEvent::Declined {
                    cause: format!("offer {conn_id} aborted by the donor"),
                }),
                AcceptorEvent::BindingSent { client, at } => self.bu_sent = Some((client, at)),
                AcceptorEvent::Prepared { .. } => {
                    self.prepared_until = Some(now + PREPARED_SPIN);
                }
                AcceptorEvent::Forwarded { .. } => {}
                AcceptorEvent::Steered { client, result, .. } => match result {
                    Ok(after) => self.events.push(NodeEvent::Bound {
                        client: *client.ip(),
                        after,
                    }),
                    Err(detail) => {
                        self.stats.steer_ahead_failed += 1;
                        self.events.push(NodeEvent::SteerRefused {
                            client: *client.ip(),
                            detail,
                        });
                    }
                },
            }
        }
    }

    fn drive_donors<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        // A donor that was waiting for its reclaim's answer gets none on a channel to the home
        // agent that failed since (a donor reclaiming from this round on sends on a channel
        // opened anew): it reclaims with force and resumes.
        if std::mem::take(&mut self.ha_lost) {
            self.home_agent_lost_for_donor(now, host, svc);
        }
        // Replies from a peer go to the handoff in progress, if it is that peer's.
        for i in 0..self.to_peers.len() {
            if !self.to_peers[i].as_ref().is_some_and(|c| self.reads(c)) {
                continue;
            }
            let Some(ch) = self.to_peers[i].as_mut() else {
                continue;
            };
            let mut capped = false;
            for taken in 0.. {
                if taken >= ds_handoff::MESSAGES_PER_TURN {
                    capped = true;
                    break;
                }
                match ch.poll() {
                    Ok(Some(Message::Steered { conn_id, steer_ns })) => {
                        // A moved connection's steering, confirmed after its Activated: the
                        // donor still forwarding it stops waiting for that.
                        let m = Message::Steered { conn_id, steer_ns };
                        for (_, d) in self.forwarding.iter_mut().filter(|(p, _)| *p == i) {
                            d.handle(now, m.clone(), host, svc);
                        }
                    }
                    Ok(Some(m)) => {
                        if let Some(d) = self.current.as_mut().filter(|_| self.current_to == i) {
                            // The kernel's stamp is wall-clock time: its age, taken from the
                            // host's clock, is when the reply arrived.
                            let arrived = ch
                                .arrival()
                                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                                .and_then(|age| host.now().checked_sub(age));
                            d.handle_arrived(now, arrived, m, host, svc);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let cause = e.to_string();
                        self.to_peers[i] = None;
                        let current = self.current.iter_mut().filter(|_| self.current_to == i);
                        let forwarding = self
                            .forwarding
                            .iter_mut()
                            .filter(|(p, _)| *p == i)
                            .map(|(_, d)| d);
                        for d in current.chain(forwarding) {
                            d.channel_failed(now, cause.clone(), host, svc);
                        }
                        break;
                    }
                }
            }
            self.more_input |= capped;
        }
        if let Some(d) = self.current.as_mut() {
            d.poll(now, host, svc);
        }
        for (_, d) in &mut self.forwarding {
            d.poll(now, host, svc);
        }
        // Write what the donors queued, each to its own peer, and their reclaims to the home
        // agent.
        let current = self.current.iter_mut().map(|d| (self.current_to, d));
        let forwarding = self.forwarding.iter_mut().map(|(p, d)| (*p, d));
        let mut reclaims = Vec::new();
        for (i, d) in current.chain(forwarding) {
            while let Some(m) = d.poll_transmit() {
                let r = match self.to_peers.get_mut(i).and_then(Option::as_mut) {
                    Some(ch) => ch.send(&m).map_err(|e| e.to_string()),
                    None => Err("no channel to the peer".to_string()),
                };
                if let Err(cause) = r {
                    if let Some(c) = self.to_peers.get_mut(i) {
                        *c = None;
                    }
                    d.channel_failed(now, cause, host, svc);
                }
            }
            reclaims.extend(d.poll_transmit_home_agent());
        }
        let mut unsent = false;
        for m in reclaims {
            unsent |= !self.reclaim(now, &m, host);
        }
        if unsent {
            // Its reclaim never left: no answer will come.
            self.home_agent_lost_for_donor(now, host, svc);
        }
        // Outcomes.
        if let Some(mut d) = self.current.take() {
            let (_, client) = d.flow();
            let to = self.current_to;
            match d.poll_outcome() {
                None => self.current = Some(d),
                Some(DonorOutcome::Moved {
                    report,
                    boundary_seq,
                }) => {
                    self.stats.moved += 1;
                    if let Some(p) = self.peers.get(to) {
                        self.backoff.remove(p);
                    }
                    self.events.push(NodeEvent::HandedOff {
                        report,
                        client,
                        boundary_seq,
                    });
                    self.forwarding.push((to, d));
                }
                Some(DonorOutcome::Resumed { cause }) => {
                    self.stats.kept += 1;
                    if let Some(p) = self.peers.get(to).copied() {
                        self.back_off(now, p, &cause.to_string());
                    }
                    if matches!(
                        cause,
                        ds_handoff::HandoffError::ChannelLost(_)
                            | ds_handoff::HandoffError::Timeout
                    ) {
                        // The channel may be broken or out of step: the next handoff reconnects.
                        self.to_peers[to] = None;
                        if let Some(p) = self.peers.get(to).copied() {
                            self.note_unreachable(p);
                        }
                    }
                    self.events.push(NodeEvent::KeptHere {
                        client,
                        cause: cause.to_string(),
                    });
                }
                Some(DonorOutcome::Failed { cause }) => {
                    tracing::error!(%client, "handoff failed: {cause}");
                    if let Some(p) = self.peers.get(to).copied() {
                        self.back_off(now, p, &cause.to_string());
                    }
                    if matches!(cause, ds_handoff::HandoffError::InDoubt(_)) {
                        self.to_peers[to] = None;
                    }
                    self.events.push(NodeEvent::Failed {
                        cause: cause.to_string(),
                    });
                    if !d.is_done() {
                        // In doubt: what still arrives here goes there, for a while.
                        self.forwarding.push((to, d));
                    }
                }
            }
        }
        let mut done = 0;
        self.forwarding.retain(|(_, d)| {
            if d.is_done() {
                done += d.forwarded();
            }
            !d.is_done()
        });
        self.forwarded_done += done;
        self.stats.forwarded_packets = self.forwarded_total();
    }

    /// The current donor, if it waits for its reclaim's answer, gets none: it reclaims with
    /// force (once more, through a channel opened anew; best effort) and resumes.
    fn home_agent_lost_for_donor<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let Some(d) = self.current.as_mut().filter(|d| d.is_reclaiming()) else {
            self.ha_lost = false;
            return;
        };
        d.home_agent_failed(host, svc);
        let forced: Vec<Message> = std::iter::from_fn(|| d.poll_transmit_home_agent()).collect();
        for m in forced {
            self.reclaim(now, &m, host);
        }
        // A failure of that send concerns no donor waiting any more.
        self.ha_lost = false;
    }

    /// Send a donor's reclaim of a flow to the home agent; false when it could not be sent.
    /// Best effort: with the home agent unreachable, the acceptor's move could not have
    /// reached it either.
    fn reclaim<H: Host<Conn = C>>(&mut self, now: Instant, m: &Message, host: &mut H) -> bool {
        match self.send_ha(m) {
            Ok(()) => {
                self.stats.reclaims += 1;
                if matches!(m, Message::MoveFlow { force: true, .. }) {
                    self.stats.reclaims_forced += 1;
                    self.owe(now, m);
                }
                true
            }
            Err(e) => {
                tracing::warn!("reclaim of a flow not sent, home agent unreachable: {e}");
                self.to_ha = None;
                self.ha_lost = true;
                self.acceptor.home_agent_failed(host);
                if matches!(m, Message::MoveFlow { force: true, .. }) {
                    self.owe(now, m);
                }
                false
            }
        }
    }

    /// Keep a forced reclaim until the home agent answers it ([`MAX_OWED`] at most, each for
    /// [`ds_handoff::MAX_FORWARD`]).
    fn owe(&mut self, now: Instant, m: &Message) {
        if self
            .owed_reclaims
            .iter()
            .any(|(r, _)| r.conn_id() == m.conn_id())
        {
            return;
        }
        if self.owed_reclaims.len() >= MAX_OWED {
            self.owed_reclaims.remove(0);
        }
        self.owed_reclaims
            .push((m.clone(), now + ds_handoff::MAX_FORWARD));
    }

    /// Send the owed reclaims again: on a channel opened anew (`fresh`), or, without a
    /// channel, once a second (each attempt opens one).
    fn resend_owed<H: Host<Conn = C>>(&mut self, now: Instant, fresh: bool, host: &mut H) {
        self.owed_reclaims.retain(|(_, until)| now < *until);
        if self.owed_reclaims.is_empty() {
            self.owed_next = None;
            return;
        }
        let due = self.to_ha.is_none() && self.owed_next.is_none_or(|t| now >= t);
        if !(fresh || due) {
            return;
        }
        self.owed_next = Some(now + OWED_RETRY);
        let owed: Vec<Message> = self.owed_reclaims.iter().map(|(m, _)| m.clone()).collect();
        for m in owed {
            if let Err(e) = self.send_ha(&m) {
                tracing::debug!("owed reclaim not sent: {e}");
                self.to_ha = None;
                self.acceptor.home_agent_failed(host);
                break;
            }
        }
    }

    fn forwarded_total(&self) -> u64 {
        // Counted when a forwarding donor is dropped, plus the live ones.
        self.forwarded_done
            + self
                .forwarding
                .iter()
                .map(|(_, d)| d)
                .chain(self.current.iter())
                .map(|d| d.forwarded())
                .sum::<u64>()
    }
}

/// The control port's listener; `shared` by the nodes of several queues (`SO_REUSEPORT`:
/// the kernel spreads incoming channels over them).
pub fn control_listener(at: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    if !shared {
        return TcpListener::bind(at);
    }
    let s = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&at.into())?;
    s.listen(128)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer's flow generation raises the node's clock only within [`GENERATION_AHEAD`]
    /// of the realtime clock: one of `u64::MAX` (a broken or hostile peer) leaves it alone,
    /// and the next handoff here still outranks every earlier one. A clock at its end
    /// refuses handoffs instead of wrapping.
    #[test]
    fn a_flow_generation_far_ahead_neither_wraps_nor_raises_the_clock() {
        let mut cfg = HandoffConfig::new(
            ClusterSecret::new(b"0123456789abcdef0123456789abcdef").expect("secret"),
        );
        let c: Coordinator<()> = Coordinator::new(&mut cfg).expect("coordinator");
        let first = c.next_generation().expect("a generation");
        assert!(
            first >= realtime_us() - 60_000_000,
            "starts at the realtime clock"
        );
        assert!(!c.observe_generation(u64::MAX));
        assert!(!c.observe_generation(realtime_us() + 2 * GENERATION_AHEAD));
        assert_eq!(
            c.next_generation(),
            Some(first + 1),
            "the clock did not move"
        );
        let ahead = realtime_us() + GENERATION_AHEAD / 2;
        assert!(c.observe_generation(ahead), "a peer's clock ahead of ours");
        assert_eq!(
            c.next_generation(),
            Some(ahead + 1),
            "Lamport: above the offer"
        );
        c.generation.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(c.next_generation(), None, "exhausted, not wrapped");
        assert_eq!(c.generation.load(Ordering::Relaxed), u64::MAX);
    }

    /// A node spinning for a wait that does not end stops after the limit, sleeps until the
    /// wait ends, and spins again for the next one. (The wait here is an acceptor's after a
    /// `Prepare`, in the `Handoff` scope; an `Exchange` spin is limited the same way.)
    #[test]
    fn a_spin_stops_after_its_limit_and_starts_again_with_the_next_wait() {
        let mut cfg = HandoffConfig::new(
            ClusterSecret::new(b"0123456789abcdef0123456789abcdef").expect("secret"),
        );
        cfg.busy_poll = BusyPoll::Handoff;
        let mut c: Coordinator<()> = Coordinator::new(&mut cfg).expect("coordinator");
        let idle = Duration::from_millis(10);
        let t0 = Instant::now();
        assert!(!c.spinning(t0), "nothing in flight");
        // A wait that does not end: spinning, round after round, until the limit.
        c.prepared_until = Some(t0 + Duration::from_secs(60));
        c.note_spin(t0);
        let half = t0 + SPIN_LIMIT_HANDOFF / 2;
        assert!(c.spinning(half), "within the limit");
        assert_eq!(c.max_wait(half, idle), Duration::ZERO);
        c.note_spin(half);
        let past = t0 + SPIN_LIMIT_HANDOFF + Duration::from_micros(1);
        assert!(!c.spinning(past), "past the limit");
        assert!(
            c.max_wait(past, idle) > Duration::ZERO,
            "sleeps between events"
        );
        c.note_spin(past);
        assert!(
            !c.spinning(past + Duration::from_millis(1)),
            "for the rest of the wait"
        );
        // The wait ends; the next one spins again from its start.
        c.prepared_until = None;
        c.note_spin(past);
        let t1 = past + Duration::from_millis(1);
        c.prepared_until = Some(t1 + Duration::from_secs(60));
        c.note_spin(t1);
        assert!(c.spinning(t1 + SPIN_LIMIT_HANDOFF / 2), "a new wait spins");
    }
}
