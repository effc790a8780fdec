//! `dsnode serve --config node.toml`: a node's settings in a file. Every key is the long option
//! of the same name (`also_addr` for `--also-addr`); options given on the command line override
//! the file. The file is checked before anything else: an unknown key, a value of the wrong
//! type or an unknown choice is an error that names the file, the line and the key.
//!
//! ```toml
//! device = "afxdp"                   # afxdp | tap | kernel
//! iface = "n0"
//! addr = "fd00:d5:1::1"              # this node's (care-of) address
//! also_addr = ["fd00:d5:80::80"]     # the DS address
//! port = 80
//! root = "/srv/www"                  # or, proxy mode: backend = "[::1]:8080"
//! control_socket = "/run/dsnode.sock" # for dsctl
//! # gateway = "fd00:d5:1::a"         # the userspace stack's default router
//! # route = ["fd00:d5:2::/64=fd00:d5:1::b"]  # PREFIX/LEN=ROUTER, longest prefix first
//! # queues = 2                       # AF_XDP: a stack and handoff engine per receive queue
//! # queue_cpus = [0, 1]              # queue i's thread pinned to the i-th CPU
//! # no_super_frames = true           # AF_XDP: one frame per TCP segment, no 64 KiB super-frames
//! # header_timeout_ms = 10000        # a request head must arrive within this (then 408)
//! # stall_timeout_ms = 60000         # a response with no progress this long is aborted
//! # max_connections = 10000          # more are answered 503
//! # max_buffered_mib = 512           # send buffers in all; then no more data, new clients 503
//! # open_file_cache = 1000           # files kept open between requests (0: off)
//! # open_file_cache_valid_ms = 1000  # then opened by name again
//! # sched_fifo = 10                  # real-time priority of the node's threads (CAP_SYS_NICE)
//! # policy = "round-robin"           # proxy mode: local | round-robin | least-connections
//! # per_request = true               # proxy mode: place every keep-alive request anew
//!
//! [handoff]
//! control_listen = "[fd00:d5:1::11]:7000"
//! peer = "[fd00:d5:1::12]:7000"
//! secret_file = "/etc/ds/secret"
//! handoff_after = 500000
//! steering = "transparent"           # none | transparent | ro
//! ha_control = "[fd00:d5:1::a]:7001"
//! # busy_poll = "exchange"           # spin over the offer's round trip; true: the whole handoff
//! # steer_ahead = true               # commit before the home agent's answer (transparent)
//!
//! [membership]                        # seed §2.3; needs handoff.secret_file
//! role = "backup"                    # backup | snode
//! listen = "[fd00:d5:1::11]:7000"    # UDP; the same port as control_listen is fine
//! home_agent = "[fd00:d5:1::a]:7100" # dsha xdp --members
//! # election = "etcd"                # native (default) | etcd
//! # etcd = ["http://[fd00:d5:1::a]:2379"]
//! ```

use serde::Deserialize;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Something in it is wrong.
    #[error("{path}, line {line}{}: {msg}", key.as_ref().map(|k| format!(", key `{k}`")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key, when known.
        key: Option<String>,
        /// What is wrong.
        msg: String,
    },
}

/// The top level of `node.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    device: Option<Spanned<String>>,
    iface: Option<String>,
    addr: Option<Ipv6Addr>,
    also_addr: Option<Vec<Ipv6Addr>>,
    port: Option<u16>,
    root: Option<PathBuf>,
    mac: Option<String>,
    gateway: Option<Ipv6Addr>,
    route: Option<Vec<Spanned<String>>>,
    json: Option<bool>,
    udp_echo: Option<u16>,
    queues: Option<u32>,
    queue_cpus: Option<Vec<usize>>,
    no_super_frames: Option<bool>,
    control_socket: Option<PathBuf>,
    header_timeout_ms: Option<u64>,
    stall_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_buffered_mib: Option<usize>,
    open_file_cache: Option<usize>,
    open_file_cache_valid_ms: Option<u64>,
    sched_fifo: Option<u8>,
    backend: Option<SocketAddr>,
    policy: Option<Spanned<String>>,
    per_request: Option<bool>,
    handoff: Option<HandoffFile>,
    membership: Option<MembershipFile>,
}

