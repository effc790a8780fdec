//! `dsperf wan`: how faithful the WAN emulator (`dswan`, crate `ds-wan`) is, measured from
//! outside it: ping through it for latency, the receiver's interface counters for bandwidth,
//! and its forwarding rate and added latency at 0 ms against a plain veth.
//!
//! Namespaces: C (client, `c0` fd00:5b::1) — W (`dswan` between `wc` and `ws`, no addresses) —
//! S (server, `s0` fd00:5b::2); plus a direct veth C `c1` fd00:5b:1::1 — S `s1` fd00:5b:1::2
//! as the reference without an emulator.

use crate::stack::report::{percentile, Stat};
use anyhow::{bail, ensure, Context, Result};
use ds_testbed::{add_addr, ping6, veth, wait_tcp_listening, Child, Netns, PingOpts};
use serde::Serialize;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::{Duration, Instant};

const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5b, 0, 0, 0, 0, 0, 1);
const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5b, 0, 0, 0, 0, 0, 2);
const SERVER_DIRECT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5b, 1, 0, 0, 0, 0, 2);

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// One-way delays to check (both directions get it), ms.
    pub delays_ms: Vec<f64>,
    /// Rates to check, Mbit/s.
    pub rates_mbit: Vec<f64>,
    /// Pings per delay point.
    pub pings: u32,
    /// Seconds of load per rate point (the first second is not counted).
    pub rate_seconds: f64,
    /// Seconds of the forwarding-rate measurement.
    pub pps_seconds: f64,
    /// `dswan --lead-max` (`None`: dswan's default).
    #[serde(default)]
    pub lead_max: Option<String>,
}

/// One latency point.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    /// Configured one-way delay, ms.
    pub configured_ms: f64,
    /// Replies received / sent.
    pub received: u32,
    /// Sent.
    pub sent: u32,
    /// Round-trip time median, p1 and p99, ms.
    pub rtt_median_ms: f64,
    /// p1 of the round-trip time, ms.
    pub rtt_p1_ms: f64,
    /// p99 of the round-trip time, ms.
    pub rtt_p99_ms: f64,
    /// Measured one-way delay: the median RTT / 2, ms (nothing subtracted).
    pub one_way_ms: f64,
    /// (measured − configured) / configured, percent.
    pub error_pct: f64,
    /// The one-way delay the emulator adds: (median RTT − the direct veth's median RTT) / 2,
    /// ms. The veth path's own latency (tens of µs on a virtual machine, part of every
    /// measured figure above) taken out; one more veth hop per direction is still in it.
    pub less_direct_ms: f64,
    /// (less_direct − configured) / configured, percent.
    pub less_direct_error_pct: f64,
}

/// One bandwidth point.
#[derive(Debug, Clone, Serialize)]
pub struct RatePoint {
    /// Configured rate, Mbit/s.
    pub configured_mbit: f64,
    /// Offered by the UDP sender, Mbit/s (of UDP payload).
    pub offered_mbit: f64,
    /// Ethernet frame bytes per second the receiver's interface counted, Mbit/s.
    pub measured_mbit: f64,
    /// (measured − configured) / configured, percent.
    pub error_pct: f64,
    /// UDP payload the receiver counted, Mbit/s.
    pub goodput_mbit: f64,
}

/// The emulator's own cost.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// Median ping RTT over the direct veth, µs.
    pub direct_rtt_us: f64,
    /// Median ping RTT through `dswan` at 0 ms, µs.
    pub emulator_rtt_us: f64,
    /// Added one-way latency: (emulator − direct) / 2, µs.
    pub added_one_way_us: f64,
    /// 64-byte UDP datagrams per second through `dswan` at 0 ms, no rate limit (receiver's
    /// count), the sender unlimited on the other core.
    pub emulator_pps: f64,
    /// The same over the direct veth.
    pub direct_pps: f64,
}

/// Everything, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The options.
    pub options: Options,
    /// Kernel release.
    pub kernel: String,
    /// Median ping RTT over the direct veth measured just before the latency points, ms.
    #[serde(default)]
    pub direct_rtt_ms: f64,
    /// Per configured delay.
    pub latency: Vec<LatencyPoint>,
    /// Per configured rate.
    pub rate: Vec<RatePoint>,
    /// Overhead at 0 ms.
    pub overhead: Option<Overhead>,
}

/// Client, emulator and server namespaces (see the module documentation).
pub struct WanBed {
    // Field order: the emulator dies before its namespace goes.
    emu: Option<Child>,
    /// The client's namespace.
    pub client: Netns,
    /// The emulator's namespace.
    pub wan: Netns,
    /// The server's namespace.
    pub server: Netns,
    dswan: std::path::PathBuf,
    /// Arguments given to every start of the emulator, after the others.
    pub extra: Vec<String>,
}

