//! One simulated broadcast link of userspace interfaces, in simulated time.
//!
//! Every frame an interface transmits reaches every other interface on the link (they filter
//! by MAC). The link can delay frames, lose a deterministic pseudo-random share of them (a
//! function of a seed) and drop the frames a test picks; it can log what was sent, with the
//! sender, the simulated and the wall time.
//!
//! Two ways to move time on:
//! - [`Lan::step`]: exchange frames until the link is quiet, then advance a fixed tick (1 ms);
//! - [`Lan::advance`]: jump to the next event (a frame due or an interface's timer).
//!
//! ```
//! use ds_testbed::simlan::{node, Lan, START};
//! let ip = |s: &str| s.parse().unwrap();
//! let mut lan = Lan::new(vec![node(1, &[ip("fd00::1")]), node(2, &[ip("fd00::2")])], START);
//! lan.step();
//! ```

pub use crate::conn::read_available;
use ds_stack::{Config, Error, Instant, Interface, TcpHandle, TcpState};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant as Wall};

/// Where the simulated clock of a new link usually starts.
pub const START: Instant = Instant::from_millis(1000);

/// An interface with MAC `02:00:00:00:00:<mac>` and these addresses, created at [`START`].
pub fn node(mac: u8, addrs: &[Ipv6Addr]) -> Interface {
    Interface::new(Config::new([2, 0, 0, 0, 0, mac], addrs.to_vec()), START)
}

/// One frame as sent on the link.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Index of the sending interface.
    pub from: usize,
    /// Simulated time it was sent.
    pub at: Instant,
    /// Wall time it was sent.
    pub wall: Wall,
    /// The link lost it (loss or a test's drop rule): nobody received it.
    pub lost: bool,
    /// The Ethernet frame.
    pub bytes: Vec<u8>,
}

impl Frame {
    /// IPv6 next header, source and destination, when this is a long enough IPv6 frame.
    pub fn ipv6(&self) -> Option<(u8, Ipv6Addr, Ipv6Addr)> {
        ipv6_header(&self.bytes)
    }
}

/// Next header, source and destination of the IPv6 packet in an Ethernet frame.
pub fn ipv6_header(f: &[u8]) -> Option<(u8, Ipv6Addr, Ipv6Addr)> {
    if f.len() < 54 || f[12..14] != [0x86, 0xdd] {
        return None;
    }
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).expect("16"));
    Some((f[20], addr(22), addr(38)))
}

type Rule = Box<dyn FnMut(&[u8]) -> bool>;

/// A broadcast link of interfaces in simulated time.
pub struct Lan {
    /// The interfaces, by index; a test may replace one (a node that takes an address over).
    pub ifs: Vec<Interface>,
    /// The simulated time.
    pub now: Instant,
    /// The frames sent that the log rule kept (see [`Lan::log_if`]).
    pub log: Vec<Frame>,
    /// Frames lost to the loss rate or a drop rule.
    pub lost: u64,
    /// What [`Lan::step`] advances after the link is quiet.
    pub tick: Duration,
    delay: Duration,
    /// Each frame is late by up to this much more, at random (frames overtake each other).
    jitter: Duration,
    /// Frames sent twice, per mille (each copy late by its own jitter).
    dup_permille: u32,
    loss_permille: u32,
    rng: u64,
    queue: VecDeque<(Instant, usize, Vec<u8>)>,
    keep: Option<Rule>,
    drop: Option<Rule>,
}

impl Lan {
    /// A lossless link with no delay and no log, of these interfaces at `now`.
    pub fn new(ifs: Vec<Interface>, now: Instant) -> Lan {
        Lan {
            ifs,
            now,
            log: Vec::new(),
            lost: 0,
            tick: Duration::from_millis(1),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            dup_permille: 0,
            loss_permille: 0,
            rng: 1,
            queue: VecDeque::new(),
            keep: None,
            drop: None,
        }
    }

    /// Every frame takes `delay` to arrive.
    pub fn with_delay(mut self, delay: Duration) -> Lan {
        self.delay = delay;
        self
    }

    /// Lose `permille` of the frames, chosen by a xorshift generator seeded with `seed`.
    pub fn with_loss(mut self, permille: u32, seed: u64) -> Lan {
        self.loss_permille = permille;
        self.rng = seed | 1;
        self
    }

