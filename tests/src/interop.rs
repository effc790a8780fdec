//! The kernel-TCP interop scenarios, generic over the stack's device: a kernel client sends
//! 64 MiB to our server (which answers with the SHA-256 it computed), or our client sends
//! 64 MiB to a kernel server; optionally with loss, or with a receiver that stalls into zero
//! windows. `tests/tests/interop.rs` runs them over TAP, `xdp/tests/afxdp_interop.rs` over
//! AF_XDP.

use crate::{all_counters, counter_delta, Netns, PatternStream};
use ds_stack::device::Device;
use ds_stack::runner::Runner;
use ds_stack::{Error, TcpState};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Bytes moved per transfer.
pub const LEN: usize = 64 << 20;
/// Write/read block size.
pub const BLOCK: usize = 64 << 10;
/// The kernel peer's address.
pub const PEER: &str = "fd00:d1::1";
/// Our stack's address.
pub const OURS: &str = "fd00:d1::2";
/// Our stack's MAC.
pub const MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 2];
/// Longest a transfer may take.
pub const LIMIT: Duration = Duration::from_secs(240);

pub use crate::conn::ip;

/// How the receiving application behaves.
#[derive(Clone, Copy)]
pub struct Receiver {
    /// Receive buffer (SO_RCVBUF for the kernel, recv_buf for us).
    pub rcvbuf: Option<usize>,
    /// Pause this long after every `pause_every` bytes read.
    pub pause: Duration,
    /// Bytes between pauses.
    pub pause_every: usize,
}

/// A receiver that reads as fast as it can.
pub const FAST: Receiver = Receiver {
    rcvbuf: None,
    pause: Duration::ZERO,
    pause_every: usize::MAX,
};
/// A receiver with a small buffer that stalls now and then (zero windows).
pub const STALLING: Receiver = Receiver {
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

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// A kernel client sends to our server.
    KernelToUs,
    /// Our client sends to a kernel server.
    UsToKernel,
}

/// One interop scenario.
#[derive(Clone, Copy)]
pub struct Case {
    /// Which way.
    pub flow: Flow,
    /// Random loss on the link, percent.
    pub loss: f64,
    /// The receiving application.
    pub recv: Receiver,
}

impl Case {
    /// How our side receives: as the case says when we are the receiver, fast otherwise.
    pub fn our_receiver(&self) -> Receiver {
        match self.flow {
            Flow::KernelToUs => self.recv,
            Flow::UsToKernel => FAST,
        }
    }

    /// The case's loss, installed on `iface` in `ns` both ways (none when it has none).
    pub fn install_loss(&self, ns: &Netns, iface: &str) -> Option<crate::Loss> {
        (self.loss > 0.0).then(|| {
            crate::Loss::install(ns, iface, self.loss, crate::Direction::Both).expect("loss")
        })
    }

    /// Run the scenario between the kernel in `peer_ns` and our stack `rt`.
    pub fn run<D: Device>(&self, name: &str, peer_ns: &Netns, rt: Runner<D>) {
        match self.flow {
            Flow::KernelToUs => kernel_to_us_body(name, self, peer_ns, rt),
            Flow::UsToKernel => us_to_kernel_body(name, self, peer_ns, rt),
        }
    }
}

/// The interop tests, each a `#[test]` calling `$run(name, case)` (which sets up the
/// transport, installs the loss and calls [`Case::run`]).
#[macro_export]
macro_rules! interop_tests {
    ($run:path) => {
        $crate::interop_tests!(@case $run, kernel_client_to_our_server_clean, KernelToUs, 0.0, FAST);
        $crate::interop_tests!(@case $run, kernel_client_to_our_server_1pct_loss, KernelToUs, 1.0, FAST);
        $crate::interop_tests!(@case $run, kernel_client_to_our_server_5pct_loss, KernelToUs, 5.0, FAST);
        $crate::interop_tests!(@case $run, kernel_client_to_our_server_zero_window, KernelToUs, 0.0, STALLING);
        $crate::interop_tests!(@case $run, our_client_to_kernel_server_clean, UsToKernel, 0.0, FAST);
        $crate::interop_tests!(@case $run, our_client_to_kernel_server_1pct_loss, UsToKernel, 1.0, FAST);
        $crate::interop_tests!(@case $run, our_client_to_kernel_server_5pct_loss, UsToKernel, 5.0, FAST);
        $crate::interop_tests!(@case $run, our_client_to_kernel_server_zero_window, UsToKernel, 0.0, STALLING);
    };
    (@case $run:path, $name:ident, $flow:ident, $loss:expr, $recv:ident) => {
        #[test]
        fn $name() {
            let case = $crate::interop::Case {
                flow: $crate::interop::Flow::$flow,
                loss: $loss,
                recv: $crate::interop::$recv,
            };
            $run(stringify!($name), case);
        }
    };
}

/// Kernel client sends LEN bytes to our server, which answers with the digest it computed.
pub fn kernel_to_us_body<D: Device>(name: &str, case: &Case, peer_ns: &Netns, mut rt: Runner<D>) {
    let (loss, recv) = (case.loss, case.recv);
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
        eprintln!("{:?}", crate::moved_tcp_counters(&delta));
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
pub fn us_to_kernel_body<D: Device>(name: &str, case: &Case, peer_ns: &Netns, mut rt: Runner<D>) {
    let (loss, recv) = (case.loss, case.recv);
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
        let c = crate::conn::dial(&mut rt, ip(OURS), SocketAddrV6::new(ip(PEER), 5002, 0, 0));
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
    if rt.dev.gso_max() > 0 {
        assert!(
            stats.tx_gso_frames > 0,
            "the device segments: super-frames sent"
        );
    }
    if rt.builds_in_place() {
        // AF_XDP: the segments of one frame (the tail of the data, the handshake) were built
        // in the UMEM.
        assert!(stats.tx_in_place > 0, "frames built in place");
    } else {
        assert_eq!(stats.tx_in_place, 0);
    }
}
