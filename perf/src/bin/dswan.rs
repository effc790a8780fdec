//! `dswan`: the WAN emulator between two interfaces. See `dswan --help`.

use anyhow::{Context, Result};
use clap::Parser;
use ds_apps::logging::Verbosity;
use ds_wan::fwd::{Forwarder, FwdStats};
use ds_wan::port::{PacketPort, PortSpec};
use ds_wan::LinkParams;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "dswan",
    version,
    about = "WAN emulator: one-way delay, jitter, bandwidth and loss per path between Ethernet \
             interfaces",
    long_about = "WAN emulator: one-way delay, jitter, bandwidth and loss per path between \
                  Ethernet interfaces (for kernels without netem). Two ports make a bump in the \
                  wire; three or more a switched core (learning the MAC addresses behind each \
                  port) with a path of its own between every pair of ports.\n\n\
                  Every frame received on port P for port Q gets the P→Q path's treatment: \
                  first P's --upstream stage if it has one (shared by all paths leaving P), then \
                  loss, a token bucket (rate, burst) behind a drop-tail queue of --limit frames, \
                  and the delay with uniform jitter (frames never reorder). Rates count Ethernet frame bytes. Give each port as IFNAME or \
                  NETNS:IFNAME (a name from `ip netns` or a namespace path such as \
                  /proc/PID/ns/net). The interfaces should carry no addresses of their own \
                  (e.g. sysctl net.ipv6.conf.IF.disable_ipv6=1), so that the emulator's own \
                  kernel stays silent on the link. Offloads may stay on: GSO frames pass \
                  whole and are segmented when they leave.\n\n\
                  Examples: a 2 Mbit/s link with 25 ms each way between two veth ends in \
                  namespace nsw:\n  \
                  dswan nsw:wa nsw:wb --delay 25ms --rate 2mbit\n\
                  a core joining a client and two sites, 20 ms between the sites, 40 ms to the \
                  client, each site's upstream at 2 Mbit/s:\n  \
                  dswan c h1 h2 --delay 40ms --link h1,h2:delay=20ms --upstream h1:rate=2mbit \
                  --upstream h2:rate=2mbit\n\
                  Progress (pps, Mbit/s per path) goes to stderr every --stats-every; the \
                  counters go to stdout when SIGINT or SIGTERM stops it (--json: one JSON object)."
)]
struct Cli {
    /// The ports, IFNAME or NETNS:IFNAME: two make a link (A, B); more make a switched core
    /// (a learning Ethernet switch with a path of its own between every pair of ports).
    #[arg(num_args = 2..=16, required = true)]
    ports: Vec<PortSpec>,
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
    /// Overrides for the path between two ports, both directions: `P,Q:key=value,...` where
    /// P and Q are port indices (from 0) or interface names, e.g. `c,h1:delay=25ms`. Repeat.
    #[arg(long, value_name = "P,Q:SPEC")]
    link: Vec<String>,
    /// Overrides for one direction of a path: `P,Q:SPEC` applies from P to Q. Repeat; applied
    /// after --link.
    #[arg(long, value_name = "P,Q:SPEC")]
    dir: Vec<String>,
    /// A shared stage for everything received on port P, in front of its paths (a site's
    /// upstream link, e.g. `h1:rate=2mbit`): `P:SPEC`. Repeat.
    #[arg(long, value_name = "P:SPEC")]
    upstream: Vec<String>,
    /// Overrides from the first port to the second (same as --dir 0,1:SPEC).
    #[arg(long, default_value = "")]
    ab: String,
    /// Overrides from the second port to the first (same as --dir 1,0:SPEC).
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
    /// Release frames up to this much early to make up for the emulator's own sending time,
    /// learnt from the frames it sends (the median frame then leaves on time instead of
    /// 10–40 µs late); 0: never before due.
    #[arg(long, default_value = "250us", value_parser = ds_wan::params::parse_duration)]
    lead_max: Duration,
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
    /// The parameters every path starts from (the common options).
    fn base(&self) -> Result<LinkParams> {
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
        Ok(p)
    }

    /// A port by index or interface name (or the whole spec as given).
    fn port(&self, s: &str, opt: &str) -> Result<usize> {
        let s = s.trim();
        if let Ok(i) = s.parse::<usize>() {
            anyhow::ensure!(i < self.ports.len(), "{opt}: no port {i}");
            return Ok(i);
        }
        let hits: Vec<usize> = (0..self.ports.len())
            .filter(|&i| self.ports[i].ifname == s || self.ports[i].to_string() == s)
            .collect();
        match hits[..] {
            [i] => Ok(i),
            [] => anyhow::bail!("{opt}: no port {s:?}"),
            _ => anyhow::bail!("{opt}: {s:?} names several ports; use an index"),
        }
    }

