//! `cargo bench -p ds-xdp`: the XDP redirect path and the AF_XDP device.
//!
//! 1. Per-core packet rate of the redirect path: `BPF_PROG_TEST_RUN` in live-frame mode
//!    (`BPF_F_TEST_XDP_LIVE_FRAMES`) injects fresh frames on one CPU as if received on a veth
//!    and carries the verdicts out (XDP_TX transmits into the veth peer); time per packet is
//!    the wall time of the run divided by the repetitions (no NIC driver RX cost).
//!    - tunnel, flow hit (the redirect fast path: lookup + IPv6-in-IPv6 + XDP_TX);
//!    - tunnel, binding fallback without learning (two lookups);
//!    - tunnel, not for a home address (XDP_PASS);
//!    - steer, decapsulate + steer to the kernel.
//! 2. Userspace stack throughput, AF_XDP vs TAP, against the kernel's TCP over veth in
//!    namespaces, both directions (a single flow; one core runs the stack, the kernel peer the
//!    other). Note that native XDP on a veth changes the kernel side too (the veth switches to
//!    its NAPI/XDP path), so compare the two stack devices, not either with kernel-to-kernel.
//!
//! Needs root; prints `SKIP` otherwise. `DS_BENCH_BYTES` sets the transfer size (default
//! 256 MiB).

#[path = "../tests/common/mod.rs"]
mod common;

use ds_stack::device::Device;
use ds_stack::runner::Runner;
use ds_stack::{Error, TcpState};
use ds_testbed::conn::{count_to_end, dial, ip, write_filler};
use ds_testbed::{KernelPeer, XdpHost};
use ds_xdp::maps::{Action, FlowKey, LocalAddr, TunnelConfig, TunnelMode, PROTO_ALL};
use ds_xdp::{Kind, LoadOptions, Program};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn frame(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0xa0, 0x02, 0, 0, 0, 0, 0xc1, 0x86, 0xdd];
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = nh;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

fn tcp(sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + len];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t
}

/// Live-frame runs on a veth in a private namespace: every repetition gets a fresh copy of
/// the frame and its verdict is carried out (XDP_TX transmits into the veth peer, which has
/// an XDP program so that veth's NAPI path takes the frames, as on a real link).
fn rate(p: &Program, ns: &ds_testbed::Netns, name: &str, f: &[u8]) {
    const REPEAT: u32 = 2_000_000;
    let r = ns.run(|| {
        let idx = ds_xdp::loader::ifindex("t0")?;
        p.run_live(f, idx, REPEAT)
    });
    match r {
        Ok(d) => {
            let ns_per = d.as_nanos() as f64 / f64::from(REPEAT);
            println!(
                "{name:<44} {ns_per:>6.1} ns/pkt  {:>6.2} Mpps/core",
                1e3 / ns_per
            );
        }
        Err(e) => println!("{name:<44} failed: {e}"),
    }
}

