//! The mobile-node role of a distributed-server node for its DS (home) address, as a
//! [`MobilityHook`]: return-routability tests, the Binding Update list entry towards a
//! correspondent with retransmission, acceptance of packets routed to the home address with a
//! type 2 routing header, and the Home Address option on what it sends (RFC 6275 §11).
//!
//! The seed's inversion: the *server* moves. The contact node (which receives the home
//! address's packets) runs the home test and exports the home keygen token as a
//! [`HomeTicket`]; the acceptor imports it, runs the care-of test itself and sends the
//! Binding Update. The interface owns the role (it is its mobility hook) and the node drives it
//! through the interface (`Interface::mobility_hook_mut`): one owner, so nothing on the data
//! path takes a lock. It keeps what it knows per correspondent: tests, tokens, bindings and the
//! next Binding Update sequence number, which travels in the tickets so that a connection can
//! go back and forth (the node at home deregisters, RFC 6275 §11.5.4).

use crate::hooks::{MhMeta, MobilityHook};
use crate::time::Instant;
use ds_mipv6::mn::{
    FlowRequest, HomeRegConfig, HomeRegEvent, HomeRegistration, HomeTicket, Keygen, MnBinding,
    MnBindingConfig, MnError, MnEvent, TestInit,
};
use ds_mipv6::rr::TokenKind;
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

/// What the role knows of one correspondent (RFC 6275 §11.1: one Binding Update List entry,
/// and the return-routability state behind it).
#[derive(Debug, Default)]
struct Peer {
    home_test: Option<TestInit>,
    coa_test: Option<TestInit>,
    home_kg: Option<Keygen>,
    coa_kg: Option<Keygen>,
    binding: Option<MnBinding>,
    /// The sequence number the next Binding Update towards it carries (§9.5.1: it must grow
    /// across every node that speaks for the home address, so it travels in the tickets).
    next_sequence: u16,
    /// When the correspondent last acknowledged a Binding Update (a registration or a
    /// deregistration): the entry stays a while after, so that its owner sees the outcome
    /// ([`MobileRole::acknowledged_for`]) even when nothing else is left to remember.
    acked: Option<Instant>,
}

impl Peer {
    /// Nothing left to do or to remember for this correspondent at `now`: no test or Binding
    /// Update in flight, no live binding, no token still usable (§5.2.7). The entry can go,
    /// which keeps [`MAX_PEERS`] a bound on correspondents served at once, not ever seen.
    fn idle(&self, now: Instant) -> bool {
        let testing = [&self.home_test, &self.coa_test]
            .into_iter()
            .flatten()
            .any(|t| t.poll_at().is_some());
        let binding = self
            .binding
            .as_ref()
            .is_some_and(|b| b.is_bound(now) || b.poll_at().is_some());
        let tokens = [&self.home_kg, &self.coa_kg]
            .into_iter()
            .flatten()
            .any(|k| k.is_fresh(now));
        let acked = self
            .acked
            .is_some_and(|t| now.saturating_since(t) < ACK_KEPT);
        !(testing || binding || tokens || acked)
    }
}

/// Correspondents served at once, at most (a bound on state kept per remote host).
const MAX_PEERS: usize = 4096;

/// How long an acknowledged deregistration's entry is kept, with nothing else to remember:
/// a node at home that got a connection back without having run the home test itself (the
/// first receive queue adopts connections another accepted) would forget it at its next
/// poll, before its owner asked whether the correspondent acknowledged.
const ACK_KEPT: Duration = Duration::from_secs(10);

/// Events kept for [`MobileRole::take_events`] at most; older ones are dropped (an owner that
/// never takes them, and a correspondent that sends junk, cost no more than this).
const MAX_EVENTS: usize = 64;

#[derive(Debug, Default)]
struct State {
    home: Option<Ipv6Addr>,
    care_of: Option<Ipv6Addr>,
    /// Per correspondent, in address order (deterministic iteration).
    peers: BTreeMap<Ipv6Addr, Peer>,
    events: Vec<MnEvent>,
    home_reg: Option<HomeRegistration>,
    home_reg_events: Vec<HomeRegEvent>,
    /// NTP wall time (RFC 4285 §6 timestamps) at `wall_at` on the interface clock: the caller
    /// supplies it once; the role derives later wall times from the interface clock.
    wall: Option<(u64, Instant)>,
    /// Packets produced outside a hook call (start of tests, BU), sent at the next poll.
    outbox: Vec<Vec<u8>>,
}

