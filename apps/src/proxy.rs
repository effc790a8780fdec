//! Proxy mode (the seed's Gecko proxy): an unmodified server becomes a distributed server.
//!
//! The node terminates the clients of the DS address on its userspace stack
//! ([`dserver::Node`]) and relays each connection to a backend on its own machine (kernel TCP
//! to a local address: nginx, `python3 -m http.server`, anything that speaks TCP). Which node
//! serves a client is the distribution policy's choice, made on the first request's head:
//! when it names another node, the connection is handed there with the bytes read so far as
//! its state, and that node's proxy opens its own backend connection and sends them first.
//!
//! Everything is non-blocking: one loop waits on the node's readiness descriptor and the
//! backend sockets together. Each relay direction buffers at most [`BUF`] bytes; a request
//! head longer than [`MAX_HEAD`] is refused.
//!
//! A drain ([`Proxy::start_drain`], `dsctl drain`) accepts no new client and hands every
//! connection to the peers: one still reading its first request at once, a keep-alive one
//! when it sits between two exchanges (its HTTP framing, [`crate::exchange`], says every
//! request forwarded was answered whole), its backend connection closed here and the
//! acceptor's proxy opening its own for the next request. A connection that cannot be framed
//! (a body until close, an upgrade) is served here to its end.

use crate::drain::{DrainInfo, Draining};
use crate::exchange::Exchange;
use dserver::{ConnId, Event, Node, Placement};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// The longest request head read before the placement (then the client gets a 431).
pub const MAX_HEAD: usize = 16 * 1024;
/// Bytes buffered per direction of a relay.
pub const BUF: usize = 64 * 1024;

/// Bounds on what a client may hold of the proxy (the HTTP server's [`crate::ServerConfig`]
/// defaults): a relay still reading its first request head gets 408 and is closed at the
/// header timeout; a placed one where nothing moved either way for the idle timeout is closed
/// (idle between requests) or reset (bytes stuck: its client or backend is gone or stalled);
/// clients beyond `max_relays` are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// From accept to the first request head read whole.
    pub header_timeout: Duration,
    /// Without a byte moved on a placed relay.
    pub idle_timeout: Duration,
    /// Relays at once; a client beyond is reset at once.
    pub max_relays: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        let d = crate::server::ServerConfig::default();
        ProxyLimits {
            header_timeout: d.header_timeout,
            idle_timeout: d.idle_timeout,
            max_relays: d.max_connections,
        }
    }
}

/// What a relay's clock says ([`Relay::expiry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayExpiry {
    /// The first request head did not arrive whole in time: 408, close.
    Head,
    /// Nothing moved for the idle timeout: close, or reset with bytes stuck.
    Idle,
}

/// How often the relays' clocks are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Counters of the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyStats {
    /// New clients accepted here.
    pub accepted: u64,
    /// Connections relayed to the backend here (placed here, or handed over to this node).
    pub relayed: u64,
    /// Connections handed to another node by the policy.
    pub handed_off: u64,
    /// Connections that came from another node.
    pub arrived: u64,
    /// Connections placed elsewhere that stayed (the handoff failed).
    pub kept: u64,
    /// Later requests of keep-alive connections placed on another node (`per_request`).
    pub replaced: u64,
    /// Backend connections that failed.
    pub backend_errors: u64,
    /// Request heads too long or malformed.
    pub bad_requests: u64,
    /// Connections handed to a peer by a drain.
    pub drained: u64,
    /// Clients whose first request head did not arrive within the header timeout (408).
    pub head_timeouts: u64,
    /// Relays closed (or, with bytes stuck, reset) after the idle timeout without a byte
    /// moved.
    pub idle_timeouts: u64,
    /// Clients reset at once: `max_relays` were open.
    pub refused: u64,
}

