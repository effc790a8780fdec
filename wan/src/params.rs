//! Link parameters and their text form (`delay=10ms,jitter=1ms,rate=2mbit,loss=0.1%`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What one direction of an emulated link does to the frames that cross it.
///
/// Text form: comma-separated `key=value` pairs, any subset, in any order:
/// `delay` and `jitter` (`0`, `250us`, `10ms`, `1.5s`), `rate` (bit/s: `64000`, `500kbit`,
/// `2mbit`, `1gbit`; `0` = unlimited), `burst` (bytes the token bucket may save up while
/// idle), `loss` (`0.1%` or `0.001`), `limit` (frames waiting for the rate, drop-tail).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// One-way delay added to every frame (after serialization at `rate`).
    pub delay: Duration,
    /// Each frame's delay is drawn uniformly from `delay ± jitter` (never below zero); frames
    /// still leave in order, as on a real link, so jitter never reorders.
    pub jitter: Duration,
    /// Bandwidth in bits per second of Ethernet frame bytes (header included, no preamble,
    /// FCS or gap); 0 = unlimited.
    pub rate_bps: u64,
    /// Token bucket depth in bytes: what an idle link may send back to back at once.
    pub burst: u32,
    /// Probability of dropping a frame, independently per frame, in [0, 1].
    pub loss: f64,
    /// Frames that may wait for the rate; more are dropped (tail drop).
    pub limit: usize,
}

impl Default for LinkParams {
    /// A transparent link: no delay, no rate limit, no loss; 1,000 frames of queue (the
    /// default of Linux's netem) and one full-size frame of burst.
    fn default() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: 0,
            burst: 1514,
            loss: 0.0,
            limit: 1000,
        }
    }
}

/// A parameter string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link parameter {key:?}: {msg}")]
pub struct ParamError {
    /// The key (or the whole item when it has no `=`).
    pub key: String,
    /// What is wrong.
    pub msg: String,
}

fn err(key: &str, msg: impl Into<String>) -> ParamError {
    ParamError {
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Splits `12.5ms` into (12.5, "ms").
fn number_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, u) = s.split_at(at);
    let n: f64 = n.parse().ok()?;
    n.is_finite().then(|| (n, u.trim().to_ascii_lowercase()))
}

/// `0`, `250us`, `10ms`, `1.5s` (a bare number is milliseconds, as in `ping`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, u) = number_unit(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 10ms)"))?;
    let secs = match u.as_str() {
        "" | "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "s" => n,
        _ => return Err(format!("{s:?}: unknown unit {u:?} (ns, us, ms, s)")),
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 1 hour)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `64000`, `500kbit`, `2mbit`, `1.5mbps`, `1gbit` in bits per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (n, u) = number_unit(s).ok_or_else(|| format!("{s:?} is not a rate (e.g. 2mbit)"))?;
    let mult = match u.as_str() {
        "" | "bit" | "bps" => 1.0,
        "k" | "kbit" | "kbps" => 1e3,
        "m" | "mbit" | "mbps" => 1e6,
        "g" | "gbit" | "gbps" => 1e9,
        _ => return Err(format!("{s:?}: unknown unit {u:?} (bit, kbit, mbit, gbit)")),
    };
    let bps = n * mult;
    if !(0.0..=1e12).contains(&bps) {
        return Err(format!("{s:?} is out of range (0 to 1 Tbit/s)"));
    }
    Ok(bps.round() as u64)
}

/// `0.1%` or `0.001`.
pub fn parse_loss(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let p = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a probability (e.g. 0.1% or 0.001)"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{s:?} is not in [0, 1]"));
    }
    Ok(p)
}

impl LinkParams {
    /// Applies `key=value` items (see the type's documentation) over `self`.
    pub fn apply(&mut self, spec: &str) -> Result<(), ParamError> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| err(item, "expected key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "delay" => self.delay = parse_duration(v).map_err(|m| err(k, m))?,
                "jitter" => self.jitter = parse_duration(v).map_err(|m| err(k, m))?,
                "rate" => self.rate_bps = parse_rate(v).map_err(|m| err(k, m))?,
                "loss" => self.loss = parse_loss(v).map_err(|m| err(k, m))?,
                "burst" => {
                    self.burst = v
                        .parse()
                        .map_err(|_| err(k, format!("{v:?} is not a byte count")))?
                }
                "limit" => {
                    self.limit = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| err(k, format!("{v:?} is not a positive frame count")))?
                }
                _ => {
                    return Err(err(
                        k,
                        "unknown key (delay, jitter, rate, burst, loss, limit)",
                    ))
                }
            }
        }
        Ok(())
    }
}

impl FromStr for LinkParams {
    type Err = ParamError;

    fn from_str(s: &str) -> Result<Self, ParamError> {
        let mut p = LinkParams::default();
        p.apply(s)?;
        Ok(p)
    }
}

impl fmt::Display for LinkParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={}us,jitter={}us,rate={},burst={},loss={},limit={}",
            self.delay.as_micros(),
            self.jitter.as_micros(),
            self.rate_bps,
            self.burst,
            self.loss,
            self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_round_trips() {
        let p: LinkParams = "delay=10ms, jitter=500us,rate=2mbit,burst=3000,loss=0.5%,limit=50"
            .parse()
            .unwrap();
        assert_eq!(p.delay, Duration::from_millis(10));
        assert_eq!(p.jitter, Duration::from_micros(500));
        assert_eq!(p.rate_bps, 2_000_000);
        assert_eq!(p.burst, 3000);
        assert!((p.loss - 0.005).abs() < 1e-12);
        assert_eq!(p.limit, 50);
        assert_eq!(p.to_string().parse::<LinkParams>().unwrap(), p);
        assert_eq!("".parse::<LinkParams>().unwrap(), LinkParams::default());
        assert_eq!(parse_rate("1.5mbps").unwrap(), 1_500_000);
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_millis(7));
    }

    #[test]
    fn mistakes_name_the_key() {
        for (spec, key) in [
            ("delay=10parsecs", "delay"),
            ("rate=-1", "rate"),
            ("loss=150%", "loss"),
            ("limit=0", "limit"),
            ("colour=red", "colour"),
            ("delay", "delay"),
            ("jitter=NaNms", "jitter"),
        ] {
            let e = spec.parse::<LinkParams>().unwrap_err();
            assert_eq!(e.key, key, "{spec}: {e}");
        }
    }
}
