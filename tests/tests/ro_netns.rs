//! Route optimisation over network namespaces: three hosts running the userspace stack on TAP
//! devices bridged together — a client (every interface is a correspondent node), the contact
//! node holding the DS address, and an acceptor. The contact node runs the home test, the
//! acceptor the care-of test, the connection moves, the acceptor's Binding Update is accepted,
//! and the client then sends straight to the acceptor's care-of address. Everything on the
//! wire is captured and decoded by tshark: HoTI, HoT, CoTI, CoT, BU, BA, BE, HAO and RH2 all
//! appear, with no malformed packets or expert warnings.

use ds_mipv6::wire::packet::PacketBuilder;
use ds_stack::device::TapDevice;
use ds_stack::mobile::MobileRole;
use ds_stack::runner::Runner;
use ds_stack::{ConnState, TcpState};
use ds_testbed::conn::{dial, ip, ips, read_available};
use ds_testbed::{require_root, KernelPeer};
use std::net::SocketAddrV6;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn step_all(rts: &mut [&mut Runner<TapDevice>]) {
    for rt in rts.iter_mut() {
        rt.step(Duration::from_millis(1)).expect("step");
    }
}

#[test]
fn route_optimised_handoff_over_namespaces_decoded_by_tshark() {
    if !require_root("route_optimised_handoff_over_namespaces_decoded_by_tshark") {
        return;
    }
    if Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("SKIP: route_optimised_handoff_over_namespaces_decoded_by_tshark needs tshark");
        return;
    }
    let [a_ip, b_ip, c_ip, h] = ips("fd00:d6", ["1", "2", "3", "80"]);
    let mut lan = KernelPeer::new("rl", ip("fd00:d6::fe")).expect("lan");
    let (ha, hb, hc) = (
        lan.attach_host("ra").unwrap(),
        lan.attach_host("rb").unwrap(),
        lan.attach_host("rc").unwrap(),
    );
    let mut a = ha
        .stack([2, 0xd6, 0, 0, 0, 1], a_ip, |_| {})
        .expect("client");
    let mut b = hb
        .stack([2, 0xd6, 0, 0, 0, 2], b_ip, |c| c.addrs.push(h))
        .expect("contact");
    let mut c = hc
        .stack([2, 0xd6, 0, 0, 0, 3], c_ip, |_| {})
        .expect("acceptor");
    b.iface
        .set_mobility_hook(Box::new(MobileRole::new(h, None)));
    c.iface
        .set_mobility_hook(Box::new(MobileRole::new(h, Some(c_ip))));
    // The interfaces own the roles; the test drives them there.
    fn mn(iface: &mut ds_stack::Interface) -> &mut MobileRole {
        iface.mobility_hook_mut().expect("mobile role")
    }

    let pcap = std::env::temp_dir().join(format!("ds-ro-{}.pcap", std::process::id()));
    let mut cap = lan
        .ns
        .command("dumpcap")
        .args(["-q", "-i", "br0", "-f", "ip6", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dumpcap");
    std::thread::sleep(Duration::from_millis(700));

    let start = Instant::now();
    let limit = Duration::from_secs(60);
    let l = b
        .iface
        .tcp_listen(SocketAddrV6::new(h, 50001, 0, 0), 4)
        .expect("listen");
    let cl = dial(&mut a, a_ip, SocketAddrV6::new(h, 50001, 0, 0));
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let half = data.len() / 2;
    let mut got = Vec::new();
    let mut srv = None;
    let mut sent = 0;
    // Phase 1: the contact node serves the first half and drains.
    while got.len() < half || srv.is_none_or(|s| b.iface.tcp_send_queued(s) > 0) {
        assert!(start.elapsed() < limit, "phase 1");
        step_all(&mut [&mut a, &mut b, &mut c]);
        if srv.is_none() {
            srv = b.iface.tcp_accept(l);
        }
        if let Some(s) = srv {
            if sent < half {
                sent += b.iface.tcp_send(s, &data[sent..half]).expect("send");
            }
        }
        let _ = read_available(&mut a.iface, cl, &mut got);
    }
    let srv = srv.expect("accepted");

    // Return routability, then a packet with a Home Address option for an address the client
    // has no binding for: it answers with a Binding Error.
    let now = b.now();
    mn(&mut b.iface).start_home_test(now, a_ip, [7; 8]);
    mn(&mut c.iface).start_care_of_test(now, a_ip, [8; 8]);
    let stray = PacketBuilder::new(c_ip, a_ip)
        .with_hao(ip("fd00:d6::99"))
        .payload(59, &[]);
    c.iface.send_ipv6_packet(now, &stray);
    let t = Instant::now();
    while !(mn(&mut c.iface).has_care_of_token() && {
        let now = b.now();
        mn(&mut b.iface).home_ticket(now, 1).is_some()
    }) {
        assert!(t.elapsed() < Duration::from_secs(5), "return routability");
        step_all(&mut [&mut a, &mut b, &mut c]);
    }

    // Hand off with the home ticket; the acceptor binds.
    let now = b.now();
    let st = b.iface.tcp_freeze(now, srv).expect("freeze").encode();
    let ticket = mn(&mut b.iface).home_ticket(now, 1).expect("ticket");
    let now = c.now();
    c.iface.add_home_addr(h);
    let srv2 = c
        .iface
        .tcp_thaw(now, &ConnState::decode(&st).expect("decode"))
        .expect("thaw");
    mn(&mut c.iface)
        .bind(now, &ticket, a_ip, Duration::from_secs(120))
        .expect("bind");
    let t = Instant::now();
    while !{
        let now = c.now();
        mn(&mut c.iface).is_bound(now)
    } {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "binding: {:?}",
            mn(&mut c.iface).take_events()
        );
        step_all(&mut [&mut a, &mut b, &mut c]);
    }

    // Phase 2: the acceptor serves the rest, route-optimised.
    while got.len() < data.len() {
        assert!(start.elapsed() < limit, "phase 2 at {}", got.len());
        if sent < data.len() {
            sent += c.iface.tcp_send(srv2, &data[sent..]).expect("send");
        }
        step_all(&mut [&mut a, &mut b, &mut c]);
        let _ = read_available(&mut a.iface, cl, &mut got);
    }
    assert!(got == data, "byte-exact");
    assert_eq!(a.iface.tcp_state(cl), Some(TcpState::Established));
    assert!(a.iface.correspondent().and_then(|cn| cn.entry(h)).is_some());
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY-free stop: SIGINT via kill(1) lets dumpcap flush the file.
    let _ = Command::new("kill")
        .args(["-INT", &cap.id().to_string()])
        .status();
    let _ = cap.wait();

    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .arg("-V")
        .output()
        .expect("tshark -V");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-q", "-z", "expert,warn"])
        .output()
        .expect("tshark expert");
    let expert = String::from_utf8_lossy(&summary.stdout);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        !text.contains("Malformed"),
        "malformed packets in the capture"
    );
    assert!(
        !expert.contains("Warning") && !expert.contains("Error"),
        "expert infos: {expert}"
    );
    for needle in [
        "Home Test Init",
        "Care-of Test Init",
        "Home Test (",
        "Care-of Test (",
        "Binding Update (5)",
        "Binding Acknowledgement (6)",
        "Binding Error (7)",
        "Home Address: fd00:d6::80",
        "Type: Type 2 Routing",
    ] {
        assert!(text.contains(needle), "tshark did not show {needle:?}");
    }
    // After the binding: TCP from the client to the care-of address through RH2.
    let rh2_tcp = text.matches("Type: Type 2 Routing").count();
    assert!(rh2_tcp > 5, "RH2 packets: {rh2_tcp}");
}
