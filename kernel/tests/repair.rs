//! Kernel-path handoffs in namespaces: a server connection is frozen on one host and restored on
//! another that takes the DS address over, kernel→kernel, kernel→userspace and
//! userspace→kernel, while a kernel client downloads. Byte-exact, and the client never sees a
//! reset. During the move the donor drops the client's packets (nftables), so the client
//! retransmits instead of meeting a closed port.

use ds_stack::{ConnState, Error, TcpState};
use ds_testbed::{all_counters, counter_delta, require_root, KernelPeer, Netns, PatternStream};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const LEN: usize = 16 << 20;
const BLOCK: usize = 64 << 10;

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal address")
}

fn block(i: usize) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    PatternStream::new(77 + i as u64).fill(&mut b);
    b
}

fn digest() -> [u8; 32] {
    let mut h = Sha256::new();
    for i in 0..LEN / BLOCK {
        h.update(block(i));
    }
    h.finalize().into()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Kernel,
    User,
}

/// Drop the client's packets at a host (the donor during the move).
fn lock(ns: &Netns, on: bool) {
    if on {
        ns.exec(&["nft", "add table inet dslock; add chain inet dslock in { type filter hook input priority -10; }; add rule inet dslock in tcp sport != 0 tcp dport 80 drop"])
            .expect("nft lock");
    } else {
        let _ = ns.exec_ok(&["nft", "delete table inet dslock"]);
    }
}

