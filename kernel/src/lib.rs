//! # ds-kernel: standard Linux TCP sockets in and out of [`ConnState`] with `TCP_REPAIR`
//!
//! The kernel path of Distributed Servers: a server that uses ordinary sockets can still hand
//! its connections off. [`freeze`] puts an established socket in repair mode and dumps its
//! sequence numbers, queues (the unsent part of the send queue kept apart), window,
//! negotiated options, timestamp clock and RTT into the same [`ConnState`] the userspace
//! stack produces; [`restore`] rebuilds a socket from one, on this host or another, whichever
//! stack froze it. This is what TCPCP2 did as a kernel module; mainline Linux has it built in
//! (`TCP_REPAIR`, `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ`, `TCP_REPAIR_OPTIONS`,
//! `TCP_REPAIR_WINDOW`, `TCP_TIMESTAMP`; needs `CAP_NET_ADMIN`).
//!
//! While a socket moves, the peer's packets must be HELD, not dropped (a dropped segment costs
//! the peer a retransmission timeout): a node's [`HoldTable`] has the XDP steering program copy
//! them to userspace (one BPF map update to hold a flow, one to release it) from before the
//! freeze, and [`inject`] delivers them to the restored socket on the acceptor through the
//! kernel's own receive path.
//!
//! Not carried by the kernel API: TS.Recent (the state says "unknown" and the next segment
//! sets it), SACK scoreboards and out-of-order data (dropped on restore: the peer resends it).

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod hold;
pub mod host;

pub use hold::{
    complete_tcp_checksum, inject, inject_until_full, Checksum, HoldLimits, HoldStats, HoldTable,
};
pub use host::{KernelConn, KernelHost};

use ds_stack::state::{flags, AfterLoss, Endpoint, InFlight};
use ds_stack::{ConnState, Packets, TcpState};
use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors of the kernel path.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A system call failed.
    #[error("{what}: {err}")]
    Os {
        /// Which call.
        what: &'static str,
        /// The error.
        #[source]
        err: io::Error,
    },
    /// The socket or state is not something this path handles.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The state does not validate.
    #[error(transparent)]
    State(#[from] ds_stack::state::StateError),
    /// Holding packets failed (the XDP program, its maps or the table's limits).
    #[error("packet hold: {0}")]
    Hold(String),
}

impl KernelError {
    /// A system call refused for want of buffer space (`ENOBUFS`): a device's queue or ring
    /// full, worth trying again shortly.
    pub fn is_no_buffer_space(&self) -> bool {
        matches!(self, KernelError::Os { err, .. } if err.raw_os_error() == Some(libc::ENOBUFS))
    }
}

type Result<T> = std::result::Result<T, KernelError>;

fn os(what: &'static str) -> KernelError {
    KernelError::Os {
        what,
        err: io::Error::last_os_error(),
    }
}

/// `struct tcp_repair_window` (include/uapi/linux/tcp.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RepairOpt {
    code: u32,
    val: u32,
}

const TCP_NO_QUEUE: libc::c_int = 0;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// `TCP_REPAIR_OFF` and `TCP_REPAIR_OFF_NO_WP` (leave repair mode without a window probe).
const TCP_REPAIR_OFF: libc::c_int = 0;
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
/// `SO_SNDBUFFORCE` (asm-generic/socket.h): `SO_SNDBUF` past `wmem_max`, with `CAP_NET_ADMIN`.
const SO_SNDBUFFORCE: libc::c_int = 32;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const TCP_ESTABLISHED: u8 = 1;
const SIOCINQ: libc::c_ulong = libc::FIONREAD;
const SIOCOUTQ: libc::c_ulong = libc::TIOCOUTQ;
const SIOCOUTQNSD: libc::c_ulong = 0x894b;

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
    what: &'static str,
) -> Result<()> {
    // SAFETY: `val` points to a live `T` of `size_of::<T>()` bytes for the duration of the call;
    // the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os(what));
    }
    Ok(())
}

/// The queue that `TCP_QUEUE_SEQ` and repair-mode reads and writes act on.
#[derive(Clone, Copy)]
enum RepairQueue {
    None,
    Recv,
    Send,
}

