//! The transmission control block: one connection's state machine, sans-IO.
//!
//! Input: [`Tcb::on_segment`] with a parsed [`SegIn`], [`Tcb::on_timer`], and the application
//! calls (`send`, `recv`, `close`, `abort`). Output: [`Tcb::next_segment`] yields [`SegOut`]
//! descriptions until it has nothing more to say; the interface turns them into frames, copying
//! payload straight out of the send buffer ([`Tcb::payload`]).

use super::cc::Cc;
use super::ring::{BufPool, ByteRing};
use super::seq::{self, dist, ge, gt, le, lt};
use super::{TcpConfig, TcpState};
use crate::time::{Budget, Duration, Instant, Micros};
use std::net::SocketAddrV6;
use std::sync::Arc;
use thin_vec::ThinVec;

/// Why a connection ended abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpError {
    /// The peer reset the connection.
    Reset,
    /// Retransmissions (or keep-alive probes) went unanswered.
    TimedOut,
    /// The connection was refused (RST in answer to our SYN).
    Refused,
    /// The application aborted it.
    Aborted,
}

/// Pacing of a thawed connection's first window. The acceptor of a handoff starts with the
/// donor's congestion window and an empty pipe: no ACKs are coming back yet to space its
/// segments (the ACK clock of RFC 5681 §1, lost with the move), so it would send the whole
/// window back to back into the path's bottleneck queue, where a window larger than the
/// queue is partly dropped. Instead new data leaves at 1.2 × cwnd / SRTT (the ratio Linux
/// paces with in congestion avoidance, `tcp_pacing_ca_ratio`) in bursts of at most 1 ms of
/// that rate, until one window has left; the ACKs of those segments then clock the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Octets per second.
    pub(crate) rate: u64,
    /// The next burst leaves no earlier.
    pub(crate) next: Instant,
    /// Octets the current burst may still carry.
    pub(crate) budget: u32,
    /// Pacing ends once SND.NXT reaches this: one window after the thaw.
    pub(crate) until: u32,
    /// The pacing timer, while a burst waits for `next` (here rather than in the control
    /// block's lines every segment reads: it exists only while pacing does).
    pub(crate) armed: Option<Instant>,
}

impl Pace {
    /// Pacing for a window of `cwnd` octets over `srtt` from `snd_nxt` at `now`; `None` when
    /// there is nothing to spread (a window of a few segments, no RTT known).
    pub(crate) fn first_window(
        now: Instant,
        cwnd: u32,
        mss: u32,
        srtt: Duration,
        snd_nxt: u32,
    ) -> Option<Pace> {
        let srtt_ns = u64::try_from(srtt.as_nanos()).ok()?.max(1);
        if cwnd <= 4 * mss {
            return None;
        }
        // 1.2 × cwnd / SRTT, in octets per second.
        let rate = (u64::from(cwnd) * 1_200_000_000 / srtt_ns).max(1);
        Some(Pace {
            rate,
            next: now,
            budget: 0,
            until: snd_nxt.wrapping_add(cwnd),
            armed: None,
        })
    }

    /// The most octets one burst may carry: 1 ms at the pacing rate, at least two segments.
    fn quantum(&self, mss: u32) -> u32 {
        let q = u32::try_from(self.rate / 1000).unwrap_or(u32::MAX);
        (q / mss.max(1) * mss).max(2 * mss)
    }

    /// How long `len` octets take at the pacing rate.
    fn spacing(&self, len: u32) -> Duration {
        Duration::from_nanos(u64::from(len) * 1_000_000_000 / self.rate.max(1))
    }
}

/// A parsed incoming segment (checksum already verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegIn<'a> {
    /// SEG.SEQ
    pub seq: u32,
    /// SEG.ACK when the ACK bit is set.
    pub ack: Option<u32>,
    /// SYN bit.
    pub syn: bool,
    /// FIN bit.
    pub fin: bool,
    /// RST bit.
    pub rst: bool,
    /// PSH bit: the sender has no more data queued behind this segment (RFC 9293 §3.9.1).
    pub psh: bool,
    /// SEG.WND as on the wire (unscaled).
    pub window: u16,
    /// MSS option.
    pub mss: Option<u16>,
    /// Window-scale option.
    pub wscale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// SACK blocks.
    pub sack: [Option<(u32, u32)>; 3],
    /// Timestamps option (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
    /// Payload.
    pub payload: &'a [u8],
}

impl SegIn<'_> {
    /// SEG.LEN: payload plus SYN and FIN.
    pub fn seg_len(&self) -> u32 {
        self.payload.len() as u32 + self.syn as u32 + self.fin as u32
    }
}

/// A segment the interface should build and send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegOut {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (ACK bit set when `Some`).
    pub ack: Option<u32>,
    /// SYN bit.
    pub syn: bool,
    /// FIN bit.
    pub fin: bool,
    /// RST bit.
    pub rst: bool,
    /// PSH bit.
    pub psh: bool,
    /// Window field as it goes on the wire.
    pub window: u16,
    /// MSS option (SYNs).
    pub mss: Option<u16>,
    /// Window-scale option (SYNs).
    pub wscale: Option<u8>,
    /// SACK-permitted option (SYNs).
    pub sack_permitted: bool,
    /// SACK blocks.
    pub sack: [Option<(u32, u32)>; 3],
    /// Timestamps option.
    pub ts: Option<(u32, u32)>,
    /// Payload: offset into the send buffer and length.
    pub payload_off: usize,
    /// Payload length.
    pub payload_len: usize,
}

/// Counters a TCB bumps; the interface folds them into its [`crate::Stats`] (64-bit) after
/// every event, so between two folds they count a few segments: 32 bits each, half the bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcbEvents {
    pub(crate) retransmits: u32,
    pub(crate) rto: u32,
    pub(crate) fast_recovery: u32,
    pub(crate) challenge_acks: u32,
    pub(crate) paws_rejected: u32,
    pub(crate) oow_acks_limited: u32,
    pub(crate) zero_window_probes: u32,
    pub(crate) segments_out: u32,
    // 16 bits each, in the 32 one counter had: a fold comes after every segment, and a wider
    // pair would grow the control block by a word.
    pub(crate) ooo_segments: u16,
    pub(crate) ooo_dropped: u16,
}

/// Non-adjacent out-of-order blocks a connection holds at most. The data is bounded by the
/// window, but not the count: a peer sending one byte at every other sequence number would
/// otherwise make a block (an allocation, and a scan of every block per segment) per byte of
/// the window, 4 MiB by default. A segment that would start a block past this is dropped and
/// counted (`Stats::tcp_ooo_dropped`); the sender sends it again. Linux bounds its queue the
/// same way in effect, by charging every segment's buffer to the receive buffer and pruning.
/// Honest loss makes a handful: a block per hole in one window.
pub(crate) const MAX_OOO_BLOCKS: usize = 64;

/// Out-of-order data may grow the receive buffer's storage to twice the bytes the connection
/// holds (unread, out of order, and the segment's own) plus this: see [`Tcb::ooo_fits`].
pub(crate) const OOO_GROWTH_SLACK: usize = 64 << 10;

/// Blocks' storage an [`OooQueue`] keeps once its hole is filled (8 ranges: 80 bytes with the
/// `ThinVec`'s header); more is given back.
pub(crate) const OOO_KEPT_BLOCKS: usize = 8;

/// Out-of-order data held above RCV.NXT: disjoint, non-adjacent blocks sorted by sequence, at
/// most [`MAX_OOO_BLOCKS`]. The bytes are in the receive buffer's storage, written where they
/// will be read ([`ByteRing::write_ahead`]): these are their sequence ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct OooQueue {
    /// (start, end) sequence numbers. A `ThinVec`: one pointer in the control block, where a
    /// `Vec`'s three words sat in the lines every segment reads, for a queue that is nearly
    /// always empty. Private: only this type's methods change it, which keep `last` in step.
    blocks: ThinVec<(u32, u32)>,
    /// Start of the block that took the most recent segment (first SACK block, RFC 2018 §4).
    /// `None` exactly when there are no blocks: [`OooQueue::is_empty`] reads it.
    last: Option<u32>,
}

impl OooQueue {
    /// Whether no block is held. Read from `last`, beside the blocks' pointer in the control
    /// block, not from the `ThinVec`'s header: once the queue has kept its storage
    /// ([`OOO_KEPT_BLOCKS`]) that header is a line of its own, which every segment would read.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        debug_assert_eq!(self.last.is_none(), self.blocks.is_empty());
        self.last.is_none()
    }

    /// The blocks, in sequence order.
    pub(crate) fn blocks(&self) -> &[(u32, u32)] {
        &self.blocks
    }

    /// The blocks' storage, in blocks (for tests of what an idle connection keeps).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.blocks.capacity()
    }

    /// Take out the first block if RCV.NXT (`rcv_nxt`) has reached its start. When that
    /// empties the queue, its storage stays for the next reordering (one allocation per hole
    /// cost an allocation every few segments on a path that reorders) unless it grew past
    /// [`OOO_KEPT_BLOCKS`]: an idle connection holds at most that much.
    fn pop_reached(&mut self, rcv_nxt: u32) -> Option<(u32, u32)> {
        let &(start, end) = self.blocks.first()?;
        if gt(start, rcv_nxt) {
            return None;
        }
        self.blocks.remove(0);
        if self.blocks.is_empty() {
            self.last = None;
            if self.blocks.capacity() > OOO_KEPT_BLOCKS {
                self.blocks = ThinVec::new();
            }
        }
        Some((start, end))
    }

    /// Whether [start, end) is already held entirely.
    fn covers(&self, rcv_nxt: u32, start: u32, end: u32) -> bool {
        let rel = |s: u32| dist(rcv_nxt, s);
        self.blocks
            .iter()
            .any(|b| rel(b.0) <= rel(start) && rel(end) <= rel(b.1))
    }

    /// Bytes the blocks hold.
    pub(crate) fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| dist(b.0, b.1) as usize).sum()
    }

    /// Bytes from `rcv_nxt` to the end of the last block: how far past the held bytes the
    /// receive buffer's storage holds written data.
    pub(crate) fn extent(&self, rcv_nxt: u32) -> usize {
        self.blocks
            .last()
            .map_or(0, |b| dist(rcv_nxt, b.1) as usize)
    }

    /// Add [start, end) (`rcv_nxt` anchors the sequence comparisons), merging the blocks it
    /// overlaps or touches. False if it was refused: it would have started a block past
    /// [`MAX_OOO_BLOCKS`].
    pub(crate) fn insert(&mut self, rcv_nxt: u32, start: u32, end: u32) -> bool {
        let rel = |s: u32| dist(rcv_nxt, s);
        if rel(end) <= rel(start) {
            return true;
        }
        // The first block that overlaps or touches [start, end], if any.
        let first = self.blocks.iter().position(|b| rel(b.1) >= rel(start));
        let i = match first {
            Some(i) if rel(self.blocks[i].0) <= rel(end) => i,
            // Before block `i`, or after every block: a new block.
            at => {
                if self.blocks.len() >= MAX_OOO_BLOCKS {
                    return false;
                }
                let at = at.unwrap_or(self.blocks.len());
                self.blocks.insert(at, (start, end));
                self.last = Some(start);
                return true;
            }
        };
        let mut j = i;
        while j + 1 < self.blocks.len() && rel(self.blocks[j + 1].0) <= rel(end) {
            j += 1;
        }
        let m_start = if rel(self.blocks[i].0) < rel(start) {
            self.blocks[i].0
        } else {
            start
        };
        let m_end = if rel(self.blocks[j].1) > rel(end) {
            self.blocks[j].1
        } else {
            end
        };
        self.blocks[i] = (m_start, m_end);
        if j > i {
            self.blocks.drain(i + 1..=j);
        }
        self.last = Some(m_start);
        true
    }

    /// SACK blocks to report, most recent first (RFC 2018 §4).
    fn sack_blocks(&self) -> [Option<(u32, u32)>; 3] {
        let mut out = [None; 3];
        let mut n = 0;
        if let Some(l) = self.last {
            if let Some(b) = self.blocks.iter().find(|b| b.0 == l) {
                out[0] = Some(*b);
                n = 1;
            }
        }
        for b in &self.blocks {
            if n == 3 {
                break;
            }
            if Some(b.0) == self.last && n > 0 {
                continue;
            }
            out[n] = Some(*b);
            n += 1;
        }
        out
    }
}

