//! The sans-IO interface: Ethernet + IPv6 (extension headers, fragments) + NDP + ICMPv6 + UDP +
//! TCP demultiplexing, and the socket API applications use.

use crate::frag::Reassembler;
use crate::hooks::{HaoVerdict, MobilityHook};
use crate::isn::{random_secret, IsnGenerator};
use crate::ndp::{Lookup, NdAction, NeighborCache};
use crate::state::{ConnState, StateError};
use crate::stats::Stats;
use crate::tcp::tcb::{SegIn, SegOut, Tcb, TcpError};
use crate::tcp::TcpConfig;
use crate::tcp::TcpState;
use crate::time::{Duration, Instant};
use crate::udp::{UdpSocket, UDP_QUEUE};
use ds_mipv6::cn::{CnConfig, CnEvent, Correspondent, FlowKey, HaoCheck};
use ds_mipv6::MhMeta;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr, UdpPacket, UdpRepr,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddrV6};

/// The mobility view of a received packet: addresses as on the wire and the home address
/// carried by a Home Address option or a type 2 routing header.
#[derive(Debug, Clone, Copy)]
struct Mobility {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hao: Option<Ipv6Addr>,
    rh2: Option<Ipv6Addr>,
}

/// Packets held per frozen connection at most (about a 1.4 MB window of full segments).
const MAX_HELD: usize = 1024;

/// Intercepted packets held for the application at most.
const MAX_INTERCEPTED: usize = 4096;

/// What output route optimisation did to a frame.
enum MobilityOut {
    Unchanged,
    /// Headers added; the frame now goes to this address.
    Rewritten(Ipv6Addr),
    /// With the added headers it would exceed the link MTU.
    TooBig {
        peer: Ipv6Addr,
        mtu: usize,
    },
}

/// RFC 6275 §6.4: a type 2 routing header is 24 octets; so is our Home Address option header.
const MOBILITY_EXT_LEN: usize = 24;

/// Where frames go when the caller can take them at once.
type Emit<'a> = &'a mut dyn FnMut(&[u8]);

const ETH_HDR: usize = 14;
const IP6_HDR: usize = 40;
/// RFC 8200 §5: every IPv6 link carries 1280-byte packets.
const MIN_MTU: usize = 1280;
/// RFC 8201 §4: a learnt path MTU is forgotten after 10 minutes.
const PMTU_AGE: Duration = Duration::from_secs(600);
/// RFC 4443 §2.4(f): ICMPv6 errors we send per second.
const ICMP_ERRORS_PER_SEC: u32 = 100;

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
    /// RFC 6528 ISN key.
    pub isn_secret: [u8; 16],
    /// Hop limit of packets we originate.
    pub hop_limit: u8,
    /// Act as a Mobile IPv6 correspondent node (RFC 6275 §9) on all our addresses: answer
    /// return-routability tests and Binding Updates, and route packets for bound home
    /// addresses to their care-of addresses.
    pub correspondent: bool,
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
            isn_secret: random_secret(),
            hop_limit: 64,
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

/// (local addr, local port, remote addr, remote port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey(Ipv6Addr, u16, Ipv6Addr, u16);

impl ConnKey {
    fn of(local: &SocketAddrV6, remote: &SocketAddrV6) -> Self {
        ConnKey(*local.ip(), local.port(), *remote.ip(), remote.port())
    }
}

#[derive(Debug)]
struct Slot {
    gen: u32,
    tcb: Option<Tcb>,
    /// The application gave up the handle; free the slot when the connection is closed.
    released: bool,
    in_dirty: bool,
    in_ready: bool,
    armed: Option<Instant>,
}

#[derive(Debug)]
struct Listener {
    local: SocketAddrV6,
    backlog: usize,
    accept: VecDeque<u32>,
    embryonic: usize,
    cfg: TcpConfig,
}

/// The protocol engine. See the crate docs.
pub struct Interface {
    cfg: Config,
    link_local: Ipv6Addr,
    isn: IsnGenerator,
    slots: Vec<Slot>,
    free: Vec<u32>,
    demux: HashMap<ConnKey, u32>,
    listeners: Vec<Option<Listener>>,
    listen_map: HashMap<(Ipv6Addr, u16), u32>,
    /// Frozen connections: when frozen, and the packets that arrived for them since (held for
    /// the node that thaws the connection, so none is lost in the handoff gap).
    frozen: HashMap<ConnKey, (Instant, Vec<Vec<u8>>)>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    dirty: Vec<u32>,
    ready: Vec<u32>,
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
    home_addrs: Vec<Ipv6Addr>,
    proxied: Vec<Ipv6Addr>,
    intercepted: VecDeque<Vec<u8>>,
    decap_depth: u8,
    icmp_budget: (Instant, u32),
    frag_ident: u32,
    scratch: Vec<u8>,
    now: Instant,
}

fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
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

/// RFC 4291 §2.7.1 solicited-node multicast address.
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn caps() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

impl Interface {
    /// A new interface at `now`.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let link_local = eui64_link_local(cfg.mac);
        let mtu = cfg.mtu.max(MIN_MTU);
        let isn = IsnGenerator::new(&cfg.isn_secret);
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
        Interface {
            cfg: Config { mtu, ..cfg },
            link_local,
            isn,
            slots: Vec::new(),
            free: Vec::new(),
            demux: HashMap::new(),
            listeners: Vec::new(),
            listen_map: HashMap::new(),
            frozen: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            ready: Vec::new(),
            ctrl: VecDeque::new(),
            pool: Vec::new(),
            nd: NeighborCache::default(),
            pmtu: HashMap::new(),
            frag: Reassembler::default(),
            udp: Vec::new(),
            udp_map: HashMap::new(),
            next_ephemeral: 49152 + (now.total_micros() as u16 % 8192),
            stats: Stats::default(),
            hook: None,
            cn,
            home_addrs: Vec::new(),
            proxied: Vec::new(),
            intercepted: VecDeque::new(),
            decap_depth: 0,
            icmp_budget: (now, 0),
            frag_ident: now.total_micros() as u32,
            scratch: Vec::with_capacity(ETH_HDR + mtu),
            now,
        }
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

    /// Install the Mobile IPv6 hook.
    pub fn set_mobility_hook(&mut self, hook: Box<dyn MobilityHook>) {
        self.hook = Some(hook);
    }

    /// Default TCP settings for new sockets.
    pub fn tcp_config_mut(&mut self) -> &mut TcpConfig {
        &mut self.cfg.tcp
    }

    fn is_ours(&self, a: &Ipv6Addr) -> bool {
        *a == self.link_local || self.cfg.addrs.contains(a) || self.home_addrs.contains(a)
    }

    /// Addresses we answer Neighbour Solicitations for (not home addresses served away
    /// from home: another node owns those on the link).
    fn owns_on_link(&self, a: &Ipv6Addr) -> bool {
        *a == self.link_local || self.cfg.addrs.contains(a) || self.proxied.contains(a)
    }

    /// Proxy an address on the link (a home agent for a registered home address, RFC 6275
    /// §10.4.1): answer Neighbour Solicitations for it and hand packets for it to the
    /// application ([`Interface::take_intercepted`]) instead of delivering them. Turning it
    /// on announces the address (unsolicited NA with override) so neighbours switch to us.
    pub fn set_proxy(&mut self, now: Instant, a: Ipv6Addr, on: bool) {
        if on {
            if !self.proxied.contains(&a) {
                self.proxied.push(a);
                self.announce_one(now, a);
            }
        } else {
            self.proxied.retain(|x| *x != a);
        }
    }

    /// The next intercepted IPv6 packet: one for a proxied address, or an IPv6-in-IPv6 packet
    /// addressed to us whose inner packet is for someone else (a reverse tunnel).
    pub fn take_intercepted(&mut self) -> Option<Vec<u8>> {
        self.intercepted.pop_front()
    }

    fn intercept(&mut self, pkt: &[u8]) {
        if self.intercepted.len() >= MAX_INTERCEPTED {
            self.stats.intercept_drops += 1;
            return;
        }
        self.stats.intercepted += 1;
        self.intercepted.push_back(pkt.to_vec());
    }

    /// Serve a home address away from home (the mobile-node role, RFC 6275 §11): connections
    /// may use it as their local address and packets for it are accepted (normally via a type
    /// 2 routing header), but it is not claimed on the link with Neighbour Advertisements.
    pub fn add_home_addr(&mut self, a: Ipv6Addr) {
        if !self.home_addrs.contains(&a) {
            self.home_addrs.push(a);
        }
    }

    /// Stop serving a home address.
    pub fn remove_home_addr(&mut self, a: Ipv6Addr) {
        self.home_addrs.retain(|x| *x != a);
    }

    fn accepts_dst(&self, a: &Ipv6Addr) -> bool {
        if self.is_ours(a) || *a == ALL_NODES {
            return true;
        }
        a.segments()[0] == 0xff02
            && (*a == solicited_node(self.link_local)
                || self.cfg.addrs.iter().any(|x| solicited_node(*x) == *a)
                || self.proxied.iter().any(|x| solicited_node(*x) == *a))
    }

    fn source_for(&self, dst: &Ipv6Addr) -> Ipv6Addr {
        if dst.segments()[0] & 0xffc0 == 0xfe80 || dst.segments()[0] == 0xff02 {
            return self.link_local;
        }
        self.cfg.addrs.first().copied().unwrap_or(self.link_local)
    }

