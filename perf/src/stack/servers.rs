//! The three servers under test. Each runs on its own thread until its [`ServerCtl::stop`] flag
//! is set, serves connections one after another with the [`super::proto`] protocol, and
//! answers on a `ready` channel once it listens.

use super::proto::{Conn, Read, Session, APP_BUF, HEADER_LEN, MODE_DOWNLOAD, MODE_ECHO};
use super::proto::{Progress, MODE_UPLOAD};
use super::sockopt::{congestion, set_congestion};
use super::tap::{poll_readable, RawTap};
use super::topo::{Topology, OURS, OURS_MAC, PORT, SMOLTCP, SMOLTCP_MAC};
use anyhow::{anyhow, bail, Context, Result};
use ds_stack::device::TapDevice;
use ds_stack::runner::Runner;
use ds_stack::{Interface, TcpConfig, TcpHandle};
use smoltcp::iface::{Config as SmolConfig, Interface as SmolIface, SocketHandle, SocketSet};
use smoltcp::phy::{Medium, TunTapInterface};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Longest a server thread sleeps before looking at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// Socket timeouts of the kernel server, so a vanished client cannot wedge it.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames moved per direction per relay wake-up before the other direction gets its turn.
const RELAY_BATCH: usize = 64;

/// Socket buffer size given to smoltcp: the same as our stack's default send and receive
/// buffers (4 MiB each), which smoltcp turns into a window-scale shift of 7.
pub fn smoltcp_buffer_size() -> usize {
    let d = TcpConfig::default();
    d.recv_buf.max(d.send_buf)
}

/// Controls and counters shared with a server thread.
#[derive(Debug, Default)]
pub struct ServerCtl {
    /// Set to make the thread return.
    pub stop: AtomicBool,
    /// TCP segments the server has retransmitted so far (our stack only).
    pub retransmits: AtomicU64,
    /// TCP super-frames the server has sent so far (our stack through the library only).
    pub super_frames: AtomicU64,
    /// Frames the relay could not pass on (kernel server only).
    pub relay_drops: AtomicU64,
    /// Frames the relay passed on (kernel server only).
    pub relay_frames: AtomicU64,
}

impl ServerCtl {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Readiness report of a server thread: the name of its TAP in S, or why it failed.
pub type Ready = Sender<std::result::Result<String, String>>;

fn report_ready<T>(r: Result<(T, String)>, ready: &Ready) -> Result<T> {
    match r {
        Ok((v, tap)) => {
            let _ = ready.send(Ok(tap));
            Ok(v)
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            Err(e)
        }
    }
}

// ------------------------------------------------------------------------------------ ours

struct OursConn<'a> {
    iface: &'a mut Interface,
    h: TcpHandle,
}

impl Conn for OursConn<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Read> {
        match self.iface.tcp_recv(self.h, buf) {
            Ok(0) => Ok(Read::Empty),
            Ok(n) => Ok(Read::Data(n)),
            Err(ds_stack::Error::Eof) => Ok(Read::Eof),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        self.iface.tcp_send(self.h, data).map_err(io::Error::other)
    }

    fn close(&mut self) -> io::Result<()> {
        self.iface.tcp_close(self.h).map_err(io::Error::other)
    }
}

/// Our stack: `ds_stack::Interface` + `Runner<TapDevice>` on a TAP in S, default TCP settings
/// (4 MiB buffers, CUBIC, SACK, timestamps, window scaling, 40 ms delayed ACK) with Nagle off.
pub fn serve_ours(topo: &Topology, ctl: &ServerCtl, ready: Ready) -> Result<()> {
    let setup = || -> Result<_> {
        let mut rt: Runner<TapDevice> = topo
            .host
            .stack(OURS_MAC, OURS, |c| c.tcp.nagle = false)
            .context("our stack's TAP")?;
        // Offloads off everywhere in this comparison: one segment per frame, no super-frames
        // into the TAP (the others cannot make them either; `dsperf bulk` measures them).
        rt.iface.set_gso_max(0);
        let l = rt
            .iface
            .tcp_listen(SocketAddrV6::new(OURS, PORT, 0, 0), 64)
            .map_err(|e| anyhow!("our stack: listen: {e}"))?;
        info!(tap = rt.dev.name(), "ours: listening on [{OURS}]:{PORT}");
        let tap = rt.dev.name().to_string();
        Ok(((rt, l), tap))
    };
    let (mut rt, l) = report_ready(setup(), &ready)?;
    let mut sessions: Vec<(TcpHandle, Session)> = Vec::new();
    let mut buf = vec![0u8; APP_BUF];
    let zeros = vec![0u8; APP_BUF];
    while !ctl.stopped() {
        rt.step(MAX_WAIT).context("our stack: runner step")?;
        while let Some(h) = rt.iface.tcp_accept(l) {
            sessions.push((h, Session::new()));
        }
        let iface = &mut rt.iface;
        sessions.retain_mut(|(h, s)| {
            let mut c = OursConn { iface, h: *h };
            match s.drive(&mut c, &mut buf, &zeros) {
                Ok(Progress { done: true, .. }) => {
                    iface.tcp_release(*h);
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    warn!("ours: connection failed: {e}");
                    iface.tcp_release(*h);
                    false
                }
            }
        });
        ctl.retransmits
            .store(rt.iface.stats().tcp_retransmits, Ordering::Relaxed);
    }
    debug!("ours: stats {:?}", rt.iface.stats());
    Ok(())
}

