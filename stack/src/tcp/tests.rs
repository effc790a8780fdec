//! State-machine tests driving TCBs with simulated time (RFC 9293 §3.3.2 diagram, RFC 6298,
//! RFC 5681/6582, RFC 6675, RFC 7323 PAWS, RFC 5961).

use super::tcb::{SegIn, SegOut, Tcb, TcpError, MAX_SACK_BLOCKS};
use super::{TcpConfig, TcpState};
use crate::time::{Duration, Instant};
use std::net::SocketAddrV6;
use std::sync::Arc;

fn a() -> SocketAddrV6 {
    "[fd00::1]:40000".parse().unwrap()
}
fn b() -> SocketAddrV6 {
    "[fd00::2]:80".parse().unwrap()
}

fn cfg() -> TcpConfig {
    TcpConfig {
        delayed_ack: None,
        ..TcpConfig::default()
    }
}

/// A segment as the peer receives it, payload copied out.
struct Wire {
    seg: SegOut,
    payload: Vec<u8>,
}

fn collect(t: &mut Tcb, now: Instant) -> Vec<Wire> {
    let mut v = Vec::new();
    while let Some(s) = t.next_segment(now) {
        let (x, y) = t.payload(&s);
        let mut p = x.to_vec();
        p.extend_from_slice(y);
        v.push(Wire { seg: s, payload: p });
        assert!(v.len() < 10_000);
    }
    v
}

fn seg_in(w: &Wire) -> SegIn<'_> {
    SegIn {
        seq: w.seg.seq,
        ack: w.seg.ack,
        syn: w.seg.syn,
        fin: w.seg.fin,
        rst: w.seg.rst,
        psh: w.seg.psh,
        window: w.seg.window,
        mss: w.seg.mss,
        wscale: w.seg.wscale,
        sack_permitted: w.seg.sack_permitted,
        sack: w.seg.sack,
        ts: w.seg.ts,
        payload: &w.payload,
    }
}

/// A segment like `like` (its ACK, window and options) carrying `payload` `off` octets past
/// `like`'s sequence number: what a peer could send there.
fn moved(like: &Wire, off: u32, payload: &[u8]) -> Wire {
    let mut w = Wire {
        seg: like.seg,
        payload: payload.to_vec(),
    };
    w.seg.seq = like.seg.seq.wrapping_add(off);
    w
}

/// Deliver everything each side wants to send until both are quiet.
fn exchange(x: &mut Tcb, y: &mut Tcb, now: Instant) {
    for _ in 0..1000 {
        let xs = collect(x, now);
        let ys = collect(y, now);
        if xs.is_empty() && ys.is_empty() {
            return;
        }
        for w in &xs {
            y.on_segment(now, &seg_in(w));
        }
        for w in &ys {
            x.on_segment(now, &seg_in(w));
        }
    }
    panic!("no quiescence");
}

fn t0() -> Instant {
    Instant::from_millis(10_000)
}

fn handshake() -> (Tcb, Tcb) {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    assert_eq!(c.state(), TcpState::SynSent);
    let syn = collect(&mut c, now);
    assert_eq!(syn.len(), 1);
    assert!(syn[0].seg.syn && syn[0].seg.ack.is_none());
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    assert_eq!(s.state(), TcpState::SynReceived);
    let synack = collect(&mut s, now);
    assert!(synack[0].seg.syn && synack[0].seg.ack == Some(1001));
    c.on_segment(now, &seg_in(&synack[0]));
    assert_eq!(c.state(), TcpState::Established);
    let ack = collect(&mut c, now);
    s.on_segment(now, &seg_in(&ack[0]));
    assert_eq!(s.state(), TcpState::Established);
    assert!(c.ts_ok && c.sack_ok && c.ws_ok);
    (c, s)
}

#[test]
fn three_way_handshake() {
    handshake();
}

#[test]
fn simultaneous_open() {
    let now = t0();
    let mut x = Tcb::connect(a(), b(), cfg(), 100, 1440, now);
    let mut y = Tcb::connect(b(), a(), cfg(), 900, 1440, now);
    let sx = collect(&mut x, now);
    let sy = collect(&mut y, now);
    x.on_segment(now, &seg_in(&sy[0]));
    y.on_segment(now, &seg_in(&sx[0]));
    assert_eq!(x.state(), TcpState::SynReceived);
    assert_eq!(y.state(), TcpState::SynReceived);
    exchange(&mut x, &mut y, now);
    assert_eq!(x.state(), TcpState::Established);
    assert_eq!(y.state(), TcpState::Established);
}

#[test]
fn active_close_path_fin_wait_time_wait_closed() {
    let (mut c, mut s) = handshake();
    let now = t0();
    c.close();
    assert_eq!(c.state(), TcpState::FinWait1);
    let fin = collect(&mut c, now);
    assert!(fin[0].seg.fin);
    s.on_segment(now, &seg_in(&fin[0]));
    assert_eq!(s.state(), TcpState::CloseWait);
    let ack = collect(&mut s, now);
    c.on_segment(now, &seg_in(&ack[0]));
    assert_eq!(c.state(), TcpState::FinWait2);
    s.close();
    assert_eq!(s.state(), TcpState::LastAck);
    let fin2 = collect(&mut s, now);
    c.on_segment(now, &seg_in(&fin2[0]));
    assert_eq!(c.state(), TcpState::TimeWait);
    let ack2 = collect(&mut c, now);
    s.on_segment(now, &seg_in(&ack2[0]));
    assert_eq!(s.state(), TcpState::Closed);
    assert_eq!(s.error, None);
    // 2 MSL later.
    let later = now + c.cfg.time_wait;
    assert_eq!(c.poll_at(), Some(later));
    c.on_timer(later);
    assert_eq!(c.state(), TcpState::Closed);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let (mut c, mut s) = handshake();
    let now = t0();
    c.close();
    s.close();
    let fc = collect(&mut c, now);
    let fs = collect(&mut s, now);
    c.on_segment(now, &seg_in(&fs[0]));
    s.on_segment(now, &seg_in(&fc[0]));
    assert_eq!(c.state(), TcpState::Closing);
    assert_eq!(s.state(), TcpState::Closing);
    exchange(&mut c, &mut s, now);
    assert_eq!(c.state(), TcpState::TimeWait);
    assert_eq!(s.state(), TcpState::TimeWait);
}

#[test]
fn close_in_syn_sent_and_syn_received() {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1, 1440, now);
    c.close();
    assert_eq!(c.state(), TcpState::Closed);
    let mut c = Tcb::connect(a(), b(), cfg(), 1, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    s.close();
    assert_eq!(s.state(), TcpState::FinWait1);
}

#[test]
fn rst_in_sequence_resets_and_out_of_window_is_ignored() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let rst = SegIn {
        seq: c.rcv_nxt,
        ack: None,
        rst: true,
        ..blank_in()
    };
    let far = SegIn {
        seq: c.rcv_nxt.wrapping_add(1 << 30),
        ..rst
    };
    c.on_segment(now, &far);
    assert_eq!(c.state(), TcpState::Established);
    c.on_segment(now, &rst);
    assert_eq!(c.state(), TcpState::Closed);
    assert_eq!(c.error, Some(TcpError::Reset));
    let _ = &mut s;
}

#[test]
fn rst_answers_syn_sent_only_with_acceptable_ack() {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    collect(&mut c, now);
    c.on_segment(
        now,
        &SegIn {
            seq: 0,
            ack: Some(5),
            rst: true,
            ..blank_in()
        },
    );
    assert_eq!(c.state(), TcpState::SynSent);
    c.on_segment(
        now,
        &SegIn {
            seq: 0,
            ack: Some(1001),
            rst: true,
            ..blank_in()
        },
    );
    assert_eq!(c.state(), TcpState::Closed);
    assert_eq!(c.error, Some(TcpError::Refused));
}

fn blank_in() -> SegIn<'static> {
    SegIn {
        seq: 0,
        ack: None,
        syn: false,
        fin: false,
        rst: false,
        psh: false,
        window: 65535,
        mss: None,
        wscale: None,
        sack_permitted: false,
        sack: [None; 3],
        ts: None,
        payload: &[],
    }
}

#[test]
fn rfc5961_challenge_ack_for_in_window_rst_and_syn() {
    let (mut c, _s) = handshake();
    let now = t0();
    let base = c.events.challenge_acks;
    // RST in window but not exactly RCV.NXT.
    c.on_segment(
        now,
        &SegIn {
            seq: c.rcv_nxt.wrapping_add(10),
            rst: true,
            ..blank_in()
        },
    );
    assert_eq!(c.state(), TcpState::Established);
    assert_eq!(c.events.challenge_acks, base + 1);
    let out = collect(&mut c, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seg.ack, Some(c.rcv_nxt));
    // SYN in a synchronized state.
    c.on_segment(
        now,
        &SegIn {
            seq: c.rcv_nxt,
            syn: true,
            ts: Some((u32::MAX / 2, 0)),
            ..blank_in()
        },
    );
    assert_eq!(c.state(), TcpState::Established);
    assert_eq!(c.events.challenge_acks, base + 2);
    // ACK far below SND.UNA - MAX.SND.WND.
    let una = c.snd_una;
    c.on_segment(
        now,
        &SegIn {
            seq: c.rcv_nxt,
            ack: Some(una.wrapping_sub(1 << 30)),
            ts: Some((c.ts_recent, 0)),
            ..blank_in()
        },
    );
    assert_eq!(c.events.challenge_acks, base + 3);
}

