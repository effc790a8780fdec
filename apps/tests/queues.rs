//! Several cores (issues 10 and 13): one `dserver` node per receive queue of an AF_XDP device,
//! each on its own thread with its own stack (`Builder::open_queues` + `Builder::queue`), on
//! a veth with two queues. Kernel TCP clients in another namespace make 200 connections over
//! four threads; the sender's flow hash spreads them over both queues, both nodes serve, and
//! every response arrives byte-exact. Then two such nodes (two queues each) behind `dsha`:
//! downloads from the DS address are handed from node 1 to node 2 mid-response by whichever
//! of node 1's queue nodes serves them, taken by whichever of node 2's got the offer, and
//! finish byte-exact with no client retransmission, though the home agent's tunnel may bring
//! their segments to node 2's other queue (then they are passed round to it). Needs root;
//! prints SKIP otherwise.

mod cluster;

use ds_testbed::{require_root, veth_queues, Netns};
use dserver::{ConnId, Device, Node};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DS: &str = "fd00:5f::80";
const CLIENTS: usize = 4;
const PER_CLIENT: usize = 50;
const SIZE: usize = 20_000;

fn builder() -> dserver::Builder {
    Node::builder()
        .ds_addr(DS.parse().expect("literal"))
        .device(Device::afxdp("qs0"))
        .port(80)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn get(to: SocketAddr) -> Result<Vec<u8>, String> {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET /{SIZE} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| e.to_string())?;
    let at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no head")?;
    Ok(got[at + 4..].to_vec())
}

#[test]
fn one_node_per_queue_serves_on_every_queue() {
    if !require_root("one_node_per_queue_serves_on_every_queue") {
        return;
    }
    let cli = Netns::new("qc").expect("namespace");
    let srv = Netns::new("qs").expect("namespace");
    veth_queues(&cli, "qc0", &srv, "qs0", 2).expect("veth");
    ds_testbed::add_addr(&cli, "qc0", "fd00:5f::c/64").expect("address");
    // AF_XDP sees the client's checksums as they are: no partial ones.
    cli.command("ethtool")
        .args(["-K", "qc0", "tx", "off"])
        .output()
        .expect("ethtool");
    let stop = AtomicBool::new(false);
    let body = pattern(SIZE);
    let to = SocketAddr::from((DS.parse::<Ipv6Addr>().expect("literal"), 80));
    let (nodes, results, took) = srv.run(|| {
        let queues = builder().open_queues().expect("queues");
        assert_eq!(queues.len(), 2, "one queue each");
        std::thread::scope(|s| {
            let stop = &stop;
            let nodes: Vec<_> = queues
                .into_iter()
                .map(|q| {
                    s.spawn(move || {
                        let node = builder().queue(q).build().expect("node");
                        let counts = Counts::default();
                        let st = serve(node, stop, None, &counts);
                        (counts.served.load(Ordering::SeqCst), st)
                    })
                })
                .collect();
            let t = Instant::now();
            let results: Vec<Result<Vec<u8>, String>> = cli.run(|| {
                std::thread::scope(|s| {
                    let cs: Vec<_> = (0..CLIENTS)
                        .map(|_| s.spawn(|| (0..PER_CLIENT).map(|_| get(to)).collect::<Vec<_>>()))
                        .collect();
                    cs.into_iter()
                        .flat_map(|c| c.join().expect("client"))
                        .collect()
                })
            });
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            let nodes: Vec<_> = nodes.into_iter().map(|n| n.join().expect("node")).collect();
            (nodes, results, took)
        })
    });
    for (i, (served, st)) in nodes.iter().enumerate() {
        eprintln!(
            "queue {i}: {served} connections served; passed to the sibling {}, from it {}, \
             resets {}",
            st.sibling_tx, st.sibling_rx, st.tcp_no_socket
        );
    }
    eprintln!("{} connections in {took:?}", results.len());
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        results.iter().all(|r| r.as_ref().is_ok_and(|b| *b == body)),
        "a response arrived corrupted"
    );
    let served: Vec<usize> = nodes.iter().map(|(n, _)| *n).collect();
    assert_eq!(served.iter().sum::<usize>(), CLIENTS * PER_CLIENT);
    assert!(
        served.iter().all(|n| *n > 0),
        "both queues serve: {served:?}"
    );
}

