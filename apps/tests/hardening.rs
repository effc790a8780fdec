//! Issue 12's attacks against the release daemons, in namespaces, while clients download:
//! `dsha xdp` and `dsnode --device afxdp` file servers (transparent steering). Needs root;
//! prints SKIP otherwise.
//!
//! * Control ports (findings 1–3): from the home agent's namespace (another address than the
//!   nodes'), 50 connections of each hostile kind — idle, trickling one byte per 0.9 s, a
//!   truncated hello, a hello announcing a 16 MiB frame — and 1,000 hello-only connections,
//!   against node 1's control port and the home agent's. Meanwhile a paced download from
//!   node 1 never waits more than 50 ms for a read, the operator's handoff of another one to
//!   node 2 succeeds (through the home agent's control port, under the same attack), node 1
//!   and the home agent grow by less than 10 MB, and node 1 accepted no channel without the
//!   key.
//! * A stopped peer (finding 2): node 2 under SIGSTOP; a handoff to it is kept here after the
//!   reply timeout (or never starts, when its channel was not up), the next one is refused
//!   at once (back-off), another download from node 1 never waits more than 50 ms, and once
//!   node 2 runs again the stale offer it reads moves nothing: both downloads complete.
//! * A home agent stopped during a flow move (the late-Abort race): the handoff fails, node 1
//!   gets no answer to its reclaim, reclaims with force and keeps the connection; the move the
//!   home agent reads late is refused (read past its validity, and outranked by the forced
//!   reclaim of its generation): the download completes from node 1.
//! * Clients that never read, and clients that trickle a request head (findings 5, 6): 500
//!   of the first keep node 1 under 300 MB and are aborted at the stall timeout, 2,000 of the
//!   second are answered 408 and closed at the header deadline, and a small GET meanwhile
//!   takes under a second.
//! * A SYN flood (findings 4, 7): 50,000 spoofed SYNs per second for 10 s through the home
//!   agent (whose learned flow table it churns ~8 times over) to node 1: every curl meanwhile
//!   completes in under a second (SYN cookies); then 2 × 50,000 spoofed flows of plain
//!   segments, each sent twice (finding 7 as seen); a keep-alive connection handed off to
//!   node 2 before all this is still node 2's after it (moved flows are never evicted, and
//!   only SYNs are learned).
//! * `kill -9` of the home agent mid-download (finding 8): the same command starts again at
//!   once on the same interface (its program was attached through a BPF link that died with
//!   it; the pinned flow table is taken up again) and the download completes; then the same
//!   for node 1's `dsnode`, which serves again at once.

mod cluster;

use cluster::{dsctl, Addrs, Cluster, UP};
use ds_testbed::{require_root, PatternStream};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const SIZE: usize = 48 << 20;
/// The client reads at most this much per read, and pauses between reads: ~16 MB/s, so the
/// download lasts seconds and the server's data is always waiting in the socket.
const CHUNK: usize = 64 << 10;
const PACE: Duration = Duration::from_millis(4);
/// The longest any read of the download may wait (the issue's acceptance).
const MAX_GAP: Duration = Duration::from_millis(50);
/// The most node 1 or the home agent may grow under the attack.
const MAX_GROWTH_KIB: u64 = 10 << 10;

/// The tests that bound another download's read wait ([`MAX_GAP`]) run alone: on two cores,
/// a concurrent test's flood or 2,000 hostile connections would be measured instead of the
/// daemon under test (a 126 ms wait was once seen that way in CI). The others share.
static CORES: RwLock<()> = RwLock::new(());

fn alone() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(|e| e.into_inner())
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// What a paced download saw.
struct Download {
    body: Vec<u8>,
    /// The longest a read waited, after the first byte of the body.
    max_gap: Duration,
    /// How far into the body that read was.
    gap_at: usize,
    /// Why it ended early, if it did.
    error: Option<String>,
}

