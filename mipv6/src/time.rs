//! Time as the sans-IO code sees it: a plain value handed in by the caller.
//!
//! This is the project's one instant type: `ds_stack` re-exports it as `ds_stack::Instant`
//! (the stack depends on this crate, not the other way round).

use serde::{Deserialize, Serialize};
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, in microseconds since an arbitrary epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Instant {
    micros: i64,
}

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant { micros: 0 };

    /// An instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Instant { micros }
    }

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Instant {
            micros: millis.saturating_mul(1000),
        }
    }

    /// An instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Instant {
            micros: secs.saturating_mul(1_000_000),
        }
    }

    /// Microseconds since the epoch.
    pub const fn total_micros(self) -> i64 {
        self.micros
    }

    /// Milliseconds since the epoch (truncated).
    pub const fn total_millis(self) -> i64 {
        self.micros / 1000
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        if self.micros <= earlier.micros {
            Duration::ZERO
        } else {
            Duration::from_micros(self.micros.abs_diff(earlier.micros))
        }
    }
}

fn dur_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant {
            micros: self.micros.saturating_add(dur_micros(rhs)),
        }
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant {
            micros: self.micros.saturating_sub(dur_micros(rhs)),
        }
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
        write!(
            f,
            "{}.{:06}s",
            self.micros / 1_000_000,
            (self.micros % 1_000_000).abs()
        )
    }
}