fn programs() -> anyhow::Result<()> {
    let ns = ds_testbed::Netns::new("bp")?;
    ds_testbed::veth(&ns, "t0", &ns, "t1")?;
    let sink = Program::load(Kind::Steer, &LoadOptions::default())?;
    ns.run(|| {
        let idx = ds_xdp::loader::ifindex("t1")?;
        sink.attach(idx, ds_xdp::Mode::Native, false)
    })?;
    let (client, ds, ha, n1, n2) = (
        ip("fd00:c::1"),
        ip("fd00:d5::80"),
        ip("fd00:a::1"),
        ip("fd00:1::1"),
        ip("fd00:2::1"),
    );
    let t = Program::load(Kind::Tunnel, &LoadOptions::default())?;
    let mut cfg = TunnelConfig {
        local: ha,
        mode: TunnelMode::Gateway([2, 0, 0, 0, 0, 0x99]),
        hop_limit: 64,
        mtu: 1500,
        learn: false,
    };
    t.set_config(&cfg)?;
    t.set_binding(ds, n1)?;
    let key = FlowKey {
        src: client,
        dst: ds,
        sport: 40000,
        dport: 80,
        proto: 6,
    };
    t.set_flow(&key, n2)?;
    let hit = frame(client, ds, 6, &tcp(40000, 80, 1000));
    rate(&t, &ns, "tunnel: flow hit -> encapsulate, XDP_TX", &hit);
    let miss = frame(client, ds, 6, &tcp(40001, 80, 1000));
    rate(&t, &ns, "tunnel: flow miss -> binding, XDP_TX", &miss);
    let other = frame(client, ha, 6, &tcp(40000, 22, 1000));
    rate(&t, &ns, "tunnel: not a home address -> XDP_PASS", &other);
    cfg.learn = true;
    t.set_config(&cfg)?;
    let small = frame(client, ds, 6, &tcp(40000, 80, 0));
    rate(&t, &ns, "tunnel: flow hit, 74-byte frame", &small);

    let s = Program::load(Kind::Steer, &LoadOptions::default())?;
    for a in [n1, ds] {
        s.add_local(
            a,
            LocalAddr {
                protos: PROTO_ALL,
                action: Action::Pass,
            },
        )?;
    }
    let inner = frame(client, ds, 6, &tcp(40000, 80, 1000));
    let tunnelled = frame(ha, n1, 41, &inner[14..]);
    rate(&s, &ns, "steer: decapsulate -> kernel", &tunnelled);
    rate(&s, &ns, "steer: local TCP -> kernel", &inner);
    Ok(())
}

const PEER: &str = "fd00:b1::1";
const OURS: &str = "fd00:b1::2";
const MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0xb, 2];

fn gbit(bytes: usize, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

/// Kernel sends `len` bytes to our stack; returns the time from connect to the last byte.
fn kernel_to_us<D: Device>(peer: &ds_testbed::Netns, rt: &mut Runner<D>, len: usize) -> Duration {
    let l = rt
        .iface
        .tcp_listen(SocketAddrV6::new(ip(OURS), 5001, 0, 0), 4)
        .expect("listen");
    let start = Instant::now();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            peer.run(|| {
                let mut s = TcpStream::connect((ip(OURS), 5001)).expect("connect");
                write_filler(&mut s, len, 0x42).expect("write");
            })
        });
        let mut conn = None;
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while got < len {
            assert!(start.elapsed() < Duration::from_secs(120), "timed out");
            rt.step(Duration::from_millis(5)).expect("step");
            if conn.is_none() {
                conn = rt.iface.tcp_accept(l);
            }
            let Some(c) = conn else { continue };
            loop {
                match rt.iface.tcp_recv(c, &mut buf) {
                    Ok(0) | Err(Error::Eof) => break,
                    Ok(n) => got += n,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
    });
    start.elapsed()
}

/// Our stack sends `len` bytes to a kernel sink; returns the time until the sink saw them all.
fn us_to_kernel<D: Device>(peer: &ds_testbed::Netns, rt: &mut Runner<D>, len: usize) -> Duration {
    let listener = peer
        .run(|| TcpListener::bind((ip(PEER), 5002)))
        .expect("listen");
    let start = Instant::now();
    std::thread::scope(|sc| {
        let sink = sc.spawn(|| {
            let (mut s, _) = listener.accept().expect("accept");
            let got = count_to_end(&mut s, len as u64).expect("read");
            (got as usize, start.elapsed())
        });
        let c = dial(rt, ip(OURS), SocketAddrV6::new(ip(PEER), 5002, 0, 0));
        let block = vec![0x24u8; 1 << 16];
        let mut sent = 0;
        while !sink.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(120), "timed out");
            rt.step(Duration::from_millis(5)).expect("step");
            while sent < len {
                let n = (len - sent).min(block.len());
                match rt.iface.tcp_send(c, &block[..n]) {
                    Ok(0) | Err(Error::InvalidState) => break,
                    Ok(k) => sent += k,
                    Err(e) => panic!("send: {e}"),
                }
            }
            if matches!(rt.iface.tcp_state(c), Some(TcpState::Closed)) {
                break;
            }
        }
        let (got, t) = sink.join().expect("sink");
        assert_eq!(got, len);
        t
    })
}

