//! Route optimisation end to end on simulated links: a client (every interface is a Mobile
//! IPv6 correspondent) downloads from the DS address served by a contact node; the contact node
//! runs the home test, the connection is frozen and thawed on an acceptor that runs the care-of
//! test and sends the Binding Update with the contact node's home token (the seed's inversion);
//! after the Binding Acknowledgement the client's packets go straight to the acceptor's care-of
//! address with a type 2 routing header, and the acceptor answers with a Home Address option.

use ds_mipv6::mn::{HomeTicket, Keygen, MnBinding, MnBindingConfig, MnEvent, TestInit};
use ds_mipv6::rr::TokenKind;
use ds_mipv6::MhMeta;
use ds_stack::hooks::{HaoVerdict, MobilityHook};
use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn mip(t: Instant) -> ds_mipv6::Instant {
    ds_mipv6::Instant::from_micros(t.total_micros())
}

/// The mobile-node side of a distributed-server node, shared with the test body.
#[derive(Default)]
struct MnState {
    home: Option<Ipv6Addr>,
    care_of: Option<Ipv6Addr>,
    home_test: Option<TestInit>,
    coa_test: Option<TestInit>,
    home_kg: Option<Keygen>,
    coa_kg: Option<Keygen>,
    binding: Option<MnBinding>,
    events: Vec<MnEvent>,
}

struct MnHook(Arc<Mutex<MnState>>);

impl MobilityHook for MnHook {
    fn on_mobility_header(&mut self, now: Instant, meta: MhMeta, mh: &[u8]) -> Vec<Vec<u8>> {
        let mut st = self.0.lock().unwrap();
        let t = mip(now);
        if let Some(k) = st
            .home_test
            .as_mut()
            .and_then(|x| x.on_mobility_header(t, meta, mh))
        {
            st.home_kg = Some(k);
        }
        if let Some(k) = st
            .coa_test
            .as_mut()
            .and_then(|x| x.on_mobility_header(t, meta, mh))
        {
            st.coa_kg = Some(k);
        }
        let mut out = Vec::new();
        if let Some(b) = st.binding.as_mut() {
            let (ev, tx) = b.on_mobility_header(t, meta, mh);
            out.extend(tx.map(|x| x.packet));
            st.events.push(ev);
        }
        out
    }

    fn on_home_address_option(
        &mut self,
        _now: Instant,
        _src: Ipv6Addr,
        _home: Ipv6Addr,
    ) -> HaoVerdict {
        HaoVerdict::Reject
    }

    fn on_type2_routing(&mut self, _now: Instant, dst: Ipv6Addr, home: Ipv6Addr) -> bool {
        let st = self.0.lock().unwrap();
        st.home == Some(home) && st.care_of == Some(dst)
    }

    fn outgoing_from_home(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        _dst: Ipv6Addr,
    ) -> Option<Ipv6Addr> {
        let st = self.0.lock().unwrap();
        let bound = st.binding.as_ref().is_some_and(|b| b.is_bound(mip(now)));
        (st.home == Some(src) && bound).then_some(st.care_of?)
    }
}

/// One broadcast link: every frame reaches every other interface (they filter by MAC).
struct Lan {
    ifs: Vec<Interface>,
    now: Instant,
    log: Vec<(usize, Vec<u8>)>,
}

impl Lan {
    fn step(&mut self) {
        for _ in 0..100 {
            let mut frames = Vec::new();
            for (i, f) in self.ifs.iter_mut().enumerate() {
                f.poll(self.now);
                f.transmit(self.now, &mut |fr: &[u8]| frames.push((i, fr.to_vec())));
            }
            if frames.is_empty() {
                break;
            }
            for (from, fr) in &frames {
                for (j, f) in self.ifs.iter_mut().enumerate() {
                    if j != *from {
                        f.receive(self.now, fr);
                    }
                }
            }
            self.log.extend(frames);
        }
        self.now += Duration::from_millis(1);
    }
}

fn send(iface: &mut Interface, now: Instant, pkt: &[u8]) {
    iface.send_ipv6_packet(now, pkt);
}

