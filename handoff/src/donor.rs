//! The donor's side of one handoff: a sans-IO state machine (quinn-proto's shape).
//!
//! Fed `(now, input)` — [`Donor::poll`] after the caller's loop ran, [`Donor::handle`] for a
//! message from the acceptor, [`Donor::channel_failed`] when the control channel broke — it
//! drives the connection's [`Host`] and [`Service`] (passed per call) and queues messages for
//! the acceptor ([`Donor::poll_transmit`]); [`Donor::poll_timeout`] says when to call again.
//! It reads no clock and touches no socket: `now` is the caller's, and the host times its own
//! operations.
//!
//! ```text
//! start ─▶ Draining ─(acked | deadline | too slow to drain | Immediate)─▶ freeze, Offer ─▶ Offered
//! Offered ─Refuse/Abort/timeout/channel error─▶ thaw back, service adopts ─▶ Resumed
//! Offered ─Accept─▶ (commit) ─Activated─▶ Moved ─▶ Forwarding (held packets) ─▶ done
//!   (an Activated that steered ahead: Forwarding lasts until Steered, and its grace after)
//! Offered ─Accept, then nothing─▶ Failed (in doubt: the connection may run there)
//! ```
//!
//! Commit rule: the acceptor sends [`Message::Accept`] only after its thaw and steering
//! succeeded, and the donor treats Accept as the commit point. Before it nothing is lost: the
//! donor thaws the connection back. After it the connection belongs to the acceptor. The one
//! window two parties cannot close — an Accept in flight when the reply timeout fires — is
//! kept small by a reply timeout well above the control path's delay.

use std::collections::VecDeque;
use std::net::SocketAddrV6;
use std::time::{Duration, Instant};

use ds_stack::{ConnState, Packets};

use crate::channel::frame_len;
use crate::drain::Drain;
use crate::host::{Host, Service, Takeover};
use crate::msg::{AcceptorTimes, Message, Offer, RefuseReason, RECLAIM_ID};
use crate::report::{HandoffReport, Mode, Phase, PhaseTimes};
use crate::HandoffError;

/// What a handoff is and how the donor runs it.
#[derive(Debug, Clone)]
pub struct DonorConfig {
    /// Identifier echoed by the acceptor.
    pub conn_id: u64,
    /// Service name the acceptor checks.
    pub service: String,
    /// Optional encoded mobility ticket (route-optimised mode).
    pub ticket: Option<Vec<u8>>,
    /// When to freeze.
    pub drain: Drain,
    /// Longest wait for Accept/Refuse after the offer, and then again for Activated.
    pub reply_timeout: Duration,
    /// Steering mode, for the report.
    pub mode: Mode,
    /// Announce the coming offer when the drain starts ([`Message::Prepare`]), so the
    /// acceptor can run return routability meanwhile.
    pub prepare: bool,
    /// After the move, how long packets that still reach this host are forwarded to the
    /// acceptor (until steering has surely taken effect); while they keep coming, until none
    /// came for this long ([`MAX_FORWARD`] at most).
    pub forward_grace: Duration,
    /// The node's membership fence, carried in the offer.
    pub fence: Option<crate::msg::Fence>,
    /// The flow generation of this handoff ([`Offer::generation`]).
    pub generation: u64,
    /// Transparent mode: this node's care-of address. When the handoff fails after the offer
    /// left (before an Accept came), the donor asks the home agent to point the flow back
    /// here ([`Donor::poll_transmit_home_agent`], answered through
    /// [`Donor::handle_home_agent`]) and resumes the connection only if that reclaim won:
    /// the acceptor's move may have reached the home agent first (an Accept lost with the
    /// channel, a slow acceptor), and then the connection is the acceptor's
    /// ([`crate::flows`]).
    pub reclaim_via: Option<std::net::Ipv6Addr>,
    /// Longest wait for the home agent's answer to a reclaim; then the donor reclaims with
    /// force and resumes the connection (the home agent is unreachable: the acceptor's move
    /// could hardly have reached it either).
    pub reclaim_timeout: Duration,
}

