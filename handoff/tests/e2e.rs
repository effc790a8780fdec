//! End to end on the userspace path: a client interface downloads 8 MiB from the DS address
//! served by a donor node on a simulated LAN; mid-transfer the donor hands the connection to
//! an acceptor node over a real loopback TCP control channel (authenticated, encrypted). The
//! download finishes byte-exact on whichever node holds the connection.

use ds_handoff::channel::{Channel, ChannelError, ClusterSecret};
use ds_handoff::msg::{Message, Offer};
use ds_handoff::{
    forward_held, Acceptor, AcceptorConfig, AcceptorEvent, Donor, DonorConfig, DonorOutcome, Drain,
    HandoffError, HandoffReport, RefuseReason, Takeover,
};
use ds_stack::{Config, Instant, Interface, TcpHandle, TcpState};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::time::{Duration, Instant as Mono};

const DS: &str = "fd00::80";
const LEN: usize = 8 << 20;
const SECRET: &[u8] = b"cluster secret for the test, 32B";

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// One broadcast link (every interface filters by MAC). 0 = client, 1 = donor, 2 = acceptor.
struct Lan {
    ifs: Vec<Interface>,
    now: Instant,
    /// Wall time and sender of every TCP frame with the DS address as source.
    ds_tx: Vec<(Mono, usize)>,
}

fn is_tcp_from(f: &[u8], src: Ipv6Addr) -> bool {
    f.len() >= 54 && f[12..14] == [0x86, 0xdd] && f[20] == 6 && f[22..38] == src.octets()
}

impl Lan {
    fn new() -> Self {
        let t0 = Instant::from_millis(1000);
        let c = Interface::new(Config::new([2, 0, 0, 0, 0, 3], vec![ip("fd00::3")]), t0);
        let d = Interface::new(
            Config::new([2, 0, 0, 0, 0, 1], vec![ip("fd00::1"), ip(DS)]),
            t0,
        );
        let a = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![ip("fd00::2")]), t0);
        Lan {
            ifs: vec![c, d, a],
            now: t0,
            ds_tx: Vec::new(),
        }
    }

    fn step(&mut self) {
        for _ in 0..100 {
            let mut frames = Vec::new();
            for (i, f) in self.ifs.iter_mut().enumerate() {
                f.poll(self.now);
                f.transmit(self.now, &mut |fr: &[u8]| frames.push((i, fr.to_vec())));
            }
            if frames.is_empty() {
                break;
            }
            let wall = Mono::now();
            for (from, fr) in &frames {
                if is_tcp_from(fr, ip(DS)) {
                    self.ds_tx.push((wall, *from));
                }
                for (j, f) in self.ifs.iter_mut().enumerate() {
                    if j != *from {
                        f.receive(self.now, fr);
                    }
                }
            }
        }
        self.now += Duration::from_millis(1);
    }

    /// Wall time between the donor's last DS frame and the acceptor's first one.
    fn client_gap(&self) -> Option<Duration> {
        let first_a = self.ds_tx.iter().position(|(_, i)| *i == 2)?;
        let last_d = self.ds_tx[..first_a].iter().rev().find(|(_, i)| *i == 1)?;
        Some(self.ds_tx[first_a].0.duration_since(last_d.0))
    }
}

fn listen() -> TcpListener {
    TcpListener::bind("[::1]:0")
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
}

