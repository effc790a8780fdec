//! Byte-exact mirrors of the structs shared with the BPF programs (`bpf/common.h`) and the
//! counter names. Addresses and ports are kept in network byte order, as on the wire.

use serde::Serialize;
use std::net::Ipv6Addr;

/// Protocol bit: TCP (`PROTO_TCP`).
pub const PROTO_TCP: u32 = 1 << 0;
/// Protocol bit: UDP.
pub const PROTO_UDP: u32 = 1 << 1;
/// Protocol bit: ICMPv6.
pub const PROTO_ICMPV6: u32 = 1 << 2;
/// Protocol bit: Mobility Header (RFC 6275 §6.1).
pub const PROTO_MOBILITY: u32 = 1 << 3;
/// Every protocol the stack handles.
pub const PROTO_ALL: u32 = PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 | PROTO_MOBILITY;

/// Where the steering program sends packets for a configured address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// To the AF_XDP socket of the receive queue (userspace stack).
    Xsk,
    /// To the kernel stack (kernel-path nodes), after decapsulation if tunnelled.
    Pass,
}

/// Value of the steering program's `local_addrs` map (`struct local_addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LocalAddr {
    /// `PROTO_*` bits of the protocols steered.
    pub protos: u32,
    /// What happens to matching packets.
    pub action: Action,
}

impl LocalAddr {
    /// The 8-byte map value.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.protos.to_ne_bytes());
        let action: u32 = match self.action {
            Action::Xsk => 0,
            Action::Pass => 1,
        };
        b[4..].copy_from_slice(&action.to_ne_bytes());
        b
    }

    /// Parse a map value; `None` if it is not 8 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let protos = u32::from_ne_bytes(b.get(..4)?.try_into().ok()?);
        let action = u32::from_ne_bytes(b.get(4..8)?.try_into().ok()?);
        Some(LocalAddr {
            protos,
            action: if action == 1 {
                Action::Pass
            } else {
                Action::Xsk
            },
        })
    }
}

/// Key of the tunnel program's `flows` map (`struct flow_key`): the client → DS direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FlowKey {
    /// The client's address.
    pub src: Ipv6Addr,
    /// The home (DS) address.
    pub dst: Ipv6Addr,
    /// Client port (0 for protocols without ports).
    pub sport: u16,
    /// DS port.
    pub dport: u16,
    /// IPv6 next header of the upper layer (6 TCP, 17 UDP, 58 ICMPv6).
    pub proto: u8,
}

/// Size of `struct flow_key`.
pub const FLOW_KEY_LEN: usize = 40;

impl FlowKey {
    /// The 40-byte map key.
    pub fn to_bytes(&self) -> [u8; FLOW_KEY_LEN] {
        let mut b = [0u8; FLOW_KEY_LEN];
        b[..16].copy_from_slice(&self.src.octets());
        b[16..32].copy_from_slice(&self.dst.octets());
        b[32..34].copy_from_slice(&self.sport.to_be_bytes());
        b[34..36].copy_from_slice(&self.dport.to_be_bytes());
        b[36] = self.proto;
        b
    }

    /// Parse a map key; `None` if it is not 40 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != FLOW_KEY_LEN {
            return None;
        }
        Some(FlowKey {
            src: addr_at(b, 0)?,
            dst: addr_at(b, 16)?,
            sport: u16::from_be_bytes([b[32], b[33]]),
            dport: u16::from_be_bytes([b[34], b[35]]),
            proto: b[36],
        })
    }
}

/// Value of `flows` (`struct flow_val`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlowVal {
    /// Care-of address of the node owning the flow.
    pub owner: Ipv6Addr,
    /// Packets tunnelled.
    pub packets: u64,
    /// Bytes tunnelled (inner packets).
    pub bytes: u64,
}

/// Size of `struct flow_val`.
pub const FLOW_VAL_LEN: usize = 32;

impl FlowVal {
    /// The 32-byte map value.
    pub fn to_bytes(&self) -> [u8; FLOW_VAL_LEN] {
        let mut b = [0u8; FLOW_VAL_LEN];
        b[..16].copy_from_slice(&self.owner.octets());
        b[16..24].copy_from_slice(&self.packets.to_ne_bytes());
        b[24..32].copy_from_slice(&self.bytes.to_ne_bytes());
        b
    }

    /// Parse a map value; `None` if it is not 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != FLOW_VAL_LEN {
            return None;
        }
        Some(FlowVal {
            owner: addr_at(b, 0)?,
            packets: u64::from_ne_bytes(b[16..24].try_into().ok()?),
            bytes: u64::from_ne_bytes(b[24..32].try_into().ok()?),
        })
    }
}

