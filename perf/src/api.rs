//! `dsperf api`: what the library's connection API costs against the raw stack loop.
//!
//! The same workloads over the same in-memory link (two stacks joined by
//! [`ds_stack::device::mem_pair`], one thread, no waiting), the client always our stack used
//! raw; the server once written against the raw stack ([`Runner`] + [`ds_stack::Interface`]:
//! `tcp_accept`, `tcp_recv`, `tcp_send` on handles) and once against [`dserver::Node`]
//! (`poll`, `try_accept`, `read`, `write` on connection ids). The two alternate per repeat so
//! that drift hits both; the report gives medians and the ratio API / raw (1.0: free).
//!
//! - bulk: the client uploads `bytes`; the server reads it all. Throughput, Gbit/s.
//! - request/response: `rounds` exchanges of `msg` bytes each way on one connection.
//!   Exchanges per second.

use crate::stack::report::Stat;
use ds_stack::device::{mem_pair, MemDevice};
use ds_stack::runner::{Clock, Runner};
use ds_stack::{Config, Interface, ListenHandle, TcpHandle};
use serde::Serialize;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa1, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa1, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 80;
/// Longest a single measurement may take before it is reported as stuck.
const LIMIT: Duration = Duration::from_secs(120);

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bytes uploaded per bulk measurement.
    pub bytes: u64,
    /// Exchanges per request/response measurement.
    pub rounds: u32,
    /// Bytes of each request and each response.
    pub msg: usize,
    /// Measurements of each kind per server.
    pub repeats: usize,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    /// Bytes per bulk measurement.
    pub bytes: u64,
    /// Exchanges per request/response measurement.
    pub rounds: u32,
    /// Message size, bytes.
    pub msg: usize,
    /// Bulk throughput of the raw-stack server, Gbit/s.
    pub bulk_raw_gbps: Stat,
    /// Bulk throughput of the `dserver::Node` server, Gbit/s.
    pub bulk_api_gbps: Stat,
    /// Median API / median raw.
    pub bulk_ratio: f64,
    /// Request/response rate of the raw-stack server, exchanges/s.
    pub rr_raw_per_s: Stat,
    /// Request/response rate of the `dserver::Node` server, exchanges/s.
    pub rr_api_per_s: Stat,
    /// Median API / median raw.
    pub rr_ratio: f64,
}

/// A server under test: one connection, stepped by the caller.
trait Server {
    /// Run the stack once, without waiting.
    fn step(&mut self);
    /// Take the connection when it is there.
    fn accept(&mut self) -> bool;
    /// Read what is there (0: nothing now).
    fn read(&mut self, buf: &mut [u8]) -> usize;
    /// Queue what fits (0: no room now).
    fn write(&mut self, buf: &[u8]) -> usize;
}

/// The server written against the raw stack.
struct Raw {
    rt: Runner<MemDevice>,
    listener: ListenHandle,
    conn: Option<TcpHandle>,
}

impl Raw {
    fn new(dev: MemDevice, clock: Clock) -> Raw {
        let iface = Interface::new(Config::new(mac(0x80), vec![SERVER]), clock.now());
        let mut rt = Runner::with_clock(dev, iface, clock);
        let listener = rt
            .iface
            .tcp_listen(SocketAddrV6::new(SERVER, PORT, 0, 0), 16)
            .expect("listen");
        Raw {
            rt,
            listener,
            conn: None,
        }
    }
}

impl Server for Raw {
    fn step(&mut self) {
        self.rt.step(Duration::ZERO).expect("server step");
    }

    fn accept(&mut self) -> bool {
        if self.conn.is_none() {
            self.conn = self.rt.iface.tcp_accept(self.listener);
        }
        self.conn.is_some()
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.conn
            .and_then(|h| self.rt.iface.tcp_recv(h, buf).ok())
            .unwrap_or(0)
    }

