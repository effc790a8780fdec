//! One interface per receive queue (issue: several cores): two sibling interfaces serve the
//! same address; the client's handshake reaches the first, everything after it the second
//! (as when a sender rehashes a flow to another queue, or a sibling adopted the connection).
//! The second passes the segments round to the first, which holds the connection: the data
//! goes through and nobody resets it. A segment no sibling knows is reset once, by the last
//! sibling it reaches. Neighbour Discovery reaching one sibling is shared with the other, and
//! so is a Mobility Header the mobile role of the sibling that received it did not ask for.
//! Sans-IO: frames and the passing between siblings are moved by the test.

use ds_stack::{Config, Instant, Interface, TcpState};
use proptest::prelude::*;
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

    /// A connection from the client's `from` to the server's port 80, the client's frames
    /// reaching sibling `at`, accepted there: (client's handle, server's).
    fn open(
        &mut self,
        from: SocketAddrV6,
        at: usize,
    ) -> (ds_stack::TcpHandle, ds_stack::TcpHandle) {
        self.to = at;
        let c = self
            .client
            .tcp_connect(self.now, from, SocketAddrV6::new(SERVER, 80, 0, 0))
            .expect("connect");
        loop {
            assert!(
                self.now < Instant::from_millis(1000),
                "no handshake at sibling {at}"
            );
            self.step();
            if let Some(s) = self.siblings[at].tcp_accept(self.listeners[at]) {
                return (c, s);
            }
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
        self.pass();
    }

    /// What the siblings passed each other, one hop each; how many packets moved.
    fn pass(&mut self) -> usize {
        let now = self.now;
        let n = self.siblings.len();
        let mut moved = 0;
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
                moved += 1;
            }
        }
        moved
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
    let (c, s) = net.open(SocketAddrV6::new(CLIENT, 40000, 0, 0), 0);
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

/// The home address of the mobile client of [`bound_mobile_client`].
const HOME: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x42);

/// A mobile client bound at the first of `n` siblings ([`bound_mobile_client`]).
struct Bound {
    net: Net,
    /// The client's connection opened at home, before the binding.
    early: ds_stack::TcpHandle,
    /// Its server side, at sibling `held_by`.
    held: ds_stack::TcpHandle,
    /// When the return-routability tests had to be answered by.
    until: Instant,
}

/// `n` siblings, the first the correspondent; a client that is a mobile node opens a
/// connection at home, held by sibling `held_by`, then (everything it sends now reaching
/// sibling `to`) runs the return-routability tests and binds.
fn bound_mobile_client(n: usize, held_by: usize, to: usize) -> Bound {
    use ds_stack::mobile::MobileRole;
    use std::time::Duration;
    let mut net = Net::build(vec![SERVER], n, false);
    net.client = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT, HOME]), net.now);
    net.client
        .set_mobility_hook(Box::new(MobileRole::new(HOME, Some(CLIENT))));
    // A connection opened at home (no mobility headers yet), held by sibling `held_by`.
    let (early, held) = net.open(SocketAddrV6::new(HOME, 39999, 0, 0), held_by);
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
    Bound {
        net,
        early,
        held,
        until,
    }
}

