//! The kernel-TCP interop transfers of `tests/tests/interop.rs`, parameterised by the stack's
//! device: over AF_XDP (a veth in a namespace, our steering program attached in native mode,
//! the socket bound in copy mode on veth) and, for comparison (`--ignored`), over TAP. 64 MiB
//! in both directions, verified by SHA-256, with random loss injected by nftables on the
//! kernel side of the link, and with receive windows small enough to force zero-window probes.

use ds_stack::device::Device;
use ds_stack::runner::Runner;
use ds_stack::{Config, Error, Interface, TcpState};
use ds_testbed::{
    all_counters, counter_delta, require_root, Direction, KernelPeer, Loss, Netns, PatternStream,
    XdpHost,
};
use ds_xdp::device::{AfXdpConfig, AfXdpDevice};
use ds_xdp::Mode;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const LEN: usize = 64 << 20;
const BLOCK: usize = 64 << 10;
const PEER: &str = "fd00:d1::1";
const OURS: &str = "fd00:d1::2";
const MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 2];
const LIMIT: Duration = Duration::from_secs(240);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal address")
}

/// How the receiving application behaves.
#[derive(Clone, Copy)]
struct Receiver {
    /// Receive buffer (SO_RCVBUF for the kernel, recv_buf for us).
    rcvbuf: Option<usize>,
    /// Pause this long after every `pause_every` bytes read.
    pause: Duration,
    pause_every: usize,
}

const FAST: Receiver = Receiver {
    rcvbuf: None,
    pause: Duration::ZERO,
    pause_every: usize::MAX,
};
const STALLING: Receiver = Receiver {
    rcvbuf: Some(64 << 10),
    pause: Duration::from_millis(700),
    pause_every: 16 << 20,
};

fn set_rcvbuf(fd: i32, bytes: usize) {
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}

/// Write LEN pattern bytes, returning their digest.
fn kernel_send_all(s: &mut TcpStream, seed: u64) -> [u8; 32] {
    let mut pat = PatternStream::new(seed);
    let mut buf = vec![0u8; BLOCK];
    let mut h = Sha256::new();
    let mut sent = 0;
    while sent < LEN {
        pat.fill(&mut buf);
        s.write_all(&buf).expect("kernel write");
        h.update(&buf);
        sent += BLOCK;
    }
    h.finalize().into()
}

