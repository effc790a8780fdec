//! The kernel-TCP interop transfers of `tests/tests/interop.rs` (the scenarios of
//! `ds_testbed::interop`) over AF_XDP: a veth in a namespace, our steering program attached in
//! native mode, the socket bound in copy mode on veth. 64 MiB in both directions, verified by
//! SHA-256, with random loss injected by nftables on the kernel side of the link, and with
//! receive windows small enough to force zero-window probes; plus generic-mode XDP with a
//! clean-teardown check, and one socket per receive queue.

mod common;

use ds_stack::runner::Runner;
use ds_stack::{Config, Interface};
use ds_testbed::interop::{ip, Case, Flow, Receiver, FAST, MAC, OURS, PEER};
use ds_testbed::{require_root, Netns, XdpHost};

/// A clean transfer from a kernel client.
const GENERIC: Case = Case {
    flow: Flow::KernelToUs,
    loss: 0.0,
    recv: FAST,
};
use ds_xdp::device::{AfXdpConfig, AfXdpDevice};
use ds_xdp::Mode;

/// One case over AF_XDP: our stack on a veth to the kernel peer.
fn run(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let t = XdpHost::new("ax", ip(PEER)).expect("topology");
    let _loss = case.install_loss(&t.peer, &t.peer_if);
    let rt = afxdp_stack(&t, case.our_receiver());
    case.run(name, &t.peer, rt);
}

/// The interop cases, over AF_XDP.
mod afxdp {
    ds_testbed::interop_tests!(super::run);
}

/// A runner for our address over AF_XDP on the host's veth (opened inside its namespace).
fn afxdp_stack(t: &XdpHost, recv: Receiver) -> Runner<AfXdpDevice> {
    afxdp_stack_mode(t, recv, Mode::Auto)
}

fn afxdp_stack_mode(t: &XdpHost, recv: Receiver, mode: Mode) -> Runner<AfXdpDevice> {
    let rt = common::afxdp_runner(t, mode, |cfg| {
        if let Some(b) = recv.rcvbuf {
            cfg.tcp.recv_buf = b;
        }
    });
    eprintln!(
        "AF_XDP: XDP {:?}, socket {:?}",
        rt.dev.attach_mode(),
        rt.dev.bind_mode()
    );
    rt
}

/// Generic (skb) XDP instead of native: the fallback for drivers without XDP support.
#[test]
fn afxdp_generic_mode_kernel_client_to_our_server() {
    let name = "afxdp_generic_mode_kernel_client_to_our_server";
    if !require_root(name) {
        return;
    }
    let t = XdpHost::new("ag", ip(PEER)).expect("topology");
    let rt = afxdp_stack_mode(&t, FAST, Mode::Generic);
    assert_eq!(rt.dev.attach_mode(), Some(Mode::Generic));
    assert_eq!(rt.dev.bind_mode(), Some(ds_xdp::xsk::BindMode::Copy));
    GENERIC.run(name, &t.peer, rt);
    // Clean teardown: the device detached the program it attached.
    let st = t
        .host
        .run(|| ds_xdp::loader::ifindex("x0").and_then(ds_xdp::loader::query))
        .expect("query");
    assert!(st.native_prog_id.is_none() && st.generic_prog_id.is_none());
}

/// One AF_XDP socket per receive queue: a veth with four queues gets four sockets, and the
/// transfer arrives whichever queue the kernel picks.
#[test]
fn afxdp_one_socket_per_queue() {
    let name = "afxdp_one_socket_per_queue";
    if !require_root(name) {
        return;
    }
    let peer = Netns::new("mqp").expect("ns");
    let host = Netns::new("mqh").expect("ns");
    ds_testbed::bridge(&peer, "br0", &[]).expect("bridge");
    ds_testbed::add_addr(&peer, "br0", &format!("{PEER}/64")).expect("addr");
    peer.ip(&[
        "link",
        "add",
        "p0",
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "type",
        "veth",
        "peer",
        "name",
        "x0",
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "netns",
        host.name(),
    ])
    .expect("4-queue veth");
    ds_testbed::set_up(&peer, "p0").expect("up");
    ds_testbed::set_up(&host, "x0").expect("up");
    ds_testbed::disable_offload(&peer, "p0").expect("offload");
    ds_testbed::disable_offload(&host, "x0").expect("offload");
    peer.ip(&["link", "set", "p0", "master", "br0"])
        .expect("enslave");
    ds_testbed::disable_offload(&peer, "br0").expect("offload");
    let dev = host
        .try_run(|| AfXdpDevice::open("x0", &AfXdpConfig::new(vec![ip(OURS)])))
        .expect("enter")
        .expect("AF_XDP device");
    assert_eq!(dev.queues(), 4);
    let mut rt = Runner::new(
        dev,
        Interface::new(Config::new(MAC, vec![ip(OURS)]), ds_stack::Instant::ZERO),
    );
    let now = rt.now();
    rt.iface.announce(now);
    GENERIC.run(name, &peer, rt);
}
