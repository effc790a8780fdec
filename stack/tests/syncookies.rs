//! SYN cookies (RFC 4987 §3.6; issue 12, finding 4): spoofed SYNs fill a listener's backlog;
//! from then on SYNs are answered statelessly, a real client (our stack, offering MSS, window
//! scale, SACK and timestamps) still connects, with its options kept, and exchanges data;
//! a forged ACK makes no connection.

use ds_mipv6::wire::{pseudo_checksum, PacketBuilder};
use ds_stack::device::{mem_pair, MemDevice};
use ds_stack::runner::{Clock, Runner};
use ds_stack::state::flags;
use ds_stack::{Config, Duration, Interface, TcpState};
use ds_testbed::conn::{dial, read_available};
use std::net::{Ipv6Addr, SocketAddrV6};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5c, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5c, 0, 0, 0, 0, 0, 2);
const BACKLOG: usize = 4;

fn runner(dev: MemDevice, mac: [u8; 6], addr: Ipv6Addr, clock: Clock) -> Runner<MemDevice> {
    Runner::with_clock(
        dev,
        Interface::new(Config::new(mac, vec![addr]), clock.now()),
        clock,
    )
}

/// A TCP segment from `src`:`sport` to the server's port 80 (MSS option on a SYN).
fn segment(src: Ipv6Addr, sport: u16, seq: u32, ack: Option<u32>, syn: bool) -> Vec<u8> {
    let mut t = vec![0u8; if syn { 24 } else { 20 }];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.unwrap_or(0).to_be_bytes());
    t[12] = ((t.len() / 4) as u8) << 4;
    t[13] = u8::from(syn) << 1 | u8::from(ack.is_some()) << 4;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    if syn {
        t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    }
    let c = pseudo_checksum(src, SERVER, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    PacketBuilder::new(src, SERVER).payload(6, &t)
}

#[test]
fn a_full_backlog_answers_with_cookies_and_a_real_client_gets_through() {
    let clock = Clock::new();
    let (a, b) = mem_pair(1500);
    let mut srv = runner(a, [2, 0, 0, 0, 0, 0x80], SERVER, clock);
    let mut cli = runner(b, [2, 0, 0, 0, 0, 2], CLIENT, clock);
    let to = SocketAddrV6::new(SERVER, 80, 0, 0);
    let l = srv.iface.tcp_listen(to, BACKLOG).expect("listen");

    // A flood of spoofed SYNs: the first BACKLOG wait in SYN-RECEIVED, the rest get cookies.
    for i in 0..200u16 {
        let src = Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, i + 1);
        let now = srv.now();
        srv.iface.receive_ipv6(
            now,
            &segment(src, 1000 + i, u32::from(i) * 7919, None, true),
            None,
        );
    }
    let st = srv.iface.stats();
    assert_eq!(st.tcp_syncookies_sent, 200 - BACKLOG as u64, "{st:?}");
    assert_eq!(st.tcp_backlog_drops, 0);

    // A real client connects through the full backlog and both sides exchange data.
    let c = dial(&mut cli, CLIENT, to);
    let mut accepted = None;
    let mut got = Vec::new();
    let mut echoed = Vec::new();
    let start = std::time::Instant::now();
    while echoed.len() < 5 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "stuck"
        );
        srv.step(Duration::from_micros(200)).expect("server step");
        cli.step(Duration::from_micros(200)).expect("client step");
        if accepted.is_none() {
            accepted = srv.iface.tcp_accept(l);
            if cli.iface.tcp_state(c) == Some(TcpState::Established) {
                let _ = cli.iface.tcp_send(c, b"hello");
            }
        }
        if let Some(h) = accepted {
            let before = got.len();
            let _ = read_available(&mut srv.iface, h, &mut got);
            if got.len() > before {
                srv.iface.tcp_send(h, &got[before..]).expect("echo");
            }
        }
        let _ = read_available(&mut cli.iface, c, &mut echoed);
    }
    assert_eq!(&echoed, b"hello");
    let st = srv.iface.stats();
    assert_eq!(st.tcp_syncookies_ok, 1, "{st:?}");
    // The options the client offered survived the stateless SYN-ACK.
    let h = accepted.expect("accepted");
    let now = srv.now();
    let state = srv.iface.tcp_freeze(now, h).expect("freeze");
    let f = state.state_flags >> 4; // the low 4 bits are the TCP state
    assert!(f & flags::TS != 0, "timestamps lost");
    assert!(f & flags::WS != 0, "window scaling lost");
    assert!(f & flags::SACK != 0, "SACK lost");
    assert!(state.snd_mss >= 1380, "MSS {}", state.snd_mss);

    // An ACK with a made-up cookie makes no connection.
    let now = srv.now();
    let forged = segment(
        Ipv6Addr::new(0xfd00, 0x67, 0, 0, 0, 0, 0, 1),
        999,
        5,
        Some(12345),
        false,
    );
    srv.iface.receive_ipv6(now, &forged, None);
    assert_eq!(srv.iface.stats().tcp_syncookies_failed, 1);
    assert!(srv.iface.tcp_accept(l).is_none());
}