/// One TCP connection.
///
/// Laid out by hand (`repr(C)`, cold fields first, then the congestion state, then the fields
/// every segment reads): at many connections a control block is cold when its segment
/// arrives, and a segment then costs a cache miss per line it reads, so the fields it reads
/// share as few lines as possible (8 of the 11 its slot spans: `dsperf conns`, README).
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Tcb {
    // Cold: read only in loss recovery, at the handshake, or to limit answers to bad input
    // (RFC 5961 §5, §7). First, so that the congestion state's own cold half adjoins it: `Cc`
    // (`repr(C)`) starts with its cold fields (the algorithm, NewReno's counter, CUBIC's
    // figures); the slot's line test fails if a field a segment reads moves out of the hot lines.
    challenge_window: Budget,
    /// When the current fast recovery began.
    pub(crate) recovery_at: Option<Instant>,
    /// When this connection last sent an empty unacceptable segment (a drain's or a
    /// keepalive's probe), here or — as far as the state tells — on the host it was thawed
    /// from: the receiver answers the next one within [`OOW_ACK_INTERVAL`] with nothing
    /// (RFC 5961 §7), so a drain's first probe carries an octet then ([`Tcb::drain_probe`]).
    pub(crate) empty_probe_at: Option<Instant>,
    /// When we last answered an unacceptable segment that occupies no sequence space.
    oow_ack_at: Option<Instant>,
    /// Initial send sequence number (RFC 9293 §3.3.1).
    pub(crate) iss: u32,
    /// Initial receive sequence number (RFC 9293 §3.3.1).
    pub(crate) irs: u32,
    /// RFC 6582 §3.2: the highest sequence sent when the last recovery or timeout started.
    pub(crate) recover: u32,
    /// RFC 6675 HighRxt.
    pub(crate) high_rxt: u32,
    /// SND.MAX when the latest retransmission went out. SACKs for data above it while a
    /// retransmitted hole is still missing mean the retransmission was lost too (the idea of
    /// RFC 8985 RACK, by send order instead of per-segment times).
    pub(crate) rxt_fence: u32,
    /// RFC 6937 proportional rate reduction in SACK recovery: octets delivered to the
    /// receiver (`prr_delivered`) and sent (`prr_out`) since the recovery began, and the
    /// flight when it began (`recover_fs`, RecoverFS).
    pub(crate) prr_delivered: u32,
    pub(crate) prr_out: u32,
    pub(crate) recover_fs: u32,
    /// Drain probes sent that carried an octet: picks the next one's octet
    /// ([`Tcb::probe_octet`]).
    pub(crate) drain_probes: u32,
    /// The latest retransmission in SACK recovery, until it is SACKed. Its SACK while a hole
    /// resent before it is still open means that earlier retransmission was lost: the same
    /// send-order evidence as `rxt_fence`, for a sender with nothing new to send (a donor
    /// draining before a handoff sends no data above the fence, and only the timeout,
    /// 200 ms at least, would find the loss).
    pub(crate) last_rxt: Option<(u32, u32)>,
    /// The endpoints: cold, since an interface sends from its connection table's copy (the
    /// slot's key, in a line the segment reads anyway).
    pub(crate) local: SocketAddrV6,
    pub(crate) remote: SocketAddrV6,
    pub(crate) rcv_mss: u16,
    /// Recovery after a timeout with SACK: every unSACKed byte below the recovery point is
    /// presumed lost (RFC 6675 §5.1), not just the holes below the highest SACK.
    pub(crate) loss_all: bool,
    /// Every unSACKed byte below the recovery point is lost, not only the holes below the
    /// highest SACK: a retransmission sent in this recovery was delivered (a partial ACK)
    /// while the original transmissions below the point, all sent before it, are still
    /// missing a reordering window later (RFC 8985 §6.2, by send order). This is what finds
    /// a lost tail that no SACK ever covered, all of it at once instead of a segment per
    /// partial ACK.
    pub(crate) tail_lost: bool,
    /// Unused: puts the hot part below on a cache-line boundary of its slot, 8 lines rather
    /// than the same bytes straddling 9 (the slot is 11 lines either way); the connection
    /// table's line test fails if it no longer does.
    hot_align: [u8; 8],

    // Congestion control (its cold fields first, HyStart++, its window and threshold after
    // them: `Cc`'s `repr(C)` order).
    pub(crate) cc: Cc,

    // Hot: read or written by every segment of a request/response exchange (counted with
    // valgrind's lackey, `dsperf conns` at one connection). Sequence spaces: RFC 9293 §3.3.1;
    // SND.MAX is the highest sequence sent: after a timeout SND.NXT goes back to SND.UNA and
    // [SND.NXT, SND.MAX) is resent. RTT estimation: RFC 6298, in 32-bit microseconds (`Micros`:
    // 16 bytes where `Duration`s took 48; our clock's granularity is the microsecond anyway).
    // Timers are absolute. 8-byte aligned fields first, then 4, then 1: no padding.
    /// Unacknowledged and unsent data; byte 0 has sequence number `snd_buf_seq`.
    pub(crate) snd_buf: ByteRing,
    pub(crate) rcv_buf: ByteRing,
    pub(crate) ooo: OooQueue,
    /// Sender's SACK scoreboard: disjoint sorted ranges above SND.UNA (a `ThinVec`, one word
    /// in the lines every segment reads; empty but in loss recovery, and then without an
    /// allocation of its own: [`Tcb::release_emptied_scoreboard`]).
    pub(crate) sacked: ThinVec<(u32, u32)>,
    /// Shared with the other connections of its listener or interface until changed
    /// (copy-on-write): one hot copy rather than 192 cold bytes per control block.
    pub(crate) cfg: Arc<TcpConfig>,
    /// The one segment being timed (Karn's algorithm: never a retransmitted one).
    pub(crate) timed: Option<(u32, Instant)>,
    pub(crate) t_rto: Option<Instant>,
    pub(crate) t_delack: Option<Instant>,
    pub(crate) t_persist: Option<Instant>,
    pub(crate) t_keepalive: Option<Instant>,
    pub(crate) t_close: Option<Instant>,
    /// Tail loss probe timer (RFC 8985 §7).
    pub(crate) t_tlp: Option<Instant>,
    /// When in-order data last arrived.
    pub(crate) last_data_in: Option<Instant>,
    pub(crate) ts_recent_at: Instant,
    /// Pacing of the first window after a thaw ([`Pace`]; boxed: rare, and 8 bytes instead of
    /// 24 in the lines every segment reads).
    pub(crate) pace: Option<Box<Pace>>,
    pub(crate) snd_una: u32,
    pub(crate) snd_nxt: u32,
    pub(crate) snd_max: u32,
    /// End of the last segment shorter than the MSS that we sent (Linux's `snd_sml`): Nagle
    /// holds a small segment only while such a one is unacknowledged.
    pub(crate) snd_sml: u32,
    pub(crate) snd_wnd: u32,
    pub(crate) snd_wl1: u32,
    pub(crate) snd_wl2: u32,
    pub(crate) max_snd_wnd: u32,
    pub(crate) snd_buf_seq: u32,
    pub(crate) rcv_nxt: u32,
    /// Right edge of the window we last advertised (never moves left, RFC 9293 §3.8.6.2.2).
    pub(crate) rcv_adv: u32,
    pub(crate) last_ack_sent: u32,
    pub(crate) snd_mss: u32,
    pub(crate) ts_recent: u32,
    /// Our TSval = milliseconds on the interface clock + this offset (per connection).
    pub(crate) ts_offset: u32,
    pub(crate) srtt: Option<Micros>,
    pub(crate) rttvar: Micros,
    pub(crate) rto: Micros,
    pub(crate) backoff: u32,
    pub(crate) dupacks: u32,
    /// RFC 3042 limited transmit: segments we may send beyond cwnd on the first two
    /// duplicate ACKs, to keep the ACK clock going in small windows.
    pub(crate) limited_tx: u32,
    pub(crate) persist_backoff: u32,
    pub(crate) ka_probes: u32,
    pub(crate) delack_segs: u32,
    pub(crate) retries: u32,
    /// In fast recovery until SND.UNA passes this point (RFC 6582 "recover", RFC 6675
    /// RecoveryPoint).
    pub(crate) recovery: Option<u32>,
    /// The octet of the drain probe that followed this recovery's latest retransmission: a
    /// report of exactly that octet (a D-SACK) says the probe arrived, so every hole resent
    /// and still open was lost ([`Tcb::detect_lost_before_probe`]). Cleared by the next
    /// retransmission.
    pub(crate) rxt_probe: Option<u32>,
    /// RST to send for an unacceptable ACK (RFC 9293 §3.10.7.3): `<SEQ=SEG.ACK><CTL=RST>`.
    pub(crate) rst_due_for_ack: Option<u32>,
    /// Listener this embryonic connection belongs to (an index into the interface's listeners,
    /// which are counted in `u32` as connections are).
    pub(crate) listener: Option<u32>,
    /// Sequence number of a FIN that arrived ahead of missing data.
    pub(crate) ooo_fin: Option<u32>,
    /// A duplicate segment to report in the first SACK block of the next ACK (RFC 2883
    /// D-SACK), so a sender that retransmitted needlessly (reordering) can undo its reduction.
    pub(crate) dsack: Option<(u32, u32)>,
    pub(crate) events: TcbEvents,
    pub(crate) state: TcpState,
    /// The application closed its sending side: a FIN follows the buffered data.
    pub(crate) fin_queued: bool,
    pub(crate) fin_rcvd: bool,
    pub(crate) ws_ok: bool,
    pub(crate) snd_wscale: u8,
    pub(crate) rcv_wscale: u8,
    pub(crate) ts_ok: bool,
    /// False until a TSval has been seen (after a thaw from a state that did not carry one).
    pub(crate) ts_recent_valid: bool,
    pub(crate) sack_ok: bool,
    /// SRTT and RTTVAR came with a moved connection: measured on the donor's path, not ours.
    /// They set the RTO until our first sample, which then counts as the first measurement.
    pub(crate) rtt_inherited: bool,
    /// Retransmit one segment now regardless of the window (entering recovery, partial ACK).
    pub(crate) rexmit_now: bool,
    pub(crate) ka_probe_due: bool,
    /// [`Tcb::solicit_ack`] was asked, or a segment with data left since: probe once all data
    /// has been sent and the transmit pass is over.
    pub(crate) drain_probe_owed: bool,
    /// The drain's first probe has gone (the next ones carry an octet). Either flag set: the
    /// solicitation is on ([`Tcb::draining`]) until everything is acknowledged.
    pub(crate) drain_probed: bool,
    /// A tail loss probe is outstanding / due.
    pub(crate) tlp_out: bool,
    pub(crate) tlp_due: bool,
    pub(crate) probe_due: bool,
    pub(crate) ack_now: bool,
    /// A delayed ACK waits for in-order data that came with PSH: the application reading it
    /// all sends the ACK at once unless the connection is interactive (as Linux's
    /// `ICSK_ACK_PUSHED` in `tcp_cleanup_rbuf`).
    pub(crate) ack_pushed: bool,
    /// We answered received data with data of our own within the delayed-ACK time (Linux's
    /// "pingpong" mode): the ACK of what we read rides on our answer, so reading does not
    /// send one. Cleared when the delayed-ACK timer had to send an ACK alone.
    pub(crate) interactive: bool,
    pub(crate) rst_due: bool,
    pub(crate) error: Option<TcpError>,
}

/// RFC 5961 §7: at most this many challenge ACKs per connection per second.
const CHALLENGE_ACK_LIMIT: u32 = 10;

/// Most disjoint ranges the sender's SACK scoreboard keeps. Holes in flight are few in
/// practice (a burst lost at a queue makes one); a receiver cannot make the board, and the
/// work per ACK, grow past this.
pub(crate) const MAX_SACK_BLOCKS: usize = 256;

/// Drain probes take their octet in turn from the last this many octets of the data
/// ([`Tcb::probe_octet`]): a report names one of the latest this many probes.
const PROBE_OCTETS: u32 = 8;

/// At most one ACK per this interval in reply to unacceptable segments that occupy no sequence
/// space (Linux's `tcp_invalid_ratelimit` default).
const OOW_ACK_INTERVAL: Duration = Duration::from_millis(500);
/// RFC 7323 §5.5: a timestamp older than 24 days is invalid for PAWS.
const PAWS_IDLE: Duration = Duration::from_secs(24 * 24 * 3600);

/// An emptied buffer keeps at most this much storage: the pool's largest block, so that what
/// it keeps can go to the pool once the connection is idle.
pub(crate) const KEEP_EMPTY_BUF: usize = super::ring::POOL_MAX;

/// Give an empty buffer's storage back when it is over a page: an idle keep-alive connection
/// then holds no more than that (100,000 connections that once sent 64 KiB responses held
/// 6.5 GB of empty send buffers), as an idle Linux socket holds no data. Smaller buffers stay,
/// so that short exchanges do not pay an allocation each (measured: ~20 ns a packet). A send
/// buffer is checked once its data is acknowledged (a bulk sender keeps it non-empty), a
/// receive buffer after a segment that brought it nothing ([`Tcb::release_idle_receive_buffer`]).
#[inline]
fn release_emptied_buffer(buf: &mut ByteRing) {
    if buf.is_empty() && buf.capacity() > KEEP_EMPTY_BUF {
        *buf = ByteRing::default();
    }
}

/// How long no data must have come before an empty receive buffer over a page gives up its
/// storage ([`Tcb::release_idle_receive_buffer`]): longer than the gaps within a burst and
/// between a burst and the next of a busy stream, short next to a connection's idle times.
pub(crate) const RX_IDLE_RELEASE: Duration = Duration::from_millis(10);

/// One field in each cache line of the control block's hot part (`cc.cwnd`'s line opens it,
/// with the end of `Cc`'s CUBIC figures, HyStart++ and the threshold; `sack_ok` is in the line
/// the slot's key shares): [`Tcb::prefetch_hot`] asks for these lines, and the connection table's
/// line test checks that they cover every field a segment reads.
macro_rules! hot_line_fields {
    ($m:ident) => {
        $m!(cc.cwnd, snd_buf, ooo, t_persist, snd_max, rto, ooo_fin, sack_ok)
    };
}
#[cfg(test)]
pub(crate) use hot_line_fields;

impl Tcb {
    /// Ask for the cache lines a segment of this connection will read, without waiting for
    /// them ([`crate::iface::Interface::receive_batch`]).
    #[inline]
    pub(crate) fn prefetch_hot(&self) {
        macro_rules! each {
            ($($($f:ident).+),+) => { $(crate::prefetch::prefetch(&self.$($f).+);)+ };
        }
        hot_line_fields!(each);
    }

    /// Where the receive buffer has no storage, give it a block from the interface's `pool`
    /// for a segment's `len` bytes (see [`ByteRing`]'s pooling); one that is not taken goes
    /// back with [`Tcb::release_buffers`].
    #[inline]
    pub(crate) fn supply_recv(&mut self, pool: &mut BufPool, len: usize) {
        self.rcv_buf.supply(pool, len, self.cfg.recv_buf);
    }

    /// The same for the send buffer, before `len` bytes are queued with [`Tcb::send`].
    #[inline]
    pub(crate) fn supply_send(&mut self, pool: &mut BufPool, len: usize) {
        if self.snd_buf.capacity() == 0 {
            let len = len.min(self.send_space());
            self.snd_buf.supply(pool, len, self.cfg.send_buf);
        }
    }

    /// Give the storage of emptied small buffers (read, acknowledged) to the interface's
    /// `pool`, for the next connection's request or answer: an idle connection then holds no
    /// buffer storage.
    #[inline]
    pub(crate) fn release_buffers(&mut self, pool: &mut BufPool) {
        // Out-of-order data lives past the held bytes, in the same storage.
        if self.ooo.is_empty() {
            self.rcv_buf.release_to_pool(pool);
        }
        self.snd_buf.release_to_pool(pool);
    }

