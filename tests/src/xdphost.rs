//! Two-namespace topology for userspace stacks over AF_XDP: a kernel peer namespace (address
//! on a bridge, like [`crate::KernelPeer`]) joined by a veth pair to a host namespace whose
//! veth end carries the XDP program and the AF_XDP sockets directly (no bridge: XDP runs on
//! the interface that receives the frames).

use crate::{add_addr, bridge, disable_offload, veth, wait_addr_usable, Netns};
use anyhow::Result;
use std::net::Ipv6Addr;
use std::time::Duration;

/// A kernel peer and an AF_XDP host, joined by one veth pair.
pub struct XdpHost {
    /// The kernel peer's namespace.
    pub peer: Netns,
    /// The bridge holding the kernel peer's address.
    pub peer_bridge: String,
    /// The peer's veth end (a port of `peer_bridge`): impair this one, in both directions, to
    /// emulate network loss (the peer's own packets are then forwarded, not locally sent).
    pub peer_if: String,
    /// The kernel peer's address.
    pub peer_addr: Ipv6Addr,
    /// The host namespace, where the userspace stack runs.
    pub host: Netns,
    /// The host's veth end, for the XDP program and the AF_XDP sockets.
    pub host_if: String,
}

impl XdpHost {
    /// Build the topology; the peer gets `peer_addr/64`. Checksum and segmentation offloads
    /// are off on every interface, so frames reach AF_XDP complete and one segment each.
    pub fn new(prefix: &str, peer_addr: Ipv6Addr) -> Result<XdpHost> {
        let peer = Netns::new(&format!("{prefix}p"))?;
        let host = Netns::new(&format!("{prefix}h"))?;
        let (pif, hif) = ("p0".to_string(), "x0".to_string());
        bridge(&peer, "br0", &[])?;
        add_addr(&peer, "br0", &format!("{peer_addr}/64"))?;
        veth(&peer, &pif, &host, &hif)?;
        disable_offload(&peer, &pif)?;
        disable_offload(&host, &hif)?;
        peer.ip(&["link", "set", &pif, "master", "br0"])?;
        disable_offload(&peer, "br0")?;
        wait_addr_usable(&peer, "br0", &peer_addr.to_string(), Duration::from_secs(5))?;
        Ok(XdpHost {
            peer,
            peer_bridge: "br0".into(),
            peer_if: pif,
            peer_addr,
            host,
            host_if: hif,
        })
    }
}