/// One client connection.
struct Relay {
    /// Bytes read from the client and not yet written to the backend (before the placement:
    /// the request head so far).
    up: Vec<u8>,
    /// Bytes read from the backend and not yet written to the client.
    down: Vec<u8>,
    backend: Option<TcpStream>,
    /// Waiting for a handoff's outcome (the state sent is `up`).
    leaving: bool,
    client_eof: bool,
    backend_eof: bool,
    /// Bytes relayed to the client here.
    sent: u64,
    /// When it was accepted or arrived here.
    since: std::time::Instant,
    /// When a byte last moved either way (or it was accepted).
    moved: std::time::Instant,
    /// Its HTTP exchanges with the backend (where one ends and the next may begin).
    ex: Exchange,
}

impl Relay {
    /// A relay accepted (or arrived) at `now`, with the client's bytes `up` read so far.
    fn new(up: Vec<u8>, now: std::time::Instant) -> Self {
        Relay {
            up,
            down: Vec::new(),
            backend: None,
            leaving: false,
            client_eof: false,
            backend_eof: false,
            sent: 0,
            since: now,
            moved: now,
            ex: Exchange::new(),
        }
    }

    /// Whether `limits` end this relay at `now`: one still reading its first request head
    /// (not placed, not leaving) after the header timeout; a placed one where nothing moved
    /// for the idle timeout. One being handed off is the handoff's to end.
    fn expiry(&self, now: std::time::Instant, limits: &ProxyLimits) -> Option<RelayExpiry> {
        if self.leaving {
            return None;
        }
        let placed = self.backend.is_some() || self.backend_eof;
        if !placed {
            return (now.saturating_duration_since(self.since) >= limits.header_timeout)
                .then_some(RelayExpiry::Head);
        }
        (now.saturating_duration_since(self.moved) >= limits.idle_timeout)
            .then_some(RelayExpiry::Idle)
    }
}

/// The proxy: a node, a backend address, and the relays.
pub struct Proxy {
    node: Node,
    backend: SocketAddr,
    relays: HashMap<ConnId, Relay>,
    stats: ProxyStats,
    ready: Vec<ConnId>,
    poll: ds_stack::device::PollSet,
    /// The relays whose backends are in `poll`, in order (after the node's descriptor).
    polled: Vec<ConnId>,
    /// Relays with request bytes their backend did not take yet (it may still be connecting,
    /// which a wait for readability does not see).
    stalled: Vec<ConnId>,
    /// A drain in progress: no new clients (once the home agent sends them to the peer),
    /// every connection to a peer.
    drain: Option<Draining>,
    /// Whether new clients are accepted.
    accepting: bool,
    /// The peer the drain's next connection goes to (round robin).
    drain_next: usize,
    /// Place every later request of a keep-alive connection anew (between two exchanges).
    per_request: bool,
    limits: ProxyLimits,
    last_sweep: std::time::Instant,
}

impl Proxy {
    /// Relay the clients of `node` to `backend`.
    pub fn new(node: Node, backend: SocketAddr) -> Self {
        Proxy {
            node,
            backend,
            relays: HashMap::new(),
            stats: ProxyStats::default(),
            ready: Vec::new(),
            poll: ds_stack::device::PollSet::default(),
            polled: Vec::new(),
            stalled: Vec::new(),
            drain: None,
            accepting: true,
            drain_next: 0,
            per_request: false,
            limits: ProxyLimits::default(),
            last_sweep: std::time::Instant::now(),
        }
    }

    /// Set the bounds on what clients may hold ([`ProxyLimits`]; the default is the HTTP
    /// server's).
    pub fn set_limits(&mut self, limits: ProxyLimits) {
        self.limits = limits;
    }

