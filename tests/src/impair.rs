//! Link impairments: random loss with nftables, rate limits with tc TBF.
//!
//! (`sch_netem` is not available on the project's machines, so there is no
//! delay/jitter/reordering emulation here.)

use crate::netns::{check_status, describe, run_checked, Netns};
use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::debug;

static TABLE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `nft -f -` inside `ns_name` with `script` on stdin.
fn nft_script(ns_name: &str, script: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = describe(&cmd);
    debug!("run: {line} <<< {script}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{line}`"))?;
    let write_result = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .with_context(|| format!("failed to wait for `{line}`"))?;
    check_status(&line, &out, &format!("\nscript:\n{script}"))?;
    write_result.with_context(|| format!("cannot feed the script to `{line}`"))?;
    Ok(())
}

/// Which packets of an interface an impairment applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Packets received on the interface.
    Ingress,
    /// Packets transmitted by the interface.
    Egress,
    /// Both directions, each dropped independently.
    Both,
}

/// Random packet loss on one interface, removed on drop.
///
/// Installed as an nftables table of the `netdev` family with chains on the
/// device's `ingress` and/or `egress` hooks, each with the rules `counter`
/// (packets seen) and `numgen random mod 10000 < N counter drop`. Those
/// hooks see every frame the device receives or transmits, so the loss
/// applies alike to locally generated, routed and bridged traffic (a bridge
/// port's hooks see the bridged frames), and to every protocol including
/// neighbour discovery.
///
/// Two kernel behaviours matter when the traffic is the kernel's own TCP:
///
/// * The hooks see packets before GSO segmentation, and the kernel TCP
///   always builds GSO packets of up to 64 KiB, whatever the offload
///   settings; one drop then loses a whole burst. [`crate::disable_offload`]
///   (which also sets `gso_max_segs 1`) makes every packet one segment.
/// * An `Egress` drop of a locally generated packet is reported to the
///   sending socket (`NET_XMIT_DROP`), so a local TCP sender treats it as
///   local congestion and simply sends again, rather than as loss in the
///   network. To emulate network loss for a kernel TCP sender, impair the
///   `Ingress` of the receiving interface (or any hop in between) instead.
///
/// Frames a userspace stack writes to a TAP device, and frames forwarded by
/// a router or bridge, are not affected by either point.
#[derive(Debug)]
pub struct Loss {
    ns: String,
    iface: String,
    table: String,
    percent: f64,
    direction: Direction,
}

