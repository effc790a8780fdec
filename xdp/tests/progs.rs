//! `BPF_PROG_TEST_RUN` unit tests of the steering and tunnel programs on crafted packets.
//! Loading BPF needs root: without it every test prints `SKIP: <name> needs root`.

use ds_testbed::require_root;
use ds_xdp::maps::{
    Action, FlowKey, HoldKey, LocalAddr, TunnelConfig, TunnelMode, PROTO_ALL, PROTO_TCP,
};
use ds_xdp::{Kind, LoadOptions, Program};
use std::net::Ipv6Addr;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const HA_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal address")
}

fn client() -> Ipv6Addr {
    ip("fd00:c::1")
}
fn ds() -> Ipv6Addr {
    ip("fd00:d5::80")
}
fn ha() -> Ipv6Addr {
    ip("fd00:a::1")
}
fn node1() -> Ipv6Addr {
    ip("fd00:1::1")
}
fn node2() -> Ipv6Addr {
    ip("fd00:2::1")
}

fn tcp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + payload];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10;
    t
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60 | 0x0b; // version 6, traffic class 0xb8 (EF) split over two bytes
    p[1] = 0x80;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = nh;
    p[7] = hop;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn client_tcp(sport: u16, hop: u8) -> Vec<u8> {
    from_client(ds(), 6, hop, &tcp(sport, 80, 100))
}

/// The client's SYN from `sport` (a connection's first segment: the one a flow is learned
/// from).
fn client_syn(sport: u16) -> Vec<u8> {
    let mut t = tcp(sport, 80, 0);
    t[13] = 0x02;
    from_client(ds(), 6, 64, &t)
}

/// The program `$make` builds; returns from the test (skips it) when not running as root.
macro_rules! program_or_skip {
    ($test:literal, $make:expr) => {
        match require_root($test).then($make) {
            Some(p) => p,
            None => return,
        }
    };
}

/// The program's verdict on `frame`.
fn verdict(p: &Program, frame: &[u8]) -> u32 {
    p.test_run(frame).expect("run").0
}

/// Each counter named in `want` (`name=value …`) has that value.
fn assert_counters(p: &Program, want: &str) {
    let counters = p.counters().expect("counters");
    for (name, value) in want.split_whitespace().filter_map(|w| w.split_once('=')) {
        let got = counters.iter().find(|(n, _)| *n == name);
        let got = got.unwrap_or_else(|| panic!("no counter {name}")).1;
        assert_eq!(got.to_string(), value, "counter {name}");
    }
}

/// The client's TCP flow from `sport` to DS:80.
fn client_flow(sport: u16) -> FlowKey {
    FlowKey {
        src: client(),
        dst: ds(),
        sport,
        dport: 80,
        proto: 6,
    }
}

/// The same flow as a socket at the DS address sees it.
fn client_hold(rport: u16) -> HoldKey {
    HoldKey {
        local: ds(),
        remote: client(),
        lport: 80,
        rport,
    }
}

/// A frame from the client to the HA's MAC: IPv6 to `dst` with this next header and payload.
fn from_client(dst: Ipv6Addr, nh: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        HA_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(client(), dst, nh, hop, payload),
    )
}

/// `inner` tunnelled by the home agent to node 1.
fn tunnelled(inner: &[u8]) -> Vec<u8> {
    eth(HA_MAC, GW_MAC, 0x86dd, &ipv6(ha(), node1(), 41, 64, inner))
}

fn local(protos: u32, action: Action) -> LocalAddr {
    LocalAddr { protos, action }
}

/// Configure these local addresses: everything for them goes to the kernel.
fn to_kernel(p: &Program, addrs: &[Ipv6Addr]) {
    for a in addrs {
        p.add_local(*a, local(PROTO_ALL, Action::Pass))
            .expect("local");
    }
}

fn steer() -> Program {
    Program::load(Kind::Steer, &LoadOptions::default()).expect("load steer")
}

