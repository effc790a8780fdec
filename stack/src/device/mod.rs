//! Devices: where frames come from and go to. The sans-IO [`crate::Interface`] never touches
//! them; the [`crate::runner::Runner`] moves frames between a device and an interface.

use crate::time::Duration;
use std::io;
use std::os::fd::RawFd;

mod mem;
mod tap;

pub use mem::{mem_hub, mem_pair, MemDevice};
pub use tap::TapDevice;

/// A TCP super-frame's segmentation request (transmit segmentation offload): the device, or
/// the kernel behind it, cuts the frame's TCP payload into `mss`-sized segments, each with a
/// copy of the first `header_len` octets (Ethernet, IPv6 with any extension headers, TCP), and
/// completes each segment's checksum. The frame's TCP checksum field holds the pseudo-header
/// sum only (RFC 8200 §8.1 pseudo-header, not complemented), as `CHECKSUM_PARTIAL` wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// TCP payload octets per segment (the last may be shorter).
    pub mss: u16,
    /// Where the TCP header starts in the frame (the checksum covers from here).
    pub csum_start: u16,
    /// Octets of headers copied in front of every segment (through the TCP header).
    pub header_len: u16,
}

/// Offset of the checksum field in the TCP header (RFC 9293 §3.1).
pub const TCP_CHECKSUM_OFFSET: u16 = 16;

/// Length of `struct virtio_net_hdr` (the legacy layout without `num_buffers`), which a TAP
/// with `IFF_VNET_HDR` and a packet socket with `PACKET_VNET_HDR` put in front of a frame.
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (`include/uapi/linux/virtio_net.h`).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// The `struct virtio_net_hdr` that asks the kernel to segment a TCP super-frame as `gso`
/// says and complete its checksums, or (`None`) to send the frame as it is. Host byte order,
/// as the kernel reads it from a TAP or a packet socket (virtio 0.9 "legacy" layout).
///
/// ```
/// use ds_stack::device::{virtio_net_hdr, Gso};
/// // A plain frame: an all-zero header.
/// assert_eq!(virtio_net_hdr(None), [0; 10]);
/// // 1,428-octet segments; Ethernet + IPv6 before the TCP header at 54, 86 octets of headers.
/// let h = virtio_net_hdr(Some(Gso { mss: 1428, csum_start: 54, header_len: 86 }));
/// assert_eq!((h[0], h[1]), (1, 4)); // NEEDS_CSUM, GSO_TCPV6
/// assert_eq!(u16::from_ne_bytes([h[4], h[5]]), 1428);
/// ```
pub fn virtio_net_hdr(gso: Option<Gso>) -> [u8; VIRTIO_NET_HDR_LEN] {
    let mut h = [0u8; VIRTIO_NET_HDR_LEN];
    if let Some(g) = gso {
        h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        h[1] = VIRTIO_NET_HDR_GSO_TCPV6;
        h[2..4].copy_from_slice(&g.header_len.to_ne_bytes());
        h[4..6].copy_from_slice(&g.mss.to_ne_bytes());
        h[6..8].copy_from_slice(&g.csum_start.to_ne_bytes());
        h[8..10].copy_from_slice(&TCP_CHECKSUM_OFFSET.to_ne_bytes());
    }
    h
}

/// What a device dropped on its own, before the interface saw a frame or after it gave one
/// (all zero for a device that cannot tell). An operator's first look when a node under load
/// loses packets: a full receive ring means the node did not keep up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStats {
    /// Frames the kernel dropped on receive for want of room (AF_XDP: its RX ring was full,
    /// `XDP_STATISTICS` `rx_ring_full`).
    pub rx_ring_full: u64,
    /// Frames the kernel dropped on receive for other reasons (AF_XDP `rx_dropped`).
    pub rx_dropped: u64,
    /// Times the kernel found no buffer to receive into (AF_XDP: fill ring empty).
    pub rx_fill_empty: u64,
    /// Frames dropped on transmit because every transmit buffer was in flight.
    pub tx_dropped: u64,
    /// TCP super-frames dropped on transmit because the segmenting socket's buffer was full.
    pub tx_gso_dropped: u64,
}

