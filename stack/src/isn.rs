//! Initial sequence numbers per RFC 6528: `ISN = M + F(localip, localport, remoteip,
//! remoteport, secretkey)`, with M a 4-microsecond timer and F a keyed hash (HMAC-SHA-256 from
//! `ring`, truncated to 32 bits).

use crate::time::Instant;
use ring::hmac;
use std::net::SocketAddrV6;

/// Generates RFC 6528 ISNs from a secret key.
pub struct IsnGenerator {
    key: hmac::Key,
}

impl IsnGenerator {
    /// A generator keyed with `secret` (RFC 6528 §3: at least 128 bits, kept secret).
    pub fn new(secret: &[u8]) -> Self {
        IsnGenerator {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The ISN for this connection at `now`.
    pub fn isn(&self, now: Instant, local: &SocketAddrV6, remote: &SocketAddrV6) -> u32 {
        let mut msg = [0u8; 36];
        msg[..16].copy_from_slice(&local.ip().octets());
        msg[16..18].copy_from_slice(&local.port().to_be_bytes());
        msg[18..34].copy_from_slice(&remote.ip().octets());
        msg[34..36].copy_from_slice(&remote.port().to_be_bytes());
        let tag = hmac::sign(&self.key, &msg);
        let f = u32::from_be_bytes([
            tag.as_ref()[0],
            tag.as_ref()[1],
            tag.as_ref()[2],
            tag.as_ref()[3],
        ]);
        // RFC 6528 §3: M is a timer incremented every 4 microseconds.
        let m = (now.total_micros() / 4) as u32;
        m.wrapping_add(f)
    }
}

/// SYN cookies (RFC 4987 §3.6): when a listener's backlog is full, the SYN-ACK's initial
/// sequence number carries what the connection needs, so that nothing is kept until the
/// client's ACK returns it. Written here because the layout is the stack's own: a 5-bit time
/// counter (64 s steps; a cookie is good for 64–128 s), a 3-bit index into [`COOKIE_MSS`]
/// and a 24-bit HMAC-SHA-256 tag over the 4-tuple, the client's ISN, the counter and the
/// index. Window scale and SACK-permitted travel, as in Linux, in the low 6 bits of our
/// TSval ([`SynCookies::ts_options`]); a client without timestamps gets neither.
pub struct SynCookies {
    key: hmac::Key,
}

/// The MSS values a cookie can carry (the largest not above the client's is taken): the
/// IPv6 minimum link less headers, common Ethernet-path values and jumbo frames.
pub const COOKIE_MSS: [u16; 8] = [536, 1220, 1380, 1420, 1440, 1460, 4036, 8940];

/// The counter period of [`SynCookies`].
const COOKIE_PERIOD_SECS: u64 = 64;

/// What a valid cookie restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSyn {
    /// The client's MSS (rounded down to [`COOKIE_MSS`]).
    pub mss: u16,
}

impl SynCookies {
    /// Cookies keyed from `secret` (the interface's ISN secret; another label, another key).
    pub fn new(secret: &[u8]) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let k = hmac::sign(&derive, b"ds-stack syn cookies");
        SynCookies {
            key: hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()),
        }
    }

    fn counter(now: Instant) -> u32 {
        ((now.total_millis().max(0) as u64 / 1000 / COOKIE_PERIOD_SECS) & 0x1f) as u32
    }

    fn tag(
        &self,
        t: u32,
        idx: u32,
        local: &SocketAddrV6,
        remote: &SocketAddrV6,
        client_isn: u32,
    ) -> u32 {
        let mut msg = [0u8; 41];
        msg[..16].copy_from_slice(&local.ip().octets());
        msg[16..18].copy_from_slice(&local.port().to_be_bytes());
        msg[18..34].copy_from_slice(&remote.ip().octets());
        msg[34..36].copy_from_slice(&remote.port().to_be_bytes());
        msg[36..40].copy_from_slice(&client_isn.to_be_bytes());
        msg[40] = ((t << 3) | idx) as u8;
        let d = hmac::sign(&self.key, &msg);
        let b = d.as_ref();
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The cookie (our ISN) for a SYN from `remote` with ISN `client_isn` and MSS option
    /// `mss` at `now`.
    pub fn make(
        &self,
        now: Instant,
        local: &SocketAddrV6,
        remote: &SocketAddrV6,
        client_isn: u32,
        mss: Option<u16>,
    ) -> u32 {
        let mss = mss.unwrap_or(536);
        let idx = COOKIE_MSS.iter().rposition(|m| *m <= mss).unwrap_or(0) as u32;
        let t = Self::counter(now);
        (t << 27) | (idx << 24) | self.tag(t, idx, local, remote, client_isn)
    }

    /// Check the cookie an ACK returns (`ack - 1`) for the client ISN `seq - 1`.
    pub fn check(
        &self,
        now: Instant,
        local: &SocketAddrV6,
        remote: &SocketAddrV6,
        client_isn: u32,
        cookie: u32,
    ) -> Option<CookieSyn> {
        let t = cookie >> 27;
        let idx = (cookie >> 24) & 0x7;
        let cur = Self::counter(now);
        // This period's or the previous one's.
        if t != cur && t != (cur + 31) & 0x1f {
            return None;
        }
        if self.tag(t, idx, local, remote, client_isn) != cookie & 0x00ff_ffff {
            return None;
        }
        Some(CookieSyn {
            mss: COOKIE_MSS[idx as usize],
        })
    }

    /// Our TSval for a cookie SYN-ACK: `tsval` (what the connection's clock says) with the
    /// client's window scale (low 4 bits, 15 = none) and SACK-permitted (bit 4) in its low 6
    /// bits, never above `tsval` (the connection's later TSvals must not go back, RFC 7323
    /// §5.3).
    pub fn ts_options(tsval: u32, wscale: Option<u8>, sack: bool) -> u32 {
        let opts = u32::from(wscale.map(|w| w.min(14)).unwrap_or(15)) | (u32::from(sack) << 4);
        let v = (tsval & !0x3f) | opts;
        if v > tsval {
            v.wrapping_sub(64)
        } else {
            v
        }
    }

    /// The options [`SynCookies::ts_options`] put in a TSval the client echoes.
    pub fn options_of(tsecr: u32) -> (Option<u8>, bool) {
        let w = (tsecr & 0xf) as u8;
        ((w != 15).then_some(w), tsecr & 0x10 != 0)
    }
}

