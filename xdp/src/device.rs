//! [`AfXdpDevice`]: a `ds_stack::device::Device` over AF_XDP sockets, with the steering
//! program in front of them.
//!
//! Opening the device loads the steering program (or reuses one an operator attached and
//! pinned with `dsxdp attach`), tells it which addresses are ours, binds one AF_XDP socket per
//! receive queue and puts each in the XSKMAP. Everything the program does not steer to us
//! (other addresses, other protocols) still reaches the kernel, so the host keeps working.
//! Dropping the device empties the XSKMAP slots, removes our addresses and detaches the
//! program if the device attached it.

use crate::gso_tx::GsoSender;
use crate::loader::{self, Mode, Program};
use crate::maps::LocalAddr;
use crate::xsk::{BindMode, XskConfig, XskSocket, XskStats};
use crate::{Error, Kind, LoadOptions};
use ds_stack::device::{Device, Gso};
use ds_stack::time::Duration;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// How to open an [`AfXdpDevice`].
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// Addresses whose packets go to the stack (care-of address, DS address...).
    pub addrs: Vec<Ipv6Addr>,
    /// What the steering program steers for those addresses.
    pub local: LocalAddr,
    /// XDP attachment mode when the device attaches the program itself.
    pub mode: Mode,
    /// Receive queues to bind (one socket each): `0..queues`; 0 means every receive queue
    /// of the interface (ETHTOOL_GCHANNELS).
    pub queues: u32,
    /// Use the program pinned here if there is one (attached by an operator); pin ours here
    /// otherwise. `None`: a private, unpinned program.
    pub pin_dir: Option<PathBuf>,
    /// UMEM and ring sizes.
    pub xsk: XskConfig,
    /// Send TCP super-frames through a packet socket that has the kernel segment them
    /// ([`GsoSender`]); everything else, and all receiving, stays on AF_XDP.
    pub gso: bool,
}

impl AfXdpConfig {
    /// Steer every protocol for `addrs` to the stack, native mode with generic fallback, one
    /// socket per receive queue, private program.
    pub fn new(addrs: Vec<Ipv6Addr>) -> Self {
        AfXdpConfig {
            addrs,
            local: loader::xsk_all(),
            mode: Mode::Auto,
            queues: 0,
            pin_dir: None,
            xsk: XskConfig::default(),
            gso: true,
        }
    }
}

/// The stack's link device over AF_XDP (see the module documentation): one AF_XDP socket per
/// receive queue it serves (every queue, or one: [`AfXdpDevice::open_per_queue`]).
pub struct AfXdpDevice {
    socks: Vec<XskSocket>,
    /// The receive queue of each socket.
    queue_ids: Vec<u32>,
    shared: Arc<Attachment>,
    next: usize,
    mtu: usize,
    gso: Option<GsoSender>,
    gso_dropped: u64,
}

/// The steering program as the devices of one interface share it: the last device dropped
/// detaches it (or, for an operator's program, removes our addresses).
struct Attachment {
    prog: Program,
    attached: Option<Mode>,
    addrs: Vec<Ipv6Addr>,
    /// The BPF link that keeps our program attached (when we attached it): the kernel
    /// detaches the program when the last descriptor of the link closes, so a crashed process
    /// (`kill -9`) leaves nothing attached and a restart attaches afresh.
    _link: Option<std::os::fd::OwnedFd>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.attached.is_some() {
            // The link closes with us and detaches the program.
            if let Err(e) = self.prog.unpin() {
                warn!("unpinning: {e}");
            }
        } else {
            for a in &self.addrs {
                let _ = self.prog.remove_local(*a);
            }
        }
    }
}

impl AfXdpDevice {
    /// Open the device on interface `iface` of the calling thread's network namespace: one
    /// device for every queue in `cfg`.
    pub fn open(iface: &str, cfg: &AfXdpConfig) -> Result<AfXdpDevice, Error> {
        Self::open_devices(iface, cfg, false)?
            .pop()
            .ok_or_else(|| Error::Invalid(format!("{iface} has no receive queue")))
    }