    // ---------------------------------------------------------------- time

    /// The earliest instant at which [`Interface::poll`] has work (`None`: only input matters).
    pub fn poll_at(&self) -> Option<Instant> {
        let mut t = self.timers.peek().map(|r| r.0 .0);
        let cn_at = self.cn.as_ref().and_then(|c| c.poll_at());
        let hook_at = self.hook.as_ref().and_then(|h| h.poll_at());
        for x in [self.nd.poll_at(), self.frag.poll_at(), cn_at, hook_at]
            .into_iter()
            .flatten()
        {
            t = Some(t.map_or(x, |y| y.min(x)));
        }
        if !self.dirty.is_empty() || !self.ctrl.is_empty() {
            return Some(self.now);
        }
        t
    }

    /// Run due timers.
    pub fn poll(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while let Some(Reverse((t, idx, gen))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(idx as usize) else {
                continue;
            };
            if slot.gen != gen || slot.armed != Some(t) {
                continue;
            }
            slot.armed = None;
            if let Some(tcb) = slot.tcb.as_mut() {
                tcb.on_timer(now);
            }
            self.mark_ready(idx);
            self.after_tcb_event(idx);
        }
        let (actions, dropped) = self.nd.poll(now);
        self.stats.nd_drops += dropped as u64;
        for a in actions {
            self.solicit(a);
        }
        self.stats.reassembly_failed += self.frag.expire(now) as u64;
        if let Some(cn) = self.cn.as_mut() {
            for t in cn.poll(now) {
                self.send_ipv6_packet(now, &t.packet);
            }
        }
        if let Some(h) = self.hook.as_mut() {
            for p in h.poll(now) {
                self.send_ipv6_packet(now, &p);
            }
        }
    }

    fn arm(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(tcb) = slot.tcb.as_ref() else { return };
        if let Some(t) = tcb.poll_at() {
            if slot.armed.is_none_or(|a| t < a) {
                slot.armed = Some(t);
                self.timers.push(Reverse((t, idx, slot.gen)));
            }
        }
    }

    fn mark_ready(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if !slot.in_ready && !slot.released {
            slot.in_ready = true;
            self.ready.push(idx);
        }
    }

    /// Connections that saw a network event (data, ACKs that freed send space, FIN, RST,
    /// timeout) since the last call, appended to `out`. Lets an application with many
    /// connections service only those instead of scanning all of them each step.
    pub fn tcp_take_ready(&mut self, out: &mut Vec<TcpHandle>) {
        for idx in self.ready.drain(..) {
            let slot = &mut self.slots[idx as usize];
            slot.in_ready = false;
            if slot.tcb.is_some() && !slot.released {
                out.push(TcpHandle { idx, gen: slot.gen });
            }
        }
    }

    fn mark_dirty(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if !slot.in_dirty {
            slot.in_dirty = true;
            self.dirty.push(idx);
        }
    }

    /// Bookkeeping after anything touched a TCB: counters, timers, output, lifecycle.
    fn after_tcb_event(&mut self, idx: u32) {
        self.after_tcb_event_inner(idx, true);
    }

    /// As [`Self::after_tcb_event`] but without queueing output (used right after draining).
    fn after_tcb_event_quiet(&mut self, idx: u32) {
        self.after_tcb_event_inner(idx, false);
    }

    fn after_tcb_event_inner(&mut self, idx: u32, output: bool) {
        let slot = &mut self.slots[idx as usize];
        let Some(tcb) = slot.tcb.as_mut() else { return };
        let ev = tcb.take_events();
        let state = tcb.state();
        let wants = tcb.wants_output();
        let listener = tcb.listener;
        let key = ConnKey::of(&tcb.local, &tcb.remote);
        self.stats.tcp_retransmits += ev.retransmits;
        self.stats.tcp_rto += ev.rto;
        self.stats.tcp_fast_recovery += ev.fast_recovery;
        self.stats.tcp_challenge_acks += ev.challenge_acks;
        self.stats.tcp_paws_rejected += ev.paws_rejected;
        self.stats.tcp_zero_window_probes += ev.zero_window_probes;
        self.stats.tcp_tx_segments += ev.segments_out;
        self.stats.tcp_ooo_segments += ev.ooo_segments;
        // An embryonic passive connection that completed the handshake joins the accept queue.
        if let Some(l) = listener {
            if state != TcpState::SynReceived {
                if let Some(t) = self.slots[idx as usize].tcb.as_mut() {
                    t.listener = None;
                }
                if let Some(Some(lst)) = self.listeners.get_mut(l) {
                    lst.embryonic = lst.embryonic.saturating_sub(1);
                    if state != TcpState::Closed {
                        lst.accept.push_back(idx);
                    } else {
                        self.slots[idx as usize].released = true;
                    }
                } else {
                    self.slots[idx as usize].released = true;
                }
            }
        }
        if wants && output {
            self.mark_dirty(idx);
        }
        if state == TcpState::Closed {
            if self.demux.get(&key) == Some(&idx) {
                self.demux.remove(&key);
            }
            if !wants && self.slots[idx as usize].released {
                self.free_slot(idx);
                return;
            }
        }
        self.arm(idx);
    }

    fn free_slot(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if let Some(t) = slot.tcb.take() {
            let key = ConnKey::of(&t.local, &t.remote);
            if self.demux.get(&key) == Some(&idx) {
                self.demux.remove(&key);
            }
        }
        slot.gen = slot.gen.wrapping_add(1);
        slot.released = false;
        slot.armed = None;
        self.free.push(idx);
    }

    // ---------------------------------------------------------------- input

    /// Process one received Ethernet frame.
    pub fn receive(&mut self, now: Instant, frame: &[u8]) {
        self.now = self.now.max(now);
        self.stats.rx_frames += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let dst = eth.dst_addr();
        if dst.0 != self.cfg.mac && !dst.is_broadcast() && !(dst.0[0] == 0x33 && dst.0[1] == 0x33) {
            self.stats.rx_not_ours += 1;
            return;
        }
        if eth.ethertype() != EthernetProtocol::Ipv6 {
            self.stats.rx_not_ours += 1;
            return;
        }
        let src_mac = eth.src_addr().0;
        self.receive_ipv6(now, eth.payload(), Some(src_mac));
    }

    /// Process one IPv6 packet (without link header): for devices without Ethernet, and for
    /// packets decapsulated from a tunnel.
    pub fn receive_ipv6(&mut self, now: Instant, pkt: &[u8], src_mac: Option<[u8; 6]>) {
        let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if ip.version() != 6 {
            self.stats.rx_malformed += 1;
            return;
        }
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        if self.proxied.contains(&dst) {
            let total = (IP6_HDR + ip.payload_len() as usize).min(pkt.len());
            self.intercept(&pkt[..total]);
            return;
        }
        if !self.accepts_dst(&dst) {
            self.stats.rx_not_ours += 1;
            return;
        }
        if src.is_multicast() {
            self.stats.rx_malformed += 1;
            return;
        }
        let total = IP6_HDR + ip.payload_len() as usize;
        let pkt = &pkt[..total];
        let hop_limit = ip.hop_limit();
        self.walk_headers(now, pkt, src, dst, hop_limit, src_mac);
    }

