//! Counters: every dropped or malformed input is counted here, never silently lost.

use serde::Serialize;

/// Interface-wide counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to [`crate::Interface::receive`].
    pub rx_frames: u64,
    /// Frames produced by [`crate::Interface::transmit`].
    pub tx_frames: u64,
    /// Of those, TCP super-frames the device segments ([`crate::device::Gso`]).
    pub tx_gso_frames: u64,
    /// Of those, TCP segments built straight into the device's transmit buffer
    /// ([`crate::device::TxSink::build`]), not copied there.
    pub tx_in_place: u64,
    /// Frames not for us (other MAC, other address, other ethertype).
    pub rx_not_ours: u64,
    /// Ethernet/IPv6 headers that failed to parse or had bad lengths.
    pub rx_malformed: u64,
    /// Upper-layer checksums that did not verify.
    pub rx_bad_checksum: u64,
    /// Extension-header chains we refused (unknown option with discard bits, bad routing header).
    pub rx_bad_exthdr: u64,
    /// Valid packets with nothing to deliver (No Next Header).
    pub rx_ignored: u64,
    /// Fragments received.
    pub rx_fragments: u64,
    /// Datagrams completed by reassembly.
    pub reassembled: u64,
    /// Reassembly buffers dropped (timeout, overlap, over limit).
    pub reassembly_failed: u64,
    /// ICMPv6 messages received.
    pub rx_icmp: u64,
    /// Packet Too Big messages that lowered a path MTU.
    pub pmtu_updates: u64,
    /// Packet Too Big messages ignored: quoting a packet not from us, a TCP segment not in
    /// flight, or over the budget for the others (RFC 5927 §7.2).
    pub pmtu_ignored: u64,
    /// Connections whose timer, once run, left a deadline already due (a bug): looked at
    /// again a millisecond later instead of at once, for ever.
    pub tcp_timers_stuck: u64,
    /// TCP segments received (valid checksum).
    pub tcp_rx_segments: u64,
    /// TCP segments sent.
    pub tcp_tx_segments: u64,
    /// TCP segments retransmitted (any reason).
    pub tcp_retransmits: u64,
    /// Retransmission timeouts.
    pub tcp_rto: u64,
    /// Segments that arrived above RCV.NXT (queued out of order).
    pub tcp_ooo_segments: u64,
    /// Out-of-order segments dropped: they would have started a block past the most a
    /// connection holds (`MAX_OOO_BLOCKS`, 64), as a peer filling the window with one-byte
    /// holes does.
    pub tcp_ooo_dropped: u64,
    /// Fast retransmits / recovery episodes entered.
    pub tcp_fast_recovery: u64,
    /// Segments for a frozen connection, held for the node that thaws it.
    pub tcp_held: u64,
    /// Segments for no connection (answered with RST).
    pub tcp_no_socket: u64,
    /// Packets passed to the next sibling interface (another receive queue's: a segment of
    /// a connection this one does not hold, a Neighbour Discovery message, an ICMPv6 error,
    /// a Mobility Header another sibling's mobile role asked for).
    pub sibling_tx: u64,
    /// Packets a sibling interface passed here.
    pub sibling_rx: u64,
    /// Packets for the next sibling dropped because too many waited.
    pub sibling_dropped: u64,
    /// Of `sibling_tx`, those built in storage the next sibling gave back
    /// ([`crate::Interface::recycle_sibling_buffer`]) rather than in a new allocation.
    pub sibling_tx_reused: u64,
    /// RFC 5961 challenge ACKs sent.
    pub tcp_challenge_acks: u64,
    /// Segments rejected by PAWS (RFC 7323 §5).
    pub tcp_paws_rejected: u64,
    /// ACKs not sent in reply to unacceptable pure ACKs (at most one per 500 ms per
    /// connection).
    pub tcp_oow_acks_limited: u64,
    /// Zero-window probes sent.
    pub tcp_zero_window_probes: u64,
    /// SYNs dropped because a listener's backlog was full (and SYN cookies are off).
    pub tcp_backlog_drops: u64,
    /// SYN-ACKs sent with a SYN cookie (the backlog was full).
    pub tcp_syncookies_sent: u64,
    /// Connections established from a returned SYN cookie.
    pub tcp_syncookies_ok: u64,
    /// ACKs for no connection whose cookie did not check (forged, stale, or plain strays).
    pub tcp_syncookies_failed: u64,
    /// UDP datagrams received for a bound socket.
    pub udp_rx: u64,
    /// UDP datagrams dropped (no socket, queue full).
    pub udp_drops: u64,
    /// Packets handed to the mobility hook.
    pub mobility_rx: u64,
    /// Mobility Headers for the mobile role that nothing expected (no test, Binding Update
    /// or registration of this interface or, with siblings, of any sibling): dropped.
    pub mobility_unexpected: u64,
    /// Packets handed to the application as intercepted (proxied addresses, reverse tunnels).
    pub intercepted: u64,
    /// Intercepted packets dropped because the application did not take them.
    pub intercept_drops: u64,
    /// IPv6-in-IPv6 packets decapsulated and delivered here.
    pub decapsulated: u64,
    /// Frames dropped while waiting for neighbour resolution.
    pub nd_drops: u64,
    /// Frames the device refused as frames (too large for it, a segmentation request it
    /// cannot honour): dropped like a frame lost on the wire (TCP resends); the first refused
    /// super-frame turns super-frames off ([`crate::runner::Runner::flush`]).
    pub tx_device_rejects: u64,
}

impl Stats {
    /// Sum of the counters that say what became of a received frame; every frame given to
    /// [`crate::Interface::receive`] raises it by at least one.
    pub fn rx_dispositions(&self) -> u64 {
        self.rx_not_ours
            + self.rx_malformed
            + self.rx_bad_checksum
            + self.rx_bad_exthdr
            + self.rx_ignored
            + self.rx_fragments
            + self.rx_icmp
            + self.tcp_rx_segments
            + self.udp_rx
            + self.udp_drops
            + self.mobility_rx
            + self.intercepted
            + self.intercept_drops
    }
}
