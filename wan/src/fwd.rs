//! [`Forwarder`]: two [`PacketPort`]s joined through two [`Shaper`]s, one per direction.
//!
//! One thread, one loop: send what is due, sleep in `ppoll` until the next delivery or a
//! frame arrives (nanosecond timeout, timer slack 1 ns), take in up to [`BATCH`] frames per
//! port with one clock reading each, repeat. Frames are copied out of one receive buffer into
//! buffers of their own size from a free list, so a queue of small frames costs small memory
//! and the steady state allocates nothing.

use crate::port::{PacketPort, MAX_FRAME, VNET_HDR_LEN};
use crate::shaper::{Shaper, ShaperStats, Verdict};
use crate::{Error, LinkParams};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Frames taken from one port per wake-up before the other gets its turn.
pub const BATCH: usize = 256;
/// Free buffers kept for reuse.
const POOL_MAX: usize = 4096;

/// Counters of one direction (A → B or B → A).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DirStats {
    /// The shaper's counters (frames and bytes in and out, losses, queue drops); bytes are
    /// Ethernet frame bytes, without the virtio-net header.
    #[serde(flatten)]
    pub shaper: ShaperStats,
    /// Frames the outgoing port refused (its socket buffer full, or the interface down).
    pub send_errors: u64,
    /// Frames longer than [`MAX_FRAME`] or shorter than a header, dropped on receipt.
    pub malformed: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FwdStats {
    /// Frames received on port A and forwarded to B.
    pub a_to_b: DirStats,
    /// Frames received on port B and forwarded to A.
    pub b_to_a: DirStats,
}

/// The emulator's loop (see the module documentation).
pub struct Forwarder {
    ports: [PacketPort; 2],
    shapers: [Shaper<Vec<u8>>; 2],
    extra: [(u64, u64); 2],
    pool: Vec<Vec<u8>>,
    rx: Vec<u8>,
    epoch: Instant,
    spin: Duration,
    last_arrival: [Duration; 2],
}

impl Forwarder {
    /// Joins port `a` and port `b`: frames from A to B see `ab`, from B to A see `ba`. `seed`
    /// makes loss and jitter reproducible.
    pub fn new(a: PacketPort, b: PacketPort, ab: LinkParams, ba: LinkParams, seed: u64) -> Self {
        Forwarder {
            ports: [a, b],
            shapers: [
                Shaper::new(ab, seed),
                Shaper::new(ba, seed ^ 0x9e37_79b9_7f4a_7c15),
            ],
            extra: [(0, 0); 2],
            pool: Vec::new(),
            rx: vec![0; MAX_FRAME],
            epoch: Instant::now(),
            spin: Duration::ZERO,
            last_arrival: [Duration::ZERO; 2],
        }
    }

    /// Busy-polls instead of sleeping when the next delivery is at most `spin` away. A
    /// sleeping thread wakes some 10–40 µs late on a virtual machine (the vCPU has to be woken
    /// too); spinning the last stretch delivers on time at the price of that much CPU per
    /// wake-up. Zero (the default): always sleep.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// The ports (A, B).
    pub fn ports(&self) -> &[PacketPort; 2] {
        &self.ports
    }

    /// Parameters in force per direction (A → B, B → A).
    pub fn params(&self) -> (LinkParams, LinkParams) {
        (*self.shapers[0].params(), *self.shapers[1].params())
    }

    /// Counters so far.
    pub fn stats(&self) -> FwdStats {
        let d = |i: usize| DirStats {
            shaper: self.shapers[i].stats(),
            send_errors: self.extra[i].0,
            malformed: self.extra[i].1,
        };
        FwdStats {
            a_to_b: d(0),
            b_to_a: d(1),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Sends every frame due by now.
    fn deliver(&mut self) {
        let now = self.now();
        for dir in 0..2 {
            let out = &self.ports[1 - dir];
            let (errors, pool) = (&mut self.extra[dir].0, &mut self.pool);
            self.shapers[dir].poll(now, |f| {
                if let Err(e) = out.send(&f) {
                    *errors += 1;
                    debug!("send on {}: {e}", out.spec());
                }
                if pool.len() < POOL_MAX {
                    pool.push(f);
                }
            });
        }
    }

    /// Takes in what port `dir` has received (at most [`BATCH`] frames).
    fn receive(&mut self, dir: usize) {
        let now = self.now();
        // Kernel stamps are wall-clock time: map them onto our monotonic epoch.
        let wall_epoch = realtime().checked_sub(now);
        for _ in 0..BATCH {
            let (n, at) = match self.ports[dir].recv(&mut self.rx) {
                Ok(Some(r)) => {
                    let at = match (r.stamp, wall_epoch) {
                        // Never later than now, never before the previous arrival.
                        (Some(s), Some(e)) => s
                            .checked_sub(e)
                            .unwrap_or(Duration::ZERO)
                            .clamp(self.last_arrival[dir], now),
                        _ => now,
                    };
                    self.last_arrival[dir] = at;
                    (r.len, at)
                }
                Ok(None) => break,
                Err(e) => {
                    warn!("receive on {}: {e}", self.ports[dir].spec());
                    break;
                }
            };
            if n > self.rx.len() || n < VNET_HDR_LEN + 14 {
                self.extra[dir].1 += 1;
                continue;
            }
            let mut buf = self.pool.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(&self.rx[..n]);
            // A dropped frame takes its buffer with it (counted in the shaper's stats); the
            // pool refills from sends.
            let _: Verdict = self.shapers[dir].push(at, buf, n - VNET_HDR_LEN);
        }
    }

    /// One round: deliver what is due, wait until the next deadline, a frame, or `max_wait`,
    /// take in what arrived, deliver again.
    pub fn step(&mut self, max_wait: Duration) -> Result<(), Error> {
        self.deliver();
        let now = self.now();
        let wait = [0, 1]
            .iter()
            .filter_map(|&d| self.shapers[d].next_deadline())
            .min()
            .map_or(max_wait, |t| t.saturating_sub(now).min(max_wait));
        // Within `spin` of the deadline: do not sleep (a zero wait polls both ports).
        let wait = if wait <= self.spin {
            Duration::ZERO
        } else {
            wait - self.spin
        };
        let mut fds = [
            libc::pollfd {
                fd: self.ports[0].raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.ports[1].raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if !wait.is_zero() {
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
            };
            // SAFETY: `fds` and `ts` are live for the call; a null sigmask keeps the mask.
            let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
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
        let ready = fds.map(|f| wait.is_zero() || f.revents != 0);
        for (dir, ready) in ready.into_iter().enumerate() {
            // After a zero wait nothing was polled: try both (recv is non-blocking).
            if ready {
                self.receive(dir);
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

/// CLOCK_REALTIME now (the clock of the kernel's receive stamps).
fn realtime() -> Duration {
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