/// `[membership]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipFile {
    role: Option<Spanned<String>>,
    listen: Option<SocketAddr>,
    home_agent: Option<SocketAddr>,
    election: Option<Spanned<String>>,
    etcd: Option<Vec<String>>,
}

/// `[handoff]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffFile {
    control_listen: Option<SocketAddr>,
    peer: Option<Peers>,
    peer_coa: Option<Ipv6Addr>,
    secret_file: Option<PathBuf>,
    handoff_after: Option<u64>,
    max_handoffs: Option<u64>,
    drain: Option<Spanned<String>>,
    drain_deadline_ms: Option<u64>,
    reply_timeout_ms: Option<u64>,
    steering: Option<Spanned<String>>,
    ha_control: Option<SocketAddr>,
    home_addr: Option<Ipv6Addr>,
    busy_poll: Option<Spanned<BusyPollKey>>,
    steer_ahead: Option<bool>,
}

/// `busy_poll = true` (the whole handoff), `false`, or a scope: `"exchange"`, `"handoff"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BusyPollKey {
    Switch(bool),
    Scope(String),
}

/// `peer = "[addr]:port"` or, in proxy mode, `peer = ["[addr]:port", …]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Peers {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

/// The choices a key takes.
const CHOICES: [(&str, &[&str]); 7] = [
    ("role", &["backup", "snode"]),
    ("election", &["native", "etcd"]),
    ("device", &["afxdp", "tap", "kernel"]),
    ("policy", &["local", "round-robin", "least-connections"]),
    ("drain", &["immediate", "acked", "wait", "adaptive"]),
    ("steering", &["none", "transparent", "ro"]),
    ("busy_poll", &["exchange", "handoff"]),
];