/// Where [`crate::Interface::transmit_to`] puts the frames it sends: a frame it built in
/// its own buffer, or (when the sink can) one it builds straight into the sink's memory — an
/// AF_XDP device's UMEM — so that a segment's payload is copied once, from the send buffer
/// to the wire's buffer.
pub trait TxSink {
    /// A frame built elsewhere, a TCP super-frame when `gso` says how to cut it.
    fn frame(&mut self, frame: &[u8], gso: Option<Gso>);
    /// Build one frame of exactly `len` octets in place: `build` writes it into the slice it
    /// is given (`len` long). Returns `false` when this sink cannot (then the interface builds
    /// the frame itself and hands it to [`TxSink::frame`]); `true` when the frame was built
    /// and queued, or dropped for want of a buffer and counted by the device (a full transmit
    /// ring is a frame lost on the wire: TCP resends it).
    fn build(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) -> bool {
        let _ = (len, build);
        false
    }
    /// Whether [`TxSink::build`] is worth trying: the interface looks up what a frame built
    /// in place needs (the neighbour's address, the correspondent's bindings) only then.
    fn builds_in_place(&self) -> bool {
        false
    }
}

/// A closure taking frames is a sink that builds nothing in place.
impl<F: FnMut(&[u8], Option<Gso>)> TxSink for F {
    fn frame(&mut self, frame: &[u8], gso: Option<Gso>) {
        self(frame, gso)
    }
}

/// A link-layer (Ethernet) device.
///
/// Implementations are non-blocking: `recv` returns `Ok(None)` when no frame is pending, and
/// [`Device::wait`] is the only call that may block.
pub trait Device {
    /// Copy the next received frame into `buf`; `Ok(None)` if none is pending.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Hand up to `max` received frames to `f` where the device holds them, without copying
    /// them out first, several at a call (as the device received them: a receiver looks at a
    /// batch before processing it, [`crate::Interface::receive_batch`]): `Ok(Some(n))` when it
    /// did (`n` frames in all, 0 when none was pending), `Ok(None)` (the default) when this
    /// device cannot, and [`Device::recv`] is the way.
    fn recv_in_place(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&[&[u8]]),
    ) -> io::Result<Option<usize>> {
        let _ = (max, f);
        Ok(None)
    }
    /// Queue one frame for transmission.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Queue one frame of `len` octets that `build` writes straight into the device's transmit
    /// buffer (no copy): `Ok(Some(true))` when queued, `Ok(Some(false))` when dropped for want
    /// of a buffer (counted in [`DeviceStats::tx_dropped`]), `Ok(None)` (the default) when this
    /// device cannot and [`Device::send`] is the way. Frames leave in the order queued,
    /// whichever call queued them.
    fn send_in_place(
        &mut self,
        len: usize,
        build: &mut dyn FnMut(&mut [u8]),
    ) -> io::Result<Option<bool>> {
        let _ = (len, build);
        Ok(None)
    }
    /// The most TCP payload octets one super-frame may carry ([`Device::send_gso`]); 0 (the
    /// default): the device cannot segment, every frame fits the MTU.
    fn gso_max(&self) -> usize {
        0
    }
    /// Queue one frame, a TCP super-frame when `gso` says how to cut it (only when
    /// [`Device::gso_max`] is not 0). Frames must leave in the order they were queued,
    /// whichever of `send` and `send_gso` queued them.
    fn send_gso(&mut self, frame: &[u8], gso: Option<Gso>) -> io::Result<()> {
        match gso {
            None => self.send(frame),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this device does not segment TCP super-frames",
            )),
        }
    }
    /// Block until a frame may be pending or `timeout` elapses (`None`: no limit).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// The IP MTU of the link (1500 for standard Ethernet).
    fn mtu(&self) -> usize;
    /// Flush any frames batched by `send` (no-op for unbatched devices).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Add the descriptors that turn readable when a frame may be pending to `set`, so that a
    /// caller can wait for frames and its own sockets at once
    /// ([`crate::runner::Runner::step_with`]). Adds nothing when the device cannot be waited
    /// on that way (then only [`Device::wait`] is used).
    fn wait_fds(&self, set: &mut PollSet) {
        let _ = set;
    }
    /// What the device dropped on its own ([`DeviceStats`]); all zero by default.
    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }
}

