//! What the in-memory HTTP tests share: the HTTP server on one `ds-stack` interface and a
//! `ds-stack` client on the other end of an in-memory cable, with a download in progress.
#![allow(dead_code)]

use ds_apps::server::{HttpServer, ServerConfig};
use ds_stack::device::{mem_pair, MemDevice};
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, Duration, Error, Interface, TcpHandle};
use ds_testbed::conn::{dial, read_available};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::Path;

pub const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 0x80);
pub const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 2);

fn runner(dev: MemDevice, mac: [u8; 6], addr: Ipv6Addr, clock: Clock) -> Runner<MemDevice> {
    let iface = Interface::new(Config::new(mac, vec![addr]), clock.now());
    Runner::with_clock(dev, iface, clock)
}

/// Server and client on one cable; the client is connected to the server's port 80.
pub struct MemNet {
    pub srv: Runner<MemDevice>,
    pub cli: Runner<MemDevice>,
    pub server: HttpServer,
    /// The client's connection.
    pub client: TcpHandle,
    /// What the client read.
    pub got: Vec<u8>,
    /// The client saw the end of the stream.
    pub eof: bool,
    /// Whether the client reads what arrives (a stuck client does not).
    pub reading: bool,
}

impl MemNet {
    /// An HTTP server with default settings serving `root`, and a client connecting to it.
    pub fn new(root: &Path) -> MemNet {
        Self::with_config(root, ServerConfig::default())
    }

    /// [`MemNet::new`] with the server's settings `cfg`.
    pub fn with_config(root: &Path, cfg: ServerConfig) -> MemNet {
        let clock = Clock::new();
        let (a, b) = mem_pair(1500);
        let mut srv = runner(a, [0x02, 0, 0, 0, 0, 0x80], SERVER, clock);
        let mut cli = runner(b, [0x02, 0, 0, 0, 0, 0x02], CLIENT, clock);
        let to = SocketAddrV6::new(SERVER, 80, 0, 0);
        let server = HttpServer::listen(&mut srv.iface, to, root, cfg).expect("listen");
        let client = dial(&mut cli, CLIENT, to);
        MemNet {
            srv,
            cli,
            server,
            client,
            got: Vec::new(),
            eof: false,
            reading: true,
        }
    }

    /// One round: server stack, server application, client stack, client reads.
    pub fn round(&mut self) {
        self.srv
            .step(Duration::from_micros(200))
            .expect("server step");
        let now = self.srv.now();
        self.server.poll(&mut self.srv.iface, now);
        self.cli
            .step(Duration::from_micros(200))
            .expect("client step");
        if !self.reading {
            return;
        }
        match read_available(&mut self.cli.iface, self.client, &mut self.got) {
            Ok(_) => {}
            Err(Error::Eof) => self.eof = true,
            Err(e) => panic!("client connection failed: {e:?}"),
        }
    }

    /// Rounds until `done`, or false after `limit` of wall time.
    pub fn run_until(
        &mut self,
        limit: std::time::Duration,
        mut done: impl FnMut(&mut MemNet) -> bool,
    ) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if done(self) {
                return true;
            }
            self.round();
        }
        false
    }

    /// Send what is left of `request` (from `*sent` on) as far as the client's window allows.
    pub fn send(&mut self, request: &[u8], sent: &mut usize) {
        if *sent < request.len() {
            if let Ok(n) = self.cli.iface.tcp_send(self.client, &request[*sent..]) {
                *sent += n;
            }
        }
    }

    /// Where the first response's body starts in what the client read.
    pub fn body_start(&self) -> usize {
        let head = self.got.windows(4).position(|w| w == b"\r\n\r\n");
        head.expect("response head") + 4
    }

    /// The client closes; rounds until the server forgets the connection (10 s at most).
    pub fn close_and_settle(&mut self) {
        self.cli.iface.tcp_close(self.client).expect("close");
        let start = std::time::Instant::now();
        while self.server.connections() > 0 && start.elapsed() < std::time::Duration::from_secs(10)
        {
            self.round();
        }
    }
}
