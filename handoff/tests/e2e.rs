//! End to end on the userspace path: a client interface downloads 8 MiB from the DS address
//! served by a donor node on a simulated LAN; mid-transfer the donor hands the connection to
//! an acceptor node over a real loopback TCP control channel (authenticated, encrypted). The
//! download finishes byte-exact on whichever node holds the connection. The engine is fed
//! real time here; `sim.rs` drives it with simulated time.

mod common;

use common::{
    channels, channels_seen, ip, read_into, round, round12, start_donor, Lan, Link, Raw, DS, SECRET,
};
use ds_handoff::channel::{Channel, ChannelError};
use ds_handoff::msg::{Message, Offer};
use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, Donor, DonorConfig, DonorOutcome, Drain, HandoffError,
    HandoffReport, RefuseReason, Takeover, UserConn,
};
use ds_stack::{TcpHandle, TcpState};
use std::net::{SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant as Mono};

const LEN: usize = 8 << 20;

/// A man in the middle on loopback: forwards both ways, flipping one bit of the donor's
/// stream at byte `flip_at` (counted from the start, hello included). Returns its address.
fn tampering_proxy(to: SocketAddr, flip_at: usize) -> SocketAddr {
    use std::io::{Read, Write};
    let l = common::listen();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut from_d, _) = l.accept().unwrap();
        let mut to_a = std::net::TcpStream::connect(to).unwrap();
        let (mut from_a, mut to_d) = (to_a.try_clone().unwrap(), from_d.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_a, &mut to_d);
            // The acceptor closed: close towards the donor too.
            let _ = to_d.shutdown(std::net::Shutdown::Both);
        });
        let mut buf = [0u8; 65536];
        let mut pos = 0;
        while let Ok(n) = from_d.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (pos..pos + n).contains(&flip_at) {
                buf[flip_at - pos] ^= 0x01;
            }
            pos += n;
            if to_a.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    addr
}

fn content() -> Vec<u8> {
    (0..LEN).map(|i| (i * 31 + i / 7919) as u8).collect()
}

/// What happened to the download.
struct Run {
    report: Option<HandoffReport>,
    resumed: Option<HandoffError>,
    acceptor_error: Option<ChannelError>,
    refused: Option<RefuseReason>,
    bytes_ok: bool,
    client_retransmits: u64,
    server_rtos: u64,
}

/// The acceptor's policy in these tests: the DS address is taken over on the link.
fn acfg() -> AcceptorConfig {
    AcceptorConfig::default()
}

/// Download [`LEN`] bytes; after a quarter, hand off with this policy and acceptor (serving
/// the service `name`).
fn download(
    drain: Drain,
    acfg: AcceptorConfig,
    name: &'static str,
    secrets: (&[u8], &[u8]),
) -> Run {
    download_via(drain, acfg, name, secrets, None)
}

