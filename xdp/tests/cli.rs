//! The `dsxdp` operator tool against a real interface in a namespace: attach (native and
//! generic), status, bindings, flows, counters, local addresses, `--json`, detach.

use ds_testbed::{require_root, veth, Netns};
use serde_json::Value;
use std::process::Command;

fn dsxdp(ns: &Netns, pin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dsxdp"))
        .args(["--netns", ns.name(), "--pin-dir", pin])
        .args(args)
        .output()
        .expect("run dsxdp");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("dsxdp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

fn json(ns: &Netns, pin: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (ok, out) = dsxdp(ns, pin, &a);
    assert!(ok, "dsxdp {args:?} failed");
    serde_json::from_str(out.trim()).expect("JSON output")
}

/// Removes the pins even if the test fails.
struct Pins(String);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn operator_cli_tunnel_and_steer() {
    if !require_root("operator_cli_tunnel_and_steer") {
        return;
    }
    let a = Netns::new("cli").expect("ns");
    let b = Netns::new("clib").expect("ns");
    veth(&a, "x0", &b, "x1").expect("veth");
    let pin = format!("/sys/fs/bpf/ds/test-cli-{}", std::process::id());
    let _pins = Pins(pin.clone());

    let v = json(
        &a,
        &pin,
        &[
            "attach",
            "x0",
            "--program",
            "tunnel",
            "--mode",
            "native",
            "--local",
            "fd00:a::1",
            "--gateway-mac",
            "02:00:00:00:00:99",
            "--flow-capacity",
            "128",
        ],
    );
    assert_eq!(v["mode"], "native");
    // A second attach without --force is refused, and leaves the first in place.
    let (ok, _) = dsxdp(&a, &pin, &["attach", "x0", "--program", "tunnel"]);
    assert!(!ok, "attach over an attached program needs --force");
    let st = json(&a, &pin, &["status", "x0"]);
    assert_eq!(st["native"]["name"], "ds_tunnel");
    assert_eq!(st["config"]["local"], "fd00:a::1");
    assert!(
        dsxdp(
            &a,
            &pin,
            &["binding", "add", "x0", "fd00:d5::80", "fd00:1::1"]
        )
        .0
    );
    let flow = [
        "x0",
        "--src",
        "fd00:c::1",
        "--dst",
        "fd00:d5::80",
        "--sport",
        "40000",
        "--dport",
        "80",
    ];
    let mut add = vec!["flow", "add"];
    add.extend_from_slice(&flow);
    add.extend_from_slice(&["--owner", "fd00:2::1"]);
    assert!(dsxdp(&a, &pin, &add).0);
    let flows = json(&a, &pin, &["flow", "list", "x0"]);
    assert_eq!(flows[0]["owner"], "fd00:2::1");
    assert_eq!(flows[0]["key"]["sport"], 40000);
    let bindings = json(&a, &pin, &["binding", "list", "x0"]);
    assert_eq!(bindings[0]["coa"], "fd00:1::1");
    let cfg = json(
        &a,
        &pin,
        &["config", "x0", "--mtu", "1600", "--learn", "false"],
    );
    assert_eq!(
        (cfg["mtu"].as_u64(), cfg["learn"].as_bool()),
        (Some(1600), Some(false))
    );
    assert_eq!(json(&a, &pin, &["config", "x0"])["local"], "fd00:a::1");
    let c = json(&a, &pin, &["counters", "x0"]);
    assert_eq!(c["program"], "tunnel");
    assert!(c["counters"]["flow_hit"].is_u64());
    let mut del = vec!["flow", "del"];
    del.extend_from_slice(&flow);
    let v = json(&a, &pin, &del);
    assert_eq!(v["removed"], true);
    assert!(json(&a, &pin, &["flow", "list", "x0"])
        .as_array()
        .expect("array")
        .is_empty());
    // Steering-only commands refuse the tunnel program.
    assert!(!dsxdp(&a, &pin, &["local", "list", "x0"]).0);
    let v = json(&a, &pin, &["detach", "x0"]);
    assert_eq!(v["detached"], true);
    let st = json(&a, &pin, &["status", "x0"]);
    assert!(st["native"].is_null() && st["pinned"].is_null());

    // The steering program in generic mode, with a local address.
    let v = json(
        &a,
        &pin,
        &["attach", "x0", "--program", "steer", "--mode", "generic"],
    );
    assert_eq!(v["mode"], "generic");
    assert!(
        dsxdp(
            &a,
            &pin,
            &[
                "local",
                "add",
                "x0",
                "fd00:d5::80",
                "--protos",
                "tcp,udp",
                "--action",
                "pass"
            ]
        )
        .0
    );
    let l = json(&a, &pin, &["local", "list", "x0"]);
    assert_eq!(l[0]["action"], "pass");
    assert_eq!(l[0]["protos"], 3);
    let (ok, help) = dsxdp(&a, &pin, &["--help"]);
    assert!(ok && help.contains("attach") && help.contains("counters"));
    assert_eq!(json(&a, &pin, &["detach", "x0"])["detached"], true);
    assert!(!std::path::Path::new(&pin).exists(), "pins removed");
}