impl Loss {
    /// Drops about `percent` % (0.0..=100.0, resolution 0.01 %) of the packets
    /// crossing `iface` of `ns` in `direction`, until the returned guard is
    /// dropped.
    ///
    /// Each install gets its own table (`ds_loss_<pid>_<n>`), so several
    /// installs stack. Drop the guard before the [`Netns`] (declaring it after
    /// the namespace does that); if the namespace is already gone, its tables
    /// went with it.
    pub fn install(ns: &Netns, iface: &str, percent: f64, direction: Direction) -> Result<Loss> {
        ensure!(
            (0.0..=100.0).contains(&percent),
            "loss percentage {percent} outside 0..=100"
        );
        // Rounded basis points; `percent` is in 0..=100 so this fits.
        let threshold = (percent * 100.0).round() as u32;
        let table = format!(
            "ds_loss_{}_{}",
            std::process::id(),
            TABLE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // nftables accepts netdev chains for devices that do not exist (yet),
        // which would silently impair nothing.
        ns.ip(&["link", "show", "dev", iface])
            .with_context(|| format!("no interface {iface} in {}", ns.name()))?;
        let hooks: &[&str] = match direction {
            Direction::Ingress => &["ingress"],
            Direction::Egress => &["egress"],
            Direction::Both => &["ingress", "egress"],
        };
        let mut script = format!("table netdev {table} {{\n");
        for hook in hooks {
            script.push_str(&format!(
                "  chain {hook} {{\n    type filter hook {hook} device \"{iface}\" priority -500; policy accept;\n    counter\n    numgen random mod 10000 < {threshold} counter drop\n  }}\n"
            ));
        }
        script.push_str("}\n");
        nft_script(ns.name(), &script).with_context(|| {
            format!(
                "cannot install {percent}% {direction:?} loss on {}:{iface}",
                ns.name()
            )
        })?;
        debug!(
            "installed {percent}% {direction:?} loss on {}:{iface} as table {table}",
            ns.name()
        );
        Ok(Loss {
            ns: ns.name().to_string(),
            iface: iface.to_string(),
            table,
            percent,
            direction,
        })
    }

    /// Name of the nftables table (family `netdev`) implementing this loss.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The configured loss percentage.
    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// The configured direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Packets dropped so far by this install (summed over its chains).
    pub fn dropped(&self) -> Result<u64> {
        Ok(self.counts()?.dropped)
    }

    /// Packets seen and dropped so far by this install (summed over its
    /// chains; with [`Direction::Both`] a packet is seen once per hook).
    pub fn counts(&self) -> Result<LossCounts> {
        let out = run_checked(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns,
            "nft",
            "list",
            "table",
            "netdev",
            &self.table,
        ]))
        .with_context(|| format!("cannot read counters of table {}", self.table))?;
        Ok(parse_loss_counts(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Removes the loss now, reporting failure (dropping the guard removes it
    /// too, but only logs failures).
    pub fn remove(mut self) -> Result<()> {
        let r = self.delete();
        self.table.clear();
        r
    }

    fn delete(&self) -> Result<()> {
        run_checked(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns,
            "nft",
            "delete",
            "table",
            "netdev",
            &self.table,
        ]))
        .with_context(|| {
            format!(
                "cannot remove loss table {} from {}:{}",
                self.table, self.ns, self.iface
            )
        })?;
        debug!("removed loss table {} from {}", self.table, self.ns);
        Ok(())
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        if self.table.is_empty() {
            return;
        }
        if let Err(e) = self.delete() {
            debug!("{e:#}");
        }
    }
}

/// Packet counts of a [`Loss`] install.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounts {
    /// Packets that reached the loss rules.
    pub seen: u64,
    /// Packets dropped by them.
    pub dropped: u64,
}

impl LossCounts {
    /// Measured drop fraction, `dropped / seen` (0.0 if nothing was seen).
    pub fn fraction(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.dropped as f64 / self.seen as f64
        }
    }
}

/// Sums the `counter packets N` of `nft list table` output: rules ending in
/// `drop` count as dropped, plain counters as seen.
pub(crate) fn parse_loss_counts(listing: &str) -> LossCounts {
    let mut counts = LossCounts::default();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(n) = words
            .windows(3)
            .find(|w| w[0] == "counter" && w[1] == "packets")
            .and_then(|w| w[2].parse::<u64>().ok())
        else {
            continue;
        };
        if words.last() == Some(&"drop") {
            counts.dropped += n;
        } else {
            counts.seen += n;
        }
    }
    counts
}

/// Token-bucket-filter parameters for [`Rate::install_tbf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tbf {
    /// Rate in kbit/s (1 kbit = 1000 bit).
    pub rate_kbit: u64,
    /// Bucket size in bytes: the largest burst sent at line rate.
    pub burst_bytes: u32,
    /// Longest time a packet may wait in the queue; sets the queue length.
    pub latency: Duration,
}

impl Tbf {
    /// `rate_mbit` Mbit/s with a bucket of 10 ms worth of bytes (at least
    /// ten 1514-byte frames) and 50 ms of queue.
    pub fn mbit(rate_mbit: f64) -> Tbf {
        let rate_kbit = (rate_mbit * 1000.0).round().max(1.0) as u64;
        // bytes per 10 ms = kbit/s * 1000 / 8 / 100
        let ten_ms = rate_kbit.saturating_mul(10) / 8;
        let burst_bytes = u32::try_from(ten_ms.max(15_140)).unwrap_or(u32::MAX);
        Tbf {
            rate_kbit,
            burst_bytes,
            latency: Duration::from_millis(50),
        }
    }
}