impl DonorConfig {
    /// Defaults: immediate freeze, 2 s reply timeout, transparent, Prepare sent, 200 ms
    /// forwarding.
    pub fn new(conn_id: u64, service: &str) -> Self {
        DonorConfig {
            conn_id,
            service: service.to_string(),
            ticket: None,
            drain: Drain::Immediate,
            reply_timeout: Duration::from_secs(2),
            mode: Mode::Transparent,
            prepare: true,
            forward_grace: Duration::from_millis(200),
            fence: None,
            generation: 0,
            reclaim_via: None,
            reclaim_timeout: Duration::from_secs(1),
        }
    }
}

/// How a donor's handoff ended.
#[derive(Debug)]
pub enum DonorOutcome {
    /// The connection runs on the acceptor. The donor goes on forwarding the packets that
    /// still reach it for [`DonorConfig::forward_grace`] (keep polling it until
    /// [`Donor::is_done`]).
    Moved {
        /// The measured handoff (client-side fields unset).
        report: HandoffReport,
        /// Sequence number just after the last byte this node sent (SND.MAX at the freeze):
        /// the acceptor's first new segment starts here, so the client-perceived gap is
        /// measured at this boundary.
        boundary_seq: u32,
    },
    /// The handoff failed before the acceptor committed; the connection runs here again and
    /// the service continues it.
    Resumed {
        /// Why it came back.
        cause: HandoffError,
    },
    /// The handoff ended in a state this side cannot repair (the connection is not here):
    /// in doubt after Accept, the connection gone before the freeze, a failed thaw back.
    Failed {
        /// Why.
        cause: HandoffError,
    },
}

/// Measured instants are the host's clock ([`Host::now`]); deadlines run on the caller's
/// `now` (the two are the same clock in a real node; a test may simulate the latter).
#[derive(Debug)]
struct InFlight {
    state: ConnState,
    /// Host clock: extraction started, the offer was queued.
    t0: Instant,
    offer_sent: Instant,
    /// Caller's clock: when the offer was queued, and when Accept arrived (reply deadlines).
    offered_at: Instant,
    phases: PhaseTimes,
    drain: Duration,
    state_bytes: usize,
    offer_bytes: usize,
    accepted: Option<Instant>,
}

#[derive(Debug)]
enum Stage<C> {
    Draining {
        conn: C,
        since: Instant,
        until: Option<Instant>,
        solicited: bool,
        /// [`Drain::Adaptive`]: the unacknowledged bytes at the first look, then when the
        /// first acknowledgement of the drain showed and how much was left then.
        progress: Progress,
    },
    Offered(Box<InFlight>),
    /// The handoff failed before an Accept; the reclaim of the flow is asked for, and the
    /// connection stays frozen until the home agent says whose it is (`until` at the latest).
    Reclaiming {
        f: Box<InFlight>,
        cause: HandoffError,
        until: Instant,
    },
    Forwarding {
        until: Instant,
        /// Next look at the held packets.
        next: Instant,
        /// Forwarding began: it ends [`MAX_FORWARD`] later at the latest.
        since: Instant,
        /// Steering has taken effect as far as the acceptor knows: false after an Activated
        /// that steered ahead ([`AcceptorTimes::steer_ahead`]) until [`Message::Steered`];
        /// forwarding does not end before (but for [`MAX_FORWARD`]).
        steered: bool,
    },
    Done,
}

/// What an adaptive drain has seen of the client's acknowledgements.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Unacknowledged bytes at the drain's first look.
    start: Option<usize>,
    /// When the first acknowledgement of the drain was seen, and the bytes left then.
    first: Option<(Instant, usize)>,
}

impl Progress {
    /// Take note of `left` bytes unacknowledged at `now`; true when, at the rate seen since
    /// the first acknowledgement, they cannot all be acknowledged by `until`.
    fn too_slow(&mut self, now: Instant, left: usize, until: Instant) -> bool {
        let start = *self.start.get_or_insert(left);
        let Some((t1, at1)) = self.first else {
            if left < start {
                self.first = Some((now, left));
            }
            return false;
        };
        let took = now.saturating_duration_since(t1);
        let acked = at1.saturating_sub(left);
        // A rate needs some time and some bytes after the first acknowledgement.
        if took < Duration::from_millis(1) || acked == 0 {
            return false;
        }
        let per_byte = took.as_secs_f64() / acked as f64;
        let needs = Duration::from_secs_f64((per_byte * left as f64).min(1e6));
        now + needs > until
    }
}

