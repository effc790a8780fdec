//! The connection table: a slab of connection control blocks (RFC 9293 §3.3.1's TCBs) with
//! generation-checked handles, the demultiplexing map from the 4-tuple (RFC 9293 §3.10.7's
//! "connection identified by the local and remote sockets"), one timer heap, the lists of
//! connections with output to send ("dirty") and with news for the application ("ready"), and
//! the frozen/held map of connections that live, or will live, on another node.
//!
//! Generic over the entry so that its bookkeeping is tested without TCP: the interface stores
//! [`crate::tcp::tcb::Tcb`]s.

use super::timer_wheel::TimerWheel;
use super::TcpHandle;
use crate::time::Instant;
use crate::Packets;
use hashbrown::HashTable;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv6Addr, SocketAddrV6};

/// Packets held per frozen connection at most (about a 1.4 MB window of full segments).
pub(super) const MAX_HELD: usize = 1024;

/// (local addr, local port, remote addr, remote port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnKey(
    pub(super) Ipv6Addr,
    pub(super) u16,
    pub(super) Ipv6Addr,
    pub(super) u16,
);

impl ConnKey {
    pub(super) fn of(local: &SocketAddrV6, remote: &SocketAddrV6) -> Self {
        ConnKey(*local.ip(), local.port(), *remote.ip(), remote.port())
    }

    /// The endpoints (local, remote), as [`ConnKey::of`] took them (without flow information
    /// or scope id, which nothing uses).
    fn sockets(&self) -> (SocketAddrV6, SocketAddrV6) {
        (
            SocketAddrV6::new(self.0, self.1, 0, 0),
            SocketAddrV6::new(self.2, self.3, 0, 0),
        )
    }

    /// The remote address.
    fn remote_ip(&self) -> Ipv6Addr {
        self.2
    }
}

/// The key's 36 bytes in one write: the derived `Hash` made six (each address's length, its
/// bytes, each port), and SipHash's cost is mostly per write (~350 instructions a key against
/// ~100; every received segment hashes its key once).
impl std::hash::Hash for ConnKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 36];
        b[..16].copy_from_slice(&self.0.octets());
        b[16..18].copy_from_slice(&self.1.to_be_bytes());
        b[18..34].copy_from_slice(&self.2.octets());
        b[34..].copy_from_slice(&self.3.to_be_bytes());
        state.write(&b);
    }
}

/// What a free slot holds in place of an entry: something that owns next to nothing (for a
/// control block, [`crate::tcp::tcb::Tcb::vacant`]).
///
/// Why not `Option<T>`: finding whether an `Option`'s slot is occupied reads its tag, which
/// rustc puts in a niche of its choosing (it was a tag inside the control block's hot lines).
/// [`ConnTable::prefetch`] would then wait for that line before it could name the entry's
/// other lines, a wait of its own per connection of a batch; with the entry always there, the
/// lines are named from the slot's address alone, and occupancy (`Slot::live`) shares the
/// key's line, which the lookup reads anyway.
pub(super) trait Vacant {
    /// The placeholder.
    fn vacant() -> Self;
}

impl Vacant for crate::tcp::tcb::Tcb {
    fn vacant() -> Self {
        crate::tcp::tcb::Tcb::vacant()
    }
}

/// A slot, aligned to a cache line and with its entry first: the key, which every packet's
/// demultiplexing reads, then shares its lines with the end of the entry, where
/// [`crate::tcp::tcb::Tcb`] keeps the fields every segment reads (the same miss serves both).
#[derive(Debug)]
#[repr(C, align(64))]
struct Slot<T> {
    /// A connection's when `live`, else [`Vacant::vacant`].
    entry: T,
    gen: u32,
    key: ConnKey,
    /// Whether `entry` is a connection's.
    live: bool,
    /// The application gave up the handle; free the slot when the connection is closed.
    released: bool,
    in_dirty: bool,
    in_ready: bool,
}

impl<T> Slot<T> {
    fn entry(&self) -> Option<&T> {
        self.live.then_some(&self.entry)
    }

    fn entry_mut(&mut self) -> Option<&mut T> {
        self.live.then_some(&mut self.entry)
    }
}

