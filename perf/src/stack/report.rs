//! Summaries (medians over repeats, ratios to the kernel), the human table, JSON lines.

use super::{Environment, Options, Record, Server, Test};
use serde::Serialize;

/// Median, minimum and maximum of one metric over the repeats.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Stat {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Number of repeats.
    pub n: usize,
}

/// The value at quantile `q` (0–1) of `v` by nearest index (NaN for no values): exact, for
/// the small samples of the namespace benchmarks.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

impl Stat {
    /// Of a non-empty list.
    pub fn of(mut v: Vec<f64>) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Medians divided by the kernel's medians of the same run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    /// Upload throughput / kernel's (higher is better).
    pub upload: Option<f64>,
    /// Download throughput / kernel's (higher is better).
    pub download: Option<f64>,
    /// Median latency / kernel's (lower is better).
    pub rr_p50: Option<f64>,
    /// p99 latency / kernel's (lower is better).
    pub rr_p99: Option<f64>,
}

/// One server's summary.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// Which.
    pub server: Server,
    /// Client → server Gbit/s.
    pub upload_gbit_per_s: Option<Stat>,
    /// Server → client Gbit/s.
    pub download_gbit_per_s: Option<Stat>,
    /// Per-repeat median round trip, µs.
    pub rr_p50_us: Option<Stat>,
    /// Per-repeat p99 round trip, µs.
    pub rr_p99_us: Option<Stat>,
    /// Client retransmissions over all repeats.
    pub client_retransmits: u64,
    /// Server retransmissions over all repeats (where counted).
    pub server_retransmits: Option<u64>,
    /// Frames dropped in front of the server's reader over all repeats.
    pub queue_drops: u64,
    /// Most CPUs other processes used during one of this server's tests.
    pub max_other_cpu: f64,
    /// Most CPUs the hypervisor stole during one of this server's tests.
    pub max_steal_cpu: f64,
    /// Against the kernel behind TAP + relay, the baseline (absent for the kernel itself or
    /// when it was not measured).
    pub vs_kernel: Option<Ratios>,
    /// Against the reference kernel over a plain veth (absent when not measured).
    pub vs_kernel_veth: Option<Ratios>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Settings.
    pub options: Options,
    /// Facts about the machine and the stacks' settings.
    pub environment: Environment,
    /// How the servers are wired.
    pub topology: Vec<&'static str>,
    /// Per server.
    pub servers: Vec<ServerSummary>,
}

/// What the report says about the wiring (also in the JSON summary).
pub const TOPOLOGY: [&str; 7] = [
    "client: Linux kernel TCP (std::net) in namespace P, on a bridge; P's bridge -- veth -- bridge in namespace S",
    "ours: ds-stack Interface + Runner<TapDevice> on a TAP on S's bridge (1 TAP crossing)",
    "smoltcp: smoltcp 0.14 Interface + TunTapInterface on a TAP on S's bridge (1 TAP crossing)",
    "kernel: Linux kernel TCP in namespace K whose only link is a TAP; a userspace relay thread in dsperf copies each frame between it and a TAP on S's bridge (2 TAP crossings + 1 relay hop: read + write per frame, an extra hop the others do not have)",
    "kernel-veth (reference only): the same kernel server in namespace V on a plain veth to S's bridge: no TAP, no relay",
    "offloads: every ethtool offload off (tx/rx checksum, sg, tso, gso, gro) on every veth end, both bridges and all four TAPs, gso_max_segs at its default (the kernel segments in software before each device); ours sends no TCP super-frames; MTU 1500 everywhere",
    "all addresses in fd00:5e:1::/64 inside namespaces this run created",
];

fn stat_of(
    records: &[Record],
    server: Server,
    test: Test,
    f: impl Fn(&Record) -> Option<f64>,
) -> Option<Stat> {
    Stat::of(
        records
            .iter()
            .filter(|r| r.server == server && r.test == test)
            .filter_map(f)
            .collect(),
    )
}

fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// Summarise the records.
pub fn summarize(opts: &Options, env: &Environment, records: &[Record]) -> Summary {
    let mut servers: Vec<ServerSummary> = opts
        .servers
        .iter()
        .map(|&s| {
            let mine = records.iter().filter(|r| r.server == s);
            let server_retransmits = match s {
                Server::Smoltcp => None,
                _ => Some(mine.clone().filter_map(|r| r.server_retransmits).sum()),
            };
            ServerSummary {
                server: s,
                upload_gbit_per_s: stat_of(records, s, Test::Upload, |r| {
                    r.bulk.as_ref().map(|b| b.gbit_per_s)
                }),
                download_gbit_per_s: stat_of(records, s, Test::Download, |r| {
                    r.bulk.as_ref().map(|b| b.gbit_per_s)
                }),
                rr_p50_us: stat_of(records, s, Test::Rr, |r| r.rr.as_ref().map(|t| t.p50_us)),
                rr_p99_us: stat_of(records, s, Test::Rr, |r| r.rr.as_ref().map(|t| t.p99_us)),
                client_retransmits: mine.clone().map(|r| r.client_retransmits).sum(),
                queue_drops: mine.clone().map(|r| r.queue_drops).sum(),
                max_other_cpu: mine.clone().map(|r| r.other_cpu).fold(0.0, f64::max),
                max_steal_cpu: mine.map(|r| r.steal_cpu).fold(0.0, f64::max),
                server_retransmits,
                vs_kernel: None,
                vs_kernel_veth: None,
            }
        })
        .collect();
    servers.sort_by_key(|s| s.server);
    let ratios = |s: &ServerSummary, k: &ServerSummary| Ratios {
        upload: ratio(s.upload_gbit_per_s, k.upload_gbit_per_s),
        download: ratio(s.download_gbit_per_s, k.download_gbit_per_s),
        rr_p50: ratio(s.rr_p50_us, k.rr_p50_us),
        rr_p99: ratio(s.rr_p99_us, k.rr_p99_us),
    };
    let find =
        |servers: &[ServerSummary], x: Server| servers.iter().find(|s| s.server == x).cloned();
    if let Some(k) = find(&servers, Server::Kernel) {
        for s in servers.iter_mut().filter(|s| s.server != Server::Kernel) {
            s.vs_kernel = Some(ratios(s, &k));
        }
    }
    if let Some(k) = find(&servers, Server::KernelVeth) {
        for s in servers
            .iter_mut()
            .filter(|s| s.server != Server::KernelVeth)
        {
            s.vs_kernel_veth = Some(ratios(s, &k));
        }
    }
    Summary {
        options: opts.clone(),
        environment: env.clone(),
        topology: TOPOLOGY.to_vec(),
        servers,
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 && b & ((1 << 20) - 1) == 0 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b} B")
    }
}

/// CPUs of outside load (other processes, or hypervisor steal) from which a measurement counts
/// as disturbed.
pub const QUIET: f64 = 0.05;

/// The stderr line printed after each measurement.
pub fn progress_line(r: &Record, repeats: u32) -> String {
    let head = format!(
        "[{}/{}] {:<7} {:<8}",
        r.repeat,
        repeats,
        r.server.name(),
        format!("{:?}", r.test).to_lowercase()
    );
    let busy = if r.disturbed() {
        format!(
            "; NOT QUIET: other processes {:.2} CPU, steal {:.2} CPU",
            r.other_cpu, r.steal_cpu
        )
    } else {
        String::new()
    };
    let retr = match r.server_retransmits {
        Some(s) => format!(
            "retrans client {} server {}, queue drops {}",
            r.client_retransmits, s, r.queue_drops
        ),
        None => format!(
            "retrans client {}, queue drops {}",
            r.client_retransmits, r.queue_drops
        ),
    };
    match r.test {
        Test::Upload | Test::Download => {
            let b = r.bulk.clone().unwrap_or_default();
            format!(
                "{head} {} in {:.3} s = {:.3} Gbit/s  ({retr}{busy})",
                human_bytes(b.bytes),
                b.seconds,
                b.gbit_per_s
            )
        }
        Test::Rr => {
            let t = r.rr.clone().unwrap_or_default();
            format!(
                "{head} {} rounds: p50 {:.1} us, p99 {:.1} us, mean {:.1} us, max {:.1} us  ({retr}{busy})",
                t.rounds, t.p50_us, t.p99_us, t.mean_us, t.max_us
            )
        }
    }
}

fn cell(s: Option<Stat>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} [{:.p$}-{:.p$}]", s.median, s.min, s.max, p = prec),
        None => "-".into(),
    }
}

fn rcell(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("x{r:.2}"))
}

