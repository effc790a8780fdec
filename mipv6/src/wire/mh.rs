//! The Mobility Header (RFC 6275 §6.1).
//!
//! ```text
//!  +---------------+---------------+---------------+---------------+
//!  | Payload Proto |  Header Len   |   MH Type     |   Reserved    |
//!  +---------------+---------------+---------------+---------------+
//!  |           Checksum            |                               |
//!  +-------------------------------+                               |
//!  .                         Message Data                          .
//! ```
//! Header Len counts 8-octet units after the first 8 octets (§6.1.1); the whole header is a
//! multiple of 8 octets. Message data is a fixed part per MH type followed by options (§6.2).

use super::option::{pad_to, parse_options, MobilityOption};
use super::{addr, arr8, be16, mh_checksum, Error, Result, IPPROTO_NONE};
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;

/// MH Type values (RFC 6275 §6.1.2–§6.1.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MhType {
    /// Binding Refresh Request (§6.1.2).
    BindingRefreshRequest = 0,
    /// Home Test Init (§6.1.3).
    HomeTestInit = 1,
    /// Care-of Test Init (§6.1.4).
    CareOfTestInit = 2,
    /// Home Test (§6.1.5).
    HomeTest = 3,
    /// Care-of Test (§6.1.6).
    CareOfTest = 4,
    /// Binding Update (§6.1.7).
    BindingUpdate = 5,
    /// Binding Acknowledgement (§6.1.8).
    BindingAck = 6,
    /// Binding Error (§6.1.9).
    BindingError = 7,
}

impl MhType {
    /// The type for a wire value, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => MhType::BindingRefreshRequest,
            1 => MhType::HomeTestInit,
            2 => MhType::CareOfTestInit,
            3 => MhType::HomeTest,
            4 => MhType::CareOfTest,
            5 => MhType::BindingUpdate,
            6 => MhType::BindingAck,
            7 => MhType::BindingError,
            _ => return None,
        })
    }

    /// Length of the fixed part, from the start of the MH to the first option.
    pub fn fixed_len(self) -> usize {
        match self {
            MhType::BindingRefreshRequest => 8,
            MhType::HomeTestInit | MhType::CareOfTestInit => 16,
            MhType::HomeTest | MhType::CareOfTest => 24,
            MhType::BindingUpdate | MhType::BindingAck => 12,
            MhType::BindingError => 24,
        }
    }
}

/// Binding Acknowledgement status (RFC 6275 §6.1.8; values below 128 mean accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BaStatus(pub u8);

impl BaStatus {
    /// 0: Binding Update accepted.
    pub const ACCEPTED: BaStatus = BaStatus(0);
    /// 1: Accepted but prefix discovery necessary.
    pub const ACCEPTED_PREFIX_DISCOVERY: BaStatus = BaStatus(1);
    /// 128: Reason unspecified.
    pub const UNSPECIFIED: BaStatus = BaStatus(128);
    /// 129: Administratively prohibited.
    pub const PROHIBITED: BaStatus = BaStatus(129);
    /// 130: Insufficient resources.
    pub const INSUFFICIENT_RESOURCES: BaStatus = BaStatus(130);
    /// 131: Home registration not supported.
    pub const HOME_REG_NOT_SUPPORTED: BaStatus = BaStatus(131);
    /// 132: Not home subnet.
    pub const NOT_HOME_SUBNET: BaStatus = BaStatus(132);
    /// 133: Not home agent for this mobile node.
    pub const NOT_HOME_AGENT: BaStatus = BaStatus(133);
    /// 134: Duplicate Address Detection failed.
    pub const DAD_FAILED: BaStatus = BaStatus(134);
    /// 135: Sequence number out of window (the BA carries the last accepted number, §9.5.1).
    pub const SEQUENCE_OUT_OF_WINDOW: BaStatus = BaStatus(135);
    /// 136: Expired home nonce index.
    pub const EXPIRED_HOME_NONCE: BaStatus = BaStatus(136);
    /// 137: Expired care-of nonce index.
    pub const EXPIRED_CARE_OF_NONCE: BaStatus = BaStatus(137);
    /// 138: Expired nonces.
    pub const EXPIRED_NONCES: BaStatus = BaStatus(138);
    /// 139: Registration type change disallowed.
    pub const REG_TYPE_CHANGE: BaStatus = BaStatus(139);
    /// 144: MIPV6-ID-MISMATCH, replay-protection timestamp out of window (RFC 4285 §6, §9).
    pub const ID_MISMATCH: BaStatus = BaStatus(144);
    /// 145: MIPV6-MESG-ID-REQD, replay-protection option missing (RFC 4285 §9).
    pub const MESG_ID_REQUIRED: BaStatus = BaStatus(145);
    /// 146: MIPV6-AUTH-FAIL, authentication option missing or wrong (RFC 4285 §9).
    pub const AUTH_FAIL: BaStatus = BaStatus(146);
    /// 174: Invalid care-of address (RFC 6275 §6.1.8).
    pub const INVALID_COA: BaStatus = BaStatus(174);