/// GET `/big.bin` from `ds`, paced; `started` is set to the client's port once the body
/// flows.
fn paced_download(ds: &str, started: &AtomicU16) -> Download {
    let addr: SocketAddr = format!("[{ds}]:80").parse().expect("address");
    let mut s = TcpStream::connect_timeout(&addr, UP).expect("connect to the DS address");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: ds\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let mut body = Vec::with_capacity(SIZE);
    let mut max_gap = Duration::ZERO;
    let mut gap_at = 0;
    let mut error = None;
    loop {
        let t = Instant::now();
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                error = Some(format!("read after {} body bytes: {e}", body.len()));
                break;
            }
        };
        if !body.is_empty() && t.elapsed() > max_gap {
            max_gap = t.elapsed();
            gap_at = body.len();
        }
        if n == 0 {
            break;
        }
        if body.is_empty() && head.windows(4).all(|w| w != b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body.extend_from_slice(&head[end + 4..]);
                let port = s.local_addr().map(|a| a.port()).unwrap_or(1);
                started.store(port, Ordering::SeqCst);
            }
            continue;
        }
        body.extend_from_slice(&buf[..n]);
        std::thread::sleep(PACE);
    }
    Download {
        body,
        max_gap,
        gap_at,
        error,
    }
}

/// A hello that looks right (magic, version, initiator role) from someone without the key.
fn forged_hello() -> Vec<u8> {
    let mut h = b"DSH".to_vec();
    h.push(ds_handoff::channel::CHANNEL_VERSION);
    h.push(1);
    h.extend((0..32u8).map(|i| i.wrapping_mul(41)));
    h
}

/// Open the hostile connections to `target` (from the calling thread's namespace); the
/// trickling ones are returned to be fed.
fn attack(target: SocketAddr, keep: &mut Vec<TcpStream>) -> Vec<TcpStream> {
    let connect = || TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok();
    let mut trickle = Vec::new();
    for _ in 0..50 {
        // Idle.
        keep.extend(connect());
        // A truncated hello.
        if let Some(mut s) = connect() {
            let _ = s.write_all(&forged_hello()[..10]);
            keep.push(s);
        }
        // A hello and a 16 MiB frame's length, then 64 KiB of it.
        if let Some(mut s) = connect() {
            let _ = s.set_nonblocking(true);
            let _ = s.write_all(&forged_hello());
            let _ = s.write_all(&(16u32 << 20).to_be_bytes());
            let _ = s.write_all(&[7u8; 64 << 10]);
            keep.push(s);
        }
        // Trickling: the first byte now, one more every 0.9 s.
        if let Some(mut s) = connect() {
            let _ = s.write_all(b"D");
            trickle.push(s);
        }
    }
    for _ in 0..1000 {
        if let Some(mut s) = connect() {
            let _ = s.write_all(&forged_hello());
            keep.push(s);
        }
    }
    trickle
}

fn status(sock: &Path) -> serde_json::Value {
    dsctl(sock, &["status"]).expect("dsctl status")
}

/// Node 1's name of the client's connection from `port`.
fn client_conn(sock: &Path, client: &str, port: u16) -> String {
    let want = format!("[{client}]:{port}");
    let v = dsctl(sock, &["conns"]).expect("dsctl conns");
    let listed = v
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["client"].as_str() == Some(want.as_str()));
    assert!(listed, "{want} is not listed: {v}");
    want
}