/// [`download`] with the control channel through a tampering proxy.
fn download_via(
    drain: Drain,
    acfg: AcceptorConfig,
    name: &'static str,
    secrets: (&[u8], &[u8]),
    flip_at: Option<usize>,
) -> Run {
    let data = content();
    let (mut ch_d, ch_a, handshake_error) = match flip_at {
        Some(at) => channels_seen(secrets.0, secrets.1, |a| tampering_proxy(a, at)),
        None => channels_seen(secrets.0, secrets.1, |a| a),
    };
    // An acceptor whose handshake failed (the donor did not prove the key) closes the channel.
    let mut ch_a: Option<Box<dyn Link>> = match handshake_error {
        None => Some(Box::new(ch_a)),
        Some(_) => None,
    };
    let mut acceptor: Acceptor<u8, UserConn> = Acceptor::new(acfg);
    let mut svcs: [Raw; 3] = Default::default();
    svcs[2].name = Some(name);
    let mut lan = Lan::new();
    let ds = ip(DS);
    let (cl, srv) = connect(&mut lan);
    // (node index, handle) of the server end.
    let mut server: (usize, TcpHandle) = (1, srv);
    let mut sent = 0;
    let mut got = Vec::with_capacity(LEN);
    let mut donor: Option<Donor<UserConn>> = None;
    let mut run = Run {
        report: None,
        resumed: None,
        acceptor_error: handshake_error,
        refused: None,
        bytes_ok: false,
        client_retransmits: 0,
        server_rtos: 0,
    };
    let mut started = false;
    let mut steps = 0;
    while got.len() < LEN {
        steps += 1;
        assert!(steps < 200_000, "stuck at {} of {LEN}", got.len());
        if donor.is_none() && sent < LEN {
            let (n, h) = server;
            sent += lan.ifs[n].tcp_send(h, &data[sent..]).unwrap();
        }
        read_into(&mut lan.ifs[0], cl, &mut got);
        if !started && got.len() >= LEN / 4 {
            started = true;
            let mut cfg = DonorConfig::new(42, "http");
            cfg.drain = drain;
            let d = start_donor(&mut lan, &mut svcs, 1, server.1, cfg, Mono::now());
            donor = Some(d);
        }
        // Drive the handoff; while the control exchange runs, the LAN stands still.
        while let Some(d) = donor.as_mut() {
            let seen = round(
                &mut lan,
                &mut svcs,
                Some(d),
                1,
                &mut ch_d,
                &mut acceptor,
                2,
                &mut ch_a,
                None,
            );
            if let Some(e) = seen.acceptor_error {
                // Fail closed: the channel was dropped.
                run.acceptor_error = Some(e);
            }
            for e in seen.events {
                match e {
                    AcceptorEvent::Adopted { .. } => {
                        server = (2, svcs[2].adopted.pop().expect("adopted handle"))
                    }
                    AcceptorEvent::Refused { reason, .. } => run.refused = Some(reason),
                    _ => {}
                }
            }
            match seen.outcome {
                None if d.is_draining() => break,
                None => continue,
                Some(DonorOutcome::Moved { report, .. }) => {
                    // Steering: the DS address now lives on the acceptor.
                    lan.ifs[1].remove_addr(ds);
                    run.report = Some(report);
                }
                Some(DonorOutcome::Resumed { cause }) => {
                    server = (1, svcs[1].adopted.pop().expect("resumed handle"));
                    run.resumed = Some(cause);
                    donor = None;
                }
                Some(DonorOutcome::Failed { cause }) => panic!("donor: {cause}"),
            }
            if run.report.is_some() {
                // Forwarding runs on with the download (nothing reaches the donor: the
                // address moved).
                donor = None;
            }
        }
        lan.step();
    }
    run.bytes_ok = got == data;
    run.client_retransmits = lan.ifs[0].stats().tcp_retransmits;
    run.server_rtos = lan.ifs[1].stats().tcp_rto + lan.ifs[2].stats().tcp_rto;
    if let Some(r) = run.report.as_mut() {
        r.bytes_ok = Some(run.bytes_ok);
        r.client_retransmits = Some(run.client_retransmits);
        r.client_gap_us = lan.client_gap().map(ds_handoff::report::micros);
        println!("{}", r.to_json_line());
    }
    run
}

fn check_moved(run: &Run) -> &HandoffReport {
    assert!(run.resumed.is_none(), "resumed: {:?}", run.resumed);
    assert!(run.bytes_ok, "content differs");
    assert_eq!(run.client_retransmits, 0);
    assert_eq!(run.server_rtos, 0, "a retransmission timeout fired");
    let r = run.report.as_ref().expect("a report");
    assert!((r.total_us - r.phases_us.iter().sum::<f64>()).abs() < 0.01);
    assert!(r.phases_us.iter().all(|p| *p >= 0.0));
    assert!(r.phases_us[0] > 0.0, "extraction measured: {r:?}");
    assert!(
        r.phases_us[1] > 0.0,
        "state transfer takes time over loopback"
    );
    assert!(r.phases_us[2] > 0.0, "re-creation measured");
    assert!(r.phases_us[6] > 0.0, "activation measured");
    assert!(r.wall_us >= r.phases_us[0]);
    assert!(r.client_gap_us.is_some());
    r
}

#[test]
fn drained_handoff_mid_download_is_byte_exact() {
    let run = download(
        Drain::UntilAcked {
            deadline: Duration::from_secs(1),
        },
        acfg(),
        "http",
        (SECRET, SECRET),
    );
    let r = check_moved(&run);
    assert!(r.state_bytes <= 96, "drained state {} bytes", r.state_bytes);
    eprintln!("drained: {}", r.to_json_line());
}

#[test]
fn immediate_handoff_mid_download_is_byte_exact() {
    let run = download(Drain::Immediate, acfg(), "http", (SECRET, SECRET));
    let r = check_moved(&run);
    assert!(r.state_bytes > 96, "undrained state carries data");
    eprintln!("immediate: {}", r.to_json_line());
}

