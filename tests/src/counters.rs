//! `nstat`-style SNMP/netstat counters of a namespace.
//!
//! The counters are read from `/proc/thread-self/net/{snmp,netstat,snmp6}`
//! by a thread inside the namespace ([`Netns::run`]). `/proc/net` is a
//! symlink to `/proc/self/net`, and `/proc/self` is the thread-group leader,
//! whose namespace stays the original one when another thread calls
//! `setns`; `/proc/thread-self/net` follows the reading thread. (The
//! integration tests check this.)

use crate::netns::Netns;
use anyhow::{Context, Result};
use std::collections::HashMap;

const PROC_NET: &str = "/proc/thread-self/net";

/// Parses the header/value line pairs of `/proc/net/snmp` and
/// `/proc/net/netstat` (`Tcp: RtoAlgorithm ...` / `Tcp: 1 ...`) into
/// `nstat`-style names (`TcpRetransSegs`, `TcpExtTCPTimeouts`).
///
/// Values that do not fit a `u64` (e.g. `TcpMaxConn`, which is `-1`) are
/// left out.
pub fn parse_pairs(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [header, values] = pair else { continue };
        let (Some((hp, names)), Some((vp, vals))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if hp != vp {
            continue;
        }
        for (name, val) in names.split_whitespace().zip(vals.split_whitespace()) {
            if let Ok(v) = val.parse::<u64>() {
                out.insert(format!("{hp}{name}"), v);
            }
        }
    }
    out
}

/// Parses the `Name value` lines of `/proc/net/snmp6` (`Ip6InReceives 12`).
pub fn parse_snmp6(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let name = w.next()?;
            let val = w.next()?.parse::<u64>().ok()?;
            Some((name.to_string(), val))
        })
        .collect()
}

fn read_proc_net(ns: &Netns) -> Result<(String, String, String)> {
    let read = |file: &str| {
        let path = format!("{PROC_NET}/{file}");
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
    };
    let (snmp, netstat, snmp6) = ns
        .try_run(|| (read("snmp"), read("netstat"), read("snmp6")))
        .with_context(|| format!("cannot read counters of {}", ns.name()))?;
    Ok((snmp?, netstat?, snmp6?))
}

/// All counters of the namespace under their `nstat` names: the `Ip`,
/// `Icmp`, `Tcp`, `Udp`, ... groups of `snmp` (`TcpOutRsts`), the `TcpExt`
/// and `IpExt` groups of `netstat` (`TcpExtTCPTimeouts`) and the IPv6
/// counters of `snmp6` (`Ip6InReceives`, `Icmp6OutEchos`).
pub fn all_counters(ns: &Netns) -> Result<HashMap<String, u64>> {
    let (snmp, netstat, snmp6) = read_proc_net(ns)?;
    let mut all = parse_pairs(&snmp);
    all.extend(parse_pairs(&netstat));
    all.extend(parse_snmp6(&snmp6));
    Ok(all)
}

/// The TCP counters of the namespace (the `Tcp` group of `snmp` and the
/// `TcpExt` group of `netstat`, covering IPv4 and IPv6 alike).
///
/// Each counter appears twice: under its `nstat` name (`TcpRetransSegs`,
/// `TcpOutRsts`, `TcpExtTCPTimeouts`) and under its bare field name
/// (`RetransSegs`, `OutRsts`, `TCPTimeouts`).
pub fn tcp_counters(ns: &Netns) -> Result<HashMap<String, u64>> {
    let (snmp, netstat, _) = read_proc_net(ns)?;
    let mut out = HashMap::new();
    for (key, v) in parse_pairs(&snmp).into_iter().chain(parse_pairs(&netstat)) {
        let bare = if let Some(b) = key.strip_prefix("TcpExt") {
            b.to_string()
        } else if let Some(b) = key.strip_prefix("Tcp") {
            b.to_string()
        } else {
            continue;
        };
        out.insert(bare, v);
        out.insert(key, v);
    }
    Ok(out)
}

/// `after - before` for every counter in `after` (saturating at 0; counters
/// missing from `before` count from 0).
pub fn counter_delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .collect()
}

/// The `Tcp*` counters of a delta that moved, sorted by name (for a log line).
pub fn moved_tcp_counters(delta: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut moved: Vec<_> = delta
        .iter()
        .filter(|(k, v)| **v > 0 && k.starts_with("Tcp"))
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    moved.sort();
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL InReceives\n\
Ip: 2 64 10\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens RetransSegs OutRsts\n\
Tcp: 1 200 120000 -1 3 7 2\n\
Udp: InDatagrams NoPorts\n\
Udp: 4 0\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPTimeouts\n\
TcpExt: 0 5\n\
IpExt: InNoRoutes\n\
IpExt: 1\n";

    #[test]
    fn parses_snmp_pairs() {
        let m = parse_pairs(SNMP);
        assert_eq!(m["TcpRetransSegs"], 7);
        assert_eq!(m["TcpOutRsts"], 2);
        assert_eq!(m["IpInReceives"], 10);
        assert_eq!(m["UdpInDatagrams"], 4);
        assert!(!m.contains_key("TcpMaxConn"));
        let n = parse_pairs(NETSTAT);
        assert_eq!(n["TcpExtTCPTimeouts"], 5);
        assert_eq!(n["IpExtInNoRoutes"], 1);
    }

    #[test]
    fn parses_snmp6() {
        let m = parse_snmp6("Ip6InReceives                   \t12\nIcmp6OutEchos 3\nbogus\n");
        assert_eq!(m["Ip6InReceives"], 12);
        assert_eq!(m["Icmp6OutEchos"], 3);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn delta() {
        let a = HashMap::from([("x".to_string(), 3), ("y".to_string(), 9)]);
        let b = HashMap::from([("x".to_string(), 5), ("y".to_string(), 1), ("z".into(), 2)]);
        let d = counter_delta(&a, &b);
        assert_eq!(d["x"], 2);
        assert_eq!(d["y"], 0);
        assert_eq!(d["z"], 2);
    }
}