/// How often held packets are collected while forwarding (the host holds them meanwhile).
const FORWARD_EVERY: Duration = Duration::from_millis(1);

/// Forwarding lasts at most this long, however long packets keep coming: a mobile node
/// retransmits an unacknowledged Binding Update for up to MAX_BINDACK_TIMEOUT, 32 s (RFC 6275
/// §11.8, §13), so route optimisation has taken effect, or failed for good, by then.
pub const MAX_FORWARD: Duration = Duration::from_secs(32);

/// When the acceptor (the mobile node) resends a Binding Update sent at `sent` that is still
/// unacknowledged at `now`: the mobile node's own schedule ([`ds_mipv6::Backoff::bindack`],
/// RFC 6275 §11.8, §12) replayed from `sent`.
fn next_bu_retransmission(sent: Instant, now: Instant) -> Instant {
    let zero = ds_mipv6::Instant::ZERO;
    let elapsed = zero + now.saturating_duration_since(sent);
    let mut b = ds_mipv6::Backoff::bindack(zero);
    while b.deadline <= elapsed {
        b.fire(b.deadline);
    }
    sent + (b.deadline - zero)
}

/// The donor side of one handoff.
#[derive(Debug)]
pub struct Donor<C> {
    cfg: DonorConfig,
    stage: Stage<C>,
    /// The service's state of the connection (exported at the start).
    app: Vec<u8>,
    local: SocketAddrV6,
    remote: SocketAddrV6,
    out: VecDeque<Message>,
    /// For the home agent: the reclaims of a flow after a failed handoff.
    ha_out: VecDeque<Message>,
    outcome: Option<DonorOutcome>,
    forwarded: u64,
}

