//! The handoff engine over the kernel host ([`ds_kernel::KernelHost`]), in namespaces, with
//! simulated engine time: the host's operations are real (`TCP_REPAIR`, the XDP packet hold,
//! raw-socket injection) and the peer is the kernel's TCP in the client namespace, while the
//! engine's clock advances one millisecond per round, so each timeout fires at a known round.
//!
//! Cases (issue 9's acceptance list, as `handoff/tests/sim.rs` for the userspace host): offer
//! timeout, refusal, acceptor crash, Accept without Activated, steering failure, and late
//! packets forwarded after the freeze. In every failure case the connection is alive
//! afterwards, both ways, byte-exact, and the client never sees a reset.

use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, Dest, Donor, DonorConfig, DonorOutcome, HandoffError,
    Message, RefuseReason, Service, Steering, Takeover,
};
use ds_kernel::{HoldTable, KernelConn, KernelHost};
use ds_testbed::{require_root, KernelPeer, StackHost};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CLIENT: &str = "fd00:e1::c";
const DONOR: &str = "fd00:e1::1";
const ACCEPTOR: &str = "fd00:e1::2";
const DS: &str = "fd00:e1::80";

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal address")
}

/// The test's service: raw TCP, exported as a marker, adopted sockets kept.
#[derive(Default)]
struct Raw {
    adopted: Vec<TcpStream>,
}

impl Service<KernelConn> for Raw {
    fn accepts(&self, name: &str) -> bool {
        name == "raw"
    }
    fn export(&mut self, _conn: &KernelConn) -> Result<Vec<u8>, String> {
        Ok(b"raw".to_vec())
    }
    fn adopt(&mut self, conn: KernelConn, state: &[u8]) -> Result<(), (KernelConn, String)> {
        if state != b"raw" {
            return Err((conn, "foreign state".into()));
        }
        let sock = conn.into_socket().map_err(|c| (c, "dormant".to_string()))?;
        self.adopted.push(sock);
        Ok(())
    }
}

/// A server node: its namespace, kernel host and service.
struct Node {
    env: StackHost,
    host: KernelHost,
    svc: Raw,
}

impl Node {
    fn new(env: StackHost, addr: &str) -> Node {
        env.ns
            .ip(&[
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                &env.bridge,
                "nodad",
            ])
            .expect("node address");
        let holds = env
            .ns
            .run(|| HoldTable::attach(&env.uplink, Default::default()))
            .expect("attach the hold program");
        Node {
            env,
            host: KernelHost::new(holds),
            svc: Raw::default(),
        }
    }

    /// Run `f` in the node's namespace with its host and service.
    fn run<T: Send>(&mut self, f: impl FnOnce(&mut KernelHost, &mut Raw) -> T + Send) -> T {
        let Node { env, host, svc } = self;
        env.ns.run(|| f(host, svc))
    }
}

/// Client, donor (serving the DS address) and acceptor (the DS address on `lo`: local to its
/// sockets, never announced, so the client's packets keep reaching the donor).
struct Bed {
    client: KernelPeer,
    donor: Node,
    acceptor: Node,
}

impl Bed {
    fn new() -> Bed {
        let mut client = KernelPeer::new("keng-c", ip(CLIENT)).expect("client namespace");
        let d = client.attach_host("keng-d").expect("donor namespace");
        let a = client.attach_host("keng-a").expect("acceptor namespace");
        let donor = Node::new(d, DONOR);
        donor
            .env
            .ns
            .ip(&["addr", "add", &format!("{DS}/64"), "dev", "br0", "nodad"])
            .expect("DS address");
        let acceptor = Node::new(a, ACCEPTOR);
        acceptor
            .env
            .ns
            .ip(&["addr", "add", &format!("{DS}/128"), "dev", "lo", "nodad"])
            .expect("DS address on lo");
        Bed {
            client,
            donor,
            acceptor,
        }
    }

    /// A connection client → DS:9000 on the donor, warmed up both ways: (client, server).
    fn connect(&mut self) -> (TcpStream, TcpStream) {
        let l = self
            .donor
            .env
            .ns
            .run(|| TcpListener::bind(SocketAddrV6::new(ip(DS), 9000, 0, 0)))
            .expect("listen");
        let c = self
            .client
            .ns
            .run(|| TcpStream::connect(SocketAddrV6::new(ip(DS), 9000, 0, 0)))
            .expect("connect");
        let (s, _) = l.accept().expect("accept");
        let (mut c, mut s) = (c, s);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        exchange(&mut c, &mut s, 0);
        (c, s)
    }
}

