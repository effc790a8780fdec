//! Hosts running the userspace stack (`ds-stack`) over a TAP device inside a namespace, bridged
//! to other namespaces where the Linux kernel's TCP is the peer.

use crate::{add_addr, bridge, disable_offload, unique_ifname, veth, wait_addr_usable, Netns};
use anyhow::{Context, Result};
use ds_stack::device::TapDevice;
use ds_stack::runner::Runner;
use ds_stack::{Config, Interface};
use std::net::Ipv6Addr;
use std::time::Duration;

/// A namespace holding a bridge, ready for TAP devices of userspace stacks to be attached.
pub struct StackHost {
    /// The namespace.
    pub ns: Netns,
    /// The bridge inside it.
    pub bridge: String,
    /// The veth end on the bridge (towards the peer).
    pub uplink: String,
}

/// A kernel peer namespace with one address on a bridge, to which stack hosts are attached.
pub struct KernelPeer {
    /// The namespace.
    pub ns: Netns,
    /// The bridge the kernel address sits on.
    pub bridge: String,
    /// The kernel's address.
    pub addr: Ipv6Addr,
    links: usize,
}

impl KernelPeer {
    /// A peer namespace with `addr/64` on a bridge.
    pub fn new(prefix: &str, addr: Ipv6Addr) -> Result<Self> {
        let ns = Netns::new(prefix)?;
        let br = "br0".to_string();
        bridge(&ns, &br, &[])?;
        add_addr(&ns, &br, &format!("{addr}/64"))?;
        Ok(KernelPeer {
            ns,
            bridge: br,
            addr,
            links: 0,
        })
    }

    /// A new stack host linked to this peer's bridge by a veth pair (offloads off on both
    /// ends, so frames reach the TAP with full checksums and one segment each).
    pub fn attach_host(&mut self, prefix: &str) -> Result<StackHost> {
        let host = Netns::new(prefix)?;
        self.links += 1;
        let peer_if = format!("p{}", self.links);
        let up = "up0".to_string();
        veth(&self.ns, &peer_if, &host, &up)?;
        disable_offload(&self.ns, &peer_if)?;
        disable_offload(&host, &up)?;
        self.ns
            .ip(&["link", "set", &peer_if, "master", &self.bridge])?;
        bridge(&host, "br0", &[&up])?;
        disable_offload(&self.ns, &self.bridge)?;
        wait_addr_usable(
            &self.ns,
            &self.bridge,
            &self.addr.to_string(),
            Duration::from_secs(5),
        )?;
        Ok(StackHost {
            ns: host,
            bridge: "br0".into(),
            uplink: up,
        })
    }
}

impl StackHost {
    /// Open a TAP device in this namespace, attach it to the bridge, and build a runner for an
    /// interface owning `addr` with MAC `mac`. Call from any thread: the TAP is created inside
    /// the namespace.
    pub fn stack(
        &self,
        mac: [u8; 6],
        addr: Ipv6Addr,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Runner<TapDevice>> {
        let name = unique_ifname("dt");
        let n = name.clone();
        let dev = self
            .ns
            .try_run(move || TapDevice::open(&n))?
            .context("open TAP")?;
        self.ns
            .ip(&["link", "set", &name, "master", &self.bridge])?;
        disable_offload(&self.ns, &name)?;
        let mut cfg = Config::new(mac, vec![addr]);
        tweak(&mut cfg);
        let iface = Interface::new(cfg, ds_stack::Instant::ZERO);
        let mut rt = Runner::new(dev, iface);
        let now = rt.now();
        rt.iface.announce(now);
        Ok(rt)
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can generate or check a stream.
pub struct PatternStream {
    state: u64,
}

impl PatternStream {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        PatternStream {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    /// `len` bytes of the stream from `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        PatternStream::new(seed).fill(&mut b);
        b
    }

    /// SHA-256 of the concatenated blocks `block(0)`, …, `block(n - 1)`.
    pub fn digest_of_blocks(n: usize, block: impl Fn(usize) -> Vec<u8>) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for i in 0..n {
            h.update(block(i));
        }
        h.finalize().into()
    }

    /// Fill `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let b = self.state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}
