//! The home agent (RFC 6275 §10) with home registrations authenticated per RFC 4285.
//!
//! - [`HomeAgent::on_mobility_header`]: home registration (§10.3.1): the Binding Update must
//!   carry a Mobility Message Replay Protection option (RFC 4285 §6) and, as its last option,
//!   an MN-HA Mobility Message Authentication option (RFC 4285 §5.1) whose SPI selects a
//!   configured security association bound to the home address. Status codes: 146
//!   MIPV6-AUTH-FAIL, 145 MIPV6-MESG-ID-REQD, 144 MIPV6-ID-MISMATCH (RFC 4285 §9), 135 for a
//!   stale sequence number (§10.3.1), 133 when the SA is not for this home address.
//! - interception and tunnelling as pure decisions: [`HomeAgent::care_of`] (whose care-of
//!   address a packet for a home address goes to), [`HomeAgent::tunnel`] (IPv6-in-IPv6 to it,
//!   §10.4.2), [`HomeAgent::reverse_tunnel`] (decapsulate what the mobile node tunnels back,
//!   §10.4.5) and [`HomeAgent::proxy_nd`] (defend the home address on the home link, §10.4.1).

use crate::common::MhMeta;
use crate::rr;
use crate::wire::option::AUTH_SUBTYPE_MN_HA;
use crate::wire::packet::{decapsulate, encapsulate_into, ParsedIpv6};
use crate::wire::{
    BaStatus, BindingAck, MhMessage, MhPacket, MhRepr, MobilityOption, PacketBuilder, IPPROTO_NONE,
};
use crate::{lifetime_to_units, seq_less, units_to_lifetime, Instant, Transmit};
use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

/// An MN-HA security association (RFC 4285 §5.1): SPI, shared key, and the home address it
/// may register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnHaSa {
    /// Mobility SPI.
    pub spi: u32,
    /// Shared key (HMAC-SHA1).
    pub key: Vec<u8>,
    /// The home address this SA authorises.
    pub home: Ipv6Addr,
}

/// Home agent configuration.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// Our address (destination of home registrations, source of BAs and tunnels).
    pub address: Ipv6Addr,
    /// Longest registration granted.
    pub max_lifetime: Duration,
    /// Accepted clock difference ("close enough") for replay-protection timestamps
    /// (RFC 4285 §5.1: default 7 s, should exceed 3 s).
    pub replay_window: Duration,
    /// Require the Mobility Message Replay Protection option (RFC 4285 §6). RFC 4285 §5.1
    /// also allows relying on sequence numbers alone; with `false` a BU without the option is
    /// accepted and only the sequence-number check guards against replays.
    pub require_timestamp: bool,
    /// Binding Acknowledgements with status 146 (MIPV6-AUTH-FAIL) sent a second, to all
    /// addresses together; further unauthenticated Binding Updates are discarded unanswered.
    /// Such a reply goes to whatever source the Binding Update claimed, before anything in it
    /// was proved: unbounded, a flood of forged ones with spoofed sources would make the home
    /// agent reflect as many (RFC 4285 §9 makes no demand on how many are answered).
    pub auth_fail_per_sec: u32,
}

impl HaConfig {
    /// Defaults: one hour registrations, 7 s replay window.
    pub fn new(address: Ipv6Addr) -> Self {
        HaConfig {
            address,
            max_lifetime: Duration::from_secs(3600),
            replay_window: Duration::from_secs(7),
            require_timestamp: true,
            auth_fail_per_sec: 100,
        }
    }
}

/// Configuration errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaError {
    /// Mobility SPIs 0–255 are reserved (RFC 4285 §5.1).
    #[error("mobility SPI {0} is reserved")]
    ReservedSpi(u32),
}

/// A home binding (§10.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeBinding {
    /// Care-of address.
    pub care_of: Ipv6Addr,
    /// Last accepted sequence number.
    pub sequence: u16,
    /// Expiry.
    pub expires: Instant,
}

/// What happened to a received Mobility Header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaEvent {
    /// Registered or refreshed.
    Registered {
        /// Home address.
        home: Ipv6Addr,
        /// Care-of address.
        care_of: Ipv6Addr,
        /// Granted lifetime.
        lifetime: Duration,
    },
    /// Deregistered (§10.3.2).
    Deregistered(Ipv6Addr),
    /// Refused with this BA status.
    Rejected(BaStatus),
    /// Silently discarded.
    Discarded(&'static str),
}

/// Result of [`HomeAgent::on_mobility_header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaOutput {
    /// Packets to send.
    pub transmit: Vec<Transmit>,
    /// What happened.
    pub event: HaEvent,
}

/// The home agent's state: security associations and the home binding cache.
#[derive(Debug, Clone)]
pub struct HomeAgent {
    config: HaConfig,
    sas: HashMap<u32, MnHaSa>,
    cache: HashMap<Ipv6Addr, HomeBinding>,
    last_timestamp: HashMap<u32, u64>,
    last_sequence: HashMap<Ipv6Addr, u16>,
    /// MIPV6-AUTH-FAIL replies of the current second ([`HaConfig::auth_fail_per_sec`]).
    auth_fails: crate::time::Budget,
}

