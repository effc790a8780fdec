//! TCP super-frames (transmit segmentation offload): a server interface told that its device
//! segments (`set_gso_max`) sends new data as super-frames with a partial checksum; the test
//! cuts them as Linux's `tcp6_gso_segment` does (headers copied, sequence numbers advanced,
//! FIN and PSH on the last segment only, each segment's checksum completed from the partial
//! one) and hands the segments to a client interface, which checks every checksum. Sans-IO,
//! no root: frames are moved by the test.

use ds_stack::device::{Gso, TCP_CHECKSUM_OFFSET};
use ds_stack::wire::{checksum, IpAddress, IpProtocol, Ipv6Packet, TcpPacket};
use ds_stack::{Config, Instant, Interface, TcpHandle, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6e, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6e, 0, 0, 0, 0, 0, 2);
const ETH: usize = 14;

/// The wire segments of `frame`, cut as its segmentation request says.
fn segment(frame: &[u8], gso: Gso) -> Vec<Vec<u8>> {
    let (start, hlen, mss) = (
        usize::from(gso.csum_start),
        usize::from(gso.header_len),
        usize::from(gso.mss),
    );
    assert_eq!(start, ETH + 40, "no extension headers here");
    let ip = Ipv6Packet::new_checked(&frame[ETH..]).expect("IPv6");
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let tcp_len = frame.len() - start;
    // The partial checksum: the pseudo-header sum over the whole super-frame's TCP length.
    let field = u16::from_be_bytes([
        frame[start + usize::from(TCP_CHECKSUM_OFFSET)],
        frame[start + usize::from(TCP_CHECKSUM_OFFSET) + 1],
    ]);
    assert_eq!(
        field,
        checksum::pseudo_header_v6(&src, &dst, IpProtocol::Tcp, tcp_len as u32),
        "partial checksum"
    );
    let payload = &frame[hlen..];
    assert!(
        payload.len() > mss,
        "a super-frame carries more than one segment"
    );
    let seq0 = TcpPacket::new_checked(&frame[start..])
        .expect("TCP")
        .seq_number();
    let n = payload.len().div_ceil(mss);
    (0..n)
        .map(|i| {
            let chunk = &payload[i * mss..((i + 1) * mss).min(payload.len())];
            let mut seg = frame[..hlen].to_vec();
            seg.extend_from_slice(chunk);
            let plen = seg.len() - ETH - 40;
            Ipv6Packet::new_unchecked(&mut seg[ETH..]).set_payload_len(plen as u16);
            let mut t = TcpPacket::new_unchecked(&mut seg[start..]);
            t.set_seq_number(seq0 + i * mss);
            if i + 1 < n {
                t.set_fin(false);
                t.set_psh(false);
            }
            t.fill_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst));
            seg
        })
        .collect()
}

struct Net {
    server: Interface,
    client: Interface,
    now: Instant,
    /// Drop every n-th wire segment from the server (0: none).
    drop_every: usize,
    wire_segments: usize,
    super_frames: usize,
    largest: usize,
}

impl Net {
    fn new(drop_every: usize) -> Net {
        Net::with(drop_every, |_| {})
    }

