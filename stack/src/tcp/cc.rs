//! Congestion control: NewReno window growth (RFC 5681) and CUBIC (RFC 9438), selectable per
//! connection, with HyStart++ (RFC 9406) leaving slow start when the round-trip time says a
//! queue is building. Loss *detection* and recovery live in the TCB; this module only answers
//! "how big may the window be".

use crate::time::{Duration, Instant, Micros};
use serde::{Deserialize, Serialize};

/// Which congestion-avoidance algorithm a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Congestion {
    /// RFC 5681 additive increase (with RFC 6582 NewReno recovery when SACK is off).
    NewReno,
    /// RFC 9438 CUBIC.
    #[default]
    Cubic,
}

/// RFC 9438 §4.6: multiplicative decrease factor.
const BETA_CUBIC: f64 = 0.7;
/// RFC 9438 §4.2: C.
const C_CUBIC: f64 = 0.4;

/// RFC 9406 §4.3 constants: the RTT increase that ends slow start is a MIN_RTT_DIVISOR-th of
/// the last round's minimum, clamped to [MIN_RTT_THRESH, MAX_RTT_THRESH]; a round's minimum
/// counts from N_RTT_SAMPLE samples on; conservative slow start grows a CSS_GROWTH_DIVISOR-th
/// as fast and lasts CSS_ROUNDS rounds.
const HS_MIN_RTT_THRESH: Duration = Duration::from_millis(4);
const HS_MAX_RTT_THRESH: Duration = Duration::from_millis(16);
const HS_MIN_RTT_DIVISOR: u32 = 8;
const HS_N_RTT_SAMPLE: u32 = 8;
const HS_CSS_GROWTH_DIVISOR: u32 = 4;
const HS_CSS_ROUNDS: u32 = 5;

/// HyStart++ (RFC 9406) state: slow start's rounds and their minimum RTTs.
///
/// Plain slow start doubles the window each round until a loss: into a drop-tail queue that
/// overshoots by up to a window, and the recovery that follows loses retransmissions in the
/// still-full queue (the Fig1 testbed at 100 Mbit/s, a 100-frame queue: one drained handoff in
/// ten waited a 200 ms retransmission timeout, where Linux, with its HyStart, waited none).
///
/// `repr(C)`: its size is part of the control block's hand-made layout (see [`Cc`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[repr(C)]
pub struct HyStart {
    /// The current round ends when an ACK reaches this sequence number (SND.NXT when it began).
    window_end: Option<u32>,
    /// Round minima in 32-bit microseconds (`Micros`; the samples are whole milliseconds).
    last_round_min: Option<Micros>,
    current_round_min: Option<Micros>,
    samples: u32,
    /// In conservative slow start (CSS): the minimum RTT that started it.
    css_baseline: Option<Micros>,
    css_rounds: u32,
    /// Slow start is over for HyStart++: a loss, a timeout or CSS's last round.
    done: bool,
}

/// Congestion-control state, in bytes (CUBIC's internals in segments, as RFC 9438 writes them).
///
/// Laid out by hand (`repr(C)`) for the control block's (`Tcb`), which it opens the hot part
/// of: the algorithm, NewReno's counter and CUBIC's figures, read only in congestion avoidance
/// and recovery, first; then HyStart++, the window and the threshold, which every ACK in slow
/// start reads, next to the fields every segment reads. Left to rustc, the order was whatever
/// it chose (the connection table's line test held it to this one, and would have failed with
/// another compiler's choice). Not serialized: a moved connection's congestion state is
/// [`crate::state`]'s own fields.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct Cc {
    /// The algorithm.
    pub algo: Congestion,
    /// NewReno: bytes acked since the last congestion-avoidance increase.
    pub bytes_acked: u32,
    /// CUBIC W_max, segments (RFC 9438 §4.1).
    pub w_max: f64,
    /// CUBIC: time of the current congestion-avoidance epoch start, microseconds after the
    /// connection's own clock origin; `None` until the first CA ACK after a reduction.
    pub epoch_start: Option<Instant>,
    /// CUBIC K (RFC 9438 §4.2), seconds.
    pub k: f64,
    /// CUBIC Reno-friendly estimate W_est (RFC 9438 §4.3), segments.
    pub w_est: f64,
    /// HyStart++ (not carried by a moved connection: it starts again where it lands).
    pub hystart: HyStart,
    /// Congestion window, bytes.
    pub cwnd: u32,
    /// Slow-start threshold, bytes (`u32::MAX` = none yet).
    pub ssthresh: u32,
}

impl Cc {
    /// Initial state: RFC 6928 initial window of `iw` segments.
    pub fn new(algo: Congestion, mss: u32, iw: u32) -> Self {
        Cc {
            algo,
            cwnd: iw.max(1) * mss,
            ssthresh: u32::MAX,
            w_max: 0.0,
            epoch_start: None,
            k: 0.0,
            w_est: 0.0,
            bytes_acked: 0,
            hystart: HyStart::default(),
        }
    }

