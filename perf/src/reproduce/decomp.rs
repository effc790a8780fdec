//! Experiment 2, handoff time decomposition (seed §3.2.2, Table 1): 1 MB downloads from the
//! DS address; node 1 serves 500 kB and hands the connection to node 2, right after its last
//! send (drain `immediate`, the seed's setting) or once the client has acknowledged it all
//! (`acked`); node 2 asks home agent 1 to move the flow (transparent mode) and serves the
//! rest. Per inter-node bandwidth (each home agent's upstream shaped, as the seed did with
//! `cbq`; or unshaped), the seven phases of every handoff from the donor's report, the
//! state size, and the client-perceived handoff time as the seed defined it (§3.2.3): from
//! the last data packet from the donor to the first from the acceptor, told apart on the
//! client's interface by their last hop (home agent 1's or home agent 2's router).

use super::testbed::{ip, Fig1, Paths, CLIENT, COA, DS};
use crate::handoff::sniff;
use crate::handoff::{route_check, ClientCounters, RouteCheck};
use crate::handoff::{DrainChoice, HandoffPath, Side};
use crate::stack::report::Stat;
use anyhow::{bail, ensure, Context, Result};
use ds_handoff::{HandoffReport, Mode};
use dserver::engine::NodeEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The seed's Table 1 (ms): rows are the seven phases, then the total; columns 100, 2, 1.5
/// and 1 Mbit/s.
pub const SEED_TABLE1: [[f64; 4]; 8] = [
    [0.8, 5.8, 6.9, 11.8],
    [6.5, 319.1, 434.1, 648.2],
    [2.2, 2.1, 2.1, 2.2],
    [2.5, 3.7, 4.9, 8.9],
    [2.7, 2.7, 2.7, 2.7],
    [2.6, 2.6, 2.6, 2.6],
    [1.1, 1.1, 1.1, 1.1],
    [18.4, 337.1, 454.4, 677.5],
];
/// The seed's bandwidth columns, Mbit/s.
pub const SEED_MBIT: [f64; 4] = [100.0, 2.0, 1.5, 1.0];
/// The seven phases' names (seed Table 1).
pub const PHASES: [&str; 7] = [
    "socket extraction",
    "state transfer",
    "socket re-creation",
    "return routability",
    "BU construction",
    "binding management",
    "socket activation",
];

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// Which implementation each node runs: `user->user`, `kernel->kernel`, ... (see
    /// [`HandoffPath`]).
    #[serde(default = "user_user")]
    pub paths: Vec<String>,
    /// Steering modes: transparent (home agent 1 moves the flow; a curl client) and route
    /// optimisation (the acceptor binds the client, RFC 6275; a client on our stack, since
    /// the kernel has no Mobile IPv6 here). Route optimisation needs both nodes on our stack:
    /// it runs on the `user->user` path only.
    #[serde(default = "transparent_only")]
    pub modes: Vec<Mode>,
    /// Upstream bandwidths, Mbit/s (`None`: unshaped).
    pub bandwidths: Vec<Option<f64>>,
    /// Drain policies.
    pub drains: Vec<DrainChoice>,
    /// Downloads (one handoff each) per point.
    pub sessions: u32,
    /// Object size, bytes.
    pub size: u64,
    /// Bytes node 1 serves before the handoff.
    pub handoff_at: u64,
    /// Path latencies (the seed's Table 1: none).
    pub cs_ms: f64,
    /// Lat_SS, ms.
    pub ss_ms: f64,
}

/// One handoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The donor's report (phases, total, wall, drain, state size), with the client's gap.
    #[serde(flatten)]
    pub report: HandoffReport,
    /// Download time, s.
    pub seconds: f64,
    /// Route-optimised: what the client's link showed of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteCheck>,
    /// When the client on our stack retransmitted: the TCP segments on its link
    /// ([`sniff::trace`]), for the person reading a failure.
    #[serde(skip)]
    pub client_trace: Option<String>,
}

