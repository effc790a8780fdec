//! The handoff engine over the userspace host, in simulated time: the LAN's clock is the
//! engine's and the host's (`common::sim_clock`), messages go through in-memory links, so every
//! timeout fires at a known step and each failure case is deterministic.
//!
//! Cases (issue 9's acceptance list): offer timeout, refusal, acceptor crash, Accept without
//! Activated, steering failure (the home agent says no, or says nothing), a late packet
//! forwarded after the freeze; and a home agent that withholds its answer for a second while
//! another connection of the accepting node keeps transferring.

#[macro_use]
mod common;

use common::{
    ip, mem_pair, read_into, round, round12, set_sim, sim_clock, start_donor, Lan, Link, Mem, Raw,
    DS,
};
use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, Donor, DonorConfig, DonorOutcome, HandoffError,
    Message, Mode, Offer, RefuseReason, Steering, Takeover, UserConn,
};
use ds_stack::{TcpHandle, TcpState};
use std::net::SocketAddrV6;
use std::time::{Duration, Instant as Mono};

/// The LAN with the engine on simulated time.
struct Sim {
    lan: Lan,
    svcs: [Raw; 3],
    base: Mono,
}

impl Sim {
    fn new() -> Self {
        let mut lan = Lan::new();
        lan.clock = sim_clock;
        let s = Sim {
            lan,
            svcs: Default::default(),
            base: Mono::now(),
        };
        s.sync();
        s
    }

    /// Simulated monotonic time: the LAN's.
    fn now(&self) -> Mono {
        self.base + Duration::from_millis(self.lan.now.total_millis() as u64)
    }

    fn sync(&self) {
        set_sim(self.now());
    }

    /// One millisecond on the LAN.
    fn tick(&mut self) {
        self.lan.step();
        self.sync();
    }

    /// A connection from the client to the DS address on node 1: (client, server).
    fn connect(&mut self, port: u16) -> (TcpHandle, TcpHandle) {
        self.connect_to(1, ip(DS), port)
    }

    /// A connection from the client to `addr`:`port` served by node `n`: (client, server).
    fn connect_to(
        &mut self,
        n: usize,
        addr: std::net::Ipv6Addr,
        port: u16,
    ) -> (TcpHandle, TcpHandle) {
        let c = self
            .lan
            .connect(0, ip("fd00::3"), n, SocketAddrV6::new(addr, port, 0, 0));
        self.sync();
        c
    }

    /// A connection to node 1 with `n` bytes queued at its server end, and a donor handing it
    /// off per `cfg`: (client, the bytes, donor).
    fn begin(&mut self, n: usize, cfg: DonorConfig) -> (TcpHandle, Vec<u8>, Donor<UserConn>) {
        let (cl, srv) = self.connect(80);
        let bytes = data(n);
        self.lan.ifs[1].tcp_send(srv, &bytes).unwrap();
        (cl, bytes, self.donor(srv, cfg))
    }

    fn donor(&mut self, srv: TcpHandle, cfg: DonorConfig) -> Donor<UserConn> {
        let now = self.now();
        start_donor(&mut self.lan, &mut self.svcs, 1, srv, cfg, now)
    }

    /// Rounds (one per simulated millisecond) until the donor reports an outcome; returns it
    /// and the simulated time it took.
    #[allow(clippy::too_many_arguments)]
    fn run<'h>(
        &mut self,
        d: &mut Donor<UserConn>,
        ch_d: &mut dyn Link,
        acc: &mut Acceptor<u8, UserConn>,
        ch_a: &mut Option<Box<dyn Link>>,
        mut ha: Option<&mut (dyn Link + 'h)>,
        mut each: impl FnMut(&mut Sim, &[AcceptorEvent]),
    ) -> (DonorOutcome, Duration) {
        let t0 = self.now();
        for _ in 0..10_000 {
            let seen = self.round(Some(d), ch_d, acc, ch_a, ha.as_deref_mut());
            each(self, &seen.events);
            if let Some(o) = seen.outcome {
                return (o, self.now() - t0);
            }
            self.tick();
        }
        panic!("no outcome in 10 s of simulated time");
    }

    /// One round of the engines: the acceptor on node 2, then the donor (if any) on node 1.
    fn round<'h>(
        &mut self,
        d: Option<&mut Donor<UserConn>>,
        ch_d: &mut dyn Link,
        acc: &mut Acceptor<u8, UserConn>,
        ch_a: &mut Option<Box<dyn Link>>,
        ha: Option<&mut (dyn Link + 'h)>,
    ) -> common::Seen {
        round(&mut self.lan, &mut self.svcs, d, 1, ch_d, acc, 2, ch_a, ha)
    }

    /// [`Sim::run`] with `arbiter` as the home agent on `hl`'s other end (`each` sees it after
    /// every round), then `settle` more rounds: whatever either side still does after the
    /// outcome, it does then. The donor's outcome.
    #[allow(clippy::too_many_arguments)]
    fn run_arbitrated(
        &mut self,
        d: &mut Donor<UserConn>,
        ch_d: &mut dyn Link,
        acc: &mut Acceptor<u8, UserConn>,
        ch_a: &mut Option<Box<dyn Link>>,
        hl: &mut Mem,
        arbiter: &mut Arbiter,
        settle: usize,
        mut each: impl FnMut(&Arbiter),
    ) -> DonorOutcome {
        let (out, _) = self.run(d, ch_d, acc, ch_a, Some(hl), |s2, _| {
            arbiter.serve(s2.now());
            each(arbiter);
        });
        self.settle(settle, d, ch_d, acc, ch_a, hl, arbiter);
        out
    }

    /// `rounds` more rounds of both engines with `arbiter` as the home agent on `hl`'s other
    /// end.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        rounds: usize,
        d: &mut Donor<UserConn>,
        ch_d: &mut dyn Link,
        acc: &mut Acceptor<u8, UserConn>,
        ch_a: &mut Option<Box<dyn Link>>,
        hl: &mut Mem,
        arbiter: &mut Arbiter,
    ) {
        for _ in 0..rounds {
            self.round(Some(d), ch_d, acc, ch_a, Some(hl));
            arbiter.serve(self.now());
            self.tick();
        }
    }

    /// What the donor's service (node 1) and the acceptor's (node 2) adopted.
    fn held(&self) -> (usize, usize) {
        (self.svcs[1].adopted.len(), self.svcs[2].adopted.len())
    }

    /// The connection lives at node `n` (1 or 2) only: its service adopted it, the other
    /// node's neither adopted it nor holds a connection, and everything queued reaches the
    /// client from `n`.
    fn lives_only_at(&mut self, n: usize, cl: TcpHandle, expect: &[u8], case: &str) {
        let other = 3 - n;
        let want = if n == 1 { (1, 0) } else { (0, 1) };
        assert_eq!(
            self.held(),
            want,
            "{case}: adopted by the donor's service and the acceptor's"
        );
        assert_eq!(self.lan.ifs[other].tcp_connection_count(), 0, "{case}");
        let srv = self.svcs[n].adopted.pop().expect("adopted");
        self.assert_alive(cl, n, srv, expect);
    }

    /// The connection's client reads what arrives; the server end `srv` on node `n` is live
    /// and everything it had queued reaches the client.
    fn assert_alive(&mut self, cl: TcpHandle, n: usize, srv: TcpHandle, expect: &[u8]) {
        assert_eq!(self.lan.ifs[n].tcp_state(srv), Some(TcpState::Established));
        let mut got = Vec::new();
        for _ in 0..2000 {
            read_into(&mut self.lan.ifs[0], cl, &mut got);
            if got.len() >= expect.len() {
                break;
            }
            self.tick();
        }
        assert_bytes(&got, expect, "at the client");
    }
}

