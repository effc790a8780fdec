//! Loading the BPF programs (libbpf-rs skeletons), pinning their maps in bpffs, attaching them
//! to interfaces (native or generic XDP, through netlink like `xdp-loader`), and running them
//! on crafted packets with `BPF_PROG_TEST_RUN`.

use crate::maps::{
    Action, FlowKey, FlowVal, LocalAddr, TunnelConfig, FLOW_KEY_LEN, STEER_COUNTERS,
    TUNNEL_CFG_LEN, TUNNEL_COUNTERS,
};
use crate::skel::{steer::SteerSkelBuilder, tunnel::TunnelSkelBuilder};
use crate::Error;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ProgramHandle};
use serde::Serialize;
use std::ffi::CString;
use std::mem::MaybeUninit;
use std::net::Ipv6Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Root of this project's pins: `/sys/fs/bpf/ds/<iface>/<map>`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/ds";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The two programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Server-node steering (`ds_steer`): configured addresses to AF_XDP, decapsulation.
    Steer,
    /// Home-agent tunnel (`ds_tunnel`): flows and bindings, IPv6-in-IPv6 encapsulation.
    Tunnel,
}

impl Kind {
    /// The BPF program's name.
    pub fn prog_name(self) -> &'static str {
        match self {
            Kind::Steer => "ds_steer",
            Kind::Tunnel => "ds_tunnel",
        }
    }

    /// Names of its maps.
    pub fn map_names(self) -> &'static [&'static str] {
        match self {
            Kind::Steer => &[
                "xsks_map",
                "local_addrs",
                "steer_stats",
                "held_flows",
                "hold_ring",
                "hold_scratch",
            ],
            Kind::Tunnel => &[
                "flows",
                "moved_flows",
                "bindings",
                "config",
                "tunnel_stats",
                "ptb_last",
            ],
        }
    }

    /// Names of its counters, in index order.
    pub fn counter_names(self) -> &'static [&'static str] {
        match self {
            Kind::Steer => STEER_COUNTERS,
            Kind::Tunnel => TUNNEL_COUNTERS,
        }
    }

    fn stats_map(self) -> &'static str {
        match self {
            Kind::Steer => "steer_stats",
            Kind::Tunnel => "tunnel_stats",
        }
    }
}

/// XDP attachment mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode, falling back to generic if the driver refuses.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

/// Make sure bpffs is mounted on [`BPFFS`] (mount it if not).
pub fn ensure_bpffs() -> Result<(), Error> {
    let path = CString::new(BPFFS).map_err(|_| Error::Invalid("bpffs path".into()))?;
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is a valid C string and `st` points to writable memory of statfs size.
    let rc = unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc == 0 {
        // SAFETY: statfs succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        // `f_type`'s width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let fs = st.f_type as i64;
        if fs == BPF_FS_MAGIC {
            return Ok(());
        }
    }
    let fstype = CString::new("bpf").map_err(|_| Error::Invalid("fstype".into()))?;
    // SAFETY: all pointers are valid C strings for the call; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Os("mount bpffs", std::io::Error::last_os_error()));
    }
    info!("mounted bpffs on {BPFFS}");
    Ok(())
}

/// Default pin directory for an interface: `/sys/fs/bpf/ds/<iface>`.
pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

/// Interface index of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = CString::new(name).map_err(|_| Error::Invalid(format!("interface {name:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::NoInterface(name.to_string()));
    }
    Ok(idx)
}

/// Number of receive queues of `name` (ETHTOOL_GCHANNELS: the larger of the RX-only and
/// combined channel counts; 1 when the driver does not say).
pub fn rx_queues(name: &str) -> Result<u32, Error> {
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut Channels,
        _pad: [u8; 16],
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(Error::Invalid(format!("interface {name:?}")));
    }
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut ch,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain socket(2); closed below.
    let sock = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(Error::Os("socket", std::io::Error::last_os_error()));
    }
    // SAFETY: SIOCETHTOOL reads a struct ifreq whose union holds a pointer to the ethtool
    // command; `req` has that layout (40 bytes) and `ch` outlives the call.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCETHTOOL, &mut req as *mut IfReq) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `sock` is ours and closed once.
    unsafe { libc::close(sock) };
    if rc < 0 {
        debug!("ETHTOOL_GCHANNELS on {name}: {err}; assuming one queue");
        return Ok(1);
    }
    Ok(ch.rx_count.max(ch.combined_count).max(1))
}