/// Select `q` with `TCP_REPAIR_QUEUE`.
fn repair_queue(fd: RawFd, q: RepairQueue) -> Result<()> {
    let (code, what) = match q {
        RepairQueue::None => (TCP_NO_QUEUE, "TCP_REPAIR_QUEUE none"),
        RepairQueue::Recv => (TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE recv"),
        RepairQueue::Send => (TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE send"),
    };
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, &code, what)
}

/// Select `q` and read its `TCP_QUEUE_SEQ`: write_seq for the send queue, rcv_nxt for the
/// receive queue.
fn queue_seq(fd: RawFd, q: RepairQueue) -> Result<u32> {
    repair_queue(fd, q)?;
    let what = match q {
        RepairQueue::Send => "TCP_QUEUE_SEQ send",
        _ => "TCP_QUEUE_SEQ recv",
    };
    getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, what)
}

fn getsockopt<T: Default>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    what: &'static str,
) -> Result<T> {
    let mut v = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`, which is that large and outlives
    // the call; `len` is updated in place.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(os(what));
    }
    Ok(v)
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong, what: &'static str) -> Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ/SIOCOUTQNSD write one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) };
    if rc < 0 {
        return Err(os(what));
    }
    Ok(v.max(0) as usize)
}

/// The kernel's `TCP_INFO` of a socket (its state, windows, segment counters).
pub fn tcp_info(fd: RawFd) -> Result<libc::tcp_info> {
    let mut v: libc::tcp_info = {
        // SAFETY: tcp_info is plain integers; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as in `getsockopt`: the kernel fills at most `len` bytes of `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(os("getsockopt(TCP_INFO)"));
    }
    Ok(v)
}

