//! Freeze a live connection of the userspace stack mid-transfer, move its state (encoded bytes)
//! to a second interface in another namespace that takes the address over, thaw it there: the
//! kernel peer finishes the 64 MiB download byte-exact, with no RST.

use ds_stack::{ConnState, Error, TcpState};
use ds_testbed::conn::{ip, step_serving};
use ds_testbed::{all_counters, counter_delta, require_root, KernelPeer, PatternStream};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::net::{SocketAddrV6, TcpStream};
use std::time::{Duration, Instant};

const LEN: usize = 64 << 20;
/// How long the serving node waits for frames in a round.
const STEP: Duration = Duration::from_millis(2);
const BLOCK: usize = 64 << 10;
const PEER: &str = "fd00:d2::1";
const DS: &str = "fd00:d2::80";
const NODE2: &str = "fd00:d2::12";

/// Block `i` of the object: independent of how the sender was split across nodes.
fn block(i: usize) -> Vec<u8> {
    PatternStream::bytes(1000 + i as u64, BLOCK)
}

fn expected_digest() -> [u8; 32] {
    PatternStream::digest_of_blocks(LEN / BLOCK, block)
}

/// Feed the object from offset `*sent` into the connection as far as the buffer allows.
fn feed(
    iface: &mut ds_stack::Interface,
    c: ds_stack::TcpHandle,
    sent: &mut usize,
    cur: &mut (usize, Vec<u8>),
) {
    while *sent < LEN {
        let bi = *sent / BLOCK;
        if cur.0 != bi || cur.1.is_empty() {
            *cur = (bi, block(bi));
        }
        let off = *sent % BLOCK;
        match iface.tcp_send(c, &cur.1[off..]) {
            Ok(0) => return,
            Ok(n) => *sent += n,
            Err(e) => panic!("send: {e}"),
        }
    }
}

#[test]
fn freeze_mid_transfer_and_thaw_in_another_namespace() {
    if !require_root("freeze_mid_transfer_and_thaw_in_another_namespace") {
        return;
    }
    let want = expected_digest();
    let mut peer = KernelPeer::new("mp", ip(PEER)).expect("peer");
    let h1 = peer.attach_host("m1").expect("host 1");
    let h2 = peer.attach_host("m2").expect("host 2");
    // The whole send buffer usable (no not-sent limit), so that ≥ 1 MiB is queued to move.
    let mut rt1 = h1
        .stack([2, 0xd5, 0, 0, 1, 1], ip(DS), |c| {
            c.tcp.notsent_lowat = None
        })
        .expect("stack 1");
    let mut rt2 = h2
        .stack([2, 0xd5, 0, 0, 2, 2], ip(NODE2), |_| {})
        .expect("stack 2");
    let l = rt1
        .iface
        .tcp_listen(SocketAddrV6::new(ip(DS), 80, 0, 0), 4)
        .expect("listen");
    let before = all_counters(&peer.ns).expect("counters");
    let start = Instant::now();
    let limit = Duration::from_secs(180);

    std::thread::scope(|sc| {
        let client = sc.spawn(|| {
            peer.ns.run(|| {
                let mut s = TcpStream::connect((ip(DS), 80)).expect("kernel connect");
                let mut h = Sha256::new();
                let mut buf = vec![0u8; BLOCK];
                let mut total = 0usize;
                loop {
                    // Read slowly at first so the server's send buffer holds plenty unacked.
                    if total < 8 << 20 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            total += n;
                        }
                        Err(e) => return Err(format!("kernel read after {total} bytes: {e}")),
                    }
                }
                let d: [u8; 32] = h.finalize().into();
                Ok((total, d))
            })
        });

        // Phase 1: node 1 serves until ≥ 1 MiB is buffered, then freezes.
        let mut conn = None;
        let mut sent = 0usize;
        let mut cur = (usize::MAX, Vec::new());
        let state_bytes = loop {
            step_serving(&mut rt1, &mut rt2, STEP, (start, limit), "phase 1");
            if conn.is_none() {
                conn = rt1.iface.tcp_accept(l);
            }
            let Some(c) = conn else { continue };
            feed(&mut rt1.iface, c, &mut sent, &mut cur);
            if sent > 4 << 20 && rt1.iface.tcp_send_queued(c) >= 1 << 20 {
                let now = rt1.now();
                let st = rt1.iface.tcp_freeze(now, c).expect("freeze");
                assert!(
                    st.send_data.len() >= 1 << 20,
                    "≥ 1 MiB unacked/unsent moves with the state"
                );
                rt1.iface.remove_addr(ip(DS));
                break st.encode();
            }
        };
        eprintln!(
            "frozen after {sent} bytes handed to node 1; state {} bytes",
            state_bytes.len()
        );

        // Phase 2: node 2 takes the address over and thaws.
        let st = ConnState::decode(&state_bytes).expect("decode");
        rt2.iface.add_addr(ip(DS));
        let now = rt2.now();
        let c2 = rt2.iface.tcp_thaw(now, &st).expect("thaw");
        rt2.iface.announce(now);
        let mut closed = false;
        loop {
            step_serving(&mut rt2, &mut rt1, STEP, (start, limit), "phase 2");
            feed(&mut rt2.iface, c2, &mut sent, &mut cur);
            if sent == LEN && !closed {
                rt2.iface.tcp_close(c2).expect("close");
                closed = true;
            }
            let mut sink = [0u8; 64];
            match rt2.iface.tcp_recv(c2, &mut sink) {
                Ok(_) => {}
                Err(Error::Eof) => {}
                Err(e) => panic!("node 2 connection failed: {e}"),
            }
            if closed
                && client.is_finished()
                && matches!(
                    rt2.iface.tcp_state(c2),
                    Some(TcpState::TimeWait | TcpState::Closed | TcpState::FinWait2)
                )
            {
                break;
            }
        }
        let (total, got) = client
            .join()
            .expect("client thread")
            .expect("kernel client");
        assert_eq!(total, LEN);
        assert_eq!(got, want, "byte-exact after the move");
    });
    let delta = counter_delta(&before, &all_counters(&peer.ns).expect("counters"));
    eprintln!(
        "moved in {:.2}s; kernel retrans {:?}, node1 {:?}, node2 {:?}",
        start.elapsed().as_secs_f64(),
        delta.get("TcpRetransSegs"),
        rt1.iface.stats().tcp_no_socket,
        rt2.iface.stats()
    );
    assert_eq!(
        delta.get("TcpEstabResets").copied().unwrap_or(0),
        0,
        "kernel saw no RST"
    );
    assert_eq!(delta.get("TcpInErrs").copied().unwrap_or(0), 0);
}