    /// One device per receive queue in `cfg` (in queue order), sharing the steering program:
    /// each for its own thread and stack (shared-nothing; see `ds_stack::runner::siblings`
    /// for the flows that arrive on another queue than their connection's). Each transmits
    /// on its own queue.
    pub fn open_per_queue(iface: &str, cfg: &AfXdpConfig) -> Result<Vec<AfXdpDevice>, Error> {
        Self::open_devices(iface, cfg, true)
    }

    fn open_devices(
        iface: &str,
        cfg: &AfXdpConfig,
        per_queue: bool,
    ) -> Result<Vec<AfXdpDevice>, Error> {
        let ifindex = loader::ifindex(iface)?;
        let pinned = cfg
            .pin_dir
            .as_ref()
            .filter(|d| d.join(Kind::Steer.prog_name()).exists());
        let (prog, attached) = match pinned {
            Some(dir) => {
                let p = Program::open_pinned(Kind::Steer, dir)?;
                let st = loader::query(ifindex)?;
                let id = p.id();
                if st.native_prog_id != Some(id) && st.generic_prog_id != Some(id) {
                    return Err(Error::Invalid(format!(
                        "the steering program pinned in {} is not attached to {iface}",
                        dir.display()
                    )));
                }
                (p, None)
            }
            None => {
                let p = Program::load(
                    Kind::Steer,
                    &LoadOptions {
                        pin_dir: cfg.pin_dir.clone(),
                        flow_capacity: None,
                    },
                )?;
                let (link, mode) = p.attach_link(ifindex, cfg.mode)?;
                (p, Some((mode, link)))
            }
        };
        let (attached, link) = match attached {
            Some((m, l)) => (Some(m), Some(l)),
            None => (None, None),
        };
        let mut shared = Attachment {
            prog,
            attached,
            addrs: Vec::new(),
            _link: link,
        };
        for a in &cfg.addrs {
            shared.prog.add_local(*a, cfg.local)?;
            shared.addrs.push(*a);
        }
        let shared = Arc::new(shared);
        let mut xcfg = cfg.xsk.clone();
        if attached == Some(Mode::Generic) {
            xcfg.zero_copy = false;
        }
        let queues = match cfg.queues {
            0 => loader::rx_queues(iface)?,
            n => n,
        };
        let mut devs = Vec::new();
        let mut dev = None;
        for q in 0..queues {
            let s = XskSocket::open_ifindex(ifindex, q, &xcfg)?;
            shared.prog.set_xsk(q, s.fd())?;
            let d = dev.get_or_insert_with(|| AfXdpDevice {
                socks: Vec::new(),
                queue_ids: Vec::new(),
                shared: shared.clone(),
                next: 0,
                mtu: 1500,
                gso: cfg
                    .gso
                    .then(|| {
                        GsoSender::open(ifindex)
                            .inspect_err(|e| warn!(iface, "no TCP super-frames: {e}"))
                            .ok()
                    })
                    .flatten(),
                gso_dropped: 0,
            });
            d.socks.push(s);
            d.queue_ids.push(q);
            if per_queue {
                devs.extend(dev.take());
            }
        }
        devs.extend(dev);
        info!(
            iface,
            queues,
            devices = devs.len(),
            mode = ?devs.first().and_then(|d| d.socks.first()).map(XskSocket::mode),
            attached = ?attached,
            "AF_XDP device open"
        );
        Ok(devs)
    }

    /// The bind mode of the first socket.
    pub fn bind_mode(&self) -> Option<BindMode> {
        self.socks.first().map(XskSocket::mode)
    }

    /// The XDP mode the device attached the program in (`None`: an operator's program).
    pub fn attach_mode(&self) -> Option<Mode> {
        self.shared.attached
    }

    /// Number of AF_XDP sockets (one per receive queue).
    pub fn queues(&self) -> usize {
        self.socks.len()
    }

