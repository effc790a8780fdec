//! AF_XDP sockets over the kernel ABI (`linux/if_xdp.h`, kernel doc
//! `Documentation/networking/af_xdp.rst`): a UMEM, its fill and completion rings, and the RX
//! and TX rings of one socket bound to one queue of one interface.
//!
//! Why our own thin layer rather than a crate: xsk-rs builds libxdp (needs m4) and loads
//! libxdp's own XDP program unless told not to, while we load our own steering program; the
//! ring protocol is four single-producer/single-consumer rings whose indices are shared with
//! the kernel, about 300 lines against `libc`, and every `unsafe` stays in this file.

use crate::Error;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use tracing::{debug, info};

/// Received frames handed over at once by [`XskSocket::recv_batch`]: as many as the stack
/// warms ahead ([`ds_stack::iface::WARM_AHEAD`]), and small arrays to fill per call.
pub const RX_CHUNK: usize = ds_stack::iface::WARM_AHEAD;

/// Sizes of a socket's UMEM and rings.
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// Bytes per UMEM frame (a power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Frames in the UMEM: half feed the fill ring, half are for transmission.
    pub frames: u32,
    /// Entries of each ring (a power of two).
    pub ring_size: u32,
    /// Try a zero-copy bind first (falls back to copy mode when the driver refuses).
    pub zero_copy: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 2048,
            frames: 8192,
            ring_size: 4096,
            zero_copy: true,
        }
    }
}

/// How the socket ended up bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindMode {
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
    /// The kernel copies frames into and out of the UMEM.
    Copy,
}

