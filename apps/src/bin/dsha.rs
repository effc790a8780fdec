//! `dsha`: a Mobile IPv6 home agent for the DS address, on the userspace stack over a TAP
//! device: authenticated home registration (RFC 4285), proxy ND and IPv6-in-IPv6 tunnelling
//! to the registered care-of address (RFC 6275 §10).

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use ds_apps::home_agent::HomeAgentNode;
use ds_apps::mac::{format_mac, mac_from_addr, parse_mac};
use ds_apps::signal;
use ds_mipv6::ha::MnHaSa;
use ds_stack::device::TapDevice;
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, Duration, Interface};
use std::io::IsTerminal as _;
use std::net::Ipv6Addr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

/// Distributed Servers home agent.
#[derive(Parser, Debug)]
#[command(name = "dsha", version, about = "Mobile IPv6 home agent for Distributed Servers", long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the home agent on a TAP device until SIGINT or SIGTERM.
    Serve(ServeArgs),
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let Command::Serve(args) = cli.command;
    match serve(&args) {
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
        println!(
            "{}",
            serde_json::json!({ "home_agent": st, "interface": rt.iface.stats() })
        );
    } else {
        println!(
            "dsha: {} registrations, {} refused, {} packets tunnelled, {} reverse-tunnelled, {} dropped",
            st.registered, st.refused, st.tunnelled, st.reverse_forwarded, st.dropped
        );
    }
    Ok(())
}
