//! The packet hold and injection on their own, in namespaces: a client and a server joined by
//! a veth pair, the steering program attached to the server's end by [`HoldTable::attach`].
//! The client's data is held (not delivered, not lost), then injected and read by the server;
//! holding and releasing cost one map update each; the table's bounds hold.

use ds_kernel::{complete_tcp_checksum, inject, Checksum, HoldLimits, HoldTable};
use ds_testbed::{add_addr, require_root, veth, wait_addr_usable, Netns};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const CLIENT: &str = "fd00:40::1";
const SERVER: &str = "fd00:40::2";

fn v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V6(v) => v,
        SocketAddr::V4(_) => panic!("IPv6 expected"),
    }
}

/// Client and server namespaces on one veth pair (offloads left on: the client's kernel
/// leaves TCP checksums to the receiver, which the hold must complete).
fn pair(tag: &str) -> (Netns, Netns) {
    let c = Netns::new(&format!("{tag}c")).expect("client ns");
    let s = Netns::new(&format!("{tag}s")).expect("server ns");
    veth(&c, "eth0", &s, "eth0").expect("veth");
    add_addr(&c, "eth0", &format!("{CLIENT}/64")).expect("addr");
    add_addr(&s, "eth0", &format!("{SERVER}/64")).expect("addr");
    for (ns, a) in [(&c, CLIENT), (&s, SERVER)] {
        wait_addr_usable(ns, "eth0", a, Duration::from_secs(5)).expect("address usable");
    }
    (c, s)
}

/// Wait on the table's descriptor and take the flow's packets until `want` came (or 2 s).
fn wait_held(
    t: &mut HoldTable,
    local: SocketAddrV6,
    remote: SocketAddrV6,
    want: usize,
) -> Vec<Vec<u8>> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "held {}",
            got.len()
        );
        let mut pfd = libc::pollfd {
            fd: t.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive across the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        got.extend(t.take(local, remote).iter().map(<[u8]>::to_vec));
    }
    got
}

#[test]
fn hold_then_inject_over_veth() {
    if !require_root("hold_then_inject_over_veth") {
        return;
    }
    let (c, s) = pair("hold");
    let l = s
        .run(|| TcpListener::bind((SERVER.parse::<Ipv6Addr>().expect("a"), 80)))
        .expect("listen");
    let mut client = c
        .run(|| TcpStream::connect((SERVER.parse::<Ipv6Addr>().expect("a"), 80)))
        .expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let (mut sock, _) = l.accept().expect("accept");
    let local = v6(sock.local_addr().expect("local"));
    let remote = v6(sock.peer_addr().expect("peer"));
    s.run(|| {
        let mut t = HoldTable::attach("eth0", HoldLimits::default()).expect("attach");
        let t0 = Instant::now();
        t.hold(local, remote).expect("hold");
        let hold_took = t0.elapsed();
        assert!(t.is_held(local, remote));

        client.write_all(b"held, ").expect("client write");
        std::thread::sleep(Duration::from_millis(5));
        client.write_all(b"not lost").expect("client write");
        let mut pkts = wait_held(&mut t, local, remote, 2);
        sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        assert_eq!(
            sock.read(&mut buf).map_err(|e| e.kind()).err(),
            Some(ErrorKind::WouldBlock),
            "the server socket must not see held data"
        );
        let counts = t
            .kernel_counts(local, remote)
            .expect("counts")
            .expect("held");
        assert_eq!(counts.packets as usize, pkts.len(), "the program's count");
        assert_eq!(counts.lost, 0);
        for p in &mut pkts {
            assert_eq!(p[0] >> 4, 6, "IPv6");
            assert_eq!(p[6], 6, "TCP");
            assert_eq!(
                p.len(),
                40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
                "whole packet, no link padding"
            );
            assert_eq!(&p[8..24], &remote.ip().octets(), "from the client");
            assert_eq!(&p[24..40], &local.ip().octets(), "to the server");
            assert_eq!(
                complete_tcp_checksum(p),
                Checksum::Valid,
                "checksums valid as handed out"
            );
        }
        let t1 = Instant::now();
        let rest = t.release(local, remote).expect("release");
        let release_took = t1.elapsed();
        assert!(!t.is_held(local, remote));
        println!(
            "hold {hold_took:?}, release {release_took:?}, {} packet(s) held; stats {:?}",
            pkts.len() + rest.len(),
            t.stats()
        );
        assert!(
            hold_took < Duration::from_millis(2) && release_took < Duration::from_millis(2),
            "a map update each: hold {hold_took:?}, release {release_took:?}"
        );
        let all: Vec<Vec<u8>> = pkts
            .into_iter()
            .chain(rest.iter().map(<[u8]>::to_vec))
            .collect();
        assert_eq!(inject(&all).expect("inject"), all.len());
        sock.set_nonblocking(false).expect("blocking");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut got = Vec::new();
        while got.len() < 14 {
            let n = sock.read(&mut buf).expect("server read after inject");
            assert!(n > 0, "eof");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got, b"held, not lost");
        // Released: the next data goes straight to the socket.
        client.write_all(b"direct").expect("client write");
        let n = sock.read(&mut buf).expect("server read after release");
        assert_eq!(&buf[..n], b"direct");
        assert_eq!(t.stats().over_limit, 0);
    });
}

