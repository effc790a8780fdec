//! TCP's send and receive buffers: a growable ring of bytes over initialised storage.
//!
//! It does what `VecDeque<u8>` did for the control block, with one difference that is its
//! reason to exist: the free space is initialised memory, so a shared reference to the byte
//! the next write lands on exists ([`ByteRing::next_free`]), and `Interface::receive_batch`
//! can ask for that cache line while earlier frames are processed. At 100,000 connections a
//! request's bytes otherwise land on a cold line of the receive buffer and the answer on one
//! of the send buffer (`dsperf conns`). `VecDeque` gives no reference into its spare capacity;
//! the ring crates (`ringbuf`, smoltcp's `RingBuffer`) have a fixed capacity, where a
//! connection's buffer grows with what it holds (100,000 idle connections must not each hold
//! a full window). Hence our own, small and safe.
//!
//! Small storage is recycled through a [`BufPool`] of the interface's: a buffer that empties
//! gives its storage back, and the next buffer that needs some takes the block given back
//! last, whose lines are still in cache. A server with many connections then writes each
//! request and each answer into one of a few warm blocks instead of the connection's own cold
//! line and page (and an idle connection holds no buffer), without an allocation per
//! exchange; the kernel's socket buffers come from per-CPU caches the same way. The pool is the
//! interface's (one per queue, shared-nothing), handed in by the caller: the control block
//! stays sans-IO and, alone, keeps its buffers as before.

use std::fmt;

/// Bytes in first-in first-out order, growing as written (never shrinking by itself).
#[derive(Default)]
pub(crate) struct ByteRing {
    /// Storage, all of it initialised; its length is the capacity.
    buf: Box<[u8]>,
    /// Index of the oldest byte (0 when the ring empties by [`ByteRing::consume`]; where it
    /// was when by [`ByteRing::consume_keeping_ahead`]).
    head: usize,
    len: usize,
}

