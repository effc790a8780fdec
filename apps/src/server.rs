//! The HTTP/1.1 content service, written against the library's connection API
//! ([`dserver::Node`]): the same calls any server linking the library makes.
//!
//! [`HttpServer::poll`] is called after each [`dserver::Node::poll`]: it takes new
//! connections and ones handed over by other nodes ([`dserver::Node::try_accept`], with
//! their HTTP state), the outcomes of handoffs, and serves the connections with news
//! ([`dserver::Node::take_ready`]): received bytes go into each connection's [`HttpConn`], as
//! much of the responses as the send buffers take goes out, and a connection whose work is
//! done is closed. It never blocks and owns no I/O besides reading files.
//!
//! Handoff: a connection that has sent its quota of response bytes on this node
//! ([`HttpServer::set_handoff_quota`]), one the operator names (`dsctl handoff`,
//! [`HttpServer::request_handoff`]), and every connection of a drain
//! ([`HttpServer::start_drain`]) is paused and handed to a peer with its HTTP state
//! ([`dserver::Node::start_handoff`]); if it stays, it is served on from where it paused.

use crate::drain::{DrainInfo, Draining};
use crate::http::{DocRoot, HttpConn, HttpConnState, HttpStats};
use dserver::{ConnId, Event, Node, TcpState};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connection limits of the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen backlog (connections handshaking or waiting for accept).
    pub backlog: usize,
    /// A persistent connection with no request in progress is closed after this long idle.
    pub idle_timeout: Duration,
    /// A connection still not closed this long after our FIN is aborted (kernel sockets; on
    /// the userspace stack a closed connection is the stack's, which bounds FIN-WAIT-2 and
    /// its retransmissions itself).
    pub linger: Duration,
    /// A request head must arrive whole within this long of its first byte, however the
    /// client trickles it (then 408 and close): a slow client holds a connection no longer.
    pub header_timeout: Duration,
    /// A response that makes no progress this long (the client reads nothing, its window
    /// stays closed) is aborted.
    pub stall_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed, and past twice as many
    /// reset at once.
    pub max_connections: usize,
    /// Bytes queued in TCP send buffers over all connections: at the limit no connection is
    /// given more (they go on as their clients acknowledge) and new clients are answered 503.
    pub max_buffered: usize,
    /// Files kept open between requests (off by default, as nginx's `open_file_cache`).
    pub open_file_cache: crate::http::OpenFileCache,
}

impl Default for ServerConfig {
    /// Backlog 128, idle 60 s, linger 30 s, header 10 s, stall 60 s, 10,000 connections,
    /// 512 MiB buffered in all, no open-file cache.
    ///
    /// Memory per connection is bounded by what is in flight (at most the client's window)
    /// plus the stack's `notsent_lowat` (256 KiB) and one file chunk (64 KiB); a client that
    /// stops reading holds the latter two here (the rest sits in its own buffer), until the
    /// stall timeout.
    fn default() -> Self {
        ServerConfig {
            backlog: 128,
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_buffered: 512 << 20,
            open_file_cache: crate::http::OpenFileCache::default(),
        }
    }
}

/// Server-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections that ended with our FIN and a clean close.
    pub closed: u64,
    /// Connections that ended with a reset or an error (ours or the peer's).
    pub aborted: u64,
    /// Connections closed by the idle timeout.
    pub idle_closed: u64,
    /// Requests whose head did not arrive within the header timeout (answered 408).
    pub header_timeouts: u64,
    /// Responses aborted after the stall timeout.
    pub stalled: u64,
    /// Connections refused over the connection limit (503, or a reset past twice the limit).
    pub refused: u64,
    /// Connections handed to another node (counted when the handoff completed).
    pub handed_off: u64,
    /// Connections handed over by another node and continued here (not the ones that stayed
    /// after a failed handoff).
    pub adopted: u64,
    /// Request and byte counters, summed over all connections.
    pub http: HttpStats,
    /// The open-file cache (`--open-file-cache`; zeros without it).
    pub open_files: crate::http::OpenFileStats,
}

