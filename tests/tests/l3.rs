//! The stack's network layer against the kernel: NDP resolution both ways, ICMPv6 echo, UDP
//! (including datagrams larger than the MTU, fragmented and reassembled on both sides).

use ds_stack::device::TapDevice;
use ds_stack::ndp::NeighborState;
use ds_stack::runner::Runner;
use ds_testbed::conn::{dial, ip};
use ds_testbed::{ping6, require_root, KernelPeer, PingOpts, StackHost};
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

/// A kernel peer `{net}::1` (namespace prefix `{tag}p`) and our stack `{net}::2` on a host
/// bridged to it (`{tag}h`), MAC `02:d5:00:00:m:m`.
fn peer_and_stack(
    tag: &str,
    net: &str,
    m: u8,
) -> (KernelPeer, StackHost, Runner<TapDevice>, Ipv6Addr, Ipv6Addr) {
    let (peer_ip, ours) = (ip(&format!("{net}::1")), ip(&format!("{net}::2")));
    let mut peer = KernelPeer::new(&format!("{tag}p"), peer_ip).expect("peer");
    let host = peer.attach_host(&format!("{tag}h")).expect("host");
    let rt = host
        .stack([2, 0xd5, 0, 0, m, m], ours, |_| {})
        .expect("stack");
    (peer, host, rt, peer_ip, ours)
}

#[test]
fn kernel_pings_and_udp_echo_with_fragments() {
    if !require_root("kernel_pings_and_udp_echo_with_fragments") {
        return;
    }
    let (peer, _host, mut rt, peer_ip, ours) = peer_and_stack("l", "fd00:d3", 3);
    let u = rt
        .iface
        .udp_bind(SocketAddrV6::new(ours, 7, 0, 0))
        .expect("udp bind");
    let start = Instant::now();

    std::thread::scope(|sc| {
        let kernel = sc.spawn(|| {
            let ping = ping6(&peer.ns, ours, &PingOpts::count(5)).expect("ping");
            let echoed = peer.ns.run(|| {
                let s = UdpSocket::bind((peer_ip, 0)).expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut results = Vec::new();
                for len in [1usize, 100, 1452, 3000, 20_000] {
                    let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                    s.send_to(&msg, (ours, 7)).expect("send");
                    let mut buf = vec![0u8; 65536];
                    let (n, from) = s.recv_from(&mut buf).expect("echo reply");
                    results.push((len, n == len && buf[..n] == msg[..], from.ip().to_string()));
                }
                results
            });
            (ping, echoed)
        });
        let mut buf = vec![0u8; 65536];
        while !kernel.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(60), "timed out");
            rt.step(Duration::from_millis(5)).expect("step");
            while let Some((n, from)) = rt.iface.udp_recv_from(u, &mut buf).expect("udp recv") {
                let now = rt.now();
                rt.iface
                    .udp_send_to(now, u, &buf[..n], from)
                    .expect("udp send");
            }
        }
        let (ping, echoed) = kernel.join().expect("kernel thread");
        assert!(ping.all_received(), "ping: {ping:?}");
        for (len, ok, from) in echoed {
            assert!(ok, "UDP echo of {len} bytes");
            assert_eq!(from, ours.to_string());
        }
    });
    let st = rt.iface.stats();
    assert!(st.reassembled >= 2, "kernel fragments reassembled: {st:?}");
    assert!(st.rx_icmp >= 5);
    let (state, mac) = rt
        .iface
        .neighbors()
        .state(&peer_ip)
        .expect("kernel resolved by NDP");
    assert!(mac.is_some());
    assert!(matches!(
        state,
        NeighborState::Reachable
            | NeighborState::Stale
            | NeighborState::Delay
            | NeighborState::Probe
    ));
}

/// A connection attempt to a closed port ends at once with "refused", whether the peer
/// answers with RST (kernel default) or with ICMPv6 port unreachable (a firewall's reject).
#[test]
fn connect_refused_by_rst_and_by_icmp() {
    if !require_root("connect_refused_by_rst_and_by_icmp") {
        return;
    }
    let (peer, _host, mut rt, peer_ip, ours) = peer_and_stack("r", "fd00:d4", 4);
    peer.ns
        .exec(&["nft", "add table inet rej; add chain inet rej in { type filter hook input priority 0; }; add rule inet rej in tcp dport 9 reject with icmpv6 type port-unreachable"])
        .expect("nft reject rule");
    for port in [9u16, 10] {
        let c = dial(&mut rt, ours, SocketAddrV6::new(peer_ip, port, 0, 0));
        let start = Instant::now();
        let err = loop {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "port {port}: no refusal"
            );
            rt.step(Duration::from_millis(5)).expect("step");
            match rt.iface.tcp_send(c, b"x") {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err, ds_stack::Error::Refused, "port {port}");
        rt.iface.tcp_release(c);
    }
}
