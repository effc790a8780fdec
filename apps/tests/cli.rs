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

#[test]
fn dsnode_serve_help_lists_the_handoff_options() {
    let (ok, out, _) = run(env!("CARGO_BIN_EXE_dsnode"), &["serve", "--help"]);
    assert!(ok);
    for opt in [
        "--also-addr",
        "--control-listen",
        "--peer",
        "--secret-file",
        "--handoff-after",
        "--max-handoffs",
        "--drain",
        "--drain-deadline-ms",
        "--ha-control",
    ] {
        assert!(out.contains(opt), "{opt} missing from:\n{out}");
    }
}

#[test]
fn dsha_xdp_help_lists_its_options() {
    let (ok, out, _) = run(env!("CARGO_BIN_EXE_dsha"), &["xdp", "--help"]);
    assert!(ok);
    for opt in [
        "--iface",
        "--addr",
        "--ds",
        "--bind",
        "--control",
        "--secret-file",
        "--pin-dir",
        "--json",
    ] {
        assert!(out.contains(opt), "{opt} missing from:\n{out}");
    }
}

#[test]
fn a_short_secret_is_refused() {
    let dir = std::env::temp_dir().join(format!("ds-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "too short\n").expect("write secret");
    let s = secret.to_str().expect("utf-8 path");
    let d = dir.to_str().expect("utf-8 path");
    let (ok, _, err) = run(
        env!("CARGO_BIN_EXE_dsnode"),
        &[
            "serve",
            "--device",
            "tap",
            "--iface",
            "dstest0",
            "--addr",
            "fd00::1",
            "--root",
            d,
            "--peer",
            "[fd00::2]:7000",
            "--secret-file",
            s,
        ],
    );
    assert!(!ok);
    assert!(err.contains("at least 16 bytes"), "{err}");
    let (ok, _, err) = run(
        env!("CARGO_BIN_EXE_dsha"),
        &[
            "xdp",
            "--iface",
            "lo",
            "--addr",
            "fd00::a",
            "--ds",
            "fd00::80",
            "--bind",
            "fd00::1",
            "--control",
            "[::1]:0",
            "--secret-file",
            s,
        ],
    );
    assert!(!ok);
    assert!(err.contains("at least 16 bytes"), "{err}");
    // A secret without a peer or listener: handoff options without handoff.
    let (ok, _, err) = run(
        env!("CARGO_BIN_EXE_dsnode"),
        &[
            "serve",
            "--device",
            "tap",
            "--iface",
            "dstest0",
            "--addr",
            "fd00::1",
            "--root",
            d,
            "--secret-file",
            s,
        ],
    );
    assert!(!ok);
    assert!(err.contains("needs --control-listen"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
