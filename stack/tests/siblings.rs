//! One interface per receive queue (issue: several cores): two sibling interfaces serve the
//! same address; the client's handshake reaches the first, everything after it the second
//! (as when a sender rehashes a flow to another queue, or a sibling adopted the connection).
//! The second passes the segments round to the first, which holds the connection: the data
//! goes through and nobody resets it. A segment no sibling knows is reset once, by the last
//! sibling it reaches. Neighbour Discovery reaching one sibling is shared with the other, and
//! so is a Mobility Header the mobile role of the sibling that received it did not ask for.
//! Sans-IO: frames and the passing between siblings are moved by the test.

use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 2);
/// The capacity that marks a buffer given back to the sibling that passed it.
const GIVEN_BACK: usize = 16 * 1024;

struct Net {
    client: Interface,
    siblings: Vec<Interface>,
    now: Instant,
    /// Which sibling the client's frames reach.
    to: usize,
    /// TCP resets the siblings sent.
    resets: usize,
    listeners: Vec<ds_stack::ListenHandle>,
    /// How many passed packets were built in storage given back (marked by its capacity:
    /// [`GIVEN_BACK`]), and how many in new storage.
    passed_in_given_back: usize,
    passed_in_new: usize,
    /// Every frame the client sent.
    sent: Vec<Vec<u8>>,
}

fn is_tcp_rst(frame: &[u8]) -> bool {
    // Ethernet (14) + IPv6 (40), next header TCP, flags byte 13 of the TCP header.
    frame.len() >= 14 + 40 + 20 && frame[14 + 6] == 6 && frame[14 + 40 + 13] & 0x04 != 0
}

impl Net {
    fn new() -> Net {
        Net::with(vec![SERVER])
    }

    /// Two siblings serving `addrs` (listening on the first's port 80).
    fn with(addrs: Vec<Ipv6Addr>) -> Net {
        Net::build(addrs, 2, true)
    }

    /// `n` siblings serving `addrs`, in a ring; all correspondent nodes, or only the first
    /// (as on a node of several queues) unless `cn_on_all`.
    fn build(addrs: Vec<Ipv6Addr>, n: usize, cn_on_all: bool) -> Net {
        let now = Instant::from_millis(1);
        let listen = SocketAddrV6::new(addrs[0], 80, 0, 0);
        let cfg = Config::new([2, 0, 0, 0, 0, 0x80], addrs);
        let mut siblings: Vec<Interface> = (0..n)
            .map(|i| {
                let mut c = cfg.clone();
                c.correspondent = cn_on_all || i == 0;
                Interface::new(c, now)
            })
            .collect();
        let others = u8::try_from(n - 1).expect("siblings");
        let listeners = siblings
            .iter_mut()
            .map(|s| {
                s.set_siblings(others);
                s.tcp_listen(listen, 16).expect("listen")
            })
            .collect();
        Net {
            client: Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT]), now),
            siblings,
            now,
            to: 0,
            resets: 0,
            listeners,
            passed_in_given_back: 0,
            passed_in_new: 0,
            sent: Vec::new(),
        }
    }

    /// One millisecond: frames both ways, then what the siblings passed each other.
    fn step(&mut self) {
        self.now += std::time::Duration::from_millis(1);
        let now = self.now;
        let mut up = Vec::new();
        self.client.poll(now);
        self.client.transmit(now, &mut |f| up.push(f.to_vec()));
        for f in up {
            self.siblings[self.to].receive(now, &f);
            self.sent.push(f);
        }
        let mut down = Vec::new();
        for s in &mut self.siblings {
            s.poll(now);
            s.transmit(now, &mut |f| down.push(f.to_vec()));
        }
        for f in down {
            self.resets += usize::from(is_tcp_rst(&f));
            self.client.receive(now, &f);
        }
        let n = self.siblings.len();
        for i in 0..n {
            let mut passed = Vec::new();
            self.siblings[i].take_for_sibling(&mut passed);
            for (p, hops) in passed {
                if p.capacity() >= GIVEN_BACK {
                    self.passed_in_given_back += 1;
                } else {
                    self.passed_in_new += 1;
                }
                self.siblings[(i + 1) % n].receive_from_sibling(now, &p, hops);
                // Back to the sibling that built it, as `runner::siblings`' return channel
                // does (the runner's channels are not exercised here); marked by a capacity no
                // packet here needs (a pointer would not tell: the allocator hands a freed
                // block out again).
                let mut p = p;
                p.reserve_exact(GIVEN_BACK);
                self.siblings[i].recycle_sibling_buffer(p);
            }
        }
    }
}