#[test]
fn paws_rejects_old_timestamp() {
    let (mut c, mut s) = handshake();
    let now = t0() + Duration::from_millis(5);
    s.send(b"abcdef");
    let data = collect(&mut s, now);
    let mut w = Wire {
        seg: data[0].seg,
        payload: data[0].payload.clone(),
    };
    // Make its TSval older than TS.Recent.
    let (tsval, tsecr) = w.seg.ts.unwrap();
    w.seg.ts = Some((tsval.wrapping_sub(1000), tsecr));
    let before = c.rcv_nxt;
    c.on_segment(now, &seg_in(&w));
    assert_eq!(c.rcv_nxt, before, "data behind PAWS rejected");
    assert_eq!(c.events.paws_rejected, 1);
    // The genuine segment is accepted.
    c.on_segment(now, &seg_in(&data[0]));
    assert_eq!(c.rcv_nxt, before.wrapping_add(6));
}

/// Old pure ACKs arriving after newer ones (after a handoff: those the donor forwards come after
/// the client's direct ones) are rejected by PAWS; answering each would hand the peer three
/// duplicate ACKs and a spurious fast retransmission. One reply per 500 ms, as Linux; data
/// behind PAWS is still answered every time.
#[test]
fn replies_to_unacceptable_pure_acks_are_rate_limited() {
    let (mut c, mut s) = handshake();
    let mut now = t0() + Duration::from_millis(5);
    // c's pure ACK with a current timestamp, then older copies of it.
    s.send(b"abcdef");
    let data = collect(&mut s, now);
    c.on_segment(now, &seg_in(&data[0]));
    c.ack_now = true;
    let ack = collect(&mut c, now).remove(0);
    assert!(ack.payload.is_empty());
    let mut old = ack.seg;
    let (tsval, tsecr) = old.ts.unwrap();
    old.ts = Some((tsval.wrapping_sub(1), tsecr));
    // s has seen c's newest timestamp.
    now += Duration::from_millis(1);
    let mut newer = ack.seg;
    newer.ts = Some((tsval.wrapping_add(1), tsecr));
    let w = |seg| Wire {
        seg,
        payload: Vec::new(),
    };
    s.on_segment(now, &seg_in(&w(newer)));
    assert!(
        collect(&mut s, now).is_empty(),
        "an acceptable pure ACK is not answered"
    );
    let before = s.events.paws_rejected;
    let mut replies = 0;
    for _ in 0..5 {
        s.on_segment(now, &seg_in(&w(old)));
        replies += collect(&mut s, now).len();
    }
    assert_eq!(s.events.paws_rejected, before + 5);
    assert_eq!(replies, 1);
    assert_eq!(s.events.oow_acks_limited, 4);
    // Another within the interval: none; after it: one.
    now += Duration::from_millis(499);
    s.on_segment(now, &seg_in(&w(old)));
    assert!(collect(&mut s, now).is_empty());
    now += Duration::from_millis(1);
    s.on_segment(now, &seg_in(&w(old)));
    assert_eq!(collect(&mut s, now).len(), 1);
    // Data behind PAWS is answered each time (not part of an ACK loop).
    c.send(b"xyz");
    let mut d = collect(&mut c, now).remove(0);
    d.seg.ts = Some((tsval.wrapping_sub(1), tsecr));
    for _ in 0..3 {
        s.on_segment(now, &seg_in(&d));
        assert_eq!(collect(&mut s, now).len(), 1);
    }
}

/// A connection moved to another host brings its SRTT from the donor's path. Until the
/// acceptor measures its own path, no tail loss probe (an inherited 180 µs SRTT gave 10 ms
/// probes on a 20 ms path: a spurious retransmission per flight); the first sample then
/// replaces the inherited estimate (RFC 6298 §2.2) instead of being averaged into it.
#[test]
fn an_inherited_rtt_arms_no_probe_and_yields_to_the_first_sample() {
    let (mut c, s) = handshake();
    let mut now = t0() + Duration::from_millis(1);
    let mut st = s.to_state(now).expect("state");
    st.srtt_us = 180;
    st.rttvar_us = 90;
    let mut s = Tcb::from_state(&st, &Arc::new(cfg()), now);
    assert!(s.rtt_inherited);
    // More than a segment in flight: a probe would come 2·SRTT (at least 10 ms) later.
    s.send(&[0x5a; 4000]);
    let data = collect(&mut s, now);
    assert!(data.len() >= 3);
    assert!(s.t_tlp.is_none(), "a probe armed on the donor's RTT");
    assert!(s.t_rto.is_some(), "the RTO still covers the tail");
    // The client's ACK comes 20 ms later.
    now += Duration::from_millis(20);
    for d in &data {
        c.on_segment(now, &seg_in(d));
    }
    c.ack_now = true;
    for a in collect(&mut c, now) {
        s.on_segment(now, &seg_in(&a));
    }
    assert!(!s.rtt_inherited);
    let srtt = s.srtt.expect("sampled").get();
    assert!(
        srtt >= Duration::from_millis(19),
        "the first sample was averaged with the inherited SRTT: {srtt:?}"
    );
}

/// Send `n` full segments from s; return them.
fn burst(s: &mut Tcb, now: Instant, n: usize) -> Vec<Wire> {
    let mss = s.eff_mss() as usize;
    s.send(&vec![0x5a; mss * n]);
    let v = collect(s, now);
    assert_eq!(v.len(), n);
    v
}

#[test]
fn rto_fires_retransmits_and_backs_off() {
    let (_c, mut s) = handshake();
    let mut now = t0();
    s.send(b"hello");
    let first = collect(&mut s, now);
    assert_eq!(first.len(), 1);
    let rto0 = s.rto.get();
    let mut last = rto0;
    for i in 0..4 {
        let due = s.poll_at().unwrap();
        assert!(due >= now + last.min(s.cfg.max_rto) - Duration::from_micros(1));
        now = due;
        s.on_timer(now);
        let re = collect(&mut s, now);
        assert_eq!(re.len(), 1, "retransmission {i}");
        assert_eq!(re[0].seg.seq, first[0].seg.seq);
        assert_eq!(re[0].payload, b"hello");
        assert!(
            s.rto.get() >= last * 2 || s.rto.get() == s.cfg.max_rto,
            "back-off doubles"
        );
        last = s.rto.get();
    }
    assert_eq!(s.cc.cwnd, s.snd_mss, "loss window after RTO");
}

#[test]
fn gives_up_after_max_retries() {
    let (_c, mut s) = handshake();
    let mut now = t0();
    Arc::make_mut(&mut s.cfg).max_retries = 3;
    s.send(b"x");
    collect(&mut s, now);
    for _ in 0..4 {
        now = s.poll_at().unwrap();
        s.on_timer(now);
        collect(&mut s, now);
    }
    assert_eq!(s.state(), TcpState::Closed);
    assert_eq!(s.error, Some(TcpError::TimedOut));
}

#[test]
fn fast_retransmit_on_three_dupacks_newreno() {
    let (mut c, mut s) = handshake();
    c.sack_ok = false;
    s.sack_ok = false;
    let now = t0();
    let segs = burst(&mut s, now, 6);
    // Segment 0 is lost; 1..=3 arrive and each triggers a duplicate ACK.
    let mut dupacks = Vec::new();
    for w in &segs[1..4] {
        c.on_segment(now, &seg_in(w));
        dupacks.extend(collect(&mut c, now));
    }
    assert_eq!(dupacks.len(), 3);
    for d in &dupacks {
        assert_eq!(d.seg.ack, Some(segs[0].seg.seq));
        s.on_segment(now, &seg_in(d));
    }
    assert!(s.recovery.is_some(), "entered fast recovery");
    let re = collect(&mut s, now);
    assert_eq!(re[0].seg.seq, segs[0].seg.seq, "lost segment resent first");
    assert_eq!(s.events.fast_recovery, 1);
    // RFC 6582: cwnd = ssthresh + 3 MSS.
    assert_eq!(s.cc.cwnd, s.cc.ssthresh + 3 * s.snd_mss);
}

