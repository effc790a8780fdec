//! Home registration at our home agent, authenticated per RFC 4285; forged, replayed and
//! stale registrations are refused; interception/tunnelling decisions.

mod common;

use common::{binding_update, tampered};

use ds_mipv6::ha::{HaConfig, HaEvent, HomeAgent, MnHaSa};
use ds_mipv6::mn::{ntp_from_unix, HomeRegConfig, HomeRegEvent, HomeRegistration};
use ds_mipv6::rr;
use ds_mipv6::wire::packet::{decapsulate, encapsulate, ParsedIpv6};
use ds_mipv6::wire::{BaStatus, MhMessage, MhRepr, MobilityOption, PacketBuilder};
use ds_mipv6::{Instant, MhMeta, Transmit};
use std::net::Ipv6Addr;
use std::time::Duration;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const KEY: &[u8] = b"per-node MN-HA key, 20+ octets";

/// Registration of fd00:d5::80 from `care_of` with the home agent fd00:aa::1, for 600 s.
fn reg_config(care_of: &str, spi: u32, key: &[u8]) -> HomeRegConfig {
    HomeRegConfig {
        home: a("fd00:d5::80"),
        care_of: a(care_of),
        ha: a("fd00:aa::1"),
        spi,
        key: key.to_vec(),
        lifetime: Duration::from_secs(600),
    }
}

fn setup() -> (HomeAgent, HomeRegistration) {
    let mut ha = HomeAgent::new(HaConfig::new(a("fd00:aa::1")));
    ha.add_sa(MnHaSa {
        spi: 0x1001,
        key: KEY.to_vec(),
        home: a("fd00:d5::80"),
    })
    .unwrap();
    let reg = HomeRegistration::new(reg_config("fd00:a::1", 0x1001, KEY), 1);
    (ha, reg)
}

fn wall(s: u64) -> u64 {
    ntp_from_unix(Duration::from_secs(1_750_000_000 + s))
}

fn to_mn(
    reg: &mut HomeRegistration,
    now: Instant,
    w: u64,
    t: &Transmit,
) -> (HomeRegEvent, Option<Transmit>) {
    let (m, mh) = MhMeta::from_packet(&t.packet).unwrap();
    reg.on_mobility_header(now, w, m, mh)
}

fn ba_status(t: &Transmit) -> BaStatus {
    let (m, mh) = MhMeta::from_packet(&t.packet).unwrap();
    match MhRepr::parse_verified(mh, m.effective_src(), m.effective_dst())
        .unwrap()
        .message
    {
        MhMessage::BindingAck(b) => b.status,
        m => panic!("{m:?}"),
    }
}

