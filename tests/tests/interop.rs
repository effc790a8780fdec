//! Interop of the userspace stack (over TAP) with the Linux kernel's TCP as the peer, in
//! network namespaces: 64 MiB transfers in both directions, verified by SHA-256, with random
//! loss injected by nftables and with receive windows small enough to force zero-window probes.
//! The scenarios live in `ds_testbed::interop`; `xdp/tests/afxdp_interop.rs` runs them over
//! AF_XDP.

use ds_testbed::interop::{ip, Case, MAC, OURS, PEER};
use ds_testbed::{require_root, KernelPeer};

/// One case over TAP: our stack on a host bridged to the kernel peer.
fn run(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let mut peer = KernelPeer::new("kp", ip(PEER)).expect("peer");
    let host = peer.attach_host("sh").expect("host");
    let _loss = case.install_loss(&host.ns, &host.uplink);
    let rt = host
        .stack(MAC, ip(OURS), |c| {
            if let Some(b) = case.our_receiver().rcvbuf {
                c.tcp.recv_buf = b;
            }
        })
        .expect("stack");
    case.run(name, &peer.ns, rt);
}

ds_testbed::interop_tests!(run);
