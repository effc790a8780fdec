//! `dsperf handoff`: the seed's handoff experiment in network namespaces.
//!
//! ```text
//!  client (curl, kernel TCP) ─┐            one bridge "br0" in namespace "lan"
//!  home agent (XDP tunnel) ───┼── br0 ──┬── node 1 (our stack over AF_XDP, HTTP, handoff)
//!                             │         └── node 2 (same)
//! ```
//!
//! The client downloads one object over HTTP/1.1 from the DS address. It reaches the DS
//! address through the home agent, whose XDP program tunnels the connection to node 1's
//! care-of address; node 1 serves `quota` bytes and hands the connection to node 2 over the
//! encrypted control channel; node 2 asks the home agent to move the flow (one flow-map
//! update: transparent mode) and serves the next `quota` bytes, hands back, and so on for
//! `count` handoffs. Replies go straight from the serving node to the client. Each handoff is
//! one JSON line: the donor's report (seven phases, state size) completed with what the
//! client saw: the gap at the handoff's sequence boundary (packet log on the client's link),
//! whether the content matched (SHA-256 of the whole download) and the client's TCP
//! retransmissions (`TcpRetransSegs`).
//!
//! [`Options::path`] puts either node on the kernel path instead ([`kernel`]: standard
//! sockets moved with `TCP_REPAIR`, same protocol and state), e.g. `kernel->user`.

pub mod kernel;
pub mod plot;
pub(crate) mod processes;
pub mod sniff;

pub use kernel::{HandoffPath, Side};

use anyhow::{bail, Context, Result};
use ds_apps::flow_agent::FlowAgent;
use ds_apps::server::{HttpServer, ServerConfig};
use ds_handoff::{ClusterSecret, Drain, HandoffReport, Mode};
use ds_stack::mobile::MobileRole;
use ds_stack::runner::Runner;
use ds_stack::{Config, Interface};
use ds_testbed::topo::{HandoffSpec, HandoffTopology};
use ds_testbed::{tcp_counters, Netns};
use ds_xdp::device::{AfXdpConfig, AfXdpDevice};
use ds_xdp::maps::{TunnelConfig, TunnelMode};
use ds_xdp::{Kind, LoadOptions, Program};
use dserver::engine::{AcceptorFault, HandoffConfig, NodeEvent, Steering};
use sha2::{Digest, Sha256};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CLIENT: &str = "fd00:d5:1::c";
const HA: &str = "fd00:d5:1::a";
const COA: [&str; 2] = ["fd00:d5:1::1", "fd00:d5:1::2"];
/// The nodes' kernel addresses (control channels), on the same links.
const CTL: [&str; 2] = ["fd00:d5:1::11", "fd00:d5:1::12"];
const DS: &str = "fd00:d5:80::80";
const MAC: [[u8; 6]; 2] = [[0x02, 0xd5, 0, 0, 0, 1], [0x02, 0xd5, 0, 0, 0, 2]];
const CTL_PORT: u16 = 7000;
const HA_PORT: u16 = 7001;
const SECRET: &[u8] = b"dsperf handoff demo cluster secret";

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or(Ipv6Addr::UNSPECIFIED)
}

/// Which process the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// `curl` (kernel TCP).
    Curl,
}

/// How far the nodes busy-poll during a handoff (`dsnode --busy-poll=SCOPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusyPollChoice {
    /// Only the offer's round trip (donor: offer to reply; acceptor: accept to activation).
    Exchange,
    /// The whole handoff (donor: from the drain; acceptor: from the donor's Prepare).
    Handoff,
}

impl BusyPollChoice {
    /// The scope's name on `dsnode`'s command line.
    pub fn name(self) -> &'static str {
        match self {
            BusyPollChoice::Exchange => "exchange",
            BusyPollChoice::Handoff => "handoff",
        }
    }
}

/// Drain policy choice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DrainChoice {
    /// Freeze at once: unacknowledged and unsent data travel in the state.
    Immediate,
    /// Wait until the send buffer is acknowledged (deadline `--drain-deadline-ms`).
    Acked,
}

