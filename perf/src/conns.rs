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
//!
//! With `batch` > 1 the client sends requests on that many distinct connections before the
//! server's pass, which takes them all, serves them and transmits once: a server under load
//! finds several packets per poll, and its fixed costs per pass are shared (and, once the
//! stack overlaps their cache misses, so would be the misses).
//!
//! With `kernel`, the same exchanges run on the Linux kernel's TCP over IPv6 loopback, both
//! ends in this thread ([`kernel`]), as the baseline of the same run. The kernel's server cannot
//! be timed alone (loopback delivers a segment inside its sender's system call), so both are
//! also reported for the whole round, both ends: for us, both stacks' time per frame either
//! took or sent. Their absolute figures differ in kind (the kernel's include system calls and
//! loopback skips checksums); what compares is how each grows with the connections.

use crate::stack::report::Stat;
use ds_stack::runner::Clock;
use ds_stack::{Config, Interface, ListenHandle, TcpConfig, TcpHandle};
use serde::Serialize;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

pub mod cores;
pub mod kernel;

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc0, 0, 0, 0, 0, 0, 0x80);
const PORT: u16 = 80;
/// Client ports per client address, by default: every connection from one or two hosts.
pub const PORTS: usize = 50_000;
/// Bytes of a request and of its answer.
pub const MSG: usize = 64;

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Connection counts, in order.
    pub counts: Vec<usize>,
    /// Request/response exchanges timed per measurement.
    pub exchanges: usize,
    /// Measurements per count.
    pub repeats: usize,
    /// Connections per client address: fewer means more clients on the link, each a
    /// neighbour of the server (its neighbour cache holds at most
    /// [`ds_stack::ndp::MAX_ENTRIES`]).
    pub ports_per_client: usize,
    /// Exchanges per server pass, on distinct connections (1: one at a time; a pick that
    /// repeats a connection already in the batch is skipped).
    pub batch: usize,
    /// The stacks' clock advances this many nanoseconds per exchange instead of following the
    /// wall clock: under a profiler that runs the benchmark ~50x slower (callgrind), timers
    /// then turn over per exchange as at full speed (the timer wheel's 1 ms buckets shared by
    /// a thousand exchanges, not a few). `None`: the wall clock.
    pub pace_ns: Option<u64>,
    /// Measure the kernel's TCP too (over loopback; two descriptors per connection, so
    /// 100,000 connections need root to raise the open-file limit).
    pub kernel: bool,
    /// Measure the scaling across this many cores too ([`cores`]): as many threads, each
    /// with its own pair of stacks, against one thread, same run.
    pub cores: Option<usize>,
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
    /// Both stacks' time for the whole round, per frame either took or sent, nanoseconds
    /// (what the kernel baseline measures).
    pub both_ns_per_packet: Stat,
    /// Both stacks' time for the whole round per exchange, nanoseconds: unlike the time per
    /// packet, it does not move with the packets an exchange takes (the kernel's delayed ACK
    /// rides on the next request at a few connections, leaves alone at many).
    pub both_ns_per_exchange: Stat,
    /// Its median / the first point's.
    pub both_ratio_to_first: f64,
    /// Server-side frames per exchange (median run).
    pub packets_per_exchange: f64,
    /// Time to open the connections, seconds.
    pub setup_s: f64,
    /// Anonymous memory of this process in transparent huge pages after the measurement, KiB
    /// (`AnonHugePages` of `/proc/self/smaps_rollup`; `None` where it cannot be read): the
    /// connections' state in 2 MiB pages costs fewer TLB misses. THP is `madvise` on most
    /// systems; glibc's allocator asks for it with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`.
    pub huge_pages_kib: Option<u64>,
    /// The kernel's TCP at this count (with [`Options::kernel`]).
    pub kernel: Option<KernelPoint>,
    /// Why the kernel was not measured at this count, if it was asked for and was not.
    pub kernel_skipped: Option<String>,
    /// The scaling across cores at this count (with [`Options::cores`]).
    pub cores: Option<cores::CoresPoint>,
    /// Why the scaling was not measured at this count, if it was asked for and was not.
    pub cores_skipped: Option<String>,
}

