//! `dsperf http`: HTTP/1.1 keep-alive load (wrk, one thread) against `dsnode serve --device
//! afxdp` and against nginx on the kernel's TCP, each alone behind its own veth pair, in the
//! same run.
//!
//! ```text
//!  C (client: wrk)                         O (ours)
//!  to_o fd00:5f:1::1/64  ══ veth ══  o0    dsnode serve --device afxdp, fd00:5f:1::2
//!  to_n fd00:5f:2::1/64  ══ veth ══  n0    nginx (kernel TCP), fd00:5f:2::2/64    N
//!  to_q fd00:5f:3::1/64  ══ veth ══  q0    with --queues N: dsnode serve --queues N on a   Q
//!                          (N queues)        veth of N queues, a stack per queue, fd00:5f:3::2
//! ```
//!
//! With `--queues N` the per-queue server runs on every core (its threads are not pinned:
//! wrk shares a core with one of them, and the report's busy shares say how much each took);
//! its rate is compared with the one-queue server's, measured in the same repeat.
//!
//! `--whole-bed` measures how the whole bed scales instead, where the client cannot have cores
//! of its own: every one-queue server shares `--server-cpu` with a one-thread wrk, and the
//! N-queue server (queue i's thread pinned to the i-th allowed CPU, `dsnode --queue-cpus`)
//! shares those N CPUs with a wrk of N threads. The ratio is then that of one core's work to
//! N cores', the client's included, and the report states the CPUs the server's process took
//! and what everything else took (wrk, the client's kernel TCP, the veth's and XDP's softirq
//! work: an upper bound on the client's share).
//!
//! Offloads stay at the kernel's defaults everywhere except the client's transmit checksum on
//! `to_o`: a veth peer with checksum offload hands AF_XDP (copy mode) frames whose TCP checksum
//! is only partial, which no receiver off the veth could accept. nginx's pair keeps TSO, GSO,
//! GRO and checksum offload, as a deployment would.
//!
//! Each server runs pinned to `--server-cpu`, wrk to `--client-cpu`; the report states the busy
//! share of every core during each measurement (the kernel's softirq work for nginx and the
//! veth's XDP work for ours can land on the client's core). nginx is Debian's package with one
//! worker, `sendfile`, `tcp_nopush`, `tcp_nodelay` and keep-alive without a request limit, and no
//! access log (our server keeps none either).

use crate::stack::report::Stat;
use anyhow::{bail, ensure, Context, Result};
use ds_testbed::{add_addr, veth, wait_addr_usable, Child, Netns};
use serde::Serialize;
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::info;

/// The client's address towards ours.
pub const CLIENT_O: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5f, 1, 0, 0, 0, 0, 1);
/// Our server's address (AF_XDP on `o0`).
pub const OURS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5f, 1, 0, 0, 0, 0, 2);
/// The client's address towards nginx.
pub const CLIENT_N: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5f, 2, 0, 0, 0, 0, 1);
/// nginx's address (kernel TCP on `n0`).
pub const NGINX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5f, 2, 0, 0, 0, 0, 2);
/// Our server's MAC.
pub const OURS_MAC: &str = "02:d5:5f:00:00:02";
/// The client's address towards our per-queue server.
pub const CLIENT_Q: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5f, 3, 0, 0, 0, 0, 1);
/// Our per-queue server's address (AF_XDP on `q0`, `--queues N`).
pub const OURS_QUEUES: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5f, 3, 0, 0, 0, 0, 2);
const PORT: u16 = 80;
const UP: Duration = Duration::from_secs(15);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `dsnode serve --device afxdp`.
    Ours,
    /// nginx on the kernel's TCP.
    Nginx,
    /// `dsnode serve --device afxdp --queues N`: a stack per receive queue.
    OursQueues,
}

impl Target {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Nginx => "nginx",
            Target::OursQueues => "ours, per queue",
        }
    }

    fn addr(self) -> Ipv6Addr {
        match self {
            Target::Ours => OURS,
            Target::Nginx => NGINX,
            Target::OursQueues => OURS_QUEUES,
        }
    }
}

/// One workload: an object size and a number of keep-alive connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Case {
    /// Bytes of the object every request fetches.
    pub size: u64,
    /// wrk's connections (one thread).
    pub conns: u32,
}

impl Case {
    /// `1KiB x64`-style label.
    pub fn label(&self) -> String {
        let s = self.size;
        let size = if s >= 1 << 20 && s.trailing_zeros() >= 20 {
            format!("{}MiB", s >> 20)
        } else if s >= 1 << 10 && s.trailing_zeros() >= 10 {
            format!("{}KiB", s >> 10)
        } else {
            format!("{s}B")
        };
        format!("{size} x{}", self.conns)
    }

    fn file(&self) -> String {
        format!("obj-{}.bin", self.size)
    }
}