/// One experiment.
#[derive(Debug, Clone)]
pub struct Options {
    /// Steering mode.
    pub mode: Mode,
    /// Handoffs in the download (back and forth between the nodes).
    pub count: u32,
    /// Object size, bytes.
    pub size: u64,
    /// Response bytes each node serves before it hands off (default: size / (count + 1)).
    pub quota: Option<u64>,
    /// Drain policy.
    pub drain: DrainChoice,
    /// Drain deadline.
    pub drain_deadline: Duration,
    /// The client.
    pub client: Client,
    /// Injected failure at node 2's acceptor.
    pub fault: Option<AcceptorFault>,
    /// The donor's reply timeout.
    pub reply_timeout: Duration,
    /// Whole-run limit.
    pub timeout: Duration,
    /// Which implementation each node runs (userspace stack or kernel sockets).
    pub path: HandoffPath,
    /// Run the nodes and the home agent as `dsnode` and `dsha` processes (found next to this
    /// program, or in `$DS_BIN_DIR`) instead of threads of this process.
    pub processes: bool,
    /// Busy-poll while a handoff is in flight, over this scope (`dsnode --busy-poll=SCOPE`,
    /// `HandoffConfig::busy_poll`); `None`: sleep between events.
    pub busy_poll: Option<BusyPollChoice>,
    /// Transparent mode: acceptors commit without waiting for the home agent's answer to the
    /// flow move (`dsnode --steer-ahead`, `HandoffConfig::steer_ahead`); phase 6 then comes
    /// from the acceptor's later report of that answer.
    pub steer_ahead: bool,
    /// The userspace nodes send one frame per TCP segment, no super-frames
    /// (`dsnode --no-super-frames`, `Builder::super_frames(false)`).
    pub no_super_frames: bool,
    /// With `processes`: the nodes and the home agent run under SCHED_FIFO at this priority
    /// (`dsnode`/`dsha --sched-fifo`); the client and this program do not.
    pub sched_fifo: Option<u8>,
    /// With `processes`, userspace nodes only: each node serves this many receive queues of
    /// its veth, one stack per queue (`dsnode --queues`).
    pub queues: u32,
    /// With `queues`: every frame for a node reaches this receive queue of it, whatever its
    /// flow (`HandoffTopology::steer_nodes_to_queue`), instead of the veth's flow hash.
    pub client_queue: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Transparent,
            count: 1,
            size: 1_000_000,
            quota: None,
            drain: DrainChoice::Acked,
            drain_deadline: Duration::from_millis(200),
            client: Client::Curl,
            fault: None,
            reply_timeout: Duration::from_millis(500),
            timeout: Duration::from_secs(300),
            path: HandoffPath::default(),
            processes: false,
            busy_poll: None,
            steer_ahead: false,
            no_super_frames: false,
            sched_fifo: None,
            queues: 1,
            client_queue: None,
        }
    }
}

/// One handoff as reported: the donor's report with the client's view filled in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HandoffLine {
    /// Sequence number of the handoff in the run (1-based).
    pub n: u32,
    /// Donor node (1 or 2).
    pub from: u8,
    /// The report (mode, path, phases_us, total_us, wall_us, client_gap_us, state_bytes,
    /// bytes_ok, client_retransmits, ...).
    #[serde(flatten)]
    pub report: HandoffReport,
    /// Steering ahead: the home agent did not apply this handoff's flow move (a newer
    /// handoff of the flow outranked it, `stale: …`, or it refused it); phase 6 is then 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steer_refused: Option<String>,
}

/// What a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// One per completed handoff, in order.
    pub handoffs: Vec<HandoffLine>,
    /// Handoffs that failed and left the connection on its donor.
    pub kept: Vec<String>,
    /// The download's SHA-256 matched the object's.
    pub bytes_ok: bool,
    /// Bytes the client received.
    pub bytes: u64,
    /// The client's `TcpRetransSegs` over the whole run.
    pub client_retransmits: u64,
    /// The client's RTO expiries (`TcpExtTCPTimeouts`) over the whole run.
    pub client_timeouts: u64,
    /// Resets the client received (`TcpExtTCPAbortOnData` + `TcpEstabResets`).
    pub client_resets: u64,
    /// Data segments that reached the client a second time (server retransmissions).
    pub duplicate_segments: u64,
    /// Their payload octets (a drain's ACK probe carries one: see `Tcb::drain_probe`).
    pub duplicate_octets: u64,
    /// Packets the donors forwarded to acceptors.
    pub forwarded_packets: u64,
    /// With several queues per node: packets the nodes' queues passed each other (segments
    /// and mobility messages that reached another queue than the one that holds or asked
    /// for them).
    pub passed_between_queues: u64,
    /// Mobility Headers that no queue of a node expected (dropped).
    pub mobility_unexpected: u64,
    /// Download wall time, seconds.
    pub seconds: f64,
    /// Route-optimised mode: where the client's packets went (from the capture).
    pub route: Option<RouteCheck>,
}

/// The namespaces and links.
struct Topology {
    lan: Netns,
    client: Netns,
    ha: Netns,
    nodes: Vec<Netns>,
    _napi: Program,
}

