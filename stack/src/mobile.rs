//! The mobile-node role of a distributed-server node for its DS (home) address, as a
//! [`MobilityHook`]: return-routability tests, the Binding Update list entry towards a
//! correspondent with retransmission, acceptance of packets routed to the home address with a
//! type 2 routing header, and the Home Address option on what it sends (RFC 6275 §11).
//!
//! The seed's inversion: the *server* moves. The contact node (which receives the home
//! address's packets) runs the home test and exports the home keygen token as a
//! [`HomeTicket`]; the acceptor imports it, runs the care-of test itself and sends the
//! Binding Update. State sits behind a shared handle so the node's control logic can drive it
//! while the interface owns the hook.

use crate::hooks::{HaoVerdict, MhMeta, MobilityHook};
use crate::time::Instant;
use ds_mipv6::mn::{
    FlowRequest, HomeRegConfig, HomeRegEvent, HomeRegistration, HomeTicket, Keygen, MnBinding,
    MnBindingConfig, MnError, MnEvent, TestInit,
};
use ds_mipv6::rr::TokenKind;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    home: Option<Ipv6Addr>,
    care_of: Option<Ipv6Addr>,
    home_test: Option<TestInit>,
    coa_test: Option<TestInit>,
    home_kg: Option<Keygen>,
    coa_kg: Option<Keygen>,
    binding: Option<MnBinding>,
    events: Vec<MnEvent>,
    home_reg: Option<HomeRegistration>,
    home_reg_events: Vec<HomeRegEvent>,
    /// NTP wall time (RFC 4285 §6 timestamps) at `wall_at` on the interface clock: the caller
    /// supplies it once; the role derives later wall times from the interface clock.
    wall: Option<(u64, Instant)>,
    /// Packets produced outside a hook call (start of tests, BU), sent at the next poll.
    outbox: Vec<Vec<u8>>,
}

/// A handle on the mobile role; clone it, give one to the interface
/// ([`crate::Interface::set_mobility_hook`] with [`MobileRole::hook`]) and drive the other.
#[derive(Debug, Clone, Default)]
pub struct MobileRole {
    st: Arc<Mutex<State>>,
}

impl MobileRole {
    /// A role serving `home`; `care_of` is this node's own address when it serves the home
    /// address away from home (`None` on the contact node, which is "at home").
    pub fn new(home: Ipv6Addr, care_of: Option<Ipv6Addr>) -> Self {
        let r = MobileRole::default();
        {
            let mut s = r.lock();
            s.home = Some(home);
            s.care_of = care_of;
        }
        r
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hook to install on the interface.
    pub fn hook(&self) -> Box<dyn MobilityHook> {
        Box::new(self.clone())
    }

    /// Start the home test (HoTI from the home address) towards `cn`; sent at the next poll.
    /// RR may run before it is needed: tokens live for minutes (§5.2.7).
    pub fn start_home_test(&self, now: Instant, cn: Ipv6Addr, cookie: [u8; 8]) {
        let mut s = self.lock();
        let Some(home) = s.home else { return };
        let (t, tx) = TestInit::start(now, TokenKind::Home, home, cn, cookie);
        s.home_test = Some(t);
        s.outbox.push(tx.packet);
    }

    /// Start the care-of test (CoTI from our care-of address) towards `cn`.
    pub fn start_care_of_test(&self, now: Instant, cn: Ipv6Addr, cookie: [u8; 8]) {
        let mut s = self.lock();
        let Some(coa) = s.care_of else { return };
        let (t, tx) = TestInit::start(now, TokenKind::CareOf, coa, cn, cookie);
        s.coa_test = Some(t);
        s.outbox.push(tx.packet);
    }

    /// The home keygen token as a ticket for the acceptor, once the home test completed;
    /// `next_sequence` continues the Binding Update numbering towards this correspondent.
    pub fn home_ticket(&self, now: Instant, next_sequence: u16) -> Option<HomeTicket> {
        let s = self.lock();
        s.home_kg
            .as_ref()
            .map(|k| HomeTicket::export(k, now, next_sequence))
    }

    /// Whether the care-of test completed.
    pub fn has_care_of_token(&self) -> bool {
        self.lock().coa_kg.is_some()
    }

    /// Create the binding towards `cn` from a home ticket and our care-of token, and send the
    /// Binding Update (retransmitted with back-off until acknowledged, §11.8). The whole home
    /// address moves here.
    pub fn bind(
        &self,
        now: Instant,
        ticket: &HomeTicket,
        cn: Ipv6Addr,
        lifetime: Duration,
    ) -> Result<(), MnError> {
        self.bind_flows(now, ticket, cn, lifetime, None)
    }

    /// As [`MobileRole::bind`], but with `flows = Some((bid, flows))` only those connections
    /// move here (RFC 5648 binding identifier, RFC 6089 flow bindings), so different
    /// connections of one client can live on different nodes. Whether the correspondent
    /// honoured that or moved the whole home address is in the `Bound` event's scope.
    pub fn bind_flows(
        &self,
        now: Instant,
        ticket: &HomeTicket,
        cn: Ipv6Addr,
        lifetime: Duration,
        flows: Option<(u16, Vec<FlowRequest>)>,
    ) -> Result<(), MnError> {
        let mut s = self.lock();
        let (Some(home), Some(care_of)) = (s.home, s.care_of) else {
            return Err(MnError::WrongToken);
        };
        let cfg = MnBindingConfig {
            home,
            care_of,
            cn,
            lifetime,
            bid: flows.as_ref().map(|f| f.0),
            flows: flows.map(|f| f.1).unwrap_or_default(),
        };
        let mut b = MnBinding::from_ticket(cfg, ticket, now)?;
        let kg = s.coa_kg.ok_or(MnError::WrongToken)?;
        b.set_keygen(kg)?;
        let bu = b.send_update(now)?;
        s.outbox.push(bu.packet);
        s.binding = Some(b);
        Ok(())
    }

    /// Whether the correspondent acknowledged our binding and it has not expired.
    pub fn is_bound(&self, now: Instant) -> bool {
        self.lock()
            .binding
            .as_ref()
            .is_some_and(|b| b.is_bound(now))
    }

    /// Events from Binding Acknowledgements so far (drained).
    pub fn take_events(&self) -> Vec<MnEvent> {
        std::mem::take(&mut self.lock().events)
    }
}

impl State {
    fn wall_at(&self, now: Instant) -> u64 {
        match self.wall {
            Some((w, at)) => {
                // Elapsed time in NTP's 32.32 fixed point (RFC 5905 §6), no epoch shift.
                let d = now - at;
                let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
                w.wrapping_add((d.as_secs() << 32) | frac)
            }
            None => 0,
        }
    }
}

impl MobileRole {
    /// Register our care-of address for the home address at the home agent (RFC 6275 §11.7.1),
    /// authenticated with the RFC 4285 MN-HA option and protected against replay by an NTP
    /// timestamp; `wall_ntp` is the NTP wall time now. Retransmitted until acknowledged.
    pub fn register_home(
        &self,
        now: Instant,
        wall_ntp: u64,
        cfg: HomeRegConfig,
        next_sequence: u16,
    ) {
        let mut s = self.lock();
        s.wall = Some((wall_ntp, now));
        let mut reg = HomeRegistration::new(cfg, next_sequence);
        let bu = reg.send(now, wall_ntp, false);
        s.outbox.push(bu.packet);
        s.home_reg = Some(reg);
    }

