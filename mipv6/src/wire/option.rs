//! Mobility options (RFC 6275 §6.2) and the options other RFCs add to the Mobility Header:
//! RFC 4285 authentication and replay protection, RFC 5648 Binding Identifier, RFC 6089 Flow
//! Identification.
//!
//! Options are TLVs (`type`, `length` of the data, data), except Pad1, a single zero octet
//! (§6.2.1). Alignment requirements ("xn+y", relative to the start of the Mobility Header,
//! which itself starts on an 8-octet boundary) are honoured by [`super::MhRepr::emit`], which
//! inserts Pad1/PadN as needed (§6.2).

use super::{addr, be16, be32, be64, Error, Result};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Option type values (IANA "Mobility Options" registry).
pub mod kind {
    /// Pad1 (RFC 6275 §6.2.2).
    pub const PAD1: u8 = 0;
    /// PadN (RFC 6275 §6.2.3).
    pub const PADN: u8 = 1;
    /// Binding Refresh Advice (RFC 6275 §6.2.4).
    pub const BINDING_REFRESH_ADVICE: u8 = 2;
    /// Alternate Care-of Address (RFC 6275 §6.2.5).
    pub const ALTERNATE_COA: u8 = 3;
    /// Nonce Indices (RFC 6275 §6.2.6).
    pub const NONCE_INDICES: u8 = 4;
    /// Binding Authorization Data (RFC 6275 §6.2.7).
    pub const BINDING_AUTH_DATA: u8 = 5;
    /// Mobility Message Authentication (RFC 4285 §5).
    pub const MESSAGE_AUTH: u8 = 9;
    /// Mobility Message Replay Protection (RFC 4285 §6).
    pub const REPLAY_PROTECTION: u8 = 10;
    /// Binding Identifier (RFC 5648 §6.1).
    pub const BINDING_ID: u8 = 35;
    /// Flow Summary (RFC 6089 §4.2.1).
    pub const FLOW_SUMMARY: u8 = 44;
    /// Flow Identification (RFC 6089 §4.2.2).
    pub const FLOW_ID: u8 = 45;
}

/// Length of the RR authenticator in the Binding Authorization Data option (RFC 6275 §5.2.6:
/// First(96, ...)).
pub const BAD_LEN: usize = 12;

/// RFC 4285 §5 subtype: MN-HA authentication.
pub const AUTH_SUBTYPE_MN_HA: u8 = 1;
/// RFC 4285 §5 subtype: MN-AAA authentication.
pub const AUTH_SUBTYPE_MN_AAA: u8 = 2;

/// RFC 5648 §6.1: the H flag of the Binding Identifier option (simultaneous home and foreign
/// binding).
pub const BID_FLAG_H: u8 = 0x80;

/// One mobility option, owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MobilityOption {
    /// Pad1: one octet of padding (RFC 6275 §6.2.2).
    Pad1,
    /// PadN with `n` octets of zero data, `n + 2` octets in all (RFC 6275 §6.2.3).
    PadN(u8),
    /// Binding Refresh Advice (RFC 6275 §6.2.4): refresh interval in units of 4 seconds.
    /// Alignment 2n.
    BindingRefreshAdvice(u16),
    /// Alternate Care-of Address (RFC 6275 §6.2.5). Alignment 8n+6.
    AlternateCareOf(Ipv6Addr),
    /// Nonce Indices (RFC 6275 §6.2.6). Alignment 2n.
    NonceIndices {
        /// Home nonce index (from the HoT).
        home: u16,
        /// Care-of nonce index (from the CoT).
        care_of: u16,
    },
    /// Binding Authorization Data (RFC 6275 §6.2.7): the 96-bit authenticator. It must be the
    /// last option; implicit alignment 8n+2.
    BindingAuthData([u8; BAD_LEN]),
    /// Mobility Message Authentication (RFC 4285 §5). Must be the last option; alignment 4n+1
    /// so that the SPI is 4-aligned.
    MessageAuth {
        /// 1 = MN-HA, 2 = MN-AAA.
        subtype: u8,
        /// Mobility SPI: selects the security association (key and algorithm).
        spi: u32,
        /// Authentication data (96 bits for HMAC_SHA1-96).
        auth: Vec<u8>,
    },
    /// Mobility Message Replay Protection (RFC 4285 §6): a 64-bit NTP-format timestamp.
    /// Emitted at 8n+2 (the timestamp then starts on a 4-octet boundary).
    ReplayProtection(u64),
    /// Binding Identifier (RFC 5648 §6.1). Alignment 2n.
    BindingId {
        /// Binding identifier.
        bid: u16,
        /// Status (meaningful in Binding Acknowledgements).
        status: u8,
        /// Flags octet: H ([`BID_FLAG_H`]) and reserved bits, kept as sent.
        flags: u8,
        /// Optional care-of address (IPv4 or IPv6) for this binding.
        care_of: Option<IpAddr>,
    },
    /// Flow Identification (RFC 6089 §4.2.2). Alignment 2n.
    FlowId(FlowIdOption),
    /// Flow Summary (RFC 6089 §4.2.1): the flow identifiers being refreshed. Alignment 2n.
    FlowSummary(Vec<u16>),
    /// Any other option, kept verbatim (unknown options are skipped by receivers, §6.2).
    Unknown {
        /// Option type.
        kind: u8,
        /// Option data.
        data: Vec<u8>,
    },
}

