//! [`Forwarder`]: [`PacketPort`]s joined through a [`Switch`] — the I/O half of the emulator.
//!
//! One thread, one loop: send what is due, sleep in `ppoll` until the next delivery or a
//! frame arrives (nanosecond timeout, timer slack 1 ns, busy-polling the last `spin` before a
//! delivery), take in up to [`BATCH`] frames per port, each timed by the kernel's receive
//! stamp, repeat. Frames are copied out of one receive buffer into buffers of their own size
//! from a free list, so a queue of small frames costs small memory and the steady state
//! allocates nothing.
//!
//! The delay is counted from the kernel's receive stamp, so the time the emulator takes to
//! notice a frame is not added to it; the time it takes to hand a frame back to the kernel
//! would be (a wake-up, a `sendto`, on a slow virtual machine 20–40 µs, 2–4 % of a 1 ms link).
//! [`Lead`] learns that time from the frames it sends and releases every frame that much
//! earlier, so that the median frame leaves on time.

use crate::port::{PacketPort, MAX_FRAME, VNET_HDR_LEN};
use crate::stamp::realtime;
use crate::switch::{Switch, SwitchStats};
use crate::{Error, LinkParams};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Frames taken from one port per wake-up before the next gets its turn.
pub const BATCH: usize = 256;
/// Free buffers kept for reuse.
const POOL_MAX: usize = 4096;

/// Counters of one port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortStats {
    /// The port as given (`[NETNS:]IFNAME`).
    pub name: String,
    /// Frames the port refused to send (its socket buffer full, or the interface down).
    pub send_errors: u64,
    /// Frames received longer than [`MAX_FRAME`] or shorter than a header, dropped.
    pub malformed: u64,
}

/// Counters of the emulator.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FwdStats {
    /// Per port, in the order given.
    pub ports: Vec<PortStats>,
    /// How early frames are released now to make up for the emulator's own sending time
    /// ([`Lead`]), µs.
    pub lead_us: f64,
    /// Frames whose sending time was measured for it (those that waited for their time).
    pub lead_samples: u64,
    /// The switch: per directed path (frames and bytes in and out, losses, queue drops; bytes
    /// are Ethernet frame bytes, without the virtio-net header), per upstream, floods.
    #[serde(flatten)]
    pub switch: SwitchStats,
}

impl FwdStats {
    /// The counters of the path from port `from` to port `to`, if it carried anything.
    pub fn path(&self, from: usize, to: usize) -> Option<&crate::switch::PathStats> {
        self.switch
            .paths
            .iter()
            .find(|p| p.from == from && p.to == to)
    }
}

/// How much earlier than due the forwarder releases frames: an estimate of the time from a
/// frame's release to the return of its `sendto`, learnt from the frames that waited for
/// their time (frames already late when they were taken in, e.g. on a 0 ms path, say nothing
/// about it). Sans-IO: it is given times, it keeps no clock.
///
/// Each sample moves the estimate by half its error, at most [`Lead::STEP_UP`] up and
/// [`Lead::STEP_DOWN`] down: it converges in a few dozen frames, one frame delayed by a
/// preempted vCPU moves it by only 1 µs, and it settles near the lower quartile of the
/// sending time rather than its mean, so that three frames in four leave no earlier than due
/// and a machine that gets faster is followed three times as fast as one that gets slower.
///
/// ```
/// use ds_wan::fwd::Lead;
/// use std::time::Duration;
/// let us = Duration::from_micros;
/// let mut l = Lead::new(us(250));
/// for due in 0..100u64 {
///     // Every send returns 30 µs after the time the frame was released for.
///     let release = us(1000 * due).saturating_sub(l.get());
///     l.sample(us(1000 * due), release + us(30));
/// }
/// assert!(l.get() >= us(29) && l.get() <= us(31));
/// ```
#[derive(Debug, Clone)]
pub struct Lead {
    lead_ns: i64,
    max_ns: i64,
    samples: u64,
}

impl Lead {
    /// The most one late frame moves the estimate up.
    pub const STEP_UP: Duration = Duration::from_micros(1);
    /// The most one early frame moves it down.
    pub const STEP_DOWN: Duration = Duration::from_micros(3);

    /// Starts at 0 and never exceeds `max` (0: never release early).
    pub fn new(max: Duration) -> Lead {
        Lead {
            lead_ns: 0,
            max_ns: i64::try_from(max.as_nanos()).unwrap_or(i64::MAX),
            samples: 0,
        }
    }

    /// The current estimate.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.lead_ns.max(0) as u64)
    }

    /// Samples taken.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// A frame due at `due` was handed to the kernel by `done`.
    pub fn sample(&mut self, due: Duration, done: Duration) {
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let err = ns(done).saturating_sub(ns(due));
        let step = (err / 2).clamp(-ns(Self::STEP_DOWN), ns(Self::STEP_UP));
        self.lead_ns = (self.lead_ns + step).clamp(0, self.max_ns);
        self.samples += 1;
    }
}

