//! `dsperf`: Distributed Servers benchmarks. See `dsperf --help`.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ds_perf::parse_size;
use ds_perf::stack::{self, report, Options, Server};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "dsperf",
    version,
    about = "Distributed Servers benchmarks",
    long_about = "Distributed Servers benchmarks. Logs and progress go to stderr (RUST_LOG sets the \
                  log filter, default info); results go to stdout."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Our TCP vs. the Linux kernel's and smoltcp's: bulk throughput and request/response
    /// latency against a kernel TCP client, every server behind a TAP device, same run.
    ///
    /// Needs root. Builds network namespaces P (kernel TCP client), S (server host: a bridge
    /// with one TAP per server, linked to P by a veth pair) and K (the kernel TCP server, whose
    /// only link is a TAP; a relay thread copies its frames to a TAP on S's bridge, one extra
    /// userspace hop) and V (the same kernel server over a plain veth, as a reference), all on
    /// fd00:5e:1::/64, and removes them at the end, also on errors and
    /// after a first Ctrl-C (which stops after the current measurement).
    ///
    /// Per repeat and server: upload (client → server) and download (server → client) of
    /// --bytes, then --rounds request/response round trips of --msg-size bytes on one
    /// connection with TCP_NODELAY. Reports medians over the repeats and ratios to the kernel.
    Stack(StackArgs),
    /// Live TCP handoff between two nodes (the seed's experiment): a client downloads an
    /// object over HTTP/1.1 from the DS address while the connection moves between nodes.
    ///
    /// Needs root. Builds namespaces (client, home agent, two nodes on one bridge), loads the
    /// home agent's XDP tunnel program (transparent mode), runs both nodes on our stack over
    /// AF_XDP (or, per --path, on kernel sockets moved with TCP_REPAIR), downloads with curl
    /// and tears everything down. Each node serves --quota bytes,
    /// then hands the connection to the other; --count handoffs in all.
    ///
    /// stdout: one JSON line per handoff (mode, path, phases_us [the seven phases of seed
    /// Table 1], total_us, wall_us, drain_us, client_gap_us, state_bytes, offer_frame_bytes,
    /// bytes_ok, client_retransmits). stderr: logs and a summary.
    Handoff(HandoffArgs),
    /// Plot handoff runs: the seven phases (medians) as stacked bars, one bar per input file of
    /// `dsperf handoff` JSON lines, with the median wall time and client-perceived gap.
    HandoffPlot(HandoffPlotArgs),
    /// What the library's connection API (dserver::Node) costs against the raw stack loop:
    /// bulk upload and request/response over an in-memory link, the two servers alternating
    /// per repeat; medians and the ratio API / raw. No root needed.
    Api(ApiArgs),
    /// HTTP/1.1 keep-alive load: wrk (one thread) against `dsnode serve --device afxdp` and
    /// against nginx on the kernel's TCP, each alone behind its own veth pair, same run.
    ///
    /// Needs root, wrk and nginx (scripts/setup.sh installs both) and a built `dsnode` (next
    /// to dsperf, or in $DS_BIN_DIR). Builds namespaces C (wrk), O (dsnode on AF_XDP) and N
    /// (nginx: one worker, sendfile, keep-alive without a request limit, no access log), on
    /// fd00:5f:1::/64 and fd00:5f:2::/64; the kernel's offloads stay at their defaults except
    /// the client's transmit checksum towards AF_XDP. Per --case and repeat: a --warmup run,
    /// then --duration of load on each server, their order alternating. Reports medians over
    /// the repeats, the ratio ours/nginx per repeat, latency percentiles and each core's busy
    /// share; --json prints one line per measurement and the summary.
    Http(HttpArgs),
    /// Single-flow bulk both ways on the deployment device: our stack through the library
    /// (`dserver::Node` on AF_XDP) against the kernel's TCP, each alone behind its own veth
    /// pair, with the kernel's offloads at their defaults and with every offload off, same
    /// run.
    ///
    /// Needs root. Builds namespaces C (client, kernel TCP) and one per server and setting on
    /// fd00:b7:1-4::/64. Per repeat, setting and direction: one transfer of --bytes to or from
    /// each server, their order alternating; reports medians, min-max and the ratio ours /
    /// kernel per repeat; --json prints one line per transfer and the summary.
    Bulk(BulkArgs),
    /// Our stack's cost per packet as open connections grow (1, 1,000, 10,000, 100,000):
    /// two stacks in memory, one 64-byte request/response at a time on a random connection,
    /// the server's work timed. No root needed. Run it with
    /// GLIBC_TUNABLES=glibc.malloc.hugetlb=1 to put the connections' state in transparent huge
    /// pages (where THP is `madvise`); the table says how much was.
    Conns(ConnsArgs),
    /// How faithful the WAN emulator `dswan` is: ping through it at each --delays (both
    /// directions delayed), UDP through it at each --rates (the receiver's interface counts
    /// the Ethernet bytes), and its added latency and forwarding rate at 0 ms against a plain
    /// veth.
    ///
    /// Needs root, iperf3 and a built `dswan` (next to dsperf, or in $DS_BIN_DIR). Builds
    /// namespaces C (client), W (dswan) and S (server) on fd00:5b::/64 plus a direct veth
    /// C–S on fd00:5b:1::/64, and removes them at the end.
    Wan(WanArgs),
    /// The seed's evaluation (§3.2) on its Figure 1 testbed: a client, the WAN emulator at
    /// the core, home agent 1 with node 1 in one network, home agent 2 with node 2 in
    /// another, every daemon a process (dswan, dsha, dsnode).
    ///
    /// Needs root and built `dswan`, `dsha` and `dsnode` (next to dsperf, or in $DS_BIN_DIR).
    /// Experiment 1, server access latency (§3.2.1): UDP echo of 128 bytes to the DS address
    /// over a grid of Lat_SS × Lat_CS, node 1 serving (configuration 1) or node 2 behind home
    /// agent 1's tunnel (configuration 2); X and Y against the seed's. Experiment 2, handoff
    /// time decomposition (§3.2.2): 1 MB downloads handed off at 500 kB, drains immediate and
    /// acked, upstream unshaped and at 100, 2, 1.5, 1 Mbit/s; the seven phases next to the
    /// seed's Table 1. Experiment 3 (§3.2.3): client-perceived handoff time against the
    /// donor's wait (0–1,000 ms) at 2, 1.5, 1 Mbit/s, the seed's Figure 2. Progress on
    /// stderr; writes --out/EVALUATION.md and its figures. --quick takes about 14 minutes
    /// on a 2-core machine; --full about 7 h 30 min (each run's report estimates it from its own
    /// times; run it in parts with --only and --render them together).
    Reproduce(ReproduceArgs),
}

