//! End to end, in namespaces: transparent mode (seed §3.1.1) with the XDP redirect fast path.
//!
//! ```text
//!  client ─┐                 (one bridge "lan")
//!  HA ─────┼── br0 ──┬── node 1 (userspace stack over AF_XDP, steering program)
//!          │         └── node 2 (same)
//! ```
//!
//! The kernel client reaches the DS address through the home agent (route via the HA). The
//! HA's tunnel program encapsulates the connection to node 1's care-of address (binding, flow
//! learned); node 1's steering program decapsulates it into its AF_XDP socket, where our stack
//! serves it. Then node 1 freezes the connection, node 2 thaws it, and ONE update of the HA's
//! flow map moves the flow: the client's next bytes land at node 2. Replies go straight from
//! the serving node to the client with the DS address as source (the client's socket accepts
//! them), never through the HA.

use ds_stack::runner::Runner;
use ds_stack::{Config, ConnState, Error, Interface};
use ds_testbed::conn::step_serving;
use ds_testbed::topo::{HandoffSpec, HandoffTopology, HA_PORT};
use ds_testbed::{require_root, Netns};
use ds_xdp::device::{AfXdpConfig, AfXdpDevice};
use ds_xdp::maps::{TunnelConfig, TunnelCounter, TunnelMode};
use ds_xdp::{Kind, LoadOptions, Mode, Program};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CLIENT: &str = "fd00:e::c";
const HA: &str = "fd00:e::a";
const COA1: &str = "fd00:e::1";
const COA2: &str = "fd00:e::2";
const DS: &str = "fd00:d5::80";
const MAC1: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 1];
const MAC2: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 2];
const CHUNK: usize = 256 << 10;
/// How long the serving node waits for frames in a round.
const STEP: Duration = Duration::from_millis(1);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal address")
}

/// Our stack on a node: owns its care-of address (first, so NDP uses it as source) and the DS
/// address, over AF_XDP on `n0`.
fn node(ns: &Netns, coa: Ipv6Addr, mac: [u8; 6]) -> Runner<AfXdpDevice> {
    let dev = ns
        .try_run(move || AfXdpDevice::open("n0", &AfXdpConfig::new(vec![coa, ip(DS)])))
        .expect("enter node namespace")
        .expect("AF_XDP device");
    let cfg = Config::new(mac, vec![coa, ip(DS)]);
    let mut rt = Runner::new(dev, Interface::new(cfg, ds_stack::Instant::ZERO));
    let now = rt.now();
    rt.iface.announce(now);
    rt
}

/// The home agent's tunnel program, pinned as `dsha xdp` pins it, unpinned on drop.
struct PinnedTunnel(Program);

impl PinnedTunnel {
    /// FIB mode, flow learning on, the DS address bound to `coa`.
    fn load(coa: Ipv6Addr) -> PinnedTunnel {
        let pin_dir = format!("/sys/fs/bpf/ds/test-e2e-{}", std::process::id());
        let opts = LoadOptions {
            pin_dir: Some(pin_dir.into()),
            flow_capacity: Some(1024),
        };
        let tun = PinnedTunnel(Program::load(Kind::Tunnel, &opts).expect("load tunnel"));
        let config = TunnelConfig {
            local: ip(HA),
            mode: TunnelMode::Fib,
            hop_limit: 64,
            mtu: 1500,
            learn: true,
        };
        tun.set_config(&config).expect("config");
        tun.set_binding(ip(DS), coa).expect("binding");
        tun
    }
}

impl std::ops::Deref for PinnedTunnel {
    type Target = Program;

    fn deref(&self) -> &Program {
        &self.0
    }
}

impl Drop for PinnedTunnel {
    fn drop(&mut self) {
        let _ = self.0.unpin();
    }
}

