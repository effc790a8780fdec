//! `dsctl handoff` moves a chosen connection during a download: `dsha xdp` and two `dsnode
//! --device afxdp` processes (transparent steering, no byte quota), curl downloading from the
//! DS address at a limited rate; the operator lists node 1's connections with `dsctl conns`
//! and hands the client's to node 2 with `dsctl handoff`. The file arrives byte-exact, the
//! client retransmits nothing, node 1 prints the handoff's report and node 2 counts the
//! adoption. The same with node 1 on the kernel's own sockets (`--device kernel`, the
//! connection frozen with `TCP_REPAIR`), and with both nodes serving two receive queues each
//! (`--queues 2`: a stack and a handoff engine per queue, `dsctl` answered for all). Needs
//! root; prints SKIP otherwise.

mod cluster;

use cluster::{dsctl, Addrs, Cluster, UP};
use ds_testbed::{require_root, PatternStream};
use std::time::{Duration, Instant};

/// The download: 8 MiB at 2 MB/s, so that the operator has seconds to act.
const SIZE: usize = 8 << 20;
const RATE: &str = "2M";

#[test]
fn dsctl_hands_a_chosen_connection_to_the_other_node_during_a_download() {
    if !require_root("dsctl_hands_a_chosen_connection_to_the_other_node_during_a_download") {
        return;
    }
    run(Cluster::start("dc", Addrs::new(0xd9, 2)), "afxdp");
}

#[test]
fn dsctl_hands_a_kernel_socket_to_the_other_node_during_a_download() {
    if !require_root("dsctl_hands_a_kernel_socket_to_the_other_node_during_a_download") {
        return;
    }
    let c = Cluster::start("dk", Addrs::new(0xe4, 2));
    c.kernel_addrs(0);
    run(c, "kernel");
}

/// Both nodes serving each of two receive queues with its own stack and handoff engine
/// (`dsnode --queues 2`), each queue's thread pinned to a CPU of its own where the machine
/// has two (`--queue-cpus`): the operator's view and commands are the same.
#[test]
fn dsctl_hands_a_connection_between_nodes_of_two_queues_each() {
    if !require_root("dsctl_hands_a_connection_between_nodes_of_two_queues_each") {
        return;
    }
    let cpus = ds_apps::sched::allowed_cpus().expect("affinity mask");
    let pins = [cpus[0], cpus[cpus.len() - 1]];
    let list = format!("{},{}", pins[0], pins[1]);
    let mut c = Cluster::start_queues("dm", Addrs::new(0xf8, 2), 2);
    let extra = ["--queues", "2", "--queue-cpus", &list];
    let body = PatternStream::bytes(0xd5c7, SIZE);
    let socks = c.start_file_servers_with("afxdp", &body, &extra);
    for (child, ..) in &c.nodes {
        assert_eq!(queue_pins(child.id()), pins, "node {}", child.id());
    }
    scenario(c, body, socks);
}

/// The CPU each `queue-N` thread of process `pid` may run on, in queue order (a thread
/// allowed more than one CPU shows as `usize::MAX`).
fn queue_pins(pid: u32) -> [usize; 2] {
    let mut pins = [usize::MAX - 1; 2];
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(q) = comm.trim().strip_prefix("queue-") else {
            continue;
        };
        let q: usize = q.parse().expect("queue number");
        let status = std::fs::read_to_string(t.path().join("status")).expect("status");
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_string();
        pins[q] = list.parse().unwrap_or(usize::MAX);
    }
    pins
}

/// The scenario with node 1 on `device`.
fn run(c: Cluster, device: &str) {
    run_with(c, device, &[]);
}

/// The scenario with node 1 on `device` and `extra` options for both nodes.
fn run_with(mut c: Cluster, device: &str, extra: &[&str]) {
    let body = PatternStream::bytes(0xd5c7, SIZE);
    let socks = c.start_file_servers_with(device, &body, extra);
    scenario(c, body, socks);
}

/// The operator's moves and the checks, once the file servers (`socks`) serve `body`.
fn scenario(c: Cluster, body: Vec<u8>, socks: [std::path::PathBuf; 2]) {
    let (client, ds, to) = (c.a.client(), c.a.ds(), c.a.ctl_listen(1));
    let topo = &c.topo;

    let before = c.client_retransmits();
    let file = c.dir.path().join("got.bin");
    let mut curl = topo
        .client
        .command("curl")
        .args(["-sS", "--fail", "--limit-rate", RATE, "-o"])
        .arg(&file)
        .arg(format!("http://[{ds}]/big.bin"))
        .spawn()
        .expect("curl");
    // The operator's view: node 1 serves the client; move that connection to node 2.
    let t = Instant::now();
    let conn = loop {
        let v = dsctl(&socks[0], &["conns"]).expect("dsctl conns");
        let c = v.as_array().into_iter().flatten().find_map(|c| {
            let a = c["client"].as_str()?;
            a.starts_with(&format!("[{client}]:"))
                .then(|| a.to_string())
        });
        if let Some(c) = c {
            break c;
        }
        assert!(t.elapsed() < UP, "curl's connection is not listed: {v}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let some of the file flow first, so that the move happens mid-download.
    std::thread::sleep(Duration::from_millis(500));
    // A wrong destination or connection is refused, and the download goes on.
    let wrong = dsctl(
        &socks[0],
        &["handoff", &conn, "--to", "[fd00:d9:1::99]:7000"],
    );
    assert!(wrong.is_err_and(|e| e.contains("hands off to")));
    let unknown = dsctl(
        &socks[0],
        &["handoff", &format!("[{client}]:1"), "--to", &to],
    );
    assert!(unknown.is_err_and(|e| e.contains("no connection")));
    let queued = dsctl(&socks[0], &["handoff", &conn, "--to", &to]).expect("dsctl handoff");
    assert_eq!(queued["queued"], conn.as_str(), "{queued}");

    let status = curl.wait().expect("curl");
    assert!(status.success(), "curl: {status}");
    let got = std::fs::read(&file).expect("downloaded file");
    assert_eq!(got.len(), body.len(), "length");
    assert!(got == body, "the file arrived corrupted");
    assert_eq!(c.client_retransmits() - before, 0, "client retransmissions");

    // Node 2 adopted it; node 1 printed the report (one JSON line with the seven phases).
    let s2 = dsctl(&socks[1], &["status"]).expect("dsctl status");
    assert_eq!(s2["handoff"]["adopted"], 1, "{s2}");
    let s1 = dsctl(&socks[0], &["status"]).expect("dsctl status");
    assert_eq!(s1["handoff"]["moved"], 1, "{s1}");
    let out1 = std::fs::read_to_string(&c.nodes[0].2).expect("node 1 output");
    let report = out1
        .lines()
        .find(|l| l.contains("phases_us"))
        .unwrap_or_else(|| panic!("no report on node 1's stdout: {out1}"));
    let v: serde_json::Value = serde_json::from_str(report).expect("report JSON");
    assert_eq!(v["client"], conn.as_str(), "{v}");
    eprintln!("handoff by dsctl: {report}");

    assert!(c.stop(), "the home agent removed its pins");
}
