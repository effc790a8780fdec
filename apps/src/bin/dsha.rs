//! `dsha`: the home agent of the DS address, in one of two forms:
//!
//! - `dsha serve`: a Mobile IPv6 home agent on the userspace stack over a TAP device:
//!   authenticated home registration (RFC 4285), proxy ND and IPv6-in-IPv6 tunnelling to the
//!   registered care-of address (RFC 6275 §10);
//! - `dsha xdp`: the transparent-mode home agent: the `ds-xdp` tunnel program on a kernel
//!   interface tunnels packets for the DS address to the care-of address of the node that
//!   serves each flow, and a flow agent (`ds_apps::flow_agent`) moves flows between nodes
//!   when they hand a connection off.

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use ds_apps::flow_agent::FlowAgent;
use ds_apps::home_agent::HomeAgentNode;
use ds_apps::logging::Verbosity;
use ds_apps::mac::{format_mac, mac_from_addr, parse_mac};
use ds_apps::signal;
use ds_mipv6::ha::MnHaSa;
use ds_stack::device::TapDevice;
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, Duration, Interface};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

/// Distributed Servers home agent.
#[derive(Parser, Debug)]
#[command(name = "dsha", version, about = "Mobile IPv6 home agent for Distributed Servers", long_about = None)]
struct Cli {
    #[command(flatten)]
    log: Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the home agent on a TAP device until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Run the XDP tunnel home agent (transparent handoff mode) until SIGINT or SIGTERM.
    Xdp(XdpArgs),
}

