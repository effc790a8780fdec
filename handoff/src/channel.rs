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
//! ## Key confirmation
//! The hellos prove nothing: anyone can send one. So the first frame each side sends is a
//! fixed confirmation ([`CONFIRM`]), and a [`Channel`] counts as established
//! ([`Channel::is_established`]) only once the peer's confirmation opened, i.e. once the peer
//! proved it derived the same keys from the cluster secret. Until then the largest frame
//! accepted is that confirmation's ([`PREAUTH_MAX_FRAME`]): a peer without the key can make
//! a channel buffer no more than one read, whatever length it announces. A
//! [`crate::gate::ChannelGate`] bounds how many such channels wait, and for how long.
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
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use crate::msg::{Message, MsgError};

/// Hello magic.
const MAGIC: &[u8; 3] = b"DSH";
/// Hello / key-schedule version.
pub const CHANNEL_VERSION: u8 = 2;
/// Bytes of random salt each side contributes.
pub const SALT_LEN: usize = 32;
/// Length of a hello: magic, version, role, salt.
pub const HELLO_LEN: usize = 3 + 1 + 1 + SALT_LEN;
/// Poly1305 tag length (RFC 8439 §2.5).
pub const TAG_LEN: usize = 16;
/// Length-prefix bytes.
const LEN_LEN: usize = 4;
/// The most one read of an established channel takes from the socket.
const READ_CHUNK: usize = 64 * 1024;
/// Default largest frame (ciphertext + tag): a full state with its buffers fits.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// The key confirmation: the plaintext of the first frame in each direction.
pub const CONFIRM: &[u8] = b"ds-handoff key confirmation";
/// Largest frame (ciphertext + tag) received before the peer's key confirmation.
pub const PREAUTH_MAX_FRAME: usize = CONFIRM.len() + TAG_LEN;
/// A control channel's peer that stopped answering without closing (power loss, a partition)
/// is found dead by TCP keep-alive: probing after this much silence …
pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(15);
/// … every this often, …
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// … this many times; and data it does not acknowledge for [`USER_TIMEOUT`] ends the
/// channel too (RFC 5482, `TCP_USER_TIMEOUT`). The owner then drops the channel (and redials a
/// peer): an authenticated but dead peer holds a descriptor and buffers for half a minute at
/// most, not forever.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Bytes a channel keeps waiting for its peer to read before it refuses to queue more
/// ([`ChannelError::Backlog`]): room for two of the largest frames, so an honest peer busy
/// reading an offer never meets it, while one that never reads costs a bounded amount.
pub const MAX_BACKLOG: usize = 2 * DEFAULT_MAX_FRAME;

/// Messages an event loop takes from one channel in one turn. The rest wait in the socket or
/// the codec for the next turn (the owner then does not block: see the engine's
/// `max_wait`), so that one peer sending without pause (a broken or hostile cluster member)
/// costs the loop a bounded turn and cannot keep it from its other channels, the home agent
/// and the data path. Far above what an honest peer sends at once (Prepare and Offer; Accept,
/// Activated and a few Forwards).
pub const MESSAGES_PER_TURN: usize = 64;
/// See [`KEEPALIVE_PROBES`].
pub const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// More than [`MAX_BACKLOG`] bytes wait for the peer to read them: it reads too slowly,
    /// or not at all (a broken or hostile peer that sends requests and never takes the
    /// answers).
    #[error("the peer does not read: {0} bytes wait for it")]
    Backlog(usize),
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

/// Bytes on the wire of a frame carrying `plaintext` bytes (length prefix and tag included).
pub fn frame_len(plaintext: usize) -> usize {
    LEN_LEN + plaintext + TAG_LEN
}

/// Largest secret file read.
pub const MAX_SECRET_FILE: usize = 4096;

/// A secret file that cannot be trusted (others may read or change it, not a regular file,
/// too large), as an I/O error with the reason.
fn secret_file(why: String) -> ChannelError {
    ChannelError::Io(io::Error::new(io::ErrorKind::PermissionDenied, why))
}