/// A boxed device is a device, so that a program can pick its device at run time
/// (`Runner<Box<dyn Device>>`).
impl<D: Device + ?Sized> Device for Box<D> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        (**self).recv(buf)
    }
    fn recv_in_place(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&[&[u8]]),
    ) -> io::Result<Option<usize>> {
        (**self).recv_in_place(max, f)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).send(frame)
    }
    fn send_in_place(
        &mut self,
        len: usize,
        build: &mut dyn FnMut(&mut [u8]),
    ) -> io::Result<Option<bool>> {
        (**self).send_in_place(len, build)
    }
    fn gso_max(&self) -> usize {
        (**self).gso_max()
    }
    fn send_gso(&mut self, frame: &[u8], gso: Option<Gso>) -> io::Result<()> {
        (**self).send_gso(frame, gso)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).wait(timeout)
    }
    fn mtu(&self) -> usize {
        (**self).mtu()
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn wait_fds(&self, set: &mut PollSet) {
        (**self).wait_fds(set)
    }
    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
}

/// A reusable set of descriptors to wait on for readability: the runner's loop waits on it
/// every step, so it keeps its storage instead of allocating per wait.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl std::fmt::Debug for PollSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.fds.iter().map(|p| p.fd))
            .finish()
    }
}

impl PollSet {
    /// Forget the descriptors (keeping the storage).
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Watch `fd` for readability.
    pub fn add(&mut self, fd: RawFd) {
        // revents starts clear, so `ready` only names what this wait saw.
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// The watched descriptors (to register them with another waiter, e.g. an epoll set).
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.iter().map(|p| p.fd)
    }

    /// After [`PollSet::wait`]: the positions (in the order added) of the descriptors that
    /// turned readable, or reported an error or hang-up.
    pub fn ready(&self) -> impl Iterator<Item = usize> + '_ {
        self.fds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, _)| i)
    }

    /// After [`PollSet::wait`]: the descriptors that turned readable, or reported an error or
    /// hang-up.
    pub fn ready_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.iter().filter(|p| p.revents != 0).map(|p| p.fd)
    }

    /// Whether no descriptor is watched.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Block until one descriptor is readable or `timeout` passes (`None`: no limit), with
    /// microsecond resolution (`ppoll`; `poll` would round a 100 µs wait up to 1 ms).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds and
        // `tsp` is null or points to a timespec that outlives the call; no signal mask.
        let rc = unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                tsp,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Block until one of `fds` is readable or `timeout` passes (one-off [`PollSet`]).
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<()> {
    let mut set = PollSet::default();
    for &fd in fds {
        set.add(fd);
    }
    set.wait(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_net_hdr_layout() {
        assert_eq!(virtio_net_hdr(None), [0; VIRTIO_NET_HDR_LEN]);
        let h = virtio_net_hdr(Some(Gso {
            mss: 1428,
            csum_start: 54,
            header_len: 86,
        }));
        assert_eq!(h[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(h[1], VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(u16::from_ne_bytes([h[2], h[3]]), 86);
        assert_eq!(u16::from_ne_bytes([h[4], h[5]]), 1428);
        assert_eq!(u16::from_ne_bytes([h[6], h[7]]), 54);
        assert_eq!(u16::from_ne_bytes([h[8], h[9]]), 16);
    }
}
