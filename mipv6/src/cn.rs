//! The correspondent node (RFC 6275 §9), with RFC 5648 binding identifiers and RFC 6089 flow
//! bindings.
//!
//! The stack calls three things:
//! - [`Correspondent::on_mobility_header`] for every received Mobility Header (with the Home
//!   Address option of its packet, if any); it answers HoTI/CoTI with HoT/CoT (§9.4), processes
//!   Binding Updates (§9.5.1) and returns the Binding Acknowledgement or Binding Error to send;
//! - [`Correspondent::check_hao`] for every other packet with a Home Address option (§9.3.1):
//!   accept only with a binding whose care-of address is the packet's source, otherwise drop
//!   and send the returned Binding Error (§9.3.3);
//! - [`Correspondent::route_out`] for every outgoing packet: a destination with a binding is
//!   reached at its care-of address with a type 2 routing header (§9.3.2), per flow when flow
//!   bindings exist ([`RouteVia`] says which happened).
//!
//! plus [`Correspondent::poll`] at [`Correspondent::poll_at`] to expire bindings and send
//! Binding Refresh Requests (§9.5.5).

use crate::common::MhMeta;
use crate::consts::MAX_RR_BINDING_LIFETIME;
use crate::rr::{self, Kbm, Kcn, NonceTable, TokenKind};
use crate::time::Budget;
use crate::wire::packet::insert_rh2;
use crate::wire::{
    BaStatus, BeStatus, BindingAck, FlowIdOption, MhMessage, MhPacket, MhRepr, MobilityOption,
    PacketBuilder, ParsedIpv6, PortSelector, IPPROTO_MH, IPPROTO_NONE, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::{lifetime_to_units, seq_less, units_to_lifetime, Instant, Transmit};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// RFC 6089 flow-binding status values carried in the Flow Identification option of a BA.
pub mod flow_status {
    /// Flow binding successful.
    pub const SUCCESS: u8 = 0;
    /// Flow binding rejected, reason unspecified.
    pub const REJECTED: u8 = 129;
    /// Flow identification option malformed.
    pub const MALFORMED: u8 = 130;
    /// BID not found.
    pub const BID_NOT_FOUND: u8 = 131;
    /// FID not found.
    pub const FID_NOT_FOUND: u8 = 132;
    /// Traffic selector format not supported.
    pub const TS_FORMAT_NOT_SUPPORTED: u8 = 133;
}

/// Correspondent configuration.
#[derive(Debug, Clone)]
pub struct CnConfig {
    /// Longest binding granted; never above MAX_RR_BINDING_LIFETIME (§5.2.6).
    pub max_lifetime: Duration,
    /// Send a Binding Refresh Request when a used binding has less than this left (§9.5.5).
    pub refresh_before: Duration,
    /// Accept RFC 5648 binding identifiers and RFC 6089 flow bindings. When false, BID and
    /// FID options are ignored like unknown options and a whole home address moves.
    pub flow_bindings: bool,
    /// Minimum interval between two Binding Errors to one address (§9.3.3 rate limiting).
    pub be_interval: Duration,
    /// Most Binding Errors sent a second, to all addresses together (§9.3.3): a flood of
    /// Home Address options from spoofed sources gets this many answers, and costs no more
    /// state than they do.
    pub be_per_sec: u32,
    /// Most binding identifiers (RFC 5648) one home address may hold here; a BU for another
    /// gets status 130 (insufficient resources, §6.1.8), as a new home address beyond
    /// `max_entries` does.
    pub max_bids_per_home: usize,
    /// Most Home Test and Care-of Test answers a second, to all addresses together: every
    /// test init is answered (§9.4.1, §9.4.2) to whatever source it names, unauthenticated,
    /// with a keyed hash computed for it; a flood from spoofed sources gets this many.
    pub tests_per_sec: u32,
    /// Most home addresses in the binding cache; a BU for a new one beyond that gets status
    /// 130 (insufficient resources, §6.1.8).
    pub max_entries: usize,
}

impl Default for CnConfig {
    fn default() -> Self {
        CnConfig {
            max_lifetime: MAX_RR_BINDING_LIFETIME,
            refresh_before: Duration::from_secs(20),
            flow_bindings: true,
            be_interval: Duration::from_secs(1),
            be_per_sec: 100,
            max_bids_per_home: 16,
            tests_per_sec: 1000,
            max_entries: 65536,
        }
    }
}

/// A binding of one BID (RFC 5648) or the plain binding of a home address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Care-of address.
    pub care_of: Ipv6Addr,
    /// Last accepted sequence number.
    pub sequence: u16,
    /// Expiry.
    pub expires: Instant,
}