/// Both ways, 64 KiB each, byte-exact (pattern `tag`).
fn exchange(c: &mut TcpStream, s: &mut TcpStream, tag: u8) {
    let down: Vec<u8> = (0..65536u32).map(|i| (i as u8) ^ tag).collect();
    let up: Vec<u8> = (0..65536u32).map(|i| (i as u8).wrapping_add(tag)).collect();
    s.write_all(&down).expect("server write");
    let mut got = vec![0u8; down.len()];
    c.read_exact(&mut got).expect("client read (no reset)");
    assert!(got == down, "downstream byte-exact");
    c.write_all(&up).expect("client write");
    let mut got = vec![0u8; up.len()];
    s.read_exact(&mut got).expect("server read");
    assert!(got == up, "upstream byte-exact");
}

/// What the test plays between donor and acceptor.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// The real acceptor engine.
    Engine,
    /// Reads everything, answers nothing.
    Silent,
    /// Its channel breaks when the offer arrives.
    Crash,
    /// Answers Accept, never Activated.
    AcceptOnly,
}

/// The home agent's answer to a flow move.
#[derive(Clone, Copy, PartialEq)]
enum Ha {
    /// No steering configured.
    None,
    /// Refuses the move.
    Refuse,
}

struct Run {
    outcome: DonorOutcome,
    /// Simulated engine time until the outcome.
    took: Duration,
    events: Vec<AcceptorEvent>,
}

/// The acceptor's side of one round at `t`: messages from the donor and the home agent in,
/// (destination, message) pairs and events out.
fn acceptor_round(
    node: &mut Node,
    acc: &mut Acceptor<u8, KernelConn>,
    t: Instant,
    inbox: Vec<Message>,
    ha_inbox: Vec<Message>,
) -> (Vec<(Dest<u8>, Message)>, Vec<AcceptorEvent>) {
    node.run(|h, svc| {
        for m in inbox {
            acc.handle(t, 0, m, h, svc).expect("protocol");
        }
        for m in ha_inbox {
            acc.handle_home_agent(t, m, h);
        }
        let mut out = Vec::new();
        // Twice: an Accept queued in the first pass is activated in the second.
        for _ in 0..2 {
            acc.poll(t, h, svc);
            while let Some(x) = acc.poll_transmit() {
                out.push(x);
            }
        }
        let mut ev = Vec::new();
        while let Some(e) = acc.poll_event() {
            ev.push(e);
        }
        (out, ev)
    })
}

/// The donor's side of one round at `t` (`broken`: its channel failed): messages for the
/// acceptor and the outcome, once.
fn donor_round(
    node: &mut Node,
    donor: &mut Donor<KernelConn>,
    t: Instant,
    inbox: Vec<Message>,
    broken: bool,
) -> (Vec<Message>, Option<DonorOutcome>) {
    node.run(|h, svc| {
        if broken {
            donor.channel_failed(t, "acceptor closed the channel".into(), h, svc);
        }
        for m in inbox {
            donor.handle(t, m, h, svc);
        }
        donor.poll(t, h, svc);
        let mut out = Vec::new();
        while let Some(m) = donor.poll_transmit() {
            out.push(m);
        }
        (out, donor.poll_outcome())
    })
}

/// Hand the server end `s` from the donor to the acceptor, the engines on simulated time.
fn hand_off(
    bed: &mut Bed,
    s: TcpStream,
    cfg: DonorConfig,
    acfg: AcceptorConfig,
    peer: Peer,
    ha: Ha,
) -> Run {
    let base = Instant::now();
    let mut ms = 0u64;
    let now = |ms: u64| base + Duration::from_millis(ms);
    let conn = KernelConn::live(s).expect("live socket");
    let mut donor = bed
        .donor
        .run(|h, svc| Donor::start(now(0), conn, cfg, h, svc))
        .unwrap_or_else(|(_, e)| panic!("start: {e}"));
    let mut acc: Acceptor<u8, KernelConn> = Acceptor::new(acfg);
    let (mut to_acc, mut to_donor, mut to_ha): (Vec<Message>, Vec<Message>, Vec<Message>) =
        Default::default();
    let mut broken = false;
    let mut events = Vec::new();
    loop {
        assert!(ms < 10_000, "no outcome in 10 s of simulated time");
        let t = now(ms);
        // The acceptor side.
        let inbox = std::mem::take(&mut to_acc);
        let ha_inbox: Vec<Message> = std::mem::take(&mut to_ha)
            .into_iter()
            .filter_map(|m| match (m, ha) {
                (Message::MoveFlow { conn_id, .. }, Ha::Refuse) => Some(Message::FlowMoved {
                    conn_id,
                    ok: false,
                    taken: false,
                    detail: "no binding for that flow".into(),
                }),
                _ => None,
            })
            .collect();
        match peer {
            Peer::Engine => {
                let (out, ev) = acceptor_round(&mut bed.acceptor, &mut acc, t, inbox, ha_inbox);
                events.extend(ev);
                for (d, m) in out {
                    match d {
                        Dest::Donor(_) => to_donor.push(m),
                        Dest::HomeAgent => to_ha.push(m),
                    }
                }
            }
            Peer::Silent => {}
            Peer::Crash => broken |= inbox.iter().any(|m| matches!(m, Message::Offer(_))),
            Peer::AcceptOnly => {
                for m in inbox {
                    if let Message::Offer(o) = m {
                        to_donor.push(Message::Accept { conn_id: o.conn_id });
                    }
                }
            }
        }
        // The donor side.
        let inbox = std::mem::take(&mut to_donor);
        let (out, outcome) = donor_round(&mut bed.donor, &mut donor, t, inbox, broken);
        if !broken {
            to_acc.extend(out);
        }
        if let Some(outcome) = outcome {
            return Run {
                outcome,
                took: Duration::from_millis(ms),
                events,
            };
        }
        ms += 1;
    }
}