/// Key of the steering program's `held_flows` map (`struct hold_key`): one TCP connection as
/// the local socket sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HoldKey {
    /// The local (socket's own) address: the held packets' destination.
    pub local: Ipv6Addr,
    /// The peer's address: the held packets' source.
    pub remote: Ipv6Addr,
    /// Local port.
    pub lport: u16,
    /// Peer port.
    pub rport: u16,
}

/// Size of `struct hold_key`.
pub const HOLD_KEY_LEN: usize = 36;

impl HoldKey {
    /// The 36-byte map key.
    pub fn to_bytes(&self) -> [u8; HOLD_KEY_LEN] {
        let mut b = [0u8; HOLD_KEY_LEN];
        b[..16].copy_from_slice(&self.local.octets());
        b[16..32].copy_from_slice(&self.remote.octets());
        b[32..34].copy_from_slice(&self.lport.to_be_bytes());
        b[34..36].copy_from_slice(&self.rport.to_be_bytes());
        b
    }

    /// Parse a map key (or the start of a `hold_ring` record); `None` if shorter than 36 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..HOLD_KEY_LEN)?;
        Some(HoldKey {
            local: addr_at(b, 0)?,
            remote: addr_at(b, 16)?,
            lport: u16::from_be_bytes([b[32], b[33]]),
            rport: u16::from_be_bytes([b[34], b[35]]),
        })
    }
}

/// Value of `held_flows` (`struct hold_val`): what the program did with a held flow's packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HoldVal {
    /// Packets copied to the ring buffer (and dropped).
    pub packets: u64,
    /// Their bytes (IPv6 packets).
    pub bytes: u64,
    /// Packets dropped without a copy (ring buffer full, or above [`HOLD_MAX_PKT`]).
    pub lost: u64,
}

/// Size of `struct hold_val`.
pub const HOLD_VAL_LEN: usize = 24;

impl HoldVal {
    /// Parse a map value; `None` if it is not 24 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != HOLD_VAL_LEN {
            return None;
        }
        let at = |o: usize| b[o..o + 8].try_into().ok().map(u64::from_ne_bytes);
        Some(HoldVal {
            packets: at(0)?,
            bytes: at(8)?,
            lost: at(16)?,
        })
    }
}

/// Size of `struct hold_rec`, the header of a `hold_ring` record (key, then the packet length
/// as a native-endian u32); the packet follows.
pub const HOLD_REC_LEN: usize = 40;

/// Largest packet a hold copies (`HOLD_MAX_PKT`); longer ones are dropped and counted lost.
pub const HOLD_MAX_PKT: usize = 9216;

/// How the tunnel program sends encapsulated packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    /// `bpf_fib_lookup` on the outer destination: `XDP_TX` when the next hop is out of the
    /// receiving interface, `XDP_REDIRECT` otherwise.
    Fib,
    /// `XDP_TX` to one fixed next-hop MAC address (a router towards all nodes).
    Gateway([u8; 6]),
}

/// The tunnel program's configuration (`struct tunnel_cfg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TunnelConfig {
    /// Outer source address: the home agent's own address.
    pub local: Ipv6Addr,
    /// Forwarding mode.
    pub mode: TunnelMode,
    /// Outer hop limit (RFC 2473 §6.3 tunnel hop limit).
    pub hop_limit: u8,
    /// Link MTU: an encapsulated packet above it is dropped (counted).
    pub mtu: u16,
    /// Create a flow entry when a packet falls back to the binding.
    pub learn: bool,
}

/// Size of `struct tunnel_cfg`.
pub const TUNNEL_CFG_LEN: usize = 32;

impl TunnelConfig {
    /// The 32-byte map value.
    pub fn to_bytes(&self) -> [u8; TUNNEL_CFG_LEN] {
        let mut b = [0u8; TUNNEL_CFG_LEN];
        b[..16].copy_from_slice(&self.local.octets());
        match self.mode {
            TunnelMode::Fib => b[22] = 0,
            TunnelMode::Gateway(mac) => {
                b[16..22].copy_from_slice(&mac);
                b[22] = 1;
            }
        }
        b[23] = self.hop_limit;
        b[24..26].copy_from_slice(&self.mtu.to_ne_bytes());
        b[26] = u8::from(self.learn);
        b
    }

    /// Parse a map value; `None` if it is not 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != TUNNEL_CFG_LEN {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[16..22]);
        Some(TunnelConfig {
            local: addr_at(b, 0)?,
            mode: if b[22] == 1 {
                TunnelMode::Gateway(mac)
            } else {
                TunnelMode::Fib
            },
            hop_limit: b[23],
            mtu: u16::from_ne_bytes([b[24], b[25]]),
            learn: b[26] != 0,
        })
    }
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            local: Ipv6Addr::UNSPECIFIED,
            mode: TunnelMode::Fib,
            hop_limit: 64,
            mtu: 1500,
            learn: true,
        }
    }
}

