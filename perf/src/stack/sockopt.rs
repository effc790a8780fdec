//! `TCP_CONGESTION` on kernel sockets. A network namespace other than the initial one may not
//! make a restricted algorithm (one missing from the host's
//! `net.ipv4.tcp_allowed_congestion_control`) its default, but a process with `CAP_NET_ADMIN`
//! may set any available one per socket, which is what the benchmark does.

use std::io;
use std::os::fd::AsRawFd;

/// Set the socket's congestion-control algorithm.
pub fn set_congestion(sock: &impl AsRawFd, name: &str) -> io::Result<()> {
    // SAFETY: setsockopt reads `name.len()` bytes from a live &str and nothing else; the fd is
    // valid for as long as `sock` is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast::<libc::c_void>(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("TCP_CONGESTION {name:?}: {e}"),
        ));
    }
    Ok(())
}

/// The socket's congestion-control algorithm.
pub fn congestion(sock: &impl AsRawFd) -> io::Result<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` (32) bytes into `buf`, which lives across the
    // call, and stores the written length in `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (len as usize).min(buf.len());
    let s = &buf[..n];
    let end = s.iter().position(|&b| b == 0).unwrap_or(n);
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}
