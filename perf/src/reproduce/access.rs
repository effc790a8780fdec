//! Experiment 1, server access latency (seed §3.2.1): the UDP echo service on the DS address,
//! 128-byte datagrams, round trips timed by the client.
//!
//! Configuration 1: node 1 serves (home agent 1 tunnels to its own network). Configuration 2:
//! node 1 is not in the service; home agent 1 tunnels to node 2 across the SS path. For each
//! pair (Lat_SS, Lat_CS1) of a grid (Lat_CS2 = Lat_CS1, as in the seed), 100 round trips.
//!
//! The seed found RTT = 2·Lat_CS1 + X (X = 2.13 ms) and 2·Lat_CS1 + 2·Lat_SS + Y (Y =
//! 3.61 ms): with MIPL its node answered through the home agent's reverse tunnel. Ours answer
//! straight from the node to the client (the DS address as source), so configuration 2's
//! reply takes the CS2 path instead of SS + CS1: RTT = Lat_CS1 + Lat_SS + Lat_CS2 + Y. The fit
//! takes each model's slopes as given and reports the intercept (X, Y) with its spread over
//! the grid, and checks the slopes with a free least-squares fit.

use super::testbed::{ip, Fig1, Paths, DS, ECHO_PORT};
use crate::stack::report::percentile;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// Lat_SS values, ms.
    pub ss_ms: Vec<f64>,
    /// Lat_CS1 (= Lat_CS2) values, ms.
    pub cs_ms: Vec<f64>,
    /// Round trips per point.
    pub rounds: u32,
}

/// One grid point of one configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// 1 or 2.
    pub config: u8,
    /// Lat_SS, ms.
    pub ss_ms: f64,
    /// Lat_CS1 = Lat_CS2, ms.
    pub cs_ms: f64,
    /// Mean round-trip time, ms (the seed averaged).
    pub mean_ms: f64,
    /// Median, ms.
    pub median_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Round trips answered / sent.
    pub answered: u32,
    /// Sent.
    pub sent: u32,
    /// What the path model predicts without the intercept, ms.
    pub model_ms: f64,
}

/// The fitted intercept of one configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fit {
    /// 1 or 2.
    pub config: u8,
    /// The model, in words.
    pub model: String,
    /// Mean of (mean RTT − model) over the grid, ms: our X or Y.
    pub intercept_ms: f64,
    /// Smallest and largest (mean RTT − model), ms.
    pub min_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Standard deviation over the grid, ms.
    pub sd_ms: f64,
    /// Free least-squares slopes on (Lat_CS, Lat_SS) — 2 and 0 (config 1), 2 and 1 (config 2)
    /// if the model holds.
    pub slopes: (f64, f64),
    /// The seed's value, ms.
    pub seed_ms: f64,
}

/// The experiment's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Options.
    pub options: Options,
    /// Every point.
    pub points: Vec<Point>,
    /// X (config 1) and Y (config 2).
    pub fits: Vec<Fit>,
}