struct Conn {
    http: HttpConn,
    client: SocketAddrV6,
    /// When it was accepted or adopted here.
    since: Instant,
    clock: ConnClock<Instant>,
    /// Response bytes handed to TCP on this node since accept, adopt or resume (the quota
    /// counter).
    sent_here: u64,
    /// Leaving: not serviced at all until it stays after all (or goes).
    paused: bool,
    /// Resumed since last serviced: its idle clock restarts.
    resumed: bool,
    /// Its TCP send queue as last seen here (an upper bound: it only shrinks between looks).
    queued: usize,
}

impl Conn {
    fn new(http: HttpConn, client: SocketAddrV6, now: Instant) -> Self {
        Conn {
            http,
            client,
            since: now,
            clock: ConnClock::new(now),
            sent_here: 0,
            paused: false,
            resumed: false,
            queued: 0,
        }
    }
}

/// `std::time::Instant` as [`ConnClock`] wants it.
pub fn since(now: Instant, then: Instant) -> Duration {
    now.saturating_duration_since(then)
}

/// A connection's clocks against the [`ServerConfig`] limits: one implementation for the
/// userspace server and the kernel-socket node, each with its own clock type `T` (and its
/// `since(later, earlier)`).
#[derive(Debug, Clone, Copy)]
pub struct ConnClock<T> {
    last_activity: T,
    /// Since when part of a request head is waiting for the rest.
    head_since: Option<T>,
}

/// What [`ConnClock::after_send`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing.
    None,
    /// An idle persistent connection: no further request is answered, it closes.
    Idle,
    /// A response made no progress within the stall timeout: abort the connection.
    Stalled,
}

impl<T: Copy> ConnClock<T> {
    /// A connection opened (or adopted) at `now`.
    pub fn new(now: T) -> Self {
        ConnClock {
            last_activity: now,
            head_since: None,
        }
    }

    /// Something moved at `now` (bytes in, bytes out).
    pub fn activity(&mut self, now: T) {
        self.last_activity = now;
    }

    /// Before answering: a request head that did not arrive whole within the header timeout
    /// of its first byte is answered 408 and the connection closes (true then).
    pub fn head_deadline(
        &mut self,
        now: T,
        since: fn(T, T) -> Duration,
        http: &mut HttpConn,
        cfg: &ServerConfig,
    ) -> bool {
        if !http.awaiting_head() {
            self.head_since = None;
            return false;
        }
        let first = *self.head_since.get_or_insert(now);
        if since(now, first) < cfg.header_timeout {
            return false;
        }
        http.time_out_request();
        self.head_since = None;
        true
    }

    /// After sending: a response without progress for the stall timeout is to be aborted;
    /// an idle persistent connection is finished (RFC 9112 §9.5 allows closing it any time).
    pub fn after_send(
        &mut self,
        now: T,
        since: fn(T, T) -> Duration,
        http: &mut HttpConn,
        cfg: &ServerConfig,
    ) -> Expiry {
        let quiet = since(now, self.last_activity);
        if http.is_busy() {
            if quiet >= cfg.stall_timeout {
                return Expiry::Stalled;
            }
        } else if !http.is_finished() && quiet >= cfg.idle_timeout {
            http.finish();
            return Expiry::Idle;
        }
        Expiry::None
    }
}

/// What one round of service needs besides the connection.
struct Ctx<'a> {
    now: Instant,
    config: &'a ServerConfig,
    quota: Option<u64>,
}

enum Verdict {
    Keep,
    /// Reached the handoff quota.
    QuotaReached,
    /// Its work is done: closed (a FIN follows the response), forget it.
    Closed,
    /// Broken: reset it and forget it.
    Abort,
}

/// One open client connection, as `dsctl conns` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnInfo {
    /// The client's address and port.
    pub client: String,
    /// Ours (the DS address, or the node's own).
    pub local: String,
    /// The TCP state (RFC 9293 §3.3.2 names).
    pub state: String,
    /// Response bytes sent on this node since it was accepted or adopted here.
    pub sent_bytes: u64,
    /// How long it has been on this node, in milliseconds.
    pub age_ms: u64,
}

