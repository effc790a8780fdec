//! End to end: the `dsnode` binary on a TAP device in one network namespace, clients on the
//! Linux kernel's TCP (curl and `std::net`) in another. Needs root; prints SKIP otherwise.
//!
//! Topology (the same as `scripts/demo.sh`), ULA addresses only:
//!
//! ```text
//! cli: veth0 fd00:d5::2/64  <-veth->  srv: veth0 -- br0 -- dstap0 (dsnode, fd00:d5::80)
//! ```

mod cluster;

use anyhow::{bail, ensure, Context, Result};
use ds_testbed::{
    add_addr, bridge, disable_offload, require_root, set_up, veth, wait_addr_usable, Child, Netns,
    PatternStream,
};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const NODE: &str = "fd00:d5::80";
const CLIENT: &str = "fd00:d5::2";
const PORT: u16 = 80;
const WAIT: Duration = Duration::from_secs(10);

struct Bed {
    // Field order matters: the node dies before its namespaces go.
    node: Option<Child>,
    cli: Netns,
    srv: Netns,
    root: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop(self.node.take());
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// How the node gets its settings.
#[derive(Clone, Copy)]
enum Start {
    Flags,
    Config,
}

fn setup(root: &Path, json: bool, how: Start) -> Result<Bed> {
    let srv = Netns::new("dsnode_srv")?;
    let cli = Netns::new("dsnode_cli")?;
    // The srv kernel only bridges; keep its own IPv6 chatter off the link.
    srv.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    srv.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    veth(&srv, "veth0", &cli, "veth0")?;
    bridge(&srv, "br0", &["veth0"])?;
    add_addr(&cli, "veth0", &format!("{CLIENT}/64"))?;
    disable_offload(&srv, "veth0")?;
    disable_offload(&cli, "veth0")?;
    wait_addr_usable(&cli, "veth0", CLIENT, WAIT)?;

    let mut cmd = srv.command(env!("CARGO_BIN_EXE_dsnode"));
    cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::piped());
    match how {
        Start::Flags => {
            cmd.args(["--device", "tap", "--iface", "dstap0", "--addr", NODE])
                .args(["--port", &PORT.to_string(), "--root"])
                .arg(root);
            if json {
                cmd.arg("--json");
            }
        }
        Start::Config => {
            // The same settings from a file, as in the README's example.
            let file = root.with_extension("toml");
            std::fs::write(
                &file,
                format!(
                    "device = \"tap\"\niface = \"dstap0\"\naddr = \"{NODE}\"\nport = {PORT}\n\
                     root = \"{}\"\njson = {json}\ncontrol_socket = \"{}\"\n\
                     open_file_cache = 16\nopen_file_cache_valid_ms = 3600000\n",
                    root.display(),
                    root.with_extension("sock").display()
                ),
            )?;
            cmd.arg("--config").arg(file);
        }
    }
    let node = Child::new(cmd.spawn().context("cannot start dsnode")?);
    let mut bed = Bed {
        node: Some(node),
        cli,
        srv,
        root: root.to_path_buf(),
    };

