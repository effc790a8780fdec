//! `TCP_CONGESTION` on kernel sockets. A network namespace other than the initial one may not
//! make a restricted algorithm (one missing from the host's
//! `net.ipv4.tcp_allowed_congestion_control`) its default, but a process with `CAP_NET_ADMIN`
//! may set any available one per socket, which is what the benchmark does.

use std::io;
use std::os::fd::AsRawFd;

/// Call `sockopt` (a `setsockopt` or `getsockopt`) with the socket's fd, `IPPROTO_TCP` and
/// `TCP_CONGESTION`; a non-zero return is the OS error.
fn tcp_congestion(
    sock: &impl AsRawFd,
    sockopt: impl FnOnce(libc::c_int, libc::c_int, libc::c_int) -> libc::c_int,
) -> io::Result<()> {
    match sockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_CONGESTION) {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Set the socket's congestion-control algorithm.
pub fn set_congestion(sock: &impl AsRawFd, name: &str) -> io::Result<()> {
    let (value, len) = (name.as_ptr().cast::<libc::c_void>(), name.len());
    // SAFETY: setsockopt reads `len` bytes from a live &str and nothing else; the fd is valid
    // for as long as `sock` is borrowed.
    tcp_congestion(sock, |fd, level, opt| unsafe {
        libc::setsockopt(fd, level, opt, value, len as libc::socklen_t)
    })
    .map_err(|e| io::Error::new(e.kind(), format!("TCP_CONGESTION {name:?}: {e}")))
}

/// The socket's congestion-control algorithm.
pub fn congestion(sock: &impl AsRawFd) -> io::Result<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    let value = buf.as_mut_ptr().cast::<libc::c_void>();
    // SAFETY: getsockopt writes at most `len` (32) bytes into `buf`, which lives across the
    // call, and stores the written length in `len`.
    tcp_congestion(sock, |fd, level, opt| unsafe {
        libc::getsockopt(fd, level, opt, value, &mut len)
    })?;
    let n = (len as usize).min(buf.len());
    let s = &buf[..n];
    let end = s.iter().position(|&b| b == 0).unwrap_or(n);
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}
