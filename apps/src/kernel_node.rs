//! A kernel-path node: the HTTP content service over standard Linux sockets, handing its
//! connections off and taking them over through the same engine and protocol as the
//! userspace [`crate::server::HttpServer`] (the kernel host, `ds_kernel::KernelHost`, moves them
//! with `TCP_REPAIR`), so kernel and userspace nodes interoperate.
//!
//! The HTTP side is [`HttpConn`] over a non-blocking [`TcpStream`]: the response bytes and the
//! exported [`HttpConnState`] are exactly the userspace server's, so either kind of node
//! continues the other's response.

use crate::drain::{DrainInfo, Draining};
use crate::http::{DocRoot, HttpConn, HttpConnState};
use crate::server::{since, ConnClock, Expiry, ServerConfig};
use ds_handoff::Service;
use ds_kernel::{KernelConn, KernelHost};
use dserver::engine::{Coordinator, HandoffConfig, NodeEvent, NodeStats};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client connection served here.
struct Conn {
    sock: TcpStream,
    http: HttpConn,
    /// Response bytes written to the socket here since accept, adoption or a failed handoff
    /// (the quota counter, as the userspace server's).
    sent_here: u64,
    local: SocketAddrV6,
    client: SocketAddrV6,
    /// Our FIN is out.
    fin: bool,
    /// The client's FIN arrived.
    eof: bool,
    /// When it was accepted or adopted here.
    since: Instant,
    /// Against the header, stall and idle limits.
    clock: ConnClock<Instant>,
    /// When our FIN went out.
    fin_at: Option<Instant>,
}

impl Conn {
    fn new(sock: TcpStream, http: HttpConn, local: SocketAddrV6, client: SocketAddrV6) -> Conn {
        // Only so much queued and not yet sent (as the userspace stack's `notsent_lowat`): a
        // slow reader holds little here, and a frozen state carries no more.
        if let Err(e) = set_notsent_lowat(&sock) {
            tracing::debug!("TCP_NOTSENT_LOWAT: {e}");
        }
        Conn {
            sock,
            http,
            sent_here: 0,
            local,
            client,
            fin: false,
            eof: false,
            since: Instant::now(),
            clock: ConnClock::new(Instant::now()),
            fin_at: None,
        }
    }
}

enum Verdict {
    Continue,
    Quota,
    Close,
}

/// Counters of the kernel node's HTTP side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelServerStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections adopted from a peer or taken back.
    pub adopted: u64,
    /// Response bytes written to sockets here.
    pub response_bytes: u64,
    /// Connections open now.
    pub open: usize,
    /// Requests whose head did not arrive within the header timeout (answered 408).
    pub header_timeouts: u64,
    /// Responses aborted after the stall timeout.
    pub stalled: u64,
    /// Persistent connections closed idle.
    pub idle_closed: u64,
    /// Connections refused over the connection limit (503, or a reset past twice the limit).
    pub refused: u64,
    /// The open-file cache (`--open-file-cache`; zeros without it).
    pub open_files: crate::http::OpenFileStats,
}

/// Abort: SO_LINGER with a zero timeout makes the close send a RST (RFC 9293 §3.10.7.1).
fn reset_on_close(sock: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO)) {
        tracing::debug!("SO_LINGER: {e}");
    }
}

/// The HTTP service of a kernel node as the engine's [`Service`], for one call.
struct KernelService<'a> {
    conns: &'a mut Vec<Conn>,
    detached: &'a mut HashMap<(SocketAddrV6, SocketAddrV6), HttpConn>,
    root: &'a Arc<DocRoot>,
    name: &'a str,
    stats: &'a mut KernelServerStats,
}

impl Service<KernelConn> for KernelService<'_> {
    fn accepts(&self, name: &str) -> bool {
        name == self.name
    }

    fn export(&mut self, conn: &KernelConn) -> Result<Vec<u8>, String> {
        let flow = conn.flow();
        let http = self.detached.get(&flow).ok_or("not served here")?;
        let st = http.export().map_err(|e| e.to_string())?;
        self.detached.remove(&flow);
        Ok(st.encode())
    }

    fn adopt(&mut self, conn: KernelConn, state: &[u8]) -> Result<(), (KernelConn, String)> {
        let (local, client) = conn.flow();
        let sock = conn
            .into_socket()
            .map_err(|c| (c, "not a live socket".to_string()))?;
        let http = HttpConnState::decode(state)
            .map_err(|e| e.to_string())
            .and_then(|st| {
                HttpConn::import(self.root.clone(), client.to_string(), st)
                    .map_err(|e| e.to_string())
            })
            .and_then(|h| {
                sock.set_nonblocking(true)
                    .map(|()| h)
                    .map_err(|e| e.to_string())
            });
        let http = match http {
            Ok(h) => h,
            Err(e) => {
                return Err((
                    KernelConn::Live {
                        sock,
                        local,
                        remote: client,
                    },
                    e,
                ))
            }
        };
        self.stats.adopted += 1;
        self.conns.push(Conn::new(sock, http, local, client));
        Ok(())
    }
}