/// The RFC 6089 §4.2.2 Flow Identification option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowIdOption {
    /// Flow identifier, unique per home address/binding cache entry.
    pub fid: u16,
    /// Flow priority (lower value, higher priority).
    pub priority: u16,
    /// Reserved octet (RFC 6089 §4.2.2: zero on transmission, ignored on receipt); kept as
    /// sent for parse/emit symmetry.
    pub reserved: u8,
    /// Status (meaningful in Binding Acknowledgements; 0 = success).
    pub status: u8,
    /// Sub-options.
    pub suboptions: Vec<FlowSubOption>,
}

/// Flow Identification sub-options (RFC 6089 §4.2.2.1 ff., IANA registry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowSubOption {
    /// Pad (type 0): one octet.
    Pad,
    /// PadN (type 1) with `n` zero octets of data.
    PadN(u8),
    /// Binding Reference (type 2, RFC 6089 §4.2.2.2): the BIDs this flow is bound to.
    BindingReference(Vec<u16>),
    /// Traffic Selector (type 3, RFC 6089 §4.2.2.3): format (RFC 6088: 1 = IPv4 binary,
    /// 2 = IPv6 binary) and the selector bytes.
    TrafficSelector {
        /// TS format.
        format: u8,
        /// The selector (see [`PortSelector`] for the IPv6 binary subset we generate).
        selector: Vec<u8>,
    },
    /// Any other sub-option, verbatim.
    Unknown {
        /// Sub-option type.
        kind: u8,
        /// Sub-option data.
        data: Vec<u8>,
    },
}

/// A zero-copy walk over the options area of a Mobility Header. Yields `(type, data)`; Pad1
/// yields `(0, &[])`.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> OptionIter<'a> {
    /// Iterate over `buf`, which holds options only.
    pub fn new(buf: &'a [u8]) -> Self {
        OptionIter { buf, pos: 0 }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<(u8, &'a [u8])>;
    fn next(&mut self) -> Option<Self::Item> {
        let kind = *self.buf.get(self.pos)?;
        if kind == kind::PAD1 {
            self.pos += 1;
            return Some(Ok((kind, &[])));
        }
        let Some(&len) = self.buf.get(self.pos + 1) else {
            self.pos = self.buf.len();
            return Some(Err(Error::Truncated));
        };
        let start = self.pos + 2;
        let end = start + usize::from(len);
        match self.buf.get(start..end) {
            Some(data) => {
                self.pos = end;
                Some(Ok((kind, data)))
            }
            None => {
                self.pos = self.buf.len();
                Some(Err(Error::Truncated))
            }
        }
    }
}

/// The subset of the RFC 6088 §3.2 IPv6 binary traffic selector we generate: source and
/// destination port ranges (flags I, J, K, L) and optionally the next header (flags O, P).
/// Layout: 16-bit flags, then the present fields in flag order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSelector {
    /// Source port range (inclusive), as seen in packets from the mobile node.
    pub src_ports: (u16, u16),
    /// Destination port range (inclusive).
    pub dst_ports: (u16, u16),
    /// Transport protocol, if restricted.
    pub next_header: Option<u8>,
}

/// RFC 6088 traffic-selector format "IPv6 binary".
pub const TS_FORMAT_IPV6: u8 = 2;

