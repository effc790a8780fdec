//! The mobile-node role a distributed-server node plays for the DS address towards one
//! correspondent (RFC 6275 §11), and home registration at the home agent (§11.7.1 with
//! RFC 4285 authentication).
//!
//! Return routability is split so a handoff can overlap it with state transfer (§5.2):
//! - the **home test** ([`TestInit`] with [`TokenKind::Home`]) is best run by the contact
//!   node, which the home agent currently forwards the home address to (the HoT arrives
//!   there); its result travels to the acceptor as a [`HomeTicket`] (serde), which also
//!   carries the next Binding Update sequence number for this correspondent, so numbers keep
//!   increasing across nodes;
//! - the **care-of test** ([`TestInit`] with [`TokenKind::CareOf`]) is run by the acceptor
//!   from its own care-of address;
//! - both may start early: tokens live MAX_TOKEN_LIFETIME (210 s, §12).
//!
//! [`MnBinding`] is the Binding Update List entry for the correspondent (§11.1): it builds the
//! authenticated Binding Update (§11.7.2), retransmits it with exponential back-off from
//! INITIAL_BINDACK_TIMEOUT to MAX_BINDACK_TIMEOUT with a fresh sequence number each time
//! (§11.8), verifies the Binding Acknowledgement (§11.7.3) and resynchronises on status 135.

use crate::common::{Backoff, MhMeta};
use crate::consts::{INITIAL_BINDACK_TIMEOUT_FIRST_REG, MAX_TOKEN_LIFETIME};
use crate::rr::{self, Kbm, Token, TokenKind};
use crate::wire::{
    BaStatus, BeStatus, BindingUpdate, FlowIdOption, FlowSubOption, MhMessage, MhRepr,
    MobilityOption, PacketBuilder, PortSelector,
};
use crate::{lifetime_to_units, units_to_lifetime, Instant, Transmit};
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;
use std::time::Duration;

use crate::wire::option::TS_FORMAT_IPV6;

/// Errors of the mobile-node role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MnError {
    /// No usable (fresh) keygen token of this kind (§5.2.7: MAX_TOKEN_LIFETIME).
    #[error("no fresh {0:?} keygen token")]
    NeedToken(TokenKind),
    /// The token was obtained for other addresses.
    #[error("keygen token is for another address or correspondent")]
    WrongToken,
}

/// A keygen token as the mobile node holds it (§5.2.3, §5.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keygen {
    /// Home or care-of.
    pub kind: TokenKind,
    /// The tested address (home or care-of address).
    pub addr: Ipv6Addr,
    /// The correspondent.
    pub cn: Ipv6Addr,
    /// Nonce index from the HoT/CoT.
    pub nonce_index: u16,
    /// The token.
    pub token: Token,
    /// When it arrived (local clock).
    pub obtained: Instant,
}

impl Keygen {
    /// Whether it may still be used (§5.2.7: MAX_TOKEN_LIFETIME).
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_since(self.obtained) < MAX_TOKEN_LIFETIME
    }
}

/// What the contact node ships to the acceptor for one correspondent: the home keygen token
/// with its remaining lifetime (clock-independent) and the next BU sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeTicket {
    /// Home address (the DS address).
    pub home: Ipv6Addr,
    /// Correspondent address.
    pub cn: Ipv6Addr,
    /// Home nonce index.
    pub nonce_index: u16,
    /// Home keygen token.
    pub token: Token,
    /// Token lifetime left at export.
    pub remaining: Duration,
    /// Next sequence number to use towards this correspondent.
    pub next_sequence: u16,
}

impl HomeTicket {
    /// Export a home keygen token at `now` with the next sequence number.
    pub fn export(k: &Keygen, now: Instant, next_sequence: u16) -> Self {
        HomeTicket {
            home: k.addr,
            cn: k.cn,
            nonce_index: k.nonce_index,
            token: k.token,
            remaining: MAX_TOKEN_LIFETIME.saturating_sub(now.saturating_since(k.obtained)),
            next_sequence,
        }
    }

