//! Route-optimised handoff through the driver: the contact node (donor) serves the DS address
//! as a home address at home and runs the home test; the connection and the home keygen
//! ticket travel in one Offer; the acceptor serves the home address away from home
//! (`Takeover::HomeAddress`) and its steering hook sends the Binding Update (RFC 6275 §5.2.5
//! with the imported home token). The client (a correspondent: our stack) ends up sending to
//! the acceptor's care-of address, and the download is byte-exact.

use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, Channel, ClusterSecret, Donor, DonorConfig,
    DonorOutcome, Drain, Mode, Takeover,
};
use ds_mipv6::mn::HomeTicket;
use ds_stack::mobile::MobileRole;
use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::time::{Duration, Instant as Mono};

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

struct Lan {
    ifs: Vec<Interface>,
    now: Instant,
}

impl Lan {
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
            for (from, fr) in &frames {
                for (j, f) in self.ifs.iter_mut().enumerate() {
                    if j != *from {
                        f.receive(self.now, fr);
                    }
                }
            }
        }
        self.now += Duration::from_millis(1);
    }
}

fn channels(secret: &[u8]) -> (Channel, Channel) {
    let l = TcpListener::bind("[::1]:0")
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let s = ClusterSecret::new(secret).unwrap();
    let s2 = s.clone();
    let t = std::thread::spawn(move || {
        let (stream, _) = l.accept().unwrap();
        Channel::accept(stream, &s2, Duration::from_secs(5)).unwrap()
    });
    let d = Channel::connect(addr, &s, Duration::from_secs(5)).unwrap();
    (d, t.join().unwrap())
}

#[test]
fn route_optimised_handoff_carries_the_home_ticket() {
    let (cl_ip, b_ip, c_ip, h) = (ip("fd00::1"), ip("fd00::2"), ip("fd00::3"), ip("fd00::80"));
    let t0 = Instant::from_millis(1000);
    let client = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![cl_ip]), t0);
    let mut b = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![b_ip, h]), t0);
    let mut c = Interface::new(Config::new([2, 0, 0, 0, 0, 3], vec![c_ip]), t0);
    let b_mn = MobileRole::new(h, None);
    let c_mn = MobileRole::new(h, Some(c_ip));
    b.set_mobility_hook(b_mn.hook());
    c.set_mobility_hook(c_mn.hook());
    let l = b.tcp_listen(SocketAddrV6::new(h, 80, 0, 0), 4).unwrap();
    let mut lan = Lan {
        ifs: vec![client, b, c],
        now: t0,
    };
    let now = lan.now;
    let cl = lan.ifs[0]
        .tcp_connect(
            now,
            SocketAddrV6::new(cl_ip, 0, 0, 0),
            SocketAddrV6::new(h, 80, 0, 0),
        )
        .unwrap();
    let mut srv = None;
    for _ in 0..50 {
        lan.step();
        srv = srv.or_else(|| lan.ifs[1].tcp_accept(l));
    }
    let srv = srv.expect("accepted at the contact node");
    assert_eq!(lan.ifs[0].tcp_state(cl), Some(TcpState::Established));

    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let half = data.len() / 2;
    assert_eq!(lan.ifs[1].tcp_send(srv, &data[..half]).unwrap(), half);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let read = |lan: &mut Lan, got: &mut Vec<u8>, buf: &mut [u8]| {
        while let Ok(n) = lan.ifs[0].tcp_recv(cl, buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    // Return routability ahead of the handoff (tokens live for minutes, RFC 6275 §5.2.7):
    // the contact node runs the home test, the acceptor the care-of test.
    let now = lan.now;
    b_mn.start_home_test(now, cl_ip, [1; 8]);
    c_mn.start_care_of_test(now, cl_ip, [2; 8]);
    for _ in 0..20 {
        lan.step();
        read(&mut lan, &mut got, &mut buf);
    }
    assert!(c_mn.has_care_of_token());
    let ticket = b_mn.home_ticket(lan.now, 1).expect("home token");
    let ticket_bytes = postcard::to_allocvec(&ticket).unwrap();

    // The acceptor's steering: import the ticket and send the BU (phase 5); RR already ran
    // (phase 4 overlapped, 0 here); BU→BA (phase 6) completes asynchronously on the LAN.
    let mn = c_mn.clone();
    let mut acfg = AcceptorConfig::new(&["http"]);
    acfg.takeover = Takeover::HomeAddress;
    acfg.steer = Some(Box::new(move |_iface, now, state, ticket| {
        let t: HomeTicket =
            postcard::from_bytes(ticket.ok_or("no ticket")?).map_err(|e| e.to_string())?;
        let t5 = Mono::now();
        mn.bind(now, &t, *state.remote().ip(), Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        Ok([Duration::ZERO, t5.elapsed(), Duration::ZERO])
    }));
    let mut acceptor = Acceptor::new(acfg);
    let (mut ch_d, mut ch_a) = channels(b"route optimisation test secret!!");
    let mut dcfg = DonorConfig::new(1, "http");
    dcfg.drain = Drain::UntilAcked {
        deadline: Duration::from_secs(2),
    };
    dcfg.mode = Mode::Ro;
    dcfg.ticket = Some(ticket_bytes);
    let mut donor = Donor::start(srv, dcfg, lan.now);
    let mut srv2 = None;
    let report = loop {
        let now = lan.now;
        if let Some(AcceptorEvent::Activated { handle, ticket, .. }) =
            acceptor.poll(&mut ch_a, &mut lan.ifs[2], now).unwrap()
        {
            assert!(ticket.is_some());
            srv2 = Some(handle);
        }
        match donor.poll(&mut ch_d, &mut lan.ifs[1], now).unwrap() {
            Some(DonorOutcome::Moved { report, .. }) => break report,
            Some(DonorOutcome::Resumed { cause, .. }) => panic!("resumed: {cause}"),
            None if donor.is_draining() => {
                lan.step();
                read(&mut lan, &mut got, &mut buf);
            }
            None => {}
        }
    };
    let srv2 = srv2.expect("activated on the acceptor");
    assert!(report.state_bytes <= 96, "drained: {}", report.state_bytes);
    assert!(report.phases_us[4] > 0.0, "BU construction measured");
    // Binding management: until the Binding Acknowledgement.
    let bu_at = lan.now;
    while !c_mn.is_bound(lan.now) {
        lan.step();
        read(&mut lan, &mut got, &mut buf);
        assert!(lan.now < bu_at + Duration::from_secs(5), "no binding");
    }
    assert!(lan.ifs[0]
        .correspondent()
        .and_then(|c| c.entry(h))
        .is_some());
    let mut sent = half;
    while got.len() < data.len() {
        if sent < data.len() {
            sent += lan.ifs[2].tcp_send(srv2, &data[sent..]).unwrap();
        }
        lan.step();
        read(&mut lan, &mut got, &mut buf);
        assert!(lan.now < t0 + Duration::from_secs(60), "stalled");
    }
    assert!(got == data, "byte-exact across the route-optimised handoff");
    let mut report = report;
    report.bytes_ok = Some(true);
    report.client_retransmits = Some(lan.ifs[0].stats().tcp_retransmits);
    println!("{}", report.to_json_line());
    eprintln!(
        "BU->BA took {} ms of simulated time",
        (lan.now.total_millis() - bu_at.total_millis())
    );
}
