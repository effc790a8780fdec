//! The benchmark's namespaces and addresses.
//!
//! ```text
//!  P (client)                 S (server host)                          K (kernel server)
//!  kernel TCP client          br0 ─┬─ up0 (veth)                       kernel TCP server
//!  fd00:5e:1::1 on br0 ── p1 ══════╛                                   fd00:5e:1::4 on tap0
//!                                  ├─ TAP ── ds-stack Runner   fd00:5e:1::2     │
//!                                  ├─ TAP ── smoltcp Interface fd00:5e:1::3     │
//!                                  ├─ TAP ── relay thread (userspace) ── TAP ───┘
//!                                  └─ kv0 (veth) ══ eth0 fd00:5e:1::5       V (reference)
//! ```
//!
//! One Ethernet segment (`fd00:5e:1::/64`): P's bridge, a veth pair, S's bridge, and one TAP
//! port per server. Every server's frames cross exactly one TAP device on S's bridge; the
//! kernel server's frames cross a second TAP (K's only link) and the relay thread that copies
//! frames between the two TAPs, one `read` + one `write` per frame: one extra userspace hop
//! that the userspace stacks do not have.
//!
//! Offloads: every `ethtool` offload off (checksum, SG, TSO, GSO, GRO) on both veth ends, both
//! bridges, and all four TAPs, so every TCP segment on every path is one MTU-sized (1500) frame
//! with a real checksum; TAPs opened without `IFF_VNET_HDR` carry no offload metadata anyway.
//! The kernel's TCP (client and servers) still builds multi-segment packets and segments them
//! in software before the device, as on any NIC without offloads: `gso_max_segs` stays at its
//! default (at 1 it costs the kernel's TCP some 12× its rate on a veth, a handicap this
//! comparison must not give its baselines).
//!
//! V is a reference point outside the comparison proper: the same kernel server reached over a
//! plain veth pair (no TAP, no relay), to show what the relay costs the kernel baseline.

use anyhow::{Context, Result};
use ds_testbed::{
    add_addr, disable_ethtool_offloads, veth, wait_addr_usable, KernelPeer, Netns, StackHost,
};
use std::net::Ipv6Addr;
use std::time::Duration;

/// The client's address (kernel TCP in P).
pub const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 1, 0, 0, 0, 0, 1);
/// Our stack's address (S).
pub const OURS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 1, 0, 0, 0, 0, 2);
/// smoltcp's address (S).
pub const SMOLTCP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 1, 0, 0, 0, 0, 3);
/// The kernel server's address (K).
pub const KERNEL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 1, 0, 0, 0, 0, 4);
/// The reference kernel server's address (V, over a veth).
pub const KERNEL_VETH: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 1, 0, 0, 0, 0, 5);
/// Our stack's MAC.
pub const OURS_MAC: [u8; 6] = [0x02, 0xd5, 0x5e, 0, 0, 2];
/// smoltcp's MAC.
pub const SMOLTCP_MAC: [u8; 6] = [0x02, 0xd5, 0x5e, 0, 0, 3];
/// TCP port every server listens on.
pub const PORT: u16 = 5201;

/// P, S and K. Dropping it deletes the namespaces (and with them every veth, bridge and TAP
/// left in them).
pub struct Topology {
    /// P: the client namespace, with its bridge.
    pub peer: KernelPeer,
    /// S: the server host namespace, bridged to P.
    pub host: StackHost,
    /// K: the kernel server's namespace (its only link is a TAP made later).
    pub kns: Netns,
    /// V: the reference kernel server's namespace (a veth to S's bridge, made later).
    pub vns: Netns,
}

impl Topology {
    /// Build P and S (veth + bridges, offloads off) and an empty K.
    pub fn build() -> Result<Self> {
        let mut peer = KernelPeer::new("dsperfP", CLIENT).context("client namespace P")?;
        let host = peer.attach_host("dsperfS").context("server namespace S")?;
        // The testbed's hosts come with `gso_max_segs 1` (one segment per packet, for tests
        // that count or drop packets); the kernel client here gets its default back.
        for (ns, dev) in [
            (&peer.ns, "p1"),
            (&peer.ns, "br0"),
            (&host.ns, "up0"),
            (&host.ns, "br0"),
        ] {
            default_gso_segs(ns, dev)?;
        }
        let kns = Netns::new("dsperfK").context("kernel server namespace K")?;
        let vns = Netns::new("dsperfV").context("reference kernel server namespace V")?;
        Ok(Topology {
            peer,
            host,
            kns,
            vns,
        })
    }

    /// Link V to S's bridge with a veth pair (offloads off) and give it its address.
    pub fn setup_kernel_veth(&self) -> Result<()> {
        let s_end = super::servers::VETH_PORT;
        veth(&self.vns, "eth0", &self.host.ns, s_end)?;
        disable_ethtool_offloads(&self.vns, "eth0")?;
        disable_ethtool_offloads(&self.host.ns, s_end)?;
        self.host
            .ns
            .ip(&["link", "set", "dev", s_end, "master", &self.host.bridge])?;
        add_addr(&self.vns, "eth0", &format!("{KERNEL_VETH}/64"))?;
        wait_addr_usable(
            &self.vns,
            "eth0",
            &KERNEL_VETH.to_string(),
            Duration::from_secs(5),
        )?;
        Ok(())
    }

    /// Put a TAP that lives in S on S's bridge, up, with offloads off.
    pub fn bridge_tap(&self, name: &str) -> Result<()> {
        let ns = &self.host.ns;
        ns.ip(&["link", "set", "dev", name, "master", &self.host.bridge])?;
        ns.ip(&["link", "set", "dev", name, "up"])?;
        disable_ethtool_offloads(ns, name)?;
        Ok(())
    }

    /// Configure K's TAP: up, offloads off, the kernel server's address.
    pub fn setup_kernel_tap(&self, name: &str) -> Result<()> {
        self.kns.ip(&["link", "set", "dev", name, "up"])?;
        disable_ethtool_offloads(&self.kns, name)?;
        add_addr(&self.kns, name, &format!("{KERNEL}/64"))?;
        Ok(())
    }

    /// A sysctl of K (the kernel server's TCP settings), for the report, whitespace squeezed.
    pub fn kernel_sysctl(&self, key: &str) -> String {
        match self.kns.get_sysctl(key) {
            Ok(v) => v.split_whitespace().collect::<Vec<_>>().join(" "),
            Err(e) => format!("unknown ({e:#})"),
        }
    }
}

/// Frames the kernel dropped on transmission through `dev` in `ns` (for a TAP: frames for its
/// userspace reader that found the queue full).
pub fn tx_dropped(ns: &Netns, dev: &str) -> Result<u64> {
    Ok(ds_testbed::link_stats(ns, dev, "tx", &["dropped"])?[0])
}

/// `gso_max_segs` back at the kernel's default (`GSO_MAX_SEGS`) on `dev`.
fn default_gso_segs(ns: &Netns, dev: &str) -> Result<()> {
    ns.ip(&["link", "set", "dev", dev, "gso_max_segs", "65535"])
        .with_context(|| format!("gso_max_segs on {dev}"))?;
    Ok(())
}
