//! IPv6 fragment reassembly (RFC 8200 §4.5) with limits: overlapping fragments discard the
//! whole datagram (RFC 5722), datagrams time out after 60 s, and memory is bounded.

use crate::time::{Duration, Instant};
use std::collections::HashMap;
use std::net::Ipv6Addr;

/// RFC 8200 §4.5: reassembly gives up 60 s after the first fragment.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Datagrams being reassembled at once.
pub const MAX_DATAGRAMS: usize = 64;
/// Datagrams being reassembled at once from one source network (a /64: one host picks its
/// interface identifiers freely), so that one sender's first fragments cannot hold every
/// slot for the 60 s timeout and refuse everyone else's datagrams.
pub const MAX_DATAGRAMS_PER_SOURCE: usize = 8;
/// Largest reassembled payload (the IPv6 payload length field's limit).
pub const MAX_PAYLOAD: usize = 65535;

#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    /// Received ranges, sorted, disjoint.
    have: Vec<(usize, usize)>,
    total: Option<usize>,
    next_header: Option<u8>,
    deadline: Instant,
}

/// Why a fragment was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FragError {
    /// Overlaps data already received (RFC 5722): the datagram is discarded.
    Overlap,
    /// Beyond the largest datagram or inconsistent with the last fragment.
    TooLong,
    /// Non-final fragment whose length is not a multiple of 8 (RFC 8200 §4.5).
    BadLength,
    /// Too many datagrams in progress.
    Full,
}

/// A completed datagram: the upper-layer header type and the reassembled payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Reassembled {
    /// Next header of the fragmentable part.
    pub next_header: u8,
    /// The payload after the fragment header, reassembled.
    pub payload: Vec<u8>,
}

/// Reassembly buffers keyed by (source, destination, identification).
#[derive(Debug, Default)]
pub struct Reassembler {
    parts: HashMap<(Ipv6Addr, Ipv6Addr, u32), Partial>,
}

