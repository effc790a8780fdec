//! Links, addresses, routes and bridges inside [`Netns`] namespaces, plus
//! readiness waits.

use crate::netns::{describe, Netns};
use crate::IFNAME_MAX;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tracing::debug;

/// Poll period of the `wait_*` helpers.
const POLL: Duration = Duration::from_millis(20);

fn check_ifname(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= IFNAME_MAX,
        "interface name {name:?} must be 1..={IFNAME_MAX} bytes"
    );
    ensure!(
        !name.contains(['/', ' ', '\t', '\n', ':']) && name != "." && name != "..",
        "invalid interface name {name:?}"
    );
    Ok(())
}

/// Creates a veth pair with end `ifa` in namespace `a` and end `ifb` in
/// namespace `b` (which may be the same namespace), and brings both ends up.
pub fn veth(a: &Netns, ifa: &str, b: &Netns, ifb: &str) -> Result<()> {
    veth_queues(a, ifa, b, ifb, 1)
}

/// [`veth`] with `queues` transmit and receive queues at each end (the sender's transmit
/// queue of a packet is its receive queue at the other end: the flow hash spreads flows over
/// them, like a NIC's RSS).
pub fn veth_queues(a: &Netns, ifa: &str, b: &Netns, ifb: &str, queues: u32) -> Result<()> {
    check_ifname(ifa)?;
    check_ifname(ifb)?;
    let q = queues.max(1).to_string();
    a.ip(&[
        "link",
        "add",
        ifa,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        ifb,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "netns",
        b.name(),
    ])
    .with_context(|| {
        format!(
            "cannot create veth {}:{ifa} <-> {}:{ifb} with {q} queues",
            a.name(),
            b.name()
        )
    })?;
    set_up(a, ifa)?;
    set_up(b, ifb)?;
    Ok(())
}

/// Adds an address in CIDR form (e.g. `"fd00::1/64"`) to `ifname`. IPv6
/// addresses are always added with `nodad`, so they are never tentative.
pub fn add_addr(ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.ip(&args)
        .with_context(|| format!("cannot add {cidr} to {}:{ifname}", ns.name()))?;
    Ok(())
}

/// Brings `ifname` up.
pub fn set_up(ns: &Netns, ifname: &str) -> Result<()> {
    ns.ip(&["link", "set", "dev", ifname, "up"])
        .with_context(|| format!("cannot bring up {}:{ifname}", ns.name()))?;
    Ok(())
}

/// Takes `ifname` down.
pub fn set_down(ns: &Netns, ifname: &str) -> Result<()> {
    ns.ip(&["link", "set", "dev", ifname, "down"])
        .with_context(|| format!("cannot take down {}:{ifname}", ns.name()))?;
    Ok(())
}

/// Adds a route to `dst` (CIDR, or `"default"`), optionally through gateway
/// `via` and/or out of device `dev` (at least one of them is required).
///
/// IPv6 and IPv4 are told apart by the destination, or by `via` for
/// `"default"`.
pub fn add_route(ns: &Netns, dst: &str, via: Option<&str>, dev: Option<&str>) -> Result<()> {
    ensure!(
        via.is_some() || dev.is_some(),
        "add_route({dst}) needs a gateway or a device"
    );
    let v6 = dst.contains(':') || via.is_some_and(|v| v.contains(':'));
    let mut args = vec![if v6 { "-6" } else { "-4" }, "route", "add", dst];
    if let Some(via) = via {
        args.extend(["via", via]);
    }
    if let Some(dev) = dev {
        args.extend(["dev", dev]);
    }
    ns.ip(&args)
        .with_context(|| format!("cannot add route {dst} in {}", ns.name()))?;
    Ok(())
}

/// Creates bridge `name` in `ns`, enslaves `ports` (interfaces already in
/// `ns`) and brings the bridge and its ports up.
///
/// The bridge forwards immediately: STP off, `forward_delay 0`, and
/// `mcast_snooping 0` so that IPv6 neighbour discovery multicast is flooded
/// to every port.
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) -> Result<()> {
    check_ifname(name)?;
    ns.ip(&[
        "link",
        "add",
        "name",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])
    .with_context(|| format!("cannot create bridge {}:{name}", ns.name()))?;
    for port in ports {
        ns.ip(&["link", "set", "dev", port, "master", name])
            .with_context(|| format!("cannot enslave {port} to bridge {}:{name}", ns.name()))?;
        set_up(ns, port)?;
    }
    set_up(ns, name)?;
    Ok(())
}