#[test]
fn a_connection_whose_segments_reach_another_sibling_goes_on_and_unknown_ones_are_reset_once() {
    let mut net = Net::new();
    let now = net.now;
    let c = net
        .client
        .tcp_connect(
            now,
            SocketAddrV6::new(CLIENT, 40000, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    while net.client.tcp_state(c) != Some(TcpState::Established) {
        assert!(net.now < Instant::from_millis(1000), "no handshake");
        net.step();
    }
    // The first sibling holds it; the next segments go to the second.
    let s = loop {
        net.step();
        if let Some(s) = net.siblings[0].tcp_accept(net.listeners[0]) {
            break s;
        }
    };
    net.to = 1;
    net.client.tcp_send(c, b"hello").expect("send");
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 5 {
        assert!(net.now < Instant::from_millis(3000), "request lost");
        net.step();
        let n = net.siblings[0].tcp_recv(s, &mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello");
    net.siblings[0].tcp_send(s, b"world").expect("send");
    let mut back = Vec::new();
    while back.len() < 5 {
        assert!(net.now < Instant::from_millis(5000), "reply lost");
        net.step();
        let n = net.client.tcp_recv(c, &mut buf).unwrap_or(0);
        back.extend_from_slice(&buf[..n]);
    }
    assert_eq!(back, b"world");
    let (s0, s1) = (net.siblings[0].stats(), net.siblings[1].stats());
    assert!(s1.sibling_tx > 0 && s0.sibling_rx > 0, "{s0:?} {s1:?}");
    assert_eq!((s0.tcp_no_socket, s1.tcp_no_socket), (0, 0));
    assert_eq!(net.resets, 0);
    // The neighbour solicitation that reached the first sibling was passed to the second
    // (the only thing the first passed: the client's segments reached it only while it
    // held the connection).
    assert!(
        s0.sibling_tx > 0 && s1.sibling_rx > 0,
        "ND shared: {s0:?} {s1:?}"
    );

    // A connection nobody holds: the client's segment reaches the second sibling, goes
    // round to the first, which resets it (once).
    let c2 = net
        .client
        .tcp_connect(
            net.now,
            SocketAddrV6::new(CLIENT, 40001, 0, 0),
            SocketAddrV6::new(SERVER, 81, 0, 0),
        )
        .expect("connect");
    for _ in 0..5 {
        net.step();
    }
    assert!(
        net.client
            .tcp_state(c2)
            .is_none_or(|st| st == TcpState::Closed),
        "{:?}",
        net.client.tcp_state(c2)
    );
    let (s0, s1) = (net.siblings[0].stats(), net.siblings[1].stats());
    assert_eq!(
        (s0.tcp_no_socket, s1.tcp_no_socket, net.resets),
        (1, 0, 1),
        "reset by the last sibling only"
    );
}

#[test]
fn passed_packets_are_built_in_storage_given_back() {
    let mut net = Net::new();
    let c = net
        .client
        .tcp_connect(
            net.now,
            SocketAddrV6::new(CLIENT, 40000, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    let s = loop {
        assert!(net.now < Instant::from_millis(1000), "no handshake");
        net.step();
        if let Some(s) = net.siblings[0].tcp_accept(net.listeners[0]) {
            break s;
        }
    };
    // Adopted elsewhere, as it were: every segment of the client's from now on reaches the
    // second sibling and is passed to the first.
    net.to = 1;
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        net.client.tcp_send(c, b"ping").expect("send");
        let mut got = 0;
        while got < 4 {
            assert!(net.now < Instant::from_millis(20_000), "request lost");
            net.step();
            got += net.siblings[0].tcp_recv(s, &mut buf).unwrap_or(0);
        }
    }
    let (reused, new) = (net.passed_in_given_back, net.passed_in_new);
    assert!(
        reused + new >= 20,
        "{reused} + {new} passed: a request each at least"
    );
    // Each sibling's first pass only (the first sibling's: the neighbour solicitation), before
    // any storage came back.
    assert!(
        new <= 2,
        "{reused} passed in storage given back, {new} in new storage"
    );
}

#[test]
fn runners_give_passed_storage_back_to_the_sibling_that_built_it() {
    use ds_stack::device::mem_pair;
    use ds_stack::runner::{siblings, Runner};
    let cfg = Config::new([2, 0, 0, 0, 0, 0x80], vec![SERVER]);
    // The first sibling's queue is the client's cable; the second's leads nowhere (kept
    // alive: a cable without its other end reports an error).
    let (d0, to_client) = mem_pair(1500);
    let (d1, _nowhere) = mem_pair(1500);
    let mut r0 = Runner::new(d0, Interface::new(cfg.clone(), Instant::ZERO));
    let mut r1 = Runner::new(d1, Interface::new(cfg, Instant::ZERO));
    let mut links = siblings(2).expect("links").into_iter();
    r0.set_siblings(links.next().expect("link 0"));
    r1.set_siblings(links.next().expect("link 1"));
    let mut client = Runner::new(
        to_client,
        Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT]), Instant::ZERO),
    );
    // SYNs to a port nobody listens on: the first sibling passes each to the second, whose
    // runner gives the storage back through the return channel.
    for k in 0..20u16 {
        let now = client.now();
        client
            .iface
            .tcp_connect(
                now,
                SocketAddrV6::new(CLIENT, 41000 + k, 0, 0),
                SocketAddrV6::new(SERVER, 81, 0, 0),
            )
            .expect("connect");
        for _ in 0..3 {
            client.process().expect("client");
            r0.process().expect("sibling 0");
            r1.process().expect("sibling 1");
        }
    }
    let (s0, s1) = (r0.iface.stats(), r1.iface.stats());
    assert!(s0.sibling_tx >= 20 && s1.sibling_rx >= 20, "{s0:?} {s1:?}");
    // All but the first few (before any storage came back) were built in storage given back.
    assert!(
        s0.sibling_tx_reused + 3 >= s0.sibling_tx,
        "{} of {} passed in storage given back",
        s0.sibling_tx_reused,
        s0.sibling_tx
    );
}

fn role(net: &mut Net, i: usize) -> &mut ds_stack::mobile::MobileRole {
    net.siblings[i]
        .mobility_hook_mut::<ds_stack::mobile::MobileRole>()
        .expect("role")
}

/// Route optimisation with one mobile role per sibling: the correspondent's answers (HoT,
/// CoT, BA) reach the sibling that did not ask, which passes them round to the one that did.
#[test]
fn mobility_answers_reach_the_sibling_whose_role_asked() {
    use ds_stack::mobile::MobileRole;
    use std::time::Duration;
    const DS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x99);
    let mut net = Net::with(vec![SERVER, DS]);
    for s in &mut net.siblings {
        s.set_mobility_hook(Box::new(MobileRole::new(DS, Some(SERVER))));
    }
    // Both tests from the second sibling; every answer reaches the first.
    let now = net.now;
    role(&mut net, 1).start_home_test(now, CLIENT, *b"home-tst");
    role(&mut net, 1).start_care_of_test(now, CLIENT, *b"coa-test");
    let until = now + Duration::from_millis(500);
    loop {
        let now = net.now;
        let r = role(&mut net, 1);
        if r.has_care_of_token_for(now, CLIENT) && r.ticket_for(now, CLIENT, None).is_some() {
            break;
        }
        assert!(
            now < until,
            "the tests' answers did not reach the sibling that asked"
        );
        net.step();
    }
    assert!(
        !role(&mut net, 0).has_care_of_token(),
        "the first sibling asked nothing"
    );
    // The Binding Update from the second; the acknowledgement reaches the first.
    let now = net.now;
    let r = role(&mut net, 1);
    let ticket = r.ticket_for(now, CLIENT, None).expect("home ticket");
    r.bind(now, &ticket, CLIENT, Duration::from_secs(60))
        .expect("bind");
    let until = now + Duration::from_millis(500);
    loop {
        let now = net.now;
        if role(&mut net, 1).acknowledged_for(now, CLIENT) {
            break;
        }
        assert!(now < until, "no acknowledgement");
        net.step();
    }
    let cn = net.client.correspondent().expect("correspondent");
    assert!(cn.entry(DS).is_some(), "the client holds the binding");
    let (s0, s1) = (net.siblings[0].stats(), net.siblings[1].stats());
    // Every frame of the client's reached the first sibling: what the second's role got,
    // it got round the siblings.
    assert!(s1.mobility_rx >= 3, "HoT, CoT, BA passed: {s1:?}");
    assert_eq!((s0.mobility_unexpected, s1.mobility_unexpected), (0, 0));
    // The care-of test's answer once more: nobody expects it now. It goes round once and
    // the last sibling drops it.
    let cot = net
        .sent
        .iter()
        .find(|f| f.len() > 14 + 40 + 2 && f[14 + 6] == 135 && f[14 + 40 + 2] == 4)
        .expect("the client's CoT")
        .clone();
    let tx1 = net.siblings[1].stats().sibling_tx;
    let now = net.now;
    net.siblings[0].receive(now, &cot);
    net.step();
    net.step();
    let (s0, s1) = (net.siblings[0].stats(), net.siblings[1].stats());
    assert_eq!(
        (s0.mobility_unexpected, s1.mobility_unexpected),
        (0, 1),
        "dropped by the last sibling"
    );
    assert_eq!(s1.sibling_tx, tx1, "not passed on again");
    let now = net.now;
    assert!(role(&mut net, 1).is_bound(now));
    assert!(
        !role(&mut net, 0).is_bound(now),
        "the first asked for nothing"
    );
}

fn mn(net: &mut Net) -> &mut ds_stack::mobile::MobileRole {
    net.client
        .mobility_hook_mut::<ds_stack::mobile::MobileRole>()
        .expect("mobile role")
}

/// A client that is itself a mobile node (RFC 6275 §11), served by siblings of which only the
/// first is a correspondent node, as on a node of several queues: everything the client sends
/// reaches another, which passes its return-routability messages, its Binding Update and its
/// packets with a Home Address option round to the first. The binding is made there, a
/// connection from the home address opened before goes on where it is held, and a new one is
/// served route-optimised. Two siblings, and three with the connection held by the one that
/// receives nothing or by the one that receives everything.
#[test]
fn a_mobile_client_binds_at_the_sibling_that_is_the_correspondent() {
    for (n, held_by, to) in [(2, 1, 1), (3, 1, 2), (3, 2, 2)] {
        mobile_client(n, held_by, to);
    }
}

/// See [`a_mobile_client_binds_at_the_sibling_that_is_the_correspondent`]: `n` siblings, the
/// early connection held by sibling `held_by`, everything after its handshake sent to `to`.
fn mobile_client(n: usize, held_by: usize, to: usize) {
    use ds_stack::mobile::MobileRole;
    use std::time::Duration;
    const HOME: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x42);
    let case = format!("{n} siblings, held by {held_by}, frames to {to}");
    let mut net = Net::build(vec![SERVER], n, false);
    net.client = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT, HOME]), net.now);
    net.client
        .set_mobility_hook(Box::new(MobileRole::new(HOME, Some(CLIENT))));
    net.to = held_by;
    // A connection opened at home (no mobility headers yet), held by sibling `held_by`.
    let early = net
        .client
        .tcp_connect(
            net.now,
            SocketAddrV6::new(HOME, 39999, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    let held = loop {
        assert!(net.now < Instant::from_millis(1000), "no handshake at home");
        net.step();
        if let Some(h) = net.siblings[held_by].tcp_accept(net.listeners[held_by]) {
            break h;
        }
    };
    net.to = to;
    let now = net.now;
    mn(&mut net).start_home_test(now, SERVER, *b"home-tst");
    mn(&mut net).start_care_of_test(now, SERVER, *b"coa-test");
    let until = now + Duration::from_millis(500);
    let ticket = loop {
        let now = net.now;
        let r = mn(&mut net);
        if r.has_care_of_token_for(now, SERVER) {
            if let Some(t) = r.home_ticket(now, 1) {
                break t;
            }
        }
        assert!(now < until, "the correspondent's tests were not answered");
        net.step();
    };
    let now = net.now;
    mn(&mut net)
        .bind(now, &ticket, SERVER, Duration::from_secs(60))
        .expect("bind");
    while !{
        let now = net.now;
        mn(&mut net).is_bound(now)
    } {
        assert!(net.now < until + Duration::from_millis(500), "no binding");
        net.step();
    }
    let cn = net.siblings[0]
        .correspondent()
        .expect("the first is the correspondent");
    assert!(
        cn.entry(HOME).is_some(),
        "the binding is the first sibling's"
    );
    // The early connection's segments now carry a Home Address option: checked at the
    // first sibling, they go round again to the second, which holds it.
    net.client.tcp_send(early, b"moved").expect("send");
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    while got.len() < 5 {
        assert!(
            net.now < until + Duration::from_secs(2),
            "the early connection's data"
        );
        net.step();
        let n = net.siblings[held_by].tcp_recv(held, &mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"moved");
    // Checked and sent round again, it is still a sibling's packet: no SYN cookie check.
    assert_eq!(net.siblings[0].stats().tcp_syncookies_failed, 0);
    // A connection from the home address: its packets carry a Home Address option (the
    // second passes them round), the answers a type 2 routing header.
    let c = net
        .client
        .tcp_connect(
            net.now,
            SocketAddrV6::new(HOME, 40000, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    while net.client.tcp_state(c) != Some(TcpState::Established) {
        assert!(net.now < until + Duration::from_secs(2), "no handshake");
        net.step();
    }
    for (i, st) in net.siblings.iter().enumerate() {
        assert_eq!(
            (st.stats().rx_bad_exthdr, st.stats().mobility_unexpected),
            (0, 0),
            "{case}: nothing refused by sibling {i}: {:?}",
            st.stats()
        );
    }
    assert!(net.siblings[0].stats().sibling_rx > 0, "{case}");
    assert_eq!(net.resets, 0, "{case}");
}