impl Reassembler {
    /// Add one fragment. Returns the datagram once complete.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ident: u32,
        offset: usize,
        more: bool,
        next_header: u8,
        data: &[u8],
    ) -> Result<Option<Reassembled>, FragError> {
        let key = (src, dst, ident);
        let end = offset + data.len();
        if end > MAX_PAYLOAD {
            self.parts.remove(&key);
            return Err(FragError::TooLong);
        }
        if more && !data.len().is_multiple_of(8) {
            return Err(FragError::BadLength);
        }
        if !self.parts.contains_key(&key) && !self.make_room(src) {
            return Err(FragError::Full);
        }
        let p = self.parts.entry(key).or_insert_with(|| Partial {
            data: Vec::new(),
            have: Vec::new(),
            total: None,
            next_header: None,
            deadline: now + REASSEMBLY_TIMEOUT,
        });
        if let Some(t) = p.total {
            if end > t || (!more && end != t) {
                self.parts.remove(&key);
                return Err(FragError::TooLong);
            }
        }
        if !more {
            if p.have.last().is_some_and(|&(_, e)| e > end) {
                self.parts.remove(&key);
                return Err(FragError::TooLong);
            }
            p.total = Some(end);
        }
        if p.have.iter().any(|&(s, e)| offset < e && s < end) {
            self.parts.remove(&key);
            return Err(FragError::Overlap);
        }
        if offset == 0 {
            p.next_header = Some(next_header);
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[offset..end].copy_from_slice(data);
        let pos = p
            .have
            .iter()
            .position(|&(s, _)| s > offset)
            .unwrap_or(p.have.len());
        p.have.insert(pos, (offset, end));
        // Merge adjacent ranges.
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(p.have.len());
        for &(s, e) in &p.have {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        p.have = merged;
        let done = matches!((p.total, p.have.as_slice(), p.next_header), (Some(t), [(0, e)], Some(_)) if *e == t);
        if done {
            if let Some(p) = self.parts.remove(&key) {
                return Ok(Some(Reassembled {
                    next_header: p.next_header.unwrap_or(59),
                    payload: p.data,
                }));
            }
        }
        Ok(None)
    }

    /// Whether a new datagram from `src` may start: its source network holds fewer than
    /// [`MAX_DATAGRAMS_PER_SOURCE`], and a slot is free or is freed by dropping the oldest
    /// datagram of the source network holding the most (scans of at most
    /// [`MAX_DATAGRAMS`], for a datagram's first fragment only; nothing allocated).
    fn make_room(&mut self, src: Ipv6Addr) -> bool {
        let net = |a: &Ipv6Addr| u128::from(*a) >> 64;
        let from = |n: u128| self.parts.keys().filter(|(s, _, _)| net(s) == n).count();
        if from(net(&src)) >= MAX_DATAGRAMS_PER_SOURCE {
            return false;
        }
        if self.parts.len() < MAX_DATAGRAMS {
            return true;
        }
        // Full: the heaviest source network (MAX_DATAGRAMS² key comparisons at most, nothing
        // allocated).
        let Some(heaviest) = self
            .parts
            .keys()
            .map(|(s, _, _)| net(s))
            .max_by_key(|n| from(*n))
        else {
            return false;
        };
        let oldest = self
            .parts
            .iter()
            .filter(|((s, _, _), _)| net(s) == heaviest)
            .min_by_key(|(_, p)| p.deadline)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.parts.remove(&k);
        }
        self.parts.len() < MAX_DATAGRAMS
    }

    /// Drop expired datagrams; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        // Called on every poll: nothing to walk in the usual case.
        if self.parts.is_empty() {
            return 0;
        }
        let before = self.parts.len();
        self.parts.retain(|_, p| p.deadline > now);
        before - self.parts.len()
    }

    /// Earliest expiry.
    pub fn poll_at(&self) -> Option<Instant> {
        self.parts.values().map(|p| p.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn reassembles_out_of_order() {
        let mut r = Reassembler::default();
        let t = Instant::ZERO;
        let data: Vec<u8> = (0..24u8).collect();
        assert_eq!(
            r.add(t, a("::1"), a("::2"), 7, 16, false, 17, &data[16..])
                .unwrap(),
            None
        );
        assert_eq!(
            r.add(t, a("::1"), a("::2"), 7, 0, true, 17, &data[..8])
                .unwrap(),
            None
        );
        let done = r
            .add(t, a("::1"), a("::2"), 7, 8, true, 17, &data[8..16])
            .unwrap()
            .unwrap();
        assert_eq!(done.payload, data);
        assert_eq!(done.next_header, 17);
    }

    #[test]
    fn overlap_discards() {
        let mut r = Reassembler::default();
        let t = Instant::ZERO;
        r.add(t, a("::1"), a("::2"), 1, 0, true, 17, &[0; 16])
            .unwrap();
        assert_eq!(
            r.add(t, a("::1"), a("::2"), 1, 8, false, 17, &[0; 16]),
            Err(FragError::Overlap)
        );
    }

    /// One sender's first fragments (RFC 8200 §4.5 has a receiver hold them 60 s) take at
    /// most `MAX_DATAGRAMS_PER_SOURCE` slots per /64, and senders from many /64s filling
    /// every slot lose their oldest to a newcomer: another host's datagram is reassembled.
    #[test]
    fn no_sender_holds_every_slot() {
        let mut r = Reassembler::default();
        let (t, dst) = (Instant::ZERO, a("fd00::1"));
        let first = |r: &mut Reassembler, net: u128, host: u128, id| {
            let src = Ipv6Addr::from(net << 64 | host);
            r.add(t, src, dst, id, 0, true, 17, &[0; 8])
        };
        let ok = (0..MAX_DATAGRAMS as u32)
            .filter(|i| first(&mut r, 0xfd00_0bad, u128::from(*i), *i).is_ok())
            .count();
        assert_eq!(ok, MAX_DATAGRAMS_PER_SOURCE, "one /64");
        // Now every slot, from eight /64s at eight datagrams each.
        for net in 1..(MAX_DATAGRAMS / MAX_DATAGRAMS_PER_SOURCE) as u128 {
            for i in 0..MAX_DATAGRAMS_PER_SOURCE as u32 {
                first(&mut r, 0xfd00_0bad + net, u128::from(i), i).unwrap();
            }
        }
        // Another host's two fragments still make a datagram.
        let (src, data) = (a("fd00:cafe::1"), [5u8; 16]);
        assert_eq!(r.add(t, src, dst, 9, 0, true, 17, &data[..8]), Ok(None));
        let done = r.add(t, src, dst, 9, 8, false, 17, &data[8..]).unwrap();
        assert_eq!(done.map(|d| d.payload), Some(data.to_vec()));
    }

    #[test]
    fn times_out() {
        let mut r = Reassembler::default();
        r.add(Instant::ZERO, a("::1"), a("::2"), 1, 0, true, 17, &[0; 8])
            .unwrap();
        assert_eq!(r.expire(Instant::ZERO + REASSEMBLY_TIMEOUT), 1);
    }
}