/// See [`a_mobile_client_binds_at_the_sibling_that_is_the_correspondent`]: `n` siblings, the
/// early connection held by sibling `held_by`, everything after its handshake sent to `to`.
fn mobile_client(n: usize, held_by: usize, to: usize) {
    use std::time::Duration;
    let case = format!("{n} siblings, held by {held_by}, frames to {to}");
    let Bound {
        mut net,
        early,
        held,
        until,
    } = bound_mobile_client(n, held_by, to);
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

/// A stray SYN of an established connection (a late duplicate, a replay, or a spoof by
/// someone who knows the 4-tuple) that reaches a sibling which does not hold the connection
/// opens one there, whose SYN-ACK the client answers with a challenge ACK (RFC 5961 §4):
/// that ACK, and every later segment of the connection reaching that sibling, is not the new
/// connection's and goes round to the sibling that holds the real one, where alone (RFC 9293
/// §3.10.7.4) the sibling would have reset it with a sequence number in the real
/// connection's window. The connection goes on both ways, reset by nobody.
#[test]
fn a_stray_syn_at_another_sibling_resets_nothing() {
    let mut net = Net::new();
    let (c, s) = net.open(SocketAddrV6::new(CLIENT, 40000, 0, 0), 0);
    let syn = net
        .sent
        .iter()
        .find(|f| f.len() > 14 + 40 + 13 && f[14 + 6] == 6 && f[14 + 40 + 13] == 0x02)
        .expect("the client's SYN")
        .clone();
    // Later (the initial sequence numbers' clock has moved), the SYN again, at the second.
    for _ in 0..50 {
        net.step();
    }
    net.to = 1;
    let now = net.now;
    net.siblings[1].receive(now, &syn);
    for round in 0..3u8 {
        assert!(
            exchange_once(&mut net, c, 0, s, b'a' + round),
            "exchange {round}"
        );
    }
    assert_eq!(net.client.tcp_state(c), Some(TcpState::Established));
    assert_eq!(net.resets, 0);
    // The second sibling did open a connection for the stray SYN, and passed what was not its.
    let s1 = net.siblings[1].stats();
    assert!(s1.sibling_tx > 0, "{s1:?}");
}

/// An established connection held by sibling `held` of three, everything after its
/// handshake reaching sibling `to`, data exchanged both ways: the client's handle, the
/// server's, and the net (whose `sent` holds every frame of the client).
fn held_elsewhere(held: usize, to: usize) -> (Net, ds_stack::TcpHandle, ds_stack::TcpHandle) {
    let mut net = Net::build(vec![SERVER], 3, false);
    let (c, s) = net.open(SocketAddrV6::new(CLIENT, 40000, 0, 0), held);
    net.to = to;
    assert!(exchange_once(&mut net, c, held, s, b'x'), "first exchange");
    (net, c, s)
}

/// A 5-byte request from the client to sibling `at`'s connection `s` and a 2-byte answer,
/// within 2 s: whether both arrived whole.
fn exchange_once(
    net: &mut Net,
    c: ds_stack::TcpHandle,
    at: usize,
    s: ds_stack::TcpHandle,
    byte: u8,
) -> bool {
    let mut buf = [0u8; 64];
    if net.client.tcp_send(c, &[byte; 5]).is_err() {
        return false;
    }
    let until = net.now + std::time::Duration::from_secs(2);
    let mut got = Vec::new();
    while got.len() < 5 && net.now < until {
        net.step();
        let n = net.siblings[at].tcp_recv(s, &mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
    }
    if got != [byte; 5] || net.siblings[at].tcp_send(s, b"ok").is_err() {
        return false;
    }
    let mut back = Vec::new();
    while back.len() < 2 && net.now < until {
        net.step();
        let n = net.client.tcp_recv(c, &mut buf).unwrap_or(0);
        back.extend_from_slice(&buf[..n]);
    }
    back == b"ok"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Hostile input on a node of several queues: a mutated copy of any frame a mobile
    /// client sent (return-routability messages, its Binding Update, segments with a Home
    /// Address option, plain segments), arriving at any of three siblings of which the first
    /// holds the binding, panics none of them, and what they pass each other for it stops
    /// within two rounds of the ring (a round to the correspondent, and one more for a packet
    /// it checked and sent round again). The client's connection goes on afterwards.
    #[test]
    fn mutated_mobile_frames_go_round_at_most_twice(
        pick in any::<prop::sample::Index>(),
        at in 0..3usize,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let Bound { mut net, early, held, .. } = bound_mobile_client(3, 1, 2);
        let mut f = net.sent[pick.index(net.sent.len())].clone();
        for (i, v) in flips {
            let n = f.len();
            f[i.index(n)] ^= v;
        }
        if let Some(c) = cut {
            f.truncate(c.index(f.len() + 1));
        }
        let now = net.now;
        net.siblings[at].receive(now, &f);
        let mut rounds = 0;
        while net.pass() > 0 {
            rounds += 1;
            prop_assert!(rounds <= 2 * 3, "still passed round after {rounds} hops");
        }
        // The early connection still carries data to the sibling that holds it.
        net.client.tcp_send(early, b"after").expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        let until = net.now + std::time::Duration::from_secs(2);
        while got.len() < 5 && net.now < until {
            net.step();
            let n = net.siblings[1].tcp_recv(held, &mut buf).unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(&got[..], b"after");
    }

    /// A late copy of any frame the client sent (its SYN, its handshake's ACK, a request,
    /// an ACK), arriving at any of three siblings while another holds the connection, as a
    /// duplicate delayed in the network or a replay would: the connection goes on both ways,
    /// reset by nobody.
    #[test]
    fn a_late_copy_of_any_client_frame_at_any_sibling_harms_nothing(
        held in 0..3usize,
        to in 0..3usize,
        pick in any::<prop::sample::Index>(),
        at in 0..3usize,
        later in 0..200u32,
    ) {
        let (mut net, c, s) = held_elsewhere(held, to);
        let f = net.sent[pick.index(net.sent.len())].clone();
        for _ in 0..later {
            net.step();
        }
        let now = net.now;
        net.siblings[at].receive(now, &f);
        for round in 0..3u8 {
            prop_assert!(exchange_once(&mut net, c, held, s, b'a' + round), "exchange {}", round);
        }
        prop_assert_eq!(net.client.tcp_state(c), Some(TcpState::Established));
        prop_assert_eq!(net.resets, 0);
    }

}