    /// With the server's configuration changed by `f`.
    fn with(drop_every: usize, f: impl FnOnce(&mut Config)) -> Net {
        let now = Instant::from_millis(1);
        let mut cfg = Config::new([2, 0, 0, 0, 0, 0x80], vec![SERVER]);
        f(&mut cfg);
        let mut server = Interface::new(cfg, now);
        server.set_gso_max(65535);
        Net {
            server,
            client: Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![CLIENT]), now),
            now,
            drop_every,
            wire_segments: 0,
            super_frames: 0,
            largest: 0,
        }
    }

    fn step(&mut self) {
        self.now += std::time::Duration::from_micros(200);
        let now = self.now;
        let mut up = Vec::new();
        self.client.poll(now);
        self.client.transmit(now, &mut |f| up.push(f.to_vec()));
        for f in up {
            self.server.receive(now, &f);
        }
        let mut down = Vec::new();
        self.server.poll(now);
        self.server
            .transmit_gso(now, &mut |f, gso| down.push((f.to_vec(), gso)));
        for (f, gso) in down {
            let segs = match gso {
                Some(g) => {
                    self.super_frames += 1;
                    self.largest = self.largest.max(f.len());
                    assert!(f.len() <= 65535 + ETH + 40, "fits the IPv6 payload length");
                    segment(&f, g)
                }
                None => vec![f],
            };
            for s in segs {
                assert!(s.len() <= ETH + 1500, "every wire frame fits the MTU");
                self.wire_segments += 1;
                if self.drop_every > 0 && self.wire_segments.is_multiple_of(self.drop_every) {
                    continue;
                }
                self.client.receive(now, &s);
            }
        }
    }

    fn connect(&mut self) -> (TcpHandle, TcpHandle) {
        let l = self
            .server
            .tcp_listen(SocketAddrV6::new(SERVER, 80, 0, 0), 16)
            .expect("listen");
        let c = self
            .client
            .tcp_connect(
                self.now,
                SocketAddrV6::new(CLIENT, 40000, 0, 0),
                SocketAddrV6::new(SERVER, 80, 0, 0),
            )
            .expect("connect");
        loop {
            assert!(self.now < Instant::from_millis(2000), "no handshake");
            self.step();
            if let Some(s) = self.server.tcp_accept(l) {
                if self.client.tcp_state(c) == Some(TcpState::Established) {
                    return (s, c);
                }
            }
        }
    }

    /// Send `data` from the server and read it all at the client.
    fn transfer(&mut self, s: TcpHandle, c: TcpHandle, data: &[u8], limit_ms: i64) -> Vec<u8> {
        let mut off = 0;
        let mut got = Vec::new();
        while got.len() < data.len() {
            assert!(
                self.now < Instant::from_millis(limit_ms),
                "stalled at {} of {}: {:?}",
                got.len(),
                data.len(),
                self.server.stats()
            );
            if off < data.len() {
                off += self.server.tcp_send(s, &data[off..]).unwrap_or(0);
            }
            self.step();
            self.read(c, &mut got);
        }
        got
    }

    /// Append what the client can read now to `got`.
    fn read(&mut self, c: TcpHandle, got: &mut Vec<u8>) {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = self.client.tcp_recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn bulk_data_leaves_as_super_frames_and_arrives_byte_exact() {
    let mut net = Net::new(0);
    let (s, c) = net.connect();
    let data = pattern(8 << 20);
    let got = net.transfer(s, c, &data, 60_000);
    assert!(got == data, "byte-exact");
    let (ss, cs) = (net.server.stats().clone(), net.client.stats().clone());
    eprintln!(
        "{} super-frames (largest {} octets), {} wire segments; server {ss:?}",
        net.super_frames, net.largest, net.wire_segments
    );
    assert!(net.super_frames > 0 && ss.tx_gso_frames == net.super_frames as u64);
    assert!(net.largest > 32 * 1024, "super-frames grow with the window");
    assert_eq!(cs.rx_bad_checksum, 0, "every completed checksum verifies");
    assert_eq!(ss.tcp_retransmits, 0);
}

#[test]
fn lost_segments_of_super_frames_are_resent_and_the_data_arrives_byte_exact() {
    let mut net = Net::new(97);
    let (s, c) = net.connect();
    let data = pattern(4 << 20);
    let got = net.transfer(s, c, &data, 120_000);
    assert!(got == data, "byte-exact");
    let ss = net.server.stats().clone();
    assert!(net.super_frames > 0);
    assert!(ss.tcp_retransmits > 0, "loss made us retransmit: {ss:?}");
    assert_eq!(net.client.stats().rx_bad_checksum, 0);
}

#[test]
fn a_response_of_a_few_segments_leaves_whole_with_its_short_tail() {
    let mut net = Net::new(0);
    let (s, c) = net.connect();
    // Warm the window past the initial one, then a response that is not a multiple of the MSS.
    let _ = net.transfer(s, c, &pattern(256 * 1024), 10_000);
    for _ in 0..20 {
        net.step();
    }
    let before = (net.super_frames, net.wire_segments);
    let data = pattern(3 * 1428 + 100);
    let got = net.transfer(s, c, &data, 20_000);
    assert!(got == data);
    // One super-frame (three full segments and the tail: PSH on the last only), no more
    // than the four wire segments and the client's ACKs.
    assert_eq!(net.super_frames - before.0, 1, "one super-frame");
    assert_eq!(net.wire_segments - before.1, 4);
}

/// A connection moved to an interface that has not resolved the client yet (a handoff's
/// acceptor): what waits for Neighbour Discovery is queued as plain segments (a queued frame
/// goes out without a segmentation request), super-frames follow once the neighbour is known,
/// and a close right after the last write ends the stream after all of it.
#[test]
fn a_thawed_connection_queues_plain_segments_until_the_neighbour_is_resolved() {
    let mut net = Net::new(0);
    let (s, c) = net.connect();
    let _ = net.transfer(s, c, &pattern(64 * 1024), 10_000);
    for _ in 0..20 {
        net.step();
    }
    let state = net.server.tcp_freeze(net.now, s).expect("freeze");
    let mut fresh = Interface::new(Config::new([2, 0, 0, 0, 0, 0x81], vec![SERVER]), net.now);
    fresh.set_gso_max(65535);
    let s2 = fresh.tcp_thaw(net.now, &state).expect("thaw");
    assert!(
        fresh.neighbors().state(&CLIENT).is_none(),
        "not resolved yet"
    );
    net.server = fresh;
    let before = net.super_frames;
    let data = pattern(1 << 20);
    // Queue it all and close at once (as a server that writes its response and closes).
    let mut off = 0;
    let mut got = Vec::new();
    let mut closed = false;
    while net.client.tcp_state(c) != Some(TcpState::CloseWait) {
        assert!(
            net.now < Instant::from_millis(60_000),
            "stalled at {}",
            got.len()
        );
        if off < data.len() {
            off += net.server.tcp_send(s2, &data[off..]).unwrap_or(0);
        } else if !closed {
            net.server.tcp_close(s2).expect("close");
            closed = true;
        }
        // `step` asserts that every frame without a segmentation request fits the MTU.
        net.step();
        net.read(c, &mut got);
    }
    net.read(c, &mut got);
    assert!(
        got == data,
        "byte-exact up to the FIN ({} of {})",
        got.len(),
        data.len()
    );
    assert!(
        net.super_frames > before,
        "super-frames once the client is known"
    );
}

/// A device that claims to segment but refuses every super-frame (as a packet socket whose
/// kernel rejects the segmentation request would): the runner drops and counts the refused
/// frame, turns super-frames off, and TCP resends in segments; the transfer completes
/// byte-exact and no step fails.
#[test]
fn a_device_that_refuses_super_frames_costs_one_frame_not_the_connection() {
    use ds_stack::device::{mem_pair, Device, MemDevice, PollSet};
    use ds_stack::runner::{Clock, Runner};
    use std::io;
    use std::time::Duration;

    struct Refusing(MemDevice);
    impl Device for Refusing {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            self.0.recv(buf)
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            self.0.send(frame)
        }
        fn gso_max(&self) -> usize {
            65535
        }
        // `send_gso`: the trait's default, which refuses a segmentation request.
        fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
            self.0.wait(timeout)
        }
        fn mtu(&self) -> usize {
            self.0.mtu()
        }
        fn wait_fds(&self, set: &mut PollSet) {
            self.0.wait_fds(set)
        }
    }

    let clock = Clock::new();
    let (a, b) = mem_pair(1500);
    let iface =
        |mac: u8, addr| Interface::new(Config::new([2, 0, 0, 0, 0, mac], vec![addr]), clock.now());
    let mut srv = Runner::with_clock(Refusing(a), iface(0x80, SERVER), clock);
    let mut cli = Runner::with_clock(b, iface(2, CLIENT), clock);
    let to = SocketAddrV6::new(SERVER, 80, 0, 0);
    let l = srv.iface.tcp_listen(to, 4).expect("listen");
    let c = ds_testbed::conn::dial(&mut cli, CLIENT, to);
    let data = pattern(1 << 20);
    let (mut s, mut off, mut got) = (None, 0, Vec::new());
    let start = std::time::Instant::now();
    while got.len() < data.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stalled at {}",
            got.len()
        );
        srv.step(Duration::from_micros(100)).expect("no step fails");
        cli.step(Duration::from_micros(100)).expect("client step");
        if s.is_none() {
            s = srv.iface.tcp_accept(l);
        }
        if let Some(h) = s {
            if off < data.len() {
                off += srv.iface.tcp_send(h, &data[off..]).unwrap_or(0);
            }
        }
        let _ = ds_testbed::conn::read_available(&mut cli.iface, c, &mut got);
    }
    assert!(got == data, "byte-exact");
    let st = srv.iface.stats();
    assert_eq!(
        st.tx_device_rejects, 1,
        "one refused super-frame, then segments: {st:?}"
    );
    assert!(st.tcp_retransmits > 0, "what it carried was resent");
}