#[test]
fn sack_recovery_resends_only_the_holes() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 8);
    // Segments 1 and 4 lost.
    let mut acks = Vec::new();
    for (i, w) in segs.iter().enumerate() {
        if i == 1 || i == 4 {
            continue;
        }
        c.on_segment(now, &seg_in(w));
        acks.extend(collect(&mut c, now));
    }
    assert!(
        acks.iter().any(|a| a.seg.sack[0].is_some()),
        "receiver reports SACK blocks"
    );
    for a in &acks {
        s.on_segment(now, &seg_in(a));
    }
    assert!(s.recovery.is_some());
    let re = collect(&mut s, now);
    let seqs: Vec<u32> = re
        .iter()
        .filter(|w| !w.payload.is_empty())
        .map(|w| w.seg.seq)
        .collect();
    assert!(
        seqs.contains(&segs[1].seg.seq) && seqs.contains(&segs[4].seg.seq),
        "both holes resent: {seqs:?}"
    );
    for w in &re {
        assert!(
            w.seg.seq != segs[0].seg.seq && w.seg.seq != segs[2].seg.seq,
            "no SACKed segment resent"
        );
    }
    for w in &re {
        c.on_segment(now, &seg_in(w));
    }
    let fin_acks = collect(&mut c, now);
    for a in &fin_acks {
        s.on_segment(now, &seg_in(a));
    }
    assert_eq!(s.snd_una, s.snd_max, "all acknowledged");
    assert!(s.recovery.is_none());
    // Recovery over, the sender keeps no storage for it: a `ThinVec` that kept its allocation
    // would cost every later segment a read of its cold header for `is_empty`. The receiver
    // keeps a few blocks' storage for the next reordering (an allocation per hole was one
    // every few segments on a reordering path) and says it is empty from the control block
    // itself (`OooQueue::is_empty` reads `last`), never from that header.
    assert!(s.sacked.is_empty() && s.sacked.capacity() == 0);
    assert!(c.ooo.is_empty() && c.ooo.blocks().is_empty());
    assert!(c.ooo.capacity() <= super::tcb::OOO_KEPT_BLOCKS);
}

/// Deliver `wires` to the receiver `c` and its ACKs to the sender `s`, which is asked for
/// output only when it says it has some, as the interface does; the data segments it sends.
fn relay<'a>(
    c: &mut Tcb,
    s: &mut Tcb,
    now: Instant,
    wires: impl IntoIterator<Item = &'a Wire>,
) -> Vec<Wire> {
    let mut out = Vec::new();
    for w in wires {
        c.on_segment(now, &seg_in(w));
        for a in collect(c, now) {
            s.on_segment(now, &seg_in(&a));
            if s.wants_output() {
                out.extend(
                    collect(s, now)
                        .into_iter()
                        .filter(|w| !w.payload.is_empty()),
                );
            }
        }
    }
    out
}

fn seqs(wires: &[Wire]) -> Vec<u32> {
    wires.iter().map(|w| w.seg.seq).collect()
}

#[test]
fn sack_recovery_resends_a_hole_learnt_later_without_new_data() {
    // Everything is in flight, nothing new waits. Segments 1 and 6 are lost; the receiver
    // reveals the second hole only when 7 arrives, after recovery began: it must go at once,
    // not a round trip later with a partial ACK (or with the timeout).
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 10);
    let arrive = segs.iter().enumerate().filter(|(i, _)| ![1, 6].contains(i));
    let resent = seqs(&relay(&mut c, &mut s, now, arrive.map(|(_, w)| w)));
    assert!(s.recovery.is_some(), "in recovery");
    assert!(
        resent.contains(&segs[1].seg.seq),
        "first hole resent: {resent:?}"
    );
    assert!(
        resent.contains(&segs[6].seg.seq),
        "the hole learnt later is resent at once: {resent:?}"
    );
}

/// Segments 1, 8 and 9 of 10 lost (8 and 9 are the tail: no SACK ever covers them); the
/// retransmission of 1 arrives and is acknowledged `after` the recovery began. Returns the
/// sequence numbers the sender resends in answer to that partial ACK, and the segments.
fn lost_tail_answer(after: Duration) -> (Vec<u32>, Vec<Wire>) {
    let (mut c, mut s) = handshake();
    s.srtt = Some(Duration::from_millis(20).into());
    let now = t0();
    let segs = burst(&mut s, now, 10);
    let arrive = segs
        .iter()
        .enumerate()
        .filter(|(i, _)| ![1, 8, 9].contains(i));
    let re = relay(&mut c, &mut s, now, arrive.map(|(_, w)| w));
    assert!(s.recovery.is_some(), "in recovery");
    assert_eq!(seqs(&re), vec![segs[1].seg.seq]);
    let resent = relay(&mut c, &mut s, now + after, &re);
    assert!(s.recovery.is_some(), "that was a partial ACK");
    (seqs(&resent), segs)
}

#[test]
fn a_lost_tail_is_resent_whole_once_a_retransmission_arrived() {
    // RFC 8985 §6.2 by send order: a round trip and a reordering window after the recovery
    // began, the retransmission (sent in it) was delivered and the tail (sent before it) was
    // not: both tail segments go at once, not one per partial ACK.
    let (resent, segs) = lost_tail_answer(Duration::from_millis(30));
    assert_eq!(resent, vec![segs[8].seg.seq, segs[9].seg.seq]);
    // Sooner than SRTT + SRTT/4 (reordering is still possible): only the next segment, as a
    // partial ACK asks (RFC 6582 §3.2 step 5).
    let (resent, segs) = lost_tail_answer(Duration::from_millis(10));
    assert_eq!(resent, vec![segs[8].seg.seq]);
}

/// Ten segments in flight and nothing new to send; 1 and 6 lost, the rest delivered and
/// SACKed: the receiver, the sender, the ten segments and the two retransmissions.
fn holes_1_and_6_resent() -> (Tcb, Tcb, Vec<Wire>, Vec<Wire>) {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 10);
    let arrive = segs.iter().enumerate().filter(|(i, _)| ![1, 6].contains(i));
    let re = relay(&mut c, &mut s, now, arrive.map(|(_, w)| w));
    assert_eq!(seqs(&re), vec![segs[1].seg.seq, segs[6].seg.seq]);
    (c, s, segs, re)
}

#[test]
fn a_lost_retransmission_is_resent_before_the_timeout_with_nothing_new_to_send() {
    // Everything has been sent (a donor draining before a handoff): segments 1 and 6 are
    // lost, both are resent, and the retransmission of 1 is lost too while that of 6 (sent
    // after it) arrives. No data can go above SND.MAX any more, so the later retransmission
    // is the evidence (RFC 8985 §6.2, by send order), not the timeout (200 ms at least).
    let (mut c, mut s, segs, re) = holes_1_and_6_resent();
    let now = t0();
    let t1 = now + Duration::from_millis(5);
    let again = relay(&mut c, &mut s, t1, &re[1..]);
    assert_eq!(
        seqs(&again),
        vec![segs[1].seg.seq],
        "the lost retransmission is resent once, at once"
    );
    relay(&mut c, &mut s, t1, &again);
    assert_eq!(s.snd_una, s.snd_max, "all acknowledged");
    assert!(s.recovery.is_none());
}

/// SACKs for original segments that arrive after a retransmission are no evidence that it
/// was lost (they were sent before it): with both retransmissions lost, nothing is resent
/// before the timeout.
#[test]
fn sacks_of_earlier_sent_segments_do_not_mark_a_retransmission_lost() {
    let (_c, mut s, _segs, _re) = holes_1_and_6_resent();
    let now = t0();
    // Both retransmissions lost: nothing arrives after them.
    let late = now + Duration::from_millis(30);
    s.on_timer(late);
    let out: Vec<Wire> = collect(&mut s, late)
        .into_iter()
        .filter(|w| !w.payload.is_empty())
        .collect();
    assert!(out.is_empty(), "left to the timeout: {:?}", seqs(&out));
}

/// A draining sender (everything sent, an ACK solicited) whose segments `lost` never arrive:
/// the rest arrive in order, and what the sender resends meanwhile (retransmissions and the
/// drain's probes after them) is returned, in order.
fn drain_with_holes(lost: &[usize]) -> (Tcb, Tcb, Vec<Wire>, Vec<Wire>) {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 10);
    assert!(s.solicit_ack());
    let first = collect(&mut s, now);
    assert_eq!(first.len(), 1, "the drain's first probe (lost here)");
    let arrive = segs.iter().enumerate().filter(|(i, _)| !lost.contains(i));
    let re = relay(&mut c, &mut s, now, arrive.map(|(_, w)| w));
    (c, s, segs, re)
}