/// Kernel TCP to kernel TCP over the same topology, with and without the steering program
/// (no addresses configured: it passes everything) on the receiving veth: the baseline the
/// AF_XDP figures must be read against.
fn kernel_baseline(len: usize, with_xdp: bool) -> anyhow::Result<f64> {
    let h = XdpHost::new("bb", ip(PEER))?;
    ds_testbed::add_addr(&h.host, &h.host_if, "fd00:b1::3/64")?;
    let prog = Program::load(Kind::Steer, &LoadOptions::default())?;
    if with_xdp {
        h.host.run(|| {
            let idx = ds_xdp::loader::ifindex(&h.host_if)?;
            prog.attach(idx, ds_xdp::Mode::Native, false)
        })?;
    }
    let l = h.host.run(|| TcpListener::bind((ip("fd00:b1::3"), 5003)))?;
    let start = Instant::now();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            h.peer.run(|| {
                let mut s = TcpStream::connect((ip("fd00:b1::3"), 5003)).expect("connect");
                write_filler(&mut s, len, 0x42).expect("write");
            })
        });
        let (mut s, _) = l.accept().expect("accept");
        count_to_end(&mut s, len as u64).expect("read");
    });
    Ok(gbit(len, start.elapsed()))
}

fn throughput(len: usize) {
    let mb = len >> 20;
    for with_xdp in [false, true] {
        match kernel_baseline(len, with_xdp) {
            Ok(g) => {
                println!(
                "kernel  kernel -> kernel {mb} MiB  {g:>6.2} Gbit/s  (same veth, offloads off{})",
                if with_xdp { ", XDP pass-all attached" } else { "" }
            )
            }
            Err(e) => println!("kernel baseline failed: {e:#}"),
        }
    }
    {
        let h = XdpHost::new("bx", ip(PEER)).expect("topology");
        let mut rt = common::afxdp_runner(&h, ds_xdp::Mode::Auto, |_| {});
        let d = kernel_to_us(&h.peer, &mut rt, len);
        println!(
            "AF_XDP  kernel -> stack  {mb} MiB  {:>6.2} Gbit/s",
            gbit(len, d)
        );
        eprintln!("  sockets: {:?}", rt.dev.stats());
        eprintln!("  stack: {:?}", rt.iface.stats());
    }
    {
        let h = XdpHost::new("bx", ip(PEER)).expect("topology");
        let mut rt = common::afxdp_runner(&h, ds_xdp::Mode::Auto, |_| {});
        let d = us_to_kernel(&h.peer, &mut rt, len);
        eprintln!("  sockets: {:?}", rt.dev.stats());
        println!(
            "AF_XDP  stack -> kernel  {mb} MiB  {:>6.2} Gbit/s",
            gbit(len, d)
        );
    }
    for dir in 0..2 {
        let mut peer = KernelPeer::new("bk", ip(PEER)).expect("peer");
        let host = peer.attach_host("bs").expect("host");
        let mut rt = host.stack(MAC, ip(OURS), |_| {}).expect("stack");
        let (what, d) = if dir == 0 {
            ("kernel -> stack", kernel_to_us(&peer.ns, &mut rt, len))
        } else {
            ("stack -> kernel", us_to_kernel(&peer.ns, &mut rt, len))
        };
        println!("TAP     {what}  {mb} MiB  {:>6.2} Gbit/s", gbit(len, d));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: stay quick there.
    let benching = std::env::args().any(|a| a == "--bench");
    if !ds_testbed::require_root("xdp_bench") {
        return;
    }
    if !benching {
        println!("xdp_bench: run with `cargo bench -p ds-xdp`");
        return;
    }
    println!("== redirect path per core (BPF_PROG_TEST_RUN live frames on veth, 2M packets)");
    if let Err(e) = programs() {
        println!("program benchmark failed: {e:#}");
    }
    let len = std::env::var("DS_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256usize << 20);
    println!("== userspace stack throughput vs the kernel's TCP over veth, single flow");
    throughput(len);
}
