//! A file server with several peers hands its connections to them in turn: `dsha xdp` and
//! three `dsnode --device afxdp` file servers (transparent steering); node 1 has nodes 2 and 3
//! as `--peer`s and a byte quota, so that each download leaves it mid-response. Two downloads
//! one after the other: the first moves to node 2, the second to node 3; both arrive
//! byte-exact with no client retransmission. `dsctl handoff --to` accepts either peer only.
//! The same with node 1 on the kernel's own sockets (`--device kernel`, `TCP_REPAIR`). Needs root; prints SKIP otherwise.

mod cluster;

use cluster::{dsctl, Addrs, Cluster};
use ds_testbed::{require_root, PatternStream};

const SIZE: usize = 2 << 20;
const QUOTA: usize = 512 << 10;

#[test]
fn the_file_server_hands_connections_to_its_peers_in_turn() {
    if !require_root("the_file_server_hands_connections_to_its_peers_in_turn") {
        return;
    }
    run(Cluster::start("fp", Addrs::new(0xf3, 3)), "afxdp");
}

#[test]
fn a_kernel_file_server_hands_connections_to_its_peers_in_turn() {
    if !require_root("a_kernel_file_server_hands_connections_to_its_peers_in_turn") {
        return;
    }
    let c = Cluster::start("fk", Addrs::new(0xf4, 3));
    c.kernel_addrs(0);
    run(c, "kernel");
}

/// The scenario with node 1 on `device` (nodes 2 and 3 on AF_XDP).
fn run(mut c: Cluster, device: &str) {
    let body = PatternStream::bytes(0xf3f3, SIZE);
    let root = c.dir.path().join("www");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("big.bin"), &body).expect("file");
    for i in 0..3 {
        let mut args = vec![
            "--root".to_string(),
            root.display().to_string(),
            "--control-listen".into(),
            c.a.ctl_listen(i),
            "--secret-file".into(),
            c.secret.display().to_string(),
            "--steering".into(),
            "transparent".into(),
            "--ha-control".into(),
            c.a.ha_control(),
        ];
        if i == 0 {
            args.extend([
                "--peer".into(),
                c.a.ctl_listen(1),
                "--peer".into(),
                c.a.ctl_listen(2),
                "--handoff-after".into(),
                QUOTA.to_string(),
                "--control-socket".into(),
                c.dir.path().join("node1.sock").display().to_string(),
            ]);
        }
        let dev = if i == 0 { device } else { "afxdp" };
        c.start_dsnode_on(i, dev, &args, "serving http");
    }
    // The operator may name either peer, nothing else.
    let refused = dsctl(
        &c.dir.path().join("node1.sock"),
        &[
            "handoff",
            &format!("[{}]:1", c.a.client()),
            "--to",
            "[fd00:f3:1::99]:7000",
        ],
    )
    .expect_err("not a peer");
    for i in [1, 2] {
        assert!(refused.contains(&c.a.ctl_listen(i)), "{refused}");
    }
    for round in 1..=2 {
        let got = c.download("big.bin", "4M", &format!("got{round}.bin"));
        assert!(got == body, "download {round} byte-exact");
        // Download `round` went to node `round + 1` (index `round`), and only there.
        let adopted = |i: usize| {
            std::fs::read_to_string(&c.nodes[i].1)
                .unwrap_or_default()
                .matches("connection adopted from peer")
                .count()
        };
        assert_eq!(
            (adopted(1), adopted(2)),
            if round == 1 { (1, 0) } else { (1, 1) },
            "after download {round}"
        );
    }
    assert!(c.stop(), "the home agent removed its pins");
}
