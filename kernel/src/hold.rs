//! Holding flows' packets on a kernel host while their sockets move, and handing them to the
//! kernel stack of the host that took a socket over.
//!
//! [`HoldTable`] is one per node (per interface the peers' packets arrive on). It drives the
//! XDP steering program (`ds_xdp`, `bpf/steer.bpf.c`): holding a connection puts its 4-tuple
//! in the program's `held_flows` map, and from then on the program copies each of the peer's
//! packets for it — the whole IPv6 packet, after decapsulating the home agent's tunnel (RFC
//! 2473 §4), exactly what the socket would have received — into a BPF ring buffer and drops
//! it, so the frozen socket never sees it. Holding and releasing are one `bpf(2)` map update
//! each: no process, no thread, no sleep. The table reads the ring without blocking
//! ([`HoldTable::poll`]; [`HoldTable::fd`] polls readable when packets wait) into bounded
//! per-flow queues, oldest first, and hands them out with [`HoldTable::take`] and
//! [`HoldTable::release`]. [`inject`] delivers such packets to the local kernel stack (a raw
//! IPv6 socket with `IPV6_HDRINCL` sends them to the local destination, through `lo`), where
//! the restored socket accepts them as if they had come from the wire.

use crate::{KernelError, Result};
use ds_mipv6::wire::{checksum, IPPROTO_TCP};
use ds_stack::Packets;
use ds_xdp::hold::{HeldFlows, HoldRing};
use ds_xdp::maps::{HoldKey, HoldVal};
use ds_xdp::{Kind, LoadOptions, Program};
use std::collections::HashMap;
use std::mem::size_of;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Bounds of a [`HoldTable`]: packets beyond them are counted and dropped (the peer resends
/// them), never queued without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// Flows held (or with packets waiting) at once; at most the program map's capacity.
    pub max_flows: usize,
    /// Packets queued per flow.
    pub max_packets: usize,
    /// Bytes queued per flow. The flow's storage (one buffer, grown by doubling:
    /// `ds_stack::Packets`) may reach twice this while it grows.
    pub max_bytes: usize,
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            max_flows: 256,
            max_packets: 4096,
            max_bytes: 8 << 20,
        }
    }
}

/// What a [`HoldTable`] did since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldStats {
    /// Packets read from the ring into a flow's queue.
    pub queued: u64,
    /// Packets dropped because their flow's queue was full ([`HoldLimits`]).
    pub over_limit: u64,
    /// Packets read for a flow no longer held (copied by the program on another CPU just as
    /// the release took effect): queued for [`HoldTable::take`] while the flow limit allows,
    /// until a new hold needs the place.
    pub strays: u64,
    /// Strays dropped: the table was at its flow limit when they came, or they were still
    /// there, untaken, when a new hold needed their place.
    pub strays_dropped: u64,
    /// TCP checksums completed (a packet sent with checksum offload, `CHECKSUM_PARTIAL`, on a
    /// link that leaves the sum to the receiver: its field held the pseudo-header sum).
    pub checksums_completed: u64,
}

/// One flow's queue.
#[derive(Debug, Default)]
struct Flow {
    held: bool,
    packets: Packets,
}

/// Most records read from the ring in one [`HoldTable::poll`].
const POLL_BATCH: usize = 1 << 16;

/// The held flows of one node and the packets held for them.
///
/// ```no_run
/// # fn demo(prog: &ds_xdp::Program, local: std::net::SocketAddrV6,
/// #         remote: std::net::SocketAddrV6) -> Result<(), ds_kernel::KernelError> {
/// let mut holds = ds_kernel::HoldTable::new(prog, Default::default())?;
/// holds.hold(local, remote)?; // before ds_kernel::freeze
/// // ... event loop: poll(2) on holds.fd(), then
/// let packets = holds.take(local, remote); // to the acceptor
/// let rest = holds.release(local, remote)?; // grace period over
/// # Ok(()) }
/// ```
pub struct HoldTable {
    map: HeldFlows,
    ring: HoldRing,
    flows: HashMap<HoldKey, Flow>,
    limits: HoldLimits,
    stats: HoldStats,
    /// The program this table loaded and attached itself ([`HoldTable::attach`]), and the
    /// BPF link that keeps it attached (detached when the link closes).
    own: Option<(Program, OwnedFd)>,
}

impl std::fmt::Debug for HoldTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldTable")
            .field("flows", &self.flows.len())
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .field("own_program", &self.own.is_some())
            .finish()
    }
}

fn xdp(what: &'static str) -> impl FnOnce(ds_xdp::Error) -> KernelError {
    move |e| KernelError::Hold(format!("{what}: {e}"))
}

