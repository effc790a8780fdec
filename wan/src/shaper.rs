//! [`Shaper`]: one direction of an emulated link, sans-IO.
//!
//! Every decision is made when a frame arrives: loss, then its departure from a token bucket
//! (FIFO, drop-tail beyond `limit` waiting frames), then its delivery time (departure + delay
//! ± jitter, never before the frame ahead of it). Frames wait in one queue ordered by
//! delivery time, so [`Shaper::poll`] and [`Shaper::next_deadline`] are O(1) per frame and
//! the result does not depend on how late the caller polls.

use crate::params::LinkParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queued for delivery.
    Queued,
    /// Dropped by the loss model.
    Lost,
    /// Dropped because `limit` frames were already waiting for the rate.
    QueueFull,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShaperStats {
    /// Frames pushed.
    pub in_frames: u64,
    /// Bytes pushed (the `len` given to [`Shaper::push`]).
    pub in_bytes: u64,
    /// Frames delivered by [`Shaper::poll`].
    pub out_frames: u64,
    /// Bytes delivered.
    pub out_bytes: u64,
    /// Frames dropped by the loss model.
    pub lost: u64,
    /// Frames dropped at a full queue (`limit` frames waiting for the rate, or the hard caps
    /// [`MAX_QUEUED_FRAMES`] / [`MAX_QUEUED_BYTES`] on everything in flight).
    pub queue_drops: u64,
    /// Most frames ever waiting for the rate at once.
    pub max_backlog: u64,
}

/// Most frames one direction holds at once, whatever the parameters: the emulator's memory is
/// bounded even when a sender floods a long, unlimited-rate link.
pub const MAX_QUEUED_FRAMES: usize = 1 << 16;
/// Most bytes one direction holds at once.
pub const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// One direction of an emulated link (see the module documentation). Time is the caller's:
/// a [`Duration`] since any fixed epoch, never decreasing.
pub struct Shaper<P> {
    params: LinkParams,
    /// Token bucket as a time: the bucket holds `min(burst, rate·(t − empty_at))` bytes at t.
    empty_at: Duration,
    /// Departure times of frames not yet departed (for the drop-tail limit).
    departing: VecDeque<Duration>,
    /// Frames in delivery order with their delivery time and length.
    queue: VecDeque<(Duration, u32, P)>,
    queued_bytes: u64,
    last_delivery: Duration,
    rng: StdRng,
    stats: ShaperStats,
}