/// Turns off checksum and segmentation/receive offloads on `ifname`
/// (`ethtool -K IF tx off`, `rx off`, `sg off`, `tso off`, `gso off`,
/// `gro off`, one feature at a time) and sets `gso_max_segs 1`, so that
/// packets seen or injected by a userspace stack carry real checksums, and
/// every packet the kernel sends through the interface is a single MTU-sized
/// segment (the kernel TCP builds multi-segment GSO packets even with all
/// offloads off unless `gso_max_segs` is 1).
///
/// Settings the device cannot change are ignored (logged at debug level);
/// an error is returned only when `ethtool` cannot be run at all.
pub fn disable_offload(ns: &Netns, ifname: &str) -> Result<()> {
    disable_ethtool_offloads(ns, ifname)?;
    if let Err(e) = ns.ip(&["link", "set", "dev", ifname, "gso_max_segs", "1"]) {
        debug!("ignored: {e:#}");
    }
    Ok(())
}

/// Turn off what `ethtool -K` can (tx/rx checksum, scatter-gather, TSO, GSO, GRO) but leave
/// `gso_max_segs` alone: the kernel's TCP then still builds multi-segment packets and
/// segments them in software before the device, as it does on any device without
/// segmentation offload (one segment per packet, [`disable_offload`], costs the kernel's TCP
/// some 12× its rate on a veth: a benchmark's "offloads off" baseline must not pay that).
pub fn disable_ethtool_offloads(ns: &Netns, ifname: &str) -> Result<()> {
    set_ethtool_features(ns, ifname, &["tx", "rx", "sg", "tso", "gso", "gro"], false)
}