/// The retransmission of the last hole is lost, and nothing was sent after it but the drain's
/// probe. The probe's D-SACK (RFC 2883) says it arrived: the retransmission sent before it is
/// lost (RFC 8985 §6.2, by send order) and goes again at once, not after the timeout.
#[test]
fn a_lost_last_retransmission_is_found_by_the_drain_probe_after_it() {
    let (mut c, mut s, segs, re) = drain_with_holes(&[6]);
    let end = s.snd_max;
    let lens: Vec<(u32, usize)> = re.iter().map(|w| (w.seg.seq, w.payload.len())).collect();
    assert_eq!(
        lens,
        vec![
            (segs[6].seg.seq, segs[6].payload.len()),
            (end.wrapping_sub(2), 1)
        ],
        "the hole resent, then a probe of an octet the receiver holds"
    );
    let t1 = t0() + Duration::from_millis(5);
    let again = relay(&mut c, &mut s, t1, &re[1..]);
    assert_eq!(
        again.first().map(|w| w.seg.seq),
        Some(segs[6].seg.seq),
        "resent at once: {:?}",
        seqs(&again)
    );
    relay(&mut c, &mut s, t1, &again[..1]);
    assert_eq!(s.snd_una, s.snd_max, "all acknowledged");
}

/// A probe that left before the latest retransmission proves nothing about it: its report
/// (here the probe of the last octet, sent before the tail's SACKs showed the second hole)
/// resends nothing; the report of the probe that followed both retransmissions resends both.
#[test]
fn a_probe_sent_before_a_retransmission_does_not_mark_it_lost() {
    let (mut c, mut s, segs, re) = drain_with_holes(&[2, 8]);
    let end = s.snd_max;
    let lens: Vec<(u32, usize)> = re.iter().map(|w| (w.seg.seq, w.payload.len())).collect();
    let full = segs[2].payload.len();
    assert_eq!(
        lens,
        vec![
            (segs[2].seg.seq, full),
            (end.wrapping_sub(1), 1),
            (segs[8].seg.seq, full),
            (end.wrapping_sub(2), 1),
        ],
        "each hole resent as it shows, each followed by a probe"
    );
    // Both retransmissions are lost; the first probe arrives late.
    let t1 = t0() + Duration::from_millis(5);
    let early = relay(&mut c, &mut s, t1, &re[1..2]);
    assert!(early.is_empty(), "nothing resent: {:?}", seqs(&early));
    let again = relay(&mut c, &mut s, t1, &re[3..]);
    let data: Vec<u32> = again
        .iter()
        .filter(|w| w.payload.len() > 1)
        .map(|w| w.seg.seq)
        .collect();
    assert_eq!(data, vec![segs[2].seg.seq, segs[8].seg.seq], "both resent");
}

/// Holes below SACKed data are resent without a drain probe after each (the receiver ACKs a
/// gap fill at once, and a probe per ACK doubles the frames sent into a queue that is
/// dropping): one probe ends the pass.
#[test]
fn a_drain_probes_once_after_a_pass_over_several_holes() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 10);
    assert!(s.solicit_ack());
    assert_eq!(collect(&mut s, now).len(), 1, "the drain's first probe");
    for i in [0, 2, 4, 5, 6] {
        c.on_segment(now, &seg_in(&segs[i]));
    }
    for a in collect(&mut c, now) {
        s.on_segment(now, &seg_in(&a));
    }
    assert!(s.recovery.is_some(), "holes 1 and 3 known");
    // ACK-clocked, as behind a full queue: one retransmission per ACK.
    s.cc.cwnd = s.eff_mss();
    let first = collect(&mut s, now);
    assert_eq!(
        seqs(&first),
        vec![segs[1].seg.seq],
        "the first hole, no probe"
    );
    let rest = relay(&mut c, &mut s, now, &first);
    let lens: Vec<(u32, usize)> = rest.iter().map(|w| (w.seg.seq, w.payload.len())).collect();
    assert_eq!(
        lens,
        vec![
            (segs[3].seg.seq, segs[3].payload.len()),
            (s.snd_max.wrapping_sub(1), 1)
        ],
        "the last hole, then the probe"
    );
}

/// RFC 6937: a sender that enters recovery after a large flight of which a run was dropped (a
/// queue overflow) resends in step with what the receiver gets, at most two segments per ACK
/// (PRR-SSRB: what was delivered plus one), not a burst up to ssthresh (here 20 segments at
/// the first ACK) into the queue that just dropped.
#[test]
fn recovery_sends_in_step_with_deliveries() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let mss = s.eff_mss();
    s.cc.cwnd = 40 * mss;
    let segs = burst(&mut s, now, 40);
    let arrive: Vec<&Wire> = segs
        .iter()
        .enumerate()
        .filter(|(i, _)| !(10..30).contains(i))
        .map(|(_, w)| w)
        .collect();
    // The segments before the run, then three after it: recovery begins.
    let first = relay(&mut c, &mut s, now, arrive[..13].iter().copied());
    assert!(s.recovery.is_some(), "in recovery");
    assert!(
        first.len() <= 2,
        "{} segments at the first ACK",
        first.len()
    );
    let mut sent = first.len();
    for w in &arrive[13..] {
        let out = relay(&mut c, &mut s, now, [*w]);
        assert!(out.len() <= 2, "{} segments for one ACK", out.len());
        sent += out.len();
    }
    assert!(sent >= 8, "the holes are resent as ACKs come: {sent}");
}

#[test]
fn a_receiver_cannot_grow_the_sack_scoreboard_without_bound() {
    // Hostile input: 1-byte SACK blocks at every other byte of the flight, three per ACK.
    // The board (walked on every ACK) stays bounded, and the sender still recovers.
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 10);
    c.on_segment(now, &seg_in(&segs[2]));
    let dup = collect(&mut c, now).pop().expect("a duplicate ACK");
    let base = segs[0].seg.seq;
    let flight = s.snd_max.wrapping_sub(base);
    for k in (0..flight / 2).step_by(3) {
        let mut w = Wire {
            seg: dup.seg,
            payload: Vec::new(),
        };
        let block = |j: u32| {
            let l = base.wrapping_add(2 * (k + j) + 1);
            (2 * (k + j) + 2 < flight).then_some((l, l.wrapping_add(1)))
        };
        w.seg.sack = [block(0), block(1), block(2)];
        s.on_segment(now, &seg_in(&w));
    }
    assert!(
        s.sacked.len() <= MAX_SACK_BLOCKS,
        "{} blocks",
        s.sacked.len()
    );
    assert!(s.recovery.is_some(), "in recovery");
    let re = collect(&mut s, now);
    assert_eq!(
        re.first().map(|w| w.seg.seq),
        Some(base),
        "the first hole resent"
    );
}

#[test]
fn zero_window_triggers_persist_probe() {
    // The client's buffer filled without reading; the rest waits behind a zero window.
    let (mut c, mut s) = behind_a_zero_window();
    assert_eq!(c.recv_available(), 2 * 1440);
    assert_eq!(s.snd_wnd, 0, "peer advertised a zero window");
    assert_eq!(s.snd_una, s.snd_max, "nothing in flight");
    let due = s.poll_at().expect("persist timer");
    s.on_timer(due);
    let probe = collect(&mut s, due);
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].payload.len(), 1, "one-byte probe");
    assert_eq!(s.events.zero_window_probes, 1);
    // The client drops it and re-advertises zero; once the app reads, the window reopens
    // and the transfer finishes.
    c.on_segment(due, &seg_in(&probe[0]));
    let mut buf = vec![0u8; 4 * 1440];
    let mut got = c.recv(&mut buf);
    for _ in 0..20 {
        exchange(&mut c, &mut s, due);
        got += c.recv(&mut buf);
        if got == 4 * 1440 {
            break;
        }
    }
    assert_eq!(got, 4 * 1440);
}

/// A server whose client's buffer is full (window zero) with 4 segments' worth queued, and
/// its first window probe due: (client, server).
fn behind_a_zero_window() -> (Tcb, Tcb) {
    let now = t0();
    let small = TcpConfig {
        recv_buf: 2 * 1440,
        ..cfg()
    };
    let mut c = Tcb::connect(a(), b(), small, 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    exchange(&mut c, &mut s, now);
    assert_eq!(s.state(), TcpState::Established);
    s.send(&vec![1u8; 4 * 1440]);
    exchange(&mut c, &mut s, now);
    assert_eq!(s.snd_wnd, 0);
    (c, s)
}

/// A receiver that answers every window probe with its window still zero keeps the connection
/// open however long (RFC 9293 §3.8.6.1): an hour here, with no fast recovery and no
/// retransmission timeout (its answers counted as duplicate ACKs closed it in 9 minutes).
#[test]
fn a_receiver_answering_window_probes_keeps_the_connection_for_an_hour() {
    let (mut c, mut s) = behind_a_zero_window();
    let end = t0() + Duration::from_secs(3600);
    let mut t = t0();
    while t < end {
        t = s.poll_at().expect("persist timer");
        s.on_timer(t);
        for w in collect(&mut s, t) {
            c.on_segment(t, &seg_in(&w));
        }
        for w in collect(&mut c, t) {
            s.on_segment(t, &seg_in(&w));
        }
    }
    assert_eq!(s.state(), TcpState::Established);
    assert_eq!((s.events.fast_recovery, s.events.rto), (0, 0));
    assert!(s.events.zero_window_probes > 20);
}

/// A receiver that goes silent behind a zero window is given up after `max_retries`
/// unanswered probes, as a silent peer is after unanswered retransmissions, not probed for
/// ever.
#[test]
fn a_silent_receiver_behind_a_zero_window_times_out() {
    let (_c, mut s) = behind_a_zero_window();
    let mut probes = 0;
    for _ in 0..1000 {
        let Some(t) = s.poll_at() else { break };
        s.on_timer(t);
        probes += collect(&mut s, t).len();
        if s.state() == TcpState::Closed {
            break;
        }
    }
    assert_eq!(s.state(), TcpState::Closed);
    assert_eq!(s.error, Some(TcpError::TimedOut));
    assert_eq!(probes, cfg().max_retries as usize);
}

#[test]
fn out_of_order_data_is_reassembled() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 4);
    for i in [3, 1, 2, 0] {
        c.on_segment(now, &seg_in(&segs[i]));
    }
    assert_eq!(c.recv_available(), 4 * s.eff_mss() as usize);
    assert!(c.ooo.blocks().is_empty());
}

