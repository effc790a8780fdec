//! The home agent's side of transparent-mode handoffs: a control service that moves one flow
//! in the XDP tunnel program's flow map when an acceptor asks (handoff phases 4–6).
//!
//! In transparent mode the client is an unmodified host that keeps sending to the DS address;
//! the contact node's home agent tunnels each flow to the node serving it (seed §3.1.1). When a
//! connection moves, the acceptor sends [`Message::MoveFlow`] over an authenticated, encrypted
//! [`Channel`] (same cluster secret and framing as the donor↔acceptor channel: a forged request
//! would hijack the flow) and the agent answers [`Message::FlowMoved`] once the map entry
//! points at the new care-of address: one map update, no packet path change for other flows.

use ds_handoff::{Channel, ClusterSecret, Message};
use ds_xdp::maps::FlowKey;
use ds_xdp::Program;
use std::net::TcpListener;
use std::time::Duration;

/// Counters of the flow agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowAgentStats {
    /// Control channels accepted (handshake passed).
    pub channels: u64,
    /// Channels refused at the handshake (wrong secret, garbage) or broken later.
    pub channel_errors: u64,
    /// Flows moved.
    pub moves: u64,
    /// Move requests that failed (map update error).
    pub move_errors: u64,
    /// Messages that are not move requests (ignored).
    pub unexpected: u64,
}

/// The flow-steering service of an XDP home agent.
pub struct FlowAgent {
    prog: Program,
    listener: TcpListener,
    secret: ClusterSecret,
    chans: Vec<Channel>,
    stats: FlowAgentStats,
    poll: ds_stack::device::PollSet,
}

impl FlowAgent {
    /// Serve move requests on `listener` (made non-blocking here) for the tunnel program
    /// `prog`.
    pub fn new(
        prog: Program,
        listener: TcpListener,
        secret: ClusterSecret,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(FlowAgent {
            prog,
            listener,
            secret,
            chans: Vec::new(),
            stats: FlowAgentStats::default(),
            poll: ds_stack::device::PollSet::default(),
        })
    }

    /// The tunnel program (bindings, flows, counters).
    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// Counters so far.
    pub fn stats(&self) -> FlowAgentStats {
        self.stats
    }

    /// Sleep until a control socket is readable or `timeout` passes (so the agent answers a
    /// request as soon as it arrives without spinning).
    pub fn wait(&mut self, timeout: Duration) {
        use std::os::fd::AsRawFd;
        self.poll.clear();
        self.poll.add(self.listener.as_raw_fd());
        for c in &self.chans {
            self.poll.add(c.stream().as_raw_fd());
        }
        // Errors (EINTR aside) would repeat at once; the caller polls the sockets either way.
        let _ = self.poll.wait(Some(timeout));
    }

    /// Accept new control channels and answer every pending request; returns how many flows
    /// moved. Never blocks longer than a handshake (bounded by a 1 s timeout).
    pub fn poll(&mut self) -> usize {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    // The listener is non-blocking; the handshake runs blocking with a timeout.
                    if stream.set_nonblocking(false).is_err() {
                        continue;
                    }
                    match Channel::accept(stream, &self.secret, Duration::from_secs(1)) {
                        Ok(c) => {
                            tracing::debug!(%peer, "flow agent: control channel up");
                            self.stats.channels += 1;
                            self.chans.push(c);
                        }
                        Err(e) => {
                            tracing::warn!(%peer, "flow agent: handshake failed: {e}");
                            self.stats.channel_errors += 1;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("flow agent: accept: {e}");
                    break;
                }
            }
        }
        let mut moved = 0;
        let mut i = 0;
        while i < self.chans.len() {
            match self.serve(i) {
                Ok(n) => {
                    moved += n;
                    i += 1;
                }
                Err(e) => {
                    if !matches!(e, ds_handoff::ChannelError::Closed) {
                        tracing::warn!("flow agent: channel dropped: {e}");
                        self.stats.channel_errors += 1;
                    }
                    self.chans.swap_remove(i);
                }
            }
        }
        moved
    }

    fn serve(&mut self, i: usize) -> Result<usize, ds_handoff::ChannelError> {
        let mut moved = 0;
        while let Some(m) = self.chans[i].poll()? {
            let Message::MoveFlow {
                conn_id,
                client,
                server,
                to,
            } = m
            else {
                self.stats.unexpected += 1;
                continue;
            };
            let key = FlowKey {
                src: *client.ip(),
                dst: *server.ip(),
                sport: client.port(),
                dport: server.port(),
                proto: 6,
            };
            let reply = match self.prog.set_flow(&key, to) {
                Ok(()) => {
                    self.stats.moves += 1;
                    moved += 1;
                    tracing::debug!(%client, %server, %to, "flow moved");
                    Message::FlowMoved {
                        conn_id,
                        ok: true,
                        detail: String::new(),
                    }
                }
                Err(e) => {
                    self.stats.move_errors += 1;
                    Message::FlowMoved {
                        conn_id,
                        ok: false,
                        detail: e.to_string(),
                    }
                }
            };
            self.chans[i].send(&reply)?;
        }
        Ok(moved)
    }
}