// ------------------------------------------------------------------- ours, through the library

struct NodeConn<'a> {
    node: &'a mut dserver::Node,
    id: dserver::ConnId,
}

impl Conn for NodeConn<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Read> {
        match self.node.read(self.id, buf) {
            Ok(0) => Ok(Read::Eof),
            Ok(n) => Ok(Read::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::Empty),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.node.write(self.id, data) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    fn close(&mut self) -> io::Result<()> {
        self.node.close(self.id).map_err(io::Error::other)
    }
}

/// Our stack as a server process links it: a [`dserver::Node`] (`poll`, `try_accept`, `read`,
/// `write`, `close`), serving the protocol until stopped. The node's device is the caller's
/// choice (`dsperf bulk`: AF_XDP on a veth).
pub fn serve_node(node: &mut dserver::Node, ctl: &ServerCtl) -> Result<()> {
    let mut sessions: Vec<(dserver::ConnId, Session)> = Vec::new();
    let mut buf = vec![0u8; APP_BUF];
    let zeros = vec![0u8; APP_BUF];
    while !ctl.stopped() {
        let wait = node.poll_timeout().unwrap_or(MAX_WAIT).min(MAX_WAIT);
        node.poll(wait).context("our node: poll")?;
        while let Some(a) = node.try_accept() {
            sessions.push((a.conn, Session::new()));
        }
        sessions.retain_mut(|(id, s)| {
            let mut c = NodeConn {
                node: &mut *node,
                id: *id,
            };
            match s.drive(&mut c, &mut buf, &zeros) {
                // `close` forgot it (the FIN follows what was written).
                Ok(Progress { done: true, .. }) => false,
                Ok(_) => true,
                Err(e) => {
                    warn!("ours: connection failed: {e}");
                    let _ = node.close(*id);
                    false
                }
            }
        });
        let st = node.interface_stats();
        ctl.retransmits.store(st.tcp_retransmits, Ordering::Relaxed);
        ctl.super_frames.store(st.tx_gso_frames, Ordering::Relaxed);
    }
    Ok(())
}

// --------------------------------------------------------------------------------- smoltcp

struct SmolConn<'a, 'b> {
    s: &'a mut tcp::Socket<'b>,
}

impl SmolConn<'_, '_> {
    fn not_yet(&self) -> bool {
        matches!(
            self.s.state(),
            tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent
        )
    }

    fn dead(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("smoltcp socket in state {}", self.s.state()),
        )
    }
}

impl Conn for SmolConn<'_, '_> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Read> {
        match self.s.recv_slice(buf) {
            Ok(0) => Ok(Read::Empty),
            Ok(n) => Ok(Read::Data(n)),
            Err(tcp::RecvError::Finished) => Ok(Read::Eof),
            Err(tcp::RecvError::InvalidState) if self.not_yet() => Ok(Read::Empty),
            Err(tcp::RecvError::InvalidState) => Err(self.dead()),
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.s.send_slice(data) {
            Ok(n) => Ok(n),
            Err(tcp::SendError::InvalidState) if self.not_yet() => Ok(0),
            Err(tcp::SendError::InvalidState) => Err(self.dead()),
        }
    }

    fn close(&mut self) -> io::Result<()> {
        self.s.close();
        Ok(())
    }
}

fn smol_socket() -> Result<tcp::Socket<'static>> {
    let n = smoltcp_buffer_size();
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; n]),
        tcp::SocketBuffer::new(vec![0u8; n]),
    );
    s.set_nagle_enabled(false);
    s.set_congestion_control(tcp::CongestionControl::Cubic);
    s.listen(PORT)
        .map_err(|e| anyhow!("smoltcp: listen: {e:?}"))?;
    Ok(s)
}