    /// Whether the connection is in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// New data acknowledged outside loss recovery.
    pub fn on_ack(&mut self, acked: u32, mss: u32, now: Instant, srtt: Duration) {
        if acked == 0 {
            return;
        }
        if self.in_slow_start() {
            // RFC 5681 §3.1 with RFC 3465 appropriate byte counting, L = 2; RFC 9406 §4.2: a
            // CSS_GROWTH_DIVISOR-th of that in conservative slow start.
            let mut grow = acked.min(2 * mss);
            if self.hystart.css_baseline.is_some() {
                grow /= HS_CSS_GROWTH_DIVISOR;
            }
            self.cwnd = self.cwnd.saturating_add(grow);
            return;
        }
        match self.algo {
            Congestion::NewReno => self.reno_ca(acked, mss),
            Congestion::Cubic => self.cubic_ca(acked, mss, now, srtt),
        }
    }

    /// RFC 5681 §3.1 eq. (3), byte-counted: +1 MSS per cwnd of data acknowledged.
    fn reno_ca(&mut self, acked: u32, mss: u32) {
        self.bytes_acked = self.bytes_acked.saturating_add(acked);
        if self.bytes_acked >= self.cwnd {
            self.bytes_acked -= self.cwnd;
            self.cwnd = self.cwnd.saturating_add(mss);
        }
    }

    /// RFC 9406 §4.2: an ACK of new data in slow start, with its RTT sample if it gave one
    /// (`snd_nxt`: where a round that begins now ends). Call before [`Cc::on_ack`].
    pub fn hystart_on_ack(&mut self, ack: u32, snd_nxt: u32, rtt: Option<Duration>) {
        if !self.in_slow_start() || self.hystart.done {
            return;
        }
        let h = &mut self.hystart;
        if h.window_end.is_none_or(|w| !super::seq::lt(ack, w)) {
            // A new round.
            h.window_end = Some(snd_nxt);
            h.last_round_min = h.current_round_min.take();
            h.samples = 0;
            if h.css_baseline.is_some() {
                h.css_rounds += 1;
                if h.css_rounds >= HS_CSS_ROUNDS {
                    // §4.2: CSS over: congestion avoidance from here.
                    self.ssthresh = self.cwnd;
                    h.done = true;
                    return;
                }
            }
        }
        let Some(r) = rtt.map(Micros::from) else {
            return;
        };
        h.current_round_min = Some(h.current_round_min.map_or(r, |m| m.min(r)));
        h.samples += 1;
        if h.samples < HS_N_RTT_SAMPLE {
            return;
        }
        let (Some(cur), Some(last)) = (
            h.current_round_min.map(Micros::get),
            h.last_round_min.map(Micros::get),
        ) else {
            return;
        };
        match h.css_baseline {
            None => {
                let thresh =
                    (last / HS_MIN_RTT_DIVISOR).clamp(HS_MIN_RTT_THRESH, HS_MAX_RTT_THRESH);
                if cur >= last + thresh {
                    h.css_baseline = Some(cur.into());
                    h.css_rounds = 0;
                }
            }
            // §4.2: the RTT fell back: the increase was spurious, slow start again.
            Some(base) if cur < base.get() => h.css_baseline = None,
            Some(_) => {}
        }
    }

