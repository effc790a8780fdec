//! `dsperf conns --cores N`: whether the stack scales across cores when nothing is shared.
//!
//! A node serves several receive queues with one interface per queue, each on its own core,
//! sharing nothing (issue 13, item 3). On this 2-core machine a real client (wrk) needs a core
//! of its own, so the AF_XDP server's two-queue rate cannot show the server's scaling
//! (`dsperf http --queues 2`). Here each of N threads, pinned to its own CPU, runs a client
//! stack and a server stack of its own in memory (the same exchanges as `dsperf conns`, the
//! connections split evenly), and the threads' exchanges together are timed against one
//! thread running all the connections alone, and against one thread running one thread's
//! share alone, in the same run. The first ratio is the node's gain (each core's caches then
//! hold a smaller working set, so it may pass N); the second, divided by N, is the threads'
//! efficiency: anything the stacks shared between threads (a lock, a counter, a cache line
//! written by both, the allocator), or the machine did (its last-level cache, memory, the
//! host cores under the vCPUs), shows as less than 1. The client's share of every core is
//! stated: it is the part of each thread's time that is not the server's.

use super::{measure, open, schedule, stat, Options, Pair, PORTS};
use crate::stack::client::{allowed_cpus, pin_to_cpu};
use crate::stack::report::Stat;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Barrier;
use std::time::Instant;

/// One count's scaling result.
#[derive(Debug, Clone, Serialize)]
pub struct CoresPoint {
    /// Threads (one core each) in the scaled measurement.
    pub cores: usize,
    /// Exchanges per second with one thread and every connection (median, min, max).
    pub one_per_s: Stat,
    /// Exchanges per second of all `cores` threads together, each with its share of the
    /// connections.
    pub all_per_s: Stat,
    /// `all_per_s` / `one_per_s`, medians: the node's gain from the cores, which includes
    /// each core's caches holding a working set `cores` times smaller.
    pub ratio: f64,
    /// Exchanges per second with one thread and one thread's share of the connections.
    pub share_per_s: Stat,
    /// `all_per_s` / (`cores` × `share_per_s`), medians: 1 when the threads do not slow each
    /// other down at all (the same work per thread, alone or together); what is under 1 is
    /// what they share (the stacks, the allocator, or the machine: the last-level cache,
    /// memory, the vCPUs' host cores).
    pub efficiency: f64,
    /// The server stacks' share of the threads' time (the rest is the client stacks' and the
    /// in-memory wire's: the client's share of the cores).
    pub server_share: f64,
}

/// One repeat of one thread.
struct Run {
    exchanges: usize,
    seconds: f64,
    server_seconds: f64,
}

/// Exchanges per second and server time share for every repeat, `threads` threads on CPUs
/// 0.. with `n` connections split between them.
fn scaled(o: &Options, n: usize, threads: usize) -> anyhow::Result<Vec<(f64, f64)>> {
    let cpus = allowed_cpus()?;
    anyhow::ensure!(
        cpus.len() >= threads,
        "{threads} threads need as many CPUs; this process may use {}",
        cpus.len()
    );
    let barrier = Barrier::new(threads);
    let runs: Vec<anyhow::Result<Vec<Run>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, cpu) = (&barrier, cpus[t]);
                // The first threads take one more when `n` does not split evenly.
                let mine = n / threads + usize::from(t < n % threads);
                s.spawn(move || one_thread(o, mine.max(1), cpu, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a measuring thread panicked")))
            })
            .collect()
    });
    let runs = runs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((0..o.repeats)
        .map(|r| {
            let exchanges: usize = runs.iter().map(|t| t[r].exchanges).sum();
            // Together they took as long as the slowest of them.
            let wall = runs.iter().map(|t| t[r].seconds).fold(0.0, f64::max);
            let busy: f64 = runs.iter().map(|t| t[r].seconds).sum();
            let server: f64 = runs.iter().map(|t| t[r].server_seconds).sum();
            (exchanges as f64 / wall.max(1e-9), server / busy.max(1e-9))
        })
        .collect())
}

/// One thread's part: its own pair of stacks with `n` connections, pinned to CPU `cpu`, every
/// recorded repeat started together with the other threads'. A thread that fails (its pinning,
/// or a panic while it opens its connections or measures) still meets the others at every
/// repeat's start, so that none waits for it forever, and returns the failure at the end.
fn one_thread(o: &Options, n: usize, cpu: usize, barrier: &Barrier) -> anyhow::Result<Vec<Run>> {
    let caught = |what: &str| anyhow::anyhow!("{what} panicked (CPU {cpu}, {n} connections)");
    let mut failed = pin_to_cpu(cpu).err().map(anyhow::Error::from);
    let ports = o.ports_per_client.clamp(1, PORTS);
    let setup = match failed {
        Some(_) => None,
        None => catch_unwind(AssertUnwindSafe(|| {
            let mut p = Pair::new(n, ports, o.pace_ns);
            let cli = open(&mut p, n, ports);
            (p, cli)
        }))
        .map_err(|_| failed = Some(caught("opening the connections")))
        .ok(),
    };
    let Some((mut p, cli)) = setup else {
        for _ in 0..o.repeats {
            barrier.wait();
        }
        return Err(failed.unwrap_or_else(|| caught("setting up")));
    };
    let batch = o.batch.max(1);
    let mut runs = Vec::with_capacity(o.repeats);
    let r = schedule::<_, std::convert::Infallible>(o, n, |repeat, picks| {
        if repeat.is_some() {
            barrier.wait();
        }
        if failed.is_some() {
            return Ok(());
        }
        let t = Instant::now();
        let mut exchanges = 0;
        let picks = picks.inspect(|_| exchanges += 1);
        match catch_unwind(AssertUnwindSafe(|| measure(&mut p, &cli, batch, picks))) {
            Ok(m) if repeat.is_some() => runs.push(Run {
                exchanges,
                seconds: t.elapsed().as_secs_f64(),
                server_seconds: m.server_ns * m.per_exchange * exchanges as f64 / 1e9,
            }),
            Ok(_) => {}
            Err(_) => failed = Some(caught("measuring")),
        }
        Ok(())
    });
    r.unwrap_or_else(|never| match never {});
    match failed {
        Some(e) => Err(e),
        None => Ok(runs),
    }
}

/// Scaling at `n` connections: one thread with all of them, one thread with one thread's
/// share, then `cores` threads, repeats each.
pub fn measure_cores(
    o: &Options,
    n: usize,
    cores: usize,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<CoresPoint> {
    let one = scaled(o, n, 1)?;
    progress(&format!(
        "cores: {n} connections, one thread: {:.0} exchanges/s",
        stat(one.iter().map(|x| x.0).collect()).median
    ));
    let share = scaled(o, n.div_ceil(cores), 1)?;
    let all = scaled(o, n, cores)?;
    let (one_per_s, share_per_s, all_per_s) = (
        stat(one.iter().map(|x| x.0).collect()),
        stat(share.iter().map(|x| x.0).collect()),
        stat(all.iter().map(|x| x.0).collect()),
    );
    let server_share = stat(all.iter().map(|x| x.1).collect()).median;
    progress(&format!(
        "cores: {n} connections, {cores} threads: {:.0} exchanges/s, {:.2}x one",
        all_per_s.median,
        super::ratio(all_per_s.median, one_per_s.median)
    ));
    Ok(CoresPoint {
        cores,
        ratio: super::ratio(all_per_s.median, one_per_s.median),
        efficiency: super::ratio(all_per_s.median, cores as f64 * share_per_s.median),
        one_per_s,
        share_per_s,
        all_per_s,
        server_share,
    })
}