/// After a failed handoff the donor's service continues the connection: both ways intact.
fn check_kept(bed: &mut Bed, mut c: TcpStream, run: Run) {
    assert!(
        matches!(run.outcome, DonorOutcome::Resumed { .. }),
        "{:?}",
        run.outcome
    );
    let mut s = bed
        .donor
        .svc
        .adopted
        .pop()
        .expect("the donor's service continues it");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut c, &mut s, 7);
    assert!(bed.acceptor.svc.adopted.is_empty());
}

fn dcfg(id: u64) -> DonorConfig {
    DonorConfig::new(id, "raw")
}

fn acfg() -> AcceptorConfig {
    AcceptorConfig {
        takeover: Takeover::None,
        ..Default::default()
    }
}

#[test]
fn kernel_host_offer_timeout_resumes_at_the_deadline() {
    if !require_root("kernel_host_offer_timeout_resumes_at_the_deadline") {
        return;
    }
    let mut bed = Bed::new();
    let (c, s) = bed.connect();
    let mut cfg = dcfg(1);
    cfg.reply_timeout = Duration::from_millis(40);
    let run = hand_off(&mut bed, s, cfg, acfg(), Peer::Silent, Ha::None);
    assert!(
        matches!(
            run.outcome,
            DonorOutcome::Resumed {
                cause: HandoffError::Timeout
            }
        ),
        "{:?}",
        run.outcome
    );
    assert_eq!(run.took, Duration::from_millis(40));
    check_kept(&mut bed, c, run);
}

#[test]
fn kernel_host_refusal_resumes_with_the_reason() {
    if !require_root("kernel_host_refusal_resumes_with_the_reason") {
        return;
    }
    let mut bed = Bed::new();
    let (c, s) = bed.connect();
    let loaded = AcceptorConfig {
        max_connections: 0,
        ..acfg()
    };
    let run = hand_off(&mut bed, s, dcfg(2), loaded, Peer::Engine, Ha::None);
    assert!(
        matches!(
            run.outcome,
            DonorOutcome::Resumed {
                cause: HandoffError::Refused(RefuseReason::Load)
            }
        ),
        "{:?}",
        run.outcome
    );
    assert!(run
        .events
        .iter()
        .any(|e| matches!(e, AcceptorEvent::Refused { .. })));
    check_kept(&mut bed, c, run);
}

#[test]
fn kernel_host_acceptor_crash_resumes() {
    if !require_root("kernel_host_acceptor_crash_resumes") {
        return;
    }
    let mut bed = Bed::new();
    let (c, s) = bed.connect();
    let run = hand_off(&mut bed, s, dcfg(3), acfg(), Peer::Crash, Ha::None);
    assert!(
        matches!(
            run.outcome,
            DonorOutcome::Resumed {
                cause: HandoffError::ChannelLost(_)
            }
        ),
        "{:?}",
        run.outcome
    );
    assert!(
        run.took < Duration::from_millis(5),
        "no timeout waited: {:?}",
        run.took
    );
    check_kept(&mut bed, c, run);
}

