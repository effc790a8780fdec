//! The Internet checksum (RFC 1071) and the sum of IPv6's upper-layer pseudo-header
//! (RFC 8200 §8.1): the one implementation the Mobility Header, the stack's TCP segments, UDP
//! datagrams and ICMPv6 messages (in and out) and the kernel path's held packets share.
//!
//! smoltcp's `checksum::data` adds 16-bit words one at a time; the TCP segments of a small
//! request/response exchange spent ~450 of its ~6,100 instructions there (`dsperf conns`,
//! callgrind). This one adds 32-bit words in the machine's byte order into 64 bits and folds
//! once (RFC 1071 §2 (B) byte-order independence, (C) parallel summation, (D) deferred carries).
//!
//! ```
//! use ds_mipv6::wire::checksum::{add, sum};
//! // RFC 1071 §3's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
//! let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
//! assert_eq!(sum(&data), 0xddf2);
//! assert_eq!(add(sum(&data[..4]), sum(&data[4..])), 0xddf2);
//! ```

use std::net::Ipv6Addr;

/// The one's complement sum of `data` as big-endian 16-bit words, an odd last octet padded
/// with zero (RFC 1071 §1), folded to 16 bits and not complemented: 0 only for data that is
/// all zero.
pub fn sum(data: &[u8]) -> u16 {
    // 32-bit words into 64 bits: no carry to carry round before 2^32 words (16 GiB).
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    fold(acc)
}

/// The one's complement sum of two sums (RFC 1071 §1).
pub fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// The sum of IPv6's pseudo-header (RFC 8200 §8.1) for an upper-layer packet of `len` octets
/// with next header `next_header`: add the packet's own [`sum`] and complement for its
/// checksum.
pub fn pseudo_header(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u16 {
    let words = |a: &Ipv6Addr| {
        a.octets()
            .chunks_exact(4)
            .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .sum::<u64>()
    };
    let tail = u32::from_ne_bytes(len.to_be_bytes()) as u64
        + u64::from(u32::from_ne_bytes([0, 0, 0, next_header]));
    fold(words(src) + words(dst) + tail)
}

/// A sum of 32-bit words in the machine's order, folded to the 16-bit one's complement sum of
/// the same octets as big-endian words.
fn fold(acc: u64) -> u16 {
    // 2^16 = 1 modulo 2^16 - 1: each step keeps the sum, and a sum that is not zero stays so;
    // four steps bring any 64-bit value below 2^16.
    let s = (acc >> 32) + (acc & 0xffff_ffff);
    let s = (s >> 16) + (s & 0xffff);
    let s = (s >> 16) + (s & 0xffff);
    let s = (s >> 16) + (s & 0xffff);
    // Summed in the machine's order: on a little-endian machine every word was read with its
    // octets swapped, and so is their sum (§2 (B)).
    u16::from_be(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sum by 16-bit words that RFC 1071 §1 defines, written as plainly as it reads.
    fn by_words(data: &[u8]) -> u16 {
        let mut s: u64 = data
            .chunks(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s >> 16) + (s & 0xffff);
        }
        s as u16
    }

    #[test]
    fn words_of_four_octets_sum_what_words_of_two_sum() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut data = vec![0u8; 3000];
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for len in 0..200 {
            for start in 0..9 {
                let d = &data[start..start + len];
                assert_eq!(sum(d), by_words(d), "{len} octets from {start}");
            }
        }
        for len in [1499, 1500, 2999] {
            assert_eq!(sum(&data[..len]), by_words(&data[..len]));
        }
        // Carries all the way round, and the two zeros of one's complement.
        for d in [
            vec![0xff; 64],
            vec![0xff; 63],
            vec![0; 17],
            vec![0xff, 0xff],
        ] {
            assert_eq!(sum(&d), by_words(&d), "{d:?}");
        }
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xff; 8]), 0xffff);
    }

    /// The pseudo-header's sum is that of its 40 octets laid out as RFC 8200 §8.1 draws them.
    #[test]
    fn the_pseudo_header_sums_as_its_octets() {
        let addrs: [Ipv6Addr; 3] = [
            "fd00::1".parse().unwrap(),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap(),
            "fe80::1:2:3:4".parse().unwrap(),
        ];
        for (src, dst) in addrs.iter().zip(addrs.iter().rev()) {
            for (nh, len) in [(6, 20), (17, 65_535), (135, 70_000), (58, u32::MAX)] {
                let mut h = [0u8; 40];
                h[..16].copy_from_slice(&src.octets());
                h[16..32].copy_from_slice(&dst.octets());
                h[32..36].copy_from_slice(&len.to_be_bytes());
                h[39] = nh;
                assert_eq!(pseudo_header(src, dst, nh, len), by_words(&h));
            }
        }
    }

    /// A segment with its checksum filled in sums, with its pseudo-header, to all ones.
    #[test]
    fn a_checksum_filled_in_verifies() {
        let (src, dst) = ("fd00::1".parse().unwrap(), "fd00::2:3".parse().unwrap());
        let mut seg: Vec<u8> = (0..77u8).map(|i| i.wrapping_mul(37)).collect();
        seg[16..18].fill(0);
        let p = pseudo_header(&src, &dst, 6, seg.len() as u32);
        let c = !add(p, sum(&seg));
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        assert_eq!(add(p, sum(&seg)), 0xffff);
        seg[40] ^= 1;
        assert_ne!(add(p, sum(&seg)), 0xffff);
    }
}