#[test]
fn authenticated_registration_then_tunnelling() {
    let (mut ha, mut reg) = setup();
    let now = Instant::from_secs(1);
    let bu = reg.send(now, wall(1), false);
    let p = ParsedIpv6::parse(&bu.packet).unwrap();
    assert_eq!(
        (p.src, p.dst, p.hao),
        (a("fd00:a::1"), a("fd00:aa::1"), Some(a("fd00:d5::80")))
    );
    let out = ha.on_packet(now, wall(1), &bu.packet);
    assert_eq!(
        out.event,
        HaEvent::Registered {
            home: a("fd00:d5::80"),
            care_of: a("fd00:a::1"),
            lifetime: Duration::from_secs(600)
        }
    );
    let p = ParsedIpv6::parse(&out.transmit[0].packet).unwrap();
    assert_eq!((p.dst, p.rh2), (a("fd00:a::1"), Some(a("fd00:d5::80"))));
    assert_eq!(
        to_mn(&mut reg, now, wall(1), &out.transmit[0]).0,
        HomeRegEvent::Registered(Duration::from_secs(600))
    );
    // Interception and tunnelling decisions.
    assert_eq!(ha.care_of(now, a("fd00:d5::80")), Some(a("fd00:a::1")));
    assert!(ha.proxy_nd(now, a("fd00:d5::80")));
    assert!(!ha.proxy_nd(now, a("fd00:d5::81")));
    let client = PacketBuilder::new(a("fd00:c1::2"), a("fd00:d5::80")).payload(59, &[]);
    let t = ha.tunnel(now, &client).unwrap();
    assert_eq!(t.dst, a("fd00:a::1"));
    let (s, d, inner) = decapsulate(&t.packet).unwrap();
    assert_eq!(
        (s, d, inner),
        (a("fd00:aa::1"), a("fd00:a::1"), &client[..])
    );
    assert!(ha
        .tunnel(
            now,
            &PacketBuilder::new(a("fd00:c1::2"), a("fd00:d5::81")).payload(59, &[])
        )
        .is_none());
    // Reverse tunnel: accepted only from the registered care-of address.
    let reply = PacketBuilder::new(a("fd00:d5::80"), a("fd00:c1::2")).payload(59, &[]);
    let rt = encapsulate(a("fd00:a::1"), a("fd00:aa::1"), &reply);
    assert_eq!(ha.reverse_tunnel(now, &rt), Some(&reply[..]));
    let spoof = encapsulate(a("fd00:b::1"), a("fd00:aa::1"), &reply);
    assert_eq!(ha.reverse_tunnel(now, &spoof), None);
    // Expiry.
    let later = now + Duration::from_secs(600);
    ha.poll(later);
    assert_eq!(ha.care_of(later, a("fd00:d5::80")), None);
}

#[test]
fn forged_registration_is_refused() {
    let (mut ha, _) = setup();
    let mut forger = HomeRegistration::new(reg_config("fd00:666::1", 0x1001, b"guessed key"), 100);
    let now = Instant::from_secs(1);
    let bu = forger.send(now, wall(1), false);
    let out = ha.on_packet(now, wall(1), &bu.packet);
    assert_eq!(out.event, HaEvent::Rejected(BaStatus::AUTH_FAIL));
    assert_eq!(ba_status(&out.transmit[0]), BaStatus::AUTH_FAIL);
    assert_eq!(ha.care_of(now, a("fd00:d5::80")), None);
    // The forger cannot even trust the reply: it is not signed with its key.
    assert!(matches!(
        to_mn(&mut forger, now, wall(1), &out.transmit[0]).0,
        HomeRegEvent::Ignored(_)
    ));
    // Unknown SPI and a tampered (re-checksummed) genuine BU fail the same way.
    let (_, mut reg) = setup();
    let bu = reg.send(now, wall(1), false);
    // Lifetime changed.
    let (meta, mh) = tampered(&bu.packet, |mh| mh[11] ^= 0xff);
    assert_eq!(
        ha.on_mobility_header(now, wall(1), meta, &mh).event,
        HaEvent::Rejected(BaStatus::AUTH_FAIL)
    );
    // Another SA's key cannot register this home address (133).
    ha.add_sa(MnHaSa {
        spi: 0x2002,
        key: b"node 9 key".to_vec(),
        home: a("fd00:d5::99"),
    })
    .unwrap();
    let mut other = HomeRegistration::new(reg_config("fd00:9::1", 0x2002, b"node 9 key"), 1);
    let out = ha.on_packet(now, wall(1), &other.send(now, wall(1), false).packet);
    assert_eq!(out.event, HaEvent::Rejected(BaStatus::NOT_HOME_AGENT));
}

