//! `dswan`: the WAN emulator between two interfaces. See `dswan --help`.

use anyhow::{Context, Result};
use clap::Parser;
use ds_apps::logging::Verbosity;
use ds_wan::fwd::{DirStats, Forwarder, FwdStats};
use ds_wan::port::{PacketPort, PortSpec};
use ds_wan::LinkParams;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "dswan",
    version,
    about = "WAN emulator: one-way delay, jitter, bandwidth and loss per direction between two \
             Ethernet interfaces",
    long_about = "WAN emulator: one-way delay, jitter, bandwidth and loss per direction between \
                  two Ethernet interfaces (a bump in the wire, for kernels without netem).\n\n\
                  Every frame received on A is sent on B after the A→B link's treatment, and the \
                  other way round: loss, then a token bucket (rate, burst) behind a drop-tail \
                  queue of --limit frames, then the delay with uniform jitter (frames never \
                  reorder). Rates count Ethernet frame bytes. Give each port as IFNAME or \
                  NETNS:IFNAME (a name from `ip netns` or a namespace path such as \
                  /proc/PID/ns/net). The interfaces should carry no addresses of their own \
                  (e.g. sysctl net.ipv6.conf.IF.disable_ipv6=1), so that the emulator's own \
                  kernel stays silent on the link. Offloads may stay on: GSO frames pass \
                  whole and are segmented when they leave.\n\n\
                  Example: a 2 Mbit/s link with 25 ms each way between two namespaces' veth ends:\n  \
                  dswan nsw:wa nsw:wb --delay 25ms --rate 2mbit\n\
                  Progress (pps, Mbit/s per direction) goes to stderr every --stats-every; the \
                  counters go to stdout when SIGINT or SIGTERM stops it (--json: one JSON object)."
)]
struct Cli {
    /// Port A: IFNAME or NETNS:IFNAME.
    a: PortSpec,
    /// Port B: IFNAME or NETNS:IFNAME.
    b: PortSpec,
    /// One-way delay, both directions (e.g. 10ms, 250us).
    #[arg(long, value_parser = ds_wan::params::parse_duration)]
    delay: Option<Duration>,
    /// Uniform jitter around the delay, both directions.
    #[arg(long, value_parser = ds_wan::params::parse_duration)]
    jitter: Option<Duration>,
    /// Bandwidth, both directions (e.g. 2mbit, 100mbit; 0 = unlimited).
    #[arg(long, value_parser = ds_wan::params::parse_rate)]
    rate: Option<u64>,
    /// Token bucket depth in bytes.
    #[arg(long)]
    burst: Option<u32>,
    /// Loss probability, both directions (e.g. 0.1% or 0.001).
    #[arg(long, value_parser = ds_wan::params::parse_loss)]
    loss: Option<f64>,
    /// Frames that may wait for the rate per direction (tail drop beyond).
    #[arg(long)]
    limit: Option<usize>,
    /// A→B overrides as key=value pairs, e.g. "delay=50ms,rate=1mbit".
    #[arg(long, default_value = "")]
    ab: String,
    /// B→A overrides as key=value pairs.
    #[arg(long, default_value = "")]
    ba: String,
    /// Seed of the loss and jitter draws (runs with the same seed and traffic repeat).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Busy-poll instead of sleeping when the next delivery is this close (0: always sleep).
    /// A sleeping thread wakes 10–40 µs late on a virtual machine; spinning the last stretch
    /// costs that much CPU per delivery and keeps 1 ms delays within 1–2 %.
    #[arg(long, default_value = "50us", value_parser = ds_wan::params::parse_duration)]
    spin: Duration,
    /// Progress interval on stderr (0: none).
    #[arg(long, default_value = "1s", value_parser = ds_wan::params::parse_duration)]
    stats_every: Duration,
    /// Final counters as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    verbosity: Verbosity,
}

impl Cli {
    fn link(&self, overrides: &str, dir: &str) -> Result<LinkParams> {
        let mut p = LinkParams::default();
        if let Some(v) = self.delay {
            p.delay = v;
        }
        if let Some(v) = self.jitter {
            p.jitter = v;
        }
        if let Some(v) = self.rate {
            p.rate_bps = v;
        }
        if let Some(v) = self.burst {
            p.burst = v;
        }
        if let Some(v) = self.loss {
            p.loss = v;
        }
        if let Some(v) = self.limit {
            anyhow::ensure!(v > 0, "--limit must be positive");
            p.limit = v;
        }
        p.apply(overrides).with_context(|| format!("--{dir}"))?;
        Ok(p)
    }
}

fn mbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

fn table(s: &FwdStats, secs: f64) -> String {
    let mut out = format!(
        "{:<6} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9}\n",
        "dir", "frames in", "frames out", "Mbit/s", "pps", "lost", "q-drops", "errors", "max queue"
    );
    for (name, d) in [("A→B", &s.a_to_b), ("B→A", &s.b_to_a)] {
        let DirStats {
            shaper: sh,
            send_errors,
            malformed,
        } = d;
        out.push_str(&format!(
            "{:<6} {:>12} {:>12} {:>10.3} {:>10.0} {:>8} {:>8} {:>8} {:>9}\n",
            name,
            sh.in_frames,
            sh.out_frames,
            mbit(sh.out_bytes, secs),
            sh.out_frames as f64 / secs,
            sh.lost,
            sh.queue_drops,
            send_errors + malformed,
            sh.max_backlog
        ));
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    let ab = cli.link(&cli.ab, "ab")?;
    let ba = cli.link(&cli.ba, "ba")?;
    let stop = ds_apps::signal::install().context("installing signal handlers")?;
    let a = PacketPort::open(&cli.a).with_context(|| format!("port A ({})", cli.a))?;
    let b = PacketPort::open(&cli.b).with_context(|| format!("port B ({})", cli.b))?;
    tracing::info!(a = %cli.a, b = %cli.b, "A→B {ab}; B→A {ba}");
    let mut fwd = Forwarder::new(a, b, ab, ba, cli.seed);
    fwd.set_spin(cli.spin);
    let started = Instant::now();
    let (mut last, mut last_t) = (FwdStats::default(), Instant::now());
    let every = if cli.stats_every.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        cli.stats_every
    };
    fwd.run(stop, every, |s| {
        let dt = last_t.elapsed().as_secs_f64().max(1e-9);
        let rate = |now: &DirStats, then: &DirStats| {
            (
                (now.shaper.out_frames - then.shaper.out_frames) as f64 / dt,
                mbit(now.shaper.out_bytes - then.shaper.out_bytes, dt),
            )
        };
        let (p1, m1) = rate(&s.a_to_b, &last.a_to_b);
        let (p2, m2) = rate(&s.b_to_a, &last.b_to_a);
        tracing::info!(
            "A→B {p1:.0} pps {m1:.3} Mbit/s (lost {}, q-drops {}) | B→A {p2:.0} pps {m2:.3} Mbit/s (lost {}, q-drops {})",
            s.a_to_b.shaper.lost,
            s.a_to_b.shaper.queue_drops,
            s.b_to_a.shaper.lost,
            s.b_to_a.shaper.queue_drops
        );
        last = *s;
        last_t = Instant::now();
    })?;
    let secs = started.elapsed().as_secs_f64();
    let s = fwd.stats();
    if cli.json {
        let v = serde_json::json!({
            "a": cli.a.to_string(),
            "b": cli.b.to_string(),
            "ab": ab,
            "ba": ba,
            "seconds": secs,
            "stats": s,
        });
        ds_apps::outln!("{v}");
    } else {
        ds_apps::outln!("{}", table(&s, secs).trim_end());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
