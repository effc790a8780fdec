//! The home agent's table of moved flows is bounded by the connections that live: a moved
//! flow without a packet for the idle time is forgotten, one still carrying packets stays.
//! Needs root (a BPF program is loaded, not attached); prints SKIP otherwise.

use ds_apps::flow_agent::FlowAgent;
use ds_handoff::flows::Kind as MoveKind;
use ds_handoff::ClusterSecret;
use ds_testbed::require_root;
use ds_xdp::maps::{FlowKey, TunnelConfig, TunnelMode};
use ds_xdp::{Kind, LoadOptions, Program};
use std::net::{Ipv6Addr, TcpListener};
use std::time::{Duration, Instant};

fn key(sport: u16) -> FlowKey {
    FlowKey {
        src: "fd00:c::1".parse().expect("address"),
        dst: "fd00:80::80".parse().expect("address"),
        sport,
        dport: 80,
        proto: 6,
    }
}

/// An Ethernet frame with the client's TCP segment (ACK) of flow `sport`.
fn segment(sport: u16) -> Vec<u8> {
    let k = key(sport);
    let mut f = vec![2, 0, 0, 0, 0, 0xa0, 2, 0, 0, 0, 0, 0xc1, 0x86, 0xdd];
    let mut ip = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    ip.extend_from_slice(&k.src.octets());
    ip.extend_from_slice(&k.dst.octets());
    let mut tcp = vec![0u8; 20];
    tcp[..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// A flow agent on a tunnel program (loaded, not attached) behind a control listener on
/// loopback: the agent, the listener's address and the cluster secret.
fn agent(secret: &[u8; 32]) -> (FlowAgent, std::net::SocketAddr, ClusterSecret) {
    let prog = Program::load(Kind::Tunnel, &LoadOptions::default()).expect("load");
    let listener = TcpListener::bind("[::1]:0").expect("listen");
    let addr = listener.local_addr().expect("address");
    let secret = ClusterSecret::new(secret).expect("secret");
    let agent = FlowAgent::new(prog, listener, secret.clone()).expect("agent");
    (agent, addr, secret)
}

#[test]
fn idle_moved_flows_are_forgotten() {
    if !require_root("idle_moved_flows_are_forgotten") {
        return;
    }
    let (mut agent, _, _) = agent(b"flow aging test secret, 32 bytes");
    let node: Ipv6Addr = "fd00:1::2".parse().expect("address");
    agent
        .program()
        .set_config(&TunnelConfig {
            local: "fd00:1::a".parse().expect("address"),
            mode: TunnelMode::Gateway([2, 0, 0, 0, 0, 0x99]),
            hop_limit: 64,
            mtu: 1500,
            learn: true,
        })
        .expect("config");
    agent
        .program()
        .set_binding(key(0).dst, "fd00:1::1".parse().expect("address"))
        .expect("binding");
    for sport in [1, 2] {
        agent.program().set_flow(&key(sport), node).expect("move");
    }
    let idle = Duration::from_secs(60);
    let t0 = Instant::now();
    // First sweep: both seen now.
    assert_eq!(agent.age_moved_flows(t0, idle, true), 0);
    // Flow 2 carries a packet (through the program: its count grows); flow 1 stays silent.
    let (rv, _) = agent.program().test_run(&segment(2)).expect("run");
    assert_eq!(rv, 3, "XDP_TX");
    assert_eq!(
        agent
            .program()
            .flow(&key(2))
            .expect("lookup")
            .map(|v| v.packets),
        Some(1)
    );
    assert_eq!(agent.age_moved_flows(t0 + idle / 2, idle, true), 0);
    // Past the idle time: flow 1 goes.
    let gone = agent.age_moved_flows(t0 + idle + Duration::from_secs(1), idle, true);
    assert_eq!(gone, 1, "only the idle flow goes");
    assert!(agent.program().flow(&key(1)).expect("lookup").is_none());
    assert!(agent.program().flow(&key(2)).expect("lookup").is_some());
    assert_eq!(agent.stats().moved_aged, gone as u64);
}

/// The request to move flow `sport` to `to` (its `conn_id` is the generation); an acceptor's
/// move is valid for `valid` at the agent.
fn move_flow(
    sport: u16,
    to: Ipv6Addr,
    generation: u64,
    kind: MoveKind,
    valid: Option<Duration>,
) -> ds_handoff::Message {
    let k = key(sport);
    ds_handoff::Message::MoveFlow {
        conn_id: generation,
        client: std::net::SocketAddrV6::new(k.src, k.sport, 0, 0),
        server: std::net::SocketAddrV6::new(k.dst, k.dport, 0, 0),
        to,
        generation,
        reclaim: kind != MoveKind::Move,
        force: kind == MoveKind::ForcedReclaim,
        valid_us: valid.map(|v| v.as_micros() as u64),
    }
}

/// The answer to one move request through an authenticated channel to `agent`, read by the
/// agent `late` after it arrived: `(ok, taken)`.
fn ask_late(
    agent: &mut FlowAgent,
    ch: &mut ds_handoff::Channel,
    req: ds_handoff::Message,
    late: Duration,
) -> (bool, bool) {
    let generation = req.conn_id();
    ch.send(&req).expect("send");
    std::thread::sleep(late);
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(5), "no answer");
        agent.poll();
        match ch.poll().expect("channel") {
            Some(ds_handoff::Message::FlowMoved {
                conn_id, ok, taken, ..
            }) => {
                assert_eq!(conn_id, generation);
                return (ok, taken);
            }
            Some(m) => panic!("{m:?}"),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// [`ask_late`] read at once, whether applied.
fn ask(
    agent: &mut FlowAgent,
    ch: &mut ds_handoff::Channel,
    sport: u16,
    to: Ipv6Addr,
    generation: u64,
    kind: MoveKind,
) -> bool {
    let req = move_flow(sport, to, generation, kind, None);
    ask_late(agent, ch, req, Duration::ZERO).0
}

/// Issue 12's late-Abort race, at the home agent: a handoff that failed after its acceptor
/// asked for the flow leaves two requests in flight (the acceptor's move, and the donor's
/// reclaim of the same generation). A forced reclaim (the donor got no answer, or its
/// acceptor steers ahead) outranks the move whichever arrives first, and the connection's
/// next handoff (a newer generation) still moves the flow. Protocol 7, the agent as the
/// commit point: of a move and a plain reclaim the first read wins and the other is answered
/// `taken`; a move read after its validity is refused, and not `taken` (nothing else won).
#[test]
fn moves_of_a_flow_apply_in_generation_order_and_a_reclaim_outranks_its_move() {
    if !require_root("moves_of_a_flow_apply_in_generation_order_and_a_reclaim_outranks_its_move") {
        return;
    }
    let (mut agent, addr, secret) = agent(b"flow fencing test secret 32 byte");
    let mut ch = ds_handoff::Channel::connect(addr, &secret).expect("channel");
    let (donor, acceptor): (Ipv6Addr, Ipv6Addr) = (
        "fd00:1::1".parse().expect("address"),
        "fd00:1::2".parse().expect("address"),
    );
    let owner = |agent: &FlowAgent, sport| {
        agent
            .program()
            .flow(&key(sport))
            .expect("lookup")
            .map(|v| v.owner)
    };
    let forced = MoveKind::ForcedReclaim;
    // The acceptor's move first, then the donor's forced reclaim: back at the donor.
    assert!(ask(&mut agent, &mut ch, 1, acceptor, 100, MoveKind::Move));
    assert_eq!(owner(&agent, 1), Some(acceptor));
    assert!(ask(&mut agent, &mut ch, 1, donor, 100, forced));
    assert_eq!(owner(&agent, 1), Some(donor));
    // The reclaim first, then the acceptor's late move: refused.
    assert!(ask(&mut agent, &mut ch, 2, donor, 100, forced));
    assert!(!ask(&mut agent, &mut ch, 2, acceptor, 100, MoveKind::Move));
    assert_eq!(owner(&agent, 2), Some(donor));
    // An older generation is refused too; the next handoff's moves the flow.
    assert!(!ask(&mut agent, &mut ch, 2, acceptor, 99, MoveKind::Move));
    assert!(ask(&mut agent, &mut ch, 2, acceptor, 101, MoveKind::Move));
    assert_eq!(owner(&agent, 2), Some(acceptor));
    // A reclaim of the older attempt, arriving after the newer move, changes nothing.
    assert!(!ask(&mut agent, &mut ch, 2, donor, 100, forced));
    assert_eq!(owner(&agent, 2), Some(acceptor));
    assert_eq!(agent.stats().stale_moves, 3);
    assert_eq!(agent.stats().moves, 4);

    // A plain reclaim after the move: taken, the flow stays with the acceptor.
    assert!(ask(&mut agent, &mut ch, 3, acceptor, 100, MoveKind::Move));
    let back = move_flow(3, donor, 100, MoveKind::Reclaim, None);
    assert_eq!(
        ask_late(&mut agent, &mut ch, back, Duration::ZERO),
        (false, true)
    );
    assert_eq!(owner(&agent, 3), Some(acceptor));
    // Before it: the reclaim wins, the move is taken.
    assert!(ask(&mut agent, &mut ch, 4, donor, 100, MoveKind::Reclaim));
    let mv = move_flow(4, acceptor, 100, MoveKind::Move, None);
    assert_eq!(
        ask_late(&mut agent, &mut ch, mv, Duration::ZERO),
        (false, true)
    );
    assert_eq!(owner(&agent, 4), Some(donor));
    // A move valid for 5 ms that the agent reads 100 ms after it arrived: expired.
    let ms = Duration::from_millis;
    let mv = move_flow(5, acceptor, 100, MoveKind::Move, Some(ms(5)));
    assert_eq!(ask_late(&mut agent, &mut ch, mv, ms(100)), (false, false));
    assert_eq!(owner(&agent, 5), None);
    // Read in time, it applies.
    let mv = move_flow(5, acceptor, 100, MoveKind::Move, Some(ms(2000)));
    assert_eq!(ask_late(&mut agent, &mut ch, mv, ms(20)), (true, false));
    assert_eq!(owner(&agent, 5), Some(acceptor));
    assert_eq!(agent.stats().stale_moves, 6);
    assert_eq!(agent.stats().moves, 7);
}

/// The home agent's loop (a wait, then a poll) tries its control listener, and reads a
/// channel, only when the wait found it readable, not with an `accept` or a read failing in
/// every round; a connection or request that arrives between a wait and its poll is taken the
/// round after, and a poll without a wait before it tries everything as before.
#[test]
fn the_agent_accepts_only_after_a_wait_found_its_listener_readable() {
    if !require_root("the_agent_accepts_only_after_a_wait_found_its_listener_readable") {
        return;
    }
    let (mut agent, addr, secret) = agent(b"flow accept test secret 32 bytes");
    let accepted = |agent: &FlowAgent| agent.stats().gate.accepted;
    // Nothing pending during the wait; a connection completes before the poll.
    agent.wait(Duration::from_millis(5));
    let _first = std::net::TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(50));
    agent.poll();
    assert_eq!(accepted(&agent), 0, "accepted without the wait's readiness");
    // The next round's wait finds it.
    agent.wait(Duration::from_secs(2));
    agent.poll();
    assert_eq!(accepted(&agent), 1);
    // No wait before the poll: no hint, the listener is tried.
    let _second = std::net::TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(50));
    agent.poll();
    assert_eq!(accepted(&agent), 2);
    // An authenticated channel is served (its move applied).
    let mut ch = ds_handoff::Channel::connect(addr, &secret).expect("channel");
    assert!(ask(
        &mut agent,
        &mut ch,
        7,
        "fd00:1::2".parse().expect("address"),
        1,
        MoveKind::Move
    ));
    assert_eq!(agent.stats().moves, 1);
    // A request that arrives after a wait found nothing readable waits for the next round:
    // the channel is read when a wait finds its socket readable.
    agent.wait(Duration::from_millis(5));
    let to: Ipv6Addr = "fd00:1::2".parse().expect("address");
    ch.send(&move_flow(8, to, 2, MoveKind::Move, None))
        .expect("send");
    assert!(ch.poll().expect("channel").is_none());
    std::thread::sleep(Duration::from_millis(50));
    agent.poll();
    assert_eq!(agent.stats().moves, 1, "read without the wait's readiness");
    agent.wait(Duration::from_secs(2));
    agent.poll();
    assert_eq!(agent.stats().moves, 2);
}

/// What `ch` has received by now, in messages.
fn received(ch: &mut ds_handoff::Channel) -> usize {
    let mut n = 0;
    while ch.poll().expect("channel").is_some() {
        n += 1;
    }
    n
}

/// Send everything `ch` queued.
fn flush(ch: &mut ds_handoff::Channel) {
    let t = Instant::now();
    while ch.pending_output() > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "not flushed");
        ch.poll().expect("channel");
    }
}

