//! The connections' timers: a hashed wheel of ~1 ms buckets in front of a small exact heap
//! (Varghese and Lauck's scheme 6, with the due bucket sorted on the way out).
//!
//! One binary heap of every connection's timer cost a sift through ~17 levels per timer at
//! 100,000 connections, the lower levels cold in the cache (`dsperf conns`: 7 % of the time
//! in `BinaryHeap::pop`). Here arming is a push onto the tail of the bucket of its
//! millisecond (the same few buckets take every arm, so they stay in the cache), and a
//! bucket is looked at once, in order, when its millisecond comes: entries the connection no
//! longer wants (the common case: the data was acknowledged before its timeout) are dropped
//! there by the caller's predicate, and only the live ones enter the exact heap, which holds
//! a millisecond's worth. Timers still fire at their exact instant. Written here rather than
//! taken from a crate because the drop-on-migration predicate is the point, and the timer
//! crates own their entries (a callback or a key per timer) instead of the caller's `u32`s.

use crate::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A bucket spans 2^10 µs.
const TICK_SHIFT: u32 = 10;
/// Buckets in the wheel: a horizon of ~4.2 s (retransmission, delayed ACK, pacing, loss
/// probe timers); later ones (keepalive, TIME-WAIT, backed-off timeouts) wait in a heap.
const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;
/// Most entries a new bucket vector starts with: one burst bucket (thousands of connections
/// arming in one millisecond) must not make every later vector that large.
const NEW_VECTOR_MOST: usize = 256;

fn tick(t: Instant) -> i64 {
    t.total_micros() >> TICK_SHIFT
}

fn slot(k: i64) -> usize {
    k.rem_euclid(SLOTS as i64) as usize
}

/// Timers `(instant, id)`: [`TimerWheel::push`], [`TimerWheel::earliest`] (the next one's
/// instant) and [`TimerWheel::pop_due`].
#[derive(Debug)]
pub(super) struct TimerWheel {
    /// Entries whose tick is at most `base`, in exact order.
    near: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Bucket `slot(k)` holds the entries of tick `k`, for `base < k <= base + SLOTS`.
    buckets: Vec<Vec<(Instant, u32)>>,
    /// Emptied buckets' storage, for the next bucket to fill (most recently emptied first:
    /// still in the cache). A few buckets are in use at a time, so a few vectors go round
    /// the whole wheel, each grown once to the most a bucket held: arming allocates nothing
    /// once they have, whichever of the 4,096 buckets comes next.
    spare: Vec<Vec<(Instant, u32)>>,
    /// Bucket vectors made so far (in the buckets and in `spare`): `spare` keeps room for all
    /// of them, reserved when one is made, so that draining many buckets after a stall
    /// never grows it.
    vectors: usize,
    /// The largest capacity a bucket vector has reached: a new one starts there (up to
    /// [`NEW_VECTOR_MOST`]), one allocation instead of a doubling chain when more buckets
    /// than ever hold timers.
    widest: usize,
    /// Each bucket's earliest instant (valid while the bucket is non-empty), so that the next
    /// timer is known exactly without looking through a bucket.
    mins: Vec<Instant>,
    /// One bit per non-empty bucket.
    occupied: [u64; WORDS],
    /// Entries beyond the wheel's horizon.
    far: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Every tick up to this one has moved into `near`.
    base: i64,
    in_buckets: usize,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel {
            near: BinaryHeap::new(),
            buckets: (0..SLOTS).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            vectors: 0,
            widest: 0,
            mins: vec![Instant::ZERO; SLOTS],
            occupied: [0; WORDS],
            far: BinaryHeap::new(),
            base: 0,
            in_buckets: 0,
        }
    }
}