/// Echo what arrived on `c`; returns bytes echoed.
fn echo(rt: &mut Runner<AfXdpDevice>, c: ds_stack::TcpHandle, pending: &mut Vec<u8>) -> usize {
    let mut buf = [0u8; 16384];
    let mut n_total = 0;
    loop {
        match rt.iface.tcp_recv(c, &mut buf) {
            Ok(0) | Err(Error::Eof) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) => panic!("node connection: {e}"),
        }
    }
    while !pending.is_empty() {
        match rt.iface.tcp_send(c, pending) {
            Ok(0) => break,
            Ok(n) => {
                pending.drain(..n);
                n_total += n;
            }
            Err(e) => panic!("node send: {e}"),
        }
    }
    n_total
}

#[test]
fn transparent_mode_flow_moves_with_one_map_update() {
    if !require_root("transparent_mode_flow_moves_with_one_map_update") {
        return;
    }
    // The DS address is reached through the home agent. Links are MTU 1500 everywhere, so the
    // client's first full-sized segments are too big once tunnelled: the HA's program answers
    // them with Packet Too Big (RFC 2473 §7.1) and the client's kernel lowers its path MTU.
    // A home agent is a router (RFC 6275 §10.4.1); bpf_fib_lookup also refuses to answer
    // (BPF_FIB_LKUP_RET_FWD_DISABLED) on an interface without forwarding.
    let topo = HandoffTopology::build(&HandoffSpec {
        prefix: "",
        nodes: 2,
        client_addr: Some(CLIENT),
        client_route_via_ha: Some(DS),
        ha_addr: HA,
        node_addrs: &[],
        ha_neighbours: &[(COA1, MAC1), (COA2, MAC2)],
        node_queues: 1,
    })
    .expect("topology");
    let (client, ha) = (&topo.client, &topo.ha);
    // XDP_TX on the HA's veth needs NAPI on its peer (veth_xdp_xmit checks it): an XDP
    // program there enables it. The steering program with no addresses passes everything.
    let napi = Program::load(Kind::Steer, &LoadOptions::default()).expect("load pass-all");
    topo.hub
        .run(|| {
            let idx = ds_xdp::loader::ifindex(HA_PORT)?;
            napi.attach(idx, Mode::Native, false)
        })
        .expect("attach pass-all");

    // Home agent: the tunnel program, FIB mode, binding DS -> node 1, learning on.
    let tun = PinnedTunnel::load(ip(COA1));
    let mode = ha
        .run(|| {
            let idx = ds_xdp::loader::ifindex("h0")?;
            tun.attach(idx, Mode::Native, false)
        })
        .expect("attach tunnel");
    assert_eq!(mode, Mode::Native);

    let mut rt1 = node(&topo.nodes[0], ip(COA1), MAC1);
    let mut rt2 = node(&topo.nodes[1], ip(COA2), MAC2);
    let l = rt1
        .iface
        .tcp_listen(SocketAddrV6::new(ip(DS), 80, 0, 0), 4)
        .expect("listen");

    let (to_client, from_main) = mpsc::channel::<()>();
    let (to_main, from_client) = mpsc::channel::<&'static str>();
    let start = Instant::now();
    let limit = Duration::from_secs(60);
    std::thread::scope(|sc| {
        let cl = sc.spawn(|| {
            client.run(move || {
                let to = std::net::SocketAddr::V6(SocketAddrV6::new(ip(DS), 80, 0, 0));
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
                    .expect("connect to the DS address");
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                s.set_write_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let local = s.local_addr().expect("local");
                let a = vec![0xa5u8; CHUNK];
                s.write_all(&a).expect("write phase 1");
                let mut back = vec![0u8; CHUNK];
                s.read_exact(&mut back).expect("echo phase 1");
                assert_eq!(back, a, "phase 1 echo");
                to_main.send("phase1").expect("signal");
                from_main.recv_timeout(Duration::from_secs(30)).expect("go");
                let b = vec![0x5au8; CHUNK];
                s.write_all(&b).expect("write phase 2");
                s.read_exact(&mut back).expect("echo phase 2");
                assert_eq!(back, b, "phase 2 echo");
                assert_eq!(
                    s.peer_addr().expect("peer").ip(),
                    std::net::IpAddr::V6(ip(DS)),
                    "replies came from the DS address"
                );
                local.port()
            })
        });

        // Phase 1: node 1 serves.
        let mut conn = None;
        let mut pending = Vec::new();
        let mut echoed1 = 0;
        loop {
            if start.elapsed() > limit || cl.is_finished() {
                panic!(
                    "phase 1 failed: HA {:?}\nnode 1 {:?}\nstack 1 {:?}\nxsk {:?}",
                    tun.counters(),
                    rt1.dev.program().counters(),
                    rt1.iface.stats(),
                    rt1.dev.stats()
                );
            }
            step_serving(&mut rt1, &mut rt2, STEP, (start, limit), "phase 1");
            if conn.is_none() {
                conn = rt1.iface.tcp_accept(l);
            }
            if let Some(c) = conn {
                echoed1 += echo(&mut rt1, c, &mut pending);
            }
            if from_client.try_recv().is_ok() {
                break;
            }
        }
        let c1 = conn.expect("accepted");
        assert_eq!(echoed1, CHUNK);
        // Hand off: freeze on node 1, thaw on node 2, ONE flow-map update at the HA.
        let now = rt1.now();
        let state = rt1.iface.tcp_freeze(now, c1).expect("freeze").encode();
        rt1.iface.remove_addr(ip(DS));
        let st = ConnState::decode(&state).expect("decode");
        let now = rt2.now();
        let c2 = rt2.iface.tcp_thaw(now, &st).expect("thaw");
        let flows = tun.flows().expect("flows");
        let (key, v) = flows
            .iter()
            .find(|(k, _)| k.proto == 6 && k.dst == ip(DS) && k.dport == 80)
            .expect("the connection's flow was learned");
        assert_eq!(v.owner, ip(COA1));
        let packets_before = v.packets;
        tun.set_flow(key, ip(COA2)).expect("move the flow");
        let before = rt2.iface.stats().tcp_rx_segments;
        to_client.send(()).expect("go");

        // Phase 2: node 2 serves.
        let mut echoed2 = 0;
        while !cl.is_finished() || echoed2 < CHUNK {
            step_serving(&mut rt2, &mut rt1, STEP, (start, limit), "phase 2");
            echoed2 += echo(&mut rt2, c2, &mut pending);
        }
        let port = cl.join().expect("client");
        assert_eq!(key.sport, port, "the flow is the client's connection");
        assert_eq!(echoed2, CHUNK);
        assert!(
            rt2.iface.stats().tcp_rx_segments > before,
            "node 2 got the flow"
        );
        let v = tun.flow(key).expect("lookup").expect("flow");
        assert_eq!(v.owner, ip(COA2));
        assert!(v.packets > packets_before);
        let c = |n: TunnelCounter| tun.counter(n as u32).expect("counter");
        eprintln!("HA counters: {:?}", tun.counters().expect("counters"));
        assert!(
            c(TunnelCounter::Binding) >= 1,
            "first packet via the binding"
        );
        assert_eq!(c(TunnelCounter::FlowLearned), 1);
        assert!(c(TunnelCounter::FlowHit) > 100);
        assert!(
            c(TunnelCounter::Ptb) >= 1,
            "path MTU discovery through the tunnel"
        );
        // Replies do not cross the HA: its program saw only a handful of non-DS packets
        // (neighbour discovery), not the hundreds of reply segments.
        assert!(
            c(TunnelCounter::PassNoBinding) < 50,
            "replies went through the HA?"
        );
        let s1 = rt1.dev.program().counters().expect("node 1 counters");
        eprintln!("node 1 steering: {s1:?}");
        let decap1 = s1.iter().find(|(n, _)| *n == "decap").map(|c| c.1);
        assert!(decap1.unwrap_or(0) > 0, "node 1 decapsulated");
    });
    drop(rt1);
    drop(rt2);
    let _ = ha.run(|| ds_xdp::loader::ifindex("h0").and_then(ds_xdp::loader::detach));
}
