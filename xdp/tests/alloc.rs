//! The deployment data path allocates nothing per packet: our stack behind AF_XDP on a veth
//! (the runner's receive parsed in place in the UMEM, segments built in place) serves
//! request/response exchanges to the Linux kernel's TCP in another namespace, and once warm
//! the process's allocator (dhat's heap statistics, counting every thread) sees no
//! allocation per exchange. Needs root; prints SKIP otherwise.

mod common;

use ds_testbed::conn::connect_retrying;
use ds_testbed::interop::{ip, OURS, PEER};
use ds_testbed::{require_root, XdpHost};
use std::io::{Read, Write};
use std::net::SocketAddrV6;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const PORT: u16 = 7;
const CONNS: usize = 4;
const REQUEST: usize = 100;
const RESPONSE: usize = 1000;
/// Exchanges per connection before the count starts, and counted (each a request segment
/// in and a response segment out).
const WARM: usize = 500;
const COUNTED: usize = 5000;

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// One kernel client: `WARM + COUNTED` exchanges. When every client is warm one of them
/// records the allocation count in `start` (the others wait for it, blocked, not spinning:
/// the server needs the cores); the last to finish records it in `end`.
fn client(i: usize, warm: &Barrier, counted: &AtomicU64, start: &AtomicU64, end: &AtomicU64) {
    let to = std::net::SocketAddr::from((ip(OURS), PORT));
    let mut s = connect_retrying(to, 50).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = [i as u8; REQUEST];
    let mut resp = [0u8; RESPONSE];
    for k in 0..WARM + COUNTED {
        if k == WARM {
            if warm.wait().is_leader() {
                start.store(allocations(), Ordering::Release);
            }
            warm.wait();
        }
        s.write_all(&req).expect("request");
        s.read_exact(&mut resp).expect("response");
        assert!(
            resp.iter().all(|&b| b == i as u8),
            "client {i}: wrong answer"
        );
    }
    if counted.fetch_add(1, Ordering::AcqRel) + 1 == CONNS as u64 {
        end.store(allocations(), Ordering::Release);
    }
}

#[test]
fn the_afxdp_data_path_allocates_nothing_per_exchange() {
    let name = "the_afxdp_data_path_allocates_nothing_per_exchange";
    if !require_root(name) {
        return;
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let t = XdpHost::new("al", ip(PEER)).expect("topology");
    let mut rt = common::afxdp_runner(&t, ds_xdp::Mode::Auto, |_| {});
    let l = rt
        .iface
        .tcp_listen(SocketAddrV6::new(ip(OURS), PORT, 0, 0), CONNS)
        .expect("listen");
    let (warm, counted, start, end) = (
        Barrier::new(CONNS),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let done = AtomicBool::new(false);
    let rx_before = std::thread::scope(|sc| {
        let clients = sc.spawn(|| {
            t.peer.run(|| {
                std::thread::scope(|s| {
                    for i in 0..CONNS {
                        let (warm, counted, start, end) = (&warm, &counted, &start, &end);
                        s.spawn(move || client(i, warm, counted, start, end));
                    }
                });
            });
            done.store(true, Ordering::Release);
        });
        // The server: echo each request's first byte as a whole response.
        let mut ready = Vec::with_capacity(CONNS);
        let mut accepted = Vec::with_capacity(CONNS);
        let mut buf = [0u8; 4096];
        let mut answer = [0u8; RESPONSE];
        let mut rx_before = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "exchanges stuck");
            rt.step(Duration::from_millis(1)).expect("step");
            while let Some(h) = rt.iface.tcp_accept(l) {
                accepted.push(h);
                ready.push(h);
            }
            rt.iface.tcp_take_ready(&mut ready);
            for &h in &ready {
                // Requests are written whole and answered before the next: at most one here.
                while let Ok(n) = rt.iface.tcp_recv(h, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    assert_eq!(n % REQUEST, 0, "whole requests");
                    answer.fill(buf[0]);
                    for _ in 0..n / REQUEST {
                        assert_eq!(rt.iface.tcp_send(h, &answer), Ok(RESPONSE));
                    }
                }
            }
            ready.clear();
            rt.process().expect("flush");
            if rx_before.is_none() && start.load(Ordering::Acquire) != 0 {
                rx_before = Some(rt.iface.stats().tcp_rx_segments);
            }
        }
        clients.join().expect("clients");
        rx_before
    });
    let (a, b) = (start.load(Ordering::Acquire), end.load(Ordering::Acquire));
    let segments = rt.iface.stats().tcp_rx_segments - rx_before.unwrap_or(0);
    let n = b.saturating_sub(a);
    println!(
        "{n} allocations in {} exchanges ({segments} segments received from about then on)",
        CONNS * COUNTED
    );
    assert!(a > 0 && b >= a, "counts taken: {a} {b}");
    // Not zero without fail: a timer bucket's storage reaching a new most, now and then.
    assert!(
        n * 1000 <= (CONNS * COUNTED) as u64,
        "{n} allocations in {} exchanges",
        CONNS * COUNTED
    );
}
