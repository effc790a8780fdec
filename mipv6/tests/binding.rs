//! Mobile node ↔ correspondent node: return routability, Binding Update/Acknowledgement,
//! every rejection path, retransmission back-off, token shipping between nodes, flow bindings.

mod common;

use common::{binding_update, tampered};

use ds_mipv6::cn::{CnConfig, CnEvent, CnOutput, Correspondent, FlowKey, HaoCheck, RouteVia};
use ds_mipv6::consts::{MAX_BINDACK_TIMEOUT, MAX_NONCE_LIFETIME, MAX_RR_BINDING_LIFETIME};
use ds_mipv6::mn::{
    BindingScope, FlowRequest, HomeTicket, MnBinding, MnBindingConfig, MnEvent, TestInit,
};
use ds_mipv6::rr::{self, TokenKind};
use ds_mipv6::wire::{
    BaStatus, BeStatus, MhMessage, MhRepr, MobilityOption, PacketBuilder, ParsedIpv6, PortSelector,
};
use ds_mipv6::{Instant, MhMeta, Transmit};
use std::net::Ipv6Addr;
use std::time::Duration;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const HOME: &str = "fd00:d5::80";
const CN: &str = "fd00:cc::2";
const COA_A: &str = "fd00:a::1";
const COA_B: &str = "fd00:b::1";

fn cn(flow: bool) -> Correspondent {
    Correspondent::new(
        CnConfig {
            flow_bindings: flow,
            ..CnConfig::default()
        },
        [7; 20],
        [9; 32],
    )
}

fn cfg(coa: &str) -> MnBindingConfig {
    MnBindingConfig {
        home: a(HOME),
        care_of: a(coa),
        cn: a(CN),
        lifetime: Duration::from_secs(300),
        bid: None,
        flows: vec![],
    }
}

fn secs(s: i64) -> Instant {
    Instant::from_secs(s)
}

/// Run one test through the correspondent; return the token.
fn run_test(
    cn: &mut Correspondent,
    now: Instant,
    kind: TokenKind,
    addr: Ipv6Addr,
) -> ds_mipv6::mn::Keygen {
    let (mut t, init) = TestInit::start(now, kind, addr, a(CN), [kind as u8 + 1; 8]);
    let out = cn.on_packet(now, &init.packet);
    assert_eq!(out.event, CnEvent::TestAnswered);
    assert_eq!(out.transmit.len(), 1);
    let reply = &out.transmit[0];
    assert_eq!(reply.dst, addr);
    let (meta, mh) = MhMeta::from_packet(&reply.packet).unwrap();
    t.on_mobility_header(now, meta, mh).expect("token")
}

/// `cfg` for `coa` with a lifetime of `secs`.
fn cfg_lasting(coa: &str, secs: u64) -> MnBindingConfig {
    MnBindingConfig {
        lifetime: Duration::from_secs(secs),
        ..cfg(coa)
    }
}

/// A binding from `sequence` on with both keygen tokens from `cn`.
fn with_tokens(
    cn: &mut Correspondent,
    c: MnBindingConfig,
    sequence: u16,
    now: Instant,
) -> MnBinding {
    let mut b = MnBinding::new(c, sequence);
    tokens(cn, &mut b, now);
    b
}

/// A correspondent with flow bindings and a binding `c` from `sequence` with its tokens.
fn ready(c: MnBindingConfig, sequence: u16, now: Instant) -> (Correspondent, MnBinding) {
    let mut cn = cn(true);
    let b = with_tokens(&mut cn, c, sequence, now);
    (cn, b)
}

fn tokens(cn: &mut Correspondent, b: &mut MnBinding, now: Instant) {
    let home = b.config().home;
    let coa = b.config().care_of;
    b.set_keygen(run_test(cn, now, TokenKind::Home, home))
        .unwrap();
    b.set_keygen(run_test(cn, now, TokenKind::CareOf, coa))
        .unwrap();
}

fn to_mn(b: &mut MnBinding, now: Instant, t: &Transmit) -> (MnEvent, Option<Transmit>) {
    let (meta, mh) = MhMeta::from_packet(&t.packet).unwrap();
    b.on_mobility_header(now, meta, mh)
}

fn bind(cn: &mut Correspondent, b: &mut MnBinding, now: Instant) -> MnEvent {
    let bu = b.send_update(now).unwrap();
    let out = cn.on_packet(now, &bu.packet);
    assert_eq!(out.transmit.len(), 1, "{:?}", out.event);
    to_mn(b, now, &out.transmit[0]).0
}

/// `b` deletes its binding (of `bid`): the correspondent's answer.
fn delete(cn: &mut Correspondent, b: &mut MnBinding, now: Instant, bid: Option<u16>) -> CnOutput {
    let del = b.send_delete(now).unwrap();
    let out = cn.on_packet(now, &del.packet);
    let home = a(HOME);
    assert_eq!(out.event, CnEvent::BindingDeleted { home, bid });
    out
}