/// A hostile peer fills the window with one-byte holes: one byte at every other sequence
/// number. The receiver holds at most `MAX_OOO_BLOCKS` blocks (each one an allocation and a
/// step of every later segment's scan), drops and counts the rest, still answers each with a
/// duplicate ACK, and the connection carries on: the honest data that follows arrives whole.
#[test]
fn one_byte_holes_are_bounded() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let mss = s.eff_mss() as usize;
    let data: Vec<u8> = (0..4 * mss).map(|i| (i % 251) as u8).collect();
    s.send(&data);
    let segs = collect(&mut s, now);
    assert_eq!(segs.len(), 4);
    let base = segs[0].seg.seq;
    let mut holes = 0;
    for k in 0..5_000u32 {
        let off = 1 + 2 * k as usize;
        if off >= data.len() {
            break;
        }
        c.on_segment(now, &seg_in(&moved(&segs[0], off as u32, &[data[off]])));
        holes += 1;
        assert!(c.ooo.blocks().len() <= super::tcb::MAX_OOO_BLOCKS);
        // A duplicate ACK for every one of them, held or dropped.
        let acks = collect(&mut c, now);
        assert_eq!(acks.len(), 1, "segment {k}");
        assert_eq!(acks[0].seg.ack, Some(base));
    }
    assert!(holes > 2 * super::tcb::MAX_OOO_BLOCKS);
    assert_eq!(c.ooo.blocks().len(), super::tcb::MAX_OOO_BLOCKS);
    let ev = c.take_events();
    assert_eq!(ev.ooo_segments as usize, super::tcb::MAX_OOO_BLOCKS);
    assert_eq!(ev.ooo_dropped as usize, holes - super::tcb::MAX_OOO_BLOCKS);
    // The honest segments: everything in order, the held bytes agreeing with them.
    for w in &segs {
        c.on_segment(now, &seg_in(w));
    }
    let mut buf = vec![0u8; data.len()];
    assert_eq!(c.recv(&mut buf), data.len());
    assert_eq!(buf, data);
    assert!(c.ooo.blocks().is_empty());
}

/// A read that empties the held bytes while out-of-order bytes wait past them leaves those
/// where they are (the buffer does not start again at its storage's start), and the hole's
/// filling holds them as they were written.
#[test]
fn a_read_leaves_out_of_order_bytes_in_place() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let stream: Vec<u8> = (0..3_000usize).map(|i| (i * 7 + i / 251) as u8).collect();
    s.send(&stream[..1]);
    let template = collect(&mut s, now).remove(0);
    let piece = |start: usize, end: usize| moved(&template, start as u32, &stream[start..end]);
    c.on_segment(now, &seg_in(&piece(0, 1_000)));
    c.on_segment(now, &seg_in(&piece(2_000, 3_000)));
    assert_eq!(c.ooo.blocks().len(), 1);
    let mut buf = vec![0u8; 3_000];
    assert_eq!(c.recv(&mut buf), 1_000);
    assert_eq!(buf[..1_000], stream[..1_000]);
    c.on_segment(now, &seg_in(&piece(1_000, 2_000)));
    assert!(c.ooo.blocks().is_empty());
    assert_eq!(c.recv(&mut buf), 2_000);
    assert_eq!(buf[..2_000], stream[1_000..]);
}

/// One byte far past RCV.NXT does not grow the receive buffer's storage to reach it (memory in
/// proportion to a segment's offset, not to what arrived): it is dropped and counted. An
/// honest loss (the first segment of a flight) still has the rest held and delivered.
#[test]
fn a_far_off_byte_does_not_grow_the_buffer() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 10);
    c.on_segment(now, &seg_in(&moved(&segs[0], 1 << 20, &[7])));
    assert!(c.ooo.blocks().is_empty());
    assert!(c.rcv_buf.capacity() < 64 << 10, "{}", c.rcv_buf.capacity());
    let ev = c.take_events();
    assert_eq!((ev.ooo_segments, ev.ooo_dropped), (0, 1));
    for w in &segs[1..] {
        c.on_segment(now, &seg_in(w));
    }
    assert_eq!(c.ooo.blocks().len(), 1);
    let ev = c.take_events();
    assert_eq!((ev.ooo_segments, ev.ooo_dropped), (9, 0));
    c.on_segment(now, &seg_in(&segs[0]));
    assert!(c.ooo.blocks().is_empty());
    let want: Vec<u8> = segs.iter().flat_map(|w| w.payload.clone()).collect();
    let mut buf = vec![0u8; want.len()];
    assert_eq!(c.recv(&mut buf), want.len());
    assert_eq!(buf, want);
}

/// A FIN reached while out-of-order data waits past it ends the stream: the data past it is
/// dropped (never delivered), and the connection's state freezes and validates.
#[test]
fn a_fin_drops_the_data_past_it() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 3);
    c.on_segment(now, &seg_in(&segs[2]));
    assert_eq!(c.ooo.blocks().len(), 1);
    let mut fin = Wire {
        seg: segs[0].seg,
        payload: vec![],
    };
    fin.seg.fin = true;
    c.on_segment(now, &seg_in(&fin));
    assert_eq!(c.state(), TcpState::CloseWait);
    assert!(c.ooo.blocks().is_empty());
    let state = c.to_state(now).expect("a close-wait connection's state");
    crate::ConnState::decode(&state.encode()).expect("valid");
}

/// A forged state cannot make a thaw allocate more than its own size and the buffer it
/// claims allow: out-of-order data past the buffer, or at RCV.NXT itself, is refused; a byte
/// far off within the buffer is thawed without it (dropped, as a live connection would).
#[test]
fn a_forged_state_cannot_grow_a_thaw() {
    let (mut c, _s) = handshake();
    let now = t0();
    let mut state = c.to_state(now).expect("state");
    state.recv_buf_kib = 1 << 20;
    state.ooo = vec![(0x4010_0000 - 1, serde_bytes::ByteBuf::from(vec![1]))];
    assert!(crate::ConnState::decode(&state.encode()).is_err());
    state.ooo = vec![(0, serde_bytes::ByteBuf::from(vec![1]))];
    assert!(crate::ConnState::decode(&state.encode()).is_err());
    state.ooo = vec![(0x3fff_0000, serde_bytes::ByteBuf::from(vec![1]))];
    let state = crate::ConnState::decode(&state.encode()).expect("within the buffer");
    c = Tcb::from_state(&state, &Arc::new(cfg()), now);
    assert!(c.ooo.blocks().is_empty());
    assert!(c.rcv_buf.capacity() < 64 << 10);
}

/// What a receiver may be handed, as `reassembly_is_exact` plays it.
#[derive(Debug, Clone)]
enum Arrival {
    /// Bytes [start, start + len) of the stream, in one segment.
    Piece(usize, usize),
    /// The application reads up to this many bytes.
    Read(usize),
    /// The receiving end is frozen, its state encoded, decoded and thawed.
    Move,
}

fn arrival(stream: usize) -> impl proptest::strategy::Strategy<Value = Arrival> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (0..stream, 1usize..1_500).prop_map(|(s, l)| Arrival::Piece(s, l)),
        3 => (0usize..3_000).prop_map(Arrival::Read),
        1 => Just(Arrival::Move),
    ]
}