#[test]
fn kernel_host_accept_without_activated_is_in_doubt() {
    if !require_root("kernel_host_accept_without_activated_is_in_doubt") {
        return;
    }
    let mut bed = Bed::new();
    let (mut c, s) = bed.connect();
    let mut cfg = dcfg(4);
    cfg.reply_timeout = Duration::from_millis(30);
    let run = hand_off(&mut bed, s, cfg, acfg(), Peer::AcceptOnly, Ha::None);
    assert!(
        matches!(
            run.outcome,
            DonorOutcome::Failed {
                cause: HandoffError::InDoubt(_)
            }
        ),
        "{:?}",
        run.outcome
    );
    assert!(bed.donor.svc.adopted.is_empty(), "not thawed back");
    // Nothing runs the connection here: the donor's socket is gone silently (no RST, no
    // FIN): the client's read just waits.
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let e = c.read(&mut b).expect_err("nothing arrives");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
}

#[test]
fn kernel_host_steering_failure_discards_the_restored_socket() {
    if !require_root("kernel_host_steering_failure_discards_the_restored_socket") {
        return;
    }
    let mut bed = Bed::new();
    let (c, s) = bed.connect();
    let steer = AcceptorConfig {
        steering: Steering::HomeAgentFlow { coa: ip(ACCEPTOR) },
        ..acfg()
    };
    let run = hand_off(&mut bed, s, dcfg(5), steer, Peer::Engine, Ha::Refuse);
    assert!(
        matches!(
            &run.outcome,
            DonorOutcome::Resumed { cause: HandoffError::Refused(RefuseReason::Other(r)) } if r.starts_with("steering")
        ),
        "{:?}",
        run.outcome
    );
    // The acceptor's restored socket was closed silently in repair mode: the 4-tuple is free
    // there again (a restore of it would fail otherwise) and the client saw nothing of it.
    check_kept(&mut bed, c, run);
}

#[test]
fn kernel_host_forwards_late_packets_after_the_freeze() {
    if !require_root("kernel_host_forwards_late_packets_after_the_freeze") {
        return;
    }
    let mut bed = Bed::new();
    let (mut c, s) = bed.connect();
    let mut cfg = dcfg(6);
    cfg.forward_grace = Duration::from_secs(60);
    let base = Instant::now();
    let now = |ms: u64| base + Duration::from_millis(ms);
    let conn = KernelConn::live(s).expect("live");
    let mut donor = bed
        .donor
        .run(|h, svc| Donor::start(now(0), conn, cfg, h, svc))
        .unwrap_or_else(|(_, e)| panic!("start: {e}"));
    let mut acc: Acceptor<u8, KernelConn> = Acceptor::new(acfg());
    // The client uploads from another thread all along: after the freeze its packets reach
    // the donor, which holds them and forwards them over the (simulated) channel.
    let up: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    let writer = {
        let mut c2 = c.try_clone().expect("clone");
        let up = up.clone();
        std::thread::spawn(move || {
            for chunk in up.chunks(4000) {
                c2.write_all(chunk).expect("client write (no reset)");
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let (mut to_acc, mut to_donor) = (Vec::<Message>::new(), Vec::<Message>::new());
    let mut moved = false;
    let mut got = Vec::new();
    let mut server: Option<TcpStream> = None;
    let mut forwarded = 0;
    let t0 = Instant::now();
    let mut ms = 0;
    while got.len() < up.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "stalled at {} bytes",
            got.len()
        );
        let t = now(ms);
        let inbox = std::mem::take(&mut to_acc);
        forwarded += inbox
            .iter()
            .map(|m| match m {
                Message::Forward { packets, .. } => packets.len(),
                _ => 0,
            })
            .sum::<usize>();
        let (out, _) = acceptor_round(&mut bed.acceptor, &mut acc, t, inbox, Vec::new());
        to_donor.extend(out.into_iter().map(|(_, m)| m));
        let inbox = std::mem::take(&mut to_donor);
        let (out, outcome) = donor_round(&mut bed.donor, &mut donor, t, inbox, false);
        to_acc.extend(out);
        if let Some(o) = outcome {
            assert!(matches!(o, DonorOutcome::Moved { .. }), "{o:?}");
            moved = true;
        }
        if server.is_none() {
            server = bed.acceptor.svc.adopted.pop().inspect(|s| {
                s.set_nonblocking(true).expect("nonblocking");
            });
        }
        if let Some(s) = server.as_mut() {
            let mut buf = [0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("acceptor read: {e}"),
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
        ms += 1;
    }
    writer.join().expect("writer");
    assert!(moved);
    // The warm-up's upstream came before the handoff: what follows is the upload.
    assert!(
        got == up,
        "the upload arrived byte-exact through the donor's forwarding"
    );
    assert!(forwarded > 10, "packets forwarded: {forwarded}");
    // And the acceptor's socket answers the client directly.
    let mut s = server.expect("adopted");
    s.set_nonblocking(false).unwrap();
    s.write_all(b"done").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).expect("client read");
    assert_eq!(&b, b"done");
}