/// 16 random bytes from the OS, for keys.
pub fn random_secret() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut k = [0u8; 16];
    // The system RNG failing is not recoverable in any useful way; fall back to a time-derived
    // key so the stack still runs (ISNs stay unpredictable enough for tests, not for production).
    if ring::rand::SystemRandom::new().fill(&mut k).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        k.copy_from_slice(&t.to_le_bytes());
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_expire() {
        let c = SynCookies::new(b"0123456789abcdef");
        let a: SocketAddrV6 = "[fd00::1]:80".parse().unwrap();
        let b: SocketAddrV6 = "[fd00::2]:5000".parse().unwrap();
        let t = Instant::from_millis(1_000_000);
        let k = c.make(t, &a, &b, 777, Some(1440));
        assert_eq!(c.check(t, &a, &b, 777, k), Some(CookieSyn { mss: 1440 }));
        // A later period still takes it, two periods later not.
        let later = t + std::time::Duration::from_secs(64);
        assert!(c.check(later, &a, &b, 777, k).is_some());
        let late = t + std::time::Duration::from_secs(130);
        assert!(c.check(late, &a, &b, 777, k).is_none());
        // Another tuple, another client ISN, a flipped bit: refused.
        let other: SocketAddrV6 = "[fd00::3]:5000".parse().unwrap();
        assert!(c.check(t, &a, &other, 777, k).is_none());
        assert!(c.check(t, &a, &b, 778, k).is_none());
        for bit in 0..32 {
            assert!(
                c.check(t, &a, &b, 777, k ^ (1 << bit)).is_none(),
                "bit {bit}"
            );
        }
        // MSS rounds down to the table.
        let k = c.make(t, &a, &b, 1, Some(1400));
        assert_eq!(c.check(t, &a, &b, 1, k).map(|s| s.mss), Some(1380));
        // Options in the TSval, never above the clock.
        for tsval in [0u32, 5, 63, 64, 1000, u32::MAX] {
            let v = SynCookies::ts_options(tsval, Some(7), true);
            assert_eq!(SynCookies::options_of(v), (Some(7), true));
            assert!(v <= tsval || tsval < 64, "{v} > {tsval}");
        }
        assert_eq!(
            SynCookies::options_of(SynCookies::ts_options(999, None, false)),
            (None, false)
        );
    }

    #[test]
    fn isn_depends_on_tuple_and_time() {
        let g = IsnGenerator::new(b"0123456789abcdef");
        let a: SocketAddrV6 = "[fd00::1]:80".parse().unwrap();
        let b: SocketAddrV6 = "[fd00::2]:5000".parse().unwrap();
        let c: SocketAddrV6 = "[fd00::2]:5001".parse().unwrap();
        let t = Instant::from_micros(1000);
        assert_ne!(g.isn(t, &a, &b), g.isn(t, &a, &c));
        assert_eq!(
            g.isn(t + std::time::Duration::from_micros(8), &a, &b),
            g.isn(t, &a, &b).wrapping_add(2)
        );
    }
}