/// How far a response got: the state that travels with a handed-off connection.
#[derive(serde::Serialize, serde::Deserialize)]
struct Progress {
    sent: usize,
    size: usize,
}

/// A response in progress here.
struct Resp {
    head: Vec<u8>,
    p: Progress,
    leaving: bool,
}

/// What a queue's node did.
#[derive(Default)]
struct Counts {
    handed_off: AtomicUsize,
    adopted: AtomicUsize,
    kept: AtomicUsize,
    served: AtomicUsize,
}

/// One queue's node: answers `GET /N` with N pattern bytes, every connection at once
/// (non-blocking); with `handoff` `(peer, after)` it hands each response to `peer` once
/// `after` body bytes went out. Returns its stack's counters.
fn serve(
    mut node: Node,
    stop: &AtomicBool,
    handoff: Option<(SocketAddr, usize)>,
    counts: &Counts,
) -> ds_stack::Stats {
    let after = handoff.map(|h| h.1);
    let mut reqs: HashMap<ConnId, Vec<u8>> = HashMap::new();
    let mut resps: HashMap<ConnId, Resp> = HashMap::new();
    let mut ready = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        node.poll(Duration::from_millis(2)).expect("poll");
        while let Some(a) = node.try_accept() {
            match a.state_value::<Progress>() {
                Some(p) => {
                    counts.adopted.fetch_add(1, Ordering::Relaxed);
                    let p = p.expect("progress");
                    resps.insert(
                        a.conn,
                        Resp {
                            head: Vec::new(),
                            p,
                            leaving: false,
                        },
                    );
                }
                None => {
                    reqs.insert(a.conn, Vec::new());
                }
            }
        }
        for e in node.take_events().collect::<Vec<_>>() {
            match e {
                dserver::Event::HandedOff { conn, .. } => {
                    counts.handed_off.fetch_add(1, Ordering::Relaxed);
                    resps.remove(&conn);
                }
                dserver::Event::KeptHere { conn, cause, .. } => {
                    counts.kept.fetch_add(1, Ordering::Relaxed);
                    eprintln!("kept here: {cause}");
                    if let Some(r) = resps.get_mut(&conn) {
                        r.leaving = false;
                    }
                }
                other => eprintln!("event: {other:?}"),
            }
        }
        node.take_ready(&mut ready);
        ready.clear();
        let mut started = Vec::new();
        for (c, req) in reqs.iter_mut() {
            if let Ok(n) = node.read(*c, &mut buf) {
                req.extend_from_slice(&buf[..n]);
            }
            if req.windows(4).any(|w| w == b"\r\n\r\n") {
                let line = String::from_utf8_lossy(req);
                let size: usize = line
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                started.push((*c, size));
            }
        }
        for (c, size) in started {
            reqs.remove(&c);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
            resps.insert(
                c,
                Resp {
                    head,
                    p: Progress { sent: 0, size },
                    leaving: false,
                },
            );
        }
        let mut done = Vec::new();
        for (c, r) in resps.iter_mut() {
            if r.leaving {
                continue;
            }
            while !r.head.is_empty() {
                match node.write(*c, &r.head) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => drop(r.head.drain(..k)),
                }
            }
            let stop_at = after.map_or(r.p.size, |a| a.min(r.p.size));
            while r.head.is_empty() && r.p.sent < stop_at {
                let end = stop_at.min(r.p.sent + 16384);
                let chunk: Vec<u8> = (r.p.sent..end).map(|i| (i % 251) as u8).collect();
                match node.write(*c, &chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => r.p.sent += k,
                }
            }
            if r.p.sent == r.p.size {
                done.push(*c);
            } else if let Some((peer, _)) = handoff.filter(|_| Some(r.p.sent) == after) {
                let state = postcard::to_allocvec(&r.p).expect("encode");
                match node.start_handoff(*c, peer, state) {
                    Ok(()) => r.leaving = true,
                    Err(e) => eprintln!("handoff not started: {e}"),
                }
            }
        }
        for c in done {
            let _ = node.close(c);
            resps.remove(&c);
            counts.served.fetch_add(1, Ordering::Relaxed);
        }
    }
    node.interface_stats().clone()
}

