//! Route optimisation end to end on simulated links: a client (every interface is a Mobile
//! IPv6 correspondent) downloads from the DS address served by a contact node; the contact node
//! runs the home test, the connection is frozen and thawed on an acceptor that runs the care-of
//! test and sends the Binding Update with the contact node's home token (the seed's inversion);
//! after the Binding Acknowledgement the client's packets go straight to the acceptor's care-of
//! address with a type 2 routing header, and the acceptor answers with a Home Address option.

use ds_mipv6::mn::{HomeTicket, MnEvent};
use ds_stack::mobile::MobileRole;
use ds_stack::{Instant, Interface, ListenHandle, TcpHandle, TcpState};
use ds_testbed::simlan::{node, Lan, START};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A Binding Update from a care-of address: IPv6, Destination Options (HAO), MH type 5.
fn is_bu(f: &[u8]) -> bool {
    f.len() > 80 && f[14 + 6] == 60 && f[54] == 135 && f[80] == 5
}

/// The interfaces on one logged link; the first Binding Update is lost when `drop_bu`.
fn lan(ifs: Vec<Interface>, drop_bu: bool) -> Lan {
    let mut pending = drop_bu;
    Lan::new(ifs, START).log_all().drop_if(move |f| {
        let drop = pending && is_bu(f);
        pending &= !drop;
        drop
    })
}

/// Accept on `l` at interface `i` what arrives in 50 steps.
fn accept_all(lan: &mut Lan, i: usize, l: ListenHandle) -> Vec<TcpHandle> {
    let mut accepted = Vec::new();
    for _ in 0..50 {
        lan.step();
        while let Some(s) = lan.ifs[i].tcp_accept(l) {
            accepted.push(s);
        }
    }
    accepted
}

/// Step `n` times.
fn steps(lan: &mut Lan, n: usize) {
    for _ in 0..n {
        lan.step();
    }
}

/// The mobile role interface `i` owns (the test drives it there).
fn mn(lan: &mut Lan, i: usize) -> &mut MobileRole {
    lan.ifs[i].mobility_hook_mut().expect("mobile role")
}

/// The same, to read.
fn mn_ref(lan: &Lan, i: usize) -> &MobileRole {
    lan.ifs[i].mobility_hook().expect("mobile role")
}

/// A download from the contact node thawed at the acceptor, before its Binding Update.
struct Thawed {
    lan: Lan,
    /// The client's handle.
    cl: TcpHandle,
    /// The acceptor's handle.
    srv2: TcpHandle,
    /// The contact node's home ticket.
    ticket: HomeTicket,
    /// When the connection was frozen.
    frozen: Instant,
    data: Vec<u8>,
    /// What the client read: the first half of `data`.
    got: Vec<u8>,
}

const CLIENT: &str = "fd00::1";
const ACCEPTOR: &str = "fd00::3";
const DS: &str = "fd00::80";

/// The client (`fd00::1`), the contact node at home on the DS address (`fd00::2`) and an
/// acceptor away from home (`fd00::3`), each node with its mobile role.
fn client_contact_acceptor() -> [Interface; 3] {
    let (a_ip, b_ip, c_ip, h) = (ip(CLIENT), ip("fd00::2"), ip(ACCEPTOR), ip(DS));
    let a = node(1, &[a_ip]);
    let mut b = node(2, &[b_ip, h]);
    let mut c = node(3, &[c_ip]);
    b.set_mobility_hook(Box::new(MobileRole::new(h, None)));
    c.set_mobility_hook(Box::new(MobileRole::new(h, Some(c_ip))));
    [a, b, c]
}