    let deadline = Instant::now() + WAIT;
    while bed.srv.ip(&["link", "show", "dstap0"]).is_err() {
        if let Some(node) = bed.node.as_mut() {
            if let Some(status) = node.try_wait()? {
                bail!("dsnode exited early: {status}");
            }
        }
        ensure!(Instant::now() < deadline, "dstap0 did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    bed.srv.ip(&["link", "set", "dstap0", "master", "br0"])?;
    set_up(&bed.srv, "dstap0")?;
    disable_offload(&bed.srv, "dstap0")?;
    Ok(bed)
}

fn scratch_root(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ds-apps-e2e-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Run curl in the client namespace; returns (stdout, `-w` output on stderr is not used).
fn curl(bed: &Bed, args: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = bed.cli.command("curl");
    cmd.args([
        "-6",
        "-g",
        "-sS",
        "--connect-timeout",
        "5",
        "--max-time",
        "60",
    ])
    .args(args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run curl")?;
    ensure!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

fn url(path: &str) -> String {
    format!("http://[{NODE}]:{PORT}{path}")
}

/// Wait until the node answers HTTP (neighbour discovery and bridge learning take a moment).
fn wait_ready(bed: &Bed) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match curl(bed, &["-o", "/dev/null", "--max-time", "2", &url("/")]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.context("dsnode never answered")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Send raw bytes on one kernel TCP connection from the client namespace, half-close, and
/// return everything the node sent back.
fn raw_exchange(bed: &Bed, request: &[u8]) -> Result<Vec<u8>> {
    let addr = SocketAddr::new(NODE.parse::<Ipv6Addr>()?.into(), PORT);
    let mut s: TcpStream = bed.cli.run(|| TcpStream::connect_timeout(&addr, WAIT))?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(request)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).context("reading the response")?;
    Ok(out)
}

/// Status codes of the responses in `data`, in order (bodies skipped by Content-Length).
fn statuses(mut data: &[u8], head_only: &[bool]) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("response head not terminated")?
            + 4;
        let head = String::from_utf8_lossy(&data[..end]).into_owned();
        let status = head.get(9..12).context("short status line")?.parse()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .context("no Content-Length")?
            .trim()
            .parse()?;
        let body = if head_only.get(out.len()).copied().unwrap_or(false) {
            0
        } else {
            len
        };
        ensure!(data.len() >= end + body, "truncated body");
        data = &data[end + body..];
        out.push(status);
    }
    Ok(out)
}

/// SIGINT the node, wait for it, and return its exit status and stdout.
fn stop(bed: &mut Bed) -> Result<(std::process::ExitStatus, String)> {
    let mut node = bed.node.take().context("node already stopped")?;
    let pid = libc::pid_t::try_from(node.id()).context("pid out of range")?;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped), no pointers.
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = node.try_wait()? {
            break st;
        }
        ensure!(
            Instant::now() < deadline,
            "dsnode did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = node.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    Ok((status, out))
}

#[test]
fn dsnode_serves_kernel_tcp_clients() -> Result<()> {
    if !require_root("dsnode_serves_kernel_tcp_clients") {
        return Ok(());
    }
    let root = scratch_root("main")?;
    let big = PatternStream::bytes(0x5eed, 8 << 20);
    std::fs::write(root.join("big.bin"), &big)?;
    std::fs::write(root.join("index.html"), b"<h1>dsnode</h1>\n")?;
    std::fs::create_dir_all(root.join("sub"))?;
    std::fs::write(root.join("sub/a.txt"), b"alpha\n")?;
    let mut bed = setup(&root, true, Start::Flags)?;
    wait_ready(&bed)?;

    // A file larger than any send buffer arrives intact.
    let got = curl(&bed, &[&url("/big.bin")])?;
    ensure!(
        got.len() == big.len(),
        "got {} bytes, want {}",
        got.len(),
        big.len()
    );
    ensure!(got == big, "big.bin corrupted in transit");

    // Keep-alive: curl reuses one connection for several URLs.
    let (u1, u2) = (url("/"), url("/sub/a.txt"));
    let w = "%{http_code} %{num_connects}\n";
    let out = curl(
        &bed,
        &["-o", "/dev/null", "-o", "/dev/null", "-w", w, &u1, &u2],
    )?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines == ["200 1", "200 0"],
        "keep-alive run printed {lines:?}"
    );

    // Pipelined requests, HEAD, errors, then Connection: close.
    let resp = raw_exchange(
        &bed,
        b"GET /sub/a.txt HTTP/1.1\r\nHost: n\r\n\r\n\
          HEAD /big.bin HTTP/1.1\r\nHost: n\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: n\r\n\r\n\
          POST / HTTP/1.1\r\nHost: n\r\nContent-Length: 3\r\n\r\nabc\
          GET /../etc/passwd HTTP/1.1\r\nHost: n\r\n\r\n\
          GET / HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n",
    )?;
    ensure!(
        statuses(&resp, &[false, true])? == [200, 200, 404, 405, 400, 200],
        "pipelined statuses: {:?}",
        statuses(&resp, &[false, true])
    );
    ensure!(String::from_utf8_lossy(&resp).contains("Content-Length: 8388608\r\n"));

    // A malformed request gets 400 and the connection is closed by the node.
    let resp = raw_exchange(&bed, b"GET / HTTP/1.1\r\nHost : n\r\n\r\n")?;
    ensure!(
        statuses(&resp, &[])? == [400],
        "bad request answered with {resp:?}"
    );

    // SIGINT: clean exit, and --json prints the interface counters as one JSON object.
    let (status, stdout) = stop(&mut bed)?;
    ensure!(status.success(), "dsnode exited with {status}");
    let line = stdout.lines().last().context("no stats printed")?;
    ensure!(
        line.starts_with('{') && line.ends_with('}'),
        "stats are not one JSON object: {line}"
    );
    for key in ["\"rx_frames\":", "\"tx_frames\":", "\"tcp_rx_segments\":"] {
        ensure!(line.contains(key), "stats lack {key}: {line}");
    }
    ensure!(
        !line.contains("\"rx_frames\":0,"),
        "no frames counted: {line}"
    );
    // The 8 MiB left mostly as TCP super-frames, segmented by the kernel behind the TAP.
    ensure!(
        line.contains("\"tx_gso_frames\":") && !line.contains("\"tx_gso_frames\":0,"),
        "no super-frames on the TAP: {line}"
    );
    Ok(())
}

/// `dsnode serve --config node.toml` with the README's kind of file: it serves.
#[test]
fn dsnode_serves_from_a_toml_config() -> Result<()> {
    if !require_root("dsnode_serves_from_a_toml_config") {
        return Ok(());
    }
    let root = scratch_root("config")?;
    std::fs::write(root.join("index.html"), b"<h1>from node.toml</h1>\n")?;
    let mut bed = setup(&root, true, Start::Config)?;
    wait_ready(&bed)?;
    let got = curl(&bed, &[&url("/index.html")])?;
    ensure!(got == b"<h1>from node.toml</h1>\n", "got {got:?}");
    // The file's open-file cache (an hour valid): the file, once removed, is still served
    // from the handle it keeps.
    std::fs::remove_file(root.join("index.html"))?;
    let got = curl(&bed, &[&url("/index.html")])?;
    ensure!(
        got == b"<h1>from node.toml</h1>\n",
        "not from the cache: {got:?}"
    );
    // The control socket from the file: owner-only, and `dsctl --json status` parses.
    let sock = root.with_extension("sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock)?.permissions());
    ensure!(mode & 0o777 == 0o600, "control socket mode {mode:o}");
    let v = cluster::dsctl(&sock, &["status"]).map_err(anyhow::Error::msg)?;
    ensure!(v["node"]["device"] == "tap", "status: {v}");
    ensure!(v["node"]["addr"] == NODE, "status: {v}");
    ensure!(v["http"]["accepted"].as_u64() >= Some(1), "status: {v}");
    // The second request came from the open-file cache.
    let cache = &v["http"]["open_files"];
    ensure!(cache["hits"].as_u64() >= Some(1), "status: {v}");
    ensure!(cache["files"].as_u64() >= Some(1), "status: {v}");
    // A client that stays connected is listed by `dsctl conns`, with its address and state.
    let addr = SocketAddr::new(NODE.parse::<Ipv6Addr>()?.into(), PORT);
    let held: TcpStream = bed.cli.run(|| TcpStream::connect_timeout(&addr, WAIT))?;
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let v = cluster::dsctl(&sock, &["conns"]).map_err(anyhow::Error::msg)?;
        let found = v.as_array().into_iter().flatten().find(|c| {
            c["client"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("[{CLIENT}]:")))
        });
        if let Some(c) = found {
            break c.clone();
        }
        ensure!(
            Instant::now() < deadline,
            "the open connection is not listed: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(listed["state"] == "Established", "conns: {listed}");
    ensure!(
        listed["local"] == format!("[{NODE}]:{PORT}"),
        "conns: {listed}"
    );
    drop(held);
    let (status, stdout) = stop(&mut bed)?;
    ensure!(!sock.exists(), "the control socket is removed on exit");
    ensure!(status.success(), "dsnode exited with {status}");
    let line = stdout.lines().last().context("no stats printed")?;
    ensure!(line.starts_with('{'), "json = true in the file: {line}");
    let _ = std::fs::remove_file(root.with_extension("toml"));
    Ok(())
}