#[test]
fn hold_bounds_and_drop() {
    if !require_root("hold_bounds_and_drop") {
        return;
    }
    let (c, s) = pair("holdb");
    let server: Ipv6Addr = SERVER.parse().expect("a");
    let l = s.run(|| TcpListener::bind((server, 80))).expect("listen");
    let mut client = c.run(|| TcpStream::connect((server, 80))).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let (mut sock, _) = l.accept().expect("accept");
    let local = v6(sock.local_addr().expect("local"));
    let remote = v6(sock.peer_addr().expect("peer"));
    s.run(|| {
        let limits = HoldLimits {
            max_flows: 1,
            max_packets: 2,
            max_bytes: 1 << 20,
        };
        let mut t = HoldTable::attach("eth0", limits).expect("attach");
        t.hold(local, remote).expect("hold");
        let other: SocketAddrV6 = format!("[{CLIENT}]:1").parse().expect("a");
        assert!(
            t.hold(local, other).is_err(),
            "beyond the flow limit: an error, not a panic"
        );
        // A flow with packets waiting but no longer held (a stray) gives its place up.
        t.release(local, remote).expect("release");
        t.hold(local, other).expect("the place is free again");
        t.release(local, other).expect("release");
        t.hold(local, remote).expect("hold");
        t.hold(local, remote).expect("holding again is harmless");
        for m in [b"1", b"2", b"3", b"4"] {
            client.write_all(m).expect("client write");
            std::thread::sleep(Duration::from_millis(3));
        }
        let start = Instant::now();
        while t.stats().over_limit < 2 {
            assert!(start.elapsed() < Duration::from_secs(2), "{:?}", t.stats());
            t.poll();
            std::thread::sleep(Duration::from_millis(1));
        }
        let kept = t.take(local, remote);
        assert_eq!(kept.len(), 2, "bounded per flow");
        // Dropping the table releases its flows and detaches the program it attached: the
        // client's retransmissions then reach the socket.
        drop(t);
        let _ = kept;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 4 {
            let n = sock
                .read(&mut buf)
                .expect("server read after the table went");
            assert!(n > 0, "eof");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got, b"1234");
    });
}

/// An IPv6 packet of `len` bytes from the client to the server with no next header (RFC 8200
/// §4.7): nothing on the way looks inside it.
fn no_next_header(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 59;
    p[7] = 64;
    p[8..24].copy_from_slice(&CLIENT.parse::<Ipv6Addr>().expect("a").octets());
    p[24..40].copy_from_slice(&SERVER.parse::<Ipv6Addr>().expect("a").octets());
    p
}

/// A packet the outgoing device refuses (here the veth peer's MTU is smaller than the packet,
/// the same `NET_XMIT_DROP` as a full ring) stops `inject_until_full`, which says how many
/// left before it; `inject` goes on, the refused packet dropped without a word.
#[test]
fn inject_until_full_stops_where_the_device_refuses() {
    if !require_root("inject_until_full_stops_where_the_device_refuses") {
        return;
    }
    let (c, s) = pair("hf");
    s.ip(&["link", "set", "eth0", "mtu", "1280"])
        .expect("peer mtu");
    let out = s
        .exec(&["cat", "/sys/class/net/eth0/address"])
        .expect("peer mac");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(h, 16).expect("mac");
    }
    // Resolved beforehand: an unresolved neighbour queues packets and drops them later,
    // where no sender hears of it.
    ds_testbed::topo::neighbour(&c, "eth0", SERVER, mac).expect("neighbour");
    let small = no_next_header(100);
    let packets = [small.clone(), small.clone(), no_next_header(1400), small];
    c.run(|| {
        assert_eq!(
            ds_kernel::inject_until_full(&packets).expect("inject_until_full"),
            2,
            "stops at the packet the device refused"
        );
        assert_eq!(
            inject(&packets).expect("inject"),
            packets.len(),
            "inject goes on"
        );
    });
}
