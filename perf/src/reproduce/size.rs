//! The two sizes of `dsperf reproduce` (`--quick`, `--full`) and the full run's duration
//! estimated from a run's measured wall times.
//!
//! A full run takes hours, so its duration is predicted rather than waited for: each
//! experiment's measured wall time is split into a fixed cost per unit (a grid point or a
//! download) and the time a model says the unit needs on the wire (round trips at the
//! configured latencies, a download at the configured bandwidth, the donor's wait), and the
//! same model is summed over the full run's units.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How much each experiment measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Size {
    /// Experiment 1: the Lat_SS and Lat_CS grid, ms.
    pub grid_ms: Vec<f64>,
    /// Experiment 2: downloads per point.
    pub decomp_sessions: u32,
    /// Experiment 2 with latencies: (Lat_CS, Lat_SS) points, ms.
    pub sweep_points: Vec<(f64, f64)>,
    /// Experiment 2 with latencies: downloads per point.
    pub sweep_sessions: u32,
    /// Experiment 3: the donor's waits, ms.
    pub state_waits_ms: Vec<u64>,
    /// Experiment 3: downloads per point.
    pub state_sessions: u32,
}

impl Size {
    /// `--quick`: minutes.
    pub fn quick() -> Size {
        Size {
            grid_ms: vec![0.0, 10.0, 25.0],
            decomp_sessions: 3,
            sweep_points: vec![(0.0, 0.0), (0.0, 20.0), (20.0, 0.0)],
            sweep_sessions: 3,
            state_waits_ms: (0..=1000).step_by(100).collect(),
            state_sessions: 1,
        }
    }

    /// `--full`: the seed's grid and 25 ms steps, 100 downloads per handoff point (10 per
    /// Figure 2 point).
    pub fn full() -> Size {
        Size {
            grid_ms: vec![0.0, 5.0, 10.0, 25.0, 50.0, 100.0],
            decomp_sessions: 100,
            sweep_points: vec![
                (0.0, 0.0),
                (0.0, 10.0),
                (0.0, 50.0),
                (10.0, 0.0),
                (50.0, 0.0),
                (25.0, 25.0),
            ],
            sweep_sessions: 100,
            state_waits_ms: (0..=1000).step_by(25).collect(),
            state_sessions: 10,
        }
    }

    /// `--sessions N` instead of each experiment's own count.
    pub fn with_sessions(mut self, n: Option<u32>) -> Size {
        if let Some(n) = n {
            (
                self.decomp_sessions,
                self.sweep_sessions,
                self.state_sessions,
            ) = (n, n, n);
        }
        self
    }
}

/// What else shapes the run's length: round trips per access point, how many (path, mode,
/// drain, bandwidth) points experiment 2 has, how many modes the sweep, Figure 2's bandwidths
/// and object size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shape {
    /// Round trips per access-latency point.
    pub rounds: u32,
    /// Experiment 2's points.
    pub decomp_points: usize,
    /// Steering modes in the sweep.
    pub sweep_modes: usize,
    /// Figure 2's bandwidths, Mbit/s.
    pub state_mbit: Vec<f64>,
    /// Object size, bytes.
    pub size: u64,
}

/// Per unit: the measured fixed cost `t0` found from `wall = Σ (t0 + wire)` over the run's
/// units, then `Σ (t0 + wire)` over the other run's units. Seconds.
fn scaled(wall: f64, done: &[f64], other: &[f64]) -> f64 {
    if done.is_empty() {
        return 0.0;
    }
    let t0 = ((wall - done.iter().sum::<f64>()) / done.len() as f64).max(0.0);
    other.iter().map(|w| t0 + w).sum()
}

/// A 1 MB download over an unshaped path of round trip `rtt_s` with a handoff: the handshake,
/// slow start's rounds (log2(1 MB / 14 kB) ≈ 6) and the handoff's few round trips.
const ROUND_TRIPS_PER_DOWNLOAD: f64 = 12.0;