impl std::str::FromStr for Case {
    type Err = String;
    /// `SIZE:CONNS`, e.g. `1KiB:64`.
    fn from_str(s: &str) -> Result<Case, String> {
        let (size, conns) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected SIZE:CONNS, e.g. 1KiB:64"))?;
        let size = crate::parse_size(size)?;
        let conns: u32 = conns
            .parse()
            .map_err(|e| format!("{conns:?}: connections: {e}"))?;
        if size == 0 || conns == 0 {
            return Err(format!("{s:?}: size and connections must be positive"));
        }
        Ok(Case { size, conns })
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// The workloads, in order.
    pub cases: Vec<Case>,
    /// Measurements per server and case; the order of the servers alternates.
    pub repeats: u32,
    /// Length of one measurement.
    pub duration: Duration,
    /// Unrecorded load before each measurement (connections open, caches warm).
    pub warmup: Duration,
    /// Core of the server under test.
    pub server_cpu: usize,
    /// Core of wrk.
    pub client_cpu: usize,
    /// Which servers.
    pub targets: Vec<Target>,
    /// Receive queues of [`Target::OursQueues`] (a stack per queue).
    pub queues: u32,
    /// Measure the machine's own stalls beside each measurement
    /// ([`crate::stack::load::StallProbe`]).
    pub stall_probe: bool,
    /// The whole bed's scaling (module documentation): one-queue servers and wrk on one core,
    /// the N-queue server and wrk's N threads on N.
    pub whole_bed: bool,
    /// Files each server keeps open between requests, the same on both (0: off, both
    /// servers' default): ours `--open-file-cache N`, nginx `open_file_cache max=N`, each
    /// looking a file up by name again after [`OPEN_FILE_CACHE_VALID`].
    pub open_file_cache: usize,
    /// Every process of the bed (both servers and wrk) under `SCHED_FIFO` at this priority:
    /// ours `--sched-fifo P`, nginx (master and worker) and wrk through `chrt -f P`. `None`:
    /// the normal policy, as both servers run by default.
    pub sched_fifo: Option<u8>,
}

/// How long both servers serve a cached file before opening it by name again (ours'
/// default; nginx's `open_file_cache_valid` is 60 s by default).
pub const OPEN_FILE_CACHE_VALID: Duration = Duration::from_secs(1);

/// One measurement: wrk's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Server.
    pub target: Target,
    /// Workload.
    pub case: Case,
    /// Repeat number, from 0.
    pub repeat: u32,
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Bytes received per second (headers and bodies), in Gbit/s.
    pub gbit_per_s: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx answers.
    pub errors: u64,
    /// Latency percentiles (wrk's histogram), µs: p50, p75, p90, p99, p99.9, max.
    pub latency_us: [f64; 6],
    /// Busy share (0–1) of each core during the measurement.
    pub cpu_busy: Vec<f64>,
    /// CPUs the server's processes used during the measurement (1.0: one core all the time;
    /// the kernel's softirq work on their behalf is not in it).
    pub server_cpus: f64,
    /// CPUs the rest of the machine used meanwhile: the cores' busy shares summed, less
    /// [`Sample::server_cpus`]. Wrk and the client's kernel TCP, but also the softirq work
    /// done for the server (the veth, the XDP program, the copy into its UMEM), steal time and
    /// anything else running: an upper bound on the client's share.
    pub other_cpus: f64,
    /// The machine's largest stall during the measurement, µs: the worst wake-up lateness of
    /// a real-time thread on any core ([`crate::stack::load::StallProbe`]); `None` without
    /// the probe.
    pub machine_stall_us: Option<f64>,
    /// TCP segments the server retransmitted during the measurement: ours from its stack's
    /// counters (`dsctl status` over its control socket), nginx's from the kernel's
    /// `RetransSegs` in its namespace; `None` where they could not be read.
    pub retransmits: Option<u64>,
    /// Packets the client's end of the server's veth received during the measurement (a GSO
    /// packet or a super-frame counts once): what the client's kernel had to take in.
    pub client_rx_packets: Option<u64>,
}

/// Latency percentiles reported, in the order of [`Sample::latency_us`].
pub const PERCENTILES: [&str; 6] = ["p50", "p75", "p90", "p99", "p99.9", "max"];

/// One workload's result for one server.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    /// Server.
    pub target: Target,
    /// Requests per second.
    pub rps: Option<Stat>,
    /// Received Gbit/s (heads and bodies).
    pub gbit_per_s: Option<Stat>,
    /// Medians of each latency percentile, µs.
    pub latency_us: Vec<Option<Stat>>,
    /// Errors summed over the repeats.
    pub errors: u64,
    /// Median busy share per core.
    pub cpu_busy: Vec<f64>,
    /// Median CPUs used by the server's processes.
    pub server_cpus: Option<Stat>,
    /// Median CPUs used by the rest ([`Sample::other_cpus`]).
    pub other_cpus: Option<Stat>,
    /// The machine's largest stall per measurement, µs ([`Sample::machine_stall_us`]).
    pub machine_stall_us: Option<Stat>,
    /// Segments the server retransmitted per measurement ([`Sample::retransmits`]).
    pub retransmits: Option<Stat>,
    /// Packets the client received per request ([`Sample::client_rx_packets`]).
    pub client_packets_per_request: Option<Stat>,
}

/// One workload: both servers and their ratio.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    /// Workload.
    pub case: Case,
    /// Per server.
    pub targets: Vec<TargetSummary>,
    /// Ours / nginx in requests per second, per repeat (both measured in the same repeat).
    pub rps_ratio: Option<Stat>,
    /// Ours per queue / ours on one queue, per repeat.
    pub queues_ratio: Option<Stat>,
}

/// Everything, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The options.
    pub options: Options,
    /// The nginx version line.
    pub nginx: String,
    /// The kernel release.
    pub kernel: String,
    /// Per workload.
    pub cases: Vec<CaseSummary>,
}