    /// Walk the extension-header chain (RFC 8200 §4) and hand the upper layer on.
    fn walk_headers(
        &mut self,
        now: Instant,
        pkt: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
    ) {
        let mut nh = pkt[6];
        let mut off = IP6_HDR;
        let mut nh_field = 6usize;
        let mut mob = Mobility {
            src,
            dst,
            hao: None,
            rh2: None,
        };
        let mut first = true;
        loop {
            match nh {
                // Hop-by-hop (only first), destination options.
                0 | 60 => {
                    if nh == 0 && !first {
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(now, pkt, 1, nh_field as u32);
                        return;
                    }
                    let Some((next, len)) = ext_len(pkt, off) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    match self.process_options(now, pkt, off, len, dst) {
                        Ok(Some(home)) => mob.hao = Some(home),
                        Ok(None) => {}
                        Err(()) => return,
                    }
                    nh_field = off;
                    nh = next;
                    off += len;
                }
                // Routing header.
                43 => {
                    let Some((next, len)) = ext_len(pkt, off) else {
                        self.stats.rx_malformed += 1;
                        return;
                    };
                    let rtype = pkt[off + 2];
                    let left = pkt[off + 3];
                    if rtype == 2 && left == 1 && len == 24 {
                        // RFC 6275 §6.4: type 2 routing header carrying our home address.
                        let home = Ipv6Addr::from(
                            <[u8; 16]>::try_from(&pkt[off + 8..off + 24]).unwrap_or([0; 16]),
                        );
                        // RFC 6275 §9.3.2 / §11.3.3: only for a home address served here.
                        let ok = self.is_ours(&home)
                            || self
                                .hook
                                .as_mut()
                                .is_some_and(|h| h.on_type2_routing(now, dst, home));
                        if !ok {
                            self.stats.rx_bad_exthdr += 1;
                            return;
                        }
                        self.stats.mobility_rx += 1;
                        mob.rh2 = Some(home);
                    } else if left != 0 {
                        // RFC 8200 §4.4: unknown type with segments left → Parameter Problem
                        // pointing at the routing type (we are no router for other types).
                        self.stats.rx_bad_exthdr += 1;
                        self.param_problem(now, pkt, 0, (off + 2) as u32);
                        return;
                    }
                    nh_field = off;
                    nh = next;
                    off += len;
                }
                // Fragment.
                44 => {
                    if pkt.len() < off + 8 {
                        self.stats.rx_malformed += 1;
                        return;
                    }
                    self.stats.rx_fragments += 1;
                    let next = pkt[off];
                    let fo = u16::from_be_bytes([pkt[off + 2], pkt[off + 3]]);
                    let offset = (fo & 0xfff8) as usize;
                    let more = fo & 1 == 1;
                    let ident = u32::from_be_bytes([
                        pkt[off + 4],
                        pkt[off + 5],
                        pkt[off + 6],
                        pkt[off + 7],
                    ]);
                    let data = &pkt[off + 8..];
                    if offset == 0 && !more {
                        // RFC 6946 atomic fragment: process in isolation.
                        nh_field = off;
                        nh = next;
                        off += 8;
                        first = false;
                        continue;
                    }
                    match self
                        .frag
                        .add(now, src, dst, ident, offset, more, next, data)
                    {
                        Ok(Some(done)) => {
                            self.stats.reassembled += 1;
                            self.upper(
                                now,
                                done.next_header,
                                &done.payload,
                                &mob,
                                hop_limit,
                                src_mac,
                                pkt,
                            );
                        }
                        Ok(None) => {}
                        Err(_) => self.stats.reassembly_failed += 1,
                    }
                    return;
                }
                59 => {
                    // RFC 8200 §4.7: No Next Header; nothing to deliver (but a Home Address
                    // option on it is still checked, RFC 6275 §9.3.1).
                    if let Some(home) = mob.hao {
                        if !self.accept_hao(now, &mob, home) {
                            self.stats.rx_bad_exthdr += 1;
                            return;
                        }
                    }
                    self.stats.rx_ignored += 1;
                    return;
                }
                _ => {
                    let _ = nh_field;
                    self.upper(now, nh, &pkt[off..], &mob, hop_limit, src_mac, pkt);
                    return;
                }
            }
            first = false;
            if off > pkt.len() {
                self.stats.rx_malformed += 1;
                return;
            }
        }
    }

    /// TLV options of a hop-by-hop or destination-options header (RFC 8200 §4.2). Returns the
    /// home address of a Home Address option; whether it is accepted is decided with the
    /// upper layer in view (a Binding Update carries one and is checked differently).
    fn process_options(
        &mut self,
        now: Instant,
        pkt: &[u8],
        off: usize,
        len: usize,
        dst: Ipv6Addr,
    ) -> Result<Option<Ipv6Addr>, ()> {
        let mut i = off + 2;
        let end = off + len;
        let mut home = None;
        while i < end {
            let t = pkt[i];
            if t == 0 {
                i += 1;
                continue;
            }
            if i + 2 > end {
                self.stats.rx_malformed += 1;
                return Err(());
            }
            let olen = pkt[i + 1] as usize;
            if i + 2 + olen > end {
                self.stats.rx_malformed += 1;
                return Err(());
            }
            match t {
                1 => {}
                // RFC 6275 §6.3 Home Address option (understood when we are a correspondent
                // or run a mobility hook; otherwise its type's high bits say discard + ICMP).
                201 if olen == 16 && (self.cn.is_some() || self.hook.is_some()) => {
                    home = Some(Ipv6Addr::from(
                        <[u8; 16]>::try_from(&pkt[i + 2..i + 18]).unwrap_or([0; 16]),
                    ));
                }
                _ => {
                    // RFC 8200 §4.2: the two high-order bits say what to do with unknown options.
                    match t >> 6 {
                        0 => {}
                        1 => {
                            self.stats.rx_bad_exthdr += 1;
                            return Err(());
                        }
                        2 => {
                            self.stats.rx_bad_exthdr += 1;
                            self.param_problem(now, pkt, 2, i as u32);
                            return Err(());
                        }
                        _ => {
                            self.stats.rx_bad_exthdr += 1;
                            if !dst.is_multicast() {
                                self.param_problem(now, pkt, 2, i as u32);
                            }
                            return Err(());
                        }
                    }
                }
            }
            i += 2 + olen;
        }
        Ok(home)
    }

    #[allow(clippy::too_many_arguments)]
    fn upper(
        &mut self,
        now: Instant,
        nh: u8,
        payload: &[u8],
        mob: &Mobility,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
        whole: &[u8],
    ) {
        if nh == 135 {
            self.receive_mobility_header(now, payload, mob, whole);
            return;
        }
        // RFC 6275 §9.3.1: a Home Address option is honoured only with a binding for
        // (home address, source); then upper layers see the home address as the source.
        let mut src = mob.src;
        if let Some(home) = mob.hao {
            if !self.accept_hao(now, mob, home) {
                self.stats.rx_bad_exthdr += 1;
                return;
            }
            self.stats.mobility_rx += 1;
            src = home;
        }
        let dst = mob.rh2.unwrap_or(mob.dst);
        match nh {
            6 => self.receive_tcp(now, payload, src, dst),
            17 => self.receive_udp(now, payload, src, dst, whole),
            58 => self.receive_icmp(now, payload, src, dst, hop_limit, src_mac),
            // IPv6-in-IPv6 (RFC 2473): a home agent's tunnel to us (RFC 6275 §10.4.2), or a
            // reverse tunnel through us when we are a home agent (§10.4.5).
            41 => {
                let inner_dst = Ipv6Packet::new_checked(payload).ok().map(|p| p.dst_addr());
                match inner_dst {
                    None => self.stats.rx_malformed += 1,
                    Some(d) if self.accepts_dst(&d) && self.decap_depth == 0 => {
                        self.stats.decapsulated += 1;
                        self.decap_depth += 1;
                        self.receive_ipv6(now, payload, None);
                        self.decap_depth -= 1;
                    }
                    Some(_) => self.intercept(whole),
                }
            }
            _ => {
                self.stats.rx_bad_exthdr += 1;
                // RFC 8200 §4: unrecognised Next Header → Parameter Problem code 1.
                self.param_problem(now, whole, 1, 6);
            }
        }
    }

    fn accept_hao(&mut self, now: Instant, mob: &Mobility, home: Ipv6Addr) -> bool {
        let t = now;
        if let Some(cn) = self.cn.as_mut() {
            match cn.check_hao(t, mob.dst, mob.src, home, false) {
                HaoCheck::Accept => return true,
                HaoCheck::Reject(be) => {
                    // Perhaps a binding of the node's own mobile role (hook) covers it.
                    if let Some(h) = self.hook.as_mut() {
                        if h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept {
                            return true;
                        }
                    }
                    if let Some(be) = be {
                        self.send_ipv6_packet(now, &be.packet);
                    }
                    return false;
                }
            }
        }
        self.hook
            .as_mut()
            .is_some_and(|h| h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept)
    }

    /// RFC 6275 §9.2: a Mobility Header for us. The correspondent role answers what is its
    /// (HoTI, CoTI, BU); the rest (HoT, CoT, BA, BE, BRR) goes to the node's mobile role.
    fn receive_mobility_header(&mut self, now: Instant, mh: &[u8], mob: &Mobility, whole: &[u8]) {
        let meta = MhMeta {
            src: mob.src,
            dst: mob.dst,
            hao: mob.hao,
            rh2: mob.rh2,
        };
        let mut handled = false;
        if let Some(cn) = self.cn.as_mut() {
            let out = cn.on_mobility_header(now, meta, mh);
            handled = !matches!(out.event, CnEvent::Ignored);
            tracing::debug!(event = ?out.event, "mobility header (correspondent)");
            if let CnEvent::BindingUpdated { home, .. } = &out.event {
                // Packets to it now carry a routing header: make room for it.
                let cur = self.pmtu.get(home).map(|p| p.0).unwrap_or(self.cfg.mtu);
                let home = *home;
                self.set_path_mtu(now, home, cur.min(self.cfg.mtu - MOBILITY_EXT_LEN));
            }
            for t in out.transmit {
                self.send_ipv6_packet(now, &t.packet);
            }
        }
        if !handled {
            match self.hook.as_mut() {
                Some(h) => {
                    for r in h.on_mobility_header(now, meta, mh) {
                        self.send_ipv6_packet(now, &r);
                    }
                }
                None if self.cn.is_none() => {
                    // RFC 6275 §6.1.1 / RFC 8200: Mobility Header not implemented here.
                    self.stats.rx_bad_exthdr += 1;
                    self.param_problem(now, whole, 1, 6);
                    return;
                }
                None => {}
            }
        }
        self.stats.mobility_rx += 1;
    }

