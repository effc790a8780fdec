//! The seed's UDP echo service on the DS address, through the home agent: a kernel client sends
//! 128-byte datagrams to the DS address; `dsha xdp` tunnels them to the node (`dsnode serve
//! --device afxdp --udp-echo 7`), which answers from the DS address straight to the client.
//! Needs root; prints SKIP otherwise.

use ds_testbed::topo::{HandoffSpec, HandoffTopology, HA_PORT};
use ds_testbed::{require_root, Child, TempDir};
use ds_xdp::{Kind, LoadOptions, Program};
use std::net::{SocketAddrV6, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CLIENT: &str = "fd00:d8:1::c";
const HA: &str = "fd00:d8:1::a";
const COA: &str = "fd00:d8:1::1";
const CTL: &str = "fd00:d8:1::11";
const DS: &str = "fd00:d8:80::80";
const MAC: [u8; 6] = [0x02, 0xd8, 0, 0, 0, 1];

/// Wait until `log` says `pattern` (the process is up), or fail with the log.
fn ready(child: &mut Child, log: &std::path::Path, pattern: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(pattern)) {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "exited early ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "not up after 20 s: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn udp_echo_answers_on_the_ds_address_through_the_home_agent() {
    if !require_root("udp_echo_answers_on_the_ds_address_through_the_home_agent") {
        return;
    }
    let dir = TempDir::new("udp-echo").expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "udp echo test cluster secret!!!!").expect("secret");
    let topo = HandoffTopology::build(&HandoffSpec {
        prefix: "ue",
        nodes: 1,
        client_addr: Some(CLIENT),
        client_route_via_ha: Some(DS),
        ha_addr: HA,
        node_addrs: &[CTL],
        ha_neighbours: &[(COA, MAC)],
    })
    .expect("topology");
    // XDP_TX on the home agent's veth needs NAPI on its peer: a pass-all program there.
    let napi = Program::load(Kind::Steer, &LoadOptions::default()).expect("load");
    topo.hub
        .run(|| {
            ds_xdp::loader::ifindex(HA_PORT)
                .and_then(|i| napi.attach(i, ds_xdp::Mode::Native, false))
        })
        .expect("attach");
    let spawn = |ns: &ds_testbed::Netns, bin: &str, args: &[String], name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        let child = ns
            .command(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        (Child::new(child), log)
    };
    let s = |x: &str| x.to_string();
    let pins = format!("/sys/fs/bpf/ds/udp-echo-{}", std::process::id());
    let pin_dir = std::path::PathBuf::from(&pins);
    let (mut ha, ha_log) = spawn(
        &topo.ha,
        env!("CARGO_BIN_EXE_dsha"),
        &[
            s("xdp"),
            s("--iface"),
            s("h0"),
            s("--addr"),
            s(HA),
            s("--ds"),
            s(DS),
            s("--bind"),
            s(COA),
            s("--control"),
            format!("[{HA}]:7001"),
            s("--secret-file"),
            secret.display().to_string(),
            s("--pin-dir"),
            pins,
        ],
        "dsha",
    );
    ready(&mut ha, &ha_log, "XDP home agent up");
    let (mut node, node_log) = spawn(
        &topo.nodes[0],
        env!("CARGO_BIN_EXE_dsnode"),
        &[
            s("serve"),
            s("--device"),
            s("afxdp"),
            s("--iface"),
            s("n0"),
            s("--addr"),
            s(COA),
            s("--also-addr"),
            s(DS),
            s("--mac"),
            ds_apps::mac::format_mac(&MAC),
            s("--root"),
            dir.path().display().to_string(),
            s("--udp-echo"),
            s("7"),
        ],
        "dsnode",
    );
    ready(&mut node, &node_log, "serving http");

    let sock = topo
        .client
        .run(|| UdpSocket::bind(format!("[{CLIENT}]:0")))
        .expect("client socket");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let to: SocketAddrV6 = format!("[{DS}]:7").parse().expect("literal");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 2048];
    for k in 0..100u8 {
        let msg = [k; 128];
        let t = Instant::now();
        // The first datagrams may meet neighbour discovery on the way: a few tries each.
        let got = (0..5).find_map(|_| {
            sock.send_to(&msg, to).ok()?;
            let (n, from) = sock.recv_from(&mut buf).ok()?;
            Some((n, from))
        });
        let (n, from) = got.unwrap_or_else(|| {
            panic!(
                "no echo of datagram {k}: {}",
                std::fs::read_to_string(&node_log).unwrap_or_default()
            )
        });
        rtts.push(t.elapsed());
        assert_eq!(
            from,
            std::net::SocketAddr::V6(to),
            "answered from the DS address"
        );
        assert_eq!(&buf[..n], &msg[..], "echoed byte-exact");
    }
    rtts.sort();
    eprintln!(
        "UDP echo through the home agent: median {:?}, p90 {:?}",
        rtts[50], rtts[90]
    );
    // SIGINT, so that the home agent detaches its program and removes its pins.
    for c in [&mut node, &mut ha] {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let t = Instant::now();
        while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(!pin_dir.exists(), "the home agent removed its pins");
}
