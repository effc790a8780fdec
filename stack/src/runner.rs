//! The I/O half: moves frames between a [`Device`] and the sans-IO [`Interface`], reading the
//! monotonic clock on the way. Everything protocol-shaped stays in the interface.

use crate::device::Device;
use crate::iface::Interface;
use crate::time::{Duration, Instant};
use std::io;

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
}

/// Frames read from the device per step before timers and output get their turn.
const RX_BATCH: usize = 256;

impl<D: Device> Runner<D> {
    /// Bind `iface` to `dev`, with a fresh clock.
    pub fn new(dev: D, iface: Interface) -> Self {
        Self::with_clock(dev, iface, Clock::new())
    }

    /// Bind `iface` to `dev`, reading time from `clock` (share one clock per process).
    pub fn with_clock(dev: D, iface: Interface, clock: Clock) -> Self {
        let buf = vec![0u8; dev.mtu() + 64];
        Runner {
            iface,
            dev,
            clock,
            buf,
            poll: crate::device::PollSet::default(),
        }
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
        if !wait.is_zero() {
            self.poll.clear();
            self.dev.wait_fds(&mut self.poll);
            if self.poll.is_empty() {
                self.dev.wait(Some(wait))?;
            } else {
                for &fd in extra {
                    self.poll.add(fd);
                }
                self.poll.wait(Some(wait))?;
            }
        }
        self.process()
    }

    /// Process pending input and timers and flush output without waiting.
    pub fn process(&mut self) -> io::Result<()> {
        for _ in 0..RX_BATCH {
            match self.dev.recv(&mut self.buf)? {
                Some(n) => {
                    let now = self.clock.now();
                    self.iface.receive(now, &self.buf[..n]);
                }
                None => break,
            }
        }
        let now = self.clock.now();
        self.iface.poll(now);
        self.flush()
    }

    /// Send every frame the interface has ready.
    pub fn flush(&mut self) -> io::Result<()> {
        let now = self.clock.now();
        let dev = &mut self.dev;
        let mut err = None;
        self.iface.transmit(now, &mut |frame: &[u8]| {
            if err.is_none() {
                if let Err(e) = dev.send(frame) {
                    err = Some(e);
                }
            }
        });
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
