//! The HTTP content service on top of a `ds-stack` [`Interface`].
//!
//! [`HttpServer::poll`] is called between [`ds_stack::runner::Runner::step`]s: it accepts new
//! connections, moves received bytes into each connection's [`HttpConn`], writes as much of the
//! responses as the send buffers take, closes connections whose work is done and releases those
//! that are closed. It never blocks and owns no I/O besides reading files.
//!
//! For a handoff, a connection can be paused (by hand, or automatically once it has sent a
//! quota of response bytes, see [`HttpServer::set_handoff_quota`]), detached with its HTTP
//! state ([`HttpServer::detach`]) while its TCP state is frozen by the caller, and continued
//! on another node, or back here after a failed handoff, with [`HttpServer::adopt`].

use crate::http::{DocRoot, HttpConn, HttpConnState, HttpStats};
use ds_stack::{Duration, Error, Instant, Interface, ListenHandle, TcpHandle, TcpState};
use std::collections::HashMap;
use std::net::SocketAddrV6;
use std::path::Path;
use std::sync::Arc;

/// Connection limits of the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen backlog (connections handshaking or waiting for accept).
    pub backlog: usize,
    /// A persistent connection with no request in progress is closed after this long idle.
    pub idle_timeout: Duration,
    /// A connection still not closed this long after our FIN is aborted.
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
}

impl Default for ServerConfig {
    /// Backlog 128, idle 60 s, linger 30 s, header 10 s, stall 60 s, 10,000 connections,
    /// 512 MiB buffered in all.
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
    /// Connections detached for a handoff ([`HttpServer::detach`]).
    pub handed_off: u64,
    /// Connections continued here after a handoff ([`HttpServer::adopt`]).
    pub adopted: u64,
    /// Request and byte counters, summed over all connections.
    pub http: HttpStats,
}

struct Conn {
    http: HttpConn,
    /// When it was accepted or adopted here.
    since: Instant,
    clock: ConnClock<Instant>,
    /// When we sent FIN.
    fin_at: Option<Instant>,
    /// Response bytes handed to TCP on this node since accept, adopt or resume (the quota
    /// counter).
    sent_here: u64,
    /// Not serviced at all until resumed or detached.
    paused: bool,
    /// Resumed since last serviced: its idle clock restarts (`resume` has no time).
    resumed: bool,
    /// Its TCP send queue as last seen here (an upper bound: it only shrinks between looks).
    queued: usize,
}

impl Conn {
    fn new(http: HttpConn, now: Instant) -> Self {
        Conn {
            http,
            since: now,
            clock: ConnClock::new(now),
            fin_at: None,
            sent_here: 0,
            paused: false,
            resumed: false,
            queued: 0,
        }
    }
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
    /// Reached the handoff quota: now paused.
    QuotaReached,
    /// Closed cleanly: forget the handle.
    Closed,
    /// Broken: forget the handle (resets it if still open).
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

/// An HTTP/1.1 server listening on one address of an interface.
pub struct HttpServer {
    /// `None` once the server stopped accepting ([`HttpServer::stop_accepting`]).
    listener: Option<ListenHandle>,
    root: Arc<DocRoot>,
    config: ServerConfig,
    conns: HashMap<TcpHandle, Conn>,
    stats: ServerStats,
    buf: Vec<u8>,
    next_id: u64,
    /// Handles to service this round (ready ones and new ones).
    todo: Vec<TcpHandle>,
    /// When every connection was last looked at for idle and linger timeouts.
    last_sweep: Option<Instant>,
    /// Response bytes a connection may send on this node before it is paused.
    quota: Option<u64>,
    /// Connections paused by the quota, not yet reported by `take_handoff_ready`.
    handoff_ready: Vec<TcpHandle>,
    /// The sum of the connections' `queued`: what the send buffers hold at most.
    buffered: usize,
}

/// How often every connection is checked for timeouts; between sweeps only connections
/// with network events are serviced.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl HttpServer {
    /// Listen on `local` and serve files below `root` (a directory).
    pub fn listen(
        iface: &mut Interface,
        local: SocketAddrV6,
        root: &Path,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        if !root.is_dir() {
            anyhow::bail!("document root {} is not a directory", root.display());
        }
        let root = DocRoot::open(root)
            .map_err(|e| anyhow::anyhow!("document root {}: {e}", root.display()))?;
        let listener = iface
            .tcp_listen(local, config.backlog)
            .map_err(|e| anyhow::anyhow!("cannot listen on {local}: {e:?}"))?;
        Ok(HttpServer {
            listener: Some(listener),
            root,
            config,
            conns: HashMap::new(),
            stats: ServerStats::default(),
            buf: vec![0; 16 * 1024],
            next_id: 0,
            todo: Vec::new(),
            last_sweep: None,
            quota: None,
            handoff_ready: Vec::new(),
            buffered: 0,
        })
    }