    /// After a segment: an empty receive buffer gives up storage over a page (an upload that
    /// is over, read; [`release_emptied_buffer`]). Only when a segment leaves it empty, not
    /// after the application's reads: a receiver that reads promptly empties its buffer on
    /// every read, and would grow it again, copying, for every segment. And only once no data
    /// came for [`RX_IDLE_RELEASE`]: a peer that sends bursts while it acknowledges ours with
    /// empty segments between (a relay, a stream both ways) would otherwise make it grow
    /// again, allocating and copying, after each of those.
    #[inline]
    pub(crate) fn release_idle_receive_buffer(&mut self, now: Instant) {
        let quiet = self
            .last_data_in
            .is_none_or(|t| now.saturating_since(t) >= RX_IDLE_RELEASE);
        if quiet && self.ooo.is_empty() {
            release_emptied_buffer(&mut self.rcv_buf);
        }
    }

    /// Ask for the lines the buffers' next bytes land on (a request's, and its answer's),
    /// without waiting for them. Reads the buffers' headers: call it once
    /// [`Tcb::prefetch_hot`]'s lines have had time to arrive. A send buffer still holding the
    /// last answer also has its storage's start asked for: a request that acknowledges it all
    /// empties the buffer, and the next answer is written from the start (from `WARM_FROM`
    /// connections the block goes back to the pool instead, on top: the next one taken).
    /// Costs ~50 instructions an exchange there; without it 10,000 connections timed slower
    /// (5 of 6 alternations, 2026-12-04).
    pub(crate) fn prefetch_data(&self) {
        for b in [&self.rcv_buf, &self.snd_buf] {
            if let Some(at) = b.next_free() {
                crate::prefetch::prefetch(at);
            }
        }
        if let Some(at) = self.snd_buf.start() {
            crate::prefetch::prefetch(at);
        }
    }
}

impl Tcb {
    fn blank(
        local: SocketAddrV6,
        remote: SocketAddrV6,
        cfg: impl Into<Arc<TcpConfig>>,
        iss: u32,
        mss: u32,
        now: Instant,
    ) -> Tcb {
        let cfg: Arc<TcpConfig> = cfg.into();
        let rcv_wscale = if cfg.window_scale {
            let mut s = 0u8;
            while s < 14 && (cfg.recv_buf >> s) > 65535 {
                s += 1;
            }
            s
        } else {
            0
        };
        let rto = cfg.initial_rto;
        Tcb {
            hot_align: [0; 8],
            local,
            remote,
            state: TcpState::Closed,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_sml: iss,
            snd_wnd: 0,
            snd_wl1: 0,
            snd_wl2: 0,
            max_snd_wnd: 0,
            snd_buf: ByteRing::default(),
            snd_buf_seq: iss.wrapping_add(1),
            fin_queued: false,
            irs: 0,
            rcv_nxt: 0,
            rcv_adv: 0,
            rcv_buf: ByteRing::default(),
            ooo: OooQueue::default(),
            dsack: None,
            ooo_fin: None,
            fin_rcvd: false,
            last_ack_sent: 0,
            snd_mss: mss.min(cfg.mss.map(u32::from).unwrap_or(u32::MAX)).min(536),
            rcv_mss: mss
                .min(cfg.mss.map(u32::from).unwrap_or(u32::MAX))
                .min(65535) as u16,
            ws_ok: false,
            snd_wscale: 0,
            rcv_wscale,
            ts_ok: false,
            ts_recent: 0,
            ts_recent_at: now,
            ts_recent_valid: true,
            ts_offset: iss.rotate_left(13),
            sack_ok: false,
            srtt: None,
            rtt_inherited: false,
            rttvar: Micros::ZERO,
            rto: rto.into(),
            backoff: 0,
            timed: None,
            cc: Cc::new(cfg.congestion, 536, cfg.initial_window),
            dupacks: 0,
            limited_tx: 0,
            recovery: None,
            recover: iss,
            high_rxt: iss,
            rexmit_now: false,
            sacked: ThinVec::new(),
            loss_all: false,
            rxt_fence: iss,
            last_rxt: None,
            prr_delivered: 0,
            prr_out: 0,
            recover_fs: 0,
            recovery_at: None,
            tail_lost: false,
            t_rto: None,
            t_delack: None,
            t_persist: None,
            persist_backoff: 0,
            t_keepalive: None,
            ka_probes: 0,
            ka_probe_due: false,
            drain_probe_owed: false,
            drain_probed: false,
            empty_probe_at: None,
            drain_probes: 0,
            rxt_probe: None,
            t_close: None,
            t_tlp: None,
            pace: None,
            tlp_out: false,
            tlp_due: false,
            probe_due: false,
            ack_now: false,
            delack_segs: 0,
            ack_pushed: false,
            last_data_in: None,
            interactive: false,
            rst_due: false,
            rst_due_for_ack: None,
            error: None,
            retries: 0,
            challenge_window: Budget::new(now),
            oow_ack_at: None,
            events: TcbEvents::default(),
            listener: None,
            cfg,
        }
    }