#[derive(Args, Debug)]
struct XdpArgs {
    /// Kernel interface on the home link; the tunnel program is attached to it.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// The home agent's own IPv6 address on --iface (outer source of the tunnelled packets).
    #[arg(long, value_name = "HA_ADDR")]
    addr: Ipv6Addr,
    /// The DS address whose packets are tunnelled to the nodes.
    #[arg(long, value_name = "DS_ADDR")]
    ds: Ipv6Addr,
    /// Initial binding: the care-of address of the node that gets new flows (with
    /// --members, until a contact node registers).
    #[arg(long, value_name = "COA", required_unless_present = "members")]
    bind: Option<Ipv6Addr>,
    /// Membership: accept the contact node's registration of the DS address on this UDP
    /// address (authenticated, fenced by epoch, with a lease) and relay joining nodes to the
    /// contact; a new holder moves the DS address's binding to its care-of address.
    #[arg(long, value_name = "[ADDR]:PORT")]
    members: Option<SocketAddr>,
    /// Where the flow agent accepts the nodes' move requests, e.g. `[fd00::a]:7001`.
    #[arg(long, value_name = "[ADDR]:PORT")]
    control: SocketAddr,
    /// File holding the cluster secret (at least 16 bytes) that keys the control channels.
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// Directory (on bpffs) where the program's maps are pinned while it runs
    /// [default: /sys/fs/bpf/ds/<IF>].
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// With --members: where the registry's resume point (newest epoch, holder) is kept, so
    /// that after a crash and restart no older epoch than before can take the DS address
    /// [default: /run/ds/registry-<last component of the pin directory>.json].
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Capacity of the learned flow table (an LRU: new flows are learned from their SYN and
    /// the least recently used go when it is full). Flows moved by a handoff live in a
    /// separate table of 131,072 that is never evicted (a moved flow without a packet for
    /// 2 h 15 min is forgotten).
    #[arg(long, default_value_t = 65536, value_name = "N")]
    flow_capacity: u32,
    /// Listen for `dsctl` on this Unix socket (made owner-only, mode 0600): `dsctl status`
    /// answers with the flow agent's, the tunnel program's and the registry's counters as
    /// they are now.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// On exit, print the counters as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sched: ds_apps::sched::SchedArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TAP device to create or attach to, on the home link.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// The home agent's IPv6 address.
    #[arg(long, value_name = "ADDR")]
    addr: Ipv6Addr,
    /// A node's security association: SPI:HEXKEY:HOME (RFC 4285 MN-HA, HMAC-SHA1 key in hex,
    /// the home address it may register). Repeat for several.
    #[arg(long = "sa", value_name = "SPI:HEXKEY:HOME", value_parser = parse_sa, required = true)]
    sas: Vec<MnHaSa>,
    /// MAC address [default: derived from --addr].
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    mac: Option<[u8; 6]>,
    /// On exit, print the counters as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sched: ds_apps::sched::SchedArgs,
}

fn parse_sa(s: &str) -> Result<MnHaSa, String> {
    let mut it = s.splitn(3, ':');
    let (Some(spi), Some(key), Some(home)) = (it.next(), it.next(), it.next()) else {
        return Err("expected SPI:HEXKEY:HOME".into());
    };
    let spi: u32 = spi.parse().map_err(|e| format!("SPI {spi:?}: {e}"))?;
    if spi < 256 {
        return Err(format!("SPI {spi}: 0-255 are reserved (RFC 4285 §5.1)"));
    }
    if key.len() % 2 != 0 || key.is_empty() {
        return Err("HEXKEY: an even number of hex digits".into());
    }
    let key = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| format!("HEXKEY: {e}"))?;
    let home: Ipv6Addr = home.parse().map_err(|e| format!("HOME {home:?}: {e}"))?;
    Ok(MnHaSa { spi, key, home })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let res = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Xdp(args) => xdp(&args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsha: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ntp_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ds_mipv6::mn::ntp_from_unix(d)
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    if args.addr.is_unspecified() || args.addr.is_multicast() || args.addr.is_loopback() {
        bail!("--addr {}: need a unicast address", args.addr);
    }
    args.sched.apply()?;
    let stop = signal::install().context("installing signal handlers")?;
    let dev = TapDevice::open(&args.iface)
        .with_context(|| format!("cannot open TAP device {:?}", args.iface))?;
    let mac = args.mac.unwrap_or_else(|| mac_from_addr(args.addr));
    let clock = Clock::new();
    let mut cfg = Config::new(mac, vec![args.addr]);
    // Home registrations are ours to answer, not a correspondent's.
    cfg.correspondent = false;
    let iface = Interface::new(cfg, clock.now());
    let mut rt = Runner::with_clock(dev, iface, clock);
    let ha = HomeAgentNode::new(args.addr, args.sas.clone(), ntp_now(), rt.now())?;
    rt.iface.set_mobility_hook(ha.hook());
    let now = rt.now();
    rt.iface.announce(now);
    tracing::info!(iface = %args.iface, mac = %format_mac(&mac), addr = %args.addr, sas = args.sas.len(), "home agent up");
    while !stop.load(Ordering::Relaxed) {
        rt.step(Duration::from_millis(10))?;
        let now = rt.now();
        ha.service(&mut rt.iface, now);
    }
    let st = ha.stats();
    if args.json {
        ds_apps::outln!(
            "{}",
            serde_json::json!({ "home_agent": st, "interface": rt.iface.stats() })
        );
    } else {
        ds_apps::outln!(
            "dsha: {} registrations, {} refused, {} packets tunnelled, {} reverse-tunnelled, {} dropped",
            st.registered, st.refused, st.tunnelled, st.reverse_forwarded, st.dropped
        );
    }
    Ok(())
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

/// The DS address's registration authority (the membership protocol's home-agent side) on
/// a UDP socket.
struct Members {
    sock: std::net::UdpSocket,
    registry: ds_membership::Registry,
    origin: std::time::Instant,
    buf: Vec<u8>,
    /// Where the resume point is kept.
    state: PathBuf,
    /// The point last written there.
    saved: Option<ds_membership::Resume>,
}

/// The registry's resume point from `path`, if a previous run left one.
fn load_resume(path: &Path) -> anyhow::Result<Option<ds_membership::Resume>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // Bounded like every input: the file holds one small JSON object.
    if text.len() > 4096 {
        bail!("{}: larger than a resume point", path.display());
    }
    let r = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a registry resume point", path.display()))?;
    Ok(Some(r))
}

/// Write the resume point atomically (a crash leaves the old one or the new one).
fn save_resume(path: &Path, r: &ds_membership::Resume) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(r)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Members {
    fn bind(
        addr: SocketAddr,
        secret: &ds_handoff::ClusterSecret,
        state: PathBuf,
    ) -> anyhow::Result<Members> {
        let sock = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("--members {addr}: cannot bind"))?;
        sock.set_nonblocking(true)?;
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| anyhow::anyhow!("no random source"))?;
        let key = ds_membership::Key::new(secret.expose());
        let resume = load_resume(&state)?;
        if let Some(r) = resume {
            tracing::info!(last = %r.last, holder = ?r.holder, "registry resumes a previous run");
        }
        let registry = ds_membership::Registry::new(
            key,
            ds_membership::RegistryConfig {
                resume,
                ..ds_membership::RegistryConfig::new(u64::from_le_bytes(id))
            },
        );
        Ok(Members {
            sock,
            registry,
            origin: std::time::Instant::now(),
            buf: vec![0; ds_membership::wire::MAX_DATAGRAM + 1],
            saved: resume,
            state,
        })
    }

    /// Answer what arrived; move the DS address's binding when the holder changes.
    fn poll(&mut self, agent: &mut FlowAgent, ds: Ipv6Addr) {
        self.exchange(agent, ds);
        // Persist where a restart would resume whenever it moved (rarely: a new holder or
        // a newer epoch of the same holder).
        let point = self.registry.resume_point();
        if self.saved != Some(point) {
            match save_resume(&self.state, &point) {
                Ok(()) => self.saved = Some(point),
                Err(e) => tracing::warn!("saving the registry's resume point: {e:#}"),
            }
        }
    }

    fn exchange(&mut self, agent: &mut FlowAgent, ds: Ipv6Addr) {
        // A bounded batch per round, so a flood cannot starve the flow agent.
        for _ in 0..256 {
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, _src)) => {
                    let now = ds_membership::Time(self.origin.elapsed().as_micros() as u64);
                    self.registry.handle(now, &self.buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("membership socket: {e}");
                    break;
                }
            }
        }
        while let Some(ev) = self.registry.poll_event() {
            match ev {
                ds_membership::RegistryEvent::Bound { holder, epoch } => {
                    match agent.program().set_binding(ds, holder.coa) {
                        Ok(()) => tracing::info!(
                            contact = %holder.addr, coa = %holder.coa, %epoch,
                            "new contact node: the DS address is bound to it"
                        ),
                        Err(e) => tracing::warn!("binding the DS address to {}: {e}", holder.coa),
                    }
                }
                ds_membership::RegistryEvent::Dead { coa } => {
                    if let Some(h) = self.registry.holder() {
                        let to = h.info.coa;
                        agent.reset_flows_of(coa, to);
                    }
                }
            }
        }
        while let Some((to, bytes)) = self.registry.poll_transmit() {
            if let Err(e) = self.sock.send_to(&bytes, to) {
                tracing::debug!(%to, "membership reply: {e}");
            }
        }
    }
}

