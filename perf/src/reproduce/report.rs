//! The evaluation report: `EVALUATION.md` (our figures beside the seed's, the machine and
//! every parameter), `figures/reproduce-results.json` and `figures/reproduce-figure2.svg`,
//! written by `dsperf reproduce` (and again from saved results by `--render`).

use super::{access, decomp, figure2, findings};
use crate::plot::{write_lines_svg, Line};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything one `dsperf reproduce` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// `quick` or `full`.
    pub size: String,
    /// The command line.
    pub command: String,
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// Wall time of the run, s.
    pub seconds: f64,
    /// Experiment 1.
    pub access: Option<access::Report>,
    /// Experiment 2.
    pub decomp: Option<decomp::Report>,
    /// Experiment 2 with path latencies (the seed's check of which phases grow).
    #[serde(default)]
    pub sweep: Option<Vec<decomp::SweepPoint>>,
    /// Experiment 3.
    pub state: Option<figure2::Report>,
    /// The sizes this run measured (absent in results saved before they were recorded).
    #[serde(default)]
    pub params: Option<super::size::Size>,
    /// What else shapes its length.
    #[serde(default)]
    pub shape: Option<super::size::Shape>,
    /// Wall time per experiment (`access`, `decomp`, `latency`, `state`), s.
    #[serde(default)]
    pub experiment_seconds: std::collections::BTreeMap<String, f64>,
    /// The source it ran from ([`source_commit`]); parts put together list theirs.
    #[serde(default)]
    pub build: Option<String>,
}

/// The commit of the source tree this program was built in, as it is when called, with
/// `-dirty` if tracked files differ from it; `None` outside a git checkout (the binary moved,
/// or no git). Read at run time rather than baked in at build time: the quick start builds
/// from the tree it then runs, and a part of a run measured sessions later must say which
/// source it measured.
pub fn source_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty())?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

impl Results {
    /// A `--full` run's duration per experiment, s, estimated from this run's wall times
    /// ([`super::size::estimate`]); empty when the run did not record its sizes.
    pub fn full_estimate(&self) -> std::collections::BTreeMap<String, f64> {
        match (&self.params, &self.shape) {
            (Some(p), Some(sh)) => super::size::estimate(
                &self.experiment_seconds,
                p,
                sh,
                &super::size::Size::full().with_sessions(None),
            ),
            _ => Default::default(),
        }
    }
}

/// Appends what `more` holds that `into` lacks, in order (a union that keeps the first
/// part's order).
fn union<T: PartialEq + Clone>(into: &mut Vec<T>, more: &[T]) {
    for m in more {
        if !into.contains(m) {
            into.push(m.clone());
        }
    }
}