#[test]
fn refusing_acceptor_leaves_download_on_donor() {
    let run = download(Drain::Immediate, acfg(), "smtp", (SECRET, SECRET));
    assert!(run.bytes_ok);
    assert!(run.report.is_none());
    assert_eq!(run.refused, Some(RefuseReason::UnknownService));
    assert!(matches!(
        run.resumed,
        Some(HandoffError::Refused(RefuseReason::UnknownService))
    ));
    assert_eq!(run.server_rtos, 0);

    // An acceptor that knows a membership fence refuses a donor without one (or with an
    // older one): the donor acts for a deposed contact. The download stays where it was.
    let mut fenced = acfg();
    let known = ds_handoff::Fence { view: 5, by: 1 };
    fenced.fence = Some(known);
    let run = download(Drain::Immediate, fenced, "http", (SECRET, SECRET));
    assert!(run.bytes_ok);
    assert!(run.report.is_none());
    assert_eq!(run.refused, Some(RefuseReason::StaleFence { known }));

    let mut loaded = acfg();
    loaded.max_connections = 0;
    let run = download(Drain::Immediate, loaded, "http", (SECRET, SECRET));
    assert!(run.bytes_ok);
    assert_eq!(run.refused, Some(RefuseReason::Load));
    assert!(matches!(
        run.resumed,
        Some(HandoffError::Refused(RefuseReason::Load))
    ));
}

#[test]
fn wrong_cluster_secret_is_rejected_and_download_stays() {
    let run = download(
        Drain::Immediate,
        acfg(),
        "http",
        (SECRET, b"another cluster's secret........"),
    );
    assert!(run.bytes_ok);
    assert!(run.report.is_none());
    assert!(
        matches!(run.acceptor_error, Some(ChannelError::Auth)),
        "{:?}",
        run.acceptor_error
    );
    // The acceptor closed the channel: the donor resumed.
    assert!(
        matches!(run.resumed, Some(HandoffError::ChannelLost(_))),
        "{:?}",
        run.resumed
    );
}

#[test]
fn tampered_frame_is_rejected() {
    let (mut d, mut a) = channels(SECRET, SECRET);
    let offer = Message::Offer(Offer {
        conn_id: 1,
        state: vec![1; 100],
        ticket: None,
        service: "http".into(),
        app: None,
        fence: None,
        generation: 1,
        commit_within_us: None,
    });
    let mut f = d.codec_mut().unwrap().seal_msg(&offer).unwrap();
    let last = f.len() - 1;
    f[last] ^= 0x40;
    d.send_raw(&f).unwrap();
    let t = Mono::now();
    let r = loop {
        match a.poll() {
            Ok(None) if t.elapsed() < Duration::from_secs(5) => continue,
            other => break other,
        }
    };
    assert!(matches!(r, Err(ChannelError::Auth)), "{r:?}");
    // Fail closed: later frames are refused too.
    d.send(&Message::Accept { conn_id: 1 }).unwrap();
    assert!(matches!(a.poll(), Err(ChannelError::Poisoned)));
}

