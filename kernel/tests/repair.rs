//! Kernel-path handoffs in namespaces: a server connection is frozen on one host and restored on
//! another that takes the DS address over, kernel→kernel, kernel→userspace and
//! userspace→kernel, while a kernel client downloads 16 MiB and keeps sending small messages
//! upstream. Byte-exact both ways, and the client never sees a reset.
//!
//! During the move the donor HOLDS the client's packets (a kernel donor with
//! a [`ds_kernel::HoldTable`] — the XDP steering program on its link — holding the flow from
//! before the freeze; a userspace donor by freezing, which holds
//! the frozen connection's packets in the stack) and forwards them to the acceptor once it has
//! restored the connection ([`ds_kernel::restore_with_held`] then [`ds_kernel::inject`] into a
//! kernel acceptor, `Interface::receive_ipv6` into a userspace one), for as long as the client
//! still sends to the donor. Nothing the client sent is lost, so it never retransmits: its
//! `TcpRetransSegs` does not move across the handoff.

use ds_stack::device::TapDevice;
use ds_stack::runner::Runner;
use ds_stack::{ConnState, Error, Packets, TcpState};
use ds_testbed::conn::ip;
use ds_testbed::{
    all_counters, counter_delta, moved_tcp_counters, require_root, KernelPeer, PatternStream,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV6, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const LEN: usize = 16 << 20;
const BLOCK: usize = 64 << 10;
/// The client sends one 8-byte counter this often, upstream, all through the download.
const UP_EVERY: Duration = Duration::from_millis(2);

fn block(i: usize) -> Vec<u8> {
    PatternStream::bytes(77 + i as u64, BLOCK)
}

fn digest() -> [u8; 32] {
    PatternStream::digest_of_blocks(LEN / BLOCK, block)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Kernel,
    User,
}

/// Checks the upstream: consecutive little-endian u64 counters from 0.
#[derive(Default)]
struct Upstream {
    next: u64,
    partial: Vec<u8>,
}

impl Upstream {
    fn feed(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        let whole = self.partial.len() / 8 * 8;
        for c in self.partial[..whole].chunks_exact(8) {
            let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            assert_eq!(v, self.next, "upstream byte-exact");
            self.next += 1;
        }
        self.partial.drain(..whole);
    }
}

/// The donor after the freeze: where the client's held packets come from.
enum Donor {
    Kernel {
        table: Box<ds_kernel::HoldTable>,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    },
    User {
        rt: Box<Runner<TapDevice>>,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    },
}

impl Donor {
    /// The packets held since the last call.
    fn take(&mut self) -> Packets {
        match self {
            Donor::Kernel {
                table,
                local,
                remote,
            } => table.take(*local, *remote),
            Donor::User { rt, local, remote } => {
                rt.step(Duration::ZERO).expect("donor step");
                rt.iface.tcp_take_held(*local, *remote)
            }
        }
    }

    /// Stop holding; the packets still held.
    fn finish(self) -> Packets {
        match self {
            Donor::Kernel {
                mut table,
                local,
                remote,
            } => table.release(local, remote).expect("release the hold"),
            Donor::User {
                mut rt,
                local,
                remote,
            } => {
                rt.step(Duration::ZERO).expect("donor step");
                rt.iface.tcp_forget_frozen(local, remote)
            }
        }
    }
}

/// Counts of the forwarding from donor to acceptor.
#[derive(Debug, Default)]
struct Forwarded {
    held: usize,
    delivered: usize,
}

impl Forwarded {
    /// Hand packets the donor held to a userspace acceptor, counting them.
    fn deliver(&mut self, rt: &mut Runner<TapDevice>, pkts: Packets) {
        self.held += pkts.len();
        let now = rt.now();
        for p in &pkts {
            rt.iface.receive_ipv6(now, p, None);
            self.delivered += 1;
        }
    }
}

/// Serve the object from offset `sent` on a kernel socket until done; check the upstream.
fn kernel_serve(mut s: TcpStream, mut sent: usize) -> Upstream {
    while sent < LEN {
        let b = block(sent / BLOCK);
        let off = sent % BLOCK;
        s.write_all(&b[off..]).expect("kernel server write");
        sent += BLOCK - off;
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("kernel server read");
    let mut up = Upstream::default();
    up.feed(&rest);
    up
}

fn counter(d: &HashMap<String, u64>, k: &str) -> u64 {
    d.get(k).copied().unwrap_or(0)
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
    let mut before_move = HashMap::new();
    let mut fwd = Forwarded::default();
    let mut acceptor_note = String::new();
    let stop = AtomicBool::new(false);

    std::thread::scope(|sc| {
        // The client: read slowly at first so data is in flight at the freeze, and send a
        // counter upstream every UP_EVERY until the download ends.
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
                    let s = s.expect("client connect");
                    let done = AtomicBool::new(false);
                    std::thread::scope(|cs| {
                        let writer = cs.spawn(|| -> Result<u64, String> {
                            let mut w = &s;
                            let mut n = 0u64;
                            while !done.load(Ordering::Relaxed) {
                                w.write_all(&n.to_le_bytes())
                                    .map_err(|e| format!("client write {n}: {e}"))?;
                                n += 1;
                                std::thread::sleep(UP_EVERY);
                            }
                            Ok(n)
                        });
                        let mut h = Sha256::new();
                        let mut buf = vec![0u8; BLOCK];
                        let mut total = 0;
                        let r = loop {
                            if total < 4 << 20 {
                                std::thread::sleep(Duration::from_millis(3));
                            }
                            match (&s).read(&mut buf) {
                                Ok(0) => break Ok(()),
                                Ok(n) => {
                                    h.update(&buf[..n]);
                                    total += n;
                                }
                                Err(e) => break Err(format!("client read after {total}: {e}")),
                            }
                        };
                        done.store(true, Ordering::Relaxed);
                        let up = writer.join().expect("writer thread")?;
                        r?;
                        // FIN after the last counter: the server reads the upstream to its end.
                        s.shutdown(std::net::Shutdown::Write)
                            .map_err(|e| format!("client shutdown: {e}"))?;
                        let d: [u8; 32] = h.finalize().into();
                        Ok::<_, String>((total, d, up))
                    })
                })
            }
        });

        // Donor: serve until ≥ 3 MiB handed over, then hold the client's packets and freeze.
        let (state, sent, mut held) = match donor {
            Side::Kernel => {
                h1.ns
                    .ip(&["addr", "add", &format!("{ds}/64"), "dev", "br0", "nodad"])
                    .expect("addr");
                // The host's hold: the steering program on its link, from the start (as a
                // kernel node loads it when it starts serving).
                let mut table = h1
                    .ns
                    .run(|| ds_kernel::HoldTable::attach(&h1.uplink, Default::default()))
                    .expect("attach the hold program");
                let l = h1.ns.run(|| TcpListener::bind((ds, 80))).expect("listen");
                let (mut s, _) = l.accept().expect("accept");
                let mut sent = 0;
                while sent < 3 << 20 {
                    s.write_all(&block(sent / BLOCK)).expect("write");
                    sent += BLOCK;
                }
                let local = SocketAddrV6::new(ds, 80, 0, 0);
                let remote = match s.peer_addr().expect("peer") {
                    std::net::SocketAddr::V6(r) => r,
                    std::net::SocketAddr::V4(_) => panic!("IPv6 client expected"),
                };
                before_move = all_counters(&peer.ns).expect("counters");
                table
                    .hold(local, remote)
                    .expect("hold the client's packets");
                let st = ds_kernel::freeze(&s).expect("freeze kernel socket");
                drop(s); // silent close: repair mode
                h1.ns
                    .ip(&["addr", "del", &format!("{ds}/64"), "dev", "br0"])
                    .expect("addr del");
                (
                    st,
                    sent,
                    Donor::Kernel {
                        table: Box::new(table),
                        local,
                        remote,
                    },
                )
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
                        before_move = all_counters(&peer.ns).expect("counters");
                        // Freezing holds the connection's packets in the stack from now on.
                        let now = rt.now();
                        let st = rt.iface.tcp_freeze(now, h).expect("freeze");
                        let (local, remote) = (st.local(), st.remote());
                        break (
                            st,
                            sent,
                            Donor::User {
                                rt: Box::new(rt),
                                local,
                                remote,
                            },
                        );
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

        // Acceptor: take the address, restore, then deliver what the donor held (and goes on
        // holding while the client still sends there).
        match acceptor {
            Side::Kernel => {
                h2.ns
                    .ip(&["addr", "add", &format!("{ds}/64"), "dev", "br0", "nodad"])
                    .expect("addr");
                // What the donor holds goes in as part of the restore, before the socket sends
                // anything: once the client has heard from the acceptor and answered it
                // directly, the held segments are stale and the kernel drops them (challenge
                // ACK for an old ACK, RFC 5961 §5.2; PAWS, RFC 7323 §5.3), data and all.
                let (s, first) = h2.ns.run(|| {
                    let pkts = held.take();
                    let (s, n) =
                        ds_kernel::restore_with_held(&state, &pkts).expect("restore kernel socket");
                    (s, (pkts, n))
                });
                let forwarder = sc.spawn({
                    let (ns, stop) = (&h2.ns, &stop);
                    move || {
                        ns.enter_current_thread().expect("enter acceptor ns");
                        let mut f = Forwarded {
                            held: first.0.len(),
                            delivered: first.1,
                        };
                        let mut deliver = |pkts: Packets| {
                            f.held += pkts.len();
                            f.delivered += ds_kernel::inject(&pkts).expect("inject");
                        };
                        while !stop.load(Ordering::Relaxed) {
                            deliver(held.take());
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        deliver(held.finish());
                        f
                    }
                });
                let up = kernel_serve(s, sent);
                stop.store(true, Ordering::Relaxed);
                fwd = forwarder.join().expect("forwarder");
                let (total, got, n_up) = client.join().expect("client thread").expect("client");
                assert_eq!(total, LEN);
                assert_eq!(got, want, "byte-exact across {donor:?} -> {acceptor:?}");
                assert_eq!(up.next, n_up, "every upstream counter arrived");
                let a = all_counters(&h2.ns).expect("acceptor counters");
                acceptor_note = format!(
                    "acceptor TcpRetransSegs {} TcpExtTCPTimeouts {} TcpExtPAWSEstab {}",
                    counter(&a, "TcpRetransSegs"),
                    counter(&a, "TcpExtTCPTimeouts"),
                    counter(&a, "TcpExtPAWSEstab")
                );
            }
            Side::User => {
                let mut rt = h2.stack([2, 0xd8, 0, 0, 0, 2], ds, |_| {}).expect("stack");
                let now = rt.now();
                let h = rt.iface.tcp_thaw(now, &state).expect("thaw");
                rt.iface.announce(now);
                let t = Instant::now();
                let mut sent = sent;
                let mut cur = (usize::MAX, Vec::new());
                let mut closed = false;
                let mut up = Upstream::default();
                let mut up_eof = false;
                let mut buf = [0u8; 4096];
                while !(client.is_finished() && up_eof) {
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "acceptor: {:?}",
                        rt.iface.stats()
                    );
                    fwd.deliver(&mut rt, held.take());
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
                    loop {
                        match rt.iface.tcp_recv(h, &mut buf) {
                            Ok(0) => break,
                            Ok(n) => up.feed(&buf[..n]),
                            Err(Error::Eof) => {
                                up_eof = true;
                                break;
                            }
                            Err(e) => panic!("acceptor connection: {e}"),
                        }
                    }
                }
                fwd.deliver(&mut rt, held.finish());
                assert!(rt.iface.tcp_state(h) != Some(TcpState::Closed) || closed);
                let (total, got, n_up) = client.join().expect("client thread").expect("client");
                assert_eq!(total, LEN);
                assert_eq!(got, want, "byte-exact across {donor:?} -> {acceptor:?}");
                assert_eq!(up.next, n_up, "every upstream counter arrived");
                acceptor_note = format!("acceptor stack {:?}", rt.iface.stats());
            }
        }
    });
    let after = all_counters(&peer.ns).expect("counters");
    let d = counter_delta(&before, &after);
    let dm = counter_delta(&before_move, &after);
    println!(
        "{name}: held {} packet(s) at the donor, delivered {} to the acceptor; client over the \
         move: TcpRetransSegs +{} TcpExtTCPTimeouts +{} TcpExtTCPLossProbes +{}; {acceptor_note}",
        fwd.held,
        fwd.delivered,
        counter(&dm, "TcpRetransSegs"),
        counter(&dm, "TcpExtTCPTimeouts"),
        counter(&dm, "TcpExtTCPLossProbes"),
    );
    let moved = moved_tcp_counters(&dm);
    println!("{name}: client TCP counters that moved over the handoff: {moved:?}");
    assert_eq!(counter(&d, "TcpEstabResets"), 0, "client saw no reset");
    assert_eq!(fwd.delivered, fwd.held, "every held packet was delivered");
    assert!(
        fwd.held > 0,
        "the client sends all the time: some of its packets reached the donor during the move"
    );
    assert_eq!(
        counter(&dm, "TcpRetransSegs"),
        0,
        "the client retransmitted nothing over the handoff"
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

/// A failed handoff thaws the connection back on the donor, while (as in any process that
/// spawns commands) a forked child may still hold a copy of the frozen socket's descriptor,
/// which defers its close: [`ds_kernel::retire`] takes the frozen socket out of the
/// connection table at once, so the restore here takes the same 4-tuple, and the connection
/// goes on with nothing lost.
#[test]
fn restore_here_while_a_copy_of_the_frozen_descriptor_lives() {
    if !require_root("restore_here_while_a_copy_of_the_frozen_descriptor_lives") {
        return;
    }
    let ns = ds_testbed::Netns::new("kretire").expect("namespace");
    ns.run(|| {
        let l = TcpListener::bind("[::1]:0").expect("listen");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        c.write_all(b"before").expect("client writes");
        // The data is in the server's receive queue before the freeze.
        let t0 = Instant::now();
        while s.peek(&mut [0u8; 6]).expect("peek") < 6 {
            assert!(t0.elapsed() < Duration::from_secs(2), "data never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = ds_kernel::freeze(&s).expect("freeze");
        // A forked child's copy of the descriptor.
        let copy = s.try_clone().expect("dup");
        ds_kernel::retire(&s).expect("retire");
        drop(s);
        let mut back = ds_kernel::restore(&st).expect("restore beside the old descriptor");
        let mut got = [0u8; 6];
        back.read_exact(&mut got).expect("server reads");
        assert_eq!(&got, b"before");
        back.write_all(b"after").expect("server writes");
        let mut got = [0u8; 5];
        c.read_exact(&mut got).expect("client reads");
        assert_eq!(&got, b"after");
        drop(copy);
    });
}