/// A frame in the emulator's queues, with the time it was taken in.
#[derive(Clone)]
struct Held {
    buf: Vec<u8>,
    taken: Duration,
}

/// The emulator's loop (see the module documentation).
pub struct Forwarder {
    ports: Vec<PacketPort>,
    switch: Switch<Held>,
    lead: Lead,
    port_stats: Vec<PortStats>,
    pool: Vec<Vec<u8>>,
    rx: Vec<u8>,
    epoch: Instant,
    spin: Duration,
    last_arrival: Vec<Duration>,
    /// One pollfd per port, kept from step to step (no allocation per wake-up).
    fds: Vec<libc::pollfd>,
}

impl Forwarder {
    /// Joins `ports` (at least two): `path(i, j)` are the parameters from port i to port j,
    /// `upstream(i)` those of the stage every frame received on port i crosses first (`None`:
    /// none). `seed` makes loss and jitter reproducible.
    pub fn new(
        ports: Vec<PacketPort>,
        path: impl Fn(usize, usize) -> LinkParams,
        upstream: impl Fn(usize) -> Option<LinkParams>,
        seed: u64,
    ) -> Result<Forwarder, Error> {
        if ports.len() < 2 {
            return Err(Error::Invalid(
                "the emulator needs at least two ports".into(),
            ));
        }
        let n = ports.len();
        let fds = ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(Forwarder {
            switch: Switch::new(n, path, upstream, seed),
            port_stats: ports
                .iter()
                .map(|p| PortStats {
                    name: p.spec().to_string(),
                    ..PortStats::default()
                })
                .collect(),
            ports,
            pool: Vec::new(),
            rx: vec![0; MAX_FRAME],
            epoch: Instant::now(),
            spin: Duration::ZERO,
            lead: Lead::new(Duration::ZERO),
            last_arrival: vec![Duration::ZERO; n],
            fds,
        })
    }

    /// Busy-polls instead of sleeping when the next delivery is at most `spin` away. A
    /// sleeping thread wakes some 10–40 µs late on a virtual machine (the vCPU has to be woken
    /// too); spinning the last stretch delivers on time at the price of that much CPU per
    /// wake-up. Zero (the default): always sleep.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Releases frames early by up to `max` to make up for the emulator's own sending time
    /// ([`Lead`]). Zero (the default): frames leave no earlier than due, and each is late by
    /// that time.
    pub fn set_lead_max(&mut self, max: Duration) {
        self.lead = Lead::new(max);
    }

    /// The ports, in the order given.
    pub fn ports(&self) -> &[PacketPort] {
        &self.ports
    }

