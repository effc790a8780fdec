//! Network-namespace testbed for the ds-* crates' tests and benchmarks.
//!
//! Everything here builds throw-away network topologies out of Linux network
//! namespaces, veth pairs and bridges, and impairs links with nftables
//! (random loss) and tc (rate limits). Every resource is owned by an RAII
//! guard and removed on drop, including during a panic unwind, and stale
//! namespaces left behind by crashed runs are swept on the first namespace
//! creation of each process.
//!
//! All of it needs root (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`); tests should
//! start with [`require_root`] and return early when it says no.
//!
//! Addresses: topologies built for the project only use ULA addresses
//! (`fd00::/8`); [`ping6`] refuses any destination outside `fc00::/7` or
//! loopback so that no test traffic can ever leave the machine.
//!
//! ```no_run
//! use ds_testbed::{add_addr, ping6, veth, wait_addr_usable, Netns, PingOpts};
//! use std::time::Duration;
//!
//! # fn main() -> anyhow::Result<()> {
//! if !ds_testbed::require_root("doc_example") {
//!     return Ok(());
//! }
//! let a = Netns::new("a")?;
//! let b = Netns::new("b")?;
//! veth(&a, "eth0", &b, "eth0")?;
//! add_addr(&a, "eth0", "fd00::1/64")?;
//! add_addr(&b, "eth0", "fd00::2/64")?;
//! wait_addr_usable(&a, "eth0", "fd00::1", Duration::from_secs(5))?;
//! let stats = ping6(&a, "fd00::2".parse()?, &PingOpts::default())?;
//! assert_eq!(stats.received, stats.sent);
//! // A socket created inside `run` stays in that namespace.
//! let listener = b.run(|| std::net::TcpListener::bind("[fd00::2]:0"))?;
//! # drop(listener);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod conn;
mod counters;
mod frames;
mod impair;
pub mod interop;
mod link;
mod netns;
mod ping;
pub mod simlan;
mod stackhost;
pub mod topo;
mod xdphost;

pub use counters::{
    all_counters, counter_delta, moved_tcp_counters, parse_pairs, parse_snmp6, tcp_counters,
};
pub use frames::FrameQueue;
pub use impair::{Direction, Loss, LossCounts, Rate, Tbf};
pub use link::{
    add_addr, add_route, bridge, disable_ethtool_offloads, disable_offload, link_drops, link_stats,
    set_down, set_ethtool_features, set_up, veth, veth_queues, wait_addr_usable,
    wait_tcp_listening,
};
pub use netns::{remove_own_namespaces, sweep_stale_namespaces, Child, Netns, NETNS_DIR};
pub use ping::{ping6, PingOpts, PingStats};
pub use stackhost::{KernelPeer, PatternStream, StackHost};
pub use xdphost::XdpHost;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Maximum length of a Linux interface name (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Returns `true` when the process runs with effective uid 0.
///
/// Otherwise prints `SKIP: <test_name> needs root` to both stderr and stdout
/// (so it shows up with and without `--nocapture`) and returns `false`; the
/// caller is expected to return early, which makes the test pass vacuously.
pub fn require_root(test_name: &str) -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    eprintln!("SKIP: {test_name} needs root");
    println!("SKIP: {test_name} needs root");
    false
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`require_root`], then the machine to this test alone among the tests of its binary that
/// ask the same (held until the guard drops): scenarios whose timing matters must not share
/// the two cores with each other. `None`: not root, skip.
pub fn exclusive(test_name: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    require_root(test_name).then(|| ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

static IFNAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns an interface name, unique among all live processes using this
/// crate, that is at most [`IFNAME_MAX`] (15) characters long.
///
/// The name is `<prefix>-<pid base36>-<counter base36>`; the prefix is
/// reduced to ASCII alphanumerics and truncated as needed to fit. Interface
/// names only need to be unique within one namespace, so inside namespaces
/// made by [`Netns::new`] plain names such as `eth0` are fine too; this helper
/// is for when names may meet in a shared namespace.
pub fn unique_ifname(prefix: &str) -> String {
    let n = IFNAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("-{}-{}", base36(u64::from(std::process::id())), base36(n));
    let room = IFNAME_MAX.saturating_sub(suffix.len());
    let mut name: String = prefix
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(room)
        .collect();
    if name.is_empty() {
        name.push('i');
    }
    name.push_str(&suffix);
    // The suffix alone is at most 1 + 5 + 1 + 13 characters for absurd counter
    // values; keep the most significant (unique) tail in that case.
    if name.len() > IFNAME_MAX {
        name = name[name.len() - IFNAME_MAX..].to_string();
    }
    name
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh directory under the system temp directory, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `ds-<tag>-<pid>` (emptied first if a crashed run left it).
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        Self::at(std::env::temp_dir().join(format!("ds-{tag}-{}", std::process::id())))
    }

    /// The directory `path`, created (emptied first if it exists), removed on drop: for a
    /// name of the caller's own (a benchmark's `dsperf-<what>-<pid>-<n>`).
    pub fn at(path: PathBuf) -> std::io::Result<TempDir> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ifnames_are_short_and_unique() {
        let mut seen = HashSet::new();
        for prefix in ["veth", "a-very-long-prefix-indeed", "", "br", "tap0"] {
            for _ in 0..500 {
                let n = unique_ifname(prefix);
                assert!(n.len() <= IFNAME_MAX, "{n} too long");
                assert!(!n.contains('/') && !n.contains(' '));
                assert!(seen.insert(n.clone()), "duplicate {n}");
            }
        }
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(4_194_304), "2hwcg");
    }
}