/// The shared cluster secret (input keying material). Its `Debug` output is redacted.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// Read a secret from a file: its bytes without trailing line ends (so `echo secret >
    /// file` and `printf secret > file` give the same key), at least [`MIN_SECRET_LEN`].
    ///
    /// The file must be a regular file that only its owner may read or write (mode 0600 or
    /// stricter: anyone else who can read it can join the cluster and hijack connections;
    /// anyone who can write it can replace the key), of at most [`MAX_SECRET_FILE`] bytes, so
    /// that a device such as `/dev/zero` given by mistake is refused, not read forever.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ChannelError> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::open(path)?;
        let md = f.metadata()?;
        let name = path.display();
        if !md.is_file() {
            return Err(secret_file(format!("{name}: not a regular file")));
        }
        let mode = md.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(secret_file(format!(
                "{name}: mode {mode:04o} lets others read or write it; make it owner-only \
                 (chmod 600 {name})"
            )));
        }
        let mut bytes = Vec::new();
        f.take(MAX_SECRET_FILE as u64 + 1).read_to_end(&mut bytes)?;
        if bytes.len() > MAX_SECRET_FILE {
            return Err(secret_file(format!(
                "{name}: larger than {MAX_SECRET_FILE} bytes"
            )));
        }
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

impl ClusterSecret {
    /// The secret's bytes, to derive the keys of other protocols from (the membership
    /// protocol's HMAC key); never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
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
            recv_limit: None,
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
    /// A lower bound on received frames while set (before the peer proved the key).
    recv_limit: Option<usize>,
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

    /// Accept received frames of at most `max` bytes (ciphertext + tag) until
    /// [`Codec::lift_recv_limit`]: before a peer is authenticated, what it announces must not
    /// size our buffers.
    pub fn limit_recv(&mut self, max: usize) {
        self.recv_limit = Some(max.max(TAG_LEN));
    }

    /// Back to the codec's largest frame for received frames.
    pub fn lift_recv_limit(&mut self) {
        self.recv_limit = None;
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
        let max = self
            .recv_limit
            .unwrap_or(self.max_frame)
            .min(self.max_frame);
        if !(TAG_LEN..=max).contains(&len) {
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

/// The channel over a TCP stream, non-blocking from the start: the handshake runs inside
/// [`Channel::poll`] as the peer's hello arrives, and messages sent before it completed are
/// sealed and sent then. Nothing here blocks or reads a clock; a caller that wants a bound on
/// the handshake drops a channel that is not [`Channel::is_established`] in time.
pub struct Channel {
    stream: TcpStream,
    /// Until the peer's hello arrived: our half of the handshake and the peer's hello so far.
    handshake: Option<(Handshake, Vec<u8>)>,
    codec: Option<Codec>,
    /// The peer's key confirmation opened: it knows the cluster secret.
    confirmed: bool,
    /// Messages sent before the handshake completed.
    queued: Vec<Message>,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    bytes_sent: u64,
    /// The kernel's receive stamp of the bytes of the last read (`SO_TIMESTAMPNS`), and the
    /// control-message buffer it comes in (allocated once).
    arrival: Option<SystemTime>,
    cmsg: Vec<u8>,
    /// What [`Channel::poll`] reads into before the codec takes it: allocated at the first
    /// poll (after the handshake, so an unauthenticated peer never costs it) and kept, as a
    /// fresh zeroed 64 KiB buffer per call cost a memset in every round of the owner's loop.
    scratch: Vec<u8>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.stream.peer_addr().ok())
            .field("established", &self.confirmed)
            .field("pending_output", &self.pending_output())
            .finish()
    }
}

impl Channel {
    /// Open a channel to an acceptor as the initiator: a non-blocking connect, our hello
    /// queued behind it.
    pub fn connect(addr: SocketAddr, secret: &ClusterSecret) -> Result<Channel, ChannelError> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        Self::start(sock.into(), Role::Initiator, secret)
    }

    /// Take an accepted stream as the responder (made non-blocking here).
    pub fn accept(stream: TcpStream, secret: &ClusterSecret) -> Result<Channel, ChannelError> {
        stream.set_nonblocking(true)?;
        Self::start(stream, Role::Responder, secret)
    }