    /// Counters so far.
    pub fn stats(&self) -> FwdStats {
        FwdStats {
            ports: self.port_stats.clone(),
            lead_us: self.lead.get().as_secs_f64() * 1e6,
            lead_samples: self.lead.samples(),
            switch: self.switch.stats(),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Sends every frame due by now, less the lead.
    fn deliver(&mut self) {
        let horizon = self.now() + self.lead.get();
        let epoch = self.epoch;
        let (ports, stats, pool, lead) = (
            &self.ports,
            &mut self.port_stats,
            &mut self.pool,
            &mut self.lead,
        );
        self.switch.poll_timed(horizon, |to, due, f| {
            if let Err(e) = ports[to].send(&f.buf) {
                stats[to].send_errors += 1;
                debug!("send on {}: {e}", ports[to].spec());
            } else if due > f.taken {
                lead.sample(due, epoch.elapsed());
            }
            if pool.len() < POOL_MAX {
                pool.push(f.buf);
            }
        });
    }

    /// Takes in what port `port` has received (at most [`BATCH`] frames).
    fn receive(&mut self, port: usize) {
        let now = self.now();
        // Kernel stamps are wall-clock time: map them onto our monotonic epoch.
        let wall_epoch = realtime().checked_sub(now);
        for _ in 0..BATCH {
            let (n, at) = match self.ports[port].recv(&mut self.rx) {
                Ok(Some(r)) => {
                    let at = match (r.stamp, wall_epoch) {
                        // Never later than now, never before the previous arrival.
                        (Some(s), Some(e)) => s
                            .checked_sub(e)
                            .unwrap_or(Duration::ZERO)
                            .clamp(self.last_arrival[port], now),
                        _ => now,
                    };
                    self.last_arrival[port] = at;
                    (r.len, at)
                }
                Ok(None) => break,
                Err(e) => {
                    warn!("receive on {}: {e}", self.ports[port].spec());
                    break;
                }
            };
            if n > self.rx.len() || n < VNET_HDR_LEN + 14 {
                self.port_stats[port].malformed += 1;
                continue;
            }
            let eth = &self.rx[VNET_HDR_LEN..n];
            let mut dst = [0u8; 6];
            let mut src = [0u8; 6];
            dst.copy_from_slice(&eth[..6]);
            src.copy_from_slice(&eth[6..12]);
            let mut buf = self.pool.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(&self.rx[..n]);
            // A dropped frame takes its buffer with it (counted in the switch's stats); the
            // pool refills from sends.
            let held = Held { buf, taken: now };
            self.switch
                .receive(at, port, held, n - VNET_HDR_LEN, dst, src);
        }
    }

    /// One round: deliver what is due, wait until the next deadline, a frame, or `max_wait`,
    /// take in what arrived, deliver again.
    pub fn step(&mut self, max_wait: Duration) -> Result<(), Error> {
        self.deliver();
        let now = self.now();
        let wait = self.switch.next_deadline().map_or(max_wait, |t| {
            t.saturating_sub(now + self.lead.get()).min(max_wait)
        });
        // Within `spin` of the deadline: do not sleep (a zero wait polls every port).
        let wait = wait.saturating_sub(self.spin);
        for f in &mut self.fds {
            f.revents = 0;
        }
        if !wait.is_zero() {
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `self.fds` and `ts` are live for the call and the count is the vector's
            // length; a null sigmask keeps the mask.
            let rc = unsafe {
                libc::ppoll(
                    self.fds.as_mut_ptr(),
                    self.fds.len() as libc::nfds_t,
                    &ts,
                    std::ptr::null(),
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::Os {
                        what: "ppoll".into(),
                        source: e,
                    });
                }
            }
        }
        for port in 0..self.ports.len() {
            // After a zero wait nothing was polled: try every port (recv is non-blocking).
            if wait.is_zero() || self.fds[port].revents != 0 {
                self.receive(port);
            }
        }
        self.deliver();
        Ok(())
    }

    /// Runs until `stop` is set, calling `tick` with the counters every `every`.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        every: Duration,
        mut tick: impl FnMut(&FwdStats),
    ) -> Result<(), Error> {
        set_timer_slack_1ns();
        let mut next = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) {
            self.step(Duration::from_millis(50))?;
            if Instant::now() >= next {
                tick(&self.stats());
                next += every;
            }
        }
        Ok(())
    }
}

/// Timers of this thread fire within 1 ns of their time instead of the default 50 µs slack:
/// at 1 ms of configured delay the default slack alone would be a 5 % error.
pub fn set_timer_slack_1ns() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and changes only this thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    if rc != 0 {
        warn!(
            "PR_SET_TIMERSLACK: {}; delays may run up to 50 µs long",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Lead;
    use std::time::Duration;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    /// Sends that complete `cost` after their release time, every 1 ms; returns the lead.
    fn run(l: &mut Lead, from: u64, frames: u64, cost: impl Fn(u64) -> Duration) {
        for k in from..from + frames {
            let due = us(1000 * k);
            let release = due.saturating_sub(l.get());
            l.sample(due, release + cost(k));
        }
    }

    #[test]
    fn the_lead_learns_the_median_sending_time_and_shrugs_off_outliers() {
        let mut l = Lead::new(us(250));
        run(&mut l, 1, 100, |_| us(40));
        assert!(l.get().abs_diff(us(40)) <= us(1), "{:?}", l.get());
        // One frame in ten is 5 ms late (a preempted vCPU): the median does not move, so
        // the lead moves by at most a couple of steps.
        run(&mut l, 101, 200, |k| {
            if k % 10 == 0 {
                us(5000)
            } else {
                us(40)
            }
        });
        assert!(l.get().abs_diff(us(40)) <= us(5), "{:?}", l.get());
        assert_eq!(l.samples(), 300);
        // The machine gets faster: the lead follows down.
        run(&mut l, 301, 100, |_| us(10));
        assert!(l.get().abs_diff(us(10)) <= us(1), "{:?}", l.get());
    }

    #[test]
    fn the_lead_stays_within_its_bounds() {
        let mut l = Lead::new(us(50));
        run(&mut l, 1, 500, |_| us(400));
        assert_eq!(l.get(), us(50));
        // Early sends (impossible in practice, but the clock is the caller's): never negative.
        let mut l = Lead::new(us(50));
        for k in 1..100u64 {
            l.sample(us(1000 * k), us(1000 * k - 30));
        }
        assert_eq!(l.get(), Duration::ZERO);
        // A bound of 0 turns it off.
        let mut l = Lead::new(Duration::ZERO);
        run(&mut l, 1, 50, |_| us(40));
        assert_eq!(l.get(), Duration::ZERO);
    }
}