impl TimerWheel {
    /// Entries held (live or not).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.near.len() + self.in_buckets + self.far.len()
    }

    /// Add timer `id` at `at`.
    pub(super) fn push(&mut self, at: Instant, id: u32) {
        let k = tick(at);
        if k <= self.base {
            self.near.push(Reverse((at, id)));
        } else if k - self.base <= SLOTS as i64 {
            let s = slot(k);
            let bucket = &mut self.buckets[s];
            if bucket.is_empty() {
                if bucket.capacity() == 0 {
                    match self.spare.pop() {
                        Some(v) => *bucket = v,
                        None => {
                            *bucket = Vec::with_capacity(self.widest.clamp(4, NEW_VECTOR_MOST));
                            self.vectors += 1;
                            self.spare.reserve(self.vectors - self.spare.len());
                        }
                    }
                }
                self.mins[s] = at;
            } else if at < self.mins[s] {
                self.mins[s] = at;
            }
            if bucket.len() == bucket.capacity() {
                // Cold: a bucket holds more than this vector ever did.
                bucket.reserve(1);
                self.widest = self.widest.max(bucket.capacity());
            }
            bucket.push((at, id));
            self.occupied[s / 64] |= 1 << (s % 64);
            self.in_buckets += 1;
        } else {
            self.far.push(Reverse((at, id)));
        }
    }

    /// The earliest timer's instant (possibly of an entry the caller no longer wants);
    /// `None` when there are none.
    pub(super) fn earliest(&self) -> Option<Instant> {
        if let Some(Reverse((t, _))) = self.near.peek() {
            return Some(*t);
        }
        if let Some(k) = self.first_occupied(self.base, self.base + SLOTS as i64) {
            return Some(self.mins[slot(k)]);
        }
        self.far.peek().map(|Reverse((t, _))| *t)
    }

    /// The next entry due at `now` (its instant not after `now`), removed. Entries for which
    /// `keep(ctx, at, id)` says no are dropped when their bucket comes due instead of entering the
    /// exact order; the caller checks the ones returned again (they may have gone stale
    /// since).
    ///
    /// Due buckets enter the exact order one at a time, as the caller pops: after a stall
    /// (the process descheduled for milliseconds, many buckets due at once) `near` holds one
    /// bucket's entries, not every due one's, so it does not grow to a new most (an allocation
    /// on a loaded machine) and the first timer is not kept waiting behind the sorting of all
    /// the others.
    pub(super) fn pop_due<C: ?Sized>(
        &mut self,
        now: Instant,
        ctx: &mut C,
        keep: impl Fn(&mut C, Instant, u32) -> bool,
    ) -> Option<(Instant, u32)> {
        let to = tick(now);
        let mut more = true;
        loop {
            if let Some(Reverse((t, _))) = self.near.peek() {
                // Every bucket's entries are later than any in `near` (a later tick).
                return if *t <= now {
                    self.near.pop().map(|Reverse(e)| e)
                } else {
                    None
                };
            }
            // The last look: far entries may have come straight into `near` as the base
            // reached `to`.
            if !more {
                return None;
            }
            more = self.drain_next(to, ctx, &keep);
        }
    }

    /// Move the first non-empty bucket up to tick `to` into the exact heap (what `keep`
    /// accepts of it); false when there is none, every tick up to `to` then looked at.
    fn drain_next<C: ?Sized>(
        &mut self,
        to: i64,
        ctx: &mut C,
        keep: &impl Fn(&mut C, Instant, u32) -> bool,
    ) -> bool {
        if to <= self.base {
            return false;
        }
        let limit = to.min(self.base + SLOTS as i64);
        let Some(k) = self.first_occupied(self.base, limit) else {
            self.set_base(to, ctx, keep);
            return false;
        };
        let s = slot(k);
        self.occupied[s / 64] &= !(1 << (s % 64));
        let mut bucket = std::mem::take(&mut self.buckets[s]);
        self.in_buckets -= bucket.len();
        // Room for the whole bucket at once: a bucket whose timers fire (not the common stale
        // ones) grows the heap by one allocation, not a doubling chain.
        self.near.reserve(bucket.len());
        for &(at, id) in &bucket {
            if keep(ctx, at, id) {
                self.near.push(Reverse((at, id)));
            }
        }
        // Its storage goes round to the next bucket to fill (`spare`).
        bucket.clear();
        self.spare.push(bucket);
        self.set_base(k, ctx, keep);
        true
    }

    /// Every tick up to `base` has moved into `near`; what comes within the horizon moves
    /// from the far heap into the wheel (so that every far entry stays later than every
    /// bucket's).
    fn set_base<C: ?Sized>(
        &mut self,
        base: i64,
        ctx: &mut C,
        keep: &impl Fn(&mut C, Instant, u32) -> bool,
    ) {
        self.base = base;
        while let Some(Reverse((at, id))) = self.far.peek().copied() {
            if tick(at) - self.base > SLOTS as i64 {
                break;
            }
            self.far.pop();
            if keep(ctx, at, id) {
                self.push(at, id);
            }
        }
    }

    /// The first non-empty bucket's tick in `(after, upto]` (a span of at most `SLOTS`).
    fn first_occupied(&self, after: i64, upto: i64) -> Option<i64> {
        let mut k = after + 1;
        while k <= upto {
            let s = slot(k);
            let bits = self.occupied[s / 64] >> (s % 64);
            if bits != 0 {
                let found = k + bits.trailing_zeros() as i64;
                return (found <= upto).then_some(found);
            }
            k += (64 - s % 64) as i64;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn us(n: i64) -> Instant {
        Instant::from_micros(n)
    }

    /// The proptests' check of one pop at `now`: the entry is due and is the model's
    /// earliest, which it leaves; entries the caller does not want (`wanted` false: armed
    /// already due, straight into the exact order) are skipped, as the caller's own check
    /// drops them. `Ok(None)` when nothing is due.
    fn pop_checked(
        w: &mut TimerWheel,
        model: &mut Vec<(i64, u32)>,
        now: i64,
        wanted: fn(u32) -> bool,
    ) -> Result<Option<u32>, proptest::test_runner::TestCaseError> {
        let keep = |_: &mut (), _, id: u32| wanted(id);
        while let Some((t, i)) = w.pop_due(us(now), &mut (), keep) {
            prop_assert!(t.total_micros() <= now);
            if !wanted(i) {
                continue;
            }
            let min = *model.iter().min().expect("model has it");
            prop_assert_eq!((t.total_micros(), i), min);
            model.retain(|e| *e != min);
            return Ok(Some(i));
        }
        Ok(None)
    }

    /// Arm `id` at `at` in the wheel, and in the model if the caller wants it.
    fn push_checked(
        w: &mut TimerWheel,
        model: &mut Vec<(i64, u32)>,
        id: &mut u32,
        at: i64,
        wanted: fn(u32) -> bool,
    ) {
        w.push(us(at), *id);
        if wanted(*id) {
            model.push((at, *id));
        }
        *id += 1;
    }

    /// At `now`: `earliest` is the model's next (`exact`) or no later than it, then every due
    /// timer comes out ([`pop_checked`]) and none is left due.
    fn drain_checked(
        w: &mut TimerWheel,
        model: &mut Vec<(i64, u32)>,
        now: i64,
        wanted: fn(u32) -> bool,
        exact: bool,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        if let Some(min) = model.iter().min() {
            let e = w.earliest().map(|e| e.total_micros());
            if exact {
                prop_assert_eq!(e, Some(min.0));
            } else {
                prop_assert!(e.is_some_and(|e| e <= min.0), "{:?} {:?}", e, min);
            }
        }
        while pop_checked(w, model, now, wanted)?.is_some() {}
        prop_assert!(model.iter().all(|e| e.0 > now));
        Ok(())
    }

    /// Every timer wanted; and every one but each third (`drops_unwanted_and_keeps_the_order`).
    const ALL: fn(u32) -> bool = |_| true;
    const WANTED: fn(u32) -> bool = |id| !id.is_multiple_of(3);

    #[test]
    fn due_in_exact_order_across_buckets_and_the_horizon() {
        let mut w = TimerWheel::default();
        let times = [
            5_000_000, 1_500, 1_000, 1_001, 30_000_000, 4_000, 9_000_000, 1_000,
        ];
        for (i, t) in times.iter().enumerate() {
            w.push(us(*t), i as u32);
        }
        assert_eq!(w.len(), times.len());
        let keep = |_: &mut (), _, _| true;
        assert_eq!(w.pop_due(us(999), &mut (), keep), None);
        let mut fired = Vec::new();
        while let Some((t, id)) = w.pop_due(us(40_000_000), &mut (), keep) {
            fired.push((t.total_micros(), id));
        }
        let mut want: Vec<(i64, u32)> = times
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, i as u32))
            .collect();
        want.sort();
        assert_eq!(fired, want);
        assert_eq!(w.len(), 0);
        assert_eq!(w.earliest(), None);
    }

    #[test]
    fn entries_not_kept_are_dropped_when_their_bucket_comes() {
        let mut w = TimerWheel::default();
        w.push(us(10_000), 1);
        w.push(us(10_100), 2);
        w.push(us(20_000_000), 3);
        let keep = |_: &mut (), _, id| id != 2 && id != 3;
        assert_eq!(w.pop_due(us(10_500), &mut (), keep), Some((us(10_000), 1)));
        assert_eq!(w.pop_due(us(10_500), &mut (), keep), None);
        assert_eq!(w.len(), 1, "the far one waits");
        assert_eq!(w.pop_due(us(30_000_000), &mut (), keep), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn earliest_is_exact_in_a_bucket_and_beyond_the_horizon() {
        let mut w = TimerWheel::default();
        w.push(us(1_000_900), 8);
        w.push(us(1_000_700), 7);
        assert_eq!(w.earliest(), Some(us(1_000_700)));
        let keep = |_: &mut (), _, _| true;
        // Polled in the bucket's millisecond, before the timers: they enter the exact order.
        assert_eq!(w.pop_due(us(1_000_600), &mut (), keep), None);
        assert_eq!(w.earliest(), Some(us(1_000_700)));
        assert_eq!(
            w.pop_due(us(1_000_700), &mut (), keep),
            Some((us(1_000_700), 7))
        );
        assert_eq!(w.earliest(), Some(us(1_000_900)));
        assert_eq!(
            w.pop_due(us(2_000_000), &mut (), keep),
            Some((us(1_000_900), 8))
        );
        w.push(us(900_000_000), 9);
        assert_eq!(w.earliest(), Some(us(900_000_000)));
    }

    proptest! {
        /// Against a sorted list: whatever the pushes and polls, every timer comes out once,
        /// at its instant or later, never before, in order, and `earliest` is the next one.
        #[test]
        fn matches_a_sorted_list(
            ops in proptest::collection::vec((0u8..3, 0i64..12_000_000), 1..400)
        ) {
            let mut w = TimerWheel::default();
            let mut model: Vec<(i64, u32)> = Vec::new();
            let mut now = 0i64;
            let mut id = 0u32;
            for (op, x) in ops {
                match op {
                    0 | 1 => {
                        let at = now + x / if op == 0 { 1 } else { 1000 };
                        push_checked(&mut w, &mut model, &mut id, at, ALL);
                    }
                    _ => {
                        now += x / 100;
                        drain_checked(&mut w, &mut model, now, ALL, true)?;
                    }
                }
            }
            prop_assert_eq!(w.len(), model.len());
        }

        /// As the interface uses it: a poll pops only some of what is due and arms new timers
        /// between pops (`on_timer` re-arms), so pushes land while the base lags behind the
        /// clock, some beyond its horizon and some already due; clock jumps of up to 12 s
        /// carry the base past the horizon. Every timer still comes out once, in order, never
        /// early, and `earliest` is the next one.
        #[test]
        fn partial_drains_with_rearming_keep_the_order(
            ops in proptest::collection::vec((0u8..4, 0i64..12_000_000), 1..300)
        ) {
            let mut w = TimerWheel::default();
            let mut model: Vec<(i64, u32)> = Vec::new();
            let mut now = 0i64;
            let mut id = 0u32;
            for (op, x) in ops {
                match op {
                    0 | 1 => {
                        let at = now + x / if op == 0 { 1 } else { 1000 };
                        push_checked(&mut w, &mut model, &mut id, at, ALL);
                    }
                    2 => {
                        now += x / if x % 2 == 0 { 100 } else { 1 };
                        for _ in 0..(x % 4) {
                            if pop_checked(&mut w, &mut model, now, ALL)?.is_none() {
                                break;
                            }
                            // Re-armed from the timer, some already due, some far.
                            let at = now - 1000 + (x % 5_000_000) / (1 + x % 7);
                            push_checked(&mut w, &mut model, &mut id, at, ALL);
                        }
                    }
                    _ => drain_checked(&mut w, &mut model, now, ALL, true)?,
                }
            }
            prop_assert_eq!(w.len(), model.len());
        }

        /// With entries the caller no longer wants (every third), dropped as their bucket
        /// comes due: the wanted ones still come out once each, in order, never early, and
        /// `earliest` is never later than the next wanted one.
        #[test]
        fn drops_unwanted_and_keeps_the_order(
            ops in proptest::collection::vec((0u8..3, 0i64..12_000_000), 1..400)
        ) {
            let mut w = TimerWheel::default();
            let mut model: Vec<(i64, u32)> = Vec::new();
            let mut now = 0i64;
            let mut id = 0u32;
            for (op, x) in ops {
                match op {
                    0 | 1 => {
                        let at = now + x / if op == 0 { 1 } else { 1000 };
                        push_checked(&mut w, &mut model, &mut id, at, WANTED);
                    }
                    _ => {
                        now += x / 100;
                        drain_checked(&mut w, &mut model, now, WANTED, false)?;
                    }
                }
            }
        }
    }
}
