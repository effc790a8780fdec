//! Experiment 3, state transfer optimisation (seed §3.2.3, Figure 2): the donor waits a given
//! time after its last send before it freezes the connection (`dsnode --drain wait`), from 0
//! to 1,000 ms; the client-perceived handoff time (from the last data segment before the
//! handoff's boundary to the first after it, on the client's interface) per wait, at three
//! upstream bandwidths. Our drain policies are their own points per bandwidth: `acked`
//! (freeze once the client has acknowledged everything, soliciting its ACK) and `adaptive`
//! (the same, but freeze as soon as the client's rate of acknowledgements shows the rest
//! cannot drain before a deadline: the largest wait of the sweep).
//!
//! The seed found the time falls as the wait lets the send buffer drain, reaches its minimum
//! when the socket is extracted right after the last ACK (a ~90-byte state), then grows with
//! the wait itself.

use super::decomp::{handoffs, write_object};
use super::testbed::{Fig1, Paths};
use crate::stack::report::Stat;
use anyhow::{ensure, Result};
use ds_handoff::Mode;
use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// Upstream bandwidths, Mbit/s.
    pub bandwidths: Vec<f64>,
    /// Donor waits, ms.
    pub waits_ms: Vec<u64>,
    /// Downloads per point.
    pub sessions: u32,
    /// Object size, bytes.
    pub size: u64,
    /// Bytes node 1 serves before the handoff.
    pub handoff_at: u64,
}

/// One point of a curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// The donor's wait, ms (`None`: the `acked` policy).
    pub wait_ms: Option<u64>,
    /// Client-perceived handoff time, ms.
    pub client_ms: Option<Stat>,
    /// Its 99th percentile (nearest rank), ms.
    pub client_p99_ms: Option<f64>,
    /// State moved, bytes.
    pub state_bytes: Option<Stat>,
    /// Drain (the wait, or the time until acknowledged), ms.
    pub drain_ms: Option<Stat>,
}

/// One bandwidth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    /// Upstream bandwidth, Mbit/s.
    pub mbit: f64,
    /// Per wait.
    pub points: Vec<Point>,
    /// The `acked` policy.
    pub acked: Point,
    /// The `adaptive` policy, its deadline the sweep's largest wait (absent in results from
    /// before it was measured).
    #[serde(default)]
    pub adaptive: Option<Point>,
}

/// The experiment's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Options.
    pub options: Options,
    /// Per bandwidth.
    pub curves: Vec<Curve>,
}

/// The adaptive drain's deadline: the sweep's largest wait.
pub fn adaptive_deadline_ms(o: &Options) -> u64 {
    o.waits_ms.iter().copied().max().unwrap_or(0)
}

fn point(wait_ms: Option<u64>, s: &[super::decomp::Session]) -> Point {
    Point {
        wait_ms,
        client_ms: Stat::of(
            s.iter()
                .filter_map(|x| x.report.client_gap_us.map(|g| g / 1000.0))
                .collect(),
        ),
        client_p99_ms: super::decomp::p99(
            s.iter()
                .filter_map(|x| x.report.client_gap_us.map(|g| g / 1000.0)),
        ),
        state_bytes: Stat::of(s.iter().map(|x| x.report.state_bytes as f64).collect()),
        drain_ms: Stat::of(s.iter().map(|x| x.report.drain_us / 1000.0).collect()),
    }
}

/// Runs the experiment on `bed` (built, no daemons yet).
pub fn run(bed: &mut Fig1, o: &Options, progress: &dyn Fn(&str)) -> Result<Report> {
    ensure!(
        o.sessions > 0 && !o.bandwidths.is_empty() && !o.waits_ms.is_empty(),
        "sessions, bandwidths and waits must not be empty"
    );
    write_object(bed, o.size)?;
    let mut curves = Vec::new();
    for &mbit in &o.bandwidths {
        let paths = Paths {
            upstream_mbit: Some(mbit),
            ..Paths::default()
        };
        let mut points = Vec::new();
        for &w in &o.waits_ms {
            progress(&format!(
                "state transfer: {mbit} Mbit/s, donor waits {w} ms, {} downloads",
                o.sessions
            ));
            let args = ["--drain", "wait", "--drain-deadline-ms", &w.to_string()].map(String::from);
            let s = handoffs(
                bed,
                &paths,
                &args,
                Mode::Transparent,
                o.sessions,
                o.size,
                o.handoff_at,
            )?;
            points.push(point(Some(w), &s));
        }
        progress(&format!("state transfer: {mbit} Mbit/s, drain acked"));
        let args = ["--drain", "acked"].map(String::from);
        let s = handoffs(
            bed,
            &paths,
            &args,
            Mode::Transparent,
            o.sessions,
            o.size,
            o.handoff_at,
        )?;
        let acked = point(None, &s);
        let deadline = adaptive_deadline_ms(o);
        progress(&format!(
            "state transfer: {mbit} Mbit/s, drain adaptive (deadline {deadline} ms)"
        ));
        let args = [
            "--drain",
            "adaptive",
            "--drain-deadline-ms",
            &deadline.to_string(),
        ]
        .map(String::from);
        let s = handoffs(
            bed,
            &paths,
            &args,
            Mode::Transparent,
            o.sessions,
            o.size,
            o.handoff_at,
        )?;
        curves.push(Curve {
            mbit,
            points,
            acked,
            adaptive: Some(point(None, &s)),
        });
    }
    Ok(Report {
        options: o.clone(),
        curves,
    })
}

/// The report as text: per bandwidth, the client-perceived time per wait (medians).
pub fn table(r: &Report) -> String {
    let mut s = String::from(
        "state transfer optimisation (seed §3.2.3, Figure 2): client-perceived handoff time, \
         ms (median), and the state moved, bytes\n",
    );
    s.push_str(&format!("{:>10}", "wait ms"));
    for c in &r.curves {
        s.push_str(&format!("{:>24}", format!("{} Mbit/s", c.mbit)));
    }
    s.push('\n');
    let cell = |p: &Point| match (&p.client_ms, &p.state_bytes) {
        (Some(c), Some(b)) => format!("{:.1} ({:.0} B)", c.median, b.median),
        _ => "—".into(),
    };
    for (i, w) in r.options.waits_ms.iter().enumerate() {
        s.push_str(&format!("{w:>10}"));
        for c in &r.curves {
            s.push_str(&format!("{:>24}", c.points.get(i).map_or("—".into(), cell)));
        }
        s.push('\n');
    }
    for c in &r.curves {
        let drain = c.acked.drain_ms.as_ref().map_or(String::new(), |d| {
            format!(" after {:.0} ms of drain", d.median)
        });
        s.push_str(&format!(
            "acked drain, {} Mbit/s: {}{drain}\n",
            c.mbit,
            cell(&c.acked)
        ));
    }
    s
}