    /// Outcomes of home registration so far (drained).
    pub fn take_home_events(&self) -> Vec<HomeRegEvent> {
        std::mem::take(&mut self.lock().home_reg_events)
    }
}

impl MobilityHook for MobileRole {
    fn on_mobility_header(&mut self, now: Instant, meta: MhMeta, mh: &[u8]) -> Vec<Vec<u8>> {
        let mut s = self.lock();
        let t = now;
        if let Some(k) = s
            .home_test
            .as_mut()
            .and_then(|x| x.on_mobility_header(t, meta, mh))
        {
            s.home_kg = Some(k);
        }
        if let Some(k) = s
            .coa_test
            .as_mut()
            .and_then(|x| x.on_mobility_header(t, meta, mh))
        {
            s.coa_kg = Some(k);
        }
        let mut out = Vec::new();
        let wall = s.wall_at(now);
        if let Some((ev, tx)) = s
            .home_reg
            .as_mut()
            .map(|r| r.on_mobility_header(t, wall, meta, mh))
        {
            if !matches!(ev, HomeRegEvent::Ignored(_)) {
                tracing::debug!(event = ?ev, "home registration");
                s.home_reg_events.push(ev);
            }
            out.extend(tx.map(|x| x.packet));
        }
        let ev = s
            .binding
            .as_mut()
            .map(|b| b.on_mobility_header(t, meta, mh));
        if let Some((ev, tx)) = ev {
            tracing::debug!(event = ?ev, "mobility header (mobile role)");
            out.extend(tx.map(|x| x.packet));
            s.events.push(ev);
        }
        out
    }

    fn on_home_address_option(
        &mut self,
        _now: Instant,
        _src: Ipv6Addr,
        _home: Ipv6Addr,
    ) -> HaoVerdict {
        // Accepting HAOs is the correspondent's job (the interface has one).
        HaoVerdict::Reject
    }

    fn on_type2_routing(&mut self, _now: Instant, dst: Ipv6Addr, home: Ipv6Addr) -> bool {
        let s = self.lock();
        s.home == Some(home) && s.care_of == Some(dst)
    }

    fn outgoing_from_home(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        _dst: Ipv6Addr,
    ) -> Option<Ipv6Addr> {
        let s = self.lock();
        let bound = s.binding.as_ref().is_some_and(|b| b.is_bound(now));
        if s.home == Some(src) && bound {
            s.care_of
        } else {
            None
        }
    }

    fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let t = now;
        let mut out = std::mem::take(&mut s.outbox);
        for test in [s.home_test.as_mut(), s.coa_test.as_mut()]
            .into_iter()
            .flatten()
        {
            out.extend(test.poll(t).map(|x| x.packet));
        }
        if let Some(b) = s.binding.as_mut() {
            out.extend(b.poll(t).map(|x| x.packet));
        }
        let wall = s.wall_at(now);
        if let Some(r) = s.home_reg.as_mut() {
            out.extend(r.poll(t, wall).map(|x| x.packet));
        }
        out
    }

    fn poll_at(&self) -> Option<Instant> {
        let s = self.lock();
        if !s.outbox.is_empty() {
            return Some(Instant::ZERO);
        }
        [
            s.home_test.as_ref().and_then(|t| t.poll_at()),
            s.coa_test.as_ref().and_then(|t| t.poll_at()),
            s.binding.as_ref().and_then(|b| b.poll_at()),
            s.home_reg.as_ref().and_then(|r| r.poll_at()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
