//! Receiving in batches ([`Interface::receive_batch`]: the connections of a batch's segments
//! warmed before the first is processed) changes nothing but timing: two servers with the same
//! settings, one given every frame alone and one given them in batches (with forged and
//! malformed frames among them), send the same frames, byte for byte, and count the same.
//! Sans-IO, no root.

use ds_stack::{Config, Instant, Interface, TcpHandle};
use proptest::prelude::*;
use std::net::{Ipv6Addr, SocketAddrV6};

const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xba, 0, 0, 0, 0, 0, 0x80);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xba, 0, 0, 0, 0, 0, 2);
/// Past the count from which the batched server warms connections ahead (1,024).
const CONNS: usize = 1100;

fn config(mac: u8, addr: Ipv6Addr) -> Config {
    let mut c = Config::new([2, 0, 0, 0, 0, mac], vec![addr]);
    // The same initial sequence numbers and ports on both servers.
    c.isn_secret = [7; 16];
    c
}

/// A client, two identical servers, and what the test feeds them.
struct Twins {
    now: Instant,
    client: Interface,
    alone: Interface,
    batched: Interface,
    conns: Vec<TcpHandle>,
}

/// What a server sends.
fn output(s: &mut Interface, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    s.poll(now);
    s.transmit(now, &mut |f: &[u8]| out.push(f.to_vec()));
    out
}

/// Every server echoes what its connections received.
fn echo(s: &mut Interface) {
    let mut ready = Vec::new();
    s.tcp_take_ready(&mut ready);
    let mut buf = [0u8; 2048];
    for h in ready {
        while let Ok(n) = s.tcp_recv(h, &mut buf) {
            if n == 0 {
                break;
            }
            let _ = s.tcp_send(h, &buf[..n]);
        }
    }
}

impl Twins {
    fn new() -> Twins {
        let now = Instant::from_millis(1);
        let mut t = Twins {
            now,
            client: Interface::new(config(2, CLIENT), now),
            alone: Interface::new(config(0x80, SERVER), now),
            batched: Interface::new(config(0x80, SERVER), now),
            conns: Vec::new(),
        };
        let l = SocketAddrV6::new(SERVER, 80, 0, 0);
        let la = t.alone.tcp_listen(l, CONNS).expect("listen");
        let lb = t.batched.tcp_listen(l, CONNS).expect("listen");
        // 200 at a time: the client holds 256 packets while it resolves the server's address.
        for i in 0..CONNS {
            let local = SocketAddrV6::new(CLIENT, 20_000 + i as u16, 0, 0);
            t.conns
                .push(t.client.tcp_connect(now, local, l).expect("connect"));
            if i % 200 == 199 || i + 1 == CONNS {
                for _ in 0..3 {
                    t.round(&[]);
                    while t.alone.tcp_accept(la).is_some() {}
                    while t.batched.tcp_accept(lb).is_some() {}
                }
            }
        }
        t
    }

    /// The client's frames (with `extra` among them) to both servers, their answers compared
    /// and the first's delivered to the client.
    fn round(&mut self, extra: &[Vec<u8>]) {
        self.now += std::time::Duration::from_millis(1);
        let now = self.now;
        self.client.poll(now);
        let mut up: Vec<Vec<u8>> = Vec::new();
        self.client
            .transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
        // The extra frames interleaved with the real ones.
        for (i, f) in extra.iter().enumerate() {
            let at = (i * 7) % (up.len() + 1);
            up.insert(at, f.clone());
        }
        for f in &up {
            self.alone.receive(now, f);
        }
        let refs: Vec<&[u8]> = up.iter().map(|f| f.as_slice()).collect();
        self.batched.receive_batch(now, &refs);
        echo(&mut self.alone);
        echo(&mut self.batched);
        let a = output(&mut self.alone, now);
        let b = output(&mut self.batched, now);
        assert_eq!(a, b, "the same frames out");
        assert_eq!(self.alone.stats(), self.batched.stats(), "the same counts");
        for f in &a {
            self.client.receive(now, f);
        }
    }

    /// A request on every `step`-th connection.
    fn requests(&mut self, step: usize, tag: u8) {
        for (i, &h) in self.conns.iter().enumerate().step_by(step.max(1)) {
            let msg = [tag, i as u8, 0x5a, 0xa5];
            assert_eq!(self.client.tcp_send(h, &msg), Ok(msg.len()));
        }
    }

    /// Everything the client has received on each connection.
    fn replies(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        self.conns
            .iter()
            .map(|&h| {
                let mut got = Vec::new();
                while let Ok(n) = self.client.tcp_recv(h, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                got
            })
            .collect()
    }
}

#[test]
fn batches_answer_as_frames_one_at_a_time() {
    let mut t = Twins::new();
    for r in 0..5u8 {
        t.requests(1 + usize::from(r % 3), r);
        t.round(&[]);
        t.round(&[]);
    }
    let replies = t.replies();
    assert!(
        replies.iter().all(|r| r.len() >= 8),
        "every connection answered"
    );
    assert!(t.batched.stats().tcp_rx_segments > 100);
}

/// A frame of a connection's real traffic, to forge from.
fn sample(t: &mut Twins) -> Vec<u8> {
    let now = t.now;
    t.client.tcp_send(t.conns[3], b"x").expect("send");
    t.client.poll(now);
    let mut up = Vec::new();
    t.client.transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
    // Both servers get it, so that they stay twins.
    for f in &up {
        t.alone.receive(now, f);
        t.batched.receive(now, f);
    }
    up.pop().expect("a segment")
}

thread_local! {
    /// One pair of twins for every case (1,100 handshakes each would be slow): each case
    /// starts where the last left them, twins still.
    static TWINS: std::cell::RefCell<Option<Twins>> = const { std::cell::RefCell::new(None) };
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Forged and malformed frames in a batch: flipped octets anywhere (a port, an address,
    /// a length), truncations, and segments of a real connection with a bad checksum.
    #[test]
    fn forged_frames_in_a_batch_change_nothing(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        TWINS.with_borrow_mut(|twins| {
        let t = twins.get_or_insert_with(Twins::new);
        let real = sample(t);
        let mut extra = Vec::new();
        for &(i, x) in &flips {
            let mut f = real.clone();
            let at = i.index(f.len());
            f[at] ^= x | 1;
            extra.push(f);
        }
        extra.push(real[..cut.index(real.len())].to_vec());
        extra.push(real.clone());
        t.requests(2, 9);
        t.round(&extra);
        t.round(&[]);
        });
    }
}