fn smol_now(origin: std::time::Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(
        i64::try_from(origin.elapsed().as_micros()).unwrap_or(i64::MAX),
    )
}

/// smoltcp 0.14: its own `TunTapInterface` (a TAP in S), one `Interface`, TCP sockets with
/// 4 MiB buffers, Nagle off, CUBIC; everything else at smoltcp's defaults (10 ms ACK delay,
/// no timestamps, no SACK).
pub fn serve_smoltcp(topo: &Topology, ctl: &ServerCtl, ready: Ready) -> Result<()> {
    let origin = std::time::Instant::now();
    let setup = || -> Result<_> {
        // The TAP is created in the calling thread's namespace, and smoltcp's device is not
        // Send: this thread moves into S for good (it is ours and ends with the server).
        topo.host.ns.enter_current_thread()?;
        let name = ds_testbed::unique_ifname("sm");
        let mut dev = TunTapInterface::new(&name, Medium::Ethernet)
            .with_context(|| format!("smoltcp: TAP {name}"))?;
        topo.bridge_tap(&name)?;
        let mut cfg = SmolConfig::new(EthernetAddress(SMOLTCP_MAC).into());
        cfg.random_seed = u64::from(std::process::id()) ^ origin.elapsed().as_nanos() as u64;
        let mut iface = SmolIface::new(cfg, &mut dev, smol_now(origin));
        let mut pushed = Ok(());
        iface.update_ip_addrs(|a| {
            pushed = a.push(IpCidr::new(IpAddress::Ipv6(SMOLTCP), 64));
        });
        if pushed.is_err() {
            bail!("smoltcp: cannot add {SMOLTCP}");
        }
        let mut sockets = SocketSet::new(Vec::new());
        let listen = sockets.add(smol_socket()?);
        info!(tap = %name, "smoltcp: listening on [{SMOLTCP}]:{PORT}");
        Ok(((dev, iface, sockets, listen), name))
    };
    let (mut dev, mut iface, mut sockets, mut listen) = report_ready(setup(), &ready)?;
    let fd = dev.as_raw_fd();
    // (socket, session, finished): finished sessions stay until their socket is closed.
    let mut sessions: Vec<(SocketHandle, Session, bool)> = Vec::new();
    let mut buf = vec![0u8; APP_BUF];
    let zeros = vec![0u8; APP_BUF];
    let max_wait = smoltcp::time::Duration::from_micros(MAX_WAIT.as_micros() as u64);
    while !ctl.stopped() {
        iface.poll(smol_now(origin), &mut dev, &mut sockets);
        if !sockets.get::<tcp::Socket>(listen).is_listening() {
            sessions.push((listen, Session::new(), false));
            listen = sockets.add(smol_socket()?);
        }
        let mut gone = Vec::new();
        for (h, s, finished) in sessions.iter_mut() {
            let sock = sockets.get_mut::<tcp::Socket>(*h);
            if !*finished {
                let mut c = SmolConn { s: sock };
                match s.drive(&mut c, &mut buf, &zeros) {
                    Ok(p) => *finished = p.done,
                    Err(e) => {
                        warn!("smoltcp: connection failed: {e}");
                        c.s.abort();
                        *finished = true;
                    }
                }
            }
            let sock = sockets.get::<tcp::Socket>(*h);
            if *finished && matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) {
                gone.push(*h);
            }
        }
        for h in gone {
            sessions.retain(|(x, _, _)| *x != h);
            sockets.remove(h);
        }
        let wait = iface
            .poll_delay(smol_now(origin), &sockets)
            .map_or(max_wait, |d| d.min(max_wait));
        smoltcp::phy::wait(fd, Some(wait)).context("smoltcp: wait")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- kernel

/// Name of K's TAP.
pub const KERNEL_TAP: &str = "tap0";
/// Name of V's veth end in S.
pub const VETH_PORT: &str = "kv0";

/// The kernel baseline's plumbing: K's TAP, its twin on S's bridge, and the listener in K.
pub struct KernelParts {
    /// K's only link.
    pub k_tap: RawTap,
    /// The port on S's bridge.
    pub s_tap: RawTap,
    /// The kernel server's listening socket (lives in K).
    pub listener: TcpListener,
}

/// Build K's TAP (with the kernel server's address), its twin on S's bridge, and the listener.
/// K's TAP is named `tap0`.
pub fn kernel_parts(topo: &Topology) -> Result<KernelParts> {
    let k_name = KERNEL_TAP;
    let k_tap = topo
        .kns
        .try_run(|| RawTap::open(k_name))?
        .context("TAP in K")?;
    topo.setup_kernel_tap(k_name)?;
    let s_name = ds_testbed::unique_ifname("kr");
    let s_tap = topo
        .host
        .ns
        .try_run(|| RawTap::open(&s_name))?
        .context("relay TAP in S")?;
    topo.bridge_tap(&s_name)?;
    let addr = super::topo::KERNEL;
    ds_testbed::wait_addr_usable(&topo.kns, k_name, &addr.to_string(), Duration::from_secs(5))?;
    let listener = topo
        .kns
        .try_run(|| TcpListener::bind(SocketAddrV6::new(addr, PORT, 0, 0)))?
        .context("kernel server: bind")?;
    listener.set_nonblocking(true)?;
    info!(k_tap = k_name, s_tap = %s_name, "kernel: listening on [{addr}]:{PORT} in K");
    Ok(KernelParts {
        k_tap,
        s_tap,
        listener,
    })
}

/// The reference kernel server's listener in V (reached over a veth).
pub fn kernel_veth_listener(topo: &Topology) -> Result<TcpListener> {
    topo.setup_kernel_veth()?;
    let addr = super::topo::KERNEL_VETH;
    let listener = topo
        .vns
        .try_run(|| TcpListener::bind(SocketAddrV6::new(addr, PORT, 0, 0)))?
        .context("reference kernel server: bind")?;
    listener.set_nonblocking(true)?;
    info!("kernel-veth: listening on [{addr}]:{PORT} in V");
    Ok(listener)
}

fn pump(from: &mut RawTap, to: &mut RawTap, buf: &mut [u8], ctl: &ServerCtl) -> io::Result<()> {
    for _ in 0..RELAY_BATCH {
        let Some(n) = from.recv(buf)? else { break };
        if to.send(&buf[..n])? {
            ctl.relay_frames.fetch_add(1, Ordering::Relaxed);
        } else {
            ctl.relay_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Copy frames between K's TAP and S's relay TAP until stopped: `poll` on both, then up to
/// [`RELAY_BATCH`] frames each way, one `read` and one `write` per frame.
pub fn relay(mut k: RawTap, mut s: RawTap, ctl: &ServerCtl) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    let wait_ms = MAX_WAIT.as_millis() as i32;
    while !ctl.stopped() {
        let [kr, sr] = poll_readable([k.as_raw_fd(), s.as_raw_fd()], wait_ms)?;
        if kr {
            pump(&mut k, &mut s, &mut buf, ctl).context("relay K→S")?;
        }
        if sr {
            pump(&mut s, &mut k, &mut buf, ctl).context("relay S→K")?;
        }
    }
    Ok(())
}

fn kernel_session(mut s: TcpStream, cc: Option<&str>) -> io::Result<()> {
    s.set_nonblocking(false)?;
    if let Some(cc) = cc {
        set_congestion(&s, cc)?;
        let got = congestion(&s)?;
        if got != cc {
            warn!("kernel server socket uses {got}, not {cc}");
        }
    }
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut hdr = [0u8; HEADER_LEN];
    s.read_exact(&mut hdr)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&hdr[1..]);
    let arg = u64::from_be_bytes(a);
    let mut buf = vec![0u8; APP_BUF];
    match hdr[0] {
        MODE_UPLOAD => {
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_be_bytes())?;
        }
        MODE_DOWNLOAD => {
            let zeros = vec![0u8; APP_BUF];
            let mut left = arg;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                s.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            while s.read(&mut buf)? > 0 {}
        }
        MODE_ECHO => loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
        },
        m => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown mode byte {m:#04x}"),
            ))
        }
    }
    Ok(())
}

/// The kernel's TCP in K (or V), at the namespace's default settings plus `TCP_NODELAY` and the
/// congestion control `cc`: plain blocking
/// `std::net` sockets, one connection at a time.
pub fn serve_kernel(listener: TcpListener, cc: Option<&str>, ctl: &ServerCtl) -> Result<()> {
    if let Some(cc) = cc {
        set_congestion(&listener, cc).context("kernel server")?;
    }
    let wait_ms = MAX_WAIT.as_millis() as i32;
    while !ctl.stopped() {
        let [r] = poll_readable([listener.as_raw_fd()], wait_ms)?;
        if !r {
            continue;
        }
        match listener.accept() {
            Ok((s, peer)) => {
                if let Err(e) = kernel_session(s, cc) {
                    warn!("kernel: connection from {peer} failed: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("kernel server: accept"),
        }
    }
    Ok(())
}