/// Read a repair queue without consuming it.
fn peek_queue(fd: RawFd, len: usize, what: &'static str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: the kernel writes at most `len - got` bytes at `buf[got..]`, inside `buf`.
        let n = unsafe {
            libc::recv(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                len - got,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(os(what));
        }
        if n == 0 {
            break;
        }
        // In repair mode a peek returns the whole queue from its start each time.
        got = (n as usize).max(got);
        if (n as usize) < len {
            break;
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn v6(a: SocketAddr) -> Result<SocketAddrV6> {
    match a {
        SocketAddr::V6(v) => Ok(v),
        SocketAddr::V4(_) => Err(KernelError::Unsupported("IPv4 sockets")),
    }
}

/// Bytes in `sock`'s send queue not yet acknowledged by the peer (sent or not: `SIOCOUTQ`).
/// Zero means the send buffer is drained, so a freeze now carries no data (seed §3.2.3: the
/// drained state is the small one).
pub fn send_queue_len(sock: &TcpStream) -> Result<usize> {
    ioctl_int(sock.as_raw_fd(), SIOCOUTQ, "SIOCOUTQ")
}

/// Take a frozen socket (still in repair mode, after [`freeze`]) out of the connection table
/// now, silently: `connect(AF_UNSPEC)` runs the kernel's `tcp_disconnect`, which in repair
/// mode sends nothing. Closing the fd is not enough when the same host restores the
/// connection at once (a failed handoff thawed back): a `fork` in any thread of the process
/// (every `std::process::Command`) holds a copy of the fd until its `exec`, which defers the
/// close, and the restored socket's repair `connect` then finds the 4-tuple still taken
/// (`EADDRNOTAVAIL`).
pub fn retire(sock: &TcpStream) -> Result<()> {
    // SAFETY: a zeroed sockaddr is a valid value; only its family is read.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `sa` is a valid sockaddr of the size passed; connect only reads it.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &sa,
            size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(os("connect (AF_UNSPEC)"));
    }
    Ok(())
}

/// Freeze an established kernel socket into a [`ConnState`]. The socket is left in repair
/// mode: dropping it then closes it silently (no FIN, no RST). Hold the connection first
/// ([`HoldTable::hold`]), so that the peer's packets wait for the acceptor instead of reaching it.
pub fn freeze(sock: &TcpStream) -> Result<ConnState> {
    let fd = sock.as_raw_fd();
    let local = v6(sock.local_addr().map_err(|e| KernelError::Os {
        what: "getsockname",
        err: e,
    })?)?;
    let remote = v6(sock.peer_addr().map_err(|e| KernelError::Os {
        what: "getpeername",
        err: e,
    })?)?;
    setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        &1i32,
        "setsockopt(TCP_REPAIR on)",
    )?;
    let info = tcp_info(fd)?;
    if info.tcpi_state != TCP_ESTABLISHED {
        return Err(KernelError::Unsupported(
            "only established sockets are frozen",
        ));
    }
    // Send queue: TCP_QUEUE_SEQ is write_seq, the end of the queue.
    let write_seq = queue_seq(fd, RepairQueue::Send)?;
    let outq = ioctl_int(fd, SIOCOUTQ, "SIOCOUTQ")?;
    let notsent = ioctl_int(fd, SIOCOUTQNSD, "SIOCOUTQNSD")?.min(outq);
    let send_data = peek_queue(fd, outq, "peek send queue")?;
    // Receive queue: TCP_QUEUE_SEQ is rcv_nxt; the unread bytes precede it.
    let rcv_nxt = queue_seq(fd, RepairQueue::Recv)?;
    let inq = ioctl_int(fd, SIOCINQ, "SIOCINQ")?;
    let recv_data = peek_queue(fd, inq, "peek receive queue")?;
    repair_queue(fd, RepairQueue::None)?;
    if send_data.len() != outq || recv_data.len() != inq {
        return Err(KernelError::Unsupported("queue changed while being read"));
    }
    let win: RepairWindow = getsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_WINDOW,
        "TCP_REPAIR_WINDOW",
    )?;
    let ts_ok = info.tcpi_options & TCPI_OPT_TIMESTAMPS != 0;
    let tsval: u32 = if ts_ok {
        getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP, "TCP_TIMESTAMP")?
    } else {
        0
    };
    let nodelay: libc::c_int = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY")?;

    let snd_una = write_seq.wrapping_sub(outq as u32);
    let sent = (outq - notsent) as u32;
    let mss = info.tcpi_snd_mss.clamp(64, 65535);
    let mut f = 0u16;
    if info.tcpi_options & TCPI_OPT_WSCALE != 0 {
        f |= flags::WS;
    }
    if ts_ok {
        f |= flags::TS | flags::TS_RECENT_UNKNOWN;
    }
    if info.tcpi_options & TCPI_OPT_SACK != 0 {
        f |= flags::SACK;
    }
    if nodelay == 0 {
        f |= flags::NAGLE;
    }
    f |= flags::CUBIC | flags::DELACK;
    let ssthresh = info.tcpi_snd_ssthresh;
    let after_loss = (ssthresh < 0x7fff_ffff).then(|| AfterLoss {
        ssthresh: ssthresh.saturating_mul(mss),
        w_max: info.tcpi_snd_cwnd,
    });
    let rcv_edge = win.rcv_wup.wrapping_add(win.rcv_wnd);
    let state = ConnState {
        local: Endpoint::from(local),
        remote: Endpoint::from(remote),
        state_flags: TcpState::Established as u16 | (f << 4),
        snd_una,
        in_flight: (sent > 0).then(|| InFlight {
            nxt_off: sent,
            max_off: sent,
            rto_due_us: Some(info.tcpi_rto),
            backoff: info.tcpi_backoff.min(16),
        }),
        snd_wnd: win.snd_wnd,
        rcv_nxt,
        rcv_adv_off: rcv_edge.wrapping_sub(rcv_nxt).min(1 << 30),
        snd_mss: mss as u16,
        // tcp_info: snd_wscale in the low nibble, rcv_wscale in the high one.
        wscales: ((info.tcpi_snd_rcv_wscale & 0xf) << 4) | (info.tcpi_snd_rcv_wscale >> 4),
        ts_recent: 0,
        ts_last: tsval,
        srtt_us: info.tcpi_rtt,
        rttvar_us: info.tcpi_rttvar,
        cwnd: info.tcpi_snd_cwnd.saturating_mul(mss).max(mss),
        after_loss,
        send_buf_kib: 4096.max((outq >> 10) as u32 + 1),
        recv_buf_kib: 4096.max((inq >> 10) as u32 + 1),
        keepalive: None,
        send_data,
        recv_data,
        ooo: Vec::new(),
    };
    state.validate()?;
    Ok(state)
}

/// Rebuild a kernel socket from a [`ConnState`] (from either stack). The local address must be
/// configured on this host; the peer's packets should reach this host from now on. If the
/// peer's packets were held during the move, use [`restore_with_held`] instead, so that they
/// reach the socket before anything newer does.
pub fn restore(st: &ConnState) -> Result<TcpStream> {
    restore_with_held(st, &Packets::new()).map(|(s, _)| s)
}