#[test]
fn rr_bu_ba_then_rh2_routing_and_hao_checks() {
    let now = secs(10);
    let (mut cn, mut b) = ready(cfg(COA_A), 1, now);
    let bu = b.send_update(now).unwrap();
    // The BU goes from the care-of address with the home address in an HAO (§11.7.2).
    let p = ParsedIpv6::parse(&bu.packet).unwrap();
    assert_eq!((p.src, p.dst, p.hao), (a(COA_A), a(CN), Some(a(HOME))));
    let out = cn.on_packet(now, &bu.packet);
    match &out.event {
        CnEvent::BindingUpdated {
            home,
            care_of,
            bid,
            lifetime,
            ..
        } => {
            assert_eq!((*home, *care_of, *bid), (a(HOME), a(COA_A), None));
            assert_eq!(*lifetime, Duration::from_secs(300));
        }
        e => panic!("{e:?}"),
    }
    // The BA goes to the care-of address with a type 2 routing header (§9.5.4).
    let ba = &out.transmit[0];
    let p = ParsedIpv6::parse(&ba.packet).unwrap();
    assert_eq!((p.dst, p.rh2), (a(COA_A), Some(a(HOME))));
    let (ev, _) = to_mn(&mut b, now, ba);
    assert_eq!(
        ev,
        MnEvent::Bound {
            lifetime: Duration::from_secs(300),
            scope: BindingScope::WholeHomeAddress
        }
    );
    assert!(b.is_bound(now));
    // Outgoing packets to the home address now take the RH2 to the care-of address.
    let r = cn.route_out(now, a(HOME), None).unwrap();
    assert_eq!((r.care_of, r.via), (a(COA_A), RouteVia::HomeAddress));
    assert!(cn.route_out(now, a("fd00::99"), None).is_none());
    // HAO from the bound care-of address is accepted; from elsewhere: Binding Error (§9.3.3).
    assert_eq!(
        cn.check_hao(now, a(CN), a(COA_A), a(HOME), false),
        HaoCheck::Accept
    );
    let HaoCheck::Reject(Some(be)) = cn.check_hao(now, a(CN), a(COA_B), a(HOME), false) else {
        panic!("expected a binding error")
    };
    assert_eq!(be.dst, a(COA_B));
    let (meta, mh) = MhMeta::from_packet(&be.packet).unwrap();
    assert_eq!(meta.rh2, None);
    let r = MhRepr::parse_verified(mh, meta.effective_src(), meta.effective_dst()).unwrap();
    assert_eq!(
        r.message,
        MhMessage::BindingError {
            status: BeStatus::UNKNOWN_BINDING,
            home: a(HOME)
        }
    );
    // Rate limited.
    assert_eq!(
        cn.check_hao(now, a(CN), a(COA_B), a(HOME), false),
        HaoCheck::Reject(None)
    );
    // A BU's own HAO is exempt.
    assert_eq!(
        cn.check_hao(now, a(CN), a(COA_B), a(HOME), true),
        HaoCheck::Accept
    );
    // A replayed BU (same sequence) gets 135.
    let out = cn.on_packet(now, &bu.packet);
    assert_eq!(
        out.event,
        CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
    );
    // Deletion.
    let out = delete(&mut cn, &mut b, now, None);
    assert_eq!(to_mn(&mut b, now, &out.transmit[0]).0, MnEvent::Deleted);
    assert!(cn.route_out(now, a(HOME), None).is_none());
    assert!(cn.is_empty());
    // The mobile node still using the HAO gets a Binding Error and learns the binding is gone.
    let later = now + Duration::from_secs(2);
    let HaoCheck::Reject(Some(be)) = cn.check_hao(later, a(CN), a(COA_A), a(HOME), false) else {
        panic!()
    };
    assert_eq!(
        to_mn(&mut b, later, &be).0,
        MnEvent::BindingError(BeStatus::UNKNOWN_BINDING)
    );
}

#[test]
fn wrong_authenticator_is_silently_discarded() {
    let now = secs(1);
    let (mut cn, mut b) = ready(cfg(COA_A), 1, now);
    let mut k = run_test(&mut cn, now, TokenKind::CareOf, a(COA_A));
    k.token[0] ^= 0x55;
    b.set_keygen(k).unwrap();
    let bu = b.send_update(now).unwrap();
    let out = cn.on_packet(now, &bu.packet);
    assert_eq!(
        out.event,
        CnEvent::Discarded("authenticator does not verify")
    );
    assert!(out.transmit.is_empty());
    // A flipped bit in a correctly signed BU (checksum recomputed) fails the same way.
    let mut b = with_tokens(&mut cn, cfg(COA_A), 1, now);
    let bu = b.send_update(now).unwrap();
    // Lifetime changed.
    let (meta, mut mh) = tampered(&bu.packet, |mh| mh[11] ^= 1);
    let out = cn.on_mobility_header(now, meta, &mh);
    assert_eq!(
        out.event,
        CnEvent::Discarded("authenticator does not verify")
    );
    // And a bad checksum is discarded before anything else.
    mh[4] ^= 1;
    assert_eq!(
        cn.on_mobility_header(now, meta, &mh).event,
        CnEvent::Discarded("bad checksum")
    );
    // A BU without an HAO-consistent home address: the HoA differs → token mismatch.
    let mut meta2 = meta;
    meta2.hao = Some(a("fd00:d5::81"));
    assert!(matches!(
        cn.on_mobility_header(now, meta2, &mh).event,
        CnEvent::Discarded(_)
    ));
}