impl<C: std::fmt::Debug> Donor<C> {
    /// Begin handing `conn` off at `now`: the service stops using it and exports its state,
    /// the drain starts. On error the connection stays with the service, as it was, and
    /// comes back with the cause.
    pub fn start<H, S>(
        now: Instant,
        conn: C,
        cfg: DonorConfig,
        host: &mut H,
        svc: &mut S,
    ) -> Result<Self, (C, HandoffError)>
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let Some((local, remote)) = host.endpoints(&conn) else {
            return Err((conn, HandoffError::Gone));
        };
        let app = match svc.export(&conn) {
            Ok(a) => a,
            Err(e) => return Err((conn, HandoffError::Service(e))),
        };
        let mut out = VecDeque::new();
        if cfg.prepare {
            out.push_back(Message::Prepare {
                conn_id: cfg.conn_id,
                client: remote,
            });
        }
        let until = match cfg.drain {
            Drain::Immediate => None,
            Drain::UntilAcked { deadline } | Drain::Adaptive { deadline } => Some(now + deadline),
            Drain::Wait { period } => Some(now + period),
        };
        Ok(Donor {
            cfg,
            stage: Stage::Draining {
                conn,
                since: now,
                until,
                solicited: false,
                progress: Progress::default(),
            },
            app,
            local,
            remote,
            out,
            ha_out: VecDeque::new(),
            outcome: None,
            forwarded: 0,
        })
    }

    /// The offer's id.
    pub fn conn_id(&self) -> u64 {
        self.cfg.conn_id
    }

    /// The connection's ends `(local, remote)`.
    pub fn flow(&self) -> (SocketAddrV6, SocketAddrV6) {
        (self.local, self.remote)
    }

    /// True while waiting for the drain.
    pub fn is_draining(&self) -> bool {
        matches!(self.stage, Stage::Draining { .. })
    }

    /// True once the connection moved and forwarding is over, or the handoff ended otherwise,
    /// with nothing left to transmit or report.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
            && self.out.is_empty()
            && self.ha_out.is_empty()
            && self.outcome.is_none()
    }

    /// Packets forwarded to the acceptor so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// The next message for the acceptor.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// The next message for the home agent (transparent mode): after a failed handoff, the
    /// flow's reclaim ([`DonorConfig::reclaim_via`]). Its answer carries an id with
    /// [`crate::msg::RECLAIM_ID`] set: give it to [`Donor::handle_home_agent`].
    pub fn poll_transmit_home_agent(&mut self) -> Option<Message> {
        self.ha_out.pop_front()
    }

    /// True while the donor waits for the home agent's answer to its reclaim (the
    /// connection frozen meanwhile).
    pub fn is_reclaiming(&self) -> bool {
        matches!(self.stage, Stage::Reclaiming { .. })
    }

    /// The home agent's answer to this donor's reclaim ([`Message::FlowMoved`] with
    /// [`crate::msg::RECLAIM_ID`] set; others are ignored). Won: the connection is thawed
    /// back here. Taken: the acceptor's move came first, the connection is the acceptor's and
    /// is not resumed here (reported in doubt: this side saw no Activated); what still
    /// reaches this host is forwarded there for the grace period.
    pub fn handle_home_agent<H, S>(&mut self, now: Instant, msg: Message, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let Message::FlowMoved {
            conn_id,
            ok,
            taken,
            detail,
        } = msg
        else {
            return;
        };
        if conn_id != self.cfg.conn_id | RECLAIM_ID {
            return;
        }
        // A forced reclaim's answer, or one after the wait: decided already.
        let Some((f, cause)) = self.take_reclaiming() else {
            return;
        };
        if ok || !taken {
            // The flow is not the acceptor's: the connection runs here again (a refusal
            // other than `taken`, a map update that failed, left the flow where it was).
            if !ok {
                tracing::warn!(
                    conn_id = self.cfg.conn_id,
                    "reclaim not applied ({detail}); the flow was not the acceptor's"
                );
            }
            self.resume(&f.state, cause, host, svc);
            return;
        }
        tracing::warn!(conn_id = self.cfg.conn_id, client = %self.remote, "handoff failed here ({cause}) but the acceptor's move came first ({detail}): the connection is the acceptor's");
        self.outcome = Some(DonorOutcome::Failed {
            cause: HandoffError::InDoubt(format!(
                "{cause}; the home agent gave the flow to the acceptor (its move came first)"
            )),
        });
        self.stage = Stage::Forwarding {
            until: now + self.cfg.forward_grace,
            next: now,
            since: now,
            steered: true,
        };
    }

    /// The channel to the home agent failed (or a reclaim could not be sent): a donor waiting
    /// for its reclaim's answer reclaims with force and resumes the connection.
    pub fn home_agent_failed<H, S>(&mut self, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        self.give_up_reclaiming("the home agent is unreachable", host, svc);
    }

    /// How the handoff ended, once (then `None`).
    pub fn poll_outcome(&mut self) -> Option<DonorOutcome> {
        self.outcome.take()
    }

    /// When to call [`Donor::poll`] at the latest: the drain or reply deadline, the end of
    /// forwarding. `None` while nothing is timed (the host's events will wake the caller).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Draining { until, .. } => *until,
            Stage::Offered(f) => Some(f.accepted.unwrap_or(f.offered_at) + self.cfg.reply_timeout),
            Stage::Reclaiming { until, .. } => Some(*until),
            Stage::Forwarding { until, next, .. } => Some((*until).min(*next)),
            Stage::Done => None,
        }
    }

    /// Stop forwarding without releasing the host's hold: the connection came back to this
    /// host (a newer thaw owns its packets now), or a newer freeze holds them again.
    pub fn stop_forwarding(&mut self) {
        if matches!(self.stage, Stage::Forwarding { .. }) {
            self.stage = Stage::Done;
        }
    }

    /// Advance: end the drain, give up waiting for a reply, forward held packets.
    pub fn poll<H, S>(&mut self, now: Instant, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Done => {}
            Stage::Draining {
                conn,
                since,
                until,
                mut solicited,
                mut progress,
            } => {
                let ready = match self.cfg.drain {
                    Drain::Immediate => true,
                    Drain::Wait { .. } => {
                        if host.unacknowledged(&conn).is_none() {
                            self.outcome = Some(DonorOutcome::Failed {
                                cause: HandoffError::Gone,
                            });
                            return;
                        }
                        until.is_some_and(|t| now >= t)
                    }
                    Drain::UntilAcked { .. } | Drain::Adaptive { .. } => {
                        match host.unacknowledged(&conn) {
                            None => {
                                self.outcome = Some(DonorOutcome::Failed {
                                    cause: HandoffError::Gone,
                                });
                                return;
                            }
                            Some(0) => true,
                            Some(left) => {
                                // Everything sent: ask for the ACK now rather than after the
                                // peer's delayed-ACK timer.
                                if !solicited {
                                    solicited = host.solicit_ack(&conn);
                                }
                                let adaptive = matches!(self.cfg.drain, Drain::Adaptive { .. });
                                until.is_some_and(|t| {
                                    now >= t || (adaptive && progress.too_slow(now, left, t))
                                })
                            }
                        }
                    }
                };
                if ready {
                    self.offer(now, conn, now.saturating_duration_since(since), host, svc);
                } else {
                    self.stage = Stage::Draining {
                        conn,
                        since,
                        until,
                        solicited,
                        progress,
                    };
                }
            }
            Stage::Offered(f) => {
                let waited = now.saturating_duration_since(f.accepted.unwrap_or(f.offered_at));
                if waited < self.cfg.reply_timeout {
                    self.stage = Stage::Offered(f);
                } else if f.accepted.is_none() {
                    self.fail(now, f, HandoffError::Timeout, host, svc);
                } else {
                    self.in_doubt(f, "no Activated in time".into());
                }
            }
            Stage::Reclaiming { f, cause, until } => {
                self.stage = Stage::Reclaiming { f, cause, until };
                if now >= until {
                    self.give_up_reclaiming("no answer to the reclaim in time", host, svc);
                }
            }
            Stage::Forwarding {
                until,
                since,
                steered,
                ..
            } => {
                let (local, remote) = (self.local, self.remote);
                // Unsteered, the flow may reach this host at any time, held packets or not:
                // forwarding goes on until the acceptor says the home agent moved it.
                let until = if steered {
                    until
                } else {
                    until
                        .max(now + self.cfg.forward_grace)
                        .min(since + MAX_FORWARD)
                };
                if now >= until {
                    let rest = host.release(local, remote);
                    self.forward(rest);
                } else {
                    let held = host.take_held(local, remote);
                    // Packets still coming here: steering has not taken effect yet (in route
                    // optimisation, a Binding Update lost on a congested path is resent only
                    // after a second, RFC 6275 §11.8). Forwarding goes on until none came for
                    // the grace period, at most MAX_FORWARD: ending it while they still come
                    // would answer the client's next packet with a reset.
                    let until = if held.is_empty() {
                        until
                    } else {
                        let mut until = until.max(now + self.cfg.forward_grace);
                        if self.cfg.mode == Mode::Ro {
                            // A client still sending home has no binding yet and may fall
                            // silent for longer than the grace (waiting for the acceptor's
                            // retransmission timeout): forward until the mobile node's next
                            // Binding Update has had its grace too.
                            until = until
                                .max(next_bu_retransmission(since, now) + self.cfg.forward_grace);
                        }
                        until.min(since + MAX_FORWARD)
                    };
                    self.forward(held);
                    self.stage = Stage::Forwarding {
                        until,
                        next: now + FORWARD_EVERY,
                        since,
                        steered,
                    };
                }
            }
        }
    }

    /// A message from the acceptor about this handoff (others are ignored: a late reply
    /// about an earlier offer is not ours to act on).
    pub fn handle<H, S>(&mut self, now: Instant, msg: Message, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        self.handle_arrived(now, None, msg, host, svc)
    }

    /// [`Donor::handle`] for a message whose arrival at this host is known (host clock; from
    /// the channel's receive stamp, [`crate::Channel::arrival`]). Phase 2 is the exchange's
    /// network time, so it ends when Activated arrived, not when this side got round to
    /// reading it: on a busy machine the donor's process may wait milliseconds for a CPU
    /// that the acceptor's first window keeps. The wall time still ends at the reading.
    pub fn handle_arrived<H, S>(
        &mut self,
        now: Instant,
        arrived: Option<Instant>,
        msg: Message,
        host: &mut H,
        svc: &mut S,
    ) where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        if msg.conn_id() != self.cfg.conn_id {
            return;
        }
        if let (
            Message::Steered { steer_ns, .. },
            Stage::Forwarding {
                until,
                steered,
                since,
                ..
            },
        ) = (&msg, &mut self.stage)
        {
            // The flow goes there now; what was already on its way here still gets the grace,
            // within MAX_FORWARD: an acceptor repeating Steered must not keep this host's hold
            // (and this donor) alive for ever.
            tracing::debug!(conn_id = self.cfg.conn_id, steer_ns, "steered");
            *steered = true;
            *until = (*until)
                .max(now + self.cfg.forward_grace)
                .min(*since + MAX_FORWARD);
            return;
        }
        if !matches!(self.stage, Stage::Offered(_)) {
            // Not waiting for a reply (a peer breaking the protocol, or a reply after this
            // side gave up): nothing to act on.
            tracing::debug!(
                conn_id = self.cfg.conn_id,
                ?msg,
                "reply outside an offer ignored"
            );
            return;
        }
        let Stage::Offered(mut f) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return;
        };
        tracing::debug!(conn_id = self.cfg.conn_id, ?msg, "reply");
        match (msg, f.accepted) {
            (Message::Refuse { reason, .. }, None) => {
                self.fail(now, f, HandoffError::Refused(reason), host, svc)
            }
            (Message::Abort { .. }, None) => self.fail(
                now,
                f,
                HandoffError::Protocol("acceptor aborted"),
                host,
                svc,
            ),
            (Message::Accept { .. }, None) => {
                f.accepted = Some(now);
                self.stage = Stage::Offered(f);
            }
            (Message::Activated { times, .. }, Some(_)) => {
                let done = host.now();
                let path = format!("{}->{}", host.kind().label(), times.host.label());
                // A stamp outside the exchange (a clock step) is not believed.
                let arrived = arrived
                    .filter(|a| (f.offer_sent..=done).contains(a))
                    .unwrap_or(done);
                self.finish(now, arrived, done, &path, *f, times)
            }
            (_, None) => self.fail(
                now,
                f,
                HandoffError::Protocol("unexpected reply to an offer"),
                host,
                svc,
            ),
            (_, Some(_)) => self.in_doubt(f, "unexpected message after Accept".into()),
        }
    }

    /// The control channel to the acceptor failed.
    pub fn channel_failed<H, S>(&mut self, now: Instant, cause: String, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        self.out.clear();
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Done => {}
            Stage::Draining { conn, .. } => {
                // Not frozen yet: the service simply continues it.
                self.outcome =
                    Some(self.give_back(conn, HandoffError::ChannelLost(cause), host, svc));
            }
            Stage::Offered(f) if f.accepted.is_none() => {
                self.fail(now, f, HandoffError::ChannelLost(cause), host, svc)
            }
            Stage::Offered(f) => self.in_doubt(f, cause),
            // The home agent decides now, not the acceptor.
            s @ Stage::Reclaiming { .. } => self.stage = s,
            Stage::Forwarding { .. } => {
                // Nothing can be forwarded any more.
                let _ = host.release(self.local, self.remote);
            }
        }
    }

    fn offer<H, S>(&mut self, now: Instant, conn: C, drain: Duration, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        // Phase 1: socket extraction.
        let t0 = host.now();
        let state = match host.freeze(&conn) {
            Ok(s) => s,
            Err(e) => {
                // The connection still runs here.
                self.outcome = Some(self.give_back(conn, HandoffError::Host(e), host, svc));
                return;
            }
        };
        drop(conn);
        let bytes = state.encode();
        let mut phases = PhaseTimes::default();
        let t1 = host.now();
        phases.set(Phase::SocketExtraction, t1.saturating_duration_since(t0));
        let state_bytes = bytes.len();
        let offer = Message::Offer(Offer {
            conn_id: self.cfg.conn_id,
            state: bytes,
            ticket: self.cfg.ticket.clone().map(serde_bytes::ByteBuf::from),
            service: self.cfg.service.clone(),
            app: Some(serde_bytes::ByteBuf::from(self.app.clone())),
            fence: self.cfg.fence,
            generation: self.cfg.generation,
            commit_within_us: Some(
                u64::try_from(self.cfg.reply_timeout.as_micros()).unwrap_or(u64::MAX),
            ),
        });
        let offer_bytes = frame_len(offer.encoded_len());
        tracing::debug!(conn_id = self.cfg.conn_id, state_bytes, "offer queued");
        self.out.push_back(offer);
        self.stage = Stage::Offered(Box::new(InFlight {
            state,
            t0,
            offer_sent: t1,
            offered_at: now,
            phases,
            drain,
            state_bytes,
            offer_bytes,
            accepted: None,
        }));
    }

    /// The handoff failed before an Accept came. An acceptor past the checks of its offer
    /// may have asked the home agent for the flow already (or still will). Refusals from the
    /// offer's checks come before any move: the connection is resumed at once. Any other
    /// refusal comes from an acceptor that dropped its copy and will never activate it: the
    /// flow is reclaimed with force (a move applied after the acceptor gave up, its answer
    /// lost or late, must not take it) and the connection resumed. Otherwise (the channel
    /// lost, no reply in time) the acceptor may have committed: in transparent mode the home
    /// agent decides whose the connection is ([`crate::flows`]), and it stays frozen here
    /// until it answered the reclaim. (An acceptor steering ahead commits before its move is
    /// answered; a reclaim that wins over its move then leaves its copy without packets, as
    /// a forced reclaim would always do.)
    fn fail<H, S>(
        &mut self,
        now: Instant,
        f: Box<InFlight>,
        cause: HandoffError,
        host: &mut H,
        svc: &mut S,
    ) where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let moved_maybe = !matches!(
            cause,
            HandoffError::Refused(
                RefuseReason::Load
                    | RefuseReason::UnknownService
                    | RefuseReason::BadState(_)
                    | RefuseReason::ThawFailed(_)
                    | RefuseReason::StaleFence { .. }
            )
        );
        let refused = matches!(cause, HandoffError::Refused(_));
        match self.cfg.reclaim_via.filter(|_| moved_maybe) {
            Some(_) if !refused => {
                tracing::info!(
                    conn_id = self.cfg.conn_id,
                    "handoff failed ({cause}): reclaiming the flow"
                );
                self.queue_reclaim(false);
                self.stage = Stage::Reclaiming {
                    f,
                    cause,
                    until: now + self.cfg.reclaim_timeout,
                };
            }
            Some(_) => {
                self.queue_reclaim(true);
                self.resume(&f.state, cause, host, svc);
            }
            None => self.resume(&f.state, cause, host, svc),
        }
    }

    /// Queue the flow's reclaim for the home agent (with `force`: it outranks the acceptor's
    /// move of this generation whatever the order they arrive in).
    fn queue_reclaim(&mut self, force: bool) {
        let Some(coa) = self.cfg.reclaim_via else {
            return;
        };
        self.ha_out.push_back(Message::MoveFlow {
            conn_id: self.cfg.conn_id | RECLAIM_ID,
            client: self.remote,
            server: self.local,
            to: coa,
            generation: self.cfg.generation,
            reclaim: true,
            force,
            valid_us: None,
        });
    }

    /// The handoff waiting for its reclaim's answer, if it does (the stage is then done).
    fn take_reclaiming(&mut self) -> Option<(Box<InFlight>, HandoffError)> {
        if !self.is_reclaiming() {
            return None;
        }
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Reclaiming { f, cause, .. } => Some((f, cause)),
            _ => None,
        }
    }

    /// Waiting for the reclaim's answer is over without one: reclaim with force, resume.
    fn give_up_reclaiming<H, S>(&mut self, why: &str, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        let Some((f, cause)) = self.take_reclaiming() else {
            return;
        };
        tracing::warn!(
            conn_id = self.cfg.conn_id,
            "{why}: reclaiming with force, connection resumed here"
        );
        self.queue_reclaim(true);
        self.resume(&f.state, cause, host, svc);
    }

    /// Thaw the connection back here (before the commit) and give it back to the service.
    fn resume<H, S>(&mut self, state: &ConnState, cause: HandoffError, host: &mut H, svc: &mut S)
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        // Tell the acceptor to drop the offer (unless it refused it already); best effort:
        // the channel may be what failed.
        if !matches!(
            cause,
            HandoffError::Refused(_) | HandoffError::ChannelLost(_)
        ) {
            self.out.push_back(Message::Abort {
                conn_id: self.cfg.conn_id,
                reason: cause.to_string(),
            });
        }
        tracing::warn!(conn_id = self.cfg.conn_id, client = %self.remote, "handoff failed, connection kept here: {cause}");
        let back = host.thaw(state, Takeover::None).and_then(|mut c| {
            host.activate(&mut c, false)?;
            Ok(c)
        });
        self.stage = Stage::Done;
        self.outcome = Some(match back {
            Ok(c) => self.give_back(c, cause, host, svc),
            Err(e) => DonorOutcome::Failed {
                cause: HandoffError::Host(e),
            },
        });
    }

    /// The connection stays (or is again) here: the service continues it from its exported
    /// state; if it cannot, the connection is reset rather than left hanging.
    fn give_back<H, S>(
        &self,
        conn: C,
        cause: HandoffError,
        host: &mut H,
        svc: &mut S,
    ) -> DonorOutcome
    where
        H: Host<Conn = C>,
        S: Service<C>,
    {
        match svc.adopt(conn, &self.app) {
            Ok(()) => DonorOutcome::Resumed { cause },
            Err((conn, e)) => {
                host.abort(conn);
                DonorOutcome::Failed {
                    cause: HandoffError::Service(e),
                }
            }
        }
    }

    /// After Accept without Activated: the connection may run there. What still reaches this
    /// host goes there too, for the grace period.
    fn in_doubt(&mut self, f: Box<InFlight>, why: String) {
        tracing::error!(conn_id = self.cfg.conn_id, "handoff in doubt: {why}");
        self.outcome = Some(DonorOutcome::Failed {
            cause: HandoffError::InDoubt(why),
        });
        let since = f.accepted.unwrap_or(f.offered_at);
        self.stage = Stage::Forwarding {
            until: since + self.cfg.reply_timeout + self.cfg.forward_grace,
            next: since,
            since,
            steered: true,
        };
    }

    /// Activated arrived at `arrived` and was read at `now` (caller's clock), `done` (host
    /// clock).
    fn finish(
        &mut self,
        now: Instant,
        arrived: Instant,
        done: Instant,
        path: &str,
        f: InFlight,
        times: AcceptorTimes,
    ) {
        let mut phases = f.phases;
        // Phase 2: the exchange's network time as the donor sees it, minus the acceptor's own
        // processing (so the two hosts' clocks are never compared).
        let rtt = arrived.saturating_duration_since(f.offer_sent);
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
            path,
            &phases,
            done.saturating_duration_since(f.t0),
            f.drain,
            f.state_bytes,
            f.offer_bytes,
        );
        // SND.MAX at the freeze: the first new byte the client gets from the acceptor.
        let sent = f.state.in_flight.as_ref().map_or(0, |x| x.max_off);
        let boundary_seq = f.state.snd_una.wrapping_add(sent);
        tracing::info!(conn_id = self.cfg.conn_id, client = %self.remote, "handed off: {}", report.to_json_line());
        self.outcome = Some(DonorOutcome::Moved {
            report,
            boundary_seq,
        });
        // What was held during the handoff goes at the next poll.
        self.stage = Stage::Forwarding {
            until: now + self.cfg.forward_grace,
            next: now,
            since: now,
            steered: !times.steer_ahead,
        };
    }

    fn forward(&mut self, packets: Packets) {
        if packets.is_empty() {
            return;
        }
        self.forwarded += packets.len() as u64;
        self.out.push_back(Message::Forward {
            conn_id: self.cfg.conn_id,
            packets,
        });
    }
}
