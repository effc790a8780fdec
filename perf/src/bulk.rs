//! `dsperf bulk`: single-flow bulk transfer, both ways, on the deployment device: our stack
//! through the library (`dserver::Node` on AF_XDP) against the kernel's TCP, each alone behind
//! its own veth pair, once with the kernel's offloads at their defaults and once with every
//! offload off, in the same run.
//!
//! ```text
//!  C (client: kernel TCP, std::net)              server namespaces
//!  to_od fd00:b7:1::1  ══ veth ══  od0  ours, AF_XDP, fd00:b7:1::2      offloads: defaults
//!  to_kd fd00:b7:2::1  ══ veth ══  kd0  kernel TCP,   fd00:b7:2::2      offloads: defaults
//!  to_of fd00:b7:3::1  ══ veth ══  of0  ours, AF_XDP, fd00:b7:3::2      offloads: all off
//!  to_kf fd00:b7:4::1  ══ veth ══  kf0  kernel TCP,   fd00:b7:4::2      offloads: all off
//! ```
//!
//! "Defaults" keeps TSO, GSO, GRO and checksum offload on both ends of the kernel's pair and
//! on our pair except the client's transmit checksum towards AF_XDP (a veth peer with it on
//! hands AF_XDP frames whose TCP checksum is only partial; see `dsperf http`). "Off" turns
//! off what `ethtool -K` can (tx/rx checksum, scatter-gather, TSO, GSO, GRO) on both ends of
//! both pairs ([`ds_testbed::disable_ethtool_offloads`]): the kernel's TCP then segments in
//! software before the device, as on any NIC without offloads (`gso_max_segs` at 1 would cost
//! the kernel's TCP on a veth some 12× its rate: not a baseline to compare with). Our server
//! sends TCP super-frames through the
//! AF_XDP device's packet socket (`ds_xdp::gso_tx`) in both settings; with the veth's GSO off
//! the kernel segments them in software too.
//!
//! The client and the servers speak `dsperf stack`'s protocol ([`crate::stack::proto`]): a
//! download is timed from the request to the last byte read, an upload from the first byte
//! written to the server's count of what its application read. Servers are pinned to
//! `--server-cpu`, the client to `--client-cpu`; on a veth the receiver's protocol work runs
//! on the sender's core, so each figure is what one flow gets from two cores.

use crate::stack::client::{self, pin_to_cpu};
use crate::stack::report::Stat;
use crate::stack::servers::{self, ServerCtl};
use crate::stack::{spawn, StopAll};
use anyhow::{ensure, Context, Result};
use ds_testbed::{add_addr, disable_ethtool_offloads, veth, wait_addr_usable, Netns};
use serde::Serialize;
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::info;

const PORT: u16 = 5001;
const UP: Duration = Duration::from_secs(15);
/// Our servers' MAC (each on its own link).
const OURS_MAC: [u8; 6] = [0x02, 0xd5, 0xb7, 0, 0, 0x02];

/// The kernel's offload settings on a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Offloads {
    /// As the kernel sets them (TSO, GSO, GRO, checksum offload on).
    Defaults,
    /// Every offload off on both ends.
    Off,
}

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Server → client.
    Download,
    /// Client → server.
    Upload,
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `dserver::Node` on AF_XDP.
    Ours,
    /// The kernel's TCP (`std::net`).
    Kernel,
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Bytes per transfer.
    pub bytes: u64,
    /// Measurements per server, direction and offload setting.
    pub repeats: u32,
    /// Core of the servers.
    pub server_cpu: usize,
    /// Core of the client.
    pub client_cpu: usize,
}

/// One transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Offload setting.
    pub offloads: Offloads,
    /// Direction.
    pub direction: Direction,
    /// Server.
    pub target: Target,
    /// Repeat index.
    pub repeat: u32,
    /// Goodput, Gbit/s.
    pub gbps: f64,
    /// Our server's TCP retransmissions during the transfer (0 for the kernel: not counted).
    pub server_retransmits: u64,
    /// Our server's TCP super-frames during the transfer.
    pub super_frames: u64,
    /// The client kernel's retransmitted segments during the transfer (`TcpRetransSegs`).
    pub client_retransmits: u64,
}

/// One row of the summary: a setting and a direction, both servers.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Offload setting.
    pub offloads: Offloads,
    /// Direction.
    pub direction: Direction,
    /// Ours, Gbit/s.
    pub ours: Option<Stat>,
    /// The kernel, Gbit/s.
    pub kernel: Option<Stat>,
    /// Median of the per-repeat ratios ours / kernel (each pair measured back to back).
    pub ratio: Option<Stat>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Settings.
    pub options: Options,
    /// Rows in order: defaults download, defaults upload, off download, off upload.
    pub rows: Vec<Row>,
}