#[test]
fn replayed_or_stale_registrations_are_refused() {
    let (mut ha, mut reg) = setup();
    let now = Instant::from_secs(1);
    let bu = reg.send(now, wall(1), false);
    assert!(matches!(
        ha.on_packet(now, wall(1), &bu.packet).event,
        HaEvent::Registered { .. }
    ));
    // The same packet again (an attacker replaying it), even within the window: 144.
    let out = ha.on_packet(now, wall(2), &bu.packet);
    assert_eq!(out.event, HaEvent::Rejected(BaStatus::ID_MISMATCH));
    // Replayed much later: outside the timestamp window, 144 too.
    let out = ha.on_packet(now, wall(100), &bu.packet);
    assert_eq!(out.event, HaEvent::Rejected(BaStatus::ID_MISMATCH));
    // The 144 BA carries the HA's own time for the MN to resynchronise (RFC 4285 §6).
    let (m, mh) = MhMeta::from_packet(&out.transmit[0].packet).unwrap();
    let r = MhRepr::parse_verified(mh, m.effective_src(), m.effective_dst()).unwrap();
    assert!(r
        .options
        .contains(&MobilityOption::ReplayProtection(wall(100))));
    // A fresh timestamp but an old sequence number: 135 with the last accepted number, and
    // the registration resynchronises.
    let mut stale = HomeRegistration::new(reg_config("fd00:b::1", 0x1001, KEY), 0);
    let bu = stale.send(now, wall(10), false);
    let out = ha.on_packet(now, wall(10), &bu.packet);
    assert_eq!(
        out.event,
        HaEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
    );
    let (ev, resend) = to_mn(&mut stale, now, wall(11), &out.transmit[0]);
    assert_eq!(ev, HomeRegEvent::Resynchronised(1));
    let out = ha.on_packet(now, wall(11), &resend.unwrap().packet);
    assert!(matches!(out.event, HaEvent::Registered { care_of, .. } if care_of == a("fd00:b::1")));
    // Missing replay protection option: 145.
    let mut r = MhRepr::new(binding_update(50, true, 10), vec![]);
    rr::sign_mn_ha(&mut r, 0x1001, KEY, a("fd00:a::1"), a("fd00:d5::80"));
    let pkt = PacketBuilder::new(a("fd00:a::1"), a("fd00:aa::1"))
        .with_hao(a("fd00:d5::80"))
        .mh(&r);
    assert_eq!(
        ha.on_packet(now, wall(12), &pkt).event,
        HaEvent::Rejected(BaStatus::MESG_ID_REQUIRED)
    );
    // Deregistration.
    let mut reg2 = HomeRegistration::new(reg_config("fd00:b::1", 0x1001, KEY), 100);
    let out = ha.on_packet(now, wall(20), &reg2.send(now, wall(20), true).packet);
    assert_eq!(out.event, HaEvent::Deregistered(a("fd00:d5::80")));
    assert_eq!(
        to_mn(&mut reg2, now, wall(20), &out.transmit[0]).0,
        HomeRegEvent::Deregistered
    );
    assert_eq!(ha.care_of(now, a("fd00:d5::80")), None);
    // Without timestamps (RFC 4285 §5.1 allows sequence numbers alone), a replayed older
    // registration is still refused after the deregistration: the number outlives the binding.
    let mut cfg = HaConfig::new(a("fd00:aa::1"));
    cfg.require_timestamp = false;
    let mut ha = HomeAgent::new(cfg);
    ha.add_sa(MnHaSa {
        spi: 0x1001,
        key: KEY.to_vec(),
        home: a("fd00:d5::80"),
    })
    .unwrap();
    let r = |seq: u16, lifetime: u16| {
        let mut r = MhRepr::new(binding_update(seq, true, lifetime), vec![]);
        rr::sign_mn_ha(&mut r, 0x1001, KEY, a("fd00:a::1"), a("fd00:d5::80"));
        PacketBuilder::new(a("fd00:a::1"), a("fd00:aa::1"))
            .with_hao(a("fd00:d5::80"))
            .mh(&r)
    };
    let reg = r(5, 100);
    assert!(matches!(
        ha.on_packet(now, 0, &reg).event,
        HaEvent::Registered { .. }
    ));
    assert_eq!(
        ha.on_packet(now, 0, &r(6, 0)).event,
        HaEvent::Deregistered(a("fd00:d5::80"))
    );
    assert_eq!(
        ha.on_packet(now, 0, &reg).event,
        HaEvent::Rejected(BaStatus::SEQUENCE_OUT_OF_WINDOW)
    );
    assert_eq!(ha.care_of(now, a("fd00:d5::80")), None);
    assert!(ha
        .add_sa(MnHaSa {
            spi: 7,
            key: vec![],
            home: a("fd00::1")
        })
        .is_err());
}

