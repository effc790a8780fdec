//! A receive-side packet log in the client's namespace: when each TCP data segment from the
//! DS address reached the client's interface. It gives the client-perceived gap of every
//! handoff (from the last segment before the handoff's sequence boundary to the first one
//! after it) and counts data the client received twice (the servers' retransmissions).

use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One TCP segment with payload from the server, as the client's link saw it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Arrival time (monotonic, same clock as the nodes' reports).
    pub at: Instant,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Payload length.
    pub len: u32,
}

/// A capture running on a thread; [`Sniffer::stop`] returns the log.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<Vec<Seen>>>,
}

fn packet_socket(ifname: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the returned descriptor is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| std::io::Error::other("interface name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = idx as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: `tv` is a valid timeval and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Parse an Ethernet frame: a TCP segment with payload from `server` port `port`.
fn parse(f: &[u8], server: Ipv6Addr, port: u16) -> Option<(u32, u32)> {
    if f.len() < 14 + 40 + 20 || f[12..14] != [0x86, 0xdd] || f[20] != 6 {
        return None;
    }
    if f[22..38] != server.octets() {
        return None;
    }
    let plen = u16::from_be_bytes([f[18], f[19]]) as usize;
    let t = &f[54..];
    if u16::from_be_bytes([t[0], t[1]]) != port || plen < 20 {
        return None;
    }
    let off = ((t[12] >> 4) as usize) * 4;
    let len = plen.checked_sub(off)? as u32;
    if len == 0 {
        return None;
    }
    Some((u32::from_be_bytes([t[4], t[5], t[6], t[7]]), len))
}

impl Sniffer {
    /// Start capturing on `ifname` of the calling thread's network namespace (the socket is
    /// created here, so call it from inside the client's namespace).
    pub fn start(ifname: &str, server: Ipv6Addr, port: u16) -> std::io::Result<Sniffer> {
        let fd = packet_socket(ifname)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sniffer".into())
            .spawn(move || {
                let mut log = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; fd is open.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr() as *mut libc::c_void,
                            buf.len(),
                            0,
                        )
                    };
                    let at = Instant::now();
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        match e.kind() {
                            std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::TimedOut => continue,
                            _ => return Err(e),
                        }
                    }
                    if let Some((seq, len)) = parse(&buf[..n as usize], server, port) {
                        log.push(Seen { at, seq, len });
                    }
                }
                Ok(log)
            })?;
        Ok(Sniffer { stop, thread })
    }

    /// Stop and return the log.
    pub fn stop(self) -> std::io::Result<Vec<Seen>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("sniffer thread panicked"))?
    }
}

fn after_or_at(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The client-perceived gap of the handoff whose first new byte is `boundary`: from the last
/// data arrival before the first segment at or beyond the boundary, to that segment.
pub fn gap(log: &[Seen], boundary: u32) -> Option<Duration> {
    let i = log.iter().position(|s| after_or_at(s.seq, boundary))?;
    let before = log[..i].last()?;
    Some(log[i].at.duration_since(before.at))
}

/// Data segments whose bytes had all arrived before (retransmissions reaching the client).
pub fn duplicates(log: &[Seen]) -> u64 {
    let Some(first) = log.first() else { return 0 };
    // Highest sequence received so far, as an offset from the first segment (no wrap within
    // the 4 GiB a run can move).
    let base = first.seq;
    let mut high: u64 = 0;
    let mut dups = 0;
    for s in log {
        let start = s.seq.wrapping_sub(base) as u64;
        let end = start + s.len as u64;
        if end <= high {
            dups += 1;
        }
        high = high.max(end);
    }
    dups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_and_duplicates() {
        let t = Instant::now();
        let s = |ms: u64, seq: u32, len: u32| Seen {
            at: t + Duration::from_millis(ms),
            seq,
            len,
        };
        let log = [
            s(0, u32::MAX - 99, 100),
            s(1, 0, 100),
            s(2, 0, 100),
            s(7, 100, 100),
        ];
        assert_eq!(gap(&log, 100), Some(Duration::from_millis(5)));
        assert_eq!(gap(&log, 0), Some(Duration::from_millis(1)));
        assert_eq!(gap(&log, 500), None);
        assert_eq!(duplicates(&log), 1);
    }
}