impl ByteRing {
    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes it holds without growing.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The bytes in order, as the part up to the storage's end and the part wrapped round.
    pub(crate) fn as_slices(&self) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if self.head + self.len <= cap {
            (&self.buf[self.head..self.head + self.len], &[])
        } else {
            let (wrapped, tail) = self.buf.split_at(self.head);
            (tail, &wrapped[..self.head + self.len - cap])
        }
    }

    /// Append `data`, growing the storage if it does not fit.
    #[cfg(test)]
    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.extend_within(data, usize::MAX);
    }

    /// Append `data`, growing the storage if it does not fit, but not past `limit` bytes
    /// unless `data` needs more: the buffer's configured size, which doubling would otherwise
    /// overshoot.
    pub(crate) fn extend_within(&mut self, data: &[u8], limit: usize) {
        if data.is_empty() {
            return;
        }
        let need = self.len + data.len();
        if need > self.buf.len() {
            self.grow_with(data, limit);
            return;
        }
        self.put(self.len, data);
        self.len = need;
    }

    /// Write `data` at `at` bytes from the oldest held byte, wrapping round; the storage holds
    /// `at + data.len()` bytes.
    fn put(&mut self, at: usize, data: &[u8]) {
        let cap = self.buf.len();
        let at = wrap(self.head + at, cap);
        let first = data.len().min(cap - at);
        self.buf[at..at + first].copy_from_slice(&data[..first]);
        if first < data.len() {
            self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        }
    }

    /// Write `data` `off` bytes past the held bytes, where it will be read, without holding it
    /// yet: out-of-order data (RFC 9293 §3.10.7.4), held by [`ByteRing::commit`] once the bytes
    /// before it arrive, with no copy and no allocation of its own. Grows the storage as
    /// [`ByteRing::extend_within`] does when it does not fit, keeping the `ahead` bytes past
    /// the held ones that earlier calls wrote. The caller knows which bytes past the held ones
    /// are written; the ring does not.
    pub(crate) fn write_ahead(&mut self, off: usize, data: &[u8], ahead: usize, limit: usize) {
        if data.is_empty() {
            return;
        }
        let need = self.len + off + data.len();
        if need > self.buf.len() {
            let keep = (self.len + ahead).min(self.buf.len());
            self.regrow(need, keep, limit);
        }
        self.put(self.len + off, data);
    }

    /// Hold the next `n` bytes past the held ones, written by [`ByteRing::write_ahead`].
    pub(crate) fn commit(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.buf.len(), "commit past the storage");
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Copy into `out` the bytes `at..at + out.len()` from the oldest held byte, held or
    /// written ahead (within the storage).
    pub(crate) fn copy_at(&self, at: usize, out: &mut [u8]) {
        let cap = self.buf.len();
        if out.is_empty() || at + out.len() > cap {
            return;
        }
        let at = wrap(self.head + at, cap);
        let first = out.len().min(cap - at);
        out[..first].copy_from_slice(&self.buf[at..at + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }

    /// Drop the `n` oldest bytes (all of them if there are fewer).
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.head = if self.len == 0 {
            // Writes start again at the storage's start: one slice, and the next write's line
            // is the one the last exchange used.
            0
        } else {
            wrap(self.head + n, self.buf.len())
        };
    }

    /// As [`ByteRing::consume`], but the bytes written ahead stay where they are: an emptied
    /// ring does not start again at the storage's start.
    pub(crate) fn consume_keeping_ahead(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.head = wrap(self.head + n, self.buf.len().max(1));
    }

    /// Drop every byte; the storage stays.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.head = 0;
    }

    /// The byte the next [`ByteRing::extend_within`] writes first, while there is free space:
    /// for a prefetch.
    pub(crate) fn next_free(&self) -> Option<&u8> {
        let cap = self.buf.len();
        (self.len < cap).then(|| &self.buf[wrap(self.head + self.len, cap)])
    }

    /// The storage's first byte, where writes start again once the ring empties, while it
    /// holds bytes: for a prefetch.
    pub(crate) fn start(&self) -> Option<&u8> {
        self.buf.first().filter(|_| self.len > 0)
    }

    /// Where the ring has no storage, give it a block from `pool` for `need` bytes, if that
    /// many fit a pooled size within `limit` (the buffer's configured size).
    ///
    /// The test inline, the taking not: most calls (a segment or a write on a connection that
    /// holds storage) find nothing to do.
    #[inline]
    pub(crate) fn supply(&mut self, pool: &mut BufPool, need: usize, limit: usize) {
        if self.buf.is_empty() && need > 0 {
            self.take_from(pool, need, limit);
        }
    }

    #[inline(never)]
    fn take_from(&mut self, pool: &mut BufPool, need: usize, limit: usize) {
        if let Some(block) = pool.take(need, limit) {
            self.buf = block;
            self.head = 0;
        }
    }

    /// Give an empty ring's storage to `pool` when it is of a pooled size and the pool has
    /// room (true then: the ring holds no storage after). Other storage stays. As
    /// [`ByteRing::supply`], the test inline.
    #[inline]
    pub(crate) fn release_to_pool(&mut self, pool: &mut BufPool) -> bool {
        self.len == 0 && !self.buf.is_empty() && self.give_to(pool)
    }

    #[inline(never)]
    fn give_to(&mut self, pool: &mut BufPool) -> bool {
        if !pool.wants(self.buf.len()) {
            return false;
        }
        pool.give(std::mem::take(&mut self.buf));
        self.head = 0;
        true
    }

    /// Move the bytes, then `data`, into new storage at its start. The growth rule is
    /// `VecDeque`'s (at least double, at least 8), so a connection holds what it held before.
    /// The storage comes zeroed from the allocator (`calloc`), not zeroed here: a large one is
    /// fresh pages that stay untouched, not resident, until written, as `VecDeque`'s spare
    /// capacity did (zeroing the spare half here made 500 clients that never read cost the
    /// node 316 MB instead of under 300: `apps/tests/hardening.rs`).
    fn grow_with(&mut self, data: &[u8], limit: usize) {
        let need = self.len + data.len();
        self.regrow(need, self.len, limit);
        self.buf[self.len..need].copy_from_slice(data);
        self.len = need;
    }

    /// New storage for at least `need` bytes (by the growth rule of
    /// [`ByteRing::grow_with`]), the first `keep` bytes from the oldest held one moved to its
    /// start.
    fn regrow(&mut self, need: usize, keep: usize, limit: usize) {
        let cap = need.max(2 * self.buf.len()).max(8).min(limit.max(need));
        let mut buf = vec![0; cap].into_boxed_slice();
        self.copy_at(0, &mut buf[..keep]);
        self.buf = buf;
        self.head = 0;
    }
}

