//! The C examples (`examples/c/`) against the header cbindgen generates
//! (`capi/include/dserver.h`) and `libdserver_c.so`: compiled with `cc -Wall -Wextra
//! -Werror`, run in namespaces behind `dsha xdp`.
//!
//! - `http.c` on two nodes: curl downloads 4 MiB from the DS address; node 1 hands the
//!   connection to node 2 after 1 MiB with the response's progress as state; byte-exact, no
//!   client retransmission.
//! - `echo.c` (epoll on the node's readiness descriptor) on one node: a `std::net` client in
//!   the client's namespace gets back what it sent, small and large.
//!
//! Needs root; prints SKIP otherwise.

mod cluster;

use cluster::{Addrs, Cluster};
use ds_testbed::require_root;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SIZE: usize = 4 << 20;
const AFTER: usize = 1 << 20;

/// Where `libdserver_c.so` is: `cargo test` leaves it in `target/<profile>/deps`, beside
/// this test's own binary; `cargo build` puts it one level up.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let deps = exe.parent().expect("deps dir").to_path_buf();
    match deps.parent() {
        Some(up) if !deps.join("libdserver_c.so").exists() => up.to_path_buf(),
        _ => deps,
    }
}

/// Compile `examples/c/NAME.c` into `dir`, as a C user would: the generated header, the
/// shared library, every warning an error.
fn compile(name: &str, dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = lib_dir();
    assert!(
        lib.join("libdserver_c.so").exists(),
        "libdserver_c.so is missing in {}: run the suite with `cargo test --workspace`",
        lib.display()
    );
    // The C programs may load either copy (LD_LIBRARY_PATH, set by cargo, lists both).
    for dir in [
        lib.clone(),
        lib.parent().map(Path::to_path_buf).unwrap_or_default(),
    ] {
        let so = dir.join("libdserver_c.so");
        if so.exists() {
            cluster::assert_fresh(&so);
        }
    }
    let out = dir.join(name);
    let status = std::process::Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("capi/include"))
        .arg(root.join(format!("examples/c/{name}.c")))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&lib)
        .arg("-ldserver_c")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .status()
        .expect("cc");
    assert!(status.success(), "cc {name}.c: {status}");
    out.display().to_string()
}

/// `echo.c`'s settings on node 1: port 7 of the DS address, through the home agent.
fn echo_args(c: &Cluster) -> Vec<String> {
    vec![
        format!("ds_addr={}", c.a.ds()),
        format!("care_of={}", c.a.coa(0)),
        "iface=n0".into(),
        "port=7".into(),
    ]
}

/// `http.c`'s settings on node `i`: its peer is the other node; hand off after `AFTER`.
fn http_args(c: &Cluster, i: usize) -> Vec<String> {
    vec![
        format!("ds_addr={}", c.a.ds()),
        format!("care_of={}", c.a.coa(i)),
        "iface=n0".into(),
        format!("secret_file={}", c.secret.display()),
        format!("control_listen={}", c.a.ctl_listen(i)),
        format!("peer={}", c.a.ctl_listen(1 - i)),
        format!("home_agent={}", c.a.ha_control()),
        format!("handoff_after={AFTER}"),
    ]
}

/// Node 1's report line: it handed the download off at `AFTER`.
fn handoff_line(c: &Cluster) -> String {
    let out1 = std::fs::read_to_string(&c.nodes[0].2).expect("node 1 output");
    let moved = out1
        .lines()
        .find(|l| l.starts_with("handed off"))
        .unwrap_or_else(|| panic!("node 1 did not hand off: {out1}"));
    assert!(moved.contains(&format!("at={AFTER} ")), "{moved}");
    moved.to_string()
}

#[test]
fn the_c_http_server_hands_a_download_to_the_other_node() {
    if !require_root("the_c_http_server_hands_a_download_to_the_other_node") {
        return;
    }
    let mut c = Cluster::start("ch", Addrs::new(0xdb, 2));
    let exe = compile("http", c.dir.path());
    for i in 0..2 {
        let args = http_args(&c, i);
        c.start_program(i, &exe, &args, &format!("http{}", i + 1), "http: serving");
    }
    c.download_pattern(SIZE);
    let moved = handoff_line(&c);
    eprintln!("C server handoff: {moved}");
    assert!(c.stop(), "the home agent removed its pins");
}

/// The C HTTP server on kernel sockets on node 1 (its own listening socket; the kernel owns
/// the care-of address on `n0` and the DS address on `lo`) moves the download with
/// `ds_handoff_fd` to node 2's C server on the userspace stack.
#[test]
fn the_c_http_server_hands_a_kernel_socket_to_the_other_node() {
    if !require_root("the_c_http_server_hands_a_kernel_socket_to_the_other_node") {
        return;
    }
    let mut c = Cluster::start("ck", Addrs::new(0xde, 2));
    let exe = compile("http", c.dir.path());
    c.kernel_addrs(0);
    for i in 0..2 {
        let mut args = http_args(&c, i);
        if i == 0 {
            args.push("device=kernel".into());
        }
        c.start_program(i, &exe, &args, &format!("http{}", i + 1), "http: serving");
    }
    c.download_pattern(SIZE);
    let moved = handoff_line(&c);
    let log1 = std::fs::read_to_string(&c.nodes[0].1).expect("node 1 log");
    assert!(
        log1.contains("kernel->user"),
        "not a kernel-socket handoff: {log1}"
    );
    eprintln!("C kernel-socket handoff: {moved}");
    assert!(c.stop(), "the home agent removed its pins");
}

