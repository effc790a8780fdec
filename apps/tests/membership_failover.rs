//! Membership in namespaces, as separate processes (issue: membership and failover): `dsha xdp
//! --members`, three backups and two snodes (`dsnode --role`). The contact is killed with
//! SIGKILL twenty times (each time the killed node restarts and joins again as the last
//! backup): a backup becomes the contact and re-registers at the home agent, new requests to
//! the DS address succeed, and a download handed off to an snode before the kill finishes
//! byte-exact. The failover time (kill → first new connection served) is printed with its
//! median. Then a contact stopped across a failover (SIGSTOP … SIGCONT) cannot take the DS
//! address back and rejoins as a backup.

mod cluster;

use cluster::{dsctl, Addrs, Cluster, UP};
use ds_testbed::Child;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODES: usize = 5;
const BACKUPS: usize = 3;
/// The snode that takes the downloads handed off by the contact.
const TAKER: usize = 3;
/// Failovers (`DS_FAILOVER_ROUNDS` overrides, for quicker runs while developing).
fn rounds() -> usize {
    std::env::var("DS_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 2)
        .unwrap_or(20)
}
const BIG: usize = 1_500_000;
/// Connections to the contact before it is killed with a download on it (its flows at the
/// home agent, each solicited when it dies).
const CROWD: usize = 1_500;

struct Nodes {
    etcd: Option<String>,
    procs: Vec<Option<Child>>,
    logs: Vec<PathBuf>,
    socks: Vec<PathBuf>,
    starts: Vec<usize>,
}

fn node_args(
    c: &Cluster,
    i: usize,
    root: &std::path::Path,
    sock: &std::path::Path,
    etcd: Option<&str>,
) -> Vec<String> {
    let a = &c.a;
    let mut v: Vec<String> = [
        "serve",
        "--device",
        "afxdp",
        "--iface",
        "n0",
        "--addr",
        &a.coa(i),
        "--also-addr",
        &a.ds(),
        "--mac",
        &ds_apps::mac::format_mac(&a.mac(i)),
        "--root",
        &root.display().to_string(),
        "--control-socket",
        &sock.display().to_string(),
        "--secret-file",
        &c.secret.display().to_string(),
        "--role",
        if i < BACKUPS { "backup" } else { "snode" },
        "--members-listen",
        &a.ctl_listen(i),
        "--members-ha",
        &a.members_ha(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(url) = etcd {
        v.extend(["--election", "etcd", "--etcd", url].map(String::from));
    }
    if i < BACKUPS {
        // A download moves to the taker after 300 kB, so it outlives its contact.
        v.extend(
            [
                "--control-listen",
                &a.ctl_listen(i),
                "--peer",
                &a.ctl_listen(TAKER),
                "--peer-coa",
                &a.coa(TAKER),
                "--steering",
                "transparent",
                "--ha-control",
                &a.ha_control(),
                "--handoff-after",
                "300000",
            ]
            .map(String::from),
        );
    } else if i == TAKER {
        v.extend(
            [
                "--control-listen",
                &a.ctl_listen(i),
                "--steering",
                "transparent",
                "--ha-control",
                &a.ha_control(),
            ]
            .map(String::from),
        );
    }
    v
}

impl Nodes {
    /// No node running yet; their control sockets in the cluster's directory.
    fn new(c: &Cluster, etcd: Option<String>) -> Nodes {
        Nodes {
            etcd,
            procs: (0..NODES).map(|_| None).collect(),
            logs: vec![PathBuf::new(); NODES],
            socks: (0..NODES)
                .map(|i| c.dir.path().join(format!("node{}.sock", i + 1)))
                .collect(),
            starts: vec![0; NODES],
        }
    }

    fn start(&mut self, c: &Cluster, i: usize, root: &std::path::Path) {
        self.starts[i] += 1;
        let name = format!("dsnode{}-{}", i + 1, self.starts[i]);
        let args = node_args(c, i, root, &self.socks[i], self.etcd.as_deref());
        let (mut p, log, _) = c.topo.nodes[i]
            .spawn_logged(env!("CARGO_BIN_EXE_dsnode"), &args, c.dir.path(), &name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        p.wait_for_log(&log, "membership: joined", UP)
            .unwrap_or_else(|e| panic!("{name} did not join: {e}"));
        self.procs[i] = Some(p);
        self.logs[i] = log;
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].as_ref().expect("running").id();
        let st = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    fn members(&self, i: usize) -> Option<serde_json::Value> {
        self.procs[i].as_ref()?;
        dsctl(&self.socks[i], &["members"]).ok()
    }

    /// The node holding the registration, per the nodes themselves.
    fn contact(&self) -> Option<usize> {
        (0..BACKUPS).find(|&i| {
            self.members(i)
                .is_some_and(|m| m["holds_registration"] == serde_json::json!(true))
        })
    }

    fn wait_contact(&self, not: Option<usize>) -> usize {
        let t = Instant::now();
        loop {
            if let Some(c) = self.contact().filter(|c| Some(*c) != not) {
                return c;
            }
            assert!(t.elapsed() < UP, "no contact node");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One GET of `/small` on the DS address from the client's namespace: connect within 40 ms,
/// answer within 300 ms.
fn probe(ds: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&ds, Duration::from_millis(40)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if s.write_all(b"GET /small HTTP/1.1\r\nHost: ds\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got.starts_with(b"HTTP/1.1 200")
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// curl downloads `big.bin` from `host` at `rate` into the test's directory as `name`, in the
/// background (stderr kept for the caller); returns once at least `min` bytes arrived.
fn download(
    c: &Cluster,
    name: &str,
    host: &str,
    rate: &str,
    min: u64,
) -> (std::process::Child, PathBuf) {
    let got = c.dir.path().join(name);
    let mut curl = c
        .topo
        .client
        .command("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "--limit-rate",
            rate,
            "-o",
        ])
        .arg(&got)
        .arg(format!("http://[{host}]/big.bin"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let t = Instant::now();
    while std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0) < min.max(1) {
        assert!(
            t.elapsed() < UP,
            "{name}: the download does not progress (curl: {}); the logs end:\n{}",
            curl_err(&mut curl),
            c.all_logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (curl, got)
}

/// What a curl still running or ended has said so far: its exit status and stderr if it
/// ended, "running" otherwise.
fn curl_err(curl: &mut std::process::Child) -> String {
    match curl.try_wait() {
        Ok(Some(st)) => {
            let mut err = String::new();
            if let Some(e) = curl.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            format!("{st}: {}", err.trim())
        }
        _ => "running".into(),
    }
}

/// The download in `got` finished (`curl` exited well) and is `big.bin`, byte-exact.
fn assert_whole(c: &Cluster, curl: std::process::Child, got: &std::path::Path, what: &str) {
    let out = curl.wait_with_output().expect("curl");
    assert!(
        out.status.success(),
        "{what}: curl failed: {}; the logs end:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.all_logs()
    );
    let body = std::fs::read(got).expect("download");
    assert_eq!(
        body.len(),
        BIG,
        "{what}: length; the logs end:\n{}",
        c.all_logs()
    );
    assert!(body == pattern(BIG), "{what}: bytes differ");
}

#[test]
fn contact_failover_twenty_times_and_a_stopped_contact_stays_deposed() {
    if !ds_testbed::require_root(
        "contact_failover_twenty_times_and_a_stopped_contact_stays_deposed",
    ) {
        return;
    }
    failover(false);
}

/// The same with the etcd backend of the election (etcd from Debian's packages, in the home
/// agent's namespace).
#[test]
fn contact_failover_with_the_etcd_backend() {
    if !ds_testbed::require_root("contact_failover_with_the_etcd_backend") {
        return;
    }
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("etcd is not installed (scripts/setup.sh installs etcd-server)");
    }
    failover(true);
}

/// etcd on the home agent's address, its data in the test's directory.
fn start_etcd(c: &Cluster) -> (Child, String) {
    let ha = c.a.ha();
    let client = format!("http://[{ha}]:2379");
    let peer = format!("http://[{ha}]:2380");
    let data = c.dir.path().join("etcd");
    let args = [
        "--name",
        "ds",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("ds={peer}"),
    ];
    let (mut p, log, _) = c
        .topo
        .ha
        .spawn_logged("etcd", &args, c.dir.path(), "etcd")
        .expect("etcd");
    p.wait_for_log(&log, "ready to serve client requests", UP)
        .expect("etcd up");
    (p, client)
}

fn failover(etcd: bool) {
    let a = Addrs::new(if etcd { 0xeb } else { 0xe9 }, NODES);
    let c = Cluster::start_members(if etcd { "ds-mfe" } else { "ds-mfo" }, a);
    let etcd_proc = etcd.then(|| start_etcd(&c));
    let root = c.dir.path().join("www");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("small"), b"hello from the distributed server\n").expect("small");
    std::fs::write(root.join("big.bin"), pattern(BIG)).expect("big");
    let mut n = Nodes::new(&c, etcd_proc.as_ref().map(|(_, url)| url.clone()));
    for i in 0..NODES {
        n.start(&c, i, &root);
    }
    let first = n.wait_contact(None);
    assert_eq!(
        first, 0,
        "the first backup to join founds the view and registers"
    );
    let ds: SocketAddr = format!("[{}]:80", a.ds()).parse().expect("DS address");
    assert!(
        c.topo.client.run(|| probe(ds)),
        "served before any failover"
    );

    let mut times = Vec::new();
    let mut contact = first;
    for round in 0..rounds() {
        // A download that the contact hands to the taker after 300 kB.
        let (curl, got) = download(&c, &format!("got{round}.bin"), &a.ds(), "1M", 450_000);
        // SIGKILL the contact; probe until a new connection is served.
        let killed_at = Instant::now();
        n.signal(contact, "-KILL");
        let served = c.topo.client.run(|| loop {
            if probe(ds) {
                break Some(killed_at.elapsed());
            }
            if killed_at.elapsed() > Duration::from_secs(10) {
                break None;
            }
        });
        let took = served.unwrap_or_else(|| {
            panic!(
                "round {round}: no failover within 10 s; the logs end:\n{}",
                c.all_logs()
            )
        });
        times.push(took);
        if let Some(mut p) = n.procs[contact].take() {
            let _ = p.wait();
        }
        let next = n.wait_contact(Some(contact));
        eprintln!(
            "round {round}: node {} killed, node {} is the contact, first new connection served after {:.1} ms",
            contact + 1,
            next + 1,
            took.as_secs_f64() * 1e3
        );
        // The download continues on the taker and arrives whole.
        assert_whole(&c, curl, &got, &format!("round {round}"));
        // The killed node comes back as a new process and joins as the last backup.
        n.start(&c, contact, &root);
        contact = next;
    }
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let rounds = times.len();
    let median = (ms(&times[rounds / 2 - 1]) + ms(&times[rounds / 2])) / 2.0;
    eprintln!(
        "failover (kill -9 of the contact → first new connection served), {rounds} runs: \
         median {median:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(&times[0]),
        ms(&times[rounds - 1])
    );
    println!(
        "{}",
        serde_json::json!({
            "failover_ms": times.iter().map(ms).collect::<Vec<_>>(),
            "median_ms": median,
        })
    );

    // A dead node's clients learn it at once: kill -9 the contact in the middle of a download
    // it serves; curl gets a reset instead of hanging. The taker is stopped meanwhile, so the
    // download cannot leave the contact first (its handoff after 300 kB would otherwise race
    // the kill: the contact's buffers reach 300 kB within milliseconds).
    // Many clients of the node, as a busy contact has: the home agent solicits them all when
    // it dies, more than the client side's backlog (Linux's netdev_max_backlog, 1,000) holds
    // at once, and the download's client must still get its reset.
    let crowd = c
        .topo
        .client
        .run(|| (0..CROWD).filter(|_| probe(ds)).count());
    assert!(crowd > CROWD * 9 / 10, "{crowd} of {CROWD} requests served");
    let victim = contact;
    n.signal(TAKER, "-STOP");
    let (curl, _) = download(&c, "got-killed.bin", &a.ds(), "200K", 1);
    let killed_at = Instant::now();
    n.signal(victim, "-KILL");
    let out = curl.wait_with_output().expect("curl");
    n.signal(TAKER, "-CONT");
    let reset_after = killed_at.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "download from a killed node: curl ended {:.0} ms after the kill: {}",
        reset_after.as_secs_f64() * 1e3,
        err.trim()
    );
    assert!(!out.status.success(), "the download cannot have completed");
    if !err.contains("reset") {
        let mut logs = String::new();
        for e in std::fs::read_dir(c.dir.path()).expect("dir").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(12).collect();
                logs += &format!(
                    "== {}\n{}\n",
                    p.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        panic!("curl was not reset: {err}\n{logs}");
    }
    assert!(
        reset_after < Duration::from_secs(if etcd { 6 } else { 2 }),
        "the client learned of the dead node in {reset_after:?}"
    );
    // The home agent says so too, live (`dsha xdp --control-socket`).
    let fa = &c.ha_status()["flow_agent"];
    eprintln!(
        "home agent: {} flows of dead nodes reset, {} solicitations deferred for want of room",
        fa["flows_reset"], fa["solicitations_deferred"]
    );
    assert!(
        fa["flows_reset"].as_u64().is_some_and(|n| n > 0),
        "the home agent counts the dead node's flows it reset: {fa}"
    );
    if let Some(mut p) = n.procs[victim].take() {
        let _ = p.wait();
    }
    let contact = n.wait_contact(Some(victim));
    n.start(&c, victim, &root);
    println!(
        "{}",
        serde_json::json!({ "reset_after_kill_ms": reset_after.as_secs_f64() * 1e3 })
    );

    // SIGSTOP the contact, with a download on it that it will try to hand off, across a
    // failover; SIGCONT it while its membership traffic is blocked (so it has not learned the
    // new fence): its handoff is refused as stale and the download stays on it and finishes.
    // Unblocked, it learns that it was deposed (the home agent refuses its registration) and
    // rejoins as a backup; the home agent never went back to it.
    // (The download goes to the node's own address, not the DS address: the home agent
    // resets the flows of a node the cluster declared dead, and this one was.)
    let stopped = contact;
    // Stop it at the first bytes: the client's window (256 kB at most) keeps what the node
    // sent so far under the 300 kB after which it hands off.
    let (curl, got) = download(&c, "got-stopped.bin", &a.coa(stopped), "300K", 1);
    n.signal(stopped, "-STOP");
    let next = {
        let t = Instant::now();
        loop {
            if let Some(x) = (0..BACKUPS).filter(|&i| i != stopped).find(|&i| {
                n.members(i)
                    .is_some_and(|m| m["holds_registration"] == serde_json::json!(true))
            }) {
                break x;
            }
            assert!(t.elapsed() < UP, "no failover while the contact is stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(c.topo.client.run(|| probe(ds)), "served by the new contact");
    let ns = &c.topo.nodes[stopped];
    let nft = |rules: &str| {
        let st = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                use std::io::Write as _;
                ch.stdin
                    .take()
                    .expect("stdin")
                    .write_all(rules.as_bytes())?;
                ch.wait()
            })
            .expect("nft");
        assert!(st.success(), "nft {rules}");
    };
    nft("table inet dsblock {\n chain o { type filter hook output priority 0; udp dport { 7000, 7100 } drop; tcp dport 2379 drop; }\n chain i { type filter hook input priority 0; udp sport { 7000, 7100 } drop; tcp sport 2379 drop; }\n}\n");
    n.signal(stopped, "-CONT");
    let log = n.logs[stopped].clone();
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("StaleFence") {
            break;
        }
        if t.elapsed() > UP {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!(
                "the deposed contact's handoff was not refused as stale; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_whole(&c, curl, &got, "the download kept on the deposed node");
    nft("delete table inet dsblock\n");
    let t = Instant::now();
    loop {
        let m = n.members(stopped).expect("the stopped node answers again");
        if m["status"] == serde_json::json!("Backup") {
            assert_eq!(m["holds_registration"], serde_json::json!(false));
            break;
        }
        assert!(t.elapsed() < UP, "the deposed contact did not rejoin: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = n.members(next).expect("members");
    assert_eq!(m["holds_registration"], serde_json::json!(true), "{m}");
    let old = n.members(stopped).expect("members");
    assert_eq!(
        old["fence"], m["fence"],
        "the deposed node learned the new fence"
    );
    assert!(c.topo.client.run(|| probe(ds)), "still served");

    if !etcd {
        // A node with a wrong key cannot join (with etcd, who may campaign is etcd's own
        // access control; the home agent still takes registrations under the cluster key only).
        let rogue = NODES - 1;
        n.signal(rogue, "-INT");
        if let Some(mut p) = n.procs[rogue].take() {
            let _ = p.wait();
        }
        let wrong = c.dir.path().join("wrong-secret");
        std::fs::write(&wrong, "not the cluster secret, 32+ bytes long").expect("key");
        std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let mut args = node_args(&c, rogue, &root, &n.socks[rogue], None);
        let k = args
            .iter()
            .position(|a| a == "--secret-file")
            .expect("flag");
        args[k + 1] = wrong.display().to_string();
        let (p, log, _) = c.topo.nodes[rogue]
            .spawn_logged(env!("CARGO_BIN_EXE_dsnode"), &args, c.dir.path(), "rogue")
            .expect("rogue");
        n.procs[rogue] = Some(p);
        std::thread::sleep(Duration::from_millis(1500));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains("membership: joined"),
            "a node with a wrong key joined"
        );
        let m = n.members(rogue).expect("the rogue node answers dsctl");
        assert_eq!(m["status"], serde_json::json!("Joining"), "{m}");
        let contact = n.wait_contact(None);
        let view = n.members(contact).expect("members");
        let coa = a.coa(rogue);
        assert!(
            !view["snodes"].to_string().contains(&coa),
            "the contact lists the rogue node: {view}"
        );
    }
    for p in n.procs.iter().flatten() {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
    }
    drop(n);
    drop(etcd_proc);
    assert!(c.stop(), "dsha removed its pins");
}

/// Issue 12, item 5: the home agent killed with SIGKILL and started again resumes its
/// registry from the point it persisted (the newest epoch and its holder): the contact
/// continues with its epoch (a deposed node's older one would be refused, see the registry's
/// unit test) and the DS address is served again at once.
#[test]
fn a_home_agent_killed_and_restarted_resumes_its_registry() {
    if !ds_testbed::require_root("a_home_agent_killed_and_restarted_resumes_its_registry") {
        return;
    }
    let a = Addrs::new(0xf2, NODES);
    let mut c = Cluster::start_members("ds-mhr", a);
    let root = c.dir.path().join("www");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("small"), b"hello from the distributed server\n").expect("small");
    let mut n = Nodes::new(&c, None);
    for i in 0..NODES {
        n.start(&c, i, &root);
    }
    let contact = n.wait_contact(None);
    let ds: SocketAddr = format!("[{}]:80", a.ds()).parse().expect("DS address");
    assert!(c.topo.client.run(|| probe(ds)), "served before the crash");
    let t = Instant::now();
    c.crash_and_restart_ha();
    let served = c.topo.client.run(|| loop {
        if probe(ds) {
            break Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(5) {
            break None;
        }
    });
    let log = std::fs::read_to_string(c.dir.path().join("dsha-again.log")).unwrap_or_default();
    eprintln!("home agent killed and restarted: served again after {served:?}");
    assert!(served.is_some(), "not served after the restart: {log}");
    assert!(log.contains("registry resumes a previous run"), "{log}");
    assert_eq!(
        n.contact(),
        Some(contact),
        "the same contact holds the registration"
    );
    for i in 0..NODES {
        if n.procs[i].is_some() {
            n.signal(i, "-INT");
        }
    }
    assert!(c.stop(), "the home agent removed its pins");
}