fn setup(opts: &Options) -> Result<Topology> {
    let (mode, node_queues) = (opts.mode, opts.queues);
    // The kernel is the client in transparent mode; in route-optimised mode our stack is, on
    // AF_XDP (no kernel address on c0).
    let transparent = mode == Mode::Transparent;
    let t = HandoffTopology::build(&HandoffSpec {
        prefix: "h",
        nodes: 2,
        client_addr: transparent.then_some(CLIENT),
        client_route_via_ha: transparent.then_some(DS),
        ha_addr: HA,
        node_addrs: &CTL,
        ha_neighbours: &[(COA[0], MAC[0]), (COA[1], MAC[1])],
        node_queues,
    })?;
    // XDP_TX on the HA's veth needs NAPI on its peer (veth_xdp_xmit checks it): a pass-all
    // steering program there enables it.
    let napi = Program::load(Kind::Steer, &LoadOptions::default())?;
    t.hub.try_run(|| -> Result<()> {
        let idx = ds_xdp::loader::ifindex(ds_testbed::topo::HA_PORT)?;
        napi.attach(idx, ds_xdp::Mode::Native, false)?;
        Ok(())
    })??;
    if let Some(q) = opts.client_queue {
        t.steer_nodes_to_queue(node_queues, q)
            .context("steering every frame for a node to one queue")?;
    }
    let HandoffTopology {
        hub,
        client,
        ha,
        nodes,
    } = t;
    Ok(Topology {
        lan: hub,
        client,
        ha,
        nodes,
        _napi: napi,
    })
}

/// The object: deterministic bytes, written to a fresh directory.
fn make_object(dir: &Path, size: u64) -> Result<[u8; 32]> {
    let mut data = vec![0u8; size as usize];
    ds_testbed::PatternStream::new(0xd5).fill(&mut data);
    std::fs::write(dir.join("obj"), &data)?;
    Ok(Sha256::digest(&data).into())
}

/// Run the home agent until `stop`: tunnel program on h0, binding DS → node 1, flow agent.
fn home_agent(
    ha: &Netns,
    tag: &str,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let pin = PathBuf::from(format!("/sys/fs/bpf/ds/dsperf-ha-{tag}"));
    let res = ha.try_run(|| -> Result<()> {
        let tun = Program::load(
            Kind::Tunnel,
            &LoadOptions {
                pin_dir: Some(pin.clone()),
                flow_capacity: Some(4096),
            },
        )?;
        struct Unpin<'a>(&'a Program);
        impl Drop for Unpin<'_> {
            fn drop(&mut self) {
                let _ = self.0.unpin();
            }
        }
        let unpin = Unpin(&tun);
        tun.set_config(&TunnelConfig {
            local: ip(HA),
            mode: TunnelMode::Fib,
            hop_limit: 64,
            mtu: 1500,
            learn: true,
        })?;
        tun.set_binding(ip(DS), ip(COA[0]))?;
        let idx = ds_xdp::loader::ifindex("h0")?;
        tun.attach(idx, ds_xdp::Mode::Native, false)?;
        let l = TcpListener::bind(SocketAddrV6::new(ip(HA), HA_PORT, 0, 0))?;
        drop(unpin);
        let mut agent = FlowAgent::new(tun, l, ClusterSecret::new(SECRET)?)?;
        let _ = ready.send(Ok(()));
        while !stop.load(Ordering::Relaxed) {
            agent.wait(Duration::from_millis(20));
            agent.poll();
        }
        tracing::info!(stats = ?agent.stats(), "home agent done");
        let _ = agent.program().unpin();
        let _ = ds_xdp::loader::detach(idx);
        Ok(())
    });
    match res {
        Ok(r) => r,
        Err(e) => Err(e),
    }
}

/// What a node reported: its handoff events (with the node's number, 1 or 2) and the
/// packets it forwarded after freezes.
pub(crate) struct NodeOut {
    pub(crate) events: Vec<(u8, NodeEvent)>,
    pub(crate) forwarded: u64,
    /// Summed over the node's queues: packets passed to a sibling queue, and Mobility
    /// Headers nothing expected.
    pub(crate) passed: u64,
    pub(crate) mobility_unexpected: u64,
}

/// What every node of one run is told: the options, the document root, the per-node quota
/// and how many handoffs each node starts (node 1 the odd ones, node 2 the even ones).
struct Plan<'a> {
    opts: &'a Options,
    root: &'a Path,
    quota: u64,
    max: [u64; 2],
    /// Unique to this run (pin paths).
    tag: &'a str,
}