/// The HTTP/1.1 content service of one [`Node`]: files below a document root.
pub struct HttpServer {
    root: Arc<DocRoot>,
    config: ServerConfig,
    conns: HashMap<ConnId, Conn>,
    stats: ServerStats,
    buf: Vec<u8>,
    next_id: u64,
    /// Connections to service this round (ready ones, new ones, resumed ones).
    todo: Vec<ConnId>,
    /// When every connection was last looked at for timeouts.
    last_sweep: Option<Instant>,
    /// Response bytes a connection may send on this node before it is handed off.
    quota: Option<u64>,
    /// Handoffs this node may start ([`HttpServer::set_max_handoffs`]).
    max_handoffs: Option<u64>,
    /// Handoffs started here, or by every server of the node when they share the count
    /// ([`HttpServer::share_handoff_count`]).
    tries: Arc<AtomicU64>,
    /// The sum of the connections' `queued`: what the send buffers hold at most.
    buffered: usize,
    /// Set while the node drains ([`HttpServer::start_drain`]).
    drain: Option<Draining>,
    /// The node's events, for the caller ([`HttpServer::take_events`]).
    events: Vec<Event>,
}

/// How often every connection is checked for timeouts; between sweeps only connections
/// with network events are serviced.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

impl HttpServer {
    /// Serve files below `root` (a directory) on the connections of the node it is polled
    /// with.
    pub fn new(root: &Path, config: ServerConfig) -> anyhow::Result<Self> {
        if !root.is_dir() {
            anyhow::bail!("document root {} is not a directory", root.display());
        }
        let root = DocRoot::open_with_cache(root, config.open_file_cache)
            .map_err(|e| anyhow::anyhow!("document root {}: {e}", root.display()))?;
        Ok(HttpServer {
            root,
            config,
            conns: HashMap::new(),
            stats: ServerStats::default(),
            buf: vec![0; 16 * 1024],
            next_id: 0,
            todo: Vec::new(),
            last_sweep: None,
            quota: None,
            max_handoffs: None,
            tries: Arc::default(),
            buffered: 0,
            drain: None,
            events: Vec::new(),
        })
    }

    /// The node's settings for this service: listen backlog.
    pub fn backlog(&self) -> usize {
        self.config.backlog
    }

    /// Per-connection quota: a connection sends at most this many response bytes on this node
    /// (counted from accept, adopt or resume), then it is handed to a peer. `None` = no quota
    /// (the default).
    ///
    /// Exact: a connection is never handed more than its remaining quota, so exactly `bytes`
    /// response bytes (heads and bodies) go out before the handoff.
    pub fn set_handoff_quota(&mut self, bytes: Option<u64>) {
        self.quota = bytes;
    }

    /// At most this many handoffs start here (no limit during a drain); `None`: no limit.
    pub fn set_max_handoffs(&mut self, n: Option<u64>) {
        self.max_handoffs = n;
    }

    /// Count the handoffs started in `started`, shared with the node's other servers (one per
    /// receive queue, `dsnode --queues`), so that [`HttpServer::set_max_handoffs`] bounds
    /// the node's handoffs, not this server's.
    pub fn share_handoff_count(&mut self, started: Arc<AtomicU64>) {
        self.tries = started;
    }

    /// Whether connections wait to be serviced (adopted, resumed or newly accepted ones) that
    /// no network event will announce: poll the node again without waiting.
    pub fn has_work(&self) -> bool {
        !self.todo.is_empty()
    }

    /// The node's events of the last rounds (handoff outcomes, bindings, declined offers),
    /// after the server took note of them.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Counters so far (connections still open are not yet in `http`).
    pub fn stats(&self) -> ServerStats {
        let mut s = self.stats;
        for c in self.conns.values() {
            s.http.add(c.http.stats());
        }
        s.open_files = self.root.open_file_stats();
        s
    }