/// `got` is `want`, byte for byte (the message says how far it got).
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: {} of {} bytes intact",
        got.len(),
        want.len()
    );
}

/// A link as the acceptor's end in [`round`].
fn boxed(l: impl Link + 'static) -> Option<Box<dyn Link>> {
    Some(Box::new(l))
}

/// A connection already handed from node 1 to node 2 (the DS address served there as a home
/// address: nothing steers the client away from the donor), with the engine still running.
struct Moved {
    cl: TcpHandle,
    srv: TcpHandle,
    d: Donor<UserConn>,
    ch_d: Mem,
    ch_a: Option<Box<dyn Link>>,
    acc: Acceptor<u8, UserConn>,
}

impl Moved {
    fn new(s: &mut Sim, cfg: DonorConfig) -> Moved {
        let (cl, _, mut d) = s.begin(0, cfg);
        let (mut ch_d, ch_a) = mem_pair();
        let mut ch_a = boxed(ch_a);
        let mut acc = Acceptor::new(AcceptorConfig {
            takeover: Takeover::HomeAddress,
            ..acfg()
        });
        let (out, _) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, None, |_, _| {});
        assert_outcome!(out, DonorOutcome::Moved { .. });
        let srv = s.svcs[2].adopted.pop().expect("adopted");
        Moved {
            cl,
            srv,
            d,
            ch_d,
            ch_a,
            acc,
        }
    }

    /// One round of both nodes' engines.
    fn round(&mut self, s: &mut Sim) -> common::Seen {
        round12(
            &mut s.lan,
            &mut s.svcs,
            &mut self.d,
            &mut self.ch_d,
            &mut self.acc,
            &mut self.ch_a,
        )
    }
}

/// An acceptor steering through a home agent (transparent mode) that waits `timeout` for its
/// answer; the DS address is served as a home address (nothing else steers the client).
fn ha_steered(timeout: Duration) -> Acceptor<u8, UserConn> {
    Acceptor::new(acfg_steered(timeout))
}

/// [`ha_steered`]'s settings.
fn acfg_steered(timeout: Duration) -> AcceptorConfig {
    AcceptorConfig {
        steering: Steering::HomeAgentFlow { coa: ip("fd00::2") },
        steer_timeout: timeout,
        takeover: Takeover::HomeAddress,
        ..acfg()
    }
}

fn acfg() -> AcceptorConfig {
    AcceptorConfig::default()
}

/// A donor's settings with a reply timeout of `ms` milliseconds.
fn replying_within(id: u64, ms: u64) -> DonorConfig {
    let mut cfg = DonorConfig::new(id, "http");
    cfg.reply_timeout = Duration::from_millis(ms);
    cfg
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn offer_timeout_resumes_the_connection_at_the_deadline() {
    let mut s = Sim::new();
    let (cl, bytes, mut d) = s.begin(20_000, replying_within(1, 40));
    let (mut ch_d, _silent) = mem_pair();
    let mut acc = Acceptor::new(acfg());
    let (out, took) = s.run(&mut d, &mut ch_d, &mut acc, &mut None, None, |_, _| {});
    assert_outcome!(
        out,
        DonorOutcome::Resumed {
            cause: HandoffError::Timeout
        }
    );
    assert_eq!(took, Duration::from_millis(40), "the timeout fires on time");
    // The acceptor got the offer and then the donor's Abort.
    let log = ch_d.log.borrow().clone();
    assert!(matches!(log[1], Message::Offer(_)));
    assert!(matches!(
        log.last(),
        Some(Message::Abort { conn_id: 1, .. })
    ));
    let srv = s.svcs[1].adopted.pop().expect("the service continues it");
    s.assert_alive(cl, 1, srv, &bytes);
}

#[test]
fn refusal_resumes_the_connection_with_the_reason() {
    for (name, max, reason) in [
        ("smtp", 10, RefuseReason::UnknownService),
        ("http", 0, RefuseReason::Load),
    ] {
        let mut s = Sim::new();
        s.svcs[2].name = Some(name);
        let mut cfg = DonorConfig::new(2, "http");
        cfg.reclaim_via = Some(ip("fd00::1"));
        let (cl, bytes, mut d) = s.begin(5000, cfg);
        let (mut ch_d, ch_a) = mem_pair();
        let mut ch_a = boxed(ch_a);
        let mut acc = Acceptor::new(AcceptorConfig {
            max_connections: max,
            ..acfg()
        });
        let mut refused = None;
        let (out, _) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, None, |_, ev| {
            for e in ev {
                if let AcceptorEvent::Refused { reason, .. } = e {
                    refused = Some(reason.clone());
                }
            }
        });
        assert_eq!(refused.as_ref(), Some(&reason));
        assert!(
            matches!(&out, DonorOutcome::Resumed { cause: HandoffError::Refused(r) } if *r == reason),
            "{out:?}"
        );
        assert_eq!(s.lan.ifs[2].tcp_connection_count(), 0);
        // Refused by the offer's checks, before any flow move: nothing to reclaim.
        assert!(d.poll_transmit_home_agent().is_none());
        let srv = s.svcs[1].adopted.pop().unwrap();
        s.assert_alive(cl, 1, srv, &bytes);
    }
}

#[test]
fn acceptor_crash_resumes_the_connection() {
    let mut s = Sim::new();
    let (cl, bytes, mut d) = s.begin(8000, DonorConfig::new(3, "http"));
    let (mut ch_d, ch_a) = mem_pair();
    let broken = ch_a.broken.clone();
    let mut ch_a = boxed(Faulty(ch_a, Fault::Crash));
    let mut acc = Acceptor::new(acfg());
    let (out, took) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, None, |_, _| {});
    assert!(broken.get(), "the acceptor crashed on the offer");
    assert_outcome!(
        out,
        DonorOutcome::Resumed {
            cause: HandoffError::ChannelLost(_)
        }
    );
    assert!(
        took < Duration::from_millis(5),
        "no timeout waited: {took:?}"
    );
    let srv = s.svcs[1].adopted.pop().unwrap();
    s.assert_alive(cl, 1, srv, &bytes);
}

/// An acceptor that misbehaves on an offer.
#[derive(Clone, Copy)]
enum Fault {
    /// Its process dies as the offer arrives: the channel breaks both ways.
    Crash,
    /// It answers Accept and never Activated.
    AcceptOnly,
}

/// The donor's link to a faulty acceptor (the test reads it in place of the acceptor).
struct Faulty(Mem, Fault);

impl Link for Faulty {
    fn send(&mut self, m: &Message) -> Result<(), ds_handoff::ChannelError> {
        self.0.send(m)
    }
    fn recv(&mut self) -> Result<Option<Message>, ds_handoff::ChannelError> {
        let m = self.0.recv()?;
        match (&m, self.1) {
            (Some(Message::Offer(_)), Fault::Crash) => {
                self.0.broken.set(true);
                Err(ds_handoff::ChannelError::Closed)
            }
            (Some(Message::Offer(o)), Fault::AcceptOnly) => {
                self.0.send(&Message::Accept { conn_id: o.conn_id })?;
                Ok(m)
            }
            _ => Ok(m),
        }
    }
}

/// The donor's end of a channel that its process reads `late` after each message arrived (a
/// donor waiting for a CPU the acceptor's first window keeps): messages are stamped when they
/// arrive and handed over `late` later, with their stamp.
struct Late {
    inner: Mem,
    late: Duration,
    held: std::collections::VecDeque<(Mono, Message)>,
    last: Option<Mono>,
}