/// Turn each of `features` (`ethtool -K` names) on or off, one at a time: a feature the
/// device cannot change is skipped (logged at debug level); an error is returned only when
/// `ethtool` cannot be run at all.
pub fn set_ethtool_features(ns: &Netns, ifname: &str, features: &[&str], on: bool) -> Result<()> {
    for feature in features {
        let mut cmd = ns.command("ethtool");
        cmd.args(["-K", ifname, feature, if on { "on" } else { "off" }]);
        let line = describe(&cmd);
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("failed to start `{line}`"))?;
        if !out.status.success() {
            debug!(
                "ignored: `{line}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Why an address is not usable yet, or `None` when it is.
fn addr_state(ns: &Netns, ifname: &str, want: IpAddr) -> Result<Option<String>> {
    let link = ns.ip(&["-o", "link", "show", "dev", ifname])?;
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    let flags = link
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(f, _)| f.split(',').map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    if !flags.iter().any(|f| f == "UP") {
        return Ok(Some(format!("{ifname} is down")));
    }
    if !flags.iter().any(|f| f == "LOWER_UP") && ifname != "lo" {
        return Ok(Some(format!("{ifname} has no carrier (LOWER_UP)")));
    }
    let addrs = ns.ip(&["-o", "addr", "show", "dev", ifname])?;
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    for line in addrs.lines() {
        let mut words = line.split_whitespace();
        // `any` stops right after the family word; the next word is the CIDR.
        if !words.any(|w| w == "inet" || w == "inet6") {
            continue;
        }
        let Some(cidr) = words.next() else { continue };
        let addr = cidr.split_once('/').map_or(cidr, |(a, _)| a);
        if addr.parse::<IpAddr>().ok() != Some(want) {
            continue;
        }
        for bad in ["tentative", "dadfailed"] {
            if line.split_whitespace().any(|w| w == bad) {
                return Ok(Some(format!("{want} on {ifname} is {bad}")));
            }
        }
        return Ok(None);
    }
    Ok(Some(format!("{want} not present on {ifname}")))
}

/// Waits until `addr` (without prefix length, e.g. `"fd00::1"`) is present on
/// `ifname`, is neither tentative nor DAD-failed, and the link is up with
/// carrier (`UP,LOWER_UP`). Fails after `timeout` with the last reason.
pub fn wait_addr_usable(ns: &Netns, ifname: &str, addr: &str, timeout: Duration) -> Result<()> {
    let want: IpAddr = addr
        .split_once('/')
        .map_or(addr, |(a, _)| a)
        .parse()
        .with_context(|| format!("bad address {addr:?}"))?;
    poll_until(timeout, || addr_state(ns, ifname, want)).map_err(|reason| {
        anyhow!(
            "{addr} on {}:{ifname} not usable after {timeout:?}: {reason:#}",
            ns.name()
        )
    })
}

/// Whether `ss -ltnH` output lists a TCP listener on `port`.
pub(crate) fn ss_has_listener(ss_output: &str, port: u16) -> bool {
    ss_output.lines().any(|line| {
        // State Recv-Q Send-Q Local:Port Peer:Port [Process]
        line.split_whitespace()
            .nth(3)
            .and_then(|local| local.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            == Some(port)
    })
}

/// Waits until some socket in `ns` listens on TCP `port` (any address),
/// polling `ss -ltnH` inside the namespace. Fails after `timeout`.
pub fn wait_tcp_listening(ns: &Netns, port: u16, timeout: Duration) -> Result<()> {
    poll_until(timeout, || {
        let out = ns.exec(&["ss", "-ltnH"])?;
        let listening = ss_has_listener(&String::from_utf8_lossy(&out.stdout), port);
        Ok((!listening).then(|| "not listening".to_string()))
    })
    .map_err(|e| {
        anyhow!(
            "nothing listens on TCP port {port} in {} after {timeout:?}: {e:#}",
            ns.name()
        )
    })
}

/// Call `check` every [`POLL`] until it finds nothing wrong (`Ok(None)`); fails with the
/// last reason it gave after `timeout`, at once with its error.
fn poll_until(timeout: Duration, mut check: impl FnMut() -> Result<Option<String>>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let reason = match check()? {
            None => return Ok(()),
            Some(reason) => reason,
        };
        if Instant::now() >= deadline {
            bail!("{reason}");
        }
        std::thread::sleep(POLL);
    }
}

/// Counters of `dev` in `ns` from one `ip -s -j link` snapshot: `dir` "rx" or "tx", `names`
/// e.g. `["bytes", "packets"]` or `["dropped"]` (for a TAP, transmit drops are frames for its
/// reader that found its queue full), in the order asked.
pub fn link_stats(ns: &Netns, dev: &str, dir: &str, names: &[&str]) -> Result<Vec<u64>> {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parse `ip -s -j link` output")?;
    names
        .iter()
        .map(|what| {
            v.get(0)
                .and_then(|l| stats64_of(l, dir, what))
                .with_context(|| format!("no {dir} {what} counter for {dev} in {}", ns.name()))
        })
        .collect()
}

/// `stats64.<dir>.<what>` of one link of `ip -s -j link`'s output.
fn stats64_of(link: &serde_json::Value, dir: &str, what: &str) -> Option<u64> {
    link.get("stats64")?
        .get(dir)?
        .get(what)
        .and_then(serde_json::Value::as_u64)
}

/// Every nonzero drop or error counter of every link in `ns`: `ip -s -j link`'s `rx`/`tx`
/// `dropped` and `errors`, and `ethtool -S` counters whose names say drop or error (a veth's
/// XDP ring overflows are only there), as `"dev: name=n"`. For a test's failure message:
/// where a lost packet went on the test bed.
pub fn link_drops(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.ip(&["-s", "-j", "link", "show"])?;
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parse `ip -s -j link` output")?;
    let mut found = Vec::new();
    for link in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(dev) = link.get("ifname").and_then(serde_json::Value::as_str) else {
            continue;
        };
        for dir in ["rx", "tx"] {
            for what in ["dropped", "errors"] {
                let n = stats64_of(link, dir, what).unwrap_or(0);
                if n > 0 {
                    found.push(format!("{dev}: {dir}_{what}={n}"));
                }
            }
        }
        // Devices without statistics (lo, bridges) make ethtool fail: nothing to add.
        let Ok(stats) = ns.command("ethtool").args(["-S", dev]).output() else {
            continue;
        };
        for line in String::from_utf8_lossy(&stats.stdout).lines() {
            let Some((name, n)) = line.trim().split_once(':') else {
                continue;
            };
            let n: u64 = n.trim().parse().unwrap_or(0);
            if n > 0 && (name.contains("drop") || name.contains("err")) {
                found.push(format!("{dev}: {}={n}", name.trim()));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_output() {
        let out = "LISTEN 0      128    [fd00::2]:8080       [::]:*\n\
                   LISTEN 0      4096   0.0.0.0:22           0.0.0.0:*    \n\
                   LISTEN 0      5      [::ffff:127.0.0.1]:443 *:*\n";
        assert!(ss_has_listener(out, 8080));
        assert!(ss_has_listener(out, 22));
        assert!(ss_has_listener(out, 443));
        assert!(!ss_has_listener(out, 80));
        assert!(!ss_has_listener("", 80));
    }

    #[test]
    fn ifname_validation() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}