/// The kernel's TCP at one connection count: both ends, over loopback.
#[derive(Debug, Clone, Serialize)]
pub struct KernelPoint {
    /// Time of the whole round (the client's writes, the server's epoll, reads and writes,
    /// the client's reads) per segment either end took or sent, nanoseconds.
    pub ns_per_packet: Stat,
    /// The same time per exchange, nanoseconds.
    pub ns_per_exchange: Stat,
    /// Time per exchange: its median / the median at the first count the kernel was measured
    /// at.
    pub ratio_to_first: f64,
    /// Segments on the wire per exchange (the kernel's `tcpi_segs_out`, both ends).
    pub packets_per_exchange: f64,
    /// Time to open the connections, seconds.
    pub setup_s: f64,
}

/// `AnonHugePages` of this process, KiB.
fn huge_pages_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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

/// Frames in flight between the two stacks, their buffers reused.
#[derive(Default)]
struct Wire {
    frames: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Wire {
    /// Take what `from` has to send; the number of frames now on the wire.
    fn take(&mut self, from: &mut Interface, now: ds_stack::Instant) -> usize {
        let Wire { frames, spare } = self;
        from.transmit(now, &mut |f: &[u8]| {
            let mut b = spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(f);
            frames.push(b);
        });
        frames.len()
    }

    /// Hand every frame on the wire to `to`, in batches as a device's receive ring would.
    fn deliver(&mut self, to: &mut Interface, now: ds_stack::Instant) {
        // As many at a time as AF_XDP hands over (the look-ahead's chunk).
        const RING: usize = ds_stack::iface::WARM_AHEAD;
        for chunk in self.frames.chunks(RING) {
            let mut batch: [&[u8]; RING] = [&[]; RING];
            for (b, f) in batch.iter_mut().zip(chunk) {
                *b = f;
            }
            to.receive_batch(now, &batch[..chunk.len()]);
        }
        self.spare.append(&mut self.frames);
    }
}

/// Both stacks and the wire between them.
struct Pair {
    clock: Clock,
    /// [`Options::pace_ns`], and the paced time elapsed, nanoseconds.
    paced: Option<(u64, u64)>,
    cli: Interface,
    srv: Interface,
    listener: ListenHandle,
    wire: Wire,
}

impl Pair {
    fn new(n: usize, ports: usize, pace_ns: Option<u64>) -> Pair {
        let clock = Clock::new();
        // Both clocks start at zero.
        let start = ds_stack::Instant::ZERO;
        let addrs = (0..n.div_ceil(ports).max(1)).map(client_addr).collect();
        let mut c = Config::new([0x02, 0xc0, 0, 0, 0, 2], addrs);
        c.tcp = cfg();
        let cli = Interface::new(c, start);
        let mut s = Config::new([0x02, 0xc0, 0, 0, 0, 1], vec![SERVER]);
        s.tcp = cfg();
        let mut srv = Interface::new(s, start);
        let listener = srv
            .tcp_listen(SocketAddrV6::new(SERVER, PORT, 0, 0), n + 1)
            .expect("listen");
        Pair {
            clock,
            paced: pace_ns.map(|ns| (ns, 0)),
            cli,
            srv,
            listener,
            wire: Wire::default(),
        }
    }

    /// The stacks' time: the wall clock's, or the paced time.
    fn now(&self) -> ds_stack::Instant {
        match self.paced {
            Some((_, ns)) => ds_stack::Instant::from_micros((ns / 1000) as i64),
            None => self.clock.now(),
        }
    }

    /// `exchanges` more exchanges have passed (paced time only).
    fn pace(&mut self, exchanges: usize) {
        if let Some((step, ns)) = &mut self.paced {
            *ns += *step * exchanges as u64;
        }
    }