    /// The open connections, ordered by client address.
    pub fn conn_info(&self, node: &Node) -> Vec<ConnInfo> {
        let now = Instant::now();
        let mut v: Vec<ConnInfo> = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                Some(ConnInfo {
                    client: c.client.to_string(),
                    local: node.local_addr(*id)?.to_string(),
                    state: format!("{:?}", node.tcp_state(*id)?),
                    sent_bytes: c.sent_here,
                    age_ms: since(now, c.since).as_millis() as u64,
                })
            })
            .collect();
        v.sort_by(|a, b| a.client.cmp(&b.client));
        v
    }

    /// The connection of `client`, if it is served here, and whether it is leaving.
    pub fn conn_of(&self, client: SocketAddrV6) -> Option<(ConnId, bool)> {
        self.conns
            .iter()
            .find(|(_, conn)| conn.client == client)
            .map(|(c, conn)| (*c, conn.paused))
    }

    /// Connections currently open here (leaving ones included).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn handoffs_left(&self) -> bool {
        self.drain.is_some()
            || self
                .max_handoffs
                .is_none_or(|m| self.tries.load(Ordering::Relaxed) < m)
    }

    /// Count a handoff about to start, unless the node may start no more (checked and counted
    /// at once: servers sharing the count run on other threads).
    fn reserve_handoff(&self) -> bool {
        match self.max_handoffs {
            Some(m) if self.drain.is_none() => self
                .tries
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < m).then_some(t + 1)
                })
                .is_ok(),
            _ => {
                self.tries.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// A counted handoff that did not start after all.
    fn release_handoff(&self) {
        let _ = self
            .tries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1));
    }

    /// Hand connection `c` to `to` (`None`: the peers in turn) with its HTTP state; it is
    /// paused until the outcome. On an error it is served on here.
    fn leave(&mut self, node: &mut Node, c: ConnId, to: Option<SocketAddr>) -> Result<(), String> {
        if !self.handoffs_left() {
            return Err("this node's --max-handoffs is reached".into());
        }
        let conn = self.conns.get_mut(&c).ok_or("not served here")?;
        let st = conn
            .http
            .export()
            .map_err(|e| format!("exporting connection state: {e}"))?;
        if !self.reserve_handoff() {
            return Err("this node's --max-handoffs is reached".into());
        }
        let started = match to {
            Some(to) => node.start_handoff(c, to, st.encode()),
            None => node.start_handoff_any(c, st.encode()),
        };
        if let Err(e) = started {
            self.release_handoff();
            return Err(e.to_string());
        }
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.paused = true;
        }
        Ok(())
    }

    /// Serve connection `c` again from where it paused, with a fresh quota.
    fn resume(&mut self, c: ConnId) {
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.paused = false;
            conn.resumed = true;
            conn.sent_here = 0;
            // Its network events may have been consumed while it was paused.
            self.todo.push(c);
        }
    }

    /// Forget connection `c` (it left, or was lost), counting what it did here.
    fn forget(&mut self, c: ConnId) -> bool {
        match self.conns.remove(&c) {
            Some(conn) => {
                self.stats.http.add(conn.http.stats());
                self.buffered -= conn.queued;
                true
            }
            None => false,
        }
    }

    /// Hand the connection of `client` to the peer `to` (`dsctl handoff`): its report comes
    /// as an [`Event::HandedOff`], or an [`Event::KeptHere`] when it stays.
    pub fn request_handoff(
        &mut self,
        node: &mut Node,
        client: SocketAddrV6,
        to: SocketAddr,
    ) -> Result<(), String> {
        node.check_handoff_to(to)?;
        let Some((c, paused)) = self.conn_of(client) else {
            return Err(if node.moving(client) {
                format!("the connection of {client} is already leaving")
            } else {
                format!("no connection of {client} here")
            });
        };
        if paused {
            return Err(format!("the connection of {client} is already leaving"));
        }
        self.leave(node, c, Some(to))
    }

    /// Drain (`dsctl drain`): hand every connection to the peers, stop accepting, and report
    /// [`HttpServer::drained`] once none is left. With `rebind` (the DS address and the peer's
    /// care-of address, transparent mode) the home agent is first asked to send new clients
    /// to the peer, and the node stops accepting once it did (or after
    /// [`crate::drain::REBIND_WAIT`]), so that no client is refused. Returns the connections
    /// to move.
    pub fn start_drain(
        &mut self,
        node: &mut Node,
        rebind: Option<(Ipv6Addr, Ipv6Addr)>,
    ) -> Result<usize, String> {
        if self.drain.is_some() {
            return Err("already draining".into());
        }
        let has_peer = node.has_handoff() && !node.peers().is_empty();
        self.drain = Some(Draining::start_with(has_peer, rebind, |home, to| {
            node.rebind(home, to).map_err(|e| e.to_string())
        })?);
        tracing::info!(connections = self.conns.len(), "draining");
        Ok(self.conns.len())
    }

    /// The drain's progress, if the node drains.
    pub fn drain_info(&self, node: &Node) -> Option<DrainInfo> {
        self.drain
            .as_ref()
            .map(|d| d.info(self.conns.len(), node.is_accepting()))
    }

    /// True once a drain moved (or saw close) every connection and nothing is in flight:
    /// the node may exit.
    pub fn drained(&self, node: &Node) -> bool {
        self.drain.is_some() && !node.is_accepting() && self.conns.is_empty() && !node.handing_off()
    }

    /// One round of the drain: no more clients once the home agent answered the rebind, then
    /// every established connection handed off.
    fn drive_drain(&mut self, node: &mut Node) {
        let Some(d) = self.drain.as_mut() else {
            return;
        };
        if !d.may_stop_accepting() {
            return;
        }
        if node.is_accepting() {
            node.stop_accepting();
            tracing::info!("drain: no longer accepting");
        }
        let moving: Vec<ConnId> = self
            .conns
            .iter()
            // Connections closing already finish here; the others move.
            .filter(|(c, conn)| {
                !conn.paused
                    && d.may_try(conn.client)
                    && node.tcp_state(**c) == Some(TcpState::Established)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in moving {
            if let Err(e) = self.leave(node, c, None) {
                tracing::debug!(%c, "drain: not handed off now: {e}");
                if let (Some(d), Some(conn)) = (self.drain.as_mut(), self.conns.get(&c)) {
                    d.kept(conn.client);
                }
            }
        }
    }

    /// The node's new connections: clients, and connections handed over with their HTTP
    /// state.
    fn take_new(&mut self, node: &mut Node, now: Instant) {
        while let Some(a) = node.try_accept() {
            self.next_id += 1;
            let label = format!("c{}", self.next_id);
            if let Some(state) = a.state {
                let http = HttpConnState::decode(&state)
                    .map_err(|e| e.to_string())
                    .and_then(|st| {
                        HttpConn::import(self.root.clone(), label.clone(), st)
                            .map_err(|e| e.to_string())
                    });
                match http {
                    Ok(http) => {
                        tracing::info!(conn = %label, client = %a.peer, "connection adopted from peer");
                        self.stats.adopted += 1;
                        self.conns.insert(a.conn, Conn::new(http, a.peer, now));
                        self.todo.push(a.conn);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %a.peer, "a connection handed over cannot be served: {e}");
                        self.stats.aborted += 1;
                        let _ = node.abort(a.conn);
                    }
                }
                continue;
            }
            tracing::debug!(conn = %label, peer = %a.peer, "accepted");
            self.stats.accepted += 1;
            let max = self.config.max_connections;
            if self.conns.len() >= max.saturating_mul(2) {
                // Far over the limit: not even a response.
                self.stats.refused += 1;
                let _ = node.abort(a.conn);
                continue;
            }
            let mut http = HttpConn::new(self.root.clone(), label);
            if self.conns.len() >= max || self.buffered >= self.config.max_buffered {
                self.stats.refused += 1;
                http.refuse_overloaded();
            }
            self.todo.push(a.conn);
            self.conns.insert(a.conn, Conn::new(http, a.peer, now));
        }
    }

    /// Take note of the outcomes of handoffs, and keep the events for the caller.
    fn take_outcomes(&mut self, node: &mut Node) {
        let events: Vec<Event> = node.take_events().collect();
        for ev in events {
            match &ev {
                Event::HandedOff { conn, .. } => {
                    if self.forget(*conn) {
                        self.stats.handed_off += 1;
                    }
                }
                Event::KeptHere { conn, tried, cause } => {
                    if let Some(c) = self.conns.get(conn) {
                        if *tried {
                            tracing::warn!(client = %c.client, "connection kept here: {cause}");
                            // A drain gives up on a connection after a few failed handoffs,
                            // not after rounds in which none could start (a back-off).
                            if let Some(d) = self.drain.as_mut() {
                                d.kept(c.client);
                            }
                        } else {
                            tracing::debug!(client = %c.client, "connection stays: {cause}");
                            // Only handoffs that started count against --max-handoffs.
                            self.release_handoff();
                        }
                    }
                    self.resume(*conn);
                }
                Event::Lost { conn, .. } => {
                    if self.forget(*conn) {
                        self.stats.aborted += 1;
                    }
                }
                Event::Rebound { ok, detail } => {
                    if let Some(d) = self.drain.as_mut() {
                        d.rebound(*ok, detail);
                    }
                }
                Event::Declined { .. } | Event::Bound { .. } | Event::SteerRefused { .. } => {}
            }
            self.events.push(ev);
        }
    }

    /// Take new connections and handoff outcomes, and make progress on every connection
    /// with news (all of them at each timeout sweep). Call after each [`Node::poll`].
    pub fn poll(&mut self, node: &mut Node) {
        let now = Instant::now();
        self.take_new(node, now);
        self.take_outcomes(node);
        // Only connections with network events (or new ones), plus a periodic sweep of all of
        // them for timeouts: the per-step cost follows activity, not the connection count.
        let sweep = self.last_sweep.is_none_or(|t| since(now, t) >= SWEEP_EVERY);
        let mut todo = std::mem::take(&mut self.todo);
        if sweep {
            self.last_sweep = Some(now);
            // A quiet server closes its expired cached files too.
            self.root.expire_cached();
            node.take_ready(&mut todo);
            todo.clear();
            todo.extend(self.conns.keys().copied());
        } else {
            node.take_ready(&mut todo);
        }
        // Once each: a connection both ready and resumed must not be served (and stopped at
        // its quota) twice in a round.
        todo.sort_unstable();
        todo.dedup();
        let ctx = Ctx {
            now,
            config: &self.config,
            quota: self.quota,
        };
        let (mut leaving, mut gone) = (Vec::new(), Vec::new());
        for &c in &todo {
            let Some(conn) = self.conns.get_mut(&c) else {
                continue;
            };
            if conn.paused {
                continue;
            }
            let verdict = service(
                node,
                c,
                conn,
                &ctx,
                &mut self.buf,
                &mut self.stats,
                &mut self.buffered,
            );
            match verdict {
                Verdict::Keep => {}
                Verdict::QuotaReached => {
                    // Served no more until its handoff's outcome (or `leave` failing).
                    conn.paused = true;
                    leaving.push(c);
                }
                Verdict::Closed => {
                    let _ = node.close(c);
                    self.stats.closed += 1;
                    gone.push(c);
                }
                Verdict::Abort => {
                    let _ = node.abort(c);
                    self.stats.aborted += 1;
                    gone.push(c);
                }
            }
        }
        todo.clear();
        self.todo = todo;
        for c in gone {
            self.forget(c);
        }
        for c in leaving {
            if let Err(e) = self.leave(node, c, None) {
                // Served on here: no more pauses once this node may start no more handoffs.
                tracing::debug!(%c, "connection kept here: {e}");
                if !self.handoffs_left() {
                    self.quota = None;
                }
                self.resume(c);
            }
        }
        // After serving: a connection a drain could not hand off in the last round (its peer
        // backs off) is served once a round in between, not starved.
        self.drive_drain(node);
    }

    /// Drop every connection (each open one is reset) and stop accepting.
    pub fn shutdown(&mut self, node: &mut Node) {
        node.stop_accepting();
        self.buffered = 0;
        for (c, conn) in self.conns.drain() {
            self.stats.http.add(conn.http.stats());
            match node.tcp_state(c) {
                None | Some(TcpState::Closed) | Some(TcpState::TimeWait) => self.stats.closed += 1,
                Some(_) => self.stats.aborted += 1,
            }
            let _ = node.abort(c);
        }
    }
}