// RFC 6088 §3.2 flag bits (A is the most significant).
const TS_A: u16 = 0x8000; // start source address
const TS_B: u16 = 0x4000;
const TS_C: u16 = 0x2000;
const TS_D: u16 = 0x1000;
const TS_E: u16 = 0x0800; // start SPI
const TS_F: u16 = 0x0400;
const TS_G: u16 = 0x0200; // start flow label
const TS_H: u16 = 0x0100;
const TS_I: u16 = 0x0080; // start source port
const TS_J: u16 = 0x0040;
const TS_K: u16 = 0x0020; // start destination port
const TS_L: u16 = 0x0010;
const TS_M: u16 = 0x0008; // start traffic class
const TS_N: u16 = 0x0004;
const TS_O: u16 = 0x0002; // start next header
const TS_P: u16 = 0x0001;

impl PortSelector {
    /// Selector for exactly one source and one destination port.
    pub fn exact(src_port: u16, dst_port: u16, next_header: Option<u8>) -> Self {
        PortSelector {
            src_ports: (src_port, src_port),
            dst_ports: (dst_port, dst_port),
            next_header,
        }
    }

    /// Whether a packet with these ports/protocol matches.
    pub fn matches(&self, src_port: u16, dst_port: u16, next_header: u8) -> bool {
        (self.src_ports.0..=self.src_ports.1).contains(&src_port)
            && (self.dst_ports.0..=self.dst_ports.1).contains(&dst_port)
            && self.next_header.is_none_or(|p| p == next_header)
    }

    /// The same selector seen from the other end (source and destination swapped).
    pub fn reversed(&self) -> Self {
        PortSelector {
            src_ports: self.dst_ports,
            dst_ports: self.src_ports,
            next_header: self.next_header,
        }
    }

    /// Encode as an RFC 6088 IPv6 binary selector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut flags = TS_I | TS_J | TS_K | TS_L;
        if self.next_header.is_some() {
            flags |= TS_O | TS_P;
        }
        let mut v = flags.to_be_bytes().to_vec();
        for p in [
            self.src_ports.0,
            self.src_ports.1,
            self.dst_ports.0,
            self.dst_ports.1,
        ] {
            v.extend_from_slice(&p.to_be_bytes());
        }
        if let Some(nh) = self.next_header {
            v.extend_from_slice(&[nh, nh]);
        }
        v
    }

    /// Decode an RFC 6088 IPv6 binary selector. Fields we do not model (addresses, SPI, flow
    /// label, traffic class) are skipped; a next-header range must be a single value.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let flags = be16(b, 0)?;
        let mut at = 2;
        for (bit, len) in [
            (TS_A, 16),
            (TS_B, 16),
            (TS_C, 16),
            (TS_D, 16),
            (TS_E, 4),
            (TS_F, 4),
            (TS_G, 4),
            (TS_H, 4),
        ] {
            if flags & bit != 0 {
                at += len;
            }
        }
        let mut port = |bit: u16, default: u16| -> Result<u16> {
            if flags & bit != 0 {
                let v = be16(b, at)?;
                at += 2;
                Ok(v)
            } else {
                Ok(default)
            }
        };
        let s0 = port(TS_I, 0)?;
        let s1 = port(TS_J, if flags & TS_I != 0 { s0 } else { u16::MAX })?;
        let d0 = port(TS_K, 0)?;
        let d1 = port(TS_L, if flags & TS_K != 0 { d0 } else { u16::MAX })?;
        for bit in [TS_M, TS_N] {
            if flags & bit != 0 {
                at += 1;
            }
        }
        let mut next_header = None;
        if flags & TS_O != 0 {
            let lo = *b.get(at).ok_or(Error::Truncated)?;
            at += 1;
            let hi = if flags & TS_P != 0 {
                let v = *b.get(at).ok_or(Error::Truncated)?;
                at += 1;
                v
            } else {
                lo
            };
            if lo != hi {
                return Err(Error::Malformed("next-header range"));
            }
            next_header = Some(lo);
        }
        if at > b.len() {
            return Err(Error::Truncated);
        }
        if s0 > s1 || d0 > d1 {
            return Err(Error::Malformed("port range"));
        }
        Ok(PortSelector {
            src_ports: (s0, s1),
            dst_ports: (d0, d1),
            next_header,
        })
    }
}