impl WanBed {
    /// Builds the namespaces; `dswan` is the emulator's binary.
    pub fn build(dswan: &Path) -> Result<WanBed> {
        let client = Netns::new("dswan_c")?;
        let wan = Netns::new("dswan_w")?;
        let server = Netns::new("dswan_s")?;
        veth(&client, "c0", &wan, "wc")?;
        veth(&wan, "ws", &server, "s0")?;
        veth(&client, "c1", &server, "s1")?;
        for i in ["wc", "ws"] {
            wan.sysctl(&format!("net.ipv6.conf.{i}.disable_ipv6"), "1")?;
        }
        add_addr(&client, "c0", &format!("{CLIENT}/64"))?;
        add_addr(&server, "s0", &format!("{SERVER}/64"))?;
        add_addr(&client, "c1", "fd00:5b:1::1/64")?;
        add_addr(&server, "s1", &format!("{SERVER_DIRECT}/64"))?;
        Ok(WanBed {
            emu: None,
            client,
            wan,
            server,
            dswan: dswan.to_path_buf(),
            extra: Vec::new(),
        })
    }

    /// The server's address through the emulator.
    pub fn server_addr(&self) -> Ipv6Addr {
        SERVER
    }

    /// (Re)starts the emulator with `args` (e.g. `["--delay", "10ms"]`), pinned to core `cpu`
    /// when given, and waits until a ping crosses it.
    pub fn start(&mut self, args: &[&str], cpu: Option<usize>) -> Result<()> {
        self.launch(args, cpu)?;
        let t = Instant::now();
        loop {
            let p = ping6(
                &self.client,
                SERVER,
                &PingOpts {
                    count: 1,
                    interval: Duration::from_millis(1),
                    timeout: Duration::from_millis(1500),
                    payload_len: 16,
                },
            )?;
            if p.all_received() {
                return Ok(());
            }
            if let Some(child) = self.emu.as_mut() {
                if let Some(st) = child.try_wait()? {
                    bail!("dswan exited early: {st}");
                }
            }
            ensure!(
                t.elapsed() < Duration::from_secs(15),
                "no ping crosses dswan after 15 s"
            );
        }
    }