/// The handoff settings of node `i` (0 or 1) common to both kinds of node: control listener,
/// peer, quota, drain, timeouts, mode, injected fault; steering and path are the caller's.
fn handoff_config(i: usize, plan: &Plan) -> Result<HandoffConfig> {
    let (opts, quota, max_handoffs) = (plan.opts, plan.quota, plan.max[i]);
    let mut hc = HandoffConfig::new(ClusterSecret::new(SECRET)?);
    hc.listen = Some(TcpListener::bind(SocketAddrV6::new(
        ip(CTL[i]),
        CTL_PORT,
        0,
        0,
    ))?);
    hc.peer = Some(SocketAddr::V6(SocketAddrV6::new(
        ip(CTL[1 - i]),
        CTL_PORT,
        0,
        0,
    )));
    hc.quota = (max_handoffs > 0).then_some(quota);
    hc.max_handoffs = Some(max_handoffs);
    hc.drain = match opts.drain {
        DrainChoice::Immediate => Drain::Immediate,
        DrainChoice::Acked => Drain::UntilAcked {
            deadline: opts.drain_deadline,
        },
    };
    hc.reply_timeout = opts.reply_timeout;
    hc.busy_poll = match opts.busy_poll {
        None => dserver::engine::BusyPoll::Off,
        Some(BusyPollChoice::Exchange) => dserver::engine::BusyPoll::Exchange,
        Some(BusyPollChoice::Handoff) => dserver::engine::BusyPoll::Handoff,
    };
    hc.steer_ahead = opts.steer_ahead;
    hc.mode = opts.mode;
    if i == 1 {
        hc.fault = opts.fault;
    }
    Ok(hc)
}

/// One node's thread: its namespace and index (0 or 1), the run's plan, the stop flag and
/// where to say it is up.
struct NodeTask<'a> {
    ns: &'a Netns,
    i: usize,
    plan: &'a Plan<'a>,
    stop: &'a AtomicBool,
    /// Set after each round while a handoff is queued or in flight here, or held packets are
    /// still forwarded: the runner stops the nodes only once both are clear.
    busy: &'a AtomicBool,
    ready: mpsc::Sender<Result<()>>,
}

/// Run a userspace node until `stop`.
fn node(t: NodeTask) -> Result<NodeOut> {
    let NodeTask {
        ns,
        i,
        plan,
        stop,
        busy,
        ready,
    } = t;
    let (opts, root) = (plan.opts, plan.root);
    let res = ns.try_run(|| -> Result<NodeOut> {
        let coa = ip(COA[i]);
        let ro = opts.mode == Mode::Ro;
        // Route-optimised: node 1 is the contact node, at home on the DS address; node 2
        // serves it only as a home address away from home (after a handoff).
        let role = ro.then(|| MobileRole::new(ip(DS), (i == 1).then_some(coa)));
        let mut hc = handoff_config(i, plan)?;
        match role {
            None => {
                hc.steering = Steering::HomeAgentFlow {
                    ha: SocketAddr::V6(SocketAddrV6::new(ip(HA), HA_PORT, 0, 0)),
                    coa,
                }
            }
            Some(r) => {
                // Both nodes speak for the home address: node 1 at home (it deregisters when a
                // connection comes back), node 2 away from home (Binding Updates).
                if i == 1 {
                    hc.takeover = ds_handoff::Takeover::HomeAddress;
                }
                hc.steering = Steering::RouteOptimised {
                    lifetime: Duration::from_secs(120),
                };
                hc.mobile_role = Some(r);
            }
        }
        let mut server = HttpServer::new(root, ServerConfig::default())?;
        server.set_handoff_quota(hc.quota);
        server.set_max_handoffs(hc.max_handoffs);
        // Route-optimised: node 1 is the contact node, at home on the DS address; node 2
        // serves it only as a home address away from home (after a handoff).
        let b = dserver::Node::builder()
            .device(dserver::Device::afxdp("n0"))
            .mac(MAC[i])
            .super_frames(!opts.no_super_frames)
            .engine(hc);
        let b = if ro && i == 1 {
            b.ds_addr(coa)
        } else {
            b.ds_addr(ip(DS)).care_of(coa)
        };
        let mut node = b.build()?;
        let _ = ready.send(Ok(()));
        let mut events = Vec::new();
        // Return routability is the nodes' own business: the contact node runs the home test
        // when a connection is to move, the acceptor the care-of test when the donor announces
        // the offer (its duration is phase 4).
        while !stop.load(Ordering::Relaxed) {
            let wait = if server.has_work() {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            };
            node.poll(wait)?;
            server.poll(&mut node);
            events.extend(
                server
                    .take_events()
                    .into_iter()
                    .filter_map(engine_event)
                    .map(|e| (i as u8 + 1, e)),
            );
            busy.store(node.handing_off(), Ordering::Relaxed);
        }
        tracing::info!(node = i + 1, stats = ?node.stats(), server = ?server.stats(), iface = ?node.interface_stats(), "node done");
        let iface = node.interface_stats();
        Ok(NodeOut {
            events,
            forwarded: node.stats().forwarded_packets,
            passed: iface.sibling_tx,
            mobility_unexpected: iface.mobility_unexpected,
        })
    });
    match res {
        Ok(r) => r,
        Err(e) => Err(e),
    }
}

