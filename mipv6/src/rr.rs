//! Return-routability cryptography (RFC 6275 §5.2) with `ring`.
//!
//! - keygen tokens (§5.2.5):
//!   `home token = First(64, HMAC_SHA1(Kcn, home address | nonce | 0))`,
//!   `care-of token = First(64, HMAC_SHA1(Kcn, care-of address | nonce | 1))`, where the final
//!   0 or 1 is a single octet;
//! - binding management key (§5.2.5): `Kbm = SHA1(home token | care-of token)`, or
//!   `SHA1(home token)` when deleting a binding (lifetime 0 or care-of = home address);
//! - authenticator (§6.2.7): `First(96, HMAC_SHA1(Kbm, care-of address | correspondent
//!   address | MH Data))`, MH Data being the Mobility Header with a zero checksum and without
//!   the authenticator itself.
//!
//! Also the RFC 4285 §5.1 MN-HA authenticator used for home registrations:
//! `First(96, HMAC_SHA1(MN-HA key, care-of address | home address | MH Data))`, MH Data being
//! the Mobility Header up to and including the Mobility SPI of the authentication option,
//! with a zero checksum.

use crate::consts::{MAX_NONCE_LIFETIME, MAX_TOKEN_LIFETIME};
use crate::wire::option::{kind, OptionIter, BAD_LEN};
use crate::wire::{Error, MhPacket, MhRepr, MobilityOption, Result};
use crate::Instant;
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::Ipv6Addr;
use std::time::Duration;

/// A 64-bit keygen token (§5.2.5).
pub type Token = [u8; 8];
/// A 64-bit nonce (§5.2.2; the nonce never leaves the correspondent, its size is ours).
pub type Nonce = [u8; 8];
/// The binding management key Kbm, a SHA-1 digest (§5.2.5).
pub type Kbm = [u8; 20];
/// The correspondent's secret Kcn: 20 octets (§5.2.1).
pub type Kcn = [u8; 20];
/// A 96-bit authenticator.
pub type Authenticator = [u8; BAD_LEN];

/// How often the correspondent starts a new nonce. With MAX_NONCE_LIFETIME (240 s) and
/// MAX_TOKEN_LIFETIME (210 s), a token from the newest nonce stays usable for its whole
/// lifetime (§5.2.7): 240 − 210 = 30 s.
pub const NONCE_REGEN_INTERVAL: Duration =
    Duration::from_secs(MAX_NONCE_LIFETIME.as_secs() - MAX_TOKEN_LIFETIME.as_secs());

/// Which test a token answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenKind {
    /// Home keygen token (final octet 0).
    Home,
    /// Care-of keygen token (final octet 1).
    CareOf,
}

/// `First(64, HMAC_SHA1(Kcn, address | nonce | 0 or 1))` (§5.2.5).
pub fn keygen_token(kcn: &Kcn, address: Ipv6Addr, nonce: &Nonce, which: TokenKind) -> Token {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, kcn);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&address.octets());
    ctx.update(nonce);
    ctx.update(&[match which {
        TokenKind::Home => 0,
        TokenKind::CareOf => 1,
    }]);
    let tag = ctx.sign();
    let mut t = [0u8; 8];
    t.copy_from_slice(&tag.as_ref()[..8]);
    t
}

/// `Kbm = SHA1(home token | care-of token)`, or `SHA1(home token)` for a deletion (§5.2.5).
pub fn kbm(home: &Token, care_of: Option<&Token>) -> Kbm {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(home);
    if let Some(c) = care_of {
        ctx.update(c);
    }
    let d = ctx.finish();
    let mut k = [0u8; 20];
    k.copy_from_slice(d.as_ref());
    k
}

/// `First(96, HMAC_SHA1(key, a | b | data))`: the shape of both the RR authenticator (§6.2.7)
/// and the RFC 4285 §5.1 MN-HA authenticator.
pub fn hmac_sha1_96(key: &[u8], a: Ipv6Addr, b: Ipv6Addr, data: &[u8]) -> Authenticator {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&a.octets());
    ctx.update(&b.octets());
    ctx.update(data);
    let tag = ctx.sign();
    let mut out = [0u8; BAD_LEN];
    out.copy_from_slice(&tag.as_ref()[..BAD_LEN]);
    out
}

