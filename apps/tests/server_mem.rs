//! The HTTP server on a `ds-stack` interface, with a `ds-stack` client on the other end of an
//! in-memory cable. No root, no namespaces: this exercises the server loop (accept, read, write
//! as send space allows, close, release) deterministically enough for any CI.

use ds_apps::server::{HttpServer, ServerConfig};
use ds_stack::device::{mem_pair, MemDevice};
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, Duration, Error, Interface, TcpHandle};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::PathBuf;

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 2);

struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runner(dev: MemDevice, mac: [u8; 6], addr: Ipv6Addr, clock: Clock) -> Runner<MemDevice> {
    let iface = Interface::new(Config::new(mac, vec![addr]), clock.now());
    Runner::with_clock(dev, iface, clock)
}

/// Step both sides until `done` holds, or fail after `limit` of wall time.
fn run_until(
    srv: &mut Runner<MemDevice>,
    server: &mut HttpServer,
    cli: &mut Runner<MemDevice>,
    limit: std::time::Duration,
    mut done: impl FnMut(&mut Interface) -> bool,
) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done(&mut cli.iface) {
            return true;
        }
        srv.step(Duration::from_micros(200)).expect("server step");
        let now = srv.now();
        server.poll(&mut srv.iface, now);
        cli.step(Duration::from_micros(200)).expect("client step");
    }
    false
}

fn read_all(iface: &mut Interface, h: TcpHandle, into: &mut Vec<u8>) -> Result<bool, Error> {
    let mut buf = [0u8; 8192];
    loop {
        match iface.tcp_recv(h, &mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(Error::Eof) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn serves_pipelined_requests_over_the_userspace_stack() {
    let dir = std::env::temp_dir().join(format!("ds-apps-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let root = Root(dir);
    // Larger than the default send buffer, so the body must be streamed.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: u32| (i % 253) as u8)
        .collect();
    std::fs::write(root.0.join("big"), &data).expect("write");

    let clock = Clock::new();
    let (a, b) = mem_pair(1500);
    let mut srv = runner(a, [0x02, 0, 0, 0, 0, 0x80], SERVER, clock);
    let mut cli = runner(b, [0x02, 0, 0, 0, 0, 0x02], CLIENT, clock);
    let mut server = HttpServer::listen(
        &mut srv.iface,
        SocketAddrV6::new(SERVER, 80, 0, 0),
        &root.0,
        ServerConfig::default(),
    )
    .expect("listen");

    let now = cli.now();
    let h = cli
        .iface
        .tcp_connect(
            now,
            SocketAddrV6::new(CLIENT, 0, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    let request: &[u8] = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /missing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut sent = 0;
    let mut got = Vec::new();
    let mut eof = false;
    let ok = run_until(
        &mut srv,
        &mut server,
        &mut cli,
        std::time::Duration::from_secs(60),
        |c| {
            if sent < request.len() {
                if let Ok(n) = c.tcp_send(h, &request[sent..]) {
                    sent += n;
                }
            }
            match read_all(c, h, &mut got) {
                Ok(true) => eof = true,
                Ok(false) => {}
                Err(e) => panic!("client connection failed: {e:?}"),
            }
            eof
        },
    );
    assert!(ok, "no end of stream after {} response bytes", got.len());

    // First response: the file, streamed.
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("first head")
        + 4;
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
    cli.iface.tcp_close(h).expect("close");
    let start = std::time::Instant::now();
    while server.connections() > 0 && start.elapsed() < std::time::Duration::from_secs(10) {
        run_until(
            &mut srv,
            &mut server,
            &mut cli,
            std::time::Duration::from_millis(1),
            |_| false,
        );
    }
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
