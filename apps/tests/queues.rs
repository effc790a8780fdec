//! Several cores (issues 10 and 13): one `dserver` node per receive queue of an AF_XDP device,
//! each on its own thread with its own stack (`Builder::open_queues` + `Builder::queue`), on
//! a veth with two queues. Kernel TCP clients in another namespace make 200 connections over
//! four threads; the sender's flow hash spreads them over both queues, both nodes serve, and
//! every response arrives byte-exact. Needs root; prints SKIP otherwise.

use ds_testbed::{require_root, veth_queues, Netns};
use dserver::{ConnId, Device, Node};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// One node: answers `GET /N` with N pattern bytes and closes; non-blocking, every
/// connection at once. Returns how many it served and its stack's counters.
fn serve(mut node: Node, stop: &AtomicBool) -> (usize, ds_stack::Stats) {
    let mut conns: HashMap<ConnId, (Vec<u8>, Option<(Vec<u8>, usize)>)> = HashMap::new();
    let mut ready = Vec::new();
    let mut buf = [0u8; 4096];
    let mut served = 0;
    while !stop.load(Ordering::Relaxed) {
        node.poll(Duration::from_millis(5)).expect("poll");
        while let Some(a) = node.try_accept() {
            conns.insert(a.conn, (Vec::new(), None));
        }
        node.take_ready(&mut ready);
        ready.clear();
        let mut done = Vec::new();
        for (c, (req, resp)) in conns.iter_mut() {
            if resp.is_none() {
                match node.read(*c, &mut buf) {
                    Ok(0) | Err(_) => {}
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
                if req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let line = String::from_utf8_lossy(req);
                    let n: usize = line
                        .split(' ')
                        .nth(1)
                        .and_then(|p| p.trim_start_matches('/').parse().ok())
                        .unwrap_or(0);
                    let mut out = format!("HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n")
                        .into_bytes();
                    out.extend(pattern(n));
                    *resp = Some((out, 0));
                }
            }
            if let Some((out, off)) = resp {
                while *off < out.len() {
                    match node.write(*c, &out[*off..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => *off += k,
                    }
                }
                if *off == out.len() {
                    done.push(*c);
                }
            }
        }
        for c in done {
            let _ = node.close(c);
            conns.remove(&c);
            served += 1;
        }
    }
    (served, node.interface_stats().clone())
}

fn get(to: SocketAddr) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| e.to_string())?;
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
                        serve(node, stop)
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
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), failed.first());
    assert!(
        results.iter().all(|r| r.as_ref().is_ok_and(|b| *b == body)),
        "a response arrived corrupted"
    );
    let served: Vec<usize> = nodes.iter().map(|(n, _)| *n).collect();
    assert_eq!(served.iter().sum::<usize>(), CLIENTS * PER_CLIENT);
    assert!(served.iter().all(|n| *n > 0), "both queues serve: {served:?}");
}
