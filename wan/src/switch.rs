//! [`Switch`]: the emulated core, sans-IO — N ports, a learning Ethernet switch between them,
//! a [`Shaper`] per directed pair of ports (the path between two sites: delay, jitter, loss,
//! rate) and optionally one per ingress port in front of those (a site's upstream, shared by
//! every path leaving it: the seed shaped each home agent's link to the core this way).
//!
//! With two ports it is a plain bidirectional link. Frames in with the time and their
//! addresses; frames out with their port, and the next deadline.

use crate::params::LinkParams;
use crate::shaper::{Shaper, ShaperStats};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Most MAC addresses learned; beyond, unknown destinations are flooded (bounded memory
/// whatever the sources).
pub const FDB_MAX: usize = 4096;

/// Where a frame goes once it leaves its upstream stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    One(usize),
    Flood,
}

/// Counters of one directed path.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PathStats {
    /// Ingress port index.
    pub from: usize,
    /// Egress port index.
    pub to: usize,
    /// The path's shaper.
    #[serde(flatten)]
    pub shaper: ShaperStats,
}

/// Counters of the switch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchStats {
    /// Per directed path (only paths that carried something, or all with two ports).
    pub paths: Vec<PathStats>,
    /// Per ingress port with an upstream stage: (port, its shaper's counters).
    pub upstream: Vec<(usize, ShaperStats)>,
    /// Frames sent to every other port (multicast, broadcast, unknown destination).
    pub flooded: u64,
    /// Frames whose destination sits behind their own ingress port (dropped, as a bridge does).
    pub filtered: u64,
}

/// The emulated core (see the module documentation).
pub struct Switch<P> {
    n: usize,
    upstream: Vec<Option<Shaper<(P, Dest)>>>,
    paths: Vec<Shaper<P>>,
    fdb: HashMap<[u8; 6], usize>,
    /// Frames leaving an upstream stage in one poll, before they enter their paths (kept
    /// from poll to poll: no allocation per poll).
    moved: Vec<(Duration, usize, P, Dest)>,
    flooded: u64,
    filtered: u64,
}

impl<P: Clone> Switch<P> {
    /// `n` ports (at least 2); `path(i, j)` gives the parameters from port i to port j,
    /// `upstream(i)` those of port i's shared upstream stage (`None`: no such stage).
    pub fn new(
        n: usize,
        path: impl Fn(usize, usize) -> LinkParams,
        upstream: impl Fn(usize) -> Option<LinkParams>,
        seed: u64,
    ) -> Switch<P> {
        let n = n.max(2);
        let mix = |k: u64| seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Switch {
            n,
            upstream: (0..n)
                .map(|i| upstream(i).map(|p| Shaper::new(p, mix(1000 + i as u64))))
                .collect(),
            paths: (0..n * n)
                .map(|k| Shaper::new(path(k / n, k % n), mix(k as u64)))
                .collect(),
            fdb: HashMap::new(),
            moved: Vec::new(),
            flooded: 0,
            filtered: 0,
        }
    }

    /// Number of ports.
    pub fn ports(&self) -> usize {
        self.n
    }

    /// A frame of `len` bytes with destination `dst` and source `src` arrived on `port` at
    /// `now` (times never decrease per port).
    pub fn receive(
        &mut self,
        now: Duration,
        port: usize,
        frame: P,
        len: usize,
        dst: [u8; 6],
        src: [u8; 6],
    ) {
        if port >= self.n {
            return;
        }
        if src[0] & 1 == 0 && (self.fdb.len() < FDB_MAX || self.fdb.contains_key(&src)) {
            self.fdb.insert(src, port);
        }
        let dest = match (dst[0] & 1 == 0).then(|| self.fdb.get(&dst)).flatten() {
            Some(&p) if p == port => {
                self.filtered += 1;
                return;
            }
            Some(&p) => Dest::One(p),
            None if self.n == 2 => Dest::One(1 - port),
            None => {
                self.flooded += 1;
                Dest::Flood
            }
        };
        match &mut self.upstream[port] {
            Some(up) => {
                up.push(now, (frame, dest), len);
            }
            None => self.enter_paths(now, port, frame, len, dest),
        }
    }

    fn enter_paths(&mut self, at: Duration, from: usize, frame: P, len: usize, dest: Dest) {
        match dest {
            Dest::One(to) => {
                self.paths[from * self.n + to].push(at, frame, len);
            }
            Dest::Flood => {
                for to in (0..self.n).filter(|&t| t != from) {
                    self.paths[from * self.n + to].push(at, frame.clone(), len);
                }
            }
        }
    }

    /// When the next frame is due anywhere (`None`: nothing queued).
    pub fn next_deadline(&self) -> Option<Duration> {
        let up = self
            .upstream
            .iter()
            .flatten()
            .filter_map(Shaper::next_deadline);
        let paths = self.paths.iter().filter_map(Shaper::next_deadline);
        up.chain(paths).min()
    }

    /// Hands every frame due at `now` to `out` with its egress port.
    pub fn poll(&mut self, now: Duration, mut out: impl FnMut(usize, P)) {
        self.poll_timed(now, |to, _, f| out(to, f));
    }

