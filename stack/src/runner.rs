//! The I/O half: moves frames between a [`Device`] and the sans-IO [`Interface`], reading the
//! monotonic clock on the way. Everything protocol-shaped stays in the interface.

use crate::device::{Device, Gso, TxSink};
use crate::iface::Interface;
use crate::time::{Duration, Instant};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A monotonic clock turned into [`Instant`]s (microseconds since the clock was made).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    /// The current instant.
    pub fn now(&self) -> Instant {
        let us = self.origin.elapsed().as_micros();
        Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }
}

/// An interface bound to a device, driven by [`Runner::step`].
pub struct Runner<D: Device> {
    /// The protocol state; applications call its socket API between steps.
    pub iface: Interface,
    /// The device frames come from and go to.
    pub dev: D,
    clock: Clock,
    buf: Vec<u8>,
    /// What `step_with` waits on, kept between steps.
    poll: crate::device::PollSet,
    /// The other runners of the node's receive queues ([`siblings`]).
    siblings: Option<SiblingLink>,
    /// Scratch for the packets passed to the next sibling.
    passing: Vec<(Vec<u8>, u8)>,
    /// Whether the device may build frames in place ([`Device::send_in_place`]): cleared the
    /// first time it says it cannot.
    in_place: bool,
    /// Whether the last [`Runner::step_with`] waited on its descriptors (`poll` then tells
    /// which turned readable).
    waited: bool,
}

/// Frames read from the device per step before timers and output get their turn.
const RX_BATCH: usize = 256;

impl<D: Device> Runner<D> {
    /// Bind `iface` to `dev`, with a fresh clock.
    pub fn new(dev: D, iface: Interface) -> Self {
        Self::with_clock(dev, iface, Clock::new())
    }

    /// Bind `iface` to `dev`, reading time from `clock` (share one clock per process).
    pub fn with_clock(dev: D, mut iface: Interface, clock: Clock) -> Self {
        let buf = vec![0u8; dev.mtu() + 64];
        // TCP super-frames when the device segments them.
        iface.set_gso_max(dev.gso_max());
        Runner {
            iface,
            dev,
            clock,
            buf,
            poll: crate::device::PollSet::default(),
            siblings: None,
            passing: Vec::new(),
            in_place: true,
            waited: false,
        }
    }

    /// Whether frames are built straight into the device's buffers ([`Device::send_in_place`]),
    /// as far as the runner has seen: true until the device first says it cannot.
    pub fn builds_in_place(&self) -> bool {
        self.in_place
    }

    /// Add every descriptor whose readiness means work for [`Runner::process`] (the
    /// device's, and the siblings' wake-up) to `set`.
    pub fn wait_fds(&self, set: &mut crate::device::PollSet) {
        self.dev.wait_fds(set);
        if let Some(l) = &self.siblings {
            set.add(l.wake_me.fd());
        }
    }

    /// Make this runner one of a node's per-queue runners: `link` is its place among them
    /// (from [`siblings`]); the interface passes what belongs to a sibling round.
    pub fn set_siblings(&mut self, link: SiblingLink) {
        self.iface.set_siblings(link.others);
        self.siblings = Some(link);
    }

    /// The current instant on this runner's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// This runner's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Flush pending output, wait up to `max_wait` (less if a timer is due sooner) for input,
    /// then process what arrived, run due timers and flush again.
    pub fn step(&mut self, max_wait: Duration) -> io::Result<()> {
        self.step_with(max_wait, &[])
    }

    /// Like [`Runner::step`], but the wait also ends when one of `extra` (the caller's own
    /// sockets, e.g. control channels) turns readable. Devices that expose
    /// [`Device::wait_fds`] are waited on with microsecond resolution (`ppoll`); the others
    /// with [`Device::wait`] (and `extra` is not watched).
    pub fn step_with(
        &mut self,
        max_wait: Duration,
        extra: &[std::os::fd::RawFd],
    ) -> io::Result<()> {
        self.flush()?;
        let now = self.clock.now();
        let wait = match self.iface.poll_at() {
            Some(t) if t <= now => Duration::ZERO,
            Some(t) => (t - now).min(max_wait),
            None => max_wait,
        };
        let passed_in = self.siblings.as_ref().is_some_and(SiblingLink::pending);
        self.waited = false;
        if !wait.is_zero() && !passed_in {
            let mut poll = std::mem::take(&mut self.poll);
            poll.clear();
            self.wait_fds(&mut poll);
            self.poll = poll;
            if self.poll.is_empty() {
                self.dev.wait(Some(wait))?;
            } else {
                for &fd in extra {
                    self.poll.add(fd);
                }
                self.poll.wait(Some(wait))?;
                self.waited = true;
            }
        }
        self.process()
    }

