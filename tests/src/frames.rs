//! [`FrameQueue`]: frames in flight in a test, in buffers allocated once, for tests that count
//! the allocations of the code under test (the queue must not add its own per frame).

/// A first-in first-out queue of frames of at most `frame` bytes, `slots` of them at once, in
/// storage allocated when it is made.
#[derive(Debug)]
pub struct FrameQueue {
    bufs: Vec<Vec<u8>>,
    head: usize,
    n: usize,
}

impl FrameQueue {
    /// Room for `slots` frames of up to `frame` bytes.
    pub fn new(slots: usize, frame: usize) -> FrameQueue {
        FrameQueue {
            bufs: (0..slots.max(1))
                .map(|_| Vec::with_capacity(frame))
                .collect(),
            head: 0,
            n: 0,
        }
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Queue a copy of `frame`. Panics when the queue is full or the frame larger than its
    /// slots: the test is wrong, and growing would allocate.
    pub fn push(&mut self, frame: &[u8]) {
        let slots = self.bufs.len();
        let slot = &mut self.bufs[(self.head + self.n) % slots];
        assert!(
            self.n < slots && frame.len() <= slot.capacity(),
            "{} frames queued, one of {} bytes",
            self.n,
            frame.len()
        );
        slot.clear();
        slot.extend_from_slice(frame);
        self.n += 1;
    }

    /// Frame `i` from the oldest, still queued.
    pub fn get(&self, i: usize) -> &[u8] {
        assert!(i < self.n, "frame {i} of {}", self.n);
        &self.bufs[(self.head + i) % self.bufs.len()]
    }

    /// Take the oldest frame into `out`: its length, or `None` when none is queued.
    pub fn pop(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        let f = &self.bufs[self.head];
        out[..f.len()].copy_from_slice(f);
        self.head = (self.head + 1) % self.bufs.len();
        self.n -= 1;
        Some(f.len())
    }

    /// Drop every queued frame (the storage stays).
    pub fn clear(&mut self) {
        self.head = 0;
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_wrap() {
        let mut q = FrameQueue::new(2, 8);
        let mut out = [0u8; 8];
        for round in 0..3u8 {
            q.push(&[round; 3]);
            q.push(&[round + 10; 5]);
            assert_eq!((q.len(), q.get(1)), (2, &[round + 10; 5][..]));
            assert_eq!(q.pop(&mut out), Some(3));
            assert_eq!(out[..3], [round; 3]);
            assert_eq!(q.pop(&mut out), Some(5));
            assert!(q.is_empty() && q.pop(&mut out).is_none());
        }
    }
}