    /// RFC 9438 §4.2–§4.4: cubic growth with the Reno-friendly region.
    fn cubic_ca(&mut self, acked: u32, mss: u32, now: Instant, srtt: Duration) {
        let mssf = mss as f64;
        let cwnd_seg = self.cwnd as f64 / mssf;
        let start = match self.epoch_start {
            Some(s) => s,
            None => {
                // RFC 9438 §4.8: start of a new CA epoch.
                self.epoch_start = Some(now);
                if self.w_max < cwnd_seg {
                    self.w_max = cwnd_seg;
                    self.k = 0.0;
                } else {
                    self.k = ((self.w_max - cwnd_seg) / C_CUBIC).cbrt();
                }
                self.w_est = cwnd_seg;
                now
            }
        };
        let t = (now - start).as_secs_f64() + srtt.as_secs_f64();
        let target = {
            let w = C_CUBIC * (t - self.k).powi(3) + self.w_max;
            // RFC 9438 §4.2: target clamped to [cwnd, 1.5 cwnd].
            w.clamp(cwnd_seg, 1.5 * cwnd_seg)
        };
        let segs_acked = acked as f64 / mssf;
        // RFC 9438 §4.3: W_est += alpha * segments_acked / cwnd.
        let alpha = 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC);
        self.w_est += alpha * segs_acked / cwnd_seg;
        let next = if self.w_est > target {
            // Reno-friendly region.
            self.w_est
        } else {
            // RFC 9438 §4.4: cwnd += (target - cwnd) / cwnd per segment acked.
            cwnd_seg + (target - cwnd_seg) / cwnd_seg * segs_acked
        };
        let next_bytes = (next * mssf) as u32;
        if next_bytes > self.cwnd {
            self.cwnd = next_bytes;
        }
    }

    /// A congestion event (fast retransmit): RFC 5681 §3.2 step 2 / RFC 9438 §4.6. Returns the
    /// new ssthresh; the caller sets cwnd per its recovery algorithm.
    pub fn on_congestion(&mut self, flight: u32, mss: u32) -> u32 {
        let mssf = mss as f64;
        self.ssthresh = match self.algo {
            Congestion::NewReno => (flight / 2).max(2 * mss),
            Congestion::Cubic => {
                let cwnd_seg = self.cwnd as f64 / mssf;
                // RFC 9438 §4.7 fast convergence.
                self.w_max = if cwnd_seg < self.w_max {
                    cwnd_seg * (1.0 + BETA_CUBIC) / 2.0
                } else {
                    cwnd_seg
                };
                self.epoch_start = None;
                ((self.cwnd as f64 * BETA_CUBIC) as u32).max(2 * mss)
            }
        };
        self.bytes_acked = 0;
        // RFC 9406 §4.2: a loss ends HyStart++.
        self.hystart.done = true;
        self.ssthresh
    }

    /// A retransmission timeout: RFC 5681 §3.1 eq. (4) and the loss window of one segment.
    pub fn on_rto(&mut self, flight: u32, mss: u32) {
        self.on_congestion(flight.max(self.cwnd.min(flight.max(1))), mss);
        self.cwnd = mss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_avoidance_newreno() {
        let mut cc = Cc::new(Congestion::NewReno, 1000, 10);
        assert_eq!(cc.cwnd, 10_000);
        cc.on_ack(1000, 1000, Instant::ZERO, Duration::from_millis(10));
        assert_eq!(cc.cwnd, 11_000);
        let ss = cc.on_congestion(20_000, 1000);
        assert_eq!(ss, 10_000);
        cc.cwnd = ss;
        for _ in 0..10 {
            cc.on_ack(1000, 1000, Instant::ZERO, Duration::from_millis(10));
        }
        assert_eq!(cc.cwnd, 11_000);
    }

    #[test]
    fn cubic_reduces_by_beta_and_regrows() {
        let mut cc = Cc::new(Congestion::Cubic, 1000, 10);
        cc.cwnd = 100_000;
        let ss = cc.on_congestion(100_000, 1000);
        assert_eq!(ss, 70_000);
        cc.cwnd = ss;
        let mut t = Instant::from_millis(0);
        for _ in 0..2000 {
            t += Duration::from_millis(1);
            cc.on_ack(1000, 1000, t, Duration::from_millis(10));
        }
        assert!(cc.cwnd > 70_000, "cwnd {}", cc.cwnd);
    }

    /// RFC 9406: rounds at the base RTT keep slow start; a round whose minimum RTT rose by
    /// the threshold (4 ms here) slows growth to a quarter (CSS); five CSS rounds end it.
    #[test]
    fn hystart_leaves_slow_start_when_the_rtt_rises() {
        let mss = 1000;
        let mut cc = Cc::new(Congestion::Cubic, mss, 10);
        let mut seq = 0u32;
        // One round: `acks` ACKs of one segment each, every one with RTT `rtt`; returns the
        // window's growth.
        let mut round = |cc: &mut Cc, rtt: u64| {
            let before = cc.cwnd;
            let acks = cc.cwnd / mss;
            let end = seq + acks * mss;
            for _ in 0..acks {
                seq += mss;
                cc.hystart_on_ack(seq, end + 1, Some(Duration::from_millis(rtt)));
                cc.on_ack(mss, mss, Instant::ZERO, Duration::from_millis(rtt));
            }
            cc.cwnd - before
        };
        assert_eq!(round(&mut cc, 1), 10_000, "slow start: doubles");
        assert_eq!(
            round(&mut cc, 2),
            20_000,
            "1 ms more: below the 4 ms threshold"
        );
        let css = round(&mut cc, 7);
        assert!(css < 40_000 / 2, "conservative slow start: {css}");
        assert!(cc.in_slow_start());
        for _ in 0..5 {
            round(&mut cc, 7);
        }
        assert!(
            !cc.in_slow_start(),
            "CSS_ROUNDS later: congestion avoidance"
        );
        assert!(cc.ssthresh < u32::MAX && cc.ssthresh <= cc.cwnd);
    }

    #[test]
    fn rto_collapses_to_one_segment() {
        let mut cc = Cc::new(Congestion::Cubic, 1000, 10);
        cc.on_rto(40_000, 1000);
        assert_eq!(cc.cwnd, 1000);
        assert!(cc.ssthresh >= 2000);
    }
}