/// The acceptor's side: ask the home agent at `ha` to move a flow and wait for the answer.
/// Keeps one channel open across handoffs.
pub struct FlowMover {
    ha: std::net::SocketAddr,
    secret: ClusterSecret,
    chan: Option<Channel>,
    timeout: Duration,
}

impl FlowMover {
    /// A mover talking to the flow agent at `ha`; each request waits at most `timeout`.
    pub fn new(ha: std::net::SocketAddr, secret: ClusterSecret, timeout: Duration) -> Self {
        FlowMover {
            ha,
            secret,
            chan: None,
            timeout,
        }
    }

    /// Open the channel now (otherwise the first move does, inside its timing).
    pub fn connect(&mut self) -> anyhow::Result<()> {
        if self.chan.is_none() {
            self.chan = Some(Channel::connect(self.ha, &self.secret, self.timeout)?);
        }
        Ok(())
    }

    /// Move the flow `client` → `server` to `to`. Returns (time to build and seal the
    /// request, time from sending it until the agent confirmed).
    pub fn move_flow(
        &mut self,
        conn_id: u64,
        client: std::net::SocketAddrV6,
        server: std::net::SocketAddrV6,
        to: std::net::Ipv6Addr,
    ) -> anyhow::Result<(Duration, Duration)> {
        self.connect()?;
        let t0 = std::time::Instant::now();
        let res = self.exchange(conn_id, client, server, to, t0);
        if res.is_err() {
            // A broken or desynchronised channel is not reused.
            self.chan = None;
        }
        res
    }

    fn exchange(
        &mut self,
        conn_id: u64,
        client: std::net::SocketAddrV6,
        server: std::net::SocketAddrV6,
        to: std::net::Ipv6Addr,
        t0: std::time::Instant,
    ) -> anyhow::Result<(Duration, Duration)> {
        let chan = self
            .chan
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no channel to the home agent"))?;
        let frame = chan.seal(&Message::MoveFlow {
            conn_id,
            client,
            server,
            to,
        })?;
        // Phase 5 is building the request; phase 6 runs from handing it to the socket to the
        // agent's confirmation.
        let sent = t0.elapsed();
        chan.send_sealed(&frame)?;
        // Wait in the kernel rather than spinning: the nodes share few cores with the client.
        chan.stream().set_nonblocking(false)?;
        let res = Self::await_reply(chan, conn_id, t0, sent, self.timeout);
        chan.stream().set_nonblocking(true)?;
        res
    }

    fn await_reply(
        chan: &mut Channel,
        conn_id: u64,
        t0: std::time::Instant,
        sent: Duration,
        timeout: Duration,
    ) -> anyhow::Result<(Duration, Duration)> {
        loop {
            let left = timeout.saturating_sub(t0.elapsed());
            if left.is_zero() {
                anyhow::bail!("home agent did not answer in {timeout:?}");
            }
            chan.stream().set_read_timeout(Some(left))?;
            match chan.poll()? {
                Some(Message::FlowMoved {
                    conn_id: id,
                    ok,
                    detail,
                }) if id == conn_id => {
                    if !ok {
                        anyhow::bail!("home agent refused the move: {detail}");
                    }
                    return Ok((sent, t0.elapsed() - sent));
                }
                Some(_) | None => {}
            }
        }
    }
}
