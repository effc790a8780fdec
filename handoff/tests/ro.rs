//! Route-optimised handoff through the driver: the contact node (donor) serves the DS address
//! as a home address at home and runs the home test; the connection and the home keygen
//! ticket travel in one Offer; the acceptor serves the home address away from home
//! (`Takeover::HomeAddress`) and its steering hook sends the Binding Update (RFC 6275 §5.2.5
//! with the imported home token). The client (a correspondent: our stack) ends up sending to
//! the acceptor's care-of address, and the download is byte-exact.

mod common;

use common::{channels, ip, mem_pair, read_into, round, round12, start_donor, Lan, Link, Raw};
use ds_handoff::{
    Acceptor, AcceptorConfig, AcceptorEvent, DonorConfig, DonorOutcome, Drain, Message, Mode,
    Steering, Takeover, UserConn,
};
use ds_stack::mobile::MobileRole;
use ds_stack::{Config, Instant, Interface, TcpState};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant as Mono};

/// The mobile role interface `i` owns (the test drives it there).
fn mn(lan: &mut Lan, i: usize) -> &mut MobileRole {
    lan.ifs[i].mobility_hook_mut().expect("mobile role")
}

/// The client (our stack), node 1 at home serving the DS address `h`, node 2 away (its
/// mobile role with a care-of address); a connection from the client to `h` on node 1, with
/// `first` queued at its server end; return routability run ahead (the contact node's home
/// test, the acceptor's care-of test) while the client reads into `got`.
struct Ro {
    lan: Lan,
    cl: ds_stack::TcpHandle,
    srv: ds_stack::TcpHandle,
    h: Ipv6Addr,
    t0: Instant,
    /// The home keygen ticket, encoded as an Offer carries it.
    ticket: Vec<u8>,
}

fn ro(first: &[u8], got: &mut Vec<u8>) -> Ro {
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
    assert_eq!(lan.ifs[1].tcp_send(srv, first).unwrap(), first.len());
    // Return routability ahead of the handoff (tokens live for minutes, RFC 6275 §5.2.7):
    // the contact node runs the home test, the acceptor the care-of test.
    let now = lan.now;
    mn(&mut lan, 1).start_home_test(now, cl_ip, [1; 8]);
    mn(&mut lan, 2).start_care_of_test(now, cl_ip, [2; 8]);
    for _ in 0..20 {
        lan.step();
        read_into(&mut lan.ifs[0], cl, got);
    }
    assert!(mn(&mut lan, 2).has_care_of_token());
    let now = lan.now;
    let ticket = mn(&mut lan, 1).home_ticket(now, 1).expect("home token");
    Ro {
        lan,
        cl,
        srv,
        h,
        t0,
        ticket: postcard::to_allocvec(&ticket).unwrap(),
    }
}

