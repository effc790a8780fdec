//! Whole IPv6 packets: builders for Mobility Header packets (with the Home Address option or a
//! type 2 routing header as RFC 6275 requires), insertion of RH2/HAO into data packets, IPv6-in-
//! IPv6 tunnelling (RFC 2473, used by the home agent, §10.4.2), and a small extension-header
//! walker.

use super::ext::{DestOptsRepr, HomeAddressOptions, Rh2Repr, Type2RoutingHeader};
use super::mh::MhRepr;
use super::{
    mh_checksum, Error, Result, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_IPV6, IPPROTO_MH,
    IPPROTO_ROUTING,
};
use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// Default hop limit of packets we build.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize, hop: u8) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    let pl = u16::try_from(payload_len).unwrap_or(u16::MAX);
    h[4..6].copy_from_slice(&pl.to_be_bytes());
    h[6] = next;
    h[7] = hop;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// Builds IPv6 packets carrying a Mobility Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketBuilder {
    /// IPv6 source address (the care-of address when `hao` is set).
    pub src: Ipv6Addr,
    /// IPv6 destination address (the care-of address when `rh2` is set).
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// Home Address option to add (§6.3): the mobile node's home address.
    pub hao: Option<Ipv6Addr>,
    /// Type 2 routing header to add (§6.4): the mobile node's home address.
    pub rh2: Option<Ipv6Addr>,
}

impl PacketBuilder {
    /// A plain packet from `src` to `dst`.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        PacketBuilder {
            src,
            dst,
            hop_limit: DEFAULT_HOP_LIMIT,
            hao: None,
            rh2: None,
        }
    }

    /// Add a Home Address option.
    pub fn with_hao(mut self, home: Ipv6Addr) -> Self {
        self.hao = Some(home);
        self
    }

    /// Add a type 2 routing header.
    pub fn with_rh2(mut self, home: Ipv6Addr) -> Self {
        self.rh2 = Some(home);
        self
    }

    /// Source address of the pseudo-header: the home address with an HAO (§6.3).
    pub fn effective_src(&self) -> Ipv6Addr {
        self.hao.unwrap_or(self.src)
    }

    /// Destination address of the pseudo-header: the final destination with an RH2.
    pub fn effective_dst(&self) -> Ipv6Addr {
        self.rh2.unwrap_or(self.dst)
    }

    /// A complete packet carrying `mh`, checksum filled for the effective addresses.
    pub fn mh(&self, mh: &MhRepr) -> Vec<u8> {
        self.mh_bytes(&mh.to_bytes(self.effective_src(), self.effective_dst()))
    }

    /// A complete packet around an already encoded (and checksummed) Mobility Header.
    pub fn mh_bytes(&self, mh: &[u8]) -> Vec<u8> {
        self.payload(IPPROTO_MH, mh)
    }

    /// A complete packet around any upper-layer payload. Header order per RFC 8200 §4.1 and
    /// RFC 6275 §6.3: IPv6, routing header, destination options (HAO), payload.
    pub fn payload(&self, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut next = proto;
        if let Some(home) = self.hao {
            let mut v = DestOptsRepr {
                next_header: next,
                home,
            }
            .emit()
            .to_vec();
            v.extend_from_slice(&ext);
            ext = v;
            next = IPPROTO_DSTOPTS;
        }
        if let Some(home) = self.rh2 {
            let mut v = Rh2Repr {
                next_header: next,
                segments_left: 1,
                home,
            }
            .emit()
            .to_vec();
            v.extend_from_slice(&ext);
            ext = v;
            next = IPPROTO_ROUTING;
        }
        let mut out = Vec::with_capacity(IPV6_HEADER_LEN + ext.len() + payload.len());
        out.extend_from_slice(&ipv6_header(
            self.src,
            self.dst,
            next,
            ext.len() + payload.len(),
            self.hop_limit,
        ));
        out.extend_from_slice(&ext);
        out.extend_from_slice(payload);
        out
    }
}

/// What [`ParsedIpv6::parse`] found in a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedIpv6 {
    /// IPv6 source address.
    pub src: Ipv6Addr,
    /// IPv6 destination address.
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// Home Address option, if any.
    pub hao: Option<Ipv6Addr>,
    /// Type 2 routing header home address, if any.
    pub rh2: Option<Ipv6Addr>,
    /// Upper-layer protocol (or 44 when a fragment header stops the walk).
    pub upper_proto: u8,
    /// Offset of the upper-layer header.
    pub upper_offset: usize,
    /// Offset of the octet holding the next-header value `upper_proto` (for rewriting).
    pub next_header_at: usize,
    /// End of the packet according to Payload Length.
    pub end: usize,
}

