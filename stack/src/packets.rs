//! [`Packets`]: whole packets one after another in one buffer.
//!
//! A frozen connection's packets are held for the node that thaws it, forwarded to it in a
//! handoff message and fed back there, up to a thousand of them in a handoff's gap. A `Vec` per
//! packet made each one an allocation at every step (held, encoded, decoded, injected). Here
//! they share one byte buffer and one table of ends, which grow by doubling: a number of
//! allocations that grows with the logarithm of the packets held since the last take (a take
//! hands the storage over, and the hold starts again from none), and a handoff message
//! decodes into one buffer instead of one per packet. The storage may reach twice the bytes
//! held while it grows.
//!
//! Serialized as a sequence of byte strings, so the encoding is the one a `Vec` of
//! `serde_bytes::ByteBuf` had (the handoff protocol's `Forward` message keeps its wire format).

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Packets stored back to back: one byte buffer and the end of each packet in it.
///
/// ```
/// use ds_stack::Packets;
///
/// let mut held = Packets::new();
/// held.push(b"first");
/// held.push_with(3, |p| p.copy_from_slice(b"two"));
/// assert_eq!(held.len(), 2);
/// assert_eq!(held.iter().collect::<Vec<_>>(), [&b"first"[..], &b"two"[..]]);
/// assert_eq!(held.byte_len(), 8);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Packets {
    bytes: Vec<u8>,
    /// Where each packet ends in `bytes` (it starts where the one before it ends).
    ends: Vec<usize>,
}

impl Packets {
    /// No packets, nothing allocated.
    pub const fn new() -> Self {
        Packets {
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// How many packets.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The packets' bytes together.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Append a copy of `packet`.
    pub fn push(&mut self, packet: &[u8]) {
        self.drop_unfinished();
        self.bytes.extend_from_slice(packet);
        self.ends.push(self.bytes.len());
    }

    /// Append a packet of `len` bytes that `fill` writes in place (it is given zeros).
    pub fn push_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        self.drop_unfinished();
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        fill(&mut self.bytes[start..]);
        self.ends.push(self.bytes.len());
    }

    /// Packet `i` (oldest first).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        Some(&self.bytes[self.start(i)..end])
    }

    /// The newest packet, to change in place.
    pub fn last_mut(&mut self) -> Option<&mut [u8]> {
        let i = self.ends.len().checked_sub(1)?;
        let start = self.start(i);
        Some(&mut self.bytes[start..])
    }

    /// The packets, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            packets: self,
            next: 0,
        }
    }

    /// Drop every packet, keeping the storage for the next ones.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Bytes past the last packet's end: a `push_with` whose `fill` panicked. Dropped, so that
    /// they do not join the next packet.
    fn drop_unfinished(&mut self) {
        self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
    }

    fn start(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.ends[i - 1],
        }
    }
}

impl fmt::Debug for Packets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packets")
            .field("len", &self.len())
            .field("bytes", &self.byte_len())
            .finish()
    }
}

/// [`Packets::iter`]'s iterator.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    packets: &'a Packets,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let p = self.packets.get(self.next)?;
        self.next += 1;
        Some(p)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.packets.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Packets {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<P: AsRef<[u8]>> FromIterator<P> for Packets {
    fn from_iter<I: IntoIterator<Item = P>>(iter: I) -> Self {
        let mut all = Packets::new();
        all.extend(iter);
        all
    }
}

impl<P: AsRef<[u8]>> Extend<P> for Packets {
    fn extend<I: IntoIterator<Item = P>>(&mut self, iter: I) {
        for p in iter {
            self.push(p.as_ref());
        }
    }
}

impl Serialize for Packets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for p in self {
            seq.serialize_element(serde_bytes::Bytes::new(p))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Packets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(PacketsVisitor)
    }
}

struct PacketsVisitor;

impl<'de> Visitor<'de> for PacketsVisitor {
    type Value = Packets;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of packets")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Packets, A::Error> {
        // The count is the sender's word: it sizes nothing here (each packet pushed grows the
        // buffers, which the decoder's input bounds).
        let mut all = Packets::new();
        while seq.next_element_seed(AppendTo(&mut all))?.is_some() {}
        Ok(all)
    }
}

/// Decodes one packet straight onto the end of a [`Packets`]: no buffer of its own.
struct AppendTo<'a>(&'a mut Packets);

impl<'de> DeserializeSeed<'de> for AppendTo<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for AppendTo<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a packet's bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.0.push(v);
        Ok(())
    }

    /// Formats without byte strings (JSON) write a packet as an array of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(b) = seq.next_element::<u8>()? {
            self.0.bytes.push(b);
        }
        self.0.ends.push(self.0.bytes.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_keep_their_bounds_and_order() {
        let mut p = Packets::new();
        assert!(p.is_empty());
        assert_eq!(p.get(0), None);
        assert_eq!(p.last_mut(), None);
        p.push(b"");
        p.push(b"abc");
        p.push_with(2, |b| {
            assert_eq!(b, [0, 0]);
            b.copy_from_slice(b"de");
        });
        p.last_mut().expect("one")[0] = b'D';
        let all: Vec<&[u8]> = p.iter().collect();
        assert_eq!(all, [&b""[..], b"abc", b"De"]);
        assert_eq!(p.iter().len(), 3);
        assert_eq!((p.len(), p.byte_len()), (3, 5));
        let cap = p.bytes.capacity();
        p.clear();
        assert!(p.is_empty());
        assert_eq!(p.bytes.capacity(), cap, "storage kept for the next packets");
    }

    #[test]
    fn a_fill_that_panicked_leaves_nothing_behind() {
        let mut p = Packets::new();
        p.push(b"one");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.push_with(4, |_| panic!("a fill that fails"));
        }));
        assert!(r.is_err());
        p.push(b"two");
        let all: Vec<&[u8]> = p.iter().collect();
        assert_eq!(all, [&b"one"[..], b"two"]);
    }

    #[test]
    fn encoded_as_a_vec_of_byte_strings_was() {
        let list = [vec![1u8, 2, 3], vec![], vec![9u8; 300]];
        let as_vecs: Vec<serde_bytes::ByteBuf> = list
            .iter()
            .cloned()
            .map(serde_bytes::ByteBuf::from)
            .collect();
        let packets: Packets = list.iter().collect();
        let wire = postcard::to_allocvec(&packets).expect("encode");
        assert_eq!(wire, postcard::to_allocvec(&as_vecs).expect("encode"));
        let back: Packets = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back, packets);
        let json = serde_json::to_string(&packets).expect("json");
        let back: Packets = serde_json::from_str(&json).expect("json back");
        assert_eq!(back, packets);
    }

    #[test]
    fn a_truncated_encoding_is_an_error() {
        let packets: Packets = [vec![7u8; 40], vec![8u8; 40]].iter().collect();
        let wire = postcard::to_allocvec(&packets).expect("encode");
        for cut in 0..wire.len() {
            assert!(
                postcard::from_bytes::<Packets>(&wire[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }
}