fn ntp_diff(a: u64, b: u64) -> Duration {
    let d = a.abs_diff(b);
    Duration::from_secs(d >> 32) + Duration::from_nanos(((d & 0xffff_ffff) * 1_000_000_000) >> 32)
}

impl HomeAgent {
    /// A home agent.
    pub fn new(config: HaConfig) -> Self {
        HomeAgent {
            config,
            sas: HashMap::new(),
            cache: HashMap::new(),
            last_timestamp: HashMap::new(),
            last_sequence: HashMap::new(),
            auth_fails: crate::time::Budget::new(Instant::ZERO),
        }
    }

    /// Configure a security association. SPIs 0–255 are reserved (RFC 4285 §5.1) and
    /// refused.
    pub fn add_sa(&mut self, sa: MnHaSa) -> Result<(), HaError> {
        if sa.spi < 256 {
            return Err(HaError::ReservedSpi(sa.spi));
        }
        self.sas.insert(sa.spi, sa);
        Ok(())
    }

    /// The binding of `home`, if registered and alive.
    pub fn binding(&self, now: Instant, home: Ipv6Addr) -> Option<&HomeBinding> {
        self.cache.get(&home).filter(|b| now < b.expires)
    }

    /// Convenience: [`HomeAgent::on_mobility_header`] on a whole packet.
    pub fn on_packet(&mut self, now: Instant, wall: u64, packet: &[u8]) -> HaOutput {
        match MhMeta::from_packet(packet) {
            Ok((m, mh)) => self.on_mobility_header(now, wall, m, mh),
            Err(_) => HaOutput {
                transmit: vec![],
                event: HaEvent::Discarded("malformed packet"),
            },
        }
    }

