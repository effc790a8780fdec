//! Neighbour cache (RFC 4861 §7.3): states, timers and the packets queued while an address is
//! being resolved. The interface drives it; this module decides.

use crate::time::{Duration, Instant};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;

/// RFC 4861 §10: REACHABLE_TIME.
pub const REACHABLE_TIME: Duration = Duration::from_secs(30);
/// RFC 4861 §10: RETRANS_TIMER.
pub const RETRANS_TIMER: Duration = Duration::from_secs(1);
/// RFC 4861 §10: DELAY_FIRST_PROBE_TIME.
pub const DELAY_FIRST_PROBE_TIME: Duration = Duration::from_secs(5);
/// RFC 4861 §10: MAX_MULTICAST_SOLICIT / MAX_UNICAST_SOLICIT.
pub const MAX_SOLICIT: u8 = 3;
/// Frames queued per unresolved neighbour (RFC 4861 §7.2.2 asks for at least one).
pub const MAX_QUEUED: usize = 256;
/// Frames queued for all unresolved neighbours together: without it, 4,096 unresolved
/// neighbours could hold a million frames.
pub const MAX_QUEUED_TOTAL: usize = 16_384;
/// Neighbour entries kept at most, however they come (a lookup for an outgoing packet, a
/// solicitation's source link-layer option): past it the oldest entry that is not REACHABLE
/// goes first.
pub const MAX_ENTRIES: usize = 4096;
/// REACHABLE entries an eviction passes over (sending them to the back of the age order)
/// before it takes the oldest entry whatever its state: an eviction costs a bounded number of
/// steps, not a walk of the cache.
const EVICT_SKIP: usize = 8;

/// RFC 4861 §7.3.2 reachability states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighborState {
    /// Address resolution in progress.
    Incomplete,
    /// Recently confirmed.
    Reachable,
    /// Not confirmed recently; used, but will be probed on use.
    Stale,
    /// Used while stale: waiting for upper-layer confirmation.
    Delay,
    /// Unicast probes in progress.
    Probe,
}

/// One neighbour.
#[derive(Debug)]
pub struct Neighbor {
    /// Link-layer address, once known.
    pub mac: Option<[u8; 6]>,
    /// Reachability state.
    pub state: NeighborState,
    /// When the current state's timer fires.
    pub timer: Instant,
    /// Solicitations sent in this state.
    pub probes: u8,
    /// Frames waiting for resolution (link header to be filled in).
    pub queue: VecDeque<Vec<u8>>,
    /// Which insertion this entry is (its place in the cache's age order).
    gen: u64,
}

/// What the cache wants the interface to do.
#[derive(Debug, PartialEq, Eq)]
pub enum NdAction {
    /// Send a multicast Neighbour Solicitation for the address.
    SolicitMulticast(Ipv6Addr),
    /// Send a unicast Neighbour Solicitation.
    SolicitUnicast(Ipv6Addr, [u8; 6]),
}

/// The neighbour cache.
///
/// Its timers are not scanned on every poll: `due` is a lower bound on every entry's timer
/// and `due_active` on those of entries not STALE (what [`Self::poll_at`] reports); a poll
/// before `due` returns at once, one at or after it walks the entries and makes both exact.
/// Timers moved later (a confirmation per packet) leave the bounds early, which costs one walk
/// when they come, never a missed timer.
///
/// Every way an entry comes in is bounded by [`MAX_ENTRIES`] (a flood of solicitations from
/// made-up sources must not grow it), and eviction takes the oldest entry by insertion from
/// an age queue (entries removed meanwhile are skipped there, by their insertion number):
/// a steady stream of new sources costs a few steps per entry, not a walk of 4,096.
#[derive(Debug, Default)]
pub struct NeighborCache {
    entries: HashMap<Ipv6Addr, Neighbor>,
    /// (address, insertion number), oldest first; may hold entries since removed.
    order: VecDeque<(Ipv6Addr, u64)>,
    next_gen: u64,
    /// Frames queued over all entries.
    queued: usize,
    due: Option<Instant>,
    due_active: Option<Instant>,
    /// What the latest frame sent and the latest confirmation found, so that the next ones to
    /// the same neighbour skip hashing its address ([`Recent`]).
    recent: Recent,
}

