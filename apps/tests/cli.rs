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
        ],
    );
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

#[test]
fn a_short_secret_is_refused() {
    let dir = ds_testbed::TempDir::new("cli-test").expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "too short\n").expect("write secret");
    let s = secret.to_str().expect("utf-8 path");
    let d = dir.path().to_str().expect("utf-8 path");
    let serve = "serve --device tap --iface dstest0 --addr fd00::1 --root {root}";
    let (dsnode, dsha) = (env!("CARGO_BIN_EXE_dsnode"), env!("CARGO_BIN_EXE_dsha"));
    let cases = [
        (
            dsnode,
            format!("{serve} --peer [fd00::2]:7000 --secret-file {{secret}}"),
            "at least 16 bytes",
        ),
        (
            dsha,
            "xdp --iface lo --addr fd00::a --ds fd00::80 --bind fd00::1 --control [::1]:0 \
             --secret-file {secret}"
                .to_string(),
            "at least 16 bytes",
        ),
        // A secret without a peer or listener: handoff options without handoff.
        (
            dsnode,
            format!("{serve} --secret-file {{secret}}"),
            "needs --control-listen",
        ),
    ];
    for (bin, words, why) in &cases {
        refused(bin, &argv(words, s, d), why);
    }
}
