//! `dsctl drain` in proxy mode: nginx (Debian's package, keep-alive) behind `dsnode --backend`
//! on each of two nodes, `dsha xdp` sending new clients to node 1 (policy `local`: it keeps
//! them). Twenty clients each fetch a file over a keep-alive connection and stay connected;
//! one more has sent half a request head. `dsctl drain --wait` on node 1: the home agent
//! sends new clients to node 2, node 1 hands every connection to node 2 — the half-read one
//! at once with its bytes, the keep-alive ones between two exchanges (every request
//! answered) — and exits. Each client then sends its next request on the same connection and
//! gets the file byte-exact from node 2's backend, and a new client is served. Then
//! `--per-request` with round robin: the requests of one keep-alive connection alternate
//! between the two nodes' backends, the connection moving between exchanges. Needs root and
//! nginx; prints SKIP otherwise.

mod cluster;

use cluster::{dsctl, Addrs, Cluster, UP};
use ds_testbed::{require_root, PatternStream};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const CLIENTS: usize = 20;
const SIZE: usize = 64 << 10;
const REQUEST: &[u8] = b"GET /file.bin HTTP/1.1\r\nHost: ds\r\n\r\n";

/// One response on `s`: its status line and body (by Content-Length).
fn response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let (head, start) = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&buf[..end]).into_owned(), end + 4);
        }
        let n = s.read(&mut chunk).expect("read a response head");
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = buf[start..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).expect("read a body");
        assert!(n > 0, "closed in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (head.lines().next().unwrap_or_default().to_string(), body)
}

fn nginx_conf(dir: &Path, www: &Path, i: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx{i}.pid;\n\
         error_log {d}/nginx{i}-error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n access_log {d}/nginx{i}-access.log;\n default_type application/octet-stream;\n\
         keepalive_timeout 300s;\n keepalive_requests 100000;\n\
         client_body_temp_path {d}/tmp{i}-body;\n proxy_temp_path {d}/tmp{i}-proxy;\n\
         fastcgi_temp_path {d}/tmp{i}-fcgi;\n uwsgi_temp_path {d}/tmp{i}-uwsgi;\n\
         scgi_temp_path {d}/tmp{i}-scgi;\n server {{ listen [::1]:8000; root {}; }}\n}}\n",
        www.display()
    )
}