    fn start(
        stream: TcpStream,
        role: Role,
        secret: &ClusterSecret,
    ) -> Result<Channel, ChannelError> {
        stream.set_nodelay(true)?;
        let sock = socket2::SockRef::from(&stream);
        sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_PROBES),
        )?;
        sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
        // Receive stamps, so a reply's arrival is known however late this side reads it
        // (see [`Channel::arrival`]). Best effort: without them there is no stamp.
        if let Err(e) = nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        ) {
            tracing::debug!("no receive stamps on the control channel: {e}");
        }
        let (hs, hello) = Handshake::new(role, secret)?;
        let mut c = Channel {
            stream,
            handshake: Some((hs, Vec::with_capacity(HELLO_LEN))),
            codec: None,
            confirmed: false,
            queued: Vec::new(),
            out: hello.to_vec(),
            out_pos: 0,
            bytes_sent: 0,
            arrival: None,
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
            scratch: Vec::new(),
        };
        // A connect still in progress takes nothing yet: the hello waits in `out`.
        c.flush()?;
        Ok(c)
    }

    /// Whether the handshake completed: keys derived from both hellos and the peer's key
    /// confirmation opened (it knows the cluster secret).
    pub fn is_established(&self) -> bool {
        self.confirmed
    }

    /// Queue a message (it leaves now if the socket takes it, or once the handshake is done).
    pub fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        // Checked before sealing, which takes a nonce: a frame refused leaves the stream
        // intact (the owner drops the channel anyway).
        let waiting = self.out.len() - self.out_pos;
        if waiting > MAX_BACKLOG {
            return Err(ChannelError::Backlog(waiting));
        }
        let Some(codec) = self.codec.as_mut() else {
            self.queued.push(m.clone());
            return Ok(());
        };
        let f = codec.seal_msg(m)?;
        self.bytes_sent += f.len() as u64;
        self.out.extend_from_slice(&f);
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
                // A non-blocking connect not finished yet.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(self.queued.is_empty())
    }

    /// Move bytes both ways (the handshake first); the next received message, if any.
    pub fn poll(&mut self) -> Result<Option<Message>, ChannelError> {
        self.flush()?;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(READ_CHUNK, 0);
        let r = self.read_msg(&mut buf);
        self.scratch = buf;
        r
    }

    /// The next message, reading through `buf` until one is complete or the socket is dry.
    fn read_msg(&mut self, buf: &mut [u8]) -> Result<Option<Message>, ChannelError> {
        loop {
            if let Some(m) = self.next_msg()? {
                return Ok(Some(m));
            }
            if !self.read_some(buf)? {
                return Ok(None);
            }
        }
    }

    /// Advance the handshake only: true once the peer's key confirmation opened. Messages
    /// that arrived behind it stay queued for [`Channel::poll`]. Reads no more than a hello
    /// and a few frames' worth at a time, so an unauthenticated peer costs little.
    pub fn poll_handshake(&mut self) -> Result<bool, ChannelError> {
        self.flush()?;
        let mut buf = [0u8; 4 * PREAUTH_MAX_FRAME];
        loop {
            self.take_confirm()?;
            if self.confirmed {
                return Ok(true);
            }
            if !self.read_some(&mut buf)? {
                return Ok(false);
            }
        }
    }

    /// One read into the handshake or the codec; false when the socket has nothing now.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<bool, ChannelError> {
        // Before the keys exist, read no further than the hello: what follows it is
        // ciphertext for the codec.
        let want = match &self.handshake {
            Some((_, got)) => HELLO_LEN - got.len(),
            None => buf.len(),
        };
        match self.recv(&mut buf[..want]) {
            Ok(0) => Err(ChannelError::Closed),
            Ok(n) => {
                if let Some((_, got)) = self.handshake.as_mut() {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() == HELLO_LEN {
                        self.establish()?;
                    }
                } else if let Some(codec) = self.codec.as_mut() {
                    codec.feed(&buf[..n]);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            // A non-blocking connect not finished yet.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// One `recvmsg`, keeping the kernel's receive stamp of what it returned.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
        let mut iov = [io::IoSliceMut::new(buf)];
        let m = recvmsg::<SockaddrStorage>(
            self.stream.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let n = m.bytes;
        if n > 0 {
            let mut stamp = None;
            if let Ok(cmsgs) = m.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmTimestampns(t) = c {
                        let (s, ns) = (t.tv_sec(), t.tv_nsec());
                        stamp = u64::try_from(s)
                            .ok()
                            .zip(u32::try_from(ns).ok())
                            .map(|(s, ns)| SystemTime::UNIX_EPOCH + Duration::new(s, ns));
                    }
                }
            }
            self.arrival = stamp;
        }
        Ok(n)
    }

    /// When the bytes that completed the message [`Channel::poll`] last returned reached this
    /// host: the kernel's receive stamp (`SO_TIMESTAMPNS`, wall clock) of the read that
    /// brought them. A message is only decoded once no earlier one is left, and a read only
    /// happens then, so the last read is the one that completed it. `None` where the kernel
    /// gave no stamp. A caller that reads its messages late (its process was not running)
    /// still learns when they arrived: the donor's phase 2 ends there.
    pub fn arrival(&self) -> Option<SystemTime> {
        self.arrival
    }

    /// Open the peer's key confirmation if it is there: the first frame must be it.
    fn take_confirm(&mut self) -> Result<(), ChannelError> {
        let Some(codec) = self.codec.as_mut() else {
            return Ok(());
        };
        if self.confirmed {
            return Ok(());
        }
        match codec.poll_frame()? {
            None => Ok(()),
            Some(f) if f == CONFIRM => {
                self.confirmed = true;
                codec.lift_recv_limit();
                Ok(())
            }
            Some(_) => Err(ChannelError::BadHello("no key confirmation")),
        }
    }

    /// The next message from what the codec holds, after the peer's key confirmation.
    fn next_msg(&mut self) -> Result<Option<Message>, ChannelError> {
        self.take_confirm()?;
        match self.codec.as_mut() {
            Some(codec) if self.confirmed => codec.poll_msg(),
            _ => Ok(None),
        }
    }

    /// The peer's hello is complete: derive the keys, send our key confirmation and what was
    /// queued.
    fn establish(&mut self) -> Result<(), ChannelError> {
        let Some((hs, hello)) = self.handshake.take() else {
            return Ok(());
        };
        let mut codec = hs.finish(&hello)?;
        codec.limit_recv(PREAUTH_MAX_FRAME);
        let confirm = codec.seal(CONFIRM)?;
        self.out.extend_from_slice(&confirm);
        self.codec = Some(codec);
        for m in std::mem::take(&mut self.queued) {
            self.send(&m)?;
        }
        self.flush()?;
        Ok(())
    }

    /// Bytes queued but not yet taken by the socket (a large offer leaves in several writes;
    /// the caller should come back soon, see [`Channel::poll`]), or messages waiting for the
    /// handshake.
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.out_pos + self.queued.len()
    }

    /// Whether [`Channel::poll`] may make progress without the socket turning readable: the
    /// handshake is not complete, output is pending, or received bytes wait in the codec (a
    /// channel handed over by the gate may hold messages that came behind the key
    /// confirmation). An owner that knows which sockets are readable may skip the others.
    pub fn wants_poll(&self) -> bool {
        !self.confirmed
            || self.pending_output() > 0
            || self.codec.as_ref().is_some_and(|c| !c.rx.is_empty())
    }

    /// Total frame bytes queued for sending so far (framing and tags included; the hello and
    /// the key confirmation not).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Hold written frames back until uncorked (`TCP_CORK`): frames written in between leave
    /// in as few segments as possible, so a peer woken by the first reads them all at once
    /// (an acceptor's Accept and Activated). Uncorking sends what is held at once.
    pub fn set_cork(&self, on: bool) -> Result<(), ChannelError> {
        socket2::SockRef::from(&self.stream).set_cork(on)?;
        Ok(())
    }

    /// The underlying stream (e.g. to read the peer address, or its fd to wait on).
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

    /// Whether both hellos are in and the keys derived (the peer's key confirmation may not
    /// have been checked yet: see [`Channel::is_established`]). Tests stop their setup here,
    /// so that the confirmation's check happens inside the exchange they observe.
    #[doc(hidden)]
    pub fn has_keys(&self) -> bool {
        self.codec.is_some()
    }

    /// The codec, once the keys are derived (tests seal frames to tamper with them).
    #[doc(hidden)]
    pub fn codec_mut(&mut self) -> Option<&mut Codec> {
        self.codec.as_mut()
    }
}