/// One (path, drain, bandwidth) point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// The nodes' implementations, e.g. `user->user`.
    #[serde(default = "user_user_one")]
    pub path: String,
    /// Steering mode.
    #[serde(default = "transparent")]
    pub mode: Mode,
    /// Drain policy.
    pub drain: DrainChoice,
    /// Upstream bandwidth, Mbit/s (`None`: unshaped).
    pub mbit: Option<f64>,
    /// Every handoff.
    pub sessions: Vec<Session>,
    /// Per phase: median over the sessions, µs.
    pub phases_us: Vec<Option<Stat>>,
    /// Sum of the phases, µs.
    pub total_us: Option<Stat>,
    /// Client-perceived handoff time, µs.
    pub client_gap_us: Option<Stat>,
    /// 99th percentiles (nearest rank; the largest value below 100 sessions) of the total
    /// and of the client-perceived time, µs.
    pub p99_us: (Option<f64>, Option<f64>),
    /// Connection state moved, bytes.
    pub state_bytes: Option<Stat>,
    /// Download time, s.
    pub seconds: Option<Stat>,
}

/// The experiment's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Options.
    pub options: Options,
    /// Every point.
    pub points: Vec<Point>,
}

impl Options {
    /// The seed's Table 1 setting: 1 MB downloads handed off at 500 kB, both drains, no path
    /// latency; on `paths` × `modes` at each of `bandwidths`, `sessions` downloads per point.
    pub fn table1(
        paths: Vec<String>,
        modes: Vec<Mode>,
        bandwidths: Vec<Option<f64>>,
        sessions: u32,
    ) -> Options {
        Options {
            paths,
            modes,
            bandwidths,
            drains: vec![DrainChoice::Immediate, DrainChoice::Acked],
            sessions,
            size: 1_000_000,
            handoff_at: 500_000,
            cs_ms: 0.0,
            ss_ms: 0.0,
        }
    }

    /// How many points [`run`] measures (route optimisation only where both nodes are on our
    /// stack; a path that does not parse, none).
    pub fn points(&self) -> usize {
        let pairs: usize = self
            .paths
            .iter()
            .filter_map(|p| p.parse::<HandoffPath>().ok())
            .map(|hp| self.modes.iter().filter(|&&m| runs(&hp, m)).count())
            .sum();
        pairs * self.drains.len() * self.bandwidths.len()
    }
}

/// Whether `mode` runs on `hp`: kernel sockets cannot carry Mobile IPv6's headers here, so
/// route optimisation needs both nodes on our stack.
fn runs(hp: &HandoffPath, mode: Mode) -> bool {
    mode != Mode::Ro || (hp.side(0) == Side::User && hp.side(1) == Side::User)
}

/// Results saved before the kernel path was measured were all `user->user`.
fn user_user() -> Vec<String> {
    vec![user_user_one()]
}

fn user_user_one() -> String {
    "user->user".into()
}

/// Results saved before route optimisation was measured were all transparent.
fn transparent_only() -> Vec<Mode> {
    vec![Mode::Transparent]
}

fn transparent() -> Mode {
    Mode::Transparent
}

/// The mode's name in the report.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Transparent => "transparent",
        Mode::Ro => "route-optimised",
    }
}

fn drain_name(d: DrainChoice) -> &'static str {
    match d {
        DrainChoice::Immediate => "immediate",
        DrainChoice::Acked => "acked",
    }
}

/// What one download gave: whether the body matched, the frames of the client's link, the
/// time, and the client's own counters when it runs on our stack.
struct Download {
    ok: bool,
    /// Bytes received.
    len: usize,
    frames: Vec<sniff::Frame>,
    seconds: f64,
    retransmits: Option<u64>,
}