#[test]
fn dsctl_drain_moves_proxied_keep_alive_connections_between_requests() {
    if !require_root("dsctl_drain_moves_proxied_keep_alive_connections_between_requests") {
        return;
    }
    if std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIP dsctl_drain_moves_proxied_keep_alive_connections_between_requests: no nginx"
        );
        return;
    }
    let mut c = Cluster::start("pd", Addrs::new(0xf7, 2));
    let (socks, backends) = proxies(&mut c, &["--policy", "local"]);
    let ds: std::net::Ipv6Addr = c.a.ds().parse().expect("DS address");

    // Twenty keep-alive connections, each after one exchange; one half way through its first
    // request head.
    let (mut conns, mut half) = c.topo.client.run(move || {
        let conns: Vec<TcpStream> = (0..CLIENTS)
            .map(|k| {
                let mut s = TcpStream::connect((ds, 80)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                s.write_all(REQUEST).expect("request");
                let (status, got) = response(&mut s);
                assert!(status.contains(" 200 "), "client {k}: {status}");
                assert!(got == body_of(), "client {k}: the first response differs");
                s
            })
            .collect();
        let mut half = TcpStream::connect((ds, 80)).expect("connect");
        half.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        half.write_all(&REQUEST[..24]).expect("half a head");
        (conns, half)
    });
    let t = Instant::now();
    loop {
        let st = dsctl(&socks[0], &["status"]).expect("status");
        if st["open"].as_u64() == Some(CLIENTS as u64 + 1) {
            break;
        }
        assert!(t.elapsed() < UP, "node 1 does not hold every client: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let t = Instant::now();
    let drained = dsctl(&socks[0], &["drain", "--wait", "--wait-s", "60"]).expect("drain");
    let took = t.elapsed();
    assert_eq!(drained["started"]["draining"], CLIENTS + 1, "{drained}");
    assert_eq!(drained["result"]["drained"], true, "{drained}");
    let (n1, log1, out1) = &mut c.nodes[0];
    let t = Instant::now();
    let status = loop {
        match n1.try_wait().expect("node 1") {
            Some(s) => break Some(s),
            None if t.elapsed() > UP => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let log1 = std::fs::read_to_string(log1).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "node 1: {status:?}\n{log1}"
    );
    assert!(
        log1.contains("sends new clients to the peer"),
        "the binding did not move: {log1}"
    );
    let out1 = std::fs::read_to_string(out1).unwrap_or_default();
    eprintln!("node 1 at exit: {out1}");
    assert!(
        out1.contains(&format!("\"drained\":{}", CLIENTS + 1)),
        "node 1 moved every connection: {out1}"
    );

    // The next request on every connection, answered by node 2's backend.
    c.topo.client.run(|| {
        for (k, s) in conns.iter_mut().enumerate() {
            s.write_all(REQUEST).expect("second request");
            let (status, got) = response(s);
            assert!(status.contains(" 200 "), "client {k}: {status}");
            assert!(got == body_of(), "client {k}: the second response differs");
        }
        half.write_all(&REQUEST[24..])
            .expect("the rest of the head");
        let (status, got) = response(&mut half);
        assert!(status.contains(" 200 "), "the half-read client: {status}");
        assert!(got == body_of(), "the half-read client's response differs");
    });
    let s2 = dsctl(&socks[1], &["status"]).expect("status");
    assert_eq!(s2["proxy"]["arrived"], CLIENTS + 1, "{s2}");
    // A new client, served by node 2 now.
    let fresh = c.topo.client.run(move || {
        let mut s = TcpStream::connect((ds, 80)).expect("connect after the drain");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(REQUEST).expect("request");
        response(&mut s).1
    });
    assert!(fresh == body_of(), "the new client's response differs");
    eprintln!("proxy drain of {} connections took {took:?}", CLIENTS + 1);
    drop(backends);
    assert!(c.stop(), "the home agent removed its pins");
}

fn body_of() -> Vec<u8> {
    PatternStream::bytes(0x9d7a, SIZE)
}

/// nginx on `[::1]:8000` and `dsnode --backend` in front of it on each node of `c`, with
/// `policy` options; the proxies' control sockets and the backends.
fn proxies(c: &mut Cluster, policy: &[&str]) -> ([std::path::PathBuf; 2], Vec<ds_testbed::Child>) {
    let www = c.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("file.bin"), body_of()).expect("file");
    let mut backends = Vec::new();
    for i in 0..2 {
        let ns = &c.topo.nodes[i];
        ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
        let conf = c.dir.path().join(format!("nginx{i}.conf"));
        std::fs::write(&conf, nginx_conf(c.dir.path(), &www, i)).expect("conf");
        let args = ["-c".to_string(), conf.display().to_string()];
        let (p, _, _) = ns
            .spawn_logged("nginx", &args, c.dir.path(), &format!("nginx{}", i + 1))
            .expect("nginx");
        ds_testbed::wait_tcp_listening(ns, 8000, UP).expect("nginx up");
        backends.push(p);
    }
    let socks = [0, 1].map(|i| c.dir.path().join(format!("proxy{}.sock", i + 1)));
    for (i, sock) in socks.iter().enumerate() {
        let mut args: Vec<String> = ["--backend", "[::1]:8000"].map(String::from).to_vec();
        args.extend(policy.iter().map(|a| a.to_string()));
        args.extend(c.peer_args(i));
        args.extend(["--control-socket".into(), sock.display().to_string()]);
        c.start_dsnode(i, &args, "serving proxy");
    }
    (socks, backends)
}

fn have_nginx(test: &str) -> bool {
    if std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIP {test}: no nginx");
        return false;
    }
    true
}

/// `--per-request` round robin: one keep-alive connection's requests alternate between the
/// nodes' backends, every response byte-exact.
#[test]
fn per_request_placement_moves_a_keep_alive_connection_between_exchanges() {
    let name = "per_request_placement_moves_a_keep_alive_connection_between_exchanges";
    if !require_root(name) || !have_nginx(name) {
        return;
    }
    const REQUESTS: usize = 10;
    let mut c = Cluster::start("pr", Addrs::new(0xfa, 2));
    let (socks, backends) = proxies(&mut c, &["--policy", "round-robin", "--per-request"]);
    let ds: std::net::Ipv6Addr = c.a.ds().parse().expect("DS address");
    let t = Instant::now();
    c.topo.client.run(move || {
        let mut s = TcpStream::connect((ds, 80)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        for k in 0..REQUESTS {
            s.write_all(REQUEST).expect("request");
            let (status, got) = response(&mut s);
            assert!(status.contains(" 200 "), "request {k}: {status}");
            assert!(got == body_of(), "request {k}: the response differs");
        }
    });
    let took = t.elapsed();
    // Each backend's access log has a line per request it answered.
    let served: Vec<usize> = (0..2)
        .map(|i| {
            std::fs::read_to_string(c.dir.path().join(format!("nginx{i}-access.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("GET /file.bin"))
                .count()
        })
        .collect();
    let s1 = dsctl(&socks[0], &["status"]).expect("status");
    let s2 = dsctl(&socks[1], &["status"]).expect("status");
    eprintln!(
        "{REQUESTS} requests on one connection in {took:?}: backends {served:?}; node 1 {}, node 2 {}",
        s1["proxy"], s2["proxy"]
    );
    assert_eq!(served.iter().sum::<usize>(), REQUESTS, "{served:?}");
    assert!(
        served.iter().all(|n| *n >= REQUESTS / 2 - 1),
        "the requests alternate: {served:?}"
    );
    drop(backends);
    assert!(c.stop(), "the home agent removed its pins");
}