#[cfg(test)]
mod tests {
    /// Both ends of a channel find a dead peer by keep-alive and the user timeout.
    #[test]
    fn channels_probe_silent_peers() {
        use super::*;
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let secret = ClusterSecret::new(b"a cluster secret of 32 bytes ...").unwrap();
        let a = Channel::connect(l.local_addr().unwrap(), &secret).unwrap();
        let (s, _) = l.accept().unwrap();
        let b = Channel::accept(s, &secret).unwrap();
        for c in [&a, &b] {
            let sock = socket2::SockRef::from(&c.stream);
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(sock.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(sock.keepalive_retries().unwrap(), KEEPALIVE_PROBES);
            assert_eq!(sock.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        }
    }

    #[test]
    fn secret_files_must_be_private_regular_and_small() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ds-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "a cluster secret of 32 bytes ...\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o622, 0o666] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ClusterSecret::from_file(&f).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterSecret::from_file(&f).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(ClusterSecret::from_file(&f).is_ok());
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ClusterSecret::from_file(&big),
            Err(e) if e.to_string().contains("larger")
        ));
        // A device is refused before anything is read from it.
        assert!(matches!(
            ClusterSecret::from_file(std::path::Path::new("/dev/zero")),
            Err(e) if e.to_string().contains("regular")
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