    /// Per-connection quota: a connection sends at most this many response bytes on this node
    /// (counted from accept, adopt or resume), then it is paused and reported by
    /// [`HttpServer::take_handoff_ready`]. `None` = no quota (the default).
    ///
    /// Exact: a connection is never handed more than its remaining quota, so exactly `bytes`
    /// response bytes (heads and bodies) go out before the pause.
    pub fn set_handoff_quota(&mut self, bytes: Option<u64>) {
        self.quota = bytes;
    }

    /// Connections that reached their quota since the last call (each once). Paused
    /// connections are not serviced at all (no receive, no send, no timeouts, no close) until
    /// detached or resumed.
    pub fn take_handoff_ready(&mut self) -> Vec<TcpHandle> {
        std::mem::take(&mut self.handoff_ready)
    }

    /// Stop servicing connection `h` (its TCP connection keeps running in the stack); false
    /// if `h` is not ours.
    pub fn pause(&mut self, h: TcpHandle) -> bool {
        match self.conns.get_mut(&h) {
            Some(c) => {
                c.paused = true;
                true
            }
            None => false,
        }
    }

    /// Whether connections wait to be serviced (adopted, resumed or newly accepted ones) that
    /// no network event will announce: poll again without waiting.
    pub fn has_work(&self) -> bool {
        !self.todo.is_empty()
    }

    /// Service connection `h` again and reset its quota counter; false if `h` is not ours.
    pub fn resume(&mut self, h: TcpHandle) -> bool {
        let Some(c) = self.conns.get_mut(&h) else {
            return false;
        };
        c.paused = false;
        c.resumed = true;
        c.sent_here = 0;
        self.handoff_ready.retain(|&r| r != h);
        // Its network events may have been consumed while it was paused.
        self.todo.push(h);
        true
    }

    /// Remove connection `h` from the server without touching its TCP connection (the caller
    /// freezes it) and return its HTTP state, to continue with [`HttpServer::adopt`] here or
    /// on another node. `None` if `h` is not ours; on an error the connection stays here.
    ///
    /// Its counters so far are added to this server's (its bytes were sent here); the adopting
    /// side starts from zero, so nothing is counted twice. Meant for connections still sending
    /// (e.g. paused by the quota): whether our FIN went out already is not part of the state.
    pub fn detach(&mut self, h: TcpHandle) -> Option<anyhow::Result<HttpConnState>> {
        let conn = self.conns.get(&h)?;
        let st = match conn.http.export() {
            Ok(st) => st,
            Err(e) => return Some(Err(anyhow::anyhow!("exporting connection state: {e}"))),
        };
        if let Some(conn) = self.conns.remove(&h) {
            self.stats.http.add(conn.http.stats());
            self.buffered -= conn.queued;
        }
        self.stats.handed_off += 1;
        self.handoff_ready.retain(|&r| r != h);
        self.todo.retain(|&r| r != h);
        Some(Ok(st))
    }