impl State {
    /// The entry of `cn`, created if there is room.
    fn peer(&mut self, cn: Ipv6Addr) -> Option<&mut Peer> {
        if !self.peers.contains_key(&cn) && self.peers.len() >= MAX_PEERS {
            return None;
        }
        Some(self.peers.entry(cn).or_insert_with(|| Peer {
            next_sequence: 1,
            ..Default::default()
        }))
    }
}

/// The mobile role of a node for its DS address. The interface owns it
/// ([`crate::Interface::set_mobility_hook`]) and the node drives it through the interface
/// ([`crate::Interface::mobility_hook_mut`]): one owner, no lock on the data path.
#[derive(Debug)]
pub struct MobileRole {
    st: State,
    /// Random, per role: the cookie of a test is a keyed hash of the caller's (a counter, a
    /// connection number) and the correspondent, so that it is unpredictable as RFC 6275
    /// §6.1.3/§6.1.4 want, even to a correspondent that saw other cookies of this role (a
    /// guessed cookie lets a forged HoT/CoT replace the token, and the Binding Update built
    /// from it fails).
    cookie_key: ring::hmac::Key,
}

impl MobileRole {
    /// A role serving `home`; `care_of` is this node's own address when it serves the home
    /// address away from home (`None` on the contact node, which is "at home").
    pub fn new(home: Ipv6Addr, care_of: Option<Ipv6Addr>) -> Self {
        let st = State {
            home: Some(home),
            care_of,
            ..State::default()
        };
        MobileRole {
            st,
            cookie_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &crate::isn::random_secret()),
        }
    }

    /// The cookie a test towards `cn` started with `cookie` carries (see `cookie_key`).
    fn keyed(&self, cn: Ipv6Addr, cookie: [u8; 8]) -> [u8; 8] {
        let mut ctx = ring::hmac::Context::with_key(&self.cookie_key);
        ctx.update(&cn.octets());
        ctx.update(&cookie);
        let tag = ctx.sign();
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag.as_ref()[..8]);
        out
    }

    /// Whether this node serves the home address at home (the contact node).
    pub fn is_at_home(&self) -> bool {
        self.st.care_of.is_none()
    }

    /// Start the home test (HoTI from the home address) towards `cn`; sent at the next poll.
    /// RR may run before it is needed: tokens live for minutes (§5.2.7).
    pub fn start_home_test(&mut self, now: Instant, cn: Ipv6Addr, cookie: [u8; 8]) {
        let cookie = self.keyed(cn, cookie);
        let s = &mut self.st;
        let Some(home) = s.home else { return };
        let (t, tx) = TestInit::start(now, TokenKind::Home, home, cn, cookie);
        let Some(p) = s.peer(cn) else { return };
        p.home_test = Some(t);
        s.outbox.push(tx.packet);
    }

    /// Start the care-of test (CoTI from our care-of address) towards `cn`.
    pub fn start_care_of_test(&mut self, now: Instant, cn: Ipv6Addr, cookie: [u8; 8]) {
        let cookie = self.keyed(cn, cookie);
        let s = &mut self.st;
        let Some(coa) = s.care_of else { return };
        let (t, tx) = TestInit::start(now, TokenKind::CareOf, coa, cn, cookie);
        let Some(p) = s.peer(cn) else { return };
        p.coa_test = Some(t);
        s.outbox.push(tx.packet);
    }

    /// The home keygen token of the first correspondent whose home test completed, as a
    /// ticket for the acceptor with `next_sequence` (see [`MobileRole::ticket_for`] for a
    /// given correspondent, with the sequence number kept here).
    pub fn home_ticket(&self, now: Instant, next_sequence: u16) -> Option<HomeTicket> {
        let s = &self.st;
        s.peers
            .values()
            .find_map(|p| p.home_kg.as_ref())
            .map(|k| HomeTicket::export(k, now, next_sequence))
    }

    /// What another node needs to speak for the home address towards `cn` (RFC 6275 §5.2.5):
    /// a fresh home keygen token — from this node's own home test, or the one that came with
    /// the connection — and the next Binding Update sequence number. With `not_before`, only
    /// a token obtained at or after it (e.g. after the connection was opened: a correspondent
    /// that restarted since knows only newer tokens).
    pub fn ticket_for(
        &self,
        now: Instant,
        cn: Ipv6Addr,
        not_before: Option<Instant>,
    ) -> Option<HomeTicket> {
        let s = &self.st;
        let p = s.peers.get(&cn)?;
        let young = |obtained: Instant| not_before.is_none_or(|nb| obtained >= nb);
        let own = p
            .home_kg
            .filter(|k| k.is_fresh(now) && young(k.obtained))
            .map(|k| HomeTicket::export(&k, now, p.next_sequence));
        own.or_else(|| {
            p.binding
                .as_ref()
                .and_then(|b| b.ticket(now))
                .filter(|t| t.remaining > Duration::ZERO && young(t.import(now).obtained))
                .map(|mut t| {
                    t.next_sequence = next_after(t.next_sequence, p.next_sequence);
                    t
                })
        })
    }

    /// Whether any care-of test completed.
    pub fn has_care_of_token(&self) -> bool {
        self.st.peers.values().any(|p| p.coa_kg.is_some())
    }

    /// Whether a Binding Update towards `cn` can be built: a care-of keygen token is at hand
    /// and no care-of test is replacing it, or the node is at home (deregistration needs the
    /// home token alone, §5.2.5). A token being replaced is not used: a new test runs for a
    /// connection that arrives, since the correspondent may have restarted since the last.
    pub fn has_care_of_token_for(&self, now: Instant, cn: Ipv6Addr) -> bool {
        let s = &self.st;
        s.care_of.is_none()
            || s.peers.get(&cn).is_some_and(|p| {
                p.coa_kg.is_some_and(|k| k.is_fresh(now))
                    && !p.coa_test.as_ref().is_some_and(|t| t.is_pending())
            })
    }

    /// Create the binding towards `cn` from a home ticket and our care-of token, and send the
    /// Binding Update (retransmitted with back-off until acknowledged, §11.8). The whole home
    /// address moves here. At home (no care-of address) it is the deregistration of a mobile
    /// node returning home (§11.5.4): a Binding Update with lifetime 0 and the home address as
    /// care-of address, authorised by the home token alone (§5.2.5).
    pub fn bind(
        &mut self,
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
        &mut self,
        now: Instant,
        ticket: &HomeTicket,
        cn: Ipv6Addr,
        lifetime: Duration,
        flows: Option<(u16, Vec<FlowRequest>)>,
    ) -> Result<(), MnError> {
        let s = &mut self.st;
        let Some(home) = s.home else {
            return Err(MnError::WrongToken);
        };
        let at_home = s.care_of.is_none();
        let care_of = s.care_of.unwrap_or(home);
        let cfg = MnBindingConfig {
            home,
            care_of,
            cn,
            lifetime,
            bid: flows.as_ref().map(|f| f.0),
            flows: flows.map(|f| f.1).unwrap_or_default(),
        };
        let p = s.peer(cn).ok_or(MnError::WrongToken)?;
        let mut t = *ticket;
        t.next_sequence = next_after(ticket.next_sequence, p.next_sequence);
        let mut b = MnBinding::from_ticket(cfg, &t, now)?;
        let bu = if at_home {
            b.send_delete(now)?
        } else {
            let kg = p.coa_kg.ok_or(MnError::WrongToken)?;
            b.set_keygen(kg)?;
            b.send_update(now)?
        };
        p.next_sequence = b.next_sequence();
        p.binding = Some(b);
        s.outbox.push(bu.packet);
        Ok(())
    }

    /// The next sequence number of the binding towards `cn`, if there is one (it names the
    /// binding for [`MobileRole::release`]).
    pub fn binding_sequence(&self, cn: Ipv6Addr) -> Option<u16> {
        self.st
            .peers
            .get(&cn)
            .and_then(|p| p.binding.as_ref())
            .map(|b| b.next_sequence())
    }

    /// Forget the binding towards `cn` whose next sequence number is `seq` (its connection
    /// left this node; the node that took it speaks for the home address now): no more
    /// retransmissions or refreshes from here. A newer binding (the connection came back
    /// meanwhile) stays.
    pub fn release(&mut self, cn: Ipv6Addr, seq: u16) {
        if let Some(p) = self.st.peers.get_mut(&cn) {
            if p.binding.as_ref().is_some_and(|b| b.next_sequence() == seq) {
                if let Some(b) = p.binding.take() {
                    p.next_sequence = next_after(b.next_sequence(), p.next_sequence);
                }
            }
        }
    }

    /// Whether the correspondent acknowledged our binding and it has not expired.
    pub fn is_bound(&self, now: Instant) -> bool {
        self.st
            .peers
            .values()
            .any(|p| p.binding.as_ref().is_some_and(|b| b.is_bound(now)))
    }

    /// Whether the correspondent `cn` acknowledged our last Binding Update (a registration it
    /// holds, or a deregistration it applied).
    pub fn acknowledged_for(&self, now: Instant, cn: Ipv6Addr) -> bool {
        self.st
            .peers
            .get(&cn)
            .and_then(|p| p.binding.as_ref())
            .is_some_and(|b| {
                !b.is_waiting() && (b.is_bound(now) || b.config().care_of == b.config().home)
            })
    }

    /// Events from Binding Acknowledgements so far (drained).
    pub fn take_events(&mut self) -> Vec<MnEvent> {
        std::mem::take(&mut self.st.events)
    }
}