    /// Process a Mobility Header sent to us. `wall` is our NTP time for RFC 4285 §6.
    pub fn on_mobility_header(
        &mut self,
        now: Instant,
        wall: u64,
        meta: MhMeta,
        mh: &[u8],
    ) -> HaOutput {
        let discard = |why| HaOutput {
            transmit: vec![],
            event: HaEvent::Discarded(why),
        };
        let Ok(p) = MhPacket::new_checked(mh) else {
            return discard("malformed mobility header");
        };
        if !p.verify_checksum(meta.effective_src(), meta.effective_dst()) {
            return discard("bad checksum");
        }
        if p.payload_proto() != IPPROTO_NONE {
            return discard("payload proto is not 59");
        }
        let Ok(repr) = MhRepr::parse(&p) else {
            return discard("malformed mobility message");
        };
        let Some(bu) = repr.binding_update().copied() else {
            return discard("not a binding update");
        };
        if !bu.home_registration {
            // We are not a correspondent node.
            return discard("binding update without H flag");
        }
        let home = meta.hao.unwrap_or(meta.src);
        let care_of = repr
            .find_option(|o| match o {
                MobilityOption::AlternateCareOf(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(meta.src);
        let local = meta.dst;
        let spi_key = repr.find_option(|o| match o {
            MobilityOption::MessageAuth { subtype, spi, .. } if *subtype == AUTH_SUBTYPE_MN_HA => {
                self.sas.get(spi).cloned()
            }
            _ => None,
        });
        let timestamp = repr.find_option(|o| match o {
            MobilityOption::ReplayProtection(t) => Some(*t),
            _ => None,
        });
        let reply =
            |status: BaStatus, seq: u16, lifetime: u16, sa: Option<&MnHaSa>, ts: Option<u64>| {
                let mut opts = Vec::new();
                if let Some(t) = ts {
                    opts.push(MobilityOption::ReplayProtection(t));
                }
                let mut r = MhRepr::new(
                    MhMessage::BindingAck(BindingAck {
                        status,
                        key_management: false,
                        other_flags: 0,
                        sequence: seq,
                        lifetime,
                    }),
                    opts,
                );
                if let Some(sa) = sa {
                    rr::sign_mn_ha(&mut r, sa.spi, &sa.key, care_of, home);
                }
                // §10.3.1: BA to the care-of address with a type 2 routing header.
                let mut b = PacketBuilder::new(local, meta.src);
                if meta.src != home {
                    b = b.with_rh2(home);
                }
                Transmit {
                    src: local,
                    dst: meta.src,
                    packet: b.mh(&r),
                }
            };
        let reject = |status: BaStatus, seq: u16, sa: Option<&MnHaSa>, ts: Option<u64>| HaOutput {
            transmit: vec![reply(status, seq, 0, sa, ts)],
            event: HaEvent::Rejected(status),
        };
        // RFC 4285 §5.1 / §9: authentication first. A failure is answered (the MN learns
        // why, RFC 4285 §9 MIPV6-AUTH-FAIL; unsigned: there is no key to sign with) within
        // the reply budget only.
        let auth_fails = &mut self.auth_fails;
        let mut auth_fail = |seq: u16| {
            if auth_fails.allow(now, self.config.auth_fail_per_sec, Duration::from_secs(1)) {
                reject(BaStatus::AUTH_FAIL, seq, None, None)
            } else {
                discard("authentication failed, over the reply budget")
            }
        };
        let Some(sa) = spi_key else {
            return auth_fail(bu.sequence);
        };
        if !rr::verify_mn_ha(p.bytes(), &sa.key, care_of, home) {
            return auth_fail(bu.sequence);
        }
        if sa.home != home {
            return reject(BaStatus::NOT_HOME_AGENT, bu.sequence, Some(&sa), timestamp);
        }
        // RFC 4285 §6: replay protection.
        if let Some(ts) = timestamp {
            let stale = self
                .last_timestamp
                .get(&sa.spi)
                .is_some_and(|&last| ts <= last);
            if stale || ntp_diff(ts, wall) > self.config.replay_window {
                // The BA carries our own time so the mobile node can correct its clock (§6).
                return reject(BaStatus::ID_MISMATCH, bu.sequence, Some(&sa), Some(wall));
            }
        } else if self.config.require_timestamp {
            return reject(BaStatus::MESG_ID_REQUIRED, bu.sequence, Some(&sa), None);
        }
        // §10.3.1: the sequence number must exceed the cached one (mod 2^16), else 135.
        // The last accepted number outlives the binding, so that a deregistration cannot be
        // followed by a replayed older registration.
        if let Some(&last) = self.last_sequence.get(&home) {
            if !seq_less(last, bu.sequence) {
                if let Some(ts) = timestamp {
                    self.last_timestamp.insert(sa.spi, ts);
                }
                return reject(BaStatus::SEQUENCE_OUT_OF_WINDOW, last, Some(&sa), timestamp);
            }
        }
        if let Some(ts) = timestamp {
            self.last_timestamp.insert(sa.spi, ts);
        }
        self.last_sequence.insert(home, bu.sequence);
        let ts = timestamp;
        if bu.lifetime == 0 || care_of == home {
            // §10.3.2: deregistration.
            self.cache.remove(&home);
            return HaOutput {
                transmit: vec![reply(BaStatus::ACCEPTED, bu.sequence, 0, Some(&sa), ts)],
                event: HaEvent::Deregistered(home),
            };
        }
        let units = bu.lifetime.min(lifetime_to_units(self.config.max_lifetime));
        let lifetime = units_to_lifetime(units);
        self.cache.insert(
            home,
            HomeBinding {
                care_of,
                sequence: bu.sequence,
                expires: now + lifetime,
            },
        );
        let transmit = if bu.ack {
            vec![reply(BaStatus::ACCEPTED, bu.sequence, units, Some(&sa), ts)]
        } else {
            vec![]
        };
        HaOutput {
            transmit,
            event: HaEvent::Registered {
                home,
                care_of,
                lifetime,
            },
        }
    }

    /// The care-of address packets for `dst` must be tunnelled to (§10.4.1), if `dst` is a
    /// registered home address.
    pub fn care_of(&self, now: Instant, dst: Ipv6Addr) -> Option<Ipv6Addr> {
        self.binding(now, dst).map(|b| b.care_of)
    }

    /// Whether to answer Neighbor Solicitations for `target` on the home link (proxy ND,
    /// §10.4.1).
    pub fn proxy_nd(&self, now: Instant, target: Ipv6Addr) -> bool {
        self.binding(now, target).is_some()
    }

    /// An intercepted packet (§10.4.1): if its destination is a registered home address, the
    /// IPv6-in-IPv6 packet to send to the care-of address (§10.4.2).
    pub fn tunnel(&self, now: Instant, packet: &[u8]) -> Option<Transmit> {
        let mut out = Vec::new();
        let coa = self.tunnel_into(now, packet, &mut out)?;
        Some(Transmit {
            src: self.config.address,
            dst: coa,
            packet: out,
        })
    }

    /// [`HomeAgent::tunnel`] into `out` (cleared first), reused from packet to packet: the
    /// care-of address it goes to, or `None` (and `out` untouched) when there is no binding.
    pub fn tunnel_into(&self, now: Instant, packet: &[u8], out: &mut Vec<u8>) -> Option<Ipv6Addr> {
        let p = ParsedIpv6::parse(packet).ok()?;
        let coa = self.care_of(now, p.dst)?;
        encapsulate_into(self.config.address, coa, &packet[..p.end], out);
        Some(coa)
    }

    /// A reverse-tunnelled packet (§10.4.5): accepted when the outer source is the registered
    /// care-of address of the inner source (a home address); returns the inner packet to
    /// forward.
    pub fn reverse_tunnel<'a>(&self, now: Instant, packet: &'a [u8]) -> Option<&'a [u8]> {
        let (outer_src, outer_dst, inner) = decapsulate(packet).ok()?;
        if outer_dst != self.config.address {
            return None;
        }
        let ip = ParsedIpv6::parse(inner).ok()?;
        (self.care_of(now, ip.src)? == outer_src).then_some(inner)
    }

    /// Drop expired registrations.
    pub fn poll(&mut self, now: Instant) {
        self.cache.retain(|_, b| now < b.expires);
    }

    /// Earliest expiry.
    pub fn poll_at(&self) -> Option<Instant> {
        self.cache.values().map(|b| b.expires).min()
    }
}