/// A node that sends requests without pause (a broken or hostile cluster member) has
/// `MESSAGES_PER_TURN` of them answered per turn of the agent's loop, and another node's
/// request is answered in the same first turn; the turns after come without a wait until the
/// stream is served.
#[test]
fn one_nodes_stream_of_requests_waits_its_turn() {
    if !require_root("one_nodes_stream_of_requests_waits_its_turn") {
        return;
    }
    let (mut agent, addr, secret) = agent(b"flow turn-taking secret 32 bytes");
    let acceptor: Ipv6Addr = "fd00:1::2".parse().expect("address");
    let mut flood = ds_handoff::Channel::connect(addr, &secret).expect("channel");
    let mut other = ds_handoff::Channel::connect(addr, &secret).expect("channel");
    assert!(ask(&mut agent, &mut flood, 1, acceptor, 1, MoveKind::Move));
    assert!(ask(&mut agent, &mut other, 2, acceptor, 1, MoveKind::Move));
    const STREAM: usize = 1000;
    for g in 0..STREAM as u64 {
        flood
            .send(&move_flow(3, acceptor, 10 + g, MoveKind::Move, None))
            .expect("send");
    }
    flush(&mut flood);
    other
        .send(&move_flow(4, acceptor, 5, MoveKind::Move, None))
        .expect("send");
    flush(&mut other);
    // Loopback delivers within the sender's call: both requests are in, the stream first.
    agent.poll();
    assert_eq!(received(&mut flood), ds_handoff::MESSAGES_PER_TURN);
    assert_eq!(received(&mut other), 1, "answered in the first turn");
    let mut answered = ds_handoff::MESSAGES_PER_TURN;
    let t = Instant::now();
    while answered < STREAM {
        assert!(t.elapsed() < Duration::from_secs(10), "{answered} answered");
        let w = Instant::now();
        agent.wait(Duration::from_secs(5));
        assert!(
            w.elapsed() < Duration::from_secs(1),
            "waited with requests pending"
        );
        agent.poll();
        answered += received(&mut flood);
    }
    assert_eq!(answered, STREAM);
}

