//! [`GsoSender`]: TCP super-frames out of an interface through an `AF_PACKET` socket with
//! virtio-net headers.
//!
//! AF_XDP has no segmentation offload: every frame it sends is one wire frame, so a bulk
//! sender over AF_XDP makes the kernel build, forward and (on the receiving host) take up to
//! 44 skbs for every 64 KiB the kernel's own TCP sends as one GSO skb. A packet socket with
//! `PACKET_VNET_HDR` takes a frame of up to 64 KiB with a `struct virtio_net_hdr` that asks
//! for TCP segmentation and a partial checksum (packet(7), `include/uapi/linux/virtio_net.h`);
//! the kernel segments it in software, or not at all when the next device (a veth, a NIC with
//! TSO) takes it whole. Receiving stays on AF_XDP: the socket is bound with protocol 0, so it
//! receives nothing.

use ds_stack::device::{virtio_net_hdr, Gso};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A send-only packet socket on one interface (see the module documentation).
#[derive(Debug)]
pub struct GsoSender {
    fd: OwnedFd,
}

fn set_int(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a live c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl GsoSender {
    /// A sender on the interface `ifindex` of the calling thread's network namespace.
    pub fn open(ifindex: u32) -> io::Result<GsoSender> {
        // SAFETY: plain socket(2) call; the result is checked before use. Protocol 0: the
        // socket receives no frames.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_int(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
        // Not PACKET_QDISC_BYPASS: its direct transmit drops a frame the device cannot take
        // whole (`__dev_direct_xmit`: the skb changed in validation), where the normal path
        // segments it in software.
        let _ = set_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a live sockaddr_ll and the length says so.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(GsoSender { fd })
    }

    /// Send one frame, segmented by the kernel as `gso` asks (`None`: a plain frame).
    /// `Ok(false)`: the socket's buffer is full and the frame was dropped (as on a wire).
    pub fn send(&self, frame: &[u8], gso: Option<Gso>) -> io::Result<bool> {
        let hdr = virtio_net_hdr(gso);
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: all-zero is a valid msghdr; the iovecs are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: `msg` points at two iovecs over `hdr` and `frame`, live for the call;
        // sendmsg(2) only reads them.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    }
}