impl Late {
    fn new(inner: Mem, late: Duration) -> Late {
        Late {
            inner,
            late,
            held: Default::default(),
            last: None,
        }
    }
}

impl Link for Late {
    fn send(&mut self, m: &Message) -> Result<(), ds_handoff::ChannelError> {
        self.inner.send(m)
    }
    fn recv(&mut self) -> Result<Option<Message>, ds_handoff::ChannelError> {
        let now = common::sim_clock();
        while let Some(m) = self.inner.recv()? {
            self.held.push_back((now, m));
        }
        match self.held.front() {
            Some((t, _)) if now >= *t + self.late => {
                let (t, m) = self.held.pop_front().expect("front");
                self.last = Some(t);
                Ok(Some(m))
            }
            _ => Ok(None),
        }
    }
    fn arrival(&self) -> Option<Mono> {
        self.last
    }
}

/// Phase 2 is the exchange's network time: a reply that the donor's process reads 3 ms after
/// it arrived ends phase 2 at its arrival (the channel's receive stamp), and only the wall
/// time, which ends at the reading, grows.
#[test]
fn a_reply_read_late_ends_phase_two_at_its_arrival() {
    let report = |late: u64| {
        let mut s = Sim::new();
        let (_cl, _, mut d) = s.begin(0, DonorConfig::new(9, "http"));
        let (ch_d, ch_a) = mem_pair();
        let mut ch_d = Late::new(ch_d, Duration::from_millis(late));
        let mut ch_a = boxed(ch_a);
        let mut acc = Acceptor::new(AcceptorConfig {
            takeover: Takeover::HomeAddress,
            ..acfg()
        });
        let (out, _) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, None, |_, _| {});
        match out {
            DonorOutcome::Moved { report, .. } => report,
            o => panic!("not moved: {o:?}"),
        }
    };
    let (on_time, late) = (report(0), report(3));
    assert!(on_time.phases_us[1] > 0.0, "{on_time:?}");
    assert_eq!(late.phases_us[1], on_time.phases_us[1], "{late:?}");
    assert_eq!(late.wall_us - on_time.wall_us, 3000.0, "{late:?}");
}

#[test]
fn accept_without_activated_is_in_doubt_and_not_thawed_back() {
    let mut s = Sim::new();
    let (_cl, _, mut d) = s.begin(0, replying_within(4, 30));
    let (mut ch_d, ch_a) = mem_pair();
    // The acceptor answers Accept and then nothing.
    let mut ch_a = boxed(Faulty(ch_a, Fault::AcceptOnly));
    let mut nobody = Acceptor::new(acfg());
    let (out, took) = s.run(&mut d, &mut ch_d, &mut nobody, &mut None, None, |s2, _| {
        if let Some(l) = ch_a.as_mut() {
            while let Ok(Some(_)) = l.recv() {}
        }
        let _ = s2;
    });
    assert_outcome!(
        out,
        DonorOutcome::Failed {
            cause: HandoffError::InDoubt(_)
        }
    );
    // The Accept arrives one round (1 ms) after the offer; the reply timeout runs from it.
    assert_eq!(
        took,
        Duration::from_millis(31),
        "after the reply timeout from Accept"
    );
    assert_eq!(s.lan.ifs[1].tcp_connection_count(), 0, "not thawed back");
    assert!(s.svcs[1].adopted.is_empty());
}

/// The home agent refuses the flow move, or does not answer: the acceptor refuses the offer
/// (its dormant thaw discarded, nothing sent to the client) and the donor keeps the
/// connection, reclaiming the flow with force.
#[test]
fn steering_failure_refuses_and_the_donor_keeps_the_connection() {
    for answer in [Some(false), None] {
        let mut s = Sim::new();
        let mut cfg = DonorConfig::new(5, "http");
        cfg.generation = 1 << 52;
        cfg.reclaim_via = Some(ip("fd00::1"));
        let (cl, bytes, mut d) = s.begin(7000, cfg);
        let (mut ch_d, ch_a) = mem_pair();
        let mut ch_a = boxed(ch_a);
        let (mut hl, mut ha) = mem_pair();
        let mut acc = ha_steered(Duration::from_millis(25));
        let mut moves = 0;
        let mut reclaims = Vec::new();
        let each = |s2: &mut Sim, _: &[AcceptorEvent]| {
            // The home agent.
            while let Ok(Some(m)) = ha.recv() {
                let Message::MoveFlow {
                    conn_id,
                    generation,
                    reclaim,
                    ..
                } = m
                else {
                    panic!("{m:?}")
                };
                if reclaim {
                    // Nothing was moved: the donor's reclaim wins.
                    let req = ds_handoff::flows::Request::of(&m).unwrap();
                    let v = ds_handoff::flows::judge(None, &req, None);
                    ha.send(&ds_handoff::flows::answer(conn_id, v, None))
                        .unwrap();
                    reclaims.push(m);
                    continue;
                }
                // The acceptor's move carries the offer's generation.
                assert_eq!((generation, reclaim), (1 << 52, false));
                moves += 1;
                if let Some(ok) = answer {
                    ha.send(&Message::FlowMoved {
                        conn_id,
                        ok,
                        taken: false,
                        detail: "no such binding".into(),
                    })
                    .unwrap();
                }
            }
            // While the offer waits for steering, the thawed connection is dormant.
            assert!(s2.lan.ifs[2].tcp_connection_count() == 0);
        };
        let (out, took) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, Some(&mut hl), each);
        assert_eq!(moves, 1);
        assert!(
            matches!(&out, DonorOutcome::Resumed { cause: HandoffError::Refused(RefuseReason::Other(r)) } if r.starts_with("steering")),
            "{out:?}"
        );
        // The acceptor refused, having dropped its copy: the donor took the flow back with
        // force (a move applied after the acceptor gave up must not keep it) and resumed.
        let client = s.lan.ifs[0].tcp_endpoints(cl).map(|e| e.0).unwrap();
        assert_eq!(
            reclaims,
            [Message::MoveFlow {
                conn_id: 5 | ds_handoff::RECLAIM_ID,
                client,
                server: SocketAddrV6::new(ip(DS), 80, 0, 0),
                to: ip("fd00::1"),
                generation: 1 << 52,
                reclaim: true,
                force: true,
                valid_us: None,
            }],
            "once"
        );
        assert!(d.poll_transmit_home_agent().is_none());
        if answer.is_none() {
            assert!(
                took >= Duration::from_millis(25),
                "the steering timeout: {took:?}"
            );
        }
        let ds = SocketAddrV6::new(ip(DS), 80, 0, 0);
        assert!(
            {
                let now = s.lan.now;
                s.lan.ifs[2].tcp_hold(now, ds, client).is_ok()
            } && s.lan.ifs[2].tcp_forget_frozen(ds, client).is_empty(),
            "nothing left reserved on the acceptor"
        );
        let srv = s.svcs[1].adopted.pop().unwrap();
        s.assert_alive(cl, 1, srv, &bytes);
    }
}