    /// The token on the importing node's clock.
    pub fn import(&self, now: Instant) -> Keygen {
        Keygen {
            kind: TokenKind::Home,
            addr: self.home,
            cn: self.cn,
            nonce_index: self.nonce_index,
            token: self.token,
            obtained: now - MAX_TOKEN_LIFETIME.saturating_sub(self.remaining),
        }
    }
}

/// A Home Test Init or Care-of Test Init exchange (§5.2.3, §5.2.4, §11.6.1), retransmitted
/// with back-off until the HoT/CoT arrives, for at most MAX_TOKEN_LIFETIME: a token that
/// comes later would serve no Binding Update that needed it (the connection that asked has
/// been kept or has gone), and a correspondent that never answers must not be probed forever.
#[derive(Debug, Clone)]
pub struct TestInit {
    kind: TokenKind,
    addr: Ipv6Addr,
    cn: Ipv6Addr,
    cookie: [u8; 8],
    started: Instant,
    backoff: Option<Backoff>,
}

impl TestInit {
    /// Start the test from `addr` (home address for the home test, care-of address for the
    /// care-of test) to `cn`, with a fresh random `cookie`. Returns the first HoTI/CoTI. A
    /// HoTI has the home address as source: away from home it is reverse-tunnelled through
    /// the home agent ([`crate::wire::packet::encapsulate`]), §11.6.1.
    pub fn start(
        now: Instant,
        kind: TokenKind,
        addr: Ipv6Addr,
        cn: Ipv6Addr,
        cookie: [u8; 8],
    ) -> (Self, Transmit) {
        let t = TestInit {
            kind,
            addr,
            cn,
            cookie,
            started: now,
            backoff: Some(Backoff::bindack(now)),
        };
        let p = t.packet();
        (t, p)
    }

    /// The HoTI/CoTI packet.
    pub fn packet(&self) -> Transmit {
        let msg = match self.kind {
            TokenKind::Home => MhMessage::HomeTestInit {
                cookie: self.cookie,
            },
            TokenKind::CareOf => MhMessage::CareOfTestInit {
                cookie: self.cookie,
            },
        };
        Transmit {
            src: self.addr,
            dst: self.cn,
            packet: PacketBuilder::new(self.addr, self.cn).mh(&MhRepr::new(msg, vec![])),
        }
    }

    /// Whether the test is still waiting for its reply.
    pub fn is_pending(&self) -> bool {
        self.backoff.is_some()
    }

    /// Offer a received Mobility Header; returns the token when it is the matching HoT/CoT
    /// (right kind, from the correspondent to our address, same cookie: §11.6.2).
    pub fn on_mobility_header(&mut self, now: Instant, meta: MhMeta, mh: &[u8]) -> Option<Keygen> {
        self.backoff?;
        let repr = MhRepr::parse_verified(mh, meta.effective_src(), meta.effective_dst()).ok()?;
        let (idx, cookie, token) = match (self.kind, &repr.message) {
            (
                TokenKind::Home,
                MhMessage::HomeTest {
                    nonce_index,
                    cookie,
                    token,
                },
            )
            | (
                TokenKind::CareOf,
                MhMessage::CareOfTest {
                    nonce_index,
                    cookie,
                    token,
                },
            ) => (*nonce_index, *cookie, *token),
            _ => return None,
        };
        if cookie != self.cookie
            || meta.effective_src() != self.cn
            || meta.effective_dst() != self.addr
        {
            return None;
        }
        self.backoff = None;
        Some(Keygen {
            kind: self.kind,
            addr: self.addr,
            cn: self.cn,
            nonce_index: idx,
            token,
            obtained: now,
        })
    }

