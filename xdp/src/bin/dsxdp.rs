//! `dsxdp`: operator tool for the Distributed Servers XDP programs, in the spirit of
//! `xdp-loader` and Katran's tooling: attach/detach the steering or tunnel program (native or
//! generic XDP), show status and counters, and edit the pinned maps (local addresses, flows,
//! bindings, tunnel configuration) while the program runs.
//!
//! Maps are pinned under `/sys/fs/bpf/ds/<iface>/` (bpffs is mounted if missing). Use
//! `--netns NAME` rather than `ip netns exec`: the latter gives the command a private mount
//! namespace whose fresh /sys hides the shared bpffs.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ds_xdp::loader::{self, default_pin_dir, ifindex};
use ds_xdp::maps::{
    Action, FlowKey, LocalAddr, TunnelConfig, TunnelMode, PROTO_ICMPV6, PROTO_MOBILITY, PROTO_TCP,
    PROTO_UDP,
};
use ds_xdp::{Kind, LoadOptions, Mode, Program};
use serde_json::json;
use std::fs::File;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "dsxdp",
    version,
    about = "Attach, inspect and steer the Distributed Servers XDP programs"
)]
struct Cli {
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Run in the named network namespace (/run/netns/NAME).
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// Pin directory (default /sys/fs/bpf/ds/IFACE).
    #[arg(long, global = true, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a program, pin its maps and attach it to an interface.
    Attach(AttachArgs),
    /// Detach the program from an interface and remove its pins.
    Detach {
        /// Interface.
        iface: String,
        /// Keep the pinned maps (flows, bindings) for the next attach.
        #[arg(long)]
        keep_maps: bool,
    },
    /// Show what is attached to an interface and its configuration.
    Status {
        /// Interface.
        iface: String,
    },
    /// Show the program's per-verdict counters (summed over CPUs).
    Counters {
        /// Interface.
        iface: String,
    },
    /// List, add or remove flows (tunnel program).
    Flow {
        #[command(subcommand)]
        op: FlowOp,
    },
    /// List, add or remove home-address bindings (tunnel program).
    Binding {
        #[command(subcommand)]
        op: BindingOp,
    },
    /// List, add or remove steered local addresses (steering program).
    Local {
        #[command(subcommand)]
        op: LocalOp,
    },
    /// Show or change the tunnel configuration (no options: show it).
    Config {
        /// Interface.
        iface: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

#[derive(Args)]
struct AttachArgs {
    /// Interface.
    iface: String,
    /// Which program.
    #[arg(long, short, value_enum)]
    program: Kind,
    /// XDP mode.
    #[arg(long, short, value_enum, default_value = "auto")]
    mode: Mode,
    /// Replace a program already attached.
    #[arg(long)]
    force: bool,
    /// Tunnel: capacity of the LRU flow table.
    #[arg(long, default_value_t = 65536)]
    flow_capacity: u32,
    #[command(flatten)]
    cfg: ConfigArgs,
}

#[derive(Args, Default)]
struct ConfigArgs {
    /// Tunnel: outer source address (the home agent's own address).
    #[arg(long)]
    local: Option<Ipv6Addr>,
    /// Tunnel: send to this next-hop MAC with XDP_TX instead of a FIB lookup.
    #[arg(long, value_name = "MAC")]
    gateway_mac: Option<String>,
    /// Tunnel: use the FIB (the default).
    #[arg(long, conflicts_with = "gateway_mac")]
    fib: bool,
    /// Tunnel: link MTU.
    #[arg(long)]
    mtu: Option<u16>,
    /// Tunnel: outer hop limit.
    #[arg(long)]
    hop_limit: Option<u8>,
    /// Tunnel: learn flows on a binding fallback (true/false).
    #[arg(long)]
    learn: Option<bool>,
}

#[derive(Args)]
struct FlowSpec {
    /// Interface.
    iface: String,
    /// Client address.
    #[arg(long)]
    src: Ipv6Addr,
    /// Home (DS) address.
    #[arg(long)]
    dst: Ipv6Addr,
    /// Client port.
    #[arg(long, default_value_t = 0)]
    sport: u16,
    /// DS port.
    #[arg(long, default_value_t = 0)]
    dport: u16,
    /// Protocol.
    #[arg(long, value_enum, default_value = "tcp")]
    proto: Proto,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Icmpv6,
}

impl FlowSpec {
    fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: match self.proto {
                Proto::Tcp => 6,
                Proto::Udp => 17,
                Proto::Icmpv6 => 58,
            },
        }
    }
}

