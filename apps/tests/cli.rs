//! The `dsnode` and `dsha` command lines: help texts list the handoff options, and bad handoff
//! settings are refused before any device is touched (so these run unprivileged).

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bin` succeeds with `args` and prints every one of `opts`.
fn help_lists(bin: &str, args: &[&str], opts: &[&str]) {
    let (ok, out, _) = run(bin, args);
    assert!(ok);
    for opt in opts {
        assert!(out.contains(opt), "{opt} missing from:\n{out}");
    }
}

/// `bin` refuses `args` with an error that says `why`.
fn refused(bin: &str, args: &[&str], why: &str) {
    let (ok, _, err) = run(bin, args);
    assert!(!ok);
    assert!(err.contains(why), "{err}");
}

/// `words` split at white space, with `{secret}` and `{root}` replaced.
fn argv<'a>(words: &'a str, secret: &'a str, root: &'a str) -> Vec<&'a str> {
    let fill = |w| match w {
        "{secret}" => secret,
        "{root}" => root,
        w => w,
    };
    words.split_whitespace().map(fill).collect()
}

#[test]
fn dsnode_serve_help_lists_the_handoff_options() {
    help_lists(
        env!("CARGO_BIN_EXE_dsnode"),
        &["serve", "--help"],
        &[
            "--also-addr",
            "--control-listen",
            "--peer",
            "--secret-file",
            "--handoff-after",
            "--max-handoffs",
            "--drain",
            "--drain-deadline-ms",
            "--ha-control",
            "--gateway",
            "--route",
        ],
    );
}

#[test]
fn dsnode_refuses_a_malformed_route() {
    refused(
        env!("CARGO_BIN_EXE_dsnode"),
        &["serve", "--route", "fd00:2::/64", "--addr", "fd00::1"],
        "want PREFIX/LEN=ROUTER",
    );
}

#[test]
fn dsnode_refuses_an_open_file_cache_over_its_file_limit() {
    // More descriptors than any limit allows (fs.nr_open is at most 2^30): refused at start,
    // not by failing requests later.
    serve_refused(
        &["--open-file-cache", "4000000000"],
        "--open-file-cache 4000000000: 1 queue(s) keep up to 4000000000 files open",
    );
}

/// `dsnode serve` on an AF_XDP device that does not exist, with `extra`, is refused for `why`
/// (the checks run before the device is opened).
fn serve_refused(extra: &[&str], why: &str) {
    let mut args = vec![
        "serve",
        "--device",
        "afxdp",
        "--iface",
        "nonexistent0",
        "--addr",
        "fd00::1",
        "--root",
        "/",
    ];
    args.extend_from_slice(extra);
    refused(env!("CARGO_BIN_EXE_dsnode"), &args, why);
}

#[test]
fn dsnode_refuses_queue_cpus_it_cannot_use() {
    for (queues, cpus, why) in [
        ("1", "0,1", "--queue-cpus names 2 CPUs for 1 queue(s)"),
        ("2", "1", "--queue-cpus names 1 CPUs for 2 queue(s)"),
        (
            "1",
            "1023",
            "--queue-cpus: CPU 1023 is not among those this process may use",
        ),
    ] {
        serve_refused(&["--queues", queues, "--queue-cpus", cpus], why);
    }
}

#[test]
fn dsha_xdp_help_lists_its_options() {
    help_lists(
        env!("CARGO_BIN_EXE_dsha"),
        &["xdp", "--help"],
        &[
            "--iface",
            "--addr",
            "--ds",
            "--bind",
            "--control",
            "--secret-file",
            "--pin-dir",
            "--json",
        ],
    );
}

/// Both daemons refuse a secret file written with `content` and `mode`, saying `why`; then
/// each `(binary, arguments, why)` of `more` (`{secret}` and `{root}` filled in).
fn secret_refused(tag: &str, content: &str, mode: u32, why: &str, more: &[(&str, String, &str)]) {
    // (Temporary directories are named after the tag and the process: one tag per test.)
    let dir = ds_testbed::TempDir::new(tag).expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, content).expect("write secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .expect("chmod");
    let s = secret.to_str().expect("utf-8 path");
    let d = dir.path().to_str().expect("utf-8 path");
    let both = [
        (
            env!("CARGO_BIN_EXE_dsnode"),
            format!("{SERVE} --peer [fd00::2]:7000 --secret-file {{secret}}"),
            why,
        ),
        (
            env!("CARGO_BIN_EXE_dsha"),
            "xdp --iface lo --addr fd00::a --ds fd00::80 --bind fd00::1 --control [::1]:0 \
             --secret-file {secret}"
                .to_string(),
            why,
        ),
    ];
    for (bin, words, why) in both.iter().chain(more) {
        refused(bin, &argv(words, s, d), why);
    }
}

const SERVE: &str = "serve --device tap --iface dstest0 --addr fd00::1 --root {root}";

#[test]
fn a_short_secret_is_refused() {
    // A secret without a peer or listener: handoff options without handoff.
    let alone = (
        env!("CARGO_BIN_EXE_dsnode"),
        format!("{SERVE} --secret-file {{secret}}"),
        "needs --control-listen",
    );
    secret_refused(
        "cli-test",
        "too short\n",
        0o600,
        "at least 16 bytes",
        &[alone],
    );
}

/// Issue 12, finding 9: a secret file others may read or write is refused with the fix in the
/// message, and a device (`/dev/zero`) is refused before anything is read from it.
#[test]
fn a_secret_file_others_may_read_is_refused() {
    let device = (
        env!("CARGO_BIN_EXE_dsnode"),
        format!("{SERVE} --peer [fd00::2]:7000 --secret-file /dev/zero"),
        "not a regular file",
    );
    secret_refused(
        "cli-secret",
        "a long enough cluster secret, 32+ bytes\n",
        0o644,
        "chmod 600",
        &[device],
    );
}

/// `dsnode serve --config FILE`: the file's keys are the options (the command line overrides
/// them), and a mistake in the file names the line and the key, before anything is touched.
#[test]
fn dsnode_takes_a_toml_config() {
    let dir = ds_testbed::TempDir::new("cli-config").expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "too short\n").expect("write secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let root = dir.path().to_str().expect("utf-8 path");
    let node = dir.path().join("node.toml");
    // The file's root does not exist; the command line gives a real one. The short secret is
    // then what is refused: the file was read, and the command line won.
    std::fs::write(
        &node,
        format!(
            "device = \"tap\"\niface = \"dstest0\"\naddr = \"fd00::1\"\nroot = \"/nonexistent\"\n\
             [handoff]\npeer = \"[fd00::2]:7000\"\nsecret_file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("write config");
    let dsnode = env!("CARGO_BIN_EXE_dsnode");
    let cfg = node.to_str().expect("utf-8 path");
    refused(
        dsnode,
        &["serve", "--config", cfg, "--root", root],
        "at least 16 bytes",
    );
    refused(dsnode, &["serve", "--config", cfg], "/nonexistent");
    // A repeatable option too: the command line's --also-addr replaces the file's (a loopback
    // address here, which would be refused before the root is looked at).
    let repeat = dir.path().join("repeat.toml");
    std::fs::write(
        &repeat,
        "device = \"tap\"\niface = \"dstest0\"\naddr = \"fd00::1\"\nalso_addr = [\"::1\"]\nroot = \"/nonexistent\"\n",
    )
    .expect("write config");
    let repeat = repeat.to_str().expect("utf-8 path");
    refused(dsnode, &["serve", "--config", repeat], "--also-addr ::1");
    refused(
        dsnode,
        &["serve", "--config", repeat, "--also-addr", "fd00::80"],
        "/nonexistent",
    );
    // --queue-cpus too: the file's three CPUs would be refused for two queues; the command
    // line's replace them, and the node goes on to its device (which is not there).
    let cpus = dir.path().join("cpus.toml");
    std::fs::write(
        &cpus,
        "device = \"afxdp\"\niface = \"nonexistent0\"\naddr = \"fd00::1\"\nroot = \"/\"\nqueues = 2\nqueue_cpus = [0, 0, 0]\n",
    )
    .expect("write config");
    let cpus = cpus.to_str().expect("utf-8 path");
    refused(
        dsnode,
        &["serve", "--config", cpus],
        "--queue-cpus names 3 CPUs for 2 queue(s)",
    );
    let first = ds_apps::sched::allowed_cpus().expect("mask")[0].to_string();
    refused(
        dsnode,
        &[
            "serve",
            "--config",
            cpus,
            "--queue-cpus",
            &format!("{first},{first}"),
        ],
        "cannot open AF_XDP",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "device = \"tap\"\niface = \"dstest0\"\nadress = \"fd00::1\"\n",
    )
    .expect("write config");
    let (ok, _, err) = run(dsnode, &["serve", "--config", bad.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(err.contains("line 3") && err.contains("adress"), "{err}");
}

#[test]
fn dsctl_lists_its_commands_and_says_when_no_node_listens() {
    let bin = env!("CARGO_BIN_EXE_dsctl");
    help_lists(bin, &["--help"], &["status", "--socket", "--json"]);
    help_lists(
        env!("CARGO_BIN_EXE_dsnode"),
        &["serve", "--help"],
        &["--control-socket"],
    );
    let missing = std::env::temp_dir().join(format!("ds-no-node-{}.sock", std::process::id()));
    let path = missing.to_string_lossy();
    refused(bin, &["--socket", &path, "status"], &path);
}