/// A library node's event as the engine's, as the other kinds of node report them.
fn engine_event(e: dserver::Event) -> Option<NodeEvent> {
    use dserver::Event;
    Some(match e {
        Event::HandedOff {
            report,
            client,
            boundary_seq,
            ..
        } => NodeEvent::HandedOff {
            report: *report,
            client,
            boundary_seq,
        },
        Event::KeptHere { cause, .. } | Event::Lost { cause, .. } => NodeEvent::Failed { cause },
        Event::Declined { cause } => NodeEvent::Declined { cause },
        Event::Bound { client, after } => NodeEvent::Bound { client, after },
        Event::SteerRefused { client, detail } => NodeEvent::SteerRefused { client, detail },
        Event::Rebound { .. } => return None,
    })
}

/// Build the namespaces, run one download with `opts.count` handoffs, tear down.
pub fn run(opts: &Options) -> Result<Outcome> {
    if !crate::is_root() {
        bail!("dsperf handoff needs root (network namespaces, XDP, AF_XDP)");
    }
    if opts.mode == Mode::Ro && opts.path.has_kernel() {
        bail!("kernel-path nodes run in transparent mode only");
    }
    if opts.queues != 1 && (!opts.processes || opts.path.has_kernel()) {
        bail!("several queues per node: with processes, userspace nodes only (dsnode --queues)");
    }
    if opts.client_queue.is_some_and(|q| q >= opts.queues) {
        bail!("steering to a queue needs that many queues per node");
    }
    let quota = opts
        .quota
        .unwrap_or(opts.size / (opts.count as u64 + 1))
        .max(1);
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let dir = ds_testbed::TempDir::at(std::env::temp_dir().join(format!("dsperf-handoff-{tag}")))?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root)?;
    let want = make_object(&root, opts.size)?;
    let topo = setup(opts).context("building the namespaces")?;
    let got = dir.path().join("got");
    // Node 1 starts the odd handoffs, node 2 the even ones.
    let max = [opts.count.div_ceil(2) as u64, (opts.count / 2) as u64];
    let transparent = opts.mode == Mode::Transparent;
    let plan = Plan {
        opts,
        root: &root,
        quota,
        max,
        tag: &tag,
    };
    let (m, outs) = if opts.processes {
        let procs = processes::start(&topo, &plan, dir.path())?;
        let m = measure(&topo, opts, &got);
        if opts.steer_ahead && transparent {
            procs.wait_for_answers(Duration::from_secs(3));
        }
        let outs = procs.stop()?;
        (m?, outs)
    } else {
        in_threads(&topo, &plan, &got)?
    };
    let Measured {
        client,
        before,
        after,
        frames,
        seconds,
    } = m;
    let mut events = Vec::new();
    let (mut forwarded, mut passed, mut mobility_unexpected) = (0, 0, 0);
    for o in outs {
        events.extend(o.events);
        forwarded += o.forwarded;
        passed += o.passed;
        mobility_unexpected += o.mobility_unexpected;
    }
    let client = client?;
    let body = std::fs::read(&got).context("reading the download")?;
    let bytes_ok = <[u8; 32]>::from(Sha256::digest(&body)) == want;
    let d = |k: &str| {
        after
            .get(k)
            .unwrap_or(&0)
            .saturating_sub(*before.get(k).unwrap_or(&0))
    };
    let (client_retransmits, client_timeouts, client_resets) = match client {
        ClientCounters::Kernel => (
            d("TcpRetransSegs"),
            d("TcpExtTCPTimeouts"),
            d("TcpEstabResets") + d("TcpExtTCPAbortOnData"),
        ),
        ClientCounters::Stack {
            retransmits,
            rtos,
            reset,
        } => (retransmits, rtos, u64::from(reset)),
    };
    let log = sniff::data_from(&frames, ip(DS), 80);
    let (dup_segments, dup_octets) = sniff::duplicated(&log);
    let mut handoffs = Vec::new();
    let mut kept = Vec::new();
    // Binding acknowledgements per acceptor node, in order.
    let mut bounds: [std::collections::VecDeque<Result<Duration, String>>; 2] = Default::default();
    for (from, e) in events {
        match e {
            NodeEvent::HandedOff {
                mut report,
                boundary_seq,
                ..
            } => {
                report.client_gap_us = sniff::gap(&log, boundary_seq)
                    .map(|g| (g.as_nanos() as f64 / 1000.0 * 1000.0).round() / 1000.0);
                report.bytes_ok = Some(bytes_ok);
                handoffs.push((boundary_seq, from, report, None));
            }
            NodeEvent::KeptHere { cause, .. } | NodeEvent::Failed { cause } => {
                kept.push(format!("node {from}: {cause}"))
            }
            NodeEvent::Declined { cause } => kept.push(format!("node {from} declined: {cause}")),
            NodeEvent::Bound { after, .. } => bounds[usize::from(from == 2)].push_back(Ok(after)),
            NodeEvent::SteerRefused { detail, .. } => {
                bounds[usize::from(from == 2)].push_back(Err(detail))
            }
            _ => {}
        }
    }
    let bound = bounds.iter().flatten().any(Result::is_ok);
    let route = (!transparent).then(|| route_check(&frames, ip(CLIENT), ip(COA[1]), ip(DS), bound));
    // In sequence order (the boundaries increase along the download).
    let base = log.first().map(|s| s.seq).unwrap_or(0);
    handoffs.sort_by_key(|(b, _, _, _)| b.wrapping_sub(base));
    if !transparent || opts.steer_ahead {
        // The phase the donor cannot see: binding management (Binding Update to Binding
        // Acknowledgement, or a flow move steered ahead to the home agent's answer, measured
        // at the acceptor after it activated): the k-th handoff to a node pairs with that
        // node's k-th answer (applied, or not: then phase 6 stays 0 and the line says why).
        for (_, from, r, refused) in &mut handoffs {
            // Node 1 hands to node 2 (index 1), node 2 to node 1 (index 0).
            let acceptor = usize::from(*from == 1);
            match bounds[acceptor].pop_front() {
                Some(Ok(b)) => r.set_phase(ds_handoff::Phase::BindingManagement, b),
                Some(Err(why)) => *refused = Some(why),
                None => {}
            }
        }
    }
    // The retransmission counter cannot be split between handoffs; the first line carries
    // the run's total, the others 0, so the lines sum to it.
    let handoffs = handoffs
        .into_iter()
        .enumerate()
        .map(|(k, (_, from, mut report, steer_refused))| {
            report.client_retransmits = Some(if k == 0 { client_retransmits } else { 0 });
            HandoffLine {
                n: k as u32 + 1,
                from,
                report,
                steer_refused,
            }
        })
        .collect();
    Ok(Outcome {
        handoffs,
        kept,
        bytes_ok,
        bytes: body.len() as u64,
        client_retransmits,
        client_timeouts,
        client_resets,
        duplicate_segments: dup_segments,
        duplicate_octets: dup_octets,
        forwarded_packets: forwarded,
        passed_between_queues: passed,
        mobility_unexpected,
        seconds,
        route,
    })
}

