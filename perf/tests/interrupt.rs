//! `dsperf` interrupted mid-run: its daemons and namespaces do not outlive it.

use ds_testbed::{exclusive, NETNS_DIR};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The namespaces `ds-*-<pid>-*` of process `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let tag = format!("-{pid}-");
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ds-") && n.contains(&tag))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes inside namespace `ns`.
fn members(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The scratch directories of process `pid` in the temp directory.
fn scratch_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| ds_perf::is_scratch_of(n, pid))
        .collect()
}

/// Gone, or a zombie waiting for init.
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// SIGINT to `dsperf reproduce` while its Figure 1 testbed runs (WAN emulator, home agents,
/// nodes, each a process in a namespace): it exits 130, and none of those processes,
/// namespaces or its scratch directory is left.
#[test]
fn an_interrupted_dsperf_leaves_no_daemons_or_namespaces() {
    let Some(_one) = exclusive("an_interrupted_dsperf_leaves_no_daemons_or_namespaces") else {
        return;
    };
    let out = std::env::temp_dir().join(format!("dsperf-interrupt-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsperf"))
        .args(["reproduce", "--only", "access", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dsperf");
    let pid = child.id();
    // Wait until its daemons run: at least three processes in its namespaces.
    let t = Instant::now();
    let daemons = loop {
        let pids: Vec<i32> = namespaces_of(pid).iter().flat_map(|n| members(n)).collect();
        if pids.len() >= 3 {
            break pids;
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("dsperf exited before its testbed was up: {st}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no testbed after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    // Its scratch directory exists now (so that its absence below means something).
    assert!(!scratch_of(pid).is_empty(), "no scratch directory of {pid}");
    // SAFETY: kill(2) on our own child's pid with a constant signal; no pointers.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("dsperf still running 20 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
    // Nor its scratch directory (the testbed's logs, served files and secret).
    assert!(
        scratch_of(pid).is_empty(),
        "left behind: {:?}",
        scratch_of(pid)
    );
    let t = Instant::now();
    while !daemons.iter().all(|&p| dead(p)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive: Vec<i32> = daemons.iter().copied().filter(|&p| !dead(p)).collect();
    assert!(
        alive.is_empty(),
        "still running after dsperf exited: {alive:?}"
    );
}