    fn write(&mut self, buf: &[u8]) -> usize {
        self.conn
            .and_then(|h| self.rt.iface.tcp_send(h, buf).ok())
            .unwrap_or(0)
    }
}

/// The server written against the library.
struct Api {
    node: dserver::Node,
    conn: Option<dserver::ConnId>,
}

impl Api {
    fn new(dev: MemDevice) -> Api {
        let node = dserver::Node::builder()
            .ds_addr(SERVER)
            .mac(mac(0x80))
            .port(PORT)
            .build_on(Box::new(dev))
            .expect("node");
        Api { node, conn: None }
    }
}

impl Server for Api {
    fn step(&mut self) {
        self.node.poll(Duration::ZERO).expect("node poll");
    }

    fn accept(&mut self) -> bool {
        if self.conn.is_none() {
            self.conn = self.node.try_accept().map(|a| a.conn);
        }
        self.conn.is_some()
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.conn
            .and_then(|c| self.node.read(c, buf).ok())
            .unwrap_or(0)
    }

    fn write(&mut self, buf: &[u8]) -> usize {
        self.conn
            .and_then(|c| self.node.write(c, buf).ok())
            .unwrap_or(0)
    }
}

fn mac(last: u8) -> [u8; 6] {
    [0x02, 0xa1, 0, 0, 0, last]
}

/// The client stack and its connection to the server, established (the server accepted).
fn connect(srv: &mut dyn Server, clock: Clock, dev: MemDevice) -> (Runner<MemDevice>, TcpHandle) {
    let iface = Interface::new(Config::new(mac(2), vec![CLIENT]), clock.now());
    let mut cli = Runner::with_clock(dev, iface, clock);
    let h = ds_testbed::conn::dial(&mut cli, CLIENT, SocketAddrV6::new(SERVER, PORT, 0, 0));
    let start = Instant::now();
    while !srv.accept() {
        assert!(start.elapsed() < LIMIT, "no connection");
        cli.step(Duration::ZERO).expect("client step");
        srv.step();
    }
    (cli, h)
}

/// Which server to build.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Raw,
    Api,
}

fn server(kind: Kind, dev: MemDevice, clock: Clock) -> Box<dyn Server> {
    match kind {
        Kind::Raw => Box::new(Raw::new(dev, clock)),
        Kind::Api => Box::new(Api::new(dev)),
    }
}

