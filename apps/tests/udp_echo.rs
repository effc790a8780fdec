//! The seed's UDP echo service on the DS address, through the home agent: a kernel client sends
//! 128-byte datagrams to the DS address; `dsha xdp` tunnels them to the node (`dsnode serve
//! --device afxdp --udp-echo 7`), which answers from the DS address straight to the client.
//! Once with the file server's node, once in proxy mode, where the echo service runs on the
//! library's `dserver::Node` (the same service code, over its public API). Needs root; prints
//! SKIP otherwise.

mod cluster;

use cluster::{dsctl, Addrs, Cluster};
use ds_testbed::require_root;
use std::net::{SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

#[test]
fn udp_echo_answers_on_the_ds_address_through_the_home_agent() {
    if !require_root("udp_echo_answers_on_the_ds_address_through_the_home_agent") {
        return;
    }
    let c = Cluster::start("ue", Addrs::new(0xd8, 1));
    let root = c.dir.path().display().to_string();
    run(c, &["--root", &root], "serving http");
}

#[test]
fn udp_echo_on_the_library_answers_through_the_home_agent() {
    if !require_root("udp_echo_on_the_library_answers_through_the_home_agent") {
        return;
    }
    let c = Cluster::start("uf", Addrs::new(0xe7, 1));
    run(c, &["--backend", "[::1]:8000"], "serving proxy");
}

/// The node started with `mode` (and the echo on port 7), then 100 datagrams.
fn run(mut c: Cluster, mode: &[&str], ready: &str) {
    let ctl_sock = c.dir.path().join("node.sock");
    let ctl = ctl_sock.display().to_string();
    let mut args: Vec<String> = mode.iter().map(|a| a.to_string()).collect();
    args.extend(["--udp-echo", "7", "--control-socket", &ctl].map(String::from));
    c.start_dsnode(0, &args, ready);
    let node_log = c.nodes[0].1.clone();
    let (client, ds) = (c.a.client(), c.a.ds());

    let sock = c
        .topo
        .client
        .run(|| UdpSocket::bind(format!("[{client}]:0")))
        .expect("client socket");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let to: SocketAddrV6 = format!("[{ds}]:7").parse().expect("literal");
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
    let status = dsctl(&ctl_sock, &["status"]).expect("dsctl status");
    assert!(
        status["udp_echo"]["echoed"].as_u64() >= Some(100),
        "{status}"
    );
    // SIGINT, so that the home agent detaches its program and removes its pins.
    assert!(c.stop(), "the home agent removed its pins");
}