/// A mmapped region, unmapped on drop.
struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    fn anonymous(len: usize) -> io::Result<Mmap> {
        // SAFETY: anonymous private mapping; no file descriptor or address hint involved.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }

    fn ring(fd: BorrowedFd<'_>, len: usize, pgoff: u64) -> io::Result<Mmap> {
        // SAFETY: maps a ring of an AF_XDP socket at the page offset the kernel defines for
        // it (XDP_PGOFF_* / XDP_UMEM_PGOFF_*); `len` covers what XDP_MMAP_OFFSETS reported.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping we created and nobody uses after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One single-producer/single-consumer ring shared with the kernel.
struct Ring {
    _map: Mmap,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    size: u32,
    /// Our copy of the index we own (producer for fill/TX, consumer for RX/completion).
    local: u32,
    /// Last value read of the index the kernel owns.
    cached: u32,
}

impl Ring {
    fn new(map: Mmap, off: &libc::xdp_ring_offset, size: u32) -> Ring {
        // SAFETY (for the four pointers): the offsets come from XDP_MMAP_OFFSETS for this
        // mapping, which is at least `desc + size * entry` bytes long; the kernel aligns the
        // index words for atomic access.
        let base = map.ptr;
        let at = |o: u64| base.wrapping_add(o as usize);
        Ring {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            desc: at(off.desc),
            mask: size - 1,
            size,
            local: 0,
            cached: 0,
            _map: map,
        }
    }

    fn load(p: *const AtomicU32) -> u32 {
        // SAFETY: `p` points into our live ring mapping (see `Ring::new`).
        unsafe { (*p).load(Ordering::Acquire) }
    }

    fn store(p: *const AtomicU32, v: u32) {
        // SAFETY: as in `load`.
        unsafe { (*p).store(v, Ordering::Release) }
    }

    fn needs_wakeup(&self) -> bool {
        Ring::load(self.flags) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entries the kernel produced that we have not consumed (RX, completion).
    fn available(&mut self) -> u32 {
        if self.cached.wrapping_sub(self.local) == 0 {
            self.cached = Ring::load(self.producer);
        }
        self.cached.wrapping_sub(self.local)
    }

    /// Free slots for us to produce into (fill, TX).
    fn free(&mut self) -> u32 {
        let mut free = self.size - self.local.wrapping_sub(self.cached);
        if free == 0 {
            self.cached = Ring::load(self.consumer);
            free = self.size - self.local.wrapping_sub(self.cached);
        }
        free
    }

    fn u64_at(&self, idx: u32) -> *mut u64 {
        self.desc
            .wrapping_add((idx & self.mask) as usize * 8)
            .cast()
    }

    fn desc_at(&self, idx: u32) -> *mut libc::xdp_desc {
        self.desc
            .wrapping_add((idx & self.mask) as usize * std::mem::size_of::<libc::xdp_desc>())
            .cast()
    }
}

/// Counters of one socket.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct XskStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Frames dropped because every TX frame was in flight.
    pub tx_dropped: u64,
    /// Kernel: frames dropped (rx_dropped).
    pub kernel_rx_dropped: u64,
    /// Kernel: RX ring was full.
    pub kernel_rx_ring_full: u64,
    /// Kernel: fill ring was empty.
    pub kernel_fill_empty: u64,
}

/// An AF_XDP socket with its own UMEM, bound to one queue.
pub struct XskSocket {
    // Field order = drop order: rings and UMEM are unmapped before the socket closes.
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    umem: Mmap,
    fd: OwnedFd,
    frame_size: u32,
    free_tx: Vec<u64>,
    pending_tx: u32,
    mode: BindMode,
    stats: XskStats,
}

// SAFETY: the raw pointers only point into mappings owned by the socket; nothing is shared
// with other threads, so moving the whole socket to another thread is sound.
unsafe impl Send for XskSocket {}

fn setsockopt<T>(fd: BorrowedFd<'_>, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid `T` for the duration of the call and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt<T>(fd: BorrowedFd<'_>, opt: libc::c_int, v: &mut T) -> io::Result<()> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is writable for `len` bytes for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *mut T).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl XskSocket {
    /// Create a socket with its own UMEM and bind it to queue `queue` of interface `iface`
    /// (in the calling thread's network namespace): zero-copy when asked and supported,
    /// copy mode otherwise.
    pub fn open(iface: &str, queue: u32, cfg: &XskConfig) -> Result<XskSocket, Error> {
        let ifindex = crate::loader::ifindex(iface)?;
        Self::open_ifindex(ifindex, queue, cfg)
    }

    /// As [`XskSocket::open`], by interface index.
    pub fn open_ifindex(ifindex: u32, queue: u32, cfg: &XskConfig) -> Result<XskSocket, Error> {
        let os = |what| move |e| Error::Os(what, e);
        if !cfg.frame_size.is_power_of_two()
            || !cfg.ring_size.is_power_of_two()
            || cfg.frames < 2 * cfg.ring_size.min(cfg.frames / 2).max(1)
        {
            return Err(Error::Invalid(format!("bad AF_XDP sizes {cfg:?}")));
        }
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(Error::Os("socket(AF_XDP)", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = cfg.frames as usize * cfg.frame_size as usize;
        let umem = Mmap::anonymous(umem_len).map_err(os("mmap UMEM"))?;
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut reg: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
        reg.addr = umem.ptr as u64;
        reg.len = umem_len as u64;
        reg.chunk_size = cfg.frame_size;
        setsockopt(fd.as_fd(), libc::XDP_UMEM_REG, &reg).map_err(os("XDP_UMEM_REG"))?;
        let n = cfg.ring_size;
        setsockopt(fd.as_fd(), libc::XDP_UMEM_FILL_RING, &n).map_err(os("fill ring"))?;
        setsockopt(fd.as_fd(), libc::XDP_UMEM_COMPLETION_RING, &n)
            .map_err(os("completion ring"))?;
        setsockopt(fd.as_fd(), libc::XDP_RX_RING, &n).map_err(os("RX ring"))?;
        setsockopt(fd.as_fd(), libc::XDP_TX_RING, &n).map_err(os("TX ring"))?;
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        getsockopt(fd.as_fd(), libc::XDP_MMAP_OFFSETS, &mut off).map_err(os("XDP_MMAP_OFFSETS"))?;
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rx = Ring::new(
            Mmap::ring(
                fd.as_fd(),
                off.rx.desc as usize + n as usize * desc,
                libc::XDP_PGOFF_RX_RING as u64,
            )
            .map_err(os("mmap RX ring"))?,
            &off.rx,
            n,
        );
        let tx = Ring::new(
            Mmap::ring(
                fd.as_fd(),
                off.tx.desc as usize + n as usize * desc,
                libc::XDP_PGOFF_TX_RING as u64,
            )
            .map_err(os("mmap TX ring"))?,
            &off.tx,
            n,
        );
        let fill = Ring::new(
            Mmap::ring(
                fd.as_fd(),
                off.fr.desc as usize + n as usize * 8,
                libc::XDP_UMEM_PGOFF_FILL_RING,
            )
            .map_err(os("mmap fill ring"))?,
            &off.fr,
            n,
        );
        let comp = Ring::new(
            Mmap::ring(
                fd.as_fd(),
                off.cr.desc as usize + n as usize * 8,
                libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            )
            .map_err(os("mmap completion ring"))?,
            &off.cr,
            n,
        );
        let mut sock = XskSocket {
            rx,
            tx,
            fill,
            comp,
            umem,
            fd,
            frame_size: cfg.frame_size,
            free_tx: Vec::new(),
            pending_tx: 0,
            mode: BindMode::Copy,
            stats: XskStats::default(),
        };
        // First half of the frames feed the fill ring (up to its size), the rest transmit.
        let rx_frames = (cfg.frames / 2).min(n);
        for i in 0..rx_frames {
            let idx = sock.fill.local;
            // SAFETY: `idx` is within the fill ring, which we own until published.
            unsafe { *sock.fill.u64_at(idx) = u64::from(i) * u64::from(cfg.frame_size) };
            sock.fill.local = idx.wrapping_add(1);
        }
        Ring::store(sock.fill.producer, sock.fill.local);
        sock.free_tx = (rx_frames..cfg.frames)
            .map(|i| u64::from(i) * u64::from(cfg.frame_size))
            .collect();

        sock.mode = sock.bind(ifindex, queue, cfg.zero_copy)?;
        info!(ifindex, queue, mode = ?sock.mode, "AF_XDP socket bound");
        Ok(sock)
    }

    fn bind(&self, ifindex: u32, queue: u32, zero_copy: bool) -> Result<BindMode, Error> {
        let try_bind = |flags: u16| -> io::Result<()> {
            let sa = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: flags | libc::XDP_USE_NEED_WAKEUP,
                sxdp_ifindex: ifindex,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: 0,
            };
            // SAFETY: `sa` is a valid sockaddr_xdp and the length matches it.
            let rc = unsafe {
                libc::bind(
                    self.fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_xdp).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        if zero_copy {
            match try_bind(libc::XDP_ZEROCOPY) {
                Ok(()) => return Ok(BindMode::ZeroCopy),
                Err(e) => debug!("zero-copy bind refused ({e}); using copy mode"),
            }
        }
        try_bind(libc::XDP_COPY).map_err(|e| Error::Os("bind AF_XDP socket", e))?;
        Ok(BindMode::Copy)
    }

    /// The socket's descriptor (for the XSKMAP).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How the socket is bound.
    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// Copy the next received frame into `buf` (truncated to its length); the UMEM frame goes
    /// straight back to the fill ring.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut got = None;
        self.recv_batch(1, &mut |frames| {
            if let Some(frame) = frames.first() {
                let len = frame.len().min(buf.len());
                buf[..len].copy_from_slice(&frame[..len]);
                got = Some(len);
            }
        });
        got
    }

    /// Hand up to `max` received frames to `f` where they lie in the UMEM, without copying
    /// them, [`RX_CHUNK`] at a time (a receiver that looks at a batch before processing it,
    /// as `Interface::receive_batch` does, sees that many at once); the RX consumer and fill
    /// producer indices are published once for the batch, after `f` has seen every frame (the
    /// kernel writes a frame only once it is back in the fill ring). Returns how many frames
    /// `f` saw.
    pub fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(&[&[u8]])) -> usize {
        let mut left = (self.rx.available() as usize).min(max);
        if left == 0 {
            return 0;
        }
        let mut seen = 0;
        while left > 0 {
            let n = left.min(RX_CHUNK);
            left -= n;
            let mut frames: [&[u8]; RX_CHUNK] = [&[]; RX_CHUNK];
            let mut chunks = [0u64; RX_CHUNK];
            let mut k = 0;
            for (i, chunk) in chunks[..n].iter_mut().enumerate() {
                let idx = self.rx.local.wrapping_add(i as u32);
                // SAFETY: `idx` is an entry the kernel produced and we have not consumed.
                let d = unsafe { std::ptr::read(self.rx.desc_at(idx)) };
                let (off, len) = (d.addr as usize, d.len as usize);
                *chunk = d.addr & !(u64::from(self.frame_size) - 1);
                // Within the UMEM and within its own frame (never reaching into a neighbour
                // the kernel may be filling).
                let in_frame = (d.addr - *chunk)
                    .checked_add(u64::from(d.len))
                    .is_some_and(|end| end <= u64::from(self.frame_size));
                if in_frame && off.checked_add(len).is_some_and(|end| end <= self.umem.len) {
                    // SAFETY: the range lies within the UMEM, and the kernel does not write
                    // this frame until we publish it in the fill ring, below, after `f`
                    // returned (the borrows end with the call).
                    frames[k] = unsafe { std::slice::from_raw_parts(self.umem.ptr.add(off), len) };
                    k += 1;
                }
            }
            if k > 0 {
                f(&frames[..k]);
            }
            seen += k;
            self.rx.local = self.rx.local.wrapping_add(n as u32);
            // Recycle: the fill ring has room for every RX frame we own.
            for &chunk in &chunks[..n] {
                if self.fill.free() > 0 {
                    let s = self.fill.local;
                    // SAFETY: slot `s` is free (checked) and ours until published.
                    unsafe { *self.fill.u64_at(s) = chunk };
                    self.fill.local = s.wrapping_add(1);
                }
            }
        }
        Ring::store(self.rx.consumer, self.rx.local);
        Ring::store(self.fill.producer, self.fill.local);
        self.stats.rx_frames += seen as u64;
        seen
    }

    /// Take back frames whose transmission completed.
    fn reclaim(&mut self) {
        let n = self.comp.available();
        for _ in 0..n {
            let idx = self.comp.local;
            // SAFETY: an entry the kernel produced that we have not consumed.
            let addr = unsafe { *self.comp.u64_at(idx) };
            self.free_tx.push(addr);
            self.comp.local = idx.wrapping_add(1);
        }
        if n > 0 {
            Ring::store(self.comp.consumer, self.comp.local);
        }
    }

    /// Queue one frame on the TX ring (published by [`XskSocket::flush`]). Returns `false` when
    /// the frame had to be dropped (every TX frame in flight), like a full NIC queue.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        self.send_with(frame.len(), &mut |dst| dst.copy_from_slice(frame))
    }

    /// Queue one frame of `len` octets that `build` writes where it will be sent from, in a
    /// UMEM frame (zero-copy transmit: the caller builds its headers and copies its payload
    /// there once). The slice holds an earlier frame's octets: `build` writes all `len`.
    /// Returns `false` when the frame had to be dropped (every TX frame in flight; `build` is
    /// not called), like a full NIC queue.
    pub fn send_with(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) -> io::Result<bool> {
        if len > self.frame_size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame larger than a UMEM frame",
            ));
        }
        if self.free_tx.is_empty() || self.tx.free() == 0 {
            self.reclaim();
            if self.free_tx.is_empty() || self.tx.free() == 0 {
                self.flush()?;
                self.reclaim();
            }
            if self.free_tx.is_empty() || self.tx.free() == 0 {
                self.stats.tx_dropped += 1;
                return Ok(false);
            }
        }
        let Some(addr) = self.free_tx.pop() else {
            return Ok(false);
        };
        // SAFETY: `addr` is a frame we own (free list), within the UMEM, `frame_size` long
        // (`len` is at most that); the kernel reads it only once its descriptor is published.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.add(addr as usize), len) };
        build(dst);
        let idx = self.tx.local;
        // SAFETY: slot `idx` is free (checked) and ours until published.
        unsafe {
            std::ptr::write(
                self.tx.desc_at(idx),
                libc::xdp_desc {
                    addr,
                    len: len as u32,
                    options: 0,
                },
            )
        };
        self.tx.local = idx.wrapping_add(1);
        self.pending_tx += 1;
        self.stats.tx_frames += 1;
        Ok(true)
    }

    /// Publish queued TX descriptors and kick the kernel until it has taken them all (in copy
    /// mode each `sendto` moves at most a small batch, TX_BATCH_SIZE in net/xdp/xsk.c).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending_tx == 0 {
            self.reclaim();
            return Ok(());
        }
        Ring::store(self.tx.producer, self.tx.local);
        self.pending_tx = 0;
        let mut stalls = 0;
        loop {
            let consumed = Ring::load(self.tx.consumer);
            if consumed == self.tx.local {
                break;
            }
            if self.mode == BindMode::ZeroCopy && !self.tx.needs_wakeup() {
                break;
            }
            // SAFETY: sendto with no buffer on our own socket only kicks TX processing.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {}
                    Some(libc::ENETDOWN) | Some(libc::ENXIO) => break,
                    _ => return Err(e),
                }
            }
            self.reclaim();
            if Ring::load(self.tx.consumer) == consumed {
                stalls += 1;
                if stalls > 64 {
                    break;
                }
            } else {
                stalls = 0;
            }
        }
        self.reclaim();
        Ok(())
    }

    /// Counters, including the kernel's (XDP_STATISTICS).
    pub fn stats(&self) -> XskStats {
        let mut s = self.stats;
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut k: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        if getsockopt(self.fd.as_fd(), libc::XDP_STATISTICS, &mut k).is_ok() {
            s.kernel_rx_dropped = k.rx_dropped;
            s.kernel_rx_ring_full = k.rx_ring_full;
            s.kernel_fill_empty = k.rx_fill_ring_empty_descs;
        }
        s
    }
}