    /// Whether the Binding Update was accepted (status < 128).
    pub fn is_accepted(self) -> bool {
        self.0 < 128
    }
}

/// Binding Error status (RFC 6275 §6.1.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BeStatus(pub u8);

impl BeStatus {
    /// 1: Unknown binding for Home Address destination option.
    pub const UNKNOWN_BINDING: BeStatus = BeStatus(1);
    /// 2: Unrecognized MH Type value.
    pub const UNKNOWN_MH_TYPE: BeStatus = BeStatus(2);
}

/// Binding Update fields (RFC 6275 §6.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingUpdate {
    /// Sequence number (compared modulo 2^16, §9.5.1).
    pub sequence: u16,
    /// A: acknowledge requested.
    pub ack: bool,
    /// H: home registration.
    pub home_registration: bool,
    /// L: link-local address compatibility.
    pub link_local: bool,
    /// K: key management mobility capability.
    pub key_management: bool,
    /// The 12 bits after K (other RFCs' flags and reserved), kept as sent.
    pub other_flags: u16,
    /// Lifetime in 4-second units; 0 deletes the binding.
    pub lifetime: u16,
}

impl BindingUpdate {
    /// A Binding Update that asks for an acknowledgement (A set), with neither L nor K nor
    /// any other flag: what a mobile node sends (§11.7.1 home registration with `home_registration`,
    /// §11.7.2 to a correspondent without). `lifetime` is in 4-second units, 0 to deregister.
    pub fn acked(sequence: u16, home_registration: bool, lifetime: u16) -> Self {
        BindingUpdate {
            sequence,
            ack: true,
            home_registration,
            link_local: false,
            key_management: false,
            other_flags: 0,
            lifetime,
        }
    }
}

/// Binding Acknowledgement fields (RFC 6275 §6.1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingAck {
    /// Status.
    pub status: BaStatus,
    /// K: key management mobility capability.
    pub key_management: bool,
    /// The 7 bits after K, kept as sent.
    pub other_flags: u8,
    /// Sequence number copied from the BU (or the last accepted one with status 135).
    pub sequence: u16,
    /// Granted lifetime in 4-second units.
    pub lifetime: u16,
}

