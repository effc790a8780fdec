//! The handoff topology: a client, a home agent and nodes, each in its own namespace, on one
//! bridge.
//!
//! ```text
//!  client (c0) ─┐            hub namespace: bridge br0
//!  HA (h0) ─────┼── br0 ──┬── node 1 (n0)
//!               │         └── node 2 (n0) …
//! ```
//!
//! Every member has one veth whose other end is a port of `br0` in the hub namespace (`lc`,
//! `lh`, `l1`, `l2`, …), with offloads off on both ends. The namespaces are uniquely named and
//! removed on drop, also when the build fails half-way or a test panics.

use crate::{add_addr, add_route, disable_offload, veth, wait_addr_usable, Netns};
use anyhow::{Context, Result};
use std::time::Duration;

/// The client's interface.
pub const CLIENT_IF: &str = "c0";
/// The home agent's interface.
pub const HA_IF: &str = "h0";
/// Each node's interface.
pub const NODE_IF: &str = "n0";
/// The bridge, in [`HandoffTopology::hub`].
pub const BRIDGE: &str = "br0";
/// The home agent's port on the bridge (where a program that gives its veth NAPI goes).
pub const HA_PORT: &str = "lh";

/// What to build. Addresses are without prefix length (they get /64 and are waited for).
#[derive(Clone, Debug, Default)]
pub struct HandoffSpec<'a> {
    /// Prefix of the namespaces' names (each name is made unique after it).
    pub prefix: &'a str,
    /// How many nodes (at most 9).
    pub nodes: usize,
    /// The client's kernel address on `c0`, if the kernel is the client.
    pub client_addr: Option<&'a str>,
    /// The client's route to this address (a /128) goes through the home agent.
    pub client_route_via_ha: Option<&'a str>,
    /// The home agent's address on `h0`; the home agent forwards (RFC 6275 §10.4.1).
    pub ha_addr: &'a str,
    /// Kernel addresses of the nodes on `n0`, by node (fewer than nodes: the rest get none).
    pub node_addrs: &'a [&'a str],
    /// Permanent neighbour entries at the home agent: (address, MAC) of what it reaches on
    /// the link without neighbour discovery (care-of addresses of userspace stacks).
    pub ha_neighbours: &'a [(&'a str, [u8; 6])],
    /// Transmit and receive queues of each node's link (1 unless a test runs a node per
    /// queue).
    pub node_queues: u32,
}

/// The built topology; dropping it removes every namespace.
pub struct HandoffTopology {
    /// Holds the bridge.
    pub hub: Netns,
    /// The client.
    pub client: Netns,
    /// The home agent.
    pub ha: Netns,
    /// The nodes.
    pub nodes: Vec<Netns>,
}

impl HandoffTopology {
    /// Build `spec` (needs root).
    pub fn build(spec: &HandoffSpec) -> Result<HandoffTopology> {
        anyhow::ensure!(spec.nodes <= 9, "at most 9 nodes");
        let p = spec.prefix;
        let hub = Netns::new(&format!("{p}lan"))?;
        let client = Netns::new(&format!("{p}cli"))?;
        let ha = Netns::new(&format!("{p}ha"))?;
        let nodes = (1..=spec.nodes)
            .map(|i| Netns::new(&format!("{p}n{i}")))
            .collect::<Result<Vec<_>>>()?;
        crate::bridge(&hub, BRIDGE, &[])?;
        let ports = (1..=spec.nodes).map(node_port);
        let members = [
            (&client, "lc".to_string(), CLIENT_IF),
            (&ha, HA_PORT.into(), HA_IF),
        ]
        .into_iter()
        .chain(nodes.iter().zip(ports).map(|(n, port)| (n, port, NODE_IF)));
        for (ns, port, inner) in members {
            if inner == NODE_IF && spec.node_queues > 1 {
                crate::veth_queues(&hub, &port, ns, inner, spec.node_queues)?;
            } else {
                veth(&hub, &port, ns, inner)?;
            }
            hub.ip(&["link", "set", &port, "master", BRIDGE])
                .with_context(|| format!("enslave {port}"))?;
            disable_offload(ns, inner)?;
            disable_offload(&hub, &port)?;
        }
        let mut addrs = vec![(&ha, HA_IF, spec.ha_addr)];
        addrs.extend(spec.client_addr.map(|a| (&client, CLIENT_IF, a)));
        addrs.extend(
            nodes
                .iter()
                .zip(spec.node_addrs)
                .map(|(n, a)| (n, NODE_IF, *a)),
        );
        for (ns, ifname, addr) in &addrs {
            add_addr(ns, ifname, &format!("{addr}/64"))?;
        }
        if let Some(dst) = spec.client_route_via_ha {
            add_route(
                &client,
                &format!("{dst}/128"),
                Some(spec.ha_addr),
                Some(CLIENT_IF),
            )?;
        }
        ha.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for (addr, mac) in spec.ha_neighbours {
            neighbour(&ha, HA_IF, addr, *mac)?;
        }
        for (ns, ifname, addr) in &addrs {
            wait_addr_usable(ns, ifname, addr, Duration::from_secs(5))?;
        }
        Ok(HandoffTopology {
            hub,
            client,
            ha,
            nodes,
        })
    }
}

