//! ICMPv6 echo ("ping") from inside a namespace, without needing a `ping`
//! binary: a raw ICMPv6 socket on a thread that joined the namespace.

use crate::netns::Netns;
use anyhow::{ensure, Context, Result};
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tracing::debug;

const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// `ICMP6_FILTER` socket option of `<netinet/icmp6.h>` (level `IPPROTO_ICMPV6`).
const ICMP6_FILTER: libc::c_int = 1;

static PING_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Options of [`ping6`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingOpts {
    /// Number of echo requests to send.
    pub count: u32,
    /// Time between two requests.
    pub interval: Duration,
    /// How long to wait for outstanding replies after the last request.
    pub timeout: Duration,
    /// Bytes of payload after the 8-byte ICMPv6 echo header.
    pub payload_len: usize,
}

impl Default for PingOpts {
    /// 3 requests, 10 ms apart, 1 s final wait, 56 bytes of payload.
    fn default() -> PingOpts {
        PingOpts {
            count: 3,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            payload_len: 56,
        }
    }
}

impl PingOpts {
    /// `count` requests with the other options at their defaults.
    pub fn count(count: u32) -> PingOpts {
        PingOpts {
            count,
            ..PingOpts::default()
        }
    }
}

/// Result of [`ping6`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingStats {
    /// Echo requests handed to the kernel (including failed sends).
    pub sent: u32,
    /// Distinct echo replies received.
    pub received: u32,
    /// Sends the kernel refused (`sendto` errors), included in `sent`.
    pub send_errors: u32,
    /// Round-trip times of the received replies, in arrival order.
    pub rtts: Vec<Duration>,
}

impl PingStats {
    /// Fraction of requests without reply, 0.0..=1.0 (0.0 if none sent).
    pub fn loss_fraction(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - f64::from(self.received) / f64::from(self.sent)
    }

    /// Whether every request got its reply.
    pub fn all_received(&self) -> bool {
        self.received == self.sent
    }
}

/// True for destinations test traffic may go to: loopback and unique local
/// addresses (`fc00::/7`, which holds the project's `fd00::/8`).
fn allowed_destination(dst: Ipv6Addr) -> bool {
    dst == Ipv6Addr::LOCALHOST || (dst.segments()[0] & 0xfe00) == 0xfc00
}

/// Sends `opts.count` ICMPv6 echo requests from inside `ns` to `dst` and
/// counts the replies.
///
/// Only loopback and ULA (`fc00::/7`) destinations are accepted, so test
/// traffic never leaves the machine. Lost requests are not an error; look at
/// the returned [`PingStats`].
pub fn ping6(ns: &Netns, dst: Ipv6Addr, opts: &PingOpts) -> Result<PingStats> {
    ensure!(
        allowed_destination(dst),
        "ping6 refuses {dst}: only ::1 and fc00::/7 test addresses are allowed"
    );
    ns.try_run(|| ping_here(dst, opts))?
        .with_context(|| format!("ping6 {dst} from {}", ns.name()))
}

