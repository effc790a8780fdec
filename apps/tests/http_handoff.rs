//! Handoff of an HTTP connection in the middle of a response, on the userspace stack with a
//! client over an in-memory cable: the server's per-connection quota pauses the download at
//! an exact byte count, the connection's HTTP state is detached while its TCP state is frozen,
//! and both come back (as after a failed handoff) to finish the download byte-exact.

use ds_apps::http::HttpConnState;
use ds_apps::server::{HttpServer, ServerConfig};
use ds_stack::device::{mem_pair, MemDevice};
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, ConnState, Duration, Error, Interface, TcpHandle};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::PathBuf;

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 2);
const QUOTA: u64 = 500_000;

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

/// Pseudo-random bytes (xorshift), so that a misplaced byte cannot go unnoticed.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Everything the client can read now; true at end of stream.
fn read_all(iface: &mut Interface, h: TcpHandle, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        match iface.tcp_recv(h, &mut buf) {
            Ok(0) => return false,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(Error::Eof) => return true,
            Err(e) => panic!("client connection failed: {e:?}"),
        }
    }
}

struct Net {
    srv: Runner<MemDevice>,
    cli: Runner<MemDevice>,
    server: HttpServer,
    client: TcpHandle,
    got: Vec<u8>,
    eof: bool,
}

impl Net {
    /// One round: server stack, server application, client stack, client application.
    fn round(&mut self) {
        self.srv
            .step(Duration::from_micros(200))
            .expect("server step");
        let now = self.srv.now();
        self.server.poll(&mut self.srv.iface, now);
        self.cli
            .step(Duration::from_micros(200))
            .expect("client step");
        if read_all(&mut self.cli.iface, self.client, &mut self.got) {
            self.eof = true;
        }
    }

    /// Run until a connection reaches the quota or the client sees the end of the stream.
    fn until_ready_or_eof(&mut self) -> Vec<TcpHandle> {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(30) {
            self.round();
            let ready = self.server.take_handoff_ready();
            if !ready.is_empty() || self.eof {
                return ready;
            }
        }
        panic!("stuck after {} bytes", self.got.len());
    }

    /// Run a while so that everything already handed to TCP reaches the client.
    fn settle(&mut self) {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            self.round();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Back {
    /// Detach, freeze, thaw and adopt on the same node.
    DetachAdopt,
    /// Just resume.
    Resume,
}

fn download_with_pauses(back: Back) {
    let dir = std::env::temp_dir().join(format!("ds-apps-handoff-{}-{back:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let root = Root(dir);
    let data = noise(1 << 20);
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
    server.set_handoff_quota(Some(QUOTA));
    let now = cli.now();
    let client = cli
        .iface
        .tcp_connect(
            now,
            SocketAddrV6::new(CLIENT, 0, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    let request = b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut net = Net {
        srv,
        cli,
        server,
        client,
        got: Vec::new(),
        eof: false,
    };
    let mut sent = 0;
    while sent < request.len() {
        net.round();
        if let Ok(n) = net.cli.iface.tcp_send(client, &request[sent..]) {
            sent += n;
        }
    }

    let mut pauses = 0u64;
    loop {
        let ready = net.until_ready_or_eof();
        if net.eof {
            break;
        }
        assert_eq!(ready.len(), 1, "one connection");
        let h = ready[0];
        pauses += 1;
        // Paused: exactly the quota went out, and nothing more follows.
        net.settle();
        assert_eq!(net.got.len() as u64, pauses * QUOTA, "pause {pauses}");
        assert!(net.server.take_handoff_ready().is_empty(), "reported once");
        assert_eq!(net.server.stats().http.bytes_sent, pauses * QUOTA);
        match back {
            Back::Resume => assert!(net.server.resume(h)),
            Back::DetachAdopt => {
                let st = net.server.detach(h).expect("known handle").expect("export");
                assert!(net.server.detach(h).is_none(), "gone after detach");
                let now = net.srv.now();
                let tcp = net.srv.iface.tcp_freeze(now, h).expect("freeze");
                // Both states travel as bytes.
                let tcp = ConnState::decode(&tcp.encode()).expect("tcp state");
                let st = HttpConnState::decode(&st.encode()).expect("http state");
                let now = net.srv.now();
                let h2 = net.srv.iface.tcp_thaw(now, &tcp).expect("thaw");
                net.server.adopt(h2, st, now).expect("adopt");
            }
        }
    }

    // 1 MiB plus a head: two pauses of QUOTA bytes, then the rest.
    assert_eq!(pauses, 2);
    let head_end = net
        .got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    let head = String::from_utf8_lossy(&net.got[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}\r\n", data.len())));
    assert_eq!(net.got.len(), head_end + data.len());
    assert!(net.got[head_end..] == data[..], "body differs");

    net.cli.iface.tcp_close(client).expect("close");
    let start = std::time::Instant::now();
    while net.server.connections() > 0 && start.elapsed() < std::time::Duration::from_secs(10) {
        net.round();
    }
    assert_eq!(net.server.connections(), 0);
    let stats = net.server.stats();
    assert_eq!(stats.http.bytes_sent, net.got.len() as u64, "{stats:?}");
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closed, 1, "{stats:?}");
    match back {
        Back::Resume => assert_eq!((stats.handed_off, stats.adopted), (0, 0)),
        Back::DetachAdopt => {
            assert_eq!((stats.handed_off, stats.adopted), (2, 2));
            // Requests are counted where they were answered: once, on the first node.
            assert_eq!(stats.http.requests, 1);
        }
    }
}

#[test]
fn quota_pauses_exactly_and_detach_adopt_completes_the_download() {
    download_with_pauses(Back::DetachAdopt);
}

#[test]
fn quota_pauses_exactly_and_resume_completes_the_download() {
    download_with_pauses(Back::Resume);
}
