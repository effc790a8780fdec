//! `dsnode`: a Distributed Servers node. Today it runs the HTTP/1.1 content service on the
//! userspace TCP/IPv6 stack over a TAP device or AF_XDP (`ds-xdp`); handoff is to come.

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ds_apps::http::HttpStats;
use ds_apps::mac::{format_mac, mac_from_addr, parse_mac};
use ds_apps::server::{HttpServer, ServerConfig, ServerStats};
use ds_apps::signal;
use ds_stack::device::{Device, TapDevice};
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, Duration, Interface, Stats};
use std::io::IsTerminal as _;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Distributed Servers node daemon.
#[derive(Parser, Debug)]
#[command(name = "dsnode", version, about = "Distributed Servers node daemon", long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
}

#[derive(Args, Debug)]
struct ServeArgs {
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
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The stack's MAC address [default: locally administered, derived from --addr].
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    mac: Option<[u8; 6]>,
    /// On exit, print the interface statistics as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
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

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let addr = args.addr;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        bail!("--addr {addr}: need a unicast address");
    }
    if !args.root.is_dir() {
        bail!("--root {}: not a directory", args.root.display());
    }
    let stop = signal::install().context("installing signal handlers")?;
    match args.device {
        DeviceKind::Afxdp => {
            let cfg = ds_xdp::device::AfXdpConfig::new(vec![addr]);
            let dev = ds_xdp::device::AfXdpDevice::open(&args.iface, &cfg).map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "cannot open AF_XDP on {:?} (needs root, an existing interface, and no \
                     other XDP program attached)",
                    args.iface
                ))
            })?;
            tracing::info!(
                xdp = ?dev.attach_mode(),
                socket = ?dev.bind_mode(),
                "AF_XDP device ready"
            );
            run(dev, args, stop)
        }
        DeviceKind::Tap => {
            let dev = TapDevice::open(&args.iface).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (needs root or CAP_NET_ADMIN)"
                } else {
                    ""
                };
                anyhow::Error::new(e)
                    .context(format!("cannot open TAP device {:?}{hint}", args.iface))
            })?;
            run(dev, args, stop)
        }
    }
}

/// Run the node on `dev` until `stop` is set, then print the statistics.
fn run<D: Device>(dev: D, args: &ServeArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let mac = args.mac.unwrap_or_else(|| mac_from_addr(args.addr));
    let clock = Clock::new();
    let iface = Interface::new(Config::new(mac, vec![args.addr]), clock.now());
    let mut rt = Runner::with_clock(dev, iface, clock);
    let local = SocketAddrV6::new(args.addr, args.port, 0, 0);
    let mut server = HttpServer::listen(&mut rt.iface, local, &args.root, ServerConfig::default())?;
    tracing::info!(
        iface = %args.iface,
        mac = %format_mac(&mac),
        "serving http://[{}]:{}/ from {}",
        args.addr,
        args.port,
        args.root.display()
    );

    let started = rt.now();
    // Announce our address at start and again shortly after, since the device may only be
    // bridged to the network once it exists (RFC 4861 §7.2.6 allows a few repeats).
    let mut announcements = [
        Duration::ZERO,
        Duration::from_secs(1),
        Duration::from_secs(3),
    ]
    .into_iter()
    .peekable();
    let mut result = Ok(());
    while !stop.load(Ordering::SeqCst) {
        let now = rt.now();
        if announcements
            .next_if(|d| now.saturating_since(started) >= *d)
            .is_some()
        {
            rt.iface.announce(now);
        }
        if let Err(e) = rt.step(Duration::from_millis(10)) {
            result = Err(anyhow::Error::new(e).context("device I/O failed"));
            break;
        }
        let now = rt.now();
        server.poll(&mut rt.iface, now);
    }
    let uptime = rt.now().saturating_since(started);
    if result.is_ok() {
        tracing::info!(open = server.connections(), "stopping");
    }
    server.shutdown(&mut rt.iface);
    // Best effort: send the resets for connections still open.
    let _ = rt.flush();

    let stats = server.stats();
    if args.json {
        tracing::info!(
            "http: {}",
            serde_json::to_string(&stats).unwrap_or_else(|e| format!("unprintable: {e}"))
        );
        println!("{}", serde_json::to_string(rt.iface.stats())?);
    } else {
        print_stats(uptime, &stats, rt.iface.stats());
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
    println!("dsnode stats after {:.3} s", uptime.as_secs_f64());
    println!(
        "  connections: {} accepted, {} closed, {} aborted, {} closed idle",
        server.accepted, server.closed, server.aborted, server.idle_closed
    );
    println!(
        "  http: {requests} requests ({status_2xx} 2xx, {status_4xx} 4xx, {status_5xx} 5xx), \
         {bytes_sent} bytes sent"
    );
    println!("  interface:");
    match serde_json::to_value(iface) {
        Ok(serde_json::Value::Object(fields)) => {
            for (name, value) in fields {
                println!("    {name:<24} {value}");
            }
        }
        _ => println!("    {iface:?}"),
    }
}