/// Options for [`Program::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Pin the maps (and the program) in this directory. Existing compatible pinned maps are
    /// reused, so a reloaded program keeps its flows and bindings.
    pub pin_dir: Option<PathBuf>,
    /// Capacity of the tunnel program's LRU flow table (default 65536).
    pub flow_capacity: Option<u32>,
}

/// A loaded program and its maps, held by file descriptors (the libbpf object is gone once
/// loading is done; the kernel objects live while a descriptor, a pin or an attachment does).
pub struct Program {
    kind: Kind,
    prog: ProgramHandle,
    maps: Vec<(&'static str, MapHandle)>,
    pin_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("kind", &self.kind)
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

fn handle_of(m: &libbpf_rs::MapMut<'_>) -> Result<MapHandle, Error> {
    MapHandle::try_from(m).map_err(Error::bpf("duplicate map fd"))
}

impl Program {
    /// Open, load (verify) and optionally pin a program.
    pub fn load(kind: Kind, opts: &LoadOptions) -> Result<Program, Error> {
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs()?;
            std::fs::create_dir_all(dir).map_err(|e| Error::Os("create pin directory", e))?;
        }
        let pin = |name: &str| opts.pin_dir.as_ref().map(|d| d.join(name));
        let (prog, maps) = match kind {
            Kind::Steer => {
                let mut obj = MaybeUninit::uninit();
                let mut open = SteerSkelBuilder::default()
                    .open(&mut obj)
                    .map_err(Error::bpf("open steer object"))?;
                for m in [
                    &mut open.maps.xsks_map,
                    &mut open.maps.local_addrs,
                    &mut open.maps.steer_stats,
                    &mut open.maps.held_flows,
                    &mut open.maps.hold_ring,
                    &mut open.maps.hold_scratch,
                ] {
                    if let Some(p) = m.name().to_str().and_then(pin) {
                        m.set_pin_path(p).map_err(Error::bpf("set pin path"))?;
                    }
                }
                let skel = open.load().map_err(Error::bpf("load steer program"))?;
                let prog = ProgramHandle::try_from(&skel.progs.ds_steer)
                    .map_err(Error::bpf("duplicate program fd"))?;
                let maps = vec![
                    ("xsks_map", handle_of(&skel.maps.xsks_map)?),
                    ("local_addrs", handle_of(&skel.maps.local_addrs)?),
                    ("steer_stats", handle_of(&skel.maps.steer_stats)?),
                    ("held_flows", handle_of(&skel.maps.held_flows)?),
                    ("hold_ring", handle_of(&skel.maps.hold_ring)?),
                    ("hold_scratch", handle_of(&skel.maps.hold_scratch)?),
                ];
                (prog, maps)
            }
            Kind::Tunnel => {
                let mut obj = MaybeUninit::uninit();
                let mut open = TunnelSkelBuilder::default()
                    .open(&mut obj)
                    .map_err(Error::bpf("open tunnel object"))?;
                if let Some(n) = opts.flow_capacity {
                    open.maps
                        .flows
                        .set_max_entries(n.max(1))
                        .map_err(Error::bpf("set flow capacity"))?;
                }
                for m in [
                    &mut open.maps.flows,
                    &mut open.maps.moved_flows,
                    &mut open.maps.bindings,
                    &mut open.maps.config,
                    &mut open.maps.tunnel_stats,
                    &mut open.maps.ptb_last,
                ] {
                    if let Some(p) = m.name().to_str().and_then(pin) {
                        m.set_pin_path(p).map_err(Error::bpf("set pin path"))?;
                    }
                }
                let skel = open.load().map_err(Error::bpf("load tunnel program"))?;
                let prog = ProgramHandle::try_from(&skel.progs.ds_tunnel)
                    .map_err(Error::bpf("duplicate program fd"))?;
                let maps = vec![
                    ("flows", handle_of(&skel.maps.flows)?),
                    ("moved_flows", handle_of(&skel.maps.moved_flows)?),
                    ("bindings", handle_of(&skel.maps.bindings)?),
                    ("config", handle_of(&skel.maps.config)?),
                    ("tunnel_stats", handle_of(&skel.maps.tunnel_stats)?),
                    ("ptb_last", handle_of(&skel.maps.ptb_last)?),
                ];
                (prog, maps)
            }
        };
        if let Some(dir) = &opts.pin_dir {
            let p = dir.join(kind.prog_name());
            let _ = std::fs::remove_file(&p);
            prog.pin(&p).map_err(Error::bpf("pin program"))?;
        }
        debug!(?kind, pin_dir = ?opts.pin_dir, "loaded");
        Ok(Program {
            kind,
            prog,
            maps,
            pin_dir: opts.pin_dir.clone(),
        })
    }

    /// Open a program and its maps pinned by an earlier [`Program::load`] in `dir`.
    pub fn open_pinned(kind: Kind, dir: &Path) -> Result<Program, Error> {
        let prog = ProgramHandle::from_pinned_path(dir.join(kind.prog_name()))
            .map_err(Error::bpf("open pinned program"))?;
        let mut maps = Vec::new();
        for name in kind.map_names() {
            let m = MapHandle::from_pinned_path(dir.join(name))
                .map_err(Error::bpf("open pinned map"))?;
            maps.push((*name, m));
        }
        Ok(Program {
            kind,
            prog,
            maps,
            pin_dir: Some(dir.to_path_buf()),
        })
    }

    /// Which program this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The kernel's id of the program.
    pub fn id(&self) -> u32 {
        self.prog.id()
    }

    /// The program's file descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// A map by name.
    pub fn map(&self, name: &str) -> Result<&MapHandle, Error> {
        self.maps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or_else(|| Error::Invalid(format!("no map {name} in {:?}", self.kind)))
    }

    /// Attach to interface `ifindex`; returns the mode actually used.
    pub fn attach(&self, ifindex: u32, mode: Mode, replace: bool) -> Result<Mode, Error> {
        let idx = i32::try_from(ifindex).map_err(|_| Error::Invalid("ifindex".into()))?;
        let base = if replace {
            0
        } else {
            libbpf_rs::libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST
        };
        let try_mode = |flags: u32| -> Result<(), Error> {
            // SAFETY: plain netlink request with a valid program fd borrowed for the call; a
            // null opts pointer is allowed by libbpf.
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_xdp_attach(
                    idx,
                    self.prog.as_fd().as_raw_fd(),
                    base | flags,
                    std::ptr::null(),
                )
            };
            if rc < 0 {
                Err(Error::Os(
                    "attach XDP program",
                    std::io::Error::from_raw_os_error(-rc),
                ))
            } else {
                Ok(())
            }
        };
        let drv = libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE;
        let skb = libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE;
        let used = match mode {
            Mode::Native => try_mode(drv).map(|_| Mode::Native)?,
            Mode::Generic => try_mode(skb).map(|_| Mode::Generic)?,
            Mode::Auto => match try_mode(drv) {
                Ok(()) => Mode::Native,
                Err(e) => {
                    info!("native XDP refused ({e}); falling back to generic mode");
                    try_mode(skb).map(|_| Mode::Generic)?
                }
            },
        };
        info!(kind = ?self.kind, ifindex, mode = ?used, "attached");
        Ok(used)
    }