impl FlowIdOption {
    /// The BIDs of the Binding Reference sub-options.
    pub fn binding_refs(&self) -> Vec<u16> {
        self.suboptions
            .iter()
            .filter_map(|s| match s {
                FlowSubOption::BindingReference(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The first IPv6 port selector among the Traffic Selector sub-options, if any parses.
    pub fn port_selector(&self) -> Option<PortSelector> {
        self.suboptions.iter().find_map(|s| match s {
            FlowSubOption::TrafficSelector { format, selector } if *format == TS_FORMAT_IPV6 => {
                PortSelector::parse(selector).ok()
            }
            _ => None,
        })
    }

    fn parse(d: &[u8]) -> Result<Self> {
        let fid = be16(d, 0)?;
        let priority = be16(d, 2)?;
        let reserved = *d.get(4).ok_or(Error::Truncated)?;
        let status = *d.get(5).ok_or(Error::Truncated)?;
        let mut suboptions = Vec::new();
        let mut pos = 6;
        while pos < d.len() {
            let kind = d[pos];
            if kind == 0 {
                suboptions.push(FlowSubOption::Pad);
                pos += 1;
                continue;
            }
            let len = usize::from(*d.get(pos + 1).ok_or(Error::Truncated)?);
            let data = d.get(pos + 2..pos + 2 + len).ok_or(Error::Truncated)?;
            pos += 2 + len;
            suboptions.push(match kind {
                1 => {
                    if data.iter().any(|&b| b != 0) {
                        return Err(Error::Malformed("PadN sub-option data"));
                    }
                    FlowSubOption::PadN(len as u8)
                }
                2 => {
                    if data.is_empty() || data.len() & 1 == 1 {
                        return Err(Error::Malformed("BID reference length"));
                    }
                    FlowSubOption::BindingReference(
                        data.chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect(),
                    )
                }
                3 => {
                    if data.len() < 2 {
                        return Err(Error::Truncated);
                    }
                    FlowSubOption::TrafficSelector {
                        format: data[0],
                        selector: data[2..].to_vec(),
                    }
                }
                _ => FlowSubOption::Unknown {
                    kind,
                    data: data.to_vec(),
                },
            });
        }
        Ok(FlowIdOption {
            fid,
            priority,
            reserved,
            status,
            suboptions,
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fid.to_be_bytes());
        out.extend_from_slice(&self.priority.to_be_bytes());
        out.push(self.reserved);
        out.push(self.status);
        for s in &self.suboptions {
            match s {
                FlowSubOption::Pad => out.push(0),
                FlowSubOption::PadN(n) => {
                    out.extend_from_slice(&[1, *n]);
                    out.extend(std::iter::repeat_n(0, usize::from(*n)));
                }
                FlowSubOption::BindingReference(bids) => {
                    out.extend_from_slice(&[2, (bids.len() * 2) as u8]);
                    for b in bids {
                        out.extend_from_slice(&b.to_be_bytes());
                    }
                }
                FlowSubOption::TrafficSelector { format, selector } => {
                    out.extend_from_slice(&[3, (selector.len() + 2) as u8, *format, 0]);
                    out.extend_from_slice(selector);
                }
                FlowSubOption::Unknown { kind, data } => {
                    out.extend_from_slice(&[*kind, data.len() as u8]);
                    out.extend_from_slice(data);
                }
            }
        }
    }

    fn data_len(&self) -> usize {
        6 + self
            .suboptions
            .iter()
            .map(|s| match s {
                FlowSubOption::Pad => 1,
                FlowSubOption::PadN(n) => 2 + usize::from(*n),
                FlowSubOption::BindingReference(b) => 2 + 2 * b.len(),
                FlowSubOption::TrafficSelector { selector, .. } => 4 + selector.len(),
                FlowSubOption::Unknown { data, .. } => 2 + data.len(),
            })
            .sum::<usize>()
    }
}

impl MobilityOption {
    /// Parse one option from its type and data (as yielded by [`OptionIter`]).
    pub fn parse(kind: u8, d: &[u8]) -> Result<Self> {
        let exact = |n: usize| {
            if d.len() == n {
                Ok(())
            } else {
                Err(Error::Malformed("option length"))
            }
        };
        Ok(match kind {
            kind::PAD1 => MobilityOption::Pad1,
            kind::PADN => {
                // §6.2.3: the data is zero on transmission; receivers ignore it. We keep only
                // the length, so non-zero data is refused to keep parse/emit symmetric.
                if d.iter().any(|&b| b != 0) {
                    return Err(Error::Malformed("PadN data"));
                }
                MobilityOption::PadN(d.len() as u8)
            }
            kind::BINDING_REFRESH_ADVICE => {
                exact(2)?;
                MobilityOption::BindingRefreshAdvice(be16(d, 0)?)
            }
            kind::ALTERNATE_COA => {
                exact(16)?;
                MobilityOption::AlternateCareOf(addr(d, 0)?)
            }
            kind::NONCE_INDICES => {
                exact(4)?;
                MobilityOption::NonceIndices {
                    home: be16(d, 0)?,
                    care_of: be16(d, 2)?,
                }
            }
            kind::BINDING_AUTH_DATA => {
                exact(BAD_LEN)?;
                let mut a = [0u8; BAD_LEN];
                a.copy_from_slice(d);
                MobilityOption::BindingAuthData(a)
            }
            kind::MESSAGE_AUTH => {
                if d.len() < 5 {
                    return Err(Error::Malformed("auth option length"));
                }
                MobilityOption::MessageAuth {
                    subtype: d[0],
                    spi: be32(d, 1)?,
                    auth: d[5..].to_vec(),
                }
            }
            kind::REPLAY_PROTECTION => {
                exact(8)?;
                MobilityOption::ReplayProtection(be64(d, 0)?)
            }
            kind::BINDING_ID => {
                let care_of = match d.len() {
                    4 => None,
                    8 => Some(IpAddr::V4(Ipv4Addr::new(d[4], d[5], d[6], d[7]))),
                    20 => Some(IpAddr::V6(addr(d, 4)?)),
                    _ => return Err(Error::Malformed("BID option length")),
                };
                MobilityOption::BindingId {
                    bid: be16(d, 0)?,
                    status: d[2],
                    flags: d[3],
                    care_of,
                }
            }
            kind::FLOW_ID => MobilityOption::FlowId(FlowIdOption::parse(d)?),
            kind::FLOW_SUMMARY => {
                if d.is_empty() || d.len() & 1 == 1 {
                    return Err(Error::Malformed("flow summary length"));
                }
                MobilityOption::FlowSummary(
                    d.chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                )
            }
            _ => MobilityOption::Unknown {
                kind,
                data: d.to_vec(),
            },
        })
    }

    /// Option type value.
    pub fn kind(&self) -> u8 {
        match self {
            MobilityOption::Pad1 => kind::PAD1,
            MobilityOption::PadN(_) => kind::PADN,
            MobilityOption::BindingRefreshAdvice(_) => kind::BINDING_REFRESH_ADVICE,
            MobilityOption::AlternateCareOf(_) => kind::ALTERNATE_COA,
            MobilityOption::NonceIndices { .. } => kind::NONCE_INDICES,
            MobilityOption::BindingAuthData(_) => kind::BINDING_AUTH_DATA,
            MobilityOption::MessageAuth { .. } => kind::MESSAGE_AUTH,
            MobilityOption::ReplayProtection(_) => kind::REPLAY_PROTECTION,
            MobilityOption::BindingId { .. } => kind::BINDING_ID,
            MobilityOption::FlowId(_) => kind::FLOW_ID,
            MobilityOption::FlowSummary(_) => kind::FLOW_SUMMARY,
            MobilityOption::Unknown { kind, .. } => *kind,
        }
    }

    /// Alignment requirement `(x, y)` meaning "xn+y" from the start of the Mobility Header.
    pub fn alignment(&self) -> (usize, usize) {
        match self {
            MobilityOption::BindingRefreshAdvice(_)
            | MobilityOption::NonceIndices { .. }
            | MobilityOption::BindingId { .. }
            | MobilityOption::FlowId(_)
            | MobilityOption::FlowSummary(_) => (2, 0),
            MobilityOption::AlternateCareOf(_) => (8, 6),
            MobilityOption::BindingAuthData(_) | MobilityOption::ReplayProtection(_) => (8, 2),
            MobilityOption::MessageAuth { .. } => (4, 1),
            _ => (1, 0),
        }
    }

    /// Length of the option data (without type and length octets); see
    /// [`MobilityOption::is_encodable`] for the 255-octet limit.
    fn data_len(&self) -> usize {
        match self {
            MobilityOption::Pad1 => 0,
            MobilityOption::PadN(n) => usize::from(*n),
            MobilityOption::BindingRefreshAdvice(_) => 2,
            MobilityOption::AlternateCareOf(_) => 16,
            MobilityOption::NonceIndices { .. } => 4,
            MobilityOption::BindingAuthData(_) => BAD_LEN,
            MobilityOption::MessageAuth { auth, .. } => 5 + auth.len(),
            MobilityOption::ReplayProtection(_) => 8,
            MobilityOption::BindingId { care_of, .. } => match care_of {
                None => 4,
                Some(IpAddr::V4(_)) => 8,
                Some(IpAddr::V6(_)) => 20,
            },
            MobilityOption::FlowId(f) => f.data_len(),
            MobilityOption::FlowSummary(f) => 2 * f.len(),
            MobilityOption::Unknown { data, .. } => data.len(),
        }
    }

    /// Total encoded length in octets (Pad1 is 1, every other option 2 + data).
    pub fn wire_len(&self) -> usize {
        match self {
            MobilityOption::Pad1 => 1,
            _ => 2 + self.data_len(),
        }
    }

    /// Whether the option can be encoded: its data fits the 8-bit length field, sub-options
    /// fit theirs, and an `Unknown` option does not use a type this module parses (which
    /// would not parse back to `Unknown`).
    pub fn is_encodable(&self) -> bool {
        self.data_len() <= 255
            && match self {
                MobilityOption::FlowId(f) => f.suboptions.iter().all(|s| match s {
                    FlowSubOption::BindingReference(b) => !b.is_empty() && b.len() <= 127,
                    FlowSubOption::TrafficSelector { selector, .. } => selector.len() <= 253,
                    FlowSubOption::Unknown { kind, data } => *kind > 1 && data.len() <= 255,
                    _ => true,
                }),
                MobilityOption::FlowSummary(f) => !f.is_empty(),
                MobilityOption::Unknown { kind, .. } => {
                    !matches!(*kind, kind::PAD1 | kind::PADN) && known_kind(*kind).is_none()
                }
                _ => true,
            }
    }

    /// Append the encoded option to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        if let MobilityOption::Pad1 = self {
            out.push(0);
            return;
        }
        out.push(self.kind());
        out.push(self.data_len().min(255) as u8);
        match self {
            MobilityOption::Pad1 => {}
            MobilityOption::PadN(n) => out.extend(std::iter::repeat_n(0, usize::from(*n))),
            MobilityOption::BindingRefreshAdvice(v) => out.extend_from_slice(&v.to_be_bytes()),
            MobilityOption::AlternateCareOf(a) => out.extend_from_slice(&a.octets()),
            MobilityOption::NonceIndices { home, care_of } => {
                out.extend_from_slice(&home.to_be_bytes());
                out.extend_from_slice(&care_of.to_be_bytes());
            }
            MobilityOption::BindingAuthData(a) => out.extend_from_slice(a),
            MobilityOption::MessageAuth { subtype, spi, auth } => {
                out.push(*subtype);
                out.extend_from_slice(&spi.to_be_bytes());
                out.extend_from_slice(auth);
            }
            MobilityOption::ReplayProtection(t) => out.extend_from_slice(&t.to_be_bytes()),
            MobilityOption::BindingId {
                bid,
                status,
                flags,
                care_of,
            } => {
                out.extend_from_slice(&bid.to_be_bytes());
                out.push(*status);
                out.push(*flags);
                match care_of {
                    None => {}
                    Some(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
                    Some(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
                }
            }
            MobilityOption::FlowId(f) => f.emit(out),
            MobilityOption::FlowSummary(f) => {
                for x in f {
                    out.extend_from_slice(&x.to_be_bytes());
                }
            }
            MobilityOption::Unknown { data, .. } => out.extend_from_slice(data),
        }
    }
}

fn known_kind(k: u8) -> Option<()> {
    matches!(
        k,
        kind::BINDING_REFRESH_ADVICE
            | kind::ALTERNATE_COA
            | kind::NONCE_INDICES
            | kind::BINDING_AUTH_DATA
            | kind::MESSAGE_AUTH
            | kind::REPLAY_PROTECTION
            | kind::BINDING_ID
            | kind::FLOW_ID
            | kind::FLOW_SUMMARY
    )
    .then_some(())
}

/// Parse all options of `buf` (padding dropped).
pub fn parse_options(buf: &[u8]) -> Result<Vec<MobilityOption>> {
    let mut v = Vec::new();
    for item in OptionIter::new(buf) {
        let (k, d) = item?;
        match MobilityOption::parse(k, d)? {
            MobilityOption::Pad1 | MobilityOption::PadN(_) => {}
            o => v.push(o),
        }
    }
    Ok(v)
}

/// Emit padding so that `pos` (current offset from the MH start) becomes ≡ `y` (mod `x`).
pub(crate) fn pad_to(out: &mut Vec<u8>, pos: usize, (x, y): (usize, usize)) {
    let need = (y + x - pos % x) % x;
    match need {
        0 => {}
        1 => out.push(0),
        n => {
            out.push(kind::PADN);
            out.push((n - 2) as u8);
            out.extend(std::iter::repeat_n(0, n - 2));
        }
    }
}
