//! No allocation per packet on the fast path (issue 13, item 2), counted by the allocator
//! itself (dhat's heap statistics) rather than read from the code: once two interfaces have
//! warmed up (connections open, buffers and pools grown), request/response exchanges in order,
//! exchanges whose responses arrive out of order, and UDP datagrams cost less than one
//! allocation per thousand packets (in practice none, or a timer bucket growing to a new
//! high); packets held for a frozen connection cost a number that grows with the logarithm of
//! their count, not with the count. Sans-IO, no root.

use ds_stack::{Config, Instant, Interface, TcpHandle, TcpState, UdpHandle};
use ds_testbed::FrameQueue;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa1, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa1, 0, 0, 0, 0, 0, 2);
const CONNS: usize = 32;
const REQUEST: usize = 100;
const SLOTS: usize = 1024;
const FRAME: usize = 2048;
/// Time per trip of the wire.
const STEP: Duration = Duration::from_micros(100);

/// Hand every frame on `wire` to `to`, in order or each run of three backwards.
fn deliver(wire: &mut FrameQueue, to: &mut Interface, now: Instant, backwards: bool) {
    let n = wire.len();
    for i in 0..n {
        let j = if backwards {
            let (run, at) = (i / 3 * 3, i % 3);
            let len = (n - run).min(3);
            run + len - 1 - at
        } else {
            i
        };
        to.receive(now, wire.get(j));
    }
    wire.clear();
}

struct World {
    now: Instant,
    server: Interface,
    client: Interface,
    /// Frames between the two interfaces (the harness must not allocate per frame).
    wire: FrameQueue,
    clients: Vec<TcpHandle>,
    servers: Vec<TcpHandle>,
    buf: Vec<u8>,
    response: Vec<u8>,
}

impl World {
    fn new() -> Self {
        let now = Instant::from_millis(1);
        let mut server = Interface::new(Config::new([2, 0, 0, 0, 0, 0x80], vec![SERVER]), now);
        let mut client = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT]), now);
        let l = server
            .tcp_listen(SocketAddrV6::new(SERVER, 80, 0, 0), CONNS)
            .expect("listen");
        let clients = (0..CONNS as u16)
            .map(|i| {
                client
                    .tcp_connect(
                        now,
                        SocketAddrV6::new(CLIENT, 40000 + i, 0, 0),
                        SocketAddrV6::new(SERVER, 80, 0, 0),
                    )
                    .expect("connect")
            })
            .collect();
        let mut w = World {
            now,
            server,
            client,
            wire: FrameQueue::new(SLOTS, FRAME),
            clients,
            servers: Vec::with_capacity(CONNS),
            buf: vec![0; 64 * 1024],
            response: (0..8192).map(|i| (i * 7) as u8).collect(),
        };
        for _ in 0..10 {
            w.step(false);
            while let Some(s) = w.server.tcp_accept(l) {
                w.servers.push(s);
            }
        }
        assert_eq!(w.servers.len(), CONNS, "every connection accepted");
        for &c in &w.clients {
            assert_eq!(w.client.tcp_state(c), Some(TcpState::Established));
        }
        w
    }

    /// One round trip of the wire: the client's frames to the server, the server's back.
    fn step(&mut self, backwards: bool) {
        self.now += STEP;
        let now = self.now;
        self.client.poll(now);
        let wire = &mut self.wire;
        self.client.transmit(now, &mut |f| wire.push(f));
        deliver(&mut self.wire, &mut self.server, now, false);
        self.server.poll(now);
        let wire = &mut self.wire;
        self.server.transmit(now, &mut |f| wire.push(f));
        deliver(&mut self.wire, &mut self.client, now, backwards);
    }

    /// Every connection sends a request; the server answers each with `response` bytes.
    fn exchange(&mut self, response: usize, backwards: bool) {
        for &c in &self.clients {
            assert_eq!(
                self.client.tcp_send(c, &self.response[..REQUEST]),
                Ok(REQUEST)
            );
        }
        self.step(false);
        for &s in &self.servers {
            let n = self.server.tcp_recv(s, &mut self.buf).expect("server read");
            assert_eq!(n, REQUEST);
            let sent = self.server.tcp_send(s, &self.response[..response]);
            assert_eq!(sent, Ok(response));
        }
        self.step(backwards);
        // The client's ACKs (and the server's answer to them) before the next request.
        self.step(false);
        for &c in &self.clients {
            let n = self.client.tcp_recv(c, &mut self.buf).expect("client read");
            assert_eq!(n, response, "whole response");
        }
    }
}

/// Blocks allocated (reallocations included) since the profiler started.
fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// What one run of [`traffic`] saw: allocations during each kind and its packets.
#[derive(Debug, Default)]
struct Seen {
    in_order: (u64, u64),
    out_of_order: (u64, u64),
    udp: (u64, u64),
}