#[derive(Args)]
struct ReproduceArgs {
    /// Full size: the grid Lat_SS × Lat_CS in 0, 5, 10, 25, 50, 100 ms and 100 downloads per
    /// handoff point (hours), instead of the quick 0, 10, 25 ms and 3 downloads (minutes).
    #[arg(long, conflicts_with = "quick")]
    full: bool,
    /// The quick size (the default).
    #[arg(long)]
    quick: bool,
    /// Which experiments, comma-separated: access (§3.2.1), decomp (§3.2.2, Table 1),
    /// latency (§3.2.2 with path latencies), state (§3.2.3).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "access,decomp,latency,state"
    )]
    only: Vec<String>,
    /// The nodes' implementations in experiment 2, comma-separated (user->user,
    /// kernel->user, user->kernel, kernel->kernel).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "user->user,kernel->kernel"
    )]
    paths: Vec<String>,
    /// Steering modes in experiment 2 and the latency sweep, comma-separated: transparent
    /// (home agent 1 moves the flow; curl) and ro (route optimisation: the acceptor binds the
    /// client, a correspondent node on our stack; user->user only).
    #[arg(long, value_delimiter = ',', default_value = "transparent,ro")]
    modes: Vec<String>,
    /// Experiment 2's upstream bandwidths in Mbit/s, comma-separated; `unshaped` for none
    /// (the seed's Table 1 columns by default; fewer, with more --sessions, to study a cell).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "unshaped,100,2,1.5,1",
        value_parser = parse_bandwidth
    )]
    bandwidths: Vec<Option<f64>>,
    /// Figure 2's (experiment 3's) upstream bandwidths in Mbit/s, comma-separated (the seed's
    /// three by default; one per run splits a --full run into parts of about an hour).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,1.5,1",
        value_parser = parse_shaped
    )]
    state_bandwidths: Vec<f64>,
    /// Experiment 2's drain policies, comma-separated (immediate: the seed's freeze right
    /// after the last send; acked: once the client acknowledged everything).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "immediate,acked"
    )]
    drains: Vec<ds_perf::handoff::DrainChoice>,
    /// Experiment 2's path latencies Lat_CS (both client paths) and Lat_SS, ms: `CS,SS` (the
    /// seed's Table 1 has none; with a bandwidth, a bottleneck queue behind a long path).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CS_MS,SS_MS",
        default_values_t = [0.0, 0.0],
        value_parser = parse_latency
    )]
    path_latency: Vec<f64>,
    /// Round trips per access-latency point.
    #[arg(long, default_value_t = 100)]
    rounds: u32,
    /// Downloads per handoff point [default: 3 for decomp and 1 for state; --full: 100 and 10].
    #[arg(long)]
    sessions: Option<u32>,
    /// Where the report goes: EVALUATION.md, figures/reproduce-results.json, the CSVs and
    /// figures/reproduce-figure2.svg (`--out docs` updates the repository's copy).
    #[arg(long, default_value = "dsperf-reproduce")]
    out: PathBuf,
    /// Run nothing: write the report again from a saved figures/reproduce-results.json;
    /// from several, the parts of one run split with --only, --paths, --modes or
    /// --bandwidths (a --full run in pieces), one report of them all.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    render: Vec<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