/// Detaches the program and removes its pins when the home agent stops, also on an error
/// path, so a failed start leaves neither an attached program nor pinned maps behind.
///
/// The program is attached through a BPF link owned by this process: if the process dies
/// (`kill -9`, a crash) the kernel detaches it, so a restart on the same interface attaches
/// at once. The pinned maps stay after a crash, and the restart takes them up again (the
/// flows and bindings survive).
struct Cleanup {
    pin_dir: PathBuf,
    link: Option<std::os::fd::OwnedFd>,
    /// The registry's resume point: only for a restart after a crash, so a clean stop
    /// removes it (the next start is a new cluster's).
    state: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Closing the link detaches the program.
        drop(self.link.take());
        if let Some(p) = self.state.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Err(e) = ds_xdp::loader::remove_pins(ds_xdp::Kind::Tunnel, &self.pin_dir) {
            tracing::warn!("removing the pinned maps: {e}");
        }
    }
}

/// What `dsctl status` gets from `dsha xdp`: the counters, without the flow tables' sizes
/// (counting them walks every entry with a system call each, ~0.1 s for a full table, which
/// the loop would spend away from the nodes' move requests; the exit summary counts them).
fn live_status(agent: &FlowAgent, members: Option<&Members>) -> serde_json::Value {
    let tunnel: serde_json::Map<String, serde_json::Value> = agent
        .program()
        .counters()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "flow_agent": agent.stats(),
        "tunnel": tunnel,
        "registry": members.map(|m| m.registry.stats()),
        "holder": members.and_then(|m| m.registry.holder()).map(|h| h.info.coa.to_string()),
    })
}

