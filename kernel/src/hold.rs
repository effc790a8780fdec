//! Holding a flow's packets on a kernel host while its socket moves, and handing them to the
//! kernel stack of the host that took the socket over.
//!
//! [`Hold`] diverts the peer's packets of one connection to userspace with an `ip6tables` rule
//! `-t raw -A PREROUTING … -j NFQUEUE` (this platform's kernel has no `nft` queue expression,
//! `CONFIG_NFT_QUEUE` is off, but the xtables `NFQUEUE` target runs through `nft_compat`), and
//! reads them from the netfilter queue over netlink (`NFQNL`, with the `nfq` crate). Each
//! packet is copied out and the kernel's copy is dropped at once: the donor's socket never sees
//! it, and the copy waits in [`Hold`] (no kernel queue length or netlink buffer limit applies)
//! until [`Hold::take`] hands it to the acceptor. [`inject`] delivers such packets to the local
//! kernel stack (a raw IPv6 socket with `IPV6_HDRINCL` sends them to the local destination,
//! through `lo`), where the restored socket accepts them as if they had come from the wire.

use crate::{KernelError, Result};
use std::io;
use std::mem::size_of;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Netlink queue numbers are per network namespace (each namespace has its own
/// `nfnl_queue_net`, checked by `tests/hold.rs`); holds in one process still take distinct
/// numbers, and a number another socket already bound in this namespace (`EPERM`, or `EBUSY`
/// for our own) is skipped.
static NEXT_QUEUE: AtomicU16 = AtomicU16::new(0);

/// Tries at finding a free queue number.
const QUEUE_TRIES: usize = 64;

/// How long the reader sleeps when the queue is empty.
const IDLE: Duration = Duration::from_micros(200);

/// What the reader thread and the [`Hold`] share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    held: Mutex<Vec<Vec<u8>>>,
    total: AtomicU64,
    error: Mutex<Option<String>>,
}

/// The peer's packets of one TCP connection, held on this host instead of reaching its socket.
///
/// Start it BEFORE freezing the socket ([`crate::freeze`]): from then on the socket sees none
/// of the peer's packets, so the frozen state and the held packets together are everything the
/// peer sent. Hand the packets to the acceptor after it restored the connection
/// ([`Hold::take`], then [`inject`] on a kernel acceptor or `Interface::receive_ipv6` on a
/// userspace one), and keep taking until the peer's packets reach the acceptor directly.
/// Dropping the hold (or [`Hold::stop`]) removes the rule; packets still in the kernel queue
/// then are dropped, never delivered to a socket that would reset them.
pub struct Hold {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    /// The namespace the rule lives in (the one current at [`Hold::start`]).
    netns: OwnedFd,
    rule: Vec<String>,
    queue: u16,
    installed: bool,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("queue", &self.queue)
            .field("rule", &self.rule)
            .field("total", &self.total())
            .finish()
    }
}

impl Hold {
    /// Hold the packets of the connection `local` ↔ `remote` that come from `remote`, in the
    /// network namespace of the calling thread. Needs `CAP_NET_ADMIN` and the `ip6tables`
    /// command (Debian package `iptables`).
    pub fn start(local: SocketAddrV6, remote: SocketAddrV6) -> Result<Hold> {
        // SAFETY: plain open(2) of a NUL-terminated path; the fd is owned at once below.
        let raw = unsafe {
            libc::open(
                c"/proc/thread-self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(crate::os("open /proc/thread-self/ns/net"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let netns = unsafe { OwnedFd::from_raw_fd(raw) };
        let (mut queue, num) = bind_queue()?;
        queue.set_nonblocking(true);
        let rule = vec![
            "PREROUTING".to_string(),
            "-p".into(),
            "tcp".into(),
            "-s".into(),
            format!("{}/128", remote.ip()),
            "--sport".into(),
            remote.port().to_string(),
            "-d".into(),
            format!("{}/128", local.ip()),
            "--dport".into(),
            local.port().to_string(),
            "-j".into(),
            "NFQUEUE".into(),
            "--queue-num".into(),
            num.to_string(),
        ];
        let shared = Arc::new(Shared::default());
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("ds-hold-{num}"))
                .spawn(move || read_queue(queue, &shared))
                .map_err(|err| KernelError::Os {
                    what: "spawn hold reader",
                    err,
                })?
        };
        let mut hold = Hold {
            shared,
            reader: Some(reader),
            netns,
            rule,
            queue: num,
            installed: false,
        };
        // The calling thread is in the right namespace: a child inherits it.
        ip6tables("-A", &hold.rule)?;
        hold.installed = true;
        Ok(hold)
    }

    /// The packets held since the start or the last `take`, oldest first: whole IPv6 packets
    /// (header, TCP header and payload) as they arrived, checksums intact.
    pub fn take(&self) -> Result<Vec<Vec<u8>>> {
        let held = std::mem::take(
            &mut *self
                .shared
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if held.is_empty() {
            if let Some(e) = self
                .shared
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                return Err(KernelError::Hold(e));
            }
        }
        Ok(held)
    }