fn tunnel(learn: bool) -> Program {
    let p = Program::load(Kind::Tunnel, &LoadOptions::default()).expect("load tunnel");
    p.set_config(&TunnelConfig {
        local: ha(),
        mode: TunnelMode::Gateway(GW_MAC),
        hop_limit: 64,
        mtu: 1500,
        learn,
    })
    .expect("config");
    p.set_binding(ds(), node1()).expect("binding");
    p
}

/// Check the outer header of a tunnelled frame; returns the inner IPv6 packet.
fn check_outer(out: &[u8], inner_len: usize, owner: Ipv6Addr) -> Vec<u8> {
    assert_eq!(out.len(), 14 + 40 + inner_len, "frame grew by one header");
    assert_eq!(&out[..6], &GW_MAC, "to the gateway");
    assert_eq!(&out[6..12], &HA_MAC, "from the HA's MAC");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let o = &out[14..54];
    assert_eq!(o[0] >> 4, 6, "version");
    let tc = ((o[0] & 0x0f) << 4) | (o[1] >> 4);
    assert_eq!(tc, 0xb8, "traffic class copied (RFC 2473 §6.4)");
    let label = u32::from_be_bytes([0, o[1] & 0x0f, o[2], o[3]]);
    assert_ne!(label, 0, "flow label set (RFC 6438)");
    assert_eq!(
        u16::from_be_bytes([o[4], o[5]]) as usize,
        inner_len,
        "payload length"
    );
    assert_eq!(o[6], 41, "next header IPv6");
    assert_eq!(o[7], 64, "tunnel hop limit");
    assert_eq!(&o[8..24], &ha().octets(), "outer source = HA");
    assert_eq!(&o[24..40], &owner.octets(), "outer destination = owner");
    out[54..].to_vec()
}

/// RFC 1071 ones'-complement sum.
fn csum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    sum
}

/// Check a Packet Too Big sent back for `orig`.
fn check_ptb(out: &[u8], orig: &[u8], mtu: u32) {
    assert_eq!(
        out.len(),
        14 + 40 + 8 + 1216,
        "quote as large as the minimum MTU allows"
    );
    assert_eq!(&out[..6], &CLIENT_MAC, "back to the sender");
    assert_eq!(&out[6..12], &HA_MAC);
    let ip6 = &out[14..54];
    assert_eq!(ip6[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([ip6[4], ip6[5]]), 8 + 1216);
    assert_eq!(ip6[6], 58);
    assert_eq!(&ip6[8..24], &ha().octets(), "from the tunnel entry point");
    assert_eq!(&ip6[24..40], &client().octets(), "to the source");
    let icmp = &out[54..];
    assert_eq!((icmp[0], icmp[1]), (2, 0), "Packet Too Big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        mtu
    );
    assert_eq!(
        &icmp[8..],
        &orig[14..14 + 1216],
        "quotes the offending packet"
    );
    let mut sum = csum(&ip6[8..40], 0);
    sum += (8 + 1216) + 58;
    sum = csum(icmp, sum);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "valid ICMPv6 checksum");
}

#[test]
fn tunnel_miss_falls_back_to_binding_and_learns() {
    let p = program_or_skip!("tunnel_miss_falls_back_to_binding_and_learns", || tunnel(
        true
    ));
    // A flow is learned from its SYN (issue 12: not from any segment).
    let frame = client_syn(40000);
    let (rv, out) = p.test_run(&frame).expect("run");
    assert_eq!(rv, XDP_TX);
    let inner = check_outer(&out, frame.len() - 14, node1());
    assert_eq!(inner[7], 63, "inner hop limit decremented (RFC 2473 §3.1)");
    assert_eq!(
        &inner[8..],
        &frame[14 + 8..],
        "rest of the inner packet intact"
    );
    assert_counters(&p, "binding=1 flow_learned=1");
    let key = client_flow(40000);
    let v = p.flow(&key).expect("lookup").expect("flow learned");
    assert_eq!(v.owner, node1());
    assert_eq!(v.packets, 1);
}