/// The client keeps sending after the freeze; its packets still reach the donor (the
/// acceptor serves the DS address as a home address, so nothing steers them away): the donor
/// holds them and forwards them; the acceptor's connection receives every byte, and the
/// client retransmits nothing.
#[test]
fn late_packets_after_the_freeze_are_forwarded() {
    let mut s = Sim::new();
    let mut cfg = DonorConfig::new(6, "http");
    cfg.forward_grace = Duration::from_secs(5);
    let mut m = Moved::new(&mut s, cfg);
    // Now the client uploads.
    let up = data(300_000);
    let (mut sent, mut got) = (0, Vec::new());
    let mut forwarded = 0;
    for _ in 0..5000 {
        if sent < up.len() {
            sent += s.lan.ifs[0].tcp_send(m.cl, &up[sent..]).unwrap();
        }
        for e in m.round(&mut s).events {
            if let AcceptorEvent::Forwarded { packets, .. } = e {
                forwarded += packets;
            }
        }
        read_into(&mut s.lan.ifs[2], m.srv, &mut got);
        if got.len() == up.len() {
            break;
        }
        s.tick();
    }
    assert_bytes(&got, &up, "at the acceptor, through the donor");
    assert!(forwarded > 100, "forwarded {forwarded}");
    assert_eq!(s.lan.ifs[0].stats().tcp_retransmits, 0);
}

/// The home agent withholds its answer to a flow move for a second. The acceptor's loop
/// never waits for it: another connection on the accepting node keeps transferring all that
/// second, and the handoff completes when the answer comes.
#[test]
fn a_slow_home_agent_stalls_no_other_connection() {
    let mut s = Sim::new();
    // Another client connection served by node 2 (its own address).
    let (other_cl, other_srv) = s.connect_to(2, ip("fd00::2"), 8080);
    let (_cl, _, mut d) = s.begin(0, DonorConfig::new(7, "http"));
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a = boxed(ch_a);
    let (mut hl, mut ha) = mem_pair();
    let mut acc = ha_steered(Duration::from_secs(2));
    // A paced stream: 16 KiB per millisecond.
    let chunk = data(16 << 10);
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let mut asked: Option<(Mono, u64)> = None;
    let mut during = Vec::new();
    let each = |s2: &mut Sim, _: &[AcceptorEvent]| {
        // The other connection: node 2 streams, the client reads.
        s2.lan.ifs[2].tcp_send(other_srv, &chunk).unwrap();
        while let Ok(k) = s2.lan.ifs[0].tcp_recv(other_cl, &mut buf) {
            if k == 0 {
                break;
            }
            got += k;
        }
        // The home agent answers a second after the request.
        while let Ok(Some(Message::MoveFlow { conn_id, .. })) = ha.recv() {
            asked = Some((s2.now(), conn_id));
        }
        if let Some((at, id)) = asked {
            if s2.now() < at + Duration::from_secs(1) {
                during.push(got);
            } else {
                ha.send(&Message::FlowMoved {
                    conn_id: id,
                    ok: true,
                    taken: false,
                    detail: String::new(),
                })
                .unwrap();
                asked = None;
            }
        }
    };
    let (out, took) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, Some(&mut hl), each);
    assert_outcome!(out, DonorOutcome::Moved { .. });
    assert!(
        took >= Duration::from_secs(1),
        "waited for the home agent: {took:?}"
    );
    assert!(
        during.len() >= 990,
        "the loop ran every millisecond: {}",
        during.len()
    );
    let (first, last) = (during[0], during[during.len() - 1]);
    assert!(
        last - first > 10_000_000,
        "the other connection transferred {} bytes while the home agent was silent",
        last - first
    );
    assert!(s.svcs[2].adopted.pop().is_some());
}

/// Packets keep reaching the donor long after the move (route optimisation whose Binding
/// Update was lost keeps the client sending to the home address until the mobile node resends
/// it a second later): the donor forwards them as long as they come, not only for its 200 ms
/// grace period, after which the client's next packet would have been answered with a reset.
/// Once they stop for the grace period, forwarding ends.
#[test]
fn forwarding_lasts_while_packets_keep_coming() {
    let mut s = Sim::new();
    let cfg = DonorConfig::new(7, "http");
    assert_eq!(cfg.forward_grace, Duration::from_millis(200));
    let mut m = Moved::new(&mut s, cfg);
    // The client sends a little every 20 ms for 1.5 s, then nothing: all of it through the
    // donor.
    let up = data(75 * 400);
    let mut got = Vec::new();
    for ms in 0..1550 {
        if ms < 1500 && ms % 20 == 0 {
            let k = ms / 20 * 400;
            assert_eq!(s.lan.ifs[0].tcp_send(m.cl, &up[k..k + 400]).unwrap(), 400);
        }
        m.round(&mut s);
        read_into(&mut s.lan.ifs[2], m.srv, &mut got);
        s.tick();
    }
    assert_bytes(&got, &up, "at the acceptor, through the donor, for 1.5 s");
    assert_eq!(s.lan.ifs[0].tcp_state(m.cl), Some(TcpState::Established));
    assert!(
        !m.d.is_done(),
        "still forwarding 50 ms after the last packet"
    );
    // Nothing more comes: forwarding ends one grace period later.
    for _ in 0..300 {
        m.round(&mut s);
        s.tick();
    }
    assert!(m.d.is_done(), "forwarding ended");
}

/// A donor's Forward feeds only a connection that donor handed here, and only with that
/// connection's packets (the host injects what it is given; a kernel host sends it out): a
/// packet of another connection of the acceptor's node in it, or a Forward naming no handoff
/// of the donor's, is dropped and counted, and the other connection never sees it.
#[test]
fn a_forward_feeds_only_the_connection_its_donor_handed_here() {
    let mut s = Sim::new();
    let mut m = Moved::new(&mut s, DonorConfig::new(7, "http"));
    let (vc, vs) = s.connect_to(2, ip("fd00::2"), 81);
    // The client's next segments on both connections, taken off the wire.
    s.lan.ifs[0].tcp_send(m.cl, b"moved").unwrap();
    s.lan.ifs[0].tcp_send(vc, b"victim").unwrap();
    let (mut moved, mut victim) = (Vec::new(), Vec::new());
    let now = s.lan.now;
    s.lan.ifs[0].transmit(now, &mut |f: &[u8]| {
        // IPv6 (14) + TCP destination port (40 + 2).
        match u16::from_be_bytes([f[56], f[57]]) {
            80 => moved.push(f[14..].to_vec()),
            81 => victim.push(f[14..].to_vec()),
            _ => {}
        }
    });
    assert_eq!((moved.len(), victim.len()), (1, 1));
    let forward = |conn_id, packets: &[&Vec<u8>]| {
        let mut p = ds_stack::Packets::new();
        for q in packets {
            p.push(q);
        }
        Message::Forward {
            conn_id,
            packets: p,
        }
    };
    let mut forwarded = Vec::new();
    for msg in [
        forward(7, &[&moved[0], &victim[0]]),
        forward(99, &[&moved[0]]),
    ] {
        m.ch_d.send(&msg).unwrap();
        let seen = m.round(&mut s);
        forwarded.extend(seen.events.into_iter().filter_map(|e| match e {
            AcceptorEvent::Forwarded {
                conn_id,
                packets,
                refused,
            } => Some((conn_id, packets, refused)),
            _ => None,
        }));
    }
    assert_eq!(forwarded, [(7, 1, 1), (99, 0, 1)]);
    let mut got = Vec::new();
    read_into(&mut s.lan.ifs[2], m.srv, &mut got);
    assert_eq!(got, b"moved");
    assert_eq!(
        s.lan.ifs[2].tcp_recv_available(vs),
        0,
        "nothing reached the other connection"
    );
    assert_eq!(s.lan.ifs[2].tcp_state(vs), Some(TcpState::Established));
}

