//! The home agent's side of transparent-mode handoffs: a control service that moves one flow
//! in the XDP tunnel program's flow map when an acceptor asks (handoff phases 4–6).
//!
//! In transparent mode the client is an unmodified host that keeps sending to the DS address;
//! the contact node's home agent tunnels each flow to the node serving it (seed §3.1.1). When a
//! connection moves, the acceptor sends [`Message::MoveFlow`] over an authenticated, encrypted
//! [`Channel`] (same cluster secret and framing as the donor↔acceptor channel: a forged request
//! would hijack the flow) and the agent answers [`Message::FlowMoved`] once the map entry
//! points at the new care-of address: one map update, no packet path change for other flows.
//!
//! The agent is the commit point of a transparent handoff ([`ds_handoff::flows`]): of the
//! acceptor's move and the reclaim of a donor whose handoff failed before it saw the Accept
//! (both carry the handoff's flow generation), the first the agent reads wins and the other
//! is answered `taken`; a forced reclaim outranks both; a request of an older handoff than the
//! last applied is refused ("stale"), and a move read later than its validity after it
//! arrived (the channel's receive stamp) is refused ("expired": its acceptor gave up on it).

use ds_handoff::flows::{self, Applied, Request, Verdict};
use ds_handoff::{Channel, ChannelGate, ClusterSecret, GateLimits, GateStats, Message};
use ds_xdp::maps::FlowKey;
use ds_xdp::Program;
use std::net::TcpListener;
use std::time::Duration;

/// Most clients of a dead node solicited at once.
const MAX_SOLICIT: usize = 4096;
/// Solicitations sent together, one such burst per [`SOLICIT_EVERY`]: a client whose
/// solicitations are all dropped never learns of its dead node if it only receives. Each
/// solicitation brings an answer back through the home agent's own link, so a burst
/// occupies twice its size in the link's queue: on a veth whose peer has an XDP program (a
/// ring of 256), bursts of 128 lost 16-20 % of solicitations and answers (counted at the
/// home agent's `h0` and in its `Ip6OutDiscards`, the etcd failover test, 2026-12-05), enough
/// that a download's three rounds were now and then all lost. A burst the device refuses in
/// part is sent on later ([`ds_kernel::inject_until_full`]); the answers have no such
/// back-pressure, hence bursts well under the ring.
const SOLICIT_BURST: usize = 32;
const SOLICIT_EVERY: Duration = Duration::from_millis(1);
/// Each client is solicited again this much after its first solicitation, in case the first
/// or its answer was lost. Past 500 ms each: a client answers one out-of-window segment per
/// 500 ms (Linux's `tcp_invalid_ratelimit`, RFC 9293 §3.10.7.4's ACK rate-limited), so a
/// sooner repeat would go unanswered. (The etcd failover test hung when all three rounds of
/// one client were lost: the links dropped them, see [`SOLICIT_BURST`].)
const SOLICIT_AGAIN: [Duration; 2] = [Duration::from_millis(600), Duration::from_millis(1800)];

/// Times a burst the outgoing device refused is tried again, one [`SOLICIT_EVERY`] apart,
/// before the rest of it is given up (the link jammed, not just busy).
const MAX_DEFERRALS: u8 = 100;

/// A burst of solicitations due at `at`.
struct Probe {
    at: std::time::Instant,
    /// Times the device refused part of it already.
    deferrals: u8,
    packets: Vec<Vec<u8>>,
}

impl Probe {
    fn new(at: std::time::Instant, packets: Vec<Vec<u8>>) -> Probe {
        Probe {
            at,
            deferrals: 0,
            packets,
        }
    }
}