impl HandoffTopology {
    /// Every frame the bridge sends a node leaves on transmit queue `queue` of the node's port,
    /// so it reaches receive queue `queue` of the node's link, whatever its flow (XPS: every
    /// CPU mapped to that queue, none to the others). Without it a veth spreads flows over
    /// the queues by their hash; with it a node serving several queues gets everything on one,
    /// the worst case for whatever the others hold. Needs `node_queues` above `queue`.
    pub fn steer_nodes_to_queue(&self, queues: u32, queue: u32) -> Result<()> {
        anyhow::ensure!(queue < queues, "queue {queue} of {queues}");
        // SAFETY: sysconf reads a value; no memory is passed.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let cpus = u32::try_from(cpus)
            .ok()
            .filter(|n| *n > 0)
            .context("the number of CPUs")?;
        let all = cpu_mask(cpus);
        for i in 1..=self.nodes.len() {
            let port = node_port(i);
            for q in 0..queues {
                let mask = if q == queue { all.as_str() } else { "0" };
                // `ip netns exec` mounts the namespace's own sysfs.
                let path = format!("/sys/class/net/{port}/queues/tx-{q}/xps_cpus");
                self.hub
                    .exec(&["sh", "-c", &format!("echo {mask} > {path}")])
                    .with_context(|| format!("XPS on {port} tx-{q}"))?;
            }
        }
        Ok(())
    }

    /// A FIFO of `frames` on the bridge's ports towards the home agent and the nodes, as a
    /// switch port buffers a burst. Without one (a veth's default is no queue), a frame that
    /// finds the 256-frame ring of an XDP program's veth full is dropped at once (the port's
    /// `tx_dropped`); with one, the veth stops the queue until the ring drains (Linux 6.16's
    /// qdisc backpressure on veth). For the flood tests: at 50,000 packets/s on two shared
    /// cores, the home agent's or a node's NAPI falls behind now and then, and a legitimate
    /// client's SYN lost there costs its 1 s retransmission — the test bed's ring, not what is
    /// tested. What it does not cover: frames the home agent's program sends back out of `h0`
    /// (XDP_TX) go straight into `lh`'s ring, past any queue (an overflow there shows as an
    /// XDP transmit error in `h0`'s `ethtool -S`); before Linux 6.16 the veth drops anyway.
    pub fn queue_ports(&self, frames: u32) -> Result<()> {
        let limit = frames.to_string();
        let ports = (1..=self.nodes.len()).map(node_port);
        for port in std::iter::once(HA_PORT.to_string()).chain(ports) {
            let args = [
                "qdisc", "replace", "dev", &port, "root", "pfifo", "limit", &limit,
            ];
            let out = self
                .hub
                .command("tc")
                .args(args)
                .output()
                .context("run tc")?;
            anyhow::ensure!(
                out.status.success(),
                "tc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Node `i`'s port on the bridge (from 1).
/// Every one of `cpus` CPUs as a sysfs CPU mask: 32-bit hex groups, most significant first,
/// separated by commas (the kernel's `bitmap_parse`).
fn cpu_mask(cpus: u32) -> String {
    let groups = cpus.div_ceil(32);
    (0..groups)
        .rev()
        .map(|g| {
            let bits = (cpus - 32 * g).min(32);
            let m = if bits == 32 {
                u32::MAX
            } else {
                (1u32 << bits) - 1
            };
            format!("{m:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn node_port(i: usize) -> String {
    format!("l{i}")
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A permanent neighbour entry: `addr` is at `mac` on `dev`.
pub fn neighbour(ns: &Netns, dev: &str, addr: &str, mac: [u8; 6]) -> Result<()> {
    let mac = mac_str(mac);
    ns.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
    .with_context(|| format!("neighbour {addr} at {mac} in {}", ns.name()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_masks_are_32_bit_groups() {
        assert_eq!(super::cpu_mask(2), "00000003");
        assert_eq!(super::cpu_mask(32), "ffffffff");
        assert_eq!(super::cpu_mask(33), "00000001,ffffffff");
        assert_eq!(super::cpu_mask(70), "0000003f,ffffffff,ffffffff");
    }
}
