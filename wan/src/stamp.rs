//! Kernel receive stamps (`SO_TIMESTAMPNS`, socket(7)) and the clock they are on: the time a
//! datagram or frame reached the socket, not when a thread woke up to read it.

use std::time::Duration;

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
