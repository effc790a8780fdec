//! What the namespace tests with daemon processes share: the handoff topology (client, XDP
//! home agent, nodes on one bridge), `dsha xdp` started and up, and `dsnode` processes started
//! with their logs and output in the test's directory; SIGINT for everything at the end.
#![allow(dead_code)]

use ds_testbed::topo::{HandoffSpec, HandoffTopology, HA_PORT};
use ds_testbed::{tcp_counters, Child, TempDir};
use ds_xdp::{Kind, LoadOptions, Program};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a daemon may take to come up, or to stop after SIGINT.
pub const UP: Duration = Duration::from_secs(20);

/// The addresses of one test's cluster, all in `fd00:NET:1::/64` (the DS address in
/// `fd00:NET:80::/64`), so that tests running at once never share one.
#[derive(Clone, Copy)]
pub struct Addrs {
    net: u8,
    nodes: usize,
}

impl Addrs {
    /// `nodes` nodes in network `net` (one byte, e.g. `0xd9`).
    pub fn new(net: u8, nodes: usize) -> Self {
        Addrs { net, nodes }
    }

    fn host(&self, h: usize) -> String {
        format!("fd00:{:x}:1::{h:x}", self.net)
    }

    /// The client's kernel address.
    pub fn client(&self) -> String {
        self.host(0xc)
    }

    /// The home agent's address.
    pub fn ha(&self) -> String {
        self.host(0xa)
    }

    /// The home agent's control address.
    pub fn ha_control(&self) -> String {
        format!("[{}]:7001", self.ha())
    }

    /// The home agent's membership endpoint (UDP).
    pub fn members_ha(&self) -> String {
        format!("[{}]:7100", self.ha())
    }

    /// The DS address, served by every node.
    pub fn ds(&self) -> String {
        format!("fd00:{:x}:80::80", self.net)
    }

    /// Node `i`'s care-of address (its userspace stack).
    pub fn coa(&self, i: usize) -> String {
        self.host(1 + i)
    }

    /// Node `i`'s kernel address, for the control channel.
    pub fn ctl(&self, i: usize) -> String {
        self.host(0x11 + i)
    }

    /// Node `i`'s control channel, `[ctl]:7000`.
    pub fn ctl_listen(&self, i: usize) -> String {
        format!("[{}]:7000", self.ctl(i))
    }

    /// Node `i`'s MAC address: the one a stack derives from its address by default, so
    /// that a program started without `--mac` is reachable too.
    pub fn mac(&self, i: usize) -> [u8; 6] {
        let coa = self.coa(i).parse().expect("care-of address");
        ds_apps::mac::mac_from_addr(coa)
    }
}

/// A running cluster: topology, home agent, and the nodes started so far.
pub struct Cluster {
    pub a: Addrs,
    pub topo: HandoffTopology,
    pub dir: TempDir,
    pub secret: PathBuf,
    pins: PathBuf,
    ha: Child,
    ha_args: Vec<String>,
    /// Each node's process, stderr log and stdout file.
    pub nodes: Vec<(Child, PathBuf, PathBuf)>,
    _napi: Program,
}

impl Cluster {
    /// Build the topology for `a` (namespaces named after `prefix`) and start `dsha xdp` with
    /// the DS address bound to node 1.
    pub fn start(prefix: &str, a: Addrs) -> Cluster {
        Self::start_with(prefix, a, false, 1)
    }

    /// As [`Cluster::start`], each node's link with `queues` transmit and receive queues.
    #[allow(dead_code)] // not every test that includes the harness needs it
    pub fn start_queues(prefix: &str, a: Addrs, queues: u32) -> Cluster {
        Self::start_with(prefix, a, false, queues)
    }

    /// As [`Cluster::start`], but the home agent takes the DS address's binding from the
    /// membership protocol (`dsha xdp --members [ha]:7100`, no initial binding): the contact
    /// node that registers gets the new clients.
    pub fn start_members(prefix: &str, a: Addrs) -> Cluster {
        Self::start_with(prefix, a, true, 1)
    }