/// Time to send `bytes` at `rate_bps` (0: none).
fn tx_time(bytes: u64, rate_bps: u64) -> Duration {
    if rate_bps == 0 {
        return Duration::ZERO;
    }
    let ns = (u128::from(bytes) * 8 * 1_000_000_000).div_ceil(u128::from(rate_bps));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl<P> Shaper<P> {
    /// A direction with `params`; `seed` makes loss and jitter reproducible.
    pub fn new(params: LinkParams, seed: u64) -> Shaper<P> {
        Shaper {
            params,
            empty_at: Duration::ZERO,
            departing: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            last_delivery: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            stats: ShaperStats::default(),
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Changes the parameters for frames pushed from now on (frames already queued keep
    /// their times).
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    /// Counters so far.
    pub fn stats(&self) -> ShaperStats {
        self.stats
    }

    /// Frames queued (waiting for the rate or the delay).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A frame of `len` bytes arrived at `now`.
    pub fn push(&mut self, now: Duration, frame: P, len: usize) -> Verdict {
        let len = len as u64;
        self.stats.in_frames += 1;
        self.stats.in_bytes += len;
        if self.params.loss > 0.0 && self.rng.gen::<f64>() < self.params.loss {
            self.stats.lost += 1;
            return Verdict::Lost;
        }
        if self.queue.len() >= MAX_QUEUED_FRAMES || self.queued_bytes + len > MAX_QUEUED_BYTES {
            self.stats.queue_drops += 1;
            return Verdict::QueueFull;
        }
        while self.departing.front().is_some_and(|d| *d <= now) {
            self.departing.pop_front();
        }
        let depart = if self.params.rate_bps == 0 {
            now
        } else {
            if self.departing.len() >= self.params.limit {
                self.stats.queue_drops += 1;
                return Verdict::QueueFull;
            }
            // RFC 2697-style single bucket: an idle link saves up at most `burst` bytes.
            let full_since =
                now.saturating_sub(tx_time(self.params.burst.into(), self.params.rate_bps));
            self.empty_at = self.empty_at.max(full_since);
            self.empty_at += tx_time(len, self.params.rate_bps);
            let depart = now.max(self.empty_at);
            if depart > now {
                self.departing.push_back(depart);
                self.stats.max_backlog = self.stats.max_backlog.max(self.departing.len() as u64);
            }
            depart
        };
        let mut delay = self.params.delay;
        if !self.params.jitter.is_zero() {
            let j = self.params.jitter.as_nanos() as i128;
            let off = self.rng.gen_range(-j..=j);
            let d = (delay.as_nanos() as i128 + off).max(0);
            delay = Duration::from_nanos(u64::try_from(d).unwrap_or(u64::MAX));
        }
        // A link never reorders: a frame is not delivered before the one ahead of it.
        let at = (depart + delay).max(self.last_delivery);
        self.last_delivery = at;
        self.queued_bytes += len;
        self.queue.push_back((at, len as u32, frame));
        Verdict::Queued
    }

    /// When the next frame is due (`None`: nothing queued).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.queue.front().map(|(at, _, _)| *at)
    }

    /// Hands every frame due at `now` to `out`, in order.
    pub fn poll(&mut self, now: Duration, mut out: impl FnMut(P)) {
        self.poll_timed(now, |_, _, f| out(f));
    }

    /// Hands every frame due at `now` to `out` with the time it was due and its length, in
    /// order (for a stage feeding another: the next one starts from the exact time).
    pub fn poll_timed(&mut self, now: Duration, mut out: impl FnMut(Duration, usize, P)) {
        while self.queue.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((at, len, f)) = self.queue.pop_front() {
                self.queued_bytes -= u64::from(len);
                self.stats.out_frames += 1;
                self.stats.out_bytes += u64::from(len);
                out(at, len as usize, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn drain(s: &mut Shaper<u32>, now: Duration) -> Vec<u32> {
        let mut v = Vec::new();
        s.poll(now, |f| v.push(f));
        v
    }

    #[test]
    fn delay_alone_delivers_each_frame_exactly_that_much_later() {
        let mut s = Shaper::new("delay=25ms".parse().unwrap(), 1);
        s.push(ms(0), 1, 100);
        s.push(ms(3), 2, 100);
        assert_eq!(s.next_deadline(), Some(ms(25)));
        assert!(drain(&mut s, ms(24)).is_empty());
        assert_eq!(drain(&mut s, ms(25)), vec![1]);
        assert_eq!(s.next_deadline(), Some(ms(28)));
        // Polling late delivers what is due, with no drift for later frames.
        assert_eq!(drain(&mut s, ms(100)), vec![2]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn rate_serializes_back_to_back_frames_and_saves_only_the_burst() {
        // 1 Mbit/s, burst of one 1,250-byte frame (10 ms at that rate).
        let mut s = Shaper::new("rate=1mbit,burst=1250".parse().unwrap(), 1);
        for i in 0..3 {
            s.push(ms(1000), i, 1250);
        }
        // The first goes at once on the saved burst, then one per 10 ms.
        let mut times = Vec::new();
        while let Some(t) = s.next_deadline() {
            times.push(t);
            drain(&mut s, t);
        }
        assert_eq!(times, vec![ms(1000), ms(1010), ms(1020)]);
        // An idle second saves only one frame's worth, not a second's.
        for i in 0..2 {
            s.push(ms(2000), i, 1250);
        }
        assert_eq!(s.next_deadline(), Some(ms(2000)));
        drain(&mut s, ms(2000));
        assert_eq!(s.next_deadline(), Some(ms(2010)));
    }

    #[test]
    fn long_run_throughput_equals_the_rate() {
        let mut s = Shaper::new("rate=2mbit,limit=100000".parse().unwrap(), 1);
        // Offer 4 Mbit/s of 1,500-byte frames for 10 s.
        let mut t = Duration::ZERO;
        let step = tx_time(1500, 4_000_000);
        while t < Duration::from_secs(10) {
            s.push(t, 0, 1500);
            t += step;
        }
        let mut out = 0u64;
        s.poll(Duration::from_secs(10), |_| out += 1500);
        let bps = out as f64 * 8.0 / 10.0;
        assert!((bps - 2e6).abs() / 2e6 < 0.001, "{bps}");
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        let mut s = Shaper::new("rate=1mbit,burst=0,limit=3".parse().unwrap(), 1);
        let v: Vec<_> = (0..5).map(|i| s.push(ms(0), i, 1250)).collect();
        assert_eq!(
            v,
            vec![
                Verdict::Queued,
                Verdict::Queued,
                Verdict::Queued,
                Verdict::QueueFull,
                Verdict::QueueFull
            ]
        );
        assert_eq!(s.stats().queue_drops, 2);
        // Once one has departed there is room again.
        drain(&mut s, ms(10));
        assert_eq!(s.push(ms(10), 9, 1250), Verdict::Queued);
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let mut s = Shaper::new("delay=10ms,jitter=5ms".parse().unwrap(), 7);
        for i in 0..1000u32 {
            s.push(Duration::from_micros(u64::from(i) * 100), i, 100);
        }
        let mut prev = Duration::ZERO;
        let mut got = Vec::new();
        while let Some(t) = s.next_deadline() {
            assert!(t >= prev);
            prev = t;
            s.poll(t, |f| got.push((t, f)));
        }
        assert_eq!(got.len(), 1000);
        for (i, (t, f)) in got.iter().enumerate() {
            assert_eq!(*f as usize, i, "in order");
            let sent = Duration::from_micros(u64::from(*f) * 100);
            // Lower bound: delay - jitter; upper: delay + jitter (+ waiting behind a later one).
            assert!(*t >= sent + ms(5), "{f}");
            assert!(*t <= sent + ms(15), "{f}");
        }
    }

    #[test]
    fn loss_rate_is_the_configured_probability() {
        let mut s = Shaper::new("loss=10%".parse().unwrap(), 3);
        for i in 0..100_000u32 {
            s.push(Duration::ZERO, i, 64);
        }
        let lost = s.stats().lost as f64 / 100_000.0;
        assert!((lost - 0.10).abs() < 0.005, "{lost}");
        // The same seed loses the same frames.
        let mut a = Shaper::new("loss=10%".parse().unwrap(), 3);
        let mut b = Shaper::new("loss=10%".parse().unwrap(), 3);
        for i in 0..1000u32 {
            assert_eq!(a.push(ms(0), i, 1), b.push(ms(0), i, 1));
        }
    }
}