/// The smallest pooled block: one cache line.
const POOL_MIN: usize = 64;
/// The largest: a page, what an emptied buffer may keep (`KEEP_EMPTY_BUF` is this).
pub(crate) const POOL_MAX: usize = 4 << 10;
const POOL_CLASSES: usize = (POOL_MAX / POOL_MIN).trailing_zeros() as usize + 1;
/// Bytes a pool holds at most, shared evenly by the sizes: a busy server's blocks in flight
/// between polls (hundreds of connections) fit, and stay in a core's L2.
pub(crate) const POOL_BUDGET: usize = 1 << 20;

/// Free ring storage of the small sizes (powers of two from a cache line to a page), each size
/// a LIFO stack, bounded in bytes so that a burst of connections does not leave the interface
/// holding their buffers.
pub(crate) struct BufPool {
    /// Blocks of `POOL_MIN << i` bytes, the one given back last on top.
    free: [Vec<Box<[u8]>>; POOL_CLASSES],
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool {
            free: [const { Vec::new() }; POOL_CLASSES],
        }
    }
}

impl BufPool {
    /// Index of a pooled size.
    fn class(size: usize) -> usize {
        (size / POOL_MIN).trailing_zeros() as usize
    }

    /// Whether a block of `size` bytes would be kept.
    fn wants(&self, size: usize) -> bool {
        (POOL_MIN..=POOL_MAX).contains(&size)
            && size.is_power_of_two()
            && (self.free[Self::class(size)].len() + 1) * size <= POOL_BUDGET / POOL_CLASSES
    }

    /// A block for `need` bytes (the smallest pooled size that holds them), from the pool or
    /// new (zeroed); `None` if that size is over `limit` or not pooled.
    fn take(&mut self, need: usize, limit: usize) -> Option<Box<[u8]>> {
        if need > POOL_MAX {
            return None;
        }
        let size = need.max(POOL_MIN).next_power_of_two();
        if size > limit.max(need) {
            return None;
        }
        let reused = self.free[Self::class(size)].pop();
        Some(reused.unwrap_or_else(|| vec![0; size].into_boxed_slice()))
    }