/// A cluster member that opens authenticated channels without end (it holds the key) keeps
/// at most `AUTHENTICATED_PER_ADDRESS` of them at the agent: each one more is closed once its
/// handshake completes, and counted; those held still work.
#[test]
fn one_address_holds_a_bounded_number_of_authenticated_channels() {
    if !require_root("one_address_holds_a_bounded_number_of_authenticated_channels") {
        return;
    }
    use ds_handoff::gate::AUTHENTICATED_PER_ADDRESS;
    let (mut agent, addr, secret) = agent(b"flow channels cap secret 32 byte");
    let to: Ipv6Addr = "fd00:1::2".parse().expect("address");
    let mut held = Vec::new();
    for sport in 0..AUTHENTICATED_PER_ADDRESS as u16 {
        let mut ch = ds_handoff::Channel::connect(addr, &secret).expect("channel");
        assert!(ask(&mut agent, &mut ch, 10 + sport, to, 1, MoveKind::Move));
        held.push(ch);
    }
    for _ in 0..4 {
        let mut ch = ds_handoff::Channel::connect(addr, &secret).expect("channel");
        let t = Instant::now();
        loop {
            assert!(t.elapsed() < Duration::from_secs(5), "never closed");
            agent.poll();
            if ch.poll().is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(agent.stats().channels_refused, 4);
    assert!(
        ask(&mut agent, &mut held[0], 1, to, 2, MoveKind::Move),
        "a held channel still works"
    );
}
