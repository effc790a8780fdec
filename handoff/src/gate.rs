//! Admission of control channels: where the unauthenticated part of a control port ends.
//!
//! A [`ChannelGate`] owns a control listener and every channel accepted on it until the peer
//! proved the cluster key ([`Channel::is_established`]); only then does the owner (a node's
//! [`crate::Acceptor`] side, the home agent's flow agent) see the channel. Whatever a peer
//! without the key does, it holds bounded resources for a bounded time:
//!
//! * a handshake **deadline** per channel, overall (not per read): [`GateLimits::handshake`];
//! * at most [`GateLimits::per_address`] waiting channels per source address (more are closed
//!   at once) and [`GateLimits::total`] in all; when the total is reached, a new channel
//!   evicts the oldest one of the address holding the most, so a flood from a few addresses
//!   cannot lock a real peer out;
//! * pre-authentication frames of at most [`crate::channel::PREAUTH_MAX_FRAME`] bytes (the
//!   channel's own limit), so a channel holds one read at most;
//! * at most [`GateLimits::accepts_per_poll`] accepts per [`ChannelGate::poll`], so a
//!   connection flood cannot starve the caller's data path;
//! * after an accept error that repeats while its cause lasts (out of descriptors or
//!   memory), the listener rests for [`GateLimits::accept_backoff`] instead of spinning;
//! * warnings are rate-limited ([`LogLimit`]), every event is counted ([`GateStats`]).
//!
//! Nothing here blocks or reads a clock: the caller passes `now`, waits on
//! [`ChannelGate::wait_fds`] and wakes by [`ChannelGate::poll_timeout`].

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelError, ClusterSecret};

/// Authenticated channels an owner (a node's engine, the flow agent) keeps from one source
/// address: a real peer holds one per queue of its node, plus reconnects not yet noticed
/// dead, and nodes sharing an address (several on one host, as in tests) one each. A
/// cluster member holding the key could otherwise open as many as the descriptors allow
/// ([`admits_authenticated`]).
pub const AUTHENTICATED_PER_ADDRESS: usize = 64;

/// Authenticated channels an owner keeps in all ([`admits_authenticated`]).
pub const AUTHENTICATED_MAX: usize = 1024;

/// Whether an owner holding authenticated channels from the addresses `held` may take one
/// more from `ip`: fewer than [`AUTHENTICATED_PER_ADDRESS`] from it and fewer than
/// [`AUTHENTICATED_MAX`] in all. A channel refused is closed; its peer redials later, by
/// which time the keep-alive may have ended its stale channels.
pub fn admits_authenticated(held: impl IntoIterator<Item = IpAddr>, ip: IpAddr) -> bool {
    let (mut from, mut all) = (0, 0);
    for a in held {
        all += 1;
        from += usize::from(a == ip);
    }
    from < AUTHENTICATED_PER_ADDRESS && all < AUTHENTICATED_MAX
}

/// Bounds on the channels that have not proved the key yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Time from accept to the peer's key confirmation.
    pub handshake: Duration,
    /// Waiting channels per source address.
    pub per_address: usize,
    /// Waiting channels in all.
    pub total: usize,
    /// Accepts per poll.
    pub accepts_per_poll: usize,
    /// How long the listener rests after a resource error (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    pub accept_backoff: Duration,
}

impl Default for GateLimits {
    /// 1 s handshake, 4 per address, 64 in all, 64 accepts per poll, 100 ms back-off. A real
    /// peer opens one channel to a node (and a node one to its home agent), so four per
    /// address leave room for reconnects; the handshake takes one round trip.
    fn default() -> Self {
        GateLimits {
            handshake: Duration::from_secs(1),
            per_address: 4,
            total: 64,
            accepts_per_poll: 64,
            accept_backoff: Duration::from_millis(100),
        }
    }
}

/// What the gate saw, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GateStats {
    /// Connections accepted on the listener.
    pub accepted: u64,
    /// Channels whose peer proved the key (handed to the owner).
    pub authenticated: u64,
    /// Closed at once: their address had [`GateLimits::per_address`] waiting.
    pub refused_address: u64,
    /// Evicted to make room under [`GateLimits::total`].
    pub evicted: u64,
    /// Closed at the handshake deadline.
    pub timeouts: u64,
    /// Failed the handshake (bad hello, wrong key, oversized or garbled frame, closed).
    pub failed: u64,
    /// Accept errors (the listener rested after the resource ones).
    pub accept_errors: u64,
}