    /// Keep `block` (of a size [`BufPool::wants`]) for the next [`BufPool::take`] of its size.
    fn give(&mut self, block: Box<[u8]>) {
        self.free[Self::class(block.len())].push(block);
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.free.iter().flatten().map(|b| b.len()).sum()
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// `i` modulo `cap` for an `i` below twice `cap` (a head plus at most the length), without a
/// division.
fn wrap(i: usize, cap: usize) -> usize {
    if i >= cap {
        i - cap
    } else {
        i
    }
}

impl From<Vec<u8>> for ByteRing {
    fn from(v: Vec<u8>) -> Self {
        let len = v.len();
        ByteRing {
            buf: v.into_boxed_slice(),
            head: 0,
            len,
        }
    }
}

impl Clone for ByteRing {
    /// A copy of the storage, spare capacity included: it may hold bytes written ahead
    /// ([`ByteRing::write_ahead`]), which only the owner knows of.
    fn clone(&self) -> Self {
        ByteRing {
            buf: self.buf.clone(),
            head: self.head,
            len: self.len,
        }
    }
}

impl fmt::Debug for ByteRing {
    // The bytes themselves would flood a control block's debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteRing")
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn bytes(r: &ByteRing) -> Vec<u8> {
        let (a, b) = r.as_slices();
        [a, b].concat()
    }

    #[test]
    fn wraps_round_and_grows_in_order() {
        let mut r = ByteRing::default();
        assert_eq!((r.len(), r.capacity(), r.next_free()), (0, 0, None));
        r.extend(b"abcdef");
        assert_eq!(r.capacity(), 8);
        r.consume(4);
        r.extend(b"ghijk");
        // "ef" at the end, "ghijk" split round it.
        assert_eq!(r.as_slices(), (&b"efgh"[..], &b"ijk"[..]));
        // Exactly full while wrapped round: no free byte.
        r.extend(b"l");
        assert_eq!(r.as_slices(), (&b"efgh"[..], &b"ijkl"[..]));
        assert!(r.next_free().is_none());
        assert_eq!(r.start(), Some(&b'i'));
        assert_eq!(r.clone().capacity(), 8);
        r.extend(b"mnop");
        assert_eq!(r.capacity(), 16);
        assert_eq!(r.as_slices(), (&b"efghijklmnop"[..], &b""[..]));
        r.consume(100);
        assert!(r.is_empty());
        assert_eq!(r.capacity(), 16);
        r.extend(b"q");
        assert_eq!(r.as_slices(), (&b"q"[..], &b""[..]));
        r.clear();
        assert_eq!(r.as_slices(), (&b""[..], &b""[..]));
        assert_eq!(bytes(&ByteRing::from(b"rs".to_vec())), b"rs");
        // Growth stops at the limit, unless the bytes need more.
        let mut r = ByteRing::default();
        r.extend_within(&[1; 600], 1000);
        r.extend_within(&[2; 300], 1000);
        assert_eq!(r.capacity(), 1000);
        r.extend_within(&[3; 200], 1000);
        assert_eq!((r.len(), r.capacity()), (1100, 1100));
    }

    #[test]
    fn small_storage_is_recycled_through_the_pool() {
        let mut pool = BufPool::default();
        let mut a = ByteRing::default();
        a.supply(&mut pool, 7, 4096);
        a.extend_within(b"request", 4096);
        // The smallest pooled size that holds the bytes: a cache line.
        assert_eq!(a.capacity(), 64);
        let block = a.as_slices().0.as_ptr();
        assert!(!a.release_to_pool(&mut pool), "not while it holds bytes");
        a.consume(7);
        assert!(a.release_to_pool(&mut pool));
        assert_eq!((a.capacity(), pool.bytes()), (0, 64));
        // Another ring takes the block given back last; a ring with storage takes none.
        let mut b = ByteRing::default();
        b.supply(&mut pool, 6, 4096);
        b.supply(&mut pool, 6, 4096);
        b.extend_within(b"answer", 4096);
        assert_eq!(b.as_slices(), (&b"answer"[..], &b""[..]));
        assert_eq!(b.as_slices().0.as_ptr(), block);
        assert_eq!(pool.bytes(), 0);
        // Not over the buffer's limit, nor larger than a page: those grow as before, and are
        // not pooled.
        let mut c = ByteRing::default();
        c.supply(&mut pool, 100, 100);
        c.extend_within(&[1; 100], 100);
        assert_eq!(c.capacity(), 100);
        c.consume(100);
        assert!(!c.release_to_pool(&mut pool));
        let mut d = ByteRing::default();
        d.supply(&mut pool, 5000, 1 << 20);
        assert_eq!(d.capacity(), 0);
        // The pool holds at most its budget: its share for each size.
        let share = POOL_BUDGET / POOL_CLASSES;
        let mut rings: Vec<ByteRing> = (0..(share >> 12) + 8)
            .map(|_| {
                let mut r = ByteRing::default();
                r.supply(&mut pool, 4096, 4096);
                r
            })
            .collect();
        let mut kept = 0;
        for r in &mut rings {
            kept += usize::from(r.release_to_pool(&mut pool));
        }
        assert_eq!(kept, share >> 12);
        assert_eq!(pool.bytes(), kept << 12);
        assert_eq!(rings.iter().filter(|r| r.capacity() == 4096).count(), 8);
    }

    /// Out-of-order data is written where it will be read and held once the bytes before
    /// it arrive: wrapping round, across a growth that keeps it, and across reads that empty
    /// the held part.
    #[test]
    fn bytes_written_ahead_are_held_in_place() {
        let mut r = ByteRing::default();
        r.extend(b"abcdef");
        r.consume(5);
        // "f" held at 5; "jk" written 3 past it, wrapping round the 8-byte storage.
        r.write_ahead(3, b"jk", 0, 1000);
        assert_eq!(r.capacity(), 8);
        let mut out = [0u8; 2];
        r.copy_at(4, &mut out);
        assert_eq!(&out, b"jk");
        // Reading "f" keeps the place of what was written ahead.
        let mut one = [0u8; 1];
        r.copy_at(0, &mut one);
        r.consume_keeping_ahead(1);
        assert_eq!(&one, b"f");
        assert!(r.is_empty());
        r.copy_at(3, &mut out);
        assert_eq!(&out, b"jk");
        // A write that does not fit grows the storage and keeps the 5 bytes ahead. The
        // stream is "ghijklmnopqrs": "jk" at 3, "qrs" at 10.
        r.write_ahead(10, b"qrs", 5, 1000);
        assert_eq!(r.capacity(), 16);
        r.copy_at(3, &mut out);
        assert_eq!(&out, b"jk");
        // The holes filled: everything held, in order, the bytes written ahead not copied.
        r.write_ahead(0, b"ghi", 13, 1000);
        r.commit(5);
        assert_eq!(bytes(&r), b"ghijk");
        r.write_ahead(0, b"lmnop", 8, 1000);
        r.commit(8);
        assert_eq!(bytes(&r), b"ghijklmnopqrs");
        assert_eq!(r.capacity(), 16);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Extend(Vec<u8>),
        Consume(usize),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Extend),
            3 => (0usize..50).prop_map(Op::Consume),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// The same bytes as a `VecDeque` after any operations, and the next write lands on
        /// the byte `next_free` named.
        #[test]
        fn behaves_as_a_deque(start in proptest::collection::vec(any::<u8>(), 0..20),
                              ops in proptest::collection::vec(op(), 0..60)) {
            let mut r = ByteRing::from(start.clone());
            // (Built from a copy, whose capacity is its length, as `ByteRing::from` keeps.)
            let mut d = VecDeque::from(start.clone());
            // The same growth too: a connection holds what it held with a `VecDeque`.
            prop_assert_eq!(r.capacity(), d.capacity());
            for o in ops {
                let free = r.next_free().map(|b| b as *const u8);
                let cap = r.capacity();
                match o {
                    Op::Extend(data) => {
                        r.extend(&data);
                        d.extend(&data);
                        if let (Some(p), false) = (free, data.is_empty()) {
                            if r.capacity() == cap {
                                let at = d.len() - data.len();
                                let (a, b) = r.as_slices();
                                let first = if at < a.len() { &a[at] } else { &b[at - a.len()] };
                                prop_assert!(std::ptr::eq(p, first));
                            }
                        }
                    }
                    Op::Consume(n) => {
                        r.consume(n);
                        d.drain(..n.min(d.len()));
                    }
                    Op::Clear => {
                        r.clear();
                        d.clear();
                    }
                }
                prop_assert_eq!(bytes(&r), d.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(r.len(), d.len());
                prop_assert_eq!(r.capacity(), d.capacity());
                let copy = r.clone();
                prop_assert_eq!(bytes(&copy), bytes(&r));
                // The storage whole (it may hold bytes written ahead, which only the owner
                // knows of), and the same next byte to write.
                prop_assert_eq!(copy.capacity(), r.capacity());
                let (mut all, mut all_copy) = (vec![0; r.capacity()], vec![0; r.capacity()]);
                r.copy_at(0, &mut all);
                copy.copy_at(0, &mut all_copy);
                prop_assert_eq!(all, all_copy);
                prop_assert!(r.capacity() >= r.len());
                prop_assert_eq!(r.next_free().is_some(), r.len() < r.capacity());
            }
        }
    }
}