impl Results {
    /// One report from the parts of a run split across invocations (`--only`, `--paths`,
    /// `--modes`, `--bandwidths`: a `--full` run is longer than a working day on some
    /// machines). Each experiment's points are put together in the parts' order; the run's
    /// time is the sum of the parts'. Refused when two parts measured the same point, or
    /// when their settings (sizes, downloads per point, object, path latencies, the testbed's
    /// TCP congestion control) differ: such parts do not make one run.
    pub fn merge(parts: Vec<Results>) -> Result<Results> {
        let mut it = parts.into_iter();
        let Some(mut out) = it.next() else {
            anyhow::bail!("nothing to merge");
        };
        for (i, p) in it.enumerate() {
            let part = i + 2;
            if out.params != p.params {
                anyhow::bail!("part {part} was measured with other sizes than part 1");
            }
            if out.size != p.size {
                anyhow::bail!("part {part} is a {} run, part 1 a {} run", p.size, out.size);
            }
            if out.machine.testbed_tcp_cc != p.machine.testbed_tcp_cc {
                anyhow::bail!(
                    "part {part}'s testbed ran kernel TCP with {:?}, part 1's with {:?}",
                    p.machine.testbed_tcp_cc,
                    out.machine.testbed_tcp_cc
                );
            }
            out.command = format!("{} + {}", out.command, p.command);
            out.date = format!("{} + {}", out.date, p.date);
            let b = |b: &Option<String>| b.clone().unwrap_or_else(|| "unrecorded".into());
            out.build = Some(format!("{} + {}", b(&out.build), b(&p.build)));
            out.seconds += p.seconds;
            for (k, v) in &p.experiment_seconds {
                *out.experiment_seconds.entry(k.clone()).or_default() += v;
            }
            out.access = match (out.access.take(), p.access) {
                (Some(_), Some(_)) => anyhow::bail!("parts 1 and {part} both measured access"),
                (a, b) => a.or(b),
            };
            out.decomp = match (out.decomp.take(), p.decomp) {
                (Some(mut a), Some(b)) => {
                    let (x, y) = (&a.options, &b.options);
                    if (x.sessions, x.size, x.handoff_at, x.cs_ms, x.ss_ms)
                        != (y.sessions, y.size, y.handoff_at, y.cs_ms, y.ss_ms)
                    {
                        anyhow::bail!("part {part}'s handoff experiment has other settings");
                    }
                    for q in &b.points {
                        let key = |r: &decomp::Point| (r.path.clone(), r.mode, r.drain, r.mbit);
                        if a.points.iter().any(|r| key(r) == key(q)) {
                            anyhow::bail!(
                                "parts 1 and {part} both measured {} {:?} {:?} at {:?} Mbit/s",
                                q.path,
                                q.mode,
                                q.drain,
                                q.mbit
                            );
                        }
                    }
                    union(&mut a.options.paths, &y.paths);
                    union(&mut a.options.modes, &y.modes);
                    union(&mut a.options.bandwidths, &y.bandwidths);
                    union(&mut a.options.drains, &y.drains);
                    a.points.extend(b.points);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
            out.sweep = match (out.sweep.take(), p.sweep) {
                (Some(mut a), Some(b)) => {
                    let key =
                        |r: &decomp::SweepPoint| (r.mode, r.cs_ms.to_bits(), r.ss_ms.to_bits());
                    if b.iter().any(|q| a.iter().any(|r| key(r) == key(q))) {
                        anyhow::bail!("parts 1 and {part} both measured a latency point");
                    }
                    a.extend(b);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
            out.state = match (out.state.take(), p.state) {
                (Some(mut a), Some(b)) => {
                    let (x, y) = (&a.options, &b.options);
                    if (&x.waits_ms, x.sessions, x.size, x.handoff_at)
                        != (&y.waits_ms, y.sessions, y.size, y.handoff_at)
                    {
                        anyhow::bail!("part {part}'s state experiment has other settings");
                    }
                    if b.curves
                        .iter()
                        .any(|c| a.curves.iter().any(|d| d.mbit == c.mbit))
                    {
                        anyhow::bail!("parts 1 and {part} both measured a Figure 2 curve");
                    }
                    union(&mut a.options.bandwidths, &y.bandwidths);
                    a.curves.extend(b.curves);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
        }
        // Parts come in any order (a shell glob sorts `state-1.5` before `state-1`): draw and
        // tabulate Figure 2's curves as one run would, fastest link first.
        if let Some(f) = out.state.as_mut() {
            f.curves.sort_by(|a, b| b.mbit.total_cmp(&a.mbit));
            f.options.bandwidths.sort_by(|a, b| b.total_cmp(a));
        }
        // The estimate of a full run from a quick one does not apply to parts put together:
        // their measured time is the run's.
        out.shape = None;
        Ok(out)
    }
}

/// What the run ran on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Kernel release.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// The kernel TCP congestion control in the testbed's namespaces (`None`: not recorded,
    /// i.e. runs before it was set: the host's default, BBR on this VM).
    #[serde(default)]
    pub testbed_tcp_cc: Option<String>,
}

impl Machine {
    /// This machine.
    pub fn here() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            testbed_tcp_cc: Some(super::testbed::TCP_CC.to_string()),
        }
    }
}

fn ms(us: Option<&crate::stack::report::Stat>) -> String {
    us.map_or("—".into(), |s| format!("{:.3}", s.median / 1000.0))
}

/// `EVALUATION.md`.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "# Evaluation: the seed's experiments, reproduced\n\n\
         Generated by `{}` on {} ({} size, {:.0} s; source {}). Our figures stand beside \
         those of the XtreemOS deliverable D3.2.6 (§3.2, \"the seed\"), measured in 2008 on \
         Pentium III machines with MIPL and NISTnet; the ratios say how far apart the two \
         systems are, not which hardware is faster.\n",
        r.command,
        r.date,
        r.size,
        r.seconds,
        r.build.as_deref().unwrap_or("unrecorded")
    );
    let _ = writeln!(
        s,
        "## Machine and testbed\n\n\
         - {} CPUs ({}), {:.1} GiB, Linux {}.\n\
         - The seed's Figure 1 in network namespaces (`perf/src/reproduce/testbed.rs`): a client; \
         the WAN emulator `dswan` at the core (a learning switch with its own path per pair of \
         sites: CS1 client–network 1, CS2 client–network 2, SS network 1–network 2, and each home \
         agent's upstream shaped with a queue of 100 frames, as the seed shaped them with `cbq`); \
         home agent 1 (`dsha xdp`, the DS address's home agent) with node 1 in network 1; home \
         agent 2 (a router) with node 2 in network 2; nodes are `dsnode` on our TCP/IPv6 stack \
         over AF_XDP. Transparent steering: the home agent's XDP program tunnels each flow to its \
         node; replies go straight to the client, which is curl on the kernel's TCP. \
         Route-optimised steering (RFC 6275): node 1 is at home on the DS address (its home \
         agent tunnels the address to it), node 2 serves it away from home and sends the client \
         a Binding Update after each handoff; the client is then our own stack over AF_XDP (a \
         correspondent node: the kernel has no Mobile IPv6 here), one fresh client per download. \
         Every daemon is a process started as an operator would.\n\
         - Kernel TCP in the testbed (the control channels, the kernel nodes, the client): {}.\n\
         - The emulator's own accuracy is in the README (`dsperf wan`): within 2.1 % of the \
         configured latency from 1 to 200 ms (+2.1 % at 1 ms on a slow day of this VM, the veth \
         path included) and 0.1 % of the rate at 1, 2 and 100 Mbit/s.\n",
        m.cpus,
        m.cpu,
        m.memory_gib,
        m.kernel,
        m.testbed_tcp_cc.as_deref().map_or(
            "the host's default congestion control (not recorded: BBR on this VM)".to_string(),
            |cc| format!("congestion control {cc} in every namespace, whatever the host's")
        )
    );
    if let Some(a) = &r.access {
        let _ = writeln!(
            s,
            "## Experiment 1 — server access latency (§3.2.1)\n\n\
             UDP echo of 128-byte datagrams to the DS address, {} round trips per point, \
             Lat_CS2 = Lat_CS1. Configuration 1: node 1 serves; configuration 2: node 1 is not in \
             the service and home agent 1 tunnels to node 2 across SS. The seed's nodes answered \
             through the home agent's reverse tunnel (RTT = 2·Lat_CS1 + 2·Lat_SS + Y); ours answer \
             straight to the client, so configuration 2 takes CS1 + SS there and CS2 back.\n\n\
             | | model | ours | seed | ours / seed | spread over the grid | free-fit slopes (CS, SS) |\n|---|---|---|---|---|---|---|",
            a.options.rounds
        );
        for f in &a.fits {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} ms | {:.2} ms | {:.3}× | {:.3}–{:.3} ms (sd {:.3}) | {:.3}, {:.3} |",
                if f.config == 1 { "X" } else { "Y" },
                f.model,
                f.intercept_ms,
                f.seed_ms,
                f.intercept_ms / f.seed_ms,
                f.min_ms,
                f.max_ms,
                f.sd_ms,
                f.slopes.0,
                f.slopes.1
            );
        }
        let _ = writeln!(
            s,
            "\n<details><summary>Every point (mean, median, p99 in ms)</summary>\n\n\
             | config | Lat_SS | Lat_CS | model | mean | median | p99 | answered |\n|---|---|---|---|---|---|---|---|"
        );
        for p in &a.points {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {}/{} |",
                p.config,
                p.ss_ms,
                p.cs_ms,
                p.model_ms,
                p.mean_ms,
                p.median_ms,
                p.p99_ms,
                p.answered,
                p.sent
            );
        }
        let _ = writeln!(s, "\n</details>\n");
    }
    if let Some(d) = &r.decomp {
        let _ = writeln!(
            s,
            "## Experiment 2 — handoff time decomposition (§3.2.2, Table 1)\n\n\
             1 MB downloads (curl; route-optimised, our stack's client); node 1 serves {} bytes \
             and hands the connection to node 2; \
             {} downloads per cell; {}; \
             the inter-node bandwidth is each home agent's upstream. Medians in ms, the seed's \
             value and our ratio in brackets. Phase 4 (return routability) and 5 (BU) are zero \
             in transparent mode: the acceptor's steering is one flow-map update at the home \
             agent (phase 6) instead of a Binding Update to the client. Route-optimised, phase 4 \
             is the acceptor's care-of test (started when the donor announces the handoff, so it \
             overlaps with the drain and the transfer), phase 5 builds the Binding Update and \
             phase 6 runs until the client's Binding Acknowledgement (after the activation, so \
             not in the client's gap); the contact node's home test ran before the handoff \
             started, while it still served the connection. Kernel sockets cannot carry Mobile \
             IPv6's headers here: route optimisation runs on user->user only.\n",
            d.options.handoff_at,
            d.options.sessions,
            if d.options.cs_ms == 0.0 && d.options.ss_ms == 0.0 {
                "no path latency (the seed's Table 1 is without NISTnet delays)".to_string()
            } else {
                format!(
                    "path latencies Lat_CS = {} ms, Lat_SS = {} ms (`--path-latency`; the \
                     seed's Table 1 is without NISTnet delays, so its ratios do not apply)",
                    d.options.cs_ms, d.options.ss_ms
                )
            }
        );
        for pts in d.tables() {
            let (path, mode, drain) = (&pts[0].path, pts[0].mode, pts[0].drain);
            let _ = writeln!(
                s,
                "### Nodes {path}, {}, drain `{}`{}\n",
                decomp::mode_name(mode),
                serde_json::to_value(drain)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                if drain == crate::handoff::DrainChoice::Immediate {
                    " (the seed's setting: freeze right after the last send)"
                } else {
                    " (freeze once the client has acknowledged everything)"
                }
            );
            let mut head = String::from("| phase |");
            let mut rule = String::from("|---|");
            for p in &pts {
                let _ = write!(
                    head,
                    " {} |",
                    p.mbit.map_or("unshaped".into(), |m| format!("{m} Mbit/s"))
                );
                rule.push_str("---|");
            }
            let _ = writeln!(s, "{head}\n{rule}");
            for row in 0..8 {
                let name = if row < 7 {
                    decomp::PHASES[row]
                } else {
                    "**total**"
                };
                let _ = write!(
                    s,
                    "| {} {name} |",
                    if row < 7 {
                        format!("{}.", row + 1)
                    } else {
                        String::new()
                    }
                );
                for p in &pts {
                    let v = if row < 7 {
                        p.phases_us[row].as_ref()
                    } else {
                        p.total_us.as_ref()
                    };
                    let col = p
                        .mbit
                        .and_then(|m| decomp::SEED_MBIT.iter().position(|x| (x - m).abs() < 1e-9));
                    match (v, col) {
                        (Some(st), Some(c)) => {
                            let seed = decomp::SEED_TABLE1[row][c];
                            let _ = write!(
                                s,
                                " {} [{seed}, {:.3}×] |",
                                ms(Some(st)),
                                st.median / 1000.0 / seed
                            );
                        }
                        _ => {
                            let _ = write!(s, " {} |", ms(v));
                        }
                    }
                }
                s.push('\n');
            }
            let _ = write!(s, "| p99 of the total |");
            for p in &pts {
                let _ = write!(
                    s,
                    " {} |",
                    p.p99_us
                        .0
                        .map_or("—".into(), |v| format!("{:.3}", v / 1000.0))
                );
            }
            let _ = write!(s, "\n| client-perceived handoff time (median) |");
            for p in &pts {
                let _ = write!(s, " {} |", ms(p.client_gap_us.as_ref()));
            }
            let _ = write!(s, "\n| client-perceived handoff time (p99) |");
            for p in &pts {
                let _ = write!(
                    s,
                    " {} |",
                    p.p99_us
                        .1
                        .map_or("—".into(), |v| format!("{:.3}", v / 1000.0))
                );
            }
            let _ = write!(s, "\n| state moved (bytes) |");
            for p in &pts {
                let _ = write!(
                    s,
                    " {} |",
                    p.state_bytes
                        .as_ref()
                        .map_or("—".into(), |x| format!("{:.0}", x.median))
                );
            }
            s.push_str("\n\n");
        }
        if let Some(v) = &r.sweep {
            let _ = writeln!(
                s,
                "### With path latencies\n\n\
                 The seed found phase 2 growing with L_SS, phase 4 with 2·L_SS + 2·L_CS1 and \
                 phase 6 with 2·L_CS2 (route optimisation: return routability, then the Binding \
                 Update to the client and its acknowledgement). Ours: drained handoffs on our \
                 stack, unshaped, medians in ms. In transparent mode there is no return \
                 routability (phase 4); phase 2 as we time it runs from the donor's Offer to the \
                 arrival of the acceptor's answer, a round trip on SS, so it grows with 2·L_SS; phase 6 is the \
                 acceptor's flow move at home agent 1, also a round trip on SS (2·L_SS); the \
                 client-perceived time grows with 2·L_CS (the drain's last ACK crosses CS1, the \
                 acceptor's first data CS2) and with about 3·L_SS (the offer one way, the flow \
                 move both ways). Route-optimised, phase 4 (the care-of test) and phase 6 (the \
                 Binding Update's round trip) each cross CS2 both ways (2·L_CS2); the seed's \
                 phase 4 also carried the home test through the home agent (2·L_SS + 2·L_CS1), \
                 which our contact node runs before the handoff.\n"
            );
            let _ = write!(s, "| steering | Lat_CS | Lat_SS |");
            for p in decomp::PHASES {
                let _ = write!(s, " {p} |");
            }
            let _ = writeln!(
                s,
                " client-perceived |\n|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for p in v {
                let _ = write!(
                    s,
                    "| {} | {} | {} |",
                    decomp::mode_name(p.mode),
                    p.cs_ms,
                    p.ss_ms
                );
                for ph in &p.phases_us {
                    let _ = write!(s, " {} |", ms(ph.as_ref()));
                }
                let _ = writeln!(s, " {} |", ms(p.client_gap_us.as_ref()));
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "The seed moved ~90 kB of socket state in the immediate case; our donor holds what \
             its file server queued up to the not-sent limit (256 KiB) plus what is in flight, so \
             state transfer at low bandwidth takes correspondingly longer.\n"
        );
    }
    if let Some(f) = &r.state {
        let _ = writeln!(
            s,
            "## Experiment 3 — state transfer optimisation (§3.2.3, Figure 2)\n\n\
             The donor waits after its last send before freezing (`dsnode --drain wait`), {} \
             download(s) per point; the client-perceived handoff time is the seed's: from the \
             last data packet from the donor to the first from the acceptor, on the client's \
             interface (told apart by their last hop, home agent 1's or home agent 2's router). \
             The seed's Figure 2 (its image is not in our copy of the report) shows the time \
             falling as the wait grows until the socket is extracted right after the last \
             acknowledgement (a ~90-byte state), then growing with the wait. Our donor starts \
             with some 4× the seed's ~90 kB (what the file server queued, up to the 256 KiB \
             not-sent limit, plus what is in flight), which does not drain within 1,000 ms at \
             these rates: the curves only fall. Our `acked` drain policy, which solicits the \
             last ACK and freezes at once, is the cross on each curve, drawn at the time its \
             drain took: that is where the seed's minimum lies. Our `adaptive` policy (the \
             same, but it freezes as soon as the client's rate of acknowledgements shows the \
             rest cannot be acknowledged before its deadline, here {} ms) is the cross labelled \
             `adaptive`: it bounds how long the donor holds the connection, and moves the \
             state left then.\n\n\
             ![Figure 2](figures/reproduce-figure2.svg)\n",
            f.options.sessions,
            figure2::adaptive_deadline_ms(&f.options)
        );
        let _ = write!(s, "| wait (ms) |");
        let mut rule = String::from("|---|");
        for c in &f.curves {
            let _ = write!(s, " {} Mbit/s: median ms (p99; state) |", c.mbit);
            rule.push_str("---|");
        }
        let _ = writeln!(s, "\n{rule}");
        let cell = |p: &figure2::Point| match (&p.client_ms, &p.state_bytes) {
            (Some(c), Some(b)) => format!(
                "{:.1} (p99 {:.1}; {:.0} B)",
                c.median,
                p.client_p99_ms.unwrap_or(f64::NAN),
                b.median
            ),
            _ => "—".into(),
        };
        for (i, w) in f.options.waits_ms.iter().enumerate() {
            let _ = write!(s, "| {w} |");
            for c in &f.curves {
                let _ = write!(s, " {} |", c.points.get(i).map_or("—".into(), cell));
            }
            s.push('\n');
        }
        let _ = write!(s, "| acked |");
        for c in &f.curves {
            let _ = write!(
                s,
                " {}{} |",
                cell(&c.acked),
                c.acked.drain_ms.as_ref().map_or(String::new(), |d| format!(
                    ", drained in {:.0} ms",
                    d.median
                ))
            );
        }
        if f.curves.iter().any(|c| c.adaptive.is_some()) {
            let _ = write!(s, "\n| adaptive |");
            for c in &f.curves {
                let _ = write!(
                    s,
                    " {} |",
                    c.adaptive.as_ref().map_or("—".into(), |p| format!(
                        "{}{}",
                        cell(p),
                        p.drain_ms.as_ref().map_or(String::new(), |d| format!(
                            ", frozen after {:.0} ms",
                            d.median
                        ))
                    ))
                );
            }
        }
        s.push_str("\n\n");
    }
    let found = findings::all(r.decomp.as_ref(), r.state.as_ref(), r.sweep.as_deref());
    if !found.is_empty() {
        let _ = writeln!(
            s,
            "## The seed's findings, checked\n\n\
             Each claim checked by code on this run's medians (`perf/src/reproduce/findings.rs`).\n\n\
             | claim | holds here | figures |\n|---|---|---|"
        );
        for f in &found {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                f.claim,
                match f.holds {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                },
                f.evidence
            );
        }
        s.push('\n');
    }
    let est = r.full_estimate();
    let full = if r.size == "full" {
        format!("{}, measured below", hours(r.seconds))
    } else if est.is_empty() {
        "hours".to_string()
    } else {
        format!("about {}, estimated below", hours(est.values().sum()))
    };
    let _ = writeln!(
        s,
        "## Reproduce\n\n```sh\ncargo build --release -p ds-apps -p ds-perf\nsudo target/release/dsperf reproduce --quick   # minutes\nsudo target/release/dsperf reproduce --full    # {full}\n```"
    );
    if r.size == "full" {
        let _ = writeln!(
            s,
            "\nThis `--full` run took {} of measurement ({}; a run in parts, merged with \
             `--render`, adds up its parts' times).",
            hours(r.seconds),
            r.experiment_seconds
                .iter()
                .map(|(k, v)| format!("{k} {}", hours(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else if !est.is_empty() {
        let _ = writeln!(
            s,
            "\nA `--full` run, estimated from this run's wall times (`perf/src/reproduce/size.rs`: each \
             experiment's fixed cost per grid point or download found from this run, plus the \
             round trips, transfer and donor waits the full run's settings add): {}.",
            est.iter()
                .map(|(k, v)| format!("{k} {}", hours(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

/// `1 h 23 min` or `12 min`.
pub fn hours(seconds: f64) -> String {
    let min = (seconds / 60.0).round() as u64;
    if min >= 60 {
        format!("{} h {} min", min / 60, min % 60)
    } else {
        format!("{min} min")
    }
}

/// One CSV per experiment in `figs`: `reproduce-access.csv` (a row per grid point),
/// `reproduce-handoffs.csv` (a row per handoff of experiment 2, phases in µs) and
/// `reproduce-figure2.csv` (a row per handoff of experiment 3).
fn write_csv(figs: &Path, r: &Results) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if let Some(a) = &r.access {
        let mut s = String::from(
            "config,lat_ss_ms,lat_cs_ms,model_ms,mean_ms,median_ms,p99_ms,answered,sent\n",
        );
        for p in &a.points {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                p.config,
                p.ss_ms,
                p.cs_ms,
                p.model_ms,
                p.mean_ms,
                p.median_ms,
                p.p99_ms,
                p.answered,
                p.sent
            );
        }
        let f = figs.join("reproduce-access.csv");
        std::fs::write(&f, s)?;
        out.push(f);
    }
    let session_row = |s: &mut String, prefix: &str, x: &decomp::Session| {
        let ph: Vec<String> = x.report.phases_us.iter().map(|v| v.to_string()).collect();
        let _ = writeln!(
            s,
            "{prefix},{},{},{},{},{},{}",
            ph.join(","),
            x.report.total_us,
            x.report.drain_us,
            x.report
                .client_gap_us
                .map_or(String::new(), |g| g.to_string()),
            x.report.state_bytes,
            x.seconds
        );
    };
    const COLS: &str = "p1_us,p2_us,p3_us,p4_us,p5_us,p6_us,p7_us,total_us,drain_us,client_us,state_bytes,download_s";
    if let Some(d) = &r.decomp {
        let mut s = format!("path,mode,drain,mbit,{COLS}\n");
        for p in &d.points {
            let drain = serde_json::to_value(p.drain)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let mbit = p.mbit.map_or("unshaped".into(), |m| m.to_string());
            for x in &p.sessions {
                let mode = serde_json::to_value(p.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                session_row(&mut s, &format!("{},{mode},{drain},{mbit}", p.path), x);
            }
        }
        let f = figs.join("reproduce-handoffs.csv");
        std::fs::write(&f, s)?;
        out.push(f);
    }
    if let Some(fg) = &r.state {
        let mut s =
            String::from("mbit,wait_ms,client_median_ms,client_p99_ms,state_bytes_median\n");
        for c in &fg.curves {
            let policies = std::iter::once(("acked", &c.acked))
                .chain(c.adaptive.as_ref().map(|p| ("adaptive", p)));
            let rows = c
                .points
                .iter()
                .map(|p| (p.wait_ms.map_or(String::new(), |w| w.to_string()), p))
                .chain(policies.map(|(n, p)| (n.to_string(), p)));
            for (label, p) in rows {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{}",
                    c.mbit,
                    label,
                    p.client_ms
                        .as_ref()
                        .map_or(String::new(), |x| x.median.to_string()),
                    p.client_p99_ms.map_or(String::new(), |x| x.to_string()),
                    p.state_bytes
                        .as_ref()
                        .map_or(String::new(), |x| x.median.to_string())
                );
            }
        }
        let f = figs.join("reproduce-figure2.csv");
        std::fs::write(&f, s)?;
        out.push(f);
    }
    Ok(out)
}

/// Writes `EVALUATION.md`, `figures/reproduce-results.json` and `figures/reproduce-figure2.svg`
/// and the CSVs into `dir` (`docs` puts them where the repository keeps them); returns the
/// paths.
pub fn write_all(dir: &Path, r: &Results) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let figs = dir.join("figures");
    std::fs::create_dir_all(&figs)?;
    let json = figs.join("reproduce-results.json");
    std::fs::write(&json, serde_json::to_string_pretty(r)?)?;
    out.push(json);
    if let Some(f) = &r.state {
        let lines: Vec<Line> = f
            .curves
            .iter()
            .map(|c| Line {
                label: format!("{} Mbit/s, donor waits", c.mbit),
                points: c
                    .points
                    .iter()
                    .filter_map(|p| Some((p.wait_ms? as f64, p.client_ms.as_ref()?.median)))
                    .collect(),
            })
            .collect();
        let markers: Vec<(usize, String, (f64, f64))> = f
            .curves
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let d = c.acked.drain_ms.as_ref()?.median;
                let y = c.acked.client_ms.as_ref()?.median;
                Some((i, format!(" acked ({} Mbit/s)", c.mbit), (d, y)))
            })
            .chain(f.curves.iter().enumerate().filter_map(|(i, c)| {
                let a = c.adaptive.as_ref()?;
                let d = a.drain_ms.as_ref()?.median;
                let y = a.client_ms.as_ref()?.median;
                Some((i, format!(" adaptive ({} Mbit/s)", c.mbit), (d, y)))
            }))
            .collect();
        out.push(write_lines_svg(
            &figs.join("reproduce-figure2.svg"),
            "Client-perceived handoff time against the donor's wait (seed Figure 2); x: drain policies",
            ("donor's wait before freezing (ms)", "client-perceived handoff time (ms)"),
            &lines,
            &markers,
            plotters::prelude::SeriesLabelPosition::UpperRight,
        )?);
    }
    out.extend(write_csv(&figs, r)?);
    let md = dir.join("EVALUATION.md");
    std::fs::write(&md, markdown(r))?;
    out.push(md);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed report's results, split in two parts as a `--full` run in pieces would
    /// be (access and the first half of the handoff points; the rest), merge back into the
    /// same results; a part given twice is refused.
    #[test]
    fn parts_of_a_run_merge_into_one_report() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/figures/reproduce-results.json"
        );
        let whole: Results =
            serde_json::from_str(&std::fs::read_to_string(path).expect("committed results"))
                .expect("parses");
        let decomp = whole.decomp.clone().expect("handoff points");
        let half = decomp.points.len() / 2;
        assert!(half > 0);
        let mut a = whole.clone();
        let mut b = whole.clone();
        let (mut da, mut db) = (decomp.clone(), decomp.clone());
        da.points.truncate(half);
        db.points.drain(..half);
        a.decomp = Some(da);
        (a.sweep, a.state) = (None, None);
        b.decomp = Some(db);
        b.access = None;
        a.experiment_seconds = [("access".to_string(), 10.0), ("decomp".into(), 20.0)].into();
        b.experiment_seconds = [("decomp".to_string(), 30.0), ("state".into(), 40.0)].into();
        (a.seconds, b.seconds) = (30.0, 70.0);

        let m = Results::merge(vec![a.clone(), b.clone()]).expect("merges");
        fn json<T: Serialize>(r: &T) -> serde_json::Value {
            serde_json::to_value(r).expect("serialises")
        }
        assert_eq!(json(&m.access), json(&whole.access));
        assert_eq!(json(&m.sweep), json(&whole.sweep));
        assert_eq!(json(&m.state), json(&whole.state));
        let md = m.decomp.as_ref().expect("handoff points");
        assert_eq!(json(&md.points), json(&decomp.points));
        assert_eq!(md.options.bandwidths, decomp.options.bandwidths);
        assert_eq!(m.seconds, 100.0);
        assert_eq!(m.experiment_seconds["decomp"], 50.0);
        assert_eq!(m.experiment_seconds["state"], 40.0);
        assert!(
            m.full_estimate().is_empty(),
            "no estimate for a run in parts"
        );
        // The same part twice, or parts with other settings, are not one run.
        assert!(Results::merge(vec![a.clone(), a.clone()]).is_err());
        let mut other = b.clone();
        if let Some(d) = other.decomp.as_mut() {
            d.options.sessions += 1;
        }
        assert!(Results::merge(vec![a.clone(), other]).is_err());
        let mut other = b.clone();
        other.machine.testbed_tcp_cc = Some("some other".into());
        assert!(Results::merge(vec![a, other]).is_err());

        // Figure 2 measured one curve per part and the parts given slowest first (as a glob
        // lists `state-1.json` before `state-2.json`) come back in the run's order.
        let state = whole.state.clone().expect("Figure 2");
        assert!(state.curves.len() > 1, "a curve per bandwidth");
        let parts: Vec<Results> = state
            .curves
            .iter()
            .rev()
            .map(|c| {
                let mut p = whole.clone();
                (p.access, p.decomp, p.sweep) = (None, None, None);
                let s = p.state.as_mut().expect("Figure 2");
                s.curves = vec![c.clone()];
                s.options.bandwidths = vec![c.mbit];
                p
            })
            .collect();
        let m = Results::merge(parts).expect("merges");
        assert_eq!(json(&m.state), json(&whole.state));
    }
}
