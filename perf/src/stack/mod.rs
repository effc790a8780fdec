//! `dsperf stack`: bulk throughput and request/response latency of three TCP implementations
//! serving the same kernel TCP client in the same run, each behind a TAP device:
//!
//! * `kernel`: the Linux kernel's TCP (the baseline), in namespace K, whose only link is a TAP
//!   whose frames a userspace relay thread copies to and from a second TAP on S's bridge;
//! * `ours`: `ds-stack` (`Interface` + `Runner<TapDevice>`) on a TAP on S's bridge;
//! * `smoltcp`: smoltcp 0.14 (its own `TunTapInterface`) on a TAP on S's bridge;
//!
//! plus a reference point outside the comparison proper, `kernel-veth`: the kernel's TCP in
//! namespace V on a plain veth to S's bridge (no TAP, no relay), which shows what the relay hop
//! costs the baseline.
//!
//! See [`topo`] for the picture. Each repeat measures every server in turn (the order rotates
//! between repeats): an upload (client → server) of `bytes`, a download (server → client) of
//! `bytes`, and `rounds` request/response round trips on one connection. The summary takes,
//! per server and metric, the median over the repeats, and divides it by the kernel's.
//!
//! The machine may be shared: before each test the benchmark waits for other processes to
//! leave the CPUs alone, measures how much CPU they took during the test ([`load`]), and
//! measures a disturbed test again.

pub mod client;
pub mod load;
pub mod proto;
pub mod report;
pub mod servers;
pub mod sockopt;
pub mod tap;
pub mod topo;

use anyhow::{anyhow, bail, Context, Result};
use ds_testbed::{counter_delta, tcp_counters, Netns};
use serde::Serialize;
use servers::{KernelParts, ServerCtl};
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use topo::Topology;
use tracing::{info, warn};

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum Server {
    /// The Linux kernel's TCP (baseline), behind TAP + relay.
    Kernel,
    /// Reference: the kernel's TCP over a plain veth (no TAP, no relay).
    #[serde(rename = "kernel-veth")]
    KernelVeth,
    /// ds-stack.
    Ours,
    /// smoltcp 0.14.
    Smoltcp,
}

impl Server {
    /// All of them, baseline first.
    pub const ALL: [Server; 4] = [
        Server::Kernel,
        Server::KernelVeth,
        Server::Ours,
        Server::Smoltcp,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Server::Kernel => "kernel",
            Server::KernelVeth => "kernel-veth",
            Server::Ours => "ours",
            Server::Smoltcp => "smoltcp",
        }
    }

    /// Its address.
    pub fn addr(self) -> Ipv6Addr {
        match self {
            Server::Kernel => topo::KERNEL,
            Server::KernelVeth => topo::KERNEL_VETH,
            Server::Ours => topo::OURS,
            Server::Smoltcp => topo::SMOLTCP,
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<Server> {
        Server::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// A test of one repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Client → server bulk.
    Upload,
    /// Server → client bulk.
    Download,
    /// Request/response.
    Rr,
}

/// Benchmark settings.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Bytes per bulk transfer.
    pub bytes: u64,
    /// Recorded request/response rounds.
    pub rounds: u32,
    /// Unrecorded warm-up rounds before them.
    pub warmup: u32,
    /// Request and response size.
    pub msg_size: usize,
    /// Repeats.
    pub repeat: u32,
    /// Servers, in the order of the first repeat.
    pub servers: Vec<Server>,
    /// Also measure server → client bulk.
    pub download: bool,
    /// Kernel congestion control, set per socket on the client and the kernel servers
    /// (`None`: the namespaces' default).
    pub kernel_cc: Option<String>,
    /// Pin the client thread to this CPU (`None`: let the scheduler place it).
    pub client_cpu: Option<usize>,
    /// Pin every server-side thread (stack runners, kernel server, relay) to this CPU.
    pub server_cpu: Option<usize>,
    /// Before each test, wait up to this long for the machine to be quiet (0: don't wait).
    pub quiet_wait_secs: u64,
    /// Measure a test again, up to this many times, when outside load disturbed it.
    pub retries: u32,
    /// Hold `/dev/cpu_dma_latency` at 0 for the run (idle CPUs poll instead of halting).
    pub idle_poll: bool,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Which server.
    pub server: Server,
    /// Repeat number, from 1.
    pub repeat: u32,
    /// Which test.
    pub test: Test,
    /// Bulk transfers: what moved, how fast.
    #[serde(flatten)]
    pub bulk: Option<Bulk>,
    /// Request/response: the round trips.
    #[serde(flatten)]
    pub rr: Option<RoundTrips>,
    /// Segments the kernel client in P retransmitted during the test.
    pub client_retransmits: u64,
    /// Segments the server retransmitted (kernel: K's counter; ours: its stats; smoltcp: not
    /// counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_retransmits: Option<u64>,
    /// Frames dropped because the queue in front of the server's reader was full: the server's
    /// TAP in S (ours, smoltcp), the relay's TAPs in S and K (kernel), the veth end in S
    /// (kernel-veth).
    pub queue_drops: u64,
    /// CPUs used by other processes on the machine during the test (see [`load`]).
    pub other_cpu: f64,
    /// CPUs stolen by the hypervisor during the test.
    pub steal_cpu: f64,
    /// Which attempt this is (from 1; later ones replace disturbed measurements).
    pub attempt: u32,
}

/// A bulk transfer's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bulk {
    /// Payload bytes.
    pub bytes: u64,
    /// Seconds.
    pub seconds: f64,
    /// Goodput, Gbit/s.
    pub gbit_per_s: f64,
}