/// [`restore`], delivering `held` (the peer's packets held during the move, oldest first, as
/// for [`inject`]) to the socket as soon as it leaves repair mode and before it sends anything.
/// Returns the socket and how many packets were injected.
///
/// The order matters. Held packets carry the peer's state as of the freeze; once the socket
/// has sent new data and the peer has acknowledged it directly, a held segment's ACK lies more
/// than `min(max_window, bytes_acked)` below SND.UNA and Linux drops it with a challenge ACK
/// (RFC 5961 §5.2, RFC 9293 §3.10.7.4), or its TSval is older than TS.Recent and PAWS drops
/// it (RFC 7323 §5.3); a payload in it is lost and the peer has to retransmit. So: no window
/// probe when leaving repair mode (its answer would come first), the held packets next, and
/// only then the never-sent data.
pub fn restore_with_held(st: &ConnState, held: &Packets) -> Result<(TcpStream, usize)> {
    restore_repaired(st)?.activate(held)
}

/// A socket rebuilt from a [`ConnState`] and still in repair mode: it sends nothing (no
/// window probe, no retransmission) until [`Repaired::activate`]. Dropping it closes it
/// silently (no FIN, no RST), so a restore that is not committed leaves no trace.
#[derive(Debug)]
pub struct Repaired {
    fd: OwnedFd,
    /// The never-sent part of the send queue, written after the repair.
    unsent: Vec<u8>,
}

/// The first half of [`restore_with_held`]: everything but leaving repair mode (the handoff's
/// socket re-creation, before the commit; [`Repaired::activate`] is its activation).
pub fn restore_repaired(st: &ConnState) -> Result<Repaired> {
    st.validate()?;
    if st.tcp_state() != Some(TcpState::Established) {
        return Err(KernelError::Unsupported(
            "only established connections are restored",
        ));
    }
    let has = |b: u16| (st.state_flags >> 4) & b != 0;
    // SAFETY: plain socket(2); ownership of the fd passes to `OwnedFd` at once.
    let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os("socket"));
    }
    // SAFETY: `raw` is a fresh, valid fd owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = owned.as_raw_fd();
    let tcp = libc::IPPROTO_TCP;
    // SO_REUSEADDR first: TCP_REPAIR then upgrades the socket to forced reuse
    // (`SK_FORCE_REUSE`), which binds even next to a listener on the same address and port
    // (a server that takes a connection back, or serves the DS address itself). The other
    // order would overwrite the forced reuse with plain SO_REUSEADDR and the bind would fail
    // with EADDRINUSE.
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &1i32,
        "SO_REUSEADDR",
    )?;
    setsockopt(
        fd,
        tcp,
        libc::TCP_REPAIR,
        &1i32,
        "setsockopt(TCP_REPAIR on)",
    )?;
    let (unacked, unsent) = {
        let sent = st
            .in_flight
            .as_ref()
            .map(|f| f.max_off as usize)
            .unwrap_or(0)
            .min(st.send_data.len());
        st.send_data.split_at(sent)
    };
    // The whole send queue fits in the send buffer, so writing it back never blocks: a restore
    // that waited for the peer to acknowledge data would leave the held packets stale.
    let sndbuf = ((st.send_buf_kib as usize) << 10)
        .max(2 * st.send_data.len())
        .min(i32::MAX as usize) as libc::c_int;
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        SO_SNDBUFFORCE,
        &sndbuf,
        "SO_SNDBUFFORCE",
    )?;
    repair_queue(fd, RepairQueue::Send)?;
    setsockopt(
        fd,
        tcp,
        libc::TCP_QUEUE_SEQ,
        &st.snd_una,
        "TCP_QUEUE_SEQ send",
    )?;
    repair_queue(fd, RepairQueue::Recv)?;
    let rcv_start = st.rcv_nxt.wrapping_sub(st.recv_data.len() as u32);
    setsockopt(
        fd,
        tcp,
        libc::TCP_QUEUE_SEQ,
        &rcv_start,
        "TCP_QUEUE_SEQ recv",
    )?;
    with_sockaddr(
        fd,
        &st.local(),
        libc::bind,
        "bind (is the local address configured here?)",
    )?;
    // In repair mode connect() sends nothing and puts the socket in ESTABLISHED.
    with_sockaddr(fd, &st.remote(), libc::connect, "connect (repair)")?;
    let mut opts = vec![RepairOpt {
        code: TCPOPT_MSS,
        val: u32::from(st.snd_mss),
    }];
    if has(flags::WS) {
        let snd = u32::from(st.wscales >> 4);
        let rcv = u32::from(st.wscales & 0xf);
        opts.push(RepairOpt {
            code: TCPOPT_WINDOW,
            val: snd | (rcv << 16),
        });
    }
    if has(flags::SACK) {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if has(flags::TS) {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    // SAFETY: `opts` is a live array of `tcp_repair_opt`; its byte length is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            tcp,
            libc::TCP_REPAIR_OPTIONS,
            opts.as_ptr() as *const libc::c_void,
            (opts.len() * size_of::<RepairOpt>()) as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os("TCP_REPAIR_OPTIONS"));
    }
    if has(flags::TS) {
        // The timestamp clock continues from the last TSval sent (monotonic per connection).
        setsockopt(
            fd,
            tcp,
            libc::TCP_TIMESTAMP,
            &st.ts_last.wrapping_add(1),
            "TCP_TIMESTAMP",
        )?;
    }
    repair_queue(fd, RepairQueue::Recv)?;
    send_all(fd, &st.recv_data, "restore receive queue")?;
    repair_queue(fd, RepairQueue::Send)?;
    // Data written in repair mode counts as sent and unacknowledged.
    send_all(fd, unacked, "restore send queue")?;
    repair_queue(fd, RepairQueue::None)?;
    // The peer offered at least a window covering what is in flight (a sender stays inside
    // the offered window, RFC 9293 §3.8.6): a `max_window` below that would make Linux take
    // the peer's slightly older ACKs for blind injections (RFC 5961 §5.2).
    let max_window = st
        .snd_wnd
        .max(st.in_flight.as_ref().map(|f| f.max_off).unwrap_or(0));
    let win = RepairWindow {
        snd_wl1: st.rcv_nxt,
        snd_wnd: st.snd_wnd,
        max_window,
        rcv_wnd: st.rcv_adv_off,
        rcv_wup: st.rcv_nxt,
    };
    setsockopt(fd, tcp, libc::TCP_REPAIR_WINDOW, &win, "TCP_REPAIR_WINDOW")?;
    let nodelay: libc::c_int = if has(flags::NAGLE) { 0 } else { 1 };
    setsockopt(fd, tcp, libc::TCP_NODELAY, &nodelay, "TCP_NODELAY")?;
    Ok(Repaired {
        fd: owned,
        unsent: unsent.to_vec(),
    })
}

