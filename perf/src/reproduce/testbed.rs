//! The seed's Figure 1 testbed in network namespaces.
//!
//! ```text
//!                         ┌──────────── core: dswan (w0 w1 w2) ────────────┐
//!  client c0 ── w0 ───────┤  CS1 = path w0–w1, CS2 = w0–w2, SS = w1–w2;    │
//!  fd00:5d::c             │  upstream of w1 and w2: each home agent's link  │
//!                         └───────── w1 ─────────────────── w2 ─────────────┘
//!                                    │                       │
//!              home agent 1: x0 fd00:5d::1          home agent 2: x0 fd00:5d::2
//!              (dsha xdp on x0)   h1 fd00:5d:1::1                 h2 fd00:5d:2::1
//!                                    │                       │
//!              node 1: n0 (dsnode on AF_XDP)        node 2: n0 (dsnode on AF_XDP)
//!              care-of fd00:5d:1::11, kernel ::21   care-of fd00:5d:2::12, kernel ::22
//! ```
//!
//! The DS address `fd00:5d:1::80` is in network 1: the client's packets to it go to home
//! agent 1, whose XDP program tunnels each flow to its node (node 1 on its own link, node 2
//! across the core: the SS path); replies go from the node straight to the client (through
//! its home agent's router and the core). The core is the WAN emulator: each pair of sites
//! has its own path (delay, and in [`Paths::upstream_mbit`] the bandwidth of each home
//! agent's link to the core, shared by its paths, as the seed shaped it with `cbq`).
//!
//! Every daemon is a process started as an operator would (`dswan`, `dsha`, `dsnode`), found
//! next to `dsperf` or in `$DS_BIN_DIR`.

use crate::find_program;
use crate::handoff::Side;
use crate::proc::Proc;
use anyhow::{bail, Context, Result};
use ds_handoff::Mode;
use ds_testbed::topo::neighbour;
use ds_testbed::{
    add_addr, add_route, disable_offload, set_ethtool_features, veth, wait_addr_usable, Netns,
};
use ds_xdp::{Kind, LoadOptions, Program};
use std::io::Write as _;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The client's address (core network).
pub const CLIENT: &str = "fd00:5d::c";
/// The home agents' addresses on the core network.
pub const HA_CORE: [&str; 2] = ["fd00:5d::1", "fd00:5d::2"];
/// The home agents' addresses on their own networks (the nodes' routers).
pub const HA_NET: [&str; 2] = ["fd00:5d:1::1", "fd00:5d:2::1"];
/// The networks' prefixes.
pub const NET: [&str; 2] = ["fd00:5d:1::/64", "fd00:5d:2::/64"];
/// The nodes' care-of addresses (their userspace stacks).
pub const COA: [&str; 2] = ["fd00:5d:1::11", "fd00:5d:2::12"];
/// The nodes' kernel addresses (control channels).
pub const CTL: [&str; 2] = ["fd00:5d:1::21", "fd00:5d:2::22"];
/// The DS address (home address in network 1; home agent 1 is its home agent).
pub const DS: &str = "fd00:5d:1::80";
/// The nodes' stack MACs.
pub const MAC: [[u8; 6]; 2] = [[0x02, 0x5d, 0, 0, 0, 1], [0x02, 0x5d, 0, 0, 0, 2]];
/// The UDP echo service's port on the DS address.
pub const ECHO_PORT: u16 = 7;
/// The handoff control port of each node.
pub const CTL_PORT: u16 = 7000;
/// The flow agent's port at home agent 1.
pub const HA_PORT: u16 = 7001;
/// The kernel TCP congestion control of every namespace of the testbed: Linux's default (and
/// that of the seed's 2008 kernels), whatever the host's. With BBR (this VM's host default)
/// the control channel's startup overran the 100-frame shaped queue it shares with the
/// download: 17–107 segments retransmitted per channel over three state transfers, and one
/// download in ten of Figure 2 took a retransmission timeout (~1 s) longer; with CUBIC, 1–2.
pub const TCP_CC: &str = "cubic";
const SECRET: &[u8] = b"dsperf reproduce: the seed's testbed";

pub(crate) fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or(Ipv6Addr::UNSPECIFIED)
}