    /// (Re)starts the emulator without waiting for it (see [`WanBed::start`]).
    pub fn launch(&mut self, args: &[&str], cpu: Option<usize>) -> Result<()> {
        self.stop();
        let dswan = self.dswan.to_string_lossy().into_owned();
        let cpu_s = cpu.map(|c| c.to_string());
        let mut argv: Vec<&str> = Vec::new();
        if let Some(c) = &cpu_s {
            argv.extend(["taskset", "-c", c]);
        }
        argv.extend([dswan.as_str(), "wc", "ws", "--stats-every", "0", "--json"]);
        argv.extend_from_slice(args);
        argv.extend(self.extra.iter().map(String::as_str));
        let child = Child::new(
            self.wan
                .command(argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting dswan")?,
        );
        self.emu = Some(child);
        Ok(())
    }

    /// Stops the emulator (SIGKILL).
    pub fn stop(&mut self) {
        self.emu = None;
    }

    /// Stops the emulator with SIGINT and returns the counters it printed (`dswan --json`).
    pub fn finish(&mut self) -> Result<serde_json::Value> {
        let mut child = self.emu.take().context("dswan is not running")?;
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        // The guard keeps the child (and kills it if reading fails); its stdout is piped.
        let mut stdout = Vec::new();
        if let Some(mut o) = child.stdout.take() {
            std::io::Read::read_to_end(&mut o, &mut stdout)?;
        }
        let st = child.wait()?;
        ensure!(st.success(), "dswan exited with {st}");
        serde_json::from_slice(&stdout).context("dswan --json output")
    }

    /// Ethernet bytes and frames received on `ifname` in the server's namespace so far.
    pub fn rx_counters(&self, ifname: &str) -> Result<(u64, u64)> {
        match ds_testbed::link_stats(&self.server, ifname, "rx", &["bytes", "packets"])?[..] {
            [b, p] => Ok((b, p)),
            _ => bail!("no rx counters for {ifname}"),
        }
    }
}

fn ping_rtts(bed: &WanBed, dst: Ipv6Addr, count: u32, expect: Duration) -> Result<(Vec<f64>, u32)> {
    let p = ping6(
        &bed.client,
        dst,
        &PingOpts {
            count,
            // Not a divisor of any round-trip time measured: a reply that arrives while the
            // pinger is sending the next request would be timed late.
            interval: Duration::from_micros(10_370),
            timeout: expect * 2 + Duration::from_secs(1),
            payload_len: 56,
        },
    )?;
    Ok((
        p.rtts.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        p.received,
    ))
}

/// Runs the latency points; returns them and the direct veth's median RTT, ms, measured first.
pub fn latency(
    bed: &mut WanBed,
    o: &Options,
    progress: &dyn Fn(&str),
) -> Result<(Vec<LatencyPoint>, f64)> {
    progress(&format!("latency: the direct veth, {} pings", o.pings));
    let (direct, _) = ping_rtts(bed, SERVER_DIRECT, o.pings, Duration::ZERO)?;
    let direct = Stat::of(direct).map_or(f64::NAN, |s| s.median);
    let mut out = Vec::new();
    for &ms in &o.delays_ms {
        progress(&format!("latency: {ms} ms one way, {} pings", o.pings));
        bed.start(&["--delay", &format!("{ms}ms")], None)?;
        let (rtts, received) = ping_rtts(bed, SERVER, o.pings, Duration::from_secs_f64(ms * 2e-3))?;
        ensure!(!rtts.is_empty(), "no ping reply through dswan at {ms} ms");
        let median = Stat::of(rtts.clone()).map_or(f64::NAN, |s| s.median);
        let one_way = median / 2.0;
        let less_direct = (median - direct) / 2.0;
        let pct = |v: f64| {
            if ms > 0.0 {
                (v - ms) / ms * 100.0
            } else {
                f64::NAN
            }
        };
        out.push(LatencyPoint {
            configured_ms: ms,
            received,
            sent: o.pings,
            rtt_median_ms: median,
            rtt_p1_ms: percentile(&rtts, 0.01),
            rtt_p99_ms: percentile(&rtts, 0.99),
            one_way_ms: one_way,
            error_pct: pct(one_way),
            less_direct_ms: less_direct,
            less_direct_error_pct: pct(less_direct),
        });
    }
    bed.stop();
    Ok((out, direct))
}

/// iperf3 UDP from the client to `dst` for `secs` at `mbit` (0: unlimited) with `len`-byte
/// datagrams, the sender pinned to core 0; returns the Ethernet bytes and frames the server's
/// `ifname` received over the run less its first second, with that span's length, and the
/// payload rate iperf3's receiver reported.
fn udp_load(
    bed: &WanBed,
    dst: Ipv6Addr,
    ifname: &str,
    mbit: f64,
    len: usize,
    secs: f64,
) -> Result<(u64, u64, f64, f64)> {
    let _srv = Child::new(
        bed.server
            .command("iperf3")
            .args(["-s", "-1", "-B", &dst.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("iperf3 -s")?,
    );
    wait_tcp_listening(&bed.server, 5201, Duration::from_secs(5))?;
    let rate = if mbit > 0.0 {
        format!("{mbit}M")
    } else {
        "0".into()
    };
    let secs_s = format!("{secs}");
    let len_s = len.to_string();
    let dst_s = dst.to_string();
    let child = bed
        .client
        .command("taskset")
        .args([
            "-c", "0", "iperf3", "-u", "-c", &dst_s, "-b", &rate, "-l", &len_s,
        ])
        .args(["-t", &secs_s, "-J", "--get-server-output"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("iperf3")?;
    std::thread::sleep(Duration::from_secs(1));
    let (b0, p0) = bed.rx_counters(ifname)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64((secs - 1.5).max(0.5)));
    let (b1, p1) = bed.rx_counters(ifname)?;
    let span = t0.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "iperf3 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J")?;
    // The receiver's own summary (--get-server-output), else the client's view.
    let goodput = v["server_output_json"]["end"]["sum"]["bits_per_second"]
        .as_f64()
        .or_else(|| v["end"]["sum_received"]["bits_per_second"].as_f64())
        .unwrap_or(f64::NAN)
        / 1e6;
    Ok((b1 - b0, p1 - p0, span, goodput))
}

/// Runs the bandwidth points.
pub fn rates(bed: &mut WanBed, o: &Options, progress: &dyn Fn(&str)) -> Result<Vec<RatePoint>> {
    let mut out = Vec::new();
    for &mbit in &o.rates_mbit {
        // 1.5× the rate offered, so the link is always busy; 1,400-byte datagrams.
        let offered = mbit * 1.5;
        progress(&format!(
            "rate: {mbit} Mbit/s, UDP offered at {offered} Mbit/s for {} s",
            o.rate_seconds
        ));
        bed.start(&["--rate", &format!("{mbit}mbit")], None)?;
        let (bytes, _, span, goodput) = udp_load(bed, SERVER, "s0", offered, 1400, o.rate_seconds)?;
        let measured = bytes as f64 * 8.0 / span / 1e6;
        out.push(RatePoint {
            configured_mbit: mbit,
            offered_mbit: offered,
            measured_mbit: measured,
            error_pct: (measured - mbit) / mbit * 100.0,
            goodput_mbit: goodput,
        });
    }
    bed.stop();
    Ok(out)
}

/// Added latency and forwarding rate at 0 ms against the direct veth.
pub fn overhead(bed: &mut WanBed, o: &Options, progress: &dyn Fn(&str)) -> Result<Overhead> {
    progress("overhead: ping and 64-byte UDP flood, direct veth and through dswan at 0 ms");
    // Tens of microseconds: more samples than for the delay points.
    let (direct, _) = ping_rtts(bed, SERVER_DIRECT, o.pings * 5, Duration::ZERO)?;
    let (_, dp, dspan, _) = udp_load(bed, SERVER_DIRECT, "s1", 0.0, 64, o.pps_seconds)?;
    bed.start(&[], Some(1))?;
    let (through, _) = ping_rtts(bed, SERVER, o.pings * 5, Duration::ZERO)?;
    let (_, ep, espan, _) = udp_load(bed, SERVER, "s0", 0.0, 64, o.pps_seconds)?;
    bed.stop();
    let med = |v: Vec<f64>| Stat::of(v).map_or(f64::NAN, |s| s.median * 1e3);
    let (d, e) = (med(direct), med(through));
    Ok(Overhead {
        direct_rtt_us: d,
        emulator_rtt_us: e,
        added_one_way_us: (e - d) / 2.0,
        emulator_pps: ep as f64 / espan,
        direct_pps: dp as f64 / dspan,
    })
}

/// Everything in [`Options`].
pub fn run(dswan: &Path, o: &Options, progress: &dyn Fn(&str)) -> Result<Report> {
    let mut bed = WanBed::build(dswan)?;
    bed.extra = o
        .lead_max
        .iter()
        .flat_map(|v| ["--lead-max".to_string(), v.clone()])
        .collect();
    let (latency, direct_rtt_ms) = latency(&mut bed, o, progress)?;
    let rate = rates(&mut bed, o, progress)?;
    let overhead = Some(overhead(&mut bed, o, progress)?);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(Report {
        options: o.clone(),
        kernel,
        direct_rtt_ms,
        latency,
        rate,
        overhead,
    })
}

/// The report as text tables.
pub fn table(r: &Report) -> String {
    let mut s = format!(
        "latency (ping through dswan, both directions delayed; one way = median RTT / 2; \
         less direct: the direct veth's median RTT ({:.1} µs) taken out first)\n",
        r.direct_rtt_ms * 1e3
    );
    s.push_str(&format!(
        "{:>12} {:>12} {:>10} {:>12} {:>10} {:>10} {:>12} {:>8} {:>9}\n",
        "configured",
        "measured",
        "error",
        "less direct",
        "error",
        "RTT p50",
        "RTT p1–p99",
        "",
        "replies"
    ));
    for p in &r.latency {
        s.push_str(&format!(
            "{:>9.3} ms {:>9.3} ms {:>9.2}% {:>9.3} ms {:>9.2}% {:>7.3} ms {:>7.3}–{:.3} ms {:>6}/{}\n",
            p.configured_ms,
            p.one_way_ms,
            p.error_pct,
            p.less_direct_ms,
            p.less_direct_error_pct,
            p.rtt_median_ms,
            p.rtt_p1_ms,
            p.rtt_p99_ms,
            p.received,
            p.sent
        ));
    }
    s.push_str(
        "\nbandwidth (UDP at 1.5× the rate; Ethernet bytes counted by the receiver's interface)\n",
    );
    s.push_str(&format!(
        "{:>12} {:>14} {:>10} {:>16}\n",
        "configured", "measured", "error", "UDP goodput"
    ));
    for p in &r.rate {
        s.push_str(&format!(
            "{:>7.3} Mb/s {:>9.3} Mb/s {:>9.2}% {:>11.3} Mb/s\n",
            p.configured_mbit, p.measured_mbit, p.error_pct, p.goodput_mbit
        ));
    }
    if let Some(o) = &r.overhead {
        s.push_str(&format!(
            "\noverhead at 0 ms: RTT {:.1} µs through dswan vs {:.1} µs direct (+{:.1} µs one way); \
             {:.0} pps through dswan vs {:.0} pps direct (64-byte UDP, sender unlimited)\n",
            o.emulator_rtt_us, o.direct_rtt_us, o.added_one_way_us, o.emulator_pps, o.direct_pps
        ));
    }
    s
}
