//! Reproducible evaluation of Distributed Servers.
//!
//! * [`stack`]: `dsperf stack`, throughput and latency of our TCP against the Linux kernel's
//!   and smoltcp's, each behind a TAP device in network namespaces, in the same run.
//! * [`handoff`]: `dsperf handoff`, the seed's handoff experiment in namespaces (client, home
//!   agent, two nodes), one JSON line per handoff.
//! * [`http`]: `dsperf http`, wrk against our HTTP server on AF_XDP and against nginx.
//! * [`conns`]: `dsperf conns`, the stack's cost per packet from 1 to 100,000 connections.
//! * [`api`]: `dsperf api`, what the library's connection API costs against the raw stack.
//! * [`wan`]: `dsperf wan`, how faithful the WAN emulator `dswan` is (latency, bandwidth, cost).
//! * [`plot`]: SVG charts of the results.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod bulk;
pub mod conns;
pub mod handoff;
pub mod http;
pub mod plot;
pub(crate) mod proc;
pub mod reproduce;
pub mod stack;
pub mod wan;

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Raise this process's open-file limit ([`ds_apps::sched::raise_nofile`]): wrk, a child,
/// needs one descriptor per connection, and `dsperf conns --kernel` two per connection.
pub use ds_apps::sched::raise_nofile;

/// `123`, `64K`, `256MiB`, `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 268435456 or 256MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        u => return Err(format!("unknown unit {u:?} (use K, M, G, KiB, MiB or GiB)")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err("the byte count must be positive".into());
    }
    Ok(v)
}

/// Where the binaries are: `$DS_BIN_DIR`, or next to this program (or its parent directory,
/// for a test binary in `target/<profile>/deps`).
pub fn find_program(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DS_BIN_DIR") {
        dirs.push(std::path::PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} not found in {dirs:?}: build it (cargo build -p ds-apps) or set DS_BIN_DIR"
            )
        })
}

/// A number no other call in this process returns (names of scratch directories, pins).
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Whether `name` is one of process `pid`'s scratch directories in the temp directory:
/// `dsperf-<what>-<pid>` or `dsperf-<what>-<pid>-<n>`, as the benchmarks name them (`<what>`
/// without a hyphen: `fig1`, `http`, `handoff`).
pub fn is_scratch_of(name: &str, pid: u32) -> bool {
    let Some(rest) = name.strip_prefix("dsperf-") else {
        return false;
    };
    let pid = pid.to_string();
    let mut parts = rest.split('-').skip(1);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(p), None, None) => p == pid,
        (Some(p), Some(n), None) => {
            p == pid && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Remove this process's scratch directories ([`is_scratch_of`]): what an interrupted run
/// would leave, since its guards' `Drop` does not run. Returns how many were removed.
pub fn remove_own_scratch() -> usize {
    let pid = std::process::id();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| is_scratch_of(&e.file_name().to_string_lossy(), pid))
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod scratch_tests {
    use super::is_scratch_of;

    #[test]
    fn scratch_names_are_matched_by_their_pid() {
        assert!(is_scratch_of("dsperf-fig1-4851-0", 4851));
        assert!(is_scratch_of("dsperf-http-4851", 4851));
        assert!(is_scratch_of("dsperf-handoff-4851-12", 4851));
        assert!(!is_scratch_of("dsperf-fig1-48510-0", 4851));
        assert!(!is_scratch_of("dsperf-fig1-485-0", 4851));
        assert!(!is_scratch_of("dsperf-fig1-4851-x", 4851));
        assert!(!is_scratch_of("ds-config-4851", 4851));
        assert!(!is_scratch_of("dsperf-fig1", 4851));
        assert!(!is_scratch_of("dsperf-fig1-4851-", 4851));
    }
}