/// A man in the middle on loopback: forwards both ways, flipping one bit of the donor's
/// stream at byte `flip_at` (counted from the start, hello included). Returns its address.
fn tampering_proxy(to: SocketAddr, flip_at: usize) -> SocketAddr {
    use std::io::{Read, Write};
    let l = listen();
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

/// A connected control channel pair over loopback: (donor side, acceptor side).
fn channels(donor_secret: &[u8], acceptor_secret: &[u8]) -> (Channel, Channel) {
    channels_via(donor_secret, acceptor_secret, None)
}

/// Same, optionally through a proxy flipping the donor's byte at this offset.
fn channels_via(
    donor_secret: &[u8],
    acceptor_secret: &[u8],
    flip_at: Option<usize>,
) -> (Channel, Channel) {
    let l = listen();
    let mut addr: SocketAddr = l.local_addr().unwrap();
    if let Some(at) = flip_at {
        addr = tampering_proxy(addr, at);
    }
    let s = ClusterSecret::new(acceptor_secret).unwrap();
    let t = std::thread::spawn(move || {
        let (stream, _) = l.accept().unwrap();
        Channel::accept(stream, &s, Duration::from_secs(5)).unwrap()
    });
    let d = Channel::connect(
        addr,
        &ClusterSecret::new(donor_secret).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    (d, t.join().unwrap())
}

fn content() -> Vec<u8> {
    (0..LEN).map(|i| (i * 31 + i / 7919) as u8).collect()
}

/// What happened to the download.
struct Run {
    report: Option<HandoffReport>,
    resumed: Option<HandoffError>,
    acceptor_error: Option<HandoffError>,
    refused: Option<RefuseReason>,
    bytes_ok: bool,
    client_retransmits: u64,
    server_rtos: u64,
}

/// Download [`LEN`] bytes; after a quarter, hand off with this policy and acceptor.
fn download(drain: Drain, acfg: AcceptorConfig, secrets: (&[u8], &[u8])) -> Run {
    download_via(drain, acfg, secrets, None)
}

/// [`download`] with the control channel through a tampering proxy.
fn download_via(
    drain: Drain,
    acfg: AcceptorConfig,
    secrets: (&[u8], &[u8]),
    flip_at: Option<usize>,
) -> Run {
    let data = content();
    let (mut ch_d, ch_a) = channels_via(secrets.0, secrets.1, flip_at);
    let mut ch_a = Some(ch_a);
    let mut acceptor = Acceptor::new(acfg);
    let mut lan = Lan::new();
    let ds = ip(DS);
    let l = lan.ifs[1]
        .tcp_listen(SocketAddrV6::new(ds, 80, 0, 0), 8)
        .unwrap();
    let now = lan.now;
    let cl = lan.ifs[0]
        .tcp_connect(
            now,
            SocketAddrV6::new(ip("fd00::3"), 0, 0, 0),
            SocketAddrV6::new(ds, 80, 0, 0),
        )
        .unwrap();
    let mut srv = None;
    for _ in 0..100 {
        lan.step();
        srv = srv.or_else(|| lan.ifs[1].tcp_accept(l));
        if srv.is_some() && lan.ifs[0].tcp_state(cl) == Some(TcpState::Established) {
            break;
        }
    }
    // (node index, handle) of the server end.
    let mut server: (usize, TcpHandle) = (1, srv.expect("accepted"));
    let mut sent = 0;
    let mut got = Vec::with_capacity(LEN);
    let mut buf = vec![0u8; 65536];
    let mut donor: Option<Donor> = None;
    let mut run = Run {
        report: None,
        resumed: None,
        acceptor_error: None,
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
        loop {
            let k = lan.ifs[0].tcp_recv(cl, &mut buf).unwrap();
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        if !started && got.len() >= LEN / 4 {
            started = true;
            let mut cfg = DonorConfig::new(42, "http");
            cfg.drain = drain;
            donor = Some(Donor::start(server.1, cfg, lan.now));
        }
        // Drive the handoff; while the control exchange runs, the LAN stands still.
        while let Some(d) = donor.as_mut() {
            let now = lan.now;
            if let Some(ca) = ch_a.as_mut() {
                match acceptor.poll(ca, &mut lan.ifs[2], now) {
                    Ok(Some(AcceptorEvent::Activated { handle, .. })) => server = (2, handle),
                    Ok(Some(AcceptorEvent::Refused { reason, .. })) => run.refused = Some(reason),
                    Ok(_) => {}
                    Err(e) => {
                        // Fail closed: drop the channel.
                        run.acceptor_error = Some(e);
                        ch_a = None;
                    }
                }
            }
            match d.poll(&mut ch_d, &mut lan.ifs[1], now) {
                Ok(None) if d.is_draining() => break,
                Ok(None) => continue,
                Ok(Some(DonorOutcome::Moved { report, state })) => {
                    // Steering: the DS address now lives on the acceptor.
                    lan.ifs[1].remove_addr(ds);
                    lan.ifs[1].tcp_forget_frozen(state.local(), state.remote());
                    run.report = Some(report);
                    donor = None;
                }
                Ok(Some(DonorOutcome::Resumed { handle, cause })) => {
                    server = (1, handle);
                    run.resumed = Some(cause);
                    donor = None;
                }
                Err(e) => panic!("donor: {e}"),
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
        AcceptorConfig::new(&["http"]),
        (SECRET, SECRET),
    );
    let r = check_moved(&run);
    assert!(r.state_bytes <= 96, "drained state {} bytes", r.state_bytes);
    eprintln!("drained: {}", r.to_json_line());
}

#[test]
fn immediate_handoff_mid_download_is_byte_exact() {
    let run = download(
        Drain::Immediate,
        AcceptorConfig::new(&["http"]),
        (SECRET, SECRET),
    );
    let r = check_moved(&run);
    assert!(r.state_bytes > 96, "undrained state carries data");
    eprintln!("immediate: {}", r.to_json_line());
}

#[test]
fn refusing_acceptor_leaves_download_on_donor() {
    let run = download(
        Drain::Immediate,
        AcceptorConfig::new(&["smtp"]),
        (SECRET, SECRET),
    );
    assert!(run.bytes_ok);
    assert!(run.report.is_none());
    assert_eq!(run.refused, Some(RefuseReason::UnknownService));
    assert!(matches!(
        run.resumed,
        Some(HandoffError::Refused(RefuseReason::UnknownService))
    ));
    assert_eq!(run.server_rtos, 0);

    let mut loaded = AcceptorConfig::new(&["http"]);
    loaded.max_connections = 0;
    let run = download(Drain::Immediate, loaded, (SECRET, SECRET));
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
        AcceptorConfig::new(&["http"]),
        (SECRET, b"another cluster's secret........"),
    );
    assert!(run.bytes_ok);
    assert!(run.report.is_none());
    assert!(
        matches!(
            run.acceptor_error,
            Some(HandoffError::Channel(ChannelError::Auth))
        ),
        "{:?}",
        run.acceptor_error
    );
    // The acceptor closed the channel: the donor resumed.
    assert!(
        matches!(run.resumed, Some(HandoffError::Channel(_))),
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
    });
    let mut f = d.codec_mut().seal_msg(&offer).unwrap();
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
    let ds = ip(DS);
    let l = lan.ifs[1]
        .tcp_listen(SocketAddrV6::new(ds, 80, 0, 0), 8)
        .unwrap();
    let now = lan.now;
    let cl = lan.ifs[0]
        .tcp_connect(
            now,
            SocketAddrV6::new(ip("fd00::3"), 0, 0, 0),
            SocketAddrV6::new(ds, 80, 0, 0),
        )
        .unwrap();
    let mut srv = None;
    for _ in 0..100 {
        lan.step();
        srv = srv.or_else(|| lan.ifs[1].tcp_accept(l));
    }
    let mut srv = srv.unwrap();
    let half = 1 << 20;
    let mut sent = lan.ifs[1].tcp_send(srv, &data[..half]).unwrap();
    let mut d = Donor::start(srv, DonorConfig::new(7, "http"), lan.now);
    let t = Mono::now();
    let out = loop {
        let now = lan.now;
        if let Some(o) = d.poll(&mut ch_d, &mut lan.ifs[1], now).unwrap() {
            break o;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    };
    match out {
        DonorOutcome::Resumed { handle, .. } => srv = handle,
        DonorOutcome::Moved { .. } => panic!("moved to a dead acceptor"),
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut steps = 0;
    while got.len() < 2 * half {
        steps += 1;
        assert!(steps < 100_000);
        if sent < 2 * half {
            sent += lan.ifs[1].tcp_send(srv, &data[sent..2 * half]).unwrap();
        }
        loop {
            let k = lan.ifs[0].tcp_recv(cl, &mut buf).unwrap();
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        lan.step();
    }
    assert!(got == data[..2 * half]);
}

/// Connect the client to the donor's DS address; returns (client handle, server handle).
fn connect(lan: &mut Lan) -> (TcpHandle, TcpHandle) {
    let ds = ip(DS);
    let l = lan.ifs[1]
        .tcp_listen(SocketAddrV6::new(ds, 80, 0, 0), 8)
        .unwrap();
    let now = lan.now;
    let cl = lan.ifs[0]
        .tcp_connect(
            now,
            SocketAddrV6::new(ip("fd00::3"), 0, 0, 0),
            SocketAddrV6::new(ds, 80, 0, 0),
        )
        .unwrap();
    let mut srv = None;
    for _ in 0..100 {
        lan.step();
        srv = srv.or_else(|| lan.ifs[1].tcp_accept(l));
        if srv.is_some() && lan.ifs[0].tcp_state(cl) == Some(TcpState::Established) {
            break;
        }
    }
    (cl, srv.expect("accepted"))
}

#[test]
fn silent_acceptor_times_out_and_donor_resumes() {
    let (mut ch_d, mut ch_a) = channels(SECRET, SECRET);
    let mut lan = Lan::new();
    let (_cl, srv) = connect(&mut lan);
    lan.ifs[1].tcp_send(srv, &[5u8; 10_000]).unwrap();
    let mut cfg = DonorConfig::new(9, "http");
    cfg.reply_timeout = Duration::from_millis(50);
    let mut d = Donor::start(srv, cfg, lan.now);
    let t = Mono::now();
    let out = loop {
        let now = lan.now;
        if let Some(o) = d.poll(&mut ch_d, &mut lan.ifs[1], now).unwrap() {
            break o;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    };
    assert!(t.elapsed() >= Duration::from_millis(50));
    let DonorOutcome::Resumed { handle, cause } = out else {
        panic!("moved without an acceptor");
    };
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

#[test]
fn drain_gate_waits_for_acks_or_deadline() {
    use ds_handoff::{DrainEnd, DrainGate};
    let mut lan = Lan::new();
    // A small receive buffer at the client, so that data stays queued on the server.
    lan.ifs[0].tcp_config_mut().recv_buf = 1 << 20;
    let (cl, srv) = connect(&mut lan);
    // The client does not read: its window fills (more is queued than its buffer holds, so
    // no ACK can cover it all).
    let queued = lan.ifs[1].tcp_send(srv, &vec![1u8; 2 << 20]).unwrap();
    assert!(queued > 1 << 20, "{queued}");
    let mut gate = DrainGate::start(
        srv,
        Drain::UntilAcked {
            deadline: Duration::from_millis(20),
        },
        lan.now,
    );
    assert_eq!(gate.deadline(), Some(lan.now + Duration::from_millis(20)));
    let mut end = None;
    for _ in 0..40 {
        lan.step();
        end = gate.ready(&mut lan.ifs[1], lan.now);
        if end.is_some() {
            break;
        }
    }
    assert_eq!(end, Some(DrainEnd::Deadline));
    assert!(lan.ifs[1].tcp_send_queued(srv) > 0);
    // Now the client reads everything: a fresh gate ends with Drained.
    let mut gate = DrainGate::start(
        srv,
        Drain::UntilAcked {
            deadline: Duration::from_secs(60),
        },
        lan.now,
    );
    let mut buf = vec![0u8; 65536];
    let mut end = None;
    for _ in 0..10_000 {
        while lan.ifs[0].tcp_recv(cl, &mut buf).unwrap() > 0 {}
        lan.step();
        end = gate.ready(&mut lan.ifs[1], lan.now);
        if end.is_some() {
            break;
        }
    }
    assert_eq!(end, Some(DrainEnd::Drained));
    let mut imm = DrainGate::start(srv, Drain::Immediate, lan.now);
    assert_eq!(
        imm.ready(&mut lan.ifs[1], lan.now),
        Some(DrainEnd::Immediate)
    );
}

/// The connection goes back and forth between the two nodes 20 times during the download (one
/// handoff per simulation step once data flows),
/// over two control channels (one per direction), alternating drain policies.
#[test]
fn twenty_handoffs_back_and_forth_byte_exact() {
    const N: usize = 20;
    let data = content();
    // chans[k]: (donor side on node 1+k, acceptor side on the other node).
    let mut chans = [channels(SECRET, SECRET), channels(SECRET, SECRET)];
    let mut acceptors = [
        Acceptor::new(AcceptorConfig::new(&["http"])),
        Acceptor::new(AcceptorConfig::new(&["http"])),
    ];
    let mut lan = Lan::new();
    let ds = ip(DS);
    let (cl, srv) = connect(&mut lan);
    let mut server = (1usize, srv);
    let (mut sent, mut got) = (0, Vec::with_capacity(LEN));
    let mut buf = vec![0u8; 65536];
    let mut donor: Option<(usize, Donor)> = None;
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
        while let Ok(k) = lan.ifs[0].tcp_recv(cl, &mut buf) {
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        let done = reports.len();
        if donor.is_none() && done < N && !got.is_empty() {
            let mut cfg = DonorConfig::new(done as u64, "http");
            if done % 2 == 1 {
                cfg.drain = Drain::UntilAcked {
                    deadline: Duration::from_millis(200),
                };
            }
            donor = Some((server.0, Donor::start(server.1, cfg, lan.now)));
        }
        while let Some((from, d)) = donor.as_mut() {
            let (from, to) = (*from, 3 - *from);
            let k = from - 1;
            let now = lan.now;
            let (ch_d, ch_a) = &mut chans[k];
            if let Some(AcceptorEvent::Activated { handle, .. }) =
                acceptors[k].poll(ch_a, &mut lan.ifs[to], now).unwrap()
            {
                server = (to, handle);
            }
            match d.poll(ch_d, &mut lan.ifs[from], now).unwrap() {
                None if d.is_draining() => break,
                None => continue,
                Some(DonorOutcome::Moved { report, state }) => {
                    lan.ifs[from].remove_addr(ds);
                    lan.ifs[from].tcp_forget_frozen(state.local(), state.remote());
                    reports.push(report);
                    donor = None;
                }
                Some(DonorOutcome::Resumed { cause, .. }) => panic!("resumed: {cause}"),
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
    use ds_handoff::channel::HELLO_LEN;
    // Inside the ciphertext and near the tag's end (a 4-byte length prefix follows the hello;
    // a flipped length makes the acceptor wait for bytes that never come: the donor's reply
    // timeout covers that, see `silent_acceptor_times_out_and_donor_resumes`).
    for at in [HELLO_LEN + 4 + 1, HELLO_LEN + 4 + 60] {
        let run = download_via(
            Drain::Immediate,
            AcceptorConfig::new(&["http"]),
            (SECRET, SECRET),
            Some(at),
        );
        assert!(run.bytes_ok);
        assert!(run.report.is_none());
        assert!(
            matches!(
                run.acceptor_error,
                Some(HandoffError::Channel(
                    ChannelError::Auth | ChannelError::FrameLength(_)
                ))
            ),
            "{:?}",
            run.acceptor_error
        );
        assert!(matches!(run.resumed, Some(HandoffError::Channel(_))));
    }
}

/// An acceptor that accepts and then goes silent: the donor does not thaw back (the
/// connection may run there) and reports the handoff as in doubt.
#[test]
fn accept_without_activation_is_in_doubt() {
    let (mut ch_d, mut ch_a) = channels(SECRET, SECRET);
    let mut lan = Lan::new();
    let (_cl, srv) = connect(&mut lan);
    let mut cfg = DonorConfig::new(3, "http");
    cfg.reply_timeout = Duration::from_millis(30);
    let mut d = Donor::start(srv, cfg, lan.now);
    let t = Mono::now();
    let mut accepted = false;
    let r = loop {
        let now = lan.now;
        if !accepted {
            if let Some(Message::Offer(o)) = ch_a.poll().unwrap() {
                ch_a.send(&Message::Accept { conn_id: o.conn_id }).unwrap();
                accepted = true;
            }
        }
        match d.poll(&mut ch_d, &mut lan.ifs[1], now) {
            Ok(None) => assert!(t.elapsed() < Duration::from_secs(5)),
            other => break other,
        }
    };
    assert!(matches!(r, Err(HandoffError::InDoubt(_))), "{r:?}");
    assert_eq!(lan.ifs[1].tcp_connection_count(), 0, "not thawed back");
}

/// Packets that reach the donor after the freeze are held by its interface and forwarded over
/// the control channel; the acceptor processes them. Here the client's steering never changes
/// (the acceptor serves the DS address as a home address, without claiming it on the link), so
/// the whole rest of an upload reaches the acceptor through the donor — byte-exact, and the
/// client retransmits nothing.
#[test]
fn held_packets_are_forwarded_to_the_acceptor() {
    let (mut ch_d, mut ch_a) = channels(SECRET, SECRET);
    let mut lan = Lan::new();
    let (cl, srv) = connect(&mut lan);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 239) as u8).collect();
    let (mut sent, mut got) = (0usize, Vec::new());
    let mut buf = vec![0u8; 65536];
    while got.len() < 500_000 {
        sent += lan.ifs[0]
            .tcp_send(cl, &data[sent..(sent + 16_384).min(data.len())])
            .unwrap();
        lan.step();
        while let Ok(n) = lan.ifs[1].tcp_recv(srv, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    let mut acfg = AcceptorConfig::new(&["http"]);
    acfg.takeover = Takeover::HomeAddress;
    let mut acceptor = Acceptor::new(acfg);
    let mut donor = Donor::start(srv, DonorConfig::new(7, "http"), lan.now);
    let mut moved_to = None;
    let state = loop {
        let now = lan.now;
        if let Some(AcceptorEvent::Activated { handle, .. }) =
            acceptor.poll(&mut ch_a, &mut lan.ifs[2], now).unwrap()
        {
            moved_to = Some(handle);
        }
        match donor.poll(&mut ch_d, &mut lan.ifs[1], now).unwrap() {
            Some(DonorOutcome::Moved { state, .. }) => break state,
            Some(DonorOutcome::Resumed { cause, .. }) => panic!("resumed: {cause}"),
            None => {}
        }
    };
    // The Activated may still be in flight to us; drain the acceptor side until we have it.
    let t = Mono::now();
    while moved_to.is_none() {
        assert!(t.elapsed() < Duration::from_secs(5));
        let now = lan.now;
        if let Some(AcceptorEvent::Activated { handle, .. }) =
            acceptor.poll(&mut ch_a, &mut lan.ifs[2], now).unwrap()
        {
            moved_to = Some(handle);
        }
    }
    let srv2 = moved_to.unwrap();
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
        if forward_held(&mut ch_d, &mut lan.ifs[1], 7, &state).unwrap() > 0 {
            // The frame crosses loopback; feed it in when it arrives.
            let deadline = Mono::now() + Duration::from_secs(2);
            loop {
                assert!(Mono::now() < deadline, "forwarded packets did not arrive");
                let now = lan.now;
                if let Some(AcceptorEvent::Forwarded { .. }) =
                    acceptor.poll(&mut ch_a, &mut lan.ifs[2], now).unwrap()
                {
                    break;
                }
            }
        }
        while let Ok(n) = lan.ifs[2].tcp_recv(srv2, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
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