/// Read to EOF, returning (bytes, digest).
fn kernel_recv_all(s: &mut TcpStream, r: Receiver) -> (usize, [u8; 32]) {
    let mut buf = vec![0u8; BLOCK];
    let mut h = Sha256::new();
    let mut total = 0;
    let mut next_pause = r.pause_every;
    loop {
        let n = s.read(&mut buf).expect("kernel read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
        if total >= next_pause {
            std::thread::sleep(r.pause);
            next_pause += r.pause_every;
        }
    }
    (total, h.finalize().into())
}

fn step<D: Device>(rt: &mut Runner<D>, start: Instant) {
    assert!(
        start.elapsed() < LIMIT,
        "transfer did not finish in {LIMIT:?}: {:?}",
        rt.iface.stats()
    );
    rt.step(Duration::from_millis(5)).expect("runner step");
}

/// Which device the stack runs over.
#[derive(Clone, Copy, Debug)]
enum Dev {
    AfXdp,
    Tap,
}

/// A runner for our address over AF_XDP on the host's veth (opened inside its namespace).
fn afxdp_stack(t: &XdpHost, recv: Receiver) -> Runner<AfXdpDevice> {
    afxdp_stack_mode(t, recv, Mode::Auto)
}

fn afxdp_stack_mode(t: &XdpHost, recv: Receiver, mode: Mode) -> Runner<AfXdpDevice> {
    let ifname = t.host_if.clone();
    let mut cfg = AfXdpConfig::new(vec![ip(OURS)]);
    cfg.mode = mode;
    let dev = t
        .host
        .try_run(move || AfXdpDevice::open(&ifname, &cfg))
        .expect("enter host namespace")
        .expect("AF_XDP device");
    eprintln!(
        "AF_XDP: XDP {:?}, socket {:?}",
        dev.attach_mode(),
        dev.bind_mode()
    );
    let mut cfg = Config::new(MAC, vec![ip(OURS)]);
    if let Some(b) = recv.rcvbuf {
        cfg.tcp.recv_buf = b;
    }
    let mut rt = Runner::new(dev, Interface::new(cfg, ds_stack::Instant::ZERO));
    let now = rt.now();
    rt.iface.announce(now);
    rt
}

fn kernel_to_us(name: &str, dev: Dev, loss: f64, recv: Receiver) {
    if !require_root(name) {
        return;
    }
    match dev {
        Dev::AfXdp => {
            let t = XdpHost::new("ax", ip(PEER)).expect("topology");
            let _loss = (loss > 0.0)
                .then(|| Loss::install(&t.peer, &t.peer_if, loss, Direction::Both).expect("loss"));
            let rt = afxdp_stack(&t, recv);
            kernel_to_us_body(name, loss, recv, &t.peer, rt);
        }
        Dev::Tap => {
            let mut peer = KernelPeer::new("kp", ip(PEER)).expect("peer");
            let host = peer.attach_host("sh").expect("host");
            let _loss = (loss > 0.0).then(|| {
                Loss::install(&host.ns, &host.uplink, loss, Direction::Both).expect("loss")
            });
            let rt = host
                .stack(MAC, ip(OURS), |c| {
                    if let Some(b) = recv.rcvbuf {
                        c.tcp.recv_buf = b;
                    }
                })
                .expect("stack");
            kernel_to_us_body(name, loss, recv, &peer.ns, rt);
        }
    }
}

fn us_to_kernel(name: &str, dev: Dev, loss: f64, recv: Receiver) {
    if !require_root(name) {
        return;
    }
    match dev {
        Dev::AfXdp => {
            let t = XdpHost::new("ax", ip(PEER)).expect("topology");
            let _loss = (loss > 0.0)
                .then(|| Loss::install(&t.peer, &t.peer_if, loss, Direction::Both).expect("loss"));
            let rt = afxdp_stack(&t, FAST);
            us_to_kernel_body(name, loss, recv, &t.peer, rt);
        }
        Dev::Tap => {
            let mut peer = KernelPeer::new("kp", ip(PEER)).expect("peer");
            let host = peer.attach_host("sh").expect("host");
            let _loss = (loss > 0.0).then(|| {
                Loss::install(&host.ns, &host.uplink, loss, Direction::Both).expect("loss")
            });
            let rt = host.stack(MAC, ip(OURS), |_| {}).expect("stack");
            us_to_kernel_body(name, loss, recv, &peer.ns, rt);
        }
    }
}

/// Kernel client sends LEN bytes to our server, which answers with the digest it computed.
fn kernel_to_us_body<D: Device>(
    name: &str,
    loss: f64,
    recv: Receiver,
    peer_ns: &Netns,
    mut rt: Runner<D>,
) {
    let l = rt
        .iface
        .tcp_listen(SocketAddrV6::new(ip(OURS), 5001, 0, 0), 8)
        .expect("listen");
    let before = all_counters(peer_ns).expect("counters");
    let start = Instant::now();
    std::thread::scope(|sc| {
        let client = sc.spawn(|| {
            peer_ns.run(|| {
                let mut s = TcpStream::connect((ip(OURS), 5001)).expect("kernel connect");
                let sent = kernel_send_all(&mut s, 7);
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                let mut got = [0u8; 32];
                s.read_exact(&mut got).expect("read digest");
                let mut rest = Vec::new();
                let tail = s.read_to_end(&mut rest).map(|_| rest.len());
                (sent, got, tail.ok())
            })
        });
        let mut conn = None;
        let mut h = Sha256::new();
        let mut total = 0usize;
        let mut buf = vec![0u8; BLOCK];
        let mut digest_sent = false;
        let mut next_pause = recv.pause_every;
        let mut paused_until = None::<Instant>;
        loop {
            step(&mut rt, start);
            if conn.is_none() {
                conn = rt.iface.tcp_accept(l);
            }
            let Some(c) = conn else { continue };
            if paused_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            if !digest_sent {
                match rt.iface.tcp_recv(c, &mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        h.update(&buf[..n]);
                        total += n;
                        if total >= next_pause {
                            paused_until = Some(Instant::now() + recv.pause);
                            next_pause += recv.pause_every;
                        }
                    }
                    Err(Error::Eof) => {
                        let d: [u8; 32] = h.clone().finalize().into();
                        assert_eq!(rt.iface.tcp_send(c, &d).expect("send digest"), 32);
                        rt.iface.tcp_close(c).expect("close");
                        digest_sent = true;
                    }
                    Err(e) => panic!(
                        "our server: {e} after {total} bytes; {:?}",
                        rt.iface.stats()
                    ),
                }
            } else if matches!(
                rt.iface.tcp_state(c),
                Some(TcpState::TimeWait | TcpState::Closed)
            ) && client.is_finished()
            {
                break;
            }
        }
        let (sent, got, tail) = client.join().expect("client thread");
        assert_eq!(total, LEN);
        assert_eq!(got, sent, "digest mismatch");
        assert_eq!(tail, Some(0), "clean EOF after the digest");
    });
    let delta = counter_delta(&before, &all_counters(peer_ns).expect("counters"));
    let stats = rt.iface.stats().clone();
    eprintln!(
        "{name}: {:.2}s, kernel retrans {:?}, kernel win probes {:?}, ours {stats:?}",
        start.elapsed().as_secs_f64(),
        delta.get("TcpRetransSegs"),
        delta.get("TcpExtTCPWinProbe")
    );
    if std::env::var_os("DS_DEBUG").is_some() {
        let mut v: Vec<_> = delta
            .iter()
            .filter(|(k, v)| **v > 0 && k.starts_with("Tcp"))
            .collect();
        v.sort();
        eprintln!("{v:?}");
    }
    assert_eq!(
        delta.get("TcpEstabResets").copied().unwrap_or(0),
        0,
        "no RST seen by the kernel"
    );
    if loss > 0.0 {
        assert!(
            delta.get("TcpRetransSegs").copied().unwrap_or(0) > 0,
            "loss made the kernel retransmit"
        );
    }
    if recv.rcvbuf.is_some() {
        assert!(
            delta.get("TcpExtTCPWinProbe").copied().unwrap_or(0) > 0,
            "kernel sent zero-window probes"
        );
    }
}