/// What the client saw of one download.
struct Measured {
    client: Result<ClientCounters>,
    before: std::collections::HashMap<String, u64>,
    after: std::collections::HashMap<String, u64>,
    frames: Vec<sniff::Frame>,
    seconds: f64,
}

/// Run the client's download with the nodes up: its counters before and after, the capture on
/// its link.
fn measure(topo: &Topology, opts: &Options, got: &Path) -> Result<Measured> {
    let before = tcp_counters(&topo.client)?;
    // Capture on the bridge's port towards the client: both directions of its traffic.
    let sniffer = topo.lan.try_run(|| sniff::Sniffer::start("lc"))??;
    let t0 = Instant::now();
    let client = if opts.mode == Mode::Transparent {
        curl(&topo.client, opts, got)
    } else {
        stack_client(&topo.client, opts, got)
    };
    let seconds = t0.elapsed().as_secs_f64();
    // Let the last handoff's reports and forwarding finish.
    std::thread::sleep(Duration::from_millis(300));
    let frames = sniffer.stop()?;
    let after = tcp_counters(&topo.client)?;
    Ok(Measured {
        client,
        before,
        after,
        frames,
        seconds,
    })
}

/// How long the runner waits, after the download, for handoffs still in flight to end.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// The nodes and the home agent as threads of this process (library calls, as a user's
/// program makes them), around one measured download.
fn in_threads(topo: &Topology, plan: &Plan, got: &Path) -> Result<(Measured, Vec<NodeOut>)> {
    let (opts, tag) = (plan.opts, plan.tag);
    let stop = AtomicBool::new(false);
    let busy = [AtomicBool::new(false), AtomicBool::new(false)];
    std::thread::scope(|sc| -> Result<(Measured, Vec<NodeOut>)> {
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop_guard = StopOnDrop(&stop);
        let (tx, rx) = mpsc::channel();
        let transparent = opts.mode == Mode::Transparent;
        let ha = transparent.then(|| {
            let tx = tx.clone();
            let (ha, stop) = (&topo.ha, &stop);
            sc.spawn(move || home_agent(ha, tag, stop, tx))
        });
        let mut nodes = Vec::new();
        for (i, ns) in topo.nodes.iter().enumerate() {
            let tx = tx.clone();
            let stop = &stop;
            let task = NodeTask {
                ns,
                i,
                plan,
                stop,
                busy: &busy[i],
                ready: tx,
            };
            nodes.push(sc.spawn(move || match opts.path.side(i) {
                Side::User => node(task),
                Side::Kernel => kernel::node(task),
            }));
        }
        for _ in 0..(2 + usize::from(transparent)) {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(r) => r?,
                Err(_) => bail!("a node or the home agent did not start"),
            }
        }
        let m = measure(topo, opts, got);
        // The donor reports a handoff once the acceptor confirmed it, which on a loaded
        // machine can come after the client finished: stop only when both nodes are clear
        // (bounded: a node stuck in a handoff reports what it has at the deadline).
        let until = Instant::now() + SETTLE_MAX;
        while busy.iter().any(|b| b.load(Ordering::Relaxed)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let mut outs = Vec::new();
        for n in nodes {
            outs.push(
                n.join()
                    .map_err(|_| anyhow::anyhow!("node thread panicked"))??,
            );
        }
        if let Some(ha) = ha {
            ha.join()
                .map_err(|_| anyhow::anyhow!("home agent thread panicked"))??;
        }
        Ok((m?, outs))
    })
}