fn run_reproduce(a: ReproduceArgs) -> Result<()> {
    use ds_perf::reproduce::{access, decomp, figure2, report, testbed::Fig1};
    let started = std::time::Instant::now();
    if !a.render.is_empty() {
        let mut parts = Vec::new();
        for f in &a.render {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let r: report::Results =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
            parts.push(r);
        }
        let results = match parts.len() {
            1 => parts.remove(0),
            _ => report::Results::merge(parts)?,
        };
        for p in report::write_all(&a.out, &results)? {
            tracing::info!("wrote {}", p.display());
        }
        return Ok(());
    }
    if !ds_perf::is_root() {
        bail!("dsperf reproduce needs root (network namespaces, XDP)");
    }
    for e in &a.only {
        if !["access", "decomp", "latency", "state"].contains(&e.as_str()) {
            bail!("--only: unknown experiment {e:?} (access, decomp, latency, state)");
        }
    }
    let modes = a
        .modes
        .iter()
        .map(|m| match m.as_str() {
            "transparent" => Ok(ds_handoff::Mode::Transparent),
            "ro" => Ok(ds_handoff::Mode::Ro),
            _ => bail!("--modes: unknown steering mode {m:?} (transparent, ro)"),
        })
        .collect::<Result<Vec<_>>>()?;
    use ds_perf::reproduce::size::{Shape, Size};
    let size = if a.full { Size::full() } else { Size::quick() }.with_sessions(a.sessions);
    let mut table1 = decomp::Options::table1(
        a.paths.clone(),
        modes.clone(),
        a.bandwidths.clone(),
        size.decomp_sessions,
    );
    table1.drains = a.drains.clone();
    match a.path_latency[..] {
        [cs, ss] => {
            table1.cs_ms = cs;
            table1.ss_ms = ss;
        }
        _ => bail!("--path-latency: two latencies, CS_MS,SS_MS"),
    }
    let shape = Shape {
        rounds: a.rounds,
        decomp_points: table1.points(),
        sweep_modes: modes.len(),
        state_mbit: a.state_bandwidths.clone(),
        size: table1.size,
    };
    let progress = |line: &str| tracing::info!("{line}");
    let mut bed = Fig1::build()?;
    let mut text = String::new();
    let mut results = report::Results {
        size: if a.full { "full" } else { "quick" }.into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: String::from_utf8_lossy(
            &std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .trim()
        .to_string(),
        machine: report::Machine::here(),
        seconds: 0.0,
        access: None,
        decomp: None,
        sweep: None,
        state: None,
        params: Some(size.clone()),
        shape: Some(shape.clone()),
        experiment_seconds: Default::default(),
        build: report::source_commit(),
    };
    // The experiments completed are written even when a later one fails: a long run keeps
    // what it measured (the error names the experiment that stopped it).
    let mut results_walls = std::collections::BTreeMap::new();
    let outcome = (|| -> Result<()> {
        let mut timed = |name: &str, t: std::time::Instant| {
            results_walls.insert(name.to_string(), t.elapsed().as_secs_f64());
        };
        if a.only.iter().any(|e| e == "access") {
            let t = std::time::Instant::now();
            let o = access::Options {
                ss_ms: size.grid_ms.clone(),
                cs_ms: size.grid_ms.clone(),
                rounds: a.rounds,
            };
            let r = access::run(&mut bed, &o, &progress)?;
            text.push_str(&access::table(&r));
            results.access = Some(r);
            timed("access", t);
        }
        if a.only.iter().any(|e| e == "decomp") {
            let t = std::time::Instant::now();
            let r = decomp::run(&mut bed, &table1, &progress)?;
            text.push('\n');
            text.push_str(&decomp::table(&r));
            results.decomp = Some(r);
            timed("decomp", t);
        }
        if a.only.iter().any(|e| e == "latency") {
            let t = std::time::Instant::now();
            let mut v = Vec::new();
            for &mode in &modes {
                v.extend(decomp::latency_sweep(
                    &mut bed,
                    mode,
                    &size.sweep_points,
                    size.sweep_sessions,
                    &progress,
                )?);
            }
            text.push_str(&decomp::sweep_table(&v));
            results.sweep = Some(v);
            timed("latency", t);
        }
        if a.only.iter().any(|e| e == "state") {
            let t = std::time::Instant::now();
            let o = figure2::Options {
                bandwidths: shape.state_mbit.clone(),
                waits_ms: size.state_waits_ms.clone(),
                sessions: size.state_sessions,
                size: shape.size,
                handoff_at: shape.size / 2,
            };
            let r = figure2::run(&mut bed, &o, &progress)?;
            text.push('\n');
            text.push_str(&figure2::table(&r));
            results.state = Some(r);
            timed("state", t);
        }
        Ok(())
    })();
    drop(bed);
    results.experiment_seconds = results_walls;
    for f in ds_perf::reproduce::findings::all(
        results.decomp.as_ref(),
        results.state.as_ref(),
        results.sweep.as_deref(),
    ) {
        text.push_str(&format!(
            "\nseed's finding: {}\n  holds here: {}; {}\n",
            f.claim,
            f.holds.map_or("no data", |h| if h { "yes" } else { "NO" }),
            f.evidence
        ));
    }
    results.seconds = started.elapsed().as_secs_f64();
    let est = results.full_estimate();
    if !est.is_empty() {
        text.push_str(&format!(
            "\na --full run: about {} (estimated from this run's wall times)\n",
            ds_perf::reproduce::report::hours(est.values().sum())
        ));
    }
    for p in report::write_all(&a.out, &results)? {
        tracing::info!("wrote {}", p.display());
    }
    if let Err(e) = outcome {
        print!("{text}");
        return Err(e.context(format!(
            "dsperf reproduce stopped; what it measured before is in {}",
            a.out.display()
        )));
    }
    if a.json {
        ds_apps::outln!("{}", serde_json::to_string(&results)?);
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    Ok(())
}

#[derive(Args)]
struct WanArgs {
    /// One-way delays to check, ms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,200")]
    delays: Vec<f64>,
    /// Rates to check, Mbit/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,100")]
    rates: Vec<f64>,
    /// Pings per delay point.
    #[arg(long, default_value_t = 100)]
    pings: u32,
    /// Seconds of UDP load per rate point (the first second is not counted).
    #[arg(long, default_value_t = 6.0)]
    rate_seconds: f64,
    /// Seconds of the forwarding-rate measurement.
    #[arg(long, default_value_t = 4.0)]
    pps_seconds: f64,
    /// `dswan --lead-max` for every point (e.g. `0` to measure the emulator without its
    /// make-up for its own sending time); default: dswan's.
    #[arg(long)]
    lead_max: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn run_wan(a: WanArgs) -> Result<()> {
    if !ds_perf::is_root() {
        bail!("dsperf wan needs root (network namespaces)");
    }
    if a.delays
        .iter()
        .chain(&a.rates)
        .any(|v| !v.is_finite() || *v <= 0.0)
        || a.pings == 0
        || a.rate_seconds < 2.0
        || a.pps_seconds < 2.0
    {
        bail!(
            "--delays and --rates must be positive, --pings positive, the durations at least 2 s"
        );
    }
    let dswan = ds_perf::find_program("dswan")?;
    let o = ds_perf::wan::Options {
        delays_ms: a.delays,
        rates_mbit: a.rates,
        pings: a.pings,
        rate_seconds: a.rate_seconds,
        pps_seconds: a.pps_seconds,
        lead_max: a.lead_max,
    };
    let r = ds_perf::wan::run(&dswan, &o, &|line| tracing::info!("{line}"))?;
    if a.json {
        ds_apps::outln!("{}", serde_json::to_string(&r)?);
        eprint!("{}", ds_perf::wan::table(&r));
    } else {
        print!("{}", ds_perf::wan::table(&r));
    }
    Ok(())
}

#[derive(Args)]
struct ConnsArgs {
    /// Connection counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    counts: Vec<usize>,
    /// Exchanges timed per measurement.
    #[arg(long, default_value_t = 200_000)]
    exchanges: usize,
    /// Measurements per count.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Connections per client address (at most 50,000, the default): fewer puts more
    /// clients on the link, each a neighbour of the server (up to 4,096 cached).
    #[arg(long, default_value_t = ds_perf::conns::PORTS)]
    ports_per_client: usize,
    /// Exchanges per server pass, on as many distinct connections: the server takes all
    /// their requests, answers and transmits once, as it does under load (1: one at a time;
    /// at most 4,096).
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    batch: usize,
    /// Advance the stacks' clock by this many nanoseconds per exchange instead of following
    /// the wall clock: for a profiler that runs the benchmark far slower (callgrind), so that
    /// timers turn over per exchange as at full speed (~1,000 ns an exchange here).
    #[arg(long, value_name = "NS")]
    pace_ns: Option<u64>,
    /// Measure the kernel's TCP too, the same exchanges over IPv6 loopback with both ends in
    /// this thread, as the baseline of the same run (two descriptors per connection: as root
    /// the open-file limit is raised; otherwise larger counts are skipped, and said so).
    #[arg(long)]
    kernel: bool,
    /// Measure the scaling across N cores too: N threads, each pinned to its own CPU with its
    /// own client and server stacks and its share of the connections, against one thread
    /// with all of them, in the same run (shared nothing: the ratio shows what the stacks
    /// share between threads).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=1024))]
    cores: Option<usize>,
    /// Print the results as one JSON array.
    #[arg(long)]
    json: bool,
    /// Write dsperf-conns.svg (and, with --kernel, dsperf-conns-kernel.svg; with --cores,
    /// dsperf-conns-cores.svg) into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

fn run_conns(a: ConnsArgs) -> Result<()> {
    if a.counts.is_empty() || a.counts.contains(&0) || a.exchanges == 0 || a.repeats == 0 {
        bail!("--counts (all positive), --exchanges and --repeats must be given and positive");
    }
    if cfg!(debug_assertions) {
        tracing::warn!("dsperf was built without optimisations: build with --release");
    }
    let o = ds_perf::conns::Options {
        counts: a.counts,
        exchanges: a.exchanges,
        repeats: a.repeats,
        ports_per_client: a.ports_per_client,
        batch: a.batch,
        pace_ns: a.pace_ns,
        kernel: a.kernel,
        cores: a.cores,
    };
    let points = ds_perf::conns::run(&o, |line| tracing::info!("{line}"));
    if a.json {
        ds_apps::outln!("{}", serde_json::to_string(&points)?);
        eprint!("{}", ds_perf::conns::table(&o, &points));
    } else {
        print!("{}", ds_perf::conns::table(&o, &points));
    }
    if let Some(dir) = a.plot {
        let path = ds_perf::plot::write_conns_svg(&o, &points, &dir).context("plot")?;
        eprintln!("wrote {}", path.display());
        if let Some(path) =
            ds_perf::plot::write_conns_kernel_svg(&o, &points, &dir).context("plot")?
        {
            eprintln!("wrote {}", path.display());
        }
        if let Some(path) =
            ds_perf::plot::write_conns_cores_svg(&o, &points, &dir).context("plot")?
        {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

#[derive(Args)]
struct HttpArgs {
    /// Workloads as SIZE:CONNECTIONS (object size with K/M suffixes, wrk connections).
    #[arg(
        long = "case",
        value_name = "SIZE:CONNS",
        default_values = ["1KiB:64", "1KiB:1000", "64KiB:16", "64KiB:1"]
    )]
    cases: Vec<ds_perf::http::Case>,
    /// Measurements per server and workload.
    #[arg(long, default_value_t = 5)]
    repeats: u32,
    /// Seconds of one measurement.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Seconds of unrecorded load before each measurement (0: none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Core the server under test runs on.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// Core wrk runs on.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Measure only ours (or only nginx).
    #[arg(long, value_parser = ["ours", "nginx"])]
    only: Option<String>,
    /// Also measure ours with a stack per receive queue (`dsnode serve --queues N`, on a veth
    /// of N queues, its threads on every core) against ours on one core, same repeat.
    #[arg(long, default_value_t = 1, value_name = "N")]
    queues: u32,
    /// Run cyclictest beside each measurement: the machine's own stalls (one real-time
    /// thread per core waking every millisecond) in a column beside the slowest request.
    /// Off by default: its wake-ups preempt the servers (ours at 64 KiB x 1 served ~10 %
    /// fewer requests with it on 2026-12-04, nginx the same), so it is a diagnosis run.
    #[arg(long)]
    stall_probe: bool,
    /// With --queues N: measure how the whole bed scales, for a machine where the client
    /// cannot have cores of its own. Each one-queue server shares --server-cpu with a
    /// one-thread wrk; ours with N queues (queue i's thread pinned to the i-th allowed CPU)
    /// shares N CPUs with a wrk of N threads (every case's connections a multiple of N). The
    /// table states the CPUs the servers took and what everything else took (the client, and
    /// the kernel's softirq work).
    #[arg(long)]
    whole_bed: bool,
    /// Both servers keep up to N files open between requests, looked up by name again after
    /// 1 s: ours `--open-file-cache N`, nginx `open_file_cache max=N` and
    /// `open_file_cache_valid 1s`. 0: off, as both are by default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    open_file_cache: usize,
    /// Run both servers and wrk under the real-time SCHED_FIFO policy at this priority (1-99):
    /// ours with `dsnode --sched-fifo`, nginx and wrk through `chrt -f`. A woken process then
    /// preempts normal tasks on its core instead of waiting for their slice to end.
    #[arg(long, value_name = "PRIO", value_parser = clap::value_parser!(u8).range(1..=99))]
    sched_fifo: Option<u8>,
    /// Print one JSON line per measurement and the summary as JSON (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Write dsperf-http.svg into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

/// Refuse to run without root; warn about a debug build (the figures would be meaningless).
fn bench_preflight(cmd: &str, why: &str) -> Result<()> {
    if !ds_perf::is_root() {
        bail!("`dsperf {cmd}` needs root: {why}");
    }
    if cfg!(debug_assertions) {
        tracing::warn!("dsperf was built without optimisations: build with --release");
    }
    Ok(())
}

/// A benchmark's end: the summary as JSON on stdout and the table on stderr with `--json`,
/// else the table on stdout.
fn print_summary<S: serde::Serialize>(json: bool, sum: &S, table: &str) -> Result<()> {
    if json {
        ds_apps::outln!("{}", serde_json::to_string(sum)?);
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    Ok(())
}

/// A printer of one JSON line per measurement with `--json`, nothing otherwise.
fn json_lines<T: serde::Serialize>(json: bool) -> impl FnMut(&T) {
    move |s: &T| {
        if json {
            if let Ok(line) = serde_json::to_string(s) {
                ds_apps::outln!("{line}");
            }
        }
    }
}

fn run_http(a: HttpArgs) -> Result<()> {
    use ds_perf::http::{self, Target};
    bench_preflight("http", "it creates network namespaces and uses AF_XDP")?;
    if a.repeats == 0 || a.duration == 0 {
        bail!("--repeats and --duration must be positive");
    }
    let mut targets = match a.only.as_deref() {
        Some("ours") => vec![Target::Ours],
        Some("nginx") => vec![Target::Nginx],
        _ => vec![Target::Ours, Target::Nginx],
    };
    if a.queues > 1 && a.only.as_deref() != Some("nginx") {
        targets.push(Target::OursQueues);
    }
    let opts = http::Options {
        cases: a.cases,
        repeats: a.repeats,
        duration: std::time::Duration::from_secs(a.duration),
        warmup: std::time::Duration::from_secs(a.warmup),
        server_cpu: a.server_cpu,
        client_cpu: a.client_cpu,
        targets,
        queues: a.queues.max(1),
        stall_probe: a.stall_probe,
        whole_bed: a.whole_bed,
        open_file_cache: a.open_file_cache,
        sched_fifo: a.sched_fifo,
    };
    if a.whole_bed {
        if a.queues < 2 || a.only.as_deref() == Some("nginx") {
            bail!("--whole-bed compares ours on N queues with one: give --queues 2 or more");
        }
        // wrk gives each of its N threads conns / N connections and refuses fewer than N.
        if let Some(c) = opts.cases.iter().find(|c| c.conns % a.queues != 0) {
            bail!(
                "--whole-bed: case {} has {} connection(s), not a multiple of --queues {} \
                 (wrk -t{} spreads them evenly); give --case",
                c.label(),
                c.conns,
                a.queues,
                a.queues
            );
        }
    }
    if opts.sched_fifo.is_some() {
        warn_rt_throttling();
    }
    let dsnode = ds_perf::find_program("dsnode")?;
    stack::install_sigint_handler();
    let (samples, nginx) = http::run(&opts, &dsnode, json_lines(a.json))?;
    let sum = http::summarize(&opts, nginx, &samples);
    print_summary(a.json, &sum, &http::table(&sum))?;
    if let Some(dir) = a.plot {
        let path = ds_perf::plot::write_http_svg(&sum, &dir).context("plot")?;
        eprintln!("wrote {}", path.display());
        if opts.queues > 1 && opts.targets.contains(&Target::OursQueues) {
            let path = ds_perf::plot::write_http_queues_svg(&sum, &dir).context("plot")?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Say what Linux's real-time throttling will do to a saturated server under `--sched-fifo`
/// (sched(7): real-time tasks get `sched_rt_runtime_us` of every `sched_rt_period_us`).
fn warn_rt_throttling() {
    let read = |k: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{k}"))
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if let (Some(run), Some(period)) = (read("sched_rt_runtime_us"), read("sched_rt_period_us")) {
        if run >= 0 && run < period {
            tracing::warn!(
                "--sched-fifo: real-time tasks get {run} of every {period} µs here \
                 (kernel.sched_rt_runtime_us): a server that fills its core stops for the \
                 rest of each period, {} ms, and its slowest requests show it",
                (period - run) / 1000
            );
        }
    }
}

#[derive(Args)]
struct BulkArgs {
    /// Bytes per transfer (suffixes k, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    bytes: u64,
    /// Transfers per server, direction and offload setting.
    #[arg(long, default_value_t = 5)]
    repeats: u32,
    /// Core the servers run on.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// Core the client runs on.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Print one JSON line per transfer and the summary as JSON (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Write dsperf-bulk.svg into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

fn run_bulk(a: BulkArgs) -> Result<()> {
    use ds_perf::bulk;
    bench_preflight("bulk", "it creates network namespaces and uses AF_XDP")?;
    if a.repeats == 0 || a.bytes == 0 {
        bail!("--repeats and --bytes must be positive");
    }
    let opts = bulk::Options {
        bytes: a.bytes,
        repeats: a.repeats,
        server_cpu: a.server_cpu,
        client_cpu: a.client_cpu,
    };
    stack::install_sigint_handler();
    let samples = bulk::run(&opts, json_lines(a.json))?;
    let sum = bulk::summarize(&opts, &samples);
    print_summary(a.json, &sum, &bulk::table(&sum))?;
    if let Some(dir) = a.plot {
        let path = ds_perf::plot::write_bulk_svg(&sum, &dir).context("plot")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Args)]
struct ApiArgs {
    /// Bytes uploaded per bulk measurement (suffixes k, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    bytes: u64,
    /// Request/response exchanges per measurement.
    #[arg(long, default_value_t = 20_000)]
    rounds: u32,
    /// Bytes of each request and response.
    #[arg(long, default_value_t = 64)]
    msg: usize,
    /// Measurements per server and workload.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn run_api(a: ApiArgs) -> Result<()> {
    if a.repeats == 0 || a.rounds == 0 || a.msg == 0 {
        anyhow::bail!("--repeats, --rounds and --msg must be positive");
    }
    let o = ds_perf::api::Options {
        bytes: a.bytes,
        rounds: a.rounds,
        msg: a.msg,
        repeats: a.repeats,
    };
    let r = ds_perf::api::run(&o, |line| tracing::info!("{line}"));
    if a.json {
        ds_apps::outln!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", ds_perf::api::text(&r));
    }
    Ok(())
}

#[derive(Args)]
struct HandoffPlotArgs {
    /// Inputs as LABEL=FILE (FILE: JSON lines from `dsperf handoff`); one bar each, in order.
    #[arg(required = true, value_name = "LABEL=FILE")]
    inputs: Vec<String>,
    /// Output SVG file.
    #[arg(long, short, value_name = "FILE")]
    out: PathBuf,
    /// Chart title.
    #[arg(
        long,
        default_value = "dsperf handoff: phases of seed Table 1 (medians)"
    )]
    title: String,
}

fn run_handoff_plot(a: HandoffPlotArgs) -> Result<()> {
    let mut bars = Vec::new();
    for input in &a.inputs {
        let (label, file) = input
            .split_once('=')
            .with_context(|| format!("{input:?}: expected LABEL=FILE"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        bars.push(ds_perf::handoff::plot::bar_from_lines(label, &text)?);
    }
    ds_perf::handoff::plot::write_svg(&bars, &a.title, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
struct HandoffArgs {
    /// Steering mode: transparent (home agent flow map) or ro (route optimisation).
    #[arg(long, default_value = "transparent", value_parser = parse_mode)]
    mode: ds_handoff::Mode,
    /// Node 1's and node 2's implementations: user->user, kernel->user, user->kernel or
    /// kernel->kernel ("kernel": standard sockets moved with TCP_REPAIR; "user": our stack
    /// over AF_XDP).
    #[arg(long, default_value = "user->user", value_parser = parse_path)]
    path: ds_perf::handoff::HandoffPath,
    /// Handoffs during the download, alternating between the nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,
    /// Object size (suffixes K, M, G, KiB, MiB, GiB: powers of 1024).
    #[arg(long, default_value = "1000000", value_parser = parse_size)]
    size: u64,
    /// Response bytes a node serves before handing off [default: size / (count + 1)].
    #[arg(long, value_parser = parse_size)]
    quota: Option<u64>,
    /// Drain policy: freeze at once, or once the send buffer is acknowledged.
    #[arg(long, value_enum, default_value = "acked")]
    drain: ds_perf::handoff::DrainChoice,
    /// Longest drain wait, ms (then freeze anyway).
    #[arg(long, default_value_t = 200)]
    drain_deadline_ms: u64,
    /// Inject a failure at node 2's acceptor (refuse, crash, hang): every handoff to it must
    /// come back to node 1 with nothing lost.
    #[arg(long, value_parser = parse_fault)]
    fault: Option<dserver::engine::AcceptorFault>,
    /// The donor's wait for each acceptor reply, ms.
    #[arg(long, default_value_t = 500)]
    reply_timeout_ms: u64,
    /// Run the nodes and the home agent as separate `dsnode` and `dsha` processes (found next
    /// to dsperf, or in $DS_BIN_DIR) instead of threads of dsperf.
    #[arg(long)]
    processes: bool,
    /// Nodes busy-poll while a handoff is in flight instead of sleeping between its steps
    /// (dsnode --busy-poll=SCOPE): `handoff` (the bare flag) from the drain, `exchange` only
    /// across the offer's round trip.
    #[arg(long, value_enum, value_name = "SCOPE", num_args = 0..=1, require_equals = true,
          default_missing_value = "handoff")]
    busy_poll: Option<ds_perf::handoff::BusyPollChoice>,
    /// Transparent mode: acceptors commit without waiting for the home agent's answer to the
    /// flow move (dsnode --steer-ahead); the donors forward until it is relayed.
    #[arg(long)]
    steer_ahead: bool,
    /// Userspace nodes send one frame per TCP segment instead of 64 KiB super-frames
    /// (dsnode --no-super-frames).
    #[arg(long)]
    no_super_frames: bool,
    /// Hold /dev/cpu_dma_latency at 0 during the run (as `dsperf stack --idle-poll`): idle
    /// CPUs poll instead of halting, so the handoff's wake-ups (acceptor, home agent,
    /// acceptor, donor, one after the other) are not slowed by the CPUs' sleep; a machine
    /// setting, as a latency-tuned host has it, not something the nodes do.
    #[arg(long)]
    idle_poll: bool,
    /// With --processes: the nodes and the home agent run under the real-time SCHED_FIFO
    /// policy at this priority (dsnode/dsha --sched-fifo), so that each of the handoff's
    /// wake-ups preempts the client and the serving node on the shared cores; curl and
    /// dsperf stay normal tasks. A host setting for latency, like --idle-poll.
    #[arg(long, value_name = "PRIO", requires = "processes",
          value_parser = clap::value_parser!(u8).range(1..=99))]
    sched_fifo: Option<u8>,
    /// With --processes and userspace nodes: each node serves this many receive queues of
    /// its veth, one stack per queue on its own thread (dsnode --queues); what reaches
    /// another queue than its connection's (or its test's) is passed round.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "processes",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    queues: u32,
    /// With --queues: every frame for a node reaches this receive queue of it (XPS on the
    /// test bed's switch ports), whatever its flow, instead of the veth's flow hash: the worst
    /// case for what the node's other queues hold or asked for.
    #[arg(long, value_name = "Q", requires = "queues")]
    queue_for_all: Option<u32>,
}

/// An upstream bandwidth for `--bandwidths`: Mbit/s, or `unshaped`.
fn parse_bandwidth(s: &str) -> Result<Option<f64>, String> {
    if s == "unshaped" {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(format!("{s:?}: Mbit/s above 0, or `unshaped`")),
    }
}

/// A shaped bandwidth for `--state-bandwidths`: Mbit/s.
fn parse_shaped(s: &str) -> Result<f64, String> {
    match parse_bandwidth(s)? {
        Some(v) => Ok(v),
        None => Err(format!("{s:?}: Figure 2 is measured on a shaped upstream")),
    }
}

fn parse_latency(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: a latency in ms from 0 to 1000")),
    }
}

fn parse_mode(s: &str) -> Result<ds_handoff::Mode, String> {
    match s {
        "transparent" => Ok(ds_handoff::Mode::Transparent),
        "ro" => Ok(ds_handoff::Mode::Ro),
        _ => Err(format!("{s:?}: expected transparent or ro")),
    }
}

fn parse_path(s: &str) -> Result<ds_perf::handoff::HandoffPath, String> {
    s.parse()
}

fn parse_fault(s: &str) -> Result<dserver::engine::AcceptorFault, String> {
    use dserver::engine::AcceptorFault;
    match s {
        "refuse" => Ok(AcceptorFault::Refuse),
        "crash" => Ok(AcceptorFault::Crash),
        "hang" => Ok(AcceptorFault::Hang),
        _ => Err(format!("{s:?}: expected refuse, crash or hang")),
    }
}

fn run_handoff(a: HandoffArgs) -> Result<()> {
    let opts = ds_perf::handoff::Options {
        mode: a.mode,
        count: a.count,
        size: a.size,
        quota: a.quota,
        drain: a.drain,
        drain_deadline: std::time::Duration::from_millis(a.drain_deadline_ms),
        fault: a.fault,
        reply_timeout: std::time::Duration::from_millis(a.reply_timeout_ms),
        path: a.path,
        processes: a.processes,
        busy_poll: a.busy_poll,
        steer_ahead: a.steer_ahead,
        no_super_frames: a.no_super_frames,
        sched_fifo: a.sched_fifo,
        queues: a.queues,
        client_queue: a.queue_for_all,
        ..Default::default()
    };
    eprintln!(
        "dsperf handoff: {} handoff(s), {} bytes, mode {:?}, path {}{}{}{}",
        a.count,
        a.size,
        a.mode,
        a.path,
        if a.idle_poll {
            ", idle CPUs polling"
        } else {
            ""
        },
        a.sched_fifo
            .map(|p| format!(", nodes and home agent under SCHED_FIFO {p}"))
            .unwrap_or_default(),
        if a.queues > 1 {
            format!(", {} receive queues per node", a.queues)
        } else {
            String::new()
        }
    );
    let _idle = a
        .idle_poll
        .then(ds_perf::stack::load::IdlePoll::hold)
        .transpose()?;
    let out = ds_perf::handoff::run(&opts)?;
    let mut stdout = std::io::stdout().lock();
    for h in &out.handoffs {
        writeln!(stdout, "{}", serde_json::to_string(h)?)?;
    }
    stdout.flush()?;
    eprintln!(
        "dsperf handoff: {} bytes in {:.3} s, content {}; {} handoffs completed, {} kept on \
         the donor; client: {} retransmissions, {} RTOs, {} resets; {} duplicate data \
         segments seen ({} octets); {} packets forwarded by donors",
        out.bytes,
        out.seconds,
        if out.bytes_ok {
            "OK (SHA-256)"
        } else {
            "WRONG"
        },
        out.handoffs.len(),
        out.kept.len(),
        out.client_retransmits,
        out.client_timeouts,
        out.client_resets,
        out.duplicate_segments,
        out.duplicate_octets,
        out.forwarded_packets
    );
    if a.queues > 1 {
        eprintln!(
            "dsperf handoff: {} packets passed between a node's queues, {} mobility messages \
             no queue expected",
            out.passed_between_queues, out.mobility_unexpected
        );
    }
    for k in &out.kept {
        eprintln!("  kept: {k}");
    }
    if !out.bytes_ok {
        bail!("the download does not match the object");
    }
    Ok(())
}

#[derive(Args)]
struct StackArgs {
    /// Bytes per bulk transfer (suffixes K, M, G, KiB, MiB, GiB: powers of 1024).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    bytes: u64,
    /// Recorded request/response round trips per repeat.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Unrecorded round trips before them (same connection).
    #[arg(long, default_value_t = 200)]
    warmup: u32,
    /// Request and response size, bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    msg_size: u32,
    /// Repeats; the summary reports medians over them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// Servers to measure (comma-separated): kernel (the baseline, behind TAP + relay),
    /// kernel-veth (reference: the kernel over a plain veth), ours, smoltcp. Ratios need
    /// `kernel`.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Server::ALL)]
    servers: Vec<Server>,
    /// Kernel TCP congestion control of the client and the kernel servers, set per socket
    /// (ours and smoltcp use CUBIC); `default` keeps the namespaces' default.
    #[arg(long, default_value = "cubic", value_name = "NAME")]
    kernel_cc: String,
    /// Pin the client thread to this CPU (default: the scheduler places it).
    #[arg(long, value_name = "CPU")]
    client_cpu: Option<usize>,
    /// Pin every server-side thread (stack runners, kernel servers, relay) to this CPU.
    #[arg(long, value_name = "CPU")]
    server_cpu: Option<usize>,
    /// Before each test, wait up to this many seconds for other processes (and hypervisor
    /// steal) to use less than 0.05 CPU; 0 disables the wait.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    quiet_wait: u64,
    /// Measure a test again, up to this many times, when outside load disturbed it (the last
    /// attempt is kept either way, and flagged).
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Hold /dev/cpu_dma_latency at 0 during the run: idle CPUs poll instead of halting, so
    /// wake-ups (which dominate request/response latency, especially in a VM) are fast and
    /// steady, at the cost of spinning idle CPUs.
    #[arg(long)]
    idle_poll: bool,
    /// Skip the server → client bulk transfer.
    #[arg(long)]
    no_download: bool,
    /// Print one JSON object per measurement and a final summary object on stdout (the
    /// human table then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Write an SVG bar chart (DIR/dsperf-stack.svg).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

fn run_stack(a: StackArgs) -> Result<()> {
    if !ds_perf::is_root() {
        bail!(
            "`dsperf stack` needs root: it creates network namespaces, veth pairs, bridges and \
             TAP devices (try: sudo dsperf stack ...)"
        );
    }
    if cfg!(debug_assertions) {
        tracing::warn!(
            "dsperf was built without optimisations: build with --release for meaningful numbers"
        );
    }
    let mut servers = Vec::new();
    for s in a.servers {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    let opts = Options {
        bytes: a.bytes,
        rounds: a.rounds,
        warmup: a.warmup,
        msg_size: a.msg_size as usize,
        repeat: a.repeat,
        servers,
        download: !a.no_download,
        kernel_cc: (a.kernel_cc != "default").then_some(a.kernel_cc),
        client_cpu: a.client_cpu,
        server_cpu: a.server_cpu,
        quiet_wait_secs: a.quiet_wait,
        retries: a.retries,
        idle_poll: a.idle_poll,
    };
    stack::install_sigint_handler();
    eprintln!(
        "dsperf stack: topology (the kernel baseline pays one extra TAP + userspace relay hop):"
    );
    for l in report::TOPOLOGY {
        eprintln!("  - {l}");
    }
    let json = a.json;
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let (records, env) = stack::run(&opts, |r| {
        if json {
            let res = report::json_record(r)
                .map_err(anyhow::Error::from)
                .and_then(|line| {
                    writeln!(stdout, "{line}")
                        .and_then(|_| stdout.flush())
                        .map_err(Into::into)
                });
            if let Err(e) = res {
                write_err.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.context("writing results"));
    }
    let sum = report::summarize(&opts, &env, &records);
    let table = report::table(&sum);
    if json {
        writeln!(stdout, "{}", report::json_summary(&sum)?)?;
        eprint!("{table}");
    } else {
        write!(stdout, "{table}")?;
    }
    stdout.flush()?;
    if let Some(dir) = a.plot {
        let path = ds_perf::plot::write_stack_svg(&sum, &dir).context("plot")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    stop_cleanly_on_signal();
    let res = match cli.cmd {
        Cmd::Stack(a) => run_stack(a),
        Cmd::Handoff(a) => run_handoff(a),
        Cmd::HandoffPlot(a) => run_handoff_plot(a),
        Cmd::Api(a) => run_api(a),
        Cmd::Http(a) => run_http(a),
        Cmd::Bulk(a) => run_bulk(a),
        Cmd::Conns(a) => run_conns(a),
        Cmd::Wan(a) => run_wan(a),
        Cmd::Reproduce(a) => run_reproduce(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsperf: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// On SIGINT or SIGTERM, kill the daemons we started and remove our namespaces and scratch
/// directories (daemons' logs, served files, secrets), then exit 130:
/// the benchmarks' guards would not run their `Drop`, and their processes and namespaces
/// (with XDP programs on their devices) would outlive us. A second signal exits at once.
fn stop_cleanly_on_signal() {
    if let Err(e) = ds_apps::signal::install() {
        tracing::warn!("no SIGINT/SIGTERM handler ({e}): an interrupt leaves daemons behind");
        return;
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if ds_apps::signal::stop_requested() {
            eprintln!("dsperf: interrupted: stopping daemons, removing namespaces");
            let n = ds_testbed::remove_own_namespaces();
            ds_perf::reproduce::testbed::restore_allowed_cc();
            let dirs = ds_perf::remove_own_scratch();
            eprintln!("dsperf: removed {n} namespace(s), {dirs} scratch director(ies)");
            std::process::exit(130);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("268435456"), Ok(268_435_456));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["dsperf", "stack"]).expect("parse");
        let Cmd::Stack(a) = cli.cmd else {
            panic!("stack")
        };
        assert_eq!(a.bytes, 256 << 20);
        assert_eq!((a.rounds, a.repeat, a.msg_size), (2000, 5, 64));
        assert_eq!(a.servers, Server::ALL.to_vec());
        let cli = Cli::try_parse_from(["dsperf", "stack", "--servers", "ours,kernel", "--json"])
            .expect("parse");
        let Cmd::Stack(a) = cli.cmd else {
            panic!("stack")
        };
        assert_eq!(a.servers, vec![Server::Ours, Server::Kernel]);
        assert!(Cli::try_parse_from(["dsperf", "stack", "--servers", "bsd"]).is_err());
        assert!(Cli::try_parse_from(["dsperf", "stack", "--rounds", "0"]).is_err());
    }
}