    /// Retransmit when due; give up once the test has run for MAX_TOKEN_LIFETIME.
    pub fn poll(&mut self, now: Instant) -> Option<Transmit> {
        if now.saturating_since(self.started) >= MAX_TOKEN_LIFETIME {
            self.backoff = None;
            return None;
        }
        let b = self.backoff.as_mut()?;
        b.fire(now).then(|| self.packet())
    }

    /// When to poll next.
    pub fn poll_at(&self) -> Option<Instant> {
        self.backoff.map(|b| b.deadline)
    }
}

/// A flow binding the mobile node asks for (RFC 6089): `selector` is seen from the
/// correspondent (its ports as source, ours as destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRequest {
    /// Flow identifier.
    pub fid: u16,
    /// Priority.
    pub priority: u16,
    /// Selector.
    pub selector: PortSelector,
}

/// Configuration of a binding towards one correspondent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnBindingConfig {
    /// Home address (the DS address).
    pub home: Ipv6Addr,
    /// This node's care-of address.
    pub care_of: Ipv6Addr,
    /// The correspondent.
    pub cn: Ipv6Addr,
    /// Requested lifetime.
    pub lifetime: Duration,
    /// RFC 5648 binding identifier and RFC 6089 flows to bind to it; `None` binds the whole
    /// home address.
    pub bid: Option<u16>,
    /// Flows to bind to `bid`.
    pub flows: Vec<FlowRequest>,
}

/// Whether the correspondent bound our flows or the whole home address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingScope {
    /// The correspondent accepted the BID and these flow identifiers: only those connections
    /// now come to this node.
    Flows(Vec<u16>),
    /// The correspondent ignored the BID/flow options (no RFC 5648/6089 support) or none were
    /// asked: every connection of this client to the home address now comes here.
    WholeHomeAddress,
}

/// What a received Binding Acknowledgement meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MnEvent {
    /// Accepted (§11.7.3).
    Bound {
        /// Granted lifetime.
        lifetime: Duration,
        /// Flow bindings or the whole address.
        scope: BindingScope,
    },
    /// Deletion acknowledged.
    Deleted,
    /// Status 135: resynchronised to the correspondent's sequence number and re-sent.
    Resynchronised {
        /// The correspondent's last accepted number.
        cn_sequence: u16,
    },
    /// Status 136/137/138: run the home and/or care-of test again, then call `send_update`.
    NeedTests {
        /// Home test needed.
        home: bool,
        /// Care-of test needed.
        care_of: bool,
    },
    /// Refused with another status.
    Rejected(BaStatus),
    /// A Binding Refresh Request arrived (§11.7.4) and a new Binding Update was sent.
    Refreshing,
    /// The correspondent sent a Binding Error (§11.3.6); with status 1 the binding is gone
    /// at the correspondent: run the tests and send a new Binding Update.
    BindingError(BeStatus),
    /// Not for us, not authentic or not matching: ignored.
    Ignored(&'static str),
}

#[derive(Debug, Clone)]
enum MnState {
    Idle,
    Waiting {
        seq: u16,
        backoff: Backoff,
        kbm: Kbm,
        deletion: bool,
    },
    Bound {
        expires: Instant,
        refresh_at: Option<Instant>,
    },
}

/// Binding Update List entry towards one correspondent (§11.1).
#[derive(Debug, Clone)]
pub struct MnBinding {
    cfg: MnBindingConfig,
    /// Last sequence number used.
    seq: u16,
    home_kg: Option<Keygen>,
    coa_kg: Option<Keygen>,
    state: MnState,
}

impl MnBinding {
    /// A new entry whose first Binding Update will use `next_sequence`.
    pub fn new(cfg: MnBindingConfig, next_sequence: u16) -> Self {
        MnBinding {
            cfg,
            seq: next_sequence.wrapping_sub(1),
            home_kg: None,
            coa_kg: None,
            state: MnState::Idle,
        }
    }