    fn start_with(prefix: &str, a: Addrs, members: bool, node_queues: u32) -> Cluster {
        let dir = TempDir::new(prefix).expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{prefix} test cluster secret, 32+ bytes")).expect("key");
        // Secret files must be owner-only.
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let (client, ds, ha) = (a.client(), a.ds(), a.ha());
        let ctl: Vec<String> = (0..a.nodes).map(|i| a.ctl(i)).collect();
        let coa: Vec<String> = (0..a.nodes).map(|i| a.coa(i)).collect();
        let neigh: Vec<(&str, [u8; 6])> =
            (0..a.nodes).map(|i| (coa[i].as_str(), a.mac(i))).collect();
        let topo = HandoffTopology::build(&HandoffSpec {
            prefix,
            nodes: a.nodes,
            client_addr: Some(&client),
            client_route_via_ha: Some(&ds),
            ha_addr: &ha,
            node_addrs: &ctl.iter().map(String::as_str).collect::<Vec<_>>(),
            ha_neighbours: &neigh,
            node_queues,
        })
        .expect("topology");
        // A small receive buffer at the client (256 KiB at most, not Linux's 6 MiB), so that a
        // rate-limited download keeps the server sending until the end, and a handoff asked
        // for mid-download finds the connection still sending.
        let sysctl = topo
            .client
            .command("sysctl")
            .args(["-q", "-w", "net.ipv4.tcp_rmem=4096 131072 262144"])
            .status()
            .expect("sysctl");
        assert!(sysctl.success(), "sysctl tcp_rmem in the client namespace");
        // XDP_TX on the home agent's veth needs NAPI on its peer: a pass-all program there.
        let napi = Program::load(Kind::Steer, &LoadOptions::default()).expect("load");
        topo.hub
            .run(|| {
                ds_xdp::loader::ifindex(HA_PORT)
                    .and_then(|i| napi.attach(i, ds_xdp::Mode::Native, false))
            })
            .expect("attach");
        let pins = PathBuf::from(format!("/sys/fs/bpf/ds/{prefix}-{}", std::process::id()));
        let members_at = a.members_ha();
        let (bind_flag, bind) = if members {
            ("--members", members_at.as_str())
        } else {
            ("--bind", coa[0].as_str())
        };
        let args = [
            "xdp",
            "--iface",
            "h0",
            "--addr",
            &ha,
            "--ds",
            &ds,
            bind_flag,
            bind,
            "--control",
            &a.ha_control(),
            "--secret-file",
            &secret.display().to_string(),
            "--pin-dir",
            &pins.display().to_string(),
            "--control-socket",
            &dir.path().join("dsha.sock").display().to_string(),
        ];
        let mut ha_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if members {
            // The registry's resume point in the test's own directory, gone with it even
            // when a failed test kills the home agent.
            let state = dir.path().join("dsha-registry.json");
            ha_args.extend(["--state-file".to_string(), state.display().to_string()]);
        }
        let ha = spawn_ha(&topo, &ha_args, dir.path(), "dsha");
        Cluster {
            a,
            topo,
            dir,
            secret,
            pins,
            ha,
            ha_args,
            nodes: Vec::new(),
            _napi: napi,
        }
    }

    /// `kill -9` the home agent, then start it again with the same options on the same
    /// interface (its log is `dsha-again.log`); waits until it is up.
    #[allow(dead_code)] // not every test that includes the harness needs it
    pub fn crash_and_restart_ha(&mut self) {
        self.ha.kill().expect("kill -9 dsha");
        let _ = self.ha.wait();
        self.ha = spawn_ha(&self.topo, &self.ha_args, self.dir.path(), "dsha-again");
    }

    /// The home agent's counters now (`dsctl status` on its control socket).
    #[allow(dead_code)] // not every test that includes the harness needs it
    pub fn ha_status(&self) -> serde_json::Value {
        dsctl(&self.dir.path().join("dsha.sock"), &["status"]).expect("dsctl status of dsha")
    }

    /// The home agent's process id.
    #[allow(dead_code)] // not every test that includes the harness needs it
    pub fn ha_pid(&self) -> u32 {
        self.ha.id()
    }

    /// `dsnode serve --device afxdp` on node `i` with its address, MAC and the DS address,
    /// plus `extra`; waits until it serves.
    pub fn start_node(&mut self, i: usize, extra: &[String]) {
        self.start_dsnode(i, extra, "serving http");
    }

    /// As [`Cluster::start_node`], up once its log shows `ready`.
    pub fn start_dsnode(&mut self, i: usize, extra: &[String], ready: &str) {
        self.start_dsnode_on(i, "afxdp", extra, ready);
    }

    /// As [`Cluster::start_dsnode`] with `--device device` (for `kernel`, call
    /// [`Cluster::kernel_addrs`] first).
    pub fn start_dsnode_on(&mut self, i: usize, device: &str, extra: &[String], ready: &str) {
        let mut args = vec![
            "serve".to_string(),
            "--device".into(),
            device.into(),
            "--iface".into(),
            "n0".into(),
            "--addr".into(),
            self.a.coa(i),
            "--also-addr".into(),
            self.a.ds(),
            "--mac".into(),
            ds_apps::mac::format_mac(&self.a.mac(i)),
        ];
        args.extend_from_slice(extra);
        let name = format!("dsnode{}", i + 1);
        self.start_program(i, env!("CARGO_BIN_EXE_dsnode"), &args, &name, ready);
    }