#[derive(Subcommand)]
enum FlowOp {
    /// List flows.
    List {
        /// Interface.
        iface: String,
    },
    /// Point a flow at a node (insert or move).
    Add {
        #[command(flatten)]
        spec: FlowSpec,
        /// Care-of address of the owning node.
        #[arg(long)]
        owner: Ipv6Addr,
    },
    /// Remove a flow.
    Del {
        #[command(flatten)]
        spec: FlowSpec,
    },
}

#[derive(Subcommand)]
enum BindingOp {
    /// List bindings.
    List {
        /// Interface.
        iface: String,
    },
    /// Bind a home address to a care-of address.
    Add {
        /// Interface.
        iface: String,
        /// Home (DS) address.
        home: Ipv6Addr,
        /// Care-of address of the contact node.
        coa: Ipv6Addr,
    },
    /// Remove a binding.
    Del {
        /// Interface.
        iface: String,
        /// Home (DS) address.
        home: Ipv6Addr,
    },
}

#[derive(Subcommand)]
enum LocalOp {
    /// List steered addresses.
    List {
        /// Interface.
        iface: String,
    },
    /// Steer an address.
    Add {
        /// Interface.
        iface: String,
        /// Address.
        addr: Ipv6Addr,
        /// Protocols (comma-separated: tcp,udp,icmpv6,mh).
        #[arg(long, default_value = "tcp,udp,icmpv6,mh", value_delimiter = ',')]
        protos: Vec<String>,
        /// Where matching packets go: the AF_XDP socket, or the kernel (after decapsulation).
        #[arg(long, value_enum, default_value = "xsk")]
        action: ActionArg,
    },
    /// Stop steering an address.
    Del {
        /// Interface.
        iface: String,
        /// Address.
        addr: Ipv6Addr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Xsk,
    Pass,
}

fn join_netns(name: &str) -> Result<()> {
    if name.contains('/') {
        bail!("bad namespace name {name:?}");
    }
    let f = File::open(Path::new("/run/netns").join(name))
        .with_context(|| format!("no network namespace {name}"))?;
    // SAFETY: setns with a valid namespace fd; it only changes this (single) thread's
    // network namespace, before any other thread exists.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

fn pin_dir(cli: &Cli, iface: &str) -> PathBuf {
    cli.pin_dir
        .clone()
        .unwrap_or_else(|| default_pin_dir(iface))
}

/// The program pinned for `iface`, whichever kind it is.
fn pinned(cli: &Cli, iface: &str) -> Result<Program> {
    let dir = pin_dir(cli, iface);
    for kind in [Kind::Tunnel, Kind::Steer] {
        if dir.join(kind.prog_name()).exists() {
            return Program::open_pinned(kind, &dir)
                .with_context(|| format!("opening pins in {}", dir.display()));
        }
    }
    bail!(
        "no program pinned in {} (attach one first: dsxdp attach {iface} --program ...)",
        dir.display()
    )
}

fn pinned_kind(cli: &Cli, iface: &str, kind: Kind) -> Result<Program> {
    let p = pinned(cli, iface)?;
    if p.kind() != kind {
        bail!(
            "{iface} runs the {:?} program; this command needs {kind:?}",
            p.kind()
        );
    }
    Ok(p)
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC address {s:?}");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC address {s:?}"))?;
    }
    Ok(mac)
}

fn apply_config(p: &Program, a: &ConfigArgs) -> Result<TunnelConfig> {
    let mut c = p.config()?;
    if c.mtu == 0 {
        c = TunnelConfig {
            local: c.local,
            ..TunnelConfig::default()
        };
    }
    if let Some(l) = a.local {
        c.local = l;
    }
    if let Some(m) = &a.gateway_mac {
        c.mode = TunnelMode::Gateway(parse_mac(m)?);
    }
    if a.fib {
        c.mode = TunnelMode::Fib;
    }
    if let Some(m) = a.mtu {
        c.mtu = m;
    }
    if let Some(h) = a.hop_limit {
        c.hop_limit = h;
    }
    if let Some(l) = a.learn {
        c.learn = l;
    }
    p.set_config(&c)?;
    Ok(c)
}