/// One-way latencies of the three paths and the home agents' upstream bandwidth.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Paths {
    /// Client – network 1, ms.
    pub cs1_ms: f64,
    /// Client – network 2, ms.
    pub cs2_ms: f64,
    /// Network 1 – network 2, ms.
    pub ss_ms: f64,
    /// Each home agent's link to the core, Mbit/s (`None`: unshaped), with a queue of 100
    /// frames.
    pub upstream_mbit: Option<f64>,
}

/// The client's ports, first and last ([`Fig1::client_port`]).
const CLIENT_PORTS: (u16, u16) = (10000, 32767);

/// The client port after `p`, wrapping within [`CLIENT_PORTS`].
fn next_client_port(p: u16) -> u16 {
    let (first, last) = CLIENT_PORTS;
    if (first..last).contains(&p) {
        p + 1
    } else {
        first
    }
}

/// The running testbed (see the module documentation); dropping it stops the daemons and
/// removes the namespaces.
pub struct Fig1 {
    // Field order: the processes die before their namespaces go.
    wan: Option<Proc>,
    ha: Option<Proc>,
    nodes: [Option<Proc>; 2],
    /// The core (the emulator).
    pub core: Netns,
    /// The client.
    pub client: Netns,
    /// Home agents 1 and 2.
    pub has: [Netns; 2],
    /// Nodes 1 and 2.
    pub node_ns: [Netns; 2],
    /// Scratch directory: the secret, the served files, the daemons' logs.
    pub dir: PathBuf,
    tag: String,
    secret: PathBuf,
    sides: [Side; 2],
    /// The next client port ([`Fig1::client_port`]).
    next_port: std::sync::atomic::AtomicU16,
    _napi: Program,
    /// Set when [`TCP_CC`] had to be allowed for the namespaces: the host's list comes back.
    _cc: Option<CcAllowed>,
    /// Owns [`Fig1::dir`]: removed after the processes (field order), and also when `build`
    /// fails half-way.
    _scratch: ds_testbed::TempDir,
}

const ALLOWED_CC: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// The host's `tcp_allowed_congestion_control` as it was before [`TCP_CC`] was added to it,
/// written back when the testbed goes. Linux lets a namespace other than the host's choose a
/// congestion control only among the allowed ones (`tcp_set_default_congestion_control`:
/// EPERM otherwise), and Debian's kernel with BBR as default allows only `reno bbr`.
struct CcAllowed;

/// The list to restore, also for [`restore_allowed_cc`] on an interrupt (which exits without
/// dropping the testbed).
static ALLOWED_BEFORE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Write the host's `tcp_allowed_congestion_control` back if a testbed widened it (for
/// `dsperf`'s interrupt handler; dropping the testbed does it otherwise).
pub fn restore_allowed_cc() {
    let was = ALLOWED_BEFORE.lock().ok().and_then(|mut w| w.take());
    if let Some(was) = was {
        if let Err(e) = std::fs::write(ALLOWED_CC, &was) {
            tracing::warn!("restoring net.ipv4.tcp_allowed_congestion_control: {e}");
        }
    }
}

impl CcAllowed {
    /// Make [`TCP_CC`] allowed if it is not; `None` when nothing had to change.
    fn ensure() -> Result<Option<CcAllowed>> {
        let was = std::fs::read_to_string(ALLOWED_CC)?;
        let was = was.trim().to_string();
        if was.split_whitespace().any(|c| c == TCP_CC) {
            return Ok(None);
        }
        if let Ok(mut w) = ALLOWED_BEFORE.lock() {
            w.get_or_insert_with(|| was.clone());
        }
        std::fs::write(ALLOWED_CC, format!("{was} {TCP_CC}"))?;
        tracing::info!(
            "{TCP_CC} added to net.ipv4.tcp_allowed_congestion_control (was \"{was}\") for the testbed's namespaces; restored at the end"
        );
        Ok(Some(CcAllowed))
    }
}

impl Drop for CcAllowed {
    fn drop(&mut self) {
        restore_allowed_cc();
    }
}

impl Drop for Fig1 {
    fn drop(&mut self) {
        self.nodes = [None, None];
        self.ha = None;
        self.wan = None;
    }
}