/// A rate limit on the traffic an interface transmits (`tc qdisc add dev IF
/// root tbf ...`), removed on drop.
///
/// Only egress is shaped; to limit the other direction of a veth, install a
/// second `Rate` on the peer end.
#[derive(Debug)]
pub struct Rate {
    ns: String,
    iface: String,
    tbf: Tbf,
    installed: bool,
}

impl Rate {
    /// Limits `iface` of `ns` to `rate_mbit` Mbit/s with the defaults of
    /// [`Tbf::mbit`].
    pub fn install(ns: &Netns, iface: &str, rate_mbit: f64) -> Result<Rate> {
        ensure!(
            rate_mbit.is_finite() && rate_mbit > 0.0,
            "rate {rate_mbit} Mbit/s must be positive"
        );
        Rate::install_tbf(ns, iface, &Tbf::mbit(rate_mbit))
    }

    /// Installs a TBF root qdisc with explicit parameters. Fails if the
    /// interface already has a non-default root qdisc.
    pub fn install_tbf(ns: &Netns, iface: &str, tbf: &Tbf) -> Result<Rate> {
        ensure!(tbf.rate_kbit > 0, "TBF rate must be positive");
        let rate = format!("{}kbit", tbf.rate_kbit);
        let burst = tbf.burst_bytes.to_string();
        let latency = format!("{}us", tbf.latency.as_micros().max(1));
        run_checked(Command::new("tc").args([
            "-n",
            ns.name(),
            "qdisc",
            "add",
            "dev",
            iface,
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            &burst,
            "latency",
            &latency,
        ]))
        .with_context(|| format!("cannot install {rate} TBF on {}:{iface}", ns.name()))?;
        debug!("installed {tbf:?} on {}:{iface}", ns.name());
        Ok(Rate {
            ns: ns.name().to_string(),
            iface: iface.to_string(),
            tbf: tbf.clone(),
            installed: true,
        })
    }

    /// The installed parameters.
    pub fn tbf(&self) -> &Tbf {
        &self.tbf
    }

    /// Removes the rate limit now, reporting failure.
    pub fn remove(mut self) -> Result<()> {
        self.installed = false;
        self.delete()
    }

    fn delete(&self) -> Result<()> {
        run_checked(Command::new("tc").args([
            "-n",
            &self.ns,
            "qdisc",
            "del",
            "dev",
            &self.iface,
            "root",
        ]))
        .with_context(|| format!("cannot remove TBF from {}:{}", self.ns, self.iface))?;
        debug!("removed TBF from {}:{}", self.ns, self.iface);
        Ok(())
    }
}

impl Drop for Rate {
    fn drop(&mut self) {
        if self.installed {
            if let Err(e) = self.delete() {
                debug!("{e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_nft_counters() {
        let listing = "table netdev t {\n chain ingress {\n  type filter hook ingress device \"a\" priority -500; policy accept;\n  counter packets 100 bytes 9000\n  numgen random mod 10000 < 3000 counter packets 12 bytes 1248 drop\n }\n chain egress {\n  counter packets 50 bytes 1\n  numgen random mod 10000 < 3000 counter packets 30 bytes 1 drop\n }\n}\n";
        let c = parse_loss_counts(listing);
        assert_eq!(
            c,
            LossCounts {
                seen: 150,
                dropped: 42
            }
        );
        assert!((c.fraction() - 0.28).abs() < 1e-9);
        assert_eq!(parse_loss_counts(""), LossCounts::default());
        assert_eq!(LossCounts::default().fraction(), 0.0);
    }

    #[test]
    fn tbf_defaults() {
        let t = Tbf::mbit(10.0);
        assert_eq!(t.rate_kbit, 10_000);
        assert_eq!(t.burst_bytes, 15_140);
        let t = Tbf::mbit(1000.0);
        assert_eq!(t.burst_bytes, 1_250_000);
    }
}