    /// Continue a connection that was thawed here as `h` (after a handoff, or back after a
    /// failed one): its HTTP state continues, its quota counter starts at 0.
    pub fn adopt(&mut self, h: TcpHandle, st: HttpConnState, now: Instant) -> anyhow::Result<()> {
        if self.conns.contains_key(&h) {
            anyhow::bail!("connection {h:?} is already served here");
        }
        self.next_id += 1;
        let label = format!("c{}", self.next_id);
        let http = HttpConn::import(self.root.clone(), label.clone(), st)
            .map_err(|e| anyhow::anyhow!("importing connection state: {e}"))?;
        tracing::debug!(conn = %label, "adopted");
        self.stats.adopted += 1;
        self.conns.insert(h, Conn::new(http, now));
        self.todo.push(h);
        Ok(())
    }

    /// Counters so far (connections still open are not yet in `http`).
    pub fn stats(&self) -> ServerStats {
        let mut s = self.stats;
        for c in self.conns.values() {
            s.http.add(c.http.stats());
        }
        s
    }

    /// The open connections, ordered by client address.
    pub fn conn_info(&self, iface: &Interface, now: Instant) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self
            .conns
            .iter()
            .filter_map(|(h, c)| {
                let (local, client) = iface.tcp_endpoints(*h)?;
                Some(ConnInfo {
                    client: client.to_string(),
                    local: local.to_string(),
                    state: format!("{:?}", iface.tcp_state(*h)?),
                    sent_bytes: c.sent_here,
                    age_ms: now.saturating_since(c.since).as_millis() as u64,
                })
            })
            .collect();
        v.sort_by(|a, b| a.client.cmp(&b.client));
        v
    }

    /// The connection of `client`, if it is served here, and whether it is paused (leaving).
    pub fn handle_of(&self, iface: &Interface, client: SocketAddrV6) -> Option<(TcpHandle, bool)> {
        self.conns.iter().find_map(|(h, c)| {
            let (_, remote) = iface.tcp_endpoints(*h)?;
            (remote == client).then_some((*h, c.paused))
        })
    }

    /// Stop accepting clients: the listener goes (connections not yet accepted are reset,
    /// new ones refused); open connections are served on.
    pub fn stop_accepting(&mut self, iface: &mut Interface) {
        if let Some(l) = self.listener.take() {
            iface.tcp_unlisten(l);
        }
    }

    /// Whether the server still accepts clients.
    pub fn is_accepting(&self) -> bool {
        self.listener.is_some()
    }

    /// The connections served now (not paused).
    pub fn active_handles(&self) -> Vec<TcpHandle> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.paused)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accept new connections and make progress on every open one.
    pub fn poll(&mut self, iface: &mut Interface, now: Instant) {
        while let Some(h) = self.listener.and_then(|l| iface.tcp_accept(l)) {
            self.next_id += 1;
            let label = format!("c{}", self.next_id);
            match iface.tcp_endpoints(h) {
                Some((_, peer)) => tracing::debug!(conn = %label, %peer, "accepted"),
                None => tracing::debug!(conn = %label, "accepted"),
            }
            self.stats.accepted += 1;
            let mut http = HttpConn::new(self.root.clone(), label);
            let max = self.config.max_connections;
            if self.conns.len() >= max.saturating_mul(2) {
                // Far over the limit: not even a response.
                self.stats.refused += 1;
                let _ = iface.tcp_abort(h);
                iface.tcp_release(h);
                continue;
            }
            if self.conns.len() >= max || self.buffered >= self.config.max_buffered {
                self.stats.refused += 1;
                http.refuse_overloaded();
            }
            self.todo.push(h);
            self.conns.insert(h, Conn::new(http, now));
        }
        // Only connections with network events (or new ones), plus a periodic sweep of all of
        // them for timeouts: the per-step cost follows activity, not the connection count.
        let sweep = self
            .last_sweep
            .is_none_or(|t| now.saturating_since(t) >= SWEEP_EVERY);
        let mut todo = std::mem::take(&mut self.todo);
        if sweep {
            self.last_sweep = Some(now);
            todo.clear();
            todo.extend(self.conns.keys().copied());
            iface.tcp_take_ready(&mut Vec::new());
        } else {
            iface.tcp_take_ready(&mut todo);
        }
        let mut gone = Vec::new();
        let ctx = Ctx {
            now,
            config: &self.config,
            quota: self.quota,
        };
        for &h in &todo {
            let Some(conn) = self.conns.get_mut(&h) else {
                continue;
            };
            if conn.paused {
                continue;
            }
            match service(
                iface,
                h,
                conn,
                &ctx,
                &mut self.buf,
                &mut self.stats,
                &mut self.buffered,
            ) {
                Verdict::Keep => {}
                Verdict::QuotaReached => {
                    conn.paused = true;
                    if !self.handoff_ready.contains(&h) {
                        self.handoff_ready.push(h);
                    }
                }
                Verdict::Closed => {
                    self.stats.closed += 1;
                    gone.push(h);
                }
                Verdict::Abort => {
                    self.stats.aborted += 1;
                    gone.push(h);
                }
            }
        }
        todo.clear();
        self.todo = todo;
        for h in gone {
            if let Some(conn) = self.conns.remove(&h) {
                self.stats.http.add(conn.http.stats());
                self.buffered -= conn.queued;
            }
            iface.tcp_release(h);
        }
    }

    /// Drop every connection (each open one is reset) and stop accepting.
    pub fn shutdown(&mut self, iface: &mut Interface) {
        self.buffered = 0;
        for (h, conn) in self.conns.drain() {
            self.stats.http.add(conn.http.stats());
            match iface.tcp_state(h) {
                None | Some(TcpState::Closed) | Some(TcpState::TimeWait) => self.stats.closed += 1,
                Some(_) => self.stats.aborted += 1,
            }
            iface.tcp_release(h);
        }
    }
}