/// One server's link: namespaces, names and addresses.
struct Link {
    offloads: Offloads,
    target: Target,
    ns: Netns,
    /// The server's end of the veth.
    srv_if: &'static str,
    server: Ipv6Addr,
}

const LINKS: [(Offloads, Target, &str, &str, u16); 4] = [
    (Offloads::Defaults, Target::Ours, "to_od", "od0", 1),
    (Offloads::Defaults, Target::Kernel, "to_kd", "kd0", 2),
    (Offloads::Off, Target::Ours, "to_of", "of0", 3),
    (Offloads::Off, Target::Kernel, "to_kf", "kf0", 4),
];

fn build(cli: &Netns) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    for (offloads, target, cli_if, srv_if, net) in LINKS {
        let ns = Netns::new(&format!("dsperf_bulk_{srv_if}"))?;
        let client = Ipv6Addr::new(0xfd00, 0xb7, net, 0, 0, 0, 0, 1);
        let server = Ipv6Addr::new(0xfd00, 0xb7, net, 0, 0, 0, 0, 2);
        if target == Target::Ours {
            // The namespace's kernel only carries the veth for AF_XDP.
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        veth(cli, cli_if, &ns, srv_if)?;
        match offloads {
            Offloads::Off => {
                disable_ethtool_offloads(cli, cli_if)?;
                disable_ethtool_offloads(&ns, srv_if)?;
            }
            Offloads::Defaults if target == Target::Ours => {
                cli.exec(&["ethtool", "-K", cli_if, "tx", "off"])?;
            }
            Offloads::Defaults => {}
        }
        add_addr(cli, cli_if, &format!("{client}/64"))?;
        if target == Target::Kernel {
            add_addr(&ns, srv_if, &format!("{server}/64"))?;
        } else {
            let mac = OURS_MAC.map(|b| format!("{b:02x}")).join(":");
            cli.ip(&[
                "-6",
                "neigh",
                "replace",
                &server.to_string(),
                "lladdr",
                &mac,
                "dev",
                cli_if,
                "nud",
                "permanent",
            ])?;
        }
        wait_addr_usable(cli, cli_if, &client.to_string(), UP)?;
        if target == Target::Kernel {
            wait_addr_usable(&ns, srv_if, &server.to_string(), UP)?;
        }
        links.push(Link {
            offloads,
            target,
            ns,
            srv_if,
            server,
        });
    }
    Ok(links)
}

/// Our server: `dserver::Node` on AF_XDP on the link's server end, serving the protocol until
/// stopped. Runs on a thread already in the link's namespace.
fn serve_ours(l: &Link, ctl: &ServerCtl) -> Result<()> {
    let mut node = dserver::Node::builder()
        .ds_addr(l.server)
        .mac(OURS_MAC)
        .port(PORT)
        .device(dserver::Device::AfXdp {
            iface: l.srv_if.into(),
        })
        .build()
        .with_context(|| format!("our server on {}", l.srv_if))?;
    info!(iface = l.srv_if, "ours: listening on [{}]:{PORT}", l.server);
    servers::serve_node(&mut node, ctl)
}

fn serve_kernel(l: &Link, ctl: &ServerCtl) -> Result<()> {
    let listener = TcpListener::bind(SocketAddrV6::new(l.server, PORT, 0, 0))
        .with_context(|| format!("kernel server on {}", l.srv_if))?;
    listener.set_nonblocking(true)?;
    info!(
        iface = l.srv_if,
        "kernel: listening on [{}]:{PORT}", l.server
    );
    servers::serve_kernel(listener, None, ctl)
}

