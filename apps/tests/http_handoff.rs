//! Handoff of an HTTP connection in the middle of a response, on the userspace stack with a
//! client over an in-memory cable: the server's per-connection quota pauses the download at
//! an exact byte count, the connection's HTTP state is detached while its TCP state is frozen,
//! and both come back (as after a failed handoff) to finish the download byte-exact.

mod common;

use common::MemNet;
use ds_apps::http::HttpConnState;
use ds_stack::{ConnState, TcpHandle};
use ds_testbed::{PatternStream, TempDir};

const QUOTA: u64 = 500_000;

/// The quota's pauses on top of the shared in-memory bed.
trait Pauses {
    /// Run until a connection reaches the quota or the client sees the end of the stream.
    fn until_ready_or_eof(&mut self) -> Vec<TcpHandle>;

    /// Run a while so that everything already handed to TCP reaches the client.
    fn settle(&mut self);
}

impl Pauses for MemNet {
    fn until_ready_or_eof(&mut self) -> Vec<TcpHandle> {
        let mut ready = Vec::new();
        let done = self.run_until(std::time::Duration::from_secs(30), |net| {
            ready = net.server.take_handoff_ready();
            !ready.is_empty() || net.eof
        });
        assert!(done, "stuck after {} bytes", self.got.len());
        ready
    }

    fn settle(&mut self) {
        self.run_until(std::time::Duration::from_millis(300), |_| false);
    }
}

#[derive(Clone, Copy, Debug)]
enum Back {
    /// Detach, freeze, thaw and adopt on the same node.
    DetachAdopt,
    /// Just resume.
    Resume,
}

fn download_with_pauses(back: Back) {
    let root = TempDir::new(&format!("apps-handoff-{back:?}")).expect("temp dir");
    let data = PatternStream::bytes(0x2545_f491_4f6c_dd1d, 1 << 20);
    std::fs::write(root.path().join("big"), &data).expect("write");

    let mut net = MemNet::new(root.path());
    net.server.set_handoff_quota(Some(QUOTA));
    let request = b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut sent = 0;
    while sent < request.len() {
        net.round();
        net.send(request, &mut sent);
    }

    let mut pauses = 0u64;
    loop {
        let ready = net.until_ready_or_eof();
        if net.eof {
            break;
        }
        assert_eq!(ready.len(), 1, "one connection");
        let h = ready[0];
        pauses += 1;
        // Paused: exactly the quota went out, and nothing more follows.
        net.settle();
        assert_eq!(net.got.len() as u64, pauses * QUOTA, "pause {pauses}");
        assert!(net.server.take_handoff_ready().is_empty(), "reported once");
        assert_eq!(net.server.stats().http.bytes_sent, pauses * QUOTA);
        match back {
            Back::Resume => assert!(net.server.resume(h)),
            Back::DetachAdopt => {
                let st = net.server.detach(h).expect("known handle").expect("export");
                assert!(net.server.detach(h).is_none(), "gone after detach");
                let now = net.srv.now();
                let tcp = net.srv.iface.tcp_freeze(now, h).expect("freeze");
                // Both states travel as bytes.
                let tcp = ConnState::decode(&tcp.encode()).expect("tcp state");
                let st = HttpConnState::decode(&st.encode()).expect("http state");
                let now = net.srv.now();
                let h2 = net.srv.iface.tcp_thaw(now, &tcp).expect("thaw");
                net.server.adopt(h2, st, now).expect("adopt");
            }
        }
    }

    // 1 MiB plus a head: two pauses of QUOTA bytes, then the rest.
    assert_eq!(pauses, 2);
    let head_end = net.body_start();
    let head = String::from_utf8_lossy(&net.got[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}\r\n", data.len())));
    assert_eq!(net.got.len(), head_end + data.len());
    assert!(net.got[head_end..] == data[..], "body differs");

    net.close_and_settle();
    assert_eq!(net.server.connections(), 0);
    let stats = net.server.stats();
    assert_eq!(stats.http.bytes_sent, net.got.len() as u64, "{stats:?}");
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closed, 1, "{stats:?}");
    match back {
        Back::Resume => assert_eq!((stats.handed_off, stats.adopted), (0, 0)),
        Back::DetachAdopt => {
            assert_eq!((stats.handed_off, stats.adopted), (2, 2));
            // Requests are counted where they were answered: once, on the first node.
            assert_eq!(stats.http.requests, 1);
        }
    }
}

#[test]
fn quota_pauses_exactly_and_detach_adopt_completes_the_download() {
    download_with_pauses(Back::DetachAdopt);
}

#[test]
fn quota_pauses_exactly_and_resume_completes_the_download() {
    download_with_pauses(Back::Resume);
}
