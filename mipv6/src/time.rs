//! Time as the sans-IO code sees it: a plain value handed in by the caller.
//!
//! This is the project's one instant type: `ds_stack` re-exports it as `ds_stack::Instant`
//! (the stack depends on this crate, not the other way round).

use serde::{Deserialize, Serialize};
use std::num::NonZeroU64;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, in microseconds since an arbitrary epoch.
///
/// Stored so that `Option<Instant>` is 8 bytes, not 16: the microseconds with their sign bit
/// flipped (an order-preserving map from `i64` to `u64`, so the derived order is time's order)
/// in a `NonZeroU64`, whose zero is the niche `None` takes. The one value given up is
/// `i64::MIN` microseconds, which the constructors and arithmetic clamp to the next one (they
/// saturate anyway). A connection's control block holds about a dozen optional instants (its
/// timers), and a connection's state is what a packet touches: 8 bytes each is a cache line
/// less per connection (`dsperf conns`).
///
/// ```
/// use ds_mipv6::Instant;
/// use std::time::Duration;
/// assert_eq!(std::mem::size_of::<Option<Instant>>(), 8);
/// let t = Instant::from_millis(-5);
/// assert!(t < Instant::ZERO && Instant::ZERO < t + Duration::from_millis(6));
/// assert_eq!(Instant::from_micros(i64::MIN), Instant::from_micros(i64::MIN + 1));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "InstantRepr", into = "InstantRepr")]
pub struct Instant {
    bits: NonZeroU64,
}

/// The serialized form, unchanged from when `Instant` held its microseconds as they are.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Instant")]
struct InstantRepr {
    micros: i64,
}

impl From<InstantRepr> for Instant {
    fn from(r: InstantRepr) -> Self {
        Instant::from_micros(r.micros)
    }
}

impl From<Instant> for InstantRepr {
    fn from(t: Instant) -> Self {
        InstantRepr {
            micros: t.total_micros(),
        }
    }
}

const SIGN: u64 = 1 << 63;

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant::from_micros(0);

    /// An instant `micros` microseconds after the epoch (`i64::MIN` is taken as the next value).
    pub const fn from_micros(micros: i64) -> Self {
        let m = if micros == i64::MIN {
            i64::MIN + 1
        } else {
            micros
        };
        match NonZeroU64::new(m as u64 ^ SIGN) {
            Some(bits) => Instant { bits },
            // Unreachable: only i64::MIN maps to zero.
            None => Instant {
                bits: NonZeroU64::MIN,
            },
        }
    }

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Instant::from_micros(millis.saturating_mul(1000))
    }

    /// An instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Instant::from_micros(secs.saturating_mul(1_000_000))
    }

    /// Microseconds since the epoch.
    pub const fn total_micros(self) -> i64 {
        (self.bits.get() ^ SIGN) as i64
    }

    /// Milliseconds since the epoch (truncated).
    pub const fn total_millis(self) -> i64 {
        self.total_micros() / 1000
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        if self <= earlier {
            Duration::ZERO
        } else {
            Duration::from_micros(self.total_micros().abs_diff(earlier.total_micros()))
        }
    }
}

/// A budget of `per_window` events per `window`, in fixed windows: what answers to
/// unauthenticated input are limited by (RFC 4443 §2.4(f) for ICMPv6 errors, RFC 6275 §9.3.3
/// for Binding Errors), so that a flood costs a constant amount of work and state per packet
/// and its answers stay within the budget. A window starts with the first event after the
/// last one ended.
///
/// ```
/// use ds_mipv6::time::{Budget, Instant};
/// use std::time::Duration;
/// let (sec, t) = (Duration::from_secs(1), Instant::ZERO);
/// let mut b = Budget::new(t);
/// assert!(b.allow(t, 2, sec) && b.allow(t, 2, sec));
/// assert!(!b.allow(t + Duration::from_millis(999), 2, sec));
/// assert!(b.allow(t + sec, 2, sec));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    start: Instant,
    used: u32,
}

impl Budget {
    /// A budget whose first window starts at `now`.
    pub fn new(now: Instant) -> Self {
        Budget {
            start: now,
            used: 0,
        }
    }

    /// Take one event from the budget at `now`: false when `per_window` were taken in the
    /// current window.
    pub fn allow(&mut self, now: Instant, per_window: u32, window: Duration) -> bool {
        if now.saturating_since(self.start) >= window {
            *self = Budget::new(now);
        }
        if self.used >= per_window {
            return false;
        }
        self.used += 1;
        true
    }
}