#[test]
fn downloads_move_between_nodes_of_two_queues_each() {
    if !require_root("downloads_move_between_nodes_of_two_queues_each") {
        return;
    }
    const DOWNLOADS: usize = 6;
    const BIG: usize = 2 << 20;
    let c = cluster::Cluster::start_queues("qh", cluster::Addrs::new(0xf6, 2), 2);
    let stop = AtomicBool::new(false);
    let up = AtomicUsize::new(0);
    let counts: [Counts; 2] = Default::default();
    let stats = std::thread::scope(|s| {
        let nodes: Vec<_> = (0..2)
            .map(|i| {
                let (c, stop, up, counts) = (&c, &stop, &up, &counts[i]);
                s.spawn(move || {
                    c.topo.nodes[i].run(|| {
                        let b = || {
                            Node::builder()
                                .ds_addr(c.a.ds().parse().expect("DS"))
                                .care_of(c.a.coa(i).parse().expect("CoA"))
                                .device(Device::afxdp("n0"))
                                .secret_file(&c.secret)
                                .control_listen(c.a.ctl_listen(i).parse().expect("control"))
                                .peer(c.a.ctl_listen(1 - i).parse().expect("peer"))
                                .home_agent(c.a.ha_control().parse().expect("home agent"))
                        };
                        let queues = b().open_queues().expect("queues");
                        assert_eq!(queues.len(), 2);
                        std::thread::scope(|s2| {
                            let ws: Vec<_> = queues
                                .into_iter()
                                .map(|q| {
                                    let b = &b;
                                    s2.spawn(move || {
                                        let node = b().queue(q).build().expect("node");
                                        up.fetch_add(1, Ordering::SeqCst);
                                        let peer = c.a.ctl_listen(1 - i).parse().expect("peer");
                                        let handoff = (i == 0).then_some((peer, BIG / 2));
                                        serve(node, stop, handoff, counts)
                                    })
                                })
                                .collect();
                            ws.into_iter()
                                .map(|w| w.join().expect("worker"))
                                .collect::<Vec<_>>()
                        })
                    })
                })
            })
            .collect();
        let t = Instant::now();
        while up.load(Ordering::SeqCst) < 4 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the nodes did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The channels to the peer and the home agent come up.
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..DOWNLOADS {
            c.download_pattern(BIG);
        }
        stop.store(true, Ordering::SeqCst);
        nodes
            .into_iter()
            .map(|n| n.join().expect("node"))
            .collect::<Vec<_>>()
    });
    for (i, st) in stats.iter().enumerate() {
        for (q, st) in st.iter().enumerate() {
            eprintln!(
                "node {} queue {q}: passed to the sibling {}, from it {}, resets {}",
                i + 1,
                st.sibling_tx,
                st.sibling_rx,
                st.tcp_no_socket
            );
        }
    }
    let n = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    eprintln!(
        "node 1: {} handed off, {} kept; node 2: {} adopted",
        n(&counts[0].handed_off),
        n(&counts[0].kept),
        n(&counts[1].adopted)
    );
    assert_eq!(
        n(&counts[0].handed_off),
        DOWNLOADS,
        "every download handed off"
    );
    assert_eq!(n(&counts[1].adopted), DOWNLOADS, "and adopted by node 2");
    assert!(c.stop(), "the home agent removed its pins");
}
