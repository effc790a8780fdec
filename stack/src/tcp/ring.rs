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

use std::fmt;

/// Bytes in first-in first-out order, growing as written (never shrinking by itself).
#[derive(Default)]
pub(crate) struct ByteRing {
    /// Storage, all of it initialised; its length is the capacity.
    buf: Box<[u8]>,
    /// Index of the oldest byte (0 whenever the ring is empty).
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
        let cap = self.buf.len();
        let tail = wrap(self.head + self.len, cap);
        let first = data.len().min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        if first < data.len() {
            self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        }
        self.len = need;
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

    /// Move the bytes, then `data`, into new storage at its start. The growth rule is
    /// `VecDeque`'s (at least double, at least 8), so a connection holds what it held before.
    /// The storage comes zeroed from the allocator (`calloc`), not zeroed here: a large one is
    /// fresh pages that stay untouched, not resident, until written, as `VecDeque`'s spare
    /// capacity did (zeroing the spare half here made 500 clients that never read cost the
    /// node 316 MB instead of under 300: `apps/tests/hardening.rs`).
    fn grow_with(&mut self, data: &[u8], limit: usize) {
        let need = self.len + data.len();
        let cap = need.max(2 * self.buf.len()).max(8).min(limit.max(need));
        let mut buf = vec![0; cap].into_boxed_slice();
        let (a, b) = self.as_slices();
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..a.len() + b.len()].copy_from_slice(b);
        buf[a.len() + b.len()..need].copy_from_slice(data);
        self.buf = buf;
        self.head = 0;
        self.len = need;
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
    /// A copy holds the bytes only, as `VecDeque`'s did: no spare capacity.
    fn clone(&self) -> Self {
        let (a, b) = self.as_slices();
        ByteRing::from([a, b].concat())
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
                prop_assert_eq!(copy.capacity(), r.len());
                prop_assert!(r.capacity() >= r.len());
                prop_assert_eq!(r.next_free().is_some(), r.len() < r.capacity());
            }
        }
    }
}
