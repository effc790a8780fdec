//! What the handoff engine's tests share: a simulated LAN of userspace interfaces, a raw-TCP
//! service that records what it adopted, message links (a real control channel over loopback
//! or an in-memory queue) and one exchange round between a donor and an acceptor.
#![allow(dead_code, unused_macros)]

/// Assert that a donor outcome matches a pattern (the outcome is printed when not).
macro_rules! assert_outcome {
    ($out:expr, $pat:pat) => {
        assert!(matches!($out, $pat), "unexpected outcome: {:?}", $out)
    };
}

use ds_handoff::{
    Acceptor, AcceptorEvent, Channel, ChannelError, ClusterSecret, Dest, Donor, DonorOutcome,
    Message, Service, UserConn, UserHost,
};
use ds_stack::{Instant, Interface, TcpHandle};
use ds_testbed::simlan;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::{Duration, Instant as Mono};

pub const DS: &str = "fd00::80";
pub const SECRET: &[u8] = b"cluster secret for the test, 32B";

pub fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

thread_local! {
    /// Simulated monotonic time of this test thread (see [`sim_clock`]).
    static SIM: Cell<Option<Mono>> = const { Cell::new(None) };
}

/// The host clock in simulated-time tests: the simulated instant, set with [`set_sim`].
pub fn sim_clock() -> Mono {
    SIM.with(|s| s.get()).expect("simulated time set")
}

/// Set the simulated instant read by [`sim_clock`].
pub fn set_sim(t: Mono) {
    SIM.with(|s| s.set(Some(t)));
}

/// The shared simulated link (`ds_testbed::simlan`) with what the engine's tests add: the
/// host clock the nodes' hosts use. Derefs to the link (`ifs`, `now`, `step`). 0 = client,
/// 1 = donor, 2 = acceptor.
pub struct Lan {
    net: simlan::Lan,
    /// The host clock the nodes' hosts use.
    pub clock: ds_handoff::Clock,
}

impl std::ops::Deref for Lan {
    type Target = simlan::Lan;
    fn deref(&self) -> &simlan::Lan {
        &self.net
    }
}

impl std::ops::DerefMut for Lan {
    fn deref_mut(&mut self) -> &mut simlan::Lan {
        &mut self.net
    }
}

impl Lan {
    /// Client fd00::3, node 1 fd00::1 with the DS address, node 2 fd00::2.
    pub fn new() -> Self {
        let c = simlan::node(3, &[ip("fd00::3")]);
        let d = simlan::node(1, &[ip("fd00::1"), ip(DS)]);
        let a = simlan::node(2, &[ip("fd00::2")]);
        Self::with(vec![c, d, a], simlan::START)
    }

    /// A LAN of these interfaces at `now`; TCP frames from the DS address are logged.
    pub fn with(ifs: Vec<Interface>, now: Instant) -> Self {
        let ds = ip(DS);
        let net = simlan::Lan::new(ifs, now).log_if(move |f| {
            simlan::ipv6_header(f).is_some_and(|(nh, src, _)| nh == 6 && src == ds)
        });
        Lan {
            net,
            clock: Mono::now,
        }
    }

    /// Wall time between the donor's last DS frame and the acceptor's first one.
    pub fn client_gap(&self) -> Option<Duration> {
        self.net.handover_gap(1, 2)
    }

    /// A connection from interface `c` (address `from`) to `to`, accepted on interface `n`:
    /// (client, server).
    pub fn connect(
        &mut self,
        c: usize,
        from: Ipv6Addr,
        n: usize,
        to: std::net::SocketAddrV6,
    ) -> (TcpHandle, TcpHandle) {
        self.net.connect(
            c,
            &std::net::SocketAddrV6::new(from, 0, 0, 0).to_string(),
            n,
            &to.to_string(),
        )
    }

    /// The host of node `i` for one call into the engine.
    pub fn host(&mut self, i: usize) -> UserHost<'_> {
        UserHost::new(&mut self.net.ifs[i], self.net.now, self.clock)
    }
}

/// Append what connection `h` of `iface` has received to `got`.
pub fn read_into(iface: &mut Interface, h: TcpHandle, got: &mut Vec<u8>) {
    // An error leaves the bytes missing: the caller's byte-exact checks see it.
    let _ = simlan::read_available(iface, h, got);
}

/// A service of raw TCP: exports a fixed marker, records the handles it adopted.
#[derive(Debug, Default)]
pub struct Raw {
    /// Refuse every service name but this one (`None`: "http").
    pub name: Option<&'static str>,
    pub adopted: Vec<TcpHandle>,
    pub exported: u32,
    /// Adoption fails (the engine must reset the connection).
    pub fail_adopt: bool,
}

impl Service<UserConn> for Raw {
    fn accepts(&self, name: &str) -> bool {
        name == self.name.unwrap_or("http")
    }

    fn export(&mut self, _conn: &UserConn) -> Result<Vec<u8>, String> {
        self.exported += 1;
        Ok(b"raw".to_vec())
    }