    /// One round each way, untimed.
    fn exchange(&mut self) {
        self.pace(1);
        let now = self.now();
        self.cli.poll(now);
        self.wire.take(&mut self.cli, now);
        self.wire.deliver(&mut self.srv, now);
        self.srv.poll(now);
        self.wire.take(&mut self.srv, now);
        self.wire.deliver(&mut self.cli, now);
    }
}

/// Open `n` connections (the server accepts them all); the client's handles.
fn open(p: &mut Pair, n: usize, ports: usize) -> Vec<TcpHandle> {
    let mut cli = Vec::with_capacity(n);
    let mut accepted = 0;
    let remote = SocketAddrV6::new(SERVER, PORT, 0, 0);
    let start = Instant::now();
    while accepted < n {
        // A thousand handshakes at a time keep the frame queues short.
        let upto = (cli.len() + 1000).min(n);
        while cli.len() < upto {
            let i = cli.len();
            let local =
                SocketAddrV6::new(client_addr(i / ports), (10_000 + i % ports) as u16, 0, 0);
            let now = p.now();
            cli.push(p.cli.tcp_connect(now, local, remote).expect("connect"));
        }
        while accepted < cli.len() {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "handshakes stuck"
            );
            p.exchange();
            while p.srv.tcp_accept(p.listener).is_some() {
                accepted += 1;
            }
        }
    }
    cli
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

/// The server's work for one exchange, the part timed: take the frames, serve the ready
/// connections, transmit. Returns the frames taken and sent. Not inlined, so that a profiler
/// (`docs/figures/conns-cachegrind.sh`: callgrind's `--toggle-collect`) can count it alone.
#[inline(never)]
fn serve(
    p: &mut Pair,
    now: ds_stack::Instant,
    ready: &mut Vec<TcpHandle>,
    buf: &mut [u8; 4096],
) -> usize {
    let mut frames = p.wire.frames.len();
    p.wire.deliver(&mut p.srv, now);
    p.srv.poll(now);
    p.srv.tcp_take_ready(ready);
    for &h in ready.iter() {
        while let Ok(k) = p.srv.tcp_recv(h, buf) {
            if k == 0 {
                break;
            }
            let _ = p.srv.tcp_send(h, &buf[..k]);
        }
    }
    ready.clear();
    frames += p.wire.take(&mut p.srv, now);
    frames
}

/// `picks` in groups of up to `batch` distinct connections, one group per server pass: a
/// connection has one exchange in flight at a time, so a pick already in the group closes it
/// and opens the next (a scan: the CLI keeps a batch to 4,096, and this part is not timed).
/// Every pick is one exchange: at one connection, every group is that connection alone, and
/// [`Options::exchanges`] passes are timed, not one per `batch` picks (at `--batch 16`, 12,500
/// of the default 200,000: some 7 ms a measurement, the figure moving with the machine's
/// noise).
fn groups<E>(
    picks: impl Iterator<Item = usize>,
    batch: usize,
    mut each: impl FnMut(&[usize]) -> Result<(), E>,
) -> Result<(), E> {
    let batch = batch.max(1);
    let mut group: Vec<usize> = Vec::with_capacity(batch);
    for i in picks {
        if group.len() == batch || group.contains(&i) {
            each(&group)?;
            group.clear();
        }
        group.push(i);
    }
    if !group.is_empty() {
        each(&group)?;
    }
    Ok(())
}

/// One measurement of our stacks.
struct Measured {
    /// The server's time per frame it took or sent, ns.
    server_ns: f64,
    /// Frames on the wire per exchange.
    per_exchange: f64,
    /// Both stacks' time (the whole round: the client's send, the server's pass, the
    /// client's receive) per frame either stack took or sent, ns: what the kernel baseline
    /// measures.
    both_ns: f64,
    /// The same time per exchange, ns.
    both_exchange_ns: f64,
}

/// Time one request/response exchange on each connection of `cli` that `picks` names, `batch`
/// connections per server pass.
fn measure(
    p: &mut Pair,
    cli: &[TcpHandle],
    batch: usize,
    picks: impl Iterator<Item = usize>,
) -> Measured {
    let req = [0x5a_u8; MSG];
    let mut buf = [0u8; 4096];
    let mut ready = Vec::new();
    let (mut busy, mut both, mut frames, mut exchanges) =
        (Duration::ZERO, Duration::ZERO, 0usize, 0usize);
    let _ = groups::<std::convert::Infallible>(picks, batch, |group| {
        p.pace(group.len());
        let round = Instant::now();
        let now = p.now();
        for &i in group {
            exchanges += 1;
            let sent = p.cli.tcp_send(cli[i], &req).expect("client send");
            assert_eq!(sent, MSG, "client send buffer full");
        }
        p.cli.poll(now);
        p.wire.take(&mut p.cli, now);
        // The server's work, timed: take the frames, serve the ready connections, transmit.
        // The stack's clock is read before the timer starts (it is the caller's, not the
        // stack's, cost; a clock read is ~25 ns on this VM).
        let now = p.now();
        let t = Instant::now();
        frames += serve(p, now, &mut ready, &mut buf);
        busy += t.elapsed();
        p.wire.deliver(&mut p.cli, now);
        for &i in group {
            while let Ok(k) = p.cli.tcp_recv(cli[i], &mut buf) {
                if k == 0 {
                    break;
                }
            }
        }
        both += round.elapsed();
        Ok(())
    });
    Measured {
        server_ns: busy.as_nanos() as f64 / frames.max(1) as f64,
        per_exchange: frames as f64 / exchanges.max(1) as f64,
        // Every frame is sent by one stack and taken by the other.
        both_ns: both.as_nanos() as f64 / (2 * frames).max(1) as f64,
        both_exchange_ns: both.as_nanos() as f64 / exchanges.max(1) as f64,
    }
}

/// The median of `v` (with min and max), zeros when empty.
fn stat(v: Vec<f64>) -> Stat {
    Stat::of(v).unwrap_or(Stat {
        median: 0.0,
        min: 0.0,
        max: 0.0,
        n: 0,
    })
}

/// `x / of`, 0 when `of` is not positive.
pub(crate) fn ratio(x: f64, of: f64) -> f64 {
    if of > 0.0 {
        x / of
    } else {
        0.0
    }
}

/// The passes every stack is measured by at `n` connections, `pass` running one: unrecorded,
/// one exchange on every connection in order (each allocates its buffers on its first
/// exchange, a cost per connection, not per packet), then a random pass that warms the caches
/// and the client's ACK clocking; then [`Options::repeats`] recorded passes of
/// [`Options::exchanges`] random picks, the same picks for every stack. `pass` is told the
/// repeat's number (from 1; `None` while warming up). The recorded results.
fn schedule<M, E>(
    o: &Options,
    n: usize,
    mut pass: impl FnMut(Option<usize>, &mut dyn Iterator<Item = usize>) -> Result<M, E>,
) -> Result<Vec<M>, E> {
    pass(None, &mut (0..n))?;
    let mut rng = Rng(7);
    pass(
        None,
        &mut (0..o.exchanges.min(10_000)).map(|_| rng.below(n)),
    )?;
    (0..o.repeats)
        .map(|r| {
            let mut rng = Rng(11 + 2 * r as u64);
            pass(Some(r + 1), &mut (0..o.exchanges).map(|_| rng.below(n)))
        })
        .collect()
}

/// Our stacks at `n` connections.
struct Ours {
    server: Stat,
    both: Stat,
    both_exchange: Stat,
    per_exchange: f64,
    setup_s: f64,
}

/// Our stacks at `n` connections, measured.
fn ours(o: &Options, n: usize, progress: &mut impl FnMut(&str)) -> Ours {
    let t = Instant::now();
    let ports = o.ports_per_client.clamp(1, PORTS);
    let mut p = Pair::new(n, ports, o.pace_ns);
    let cli = open(&mut p, n, ports);
    let setup_s = t.elapsed().as_secs_f64();
    progress(&format!("{n} connections open in {setup_s:.1} s"));
    let batch = o.batch.max(1);
    let runs = schedule::<_, std::convert::Infallible>(o, n, |repeat, picks| {
        let m = measure(&mut p, &cli, batch, picks);
        if let Some(r) = repeat {
            progress(&format!(
                "{n} connections, repeat {r}: {:.0} ns per packet ({:.0} both stacks)",
                m.server_ns, m.both_ns
            ));
        }
        Ok(m)
    });
    let runs = runs.unwrap_or_else(|never| match never {});
    let (mut ns, mut both, mut both_x, mut per) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for m in runs {
        ns.push(m.server_ns);
        both.push(m.both_ns);
        both_x.push(m.both_exchange_ns);
        per.push(m.per_exchange);
    }
    Ours {
        server: stat(ns),
        both: stat(both),
        both_exchange: stat(both_x),
        per_exchange: stat(per).median,
        setup_s,
    }
}

/// The kernel's TCP at `n` connections, the same exchanges as [`ours`].
fn kernel(o: &Options, n: usize, progress: &mut impl FnMut(&str)) -> anyhow::Result<KernelPoint> {
    let need = kernel::descriptors(n);
    let limit = crate::raise_nofile(need)?;
    anyhow::ensure!(
        limit >= need,
        "{need} descriptors needed, the limit is {limit} (root may raise it)"
    );
    let t = Instant::now();
    let mut k = kernel::Kernel::open(n)?;
    let setup_s = t.elapsed().as_secs_f64();
    progress(&format!("kernel: {n} connections open in {setup_s:.1} s"));
    let batch = o.batch.max(1);
    let runs = schedule(o, n, |repeat, picks| {
        let m = k.measure(batch, picks)?;
        if let Some(r) = repeat {
            progress(&format!(
                "kernel: {n} connections, repeat {r}: {:.0} ns per packet, {:.0} per exchange \
                 (both ends)",
                m.ns_per_packet, m.ns_per_exchange
            ));
        }
        Ok::<_, anyhow::Error>(m)
    })?;
    let (mut ns, mut per, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for m in runs {
        ns.push(m.ns_per_packet);
        per.push(m.per_exchange);
        x.push(m.ns_per_exchange);
    }
    Ok(KernelPoint {
        ns_per_packet: stat(ns),
        ns_per_exchange: stat(x),
        ratio_to_first: 0.0,
        packets_per_exchange: stat(per).median,
        setup_s,
    })
}

/// Measure every count; `progress` gets a line per measurement.
pub fn run(o: &Options, mut progress: impl FnMut(&str)) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    for &n in &o.counts {
        let Ours {
            server: stat,
            both,
            both_exchange,
            per_exchange: per,
            setup_s,
        } = ours(o, n, &mut progress);
        let huge = huge_pages_kib();
        let (kernel, kernel_skipped) = if o.kernel {
            match kernel(o, n, &mut progress) {
                Ok(mut k) => {
                    let first = points
                        .iter()
                        .find_map(|p| p.kernel.as_ref())
                        .map_or(k.ns_per_exchange.median, |f| f.ns_per_exchange.median);
                    k.ratio_to_first = ratio(k.ns_per_exchange.median, first);
                    (Some(k), None)
                }
                Err(e) => {
                    progress(&format!("kernel: {n} connections skipped: {e:#}"));
                    (None, Some(format!("{e:#}")))
                }
            }
        } else {
            (None, None)
        };
        let (cores, cores_skipped) = match o.cores {
            Some(c) => match cores::measure_cores(o, n, c, &mut progress) {
                Ok(p) => (Some(p), None),
                Err(e) => {
                    progress(&format!("cores: {n} connections skipped: {e:#}"));
                    (None, Some(format!("{e:#}")))
                }
            },
            None => (None, None),
        };
        let first = points.first();
        points.push(Point {
            connections: n,
            ns_per_packet: stat,
            ratio_to_first: ratio(
                stat.median,
                first.map_or(stat.median, |p| p.ns_per_packet.median),
            ),
            both_ns_per_packet: both,
            both_ns_per_exchange: both_exchange,
            both_ratio_to_first: ratio(
                both_exchange.median,
                first.map_or(both_exchange.median, |p| p.both_ns_per_exchange.median),
            ),
            packets_per_exchange: per,
            setup_s,
            huge_pages_kib: huge,
            kernel,
            kernel_skipped,
            cores,
            cores_skipped,
        });
    }
    points
}

/// The human table (and, with the kernel, a second one comparing both ends).
pub fn table(o: &Options, points: &[Point]) -> String {
    let mut s = format!(
        "dsperf conns: server stack cost per packet, {} exchanges of {MSG} B per measurement, \
         {}, {} connections per client address, median of {} repeats\n\n\
         | connections | ns/packet (min–max) | × the first | packets/exchange | setup s | in huge pages | both stacks ns/exchange (× the first) |\n\
         |---|---|---|---|---|---|---|\n",
        o.exchanges,
        if o.batch > 1 {
            format!("up to {} connections per server pass", o.batch)
        } else {
            "one connection at a time".to_string()
        },
        o.ports_per_client,
        o.repeats
    );
    for p in points {
        s.push_str(&format!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.1} | {:.1} | {} | {:.0} ({:.2}) |\n",
            p.connections,
            p.ns_per_packet.median,
            p.ns_per_packet.min,
            p.ns_per_packet.max,
            p.ratio_to_first,
            p.packets_per_exchange,
            p.setup_s,
            p.huge_pages_kib
                .map_or("?".to_string(), |k| format!("{} MiB", k / 1024)),
            p.both_ns_per_exchange.median,
            p.both_ratio_to_first,
        ));
    }
    if o.kernel {
        s.push_str(
            "\nthe kernel's TCP over loopback against ours, both ends: ns per packet either end \
             took or sent, ns per exchange (× the first count's)\n\n\
             | connections | kernel ns/packet | kernel packets/exchange | kernel ns/exchange (min–max) | × the first | ours ns/packet | ours ns/exchange (min–max) | × the first | kernel / ours, per exchange |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for p in points {
            let b = &p.both_ns_per_exchange;
            let ours = format!(
                "{:.0} | {:.0} ({:.0}–{:.0}) | {:.2}",
                p.both_ns_per_packet.median, b.median, b.min, b.max, p.both_ratio_to_first
            );
            match (&p.kernel, &p.kernel_skipped) {
                (Some(k), _) => s.push_str(&format!(
                    "| {} | {:.0} | {:.1} | {:.0} ({:.0}–{:.0}) | {:.2} | {ours} | {:.1} |\n",
                    p.connections,
                    k.ns_per_packet.median,
                    k.packets_per_exchange,
                    k.ns_per_exchange.median,
                    k.ns_per_exchange.min,
                    k.ns_per_exchange.max,
                    k.ratio_to_first,
                    ratio(k.ns_per_exchange.median, b.median),
                )),
                (None, why) => s.push_str(&format!(
                    "| {} | skipped: {} | | | | {ours} | |\n",
                    p.connections,
                    why.as_deref().unwrap_or("not measured"),
                )),
            }
        }
    }
    if let Some(c) = o.cores {
        s.push_str(&format!(
            "\nscaling across cores, shared nothing: {c} threads, each on its own CPU with its \
             own client and server stacks and its share of the connections, against one thread \
             with all of them, same run; exchanges per second (min–max)\n\n\
             | connections | one thread | {c} threads | × one | one thread, 1/{c} of the connections | efficiency: {c} threads / ({c} × that) | server's share of the threads' time (the rest: the client's) |\n\
             |---|---|---|---|---|---|---|\n"
        ));
        for p in points {
            match (&p.cores, &p.cores_skipped) {
                (Some(k), _) => s.push_str(&format!(
                    "| {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} | {:.2} | {:.0} % |\n",
                    p.connections,
                    k.one_per_s.median,
                    k.one_per_s.min,
                    k.one_per_s.max,
                    k.all_per_s.median,
                    k.all_per_s.min,
                    k.all_per_s.max,
                    k.ratio,
                    k.share_per_s.median,
                    k.efficiency,
                    100.0 * k.server_share,
                )),
                (None, why) => s.push_str(&format!(
                    "| {} | skipped: {} | | | | | |\n",
                    p.connections,
                    why.as_deref().unwrap_or("not measured"),
                )),
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2,000 exchanges per measurement.
    fn options(
        counts: Vec<usize>,
        repeats: usize,
        ports_per_client: usize,
        batch: usize,
    ) -> Options {
        Options {
            counts,
            exchanges: 2_000,
            repeats,
            ports_per_client,
            batch,
            pace_ns: None,
            kernel: false,
            cores: None,
        }
    }

    #[test]
    fn small_counts_measure() {
        let o = options(vec![1, 100], 2, PORTS, 1);
        let pts = run(&o, |_| {});
        assert_eq!(pts.len(), 2);
        for p in &pts {
            assert!(p.ns_per_packet.median > 0.0);
            // A request and its answer, plus the ACK of an answer unless it rode on the next
            // request (always, with one connection).
            assert!((1.9..=3.1).contains(&p.packets_per_exchange), "{p:?}");
        }
        assert!(table(&o, &pts).contains("| 100 |"));
        // The plot: one file, its four lines named in its legend.
        let dir = std::env::temp_dir().join(format!("ds-conns-plot-{}", std::process::id()));
        let svg = crate::plot::write_conns_svg(&o, &pts, &dir).expect("plot");
        assert_legend(
            &dir,
            &svg,
            &[
                "median",
                "fastest measurement",
                "slowest measurement",
                "flat: 1 connection(s)&apos; median",
            ],
        );
    }

    #[test]
    fn cores_scaling_measures() {
        let mut o = options(vec![200], 2, PORTS, 16);
        o.cores = Some(2);
        let pts = run(&o, |_| {});
        let cpus = crate::stack::client::allowed_cpus().map_or(1, |c| c.len());
        match (&pts[0].cores, &pts[0].cores_skipped) {
            (Some(c), _) => {
                assert!(
                    c.one_per_s.median > 0.0 && c.all_per_s.median > 0.0,
                    "{c:?}"
                );
                assert!(
                    c.ratio > 0.0 && (0.0..=1.0).contains(&c.server_share),
                    "{c:?}"
                );
                assert!(c.share_per_s.median > 0.0 && c.efficiency > 0.0, "{c:?}");
            }
            (None, why) if cpus < 2 => println!("SKIP: cores_scaling_measures: {why:?}"),
            (None, why) => panic!("{cpus} CPUs, not measured: {why:?}"),
        }
        assert!(table(&o, &pts).contains("scaling across cores"));
        if pts[0].cores.is_some() {
            let dir = std::env::temp_dir().join(format!("ds-cores-plot-{}", std::process::id()));
            let svg = crate::plot::write_conns_cores_svg(&o, &pts, &dir)
                .expect("plot")
                .expect("measured");
            assert_legend(
                &dir,
                &svg,
                &[
                    "2 threads, each its share of the connections",
                    "2 x one thread alone with its share",
                    "one thread, all the connections",
                ],
            );
        }
    }

    /// `svg`'s legend names every one of `labels`; `dir` is removed.
    fn assert_legend(dir: &std::path::Path, svg: &std::path::Path, labels: &[&str]) {
        let text = std::fs::read_to_string(svg).expect("svg");
        let _ = std::fs::remove_dir_all(dir);
        // Each legend entry is a text element's whole content (plotters: on a line of its own).
        for label in labels {
            assert!(
                text.lines().any(|l| l.trim() == *label),
                "{label} missing from the plot"
            );
        }
    }

    /// Paced time (for a profiler): the exchanges measure as under the wall clock, and the
    /// stacks' clock advances by the pace per exchange, whatever the wall clock does.
    #[test]
    fn paced_time_measures() {
        let mut o = options(vec![100], 1, PORTS, 4);
        o.pace_ns = Some(1_000);
        let pts = run(&o, |_| {});
        assert!(pts[0].ns_per_packet.median > 0.0);
        assert!(
            (2.9..=3.1).contains(&pts[0].packets_per_exchange),
            "{:?}",
            pts[0]
        );
        let mut p = Pair::new(10, PORTS, Some(1_000));
        let start = p.now();
        let cli = open(&mut p, 10, PORTS);
        measure(&mut p, &cli, 1, 0..10);
        // 10 exchanges and the handshakes' rounds, a microsecond each: milliseconds at most.
        let spent = p.now() - start;
        assert!(spent >= std::time::Duration::from_micros(10), "{spent:?}");
        assert!(spent < std::time::Duration::from_millis(1), "{spent:?}");
    }

    /// One client address per 4 connections: 25 neighbours of the server, each exchange
    /// still one request, one answer and an ACK.
    #[test]
    fn many_clients_on_the_link_measure() {
        let o = options(vec![100], 1, 4, 1);
        let pts = run(&o, |_| {});
        assert!(
            (2.9..=3.1).contains(&pts[0].packets_per_exchange),
            "{pts:?}"
        );
    }

    /// Sixteen exchanges per server pass: every request answered (the client's send buffer
    /// would fill otherwise), a request, an answer and an ACK each, and at one connection the
    /// batch is that one connection.
    #[test]
    fn batches_measure() {
        let o = options(vec![1, 200], 1, PORTS, 16);
        let pts = run(&o, |_| {});
        assert!(
            (1.9..=2.1).contains(&pts[0].packets_per_exchange),
            "{pts:?}"
        );
        assert!(
            (2.5..=3.1).contains(&pts[1].packets_per_exchange),
            "{pts:?}"
        );
        assert!(table(&o, &pts).contains("up to 16 connections per server pass"));
    }

    /// Every pick is an exchange, in order, in groups of distinct connections no larger than
    /// the batch: a repeat closes its group rather than being dropped.
    #[test]
    fn every_pick_is_one_exchange() {
        let split = |picks: &[usize], batch| {
            let mut out: Vec<Vec<usize>> = Vec::new();
            let _ = groups::<()>(picks.iter().copied(), batch, |g| {
                out.push(g.to_vec());
                Ok(())
            });
            out
        };
        assert_eq!(split(&[0; 5], 16), vec![vec![0]; 5]);
        assert_eq!(
            split(&[1, 2, 3, 1, 4, 5, 6], 3),
            vec![vec![1, 2, 3], vec![1, 4, 5], vec![6]]
        );
        assert_eq!(
            split(&[1, 2, 2, 3], 0),
            vec![vec![1], vec![2], vec![2], vec![3]]
        );
        assert!(split(&[], 4).is_empty());
        let mut rng = Rng(3);
        let picks: Vec<usize> = (0..5_000).map(|_| rng.below(50)).collect();
        let out = split(&picks, 16);
        assert_eq!(out.concat(), picks);
        for g in &out {
            assert!(!g.is_empty() && g.len() <= 16);
            let mut d = g.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), g.len(), "{g:?}");
        }
    }

    /// The kernel's TCP as the baseline: the same exchanges over loopback, both ends counted,
    /// a figure per count beside ours, in the second table and in its own plot.
    #[test]
    fn kernel_baseline_measures() {
        let mut o = options(vec![1, 100], 1, PORTS, 16);
        o.kernel = true;
        let pts = run(&o, |_| {});
        for p in &pts {
            let Some(k) = &p.kernel else {
                panic!("kernel not measured: {:?}", p.kernel_skipped)
            };
            assert!(k.ns_per_packet.median > 0.0, "{p:?}");
            // A request and its answer; the ACK of the answer rides on the next request or
            // leaves on its own (the delayed-ACK timer): between 2 and 3 segments.
            assert!((1.9..=3.1).contains(&k.packets_per_exchange), "{p:?}");
            let per_exchange = k.ns_per_packet.median * 2.0 * k.packets_per_exchange;
            let e = k.ns_per_exchange.median;
            assert!(
                (0.5 * e..=2.0 * e).contains(&per_exchange),
                "per packet and per exchange disagree: {p:?}"
            );
            assert!(p.both_ns_per_exchange.median > 0.0, "{p:?}");
        }
        assert_eq!(pts[0].kernel.as_ref().map(|k| k.ratio_to_first), Some(1.0));
        let t = table(&o, &pts);
        assert!(t.contains("the kernel's TCP over loopback"), "{t}");
        assert!(!t.contains("skipped"), "{t}");
        let dir = std::env::temp_dir().join(format!("ds-conns-kplot-{}", std::process::id()));
        let svg = crate::plot::write_conns_kernel_svg(&o, &pts, &dir)
            .expect("plot")
            .expect("a kernel plot");
        assert_legend(
            &dir,
            &svg,
            &[
                "ours, both stacks",
                "the kernel&apos;s TCP, both ends (loopback)",
                "flat",
            ],
        );
    }
}