/// A request/response test's round trips.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundTrips {
    /// Recorded rounds.
    pub rounds: u32,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Largest, µs.
    pub max_us: f64,
}

impl Record {
    fn new(server: Server, repeat: u32, test: Test) -> Self {
        Record {
            server,
            repeat,
            test,
            bulk: None,
            rr: None,
            client_retransmits: 0,
            server_retransmits: None,
            queue_drops: 0,
            other_cpu: 0.0,
            steal_cpu: 0.0,
            attempt: 1,
        }
    }

    /// Whether outside load (other processes, hypervisor steal) reached [`report::QUIET`].
    pub fn disturbed(&self) -> bool {
        self.other_cpu >= report::QUIET || self.steal_cpu >= report::QUIET
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Make the first Ctrl-C stop the benchmark after the current measurement (so namespaces are
/// cleaned up); a second one kills the process as usual.
pub fn install_sigint_handler() {
    // SAFETY: a zeroed sigaction is a valid starting value; we set a handler that only stores
    // to an atomic (async-signal-safe), an empty mask, and SA_RESETHAND so the next SIGINT has
    // the default action. `sa` outlives the call and the old action is not requested.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            warn!("cannot install the SIGINT handler");
        }
    }
}

pub(crate) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sets every stop flag when dropped, so server threads end even when the run fails.
pub(crate) struct StopAll<'a>(pub(crate) &'a [ServerCtl]);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        for c in self.0 {
            c.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// A named scoped thread (names show up in `perf`, `top -H`).
pub(crate) fn spawn<'scope, 'env, T: Send + 'scope>(
    sc: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name(format!("dsperf-{name}"))
        .spawn_scoped(sc, f)
        .with_context(|| format!("spawn the {name} thread"))
}

/// Run `f` on the calling thread after pinning it to `cpu` (if any).
fn pinned<T>(cpu: Option<usize>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(c) = cpu {
        client::pin_to_cpu(c)?;
    }
    f()
}

