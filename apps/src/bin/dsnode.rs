//! `dsnode`: a Distributed Servers node. It runs the HTTP/1.1 content service on the
//! userspace TCP/IPv6 stack over a TAP device or AF_XDP (`ds-xdp`), or on the kernel's own
//! sockets (`--device kernel`), and, with the handoff options, hands live connections to a
//! peer node and takes them from it (`ds_apps::server::HttpServer` on the library's
//! `dserver::Node`, `ds_apps::kernel_node::KernelNode`: one engine, either host). Each handoff it completes as
//! the donor is one JSON line on stdout; logs go to stderr.

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ds_apps::control::ControlSocket;
use ds_apps::http::HttpStats;
use ds_apps::kernel_node::KernelNode;
use ds_apps::logging::Verbosity;
use ds_apps::mac::parse_mac;
use ds_apps::server::{ConnInfo, HttpServer, ServerConfig, ServerStats};
use ds_apps::signal;
use ds_stack::mobile::MobileRole;
use ds_stack::{Duration, Stats};
use dserver::engine::{AcceptorFault, BusyPoll, HandoffConfig, NodeEvent, Steering};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Distributed Servers node daemon.
#[derive(Parser, Debug)]
#[command(
    name = "dsnode",
    version,
    about = "Distributed Servers node daemon",
    long_about = None,
    // Options from `--config` come first; the command line's own override them.
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve files over HTTP/1.1 with the userspace TCP/IPv6 stack until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceKind {
    /// A Linux TAP device (created in the current network namespace if missing).
    Tap,
    /// AF_XDP sockets on the interface's queues, behind the XDP steering program (packets for
    /// `--addr` go to the stack, everything else to the kernel).
    Afxdp,
    /// The kernel's TCP: standard sockets, moved with `TCP_REPAIR`. The addresses must be
    /// configured on the host already (e.g. the care-of address on the interface, the DS
    /// address on `lo`); the XDP steering program on `--iface` decapsulates the home agent's
    /// tunnel and holds the packets of connections being moved.
    Kernel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SteeringChoice {
    /// No steering of moved flows (the address announcement is all).
    None,
    /// The XDP home agent tunnels each flow to its node (`--ha-control`); clients need no
    /// Mobile IPv6.
    Transparent,
    /// Mobile IPv6 route optimisation (RFC 6275): the client is a correspondent node; the
    /// node serving `--home-addr` at home runs the home test, the others send Binding Updates.
    Ro,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    /// Every client stays on the node it reached.
    Local,
    /// This node, then the peer, in turn.
    RoundRobin,
    /// The node serving the fewest connections (loads reported through the membership).
    LeastConnections,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Read the settings from this TOML file (each key is the option of the same name, e.g.
    /// `also_addr` for --also-addr; handoff options under `[handoff]`); options on the command
    /// line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The link device that carries the stack's Ethernet frames.
    #[arg(long, value_enum)]
    device: DeviceKind,
    /// Name of the network interface (for `tap`: the TAP device to create or attach to; for
    /// `afxdp`: an existing interface. On a physical NIC pass its own address as `--mac`,
    /// since the NIC filters other unicast MACs).
    #[arg(long, value_name = "IF")]
    iface: String,
    /// The node's IPv6 address.
    #[arg(long, value_name = "ADDR")]
    addr: Ipv6Addr,
    /// TCP port to listen on.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Directory whose files are served.
    #[arg(long, value_name = "DIR", required_unless_present = "backend")]
    root: Option<PathBuf>,
    /// Proxy mode: relay each client to this unmodified server on this machine (kernel TCP),
    /// instead of serving files. The policy picks the node that serves a client.
    #[arg(long, value_name = "[ADDR]:PORT", conflicts_with = "root")]
    backend: Option<SocketAddr>,
    /// Proxy mode: which node serves a new client, from its first request.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Local, requires = "backend")]
    policy: PolicyChoice,
    /// Proxy mode: ask the policy again for every later request of a keep-alive connection,
    /// between two exchanges (the connection moves there with the request; its backend
    /// connection here is closed).
    #[arg(long, requires = "backend")]
    per_request: bool,
    /// The stack's MAC address [default: locally administered, derived from --addr].
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    mac: Option<[u8; 6]>,
    /// The userspace stack's default router: clients off the node's link are reached through
    /// it (a node behind its home agent's router, as in the seed's testbed). Default: every
    /// destination is on the link. Kernel sockets (`--device kernel`) use the kernel's routes.
    #[arg(long, value_name = "ADDR")]
    gateway: Option<Ipv6Addr>,
    /// A route of the userspace stack, `PREFIX/LEN=ROUTER` (e.g. `fd00:5d:2::/64=fd00:5d::2`):
    /// destinations in the prefix are reached through that router, longest prefix first,
    /// before --gateway. Repeat for more. Kernel sockets use the kernel's routes.
    #[arg(long = "route", value_name = "PREFIX/LEN=ROUTER")]
    routes: Vec<ds_stack::iface::Route>,
    /// On exit, print the statistics as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also answer UDP echo on this port (the seed's access-latency service): on the DS
    /// address (the first --also-addr) when there is one, else on --addr. Userspace stack only.
    #[arg(long, value_name = "PORT")]
    udp_echo: Option<u16>,
    /// Serve each of the AF_XDP device's first N receive queues with its own stack and
    /// handoff engine on its own thread (shared-nothing; a segment that reaches another queue
    /// than its connection's is passed round; the control port is shared). 0: every receive
    /// queue of the interface. `dsctl` sees the queues as one node. With `--steering ro` the
    /// first queue adopts every connection handed here (one mobile role holds the bindings).
    #[arg(long, default_value_t = 1, value_name = "N")]
    queues: u32,
    /// Pin each queue's thread to a CPU: queue i's to the i-th of this comma-separated list,
    /// as many CPUs as queues (say, the cores that the NIC queues' interrupts go to). With one
    /// queue, the serving thread. Without it the scheduler places the threads. With
    /// --sched-fifo a pinned thread cannot be moved off a busy core, and a spinning one
    /// (--busy-poll) holds off that core's softirq work.
    #[arg(long, value_name = "CPU,...", value_delimiter = ',')]
    queue_cpus: Vec<usize>,
    /// AF_XDP: send one frame per TCP segment through the AF_XDP ring instead of super-frames
    /// of up to 64 KiB that the kernel segments (for a driver that mishandles the packet
    /// socket's segmentation requests, or to measure what super-frames bring).
    #[arg(long)]
    no_super_frames: bool,
    /// Listen for `dsctl` on this Unix socket (made owner-only, mode 0600).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// A request head must arrive whole within this many milliseconds of its first byte
    /// (then 408 and close), however slowly it trickles in.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// A response that makes no progress this many milliseconds (the client reads nothing)
    /// is aborted.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    stall_timeout_ms: u64,
    /// Connections served at once; more are answered 503 (past twice as many: reset).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// MiB queued in TCP send buffers over all connections: at the limit no file data goes
    /// out until clients acknowledge, and new clients are answered 503.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    max_buffered_mib: usize,
    /// Keep up to N files open between requests (per queue), so that a request for one
    /// costs a read and no open; 0: off, as nginx's `open_file_cache` is by default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    open_file_cache: usize,
    /// A cached file is served from its open handle this many milliseconds, then opened by
    /// name again: a file replaced meanwhile is served as it was until then (0: no cache).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    open_file_cache_valid_ms: u64,
    #[command(flatten)]
    sched: ds_apps::sched::SchedArgs,
    #[command(flatten)]
    handoff: HandoffArgs,
    #[command(flatten)]
    membership: MembershipArgs,
}

/// Membership (seed §2.3): join the distributed server through the home agent, as a backup
/// (may become the contact node, which holds the DS address) or an snode. `--role` turns it
/// on and needs the other two and --secret-file.
#[derive(Args, Debug)]
#[command(next_help_heading = "Membership")]
struct MembershipArgs {
    /// Join as a backup (may become the contact) or as an snode (serves, never the contact).
    #[arg(long, value_enum, requires_all = ["members_listen", "members_ha", "secret_file"])]
    role: Option<RoleChoice>,
    /// This node's membership endpoint (UDP, on a kernel address of the node).
    #[arg(long, value_name = "[ADDR]:PORT", requires = "role")]
    members_listen: Option<SocketAddr>,
    /// The home agent's membership endpoint (`dsha xdp --members`).
    #[arg(long, value_name = "[ADDR]:PORT", requires = "role")]
    members_ha: Option<SocketAddr>,
    /// How the contact node is elected: the seed's protocol among the backups (two-phase
    /// commit, heartbeats), or etcd's lease and election (needs --etcd).
    #[arg(long, value_enum, default_value_t = ElectionChoice::Native, requires = "role")]
    election: ElectionChoice,
    /// An etcd client URL, e.g. `http://[fd00::a]:2379` (repeat for several).
    #[arg(long, value_name = "URL")]
    etcd: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ElectionChoice {
    /// The seed's protocol (§2.3.1) with fencing epochs.
    Native,
    /// etcd's lease and election (the build's `etcd` feature).
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RoleChoice {
    /// May become the contact node.
    Backup,
    /// Serves, never the contact node.
    Snode,
}

/// The membership thread, when --role is given (read by `dsctl members`).
static MEMBERSHIP: std::sync::OnceLock<ds_apps::membership::MembershipAgent> =
    std::sync::OnceLock::new();

/// The membership's fence for the handoff engine (none without --role).
fn membership_fence() -> Option<ds_handoff::Fence> {
    MEMBERSHIP.get().map(|m| m.fence())
}

/// The HTTP server's limits from the options.
fn server_config(args: &ServeArgs) -> ServerConfig {
    ServerConfig {
        header_timeout: Duration::from_millis(args.header_timeout_ms),
        stall_timeout: Duration::from_millis(args.stall_timeout_ms),
        max_connections: args.max_connections.max(1),
        max_buffered: args.max_buffered_mib.max(1).saturating_mul(1 << 20),
        open_file_cache: ds_apps::http::OpenFileCache {
            max: args.open_file_cache,
            valid: Duration::from_millis(args.open_file_cache_valid_ms),
        },
        ..ServerConfig::default()
    }
}

/// Descriptors a node needs beside its open-file cache's: sockets, the device, control
/// channels, logs.
const OWN_FILES: u64 = 1024;

/// `--open-file-cache N` keeps up to N files open per queue: raise the open-file limit for
/// them (root may), or refuse to start rather than fail requests once it is reached.
fn check_open_files(args: &ServeArgs) -> anyhow::Result<()> {
    let cache = server_config(args).open_file_cache;
    if !cache.is_on() {
        return Ok(());
    }
    // `--queues 0` (every queue of the device) is not resolved yet: at most one per CPU.
    let queues = match args.queues {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        q => u64::from(q),
    };
    let need = (cache.max as u64)
        .saturating_mul(queues)
        .saturating_add(OWN_FILES);
    let limit = ds_apps::sched::raise_nofile(need).context("raising the open-file limit")?;
    if limit < need {
        bail!(
            "--open-file-cache {}: {queues} queue(s) keep up to {} files open, and the node \
             needs ~{OWN_FILES} descriptors more; the open-file limit is {limit} (raise it: \
             ulimit -n, LimitNOFILE=, or run as root)",
            cache.max,
            (cache.max as u64).saturating_mul(queues)
        );
    }
    Ok(())
}

/// Start the membership thread for --role.
fn start_membership(args: &ServeArgs) -> anyhow::Result<()> {
    let m = &args.membership;
    let (Some(role), Some(listen), Some(ha)) = (m.role, m.members_listen, m.members_ha) else {
        return Ok(());
    };
    let path = args
        .handoff
        .secret_file
        .as_deref()
        .context("--role needs --secret-file")?;
    let secret = read_secret(path)?;
    if let Some(cl) = args.handoff.control_listen.filter(|cl| *cl != listen) {
        // Members find each other's handoff listeners at their membership endpoints.
        bail!("--control-listen {cl} must equal --members-listen {listen} (same address and port)");
    }
    let mcfg = ds_apps::membership::MembershipConfig {
        role: match role {
            RoleChoice::Backup => ds_membership::Role::Backup,
            RoleChoice::Snode => ds_membership::Role::Snode,
        },
        listen,
        home_agent: ha,
        coa: args.addr,
        secret: secret.expose().to_vec(),
    };
    let agent = match m.election {
        ElectionChoice::Native => ds_apps::membership::MembershipAgent::start(mcfg),
        #[cfg(feature = "etcd")]
        ElectionChoice::Etcd => {
            if m.etcd.is_empty() {
                bail!("--election etcd needs --etcd URL");
            }
            ds_apps::membership::MembershipAgent::start_etcd(mcfg, m.etcd.clone())
        }
        #[cfg(not(feature = "etcd"))]
        ElectionChoice::Etcd => bail!("this dsnode was built without the etcd feature"),
    }
    .with_context(|| format!("--members-listen {listen}: cannot bind"))?;
    let _ = MEMBERSHIP.set(agent);
    Ok(())
}

/// Live handoff to and from a peer node. Any of `--control-listen`, `--peer` or
/// `--ha-control` turns it on; all of them need `--secret-file`.
#[derive(Args, Debug)]
#[command(next_help_heading = "Handoff")]
struct HandoffArgs {
    /// More addresses the stack owns besides --addr, e.g. the DS address that clients connect
    /// to (--addr is then this node's own, care-of, address). With it, the HTTP service listens
    /// on all the stack's addresses. Repeat for several.
    #[arg(long, value_name = "DS_ADDR")]
    also_addr: Vec<Ipv6Addr>,
    /// Accept connections handed off by the peer on this kernel TCP address.
    #[arg(long, value_name = "[ADDR]:PORT", requires = "secret_file")]
    control_listen: Option<SocketAddr>,
    /// Hand connections off to the peer node listening here; repeat the option for several.
    /// The file server hands its connections to them in turn (one whose channel is down or
    /// backing off is skipped); proxy mode's policy spreads clients over them. A drain's
    /// rebind (--peer-coa) names the first.
    #[arg(long, value_name = "[ADDR]:PORT", requires = "secret_file")]
    peer: Vec<SocketAddr>,
    /// File holding the cluster secret (at least 16 bytes) keying the control channels.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// The peer's care-of address: a drain (`dsctl drain`) asks the home agent to send new
    /// clients there before this node stops accepting (transparent steering).
    #[arg(long, value_name = "ADDR", requires = "peer")]
    peer_coa: Option<Ipv6Addr>,
    /// Hand a connection off once it sent this many response bytes (headers included) here.
    #[arg(long, value_name = "BYTES", requires = "peer")]
    handoff_after: Option<u64>,
    /// Stop starting handoffs after this many (counted over all of `--queues`' queues).
    #[arg(long, value_name = "N")]
    max_handoffs: Option<u64>,
    /// What the donor does before it freezes the connection.
    #[arg(long, value_enum, default_value_t = DrainChoice::Acked)]
    drain: DrainChoice,
    /// Longest wait of `--drain acked` and `adaptive`, and the wait of `--drain wait`,
    /// milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    drain_deadline_ms: u64,
    /// The donor's wait for each reply of the acceptor before it keeps the connection,
    /// milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    reply_timeout_ms: u64,
    /// Transparent steering: when a connection arrives here, ask the XDP home agent's flow
    /// agent at this address to tunnel its flow to --addr (this node's care-of address).
    #[arg(long, value_name = "[ADDR]:PORT", requires = "secret_file")]
    ha_control: Option<SocketAddr>,
    /// How moved flows are steered to their new node [default: transparent with
    /// --ha-control, none otherwise].
    #[arg(long, value_enum)]
    steering: Option<SteeringChoice>,
    /// Route-optimised steering: the DS address as a Mobile IPv6 home address. With it among
    /// this node's addresses (--also-addr) the node is at home (the contact node); otherwise it
    /// serves it away from home, --addr being its care-of address.
    #[arg(long, value_name = "ADDR")]
    home_addr: Option<Ipv6Addr>,
    /// Busy-poll while a handoff is in flight instead of sleeping between events, so each
    /// step is taken without a wake-up. `handoff` (the bare flag): the donor from its drain
    /// to the reply, the acceptor from the donor's Prepare to the activation; `exchange`:
    /// only the offer's round trip (the donor from the offer to the reply, the acceptor from
    /// accepting to activating), for nodes that share cores with clients or each other.
    /// Costs a core while it spins; an idle node still sleeps.
    #[arg(long, value_enum, value_name = "SCOPE", num_args = 0..=1, require_equals = true,
          default_missing_value = "handoff")]
    busy_poll: Option<BusyPollChoice>,
    /// Transparent mode: as acceptor, commit a handoff as soon as the flow move is sent to the
    /// home agent instead of after its answer (two process wake-ups fewer in the handoff); the
    /// donor forwards what still reaches it until the answer is relayed. A move the home
    /// agent then never applies leaves the connection on the donor's forwarding (32 s at
    /// most) instead of sending it back to the donor.
    #[arg(long)]
    steer_ahead: bool,
    /// Injected fault at the acceptor, for failure tests: refuse, crash or hang on offers.
    #[arg(long, value_enum, hide = true)]
    fault: Option<FaultChoice>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BusyPollChoice {
    /// Only the offer's round trip.
    Exchange,
    /// The whole handoff, from the drain.
    Handoff,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FaultChoice {
    Refuse,
    Crash,
    Hang,
}

impl HandoffArgs {
    fn enabled(&self) -> bool {
        self.control_listen.is_some() || !self.peer.is_empty() || self.ha_control.is_some()
    }

    fn steering(&self) -> SteeringChoice {
        self.steering.unwrap_or(if self.ha_control.is_some() {
            SteeringChoice::Transparent
        } else {
            SteeringChoice::None
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DrainChoice {
    /// Freeze at once; unacknowledged and unsent data travel in the state.
    Immediate,
    /// Wait until everything sent is acknowledged (at most --drain-deadline-ms).
    Acked,
    /// Wait --drain-deadline-ms, then freeze whatever is left (the seed's §3.2.3 experiment).
    Wait,
    /// As acked, but freeze at once when the client's rate of acknowledgements shows the
    /// rest cannot drain within --drain-deadline-ms.
    Adaptive,
}

fn main() -> ExitCode {
    let argv = match with_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dsnode: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    cli.log.init();
    let res = match cli.command {
        Command::Serve(args) => serve(&args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsnode: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dsnode serve … --config FILE …`: the file's options go right after `serve`, so that the
/// command line's own come later and override them.
fn with_config(argv: Vec<String>) -> Result<Vec<String>, ds_apps::config::ConfigError> {
    let Some(serve) = argv.iter().position(|a| a == "serve") else {
        return Ok(argv);
    };
    let path = argv[serve..].iter().enumerate().find_map(|(k, a)| {
        a.strip_prefix("--config=").map(str::to_string).or_else(|| {
            (a == "--config")
                .then(|| argv.get(serve + k + 1).cloned())
                .flatten()
        })
    });
    let Some(path) = path else {
        return Ok(argv);
    };
    let mut from_file = ds_apps::config::serve_args(Path::new(&path))?;
    // A repeatable option (clap's Append) adds up rather than overrides: when the command line
    // gives it, the file's are dropped, as for every other option.
    let given = |flag: &str| {
        argv[serve + 1..]
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    for flag in ["--also-addr", "--route", "--peer", "--etcd", "--queue-cpus"] {
        if !given(flag) {
            continue;
        }
        let mut kept = Vec::with_capacity(from_file.len());
        let mut it = from_file.into_iter();
        while let Some(a) = it.next() {
            if a == flag {
                it.next();
            } else {
                kept.push(a);
            }
        }
        from_file = kept;
    }
    let mut out = argv[..=serve].to_vec();
    out.extend(from_file);
    out.extend_from_slice(&argv[serve + 1..]);
    Ok(out)
}

/// `--queue-cpus`, checked before anything is touched: one CPU per queue (`--queues 0`, every
/// queue: checked once the device says how many), each one this process may run on (a CPU
/// outside a `taskset` mask would be refused only in its queue's thread, after the device
/// opened; a cgroup's cpuset the kernel enforces either way).
fn check_queue_cpus(args: &ServeArgs) -> anyhow::Result<()> {
    if args.queue_cpus.is_empty() {
        return Ok(());
    }
    if args.backend.is_some() {
        bail!("--queue-cpus pins the file server's queues: not with --backend");
    }
    if args.queues != 0 && args.queue_cpus.len() != args.queues as usize {
        bail!(
            "--queue-cpus names {} CPUs for {} queue(s)",
            args.queue_cpus.len(),
            args.queues
        );
    }
    let allowed = ds_apps::sched::allowed_cpus().context("--queue-cpus")?;
    if let Some(c) = args.queue_cpus.iter().find(|c| !allowed.contains(c)) {
        bail!("--queue-cpus: CPU {c} is not among those this process may use, {allowed:?}");
    }
    Ok(())
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let addr = args.addr;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        bail!("--addr {addr}: need a unicast address");
    }
    for a in &args.handoff.also_addr {
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || *a == addr {
            bail!("--also-addr {a}: need a unicast address other than --addr");
        }
    }
    if let Some(root) = args.root.as_deref().filter(|r| !r.is_dir()) {
        bail!("--root {}: not a directory", root.display());
    }
    check_queue_cpus(args)?;
    // Parse the handoff settings (secret, sockets) before touching any device, so a bad
    // option fails without side effects. (Proxy mode: the library checks them.)
    let handoff = match args.backend {
        None => handoff_config(args)?,
        Some(_) => None,
    };
    let control = args
        .control_socket
        .as_deref()
        .map(|p| {
            ControlSocket::bind(p)
                .with_context(|| format!("--control-socket {}: cannot listen", p.display()))
        })
        .transpose()?;
    // Before any thread starts: they inherit the policy.
    args.sched.apply()?;
    let stop = signal::install().context("installing signal handlers")?;
    start_membership(args)?;
    if let Some(backend) = args.backend {
        return run_proxy(args, backend, control, stop);
    }
    let root = args.root.as_deref().context("--root is required")?;
    check_open_files(args)?;
    if args.queues != 1 {
        if !matches!(args.device, DeviceKind::Afxdp) {
            bail!("--queues needs --device afxdp");
        }
        return run_queues(args, root, handoff, control, stop);
    }
    if let Some(&cpu) = args.queue_cpus.first() {
        ds_apps::sched::pin_to_cpu(cpu).context("--queue-cpus")?;
    }
    match args.device {
        DeviceKind::Kernel if args.udp_echo.is_some() => {
            bail!("--udp-echo needs the userspace stack (--device afxdp or tap)")
        }
        DeviceKind::Kernel => run_kernel(args, root, handoff, control, stop),
        DeviceKind::Afxdp | DeviceKind::Tap => {
            let node = node_builder(args, handoff)?
                .backlog(server_config(args).backlog)
                .build()
                .with_context(|| {
                    format!(
                        "cannot open the {} device {:?} (needs root; AF_XDP: an existing \
                     interface and no other XDP program attached)",
                        device_name(args.device),
                        args.iface
                    )
                })?;
            run(node, args, root, control, None, stop)
        }
    }
}

/// The library's node on the userspace stack per the options: `--addr` alone is the DS
/// address; with `--also-addr`, the first of those is the (shared) DS address and `--addr`
/// this node's care-of address.
fn node_builder(
    args: &ServeArgs,
    handoff: Option<HandoffConfig>,
) -> anyhow::Result<dserver::Builder> {
    let device = match args.device {
        DeviceKind::Afxdp => dserver::Device::afxdp(&args.iface),
        DeviceKind::Tap => dserver::Device::tap(&args.iface),
        DeviceKind::Kernel => bail!("this needs the userspace stack (--device afxdp or tap)"),
    };
    let mut b = dserver::Node::builder().device(device).port(args.port);
    b = match args.handoff.also_addr.split_first() {
        Some((ds, more)) => more
            .iter()
            .fold(b.ds_addr(*ds).care_of(args.addr), |b, a| b.also_addr(*a)),
        None => b.ds_addr(args.addr),
    };
    if let Some(m) = args.mac {
        b = b.mac(m);
    }
    if let Some(g) = args.gateway {
        b = b.gateway(g);
    }
    for r in &args.routes {
        b = b.route(*r);
    }
    b = b.super_frames(!args.no_super_frames);
    if let Some(cfg) = handoff {
        b = b.engine(cfg);
    }
    Ok(b)
}

/// `--queues`: one stack per receive queue, each on its own thread, passing each other what
/// arrives on the wrong queue (`ds_stack::runner::siblings`); they share the ISN and SYN
/// cookie key, so any of them checks another's cookie. Each queue's node has its own handoff
/// engine (`handoff` is the first's; the others bind the same control port, `SO_REUSEPORT`,
/// except route-optimised, where only the first takes offers).
/// This thread answers the control socket, asking every queue and merging their answers.
fn run_queues(
    args: &ServeArgs,
    root: &Path,
    handoff: Option<HandoffConfig>,
    mut control: Option<ControlSocket>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let devs = node_builder(args, None)?
        .queue_count(args.queues as usize)
        .open_queues()
        .with_context(|| {
            format!(
                "cannot open AF_XDP on {:?} (needs root, an existing interface with --queues \
                 receive queues, and no other XDP program attached)",
                args.iface
            )
        })?;
    if !args.queue_cpus.is_empty() && args.queue_cpus.len() != devs.len() {
        bail!(
            "--queue-cpus names {} CPUs for {} queue(s)",
            args.queue_cpus.len(),
            devs.len()
        );
    }
    // Each queue's engine its own settings (the control port is shared, SO_REUSEPORT); the
    // queues share the flow-generation clock (the home agent orders moves by it).
    let mut handoffs = vec![handoff];
    // Route-optimised, the first queue adopts every connection (one mobile role holds the
    // bindings): the others take no offers (`dserver::Builder::queue`).
    let listen = args.handoff.steering() != SteeringChoice::Ro;
    for _ in 1..devs.len() {
        handoffs.push(handoff_config_for(args, listen)?);
    }
    let drained = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let queues = devs.len();
    let mut remotes = Vec::new();
    let mut askers = Vec::new();
    for _ in 0..devs.len() {
        let (tx, rx) = crossbeam::channel::unbounded();
        let bell = ds_stack::runner::Doorbell::new().context("a queue's doorbell")?;
        remotes.push(Remote {
            rx,
            bell: bell.clone(),
            drained: drained.clone(),
            queues,
            counted: false,
            handoffs: started.clone(),
        });
        askers.push((tx, bell));
    }
    tracing::info!(queues = devs.len(), "one stack per receive queue");
    std::thread::scope(|s| {
        let workers: Vec<_> = devs
            .into_iter()
            .zip(handoffs)
            .zip(remotes)
            .enumerate()
            .map(|(q, ((dev, handoff), remote))| {
                std::thread::Builder::new()
                    .name(format!("queue-{q}"))
                    .spawn_scoped(s, move || {
                        let pinned = match args.queue_cpus.get(q) {
                            Some(&cpu) => ds_apps::sched::pin_to_cpu(cpu)
                                .with_context(|| format!("--queue-cpus: queue {q}")),
                            None => Ok(()),
                        };
                        let r = pinned
                            .and_then(|()| node_builder(args, handoff))
                            .and_then(|b| {
                                Ok(b.backlog(server_config(args).backlog).queue(dev).build()?)
                            })
                            .and_then(|node| run(node, args, root, None, Some(remote), stop));
                        if r.is_err() {
                            // One queue failing stops the others.
                            stop.store(true, Ordering::SeqCst);
                        }
                        r
                    })
            })
            .collect::<Result<_, _>>()?;
        // The control socket, for every queue, until they all ended (a drain, a signal).
        let mut poll = ds_stack::device::PollSet::default();
        let mut fds = Vec::new();
        while workers
            .iter()
            .any(|w: &std::thread::ScopedJoinHandle<'_, _>| !w.is_finished())
        {
            let Some(ctl) = control.as_mut() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            fds.clear();
            ctl.fds(&mut fds);
            poll.clear();
            for fd in &fds {
                poll.add(*fd);
            }
            let _ = poll.wait(Some(Duration::from_millis(50)));
            ctl.poll(std::time::Instant::now(), |req| ask_queues(&askers, req));
        }
        let mut result = Ok(());
        for w in workers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a queue's thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// A control request for one queue's node, and where its answer goes.
type Asked = (
    ds_apps::control::Request,
    crossbeam::channel::Sender<Result<serde_json::Value, String>>,
);

/// A queue's node's end of the control plumbing (`--queues`): requests, and the bell that
/// wakes its loop for them.
struct Remote {
    rx: crossbeam::channel::Receiver<Asked>,
    bell: ds_stack::runner::Doorbell,
    /// Queues whose node has drained; a queue's loop ends only when all have (its device
    /// carries the others' segments round the ring until then).
    drained: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    queues: usize,
    /// This queue is counted in `drained`.
    counted: bool,
    /// Handoffs started by every queue's server: `--max-handoffs` bounds the node's.
    handoffs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Remote {
    /// This queue's node drained: true once every queue's has.
    fn all_drained(&mut self) -> bool {
        if !self.counted {
            self.counted = true;
            self.drained.fetch_add(1, Ordering::SeqCst);
        }
        self.drained.load(Ordering::SeqCst) >= self.queues
    }
}

/// Ask every queue's node `req` and merge the answers: counters summed (the node's own
/// description from the first), connections listed together, a handoff done by the queue
/// that holds the connection, a drain started on all.
fn ask_queues(
    askers: &[(
        crossbeam::channel::Sender<Asked>,
        ds_stack::runner::Doorbell,
    )],
    req: &ds_apps::control::Request,
) -> Result<serde_json::Value, String> {
    let mut waiting = Vec::new();
    for (tx, bell) in askers {
        let (rtx, rrx) = crossbeam::channel::bounded(1);
        if tx.send((req.clone(), rtx)).is_ok() {
            bell.ring();
            waiting.push(rrx);
        }
    }
    let answers: Vec<Result<serde_json::Value, String>> = waiting
        .into_iter()
        .map(|r| {
            r.recv_timeout(Duration::from_secs(2))
                .unwrap_or_else(|_| Err("a queue did not answer".into()))
        })
        .collect();
    merge_answers(req.cmd.as_str(), answers)
}

/// The merge of [`ask_queues`]. Queues that have ended (a drain) answer nothing.
fn merge_answers(
    cmd: &str,
    answers: Vec<Result<serde_json::Value, String>>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    match cmd {
        "handoff" => {
            // The queue that holds the connection takes it; the others do not know it.
            let mut last = Err("no queue answered".to_string());
            for a in answers {
                if a.is_ok() {
                    return a;
                }
                last = a;
            }
            last
        }
        "conns" => {
            let mut all = Vec::new();
            for a in answers {
                if let Value::Array(v) = a? {
                    all.extend(v);
                }
            }
            Ok(Value::Array(all))
        }
        "members" => answers.into_iter().next().unwrap_or(Ok(Value::Null)),
        _ => {
            // status, drain: the first queue's answer with every number summed, and each
            // queue's own under "queues".
            let ok: Vec<Value> = answers.into_iter().collect::<Result<_, _>>()?;
            let mut merged = ok.first().cloned().unwrap_or(Value::Null);
            for other in ok.iter().skip(1) {
                sum_into(&mut merged, other, "");
            }
            if let Value::Object(m) = &mut merged {
                m.insert("queues".into(), Value::Array(ok));
            }
            Ok(merged)
        }
    }
}

/// Add the numbers of `b` to those of `a`, recursively; the node's description (`node`) and
/// the drain's age (`for_ms`) are the first queue's.
fn sum_into(a: &mut serde_json::Value, b: &serde_json::Value, key: &str) {
    use serde_json::Value;
    if key == "node" || key == "for_ms" {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, vb) in y {
                match x.get_mut(k) {
                    Some(va) => sum_into(va, vb, k),
                    None => {
                        x.insert(k.clone(), vb.clone());
                    }
                }
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(p), Some(q)) = (x.as_u64(), y.as_u64()) {
                *x = (p + q).into();
            } else if let (Some(p), Some(q)) = (x.as_f64(), y.as_f64()) {
                if let Some(n) = serde_json::Number::from_f64(p + q) {
                    *x = n;
                }
            }
        }
        (Value::Bool(x), Value::Bool(y)) => *x = *x || *y,
        (x @ Value::Null, y) => *x = y.clone(),
        _ => {}
    }
}

/// All the stack's addresses: --addr first, then --also-addr.
fn addrs(args: &ServeArgs) -> Vec<Ipv6Addr> {
    std::iter::once(args.addr)
        .chain(args.handoff.also_addr.iter().copied())
        .collect()
}

/// Read the cluster secret (see [`ds_handoff::ClusterSecret::from_file`]).
fn read_secret(path: &Path) -> anyhow::Result<ds_handoff::ClusterSecret> {
    ds_handoff::ClusterSecret::from_file(path).with_context(|| {
        format!(
            "--secret-file {}: cannot use it (need a readable file of at least 16 bytes)",
            path.display()
        )
    })
}

/// The handoff settings from the command line, or `None` when handoff is off.
fn handoff_config(args: &ServeArgs) -> anyhow::Result<Option<HandoffConfig>> {
    handoff_config_for(args, true)
}

/// [`handoff_config`], with the control port's listener only when `listen` (route-optimised,
/// the queues after the first take no offers: no listener that would take a peer's channel
/// and then drop it).
fn handoff_config_for(args: &ServeArgs, listen: bool) -> anyhow::Result<Option<HandoffConfig>> {
    let h = &args.handoff;
    if !h.enabled() {
        if let Some(flag) = [
            (
                h.secret_file.is_some() && args.membership.role.is_none(),
                "--secret-file",
            ),
            (h.max_handoffs.is_some(), "--max-handoffs"),
        ]
        .iter()
        .find_map(|(set, flag)| set.then_some(*flag))
        {
            bail!("{flag} needs --control-listen, --peer, --ha-control (or --role)");
        }
        return Ok(None);
    }
    let path = h
        .secret_file
        .as_deref()
        .context("handoff needs --secret-file")?;
    let mut cfg = HandoffConfig::new(read_secret(path)?);
    if let Some(l) = h.control_listen.filter(|_| listen) {
        // With --queues every queue's node listens there too (SO_REUSEPORT).
        cfg.listen = Some(
            dserver::engine::control_listener(l, args.queues != 1)
                .with_context(|| format!("--control-listen {l}: cannot listen"))?,
        );
    }
    cfg.peer = h.peer.first().copied();
    cfg.more_peers = h.peer.iter().skip(1).copied().collect();
    cfg.quota = h.handoff_after;
    cfg.max_handoffs = h.max_handoffs;
    cfg.drain = match h.drain {
        DrainChoice::Immediate => ds_handoff::Drain::Immediate,
        DrainChoice::Acked => ds_handoff::Drain::UntilAcked {
            deadline: Duration::from_millis(h.drain_deadline_ms),
        },
        DrainChoice::Wait => ds_handoff::Drain::Wait {
            period: Duration::from_millis(h.drain_deadline_ms),
        },
        DrainChoice::Adaptive => ds_handoff::Drain::Adaptive {
            deadline: Duration::from_millis(h.drain_deadline_ms),
        },
    };
    cfg.reply_timeout = std::time::Duration::from_millis(h.reply_timeout_ms);
    cfg.busy_poll = match h.busy_poll {
        None => BusyPoll::Off,
        Some(BusyPollChoice::Exchange) => BusyPoll::Exchange,
        Some(BusyPollChoice::Handoff) => BusyPoll::Handoff,
    };
    cfg.steer_ahead = h.steer_ahead;
    cfg.fault = h.fault.map(|f| match f {
        FaultChoice::Refuse => AcceptorFault::Refuse,
        FaultChoice::Crash => AcceptorFault::Crash,
        FaultChoice::Hang => AcceptorFault::Hang,
    });
    match h.steering() {
        SteeringChoice::None => {}
        SteeringChoice::Transparent => {
            let ha = h
                .ha_control
                .context("--steering transparent needs --ha-control")?;
            cfg.mode = ds_handoff::Mode::Transparent;
            cfg.steering = Steering::HomeAgentFlow { ha, coa: args.addr };
        }
        SteeringChoice::Ro => {
            let home = h.home_addr.context("--steering ro needs --home-addr")?;
            if args.device == DeviceKind::Kernel {
                bail!("--steering ro needs the userspace stack (--device afxdp or tap)");
            }
            cfg.mode = ds_handoff::Mode::Ro;
            // One role for both directions: it steers connections that arrive (a Binding
            // Update away from home, a deregistration at home) and gives the home keygen
            // ticket to connections that leave.
            let at_home = h.also_addr.contains(&home);
            let role = MobileRole::new(home, (!at_home).then_some(args.addr));
            if !at_home {
                cfg.takeover = ds_handoff::Takeover::HomeAddress;
            }
            cfg.mobile_role = Some(role);
            cfg.steering = Steering::RouteOptimised {
                lifetime: std::time::Duration::from_secs(120),
            };
        }
    }
    Ok(Some(cfg))
}

/// Print the report of a handoff this node completed as donor (one JSON line on stdout), log
/// the other handoff events.
fn report_event(ev: NodeEvent) {
    match ev {
        NodeEvent::HandedOff {
            report,
            client,
            boundary_seq,
        } => handed_off(&report, client, boundary_seq),
        NodeEvent::KeptHere { client, cause } => {
            tracing::warn!(%client, "handoff failed, connection continues here: {cause}")
        }
        NodeEvent::Failed { cause } => tracing::error!("handoff failed: {cause}"),
        NodeEvent::Adopted { client } => tracing::info!(%client, "connection adopted from peer"),
        NodeEvent::Declined { cause } => tracing::warn!("offer declined: {cause}"),
        // The drain logs it.
        NodeEvent::Rebound { .. } => {}
        NodeEvent::Bound { client, after } => bound(client, after),
        NodeEvent::SteerRefused { client, detail } => steer_refused(client, &detail),
    }
}

/// [`report_event`] for the library's node.
fn report_user_event(ev: dserver::Event) {
    use dserver::Event;
    match ev {
        Event::HandedOff {
            report,
            client,
            boundary_seq,
            ..
        } => handed_off(&report, client, boundary_seq),
        // The server logged it.
        Event::KeptHere { .. } => {}
        Event::Lost { conn, cause } => tracing::error!(%conn, "handoff failed: {cause}"),
        Event::Declined { cause } => tracing::warn!("offer declined: {cause}"),
        Event::Rebound { .. } => {}
        Event::Bound { client, after } => bound(client, after),
        Event::SteerRefused { client, detail } => steer_refused(client, &detail),
    }
}

/// A handoff this node completed as the donor: the report's own fields plus what a caller
/// needs to match it with a packet capture (the client's address and the sequence number
/// where the acceptor's first byte starts), one JSON line on stdout.
fn handed_off(report: &dserver::HandoffReport, client: SocketAddrV6, boundary_seq: u32) {
    let mut v = serde_json::to_value(report)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("boundary_seq".into(), boundary_seq.into());
        m.insert("client".into(), client.to_string().into());
    }
    ds_apps::outln!("{v}");
    tracing::info!(%client, boundary_seq, total_us = report.total_us, "handed off");
}

/// Binding management (handoff phase 6) ends here, after the donor's report: a line of its
/// own.
fn bound(client: Ipv6Addr, after: std::time::Duration) {
    ds_apps::outln!(
        "{}",
        serde_json::json!({ "bound": { "client": client.to_string(), "after_ns": after.as_nanos() as u64 } })
    );
    tracing::info!(%client, ?after, "binding acknowledged")
}

/// A flow move steered ahead that the home agent did not apply: one JSON line on stdout (in
/// order with the `bound` lines, so that a reader pairs each handoff this node accepted with
/// the home agent's answer).
fn steer_refused(client: Ipv6Addr, detail: &str) {
    ds_apps::outln!(
        "{}",
        serde_json::json!({ "steer_refused": { "client": client.to_string(), "detail": detail } })
    );
    tracing::info!(%client, "flow move steered ahead not applied: {detail}")
}

/// What `dsctl status` says about the node itself.
fn node_info(args: &ServeArgs, device: String, uptime: Duration) -> serde_json::Value {
    serde_json::json!({
        "addr": args.addr.to_string(),
        "also_addr": args.handoff.also_addr.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "device": device,
        "iface": args.iface,
        "port": args.port,
        "pid": std::process::id(),
        "uptime_ms": uptime.as_millis() as u64,
    })
}

/// The device's name as `--device` spells it.
fn device_name(d: DeviceKind) -> String {
    d.to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// What `dsctl` can ask of a node, whichever its device.
trait NodeControl {
    fn status(&self) -> serde_json::Value;
    fn conns(&self) -> Vec<ConnInfo>;
    fn handoff(&mut self, client: SocketAddrV6, to: SocketAddr) -> Result<(), String>;
    fn members(&self) -> serde_json::Value;
    fn drain(&mut self) -> Result<serde_json::Value, String>;
}

/// What a drain asks of the home agent: in transparent mode with the peer's care-of address
/// known, the new clients of the DS address (the first --also-addr) go to the peer.
fn drain_rebind(args: &ServeArgs) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let h = &args.handoff;
    match (h.steering(), h.also_addr.first(), h.peer_coa) {
        (SteeringChoice::Transparent, Some(ds), Some(coa)) => Some((*ds, coa)),
        _ => None,
    }
}

/// This node and its peer, as `dsctl members` shows them (the configured cluster until the
/// membership service lands).
fn members(args: &ServeArgs, peer_up: bool) -> serde_json::Value {
    if let Some(m) = MEMBERSHIP.get() {
        return serde_json::to_value(m.snapshot()).unwrap_or_default();
    }
    let me = serde_json::json!({
        "node": args.handoff.control_listen.map(|a| a.to_string()),
        "addr": args.addr.to_string(),
        "role": "self",
    });
    // --peer-coa is the first peer's; the channel state is known for the first peer.
    let peers = args.handoff.peer.iter().enumerate().map(|(i, p)| {
        let first = i == 0;
        serde_json::json!({
            "node": p.to_string(),
            "addr": args.handoff.peer_coa.filter(|_| first).map(|a| a.to_string()),
            "role": "peer",
            "channel": if !first { "unknown" } else if peer_up { "up" } else { "down" },
        })
    });
    serde_json::Value::Array(std::iter::once(me).chain(peers).collect())
}

/// The userspace node, for one control request.
struct UserControl<'a> {
    server: &'a mut HttpServer,
    node: &'a mut dserver::Node,
    args: &'a ServeArgs,
    uptime: Duration,
    echo: Option<ds_apps::udp_echo::EchoStats>,
}

impl NodeControl for UserControl<'_> {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": node_info(self.args, device_name(self.args.device), self.uptime),
            "handoff": self.node.has_handoff().then(|| self.node.stats()),
            "http": self.server.stats(),
            "interface": self.node.interface_stats(),
            "device": self.node.device_stats(),
            "udp_echo": self.echo,
            "drain": self.server.drain_info(self.node),
        })
    }

    fn members(&self) -> serde_json::Value {
        members(self.args, self.node.peer_connected())
    }

    fn drain(&mut self) -> Result<serde_json::Value, String> {
        if !self.node.has_handoff() {
            return Err("handoff is off on this node (no --peer): nothing to drain to".into());
        }
        let rebind = drain_rebind(self.args);
        let n = self.server.start_drain(self.node, rebind)?;
        Ok(serde_json::json!({
            "draining": n,
            "rebind": rebind.map(|(ds, coa)| format!("{ds} -> {coa}")),
        }))
    }

    fn conns(&self) -> Vec<ConnInfo> {
        self.server.conn_info(self.node)
    }

    fn handoff(&mut self, client: SocketAddrV6, to: SocketAddr) -> Result<(), String> {
        if !self.node.has_handoff() {
            return Err("handoff is off on this node (no --peer)".into());
        }
        self.server.request_handoff(self.node, client, to)
    }
}

/// The kernel-socket node, for one control request.
struct KernelControl<'a> {
    node: &'a mut KernelNode,
    args: &'a ServeArgs,
    started: std::time::Instant,
}

impl NodeControl for KernelControl<'_> {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": node_info(self.args, device_name(self.args.device), self.started.elapsed()),
            "handoff": self.node.stats(),
            "http": self.node.server_stats(),
            "drain": self.node.drain_info(),
        })
    }

    fn conns(&self) -> Vec<ConnInfo> {
        self.node.conn_info()
    }

    fn handoff(&mut self, client: SocketAddrV6, to: SocketAddr) -> Result<(), String> {
        self.node.request_handoff(client, to)
    }

    fn members(&self) -> serde_json::Value {
        members(self.args, self.node.peer_connected())
    }

    fn drain(&mut self) -> Result<serde_json::Value, String> {
        let rebind = drain_rebind(self.args);
        let n = self.node.start_drain(rebind)?;
        Ok(serde_json::json!({
            "draining": n,
            "rebind": rebind.map(|(ds, coa)| format!("{ds} -> {coa}")),
        }))
    }
}

/// A request's argument, parsed.
fn arg<T>(v: &Option<String>, what: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    v.as_deref()
        .ok_or_else(|| format!("the request needs {what}"))?
        .parse()
        .map_err(|e| format!("{what}: {e}"))
}

/// Answer one `dsctl` request.
fn answer(
    req: &ds_apps::control::Request,
    node: &mut dyn NodeControl,
) -> Result<serde_json::Value, String> {
    match req.cmd.as_str() {
        "status" => Ok(node.status()),
        "conns" => serde_json::to_value(node.conns()).map_err(|e| e.to_string()),
        "handoff" => {
            let client: SocketAddrV6 = arg(&req.conn, "conn ([addr]:port of the client)")?;
            let to: SocketAddr = arg(&req.to, "to ([addr]:port of the peer's control)")?;
            node.handoff(client, to)?;
            Ok(serde_json::json!({ "queued": client.to_string(), "to": to.to_string() }))
        }
        "members" => Ok(node.members()),
        "drain" => node.drain(),
        other => Err(format!(
            "unknown command {other:?} (this node knows: status, conns, handoff, members, drain)"
        )),
    }
}

/// The proxy node, for one control request.
struct ProxyControl<'a> {
    proxy: &'a mut ds_apps::proxy::Proxy,
    args: &'a ServeArgs,
    started: std::time::Instant,
    echo: Option<ds_apps::udp_echo::EchoStats>,
}

impl NodeControl for ProxyControl<'_> {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": node_info(self.args, device_name(self.args.device), self.started.elapsed()),
            "proxy": self.proxy.stats(),
            "open": self.proxy.connections(),
            "handoff": self.proxy.node().stats(),
            "interface": self.proxy.node().interface_stats(),
            "device": self.proxy.node().device_stats(),
            "udp_echo": self.echo,
            "drain": self.proxy.drain_info(),
        })
    }

    fn conns(&self) -> Vec<ConnInfo> {
        self.proxy.conn_info()
    }

    fn handoff(&mut self, _: SocketAddrV6, _: SocketAddr) -> Result<(), String> {
        Err("proxy mode places connections by its policy (--policy)".into())
    }

    fn members(&self) -> serde_json::Value {
        members(self.args, false)
    }

    fn drain(&mut self) -> Result<serde_json::Value, String> {
        let rebind = drain_rebind(self.args);
        let n = self.proxy.start_drain(rebind)?;
        Ok(serde_json::json!({
            "draining": n,
            "rebind": rebind.map(|(ds, coa)| format!("{ds} -> {coa}")),
        }))
    }
}

/// Proxy mode: the library's node on the userspace stack, each client relayed to `backend`
/// here or handed to the node the policy names.
fn run_proxy(
    args: &ServeArgs,
    backend: SocketAddr,
    mut control: Option<ControlSocket>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let h = &args.handoff;
    if args.device == DeviceKind::Kernel {
        bail!("proxy mode needs the userspace stack (--device afxdp or tap)");
    }
    let mut b = node_builder(args, None)?;
    if let Some(f) = &h.secret_file {
        b = b.secret_file(f);
    }
    if let Some(l) = h.control_listen {
        b = b.control_listen(l);
    }
    for p in &h.peer {
        b = b.peer(*p);
    }
    if let (SteeringChoice::Transparent, Some(ha)) = (h.steering(), h.ha_control) {
        b = b.home_agent(ha);
    }
    if h.drain == DrainChoice::Immediate {
        b = b.drain_immediately();
    }
    b = b
        .reply_timeout(Duration::from_millis(h.reply_timeout_ms))
        .service("proxy")
        .policy(match args.policy {
            PolicyChoice::Local => dserver::Policy::Local,
            PolicyChoice::RoundRobin => dserver::Policy::RoundRobin,
            PolicyChoice::LeastConnections => dserver::Policy::LeastConnections,
        });
    let mut node = b.build().context("starting the node")?;
    // The UDP echo service, written against the library's node like the proxy.
    let mut echo = match args.udp_echo {
        Some(port) => Some(ds_apps::udp_echo::UdpEcho::new(
            node.udp_bind(port).context("--udp-echo")?,
        )),
        None => None,
    };
    let mut proxy = ds_apps::proxy::Proxy::new(node, backend);
    proxy.set_per_request(args.per_request);
    tracing::info!(
        %backend,
        policy = ?args.policy,
        per_request = args.per_request,
        "serving proxy [{}]:{} -> {backend}",
        h.also_addr.first().unwrap_or(&args.addr),
        args.port
    );
    let started = std::time::Instant::now();
    let mut fds = Vec::new();
    let mut members_seen = u64::MAX;
    let mut last_loads = std::time::Instant::now();
    let mut last_peer_loads = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        fds.clear();
        if let Some(ctl) = &control {
            ctl.fds(&mut fds);
        }
        proxy.node_mut().set_fence(membership_fence());
        if let Some(m) = MEMBERSHIP.get() {
            // Item 5 of the membership issue: the policy places clients on the live members.
            for addr in proxy.node_mut().take_unreachable() {
                m.report_unreachable(addr);
            }
            if last_loads.elapsed() >= Duration::from_millis(100) {
                // Loads for the least-connections policy, both ways.
                last_loads = std::time::Instant::now();
                m.set_load(proxy.node_mut().connections() as u32);
                if args.policy == PolicyChoice::LeastConnections {
                    let loads = m.peer_loads();
                    if loads != last_peer_loads {
                        tracing::debug!(
                            ?loads,
                            here = proxy.node_mut().connections(),
                            "peer loads"
                        );
                        proxy.node_mut().set_peer_loads(&loads);
                        last_peer_loads = loads;
                    }
                }
            }
            let v = m.version();
            if v != members_seen
                && proxy.node_mut().has_handoff()
                && proxy.node_mut().set_peers(m.peers())
            {
                members_seen = v;
                tracing::info!(peers = ?proxy.node_mut().peers(), "peers from the membership");
            }
        }
        proxy.step(Duration::from_millis(1), &fds)?;
        if proxy.drained() {
            tracing::info!("drained: every connection moved, exiting");
            break;
        }
        if let Some(e) = echo.as_mut() {
            e.poll(proxy.node_mut());
        }
        if let Some(ctl) = control.as_mut() {
            let mut p = ProxyControl {
                proxy: &mut proxy,
                args,
                started,
                echo: echo.as_ref().map(|e| e.stats()),
            };
            ctl.poll(std::time::Instant::now(), |req| answer(req, &mut p));
        }
    }
    let out = serde_json::json!({
        "proxy": proxy.stats(),
        "handoff": proxy.node().stats(),
        "interface": proxy.node().interface_stats(),
    });
    ds_apps::outln!("{out}");
    Ok(())
}

/// Run a kernel-socket node until `stop` is set, then print the statistics.
fn run_kernel(
    args: &ServeArgs,
    root: &Path,
    handoff: Option<HandoffConfig>,
    mut control: Option<ControlSocket>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // The steering program on the link: it decapsulates the home agent's tunnel to our
    // addresses for the kernel (XDP_PASS), and holds the packets of connections being moved.
    let (prog, link, mode) = dserver::kernel_steering(&args.iface, &addrs(args))?;
    let holds = ds_kernel::HoldTable::new(&prog, ds_kernel::HoldLimits::default())
        .context("the packet hold")?;
    let listener = TcpListener::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, args.port, 0, 0))
        .with_context(|| format!("cannot listen on port {}", args.port))?;
    let cfg = match handoff {
        Some(c) => c,
        // No handoff: a plain kernel server. No listener and no peer, so the key is never used.
        None => HandoffConfig::new(ds_handoff::ClusterSecret::new(&[0u8; 32])?),
    };
    let mut node = KernelNode::new(listener, root, cfg, holds)?;
    node.set_limits(server_config(args))
        .context("--open-file-cache: cannot reopen the document root")?;
    if let Err(e) = node.connect_peer() {
        tracing::info!("peer not reachable yet (will connect at the first handoff): {e:#}");
    }
    tracing::info!(
        iface = %args.iface,
        xdp = ?mode,
        also = ?args.handoff.also_addr,
        "serving http://[{}]:{}/ from {} on kernel sockets",
        args.addr,
        args.port,
        root.display()
    );
    let started = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        node.set_fence(membership_fence());
        node.step(std::time::Duration::from_millis(5));
        node.take_events().into_iter().for_each(report_event);
        if node.drained() {
            tracing::info!("drained: every connection moved, exiting");
            break;
        }
        if let Some(ctl) = control.as_mut() {
            let mut k = KernelControl {
                node: &mut node,
                args,
                started,
            };
            ctl.poll(std::time::Instant::now(), |req| answer(req, &mut k));
        }
    }
    let (stats, server) = (node.stats(), node.server_stats());
    node.shutdown();
    drop(link);
    if args.json {
        ds_apps::outln!(
            "{}",
            serde_json::json!({ "handoff": stats, "http": server })
        );
    } else {
        ds_apps::outln!(
            "dsnode stats after {:.3} s (kernel sockets)",
            started.elapsed().as_secs_f64()
        );
        ds_apps::outln!(
            "  connections: {} accepted, {} adopted, {} open; {} response bytes sent",
            server.accepted,
            server.adopted,
            server.open,
            server.response_bytes
        );
        ds_apps::outln!(
            "  handoff: {} started, {} moved, {} kept, {} adopted, {} packets forwarded",
            stats.started,
            stats.moved,
            stats.kept,
            stats.adopted,
            stats.forwarded_packets
        );
    }
    Ok(())
}

/// Serve HTTP on the library's `node` until `stop` (or a drain ends), then print the
/// statistics; `remote`: one of several per-queue nodes (`--queues`), asked by the control
/// socket's thread.
fn run(
    mut node: dserver::Node,
    args: &ServeArgs,
    root: &Path,
    mut control: Option<ControlSocket>,
    mut remote: Option<Remote>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut server = HttpServer::new(root, server_config(args))?;
    if node.has_handoff() {
        if !node.peers().is_empty() {
            server.set_handoff_quota(args.handoff.handoff_after);
        }
        server.set_max_handoffs(args.handoff.max_handoffs);
        if let Some(r) = &remote {
            server.share_handoff_count(r.handoffs.clone());
        }
    }
    let mut echo = match args.udp_echo {
        Some(port) => {
            let at = args.handoff.also_addr.first().copied().unwrap_or(args.addr);
            tracing::info!("UDP echo on [{at}]:{port}");
            Some(ds_apps::udp_echo::UdpEcho::new(
                node.udp_bind(port).context("--udp-echo")?,
            ))
        }
        None => None,
    };
    tracing::info!(
        iface = %args.iface,
        also = ?args.handoff.also_addr,
        handoff = node.has_handoff(),
        "serving http://[{}]:{}/ from {}",
        args.addr,
        args.port,
        root.display()
    );
    let started = std::time::Instant::now();
    // Wake for the control sockets too (the node adds its own), so an offer or a reply is
    // handled at once; with handoff a short bound keeps drain deadlines and reply timeouts
    // accurate.
    let idle = if node.has_handoff() {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
    };
    let mut result = Ok(());
    let mut fds = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        fds.clear();
        if let Some(ctl) = &control {
            ctl.fds(&mut fds);
        }
        if let Some(r) = &remote {
            fds.push(r.bell.fd());
        }
        node.set_fence(membership_fence());
        // Connections adopted or resumed in the last round are served without waiting.
        let wait = if server.has_work() {
            Duration::ZERO
        } else {
            idle
        };
        if let Err(e) = node.poll_with(wait, &fds) {
            result = Err(anyhow::Error::new(e).context("device I/O failed"));
            break;
        }
        if let Some(e) = echo.as_mut() {
            e.poll(&mut node);
        }
        server.poll(&mut node);
        server.take_events().into_iter().for_each(report_user_event);
        if server.drained(&node) && remote.as_mut().is_none_or(Remote::all_drained) {
            tracing::info!("drained: every connection moved, exiting");
            break;
        }
        // Requests the control socket's thread forwarded (--queues).
        let asked = remote
            .as_ref()
            .is_some_and(|r| r.bell.answer() || !r.rx.is_empty());
        if asked || control.is_some() {
            let mut u = UserControl {
                server: &mut server,
                node: &mut node,
                args,
                uptime: started.elapsed(),
                echo: echo.as_ref().map(|e| e.stats()),
            };
            if let Some(r) = remote.as_ref().filter(|_| asked) {
                while let Ok((req, reply)) = r.rx.try_recv() {
                    let _ = reply.send(answer(&req, &mut u));
                }
            }
            if let Some(ctl) = control.as_mut() {
                ctl.poll(std::time::Instant::now(), |req| answer(req, &mut u));
            }
        }
    }
    let uptime = started.elapsed();
    if result.is_ok() {
        tracing::info!(open = server.connections(), "stopping");
    }
    // Connections still open here are reset (the node sends the resets as it goes).
    server.shutdown(&mut node);
    let stats = server.stats();
    let node_stats = node.has_handoff().then(|| node.stats());
    let iface = node.interface_stats().clone();
    drop(node);

    if args.json {
        tracing::info!(
            "http: {}",
            serde_json::to_string(&stats).unwrap_or_else(|e| format!("unprintable: {e}"))
        );
        match node_stats {
            // Without handoff: the interface counters alone, as before.
            None => ds_apps::outln!("{}", serde_json::to_string(&iface)?),
            Some(n) => ds_apps::outln!(
                "{}",
                serde_json::json!({ "handoff": n, "http": stats, "interface": iface })
            ),
        }
    } else {
        print_stats(uptime, &stats, &iface);
        if let Some(n) = node_stats {
            ds_apps::outln!(
                "  handoff: {} started, {} moved, {} kept, {} adopted, {} packets forwarded",
                n.started,
                n.moved,
                n.kept,
                n.adopted,
                n.forwarded_packets
            );
        }
    }
    result
}

fn print_stats(uptime: Duration, server: &ServerStats, iface: &Stats) {
    let HttpStats {
        requests,
        status_2xx,
        status_4xx,
        status_5xx,
        bytes_sent,
    } = server.http;
    ds_apps::outln!("dsnode stats after {:.3} s", uptime.as_secs_f64());
    ds_apps::outln!(
        "  connections: {} accepted, {} closed, {} aborted, {} closed idle",
        server.accepted,
        server.closed,
        server.aborted,
        server.idle_closed
    );
    ds_apps::outln!(
        "  http: {requests} requests ({status_2xx} 2xx, {status_4xx} 4xx, {status_5xx} 5xx), \
         {bytes_sent} bytes sent"
    );
    let f = server.open_files;
    if f.hits + f.opens > 0 {
        ds_apps::outln!(
            "  open-file cache: {} requests served from it, {} files opened, {} open now",
            f.hits,
            f.opens,
            f.files
        );
    }
    ds_apps::outln!("  interface:");
    match serde_json::to_value(iface) {
        Ok(serde_json::Value::Object(fields)) => {
            for (name, value) in fields {
                ds_apps::outln!("    {name:<24} {value}");
            }
        }
        _ => ds_apps::outln!("    {iface:?}"),
    }
}