/// Serve the object from offset `sent` on a kernel socket until done.
fn kernel_serve(mut s: TcpStream, mut sent: usize) {
    while sent < LEN {
        let b = block(sent / BLOCK);
        let off = sent % BLOCK;
        s.write_all(&b[off..]).expect("kernel server write");
        sent += BLOCK - off;
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

fn handoff(name: &str, donor: Side, acceptor: Side) {
    if !require_root(name) {
        return;
    }
    let ds = ip("fd00:d8::80");
    let client_ip = ip("fd00:d8::1");
    let mut peer = KernelPeer::new("kc", client_ip).expect("client ns");
    let h1 = peer.attach_host("k1").expect("host 1");
    let h2 = peer.attach_host("k2").expect("host 2");
    for h in [&h1, &h2] {
        h.ns.sysctl("net.ipv6.conf.all.ndisc_notify", "1")
            .expect("sysctl");
        h.ns.sysctl("net.ipv6.conf.br0.ndisc_notify", "1")
            .expect("sysctl");
    }
    let want = digest();
    let before = all_counters(&peer.ns).expect("counters");

    std::thread::scope(|sc| {
        // The client: read slowly at first so data is in flight at the freeze.
        let client = sc.spawn({
            let ns = &peer.ns;
            move || {
                ns.run(|| {
                    let mut s = None;
                    for _ in 0..100 {
                        match TcpStream::connect((ds, 80)) {
                            Ok(c) => {
                                s = Some(c);
                                break;
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                    let mut s = s.expect("client connect");
                    let mut h = Sha256::new();
                    let mut buf = vec![0u8; BLOCK];
                    let mut total = 0;
                    loop {
                        if total < 4 << 20 {
                            std::thread::sleep(Duration::from_millis(3));
                        }
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                h.update(&buf[..n]);
                                total += n;
                            }
                            Err(e) => return Err(format!("client read after {total}: {e}")),
                        }
                    }
                    let d: [u8; 32] = h.finalize().into();
                    Ok((total, d))
                })
            }
        });

        // Donor: serve until ≥ 2 MiB handed over, then freeze.
        let (state, sent) = match donor {
            Side::Kernel => {
                h1.ns
                    .ip(&["addr", "add", &format!("{ds}/64"), "dev", "br0", "nodad"])
                    .expect("addr");
                let l = h1.ns.run(|| TcpListener::bind((ds, 80))).expect("listen");
                let (mut s, _) = l.accept().expect("accept");
                let mut sent = 0;
                while sent < 3 << 20 {
                    s.write_all(&block(sent / BLOCK)).expect("write");
                    sent += BLOCK;
                }
                lock(&h1.ns, true);
                let st = ds_kernel::freeze(&s).expect("freeze kernel socket");
                drop(s); // silent close: repair mode
                h1.ns
                    .ip(&["addr", "del", &format!("{ds}/64"), "dev", "br0"])
                    .expect("addr del");
                (st, sent)
            }
            Side::User => {
                let mut rt = h1.stack([2, 0xd8, 0, 0, 0, 1], ds, |_| {}).expect("stack");
                let l = rt
                    .iface
                    .tcp_listen(SocketAddrV6::new(ds, 80, 0, 0), 4)
                    .expect("listen");
                let t = Instant::now();
                let mut c = None;
                let mut sent = 0;
                let mut cur = (usize::MAX, Vec::new());
                loop {
                    assert!(t.elapsed() < Duration::from_secs(30), "donor");
                    rt.step(Duration::from_millis(2)).expect("step");
                    if c.is_none() {
                        c = rt.iface.tcp_accept(l);
                    }
                    let Some(h) = c else { continue };
                    if cur.0 != sent / BLOCK {
                        cur = (sent / BLOCK, block(sent / BLOCK));
                    }
                    sent += rt.iface.tcp_send(h, &cur.1[sent % BLOCK..]).expect("send");
                    if sent >= 3 << 20 && rt.iface.tcp_send_queued(h) >= 256 << 10 {
                        lock(&h1.ns, true);
                        let now = rt.now();
                        let st = rt.iface.tcp_freeze(now, h).expect("freeze");
                        break (st, sent);
                    }
                }
            }
        };
        let bytes = state.encode();
        let state = ConnState::decode(&bytes).expect("decode");
        assert!(
            !state.send_data.is_empty(),
            "data in flight moves with the state"
        );

        // Acceptor: take the address and restore.
        match acceptor {
            Side::Kernel => {
                h2.ns
                    .ip(&["addr", "add", &format!("{ds}/64"), "dev", "br0", "nodad"])
                    .expect("addr");
                let s = h2
                    .ns
                    .run(|| ds_kernel::restore(&state))
                    .expect("restore kernel socket");
                lock(&h1.ns, false);
                kernel_serve(s, sent);
            }
            Side::User => {
                let mut rt = h2.stack([2, 0xd8, 0, 0, 0, 2], ds, |_| {}).expect("stack");
                let now = rt.now();
                let h = rt.iface.tcp_thaw(now, &state).expect("thaw");
                rt.iface.announce(now);
                lock(&h1.ns, false);
                let t = Instant::now();
                let mut sent = sent;
                let mut cur = (usize::MAX, Vec::new());
                let mut closed = false;
                while !client.is_finished() {
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "acceptor: {:?}",
                        rt.iface.stats()
                    );
                    rt.step(Duration::from_millis(2)).expect("step");
                    if sent < LEN {
                        if cur.0 != sent / BLOCK {
                            cur = (sent / BLOCK, block(sent / BLOCK));
                        }
                        sent += rt.iface.tcp_send(h, &cur.1[sent % BLOCK..]).expect("send");
                    } else if !closed {
                        rt.iface.tcp_close(h).expect("close");
                        closed = true;
                    }
                    match rt.iface.tcp_recv(h, &mut [0u8; 64]) {
                        Ok(_) | Err(Error::Eof) => {}
                        Err(e) => panic!("acceptor connection: {e}"),
                    }
                }
                assert!(rt.iface.tcp_state(h) != Some(TcpState::Closed) || closed);
            }
        }
        let (total, got) = client.join().expect("client thread").expect("client");
        assert_eq!(total, LEN);
        assert_eq!(got, want, "byte-exact across {donor:?} -> {acceptor:?}");
    });
    let d = counter_delta(&before, &all_counters(&peer.ns).expect("counters"));
    assert_eq!(
        d.get("TcpEstabResets").copied().unwrap_or(0),
        0,
        "client saw no reset"
    );
    drop(peer);
}

#[test]
fn kernel_to_kernel() {
    handoff("kernel_to_kernel", Side::Kernel, Side::Kernel);
}

#[test]
fn kernel_to_userspace() {
    handoff("kernel_to_userspace", Side::Kernel, Side::User);
}

#[test]
fn userspace_to_kernel() {
    handoff("userspace_to_kernel", Side::User, Side::Kernel);
}
