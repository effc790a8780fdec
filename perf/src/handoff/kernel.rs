//! Kernel-path nodes for `dsperf handoff`: standard Linux sockets that hand their connections
//! off and take them over with `TCP_REPAIR` (`ds-kernel`), through the same protocol as the
//! userspace [`ds_apps::server::HttpServer`], so that kernel and userspace nodes interoperate.
//!
//! ```text
//!  HA ── IPv6-in-IPv6 to the care-of address ──▶ n0: XDP steer (decapsulate, XDP_PASS)
//!                                                 └─▶ kernel TCP, socket on [DS]:80
//! ```
//!
//! The node's kernel owns its care-of address (on `n0`) and the DS address (on `lo`, see
//! `configure`); the steering program passes both to the kernel after decapsulating the home
//! agent's tunnel (this kernel has no `ip6_tunnel`). The node itself is
//! [`ds_apps::kernel_node::KernelNode`]: the same handoff engine and protocol as the userspace
//! node, over `ds_kernel::KernelHost`. This module only builds its namespace's configuration.

use super::{ip, NodeOut, NodeTask, COA, DS, HA, HA_PORT, MAC};
use anyhow::{anyhow, Context, Result};
use ds_apps::kernel_node::KernelNode;
use ds_kernel::{HoldLimits, HoldTable};
use ds_testbed::Netns;
use ds_xdp::maps::{Action, LocalAddr, PROTO_ALL};
use ds_xdp::{Kind, LoadOptions, Program};
use dserver::engine::Steering;
use std::net::{SocketAddr, SocketAddrV6, TcpListener};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Which implementation serves a node's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// Our stack over AF_XDP ([`ds_apps::server::HttpServer`]).
    #[default]
    User,
    /// Standard kernel sockets, moved with `TCP_REPAIR`.
    Kernel,
}

impl Side {
    /// `"user"` or `"kernel"`, as in the report's `path`.
    pub fn label(self) -> &'static str {
        match self {
            Side::User => "user",
            Side::Kernel => "kernel",
        }
    }
}

/// The implementations of node 1 and node 2, written `"kernel->user"` etc. (node 1 serves
/// first, so the first handoff goes in the direction written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandoffPath {
    /// Node 1 (the contact node, first donor).
    pub node1: Side,
    /// Node 2 (first acceptor).
    pub node2: Side,
}

impl HandoffPath {
    /// The four paths, as accepted by [`std::str::FromStr`].
    pub const ALL: [&'static str; 4] = [
        "user->user",
        "kernel->user",
        "user->kernel",
        "kernel->kernel",
    ];

    /// The side of node `i` (0 or 1).
    pub fn side(self, i: usize) -> Side {
        if i == 0 {
            self.node1
        } else {
            self.node2
        }
    }

    /// Whether any node is on the kernel path.
    pub fn has_kernel(self) -> bool {
        self.node1 == Side::Kernel || self.node2 == Side::Kernel
    }
}

impl std::fmt::Display for HandoffPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.node1.label(), self.node2.label())
    }
}

impl std::str::FromStr for HandoffPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let side = |w: &str| match w {
            "user" => Ok(Side::User),
            "kernel" => Ok(Side::Kernel),
            _ => Err(format!("{s:?}: expected one of {:?}", Self::ALL)),
        };
        let (a, b) = s
            .split_once("->")
            .ok_or_else(|| format!("{s:?}: expected one of {:?}", Self::ALL))?;
        Ok(HandoffPath {
            node1: side(a)?,
            node2: side(b)?,
        })
    }
}