impl Repaired {
    /// Leave repair mode, deliver `held` (the peer's packets held during the move, oldest
    /// first, as for [`inject`]) before anything else, then send the never-sent data.
    /// Returns the socket and how many packets were injected.
    pub fn activate(self, held: &Packets) -> Result<(TcpStream, usize)> {
        let fd = self.fd.as_raw_fd();
        let tcp = libc::IPPROTO_TCP;
        if held.is_empty() {
            // Leaving repair mode sends a window probe (an ACK): the peer learns where we are.
            setsockopt(
                fd,
                tcp,
                libc::TCP_REPAIR,
                &TCP_REPAIR_OFF,
                "setsockopt(TCP_REPAIR off)",
            )?;
        } else {
            // No probe: the peer's answer to it would overtake the held packets (see
            // `restore_with_held`). Held data is acknowledged as it is processed, and the
            // never-sent data follows.
            setsockopt(
                fd,
                tcp,
                libc::TCP_REPAIR,
                &TCP_REPAIR_OFF_NO_WP,
                "setsockopt(TCP_REPAIR off, no window probe)",
            )?;
        }
        let stream = TcpStream::from(self.fd);
        let injected = inject(held)?;
        // The never-sent part goes out normally.
        let mut w = &stream;
        io::Write::write_all(&mut w, &self.unsent).map_err(|e| KernelError::Os {
            what: "write unsent data",
            err: e,
        })?;
        Ok((stream, injected))
    }
}

/// `call(fd, addr)` for bind(2) or connect(2) with an IPv6 socket address.
fn with_sockaddr(
    fd: RawFd,
    addr: &SocketAddrV6,
    call: unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
    what: &'static str,
) -> Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: `sa` is a valid sockaddr_in6 of the size passed; `call` is bind or connect,
    // which only read it.
    if unsafe {
        call(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    } < 0
    {
        return Err(os(what));
    }
    Ok(())
}

fn send_all(fd: RawFd, mut data: &[u8], what: &'static str) -> Result<()> {
    while !data.is_empty() {
        // SAFETY: reads `data.len()` bytes from a live slice.
        let n = unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), 0) };
        if n <= 0 {
            return Err(os(what));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn sockaddr(a: &SocketAddrV6) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_port = a.port().to_be();
    s.sin6_addr.s6_addr = a.ip().octets();
    s.sin6_scope_id = a.scope_id();
    s
}