    fn adopt(&mut self, conn: UserConn, state: &[u8]) -> Result<(), (UserConn, String)> {
        if self.fail_adopt || state != b"raw" {
            return Err((conn, "cannot continue".into()));
        }
        match conn.handle() {
            Some(h) => {
                self.adopted.push(h);
                Ok(())
            }
            None => Err((conn, "adopted a dormant connection".into())),
        }
    }
}

/// Where an engine's messages go: a control channel or an in-memory queue.
pub trait Link {
    fn send(&mut self, m: &Message) -> Result<(), ChannelError>;
    fn recv(&mut self) -> Result<Option<Message>, ChannelError>;
    /// When the message `recv` last returned arrived, if the link knows (host clock).
    fn arrival(&self) -> Option<Mono> {
        None
    }
}

impl Link for Channel {
    fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        Channel::send(self, m)
    }
    fn recv(&mut self) -> Result<Option<Message>, ChannelError> {
        self.poll()
    }
}

/// One end of an in-memory message pipe; `broken` makes both directions fail (a crash).
pub struct Mem {
    rx: Rc<RefCell<VecDeque<Message>>>,
    tx: Rc<RefCell<VecDeque<Message>>>,
    pub broken: Rc<Cell<bool>>,
    /// Every message sent this way, for the test to look at.
    pub log: Rc<RefCell<Vec<Message>>>,
}

/// A connected in-memory pair.
pub fn mem_pair() -> (Mem, Mem) {
    let (a, b) = (Rc::default(), Rc::default());
    let broken = Rc::new(Cell::new(false));
    let (la, lb) = (Rc::default(), Rc::default());
    (
        Mem {
            rx: Rc::clone(&a),
            tx: Rc::clone(&b),
            broken: Rc::clone(&broken),
            log: la,
        },
        Mem {
            rx: b,
            tx: a,
            broken,
            log: lb,
        },
    )
}

impl Link for Mem {
    fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        if self.broken.get() {
            return Err(ChannelError::Closed);
        }
        self.log.borrow_mut().push(m.clone());
        self.tx.borrow_mut().push_back(m.clone());
        Ok(())
    }
    fn recv(&mut self) -> Result<Option<Message>, ChannelError> {
        if self.broken.get() {
            return Err(ChannelError::Closed);
        }
        Ok(self.rx.borrow_mut().pop_front())
    }
}

pub fn listen() -> TcpListener {
    TcpListener::bind("[::1]:0")
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
}

/// Poll both ends until their handshakes completed (or one failed: the acceptor's error is
/// returned with them).
pub fn establish(d: Channel, a: Channel) -> (Channel, Channel, Option<ChannelError>) {
    let (mut d, mut a) = (d, a);
    let t = Mono::now();
    while !(d.is_established() && a.is_established()) && t.elapsed() < Duration::from_secs(5) {
        if d.poll().is_err() {
            break;
        }
        if let Err(e) = a.poll() {
            return (d, a, Some(e));
        }
    }
    (d, a, None)
}

/// A control channel pair over loopback: (donor side, acceptor side, the acceptor's
/// handshake error), optionally to `addr` instead of the listener (a proxy in front of it).
pub fn channels_seen(
    donor_secret: &[u8],
    acceptor_secret: &[u8],
    via: impl FnOnce(SocketAddr) -> SocketAddr,
) -> (Channel, Channel, Option<ChannelError>) {
    let l = listen();
    let addr = via(l.local_addr().unwrap());
    let d = Channel::connect(addr, &ClusterSecret::new(donor_secret).unwrap()).unwrap();
    let (stream, _) = l.accept().unwrap();
    let a = Channel::accept(stream, &ClusterSecret::new(acceptor_secret).unwrap()).unwrap();
    establish(d, a)
}

/// [`channels_seen`] without the error.
pub fn channels_to(
    donor_secret: &[u8],
    acceptor_secret: &[u8],
    via: impl FnOnce(SocketAddr) -> SocketAddr,
) -> (Channel, Channel) {
    let (d, a, _) = channels_seen(donor_secret, acceptor_secret, via);
    (d, a)
}

/// A control channel pair over loopback.
pub fn channels(donor_secret: &[u8], acceptor_secret: &[u8]) -> (Channel, Channel) {
    channels_to(donor_secret, acceptor_secret, |a| a)
}

/// What one round saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub outcome: Option<DonorOutcome>,
    pub events: Vec<AcceptorEvent>,
    /// The acceptor's channel failed (and was dropped).
    pub acceptor_error: Option<ChannelError>,
}