/// Columns padded to their widest cell: the first left-aligned, the others right-aligned.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, x)| {
                let w = widths[c];
                if c == 0 {
                    format!("{x:<w$}")
                } else {
                    format!("{x:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The human-readable report.
pub fn table(sum: &Summary) -> String {
    let o = &sum.options;
    let e = &sum.environment;
    let mut t = String::new();
    t.push_str(&format!(
        "dsperf stack: {} bulk transfers, {} x {}-byte request/response rounds (after {} warm-up), {} repeats; medians over repeats [min-max]\n",
        human_bytes(o.bytes),
        o.rounds,
        o.msg_size,
        o.warmup,
        o.repeat
    ));
    t.push_str(&format!(
        "machine: Linux {}, {} CPUs, {}\n\n",
        e.kernel_release, e.cpus, e.cpu_idle
    ));
    let mut rows = vec![[
        "server",
        "upload Gbit/s",
        "vs K",
        "download Gbit/s",
        "vs K",
        "RR p50 us",
        "vs K",
        "RR p99 us",
        "vs K",
    ]
    .map(String::from)
    .to_vec()];
    for s in &sum.servers {
        let r = s.vs_kernel.unwrap_or_default();
        let name = match s.server {
            Server::Kernel => "kernel*",
            Server::KernelVeth => "kernel-veth+",
            x => x.name(),
        };
        rows.push(vec![
            name.to_string(),
            cell(s.upload_gbit_per_s, 3),
            rcell(r.upload),
            cell(s.download_gbit_per_s, 3),
            rcell(r.download),
            cell(s.rr_p50_us, 1),
            rcell(r.rr_p50),
            cell(s.rr_p99_us, 1),
            rcell(r.rr_p99),
        ]);
    }
    t.push_str(&render(&rows));
    t.push_str("\nvs K: median / the median of `kernel` (TAP + relay), the baseline (throughput: higher is better; latency: lower is better)\n");
    t.push_str("*: the kernel behind TAP + userspace relay (one extra hop); +: reference, the kernel over a plain veth (no TAP, no relay)\n");
    if sum.servers.iter().any(|s| s.server == Server::KernelVeth) {
        t.push_str("\nratios to the reference kernel-veth (no TAP, no relay):\n");
        let mut rows = vec![["server", "upload", "download", "RR p50", "RR p99"]
            .map(String::from)
            .to_vec()];
        for s in sum
            .servers
            .iter()
            .filter(|s| s.server != Server::KernelVeth)
        {
            let r = s.vs_kernel_veth.unwrap_or_default();
            rows.push(vec![
                s.server.name().to_string(),
                rcell(r.upload),
                rcell(r.download),
                rcell(r.rr_p50),
                rcell(r.rr_p99),
            ]);
        }
        for line in render(&rows).lines() {
            t.push_str(&format!("  {line}\n"));
        }
    }
    t.push_str("\nover the whole run: retransmitted segments (client = kernel in P; server where counted) and frames dropped by a full TAP/veth queue in front of the server's reader:\n");
    for s in &sum.servers {
        t.push_str(&format!(
            "  {:<12} client retrans {}, server retrans {}, queue drops {}\n",
            s.server.name(),
            s.client_retransmits,
            s.server_retransmits
                .map_or("not counted".into(), |n| n.to_string()),
            s.queue_drops
        ));
    }
    let worst = sum
        .servers
        .iter()
        .map(|s| s.max_other_cpu.max(s.max_steal_cpu))
        .fold(0.0, f64::max);
    if worst >= QUIET {
        t.push_str(&format!(
            "\nWARNING: the machine was not quiet: other processes or the hypervisor took up to {worst:.2} CPUs during a measurement; treat the figures as noisy\n"
        ));
    } else {
        t.push_str(&format!(
            "\nthe machine was quiet: other processes and hypervisor steal stayed below {QUIET} CPU in every measurement\n"
        ));
    }
    t.push_str("\ntopology:\n");
    for l in &sum.topology {
        t.push_str(&format!("  - {l}\n"));
    }
    if sum.servers.iter().any(|s| s.server == Server::Kernel) {
        t.push_str(&format!(
            "  * kernel numbers include the relay hop (relay passed {} frames, dropped {})\n",
            e.relay_frames, e.relay_drops
        ));
    }
    t.push_str("settings:\n");
    t.push_str(&format!(
        "  kernel (P, K, V): tcp_rmem {}, tcp_wmem {}, {}, TCP_NODELAY on both ends\n",
        e.kernel_tcp_rmem, e.kernel_tcp_wmem, e.kernel_congestion
    ));
    t.push_str(&format!("  ours: {}\n", e.ours_tcp));
    t.push_str(&format!("  smoltcp: {}\n", e.smoltcp_tcp));
    t
}

/// One JSON line for a record: `{"type":"result", ...}`.
pub fn json_record(r: &Record) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(r)?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("type".into(), "result".into());
    }
    serde_json::to_string(&v)
}

/// The JSON summary line: `{"type":"summary", ...}`.
pub fn json_summary(s: &Summary) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(s)?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("type".into(), "summary".into());
    }
    serde_json::to_string(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_fields_of_their_test_only() {
        let mut r = Record::new(Server::Ours, 1, Test::Upload);
        r.bulk = Some(super::super::Bulk {
            bytes: 1,
            seconds: 2.0,
            gbit_per_s: 3.0,
        });
        let v: serde_json::Value =
            serde_json::from_str(&json_record(&r).expect("json")).expect("parse");
        assert_eq!(
            (v["bytes"].as_u64(), v["seconds"].as_f64()),
            (Some(1), Some(2.0))
        );
        assert_eq!(v["gbit_per_s"].as_f64(), Some(3.0));
        for absent in [
            "rounds", "p50_us", "p99_us", "mean_us", "max_us", "bulk", "rr",
        ] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        let mut r = Record::new(Server::Ours, 1, Test::Rr);
        r.rr = Some(super::super::RoundTrips {
            rounds: 5,
            ..Default::default()
        });
        let v: serde_json::Value =
            serde_json::from_str(&json_record(&r).expect("json")).expect("parse");
        assert_eq!(v["rounds"].as_u64(), Some(5));
        assert_eq!(v["p99_us"].as_f64(), Some(0.0));
        assert!(v.get("bytes").is_none() && v.get("gbit_per_s").is_none());
    }

    #[test]
    fn medians() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]).expect("stat");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stat::of(vec![4.0, 1.0, 2.0, 3.0]).expect("stat");
        assert_eq!(s.median, 2.5);
        assert!(Stat::of(vec![]).is_none());
    }
}