/// The client connects to the DS address; the contact node (interface 1) serves the first
/// half of 400 kB; the contact node runs the home test and the acceptor (interface 2) the
/// care-of test; the connection is frozen drained and thawed at the acceptor.
fn thawed_at_acceptor(drop_bu: bool) -> Thawed {
    let (a_ip, h) = (ip(CLIENT), ip(DS));
    let [a, mut b, c] = client_contact_acceptor();
    let l = b.tcp_listen(SocketAddrV6::new(h, 80, 0, 0), 4).unwrap();
    let mut lan = lan(vec![a, b, c], drop_bu);

    // The client connects to the DS address; the contact node serves the first half.
    let cl = lan.dial(0, a_ip, SocketAddrV6::new(h, 80, 0, 0));
    let srv = *accept_all(&mut lan, 1, l)
        .first()
        .expect("accepted at the contact node");
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    let half = data.len() / 2;
    assert_eq!(lan.ifs[1].tcp_send(srv, &data[..half]).unwrap(), half);
    let mut got = Vec::new();
    while got.len() < half || lan.ifs[1].tcp_send_queued(srv) > 0 {
        lan.step();
        let _ = lan.read(0, cl, &mut got);
    }

    // Return routability: the contact node (which holds the home address) runs the home test,
    // the acceptor the care-of test.
    let now = lan.now;
    mn(&mut lan, 1).start_home_test(now, a_ip, [1; 8]);
    mn(&mut lan, 2).start_care_of_test(now, a_ip, [2; 8]);
    steps(&mut lan, 20);
    assert!(
        mn_ref(&lan, 2).has_care_of_token(),
        "care-of keygen token at the acceptor"
    );

    // Hand off: freeze at the contact node (drained), ship state and home token, thaw at the
    // acceptor.
    let now = lan.now;
    let state = lan.ifs[1].tcp_freeze(now, srv).unwrap().encode();
    assert!(state.len() <= 96, "drained state {} bytes", state.len());
    let ticket = mn_ref(&lan, 1)
        .home_ticket(now, 1)
        .expect("home keygen token at the contact node");
    let st = ds_stack::ConnState::decode(&state).unwrap();
    lan.ifs[2].add_home_addr(h);
    let srv2 = lan.ifs[2].tcp_thaw(now, &st).unwrap();
    Thawed {
        lan,
        cl,
        srv2,
        ticket,
        frozen: now,
        data,
        got,
    }
}

