//! `dsmsim`: run the membership protocol's deterministic simulation.
//!
//! `dsmsim --seeds 10000` runs that many seeded 60-second runs with faults and lists the seeds
//! that broke an invariant; `dsmsim --seed N --trace` replays one run exactly and prints it.

use clap::Parser;
use ds_membership::sim::{run_many, Sim, SimConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Deterministic simulation of the membership protocol (contact election, snodes, fencing)
/// under drops, duplicates, delays, reordering, partitions, crashes and restarts.
#[derive(Parser, Debug)]
#[command(name = "dsmsim", version)]
struct Cli {
    /// Replay this one seed (prints its trace hash; with --trace, the whole run).
    #[arg(long, value_name = "N", conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long, value_name = "COUNT", default_value_t = 100)]
    seeds: u64,
    /// First seed of a batch.
    #[arg(long, value_name = "N", default_value_t = 0)]
    first: u64,
    /// Simulated seconds per run.
    #[arg(long, value_name = "S", default_value_t = 60)]
    duration: u64,
    /// Backup-capable nodes.
    #[arg(long, default_value_t = 4)]
    backups: usize,
    /// Snodes.
    #[arg(long, default_value_t = 3)]
    snodes: usize,
    /// No faults (a baseline).
    #[arg(long)]
    no_faults: bool,
    /// Worker threads [default: the machine's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Print the run's trace (with --seed).
    #[arg(long)]
    trace: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Log level: -v info, -vv debug.
    #[arg(short, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = SimConfig {
        backups: cli.backups,
        snodes: cli.snodes,
        duration: Duration::from_secs(cli.duration),
        quiet: Duration::from_secs(15.min(cli.duration / 2)),
        faults: !cli.no_faults,
        trace: cli.trace,
        ..SimConfig::default()
    };
    if let Some(seed) = cli.seed {
        let r = Sim::new(seed, cfg).run();
        if cli.json {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        } else {
            for l in &r.trace {
                println!("{l}");
            }
            println!(
                "seed {seed}: trace {:016x}, {} delivered, {} lost, {} crashes, {} partitions, {} handovers, {} fenced handoffs",
                r.trace_hash, r.delivered, r.lost, r.crashes, r.partitions, r.handovers, r.fenced_handoffs
            );
            for v in &r.violations {
                println!("VIOLATION {v}");
            }
        }
        return if r.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let started = Instant::now();
    // Batches, so a long run shows progress.
    let batch = 100.min(cli.seeds.max(1));
    let mut failed = Vec::new();
    let mut done = 0;
    while done < cli.seeds {
        let n = batch.min(cli.seeds - done);
        failed.extend(run_many(cli.first + done, n, threads, &cfg));
        done += n;
        eprint!(
            "\r{done}/{} seeds, {} failed, {:.0} s",
            cli.seeds,
            failed.len(),
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "seeds": cli.seeds, "first": cli.first, "duration_s": cli.duration,
                "failed": failed.iter().map(|r| serde_json::json!({"seed": r.seed, "violations": r.violations})).collect::<Vec<_>>(),
                "wall_s": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        for r in &failed {
            println!("seed {}: {}", r.seed, r.violations.join("; "));
        }
        println!(
            "{} seeds of {} simulated s: {} with violations ({:.1} s)",
            cli.seeds,
            cli.duration,
            failed.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