    /// End the relays whose clocks ran out ([`Relay::expiry`]), at most every
    /// [`SWEEP_EVERY`].
    fn sweep(&mut self, now: std::time::Instant) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let limits = self.limits;
        let expired: Vec<(ConnId, RelayExpiry)> = self
            .relays
            .iter()
            .filter_map(|(c, r)| r.expiry(now, &limits).map(|e| (*c, e)))
            .collect();
        for (c, e) in expired {
            // Its backend connection closes with it.
            let Some(r) = self.relays.remove(&c) else {
                continue;
            };
            match e {
                RelayExpiry::Head => {
                    self.stats.head_timeouts += 1;
                    let _ = self.node.write(
                        c,
                        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                    let _ = self.node.close(c);
                }
                RelayExpiry::Idle => {
                    self.stats.idle_timeouts += 1;
                    if r.up.is_empty() && r.down.is_empty() {
                        // An idle keep-alive connection: closed as the HTTP server closes one
                        // (RFC 9112 §9.5).
                        let _ = self.node.close(c);
                    } else {
                        // Bytes stuck one way or the other: a client or backend gone quiet.
                        let _ = self.node.abort(c);
                    }
                }
            }
        }
    }

    /// Ask the policy again for every later request of a keep-alive connection: between two
    /// exchanges, with the next request's head read whole, the connection moves to the node
    /// the policy names, with that request (its backend connection here is closed).
    pub fn set_per_request(&mut self, on: bool) {
        self.per_request = on;
    }

    /// Start a drain: the home agent is asked to send new clients to the peer (`rebind`: the
    /// DS address and the peer's care-of address), then no new client is accepted, and every
    /// connection goes to the peers, each at its next boundary (see the module
    /// documentation). Returns how many are open.
    pub fn start_drain(&mut self, rebind: Option<(Ipv6Addr, Ipv6Addr)>) -> Result<usize, String> {
        if self.drain.is_some() {
            return Err("already draining".into());
        }
        let has_peer = !self.node.peers().is_empty();
        let node = &mut self.node;
        self.drain = Some(Draining::start_with(has_peer, rebind, |home, to| {
            node.rebind(home, to).map_err(|e| e.to_string())
        })?);
        tracing::info!(
            open = self.relays.len(),
            "drain: every connection goes to the peers"
        );
        Ok(self.relays.len())
    }

    /// Whether a drain is on.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The drain's progress, for `dsctl status`.
    pub fn drain_info(&self) -> Option<DrainInfo> {
        self.drain.as_ref().map(|d| {
            let mut i = d.info(self.relays.len(), self.accepting);
            // Connections that cannot be framed also finish here.
            i.staying += self.pinned().len();
            i
        })
    }

    /// A drain is on, no connection is left here and nothing is in flight: the node may
    /// exit.
    pub fn drained(&self) -> bool {
        self.drain.is_some()
            && !self.accepting
            && self.relays.is_empty()
            && !self.node.handing_off()
    }