/// `rounds` echoes of 128 bytes from the client to the DS address; RTTs in ms.
fn echo_rtts(bed: &Fig1, rounds: u32, timeout: Duration) -> Result<(Vec<f64>, u32)> {
    let dst = SocketAddrV6::new(ip(DS), ECHO_PORT, 0, 0);
    bed.client.run(|| -> Result<(Vec<f64>, u32)> {
        let s = UdpSocket::bind("[::]:0")?;
        s.connect(dst)?;
        s.set_read_timeout(Some(timeout))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        let mut msg = [0u8; 128];
        for i in 0..rounds {
            msg[..4].copy_from_slice(&i.to_be_bytes());
            let t = Instant::now();
            s.send(&msg)?;
            // Skip late answers to earlier rounds.
            loop {
                match s.recv(&mut buf) {
                    Ok(n) if n == msg.len() && buf[..4] == msg[..4] => {
                        out.push(t.elapsed().as_secs_f64() * 1e3);
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        let n = out.len() as u32;
        Ok((out, n))
    })
}

/// Least squares y = a·x1 + b·x2 + c; returns (a, b).
fn slopes(pts: &[(f64, f64, f64)]) -> (f64, f64) {
    // Normal equations on centred data.
    let n = pts.len() as f64;
    if n < 3.0 {
        return (f64::NAN, f64::NAN);
    }
    let m = |f: &dyn Fn(&(f64, f64, f64)) -> f64| pts.iter().map(f).sum::<f64>() / n;
    let (m1, m2, my) = (m(&|p| p.0), m(&|p| p.1), m(&|p| p.2));
    let (mut s11, mut s22, mut s12, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (x1, x2, y) in pts {
        let (a, b, c) = (x1 - m1, x2 - m2, y - my);
        s11 += a * a;
        s22 += b * b;
        s12 += a * b;
        s1y += a * c;
        s2y += b * c;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() < 1e-12 {
        return (f64::NAN, f64::NAN);
    }
    ((s1y * s22 - s2y * s12) / det, (s2y * s11 - s1y * s12) / det)
}

/// Runs the experiment on `bed` (built, no daemons yet).
pub fn run(bed: &mut Fig1, o: &Options, progress: &dyn Fn(&str)) -> Result<Report> {
    ensure!(
        !o.ss_ms.is_empty() && !o.cs_ms.is_empty() && o.rounds > 0,
        "the grid and the round count must not be empty"
    );
    let mut points = Vec::new();
    for config in [1u8, 2] {
        // Configuration 1: node 1 holds the DS address's binding; 2: node 1 is not in the
        // service, home agent 1 tunnels to node 2.
        let serving = usize::from(config - 1);
        bed.set_paths(&Paths::default())?;
        bed.start_ha(serving)?;
        bed.stop_node(1 - serving)?;
        let args = bed.node_args(serving, ds_handoff::Mode::Transparent);
        bed.start_node(serving, &args)?;
        super::testbed::with_logs(bed, bed.wait_echo())?;
        for &ss in &o.ss_ms {
            for &cs in &o.cs_ms {
                progress(&format!(
                    "access latency: configuration {config}, Lat_SS {ss} ms, Lat_CS {cs} ms, {} round trips",
                    o.rounds
                ));
                bed.set_paths(&Paths {
                    cs1_ms: cs,
                    cs2_ms: cs,
                    ss_ms: ss,
                    upstream_mbit: None,
                })?;
                let expect = 2.0 * cs + ss;
                let timeout = Duration::from_secs_f64((expect * 4.0 + 500.0) / 1e3);
                // A few unrecorded round trips: neighbour caches, the emulator's switch table.
                echo_rtts(bed, 3, timeout)?;
                let (rtts, answered) = echo_rtts(bed, o.rounds, timeout)?;
                ensure!(
                    answered > 0,
                    "no echo answered at configuration {config}, SS {ss} ms, CS {cs} ms"
                );
                let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
                points.push(Point {
                    config,
                    ss_ms: ss,
                    cs_ms: cs,
                    mean_ms: mean,
                    median_ms: percentile(&rtts, 0.5),
                    p99_ms: percentile(&rtts, 0.99),
                    answered,
                    sent: o.rounds,
                    model_ms: if config == 1 { 2.0 * cs } else { 2.0 * cs + ss },
                });
            }
        }
        bed.stop_node(serving)?;
    }
    let fits = [1u8, 2]
        .iter()
        .map(|&config| {
            let pts: Vec<&Point> = points.iter().filter(|p| p.config == config).collect();
            let res: Vec<f64> = pts.iter().map(|p| p.mean_ms - p.model_ms).collect();
            let mean = res.iter().sum::<f64>() / res.len().max(1) as f64;
            let sd = (res.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
                / res.len().max(1) as f64)
                .sqrt();
            let xy: Vec<(f64, f64, f64)> =
                pts.iter().map(|p| (p.cs_ms, p.ss_ms, p.mean_ms)).collect();
            Fit {
                config,
                model: if config == 1 {
                    "RTT = 2·Lat_CS1 + X".into()
                } else {
                    "RTT = Lat_CS1 + Lat_SS + Lat_CS2 + Y (reply straight to the client)".into()
                },
                intercept_ms: mean,
                min_ms: res.iter().copied().fold(f64::INFINITY, f64::min),
                max_ms: res.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                sd_ms: sd,
                slopes: slopes(&xy),
                seed_ms: if config == 1 { 2.13 } else { 3.61 },
            }
        })
        .collect();
    Ok(Report {
        options: o.clone(),
        points,
        fits,
    })
}

/// The report as text.
pub fn table(r: &Report) -> String {
    let mut s = String::from("server access latency (seed §3.2.1): UDP echo, 128 bytes\n");
    s.push_str(&format!(
        "{:>6} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
        "config", "Lat_SS", "Lat_CS", "model", "mean", "median", "p99", "answered"
    ));
    for p in &r.points {
        s.push_str(&format!(
            "{:>6} {:>5.1} ms {:>5.1} ms {:>7.3} ms {:>7.3} ms {:>7.3} ms {:>7.3} ms {:>5}/{}\n",
            p.config,
            p.ss_ms,
            p.cs_ms,
            p.model_ms,
            p.mean_ms,
            p.median_ms,
            p.p99_ms,
            p.answered,
            p.sent
        ));
    }
    for f in &r.fits {
        s.push_str(&format!(
            "configuration {}: {} — {} = {:.3} ms (range {:.3}–{:.3}, sd {:.3}) against the seed's {:.2} ms ({:.3}×); free fit slopes: {:.3} per Lat_CS, {:.3} per Lat_SS\n",
            f.config,
            f.model,
            if f.config == 1 { "X" } else { "Y" },
            f.intercept_ms,
            f.min_ms,
            f.max_ms,
            f.sd_ms,
            f.seed_ms,
            f.intercept_ms / f.seed_ms,
            f.slopes.0,
            f.slopes.1
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::slopes;

    #[test]
    fn least_squares_recovers_the_slopes() {
        let mut pts = Vec::new();
        for a in [0.0, 10.0, 25.0] {
            for b in [0.0, 5.0, 20.0] {
                pts.push((a, b, 2.0 * a + b + 0.3));
            }
        }
        let (x, y) = slopes(&pts);
        assert!((x - 2.0).abs() < 1e-9 && (y - 1.0).abs() < 1e-9, "{x} {y}");
    }
}