/// A flow binding (RFC 6089): packets matching `selector` go to the binding `bid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowBinding {
    /// Priority (lower first).
    pub priority: u16,
    /// Selector over packets from the correspondent to the home address: `src_ports` are the
    /// correspondent's ports, `dst_ports` the mobile node's.
    pub selector: PortSelector,
    /// Binding identifier the flow is bound to.
    pub bid: u16,
}

/// The binding cache entry of one home address (§9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Our address the bindings were made with.
    pub local: Ipv6Addr,
    /// The plain binding (a BU without a Binding Identifier option).
    pub main: Option<Binding>,
    /// Bindings by BID (RFC 5648).
    pub bids: BTreeMap<u16, Binding>,
    /// Flow bindings by FID (RFC 6089).
    pub flows: BTreeMap<u16, FlowBinding>,
    used: bool,
    brr_sent: bool,
}

impl CacheEntry {
    fn expires(&self) -> Option<Instant> {
        self.main
            .iter()
            .chain(self.bids.values())
            .map(|b| b.expires)
            .min()
    }

    fn has_care_of(&self, coa: Ipv6Addr) -> bool {
        self.main
            .iter()
            .chain(self.bids.values())
            .any(|b| b.care_of == coa)
    }

    fn is_empty(&self) -> bool {
        self.main.is_none() && self.bids.is_empty()
    }
}

/// The transport ports of a packet, for flow-binding lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Transport protocol.
    pub next_header: u8,
    /// Our (correspondent) port.
    pub local_port: u16,
    /// The mobile node's port.
    pub remote_port: u16,
}

/// How [`Correspondent::route_out`] chose the care-of address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteVia {
    /// A flow binding (RFC 6089) matched: only this connection goes there.
    Flow {
        /// The flow identifier.
        fid: u16,
        /// The binding it references.
        bid: u16,
    },
    /// The whole home address is bound (RFC 6275 plain binding).
    HomeAddress,
}

/// Where to send a packet for a home address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Send to this care-of address with a type 2 routing header carrying the home address.
    pub care_of: Ipv6Addr,
    /// Which binding decided.
    pub via: RouteVia,
}

/// Verdict on a packet carrying a Home Address option (§9.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaoCheck {
    /// A binding exists for (home address, care-of address): process the packet with the home
    /// address as its source.
    Accept,
    /// No such binding: drop the packet; send the Binding Error if any (rate limited).
    Reject(Option<Transmit>),
}

/// What happened to a received Mobility Header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CnEvent {
    /// Answered a HoTI (§9.4.1) or CoTI (§9.4.2).
    TestAnswered,
    /// A binding was created or refreshed (§9.5.2).
    BindingUpdated {
        /// Home address.
        home: Ipv6Addr,
        /// Care-of address.
        care_of: Ipv6Addr,
        /// RFC 5648 binding identifier, when one was used.
        bid: Option<u16>,
        /// Flow identifiers accepted with it (RFC 6089).
        flows: Vec<u16>,
        /// Granted lifetime.
        lifetime: Duration,
    },
    /// A binding was deleted (§9.5.3).
    BindingDeleted {
        /// Home address.
        home: Ipv6Addr,
        /// The BID deleted, or `None` for the plain binding (and its flows).
        bid: Option<u16>,
    },
    /// A Binding Update was refused with this status in the BA (§9.5.1).
    Rejected(BaStatus),
    /// Silently discarded (§9.2, §9.5.1).
    Discarded(&'static str),
    /// Answered with a Binding Error (unknown MH type, §9.2).
    BindingError(BeStatus),
    /// A message a correspondent does not act on (HoT, CoT, BA, BE, BRR).
    Ignored,
}

/// Result of [`Correspondent::on_mobility_header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CnOutput {
    /// Packets to send.
    pub transmit: Vec<Transmit>,
    /// What happened.
    pub event: CnEvent,
}

impl CnOutput {
    fn discard(why: &'static str) -> Self {
        CnOutput {
            transmit: Vec::new(),
            event: CnEvent::Discarded(why),
        }
    }
}

/// A correspondent node: return-routability responder plus binding cache.
#[derive(Debug, Clone)]
pub struct Correspondent {
    config: CnConfig,
    nonces: NonceTable,
    cache: HashMap<Ipv6Addr, CacheEntry>,
    /// The last sequence number of bindings removed (deleted or expired), by home address and
    /// BID, kept until the nonces that could have authorised them are no longer accepted
    /// (RFC 6275 §5.2.8): a Binding Update recorded earlier and sent again would otherwise
    /// find no entry, have any sequence number accepted (§9.5.1), and bind the home address
    /// to its care-of address again. At most `max_entries`.
    retired: HashMap<(Ipv6Addr, Option<u16>), Retired>,
    /// `retired`'s keys in the order they were retired, with their `until` (which grows with
    /// it: `now` plus a constant), so that the first to be forgotten is found in O(1); an
    /// item whose `until` no longer matches the map's (the key was retired again, or bound)
    /// is skipped.
    retired_order: VecDeque<((Ipv6Addr, Option<u16>), Instant)>,
    last_be: HashMap<Ipv6Addr, Instant>,
    /// Binding Errors sent this second, to all addresses ([`CnConfig::be_per_sec`]).
    be_budget: Budget,
    /// Home and care-of tests answered this second ([`CnConfig::tests_per_sec`]).
    test_budget: Budget,
}