fn key(local: SocketAddrV6, remote: SocketAddrV6) -> HoldKey {
    HoldKey {
        local: *local.ip(),
        remote: *remote.ip(),
        lport: local.port(),
        rport: remote.port(),
    }
}

impl HoldTable {
    /// A table over the maps of `prog`, a steering program (`Kind::Steer`) the node loaded
    /// and attached to the interface its peers' packets arrive on. Only one table per program:
    /// tables would share the ring.
    pub fn new(prog: &Program, limits: HoldLimits) -> Result<HoldTable> {
        if prog.kind() != Kind::Steer {
            return Err(KernelError::Hold("not the steering program".into()));
        }
        let map = prog.held_flows().map_err(xdp("held_flows map"))?;
        let ring = prog.hold_ring().map_err(xdp("hold_ring map"))?;
        let limits = HoldLimits {
            max_flows: limits.max_flows.min(map.capacity() as usize),
            ..limits
        };
        Ok(HoldTable {
            map,
            ring,
            flows: HashMap::new(),
            limits,
            stats: HoldStats::default(),
            own: None,
        })
    }

    /// Load the steering program with nothing configured (every packet passes, except held
    /// flows') and attach it to interface `ifname` of the calling thread's namespace through a
    /// BPF link, native mode if the driver has it (veth does), generic otherwise. It stays
    /// attached while the table lives. For hosts that run no steering program of their own;
    /// fails if the interface has an XDP program already.
    pub fn attach(ifname: &str, limits: HoldLimits) -> Result<HoldTable> {
        let prog =
            Program::load(Kind::Steer, &LoadOptions::default()).map_err(xdp("load steer"))?;
        let idx = ds_xdp::loader::ifindex(ifname).map_err(xdp("interface"))?;
        let (link, _) = prog
            .attach_link(idx, ds_xdp::Mode::Auto)
            .map_err(xdp("attach steer"))?;
        let mut t = HoldTable::new(&prog, limits)?;
        t.own = Some((prog, link));
        Ok(t)
    }

    /// Start holding the packets of the connection `local` ↔ `remote` that come from
    /// `remote` (call it BEFORE [`crate::freeze`]: from then on the socket sees none of them,
    /// so the frozen state and the held packets together are everything the peer sent).
    /// Packets still queued for the flow from an earlier hold stay, in order.
    pub fn hold(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Result<()> {
        let k = key(local, remote);
        if !self.flows.contains_key(&k) && self.flows.len() >= self.limits.max_flows {
            // Strays nobody took give their places up first.
            let stats = &mut self.stats;
            self.flows.retain(|_, f| {
                if !f.held {
                    stats.strays_dropped += f.packets.len() as u64;
                }
                f.held
            });
        }
        if !self.flows.contains_key(&k) && self.flows.len() >= self.limits.max_flows {
            return Err(KernelError::Hold(format!(
                "{} flows held already (the limit)",
                self.flows.len()
            )));
        }
        self.map.hold(&k).map_err(xdp("hold"))?;
        self.flows.entry(k).or_default().held = true;
        Ok(())
    }

    /// Whether the connection is held.
    pub fn is_held(&self, local: SocketAddrV6, remote: SocketAddrV6) -> bool {
        self.flows.get(&key(local, remote)).is_some_and(|f| f.held)
    }

    /// Number of flows held or with packets waiting.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is held and no packet waits.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Read what the program copied into the ring into the flows' queues; returns how many
    /// packets were read. Never blocks.
    pub fn poll(&mut self) -> usize {
        let HoldTable {
            ring,
            flows,
            limits,
            stats,
            ..
        } = self;
        ring.read(POLL_BATCH, |k, pkt| {
            let flow = match flows.get_mut(&k) {
                Some(f) => {
                    if !f.held {
                        stats.strays += 1;
                    }
                    f
                }
                None => {
                    stats.strays += 1;
                    if flows.len() >= limits.max_flows {
                        stats.strays_dropped += 1;
                        return;
                    }
                    flows.entry(k).or_default()
                }
            };
            if flow.packets.len() >= limits.max_packets
                || flow.packets.byte_len() + pkt.len() > limits.max_bytes
            {
                stats.over_limit += 1;
                return;
            }
            // Copied once, into the flow's shared storage: no allocation per packet.
            flow.packets.push(pkt);
            if let Some(p) = flow.packets.last_mut() {
                if complete_tcp_checksum(p) == Checksum::Completed {
                    stats.checksums_completed += 1;
                }
            }
            stats.queued += 1;
        })
    }

    /// The packets held for the connection since the hold or the last `take`, oldest first:
    /// whole IPv6 packets (header, TCP header and payload) as the socket would have received
    /// them, checksums valid. Reads the ring first. The flow stays held.
    pub fn take(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.poll();
        let k = key(local, remote);
        let Some(f) = self.flows.get_mut(&k) else {
            return Packets::new();
        };
        let out = std::mem::take(&mut f.packets);
        if !f.held {
            self.flows.remove(&k);
        }
        out
    }

    /// Stop holding the connection (its packets reach its socket again, if this host has
    /// one) and return the packets still held, oldest first. On an error the flow stays held.
    pub fn release(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Result<Packets> {
        let k = key(local, remote);
        self.map.release(&k).map_err(xdp("release"))?;
        // Whatever the program copied before the release took effect is in the ring now
        // (a packet being copied on another CPU at this very moment comes later, as a stray).
        self.poll();
        Ok(self.flows.remove(&k).map(|f| f.packets).unwrap_or_default())
    }

    /// The program's own count for a held flow (packets copied, bytes, packets lost because
    /// the ring was full), or `None` if the flow is not held.
    pub fn kernel_counts(
        &self,
        local: SocketAddrV6,
        remote: SocketAddrV6,
    ) -> Result<Option<HoldVal>> {
        self.map.get(&key(local, remote)).map_err(xdp("lookup"))
    }

    /// The ring buffer's descriptor: poll(2)/epoll it for `POLLIN`, then call
    /// [`HoldTable::poll`] (or `take`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.fd()
    }

    /// What the table did so far.
    pub fn stats(&self) -> HoldStats {
        self.stats
    }

    /// The bounds in force.
    pub fn limits(&self) -> HoldLimits {
        self.limits
    }
}

impl Drop for HoldTable {
    fn drop(&mut self) {
        // Flows still held would stay held for as long as the program lives.
        let keys: Vec<HoldKey> = self.flows.keys().copied().collect();
        for k in keys {
            if let Err(e) = self.map.release(&k) {
                tracing::warn!("releasing a held flow: {e}");
            }
        }
    }
}

/// What [`complete_tcp_checksum`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The TCP checksum verifies.
    Valid,
    /// The field held the pseudo-header sum only (checksum offload left to the receiver) and
    /// now holds the full checksum.
    Completed,
    /// It does not verify: left as it is (the socket will drop the segment, as it would have).
    Bad,
    /// Not an IPv6 packet with TCP right after the fixed header: left as it is.
    NotTcp,
}