/// A slot's timer: the one heap entry `(at, idx)` that counts (others for the slot are stale:
/// re-armed earlier, or the slot freed), and whether the connection still wants its visit then.
/// Disarming keeps the entry, so that arming again later needs no new one (a connection that
/// re-arms per segment would otherwise fill the heap with stale entries), and skips the visit.
#[derive(Debug, Clone, Copy, Default)]
struct Armed {
    at: Option<Instant>,
    visit: bool,
}

/// A connection that lives elsewhere (frozen here, or reserved for a thaw to come): the
/// packets that arrived for it since, held for the node that runs it.
#[derive(Debug)]
struct Frozen {
    #[allow(dead_code)]
    since: Instant,
    held: Packets,
}

/// What became of a packet offered to [`ConnTable::hold_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldOutcome {
    /// No frozen connection has this key.
    NotFrozen,
    /// Held.
    Held,
    /// Frozen, but its [`MAX_HELD`] packets are already held: dropped.
    Full,
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct ConnTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// The demultiplexer: slot numbers only, found by their slot's key. With the keys in the
    /// slots the index is 4 bytes a connection (0.5 MB at 100,000, where a map of keys was
    /// 5 MB), so that finding a connection among many costs the one cache miss of its slot
    /// rather than three (`dsperf conns`).
    demux: HashTable<u32>,
    /// SipHash with this table's random keys: the 4-tuples are chosen by the network.
    hasher: RandomState,
    frozen: HashMap<ConnKey, Frozen>,
    /// Each slot's timer (by slot index), kept apart from the slots so that skipping a stale
    /// heap entry reads this dense array, not a cold connection (at 100,000 connections a
    /// cache miss each).
    armed: Vec<Armed>,
    timers: TimerWheel,
    dirty: Vec<u32>,
    ready: Vec<u32>,
    /// A key and its hash, computed by [`ConnTable::hash`] for the packet being processed
    /// ([`ConnTable::set_hint`]): its lookup then does not hash the key again.
    hint: Option<(ConnKey, u64)>,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        ConnTable {
            slots: Vec::new(),
            free: Vec::new(),
            demux: HashTable::new(),
            hasher: RandomState::new(),
            frozen: HashMap::new(),
            armed: Vec::new(),
            timers: TimerWheel::default(),
            dirty: Vec::new(),
            ready: Vec::new(),
            hint: None,
        }
    }
}

impl<T: Vacant> ConnTable<T> {
    // ------------------------------------------------------------ slab and demux

