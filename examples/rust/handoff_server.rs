//! A `dserver` server on port 80: `GET /N` gets N bytes of a pattern (byte i is i mod 251);
//! after `--handoff-after` bytes the connection, with how far its response got, is handed to
//! the peer node, which sends the rest. Run one per node.
use clap::Parser;
use dserver::{Accepted, Device, Node};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddr};

#[derive(Parser)]
struct Args {
    /// The distributed server's address.
    #[arg(long)]
    ds: Ipv6Addr,
    /// This node's own address.
    #[arg(long)]
    coa: Ipv6Addr,
    /// The network interface (AF_XDP).
    #[arg(long)]
    iface: String,
    /// The cluster secret.
    #[arg(long)]
    secret_file: std::path::PathBuf,
    /// Where this node takes connections from its peer (control address).
    #[arg(long)]
    control_listen: SocketAddr,
    /// The peer node's control address.
    #[arg(long)]
    peer: SocketAddr,
    /// The home agent's control address.
    #[arg(long)]
    home_agent: SocketAddr,
    /// Hand a response to the peer once this many body bytes were sent.
    #[arg(long, default_value_t = u64::MAX)]
    handoff_after: u64,
}

/// What travels with a connection: how far its response got.
#[derive(Serialize, Deserialize)]
struct Progress {
    sent: u64,
    size: u64,
}

fn main() -> Result<(), dserver::Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let mut node = Node::builder()
        .ds_addr(a.ds)
        .care_of(a.coa)
        .device(Device::afxdp(&a.iface))
        .secret_file(&a.secret_file)
        .control_listen(a.control_listen)
        .peer(a.peer)
        .home_agent(a.home_agent)
        .build()?;
    loop {
        let c = node.accept()?;
        let _ = serve(&mut node, &a, c).map_err(|e| tracing::warn!("connection ended: {e}"));
    }
}

fn serve(node: &mut Node, a: &Args, c: Accepted) -> Result<(), Box<dyn std::error::Error>> {
    // A connection handed over by the peer continues where it stopped, and stays here.
    let (mut p, mut stop) = match c.state_value::<Progress>() {
        Some(p) => (p?, u64::MAX),
        None => {
            let mut lines = BufReader::new(node.stream(c.conn)).lines();
            let first = lines.next().transpose()?.unwrap_or_default(); // GET /size HTTP/1.1
            lines.map_while(Result::ok).find(|l| l.trim().is_empty()); // the other headers
            let path = first.split(' ').nth(1).unwrap_or_default();
            let size = path.trim_start_matches('/').parse().unwrap_or(1 << 20);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n");
            node.stream(c.conn).write_all(head.as_bytes())?;
            (Progress { sent: 0, size }, a.handoff_after)
        }
    };
    loop {
        let mut s = node.stream(c.conn);
        while p.sent < stop.min(p.size) {
            let end = stop.min(p.size).min(p.sent + 16384);
            let chunk: Vec<u8> = (p.sent..end).map(|i| (i % 251) as u8).collect();
            p.sent += s.write(&chunk)? as u64;
        }
        if p.sent == p.size {
            break node.close(c.conn)?;
        }
        match node.handoff_value(c.conn, a.peer, &p) {
            Ok(r) => break tracing::info!(at = p.sent, r.total_us, "handed off"),
            Err(e) => {
                tracing::warn!("kept here, serving the rest: {e}");
                stop = u64::MAX;
            }
        }
    }
    Ok(())
}