/// One round of the handoff protocol: the acceptor (node `to`) reads its link and
/// answers, the donor (node `from`) reads its link and advances; both transmit. `ha` is the
/// home agent's end for the acceptor's flow moves and the donor's reclaims, if any (one link
/// for both: the answers to reclaims carry [`ds_handoff::RECLAIM_ID`]).
#[allow(clippy::too_many_arguments)]
pub fn round<'h>(
    lan: &mut Lan,
    svcs: &mut [Raw],
    donor: Option<&mut Donor<UserConn>>,
    from: usize,
    ch_d: &mut dyn Link,
    acc: &mut Acceptor<u8, UserConn>,
    to: usize,
    ch_a: &mut Option<Box<dyn Link>>,
    mut ha: Option<&mut (dyn Link + 'h)>,
) -> Seen {
    let mut seen = Seen::default();
    // The acceptor, at the time it runs (each side reads the clock as its own loop would).
    let now = (lan.clock)();
    if let Some(ca) = ch_a.as_mut() {
        loop {
            match ca.recv() {
                Ok(Some(m)) => {
                    let mut h = lan.host(to);
                    if acc.handle(now, 0, m, &mut h, &mut svcs[to]).is_err() {
                        acc.channel_failed(0, &mut h);
                        *ch_a = None;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    acc.channel_failed(0, &mut lan.host(to));
                    seen.acceptor_error = Some(e);
                    *ch_a = None;
                    break;
                }
            }
        }
    }
    let mut to_donor = Vec::new();
    if let Some(ha) = ha.as_mut() {
        while let Ok(Some(m)) = ha.recv() {
            if m.conn_id() & ds_handoff::RECLAIM_ID != 0 {
                to_donor.push(m);
            } else {
                acc.handle_home_agent(now, m, &mut lan.host(to));
            }
        }
    }
    // As `dserver`'s engine does: an Accept queued by an offer or the home agent's answer is
    // written before the acceptor's poll activates its connection (a write that fails
    // discards it instead); then twice: an Accept written in the first pass is activated in
    // the second.
    let mut transmit = |acc: &mut Acceptor<u8, UserConn>, lan: &mut Lan| {
        while let Some((dest, m)) = acc.poll_transmit() {
            let r = match (dest, ch_a.as_mut(), ha.as_mut()) {
                (Dest::Donor(_), Some(ca), _) => ca.send(&m),
                (Dest::HomeAgent, _, Some(h)) => h.send(&m),
                _ => Err(ChannelError::Closed),
            };
            if let Err(e) = r {
                match dest {
                    Dest::Donor(k) => {
                        acc.channel_failed(k, &mut lan.host(to));
                        *ch_a = None;
                        seen.acceptor_error = Some(e);
                    }
                    Dest::HomeAgent => acc.home_agent_failed(&mut lan.host(to)),
                }
            }
        }
    };
    transmit(acc, lan);
    for _ in 0..2 {
        acc.poll(now, &mut lan.host(to), &mut svcs[to]);
        transmit(acc, lan);
    }
    while let Some(e) = acc.poll_event() {
        seen.events.push(e);
    }
    // The donor.
    let now = (lan.clock)();
    if let Some(d) = donor {
        loop {
            match ch_d.recv() {
                Ok(Some(m)) => {
                    let arrived = ch_d.arrival();
                    d.handle_arrived(now, arrived, m, &mut lan.host(from), &mut svcs[from])
                }
                Ok(None) => break,
                Err(e) => {
                    d.channel_failed(now, e.to_string(), &mut lan.host(from), &mut svcs[from]);
                    break;
                }
            }
        }
        for m in to_donor {
            d.handle_home_agent(now, m, &mut lan.host(from), &mut svcs[from]);
        }
        d.poll(now, &mut lan.host(from), &mut svcs[from]);
        while let Some(m) = d.poll_transmit() {
            if let Err(e) = ch_d.send(&m) {
                d.channel_failed(now, e.to_string(), &mut lan.host(from), &mut svcs[from]);
            }
        }
        if let Some(ha) = ha.as_mut() {
            while let Some(m) = d.poll_transmit_home_agent() {
                if ha.send(&m).is_err() {
                    d.home_agent_failed(&mut lan.host(from), &mut svcs[from]);
                }
            }
        }
        seen.outcome = d.poll_outcome();
    }
    seen
}

/// [`round`] between node 1 (donor) and node 2 (acceptor), without a home agent.
pub fn round12(
    lan: &mut Lan,
    svcs: &mut [Raw],
    donor: &mut Donor<UserConn>,
    ch_d: &mut dyn Link,
    acc: &mut Acceptor<u8, UserConn>,
    ch_a: &mut Option<Box<dyn Link>>,
) -> Seen {
    round(lan, svcs, Some(donor), 1, ch_d, acc, 2, ch_a, None)
}

/// Start handing node `n`'s connection `srv` off at `now`.
pub fn start_donor(
    lan: &mut Lan,
    svcs: &mut [Raw],
    n: usize,
    srv: TcpHandle,
    cfg: ds_handoff::DonorConfig,
    now: Mono,
) -> Donor<UserConn> {
    Donor::start(
        now,
        UserConn::Live(srv),
        cfg,
        &mut lan.host(n),
        &mut svcs[n],
    )
    .unwrap_or_else(|(_, e)| panic!("handoff not started: {e}"))
}