/// Run every measurement; `each` sees every sample as it is taken.
pub fn run(opts: &Options, mut each: impl FnMut(&Sample)) -> Result<Vec<Sample>> {
    ensure!(opts.repeats > 0 && opts.bytes > 0, "nothing to measure");
    let cli = Netns::new("dsperf_bulk_c")?;
    let links = build(&cli)?;
    let ctls: Vec<ServerCtl> = links.iter().map(|_| ServerCtl::default()).collect();
    let mut samples = Vec::new();
    std::thread::scope(|sc| -> Result<()> {
        let _stop = StopAll(&ctls);
        let mut handles = Vec::new();
        for (l, ctl) in links.iter().zip(&ctls) {
            let cpu = opts.server_cpu;
            handles.push(spawn(
                sc,
                &format!("bulk-{}", l.srv_if),
                move || -> Result<()> {
                    l.ns.enter_current_thread()?;
                    pin_to_cpu(cpu)?;
                    match l.target {
                        Target::Ours => serve_ours(l, ctl),
                        Target::Kernel => serve_kernel(l, ctl),
                    }
                },
            )?);
        }
        let total = opts.repeats as usize * links.len() * 2;
        for repeat in 0..opts.repeats {
            // Links come in pairs (ours, kernel) per offload setting.
            for first in (0..links.len()).step_by(2) {
                for direction in [Direction::Download, Direction::Upload] {
                    // Alternate which server goes first, so that drift hits both.
                    let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
                    for idx in order.map(|i| first + i) {
                        crate::stack::check_interrupt()?;
                        if handles[idx].is_finished() {
                            // The server thread ended: its error is the run's.
                            let h = handles.remove(idx);
                            return h
                                .join()
                                .map_err(|_| anyhow::anyhow!("server thread panicked"))?
                                .and(Err(anyhow::anyhow!("a server stopped")));
                        }
                        let s = measure(opts, &cli, &links[idx], &ctls[idx], direction, repeat)?;
                        eprintln!(
                            "[{}/{total}] {:?} {:?} {:?}: {:.2} Gbit/s",
                            samples.len() + 1,
                            s.offloads,
                            s.direction,
                            s.target,
                            s.gbps
                        );
                        each(&s);
                        samples.push(s);
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(samples)
}

fn measure(
    opts: &Options,
    cli: &Netns,
    l: &Link,
    ctl: &ServerCtl,
    direction: Direction,
    repeat: u32,
) -> Result<Sample> {
    let addr = SocketAddrV6::new(l.server, PORT, 0, 0);
    let (rx0, gso0) = (
        ctl.retransmits.load(Ordering::Relaxed),
        ctl.super_frames.load(Ordering::Relaxed),
    );
    let c0 = ds_testbed::tcp_counters(cli)?;
    let cpu = opts.client_cpu;
    let bytes = opts.bytes;
    let bulk = cli.try_run(move || -> Result<client::Bulk> {
        pin_to_cpu(cpu)?;
        match direction {
            Direction::Download => client::download(addr, None, bytes),
            Direction::Upload => client::upload(addr, None, bytes),
        }
    })??;
    let c1 = ds_testbed::tcp_counters(cli)?;
    let retrans =
        |c: &std::collections::HashMap<String, u64>| c.get("TcpRetransSegs").copied().unwrap_or(0);
    Ok(Sample {
        offloads: l.offloads,
        direction,
        target: l.target,
        repeat,
        gbps: bulk.gbit_per_s(),
        server_retransmits: ctl.retransmits.load(Ordering::Relaxed) - rx0,
        super_frames: ctl.super_frames.load(Ordering::Relaxed) - gso0,
        client_retransmits: retrans(&c1).saturating_sub(retrans(&c0)),
    })
}

/// Medians per setting and direction, and the ratio ours / kernel.
pub fn summarize(opts: &Options, samples: &[Sample]) -> Summary {
    let mut rows = Vec::new();
    for offloads in [Offloads::Defaults, Offloads::Off] {
        for direction in [Direction::Download, Direction::Upload] {
            let of = |t: Target| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|s| s.offloads == offloads && s.direction == direction && s.target == t)
                    .collect()
            };
            let (ours, kernel) = (of(Target::Ours), of(Target::Kernel));
            let ratios = ours
                .iter()
                .filter_map(|o| {
                    let k = kernel.iter().find(|k| k.repeat == o.repeat)?;
                    (k.gbps > 0.0).then(|| o.gbps / k.gbps)
                })
                .collect();
            rows.push(Row {
                offloads,
                direction,
                ours: Stat::of(ours.iter().map(|s| s.gbps).collect()),
                kernel: Stat::of(kernel.iter().map(|s| s.gbps).collect()),
                ratio: Stat::of(ratios),
            });
        }
    }
    Summary {
        options: opts.clone(),
        rows,
    }
}

/// The human table.
pub fn table(s: &Summary) -> String {
    let mut t = format!(
        "single-flow bulk, {} MiB per transfer, median of {} (min-max), Gbit/s; servers on core {}, client on core {}\n",
        s.options.bytes >> 20,
        s.options.repeats,
        s.options.server_cpu,
        s.options.client_cpu
    );
    t.push_str(&format!(
        "{:<9} {:<9} {:>22} {:>22} {:>20}\n",
        "offloads", "direction", "ours (Node, AF_XDP)", "kernel TCP", "ours/kernel"
    ));
    let f = |s: &Option<Stat>, d: usize| {
        s.map_or("-".into(), |s| {
            format!("{:.d$} ({:.d$}-{:.d$})", s.median, s.min, s.max)
        })
    };
    for r in &s.rows {
        t.push_str(&format!(
            "{:<9} {:<9} {:>22} {:>22} {:>20}\n",
            format!("{:?}", r.offloads).to_lowercase(),
            format!("{:?}", r.direction).to_lowercase(),
            f(&r.ours, 2),
            f(&r.kernel, 2),
            f(&r.ratio, 2)
        ));
    }
    t
}
