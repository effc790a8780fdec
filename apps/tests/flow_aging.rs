//! The home agent's table of moved flows is bounded by the connections that live: a moved
//! flow without a packet for the idle time is forgotten, one still carrying packets stays.
//! Needs root (a BPF program is loaded, not attached); prints SKIP otherwise.

use ds_apps::flow_agent::FlowAgent;
use ds_handoff::ClusterSecret;
use ds_testbed::require_root;
use ds_xdp::maps::{FlowKey, TunnelConfig, TunnelMode};
use ds_xdp::{Kind, LoadOptions, Program};
use std::net::{Ipv6Addr, TcpListener};
use std::time::{Duration, Instant};

fn key(sport: u16) -> FlowKey {
    FlowKey {
        src: "fd00:c::1".parse().expect("address"),
        dst: "fd00:80::80".parse().expect("address"),
        sport,
        dport: 80,
        proto: 6,
    }
}

/// An Ethernet frame with the client's TCP segment (ACK) of flow `sport`.
fn segment(sport: u16) -> Vec<u8> {
    let k = key(sport);
    let mut f = vec![2, 0, 0, 0, 0, 0xa0, 2, 0, 0, 0, 0, 0xc1, 0x86, 0xdd];
    let mut ip = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    ip.extend_from_slice(&k.src.octets());
    ip.extend_from_slice(&k.dst.octets());
    let mut tcp = vec![0u8; 20];
    tcp[..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

#[test]
fn idle_moved_flows_are_forgotten() {
    if !require_root("idle_moved_flows_are_forgotten") {
        return;
    }
    let prog = Program::load(Kind::Tunnel, &LoadOptions::default()).expect("load");
    let listener = TcpListener::bind("[::1]:0").expect("listen");
    let secret = ClusterSecret::new(b"flow aging test secret, 32 bytes").expect("secret");
    let mut agent = FlowAgent::new(prog, listener, secret).expect("agent");
    let node: Ipv6Addr = "fd00:1::2".parse().expect("address");
    agent
        .program()
        .set_config(&TunnelConfig {
            local: "fd00:1::a".parse().expect("address"),
            mode: TunnelMode::Gateway([2, 0, 0, 0, 0, 0x99]),
            hop_limit: 64,
            mtu: 1500,
            learn: true,
        })
        .expect("config");
    agent
        .program()
        .set_binding(key(0).dst, "fd00:1::1".parse().expect("address"))
        .expect("binding");
    for sport in [1, 2] {
        agent.program().set_flow(&key(sport), node).expect("move");
    }
    let idle = Duration::from_secs(60);
    let t0 = Instant::now();
    // First sweep: both seen now.
    assert_eq!(agent.age_moved_flows(t0, idle, true), 0);
    // Flow 2 carries a packet (through the program: its count grows); flow 1 stays silent.
    let (rv, _) = agent.program().test_run(&segment(2)).expect("run");
    assert_eq!(rv, 3, "XDP_TX");
    assert_eq!(
        agent
            .program()
            .flow(&key(2))
            .expect("lookup")
            .map(|v| v.packets),
        Some(1)
    );
    assert_eq!(agent.age_moved_flows(t0 + idle / 2, idle, true), 0);
    // Past the idle time: flow 1 goes.
    let gone = agent.age_moved_flows(t0 + idle + Duration::from_secs(1), idle, true);
    assert_eq!(gone, 1, "only the idle flow goes");
    assert!(agent.program().flow(&key(1)).expect("lookup").is_none());
    assert!(agent.program().flow(&key(2)).expect("lookup").is_some());
    assert_eq!(agent.stats().moved_aged, gone as u64);
}