    /// Which of the descriptors the last [`Runner::step_with`] watched turned readable (or
    /// reported an error or hang-up), when it waited on them; `None` when it did not wait
    /// (a timer was due, the wait was zero, or the device has no descriptors), so that any
    /// of them may have input.
    pub fn readiness(&self) -> Option<impl Iterator<Item = std::os::fd::RawFd> + '_> {
        self.waited.then(|| self.poll.ready_fds())
    }

    /// Process pending input and timers and flush output without waiting.
    pub fn process(&mut self) -> io::Result<()> {
        // One clock read stamps the input batches: every frame in them had arrived by then (a
        // read per frame cost ~25 ns each and stamped the later frames with the time spent on
        // the earlier ones).
        let now = self.clock.now();
        if let Some(l) = &self.siblings {
            l.wake_me.answer();
            for _ in 0..RX_BATCH {
                let Ok((pkt, hops)) = l.inbox.try_recv() else {
                    break;
                };
                self.iface.receive_from_sibling(now, &pkt, hops);
                // Its storage goes back to the sibling that built it, for its next one (a
                // full return path drops it: that sibling allocates instead).
                let _ = l.back.try_send(pkt);
            }
            if l.pending() {
                // More than a batch: stay readable, for callers that wait on the descriptor.
                l.wake_me.ring();
            }
        }
        // Parsed where the device holds them when it can (AF_XDP: in the UMEM), else copied
        // out one at a time.
        let (dev, iface) = (&mut self.dev, &mut self.iface);
        let in_place = dev.recv_in_place(RX_BATCH, &mut |frames| {
            iface.receive_batch(now, frames);
        })?;
        if in_place.is_none() {
            for _ in 0..RX_BATCH {
                match self.dev.recv(&mut self.buf)? {
                    Some(n) => self.iface.receive(now, &self.buf[..n]),
                    None => break,
                }
            }
        }
        let now = self.clock.now();
        self.iface.poll(now);
        self.pass_to_sibling();
        self.flush()
    }

    /// Hand the next sibling what the interface set aside for it.
    fn pass_to_sibling(&mut self) {
        let Some(l) = &self.siblings else {
            return;
        };
        // What the next sibling gave back, every round (not only when passing: the channel
        // would hold a burst's storage until the next pass).
        for buf in l.returned.try_iter().take(SIBLING_INBOX) {
            self.iface.recycle_sibling_buffer(buf);
        }
        if !self.iface.has_for_sibling() {
            return;
        }
        self.iface.take_for_sibling(&mut self.passing);
        for p in self.passing.drain(..) {
            // A full inbox drops the packet, as a full queue on a wire would: TCP resends.
            if let Err(crossbeam::channel::TrySendError::Full((buf, _))) = l.next.try_send(p) {
                self.iface.recycle_sibling_buffer(buf);
            }
        }
        l.wake_next.ring();
    }

    /// Send every frame the interface has ready.
    ///
    /// A frame the device refuses as a frame (too large, a segmentation request it cannot
    /// honour: [`refused_frame`]) is dropped and counted, as a frame lost on the wire: TCP
    /// resends it, and after a refused super-frame the interface sends segments only. Any
    /// other error is the device's: the frames after it are lost and the error returned.
    pub fn flush(&mut self) -> io::Result<()> {
        let now = self.clock.now();
        let mut sink = DeviceSink {
            dev: &mut self.dev,
            err: None,
            refused: 0,
            refused_gso: false,
            in_place: self.in_place,
        };
        self.iface.transmit_to(now, &mut sink);
        let DeviceSink {
            err,
            refused,
            refused_gso,
            in_place,
            ..
        } = sink;
        self.in_place = in_place;
        if refused > 0 {
            self.iface.note_tx_rejects(refused);
            if refused_gso {
                self.iface.set_gso_max(0);
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        self.dev.flush()
    }

    /// Step until `done` returns true or `timeout` passes; returns whether `done` held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Interface) -> bool,
    ) -> io::Result<bool> {
        let deadline = self.clock.now() + timeout;
        loop {
            if done(&mut self.iface) {
                return Ok(true);
            }
            let now = self.clock.now();
            if now >= deadline {
                return Ok(false);
            }
            self.step((deadline - now).min(Duration::from_millis(10)))?;
        }
    }
}

/// The device as the interface's [`TxSink`] for one flush: frames it cannot take as frames
/// are counted, the first other error ends the flush's sending (the frames after it are lost).
struct DeviceSink<'a, D: Device> {
    dev: &'a mut D,
    err: Option<io::Error>,
    refused: u64,
    refused_gso: bool,
    /// Cleared when the device cannot build in place: the interface then stops asking.
    in_place: bool,
}