/// One download from the client: transparent, with curl (kernel TCP), captured on its
/// interface; route-optimised, with our stack's client (a correspondent node), which logs
/// its own frames.
fn download(bed: &Fig1, want: &[u8; 32], timeout: Duration, mode: Mode) -> Result<Download> {
    let got = bed.dir.join("got");
    let t = std::time::Instant::now();
    let (frames, retransmits, seconds) = match mode {
        Mode::Transparent => {
            let sniffer = bed.client.try_run(|| sniff::Sniffer::start("c0"))??;
            let out = bed
                .client
                .command("curl")
                .args(["-sS", "-g", "--http1.1", "--max-time"])
                .arg(timeout.as_secs().to_string())
                .arg("--local-port")
                .arg(bed.client_port().to_string())
                .arg("-o")
                .arg(&got)
                .arg(format!("http://[{DS}]:80/obj"))
                .output()
                .context("running curl")?;
            let seconds = t.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(50));
            let frames = sniffer.stop()?;
            if !out.status.success() {
                bail!(
                    "curl failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            (frames, None, seconds)
        }
        Mode::Ro => {
            let f = bed.stack_client(timeout)?.get(&bed.client, &got)?;
            let (frames, seconds) = (f.frames, f.took.as_secs_f64());
            let retransmits = match f.counters {
                ClientCounters::Stack { retransmits, .. } => Some(retransmits),
                ClientCounters::Kernel => None,
            };
            (frames, retransmits, seconds)
        }
    };
    let body = std::fs::read(&got)?;
    let ok = Sha256::digest(&body).as_slice() == want;
    Ok(Download {
        ok,
        len: body.len(),
        frames,
        seconds,
        retransmits,
    })
}

/// `sessions` downloads of the object (`size` bytes, already in the document root) on `paths`,
/// node 1 handing each off to node 2 after `handoff_at` bytes with the drain `drain_args`
/// (dsnode's options), steering moved connections by `mode`; every handoff's report with
/// the client's gap (route-optimised: with phase 6, the Binding Update's round trip, from
/// the acceptor's output).
pub(crate) fn handoffs(
    bed: &mut Fig1,
    paths: &Paths,
    drain_args: &[String],
    mode: Mode,
    sessions: u32,
    size: u64,
    handoff_at: u64,
) -> Result<Vec<Session>> {
    let want: [u8; 32] = Sha256::digest(std::fs::read(bed.dir.join("www").join("obj"))?).into();
    bed.set_paths(paths)?;
    bed.client_on_stack(mode == Mode::Ro)?;
    bed.start_ha(0)?;
    // Time enough for a state of a few hundred kB at 1 Mbit/s and its drain.
    let slow = ["--reply-timeout-ms", "30000"];
    let mut a1 = bed.node_args(0, mode);
    a1.extend(
        [
            "--handoff-after",
            &handoff_at.to_string(),
            "--max-handoffs",
            &sessions.to_string(),
            "--drain-deadline-ms",
            "30000",
        ]
        .map(String::from),
    );
    a1.extend(drain_args.iter().cloned());
    a1.extend(slow.map(String::from));
    let mut a2 = bed.node_args(1, mode);
    a2.extend(["--max-handoffs", "0"].map(String::from));
    a2.extend(slow.map(String::from));
    bed.start_node(1, &a2)?;
    bed.start_node(0, &a1)?;
    super::testbed::with_logs(bed, bed.wait_http())?;
    // The object at the slowest rate, twice over, and a margin.
    let timeout = Duration::from_secs_f64(
        10.0 + 2.0 * size as f64 * 8.0 / (paths.upstream_mbit.unwrap_or(100.0) * 1e6),
    );
    let mut runs = Vec::new();
    // A point of a --full run takes up to a quarter of an hour: a line per tenth of it.
    let started = std::time::Instant::now();
    let tenth = (sessions / 10).max(1);
    for i in 0..sessions {
        if sessions >= 10 && i > 0 && i % tenth == 0 {
            tracing::info!(
                "{i} of {sessions} downloads, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        let d = download(bed, &want, timeout, mode).and_then(|d| {
            if !d.ok {
                // The capture of a failed download is the one to read.
                let (donor, acceptor) = (bed.router_mac(0)?, bed.router_mac(1)?);
                save_trace(&d.frames, donor, acceptor, mode, drain_args, paths);
            }
            ensure!(
                d.ok,
                "download {i}: the body differs from the object ({} bytes of {size})",
                d.len
            );
            Ok(d)
        });
        let d = super::testbed::with_logs(bed, d)?;
        runs.push(d);
    }
    // The donor reports a handoff once it reads the acceptor's answer, and node 2 a binding
    // once the client acknowledged it: either can come after the download ended (the
    // acceptor sends the rest at once). Stopping the nodes before would lose the report.
    let count = |i: usize, out: &str, bound: bool| {
        crate::handoff::processes::parse(i, out).map_or(0, |o| {
            o.events
                .iter()
                .filter(|(_, e)| match e {
                    NodeEvent::HandedOff { .. } => !bound,
                    NodeEvent::Bound { .. } => bound,
                    _ => false,
                })
                .count()
        })
    };
    let n = sessions as usize;
    let wait = Duration::from_secs(3);
    bed.wait_node_output(0, wait, |out| count(0, out, false) >= n);
    if mode == Mode::Ro {
        bed.wait_node_output(1, wait, |out| count(1, out, true) >= n);
    }
    let out1 = bed.stop_node(0)?;
    let out2 = bed.stop_node(1)?;
    let events = crate::handoff::processes::parse(0, &out1)?.events;
    // Route-optimised, phase 6 is the acceptor's to see (Binding Update to Binding
    // Acknowledgement, after it activated): the k-th handoff pairs with node 2's k-th
    // acknowledged binding.
    let mut bound: std::collections::VecDeque<Duration> =
        crate::handoff::processes::parse(1, &out2)?
            .events
            .into_iter()
            .filter_map(|(_, e)| match e {
                NodeEvent::Bound { after, .. } => Some(after),
                _ => None,
            })
            .collect();
    // What the client sees of each node: its home agent's router (the last hop).
    let (donor, acceptor) = (bed.router_mac(0)?, bed.router_mac(1)?);
    let mut done = Vec::new();
    let mut kept = Vec::new();
    for (_, e) in events {
        match e {
            NodeEvent::HandedOff { mut report, .. } => {
                let Some(d) = runs.get(done.len()) else {
                    bail!("more handoffs than downloads");
                };
                report.client_gap_us = sniff::sender_gap(&d.frames, ip(DS), 80, donor, acceptor)
                    .map(|g| (g.as_nanos() as f64 / 1000.0 * 1000.0).round() / 1000.0);
                report.bytes_ok = Some(true);
                report.client_retransmits = d.retransmits;
                let route = (mode == Mode::Ro).then(|| {
                    let b = bound.pop_front();
                    if let Some(b) = b {
                        report.set_phase(ds_handoff::Phase::BindingManagement, b);
                    }
                    route_check(&d.frames, ip(CLIENT), ip(COA[1]), ip(DS), b.is_some())
                });
                save_trace(&d.frames, donor, acceptor, mode, drain_args, paths);
                let client_trace = d
                    .retransmits
                    .is_some_and(|r| r > 0)
                    .then(|| sniff::trace(&d.frames, ip(CLIENT)));
                done.push(Session {
                    report,
                    seconds: d.seconds,
                    route,
                    client_trace,
                });
            }
            NodeEvent::KeptHere { cause, .. } | NodeEvent::Failed { cause } => {
                kept.push(cause.to_string())
            }
            _ => {}
        }
    }
    // What became of a handoff that was not reported: node 1's counters (its last line:
    // handoffs started, moved, kept; requests served) and the nodes' logs.
    super::testbed::with_logs(
        bed,
        if done.len() == sessions as usize {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{} handoffs reported for {} downloads (kept: {kept:?}); node 1's counters: {}",
                done.len(),
                sessions,
                out1.lines()
                    .rev()
                    .find(|l| l.starts_with("{\"handoff\""))
                    .unwrap_or("none")
            ))
        },
    )?;
    Ok(done)
}

