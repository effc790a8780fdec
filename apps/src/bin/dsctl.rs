//! `dsctl`: talk to a running `dsnode` through its control socket (`--control-socket`).

use clap::{Parser, Subcommand};
use ds_apps::control::{request, Request};
use ds_apps::logging::Verbosity;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Distributed Servers node control.
#[derive(Parser, Debug)]
#[command(name = "dsctl", version, about = "Control a running dsnode", long_about = None)]
struct Cli {
    #[command(flatten)]
    log: Verbosity,
    /// The node's control socket (dsnode --control-socket).
    #[arg(
        long,
        short,
        value_name = "PATH",
        default_value = "/run/dsnode.sock",
        global = true
    )]
    socket: PathBuf,
    /// Print the node's answer as one JSON object.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for the node, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The node's addresses, device, uptime and counters.
    Status,
    /// The open client connections: client, local address, TCP state, bytes sent, age.
    Conns,
    /// Move one connection to another node now; the node prints the handoff's report.
    Handoff {
        /// The connection, by its client's address and port as `conns` shows it: [ADDR]:PORT.
        conn: String,
        /// The node to move it to, by its control address (its --control-listen): [ADDR]:PORT.
        #[arg(long)]
        to: String,
    },
    /// The nodes of the cluster as this node knows them.
    Members,
    /// Hand every connection to other nodes, accept no new ones, and exit.
    Drain {
        /// Wait until the node has exited (drained), printing its progress.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_name = "S", default_value_t = 120)]
        wait_s: u64,
    },
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Follow a drain until the node's control socket goes away (it exited); the last status
/// seen, or an error when the deadline passes.
fn wait_drained(cli: &Cli, limit: Duration) -> Result<serde_json::Value, String> {
    let start = std::time::Instant::now();
    let mut last = serde_json::Value::Null;
    let mut shown = None;
    loop {
        match request(
            &cli.socket,
            &Request::new("status"),
            Duration::from_millis(cli.timeout_ms),
        ) {
            Ok(v) => {
                let left = v["drain"]["remaining"].as_u64();
                if left != shown && !cli.json {
                    if let Some(n) = left {
                        eprintln!("dsctl: {n} connections left");
                    }
                    shown = left;
                }
                last = v;
            }
            Err(e) => {
                // No answer: done if the node's process is gone, else ask again.
                let pid = last["node"]["pid"].as_u64();
                let gone = pid.is_some_and(exited);
                if gone || !cli.socket.exists() {
                    return Ok(serde_json::json!({ "drained": true, "last": last["drain"] }));
                }
                tracing::debug!("no answer yet: {e}");
            }
        }
        if start.elapsed() > limit {
            return Err(format!(
                "the node is still draining after {} s",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Print `v` as indented `key: value` lines, objects nested.
fn print_text(v: &serde_json::Value, indent: usize) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if v.is_object() {
                    ds_apps::outln!("{:indent$}{k}:", "");
                    print_text(v, indent + 2);
                } else {
                    ds_apps::outln!("{:indent$}{k}: {v}", "");
                }
            }
        }
        other => ds_apps::outln!("{:indent$}{other}", ""),
    }
}

/// `conns` as a table, one connection per line.
fn print_conns(v: &serde_json::Value) {
    let row = |cells: [&str; 5]| {
        ds_apps::outln!(
            "{:<42} {:<30} {:<12} {:>12} {:>10}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4]
        )
    };
    row(["CLIENT", "LOCAL", "STATE", "SENT", "AGE_MS"]);
    for c in v.as_array().into_iter().flatten() {
        let f = |k: &str| match &c[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let cells = ["client", "local", "state", "sent_bytes", "age_ms"].map(f);
        row(cells.each_ref().map(String::as_str));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let req = match cli.command {
        Command::Status => Request::new("status"),
        Command::Conns => Request::new("conns"),
        Command::Handoff { ref conn, ref to } => Request {
            conn: Some(conn.clone()),
            to: Some(to.clone()),
            ..Request::new("handoff")
        },
        Command::Members => Request::new("members"),
        Command::Drain { .. } => Request::new("drain"),
    };
    let cmd = req.cmd.as_str();
    tracing::debug!(socket = %cli.socket.display(), cmd, "request");
    let answer = request(&cli.socket, &req, Duration::from_millis(cli.timeout_ms))
        .map_err(|e| e.to_string())
        .and_then(|v| match cli.command {
            Command::Drain { wait: true, wait_s } => {
                wait_drained(&cli, Duration::from_secs(wait_s))
                    .map(|w| serde_json::json!({ "started": v, "result": w }))
            }
            _ => Ok(v),
        });
    match answer {
        Ok(v) if cli.json => {
            ds_apps::outln!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) if cmd == "conns" => {
            print_conns(&v);
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print_text(&v, 0);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dsctl: {e}");
            ExitCode::FAILURE
        }
    }
}