fn xdp(args: &XdpArgs) -> anyhow::Result<()> {
    use ds_xdp::maps::{TunnelConfig, TunnelMode};
    use ds_xdp::{Kind, LoadOptions, Program};
    for (flag, a) in [
        ("--addr", Some(args.addr)),
        ("--ds", Some(args.ds)),
        ("--bind", args.bind),
    ]
    .into_iter()
    .filter_map(|(f, a)| a.map(|a| (f, a)))
    {
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            bail!("{flag} {a}: need a unicast address");
        }
    }
    let secret = read_secret(&args.secret_file)?;
    args.sched.apply()?;
    let stop = signal::install().context("installing signal handlers")?;
    let ifindex = ds_xdp::loader::ifindex(&args.iface)
        .with_context(|| format!("--iface {:?}: no such interface", args.iface))?;
    let pin_dir = args
        .pin_dir
        .clone()
        .unwrap_or_else(|| ds_xdp::loader::default_pin_dir(&args.iface));
    let prog = Program::load(
        Kind::Tunnel,
        &LoadOptions {
            pin_dir: Some(pin_dir.clone()),
            flow_capacity: Some(args.flow_capacity),
        },
    )
    .context("loading the tunnel program (needs root and bpffs)")?;
    let mut cleanup = Cleanup {
        pin_dir: pin_dir.clone(),
        link: None,
        state: None,
    };
    prog.set_config(&TunnelConfig {
        local: args.addr,
        // FIB mode: the kernel's routing and neighbour tables pick the next hop, so the
        // operator configures care-of reachability with ordinary `ip route`/`ip neigh`.
        mode: TunnelMode::Fib,
        hop_limit: 64,
        mtu: 1500,
        // Learning pins each new flow to the node bound at its first packet, so that a later
        // binding change moves only new flows and a handoff moves exactly one flow.
        learn: true,
    })?;
    if let Some(bind) = args.bind {
        prog.set_binding(args.ds, bind)?;
    }
    let mut members = match args.members {
        Some(a) => {
            let state = args.state_file.clone().unwrap_or_else(|| {
                let name = pin_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| args.iface.clone());
                PathBuf::from(format!("/run/ds/registry-{name}.json"))
            });
            cleanup.state = Some(state.clone());
            Some(Members::bind(a, &secret, state)?)
        }
        None => None,
    };
    // Bind the control port and socket before attaching, so a conflict fails without
    // touching the data path.
    let listener = TcpListener::bind(args.control)
        .with_context(|| format!("--control {}: cannot listen", args.control))?;
    let mut ctl = args
        .control_socket
        .as_deref()
        .map(|p| {
            ds_apps::control::ControlSocket::bind(p)
                .with_context(|| format!("--control-socket {}: cannot listen", p.display()))
        })
        .transpose()?;
    let (link, mode) = prog
        .attach_link(ifindex, ds_xdp::Mode::Native)
        .with_context(|| {
            format!(
                "attaching the tunnel program to {:?} (another XDP program attached there? \
                 `ip link set dev {} xdp off` removes one left by an older dsha)",
                args.iface, args.iface
            )
        })?;
    cleanup.link = Some(link);
    let mut agent = FlowAgent::new(prog, listener, secret)?;
    tracing::info!(
        iface = %args.iface,
        ?mode,
        ds = %args.ds,
        coa = ?args.bind,
        members = ?args.members,
        control = %args.control,
        pins = %pin_dir.display(),
        "XDP home agent up"
    );
    let mut fds = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        fds.clear();
        if let Some(c) = &ctl {
            c.fds(&mut fds);
        }
        if let Some(m) = &members {
            use std::os::fd::AsRawFd;
            fds.push(m.sock.as_raw_fd());
        }
        agent.wait_with(std::time::Duration::from_millis(50), &fds);
        if let Some(m) = &mut members {
            m.poll(&mut agent, args.ds);
        }
        agent.poll();
        if let Some(c) = &mut ctl {
            c.poll(std::time::Instant::now(), |req| match req.cmd.as_str() {
                "status" => Ok(live_status(&agent, members.as_ref())),
                other => Err(format!("dsha answers status only, not {other:?}")),
            });
        }
    }
    let fa = agent.stats();
    let counters = agent.program().counters().unwrap_or_default();
    let flows = agent.program().flows().map(|f| f.len()).unwrap_or(0);
    let moved = agent.program().moved_flows().map(|f| f.len()).unwrap_or(0);
    let mut summary = live_status(&agent, members.as_ref());
    drop(cleanup);
    if args.json {
        summary["flows"] = flows.into();
        summary["moved_flows"] = moved.into();
        ds_apps::outln!("{summary}");
    } else {
        ds_apps::outln!(
            "dsha: {} control channels ({} failed), {} flow moves ({} failed, {} stale), {} flows in the table ({} moved)",
            fa.channels, fa.channel_errors, fa.moves, fa.move_errors, fa.stale_moves, flows, moved
        );
        for (k, v) in &counters {
            ds_apps::outln!("  tunnel {k:<20} {v}");
        }
    }
    Ok(())
}