/// The RR authenticator (§6.2.7) over `mh_data` (see [`rr_mh_data`]).
pub fn authenticator(kbm: &Kbm, care_of: Ipv6Addr, cn: Ipv6Addr, mh_data: &[u8]) -> Authenticator {
    hmac_sha1_96(kbm, care_of, cn, mh_data)
}

/// Locate the option of type `want` in an encoded Mobility Header: returns the offset of its
/// data and its length. Errors if it is absent or not the last non-padding option.
fn find_last_option(mh: &[u8], want: u8) -> Result<(usize, usize)> {
    let p = MhPacket::new_checked(mh)?;
    let opts = p.options();
    let base = p.bytes().len() - opts.len();
    let mut found = None;
    let mut pos = 0;
    for item in OptionIter::new(opts) {
        let (k, d) = item?;
        let len = if k == kind::PAD1 { 1 } else { 2 + d.len() };
        if k == want {
            found = Some((base + pos + 2, d.len()));
        } else if k != kind::PAD1 && k != kind::PADN && found.is_some() {
            return Err(Error::Malformed(
                "authentication option is not the last option",
            ));
        }
        pos += len;
    }
    found.ok_or(Error::Malformed("authentication option missing"))
}

/// MH Data for the RR authenticator (§6.2.7): the encoded Mobility Header with a zero
/// checksum and without the Binding Authorization Data authenticator.
pub fn rr_mh_data(mh: &[u8]) -> Result<Vec<u8>> {
    let (at, len) = find_last_option(mh, kind::BINDING_AUTH_DATA)?;
    if len != BAD_LEN {
        return Err(Error::Malformed("authenticator length"));
    }
    let mut v = Vec::with_capacity(mh.len() - len);
    v.extend_from_slice(&mh[..at]);
    v.extend_from_slice(&mh[at + len..]);
    v[4] = 0;
    v[5] = 0;
    Ok(v)
}

/// Append a Binding Authorization Data option to `repr` and fill it (§6.2.7). Any existing
/// BAD option is replaced. The checksum is still to be computed (`to_bytes`).
pub fn sign_rr(repr: &mut MhRepr, kbm: &Kbm, care_of: Ipv6Addr, cn: Ipv6Addr) {
    repr.options
        .retain(|o| !matches!(o, MobilityOption::BindingAuthData(_)));
    repr.options
        .push(MobilityOption::BindingAuthData([0; BAD_LEN]));
    let bytes = repr.emit();
    // The option was just emitted, so the data is well formed.
    let data = rr_mh_data(&bytes).unwrap_or_default();
    let a = authenticator(kbm, care_of, cn, &data);
    if let Some(MobilityOption::BindingAuthData(slot)) = repr.options.last_mut() {
        *slot = a;
    }
}