/// A removed binding's last sequence number and how long it is remembered.
#[derive(Debug, Clone, Copy)]
struct Retired {
    sequence: u16,
    until: Instant,
}

impl Correspondent {
    /// A correspondent with secret `kcn` (§5.2.1) and nonce-generation key `nonce_key`.
    pub fn new(config: CnConfig, kcn: Kcn, nonce_key: [u8; 32]) -> Self {
        Correspondent {
            config,
            nonces: NonceTable::new(kcn, nonce_key),
            cache: HashMap::new(),
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            last_be: HashMap::new(),
            be_budget: Budget::new(Instant::ZERO),
            test_budget: Budget::new(Instant::ZERO),
        }
    }

    /// Remember a removed binding's last sequence number (RFC 6275 §5.2.8) for as long as a
    /// nonce is accepted, MAX_NONCE_LIFETIME: the nonces that authorised it were issued
    /// before now. Bounded: when full, the entry closest to being forgotten goes first, found
    /// in O(1) (`retired_order`: a scan of the map per removal made a burst of removals
    /// quadratic, seconds of one packet's processing at 65,536 entries).
    fn retire(&mut self, now: Instant, home: Ipv6Addr, bid: Option<u16>, sequence: u16) {
        if self.config.max_entries == 0 {
            return;
        }
        let until = now + crate::consts::MAX_NONCE_LIFETIME;
        let key = (home, bid);
        if !self.retired.contains_key(&key) && self.retired.len() >= self.config.max_entries {
            while let Some((k, t)) = self.retired_order.pop_front() {
                if self.retired.get(&k).is_some_and(|r| r.until == t) {
                    self.retired.remove(&k);
                    break;
                }
            }
        }
        self.retired.insert(key, Retired { sequence, until });
        self.retired_order.push_back((key, until));
        // Items left behind by keys retired again or bound since: never more than the
        // live ones for long.
        if self.retired_order.len() > 2 * self.config.max_entries.max(self.retired.len()) {
            let retired = &self.retired;
            self.retired_order
                .retain(|(k, t)| retired.get(k).is_some_and(|r| r.until == *t));
        }
    }