proptest::proptest! {
    /// Pieces of a stream in any order, overlapping, repeated, with reads and moves between
    /// them, then the whole stream in order: the application reads exactly the stream, the
    /// receiver never holds more than `MAX_OOO_BLOCKS` blocks, and once every byte has arrived
    /// it holds none (out-of-order bytes live in the receive buffer's storage, past the held
    /// ones: `ByteRing::write_ahead`).
    #[test]
    fn reassembly_is_exact(arrivals in proptest::collection::vec(arrival(8_000), 0..120)) {
        let (mut c, mut s) = handshake();
        let now = t0();
        let stream: Vec<u8> = (0..8_000usize).map(|i| (i * 7 + i / 251) as u8).collect();
        s.send(&stream[..1]);
        let template = collect(&mut s, now).remove(0);
        let piece = |start: usize, len: usize| {
            moved(&template, start as u32, &stream[start..(start + len).min(stream.len())])
        };
        let mut got = Vec::new();
        let mut buf = vec![0u8; 5_000];
        for a in arrivals {
            match a {
                Arrival::Piece(start, len) => c.on_segment(now, &seg_in(&piece(start, len))),
                Arrival::Read(n) => {
                    let k = c.recv(&mut buf[..n]);
                    got.extend_from_slice(&buf[..k]);
                }
                Arrival::Move => {
                    let state = c.to_state(now).expect("an established connection's state");
                    let state = crate::ConnState::decode(&state.encode()).expect("decode");
                    c = Tcb::from_state(&state, &Arc::new(cfg()), now);
                }
            }
            proptest::prop_assert!(c.ooo.blocks().len() <= super::tcb::MAX_OOO_BLOCKS);
            let _ = collect(&mut c, now);
        }
        for start in (0..stream.len()).step_by(1_440) {
            c.on_segment(now, &seg_in(&piece(start, 1_440)));
            let _ = collect(&mut c, now);
        }
        loop {
            let k = c.recv(&mut buf);
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        proptest::prop_assert!(c.ooo.blocks().is_empty());
        proptest::prop_assert_eq!(got.len(), stream.len());
        proptest::prop_assert!(got == stream, "the bytes read differ from the stream");
    }
}

#[test]
fn window_scale_and_mss_negotiated() {
    let (c, s) = handshake();
    assert_eq!(c.snd_mss, 1440);
    assert_eq!(s.snd_mss, 1440);
    assert!(c.snd_wscale > 0 && c.snd_wscale == s.rcv_wscale);
}

#[test]
fn keepalive_probes_then_gives_up() {
    let now = t0();
    let ka = super::Keepalive {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        count: 3,
    };
    let mut cc = cfg();
    cc.keepalive = Some(ka);
    let mut c = Tcb::connect(a(), b(), cc, 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    exchange(&mut c, &mut s, now);
    assert_eq!(c.state(), TcpState::Established);
    let mut t = now;
    let mut probes = 0;
    for _ in 0..10 {
        t = c.poll_at().unwrap();
        c.on_timer(t);
        let out = collect(&mut c, t);
        probes += out.len();
        if c.state() == TcpState::Closed {
            break;
        }
        assert_eq!(
            out[0].seg.seq,
            c.snd_una.wrapping_sub(1),
            "probe uses SND.UNA-1"
        );
    }
    assert_eq!(probes, 3);
    assert_eq!(c.error, Some(TcpError::TimedOut));
    assert!(t >= now + Duration::from_secs(13));
}

/// A connection with keep-alives configured that leaves ESTABLISHED before its idle time (the
/// peer's FIN: CLOSE-WAIT) takes its due keep-alive timer without re-arming it: the deadline
/// it reports after its timer ran is never one already due (a due one made the interface's
/// timer loop run for ever, every connection of it stalled).
#[test]
fn a_keepalive_due_outside_established_leaves_no_deadline_behind() {
    let now = t0();
    let mut cc = cfg();
    cc.keepalive = Some(super::Keepalive {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        count: 3,
    });
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cc, 5000, 1440, now, &seg_in(&syn[0]));
    exchange(&mut c, &mut s, now);
    c.close();
    exchange(&mut c, &mut s, now);
    assert_eq!(s.state(), TcpState::CloseWait);
    let mut t = now;
    for _ in 0..100 {
        let Some(due) = s.poll_at() else { break };
        assert!(
            due > t || due == now,
            "a deadline {due:?} already due at {t:?}"
        );
        t = due;
        s.on_timer(t);
        collect(&mut s, t);
        assert!(
            s.poll_at().is_none_or(|d| d > t),
            "due again at once: {:?}",
            s.poll_at()
        );
    }
    assert_eq!(
        s.state(),
        TcpState::CloseWait,
        "nothing probed or closed it"
    );
}

/// RFC 7323 §2.2: the window in a SYN-ACK is not scaled, whatever scale it announces: a
/// SYN-ACK with window 1,000 and scale 14 lets the client send 1,000 octets, not 16 MB.
#[test]
fn the_window_of_a_syn_ack_is_not_scaled() {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    let mut synack = collect(&mut s, now);
    synack[0].seg.window = 1000;
    synack[0].seg.wscale = Some(14);
    c.on_segment(now, &seg_in(&synack[0]));
    assert_eq!(c.state(), TcpState::Established);
    assert_eq!(c.snd_wnd, 1000);
    c.send(&vec![3u8; 20_000]);
    let sent: usize = collect(&mut c, now).iter().map(|w| w.payload.len()).sum();
    assert_eq!(sent, 1000, "within the peer's window");
}

/// An ACK of octets never sent (RFC 9293 §3.10.7.4) is answered within the challenge ACK
/// limit (RFC 5961 §7, 10 a second), not one for one.
#[test]
fn acks_of_unsent_data_are_answered_within_the_limit() {
    let (mut c, mut s) = handshake();
    let now = t0() + Duration::from_millis(1);
    c.send(b"hello");
    let data = collect(&mut c, now);
    let mut answers = 0;
    for i in 0..1000u32 {
        let mut w = moved(&data[0], 0, b"hello");
        w.seg.ack = Some(s.snd_max.wrapping_add(1000 + i));
        s.on_segment(now, &seg_in(&w));
        answers += collect(&mut s, now).len();
    }
    assert!(answers <= 10, "{answers} answers");
}

/// Duplicate SYNs at a connection in SYN-RECEIVED get its SYN-ACK again, within the limit of
/// answers to unacceptable segments (10 a second), not one for one.
#[test]
fn duplicate_syns_get_syn_acks_within_the_limit() {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    assert_eq!(collect(&mut s, now).len(), 1, "the SYN-ACK");
    let later = now + Duration::from_millis(1);
    let mut again = 0;
    for _ in 0..1000 {
        s.on_segment(later, &seg_in(&syn[0]));
        again += collect(&mut s, later).iter().filter(|w| w.seg.syn).count();
    }
    assert!((1..=10).contains(&again), "{again} SYN-ACKs");
    assert_eq!(s.state(), TcpState::SynReceived);
}

#[test]
fn rst_in_syn_received_drops_the_embryonic_connection() {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    collect(&mut s, now);
    s.on_segment(
        now,
        &SegIn {
            seq: 1001,
            rst: true,
            ..blank_in()
        },
    );
    assert_eq!(s.state(), TcpState::Closed);
}

#[test]
fn syn_ack_retransmitted_on_duplicate_syn_and_timeout() {
    let now = t0();
    let mut c = Tcb::connect(a(), b(), cfg(), 1000, 1440, now);
    let syn = collect(&mut c, now);
    let mut s = Tcb::accept_syn(b(), a(), cfg(), 5000, 1440, now, &seg_in(&syn[0]));
    assert_eq!(collect(&mut s, now).len(), 1);
    s.on_segment(now, &seg_in(&syn[0]));
    let again = collect(&mut s, now);
    assert!(
        again[0].seg.syn && again[0].seg.ack.is_some(),
        "duplicate SYN answered with SYN-ACK"
    );
    let due = s.poll_at().unwrap();
    s.on_timer(due);
    let rto = collect(&mut s, due);
    assert!(rto[0].seg.syn, "SYN-ACK retransmitted on timeout");
}

#[test]
fn duplicate_segment_is_reported_as_dsack() {
    let (mut c, mut s) = handshake();
    let now = t0();
    let segs = burst(&mut s, now, 2);
    c.on_segment(now, &seg_in(&segs[0]));
    collect(&mut c, now);
    // The same segment again (a spurious retransmission): RFC 2883 D-SACK in the ACK.
    c.on_segment(now, &seg_in(&segs[0]));
    let acks = collect(&mut c, now);
    let end = segs[0].seg.seq.wrapping_add(segs[0].payload.len() as u32);
    assert_eq!(acks[0].seg.sack[0], Some((segs[0].seg.seq, end)));
    assert_eq!(acks[0].seg.ack, Some(end));
    // A duplicate of out-of-order data: D-SACK first, then the block it belongs to.
    let more = burst(&mut s, now, 3);
    c.on_segment(now, &seg_in(&more[2]));
    collect(&mut c, now);
    c.on_segment(now, &seg_in(&more[2]));
    let acks = collect(&mut c, now);
    let r = more[2].seg.seq.wrapping_add(more[2].payload.len() as u32);
    assert_eq!(acks[0].seg.sack[0], Some((more[2].seg.seq, r)));
    assert_eq!(acks[0].seg.sack[1], Some((more[2].seg.seq, r)));
}

/// Nagle with Minshall's refinement: a response of any length goes out whole (its short tail is
/// not held behind the full segments in flight); a second small write waits while the first
/// small segment is unacknowledged, and goes once it is acknowledged.
#[test]
fn nagle_holds_only_behind_an_unacknowledged_small_segment() {
    let (mut c, mut s) = handshake();
    assert!(s.cfg.nagle);
    let now = t0();
    let mss = s.eff_mss() as usize;
    // Three full segments and a 100-byte tail: all four leave at once.
    s.send(&vec![7; 3 * mss + 100]);
    let v = collect(&mut s, now);
    assert_eq!(
        v.iter().map(|w| w.payload.len()).collect::<Vec<_>>(),
        vec![mss, mss, mss, 100]
    );
    // Another small write while that small tail is in flight: held.
    s.send(&[8; 50]);
    assert!(
        collect(&mut s, now).is_empty(),
        "held behind the small tail"
    );
    // The client acknowledges everything: the held bytes go.
    for w in &v {
        c.on_segment(now, &seg_in(w));
    }
    for w in collect(&mut c, now) {
        s.on_segment(now, &seg_in(&w));
    }
    let v = collect(&mut s, now);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].payload, vec![8; 50]);
}

