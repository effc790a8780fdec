//! Handoff of an HTTP connection in the middle of a response, between two library nodes
//! (`dserver::Node` with the HTTP server) and a `ds-stack` client on one in-memory hub: the
//! server's per-connection quota stops the download at an exact byte count on each node, the
//! connection moves with its HTTP state (node 1 → node 2 → node 1) and the download finishes
//! byte-exact; when the peer refuses, the connection stays and is served on from where it
//! stopped, byte-exact too.

mod common;

use common::{HubNet, HUB_CLIENT, HUB_DS};
use ds_testbed::conn::{dial, read_available};
use ds_testbed::{PatternStream, TempDir};
use dserver::engine::AcceptorFault;
use dserver::Event;
use std::net::SocketAddrV6;
use std::time::{Duration, Instant};

const QUOTA: u64 = 500_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// Node 2 takes the connection and hands it back.
    Takes,
    /// Node 2 refuses every offer: the connection stays on node 1.
    Refuses,
}

fn download_with_handoffs(peer: Peer) {
    let root = TempDir::new(&format!("apps-handoff-{peer:?}")).expect("temp dir");
    let data = PatternStream::bytes(0x2545_f491_4f6c_dd1d, 1 << 20);
    std::fs::write(root.path().join("big"), &data).expect("write");

    let mut net = HubNet::new(root.path(), |i, mut cfg| {
        if peer == Peer::Refuses && i == 1 {
            cfg.fault = Some(AcceptorFault::Refuse);
        }
        cfg
    });
    for s in &mut net.servers {
        s.set_handoff_quota(Some(QUOTA));
    }
    let client = dial(
        &mut net.cli,
        HUB_CLIENT,
        SocketAddrV6::new(HUB_DS, 80, 0, 0),
    );
    let request = b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut sent = 0;
    let mut got = Vec::new();
    // Per handoff: the node it left from (or stayed on), and what that node had sent of the
    // response by then; and what a node had sent while one of its handoffs was under way
    // (the connection stopped), once per handoff.
    let (mut moves, mut kept, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
    let mut under_way = [false; 2];
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stuck after {} bytes",
            got.len()
        );
        let events = net.round();
        for (k, was) in under_way.iter_mut().enumerate() {
            let now = net.nodes[k].handing_off();
            if now && !*was {
                stopped.push((k, net.servers[k].stats().http.bytes_sent));
            }
            *was = now;
        }
        if sent < request.len() {
            if let Ok(n) = net.cli.iface.tcp_send(client, &request[sent..]) {
                sent += n;
            }
        }
        for (k, e) in events {
            let bytes = net.servers[k].stats().http.bytes_sent;
            match e {
                Event::HandedOff { .. } => moves.push((k, bytes)),
                Event::KeptHere { .. } => kept.push((k, bytes)),
                Event::Lost { cause, .. } => panic!("connection lost: {cause}"),
                _ => {}
            }
        }
        match read_available(&mut net.cli.iface, client, &mut got) {
            Ok(_) => {}
            Err(ds_stack::Error::Eof) => break,
            Err(e) => panic!("client connection failed: {e:?}"),
        }
    }

    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}\r\n", data.len())));
    assert_eq!(got.len(), head_end + data.len());
    assert!(got[head_end..] == data[..], "body differs");

    // Let the last node see the client's FIN.
    let settle = Instant::now();
    while net.servers.iter().any(|s| s.connections() > 0) {
        assert!(settle.elapsed() < Duration::from_secs(10), "not closed");
        let _ = net.round();
    }
    let [s1, s2] = [&net.servers[0], &net.servers[1]].map(|s| s.stats());
    assert_eq!(s1.accepted + s2.accepted, 1);
    assert_eq!((s1.aborted, s2.aborted), (0, 0), "{s1:?} {s2:?}");
    assert_eq!(s1.accepted, 1, "{s1:?}");
    // Requests are counted where they were answered: once, on the first node.
    assert_eq!((s1.http.requests, s2.http.requests), (1, 0));
    assert_eq!(
        s1.http.bytes_sent + s2.http.bytes_sent,
        got.len() as u64,
        "{s1:?} {s2:?}"
    );
    match peer {
        Peer::Takes => {
            // 1 MiB plus a head: node 1 stops at exactly the quota, node 2 sends exactly one
            // quota, node 1 the rest.
            assert_eq!(moves, vec![(0, QUOTA), (1, QUOTA)], "{kept:?}");
            assert_eq!(stopped, vec![(0, QUOTA), (1, QUOTA)]);
            assert_eq!((s1.handed_off, s1.adopted), (1, 1), "{s1:?}");
            assert_eq!((s2.handed_off, s2.adopted), (1, 1), "{s2:?}");
            assert_eq!(s2.http.bytes_sent, QUOTA);
            assert_eq!((s1.closed, s2.closed), (1, 0));
        }
        Peer::Refuses => {
            assert!(moves.is_empty(), "{moves:?}");
            // The first attempt stopped the response at exactly the quota; it went on here.
            assert_eq!(stopped.first(), Some(&(0, QUOTA)), "{stopped:?}");
            assert!(
                kept.iter().all(|(k, _)| *k == 0) && !kept.is_empty(),
                "{kept:?}"
            );
            assert_eq!((s1.handed_off, s1.adopted), (0, 0), "{s1:?}");
            assert_eq!((s2.accepted, s2.adopted, s2.http.bytes_sent), (0, 0, 0));
            assert_eq!(s1.closed, 1);
        }
    }
}