impl Fig1 {
    /// Builds the namespaces, links, addresses and routes (no daemon runs yet).
    pub fn build() -> Result<Fig1> {
        let tag = format!("{}-{}", std::process::id(), crate::unique());
        let scratch =
            ds_testbed::TempDir::at(std::env::temp_dir().join(format!("dsperf-fig1-{tag}")))?;
        let dir = scratch.path().to_path_buf();
        std::fs::create_dir_all(dir.join("www"))?;
        let secret = dir.join("secret");
        {
            let mut f = std::fs::File::create(&secret)?;
            f.write_all(SECRET)?;
            // Secret files must be owner-only.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        let core = Netns::new("fig1_core")?;
        let client = Netns::new("fig1_cli")?;
        let has = [Netns::new("fig1_ha1")?, Netns::new("fig1_ha2")?];
        let node_ns = [Netns::new("fig1_n1")?, Netns::new("fig1_n2")?];
        let cc = CcAllowed::ensure()?;
        for ns in [&core, &client, &has[0], &has[1], &node_ns[0], &node_ns[1]] {
            ns.sysctl("net.ipv4.tcp_congestion_control", TCP_CC)?;
        }
        veth(&client, "c0", &core, "w0")?;
        for i in 0..2 {
            let w = format!("w{}", i + 1);
            veth(&has[i], "x0", &core, &w)?;
            veth(&has[i], &format!("h{}", i + 1), &node_ns[i], "n0")?;
        }
        for w in ["w0", "w1", "w2"] {
            // The core's own kernel stays silent on the links.
            core.sysctl(&format!("net.ipv6.conf.{w}.disable_ipv6"), "1")?;
        }
        // A home agent's XDP_TX towards the core needs NAPI on the core's end of its veth
        // (veth_xdp_xmit checks it): a pass-all steering program there enables it.
        let napi = Program::load(Kind::Steer, &LoadOptions::default())?;
        core.try_run(|| -> Result<()> {
            for w in ["w1", "w2"] {
                napi.attach(ds_xdp::loader::ifindex(w)?, ds_xdp::Mode::Native, false)?;
            }
            Ok(())
        })??;
        // Full checksums from the client: partial ones would reach the nodes' AF_XDP sockets
        // unfinished through the home agent's XDP tunnel.
        disable_offload(&client, "c0")?;
        add_addr(&client, "c0", &format!("{CLIENT}/64"))?;
        for i in 0..2 {
            let ha = &has[i];
            add_addr(ha, "x0", &format!("{}/64", HA_CORE[i]))?;
            add_addr(ha, &format!("h{}", i + 1), &format!("{}/64", HA_NET[i]))?;
            ha.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            add_route(ha, NET[1 - i], Some(HA_CORE[1 - i]), Some("x0"))?;
            add_route(&client, NET[i], Some(HA_CORE[i]), Some("c0"))?;
            // The nodes' stacks answer neighbour solicitations only for what the steering
            // program gives them: their care-of addresses are permanent entries.
            neighbour(ha, &format!("h{}", i + 1), COA[i], MAC[i])?;
            let n = &node_ns[i];
            add_addr(n, "n0", &format!("{}/64", CTL[i]))?;
            add_route(n, "default", Some(HA_NET[i]), Some("n0"))?;
        }
        for (ns, ifname, addr) in [
            (&client, "c0", CLIENT),
            (&has[0], "x0", HA_CORE[0]),
            (&has[1], "x0", HA_CORE[1]),
            (&node_ns[0], "n0", CTL[0]),
            (&node_ns[1], "n0", CTL[1]),
        ] {
            wait_addr_usable(ns, ifname, addr, Duration::from_secs(5))?;
        }
        Ok(Fig1 {
            _napi: napi,
            _cc: cc,
            _scratch: scratch,
            wan: None,
            ha: None,
            nodes: [None, None],
            core,
            client,
            has,
            node_ns,
            dir,
            tag,
            secret,
            sides: [Side::User; 2],
            next_port: std::sync::atomic::AtomicU16::new(CLIENT_PORTS.0),
        })
    }

    /// A client port no earlier download of this testbed used (until 22,768 downloads wrap
    /// it): home agent 1 remembers a moved flow long after its connection ends
    /// (`MOVED_IDLE`), so a download that happened to reuse a port of an earlier, moved one
    /// went straight to node 2 and node 1 never served it. Below Linux's ephemeral range
    /// (32768–60999), so no other socket of the client's holds it.
    pub(crate) fn client_port(&self) -> u16 {
        use std::sync::atomic::Ordering;
        self.next_port
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(next_client_port(p))
            })
            .unwrap_or(CLIENT_PORTS.0)
    }

    /// (Re)starts the core emulator with `p`.
    pub fn set_paths(&mut self, p: &Paths) -> Result<()> {
        self.wan = None;
        let ms = |v: f64| format!("{v}ms");
        let mut args = vec![
            "w0".to_string(),
            "w1".into(),
            "w2".into(),
            "--stats-every".into(),
            "0".into(),
            "--json".into(),
            "--link".into(),
            format!("w0,w1:delay={}", ms(p.cs1_ms)),
            "--link".into(),
            format!("w0,w2:delay={}", ms(p.cs2_ms)),
            "--link".into(),
            format!("w1,w2:delay={}", ms(p.ss_ms)),
        ];
        if let Some(r) = p.upstream_mbit {
            for w in ["w1", "w2"] {
                // A queue of 100 frames, like a DSL modem's, not netem's 1,000 (12 s at
                // 1 Mbit/s: everything behind it would wait that long).
                args.extend(["--upstream".into(), format!("{w}:rate={r}mbit,limit=100")]);
            }
        }
        let mut proc = Proc::spawn(
            &self.core,
            "dswan",
            &find_program("dswan")?,
            &args,
            &self.dir,
        )?;
        proc.ready("forwarding between")?;
        self.wan = Some(proc);
        self.warm_neighbours();
        Ok(())
    }

    /// Resolves the neighbours across the core once, as a network in service has them:
    /// home agent 2's router otherwise learns the client's link address only when node 2
    /// first sends to the client, an emulated round trip (2·Lat_CS2) during which the
    /// kernel drops what it cannot queue (231 segments of an acceptor's first window at
    /// 100 Mbit/s and Lat_CS = 10 ms). A datagram from the client to each router's network
    /// address makes the router answer (port unreachable), which resolves both directions.
    /// Best effort: a router that does not answer only leaves its cache cold.
    fn warm_neighbours(&self) {
        for r in HA_NET {
            let dst = SocketAddrV6::new(ip(r), 9, 0, 0);
            let warmed = self.client.try_run(|| -> std::io::Result<()> {
                let s = UdpSocket::bind("[::]:0")?;
                s.connect(dst)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(b"warm")?;
                let mut buf = [0u8; 16];
                match s.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                    Err(e) => Err(e),
                    Ok(_) => Ok(()),
                }
            });
            match warmed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(router = r, "neighbour warm-up: {e}"),
                Err(e) => tracing::warn!(router = r, "neighbour warm-up: {e:#}"),
            }
        }
    }

    /// (Re)starts home agent 1 (`dsha xdp` on its core interface) with the DS address bound
    /// to node `bind`'s care-of address.
    pub fn start_ha(&mut self, bind: usize) -> Result<()> {
        self.ha = None;
        let args: Vec<String> = vec![
            "xdp".into(),
            "--iface".into(),
            "x0".into(),
            "--addr".into(),
            HA_NET[0].into(),
            "--ds".into(),
            DS.into(),
            "--bind".into(),
            COA[bind].into(),
            "--control".into(),
            SocketAddrV6::new(ip(HA_CORE[0]), HA_PORT, 0, 0).to_string(),
            "--secret-file".into(),
            self.secret.display().to_string(),
            "--pin-dir".into(),
            format!("/sys/fs/bpf/ds/dsperf-fig1-{}", self.tag),
            "--json".into(),
        ];
        let mut p = Proc::spawn(
            &self.has[0],
            "dsha",
            &find_program("dsha")?,
            &args,
            &self.dir,
        )?;
        p.ready("XDP home agent up")?;
        self.ha = Some(p);
        Ok(())
    }

    /// Puts node `i` on the kernel path (its care-of address on `n0` and the DS address on
    /// `lo` become the kernel's, and `n0` takes the MAC the home agent's neighbour entry
    /// names, as in `dsperf handoff`) or back on our stack (the kernel gives the addresses up).
    pub fn set_side(&mut self, i: usize, side: Side) -> Result<()> {
        let ns = &self.node_ns[i];
        let coa = format!("{}/128", COA[i]);
        let ds = format!("{DS}/128");
        match side {
            Side::Kernel => {
                ns.ip(&[
                    "link",
                    "set",
                    "n0",
                    "address",
                    &ds_apps::mac::format_mac(&MAC[i]),
                ])?;
                ns.ip(&["-6", "addr", "replace", &coa, "dev", "n0", "nodad"])?;
                ns.ip(&["-6", "addr", "replace", &ds, "dev", "lo", "nodad"])?;
            }
            Side::User => {
                // Absent already is fine.
                let _ = ns.exec(&["ip", "-6", "addr", "del", &coa, "dev", "n0"]);
                let _ = ns.exec(&["ip", "-6", "addr", "del", &ds, "dev", "lo"]);
            }
        }
        self.sides[i] = side;
        Ok(())
    }

    /// Ready the client's link for a client on our stack (`true`) or the kernel's (`false`).
    /// Ours reads c0 through XDP and AF_XDP, which see each frame as the emulator wrote it on
    /// w0 (a partial checksum, a super-frame): with w0's transmit offloads off the kernel
    /// finishes both before the veth (validate_xmit_skb), as a real link's sender would. Only
    /// then: the work falls on the emulator's one thread and delays the other paths (phase 2
    /// at zero latency took 2–3 ms instead of 0.2 in 1 run in 4).
    pub fn client_on_stack(&self, ours: bool) -> Result<()> {
        set_ethtool_features(&self.core, "w0", &["tx", "sg", "tso", "gso"], !ours)
    }

    /// A client on our stack in the client's namespace (a Mobile IPv6 correspondent node, for
    /// route-optimised steering): the client's address and MAC on `c0`, each network reached
    /// through its home agent, as the client's kernel routes, the routers' MACs known.
    pub(crate) fn stack_client(&self, timeout: Duration) -> Result<crate::handoff::StackClient> {
        let out = self.client.ip(&["-j", "link", "show", "c0"])?;
        Ok(crate::handoff::StackClient {
            ifname: "c0".into(),
            me: ip(CLIENT),
            mac: link_mac(&out.stdout, "c0")?,
            gateway: None,
            routes: (0..2)
                .map(|i| ds_stack::Route {
                    prefix: ip(NET[i].trim_end_matches("/64")),
                    len: 64,
                    via: ip(HA_CORE[i]),
                })
                .collect(),
            // A client's routers are next to it; here the emulated paths lie between them, and
            // a fresh client per download would pay a round trip on CS for each resolution.
            neighbours: vec![
                (ip(HA_CORE[0]), self.router_mac(0)?),
                (ip(HA_CORE[1]), self.router_mac(1)?),
            ],
            server: SocketAddrV6::new(ip(DS), 80, 0, 0),
            path: "/obj".into(),
            timeout,
            record: true,
            local_port: self.client_port(),
        })
    }

    /// The options every node gets: its addresses, the DS address, the UDP echo service (our
    /// stack only), the handoff engine towards the other node, steering moved connections by
    /// `steering`: home agent 1 moves the flow (transparent) or the acceptor binds the client
    /// (route optimisation, RFC 6275: node 1 is at home on the DS address, node 2 serves it
    /// away from home; the client must be a correspondent node, [`Fig1::stack_client`]). The
    /// device follows [`Fig1::set_side`].
    pub fn node_args(&self, i: usize, steering: Mode) -> Vec<String> {
        let user = self.sides[i] == Side::User;
        let ro = steering == Mode::Ro;
        let mut v: Vec<String> = vec![
            "serve".into(),
            "--device".into(),
            if user { "afxdp" } else { "kernel" }.into(),
            "--iface".into(),
            "n0".into(),
            "--addr".into(),
            COA[i].into(),
            "--mac".into(),
            ds_apps::mac::format_mac(&MAC[i]),
            "--gateway".into(),
            HA_NET[i].into(),
            "--port".into(),
            "80".into(),
            "--root".into(),
            self.dir.join("www").display().to_string(),
            "--control-listen".into(),
            SocketAddrV6::new(ip(CTL[i]), CTL_PORT, 0, 0).to_string(),
            "--peer".into(),
            SocketAddrV6::new(ip(CTL[1 - i]), CTL_PORT, 0, 0).to_string(),
            "--secret-file".into(),
            self.secret.display().to_string(),
            "--json".into(),
        ];
        // Route-optimised, node 2 serves the DS address only away from home (after a
        // handoff, as its home address); it is never one of its own addresses.
        if !(ro && i == 1) {
            v.extend(["--also-addr".into(), DS.into()]);
        }
        if ro {
            v.extend([
                "--steering".into(),
                "ro".into(),
                "--home-addr".into(),
                DS.into(),
            ]);
        } else {
            v.extend([
                "--steering".into(),
                "transparent".into(),
                "--ha-control".into(),
                SocketAddrV6::new(ip(HA_CORE[0]), HA_PORT, 0, 0).to_string(),
            ]);
        }
        if user {
            v.extend(["--udp-echo".into(), ECHO_PORT.to_string()]);
        }
        v
    }

    /// Waits until the client connects to the DS address's HTTP port (the whole path is up,
    /// whichever node serves).
    pub fn wait_http(&self) -> Result<()> {
        let t = Instant::now();
        let dst = std::net::SocketAddr::from((ip(DS), 80));
        self.client.run(|| -> Result<()> {
            while t.elapsed() < Duration::from_secs(20) {
                if std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(500)).is_ok() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            bail!("no TCP connection to {dst} after 20 s")
        })
    }

    /// (Re)starts node `i` (0 or 1) with `args` (see [`Fig1::node_args`]).
    pub fn start_node(&mut self, i: usize, args: &[String]) -> Result<()> {
        self.nodes[i] = None;
        let name = format!("dsnode{}", i + 1);
        let mut p = Proc::spawn(
            &self.node_ns[i],
            &name,
            &find_program("dsnode")?,
            args,
            &self.dir,
        )?;
        p.ready("serving http")?;
        self.nodes[i] = Some(p);
        Ok(())
    }

    /// Waits at most `timeout` until node `i`'s standard output so far satisfies `done`;
    /// whether it did.
    pub fn wait_node_output(
        &self,
        i: usize,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> bool {
        let Some(p) = &self.nodes[i] else {
            return false;
        };
        let t = Instant::now();
        loop {
            if done(&p.output()) {
                return true;
            }
            if t.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops node `i` (SIGINT) and returns its standard output.
    pub fn stop_node(&mut self, i: usize) -> Result<String> {
        match self.nodes[i].take() {
            Some(p) => p.stop(),
            None => Ok(String::new()),
        }
    }

    /// Waits until a UDP echo to the DS address comes back (the whole path is up).
    pub fn wait_echo(&self) -> Result<()> {
        let t = Instant::now();
        let dst = SocketAddrV6::new(ip(DS), ECHO_PORT, 0, 0);
        self.client.run(|| -> Result<()> {
            let s = UdpSocket::bind("[::]:0")?;
            s.connect(dst)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = [0u8; 256];
            while t.elapsed() < Duration::from_secs(20) {
                s.send(b"ping")?;
                if s.recv(&mut buf).is_ok() {
                    return Ok(());
                }
            }
            bail!("no UDP echo from {dst} after 20 s")
        })
    }

    /// The MAC address of home agent `i`'s core interface: the Ethernet source of what
    /// reaches the client from network `i`.
    pub fn router_mac(&self, i: usize) -> Result<[u8; 6]> {
        let out = self.has[i].ip(&["-j", "link", "show", "x0"])?;
        link_mac(&out.stdout, "x0")
    }

    /// The tail of a daemon's log (for error messages).
    pub fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The MAC address in `ip -j link show <ifname>`'s output.
fn link_mac(json: &[u8], ifname: &str) -> Result<[u8; 6]> {
    let v: serde_json::Value = serde_json::from_slice(json).context("ip -j link")?;
    let s = v[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {ifname}"))?;
    ds_apps::mac::parse_mac(s).map_err(|e| anyhow::anyhow!("{s}: {e}"))
}

/// `context` for errors that should carry the daemons' logs.
pub(crate) fn with_logs<T>(bed: &Fig1, r: Result<T>) -> Result<T> {
    r.with_context(|| {
        format!(
            "dsha:\n{}\ndsnode1:\n{}\ndsnode2:\n{}",
            bed.log_tail("dsha"),
            bed.log_tail("dsnode1"),
            bed.log_tail("dsnode2")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ports_repeat_only_after_every_one_was_used_and_avoid_the_ephemeral_range() {
        let mut seen = std::collections::HashSet::new();
        let mut p = CLIENT_PORTS.0;
        for _ in 0..=(CLIENT_PORTS.1 - CLIENT_PORTS.0) {
            assert!(seen.insert(p), "port {p} again before the wrap");
            assert!((1024..32768).contains(&p), "port {p}");
            p = next_client_port(p);
        }
        assert_eq!(seen.len(), 22_768);
        assert_eq!(p, CLIENT_PORTS.0, "wraps to the first");
    }
}