/// `policy=round-robin`: node 1's C server asks the library where each client goes
/// (`ds_place`) and hands every other one, with its request, to node 2, which serves it whole.
#[test]
fn the_c_http_server_places_clients_round_robin() {
    if !require_root("the_c_http_server_places_clients_round_robin") {
        return;
    }
    let mut c = Cluster::start("cp", Addrs::new(0xe8, 2));
    let exe = compile("http", c.dir.path());
    for i in 0..2 {
        let mut args = http_args(&c, i);
        args.retain(|a| !a.starts_with("handoff_after="));
        args.push("policy=round-robin".into());
        c.start_program(i, &exe, &args, &format!("http{}", i + 1), "http: serving");
    }
    for _ in 0..4 {
        c.download_pattern(256 << 10);
    }
    let out1 = std::fs::read_to_string(&c.nodes[0].2).expect("node 1 output");
    let placed = out1.lines().filter(|l| l.starts_with("placed on")).count();
    assert_eq!(placed, 2, "every other client goes to node 2: {out1}");
    assert!(c.stop(), "the home agent removed its pins");
}

#[test]
fn the_c_echo_server_answers_through_the_home_agent() {
    if !require_root("the_c_echo_server_answers_through_the_home_agent") {
        return;
    }
    let mut c = Cluster::start("ce", Addrs::new(0xdc, 1));
    let exe = compile("echo", c.dir.path());
    c.start_program(0, &exe, &echo_args(&c), "echo", "echo: serving");
    let ds: std::net::Ipv6Addr = c.a.ds().parse().expect("DS address");
    let echoed = c.topo.client.run(move || {
        let mut s = std::net::TcpStream::connect((ds, 7)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut all = Vec::new();
        // Small messages one at a time, then one larger than the server's buffer, written
        // while it is echoed back (the server keeps what it cannot send yet).
        for len in [1usize, 128, 1400] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            s.write_all(&msg).expect("write");
            let mut back = vec![0u8; len];
            s.read_exact(&mut back).expect("read");
            assert_eq!(back, msg, "echo of {len} bytes");
            all.push(len);
        }
        let big: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
        let mut r = s.try_clone().expect("clone");
        let reader = std::thread::spawn(move || {
            let mut back = vec![0u8; 200_000];
            r.read_exact(&mut back).map(|()| back)
        });
        s.write_all(&big).expect("write");
        let back = reader.join().expect("reader").expect("read");
        assert!(back == big, "the large echo differs");
        all.push(big.len());
        all
    });
    assert_eq!(echoed, [1, 128, 1400, 200_000]);
    assert!(c.stop(), "the home agent removed its pins");
}

/// Several cores from C: `echo.c` with `queues=2` serves each receive queue of its veth with
/// its own node on its own thread (`ds_queues_open`, `ds_node_new_on_queue`); clients through
/// the home agent all get their echo, whichever queue their flow hashed to.
#[test]
fn the_c_echo_server_serves_one_node_per_queue() {
    if !require_root("the_c_echo_server_serves_one_node_per_queue") {
        return;
    }
    const CLIENTS: usize = 24;
    let mut c = Cluster::start_queues("cq", Addrs::new(0xdd, 1), 2);
    let exe = compile("echo", c.dir.path());
    let mut args = echo_args(&c);
    args.push("queues=2".into());
    c.start_program(0, &exe, &args, "echo", "echo: serving on 2 queues");
    let ds: std::net::Ipv6Addr = c.a.ds().parse().expect("DS address");
    let echoed = c.topo.client.run(move || {
        (0..CLIENTS)
            .filter(|k| {
                let mut s = std::net::TcpStream::connect((ds, 7)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let msg: Vec<u8> = (0..1000).map(|i| ((i + k) % 251) as u8).collect();
                s.write_all(&msg).expect("write");
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).expect("read");
                back == msg
            })
            .count()
    });
    assert_eq!(echoed, CLIENTS, "every client got its echo");
    let log = std::fs::read_to_string(&c.nodes[0].1).expect("echo log");
    let per_queue: Vec<usize> = (0..2)
        .map(|q| {
            log.lines()
                .filter(|l| l.contains(&format!("echo: queue {q} accepted")))
                .count()
        })
        .collect();
    eprintln!("accepted per queue: {per_queue:?}");
    assert_eq!(per_queue.iter().sum::<usize>(), CLIENTS, "{log}");
    // The home agent's tunnel spreads the clients' flows by their inner addresses and ports.
    assert!(
        per_queue.iter().all(|n| *n > 0),
        "both queues served: {per_queue:?}"
    );
    assert!(c.stop(), "the home agent removed its pins");
}
