//! Two library nodes with the HTTP server (`dserver::Node`) and a client on an in-memory hub,
//! their control channels and a home agent's on loopback: while the home agent withholds its answer to a flow move for a whole second, the
//! accepting node's loop keeps running — another client's download from it goes on all that
//! second — and the handoff completes when the answer comes. (The earlier flow mover switched
//! its socket to blocking inside the acceptor: the node stood still for up to a second.)
//! And a donor's forced reclaim that the home agent never answered is sent again on a channel
//! opened anew until it is answered (handoff protocol 7).

mod common;

use common::{HubNet, HUB_CLIENT, HUB_DS, HUB_N2, HUB_SECRET};
use ds_handoff::{Channel, ClusterSecret, Message};
use ds_testbed::conn::{dial, read_available};
use ds_testbed::{PatternStream, TempDir};
use dserver::engine::Steering;
use dserver::Event;
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let secret = ClusterSecret::new(HUB_SECRET).expect("secret");
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
                    taken: false,
                    detail: String::new(),
                });
                ok.is_err()
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        moves
    })
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
    let lha = listener();
    let aha = lha.local_addr().expect("addr");
    let done = Arc::new(AtomicBool::new(false));
    let ha = slow_home_agent(lha, done.clone());
    let mut net = HubNet::new(root.path(), |_, mut cfg| {
        cfg.max_handoffs = Some(1);
        cfg.reply_timeout = Duration::from_secs(5);
        cfg.steer_timeout = Duration::from_secs(3);
        cfg.steering = Steering::HomeAgentFlow {
            ha: aha,
            coa: ip("fd00::2"),
        };
        cfg
    });
    net.servers[0].set_handoff_quota(Some(500_000));
    net.servers[0].set_max_handoffs(Some(1));
    // The download that moves (from the DS address on node 1) and the other one (node 2's own
    // address).
    let mut gets = [
        (
            dial(
                &mut net.cli,
                HUB_CLIENT,
                SocketAddrV6::new(HUB_DS, 80, 0, 0),
            ),
            "obj",
            false,
        ),
        (
            dial(
                &mut net.cli,
                HUB_CLIENT,
                SocketAddrV6::new(HUB_N2, 80, 0, 0),
            ),
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
        let events = net.round();
        let cli = &mut net.cli.iface;
        for (h, path, sent) in &mut gets {
            if !*sent && cli.tcp_state(*h) == Some(ds_stack::TcpState::Established) {
                let req = format!("GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                cli.tcp_send(*h, req.as_bytes()).expect("request");
                *sent = true;
            }
        }
        for (_, e) in events {
            match e {
                Event::HandedOff { .. } => moved = true,
                Event::KeptHere { cause, .. } | Event::Lost { cause, .. } => {
                    panic!("handoff failed: {cause}")
                }
                _ => {}
            }
        }
        let _ = read_available(cli, moving, &mut got_moving);
        let n = cli.tcp_recv(other, &mut buf).unwrap_or(0);
        // Node 2 has an offer waiting for the home agent's answer.
        if net.nodes[1].handing_off() && !moved {
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

/// A home agent that refuses every flow move (so the acceptor refuses the offer, after its
/// move was sent) and closes the channel of the first forced reclaim it reads without
/// answering it (a home agent that died with it): it answers the ones after. Returns how
/// many forced reclaims it read.
fn forgetful_home_agent(l: TcpListener, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        l.set_nonblocking(true).expect("nonblocking");
        let secret = ClusterSecret::new(HUB_SECRET).expect("secret");
        let mut chans: Vec<Channel> = Vec::new();
        let mut forced = 0;
        while !done.load(Ordering::Relaxed) {
            if let Ok((s, _)) = l.accept() {
                chans.push(Channel::accept(s, &secret).expect("channel"));
            }
            let mut k = 0;
            while k < chans.len() {
                let mut close = false;
                while let Ok(Some(m)) = chans[k].poll() {
                    let Message::MoveFlow { conn_id, force, .. } = m else {
                        continue;
                    };
                    if force {
                        forced += 1;
                        if forced == 1 {
                            close = true;
                            break;
                        }
                    }
                    let _ = chans[k].send(&Message::FlowMoved {
                        conn_id,
                        ok: force,
                        taken: false,
                        detail: if force {
                            String::new()
                        } else {
                            "no binding".into()
                        },
                    });
                }
                if close {
                    chans.swap_remove(k);
                } else {
                    k += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        forced
    })
}

/// The acceptor refuses an offer after its flow move left (the home agent refused the move):
/// the donor reclaims the flow with force and resumes the connection. The home agent dies
/// with that reclaim unanswered (one that restarted would still point the flow wherever the
/// move left it): the donor sends the reclaim again on a channel opened anew, until it is
/// answered, and the download completes from the donor.
#[test]
fn a_forced_reclaim_is_sent_again_until_the_home_agent_answers_it() {
    let root = TempDir::new("apps-owed-reclaim").expect("temp dir");
    let obj = PatternStream::bytes(9, 1 << 20);
    std::fs::write(root.path().join("obj"), &obj).expect("write");
    let lha = listener();
    let aha = lha.local_addr().expect("addr");
    let done = Arc::new(AtomicBool::new(false));
    let ha = forgetful_home_agent(lha, done.clone());
    let mut net = HubNet::new(root.path(), |k, mut cfg| {
        cfg.max_handoffs = Some(1);
        cfg.steering = Steering::HomeAgentFlow {
            ha: aha,
            coa: if k == 0 { ip("fd00::1") } else { ip("fd00::2") },
        };
        cfg
    });
    net.servers[0].set_handoff_quota(Some(200_000));
    net.servers[0].set_max_handoffs(Some(1));
    let h = dial(
        &mut net.cli,
        HUB_CLIENT,
        SocketAddrV6::new(HUB_DS, 80, 0, 0),
    );
    let mut got = Vec::new();
    let (mut sent, mut kept) = (false, false);
    let t0 = Instant::now();
    while !(kept && body(&got).len() >= obj.len() && net.nodes[0].stats().reclaims_forced >= 1) {
        assert!(t0.elapsed() < Duration::from_secs(30), "stuck");
        for (_, e) in net.round() {
            match e {
                Event::KeptHere { .. } => kept = true,
                Event::HandedOff { .. } => panic!("moved though the home agent refused"),
                _ => {}
            }
        }
        let cli = &mut net.cli.iface;
        if !sent && cli.tcp_state(h) == Some(ds_stack::TcpState::Established) {
            let req = "GET /obj HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
            cli.tcp_send(h, req.as_bytes()).expect("request");
            sent = true;
        }
        let _ = read_available(cli, h, &mut got);
    }
    // The reclaim is answered on the channel opened anew (the node retries once a second).
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(3) {
        net.round();
    }
    done.store(true, Ordering::Relaxed);
    let forced = ha.join().expect("home agent");
    assert!(forced >= 2, "the forced reclaim was read {forced} times");
    assert!(body(&got) == &obj[..], "download byte-exact from the donor");
}