/// With `DSPERF_TRACES=DIR` set: each download's client capture goes to a file in DIR, a line
/// per TCP segment labelled `D` (it came through home agent 1's router: the donor's side),
/// `A` (home agent 2's: the acceptor's) or `-` (the client's own) — what to read when a
/// client gap looks wrong. Files are numbered in the order of the run.
fn save_trace(
    frames: &[sniff::Frame],
    donor: [u8; 6],
    acceptor: [u8; 6],
    mode: Mode,
    drain_args: &[String],
    paths: &Paths,
) {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("DSPERF_TRACES") else {
        return;
    };
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(
        "{n:04}-{}-{}-{}-cs{}-ss{}.txt",
        mode_name(mode).replace(' ', "_"),
        drain_args
            .iter()
            .map(|a| a.trim_start_matches('-'))
            .collect::<Vec<_>>()
            .join("-"),
        paths
            .upstream_mbit
            .map_or("unshaped".to_string(), |m| format!("{m}mbit")),
        paths.cs1_ms,
        paths.ss_ms
    );
    let text = sniff::trace_labelled(frames, ip(CLIENT), |f| {
        if f.src_mac == donor {
            "D"
        } else if f.src_mac == acceptor {
            "A"
        } else {
            "-"
        }
    });
    let path = std::path::Path::new(&dir).join(name);
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        tracing::warn!("DSPERF_TRACES: {}: {e}", path.display());
    }
}

