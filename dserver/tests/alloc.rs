//! The server library's fast path allocates nothing per packet: a [`dserver::Node`] serving
//! request/response exchanges through its public API (`poll`, `take_ready`, `read`, `write`)
//! over a device that reuses its frame buffers, against a client stack in the same thread,
//! counted by the allocator itself (dhat's heap statistics). Sans-IO from the test's side (no
//! root, no thread): the node's own loop is the code under test.

use ds_stack::device::Device;
use ds_stack::runner::Clock;
use ds_stack::{Config, Interface, TcpHandle, TcpState};
use ds_testbed::FrameQueue;
use std::cell::RefCell;
use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::rc::Rc;
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa2, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa2, 0, 0, 0, 0, 0, 2);
const CONNS: usize = 16;
const REQUEST: usize = 100;
const RESPONSE: usize = 1000;
const SLOTS: usize = 512;
const FRAME: usize = 2048;

/// The cable: frames to the node, frames from it.
type Cable = Rc<RefCell<(FrameQueue, FrameQueue)>>;

/// The node's end of the cable.
struct NodeEnd(Cable);

impl Device for NodeEnd {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(self.0.borrow_mut().0.pop(buf))
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().1.push(frame);
        Ok(())
    }

    fn wait(&mut self, _timeout: Option<ds_stack::Duration>) -> io::Result<()> {
        Ok(())
    }

    fn mtu(&self) -> usize {
        1500
    }
}

struct World {
    node: dserver::Node,
    client: Interface,
    clock: Clock,
    cable: Cable,
    clients: Vec<TcpHandle>,
    servers: Vec<dserver::ConnId>,
    ready: Vec<dserver::ConnId>,
    frame: Vec<u8>,
    buf: Vec<u8>,
    response: Vec<u8>,
}

impl World {
    fn new() -> World {
        let cable: Cable = Rc::new(RefCell::new((
            FrameQueue::new(SLOTS, FRAME),
            FrameQueue::new(SLOTS, FRAME),
        )));
        let node = dserver::Node::builder()
            .ds_addr(SERVER)
            .mac([0x02, 0xa2, 0, 0, 0, 0x80])
            .port(80)
            .build_on(Box::new(NodeEnd(cable.clone())))
            .expect("node");
        let clock = Clock::new();
        let mut client = Interface::new(
            Config::new([0x02, 0xa2, 0, 0, 0, 2], vec![CLIENT]),
            clock.now(),
        );
        let clients = (0..CONNS as u16)
            .map(|i| {
                client
                    .tcp_connect(
                        clock.now(),
                        SocketAddrV6::new(CLIENT, 40000 + i, 0, 0),
                        SocketAddrV6::new(SERVER, 80, 0, 0),
                    )
                    .expect("connect")
            })
            .collect();
        let mut w = World {
            node,
            client,
            clock,
            cable,
            clients,
            servers: Vec::with_capacity(CONNS),
            ready: Vec::with_capacity(CONNS),
            frame: vec![0; FRAME],
            buf: vec![0; 64 * 1024],
            response: (0..RESPONSE).map(|i| (i * 7) as u8).collect(),
        };
        let start = std::time::Instant::now();
        while w.servers.len() < CONNS {
            assert!(start.elapsed() < Duration::from_secs(5), "handshakes stuck");
            w.round();
            while let Some(a) = w.node.try_accept() {
                w.servers.push(a.conn);
            }
        }
        for &c in &w.clients {
            assert_eq!(w.client.tcp_state(c), Some(TcpState::Established));
        }
        w
    }

    /// The client's frames to the node, the node's poll, its frames to the client.
    fn round(&mut self) {
        let now = self.clock.now();
        self.client.poll(now);
        let cable = &self.cable;
        self.client
            .transmit(now, &mut |f| cable.borrow_mut().0.push(f));
        self.node.poll(Duration::ZERO).expect("node poll");
        loop {
            let n = self.cable.borrow_mut().1.pop(&mut self.frame);
            let Some(n) = n else { break };
            self.client.receive(now, &self.frame[..n]);
        }
    }

    /// A request on every connection; the server answers each through the library's API.
    fn exchange(&mut self) {
        for &c in &self.clients {
            let sent = self.client.tcp_send(c, &self.response[..REQUEST]);
            assert_eq!(sent, Ok(REQUEST));
        }
        let mut answered = 0;
        let start = std::time::Instant::now();
        while answered < CONNS {
            assert!(start.elapsed() < Duration::from_secs(5), "requests lost");
            self.round();
            self.node.take_ready(&mut self.ready);
            for &s in &self.ready {
                if let Ok(n) = self.node.read(s, &mut self.buf) {
                    assert_eq!(n, REQUEST);
                    let sent = self.node.write(s, &self.response).expect("write");
                    assert_eq!(sent, RESPONSE);
                    answered += 1;
                }
            }
            self.ready.clear();
        }
        // The answers out, the client's ACKs back.
        let mut got = 0;
        while got < CONNS * RESPONSE {
            assert!(start.elapsed() < Duration::from_secs(5), "responses lost");
            self.round();
            for &c in &self.clients {
                got += self.client.tcp_recv(c, &mut self.buf).unwrap_or(0);
            }
        }
        self.round();
    }
}

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

#[test]
fn the_node_serves_without_allocating_per_packet() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut w = World::new();
    // Warm-up: buffers, pools and timer buckets grow.
    for _ in 0..400 {
        w.exchange();
    }
    let (a, frames) = (allocations(), w.node_rx());
    for _ in 0..600 {
        w.exchange();
    }
    let (n, frames) = (allocations() - a, w.node_rx() - frames);
    println!("{n} allocations in {frames} segments received by the node");
    assert!(frames >= 600 * CONNS as u64, "{frames} segments");
    assert!(n * 1000 <= frames, "{n} allocations for {frames} segments");
}

impl World {
    /// Segments the node's stack received.
    fn node_rx(&self) -> u64 {
        self.node.interface_stats().tcp_rx_segments
    }
}