/// Run a kernel-path node until `stop`; the counterpart of `super::node`.
pub(super) fn node(t: NodeTask) -> Result<NodeOut> {
    let (ns, i, plan, stop) = (t.ns, t.i, t.plan, t.stop);
    let (root, ready) = (plan.root, t.ready);
    ns.try_run(|| -> Result<NodeOut> {
        let started = (|| -> Result<(KernelNode, (Program, u32))> {
            let prog = configure(ns, i).context("configuring the kernel node")?;
            let listener = TcpListener::bind(SocketAddrV6::new(ip(DS), 80, 0, 0))
                .context("listening on the DS address")?;
            let mut hc = super::handoff_config(i, plan)?;
            hc.steering = Steering::HomeAgentFlow {
                ha: SocketAddr::V6(SocketAddrV6::new(ip(HA), HA_PORT, 0, 0)),
                coa: ip(COA[i]),
            };
            // The node holds moving flows' packets in the steering program it just attached.
            let holds =
                HoldTable::new(&prog.0, HoldLimits::default()).context("the node's packet hold")?;
            Ok((KernelNode::new(listener, root, hc, holds)?, prog))
        })();
        let (mut node, prog) = match started {
            Ok(n) => n,
            Err(e) => {
                // Tell the runner at once rather than let it wait for a node that never starts.
                let _ = ready.send(Err(anyhow!("kernel node {}: {e:#}", i + 1)));
                return Err(e);
            }
        };
        let _ = ready.send(Ok(()));
        let mut events = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            node.step(Duration::from_millis(5));
            events.extend(node.take_events().into_iter().map(|e| (i as u8 + 1, e)));
            t.busy.store(node.busy(), Ordering::Relaxed);
        }
        let (stats, server) = (node.stats(), node.server_stats());
        node.shutdown();
        let _ = ds_xdp::loader::detach(prog.1);
        if let Ok(c) = ds_testbed::tcp_counters(ns) {
            // The kernel's own view of this node's sending, for the log: server-side
            // retransmissions show up in the run's duplicate count, not in the client's.
            let get = |k: &str| c.get(k).copied().unwrap_or(0);
            tracing::info!(
                node = i + 1,
                retrans_segs = get("TcpRetransSegs"),
                loss_probes = get("TcpExtTCPLossProbes"),
                timeouts = get("TcpExtTCPTimeouts"),
                dsack_recv = get("TcpExtTCPDSACKRecv"),
                ?stats,
                ?server,
                "kernel node done"
            );
        }
        Ok(NodeOut {
            events,
            forwarded: stats.forwarded_packets,
            passed: 0,
            mobility_unexpected: 0,
        })
    })?
}

/// Give the kernel of node `i` its MAC (the home agent's neighbour entry names it), its
/// care-of address on `n0` and the DS address on `lo` (see [`configure`] for why).
pub(super) fn configure_addrs(ns: &Netns, i: usize) -> Result<()> {
    let mac = ds_apps::mac::format_mac(&MAC[i]);
    // The home agent's neighbour entry for the care-of address names this MAC (the userspace
    // node answers to it on AF_XDP; the kernel only takes frames for its own).
    ns.ip(&["link", "set", "n0", "address", &mac])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/128", COA[i]),
        "dev",
        "n0",
        "nodad",
    ])?;
    // `nodad`: on `lo` DAD ends at once, but in a work item; until it runs the address is
    // tentative and binding to it fails (EADDRNOTAVAIL), which a loaded machine shows.
    ds_testbed::add_addr(ns, "lo", &format!("{DS}/128"))?;
    Ok(())
}

/// Give the kernel of node `i` its addresses and the steering program (returned: it must stay
/// loaded while the node runs).
///
/// The DS address goes on `lo`, not on `n0`: Linux sources a neighbour solicitation from the
/// address of the packet that needs it when that address is on the outgoing device
/// (`ndisc_solicit`), and the client's answer to the DS address would go to the home agent and
/// on to whichever node the binding names, never to an acceptor resolving the client. On `lo`
/// the solicitation comes from the node's own address on `n0` and the answer comes straight
/// back; the DS address is local all the same (added `nodad`, never tentative).
fn configure(ns: &Netns, i: usize) -> Result<(Program, u32)> {
    configure_addrs(ns, i)?;
    let prog = Program::load(Kind::Steer, &LoadOptions::default())?;
    let idx = ds_xdp::loader::ifindex("n0")?;
    prog.attach(idx, ds_xdp::Mode::Native, false)?;
    for a in [COA[i], DS] {
        prog.add_local(
            ip(a),
            LocalAddr {
                protos: PROTO_ALL,
                action: Action::Pass,
            },
        )?;
    }
    Ok((prog, idx))
}