/// Two paced downloads from node 1 in the client namespace: the first stays there and is
/// measured, the second is handed to node 2 by `during` (which runs once both flow, and
/// returns what the test wants back); then both are checked byte-exact.
fn two_downloads<T: Send>(
    c: &Cluster,
    body: &[u8],
    during: impl FnOnce(u16, &AtomicBool) -> T + Send,
) -> (Download, T) {
    let ds = c.a.ds();
    let topo = &c.topo;
    let ports = [AtomicU16::new(0), AtomicU16::new(0)];
    let done = AtomicBool::new(false);
    let (measured, moved, out) = std::thread::scope(|sc| {
        let dls = ports.each_ref().map(|p| {
            let ds = &ds;
            let done = &done;
            sc.spawn(move || {
                let d = topo.client.run(|| paced_download(ds, p));
                done.store(true, Ordering::SeqCst);
                d
            })
        });
        let t = Instant::now();
        while ports.iter().any(|p| p.load(Ordering::SeqCst) == 0) {
            assert!(t.elapsed() < UP, "the downloads did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = during(ports[1].load(Ordering::SeqCst), &done);
        let [a, b] = dls.map(|d| d.join().expect("download"));
        (a, b, out)
    });
    for d in [&measured, &moved] {
        assert_eq!(d.error, None, "a download failed");
        assert_eq!(d.body.len(), body.len(), "length");
        assert!(d.body == body, "a download arrived corrupted");
    }
    eprintln!(
        "the moved download's largest read wait: {:?} (the handoff's own gap)",
        moved.max_gap
    );
    (measured, out)
}

#[test]
fn hostile_control_connections_stall_nothing_and_prove_nothing() {
    if !require_root("hostile_control_connections_stall_nothing_and_prove_nothing") {
        return;
    }
    let _cores = alone();
    let mut c = Cluster::start("hd", Addrs::new(0xed, 2));
    let body = PatternStream::bytes(0x12ed, SIZE);
    let socks = c.start_file_servers("afxdp", &body);
    let (client, to) = (c.a.client(), c.a.ctl_listen(1));
    let node1: SocketAddr = c.a.ctl_listen(0).parse().expect("node 1 control");
    let ha_ctl: SocketAddr = c.a.ha_control().parse().expect("home agent control");
    let (node1_pid, ha_pid) = (c.nodes[0].0.id(), c.ha_pid());
    let ha_ns = &c.topo.ha;
    let (got, figures) = two_downloads(&c, &body, |port, done| {
        let before = (rss_kib(node1_pid), rss_kib(ha_pid));
        // The attack, from the home agent's namespace: its sockets stay there.
        let (mut trickle, keep) = ha_ns.run(|| {
            let mut keep = Vec::new();
            let mut t = attack(node1, &mut keep);
            t.extend(attack(ha_ctl, &mut keep));
            (t, keep)
        });
        eprintln!(
            "attack: {} trickling and {} other connections opened",
            trickle.len(),
            keep.len()
        );
        // Under the attack, the operator moves the second download to node 2.
        std::thread::sleep(Duration::from_millis(300));
        let conn = client_conn(&socks[0], &client, port);
        let queued = dsctl(&socks[0], &["handoff", &conn, "--to", &to]).expect("dsctl handoff");
        assert_eq!(queued["queued"], conn.as_str(), "{queued}");
        let mut last = Instant::now();
        let mut peak = before;
        while !done.load(Ordering::SeqCst) {
            if last.elapsed() >= Duration::from_millis(900) {
                last = Instant::now();
                for s in &mut trickle {
                    let _ = s.write_all(b"S");
                }
            }
            peak = (peak.0.max(rss_kib(node1_pid)), peak.1.max(rss_kib(ha_pid)));
            std::thread::sleep(Duration::from_millis(50));
        }
        drop((trickle, keep));
        (before, peak)
    });
    let ((n0, h0), (n1, h1)) = figures;
    let out1 = std::fs::read_to_string(&c.nodes[0].2).expect("node 1 output");
    let report = out1.lines().find(|l| l.contains("phases_us"));
    eprintln!("handoff: {report:?}");
    eprintln!(
        "largest read wait {:?} at byte {}; node 1 RSS {n0} → {n1} KiB peak, home agent {h0} → {h1} KiB peak",
        got.max_gap, got.gap_at
    );
    assert!(
        got.max_gap < MAX_GAP,
        "a read waited {:?} under the attack",
        got.max_gap
    );
    assert!(n1 - n0 < MAX_GROWTH_KIB, "node 1 grew {} KiB", n1 - n0);
    assert!(
        h1 - h0 < MAX_GROWTH_KIB,
        "the home agent grew {} KiB",
        h1 - h0
    );
    let s1 = status(&socks[0]);
    assert_eq!(s1["handoff"]["moved"], 1, "the handoff under attack: {s1}");
    assert_eq!(status(&socks[1])["handoff"]["adopted"], 1);
    let gate = &s1["handoff"]["gate"];
    eprintln!("node 1's control port: {gate}");
    assert!(
        gate["authenticated"].as_u64() <= Some(2),
        "only node 2 proves the key: {gate}"
    );
    assert!(
        gate["accepted"].as_u64().unwrap_or(0) >= 200,
        "the attack reached the port: {gate}"
    );
    // The home agent too: its channels are the nodes' (one each, perhaps a reconnect).
    let (pins_gone, summary) = c.stop_with_ha_summary();
    assert!(pins_gone, "the home agent removed its pins");
    eprintln!("home agent: {}", summary.lines().next().unwrap_or_default());
    let channels: u64 = summary
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        channels <= 4,
        "channels accepted by the home agent: {summary}"
    );
}

#[test]
fn a_stopped_peer_costs_one_reply_timeout_then_handoffs_back_off_and_its_late_read_moves_nothing() {
    if !require_root(
        "a_stopped_peer_costs_one_reply_timeout_then_handoffs_back_off_and_its_late_read_moves_nothing",
    ) {
        return;
    }
    let _cores = alone();
    let mut c = Cluster::start("hs", Addrs::new(0xee, 2));
    let body = PatternStream::bytes(0x12ee, SIZE);
    let socks = c.start_file_servers("afxdp", &body);
    let (client, to) = (c.a.client(), c.a.ctl_listen(1));
    let node2 = libc::pid_t::try_from(c.nodes[1].0.id()).expect("pid");
    let signal = |sig| {
        // SAFETY: kill(2) on a child process of this test, by pid.
        let r = unsafe { libc::kill(node2, sig) };
        assert_eq!(r, 0, "kill");
    };
    let log1 = &c.nodes[0].1;
    let (got, (first, s1)) = two_downloads(&c, &body, |port, _| {
        signal(libc::SIGSTOP);
        let conn = client_conn(&socks[0], &client, port);
        let t = Instant::now();
        dsctl(&socks[0], &["handoff", &conn, "--to", &to]).expect("dsctl handoff");
        // The peer never answers: the attempt ends (kept here), and from then on handoffs to
        // it back off: the operator's next request is refused at once.
        let first = loop {
            match dsctl(&socks[0], &["handoff", &conn, "--to", &to]) {
                Err(e) if e.contains("back off") => break t.elapsed(),
                Err(e) if e.contains("already leaving") => {}
                other => panic!(
                    "a second handoff to a stopped peer: {other:?}; node 1: {}; its log: {}",
                    status(&socks[0])["handoff"],
                    std::fs::read_to_string(log1).unwrap_or_default()
                ),
            }
            assert!(
                t.elapsed() < UP,
                "handoffs to the stopped peer never backed off"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let s1 = status(&socks[0]);
        signal(libc::SIGCONT);
        (first, s1)
    });
    eprintln!(
        "stopped peer: handoffs back off after {first:?}; the other download's largest read \
         wait {:?}; node 1: {}",
        got.max_gap, s1["handoff"]
    );
    // Either the channel to the stopped peer was not up (nothing frozen at all) or it was
    // (one freeze, kept after the reply timeout).
    let started = s1["handoff"]["started"].as_u64().unwrap_or(9);
    assert!(started <= 1, "one freeze at most: {s1}");
    assert_eq!(s1["handoff"]["kept"], started, "{s1}");
    assert_eq!(s1["handoff"]["moved"], 0, "{s1}");
    assert!(
        got.max_gap < MAX_GAP,
        "a read of the other download waited {:?}",
        got.max_gap
    );
    assert!(c.stop(), "the home agent removed its pins");
}

/// The late-Abort race (issue 12): the home agent stops while node 2 asks it to move a flow,
/// so the handoff fails (node 2 refuses at its steering timeout, or node 1 gives up first);
/// node 1's reclaim goes unanswered, so it reclaims with force and keeps the connection —
/// with node 2's move request still waiting in the home agent's socket. When the home agent
/// runs again it must not apply that move on its own: it was read past its validity, and
/// node 1's forced reclaim of the same generation outranks it in whichever order the two are
/// read; the download completes from node 1. Without the fencing the late move pointed the
/// client at node 2, which had dropped the connection: the download was reset.
#[test]
fn a_move_that_reaches_a_stopped_home_agent_late_leaves_the_flow_with_the_donor() {
    if !require_root("a_move_that_reaches_a_stopped_home_agent_late_leaves_the_flow_with_the_donor")
    {
        return;
    }
    let _cores = shared();
    let mut c = Cluster::start("hl", Addrs::new(0xf5, 2));
    let body = PatternStream::bytes(0x12f5, SIZE);
    let socks = c.start_file_servers("afxdp", &body);
    let (client, to) = (c.a.client(), c.a.ctl_listen(1));
    let ha = libc::pid_t::try_from(c.ha_pid()).expect("pid");
    let signal = |sig| {
        // SAFETY: kill(2) on a child process of this test, by pid.
        let r = unsafe { libc::kill(ha, sig) };
        assert_eq!(r, 0, "kill");
    };
    let (_, (s1, s2)) = two_downloads(&c, &body, |port, _| {
        let conn = client_conn(&socks[0], &client, port);
        signal(libc::SIGSTOP);
        dsctl(&socks[0], &["handoff", &conn, "--to", &to]).expect("dsctl handoff");
        let t = Instant::now();
        let s1 = loop {
            let s = status(&socks[0]);
            if s["handoff"]["kept"].as_u64() == Some(1) {
                break s;
            }
            assert!(
                t.elapsed() < UP,
                "the handoff did not fail while the home agent was stopped: {}",
                s["handoff"]
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reclaim leave node 1, then let the home agent read both requests.
        std::thread::sleep(Duration::from_millis(100));
        signal(libc::SIGCONT);
        // The rest of the download crosses the home agent's flow table after it ran them.
        (s1, status(&socks[1]))
    });
    let s1_end = status(&socks[0]);
    eprintln!(
        "node 1 after the stop: {}; at the end: {}; node 2: {}",
        s1["handoff"], s1_end["handoff"], s2["handoff"]
    );
    assert_eq!(s1["handoff"]["moved"], 0, "{s1}");
    assert_eq!(
        s1_end["handoff"]["reclaims"], 1,
        "node 1 reclaimed the flow: {s1_end}"
    );
    assert_eq!(s2["handoff"]["adopted"], 0, "{s2}");
    let (pins_gone, summary) = c.stop_with_ha_summary();
    assert!(pins_gone, "the home agent removed its pins");
    eprintln!("home agent: {}", summary.lines().next().unwrap_or_default());
}

/// Node 1's peak resident memory, sampled every 50 ms while `f` runs (in this thread).
fn peak_rss_while<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> (T, u64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let sampler = sc.spawn(|| {
            let mut peak = rss_kib(pid);
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let out = f();
        done.store(true, Ordering::SeqCst);
        (out, sampler.join().expect("sampler"))
    })
}

/// curl fetches `/small.txt` from the DS address; how long it took.
fn curl_small(c: &Cluster) -> Duration {
    let t = Instant::now();
    let out = c
        .topo
        .client
        .command("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null"])
        .arg(format!("http://[{}]/small.txt", c.a.ds()))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[test]
fn clients_that_never_read_or_trickle_headers_are_bounded_and_closed() {
    if !require_root("clients_that_never_read_or_trickle_headers_are_bounded_and_closed") {
        return;
    }
    let _cores = shared();
    const STUCK: usize = 500;
    const SLOW: usize = 2000;
    const STUCK_BOUND_KIB: u64 = 300 << 10;
    let mut c = Cluster::start("hm", Addrs::new(0xef, 2));
    let root = c.dir.path().join("www");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("big.bin"), PatternStream::bytes(0x12ef, SIZE)).expect("file");
    std::fs::write(root.join("small.txt"), b"small\n").expect("file");
    let sock = c.dir.path().join("node1.sock");
    let mut args = c.transparent_args(0, &root, &sock);
    args.extend(["--stall-timeout-ms", "2000", "--header-timeout-ms", "1000"].map(String::from));
    c.start_dsnode_on(0, "afxdp", &args, "serving http");
    let pid = c.nodes[0].0.id();
    let ds: SocketAddr = format!("[{}]:80", c.a.ds()).parse().expect("address");
    let base = rss_kib(pid);

    // 500 clients ask for 48 MiB each and never read.
    let (stuck, peak) = peak_rss_while(pid, || {
        let stuck: Vec<TcpStream> = c.topo.client.run(|| {
            (0..STUCK)
                .filter_map(|_| {
                    let mut s = TcpStream::connect_timeout(&ds, UP).ok()?;
                    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: ds\r\n\r\n")
                        .ok()?;
                    Some(s)
                })
                .collect()
        });
        // Their windows fill; meanwhile another client is served.
        std::thread::sleep(Duration::from_millis(1500));
        let small = curl_small(&c);
        (stuck, small)
    });
    let (stuck, small) = stuck;
    eprintln!(
        "{} clients that never read: node RSS {base} → {peak} KiB peak; a small GET took {small:?}",
        stuck.len()
    );
    assert_eq!(stuck.len(), STUCK, "every stuck client connected");
    assert!(peak < STUCK_BOUND_KIB, "node 1 grew to {peak} KiB");
    assert!(small < Duration::from_secs(1), "a small GET took {small:?}");
    // The stall timeout (2 s) closes them.
    let t = Instant::now();
    let stalled = loop {
        let s = status(&sock);
        let n = s["http"]["stalled"].as_u64().unwrap_or(0);
        if n >= STUCK as u64 || t.elapsed() > Duration::from_secs(10) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "stalled responses aborted: {stalled} after {:?}",
        t.elapsed()
    );
    assert_eq!(stalled, STUCK as u64);
    drop(stuck);

    // 2,000 clients trickle a request head, one byte per 300 ms.
    let t = Instant::now();
    let mut slow: Vec<TcpStream> = c.topo.client.run(|| {
        (0..SLOW)
            .filter_map(|_| {
                let mut s = TcpStream::connect_timeout(&ds, UP).ok()?;
                s.write_all(b"GET /small.txt HTTP/1.1\r\n").ok()?;
                Some(s)
            })
            .collect()
    });
    assert_eq!(slow.len(), SLOW, "every slow client connected");
    let opened = t.elapsed();
    let mid = curl_small(&c);
    let mut open = slow.len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while open > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        open = 0;
        for s in &mut slow {
            // A byte of a header that never ends; once the server closed, it fails or
            // the read below sees the end.
            let _ = s.write_all(b"X");
            s.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 512];
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            if !closed {
                open += 1;
            }
        }
    }
    let closed_after = t.elapsed();
    let s = status(&sock);
    eprintln!(
        "{SLOW} slow-header clients opened in {opened:?}, all closed after {closed_after:?} \
         (header deadline 1 s); a small GET meanwhile took {mid:?}; node: {}",
        s["http"]
    );
    assert_eq!(open, 0, "slow clients still open after the header deadline");
    assert!(
        s["http"]["header_timeouts"].as_u64() >= Some(SLOW as u64),
        "{s}"
    );
    assert!(mid < Duration::from_secs(1), "a small GET took {mid:?}");
    assert!(curl_small(&c) < Duration::from_secs(1));
    assert!(c.stop(), "the home agent removed its pins");
}

#[test]
fn a_home_agent_killed_mid_download_restarts_at_once_and_the_download_survives() {
    if !require_root("a_home_agent_killed_mid_download_restarts_at_once_and_the_download_survives")
    {
        return;
    }
    let _cores = shared();
    let mut c = Cluster::start("hk", Addrs::new(0xf0, 2));
    let body = PatternStream::bytes(0x12f0, SIZE);
    c.start_file_servers("afxdp", &body);
    let file = c.dir.path().join("got.bin");
    let mut curl = c
        .topo
        .client
        .command("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "30",
            "--limit-rate",
            "16M",
            "-o",
        ])
        .arg(&file)
        .arg(format!("http://[{}]/big.bin", c.a.ds()))
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(800));
    // kill -9 in the middle of the download; the same command again at once.
    let t = Instant::now();
    c.crash_and_restart_ha();
    let restart = t.elapsed();
    let status = curl.wait().expect("curl");
    eprintln!("home agent killed and up again in {restart:?}");
    assert!(restart < Duration::from_secs(2), "restart took {restart:?}");
    assert!(status.success(), "curl: {status}");
    let got = std::fs::read(&file).expect("downloaded file");
    assert_eq!(got.len(), body.len(), "length");
    assert!(got == body, "the download arrived corrupted");
    // The same for node 1's dsnode (it holds the DS address's binding): kill -9, the same
    // command again at once, and it serves (its XDP program went with its BPF link; its
    // control socket's file is taken over).
    let root = c.dir.path().join("www");
    let sock = c.dir.path().join("node1.sock");
    let args = c.transparent_args(0, &root, &sock);
    let (mut old, _, _) = c.nodes.remove(0);
    old.kill().expect("kill -9 dsnode");
    let _ = old.wait();
    let t = Instant::now();
    c.start_dsnode_on(0, "afxdp", &args, "serving http");
    let restart = t.elapsed();
    let small = c
        .topo
        .client
        .command("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-r",
            "0-999",
            "-o",
            "/dev/null",
        ])
        .arg(format!("http://[{}]/big.bin", c.a.ds()))
        .output()
        .expect("curl");
    eprintln!("dsnode killed and serving again in {restart:?}");
    assert!(restart < Duration::from_secs(2), "restart took {restart:?}");
    assert!(
        small.status.success(),
        "a GET after the restart: {}",
        String::from_utf8_lossy(&small.stderr)
    );
    assert!(c.stop(), "the home agent removed its pins");
}