/// The namespaces, the object files and the two servers.
struct Bed {
    // Field order: the servers die before their namespaces go.
    ours: Option<Child>,
    nginx: Option<Child>,
    queues: Option<Child>,
    cli: Netns,
    ours_ns: Netns,
    nginx_ns: Netns,
    queues_ns: Netns,
    dir: ds_testbed::TempDir,
    /// `--whole-bed`: the CPUs of the N-queue server and its wrk, queue i's first.
    bed_cpus: Vec<usize>,
    /// [`Options::open_file_cache`].
    open_file_cache: usize,
    /// [`Options::sched_fifo`].
    sched_fifo: Option<u8>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop(self.ours.take());
        if let Some(mut n) = self.nginx.take() {
            // SIGTERM first: nginx's master stops its workers on it; a SIGKILL (the guard's)
            // would leave the workers running, orphaned.
            if let Ok(pid) = libc::pid_t::try_from(n.id()) {
                // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) && matches!(n.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn nginx_conf(dir: &Path, root: &Path, max_conns: u32, open_file_cache: usize) -> String {
    let d = dir.display();
    let cache = if open_file_cache > 0 {
        format!(
            "\x20 open_file_cache max={open_file_cache} inactive=60s;\n\
             \x20 open_file_cache_valid {}s;\n",
            OPEN_FILE_CACHE_VALID.as_secs()
        )
    } else {
        String::new()
    };
    format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\n\
         worker_rlimit_nofile {nofile};\n\
         events {{ worker_connections {conns}; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 default_type application/octet-stream;\n\
         \x20 sendfile on;\n\
         \x20 tcp_nopush on;\n\
         \x20 tcp_nodelay on;\n\
         \x20 keepalive_timeout 300s;\n\
         \x20 keepalive_requests 1000000000;\n\
         {cache}\
         \x20 client_body_temp_path {d}/tmp-body;\n\
         \x20 proxy_temp_path {d}/tmp-proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp-fcgi;\n\
         \x20 uwsgi_temp_path {d}/tmp-uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp-scgi;\n\
         \x20 server {{ listen [{NGINX}]:{PORT} backlog=4096; root {root}; }}\n\
         }}\n",
        // Room for a measurement's connections while the warm-up's are still closing.
        nofile = max_conns * 8 + 128,
        conns = max_conns * 4 + 64,
        root = root.display(),
    )
}

/// wrk's Lua hook: one line with the summary as JSON, after wrk's own report.
const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'DSPERF {"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"lat":[%.1f,%.1f,%.1f,%.1f,%.1f,%.1f]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

fn wait_serving(cli: &Netns, addr: Ipv6Addr, child: &mut Child, what: &str) -> Result<()> {
    let t = Instant::now();
    let sa = SocketAddr::from((addr, PORT));
    loop {
        let ok = cli.run(|| TcpStream::connect_timeout(&sa, Duration::from_millis(500)).is_ok());
        if ok {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited early: {st}");
        }
        ensure!(
            t.elapsed() < UP,
            "{what} does not accept on {sa} after {UP:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Bed {
    /// Where ours (`t`) answers `dsctl`: its counters are read around each measurement.
    fn control_socket(dir: &ds_testbed::TempDir, t: Target) -> std::path::PathBuf {
        dir.path()
            .join(format!("{}.sock", t.name().replace([' ', ','], "-")))
    }

    /// `dsnode serve --device afxdp` for `t` (ours, or ours per queue) on `cpus`, with
    /// `extra` options; waits until it serves.
    fn start_ours(
        &self,
        dsnode: &Path,
        root: &Path,
        t: Target,
        cpus: &str,
        extra: &[String],
    ) -> Result<Child> {
        let (ns, iface, name) = match t {
            Target::OursQueues => (&self.queues_ns, "q0", "dsnode-queues"),
            _ => (&self.ours_ns, "o0", "dsnode"),
        };
        let mut args = [
            "-c",
            cpus,
            &dsnode.display().to_string(),
            "serve",
            "--device",
            "afxdp",
            "--iface",
            iface,
            "--addr",
            &t.addr().to_string(),
            "--mac",
            OURS_MAC,
            "--port",
            &PORT.to_string(),
            "--root",
            &root.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend_from_slice(extra);
        args.extend([
            "--control-socket".to_string(),
            Self::control_socket(&self.dir, t).display().to_string(),
        ]);
        if let Some(p) = self.sched_fifo {
            args.extend(["--sched-fifo".to_string(), p.to_string()]);
        }
        if self.open_file_cache > 0 {
            args.extend([
                "--open-file-cache".to_string(),
                self.open_file_cache.to_string(),
                "--open-file-cache-valid-ms".to_string(),
                OPEN_FILE_CACHE_VALID.as_millis().to_string(),
            ]);
        }
        let (mut child, log, _) = ns.spawn_logged("taskset", &args, self.dir.path(), name)?;
        wait_serving(&self.cli, t.addr(), &mut child, name)
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        Ok(child)
    }

    fn build(opts: &Options, dsnode: &Path) -> Result<Bed> {
        let scratch = ds_testbed::TempDir::at(
            std::env::temp_dir().join(format!("dsperf-http-{}", std::process::id())),
        )?;
        let dir = scratch.path().to_path_buf();
        let root = dir.join("www");
        std::fs::create_dir_all(&root)?;
        for c in &opts.cases {
            let body: Vec<u8> = (0..c.size).map(|i| b'a' + (i % 26) as u8).collect();
            std::fs::write(root.join(c.file()), body)?;
        }
        // nginx's worker runs as www-data: it must be able to read the objects.
        for p in [&dir, &root] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        let cli = Netns::new("dsperf_http_c")?;
        let o = Netns::new("dsperf_http_o")?;
        let n = Netns::new("dsperf_http_n")?;
        let q = Netns::new("dsperf_http_q")?;
        // O's (and Q's) kernel only carries the veth for AF_XDP; keep its own IPv6 off the
        // link.
        for ns in [&o, &q] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        veth(&cli, "to_o", &o, "o0")?;
        veth(&cli, "to_n", &n, "n0")?;
        ds_testbed::veth_queues(&cli, "to_q", &q, "q0", opts.queues.max(1))?;
        // The one offload that cannot stay on: see the module documentation.
        cli.exec(&["ethtool", "-K", "to_o", "tx", "off"])?;
        cli.exec(&["ethtool", "-K", "to_q", "tx", "off"])?;
        add_addr(&cli, "to_q", &format!("{CLIENT_Q}/64"))?;
        add_addr(&cli, "to_o", &format!("{CLIENT_O}/64"))?;
        add_addr(&cli, "to_n", &format!("{CLIENT_N}/64"))?;
        add_addr(&n, "n0", &format!("{NGINX}/64"))?;
        // dsnode answers neighbour solicitations, but a fixed entry keeps the first
        // measurement free of resolution.
        for (addr, dev) in [(OURS, "to_o"), (OURS_QUEUES, "to_q")] {
            cli.ip(&[
                "-6",
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                OURS_MAC,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        for (ns, dev, a) in [
            (&cli, "to_q", CLIENT_Q),
            (&cli, "to_o", CLIENT_O),
            (&cli, "to_n", CLIENT_N),
            (&n, "n0", NGINX),
        ] {
            wait_addr_usable(ns, dev, &a.to_string(), UP)?;
        }
        let max_conns = opts.cases.iter().map(|c| c.conns).max().unwrap_or(1);
        let bed_cpus = if opts.whole_bed {
            let allowed = crate::stack::client::allowed_cpus()?;
            ensure!(
                allowed.len() >= opts.queues as usize,
                "--whole-bed with {} queues needs as many CPUs; this process may use {:?}",
                opts.queues,
                allowed
            );
            let cpus = allowed[..opts.queues as usize].to_vec();
            // The one-core bed on one of the N-core bed's CPUs, not beside them.
            ensure!(
                cpus.contains(&opts.server_cpu),
                "--whole-bed: --server-cpu {} is not one of the {} queues' CPUs {:?}",
                opts.server_cpu,
                opts.queues,
                cpus
            );
            cpus
        } else {
            Vec::new()
        };
        let mut bed = Bed {
            ours: None,
            nginx: None,
            queues: None,
            cli,
            ours_ns: o,
            nginx_ns: n,
            queues_ns: q,
            dir: scratch,
            bed_cpus,
            open_file_cache: opts.open_file_cache,
            sched_fifo: opts.sched_fifo,
        };
        if opts.targets.contains(&Target::OursQueues) {
            let mut extra = vec!["--queues".to_string(), opts.queues.to_string()];
            let cpus = if opts.whole_bed {
                // Queue i's thread on the i-th of the bed's CPUs.
                let list = cpu_list(&bed.bed_cpus);
                extra.extend(["--queue-cpus".to_string(), list.clone()]);
                list
            } else {
                // Every core: one thread per queue, wherever the scheduler puts them.
                format!("{},{}", opts.server_cpu, opts.client_cpu)
            };
            bed.queues = Some(bed.start_ours(dsnode, &root, Target::OursQueues, &cpus, &extra)?);
        }
        if opts.targets.contains(&Target::Ours) {
            let cpu = opts.server_cpu.to_string();
            bed.ours = Some(bed.start_ours(dsnode, &root, Target::Ours, &cpu, &[])?);
        }
        if opts.targets.contains(&Target::Nginx) {
            let conf = dir.join("nginx.conf");
            std::fs::write(
                &conf,
                nginx_conf(&dir, &root, max_conns, opts.open_file_cache),
            )?;
            let cpu = opts.server_cpu.to_string();
            let mut args = vec!["-c".to_string(), cpu];
            args.extend(fifo_prefix(opts.sched_fifo));
            args.extend(
                [
                    "nginx",
                    "-c",
                    &conf.display().to_string(),
                    "-g",
                    "daemon off;",
                ]
                .map(String::from),
            );
            let (mut child, log, _) = bed.nginx_ns.spawn_logged("taskset", &args, &dir, "nginx")?;
            wait_serving(&bed.cli, NGINX, &mut child, "nginx")
                .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
            bed.nginx = Some(child);
        }
        Ok(bed)
    }
}

#[derive(serde::Deserialize)]
struct WrkOut {
    requests: u64,
    duration_us: u64,
    bytes: u64,
    errors: u64,
    lat: [f64; 6],
}

/// What one wrk run measured: its summary, the cores' busy shares, the server's CPUs, the machine's largest stall.
type Measured = (WrkOut, Vec<f64>, f64, Option<f64>);

/// One wrk run of `d` against `t`; with `probe`, the machine's stalls are measured beside it.
fn wrk(
    bed: &Bed,
    opts: &Options,
    t: Target,
    c: Case,
    d: Duration,
    probe: bool,
) -> Result<Measured> {
    let server = match t {
        Target::Ours => bed.ours.as_ref(),
        Target::Nginx => bed.nginx.as_ref(),
        Target::OursQueues => bed.queues.as_ref(),
    }
    .map(|c| c.id());
    let cpu_before = server.map(crate::stack::load::process_cpu);
    let t0 = Instant::now();
    let url = format!("http://[{}]:{PORT}/{}", t.addr(), c.file());
    let script = bed.dir.path().join("report.lua");
    if !script.exists() {
        std::fs::write(&script, WRK_LUA)?;
    }
    let secs = format!("{}s", d.as_secs().max(1));
    let conns = c.conns.to_string();
    // wrk's cores and threads: its own core, or (`--whole-bed`) the server's.
    let (cpu, threads) = match (opts.whole_bed, t) {
        (false, _) => (opts.client_cpu.to_string(), 1),
        (true, Target::OursQueues) => (cpu_list(&bed.bed_cpus), bed.bed_cpus.len()),
        (true, _) => (opts.server_cpu.to_string(), 1),
    };
    let threads = format!("-t{threads}");
    let before = crate::stack::load::cores();
    let stalls = if probe {
        crate::stack::load::StallProbe::start(&bed.cli, bed.dir.path())
    } else {
        None
    };
    let out = bed
        .cli
        .command("taskset")
        .args(["-c", &cpu])
        .args(fifo_prefix(opts.sched_fifo))
        .args(["wrk", &threads, "-c", &conns, "-d", &secs])
        .args(["--timeout", "10s", "-s"])
        .arg(&script)
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run wrk")?;
    let machine_stall = stalls.and_then(crate::stack::load::StallProbe::finish);
    let busy = crate::stack::load::cores_busy(&before, &crate::stack::load::cores());
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let server_cpus = match (server, cpu_before) {
        (Some(pid), Some(b)) => (crate::stack::load::process_cpu(pid) - b).max(0.0) / secs,
        _ => 0.0,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("DSPERF "))
        .with_context(|| format!("no summary from wrk: {text}"))?;
    let w: WrkOut = serde_json::from_str(line).with_context(|| format!("wrk summary {line}"))?;
    Ok((w, busy, server_cpus, machine_stall))
}

/// Segments the server `t` has retransmitted so far: ours from its stack's counters over
/// its control socket, nginx from the kernel's TCP counters in its namespace.
fn retransmits(bed: &Bed, t: Target) -> Option<u64> {
    if t == Target::Nginx {
        let tcp = ds_testbed::tcp_counters(&bed.nginx_ns).ok()?;
        return tcp.get("RetransSegs").copied();
    }
    let req = ds_apps::control::Request::new("status");
    let v = ds_apps::control::request(&Bed::control_socket(&bed.dir, t), &req, SECOND).ok()?;
    v["interface"]["tcp_retransmits"].as_u64()
}

const SECOND: Duration = Duration::from_secs(1);

/// Packets received so far by the client's end of the veth towards `t`.
fn client_rx_packets(bed: &Bed, t: Target) -> Option<u64> {
    let iface = match t {
        Target::Ours => "to_o",
        Target::Nginx => "to_n",
        Target::OursQueues => "to_q",
    };
    ds_testbed::link_stats(&bed.cli, iface, "rx", &["packets"])
        .ok()?
        .first()
        .copied()
}

/// CPUs as `taskset` and `dsnode --queue-cpus` take them: `0,1`.
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Run every case `repeats` times on both servers (their order alternating per repeat);
/// `each` sees every sample as it is measured. Needs root, wrk, nginx and `dsnode`.
pub fn run(
    opts: &Options,
    dsnode: &Path,
    mut each: impl FnMut(&Sample),
) -> Result<(Vec<Sample>, String)> {
    ensure!(
        crate::is_root(),
        "dsperf http needs root (network namespaces, AF_XDP)"
    );
    ensure!(!opts.targets.is_empty(), "no server to measure");
    for prog in ["wrk", "nginx", "taskset", "ethtool"] {
        ensure!(
            which(prog),
            "{prog} not found: install it (scripts/setup.sh installs wrk and nginx)"
        );
    }
    crate::raise_nofile(0)?;
    let nginx = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let bed = Bed::build(opts, dsnode)?;
    let mut samples = Vec::new();
    let total = opts.cases.len() * opts.repeats as usize * opts.targets.len();
    for c in &opts.cases {
        for r in 0..opts.repeats {
            let mut order = opts.targets.clone();
            if r % 2 == 1 {
                order.reverse();
            }
            for t in order {
                crate::stack::check_interrupt()?;
                if !opts.warmup.is_zero() {
                    wrk(&bed, opts, t, *c, opts.warmup, false).context("warm-up")?;
                }
                let retx_before = retransmits(&bed, t);
                let rx_before = client_rx_packets(&bed, t);
                let (w, busy, server_cpus, machine_stall_us) =
                    wrk(&bed, opts, t, *c, opts.duration, opts.stall_probe)?;
                let retransmits = retx_before
                    .zip(retransmits(&bed, t))
                    .map(|(a, b)| b.saturating_sub(a));
                let client_rx_packets = rx_before
                    .zip(client_rx_packets(&bed, t))
                    .map(|(a, b)| b.saturating_sub(a));
                let secs = (w.duration_us as f64 / 1e6).max(1e-9);
                let s = Sample {
                    target: t,
                    case: *c,
                    repeat: r,
                    requests: w.requests,
                    rps: w.requests as f64 / secs,
                    gbit_per_s: w.bytes as f64 * 8.0 / secs / 1e9,
                    errors: w.errors,
                    latency_us: w.lat,
                    other_cpus: (busy.iter().sum::<f64>() - server_cpus).max(0.0),
                    cpu_busy: busy,
                    server_cpus,
                    machine_stall_us,
                    retransmits,
                    client_rx_packets,
                };
                info!(
                    "[{}/{total}] {} {}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, \
                     {} errors, server {:.2} CPUs, cores busy {:?}, machine stall {}",
                    samples.len() + 1,
                    c.label(),
                    t.name(),
                    s.rps,
                    s.latency_us[0],
                    s.latency_us[3],
                    s.latency_us[5],
                    s.errors,
                    s.server_cpus,
                    s.cpu_busy
                        .iter()
                        .map(|b| format!("{:.0}%", b * 100.0))
                        .collect::<Vec<_>>(),
                    s.machine_stall_us
                        .map_or("not measured".to_string(), |m| format!("{m:.0} µs"))
                );
                each(&s);
                samples.push(s);
            }
        }
    }
    // Errors on nginx's side are explained in its own log; show its end before it goes.
    if samples
        .iter()
        .any(|s| s.target == Target::Nginx && s.errors > 0)
    {
        let log =
            std::fs::read_to_string(bed.dir.path().join("nginx-error.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tracing::warn!(
            "nginx answered with errors; the end of its error log: {:?}",
            tail.into_iter().rev().collect::<Vec<_>>()
        );
    }
    drop(bed);
    Ok((samples, nginx))
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Medians per case and server, and the per-repeat ratio ours / nginx.
pub fn summarize(opts: &Options, nginx: String, samples: &[Sample]) -> Summary {
    let cases = opts
        .cases
        .iter()
        .map(|c| {
            let of = |t: Target| {
                samples
                    .iter()
                    .filter(move |s| s.case == *c && s.target == t)
            };
            let targets = opts
                .targets
                .iter()
                .map(|&t| {
                    let cores = of(t).map(|s| s.cpu_busy.len()).max().unwrap_or(0);
                    TargetSummary {
                        target: t,
                        rps: Stat::of(of(t).map(|s| s.rps).collect()),
                        gbit_per_s: Stat::of(of(t).map(|s| s.gbit_per_s).collect()),
                        latency_us: (0..PERCENTILES.len())
                            .map(|i| Stat::of(of(t).map(|s| s.latency_us[i]).collect()))
                            .collect(),
                        errors: of(t).map(|s| s.errors).sum(),
                        cpu_busy: (0..cores)
                            .map(|k| {
                                Stat::of(of(t).filter_map(|s| s.cpu_busy.get(k).copied()).collect())
                                    .map_or(0.0, |s| s.median)
                            })
                            .collect(),
                        server_cpus: Stat::of(of(t).map(|s| s.server_cpus).collect()),
                        other_cpus: Stat::of(of(t).map(|s| s.other_cpus).collect()),
                        machine_stall_us: Stat::of(
                            of(t).filter_map(|s| s.machine_stall_us).collect(),
                        ),
                        retransmits: Stat::of(
                            of(t)
                                .filter_map(|s| s.retransmits.map(|n| n as f64))
                                .collect(),
                        ),
                        client_packets_per_request: Stat::of(
                            of(t)
                                .filter(|s| s.requests > 0)
                                .filter_map(|s| {
                                    s.client_rx_packets.map(|p| p as f64 / s.requests as f64)
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            let ratio = |x: Target, y: Target| {
                let per_repeat = (0..opts.repeats)
                    .filter_map(|r| {
                        let rps = |t| of(t).find(|s| s.repeat == r).map(|s| s.rps);
                        match (rps(x), rps(y)) {
                            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                            _ => None,
                        }
                    })
                    .collect();
                Stat::of(per_repeat)
            };
            CaseSummary {
                case: *c,
                targets,
                rps_ratio: ratio(Target::Ours, Target::Nginx),
                queues_ratio: ratio(Target::OursQueues, Target::Ours),
            }
        })
        .collect();
    Summary {
        options: opts.clone(),
        nginx,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cases,
    }
}

/// `chrt -f P` before a command run under `taskset`, for [`Options::sched_fifo`].
fn fifo_prefix(p: Option<u8>) -> Vec<String> {
    p.map(|p| vec!["chrt".to_string(), "-f".to_string(), p.to_string()])
        .unwrap_or_default()
}

/// What the servers were told of an open-file cache and a scheduling policy, for tables and
/// charts: empty with neither.
pub fn settings_note(o: &Options) -> String {
    let mut note = String::new();
    if o.open_file_cache > 0 {
        note += &format!(
            "; open-file cache on both ({} files, valid {} s)",
            o.open_file_cache,
            OPEN_FILE_CACHE_VALID.as_secs()
        );
    }
    if let Some(p) = o.sched_fifo {
        note += &format!("; both servers and wrk under SCHED_FIFO {p}");
    }
    note
}

/// The human table (markdown).
pub fn table(s: &Summary) -> String {
    let layout = if s.options.whole_bed {
        format!(
            "the whole bed: each one-queue server and wrk -t1 on core {}, ours with {} queues \
             and wrk -t{} on the first {} allowed cores",
            s.options.server_cpu, s.options.queues, s.options.queues, s.options.queues
        )
    } else {
        format!(
            "wrk -t1; servers on core {}, wrk on core {}",
            s.options.server_cpu, s.options.client_cpu
        )
    };
    let layout = layout + &settings_note(&s.options);
    let mut out = format!(
        "dsperf http: keep-alive, {} s per measurement, medians of {} repeats; {layout}; {}; \
         Linux {}\n\n",
        s.options.duration.as_secs(),
        s.options.repeats,
        s.nginx,
        s.kernel
    );
    // The stall column only when the probe ran (`--stall-probe`).
    let probed = s
        .cases
        .iter()
        .any(|c| c.targets.iter().any(|t| t.machine_stall_us.is_some()));
    out.push_str(&format!(
        "| object, connections | server | req/s (min–max) | ours/nginx | Gbit/s | p50 µs | p90 µs \
         | p99 µs | max µs |{} errors | server retransmits | client rx packets/request \
         | cores busy | server CPUs | other CPUs | req/s per server CPU |\n\
         |---|---|---|---|---|---|---|---|---|{}---|---|---|---|---|---|---|\n",
        if probed { " machine stall µs |" } else { "" },
        if probed { "---|" } else { "" },
    ));
    for c in &s.cases {
        for t in &c.targets {
            let med =
                |x: &Option<Stat>| x.map_or("–".to_string(), |s| format!("{:.0}", s.median));
            let rps = t.rps.map_or("–".to_string(), |s| {
                format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
            });
            let fmt = |r: Option<Stat>, what: &str| {
                r.map_or("–".to_string(), |r| {
                    format!("{:.2}× ({:.2}–{:.2}){what}", r.median, r.min, r.max)
                })
            };
            let ratio = match t.target {
                Target::Ours => fmt(c.rps_ratio, ""),
                Target::OursQueues => fmt(
                    c.queues_ratio,
                    &format!(" of ours, {} queues", s.options.queues),
                ),
                Target::Nginx => String::new(),
            };
            let busy = t
                .cpu_busy
                .iter()
                .map(|b| format!("{:.0}%", b * 100.0))
                .collect::<Vec<_>>()
                .join(" / ");
            let (cpus, per_cpu) = match (t.server_cpus, t.rps) {
                (Some(c), Some(r)) if c.median > 0.0 => (
                    format!("{:.2}", c.median),
                    format!("{:.0}", r.median / c.median),
                ),
                _ => ("–".to_string(), "–".to_string()),
            };
            let others = t
                .other_cpus
                .map_or("–".to_string(), |c| format!("{:.2}", c.median));
            out.push_str(&format!(
                "| {} | {} | {rps} | {ratio} | {} | {} | {} | {} | {} |{} {} | {} | {} | {busy} | {cpus} | {others} | {per_cpu} |\n",
                c.case.label(),
                t.target.name(),
                t.gbit_per_s
                    .map_or("–".to_string(), |s| format!("{:.2}", s.median)),
                med(&t.latency_us[0]),
                med(&t.latency_us[2]),
                med(&t.latency_us[3]),
                med(&t.latency_us[5]),
                if probed {
                    format!(" {} |", med(&t.machine_stall_us))
                } else {
                    String::new()
                },
                t.errors,
                med(&t.retransmits),
                t.client_packets_per_request
                    .map_or("–".to_string(), |s| format!("{:.1}", s.median)),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One repeat of `cases`, 1 s each, ours against nginx with the defaults of `dsperf http`.
    fn options(cases: Vec<Case>) -> Options {
        Options {
            cases,
            repeats: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            server_cpu: 1,
            client_cpu: 0,
            targets: vec![Target::Ours, Target::Nginx],
            queues: 1,
            stall_probe: false,
            whole_bed: false,
            open_file_cache: 0,
            sched_fifo: None,
        }
    }

    #[test]
    fn cases_parse_and_label() {
        let c: Case = "64KiB:16".parse().expect("parse");
        assert_eq!(
            c,
            Case {
                size: 65536,
                conns: 16
            }
        );
        assert_eq!(c.label(), "64KiB x16");
        assert!("64KiB".parse::<Case>().is_err());
        assert!("0:1".parse::<Case>().is_err());
        assert!("1k:x".parse::<Case>().is_err());
    }

    #[test]
    fn ratio_is_per_repeat() {
        let opts = Options {
            repeats: 2,
            ..options(vec![Case {
                size: 1024,
                conns: 1,
            }])
        };
        let s = |target, repeat, rps| Sample {
            target,
            case: opts.cases[0],
            repeat,
            requests: 10,
            rps,
            gbit_per_s: 0.0,
            errors: 0,
            latency_us: [0.0; 6],
            cpu_busy: vec![0.5, 0.25],
            server_cpus: 1.0,
            other_cpus: 0.5,
            machine_stall_us: Some(40.0),
            retransmits: Some(u64::from(repeat) * 4 + 3),
            client_rx_packets: Some(u64::from(repeat) * 10 + 5),
        };
        let samples = [
            s(Target::Ours, 0, 200.0),
            s(Target::Nginx, 0, 100.0),
            s(Target::Ours, 1, 100.0),
            s(Target::Nginx, 1, 100.0),
        ];
        let sum = summarize(&opts, String::new(), &samples);
        let r = sum.cases[0].rps_ratio.expect("ratio");
        assert_eq!((r.min, r.max, r.median), (1.0, 2.0, 1.5));
        assert_eq!(sum.cases[0].targets[0].cpu_busy, vec![0.5, 0.25]);
        // Retransmissions: the median of the repeats' (3 and 7), in its own column.
        assert_eq!(
            sum.cases[0].targets[0].retransmits.map(|r| r.median),
            Some(5.0)
        );
        // Client packets per request: 5 and 15 over 10 requests, median 1.0.
        assert!(table(&sum).contains("| 0 | 5 | 1.0 |"), "{}", table(&sum));
        assert!(table(&sum).contains("1KiB x1"));
        // Every row has the header's number of cells, with the stall column and without.
        let cells = |t: &str| -> Vec<usize> {
            t.lines()
                .filter(|l| l.starts_with('|'))
                .map(|l| l.matches('|').count())
                .collect()
        };
        let with = cells(&table(&sum));
        assert!(table(&sum).contains("machine stall"));
        assert!(with.windows(2).all(|w| w[0] == w[1]), "{with:?}");
        let mut bare = samples.to_vec();
        for s in &mut bare {
            s.machine_stall_us = None;
        }
        let t = table(&summarize(&opts, String::new(), &bare));
        assert!(!t.contains("machine stall"));
        let without = cells(&t);
        assert!(without.windows(2).all(|w| w[0] == w[1]), "{without:?}");
        assert_eq!(with[0], without[0] + 1);
    }

    /// nginx is given the same open-file cache as ours, or none, as asked.
    #[test]
    fn nginx_gets_the_open_file_cache_it_is_asked_for() {
        let (d, r) = (Path::new("/tmp/d"), Path::new("/tmp/r"));
        let off = nginx_conf(d, r, 64, 0);
        assert!(!off.contains("open_file_cache"), "{off}");
        let on = nginx_conf(d, r, 64, 1000);
        assert!(
            on.contains("open_file_cache max=1000 inactive=60s;\n")
                && on.contains("open_file_cache_valid 1s;\n"),
            "{on}"
        );
        assert_eq!(on.lines().count(), off.lines().count() + 2);
    }

    /// `--sched-fifo P`: nginx and wrk run through `chrt -f P` (ours takes `--sched-fifo`),
    /// and the tables and charts say so; without it nothing is prefixed or said.
    #[test]
    fn a_real_time_policy_is_given_to_every_process_and_said() {
        assert!(fifo_prefix(None).is_empty());
        assert_eq!(fifo_prefix(Some(10)), ["chrt", "-f", "10"]);
        let mut o = options(Vec::new());
        assert_eq!(settings_note(&o), "");
        o.sched_fifo = Some(10);
        assert_eq!(
            settings_note(&o),
            "; both servers and wrk under SCHED_FIFO 10"
        );
        o.open_file_cache = 1000;
        assert!(settings_note(&o).starts_with("; open-file cache on both (1000 files"));
        assert!(settings_note(&o).ends_with("SCHED_FIFO 10"));
    }

    /// `--whole-bed`: the N-queue server against the one-queue one per repeat, the layout
    /// in the table's first line, and both charts written.
    #[test]
    fn the_whole_bed_is_summarised_charted_and_says_so() {
        let opts = Options {
            duration: Duration::from_secs(5),
            targets: vec![Target::Ours, Target::OursQueues],
            queues: 2,
            whole_bed: true,
            open_file_cache: 100,
            ..options(vec![Case {
                size: 1024,
                conns: 256,
            }])
        };
        let s = |target, rps, server_cpus| Sample {
            target,
            case: opts.cases[0],
            repeat: 0,
            requests: 0,
            rps,
            gbit_per_s: 0.0,
            errors: 0,
            latency_us: [0.0; 6],
            cpu_busy: vec![1.0, 1.0],
            server_cpus,
            other_cpus: 2.0 - server_cpus,
            machine_stall_us: None,
            retransmits: None,
            client_rx_packets: None,
        };
        let sum = summarize(
            &opts,
            String::new(),
            &[s(Target::Ours, 50.0, 0.5), s(Target::OursQueues, 95.0, 1.0)],
        );
        assert_eq!(sum.cases[0].queues_ratio.map(|r| r.median), Some(1.9));
        let t = table(&sum);
        assert!(t.contains("wrk -t2 on the first 2 allowed cores"), "{t}");
        assert!(t.contains("| 1.00 | 1.00 |"), "server and other CPUs: {t}");
        let cache = "open-file cache on both (100 files, valid 1 s)";
        assert!(t.contains(cache), "{t}");
        let dir = ds_testbed::TempDir::new("http-plot").expect("dir");
        let http = crate::plot::write_http_svg(&sum, dir.path()).expect("http chart");
        let svg = std::fs::read_to_string(http).expect("svg");
        assert!(svg.contains(cache), "the chart's footnote names the cache");
        let q = crate::plot::write_http_queues_svg(&sum, dir.path()).expect("queues chart");
        let svg = std::fs::read_to_string(q).expect("svg");
        for text in ["ours, 2 queues", "the rest (wrk", "1KiB x256, 2 queues"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