/// An acceptor that repeats `Steered` (a broken or hostile peer) extends the donor's
/// forwarding by a grace period each time, but never past `MAX_FORWARD` after it began: the
/// donor ends, and its host's hold on the flow with it.
#[test]
fn a_repeated_steered_keeps_no_donor_forwarding_past_its_limit() {
    let mut s = Sim::new();
    let mut m = Moved::new(&mut s, DonorConfig::new(7, "http"));
    let began = s.now();
    let limit = ds_handoff::MAX_FORWARD + Duration::from_millis(250);
    while s.now() - began < limit + Duration::from_secs(8) {
        if let Some(ch) = m.ch_a.as_mut() {
            ch.send(&Message::Steered {
                conn_id: 7,
                steer_ns: 1,
            })
            .unwrap();
        }
        m.round(&mut s);
        if m.d.is_done() {
            break;
        }
        for _ in 0..100 {
            s.tick();
        }
    }
    assert!(
        m.d.is_done(),
        "still forwarding {:?} after the move",
        s.now() - began
    );
    assert!(s.now() - began <= limit, "{:?}", s.now() - began);
}

/// Route optimisation: a client that still sends home has not got the acceptor's Binding
/// Update, and may then fall silent for longer than the grace period (here while the
/// acceptor waits for its retransmission timeout). Its next packet must still be forwarded,
/// not answered with a reset: the donor forwards until the mobile node's resent Binding
/// Update (a second after the first, RFC 6275 §11.8) has had its grace too.
#[test]
fn route_optimised_forwarding_outlasts_a_silence_before_the_binding_update_is_resent() {
    let mut s = Sim::new();
    let mut cfg = DonorConfig::new(7, "http");
    cfg.mode = Mode::Ro;
    let mut m = Moved::new(&mut s, cfg);
    let up = data(800);
    let mut got = Vec::new();
    // One packet home at once, then 500 ms of silence (over the 200 ms grace), then another.
    for ms in 0..1000 {
        if ms == 0 || ms == 500 {
            let k = if ms == 0 { 0 } else { 400 };
            assert_eq!(s.lan.ifs[0].tcp_send(m.cl, &up[k..k + 400]).unwrap(), 400);
        }
        m.round(&mut s);
        read_into(&mut s.lan.ifs[2], m.srv, &mut got);
        s.tick();
    }
    assert_bytes(
        &got,
        &up,
        "at the acceptor, through the donor, across the silence",
    );
    assert_eq!(s.lan.ifs[0].tcp_state(m.cl), Some(TcpState::Established));
    // Nothing more comes: forwarding ends after the resent Binding Update's grace (1.2 s
    // after the move) at the latest.
    for _ in 0..300 {
        m.round(&mut s);
        s.tick();
    }
    assert!(m.d.is_done(), "forwarding ended");
}

/// One round of node 1 handing to node 2, the acceptor's home agent on `hl`: the results of
/// the moves steered ahead that the acceptor reported in it.
fn steer_round(
    s: &mut Sim,
    d: &mut Donor<UserConn>,
    ch_d: &mut Mem,
    acc: &mut Acceptor<u8, UserConn>,
    ch_a: &mut Option<Box<dyn Link>>,
    hl: &mut Mem,
) -> Vec<Result<Duration, String>> {
    let seen = round(
        &mut s.lan,
        &mut s.svcs,
        Some(d),
        1,
        ch_d,
        acc,
        2,
        ch_a,
        Some(hl),
    );
    seen.events
        .into_iter()
        .filter_map(|e| match e {
            AcceptorEvent::Steered { result, .. } => Some(result),
            _ => None,
        })
        .collect()
}

/// Steering ahead (`AcceptorConfig::steer_ahead`): the acceptor commits as soon as its flow
/// move is sent, so the handoff completes while the home agent is still silent; the move is
/// asked for again every steering timeout. Until the acceptor relays the home agent's answer
/// (`Steered`), the donor forwards whatever still reaches it, across a silence of the client
/// longer than the grace period (the flow may still come its way); after the answer,
/// forwarding ends one grace period after the last packet.
#[test]
fn steering_ahead_commits_before_the_home_agent_answers_and_forwards_until_steered() {
    let mut s = Sim::new();
    let mut cfg = DonorConfig::new(5, "http");
    cfg.generation = 1 << 40;
    let (cl, bytes, mut d) = s.begin(7000, cfg);
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a = boxed(ch_a);
    let (mut hl, mut ha) = mem_pair();
    let mut acc = Acceptor::new(AcceptorConfig {
        steer_ahead: true,
        ..acfg_steered(Duration::from_millis(25))
    });
    acc.set_home_agent_ready(true);
    let mut asked: Vec<(Mono, Message)> = Vec::new();
    let (out, took) = s.run(
        &mut d,
        &mut ch_d,
        &mut acc,
        &mut ch_a,
        Some(&mut hl),
        |s2, _| {
            while let Ok(Some(m)) = ha.recv() {
                asked.push((s2.now(), m));
            }
        },
    );
    assert_outcome!(out, DonorOutcome::Moved { .. });
    assert!(
        took < Duration::from_millis(25),
        "committed without the home agent's answer: {took:?}"
    );
    assert_eq!(asked.len(), 1, "one flow move so far");
    assert!(matches!(
        asked[0].1,
        Message::MoveFlow {
            generation: 0x100_0000_0000,
            reclaim: false,
            ..
        }
    ));
    assert_eq!(acc.unsteered(), 1);
    let srv = s.svcs[2].adopted.pop().expect("adopted at once");
    s.assert_alive(cl, 2, srv, &bytes);
    // The client sends at 0 ms and again after 500 ms of silence (over the 200 ms grace);
    // the home agent answers at 800 ms.
    let up = data(800);
    let mut got = Vec::new();
    let mut steered = Vec::new();
    let t0 = s.now();
    let mut answered = false;
    for ms in 0..1200u64 {
        if ms == 0 || ms == 500 {
            let k = if ms == 0 { 0 } else { 400 };
            assert_eq!(s.lan.ifs[0].tcp_send(cl, &up[k..k + 400]).unwrap(), 400);
        }
        steered.extend(steer_round(
            &mut s, &mut d, &mut ch_d, &mut acc, &mut ch_a, &mut hl,
        ));
        while let Ok(Some(m)) = ha.recv() {
            asked.push((s.now(), m));
        }
        if ms == 800 && !answered {
            let Some((_, Message::MoveFlow { conn_id, .. })) = asked.last() else {
                panic!("{asked:?}")
            };
            ha.send(&Message::FlowMoved {
                conn_id: *conn_id,
                ok: true,
                taken: false,
                detail: String::new(),
            })
            .unwrap();
            answered = true;
        }
        read_into(&mut s.lan.ifs[2], srv, &mut got);
        if ms == 990 {
            assert!(
                !d.is_done(),
                "forwarding lasts a grace period after the answer"
            );
        }
        s.tick();
    }
    assert_bytes(
        &got,
        &up,
        "at the acceptor, through the donor, across the silence",
    );
    assert_eq!(s.lan.ifs[0].tcp_state(cl), Some(TcpState::Established));
    // Asked again every 25 ms until answered (the first at the handoff, then ~32 more).
    assert!(
        (30..=36).contains(&asked.len()),
        "{} flow moves asked for in {:?}",
        asked.len(),
        s.now() - t0
    );
    assert!(
        asked.iter().all(|(_, m)| m == &asked[0].1),
        "the same move each time"
    );
    assert_eq!(steered.len(), 1);
    assert!(
        matches!(steered[0], Ok(t) if t >= Duration::from_millis(800)),
        "{steered:?}"
    );
    assert_eq!(acc.unsteered(), 0);
    assert!(
        d.is_done(),
        "forwarding ended after the answer and its grace"
    );
}