/// The later of two sequence numbers in the 16-bit sequence space (RFC 6275 §9.5.1).
fn next_after(a: u16, b: u16) -> u16 {
    if ds_mipv6::seq_less(a, b) {
        b
    } else {
        a
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
        &mut self,
        now: Instant,
        wall_ntp: u64,
        cfg: HomeRegConfig,
        next_sequence: u16,
    ) {
        let s = &mut self.st;
        s.wall = Some((wall_ntp, now));
        let mut reg = HomeRegistration::new(cfg, next_sequence);
        let bu = reg.send(now, wall_ntp, false);
        s.outbox.push(bu.packet);
        s.home_reg = Some(reg);
    }

    /// Outcomes of home registration so far (drained).
    pub fn take_home_events(&mut self) -> Vec<HomeRegEvent> {
        std::mem::take(&mut self.st.home_reg_events)
    }
}

impl MobilityHook for MobileRole {
    fn on_mobility_header(
        &mut self,
        now: Instant,
        meta: MhMeta,
        mh: &[u8],
    ) -> Option<Vec<Vec<u8>>> {
        let s = &mut self.st;
        let t = now;
        // Whether anything here expected the message (a test or Binding Update in flight, a
        // binding, the home registration): if not, a sibling serving another receive queue
        // may have (see `Interface::set_siblings`).
        let mut mine = false;
        // A HoT/CoT or a BA comes from the correspondent it is about.
        if let Some(p) = s.peers.get_mut(&meta.src) {
            if let Some(k) = p
                .home_test
                .as_mut()
                .and_then(|x| x.on_mobility_header(t, meta, mh))
            {
                p.home_kg = Some(k);
                mine = true;
            }
            if let Some(k) = p
                .coa_test
                .as_mut()
                .and_then(|x| x.on_mobility_header(t, meta, mh))
            {
                p.coa_kg = Some(k);
                mine = true;
            }
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
                if s.home_reg_events.len() >= MAX_EVENTS {
                    s.home_reg_events.remove(0);
                }
                s.home_reg_events.push(ev);
                mine = true;
            }
            out.extend(tx.map(|x| x.packet));
        }
        let ev = s
            .peers
            .get_mut(&meta.src)
            .and_then(|p| p.binding.as_mut())
            .map(|b| b.on_mobility_header(t, meta, mh));
        if let Some((ev, tx)) = ev {
            tracing::debug!(event = ?ev, "mobility header (mobile role)");
            out.extend(tx.map(|x| x.packet));
            mine |= !matches!(ev, MnEvent::Ignored(_));
            if matches!(ev, MnEvent::Bound { .. } | MnEvent::Deleted) {
                if let Some(p) = s.peers.get_mut(&meta.src) {
                    p.acked = Some(now);
                }
            }
            if s.events.len() >= MAX_EVENTS {
                s.events.remove(0);
            }
            s.events.push(ev);
        }
        (mine || !out.is_empty()).then_some(out)
    }

    fn on_type2_routing(&mut self, _now: Instant, dst: Ipv6Addr, home: Ipv6Addr) -> bool {
        let s = &self.st;
        s.home == Some(home) && s.care_of == Some(dst)
    }

    fn outgoing_from_home(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Option<Ipv6Addr> {
        // Runs for every outgoing frame: the cheap test first, the correspondent's lookup only
        // for traffic from the home address of a node away from home.
        let s = &self.st;
        if s.home != Some(src) {
            return None;
        }
        let care_of = s.care_of?;
        s.peers
            .get(&dst)
            .and_then(|p| p.binding.as_ref())
            .is_some_and(|b| b.is_bound(now))
            .then_some(care_of)
    }

    fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let s = &mut self.st;
        let t = now;
        let mut out = std::mem::take(&mut s.outbox);
        for p in s.peers.values_mut() {
            for test in [p.home_test.as_mut(), p.coa_test.as_mut()]
                .into_iter()
                .flatten()
            {
                out.extend(test.poll(t).map(|x| x.packet));
            }
            if let Some(b) = p.binding.as_mut() {
                out.extend(b.poll(t).map(|x| x.packet));
            }
        }
        s.peers.retain(|_, p| !p.idle(now));
        let wall = s.wall_at(now);
        if let Some(r) = s.home_reg.as_mut() {
            out.extend(r.poll(t, wall).map(|x| x.packet));
        }
        out
    }

    fn has_queued(&self) -> bool {
        !self.st.outbox.is_empty()
    }

    fn poll_at(&self) -> Option<Instant> {
        let s = &self.st;
        if !s.outbox.is_empty() {
            return Some(Instant::ZERO);
        }
        s.peers
            .values()
            .flat_map(|p| {
                [
                    p.home_test.as_ref().and_then(|t| t.poll_at()),
                    p.coa_test.as_ref().and_then(|t| t.poll_at()),
                    p.binding.as_ref().and_then(|b| b.poll_at()),
                ]
            })
            .chain([s.home_reg.as_ref().and_then(|r| r.poll_at())])
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_mipv6::mn::Keygen;

    #[test]
    fn a_correspondent_with_nothing_left_is_forgotten() {
        let (home, cn) = ("fd00::80".parse().unwrap(), "fd00::c".parse().unwrap());
        let mut role = MobileRole::new(home, None);
        let t0 = Instant::ZERO + Duration::from_secs(1);
        let kg = Keygen {
            kind: TokenKind::Home,
            addr: home,
            cn,
            nonce_index: 1,
            token: [7; 8],
            obtained: t0,
        };
        let p = role.st.peer(cn).expect("room");
        p.home_kg = Some(kg);
        // While its token is usable the entry stays (a handoff may still need it)...
        let _ = MobilityHook::poll(&mut role, t0 + Duration::from_secs(10));
        assert!(role.st.peers.contains_key(&cn));
        // ...and once nothing is left it goes, making room for another correspondent.
        let _ = MobilityHook::poll(&mut role, t0 + Duration::from_secs(211));
        assert!(role.st.peers.is_empty());
    }

    #[test]
    fn test_cookies_are_keyed_per_role() {
        let (home, coa, cn) = (
            "fd00::80".parse().unwrap(),
            "fd00::3".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        );
        let t0 = Instant::from_millis(1);
        let coti = |role: &mut MobileRole| {
            role.start_care_of_test(t0, cn, [0; 8]);
            MobilityHook::poll(role, t0).pop().expect("CoTI")
        };
        let (mut a, mut b) = (
            MobileRole::new(home, Some(coa)),
            MobileRole::new(home, Some(coa)),
        );
        // Same caller's cookie, same addresses: only the keyed cookie tells them apart.
        assert_ne!(
            coti(&mut a),
            coti(&mut b),
            "cookies predictable from the caller's"
        );
        // One role, the caller's cookies 1 and 2: nothing in common (a mask would leave all
        // but the low bytes equal). The cookie ends a HoTI (RFC 6275 §6.1.3, no options).
        let hoti = |role: &mut MobileRole, n: u64| {
            role.start_home_test(t0, cn, n.to_be_bytes());
            let p = MobilityHook::poll(role, t0).pop().expect("HoTI");
            p[p.len() - 8..].to_vec()
        };
        let (c1, c2) = (hoti(&mut a, 1), hoti(&mut a, 2));
        assert!(
            c1.iter().zip(&c2).filter(|(x, y)| x == y).count() < 6,
            "{c1:?} {c2:?}"
        );
    }
}