/// Seconds each experiment of `size` would take, given this run's `walls` (seconds per
/// experiment: `access`, `decomp`, `latency`, `state`), its `done` size and `shape`.
pub fn estimate(
    walls: &BTreeMap<String, f64>,
    done: &Size,
    shape: &Shape,
    size: &Size,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    // Experiment 1: per point `rounds` round trips of 2·CS (+ 2·SS in configuration 2).
    let access = |s: &Size| -> Vec<f64> {
        let mut v = Vec::new();
        for config in [1, 2] {
            for &ss in &s.grid_ms {
                for &cs in &s.grid_ms {
                    let rtt = 2.0 * cs + if config == 2 { 2.0 * ss } else { 0.0 };
                    v.push(f64::from(shape.rounds) * rtt / 1000.0);
                }
            }
        }
        v
    };
    // Experiment 2: the same points, more downloads each; no wire model (so the time per
    // download carries over whole).
    let decomp = |s: &Size| vec![0.0; shape.decomp_points * s.decomp_sessions as usize];
    let sweep = |s: &Size| -> Vec<f64> {
        let mut v = Vec::new();
        for _ in 0..shape.sweep_modes {
            for &(cs, ss) in &s.sweep_points {
                let rtt = 2.0 * (cs + ss) / 1000.0;
                v.extend(std::iter::repeat_n(
                    ROUND_TRIPS_PER_DOWNLOAD * rtt,
                    s.sweep_sessions as usize,
                ));
            }
        }
        v
    };
    // Experiment 3: per download, the object at the bandwidth and the donor's wait; the
    // drain policies' two extra points per bandwidth.
    let state = |s: &Size| -> Vec<f64> {
        let mut v = Vec::new();
        for &mbit in &shape.state_mbit {
            let wire = shape.size as f64 * 8.0 / (mbit * 1e6);
            let waits = s.state_waits_ms.iter().map(|&w| w as f64 / 1000.0);
            for w in waits.chain([0.0, 0.0]) {
                v.extend(std::iter::repeat_n(wire + w, s.state_sessions as usize));
            }
        }
        v
    };
    type Units<'a> = &'a dyn Fn(&Size) -> Vec<f64>;
    let experiments: [(&str, Units); 4] = [
        ("access", &access),
        ("decomp", &decomp),
        ("latency", &sweep),
        ("state", &state),
    ];
    for (name, units) in experiments {
        if let Some(&wall) = walls.get(name) {
            out.insert(name.to_string(), scaled(wall, &units(done), &units(size)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            rounds: 100,
            decomp_points: 10,
            sweep_modes: 2,
            state_mbit: vec![2.0, 1.5, 1.0],
            size: 1_000_000,
        }
    }

    #[test]
    fn estimating_the_run_itself_gives_its_wall_times() {
        let walls: BTreeMap<String, f64> = [("access", 100.0), ("decomp", 300.0), ("state", 200.0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let q = Size::quick();
        let e = estimate(&walls, &q, &shape(), &q);
        for (k, v) in &walls {
            // (`state`'s wire model exceeds 200 s at 1 Mbit/s: t0 is clamped at zero.)
            if k != "state" {
                assert!((e[k] - v).abs() < 1e-6, "{k}: {} vs {v}", e[k]);
            }
        }
        assert!(!e.contains_key("latency"));
    }

    #[test]
    fn the_full_run_scales_by_units_and_by_wire_time() {
        let walls: BTreeMap<String, f64> =
            [("access", 100.0), ("decomp", 300.0), ("latency", 60.0)]
                .map(|(k, v)| (k.to_string(), v))
                .into();
        let e = estimate(&walls, &Size::quick(), &shape(), &Size::full());
        // 100 downloads per point instead of 3.
        assert!((e["decomp"] - 300.0 * 100.0 / 3.0).abs() < 1e-6);
        // More points, each with more round trips at longer latencies: more than 4×.
        assert!(e["access"] > 4.0 * 100.0, "{}", e["access"]);
        assert!(e["latency"] > 60.0 * 100.0 / 3.0, "{}", e["latency"]);
    }
}
