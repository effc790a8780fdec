//! [`PacketPort`]: one Ethernet interface seen through an `AF_PACKET` socket.
//!
//! The socket is bound to the interface in promiscuous mode and ignores the frames it sends
//! itself (`PACKET_IGNORE_OUTGOING`), so a forwarder sees exactly what arrives from the wire.
//! With `PACKET_VNET_HDR` every frame carries a 10-byte virtio-net header: a TSO/GSO
//! super-frame from a veth peer arrives whole with its segmentation request, and is segmented
//! by the kernel only when it leaves the other port — so offloads may stay at their defaults
//! on both sides (packet(7), `include/uapi/linux/virtio_net.h`).

use crate::Error;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Size of `struct virtio_net_hdr` in front of every frame.
pub const VNET_HDR_LEN: usize = 10;
/// The largest frame a port hands over (a 64 KiB GSO super-frame, its Ethernet header and
/// the virtio-net header); longer ones are counted and dropped.
pub const MAX_FRAME: usize = 65536 + 14 + VNET_HDR_LEN;

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h; not in every libc release).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// `[NETNS:]IFNAME`: an interface, optionally in a named network namespace (`ip netns`) or
/// one given by path (`/proc/PID/ns/net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The namespace file (`None`: the caller's namespace).
    pub netns: Option<PathBuf>,
    /// The interface name.
    pub ifname: String,
}

impl std::str::FromStr for PortSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<PortSpec, Error> {
        let (ns, ifname) = match s.rsplit_once(':') {
            Some((ns, i)) => (Some(ns), i),
            None => (None, s),
        };
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains(['/', ' ']) {
            return Err(Error::Invalid(format!(
                "{s:?}: bad interface name {ifname:?}"
            )));
        }
        let netns = match ns {
            None => None,
            Some("") => return Err(Error::Invalid(format!("{s:?}: empty namespace"))),
            Some(n) if n.contains('/') => Some(PathBuf::from(n)),
            Some(n) => Some(Path::new("/run/netns").join(n)),
        };
        Ok(PortSpec {
            netns,
            ifname: ifname.to_string(),
        })
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{}:{}", ns.display(), self.ifname),
            None => f.write_str(&self.ifname),
        }
    }
}

/// Runs `f` with the calling thread in the namespace `ns`, then returns it to its own.
fn in_netns<T>(ns: &Path, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|e| Error::Os {
            what: format!("opening {}", p.display()),
            source: e,
        })
    };
    let own = open(Path::new("/proc/thread-self/ns/net"))?;
    let target = open(ns)?;
    let setns = |fd: RawFd, what: &str| {
        // SAFETY: `fd` is an open namespace descriptor owned by a live `File`; setns(2)
        // only reads it and changes the calling thread's network namespace.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(Error::os(what.to_string()));
        }
        Ok(())
    };
    setns(target.as_raw_fd(), &format!("entering {}", ns.display()))?;
    let r = f();
    // Always come back, also when `f` failed.
    setns(own.as_raw_fd(), "returning to the original namespace")?;
    r
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: `fd` is an open socket; the option value is a live c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// One interface through an `AF_PACKET` socket (see the module documentation).
#[derive(Debug)]
pub struct PacketPort {
    fd: OwnedFd,
    spec: PortSpec,
}

/// A received frame's length and, when the kernel stamped it, its arrival time
/// (CLOCK_REALTIME since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The frame's length (more than the buffer: truncated).
    pub len: usize,
    /// When the frame reached the socket.
    pub stamp: Option<std::time::Duration>,
}

impl PacketPort {
    /// Opens the interface `spec` names: non-blocking, promiscuous, with virtio-net headers.
    pub fn open(spec: &PortSpec) -> Result<PacketPort, Error> {
        let open = || PacketPort::open_here(spec);
        match &spec.netns {
            Some(ns) => in_netns(ns, open),
            None => open(),
        }
    }

    fn open_here(spec: &PortSpec) -> Result<PacketPort, Error> {
        let name = std::ffi::CString::new(spec.ifname.as_str())
            .map_err(|_| Error::Invalid(format!("bad interface name {:?}", spec.ifname)))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::os(format!("interface {spec}")));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if raw < 0 {
            return Err(Error::os("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        if !setsockopt_int(s, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1) {
            return Err(Error::os("PACKET_VNET_HDR"));
        }
        if !setsockopt_int(s, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1) {
            return Err(Error::os("PACKET_IGNORE_OUTGOING"));
        }
        // Best effort: bigger buffers absorb bursts; bypassing the qdisc saves a lock per frame.
        let _ = setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)
            || setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
        let _ = setsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)
            || setsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20);
        let _ = setsockopt_int(s, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
        // The kernel's receive time of each frame: the delay counts from when the frame
        // arrived, not from when this thread woke up to read it (10–40 µs later on a VM).
        // Best effort: without it a frame carries no stamp.
        let _ = crate::stamp::enable(s);
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a live sockaddr_ll and the length says so.
        let rc = unsafe {
            libc::bind(
                s,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::os(format!("binding to {spec}")));
        }
        // SAFETY: all-zero is a valid packet_mreq; ifindex and type are set below.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = ifindex as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: `mr` is a live packet_mreq and the length says so.
        let rc = unsafe {
            libc::setsockopt(
                s,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mr as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::os(format!("promiscuous mode on {spec}")));
        }
        Ok(PacketPort {
            fd,
            spec: spec.clone(),
        })
    }

    /// Which interface this is.
    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// The socket, for poll(2).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next received frame (virtio-net header first) into `buf`: `Ok(None)` when none is
    /// waiting; a length above `buf.len()` means the frame was longer than `buf` (it is
    /// truncated and should be dropped).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        match crate::stamp::recv_stamped(
            self.fd.as_raw_fd(),
            buf,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        ) {
            Ok((len, stamp)) => Ok(Some(Received { len, stamp })),
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            },
        }
    }

    /// Transmits one frame (virtio-net header first).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a live buffer of the given length; send(2) only reads it.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        let p: PortSpec = "veth0".parse().unwrap();
        assert_eq!(p.netns, None);
        let p: PortSpec = "ds-a:veth0".parse().unwrap();
        assert_eq!(p.netns.as_deref(), Some(Path::new("/run/netns/ds-a")));
        let p: PortSpec = "/proc/1/ns/net:eth0".parse().unwrap();
        assert_eq!(p.netns.as_deref(), Some(Path::new("/proc/1/ns/net")));
        assert_eq!(p.ifname, "eth0");
        for bad in ["", ":eth0", "ns:", "a-very-long-interface-name", "ns:a b"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
    }
}
