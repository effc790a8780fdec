//! The donor↔acceptor control channel.
//!
//! A connection state carries sequence numbers and client data: a forged state transfer is a
//! connection hijack and a read one leaks the client's bytes. So the channel is authenticated
//! and encrypted with keys only cluster members can derive.
//!
//! ## Handshake
//! Each side sends a plaintext hello of [`HELLO_LEN`] bytes: magic `"DSH"`, version, role
//! (initiator = donor, responder = acceptor) and a fresh 32-byte random salt. Both sides then
//! run HKDF-SHA256 (RFC 5869) with
//! * IKM = the cluster secret,
//! * salt = initiator salt ‖ responder salt (RFC 5869 §2.2 Extract; §3.1 on random salts),
//! * info = `"ds-handoff v1 i2r"` or `"ds-handoff v1 r2i"` (§2.3 Expand, one key per direction),
//!
//! giving two 256-bit ChaCha20-Poly1305 keys (RFC 8439 §2.8). Because both salts are fresh,
//! every session has new keys: frames of an old session never open in a new one. A side that
//! does not know the cluster secret derives other keys, so its first frame fails to open.
//!
//! ## Frames
//! `len: u32 BE ‖ ciphertext ‖ tag(16)`, `len` counting ciphertext and tag. The nonce is 32
//! zero bits ‖ a 64-bit big-endian per-direction counter (the RFC 8439 §2.8 / §4 layout of a
//! constant followed by a counter); it starts at 0, grows by one per frame and is never sent,
//! so it can never repeat under one key, and a replayed, reordered or dropped frame fails
//! authentication at the receiver. The length prefix is the additional authenticated data.
//! After any failure the codec is poisoned: the channel fails closed.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::msg::{Message, MsgError};

/// Hello magic.
const MAGIC: &[u8; 3] = b"DSH";
/// Hello / key-schedule version.
pub const CHANNEL_VERSION: u8 = 1;
/// Bytes of random salt each side contributes.
pub const SALT_LEN: usize = 32;
/// Length of a hello: magic, version, role, salt.
pub const HELLO_LEN: usize = 3 + 1 + 1 + SALT_LEN;
/// Poly1305 tag length (RFC 8439 §2.5).
pub const TAG_LEN: usize = 16;
/// Length-prefix bytes.
const LEN_LEN: usize = 4;
/// Default largest frame (ciphertext + tag): a full state with its buffers fits.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Shortest accepted cluster secret.
pub const MIN_SECRET_LEN: usize = 16;

/// Control-channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Socket error.
    #[error("control channel I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer's hello is malformed or from the wrong role or version.
    #[error("bad hello: {0}")]
    BadHello(&'static str),
    /// A frame failed authentication: tampered, replayed, reordered, or the peer holds another
    /// cluster secret.
    #[error("frame failed authentication (tampered, replayed, or wrong cluster secret)")]
    Auth,
    /// A frame announced a length above the limit (or below the tag length).
    #[error("frame length {0} out of bounds")]
    FrameLength(usize),
    /// The 2^64 nonces of a direction are used up.
    #[error("nonce space exhausted")]
    Exhausted,
    /// An earlier error closed the channel.
    #[error("channel poisoned by an earlier error")]
    Poisoned,
    /// The peer closed the connection.
    #[error("peer closed the control channel")]
    Closed,
    /// The cluster secret is too short.
    #[error("cluster secret shorter than {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// A frame opened but did not hold a valid message.
    #[error(transparent)]
    Message(#[from] MsgError),
}

/// The shared cluster secret (input keying material). Its `Debug` output is redacted.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// Read a secret from a file: its bytes without trailing line ends (so `echo secret >
    /// file` and `printf secret > file` give the same key), at least [`MIN_SECRET_LEN`].
    pub fn from_file(path: &std::path::Path) -> Result<Self, ChannelError> {
        let mut bytes = std::fs::read(path)?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Self::new(&bytes)
    }

    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, ChannelError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(ChannelError::WeakSecret);
        }
        Ok(ClusterSecret(bytes.to_vec()))
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Which end of the channel we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens the channel (the donor).
    Initiator,
    /// Accepts the channel (the acceptor).
    Responder,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Initiator => 1,
            Role::Responder => 2,
        }
    }
}

/// The first half of the handshake: our hello is sent, the peer's is awaited.
pub struct Handshake {
    role: Role,
    secret: ClusterSecret,
    salt: [u8; SALT_LEN],
    max_frame: usize,
}