/// An ACK solicited while data is still unsent is probed for right after the last segment
/// leaves, in the same transmit pass (RFC 9293 §3.8.4 probe: SEG.SEQ = SND.UNA − 1, no data).
#[test]
fn ack_solicited_before_the_last_send_follows_it() {
    let (_c, mut s) = handshake();
    let now = t0();
    let mss = s.eff_mss() as usize;
    s.send(&vec![1; 2 * mss + 10]);
    assert!(s.solicit_ack(), "deferred until sent");
    let v = collect(&mut s, now);
    let lens: Vec<usize> = v.iter().map(|w| w.payload.len()).collect();
    assert_eq!(
        lens,
        vec![mss, mss, 10, 0],
        "three segments, then the probe"
    );
    let probe = &v[3].seg;
    assert_eq!(probe.seq, v[0].seg.seq.wrapping_sub(1));
    // Nothing unacknowledged and nothing unsent: nothing to solicit.
    let (_c2, mut idle) = handshake();
    assert!(!idle.solicit_ack());
}

/// A drain keeps soliciting until everything is acknowledged: when the tail and the first
/// probe are lost, the retransmission that repairs them is followed by a probe of its own,
/// so that a receiver left with nothing out of order does not hold its ACK for its
/// delayed-ACK timer. That probe carries data, so a receiver that just answered an
/// unacceptable empty segment (the first probe, empty, or any other, after which it answers
/// none for 500 ms) still answers it.
#[test]
fn a_drain_probes_again_after_each_retransmission() {
    let (mut c, mut s) = handshake();
    Arc::make_mut(&mut c.cfg).delayed_ack = Some(Duration::from_millis(40));
    let now = t0();
    let mss = s.eff_mss() as usize;
    s.send(&vec![1; 3 * mss + 200]);
    assert!(s.solicit_ack(), "deferred until sent");
    let v = collect(&mut s, now);
    let lens: Vec<usize> = v.iter().map(|w| w.payload.len()).collect();
    assert_eq!(
        lens,
        vec![mss, mss, mss, 200, 0],
        "the data, then the (empty) probe"
    );
    let end = v[3].seg.seq.wrapping_add(200);
    // The last full segment, the tail and the probe are lost; the two first arrive.
    for w in &v[..2] {
        c.on_segment(now, &seg_in(w));
    }
    for w in collect(&mut c, now) {
        s.on_segment(now, &seg_in(&w));
    }
    // The receiver answers one stale empty segment (and then none for 500 ms).
    let later = now + Duration::from_millis(300);
    let stale = Wire {
        seg: v[0].seg,
        payload: Vec::new(),
    };
    c.on_segment(later, &seg_in(&stale));
    assert_eq!(collect(&mut c, later).len(), 1, "the one reply allowed");
    // A timer resends part of what is missing; the pass ends with a probe again.
    s.on_timer(later);
    let r = collect(&mut s, later);
    assert!(
        !r.is_empty() && !r[0].payload.is_empty(),
        "a retransmission first"
    );
    let last = r.last().map(|w| (w.payload.len(), w.seg.seq));
    assert_eq!(last, Some((1, end.wrapping_sub(1))), "then a probe");
    // The receiver answers at once: it does not wait for its 40 ms timer.
    for w in &r {
        c.on_segment(later, &seg_in(w));
    }
    assert!(!collect(&mut c, later).is_empty(), "an immediate ACK");
    // The rest comes back after a timeout, and once everything is acknowledged the
    // solicitation ends: no probe after later sends.
    let mut rto = later;
    for _ in 0..5 {
        rto += Duration::from_secs(2);
        s.on_timer(rto);
        c.on_timer(rto);
        exchange(&mut s, &mut c, rto);
    }
    assert_eq!(s.snd_una, s.snd_max);
    assert!(!s.draining() && !s.drain_probe_owed);
    s.send(&[2; 10]);
    let after = collect(&mut s, rto);
    assert_eq!(
        after.iter().map(|w| w.payload.len()).collect::<Vec<_>>(),
        vec![10]
    );
}

/// Reading a pushed tail to the end sends its ACK at once instead of after the delayed-ACK
/// timer (Linux's `ICSK_ACK_PUSHED` in `tcp_cleanup_rbuf`): a sender waiting for that ACK,
/// or a donor draining before a handoff, is not held 40 ms by a client on our stack. Not when
/// the data was not pushed (more is coming), nor while the connection is interactive (our
/// answer carries the ACK), nor before the tail is read to the end.
#[test]
fn reading_a_pushed_tail_acknowledges_it_at_once() {
    let (mut c, mut s) = handshake();
    Arc::make_mut(&mut c.cfg).delayed_ack = Some(Duration::from_millis(40));
    let now = t0();
    // What `from` sends at `now`, received by `to`.
    let pass = |from: &mut Tcb, to: &mut Tcb, now: Instant| {
        for w in collect(from, now) {
            to.on_segment(now, &seg_in(&w));
        }
    };
    let mut buf = [0u8; 4096];

    // A short response, pushed: held for the timer until the application reads all of it.
    s.send(&[7; 300]);
    pass(&mut s, &mut c, now);
    assert!(collect(&mut c, now).is_empty(), "delayed while unread");
    assert_eq!(c.recv(&mut buf[..100]), 100);
    assert!(
        collect(&mut c, now).is_empty(),
        "part of it read: still delayed"
    );
    assert_eq!(c.recv(&mut buf), 200);
    let acks = collect(&mut c, now);
    assert_eq!(acks.len(), 1, "read to the end: ACKed at once");
    assert_eq!(acks[0].seg.ack, Some(s.snd_max));
    for w in &acks {
        s.on_segment(now, &seg_in(w));
    }

    // Not pushed (as a segment in the middle of a transfer): the read sends nothing.
    s.send(&[9; 300]);
    let mut mid = collect(&mut s, now);
    mid[0].seg.psh = false;
    for w in &mid {
        c.on_segment(now, &seg_in(w));
    }
    assert_eq!(c.recv(&mut buf), 300);
    assert!(
        collect(&mut c, now).is_empty(),
        "unpushed data waits for the timer"
    );
    let later = now + Duration::from_millis(40);
    c.on_timer(later);
    pass(&mut c, &mut s, later);

    // Interactive: the client answers the server's data with data at once, so the next
    // pushed response is read without an ACK of its own (the next request carries it).
    let t = later + Duration::from_millis(1);
    s.send(&[1; 50]);
    pass(&mut s, &mut c, t);
    assert_eq!(c.recv(&mut buf), 50);
    c.send(&[2; 20]);
    pass(&mut c, &mut s, t);
    assert!(c.interactive, "answered within the delayed-ACK time");
    let t2 = t + Duration::from_millis(1);
    s.send(&[3; 50]);
    pass(&mut s, &mut c, t2);
    assert_eq!(c.recv(&mut buf), 50);
    assert!(
        collect(&mut c, t2).is_empty(),
        "interactive: the answer will carry it"
    );
    // The timer had to send that ACK alone: no longer interactive, the next read ACKs.
    let t3 = t2 + Duration::from_millis(40);
    c.on_timer(t3);
    assert_eq!(collect(&mut c, t3).len(), 1);
    assert!(!c.interactive);
}

