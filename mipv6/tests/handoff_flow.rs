//! The seed's whole route-optimisation flow in pure logic: the contact node registers the DS
//! address at the home agent, runs the home test through the HA tunnel, ships the home token
//! and sequence number to the acceptor, which runs the care-of test and binds the client (the
//! correspondent); then data flows directly both ways (RH2 one way, HAO the other).

use ds_mipv6::cn::{CnConfig, CnEvent, Correspondent, HaoCheck, RouteVia};
use ds_mipv6::ha::{HaConfig, HaEvent, HomeAgent, MnHaSa};
use ds_mipv6::mn::{
    ntp_from_unix, BindingScope, HomeRegConfig, HomeRegEvent, HomeRegistration, HomeTicket,
    MnBinding, MnBindingConfig, MnEvent, TestInit,
};
use ds_mipv6::rr::TokenKind;
use ds_mipv6::wire::packet::{decapsulate, encapsulate, insert_hao, ParsedIpv6};
use ds_mipv6::wire::PacketBuilder;
use ds_mipv6::{Instant, MhMeta};
use std::net::Ipv6Addr;
use std::time::Duration;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn contact_node_home_test_via_ha_then_acceptor_binds_the_client() {
    let (ds, ha_addr, contact, acceptor, client) = (
        a("fd00:d5::80"),
        a("fd00:d5::1"),
        a("fd00:10::1"),
        a("fd00:20::1"),
        a("fd00:c1::2"),
    );
    let now = Instant::from_secs(100);
    let wall = ntp_from_unix(Duration::from_secs(1_750_000_000));
    // 1. Home registration of the DS address by the contact node.
    let mut ha = HomeAgent::new(HaConfig::new(ha_addr));
    ha.add_sa(MnHaSa {
        spi: 0x4000,
        key: b"contact-node key".to_vec(),
        home: ds,
    })
    .unwrap();
    let mut reg = HomeRegistration::new(
        HomeRegConfig {
            home: ds,
            care_of: contact,
            ha: ha_addr,
            spi: 0x4000,
            key: b"contact-node key".to_vec(),
            lifetime: Duration::from_secs(3600),
        },
        1,
    );
    let out = ha.on_packet(now, wall, &reg.send(now, wall, false).packet);
    assert!(matches!(out.event, HaEvent::Registered { .. }));
    let (m, mh) = MhMeta::from_packet(&out.transmit[0].packet).unwrap();
    assert!(matches!(
        reg.on_mobility_header(now, wall, m, mh).0,
        HomeRegEvent::Registered(_)
    ));

    // 2. Home test: HoTI reverse-tunnelled contact → HA → client; HoT client → HA → contact.
    let mut cn = Correspondent::new(CnConfig::default(), [3; 20], [4; 32]);
    let (mut ht, hoti) = TestInit::start(now, TokenKind::Home, ds, client, [5; 8]);
    let tunnelled = encapsulate(contact, ha_addr, &hoti.packet);
    let inner = ha
        .reverse_tunnel(now, &tunnelled)
        .expect("from the registered care-of");
    let hot = cn.on_packet(now, inner).transmit.remove(0);
    assert_eq!(hot.dst, ds, "the HoT goes to the home address");
    let to_contact = ha
        .tunnel(now, &hot.packet)
        .expect("intercepted for the home address");
    assert_eq!(to_contact.dst, contact);
    let (_, _, hot_inner) = decapsulate(&to_contact.packet).unwrap();
    let (m, mh) = MhMeta::from_packet(hot_inner).unwrap();
    let home_token = ht.on_mobility_header(now, m, mh).unwrap();

    // 3. The contact node ships the token (and the next sequence number) to the acceptor.
    let ticket = HomeTicket::export(&home_token, now, 1);
    let bytes = postcard::to_allocvec(&ticket).unwrap();
    let ticket: HomeTicket = postcard::from_bytes(&bytes).unwrap();

    // 4. The acceptor runs the care-of test itself and binds.
    let later = now + Duration::from_secs(2);
    let cfg = MnBindingConfig {
        home: ds,
        care_of: acceptor,
        cn: client,
        lifetime: Duration::from_secs(420),
        bid: None,
        flows: vec![],
    };
    let mut b = MnBinding::from_ticket(cfg, &ticket, later).unwrap();
    let (mut ct, coti) = TestInit::start(later, TokenKind::CareOf, acceptor, client, [6; 8]);
    let cot = cn.on_packet(later, &coti.packet).transmit.remove(0);
    let (m, mh) = MhMeta::from_packet(&cot.packet).unwrap();
    b.set_keygen(ct.on_mobility_header(later, m, mh).unwrap())
        .unwrap();
    let out = cn.on_packet(later, &b.send_update(later).unwrap().packet);
    assert!(matches!(out.event, CnEvent::BindingUpdated { .. }));
    let (m, mh) = MhMeta::from_packet(&out.transmit[0].packet).unwrap();
    assert_eq!(
        b.on_mobility_header(later, m, mh).0,
        MnEvent::Bound {
            lifetime: Duration::from_secs(420),
            scope: BindingScope::WholeHomeAddress
        }
    );

    // 5. Data: client → DS address goes straight to the acceptor with an RH2...
    let seg = PacketBuilder::new(client, ds).payload(6, &[0x9c, 0x40, 0, 80, 0, 0, 0, 0]);
    let (route, out) = cn.rewrite_outgoing(later, &seg).unwrap();
    assert_eq!(
        (route.care_of, route.via),
        (acceptor, RouteVia::HomeAddress)
    );
    let p = ParsedIpv6::parse(&out).unwrap();
    assert_eq!((p.dst, p.rh2, p.effective_dst()), (acceptor, Some(ds), ds));
    // ...and the acceptor answers from its care-of address with an HAO, which the client
    // accepts because the binding matches.
    let reply = PacketBuilder::new(ds, client).payload(6, &[0, 80, 0x9c, 0x40, 0, 0, 0, 0]);
    let reply = insert_hao(&reply, acceptor).unwrap();
    let p = ParsedIpv6::parse(&reply).unwrap();
    assert_eq!((p.src, p.hao), (acceptor, Some(ds)));
    assert_eq!(
        cn.check_hao(later, client, p.src, ds, false),
        HaoCheck::Accept
    );
    // The contact node (still HA-registered) is not bound at the client: its HAO would fail.
    assert!(matches!(
        cn.check_hao(later, client, contact, ds, false),
        HaoCheck::Reject(_)
    ));
}