/// The cache's memory of its latest answers. A server sends every frame, and TCP confirms
/// reachability on every segment that acknowledges new data (RFC 4861 §7.3.1), to a few
/// neighbours: behind a router, one. Each took a SipHash of the address (~55 and ~80
/// instructions of a ~7,000-instruction request/response exchange, `dsperf conns`); these two
/// entries answer the repeats exactly, without one. Forgotten by every change they do not
/// follow themselves (an entry made, removed, learnt, aged, or sent to while STALE or past
/// its time).
#[derive(Debug, Default)]
struct Recent {
    /// A frame was sent to this address, REACHABLE with this link-layer address until this
    /// time (the entry's timer): a frame sent before then changes nothing and goes there.
    sent: Option<(Ipv6Addr, [u8; 6], Instant)>,
    /// This address was confirmed at this time: the same confirmation again would set what it
    /// set.
    confirmed: Option<(Ipv6Addr, Instant)>,
}

/// Lower the bound `b` to `t`.
fn lower(b: &mut Option<Instant>, t: Instant) {
    if b.is_none_or(|x| t < x) {
        *b = Some(t);
    }
}

/// Result of looking up a destination for an outgoing frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Send to this MAC now.
    Ready([u8; 6]),
    /// Queue the frame; maybe solicit.
    Pending(Option<NdAction>),
}

impl NeighborCache {
    /// Look `ip` up for sending at `now` (RFC 4861 §7.2.2, §7.3.3).
    pub fn lookup(&mut self, now: Instant, ip: Ipv6Addr) -> Lookup {
        if let Some(mac) = self.recently_sent(now, ip) {
            return Lookup::Ready(mac);
        }
        self.lookup_entry(now, ip)
    }

    /// [`Self::lookup`]'s work, without the shortcut.
    fn lookup_entry(&mut self, now: Instant, ip: Ipv6Addr) -> Lookup {
        match self.resolved_entry(now, ip) {
            Some(Some(mac)) => return Lookup::Ready(mac),
            Some(None) => return Lookup::Pending(None),
            None => {}
        }
        self.insert(ip, NeighborState::Incomplete, now + RETRANS_TIMER, 1);
        lower(&mut self.due, now + RETRANS_TIMER);
        lower(&mut self.due_active, now + RETRANS_TIMER);
        Lookup::Pending(Some(NdAction::SolicitMulticast(ip)))
    }

    /// [`Self::lookup`] for a frame that leaves now only if `ip` has a link-layer address: the
    /// same bookkeeping then, and no entry made or solicitation asked for otherwise.
    pub fn resolved(&mut self, now: Instant, ip: Ipv6Addr) -> Option<[u8; 6]> {
        self.recently_sent(now, ip)
            .or_else(|| self.resolved_entry(now, ip).flatten())
    }

    /// The link-layer address of the latest frame's neighbour, when a frame to `ip` at `now`
    /// goes there and changes nothing ([`Recent::sent`]).
    fn recently_sent(&self, now: Instant, ip: Ipv6Addr) -> Option<[u8; 6]> {
        match self.recent.sent {
            Some((a, mac, until)) if a == ip && now < until => Some(mac),
            _ => None,
        }
    }

    /// A frame goes to `ip` at `now`: its link-layer address if it has one, a STALE entry (or
    /// a REACHABLE one past its time) waiting DELAY_FIRST_PROBE_TIME for a confirmation before
    /// it is probed (RFC 4861 §7.3.3). `None` without an entry, `Some(None)` for one still
    /// being resolved.
    fn resolved_entry(&mut self, now: Instant, ip: Ipv6Addr) -> Option<Option<[u8; 6]>> {
        let n = self.entries.get_mut(&ip)?;
        let Some(mac) = n.mac else {
            return Some(None);
        };
        match n.state {
            NeighborState::Reachable if now < n.timer => {
                self.recent.sent = Some((ip, mac, n.timer));
            }
            NeighborState::Stale | NeighborState::Reachable => {
                self.recent = Recent::default();
                n.state = NeighborState::Delay;
                n.timer = now + DELAY_FIRST_PROBE_TIME;
                lower(&mut self.due, n.timer);
                lower(&mut self.due_active, n.timer);
            }
            _ => {}
        }
        Some(Some(mac))
    }