/// One connection's burst per transmit is bounded in wire segments, not in frames: with a
/// window of megabytes and no limit on unsent data (`notsent_lowat` off), a single
/// `transmit_gso` carries at most 256 segments' worth of data however it is packed into
/// super-frames (the others' turn comes first).
#[test]
fn a_burst_is_bounded_in_segments_however_they_are_packed() {
    let mut net = Net::with(0, |c| c.tcp.notsent_lowat = None);
    let (s, c) = net.connect();
    let _ = net.transfer(s, c, &pattern(64 << 20), 600_000);
    for _ in 0..20 {
        net.step();
    }
    let queued = net.server.tcp_send(s, &pattern(2 << 20)).expect("send");
    assert!(queued > 1 << 20, "room for a large burst: {queued}");
    let now = net.now + std::time::Duration::from_micros(200);
    net.server.poll(now);
    let mut segments = 0;
    let mut supers = 0;
    net.server.transmit_gso(now, &mut |f, gso| match gso {
        Some(g) => {
            supers += 1;
            segments += (f.len() - usize::from(g.header_len)).div_ceil(usize::from(g.mss));
        }
        None => segments += 1,
    });
    eprintln!("burst: {segments} segments in {supers} super-frames");
    assert!(supers > 0, "super-frames");
    assert!(segments <= 256, "{segments} segments in one burst");
    assert!(
        segments >= 128,
        "the burst is not starved either: {segments}"
    );
}
