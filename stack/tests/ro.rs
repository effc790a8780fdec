//! Route optimisation end to end on simulated links: a client (every interface is a Mobile
//! IPv6 correspondent) downloads from the DS address served by a contact node; the contact node
//! runs the home test, the connection is frozen and thawed on an acceptor that runs the care-of
//! test and sends the Binding Update with the contact node's home token (the seed's inversion);
//! after the Binding Acknowledgement the client's packets go straight to the acceptor's care-of
//! address with a type 2 routing header, and the acceptor answers with a Home Address option.

use ds_mipv6::mn::MnEvent;
use ds_stack::mobile::MobileRole;
use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// One broadcast link: every frame reaches every other interface (they filter by MAC).
struct Lan {
    ifs: Vec<Interface>,
    now: Instant,
    log: Vec<(usize, Vec<u8>)>,
    /// Lose the next Binding Update on the wire.
    drop_bu: bool,
    bus_seen: Vec<Instant>,
}

/// A Binding Update from a care-of address: IPv6, Destination Options (HAO), MH type 5.
fn is_bu(f: &[u8]) -> bool {
    f.len() > 80 && f[14 + 6] == 60 && f[54] == 135 && f[80] == 5
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
            let now = self.now;
            for (_, fr) in frames.iter().filter(|(_, f)| is_bu(f)) {
                let _ = fr;
                self.bus_seen.push(now);
            }
            if self.drop_bu && frames.iter().any(|(_, f)| is_bu(f)) {
                frames.retain(|(_, f)| !is_bu(f));
                self.drop_bu = false;
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

#[test]
fn route_optimised_handoff_between_nodes() {
    let (a_ip, b_ip, c_ip, h) = (ip("fd00::1"), ip("fd00::2"), ip("fd00::3"), ip("fd00::80"));
    let t0 = Instant::from_millis(1000);
    let a = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![a_ip]), t0);
    let mut b = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![b_ip, h]), t0);
    let mut c = Interface::new(Config::new([2, 0, 0, 0, 0, 3], vec![c_ip]), t0);
    let b_mn = MobileRole::new(h, None);
    let c_mn = MobileRole::new(h, Some(c_ip));
    b.set_mobility_hook(b_mn.hook());
    c.set_mobility_hook(c_mn.hook());
    let l = b.tcp_listen(SocketAddrV6::new(h, 80, 0, 0), 4).unwrap();
    let mut lan = Lan {
        ifs: vec![a, b, c],
        now: t0,
        log: Vec::new(),
        drop_bu: true,
        bus_seen: Vec::new(),
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
    b_mn.start_home_test(now, a_ip, [1; 8]);
    c_mn.start_care_of_test(now, a_ip, [2; 8]);
    for _ in 0..20 {
        lan.step();
    }
    assert!(
        c_mn.has_care_of_token(),
        "care-of keygen token at the acceptor"
    );

    // Hand off: freeze at the contact node (drained), ship state and home token, thaw at the
    // acceptor, which sends the Binding Update.
    let now = lan.now;
    let state = lan.ifs[1].tcp_freeze(now, srv).unwrap().encode();
    assert!(state.len() <= 96, "drained state {} bytes", state.len());
    let ticket = b_mn
        .home_ticket(now, 1)
        .expect("home keygen token at the contact node");
    let st = ds_stack::ConnState::decode(&state).unwrap();
    lan.ifs[2].add_home_addr(h);
    let srv2 = lan.ifs[2].tcp_thaw(now, &st).unwrap();
    c_mn.bind(now, &ticket, a_ip, Duration::from_secs(120))
        .unwrap();
    let log_mark = lan.log.len();
    // The first BU is lost on the wire: it is retransmitted after INITIAL_BINDACK_TIMEOUT.
    while !c_mn.is_bound(lan.now) {
        lan.step();
        assert!(
            lan.now < now + Duration::from_secs(5),
            "no binding: {:?}",
            c_mn.take_events()
        );
    }
    assert!(c_mn
        .take_events()
        .iter()
        .any(|e| matches!(e, MnEvent::Bound { .. })));
    assert_eq!(lan.bus_seen.len(), 2, "one lost BU, one retransmission");
    let gap = lan.bus_seen[1] - lan.bus_seen[0];
    assert!(
        gap >= Duration::from_millis(999) && gap < Duration::from_millis(1100),
        "retransmitted after {gap:?}"
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

/// RFC 6089 flow bindings: two connections of one client to the DS address are handed to two
/// different acceptors; the client (our correspondent) routes each connection's packets to its
/// own node, and both downloads finish byte-exact.
#[test]
fn two_connections_bound_to_two_nodes_with_flow_bindings() {
    use ds_mipv6::mn::{BindingScope, FlowRequest};
    use ds_mipv6::wire::PortSelector;
    let (a_ip, b_ip, c1_ip, c2_ip, h) = (
        ip("fd00::1"),
        ip("fd00::2"),
        ip("fd00::3"),
        ip("fd00::4"),
        ip("fd00::80"),
    );
    let t0 = Instant::from_millis(1000);
    let mk = |mac: u8, addrs: Vec<Ipv6Addr>| {
        Interface::new(Config::new([2, 0, 0, 0, 0, mac], addrs), t0)
    };
    let (a, mut b, mut c1, mut c2) = (
        mk(1, vec![a_ip]),
        mk(2, vec![b_ip, h]),
        mk(3, vec![c1_ip]),
        mk(4, vec![c2_ip]),
    );
    let b_mn = MobileRole::new(h, None);
    let roles = [
        MobileRole::new(h, Some(c1_ip)),
        MobileRole::new(h, Some(c2_ip)),
    ];
    b.set_mobility_hook(b_mn.hook());
    c1.set_mobility_hook(roles[0].hook());
    c2.set_mobility_hook(roles[1].hook());
    let l = b.tcp_listen(SocketAddrV6::new(h, 80, 0, 0), 4).unwrap();
    let mut lan = Lan {
        ifs: vec![a, b, c1, c2],
        now: t0,
        log: Vec::new(),
        drop_bu: false,
        bus_seen: Vec::new(),
    };

    let now = lan.now;
    let cls: Vec<_> = (0..2)
        .map(|_| {
            lan.ifs[0]
                .tcp_connect(
                    now,
                    SocketAddrV6::new(a_ip, 0, 0, 0),
                    SocketAddrV6::new(h, 80, 0, 0),
                )
                .unwrap()
        })
        .collect();
    let mut srvs = Vec::new();
    for _ in 0..50 {
        lan.step();
        while let Some(s) = lan.ifs[1].tcp_accept(l) {
            srvs.push(s);
        }
    }
    assert_eq!(srvs.len(), 2);
    // Match server handles to client handles by port.
    let port_of = |iface: &Interface, h| iface.tcp_endpoints(h).unwrap();
    srvs.sort_by_key(|s| port_of(&lan.ifs[1], *s).1.port());
    let mut cls = cls;
    cls.sort_by_key(|c| port_of(&lan.ifs[0], *c).0.port());

    let now = lan.now;
    b_mn.start_home_test(now, a_ip, [1; 8]);
    roles[0].start_care_of_test(now, a_ip, [2; 8]);
    roles[1].start_care_of_test(now, a_ip, [3; 8]);
    for _ in 0..20 {
        lan.step();
    }
    // Connection i moves to acceptor i with BID i+1 and a flow selector for its ports;
    // BU sequence numbers continue across the nodes (1, then 2).
    let mut moved = Vec::new();
    for i in 0..2 {
        let now = lan.now;
        let st = lan.ifs[1].tcp_freeze(now, srvs[i]).unwrap();
        let client_port = st.remote().port();
        let ticket = b_mn.home_ticket(now, 1 + i as u16).unwrap();
        let iface = &mut lan.ifs[2 + i];
        iface.add_home_addr(h);
        moved.push(iface.tcp_thaw(now, &st).unwrap());
        let flow = FlowRequest {
            fid: 10 + i as u16,
            priority: 1,
            // Seen from the correspondent: its port as source, ours as destination.
            selector: PortSelector {
                src_ports: (client_port, client_port),
                dst_ports: (80, 80),
                next_header: Some(6),
            },
        };
        roles[i]
            .bind_flows(
                now,
                &ticket,
                a_ip,
                Duration::from_secs(120),
                Some((1 + i as u16, vec![flow])),
            )
            .unwrap();
        for _ in 0..20 {
            lan.step();
        }
        let ev = roles[i].take_events();
        assert!(
            ev.iter().any(|e| matches!(e, MnEvent::Bound { scope: BindingScope::Flows(f), .. } if f == &vec![10 + i as u16])),
            "acceptor {i} bound its flow only: {ev:?}"
        );
    }
    let mark = lan.log.len();
    let data: Vec<Vec<u8>> = (0..2)
        .map(|i| (0..300_000u32).map(|x| ((x + i) % 249) as u8).collect())
        .collect();
    let mut sent = [0usize; 2];
    let mut got = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 65536];
    while got[0].len() < data[0].len() || got[1].len() < data[1].len() {
        for i in 0..2 {
            if sent[i] < data[i].len() {
                sent[i] += lan.ifs[2 + i]
                    .tcp_send(moved[i], &data[i][sent[i]..])
                    .unwrap();
            }
        }
        lan.step();
        for i in 0..2 {
            while let Ok(n) = lan.ifs[0].tcp_recv(cls[i], &mut buf) {
                if n == 0 {
                    break;
                }
                got[i].extend_from_slice(&buf[..n]);
            }
        }
        assert!(lan.now < t0 + Duration::from_secs(60), "stalled");
    }
    assert!(got[0] == data[0] && got[1] == data[1], "both byte-exact");
    // Each connection's packets from the client went to its own acceptor.
    let dst_of = |f: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
    for (i, coa) in [c1_ip, c2_ip].into_iter().enumerate() {
        let cport = port_of(&lan.ifs[0], cls[i]).0.port();
        let to_coa = lan.log[mark..]
            .iter()
            .filter(|(s, f)| *s == 0 && f.len() > 82 && f[20] == 43 && dst_of(f) == coa)
            .count();
        let wrong = lan.log[mark..]
            .iter()
            .filter(|(s, f)| {
                *s == 0
                    && f.len() > 82
                    && f[20] == 43
                    && dst_of(f) != coa
                    && u16::from_be_bytes([f[78], f[79]]) == cport
            })
            .count();
        assert!(to_coa > 0, "connection {i} reached acceptor {i}");
        assert_eq!(wrong, 0, "connection {i} never went elsewhere");
    }
}