/// Issue 12, finding 7: spoofed traffic evicted a handed-off connection's entry from the
/// learned LRU table and the client's next request was reset. A moved flow now lives in a
/// table the program never evicts from, and segments other than a SYN learn nothing.
#[test]
fn tunnel_moved_flows_survive_a_spoofed_flood_and_only_syns_are_learned() {
    let p = program_or_skip!(
        "tunnel_moved_flows_survive_a_spoofed_flood_and_only_syns_are_learned",
        || {
            let p = Program::load(
                Kind::Tunnel,
                &LoadOptions {
                    flow_capacity: Some(64),
                    ..LoadOptions::default()
                },
            )
            .expect("load tunnel");
            p.set_config(&TunnelConfig {
                local: ha(),
                mode: TunnelMode::Gateway(GW_MAC),
                hop_limit: 64,
                mtu: 1500,
                learn: true,
            })
            .expect("config");
            p.set_binding(ds(), node1()).expect("binding");
            p
        }
    );
    // A keep-alive connection, learned from its SYN, then handed off to node 2.
    assert_eq!(verdict(&p, &client_syn(41000)), XDP_TX);
    let key = client_flow(41000);
    p.set_flow(&key, node2()).expect("move flow");
    // Spoofed floods: 2 × 1,000 SYNs from other sources (each learned, churning the 64-entry
    // LRU table), and 1,000 spoofed non-SYN segments (learning nothing).
    for round in 0..2u16 {
        for i in 0..1000u16 {
            let mut t = tcp(1000 + i, 80, 0);
            t[13] = 0x02;
            let src = Ipv6Addr::new(0xfd00, 0x66, round, 0, 0, 0, 0, i + 1);
            let f = eth(HA_MAC, CLIENT_MAC, 0x86dd, &ipv6(src, ds(), 6, 64, &t));
            assert_eq!(verdict(&p, &f), XDP_TX);
        }
    }
    for i in 0..1000u16 {
        let src = Ipv6Addr::new(0xfd00, 0x67, 0, 0, 0, 0, 0, i + 1);
        let f = eth(
            HA_MAC,
            CLIENT_MAC,
            0x86dd,
            &ipv6(src, ds(), 6, 64, &tcp(2000, 80, 10)),
        );
        assert_eq!(verdict(&p, &f), XDP_TX);
    }
    let learned = p.flows().expect("flows").len();
    assert!(learned <= 64 + 1, "{learned} flows");
    // The handed-off connection's next request still goes to node 2.
    let (rv, out) = p.test_run(&client_tcp(41000, 64)).expect("run");
    assert_eq!(rv, XDP_TX);
    check_outer(&out, client_tcp(41000, 64).len() - 14, node2());
    let c = p.counters().expect("counters");
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    assert_eq!(get("not_learned"), Some(1000), "{c:?}");
    assert_eq!(p.moved_flows().expect("moved").len(), 1);
}

#[test]
fn tunnel_flow_hit_after_one_map_update() {
    let p = program_or_skip!("tunnel_flow_hit_after_one_map_update", || tunnel(true));
    let frame = client_tcp(40001, 64);
    assert_eq!(verdict(&p, &client_syn(40001)), XDP_TX);
    let key = client_flow(40001);
    p.set_flow(&key, node2()).expect("move flow");
    let (rv, out) = p.test_run(&frame).expect("run");
    assert_eq!(rv, XDP_TX);
    check_outer(&out, frame.len() - 14, node2());
    assert_counters(&p, "flow_hit=1");
    // Another flow of the same client still follows the binding.
    let other = client_tcp(40002, 64);
    let (_, out) = p.test_run(&other).expect("run");
    check_outer(&out, other.len() - 14, node1());
    let v = p.flow(&key).expect("lookup").expect("flow");
    assert_eq!((v.owner, v.packets), (node2(), 2));
}

#[test]
fn tunnel_without_learning_keeps_no_state() {
    let p = program_or_skip!("tunnel_without_learning_keeps_no_state", || tunnel(false));
    let frame = client_tcp(40003, 64);
    let (rv, out) = p.test_run(&frame).expect("run");
    assert_eq!(rv, XDP_TX);
    check_outer(&out, frame.len() - 14, node1());
    assert!(p.flows().expect("flows").is_empty());
}