impl ParsedIpv6 {
    /// Walk the IPv6 header and its extension headers (hop-by-hop, routing, destination
    /// options) up to the upper layer or a fragment header.
    pub fn parse(p: &[u8]) -> Result<Self> {
        if p.len() < IPV6_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p[0] >> 4 != 6 {
            return Err(Error::Malformed("not IPv6"));
        }
        let end = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([p[4], p[5]]));
        if end > p.len() {
            return Err(Error::Truncated);
        }
        let p = &p[..end];
        let src = super::addr(p, 8)?;
        let dst = super::addr(p, 24)?;
        let mut next = p[6];
        let mut next_at = 6;
        let mut pos = IPV6_HEADER_LEN;
        let mut hao = HomeAddressOptions::default();
        let mut rh2 = None;
        // Stops at the upper layer or a fragment header (44).
        while matches!(next, IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING) {
            let h = p.get(pos..).ok_or(Error::Truncated)?;
            if h.len() < 8 {
                return Err(Error::Truncated);
            }
            let len = (usize::from(h[1]) + 1) * 8;
            if h.len() < len {
                return Err(Error::Truncated);
            }
            if next == IPPROTO_DSTOPTS {
                DestOptsRepr::parse_into(&h[..len], &mut hao)?;
            } else if next == IPPROTO_ROUTING && h[2] == 2 {
                let r = Type2RoutingHeader::new_checked(&h[..len])?;
                if rh2.replace(r.home_address()).is_some() {
                    return Err(Error::Malformed("two type 2 routing headers"));
                }
            }
            next_at = pos;
            next = h[0];
            pos += len;
        }
        Ok(ParsedIpv6 {
            src,
            dst,
            hop_limit: p[7],
            hao: hao.home(),
            rh2,
            upper_proto: next,
            upper_offset: pos,
            next_header_at: next_at,
            end,
        })
    }

    /// Source as upper layers see it: the home address when an HAO is present (§9.3.1).
    pub fn effective_src(&self) -> Ipv6Addr {
        self.hao.unwrap_or(self.src)
    }

    /// Destination as upper layers see it: the home address when an RH2 is present.
    pub fn effective_dst(&self) -> Ipv6Addr {
        self.rh2.unwrap_or(self.dst)
    }

    /// The upper-layer bytes of `packet`.
    pub fn upper<'a>(&self, packet: &'a [u8]) -> &'a [u8] {
        packet.get(self.upper_offset..self.end).unwrap_or(&[])
    }
}

/// Offset after the IPv6 header and a hop-by-hop header, if any; and where the next-header
/// octet to patch lives.
fn after_hbh(p: &[u8]) -> Result<(usize, usize)> {
    if p[6] == IPPROTO_HOPOPTS {
        let len = (usize::from(*p.get(41).ok_or(Error::Truncated)?) + 1) * 8;
        if p.len() < IPV6_HEADER_LEN + len {
            return Err(Error::Truncated);
        }
        Ok((IPV6_HEADER_LEN + len, IPV6_HEADER_LEN))
    } else {
        Ok((IPV6_HEADER_LEN, 6))
    }
}

fn bump_payload_len(p: &mut [u8], by: usize) -> Result<()> {
    let pl = usize::from(u16::from_be_bytes([p[4], p[5]])) + by;
    let pl = u16::try_from(pl).map_err(|_| Error::Malformed("packet too long"))?;
    p[4..6].copy_from_slice(&pl.to_be_bytes());
    Ok(())
}

/// Route-optimised sending to a mobile node (RFC 6275 §9.3.2): `packet` is addressed to the
/// home address; the result goes to `care_of` with a type 2 routing header carrying the home
/// address. Upper-layer checksums stay valid (their pseudo-header uses the final destination,
/// the home address). Fails if the packet already has a routing header.
pub fn insert_rh2(packet: &[u8], care_of: Ipv6Addr) -> Result<Vec<u8>> {
    let parsed = ParsedIpv6::parse(packet)?;
    if parsed.rh2.is_some() || packet_has(packet, IPPROTO_ROUTING)? {
        return Err(Error::Malformed("packet already has a routing header"));
    }
    let packet = &packet[..parsed.end];
    let (at, nh_at) = after_hbh(packet)?;
    let home = parsed.dst;
    let rh = Rh2Repr {
        next_header: packet[nh_at],
        segments_left: 1,
        home,
    }
    .emit();
    let mut out = Vec::with_capacity(packet.len() + rh.len());
    out.extend_from_slice(&packet[..at]);
    out.extend_from_slice(&rh);
    out.extend_from_slice(&packet[at..]);
    out[nh_at] = IPPROTO_ROUTING;
    out[24..40].copy_from_slice(&care_of.octets());
    bump_payload_len(&mut out, rh.len())?;
    Ok(out)
}