    /// Parameters per directed path (n×n, row = from) and per upstream.
    fn topology(&self) -> Result<(Vec<LinkParams>, Vec<Option<LinkParams>>)> {
        let n = self.ports.len();
        let mut paths = vec![self.base()?; n * n];
        let split = |item: &str, opt: &str| -> Result<(usize, usize, String)> {
            let (pq, spec) = item
                .split_once(':')
                .with_context(|| format!("--{opt} {item:?}: expected P,Q:SPEC"))?;
            let (p, q) = pq
                .split_once(',')
                .with_context(|| format!("--{opt} {item:?}: expected P,Q:SPEC"))?;
            let (p, q) = (self.port(p, opt)?, self.port(q, opt)?);
            anyhow::ensure!(p != q, "--{opt} {item:?}: a path joins two different ports");
            Ok((p, q, spec.to_string()))
        };
        for item in &self.link {
            let (p, q, spec) = split(item, "link")?;
            for k in [p * n + q, q * n + p] {
                paths[k]
                    .apply(&spec)
                    .with_context(|| format!("--link {item:?}"))?;
            }
        }
        let mut dirs: Vec<(usize, usize, String, String)> = Vec::new();
        for item in &self.dir {
            let (p, q, spec) = split(item, "dir")?;
            dirs.push((p, q, spec, format!("--dir {item:?}")));
        }
        for (spec, p, q, opt) in [(&self.ab, 0, 1, "--ab"), (&self.ba, 1, 0, "--ba")] {
            if !spec.is_empty() {
                anyhow::ensure!(n == 2, "{opt} is for two ports; use --dir P,Q:SPEC");
                dirs.push((p, q, spec.clone(), opt.to_string()));
            }
        }
        for (p, q, spec, opt) in dirs {
            paths[p * n + q].apply(&spec).with_context(|| opt)?;
        }
        let mut up = vec![None; n];
        for item in &self.upstream {
            let (p, spec) = item
                .split_once(':')
                .with_context(|| format!("--upstream {item:?}: expected P:SPEC"))?;
            let p = self.port(p, "upstream")?;
            let params: LinkParams = spec
                .parse()
                .with_context(|| format!("--upstream {item:?}"))?;
            up[p] = Some(params);
        }
        Ok((paths, up))
    }
}

fn mbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

fn table(cli: &Cli, s: &FwdStats, secs: f64) -> String {
    let name = |i: usize| {
        cli.ports
            .get(i)
            .map_or("?".to_string(), |p| p.ifname.clone())
    };
    let mut out = format!(
        "{:<20} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9}\n",
        "path", "frames in", "frames out", "Mbit/s", "pps", "lost", "q-drops", "max queue"
    );
    let rows = s
        .switch
        .paths
        .iter()
        .map(|p| (format!("{}→{}", name(p.from), name(p.to)), p.shaper))
        .chain(
            s.switch
                .upstream
                .iter()
                .map(|(i, st)| (format!("{} upstream", name(*i)), *st)),
        );
    for (label, sh) in rows {
        out.push_str(&format!(
            "{:<20} {:>12} {:>12} {:>10.3} {:>10.0} {:>8} {:>8} {:>9}\n",
            label,
            sh.in_frames,
            sh.out_frames,
            mbit(sh.out_bytes, secs),
            sh.out_frames as f64 / secs,
            sh.lost,
            sh.queue_drops,
            sh.max_backlog
        ));
    }
    out.push_str(&format!(
        "frames released {:.1} µs early (the emulator's own sending time, from {} frames)\n",
        s.lead_us, s.lead_samples
    ));
    for p in &s.ports {
        if p.send_errors + p.malformed > 0 {
            out.push_str(&format!(
                "{}: {} send errors, {} malformed frames\n",
                p.name, p.send_errors, p.malformed
            ));
        }
    }
    if s.switch.flooded + s.switch.filtered > 0 {
        out.push_str(&format!(
            "flooded {} frames, filtered {}\n",
            s.switch.flooded, s.switch.filtered
        ));
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    let (paths, up) = cli.topology()?;
    let n = cli.ports.len();
    let stop = ds_apps::signal::install().context("installing signal handlers")?;
    let mut ports = Vec::new();
    for (i, spec) in cli.ports.iter().enumerate() {
        ports.push(PacketPort::open(spec).with_context(|| format!("port {i} ({spec})"))?);
    }
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            tracing::info!(
                "{}→{}: {}",
                cli.ports[i].ifname,
                cli.ports[j].ifname,
                paths[i * n + j]
            );
        }
        if let Some(u) = &up[i] {
            tracing::info!("{} upstream: {u}", cli.ports[i].ifname);
        }
    }
    let mut fwd = Forwarder::new(ports, |i, j| paths[i * n + j], |i| up[i], cli.seed)?;
    fwd.set_spin(cli.spin);
    fwd.set_lead_max(cli.lead_max);
    tracing::info!("forwarding between {n} ports");
    let started = Instant::now();
    let (mut last, mut last_t) = (FwdStats::default(), Instant::now());
    let every = if cli.stats_every.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        cli.stats_every
    };
    let names: Vec<String> = cli.ports.iter().map(|p| p.ifname.clone()).collect();
    fwd.run(stop, every, |s| {
        let dt = last_t.elapsed().as_secs_f64().max(1e-9);
        let mut line = String::new();
        for p in &s.switch.paths {
            let (f0, b0) = last
                .path(p.from, p.to)
                .map_or((0, 0), |q| (q.shaper.out_frames, q.shaper.out_bytes));
            line.push_str(&format!(
                "{}→{} {:.0} pps {:.3} Mbit/s (lost {}, q-drops {}); ",
                names[p.from],
                names[p.to],
                (p.shaper.out_frames - f0) as f64 / dt,
                mbit(p.shaper.out_bytes - b0, dt),
                p.shaper.lost,
                p.shaper.queue_drops
            ));
        }
        line.push_str(&format!("lead {:.1} µs", s.lead_us));
        tracing::info!("{line}");
        last = s.clone();
        last_t = Instant::now();
    })?;
    let secs = started.elapsed().as_secs_f64();
    let s = fwd.stats();
    if cli.json {
        let v = serde_json::json!({
            "ports": cli.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "paths": (0..n * n)
                .filter(|k| k / n != k % n)
                .map(|k| serde_json::json!({"from": k / n, "to": k % n, "params": paths[k]}))
                .collect::<Vec<_>>(),
            "upstream": up,
            "seconds": secs,
            "stats": s,
        });
        ds_apps::outln!("{v}");
    } else {
        ds_apps::outln!("{}", table(&cli, &s, secs).trim_end());
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
