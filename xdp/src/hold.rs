//! Held flows of the steering program: the `held_flows` map ([`HeldFlows`]) and the reader of
//! the `hold_ring` BPF ring buffer the program copies their packets into ([`HoldRing`]).
//!
//! A kernel-path node that moves a connection with `TCP_REPAIR` puts its 4-tuple in
//! `held_flows` before the freeze: from then on the program copies each of the peer's packets
//! for it (the whole IPv6 packet, after decapsulation) into the ring and drops it, so the
//! frozen socket never sees it. Holding and releasing are one map update each (a `bpf(2)`
//! call, microseconds); the ring is read without blocking, and its descriptor polls readable
//! when records wait (`ringbuf_map_poll`), so an event loop can wait on it.

use crate::maps::{HoldKey, HoldVal, HOLD_KEY_LEN, HOLD_REC_LEN};
use crate::Error;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The steering program's `held_flows` map, through a descriptor of its own.
#[derive(Debug)]
pub struct HeldFlows {
    map: MapHandle,
}

impl HeldFlows {
    /// A handle on `map` (which must be `held_flows`).
    pub fn new(map: &MapHandle) -> Result<HeldFlows, Error> {
        Ok(HeldFlows {
            map: MapHandle::try_from(map).map_err(Error::bpf("duplicate held_flows fd"))?,
        })
    }

    /// Start holding the flow (its counters start from zero). Fails when the map is full.
    pub fn hold(&self, key: &HoldKey) -> Result<(), Error> {
        self.map
            .update(
                &key.to_bytes(),
                &[0u8; crate::maps::HOLD_VAL_LEN],
                MapFlags::ANY,
            )
            .map_err(Error::bpf("update held_flows"))
    }

    /// Stop holding the flow; its counters, or `None` if it was not held.
    pub fn release(&self, key: &HoldKey) -> Result<Option<HoldVal>, Error> {
        match self.map.lookup_and_delete(&key.to_bytes()) {
            Ok(v) => Ok(v.as_deref().and_then(HoldVal::from_bytes)),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Bpf("delete from held_flows", e)),
        }
    }

    /// The flow's counters, or `None` if it is not held.
    pub fn get(&self, key: &HoldKey) -> Result<Option<HoldVal>, Error> {
        Ok(self
            .map
            .lookup(&key.to_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("lookup held_flows"))?
            .as_deref()
            .and_then(HoldVal::from_bytes))
    }

    /// How many flows the map can hold.
    pub fn capacity(&self) -> u32 {
        self.map.max_entries()
    }
}

/// `BPF_RINGBUF_BUSY_BIT`: the record is still being written.
const BUSY: u32 = 1 << 31;
/// `BPF_RINGBUF_DISCARD_BIT`: the producer discarded the record.
const DISCARD: u32 = 1 << 30;
/// `BPF_RINGBUF_HDR_SZ`.
const HDR: u64 = 8;

/// A reader of the `hold_ring` BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`), mapped into this
/// process as libbpf's `ring_buffer` does it: the consumer page read-write, then the producer
/// page and the data area read-only, the data area mapped twice in a row so that a record that
/// wraps around the end reads as one contiguous slice.
#[derive(Debug)]
pub struct HoldRing {
    map: MapHandle,
    consumer: *mut libc::c_void,
    producer: *mut libc::c_void,
    page: usize,
    size: usize,
}

// SAFETY: the mappings belong to this value alone (nothing else in the process has their
// addresses) and are only touched through `&mut self` or atomically; moving the value to
// another thread moves that exclusive use with it.
unsafe impl Send for HoldRing {}