    /// Connections a drain cannot move (they stay to their end), and why, for `dsctl status`.
    pub fn pinned(&self) -> Vec<&'static str> {
        self.relays.values().filter_map(|r| r.ex.pinned()).collect()
    }

    /// The peer the drain's next connection goes to.
    fn next_peer(&mut self) -> Option<SocketAddr> {
        let peers = self.node.peers();
        let to = peers.get(self.drain_next % peers.len().max(1)).copied();
        self.drain_next = self.drain_next.wrapping_add(1);
        to
    }

    /// Draining: hand `c` to a peer if it is at a boundary (reading its first request, or
    /// between two exchanges), unless its handoffs failed too often (it finishes here).
    fn drain_one(&mut self, c: ConnId) {
        let Some(r) = self.relays.get(&c) else {
            return;
        };
        let tries_left = match (self.node.peer_addr(c), &self.drain) {
            (Some(client), Some(d)) => d.may_try(client),
            _ => false,
        };
        if !tries_left || self.node.peers().is_empty() {
            // It finishes here: one parked with its first request read is served now.
            self.serve_here(c);
            return;
        }
        let placing = r.backend.is_none() && !r.backend_eof;
        let between = r.backend.is_some()
            && !r.backend_eof
            && !r.client_eof
            && r.up.is_empty()
            && r.down.is_empty()
            && r.ex.idle();
        if r.leaving || !(placing || between) {
            return;
        }
        let state = r.up.clone();
        let Some(to) = self.next_peer() else {
            return;
        };
        match self.node.start_handoff(c, to, state) {
            Ok(()) => {
                if let Some(r) = self.relays.get_mut(&c) {
                    r.leaving = true;
                    // The acceptor's proxy opens its own backend connection.
                    r.backend = None;
                }
                self.stats.drained += 1;
            }
            Err(e) => {
                tracing::warn!(%c, "drain: handoff to {to} not started: {e}");
                self.serve_here(c);
            }
        }
    }

    /// A connection parked by a drain with its first request read, that cannot move: relay
    /// it to the backend here.
    fn serve_here(&mut self, c: ConnId) {
        let Some(mut r) = self.relays.remove(&c) else {
            return;
        };
        if !r.leaving && r.backend.is_none() && !r.backend_eof && head_end(&r.up).is_some() {
            self.open_backend(&mut r);
            self.ready.push(c);
        }
        self.relays.insert(c, r);
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, for other services on it (the UDP echo).
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// Open relays.
    pub fn connections(&self) -> usize {
        self.relays.len()
    }

    /// The open client connections, for `dsctl conns`: the state is `placing` (reading the
    /// first request), `leaving` (being handed off) or `relaying`.
    pub fn conn_info(&self) -> Vec<crate::server::ConnInfo> {
        let mut v: Vec<_> = self
            .relays
            .iter()
            .map(|(id, r)| crate::server::ConnInfo {
                client: self
                    .node
                    .peer_addr(*id)
                    .map_or_else(String::new, |p| p.to_string()),
                local: String::new(),
                state: if r.leaving {
                    "leaving"
                } else if r.backend.is_some() || r.backend_eof {
                    "relaying"
                } else {
                    "placing"
                }
                .into(),
                sent_bytes: r.sent,
                age_ms: r.since.elapsed().as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.client.cmp(&b.client));
        v
    }

    /// One round: wait up to `max_wait` (also for the `extra` descriptors), then move bytes.
    pub fn step(&mut self, max_wait: Duration, extra: &[RawFd]) -> Result<(), dserver::Error> {
        let fd = self.node.readiness_fd()?;
        self.poll.clear();
        self.poll.add(fd);
        // Backends with room for what they send (a full relay waits for its client, so its
        // readable backend must not end every wait at once).
        self.polled.clear();
        for (c, r) in &self.relays {
            if let Some(b) = r
                .backend
                .as_ref()
                .filter(|_| !r.backend_eof && r.down.len() < BUF)
            {
                self.poll.add(b.as_raw_fd());
                self.polled.push(*c);
            }
        }
        for fd in extra {
            self.poll.add(*fd);
        }
        let wait = if self.stalled.is_empty() {
            self.node
                .poll_timeout()
                .map_or(max_wait, |t| t.min(max_wait))
        } else {
            // A relay waits for its backend's connection to write the request (readability
            // does not show it): look again within a millisecond.
            max_wait.min(Duration::from_millis(1))
        };
        // A failed wait (EINTR) only ends the wait early.
        let _ = self.poll.wait(Some(wait));
        // Relays whose backend has news (positions 1.. of the set are `polled`).
        let n = self.polled.len();
        self.ready.extend(
            self.poll
                .ready()
                .filter(|i| (1..=n).contains(i))
                .map(|i| self.polled[i - 1]),
        );
        self.ready.append(&mut self.stalled);
        self.node.poll(Duration::ZERO)?;
        while let Some(a) = self.node.try_accept() {
            let arrived = a.state.is_some();
            if self.relays.len() >= self.limits.max_relays {
                self.stats.refused += 1;
                tracing::warn!(conn = %a.conn, "proxy: client refused, {} relays open", self.relays.len());
                let _ = self.node.abort(a.conn);
                continue;
            }
            let mut r = Relay::new(a.state.unwrap_or_default(), std::time::Instant::now());
            if arrived {
                self.stats.arrived += 1;
                // Placed here by the node it came from: relay what it read.
                self.open_backend(&mut r);
            } else {
                self.stats.accepted += 1;
            }
            self.relays.insert(a.conn, r);
            self.ready.push(a.conn);
        }
        let events: Vec<Event> = self.node.take_events().collect();
        for ev in events {
            match ev {
                Event::HandedOff { conn, .. } | Event::Lost { conn, .. } => {
                    self.relays.remove(&conn);
                }
                Event::KeptHere { conn, tried, cause } => {
                    tracing::warn!(%conn, "placed elsewhere, served here: {cause}");
                    self.stats.kept += 1;
                    // A drain gives up after failed handoffs, not after ones that could not
                    // start (a back-off).
                    if let (true, Some(d), Some(client)) =
                        (tried, self.drain.as_mut(), self.node.peer_addr(conn))
                    {
                        d.kept(client);
                    }
                    if let Some(mut r) = self.relays.remove(&conn) {
                        r.leaving = false;
                        self.open_backend(&mut r);
                        self.relays.insert(conn, r);
                        self.ready.push(conn);
                    }
                }
                Event::Rebound { ok, detail } => {
                    if let Some(d) = self.drain.as_mut() {
                        d.rebound(ok, &detail);
                    }
                }
                Event::Declined { .. } | Event::Bound { .. } | Event::SteerRefused { .. } => {}
            }
        }
        self.node.take_ready(&mut self.ready);
        // Only relays with news: a client event, a backend event, or a request still to write.
        let mut ids = std::mem::take(&mut self.ready);
        ids.sort_unstable();
        ids.dedup();
        for c in ids.drain(..) {
            self.pump(c);
        }
        self.ready = ids;
        self.sweep(std::time::Instant::now());
        if let Some(d) = self.drain.as_mut() {
            if self.accepting && d.may_stop_accepting() {
                self.node.stop_accepting();
                self.accepting = false;
            }
            let open: Vec<ConnId> = self.relays.keys().copied().collect();
            for c in open {
                self.drain_one(c);
            }
        }
        Ok(())
    }

    fn open_backend(&mut self, r: &mut Relay) {
        match connect_nonblocking(self.backend) {
            Ok(s) => {
                self.stats.relayed += 1;
                r.backend = Some(s);
            }
            Err(e) => {
                tracing::warn!(backend = %self.backend, "backend unreachable: {e}");
                self.stats.backend_errors += 1;
                r.down
                    .extend_from_slice(b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                r.backend_eof = true;
            }
        }
    }

    /// Move what can move on connection `c`; close it when both sides are done.
    fn pump(&mut self, c: ConnId) {
        let Some(mut r) = self.relays.remove(&c) else {
            return;
        };
        if r.leaving {
            self.relays.insert(c, r);
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        // Client → us.
        while !r.client_eof && r.up.len() < BUF {
            let room = (BUF - r.up.len()).min(buf.len());
            match self.node.read(c, &mut buf[..room]) {
                Ok(0) => r.client_eof = true,
                Ok(n) => {
                    r.up.extend_from_slice(&buf[..n]);
                    r.moved = std::time::Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    let _ = self.node.close(c);
                    return;
                }
            }
        }
        if r.backend.is_none() && !r.backend_eof {
            // Not placed yet: wait for the whole request head.
            match head_end(&r.up) {
                Some(_) if self.drain.is_some() => {
                    // Placed by the drain (after this round's pumping).
                    self.relays.insert(c, r);
                    return;
                }
                Some(_) => {
                    let first = r.up.clone();
                    match self.node.place(&first) {
                        Placement::Here => self.open_backend(&mut r),
                        Placement::Node(to) => match self.node.start_handoff(c, to, first) {
                            Ok(()) => {
                                self.stats.handed_off += 1;
                                r.leaving = true;
                                self.relays.insert(c, r);
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(%c, "handoff to {to} refused: {e}");
                                self.open_backend(&mut r);
                            }
                        },
                    }
                }
                None if r.up.len() >= MAX_HEAD || r.client_eof => {
                    self.stats.bad_requests += 1;
                    let _ = self.node.write(
                        c,
                        b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n",
                    );
                    let _ = self.node.close(c);
                    return;
                }
                None => {
                    self.relays.insert(c, r);
                    return;
                }
            }
        }
        // Only for a later request: the first was placed above (or by the node it came from).
        if self.per_request
            && self.drain.is_none()
            && r.ex.responses_done > 0
            && r.backend.is_some()
            && !r.backend_eof
            && r.down.is_empty()
            && r.ex.idle()
            && head_end(&r.up).is_some()
        {
            // Between two exchanges with the next request read: place it anew.
            if let Placement::Node(to) = self.node.place(&r.up) {
                match self.node.start_handoff(c, to, r.up.clone()) {
                    Ok(()) => {
                        self.stats.replaced += 1;
                        r.leaving = true;
                        r.backend = None;
                        self.relays.insert(c, r);
                        return;
                    }
                    Err(e) => tracing::warn!(%c, "request placed on {to}, served here: {e}"),
                }
            }
        }
        if let Some(b) = r.backend.as_mut() {
            // Us → backend.
            while !r.up.is_empty() {
                match b.write(&r.up) {
                    Ok(0) => break,
                    Ok(n) => {
                        r.ex.requests(&r.up[..n]);
                        r.up.drain(..n);
                        r.moved = std::time::Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::NotConnected => break, // connecting
                    Err(_) => {
                        self.stats.backend_errors += 1;
                        r.backend_eof = true;
                        r.up.clear();
                        break;
                    }
                }
            }
            if r.client_eof && r.up.is_empty() {
                let _ = b.shutdown(std::net::Shutdown::Write);
            }
            // Backend → us.
            while !r.backend_eof && r.down.len() < BUF {
                let room = (BUF - r.down.len()).min(buf.len());
                match b.read(&mut buf[..room]) {
                    Ok(0) => r.backend_eof = true,
                    Ok(n) => {
                        r.ex.responses(&buf[..n]);
                        r.down.extend_from_slice(&buf[..n]);
                        r.moved = std::time::Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::NotConnected => break,
                    Err(_) => {
                        self.stats.backend_errors += 1;
                        r.backend_eof = true;
                    }
                }
            }
        }
        // Us → client.
        while !r.down.is_empty() {
            match self.node.write(c, &r.down) {
                Ok(n) => {
                    r.down.drain(..n);
                    r.sent += n as u64;
                    if n > 0 {
                        r.moved = std::time::Instant::now();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    let _ = self.node.close(c);
                    return;
                }
            }
        }
        if r.backend_eof && r.down.is_empty() {
            // The backend finished: so does the client's connection (FIN after the data).
            let _ = self.node.close(c);
            return;
        }
        if r.backend.is_some() && !r.up.is_empty() {
            self.stalled.push(c);
        }
        self.relays.insert(c, r);
    }
}

/// Where the request head ends (just after its blank line), if it is all there.
fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A non-blocking connection to `addr` (in progress: writes say `WouldBlock` or
/// `NotConnected` until it is up).
fn connect_nonblocking(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that never completes its first request head is ended at the header timeout
    /// (408), a placed relay where nothing moved at the idle timeout (reset), one being handed
    /// off by neither.
    #[test]
    fn a_relay_ends_when_its_clock_runs_out() {
        let limits = ProxyLimits::default();
        let t = std::time::Instant::now();
        let mut r = Relay::new(Vec::new(), t);
        assert_eq!(r.expiry(t + limits.header_timeout / 2, &limits), None);
        assert_eq!(
            r.expiry(t + limits.header_timeout, &limits),
            Some(RelayExpiry::Head)
        );
        r.leaving = true;
        assert_eq!(r.expiry(t + limits.idle_timeout * 10, &limits), None);
        // Placed (its backend answered 502, say), then quiet.
        r.leaving = false;
        r.backend_eof = true;
        assert_eq!(r.expiry(t + limits.header_timeout, &limits), None);
        r.moved = t + limits.header_timeout;
        assert_eq!(
            r.expiry(t + limits.header_timeout + limits.idle_timeout, &limits),
            Some(RelayExpiry::Idle)
        );
    }

    #[test]
    fn the_head_ends_after_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b""), None);
    }
}