/// Upload `bytes` to a fresh server of `kind`: Gbit/s.
fn bulk(kind: Kind, bytes: u64) -> f64 {
    let clock = Clock::new();
    let (a, b) = mem_pair(1500);
    let mut srv = server(kind, a, clock);
    let (mut cli, h) = connect(srv.as_mut(), clock, b);
    let chunk = vec![0x5au8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while got < bytes {
        assert!(
            start.elapsed() < LIMIT,
            "bulk {kind:?} stuck at {got} bytes"
        );
        while sent < bytes {
            let want = (bytes - sent).min(chunk.len() as u64) as usize;
            match cli.iface.tcp_send(h, &chunk[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n as u64,
            }
        }
        cli.step(Duration::ZERO).expect("client step");
        srv.step();
        loop {
            match srv.read(&mut buf) {
                0 => break,
                n => got += n as u64,
            }
        }
    }
    bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}

/// `rounds` exchanges of `msg` bytes with a fresh server of `kind`: exchanges per second.
fn request_response(kind: Kind, rounds: u32, msg: usize) -> f64 {
    let clock = Clock::new();
    let (a, b) = mem_pair(1500);
    let mut srv = server(kind, a, clock);
    let (mut cli, h) = connect(srv.as_mut(), clock, b);
    let _ = cli.iface.tcp_set_nodelay(h, true);
    let req = vec![0x51u8; msg];
    let mut sbuf = vec![0u8; msg.max(1)];
    let mut cbuf = vec![0u8; msg.max(1)];
    let start = Instant::now();
    for r in 0..rounds {
        let mut off = 0;
        while off < msg {
            off += cli.iface.tcp_send(h, &req[off..]).unwrap_or(0);
            cli.step(Duration::ZERO).expect("client step");
        }
        // The server echoes the request.
        let mut have = 0;
        while have < msg {
            assert!(start.elapsed() < LIMIT, "round {r} stuck ({kind:?})");
            srv.step();
            have += srv.read(&mut sbuf[have..]);
            cli.step(Duration::ZERO).expect("client step");
        }
        let mut out = 0;
        while out < msg {
            out += srv.write(&sbuf[out..msg]);
            srv.step();
        }
        let mut back = 0;
        while back < msg {
            assert!(start.elapsed() < LIMIT, "round {r} reply stuck ({kind:?})");
            cli.step(Duration::ZERO).expect("client step");
            back += cli.iface.tcp_recv(h, &mut cbuf[back..]).unwrap_or(0);
            srv.step();
        }
    }
    f64::from(rounds) / start.elapsed().as_secs_f64()
}

/// Run the comparison; `progress` hears of each measurement.
pub fn run(o: &Options, mut progress: impl FnMut(&str)) -> ApiReport {
    let (mut br, mut ba, mut rr, mut ra) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..o.repeats {
        // Alternate which goes first, so that warm-up and drift favour neither.
        let order = if i % 2 == 0 {
            [Kind::Raw, Kind::Api]
        } else {
            [Kind::Api, Kind::Raw]
        };
        for k in order {
            let g = bulk(k, o.bytes);
            let r = request_response(k, o.rounds, o.msg);
            progress(&format!(
                "repeat {}/{}: {k:?} bulk {g:.2} Gbit/s, {r:.0} exchanges/s",
                i + 1,
                o.repeats
            ));
            match k {
                Kind::Raw => {
                    br.push(g);
                    rr.push(r);
                }
                Kind::Api => {
                    ba.push(g);
                    ra.push(r);
                }
            }
        }
    }
    let stat = |v: Vec<f64>| Stat::of(v).expect("at least one repeat");
    let (br, ba, rr, ra) = (stat(br), stat(ba), stat(rr), stat(ra));
    ApiReport {
        bytes: o.bytes,
        rounds: o.rounds,
        msg: o.msg,
        bulk_ratio: ba.median / br.median,
        rr_ratio: ra.median / rr.median,
        bulk_raw_gbps: br,
        bulk_api_gbps: ba,
        rr_raw_per_s: rr,
        rr_api_per_s: ra,
    }
}

/// The report as a small table.
pub fn text(r: &ApiReport) -> String {
    format!(
        "connection API cost: in-memory link, MTU 1500, medians of {n}\n\
         {:<18} {:>14} {:>16} {:>7}\n\
         {:<18} {:>9.2} Gb/s {:>11.2} Gb/s {:>7.3}\n\
         {:<18} {:>12.0}/s {:>14.0}/s {:>7.3}\n",
        "",
        "raw stack",
        "dserver::Node",
        "ratio",
        format!("bulk ({} MiB)", r.bytes >> 20),
        r.bulk_raw_gbps.median,
        r.bulk_api_gbps.median,
        r.bulk_ratio,
        format!("req/resp ({} B)", r.msg),
        r.rr_raw_per_s.median,
        r.rr_api_per_s.median,
        r.rr_ratio,
        n = r.bulk_raw_gbps.n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workloads complete on both servers (no timing is judged here).
    #[test]
    fn both_servers_complete_both_workloads() {
        let o = Options {
            bytes: 1 << 20,
            rounds: 50,
            msg: 100,
            repeats: 1,
        };
        let mut lines = 0;
        let r = run(&o, |_| lines += 1);
        assert_eq!(lines, 2);
        assert!(r.bulk_ratio > 0.0 && r.rr_ratio > 0.0, "{r:?}");
        assert!(text(&r).contains("dserver::Node"));
    }
}
