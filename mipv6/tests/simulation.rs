//! Randomised simulation: several nodes bind and unbind one home address at one
//! correspondent in random order, with random time steps and random sequence-number starting
//! points (forcing 135 resynchronisations). After every step the correspondent's routing
//! decision must equal a simple model: the last acknowledged binding, until it expires. An
//! earlier Binding Update replayed changes nothing (RFC 6275 §5.2.8).

use ds_mipv6::cn::{CnConfig, Correspondent, RouteVia};
use ds_mipv6::mn::{MnBinding, MnBindingConfig, MnEvent, TestInit};
use ds_mipv6::rr::TokenKind;
use ds_mipv6::{Instant, MhMeta, Transmit};
use proptest::prelude::*;
use std::net::Ipv6Addr;
use std::time::Duration;

const HOME: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xd5, 0, 0, 0, 0, 0, 0x80);
const CN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xcc, 0, 0, 0, 0, 0, 2);

fn coa(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10 + i as u16, 0, 0, 0, 0, 0, 1)
}

fn test(
    cn: &mut Correspondent,
    now: Instant,
    kind: TokenKind,
    addr: Ipv6Addr,
) -> ds_mipv6::mn::Keygen {
    let (mut t, init) = TestInit::start(now, kind, addr, CN, [9; 8]);
    let reply = cn.on_packet(now, &init.packet).transmit.remove(0);
    let (m, mh) = MhMeta::from_packet(&reply.packet).unwrap();
    t.on_mobility_header(now, m, mh).unwrap()
}

/// Deliver `bu` and the answers until the exchange settles; returns the final MN event.
fn exchange(cn: &mut Correspondent, b: &mut MnBinding, now: Instant, mut bu: Transmit) -> MnEvent {
    for _ in 0..3 {
        let out = cn.on_packet(now, &bu.packet);
        let Some(ba) = out.transmit.first() else {
            return MnEvent::Ignored("no answer");
        };
        let (m, mh) = MhMeta::from_packet(&ba.packet).unwrap();
        match b.on_mobility_header(now, m, mh) {
            (MnEvent::Resynchronised { .. }, Some(again)) => bu = again,
            (ev, _) => return ev,
        }
    }
    MnEvent::Ignored("did not settle")
}

#[derive(Debug, Clone)]
enum Step {
    Bind {
        node: usize,
        lifetime: u16,
        seq_start: u16,
    },
    Delete {
        node: usize,
    },
    Advance(u16),
    /// An earlier Binding Update (a registration or a deletion) sent again by an attacker
    /// who recorded it (RFC 6275 §5.2.8): which one, modulo how many there were.
    Replay(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, 1u16..200, any::<u16>()).prop_map(|(node, lifetime, seq_start)| Step::Bind { node, lifetime, seq_start }),
        1 => (0usize..3).prop_map(|node| Step::Delete { node }),
        2 => (0u16..500).prop_map(Step::Advance),
        2 => any::<usize>().prop_map(Step::Replay),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn correspondent_follows_the_last_acknowledged_binding(steps in proptest::collection::vec(step(), 1..25)) {
        let mut cn = Correspondent::new(CnConfig::default(), [1; 20], [2; 32]);
        let mut now = Instant::from_secs(1);
        // Model: (care-of, expiry) of the last acknowledged registration.
        let mut model: Option<(Ipv6Addr, Instant)> = None;
        let mut next_seq: Option<u16> = None; // shipped between nodes like a HomeTicket
        let mut sent: Vec<Vec<u8>> = Vec::new(); // every Binding Update, as an attacker records them
        for s in steps {
            match s {
                Step::Replay(k) => {
                    if !sent.is_empty() {
                        let bu = sent[k % sent.len()].clone();
                        let _ = cn.on_packet(now, &bu);
                    }
                }
                Step::Advance(secs) => now += Duration::from_secs(secs.into()),
                Step::Bind { node, lifetime, seq_start } => {
                    let cfg = MnBindingConfig {
                        home: HOME, care_of: coa(node), cn: CN,
                        lifetime: Duration::from_secs(u64::from(lifetime) * 4),
                        bid: None, flows: vec![],
                    };
                    // Sometimes the node does not know the current number: 135 path.
                    let mut b = MnBinding::new(cfg, next_seq.unwrap_or(seq_start));
                    b.set_keygen(test(&mut cn, now, TokenKind::Home, HOME)).unwrap();
                    b.set_keygen(test(&mut cn, now, TokenKind::CareOf, coa(node))).unwrap();
                    let bu = b.send_update(now).unwrap();
                    sent.push(bu.packet.clone());
                    match exchange(&mut cn, &mut b, now, bu) {
                        MnEvent::Bound { lifetime: granted, .. } => {
                            prop_assert!(granted <= Duration::from_secs(420));
                            model = (!granted.is_zero()).then(|| (coa(node), now + granted));
                        }
                        ev => prop_assert!(false, "bind failed: {:?}", ev),
                    }
                    next_seq = Some(b.next_sequence());
                }
                Step::Delete { node } => {
                    let cfg = MnBindingConfig {
                        home: HOME, care_of: coa(node), cn: CN,
                        lifetime: Duration::from_secs(60), bid: None, flows: vec![],
                    };
                    let mut b = MnBinding::new(cfg, next_seq.unwrap_or(0));
                    b.set_keygen(test(&mut cn, now, TokenKind::Home, HOME)).unwrap();
                    let bu = b.send_delete(now).unwrap();
                    sent.push(bu.packet.clone());
                    let ev = exchange(&mut cn, &mut b, now, bu);
                    prop_assert_eq!(ev, MnEvent::Deleted);
                    model = None;
                    next_seq = Some(b.next_sequence());
                }
            }
            cn.poll(now);
            let expect = model.filter(|&(_, exp)| now < exp).map(|(c, _)| c);
            let got = cn.route_out(now, HOME, None);
            prop_assert_eq!(got.map(|r| r.care_of), expect);
            if let Some(r) = got {
                prop_assert_eq!(r.via, RouteVia::HomeAddress);
            }
        }
    }
}