/// At most `burst` log lines per `period`; the rest are counted and their number reported
/// with the next line allowed. Written here because it is ten lines: the tracing ecosystem's
/// rate limiters are per call site and global, where the gate wants one per listener, driven
/// by the caller's clock.
#[derive(Debug, Clone)]
pub struct LogLimit {
    period: Duration,
    burst: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    /// `burst` lines per `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        LogLimit {
            period,
            burst,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`; if so, how many were suppressed before it.
    ///
    /// ```
    /// use ds_handoff::gate::LogLimit;
    /// use std::time::Instant;
    /// // The caller's loop passes its own clock's `now`.
    /// fn bad_frame(limit: &mut LogLimit, now: Instant, peer: &str) {
    ///     if let Some(suppressed) = limit.allow(now) {
    ///         eprintln!("bad frame from {peer} ({suppressed} more not logged)");
    ///     }
    /// }
    /// ```
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= self.period);
        if fresh {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A channel waiting for the peer's key confirmation.
struct Waiting {
    chan: Channel,
    peer: SocketAddr,
    deadline: Instant,
    /// Accept order, for eviction.
    seq: u64,
}

/// A control listener and its unauthenticated channels (see the module docs).
pub struct ChannelGate {
    listener: TcpListener,
    secret: ClusterSecret,
    limits: GateLimits,
    waiting: Vec<Waiting>,
    resting_until: Option<Instant>,
    stats: GateStats,
    log: LogLimit,
    seq: u64,
    /// Changes whenever the set of descriptors of [`ChannelGate::wait_fds`] changes.
    epoch: u64,
    /// What this gate serves, in its log lines.
    what: &'static str,
}

impl std::fmt::Debug for ChannelGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelGate")
            .field("local", &self.listener.local_addr().ok())
            .field("waiting", &self.waiting.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl ChannelGate {
    /// A gate on `listener` (made non-blocking here); `what` names it in log lines.
    pub fn new(
        listener: TcpListener,
        secret: &ClusterSecret,
        limits: GateLimits,
        what: &'static str,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(ChannelGate {
            listener,
            secret: secret.clone(),
            limits,
            waiting: Vec::new(),
            resting_until: None,
            stats: GateStats::default(),
            log: LogLimit::new(5, Duration::from_secs(1)),
            seq: 0,
            epoch: 0,
            what,
        })
    }

    /// The listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> GateStats {
        self.stats
    }

    /// Channels waiting for their peer's key confirmation.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Changes whenever [`ChannelGate::wait_fds`] would list other descriptors (a caller that
    /// registered them in an epoll set registers them again).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The descriptors to wait on (appended to `out`): the listener unless it rests, and the
    /// waiting channels.
    pub fn wait_fds(&self, out: &mut Vec<RawFd>) {
        if self.resting_until.is_none() {
            out.push(self.listener.as_raw_fd());
        }
        out.extend(self.waiting.iter().map(|w| w.chan.stream().as_raw_fd()));
    }

    /// When [`ChannelGate::poll`] has something to do without input: the earliest handshake
    /// deadline, or the end of the listener's rest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .map(|w| w.deadline)
            .chain(self.resting_until)
            .min()
    }

    /// Whether any waiting channel still has output the socket did not take (the caller
    /// should not sleep on readability alone then).
    pub fn has_pending_output(&self) -> bool {
        self.waiting.iter().any(|w| w.chan.pending_output() > 0)
    }

    /// Accept what arrived, advance the handshakes, close what is over its bounds; the
    /// channels whose peer proved the key since the last call, with their peer addresses.
    /// Messages that came behind the confirmation wait in the channel for its next
    /// [`Channel::poll`].
    pub fn poll(&mut self, now: Instant) -> Vec<(Channel, SocketAddr)> {
        self.poll_hinted(now, |_| true)
    }

    /// As [`ChannelGate::poll`], told which descriptors the caller's wait found readable
    /// (`readable`): the listener is tried only when it is, instead of an `accept` that
    /// fails with `EAGAIN` in every round of a busy loop. The waiting channels are advanced
    /// whatever the hint (their handshake may have output to finish, and their deadlines
    /// pass without input).
    pub fn poll_hinted(
        &mut self,
        now: Instant,
        readable: impl Fn(RawFd) -> bool,
    ) -> Vec<(Channel, SocketAddr)> {
        // A resting listener is not waited on: its rest ends by the clock, not readability.
        if self.resting_until.is_some() || readable(self.listener.as_raw_fd()) {
            self.accept(now);
        }
        let mut ready = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &mut self.waiting[i];
            let verdict = if now >= w.deadline {
                self.stats.timeouts += 1;
                Err(None)
            } else {
                match w.chan.poll_handshake() {
                    Ok(true) => Ok(true),
                    Ok(false) => Ok(false),
                    Err(e) => {
                        self.stats.failed += 1;
                        Err(Some(e))
                    }
                }
            };
            match verdict {
                Ok(false) => i += 1,
                Ok(true) => {
                    let w = self.waiting.swap_remove(i);
                    self.stats.authenticated += 1;
                    self.epoch += 1;
                    tracing::debug!(peer = %w.peer, "{}: control channel authenticated", self.what);
                    ready.push((w.chan, w.peer));
                }
                Err(e) => {
                    let w = self.waiting.swap_remove(i);
                    self.epoch += 1;
                    self.warn(now, w.peer, e);
                }
            }
        }
        ready
    }

    fn warn(&mut self, now: Instant, peer: SocketAddr, e: Option<ChannelError>) {
        let Some(suppressed) = self.log.allow(now) else {
            return;
        };
        let what = self.what;
        match e {
            None => {
                tracing::warn!(%peer, suppressed, "{what}: control channel handshake timed out")
            }
            Some(ChannelError::Closed) => {
                tracing::debug!(%peer, suppressed, "{what}: control channel closed in its handshake")
            }
            Some(e) => tracing::warn!(%peer, suppressed, "{what}: control channel refused: {e}"),
        }
    }

    fn accept(&mut self, now: Instant) {
        if let Some(t) = self.resting_until {
            if now < t {
                return;
            }
            self.resting_until = None;
            self.epoch += 1;
        }
        for _ in 0..self.limits.accepts_per_poll {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.stats.accepted += 1;
                    self.admit(now, stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.accept_errors += 1;
                    // Out of descriptors or memory: the listener stays readable while the
                    // cause lasts, so rest rather than spin (and log) at full speed.
                    let resource = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if let Some(suppressed) = self.log.allow(now) {
                        tracing::warn!(suppressed, "{}: accept: {e}", self.what);
                    }
                    if resource {
                        self.resting_until = Some(now + self.limits.accept_backoff);
                        self.epoch += 1;
                        return;
                    }
                }
            }
        }
    }

    fn admit(&mut self, now: Instant, stream: std::net::TcpStream, peer: SocketAddr) {
        let ip = peer.ip();
        let from = |ip: IpAddr, ws: &[Waiting]| ws.iter().filter(|w| w.peer.ip() == ip).count();
        if from(ip, &self.waiting) >= self.limits.per_address {
            self.stats.refused_address += 1;
            if let Some(suppressed) = self.log.allow(now) {
                tracing::warn!(%peer, suppressed, "{}: too many unauthenticated control channels from this address", self.what);
            }
            return;
        }
        if self.waiting.len() >= self.limits.total.max(1) {
            // Evict the oldest channel of the address holding the most.
            let biggest = self
                .waiting
                .iter()
                .map(|w| w.peer.ip())
                .max_by_key(|a| from(*a, &self.waiting));
            if let Some(victim) = biggest.and_then(|a| {
                self.waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.peer.ip() == a)
                    .min_by_key(|(_, w)| w.seq)
                    .map(|(i, _)| i)
            }) {
                self.waiting.swap_remove(victim);
                self.stats.evicted += 1;
            }
        }
        match Channel::accept(stream, &self.secret) {
            Ok(chan) => {
                self.seq += 1;
                self.epoch += 1;
                self.waiting.push(Waiting {
                    chan,
                    peer,
                    deadline: now + self.limits.handshake,
                    seq: self.seq,
                });
            }
            Err(e) => {
                self.stats.failed += 1;
                self.warn(now, peer, Some(e));
            }
        }
    }
}
