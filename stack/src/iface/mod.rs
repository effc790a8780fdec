//! The sans-IO interface: Ethernet + IPv6 (extension headers, fragments) + NDP + ICMPv6 + UDP +
//! TCP demultiplexing, and the socket API applications use.
//!
//! One [`Interface`] type, its `impl` split by layer (as smoltcp's `iface/interface/`):
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the type, [`Config`], handles, errors, time (`poll`, `poll_at`), addresses |
//! | `ethernet.rs` | Ethernet II input and header emission (RFC 2464) |
//! | `ipv6.rs` | IPv6 and its extension headers, fragments, upper-layer dispatch, path MTU (RFC 8200, 8201) |
//! | `icmpv6.rs` | ICMPv6 input, errors sent (RFC 4443) |
//! | `ndisc.rs` | Neighbour Discovery (RFC 4861) |
//! | `mobility.rs` | Mobile IPv6 in the data path: RH2/HAO, route optimisation, the mobility hook calls (RFC 6275) |
//! | `udp.rs` | UDP sockets (RFC 768) |
//! | `tcp.rs` | TCP demultiplexing, lifecycle, socket API, freeze/hold/thaw (RFC 9293) |
//! | `conn_table.rs` | the connection table: TCB slab, demux, timers, dirty/ready lists, held packets |
//! | `siblings.rs` | one interface per receive queue: segments of connections a sibling holds passed round, ND shared |
//! | `emit.rs` | frame building and the transmit path |
//!
//! Headers are read and written through one implementation each: smoltcp's `wire` views and
//! reprs, and `ds-mipv6`'s for the type 2 routing header and the Home Address option.

use crate::frag::Reassembler;
use crate::hooks::MobilityHook;
use crate::isn::{random_secret, IsnGenerator, SynCookies};
use crate::ndp::NeighborCache;
use crate::state::StateError;
use crate::stats::Stats;
use crate::tcp::ring::BufPool;
use crate::tcp::tcb::{Tcb, TcpError};
use crate::tcp::TcpConfig;
use crate::time::{Duration, Instant};
use crate::udp::UdpSocket;
use ds_mipv6::cn::{CnConfig, Correspondent};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{ETHERNET_HEADER_LEN, IPV6_MIN_MTU};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::sync::Arc;

mod conn_table;
mod emit;
mod ethernet;
mod icmpv6;
mod ipv6;
mod mobility;
mod ndisc;
mod siblings;
mod tcp;
mod timer_wheel;
mod udp;

use conn_table::{ConnKey, ConnTable};
use tcp::{Listener, EPHEMERAL_FIRST};

pub use ethernet::WARM_AHEAD;
pub use ndisc::solicited_node;

/// RFC 8201 §4: a learnt path MTU is forgotten after 10 minutes.
pub(super) const PMTU_AGE: Duration = Duration::from_secs(600);
/// Most destinations with a lowered path MTU kept ([`Interface::set_path_mtu`]).
pub(super) const MAX_PMTU_PATHS: usize = 4096;
/// RFC 4443 §2.4(f): ICMPv6 errors we send per second.
pub(super) const ICMP_ERRORS_PER_SEC: u32 = 100;

/// Interface settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our Ethernet address.
    pub mac: [u8; 6],
    /// Unicast addresses we own (a link-local one derived from `mac` is added).
    pub addrs: Vec<Ipv6Addr>,
    /// Link IP MTU.
    pub mtu: usize,
    /// Default TCP settings for new sockets.
    pub tcp: TcpConfig,
    /// Default router; without one every destination is on-link.
    pub gateway: Option<Ipv6Addr>,
    /// Routes to off-link prefixes through other routers than the default one (a host
    /// between several routers, e.g. a client reaching two sites); the longest matching
    /// prefix wins, the default router takes the rest.
    pub routes: Vec<Route>,
    /// RFC 6528 ISN key.
    pub isn_secret: [u8; 16],
    /// Hop limit of packets we originate.
    pub hop_limit: u8,
    /// Answer SYNs with SYN cookies (RFC 4987 §3.6) when a listener's backlog is full,
    /// instead of dropping them: a SYN flood then fills no table and closes no port.
    pub syn_cookies: bool,
    /// Act as a Mobile IPv6 correspondent node (RFC 6275 §9) on all our addresses: answer
    /// return-routability tests and Binding Updates, and route packets for bound home
    /// addresses to their care-of addresses.
    pub correspondent: bool,
}