#[test]
fn crashed_acceptor_leaves_download_on_donor() {
    // The acceptor's end of the channel closes as the offer arrives.
    let data = content();
    let (mut ch_d, ch_a) = channels(SECRET, SECRET);
    drop(ch_a);
    let mut lan = Lan::new();
    let (cl, srv) = connect(&mut lan);
    let mut svcs: [Raw; 3] = Default::default();
    let half = 1 << 20;
    let mut sent = lan.ifs[1].tcp_send(srv, &data[..half]).unwrap();
    let mut d = start_donor(
        &mut lan,
        &mut svcs,
        1,
        srv,
        DonorConfig::new(7, "http"),
        Mono::now(),
    );
    let mut acc: Acceptor<u8, UserConn> = Acceptor::new(acfg());
    let t = Mono::now();
    let out = loop {
        let seen = round12(&mut lan, &mut svcs, &mut d, &mut ch_d, &mut acc, &mut None);
        if let Some(o) = seen.outcome {
            break o;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    };
    let srv = match out {
        DonorOutcome::Resumed { .. } => svcs[1].adopted.pop().unwrap(),
        other => panic!("not resumed: {other:?}"),
    };
    let mut got = Vec::new();
    let mut steps = 0;
    while got.len() < 2 * half {
        steps += 1;
        assert!(steps < 100_000);
        if sent < 2 * half {
            sent += lan.ifs[1].tcp_send(srv, &data[sent..2 * half]).unwrap();
        }
        read_into(&mut lan.ifs[0], cl, &mut got);
        lan.step();
    }
    assert!(got == data[..2 * half]);
}

/// Connect the client to the donor's DS address; returns (client handle, server handle).
fn connect(lan: &mut Lan) -> (TcpHandle, TcpHandle) {
    lan.connect(0, ip("fd00::3"), 1, SocketAddrV6::new(ip(DS), 80, 0, 0))
}

/// One round of a donor alone (no acceptor behind its channel, or one the test plays).
fn donor_round(
    lan: &mut Lan,
    svcs: &mut [Raw],
    d: &mut Donor<UserConn>,
    ch_d: &mut dyn Link,
) -> Option<DonorOutcome> {
    let mut nobody: Acceptor<u8, UserConn> = Acceptor::new(acfg());
    round(lan, svcs, Some(d), 1, ch_d, &mut nobody, 2, &mut None, None).outcome
}

#[test]
fn silent_acceptor_times_out_and_donor_resumes() {
    let (mut ch_d, mut ch_a) = channels(SECRET, SECRET);
    let mut lan = Lan::new();
    let mut svcs: [Raw; 3] = Default::default();
    let (_cl, srv) = connect(&mut lan);
    lan.ifs[1].tcp_send(srv, &[5u8; 10_000]).unwrap();
    let mut cfg = DonorConfig::new(9, "http");
    cfg.reply_timeout = Duration::from_millis(50);
    let t = Mono::now();
    let mut d = start_donor(&mut lan, &mut svcs, 1, srv, cfg, t);
    let out = loop {
        if let Some(o) = donor_round(&mut lan, &mut svcs, &mut d, &mut ch_d) {
            break o;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    };
    assert!(t.elapsed() >= Duration::from_millis(50));
    let DonorOutcome::Resumed { cause } = out else {
        panic!("not resumed: {out:?}");
    };
    let handle = svcs[1].adopted.pop().expect("the service continues it");
    assert!(matches!(cause, HandoffError::Timeout));
    assert_eq!(lan.ifs[1].tcp_state(handle), Some(TcpState::Established));
    assert_eq!(lan.ifs[1].tcp_send_queued(handle), 10_000, "nothing lost");
    // The acceptor, waking up late, sees the announcement, the offer and then the donor's
    // Abort.
    let mut seen = Vec::new();
    while seen.len() < 3 && t.elapsed() < Duration::from_secs(5) {
        if let Some(m) = ch_a.poll().unwrap() {
            seen.push(m);
        }
    }
    assert!(matches!(seen[0], Message::Prepare { conn_id: 9, .. }));
    assert!(matches!(seen[1], Message::Offer(_)));
    assert!(matches!(seen[2], Message::Abort { conn_id: 9, .. }));
}

/// The donor's drain (seed §3.2.3): it waits until the client acknowledged the send buffer,
/// or until the deadline; an immediate policy freezes at once. Simulated time: the LAN's.
#[test]
fn drain_waits_for_acks_or_deadline() {
    let base = Mono::now();
    let mono = |lan: &Lan| base + Duration::from_millis(lan.now.total_millis() as u64);
    // Until the offer leaves: (steps taken, state bytes in the offer).
    let offer_after = |lan: &mut Lan,
                       svcs: &mut [Raw],
                       d: &mut Donor<UserConn>,
                       read: Option<ds_stack::TcpHandle>| {
        let mut buf = vec![0u8; 65536];
        offer_after(lan, svcs, d, base, |lan| {
            if let Some(cl) = read {
                while lan.ifs[0].tcp_recv(cl, &mut buf).unwrap() > 0 {}
            }
        })
    };
    let mut svcs: [Raw; 3] = Default::default();
    let deadline = |ms| Drain::UntilAcked {
        deadline: Duration::from_millis(ms),
    };
    let mut lan = Lan::new();
    lan.clock = common::sim_clock;
    // A small receive buffer at the client, so that data stays queued on the server.
    lan.ifs[0].tcp_config_mut().recv_buf = 1 << 20;
    // And the whole send buffer usable at the server (no not-sent limit), so that more is
    // queued than the client can ever take.
    lan.ifs[1].tcp_config_mut().notsent_lowat = None;
    let (_cl, srv) = connect(&mut lan);
    // The client does not read: its window fills (more is queued than its buffer holds, so
    // no ACK can cover it all).
    let queued = lan.ifs[1].tcp_send(srv, &vec![1u8; 2 << 20]).unwrap();
    assert!(queued > 1 << 20, "{queued}");
    let mut cfg = DonorConfig::new(1, "http");
    cfg.drain = deadline(20);
    let now = mono(&lan);
    common::set_sim(now);
    let mut d = start_donor(&mut lan, &mut svcs, 1, srv, cfg, now);
    assert_eq!(d.poll_timeout(), Some(now + Duration::from_millis(20)));
    let (steps, bytes) = offer_after(&mut lan, &mut svcs, &mut d, None);
    assert!(
        (19..=21).contains(&steps),
        "the deadline ended the drain: {steps}"
    );
    assert!(bytes > 100_000, "undrained state: {bytes}");

    // The client reads everything: the drain ends with everything acknowledged.
    let mut lan = Lan::new();
    lan.clock = common::sim_clock;
    let (cl, srv) = connect(&mut lan);
    lan.ifs[1].tcp_send(srv, &vec![1u8; 2 << 20]).unwrap();
    let mut cfg = DonorConfig::new(2, "http");
    cfg.drain = deadline(60_000);
    let now = mono(&lan);
    common::set_sim(now);
    let mut d = start_donor(&mut lan, &mut svcs, 1, srv, cfg, now);
    let (steps, bytes) = offer_after(&mut lan, &mut svcs, &mut d, Some(cl));
    assert!(steps < 60_000, "{steps}");
    assert!(bytes <= 96, "drained state: {bytes}");

    // Immediate: the offer leaves at the first poll.
    let mut lan = Lan::new();
    lan.clock = common::sim_clock;
    let (_cl, srv) = connect(&mut lan);
    lan.ifs[1].tcp_send(srv, &[7u8; 5000]).unwrap();
    let now = mono(&lan);
    common::set_sim(now);
    let mut d = start_donor(
        &mut lan,
        &mut svcs,
        1,
        srv,
        DonorConfig::new(3, "http"),
        now,
    );
    let (steps, _) = offer_after(&mut lan, &mut svcs, &mut d, None);
    assert_eq!(steps, 0);

    // Wait (the seed's §3.2.3 donor): the offer leaves after exactly the period, even though
    // the client reads everything long before.
    let mut lan = Lan::new();
    lan.clock = common::sim_clock;
    let (cl, srv) = connect(&mut lan);
    lan.ifs[1].tcp_send(srv, &[7u8; 5000]).unwrap();
    let mut cfg = DonorConfig::new(4, "http");
    cfg.drain = Drain::Wait {
        period: Duration::from_millis(30),
    };
    let now = mono(&lan);
    common::set_sim(now);
    let mut d = start_donor(&mut lan, &mut svcs, 1, srv, cfg, now);
    assert_eq!(d.poll_timeout(), Some(now + Duration::from_millis(30)));
    let (steps, bytes) = offer_after(&mut lan, &mut svcs, &mut d, Some(cl));
    assert!(
        (29..=31).contains(&steps),
        "the period ended the wait: {steps}"
    );
    assert!(
        bytes <= 96,
        "everything was acknowledged meanwhile: {bytes}"
    );
}

/// The connection goes back and forth between the two nodes 20 times during the download (one
/// handoff per simulation step once data flows),
/// over two control channels (one per direction), alternating drain policies.
#[test]
fn twenty_handoffs_back_and_forth_byte_exact() {
    const N: usize = 20;
    let data = content();
    // links[k]: (donor side on node 1+k, acceptor side on the other node).
    let mut links: Vec<(Channel, Option<Box<dyn Link>>)> = (0..2)
        .map(|_| {
            let (d, a) = channels(SECRET, SECRET);
            (d, Some(Box::new(a) as Box<dyn Link>))
        })
        .collect();
    let mut acceptors: [Acceptor<u8, UserConn>; 2] = [Acceptor::new(acfg()), Acceptor::new(acfg())];
    let mut svcs: [Raw; 3] = Default::default();
    let mut lan = Lan::new();
    let ds = ip(DS);
    let (cl, srv) = connect(&mut lan);
    let mut server = (1usize, srv);
    let (mut sent, mut got) = (0, Vec::with_capacity(LEN));
    let mut donor: Option<(usize, Donor<UserConn>)> = None;
    let mut reports = Vec::new();
    let mut steps = 0;
    while got.len() < LEN {
        steps += 1;
        assert!(steps < 200_000, "stuck at {} of {LEN}", got.len());
        if donor.is_none() && sent < LEN {
            // A paced application (64 KiB per step) so the download spans many steps.
            let end = (sent + 65536).min(LEN);
            sent += lan.ifs[server.0]
                .tcp_send(server.1, &data[sent..end])
                .unwrap();
        }
        read_into(&mut lan.ifs[0], cl, &mut got);
        let done = reports.len();
        if donor.is_none() && done < N && !got.is_empty() {
            let mut cfg = DonorConfig::new(done as u64, "http");
            if done % 2 == 1 {
                cfg.drain = Drain::UntilAcked {
                    deadline: Duration::from_millis(200),
                };
            }
            let (n, h) = server;
            let d = start_donor(&mut lan, &mut svcs, n, h, cfg, Mono::now());
            donor = Some((n, d));
        }
        while let Some((from, d)) = donor.as_mut() {
            let (from, to) = (*from, 3 - *from);
            let k = from - 1;
            let (ch_d, ch_a) = &mut links[k];
            let seen = round(
                &mut lan,
                &mut svcs,
                Some(d),
                from,
                ch_d,
                &mut acceptors[k],
                to,
                ch_a,
                None,
            );
            if seen
                .events
                .iter()
                .any(|e| matches!(e, AcceptorEvent::Adopted { .. }))
            {
                server = (to, svcs[to].adopted.pop().unwrap());
            }
            match seen.outcome {
                None if d.is_draining() => break,
                None => continue,
                Some(DonorOutcome::Moved { report, .. }) => {
                    // Steering: the address moves with the announcement; the donor's own copy
                    // goes (it would answer for it too).
                    lan.ifs[from].remove_addr(ds);
                    reports.push(report);
                    donor = None;
                }
                Some(other) => panic!("not moved: {other:?}"),
            }
        }
        lan.step();
    }
    eprintln!("{steps} steps");
    assert_eq!(reports.len(), N);
    assert!(got == data, "content differs after {N} handoffs");
    assert_eq!(lan.ifs[0].stats().tcp_retransmits, 0);
    for r in &reports {
        assert!((r.total_us - r.phases_us.iter().sum::<f64>()).abs() < 0.01);
        assert!(r.phases_us[1] > 0.0);
    }
    let drained: Vec<_> = reports.iter().skip(1).step_by(2).collect();
    assert!(drained.iter().all(|r| r.state_bytes <= 96), "{drained:?}");
    eprintln!("last: {}", reports[N - 1].to_json_line());
}

/// A bit flipped on the wire inside the offer (past the hello): the acceptor refuses the frame
/// and closes; the donor resumes the download.
#[test]
fn tampered_offer_on_the_wire_is_rejected_and_download_stays() {
    use ds_handoff::channel::{frame_len, CONFIRM, HELLO_LEN};
    // Inside the ciphertext and near the tag's end (the hello and the key confirmation's
    // frame come first, then the offer's 4-byte length prefix; a flipped length makes the
    // acceptor wait for bytes that never come: the donor's reply timeout covers that, see
    // `silent_acceptor_times_out_and_donor_resumes`).
    let offer = HELLO_LEN + frame_len(CONFIRM.len());
    for at in [offer + 4 + 1, offer + 4 + 60] {
        let run = download_via(Drain::Immediate, acfg(), "http", (SECRET, SECRET), Some(at));
        assert!(run.bytes_ok);
        assert!(run.report.is_none());
        assert!(
            matches!(
                run.acceptor_error,
                Some(ChannelError::Auth | ChannelError::FrameLength(_))
            ),
            "{:?}",
            run.acceptor_error
        );
        assert!(matches!(run.resumed, Some(HandoffError::ChannelLost(_))));
    }
}

/// An acceptor that accepts and then goes silent: the donor does not thaw back (the
/// connection may run there) and reports the handoff as in doubt.
#[test]
fn accept_without_activation_is_in_doubt() {
    let (mut ch_d, mut ch_a) = channels(SECRET, SECRET);
    let mut lan = Lan::new();
    let mut svcs: [Raw; 3] = Default::default();
    let (_cl, srv) = connect(&mut lan);
    let mut cfg = DonorConfig::new(3, "http");
    cfg.reply_timeout = Duration::from_millis(30);
    let t = Mono::now();
    let mut d = start_donor(&mut lan, &mut svcs, 1, srv, cfg, t);
    let mut accepted = false;
    let r = loop {
        if !accepted {
            if let Some(Message::Offer(o)) = ch_a.poll().unwrap() {
                ch_a.send(&Message::Accept { conn_id: o.conn_id }).unwrap();
                accepted = true;
            }
        }
        match donor_round(&mut lan, &mut svcs, &mut d, &mut ch_d) {
            None => assert!(t.elapsed() < Duration::from_secs(5)),
            Some(o) => break o,
        }
    };
    assert!(
        matches!(
            r,
            DonorOutcome::Failed {
                cause: HandoffError::InDoubt(_)
            }
        ),
        "{r:?}"
    );
    assert_eq!(lan.ifs[1].tcp_connection_count(), 0, "not thawed back");
    assert!(svcs[1].adopted.is_empty());
}

/// Packets that reach the donor after the freeze are held by its interface and forwarded over
/// the control channel; the acceptor processes them. Here the client's steering never changes
/// (the acceptor serves the DS address as a home address, without claiming it on the link), so
/// the whole rest of an upload reaches the acceptor through the donor — byte-exact, and the
/// client retransmits nothing.
#[test]
fn held_packets_are_forwarded_to_the_acceptor() {
    let (mut ch_d, ch_a) = channels(SECRET, SECRET);
    let mut ch_a: Option<Box<dyn Link>> = Some(Box::new(ch_a));
    let mut lan = Lan::new();
    let mut svcs: [Raw; 3] = Default::default();
    let (cl, srv) = connect(&mut lan);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 239) as u8).collect();
    let (mut sent, mut got) = (0usize, Vec::new());
    while got.len() < 500_000 {
        sent += lan.ifs[0]
            .tcp_send(cl, &data[sent..(sent + 16_384).min(data.len())])
            .unwrap();
        lan.step();
        read_into(&mut lan.ifs[1], srv, &mut got);
    }
    let mut a = acfg();
    a.takeover = Takeover::HomeAddress;
    let mut acc: Acceptor<u8, UserConn> = Acceptor::new(a);
    let mut cfg = DonorConfig::new(7, "http");
    // Forward for the whole upload.
    cfg.forward_grace = Duration::from_secs(60);
    let mut donor = start_donor(&mut lan, &mut svcs, 1, srv, cfg, Mono::now());
    let mut moved_to = None;
    let t = Mono::now();
    let mut forwarded = 0;
    loop {
        assert!(t.elapsed() < Duration::from_secs(5));
        let seen = round12(
            &mut lan, &mut svcs, &mut donor, &mut ch_d, &mut acc, &mut ch_a,
        );
        if seen
            .events
            .iter()
            .any(|e| matches!(e, AcceptorEvent::Adopted { .. }))
        {
            moved_to = svcs[2].adopted.pop();
        }
        match seen.outcome {
            Some(DonorOutcome::Moved { .. }) => break,
            Some(other) => panic!("not moved: {other:?}"),
            None => {}
        }
    }
    // The Activated and the adoption happened in the same round (the acceptor activates
    // before the donor reads).
    let srv2 = moved_to.expect("adopted on the acceptor");
    while got.len() < data.len() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "stalled at {}",
            got.len()
        );
        if sent < data.len() {
            sent += lan.ifs[0]
                .tcp_send(cl, &data[sent..(sent + 16_384).min(data.len())])
                .unwrap();
        }
        lan.step();
        // The donor forwards what it held (its forwarding collects every millisecond); the
        // frame crosses loopback: keep the rounds going until the acceptor got it.
        let deadline = Mono::now() + Duration::from_secs(2);
        loop {
            let seen = round12(
                &mut lan, &mut svcs, &mut donor, &mut ch_d, &mut acc, &mut ch_a,
            );
            let n: usize = seen
                .events
                .iter()
                .map(|e| match e {
                    AcceptorEvent::Forwarded { packets, .. } => *packets,
                    _ => 0,
                })
                .sum();
            forwarded += n;
            if donor.forwarded() as usize == forwarded {
                break;
            }
            assert!(Mono::now() < deadline, "forwarded packets did not arrive");
        }
        read_into(&mut lan.ifs[2], srv2, &mut got);
    }
    assert!(got == data, "byte-exact through the donor's forwarding");
    assert_eq!(
        lan.ifs[0].stats().tcp_retransmits,
        0,
        "the client retransmitted nothing"
    );
    assert!(
        lan.ifs[1].stats().tcp_held > 100,
        "the donor held and forwarded the client's segments"
    );
}