fn raw_icmp6_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; no memory is
    // passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET6, SOCK_RAW, ICMPV6)");
    }
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by
    // nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    // Let only echo replies through: a set bit blocks that ICMPv6 type.
    let mut filter = [u32::MAX; 8];
    let t = usize::from(ICMP6_ECHO_REPLY);
    filter[t >> 5] &= !(1u32 << (t & 31));
    // SAFETY: `filter` is a live 32-byte array (the kernel's struct
    // icmp6_filter) and the length passed matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        // Only an optimisation: replies are matched by id/seq anyway.
        debug!("ICMP6_FILTER: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn ping_here(dst: Ipv6Addr, opts: &PingOpts) -> Result<PingStats> {
    let fd = raw_icmp6_socket()?;
    let ident = (std::process::id() as u16)
        ^ (PING_COUNTER.fetch_add(1, Ordering::Relaxed) as u16).wrapping_mul(0x9e37);

    // SAFETY: sockaddr_in6 is plain old data for which all-zero is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = dst.octets();

    let mut stats = PingStats::default();
    let count = opts.count.min(u32::from(u16::MAX) + 1);
    // Round-trip times from the kernel's receive timestamp (SO_TIMESTAMPNS, as ping(8)):
    // when the reply reached the socket, not when this thread woke up to read it, which on
    // a virtual machine can be tens of microseconds later.
    let stamped = ds_wan::stamp::enable(fd.as_raw_fd());
    let mut sent_at: Vec<Option<(Instant, Duration)>> = Vec::with_capacity(count as usize);
    let mut seen = vec![false; count as usize];
    let mut packet = vec![0u8; 8 + opts.payload_len];
    packet[0] = ICMP6_ECHO_REQUEST;
    packet[4..6].copy_from_slice(&ident.to_be_bytes());
    for (i, b) in packet[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut rbuf = vec![0u8; 65536];

    let start = Instant::now();
    let mut next_send = start;
    let mut last_send = start;
    loop {
        let now = Instant::now();
        if stats.sent < count && now >= next_send {
            let seq = stats.sent as u16;
            packet[6..8].copy_from_slice(&seq.to_be_bytes());
            let wall = ds_wan::stamp::realtime();
            // SAFETY: `packet` and `sa` are live for the call and the lengths
            // passed are theirs; the kernel fills in the ICMPv6 checksum.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    std::ptr::addr_of!(sa).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                debug!("sendto {dst}: {}", std::io::Error::last_os_error());
                stats.send_errors += 1;
                sent_at.push(None);
            } else {
                sent_at.push(Some((now, wall)));
            }
            stats.sent += 1;
            last_send = now;
            next_send += opts.interval;
            continue;
        }
        if stats.sent == count && stats.received == count {
            break;
        }
        let deadline = if stats.sent < count {
            next_send
        } else {
            last_send + opts.timeout
        };
        if stats.sent == count && now >= deadline {
            break;
        }
        let wait_ms = deadline
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a live pollfd array of length 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, wait_ms.min(60_000) as libc::c_int) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if rc == 0 {
            continue;
        }
        loop {
            let (n, stamp) =
                match ds_wan::stamp::recv_stamped(fd.as_raw_fd(), &mut rbuf, libc::MSG_DONTWAIT) {
                    Ok(r) => r,
                    Err(e) => match e.kind() {
                        std::io::ErrorKind::WouldBlock => break,
                        std::io::ErrorKind::Interrupted => continue,
                        _ => return Err(e).context("recv"),
                    },
                };
            // Raw ICMPv6 sockets deliver the ICMPv6 message without the IPv6
            // header.
            let arrived = if stamped { stamp } else { None };
            let msg = &rbuf[..n];
            if msg.len() < 8 || msg[0] != ICMP6_ECHO_REPLY {
                continue;
            }
            if u16::from_be_bytes([msg[4], msg[5]]) != ident {
                continue;
            }
            let seq = usize::from(u16::from_be_bytes([msg[6], msg[7]]));
            if seq >= sent_at.len() || seen[seq] {
                continue;
            }
            seen[seq] = true;
            stats.received += 1;
            if let Some((t, wall)) = sent_at[seq] {
                stats.rtts.push(match arrived {
                    Some(a) if a >= wall => a - wall,
                    _ => t.elapsed(),
                });
            }
        }
    }
    debug!(
        "ping6 {dst}: {}/{} replies, {} send errors",
        stats.received, stats.sent, stats.send_errors
    );
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_policy() {
        assert!(allowed_destination("fd00::1".parse().unwrap()));
        assert!(allowed_destination("fc12::1".parse().unwrap()));
        assert!(allowed_destination(Ipv6Addr::LOCALHOST));
        assert!(!allowed_destination("2001:db8::1".parse().unwrap()));
        assert!(!allowed_destination("fe80::1".parse().unwrap()));
        assert!(!allowed_destination("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn stats_math() {
        let s = PingStats {
            sent: 10,
            received: 7,
            ..PingStats::default()
        };
        assert!((s.loss_fraction() - 0.3).abs() < 1e-9);
        assert!(!s.all_received());
        assert_eq!(PingStats::default().loss_fraction(), 0.0);
    }
}