/// A spoofed SYN from `src`:`sport` to the DS address's port 80 (an IPv6 packet; MSS 1460).
/// Send every packet of `batch` out of this namespace, waiting while the device has no room:
/// how many left (all of them, unless sending failed). A raw socket drops a packet its device
/// cannot queue without a word (`ds_kernel::inject`), so a flood counted by what it handed the
/// socket counted the client veth's drops as sent.
fn send_all(batch: &[Vec<u8>]) -> usize {
    let mut left = 0;
    while left < batch.len() {
        match ds_kernel::inject_until_full(&batch[left..]) {
            Ok(0) => std::thread::sleep(Duration::from_micros(50)),
            Ok(k) => left += k,
            Err(_) => break,
        }
    }
    left
}

fn spoofed_syn(src: std::net::Ipv6Addr, ds: std::net::Ipv6Addr, sport: u16, seq: u32) -> Vec<u8> {
    spoofed(src, ds, sport, seq, true)
}

/// A spoofed segment from `src`:`sport` to the DS address's port 80: a SYN (MSS 1460), or
/// an ACK of a connection that does not exist.
fn spoofed(
    src: std::net::Ipv6Addr,
    ds: std::net::Ipv6Addr,
    sport: u16,
    seq: u32,
    syn: bool,
) -> Vec<u8> {
    use ds_mipv6::wire::{pseudo_checksum, PacketBuilder};
    let mut t = vec![0u8; if syn { 24 } else { 20 }];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = (t.len() as u8 / 4) << 4;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    if syn {
        t[13] = 0x02;
        t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    } else {
        t[8..12].copy_from_slice(&seq.rotate_left(7).to_be_bytes());
        t[13] = 0x10;
    }
    let c = pseudo_checksum(src, ds, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    PacketBuilder::new(src, ds).payload(6, &t)
}

/// One GET of `/big.bin` (`len` bytes of body) on a keep-alive connection; the body.
fn get_keep_alive(s: &mut TcpStream, len: usize) -> std::io::Result<Vec<u8>> {
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: ds\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= end + 4 + len {
                return Ok(got[end + 4..end + 4 + len].to_vec());
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Findings 4 and 7: a SYN flood from spoofed sources against the DS address (through the
/// home agent, whose learned flow table it churns ~8 times over, to node 1's stack). Every
/// curl meanwhile completes in under a second, and a keep-alive connection handed off to node
/// 2 before the flood is still served by node 2 after it.
#[test]
fn a_syn_flood_closes_no_port() {
    if !require_root("a_syn_flood_closes_no_port") {
        return;
    }
    let _cores = shared();
    /// The target rate and duration (issue 12: ≥ 50,000 SYN/s for 10 s).
    const RATE: u64 = 50_000;
    const SECS: u64 = 10;
    /// Packets injected back to back. Each batch meets the veths' 256-frame rings on its way
    /// through the home agent's XDP program: with batches of 500, and the second flood below
    /// unpaced, a curl's SYN was lost now and then with no drop counted at the node, and 6–8 %
    /// of the second flood did not reach the home agent — the test bed's rings, not what is
    /// tested. The rate is the same. Under CI's load the home agent's ring still overflowed
    /// now and then (a CI run: 2,934 of 500,000 lost at `lh`, one curl 1.07 s; here, 224 at
    /// node 1's port `l1`): the bridge's ports now have queues, as a switch's would
    /// (`HandoffTopology::queue_ports`).
    const BURST: u32 = 50;
    let mut c = Cluster::start("hy", Addrs::new(0xf1, 2));
    c.topo
        .queue_ports(10_000)
        .expect("queues on the bridge's ports");
    let body = PatternStream::bytes(0x12f1, 4096);
    let socks = c.start_file_servers("afxdp", &body);
    let ds: std::net::Ipv6Addr = c.a.ds().parse().expect("DS address");
    // A keep-alive client, served once by node 1, then handed to node 2.
    let (client, to) = (c.a.client(), c.a.ctl_listen(1));
    let mut keep = c
        .topo
        .client
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((ds, 80)), UP).expect("connect"));
    keep.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(get_keep_alive(&mut keep, body.len()).expect("first GET") == body);
    let port = keep.local_addr().expect("port").port();
    let conn = client_conn(&socks[0], &client, port);
    dsctl(&socks[0], &["handoff", &conn, "--to", &to]).expect("dsctl handoff");
    let t = Instant::now();
    while status(&socks[1])["handoff"]["adopted"] != 1 {
        assert!(
            t.elapsed() < UP,
            "node 2 never adopted the keep-alive connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ((n, took), curls) = std::thread::scope(|sc| {
        let topo = &c.topo;
        let flood = sc.spawn(|| {
            topo.client.run(|| {
                let start = Instant::now();
                let mut sent = 0u64;
                let mut n = 0u32;
                while start.elapsed() < Duration::from_secs(SECS) {
                    // Batches of BURST, paced to the target rate.
                    let batch: Vec<Vec<u8>> = (0..BURST)
                        .map(|_| {
                            n = n.wrapping_add(1);
                            let src = std::net::Ipv6Addr::new(
                                0xfd00,
                                0x66,
                                (n >> 16) as u16,
                                0,
                                0,
                                0,
                                0,
                                n as u16 | 1,
                            );
                            spoofed_syn(
                                src,
                                ds,
                                1024 + (n % 60000) as u16,
                                n.wrapping_mul(2654435761),
                            )
                        })
                        .collect();
                    sent += send_all(&batch) as u64;
                    let due = Duration::from_micros(sent * 1_000_000 / RATE);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                (sent, start.elapsed())
            })
        });
        // A legitimate curl every 300 ms during the flood.
        let mut curls = Vec::new();
        std::thread::sleep(Duration::from_millis(500));
        while !flood.is_finished() {
            let t = Instant::now();
            let out = topo
                .client
                .command("curl")
                .args(["-sS", "--fail", "--max-time", "5", "-o", "/dev/null"])
                .arg(format!("http://[{ds}]/big.bin"))
                .output()
                .expect("curl");
            curls.push((out.status.success(), t.elapsed()));
            std::thread::sleep(Duration::from_millis(300));
        }
        (flood.join().expect("flood"), curls)
    });
    let rate = n as f64 / took.as_secs_f64();
    let worst = curls.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let s = status(&socks[0]);
    eprintln!(
        "SYN flood: {n} spoofed SYNs in {took:?} ({rate:.0}/s); {} curls, slowest {worst:?}; \
         node 1: {} SYN cookies sent, {} backlog drops, device {}",
        curls.len(),
        s["interface"]["tcp_syncookies_sent"],
        s["interface"]["tcp_backlog_drops"],
        s["device"]
    );
    // Where the test bed lost packets (a lost curl SYN costs its 1 s retransmission).
    for ns in [&c.topo.client, &c.topo.hub, &c.topo.ha, &c.topo.nodes[0]] {
        eprintln!("{}: {:?}", ns.name(), ds_testbed::link_drops(ns));
    }
    // The AF_XDP device's own counters are in the status (the kernel's ring counters).
    assert!(s["device"]["rx_ring_full"].is_u64(), "{s}");
    assert!(curls.len() >= 10, "too few curls: {curls:?}");
    assert!(curls.iter().all(|(ok, _)| *ok), "a curl failed: {curls:?}");
    assert!(worst < Duration::from_secs(1), "a curl took {worst:?}");
    assert!(
        s["interface"]["tcp_syncookies_sent"].as_u64() > Some(0),
        "{s}"
    );
    // Finding 7 as it was seen: 2 × 50,000 spoofed flows of plain segments, each sent twice
    // (they once pushed the handed-off connection's entry out of the learned table).
    let spoofed_segments = c.topo.client.run(|| {
        let mut sent = 0;
        let start = Instant::now();
        for round in 0..4u32 {
            let set = round / 2;
            for chunk in 0..50_000 / BURST {
                let batch: Vec<Vec<u8>> = (0..BURST)
                    .map(|k| {
                        let n = chunk * BURST + k;
                        let src = std::net::Ipv6Addr::new(
                            0xfd00,
                            0x67,
                            set as u16,
                            0,
                            0,
                            0,
                            (n >> 16) as u16,
                            n as u16 | 1,
                        );
                        spoofed(src, ds, 1024 + (n % 60000) as u16, n, false)
                    })
                    .collect();
                sent += send_all(&batch);
                // Paced as the SYN flood is.
                let due = Duration::from_micros(sent as u64 * 1_000_000 / RATE);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        sent
    });
    eprintln!("then {spoofed_segments} spoofed non-SYN segments (2 × 50,000 flows, twice each)");
    assert!(spoofed_segments >= 190_000, "{spoofed_segments} sent");
    // The handed-off keep-alive connection survived the flood: node 2 answers it.
    let again = get_keep_alive(&mut keep, body.len());
    assert!(
        again.as_ref().is_ok_and(|b| *b == body),
        "the handed-off connection after the flood: {:?}",
        again.map(|b| b.len())
    );
    let s2 = status(&socks[1]);
    assert_eq!(s2["http"]["http"]["requests"], 1, "node 2 served it: {s2}");
    let (pins_gone, summary) = c.stop_with_ha_summary();
    assert!(pins_gone, "the home agent removed its pins");
    // The plain segments of unknown flows followed the binding without being learned.
    let not_learned = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("tunnel not_learned"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!(
        "home agent: {}; not learned: {not_learned}",
        summary.lines().next().unwrap_or_default()
    );
    assert!(not_learned >= 190_000, "{summary}");
}