    /// Store a connection under `key` (reusing a freed slot first); returns its index.
    pub(super) fn insert(&mut self, key: ConnKey, entry: T) -> u32 {
        let idx = match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i as usize];
                s.key = key;
                s.entry = entry;
                s.live = true;
                s.released = false;
                self.armed[i as usize] = Armed::default();
                i
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    key,
                    entry,
                    live: true,
                    released: false,
                    in_dirty: false,
                    in_ready: false,
                });
                self.armed.push(Armed::default());
                (self.slots.len() - 1) as u32
            }
        };
        let hash = self.hasher.hash_one(key);
        let (slots, hasher) = (&self.slots, &self.hasher);
        match self.demux.entry(
            hash,
            |&i| slots[i as usize].key == key,
            |&i| hasher.hash_one(slots[i as usize].key),
        ) {
            // A connection still listed under the key gives it up to the new one.
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = idx,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(idx);
            }
        }
        idx
    }

    /// Take the entry out and free its slot: handles to it go stale, its key no longer
    /// demultiplexes to it.
    pub(super) fn remove(&mut self, idx: u32) -> Option<T> {
        let slot = self.slots.get_mut(idx as usize)?;
        if !slot.live {
            return None;
        }
        slot.live = false;
        let entry = std::mem::replace(&mut slot.entry, T::vacant());
        let key = slot.key;
        self.unlink(idx, &key);
        let slot = &mut self.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.released = false;
        self.armed[idx as usize] = Armed::default();
        self.free.push(idx);
        Some(entry)
    }

    /// Stop demultiplexing `key` to `idx` (the entry stays, e.g. a closed connection whose
    /// handle the application still holds).
    fn unlink(&mut self, idx: u32, key: &ConnKey) {
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.demux.find_entry(hash, |&i| i == idx) {
            e.remove();
        }
    }

    /// As [`Self::unlink`] with the key the entry was inserted under.
    pub(super) fn unlink_slot(&mut self, idx: u32) {
        if let Some(key) = self.slots.get(idx as usize).map(|s| s.key) {
            self.unlink(idx, &key);
        }
    }

    /// The connection `key` demultiplexes to.
    pub(super) fn lookup(&self, key: &ConnKey) -> Option<u32> {
        let hash = match self.hint {
            Some((k, h)) if k == *key => {
                debug_assert_eq!(h, self.hasher.hash_one(key), "a hint's hash is its key's");
                h
            }
            _ => self.hasher.hash_one(key),
        };
        let slots = &self.slots;
        self.demux
            .find(hash, |&i| slots[i as usize].key == *key)
            .copied()
    }

    /// The demultiplexer's hash of `key`, for [`ConnTable::prefetch`] and
    /// [`ConnTable::set_hint`].
    pub(super) fn hash(&self, key: &ConnKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Ask for the cache lines of the connection a key of hash `hash` demultiplexes to,
    /// without waiting for them: its slot's key, its timer's entry (which the segment
    /// re-arms), and the lines of the entry `warm` names; returns the slot the index names,
    /// for [`ConnTable::warm`]. Nothing of the slot is read: its lines are named from its
    /// address (a free slot's placeholder, [`Vacant`], is as good to name).
    ///
    /// The index's first candidate for the hash is taken without comparing its key (the
    /// comparison would wait for the slot's line): a wrong one, rare (7 bits of hash match),
    /// costs needless prefetches only, and the right one behind it is not looked for. The
    /// index's own lines are waited for (0.5 MB at 100,000 connections: mostly cached); a
    /// caller with several keys hashes them all first, so that these probes, a few
    /// instructions each, have their waits in flight together.
    pub(super) fn prefetch(&self, hash: u64, warm: impl Fn(&T)) -> Option<u32> {
        let (slots, armed) = (&self.slots, &self.armed);
        let first = *self.demux.find(hash, |_| true)?;
        if let Some(s) = slots.get(first as usize) {
            crate::prefetch::prefetch(&s.key);
            warm(&s.entry);
        }
        if let Some(a) = armed.get(first as usize) {
            crate::prefetch::prefetch(a);
        }
        Some(first)
    }

    /// Ask for the lines `warm` names from what it reads of slot `idx`'s entry (or
    /// placeholder), without waiting for them: `warm` waits for the lines it reads, so a
    /// caller warming several connections calls this for all of them after
    /// [`ConnTable::prefetch`] has asked for those lines (little work each), so that the
    /// waits overlap.
    pub(super) fn warm(&self, idx: u32, warm: impl Fn(&T)) {
        if let Some(s) = self.slots.get(idx as usize) {
            warm(&s.entry);
        }
    }

    /// The key (and its hash, from [`ConnTable::hash`]) of the packet about to be
    /// processed, or `None` after it: [`ConnTable::lookup`] of that key uses the hash.
    pub(super) fn set_hint(&mut self, hint: Option<(ConnKey, u64)>) {
        self.hint = hint;
    }

    /// Whether a live connection, or a frozen one, uses `key`.
    pub(super) fn in_use(&self, key: &ConnKey) -> bool {
        self.lookup(key).is_some() || self.frozen.contains_key(key)
    }

    /// Live connections (those the demultiplexer knows).
    pub(super) fn len(&self) -> usize {
        self.demux.len()
    }

    /// The live connections.
    pub(super) fn live(&self) -> impl Iterator<Item = &T> + '_ {
        self.demux.iter().filter_map(|i| self.get(*i))
    }

    /// Indices of the live connections to `remote`.
    pub(super) fn to_remote(&self, remote: Ipv6Addr) -> Vec<u32> {
        self.demux
            .iter()
            .copied()
            .filter(|&i| self.slots[i as usize].key.remote_ip() == remote)
            .collect()
    }

    /// The endpoints slot `idx` is demultiplexed by, (local, remote): the control block's own
    /// copy is cold, this one shares a line with the hot end of the entry.
    pub(super) fn endpoints(&self, idx: u32) -> Option<(SocketAddrV6, SocketAddrV6)> {
        let s = self.slots.get(idx as usize)?;
        s.live.then(|| s.key.sockets())
    }

    /// The entry at `idx`, released or not.
    pub(super) fn get(&self, idx: u32) -> Option<&T> {
        self.slots.get(idx as usize)?.entry()
    }

    /// The entry at `idx`, released or not.
    pub(super) fn get_mut(&mut self, idx: u32) -> Option<&mut T> {
        self.slots.get_mut(idx as usize)?.entry_mut()
    }

    /// The entry a handle names, if the handle is current and not released.
    pub(super) fn by_handle(&self, h: TcpHandle) -> Option<&T> {
        let s = self.slots.get(h.idx as usize)?;
        if s.gen != h.gen || s.released {
            return None;
        }
        s.entry()
    }

    /// As [`Self::by_handle`], mutably.
    pub(super) fn by_handle_mut(&mut self, h: TcpHandle) -> Option<&mut T> {
        let s = self.slots.get_mut(h.idx as usize)?;
        if s.gen != h.gen || s.released {
            return None;
        }
        s.entry_mut()
    }

    /// The current handle of the slot at `idx`.
    pub(super) fn handle(&self, idx: u32) -> TcpHandle {
        TcpHandle {
            idx,
            gen: self.slots[idx as usize].gen,
        }
    }

    /// The application gave the handle up.
    pub(super) fn release(&mut self, idx: u32) {
        if let Some(s) = self.slots.get_mut(idx as usize) {
            s.released = true;
        }
    }

    /// Whether the application gave the handle up.
    pub(super) fn is_released(&self, idx: u32) -> bool {
        self.slots.get(idx as usize).is_some_and(|s| s.released)
    }

    // ------------------------------------------------------------ timers

    /// Arm the timer of `idx` at `at`, unless it is already armed earlier; `None` disarms it.
    /// A timer armed later stays in the heap and is skipped when it comes up
    /// ([`Self::next_due`]), and so is a disarmed one: the connection is not visited for it.
    pub(super) fn arm(&mut self, idx: u32, at: Option<Instant>) {
        if self.slots.get(idx as usize).is_none_or(|s| !s.live) {
            return;
        }
        let armed = &mut self.armed[idx as usize];
        match at {
            Some(t) if armed.at.is_none_or(|a| t < a) => {
                *armed = Armed {
                    at: Some(t),
                    visit: true,
                };
                self.timers.push(t, idx);
            }
            Some(_) => armed.visit = true,
            None => armed.visit = false,
        }
    }

    /// The earliest timer's instant (possibly of a timer since superseded).
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.earliest()
    }

    /// The next connection whose timer is due at `now`, disarmed; stale heap entries (freed
    /// slot, re-armed earlier, disarmed) are dropped on the way.
    pub(super) fn next_due(&mut self, now: Instant) -> Option<u32> {
        // An entry that no longer counts, or whose connection no longer wants the visit, is
        // dropped when its millisecond comes, without entering the exact order (the slot is
        // disarmed, so that arming it again adds an entry).
        fn keep(armed: &mut [Armed], t: Instant, idx: u32) -> bool {
            match armed.get_mut(idx as usize) {
                Some(a) if a.at == Some(t) && a.visit => true,
                Some(a) if a.at == Some(t) => {
                    *a = Armed::default();
                    false
                }
                _ => false,
            }
        }
        while let Some((t, idx)) = self.timers.pop_due(now, &mut self.armed[..], keep) {
            let Some(armed) = self.armed.get_mut(idx as usize) else {
                continue;
            };
            if armed.at != Some(t) {
                continue;
            }
            let visit = armed.visit;
            *armed = Armed::default();
            if visit {
                return Some(idx);
            }
        }
        None
    }

    // ------------------------------------------------------------ dirty and ready lists

    /// `idx` has output to send (listed once however often it is marked).
    pub(super) fn mark_dirty(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if !slot.in_dirty {
            slot.in_dirty = true;
            self.dirty.push(idx);
        }
    }

    /// Whether any connection has output to send.
    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The dirty list, emptied; call [`Self::start_drain`] for each index before draining it
    /// and give the list back with [`Self::recycle_dirty`].
    pub(super) fn take_dirty(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dirty)
    }

    /// `idx` leaves the dirty list (it may be marked again while drained). Returns whether it
    /// still holds a connection.
    pub(super) fn start_drain(&mut self, idx: u32) -> bool {
        let slot = &mut self.slots[idx as usize];
        slot.in_dirty = false;
        slot.live
    }

    /// Reuse the allocation of a drained dirty list.
    pub(super) fn recycle_dirty(&mut self, mut list: Vec<u32>) {
        if self.dirty.is_empty() {
            list.clear();
            self.dirty = list;
        }
    }

    /// `idx` saw a network event the application should look at (not listed when released).
    pub(super) fn mark_ready(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if !slot.in_ready && !slot.released {
            slot.in_ready = true;
            self.ready.push(idx);
        }
    }

    /// Append the handles of the ready connections to `out` and empty the list.
    pub(super) fn take_ready(&mut self, out: &mut Vec<TcpHandle>) {
        for idx in self.ready.drain(..) {
            let slot = &mut self.slots[idx as usize];
            slot.in_ready = false;
            if slot.live && !slot.released {
                out.push(TcpHandle { idx, gen: slot.gen });
            }
        }
    }

    // ------------------------------------------------------------ frozen and held

    /// `key` was frozen here at `now`: hold its packets from now on (a fresh, empty hold).
    pub(super) fn freeze(&mut self, key: ConnKey, now: Instant) {
        self.frozen.insert(
            key,
            Frozen {
                since: now,
                held: Packets::new(),
            },
        );
    }

    /// Hold `key`'s packets from now on; a hold already in place is kept with its packets.
    pub(super) fn hold(&mut self, key: ConnKey, now: Instant) {
        self.frozen.entry(key).or_insert_with(|| Frozen {
            since: now,
            held: Packets::new(),
        });
    }

    /// Offer a packet of `len` bytes for `key`; `fill` writes it, in the held packets'
    /// storage, only when it is kept.
    pub(super) fn hold_packet(
        &mut self,
        key: &ConnKey,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> HoldOutcome {
        match self.frozen.get_mut(key) {
            None => HoldOutcome::NotFrozen,
            Some(f) if f.held.len() >= MAX_HELD => HoldOutcome::Full,
            Some(f) => {
                f.held.push_with(len, fill);
                HoldOutcome::Held
            }
        }
    }

    /// The packets held for `key` so far; the hold stays.
    pub(super) fn take_held(&mut self, key: &ConnKey) -> Packets {
        self.frozen
            .get_mut(key)
            .map(|f| std::mem::take(&mut f.held))
            .unwrap_or_default()
    }

    /// End the hold of `key`; returns the packets still held.
    pub(super) fn forget(&mut self, key: &ConnKey) -> Packets {
        self.frozen.remove(key).map(|f| f.held).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a request/response segment reads of its connection (the fields valgrind's lackey
    /// saw read per exchange in `dsperf conns`, with the key the demultiplexer compares) lies
    /// in 8 cache lines of the slot's 11 (9 until the endpoints and the pacing timer left the
    /// hot part, 2026-12-04). The layout is mostly fixed by hand (`Tcb`, `Cc` and `HyStart`
    /// are `repr(C)`; the sizes of std's types and our other fields' are still rustc's), so
    /// this fails when a change moves a field read per segment out of these lines or adds one.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_segment_reads_eight_lines_of_its_slot() {
        use crate::tcp::tcb::Tcb;
        use std::mem::{align_of, offset_of, size_of};
        fn size<T>(_: impl Fn(&Tcb) -> &T) -> usize {
            size_of::<T>()
        }
        macro_rules! field {
            ($($f:ident).+) => {
                (stringify!($($f).+), offset_of!(Tcb, $($f).+), size(|t: &Tcb| &t.$($f).+))
            };
        }
        assert_eq!(size_of::<Slot<Tcb>>(), 11 * 64);
        assert_eq!(align_of::<Slot<Tcb>>(), 64);
        assert_eq!(offset_of!(Slot<Tcb>, entry), 0);
        let hot = [
            field!(snd_buf),
            field!(rcv_buf),
            field!(ooo),
            field!(sacked),
            field!(cfg),
            field!(timed),
            field!(t_rto),
            field!(t_delack),
            field!(t_persist),
            field!(t_keepalive),
            field!(t_close),
            field!(t_tlp),
            field!(last_data_in),
            field!(ts_recent_at),
            field!(pace),
            field!(snd_una),
            field!(snd_nxt),
            field!(snd_max),
            field!(snd_sml),
            field!(snd_wnd),
            field!(snd_wl1),
            field!(snd_wl2),
            field!(max_snd_wnd),
            field!(snd_buf_seq),
            field!(rcv_nxt),
            field!(rcv_adv),
            field!(last_ack_sent),
            field!(snd_mss),
            field!(ts_recent),
            field!(ts_offset),
            field!(srtt),
            field!(rttvar),
            field!(rto),
            field!(backoff),
            field!(dupacks),
            field!(limited_tx),
            field!(persist_backoff),
            field!(ka_probes),
            field!(delack_segs),
            field!(retries),
            field!(recovery),
            field!(rxt_probe),
            field!(rst_due_for_ack),
            field!(listener),
            field!(ooo_fin),
            field!(dsack),
            field!(events),
            field!(state),
            field!(fin_queued),
            field!(fin_rcvd),
            field!(ws_ok),
            field!(snd_wscale),
            field!(rcv_wscale),
            field!(ts_ok),
            field!(ts_recent_valid),
            field!(sack_ok),
            field!(rtt_inherited),
            field!(rexmit_now),
            field!(ka_probe_due),
            field!(drain_probe_owed),
            field!(drain_probed),
            field!(tlp_out),
            field!(tlp_due),
            field!(probe_due),
            field!(ack_now),
            field!(ack_pushed),
            field!(interactive),
            field!(rst_due),
            field!(error),
            field!(cc.cwnd),
            field!(cc.ssthresh),
            field!(cc.hystart),
            ("slot key", offset_of!(Slot<Tcb>, key), size_of::<ConnKey>()),
            ("slot generation", offset_of!(Slot<Tcb>, gen), 4),
            ("slot live", offset_of!(Slot<Tcb>, live), 1),
        ];
        let mut lines = std::collections::BTreeSet::new();
        for (name, at, len) in hot {
            assert!(len > 0, "{name}");
            lines.extend(at / 64..=(at + len - 1) / 64);
        }
        assert!(lines.len() <= 8, "hot fields span lines {lines:?}");
        // What `Tcb::prefetch_hot` asks for, with the slot's key, covers every one of them.
        let mut warmed = std::collections::BTreeSet::from([offset_of!(Slot<Tcb>, key) / 64]);
        macro_rules! lines_of {
            ($($($f:ident).+),+) => { $(warmed.insert(offset_of!(Tcb, $($f).+) / 64);)+ };
        }
        crate::tcp::tcb::hot_line_fields!(lines_of);
        assert!(
            lines.is_subset(&warmed),
            "hot lines {lines:?}, prefetched {warmed:?}"
        );
    }

    impl Vacant for &str {
        fn vacant() -> Self {
            ""
        }
    }

    impl Vacant for () {
        fn vacant() -> Self {}
    }

    impl Vacant for u32 {
        fn vacant() -> Self {
            0
        }
    }

    fn key(port: u16) -> ConnKey {
        ConnKey(
            "fd00::1".parse().unwrap(),
            port,
            "fd00::2".parse().unwrap(),
            80,
        )
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    #[test]
    fn insert_lookup_remove() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), "a");
        let b = c.insert(key(2), "b");
        assert_ne!(a, b);
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(&key(1)), Some(a));
        assert_eq!(c.lookup(&key(2)), Some(b));
        assert_eq!(c.lookup(&key(3)), None);
        assert_eq!(c.get(a), Some(&"a"));
        let h = c.handle(a);
        assert_eq!(c.by_handle(h), Some(&"a"));
        assert_eq!(c.remove(a), Some("a"));
        assert_eq!(c.lookup(&key(1)), None);
        assert_eq!(c.len(), 1);
        assert_eq!(c.by_handle(h), None, "a removed entry's handle is stale");
        assert!(c.to_remote("fd00::2".parse().unwrap()) == vec![b]);
    }

    #[test]
    fn slot_reuse_bumps_the_generation() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), 1u32);
        let old = c.handle(a);
        c.remove(a);
        let again = c.insert(key(9), 2u32);
        assert_eq!(again, a, "the freed slot is reused");
        let new = c.handle(again);
        assert_ne!(old, new);
        assert_eq!(c.by_handle(old), None);
        assert_eq!(c.by_handle(new), Some(&2));
        assert_eq!(c.lookup(&key(1)), None);
        assert_eq!(c.lookup(&key(9)), Some(a));
    }

    /// A freed slot holds the placeholder, which nothing hands out as a connection; the
    /// look-ahead may still name its lines. A control block's placeholder is CLOSED and holds
    /// no buffer storage.
    #[test]
    fn a_freed_slot_holds_a_placeholder_that_is_nobodys() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), 7u32);
        let h = c.handle(a);
        let hash = c.hash(&key(1));
        assert_eq!(c.prefetch(hash, |_| {}), Some(a));
        assert_eq!(
            c.remove(a),
            Some(7),
            "the connection's entry is handed back"
        );
        assert_eq!(c.slots[a as usize].entry, 0, "the placeholder stands in");
        assert_eq!(c.remove(a), None, "nor is the placeholder handed out");
        assert_eq!(
            (c.get(a), c.by_handle(h), c.endpoints(a)),
            (None, None, None)
        );
        assert!(!c.start_drain(a));
        c.arm(a, Some(t(5)));
        assert_eq!(c.armed[a as usize].at, None, "a free slot is not armed");
        assert_eq!(c.prefetch(hash, |_| {}), None, "nor demultiplexed");
        c.warm(a, |e| assert_eq!(*e, 0));
        c.mark_ready(a);
        let mut out = Vec::new();
        c.take_ready(&mut out);
        assert!(out.is_empty());
        assert_eq!(c.live().count(), 0);

        let t = crate::tcp::tcb::Tcb::vacant();
        assert_eq!(t.state(), crate::tcp::TcpState::Closed);
        assert_eq!(t.rcv_buf.capacity() + t.snd_buf.capacity(), 0);
        // What the look-ahead asks of a placeholder, as of a connection.
        t.prefetch_hot();
        t.prefetch_data();
    }

    #[test]
    fn released_entries_are_hidden_from_handles_and_ready() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), ());
        let h = c.handle(a);
        c.release(a);
        assert!(c.is_released(a));
        assert_eq!(c.by_handle(h), None);
        assert_eq!(c.get(a), Some(&()), "the table still holds it");
        c.mark_ready(a);
        let mut out = Vec::new();
        c.take_ready(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn unlink_keeps_the_entry() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), ());
        c.unlink_slot(a);
        assert_eq!(c.lookup(&key(1)), None);
        assert_eq!(c.get(a), Some(&()));
        // A newer connection with the same key is not unlinked by the old one's removal.
        let b = c.insert(key(1), ());
        c.remove(a);
        assert_eq!(c.lookup(&key(1)), Some(b));
    }

    #[test]
    fn timers_fire_in_order_and_stale_ones_are_skipped() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), ());
        let b = c.insert(key(2), ());
        let d = c.insert(key(3), ());
        c.arm(a, Some(t(30)));
        c.arm(b, Some(t(10)));
        c.arm(d, Some(t(20)));
        // Re-arming later keeps the earlier timer; earlier supersedes it.
        c.arm(b, Some(t(40)));
        c.arm(a, Some(t(5)));
        assert_eq!(c.next_timer(), Some(t(5)));
        assert_eq!(c.next_due(t(4)), None);
        let mut fired = Vec::new();
        while let Some(i) = c.next_due(t(100)) {
            fired.push(i);
        }
        assert_eq!(
            fired,
            vec![a, b, d],
            "a at 5, b at 10, d at 20; a's 30 is stale"
        );
        // A freed slot's timer never fires.
        c.arm(d, Some(t(200)));
        c.remove(d);
        assert_eq!(c.next_due(t(300)), None);
        // Disarmed after firing: arming again works.
        c.arm(a, Some(t(400)));
        assert_eq!(c.next_due(t(400)), Some(a));
        // Disarmed before its time: it never fires, and arming later than the stale entry
        // fires at the new time only.
        c.arm(a, Some(t(500)));
        c.arm(a, None);
        assert_eq!(c.next_due(t(550)), None);
        c.arm(a, Some(t(600)));
        assert_eq!(c.next_due(t(599)), None);
        assert_eq!(c.next_due(t(600)), Some(a));
        // A freed slot reused by a new connection: the old connection's timer does not fire
        // the new one early.
        c.arm(b, Some(t(700)));
        c.remove(b);
        let e = c.insert(key(4), ());
        assert_eq!(e, b, "the freed slot is reused");
        c.arm(e, Some(t(800)));
        assert_eq!(c.next_due(t(750)), None);
        assert_eq!(c.next_due(t(800)), Some(e));
        // Disarming and arming again later, as a connection does per segment, adds no heap
        // entry: the one it has fires (early, and the connection re-arms).
        c.arm(e, Some(t(900)));
        let entries = c.timers.len();
        for k in 0..100 {
            c.arm(e, None);
            c.arm(e, Some(t(1000 + k)));
        }
        assert_eq!(c.timers.len(), entries);
        assert_eq!(c.next_due(t(900)), Some(e));
    }

    #[test]
    fn dirty_list_has_each_connection_once() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), ());
        let b = c.insert(key(2), ());
        c.mark_dirty(a);
        c.mark_dirty(b);
        c.mark_dirty(a);
        assert!(c.has_dirty());
        let list = c.take_dirty();
        assert_eq!(list, vec![a, b]);
        assert!(!c.has_dirty());
        assert!(c.start_drain(a));
        // Marked again while drained: listed for the next round; b, still waiting in the
        // batch being drained, is not listed twice.
        c.mark_dirty(a);
        c.mark_dirty(b);
        assert!(c.start_drain(b));
        c.recycle_dirty(list);
        assert_eq!(c.take_dirty(), vec![a]);
        // A removed connection drains as nothing.
        c.mark_dirty(b);
        c.remove(b);
        let list = c.take_dirty();
        assert_eq!(list, vec![b]);
        assert!(!c.start_drain(b));
        assert_eq!(c.remove(b), None, "removing twice frees the slot once");
        assert_ne!(c.insert(key(5), ()), c.insert(key(6), ()));
    }

    #[test]
    fn ready_list_dedups_and_gives_current_handles() {
        let mut c = ConnTable::default();
        let a = c.insert(key(1), ());
        c.mark_ready(a);
        c.mark_ready(a);
        let mut out = Vec::new();
        c.take_ready(&mut out);
        assert_eq!(out, vec![c.handle(a)]);
        out.clear();
        c.take_ready(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn held_packets_are_bounded_and_kept_until_forgotten() {
        let mut c: ConnTable<()> = ConnTable::default();
        let byte = |b: u8| move |p: &mut [u8]| p[0] = b;
        assert_eq!(c.hold_packet(&key(1), 1, byte(1)), HoldOutcome::NotFrozen);
        c.hold(key(1), t(1));
        assert!(c.in_use(&key(1)));
        for i in 0..MAX_HELD {
            assert_eq!(c.hold_packet(&key(1), 1, byte(i as u8)), HoldOutcome::Held);
        }
        assert_eq!(c.hold_packet(&key(1), 1, byte(0)), HoldOutcome::Full);
        // A second hold keeps what is held; a freeze starts afresh.
        c.hold(key(1), t(2));
        assert_eq!(c.take_held(&key(1)).len(), MAX_HELD);
        assert!(c.take_held(&key(1)).is_empty(), "taken once");
        assert_eq!(c.hold_packet(&key(1), 1, byte(7)), HoldOutcome::Held);
        c.freeze(key(1), t(3));
        assert!(c.take_held(&key(1)).is_empty());
        c.hold_packet(&key(1), 1, byte(8));
        assert_eq!(c.forget(&key(1)), [[8u8]].iter().collect());
        assert!(!c.in_use(&key(1)));
        assert!(c.forget(&key(1)).is_empty());
    }

    #[test]
    fn out_of_range_indices_are_none() {
        let mut c: ConnTable<()> = ConnTable::default();
        assert_eq!(c.get(7), None);
        assert_eq!(c.get_mut(7), None);
        assert_eq!(c.remove(7), None);
        assert!(!c.is_released(7));
        c.arm(7, Some(t(1)));
        assert_eq!(c.next_due(t(2)), None);
    }
}