/// The adaptive drain: a client that acknowledges too slowly to drain the buffer before the
/// deadline gets its connection frozen once the rate shows it (not at the deadline, as the
/// acked drain would); a client that reads at full speed is drained whole, as with the acked
/// drain. Simulated time: the LAN's.
#[test]
fn adaptive_drain_freezes_early_only_when_the_drain_cannot_finish_in_time() {
    let base = Mono::now();
    let mono = |lan: &Lan| base + Duration::from_millis(lan.now.total_millis() as u64);
    // Until the offer leaves, the client reading at most `per_step` bytes each millisecond:
    // (milliseconds taken, state bytes in the offer).
    let offer_after = |lan: &mut Lan,
                       svcs: &mut [Raw],
                       d: &mut Donor<UserConn>,
                       cl: ds_stack::TcpHandle,
                       per_step: usize| {
        let mut buf = vec![0u8; per_step];
        offer_after(lan, svcs, d, base, |lan| {
            let mut got = 0;
            while got < per_step {
                let n = lan.ifs[0].tcp_recv(cl, &mut buf[..per_step - got]).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
        })
    };
    let adaptive = Drain::Adaptive {
        deadline: Duration::from_millis(200),
    };
    let mut svcs: [Raw; 3] = Default::default();
    for (per_step, early) in [(4096, true), (1 << 20, false)] {
        let mut lan = Lan::new();
        lan.clock = common::sim_clock;
        // A small receive buffer at the client: what it does not read stays queued here.
        lan.ifs[0].tcp_config_mut().recv_buf = 64 << 10;
        lan.ifs[1].tcp_config_mut().notsent_lowat = None;
        let (cl, srv) = connect(&mut lan);
        // 2 MiB queued: at 4 KiB per millisecond that is ~500 ms of draining, more than the
        // 200 ms deadline.
        let queued = lan.ifs[1].tcp_send(srv, &vec![1u8; 2 << 20]).unwrap();
        assert!(queued > 1 << 20, "{queued}");
        let mut cfg = DonorConfig::new(7, "http");
        cfg.drain = adaptive;
        let now = mono(&lan);
        common::set_sim(now);
        let mut d = start_donor(&mut lan, &mut svcs, 1, srv, cfg, now);
        let (ms, bytes) = offer_after(&mut lan, &mut svcs, &mut d, cl, per_step);
        eprintln!("reading {per_step} bytes/ms: offer after {ms} ms, {bytes}-byte state");
        if early {
            assert!(ms < 100, "the drain was given up early: {ms} ms");
            assert!(
                bytes > 100_000,
                "what was left travels in the state: {bytes}"
            );
        } else {
            assert!(ms < 200, "{ms}");
            assert!(bytes <= 96, "drained whole: {bytes}");
        }
    }
}

/// Drive donor `d` a millisecond at a time, `client` acting on the LAN before each step, until
/// its offer leaves: (milliseconds taken, state bytes in the offer). Simulated time from
/// `base`.
fn offer_after(
    lan: &mut Lan,
    svcs: &mut [Raw],
    d: &mut Donor<UserConn>,
    base: Mono,
    mut client: impl FnMut(&mut Lan),
) -> (usize, usize) {
    let (mut ch_d, _peer) = common::mem_pair();
    for step in 0..10_000 {
        client(lan);
        common::set_sim(base + Duration::from_millis(lan.now.total_millis() as u64));
        if let Some(o) = donor_round(lan, svcs, d, &mut ch_d) {
            panic!("ended without an offer: {o:?}");
        }
        let log = ch_d.log.borrow();
        if let Some(Message::Offer(o)) = log.iter().find(|m| matches!(m, Message::Offer(_))) {
            return (step, o.state.len());
        }
        drop(log);
        lan.step();
    }
    panic!("no offer");
}

/// A message read 30 ms after it arrived carries its arrival: the kernel's receive stamp
/// (`Channel::arrival`, which ends the donor's phase 2). The kernel turns receive stamps on
/// asynchronously (a static key flipped from a work queue once the first socket asks), so
/// the first messages may come unstamped: the channel then reports none, and the test sends
/// again.
#[test]
fn a_message_read_late_knows_when_it_arrived() {
    use std::time::SystemTime;
    let (mut d, mut a) = channels(SECRET, SECRET);
    assert!(d.is_established() && a.is_established());
    for conn_id in 0..20 {
        let sent = SystemTime::now();
        a.send(&Message::Accept { conn_id }).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let read = SystemTime::now();
        assert!(matches!(d.poll().unwrap(), Some(Message::Accept { conn_id: c }) if c == conn_id));
        let Some(arrived) = d.arrival() else {
            continue;
        };
        assert!(arrived >= sent && arrived <= sent + Duration::from_millis(10));
        assert!(read.duration_since(arrived).unwrap() >= Duration::from_millis(20));
        return;
    }
    panic!("no receive stamp in 20 messages");
}

/// A peer that never reads (a broken or hostile cluster member sending requests and never
/// taking the answers) costs a bounded backlog: once `MAX_BACKLOG` bytes wait for it, the
/// channel refuses to queue more and its owner drops it.
#[test]
fn a_peer_that_never_reads_costs_a_bounded_backlog() {
    let (mut d, _a) = channels(
        b"backlog test secret, 32 bytes!!!",
        b"backlog test secret, 32 bytes!!!",
    );
    let mut packets = ds_stack::Packets::new();
    packets.push(&[7u8; 60_000]);
    let forward = Message::Forward {
        conn_id: 1,
        packets,
    };
    let mut sent = 0usize;
    let err = loop {
        match d.send(&forward) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(
            sent < 10_000,
            "never refused: {} bytes waiting",
            d.pending_output()
        );
    };
    assert!(
        matches!(err, ChannelError::Backlog(n) if n > ds_handoff::MAX_BACKLOG),
        "{err}"
    );
    assert!(
        d.pending_output() <= ds_handoff::MAX_BACKLOG + 61_000,
        "{} bytes waiting",
        d.pending_output()
    );
}
