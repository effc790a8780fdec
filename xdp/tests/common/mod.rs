//! What the AF_XDP tests and benchmarks share (`xdp/benches` includes it by path).

use ds_stack::runner::Runner;
use ds_stack::{Config, Interface};
use ds_testbed::interop::{ip, MAC, OURS};
use ds_testbed::XdpHost;
use ds_xdp::device::{AfXdpConfig, AfXdpDevice};
use ds_xdp::Mode;

/// A runner for our address (`interop::OURS`) over AF_XDP on the host's veth, opened inside
/// its namespace with the XDP program in `mode`; `tune` adjusts the stack's settings. The
/// address is announced.
pub fn afxdp_runner(
    h: &XdpHost,
    mode: Mode,
    tune: impl FnOnce(&mut Config),
) -> Runner<AfXdpDevice> {
    let ifname = h.host_if.clone();
    let mut dev_cfg = AfXdpConfig::new(vec![ip(OURS)]);
    dev_cfg.mode = mode;
    let dev = h
        .host
        .try_run(move || AfXdpDevice::open(&ifname, &dev_cfg))
        .expect("enter host namespace")
        .expect("AF_XDP device");
    let mut cfg = Config::new(MAC, vec![ip(OURS)]);
    tune(&mut cfg);
    let mut rt = Runner::new(dev, Interface::new(cfg, ds_stack::Instant::ZERO));
    let now = rt.now();
    rt.iface.announce(now);
    rt
}