impl<D: Device> TxSink for DeviceSink<'_, D> {
    fn frame(&mut self, frame: &[u8], gso: Option<Gso>) {
        if self.err.is_some() {
            return;
        }
        match self.dev.send_gso(frame, gso) {
            Ok(()) => {}
            Err(e) if refused_frame(&e) => {
                self.refused += 1;
                self.refused_gso |= gso.is_some();
            }
            Err(e) => self.err = Some(e),
        }
    }

    fn build(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) -> bool {
        if !self.in_place {
            return false;
        }
        if self.err.is_some() {
            // Lost, as every frame after a device error.
            return true;
        }
        match self.dev.send_in_place(len, build) {
            Ok(Some(_)) => true,
            Ok(None) => {
                self.in_place = false;
                false
            }
            Err(e) if refused_frame(&e) => {
                self.refused += 1;
                true
            }
            Err(e) => {
                self.err = Some(e);
                true
            }
        }
    }

    fn builds_in_place(&self) -> bool {
        self.in_place
    }
}

/// Whether a device's send error refuses one frame (the device and the others are fine):
/// a frame larger than it carries, a segmentation request it cannot honour.
///
/// ```
/// use ds_stack::runner::refused_frame;
/// use std::io;
/// assert!(refused_frame(&io::Error::from_raw_os_error(libc::EMSGSIZE)));
/// assert!(refused_frame(&io::Error::new(io::ErrorKind::Unsupported, "no GSO")));
/// // A device that is gone is not one refused frame.
/// assert!(!refused_frame(&io::Error::from_raw_os_error(libc::ENXIO)));
/// ```
pub fn refused_frame(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(libc::EMSGSIZE)
}

/// Packets waiting in a sibling's inbox at most; more are dropped (TCP resends).
const SIBLING_INBOX: usize = 8192;

/// A wake-up one thread rings for another: an eventfd that turns readable, written once per
/// ring and read once per answer (a flag saves both system calls while the bell is already
/// ringing, or was not rung: the loop that answers it runs once per round).
#[derive(Debug, Clone)]
pub struct Doorbell {
    fd: Arc<OwnedFd>,
    rung: Arc<AtomicBool>,
}

impl Doorbell {
    /// A new bell, not ringing.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd(2) with valid flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: `fd` is a new descriptor owned by nobody else.
            fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
            rung: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Ring it (after publishing what the other side should look at).
    pub fn ring(&self) {
        if self.rung.swap(true, Ordering::AcqRel) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this bell holds.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Stop it ringing (before looking at what was published): whether it was rung.
    pub fn answer(&self) -> bool {
        if !self.rung.swap(false, Ordering::AcqRel) {
            return false;
        }
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from a non-blocking eventfd.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        true
    }

    /// The descriptor that is readable while the bell rings.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// One runner's place among the runners of a node's receive queues: the inbox of packets
/// its siblings passed to it, the next sibling's inbox, and the bells that wake each. Made by
/// [`siblings`]; see `Interface::set_siblings` for what goes round.
#[derive(Debug)]
pub struct SiblingLink {
    others: u8,
    inbox: crossbeam::channel::Receiver<(Vec<u8>, u8)>,
    next: crossbeam::channel::Sender<(Vec<u8>, u8)>,
    /// The storage of processed packets, back to the sibling that passed them.
    back: crossbeam::channel::Sender<Vec<u8>>,
    /// The storage of packets this runner passed, given back by the next sibling.
    returned: crossbeam::channel::Receiver<Vec<u8>>,
    wake_me: Doorbell,
    wake_next: Doorbell,
}

impl SiblingLink {
    /// Whether a sibling passed packets not yet processed.
    pub fn pending(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// The descriptor that turns readable when a sibling passed packets (for a caller that
    /// waits on its own descriptor set).
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        self.wake_me.fd()
    }
}

/// Links for `n` runners serving the receive queues of one device, one each, in a ring: each
/// passes to the next what it cannot handle itself (a segment of a connection it does not
/// hold, a Neighbour Discovery message every sibling learns from), and the last sibling that
/// does not know a segment answers it with a reset. `n` is at most 256.
pub fn siblings(n: usize) -> io::Result<Vec<SiblingLink>> {
    let n = n.clamp(1, 256);
    let inboxes: Vec<_> = (0..n)
        .map(|_| crossbeam::channel::bounded(SIBLING_INBOX))
        .collect();
    let returns: Vec<_> = (0..n)
        .map(|_| crossbeam::channel::bounded(SIBLING_INBOX))
        .collect();
    let bells = (0..n)
        .map(|_| Doorbell::new())
        .collect::<io::Result<Vec<_>>>()?;
    Ok((0..n)
        .map(|i| {
            let (j, before) = ((i + 1) % n, (i + n - 1) % n);
            SiblingLink {
                others: (n - 1) as u8,
                inbox: inboxes[i].1.clone(),
                next: inboxes[j].0.clone(),
                back: returns[before].0.clone(),
                returned: returns[i].1.clone(),
                wake_me: bells[i].clone(),
                wake_next: bells[j].clone(),
            }
        })
        .collect())
}