/// Our client sends LEN bytes to a kernel server, which answers with its digest.
fn us_to_kernel_body<D: Device>(
    name: &str,
    loss: f64,
    recv: Receiver,
    peer_ns: &Netns,
    mut rt: Runner<D>,
) {
    let listener = peer_ns
        .run(|| {
            let l = TcpListener::bind((ip(PEER), 5002))?;
            if let Some(b) = recv.rcvbuf {
                set_rcvbuf(l.as_raw_fd(), b);
            }
            Ok::<_, std::io::Error>(l)
        })
        .expect("kernel listen");
    let start = Instant::now();
    std::thread::scope(|sc| {
        let server = sc.spawn(|| {
            let (mut s, _) = listener.accept().expect("accept");
            let (n, d) = kernel_recv_all(&mut s, recv);
            s.write_all(&d).expect("write digest");
            (n, d)
        });
        let now = rt.now();
        let c = rt
            .iface
            .tcp_connect(
                now,
                SocketAddrV6::new(ip(OURS), 0, 0, 0),
                SocketAddrV6::new(ip(PEER), 5002, 0, 0),
            )
            .expect("connect");
        let mut pat = PatternStream::new(11);
        let mut block = vec![0u8; BLOCK];
        let mut off = BLOCK;
        let mut sent = 0usize;
        let mut h = Sha256::new();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            step(&mut rt, start);
            while sent < LEN {
                if off == BLOCK {
                    pat.fill(&mut block);
                    h.update(&block);
                    off = 0;
                }
                match rt.iface.tcp_send(c, &block[off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        off += n;
                        sent += n;
                    }
                    Err(Error::InvalidState) => break,
                    Err(e) => panic!("our client: {e}"),
                }
                if sent == LEN {
                    rt.iface.tcp_close(c).expect("close");
                }
            }
            match rt.iface.tcp_recv(c, &mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(Error::Eof) => break,
                Err(e) => panic!("our client: {e}; {:?}", rt.iface.stats()),
            }
        }
        let (n, d) = server.join().expect("server thread");
        assert_eq!(n, LEN);
        let ours: [u8; 32] = h.finalize().into();
        assert_eq!(d, ours, "kernel digest");
        assert_eq!(got, ours.to_vec(), "digest echoed back");
    });
    let stats = rt.iface.stats().clone();
    eprintln!(
        "{name}: {:.2}s, ours {stats:?}",
        start.elapsed().as_secs_f64()
    );
    if loss > 0.0 {
        assert!(stats.tcp_retransmits > 0, "loss made us retransmit");
    }
    if recv.rcvbuf.is_some() {
        assert!(
            stats.tcp_zero_window_probes > 0,
            "we sent zero-window probes"
        );
    }
}