/// The home agent refuses a move steered ahead: the connection already runs at the acceptor
/// and stays there (nothing is reset); the failure is reported, and not asked again.
#[test]
fn a_refused_move_steered_ahead_is_reported_and_the_connection_lives() {
    let mut s = Sim::new();
    let (cl, bytes, mut d) = s.begin(7000, DonorConfig::new(5, "http"));
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a = boxed(ch_a);
    let (mut hl, mut ha) = mem_pair();
    let mut acc = Acceptor::new(AcceptorConfig {
        steer_ahead: true,
        ..acfg_steered(Duration::from_millis(25))
    });
    acc.set_home_agent_ready(true);
    let mut results = Vec::new();
    let (out, _) = s.run(
        &mut d,
        &mut ch_d,
        &mut acc,
        &mut ch_a,
        Some(&mut hl),
        |_, events| {
            while let Ok(Some(Message::MoveFlow { conn_id, .. })) = ha.recv() {
                ha.send(&Message::FlowMoved {
                    conn_id,
                    ok: false,
                    taken: false,
                    detail: "stale generation".into(),
                })
                .unwrap();
            }
            for e in events {
                if let AcceptorEvent::Steered { result, .. } = e {
                    results.push(result.clone());
                }
            }
        },
    );
    assert_outcome!(out, DonorOutcome::Moved { .. });
    let srv = s.svcs[2].adopted.pop().expect("adopted");
    for _ in 0..50 {
        results.extend(steer_round(
            &mut s, &mut d, &mut ch_d, &mut acc, &mut ch_a, &mut hl,
        ));
        assert!(ha.recv().unwrap().is_none(), "not asked again");
        s.tick();
    }
    assert_eq!(results, vec![Err("stale generation".to_string())]);
    assert_eq!(acc.unsteered(), 0);
    s.assert_alive(cl, 2, srv, &bytes);
}

/// Steering ahead needs the channel to the home agent up: without it the acceptor waits for
/// the answer as before (and refuses the offer when none comes).
#[test]
fn steering_ahead_waits_while_the_home_agent_channel_is_down() {
    let mut s = Sim::new();
    let (cl, bytes, mut d) = s.begin(7000, DonorConfig::new(5, "http"));
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a = boxed(ch_a);
    let (mut hl, _ha) = mem_pair();
    let mut acc = Acceptor::new(AcceptorConfig {
        steer_ahead: true,
        ..acfg_steered(Duration::from_millis(25))
    });
    acc.set_home_agent_ready(false);
    let (out, _) = s.run(
        &mut d,
        &mut ch_d,
        &mut acc,
        &mut ch_a,
        Some(&mut hl),
        |_, _| {},
    );
    assert!(
        matches!(&out, DonorOutcome::Resumed { cause: HandoffError::Refused(RefuseReason::Other(r)) } if r.starts_with("steering")),
        "{out:?}"
    );
    let srv = s.svcs[1].adopted.pop().unwrap();
    s.assert_alive(cl, 1, srv, &bytes);
}

/// The home agent answers the acceptor's flow move `delay` after it was asked, around the
/// donor's reply deadline (30 ms), the donor's reclaim as soon as it comes (overtaking the
/// move), the acceptor's messages reaching the donor `late` after they were sent (a LAN's
/// round trip is far less, but a loaded node's process may read them that late): whatever the
/// delays, the connection ends up at exactly one node, and everything reaches the client from
/// there. Before offers carried their commit window, an Accept that
/// left just before the donor's deadline and arrived after it found the connection thawed
/// back at the donor, and the acceptor activated it too (28 ms, 2 ms: live at both).
#[test]
fn a_late_home_agent_never_leaves_the_connection_at_both_nodes() {
    for late in [0u64, 2, 5] {
        for delay in [5u64, 15, 20, 24, 28, 29, 30, 31, 35, 60] {
            late_home_agent(late, delay);
        }
    }
}

fn late_home_agent(late: u64, delay: u64) {
    let mut s = Sim::new();
    let mut cfg = replying_within(8, 30);
    cfg.reclaim_via = Some(ip("fd00::1"));
    let (cl, bytes, mut d) = s.begin(6000, cfg);
    let (ch_d, ch_a) = mem_pair();
    let mut ch_d = Late::new(ch_d, Duration::from_millis(late));
    let mut ch_a = boxed(ch_a);
    let (mut hl, ha) = mem_pair();
    let mut acc = ha_steered(Duration::from_secs(1));
    let mut arbiter = Arbiter::new(ha, Duration::from_millis(delay));
    // Then both engines run on for a while: whatever the acceptor still does, it does then.
    let out = s.run_arbitrated(
        &mut d,
        &mut ch_d,
        &mut acc,
        &mut ch_a,
        &mut hl,
        &mut arbiter,
        200,
        |_| {},
    );
    let case = format!("home agent {delay} ms, channel {late} ms: {out:?}");
    let held = s.held();
    assert!(
        held == (1, 0) || held == (0, 1),
        "{case}: adopted by the donor's service and the acceptor's: {held:?}, connections {:?}",
        (
            s.lan.ifs[1].tcp_connection_count(),
            s.lan.ifs[2].tcp_connection_count()
        )
    );
    // Within three quarters of the deadline (22.5 ms, counted from the offer's arrival, a
    // round after it left) the handoff is made.
    if delay + 3 <= 22 {
        assert_outcome!(out, DonorOutcome::Moved { .. });
    }
    if held.0 == 1 {
        let srv = s.svcs[1].adopted.pop().expect("adopted");
        s.assert_alive(cl, 1, srv, &bytes);
    }
}

/// A home agent's flow table for the handoff's flow, judging requests as the real one does
/// (`ds_handoff::flows`, protocol 7: the first of the acceptor's move and the donor's reclaim
/// wins): it reads the acceptor's moves `delay` after they came, reclaims at once.
struct Arbiter {
    /// The home agent's end of its link.
    ha: Mem,
    last: Option<ds_handoff::flows::Applied>,
    moves: std::collections::VecDeque<(Mono, Message)>,
    delay: Duration,
    /// Every request and the verdict on it.
    decided: Vec<(Message, ds_handoff::flows::Verdict)>,
    /// Its answers to moves are lost on their way.
    lose_move_answers: bool,
    /// Of the requests that came together, the reclaims are read first (else in order).
    reclaims_first: bool,
}

impl Arbiter {
    fn new(ha: Mem, delay: Duration) -> Arbiter {
        Arbiter {
            ha,
            last: None,
            moves: Default::default(),
            delay,
            decided: Vec::new(),
            lose_move_answers: false,
            reclaims_first: false,
        }
    }

    /// Read the requests at `now` and answer those due.
    fn serve(&mut self, now: Mono) {
        while let Ok(Some(m)) = self.ha.recv() {
            let reclaim = Message::conn_id(&m) & ds_handoff::RECLAIM_ID != 0;
            if reclaim || (self.delay.is_zero() && !self.reclaims_first && self.moves.is_empty()) {
                self.decide(m, None);
            } else {
                self.moves.push_back((now, m));
            }
        }
        while self
            .moves
            .front()
            .is_some_and(|(at, _)| now >= *at + self.delay)
        {
            let (at, m) = self.moves.pop_front().expect("front");
            self.decide(m, Some(now - at));
        }
    }