/// Run `f` in the client's namespace, pinned to `cpu` (if any); errors say `what` ran.
fn in_client<T: Send>(
    topo: &Topology,
    cpu: Option<usize>,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    topo.peer
        .ns
        .try_run(move || pinned(cpu, f))?
        .with_context(|| what.to_string())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn queue_drops(queues: &[(&Netns, String)]) -> Result<u64> {
    let mut n = 0;
    for (ns, dev) in queues {
        n += topo::tx_dropped(ns, dev)?;
    }
    Ok(n)
}

fn retrans(c: &HashMap<String, u64>) -> u64 {
    c.get("TcpRetransSegs").copied().unwrap_or(0)
}

/// Facts about the run that the report prints.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// `uname -r`.
    pub kernel_release: String,
    /// CPUs online.
    pub cpus: usize,
    /// K's (and P's) `net.ipv4.tcp_rmem`.
    pub kernel_tcp_rmem: String,
    /// K's (and P's) `net.ipv4.tcp_wmem`.
    pub kernel_tcp_wmem: String,
    /// K's congestion control.
    pub kernel_congestion: String,
    /// Our stack's TCP settings (defaults, Nagle off).
    pub ours_tcp: String,
    /// smoltcp's socket settings.
    pub smoltcp_tcp: String,
    /// How idle CPUs wait (cpuidle driver and governor, and whether `--idle-poll` was on).
    pub cpu_idle: String,
    /// Frames the kernel path's relay passed on.
    pub relay_frames: u64,
    /// Frames the relay dropped because a TAP queue was full.
    pub relay_drops: u64,
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Run the benchmark: build the namespaces, start the servers, measure, stop, clean up.
/// `on_record` sees every measurement as it is made.
pub fn run(
    opts: &Options,
    mut on_record: impl FnMut(&Record),
) -> Result<(Vec<Record>, Environment)> {
    if opts.servers.is_empty() {
        bail!("no server selected");
    }
    info!("building namespaces P (client), S (server host), K (kernel server)");
    let topo = Topology::build()?;
    let ns_default_cc = topo.kernel_sysctl("net.ipv4.tcp_congestion_control");
    let kernel_cc = match &opts.kernel_cc {
        Some(cc) => {
            format!("{cc} (TCP_CONGESTION per socket; the namespaces' default is {ns_default_cc})")
        }
        None => format!("{ns_default_cc} (the namespaces' default)"),
    };
    let ctls: Vec<ServerCtl> = Server::ALL.iter().map(|_| ServerCtl::default()).collect();
    let ctl = |s: Server| &ctls[Server::ALL.iter().position(|x| *x == s).unwrap_or(0)];
    let ours_cfg = ds_stack::TcpConfig::default();
    let mut env = Environment {
        kernel_release: uname_release(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_tcp_rmem: topo.kernel_sysctl("net.ipv4.tcp_rmem"),
        kernel_tcp_wmem: topo.kernel_sysctl("net.ipv4.tcp_wmem"),
        kernel_congestion: kernel_cc,
        ours_tcp: format!(
            "send/recv buffers {}/{} B, {:?}, SACK {}, timestamps {}, window scaling {}, delayed ACK {}, Nagle off",
            ours_cfg.send_buf,
            ours_cfg.recv_buf,
            ours_cfg.congestion,
            on_off(ours_cfg.sack),
            on_off(ours_cfg.timestamps),
            on_off(ours_cfg.window_scale),
            ours_cfg
                .delayed_ack
                .map_or("off".to_string(), |d| format!("{} ms", d.as_millis()))
        ),
        smoltcp_tcp: format!(
            "send/recv buffers {n}/{n} B (window scale 7), CUBIC, Nagle off, ACK delay 10 ms (default), no timestamps, no SACK",
            n = servers::smoltcp_buffer_size()
        ),
        cpu_idle: format!(
            "{}; {}",
            load::cpuidle(),
            if opts.idle_poll {
                "/dev/cpu_dma_latency held at 0 (idle CPUs poll)"
            } else {
                "no PM QoS request (idle CPUs may halt)"
            }
        ),
        relay_frames: 0,
        relay_drops: 0,
    };
    let _idle = opts.idle_poll.then(load::IdlePoll::hold).transpose()?;
    let records = std::thread::scope(|sc| -> Result<Vec<Record>> {
        let stop = StopAll(&ctls);
        let mut threads = Vec::new();
        // Per server, the queues in front of its reader whose drops the records count.
        let mut queues: HashMap<Server, Vec<(&Netns, String)>> = HashMap::new();
        let scpu = opts.server_cpu;
        for &server in &opts.servers {
            let c = ctl(server);
            match server {
                Server::Kernel | Server::KernelVeth => {
                    // The kernel server behind TAP + relay reads through both relay TAPs; the
                    // reference one over a plain veth through the veth's end.
                    let (listener, readers, label) = if server == Server::Kernel {
                        let KernelParts {
                            k_tap,
                            s_tap,
                            listener,
                        } = servers::kernel_parts(&topo)?;
                        let readers = vec![
                            (&topo.host.ns, s_tap.name().to_string()),
                            (&topo.kns, servers::KERNEL_TAP.to_string()),
                        ];
                        let relay = move || pinned(scpu, || servers::relay(k_tap, s_tap, c));
                        threads.push(("kernel relay", spawn(sc, "relay", relay)?));
                        (listener, readers, "kernel server")
                    } else {
                        let listener = servers::kernel_veth_listener(&topo)?;
                        let readers = vec![(&topo.host.ns, servers::VETH_PORT.to_string())];
                        (listener, readers, "kernel-veth server")
                    };
                    queues.insert(server, readers);
                    let cc = opts.kernel_cc.as_deref();
                    let serve = move || pinned(scpu, || servers::serve_kernel(listener, cc, c));
                    threads.push((label, spawn(sc, server.name(), serve)?));
                }
                Server::Ours | Server::Smoltcp => {
                    let (tx, rx) = mpsc::channel();
                    let topo = &topo;
                    let h = if server == Server::Ours {
                        spawn(sc, "ours", move || {
                            pinned(scpu, || servers::serve_ours(topo, c, tx))
                        })?
                    } else {
                        spawn(sc, "smoltcp", move || {
                            pinned(scpu, || servers::serve_smoltcp(topo, c, tx))
                        })?
                    };
                    threads.push((server.name(), h));
                    match rx.recv_timeout(Duration::from_secs(30)) {
                        Ok(Ok(tap)) => {
                            queues.insert(server, vec![(&topo.host.ns, tap)]);
                        }
                        Ok(Err(e)) => bail!("{} server: {e}", server.name()),
                        Err(e) => bail!("{} server did not start: {e}", server.name()),
                    }
                }
            }
        }
        let records = measure(opts, &topo, &ctl, &queues, &mut on_record);
        drop(stop);
        let mut errors = Vec::new();
        for (name, h) in threads {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{name}: {e:#}")),
                Err(_) => errors.push(format!("{name}: panicked")),
            }
        }
        match (records, errors.is_empty()) {
            (Ok(r), true) => Ok(r),
            (Ok(_), false) => Err(anyhow!("server thread(s) failed: {}", errors.join("; "))),
            (Err(e), true) => Err(e),
            (Err(e), false) => {
                Err(e.context(format!("server thread(s) failed: {}", errors.join("; "))))
            }
        }
    })?;
    let k = ctl(Server::Kernel);
    env.relay_frames = k.relay_frames.load(Ordering::Relaxed);
    env.relay_drops = k.relay_drops.load(Ordering::Relaxed);
    info!("removing namespaces");
    drop(topo);
    Ok((records, env))
}

fn measure<'a>(
    opts: &Options,
    topo: &Topology,
    ctl: &impl Fn(Server) -> &'a ServerCtl,
    queues: &HashMap<Server, Vec<(&Netns, String)>>,
    on_record: &mut impl FnMut(&Record),
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let n = opts.servers.len();
    let mut tests = vec![Test::Upload];
    if opts.download {
        tests.push(Test::Download);
    }
    tests.push(Test::Rr);
    for rep in 1..=opts.repeat {
        for i in 0..n {
            let server = opts.servers[(i + rep as usize - 1) % n];
            let my_queues = queues.get(&server).map_or(&[][..], Vec::as_slice);
            for &test in &tests {
                let mut attempt = 0;
                let r = loop {
                    check_interrupt()?;
                    wait_quiet(Duration::from_secs(opts.quiet_wait_secs))?;
                    let mut r = measure_one(opts, topo, ctl, my_queues, server, rep, test)?;
                    r.attempt = attempt + 1;
                    eprintln!("{}", report::progress_line(&r, opts.repeat));
                    if !r.disturbed() || attempt >= opts.retries {
                        break r;
                    }
                    attempt += 1;
                    eprintln!(
                        "    disturbed by outside load: measuring again ({attempt} of {} retries)",
                        opts.retries
                    );
                };
                on_record(&r);
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Wait until other processes and the hypervisor leave the CPUs alone (below
/// [`report::QUIET`] over a 300 ms window), for at most `max`.
fn wait_quiet(max: Duration) -> Result<()> {
    if max.is_zero() {
        return Ok(());
    }
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let a = load::snap()?;
        std::thread::sleep(Duration::from_millis(300));
        let f = load::foreign(&a, &load::snap()?);
        if f.others < report::QUIET && f.steal < report::QUIET {
            return Ok(());
        }
        if start.elapsed() >= max {
            warn!(
                "machine still busy after {max:?} (other processes {:.2} CPU, steal {:.2} CPU): measuring anyway",
                f.others, f.steal
            );
            return Ok(());
        }
        if !said {
            eprintln!(
                "    waiting for the machine to be quiet (other processes {:.2} CPU, steal {:.2} CPU; up to {max:?})",
                f.others, f.steal
            );
            said = true;
        }
        check_interrupt()?;
    }
}

/// One test against one server.
fn measure_one<'a>(
    opts: &Options,
    topo: &Topology,
    ctl: &impl Fn(Server) -> &'a ServerCtl,
    my_queues: &[(&Netns, String)],
    server: Server,
    rep: u32,
    test: Test,
) -> Result<Record> {
    let addr = SocketAddrV6::new(server.addr(), topo::PORT, 0, 0);
    let cpu = opts.client_cpu;
    let p_before = tcp_counters(&topo.peer.ns)?;
    let server_ns = match server {
        Server::Kernel => Some(&topo.kns),
        Server::KernelVeth => Some(&topo.vns),
        _ => None,
    };
    let k_before = match server_ns {
        Some(ns) => Some(tcp_counters(ns)?),
        None => None,
    };
    let ours_before = ctl(Server::Ours).retransmits.load(Ordering::Relaxed);
    let drops_before = queue_drops(my_queues)?;
    let load_before = load::snap()?;
    let mut r = Record::new(server, rep, test);
    let what = format!("{} {:?}", server.name(), test);
    match test {
        Test::Upload | Test::Download => {
            let bytes = opts.bytes;
            let cc = opts.kernel_cc.as_deref();
            let b = in_client(topo, cpu, &what, move || {
                if test == Test::Upload {
                    client::upload(addr, cc, bytes)
                } else {
                    client::download(addr, cc, bytes)
                }
            })?;
            r.bulk = Some(Bulk {
                bytes: b.bytes,
                seconds: b.seconds,
                gbit_per_s: b.gbit_per_s(),
            });
        }
        Test::Rr => {
            let (size, warmup, rounds) = (opts.msg_size, opts.warmup, opts.rounds);
            let cc = opts.kernel_cc.as_deref();
            let e = in_client(topo, cpu, &what, move || {
                client::echo(addr, cc, size, warmup, rounds)
            })?;
            r.rr = Some(RoundTrips {
                rounds,
                p50_us: e.quantile_us(0.5),
                p99_us: e.quantile_us(0.99),
                mean_us: e.mean_us(),
                max_us: e.max_us(),
            });
        }
    }
    let p_delta = counter_delta(&p_before, &tcp_counters(&topo.peer.ns)?);
    r.client_retransmits = retrans(&p_delta);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let mut nz: Vec<_> = p_delta
            .iter()
            .filter(|(k, v)| **v > 0 && k.starts_with("Tcp"))
            .collect();
        nz.sort();
        tracing::debug!("{what}: client TCP counters {nz:?}");
    }
    r.server_retransmits = match (server, server_ns, k_before) {
        (_, Some(ns), Some(kb)) => Some(retrans(&counter_delta(&kb, &tcp_counters(ns)?))),
        (Server::Ours, _, _) => Some(
            ctl(Server::Ours)
                .retransmits
                .load(Ordering::Relaxed)
                .saturating_sub(ours_before),
        ),
        _ => None,
    };
    let busy = load::foreign(&load_before, &load::snap()?);
    r.other_cpu = busy.others;
    r.steal_cpu = busy.steal;
    r.queue_drops = queue_drops(my_queues)?.saturating_sub(drops_before);
    Ok(r)
}
