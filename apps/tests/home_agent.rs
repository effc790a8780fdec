//! The home agent over namespaces: a node registers the DS address (its home address) at our
//! home agent with RFC 4285 authentication; a forged registration and a replayed one are
//! refused; a Linux-kernel TCP client then downloads from the DS address: the home agent
//! answers Neighbour Solicitations for it and tunnels the client's packets (IPv6-in-IPv6) to
//! the node, which answers directly with the DS address as source.

use ds_apps::home_agent::HomeAgentNode;
use ds_mipv6::ha::{HaEvent, MnHaSa};
use ds_mipv6::mn::{HomeRegConfig, HomeRegEvent, HomeRegistration};
use ds_stack::mobile::MobileRole;
use ds_testbed::conn::{ip, ips};
use ds_testbed::{require_root, KernelPeer};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::net::{SocketAddrV6, TcpStream};
use std::time::{Duration, Instant};

fn ntp_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ds_mipv6::mn::ntp_from_unix(d)
}

#[test]
fn home_registration_and_kernel_client_through_the_tunnel() {
    if !require_root("home_registration_and_kernel_client_through_the_tunnel") {
        return;
    }
    let [client, ha_ip, node_ip, home] = ips("fd00:d7", ["1", "a", "5", "80"]);
    let key = b"0123456789abcdef0123".to_vec();
    let sa = MnHaSa {
        spi: 1000,
        key: key.clone(),
        home,
    };
    let mut lan = KernelPeer::new("hl", client).expect("client namespace");
    let (hh, hn) = (
        lan.attach_host("hh").unwrap(),
        lan.attach_host("hn").unwrap(),
    );
    let mut ha_rt = hh
        .stack([2, 0xd7, 0, 0, 0, 0xa], ha_ip, |c| c.correspondent = false)
        .expect("ha");
    let mut node = hn
        .stack([2, 0xd7, 0, 0, 0, 5], node_ip, |_| {})
        .expect("node");
    let now = ha_rt.now();
    let ha = HomeAgentNode::new(ha_ip, vec![sa], ntp_now(), now).expect("home agent");
    ha_rt.iface.set_mobility_hook(ha.hook());
    node.iface
        .set_mobility_hook(Box::new(MobileRole::new(home, Some(node_ip))));
    // The interface owns the role; the test drives it there.
    fn role(iface: &mut ds_stack::Interface) -> &mut MobileRole {
        iface.mobility_hook_mut().expect("mobile role")
    }
    node.iface.add_home_addr(home);

    let step = |ha_rt: &mut ds_stack::runner::Runner<_>, node: &mut ds_stack::runner::Runner<_>| {
        ha_rt.step(Duration::from_millis(1)).expect("ha step");
        let now = ha_rt.now();
        ha.service(&mut ha_rt.iface, now);
        node.step(Duration::from_millis(1)).expect("node step");
    };

    // Authenticated home registration.
    let now = node.now();
    let cfg = HomeRegConfig {
        home,
        care_of: node_ip,
        ha: ha_ip,
        spi: 1000,
        key: key.clone(),
        lifetime: Duration::from_secs(300),
    };
    role(&mut node.iface).register_home(now, ntp_now(), cfg.clone(), 1);
    let t = Instant::now();
    while !role(&mut node.iface)
        .take_home_events()
        .iter()
        .any(|e| matches!(e, HomeRegEvent::Registered(_)))
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "registration: {:?}",
            ha.take_events()
        );
        step(&mut ha_rt, &mut node);
    }
    assert_eq!(ha.care_of(ha_rt.now(), home), Some(node_ip));

    // A forged registration (wrong key) for the same home address, from an attacker's care-of
    // address, and an exact replay of a valid one: both refused, the binding unchanged.
    let now = node.now();
    let forged_cfg = HomeRegConfig {
        care_of: ip("fd00:d7::666"),
        key: b"not-the-key-at-all!!".to_vec(),
        ..cfg.clone()
    };
    let forged = HomeRegistration::new(forged_cfg, 50).send(now, ntp_now(), false);
    node.iface.send_ipv6_packet(now, &forged.packet);
    let valid = HomeRegistration::new(cfg, 60).send(now, ntp_now(), false);
    node.iface.send_ipv6_packet(now, &valid.packet);
    for _ in 0..50 {
        step(&mut ha_rt, &mut node);
    }
    let now = node.now();
    node.iface.send_ipv6_packet(now, &valid.packet); // the replay
    for _ in 0..50 {
        step(&mut ha_rt, &mut node);
    }
    let events = ha.take_events();
    let rejected = events
        .iter()
        .filter(|e| matches!(e, HaEvent::Rejected(_) | HaEvent::Discarded(_)))
        .count();
    let registered = events
        .iter()
        .filter(|e| matches!(e, HaEvent::Registered { .. }))
        .count();
    assert_eq!(
        registered, 2,
        "the first registration and the fresh valid one: {events:?}"
    );
    assert_eq!(rejected, 2, "forged and replayed refused: {events:?}");
    assert_eq!(
        ha.care_of(ha_rt.now(), home),
        Some(node_ip),
        "binding not hijacked"
    );

    // A kernel TCP client downloads from the home address through the home agent's tunnel.
    let l = node
        .iface
        .tcp_listen(SocketAddrV6::new(home, 80, 0, 0), 4)
        .expect("listen");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let want: [u8; 32] = Sha256::digest(&data).into();
    let start = Instant::now();
    std::thread::scope(|sc| {
        let c = sc.spawn(|| {
            lan.ns.run(|| {
                let mut s =
                    TcpStream::connect((home, 80)).expect("kernel connect to the home address");
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("read");
                got
            })
        });
        let mut conn = None;
        let mut sent = 0;
        let mut closed = false;
        while !c.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "download: ha {:?}",
                ha.stats()
            );
            step(&mut ha_rt, &mut node);
            if conn.is_none() {
                conn = node.iface.tcp_accept(l);
            }
            if let Some(h) = conn {
                if sent < data.len() {
                    sent += node.iface.tcp_send(h, &data[sent..]).expect("send");
                } else if !closed {
                    node.iface.tcp_close(h).expect("close");
                    closed = true;
                }
            }
        }
        let got = c.join().expect("client");
        let d: [u8; 32] = Sha256::digest(&got).into();
        assert_eq!(got.len(), data.len());
        assert_eq!(d, want, "byte-exact through the tunnel");
    });
    let st = ha.stats();
    assert!(
        st.tunnelled > 10,
        "client packets tunnelled by the home agent: {st:?}"
    );
    assert!(
        node.iface.stats().decapsulated > 10,
        "node decapsulated them"
    );
}
