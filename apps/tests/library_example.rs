//! The `dserver` library's Rust example (`examples/rust/handoff_server.rs`, under 100 lines)
//! on two nodes behind `dsha xdp`: curl asks node 1 (the contact node) for a 4 MiB response
//! at a limited rate; after 1 MiB node 1 hands the connection, with how far the response got,
//! to node 2 through the library's `handoff_value`, and node 2's copy of the example sends
//! the rest. The body arrives byte-exact with no client retransmission. Needs root; prints
//! SKIP otherwise.

mod cluster;

use cluster::{Addrs, Cluster};
use ds_testbed::require_root;
use std::path::PathBuf;

const SIZE: usize = 4 << 20;
const AFTER: usize = 1 << 20;

/// The example binary, built by `cargo test --workspace` next to this test's own binary.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join("examples").join("handoff_server");
    assert!(
        p.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the examples)",
        p.display()
    );
    cluster::assert_fresh(&p);
    p
}

/// `s` without ANSI colour sequences (the example's log is coloured).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for ch in s.chars() {
        match (esc, ch) {
            (false, '\x1b') => esc = true,
            (false, c) => out.push(c),
            (true, 'm') => esc = false,
            (true, _) => {}
        }
    }
    out
}

#[test]
fn the_rust_example_server_hands_a_download_to_the_other_node() {
    if !require_root("the_rust_example_server_hands_a_download_to_the_other_node") {
        return;
    }
    let exe = example();
    let mut c = Cluster::start("lx", Addrs::new(0xda, 2));
    for i in 0..2 {
        let args = [
            "--ds",
            &c.a.ds(),
            "--coa",
            &c.a.coa(i),
            "--iface",
            "n0",
            "--secret-file",
            &c.secret.display().to_string(),
            "--control-listen",
            &c.a.ctl_listen(i),
            "--peer",
            &c.a.ctl_listen(1 - i),
            "--home-agent",
            &c.a.ha_control(),
            "--handoff-after",
            &AFTER.to_string(),
        ]
        .map(String::from);
        let name = format!("example{}", i + 1);
        c.start_program(i, &exe.display().to_string(), &args, &name, "node up");
    }
    c.download_pattern(SIZE);

    // Node 1 handed it off at the byte asked for, node 2 served the rest.
    let log1 = plain(&std::fs::read_to_string(&c.nodes[0].1).expect("node 1 log"));
    let moved = log1
        .lines()
        .find(|l| l.contains("handed off") && l.contains("handoff_server"))
        .unwrap_or_else(|| panic!("node 1's example did not hand off: {log1}"));
    assert!(moved.contains(&format!("at={AFTER}")), "{moved}");
    eprintln!("example handoff: {moved}");
    assert!(c.stop(), "the home agent removed its pins");
}