impl HoldRing {
    /// Map the ring buffer `map` (which must be `hold_ring`).
    pub fn new(map: &MapHandle) -> Result<HoldRing, Error> {
        let map = MapHandle::try_from(map).map_err(Error::bpf("duplicate hold_ring fd"))?;
        let size = map.max_entries() as usize;
        if !size.is_power_of_two() {
            return Err(Error::Invalid(format!("ring buffer size {size}")));
        }
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| Error::Invalid("page size".into()))?;
        let fd = map.as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the ring's consumer page (the kernel allows it
        // read-write); no Rust reference points into it.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(Error::Os(
                "mmap ring buffer consumer page",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh read-only shared mapping of the producer page and the data area
        // twice over (the layout `ringbuf_map_mmap_ro` serves), at offset one page.
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + 2 * size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                page as libc::off_t,
            )
        };
        if producer == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: `consumer` was mapped above with this length and is not used again.
            unsafe { libc::munmap(consumer, page) };
            return Err(Error::Os("mmap ring buffer data", err));
        }
        Ok(HoldRing {
            map,
            consumer,
            producer,
            page,
            size,
        })
    }

    /// The ring's descriptor: it polls readable (`POLLIN`) when records wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }

    /// Size of the data area in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer position is the first, 8-byte aligned u64 of the consumer page,
        // mapped for the life of `self`; the kernel only reads it, so an atomic view is sound.
        unsafe { &*(self.consumer as *const AtomicU64) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, for the first u64 of the producer page (written by the kernel).
        unsafe { &*(self.producer as *const AtomicU64) }
    }

    /// Read up to `max` records, oldest first, calling `f` with each one's flow and packet;
    /// returns how many were read. Never blocks. Records that do not parse are skipped.
    pub fn read(&mut self, max: usize, mut f: impl FnMut(HoldKey, &[u8])) -> usize {
        let mask = self.size as u64 - 1;
        let mut cons = self.consumer_pos().load(Ordering::Acquire);
        let mut n = 0;
        while n < max {
            let prod = self.producer_pos().load(Ordering::Acquire);
            if cons >= prod {
                break;
            }
            let off = (cons & mask) as usize;
            // SAFETY: `off` < size, and the data area (mapped twice, 2 * size bytes) starts one
            // page into the producer mapping: the 8-byte header lies inside it, 8-aligned.
            let hdr = unsafe {
                &*((self.producer as *const u8).add(self.page + off) as *const AtomicU32)
            };
            let len = hdr.load(Ordering::Acquire);
            if len & BUSY != 0 {
                break;
            }
            let body = (len & !(BUSY | DISCARD)) as usize;
            if len & DISCARD == 0 && body <= self.size {
                // SAFETY: a committed record of `body` bytes follows its header; the double
                // mapping keeps it contiguous even across the end of the ring (body <= size).
                let rec = unsafe {
                    std::slice::from_raw_parts(
                        (self.producer as *const u8).add(self.page + off + HDR as usize),
                        body,
                    )
                };
                if let Some((key, pkt)) = parse_record(rec) {
                    f(key, pkt);
                }
            }
            cons += (body as u64 + HDR + 7) & !7;
            self.consumer_pos().store(cons, Ordering::Release);
            n += 1;
        }
        n
    }

    /// Bytes waiting in the ring.
    pub fn pending(&self) -> u64 {
        let cons = self.consumer_pos().load(Ordering::Acquire);
        self.producer_pos()
            .load(Ordering::Acquire)
            .saturating_sub(cons)
    }
}

impl Drop for HoldRing {
    fn drop(&mut self) {
        // SAFETY: both mappings were made in `new` with these lengths; nothing refers to them
        // after this.
        unsafe {
            libc::munmap(self.consumer, self.page);
            libc::munmap(self.producer, self.page + 2 * self.size);
        }
    }
}

/// Split a `hold_ring` record (`struct hold_rec`, then the packet) into its flow and packet.
pub fn parse_record(rec: &[u8]) -> Option<(HoldKey, &[u8])> {
    let key = HoldKey::from_bytes(rec)?;
    let len = u32::from_ne_bytes(rec.get(HOLD_KEY_LEN..HOLD_REC_LEN)?.try_into().ok()?) as usize;
    let pkt = rec.get(HOLD_REC_LEN..HOLD_REC_LEN + len)?;
    Some((key, pkt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let key = HoldKey {
            local: "fd00::80".parse().expect("addr"),
            remote: "fd00::1".parse().expect("addr"),
            lport: 80,
            rport: 5555,
        };
        let mut rec = key.to_bytes().to_vec();
        rec.extend_from_slice(&3u32.to_ne_bytes());
        rec.extend_from_slice(&[1, 2, 3, 0, 0]); // padding after the packet is ignored
        assert_eq!(parse_record(&rec), Some((key, &[1u8, 2, 3][..])));
        assert_eq!(parse_record(&rec[..42]), None, "truncated packet");
        assert_eq!(parse_record(&rec[..30]), None, "truncated key");
    }
}
