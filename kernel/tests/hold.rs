//! The packet hold and injection on their own, inside a namespace: a connection over `lo`
//! whose client data is held (not delivered, not dropped for good), then injected and read by
//! the server; and netfilter queue numbers being per namespace.

use ds_kernel::{inject, Hold};
use ds_testbed::{require_root, Netns};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V6(v) => v,
        SocketAddr::V4(_) => panic!("IPv6 expected"),
    }
}

#[test]
fn queues_are_per_namespace() {
    if !require_root("queues_are_per_namespace") {
        return;
    }
    let a = Netns::new("qa").expect("ns");
    let b = Netns::new("qb").expect("ns");
    let bind = |ns: &Netns| {
        ns.run(|| {
            let mut q = nfq::Queue::open().expect("open queue");
            q.bind(4242).map(|()| q)
        })
    };
    let qa = bind(&a).expect("queue 4242 in the first namespace");
    let qb = bind(&b).expect("the same number in a second namespace");
    let again = bind(&a);
    assert_eq!(
        again.err().and_then(|e| e.raw_os_error()),
        Some(libc::EPERM),
        "a number is taken once per namespace (nfqnl_recv_config: another portid → EPERM)"
    );
    drop((qa, qb));
}

#[test]
fn hold_then_inject_over_loopback() {
    if !require_root("hold_then_inject_over_loopback") {
        return;
    }
    let ns = Netns::new("hold").expect("ns");
    ns.run(|| {
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("listen");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut s, _) = l.accept().expect("accept");
        let local = v6(s.local_addr().expect("local"));
        let remote = v6(s.peer_addr().expect("peer"));
        let hold = Hold::start(local, remote).expect("hold");
        let rules = ns.exec(&["ip6tables", "-t", "raw", "-S"]).expect("list");
        assert!(String::from_utf8_lossy(&rules.stdout).contains("NFQUEUE"));

        c.write_all(b"held, not lost").expect("client write");
        let t = Instant::now();
        while hold.total() == 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "nothing held");
            std::thread::sleep(Duration::from_millis(1));
        }
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        assert_eq!(
            s.read(&mut buf).map_err(|e| e.kind()).err(),
            Some(ErrorKind::WouldBlock),
            "the server socket must not see held data"
        );
        let pkts = hold.take().expect("take");
        assert!(!pkts.is_empty());
        assert!(pkts.iter().all(|p| p[0] >> 4 == 6 && p[6] == 6), "IPv6/TCP");
        let rest = hold.stop().expect("stop");
        let rules = ns.exec(&["ip6tables", "-t", "raw", "-S"]).expect("list");
        assert!(
            !String::from_utf8_lossy(&rules.stdout).contains("NFQUEUE"),
            "rule removed"
        );
        let all: Vec<Vec<u8>> = pkts.into_iter().chain(rest).collect();
        assert_eq!(inject(&all).expect("inject"), all.len());
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let n = s.read(&mut buf).expect("server read after inject");
        assert_eq!(&buf[..n], b"held, not lost");
        println!(
            "held and injected {} packet(s) in {:?}",
            all.len(),
            t.elapsed()
        );
    });
}

#[test]
fn hold_dropped_removes_rule() {
    if !require_root("hold_dropped_removes_rule") {
        return;
    }
    let ns = Netns::new("holdd").expect("ns");
    let hold = ns
        .run(|| {
            Hold::start(
                "[fd00::1]:80".parse().expect("addr"),
                "[fd00::2]:1234".parse().expect("addr"),
            )
        })
        .expect("hold");
    // Dropped on another thread than the one in the namespace: the rule still goes.
    drop(hold);
    let rules = ns.exec(&["ip6tables", "-t", "raw", "-S"]).expect("list");
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("NFQUEUE"));
}