#[test]
fn the_quota_hands_a_download_on_at_exact_bytes_and_back() {
    download_with_handoffs(Peer::Takes);
}

#[test]
fn a_refused_handoff_leaves_the_download_to_finish_here() {
    download_with_handoffs(Peer::Refuses);
}

/// A drain whose peer refuses: one handoff is tried and refused, then the peer backs off and
/// the rounds in which no handoff can start do not count as failures (the connection is not
/// given up on after a few milliseconds); meanwhile the download goes on here, and it ends
/// byte-exact.
#[test]
fn a_drain_does_not_give_up_on_a_connection_while_its_peer_backs_off() {
    let root = TempDir::new("apps-handoff-drain-backoff").expect("temp dir");
    let data = PatternStream::bytes(0x5eed, 64 << 20);
    std::fs::write(root.path().join("big"), &data).expect("write");
    let mut net = HubNet::new(root.path(), |i, mut cfg| {
        if i == 1 {
            cfg.fault = Some(AcceptorFault::Refuse);
        }
        cfg
    });
    let client = dial(
        &mut net.cli,
        HUB_CLIENT,
        SocketAddrV6::new(HUB_DS, 80, 0, 0),
    );
    let request = b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut sent = 0;
    let mut got = Vec::new();
    let (mut tried, mut not_started) = (0, 0);
    let mut drain_since: Option<(Instant, u64)> = None;
    let mut buf = vec![0u8; 8 << 10];
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stuck after {} bytes",
            got.len()
        );
        for (_, e) in net.round() {
            if let Event::KeptHere { tried: t, .. } = e {
                if t {
                    tried += 1;
                } else {
                    not_started += 1;
                }
            }
        }
        if sent < request.len() {
            if let Ok(n) = net.cli.iface.tcp_send(client, &request[sent..]) {
                sent += n;
            }
        }
        if drain_since.is_none() && got.len() > 64 << 10 {
            let (s, n) = (&mut net.servers[0], &mut net.nodes[0]);
            assert_eq!(s.start_drain(n, None), Ok(1));
            drain_since = Some((Instant::now(), net.servers[0].stats().http.bytes_sent));
        }
        // 150 ms into the drain (inside the first back-off of 250 ms): one handoff tried and
        // refused, the rounds since not counted against the connection.
        if let Some((t, at)) =
            drain_since.filter(|(t, _)| t.elapsed() >= Duration::from_millis(150))
        {
            let info = net.servers[0].drain_info(&net.nodes[0]).expect("draining");
            assert_eq!(tried, 1, "{info:?}");
            // Served meanwhile (counted at the server: the client's window would hide a
            // stall for a while).
            let served = net.servers[0].stats().http.bytes_sent - at;
            assert!(
                served > 256 << 10,
                "the download stalled during the back-off: {served} bytes in {:?}",
                t.elapsed()
            );
            assert!(not_started > 0, "the drain kept asking");
            assert_eq!(info.staying, 0, "{info:?}");
            break;
        }
        // A client reading 8 KiB per 100 µs at most: the download outlasts the check.
        std::thread::sleep(Duration::from_micros(100));
        match net.cli.iface.tcp_recv(client, &mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(ds_stack::Error::Eof) => panic!("the download ended before the drain's check"),
            Err(e) => panic!("client connection failed: {e:?}"),
        }
    }
    // The rest of the download, here.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stuck after {} bytes",
            got.len()
        );
        let _ = net.round();
        match read_available(&mut net.cli.iface, client, &mut got) {
            Ok(_) => {}
            Err(ds_stack::Error::Eof) => break,
            Err(e) => panic!("client connection failed: {e:?}"),
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(got[head_end..] == data[..], "body differs");
}