/// The object every download fetches, `size` bytes, into the testbed's document root.
pub(crate) fn write_object(bed: &Fig1, size: u64) -> Result<()> {
    let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(bed.dir.join("www").join("obj"), body)?;
    Ok(())
}

/// The 99th percentile (`None` for no values), from an HdrHistogram of microseconds (three
/// significant digits; the largest value below 100 samples).
pub(crate) fn p99(v: impl Iterator<Item = f64>) -> Option<f64> {
    // Bounds set up front: `saturating_record` does not grow an auto-resizing histogram.
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 50, 3).ok()?;
    let mut any = false;
    for x in v {
        // Sub-microsecond resolution matters little here; the histogram takes integers.
        h.saturating_record((x * 1000.0).round().max(0.0) as u64);
        any = true;
    }
    any.then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
}

fn stat(v: impl Iterator<Item = f64>) -> Option<Stat> {
    Stat::of(v.collect())
}

/// Runs the experiment on `bed` (built, no daemons yet).
pub fn run(bed: &mut Fig1, o: &Options, progress: &dyn Fn(&str)) -> Result<Report> {
    ensure!(
        o.sessions > 0 && o.handoff_at < o.size,
        "sessions > 0 and handoff_at < size"
    );
    write_object(bed, o.size)?;
    let mut points = Vec::new();
    for (k, path) in o.paths.iter().enumerate() {
        let hp: HandoffPath = path.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        if k > 0 {
            // A fresh testbed per path: a node moved from our stack to kernel sockets in
            // namespaces where its stack ran before loses its first control channels (not
            // understood yet); kernel addresses set before any daemon runs work.
            *bed = Fig1::build()?;
            write_object(bed, o.size)?;
        }
        for i in 0..2 {
            bed.set_side(i, hp.side(i))?;
        }
        for &mode in &o.modes {
            if !runs(&hp, mode) {
                progress(&format!(
                    "handoff decomposition: {path}: no route optimisation (kernel sockets \
                     cannot carry Mobile IPv6's headers here)"
                ));
                continue;
            }
            for &drain in &o.drains {
                for &mbit in &o.bandwidths {
                    let label = mbit.map_or("unshaped".to_string(), |m| format!("{m} Mbit/s"));
                    progress(&format!(
                        "handoff decomposition: {path}, {}, drain {}, upstream {label}, {} \
                         downloads of {} bytes",
                        mode_name(mode),
                        drain_name(drain),
                        o.sessions,
                        o.size
                    ));
                    let paths = Paths {
                        cs1_ms: o.cs_ms,
                        cs2_ms: o.cs_ms,
                        ss_ms: o.ss_ms,
                        upstream_mbit: mbit,
                    };
                    let drain_args = vec!["--drain".to_string(), drain_name(drain).to_string()];
                    let sessions = handoffs(
                        bed,
                        &paths,
                        &drain_args,
                        mode,
                        o.sessions,
                        o.size,
                        o.handoff_at,
                    )?;
                    points.push(Point {
                        path: path.clone(),
                        mode,
                        drain,
                        mbit,
                        phases_us: (0..7)
                            .map(|k| stat(sessions.iter().map(|s| s.report.phases_us[k])))
                            .collect(),
                        total_us: stat(sessions.iter().map(|s| s.report.total_us)),
                        client_gap_us: stat(sessions.iter().filter_map(|s| s.report.client_gap_us)),
                        p99_us: (
                            p99(sessions.iter().map(|s| s.report.total_us)),
                            p99(sessions.iter().filter_map(|s| s.report.client_gap_us)),
                        ),
                        state_bytes: stat(sessions.iter().map(|s| s.report.state_bytes as f64)),
                        seconds: stat(sessions.iter().map(|s| s.seconds)),
                        sessions,
                    });
                }
            }
        }
    }
    for i in 0..2 {
        bed.set_side(i, Side::User)?;
    }
    Ok(Report {
        options: o.clone(),
        points,
    })
}