    fn receive_icmp(
        &mut self,
        now: Instant,
        payload: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        src_mac: Option<[u8; 6]>,
    ) {
        self.stats.rx_icmp += 1;
        let Ok(pkt) = Icmpv6Packet::new_checked(payload) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if !pkt.verify_checksum(&src, &dst) {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let Ok(repr) = Icmpv6Repr::parse(&src, &dst, &pkt, &caps()) else {
            self.stats.rx_malformed += 1;
            return;
        };
        match repr {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                if dst.is_multicast() {
                    return;
                }
                let reply = Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.send_icmp(now, dst, src, &reply, None);
            }
            Icmpv6Repr::Ndisc(nd) => {
                // RFC 4861 §7.1: hop limit must be 255.
                if hop_limit != 255 {
                    self.stats.rx_malformed += 1;
                    return;
                }
                self.receive_ndisc(now, nd, src, dst, src_mac);
            }
            Icmpv6Repr::DstUnreachable {
                reason,
                header,
                data,
            } => {
                // RFC 1122 §4.2.3.9 / RFC 5927 §4.1: a hard error aborts a connection that is
                // still opening, if the quoted sequence number is one we sent; otherwise
                // (established connections) it is a soft error and ignored.
                use smoltcp::wire::Icmpv6DstUnreachable as U;
                if header.next_header != IpProtocol::Tcp
                    || data.len() < 8
                    || !self.is_ours(&header.src_addr)
                {
                    return;
                }
                let hard = matches!(
                    reason,
                    U::PortUnreachable | U::AdminProhibit | U::RejectRoute | U::FailedPolicy
                );
                let sport = u16::from_be_bytes([data[0], data[1]]);
                let dport = u16::from_be_bytes([data[2], data[3]]);
                let seq = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                let key = ConnKey(header.src_addr, sport, header.dst_addr, dport);
                if let (true, Some(&idx)) = (hard, self.demux.get(&key)) {
                    if let Some(t) = self.slots[idx as usize].tcb.as_mut() {
                        t.on_hard_icmp_error(seq);
                    }
                    self.mark_ready(idx);
                    self.after_tcb_event(idx);
                }
            }
            Icmpv6Repr::PktTooBig { mtu, header, .. } => {
                // RFC 8201 §4: never below 1280.
                let mtu = (mtu as usize).max(MIN_MTU).min(self.cfg.mtu);
                let target = header.dst_addr;
                let cur = self.pmtu.get(&target).map(|p| p.0).unwrap_or(self.cfg.mtu);
                if mtu < cur {
                    self.stats.pmtu_updates += 1;
                    self.set_path_mtu(now, target, mtu);
                }
            }
            _ => {}
        }
    }