#[test]
fn route_optimised_handoff_carries_the_home_ticket() {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let half = data.len() / 2;
    let mut got = Vec::new();
    let Ro {
        mut lan,
        cl,
        srv,
        h,
        t0,
        ticket: ticket_bytes,
        ..
    } = ro(&data[..half], &mut got);

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
                read_into(&mut lan.ifs[0], cl, &mut got);
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
        read_into(&mut lan.ifs[0], cl, &mut got);
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
        read_into(&mut lan.ifs[0], cl, &mut got);
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

/// The acceptor of the commit tests below: route-optimised, taking over the home address.
fn ro_acceptor() -> Acceptor<u8, UserConn> {
    Acceptor::new(AcceptorConfig {
        takeover: Takeover::HomeAddress,
        steering: Steering::RouteOptimised {
            lifetime: Duration::from_secs(120),
        },
        ..Default::default()
    })
}

/// Node 1 starts handing `srv` off, route-optimised with the home `ticket`, and without a
/// Prepare: the acceptor binds with the care-of token of the test run ahead, at once.
fn ro_donor(
    lan: &mut Lan,
    svcs: &mut [Raw],
    srv: ds_stack::TcpHandle,
    ticket: Vec<u8>,
) -> ds_handoff::Donor<UserConn> {
    let mut dcfg = DonorConfig::new(1, "http");
    dcfg.mode = Mode::Ro;
    dcfg.ticket = Some(ticket);
    dcfg.prepare = false;
    start_donor(lan, svcs, 1, srv, dcfg, Mono::now())
}

/// Route-optimised, an Abort that crossed the Accept (read in the same round as the offer)
/// leaves the committed offer to activate: its Binding Update went to the client with the
/// commit, so the client now sends to the acceptor's care-of address, and dropping the
/// connection there would have it reset (in transparent mode it is dropped:
/// `sim.rs`, `an_abort_that_crossed_the_accept_drops_the_offer_before_its_activation`).
#[test]
fn route_optimised_an_abort_that_crossed_the_accept_leaves_the_connection_to_the_acceptor() {
    let mut got = Vec::new();
    let Ro {
        mut lan,
        srv,
        ticket,
        ..
    } = ro(&[], &mut got);
    let mut acc = ro_acceptor();
    let (mut ch_d, ch_a) = mem_pair();
    let mut svcs: [Raw; 3] = Default::default();
    let mut donor = ro_donor(&mut lan, &mut svcs, srv, ticket);
    // The donor alone until its offer is out; the acceptor reads nothing yet.
    for _ in 0..100 {
        round(
            &mut lan,
            &mut svcs,
            Some(&mut donor),
            1,
            &mut ch_d,
            &mut acc,
            2,
            &mut None,
            None,
        );
        if ch_d
            .log
            .borrow()
            .iter()
            .any(|m| matches!(m, Message::Offer(_)))
        {
            break;
        }
        lan.step();
    }
    ch_d.send(&Message::Abort {
        conn_id: 1,
        reason: "reply timeout".into(),
    })
    .unwrap();
    let mut ch_a: Option<Box<dyn Link>> = Some(Box::new(ch_a));
    let seen = round(
        &mut lan, &mut svcs, None, 1, &mut ch_d, &mut acc, 2, &mut ch_a, None,
    );
    let sent = |f: fn(&AcceptorEvent) -> bool| seen.events.iter().any(f);
    assert!(
        sent(|e| matches!(e, AcceptorEvent::BindingSent { .. })),
        "{:?}",
        seen.events
    );
    assert!(
        !sent(|e| matches!(e, AcceptorEvent::Aborted { .. })),
        "{:?}",
        seen.events
    );
    assert_eq!(svcs[2].adopted.len(), 1, "activated at the acceptor");
}

/// The acceptor's end of a channel whose write of the Accept fails (the donor's process died
/// or reset the channel just then): the channel is broken from then on, both ways.
struct FailAccept(common::Mem);

impl Link for FailAccept {
    fn send(&mut self, m: &Message) -> Result<(), ds_handoff::ChannelError> {
        if matches!(m, Message::Accept { .. }) {
            self.0.broken.set(true);
        }
        self.0.send(m)
    }
    fn recv(&mut self) -> Result<Option<Message>, ds_handoff::ChannelError> {
        self.0.recv()
    }
}

/// Route-optimised, a channel that fails on the Accept's write leaves the connection to the
/// acceptor: its Binding Update went to the client with the commit, so the client sends to
/// the acceptor's care-of address from then on, and dropping the connection there (as
/// transparent mode does, `sim.rs`,
/// `a_channel_that_fails_before_the_accept_leaves_the_connection_at_the_donor`) had the
/// client's next segment answered with a reset. The donor resumes on the same failure; its
/// copy hears nothing more. What the acceptor's server end sends reaches the client.
#[test]
fn route_optimised_a_failed_accept_leaves_the_connection_to_the_acceptor() {
    let mut got = Vec::new();
    let Ro {
        mut lan,
        cl,
        srv,
        ticket,
        t0,
        ..
    } = ro(&[], &mut got);
    let mut acc = ro_acceptor();
    let (mut ch_d, ch_a) = mem_pair();
    let mut ch_a: Option<Box<dyn Link>> = Some(Box::new(FailAccept(ch_a)));
    let mut svcs: [Raw; 3] = Default::default();
    let mut donor = ro_donor(&mut lan, &mut svcs, srv, ticket);
    let mut events = Vec::new();
    let outcome = loop {
        let seen = round12(
            &mut lan, &mut svcs, &mut donor, &mut ch_d, &mut acc, &mut ch_a,
        );
        events.extend(seen.events);
        if let Some(o) = seen.outcome {
            break o;
        }
        lan.step();
        read_into(&mut lan.ifs[0], cl, &mut got);
        assert!(
            lan.now < t0 + Duration::from_secs(10),
            "no outcome: {events:?}"
        );
    };
    assert!(
        matches!(outcome, DonorOutcome::Resumed { .. }),
        "the donor resumes on the broken channel: {outcome:?}"
    );
    assert!(ch_a.is_none(), "the acceptor saw its write fail");
    // The round after the failure activates the committed offer.
    for _ in 0..3 {
        let seen = round12(
            &mut lan, &mut svcs, &mut donor, &mut ch_d, &mut acc, &mut ch_a,
        );
        events.extend(seen.events);
    }
    let has = |f: fn(&AcceptorEvent) -> bool| events.iter().any(f);
    assert!(
        has(|e| matches!(e, AcceptorEvent::BindingSent { .. })),
        "{events:?}"
    );
    assert!(
        !has(|e| matches!(e, AcceptorEvent::Aborted { .. })),
        "{events:?}"
    );
    assert_eq!(
        svcs[2].adopted.len(),
        1,
        "activated at the acceptor: {events:?}"
    );
    let srv2 = svcs[2].adopted[0];
    // The client, bound to the acceptor, gets what its server end sends, and no reset.
    let msg = b"served by the acceptor after the failed Accept";
    assert_eq!(lan.ifs[2].tcp_send(srv2, msg).unwrap(), msg.len());
    while got.len() < msg.len() {
        lan.step();
        read_into(&mut lan.ifs[0], cl, &mut got);
        assert!(lan.now < t0 + Duration::from_secs(30), "stalled: {got:?}");
    }
    assert_eq!(got, msg);
    assert_eq!(lan.ifs[0].tcp_state(cl), Some(TcpState::Established));
    assert_eq!(
        lan.ifs[2].stats().tcp_no_socket,
        0,
        "the acceptor answered nothing of the client's with a reset"
    );
}