/// Read an IPv6 address at `off`.
pub(crate) fn addr_at(b: &[u8], off: usize) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(off..off + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// Names of the steering program's counters, in `enum steer_counter` order.
pub const STEER_COUNTERS: &[&str] = &[
    "xsk",
    "pass_not_ipv6",
    "pass_not_local",
    "pass_proto",
    "pass_kernel",
    "pass_no_socket",
    "drop_malformed",
    "drop_decap_foreign",
    "drop_error",
    "held",
    "drop_hold_lost",
    "decap",
];

/// Index of a steering counter.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SteerCounter {
    Xsk = 0,
    PassNotIpv6,
    PassNotLocal,
    PassProto,
    PassKernel,
    PassNoSocket,
    DropMalformed,
    DropDecapForeign,
    DropError,
    Held,
    DropHoldLost,
    Decap,
}

/// Names of the tunnel program's counters, in `enum tunnel_counter` order.
pub const TUNNEL_COUNTERS: &[&str] = &[
    "flow_hit",
    "binding",
    "icmp_error",
    "pass_not_ipv6",
    "pass_no_binding",
    "pass_hop_limit",
    "pass_no_neigh",
    "drop_malformed",
    "drop_too_big",
    "drop_no_route",
    "drop_error",
    "ptb",
    "flow_learned",
    "tx",
    "redirect",
    "not_learned",
];

/// Index of a tunnel counter.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum TunnelCounter {
    FlowHit = 0,
    Binding,
    IcmpError,
    PassNotIpv6,
    PassNoBinding,
    PassHopLimit,
    PassNoNeigh,
    DropMalformed,
    DropTooBig,
    DropNoRoute,
    DropError,
    Ptb,
    FlowLearned,
    Tx,
    Redirect,
    NotLearned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_key_roundtrip() {
        let k = FlowKey {
            src: "fd00::1".parse().expect("addr"),
            dst: "fd00::2".parse().expect("addr"),
            sport: 40000,
            dport: 80,
            proto: 6,
        };
        let b = k.to_bytes();
        assert_eq!(&b[32..34], &40000u16.to_be_bytes());
        assert_eq!(FlowKey::from_bytes(&b), Some(k));
        assert_eq!(FlowKey::from_bytes(&b[..39]), None);
    }

    #[test]
    fn config_roundtrip() {
        let c = TunnelConfig {
            local: "fd00::9".parse().expect("addr"),
            mode: TunnelMode::Gateway([2, 0, 0, 0, 0, 1]),
            hop_limit: 33,
            mtu: 1600,
            learn: false,
        };
        assert_eq!(TunnelConfig::from_bytes(&c.to_bytes()), Some(c));
        let v = FlowVal {
            owner: "fd00::3".parse().expect("addr"),
            packets: 5,
            bytes: 900,
        };
        assert_eq!(FlowVal::from_bytes(&v.to_bytes()), Some(v));
        let l = LocalAddr {
            protos: PROTO_TCP,
            action: Action::Pass,
        };
        assert_eq!(LocalAddr::from_bytes(&l.to_bytes()), Some(l));
    }

    #[test]
    fn hold_key_roundtrip() {
        let k = HoldKey {
            local: "fd00::80".parse().expect("addr"),
            remote: "fd00::1".parse().expect("addr"),
            lport: 80,
            rport: 40000,
        };
        let b = k.to_bytes();
        assert_eq!(&b[32..34], &80u16.to_be_bytes());
        assert_eq!(HoldKey::from_bytes(&b), Some(k));
        assert_eq!(HoldKey::from_bytes(&b[..35]), None);
        let mut v = [0u8; HOLD_VAL_LEN];
        v[8..16].copy_from_slice(&1500u64.to_ne_bytes());
        assert_eq!(
            HoldVal::from_bytes(&v),
            Some(HoldVal {
                packets: 0,
                bytes: 1500,
                lost: 0
            })
        );
    }

    #[test]
    fn counter_names_match_enums() {
        assert_eq!(STEER_COUNTERS[SteerCounter::Held as usize], "held");
        assert_eq!(STEER_COUNTERS[SteerCounter::Decap as usize], "decap");
        assert_eq!(STEER_COUNTERS.len(), SteerCounter::Decap as usize + 1);
        assert_eq!(
            TUNNEL_COUNTERS[TunnelCounter::Redirect as usize],
            "redirect"
        );
        assert_eq!(
            TUNNEL_COUNTERS[TunnelCounter::NotLearned as usize],
            "not_learned"
        );
        assert_eq!(
            TUNNEL_COUNTERS.len(),
            TunnelCounter::NotLearned as usize + 1
        );
    }
}