    fn receive_ndisc(
        &mut self,
        now: Instant,
        nd: NdiscRepr<'_>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        _src_mac: Option<[u8; 6]>,
    ) {
        match nd {
            NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            } => {
                if !self.owns_on_link(&target_addr) {
                    return;
                }
                let dad = src.is_unspecified();
                if let (Some(ll), false) = (lladdr, dad) {
                    if ll.len() == 6 {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(ll.as_bytes());
                        if let Some((m, q)) = self.nd.learn(now, src, mac, false, true, true) {
                            self.release_queued(m, q);
                        }
                    }
                }
                let _ = dst;
                // RFC 4861 §7.2.4: solicited NA with the override flag; to all-nodes for DAD.
                let (to, flags) = if dad {
                    (ALL_NODES, NdiscNeighborFlags::OVERRIDE)
                } else {
                    (
                        src,
                        NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
                    )
                };
                let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                    flags,
                    target_addr,
                    lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
                });
                self.send_icmp(now, target_addr, to, &na, Some(255));
            }
            NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => {
                let Some(ll) = lladdr else { return };
                if ll.len() != 6 {
                    return;
                }
                let mut mac = [0u8; 6];
                mac.copy_from_slice(ll.as_bytes());
                if let Some((m, q)) = self.nd.learn(
                    now,
                    target_addr,
                    mac,
                    flags.contains(NdiscNeighborFlags::SOLICITED),
                    flags.contains(NdiscNeighborFlags::OVERRIDE),
                    false,
                ) {
                    self.release_queued(m, q);
                }
            }
            _ => {}
        }
    }

    fn release_queued(&mut self, mac: [u8; 6], q: VecDeque<Vec<u8>>) {
        for mut f in q {
            f[0..6].copy_from_slice(&mac);
            self.ctrl.push_back(f);
        }
    }

    fn receive_udp(
        &mut self,
        now: Instant,
        payload: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        whole: &[u8],
    ) {
        let Ok(pkt) = UdpPacket::new_checked(payload) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let Ok(repr) = UdpRepr::parse(&pkt, &IpAddress::Ipv6(src), &IpAddress::Ipv6(dst), &caps())
        else {
            self.stats.rx_bad_checksum += 1;
            return;
        };
        let sock = self
            .udp_map
            .get(&repr.dst_port)
            .copied()
            .and_then(|i| self.udp.get_mut(i as usize))
            .and_then(|s| s.as_mut());
        match sock {
            Some(s) if s.local.ip().is_unspecified() || *s.local.ip() == dst => {
                if s.rx.len() >= UDP_QUEUE {
                    self.stats.udp_drops += 1;
                    return;
                }
                s.rx.push_back((
                    SocketAddrV6::new(src, repr.src_port, 0, 0),
                    pkt.payload().to_vec(),
                ));
                self.stats.udp_rx += 1;
            }
            _ => {
                self.stats.udp_drops += 1;
                if !dst.is_multicast() {
                    // RFC 4443 §3.1 code 4: port unreachable.
                    self.icmp_error(now, whole, 1, 4, 0);
                }
            }
        }
    }

    fn receive_tcp(&mut self, now: Instant, payload: &[u8], src: Ipv6Addr, dst: Ipv6Addr) {
        if dst.is_multicast() {
            self.stats.rx_malformed += 1;
            return;
        }
        let Ok(pkt) = TcpPacket::new_checked(payload) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if !pkt.verify_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst)) {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let Ok(repr) = TcpRepr::parse(
            &pkt,
            &IpAddress::Ipv6(src),
            &IpAddress::Ipv6(dst),
            &ChecksumCapabilities::ignored(),
        ) else {
            self.stats.rx_malformed += 1;
            return;
        };
        self.stats.tcp_rx_segments += 1;
        let seg = SegIn {
            seq: repr.seq_number.0 as u32,
            ack: repr.ack_number.map(|a| a.0 as u32),
            syn: repr.control == TcpControl::Syn,
            fin: repr.control == TcpControl::Fin,
            rst: repr.control == TcpControl::Rst,
            window: repr.window_len,
            mss: repr.max_seg_size,
            wscale: repr.window_scale,
            sack_permitted: repr.sack_permitted,
            sack: repr.sack_ranges,
            ts: repr.timestamp.map(|t| (t.tsval, t.tsecr)),
            payload: repr.payload,
        };
        let key = ConnKey(dst, repr.dst_port, src, repr.src_port);
        if let Some(&idx) = self.demux.get(&key) {
            if let Some(t) = self.slots[idx as usize].tcb.as_mut() {
                let before = t.snd_una;
                t.on_segment(now, &seg);
                if t.snd_una != before {
                    self.nd.confirm(now, src);
                }
            }
            self.mark_ready(idx);
            self.after_tcb_event(idx);
            return;
        }
        if let Some((_, held)) = self.frozen.get_mut(&key) {
            // A frozen connection: never answered with RST; its packets are held for the node
            // that thaws it (`tcp_take_held`), up to a bound.
            if held.len() < MAX_HELD {
                let mut pkt = Vec::with_capacity(IP6_HDR + payload.len());
                pkt.extend_from_slice(&[0x60, 0, 0, 0]);
                pkt.extend_from_slice(&(payload.len().min(65535) as u16).to_be_bytes());
                pkt.extend_from_slice(&[6, 64]);
                pkt.extend_from_slice(&src.octets());
                pkt.extend_from_slice(&dst.octets());
                pkt.extend_from_slice(payload);
                held.push(pkt);
                self.stats.tcp_held += 1;
            } else {
                self.stats.tcp_no_socket += 1;
            }
            return;
        }
        let listener = self
            .listen_map
            .get(&(dst, repr.dst_port))
            .or_else(|| self.listen_map.get(&(Ipv6Addr::UNSPECIFIED, repr.dst_port)))
            .copied();
        if let Some(l) = listener {
            if seg.syn && seg.ack.is_none() && !seg.rst {
                self.accept_syn(now, l, &seg, dst, repr.dst_port, src, repr.src_port);
                return;
            }
        }
        self.stats.tcp_no_socket += 1;
        tracing::debug!(
            %src, sport = repr.src_port, %dst, dport = repr.dst_port, seq = seg.seq, ack = ?seg.ack,
            syn = seg.syn, rst = seg.rst, len = seg.seg_len(),
            "TCP segment for no connection"
        );
        if !seg.rst {
            // RFC 9293 §3.10.7.1: answer segments for no connection with RST.
            let (seq, ack) = match seg.ack {
                Some(a) => (a, None),
                None => (0, Some(seg.seq.wrapping_add(seg.seg_len()))),
            };
            let s = SegOut {
                seq,
                ack,
                rst: true,
                ..SegOut::default()
            };
            let local = SocketAddrV6::new(dst, repr.dst_port, 0, 0);
            let remote = SocketAddrV6::new(src, repr.src_port, 0, 0);
            self.emit_tcp_ctrl(now, &local, &remote, &s);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_syn(
        &mut self,
        now: Instant,
        l: u32,
        seg: &SegIn<'_>,
        dst: Ipv6Addr,
        dport: u16,
        src: Ipv6Addr,
        sport: u16,
    ) {
        let Some(Some(lst)) = self.listeners.get(l as usize) else {
            return;
        };
        if lst.accept.len() + lst.embryonic >= lst.backlog {
            self.stats.tcp_backlog_drops += 1;
            return;
        }
        let cfg = lst.cfg.clone();
        let local = SocketAddrV6::new(dst, dport, 0, 0);
        let remote = SocketAddrV6::new(src, sport, 0, 0);
        let iss = self.isn.iss_for(now, &local, &remote);
        let mss = self.mss_for(&dst, &src);
        let mut tcb = Tcb::accept_syn(local, remote, cfg, iss, mss, now, seg);
        tcb.listener = Some(l as usize);
        if let Some(Some(lst)) = self.listeners.get_mut(l as usize) {
            lst.embryonic += 1;
        }
        let idx = self.insert_tcb(tcb);
        self.after_tcb_event(idx);
    }

    /// The MSS of a connection from `local` to `dst`, from the path MTU towards `dst`.
    fn mss_for(&self, local: &Ipv6Addr, dst: &Ipv6Addr) -> u32 {
        let mtu = self.pmtu.get(dst).map(|p| p.0).unwrap_or(self.cfg.mtu);
        self.mss_at(local, mtu)
    }

    /// The MSS for a path MTU: IPv6 and TCP headers off (options are subtracted when sending,
    /// RFC 9293 §3.7.1), and, for a home address served away from home, the Home Address
    /// option every segment carries (RFC 6275 §6.3, §11.3.1).
    fn mss_at(&self, local: &Ipv6Addr, mtu: usize) -> u32 {
        let hao = if self.home_addrs.contains(local) {
            MOBILITY_EXT_LEN
        } else {
            0
        };
        mtu.saturating_sub(IP6_HDR + 20 + hao) as u32
    }

    fn insert_tcb(&mut self, tcb: Tcb) -> u32 {
        let key = ConnKey::of(&tcb.local, &tcb.remote);
        let idx = match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i as usize];
                s.tcb = Some(tcb);
                s.released = false;
                s.armed = None;
                i
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    tcb: Some(tcb),
                    released: false,
                    in_dirty: false,
                    in_ready: false,
                    armed: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.demux.insert(key, idx);
        idx
    }

    // ---------------------------------------------------------------- output

    /// Hand every frame that is ready to `emit`.
    pub fn transmit(&mut self, now: Instant, emit: &mut dyn FnMut(&[u8])) {
        self.now = self.now.max(now);
        while let Some(f) = self.ctrl.pop_front() {
            emit(&f);
            self.stats.tx_frames += 1;
            self.recycle(f);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            self.slots[idx as usize].in_dirty = false;
            if self.slots[idx as usize].tcb.is_none() {
                continue;
            }
            self.drain_tcb(now, idx, emit);
            self.after_tcb_event_quiet(idx);
        }
        if self.dirty.is_empty() {
            // Reuse the allocation.
            self.dirty = dirty;
            self.dirty.clear();
        }
        while let Some(f) = self.ctrl.pop_front() {
            emit(&f);
            self.stats.tx_frames += 1;
            self.recycle(f);
        }
    }

    fn recycle(&mut self, mut f: Vec<u8>) {
        if self.pool.len() < 256 {
            f.clear();
            self.pool.push(f);
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(ETH_HDR + self.cfg.mtu))
    }

    fn drain_tcb(&mut self, now: Instant, idx: u32, emit: &mut dyn FnMut(&[u8])) {
        // Bound the burst per call so one connection cannot starve the others.
        for _ in 0..256 {
            let slot = &mut self.slots[idx as usize];
            let Some(tcb) = slot.tcb.as_mut() else { return };
            let Some(seg) = tcb.next_segment(now) else {
                return;
            };
            let (local, remote) = (tcb.local, tcb.remote);
            let mut buf = std::mem::take(&mut self.scratch);
            {
                let Some(tcb) = self.slots[idx as usize].tcb.as_ref() else {
                    return;
                };
                let payload = tcb.payload(&seg);
                build_tcp_frame(
                    &mut buf,
                    self.cfg.mac,
                    self.cfg.hop_limit,
                    &local,
                    &remote,
                    &seg,
                    payload,
                );
            }
            self.send_frame(now, buf, *remote.ip(), Some(emit));
        }
        self.mark_dirty(idx);
    }

    /// Fill in the destination MAC and send (or queue pending resolution). `buf` is returned
    /// to the scratch slot.
    fn send_frame(
        &mut self,
        now: Instant,
        mut buf: Vec<u8>,
        dst: Ipv6Addr,
        emit: Option<Emit<'_>>,
    ) {
        let dst = if self.cn.is_some() || self.hook.is_some() {
            match self.mobility_out(now, &mut buf) {
                MobilityOut::Unchanged => dst,
                MobilityOut::Rewritten(d) => d,
                MobilityOut::TooBig { peer, mtu } => {
                    // The added header would push it past the link MTU: shrink the path MTU
                    // so TCP re-segments (the dropped segment is resent, RFC 8201 §5.4).
                    self.stats.pmtu_updates += 1;
                    self.set_path_mtu(now, peer, mtu);
                    buf.clear();
                    self.scratch = buf;
                    return;
                }
            }
        } else {
            dst
        };
        let hop = self.next_hop(&dst);
        let mac = if hop.is_multicast() {
            Some(multicast_mac(hop))
        } else {
            match self.nd.lookup(now, hop) {
                Lookup::Ready(m) => Some(m),
                Lookup::Pending(action) => {
                    if let Some(a) = action {
                        self.solicit(a);
                    }
                    None
                }
            }
        };
        match (mac, emit) {
            (Some(m), Some(emit)) => {
                buf[0..6].copy_from_slice(&m);
                emit(&buf);
                self.stats.tx_frames += 1;
                buf.clear();
                self.scratch = buf;
            }
            (Some(m), None) => {
                buf[0..6].copy_from_slice(&m);
                self.ctrl.push_back(buf);
            }
            (None, _) => {
                let copy = buf.clone();
                if !self.nd.enqueue(hop, copy) {
                    self.stats.nd_drops += 1;
                }
                buf.clear();
                self.scratch = buf;
            }
        }
    }

    /// Route optimisation on output (RFC 6275 §9.3.2 and §11.3.1): a packet to a home address
    /// bound at our correspondent goes to the care-of address with a type 2 routing header; a
    /// packet from a home address our mobile role serves away from home goes out from the
    /// care-of address with a Home Address option. Upper-layer checksums keep the home
    /// addresses (RFC 8200 §8.1, RFC 6275 §6.3), so only headers change. Returns the new
    /// IPv6 destination when it changed.
    fn mobility_out(&mut self, now: Instant, buf: &mut Vec<u8>) -> MobilityOut {
        self.mobility_rewrite(now, buf)
            .unwrap_or(MobilityOut::Unchanged)
    }

    fn mobility_rewrite(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<MobilityOut> {
        if buf.len() < ETH_HDR + IP6_HDR {
            return None;
        }
        let ip = &buf[ETH_HDR..];
        let nh = ip[6];
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
        if dst.is_multicast() || dst.segments()[0] & 0xffc0 == 0xfe80 {
            return None;
        }
        let upper = &ip[IP6_HDR..];
        // Only upper-layer packets we built (no Mobility Header, §6.1; no Neighbour Discovery).
        let flow = match nh {
            6 | 17 if upper.len() >= 4 => Some(FlowKey {
                next_header: nh,
                local_port: u16::from_be_bytes([upper[0], upper[1]]),
                remote_port: u16::from_be_bytes([upper[2], upper[3]]),
            }),
            58 if upper.first().is_some_and(|t| !(133..=137).contains(t)) => None,
            _ => return None,
        };
        let t = now;
        let care_of = self
            .cn
            .as_mut()
            .and_then(|cn| cn.route_out(t, dst, flow))
            .map(|r| r.care_of);
        let from = self
            .hook
            .as_mut()
            .and_then(|h| h.outgoing_from_home(now, src, dst));
        if care_of.is_none() && from.is_none() {
            return None;
        }
        let mut ext = Vec::with_capacity(2 * MOBILITY_EXT_LEN);
        let mut first_nh = nh;
        if let Some(coa) = from {
            // RFC 6275 §6.3: Destination Options header with PadN then the Home Address option
            // (alignment 8n+6).
            let mut d = vec![first_nh, 2, 1, 2, 0, 0, 201, 16];
            d.extend_from_slice(&src.octets());
            first_nh = 60;
            ext = d;
            buf[ETH_HDR + 8..ETH_HDR + 24].copy_from_slice(&coa.octets());
        }
        if let Some(coa) = care_of {
            // RFC 6275 §6.4: type 2 routing header, one segment left, carrying the home address;
            // it precedes the destination options (RFC 8200 §4.1 order).
            let mut r = vec![first_nh, 2, 2, 1, 0, 0, 0, 0];
            r.extend_from_slice(&dst.octets());
            r.extend_from_slice(&ext);
            ext = r;
            first_nh = 43;
            buf[ETH_HDR + 24..ETH_HDR + 40].copy_from_slice(&coa.octets());
        }
        if buf.len() - ETH_HDR + ext.len() > self.cfg.mtu {
            // The connection's peer is the IPv6 destination as built (home address or
            // correspondent): that is the path MTU entry TCP looks up.
            return Some(MobilityOut::TooBig {
                peer: dst,
                mtu: self.cfg.mtu - ext.len(),
            });
        }
        let plen = u16::from_be_bytes([buf[ETH_HDR + 4], buf[ETH_HDR + 5]]) as usize + ext.len();
        buf[ETH_HDR + 4..ETH_HDR + 6].copy_from_slice(&(plen.min(65535) as u16).to_be_bytes());
        buf[ETH_HDR + 6] = first_nh;
        let at = ETH_HDR + IP6_HDR;
        buf.splice(at..at, ext);
        Some(MobilityOut::Rewritten(care_of.unwrap_or(dst)))
    }

    /// Set the path MTU towards `dst` (e.g. lower it by the 24 octets of a routing header when
    /// packets to it will carry one): later segments of connections to it shrink to fit.
    pub fn set_path_mtu(&mut self, now: Instant, dst: Ipv6Addr, mtu: usize) {
        let mtu = mtu.clamp(MIN_MTU, self.cfg.mtu);
        self.pmtu.insert(dst, (mtu, now));
        let idxs: Vec<u32> = self
            .demux
            .iter()
            .filter(|(k, _)| k.2 == dst)
            .map(|(_, v)| *v)
            .collect();
        for idx in idxs {
            let local = self.slots[idx as usize].tcb.as_ref().map(|t| *t.local.ip());
            let mss = local.map(|l| self.mss_at(&l, mtu));
            if let (Some(t), Some(mss)) = (self.slots[idx as usize].tcb.as_mut(), mss) {
                t.on_path_mtu(mss);
            }
            self.after_tcb_event(idx);
        }
    }

    /// The correspondent node's binding cache entry for a home address (diagnostics, tests).
    pub fn correspondent(&self) -> Option<&Correspondent> {
        self.cn.as_ref()
    }

    fn next_hop(&self, dst: &Ipv6Addr) -> Ipv6Addr {
        match self.cfg.gateway {
            Some(gw) if !self.on_link(dst) => gw,
            _ => *dst,
        }
    }

    fn on_link(&self, dst: &Ipv6Addr) -> bool {
        let d = dst.segments();
        if d[0] & 0xffc0 == 0xfe80 || dst.is_multicast() {
            return true;
        }
        self.cfg.addrs.iter().any(|a| a.segments()[..4] == d[..4])
    }

    fn solicit(&mut self, a: NdAction) {
        let (target, to) = match a {
            NdAction::SolicitMulticast(t) => (t, solicited_node(t)),
            NdAction::SolicitUnicast(t, _) => (t, t),
        };
        let ns = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
        });
        let src = self.source_for(&target);
        let now = self.now;
        match a {
            NdAction::SolicitUnicast(_, mac) => {
                let mut buf = self.buffer();
                build_icmp_frame(&mut buf, self.cfg.mac, 255, src, to, &ns);
                buf[0..6].copy_from_slice(&mac);
                self.ctrl.push_back(buf);
            }
            NdAction::SolicitMulticast(_) => self.send_icmp(now, src, to, &ns, Some(255)),
        }
    }

    fn send_icmp(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        repr: &Icmpv6Repr<'_>,
        hop_limit: Option<u8>,
    ) {
        let mut buf = self.buffer();
        build_icmp_frame(
            &mut buf,
            self.cfg.mac,
            hop_limit.unwrap_or(self.cfg.hop_limit),
            src,
            dst,
            repr,
        );
        self.send_frame(now, buf, dst, None);
    }

    /// Send a raw IPv6 packet (without link header), e.g. a Mobility Header message.
    pub fn send_ipv6_packet(&mut self, now: Instant, pkt: &[u8]) {
        let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
            return;
        };
        let dst = ip.dst_addr();
        let mut buf = self.buffer();
        buf.resize(ETH_HDR, 0);
        EthernetRepr {
            src_addr: EthernetAddress(self.cfg.mac),
            dst_addr: EthernetAddress([0; 6]),
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        buf.extend_from_slice(pkt);
        self.send_frame(now, buf, dst, None);
    }

    fn icmp_error_allowed(&mut self, now: Instant) -> bool {
        if now - self.icmp_budget.0 >= Duration::from_secs(1) {
            self.icmp_budget = (now, 0);
        }
        if self.icmp_budget.1 >= ICMP_ERRORS_PER_SEC {
            return false;
        }
        self.icmp_budget.1 += 1;
        true
    }

    fn param_problem(&mut self, now: Instant, pkt: &[u8], code: u8, pointer: u32) {
        self.icmp_error(now, pkt, 4, code, pointer);
    }

    /// RFC 4443 §2.4: errors quote as much of the packet as fits in the minimum MTU, never
    /// answer a multicast destination (except as allowed) or an unspecified source.
    fn icmp_error(&mut self, now: Instant, pkt: &[u8], ty: u8, code: u8, pointer: u32) {
        if pkt.len() < IP6_HDR {
            return;
        }
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).unwrap_or([0; 16]));
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).unwrap_or([0; 16]));
        if src.is_unspecified()
            || src.is_multicast()
            || (dst.is_multicast() && !(ty == 4 && code == 2))
        {
            return;
        }
        if !self.icmp_error_allowed(now) {
            return;
        }
        let quote = &pkt[..pkt.len().min(MIN_MTU - IP6_HDR - 8)];
        let from = if self.is_ours(&dst) {
            dst
        } else {
            self.source_for(&src)
        };
        let mut body = Vec::with_capacity(8 + quote.len());
        body.extend_from_slice(&[ty, code, 0, 0]);
        body.extend_from_slice(&pointer.to_be_bytes());
        body.extend_from_slice(quote);
        let mut buf = self.buffer();
        build_ip_frame(
            &mut buf,
            self.cfg.mac,
            self.cfg.hop_limit,
            from,
            src,
            58,
            body.len(),
        );
        buf.extend_from_slice(&body);
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[ETH_HDR + IP6_HDR..]);
        p.fill_checksum(&from, &src);
        self.send_frame(now, buf, src, None);
    }

    /// Unsolicited Neighbour Advertisements with the override flag for all our addresses
    /// (RFC 4861 §7.2.6), e.g. after taking an address over from another node.
    pub fn announce(&mut self, now: Instant) {
        self.now = self.now.max(now);
        for a in self.cfg.addrs.clone() {
            self.announce_one(now, a);
        }
    }

    fn announce_one(&mut self, now: Instant, a: Ipv6Addr) {
        let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: a,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
        });
        self.send_icmp(now, a, ALL_NODES, &na, Some(255));
    }

    fn emit_tcp_ctrl(
        &mut self,
        now: Instant,
        local: &SocketAddrV6,
        remote: &SocketAddrV6,
        s: &SegOut,
    ) {
        let mut buf = self.buffer();
        build_tcp_frame(
            &mut buf,
            self.cfg.mac,
            self.cfg.hop_limit,
            local,
            remote,
            s,
            (&[], &[]),
        );
        self.stats.tcp_tx_segments += 1;
        self.send_frame(now, buf, *remote.ip(), None);
    }

    // ---------------------------------------------------------------- TCP API

    fn tcb(&self, h: TcpHandle) -> Result<&Tcb, Error> {
        let s = self.slots.get(h.idx as usize).ok_or(Error::InvalidHandle)?;
        if s.gen != h.gen || s.released {
            return Err(Error::InvalidHandle);
        }
        s.tcb.as_ref().ok_or(Error::InvalidHandle)
    }

    fn tcb_mut(&mut self, h: TcpHandle) -> Result<&mut Tcb, Error> {
        let s = self
            .slots
            .get_mut(h.idx as usize)
            .ok_or(Error::InvalidHandle)?;
        if s.gen != h.gen || s.released {
            return Err(Error::InvalidHandle);
        }
        s.tcb.as_mut().ok_or(Error::InvalidHandle)
    }

    fn handle(&self, idx: u32) -> TcpHandle {
        TcpHandle {
            idx,
            gen: self.slots[idx as usize].gen,
        }
    }

    /// Listen on `local` (unspecified address: all of ours) with the default TCP settings.
    pub fn tcp_listen(
        &mut self,
        local: SocketAddrV6,
        backlog: usize,
    ) -> Result<ListenHandle, Error> {
        let cfg = self.cfg.tcp.clone();
        self.tcp_listen_with(local, backlog, cfg)
    }

    /// Listen with explicit TCP settings for accepted connections.
    pub fn tcp_listen_with(
        &mut self,
        local: SocketAddrV6,
        backlog: usize,
        cfg: TcpConfig,
    ) -> Result<ListenHandle, Error> {
        if !local.ip().is_unspecified() && !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        let key = (*local.ip(), local.port());
        if self.listen_map.contains_key(&key) {
            return Err(Error::AddrInUse);
        }
        let l = Listener {
            local,
            backlog: backlog.max(1),
            accept: VecDeque::new(),
            embryonic: 0,
            cfg,
        };
        let idx = put_in_free_slot(&mut self.listeners, l);
        self.listen_map.insert(key, idx as u32);
        Ok(ListenHandle(idx as u32))
    }

    /// Stop listening. Connections not yet accepted are reset.
    pub fn tcp_unlisten(&mut self, l: ListenHandle) {
        if let Some(slot) = self.listeners.get_mut(l.0 as usize) {
            if let Some(lst) = slot.take() {
                self.listen_map.remove(&(*lst.local.ip(), lst.local.port()));
                for idx in lst.accept {
                    if let Some(t) = self.slots[idx as usize].tcb.as_mut() {
                        t.abort();
                    }
                    self.slots[idx as usize].released = true;
                    self.after_tcb_event(idx);
                }
            }
        }
    }

    /// Take the next established connection from a listener's queue.
    pub fn tcp_accept(&mut self, l: ListenHandle) -> Option<TcpHandle> {
        let idx = self
            .listeners
            .get_mut(l.0 as usize)?
            .as_mut()?
            .accept
            .pop_front()?;
        Some(self.handle(idx))
    }

    /// Active open from `local` (port 0: ephemeral) to `remote` with the default settings.
    pub fn tcp_connect(
        &mut self,
        now: Instant,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    ) -> Result<TcpHandle, Error> {
        let cfg = self.cfg.tcp.clone();
        self.tcp_connect_with(now, local, remote, cfg)
    }

    /// Active open with explicit settings.
    pub fn tcp_connect_with(
        &mut self,
        now: Instant,
        local: SocketAddrV6,
        remote: SocketAddrV6,
        cfg: TcpConfig,
    ) -> Result<TcpHandle, Error> {
        self.now = self.now.max(now);
        let ip = if local.ip().is_unspecified() {
            self.source_for(remote.ip())
        } else {
            *local.ip()
        };
        if !self.is_ours(&ip) {
            return Err(Error::AddrNotAvailable);
        }
        let port = if local.port() == 0 {
            self.ephemeral_port(&ip, &remote)?
        } else {
            local.port()
        };
        let local = SocketAddrV6::new(ip, port, 0, 0);
        if self.demux.contains_key(&ConnKey::of(&local, &remote)) {
            return Err(Error::AddrInUse);
        }
        let iss = self.isn.iss_for(now, &local, &remote);
        let mss = self.mss_for(&ip, remote.ip());
        let tcb = Tcb::connect(local, remote, cfg, iss, mss, now);
        let idx = self.insert_tcb(tcb);
        self.after_tcb_event(idx);
        self.mark_dirty(idx);
        Ok(self.handle(idx))
    }

    fn ephemeral_port(&mut self, ip: &Ipv6Addr, remote: &SocketAddrV6) -> Result<u16, Error> {
        for _ in 0..16384 {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p == u16::MAX { 49152 } else { p + 1 };
            let key = ConnKey(*ip, p, *remote.ip(), remote.port());
            if !self.demux.contains_key(&key) && !self.frozen.contains_key(&key) {
                return Ok(p);
            }
        }
        Err(Error::NoPorts)
    }

    /// The connection's state (`None` for a stale handle).
    pub fn tcp_state(&self, h: TcpHandle) -> Option<TcpState> {
        self.tcb(h).ok().map(|t| t.state())
    }

    /// Local and remote endpoints.
    pub fn tcp_endpoints(&self, h: TcpHandle) -> Option<(SocketAddrV6, SocketAddrV6)> {
        self.tcb(h).ok().map(|t| (t.local, t.remote))
    }

    fn check_error(t: &Tcb) -> Result<(), Error> {
        match t.error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Queue data; returns the bytes accepted (0: the send buffer is full for now).
    pub fn tcp_send(&mut self, h: TcpHandle, data: &[u8]) -> Result<usize, Error> {
        let t = self.tcb_mut(h)?;
        Self::check_error(t)?;
        if !matches!(
            t.state(),
            TcpState::Established | TcpState::CloseWait | TcpState::SynSent | TcpState::SynReceived
        ) || t.fin_queued
        {
            return Err(Error::InvalidState);
        }
        let n = t.send(data);
        if n > 0 {
            self.mark_dirty(h.idx);
        }
        Ok(n)
    }

    /// Room in the send buffer.
    pub fn tcp_send_space(&self, h: TcpHandle) -> usize {
        self.tcb(h).map(|t| t.send_space()).unwrap_or(0)
    }

    /// Bytes queued for sending and not yet acknowledged (0: drained).
    pub fn tcp_send_queued(&self, h: TcpHandle) -> usize {
        self.tcb(h).map(|t| t.send_queued()).unwrap_or(0)
    }

    /// Bytes ready to read.
    pub fn tcp_recv_available(&self, h: TcpHandle) -> usize {
        self.tcb(h).map(|t| t.recv_available()).unwrap_or(0)
    }

    /// Read data: `Ok(0)` when nothing is ready yet, `Err(Eof)` after the peer's FIN.
    pub fn tcp_recv(&mut self, h: TcpHandle, buf: &mut [u8]) -> Result<usize, Error> {
        let t = self.tcb_mut(h)?;
        if t.recv_available() == 0 {
            Self::check_error(t)?;
            if t.at_eof() {
                return Err(Error::Eof);
            }
            if matches!(t.state(), TcpState::Closed) {
                return Err(Error::Eof);
            }
            return Ok(0);
        }
        let n = t.recv(buf);
        if t.ack_now {
            self.mark_dirty(h.idx);
        }
        Ok(n)
    }

    /// Close the sending side: a FIN follows the queued data.
    pub fn tcp_close(&mut self, h: TcpHandle) -> Result<(), Error> {
        let t = self.tcb_mut(h)?;
        t.close();
        self.after_tcb_event(h.idx);
        self.mark_dirty(h.idx);
        Ok(())
    }

    /// Abort with RST.
    pub fn tcp_abort(&mut self, h: TcpHandle) -> Result<(), Error> {
        let t = self.tcb_mut(h)?;
        t.abort();
        self.mark_dirty(h.idx);
        Ok(())
    }

    /// Give the handle up. A connection the application closed finishes on its own; one still
    /// open is aborted.
    pub fn tcp_release(&mut self, h: TcpHandle) {
        let Ok(t) = self.tcb_mut(h) else { return };
        if !t.fin_queued && !matches!(t.state(), TcpState::Closed | TcpState::TimeWait) {
            t.abort();
        }
        self.slots[h.idx as usize].released = true;
        self.mark_dirty(h.idx);
        self.after_tcb_event(h.idx);
    }

    /// Solicit an immediate ACK from the peer for everything sent (see the probe in RFC 9293
    /// §3.8.4): a drain before a handoff then ends one round trip after the last segment,
    /// not after the peer's delayed-ACK timer. `Ok(false)` while data is still unsent (ask
    /// again later) or nothing is unacknowledged.
    pub fn tcp_solicit_ack(&mut self, h: TcpHandle) -> Result<bool, Error> {
        let queued = self.tcb_mut(h)?.solicit_ack();
        if queued {
            self.after_tcb_event(h.idx);
            self.mark_dirty(h.idx);
        }
        Ok(queued)
    }

    /// Configure Nagle on a connection.
    pub fn tcp_set_nodelay(&mut self, h: TcpHandle, nodelay: bool) -> Result<(), Error> {
        self.tcb_mut(h)?.cfg.nagle = !nodelay;
        Ok(())
    }

    /// Freeze: stop the connection (no more output, no timers) and return its state. Its
    /// packets arriving afterwards are dropped silently (not reset) until [`Self::tcp_thaw`]
    /// brings it back here or [`Self::tcp_forget_frozen`] is called.
    pub fn tcp_freeze(&mut self, now: Instant, h: TcpHandle) -> Result<ConnState, Error> {
        let t = self.tcb(h)?;
        let state = t.to_state(now).ok_or(Error::InvalidState)?;
        let key = ConnKey::of(&t.local, &t.remote);
        self.frozen.insert(key, (now, Vec::new()));
        let slot = &mut self.slots[h.idx as usize];
        slot.tcb = None;
        self.demux.remove(&key);
        self.free_slot(h.idx);
        Ok(state)
    }

    /// Stop holding off packets of a frozen connection (it now lives elsewhere). Returns the
    /// packets still held.
    pub fn tcp_forget_frozen(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Vec<Vec<u8>> {
        self.frozen
            .remove(&ConnKey::of(&local, &remote))
            .map(|f| f.1)
            .unwrap_or_default()
    }

    /// Take the packets that reached a frozen connection since its freeze (IPv6 packets, TCP
    /// inside, checksums valid for their addresses). Forward them to the node that thawed it,
    /// which feeds them to [`Interface::receive_ipv6`]: the handoff gap then costs the client
    /// no retransmission.
    pub fn tcp_take_held(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Vec<Vec<u8>> {
        self.frozen
            .get_mut(&ConnKey::of(&local, &remote))
            .map(|f| std::mem::take(&mut f.1))
            .unwrap_or_default()
    }

    /// Reserve the connection `local` ↔ `remote` for a thaw to come: its packets are held
    /// from now on (as a frozen connection's, [`Self::tcp_take_held`]) until
    /// [`Self::tcp_thaw`] or [`Self::tcp_forget_frozen`]. Fails when the local address is not
    /// ours or a live connection has these ends; a connection frozen here stays held.
    pub fn tcp_hold(
        &mut self,
        now: Instant,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    ) -> Result<(), Error> {
        if !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        let key = ConnKey::of(&local, &remote);
        if self.demux.contains_key(&key) {
            return Err(Error::AddrInUse);
        }
        self.frozen.entry(key).or_insert_with(|| (now, Vec::new()));
        Ok(())
    }

    /// Resume a frozen connection on this interface. The local address must be ours.
    pub fn tcp_thaw(&mut self, now: Instant, state: &ConnState) -> Result<TcpHandle, Error> {
        self.now = self.now.max(now);
        state.validate()?;
        let local = state.local();
        let remote = state.remote();
        if !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        let key = ConnKey::of(&local, &remote);
        if self.demux.contains_key(&key) {
            return Err(Error::AddrInUse);
        }
        self.frozen.remove(&key);
        let mut tcb = Tcb::from_state(state, &self.cfg.tcp, now);
        let mss = self.mss_for(local.ip(), remote.ip());
        if mss < tcb.snd_mss {
            tcb.snd_mss = mss;
        }
        let idx = self.insert_tcb(tcb);
        self.after_tcb_event(idx);
        self.mark_dirty(idx);
        Ok(self.handle(idx))
    }

    /// Number of live connections (any state but closed-and-released).
    pub fn tcp_connection_count(&self) -> usize {
        self.demux.len()
    }

    // ---------------------------------------------------------------- UDP API

    /// Bind a UDP socket (unspecified address: all of ours).
    pub fn udp_bind(&mut self, local: SocketAddrV6) -> Result<UdpHandle, Error> {
        if !local.ip().is_unspecified() && !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        if local.port() == 0 {
            return Err(Error::AddrNotAvailable);
        }
        if self.udp_map.contains_key(&local.port()) {
            return Err(Error::AddrInUse);
        }
        let s = UdpSocket {
            local,
            rx: VecDeque::new(),
        };
        let idx = put_in_free_slot(&mut self.udp, s);
        self.udp_map.insert(local.port(), idx as u32);
        Ok(UdpHandle(idx as u32))
    }

    /// Close a UDP socket.
    pub fn udp_close(&mut self, h: UdpHandle) {
        if let Some(slot) = self.udp.get_mut(h.0 as usize) {
            if let Some(s) = slot.take() {
                self.udp_map.remove(&s.local.port());
            }
        }
    }

    /// Next received datagram: (length copied, source).
    pub fn udp_recv_from(
        &mut self,
        h: UdpHandle,
        buf: &mut [u8],
    ) -> Result<Option<(usize, SocketAddrV6)>, Error> {
        let s = self
            .udp
            .get_mut(h.0 as usize)
            .and_then(|s| s.as_mut())
            .ok_or(Error::InvalidHandle)?;
        Ok(s.rx.pop_front().map(|(from, d)| {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            (n, from)
        }))
    }

    /// Send a datagram, fragmenting it (RFC 8200 §4.5) when it exceeds the path MTU.
    pub fn udp_send_to(
        &mut self,
        now: Instant,
        h: UdpHandle,
        data: &[u8],
        dst: SocketAddrV6,
    ) -> Result<(), Error> {
        self.now = self.now.max(now);
        let s = self
            .udp
            .get(h.0 as usize)
            .and_then(|s| s.as_ref())
            .ok_or(Error::InvalidHandle)?;
        let src = if s.local.ip().is_unspecified() {
            self.source_for(dst.ip())
        } else {
            *s.local.ip()
        };
        let sport = s.local.port();
        let udp_len = 8 + data.len();
        if udp_len > 65535 {
            return Err(Error::TooLarge);
        }
        let mut dgram = vec![0u8; udp_len];
        {
            let mut p = UdpPacket::new_unchecked(&mut dgram[..]);
            UdpRepr {
                src_port: sport,
                dst_port: dst.port(),
            }
            .emit(
                &mut p,
                &IpAddress::Ipv6(src),
                &IpAddress::Ipv6(*dst.ip()),
                data.len(),
                |b| b.copy_from_slice(data),
                &caps(),
            );
        }
        let mtu = self
            .pmtu
            .get(dst.ip())
            .filter(|p| now - p.1 < PMTU_AGE)
            .map(|p| p.0)
            .unwrap_or(self.cfg.mtu);
        if IP6_HDR + udp_len <= mtu {
            let mut buf = self.buffer();
            build_ip_frame(
                &mut buf,
                self.cfg.mac,
                self.cfg.hop_limit,
                src,
                *dst.ip(),
                17,
                udp_len,
            );
            buf.extend_from_slice(&dgram);
            self.send_frame(now, buf, *dst.ip(), None);
            return Ok(());
        }
        // Fragment: each fragment's data a multiple of 8 except the last.
        self.frag_ident = self.frag_ident.wrapping_add(1);
        let ident = self.frag_ident;
        let per = (mtu - IP6_HDR - 8) & !7;
        let mut off = 0;
        while off < dgram.len() {
            let len = per.min(dgram.len() - off);
            let more = off + len < dgram.len();
            let mut buf = self.buffer();
            build_ip_frame(
                &mut buf,
                self.cfg.mac,
                self.cfg.hop_limit,
                src,
                *dst.ip(),
                44,
                8 + len,
            );
            buf.push(17);
            buf.push(0);
            let fo = (off as u16) | u16::from(more);
            buf.extend_from_slice(&fo.to_be_bytes());
            buf.extend_from_slice(&ident.to_be_bytes());
            buf.extend_from_slice(&dgram[off..off + len]);
            self.send_frame(now, buf, *dst.ip(), None);
            off += len;
        }
        Ok(())
    }

    /// Neighbour cache (diagnostics).
    pub fn neighbors(&self) -> &NeighborCache {
        &self.nd
    }
}

impl IsnGenerator {
    fn iss_for(&self, now: Instant, local: &SocketAddrV6, remote: &SocketAddrV6) -> u32 {
        self.isn(now, local, remote)
    }
}

/// Store `item` in the first empty slot (or a new one); returns its index.
fn put_in_free_slot<T>(v: &mut Vec<Option<T>>, item: T) -> usize {
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

/// Length of the extension header at `off`: (next header, bytes).
fn ext_len(pkt: &[u8], off: usize) -> Option<(u8, usize)> {
    if pkt.len() < off + 8 {
        return None;
    }
    let len = (pkt[off + 1] as usize + 1) * 8;
    if pkt.len() < off + len {
        return None;
    }
    Some((pkt[off], len))
}

fn build_ip_frame(
    buf: &mut Vec<u8>,
    mac: [u8; 6],
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    payload_len: usize,
) {
    buf.clear();
    buf.resize(ETH_HDR + IP6_HDR, 0);
    EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress([0; 6]),
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..ETH_HDR]));
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::from(nh),
        payload_len,
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut buf[ETH_HDR..]));
}