/// One Mobility Header message, owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MhMessage {
    /// Binding Refresh Request (§6.1.2).
    BindingRefreshRequest,
    /// Home Test Init (§6.1.3).
    HomeTestInit {
        /// Home init cookie.
        cookie: [u8; 8],
    },
    /// Care-of Test Init (§6.1.4).
    CareOfTestInit {
        /// Care-of init cookie.
        cookie: [u8; 8],
    },
    /// Home Test (§6.1.5).
    HomeTest {
        /// Home nonce index.
        nonce_index: u16,
        /// Home init cookie (copied from the HoTI).
        cookie: [u8; 8],
        /// Home keygen token.
        token: [u8; 8],
    },
    /// Care-of Test (§6.1.6).
    CareOfTest {
        /// Care-of nonce index.
        nonce_index: u16,
        /// Care-of init cookie (copied from the CoTI).
        cookie: [u8; 8],
        /// Care-of keygen token.
        token: [u8; 8],
    },
    /// Binding Update (§6.1.7).
    BindingUpdate(BindingUpdate),
    /// Binding Acknowledgement (§6.1.8).
    BindingAck(BindingAck),
    /// Binding Error (§6.1.9).
    BindingError {
        /// Status.
        status: BeStatus,
        /// The home address that was in the Home Address option.
        home: Ipv6Addr,
    },
    /// An MH type this implementation does not know (answered with Binding Error status 2).
    Unknown {
        /// MH type.
        mh_type: u8,
        /// Message data after the checksum (not interpreted).
        data: Vec<u8>,
    },
}

impl MhMessage {
    /// MH Type wire value.
    pub fn mh_type(&self) -> u8 {
        match self {
            MhMessage::BindingRefreshRequest => 0,
            MhMessage::HomeTestInit { .. } => 1,
            MhMessage::CareOfTestInit { .. } => 2,
            MhMessage::HomeTest { .. } => 3,
            MhMessage::CareOfTest { .. } => 4,
            MhMessage::BindingUpdate(_) => 5,
            MhMessage::BindingAck(_) => 6,
            MhMessage::BindingError { .. } => 7,
            MhMessage::Unknown { mh_type, .. } => *mh_type,
        }
    }
}

/// Zero-copy view of a Mobility Header.
#[derive(Debug, Clone)]
pub struct MhPacket<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    pub const PAYLOAD_PROTO: usize = 0;
    pub const HEADER_LEN: usize = 1;
    pub const MH_TYPE: usize = 2;
    pub const CHECKSUM: std::ops::Range<usize> = 4..6;
}

impl<T: AsRef<[u8]>> MhPacket<T> {
    /// Wrap without checks. The accessors index the buffer and panic on a short one: use
    /// [`MhPacket::new_checked`] for anything received.
    pub fn new_unchecked(buffer: T) -> Self {
        MhPacket { buffer }
    }

