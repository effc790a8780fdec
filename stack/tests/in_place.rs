//! Zero-copy transmit: a server interface handing its frames to a sink that can build in place
//! ([`TxSink::build`], as an AF_XDP device's UMEM can) builds its TCP segments there, in a
//! buffer that still holds an earlier frame's octets, and the client receives every byte
//! intact with every checksum right, through losses and retransmissions. Sans-IO, no root.

use ds_stack::device::{Gso, TxSink};
use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6f, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6f, 0, 0, 0, 0, 0, 2);

/// Collects frames; builds in place in one reused buffer full of stale octets.
struct Ring {
    frames: Vec<Vec<u8>>,
    slot: Vec<u8>,
    built: u64,
}

impl TxSink for Ring {
    fn frame(&mut self, frame: &[u8], gso: Option<Gso>) {
        assert!(gso.is_none(), "no super-frames here");
        self.frames.push(frame.to_vec());
    }

    fn build(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) -> bool {
        assert!(len <= self.slot.len(), "a frame fits the MTU");
        // What the buffer held before: an earlier frame, here a pattern no header has.
        self.slot.fill(0xa5);
        build(&mut self.slot[..len]);
        self.frames.push(self.slot[..len].to_vec());
        self.built += 1;
        true
    }

    fn builds_in_place(&self) -> bool {
        true
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 241) as u8).collect()
}

/// `len` bytes from server to client, every `drop_every`-th server frame lost (0: none);
/// returns the client's bytes, the frames the server built in place and the two stats.
fn transfer(len: usize, drop_every: usize) -> (Vec<u8>, u64, ds_stack::Stats, ds_stack::Stats) {
    let mut now = Instant::from_millis(1);
    let mut server = Interface::new(Config::new([2, 0, 0, 0, 0, 0x80], vec![SERVER]), now);
    let mut client = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT]), now);
    let l = server
        .tcp_listen(SocketAddrV6::new(SERVER, 80, 0, 0), 4)
        .expect("listen");
    let c = client
        .tcp_connect(
            now,
            SocketAddrV6::new(CLIENT, 40000, 0, 0),
            SocketAddrV6::new(SERVER, 80, 0, 0),
        )
        .expect("connect");
    let data = pattern(len);
    let mut ring = Ring {
        frames: Vec::new(),
        slot: vec![0; 1514],
        built: 0,
    };
    let (mut s, mut off, mut got, mut sent) = (None, 0, Vec::new(), 0usize);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < len {
        assert!(
            now < Instant::from_millis(60_000),
            "stalled at {}",
            got.len()
        );
        now += std::time::Duration::from_micros(200);
        let mut up = Vec::new();
        client.poll(now);
        client.transmit(now, &mut |f| up.push(f.to_vec()));
        for f in up {
            server.receive(now, &f);
        }
        if s.is_none() && client.tcp_state(c) == Some(TcpState::Established) {
            s = server.tcp_accept(l);
        }
        if let Some(h) = s {
            if off < len {
                off += server.tcp_send(h, &data[off..]).unwrap_or(0);
            }
        }
        server.poll(now);
        server.transmit_to(now, &mut ring);
        for f in ring.frames.drain(..) {
            sent += 1;
            if drop_every > 0 && sent.is_multiple_of(drop_every) {
                continue;
            }
            client.receive(now, &f);
        }
        while let Ok(n) = client.tcp_recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == data, "byte-exact");
    (
        got,
        ring.built,
        server.stats().clone(),
        client.stats().clone(),
    )
}

#[test]
fn segments_built_in_the_devices_buffer_arrive_byte_exact() {
    let (_, built, ss, cs) = transfer(4 << 20, 0);
    // Every data segment (~2,900 of 1,440 octets) and the handshake's SYN-ACK were built there.
    assert!(built > 2_900, "{built} built in place; {ss:?}");
    assert_eq!(ss.tx_in_place, built);
    assert_eq!(cs.rx_bad_checksum, 0, "every checksum verifies");
    assert_eq!(ss.tcp_retransmits, 0);
}

#[test]
fn lost_segments_built_in_place_are_resent_and_arrive_byte_exact() {
    let (_, built, ss, cs) = transfer(2 << 20, 53);
    assert!(ss.tcp_retransmits > 0, "losses were repaired: {ss:?}");
    assert_eq!(ss.tx_in_place, built);
    assert_eq!(cs.rx_bad_checksum, 0);
}
