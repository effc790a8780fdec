//! What the in-memory HTTP tests share: the HTTP server on a library node (`dserver::Node`)
//! and a `ds-stack` client on the other end of an in-memory cable, with a download in
//! progress.
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
    pub srv: dserver::Node,
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
        let srv = dserver::Node::builder()
            .ds_addr(SERVER)
            .mac([0x02, 0, 0, 0, 0, 0x80])
            .backlog(cfg.backlog)
            .build_on(Box::new(a))
            .expect("server node");
        let mut cli = runner(b, [0x02, 0, 0, 0, 0, 0x02], CLIENT, clock);
        let to = SocketAddrV6::new(SERVER, 80, 0, 0);
        let server = HttpServer::new(root, cfg).expect("server");
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
            .poll(Duration::from_micros(200))
            .expect("server step");
        self.server.poll(&mut self.srv);
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

/// The DS address of [`HubNet`] (node 1's at the start).
pub const HUB_DS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x80);
/// Node 2's own address on the hub.
pub const HUB_N2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The client's address on the hub.
pub const HUB_CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
/// The cluster secret of [`HubNet`].
pub const HUB_SECRET: &[u8] = b"in-memory hub test secret of 32B";

/// A client stack and two library nodes, each with the HTTP server, on one in-memory hub;
/// node 1 owns the DS address, node 2 only its own; their control channels on loopback. A
/// node that adopts a connection takes its address over (announced: the client's frames
/// then go to it).
pub struct HubNet {
    pub cli: Runner<MemDevice>,
    pub nodes: [dserver::Node; 2],
    pub servers: [HttpServer; 2],
}

impl HubNet {
    /// Nodes serving `root`, their engine settings adjusted by `tune(i, cfg)` (node `i`, 0
    /// or 1) from a control listener on loopback, the other node as the peer, immediate
    /// drain and address takeover.
    pub fn new(
        root: &Path,
        tune: impl Fn(usize, dserver::engine::HandoffConfig) -> dserver::engine::HandoffConfig,
    ) -> HubNet {
        let mut ports = ds_stack::device::mem_hub(3, 1500).into_iter();
        let (Some(c), Some(p1), Some(p2)) = (ports.next(), ports.next(), ports.next()) else {
            unreachable!("three ports")
        };
        let clock = Clock::new();
        let cli = runner(c, [0x02, 0, 0, 0, 0, 0x03], HUB_CLIENT, clock);
        let ls = [0, 1].map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("listener"));
        let addrs = ls.each_ref().map(|l| l.local_addr().expect("addr"));
        let mut ls = ls.map(Some);
        let mut ports = [Some(p1), Some(p2)];
        let nodes = [0usize, 1].map(|i| {
            let mut cfg = dserver::engine::HandoffConfig::new(
                dserver::ClusterSecret::new(HUB_SECRET).expect("secret"),
            );
            cfg.listen = ls[i].take();
            cfg.peer = Some(addrs[1 - i]);
            cfg.drain = ds_handoff::Drain::Immediate;
            cfg.takeover = ds_handoff::Takeover::Address;
            let port = ports[i].take().expect("port");
            dserver::Node::builder()
                .ds_addr(if i == 0 { HUB_DS } else { HUB_N2 })
                .mac([0x02, 0, 0, 0, 0, i as u8 + 1])
                .engine(tune(i, cfg))
                .build_on(Box::new(port))
                .expect("node")
        });
        let servers =
            [0, 1].map(|_| HttpServer::new(root, ServerConfig::default()).expect("server"));
        HubNet {
            cli,
            nodes,
            servers,
        }
    }

    /// One round: the client's stack, then each node and its server; the nodes' events.
    pub fn round(&mut self) -> Vec<(usize, dserver::Event)> {
        self.cli
            .step(Duration::from_micros(100))
            .expect("client step");
        let mut events = Vec::new();
        for (k, (n, s)) in self.nodes.iter_mut().zip(&mut self.servers).enumerate() {
            n.poll(Duration::ZERO).expect("node step");
            s.poll(n);
            events.extend(s.take_events().into_iter().map(|e| (k, e)));
        }
        events
    }
}
