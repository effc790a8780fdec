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