    /// A new entry for `ip` (not in the cache), making room first when the cache is full.
    fn insert(
        &mut self,
        ip: Ipv6Addr,
        state: NeighborState,
        timer: Instant,
        probes: u8,
    ) -> &mut Neighbor {
        self.recent = Recent::default();
        if self.entries.len() >= MAX_ENTRIES {
            self.evict();
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.order.push_back((ip, gen));
        self.compact();
        self.entries.entry(ip).or_insert(Neighbor {
            mac: None,
            state,
            timer,
            probes,
            queue: VecDeque::new(),
            gen,
        })
    }

    /// Remove the oldest entry that is not REACHABLE, passing over at most [`EVICT_SKIP`]
    /// REACHABLE ones (then the oldest whatever its state).
    fn evict(&mut self) {
        let mut skipped = 0;
        while let Some((ip, gen)) = self.order.pop_front() {
            let Some(n) = self.entries.get(&ip) else {
                continue;
            };
            if n.gen != gen {
                continue;
            }
            if n.state == NeighborState::Reachable && skipped < EVICT_SKIP {
                skipped += 1;
                self.order.push_back((ip, gen));
                continue;
            }
            if let Some(n) = self.entries.remove(&ip) {
                self.queued = self.queued.saturating_sub(n.queue.len());
            }
            return;
        }
    }

    /// Drop the age queue's records of removed entries once they outnumber the live ones
    /// (amortised: at most one pass per as many removals as there are entries).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(ip, g)| entries.get(ip).is_some_and(|n| n.gen == *g));
        }
    }

    /// Entries in the cache.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frames queued for unresolved neighbours, over all of them.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queue a frame for an unresolved neighbour. Returns false when the frame was dropped.
    pub fn enqueue(&mut self, ip: Ipv6Addr, frame: Vec<u8>) -> bool {
        if self.queued >= MAX_QUEUED_TOTAL {
            return false;
        }
        match self.entries.get_mut(&ip) {
            Some(n) if n.queue.len() < MAX_QUEUED => {
                n.queue.push_back(frame);
                self.queued += 1;
                true
            }
            _ => false,
        }
    }

    /// Learn a link-layer address. `solicited`/`override_` per RFC 4861 §7.2.5; `from_ns`
    /// for the source link-layer option of a solicitation (§7.2.3). Returns queued frames that
    /// can now go out, with the MAC to put in them.
    pub fn learn(
        &mut self,
        now: Instant,
        ip: Ipv6Addr,
        mac: [u8; 6],
        solicited: bool,
        override_: bool,
        from_ns: bool,
    ) -> Option<([u8; 6], VecDeque<Vec<u8>>)> {
        self.recent = Recent::default();
        if from_ns {
            let n = if self.entries.contains_key(&ip) {
                self.entries.get_mut(&ip)?
            } else {
                self.insert(ip, NeighborState::Stale, now, 0)
            };
            if n.mac != Some(mac) {
                n.mac = Some(mac);
                n.state = NeighborState::Stale;
                n.timer = now;
            }
            let (timer, q) = (n.timer, std::mem::take(&mut n.queue));
            lower(&mut self.due, timer);
            self.queued = self.queued.saturating_sub(q.len());
            return Some((mac, q));
        }
        let n = self.entries.get_mut(&ip)?;
        if n.state == NeighborState::Incomplete {
            n.mac = Some(mac);
            n.state = if solicited {
                NeighborState::Reachable
            } else {
                NeighborState::Stale
            };
            n.timer = now + REACHABLE_TIME;
            n.probes = 0;
            lower(&mut self.due, n.timer);
            if n.state != NeighborState::Stale {
                lower(&mut self.due_active, n.timer);
            }
            let q = std::mem::take(&mut n.queue);
            self.queued = self.queued.saturating_sub(q.len());
            return Some((mac, q));
        }
        let changed = n.mac != Some(mac);
        if !override_ && changed {
            if n.state == NeighborState::Reachable {
                n.state = NeighborState::Stale;
            }
            return None;
        }
        if override_ || !changed {
            n.mac = Some(mac);
            if solicited {
                n.state = NeighborState::Reachable;
                n.timer = now + REACHABLE_TIME;
                lower(&mut self.due_active, n.timer);
            } else if changed {
                n.state = NeighborState::Stale;
                n.timer = now;
            }
            lower(&mut self.due, n.timer);
            n.probes = 0;
        }
        None
    }

    /// Upper-layer reachability confirmation (RFC 4861 §7.3.1), e.g. TCP forward progress.
    pub fn confirm(&mut self, now: Instant, ip: Ipv6Addr) {
        if self.recent.confirmed != Some((ip, now)) {
            self.confirm_entry(now, ip);
        }
    }

    /// [`Self::confirm`]'s work, without the shortcut.
    fn confirm_entry(&mut self, now: Instant, ip: Ipv6Addr) {
        if let Some(n) = self.entries.get_mut(&ip) {
            if n.mac.is_some() {
                n.state = NeighborState::Reachable;
                n.timer = now + REACHABLE_TIME;
                n.probes = 0;
                lower(&mut self.due, n.timer);
                lower(&mut self.due_active, n.timer);
                self.recent.confirmed = Some((ip, now));
                if let Some((a, mac, _)) = self.recent.sent.filter(|s| s.0 == ip) {
                    // Still REACHABLE, until the new time.
                    self.recent.sent = Some((a, mac, n.timer));
                }
            }
        }
    }

    /// Timers. Returns solicitations to send and the number of queued frames dropped.
    pub fn poll(&mut self, now: Instant) -> (Vec<NdAction>, usize) {
        let mut actions = Vec::new();
        let mut dropped = 0;
        if self.due.is_none_or(|d| now < d) {
            return (actions, dropped);
        }
        self.recent = Recent::default();
        self.entries.retain(|ip, n| {
            if now < n.timer {
                return true;
            }
            match n.state {
                NeighborState::Incomplete => {
                    if n.probes >= MAX_SOLICIT {
                        dropped += n.queue.len();
                        return false;
                    }
                    n.probes += 1;
                    n.timer = now + RETRANS_TIMER;
                    actions.push(NdAction::SolicitMulticast(*ip));
                }
                NeighborState::Reachable => {
                    n.state = NeighborState::Stale;
                    n.timer = now + REACHABLE_TIME;
                }
                NeighborState::Stale => {
                    // Keep stale entries around a while; drop long-unused ones.
                    n.timer = now + REACHABLE_TIME * 10;
                    if n.probes > 0 {
                        dropped += n.queue.len();
                        return false;
                    }
                    n.probes = 1;
                }
                NeighborState::Delay => {
                    n.state = NeighborState::Probe;
                    n.probes = 1;
                    n.timer = now + RETRANS_TIMER;
                    if let Some(mac) = n.mac {
                        actions.push(NdAction::SolicitUnicast(*ip, mac));
                    }
                }
                NeighborState::Probe => {
                    if n.probes >= MAX_SOLICIT {
                        dropped += n.queue.len();
                        return false;
                    }
                    n.probes += 1;
                    n.timer = now + RETRANS_TIMER;
                    if let Some(mac) = n.mac {
                        actions.push(NdAction::SolicitUnicast(*ip, mac));
                    }
                }
            }
            true
        });
        self.queued = self.queued.saturating_sub(dropped);
        self.compact();
        // Exact again.
        self.due = self.entries.values().map(|n| n.timer).min();
        self.due_active = self
            .entries
            .values()
            .filter(|n| n.state != NeighborState::Stale)
            .map(|n| n.timer)
            .min();
        (actions, dropped)
    }

    /// The earliest timer of an entry not STALE (a STALE entry's timer only ages it out, and
    /// need not wake anyone); possibly earlier than that, never later.
    pub fn poll_at(&self) -> Option<Instant> {
        self.due_active
    }

    /// State of an entry (tests, diagnostics).
    pub fn state(&self, ip: &Ipv6Addr) -> Option<(NeighborState, Option<[u8; 6]>)> {
        self.entries.get(ip).map(|n| (n.state, n.mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_then_stale_then_probe() {
        let mut c = NeighborCache::default();
        let ip: Ipv6Addr = "fd00::1".parse().unwrap();
        let t0 = Instant::ZERO;
        assert_eq!(
            c.lookup(t0, ip),
            Lookup::Pending(Some(NdAction::SolicitMulticast(ip)))
        );
        assert!(c.enqueue(ip, vec![1, 2, 3]));
        let (mac, q) = c
            .learn(t0, ip, [2, 0, 0, 0, 0, 1], true, true, false)
            .unwrap();
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(q.len(), 1);
        assert_eq!(c.state(&ip).unwrap().0, NeighborState::Reachable);
        let t1 = t0 + REACHABLE_TIME;
        c.poll(t1);
        assert_eq!(c.state(&ip).unwrap().0, NeighborState::Stale);
        assert_eq!(c.lookup(t1, ip), Lookup::Ready([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.state(&ip).unwrap().0, NeighborState::Delay);
        let (a, _) = c.poll(t1 + DELAY_FIRST_PROBE_TIME);
        assert_eq!(a, vec![NdAction::SolicitUnicast(ip, [2, 0, 0, 0, 0, 1])]);
    }

    /// `n` addresses fd00::1, fd00::2, ...
    fn addrs(n: u16) -> Vec<Ipv6Addr> {
        (1..=n)
            .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))
            .collect()
    }

    /// The next of Marsaglia's xorshift64 numbers: operations picked at random, reproducibly.
    fn xorshift(x: &mut u64) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
    }

    /// The bounds that spare the walk stay bounds through any sequence of operations: never
    /// later than a timer, so a poll fires every timer due.
    #[test]
    fn the_timer_bounds_never_pass_a_timer() {
        let mut c = NeighborCache::default();
        let ips = addrs(8);
        let mut t = Instant::ZERO;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000 {
            xorshift(&mut x);
            let ip = ips[(x % 8) as usize];
            let mac = [2, 0, 0, 0, 0, (x >> 8) as u8 % 3];
            t += Duration::from_millis((x >> 16) % 700);
            match (x >> 32) % 5 {
                0 => {
                    let _ = c.lookup(t, ip);
                }
                1 => {
                    let _ = c.learn(t, ip, mac, x & 1 == 0, x & 2 == 0, x & 4 == 0);
                }
                2 => c.confirm(t, ip),
                _ => {
                    let _ = c.poll(t);
                    // Every timer that was due has fired (and been re-armed later or
                    // removed its entry), walk or no walk.
                    for n in c.entries.values() {
                        assert!(n.timer > t, "step {step}: a due timer did not fire");
                    }
                }
            }
            for n in c.entries.values() {
                assert!(c.due.is_some_and(|d| d <= n.timer), "step {step}");
                if n.state != NeighborState::Stale {
                    assert!(c.poll_at().is_some_and(|d| d <= n.timer), "step {step}");
                }
            }
        }
    }

    /// The shortcuts of [`Recent`] change nothing: a cache that takes them ends every step of
    /// a random sequence, full of sends to and confirmations of the same addresses at the same
    /// times, in the state of one that does the work every time, with the same answers.
    #[test]
    fn the_shortcuts_for_repeated_sends_and_confirmations_change_nothing() {
        let mut c = NeighborCache::default();
        let mut r = NeighborCache::default();
        let ips = addrs(3);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let (mut skipped, mut skipped_sends) = (0, 0);
        // The latest times, the newest first: mostly the same time, now and then a step past
        // the timers, and a quarter of the calls at one of the earlier times (the cache's
        // callers need not agree on the clock).
        let mut times = [Instant::ZERO; 4];
        for step in 0..20_000 {
            xorshift(&mut x);
            let ip = ips[(x % 3) as usize];
            let mac = [2, 0, 0, 0, 0, (x >> 8) as u8 % 2];
            if ((x >> 16) & 7) == 0 {
                times.rotate_right(1);
                times[0] = times[1] + Duration::from_millis((x >> 20) % 40_000);
            }
            let t = if ((x >> 44) & 3) == 0 {
                times[((x >> 46) & 3) as usize]
            } else {
                times[0]
            };
            match (x >> 32) % 6 {
                0 => {
                    skipped_sends += usize::from(c.recently_sent(t, ip).is_some());
                    assert_eq!(c.lookup(t, ip), r.lookup_entry(t, ip), "step {step}");
                }
                1 => {
                    skipped_sends += usize::from(c.recently_sent(t, ip).is_some());
                    let rr = r.resolved_entry(t, ip).flatten();
                    assert_eq!(c.resolved(t, ip), rr, "step {step}");
                }
                2 => {
                    let learn = |c: &mut NeighborCache| {
                        c.learn(t, ip, mac, x & 1 == 0, x & 2 == 0, x & 4 == 0)
                            .map(|(m, q)| (m, q.len()))
                    };
                    assert_eq!(learn(&mut c), learn(&mut r), "step {step}");
                }
                3 => {
                    // The same actions, in the order of each cache's own hash.
                    let poll = |c: &mut NeighborCache| {
                        let (mut a, d) = c.poll(t);
                        a.sort_by_key(|a| format!("{a:?}"));
                        (a, d)
                    };
                    assert_eq!(poll(&mut c), poll(&mut r), "step {step}");
                }
                _ => {
                    skipped += usize::from(c.recent.confirmed == Some((ip, t)));
                    c.confirm(t, ip);
                    r.confirm_entry(t, ip);
                }
            }
            for ip in &ips {
                let (a, b) = (c.entries.get(ip), r.entries.get(ip));
                let view = |n: Option<&Neighbor>| n.map(|n| (n.state, n.mac, n.timer, n.probes));
                assert_eq!(view(a), view(b), "step {step}");
            }
            assert_eq!((c.due, c.due_active), (r.due, r.due_active), "step {step}");
        }
        assert!(skipped > 500, "the confirmation skipped {skipped} times");
        assert!(
            skipped_sends > 500,
            "the send's lookup skipped {skipped_sends} times"
        );
    }

    #[test]
    fn unresolved_gives_up_after_three_solicits() {
        let mut c = NeighborCache::default();
        let ip: Ipv6Addr = "fd00::9".parse().unwrap();
        let mut t = Instant::ZERO;
        let _ = c.lookup(t, ip);
        c.enqueue(ip, vec![0]);
        let mut sent = 1;
        let mut dropped = 0;
        for _ in 0..5 {
            t += RETRANS_TIMER;
            let (a, d) = c.poll(t);
            sent += a.len();
            dropped += d;
        }
        assert_eq!(sent, 3);
        assert_eq!(dropped, 1);
        assert!(c.state(&ip).is_none());
    }

    /// Hostile input: solicitations from ever new (made-up) source addresses, each with a
    /// link-layer option, create STALE entries (RFC 4861 §7.2.3); the cache stays within
    /// MAX_ENTRIES, and a neighbour in use (REACHABLE) outlives the flood.
    #[test]
    fn a_flood_of_solicitations_stays_bounded() {
        let mut c = NeighborCache::default();
        let t = Instant::ZERO;
        let peer: Ipv6Addr = "fd00::1".parse().unwrap();
        let _ = c.lookup(t, peer);
        assert!(c.learn(t, peer, [2; 6], true, false, false).is_some());
        assert_eq!(c.state(&peer).map(|s| s.0), Some(NeighborState::Reachable));
        for i in 0..3 * MAX_ENTRIES as u128 {
            let src = Ipv6Addr::from((0xfd01u128 << 112) | i);
            let _ = c.learn(t, src, [3; 6], false, true, true);
            assert!(c.len() <= MAX_ENTRIES);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        assert_eq!(
            c.state(&peer),
            Some((NeighborState::Reachable, Some([2; 6])))
        );
        // The age queue holds no more than a bounded amount of removed entries' records.
        assert!(c.order.len() <= 2 * MAX_ENTRIES + 64);
        // The oldest flood entries went first: the newest are there.
        let newest = Ipv6Addr::from((0xfd01u128 << 112) | (3 * MAX_ENTRIES as u128 - 1));
        assert!(c.state(&newest).is_some());
        let oldest = Ipv6Addr::from(0xfd01u128 << 112);
        assert!(c.state(&oldest).is_none());
    }

    /// Frames queued for unresolved neighbours are bounded over all of them, and counted out
    /// again when they leave (resolved) or are dropped (resolution failed, eviction).
    #[test]
    fn frames_queued_for_resolution_are_bounded_in_total() {
        let mut c = NeighborCache::default();
        let mut t = Instant::ZERO;
        let mut accepted = 0;
        for i in 0..MAX_QUEUED_TOTAL / MAX_QUEUED + 8 {
            let ip = Ipv6Addr::from((0xfd02u128 << 112) | i as u128);
            let _ = c.lookup(t, ip);
            for _ in 0..MAX_QUEUED + 1 {
                accepted += usize::from(c.enqueue(ip, vec![0; 64]));
            }
        }
        assert_eq!(accepted, MAX_QUEUED_TOTAL);
        assert_eq!(c.queued(), MAX_QUEUED_TOTAL);
        // One neighbour answers: its frames leave the queue.
        let first = Ipv6Addr::from(0xfd02u128 << 112);
        let (_, q) = c.learn(t, first, [4; 6], true, false, false).unwrap();
        assert_eq!(q.len(), MAX_QUEUED);
        assert_eq!(c.queued(), MAX_QUEUED_TOTAL - MAX_QUEUED);
        // The rest never answer: their frames are dropped, and the count comes back to 0.
        let mut dropped = 0;
        for _ in 0..MAX_SOLICIT {
            t += RETRANS_TIMER;
            dropped += c.poll(t).1;
        }
        assert_eq!(dropped, MAX_QUEUED_TOTAL - MAX_QUEUED);
        assert_eq!(c.queued(), 0);
    }
}
