//! The HTTP server's limits against hostile clients (issue 12, findings 5 and 6), over the
//! in-memory cable (no root): a request head trickled in is cut at the header deadline
//! however often its bytes come (408), a client that reads nothing holds no more than the
//! stack's not-sent limit and is aborted at the stall timeout, and over the connection limit
//! a client is answered 503.

mod common;

use common::MemNet;
use ds_apps::server::ServerConfig;
use ds_stack::{Duration, DEFAULT_NOTSENT_LOWAT};
use ds_testbed::conn::{dial, read_available};
use ds_testbed::TempDir;
use std::net::SocketAddrV6;

fn root_with(name: &str, len: usize) -> TempDir {
    let root = TempDir::new(name).expect("temp dir");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.path().join("big"), &data).expect("write");
    root
}

/// A client that asks for `/big` and reads nothing, run until `done` or `limit`: whether
/// `done` came, and the server's send queue for it, the last seen and the largest.
fn stuck_client(
    net: &mut MemNet,
    limit: std::time::Duration,
    mut done: impl FnMut(&MemNet) -> bool,
) -> (bool, usize, usize) {
    net.reading = false;
    let request: &[u8] = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut sent = 0;
    let (client, _) = net
        .cli
        .iface
        .tcp_endpoints(net.client)
        .expect("client endpoints");
    let (mut last, mut most) = (0, 0);
    let ok = net.run_until(limit, |net| {
        net.send(request, &mut sent);
        if let Some((c, _)) = net.server.conn_of(client) {
            last = net.srv.send_queued(c);
            most = most.max(last);
        }
        done(net)
    });
    (ok, last, most)
}

/// A second client connects; what the server answered it before closing.
fn second_client(net: &mut MemNet) -> String {
    let to = SocketAddrV6::new(common::SERVER, 80, 0, 0);
    let second = dial(&mut net.cli, common::CLIENT, to);
    let mut got = Vec::new();
    let mut eof = false;
    let ok = net.run_until(std::time::Duration::from_secs(5), |net| {
        match read_available(&mut net.cli.iface, second, &mut got) {
            Ok(_) => {}
            Err(ds_stack::Error::Eof) => eof = true,
            Err(e) => panic!("second client: {e:?}"),
        }
        eof
    });
    assert!(ok, "the second client was not answered and closed");
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_trickled_request_head_is_cut_at_the_header_deadline() {
    let root = root_with("lim-head", 16);
    let cfg = ServerConfig {
        header_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let mut net = MemNet::with_config(root.path(), cfg);
    let request = b"GET /big HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let start = std::time::Instant::now();
    let mut next = start;
    let mut sent = 0;
    // One byte every 20 ms (each one would reset an idle timer), never the end of the head.
    let ok = net.run_until(std::time::Duration::from_secs(5), |net| {
        if std::time::Instant::now() >= next && sent < request.len() {
            let upto = sent + 1;
            net.send(&request[..upto], &mut sent);
            next += std::time::Duration::from_millis(20);
        }
        net.eof
    });
    let took = start.elapsed();
    assert!(ok, "the server never closed");
    let got = String::from_utf8_lossy(&net.got).into_owned();
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
    assert!(
        took < std::time::Duration::from_millis(900),
        "closed after {took:?}"
    );
    assert_eq!(net.server.stats().header_timeouts, 1);
}

#[test]
fn a_client_that_reads_nothing_holds_little_and_is_aborted() {
    // Far more than the client's window: what it does not take must stay in the file.
    let root = root_with("lim-stuck", 32 << 20);
    let cfg = ServerConfig {
        stall_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let mut net = MemNet::with_config(root.path(), cfg);
    // What the server holds for it, last seen before the abort (the client's window is closed
    // by then: what was in flight sits in the client's buffer).
    let (ok, held, _) = stuck_client(&mut net, std::time::Duration::from_secs(20), |net| {
        net.server.stats().stalled == 1
    });
    assert!(
        ok,
        "the stuck client was never aborted: {:?}",
        net.server.stats()
    );
    eprintln!("server-side buffer of a stuck client: {held} bytes");
    assert!(
        held <= DEFAULT_NOTSENT_LOWAT,
        "the server buffered {held} bytes for a client that reads nothing"
    );
    let settle = net.run_until(std::time::Duration::from_secs(2), |net| {
        net.server.connections() == 0
    });
    assert!(settle, "the aborted connection is still held");
}

#[test]
fn over_the_connection_limit_a_client_gets_503() {
    let root = root_with("lim-conns", 16);
    let cfg = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let mut net = MemNet::with_config(root.path(), cfg);
    // The first client is served (its connection stays open: keep-alive).
    let request: &[u8] = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut sent = 0;
    assert!(net.run_until(std::time::Duration::from_secs(5), |net| {
        net.send(request, &mut sent);
        net.got.ends_with(&[14, 15])
    }));
    // A second one, over the limit.
    let text = second_client(&mut net);
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert_eq!(net.server.stats().refused, 1);
}

#[test]
fn at_the_total_buffer_limit_nobody_gets_more_and_new_clients_get_503() {
    let root = root_with("lim-total", 32 << 20);
    let limit = 100 << 10;
    let cfg = ServerConfig {
        max_buffered: limit,
        ..ServerConfig::default()
    };
    let mut net = MemNet::with_config(root.path(), cfg);
    // The stuck client fills the node's budget, no more.
    let (_, _, held) = stuck_client(&mut net, std::time::Duration::from_secs(2), |_| false);
    eprintln!("a stuck client under a {limit}-byte node budget: {held} bytes queued at most");
    assert!(held > 0);
    assert!(
        held <= limit + ds_apps::http::CHUNK,
        "{held} bytes queued past the node's limit"
    );
    // A new client is answered 503 while the budget is spent.
    let text = second_client(&mut net);
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
}