/// A route: destinations in `prefix`/`len` are reached through the router `via` (a neighbour
/// on the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination prefix (bits past `len` are ignored).
    pub prefix: Ipv6Addr,
    /// Prefix length, 0–128 (0: every destination, like a default route).
    pub len: u8,
    /// The next-hop router.
    pub via: Ipv6Addr,
}

impl Route {
    /// Whether `dst` lies in this route's prefix.
    ///
    /// ```
    /// use ds_stack::iface::Route;
    /// let r = Route { prefix: "fd00:5d:2::".parse().unwrap(), len: 64, via: "fd00:5d::2".parse().unwrap() };
    /// assert!(r.covers(&"fd00:5d:2::12".parse().unwrap()));
    /// assert!(!r.covers(&"fd00:5d:1::80".parse().unwrap()));
    /// ```
    pub fn covers(&self, dst: &Ipv6Addr) -> bool {
        let len = u32::from(self.len.min(128));
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        (u128::from(*dst) ^ u128::from(self.prefix)) & mask == 0
    }
}

/// A route as `PREFIX/LEN=ROUTER` (e.g. `fd00:5d:2::/64=fd00:5d::2`) would not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad route {0:?}: want PREFIX/LEN=ROUTER, e.g. fd00:5d:2::/64=fd00:5d::2")]
pub struct RouteParseError(pub String);

impl std::str::FromStr for Route {
    type Err = RouteParseError;