    /// Give node `i`'s kernel what a kernel-socket node needs: the MAC the home agent's
    /// neighbour entry names, its care-of address on `n0`, the DS address on `lo`.
    pub fn kernel_addrs(&self, i: usize) {
        let ns = &self.topo.nodes[i];
        let mac = ds_apps::mac::format_mac(&self.a.mac(i));
        ns.ip(&["link", "set", "n0", "address", &mac]).expect("MAC");
        let coa = format!("{}/128", self.a.coa(i));
        ns.ip(&["-6", "addr", "add", &coa, "dev", "n0", "nodad"])
            .expect("care-of address");
        let ds = format!("{}/128", self.a.ds());
        ds_testbed::add_addr(ns, "lo", &ds).expect("DS address");
    }

    /// Two file-server nodes in transparent mode, node 1 on `device` (node 2 on AF_XDP),
    /// serving `body` as `/big.bin`, each with a control socket; returns the sockets.
    pub fn start_file_servers(&mut self, device: &str, body: &[u8]) -> [PathBuf; 2] {
        self.start_file_servers_with(device, body, &[])
    }

    /// As [`Cluster::start_file_servers`], with `extra` options for both nodes.
    pub fn start_file_servers_with(
        &mut self,
        device: &str,
        body: &[u8],
        extra: &[&str],
    ) -> [PathBuf; 2] {
        let root = self.dir.path().join("www");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("big.bin"), body).expect("file");
        let socks = [0, 1].map(|i| self.dir.path().join(format!("node{}.sock", i + 1)));
        for (i, sock) in socks.iter().enumerate() {
            let mut args = self.transparent_args(i, &root, sock);
            args.extend(extra.iter().map(|a| a.to_string()));
            let dev = if i == 0 { device } else { "afxdp" };
            self.start_dsnode_on(i, dev, &args, "serving http");
        }
        socks
    }

    /// `dsnode` options for node `i` of a two-node cluster serving `root` in transparent
    /// mode: its control channel, the other node as peer (with its care-of address for a
    /// drain), the home agent, and its control socket `sock`.
    pub fn transparent_args(&self, i: usize, root: &Path, sock: &Path) -> Vec<String> {
        let mut v = vec!["--root".to_string(), root.display().to_string()];
        v.extend(self.peer_args(i));
        v.extend(["--control-socket".into(), sock.display().to_string()]);
        v
    }

    /// `dsnode` options for node `i` of a two-node cluster in transparent mode: its control
    /// channel, the other node as peer (with its care-of address), the home agent.
    pub fn peer_args(&self, i: usize) -> Vec<String> {
        [
            "--control-listen",
            &self.a.ctl_listen(i),
            "--peer",
            &self.a.ctl_listen(1 - i),
            "--peer-coa",
            &self.a.coa(1 - i),
            "--secret-file",
            &self.secret.display().to_string(),
            "--steering",
            "transparent",
            "--ha-control",
            &self.a.ha_control(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Any program `exe` with `args` in node `i`'s namespace, its stderr logged as `name`;
    /// waits until its log shows `ready`.
    pub fn start_program(&mut self, i: usize, exe: &str, args: &[String], name: &str, ready: &str) {
        let (mut p, log, out) = self.topo.nodes[i]
            .spawn_logged(exe, args, self.dir.path(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        p.wait_for_log(&log, ready, UP)
            .unwrap_or_else(|e| panic!("{name} not up: {e}"));
        self.nodes.push((p, log, out));
    }

    /// The client's kernel's count of retransmitted TCP segments (`TcpRetransSegs`).
    pub fn client_retransmits(&self) -> u64 {
        let c = tcp_counters(&self.topo.client).expect("counters");
        c.get("TcpRetransSegs").copied().unwrap_or(0)
    }

    /// curl downloads `/path` from the DS address at `rate` (so that a handoff happens
    /// mid-download) into `DIR/name`; asserts that curl succeeded and that the client
    /// retransmitted nothing meanwhile; returns what arrived.
    pub fn download(&self, path: &str, rate: &str, name: &str) -> Vec<u8> {
        let before = self.client_retransmits();
        let file = self.dir.path().join(name);
        let out = self
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
            .arg(&file)
            .arg(format!("http://[{}]/{path}", self.a.ds()))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {path}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.node_logs()
        );
        assert_eq!(
            self.client_retransmits() - before,
            0,
            "client retransmissions"
        );
        std::fs::read(&file).expect("downloaded file")
    }

    /// The last 40 lines of every `*.log` in the test's directory (home agent, nodes, etcd,
    /// restarted processes alike), oldest file first, for a failure message.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn all_logs(&self) -> String {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .map(|p| {
                        let t = std::fs::metadata(&p)
                            .and_then(|m| m.created().or_else(|_| m.modified()))
                            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                        (t, p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut all = String::new();
        for (_, p) in files {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            all.push_str(&format!("--- {}:\n{tail}\n", p.display()));
        }
        all
    }

    /// The end of every node's log and output, for a failure message.
    pub fn node_logs(&self) -> String {
        let mut all = String::new();
        for (i, (_, log, out)) in self.nodes.iter().enumerate() {
            for (what, p) in [("log", log), ("output", out)] {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                all.push_str(&format!(
                    "--- node {} {what} ({}):\n{tail}\n",
                    i + 1,
                    p.display()
                ));
            }
        }
        all
    }

    /// [`Cluster::download`] of `/SIZE` at 4 MB/s from servers that answer with `size` bytes
    /// of the example pattern (byte i is i mod 251); asserts that it arrives whole and
    /// byte-exact.
    pub fn download_pattern(&self, size: usize) {
        let got = self.download(&size.to_string(), "4M", "got.bin");
        assert_eq!(got.len(), size, "length");
        let bad = got
            .iter()
            .enumerate()
            .position(|(i, b)| *b != (i % 251) as u8);
        assert_eq!(bad, None, "first wrong byte");
    }

    /// SIGINT to the nodes, then the home agent; true when the home agent removed its pins.
    pub fn stop(self) -> bool {
        self.stop_with_ha_summary().0
    }

    /// [`Cluster::stop`], also returning what the home agent printed at exit (its summary:
    /// control channels, flow moves, flows).
    pub fn stop_with_ha_summary(mut self) -> (bool, String) {
        self.stop_processes();
        let out = std::fs::read_to_string(self.dir.path().join("dsha.out")).unwrap_or_default();
        (!self.pins.exists(), out)
    }

    fn stop_processes(&mut self) {
        let procs = self.nodes.iter_mut().map(|(c, _, _)| c);
        for c in procs.chain(std::iter::once(&mut self.ha)) {
            if c.try_wait().ok().flatten().is_some() {
                continue; // exited already (a drained node)
            }
            let _ = std::process::Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t.elapsed() < UP {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `dsha` with `args` in the home agent's namespace, logged as `name`; up once it says so.
fn spawn_ha(topo: &HandoffTopology, args: &[String], dir: &Path, name: &str) -> Child {
    let (mut ha, log, _) = topo
        .ha
        .spawn_logged(env!("CARGO_BIN_EXE_dsha"), args, dir, name)
        .expect("dsha");
    ha.wait_for_log(&log, "XDP home agent up", UP)
        .unwrap_or_else(|e| panic!("{name} not up: {e}"));
    ha
}

/// `dsctl --json --socket SOCK ARGS...`, parsed; an error with dsctl's message.
pub fn dsctl(sock: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsctl"))
        .args(["--json", "--socket"])
        .arg(sock)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Panics, saying how to rebuild, when `artefact` (a library or example another package of
/// the workspace builds) is older than a source file of the crates it is built from: a stale
/// one speaks an older protocol and fails in ways that look like bugs ("bad hello:
/// unsupported version"). `cargo test -p ds-apps` alone does not rebuild it; `cargo test
/// --workspace` does.
#[allow(dead_code)] // only the tests that run such artefacts need it
pub fn assert_fresh(artefact: &Path) {
    fn newest(dir: &Path, best: &mut std::time::SystemTime) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                newest(&p, best);
            } else if p.extension().is_some_and(|x| x == "rs") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    *best = (*best).max(t);
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut src = std::time::UNIX_EPOCH;
    for krate in [
        "dserver",
        "capi",
        "handoff",
        "stack",
        "xdp",
        "kernel",
        "mipv6",
        "membership",
        "examples",
    ] {
        newest(&root.join(krate), &mut src);
    }
    let built = std::fs::metadata(artefact)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    assert!(
        built >= src,
        "{} is older than the sources it is built from: rebuild it \
         (`cargo test --workspace`, or `cargo test -p dserver-c --no-run`, then `cargo build -p dserver-c` and `cargo build -p dserver --examples`)",
        artefact.display()
    );
}