    /// Hands every frame due at `now` to `out` with its egress port and the time it was due
    /// (so that the caller can tell how late it sent it).
    pub fn poll_timed(&mut self, now: Duration, mut out: impl FnMut(usize, Duration, P)) {
        for from in 0..self.n {
            let mut moved = std::mem::take(&mut self.moved);
            if let Some(up) = &mut self.upstream[from] {
                up.poll_timed(now, |at, len, (f, d)| moved.push((at, len, f, d)));
            }
            for (at, len, f, d) in moved.drain(..) {
                self.enter_paths(at, from, f, len, d);
            }
            self.moved = moved;
        }
        for (k, s) in self.paths.iter_mut().enumerate() {
            let to = k % self.n;
            s.poll_timed(now, |at, _, f| out(to, at, f));
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SwitchStats {
        SwitchStats {
            paths: self
                .paths
                .iter()
                .enumerate()
                .filter(|(k, s)| {
                    k / self.n != k % self.n && (self.n == 2 || s.stats().in_frames > 0)
                })
                .map(|(k, s)| PathStats {
                    from: k / self.n,
                    to: k % self.n,
                    shaper: s.stats(),
                })
                .collect(),
            upstream: self
                .upstream
                .iter()
                .enumerate()
                .filter_map(|(i, u)| u.as_ref().map(|u| (i, u.stats())))
                .collect(),
            flooded: self.flooded,
            filtered: self.filtered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCAST: [u8; 6] = [0xff; 6];

    fn mac(i: u8) -> [u8; 6] {
        [2, 0, 0, 0, 0, i]
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Three sites: path delays 10 ms (0–1), 20 ms (0–2), 30 ms (1–2).
    fn three() -> Switch<u32> {
        let d = |i: usize, j: usize| match (i.min(j), i.max(j)) {
            (0, 1) => "delay=10ms",
            (0, 2) => "delay=20ms",
            _ => "delay=30ms",
        };
        Switch::new(3, |i, j| d(i, j).parse().unwrap(), |_| None, 1)
    }

    fn run(s: &mut Switch<u32>) -> Vec<(Duration, usize, u32)> {
        let mut got = Vec::new();
        while let Some(t) = s.next_deadline() {
            s.poll(t, |p, f| got.push((t, p, f)));
        }
        got
    }

    #[test]
    fn floods_until_it_learns_then_each_path_has_its_own_delay() {
        let mut s = three();
        // Unknown destination: flooded to both other ports, each with its path's delay.
        s.receive(ms(0), 0, 1, 100, mac(2), mac(1));
        assert_eq!(run(&mut s), vec![(ms(10), 1, 1), (ms(20), 2, 1)]);
        // Port 2 answers: mac(1) is known behind port 0 by now.
        s.receive(ms(100), 2, 2, 100, mac(1), mac(2));
        assert_eq!(run(&mut s), vec![(ms(120), 0, 2)]);
        // Port 1 to mac(2), learned behind port 2: the 30 ms path.
        s.receive(ms(200), 1, 3, 100, mac(2), mac(3));
        assert_eq!(run(&mut s), vec![(ms(230), 2, 3)]);
        // A destination behind the ingress port goes nowhere.
        s.receive(ms(300), 0, 4, 100, mac(1), mac(5));
        assert!(run(&mut s).is_empty());
        let st = s.stats();
        assert_eq!((st.flooded, st.filtered), (1, 1));
        s.receive(ms(400), 1, 5, 100, BCAST, mac(3));
        assert_eq!(run(&mut s), vec![(ms(410), 0, 5), (ms(430), 2, 5)]);
    }

    #[test]
    fn an_upstream_is_shared_by_every_path_leaving_its_port() {
        // Port 0's upstream: 1 Mbit/s, no burst; 1,250-byte frames take 10 ms each.
        let mut s: Switch<u32> = Switch::new(
            3,
            |_, _| "delay=5ms".parse().unwrap(),
            |i| (i == 0).then(|| "rate=1mbit,burst=0".parse().unwrap()),
            1,
        );
        s.receive(ms(0), 1, 0, 64, BCAST, mac(1));
        s.receive(ms(0), 2, 0, 64, BCAST, mac(2));
        run(&mut s);
        // Two frames from port 0 to two different sites at once: the second waits for the
        // first on the shared upstream, then each takes its path's 5 ms.
        s.receive(ms(1000), 0, 1, 1250, mac(1), mac(9));
        s.receive(ms(1000), 0, 2, 1250, mac(2), mac(9));
        assert_eq!(run(&mut s), vec![(ms(1015), 1, 1), (ms(1025), 2, 2)]);
        assert_eq!(s.stats().upstream[0].1.out_frames, 2);
    }

    #[test]
    fn two_ports_are_a_plain_link_even_before_learning() {
        let mut s: Switch<u32> = Switch::new(2, |_, _| "delay=1ms".parse().unwrap(), |_| None, 1);
        s.receive(ms(0), 0, 7, 64, mac(2), mac(1));
        assert_eq!(run(&mut s), vec![(ms(1), 1, 7)]);
        assert_eq!(s.stats().flooded, 0);
        assert_eq!(s.stats().paths.len(), 2);
    }
}