/// The HTTP service over kernel sockets plus live handoff to and from a peer.
pub struct KernelNode {
    /// `None` once a drain stopped accepting.
    listener: Option<TcpListener>,
    root: Arc<DocRoot>,
    service: String,
    core: Coordinator<KernelConn>,
    host: KernelHost,
    conns: Vec<Conn>,
    /// HTTP state of connections being handed off (exported by the engine at the start).
    detached: HashMap<(SocketAddrV6, SocketAddrV6), HttpConn>,
    quota: Option<u64>,
    max_handoffs: Option<u64>,
    stats: KernelServerStats,
    fds: Vec<libc::pollfd>,
    control: Vec<std::os::fd::RawFd>,
    /// Clients whose connection the operator asked to move (`dsctl handoff`).
    requested: Vec<SocketAddrV6>,
    /// The peer each requested connection goes to (`dsctl handoff --to`).
    requested_to: HashMap<SocketAddrV6, std::net::SocketAddr>,
    /// The peer [`KernelNode::peer_ready`] found ready, for the handoff that follows.
    chosen: Option<std::net::SocketAddr>,
    /// Set while the node drains.
    drain: Option<Draining>,
    /// The HTTP server's limits (as the userspace server's).
    limits: ServerConfig,
}

/// At most the userspace stack's `notsent_lowat` queued and not yet sent on `sock`
/// (`TCP_NOTSENT_LOWAT`, Linux 3.12).
fn set_notsent_lowat(sock: &TcpStream) -> std::io::Result<()> {
    let v = libc::c_int::try_from(ds_stack::DEFAULT_NOTSENT_LOWAT).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt(2) on a live socket with a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl KernelNode {
    /// Serve files below `root` to the clients of `listener` (made non-blocking here), with
    /// handoff per `cfg`, holding moving connections' packets with `holds` (on the link the
    /// clients' packets arrive on).
    pub fn new(
        listener: TcpListener,
        root: &Path,
        mut cfg: HandoffConfig,
        holds: ds_kernel::HoldTable,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let core = Coordinator::new(&mut cfg)?;
        Ok(KernelNode {
            listener: Some(listener),
            root: DocRoot::open(root)?,
            service: cfg.service.clone(),
            core,
            host: KernelHost::new(holds),
            conns: Vec::new(),
            detached: HashMap::new(),
            quota: cfg.peer.and(cfg.quota),
            max_handoffs: cfg.max_handoffs,
            stats: KernelServerStats::default(),
            fds: Vec::new(),
            control: Vec::new(),
            requested: Vec::new(),
            requested_to: HashMap::new(),
            chosen: None,
            drain: None,
            limits: ServerConfig::default(),
        })
    }

    /// The HTTP limits (header, stall and idle timeouts, connection limit).
    pub fn set_limits(&mut self, limits: ServerConfig) -> std::io::Result<()> {
        if limits.open_file_cache != self.limits.open_file_cache {
            self.root = DocRoot::open_with_cache(self.root.path(), limits.open_file_cache)?;
        }
        self.limits = limits;
        Ok(())
    }

    /// Handoff counters.
    pub fn stats(&self) -> NodeStats {
        self.core.stats()
    }

    /// HTTP counters.
    pub fn server_stats(&self) -> KernelServerStats {
        KernelServerStats {
            open: self.conns.len(),
            open_files: self.root.open_file_stats(),
            ..self.stats
        }
    }

    /// The open connections, ordered by client address. The state is what the server knows
    /// from its own FIN and the client's, not read from the kernel.
    pub fn conn_info(&self) -> Vec<crate::server::ConnInfo> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .map(|c| crate::server::ConnInfo {
                client: c.client.to_string(),
                local: c.local.to_string(),
                state: match (c.fin, c.eof) {
                    (false, false) => "Established",
                    (true, false) => "FinWait1",
                    (false, true) => "CloseWait",
                    (true, true) => "Closing",
                }
                .to_string(),
                sent_bytes: c.sent_here,
                age_ms: c.since.elapsed().as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.client.cmp(&b.client));
        v
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<NodeEvent> {
        self.core.take_events()
    }

    /// True while a handoff is in progress or held packets are still being forwarded.
    pub fn busy(&self) -> bool {
        self.core.busy()
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

    /// The quota in force: none once this node started all its handoffs.
    fn quota_now(&self) -> Option<u64> {
        let left = self
            .max_handoffs
            .is_none_or(|m| self.core.stats().started < m);
        self.quota.filter(|_| left)
    }

    /// One round: wait for work (at most `idle`, less while a handoff runs), then serve
    /// everything that is ready.
    pub fn step(&mut self, idle: Duration) {
        self.wait(idle);
        self.accept_clients();
        // Held packets wait in the ring: into their flows' queues.
        self.host.holds().poll();
        // A quiet server closes its expired cached files too (a time check between them).
        self.root.expire_cached();
        let now = Instant::now();
        self.with_engine(|core, host, svc| core.poll(now, host, svc));
        if let Some(d) = self.drain.as_mut() {
            if d.observe(self.core.events()) && self.listener.take().is_some() {
                tracing::info!("drain: no longer accepting");
            }
        }
        self.serve_conns();
    }

    /// Move the connection of `client` to the peer `to` (`dsctl handoff`) as soon as no other
    /// handoff runs; its report comes as a [`NodeEvent::HandedOff`], or a
    /// [`NodeEvent::KeptHere`] when it stays.
    pub fn request_handoff(
        &mut self,
        client: SocketAddrV6,
        to: std::net::SocketAddr,
    ) -> Result<(), String> {
        self.core.check_handoff_to(Instant::now(), to)?;
        if !self.conns.iter().any(|c| c.client == client) {
            if self.core.moving(client) {
                return Err(format!("the connection of {client} is already leaving"));
            }
            return Err(format!("no connection of {client} here"));
        }
        if self.requested.contains(&client) {
            return Err(format!("the connection of {client} is already leaving"));
        }
        self.requested.push(client);
        self.requested_to.insert(client, to);
        Ok(())
    }

    /// Drain (`dsctl drain`), as the userspace node's
    /// ([`crate::server::HttpServer::start_drain`]).
    pub fn start_drain(
        &mut self,
        rebind: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
    ) -> Result<usize, String> {
        if self.drain.is_some() {
            return Err("already draining".into());
        }
        self.drain = Some(Draining::start(&mut self.core, rebind)?);
        tracing::info!(connections = self.conns.len(), "draining");
        Ok(self.conns.len())
    }

    /// The drain's progress, if the node drains.
    pub fn drain_info(&self) -> Option<DrainInfo> {
        self.drain
            .as_ref()
            .map(|d| d.info(self.conns.len(), self.listener.is_some()))
    }

    /// True once a drain moved (or saw close) every connection and nothing is in flight.
    pub fn drained(&self) -> bool {
        self.drain.is_some()
            && self.listener.is_none()
            && self.conns.is_empty()
            && !self.core.busy()
    }

    /// Whether the connection `c` is to leave now: asked for by the operator, or every
    /// connection still sending once a drain no longer accepts.
    fn wants_out(&self, c: &Conn) -> bool {
        self.requested.contains(&c.client)
            || (self.listener.is_none()
                && !c.fin
                && self.drain.as_ref().is_some_and(|d| d.may_try(c.client)))
    }

    /// Stop: every packet hold goes with the node (their packets are dropped).
    pub fn shutdown(self) {}

    /// Block in poll(2) until a socket we serve is ready or the wait is over.
    fn wait(&mut self, idle: Duration) {
        // While a drain runs, the ACKs it waits for wake nothing here: look often.
        let idle = if self.core.handing_off() {
            idle.min(Duration::from_micros(50))
        } else {
            idle
        };
        let timeout = self.core.max_wait(Instant::now(), idle);
        self.fds.clear();
        self.control.clear();
        self.core.wait_fds(&mut self.control);
        let hold_fd = self.host.holds().fd().as_raw_fd();
        let mut add = |fd: i32, events: i16| {
            self.fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        if let Some(l) = &self.listener {
            add(l.as_raw_fd(), libc::POLLIN);
        }
        add(hold_fd, libc::POLLIN);
        for fd in &self.control {
            add(*fd, libc::POLLIN);
        }
        for c in &self.conns {
            let mut ev = 0;
            if c.http.wants_input() || !c.eof {
                ev |= libc::POLLIN;
            }
            if c.http.is_busy() {
                ev |= libc::POLLOUT;
            }
            add(c.sock.as_raw_fd(), ev);
        }
        // ppoll(2), not poll(2): a wait shorter than a millisecond (a drain's 50 µs, the
        // engine's next deadline) must not round up to one.
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs and `ts` a
        // live timespec; ppoll(2) only writes the pollfds' `revents` fields and reads `ts`; no
        // signal mask is passed. The result is not needed: every socket is non-blocking and
        // is tried after the wait anyway.
        unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            );
        }
    }

    fn accept_clients(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((sock, _)) => match KernelConn::live(sock) {
                    Ok(KernelConn::Live {
                        sock,
                        local,
                        remote,
                    }) => {
                        if let Err(e) = sock.set_nonblocking(true) {
                            tracing::warn!("client connection dropped: {e}");
                            continue;
                        }
                        self.stats.accepted += 1;
                        let max = self.limits.max_connections;
                        if self.conns.len() >= max.saturating_mul(2) {
                            // Far over the limit: not even a response.
                            self.stats.refused += 1;
                            reset_on_close(&sock);
                            continue;
                        }
                        let mut http = HttpConn::new(self.root.clone(), remote.to_string());
                        if self.conns.len() >= max {
                            self.stats.refused += 1;
                            http.refuse_overloaded();
                        }
                        self.conns.push(Conn::new(sock, http, local, remote));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("client connection dropped: {e}"),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    break;
                }
            }
        }
    }

    fn serve_conns(&mut self) {
        let mut k = 0;
        while k < self.conns.len() {
            if !self.core.handing_off() && self.wants_out(&self.conns[k]) {
                let wanted = self.requested_to.get(&self.conns[k].client).copied();
                match self.peer_ready(wanted) {
                    // Not yet: it is served on meanwhile and leaves once the channel is up.
                    Some(Ok(false)) => {}
                    Some(Ok(true)) => {
                        let c = self.conns.swap_remove(k);
                        self.requested.retain(|r| *r != c.client);
                        self.requested_to.remove(&c.client);
                        if let Some(mut c) = self.hand_off(c) {
                            c.sent_here = 0;
                            self.conns.push(c);
                        }
                        continue;
                    }
                    // No peer, or it failed lately (the engine backs off): it stays, and a
                    // refusal is reported.
                    other => {
                        let client = self.conns[k].client;
                        self.requested.retain(|r| *r != client);
                        self.requested_to.remove(&client);
                        if let Some(Err(cause)) = other {
                            self.kept_here(client, cause);
                        }
                    }
                }
            }
            let quota = self.quota_now();
            let (verdict, wrote) = serve(&mut self.conns[k], quota, &self.limits, &mut self.stats);
            self.stats.response_bytes += wrote;
            match verdict {
                Verdict::Continue => k += 1,
                Verdict::Close => {
                    self.conns.swap_remove(k);
                }
                Verdict::Quota if self.core.handing_off() => {
                    // One handoff at a time: it stays paused by the quota until the running
                    // one ends.
                    k += 1;
                }
                Verdict::Quota => match self.peer_ready(None) {
                    Some(Ok(true)) => {
                        let c = self.conns.swap_remove(k);
                        if let Some(mut c) = self.hand_off(c) {
                            // Kept here: served again (at the end of the list) this round.
                            c.sent_here = 0;
                            self.conns.push(c);
                        }
                    }
                    Some(Ok(false)) => {
                        // The peer's control channel is opening (nothing is frozen for a peer
                        // without one): it waits paused by the quota, for `CHANNEL_WAIT` at
                        // most (then the engine gives up on the peer and backs off).
                        k += 1;
                    }
                    // No peer, or it cannot take the connection now (unreachable, or backing
                    // off after failures): served on here with a fresh quota; a refusal is
                    // reported, as the library node does.
                    other => {
                        self.conns[k].sent_here = 0;
                        if let Some(Err(cause)) = other {
                            let client = self.conns[k].client;
                            self.kept_here(client, cause);
                        }
                        k += 1;
                    }
                },
            }
        }
    }

    /// Report that `client`'s connection stays here without a handoff having started.
    fn kept_here(&mut self, client: SocketAddrV6, cause: String) {
        tracing::debug!(%client, "connection kept here: {cause}");
        self.core.push_event(NodeEvent::KeptHere { client, cause });
    }

    /// Whether a handoff can start now ([`Coordinator::pick_peer`]), remembering the peer for
    /// [`KernelNode::hand_off`]; `None` without a peer.
    fn peer_ready(&mut self, wanted: Option<std::net::SocketAddr>) -> Option<Result<bool, String>> {
        if !self.core.has_peer() {
            return None;
        }
        Some(self.core.pick_peer(Instant::now(), wanted).map(|p| {
            self.chosen = p;
            p.is_some()
        }))
    }

    /// Run `f` with the engine's I/O half, the kernel host and the HTTP service.
    fn with_engine<T>(
        &mut self,
        f: impl FnOnce(&mut Coordinator<KernelConn>, &mut KernelHost, &mut KernelService<'_>) -> T,
    ) -> T {
        self.host.connections = self.conns.len();
        let mut svc = KernelService {
            conns: &mut self.conns,
            detached: &mut self.detached,
            root: &self.root,
            name: &self.service,
            stats: &mut self.stats,
        };
        f(&mut self.core, &mut self.host, &mut svc)
    }

    /// Start handing `c` to the peer. Returns it when it stays here.
    fn hand_off(&mut self, c: Conn) -> Option<Conn> {
        let Conn {
            sock,
            http,
            local,
            client,
            ..
        } = c;
        self.detached.insert((local, client), http);
        let conn = KernelConn::Live {
            sock,
            local,
            remote: client,
        };
        let now = Instant::now();
        let Some(to) = self.chosen.take().or_else(|| self.core.peer()) else {
            let http = self.detached.remove(&(local, client))?;
            let sock = conn.into_socket().ok()?;
            return Some(Conn::new(sock, http, local, client));
        };
        match self.with_engine(|core, host, svc| core.hand_off_to(now, to, conn, None, host, svc)) {
            Ok(()) => None,
            Err(conn) => {
                let http = self.detached.remove(&(local, client))?;
                let sock = conn.into_socket().ok()?;
                Some(Conn::new(sock, http, local, client))
            }
        }
    }
}

/// Read what the client sent and write the response, at most up to the quota. Returns the
/// verdict and the response bytes written.
fn serve(
    c: &mut Conn,
    quota: Option<u64>,
    limits: &ServerConfig,
    stats: &mut KernelServerStats,
) -> (Verdict, u64) {
    let now = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    let mut wrote = 0u64;
    while c.http.wants_input() {
        let room = c.http.input_room().clamp(1, buf.len());
        match c.sock.read(&mut buf[..room]) {
            Ok(0) => {
                c.http.feed_eof();
                c.eof = true;
                break;
            }
            Ok(n) => {
                c.http.feed(&buf[..n]);
                c.clock.activity(now);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(client = %c.client, "receive: {e}");
                return (Verdict::Close, wrote);
            }
        }
    }
    if c.clock.head_deadline(now, since, &mut c.http, limits) {
        stats.header_timeouts += 1;
    }
    loop {
        let left = quota.map(|q| q.saturating_sub(c.sent_here));
        let chunk = match c.http.poll_transmit() {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!("aborting a response: {e}");
                return (Verdict::Close, wrote);
            }
        };
        if chunk.is_empty() {
            break;
        }
        // Never write more than the quota allows, so the handoff point is byte-exact.
        let cap = left.map_or(chunk.len(), |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(chunk.len())
        });
        if cap == 0 {
            return (Verdict::Quota, wrote);
        }
        match c.sock.write(&chunk[..cap]) {
            Ok(0) => break,
            Ok(n) => {
                c.http.advance(n);
                c.clock.activity(now);
                c.sent_here += n as u64;
                wrote += n as u64;
                if quota.is_some_and(|q| c.sent_here >= q) {
                    return (Verdict::Quota, wrote);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(client = %c.client, "send: {e}");
                return (Verdict::Close, wrote);
            }
        }
    }
    match c.clock.after_send(now, since, &mut c.http, limits) {
        Expiry::None => {}
        Expiry::Idle => stats.idle_closed += 1,
        Expiry::Stalled => {
            stats.stalled += 1;
            reset_on_close(&c.sock);
            return (Verdict::Close, wrote);
        }
    }
    if !c.fin && c.http.is_finished() {
        if let Err(e) = c.sock.shutdown(std::net::Shutdown::Write) {
            tracing::debug!(client = %c.client, "shutdown: {e}");
            return (Verdict::Close, wrote);
        }
        c.fin = true;
        c.fin_at = Some(now);
    }
    if c.fin && c.eof {
        return (Verdict::Close, wrote);
    }
    if c.fin_at.is_some_and(|t| since(now, t) >= limits.linger) {
        reset_on_close(&c.sock);
        return (Verdict::Close, wrote);
    }
    (Verdict::Continue, wrote)
}