    /// Reorder and duplicate: every frame is late by up to `jitter` more than the delay, at
    /// random (so frames overtake each other), and `dup_permille` of them arrive twice, each
    /// copy with its own lateness. Drawn from the loss rate's generator ([`Lan::with_loss`]'s
    /// seed).
    pub fn with_disorder(mut self, dup_permille: u32, jitter: Duration) -> Lan {
        self.dup_permille = dup_permille;
        self.jitter = jitter;
        self
    }

    /// Log every frame sent.
    pub fn log_all(self) -> Lan {
        self.log_if(|_| true)
    }

    /// Log the frames sent for which `keep` is true.
    pub fn log_if(mut self, keep: impl FnMut(&[u8]) -> bool + 'static) -> Lan {
        self.keep = Some(Box::new(keep));
        self
    }

    /// Lose the frames for which `drop` is true (it sees every frame sent, once).
    pub fn drop_if(mut self, drop: impl FnMut(&[u8]) -> bool + 'static) -> Lan {
        self.drop = Some(Box::new(drop));
        self
    }

    fn rand(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) as u32
    }

    /// Take what every interface transmits (polling it first when `poll`) onto the link;
    /// returns how many frames were sent.
    fn pump(&mut self, poll: bool) -> usize {
        let now = self.now;
        let mut out = Vec::new();
        for (i, iface) in self.ifs.iter_mut().enumerate() {
            if poll {
                iface.poll(now);
            }
            iface.transmit(now, &mut |f: &[u8]| out.push((i, f.to_vec())));
        }
        let sent = out.len();
        let wall = Wall::now();
        for (from, bytes) in out {
            let dropped = self.drop.as_mut().is_some_and(|d| d(&bytes));
            let lost = dropped || (self.loss_permille > 0 && self.rand() < self.loss_permille);
            if self.keep.as_mut().is_some_and(|k| k(&bytes)) {
                self.log.push(Frame {
                    from,
                    at: now,
                    wall,
                    lost,
                    bytes: bytes.clone(),
                });
            }
            if lost {
                self.lost += 1;
                continue;
            }
            if self.dup_permille > 0 && self.rand() < self.dup_permille {
                let due = self.due(now);
                self.enqueue(due, from, bytes.clone());
            }
            let due = self.due(now);
            self.enqueue(due, from, bytes);
        }
        sent
    }

    /// When a frame sent at `now` arrives: after the delay, and the jitter's share of it.
    fn due(&mut self, now: Instant) -> Instant {
        if self.jitter.is_zero() {
            return now + self.delay;
        }
        let late = self.jitter.mul_f64(f64::from(self.rand()) / 999.0);
        now + self.delay + late
    }

    /// Queue a frame by its arrival (in order of sending among frames due at once).
    fn enqueue(&mut self, due: Instant, from: usize, bytes: Vec<u8>) {
        let at = self.queue.partition_point(|(t, _, _)| *t <= due);
        self.queue.insert(at, (due, from, bytes));
    }

    /// Hand every frame due by now to every interface but its sender.
    fn deliver(&mut self) {
        while self.queue.front().is_some_and(|(t, _, _)| *t <= self.now) {
            let (_, from, f) = self.queue.pop_front().expect("front");
            for (j, iface) in self.ifs.iter_mut().enumerate() {
                if j != from {
                    iface.receive(self.now, &f);
                }
            }
        }
    }

    /// Poll and exchange frames until the link is quiet (at most 100 rounds), then advance
    /// the clock by [`Lan::tick`].
    pub fn step(&mut self) {
        for _ in 0..100 {
            let sent = self.pump(true);
            self.deliver();
            if sent == 0 {
                break;
            }
        }
        self.now += self.tick;
    }

    /// Advance the clock to the next event (a frame due, an interface's timer; at least now,
    /// at most 100 ms on, 10 ms on when nothing is pending), deliver what is due and poll.
    pub fn advance(&mut self) {
        self.pump(false);
        let next_frame = self.queue.front().map(|x| x.0);
        let next = self
            .ifs
            .iter()
            .map(|i| i.poll_at())
            .chain([next_frame])
            .flatten()
            .min();
        self.now = next
            .unwrap_or(self.now + Duration::from_millis(10))
            .max(self.now)
            .min(self.now + Duration::from_millis(100));
        self.deliver();
        for iface in &mut self.ifs {
            iface.poll(self.now);
        }
        self.pump(false);
    }

    /// Logged frames sent after the log held `mark` frames, that the link did not lose.
    pub fn delivered_since(&self, mark: usize) -> impl Iterator<Item = &Frame> {
        self.log[mark..].iter().filter(|f| !f.lost)
    }

    /// Wall time between the last logged frame of `from` and the first logged frame of `to`
    /// after it started sending (a handoff's gap as the receiver sees it).
    pub fn handover_gap(&self, from: usize, to: usize) -> Option<Duration> {
        let first = self.log.iter().position(|f| f.from == to)?;
        let last = self.log[..first].iter().rev().find(|f| f.from == from)?;
        Some(self.log[first].wall.duration_since(last.wall))
    }

    /// Connect interface `i` from `from` (an ephemeral port) to `to`, now.
    pub fn dial(&mut self, i: usize, from: Ipv6Addr, to: SocketAddrV6) -> TcpHandle {
        let now = self.now;
        self.ifs[i]
            .tcp_connect(now, SocketAddrV6::new(from, 0, 0, 0), to)
            .expect("connect")
    }

    /// Connect interface `client` from `from` to `to` (listened on at `server`) and step until
    /// the server accepted it and the client is established (panics after 10,000 steps).
    /// Returns the client's and the server's handles.
    pub fn connect(
        &mut self,
        client: usize,
        from: &str,
        server: usize,
        to: &str,
    ) -> (TcpHandle, TcpHandle) {
        let (from, to): (SocketAddrV6, SocketAddrV6) =
            (from.parse().expect("literal"), to.parse().expect("literal"));
        let l = self.ifs[server]
            .tcp_listen(
                SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, to.port(), 0, 0),
                16,
            )
            .expect("listen");
        let c = self.dial(client, *from.ip(), to);
        let mut s = None;
        for _ in 0..10_000 {
            self.advance();
            s = s.or_else(|| self.ifs[server].tcp_accept(l));
            if s.is_some() && self.ifs[client].tcp_state(c) == Some(TcpState::Established) {
                break;
            }
        }
        (c, s.expect("accepted"))
    }

    /// Read what interface `i` has for `h` into `into`; see [`read_available`].
    pub fn read(&mut self, i: usize, h: TcpHandle, into: &mut Vec<u8>) -> Result<usize, Error> {
        read_available(&mut self.ifs[i], h, into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two(lan: impl FnOnce(Lan) -> Lan) -> Lan {
        let ip = |s: &str| s.parse().expect("literal");
        lan(Lan::new(
            vec![node(1, &[ip("fd00::1")]), node(2, &[ip("fd00::2")])],
            START,
        ))
    }

    #[test]
    fn logs_senders_and_the_gap_between_them() {
        let mut lan = two(Lan::log_all);
        let (c, s) = lan.connect(0, "[fd00::1]:0", 1, "[fd00::2]:80");
        lan.ifs[0].tcp_send(c, b"hello").expect("send");
        let mut got = Vec::new();
        while got.len() < 5 {
            lan.step();
            let _ = lan.read(1, s, &mut got);
        }
        assert_eq!(got, b"hello");
        assert!(lan.log.iter().any(|f| f.from == 0) && lan.log.iter().any(|f| f.from == 1));
        assert!(lan.log.iter().all(|f| !f.lost && f.ipv6().is_some()));
        assert!(lan.handover_gap(0, 1).is_some());
        assert_eq!(lan.delivered_since(0).count(), lan.log.len());
    }

    #[test]
    fn dropped_frames_are_logged_as_lost_and_never_arrive() {
        let mut lan = two(|l| l.log_all().drop_if(|f| ipv6_header(f).is_some()));
        let c = lan.dial(
            0,
            "fd00::1".parse().expect("literal"),
            "[fd00::2]:80".parse().expect("literal"),
        );
        for _ in 0..50 {
            lan.advance();
        }
        assert_ne!(lan.ifs[0].tcp_state(c), Some(TcpState::Established));
        assert!(lan.lost > 0);
        assert_eq!(lan.delivered_since(0).count(), 0);
        assert_eq!(lan.log.len() as u64, lan.lost);
    }
}