#[test]
fn tunnel_routes_icmp_errors_to_the_flow_owner() {
    let p = program_or_skip!("tunnel_routes_icmp_errors_to_the_flow_owner", || tunnel(
        true
    ));
    let key = client_flow(40004);
    p.set_flow(&key, node2()).expect("flow");
    // A router's Packet Too Big about the node's reply (DS:80 -> client:40004).
    let quoted = ipv6(ds(), client(), 6, 60, &tcp(80, 40004, 1200));
    let mut icmp = vec![2u8, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend_from_slice(&quoted[..1232 - 8]);
    let router = ip("fd00:99::1");
    let frame = eth(HA_MAC, GW_MAC, 0x86dd, &ipv6(router, ds(), 58, 64, &icmp));
    let (rv, out) = p.test_run(&frame).expect("run");
    assert_eq!(rv, XDP_TX);
    check_outer(&out, frame.len() - 14, node2());
    assert_counters(&p, "icmp_error=1");
    // An error about an unknown flow goes to the binding, and is not learned.
    let quoted = ipv6(ds(), client(), 6, 60, &tcp(80, 49999, 0));
    let mut icmp = vec![1u8, 4, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    let frame = eth(HA_MAC, GW_MAC, 0x86dd, &ipv6(router, ds(), 58, 64, &icmp));
    let (_, out) = p.test_run(&frame).expect("run");
    check_outer(&out, frame.len() - 14, node1());
    assert_eq!(p.flows().expect("flows").len(), 1);
}

#[test]
fn tunnel_passes_and_drops() {
    let p = program_or_skip!("tunnel_passes_and_drops", || tunnel(true));
    // Not for a home address.
    let other = from_client(ha(), 6, 64, &tcp(1, 22, 0));
    assert_eq!(verdict(&p, &other), XDP_PASS);
    // Not IPv6.
    let arp = eth([0xff; 6], CLIENT_MAC, 0x0806, &[0u8; 28]);
    assert_eq!(verdict(&p, &arp), XDP_PASS);
    // Hop limit would expire: the kernel answers Time Exceeded.
    assert_eq!(verdict(&p, &client_tcp(1, 1)), XDP_PASS);
    // Too big once encapsulated: answered with Packet Too Big (RFC 2473 §7.1, RFC 4443 §3.2).
    let big = from_client(ds(), 6, 64, &tcp(2, 80, 1440));
    let (rv, out) = p.test_run(&big).expect("run");
    assert_eq!(rv, XDP_TX);
    check_ptb(&out, &big, 1460);
    // A second one within the rate limit is dropped.
    assert_eq!(verdict(&p, &big), XDP_DROP);
    // Truncated: no IPv6 header, half an IPv6 header, a cut TCP header, a lying length.
    let full = client_tcp(3, 64);
    // (The kernel refuses test frames shorter than an Ethernet header.)
    for cut in [14usize, 14 + 20, 14 + 40 + 2] {
        let (rv, _) = p.test_run(&full[..cut]).expect("run");
        assert_eq!(rv, XDP_DROP, "cut at {cut}");
    }
    let mut liar = full.clone();
    liar[14 + 4..14 + 6].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(verdict(&p, &liar), XDP_DROP);
    // A truncated extension header chain.
    let mut ext = ipv6(client(), ds(), 60, 64, &[6u8, 10, 0, 0, 0, 0, 0, 0]);
    ext.truncate(40 + 8);
    let f = eth(HA_MAC, CLIENT_MAC, 0x86dd, &ext);
    assert_eq!(verdict(&p, &f), XDP_DROP);
    assert_counters(
        &p,
        "pass_no_binding=1 pass_not_ipv6=1 pass_hop_limit=1 ptb=1 drop_too_big=1 drop_malformed=5",
    );
    assert!(p.flows().expect("flows").is_empty(), "nothing learned");
}

#[test]
fn steer_passes_foreign_and_unconfigured_traffic() {
    let p = program_or_skip!("steer_passes_foreign_and_unconfigured_traffic", steer);
    p.add_local(ds(), local(PROTO_TCP, Action::Xsk))
        .expect("local");
    let other = from_client(ha(), 6, 64, &tcp(1, 22, 0));
    assert_eq!(verdict(&p, &other), XDP_PASS);
    let udp = from_client(ds(), 17, 64, &[0u8; 8]);
    assert_eq!(verdict(&p, &udp), XDP_PASS);
    let arp = eth([0xff; 6], CLIENT_MAC, 0x0806, &[0u8; 28]);
    assert_eq!(verdict(&p, &arp), XDP_PASS);
    // For us, but no socket is bound on the queue yet.
    assert_eq!(verdict(&p, &client_tcp(5, 64)), XDP_PASS);
    assert_counters(
        &p,
        "pass_not_local=1 pass_proto=1 pass_not_ipv6=1 pass_no_socket=1",
    );
}

#[test]
fn steer_decapsulates_tunnelled_packets() {
    let p = program_or_skip!("steer_decapsulates_tunnelled_packets", steer);
    to_kernel(&p, &[node1(), ds()]);
    let inner = ipv6(client(), ds(), 6, 63, &tcp(40000, 80, 64));
    let frame = tunnelled(&inner);
    let (rv, out) = p.test_run(&frame).expect("run");
    assert_eq!(rv, XDP_PASS, "to the kernel, as configured");
    assert_eq!(&out[..14], &frame[..14], "Ethernet header kept");
    assert_eq!(&out[14..], &inner[..], "outer header removed");
    // Tunnelled to us but the inner destination is not ours: dropped.
    let foreign = ipv6(client(), ip("fd00:d5::99"), 6, 63, &tcp(1, 80, 0));
    let frame = tunnelled(&foreign);
    assert_eq!(verdict(&p, &frame), XDP_DROP);
    // Truncated inner header.
    let frame = tunnelled(&inner[..20]);
    assert_eq!(verdict(&p, &frame), XDP_DROP);
    assert_counters(
        &p,
        "decap=2 pass_kernel=1 drop_decap_foreign=1 drop_malformed=1",
    );
}

#[test]
fn steer_redirects_to_the_socket() {
    let p = program_or_skip!("steer_redirects_to_the_socket", steer);
    p.add_local(ds(), ds_xdp::loader::xsk_all()).expect("local");
    // An AF_XDP socket bound to the loopback device of a private network namespace.
    let sock = std::thread::spawn(|| {
        // SAFETY: unshare only affects this (short-lived, dedicated) thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare");
        ds_xdp::xsk::XskSocket::open("lo", 0, &ds_xdp::xsk::XskConfig::default())
    })
    .join()
    .expect("thread")
    .expect("xsk on lo");
    p.set_xsk(0, sock.fd()).expect("xsks_map");
    let (rv, _) = p.test_run(&client_tcp(6, 64)).expect("run");
    assert_eq!(rv, XDP_REDIRECT);
    // Neighbour solicitation for our address, to its solicited-node group.
    let mut ns = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&ds().octets());
    let mcast = ip("ff02::1:ff00:80");
    let frame = eth(
        [0x33, 0x33, 0xff, 0, 0, 0x80],
        CLIENT_MAC,
        0x86dd,
        &ipv6(client(), mcast, 58, 255, &ns),
    );
    assert_eq!(verdict(&p, &frame), XDP_REDIRECT);
    // Truncated.
    let full = client_tcp(7, 64);
    assert_eq!(verdict(&p, &full[..30]), XDP_DROP);
    assert_counters(&p, "xsk=2 drop_malformed=1");
    p.clear_xsk(0).expect("clear");
}

/// Read every record waiting in the hold ring.
fn drain_ring(ring: &mut ds_xdp::hold::HoldRing) -> Vec<(HoldKey, Vec<u8>)> {
    let mut out = Vec::new();
    ring.read(usize::MAX, |k, p| out.push((k, p.to_vec())));
    out
}

#[test]
fn steer_holds_tunnelled_and_native_packets() {
    let p = program_or_skip!("steer_holds_tunnelled_and_native_packets", steer);
    to_kernel(&p, &[node1(), ds()]);
    let held = p.held_flows().expect("held_flows");
    let mut ring = p.hold_ring().expect("hold_ring");
    // The socket's view: local = DS:80, remote = client:40000.
    let key = client_hold(40000);
    held.hold(&key).expect("hold");

    // Tunnelled by the home agent: decapsulated, then held whole (inner header on).
    let inner = ipv6(client(), ds(), 6, 63, &tcp(40000, 80, 64));
    let frame = tunnelled(&inner);
    assert_eq!(verdict(&p, &frame), XDP_DROP, "held");
    // Natively addressed (no tunnel), with Ethernet padding after it: held without it.
    let second = ipv6(client(), ds(), 6, 63, &tcp(40000, 80, 5));
    let mut frame = eth(HA_MAC, CLIENT_MAC, 0x86dd, &second);
    frame.extend_from_slice(&[0xee; 6]);
    assert_eq!(verdict(&p, &frame), XDP_DROP, "held");
    // Other flows pass: another client port, and the reverse direction's 4-tuple.
    let other = client_tcp(40001, 64);
    assert_eq!(verdict(&p, &other), XDP_PASS);
    let reverse = from_client(ds(), 6, 63, &tcp(80, 40000, 0));
    assert_eq!(verdict(&p, &reverse), XDP_PASS);

    let got = drain_ring(&mut ring);
    assert_eq!(got.len(), 2, "two held, oldest first");
    assert_eq!(got[0], (key, inner.clone()));
    assert_eq!(got[1], (key, second.clone()));
    let v = held.get(&key).expect("get").expect("still held");
    assert_eq!(v.packets, 2);
    assert_eq!(v.bytes as usize, inner.len() + second.len());
    assert_eq!(v.lost, 0);

    // A packet longer than its IPv6 payload length says is malformed: not copied, counted.
    let mut bad = ipv6(client(), ds(), 6, 63, &tcp(40000, 80, 10));
    bad[4..6].copy_from_slice(&500u16.to_be_bytes());
    let frame = eth(HA_MAC, CLIENT_MAC, 0x86dd, &bad);
    assert_eq!(verdict(&p, &frame), XDP_DROP);
    assert!(drain_ring(&mut ring).is_empty());
    assert_eq!(held.get(&key).expect("get").expect("held").lost, 1);

    // Released: one map update, and the flow passes again.
    assert_eq!(
        held.release(&key).expect("release").map(|v| v.packets),
        Some(2)
    );
    assert_eq!(held.release(&key).expect("release"), None, "not held twice");
    let frame = tunnelled(&inner);
    assert_eq!(verdict(&p, &frame), XDP_PASS);
    assert!(drain_ring(&mut ring).is_empty());

    assert_counters(&p, "held=2 drop_hold_lost=1 decap=2");
}

#[test]
fn steer_holds_without_configured_addresses() {
    // A host that loads the program only to hold (ds_kernel::HoldTable::attach): nothing in
    // local_addrs, every other packet passes.
    let p = program_or_skip!("steer_holds_without_configured_addresses", steer);
    let held = p.held_flows().expect("held_flows");
    let mut ring = p.hold_ring().expect("hold_ring");
    let key = client_hold(7);
    held.hold(&key).expect("hold");
    let frame = client_tcp(7, 64);
    assert_eq!(verdict(&p, &frame), XDP_DROP);
    assert_eq!(verdict(&p, &client_tcp(8, 64)), XDP_PASS);
    let got = drain_ring(&mut ring);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame[14..].to_vec());
    // A userspace (AF_XDP) address is not held by the program: its stack holds by itself.
    p.add_local(ds(), ds_xdp::loader::xsk_all()).expect("local");
    assert_eq!(
        verdict(&p, &frame),
        XDP_PASS,
        "no socket on the queue: passed"
    );
    assert!(drain_ring(&mut ring).is_empty());
}
