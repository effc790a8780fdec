//! Two `HandoffNode`s on a simulated link, their control channels and a home agent's on
//! loopback: while the home agent withholds its answer to a flow move for a whole second, the
//! accepting node's loop keeps running — another client's download from it goes on all that
//! second — and the handoff completes when the answer comes. (The earlier flow mover switched
//! its socket to blocking inside the acceptor: the node stood still for up to a second.)

use ds_apps::node::{HandoffConfig, HandoffNode, NodeEvent, Steering};
use ds_apps::server::{HttpServer, ServerConfig};
use ds_handoff::{Channel, ClusterSecret, Drain, Message, Takeover};
use ds_testbed::simlan::{self, Lan};
use ds_testbed::{PatternStream, TempDir};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"slow home agent test secret 32B!";
const WITHHOLD: Duration = Duration::from_secs(1);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal")
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("loopback listener")
}

/// A home agent's flow agent that answers every move request `WITHHOLD` after it came.
fn slow_home_agent(l: TcpListener, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        l.set_nonblocking(true).expect("nonblocking");
        let secret = ClusterSecret::new(SECRET).expect("secret");
        let mut chans: Vec<Channel> = Vec::new();
        let mut pending: Vec<(usize, u64, Instant)> = Vec::new();
        let mut moves = 0;
        while !done.load(Ordering::Relaxed) {
            if let Ok((s, _)) = l.accept() {
                chans.push(Channel::accept(s, &secret).expect("channel"));
            }
            for (k, c) in chans.iter_mut().enumerate() {
                while let Ok(Some(m)) = c.poll() {
                    if let Message::MoveFlow { conn_id, .. } = m {
                        pending.push((k, conn_id, Instant::now()));
                    }
                }
            }
            pending.retain(|&(k, conn_id, at)| {
                if at.elapsed() < WITHHOLD {
                    return true;
                }
                moves += 1;
                let ok = chans[k].send(&Message::FlowMoved {
                    conn_id,
                    ok: true,
                    detail: String::new(),
                });
                ok.is_err()
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        moves
    })
}

fn node(
    lan: &mut Lan,
    i: usize,
    root: &std::path::Path,
    listen: TcpListener,
    peer: SocketAddr,
    ha: SocketAddr,
    quota: Option<u64>,
) -> HandoffNode {
    let server = HttpServer::listen(
        &mut lan.ifs[i],
        SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 80, 0, 0),
        root,
        ServerConfig::default(),
    )
    .expect("listen");
    let mut cfg = HandoffConfig::new(ClusterSecret::new(SECRET).expect("secret"));
    cfg.listen = Some(listen);
    cfg.peer = Some(peer);
    cfg.quota = quota;
    cfg.max_handoffs = Some(1);
    cfg.drain = Drain::Immediate;
    cfg.reply_timeout = Duration::from_secs(5);
    cfg.steer_timeout = Duration::from_secs(3);
    cfg.takeover = Takeover::Address;
    cfg.steering = Steering::HomeAgentFlow {
        ha,
        coa: ip("fd00::2"),
    };
    HandoffNode::new(server, cfg).expect("node")
}

/// The response body in `got`, once its head has arrived.
fn body(got: &[u8]) -> &[u8] {
    got.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |p| &got[p + 4..])
}

#[test]
fn a_home_agent_silent_for_a_second_stalls_no_other_connection() {
    let root = TempDir::new("apps-slow-ha").expect("temp dir");
    let obj = PatternStream::bytes(7, 2 << 20);
    std::fs::write(root.path().join("obj"), &obj).expect("write");
    // The other client's download, read at most 8 KiB per round.
    std::fs::write(root.path().join("big"), PatternStream::bytes(8, 16 << 20)).expect("write");
    let mut lan = Lan::new(
        vec![
            simlan::node(3, &[ip("fd00::3")]),
            simlan::node(1, &[ip("fd00::1"), ip("fd00::80")]),
            simlan::node(2, &[ip("fd00::2")]),
        ],
        simlan::START,
    );
    let (l1, l2, lha) = (listener(), listener(), listener());
    let (a1, a2, aha) = (
        l1.local_addr().expect("addr"),
        l2.local_addr().expect("addr"),
        lha.local_addr().expect("addr"),
    );
    let done = Arc::new(AtomicBool::new(false));
    let ha = slow_home_agent(lha, done.clone());
    let mut nodes = [
        node(&mut lan, 1, root.path(), l1, a2, aha, Some(500_000)),
        node(&mut lan, 2, root.path(), l2, a1, aha, None),
    ];
    // The download that moves (from the DS address on node 1) and the other one (node 2's own
    // address).
    let client = ip("fd00::3");
    let mut gets = [
        (
            lan.dial(0, client, "[fd00::80]:80".parse().expect("literal")),
            "obj",
            false,
        ),
        (
            lan.dial(0, client, "[fd00::2]:80".parse().expect("literal")),
            "big",
            false,
        ),
    ];
    let (moving, other) = (gets[0].0, gets[1].0);
    let mut got_moving = Vec::new();
    let mut buf = [0u8; 8 << 10];
    // While node 2 waits for the home agent: rounds run, bytes of the other download.
    let (mut waited_rounds, mut waited_bytes) = (0u64, 0usize);
    let mut wait_started: Option<Instant> = None;
    let t0 = Instant::now();
    let mut moved = false;
    while !(moved && body(&got_moving).len() >= obj.len()) {
        assert!(t0.elapsed() < Duration::from_secs(60), "stuck");
        lan.step();
        let now = lan.now;
        for (h, path, sent) in &mut gets {
            if !*sent && lan.ifs[0].tcp_state(*h) == Some(ds_stack::TcpState::Established) {
                let req = format!("GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                lan.ifs[0].tcp_send(*h, req.as_bytes()).expect("request");
                *sent = true;
            }
        }
        for (k, n) in nodes.iter_mut().enumerate() {
            n.poll(&mut lan.ifs[k + 1], now);
            for e in n.take_events() {
                match e {
                    NodeEvent::HandedOff { .. } => {
                        moved = true;
                        // Steering done: the DS address lives on node 2 now.
                        lan.ifs[1].remove_addr(ip("fd00::80"));
                    }
                    NodeEvent::KeptHere { cause, .. } | NodeEvent::Failed { cause } => {
                        panic!("handoff failed: {cause}")
                    }
                    _ => {}
                }
            }
        }
        let _ = simlan::read_available(&mut lan.ifs[0], moving, &mut got_moving);
        let n = lan.ifs[0].tcp_recv(other, &mut buf).unwrap_or(0);
        // Node 2 has an offer waiting for the home agent's answer.
        if nodes[1].busy() && !moved {
            wait_started.get_or_insert_with(Instant::now);
            waited_rounds += 1;
            waited_bytes += n;
        }
    }
    done.store(true, Ordering::Relaxed);
    eprintln!("while waiting for the home agent: {waited_rounds} rounds, {waited_bytes} bytes of the other download");
    assert_eq!(ha.join().expect("home agent"), 1, "one flow moved");
    let waited = wait_started.expect("the acceptor waited for the home agent");
    assert!(
        waited.elapsed() >= WITHHOLD,
        "the acceptor waited at least the second"
    );
    assert!(
        waited_rounds > 100 && waited_bytes > 1 << 20,
        "while the home agent was silent the node ran {waited_rounds} rounds and the other \
         download moved {waited_bytes} bytes"
    );
    assert!(body(&got_moving) == &obj[..], "moved download byte-exact");
}