    /// A new entry on the acceptor from the contact node's ticket: home token and sequence.
    pub fn from_ticket(
        cfg: MnBindingConfig,
        ticket: &HomeTicket,
        now: Instant,
    ) -> Result<Self, MnError> {
        if ticket.home != cfg.home || ticket.cn != cfg.cn {
            return Err(MnError::WrongToken);
        }
        let mut b = Self::new(cfg, ticket.next_sequence);
        b.home_kg = Some(ticket.import(now));
        Ok(b)
    }

    /// The configuration.
    pub fn config(&self) -> &MnBindingConfig {
        &self.cfg
    }

    /// Replace the flows to bind with the next Binding Update (RFC 6089 §5: flows of this
    /// BID left out of a BU are removed at the correspondent). Call
    /// [`MnBinding::send_update`] to apply, e.g. when a connection arrives or leaves.
    pub fn set_flows(&mut self, flows: Vec<FlowRequest>) {
        self.cfg.flows = flows;
    }

    /// The sequence number the next Binding Update will carry.
    pub fn next_sequence(&self) -> u16 {
        self.seq.wrapping_add(1)
    }

    /// Export the home token and next sequence number for another node.
    pub fn ticket(&self, now: Instant) -> Option<HomeTicket> {
        self.home_kg
            .as_ref()
            .map(|k| HomeTicket::export(k, now, self.next_sequence()))
    }

    /// Install a token from a finished [`TestInit`].
    pub fn set_keygen(&mut self, k: Keygen) -> Result<(), MnError> {
        let (addr, slot) = match k.kind {
            TokenKind::Home => (self.cfg.home, &mut self.home_kg),
            TokenKind::CareOf => (self.cfg.care_of, &mut self.coa_kg),
        };
        if k.addr != addr || k.cn != self.cfg.cn {
            return Err(MnError::WrongToken);
        }
        *slot = Some(k);
        Ok(())
    }

    /// Which tests must (re)run before a Binding Update can be sent at `now`.
    pub fn tests_needed(&self, now: Instant) -> (bool, bool) {
        let fresh = |k: &Option<Keygen>| k.as_ref().is_some_and(|k| k.is_fresh(now));
        (!fresh(&self.home_kg), !fresh(&self.coa_kg))
    }

