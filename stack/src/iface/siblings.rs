//! Sibling interfaces: a node that serves from several receive queues runs one [`Interface`]
//! per queue, each on its own core and sharing nothing (issue: several cores). The NIC (or a
//! veth's sender) picks the queue of each flow, and a flow can arrive on a queue whose
//! interface does not hold its connection: the SYN came in elsewhere, the connection was
//! adopted by a sibling in a handoff, or the sender rehashed the flow after a timeout. Such a
//! segment is passed round the siblings, one hop at a time, instead of being reset; the last
//! sibling that also does not know it answers with the reset (RFC 9293 §3.10.7.1), so
//! unknown segments are still refused, once. Neighbour Discovery messages are shared with
//! every sibling (each keeps its own neighbour cache, and the answer to one sibling's
//! solicitation can arrive on another's queue; only the sibling that received a solicitation
//! answers it), and so are ICMPv6 errors (a router's error message hashes to another queue
//! than the connection it quotes: each sibling applies it to the connections it holds). A
//! Mobility Header that this interface's mobile role did not ask for goes round whole, to
//! the sibling whose role started the test or sent the Binding Update it answers (RFC 6275
//! §11.6.2, §11.7.3); the last sibling drops it.
//!
//! Sans-IO, like the rest of the interface: what is for the next sibling is taken with
//! [`Interface::take_for_sibling`], what a sibling passed is given with
//! [`Interface::receive_from_sibling`]; the caller moves the packets (see
//! `ds_stack::runner::siblings`).

use super::Interface;
use smoltcp::wire::{IpProtocol, Ipv6Packet, Ipv6Repr, IPV6_HEADER_LEN};
use std::net::Ipv6Addr;

/// Most packets waiting for the next sibling; more are dropped (and counted): the sender
/// retransmits.
const PENDING_MAX: usize = 4096;

/// An interface's place among its siblings.
#[derive(Debug, Default)]
pub(super) struct Siblings {
    /// How many other interfaces serve the node's other queues.
    others: u8,
    /// Hops the packet being processed has made round the siblings (0: from the device).
    hops: u8,
    /// The packet being processed came from a sibling and was sent round again
    /// ([`Interface::restart_round`]): its hops start over, but it is still not the device's.
    again: bool,
    /// Packets for the next sibling, with their hop count.
    out: Vec<(Vec<u8>, u8)>,
    /// Storage of packets passed earlier, given back by the sibling that processed them
    /// ([`Interface::recycle_sibling_buffer`]): a passed packet is built in one of these, so a
    /// flow that keeps arriving on the wrong queue (its connection adopted by a sibling in a
    /// handoff) costs no allocation per packet.
    spare: Vec<Vec<u8>>,
}

/// Buffers kept for passing at most (each holds one packet, up to the link's MTU).
const SPARE_MAX: usize = 256;

/// `payload` of protocol `proto` as a plain IPv6 packet from `src` to `dst` (addresses as
/// the upper layer sees them: home addresses, decapsulated), so that it verifies and demuxes
/// wherever it is fed back; written into `into`, which is exactly [`IPV6_HEADER_LEN`] +
/// `payload.len()` bytes long.
pub(super) fn write_plain_packet(
    into: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: IpProtocol,
    hop_limit: u8,
    payload: &[u8],
) {
    let (header, rest) = into.split_at_mut(IPV6_HEADER_LEN);
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(header));
    rest.copy_from_slice(payload);
}

impl Interface {
    /// Make this interface one of `others + 1` siblings serving the queues of one device
    /// (0: alone, the default).
    pub fn set_siblings(&mut self, others: u8) {
        self.siblings.others = others;
    }

    /// How many siblings this interface has.
    pub fn siblings(&self) -> u8 {
        self.siblings.others
    }

    /// An IPv6 packet a sibling passed on after `hops` siblings had it.
    pub fn receive_from_sibling(&mut self, now: crate::time::Instant, pkt: &[u8], hops: u8) {
        self.siblings.hops = hops;
        self.stats.sibling_rx += 1;
        self.receive_ipv6(now, pkt, None);
        self.siblings.hops = 0;
        self.siblings.again = false;
    }

    /// Move the packets for the next sibling into `out` (with their hop counts).
    pub fn take_for_sibling(&mut self, out: &mut Vec<(Vec<u8>, u8)>) {
        out.append(&mut self.siblings.out);
    }

    /// Let the packet being processed go round every sibling again (it changed: a Home
    /// Address option checked here, so it goes on as a plain packet).
    pub(super) fn restart_round(&mut self) {
        self.siblings.hops = 0;
        self.siblings.again = true;
    }

    /// Whether every other sibling had the packet being processed already.
    pub(super) fn last_sibling(&self) -> bool {
        self.siblings.hops >= self.siblings.others
    }

    /// Whether the packet being processed was passed here by a sibling.
    pub(super) fn passed_by_sibling(&self) -> bool {
        self.siblings.hops > 0 || self.siblings.again
    }

    /// Whether anything waits for the next sibling.
    pub fn has_for_sibling(&self) -> bool {
        !self.siblings.out.is_empty()
    }

    /// Give back the storage of a packet a sibling passed here, once processed, to the
    /// interface that passed it (the caller carries it back: `ds_stack::runner::siblings`);
    /// it builds its next passed packet in it. Beyond a bound the buffer is dropped.
    pub fn recycle_sibling_buffer(&mut self, buf: Vec<u8>) {
        if self.siblings.spare.len() < SPARE_MAX {
            self.siblings.spare.push(buf);
        }
    }

    /// Pass the IPv6 packet being processed on to the next sibling as it is, extension
    /// headers and all (a Mobility Header, whose answer depends on its routing header and
    /// Home Address option), unless every sibling had it already (false).
    pub(super) fn pass_whole_to_sibling(&mut self, pkt: &[u8]) -> bool {
        let Some(mut p) = self.sibling_buffer() else {
            return !self.last_sibling();
        };
        p.extend_from_slice(pkt);
        self.queue_for_sibling(p);
        true
    }

    /// Storage for a packet to pass (empty), or `None` when it is not to be passed: every
    /// sibling had it, or too many wait already (counted as dropped).
    fn sibling_buffer(&mut self) -> Option<Vec<u8>> {
        if self.last_sibling() {
            return None;
        }
        let s = &mut self.siblings;
        if s.out.len() >= PENDING_MAX {
            self.stats.sibling_dropped += 1;
            return None;
        }
        let mut p = match s.spare.pop() {
            Some(p) => {
                self.stats.sibling_tx_reused += 1;
                p
            }
            None => Vec::new(),
        };
        p.clear();
        Some(p)
    }

    /// `p` goes to the next sibling, one hop further.
    fn queue_for_sibling(&mut self, p: Vec<u8>) {
        let hops = self.siblings.hops + 1;
        self.siblings.out.push((p, hops));
        self.stats.sibling_tx += 1;
    }

    /// Pass the packet being processed (`payload` of `proto` between the addresses the upper
    /// layer sees) on to the next sibling as a plain IPv6 packet, unless every sibling had it
    /// already (then the caller handles it as its own: false).
    pub(super) fn pass_to_sibling(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: IpProtocol,
        hop_limit: u8,
        payload: &[u8],
    ) -> bool {
        let Some(mut p) = self.sibling_buffer() else {
            // Dropped for want of room counts as passed (the sender retransmits).
            return !self.last_sibling();
        };
        p.resize(IPV6_HEADER_LEN + payload.len(), 0);
        write_plain_packet(&mut p, src, dst, proto, hop_limit, payload);
        self.queue_for_sibling(p);
        true
    }
}