    fn decide(&mut self, m: Message, waited: Option<Duration>) {
        use ds_handoff::flows::{answer, judge, Applied, Request, Verdict};
        let req = Request::of(&m).expect("a flow move");
        let v = judge(self.last, &req, waited);
        let before = self.last;
        if v == Verdict::Apply {
            self.last = Some(Applied::of(&req));
        }
        if req.reclaim || !self.lose_move_answers {
            let _ = self.ha.send(&answer(m.conn_id(), v, before));
        }
        self.decided.push((m, v));
    }
}

/// Transparent mode, the channel between donor and acceptor fails once the home agent has
/// moved the flow: on the Accept, silently (written, then lost: a partition) or with an error
/// on its write (a reset), or on the Activated. Before the home agent decided, the acceptor
/// activated on a written Accept and the donor, which never saw it, resumed the connection
/// too: live at both. Now the acceptor activates whatever happens to the channel (the flow
/// is its since the move), and the donor's reclaim finds the flow taken: it does not resume,
/// and everything its server end had queued reaches the client from the acceptor. The same
/// with an acceptor steering ahead (its move leaves with the commit); there the donor's
/// reclaim can reach the home agent before the move when the channel resets on the Accept's
/// write (read first here), and then the acceptor, whose Accept never left, waits for its
/// move's answer, finds it taken and drops its copy: the donor keeps the connection. (Once
/// an acceptor steering ahead has activated, a reclaim that overtakes its move leaves its
/// copy without packets: the price of steering ahead, not covered.)
#[test]
fn an_accept_lost_with_the_channel_after_the_move_leaves_the_connection_at_the_acceptor() {
    // Messages in order: Prepare (0), the Offer (1), the Accept (2), Activated (3).
    let cases = [(2, true), (2, false), (3, true), (3, false)];
    let ahead = [(false, false), (true, false)];
    for ((ahead, reclaims_first), (at, silent)) in ahead
        .into_iter()
        .flat_map(|a| cases.map(|c| (a, c)))
        .chain([((true, true), (2, false))])
    {
        let mut s = Sim::new();
        let mut cfg = replying_within(14, 50);
        cfg.reclaim_via = Some(ip("fd00::1"));
        let (cl, bytes, mut d) = s.begin(5000, cfg);
        let (mut ch_d, mut ch_a) = break_at(at, silent);
        let (mut hl, ha) = mem_pair();
        let mut acc = Acceptor::new(AcceptorConfig {
            steer_ahead: ahead,
            ..acfg_steered(Duration::from_secs(1))
        });
        acc.set_home_agent_ready(true);
        let mut arbiter = Arbiter::new(ha, Duration::ZERO);
        arbiter.reclaims_first = reclaims_first;
        let out = s.run_arbitrated(
            &mut d,
            &mut ch_d,
            &mut acc,
            &mut ch_a,
            &mut hl,
            &mut arbiter,
            200,
            |_| {},
        );
        let case = format!(
            "failed at message {at} (silent: {silent}, ahead: {ahead}, reclaims first: \
             {reclaims_first}): {out:?}"
        );
        use ds_handoff::flows::Verdict::{Apply, Taken};
        let verdicts: Vec<_> = arbiter.decided.iter().map(|(_, v)| *v).collect();
        if ahead && reclaims_first && (at, silent) == (2, false) {
            // The reclaim won: the donor resumed, the acceptor dropped its copy.
            assert!(matches!(&out, DonorOutcome::Resumed { .. }), "{case}");
            assert_eq!(verdicts, [Apply, Taken], "{case}");
            s.lives_only_at(1, cl, &bytes, &case);
            continue;
        }
        assert!(
            matches!(
                &out,
                DonorOutcome::Failed {
                    cause: HandoffError::InDoubt(_)
                }
            ),
            "{case}"
        );
        if at == 2 {
            // The donor asked, and the acceptor's move had come first.
            assert_eq!(verdicts, [Apply, Taken], "{case}");
        }
        s.lives_only_at(2, cl, &bytes, &case);
    }
}

/// Transparent mode, the channel between donor and acceptor resets while the acceptor's flow
/// move is on its way to the home agent, which applies it: the acceptor keeps its offer
/// until the answer, then activates the connection (the flow is its); the donor's reclaim
/// finds the flow taken and it drops its frozen copy. Before, the acceptor dropped the offer
/// with the channel and ignored the answer: the connection was lost at both nodes.
#[test]
fn a_channel_reset_while_the_move_is_on_its_way_leaves_the_connection_at_the_acceptor() {
    let mut s = Sim::new();
    let mut cfg = replying_within(15, 50);
    cfg.reclaim_via = Some(ip("fd00::1"));
    let (cl, bytes, mut d) = s.begin(5000, cfg);
    let (mut ch_d, ch_a) = mem_pair();
    let broken = ch_d.broken.clone();
    let mut ch_a = boxed(ch_a);
    let (mut hl, ha) = mem_pair();
    let mut acc = ha_steered(Duration::from_secs(1));
    let mut arbiter = Arbiter::new(ha, Duration::ZERO);
    let out = s.run_arbitrated(
        &mut d,
        &mut ch_d,
        &mut acc,
        &mut ch_a,
        &mut hl,
        &mut arbiter,
        200,
        |arbiter| {
            // The move applied, its answer on the way: the channel resets.
            if !arbiter.decided.is_empty() {
                broken.set(true);
            }
        },
    );
    assert!(broken.get());
    assert!(
        matches!(
            &out,
            DonorOutcome::Failed {
                cause: HandoffError::InDoubt(_)
            }
        ),
        "{out:?}"
    );
    s.lives_only_at(2, cl, &bytes, "reset with the move on its way");
}

/// The home agent applies the acceptor's move but its answer is lost: the acceptor gives up
/// at its steering timeout and refuses the offer, having dropped its copy. A refusal means the
/// acceptor will never activate, so the donor reclaims the flow with force (outranking the
/// move that was applied) and resumes the connection; a plain reclaim would have found the
/// flow taken and the donor would have dropped the connection too.
#[test]
fn a_refusal_after_an_applied_move_takes_the_flow_back_with_force() {
    let mut s = Sim::new();
    let mut cfg = replying_within(16, 100);
    cfg.reclaim_via = Some(ip("fd00::1"));
    let (cl, bytes, mut d) = s.begin(5000, cfg);
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a = boxed(ch_a);
    let (mut hl, ha) = mem_pair();
    let mut acc = ha_steered(Duration::from_millis(20));
    let mut arbiter = Arbiter::new(ha, Duration::ZERO);
    arbiter.lose_move_answers = true;
    let out = s.run_arbitrated(
        &mut d,
        &mut ch_d,
        &mut acc,
        &mut ch_a,
        &mut hl,
        &mut arbiter,
        10,
        |_| {},
    );
    assert!(
        matches!(
            &out,
            DonorOutcome::Resumed {
                cause: HandoffError::Refused(_)
            }
        ),
        "{out:?}"
    );
    use ds_handoff::flows::{Kind, Request, Verdict};
    let decided: Vec<_> = arbiter
        .decided
        .iter()
        .map(|(m, v)| (Request::of(m).expect("a move").kind(), *v))
        .collect();
    assert_eq!(
        decided,
        [
            (Kind::Move, Verdict::Apply),
            (Kind::ForcedReclaim, Verdict::Apply)
        ]
    );
    s.lives_only_at(1, cl, &bytes, "refused after the move");
}