    /// Whether a BU is outstanding.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, MnState::Waiting { .. })
    }

    /// Whether the correspondent has acknowledged a binding still alive at `now`.
    pub fn is_bound(&self, now: Instant) -> bool {
        matches!(self.state, MnState::Bound { expires, .. } if now < expires)
    }

    /// Build and send a Binding Update registering the care-of address (§11.7.2).
    pub fn send_update(&mut self, now: Instant) -> Result<Transmit, MnError> {
        self.send(now, false)
    }

    /// Build and send a Binding Update deleting the binding (lifetime 0; only the home token
    /// is needed, §5.2.5).
    pub fn send_delete(&mut self, now: Instant) -> Result<Transmit, MnError> {
        self.send(now, true)
    }

    fn send(&mut self, now: Instant, deletion: bool) -> Result<Transmit, MnError> {
        let seq = self.seq.wrapping_add(1);
        let (t, kbm) = self.build(now, seq, deletion)?;
        self.seq = seq;
        self.state = MnState::Waiting {
            seq,
            backoff: Backoff::bindack(now),
            kbm,
            deletion,
        };
        Ok(t)
    }

    fn build(&self, now: Instant, seq: u16, deletion: bool) -> Result<(Transmit, Kbm), MnError> {
        let home = self
            .home_kg
            .filter(|k| k.is_fresh(now))
            .ok_or(MnError::NeedToken(TokenKind::Home))?;
        let coa = if deletion {
            None
        } else {
            Some(
                self.coa_kg
                    .filter(|k| k.is_fresh(now))
                    .ok_or(MnError::NeedToken(TokenKind::CareOf))?,
            )
        };
        let kbm = rr::kbm(&home.token, coa.as_ref().map(|c| &c.token));
        let mut options = vec![MobilityOption::NonceIndices {
            home: home.nonce_index,
            care_of: coa.map_or(0, |c| c.nonce_index),
        }];
        if let Some(bid) = self.cfg.bid {
            options.push(MobilityOption::BindingId {
                bid,
                status: 0,
                flags: 0,
                care_of: None,
            });
            if !deletion {
                for f in &self.cfg.flows {
                    options.push(MobilityOption::FlowId(FlowIdOption {
                        fid: f.fid,
                        priority: f.priority,
                        reserved: 0,
                        status: 0,
                        suboptions: vec![
                            FlowSubOption::BindingReference(vec![bid]),
                            FlowSubOption::TrafficSelector {
                                format: TS_FORMAT_IPV6,
                                selector: f.selector.to_bytes(),
                            },
                        ],
                    }));
                }
            }
        }
        // §6.1.7: lifetime 0 deletes the binding.
        let units = if deletion {
            0
        } else {
            lifetime_to_units(self.cfg.lifetime)
        };
        let mut repr = MhRepr::new(
            MhMessage::BindingUpdate(BindingUpdate::acked(seq, false, units)),
            options,
        );
        rr::sign_rr(&mut repr, &kbm, self.cfg.care_of, self.cfg.cn);
        // §11.7.2: from the care-of address with a Home Address option; a mobile node at home
        // (care-of = home address, deregistering) sends from the home address without one
        // (§11.5.4).
        let b = if self.cfg.care_of == self.cfg.home {
            PacketBuilder::new(self.cfg.home, self.cfg.cn)
        } else {
            PacketBuilder::new(self.cfg.care_of, self.cfg.cn).with_hao(self.cfg.home)
        };
        Ok((
            Transmit {
                src: self.cfg.care_of,
                dst: self.cfg.cn,
                packet: b.mh(&repr),
            },
            kbm,
        ))
    }

    /// Offer a received Mobility Header (a BA from the correspondent, §11.7.3). Returns the
    /// event and, after a resynchronisation, the Binding Update to send.
    pub fn on_mobility_header(
        &mut self,
        now: Instant,
        meta: MhMeta,
        mh: &[u8],
    ) -> (MnEvent, Option<Transmit>) {
        if meta.effective_src() != self.cfg.cn {
            return (MnEvent::Ignored("not from the correspondent"), None);
        }
        let Ok(repr) = MhRepr::parse_verified(mh, meta.effective_src(), meta.effective_dst())
        else {
            return (MnEvent::Ignored("malformed or bad checksum"), None);
        };
        match repr.message {
            // §11.7.4: a Binding Refresh Request (sent to the home address) asks for a new BU.
            MhMessage::BindingRefreshRequest if meta.effective_dst() == self.cfg.home => {
                if !self.is_bound(now) {
                    return (MnEvent::Ignored("refresh request without a binding"), None);
                }
                return match self.send(now, false) {
                    Ok(t) => (MnEvent::Refreshing, Some(t)),
                    Err(_) => {
                        let (home, care_of) = self.tests_needed(now);
                        (MnEvent::NeedTests { home, care_of }, None)
                    }
                };
            }
            // §11.3.6: Binding Error from the correspondent about our home address (status 1:
            // it has no binding for our HAO; status 2: it does not know an MH type).
            MhMessage::BindingError { status, home }
                if home == self.cfg.home && meta.effective_dst() == self.cfg.care_of =>
            {
                if status == BeStatus::UNKNOWN_BINDING {
                    self.state = MnState::Idle;
                }
                return (MnEvent::BindingError(status), None);
            }
            _ => {}
        }
        let MnState::Waiting {
            seq, kbm, deletion, ..
        } = self.state.clone()
        else {
            return (MnEvent::Ignored("no binding update outstanding"), None);
        };
        if meta.effective_dst() != self.cfg.home {
            return (MnEvent::Ignored("not to the home address"), None);
        }
        let MhMessage::BindingAck(ba) = repr.message else {
            return (MnEvent::Ignored("not a binding acknowledgement"), None);
        };
        let nonce_status = matches!(ba.status.0, 136..=138);
        if nonce_status {
            // Unauthenticated by nature (the correspondent has no Kbm); must match our BU.
            if ba.sequence != seq {
                return (MnEvent::Ignored("sequence mismatch"), None);
            }
            self.state = MnState::Idle;
            let (h, c) = match ba.status {
                BaStatus::EXPIRED_HOME_NONCE => (true, false),
                BaStatus::EXPIRED_CARE_OF_NONCE => (false, true),
                _ => (true, true),
            };
            if h {
                self.home_kg = None;
            }
            if c {
                self.coa_kg = None;
            }
            return (
                MnEvent::NeedTests {
                    home: h,
                    care_of: c,
                },
                None,
            );
        }
        // §11.7.3: the BA must carry a valid Binding Authorization Data option.
        if !rr::verify_rr(mh, &kbm, self.cfg.care_of, self.cfg.cn) {
            return (MnEvent::Ignored("authenticator does not verify"), None);
        }
        if ba.status == BaStatus::SEQUENCE_OUT_OF_WINDOW {
            // §11.7.3: resynchronise on the correspondent's last accepted number.
            self.seq = ba.sequence;
            return match self.send(now, deletion) {
                Ok(t) => (
                    MnEvent::Resynchronised {
                        cn_sequence: ba.sequence,
                    },
                    Some(t),
                ),
                Err(_) => {
                    self.state = MnState::Idle;
                    (
                        MnEvent::NeedTests {
                            home: true,
                            care_of: !deletion,
                        },
                        None,
                    )
                }
            };
        }
        if ba.sequence != seq {
            return (MnEvent::Ignored("sequence mismatch"), None);
        }
        if !ba.status.is_accepted() {
            self.state = MnState::Idle;
            return (MnEvent::Rejected(ba.status), None);
        }
        if deletion {
            self.state = MnState::Idle;
            return (MnEvent::Deleted, None);
        }
        let lifetime = units_to_lifetime(ba.lifetime);
        // Refresh when an eighth of the lifetime is left (at least 2 s before expiry).
        let margin = (lifetime / 8).max(Duration::from_secs(2));
        self.state = MnState::Bound {
            expires: now + lifetime,
            refresh_at: (lifetime > margin).then(|| now + lifetime - margin),
        };
        let bid_ok = self.cfg.bid.is_some_and(|want| {
            repr.options.iter().any(|o| {
                matches!(o, MobilityOption::BindingId { bid, status, .. } if *bid == want && *status < 128)
            })
        });
        let scope = if bid_ok {
            BindingScope::Flows(
                repr.options
                    .iter()
                    .filter_map(|o| match o {
                        MobilityOption::FlowId(f) if f.status == 0 => Some(f.fid),
                        _ => None,
                    })
                    .collect(),
            )
        } else {
            BindingScope::WholeHomeAddress
        };
        (MnEvent::Bound { lifetime, scope }, None)
    }

    /// Retransmit the outstanding Binding Update when due, with a new sequence number
    /// (§11.8), or refresh a binding about to expire. Stops (returns `None`) when the tokens
    /// expired; then run the tests again ([`MnBinding::tests_needed`]).
    pub fn poll(&mut self, now: Instant) -> Option<Transmit> {
        if let MnState::Bound { refresh_at, .. } = &mut self.state {
            // Refresh the binding before it expires; without fresh tokens nothing is sent
            // and `tests_needed` says which tests to run before `send_update`.
            if refresh_at.is_some_and(|t| now >= t) {
                *refresh_at = None;
                return self.send(now, false).ok();
            }
            return None;
        }
        let MnState::Waiting {
            backoff, deletion, ..
        } = &mut self.state
        else {
            return None;
        };
        if !backoff.fire(now) {
            return None;
        }
        let (deletion, backoff) = (*deletion, *backoff);
        let seq = self.seq.wrapping_add(1);
        match self.build(now, seq, deletion) {
            Ok((t, kbm)) => {
                self.seq = seq;
                self.state = MnState::Waiting {
                    seq,
                    backoff,
                    kbm,
                    deletion,
                };
                Some(t)
            }
            Err(_) => {
                self.state = MnState::Idle;
                None
            }
        }
    }

    /// When to poll next: the retransmission deadline, or the refresh time of a binding.
    pub fn poll_at(&self) -> Option<Instant> {
        match &self.state {
            MnState::Waiting { backoff, .. } => Some(backoff.deadline),
            MnState::Bound { refresh_at, .. } => *refresh_at,
            MnState::Idle => None,
        }
    }

    /// The current retransmission timeout, if a BU is outstanding.
    pub fn current_timeout(&self) -> Option<Duration> {
        match &self.state {
            MnState::Waiting { backoff, .. } => Some(backoff.timeout),
            _ => None,
        }
    }
}

