//! `dsctl drain` empties a node: `dsha xdp` and two `dsnode --device afxdp` processes
//! (transparent steering); 100 clients each have a 256 KiB response in progress on node 1
//! (they read its first KiB, then stop reading, so every connection has unsent and
//! unacknowledged data). `dsctl drain --wait` on node 1: the home agent sends new clients to
//! node 2, node 1 stops accepting, hands every connection to node 2 and exits. Every client
//! then reads its whole response, byte-exact, without an error; node 2 adopted all 100; a
//! new client is served (by node 2). The same with node 1 on the kernel's own sockets
//! (`--device kernel`), and with both nodes serving two receive queues each (`--queues 2`).
//! Needs root; prints SKIP otherwise.

mod cluster;

use cluster::{dsctl, Addrs, Cluster, UP};
use ds_testbed::{require_root, PatternStream};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CLIENTS: usize = 100;
const SIZE: usize = 256 << 10;
/// What each client reads before the drain.
const FIRST: usize = 1024;

/// Read one HTTP/1.1 response's head from `s` (plus whatever body came with it).
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let n = s.read(&mut chunk).expect("read the response head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn dsctl_drain_moves_every_connection_and_the_node_exits() {
    if !require_root("dsctl_drain_moves_every_connection_and_the_node_exits") {
        return;
    }
    run(Cluster::start("dr", Addrs::new(0xe1, 2)), "afxdp");
}

#[test]
fn dsctl_drain_moves_every_kernel_socket_and_the_node_exits() {
    if !require_root("dsctl_drain_moves_every_kernel_socket_and_the_node_exits") {
        return;
    }
    let c = Cluster::start("dq", Addrs::new(0xe5, 2));
    c.kernel_addrs(0);
    run(c, "kernel");
}

/// Both nodes with a stack and a handoff engine per receive queue (`--queues 2`): every
/// queue's node drains, and the process exits when all have.
#[test]
fn dsctl_drain_empties_every_queue_of_a_node() {
    if !require_root("dsctl_drain_empties_every_queue_of_a_node") {
        return;
    }
    run_with(
        Cluster::start_queues("dn", Addrs::new(0xf9, 2), 2),
        "afxdp",
        &["--queues", "2"],
    );
}

/// The scenario with node 1 on `device`.
fn run(c: Cluster, device: &str) {
    run_with(c, device, &[]);
}

/// The scenario with node 1 on `device` and `extra` options for both nodes.
fn run_with(mut c: Cluster, device: &str, extra: &[&str]) {
    let body = PatternStream::bytes(0xd7a1, SIZE);
    let socks = c.start_file_servers_with(device, &body, extra);
    let ds: std::net::Ipv6Addr = c.a.ds().parse().expect("DS address");

    // 100 responses in progress on node 1 (the home agent's binding names it).
    let mut conns = c.topo.client.run(move || {
        (0..CLIENTS)
            .map(|_| {
                let mut s = TcpStream::connect((ds, 80)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: ds\r\n\r\n")
                    .expect("request");
                let (head, mut got) = read_head(&mut s);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                while got.len() < FIRST {
                    let mut b = [0u8; 1024];
                    let n = s.read(&mut b).expect("read");
                    assert!(n > 0, "closed early");
                    got.extend_from_slice(&b[..n]);
                }
                (s, got)
            })
            .collect::<Vec<_>>()
    });
    let before = dsctl(&socks[0], &["status"]).expect("status");
    assert_eq!(before["http"]["accepted"], CLIENTS, "{before}");
    let members = dsctl(&socks[0], &["members"]).expect("members");
    assert_eq!(members[1]["node"], c.a.ctl_listen(1).as_str(), "{members}");

    let t = Instant::now();
    let drained = dsctl(&socks[0], &["drain", "--wait", "--wait-s", "100"]).expect("drain");
    let took = t.elapsed();
    assert_eq!(drained["started"]["draining"], CLIENTS, "{drained}");
    assert_eq!(drained["result"]["drained"], true, "{drained}");
    let (n1, log1, _) = &mut c.nodes[0];
    let t = Instant::now();
    let status = loop {
        match n1.try_wait().expect("node 1") {
            Some(s) => break Some(s),
            None if t.elapsed() > UP => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(status.is_some_and(|s| s.success()), "node 1: {status:?}");
    let log1 = std::fs::read_to_string(log1).expect("node 1 log");
    assert!(
        log1.contains("sends new clients to the peer"),
        "the binding did not move: {log1}"
    );

    // Every client reads the rest of its response, byte-exact.
    for (k, (s, got)) in conns.iter_mut().enumerate() {
        let mut rest = vec![0u8; SIZE - got.len()];
        s.read_exact(&mut rest)
            .unwrap_or_else(|e| panic!("client {k}: {e}"));
        got.extend_from_slice(&rest);
        assert!(*got == body, "client {k}: the response differs");
    }
    let s2 = dsctl(&socks[1], &["status"]).expect("status");
    assert_eq!(s2["handoff"]["adopted"], CLIENTS, "{s2}");

    // A new client is served, by node 2 now.
    let fresh = c.topo.client.run(move || {
        let mut s = TcpStream::connect((ds, 80)).expect("connect after the drain");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /big.bin HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read");
        all.len()
    });
    assert!(fresh > SIZE, "the new client got {fresh} bytes");
    eprintln!("drain of {CLIENTS} connections ({device}) took {took:?}");
    assert!(c.stop(), "the home agent removed its pins");
}
