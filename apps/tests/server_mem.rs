//! The HTTP server on a `ds-stack` interface, with a `ds-stack` client on the other end of an
//! in-memory cable. No root, no namespaces: this exercises the server loop (accept, read, write
//! as send space allows, close, release) deterministically enough for any CI.

mod common;

use common::MemNet;
use ds_testbed::TempDir;

#[test]
fn serves_pipelined_requests_over_the_userspace_stack() {
    let root = TempDir::new("apps-mem").expect("temp dir");
    // Larger than the default send buffer, so the body must be streamed.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: u32| (i % 253) as u8)
        .collect();
    std::fs::write(root.path().join("big"), &data).expect("write");

    let mut net = MemNet::new(root.path());
    let request: &[u8] = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /missing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut sent = 0;
    let ok = net.run_until(std::time::Duration::from_secs(60), |net| {
        net.send(request, &mut sent);
        net.eof
    });
    let got = &net.got;
    assert!(ok, "no end of stream after {} response bytes", got.len());

    // First response: the file, streamed.
    let head_end = net.body_start();
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", data.len())),
        "{head}"
    );
    let body_end = head_end + data.len();
    assert!(got[head_end..body_end] == data[..], "body differs");
    // Second response: 404, then the server closed the connection.
    let rest = String::from_utf8_lossy(&got[body_end..]).into_owned();
    assert!(rest.starts_with("HTTP/1.1 404 Not Found\r\n"), "{rest}");
    assert!(rest.contains("Connection: close\r\n"), "{rest}");

    // The client closes too; the server then forgets the connection.
    net.close_and_settle();
    let server = &net.server;
    let gone = server.connections() == 0;
    assert!(
        gone,
        "server still holds {} connection(s)",
        server.connections()
    );
    let stats = server.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closed, 1, "{stats:?}");
    assert_eq!(stats.http.requests, 2);
    assert_eq!(stats.http.status_2xx, 1);
    assert_eq!(stats.http.status_4xx, 1);
}