    /// Attach to interface `ifindex` through a BPF link (`BPF_LINK_CREATE`, attach type
    /// `BPF_XDP`): the program stays attached while the returned descriptor is open and goes
    /// when it closes, whatever namespace the closing thread is in. Fails if a program is
    /// attached already. Returns the mode actually used.
    pub fn attach_link(
        &self,
        ifindex: u32,
        mode: Mode,
    ) -> Result<(std::os::fd::OwnedFd, Mode), Error> {
        use std::os::fd::FromRawFd;
        let idx = i32::try_from(ifindex).map_err(|_| Error::Invalid("ifindex".into()))?;
        let try_mode = |flags: u32| -> Result<std::os::fd::OwnedFd, Error> {
            let opts = libbpf_rs::libbpf_sys::bpf_link_create_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_link_create_opts>() as _,
                flags,
                ..Default::default()
            };
            // SAFETY: plain bpf(2) request with a valid program fd borrowed for the call and
            // a correctly sized options struct alive across it.
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_link_create(
                    self.prog.as_fd().as_raw_fd(),
                    idx,
                    libbpf_rs::libbpf_sys::BPF_XDP,
                    &opts,
                )
            };
            if rc < 0 {
                return Err(Error::Os(
                    "attach XDP program (link)",
                    std::io::Error::from_raw_os_error(-rc),
                ));
            }
            // SAFETY: `rc` is a fresh link fd that nothing else owns.
            Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc) })
        };
        let drv = libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE;
        let skb = libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE;
        let (fd, used) = match mode {
            Mode::Native => (try_mode(drv)?, Mode::Native),
            Mode::Generic => (try_mode(skb)?, Mode::Generic),
            Mode::Auto => match try_mode(drv) {
                Ok(fd) => (fd, Mode::Native),
                Err(e) => {
                    info!("native XDP refused ({e}); falling back to generic mode");
                    (try_mode(skb)?, Mode::Generic)
                }
            },
        };
        info!(kind = ?self.kind, ifindex, mode = ?used, "attached (link)");
        Ok((fd, used))
    }

    /// Per-counter totals over all CPUs, in [`Kind::counter_names`] order.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        let map = self.map(self.kind.stats_map())?;
        let mut out = Vec::new();
        for (i, name) in self.kind.counter_names().iter().enumerate() {
            let key = (i as u32).to_ne_bytes();
            let per_cpu = map
                .lookup_percpu(&key, MapFlags::ANY)
                .map_err(Error::bpf("read counters"))?
                .unwrap_or_default();
            let total = per_cpu
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum();
            out.push((*name, total));
        }
        Ok(out)
    }

    /// One counter's total.
    pub fn counter(&self, index: u32) -> Result<u64, Error> {
        let all = self.counters()?;
        Ok(all.get(index as usize).map(|c| c.1).unwrap_or(0))
    }

    /// Run the program once on `frame` with `BPF_PROG_TEST_RUN`; returns the XDP verdict and
    /// the frame as the program left it.
    pub fn test_run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), Error> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = libbpf_rs::libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: u32::try_from(frame.len())
                .map_err(|_| Error::Invalid("frame too large".into()))?,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: `opts` points to `frame` (read) and `out` (written, at most data_size_out
        // bytes), both alive across the call; the fd is a valid program fd.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(self.prog.as_fd().as_raw_fd(), &mut opts)
        };
        if rc < 0 {
            return Err(Error::Os(
                "BPF_PROG_TEST_RUN",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        out.truncate(opts.data_size_out as usize);
        Ok((opts.retval, out))
    }

    /// Run the program `repeat` times on `frame` in the kernel; returns the mean time per run
    /// in nanoseconds (the kernel's own measurement).
    pub fn bench_run(&self, frame: &[u8], repeat: u32) -> Result<u32, Error> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = libbpf_rs::libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: frame.len() as u32,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as u32,
            repeat: i32::try_from(repeat).unwrap_or(i32::MAX),
            ..Default::default()
        };
        // SAFETY: as in `test_run`.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(self.prog.as_fd().as_raw_fd(), &mut opts)
        };
        if rc < 0 {
            return Err(Error::Os(
                "BPF_PROG_TEST_RUN",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        Ok(opts.duration)
    }

    /// Run the program `repeat` times on fresh copies of `frame` as if received on
    /// `ifindex` (`BPF_F_TEST_XDP_LIVE_FRAMES`: the verdicts are carried out, so `XDP_TX`
    /// really transmits on that interface). Returns the wall-clock time of the whole run, on
    /// the calling thread's CPU.
    pub fn run_live(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<std::time::Duration, Error> {
        let len = u32::try_from(frame.len()).map_err(|_| Error::Invalid("frame".into()))?;
        let mut ctx = libbpf_rs::libbpf_sys::xdp_md {
            data: 0,
            data_end: len,
            data_meta: 0,
            ingress_ifindex: ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut opts = libbpf_rs::libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: len,
            ctx_in: (&mut ctx as *mut libbpf_rs::libbpf_sys::xdp_md).cast(),
            ctx_size_in: std::mem::size_of::<libbpf_rs::libbpf_sys::xdp_md>() as u32,
            repeat: i32::try_from(repeat).unwrap_or(i32::MAX),
            flags: libbpf_rs::libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
            ..Default::default()
        };
        let start = std::time::Instant::now();
        // SAFETY: `opts` points to `frame` and `ctx`, both alive across the call; no output
        // buffers (live mode forbids them); the fd is a valid program fd.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(self.prog.as_fd().as_raw_fd(), &mut opts)
        };
        let took = start.elapsed();
        if rc < 0 {
            return Err(Error::Os(
                "BPF_PROG_TEST_RUN (live frames)",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        Ok(took)
    }

    /// Remove this program's pins (maps and program). The kernel objects go away once no
    /// descriptor or attachment holds them.
    pub fn unpin(&self) -> Result<(), Error> {
        if let Some(dir) = &self.pin_dir {
            remove_pins(self.kind, dir)?;
        }
        Ok(())
    }

    // ---- steering program maps ----

    /// Steer packets for `addr` (and the protocols in `local.protos`).
    pub fn add_local(&self, addr: Ipv6Addr, local: LocalAddr) -> Result<(), Error> {
        self.map("local_addrs")?
            .update(&addr.octets(), &local.to_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("update local_addrs"))
    }

    /// Stop steering `addr`.
    pub fn remove_local(&self, addr: Ipv6Addr) -> Result<(), Error> {
        self.map("local_addrs")?
            .delete(&addr.octets())
            .map_err(Error::bpf("delete from local_addrs"))
    }

    /// The configured local addresses.
    pub fn locals(&self) -> Result<Vec<(Ipv6Addr, LocalAddr)>, Error> {
        let m = self.map("local_addrs")?;
        let mut out = Vec::new();
        for k in m.keys() {
            let Some(a) = crate::maps::addr_at(&k, 0) else {
                continue;
            };
            if let Some(v) = m
                .lookup(&k, MapFlags::ANY)
                .map_err(Error::bpf("lookup local_addrs"))?
            {
                if let Some(l) = LocalAddr::from_bytes(&v) {
                    out.push((a, l));
                }
            }
        }
        Ok(out)
    }

    /// Put an AF_XDP socket in the XSKMAP slot of receive queue `queue`.
    pub fn set_xsk(&self, queue: u32, fd: BorrowedFd<'_>) -> Result<(), Error> {
        let v = fd.as_raw_fd().to_ne_bytes();
        self.map("xsks_map")?
            .update(&queue.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(Error::bpf("update xsks_map"))
    }

    /// Empty the XSKMAP slot of `queue`.
    pub fn clear_xsk(&self, queue: u32) -> Result<(), Error> {
        match self.map("xsks_map")?.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Bpf("delete from xsks_map", e)),
        }
    }

    /// The steering program's table of held flows (a handle of its own on the map).
    pub fn held_flows(&self) -> Result<crate::hold::HeldFlows, Error> {
        crate::hold::HeldFlows::new(self.map("held_flows")?)
    }

    /// A reader of the steering program's ring buffer of held packets. One per program: two
    /// readers would share (and race on) the ring's consumer position.
    pub fn hold_ring(&self) -> Result<crate::hold::HoldRing, Error> {
        crate::hold::HoldRing::new(self.map("hold_ring")?)
    }

    // ---- tunnel program maps ----

    /// Write the tunnel configuration.
    pub fn set_config(&self, cfg: &TunnelConfig) -> Result<(), Error> {
        self.map("config")?
            .update(&0u32.to_ne_bytes(), &cfg.to_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("update config"))
    }

    /// Read the tunnel configuration.
    pub fn config(&self) -> Result<TunnelConfig, Error> {
        let v = self
            .map("config")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("lookup config"))?
            .unwrap_or_else(|| vec![0; TUNNEL_CFG_LEN]);
        TunnelConfig::from_bytes(&v).ok_or_else(|| Error::Invalid("config value size".into()))
    }

    /// Point a flow at the node with care-of address `owner` (a handoff moved it): it goes
    /// to the table of moved flows, which the program never evicts (spoofed traffic churning
    /// the learned LRU table cannot push it back to the contact node), and leaves the learned
    /// table. Fails when the moved table is full (the handoff is then refused and the
    /// connection stays where it is).
    pub fn set_flow(&self, key: &FlowKey, owner: Ipv6Addr) -> Result<(), Error> {
        let kb = key.to_bytes();
        let moved = self.map("moved_flows")?;
        let before = match moved
            .lookup(&kb, MapFlags::ANY)
            .map_err(Error::bpf("lookup moved flows"))?
        {
            Some(b) => Some(b),
            None => self
                .map("flows")?
                .lookup(&kb, MapFlags::ANY)
                .map_err(Error::bpf("lookup flows"))?,
        };
        let mut v = before
            .and_then(|b| FlowVal::from_bytes(&b))
            .unwrap_or(FlowVal {
                owner,
                packets: 0,
                bytes: 0,
            });
        v.owner = owner;
        moved
            .update(&kb, &v.to_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("update moved flows"))?;
        // The learned entry is shadowed now; it goes, so that it cannot be taken for live.
        let _ = self.remove_from("flows", key)?;
        Ok(())
    }

    fn remove_from(&self, map: &'static str, key: &FlowKey) -> Result<bool, Error> {
        match self.map(map)?.delete(&key.to_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Bpf("delete a flow", e)),
        }
    }

    /// Remove a flow (moved or learned); `Ok(false)` if it was not there.
    pub fn remove_flow(&self, key: &FlowKey) -> Result<bool, Error> {
        let moved = self.remove_from("moved_flows", key)?;
        let learned = self.remove_from("flows", key)?;
        Ok(moved || learned)
    }

    /// One flow's entry (the moved one first, as the program looks).
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowVal>, Error> {
        for map in ["moved_flows", "flows"] {
            let v = self
                .map(map)?
                .lookup(&key.to_bytes(), MapFlags::ANY)
                .map_err(Error::bpf("lookup flows"))?
                .and_then(|b| FlowVal::from_bytes(&b));
            if v.is_some() {
                return Ok(v);
            }
        }
        Ok(None)
    }

    /// Every flow, moved ones first (a snapshot; the LRU may evict concurrently).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowVal)>, Error> {
        let mut out = self.moved_flows()?;
        let moved: std::collections::HashSet<FlowKey> = out.iter().map(|(k, _)| *k).collect();
        out.extend(
            self.entries("flows")?
                .into_iter()
                .filter(|(k, _)| !moved.contains(k)),
        );
        Ok(out)
    }

    /// The flows moved by handoffs.
    pub fn moved_flows(&self) -> Result<Vec<(FlowKey, FlowVal)>, Error> {
        self.entries("moved_flows")
    }

    fn entries(&self, map: &'static str) -> Result<Vec<(FlowKey, FlowVal)>, Error> {
        let m = self.map(map)?;
        let mut out = Vec::new();
        for k in m.keys() {
            if k.len() != FLOW_KEY_LEN {
                continue;
            }
            let (Some(key), Some(v)) = (
                FlowKey::from_bytes(&k),
                m.lookup(&k, MapFlags::ANY)
                    .map_err(Error::bpf("lookup flows"))?,
            ) else {
                continue;
            };
            if let Some(v) = FlowVal::from_bytes(&v) {
                out.push((key, v));
            }
        }
        Ok(out)
    }

    /// Bind home address `home` to care-of address `coa`.
    pub fn set_binding(&self, home: Ipv6Addr, coa: Ipv6Addr) -> Result<(), Error> {
        self.map("bindings")?
            .update(&home.octets(), &coa.octets(), MapFlags::ANY)
            .map_err(Error::bpf("update bindings"))
    }

    /// Remove a binding; `Ok(false)` if it was not there.
    pub fn remove_binding(&self, home: Ipv6Addr) -> Result<bool, Error> {
        match self.map("bindings")?.delete(&home.octets()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Bpf("delete from bindings", e)),
        }
    }

    /// Every binding.
    pub fn bindings(&self) -> Result<Vec<(Ipv6Addr, Ipv6Addr)>, Error> {
        let m = self.map("bindings")?;
        let mut out = Vec::new();
        for k in m.keys() {
            let Some(home) = crate::maps::addr_at(&k, 0) else {
                continue;
            };
            if let Some(v) = m
                .lookup(&k, MapFlags::ANY)
                .map_err(Error::bpf("lookup bindings"))?
            {
                if let Some(coa) = crate::maps::addr_at(&v, 0) {
                    out.push((home, coa));
                }
            }
        }
        Ok(out)
    }
}

