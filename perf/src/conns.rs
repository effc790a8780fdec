//! `dsperf conns`: the server stack's cost per packet as the number of open connections grows
//! (1, 1,000, 10,000, 100,000 by default).
//!
//! Two of our stacks exchange frames in memory (no device, no thread, no waiting): a client
//! stack opens N connections to a server stack (small buffers: 4 KiB each way, so 100,000
//! connections fit), then, on one connection picked at random at a time, the client sends a
//! 64-byte request and the server's application reads it and answers 64 bytes. Only the
//! server's work is timed: taking the frames (the request, and the client's ACK of the
//! previous answer, which rides on the request when it is the same connection), running its
//! timers, the application's read and write, and building its frames. The figure is that time
//! divided by the frames the server took and sent. Flat across N means no per-connection scan
//! on the fast path; what grows is the cache misses of a larger working set.

use crate::stack::report::Stat;
use ds_stack::runner::Clock;
use ds_stack::{Config, Interface, ListenHandle, TcpConfig, TcpHandle};
use serde::Serialize;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc0, 0, 0, 0, 0, 0, 0x80);
const PORT: u16 = 80;
/// Client ports per client address.
const PORTS: u32 = 50_000;
/// Connections served per timed round: one, so that every count has the same per-round work
/// (with several, one connection would take a batch of requests at once).
const BATCH: usize = 1;
const MSG: usize = 64;

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Connection counts, in order.
    pub counts: Vec<usize>,
    /// Request/response exchanges timed per measurement.
    pub exchanges: usize,
    /// Measurements per count.
    pub repeats: usize,
}

/// One connection count's result.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Open connections.
    pub connections: usize,
    /// Server time per frame (taken or sent), nanoseconds.
    pub ns_per_packet: Stat,
    /// Median of this point / median of the first point.
    pub ratio_to_first: f64,
    /// Server-side frames per exchange (median run).
    pub packets_per_exchange: f64,
    /// Time to open the connections, seconds.
    pub setup_s: f64,
}

fn cfg() -> TcpConfig {
    TcpConfig {
        send_buf: 4096,
        recv_buf: 4096,
        notsent_lowat: None,
        // Every segment is answered at once: the frame count per exchange is fixed.
        delayed_ack: None,
        nagle: false,
        ..TcpConfig::default()
    }
}

fn client_addr(k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xc0, 0, 0, 0, 0, 1, k as u16)
}