#[test]
fn route_optimised_handoff_between_nodes() {
    let (a_ip, b_ip, c_ip, h) = (ip("fd00::1"), ip("fd00::2"), ip("fd00::3"), ip("fd00::80"));
    let t0 = Instant::from_millis(1000);
    let a = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![a_ip]), t0);
    let mut b = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![b_ip, h]), t0);
    let mut c = Interface::new(Config::new([2, 0, 0, 0, 0, 3], vec![c_ip]), t0);
    let b_mn = Arc::new(Mutex::new(MnState {
        home: Some(h),
        ..Default::default()
    }));
    let c_mn = Arc::new(Mutex::new(MnState {
        home: Some(h),
        care_of: Some(c_ip),
        ..Default::default()
    }));
    b.set_mobility_hook(Box::new(MnHook(b_mn.clone())));
    c.set_mobility_hook(Box::new(MnHook(c_mn.clone())));
    let l = b.tcp_listen(SocketAddrV6::new(h, 80, 0, 0), 4).unwrap();
    let mut lan = Lan {
        ifs: vec![a, b, c],
        now: t0,
        log: Vec::new(),
    };

    // The client connects to the DS address; the contact node serves the first half.
    let now = lan.now;
    let cl = lan.ifs[0]
        .tcp_connect(
            now,
            SocketAddrV6::new(a_ip, 0, 0, 0),
            SocketAddrV6::new(h, 80, 0, 0),
        )
        .unwrap();
    let mut srv = None;
    for _ in 0..50 {
        lan.step();
        srv = srv.or_else(|| lan.ifs[1].tcp_accept(l));
    }
    let srv = srv.expect("accepted at the contact node");
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    let half = data.len() / 2;
    assert_eq!(lan.ifs[1].tcp_send(srv, &data[..half]).unwrap(), half);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut read = |lan: &mut Lan, got: &mut Vec<u8>| loop {
        let n = lan.ifs[0].tcp_recv(cl, &mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    };
    while got.len() < half || lan.ifs[1].tcp_send_queued(srv) > 0 {
        lan.step();
        read(&mut lan, &mut got);
    }

    // Return routability: the contact node (which holds the home address) runs the home test,
    // the acceptor the care-of test.
    let now = lan.now;
    let (ht, pkt) = TestInit::start(mip(now), TokenKind::Home, h, a_ip, [1; 8]);
    b_mn.lock().unwrap().home_test = Some(ht);
    send(&mut lan.ifs[1], now, &pkt.packet);
    let (ct, pkt) = TestInit::start(mip(now), TokenKind::CareOf, c_ip, a_ip, [2; 8]);
    c_mn.lock().unwrap().coa_test = Some(ct);
    send(&mut lan.ifs[2], now, &pkt.packet);
    for _ in 0..20 {
        lan.step();
    }
    let home_kg = b_mn
        .lock()
        .unwrap()
        .home_kg
        .expect("home keygen token at the contact node");
    assert!(
        c_mn.lock().unwrap().coa_kg.is_some(),
        "care-of keygen token at the acceptor"
    );

    // Hand off: freeze at the contact node (drained), ship state and home token, thaw at the
    // acceptor, which sends the Binding Update.
    let now = lan.now;
    let state = lan.ifs[1].tcp_freeze(now, srv).unwrap().encode();
    assert!(state.len() <= 96, "drained state {} bytes", state.len());
    let ticket = HomeTicket::export(&home_kg, mip(now), 1);
    let st = ds_stack::ConnState::decode(&state).unwrap();
    lan.ifs[2].add_home_addr(h);
    let srv2 = lan.ifs[2].tcp_thaw(now, &st).unwrap();
    {
        let mut m = c_mn.lock().unwrap();
        let cfg = MnBindingConfig {
            home: h,
            care_of: c_ip,
            cn: a_ip,
            lifetime: Duration::from_secs(120),
            bid: None,
            flows: vec![],
        };
        let mut binding = MnBinding::from_ticket(cfg, &ticket, mip(now)).unwrap();
        let kg = m.coa_kg.unwrap();
        binding.set_keygen(kg).unwrap();
        let bu = binding.send_update(mip(now)).unwrap();
        m.binding = Some(binding);
        drop(m);
        send(&mut lan.ifs[2], now, &bu.packet);
    }
    let log_mark = lan.log.len();
    for _ in 0..20 {
        lan.step();
    }
    assert!(
        c_mn.lock()
            .unwrap()
            .events
            .iter()
            .any(|e| matches!(e, MnEvent::Bound { .. })),
        "binding acknowledged: {:?}",
        c_mn.lock().unwrap().events
    );
    assert!(
        lan.ifs[0]
            .correspondent()
            .and_then(|c| c.entry(h))
            .is_some(),
        "client's binding cache has the DS address"
    );

    // The acceptor serves the second half, straight to the client.
    let mut sent = half;
    while got.len() < data.len() {
        if sent < data.len() {
            sent += lan.ifs[2].tcp_send(srv2, &data[sent..]).unwrap();
        }
        lan.step();
        read(&mut lan, &mut got);
        assert!(
            lan.now < t0 + Duration::from_secs(60),
            "stalled at {}",
            got.len()
        );
    }
    assert!(got == data, "byte-exact across the handoff");
    assert_eq!(lan.ifs[0].tcp_state(cl), Some(TcpState::Established));

    // On the wire after the BU: client → care-of address with a type 2 routing header;
    // acceptor → client from its care-of address with a Home Address option.
    let ipv6 = |f: &[u8]| {
        (
            f[14 + 6],
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap()),
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
        )
    };
    let after = &lan.log[log_mark..];
    let rh2 = after
        .iter()
        .filter(|(i, f)| *i == 0 && f.len() > 54 && ipv6(f) == (43, a_ip, c_ip))
        .count();
    let hao = after
        .iter()
        .filter(|(i, f)| *i == 2 && f.len() > 54 && ipv6(f) == (60, c_ip, a_ip))
        .count();
    let to_home = after
        .iter()
        .filter(|(i, f)| *i == 0 && f.len() > 54 && ipv6(f).2 == h && f[14 + 6] == 6)
        .count();
    assert!(
        rh2 >= 3,
        "client's TCP went to the care-of address with RH2 ({rh2} frames)"
    );
    assert!(
        hao > 10,
        "acceptor's TCP carried a Home Address option ({hao} frames)"
    );
    assert_eq!(
        to_home, 0,
        "nothing from the client to the home address directly after the BA"
    );
}