    /// A correspondent with secrets from the system's secure random generator.
    pub fn with_random_secrets(config: CnConfig) -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut kcn = [0u8; 20];
        let mut nk = [0u8; 32];
        rng.fill(&mut kcn)?;
        rng.fill(&mut nk)?;
        Ok(Self::new(config, kcn, nk))
    }

    /// The nonce table (for inspection in tests).
    pub fn nonces(&self) -> &NonceTable {
        &self.nonces
    }

    /// The binding cache entry of `home`, if any.
    pub fn entry(&self, home: Ipv6Addr) -> Option<&CacheEntry> {
        self.cache.get(&home)
    }

    /// Number of home addresses with bindings.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the binding cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Convenience: [`Correspondent::on_mobility_header`] on a whole IPv6 packet.
    pub fn on_packet(&mut self, now: Instant, packet: &[u8]) -> CnOutput {
        match MhMeta::from_packet(packet) {
            Ok((meta, mh)) => self.on_mobility_header(now, meta, mh),
            Err(_) => CnOutput::discard("malformed packet"),
        }
    }

    /// Process a received Mobility Header `mh` (§9.2). `meta.dst` must be one of our addresses.
    pub fn on_mobility_header(&mut self, now: Instant, meta: MhMeta, mh: &[u8]) -> CnOutput {
        let Ok(p) = MhPacket::new_checked(mh) else {
            return CnOutput::discard("malformed mobility header");
        };
        // §9.2: checksum over the pseudo-header with the effective addresses.
        if !p.verify_checksum(meta.effective_src(), meta.effective_dst()) {
            return CnOutput::discard("bad checksum");
        }
        // §9.2: Payload Proto must be 59 (the stack may send ICMP Parameter Problem).
        if p.payload_proto() != IPPROTO_NONE {
            return CnOutput::discard("payload proto is not 59");
        }
        let Ok(repr) = MhRepr::parse(&p) else {
            return CnOutput::discard("malformed mobility message");
        };
        self.nonces.refresh(now);
        let test_init = matches!(
            repr.message,
            MhMessage::HomeTestInit { .. } | MhMessage::CareOfTestInit { .. }
        );
        if test_init
            && !self
                .test_budget
                .allow(now, self.config.tests_per_sec, Duration::from_secs(1))
        {
            return CnOutput::discard("test init over the budget of answers");
        }
        match &repr.message {
            // §9.4.1: HoTI must not carry an HAO; reply to its source with the home token.
            MhMessage::HomeTestInit { cookie } => {
                if meta.hao.is_some() {
                    return CnOutput::discard("HoTI with home address option");
                }
                let (nonce_index, token) = self.test_reply(now, meta.src, TokenKind::Home);
                self.reply_test(
                    meta,
                    MhMessage::HomeTest {
                        nonce_index,
                        cookie: *cookie,
                        token,
                    },
                )
            }
            // §9.4.2: likewise for the care-of test.
            MhMessage::CareOfTestInit { cookie } => {
                if meta.hao.is_some() {
                    return CnOutput::discard("CoTI with home address option");
                }
                let (nonce_index, token) = self.test_reply(now, meta.src, TokenKind::CareOf);
                self.reply_test(
                    meta,
                    MhMessage::CareOfTest {
                        nonce_index,
                        cookie: *cookie,
                        token,
                    },
                )
            }
            MhMessage::BindingUpdate(_) => self.on_binding_update(now, meta, p.bytes(), &repr),
            // §9.2: unknown MH type → Binding Error status 2 to the source.
            MhMessage::Unknown { .. } => {
                let be = MhRepr::new(
                    MhMessage::BindingError {
                        status: BeStatus::UNKNOWN_MH_TYPE,
                        home: meta.hao.unwrap_or(Ipv6Addr::UNSPECIFIED),
                    },
                    vec![],
                );
                let transmit = self
                    .rate_limited_be(now, meta.src)
                    .then(|| {
                        let b = PacketBuilder::new(meta.dst, meta.src);
                        Transmit {
                            src: meta.dst,
                            dst: meta.src,
                            packet: b.mh(&be),
                        }
                    })
                    .into_iter()
                    .collect();
                CnOutput {
                    transmit,
                    event: CnEvent::BindingError(BeStatus::UNKNOWN_MH_TYPE),
                }
            }
            _ => CnOutput {
                transmit: vec![],
                event: CnEvent::Ignored,
            },
        }
    }

    fn test_reply(&mut self, now: Instant, addr: Ipv6Addr, which: TokenKind) -> (u16, rr::Token) {
        let (idx, nonce) = self.nonces.current(now);
        (
            idx,
            rr::keygen_token(self.nonces.kcn(), addr, &nonce, which),
        )
    }

    fn reply_test(&self, meta: MhMeta, msg: MhMessage) -> CnOutput {
        // §6.1: MH messages bypass the binding cache: plain packet back to the source.
        let b = PacketBuilder::new(meta.dst, meta.src);
        CnOutput {
            transmit: vec![Transmit {
                src: meta.dst,
                dst: meta.src,
                packet: b.mh(&MhRepr::new(msg, vec![])),
            }],
            event: CnEvent::TestAnswered,
        }
    }

    /// Binding Update processing, §9.5.1.
    fn on_binding_update(
        &mut self,
        now: Instant,
        meta: MhMeta,
        mh: &[u8],
        repr: &MhRepr,
    ) -> CnOutput {
        let Some(bu) = repr.binding_update().copied() else {
            return CnOutput::discard("not a binding update");
        };
        let local = meta.dst;
        // The home address is in the HAO; without one the source is the home address (a
        // mobile node deregistering from home).
        let home = meta.hao.unwrap_or(meta.src);
        // §6.2.5: an Alternate Care-of Address option overrides the source address.
        let care_of = repr
            .find_option(|o| match o {
                MobilityOption::AlternateCareOf(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(meta.src);
        if care_of.is_multicast() || care_of.is_unspecified() || care_of.is_loopback() {
            return CnOutput::discard("invalid care-of address");
        }
        // §9.5.1: the home address must be a unicast routable address.
        if home.is_multicast() || home.is_unspecified() || home.is_loopback() {
            return CnOutput::discard("invalid home address");
        }
        let deletion = bu.lifetime == 0 || care_of == home;
        // §9.5.1: Nonce Indices and Binding Authorization Data are required.
        let Some((hni, cni)) = repr.find_option(|o| match o {
            MobilityOption::NonceIndices { home, care_of } => Some((*home, *care_of)),
            _ => None,
        }) else {
            return CnOutput::discard("no nonce indices option");
        };
        if !repr
            .options
            .iter()
            .any(|o| matches!(o, MobilityOption::BindingAuthData(_)))
        {
            return CnOutput::discard("no binding authorization data");
        }
        let reply_to =
            |status: BaStatus, seq: u16, kbm: Option<&Kbm>, extra: Vec<MobilityOption>| {
                build_ba(local, home, meta.src, care_of, status, seq, 0, kbm, extra)
            };
        // §9.5.1: expired nonce indices → 136/137/138 (no Kbm: BA without authenticator).
        let home_token = self.nonces.token(home, hni, TokenKind::Home, now);
        let coa_token = if deletion {
            Some([0; 8])
        } else {
            self.nonces.token(care_of, cni, TokenKind::CareOf, now)
        };
        let (home_token, coa_token) = match (home_token, coa_token) {
            (Some(h), Some(c)) => (h, c),
            (h, c) => {
                let status = match (h.is_some(), c.is_some()) {
                    (false, true) => BaStatus::EXPIRED_HOME_NONCE,
                    (true, false) => BaStatus::EXPIRED_CARE_OF_NONCE,
                    _ => BaStatus::EXPIRED_NONCES,
                };
                return CnOutput {
                    transmit: vec![reply_to(status, bu.sequence, None, vec![])],
                    event: CnEvent::Rejected(status),
                };
            }
        };
        // §5.2.5: Kbm from both tokens, or the home token alone for a deletion.
        let kbm = rr::kbm(&home_token, (!deletion).then_some(&coa_token));
        // §9.5.1: the authenticator must verify, otherwise silently discard.
        if !rr::verify_rr(mh, &kbm, care_of, local) {
            return CnOutput::discard("authenticator does not verify");
        }
        // §9.5.1: a correspondent does not do home registration → 131.
        if bu.home_registration {
            let s = BaStatus::HOME_REG_NOT_SUPPORTED;
            return CnOutput {
                transmit: vec![reply_to(s, bu.sequence, Some(&kbm), vec![])],
                event: CnEvent::Rejected(s),
            };
        }
        let bid_opt = if self.config.flow_bindings {
            repr.find_option(|o| match o {
                MobilityOption::BindingId {
                    bid,
                    care_of: c,
                    flags,
                    ..
                } => Some((*bid, *c, *flags)),
                _ => None,
            })
        } else {
            None
        };
        if let Some((_, Some(c), _)) = bid_opt {
            // With return routability the BID's care-of address is the tested one.
            if c != IpAddr::V6(care_of) {
                let s = BaStatus::INVALID_COA;
                return CnOutput {
                    transmit: vec![reply_to(s, bu.sequence, Some(&kbm), vec![])],
                    event: CnEvent::Rejected(s),
                };
            }
        }
        let bid = bid_opt.map(|(b, _, _)| b);
        // §9.5.1: the sequence number must be greater (mod 2^16) than the last accepted one
        // for this binding, else 135 with the last accepted number.
        let existing = self.cache.get(&home).and_then(|e| match bid {
            None => e.main.as_ref(),
            Some(b) => e.bids.get(&b),
        });
        // With no binding, the last one removed while its nonces are still accepted
        // (§5.2.8): a replayed Binding Update does not bind again.
        let last = existing.map(|b| b.sequence).or_else(|| {
            self.retired
                .get(&(home, bid))
                .filter(|r| now < r.until)
                .map(|r| r.sequence)
        });
        if let Some(last) = last {
            if !seq_less(last, bu.sequence) {
                let s = BaStatus::SEQUENCE_OUT_OF_WINDOW;
                return CnOutput {
                    transmit: vec![reply_to(s, last, Some(&kbm), vec![])],
                    event: CnEvent::Rejected(s),
                };
            }
        }
        let echo_bid = |status: u8| {
            bid_opt
                .map(|(b, c, flags)| MobilityOption::BindingId {
                    bid: b,
                    status,
                    flags,
                    care_of: c,
                })
                .into_iter()
                .collect::<Vec<_>>()
        };
        if deletion {
            // §9.5.3: delete the entry (or the BID and the flows bound to it). The deletion's
            // sequence number is remembered (§5.2.8), and each removed BID's own.
            let mut removed_bids = Vec::new();
            if let Some(e) = self.cache.get_mut(&home) {
                match bid {
                    None => {
                        e.main = None;
                        e.flows.clear();
                        removed_bids = e.bids.iter().map(|(b, x)| (*b, x.sequence)).collect();
                        e.bids.clear();
                    }
                    Some(b) => {
                        e.bids.remove(&b);
                        e.flows.retain(|_, f| f.bid != b);
                    }
                }
                if e.is_empty() {
                    self.cache.remove(&home);
                }
            }
            self.retire(now, home, bid, bu.sequence);
            for (b, seq) in removed_bids {
                self.retire(now, home, Some(b), seq);
            }
            let transmit = if bu.ack {
                vec![reply_to(
                    BaStatus::ACCEPTED,
                    bu.sequence,
                    Some(&kbm),
                    echo_bid(0),
                )]
            } else {
                vec![]
            };
            return CnOutput {
                transmit,
                event: CnEvent::BindingDeleted { home, bid },
            };
        }
        // §5.2.6: no more than MAX_RR_BINDING_LIFETIME; the BA says what was granted.
        let max = self.config.max_lifetime.min(MAX_RR_BINDING_LIFETIME);
        let granted_units = bu.lifetime.min(lifetime_to_units(max));
        let granted = units_to_lifetime(granted_units);
        let binding = Binding {
            care_of,
            sequence: bu.sequence,
            expires: now + granted,
        };
        let new_bid = |e: &CacheEntry, b: u16| {
            !e.bids.contains_key(&b) && e.bids.len() >= self.config.max_bids_per_home
        };
        let full = match (self.cache.get(&home), bid) {
            (None, _) => self.cache.len() >= self.config.max_entries,
            (Some(e), Some(b)) => new_bid(e, b),
            (Some(_), None) => false,
        };
        if full {
            let s = BaStatus::INSUFFICIENT_RESOURCES;
            return CnOutput {
                transmit: vec![reply_to(s, bu.sequence, Some(&kbm), vec![])],
                event: CnEvent::Rejected(s),
            };
        }
        // RFC 6089: flow identification options referencing BIDs.
        let mut ba_opts = echo_bid(0);
        let mut accepted_flows = Vec::new();
        let entry = self.cache.entry(home).or_insert_with(|| CacheEntry {
            local,
            main: None,
            bids: BTreeMap::new(),
            flows: BTreeMap::new(),
            used: false,
            brr_sent: false,
        });
        entry.local = local;
        entry.brr_sent = false;
        self.retired.remove(&(home, bid));
        match bid {
            None => entry.main = Some(binding),
            Some(b) => {
                entry.bids.insert(b, binding);
            }
        }
        if self.config.flow_bindings {
            // RFC 6089 §5: flow bindings a BU does not mention (in a Flow Identification or
            // Flow Summary option) are removed. Several nodes send BUs for one home address
            // here, each with its own BID, so the omission rule is scoped to the flows bound
            // to this BU's BID; a BU without a BID leaves flow bindings alone.
            let mentioned: Vec<u16> = repr
                .options
                .iter()
                .flat_map(|o| match o {
                    MobilityOption::FlowId(f) => vec![f.fid],
                    MobilityOption::FlowSummary(fids) => fids.clone(),
                    _ => vec![],
                })
                .collect();
            if let Some(b) = bid {
                entry
                    .flows
                    .retain(|fid, f| f.bid != b || mentioned.contains(fid));
            }
            for o in &repr.options {
                let MobilityOption::FlowId(f) = o else {
                    continue;
                };
                let status = apply_flow(entry, f);
                if status == flow_status::SUCCESS {
                    accepted_flows.push(f.fid);
                }
                ba_opts.push(MobilityOption::FlowId(FlowIdOption {
                    fid: f.fid,
                    priority: f.priority,
                    reserved: 0,
                    status,
                    suboptions: vec![],
                }));
            }
        }
        let transmit = if bu.ack {
            vec![build_ba(
                local,
                home,
                meta.src,
                care_of,
                BaStatus::ACCEPTED,
                bu.sequence,
                granted_units,
                Some(&kbm),
                ba_opts,
            )]
        } else {
            vec![]
        };
        CnOutput {
            transmit,
            event: CnEvent::BindingUpdated {
                home,
                care_of,
                bid,
                flows: accepted_flows,
                lifetime: granted,
            },
        }
    }

    /// Whether a Binding Error may go to `to` now (§9.3.3): at most one per `be_interval` to
    /// one address, and `be_per_sec` to all together. The total is checked first, so a flood
    /// from spoofed sources adds at most `be_per_sec` addresses a second to `last_be`, and
    /// its sweep (when it holds over 4,096) runs at most that often: before, every packet of
    /// such a flood swept a map of fresh entries, growing without bound.
    fn rate_limited_be(&mut self, now: Instant, to: Ipv6Addr) -> bool {
        if let Some(&t) = self.last_be.get(&to) {
            if now.saturating_since(t) < self.config.be_interval {
                return false;
            }
        }
        if !self
            .be_budget
            .allow(now, self.config.be_per_sec, Duration::from_secs(1))
        {
            return false;
        }
        if self.last_be.len() > 4096 {
            let iv = self.config.be_interval;
            self.last_be.retain(|_, t| now.saturating_since(*t) < iv);
        }
        self.last_be.insert(to, now);
        true
    }

    /// A packet from `src` carries a Home Address option with `home` (§9.3.1). Binding
    /// Updates are exempt (they are checked by [`Correspondent::on_mobility_header`]); pass
    /// `is_binding_update = true` for them. `local` is our address (the packet's destination).
    pub fn check_hao(
        &mut self,
        now: Instant,
        local: Ipv6Addr,
        src: Ipv6Addr,
        home: Ipv6Addr,
        is_binding_update: bool,
    ) -> HaoCheck {
        if is_binding_update {
            return HaoCheck::Accept;
        }
        if let Some(e) = self.cache.get(&home) {
            if e.has_care_of(src) && e.expires().is_some_and(|t| now < t) {
                return HaoCheck::Accept;
            }
        }
        // §9.3.3: Binding Error status 1 to the packet's source (the care-of address), sent
        // without a routing header, rate limited.
        if !self.rate_limited_be(now, src) {
            return HaoCheck::Reject(None);
        }
        let be = MhRepr::new(
            MhMessage::BindingError {
                status: BeStatus::UNKNOWN_BINDING,
                home,
            },
            vec![],
        );
        HaoCheck::Reject(Some(Transmit {
            src: local,
            dst: src,
            packet: PacketBuilder::new(local, src).mh(&be),
        }))
    }

    /// Where an outgoing packet to `dst` goes (§9.3.2). `None`: no binding, send normally.
    /// Otherwise send to `care_of` with a type 2 routing header carrying `dst` (see
    /// [`crate::wire::packet::insert_rh2`]). With `flow`, RFC 6089 flow bindings are tried
    /// first (by priority); a flow without a flow binding uses the plain binding of the home
    /// address if there is one, otherwise goes to the home address untouched (`None`).
    /// Mobility Header packets must not be routed through this (§6.1).
    pub fn route_out(
        &mut self,
        now: Instant,
        dst: Ipv6Addr,
        flow: Option<FlowKey>,
    ) -> Option<Route> {
        let e = self.cache.get_mut(&dst)?;
        let live = |b: &Binding| now < b.expires;
        if let Some(k) = flow {
            let mut best: Option<(u16, u16, &FlowBinding)> = None;
            for (fid, f) in &e.flows {
                if f.selector
                    .matches(k.local_port, k.remote_port, k.next_header)
                    && e.bids.get(&f.bid).is_some_and(live)
                    && best.is_none_or(|(p, _, _)| f.priority < p)
                {
                    best = Some((f.priority, *fid, f));
                }
            }
            if let Some((_, fid, f)) = best {
                let bid = f.bid;
                let care_of = e.bids.get(&bid).map(|b| b.care_of)?;
                e.used = true;
                return Some(Route {
                    care_of,
                    via: RouteVia::Flow { fid, bid },
                });
            }
        }
        let b = e.main.as_ref().filter(|b| live(b))?;
        let care_of = b.care_of;
        e.used = true;
        Some(Route {
            care_of,
            via: RouteVia::HomeAddress,
        })
    }

    /// Convenience for an output path that has a whole IPv6 packet: when its destination has
    /// a binding, return the packet rewritten for route optimisation (to the care-of address
    /// with a type 2 routing header, §9.3.2), choosing by flow binding from its TCP/UDP ports.
    /// `None`: send it unchanged (no binding, a Mobility Header packet (§6.1), or a packet that
    /// already has a routing header).
    pub fn rewrite_outgoing(&mut self, now: Instant, packet: &[u8]) -> Option<(Route, Vec<u8>)> {
        let p = ParsedIpv6::parse(packet).ok()?;
        if p.upper_proto == IPPROTO_MH || p.rh2.is_some() {
            return None;
        }
        let flow = match p.upper_proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                let u = p.upper(packet);
                (u.len() >= 4).then(|| FlowKey {
                    next_header: p.upper_proto,
                    local_port: u16::from_be_bytes([u[0], u[1]]),
                    remote_port: u16::from_be_bytes([u[2], u[3]]),
                })
            }
            _ => None,
        };
        let route = self.route_out(now, p.dst, flow)?;
        let out = insert_rh2(packet, route.care_of).ok()?;
        Some((route, out))
    }

    /// Remove expired bindings and send Binding Refresh Requests (§9.5.5) for bindings in use
    /// that are about to expire. BRRs go to the home address without route optimisation
    /// (§6.1: Mobility Header messages bypass the binding cache).
    pub fn poll(&mut self, now: Instant) -> Vec<Transmit> {
        self.nonces.refresh(now);
        let mut out = Vec::new();
        let refresh_before = self.config.refresh_before;
        self.retired.retain(|_, r| now < r.until);
        let mut expired = Vec::new();
        self.cache.retain(|home, e| {
            if let Some(b) = e.main.take_if(|b| now >= b.expires) {
                expired.push((*home, None, b.sequence));
            }
            let before = e.bids.len();
            e.bids.retain(|bid, b| {
                let keep = now < b.expires;
                if !keep {
                    expired.push((*home, Some(*bid), b.sequence));
                }
                keep
            });
            if e.bids.len() != before {
                let bids = e.bids.clone();
                e.flows.retain(|_, f| bids.contains_key(&f.bid));
            }
            if e.is_empty() {
                return false;
            }
            if let Some(exp) = e.expires() {
                if e.used && !e.brr_sent && exp.saturating_since(now) <= refresh_before {
                    e.brr_sent = true;
                    e.used = false;
                    let brr = MhRepr::new(MhMessage::BindingRefreshRequest, vec![]);
                    out.push(Transmit {
                        src: e.local,
                        dst: *home,
                        packet: PacketBuilder::new(e.local, *home).mh(&brr),
                    });
                }
            }
            true
        });
        for (home, bid, sequence) in expired {
            self.retire(now, home, bid, sequence);
        }
        out
    }

    /// When [`Correspondent::poll`] should next run: the earliest expiry or refresh time.
    pub fn poll_at(&self) -> Option<Instant> {
        self.cache
            .values()
            .filter_map(|e| {
                let exp = e.expires()?;
                if e.used && !e.brr_sent {
                    Some(exp - self.config.refresh_before)
                } else {
                    Some(exp)
                }
            })
            .min()
    }
}