/// What the client's own counters say (kernel clients are read from the namespace).
pub(crate) enum ClientCounters {
    Kernel,
    Stack {
        retransmits: u64,
        rtos: u64,
        reset: bool,
    },
}

/// Download with curl (kernel TCP) into `got`.
fn curl(ns: &Netns, opts: &Options, got: &Path) -> Result<ClientCounters> {
    let url = format!("http://[{DS}]:80/obj");
    let out = ns
        .command("curl")
        .args(["-sS", "-g", "--http1.1", "--max-time"])
        .arg(opts.timeout.as_secs().to_string())
        .arg("-o")
        .arg(got)
        .arg(&url)
        .output()
        .context("running curl (apt-get install curl)")?;
    if !out.status.success() {
        bail!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ClientCounters::Kernel)
}

/// Download with an HTTP/1.1 client on our stack (over AF_XDP on c0: a Mobile IPv6
/// correspondent node) into `got` (the body only).
fn stack_client(ns: &Netns, opts: &Options, got: &Path) -> Result<ClientCounters> {
    let c = StackClient {
        ifname: "c0".into(),
        me: ip(CLIENT),
        mac: [0x02, 0xd5, 0, 0, 0, 0x0c],
        gateway: None,
        routes: Vec::new(),
        neighbours: Vec::new(),
        server: SocketAddrV6::new(ip(DS), 80, 0, 0),
        path: "/obj".into(),
        timeout: opts.timeout,
        record: false,
        local_port: 0,
    };
    Ok(c.get(ns, got)?.counters)
}

/// What [`StackClient::get`] saw.
pub(crate) struct Fetched {
    /// The client's counters.
    pub counters: ClientCounters,
    /// Its frames, when recording.
    pub frames: Vec<sniff::Frame>,
    /// From the connection attempt to the end of the response (no device setup, no close).
    pub took: Duration,
}

/// A client on our stack over AF_XDP (a Mobile IPv6 correspondent node, RFC 6275 §9) that
/// fetches one object with HTTP/1.1.
pub(crate) struct StackClient {
    /// Its interface.
    pub ifname: String,
    /// Its address.
    pub me: Ipv6Addr,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Default router (`None`: every destination not routed is on the link).
    pub gateway: Option<Ipv6Addr>,
    /// More-specific routes.
    pub routes: Vec<ds_stack::Route>,
    /// Neighbours known ahead (its routers): no address resolution on the timed path.
    pub neighbours: Vec<(Ipv6Addr, [u8; 6])>,
    /// The server.
    pub server: SocketAddrV6,
    /// The object's path.
    pub path: String,
    /// Give up after this long.
    pub timeout: Duration,
    /// Log every frame the stack passes (see [`sniff::Recording`]).
    pub record: bool,
    /// Its TCP port (0: an ephemeral one, RFC 6056 §3.3.2).
    pub local_port: u16,
}

impl StackClient {
    /// Fetch the object into `got` (the body only), from inside `ns`: the client's counters
    /// and, when recording, its frames.
    pub(crate) fn get(&self, ns: &Netns, got: &Path) -> Result<Fetched> {
        ns.try_run(|| self.get_here(got))?
    }