impl Handshake {
    /// Start a handshake with a fresh random salt; returns the hello to send.
    pub fn new(
        role: Role,
        secret: &ClusterSecret,
    ) -> Result<(Self, [u8; HELLO_LEN]), ChannelError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| ChannelError::Random)?;
        let hs = Handshake {
            role,
            secret: secret.clone(),
            salt,
            max_frame: DEFAULT_MAX_FRAME,
        };
        let hello = hs.hello();
        Ok((hs, hello))
    }

    /// Change the largest frame accepted and sent.
    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max.max(TAG_LEN);
        self
    }

    fn hello(&self) -> [u8; HELLO_LEN] {
        let mut h = [0u8; HELLO_LEN];
        h[..3].copy_from_slice(MAGIC);
        h[3] = CHANNEL_VERSION;
        h[4] = self.role.code();
        h[5..].copy_from_slice(&self.salt);
        h
    }

    /// Take the peer's hello and derive the directional keys (RFC 5869 §2.2–2.3).
    pub fn finish(self, peer_hello: &[u8]) -> Result<Codec, ChannelError> {
        if peer_hello.len() != HELLO_LEN || &peer_hello[..3] != MAGIC {
            return Err(ChannelError::BadHello("not a handoff hello"));
        }
        if peer_hello[3] != CHANNEL_VERSION {
            return Err(ChannelError::BadHello("unsupported version"));
        }
        let peer_role = match self.role {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        };
        if peer_hello[4] != peer_role.code() {
            return Err(ChannelError::BadHello("peer has the same role"));
        }
        let peer_salt = &peer_hello[5..];
        if peer_salt == self.salt {
            // Our own hello reflected back.
            return Err(ChannelError::BadHello("reflected hello"));
        }
        let mut salt = Vec::with_capacity(2 * SALT_LEN);
        match self.role {
            Role::Initiator => {
                salt.extend_from_slice(&self.salt);
                salt.extend_from_slice(peer_salt);
            }
            Role::Responder => {
                salt.extend_from_slice(peer_salt);
                salt.extend_from_slice(&self.salt);
            }
        }
        // RFC 5869 §2.2: PRK = HMAC-SHA256(salt, IKM).
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&self.secret.0);
        let i2r = derive(&prk, b"ds-handoff v1 i2r")?;
        let r2i = derive(&prk, b"ds-handoff v1 r2i")?;
        let (seal, open) = match self.role {
            Role::Initiator => (i2r, r2i),
            Role::Responder => (r2i, i2r),
        };
        Ok(Codec {
            seal,
            open,
            send_ctr: 0,
            recv_ctr: 0,
            rx: Vec::new(),
            max_frame: self.max_frame,
            poisoned: false,
        })
    }
}

/// RFC 5869 §2.3: OKM = HKDF-Expand(PRK, info, 32) as a ChaCha20-Poly1305 key.
fn derive(prk: &hkdf::Prk, info: &'static [u8]) -> Result<LessSafeKey, ChannelError> {
    let info = [info];
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| ChannelError::Random)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// RFC 8439 §2.8 nonce: 32-bit constant (zero) ‖ 64-bit counter.
fn nonce(ctr: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sans-IO frame codec of an established channel: plaintext in → frame bytes out, and
/// received bytes in → plaintexts out.
pub struct Codec {
    seal: LessSafeKey,
    open: LessSafeKey,
    send_ctr: u64,
    recv_ctr: u64,
    rx: Vec<u8>,
    max_frame: usize,
    poisoned: bool,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("send_ctr", &self.send_ctr)
            .field("recv_ctr", &self.recv_ctr)
            .field("rx_pending", &self.rx.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Codec {
    /// Encrypt one plaintext into a frame (length prefix, ciphertext, tag).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if self.poisoned {
            return Err(ChannelError::Poisoned);
        }
        let len = plaintext.len() + TAG_LEN;
        if len > self.max_frame {
            return Err(ChannelError::FrameLength(len));
        }
        let ctr = self.send_ctr;
        self.send_ctr = ctr.checked_add(1).ok_or(ChannelError::Exhausted)?;
        let prefix = u32::try_from(len)
            .map_err(|_| ChannelError::FrameLength(len))?
            .to_be_bytes();
        let mut body = plaintext.to_vec();
        self.seal
            .seal_in_place_append_tag(nonce(ctr), Aad::from(prefix), &mut body)
            .map_err(|_| ChannelError::Exhausted)?;
        let mut out = Vec::with_capacity(LEN_LEN + body.len());
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Encode and seal a message.
    pub fn seal_msg(&mut self, m: &Message) -> Result<Vec<u8>, ChannelError> {
        self.seal(&m.encode())
    }

    /// Feed received bytes (any split: partial frames are kept).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.rx.extend_from_slice(bytes);
    }

    /// The next complete, authenticated plaintext, if one has arrived.
    pub fn poll_frame(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.poisoned {
            return Err(ChannelError::Poisoned);
        }
        let r = self.try_open();
        if r.is_err() {
            self.poisoned = true;
            self.rx.clear();
        }
        r
    }

    fn try_open(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        let Some(prefix) = self.rx.get(..LEN_LEN) else {
            return Ok(None);
        };
        let mut p = [0u8; LEN_LEN];
        p.copy_from_slice(prefix);
        let len = u32::from_be_bytes(p) as usize;
        if !(TAG_LEN..=self.max_frame).contains(&len) {
            return Err(ChannelError::FrameLength(len));
        }
        if self.rx.len() < LEN_LEN + len {
            return Ok(None);
        }
        let ctr = self.recv_ctr;
        let mut body: Vec<u8> = self.rx.drain(..LEN_LEN + len).skip(LEN_LEN).collect();
        let n = self
            .open
            .open_in_place(nonce(ctr), Aad::from(p), &mut body)
            .map_err(|_| ChannelError::Auth)?
            .len();
        body.truncate(n);
        self.recv_ctr = ctr.checked_add(1).ok_or(ChannelError::Exhausted)?;
        Ok(Some(body))
    }

    /// The next complete message, if one has arrived.
    pub fn poll_msg(&mut self) -> Result<Option<Message>, ChannelError> {
        match self.poll_frame()? {
            None => Ok(None),
            Some(p) => match Message::decode(&p) {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    self.poisoned = true;
                    Err(e.into())
                }
            },
        }
    }

    /// Frames sealed so far.
    pub fn frames_sent(&self) -> u64 {
        self.send_ctr
    }

    /// Frames opened so far.
    pub fn frames_received(&self) -> u64 {
        self.recv_ctr
    }
}