    /// Wrap and check that the buffer holds the whole header as announced by Header Len and
    /// that Header Len covers the fixed part of a known MH type (§9.2).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = MhPacket { buffer };
        p.check_len()?;
        Ok(p)
    }

    /// See [`MhPacket::new_checked`].
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < 8 {
            return Err(Error::Truncated);
        }
        let total = self.total_len();
        if b.len() < total {
            return Err(Error::Truncated);
        }
        if let Some(t) = MhType::from_u8(b[field::MH_TYPE]) {
            if total < t.fixed_len() {
                return Err(Error::Malformed(
                    "header length below the MH type's minimum",
                ));
            }
        }
        Ok(())
    }

    /// Payload Proto (should be 59, §6.1.1).
    pub fn payload_proto(&self) -> u8 {
        self.buffer.as_ref()[field::PAYLOAD_PROTO]
    }

    /// Header Len field (8-octet units after the first 8 octets).
    pub fn header_len(&self) -> u8 {
        self.buffer.as_ref()[field::HEADER_LEN]
    }

    /// Length of the whole Mobility Header in octets.
    pub fn total_len(&self) -> usize {
        (usize::from(self.header_len()) + 1) * 8
    }

    /// MH Type.
    pub fn mh_type(&self) -> u8 {
        self.buffer.as_ref()[field::MH_TYPE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }

    /// The Mobility Header bytes (exactly `total_len`).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// Message data: the octets after the checksum.
    pub fn message_data(&self) -> &[u8] {
        &self.bytes()[6..]
    }

    /// The options area of a known MH type.
    pub fn options(&self) -> &[u8] {
        let fixed = MhType::from_u8(self.mh_type()).map_or(6, MhType::fixed_len);
        &self.bytes()[fixed..]
    }

    /// Verify the checksum with the effective source/destination (see [`mh_checksum`]).
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        mh_checksum(src, dst, self.bytes()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MhPacket<T> {
    /// Compute and store the checksum (§6.1.1).
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let total = self.total_len();
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let c = mh_checksum(src, dst, &b[..total]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// An owned Mobility Header: message plus options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MhRepr {
    /// Payload Proto; 59 (no next header) for every message we send (§6.1.1).
    pub payload_proto: u8,
    /// The message.
    pub message: MhMessage,
    /// Mobility options in order, without padding (emit adds alignment padding).
    pub options: Vec<MobilityOption>,
}

impl MhRepr {
    /// A message with Payload Proto 59 and the given options.
    pub fn new(message: MhMessage, options: Vec<MobilityOption>) -> Self {
        MhRepr {
            payload_proto: IPPROTO_NONE,
            message,
            options,
        }
    }

    /// Parse a checked view. The checksum is not verified here (it needs the addresses: see
    /// [`MhPacket::verify_checksum`] or [`MhRepr::parse_verified`]).
    pub fn parse<T: AsRef<[u8]>>(p: &MhPacket<T>) -> Result<Self> {
        p.check_len()?;
        let b = p.bytes();
        let message = match MhType::from_u8(p.mh_type()) {
            Some(MhType::BindingRefreshRequest) => MhMessage::BindingRefreshRequest,
            Some(MhType::HomeTestInit) => MhMessage::HomeTestInit {
                cookie: arr8(b, 8)?,
            },
            Some(MhType::CareOfTestInit) => MhMessage::CareOfTestInit {
                cookie: arr8(b, 8)?,
            },
            Some(MhType::HomeTest) => MhMessage::HomeTest {
                nonce_index: be16(b, 6)?,
                cookie: arr8(b, 8)?,
                token: arr8(b, 16)?,
            },
            Some(MhType::CareOfTest) => MhMessage::CareOfTest {
                nonce_index: be16(b, 6)?,
                cookie: arr8(b, 8)?,
                token: arr8(b, 16)?,
            },
            Some(MhType::BindingUpdate) => {
                let flags = be16(b, 8)?;
                MhMessage::BindingUpdate(BindingUpdate {
                    sequence: be16(b, 6)?,
                    ack: flags & 0x8000 != 0,
                    home_registration: flags & 0x4000 != 0,
                    link_local: flags & 0x2000 != 0,
                    key_management: flags & 0x1000 != 0,
                    other_flags: flags & 0x0fff,
                    lifetime: be16(b, 10)?,
                })
            }
            Some(MhType::BindingAck) => MhMessage::BindingAck(BindingAck {
                status: BaStatus(b[6]),
                key_management: b[7] & 0x80 != 0,
                other_flags: b[7] & 0x7f,
                sequence: be16(b, 8)?,
                lifetime: be16(b, 10)?,
            }),
            Some(MhType::BindingError) => MhMessage::BindingError {
                status: BeStatus(b[6]),
                home: addr(b, 8)?,
            },
            None => {
                return Ok(MhRepr {
                    payload_proto: p.payload_proto(),
                    message: MhMessage::Unknown {
                        mh_type: p.mh_type(),
                        data: b[6..].to_vec(),
                    },
                    options: Vec::new(),
                })
            }
        };
        Ok(MhRepr {
            payload_proto: p.payload_proto(),
            message,
            options: parse_options(p.options())?,
        })
    }

    /// Parse `mh` after checking its length and checksum against the effective addresses.
    pub fn parse_verified(mh: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> Result<Self> {
        let p = MhPacket::new_checked(mh)?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Self::parse(&p)
    }

    /// Check that the message can be encoded: every option's data fits its 8-bit length
    /// field and the whole header fits the 8-bit Header Len (at most 2048 octets).
    pub fn validate(&self) -> Result<()> {
        if !self.options.iter().all(MobilityOption::is_encodable) {
            return Err(Error::Malformed("option too long to encode"));
        }
        let fixed = match &self.message {
            MhMessage::Unknown { data, .. } => 6 + data.len(),
            m => MhType::from_u8(m.mh_type()).map_or(6, MhType::fixed_len),
        };
        // Worst case 7 octets of padding per option and at the end.
        let opts: usize = self.options.iter().map(|o| o.wire_len() + 7).sum();
        if fixed + opts + 7 > 2048 {
            return Err(Error::Malformed("mobility header too long"));
        }
        Ok(())
    }

    /// Emit with a zero checksum. Call [`MhRepr::validate`] first on reprs built from
    /// untrusted parts; everything this crate builds is valid. Alignment padding is inserted before each option and at the
    /// end so that the header is a multiple of 8 octets (§6.1.1, §6.2). Options whose data
    /// exceed 255 octets are clamped; keep options encodable.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[self.payload_proto, 0, self.message.mh_type(), 0, 0, 0]);
        match &self.message {
            MhMessage::BindingRefreshRequest => out.extend_from_slice(&[0, 0]),
            MhMessage::HomeTestInit { cookie } | MhMessage::CareOfTestInit { cookie } => {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(cookie);
            }
            MhMessage::HomeTest {
                nonce_index,
                cookie,
                token,
            }
            | MhMessage::CareOfTest {
                nonce_index,
                cookie,
                token,
            } => {
                out.extend_from_slice(&nonce_index.to_be_bytes());
                out.extend_from_slice(cookie);
                out.extend_from_slice(token);
            }
            MhMessage::BindingUpdate(bu) => {
                let flags = (u16::from(bu.ack) << 15)
                    | (u16::from(bu.home_registration) << 14)
                    | (u16::from(bu.link_local) << 13)
                    | (u16::from(bu.key_management) << 12)
                    | (bu.other_flags & 0x0fff);
                out.extend_from_slice(&bu.sequence.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                out.extend_from_slice(&bu.lifetime.to_be_bytes());
            }
            MhMessage::BindingAck(ba) => {
                out.push(ba.status.0);
                out.push((u8::from(ba.key_management) << 7) | (ba.other_flags & 0x7f));
                out.extend_from_slice(&ba.sequence.to_be_bytes());
                out.extend_from_slice(&ba.lifetime.to_be_bytes());
            }
            MhMessage::BindingError { status, home } => {
                out.push(status.0);
                out.push(0);
                out.extend_from_slice(&home.octets());
            }
            MhMessage::Unknown { data, .. } => {
                out.extend_from_slice(data);
            }
        }
        if !matches!(self.message, MhMessage::Unknown { .. }) {
            for o in &self.options {
                let pos = out.len();
                pad_to(&mut out, pos, o.alignment());
                o.emit(&mut out);
            }
        }
        let pos = out.len();
        pad_to(&mut out, pos, (8, 0));
        debug_assert!(out.len() <= 2048, "validate() the repr before emitting");
        let units = (out.len() / 8).saturating_sub(1);
        out[1] = u8::try_from(units).unwrap_or(u8::MAX);
        out
    }

    /// Emit and fill the checksum for the effective addresses (see [`mh_checksum`]).
    pub fn to_bytes(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut v = self.emit();
        let c = mh_checksum(src, dst, &v);
        v[4..6].copy_from_slice(&c.to_be_bytes());
        v
    }

    /// The Binding Update, if this is one.
    pub fn binding_update(&self) -> Option<&BindingUpdate> {
        match &self.message {
            MhMessage::BindingUpdate(b) => Some(b),
            _ => None,
        }
    }

    /// The first option matching `f`.
    pub fn find_option<'a, R>(&'a self, f: impl Fn(&'a MobilityOption) -> Option<R>) -> Option<R> {
        self.options.iter().find_map(f)
    }
}
