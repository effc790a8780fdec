//! A Linux TAP device: the portable fallback that works inside any network namespace.

use super::{virtio_net_hdr, Device, Gso, VIRTIO_NET_HDR_LEN};
use crate::time::Duration;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Every frame read or written carries a `struct virtio_net_hdr` first (tun(4)).
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// A TAP interface created (or attached to) in the calling thread's network namespace.
pub struct TapDevice {
    file: File,
    name: String,
    mtu: usize,
    /// Frames carry a virtio-net header: TCP super-frames can be written.
    vnet: bool,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TapDevice {
    /// Create the TAP interface `name` (or attach to an existing one), set it up, non-blocking;
    /// TCP super-frames on ([`TapDevice::open_with`]).
    pub fn open(name: &str) -> io::Result<Self> {
        Self::open_with(name, true)
    }

    /// [`TapDevice::open`]; with `super_frames` the device takes TCP super-frames of up to
    /// 64 KiB, which the kernel segments (a virtio-net header in front of every frame,
    /// `IFF_VNET_HDR`; no offloads are offered the other way, so what we read is whole
    /// frames with complete checksums).
    ///
    /// ```no_run
    /// use ds_stack::device::{Device, TapDevice};
    /// // Needs CAP_NET_ADMIN: a TAP that takes 64 KiB super-frames.
    /// let tap = TapDevice::open_with("dstap0", true)?;
    /// assert_eq!(tap.gso_max(), 65535);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open_with(name: &str, super_frames: bool) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad interface name",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | if super_frames { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads a struct ifreq; `req` has its layout (name, then a short flags
        // field, padded to the full 40-byte size) and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel queues frames for us here; a bulk sender's burst of a full window must
        // not overflow it (the default 1000 frames drops a 4 MiB window's tail). Set before
        // the link comes up: the qdisc takes its limit from it when attached.
        set_txqueuelen(name, TAP_QUEUE_LEN)?;
        set_up(name)?;
        Ok(TapDevice {
            file,
            name: name.to_string(),
            mtu: 1500,
            vnet: super_frames,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Frames the kernel may queue towards us.
const TAP_QUEUE_LEN: libc::c_int = 8192;

#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// SIOCSIFTXQLEN on a throwaway socket.
fn set_txqueuelen(name: &str, len: libc::c_int) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfReqInt {
        name: [0; libc::IFNAMSIZ],
        value: len,
        _pad: [0; 20],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCSIFTXQLEN reads a struct ifreq whose union starts with an int; `req` has that
    // layout, is 40 bytes long and outlives the call; `sock` is a valid fd.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCSIFTXQLEN, &mut req as *mut IfReqInt) };
    let res = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `sock` is ours and closed once.
    unsafe { libc::close(sock) };
    res
}

/// Bring an interface up (SIOCGIFFLAGS / SIOCSIFFLAGS on a throwaway socket).
fn set_up(name: &str) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain socket(2) call; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(cname.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS take a struct ifreq whose union starts with a short;
    // `req` matches that layout and lives across both calls; `sock` is a valid fd.
    let res = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req as *mut IfReqFlags) < 0 {
            Err(io::Error::last_os_error())
        } else {
            req.flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req as *mut IfReqFlags) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: `sock` is ours and closed once.
    unsafe { libc::close(sock) };
    res
}

impl Device for TapDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let r = if self.vnet {
                // The header (all zero: no offloads were offered) is read and dropped.
                let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
                self.file
                    .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])
                    .map(|n| n.checked_sub(VIRTIO_NET_HDR_LEN))
            } else {
                self.file.read(buf).map(Some)
            };
            return match r {
                Ok(Some(n)) => Ok(Some(n)),
                // Shorter than its header: nothing to hand on.
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            };
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.send_gso(frame, None)
    }

    fn gso_max(&self) -> usize {
        if self.vnet {
            usize::from(u16::MAX)
        } else {
            0
        }
    }

    fn send_gso(&mut self, frame: &[u8], gso: Option<Gso>) -> io::Result<()> {
        let r = if self.vnet {
            let hdr = virtio_net_hdr(gso);
            self.file
                .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])
        } else if gso.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TCP super-frames are off on this TAP",
            ));
        } else {
            self.file.write(frame)
        };
        match r {
            Ok(_) => Ok(()),
            // A full queue is a dropped frame on a real wire; TCP recovers.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // ppoll: microsecond timeouts (a 300 µs timer waits 300 µs, not a millisecond).
        super::wait_readable(&[self.file.as_raw_fd()], timeout)
    }

    fn wait_fds(&self, set: &mut super::PollSet) {
        set.add(self.file.as_raw_fd());
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}