/// Both stacks and the frames in flight between them.
struct Pair {
    clock: Clock,
    cli: Interface,
    srv: Interface,
    listener: ListenHandle,
    frames: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Pair {
    fn new(n: usize) -> Pair {
        let clock = Clock::new();
        let addrs = (0..n.div_ceil(PORTS as usize).max(1))
            .map(client_addr)
            .collect();
        let mut c = Config::new([0x02, 0xc0, 0, 0, 0, 2], addrs);
        c.tcp = cfg();
        let cli = Interface::new(c, clock.now());
        let mut s = Config::new([0x02, 0xc0, 0, 0, 0, 1], vec![SERVER]);
        s.tcp = cfg();
        let mut srv = Interface::new(s, clock.now());
        let listener = srv
            .tcp_listen(SocketAddrV6::new(SERVER, PORT, 0, 0), n + 1)
            .expect("listen");
        Pair {
            clock,
            cli,
            srv,
            listener,
            frames: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Move what `from` has to send into `to`; the number of frames.
    fn carry(
        frames: &mut Vec<Vec<u8>>,
        spare: &mut Vec<Vec<u8>>,
        from: &mut Interface,
        to: &mut Interface,
        now: ds_stack::Instant,
    ) -> usize {
        from.transmit(now, &mut |f: &[u8]| {
            let mut b = spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(f);
            frames.push(b);
        });
        let n = frames.len();
        for f in frames.drain(..) {
            to.receive(now, &f);
            spare.push(f);
        }
        n
    }

    fn carry_to_server(&mut self) -> usize {
        let now = self.clock.now();
        self.cli.poll(now);
        Self::carry(
            &mut self.frames,
            &mut self.spare,
            &mut self.cli,
            &mut self.srv,
            now,
        )
    }

    fn carry_to_client(&mut self) -> usize {
        let now = self.clock.now();
        self.srv.poll(now);
        Self::carry(
            &mut self.frames,
            &mut self.spare,
            &mut self.srv,
            &mut self.cli,
            now,
        )
    }
}

/// Open `n` connections; the client's and the server's handles, index for index.
fn open(p: &mut Pair, n: usize) -> (Vec<TcpHandle>, Vec<TcpHandle>) {
    let mut cli = Vec::with_capacity(n);
    let mut srv = Vec::with_capacity(n);
    let remote = SocketAddrV6::new(SERVER, PORT, 0, 0);
    let start = Instant::now();
    while srv.len() < n {
        // A thousand handshakes at a time keep the frame queues short.
        let upto = (cli.len() + 1000).min(n);
        while cli.len() < upto {
            let i = cli.len();
            let local = SocketAddrV6::new(
                client_addr(i / PORTS as usize),
                (10_000 + i % PORTS as usize) as u16,
                0,
                0,
            );
            let now = p.clock.now();
            cli.push(p.cli.tcp_connect(now, local, remote).expect("connect"));
        }
        while srv.len() < cli.len() {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "handshakes stuck"
            );
            p.carry_to_server();
            p.carry_to_client();
            while let Some(h) = p.srv.tcp_accept(p.listener) {
                srv.push(h);
            }
        }
    }
    // The server accepts in handshake order; pair the handles by the client's port.
    let mut by_port: Vec<(SocketAddrV6, TcpHandle)> = srv
        .iter()
        .map(|&h| (p.srv.tcp_endpoints(h).expect("endpoints").1, h))
        .collect();
    by_port.sort_by_key(|(a, _)| (*a.ip(), a.port()));
    let srv = cli
        .iter()
        .map(|&h| {
            let local = p.cli.tcp_endpoints(h).expect("endpoints").0;
            let k = by_port
                .binary_search_by_key(&(*local.ip(), local.port()), |(a, _)| (*a.ip(), a.port()))
                .expect("accepted");
            by_port[k].1
        })
        .collect();
    (cli, srv)
}

/// A small deterministic generator (xorshift64*): the same picks on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Time `exchanges` request/response exchanges: (server ns per frame, frames per exchange).
fn measure(
    p: &mut Pair,
    cli: &[TcpHandle],
    srv: &[TcpHandle],
    exchanges: usize,
    seed: u64,
) -> (f64, f64) {
    let n = cli.len();
    let batch = BATCH.min(n);
    let mut rng = Rng(seed | 1);
    let req = [0x5a_u8; MSG];
    let mut buf = [0u8; 4096];
    let mut ready = Vec::new();
    let mut picked = Vec::with_capacity(batch);
    let (mut busy, mut frames, mut done) = (Duration::ZERO, 0usize, 0usize);
    while done < exchanges {
        picked.clear();
        while picked.len() < batch {
            let i = rng.below(n);
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        let now = p.clock.now();
        for &i in &picked {
            let sent = p.cli.tcp_send(cli[i], &req).expect("client send");
            assert_eq!(sent, MSG, "client send buffer full");
        }
        p.cli.poll(now);
        p.cli.transmit(now, &mut |f: &[u8]| {
            let mut b = p.spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(f);
            p.frames.push(b);
        });
        // The server's work, timed: take the frames, serve the ready connections, transmit.
        // The stack's clock is read before the timer starts (it is the caller's, not the
        // stack's, cost; a clock read is ~25 ns on this VM).
        let now = p.clock.now();
        let t = Instant::now();
        frames += p.frames.len();
        for f in p.frames.drain(..) {
            p.srv.receive(now, &f);
            p.spare.push(f);
        }
        p.srv.poll(now);
        p.srv.tcp_take_ready(&mut ready);
        for &h in &ready {
            while let Ok(k) = p.srv.tcp_recv(h, &mut buf) {
                if k == 0 {
                    break;
                }
                let _ = p.srv.tcp_send(h, &buf[..k]);
            }
        }
        ready.clear();
        p.srv.transmit(now, &mut |f: &[u8]| {
            let mut b = p.spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(f);
            p.frames.push(b);
        });
        frames += p.frames.len();
        busy += t.elapsed();
        for f in p.frames.drain(..) {
            p.cli.receive(now, &f);
            p.spare.push(f);
        }
        for &i in &picked {
            while let Ok(k) = p.cli.tcp_recv(cli[i], &mut buf) {
                if k == 0 {
                    break;
                }
            }
        }
        done += batch;
    }
    debug_assert_eq!(srv.len(), n);
    (
        busy.as_nanos() as f64 / frames.max(1) as f64,
        frames as f64 / done as f64,
    )
}

/// Measure every count; `progress` gets a line per measurement.
pub fn run(o: &Options, mut progress: impl FnMut(&str)) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    for &n in &o.counts {
        let t = Instant::now();
        let mut p = Pair::new(n);
        let (cli, srv) = open(&mut p, n);
        let setup_s = t.elapsed().as_secs_f64();
        progress(&format!("{n} connections open in {setup_s:.1} s"));
        // One unrecorded pass warms the caches and the client's ACK clocking.
        measure(&mut p, &cli, &srv, o.exchanges.min(10_000), 7);
        let mut ns = Vec::new();
        let mut per = Vec::new();
        for r in 0..o.repeats {
            let (x, f) = measure(&mut p, &cli, &srv, o.exchanges, 11 + r as u64);
            progress(&format!(
                "{n} connections, repeat {}: {x:.0} ns per packet",
                r + 1
            ));
            ns.push(x);
            per.push(f);
        }
        let stat = Stat::of(ns).unwrap_or(Stat {
            median: 0.0,
            min: 0.0,
            max: 0.0,
            n: 0,
        });
        let first = points
            .first()
            .map_or(stat.median, |p| p.ns_per_packet.median);
        points.push(Point {
            connections: n,
            ns_per_packet: stat,
            ratio_to_first: if first > 0.0 {
                stat.median / first
            } else {
                0.0
            },
            packets_per_exchange: Stat::of(per).map_or(0.0, |s| s.median),
            setup_s,
        });
    }
    points
}

/// The human table.
pub fn table(o: &Options, points: &[Point]) -> String {
    let mut s = format!(
        "dsperf conns: server stack cost per packet, {} exchanges of {MSG} B per measurement, \
         one connection at a time, median of {} repeats\n\n\
         | connections | ns/packet (min–max) | × the first | packets/exchange | setup s |\n\
         |---|---|---|---|---|\n",
        o.exchanges, o.repeats
    );
    for p in points {
        s.push_str(&format!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.1} | {:.1} |\n",
            p.connections,
            p.ns_per_packet.median,
            p.ns_per_packet.min,
            p.ns_per_packet.max,
            p.ratio_to_first,
            p.packets_per_exchange,
            p.setup_s
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_counts_measure() {
        let o = Options {
            counts: vec![1, 100],
            exchanges: 2_000,
            repeats: 2,
        };
        let pts = run(&o, |_| {});
        assert_eq!(pts.len(), 2);
        for p in &pts {
            assert!(p.ns_per_packet.median > 0.0);
            // A request and its answer, plus the ACK of an answer unless it rode on the next
            // request (always, with one connection).
            assert!((1.9..=3.1).contains(&p.packets_per_exchange), "{p:?}");
        }
        assert!(table(&o, &pts).contains("| 100 |"));
    }
}