    /// `PREFIX/LEN=ROUTER`.
    ///
    /// ```
    /// use ds_stack::iface::Route;
    /// let r: Route = "fd00:5d:2::/64=fd00:5d::2".parse().unwrap();
    /// assert_eq!((r.len, r.via), (64, "fd00:5d::2".parse().unwrap()));
    /// assert!("fd00:5d:2::/129=fd00:5d::2".parse::<Route>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Route, RouteParseError> {
        let bad = || RouteParseError(s.to_string());
        let (net, via) = s.split_once('=').ok_or_else(bad)?;
        let (prefix, len) = net.split_once('/').ok_or_else(bad)?;
        let len: u8 = len.trim().parse().map_err(|_| bad())?;
        if len > 128 {
            return Err(bad());
        }
        Ok(Route {
            prefix: prefix.trim().parse().map_err(|_| bad())?,
            len,
            via: via.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl Config {
    /// Settings for an interface with this MAC owning these addresses.
    pub fn new(mac: [u8; 6], addrs: Vec<Ipv6Addr>) -> Self {
        Config {
            mac,
            addrs,
            mtu: 1500,
            tcp: TcpConfig::default(),
            gateway: None,
            routes: Vec::new(),
            isn_secret: random_secret(),
            hop_limit: 64,
            syn_cookies: true,
            correspondent: true,
        }
    }
}

/// Socket API errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The handle does not name a live socket.
    #[error("invalid socket handle")]
    InvalidHandle,
    /// Address and port already bound.
    #[error("address in use")]
    AddrInUse,
    /// The local address is not one of ours.
    #[error("address not available")]
    AddrNotAvailable,
    /// No free ephemeral port.
    #[error("no free ephemeral port")]
    NoPorts,
    /// The operation needs a connection in another state.
    #[error("socket not in a state for this operation")]
    InvalidState,
    /// The peer closed its side and all its data has been read.
    #[error("end of stream")]
    Eof,
    /// The peer reset the connection.
    #[error("connection reset")]
    Reset,
    /// Retransmissions went unanswered.
    #[error("connection timed out")]
    TimedOut,
    /// The peer refused the connection.
    #[error("connection refused")]
    Refused,
    /// Aborted locally.
    #[error("connection aborted")]
    Aborted,
    /// A frozen state was refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// A datagram too large to send.
    #[error("datagram too large")]
    TooLarge,
}

impl From<TcpError> for Error {
    fn from(e: TcpError) -> Self {
        match e {
            TcpError::Reset => Error::Reset,
            TcpError::TimedOut => Error::TimedOut,
            TcpError::Refused => Error::Refused,
            TcpError::Aborted => Error::Aborted,
        }
    }
}

/// A TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpHandle {
    idx: u32,
    gen: u32,
}

/// A TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenHandle(u32);

/// A UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpHandle(u32);

/// The protocol engine. See the crate docs.
pub struct Interface {
    /// The settings given to [`Interface::new`]; its `tcp` is only the initial value of
    /// `tcp_default`.
    cfg: Config,
    /// Default TCP settings of new connections, shared by them (one hot copy instead of
    /// 192 bytes in every control block, cold at 100,000 connections: `dsperf conns`);
    /// changed copy-on-write, so connections already open keep theirs.
    tcp_default: Arc<TcpConfig>,
    link_local: Ipv6Addr,
    isn: IsnGenerator,
    pub(super) cookies: SynCookies,
    /// TCBs, their demultiplexing, timers and output/ready lists, and the frozen connections
    /// whose packets are held for the node that thaws them (so none is lost in the handoff gap).
    conns: ConnTable<Tcb>,
    /// Storage of the connections' emptied small buffers, for the next that needs some (warm,
    /// and no allocation per exchange: `crate::tcp::ring`).
    bufs: BufPool,
    listeners: Vec<Option<Listener>>,
    listen_map: HashMap<(Ipv6Addr, u16), u32>,
    ctrl: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    nd: NeighborCache,
    pmtu: HashMap<Ipv6Addr, (usize, Instant)>,
    frag: Reassembler,
    udp: Vec<Option<UdpSocket>>,
    udp_map: HashMap<u16, u32>,
    next_ephemeral: u16,
    stats: Stats,
    hook: Option<Box<dyn MobilityHook>>,
    cn: Option<Correspondent>,
    /// The correspondent's next deadline as of its last poll (`Some(None)`: none); `None`:
    /// unknown, poll it. It changes only by mobility input or by routing through a binding
    /// (both reset it), so the binding cache is walked when something is due, not per poll.
    cn_next: Option<Option<Instant>>,
    home_addrs: Vec<Ipv6Addr>,
    proxied: Vec<Ipv6Addr>,
    intercepted: VecDeque<Vec<u8>>,
    /// Storage of intercepted packets the application took, for the next ones.
    intercept_spare: Vec<Vec<u8>>,
    decap_depth: u8,
    icmp_budget: crate::time::Budget,
    /// Packet Too Big messages applied this second without a TCP segment in flight to vouch
    /// for them (`receive_icmp`).
    pmtu_budget: crate::time::Budget,
    frag_ident: u32,
    scratch: Vec<u8>,
    /// TCP payload octets per super-frame the device segments; 0: none (see
    /// [`Interface::set_gso_max`]).
    gso_max: u32,
    now: Instant,
    siblings: siblings::Siblings,
    /// The keys, hashes and candidate slots of the frames of the batch being received, found
    /// while their connections were warmed ([`Interface::receive_batch`]); storage kept.
    warmed: Vec<Option<(ConnKey, u64, Option<u32>)>>,
}

/// The link-local address with the modified EUI-64 interface identifier of `mac` (RFC 4291
/// §2.5.1 and appendix A, RFC 2464 §4–§5).
pub(super) fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 0x02, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

/// What smoltcp's parsers and emitters do with checksums: nothing. Every upper-layer checksum
/// is verified and filled by our one implementation ([`ds_mipv6::wire::pseudo_checksum`],
/// RFC 1071 by 32-bit words; [`fill_upper_checksum`]), which TCP, UDP, ICMPv6 and the Mobility
/// Header share.
pub(super) fn caps() -> ChecksumCapabilities {
    ChecksumCapabilities::ignored()
}

/// Fill the 16-bit checksum at `at` of the upper-layer packet `pkt` (next header `proto`,
/// between `src` and `dst`; RFC 8200 §8.1). For UDP a computed zero is sent as all ones
/// (RFC 768; a zero UDP checksum is invalid in IPv6, RFC 8200 §8.1).
pub(super) fn fill_upper_checksum(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    pkt: &mut [u8],
    at: usize,
) {
    let Some(field) = pkt.get_mut(at..at + 2) else {
        return;
    };
    field.copy_from_slice(&[0, 0]);
    let mut c = ds_mipv6::wire::pseudo_checksum(src, dst, proto, pkt);
    if c == 0 && proto == ds_mipv6::wire::IPPROTO_UDP {
        c = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

impl Interface {
    /// A new interface at `now`.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let link_local = eui64_link_local(cfg.mac);
        let mtu = cfg.mtu.max(IPV6_MIN_MTU);
        let isn = IsnGenerator::new(&cfg.isn_secret);
        let cookies = SynCookies::new(&cfg.isn_secret);
        let cn = if cfg.correspondent {
            match Correspondent::with_random_secrets(CnConfig::default()) {
                Ok(c) => Some(c),
                Err(_) => {
                    tracing::warn!(
                        "no randomness for the correspondent's keys: MIPv6 correspondent role off"
                    );
                    None
                }
            }
        } else {
            None
        };
        // RFC 6056 §3.3.2: a random first ephemeral port (the ISN key is random unless the
        // caller fixed it), then in turn; two interfaces started at the same time, or one
        // per run of a program, do not reuse each other's ports.
        let key = u16::from_le_bytes([cfg.isn_secret[0], cfg.isn_secret[1]]);
        let first_port = EPHEMERAL_FIRST + ((key ^ now.total_micros() as u16) % 16384);
        Interface {
            tcp_default: Arc::new(cfg.tcp.clone()),
            cfg: Config { mtu, ..cfg },
            link_local,
            isn,
            cookies,
            conns: ConnTable::default(),
            bufs: BufPool::default(),
            listeners: Vec::new(),
            listen_map: HashMap::new(),
            ctrl: VecDeque::new(),
            pool: Vec::new(),
            nd: NeighborCache::default(),
            pmtu: HashMap::new(),
            frag: Reassembler::default(),
            udp: Vec::new(),
            udp_map: HashMap::new(),
            next_ephemeral: first_port,
            stats: Stats::default(),
            hook: None,
            cn,
            cn_next: None,
            home_addrs: Vec::new(),
            proxied: Vec::new(),
            intercepted: VecDeque::new(),
            intercept_spare: Vec::new(),
            decap_depth: 0,
            icmp_budget: crate::time::Budget::new(now),
            pmtu_budget: crate::time::Budget::new(now),
            frag_ident: now.total_micros() as u32,
            scratch: Vec::with_capacity(ETHERNET_HEADER_LEN + mtu),
            gso_max: 0,
            now,
            siblings: siblings::Siblings::default(),
            warmed: Vec::new(),
        }
    }

    /// Let connections send TCP super-frames of up to `max` payload octets, for a device that
    /// segments them ([`crate::device::Device::gso_max`]); 0 (the default) turns it off.
    /// Frames then come with their [`crate::device::Gso`] from
    /// [`Interface::transmit_gso`] only: do not use [`Interface::transmit`] with it on.
    pub fn set_gso_max(&mut self, max: usize) {
        // The IPv6 Payload Length (RFC 8200 §3) bounds a frame: room for the largest TCP
        // header and the mobility headers route optimisation may add.
        self.gso_max = max.min(usize::from(u16::MAX) - 60 - 64) as u32;
    }

    /// Count `n` frames the device refused ([`Stats::tx_device_rejects`]).
    pub fn note_tx_rejects(&mut self, n: u64) {
        self.stats.tx_device_rejects += n;
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Our MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.cfg.mac
    }

    /// Our addresses (configured ones, then the link-local one).
    pub fn addrs(&self) -> Vec<Ipv6Addr> {
        let mut v = self.cfg.addrs.clone();
        v.push(self.link_local);
        v
    }

    /// Take over another address (e.g. the DS address after a handoff).
    pub fn add_addr(&mut self, a: Ipv6Addr) {
        if !self.cfg.addrs.contains(&a) {
            self.cfg.addrs.push(a);
        }
    }

    /// Stop answering for an address.
    pub fn remove_addr(&mut self, a: Ipv6Addr) {
        self.cfg.addrs.retain(|x| *x != a);
    }

    /// Default TCP settings for new sockets.
    pub fn tcp_config_mut(&mut self) -> &mut TcpConfig {
        Arc::make_mut(&mut self.tcp_default)
    }

    /// Addresses we accept packets for as their final destination.
    pub(super) fn is_ours(&self, a: &Ipv6Addr) -> bool {
        *a == self.link_local || self.cfg.addrs.contains(a) || self.home_addrs.contains(a)
    }

    /// The latest time the interface was given (by `receive`, `poll` or `transmit`): a
    /// caller's "now" without reading a clock again.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether frames are waiting to be sent ([`Interface::transmit`] has work): a
    /// connection's output, or control frames.
    pub fn has_output(&self) -> bool {
        self.conns.has_dirty() || !self.ctrl.is_empty()
    }

    /// The earliest instant at which [`Interface::poll`] has work (`None`: only input matters).
    pub fn poll_at(&self) -> Option<Instant> {
        let mut t = self.conns.next_timer();
        let cn_at = match self.cn_next {
            Some(at) => at,
            None => self.cn.as_ref().and_then(|c| c.poll_at()),
        };
        let hook_at = self.hook.as_ref().and_then(|h| h.poll_at());
        for x in [self.nd.poll_at(), self.frag.poll_at(), cn_at, hook_at]
            .into_iter()
            .flatten()
        {
            t = Some(t.map_or(x, |y| y.min(x)));
        }
        if self.has_output() {
            return Some(self.now);
        }
        t
    }

    /// Run due timers.
    pub fn poll(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while let Some(idx) = self.conns.next_due(now) {
            if let Some(tcb) = self.conns.get_mut(idx) {
                tcb.on_timer(now);
            }
            self.conns.mark_ready(idx);
            self.after_tcb_event(idx);
            // A deadline its timer left due would be popped again at once, for ever: a bug
            // in a timer, but one that must not stall every connection of the interface.
            // Counted, and looked at again a millisecond later.
            if self
                .conns
                .get(idx)
                .and_then(|t| t.poll_at())
                .is_some_and(|t| t <= now)
            {
                self.stats.tcp_timers_stuck += 1;
                self.conns.arm(idx, Some(now + Duration::from_millis(1)));
            }
        }
        let (actions, dropped) = self.nd.poll(now);
        self.stats.nd_drops += dropped as u64;
        for a in actions {
            self.solicit(a);
        }
        self.stats.reassembly_failed += self.frag.expire(now) as u64;
        if let Some(cn) = self.cn.as_mut() {
            let due = match self.cn_next {
                None => true,
                Some(at) => at.is_some_and(|t| now >= t),
            };
            if due {
                let out = cn.poll(now);
                self.cn_next = Some(cn.poll_at());
                for t in out {
                    self.send_ipv6_packet(now, &t.packet);
                }
            }
        }
        self.poll_hook(now);
    }

    /// Send what the mobility hook has to send now (its timers and queued signalling).
    fn poll_hook(&mut self, now: Instant) {
        if let Some(h) = self.hook.as_mut() {
            for p in h.poll(now) {
                self.send_ipv6_packet(now, &p);
            }
        }
    }

    /// Neighbour cache (diagnostics).
    pub fn neighbors(&self) -> &NeighborCache {
        &self.nd
    }
}

/// Store `item` in the first empty slot (or a new one); returns its index.
pub(super) fn put_in_free_slot<T>(v: &mut Vec<Option<T>>, item: T) -> usize {
    match v.iter().position(|x| x.is_none()) {
        Some(i) => {
            v[i] = Some(item);
            i
        }
        None => {
            v.push(Some(item));
            v.len() - 1
        }
    }
}