/// One round of work on one connection.
fn service(
    node: &mut Node,
    c: ConnId,
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    buf: &mut [u8],
    stats: &mut ServerStats,
    buffered: &mut usize,
) -> Verdict {
    let (now, config) = (ctx.now, ctx.config);
    // What the send buffer holds now (acknowledged data left it since the last look): the
    // client took something, which counts as progress even when the node's budget holds
    // this connection's next write back.
    let q = node.send_queued(c);
    if q < conn.queued {
        conn.clock.activity(now);
    }
    *buffered = (*buffered + q).saturating_sub(conn.queued);
    conn.queued = q;
    if std::mem::take(&mut conn.resumed) {
        conn.clock.activity(now);
    }
    match node.tcp_state(c) {
        // Reset by the peer.
        None | Some(TcpState::Closed) => return Verdict::Abort,
        Some(TcpState::TimeWait) => return Verdict::Closed,
        Some(_) => {}
    }

    // Receive.
    while conn.http.wants_input() {
        let room = conn.http.input_room().min(buf.len());
        if room == 0 {
            break;
        }
        match node.read(c, &mut buf[..room]) {
            Ok(0) => {
                conn.http.feed_eof();
                conn.clock.activity(now);
            }
            Ok(n) => {
                conn.http.feed(&buf[..n]);
                conn.clock.activity(now);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::debug!("receive failed: {e}");
                return Verdict::Abort;
            }
        }
    }

    // A request head must arrive whole in time, however it trickles in (its 408 leaves
    // below).
    if conn.clock.head_deadline(now, since, &mut conn.http, config) {
        stats.header_timeouts += 1;
    }

    // Send as much as the send buffer (and the handoff quota) takes.
    loop {
        if node.send_space(c) == 0 {
            break;
        }
        let left = ctx.quota.map(|q| q.saturating_sub(conn.sent_here));
        match conn.http.poll_transmit() {
            Ok([]) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("aborting a response: {e}");
                return Verdict::Abort;
            }
        }
        // The node's total: at the limit no file body goes out until clients acknowledge
        // (heads and error responses, a few hundred bytes, still do).
        if *buffered >= config.max_buffered && conn.http.sending_body() {
            break;
        }
        // The same bytes again (poll_transmit gives what is pending until `advance`).
        let chunk = match conn.http.poll_transmit() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("aborting a response: {e}");
                return Verdict::Abort;
            }
        };
        // Never hand TCP more than the quota allows, so the pause point is byte-exact.
        let cap = left.map_or(chunk.len(), |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(chunk.len())
        });
        if cap == 0 {
            return Verdict::QuotaReached;
        }
        match node.write(c, &chunk[..cap]) {
            Ok(n) => {
                conn.http.advance(n);
                conn.sent_here += n as u64;
                conn.queued += n;
                *buffered += n;
                conn.clock.activity(now);
                if ctx.quota.is_some_and(|q| conn.sent_here >= q) {
                    return Verdict::QuotaReached;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::debug!("send failed: {e}");
                return Verdict::Abort;
            }
        }
    }

    match conn.clock.after_send(now, since, &mut conn.http, config) {
        Expiry::None => {}
        Expiry::Idle => stats.idle_closed += 1,
        Expiry::Stalled => {
            stats.stalled += 1;
            tracing::debug!("aborting a response that made no progress");
            return Verdict::Abort;
        }
    }

    // Close once the last response is out (a FIN follows it; the stack finishes the
    // connection on its own).
    if conn.http.is_finished() {
        return Verdict::Closed;
    }
    Verdict::Keep
}