    /// The receive queues this device serves.
    pub fn queue_ids(&self) -> &[u32] {
        &self.queue_ids
    }

    /// Per-socket counters.
    pub fn stats(&self) -> Vec<XskStats> {
        self.socks.iter().map(XskSocket::stats).collect()
    }

    /// The steering program.
    pub fn program(&self) -> &Program {
        &self.shared.prog
    }

    /// Whether TCP super-frames go out through a [`GsoSender`].
    pub fn gso(&self) -> bool {
        self.gso.is_some()
    }

    /// Super-frames dropped because the packet socket's buffer was full.
    pub fn gso_dropped(&self) -> u64 {
        self.gso_dropped
    }
}

impl Drop for AfXdpDevice {
    fn drop(&mut self) {
        for q in &self.queue_ids {
            if let Err(e) = self.shared.prog.clear_xsk(*q) {
                warn!("clearing XSKMAP slot {q}: {e}");
            }
        }
    }
}

impl Device for AfXdpDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let n = self.socks.len();
        for i in 0..n {
            let k = (self.next + i) % n;
            if let Some(len) = self.socks[k].recv(buf) {
                self.next = (k + 1) % n;
                return Ok(Some(len));
            }
        }
        Ok(None)
    }

    /// Frames parsed where they lie in the UMEM (no copy), a batch per queue with one update
    /// of each ring's index.
    fn recv_in_place(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&[&[u8]]),
    ) -> io::Result<Option<usize>> {
        let n = self.socks.len();
        let mut seen = 0;
        for i in 0..n {
            if seen >= max {
                break;
            }
            let k = (self.next + i) % n;
            seen += self.socks[k].recv_batch(max - seen, f);
        }
        self.next = (self.next + 1) % n.max(1);
        Ok(Some(seen))
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // A full TX ring is a dropped frame on a real wire; TCP recovers.
        self.socks[0].send(frame).map(|_| ())
    }

    /// Built in a UMEM frame of the same TX ring as [`Device::send`]'s (order kept).
    fn send_in_place(
        &mut self,
        len: usize,
        build: &mut dyn FnMut(&mut [u8]),
    ) -> io::Result<Option<bool>> {
        self.socks[0].send_with(len, build).map(Some)
    }

    fn gso_max(&self) -> usize {
        if self.gso.is_some() {
            usize::from(u16::MAX)
        } else {
            0
        }
    }

    fn send_gso(&mut self, frame: &[u8], gso: Option<Gso>) -> io::Result<()> {
        match (gso, &self.gso) {
            (None, _) => self.send(frame),
            (Some(g), Some(tx)) => {
                // What the AF_XDP ring holds left first: the frames of a flow stay in order.
                self.socks[0].flush()?;
                if !tx.send(frame, Some(g))? {
                    self.gso_dropped += 1;
                }
                Ok(())
            }
            (Some(_), None) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TCP super-frames are off on this device",
            )),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // ppoll: microsecond timeouts, not poll(2)'s milliseconds.
        let fds: Vec<_> = self.socks.iter().map(|s| s.fd().as_raw_fd()).collect();
        ds_stack::device::wait_readable(&fds, timeout)
    }

    fn wait_fds(&self, set: &mut ds_stack::device::PollSet) {
        for s in &self.socks {
            set.add(s.fd().as_raw_fd());
        }
    }
    fn stats(&self) -> ds_stack::device::DeviceStats {
        let mut d = ds_stack::device::DeviceStats {
            tx_gso_dropped: self.gso_dropped,
            ..Default::default()
        };
        for s in self.socks.iter().map(XskSocket::stats) {
            d.rx_ring_full += s.kernel_rx_ring_full;
            d.rx_dropped += s.kernel_rx_dropped;
            d.rx_fill_empty += s.kernel_fill_empty;
            d.tx_dropped += s.tx_dropped;
        }
        d
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn flush(&mut self) -> io::Result<()> {
        for s in &mut self.socks {
            s.flush()?;
        }
        Ok(())
    }
}
