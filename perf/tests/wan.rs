//! The WAN emulator (`dswan`) between two namespaces' kernels: it delays, drops and shapes
//! what crosses it, passes TCP with the kernel's offloads on intact, and reports its
//! counters. Behaviour with generous bounds; the accuracy figures are `dsperf wan`'s.

use ds_perf::wan::{rates, Options, WanBed};
use ds_testbed::{ping6, require_root, PingOpts};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

fn bed() -> WanBed {
    WanBed::build(Path::new(env!("CARGO_BIN_EXE_dswan"))).expect("namespaces")
}

fn pings(bed: &WanBed, count: u32) -> ds_testbed::PingStats {
    ping6(
        &bed.client,
        bed.server_addr(),
        &PingOpts {
            count,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            payload_len: 56,
        },
    )
    .expect("ping")
}

#[test]
fn dswan_delays_drops_and_shapes() {
    if !require_root("dswan_delays_drops_and_shapes") {
        return;
    }
    let mut bed = bed();
    bed.start(&["--delay", "20ms", "--ab", "delay=30ms"], None)
        .expect("dswan");
    let p = pings(&bed, 10);
    assert_eq!(p.received, 10);
    let mut rtts = p.rtts.clone();
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    // 30 ms there, 20 ms back; the two kernels and the forwarder add well under 3 ms here.
    assert!(
        median >= Duration::from_millis(50) && median < Duration::from_millis(53),
        "median RTT {median:?} for 30 + 20 ms"
    );
    let c = bed.finish().expect("counters");
    assert_eq!(
        c["stats"]["a_to_b"]["out_frames"],
        c["stats"]["a_to_b"]["in_frames"]
    );
    assert_eq!(c["ab"]["delay"]["secs"], 0);
    assert_eq!(c["stats"]["a_to_b"]["send_errors"], 0);

    // Everything lost one way: no reply, and the drops are counted where they happened.
    bed.launch(&["--ba", "loss=100%"], None).expect("dswan");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pings(&bed, 5).received, 0);
    let c = bed.finish().expect("counters");
    let lost = c["stats"]["b_to_a"]["lost"].as_u64().unwrap_or(0);
    assert!(lost > 0 && c["stats"]["b_to_a"]["out_frames"] == 0, "{c}");
    assert_eq!(c["stats"]["a_to_b"]["lost"], 0, "{c}");

    // 2 Mbit/s: the receiver's interface counts 2 Mbit/s of frames, ±10 %.
    let o = Options {
        delays_ms: vec![],
        rates_mbit: vec![2.0],
        pings: 0,
        rate_seconds: 3.0,
        pps_seconds: 0.0,
    };
    let r = rates(&mut bed, &o, &|_| {}).expect("rate");
    assert!(r[0].error_pct.abs() < 10.0, "{:?}", r[0]);
}

#[test]
fn tcp_with_the_kernels_offloads_crosses_dswan_intact() {
    if !require_root("tcp_with_the_kernels_offloads_crosses_dswan_intact") {
        return;
    }
    let mut bed = bed();
    bed.start(&["--delay", "2ms"], None).expect("dswan");
    let addr = SocketAddr::from((bed.server_addr(), 5300));
    let listener = bed.server.run(|| TcpListener::bind(addr)).expect("bind");
    const LEN: usize = 32 << 20;
    let pattern = |i: usize| (i % 251) as u8;
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let buf: Vec<u8> = (0..LEN).map(pattern).collect();
        s.write_all(&buf).expect("send");
    });
    let mut c = bed
        .client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::with_capacity(LEN);
    c.read_to_end(&mut got).expect("receive");
    server.join().unwrap();
    assert_eq!(got.len(), LEN);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "byte-exact"
    );
    let s = bed.finish().expect("counters");
    for dir in ["a_to_b", "b_to_a"] {
        assert_eq!(s["stats"][dir]["send_errors"], 0, "{s}");
        assert_eq!(s["stats"][dir]["malformed"], 0, "{s}");
    }
    // The server's GSO super-frames crossed whole: fewer frames than 1,500-byte packets.
    let frames = s["stats"]["b_to_a"]["out_frames"].as_u64().unwrap_or(0);
    assert!(
        frames > 0 && (frames as usize) < LEN / 1400,
        "{frames} frames: {s}"
    );
}