#[test]
fn old_sequence_number_gets_135_and_the_mn_resynchronises() {
    let now = secs(5);
    let (mut cn, mut b) = ready(cfg(COA_A), 1000, now);
    assert!(matches!(bind(&mut cn, &mut b, now), MnEvent::Bound { .. }));
    // Another node starts from a stale number (no ticket).
    let mut b2 = with_tokens(&mut cn, cfg(COA_B), 7, now);
    let bu = b2.send_update(now).unwrap();
    let out = cn.on_packet(now, &bu.packet);
    assert_eq!(
        out.event,
        CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
    );
    let ba = MhRepr::parse(
        &ds_mipv6::wire::MhPacket::new_checked(
            MhMeta::from_packet(&out.transmit[0].packet).unwrap().1,
        )
        .unwrap(),
    )
    .unwrap();
    let MhMessage::BindingAck(ack) = ba.message else {
        panic!()
    };
    assert_eq!(
        ack.sequence, 1000,
        "BA 135 carries the last accepted number"
    );
    let (ev, resend) = to_mn(&mut b2, now, &out.transmit[0]);
    assert_eq!(ev, MnEvent::Resynchronised { cn_sequence: 1000 });
    let resend = resend.unwrap();
    let out = cn.on_packet(now, &resend.packet);
    assert!(matches!(out.event, CnEvent::BindingUpdated { care_of, .. } if care_of == a(COA_B)));
    assert!(matches!(
        to_mn(&mut b2, now, &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    assert_eq!(b2.next_sequence(), 1002);
    // Modulo 2^16: 65535 → 0 is an increase.
    let mut b3 = with_tokens(&mut cn, cfg(COA_A), 65535, now);
    let out = cn.on_packet(now, &b3.send_update(now).unwrap().packet);
    assert_eq!(
        out.event,
        CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW),
        "65535 is behind 1001"
    );
    let mut b4 = with_tokens(&mut cn, cfg(COA_A), 1001u16.wrapping_add(0x7fff), now);
    assert!(
        matches!(bind(&mut cn, &mut b4, now), MnEvent::Bound { .. }),
        "1001 + 2^15 - 1 is ahead"
    );
}

/// RFC 6275 §5.2.8: a Binding Update recorded and sent again after its binding was deleted,
/// or after it expired, while the nonces that authorised it are still accepted, finds no
/// binding — and would be accepted with any sequence number (§9.5.1) — unless the
/// correspondent remembers the last number: it answers 135, and the home address stays
/// unbound. A new registration with a greater number binds as usual, and once the nonces are
/// no longer accepted the number is forgotten.
#[test]
fn a_replayed_binding_update_binds_nothing_after_a_deletion_or_an_expiry() {
    let now = secs(5);
    let (mut cn, mut b) = ready(cfg_lasting(COA_A, 8), 40, now);
    let recorded = b.send_update(now).unwrap();
    let out = cn.on_packet(now, &recorded.packet);
    assert!(matches!(out.event, CnEvent::BindingUpdated { .. }));
    assert!(matches!(
        to_mn(&mut b, now, &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    // Deleted, then the recorded registration again.
    let later = now + Duration::from_secs(10);
    tokens(&mut cn, &mut b, later);
    delete(&mut cn, &mut b, later, None);
    let out = cn.on_packet(later, &recorded.packet);
    assert_eq!(
        out.event,
        CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
    );
    assert!(
        cn.route_out(later, a(HOME), None).is_none(),
        "bound again by a replay"
    );
    // The node registers again, with a greater number: bound.
    tokens(&mut cn, &mut b, later);
    let update = b.send_update(later).unwrap();
    let out = cn.on_packet(later, &update.packet);
    assert!(matches!(out.event, CnEvent::BindingUpdated { .. }));
    assert!(matches!(
        to_mn(&mut b, later, &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    // That binding expires (8 s); its Binding Update sent again is refused too.
    let expired = later + Duration::from_secs(60);
    cn.poll(expired);
    assert!(cn.route_out(expired, a(HOME), None).is_none());
    for bu in [&recorded, &update] {
        let out = cn.on_packet(expired, &bu.packet);
        assert_eq!(
            out.event,
            CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
        );
    }
    assert!(cn.route_out(expired, a(HOME), None).is_none());
    // Past MAX_NONCE_LIFETIME the number is forgotten (and the old nonces refused anyway).
    let gone = expired + MAX_NONCE_LIFETIME + Duration::from_secs(1);
    cn.poll(gone);
    let out = cn.on_packet(gone, &recorded.packet);
    assert!(
        matches!(out.event, CnEvent::Rejected(s) if s != BaStatus::SEQUENCE_OUT_OF_WINDOW),
        "{:?}",
        out.event
    );
}

#[test]
fn expired_nonce_indices_get_136_137_138() {
    for (expire_home, expire_coa, status) in [
        (true, false, BaStatus::EXPIRED_HOME_NONCE),
        (false, true, BaStatus::EXPIRED_CARE_OF_NONCE),
        (true, true, BaStatus::EXPIRED_NONCES),
    ] {
        let mut cn = cn(true);
        let mut b = MnBinding::new(cfg(COA_A), 1);
        let t0 = secs(0);
        let late = t0 + MAX_NONCE_LIFETIME + Duration::from_secs(10);
        // Tests in time order: the early ones first.
        let (mut hk, mut ck) = if expire_home {
            let hk = run_test(&mut cn, t0, TokenKind::Home, a(HOME));
            let ck = run_test(
                &mut cn,
                if expire_coa { t0 } else { late },
                TokenKind::CareOf,
                a(COA_A),
            );
            (hk, ck)
        } else {
            let ck = run_test(&mut cn, t0, TokenKind::CareOf, a(COA_A));
            let hk = run_test(&mut cn, late, TokenKind::Home, a(HOME));
            (hk, ck)
        };
        // Pretend the mobile node got them just now, so it still sends (the correspondent's
        // nonce is what expired).
        hk.obtained = late;
        ck.obtained = late;
        b.set_keygen(hk).unwrap();
        b.set_keygen(ck).unwrap();
        let bu = b.send_update(late).unwrap();
        let out = cn.on_packet(late, &bu.packet);
        assert_eq!(out.event, CnEvent::Rejected(status));
        let (ev, _) = to_mn(&mut b, late, &out.transmit[0]);
        assert_eq!(
            ev,
            MnEvent::NeedTests {
                home: expire_home,
                care_of: expire_coa
            }
        );
        assert_eq!(b.tests_needed(late), (expire_home, expire_coa));
    }
}

#[test]
fn over_long_lifetime_is_capped_to_max_rr_binding_lifetime() {
    let now = secs(3);
    let (mut cn, mut b) = ready(cfg_lasting(COA_A, 5000), 1, now);
    let ev = bind(&mut cn, &mut b, now);
    assert_eq!(
        ev,
        MnEvent::Bound {
            lifetime: MAX_RR_BINDING_LIFETIME,
            scope: BindingScope::WholeHomeAddress
        }
    );
    // The binding is gone after the granted lifetime.
    let later = now + MAX_RR_BINDING_LIFETIME;
    cn.poll(later);
    assert!(cn.route_out(later, a(HOME), None).is_none());
}

#[test]
fn home_registration_flag_at_a_correspondent_gets_131() {
    let mut cn = cn(true);
    let now = secs(1);
    let hk = run_test(&mut cn, now, TokenKind::Home, a(HOME));
    let ck = run_test(&mut cn, now, TokenKind::CareOf, a(COA_A));
    let kbm = rr::kbm(&hk.token, Some(&ck.token));
    let mut r = MhRepr::new(
        binding_update(1, true, 10),
        vec![MobilityOption::NonceIndices {
            home: hk.nonce_index,
            care_of: ck.nonce_index,
        }],
    );
    rr::sign_rr(&mut r, &kbm, a(COA_A), a(CN));
    let pkt = PacketBuilder::new(a(COA_A), a(CN)).with_hao(a(HOME)).mh(&r);
    assert_eq!(
        cn.on_packet(now, &pkt).event,
        CnEvent::Rejected(BaStatus::HOME_REG_NOT_SUPPORTED)
    );
    // Without nonce indices or authorization data: silently discarded (§9.5.1).
    r.options.clear();
    let pkt = PacketBuilder::new(a(COA_A), a(CN)).with_hao(a(HOME)).mh(&r);
    let out = cn.on_packet(now, &pkt);
    assert!(matches!(out.event, CnEvent::Discarded(_)) && out.transmit.is_empty());
    // Unknown MH type: Binding Error status 2 (§9.2).
    let u = MhRepr::new(
        MhMessage::Unknown {
            mh_type: 42,
            data: vec![0, 0],
        },
        vec![],
    );
    let out = cn.on_packet(now, &PacketBuilder::new(a(COA_A), a(CN)).mh(&u));
    assert_eq!(out.event, CnEvent::BindingError(BeStatus::UNKNOWN_MH_TYPE));
    assert_eq!(out.transmit.len(), 1);
}

#[test]
fn lost_binding_updates_are_retransmitted_with_exponential_backoff() {
    let mut cn = cn(true);
    let mut b = MnBinding::new(cfg(COA_A), 1);
    let t0 = secs(100);
    tokens(&mut cn, &mut b, t0);
    let first = b.send_update(t0).unwrap();
    let mut sent = vec![(t0, first)];
    let mut now = t0;
    // Simulated clock: step 100 ms at a time for 150 s, losing every BU.
    while now < t0 + Duration::from_secs(150) {
        now += Duration::from_millis(100);
        if let Some(t) = b.poll(now) {
            sent.push((now, t));
        }
    }
    let gaps: Vec<u64> = sent
        .windows(2)
        .map(|w| w[1].0.saturating_since(w[0].0).as_secs())
        .collect();
    assert_eq!(gaps, vec![1, 2, 4, 8, 16, 32, 32, 32]);
    assert_eq!(b.current_timeout(), Some(MAX_BINDACK_TIMEOUT));
    // Each retransmission carries a new sequence number (§11.8).
    let seqs: Vec<u16> = sent
        .iter()
        .map(|(_, t)| {
            let (m, mh) = MhMeta::from_packet(&t.packet).unwrap();
            match MhRepr::parse_verified(mh, m.effective_src(), m.effective_dst())
                .unwrap()
                .message
            {
                MhMessage::BindingUpdate(bu) => bu.sequence,
                _ => panic!(),
            }
        })
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<u16>>());
    // The last one gets through; the BA ends the retransmissions.
    let out = cn.on_packet(now, &sent.last().unwrap().1.packet);
    assert!(matches!(
        to_mn(&mut b, now, &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    assert_eq!(b.current_timeout(), None, "no retransmission outstanding");
    assert_eq!(
        b.poll_at(),
        Some(now + Duration::from_secs(300) - Duration::from_millis(37_500)),
        "next: the refresh, an eighth of the lifetime before expiry"
    );
    // An older BA (for seq 1) is ignored after that.
    let out_old = cn.on_packet(now, &sent[0].1.packet);
    assert_eq!(
        out_old.event,
        CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
    );
}

#[test]
fn home_token_and_sequence_ship_from_contact_node_to_acceptors() {
    // Contact node (clock epoch 0): home test, and it had bound the client before (seq 41).
    let t = secs(50);
    let (mut cn, mut contact) = ready(cfg(COA_A), 41, t);
    assert!(matches!(
        bind(&mut cn, &mut contact, t),
        MnEvent::Bound { .. }
    ));
    let ticket = contact.ticket(t + Duration::from_secs(20)).unwrap();
    assert_eq!(ticket.next_sequence, 42);
    assert_eq!(ticket.remaining, Duration::from_secs(190));
    let wire = postcard::to_allocvec(&ticket).unwrap();
    // Acceptor: different clock epoch (+1e6 s); runs only the care-of test.
    let back: HomeTicket = postcard::from_bytes(&wire).unwrap();
    let off = Duration::from_secs(1_000_000);
    let at = t + Duration::from_secs(20) + off;
    let mut acc = MnBinding::from_ticket(cfg(COA_B), &back, at).unwrap();
    assert_eq!(acc.tests_needed(at), (false, true));
    // The CN's clock is not the acceptor's: run the care-of test at CN time.
    let cn_now = t + Duration::from_secs(21);
    let mut ck = run_test(&mut cn, cn_now, TokenKind::CareOf, a(COA_B));
    ck.obtained = at;
    acc.set_keygen(ck).unwrap();
    let bu = acc.send_update(at).unwrap();
    let out = cn.on_packet(cn_now, &bu.packet);
    assert!(
        matches!(out.event, CnEvent::BindingUpdated { care_of, .. } if care_of == a(COA_B)),
        "{:?}",
        out.event
    );
    assert!(matches!(
        to_mn(&mut acc, at, &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    assert_eq!(
        cn.route_out(cn_now, a(HOME), None).unwrap().care_of,
        a(COA_B)
    );
    // The home token expires after MAX_TOKEN_LIFETIME on the acceptor too.
    assert_eq!(
        acc.tests_needed(at + Duration::from_secs(190)),
        (true, false)
    );
    assert!(back.remaining < Duration::from_secs(210));
}

#[test]
fn binding_refresh_request_before_expiry_of_a_used_binding() {
    let now = secs(0);
    let (mut cn, mut b) = ready(cfg(COA_A), 1, now);
    bind(&mut cn, &mut b, now);
    assert_eq!(cn.poll_at(), Some(now + Duration::from_secs(300)));
    cn.route_out(now, a(HOME), None).unwrap();
    let at = cn.poll_at().unwrap();
    assert_eq!(at, now + Duration::from_secs(280));
    assert!(cn.poll(at - Duration::from_secs(1)).is_empty());
    let brr = cn.poll(at);
    assert_eq!(brr.len(), 1);
    // To the home address, no routing header (§6.1).
    let (m, mh) = MhMeta::from_packet(&brr[0].packet).unwrap();
    assert_eq!((m.dst, m.rh2), (a(HOME), None));
    let r = MhRepr::parse_verified(mh, m.src, m.dst).unwrap();
    assert_eq!(r.message, MhMessage::BindingRefreshRequest);
    assert!(cn.poll(at).is_empty(), "one BRR per binding");
    // The mobile node answers a BRR with a fresh Binding Update (§11.7.4)...
    let mut cn_tokens_at = at;
    let (ev, bu) = to_mn(&mut b, at, &brr[0]);
    let bu = match (ev, bu) {
        (MnEvent::Refreshing, Some(bu)) => bu,
        // ...after new return-routability tests when its tokens are too old.
        (
            MnEvent::NeedTests {
                home: true,
                care_of: true,
            },
            None,
        ) => {
            cn_tokens_at = at + Duration::from_secs(1);
            tokens(&mut cn, &mut b, cn_tokens_at);
            b.send_update(cn_tokens_at).unwrap()
        }
        x => panic!("{x:?}"),
    };
    let out = cn.on_packet(cn_tokens_at, &bu.packet);
    assert!(matches!(out.event, CnEvent::BindingUpdated { .. }));
    assert!(matches!(
        to_mn(&mut b, cn_tokens_at, &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    assert!(cn
        .route_out(cn_tokens_at + Duration::from_secs(250), a(HOME), None)
        .is_some());
}

#[test]
fn flow_bindings_send_two_connections_of_one_client_to_two_nodes() {
    let mut cn = cn(true);
    let now = secs(10);
    let flow = |fid: u16, client_port: u16| FlowRequest {
        fid,
        priority: 1,
        selector: PortSelector::exact(client_port, 80, Some(6)),
    };
    let mut ca = cfg(COA_A);
    ca.bid = Some(1);
    ca.flows = vec![flow(10, 40000)];
    let mut cb = cfg(COA_B);
    cb.bid = Some(2);
    cb.flows = vec![flow(20, 40001)];
    let mut na = MnBinding::new(ca, 1);
    let mut nb = MnBinding::new(cb, 1);
    tokens(&mut cn, &mut na, now);
    tokens(&mut cn, &mut nb, now);
    assert_eq!(
        bind(&mut cn, &mut na, now),
        MnEvent::Bound {
            lifetime: Duration::from_secs(300),
            scope: BindingScope::Flows(vec![10])
        }
    );
    assert_eq!(
        bind(&mut cn, &mut nb, now),
        MnEvent::Bound {
            lifetime: Duration::from_secs(300),
            scope: BindingScope::Flows(vec![20])
        }
    );
    let key = |p| FlowKey {
        next_header: 6,
        local_port: p,
        remote_port: 80,
    };
    // The care-of address the connection from client port `p` goes to, if any.
    let owner =
        |cn: &mut Correspondent, p| cn.route_out(now, a(HOME), Some(key(p))).map(|r| r.care_of);
    let r1 = cn.route_out(now, a(HOME), Some(key(40000))).unwrap();
    let r2 = cn.route_out(now, a(HOME), Some(key(40001))).unwrap();
    assert_eq!(
        (r1.care_of, r1.via),
        (a(COA_A), RouteVia::Flow { fid: 10, bid: 1 })
    );
    assert_eq!(
        (r2.care_of, r2.via),
        (a(COA_B), RouteVia::Flow { fid: 20, bid: 2 })
    );
    // A third connection has no flow binding and no plain binding: via the home agent.
    assert_eq!(owner(&mut cn, 40002), None);
    // The same decision on whole packets (TCP headers: ports first).
    let tcp = |sport: u16| {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&80u16.to_be_bytes());
        h[12] = 5 << 4;
        PacketBuilder::new(a(CN), a(HOME)).payload(6, &h)
    };
    let (r, out) = cn.rewrite_outgoing(now, &tcp(40001)).unwrap();
    assert_eq!(r.care_of, a(COA_B));
    let p = ParsedIpv6::parse(&out).unwrap();
    assert_eq!((p.dst, p.rh2, p.upper_proto), (a(COA_B), Some(a(HOME)), 6));
    assert!(cn.rewrite_outgoing(now, &tcp(40002)).is_none());
    assert!(cn.rewrite_outgoing(now, &out).is_none(), "already routed");
    // Both nodes may use the HAO.
    for coa in [COA_A, COA_B] {
        assert_eq!(
            cn.check_hao(now, a(CN), a(coa), a(HOME), false),
            HaoCheck::Accept
        );
    }
    // Node A moves a second connection to itself, then lets its first one go: flows of its
    // BID left out of its next BU are removed (RFC 6089 §5), node B's are untouched.
    na.set_flows(vec![flow(10, 40000), flow(11, 40003)]);
    assert_eq!(
        bind(&mut cn, &mut na, now),
        MnEvent::Bound {
            lifetime: Duration::from_secs(300),
            scope: BindingScope::Flows(vec![10, 11])
        }
    );
    assert_eq!(owner(&mut cn, 40003), Some(a(COA_A)));
    na.set_flows(vec![flow(11, 40003)]);
    bind(&mut cn, &mut na, now);
    assert_eq!(owner(&mut cn, 40000), None);
    assert_eq!(owner(&mut cn, 40003), Some(a(COA_A)));
    assert_eq!(owner(&mut cn, 40001), Some(a(COA_B)));
    na.set_flows(vec![flow(10, 40000)]);
    bind(&mut cn, &mut na, now);
    // Node B deletes its BID: its flow goes with it.
    delete(&mut cn, &mut nb, now, Some(2));
    assert_eq!(owner(&mut cn, 40001), None);
    assert_eq!(owner(&mut cn, 40000), Some(a(COA_A)));

    // A correspondent without RFC 5648/6089: the whole home address moves, and the MN knows.
    let mut plain = cn_plain();
    let mut ca = cfg(COA_A);
    ca.bid = Some(1);
    ca.flows = vec![flow(10, 40000)];
    let mut na = with_tokens(&mut plain, ca, 1, now);
    assert_eq!(
        bind(&mut plain, &mut na, now),
        MnEvent::Bound {
            lifetime: Duration::from_secs(300),
            scope: BindingScope::WholeHomeAddress
        }
    );
    let r = plain.route_out(now, a(HOME), Some(key(40001))).unwrap();
    assert_eq!((r.care_of, r.via), (a(COA_A), RouteVia::HomeAddress));
}

fn cn_plain() -> Correspondent {
    cn(false)
}

#[test]
fn nonces_rotate_every_30_s_and_expire_after_max_nonce_lifetime() {
    let mut t = ds_mipv6::rr::NonceTable::new([1; 20], [2; 32]);
    let (i0, n0) = t.current(secs(0));
    assert_eq!(t.current(secs(29)), (i0, n0));
    let (i1, n1) = t.current(secs(30));
    assert_ne!((i1, n1), (i0, n0));
    assert_eq!(t.lookup(i0, secs(239)), Some(n0));
    t.refresh(secs(240));
    assert_eq!(t.lookup(i0, secs(240)), None, "MAX_NONCE_LIFETIME");
    assert_eq!(t.lookup(i1, secs(240)), Some(n1));
    // A token from the newest nonce stays valid for all of MAX_TOKEN_LIFETIME.
    let (i, _) = t.current(secs(1000));
    t.refresh(secs(1029));
    assert!(t
        .token(a(HOME), i, TokenKind::Home, secs(1029 + 210))
        .is_some());
}

#[test]
fn a_full_binding_cache_answers_130() {
    let mut cn = Correspondent::new(
        CnConfig {
            max_entries: 1,
            ..CnConfig::default()
        },
        [7; 20],
        [9; 32],
    );
    let now = secs(1);
    let mut b = with_tokens(&mut cn, cfg(COA_A), 1, now);
    assert!(matches!(bind(&mut cn, &mut b, now), MnEvent::Bound { .. }));
    let mut other = cfg(COA_B);
    other.home = a("fd00:d5::81");
    let mut b2 = with_tokens(&mut cn, other, 1, now);
    assert_eq!(
        bind(&mut cn, &mut b2, now),
        MnEvent::Rejected(BaStatus::INSUFFICIENT_RESOURCES)
    );
}

#[test]
fn a_bound_mobile_node_refreshes_before_expiry() {
    let now = secs(0);
    let (mut cn, mut b) = ready(cfg_lasting(COA_A, 160), 1, now);
    bind(&mut cn, &mut b, now);
    // 160 s lifetime: refresh with 20 s left, while the tokens (210 s) are still fresh.
    assert_eq!(b.poll_at(), Some(secs(140)));
    assert!(b.poll(secs(139)).is_none());
    let bu = b.poll(secs(140)).expect("refresh");
    let out = cn.on_packet(secs(140), &bu.packet);
    assert!(matches!(out.event, CnEvent::BindingUpdated { .. }));
    assert!(matches!(
        to_mn(&mut b, secs(140), &out.transmit[0]).0,
        MnEvent::Bound { .. }
    ));
    // The next refresh falls after the tokens expired: nothing is sent, tests are due.
    assert_eq!(b.poll_at(), Some(secs(280)));
    assert!(b.poll(secs(280)).is_none());
    assert_eq!(b.tests_needed(secs(280)), (true, true));
    assert_eq!(b.poll_at(), None);
}

/// A correspondent that never answers is not probed forever: a HoTI/CoTI is retransmitted
/// with the Binding Update's back-off (§11.8) for MAX_TOKEN_LIFETIME, then the test gives up
/// (a token that came later would serve no Binding Update that needed it).
#[test]
fn an_unanswered_test_gives_up_after_the_token_lifetime() {
    use ds_mipv6::consts::MAX_TOKEN_LIFETIME;
    let t0 = secs(100);
    let (mut t, _) = TestInit::start(t0, TokenKind::CareOf, a(COA_A), a(CN), [3; 8]);
    let mut sent = 1;
    let mut last = t0;
    let mut now = t0;
    while now < t0 + Duration::from_secs(600) {
        if t.poll(now).is_some() {
            sent += 1;
            last = now;
        }
        now += Duration::from_millis(100);
    }
    assert!(!t.is_pending(), "still testing after 600 s");
    assert_eq!(t.poll_at(), None);
    assert!(
        last.saturating_since(t0) < MAX_TOKEN_LIFETIME,
        "a retransmission after the token lifetime"
    );
    // 1, 2, 4, 8, 16, 32 s, then every 32 s until 210 s: 10 transmissions in all.
    assert!((8..=12).contains(&sent), "{sent} transmissions");
}

/// A correspondent with `f` applied to its default settings.
fn cn_with(f: impl FnOnce(&mut CnConfig)) -> Correspondent {
    let mut c = CnConfig::default();
    f(&mut c);
    Correspondent::new(c, [7; 20], [9; 32])
}

/// RFC 5648 binding identifiers are bounded per home address (`max_bids_per_home`), as home
/// addresses are (`max_entries`): one more gets status 130, and those held still refresh.
#[test]
fn a_home_address_holds_at_most_its_share_of_binding_identifiers() {
    let mut cn = cn_with(|c| c.max_bids_per_home = 2);
    let now = secs(1);
    let with_bid = |coa: &str, bid: u16| MnBindingConfig {
        bid: Some(bid),
        ..cfg(coa)
    };
    let mut b1 = with_tokens(&mut cn, with_bid(COA_A, 1), 1, now);
    let mut b2 = with_tokens(&mut cn, with_bid(COA_B, 2), 1, now);
    assert!(matches!(bind(&mut cn, &mut b1, now), MnEvent::Bound { .. }));
    assert!(matches!(bind(&mut cn, &mut b2, now), MnEvent::Bound { .. }));
    let mut b3 = with_tokens(&mut cn, with_bid("fd00:c::1", 3), 1, now);
    assert_eq!(
        bind(&mut cn, &mut b3, now),
        MnEvent::Rejected(BaStatus::INSUFFICIENT_RESOURCES)
    );
    let later = now + Duration::from_secs(10);
    tokens(&mut cn, &mut b1, later);
    assert!(matches!(
        bind(&mut cn, &mut b1, later),
        MnEvent::Bound { .. }
    ));
}

/// Home Address options from many spoofed sources (§9.3.1) get Binding Errors within the
/// budget of `be_per_sec` a second for all of them together (§9.3.3), not one each: the
/// flood's answers, and the state kept for them, stay bounded.
#[test]
fn binding_errors_to_spoofed_sources_stay_within_the_budget() {
    let mut cn = cn_with(|c| c.be_per_sec = 100);
    let errors = |cn: &mut Correspondent, now: Instant, from: u32| {
        (from..from + 10_000)
            .filter(|i| {
                let src = Ipv6Addr::from(0xfd00_00ee_u128 << 96 | u128::from(*i));
                matches!(
                    cn.check_hao(now, a(CN), src, a(HOME), false),
                    HaoCheck::Reject(Some(_))
                )
            })
            .count()
    };
    let now = secs(3);
    assert_eq!(errors(&mut cn, now, 0), 100);
    assert_eq!(
        errors(&mut cn, now + Duration::from_millis(500), 10_000),
        0,
        "the same second"
    );
    assert_eq!(
        errors(&mut cn, now + Duration::from_secs(1), 20_000),
        100,
        "the next second"
    );
}

/// With the retired sequence numbers full (`max_entries`), the number forgotten first is the
/// oldest: the later deletions' Binding Updates replayed are still refused (§5.2.8).
#[test]
fn the_oldest_retired_number_is_forgotten_first() {
    let mut cn = cn_with(|c| c.max_entries = 2);
    let mut recorded = Vec::new();
    for (k, home) in ["fd00:d5::81", "fd00:d5::82", "fd00:d5::83"]
        .into_iter()
        .enumerate()
    {
        let now = secs(10 + 10 * k as i64);
        let mut b = with_tokens(
            &mut cn,
            MnBindingConfig {
                home: a(home),
                ..cfg(COA_A)
            },
            1,
            now,
        );
        let bu = b.send_update(now).unwrap();
        let out = cn.on_packet(now, &bu.packet);
        assert!(
            matches!(out.event, CnEvent::BindingUpdated { .. }),
            "{home}"
        );
        to_mn(&mut b, now, &out.transmit[0]);
        let later = now + Duration::from_secs(1);
        tokens(&mut cn, &mut b, later);
        let del = b.send_delete(later).unwrap();
        let out = cn.on_packet(later, &del.packet);
        assert!(
            matches!(out.event, CnEvent::BindingDeleted { .. }),
            "{home}"
        );
        recorded.push((home, bu));
    }
    let now = secs(45);
    for (home, bu) in &recorded[1..] {
        let out = cn.on_packet(now, &bu.packet);
        assert_eq!(
            out.event,
            CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW),
            "{home} remembered"
        );
    }
    let (home, bu) = &recorded[0];
    let out = cn.on_packet(now, &bu.packet);
    assert_ne!(
        out.event,
        CnEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW),
        "{home}: the oldest is forgotten"
    );
}

/// Home Test Inits from many spoofed sources are answered within `tests_per_sec` a second for
/// all of them together (each answer costs a keyed hash and goes wherever the source says).
#[test]
fn test_inits_from_spoofed_sources_are_answered_within_the_budget() {
    let mut cn = cn_with(|c| c.tests_per_sec = 50);
    let answered = |cn: &mut Correspondent, now: Instant, from: u32| {
        (from..from + 1000)
            .filter(|i| {
                let src = Ipv6Addr::from(0xfd00_00ee_u128 << 96 | u128::from(*i));
                let (_, init) = TestInit::start(now, TokenKind::Home, src, a(CN), [1; 8]);
                cn.on_packet(now, &init.packet).event == CnEvent::TestAnswered
            })
            .count()
    };
    let now = secs(3);
    assert_eq!(answered(&mut cn, now, 0), 50);
    assert_eq!(answered(&mut cn, now + Duration::from_secs(1), 1000), 50);
}
