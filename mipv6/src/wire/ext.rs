//! The Home Address destination option (RFC 6275 §6.3) and the type 2 routing header (§6.4).

use super::{addr, Error, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;

/// Option type of the Home Address option (§6.3): 201 = 0b11001001, "discard and send ICMP
/// Parameter Problem if unrecognized, even to multicast".
pub const HAO_OPTION_TYPE: u8 = 201;

/// The Home Address options of one IPv6 header chain, checked as RFC 6275 §6.3 requires:
/// option data of 16 octets (the home address), alignment 8n+6, and "for each IPv6 packet
/// header, the Home Address option MUST NOT appear more than once" (a packet tunnelled inside
/// another, RFC 2473, has a header chain, and so an option, of its own). Every parser of the
/// option in the workspace (this crate's [`DestOptsRepr`] and [`super::ParsedIpv6`], and the
/// stack's extension-header walk) goes through [`HomeAddressOptions::add`], so they agree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HomeAddressOptions {
    home: Option<Ipv6Addr>,
}

impl HomeAddressOptions {
    /// Length of the option data: the home address (§6.3).
    pub const DATA_LEN: usize = 16;

    /// A Home Address option whose Option Type octet sits `at` octets from the start of its
    /// Destination Options header, with option data `data`. Returns the home address, or an
    /// error for a malformed, misaligned or second option (the packet is then dropped).
    pub fn add(&mut self, at: usize, data: &[u8]) -> Result<Ipv6Addr> {
        if data.len() != Self::DATA_LEN {
            return Err(Error::Malformed("home address option length"));
        }
        // RFC 8200 §4.2 alignment xn+y: the Option Type at an integer multiple of x octets
        // from the start of the header, plus y; the Home Address option's is 8n+6.
        if at % 8 != 6 {
            return Err(Error::Malformed("home address option misaligned"));
        }
        if self.home.is_some() {
            return Err(Error::Malformed("two home address options"));
        }
        let home = addr(data, 0)?;
        self.home = Some(home);
        Ok(home)
    }

    /// The home address, if an option was seen.
    pub fn home(&self) -> Option<Ipv6Addr> {
        self.home
    }
}

/// A Destination Options header carrying one Home Address option (§6.3), emitted as
/// `next | 2 | PadN(2) | 201 | 16 | home` = 24 octets so that the option sits at 8n+6 as
/// §6.3 requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestOptsRepr {
    /// Next header after this extension header.
    pub next_header: u8,
    /// The mobile node's home address.
    pub home: Ipv6Addr,
}

impl DestOptsRepr {
    /// Encoded length.
    pub const LEN: usize = 24;

    /// Find the Home Address option in a Destination Options header (`buf` starts at the
    /// header). Returns the next header and the home address, if the option is present.
    /// Unknown options are skipped whatever their action bits: the caller (the stack) applies
    /// RFC 8200 §4.2 to them. The option's rules are [`HomeAddressOptions::add`]'s.
    pub fn parse(buf: &[u8]) -> Result<(u8, Option<Ipv6Addr>)> {
        let mut hao = HomeAddressOptions::default();
        let next = Self::parse_into(buf, &mut hao)?;
        Ok((next, hao.home()))
    }

    /// As [`Self::parse`], adding the option to the ones already seen in the packet (a packet
    /// may have two Destination Options headers, RFC 8200 §4.1; the option may still appear
    /// only once, RFC 6275 §6.3). Returns the next header.
    pub fn parse_into(buf: &[u8], hao: &mut HomeAddressOptions) -> Result<u8> {
        let next = *buf.first().ok_or(Error::Truncated)?;
        let len = (usize::from(*buf.get(1).ok_or(Error::Truncated)?) + 1) * 8;
        let opts = buf.get(2..len).ok_or(Error::Truncated)?;
        let mut pos = 0;
        while pos < opts.len() {
            let t = opts[pos];
            if t == 0 {
                pos += 1;
                continue;
            }
            let l = usize::from(*opts.get(pos + 1).ok_or(Error::Truncated)?);
            let data = opts.get(pos + 2..pos + 2 + l).ok_or(Error::Truncated)?;
            if t == HAO_OPTION_TYPE {
                hao.add(pos + 2, data)?;
            }
            pos += 2 + l;
        }
        Ok(next)
    }

    /// Emit the 24-octet header.
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.next_header;
        b[1] = 2;
        // One PadN of 4 octets puts the option at 8n+6 (§6.3); RFC 8200 §4.2: PadN, not
        // several Pad1s, for more than one octet of padding.
        b[2] = 1;
        b[3] = 2;
        b[6] = HAO_OPTION_TYPE;
        b[7] = 16;
        b[8..24].copy_from_slice(&self.home.octets());
        b
    }
}

/// Zero-copy view of a type 2 routing header (§6.4):
/// `next | hdr ext len = 2 | routing type = 2 | segments left = 1 | reserved(32) | home`.
#[derive(Debug, Clone)]
pub struct Type2RoutingHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Type2RoutingHeader<T> {
    /// Encoded length.
    pub const LEN: usize = 24;

    /// Wrap and validate (§6.4, §9.3.2 / §11.3.3: length 2, routing type 2, segments left 1
    /// or 0 after processing).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < Self::LEN {
            return Err(Error::Truncated);
        }
        if b[2] != 2 {
            return Err(Error::Malformed("routing type is not 2"));
        }
        if b[1] != 2 {
            return Err(Error::Malformed("type 2 routing header length"));
        }
        if b[3] > 1 {
            return Err(Error::Malformed("type 2 routing header segments left"));
        }
        Ok(Type2RoutingHeader { buffer })
    }

    /// Next header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Segments left.
    pub fn segments_left(&self) -> u8 {
        self.buffer.as_ref()[3]
    }

    /// The home address carried.
    pub fn home_address(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[8..24]);
        Ipv6Addr::from(a)
    }
}

/// An owned type 2 routing header (§6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rh2Repr {
    /// Next header.
    pub next_header: u8,
    /// Segments left: 1 on transmission.
    pub segments_left: u8,
    /// The home address.
    pub home: Ipv6Addr,
}

impl Rh2Repr {
    /// Encoded length.
    pub const LEN: usize = 24;

    /// Parse a checked view.
    pub fn parse<T: AsRef<[u8]>>(h: &Type2RoutingHeader<T>) -> Self {
        Rh2Repr {
            next_header: h.next_header(),
            segments_left: h.segments_left(),
            home: h.home_address(),
        }
    }

    /// Emit the 24-octet header.
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.next_header;
        b[1] = 2;
        b[2] = 2;
        b[3] = self.segments_left;
        b[8..24].copy_from_slice(&self.home.octets());
        b
    }
}