/// Counters of the flow agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowAgentStats {
    /// Control channels accepted (the peer proved the cluster key).
    pub channels: u64,
    /// Channels refused at the handshake (wrong secret, garbage, too slow, over the
    /// gate's bounds) or broken later.
    pub channel_errors: u64,
    /// Flows moved.
    pub moves: u64,
    /// Move or rebind requests that failed (map update error, unknown home address).
    pub move_errors: u64,
    /// Bindings moved for draining nodes.
    pub rebinds: u64,
    /// Messages that are not move requests (ignored).
    pub unexpected: u64,
    /// Flows of dead nodes moved to a live one, their clients solicited for a reset.
    pub flows_reset: u64,
    /// Solicitations the outgoing device had no room for at once, sent a moment later.
    pub solicitations_deferred: u64,
    /// The control port's gate (unauthenticated channels, bounded).
    pub gate: GateStats,
    /// Moved flows forgotten after [`MOVED_IDLE`] without a packet.
    pub moved_aged: u64,
    /// Moves and reclaims not applied (fencing, [`ds_handoff::flows::judge`]): the other side
    /// of the same handoff came first, a newer handoff moved the flow, or a move was read
    /// after its validity.
    pub stale_moves: u64,
    /// Authenticated channels closed at once: their address, or all, already held as many
    /// as the agent keeps ([`ds_handoff::gate::AUTHENTICATED_PER_ADDRESS`],
    /// [`ds_handoff::gate::AUTHENTICATED_MAX`]).
    pub channels_refused: u64,
}

/// The flow-steering service of an XDP home agent.
pub struct FlowAgent {
    prog: Program,
    /// The control port: channels reach `chans` once the node proved the cluster key.
    gate: ChannelGate,
    /// Authenticated channels, with their peers' addresses (the gate's, for
    /// [`ds_handoff::gate::admits_authenticated`]).
    chans: Vec<(Channel, std::net::IpAddr)>,
    /// Channel failures after authentication.
    broken: u64,
    stats: FlowAgentStats,
    poll: ds_stack::device::PollSet,
    /// `poll`'s readiness is the last wait's and no [`FlowAgent::poll`] used it yet: that
    /// poll tries the gate's listener, and reads a channel, only if the wait found it
    /// readable (or the channel can progress without input).
    waited: bool,
    /// Solicitations of dead nodes' clients still to send (bursts after the first, and the
    /// second solicitations), and when each is due.
    probes: Vec<Probe>,
    /// Moved flows' packet counts and since when each stayed the same (for aging).
    moved_seen: std::collections::HashMap<FlowKey, (u64, std::time::Instant)>,
    last_sweep: std::time::Instant,
    /// The last request applied to each moved flow ([`ds_handoff::flows::judge`] decides on
    /// the next). Its keys are the moved flows' (bounded by the program's table), forgotten
    /// with them.
    generations: std::collections::HashMap<FlowKey, Applied>,
    /// A channel had more than [`ds_handoff::MESSAGES_PER_TURN`] requests in the last turn:
    /// the next wait is none.
    more_input: bool,
}

/// How often the moved-flow table is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A moved flow that carried no packet this long is forgotten (its connection ended, or was
/// idle past Linux's default keep-alive time of 2 h): the table the program never evicts
/// from stays bounded by the connections that live.
pub const MOVED_IDLE: Duration = Duration::from_secs(2 * 3600 + 15 * 60);

impl FlowAgent {
    /// Serve move requests on `listener` (behind a [`ChannelGate`] with the default
    /// limits) for the tunnel program `prog`.
    pub fn new(
        prog: Program,
        listener: TcpListener,
        secret: ClusterSecret,
    ) -> std::io::Result<Self> {
        let gate = ChannelGate::new(listener, &secret, GateLimits::default(), "flow agent")?;
        Ok(FlowAgent {
            prog,
            gate,
            chans: Vec::new(),
            broken: 0,
            stats: FlowAgentStats::default(),
            poll: ds_stack::device::PollSet::default(),
            waited: false,
            probes: Vec::new(),
            moved_seen: std::collections::HashMap::new(),
            last_sweep: std::time::Instant::now(),
            generations: std::collections::HashMap::new(),
            more_input: false,
        })
    }