/// Read `path` and turn it into `dsnode serve` options, in the order the file gives them.
pub fn serve_args(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let invalid = |at: usize, key: Option<&str>, msg: String| {
        let line = 1 + text[..at.min(text.len())].matches('\n').count();
        // The key is what stands before `=` on that line, when the parser did not say.
        let key = key.map(str::to_string).or_else(|| {
            let l = text.lines().nth(line - 1)?;
            let (k, _) = l.split_once('=')?;
            Some(k.trim().to_string())
        });
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            key,
            msg,
        }
    };
    let file: NodeFile = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        invalid(at, None, e.message().to_string())
    })?;
    let choice = |key: &str, v: &Spanned<String>| {
        let allowed = CHOICES
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[][..], |c| c.1);
        if allowed.contains(&v.get_ref().as_str()) {
            Ok(v.get_ref().clone())
        } else {
            Err(invalid(
                v.span().start,
                Some(key),
                format!("`{}` is not one of {}", v.get_ref(), allowed.join(", ")),
            ))
        }
    };
    let mut args = Vec::new();
    let mut opt = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            args.push(format!("--{}", key.replace('_', "-")));
            args.push(v);
        }
    };
    let s = |v: &dyn ToString| v.to_string();
    opt(
        "device",
        file.device
            .as_ref()
            .map(|d| choice("device", d))
            .transpose()?,
    );
    opt("iface", file.iface);
    opt("addr", file.addr.as_ref().map(|a| s(a)));
    for a in file.also_addr.iter().flatten() {
        opt("also_addr", Some(a.to_string()));
    }
    opt("port", file.port.as_ref().map(|p| s(p)));
    opt("root", file.root.map(|r| r.display().to_string()));
    opt("mac", file.mac);
    opt("gateway", file.gateway.as_ref().map(|g| s(g)));
    for r in file.route.iter().flatten() {
        if let Err(e) = r.get_ref().parse::<ds_stack::iface::Route>() {
            return Err(invalid(r.span().start, Some("route"), e.to_string()));
        }
        opt("route", Some(r.get_ref().clone()));
    }
    opt("udp_echo", file.udp_echo.as_ref().map(|p| s(p)));
    opt("queues", file.queues.as_ref().map(|q| s(q)));
    for c in file.queue_cpus.iter().flatten() {
        opt("queue_cpus", Some(c.to_string()));
    }
    opt(
        "header_timeout_ms",
        file.header_timeout_ms.as_ref().map(|v| s(v)),
    );
    opt(
        "stall_timeout_ms",
        file.stall_timeout_ms.as_ref().map(|v| s(v)),
    );
    opt(
        "max_connections",
        file.max_connections.as_ref().map(|v| s(v)),
    );
    opt(
        "max_buffered_mib",
        file.max_buffered_mib.as_ref().map(|v| s(v)),
    );
    opt(
        "open_file_cache",
        file.open_file_cache.as_ref().map(|v| s(v)),
    );
    opt(
        "open_file_cache_valid_ms",
        file.open_file_cache_valid_ms.as_ref().map(|v| s(v)),
    );
    opt(
        "control_socket",
        file.control_socket.map(|p| p.display().to_string()),
    );
    opt("sched_fifo", file.sched_fifo.as_ref().map(|v| s(v)));
    opt("backend", file.backend.as_ref().map(|a| s(a)));
    opt(
        "policy",
        file.policy
            .as_ref()
            .map(|v| choice("policy", v))
            .transpose()?,
    );
    if let Some(m) = file.membership {
        opt(
            "role",
            m.role.as_ref().map(|v| choice("role", v)).transpose()?,
        );
        opt("members_listen", m.listen.as_ref().map(|a| s(a)));
        opt("members_ha", m.home_agent.as_ref().map(|a| s(a)));
        opt(
            "election",
            m.election
                .as_ref()
                .map(|v| choice("election", v))
                .transpose()?,
        );
        for u in m.etcd.iter().flatten() {
            opt("etcd", Some(u.clone()));
        }
    }
    if let Some(h) = file.handoff {
        opt("control_listen", h.control_listen.as_ref().map(|a| s(a)));
        match &h.peer {
            Some(Peers::One(p)) => opt("peer", Some(s(p))),
            Some(Peers::Many(v)) => v.iter().for_each(|p| opt("peer", Some(s(p)))),
            None => {}
        }
        opt("peer_coa", h.peer_coa.as_ref().map(|a| s(a)));
        opt(
            "secret_file",
            h.secret_file.map(|p| p.display().to_string()),
        );
        opt("handoff_after", h.handoff_after.as_ref().map(|n| s(n)));
        opt("max_handoffs", h.max_handoffs.as_ref().map(|n| s(n)));
        opt(
            "drain",
            h.drain.as_ref().map(|d| choice("drain", d)).transpose()?,
        );
        opt(
            "drain_deadline_ms",
            h.drain_deadline_ms.as_ref().map(|n| s(n)),
        );
        opt(
            "reply_timeout_ms",
            h.reply_timeout_ms.as_ref().map(|n| s(n)),
        );
        opt(
            "steering",
            h.steering
                .as_ref()
                .map(|v| choice("steering", v))
                .transpose()?,
        );
        opt("ha_control", h.ha_control.as_ref().map(|a| s(a)));
        opt("home_addr", h.home_addr.as_ref().map(|a| s(a)));
        if let Some(b) = &h.busy_poll {
            match b.get_ref() {
                BusyPollKey::Switch(true) => args.push("--busy-poll".into()),
                BusyPollKey::Switch(false) => {}
                BusyPollKey::Scope(v) => {
                    let v = Spanned::new(b.span(), v.clone());
                    args.push(format!("--busy-poll={}", choice("busy_poll", &v)?));
                }
            }
        }
        if h.steer_ahead == Some(true) {
            args.push("--steer-ahead".into());
        }
    }
    if file.per_request == Some(true) {
        args.push("--per-request".into());
    }
    if file.json == Some(true) {
        args.push("--json".into());
    }
    if file.no_super_frames == Some(true) {
        args.push("--no-super-frames".into());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(text: &str) -> Result<Vec<String>, ConfigError> {
        // A directory per call (tests run in parallel threads of one process), removed after.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = ds_testbed::TempDir::new(&format!("config-{n}")).expect("dir");
        let p = dir.path().join("dsnode.toml");
        std::fs::write(&p, text).expect("write");
        serve_args(&p)
    }

    #[test]
    fn keys_become_options_in_order() {
        let a = args_of(
            "device = \"tap\"\niface = \"t0\"\naddr = \"fd00::1\"\nalso_addr = [\"fd00::80\", \"fd00::81\"]\nport = 8080\nroot = \"/srv\"\njson = true\nno_super_frames = true\n[handoff]\npeer = \"[fd00::2]:7000\"\nsteering = \"transparent\"\nha_control = \"[fd00::a]:7001\"\nbusy_poll = true\nsteer_ahead = true\n",
        )
        .expect("valid");
        assert_eq!(
            a.join(" "),
            "--device tap --iface t0 --addr fd00::1 --also-addr fd00::80 --also-addr fd00::81 \
             --port 8080 --root /srv --peer [fd00::2]:7000 --steering transparent \
             --ha-control [fd00::a]:7001 --busy-poll --steer-ahead --json --no-super-frames"
        );
    }

    #[test]
    fn the_open_file_cache_keys_become_options() {
        let a = args_of(
            "open_file_cache = 1000\nopen_file_cache_valid_ms = 500\nmax_connections = 9\n",
        )
        .expect("valid");
        assert_eq!(
            a.join(" "),
            "--max-connections 9 --open-file-cache 1000 --open-file-cache-valid-ms 500"
        );
        let e = args_of("open_file_cache = -1\n").expect_err("negative");
        assert!(e.to_string().contains("open_file_cache"), "{e}");
    }

    #[test]
    fn mistakes_name_the_line_and_the_key() {
        for (text, line, key) in [
            ("device = \"tap\"\ndevce = \"tap\"\n", 2, "devce"),
            ("device = \"tap\"\n\nport = \"eighty\"\n", 3, "port"),
            ("iface = \"x\"\ndevice = \"afxd\"\n", 2, "device"),
            ("[handoff]\nsteering = \"fast\"\n", 2, "steering"),
            ("[handoff]\n\npeer = \"not an address\"\n", 3, "peer"),
            ("addr = \"fd00::1\"\naddr = \"fd00::2\"\n", 2, "addr"),
            ("iface = \"x\"\n\nroute = [\"fd00:2::/64\"]\n", 3, "route"),
        ] {
            let e = args_of(text).expect_err(text).to_string();
            assert!(e.contains(&format!("line {line}")), "{text:?}: {e}");
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn routes_and_the_gateway_become_options() {
        let a = args_of(
            "gateway = \"fd00::a\"\nroute = [\"fd00:2::/64=fd00::b\", \"fd00:3::/48=fd00::c\"]\n",
        )
        .expect("valid");
        assert_eq!(
            a.join(" "),
            "--gateway fd00::a --route fd00:2::/64=fd00::b --route fd00:3::/48=fd00::c"
        );
    }

    #[test]
    fn a_real_time_priority_becomes_the_option_and_an_impossible_one_names_the_key() {
        let a = args_of("iface = \"x\"\nsched_fifo = 10\n").expect("valid");
        assert_eq!(a.join(" "), "--iface x --sched-fifo 10");
        let e = args_of("iface = \"x\"\nsched_fifo = 300\n")
            .expect_err("out of u8")
            .to_string();
        assert!(e.contains("line 2") && e.contains("sched_fifo"), "{e}");
    }

    #[test]
    fn busy_poll_takes_a_switch_or_a_scope_and_a_wrong_scope_names_the_key() {
        for (value, out) in [
            ("true", "--busy-poll"),
            ("false", ""),
            ("\"exchange\"", "--busy-poll=exchange"),
            ("\"handoff\"", "--busy-poll=handoff"),
        ] {
            let a = args_of(&format!("[handoff]\nbusy_poll = {value}\n")).expect(value);
            assert_eq!(a.join(" "), out, "{value}");
        }
        let e = args_of("[handoff]\n\nbusy_poll = \"always\"\n")
            .expect_err("unknown scope")
            .to_string();
        assert!(e.contains("line 3") && e.contains("busy_poll"), "{e}");
        assert!(e.contains("exchange, handoff"), "{e}");
    }

    #[test]
    fn queue_cpus_become_one_option_each_and_a_negative_one_names_the_key() {
        let a = args_of("queues = 2\nqueue_cpus = [0, 1]\n").expect("valid");
        assert_eq!(a.join(" "), "--queues 2 --queue-cpus 0 --queue-cpus 1");
        let e = args_of("queues = 2\nqueue_cpus = [0, -1]\n")
            .expect_err("negative")
            .to_string();
        assert!(e.contains("line 2") && e.contains("queue_cpus"), "{e}");
    }

    #[test]
    fn a_missing_file_says_so() {
        let e = serve_args(Path::new("/nonexistent/node.toml")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/node.toml"), "{e}");
    }
}