/// Mobile-node sending with a Home Address option (RFC 6275 §11.3.1): `packet` has the home
/// address as source; the result has `care_of` as source and a Destination Options header
/// with the HAO (after hop-by-hop and routing headers, §6.3). Fails if the packet already has
/// a destination options header.
pub fn insert_hao(packet: &[u8], care_of: Ipv6Addr) -> Result<Vec<u8>> {
    let parsed = ParsedIpv6::parse(packet)?;
    if packet_has(packet, IPPROTO_DSTOPTS)? {
        return Err(Error::Malformed("packet already has destination options"));
    }
    let packet = &packet[..parsed.end];
    // Insert right before the upper layer (or the fragment header).
    let at = parsed.upper_offset;
    let nh_at = parsed.next_header_at;
    let d = DestOptsRepr {
        next_header: packet[nh_at],
        home: parsed.src,
    }
    .emit();
    let mut out = Vec::with_capacity(packet.len() + d.len());
    out.extend_from_slice(&packet[..at]);
    out.extend_from_slice(&d);
    out.extend_from_slice(&packet[at..]);
    out[nh_at] = IPPROTO_DSTOPTS;
    out[8..24].copy_from_slice(&care_of.octets());
    bump_payload_len(&mut out, d.len())?;
    Ok(out)
}

fn packet_has(packet: &[u8], proto: u8) -> Result<bool> {
    let mut next = packet[6];
    let mut pos = IPV6_HEADER_LEN;
    while matches!(next, IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING) {
        if next == proto {
            return Ok(true);
        }
        let len = (usize::from(*packet.get(pos + 1).ok_or(Error::Truncated)?) + 1) * 8;
        next = *packet.get(pos).ok_or(Error::Truncated)?;
        pos += len;
    }
    Ok(next == proto)
}

/// IPv6-in-IPv6 encapsulation (RFC 2473 §3), as the home agent tunnels intercepted packets to
/// the care-of address (RFC 6275 §10.4.2) and the mobile node reverse-tunnels (§11.3.1).
pub fn encapsulate(outer_src: Ipv6Addr, outer_dst: Ipv6Addr, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IPV6_HEADER_LEN + inner.len());
    encapsulate_into(outer_src, outer_dst, inner, &mut out);
    out
}

/// [`encapsulate`] into `out` (cleared first), for a caller that reuses one buffer per packet
/// instead of allocating one.
pub fn encapsulate_into(outer_src: Ipv6Addr, outer_dst: Ipv6Addr, inner: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&ipv6_header(
        outer_src,
        outer_dst,
        IPPROTO_IPV6,
        inner.len(),
        DEFAULT_HOP_LIMIT,
    ));
    out.extend_from_slice(inner);
}

/// Split an IPv6-in-IPv6 packet into (outer source, outer destination, inner packet).
pub fn decapsulate(packet: &[u8]) -> Result<(Ipv6Addr, Ipv6Addr, &[u8])> {
    let p = ParsedIpv6::parse(packet)?;
    if p.upper_proto != IPPROTO_IPV6 {
        return Err(Error::Malformed("not IPv6-in-IPv6"));
    }
    let inner = p.upper(packet);
    ParsedIpv6::parse(inner)?;
    Ok((p.src, p.dst, inner))
}

/// Verify the Mobility Header checksum of a whole packet (effective addresses).
pub fn verify_mh_packet(packet: &[u8]) -> Result<()> {
    let p = ParsedIpv6::parse(packet)?;
    if p.upper_proto != IPPROTO_MH {
        return Err(Error::Malformed("not a mobility header packet"));
    }
    if mh_checksum(p.effective_src(), p.effective_dst(), p.upper(packet)) != 0 {
        return Err(Error::Checksum);
    }
    Ok(())
}