/// A span of time in whole microseconds, in 32 bits: 0 to about 71.6 minutes, longer spans
/// saturate and sub-microsecond parts are dropped.
///
/// For figures a TCP connection keeps per round-trip time (SRTT, RTTVAR, RTO, HyStart++'s round
/// minima), which our clock measures in microseconds anyway ([`Instant`]) and which stay far
/// below an hour (an RTO cap configured above ~71.6 minutes is cut to it): `Duration` spends
/// 16 bytes on each, and a connection's control block is what every packet reads. Compute in
/// `Duration` ([`Micros::get`], stored back with `From<Duration>`) or in whole microseconds.
///
/// ```
/// use ds_mipv6::time::Micros;
/// use std::time::Duration;
/// assert_eq!(std::mem::size_of::<Option<Micros>>(), 8);
/// let m = Micros::from(Duration::from_nanos(1_500_999));
/// assert_eq!((m.as_micros(), m.get()), (1_500, Duration::from_micros(1_500)));
/// assert_eq!(Micros::from(Duration::from_secs(1 << 40)).as_micros(), u32::MAX);
/// assert_eq!(ds_mipv6::Instant::ZERO + m, ds_mipv6::Instant::from_micros(1_500));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(u32);

impl Micros {
    /// No time.
    pub const ZERO: Micros = Micros(0);

    /// `us` microseconds.
    pub const fn from_micros(us: u32) -> Micros {
        Micros(us)
    }

    /// The whole microseconds.
    pub const fn as_micros(self) -> u32 {
        self.0
    }

    /// As a `Duration`, for arithmetic.
    pub const fn get(self) -> Duration {
        Duration::from_micros(self.0 as u64)
    }
}

impl From<Duration> for Micros {
    fn from(d: Duration) -> Micros {
        Micros(u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
    }
}

impl From<Micros> for Duration {
    fn from(m: Micros) -> Duration {
        m.get()
    }
}

impl std::fmt::Debug for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl Default for Instant {
    fn default() -> Self {
        Instant::ZERO
    }
}

impl std::fmt::Debug for Instant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instant")
            .field("micros", &self.total_micros())
            .finish()
    }
}

fn dur_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant::from_micros(self.total_micros().saturating_add(dur_micros(rhs)))
    }
}

impl Add<Micros> for Instant {
    type Output = Instant;
    fn add(self, rhs: Micros) -> Instant {
        Instant::from_micros(self.total_micros().saturating_add(i64::from(rhs.0)))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant::from_micros(self.total_micros().saturating_sub(dur_micros(rhs)))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl std::fmt::Display for Instant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.total_micros();
        write!(f, "{}.{:06}s", m / 1_000_000, (m % 1_000_000).abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `Instant` was before its niche: its wire form must not change (states move
    /// between nodes of different builds).
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        micros: i64,
    }

    proptest! {
        #[test]
        fn order_arithmetic_and_wire_form_are_those_of_the_microseconds(
            a in (i64::MIN + 1)..=i64::MAX,
            b in (i64::MIN + 1)..=i64::MAX,
            d in 0u64..(1 << 40),
        ) {
            let (x, y) = (Instant::from_micros(a), Instant::from_micros(b));
            prop_assert_eq!(x.total_micros(), a);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            let d = Duration::from_micros(d);
            prop_assert_eq!((x + d).total_micros(), a.saturating_add(d.as_micros() as i64));
            prop_assert_eq!(
                (x - d).total_micros(),
                a.saturating_sub(d.as_micros() as i64).max(i64::MIN + 1)
            );
            let wire = postcard::to_allocvec(&x).unwrap();
            prop_assert_eq!(&wire, &postcard::to_allocvec(&Plain { micros: a }).unwrap());
            prop_assert_eq!(postcard::from_bytes::<Instant>(&wire).unwrap(), x);
        }
    }

    #[test]
    fn the_lowest_microsecond_is_clamped_and_none_costs_nothing() {
        assert_eq!(std::mem::size_of::<Option<Instant>>(), 8);
        let wire = postcard::to_allocvec(&Plain { micros: i64::MIN }).unwrap();
        let t: Instant = postcard::from_bytes(&wire).unwrap();
        assert_eq!(t.total_micros(), i64::MIN + 1);
        assert_eq!(Instant::default(), Instant::ZERO);
        assert_eq!(
            format!("{:?}", Instant::from_micros(-3)),
            "Instant { micros: -3 }"
        );
        assert_eq!(Instant::from_micros(-1_500_000).to_string(), "-1.500000s");
        // The self-describing form names the field as before.
        let t = Instant::from_micros(-3);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"micros":-3}"#);
        assert_eq!(
            serde_json::from_str::<Instant>(r#"{"micros":-3}"#).unwrap(),
            t
        );
    }

    #[test]
    fn arithmetic_saturates_at_both_ends() {
        let d = Duration::from_secs(1);
        let (max, min) = (
            Instant::from_micros(i64::MAX),
            Instant::from_micros(i64::MIN),
        );
        assert_eq!((max + d).total_micros(), i64::MAX);
        assert_eq!((min - d).total_micros(), i64::MIN + 1);
        assert_eq!((Instant::from_micros(i64::MIN + 1) - d), min);
        assert_eq!(
            max.saturating_since(min),
            Duration::from_micros(u64::MAX - 1)
        );
        assert_eq!(min.saturating_since(max), Duration::ZERO);
        assert!(min < Instant::ZERO && Instant::ZERO < max);
        assert_eq!(Instant::from_millis(i64::MIN), min);
        assert_eq!(Instant::from_secs(i64::MAX), max);
    }
}
