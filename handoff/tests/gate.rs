//! The control port's gate over loopback, against hostile peers (issue 12, finding 1 and 3):
//! idle, trickling, truncated, wrong-key and huge-frame connections never reach the owner,
//! each is closed within the handshake deadline or at once, no more wait than the bounds
//! allow, and a real peer (another source address) gets through all along.

use ds_handoff::channel::{Channel, ClusterSecret, HELLO_LEN};
use ds_handoff::gate::{ChannelGate, GateLimits};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"the gate test's cluster secret";

fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET).expect("secret")
}

/// A gate on a dual-stack loopback listener: `[::1]` and `127.0.0.1` are two source addresses.
fn gate(limits: GateLimits) -> (ChannelGate, u16) {
    let l = TcpListener::bind("[::]:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    (
        ChannelGate::new(l, &secret(), limits, "test gate").expect("gate"),
        port,
    )
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port))
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Poll the gate (and the real peer's channel) until `done` or 3 s; what it handed over.
fn run(
    g: &mut ChannelGate,
    peer: Option<&mut Channel>,
    mut done: impl FnMut(&ChannelGate, usize) -> bool,
) -> Vec<Channel> {
    let mut got = Vec::new();
    let t = Instant::now();
    let mut peer = peer;
    while t.elapsed() < Duration::from_secs(3) {
        for (c, _) in g.poll(Instant::now()) {
            got.push(c);
        }
        if let Some(p) = peer.as_deref_mut() {
            p.poll().expect("the real peer's channel");
        }
        if done(g, got.len()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

/// A hello that looks right (magic, version, initiator role) with a random-looking salt.
fn forged_hello() -> Vec<u8> {
    let mut h = b"DSH".to_vec();
    h.push(ds_handoff::channel::CHANNEL_VERSION);
    h.push(1);
    h.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    assert_eq!(h.len(), HELLO_LEN);
    h
}

#[test]
fn hostile_connections_are_bounded_and_a_real_peer_gets_through() {
    let limits = GateLimits {
        handshake: Duration::from_millis(300),
        ..GateLimits::default()
    };
    let (mut g, port) = gate(limits);
    // From [::1]: a huge frame, idle, truncated hello, hello without the key, trickling.
    let mut hostile = Vec::new();
    for kind in 0..5 {
        let mut s = TcpStream::connect(v6(port)).expect("connect");
        match kind {
            0 => {
                // A valid-looking hello, then a frame announcing 16 MiB.
                s.write_all(&forged_hello()).expect("write");
                s.write_all(&(16u32 << 20).to_be_bytes()).expect("write");
                s.write_all(&[0u8; 4096]).expect("write");
            }
            1 => {}
            2 => s.write_all(&forged_hello()[..10]).expect("write"),
            3 => s.write_all(&forged_hello()).expect("write"),
            _ => s.write_all(b"D").expect("write"),
        }
        hostile.push(s);
    }
    // The real peer, from 127.0.0.1.
    let mut real = Channel::connect(v4(port), &secret()).expect("real peer");
    let got = run(&mut g, Some(&mut real), |_, n| n == 1);
    assert_eq!(got.len(), 1, "the real peer is handed over");
    assert!(got[0].is_established());
    let st = g.stats();
    assert_eq!(
        st.refused_address, 1,
        "four waiting per address: the fifth is refused"
    );
    assert!(
        st.failed >= 1,
        "the 16 MiB frame fails at once (the pre-auth limit): {st:?}"
    );
    // The rest time out at the deadline and are never handed over.
    let got = run(&mut g, None, |g, _| g.waiting() == 0);
    assert!(got.is_empty(), "nothing without the key gets through");
    assert_eq!(g.waiting(), 0);
    let st = g.stats();
    assert_eq!(st.authenticated, 1, "{st:?}");
    assert_eq!(st.accepted, 6, "{st:?}");
    assert_eq!(
        st.timeouts + st.failed + st.refused_address,
        5,
        "every hostile connection closed: {st:?}"
    );
    // The gate closed them: each reads EOF (or a reset).
    for mut s in hostile {
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // the gate's own hello
            }
        }
    }
}

#[test]
fn a_wrong_key_is_refused_at_the_handshake() {
    let (mut g, port) = gate(GateLimits::default());
    let other = ClusterSecret::new(b"another cluster's secret!!").expect("secret");
    let mut wrong = Channel::connect(v6(port), &other).expect("connect");
    let got = run(&mut g, None, |g, _| {
        let _ = wrong.poll();
        g.stats().failed == 1
    });
    assert!(got.is_empty());
    assert_eq!(g.stats().failed, 1, "{:?}", g.stats());
    assert!(
        !wrong.is_established(),
        "the initiator did not see the key proved either"
    );
}

#[test]
fn a_flood_from_one_address_cannot_lock_out_another() {
    // The flood from [::1] is capped at 4 waiting; those 4 fill the gate's total, so the real
    // peer's channel evicts the biggest holder's oldest.
    let limits = GateLimits {
        per_address: 4,
        total: 4,
        ..GateLimits::default()
    };
    let (mut g, port) = gate(limits);
    let flood: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(v6(port)).expect("connect"))
        .collect();
    run(&mut g, None, |g, _| g.stats().accepted == 50);
    assert_eq!(g.waiting(), 4);
    assert_eq!(g.stats().refused_address, 46);
    // The gate is full; the real peer from 127.0.0.1 evicts the flood's oldest.
    let mut real = Channel::connect(v4(port), &secret()).expect("real peer");
    let got = run(&mut g, Some(&mut real), |_, n| n == 1);
    assert_eq!(got.len(), 1, "{:?}", g.stats());
    assert_eq!(g.stats().evicted, 1);
    drop(flood);
}

/// Two lines per second pass; the third is counted, and the next period's first line says so.
#[test]
fn log_limit_allows_a_burst_per_period_and_counts_the_rest() {
    use ds_handoff::gate::LogLimit;
    let mut l = LogLimit::new(2, Duration::from_secs(1));
    let t = Instant::now();
    assert_eq!(l.allow(t), Some(0));
    assert_eq!(l.allow(t), Some(0));
    assert_eq!(l.allow(t), None);
    assert_eq!(l.allow(t + Duration::from_secs(1)), Some(1));
}

#[test]
fn a_hinted_poll_accepts_only_when_the_listener_was_found_readable() {
    let (mut g, port) = gate(GateLimits::default());
    let mut fds = Vec::new();
    g.wait_fds(&mut fds);
    let listener = fds[0];
    let _s = TcpStream::connect(v6(port)).expect("connect");
    // Let the kernel finish the handshake so that an accept would succeed.
    std::thread::sleep(Duration::from_millis(50));
    assert!(g.poll_hinted(Instant::now(), |_| false).is_empty());
    assert_eq!(g.stats().accepted, 0, "accepted without readiness");
    assert_eq!(g.waiting(), 0);
    g.poll_hinted(Instant::now(), |fd| fd == listener);
    assert_eq!(g.stats().accepted, 1);
    assert_eq!(g.waiting(), 1);
}