impl Report {
    /// The points as the tables show them: one table per (path, mode, drain), in the order
    /// they were measured, a column per bandwidth; never an empty table.
    pub fn tables(&self) -> Vec<Vec<&Point>> {
        let mut out: Vec<Vec<&Point>> = Vec::new();
        for p in &self.points {
            let key = |q: &Point| (q.path.clone(), q.mode, q.drain);
            match out.iter_mut().find(|t| key(t[0]) == key(p)) {
                Some(t) => t.push(p),
                None => out.push(vec![p]),
            }
        }
        out
    }
}

impl Point {
    /// Row `row` of Table 1: the phase (0–6) or the total (7), µs.
    pub fn row(&self, row: usize) -> Option<Stat> {
        match self.phases_us.get(row) {
            Some(v) => *v,
            None => self.total_us,
        }
    }
}

fn ms(s: &Option<Stat>) -> String {
    s.as_ref()
        .map_or("—".into(), |s| format!("{:.3}", s.median / 1000.0))
}

/// The seed's column for a bandwidth, if it has one.
fn seed_col(mbit: Option<f64>) -> Option<usize> {
    let m = mbit?;
    SEED_MBIT.iter().position(|s| (s - m).abs() < 1e-9)
}

/// The report as text: per drain, our Table 1 (medians, ms) with the seed's value and the
/// ratio beside each cell.
pub fn table(r: &Report) -> String {
    let mut s = String::from(
        "handoff time decomposition (seed §3.2.2, Table 1): medians in ms; [seed ms, ours/seed]\n",
    );
    for pts in r.tables() {
        let p0 = pts[0];
        s.push_str(&format!(
            "\n{}, {}, drain {}:\n{:<22}",
            p0.path,
            mode_name(p0.mode),
            drain_name(p0.drain),
            "phase"
        ));
        for p in &pts {
            s.push_str(&format!(
                "{:>28}",
                p.mbit.map_or("unshaped".into(), |m| format!("{m} Mbit/s"))
            ));
        }
        s.push('\n');
        for (row, seed) in SEED_TABLE1.iter().enumerate() {
            s.push_str(&format!(
                "{:<22}",
                PHASES.get(row).copied().unwrap_or("total")
            ));
            for p in &pts {
                let v = p.row(row);
                let cell = match (seed_col(p.mbit), &v) {
                    (Some(c), Some(st)) => format!(
                        "{} [{}, {:.3}×]",
                        ms(&v),
                        seed[c],
                        st.median / 1000.0 / seed[c]
                    ),
                    _ => ms(&v),
                };
                s.push_str(&format!("{cell:>28}"));
            }
            s.push('\n');
        }
        s.push_str(&format!("{:<22}", "client-perceived"));
        for p in &pts {
            s.push_str(&format!("{:>28}", ms(&p.client_gap_us)));
        }
        s.push_str(&format!("\n{:<22}", "download"));
        for p in &pts {
            let secs = p.seconds.map(|mut x| {
                x.median *= 1e6;
                x
            });
            s.push_str(&format!("{:>28}", ms(&secs)));
        }
        s.push('\n');
        s.push_str(&format!("{:<22}", "state (bytes)"));
        for p in &pts {
            s.push_str(&format!(
                "{:>28}",
                p.state_bytes
                    .as_ref()
                    .map_or("—".into(), |x| format!("{:.0}", x.median))
            ));
        }
        s.push('\n');
    }
    s
}