    fn get_here(&self, got: &Path) -> Result<Fetched> {
        let me = self.me;
        let dev = AfXdpDevice::open(&self.ifname, &AfXdpConfig::new(vec![me]))?;
        let mut cfg = Config::new(self.mac, vec![me]);
        cfg.gateway = self.gateway;
        cfg.routes = self.routes.clone();
        let mut rt = Runner::new(
            sniff::Recording::new(dev, self.record),
            Interface::new(cfg, ds_stack::Instant::ZERO),
        );
        let now = rt.now();
        rt.iface.announce(now);
        for &(ip, mac) in &self.neighbours {
            rt.iface.add_neighbour(now, ip, mac);
        }
        let h = rt
            .iface
            .tcp_connect(
                now,
                SocketAddrV6::new(me, self.local_port, 0, 0),
                self.server,
            )
            .map_err(|e| anyhow::anyhow!("connect: {e:?}"))?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: [{}]\r\nConnection: close\r\n\r\n",
            self.path,
            self.server.ip()
        );
        let mut sent = 0;
        let mut resp = Vec::new();
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        let reset = loop {
            if t0.elapsed() > self.timeout {
                bail!(
                    "stack client: timed out after {} bytes ({:?}; {:?})",
                    resp.len(),
                    rt.iface.tcp_state(h),
                    rt.iface.stats()
                );
            }
            rt.step(Duration::from_millis(1))?;
            match rt.iface.tcp_state(h) {
                Some(ds_stack::TcpState::Established) | Some(ds_stack::TcpState::CloseWait)
                    if sent < req.len() =>
                {
                    sent += rt.iface.tcp_send(h, &req.as_bytes()[sent..]).unwrap_or(0);
                }
                None | Some(ds_stack::TcpState::Closed) => break true,
                _ => {}
            }
            loop {
                match rt.iface.tcp_recv(h, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => resp.extend_from_slice(&buf[..n]),
                    Err(ds_stack::Error::Eof) => break,
                    Err(_) => break,
                }
            }
            if matches!(rt.iface.tcp_state(h), Some(ds_stack::TcpState::CloseWait)) {
                let _ = rt.iface.tcp_close(h);
                break false;
            }
        };
        let took = t0.elapsed();
        // Let the close finish (our FIN acknowledged), best effort.
        let _ = rt.run_until(Duration::from_millis(200), |i| {
            !matches!(i.tcp_state(h), Some(ds_stack::TcpState::LastAck))
        });
        let head_end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("stack client: no HTTP response head"))?;
        if !resp.starts_with(b"HTTP/1.1 200") {
            bail!(
                "stack client: {}",
                String::from_utf8_lossy(&resp[..head_end])
            );
        }
        std::fs::write(got, &resp[head_end + 4..])?;
        let st = rt.iface.stats();
        let frames = rt.dev.take();
        Ok(Fetched {
            counters: ClientCounters::Stack {
                retransmits: st.tcp_retransmits,
                rtos: st.tcp_rto,
                reset,
            },
            frames,
            took,
        })
    }
}

/// Route optimisation as seen on the client's link.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct RouteCheck {
    /// The client's Binding Acknowledgement arrived at node 2.
    pub bound: bool,
    /// Client → node 2's care-of address with a type 2 routing header (TCP).
    pub client_to_coa_rh2: u64,
    /// Node 2 → client with a Home Address option (TCP).
    pub coa_to_client_hao: u64,
    /// Client TCP packets to the DS address after its first packet to the care-of address.
    pub client_to_ds_after: u64,
}

/// Route optimisation in a capture of client `me`'s link: its packets to the acceptor's
/// care-of address `coa2` (with a type 2 routing header), the acceptor's to it from `home`
/// (with a Home Address option), its packets to `home` after it switched.
pub(crate) fn route_check(
    frames: &[sniff::Frame],
    me: Ipv6Addr,
    coa2: Ipv6Addr,
    home: Ipv6Addr,
    bound: bool,
) -> RouteCheck {
    let first = frames
        .iter()
        .position(|f| f.tcp.is_some() && f.src == me && f.dst == coa2 && f.rh2);
    let mut r = RouteCheck {
        bound,
        ..Default::default()
    };
    for (k, f) in frames.iter().enumerate() {
        if f.tcp.is_none() {
            continue;
        }
        if f.src == me && f.dst == coa2 && f.rh2 {
            r.client_to_coa_rh2 += 1;
        }
        if f.dst == me && f.hao && f.src == home {
            r.coa_to_client_hao += 1;
        }
        if f.src == me && f.dst == home && first.is_some_and(|i| k > i) {
            r.client_to_ds_after += 1;
        }
    }
    r
}