    /// How many packets were held since the start (taken or not).
    pub fn total(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// The netfilter queue number this hold reads.
    pub fn queue_num(&self) -> u16 {
        self.queue
    }

    /// Remove the rule and stop reading; returns the packets still held (take them to the
    /// acceptor too). Dropping the hold does the same and discards them.
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        let r = self.teardown();
        let rest = std::mem::take(
            &mut *self
                .shared
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        r.map(|()| rest)
    }

    fn teardown(&mut self) -> Result<()> {
        let mut r = Ok(());
        if self.installed {
            self.installed = false;
            r = in_netns(&self.netns, || ip6tables("-D", &self.rule));
        }
        // Read what was queued before the rule went away, then let the queue go (unbinding
        // drops anything the kernel still has queued).
        std::thread::sleep(IDLE * 5);
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("hold on queue {}: {e}", self.queue);
        }
    }
}

/// Open a netfilter queue socket and bind it to a number free in this namespace.
fn bind_queue() -> Result<(nfq::Queue, u16)> {
    let base = (std::process::id() as u16).wrapping_mul(97);
    let mut last = None;
    for _ in 0..QUEUE_TRIES {
        let num = base.wrapping_add(NEXT_QUEUE.fetch_add(1, Ordering::Relaxed));
        let mut q = nfq::Queue::open().map_err(|err| KernelError::Os {
            what: "netfilter queue socket",
            err,
        })?;
        match q.bind(num) {
            Ok(()) => {
                // Ask for whole packets (bind sets a 64 KiB copy range), and keep the kernel
                // from letting packets through when we fall behind.
                q.set_fail_open(num, false)
                    .and_then(|()| q.set_queue_max_len(num, 1 << 14))
                    .map_err(|err| KernelError::Os {
                        what: "configure netfilter queue",
                        err,
                    })?;
                return Ok((q, num));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EBUSY)) => last = Some(e),
            Err(err) => {
                return Err(KernelError::Os {
                    what: "bind netfilter queue",
                    err,
                })
            }
        }
    }
    Err(KernelError::Os {
        what: "no free netfilter queue number",
        err: last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)),
    })
}

/// The reader: copy each queued packet into `shared.held` and drop the kernel's copy.
fn read_queue(mut queue: nfq::Queue, shared: &Shared) {
    loop {
        match queue.recv() {
            Ok(mut msg) => {
                let pkt = msg.get_payload().to_vec();
                msg.set_verdict(nfq::Verdict::Drop);
                if let Err(e) = queue.verdict(msg) {
                    *shared.error.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(format!("verdict: {e}"));
                    return;
                }
                shared
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(pkt);
                shared.total.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(IDLE);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                *shared.error.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("receive: {e}"));
                return;
            }
        }
    }
}

/// Run `ip6tables -w -t raw <op> <rule…>` in the calling thread's namespace.
fn ip6tables(op: &str, rule: &[String]) -> Result<()> {
    let out = Command::new("ip6tables")
        .args(["-w", "-t", "raw", op])
        .args(rule)
        .output()
        .map_err(|err| KernelError::Os {
            what: "run ip6tables (Debian package iptables)",
            err,
        })?;
    if !out.status.success() {
        return Err(KernelError::Hold(format!(
            "ip6tables {op} {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Run `f` on a short-lived thread that joined the namespace `netns` (the caller's thread may
/// be elsewhere by now, e.g. a hold dropped on another thread).
fn in_netns<T: Send>(netns: &OwnedFd, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: `fd` is an open namespace fd (borrowed from `netns`, alive for the
            // scope); setns only changes this short-lived thread's namespace.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
                return Err(crate::os("setns"));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(KernelError::Hold("namespace thread panicked".into())))
    })
}

/// Deliver held IPv6 packets to this host's kernel stack as if they had just arrived, in the
/// network namespace of the calling thread: each goes out a raw socket with `IPV6_HDRINCL`
/// (RFC 3542 §3: `IPPROTO_RAW` sockets take the whole IPv6 header from the application) to its
/// own destination, which is local, so it loops back through `lo` into `ip6_rcv` and on to the
/// socket restored for it. The packets are sent unchanged: their TCP checksums stay valid, as
/// the pseudo-header (RFC 8200 §8.1) is the same. Returns how many were sent.
pub fn inject(packets: &[Vec<u8>]) -> Result<usize> {
    if packets.is_empty() {
        return Ok(0);
    }
    // SAFETY: plain socket(2); ownership passes to `OwnedFd` at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        return Err(crate::os("socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)"));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // Linux implies IPV6_HDRINCL for IPPROTO_RAW; say so anyway (since Linux 4.5).
    crate::setsockopt(
        sock.as_raw_fd(),
        libc::IPPROTO_IPV6,
        IPV6_HDRINCL,
        &1i32,
        "setsockopt(IPV6_HDRINCL)",
    )?;
    let mut sent = 0;
    for p in packets {
        if p.len() < 40 || p[0] >> 4 != 6 {
            return Err(KernelError::Unsupported("not an IPv6 packet"));
        }
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&p[24..40]);
        let to = crate::sockaddr(&SocketAddrV6::new(Ipv6Addr::from(dst), 0, 0, 0));
        // SAFETY: `p` is a live slice of `p.len()` bytes; `to` is a valid sockaddr_in6 of the
        // size given.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(crate::os("sendto (inject)"));
        }
        sent += 1;
    }
    Ok(sent)
}

/// `IPV6_HDRINCL` (include/uapi/linux/in6.h); not in every `libc` release.
const IPV6_HDRINCL: libc::c_int = 36;