    /// What a free slot of the connection table holds in a control block's place
    /// (`iface::conn_table::Vacant`): CLOSED, no buffer storage, the thread's one default
    /// configuration (allocated once per thread, then a reference count: per thread, so that
    /// the stacks of several queues, each on its own core, do not share the count's line).
    pub(crate) fn vacant() -> Tcb {
        thread_local! {
            static CFG: Arc<TcpConfig> = Arc::new(TcpConfig::default());
        }
        let none = SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 0, 0, 0);
        Tcb::blank(none, none, CFG.with(Arc::clone), 0, 0, Instant::ZERO)
    }

    /// Active open (RFC 9293 §3.10.1): a TCB in SYN-SENT whose SYN is due.
    pub fn connect(
        local: SocketAddrV6,
        remote: SocketAddrV6,
        cfg: impl Into<Arc<TcpConfig>>,
        iss: u32,
        mss: u32,
        now: Instant,
    ) -> Tcb {
        let mut t = Tcb::blank(local, remote, cfg, iss, mss, now);
        t.state = TcpState::SynSent;
        t.snd_max = iss;
        t
    }

    /// Passive open: a SYN arrived at a listener (RFC 9293 §3.10.7.2). Returns a TCB in
    /// SYN-RECEIVED whose SYN-ACK is due.
    #[allow(clippy::too_many_arguments)]
    pub fn accept_syn(
        local: SocketAddrV6,
        remote: SocketAddrV6,
        cfg: impl Into<Arc<TcpConfig>>,
        iss: u32,
        mss: u32,
        now: Instant,
        seg: &SegIn<'_>,
    ) -> Tcb {
        let mut t = Tcb::blank(local, remote, cfg, iss, mss, now);
        t.state = TcpState::SynReceived;
        t.take_syn_options(seg, now);
        t.irs = seg.seq;
        t.rcv_nxt = seg.seq.wrapping_add(1);
        t.rcv_adv = t.rcv_nxt.wrapping_add(t.rcv_space().min(65535) as u32);
        // RFC 7323 §2.2: the window in a SYN is never scaled.
        t.set_snd_wnd(seg.window as u32, seg.seq, 0);
        t
    }

    fn take_syn_options(&mut self, seg: &SegIn<'_>, now: Instant) {
        // RFC 9293 §3.7.1: absent the option, assume 536 (IPv6: 1220 per RFC 8200 §5 is the
        // minimum link, but the TCP default stays 536).
        let peer_mss = seg.mss.map(u32::from).unwrap_or(536).max(64);
        self.snd_mss = peer_mss.min(self.rcv_mss as u32);
        // RFC 7323 §2.2: both sides must send the option for scaling to take effect.
        if self.cfg.window_scale {
            if let Some(ws) = seg.wscale {
                self.ws_ok = true;
                self.snd_wscale = ws.min(14);
            } else {
                self.rcv_wscale = 0;
            }
        } else {
            self.rcv_wscale = 0;
        }
        if self.cfg.timestamps {
            if let Some((tsval, _)) = seg.ts {
                self.ts_ok = true;
                self.ts_recent = tsval;
                self.ts_recent_at = now;
            }
        }
        self.sack_ok = self.cfg.sack && seg.sack_permitted;
        self.cc = Cc::new(self.cfg.congestion, self.snd_mss, self.cfg.initial_window);
    }

    /// The connection's state.
    pub fn state(&self) -> TcpState {
        self.state
    }

    /// Payload bytes per segment: the MSS less the options we put on data segments
    /// (RFC 6691: the MSS counts no options).
    pub(crate) fn eff_mss(&self) -> u32 {
        let mut opt = 0;
        if self.ts_ok {
            opt += 12;
        }
        if self.sack_ok && !self.ooo.is_empty() {
            opt += 28;
        }
        self.snd_mss.saturating_sub(opt).max(64)
    }

    fn tsval(&self, now: Instant) -> u32 {
        (now.total_millis() as u32).wrapping_add(self.ts_offset)
    }

    fn rcv_space(&self) -> usize {
        self.cfg.recv_buf.saturating_sub(self.rcv_buf.len())
    }

    fn set_snd_wnd(&mut self, wnd: u32, seq: u32, ack: u32) {
        self.snd_wnd = wnd;
        self.snd_wl1 = seq;
        self.snd_wl2 = ack;
        self.max_snd_wnd = self.max_snd_wnd.max(wnd);
    }

    /// Ask the peer for an immediate acknowledgment once everything queued has been sent,
    /// and again after every later transmit pass until all is acknowledged, instead of
    /// waiting for its delayed-ACK timer (RFC 9293 §3.8.6.3 allows up to 500 ms; see
    /// `drain_probe` for what the probes are).
    ///
    /// With data still unsent the probe follows its last segment (the caller need not look
    /// again when that leaves: a donor's drain used to wait for its next wake-up, a
    /// millisecond). The solicitation stays on until everything is acknowledged because one
    /// probe is not enough when segments are lost: the probe can be lost with them, and a
    /// retransmitted segment that leaves the receiver with nothing out of order is an
    /// in-order segment it may hold its ACK for (RFC 5681 §4.2 asks an immediate ACK only
    /// for out-of-order data and gap fills). Through a 100-frame queue at 100 Mbit/s, 13 of 30
    /// drained handoffs waited one or two 40 ms delayed ACKs that way. The probes cost one
    /// empty segment per pass, and passes after the last new data only happen to resend.
    ///
    /// True when the probe was queued or deferred; false when nothing is unacknowledged.
    pub(crate) fn solicit_ack(&mut self) -> bool {
        if self.state != TcpState::Established {
            return false;
        }
        let all_sent = !lt(self.snd_max, self.data_end());
        if all_sent && self.snd_una == self.snd_max {
            return false;
        }
        self.drain_probe_owed = true;
        true
    }

    /// Whether a solicitation is on: every transmit pass that (re)sends data once all data
    /// has left is followed by an ACK probe, until everything is acknowledged.
    pub(crate) fn draining(&self) -> bool {
        self.drain_probe_owed || self.drain_probed
    }

    /// Whether a drain's probe is owed now: owed, and everything has been sent once.
    fn drain_probe_ready(&self) -> bool {
        self.drain_probe_owed && !lt(self.snd_max, self.data_end())
    }

    fn data_end(&self) -> u32 {
        self.snd_buf_seq.wrapping_add(self.snd_buf.len() as u32)
    }

    fn fin_seq(&self) -> Option<u32> {
        self.fin_queued.then(|| self.data_end())
    }

    fn fin_acked(&self) -> bool {
        self.fin_seq().is_some_and(|f| gt(self.snd_una, f))
    }

    /// Bytes sent and not yet acknowledged.
    pub fn flight(&self) -> u32 {
        dist(self.snd_una, self.snd_max)
    }

    /// Bytes in the send buffer (unacknowledged plus unsent).
    pub fn send_queued(&self) -> usize {
        self.snd_buf.len()
    }

    /// Room left in the send buffer.
    pub fn send_space(&self) -> usize {
        if self.fin_queued
            || !matches!(
                self.state,
                TcpState::Established
                    | TcpState::CloseWait
                    | TcpState::SynSent
                    | TcpState::SynReceived
            )
        {
            return 0;
        }
        let room = self.cfg.send_buf.saturating_sub(self.snd_buf.len());
        match self.cfg.notsent_lowat {
            // Only so much not yet sent: the rest stays with the application until the peer
            // can take it (Linux's TCP_NOTSENT_LOWAT), so a slow or stuck reader holds that
            // much here and not the whole buffer, and a frozen state carries no more.
            Some(lowat) => room.min(lowat.saturating_sub(self.unsent())),
            None => room,
        }
    }

    /// Bytes queued by the application and never sent yet.
    pub fn unsent(&self) -> usize {
        let end = self.data_end();
        if gt(end, self.snd_max) {
            (dist(self.snd_max, end) as usize).min(self.snd_buf.len())
        } else {
            0
        }
    }

    /// Bytes ready for the application to read.
    pub fn recv_available(&self) -> usize {
        self.rcv_buf.len()
    }

    /// Whether the peer has closed its side and everything before its FIN has been read.
    pub fn at_eof(&self) -> bool {
        self.fin_rcvd && self.rcv_buf.is_empty()
    }

    /// Queue application data (RFC 9293 §3.10.2). Returns the bytes accepted.
    pub fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_space());
        self.snd_buf.extend_within(&data[..n], self.cfg.send_buf);
        n
    }

    /// Read received data in order (RFC 9293 §3.10.3).
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        let before = self.advertisable_window();
        let n = buf.len().min(self.rcv_buf.len());
        let (a, b) = self.rcv_buf.as_slices();
        let na = n.min(a.len());
        buf[..na].copy_from_slice(&a[..na]);
        if n > na {
            buf[na..n].copy_from_slice(&b[..n - na]);
        }
        if self.ooo.is_empty() {
            self.rcv_buf.consume(n);
        } else {
            self.rcv_buf.consume_keeping_ahead(n);
        }
        // RFC 9293 §3.8.6.2.2: announce a window update once it grows by min(BUF/2, MSS)...
        // we wait for 2 MSS or half the buffer to avoid an update per read.
        let after = self.advertisable_window();
        let thresh = (2 * self.snd_mss as usize).min(self.cfg.recv_buf / 2) as u32;
        if self.state.is_synchronized()
            && after > before
            && after - dist(self.rcv_nxt, self.rcv_adv).min(after) >= thresh
        {
            self.ack_now = true;
        }
        // A pushed tail read to the end: nothing more is coming soon, so its ACK has no reason
        // to wait out the delayed-ACK timer (the sender may be waiting for it to go on, or a
        // donor draining before a handoff), unless our answer will carry it.
        if self.ack_pushed && self.rcv_buf.is_empty() && !self.interactive {
            self.ack_now = true;
        }
        n
    }

    fn advertisable_window(&self) -> u32 {
        self.rcv_space().min(u32::MAX as usize / 2) as u32
    }

    /// Close the sending side (RFC 9293 §3.10.4): a FIN follows the queued data.
    pub fn close(&mut self) {
        match self.state {
            TcpState::SynSent | TcpState::Listen | TcpState::Closed => {
                self.state = TcpState::Closed;
            }
            TcpState::SynReceived | TcpState::Established => {
                self.fin_queued = true;
                self.state = TcpState::FinWait1;
            }
            TcpState::CloseWait => {
                self.fin_queued = true;
                self.state = TcpState::LastAck;
            }
            _ => {}
        }
    }

    /// Abort (RFC 9293 §3.10.5): send RST if synchronized, drop everything.
    pub fn abort(&mut self) {
        if matches!(
            self.state,
            TcpState::SynReceived
                | TcpState::Established
                | TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::CloseWait
        ) {
            self.rst_due = true;
        }
        self.enter_closed(Some(TcpError::Aborted));
    }

    fn enter_closed(&mut self, err: Option<TcpError>) {
        self.state = TcpState::Closed;
        if self.error.is_none() {
            self.error = err;
        }
        self.t_rto = None;
        self.t_tlp = None;
        self.t_delack = None;
        self.t_persist = None;
        self.t_keepalive = None;
        self.t_close = None;
        self.snd_buf.clear();
        self.ack_now = false;
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = TcpState::TimeWait;
        self.t_rto = None;
        self.t_persist = None;
        self.t_keepalive = None;
        self.t_close = Some(now + self.cfg.time_wait);
    }

    fn send_challenge_ack(&mut self, now: Instant) {
        if self.challenge_allowed(now) {
            self.events.challenge_acks += 1;
            self.ack_now = true;
        }
    }

    /// RFC 5961 §7: answers to unacceptable segments (challenge ACKs, a SYN-ACK again for a
    /// duplicate SYN) within [`CHALLENGE_ACK_LIMIT`] a second; takes one.
    fn challenge_allowed(&mut self, now: Instant) -> bool {
        self.challenge_window
            .allow(now, CHALLENGE_ACK_LIMIT, Duration::from_secs(1))
    }

    /// Reply with an ACK to an unacceptable segment (RFC 9293 §3.10.7.4 first check, RFC 7323
    /// §5.3 R1). A segment that occupies no sequence space (a pure ACK) is answered at most once
    /// per [`OOW_ACK_INTERVAL`], as Linux does (`tcp_oow_rate_limited`) for the reason RFC 5961
    /// §7 throttles challenge ACKs: each reply is a duplicate ACK to the peer. Old pure ACKs
    /// that arrive after newer ones (after a handoff, those the donor forwards come after the
    /// client's direct ones) would otherwise make three duplicate ACKs and a spurious fast
    /// retransmission at the peer, or an ACK loop.
    fn ack_unacceptable(&mut self, now: Instant, seg: &SegIn<'_>) {
        if seg.seg_len() == 0 {
            if self.oow_ack_at.is_some_and(|t| now - t < OOW_ACK_INTERVAL) {
                self.events.oow_acks_limited += 1;
                return;
            }
            self.oow_ack_at = Some(now);
        }
        self.ack_now = true;
    }

    /// Whether `seg` cannot be this passively opened connection's in SYN-RECEIVED: it
    /// carries an ACK of something this connection never sent (outside (SND.UNA, SND.MAX]),
    /// without SYN or RST. RFC 9293 §3.10.7.4 answers it with a reset <SEQ=SEG.ACK>; on an
    /// interface with siblings it is more likely a segment of an established connection a
    /// sibling holds, whose 4-tuple a stray SYN (a duplicate, a replay, a spoof) just opened
    /// here too, and that reset would be in the real connection's window
    /// ([`crate::Interface::set_siblings`]).
    pub(crate) fn unacceptable_in_syn_received(&self, seg: &SegIn<'_>) -> bool {
        self.state == TcpState::SynReceived
            && self.listener.is_some()
            && !seg.syn
            && !seg.rst
            && seg
                .ack
                .is_some_and(|a| !(lt(self.snd_una, a) && le(a, self.snd_max)))
    }

    /// Process one incoming segment for this connection (RFC 9293 §3.10.7).
    pub fn on_segment(&mut self, now: Instant, seg: &SegIn<'_>) {
        match self.state {
            TcpState::Closed | TcpState::Listen => {}
            TcpState::SynSent => self.on_segment_syn_sent(now, seg),
            _ => self.on_segment_sync(now, seg),
        }
    }

    /// RFC 9293 §3.10.7.3, SYN-SENT.
    fn on_segment_syn_sent(&mut self, now: Instant, seg: &SegIn<'_>) {
        let mut ack_ok = false;
        if let Some(ack) = seg.ack {
            // First: the ACK must acknowledge our SYN.
            if le(ack, self.iss) || gt(ack, self.snd_max) {
                if !seg.rst {
                    self.rst_due_for_ack = Some(ack);
                }
                return;
            }
            ack_ok = true;
        }
        if seg.rst {
            // RFC 5961 §3.2 keeps the SYN-SENT rule: RST acceptable only with an acceptable ACK.
            if ack_ok {
                self.enter_closed(Some(TcpError::Refused));
            }
            return;
        }
        if !seg.syn {
            return;
        }
        self.take_syn_options(seg, now);
        self.irs = seg.seq;
        self.rcv_nxt = seg.seq.wrapping_add(1);
        self.rcv_adv = self
            .rcv_nxt
            .wrapping_add(self.rcv_space().min(65535) as u32);
        if let (true, Some(ack)) = (ack_ok, seg.ack) {
            self.snd_una = ack;
            self.snd_buf_seq = ack;
            // RFC 7323 §2.2: the window field of a SYN (the SYN-ACK too) is never scaled.
            self.set_snd_wnd(seg.window as u32, seg.seq, ack);
            self.rtt_sample_from_timed(now, ack);
            self.state = TcpState::Established;
            self.retries = 0;
            self.backoff = 0;
            self.t_rto = None;
            self.ack_now = true;
            self.arm_keepalive(now);
            if self.fin_queued {
                self.state = TcpState::FinWait1;
            }
        } else {
            // Simultaneous open (RFC 9293 §3.5 figure 7): answer with SYN-ACK.
            self.state = TcpState::SynReceived;
            self.snd_nxt = self.iss;
            self.set_snd_wnd(seg.window as u32, seg.seq, 0);
        }
    }

    fn arm_keepalive(&mut self, now: Instant) {
        self.t_keepalive = self.cfg.keepalive.map(|k| now + k.idle);
        self.ka_probes = 0;
    }

    /// Segment arrival in the synchronized states and SYN-RECEIVED (RFC 9293 §3.10.7.4).
    fn on_segment_sync(&mut self, now: Instant, seg: &SegIn<'_>) {
        // RFC 7323 §5.3 R1: PAWS.
        if self.ts_ok && self.ts_recent_valid && !seg.rst {
            if let Some((tsval, _)) = seg.ts {
                if lt(tsval, self.ts_recent) && now - self.ts_recent_at < PAWS_IDLE {
                    self.events.paws_rejected += 1;
                    self.ack_unacceptable(now, seg);
                    return;
                }
            }
        }

        // First: sequence number acceptability.
        let wnd = dist(self.rcv_nxt, self.rcv_adv);
        let wnd = if gt(self.rcv_nxt, self.rcv_adv) {
            0
        } else {
            wnd
        };
        let len = seg.seg_len();
        let acceptable = if len == 0 {
            if wnd == 0 {
                seg.seq == self.rcv_nxt
            } else {
                le(self.rcv_nxt, seg.seq) && lt(seg.seq, self.rcv_nxt.wrapping_add(wnd))
            }
        } else if wnd == 0 {
            false
        } else {
            let last = seg.seq.wrapping_add(len - 1);
            (le(self.rcv_nxt, seg.seq) && lt(seg.seq, self.rcv_nxt.wrapping_add(wnd)))
                || (le(self.rcv_nxt, last) && lt(last, self.rcv_nxt.wrapping_add(wnd)))
        };
        if !acceptable {
            if self.state == TcpState::SynReceived
                && seg.syn
                && seg.ack.is_none()
                && seg.seq == self.irs
            {
                // The peer's SYN again: our SYN-ACK was lost, send it again (within the
                // limit of answers: a stream of copies is not reflected one for one).
                if self.challenge_allowed(now) {
                    self.snd_nxt = self.iss;
                }
                return;
            }
            if !seg.payload.is_empty() && self.sack_ok {
                let end = seg.seq.wrapping_add(seg.payload.len() as u32);
                if le(end, self.rcv_nxt) {
                    self.dsack = Some((seg.seq, end));
                }
            }
            if !seg.rst {
                // A retransmitted FIN in TIME-WAIT restarts the 2 MSL timer.
                if self.state == TcpState::TimeWait && seg.fin {
                    self.t_close = Some(now + self.cfg.time_wait);
                }
                self.ack_unacceptable(now, seg);
            }
            return;
        }

        // Second: RST (RFC 5961 §3.2).
        if seg.rst {
            if seg.seq == self.rcv_nxt {
                // (A passive SYN-RECEIVED connection simply disappears: RFC 9293 returns it
                // to LISTEN, which for us is the listener that is still there.)
                self.enter_closed(Some(TcpError::Reset));
            } else {
                self.send_challenge_ack(now);
            }
            return;
        }

        // Fourth: SYN in a synchronized state (RFC 5961 §4.2): challenge ACK.
        if seg.syn {
            if self.state == TcpState::SynReceived {
                // Duplicate SYN: answer with our SYN-ACK again, within the limit of answers
                // (a stream of them is not reflected one for one).
                if self.challenge_allowed(now) {
                    self.snd_nxt = self.iss;
                }
            } else {
                self.send_challenge_ack(now);
            }
            return;
        }

        // Fifth: ACK.
        let Some(ack) = seg.ack else { return };
        if self.state == TcpState::SynReceived {
            if lt(self.snd_una, ack) && le(ack, self.snd_max) {
                self.state = TcpState::Established;
                self.snd_una = self.snd_una.wrapping_add(1);
                self.snd_buf_seq = self.snd_una;
                self.set_snd_wnd((seg.window as u32) << self.snd_wscale, seg.seq, ack);
                self.rtt_sample_from_timed(now, ack);
                self.retries = 0;
                self.backoff = 0;
                self.t_rto = None;
                self.arm_keepalive(now);
                if self.fin_queued {
                    self.state = TcpState::FinWait1;
                }
            } else {
                self.rst_due_for_ack = Some(ack);
                return;
            }
        }
        // RFC 5961 §5.2: ACK acceptability.
        if lt(ack, self.snd_una.wrapping_sub(self.max_snd_wnd)) {
            self.send_challenge_ack(now);
            return;
        }
        if gt(ack, self.snd_max) {
            // RFC 9293 §3.10.7.4: an ACK of something not yet sent is answered with an ACK
            // and dropped; within the limit for unacceptable segments (RFC 5961 §7), so a
            // stream of them is not reflected one for one.
            self.send_challenge_ack(now);
            return;
        }
        if self.cfg.keepalive.is_some() {
            self.arm_keepalive(now);
        }

        // RFC 7323 §4.3: record TS.Recent when the segment covers Last.ACK.sent.
        if self.ts_ok {
            if let Some((tsval, _)) = seg.ts {
                if !self.ts_recent_valid
                    || (ge(tsval, self.ts_recent) && le(seg.seq, self.last_ack_sent))
                {
                    self.ts_recent = tsval;
                    self.ts_recent_at = now;
                    self.ts_recent_valid = true;
                }
            }
        }

        self.process_ack(now, seg, ack);
        if self.state == TcpState::Closed {
            return;
        }

        // Seventh: segment text.
        let mut fin_ok = seg.fin;
        if matches!(
            self.state,
            TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2
        ) {
            fin_ok = self.accept_data(now, seg);
        } else if !seg.payload.is_empty() {
            // Data after the peer's FIN: acknowledge what we have, drop it.
            self.ack_now = true;
            fin_ok = false;
        }

        // Eighth: FIN.
        if seg.fin {
            let fin_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
            if fin_ok && fin_seq == self.rcv_nxt {
                self.take_fin(now);
            } else if gt(fin_seq, self.rcv_nxt) && self.state != TcpState::TimeWait {
                self.ooo_fin = Some(fin_seq);
                self.ack_now = true;
            } else if self.state == TcpState::TimeWait {
                self.t_close = Some(now + self.cfg.time_wait);
                self.ack_now = true;
            }
        }
    }

    fn take_fin(&mut self, now: Instant) {
        if self.fin_rcvd {
            self.ack_now = true;
            return;
        }
        self.fin_rcvd = true;
        self.ooo_fin = None;
        // Data past the FIN is never delivered (RFC 9293 §3.10.7.4: the FIN ends the stream);
        // kept, its place would be off by the FIN's sequence number.
        if !self.ooo.is_empty() {
            self.ooo = OooQueue::default();
        }
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.ack_now = true;
        match self.state {
            TcpState::SynReceived | TcpState::Established => self.state = TcpState::CloseWait,
            TcpState::FinWait1 => {
                if self.fin_acked() {
                    self.enter_time_wait(now);
                } else {
                    self.state = TcpState::Closing;
                }
            }
            TcpState::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    /// Accept payload into the receive buffer or the out-of-order queue. Returns whether a FIN
    /// on this segment is in sequence after the data.
    fn accept_data(&mut self, now: Instant, seg: &SegIn<'_>) -> bool {
        let mut seq = seg.seq;
        let mut data = seg.payload;
        let mut whole = true;
        if lt(seq, self.rcv_nxt) {
            let skip = dist(seq, self.rcv_nxt) as usize;
            if self.sack_ok && !data.is_empty() {
                // RFC 2883 §4: report the duplicated part.
                self.dsack = Some((seq, seq.wrapping_add(skip.min(data.len()) as u32)));
            }
            if skip >= data.len() {
                if !data.is_empty() {
                    // Entirely duplicate: a retransmission we already have (RFC 9293 §3.10.7.4).
                    self.ack_now = true;
                }
                return seg.fin && skip == data.len();
            }
            data = &data[skip..];
            seq = self.rcv_nxt;
        }
        // Trim to the buffer space we have.
        let space_end = self.rcv_nxt.wrapping_add(self.rcv_space() as u32);
        let end = seq.wrapping_add(data.len() as u32);
        if gt(end, space_end) {
            let keep = if gt(space_end, seq) {
                dist(seq, space_end) as usize
            } else {
                0
            };
            data = &data[..keep];
            whole = false;
        }
        if data.is_empty() {
            if !seg.payload.is_empty() {
                self.ack_now = true;
            }
            return seg.fin && whole;
        }
        if seq == self.rcv_nxt {
            let had_ooo = !self.ooo.is_empty();
            if had_ooo {
                // Over the bytes written ahead, if it reaches them (the same bytes, from an
                // honest peer), and keeping them if the storage grows.
                let ahead = self.ooo.extent(self.rcv_nxt);
                self.rcv_buf.write_ahead(0, data, ahead, self.cfg.recv_buf);
                self.rcv_buf.commit(data.len());
            } else {
                self.rcv_buf.extend_within(data, self.cfg.recv_buf);
            }
            self.rcv_nxt = self.rcv_nxt.wrapping_add(data.len() as u32);
            if had_ooo {
                self.drain_ooo();
                // RFC 5681 §4.2: ACK at once when a segment fills a hole.
                self.ack_now = true;
            } else {
                self.schedule_delayed_ack(now, data.len());
                self.ack_pushed |= seg.psh && !self.ack_now;
            }
            self.last_data_in = Some(now);
        } else {
            if self.sack_ok
                && self
                    .ooo
                    .covers(self.rcv_nxt, seq, seq.wrapping_add(data.len() as u32))
            {
                // RFC 2883 §4.2: a duplicate of out-of-order data.
                self.dsack = Some((seq, seq.wrapping_add(data.len() as u32)));
            }
            if self.hold_out_of_order(dist(self.rcv_nxt, seq) as usize, data) {
                self.events.ooo_segments = self.events.ooo_segments.saturating_add(1);
            } else {
                self.events.ooo_dropped = self.events.ooo_dropped.saturating_add(1);
            }
            // RFC 5681 §4.2: out-of-order data gets an immediate (duplicate) ACK.
            self.ack_now = true;
            return false;
        }
        if let Some(f) = self.ooo_fin {
            if f == self.rcv_nxt && !seg.fin {
                self.take_fin(now);
            }
        }
        whole
    }

    /// Whether out-of-order bytes `off..off + n` past RCV.NXT may be written into the receive
    /// buffer's storage: where the storage holds them already, or where growing it to hold them
    /// keeps it within twice the bytes the connection holds (unread, out of order, and these)
    /// plus [`OOO_GROWTH_SLACK`]. Otherwise one byte at the window's edge would grow the
    /// storage to the window (4 MiB by default): memory in proportion to a segment's offset,
    /// not to what arrived. (Linux charges each queued segment's buffer to the receive buffer
    /// and prunes.) A segment refused is dropped like one past [`MAX_OOO_BLOCKS`]; an honest
    /// sender's loss leaves the segments after the hole, which hold about what they span.
    pub(crate) fn ooo_fits(&self, off: usize, n: usize) -> bool {
        let need = self.rcv_buf.len() + off + n;
        need <= self.rcv_buf.capacity()
            || need <= 2 * (self.rcv_buf.len() + self.ooo.bytes() + n) + OOO_GROWTH_SLACK
    }

    /// Hold `data`, `off` bytes past RCV.NXT, out of order: written where it will be read, so
    /// that no copy is made when the hole fills (RFC 9293 §3.10.7.4). False if refused
    /// ([`Tcb::ooo_fits`], [`MAX_OOO_BLOCKS`]).
    pub(crate) fn hold_out_of_order(&mut self, off: usize, data: &[u8]) -> bool {
        let start = self.rcv_nxt.wrapping_add(off as u32);
        // What the storage holds ahead so far, for a growth to keep.
        let ahead = self.ooo.extent(self.rcv_nxt);
        if !self.ooo_fits(off, data.len())
            || !self
                .ooo
                .insert(self.rcv_nxt, start, start.wrapping_add(data.len() as u32))
        {
            return false;
        }
        self.rcv_buf
            .write_ahead(off, data, ahead, self.cfg.recv_buf);
        true
    }

    /// Hold the blocks RCV.NXT has reached: their bytes are in place already.
    fn drain_ooo(&mut self) {
        while let Some((_, end)) = self.ooo.pop_reached(self.rcv_nxt) {
            if gt(end, self.rcv_nxt) {
                self.rcv_buf.commit(dist(self.rcv_nxt, end) as usize);
                self.rcv_nxt = end;
            }
        }
    }

    fn schedule_delayed_ack(&mut self, now: Instant, len: usize) {
        match self.cfg.delayed_ack {
            None => self.ack_now = true,
            Some(d) => {
                // RFC 9293 §3.8.6.3: ACK at least every second full-sized segment.
                self.delack_segs += if len >= self.snd_mss as usize { 2 } else { 1 };
                if self.delack_segs >= 2 {
                    self.ack_now = true;
                } else if self.t_delack.is_none() {
                    self.t_delack = Some(now + d);
                }
            }
        }
    }

    fn rtt_sample_from_timed(&mut self, now: Instant, ack: u32) {
        if let Some((s, t)) = self.timed {
            if gt(ack, s) {
                self.timed = None;
                self.rtt_sample(now - t);
            }
        }
    }

    /// An RTT sample from the echoed timestamp of an ACK of new data (RFC 7323 §4.1, at the
    /// timestamps' 1 ms granularity), for HyStart++, which needs a sample per ACK rather than
    /// the one timed segment per round trip that feeds the RTO. `None` without timestamps or
    /// for an echo from the future or from long ago.
    fn ts_rtt(&self, now: Instant, seg: &SegIn<'_>) -> Option<Duration> {
        let (_, ecr) = seg.ts.filter(|_| self.ts_ok)?;
        let ms = self.tsval(now).wrapping_sub(ecr);
        (ecr != 0 && ms < 60_000).then(|| Duration::from_millis(ms.into()))
    }

    /// RFC 6298 §2.2–§2.3.
    fn rtt_sample(&mut self, r: Duration) {
        let r = r.max(Duration::from_micros(1));
        // RFC 6298 §2.2: the first measurement on this path replaces an estimate the
        // connection brought from another host's path.
        if std::mem::take(&mut self.rtt_inherited) {
            self.srtt = None;
        }
        // In whole microseconds, our clock's unit (Linux keeps eight times SRTT and four
        // times RTTVAR for sub-unit precision; unscaled, SRTT settles up to 7 µs below the
        // samples and RTTVAR up to 3 µs: nothing next to the 1 ms G and the RTO's floor).
        let r = u64::from(Micros::from(r).as_micros());
        let us = |v: u64| Micros::from_micros(u32::try_from(v).unwrap_or(u32::MAX));
        match self.srtt {
            None => {
                self.srtt = Some(us(r));
                self.rttvar = us(r / 2);
            }
            Some(srtt) => {
                let srtt = u64::from(srtt.as_micros());
                let diff = srtt.abs_diff(r);
                self.rttvar = us((u64::from(self.rttvar.as_micros()) * 3 + diff) / 4);
                self.srtt = Some(us((srtt * 7 + r) / 8));
            }
        }
        self.backoff = 0;
        self.update_rto();
    }

    pub(crate) fn update_rto(&mut self) {
        let srtt = self.srtt.unwrap_or_default().get();
        // G, the clock granularity: our clock is microseconds, use 1 ms as Linux does.
        let k_rttvar = (self.rttvar.get() * 4).max(Duration::from_millis(1));
        let base = if self.srtt.is_some() {
            srtt + k_rttvar
        } else {
            self.cfg.initial_rto
        };
        // RFC 6298 §2.4 bounds the estimate; §5.5 then doubles it per timeout.
        let base = base.clamp(self.cfg.min_rto, self.cfg.max_rto);
        self.rto = base
            .saturating_mul(1u32 << self.backoff.min(16))
            .min(self.cfg.max_rto)
            .into();
    }

    /// The ACK processing of RFC 9293 §3.10.7.4 "fifth", with RFC 5681 / 6582 / 6675 loss
    /// recovery.
    fn process_ack(&mut self, now: Instant, seg: &SegIn<'_>, ack: u32) {
        let mss = self.snd_mss;
        let wnd = (seg.window as u32) << self.snd_wscale;
        let window_update =
            lt(self.snd_wl1, seg.seq) || (self.snd_wl1 == seg.seq && le(self.snd_wl2, ack));

        // RFC 6937 DeliveredData: the change in SND.UNA plus the (signed) change in SACKed
        // octets.
        let una_before = self.snd_una;
        let sacked_before = self.sacked_bytes();
        if self.sack_ok {
            self.update_scoreboard(&seg.sack, ack);
            self.detect_lost_retransmissions();
            self.detect_lost_before_probe(&seg.sack);
        }

        if gt(ack, self.snd_una) {
            let acked = dist(self.snd_una, ack);
            // Remove acknowledged data from the buffer (SYN/FIN occupy no buffer bytes).
            let data_acked = if gt(ack, self.snd_buf_seq) {
                (dist(self.snd_buf_seq, ack) as usize).min(self.snd_buf.len())
            } else {
                0
            };
            self.snd_buf.consume(data_acked);
            release_emptied_buffer(&mut self.snd_buf);
            self.snd_buf_seq = self.snd_buf_seq.wrapping_add(data_acked as u32);
            self.snd_una = ack;
            if lt(self.snd_nxt, ack) {
                self.snd_nxt = ack;
            }
            self.retries = 0;
            self.rtt_sample_from_timed(now, ack);
            self.ka_probes = 0;
            self.limited_tx = 0;

            match self.recovery {
                Some(point) if lt(ack, point) => {
                    // Partial ACK.
                    if self.loss_all {
                        // Timeout recovery grows the window by slow start (RFC 5681 §3.1).
                        let srtt = self.srtt.map_or(Duration::from_millis(100), Micros::get);
                        self.cc.on_ack(acked, mss, now, srtt);
                    } else if !self.sack_ok {
                        // RFC 6582 §3.2 step 5: retransmit the next segment, deflate.
                        self.cc.cwnd = self
                            .cc
                            .cwnd
                            .saturating_sub(acked)
                            .saturating_add(mss)
                            .max(mss);
                    } else if !self.tail_lost {
                        // RFC 8985 §6.2: lost once something sent later was delivered and
                        // RACK.rtt + reo_wnd has passed since it was sent; everything below
                        // the point went out before the recovery began. reo_wnd is a
                        // quarter of SRTT here (RFC 8985 §6.2 uses min_rtt / 4; we keep no
                        // min_rtt).
                        let srtt = self.srtt.unwrap_or_default().get();
                        self.tail_lost = self
                            .recovery_at
                            .is_some_and(|at| now >= at + srtt + srtt / 4);
                    }
                    self.rexmit_now = true;
                    if lt(self.high_rxt, ack) {
                        self.high_rxt = ack;
                    }
                }
                Some(_) => {
                    // Full ACK: leave recovery (RFC 6582 §3.2 step 6, RFC 6675 §5).
                    self.recovery = None;
                    self.tail_lost = false;
                    if !self.loss_all {
                        self.cc.cwnd = self.cc.ssthresh.min(self.flight().max(mss) + mss).max(mss);
                    }
                    self.loss_all = false;
                    self.dupacks = 0;
                }
                None => {
                    self.dupacks = 0;
                    let srtt = self.srtt.map_or(Duration::from_millis(100), Micros::get);
                    let rtt = self.ts_rtt(now, seg);
                    self.cc.hystart_on_ack(ack, self.snd_nxt, rtt);
                    self.cc.on_ack(acked, mss, now, srtt);
                }
            }
            // RFC 6298 §5.2/§5.3: stop the timer when all is acked, else restart it.
            if self.snd_una == self.snd_max {
                self.t_rto = None;
                if !lt(self.snd_max, self.data_end()) {
                    // All acknowledged: the solicitation is answered.
                    self.drain_probe_owed = false;
                    self.drain_probed = false;
                }
            } else {
                self.t_rto = Some(now + self.rto);
            }
            self.tlp_out = false;
            self.arm_tlp(now);
            // Our FIN acknowledged?
            if self.fin_acked() {
                match self.state {
                    TcpState::FinWait1 => {
                        self.state = TcpState::FinWait2;
                        self.t_close = Some(now + self.cfg.fin_wait2_timeout);
                    }
                    TcpState::Closing => self.enter_time_wait(now),
                    TcpState::LastAck => {
                        self.enter_closed(None);
                        return;
                    }
                    _ => {}
                }
            }
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.syn
            && !seg.fin
            && self.snd_una != self.snd_max
            && wnd == self.snd_wnd
            && wnd != 0
        {
            // RFC 5681 §2 duplicate ACK. Not with a zero window: that is the receiver's answer
            // to a window probe (whose octet makes SND.MAX pass SND.UNA), and counting it sent
            // the probe into fast recovery and the retransmission timeout, which closed a
            // connection whose receiver kept answering (RFC 9293 §3.8.6.1: it stays open).
            self.dupacks += 1;
            if self.recovery.is_none() && self.dupacks <= 2 {
                self.limited_tx = self.dupacks;
            }
            if self.recovery.is_some() && !self.sack_ok {
                // RFC 6582 §3.2 step 4: inflate.
                self.cc.cwnd = self.cc.cwnd.saturating_add(mss);
            }
        }

        if wnd == 0 {
            // The receiver is there, its window closed (an answer to a probe, say): it keeps
            // the connection open however long that lasts (RFC 9293 §3.8.6.1).
            self.retries = 0;
        }
        if window_update {
            self.set_snd_wnd(wnd, seg.seq, ack);
            if wnd > 0 {
                if self.t_persist.is_some()
                    && self.snd_una != self.snd_nxt
                    && lt(self.snd_una, self.snd_nxt)
                    && self.flight() <= 1
                {
                    // The window reopened while a probe byte the peer dropped is "in flight":
                    // send it again now, at the head of a full segment.
                    self.snd_nxt = self.snd_una;
                }
                self.t_persist = None;
                self.persist_backoff = 0;
                if self.snd_una != self.snd_max && self.t_rto.is_none() {
                    self.t_rto = Some(now + self.rto);
                }
            }
        }

        self.maybe_enter_recovery(now);
        if self.sack_ok && self.recovery.is_some() && !self.loss_all {
            let delivered = i64::from(dist(una_before, self.snd_una))
                + i64::from(self.sacked_bytes())
                - i64::from(sacked_before);
            self.prr_on_ack(u32::try_from(delivered.max(0)).unwrap_or(u32::MAX));
        }
    }

    /// RFC 6937 §3: the window in SACK recovery follows what the receiver gets. While pipe
    /// is above ssthresh, send `ssthresh / RecoverFS` of what was delivered (the reduction
    /// spread over a round trip instead of a burst up to ssthresh at the first ACK); below
    /// it, grow back no faster than slow start (PRR-SSRB: what was delivered plus one
    /// segment per ACK). Entering recovery after a large flight into a drop-tail queue, the
    /// burst that cwnd = ssthresh allows at once (some 0.7 of the flight, with the queue
    /// still full) lost retransmissions in turn.
    fn prr_on_ack(&mut self, delivered: u32) {
        let mss = self.eff_mss();
        self.prr_delivered = self.prr_delivered.saturating_add(delivered);
        let pipe = self.pipe();
        let ssthresh = self.cc.ssthresh;
        let sndcnt = if pipe > ssthresh {
            let target = (u64::from(self.prr_delivered) * u64::from(ssthresh))
                .div_ceil(u64::from(self.recover_fs.max(1)));
            u32::try_from(target)
                .unwrap_or(u32::MAX)
                .saturating_sub(self.prr_out)
        } else {
            let limit = self
                .prr_delivered
                .saturating_sub(self.prr_out)
                .max(delivered)
                .saturating_add(mss);
            (ssthresh - pipe).min(limit)
        };
        self.cc.cwnd = pipe.saturating_add(sndcnt);
    }

    /// Data sent in recovery counts against PRR's allowance.
    fn count_prr_out(&mut self, len: u32) {
        if self.recovery.is_some() {
            self.prr_out = self.prr_out.saturating_add(len);
        }
    }

    /// Enter loss recovery: three duplicate ACKs, or (RFC 6675 IsLost) more than
    /// (DupThresh − 1)·SMSS bytes SACKed above SND.UNA.
    fn maybe_enter_recovery(&mut self, now: Instant) {
        let mss = self.snd_mss;
        if self.recovery.is_none()
            && self.snd_una != self.snd_max
            && (self.dupacks >= 3 || (self.sack_ok && self.sack_says_lost()))
            && (ge(self.snd_una, self.recover) || self.recover == self.iss)
        {
            // RFC 6582 §3.2 step 2 guard: not again for losses below the previous recover
            // point (data sent before the last reduction). A hole at the point itself is data
            // sent after it: a new loss event.
            self.events.fast_recovery += 1;
            let ss = self.cc.on_congestion(self.flight(), mss);
            self.recover = self.snd_max;
            self.recovery = Some(self.snd_max);
            self.recovery_at = Some(now);
            self.tail_lost = false;
            self.last_rxt = None;
            self.rxt_probe = None;
            self.prr_delivered = 0;
            self.prr_out = 0;
            self.recover_fs = self.flight();
            self.high_rxt = self.snd_una;
            self.rexmit_now = true;
            self.timed = None;
            self.cc.cwnd = if self.sack_ok { ss } else { ss + 3 * mss };
        }
    }

    /// A hole we retransmitted is still open although data sent after that retransmission has
    /// been SACKed: the retransmission was lost as well; start another pass over the holes.
    fn detect_lost_retransmissions(&mut self) {
        if self.recovery.is_none() || self.high_rxt == self.snd_una {
            return;
        }
        let Some(&(_, top)) = self.sacked.last() else {
            return;
        };
        let Some((h, _)) = self.next_hole(self.snd_una) else {
            return;
        };
        if !lt(h, self.high_rxt) {
            return;
        }
        // Data sent after the latest retransmission was delivered: new data above the fence,
        // or a later retransmission (above the hole, so resent after it in this pass).
        let later_rxt_sacked = self.last_rxt.is_some_and(|(l, r)| {
            lt(h, l) && self.sacked.iter().any(|&(sl, sr)| le(sl, l) && le(r, sr))
        });
        if gt(top, self.rxt_fence) || later_rxt_sacked {
            self.restart_pass();
        }
    }

    /// Every retransmission still open was lost (what was sent after the latest one arrived):
    /// a new pass over the holes from SND.UNA. The evidence is always about the latest
    /// transmission, so no retransmission still on its way is resent.
    fn restart_pass(&mut self) {
        self.high_rxt = self.snd_una;
        self.rxt_fence = self.snd_max;
        self.last_rxt = None;
    }

    /// The ACK reports the octet of the drain probe that followed this recovery's latest
    /// retransmission (its first SACK block is exactly that octet: a D-SACK, RFC 2883 §4, as
    /// the octet was SACKed already), so the probe arrived. Every retransmission whose hole is
    /// still open was sent before it and lost (RFC 8985 §6.2 by send order: a segment sent
    /// later was delivered): a new pass. This covers what
    /// [`Tcb::detect_lost_retransmissions`] cannot: a draining donor whose *last*
    /// retransmission is lost has no later data or retransmission to be SACKed, only the
    /// probe, and would otherwise wait for the timeout (200 ms at least).
    fn detect_lost_before_probe(&mut self, blocks: &[Option<(u32, u32)>; 3]) {
        let Some(octet) = self.rxt_probe else {
            return;
        };
        if blocks[0] != Some((octet, octet.wrapping_add(1))) {
            return;
        }
        self.rxt_probe = None;
        if self.recovery.is_none() {
            return;
        }
        if self
            .next_hole(self.snd_una)
            .is_some_and(|(h, _)| lt(h, self.high_rxt))
        {
            self.restart_pass();
        }
    }

    /// RFC 6675 IsLost(SND.UNA): more than (DupThresh − 1)·SMSS bytes SACKed above it; with
    /// few segments outstanding (RFC 5827 early retransmit) or after a tail loss probe
    /// (RFC 8985 §7), any SACKed data above a hole marks it lost.
    fn sack_says_lost(&self) -> bool {
        let sacked = self.sacked_bytes();
        if sacked == 0 {
            return false;
        }
        let mss = self.eff_mss().max(1);
        let segs_out = self.flight().div_ceil(mss);
        sacked > 2 * mss || self.tlp_out || (segs_out < 4 && !self.has_unsent())
    }

    fn has_unsent(&self) -> bool {
        lt(self.snd_max, self.data_end())
    }

    /// Arm the tail loss probe: PTO = 2·SRTT (+ the worst-case delayed ACK when one segment
    /// is in flight), never later than the RTO (RFC 8985 §7.2).
    fn arm_tlp(&mut self, now: Instant) {
        self.t_tlp = None;
        let Some(srtt) = self.srtt.map(Micros::get) else {
            return;
        };
        // RFC 8985 §7.2 sets the probe timeout from this path's SRTT; an inherited one may be
        // far shorter (the donor sat next to the client's home agent), and every probe would
        // be a spurious retransmission. The RTO covers a lost tail until we have a sample.
        if self.rtt_inherited {
            return;
        }
        if self.recovery.is_some()
            || self.tlp_out
            || self.snd_una == self.snd_max
            || !self.state.is_synchronized()
            || self.snd_wnd == 0
        {
            return;
        }
        let mut pto = (srtt * 2).max(Duration::from_millis(10));
        if self.flight() <= self.eff_mss() {
            pto += Duration::from_millis(200);
        }
        let at = now + pto;
        if self.t_rto.is_none_or(|r| at < r) {
            self.t_tlp = Some(at);
        }
    }

    fn update_scoreboard(&mut self, blocks: &[Option<(u32, u32)>; 3], ack: u32) {
        for &(l, r) in blocks.iter().flatten() {
            if !lt(l, r) || !gt(r, ack) || gt(r, self.snd_max) {
                continue;
            }
            let l = seq::max(l, ack);
            self.insert_sack(l, r);
        }
        // Drop what SND.UNA passed.
        let una = seq::max(ack, self.snd_una);
        self.sacked.retain_mut(|(l, r)| {
            if le(*r, una) {
                return false;
            }
            if lt(*l, una) {
                *l = una;
            }
            true
        });
        self.release_emptied_scoreboard();
    }

    /// An empty scoreboard goes back to the shared empty header: a `ThinVec` keeps its length
    /// in its allocation, so a kept one would cost every later ACK a read of a cold line.
    fn release_emptied_scoreboard(&mut self) {
        if self.sacked.is_empty() && self.sacked.capacity() > 0 {
            self.sacked = ThinVec::new();
        }
    }

    /// Add the SACKed range `l..r` to the scoreboard, merged with the ranges it overlaps or
    /// touches, in place (the board stays sorted and disjoint; no allocation per ACK).
    fn insert_sack(&mut self, l: u32, r: u32) {
        let n = self.sacked.len();
        // Ranges wholly before it, then those it merges with (the board is sorted: binary
        // searches).
        let i = self.sacked.partition_point(|&(_, b)| lt(b, l));
        let j = i + self.sacked[i..].partition_point(|&(a, _)| !gt(a, r));
        // A receiver that SACKs every other byte would grow the board without bound, and
        // every ACK walks it: past the bound a new range is ignored (SACK is advisory, RFC
        // 2018 §8; what it leaves out is at worst resent).
        if n + 1 - (j - i) > MAX_SACK_BLOCKS {
            return;
        }
        let (mut nl, mut nr) = (l, r);
        if i < j {
            if lt(self.sacked[i].0, nl) {
                nl = self.sacked[i].0;
            }
            nr = seq::max(nr, self.sacked[j - 1].1);
        }
        self.sacked.splice(i..j, [(nl, nr)]);
    }

    fn sacked_bytes(&self) -> u32 {
        self.sacked.iter().map(|&(l, r)| dist(l, r)).sum()
    }

    /// The unSACKed ranges at or after `from`, in order: those below the highest SACKed byte,
    /// then, after a timeout or once the tail is known lost, the rest up to the recovery point.
    fn holes(&self, from: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut cur = seq::max(from, self.snd_una);
        let mut blocks = self.sacked.iter();
        let mut tail = match self.recovery {
            Some(point) if self.loss_all || self.tail_lost => Some(point),
            _ => None,
        };
        std::iter::from_fn(move || {
            for &(l, r) in blocks.by_ref() {
                if lt(cur, l) {
                    let hole = (cur, l);
                    cur = r;
                    return Some(hole);
                }
                if lt(cur, r) {
                    cur = r;
                }
            }
            tail.take().filter(|&p| lt(cur, p)).map(|p| (cur, p))
        })
    }

    /// First unSACKed range at or after `from` ([`Self::holes`]).
    fn next_hole(&self, from: u32) -> Option<(u32, u32)> {
        self.holes(from).next()
    }

    /// RFC 6675 §4 pipe: bytes believed in flight (lost holes not yet retransmitted excluded).
    fn pipe(&self) -> u32 {
        let lost = self
            .holes(seq::max(self.high_rxt, self.snd_una))
            .fold(0u32, |sum, (a, b)| sum.saturating_add(dist(a, b)));
        self.flight()
            .saturating_sub(self.sacked_bytes())
            .saturating_sub(lost)
    }

    /// Timer processing. Call when [`Tcb::poll_at`] has passed.
    pub fn on_timer(&mut self, now: Instant) {
        if self.t_close.is_some_and(|t| t <= now) {
            self.t_close = None;
            match self.state {
                TcpState::TimeWait => self.enter_closed(None),
                TcpState::FinWait2 => self.enter_closed(Some(TcpError::TimedOut)),
                _ => {}
            }
            return;
        }
        if let Some(p) = self.pace.as_deref_mut() {
            if p.armed.is_some_and(|t| t <= now) {
                // The next paced burst may go: the interface sends it as the connection has
                // data.
                p.armed = None;
            }
        }
        if self.t_delack.is_some_and(|t| t <= now) {
            self.t_delack = None;
            self.ack_now = true;
            // No answer carried the ACK in time: not interactive (Linux leaves pingpong mode
            // in its delayed-ACK timer too).
            self.interactive = false;
        }
        if self.t_rto.is_some_and(|t| t <= now) {
            self.t_rto = None;
            self.on_rto(now);
        }
        if self.t_tlp.is_some_and(|t| t <= now) {
            self.t_tlp = None;
            if self.recovery.is_none() && self.snd_una != self.snd_max {
                self.tlp_out = true;
                if self.sack_ok && self.sacked_bytes() > 0 {
                    // RFC 8985 §6.2: a probe timeout with SACKed data above SND.UNA means the
                    // hole outlived any plausible reordering: it is lost, recover now.
                    self.maybe_enter_recovery(now);
                }
                self.tlp_due = self.recovery.is_none();
            }
        }
        if self.t_persist.is_some_and(|t| t <= now) {
            // Probes that no ACK answered, like retransmissions (`retries`, reset by any ACK
            // of a zero window): a receiver that went silent behind a zero window is given up
            // after as many as a lost segment would be, not probed for ever.
            self.retries += 1;
            if self.retries > self.cfg.max_retries {
                self.enter_closed(Some(TcpError::TimedOut));
                return;
            }
            self.t_persist = None;
            self.probe_due = true;
            self.persist_backoff = (self.persist_backoff + 1).min(16);
        }
        if self.t_keepalive.is_some_and(|t| t <= now) {
            // RFC 1122 §4.2.3.6: probes on an idle established connection. In any other
            // state the due timer is taken and not re-armed: left in the past it made every
            // later look at the connection's deadline find it due, and the interface's timer
            // loop ran for ever (a peer that sent a FIN before the idle time, say).
            match self.cfg.keepalive {
                Some(k) if self.state == TcpState::Established => {
                    if self.ka_probes >= k.count {
                        self.enter_closed(Some(TcpError::TimedOut));
                        return;
                    }
                    self.ka_probes += 1;
                    self.ka_probe_due = true;
                    self.t_keepalive = Some(now + k.interval);
                }
                _ => self.t_keepalive = None,
            }
        }
    }

    /// RFC 6298 §5.4–§5.7 retransmission timeout.
    fn on_rto(&mut self, now: Instant) {
        let syn_phase = matches!(self.state, TcpState::SynSent | TcpState::SynReceived);
        if !syn_phase && self.snd_una == self.snd_max {
            return;
        }
        self.retries += 1;
        // Slow start from one segment follows: nothing left to pace.
        self.pace = None;
        let limit = if syn_phase {
            self.cfg.syn_retries
        } else {
            self.cfg.max_retries
        };
        if self.retries > limit {
            self.enter_closed(Some(TcpError::TimedOut));
            return;
        }
        self.events.rto += 1;
        tracing::debug!(
            local = %self.local,
            remote = %self.remote,
            flight = self.flight(),
            in_recovery = self.recovery.is_some(),
            sacked = self.sacked_bytes(),
            cwnd = self.cc.cwnd,
            backoff = self.backoff,
            "retransmission timeout"
        );
        if !syn_phase {
            let flight = self.flight();
            if self.backoff == 0 {
                self.cc.on_rto(flight, self.snd_mss);
            } else {
                self.cc.cwnd = self.snd_mss;
            }
            self.recover = self.snd_max;
            self.dupacks = 0;
            if self.sack_ok {
                // RFC 6675 §5.1: resend from SND.UNA, skipping what the scoreboard says the
                // peer holds, paced by a congestion window that restarts at one segment.
                // (A receiver that reneges is caught by the next timeout, which clears the
                // scoreboard: RFC 2018 §8.)
                if self.backoff > 0 {
                    self.sacked = ThinVec::new();
                }
                self.recovery = Some(self.snd_max);
                self.loss_all = true;
                self.rexmit_now = true;
            } else {
                // Go back N (RFC 6582 §4: leave fast recovery).
                self.recovery = None;
                self.rexmit_now = false;
                self.snd_nxt = self.snd_una;
            }
        } else {
            self.snd_nxt = self.snd_una;
        }
        self.high_rxt = self.snd_una;
        // Every hole is resent from SND.UNA now: an earlier probe proves nothing about these.
        self.rxt_probe = None;
        self.timed = None;
        self.backoff += 1;
        self.update_rto();
        self.t_rto = Some(now + self.rto);
    }

    /// The earliest instant at which [`Tcb::on_timer`] has work.
    pub fn poll_at(&self) -> Option<Instant> {
        [
            self.t_rto,
            self.t_tlp,
            self.t_delack,
            self.t_persist,
            self.t_keepalive,
            self.t_close,
            self.pace.as_deref().and_then(|p| p.armed),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether [`Tcb::next_segment`] may have something to send right now.
    pub fn wants_output(&self) -> bool {
        self.ack_now
            || self.tlp_due
            || self.rst_due
            || self.rst_due_for_ack.is_some()
            || self.probe_due
            || self.ka_probe_due
            || self.drain_probe_ready()
            || self.rexmit_now
            || self.has_data_to_send()
            || self.recovery_can_send()
    }

    /// In SACK loss recovery, a hole the scoreboard knows of is still to be resent and the
    /// pipe leaves room for it (RFC 6675 §5 (C): "while pipe permits, NextSeg()"). An ACK
    /// that only brought SACK information must be answered by retransmissions even when no
    /// new data waits: otherwise holes learnt after the first retransmission wait for a
    /// partial ACK, one round trip each, or for the timeout.
    fn recovery_can_send(&self) -> bool {
        self.sack_ok
            && self.recovery.is_some()
            && self.next_hole(self.high_rxt).is_some()
            && self.pipe().saturating_add(self.eff_mss()) <= self.cc.cwnd
    }

    fn has_data_to_send(&self) -> bool {
        match self.state {
            TcpState::SynSent | TcpState::SynReceived => self.snd_nxt == self.iss,
            TcpState::Established
            | TcpState::CloseWait
            | TcpState::FinWait1
            | TcpState::Closing
            | TcpState::LastAck => {
                lt(self.snd_nxt, self.data_end())
                    || (self.fin_queued
                        && le(self.snd_nxt, self.data_end())
                        && !gt(self.snd_max, self.data_end()))
                    || lt(self.snd_nxt, self.snd_max)
            }
            _ => false,
        }
    }

    fn window_field(&mut self, syn: bool) -> u16 {
        let space = self.advertisable_window();
        if syn {
            return space.min(65535) as u16;
        }
        let new_edge = self.rcv_nxt.wrapping_add(space);
        let cur = if gt(self.rcv_adv, self.rcv_nxt) {
            dist(self.rcv_nxt, self.rcv_adv)
        } else {
            0
        };
        // RFC 9293 §3.8.6.2.2 receiver SWS avoidance.
        let thresh = (self.cfg.recv_buf as u32 / 2).min(self.snd_mss);
        if gt(new_edge, self.rcv_adv)
            && (dist(self.rcv_adv, new_edge) >= thresh
                || space as usize == self.cfg.recv_buf
                || cur == 0 && space >= thresh)
        {
            self.rcv_adv = new_edge;
        }
        let wnd = if gt(self.rcv_adv, self.rcv_nxt) {
            dist(self.rcv_nxt, self.rcv_adv)
        } else {
            0
        };
        let shift = if self.ws_ok { self.rcv_wscale } else { 0 };
        (wnd >> shift).min(65535) as u16
    }

    fn base_segment(&mut self, now: Instant, seq: u32) -> SegOut {
        let window = self.window_field(false);
        let ts = self.ts_ok.then(|| (self.tsval(now), self.ts_recent));
        let sack = if self.sack_ok {
            let blocks = self.ooo.sack_blocks();
            match self.dsack.take() {
                // RFC 2883 §4: the D-SACK block first, then the usual blocks.
                Some(d) => [Some(d), blocks[0], blocks[1]],
                None => blocks,
            }
        } else {
            [None; 3]
        };
        self.last_ack_sent = self.rcv_nxt;
        self.ack_now = false;
        self.ack_pushed = false;
        self.t_delack = None;
        self.delack_segs = 0;
        self.events.segments_out += 1;
        SegOut {
            seq,
            ack: Some(self.rcv_nxt),
            window,
            ts,
            sack,
            ..SegOut::default()
        }
    }

    /// The next segment to send, if any. Call repeatedly until `None`.
    pub fn next_segment(&mut self, now: Instant) -> Option<SegOut> {
        self.next_segment_gso(now, 0)
    }

    /// Like [`Tcb::next_segment`], but new data may leave as one super-frame of up to
    /// `gso_max` payload octets (whole segments of the effective MSS, the last maybe shorter)
    /// for a device that segments it; 0: one segment at a time.
    pub fn next_segment_gso(&mut self, now: Instant, gso_max: u32) -> Option<SegOut> {
        if let Some(ack) = self.rst_due_for_ack.take() {
            // RFC 9293 §3.10.7.3: <SEQ=SEG.ACK><CTL=RST> for an unacceptable ACK.
            self.events.segments_out += 1;
            return Some(SegOut {
                seq: ack,
                rst: true,
                ..SegOut::default()
            });
        }
        if self.rst_due {
            self.rst_due = false;
            self.events.segments_out += 1;
            return Some(SegOut {
                seq: self.snd_nxt,
                ack: Some(self.rcv_nxt),
                rst: true,
                ..SegOut::default()
            });
        }
        match self.state {
            TcpState::Closed | TcpState::Listen => None,
            TcpState::SynSent | TcpState::SynReceived => self.next_syn(now),
            _ => self.next_data(now, gso_max),
        }
    }

    fn next_syn(&mut self, now: Instant) -> Option<SegOut> {
        let synack = self.state == TcpState::SynReceived;
        if self.snd_nxt != self.iss {
            // An unacceptable segment in SYN-RECEIVED (e.g. the peer's SYN-ACK in a
            // simultaneous open) is answered with a plain ACK (RFC 9293 §3.10.7.4).
            if synack && self.ack_now {
                let seq = self.snd_nxt;
                return Some(self.base_segment(now, seq));
            }
            return None;
        }
        let retransmit = self.snd_max != self.iss;
        let mut s = SegOut {
            seq: self.iss,
            syn: true,
            window: self.window_field(true),
            mss: Some(self.rcv_mss),
            ..SegOut::default()
        };
        if synack {
            s.ack = Some(self.rcv_nxt);
            // RFC 7323 §1.3 / RFC 2018 §2: only echo options the peer offered.
            s.wscale = self.ws_ok.then_some(self.rcv_wscale);
            s.sack_permitted = self.sack_ok;
            s.ts = self.ts_ok.then(|| (self.tsval(now), self.ts_recent));
            self.last_ack_sent = self.rcv_nxt;
        } else {
            s.wscale = self.cfg.window_scale.then_some(self.rcv_wscale);
            s.sack_permitted = self.cfg.sack;
            s.ts = self.cfg.timestamps.then(|| (self.tsval(now), 0));
        }
        self.ack_now = false;
        self.snd_nxt = self.iss.wrapping_add(1);
        self.snd_max = self.snd_nxt;
        if retransmit {
            self.events.retransmits += 1;
        } else {
            self.timed = Some((self.iss, now));
        }
        if self.t_rto.is_none() {
            self.t_rto = Some(now + self.rto);
        }
        self.events.segments_out += 1;
        Some(s)
    }

    fn next_data(&mut self, now: Instant, gso_max: u32) -> Option<SegOut> {
        let mss = self.eff_mss();
        let can_send_data = matches!(
            self.state,
            TcpState::Established
                | TcpState::CloseWait
                | TcpState::FinWait1
                | TcpState::Closing
                | TcpState::LastAck
        );
        if can_send_data {
            if let Some(s) = self.next_data_segment(now, gso_max, mss) {
                if self.draining()
                    && (s.payload_len > 0 || s.fin)
                    && !self.resending_mid_pass(s.seq.wrapping_add(s.payload_len as u32))
                {
                    self.drain_probe_owed = true;
                }
                return Some(s);
            }
        }
        if self.drain_probe_ready() {
            self.drain_probe_owed = false;
            if let Some(s) = self.drain_probe(now) {
                return Some(s);
            }
        }
        if self.ka_probe_due {
            self.ka_probe_due = false;
            // RFC 9293 §3.8.4: a probe carrying SEG.SEQ = SND.NXT - 1 elicits an ACK.
            let seq = self.snd_una.wrapping_sub(1);
            self.empty_probe_at = Some(now);
            return Some(self.base_segment(now, seq));
        }
        if self.ack_now {
            let seq = self.snd_nxt;
            return Some(self.base_segment(now, seq));
        }
        None
    }

    /// The segment ending at `end` was a SACK-recovery retransmission below SACKed data, and
    /// more holes wait to be resent: no drain probe after it. The receiver ACKs a segment that
    /// fills a gap at once (RFC 5681 §4.2), so the probe would only add a frame to a queue that
    /// is dropping already (a probe per ACK doubled the donor's frame rate into the 100-frame
    /// queue of the Fig1 testbed at 100 Mbit/s, and the last retransmission and its probe were
    /// lost together). The pass's last retransmission still gets its probe: its report is the
    /// evidence [`Tcb::detect_lost_before_probe`] needs; so does a retransmission with nothing
    /// SACKed above it (a lost tail), which the receiver may hold a delayed ACK for.
    fn resending_mid_pass(&self, end: u32) -> bool {
        self.sack_ok
            && self.recovery.is_some()
            && self.sacked.last().is_some_and(|&(_, r)| gt(r, end))
            && self.next_hole(self.high_rxt).is_some()
    }

    /// A drain's ACK probe. The first is empty, with SEG.SEQ = SND.UNA − 1 (RFC 9293
    /// §3.8.4): not acceptable to the receiver, which answers it at once (§3.10.7.4). A
    /// receiver answers unacceptable segments that carry no data at most once per 500 ms
    /// (RFC 5961 §7, Linux's `tcp_oow_rate_limited`, ours), so a second empty probe soon
    /// after went unanswered and the receiver's delayed-ACK timer ran. The later probes
    /// (which follow retransmissions: something was lost) carry an octet of data once more,
    /// the last or one near it ([`Tcb::probe_octet`]): a duplicate or out-of-order octet is
    /// data, which the receiver acknowledges at once (RFC 5681 §4.2; Linux enters quick-ACK
    /// mode on it) with a D-SACK (RFC 2883) or a SACK, and that report tells which
    /// retransmissions before the probe were lost. The first stays empty so that a drain
    /// without loss puts no byte twice on the wire — unless an empty one went to the receiver
    /// within its rate-limit interval ([`Tcb::empty_probe_recent`], carried across handoffs
    /// by the state): then it carries the last octet too, and the receiver's D-SACK of it is
    /// the price of an ACK now. Only a FIN left unacknowledged: an empty probe.
    fn drain_probe(&mut self, now: Instant) -> Option<SegOut> {
        if self.snd_una == self.snd_max {
            return None;
        }
        let end = self.data_end();
        let first = !std::mem::replace(&mut self.drain_probed, true);
        // An empty probe would go unanswered while the receiver's rate limit of the last one
        // runs (handoffs of one connection milliseconds apart: 19 of 20 drains then waited
        // for the client's application to read, 100–400 µs, before its ACK).
        let empty = first && !self.empty_probe_recent(now);
        // (Called once everything has been sent: SND.MAX is at or past the end of the data.)
        let mut s = if !empty && lt(self.snd_una, end) {
            let (seq, identifies) = self.probe_octet(end);
            // Only a probe that follows this recovery's retransmissions can prove them lost.
            self.rxt_probe =
                (identifies && self.recovery.is_some() && self.high_rxt != self.snd_una)
                    .then_some(seq);
            let mut s = self.base_segment(now, seq);
            s.payload_off = dist(self.snd_buf_seq, seq) as usize;
            s.payload_len = 1;
            // Karn: an ACK covering this octet no longer times the segment that carried it.
            if self.timed.is_some_and(|(t, _)| t == seq) {
                self.timed = None;
            }
            s
        } else {
            self.empty_probe_at = Some(now);
            self.base_segment(now, self.snd_una.wrapping_sub(1))
        };
        s.psh = s.payload_len > 0;
        Some(s)
    }

    /// An empty unacceptable segment left within the receiver's rate-limit interval.
    pub(crate) fn empty_probe_recent(&self, now: Instant) -> bool {
        self.empty_probe_at
            .is_some_and(|t| now.saturating_since(t) < OOW_ACK_INTERVAL)
    }

    /// The octet a drain probe carries, and whether a report of it identifies this probe. With
    /// the end of the data SACKed (a block of more than [`PROBE_OCTETS`] octets), successive
    /// probes take successive octets before the last, so the receiver's D-SACK of one names it
    /// and not an earlier probe still on its way (which may have left before the latest
    /// retransmissions). Otherwise the last octet, as a lost tail needs it: the receiver SACKs
    /// it and the holes below it show. Probes of the last octet are never the identified
    /// kind, so the two do not alias.
    fn probe_octet(&mut self, end: u32) -> (u32, bool) {
        let top_sacked = self
            .sacked
            .last()
            .is_some_and(|&(l, r)| !lt(r, end) && lt(l, end.wrapping_sub(PROBE_OCTETS)));
        if !top_sacked {
            return (end.wrapping_sub(1), false);
        }
        let k = self.drain_probes % PROBE_OCTETS;
        self.drain_probes = self.drain_probes.wrapping_add(1);
        (end.wrapping_sub(2 + k), true)
    }

    /// Data (or a window probe) to send: a zero-window probe, a tail loss probe, a loss
    /// recovery retransmission or new data, in that order.
    fn next_data_segment(&mut self, now: Instant, gso_max: u32, mss: u32) -> Option<SegOut> {
        // Zero-window probe (RFC 9293 §3.8.6.1): one byte beyond the window.
        if self.probe_due {
            self.probe_due = false;
            if self.snd_wnd == 0 && !self.snd_buf.is_empty() {
                let seq = self.snd_una;
                self.events.zero_window_probes += 1;
                let mut s = self.base_segment(now, seq);
                s.payload_off = dist(self.snd_buf_seq, seq) as usize;
                s.payload_len = 1;
                if self.snd_una == self.snd_max {
                    self.snd_nxt = seq.wrapping_add(1);
                    self.snd_max = self.snd_nxt;
                }
                self.arm_persist(now);
                return Some(s);
            }
        }
        if self.tlp_due {
            self.tlp_due = false;
            if let Some(s) = self.next_tail_probe(now, mss) {
                return Some(s);
            }
        }
        // Loss recovery retransmissions first.
        if self.recovery.is_some() || self.rexmit_now {
            if let Some(s) = self.next_recovery_segment(now) {
                return Some(s);
            }
        }
        self.next_new_data(now, mss, gso_max)
    }

    fn next_recovery_segment(&mut self, now: Instant) -> Option<SegOut> {
        let mss = self.eff_mss();
        let force = self.rexmit_now;
        if self.sack_ok && self.recovery.is_some() {
            if !force && self.pipe() + mss > self.cc.cwnd {
                return None;
            }
            let hole = self.next_hole(self.high_rxt).or_else(|| {
                // No SACK information yet: the first unacknowledged segment is the hole.
                (force && self.high_rxt == self.snd_una && self.snd_una != self.snd_max)
                    .then_some((self.snd_una, self.snd_max))
            });
            let (a, b) = hole?;
            let len = dist(a, b).min(mss);
            self.rexmit_now = false;
            self.high_rxt = a.wrapping_add(len);
            self.rxt_fence = self.snd_max;
            self.last_rxt = Some((a, a.wrapping_add(len)));
            // A probe sent before this retransmission proves nothing about it.
            self.rxt_probe = None;
            return self.retransmit_range(now, a, len);
        }
        if force {
            self.rexmit_now = false;
            if self.snd_una == self.snd_max {
                return None;
            }
            let len = self.flight().min(mss);
            self.high_rxt = self.snd_una.wrapping_add(len);
            return self.retransmit_range(now, self.snd_una, len);
        }
        None
    }

    fn retransmit_range(&mut self, now: Instant, seq: u32, len: u32) -> Option<SegOut> {
        // The range may include our FIN (one sequence number beyond the data).
        let data_end = self.data_end();
        let data_len = if lt(seq, data_end) {
            dist(seq, data_end).min(len)
        } else {
            0
        };
        let fin = self.fin_seq().is_some_and(|f| {
            seq.wrapping_add(data_len) == f && le(f, self.snd_max) && data_len < len.max(1)
        });
        if data_len == 0 && !fin {
            return None;
        }
        let mut s = self.base_segment(now, seq);
        s.payload_off = dist(self.snd_buf_seq, seq) as usize;
        s.payload_len = data_len as usize;
        s.fin = fin && gt(self.snd_max, self.data_end());
        self.count_prr_out(data_len);
        self.events.retransmits += 1;
        if let Some((t, _)) = self.timed {
            if le(seq, t) && lt(t, seq.wrapping_add(len)) {
                self.timed = None;
            }
        }
        if self.t_rto.is_none() {
            self.t_rto = Some(now + self.rto);
        }
        Some(s)
    }

    /// RFC 8985 §7.3: the probe is new data if the window allows, else the last segment sent.
    fn next_tail_probe(&mut self, now: Instant, mss: u32) -> Option<SegOut> {
        let win_end = self.snd_una.wrapping_add(self.snd_wnd);
        if self.has_unsent() && self.snd_nxt == self.snd_max && gt(win_end, self.snd_nxt) {
            let len = dist(self.snd_nxt, self.data_end())
                .min(mss)
                .min(dist(self.snd_nxt, win_end));
            let seq = self.snd_nxt;
            let mut s = self.base_segment(now, seq);
            s.payload_off = dist(self.snd_buf_seq, seq) as usize;
            s.payload_len = len as usize;
            s.psh = true;
            self.snd_nxt = seq.wrapping_add(len);
            self.snd_max = self.snd_nxt;
            if self.t_rto.is_none() {
                self.t_rto = Some(now + self.rto);
            }
            return Some(s);
        }
        let flight = self.flight();
        if flight == 0 {
            return None;
        }
        let len = flight.min(mss);
        let seq = self.snd_max.wrapping_sub(len);
        self.retransmit_range(now, seq, len)
    }

    fn arm_persist(&mut self, now: Instant) {
        let base = self.rto.get().max(self.cfg.min_rto);
        let d = base
            .saturating_mul(1u32 << self.persist_backoff.min(10))
            .min(self.cfg.max_rto);
        self.t_persist = Some(now + d);
    }

    fn next_new_data(&mut self, now: Instant, mss: u32, gso_max: u32) -> Option<SegOut> {
        let data_end = self.data_end();
        let unsent = if lt(self.snd_nxt, data_end) {
            dist(self.snd_nxt, data_end)
        } else {
            0
        };
        let fin_pending = self.fin_queued
            && !gt(self.snd_nxt, data_end)
            && (lt(self.snd_nxt, self.snd_max) || !gt(self.snd_max, data_end));
        if unsent == 0 && !fin_pending {
            return None;
        }
        let win_end = self.snd_una.wrapping_add(self.snd_wnd);
        let wnd_avail = if gt(win_end, self.snd_nxt) {
            dist(self.snd_nxt, win_end)
        } else {
            0
        };
        let in_flight = dist(self.snd_una, self.snd_nxt);
        let cwnd = if self.recovery.is_some() && self.sack_ok {
            // RFC 6675: new data only while pipe leaves room.
            self.cc
                .cwnd
                .saturating_sub(self.pipe())
                .saturating_add(in_flight)
        } else {
            self.cc.cwnd
        };
        let cwnd = if self.recovery.is_none() {
            // RFC 3042: up to two segments past cwnd on the first duplicate ACKs.
            cwnd.saturating_add(self.limited_tx * mss)
        } else {
            cwnd
        };
        let cwnd_avail = cwnd.saturating_sub(in_flight);
        let retransmitting = lt(self.snd_nxt, self.snd_max);
        // A super-frame only for new data: what is resent after a timeout goes a segment at a
        // time. So does a drain's data (an ACK solicited, [`Tcb::solicit_ack`]): the probe that
        // follows its last segment then reaches the receiver right behind it. Measured on veth
        // (20 drained handoffs x 5 runs, in turn): behind super-frames the probe arrived
        // 40-300 µs after the last segment and the client's gap was 518 µs median, one frame
        // per segment 4-12 µs and 347 µs.
        let mut burst = if gso_max >= 2 * mss && !retransmitting && !self.draining() {
            gso_max / mss * mss
        } else {
            mss
        };
        if let Some(p) = self.pace.as_deref().copied().filter(|_| !retransmitting) {
            if p.budget == 0 && now < p.next {
                if let Some(b) = self.pace.as_deref_mut() {
                    b.armed = Some(p.next);
                }
                return None;
            }
            // What is left of the current burst, or a new one (started once it sends).
            let budget = if p.budget == 0 {
                p.quantum(mss)
            } else {
                p.budget
            };
            burst = burst.min(budget.max(mss));
        }
        let mut len = unsent.min(burst).min(wnd_avail).min(cwnd_avail);
        if len > mss && len % mss != 0 {
            // Only the end of the data may make a super-frame's last segment short, and only
            // when Nagle would send it on its own too (as Linux's tcp_mss_split_point);
            // otherwise the tail waits for the next call, to be judged by the checks below.
            let nagle_holds = self.cfg.nagle
                && lt(self.snd_una, self.snd_sml)
                && le(self.snd_sml, self.snd_nxt)
                && !(self.fin_queued && len == unsent);
            if len < unsent || nagle_holds {
                len -= len % mss;
            }
        }

        if len == 0 && unsent > 0 {
            if wnd_avail == 0 && self.snd_una == self.snd_max {
                // Zero window with nothing in flight: persist timer (RFC 9293 §3.8.6.1).
                if self.t_persist.is_none() {
                    self.arm_persist(now);
                }
                self.t_rto = None;
            }
            return None;
        }
        // Nagle (RFC 9293 §3.7.4) with Minshall's refinement (draft-minshall-nagle-01, as
        // Linux's tcp_nagle_check): hold a small segment only while an earlier *small* segment
        // is unacknowledged, not behind any unacknowledged data. Plain Nagle holds the tail of
        // every response whose length is not a multiple of the MSS until the peer acknowledges
        // everything before it, and a peer that delays its ACK (an odd segment count) makes
        // that a 40 ms stall per response. Never the last of the data before a FIN.
        if len > 0
            && len < mss
            && self.cfg.nagle
            && lt(self.snd_una, self.snd_sml)
            && le(self.snd_sml, self.snd_nxt)
            && !retransmitting
            && !(self.fin_queued && len == unsent)
        {
            return None;
        }
        // Sender SWS avoidance: do not send tiny window-limited segments while data is in flight.
        if len > 0
            && len < mss
            && len < unsent
            && self.snd_una != self.snd_nxt
            && !retransmitting
            && len < self.max_snd_wnd / 2
        {
            return None;
        }
        let fin = self.fin_queued && self.snd_nxt.wrapping_add(len) == data_end && (len == unsent);
        if len == 0 && !fin {
            return None;
        }
        let seq = self.snd_nxt;
        let mut s = self.base_segment(now, seq);
        s.payload_off = dist(self.snd_buf_seq, seq) as usize;
        s.payload_len = len as usize;
        s.fin = fin;
        s.psh = len > 0 && len == unsent;
        if len > 0 && !retransmitting {
            // Data of ours answering data just received: an interactive connection.
            if let (Some(t), Some(d)) = (self.last_data_in, self.cfg.delayed_ack) {
                self.interactive |= now.saturating_since(t) < d;
            }
        }
        self.snd_nxt = seq.wrapping_add(len + fin as u32);
        self.count_prr_out(len);
        if let Some(p) = self
            .pace
            .as_deref_mut()
            .filter(|_| len > 0 && !retransmitting)
        {
            if p.budget == 0 {
                // A new burst: 1 ms at the pacing rate, the next one 1 ms later.
                let q = p.quantum(mss);
                p.budget = q;
                p.next = p.next.max(now) + p.spacing(q);
            }
            p.budget = p.budget.saturating_sub(len);
            if !lt(self.snd_nxt, p.until) {
                // One window has left: its ACKs clock the rest.
                self.pace = None;
            }
        }
        // Minshall's "last small segment sent": also a super-frame with a short last segment.
        if len > 0 && len % mss != 0 && !retransmitting {
            self.snd_sml = self.snd_nxt;
        }
        if retransmitting {
            self.events.retransmits += 1;
            if let Some((t, _)) = self.timed {
                if le(seq, t) && lt(t, self.snd_nxt) {
                    self.timed = None;
                }
            }
        } else if self.timed.is_none() && len > 0 {
            self.timed = Some((seq, now));
        }
        if gt(self.snd_nxt, self.snd_max) {
            self.snd_max = self.snd_nxt;
        }
        if self.t_rto.is_none() {
            self.t_rto = Some(now + self.rto);
        }
        if self.t_tlp.is_none() && !retransmitting {
            self.arm_tlp(now);
        }
        Some(s)
    }

    /// The payload of `s` as (up to) two slices of the send buffer.
    pub fn payload(&self, s: &SegOut) -> (&[u8], &[u8]) {
        let (a, b) = self.snd_buf.as_slices();
        let start = s.payload_off.min(self.snd_buf.len());
        let end = (s.payload_off + s.payload_len).min(self.snd_buf.len());
        if start >= a.len() {
            (&b[start - a.len()..end - a.len()], &[])
        } else if end <= a.len() {
            (&a[start..end], &[])
        } else {
            (&a[start..], &b[..end - a.len()])
        }
    }

    /// A hard ICMPv6 error (port unreachable, prohibited) quoting sequence number `seq`:
    /// abort an opening connection whose SYN it quotes (RFC 5927 §4.1 checks the number).
    pub fn on_hard_icmp_error(&mut self, seq: u32) {
        if self.state == TcpState::SynSent && seq == self.iss {
            self.enter_closed(Some(TcpError::Refused));
        }
    }

    /// Lower the send MSS after an ICMPv6 Packet Too Big (RFC 8201 §5.4): resend what was lost.
    pub fn on_path_mtu(&mut self, mss: u32) {
        if mss < self.snd_mss && mss >= 64 {
            self.snd_mss = mss;
            if self.state.is_synchronized() && self.snd_una != self.snd_max {
                self.snd_nxt = self.snd_una;
            }
        }
    }

    /// Take and reset the event counters.
    pub fn take_events(&mut self) -> TcbEvents {
        std::mem::take(&mut self.events)
    }
}