/// A connection of node 1 with 3000 bytes queued, offered as `id` to an acceptor (taking
/// the address over) that has not read the offer yet: the donor's end of the channel, the
/// acceptor's, the acceptor and the offer.
fn offer_unread(s: &mut Sim, id: u64) -> (Mem, Mem, Acceptor<u8, UserConn>, Offer) {
    let (_cl, _, mut d) = s.begin(3000, DonorConfig::new(id, "http"));
    let (mut ch_d, ch_a) = mem_pair();
    let mut acc = Acceptor::new(AcceptorConfig {
        takeover: Takeover::HomeAddress,
        ..acfg()
    });
    s.round(Some(&mut d), &mut ch_d, &mut acc, &mut None, None);
    let offer = match ch_d.log.borrow().last() {
        Some(Message::Offer(o)) => o.clone(),
        m => panic!("the offer is not the last message out: {m:?}"),
    };
    (ch_d, ch_a, acc, offer)
}

/// A donor sends Abort only once it has thawed the connection back (after an Accept it is in
/// doubt, never resumed): an Abort that crossed the Accept, read before the acceptor's next
/// poll, drops the committed offer before its activation.
#[test]
fn an_abort_that_crossed_the_accept_drops_the_offer_before_its_activation() {
    let mut s = Sim::new();
    let (mut ch_d, ch_a, mut acc, _) = offer_unread(&mut s, 12);
    ch_d.send(&Message::Abort {
        conn_id: 12,
        reason: "timeout".into(),
    })
    .unwrap();
    let mut ch_a = boxed(ch_a);
    let seen = s.round(None, &mut ch_d, &mut acc, &mut ch_a, None);
    assert!(
        seen.events
            .iter()
            .any(|e| matches!(e, AcceptorEvent::Aborted { conn_id: 12 })),
        "{:?}",
        seen.events
    );
    assert!(s.svcs[2].adopted.is_empty(), "activated");
    assert_eq!(s.lan.ifs[2].tcp_connection_count(), 0);
}

/// The donor's end or the acceptor's of a channel that fails at the `at`-th message sent
/// either way (counted over both ends). `silent`: the network between the nodes fails, and
/// that message and every later one is lost without an error (the donor's reply timeout
/// finds it); otherwise the sender's write fails and the channel is closed both ways (a
/// process that died, a reset).
struct BreakAt {
    inner: Mem,
    sent: std::rc::Rc<std::cell::Cell<usize>>,
    at: usize,
    silent: bool,
}

impl Link for BreakAt {
    fn send(&mut self, m: &Message) -> Result<(), ds_handoff::ChannelError> {
        let n = self.sent.get();
        self.sent.set(n + 1);
        if n >= self.at {
            if self.silent {
                return Ok(());
            }
            self.inner.broken.set(true);
        }
        self.inner.send(m)
    }
    fn recv(&mut self) -> Result<Option<Message>, ds_handoff::ChannelError> {
        if self.silent && self.sent.get() > self.at {
            return Ok(None);
        }
        self.inner.recv()
    }
}

/// A channel between donor and acceptor that fails at the `at`-th message ([`BreakAt`]): the
/// donor's end and the acceptor's.
fn break_at(at: usize, silent: bool) -> (BreakAt, Option<Box<dyn Link>>) {
    let (ch_d, ch_a) = mem_pair();
    let sent = std::rc::Rc::new(std::cell::Cell::new(0));
    let d = BreakAt {
        inner: ch_d,
        sent: sent.clone(),
        at,
        silent,
    };
    let a = boxed(BreakAt {
        inner: ch_a,
        sent,
        at,
        silent,
    });
    (d, a)
}

/// The channel between donor and acceptor fails before the Accept is through: at Prepare or
/// the Offer, silently (the network between the nodes) or with an error on the write (a
/// process that died, a reset), or on the Accept's own write. The connection ends up at
/// exactly one node: the donor resumes it, and everything its server end had queued reaches
/// the client.
///
/// Not covered here: an Accept written and then lost with the channel (a partition with the
/// Accept on its way, or a channel closed with it unread while the acceptor lives on). With
/// nothing steering the client (the address served as a home address), nothing can decide
/// between the two nodes; in transparent mode the home agent does
/// (`an_accept_lost_with_the_channel_after_the_move_leaves_the_connection_at_the_acceptor`).
#[test]
fn a_channel_that_fails_before_the_accept_leaves_the_connection_at_the_donor() {
    // Messages in order: Prepare (0), the Offer (1), the Accept (2).
    for (at, silent) in [(0, true), (1, true), (0, false), (1, false), (2, false)] {
        {
            let mut s = Sim::new();
            let (cl, bytes, mut d) = s.begin(5000, replying_within(10, 50));
            let (mut ch_d, mut ch_a) = break_at(at, silent);
            let mut acc = Acceptor::new(AcceptorConfig {
                takeover: Takeover::HomeAddress,
                ..acfg()
            });
            let (out, _) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, None, |_, _| {});
            for _ in 0..200 {
                s.round(Some(&mut d), &mut ch_d, &mut acc, &mut ch_a, None);
                s.tick();
            }
            let case = format!("failed at message {at} (silent: {silent}): {out:?}");
            assert!(matches!(out, DonorOutcome::Resumed { .. }), "{case}");
            s.lives_only_at(1, cl, &bytes, &case);
        }
    }
}

/// Route-optimised, an offer waits for the care-of test (RFC 6275 §5.2.5), here never
/// answered: the acceptor gives up within the offer's commit window, before the donor's reply
/// timeout, sends no Binding Update (which would have moved the client to a node without the
/// connection), and the donor resumes on the refusal.
#[test]
fn a_care_of_test_unanswered_within_the_commit_window_is_refused_too_late() {
    let mut s = Sim::new();
    let (cl, bytes, mut d) = s.begin(4000, replying_within(11, 40));
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a = boxed(ch_a);
    let mut acc = Acceptor::new(AcceptorConfig {
        steering: Steering::RouteOptimised {
            lifetime: Duration::from_secs(120),
        },
        takeover: Takeover::HomeAddress,
        ..acfg()
    });
    let mut bound = false;
    let (out, took) = s.run(&mut d, &mut ch_d, &mut acc, &mut ch_a, None, |_, ev| {
        bound |= ev
            .iter()
            .any(|e| matches!(e, AcceptorEvent::BindingSent { .. }));
    });
    assert_outcome!(
        out,
        DonorOutcome::Resumed {
            cause: HandoffError::Refused(RefuseReason::TooLate)
        }
    );
    assert!(!bound, "a Binding Update was sent");
    // Three quarters of the 40 ms from the offer's arrival, and the refusal's way back.
    assert!(
        took >= Duration::from_millis(30) && took < Duration::from_millis(40),
        "{took:?}"
    );
    assert_eq!(s.lan.ifs[2].tcp_connection_count(), 0);
    let srv = s.svcs[1].adopted.pop().expect("the service continues it");
    s.assert_alive(cl, 1, srv, &bytes);
}

/// Any commit window can come in an offer: one too long to add to the clock is no limit
/// (no overflow, no panic), and the offer is taken as any other.
#[test]
fn an_endless_commit_window_is_no_limit() {
    let mut s = Sim::new();
    let (_, _, mut acc, offer) = offer_unread(&mut s, 13);
    let (mut to_acc, from_donor) = mem_pair();
    to_acc
        .send(&Message::Offer(Offer {
            commit_within_us: Some(u64::MAX),
            ..offer
        }))
        .unwrap();
    let mut ch_a = boxed(from_donor);
    let seen = s.round(None, &mut to_acc, &mut acc, &mut ch_a, None);
    assert!(
        seen.events
            .iter()
            .any(|e| matches!(e, AcceptorEvent::Adopted { conn_id: 13, .. })),
        "{:?}",
        seen.events
    );
}