/// Make the TCP checksum of an IPv6 packet valid if it only lacks its completion: a segment
/// sent with checksum offload (`CHECKSUM_PARTIAL`, e.g. over `lo` or a veth whose sender keeps
/// `tx` checksumming on) carries the folded sum of the pseudo-header (RFC 8200 §8.1) in its
/// checksum field, which the kernel would accept (the skb says so) but a packet re-injected or
/// handed to another stack must not. A checksum that is wrong otherwise is left alone.
pub fn complete_tcp_checksum(pkt: &mut [u8]) -> Checksum {
    if pkt.len() < 60 || pkt[0] >> 4 != 6 || pkt[6] != 6 {
        return Checksum::NotTcp;
    }
    let tcp_len = pkt.len() - 40;
    let Ok(len32) = u32::try_from(tcp_len) else {
        return Checksum::NotTcp;
    };
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&pkt[at..at + 16]);
        Ipv6Addr::from(a)
    };
    let pseudo = checksum::pseudo_header(&addr(8), &addr(24), IPPROTO_TCP, len32);
    // The field first (two bytes): a partial checksum is completed in one pass over the
    // segment, any other checksum is checked in one.
    let field = u16::from_be_bytes([pkt[56], pkt[57]]);
    if field != pseudo {
        return if checksum::add(pseudo, checksum::sum(&pkt[40..])) == 0xffff {
            Checksum::Valid
        } else {
            Checksum::Bad
        };
    }
    pkt[56] = 0;
    pkt[57] = 0;
    let c = !checksum::add(pseudo, checksum::sum(&pkt[40..]));
    pkt[56..58].copy_from_slice(&c.to_be_bytes());
    Checksum::Completed
}

/// Deliver held IPv6 packets to this host's kernel stack as if they had just arrived, in the
/// network namespace of the calling thread: each goes out a raw socket with `IPV6_HDRINCL`
/// (RFC 3542 §3: `IPPROTO_RAW` sockets take the whole IPv6 header from the application) to its
/// own destination, which is local, so it loops back through `lo` into `ip6_rcv` and on to the
/// socket restored for it. The packets are sent unchanged: their TCP checksums stay valid, as
/// the pseudo-header (RFC 8200 §8.1) is the same. Returns how many were sent.
pub fn inject<P: AsRef<[u8]>>(packets: impl IntoIterator<Item = P>) -> Result<usize> {
    send_raw(packets, false)
}