#[test]
fn a_mobile_node_with_a_wrong_clock_resynchronises_on_144() {
    let (mut ha, mut reg) = setup();
    let now = Instant::from_secs(1);
    // Our clock is 100 s behind the home agent's.
    let bu = reg.send(now, wall(0), false);
    let out = ha.on_packet(now, wall(100), &bu.packet);
    assert_eq!(out.event, HaEvent::Rejected(BaStatus::ID_MISMATCH));
    let (ev, again) = to_mn(&mut reg, now, wall(0), &out.transmit[0]);
    assert_eq!(ev, HomeRegEvent::ClockResynchronised);
    let out = ha.on_packet(now, wall(100), &again.unwrap().packet);
    assert!(
        matches!(out.event, HaEvent::Registered { .. }),
        "{:?}",
        out.event
    );
    assert!(matches!(
        to_mn(&mut reg, now, wall(0), &out.transmit[0]).0,
        HomeRegEvent::Registered(_)
    ));
}

#[test]
fn home_registration_retransmits_from_1_5_s() {
    let (_, mut reg) = setup();
    let t0 = Instant::from_secs(0);
    reg.send(t0, wall(0), false);
    let mut times = vec![];
    let mut now = t0;
    while now < Instant::from_secs(40) {
        now += Duration::from_millis(100);
        if reg.poll(now, wall(0)).is_some() {
            times.push(now.total_micros() / 100_000);
        }
    }
    // 1.5 s, then doubling: 3, 6, 12, 24 → at 1.5, 4.5, 10.5, 22.5 s.
    assert_eq!(times, vec![15, 45, 105, 225]);
}

/// Forged Binding Updates with spoofed sources are answered MIPV6-AUTH-FAIL (RFC 4285 §9)
/// within the home agent's reply budget only (`HaConfig::auth_fail_per_sec`, 100 a second):
/// the rest are discarded unanswered, so a flood makes the home agent reflect no more than
/// that; the next second it answers again, and a genuine registration is never held back.
#[test]
fn forged_registrations_are_answered_within_a_budget() {
    let (mut ha, mut reg) = setup();
    let now = Instant::from_secs(1);
    let mut answered = 0;
    for i in 0..1000u32 {
        let src = format!("fd00:666::{:x}", i + 1);
        let mut forger = HomeRegistration::new(reg_config(&src, 0x1001, b"guessed key"), 100);
        let out = ha.on_packet(now, wall(1), &forger.send(now, wall(1), false).packet);
        answered += out.transmit.len();
        assert!(
            matches!(
                out.event,
                HaEvent::Rejected(BaStatus::AUTH_FAIL) | HaEvent::Discarded(_)
            ),
            "{:?}",
            out.event
        );
    }
    assert_eq!(
        answered, 100,
        "replies to 1,000 forged updates in one second"
    );
    // The genuine mobile node registers meanwhile.
    let out = ha.on_packet(now, wall(1), &reg.send(now, wall(1), false).packet);
    assert!(
        matches!(out.event, HaEvent::Registered { .. }),
        "{:?}",
        out.event
    );
    // A second later a forged one is answered again.
    let later = now + Duration::from_secs(1);
    let mut forger = HomeRegistration::new(reg_config("fd00:667::1", 0x1001, b"guessed"), 100);
    let out = ha.on_packet(later, wall(2), &forger.send(later, wall(2), false).packet);
    assert_eq!(out.event, HaEvent::Rejected(BaStatus::AUTH_FAIL));
    assert_eq!(out.transmit.len(), 1);
}