/// Check the Binding Authorization Data of an encoded Mobility Header (§9.5.1), in constant
/// time.
pub fn verify_rr(mh: &[u8], kbm: &Kbm, care_of: Ipv6Addr, cn: Ipv6Addr) -> bool {
    let Ok((at, len)) = find_last_option(mh, kind::BINDING_AUTH_DATA) else {
        return false;
    };
    let Ok(data) = rr_mh_data(mh) else {
        return false;
    };
    let expected = authenticator(kbm, care_of, cn, &data);
    ring_eq(&expected, &mh[at..at + len])
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// MH Data for the RFC 4285 §5.1 authenticator: the Mobility Header up to and including the
/// Mobility SPI of the (last) Mobility Message Authentication option, checksum zeroed.
pub fn mn_ha_mh_data(mh: &[u8]) -> Result<Vec<u8>> {
    let (at, len) = find_last_option(mh, kind::MESSAGE_AUTH)?;
    if len < 5 {
        return Err(Error::Malformed("auth option length"));
    }
    let mut v = mh[..at + 5].to_vec();
    v[4] = 0;
    v[5] = 0;
    Ok(v)
}

/// Append an RFC 4285 MN-HA Mobility Message Authentication option and fill it:
/// `First(96, HMAC_SHA1(key, care-of | home | MH Data))` (§5.1).
pub fn sign_mn_ha(repr: &mut MhRepr, spi: u32, key: &[u8], care_of: Ipv6Addr, home: Ipv6Addr) {
    repr.options
        .retain(|o| !matches!(o, MobilityOption::MessageAuth { .. }));
    repr.options.push(MobilityOption::MessageAuth {
        subtype: crate::wire::option::AUTH_SUBTYPE_MN_HA,
        spi,
        auth: vec![0; BAD_LEN],
    });
    let bytes = repr.emit();
    let data = mn_ha_mh_data(&bytes).unwrap_or_default();
    let a = hmac_sha1_96(key, care_of, home, &data);
    if let Some(MobilityOption::MessageAuth { auth, .. }) = repr.options.last_mut() {
        *auth = a.to_vec();
    }
}

/// Verify an RFC 4285 MN-HA authenticator (constant-time comparison). Returns the SPI on
/// success so the caller can check it selected `key`.
pub fn verify_mn_ha(mh: &[u8], key: &[u8], care_of: Ipv6Addr, home: Ipv6Addr) -> bool {
    let Ok((at, len)) = find_last_option(mh, kind::MESSAGE_AUTH) else {
        return false;
    };
    let Ok(data) = mn_ha_mh_data(mh) else {
        return false;
    };
    let expected = hmac_sha1_96(key, care_of, home, &data);
    ring_eq(&expected, &mh[at + 5..at + len])
}

/// The correspondent's return-routability state (§5.2.1, §5.2.2): the secret Kcn and the
/// rotating array of nonces, each with an index. Nonces come from a keyed PRF over a counter
/// (HMAC-SHA256 with a second secret), so runs are reproducible from the secrets.
#[derive(Debug, Clone)]
pub struct NonceTable {
    kcn: Kcn,
    nonce_key: [u8; 32],
    nonces: VecDeque<(u16, Nonce, Instant)>,
    next_index: u16,
}

impl NonceTable {
    /// A table from the correspondent's secrets.
    pub fn new(kcn: Kcn, nonce_key: [u8; 32]) -> Self {
        NonceTable {
            kcn,
            nonce_key,
            nonces: VecDeque::new(),
            next_index: 0,
        }
    }

    /// The secret Kcn.
    pub fn kcn(&self) -> &Kcn {
        &self.kcn
    }

    fn make_nonce(&self, index: u16, now: Instant) -> Nonce {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.nonce_key);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&index.to_be_bytes());
        ctx.update(&now.total_micros().to_be_bytes());
        let mut n = [0u8; 8];
        n.copy_from_slice(&ctx.sign().as_ref()[..8]);
        n
    }

    /// Drop nonces older than MAX_NONCE_LIFETIME (§5.2.7) and start a new one when the newest
    /// is older than [`NONCE_REGEN_INTERVAL`].
    pub fn refresh(&mut self, now: Instant) {
        while let Some(&(_, _, t)) = self.nonces.front() {
            if now.saturating_since(t) >= MAX_NONCE_LIFETIME {
                self.nonces.pop_front();
            } else {
                break;
            }
        }
        let need = match self.nonces.back() {
            None => true,
            Some(&(_, _, t)) => now.saturating_since(t) >= NONCE_REGEN_INTERVAL,
        };
        if need {
            let idx = self.next_index;
            self.next_index = self.next_index.wrapping_add(1);
            let n = self.make_nonce(idx, now);
            self.nonces.push_back((idx, n, now));
        }
    }

    /// The current nonce and its index (refreshing first).
    pub fn current(&mut self, now: Instant) -> (u16, Nonce) {
        self.refresh(now);
        match self.nonces.back() {
            Some(&(i, n, _)) => (i, n),
            // refresh always leaves one nonce.
            None => (0, [0; 8]),
        }
    }

    /// The nonce with `index`, if it has not expired (§5.2.7: not accepted beyond
    /// MAX_NONCE_LIFETIME).
    pub fn lookup(&self, index: u16, now: Instant) -> Option<Nonce> {
        self.nonces
            .iter()
            .find(|(i, _, t)| *i == index && now.saturating_since(*t) < MAX_NONCE_LIFETIME)
            .map(|&(_, n, _)| n)
    }

    /// Regenerate a keygen token for `address` with nonce `index` (§5.2.5), if the nonce is
    /// still valid.
    pub fn token(
        &self,
        address: Ipv6Addr,
        index: u16,
        which: TokenKind,
        now: Instant,
    ) -> Option<Token> {
        self.lookup(index, now)
            .map(|n| keygen_token(&self.kcn, address, &n, which))
    }
}