/// As [`inject`], for packets that leave the host (a home agent's solicitations of a dead
/// node's clients), with back-pressure: a packet the outgoing device has no room for (a
/// veth peer's ring or a queue full: `ENOBUFS`) stops the sending, where [`inject`] would go
/// on, the packet silently dropped (a raw socket reports it only with `IPV6_RECVERR`, Linux
/// `rawv6_send_hdrinc`). Returns how many packets, in order, left: fewer than given when the
/// device was full, and the caller sends the rest later.
pub fn inject_until_full<P: AsRef<[u8]>>(packets: &[P]) -> Result<usize> {
    send_raw(packets, true)
}

fn send_raw<P: AsRef<[u8]>>(
    packets: impl IntoIterator<Item = P>,
    until_full: bool,
) -> Result<usize> {
    let mut packets = packets.into_iter().peekable();
    if packets.peek().is_none() {
        return Ok(0);
    }
    // SAFETY: plain socket(2); ownership passes to `OwnedFd` at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        return Err(crate::os("socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)"));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // Linux implies IPV6_HDRINCL for IPPROTO_RAW; say so anyway (since Linux 4.5).
    crate::setsockopt(
        sock.as_raw_fd(),
        libc::IPPROTO_IPV6,
        IPV6_HDRINCL,
        &1i32,
        "setsockopt(IPV6_HDRINCL)",
    )?;
    if until_full {
        crate::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVERR,
            &1i32,
            "setsockopt(IPV6_RECVERR)",
        )?;
    }
    let mut sent = 0;
    for p in packets {
        let p = p.as_ref();
        if p.len() < 40 || p[0] >> 4 != 6 {
            return Err(KernelError::Unsupported("not an IPv6 packet"));
        }
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&p[24..40]);
        let to = crate::sockaddr(&SocketAddrV6::new(Ipv6Addr::from(dst), 0, 0, 0));
        // SAFETY: `p` is a live slice of `p.len()` bytes; `to` is a valid sockaddr_in6 of the
        // size given.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = crate::os("sendto (inject)");
            if until_full && e.is_no_buffer_space() {
                break;
            }
            return Err(e);
        }
        sent += 1;
    }
    Ok(sent)
}

/// `IPV6_HDRINCL` (include/uapi/linux/in6.h); not in every `libc` release.
const IPV6_HDRINCL: libc::c_int = 36;

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().expect("a").octets());
        p[24..40].copy_from_slice(&"fd00::80".parse::<Ipv6Addr>().expect("a").octets());
        p[40..42].copy_from_slice(&40000u16.to_be_bytes());
        p[42..44].copy_from_slice(&80u16.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = 0x18;
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn checksums_are_verified_and_completed() {
        let mut p = packet(b"odd length!");
        // Start from the partial form, as the sender's stack leaves it for the offload.
        let tcp_len = (p.len() - 40) as u32;
        let (src, dst) = (
            "fd00::1".parse().expect("a"),
            "fd00::80".parse().expect("a"),
        );
        let pseudo = checksum::pseudo_header(&src, &dst, IPPROTO_TCP, tcp_len);
        p[56..58].copy_from_slice(&pseudo.to_be_bytes());
        assert_eq!(complete_tcp_checksum(&mut p), Checksum::Completed);
        assert_eq!(complete_tcp_checksum(&mut p), Checksum::Valid);
        // The whole sum, pseudo-header included, is all ones (the sum itself is checked
        // against RFC 1071's definition in `ds_mipv6::wire::checksum`).
        assert_eq!(checksum::add(pseudo, checksum::sum(&p[40..])), 0xffff);
        let good = p.clone();
        p[70] ^= 1;
        assert_eq!(complete_tcp_checksum(&mut p), Checksum::Bad);
        assert_eq!(p[..70], good[..70], "a bad checksum is left alone");
        let mut short = good[..50].to_vec();
        assert_eq!(complete_tcp_checksum(&mut short), Checksum::NotTcp);
        let mut udp = good.clone();
        udp[6] = 17;
        assert_eq!(complete_tcp_checksum(&mut udp), Checksum::NotTcp);
    }

    #[test]
    fn keys_are_the_sockets_view() {
        let local: SocketAddrV6 = "[fd00::80]:80".parse().expect("a");
        let remote: SocketAddrV6 = "[fd00::1]:40000".parse().expect("a");
        let k = key(local, remote);
        assert_eq!((k.local, k.lport), (*local.ip(), 80));
        assert_eq!((k.remote, k.rport), (*remote.ip(), 40000));
    }
}