/// The codec over a [`TcpStream`]. The handshake blocks (bounded by a timeout); afterwards the
/// socket is non-blocking: [`Channel::send`] queues, [`Channel::poll`] moves bytes both ways
/// and returns a received message if there is one.
#[derive(Debug)]
pub struct Channel {
    stream: TcpStream,
    codec: Codec,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    bytes_sent: u64,
}

impl Channel {
    /// Connect to an acceptor as the initiator and run the handshake.
    pub fn connect(
        addr: SocketAddr,
        secret: &ClusterSecret,
        timeout: Duration,
    ) -> Result<Channel, ChannelError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        Self::handshake(stream, Role::Initiator, secret, timeout)
    }

    /// Run the responder's handshake on an accepted stream.
    pub fn accept(
        stream: TcpStream,
        secret: &ClusterSecret,
        timeout: Duration,
    ) -> Result<Channel, ChannelError> {
        Self::handshake(stream, Role::Responder, secret, timeout)
    }

    fn handshake(
        mut stream: TcpStream,
        role: Role,
        secret: &ClusterSecret,
        timeout: Duration,
    ) -> Result<Channel, ChannelError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let (hs, hello) = Handshake::new(role, secret)?;
        stream.write_all(&hello)?;
        let mut peer = [0u8; HELLO_LEN];
        stream.read_exact(&mut peer).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ChannelError::Closed,
            _ => ChannelError::Io(e),
        })?;
        let codec = hs.finish(&peer)?;
        stream.set_nonblocking(true)?;
        Ok(Channel {
            stream,
            codec,
            out: Vec::new(),
            out_pos: 0,
            bytes_sent: 0,
        })
    }

    /// Queue a message (it leaves on the next [`Channel::poll`] / [`Channel::flush`]).
    pub fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        let f = self.codec.seal_msg(m)?;
        self.bytes_sent += f.len() as u64;
        self.out.extend_from_slice(&f);
        self.flush()?;
        Ok(())
    }

    /// Seal a message into a frame without sending it, so that building a message and
    /// sending it can be timed apart. Frames must be passed to [`Channel::send_sealed`] in
    /// the order they were sealed (their nonces are sequential).
    pub fn seal(&mut self, m: &Message) -> Result<Vec<u8>, ChannelError> {
        self.codec.seal_msg(m)
    }

    /// Queue a frame from [`Channel::seal`] (it leaves now if the socket takes it).
    pub fn send_sealed(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        self.bytes_sent += frame.len() as u64;
        self.out.extend_from_slice(frame);
        self.flush()?;
        Ok(())
    }

    /// Write what the socket takes now; true when nothing is left queued.
    pub fn flush(&mut self) -> Result<bool, ChannelError> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Move bytes both ways; the next received message, if any.
    pub fn poll(&mut self) -> Result<Option<Message>, ChannelError> {
        self.flush()?;
        if let Some(m) = self.codec.poll_msg()? {
            return Ok(Some(m));
        }
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => {
                    self.codec.feed(&buf[..n]);
                    if let Some(m) = self.codec.poll_msg()? {
                        return Ok(Some(m));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Bytes queued but not yet taken by the socket (a large offer leaves in several writes;
    /// the caller should come back soon, see [`Channel::poll`]).
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Total frame bytes queued for sending so far (framing and tags included).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// The underlying stream (e.g. to read the peer address).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Queue raw bytes unchanged (tests inject forged frames with this).
    #[doc(hidden)]
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.out.extend_from_slice(bytes);
        self.flush()?;
        Ok(())
    }

    /// Access the codec (tests seal frames to tamper with them).
    #[doc(hidden)]
    pub fn codec_mut(&mut self) -> &mut Codec {
        &mut self.codec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &[u8], b: &[u8]) -> Result<(Codec, Codec), ChannelError> {
        let (hi, hello_i) = Handshake::new(Role::Initiator, &ClusterSecret::new(a)?)?;
        let (hr, hello_r) = Handshake::new(Role::Responder, &ClusterSecret::new(b)?)?;
        Ok((hi.finish(&hello_r)?, hr.finish(&hello_i)?))
    }

    const S: &[u8] = b"0123456789abcdef-cluster";

    #[test]
    fn round_trip_any_split() {
        let (mut i, mut r) = pair(S, S).unwrap();
        let mut wire = Vec::new();
        for k in 0..5u8 {
            wire.extend(i.seal(&vec![k; 1000 * k as usize]).unwrap());
        }
        // Feed one byte at a time.
        let mut got = Vec::new();
        for b in &wire {
            r.feed(&[*b]);
            while let Some(p) = r.poll_frame().unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got.len(), 5);
        for (k, p) in got.iter().enumerate() {
            assert_eq!(p, &vec![k as u8; 1000 * k]);
        }
        // And the other direction with its own key.
        let f = r.seal(b"back").unwrap();
        i.feed(&f);
        assert_eq!(i.poll_frame().unwrap().unwrap(), b"back");
    }

    #[test]
    fn tamper_replay_reorder_reflect_and_wrong_secret_fail() {
        // Tampered ciphertext, tag, or length.
        for at in [0usize, 4, 10, 4 + 3 + TAG_LEN - 1] {
            let (mut i, mut r) = pair(S, S).unwrap();
            let mut f = i.seal(b"abc").unwrap();
            f[at] ^= 1;
            r.feed(&f);
            assert!(r.poll_frame().is_err(), "flip at {at}");
            // Poisoned: even a good frame is refused afterwards.
            r.feed(&i.seal(b"x").unwrap());
            assert!(matches!(r.poll_frame(), Err(ChannelError::Poisoned)));
        }
        // Replay.
        let (mut i, mut r) = pair(S, S).unwrap();
        let f = i.seal(b"once").unwrap();
        r.feed(&f);
        r.poll_frame().unwrap().unwrap();
        r.feed(&f);
        assert!(matches!(r.poll_frame(), Err(ChannelError::Auth)));
        // Reorder.
        let (mut i, mut r) = pair(S, S).unwrap();
        let f0 = i.seal(b"0").unwrap();
        let f1 = i.seal(b"1").unwrap();
        r.feed(&f1);
        r.feed(&f0);
        assert!(matches!(r.poll_frame(), Err(ChannelError::Auth)));
        // Reflection: a frame sealed by the responder fed back to it.
        let (_, mut r) = pair(S, S).unwrap();
        let f = r.seal(b"mirror").unwrap();
        r.feed(&f);
        assert!(matches!(r.poll_frame(), Err(ChannelError::Auth)));
        // Wrong cluster secret.
        let (mut i, mut r) = pair(S, b"another-secret-of-16+").unwrap();
        r.feed(&i.seal(b"hi").unwrap());
        assert!(matches!(r.poll_frame(), Err(ChannelError::Auth)));
    }

    #[test]
    fn frame_size_and_hello_checks() {
        let (mut i, mut r) = pair(S, S).unwrap();
        r.max_frame = 100;
        r.feed(&i.seal(&[0u8; 200]).unwrap());
        assert!(matches!(
            r.poll_frame(),
            Err(ChannelError::FrameLength(216))
        ));
        let (mut i, _) = pair(S, S).unwrap();
        i.max_frame = 100;
        assert!(i.seal(&[0u8; 200]).is_err());
        // A huge announced length is refused before any buffering of the body.
        let (_, mut r) = pair(S, S).unwrap();
        r.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(r.poll_frame(), Err(ChannelError::FrameLength(_))));

        let secret = ClusterSecret::new(S).unwrap();
        let (h1, hello1) = Handshake::new(Role::Initiator, &secret).unwrap();
        let (h2, _) = Handshake::new(Role::Initiator, &secret).unwrap();
        assert!(matches!(
            h2.finish(&hello1),
            Err(ChannelError::BadHello("peer has the same role"))
        ));
        assert!(h1.finish(&hello1[..10]).is_err());
        assert!(ClusterSecret::new(b"short").is_err());
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
    }
}
