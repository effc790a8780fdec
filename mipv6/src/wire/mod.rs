//! Wire formats: zero-copy views over `&[u8]` plus owned representations (smoltcp style).
//!
//! Every parser returns an [`Error`] on malformed input and never panics; every `Repr` emits
//! exactly what its parser accepts (parse/emit symmetry, property-tested).

pub mod checksum;
pub mod ext;
pub mod mh;
pub mod option;
pub mod packet;

pub use ext::{DestOptsRepr, HomeAddressOptions, Rh2Repr, Type2RoutingHeader, HAO_OPTION_TYPE};
pub use mh::{BaStatus, BeStatus, BindingAck, BindingUpdate, MhMessage, MhPacket, MhRepr, MhType};
pub use option::{FlowIdOption, FlowSubOption, MobilityOption, OptionIter, PortSelector};
pub use packet::{PacketBuilder, ParsedIpv6};

use std::net::Ipv6Addr;

/// IPv6 next-header value of the Mobility Header (RFC 6275 §6.1).
pub const IPPROTO_MH: u8 = 135;
/// "No next header" (RFC 8200 §4.7); the MH Payload Proto field carries it (RFC 6275 §6.1.1).
pub const IPPROTO_NONE: u8 = 59;
/// Destination Options header (RFC 8200 §4.6).
pub const IPPROTO_DSTOPTS: u8 = 60;
/// Routing header (RFC 8200 §4.4).
pub const IPPROTO_ROUTING: u8 = 43;
/// Hop-by-Hop Options header (RFC 8200 §4.3).
pub const IPPROTO_HOPOPTS: u8 = 0;
/// Fragment header (RFC 8200 §4.5).
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6-in-IPv6 encapsulation (RFC 2473).
pub const IPPROTO_IPV6: u8 = 41;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMPv6 (RFC 4443).
pub const IPPROTO_ICMPV6: u8 = 58;

/// Errors of the wire parsers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the structure does.
    #[error("truncated")]
    Truncated,
    /// A field has a value the format does not allow.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The Mobility Header checksum does not verify (RFC 6275 §6.1.1, §9.2).
    #[error("bad checksum")]
    Checksum,
}

/// Result of the wire parsers.
pub type Result<T> = core::result::Result<T, Error>;

/// Upper-layer checksum over the IPv6 pseudo-header (RFC 8200 §8.1) with next header `proto`.
/// `data` must carry zero in its checksum field when computing, or the transmitted value when
/// verifying (then the result is 0 for a correct packet).
pub fn pseudo_checksum(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, data: &[u8]) -> u16 {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    !checksum::add(
        checksum::pseudo_header(&src, &dst, proto, len),
        checksum::sum(data),
    )
}

/// Mobility Header checksum (RFC 6275 §6.1.1): the pseudo-header uses next header 135 and the
/// packet's effective addresses: the home address when a Home Address option is present (§6.3:
/// the receiver swaps it into the source before upper-layer processing), and the final
/// destination when a type 2 routing header is present (RFC 8200 §8.1).
pub fn mh_checksum(src: Ipv6Addr, dst: Ipv6Addr, mh: &[u8]) -> u16 {
    pseudo_checksum(src, dst, IPPROTO_MH, mh)
}

pub(crate) fn be16(b: &[u8], at: usize) -> Result<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(Error::Truncated),
    }
}

pub(crate) fn be32(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => Err(Error::Truncated),
    }
}

pub(crate) fn be64(b: &[u8], at: usize) -> Result<u64> {
    match b.get(at..at + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_be_bytes(a))
        }
        None => Err(Error::Truncated),
    }
}

pub(crate) fn arr8(b: &[u8], at: usize) -> Result<[u8; 8]> {
    match b.get(at..at + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(a)
        }
        None => Err(Error::Truncated),
    }
}

pub(crate) fn addr(b: &[u8], at: usize) -> Result<Ipv6Addr> {
    match b.get(at..at + 16) {
        Some(s) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(s);
            Ok(Ipv6Addr::from(a))
        }
        None => Err(Error::Truncated),
    }
}