/// 200 exchanges in order, 200 with the responses out of order, 200 rounds of UDP datagrams.
fn traffic(w: &mut World, us: UdpHandle, uc: UdpHandle) -> Seen {
    let mut seen = Seen::default();
    // In order: 1 KiB responses.
    let (a, p) = (allocations(), w.server.stats().tcp_rx_segments);
    for _ in 0..200 {
        w.exchange(1000, false);
    }
    seen.in_order = (allocations() - a, w.server.stats().tcp_rx_segments - p);

    // Out of order: 4 KiB responses (3 segments) delivered each three backwards.
    let (a, o) = (allocations(), w.client.stats().tcp_ooo_segments);
    for _ in 0..200 {
        w.exchange(4000, true);
    }
    seen.out_of_order = (allocations() - a, w.client.stats().tcp_ooo_segments - o);

    // UDP: 16 datagrams each way a round.
    let (a, u) = (allocations(), w.server.stats().udp_rx);
    let dst = SocketAddrV6::new(SERVER, 53, 0, 0);
    for _ in 0..200 {
        for _ in 0..16 {
            let now = w.now;
            w.client
                .udp_send_to(now, uc, &w.response[..512], dst)
                .expect("send");
        }
        w.step(false);
        let now = w.now;
        while let Some((n, from)) = w.server.udp_recv_from(us, &mut w.buf).expect("recv") {
            let buf = &w.buf[..n];
            w.server.udp_send_to(now, us, buf, from).expect("echo");
        }
        w.step(false);
        let mut got = 0;
        while let Some((n, _)) = w.client.udp_recv_from(uc, &mut w.buf).expect("recv") {
            assert_eq!(n, 512);
            got += 1;
        }
        assert_eq!(got, 16);
    }
    seen.udp = (allocations() - a, w.server.stats().udp_rx - u);
    seen
}

#[test]
fn the_fast_path_allocates_nothing_per_packet() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut w = World::new();
    let us = w
        .server
        .udp_bind(SocketAddrV6::new(SERVER, 53, 0, 0))
        .expect("bind");
    let uc = w
        .client
        .udp_bind(SocketAddrV6::new(CLIENT, 5353, 0, 0))
        .expect("bind");
    // Warm-up: the same traffic twice (connections' buffers, pools and timer buckets grow).
    let cold = traffic(&mut w, us, uc);
    traffic(&mut w, us, uc);
    let mut seen = Seen::default();
    for _ in 0..3 {
        let s = traffic(&mut w, us, uc);
        for (all, one) in [
            (&mut seen.in_order, s.in_order),
            (&mut seen.out_of_order, s.out_of_order),
            (&mut seen.udp, s.udp),
        ] {
            all.0 += one.0;
            all.1 += one.1;
        }
    }
    println!("cold: {cold:?}\nwarm, 3 runs: {seen:?}");
    // Not zero without fail: the timer wheel's bucket storage still reaches a new most now and
    // then (a bucket that takes more arms than any before it), once per such high, never per
    // packet.
    for (what, (n, packets), least) in [
        ("in order", seen.in_order, 3 * 200 * CONNS as u64),
        ("out of order", seen.out_of_order, 3 * 400 * CONNS as u64),
        ("UDP", seen.udp, 3 * 200 * 16),
    ] {
        assert!(packets >= least, "{what}: {packets} packets");
        assert!(
            n * 1000 <= packets,
            "{what}: {n} allocations for {packets} packets"
        );
    }

    // Stalls: a process descheduled for milliseconds (a loaded machine) comes back to many of
    // the wheel's buckets due at once, and its timers then fall into more buckets than before.
    // The first stalls of each length may still grow the wheel's storage to a new most (a
    // new bucket vector, one allocation each: measured 3, then 1 for the same stalls again),
    // never per packet. Before, the exact heap took every due bucket at once and grew to a
    // new most, as did the spare vectors' list and each new vector by doubling: 9, then 2
    // (on a loaded CI machine, the library's test counted 11 in 9,600 segments, over its
    // bound).
    let mut stall_costs = Vec::new();
    let mut stalled = 0;
    for _ in 0..2 {
        let a = allocations();
        for ms in [5u64, 10, 20, 40, 80, 160] {
            for _ in 0..4 {
                w.now += Duration::from_millis(ms);
                w.exchange(1000, false);
                stalled += 1;
            }
        }
        stall_costs.push(allocations() - a);
    }
    // Settle the timers the stalls left (the frozen connection below must be the only sender).
    for _ in 0..3 {
        w.exchange(1000, false);
    }
    println!("{stalled} exchanges, each after a stall of 5-160 ms: {stall_costs:?} allocations");
    assert!(
        stall_costs[0] <= 5 && stall_costs[1] <= 2,
        "allocations after stalls: {stall_costs:?}"
    );

    // Held: a frozen connection's packets go into one growing buffer, not one each.
    let (c, s) = (w.clients[0], w.servers[0]);
    assert_eq!(w.client.tcp_send(c, &w.response[..REQUEST]), Ok(REQUEST));
    w.client.poll(w.now);
    let wire = &mut w.wire;
    w.client.transmit(w.now, &mut |f| wire.push(f));
    assert_eq!(w.wire.len(), 1, "one data segment");
    let segment = w.wire.get(0).to_vec();
    w.wire.clear();
    let state = w.server.tcp_freeze(w.now, s).expect("freeze");
    const HELD: usize = 1000;
    let a = allocations();
    for _ in 0..HELD {
        w.server.receive(w.now, &segment);
    }
    let held_cost = allocations() - a;
    assert_eq!(w.server.stats().tcp_held, HELD as u64);
    let held = w.server.tcp_take_held(state.local(), state.remote());
    assert_eq!(held.len(), HELD);
    assert!(
        held_cost <= 2 * u64::from(HELD.ilog2() + 2),
        "{held_cost} allocations for {HELD} held packets"
    );
    println!("{HELD} held packets: {held_cost} allocations");
}
