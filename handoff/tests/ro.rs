//! Route-optimised handoff through the driver: the contact node (donor) serves the DS address
//! as a home address at home and runs the home test; the connection and the home keygen
//! ticket travel in one Offer; the acceptor serves the home address away from home
//! (`Takeover::HomeAddress`) and its steering hook sends the Binding Update (RFC 6275 §5.2.5
//! with the imported home token). The client (a correspondent: our stack) ends up sending to
//! the acceptor's care-of address, and the download is byte-exact.

mod common;

use common::{channels, ip, read_into, round12, start_donor, Lan, Link, Raw};
use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, DonorConfig, DonorOutcome, Drain, Mode, Steering,
    Takeover, UserConn,
};
use ds_stack::mobile::MobileRole;
use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant as Mono};

/// The mobile role interface `i` owns (the test drives it there).
fn mn(lan: &mut Lan, i: usize) -> &mut MobileRole {
    lan.ifs[i].mobility_hook_mut().expect("mobile role")
}

#[test]
fn route_optimised_handoff_carries_the_home_ticket() {
    let (cl_ip, b_ip, c_ip, h) = (ip("fd00::1"), ip("fd00::2"), ip("fd00::3"), ip("fd00::80"));
    let t0 = Instant::from_millis(1000);
    let client = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![cl_ip]), t0);
    // The servers take each half in one write (no not-sent limit: this test is about the
    // home ticket, not buffering).
    let server = |mac: u8, addrs: Vec<Ipv6Addr>| {
        let mut cfg = Config::new([2, 0, 0, 0, 0, mac], addrs);
        cfg.tcp.notsent_lowat = None;
        Interface::new(cfg, t0)
    };
    let mut b = server(2, vec![b_ip, h]);
    let mut c = server(3, vec![c_ip]);
    b.set_mobility_hook(Box::new(MobileRole::new(h, None)));
    c.set_mobility_hook(Box::new(MobileRole::new(h, Some(c_ip))));
    let mut lan = Lan::with(vec![client, b, c], t0);
    let (cl, srv) = lan.connect(0, cl_ip, 1, SocketAddrV6::new(h, 80, 0, 0));
    assert_eq!(lan.ifs[0].tcp_state(cl), Some(TcpState::Established));

    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let half = data.len() / 2;
    assert_eq!(lan.ifs[1].tcp_send(srv, &data[..half]).unwrap(), half);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let read = |lan: &mut Lan, got: &mut Vec<u8>, _: &mut [u8]| {
        read_into(&mut lan.ifs[0], cl, got);
    };
    // Return routability ahead of the handoff (tokens live for minutes, RFC 6275 §5.2.7):
    // the contact node runs the home test, the acceptor the care-of test.
    let now = lan.now;
    mn(&mut lan, 1).start_home_test(now, cl_ip, [1; 8]);
    mn(&mut lan, 2).start_care_of_test(now, cl_ip, [2; 8]);
    for _ in 0..20 {
        lan.step();
        read(&mut lan, &mut got, &mut buf);
    }
    assert!(mn(&mut lan, 2).has_care_of_token());
    let now = lan.now;
    let ticket = mn(&mut lan, 1).home_ticket(now, 1).expect("home token");
    let ticket_bytes = postcard::to_allocvec(&ticket).unwrap();

    // The acceptor's steering: import the ticket and send the BU (phase 5); the care-of test
    // runs again for this connection (phase 4: a token from before it may predate a restart
    // of the correspondent); BU→BA (phase 6) completes asynchronously on the LAN.
    let acfg = AcceptorConfig {
        takeover: Takeover::HomeAddress,
        steering: Steering::RouteOptimised {
            lifetime: Duration::from_secs(120),
        },
        ..Default::default()
    };
    let mut acc: Acceptor<u8, UserConn> = Acceptor::new(acfg);
    let (mut ch_d, ch_a) = channels(
        b"route optimisation test secret!!",
        b"route optimisation test secret!!",
    );
    let mut ch_a: Option<Box<dyn Link>> = Some(Box::new(ch_a));
    let mut svcs: [Raw; 3] = Default::default();
    let mut dcfg = DonorConfig::new(1, "http");
    dcfg.drain = Drain::UntilAcked {
        deadline: Duration::from_secs(2),
    };
    dcfg.mode = Mode::Ro;
    dcfg.ticket = Some(ticket_bytes);
    let mut donor = start_donor(&mut lan, &mut svcs, 1, srv, dcfg, Mono::now());
    let mut srv2 = None;
    let mut bu_sent = false;
    let report = loop {
        let seen = round12(
            &mut lan, &mut svcs, &mut donor, &mut ch_d, &mut acc, &mut ch_a,
        );
        for e in &seen.events {
            match e {
                AcceptorEvent::Adopted { .. } => srv2 = svcs[2].adopted.pop(),
                AcceptorEvent::BindingSent { .. } => bu_sent = true,
                _ => {}
            }
        }
        match seen.outcome {
            Some(DonorOutcome::Moved { report, .. }) => break report,
            Some(other) => panic!("not moved: {other:?}"),
            // The wire keeps moving, as on a node: the drain's ACKs, and the care-of test the
            // acceptor runs for each connection it is offered (the offer waits for it).
            None => {
                lan.step();
                read(&mut lan, &mut got, &mut buf);
            }
        }
    };
    assert!(bu_sent, "the acceptor sent the Binding Update");
    let srv2 = srv2.expect("activated on the acceptor");
    assert!(report.state_bytes <= 96, "drained: {}", report.state_bytes);
    assert!(report.phases_us[4] > 0.0, "BU construction measured");
    // Binding management: until the Binding Acknowledgement.
    let bu_at = lan.now;
    while !{
        let now = lan.now;
        mn(&mut lan, 2).is_bound(now)
    } {
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