/// NTP-format timestamp (RFC 5905 §6: seconds since 1900 in the high 32 bits, fraction in the
/// low 32) from a duration since the Unix epoch, for RFC 4285 §6 replay protection.
pub fn ntp_from_unix(since_unix: Duration) -> u64 {
    const UNIX_TO_NTP: u64 = 2_208_988_800;
    let secs = since_unix.as_secs().wrapping_add(UNIX_TO_NTP);
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Home registration configuration (§11.7.1 with RFC 4285).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeRegConfig {
    /// Home address.
    pub home: Ipv6Addr,
    /// Care-of address.
    pub care_of: Ipv6Addr,
    /// Home agent address.
    pub ha: Ipv6Addr,
    /// RFC 4285 Mobility SPI of the MN-HA security association.
    pub spi: u32,
    /// MN-HA shared key.
    pub key: Vec<u8>,
    /// Requested lifetime.
    pub lifetime: Duration,
}

/// Outcome of a home registration BA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeRegEvent {
    /// Registered for this lifetime.
    Registered(Duration),
    /// Deregistered.
    Deregistered,
    /// Sequence number out of window: resent with the home agent's number + 1.
    Resynchronised(u16),
    /// Timestamp refused (144): resent with the home agent's clock offset applied.
    ClockResynchronised,
    /// Refused.
    Rejected(BaStatus),
    /// Not authentic or not matching.
    Ignored(&'static str),
}

/// A home registration (Binding Update List entry for the home agent).
#[derive(Debug, Clone)]
pub struct HomeRegistration {
    cfg: HomeRegConfig,
    seq: u16,
    pending: Option<(u16, u64, Backoff, bool)>,
    /// Home agent clock minus ours, in NTP units, learnt from a 144 BA (RFC 4285 §6).
    clock_offset: i64,
}

impl HomeRegistration {
    /// A registration whose first BU carries `next_sequence`.
    pub fn new(cfg: HomeRegConfig, next_sequence: u16) -> Self {
        HomeRegistration {
            cfg,
            seq: next_sequence.wrapping_sub(1),
            pending: None,
            clock_offset: 0,
        }
    }

    fn build(&self, seq: u16, timestamp: u64, deletion: bool) -> Transmit {
        // §6.1.7: lifetime 0 deletes the binding.
        let units = if deletion {
            0
        } else {
            lifetime_to_units(self.cfg.lifetime)
        };
        let mut repr = MhRepr::new(
            MhMessage::BindingUpdate(BindingUpdate::acked(seq, true, units)),
            vec![MobilityOption::ReplayProtection(timestamp)],
        );
        rr::sign_mn_ha(
            &mut repr,
            self.cfg.spi,
            &self.cfg.key,
            self.cfg.care_of,
            self.cfg.home,
        );
        let b = PacketBuilder::new(self.cfg.care_of, self.cfg.ha).with_hao(self.cfg.home);
        Transmit {
            src: self.cfg.care_of,
            dst: self.cfg.ha,
            packet: b.mh(&repr),
        }
    }

    /// Send a registration (or, with `deletion`, a deregistration). `wall` is the current
    /// NTP time for the replay-protection option ([`ntp_from_unix`]).
    pub fn send(&mut self, now: Instant, wall: u64, deletion: bool) -> Transmit {
        let wall = wall.wrapping_add_signed(self.clock_offset);
        self.seq = self.seq.wrapping_add(1);
        self.pending = Some((
            self.seq,
            wall,
            Backoff::start(now, INITIAL_BINDACK_TIMEOUT_FIRST_REG),
            deletion,
        ));
        self.build(self.seq, wall, deletion)
    }

    /// Retransmit when due (new sequence number and timestamp, §11.8).
    pub fn poll(&mut self, now: Instant, wall: u64) -> Option<Transmit> {
        let (_, _, mut b, deletion) = self.pending?;
        if !b.fire(now) {
            return None;
        }
        let wall = wall.wrapping_add_signed(self.clock_offset);
        self.seq = self.seq.wrapping_add(1);
        self.pending = Some((self.seq, wall, b, deletion));
        Some(self.build(self.seq, wall, deletion))
    }

    /// When to poll next.
    pub fn poll_at(&self) -> Option<Instant> {
        self.pending.map(|(_, _, b, _)| b.deadline)
    }

    /// Offer a received BA from the home agent (RFC 4285 §5: authenticated with the MN-HA
    /// key; §6: echoes our timestamp).
    pub fn on_mobility_header(
        &mut self,
        now: Instant,
        wall: u64,
        meta: MhMeta,
        mh: &[u8],
    ) -> (HomeRegEvent, Option<Transmit>) {
        let Some((seq, ts, _, deletion)) = self.pending else {
            return (HomeRegEvent::Ignored("nothing outstanding"), None);
        };
        if meta.effective_src() != self.cfg.ha || meta.effective_dst() != self.cfg.home {
            return (HomeRegEvent::Ignored("not from our home agent"), None);
        }
        let Ok(repr) = MhRepr::parse_verified(mh, meta.effective_src(), meta.effective_dst())
        else {
            return (HomeRegEvent::Ignored("malformed"), None);
        };
        let MhMessage::BindingAck(ba) = repr.message else {
            return (HomeRegEvent::Ignored("not a binding acknowledgement"), None);
        };
        if !rr::verify_mn_ha(mh, &self.cfg.key, self.cfg.care_of, self.cfg.home) {
            return (HomeRegEvent::Ignored("authenticator does not verify"), None);
        }
        let echoed = repr.find_option(|o| match o {
            MobilityOption::ReplayProtection(t) => Some(*t),
            _ => None,
        });
        if ba.status == BaStatus::SEQUENCE_OUT_OF_WINDOW {
            self.seq = ba.sequence;
            return (
                HomeRegEvent::Resynchronised(ba.sequence),
                Some(self.send(now, wall, deletion)),
            );
        }
        if ba.status == BaStatus::ID_MISMATCH && ba.sequence == seq {
            // RFC 4285 §6: the home agent put its own time in the BA; adopt the offset and
            // send again.
            let Some(ha_time) = echoed else {
                return (HomeRegEvent::Ignored("144 without a timestamp"), None);
            };
            self.clock_offset = ha_time.wrapping_sub(wall) as i64;
            return (
                HomeRegEvent::ClockResynchronised,
                Some(self.send(now, wall, deletion)),
            );
        }
        if ba.sequence != seq || echoed != Some(ts) {
            return (
                HomeRegEvent::Ignored("sequence or timestamp mismatch"),
                None,
            );
        }
        self.pending = None;
        if !ba.status.is_accepted() {
            return (HomeRegEvent::Rejected(ba.status), None);
        }
        if deletion {
            (HomeRegEvent::Deregistered, None)
        } else {
            (
                HomeRegEvent::Registered(units_to_lifetime(ba.lifetime)),
                None,
            )
        }
    }
}
