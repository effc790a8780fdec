//! `dsperf handoff --processes`: the same experiment with the nodes and the home agent as
//! separate `dsnode` and `dsha` processes, started with the options an operator would give
//! them (see `scripts/demo.sh`), their handoff reports read from their standard output.

use super::{
    ip, kernel, DrainChoice, NodeOut, Plan, Side, Topology, COA, CTL, CTL_PORT, DS, HA, HA_PORT,
    MAC, SECRET,
};
use crate::find_program as bin;
use crate::proc::Proc;
use anyhow::{anyhow, Context, Result};
use ds_handoff::{HandoffReport, Mode};
use dserver::engine::NodeEvent;
use std::io::Write as _;
use std::net::SocketAddrV6;
use std::path::Path;
use std::time::{Duration, Instant};

/// The running processes: the home agent (transparent mode) and the two nodes.
pub(super) struct Procs {
    ha: Option<Proc>,
    nodes: Vec<Proc>,
}

/// Start `dsha` (transparent mode) and the two `dsnode`s, each in its namespace, and wait
/// until they serve.
pub(super) fn start(topo: &Topology, plan: &Plan, dir: &Path) -> Result<Procs> {
    let (opts, root, quota, max, tag) = (plan.opts, plan.root, plan.quota, plan.max, plan.tag);
    let dsnode = bin("dsnode")?;
    let dsha = bin("dsha")?;
    let secret = dir.join("secret");
    {
        let mut f = std::fs::File::create(&secret)?;
        f.write_all(SECRET)?;
        // Secret files must be owner-only.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    // Kernel nodes' addresses and MACs first, before any process resolves its peer's (a
    // MAC changed later would leave a stale neighbour entry behind).
    for (i, ns) in topo.nodes.iter().enumerate() {
        if opts.path.side(i) == Side::Kernel {
            kernel::configure_addrs(ns, i).context("the kernel node's addresses")?;
        }
    }
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let transparent = opts.mode == Mode::Transparent;
    let ha = if transparent {
        let mut args = vec![
            s(&"xdp"),
            s(&"--iface"),
            s(&"h0"),
            s(&"--addr"),
            s(&HA),
            s(&"--ds"),
            s(&DS),
            s(&"--bind"),
            s(&COA[0]),
            s(&"--control"),
            s(&SocketAddrV6::new(ip(HA), HA_PORT, 0, 0)),
            s(&"--secret-file"),
            secret.display().to_string(),
            s(&"--pin-dir"),
            format!("/sys/fs/bpf/ds/dsperf-ha-{tag}"),
            s(&"--json"),
        ];
        if let Some(p) = opts.sched_fifo {
            args.extend([s(&"--sched-fifo"), s(&p)]);
        }
        let mut p = Proc::spawn(&topo.ha, "dsha", &dsha, &args, dir)?;
        p.ready("XDP home agent up")?;
        Some(p)
    } else {
        None
    };
    let mut nodes = Vec::new();
    for (i, ns) in topo.nodes.iter().enumerate() {
        let side = opts.path.side(i);
        let ro_away = opts.mode == Mode::Ro && i == 1;
        let mut args = vec![
            s(&"serve"),
            s(&"--device"),
            s(&match side {
                Side::User => "afxdp",
                Side::Kernel => "kernel",
            }),
            s(&"--iface"),
            s(&"n0"),
            s(&"--addr"),
            s(&COA[i]),
            s(&"--mac"),
            ds_apps::mac::format_mac(&MAC[i]),
            s(&"--port"),
            s(&80),
            s(&"--root"),
            root.display().to_string(),
            s(&"--control-listen"),
            s(&SocketAddrV6::new(ip(CTL[i]), CTL_PORT, 0, 0)),
            s(&"--peer"),
            s(&SocketAddrV6::new(ip(CTL[1 - i]), CTL_PORT, 0, 0)),
            s(&"--secret-file"),
            secret.display().to_string(),
            s(&"--max-handoffs"),
            s(&max[i]),
            s(&"--drain"),
            s(&match opts.drain {
                DrainChoice::Immediate => "immediate",
                DrainChoice::Acked => "acked",
            }),
            s(&"--drain-deadline-ms"),
            s(&opts.drain_deadline.as_millis()),
            s(&"--reply-timeout-ms"),
            s(&opts.reply_timeout.as_millis()),
            s(&"--json"),
        ];
        if max[i] > 0 {
            args.extend([s(&"--handoff-after"), s(&quota)]);
        }
        if let Some(b) = opts.busy_poll {
            args.push(format!("--busy-poll={}", b.name()));
        }
        if opts.steer_ahead {
            args.push(s(&"--steer-ahead"));
        }
        if opts.no_super_frames {
            args.push(s(&"--no-super-frames"));
        }
        if let Some(p) = opts.sched_fifo {
            args.extend([s(&"--sched-fifo"), s(&p)]);
        }
        if opts.queues != 1 {
            args.extend([s(&"--queues"), s(&opts.queues)]);
        }
        if !ro_away {
            args.extend([s(&"--also-addr"), s(&DS)]);
        }
        if transparent {
            args.extend([
                s(&"--steering"),
                s(&"transparent"),
                s(&"--ha-control"),
                s(&SocketAddrV6::new(ip(HA), HA_PORT, 0, 0)),
            ]);
        } else {
            args.extend([s(&"--steering"), s(&"ro"), s(&"--home-addr"), s(&DS)]);
        }
        if let (1, Some(f)) = (i, opts.fault) {
            args.extend([
                s(&"--fault"),
                s(&match f {
                    dserver::engine::AcceptorFault::Refuse => "refuse",
                    dserver::engine::AcceptorFault::Crash => "crash",
                    dserver::engine::AcceptorFault::Hang => "hang",
                }),
            ]);
        }
        let mut p = Proc::spawn(ns, &format!("dsnode{}", i + 1), &dsnode, &args, dir)?;
        p.ready("serving http")?;
        nodes.push(p);
    }
    Ok(Procs { ha, nodes })
}

impl Procs {
    /// Steering ahead: an acceptor prints the home agent's answer to its flow move (a `bound`
    /// line) after the handoff, milliseconds later, and the download may end first. Wait until
    /// every handoff a node accepted has its answer printed, `within` at most (a missing one
    /// then shows as a handoff without phase 6).
    pub(super) fn wait_for_answers(&self, within: Duration) {
        let count = |out: &str, key: &str| {
            out.lines()
                .filter(|l| l.starts_with('{') && l.contains(key))
                .count()
        };
        let t = Instant::now();
        while t.elapsed() < within {
            let outs: Vec<String> = self.nodes.iter().map(Proc::output).collect();
            let answered = (0..outs.len()).all(|i| {
                let accepted = outs
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i)
                    .map(|(_, o)| count(o, "\"phases_us\""))
                    .sum::<usize>();
                count(&outs[i], "\"bound\"") + count(&outs[i], "\"steer_refused\"") >= accepted
            });
            if answered {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop everything; each node's handoff events and forwarded packets, from its output.
    pub(super) fn stop(self) -> Result<Vec<NodeOut>> {
        let mut outs = Vec::new();
        for (i, p) in self.nodes.into_iter().enumerate() {
            let out = p.stop()?;
            outs.push(parse(i, &out)?);
        }
        if let Some(ha) = self.ha {
            ha.stop()?;
        }
        Ok(outs)
    }
}

/// A node's standard output: one JSON line per handoff it completed as the donor, one per
/// binding acknowledged, and its statistics as the last line.
pub(crate) fn parse(i: usize, out: &str) -> Result<NodeOut> {
    let mut events = Vec::new();
    let (mut forwarded, mut passed, mut mobility_unexpected) = (0, 0, 0);
    // With several queues each queue's node prints its statistics line: summed.
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("node {}: {line}", i + 1))?;
        let from = i as u8 + 1;
        if v.get("phases_us").is_some() {
            let report: HandoffReport = serde_json::from_value(v.clone())?;
            let boundary_seq = v["boundary_seq"].as_u64().unwrap_or(0) as u32;
            let client = v["client"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("node {}: report without a client: {line}", i + 1))?;
            events.push((
                from,
                NodeEvent::HandedOff {
                    report,
                    client,
                    boundary_seq,
                },
            ));
        } else if let Some(b) = v.get("bound") {
            let client = b["client"].as_str().and_then(|c| c.parse().ok());
            let after = Duration::from_nanos(b["after_ns"].as_u64().unwrap_or(0));
            if let Some(client) = client {
                events.push((from, NodeEvent::Bound { client, after }));
            }
        } else if let Some(b) = v.get("steer_refused") {
            let client = b["client"].as_str().and_then(|c| c.parse().ok());
            let detail = b["detail"].as_str().unwrap_or_default().to_string();
            if let Some(client) = client {
                events.push((from, NodeEvent::SteerRefused { client, detail }));
            }
        } else if let Some(h) = v.get("handoff") {
            forwarded += h["forwarded_packets"].as_u64().unwrap_or(0);
            let iface = &v["interface"];
            passed += iface["sibling_tx"].as_u64().unwrap_or(0);
            mobility_unexpected += iface["mobility_unexpected"].as_u64().unwrap_or(0);
        }
    }
    Ok(NodeOut {
        events,
        forwarded,
        passed,
        mobility_unexpected,
    })
}