#[test]
fn afxdp_kernel_client_to_our_server_clean() {
    kernel_to_us(
        "afxdp_kernel_client_to_our_server_clean",
        Dev::AfXdp,
        0.0,
        FAST,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_kernel_client_to_our_server_clean() {
    kernel_to_us("tap_kernel_client_to_our_server_clean", Dev::Tap, 0.0, FAST);
}

#[test]
fn afxdp_kernel_client_to_our_server_1pct_loss() {
    kernel_to_us(
        "afxdp_kernel_client_to_our_server_1pct_loss",
        Dev::AfXdp,
        1.0,
        FAST,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_kernel_client_to_our_server_1pct_loss() {
    kernel_to_us(
        "tap_kernel_client_to_our_server_1pct_loss",
        Dev::Tap,
        1.0,
        FAST,
    );
}

#[test]
fn afxdp_kernel_client_to_our_server_5pct_loss() {
    kernel_to_us(
        "afxdp_kernel_client_to_our_server_5pct_loss",
        Dev::AfXdp,
        5.0,
        FAST,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_kernel_client_to_our_server_5pct_loss() {
    kernel_to_us(
        "tap_kernel_client_to_our_server_5pct_loss",
        Dev::Tap,
        5.0,
        FAST,
    );
}

#[test]
fn afxdp_kernel_client_to_our_server_zero_window() {
    kernel_to_us(
        "afxdp_kernel_client_to_our_server_zero_window",
        Dev::AfXdp,
        0.0,
        STALLING,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_kernel_client_to_our_server_zero_window() {
    kernel_to_us(
        "tap_kernel_client_to_our_server_zero_window",
        Dev::Tap,
        0.0,
        STALLING,
    );
}

#[test]
fn afxdp_our_client_to_kernel_server_clean() {
    us_to_kernel(
        "afxdp_our_client_to_kernel_server_clean",
        Dev::AfXdp,
        0.0,
        FAST,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_our_client_to_kernel_server_clean() {
    us_to_kernel("tap_our_client_to_kernel_server_clean", Dev::Tap, 0.0, FAST);
}

#[test]
fn afxdp_our_client_to_kernel_server_1pct_loss() {
    us_to_kernel(
        "afxdp_our_client_to_kernel_server_1pct_loss",
        Dev::AfXdp,
        1.0,
        FAST,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_our_client_to_kernel_server_1pct_loss() {
    us_to_kernel(
        "tap_our_client_to_kernel_server_1pct_loss",
        Dev::Tap,
        1.0,
        FAST,
    );
}

#[test]
fn afxdp_our_client_to_kernel_server_5pct_loss() {
    us_to_kernel(
        "afxdp_our_client_to_kernel_server_5pct_loss",
        Dev::AfXdp,
        5.0,
        FAST,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_our_client_to_kernel_server_5pct_loss() {
    us_to_kernel(
        "tap_our_client_to_kernel_server_5pct_loss",
        Dev::Tap,
        5.0,
        FAST,
    );
}

#[test]
fn afxdp_our_client_to_kernel_server_zero_window() {
    us_to_kernel(
        "afxdp_our_client_to_kernel_server_zero_window",
        Dev::AfXdp,
        0.0,
        STALLING,
    );
}

#[test]
#[ignore = "TAP baseline for comparison; tests/tests/interop.rs runs it"]
fn tap_our_client_to_kernel_server_zero_window() {
    us_to_kernel(
        "tap_our_client_to_kernel_server_zero_window",
        Dev::Tap,
        0.0,
        STALLING,
    );
}

/// Generic (skb) XDP instead of native: the fallback for drivers without XDP support.
#[test]
fn afxdp_generic_mode_kernel_client_to_our_server() {
    let name = "afxdp_generic_mode_kernel_client_to_our_server";
    if !require_root(name) {
        return;
    }
    let t = XdpHost::new("ag", ip(PEER)).expect("topology");
    let rt = afxdp_stack_mode(&t, FAST, Mode::Generic);
    assert_eq!(rt.dev.attach_mode(), Some(Mode::Generic));
    assert_eq!(rt.dev.bind_mode(), Some(ds_xdp::xsk::BindMode::Copy));
    kernel_to_us_body(name, 0.0, FAST, &t.peer, rt);
    // Clean teardown: the device detached the program it attached.
    let st = t
        .host
        .run(|| ds_xdp::loader::ifindex("x0").and_then(ds_xdp::loader::query))
        .expect("query");
    assert!(st.native_prog_id.is_none() && st.generic_prog_id.is_none());
}

/// One AF_XDP socket per receive queue: a veth with four queues gets four sockets, and the
/// transfer arrives whichever queue the kernel picks.
#[test]
fn afxdp_one_socket_per_queue() {
    let name = "afxdp_one_socket_per_queue";
    if !require_root(name) {
        return;
    }
    let peer = Netns::new("mqp").expect("ns");
    let host = Netns::new("mqh").expect("ns");
    ds_testbed::bridge(&peer, "br0", &[]).expect("bridge");
    ds_testbed::add_addr(&peer, "br0", &format!("{PEER}/64")).expect("addr");
    peer.ip(&[
        "link",
        "add",
        "p0",
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "type",
        "veth",
        "peer",
        "name",
        "x0",
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "netns",
        host.name(),
    ])
    .expect("4-queue veth");
    ds_testbed::set_up(&peer, "p0").expect("up");
    ds_testbed::set_up(&host, "x0").expect("up");
    ds_testbed::disable_offload(&peer, "p0").expect("offload");
    ds_testbed::disable_offload(&host, "x0").expect("offload");
    peer.ip(&["link", "set", "p0", "master", "br0"])
        .expect("enslave");
    ds_testbed::disable_offload(&peer, "br0").expect("offload");
    let dev = host
        .try_run(|| AfXdpDevice::open("x0", &AfXdpConfig::new(vec![ip(OURS)])))
        .expect("enter")
        .expect("AF_XDP device");
    assert_eq!(dev.queues(), 4);
    let mut rt = Runner::new(
        dev,
        Interface::new(Config::new(MAC, vec![ip(OURS)]), ds_stack::Instant::ZERO),
    );
    let now = rt.now();
    rt.iface.announce(now);
    kernel_to_us_body(name, 0.0, FAST, &peer, rt);
}