/// A thawed connection paces its first window ([`super::tcb::Pace`]): with a 100-segment
/// window on a 10 ms path it sends 1 ms of 1.2 × cwnd / SRTT at a time (12 segments), one
/// burst per millisecond, while an ACK it owes still leaves at once; once a window has left,
/// pacing ends and ACKs clock the rest. Without it, all 100 segments leave back to back.
#[test]
fn a_thawed_connection_paces_its_first_window() {
    let (mut c, s) = handshake();
    let now = t0() + Duration::from_millis(1);
    let mss = s.eff_mss();
    let mut st = s.to_state(now).expect("state");
    st.srtt_us = 10_000;
    st.rttvar_us = 1_000;
    st.cwnd = 100 * mss;
    let data_segs = |v: &[Wire]| v.iter().filter(|w| !w.payload.is_empty()).count();

    let unpaced = TcpConfig {
        pace_after_thaw: false,
        ..cfg()
    };
    let mut u = Tcb::from_state(&st, &Arc::new(unpaced), now);
    u.send(&vec![1; 300 * mss as usize]);
    assert_eq!(
        data_segs(&collect(&mut u, now)),
        100,
        "the whole window at once"
    );

    let mut s = Tcb::from_state(&st, &Arc::new(cfg()), now);
    s.send(&vec![1; 300 * mss as usize]);
    let first = collect(&mut s, now);
    assert_eq!(data_segs(&first), 12, "1 ms at 1.2 x cwnd / SRTT");
    assert_eq!(s.poll_at(), Some(now + Duration::from_millis(1)));
    // Half a millisecond on, the peer sends data: its ACK is not held by the pacing.
    let mid = now + Duration::from_micros(500);
    c.send(b"hi");
    for w in collect(&mut c, mid) {
        s.on_segment(mid, &seg_in(&w));
    }
    let ack = collect(&mut s, mid);
    assert_eq!(ack.len(), 1);
    assert!(ack[0].payload.is_empty(), "an ACK, no data before its time");
    // A burst per millisecond until a window has left.
    let mut t = now;
    let mut sent = data_segs(&first);
    while s.pace.is_some() {
        t += Duration::from_millis(1);
        s.on_timer(t);
        let n = data_segs(&collect(&mut s, t));
        assert!(n <= 12 || s.pace.is_none(), "{n} segments in one burst");
        sent += n;
        assert!(t < now + Duration::from_millis(20), "pacing never ended");
    }
    assert!(sent >= 100, "{sent}");
    // The pacing timer lives in `Pace`: no deadline is left behind once pacing ends.
    assert!(s.pace.is_none());
    assert!(
        s.poll_at()
            .is_none_or(|t| t > now + Duration::from_millis(20)),
        "{:?}",
        s.poll_at()
    );
}

/// The receiver `c` takes a drain's segments `v` and answers at once; then both go quiet.
fn answered(s: &mut Tcb, c: &mut Tcb, v: &[Wire], at: Instant) {
    for w in v {
        c.on_segment(at, &seg_in(w));
    }
    let answer = collect(c, at);
    assert!(!answer.is_empty(), "answered at once");
    for w in &answer {
        s.on_segment(at, &seg_in(w));
    }
    exchange(s, c, at);
}

/// A receiver answers unacceptable segments that carry no data at most once per 500 ms
/// (RFC 5961 §7; Linux's `tcp_invalid_ratelimit`). A drain that follows an empty probe within
/// that interval — on this host, or on the host the connection was thawed from, which the
/// state tells — probes with the last octet instead, which the receiver answers at once (a
/// D-SACK); once the interval has passed the first probe is empty again.
#[test]
fn a_drain_soon_after_an_empty_probe_probes_with_an_octet_here_and_after_a_move() {
    let (mut c, mut s) = handshake();
    Arc::make_mut(&mut c.cfg).delayed_ack = Some(Duration::from_millis(40));
    let now = t0();
    let drain = |s: &mut Tcb, at: Instant, fill: u8| {
        s.send(&[fill; 100]);
        assert!(s.solicit_ack(), "deferred until sent");
        let v = collect(s, at);
        let data_end = v
            .iter()
            .filter(|w| !w.payload.is_empty())
            .map(|w| w.seg.seq.wrapping_add(w.payload.len() as u32))
            .max()
            .expect("data sent");
        (v, data_end)
    };
    // The first drain: its probe is empty, and the receiver answers it.
    let (v, _) = drain(&mut s, now, 1);
    let probe = v.last().expect("probe");
    assert!(probe.payload.is_empty(), "the first probe is empty");
    answered(&mut s, &mut c, &v, now);
    assert_eq!(s.snd_una, s.snd_max);
    // Another drain 10 ms later: an empty probe would go unanswered; one with an octet is
    // answered at once, not after the 40 ms delayed-ACK timer.
    let soon = now + Duration::from_millis(10);
    let (v, end) = drain(&mut s, soon, 2);
    let probe = v.last().expect("probe");
    assert_eq!(
        (probe.payload.len(), probe.seg.seq),
        (1, end.wrapping_sub(1)),
        "the last octet again"
    );
    answered(&mut s, &mut c, &v, soon);
    assert_eq!(s.snd_una, s.snd_max);
    // Moved: the state says an empty probe went recently, so the thawed side's first probe
    // carries an octet too.
    let moved = soon + Duration::from_millis(1);
    let st = s.to_state(moved).expect("movable");
    assert!(st.has(crate::state::flags::EMPTY_PROBED));
    let mut t = Tcb::from_state(&st, &Arc::new(cfg()), moved);
    let (v, end) = drain(&mut t, moved, 3);
    let probe = v.last().expect("probe");
    assert_eq!(
        (probe.payload.len(), probe.seg.seq),
        (1, end.wrapping_sub(1))
    );
    answered(&mut t, &mut c, &v, moved);
    assert_eq!(t.snd_una, t.snd_max);
    // Past the interval: empty again, and the state no longer carries the flag.
    let later = moved + Duration::from_millis(600);
    assert!(!t
        .to_state(later)
        .expect("movable")
        .has(crate::state::flags::EMPTY_PROBED));
    let (v, _) = drain(&mut t, later, 4);
    assert!(v.last().expect("probe").payload.is_empty(), "empty again");
}

/// New data leaves in super-frames, except a drain's: once an ACK is solicited, one segment
/// per frame, so that the probe after the last one is not queued behind a device's
/// segmentation of a whole super-frame.
#[test]
fn a_drain_sends_one_segment_per_frame_and_then_its_probe() {
    let (_c, mut s) = handshake();
    let now = t0();
    let mss = s.eff_mss() as usize;
    s.cc.cwnd = 64 * mss as u32;
    let frames = |s: &mut Tcb| {
        let mut lens = Vec::new();
        while let Some(seg) = s.next_segment_gso(now, 65_535) {
            lens.push(seg.payload_len);
            assert!(lens.len() < 1000);
        }
        lens
    };
    s.send(&vec![1; 6 * mss]);
    assert_eq!(frames(&mut s), vec![6 * mss], "one super-frame");
    // The same after a solicitation: segments, then the probe.
    let (_c, mut s) = handshake();
    s.cc.cwnd = 64 * mss as u32;
    s.send(&vec![1; 6 * mss + 10]);
    assert!(s.solicit_ack());
    let lens = frames(&mut s);
    assert_eq!(lens, vec![mss, mss, mss, mss, mss, mss, 10, 0]);
}

#[test]
fn an_emptied_send_buffer_keeps_at_most_a_page() {
    use super::tcb::KEEP_EMPTY_BUF;
    let (mut c, mut s) = handshake();
    let now = t0();
    let mut buf = vec![0u8; 64 << 10];
    // A short exchange keeps its small buffer (no allocation per exchange).
    assert_eq!(s.send(b"hello"), 5);
    exchange(&mut c, &mut s, now);
    assert_eq!(c.recv(&mut buf), 5);
    exchange(&mut c, &mut s, now);
    assert!(s.snd_buf.is_empty());
    assert!(s.snd_buf.capacity() > 0 && s.snd_buf.capacity() <= KEEP_EMPTY_BUF);
    // A large response's storage goes once it is all acknowledged.
    let big = vec![7u8; 32 << 10];
    assert_eq!(s.send(&big), big.len());
    assert!(s.snd_buf.capacity() >= big.len());
    let mut got = 0;
    for _ in 0..100 {
        exchange(&mut c, &mut s, now);
        got += c.recv(&mut buf);
        if got == big.len() && s.snd_buf.is_empty() {
            break;
        }
    }
    exchange(&mut c, &mut s, now);
    assert_eq!(got, big.len());
    assert!(s.snd_buf.is_empty());
    assert_eq!(s.snd_buf.capacity(), 0);
}

/// A packet for a connection not in the cache reads most of its control block, so its size
/// is a cost per packet at many connections (README, `dsperf conns`): 768 bytes after
/// optional instants became 8 bytes and the event counters 32 bits, 704 after the RTT figures
/// became 32-bit microseconds, 656 after the out-of-order queue and the SACK scoreboard became
/// `ThinVec`s and the pacing state a box. Growing it is a decision, not an accident.
#[cfg(target_pointer_width = "64")]
#[test]
fn the_control_block_stays_within_656_bytes() {
    let size = std::mem::size_of::<Tcb>();
    assert!(size <= 656, "Tcb is {size} bytes");
    assert_eq!(std::mem::size_of::<Option<Instant>>(), 8);
    assert_eq!(std::mem::size_of::<Option<crate::time::Micros>>(), 8);
}
