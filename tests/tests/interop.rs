//! Interop of the userspace stack (over TAP) with the Linux kernel's TCP as the peer, in
//! network namespaces: 64 MiB transfers in both directions, verified by SHA-256, with random
//! loss injected by nftables and with receive windows small enough to force zero-window probes.
//! The scenarios live in `ds_testbed::interop`; `xdp/tests/afxdp_interop.rs` runs them over
//! AF_XDP.

use ds_testbed::interop::{
    ip, kernel_to_us_body, us_to_kernel_body, Receiver, FAST, MAC, OURS, PEER, STALLING,
};
use ds_testbed::{require_root, Direction, KernelPeer, Loss};

fn kernel_to_us(name: &str, loss: f64, recv: Receiver) {
    if !require_root(name) {
        return;
    }
    let mut peer = KernelPeer::new("kp", ip(PEER)).expect("peer");
    let host = peer.attach_host("sh").expect("host");
    let _loss = (loss > 0.0)
        .then(|| Loss::install(&host.ns, &host.uplink, loss, Direction::Both).expect("loss"));
    let rt = host
        .stack(MAC, ip(OURS), |c| {
            if let Some(b) = recv.rcvbuf {
                c.tcp.recv_buf = b;
            }
        })
        .expect("stack");
    kernel_to_us_body(name, loss, recv, &peer.ns, rt);
}

fn us_to_kernel(name: &str, loss: f64, recv: Receiver) {
    if !require_root(name) {
        return;
    }
    let mut peer = KernelPeer::new("kp", ip(PEER)).expect("peer");
    let host = peer.attach_host("sh").expect("host");
    let _loss = (loss > 0.0)
        .then(|| Loss::install(&host.ns, &host.uplink, loss, Direction::Both).expect("loss"));
    let rt = host.stack(MAC, ip(OURS), |_| {}).expect("stack");
    us_to_kernel_body(name, loss, recv, &peer.ns, rt);
}

#[test]
fn kernel_client_to_our_server_clean() {
    kernel_to_us("kernel_client_to_our_server_clean", 0.0, FAST);
}

#[test]
fn kernel_client_to_our_server_1pct_loss() {
    kernel_to_us("kernel_client_to_our_server_1pct_loss", 1.0, FAST);
}

#[test]
fn kernel_client_to_our_server_5pct_loss() {
    kernel_to_us("kernel_client_to_our_server_5pct_loss", 5.0, FAST);
}

#[test]
fn kernel_client_to_our_server_zero_window() {
    kernel_to_us("kernel_client_to_our_server_zero_window", 0.0, STALLING);
}

#[test]
fn our_client_to_kernel_server_clean() {
    us_to_kernel("our_client_to_kernel_server_clean", 0.0, FAST);
}

#[test]
fn our_client_to_kernel_server_1pct_loss() {
    us_to_kernel("our_client_to_kernel_server_1pct_loss", 1.0, FAST);
}

#[test]
fn our_client_to_kernel_server_5pct_loss() {
    us_to_kernel("our_client_to_kernel_server_5pct_loss", 5.0, FAST);
}

#[test]
fn our_client_to_kernel_server_zero_window() {
    us_to_kernel("our_client_to_kernel_server_zero_window", 0.0, STALLING);
}