/// Apply one Flow Identification option to an entry (RFC 6089 §5): add the flow binding, or
/// replace the one with the same FID; returns the status for the BA. We support exactly one
/// BID reference per flow (no replication to several care-of addresses) and the IPv6 binary
/// port selector.
/// Most flow bindings (RFC 6089) one home address may hold here; another is refused
/// (`flow_status::REJECTED`).
pub const MAX_FLOWS_PER_HOME: usize = 64;

fn apply_flow(entry: &mut CacheEntry, f: &FlowIdOption) -> u8 {
    let refs = f.binding_refs();
    let has_ts = f
        .suboptions
        .iter()
        .any(|s| matches!(s, crate::wire::FlowSubOption::TrafficSelector { .. }));
    if refs.is_empty() && !has_ts {
        // A bare FID refreshes an existing flow binding.
        return if entry.flows.contains_key(&f.fid) {
            flow_status::SUCCESS
        } else {
            flow_status::FID_NOT_FOUND
        };
    }
    let [bid] = refs.as_slice() else {
        return flow_status::MALFORMED;
    };
    if !entry.bids.contains_key(bid) {
        return flow_status::BID_NOT_FOUND;
    }
    let Some(selector) = f.port_selector() else {
        return if has_ts {
            flow_status::TS_FORMAT_NOT_SUPPORTED
        } else {
            flow_status::MALFORMED
        };
    };
    if !entry.flows.contains_key(&f.fid) && entry.flows.len() >= MAX_FLOWS_PER_HOME {
        // Bounded like the BIDs ([`CnConfig::max_bids_per_home`]): every flow binding is
        // matched against each packet to the home address.
        return flow_status::REJECTED;
    }
    entry.flows.insert(
        f.fid,
        FlowBinding {
            priority: f.priority,
            selector,
            bid: *bid,
        },
    );
    flow_status::SUCCESS
}

/// Build a Binding Acknowledgement (§9.5.4): to the packet's source (the care-of address)
/// with a type 2 routing header carrying the home address when they differ; authenticated
/// with Kbm when one is known (§6.1.8, §5.2.6).
#[allow(clippy::too_many_arguments)]
fn build_ba(
    local: Ipv6Addr,
    home: Ipv6Addr,
    src: Ipv6Addr,
    care_of: Ipv6Addr,
    status: BaStatus,
    sequence: u16,
    lifetime: u16,
    kbm: Option<&Kbm>,
    options: Vec<MobilityOption>,
) -> Transmit {
    let mut repr = MhRepr::new(
        MhMessage::BindingAck(BindingAck {
            status,
            key_management: false,
            other_flags: 0,
            sequence,
            lifetime,
        }),
        options,
    );
    if let Some(k) = kbm {
        rr::sign_rr(&mut repr, k, care_of, local);
    }
    let mut b = PacketBuilder::new(local, src);
    if src != home {
        b = b.with_rh2(home);
    }
    Transmit {
        src: local,
        dst: src,
        packet: b.mh(&repr),
    }
}