fn protos(list: &[String]) -> Result<u32> {
    let mut bits = 0;
    for p in list {
        bits |= match p.as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "icmpv6" => PROTO_ICMPV6,
            "mh" | "mobility" => PROTO_MOBILITY,
            other => bail!("unknown protocol {other:?} (tcp, udp, icmpv6, mh)"),
        };
    }
    Ok(bits)
}

fn print(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        let t = text();
        if !t.is_empty() {
            println!("{t}");
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(ns) = &cli.netns {
        join_netns(ns)?;
    }
    let json = cli.json;
    match &cli.cmd {
        Cmd::Attach(a) => {
            let idx = ifindex(&a.iface)?;
            let dir = pin_dir(&cli, &a.iface);
            let st = loader::query(idx)?;
            if !a.force && (st.native_prog_id.is_some() || st.generic_prog_id.is_some()) {
                bail!(
                    "{} already has an XDP program attached (dsxdp status {}); use --force to \
                     replace it",
                    a.iface,
                    a.iface
                );
            }
            let p = Program::load(
                a.program,
                &LoadOptions {
                    pin_dir: Some(dir.clone()),
                    flow_capacity: Some(a.flow_capacity),
                },
            )
            .context("loading the program")?;
            let cfg = if a.program == Kind::Tunnel {
                Some(apply_config(&p, &a.cfg)?)
            } else {
                None
            };
            let mode = match p.attach(idx, a.mode, a.force) {
                Ok(m) => m,
                Err(e) => {
                    let _ = p.unpin();
                    return Err(e).context(format!("attaching to {}", a.iface));
                }
            };
            print(
                json,
                json!({"iface": a.iface, "ifindex": idx, "program": a.program, "mode": mode,
                       "prog_id": p.id(), "pin_dir": dir, "config": cfg}),
                || {
                    format!(
                        "attached {} (id {}) to {} in {:?} mode; maps pinned in {}",
                        a.program.prog_name(),
                        p.id(),
                        a.iface,
                        mode,
                        dir.display()
                    )
                },
            );
        }
        Cmd::Detach { iface, keep_maps } => {
            let idx = ifindex(iface)?;
            let any = loader::detach(idx)?;
            let dir = pin_dir(&cli, iface);
            if !keep_maps {
                for kind in [Kind::Steer, Kind::Tunnel] {
                    loader::remove_pins(kind, &dir)?;
                }
            } else {
                for kind in [Kind::Steer, Kind::Tunnel] {
                    let _ = std::fs::remove_file(dir.join(kind.prog_name()));
                }
            }
            print(json, json!({"iface": iface, "detached": any}), || {
                if any {
                    format!("detached from {iface}")
                } else {
                    format!("nothing attached to {iface}")
                }
            });
        }
        Cmd::Status { iface } => {
            let idx = ifindex(iface)?;
            let st = loader::query(idx)?;
            let name = |id: Option<u32>| id.and_then(loader::prog_name);
            let p = pinned(&cli, iface).ok();
            let cfg = p
                .as_ref()
                .filter(|p| p.kind() == Kind::Tunnel)
                .and_then(|p| p.config().ok());
            let v = json!({
                "iface": iface, "ifindex": idx,
                "native": st.native_prog_id.map(|id| json!({"id": id, "name": name(Some(id))})),
                "generic": st.generic_prog_id.map(|id| json!({"id": id, "name": name(Some(id))})),
                "pinned": p.as_ref().map(|p| json!({"program": p.kind(), "id": p.id(),
                    "dir": pin_dir(&cli, iface)})),
                "config": cfg,
            });
            print(json, v, || {
                let mut s = format!("{iface} (ifindex {idx})\n");
                for (mode, id) in [
                    ("native", st.native_prog_id),
                    ("generic", st.generic_prog_id),
                ] {
                    if let Some(id) = id {
                        s += &format!(
                            "  {mode}: prog id {id} ({})\n",
                            name(Some(id)).unwrap_or_default()
                        );
                    }
                }
                if st.native_prog_id.is_none() && st.generic_prog_id.is_none() {
                    s += "  no XDP program attached\n";
                }
                if let Some(p) = &p {
                    s += &format!(
                        "  pinned: {:?} (id {}) in {}\n",
                        p.kind(),
                        p.id(),
                        pin_dir(&cli, iface).display()
                    );
                }
                if let Some(c) = cfg {
                    s += &format!(
                        "  tunnel: local {} mode {:?} mtu {} hop limit {} learn {}\n",
                        c.local, c.mode, c.mtu, c.hop_limit, c.learn
                    );
                }
                s.trim_end().to_string()
            });
        }
        Cmd::Counters { iface } => {
            let p = pinned(&cli, iface)?;
            let c = p.counters()?;
            let map: serde_json::Map<String, serde_json::Value> =
                c.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            print(
                json,
                json!({"iface": iface, "program": p.kind(), "counters": map}),
                || {
                    c.iter()
                        .map(|(k, v)| format!("{k:<20} {v}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Cmd::Flow { op } => match op {
            FlowOp::List { iface } => {
                let p = pinned_kind(&cli, iface, Kind::Tunnel)?;
                let flows = p.flows()?;
                let v: Vec<_> = flows
                    .iter()
                    .map(|(k, v)| json!({"key": k, "owner": v.owner, "packets": v.packets, "bytes": v.bytes}))
                    .collect();
                print(json, json!(v), || {
                    flows
                        .iter()
                        .map(|(k, v)| {
                            format!(
                                "[{}]:{} -> [{}]:{} proto {}  owner {}  {} pkts {} bytes",
                                k.src,
                                k.sport,
                                k.dst,
                                k.dport,
                                k.proto,
                                v.owner,
                                v.packets,
                                v.bytes
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            FlowOp::Add { spec, owner } => {
                let p = pinned_kind(&cli, &spec.iface, Kind::Tunnel)?;
                p.set_flow(&spec.key(), *owner)?;
                print(
                    json,
                    json!({"flow": spec.key(), "owner": owner}),
                    String::new,
                );
            }
            FlowOp::Del { spec } => {
                let p = pinned_kind(&cli, &spec.iface, Kind::Tunnel)?;
                let removed = p.remove_flow(&spec.key())?;
                print(
                    json,
                    json!({"flow": spec.key(), "removed": removed}),
                    || {
                        if removed {
                            String::new()
                        } else {
                            "no such flow".into()
                        }
                    },
                );
            }
        },
        Cmd::Binding { op } => match op {
            BindingOp::List { iface } => {
                let p = pinned_kind(&cli, iface, Kind::Tunnel)?;
                let b = p.bindings()?;
                let v: Vec<_> = b
                    .iter()
                    .map(|(h, c)| json!({"home": h, "coa": c}))
                    .collect();
                print(json, json!(v), || {
                    b.iter()
                        .map(|(h, c)| format!("{h} -> {c}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            BindingOp::Add { iface, home, coa } => {
                pinned_kind(&cli, iface, Kind::Tunnel)?.set_binding(*home, *coa)?;
                print(json, json!({"home": home, "coa": coa}), String::new);
            }
            BindingOp::Del { iface, home } => {
                let removed = pinned_kind(&cli, iface, Kind::Tunnel)?.remove_binding(*home)?;
                print(json, json!({"home": home, "removed": removed}), String::new);
            }
        },
        Cmd::Local { op } => match op {
            LocalOp::List { iface } => {
                let p = pinned_kind(&cli, iface, Kind::Steer)?;
                let l = p.locals()?;
                let v: Vec<_> = l
                    .iter()
                    .map(|(a, v)| json!({"addr": a, "protos": v.protos, "action": v.action}))
                    .collect();
                print(json, json!(v), || {
                    l.iter()
                        .map(|(a, v)| format!("{a}  protos {:#x}  {:?}", v.protos, v.action))
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            LocalOp::Add {
                iface,
                addr,
                protos: pl,
                action,
            } => {
                let p = pinned_kind(&cli, iface, Kind::Steer)?;
                let l = LocalAddr {
                    protos: protos(pl)?,
                    action: match action {
                        ActionArg::Xsk => Action::Xsk,
                        ActionArg::Pass => Action::Pass,
                    },
                };
                p.add_local(*addr, l)?;
                print(json, json!({"addr": addr, "local": l}), String::new);
            }
            LocalOp::Del { iface, addr } => {
                pinned_kind(&cli, iface, Kind::Steer)?.remove_local(*addr)?;
                print(json, json!({"addr": addr, "removed": true}), String::new);
            }
        },
        Cmd::Config { iface, cfg: a } => {
            let p = pinned_kind(&cli, iface, Kind::Tunnel)?;
            let c = apply_config(&p, a)?;
            print(json, json!(c), || format!("{c:?}"));
        }
    }
    Ok(())
}