    /// Forget moved flows idle for `idle`, checked at most every [`SWEEP_EVERY`] unless
    /// `force`; how many went.
    pub fn age_moved_flows(
        &mut self,
        now: std::time::Instant,
        idle: Duration,
        force: bool,
    ) -> usize {
        if !force && now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return 0;
        }
        self.last_sweep = now;
        let moved = match self.prog.moved_flows() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("flow agent: reading the moved flows: {e}");
                return 0;
            }
        };
        let mut seen = std::collections::HashMap::with_capacity(moved.len());
        let mut gone = 0;
        for (key, v) in moved {
            let since = match self.moved_seen.get(&key) {
                Some((packets, since)) if *packets == v.packets => *since,
                _ => now,
            };
            if now.saturating_duration_since(since) >= idle {
                if self.prog.remove_flow(&key).unwrap_or(false) {
                    gone += 1;
                }
                continue;
            }
            seen.insert(key, (v.packets, since));
        }
        self.generations.retain(|k, _| seen.contains_key(k));
        self.moved_seen = seen;
        self.stats.moved_aged += gone as u64;
        gone
    }

    /// The tunnel program (bindings, flows, counters).
    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// Counters so far.
    pub fn stats(&self) -> FlowAgentStats {
        let mut s = self.stats;
        s.gate = self.gate.stats();
        s.channels = s.gate.authenticated;
        s.channel_errors =
            s.gate.failed + s.gate.timeouts + s.gate.refused_address + s.gate.evicted + self.broken;
        s
    }

    /// Sleep until a control socket is readable or `timeout` passes (so the agent answers a
    /// request as soon as it arrives without spinning).
    pub fn wait(&mut self, timeout: Duration) {
        self.wait_with(timeout, &[]);
    }

    /// [`FlowAgent::wait`], also waking when one of `extra` (the caller's sockets) is
    /// readable.
    pub fn wait_with(&mut self, timeout: Duration, extra: &[std::os::fd::RawFd]) {
        use std::os::fd::AsRawFd;
        self.poll.clear();
        let mut fds = Vec::new();
        self.gate.wait_fds(&mut fds);
        for fd in fds.iter().chain(extra) {
            self.poll.add(*fd);
        }
        for (c, _) in &self.chans {
            self.poll.add(c.stream().as_raw_fd());
        }
        let now = std::time::Instant::now();
        let timeout = if self.gate.has_pending_output() || self.more_input {
            Duration::ZERO
        } else {
            let gate = self.gate.poll_timeout();
            let probes = self.probes.iter().map(|p| p.at).min();
            [gate, probes]
                .into_iter()
                .flatten()
                .map(|t| t.saturating_duration_since(now))
                .fold(timeout, Duration::min)
        };
        // Errors (EINTR aside) would repeat at once; the caller polls the sockets either way
        // (without a hint then).
        self.waited = self.poll.wait(Some(timeout)).is_ok();
    }

    /// A node died (the membership's contact says so): its clients must learn it now, not
    /// after hours of keep-alive. Each TCP flow still pinned to `dead` is pointed at `to`, a
    /// live node, whose stack answers a segment of a connection it does not know with a reset
    /// (RFC 9293 §3.10.7.1: sequence number taken from the segment's acknowledgment, so the
    /// client accepts it); and each client is solicited with a segment outside its window,
    /// which it must acknowledge (RFC 9293 §3.10.7.4), so a client that only receives sends
    /// that segment at once. The solicitations go in bursts of [`SOLICIT_BURST`], one per
    /// [`SOLICIT_EVERY`] (the first now), and each again at [`SOLICIT_AGAIN`] (in case of
    /// loss). Returns how many flows were reset.
    pub fn reset_flows_of(&mut self, dead: std::net::Ipv6Addr, to: std::net::Ipv6Addr) -> usize {
        let flows = match self.prog.flows() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("flow table: {e}");
                return 0;
            }
        };
        let mut probes = Vec::new();
        for (key, val) in flows {
            if val.owner != dead || key.proto != 6 {
                continue;
            }
            if let Err(e) = self.prog.set_flow(&key, to) {
                tracing::warn!("moving a dead node's flow: {e}");
                continue;
            }
            // Bounded: a huge table of dead flows is moved whole but solicited in part
            // (the rest reset at their clients' next segment).
            if probes.len() < MAX_SOLICIT {
                probes.push(solicitation(&key, probes.len() as u32));
            }
        }
        let n = probes.len();
        self.stats.flows_reset += n as u64;
        let now = std::time::Instant::now();
        for (i, burst) in probes.chunks(SOLICIT_BURST).enumerate() {
            let at = now + SOLICIT_EVERY * i as u32;
            if i == 0 {
                self.solicit(now, Probe::new(now, burst.to_vec()));
            } else {
                self.probes.push(Probe::new(at, burst.to_vec()));
            }
            for again in SOLICIT_AGAIN {
                self.probes.push(Probe::new(at + again, burst.to_vec()));
            }
        }
        tracing::info!(%dead, %to, flows = n, "dead node: its clients are reset");
        n
    }

    /// Send the solicitations that are due.
    fn resolicit(&mut self) {
        let now = std::time::Instant::now();
        let (mut due, later): (Vec<_>, Vec<_>) = self.probes.drain(..).partition(|p| p.at <= now);
        self.probes = later;
        due.sort_by_key(|p| p.at);
        // One burst now; bursts that fell due together (a late wake-up) keep their spacing.
        for (k, mut p) in due.into_iter().enumerate() {
            if k == 0 {
                self.solicit(now, p);
            } else {
                p.at = now + SOLICIT_EVERY * k as u32;
                self.probes.push(p);
            }
        }
    }

    /// Send a burst of solicitations; what the outgoing device has no room for goes again
    /// after [`SOLICIT_EVERY`], up to [`MAX_DEFERRALS`] times. Any other failure is said, not
    /// retried (the rest of the burst is not sent): a repeat is itself the retry.
    fn solicit(&mut self, now: std::time::Instant, mut p: Probe) {
        match ds_kernel::inject_until_full(&p.packets) {
            Ok(n) if n < p.packets.len() => {
                p.packets.drain(..n);
                if p.deferrals < MAX_DEFERRALS {
                    self.stats.solicitations_deferred += p.packets.len() as u64;
                    p.deferrals += 1;
                    p.at = now + SOLICIT_EVERY;
                    self.probes.push(p);
                } else {
                    tracing::warn!(
                        packets = p.packets.len(),
                        "soliciting a dead node's clients: the link stays full; given up"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                packets = p.packets.len(),
                "soliciting a dead node's clients: {e}"
            ),
        }
    }

    /// Accept new control channels and answer every pending request; returns how many flows
    /// moved. Never blocks; unauthenticated channels are bounded by the gate.
    pub fn poll(&mut self) -> usize {
        self.more_input = false;
        if !self.probes.is_empty() {
            self.resolicit();
        }
        self.age_moved_flows(std::time::Instant::now(), MOVED_IDLE, false);
        // The gate's listener is tried, and a channel read, only when the wait before found
        // it readable (an `accept` or read failing with EAGAIN in every round otherwise) or
        // the channel can progress without input (`Channel::wants_poll`); no wait, no hint.
        use std::os::fd::AsRawFd;
        let waited = std::mem::take(&mut self.waited);
        let may_read =
            |poll: &ds_stack::device::PollSet, fd| !waited || poll.ready_fds().any(|r| r == fd);
        let set = &self.poll;
        for (c, peer) in self
            .gate
            .poll_hinted(std::time::Instant::now(), |fd| may_read(set, fd))
        {
            let held = self.chans.iter().map(|(_, ip)| *ip);
            if !ds_handoff::gate::admits_authenticated(held, peer.ip()) {
                self.stats.channels_refused += 1;
                tracing::warn!(%peer, "flow agent: control channel refused: too many held");
                continue;
            }
            tracing::debug!(%peer, "flow agent: control channel opened");
            self.chans.push((c, peer.ip()));
        }
        let mut moved = 0;
        let mut i = 0;
        while i < self.chans.len() {
            let ch = &self.chans[i].0;
            if !ch.wants_poll() && !may_read(&self.poll, ch.stream().as_raw_fd()) {
                i += 1;
                continue;
            }
            match self.serve(i) {
                Ok(n) => {
                    moved += n;
                    i += 1;
                }
                Err(e) => {
                    if !matches!(e, ds_handoff::ChannelError::Closed) {
                        tracing::warn!("flow agent: channel dropped: {e}");
                        self.broken += 1;
                    }
                    self.chans.swap_remove(i);
                }
            }
        }
        moved
    }

    /// A draining node asks for the home address's new flows to go to `to`.
    fn rebind(
        &mut self,
        conn_id: u64,
        home: std::net::Ipv6Addr,
        to: std::net::Ipv6Addr,
    ) -> Message {
        let known = self
            .prog
            .bindings()
            .map(|b| b.iter().any(|(h, _)| *h == home))
            .unwrap_or(false);
        let done = if known {
            self.prog.set_binding(home, to).map_err(|e| e.to_string())
        } else {
            // Only a home address this agent serves may be re-pointed.
            Err(format!("{home} is not a home address served here"))
        };
        match done {
            Ok(()) => {
                self.stats.rebinds += 1;
                tracing::info!(%home, %to, "binding moved (a node drains)");
                Message::Rebound {
                    conn_id,
                    ok: true,
                    detail: String::new(),
                }
            }
            Err(detail) => {
                self.stats.move_errors += 1;
                tracing::warn!(%home, %to, "rebind refused: {detail}");
                Message::Rebound {
                    conn_id,
                    ok: false,
                    detail,
                }
            }
        }
    }

    fn serve(&mut self, i: usize) -> Result<usize, ds_handoff::ChannelError> {
        let mut moved = 0;
        for taken in 0.. {
            if taken >= ds_handoff::MESSAGES_PER_TURN {
                // One node's stream of requests must not keep the others' waiting: the rest
                // in the next turn, which comes at once.
                self.more_input = true;
                break;
            }
            let Some(m) = self.chans[i].0.poll()? else {
                break;
            };
            let (conn_id, client, server, req) = match m {
                Message::MoveFlow {
                    conn_id,
                    client,
                    server,
                    ..
                } => match Request::of(&m) {
                    Some(req) => (conn_id, client, server, req),
                    None => continue,
                },
                Message::Rebind { conn_id, home, to } => {
                    let reply = self.rebind(conn_id, home, to);
                    self.chans[i].0.send(&reply)?;
                    continue;
                }
                _ => {
                    self.stats.unexpected += 1;
                    continue;
                }
            };
            let key = FlowKey {
                src: *client.ip(),
                dst: *server.ip(),
                sport: client.port(),
                dport: server.port(),
                proto: 6,
            };
            // How long the request waited in the socket (a stopped or busy agent reads it
            // late): the kernel's receive stamp of the read that brought it.
            let waited = self.chans[i]
                .0
                .arrival()
                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
            let last = self.generations.get(&key).copied();
            let verdict = flows::judge(last, &req, waited);
            if verdict != Verdict::Apply {
                // Fencing: the other side of this handoff won, a newer handoff moved the flow,
                // or the acceptor gave up on this move: applied, it would steer the client to
                // a node that does not hold the connection.
                self.stats.stale_moves += 1;
                tracing::info!(%client, to = %req.to, generation = req.generation, kind = ?req.kind(), ?last, ?waited, ?verdict, "flow move refused");
                self.chans[i]
                    .0
                    .send(&flows::answer(conn_id, verdict, last))?;
                continue;
            }
            let reply = match self.prog.set_flow(&key, req.to) {
                Ok(()) => {
                    self.generations.insert(key, Applied::of(&req));
                    self.stats.moves += 1;
                    moved += 1;
                    tracing::debug!(%client, %server, to = %req.to, "flow moved");
                    flows::answer(conn_id, Verdict::Apply, last)
                }
                Err(e) => {
                    self.stats.move_errors += 1;
                    if req.reclaim {
                        // The flow stays where it was, and it was not the acceptor's (its move
                        // would have won): its donor resumes, so a move of this handoff must
                        // not be applied after.
                        self.generations.insert(key, Applied::of(&req));
                    }
                    Message::FlowMoved {
                        conn_id,
                        ok: false,
                        taken: false,
                        detail: e.to_string(),
                    }
                }
            };
            self.chans[i].0.send(&reply)?;
        }
        Ok(moved)
    }
}

/// A bare ACK from the served end of `key`'s flow to its client, with sequence and
/// acknowledgment numbers far from anything the connection uses (so outside the client's
/// window, whatever it is): the client answers it with an ACK of its own.
fn solicitation(key: &FlowKey, salt: u32) -> Vec<u8> {
    use ds_stack::wire::{
        IpAddress, IpProtocol, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    use ds_stack::ChecksumCapabilities;
    let (src, dst) = (key.dst, key.src);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = now.wrapping_mul(2_654_435_761).wrapping_add(salt);
    let tcp = TcpRepr {
        src_port: key.dport,
        dst_port: key.sport,
        control: TcpControl::None,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(seq.rotate_left(16) as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.header_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.header_len()];
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
    let (s, d) = (IpAddress::Ipv6(src), IpAddress::Ipv6(dst));
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[ip.buffer_len()..]),
        &s,
        &d,
        &ChecksumCapabilities::default(),
    );
    buf
}