#[test]
fn route_optimised_handoff_between_nodes() {
    let (a_ip, c_ip, h) = (ip(CLIENT), ip(ACCEPTOR), ip(DS));
    let t0 = START;
    let Thawed {
        mut lan,
        cl,
        srv2,
        ticket,
        frozen: now,
        data,
        mut got,
    } = thawed_at_acceptor(true);
    let half = got.len();
    let read = |lan: &mut Lan, got: &mut Vec<u8>| {
        let _ = lan.read(0, cl, got);
    };
    mn(&mut lan, 2)
        .bind(now, &ticket, a_ip, Duration::from_secs(120))
        .unwrap();
    let log_mark = lan.log.len();
    // The first BU is lost on the wire: it is retransmitted after INITIAL_BINDACK_TIMEOUT.
    while !mn_ref(&lan, 2).is_bound(lan.now) {
        lan.step();
        assert!(
            lan.now < now + Duration::from_secs(5),
            "no binding: {:?}",
            mn(&mut lan, 2).take_events()
        );
    }
    assert!(mn(&mut lan, 2)
        .take_events()
        .iter()
        .any(|e| matches!(e, MnEvent::Bound { .. })));
    let bus_seen: Vec<Instant> = lan
        .log
        .iter()
        .filter(|f| is_bu(&f.bytes))
        .map(|f| f.at)
        .collect();
    assert_eq!(bus_seen.len(), 2, "one lost BU, one retransmission");
    let gap = bus_seen[1] - bus_seen[0];
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
    let count = |from: usize, want: &dyn Fn((u8, Ipv6Addr, Ipv6Addr)) -> bool| {
        lan.delivered_since(log_mark)
            .filter(|f| f.from == from && f.bytes.len() > 54 && f.ipv6().is_some_and(want))
            .count()
    };
    let rh2 = count(0, &|hdr| hdr == (43, a_ip, c_ip));
    let hao = count(2, &|hdr| hdr == (60, c_ip, a_ip));
    let to_home = count(0, &|(nh, _, dst)| dst == h && nh == 6);
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

/// The Binding Update leaves ahead of the data the thawed connection has to send: behind a
/// burst on a slow link it would wait a frame time or more (one 1,500-byte frame is 12 ms at
/// 1 Mbit/s), and until it is acknowledged the data takes the home agent's longer path.
/// The interface sends a mobility hook's queued signalling at its next transmit, not only at
/// its next poll (a runner flushes before it polls).
#[test]
fn the_binding_update_leaves_ahead_of_the_acceptors_data() {
    let Thawed {
        mut lan,
        srv2,
        ticket,
        frozen: now,
        data,
        ..
    } = thawed_at_acceptor(false);
    let half = data.len() / 2;
    // The service writes the rest as the connection arrives, the binding is asked for, and
    // the acceptor's loop transmits before it polls.
    let queued = lan.ifs[2].tcp_send(srv2, &data[half..]).unwrap();
    assert!(queued > 3 * 1440, "a burst to send ({queued} bytes)");
    mn(&mut lan, 2)
        .bind(now, &ticket, ip(CLIENT), Duration::from_secs(120))
        .unwrap();
    let mut frames = Vec::new();
    lan.ifs[2].transmit(now, &mut |f: &[u8]| frames.push(f.to_vec()));
    assert!(
        frames.len() > 1,
        "the BU and data ({} frames)",
        frames.len()
    );
    assert!(
        is_bu(&frames[0]),
        "the first frame is the Binding Update (then {} more)",
        frames.len() - 1
    );
    assert_eq!(
        frames.iter().filter(|f| is_bu(f)).count(),
        1,
        "one Binding Update"
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
    let t0 = START;
    let (a, mut b, mut c1, mut c2) = (
        node(1, &[a_ip]),
        node(2, &[b_ip, h]),
        node(3, &[c1_ip]),
        node(4, &[c2_ip]),
    );
    b.set_mobility_hook(Box::new(MobileRole::new(h, None)));
    c1.set_mobility_hook(Box::new(MobileRole::new(h, Some(c1_ip))));
    c2.set_mobility_hook(Box::new(MobileRole::new(h, Some(c2_ip))));
    let l = b.tcp_listen(SocketAddrV6::new(h, 80, 0, 0), 4).unwrap();
    let mut lan = lan(vec![a, b, c1, c2], false);

    let cls: Vec<_> = (0..2)
        .map(|_| lan.dial(0, a_ip, SocketAddrV6::new(h, 80, 0, 0)))
        .collect();
    let mut srvs = accept_all(&mut lan, 1, l);
    assert_eq!(srvs.len(), 2);
    // Match server handles to client handles by port.
    let port_of = |iface: &Interface, h| iface.tcp_endpoints(h).unwrap();
    srvs.sort_by_key(|s| port_of(&lan.ifs[1], *s).1.port());
    let mut cls = cls;
    cls.sort_by_key(|c| port_of(&lan.ifs[0], *c).0.port());

    let now = lan.now;
    mn(&mut lan, 1).start_home_test(now, a_ip, [1; 8]);
    mn(&mut lan, 2).start_care_of_test(now, a_ip, [2; 8]);
    mn(&mut lan, 3).start_care_of_test(now, a_ip, [3; 8]);
    steps(&mut lan, 20);
    // Connection i moves to acceptor i with BID i+1 and a flow selector for its ports;
    // BU sequence numbers continue across the nodes (1, then 2).
    let mut moved = Vec::new();
    for (i, &srv) in srvs.iter().enumerate() {
        let now = lan.now;
        let st = lan.ifs[1].tcp_freeze(now, srv).unwrap();
        let client_port = st.remote().port();
        let ticket = mn_ref(&lan, 1).home_ticket(now, 1 + i as u16).unwrap();
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
        mn(&mut lan, 2 + i)
            .bind_flows(
                now,
                &ticket,
                a_ip,
                Duration::from_secs(120),
                Some((1 + i as u16, vec![flow])),
            )
            .unwrap();
        steps(&mut lan, 20);
        let ev = mn(&mut lan, 2 + i).take_events();
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
    while got[0].len() < data[0].len() || got[1].len() < data[1].len() {
        for i in 0..2 {
            if sent[i] < data[i].len() {
                sent[i] += lan.ifs[2 + i]
                    .tcp_send(moved[i], &data[i][sent[i]..])
                    .unwrap();
            }
        }
        lan.step();
        for (c, got) in cls.iter().zip(&mut got) {
            let _ = lan.read(0, *c, got);
        }
        assert!(lan.now < t0 + Duration::from_secs(60), "stalled");
    }
    assert!(got[0] == data[0] && got[1] == data[1], "both byte-exact");
    // Each connection's packets from the client went to its own acceptor.
    for (i, coa) in [c1_ip, c2_ip].into_iter().enumerate() {
        let cport = port_of(&lan.ifs[0], cls[i]).0.port();
        // The client's frames with a type 2 routing header, and whether each went to `coa`.
        let rh2 = || {
            lan.delivered_since(mark).filter_map(|f| {
                let (nh, _, dst) = f.ipv6()?;
                let b = &f.bytes;
                (f.from == 0 && b.len() > 82 && nh == 43)
                    .then(|| (dst == coa, u16::from_be_bytes([b[78], b[79]])))
            })
        };
        let to_coa = rh2().filter(|(to, _)| *to).count();
        let wrong = rh2().filter(|(to, p)| !*to && *p == cport).count();
        assert!(to_coa > 0, "connection {i} reached acceptor {i}");
        assert_eq!(wrong, 0, "connection {i} never went elsewhere");
    }
}

/// A binding nobody refreshes expires at the correspondent by its own deadline (RFC 6275
/// §9.5.2: the lifetime of the Binding Update), with nothing else happening on the link: the
/// interface polls its correspondent when that deadline comes, not only when mobility input
/// arrives.
#[test]
fn an_unrefreshed_binding_expires_at_the_correspondent() {
    let (a_ip, c_ip, h) = (ip(CLIENT), ip(ACCEPTOR), ip(DS));
    let [a, b, c] = client_contact_acceptor();
    // Once `silent`, nothing from the acceptor reaches the link: no refreshing Binding Update.
    let silent = std::rc::Rc::new(std::cell::Cell::new(false));
    let mute = silent.clone();
    let mut lan = Lan::new(vec![a, b, c], START).drop_if(move |f| {
        mute.get() && ds_testbed::simlan::ipv6_header(f).is_some_and(|(_, src, _)| src == c_ip)
    });
    let now = lan.now;
    mn(&mut lan, 1).start_home_test(now, a_ip, [1; 8]);
    mn(&mut lan, 2).start_care_of_test(now, a_ip, [2; 8]);
    steps(&mut lan, 20);
    let now = lan.now;
    let ticket = mn_ref(&lan, 1)
        .home_ticket(now, 1)
        .expect("home keygen token at the contact node");
    lan.ifs[2].add_home_addr(h);
    let lifetime = Duration::from_secs(8);
    mn(&mut lan, 2).bind(now, &ticket, a_ip, lifetime).unwrap();
    while !mn_ref(&lan, 2).is_bound(lan.now) {
        lan.step();
        assert!(lan.now < now + Duration::from_secs(5), "no binding");
    }
    let bound_at = lan.now;
    let cached = |lan: &Lan| {
        lan.ifs[0]
            .correspondent()
            .and_then(|c| c.entry(h))
            .is_some()
    };
    assert!(
        cached(&lan),
        "the client's binding cache has the DS address"
    );
    silent.set(true);
    while cached(&lan) {
        lan.advance();
        assert!(
            lan.now < bound_at + lifetime + Duration::from_secs(1),
            "the binding outlived its lifetime"
        );
    }
    assert!(
        lan.now >= bound_at + lifetime - Duration::from_secs(1),
        "expired early"
    );
}

/// A node at home that gets a connection back deregisters the client's binding; when its role
/// never ran the home test itself (with one stack per receive queue, the first queue's role
/// adopts connections another queue accepted), nothing else keeps the correspondent's entry,
/// yet the acknowledgement must still be there for its owner to see after further polls.
#[test]
fn a_deregistration_stays_acknowledged_where_no_home_test_ran() {
    let (a_ip, h) = (ip(CLIENT), ip(DS));
    let mut lan = lan(client_contact_acceptor().into(), false);
    let now = lan.now;
    mn(&mut lan, 1).start_home_test(now, a_ip, [1; 8]);
    mn(&mut lan, 2).start_care_of_test(now, a_ip, [2; 8]);
    steps(&mut lan, 20);
    let now = lan.now;
    let ticket = mn_ref(&lan, 1).home_ticket(now, 1).expect("home token");
    lan.ifs[2].add_home_addr(h);
    mn(&mut lan, 2)
        .bind(now, &ticket, a_ip, Duration::from_secs(60))
        .unwrap();
    while !mn_ref(&lan, 2).is_bound(lan.now) {
        lan.step();
        assert!(lan.now < now + Duration::from_secs(5), "no binding");
    }
    // Back home, to a role that ran no home test (a fresh one), with the acceptor's ticket.
    let now = lan.now;
    let back = mn_ref(&lan, 2)
        .ticket_for(now, a_ip, None)
        .expect("the acceptor's ticket");
    lan.ifs[1].set_mobility_hook(Box::new(MobileRole::new(h, None)));
    mn(&mut lan, 1)
        .bind(now, &back, a_ip, Duration::from_secs(60))
        .unwrap();
    steps(&mut lan, 50);
    let now = lan.now;
    assert!(
        mn_ref(&lan, 1).acknowledged_for(now, a_ip),
        "deregistration acknowledged: {:?}",
        mn(&mut lan, 1).take_events()
    );
    assert!(lan.ifs[0]
        .correspondent()
        .and_then(|c| c.entry(h))
        .is_none());
}

/// An ICMPv6 echo request from fd00::9 to `dst`, through a type 2 routing header naming
/// `home`, `twice` with a second one behind the first.
fn echo_via_rh2(dst: Ipv6Addr, home: Ipv6Addr, twice: bool) -> Vec<u8> {
    use ds_stack::wire::{Icmpv6Packet, Icmpv6Repr};
    let src = ip("fd00::9");
    let echo = Icmpv6Repr::EchoRequest {
        ident: 1,
        seq_no: 1,
        data: b"x",
    };
    let mut icmp = vec![0u8; echo.buffer_len()];
    echo.emit(
        &src,
        &home,
        &mut Icmpv6Packet::new_unchecked(&mut icmp[..]),
        &Default::default(),
    );
    let mut p = ds_mipv6::wire::PacketBuilder::new(src, dst)
        .with_rh2(home)
        .payload(58, &icmp);
    if twice {
        // IPv6 (40), then the routing header (24): a copy of it in front, its next header
        // the routing header.
        let mut rh = p[40..64].to_vec();
        rh[0] = 43;
        p.splice(40..40, rh);
        let len = u16::from_be_bytes([p[4], p[5]]) + 24;
        p[4..6].copy_from_slice(&len.to_be_bytes());
    }
    p
}

/// RFC 6275 §6.4: a type 2 routing header is taken once per packet and only on a packet to a
/// unicast address; one to a multicast group, or a second one, is dropped and counted (it
/// would make a packet to a group, or any packet, count as addressed to the home address).
/// §6.4, §11.3.3: its address must be a home address served here; naming another address of
/// the interface (here its care-of address fd00::1) it is dropped too.
#[test]
fn a_type_2_routing_header_to_a_group_or_twice_is_dropped() {
    let mut i = Interface::new(
        ds_stack::Config::new([2, 0, 0, 0, 0, 1], vec![ip("fd00::1")]),
        START,
    );
    let home = ip("fd00::100");
    i.add_home_addr(home);
    i.receive_ipv6(START, &echo_via_rh2(ip("fd00::1"), home, false), None);
    assert_eq!(i.stats().rx_bad_exthdr, 0, "to the unicast address: taken");
    i.receive_ipv6(START, &echo_via_rh2(ip("ff02::1"), home, false), None);
    assert_eq!(i.stats().rx_bad_exthdr, 1, "to all nodes");
    i.receive_ipv6(START, &echo_via_rh2(ip("fd00::1"), home, true), None);
    assert_eq!(i.stats().rx_bad_exthdr, 2, "two routing headers");
    i.receive_ipv6(
        START,
        &echo_via_rh2(ip("fd00::1"), ip("fd00::1"), false),
        None,
    );
    assert_eq!(
        i.stats().rx_bad_exthdr,
        3,
        "naming an address of the interface that is no home address"
    );
}