/// Convenience: a [`LocalAddr`] steering every protocol to AF_XDP.
pub fn xsk_all() -> LocalAddr {
    LocalAddr {
        protos: crate::maps::PROTO_ALL,
        action: Action::Xsk,
    }
}

/// Remove the pins of `kind` in `dir` (and the directory if it is left empty).
pub fn remove_pins(kind: Kind, dir: &Path) -> Result<(), Error> {
    for name in kind
        .map_names()
        .iter()
        .copied()
        .chain(std::iter::once(kind.prog_name()))
    {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Os("unpin", e)),
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Which program (if any) is attached to an interface, and in which mode.
#[derive(Debug, Clone, Serialize)]
pub struct XdpStatus {
    /// Interface index.
    pub ifindex: u32,
    /// Program id in native (driver) mode, if any.
    pub native_prog_id: Option<u32>,
    /// Program id in generic (skb) mode, if any.
    pub generic_prog_id: Option<u32>,
}

/// Query the XDP programs attached to `ifindex` (netlink).
pub fn query(ifindex: u32) -> Result<XdpStatus, Error> {
    let idx = i32::try_from(ifindex).map_err(|_| Error::Invalid("ifindex".into()))?;
    let mut opts = libbpf_rs::libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: `opts` is a correctly sized, writable bpf_xdp_query_opts alive for the call.
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_xdp_query(idx, 0, &mut opts) };
    if rc < 0 {
        return Err(Error::Os(
            "query XDP",
            std::io::Error::from_raw_os_error(-rc),
        ));
    }
    let some = |id: u32| (id != 0).then_some(id);
    Ok(XdpStatus {
        ifindex,
        native_prog_id: some(opts.drv_prog_id),
        generic_prog_id: some(opts.skb_prog_id),
    })
}

/// Detach whatever XDP program is attached to `ifindex` (both modes); `Ok(false)` if none was.
pub fn detach(ifindex: u32) -> Result<bool, Error> {
    let st = query(ifindex)?;
    let idx = i32::try_from(ifindex).map_err(|_| Error::Invalid("ifindex".into()))?;
    let mut any = false;
    for (present, flags) in [
        (
            st.native_prog_id.is_some(),
            libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE,
        ),
        (
            st.generic_prog_id.is_some(),
            libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE,
        ),
    ] {
        if !present {
            continue;
        }
        // SAFETY: plain netlink request; a null opts pointer is allowed by libbpf.
        let rc = unsafe { libbpf_rs::libbpf_sys::bpf_xdp_detach(idx, flags, std::ptr::null()) };
        if rc < 0 {
            return Err(Error::Os(
                "detach XDP",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        any = true;
    }
    if any {
        info!(ifindex, "detached");
    }
    Ok(any)
}

/// Name of a loaded program by id (for `status`).
pub fn prog_name(id: u32) -> Option<String> {
    let h = ProgramHandle::from_prog_id(id).ok()?;
    Some(h.name().to_string_lossy().into_owned())
}
