//! How busy the rest of the machine was during a measurement: CPU time used by other processes
//! (from `/proc/stat` minus this process's own time from `/proc/self/stat`) and time stolen by
//! the hypervisor, both in CPUs (1.0 = one CPU fully busy for the whole measurement).
//! Interrupt and softirq time is left out: much of it is the benchmark's own packet processing.

use anyhow::{Context, Result};
use std::time::Instant;

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snap {
    busy: u64,
    steal: u64,
    mine: u64,
    at: Instant,
}

/// Load from outside the benchmark between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Foreign {
    /// CPUs used by other processes (user + nice + system time not ours).
    pub others: f64,
    /// CPUs stolen by the hypervisor.
    pub steal: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions and touches no memory we own.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The counters of one `cpu…` line of `/proc/stat` (user, nice, system, idle, iowait, irq,
/// softirq, steal, …), in clock ticks.
fn stat_fields(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect()
}

/// `(ppid, utime + stime)` from a `/proc/PID/stat` text (clock ticks, every thread).
fn proc_stat(text: &str) -> Option<(u32, u64)> {
    // Fields after the parenthesised command name: state is field 3, ppid 4, utime 14,
    // stime 15.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Some((u32::try_from(num(1)).unwrap_or(0), num(11) + num(12)))
}

/// CPU time used so far by process `pid` and its children that still run (nginx's workers
/// under its master), in seconds.
pub fn process_cpu(pid: u32) -> f64 {
    let mut ticks = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if let Some((ppid, t)) = proc_stat(&text) {
                if p == pid || ppid == pid {
                    ticks += t;
                }
            }
        }
    }
    ticks as f64 / clock_ticks()
}

/// Read the counters now.
pub fn snap() -> Result<Snap> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let cpu = stat_fields(stat.lines().next().context("empty /proc/stat")?);
    let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
    let me = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    let mine = proc_stat(&me).map_or(0, |(_, t)| t);
    Ok(Snap {
        busy: field(0) + field(1) + field(2),
        steal: field(7),
        mine,
        at: Instant::now(),
    })
}

/// Load from outside the benchmark between `a` and `b`.
pub fn foreign(a: &Snap, b: &Snap) -> Foreign {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return Foreign::default();
    }
    let ticks = clock_ticks() * secs;
    let busy = b.busy.saturating_sub(a.busy);
    let mine = b.mine.saturating_sub(a.mine);
    Foreign {
        others: busy.saturating_sub(mine) as f64 / ticks,
        steal: b.steal.saturating_sub(a.steal) as f64 / ticks,
    }
}

/// Per core, (busy, total) clock ticks so far (busy: all but idle and iowait, so softirq work
/// counts); empty if `/proc/stat` cannot be read.
pub fn cores() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v = stat_fields(l);
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total.saturating_sub(idle), total)
        })
        .collect()
}

/// Per core, the busy share (0–1) between two [`cores`] readings.
pub fn cores_busy(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let t = y.1.saturating_sub(x.1);
            if t == 0 {
                0.0
            } else {
                y.0.saturating_sub(x.0) as f64 / t as f64
            }
        })
        .collect()
}

/// While alive, asks the kernel for 0 µs CPU wake-up latency through `/dev/cpu_dma_latency`
/// (PM QoS): idle CPUs poll instead of halting, so a thread woken on an idle CPU runs at once.
/// In a VM this keeps idle vCPUs spinning on the host. Closing the file drops the request.
pub struct IdlePoll {
    _file: std::fs::File,
}

impl IdlePoll {
    /// Make the request.
    pub fn hold() -> Result<Self> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .context("open /dev/cpu_dma_latency")?;
        f.write_all(&0i32.to_ne_bytes())
            .context("write /dev/cpu_dma_latency")?;
        Ok(IdlePoll { _file: f })
    }
}

/// The cpuidle driver and governor in use, for the report.
pub fn cpuidle() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_or_else(|_| "?".to_string(), |s| s.trim().to_string())
    };
    format!(
        "cpuidle driver {}, governor {}",
        read("/sys/devices/system/cpu/cpuidle/current_driver"),
        read("/sys/devices/system/cpu/cpuidle/current_governor")
    )
}

/// The machine's own stalls during a measurement. `cyclictest` (Debian's rt-tests) runs one
/// SCHED_FIFO thread per core that wakes every millisecond and records how late it woke: on a
/// core where a real-time thread waits, lateness is time no thread could run there (the
/// hypervisor had the vCPU, or the kernel ran with preemption or interrupts off), whatever the
/// benchmark did. A slowest request of the same size as the largest stall is the machine's,
/// not the server's. `--laptop` keeps cyclictest from holding `/dev/cpu_dma_latency` at 0,
/// which would change how idle cores wake for both servers.
pub struct StallProbe(crate::proc::Proc);

impl StallProbe {
    /// Start the probe (in `ns`: the namespace does not matter to it; its files go in `dir`).
    /// `None`, with a warning, when cyclictest is missing or does not start.
    pub fn start(ns: &ds_testbed::Netns, dir: &std::path::Path) -> Option<StallProbe> {
        let args: Vec<String> = ["-q", "-S", "-m", "-p", "99", "-i", "1000", "--laptop"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match crate::proc::Proc::spawn(
            ns,
            "cyclictest",
            std::path::Path::new("cyclictest"),
            &args,
            dir,
        ) {
            Ok(p) => Some(StallProbe(p)),
            Err(e) => {
                tracing::warn!("no machine-stall probe (install rt-tests): {e:#}");
                None
            }
        }
    }

    /// Stop the probe: the largest wake-up lateness over every core, µs (`None` if it
    /// printed none).
    pub fn finish(self) -> Option<f64> {
        match self.0.stop() {
            Ok(out) => cyclictest_max(&out),
            Err(e) => {
                tracing::warn!("machine-stall probe: {e:#}");
                None
            }
        }
    }
}

/// The largest `Max:` of cyclictest's per-thread summary lines
/// (`T: 0 ( 123) P:99 I:1000 C: 5000 Min: 2 Act: 4 Avg: 5 Max: 41`), µs.
pub fn cyclictest_max(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("T:"))
        .filter_map(|l| {
            l.split_once("Max:")
                .and_then(|(_, v)| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclictest_summary_gives_the_largest_max() {
        let out = "# /dev/cpu_dma_latency set to 0us\n\
                   T: 0 ( 4242) P:99 I:1000 C:   5000 Min:      2 Act:    4 Avg:    5 Max:      41\n\
                   T: 1 ( 4243) P:99 I:1000 C:   4999 Min:      3 Act:    6 Avg:    7 Max:    5120\n";
        assert_eq!(cyclictest_max(out), Some(5120.0));
        assert_eq!(cyclictest_max("nothing"), None);
    }
}