fn build_icmp_frame(
    buf: &mut Vec<u8>,
    mac: [u8; 6],
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    repr: &Icmpv6Repr<'_>,
) {
    let len = repr.buffer_len();
    build_ip_frame(buf, mac, hop_limit, src, dst, 58, len);
    buf.resize(ETH_HDR + IP6_HDR + len, 0);
    let mut p = Icmpv6Packet::new_unchecked(&mut buf[ETH_HDR + IP6_HDR..]);
    repr.emit(&src, &dst, &mut p, &caps());
}

/// Build an Ethernet + IPv6 + TCP frame into `buf` (destination MAC left zero).
fn build_tcp_frame(
    buf: &mut Vec<u8>,
    mac: [u8; 6],
    hop_limit: u8,
    local: &SocketAddrV6,
    remote: &SocketAddrV6,
    s: &SegOut,
    payload: (&[u8], &[u8]),
) {
    let plen = payload.0.len() + payload.1.len();
    let control = if s.syn {
        TcpControl::Syn
    } else if s.rst {
        TcpControl::Rst
    } else if s.fin {
        TcpControl::Fin
    } else if s.psh {
        TcpControl::Psh
    } else {
        TcpControl::None
    };
    let repr = TcpRepr {
        src_port: local.port(),
        dst_port: remote.port(),
        control,
        seq_number: TcpSeqNumber(s.seq as i32),
        ack_number: s.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: s.window,
        window_scale: s.wscale,
        max_seg_size: s.mss,
        sack_permitted: s.sack_permitted,
        sack_ranges: s.sack,
        timestamp: s.ts.map(|(v, e)| TcpTimestampRepr::new(v, e)),
        payload: &[],
    };
    let hlen = repr.header_len();
    let tcp_len = hlen + plen;
    build_ip_frame(buf, mac, hop_limit, *local.ip(), *remote.ip(), 6, tcp_len);
    let start = ETH_HDR + IP6_HDR;
    buf.resize(start + hlen, 0);
    buf.extend_from_slice(payload.0);
    buf.extend_from_slice(payload.1);
    let src = IpAddress::Ipv6(*local.ip());
    let dst = IpAddress::Ipv6(*remote.ip());
    let mut p = TcpPacket::new_unchecked(&mut buf[start..]);
    repr.emit(&mut p, &src, &dst, &ChecksumCapabilities::ignored());
    // PSH alongside FIN (smoltcp's repr has one control value).
    if s.fin && s.psh {
        p.set_psh(true);
    }
    p.fill_checksum(&src, &dst);
}