/// One round of work on one connection.
fn service(
    iface: &mut Interface,
    h: TcpHandle,
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
    let q = iface.tcp_send_queued(h);
    if q < conn.queued {
        conn.clock.activity(now);
    }
    *buffered = (*buffered + q).saturating_sub(conn.queued);
    conn.queued = q;
    if std::mem::take(&mut conn.resumed) {
        conn.clock.activity(now);
    }
    match iface.tcp_state(h) {
        None | Some(TcpState::Closed) => {
            // Reset by the peer, or fully closed.
            return if conn.fin_at.is_some() {
                Verdict::Closed
            } else {
                Verdict::Abort
            };
        }
        Some(TcpState::TimeWait) => return Verdict::Closed,
        Some(_) => {}
    }

    // Receive.
    while conn.http.wants_input() {
        let room = conn.http.input_room().min(buf.len());
        match iface.tcp_recv(h, &mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => {
                conn.http.feed(&buf[..n]);
                conn.clock.activity(now);
            }
            Err(Error::Eof) => {
                conn.http.feed_eof();
                conn.clock.activity(now);
            }
            Err(e) => {
                tracing::debug!("receive failed: {e:?}");
                return Verdict::Abort;
            }
        }
    }

    // A request head must arrive whole in time, however it trickles in (its 408 leaves
    // below).
    if conn
        .clock
        .head_deadline(now, Instant::saturating_since, &mut conn.http, config)
    {
        stats.header_timeouts += 1;
    }

    // Send as much as the send buffer (and the handoff quota) takes.
    loop {
        if iface.tcp_send_space(h) == 0 {
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
        match iface.tcp_send(h, &chunk[..cap]) {
            Ok(0) => break,
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
            Err(e) => {
                tracing::debug!("send failed: {e:?}");
                return Verdict::Abort;
            }
        }
    }

    match conn
        .clock
        .after_send(now, Instant::saturating_since, &mut conn.http, config)
    {
        Expiry::None => {}
        Expiry::Idle => stats.idle_closed += 1,
        Expiry::Stalled => {
            stats.stalled += 1;
            tracing::debug!("aborting a response that made no progress");
            return Verdict::Abort;
        }
    }

    // Close our half once the last response is out.
    if conn.fin_at.is_none() && conn.http.is_finished() {
        if let Err(e) = iface.tcp_close(h) {
            tracing::debug!("close failed: {e:?}");
            return Verdict::Abort;
        }
        conn.fin_at = Some(now);
    }
    if let Some(t) = conn.fin_at {
        if now.saturating_since(t) >= config.linger {
            return Verdict::Abort;
        }
    }
    Verdict::Keep
}
