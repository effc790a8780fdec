//! Kernel receive stamps (`SO_TIMESTAMPNS`, socket(7)) and the clock they are on: the time a
//! datagram or frame reached the socket, not when a thread woke up to read it.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Ask the kernel to stamp every message `fd` receives (`SO_TIMESTAMPNS`); false when it
/// refuses.
pub fn enable(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a live c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// `recvmsg(2)` of one message into `buf` with `flags`: its length (the whole length with
/// `MSG_TRUNC`) and the kernel's receive stamp, when it attached one ([`enable`]).
pub fn recv_stamped(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Option<Duration>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 elements: aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points at `iov` (over `buf`) and `cbuf`, live and writable for the
    // lengths given; recvmsg(2) writes only within them.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, rx_stamp(&msg)))
}

/// CLOCK_REALTIME now, the clock of `SO_TIMESTAMPNS`.
pub fn realtime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The `SCM_TIMESTAMPNS` of a message `recvmsg(2)` filled (its control buffer aligned for
/// `cmsghdr`), if the kernel attached one.
pub fn rx_stamp(msg: &libc::msghdr) -> Option<Duration> {
    // SAFETY: `msg` was filled by recvmsg(2); the CMSG_* macros stay within `msg_controllen`,
    // and a SCM_TIMESTAMPNS message carries a whole timespec.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(Duration::new(
                    ts.tv_sec.max(0) as u64,
                    ts.tv_nsec.clamp(0, 999_999_999) as u32,
                ));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}