/// One point of the latency sweep (the seed's check of which phases grow with which path).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Steering mode.
    #[serde(default = "transparent")]
    pub mode: Mode,
    /// Lat_CS1 = Lat_CS2, ms.
    pub cs_ms: f64,
    /// Lat_SS, ms.
    pub ss_ms: f64,
    /// Per phase: medians over the sessions, µs.
    pub phases_us: Vec<Option<Stat>>,
    /// Client-perceived handoff time, µs.
    pub client_gap_us: Option<Stat>,
}

/// The seed's check (§3.2.2, last paragraph): with path latencies set, which phases grow.
/// Drained handoffs (a bare state, so that bandwidth plays no part), unshaped, both nodes on
/// our stack, steered by `mode`, at each (Lat_CS, Lat_SS) of `points`.
pub fn latency_sweep(
    bed: &mut Fig1,
    mode: Mode,
    points: &[(f64, f64)],
    sessions: u32,
    progress: &dyn Fn(&str),
) -> Result<Vec<SweepPoint>> {
    write_object(bed, 1_000_000)?;
    for i in 0..2 {
        bed.set_side(i, Side::User)?;
    }
    let mut out = Vec::new();
    for &(cs, ss) in points {
        progress(&format!(
            "handoff decomposition with latencies, {}: Lat_CS {cs} ms, Lat_SS {ss} ms, {sessions} downloads",
            mode_name(mode)
        ));
        let paths = Paths {
            cs1_ms: cs,
            cs2_ms: cs,
            ss_ms: ss,
            upstream_mbit: None,
        };
        let args = ["--drain", "acked"].map(String::from);
        let s = handoffs(bed, &paths, &args, mode, sessions, 1_000_000, 500_000)?;
        out.push(SweepPoint {
            mode,
            cs_ms: cs,
            ss_ms: ss,
            phases_us: (0..7)
                .map(|k| stat(s.iter().map(|x| x.report.phases_us[k])))
                .collect(),
            client_gap_us: stat(s.iter().filter_map(|x| x.report.client_gap_us)),
        });
    }
    Ok(out)
}

/// The sweep as text: phase medians per point, ms.
pub fn sweep_table(v: &[SweepPoint]) -> String {
    let mut s = String::from(
        "\nphases with path latencies (drained, unshaped; medians, ms)\n           mode  Lat_CS  Lat_SS",
    );
    for p in PHASES {
        s.push_str(&format!(" {:>10.10}", p));
    }
    s.push_str("  client\n");
    for p in v {
        s.push_str(&format!(
            "{:>15} {:>7} {:>7}",
            mode_name(p.mode),
            p.cs_ms,
            p.ss_ms
        ));
        for ph in &p.phases_us {
            s.push_str(&format!(" {:>10}", ms(ph)));
        }
        s.push_str(&format!(" {:>7}\n", ms(&p.client_gap_us)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{p99, Mode, Options};

    #[test]
    fn route_optimisation_counts_only_where_both_nodes_are_ours() {
        let o = Options::table1(
            vec![
                "user->user".into(),
                "kernel->kernel".into(),
                "nonsense".into(),
            ],
            vec![Mode::Transparent, Mode::Ro],
            vec![None, Some(2.0)],
            3,
        );
        // user->user: both modes; kernel->kernel: transparent only; × 2 drains × 2 rates.
        assert_eq!(o.points(), 3 * 2 * 2);
    }

    #[test]
    fn p99_of_a_hundred_values_is_the_99th() {
        let v = p99((1..=100).map(f64::from)).unwrap();
        assert!((v - 99.0).abs() < 0.1, "{v}");
        let one = p99(std::iter::once(5.0)).unwrap();
        assert!((one - 5.0).abs() < 0.01, "{one}");
        assert_eq!(p99(std::iter::empty()), None);
    }
}
