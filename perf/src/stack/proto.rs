//! The tiny application protocol every benchmark server speaks, and the server side of it as a
//! non-blocking state machine shared by the two userspace stacks (ours and smoltcp).
//!
//! A connection starts with a 9-byte header from the client: one mode byte and a big-endian
//! `u64` argument.
//!
//! * `U` (upload, client → server): the client then sends bytes until it shuts down its sending
//!   side; the server reads and discards them, and at EOF answers with the byte count it read
//!   (big-endian `u64`) and closes.
//! * `D` (download, server → client): the server sends `arg` bytes; the client reads them all,
//!   then shuts down its sending side; the server closes at EOF.
//! * `E` (echo): the server sends back every byte it receives, until EOF, then closes.
//!
//! In every mode the client closes first, so no server socket lingers in TIME-WAIT.

use std::io;

/// Header length: mode byte + `u64` argument.
pub const HEADER_LEN: usize = 9;
/// Upload mode byte.
pub const MODE_UPLOAD: u8 = b'U';
/// Download mode byte.
pub const MODE_DOWNLOAD: u8 = b'D';
/// Echo mode byte.
pub const MODE_ECHO: u8 = b'E';

/// Encode a request header.
pub fn header(mode: u8, arg: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = mode;
    h[1..].copy_from_slice(&arg.to_be_bytes());
    h
}

/// Outcome of a non-blocking read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were copied (never 0).
    Data(usize),
    /// Nothing ready now.
    Empty,
    /// The peer closed its sending side and everything has been read.
    Eof,
}

/// A non-blocking connected TCP socket of some stack, as the session sees it.
pub trait Conn {
    /// Read what is ready.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Read>;
    /// Queue data; returns how much was accepted (0: send buffer full).
    fn send(&mut self, data: &[u8]) -> io::Result<usize>;
    /// Close the sending side after the queued data.
    fn close(&mut self) -> io::Result<()>;
}

#[derive(Debug)]
enum Phase {
    Header,
    Upload {
        total: u64,
    },
    Download {
        remaining: u64,
    },
    Echo,
    /// Send `out`, then close.
    Closing,
    Done,
}

/// Server side of one connection.
pub struct Session {
    phase: Phase,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    /// Bytes waiting for room in the send buffer.
    out: Vec<u8>,
    out_off: usize,
}

/// What a session did in one [`Session::drive`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Some bytes moved (call again soon).
    pub moved: bool,
    /// The session has closed its side and has nothing more to do.
    pub done: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

/// Read buffer size of the userspace servers' application loop.
pub const APP_BUF: usize = 64 << 10;

impl Session {
    /// A session waiting for its header.
    pub fn new() -> Self {
        Session {
            phase: Phase::Header,
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            out: Vec::new(),
            out_off: 0,
        }
    }

    fn flush_out(&mut self, c: &mut dyn Conn, moved: &mut bool) -> io::Result<bool> {
        while self.out_off < self.out.len() {
            let n = c.send(&self.out[self.out_off..])?;
            if n == 0 {
                return Ok(false);
            }
            *moved = true;
            self.out_off += n;
        }
        self.out.clear();
        self.out_off = 0;
        Ok(true)
    }

    /// Move as much data as the socket allows right now. `buf` is scratch space; `zeros` is the
    /// payload source for downloads.
    pub fn drive(
        &mut self,
        c: &mut dyn Conn,
        buf: &mut [u8],
        zeros: &[u8],
    ) -> io::Result<Progress> {
        let mut moved = false;
        loop {
            match &mut self.phase {
                Phase::Header => match c.recv(&mut self.hdr[self.hdr_len..])? {
                    Read::Empty => break,
                    Read::Eof => {
                        self.phase = Phase::Closing;
                    }
                    Read::Data(n) => {
                        moved = true;
                        self.hdr_len += n;
                        if self.hdr_len == HEADER_LEN {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(&self.hdr[1..]);
                            let arg = u64::from_be_bytes(a);
                            self.phase = match self.hdr[0] {
                                MODE_UPLOAD => Phase::Upload { total: 0 },
                                MODE_DOWNLOAD => Phase::Download { remaining: arg },
                                MODE_ECHO => Phase::Echo,
                                m => {
                                    return Err(io::Error::new(
                                        io::ErrorKind::InvalidData,
                                        format!("unknown mode byte {m:#04x}"),
                                    ))
                                }
                            };
                        }
                    }
                },
                Phase::Upload { total } => match c.recv(buf)? {
                    Read::Empty => break,
                    Read::Data(n) => {
                        moved = true;
                        *total += n as u64;
                    }
                    Read::Eof => {
                        self.out.extend_from_slice(&total.to_be_bytes());
                        self.phase = Phase::Closing;
                    }
                },
                Phase::Download { remaining } => {
                    if *remaining > 0 {
                        let want = (*remaining).min(zeros.len() as u64) as usize;
                        let n = c.send(&zeros[..want])?;
                        if n == 0 {
                            break;
                        }
                        moved = true;
                        *remaining -= n as u64;
                        continue;
                    }
                    match c.recv(buf)? {
                        Read::Empty => break,
                        Read::Data(_) => moved = true,
                        Read::Eof => self.phase = Phase::Closing,
                    }
                }
                Phase::Echo => {
                    if !self.flush_out(c, &mut moved)? {
                        break;
                    }
                    match c.recv(buf)? {
                        Read::Empty => break,
                        Read::Data(n) => {
                            moved = true;
                            self.out.extend_from_slice(&buf[..n]);
                        }
                        Read::Eof => self.phase = Phase::Closing,
                    }
                }
                Phase::Closing => {
                    if !self.flush_out(c, &mut moved)? {
                        break;
                    }
                    c.close()?;
                    moved = true;
                    self.phase = Phase::Done;
                }
                Phase::Done => break,
            }
        }
        Ok(Progress {
            moved,
            done: matches!(self.phase, Phase::Done),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// An in-memory connection: `input` is what the client sent, `output` what the server sent.
    struct Mem {
        input: VecDeque<u8>,
        eof: bool,
        output: Vec<u8>,
        room: usize,
        closed: bool,
    }

    impl Conn for Mem {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<Read> {
            if self.input.is_empty() {
                return Ok(if self.eof { Read::Eof } else { Read::Empty });
            }
            let n = buf.len().min(self.input.len());
            for b in buf.iter_mut().take(n) {
                *b = self.input.pop_front().unwrap_or(0);
            }
            Ok(Read::Data(n))
        }
        fn send(&mut self, data: &[u8]) -> io::Result<usize> {
            let n = data.len().min(self.room);
            self.room -= n;
            self.output.extend_from_slice(&data[..n]);
            Ok(n)
        }
        fn close(&mut self) -> io::Result<()> {
            self.closed = true;
            Ok(())
        }
    }

    fn mem(input: &[u8], eof: bool, room: usize) -> Mem {
        Mem {
            input: input.iter().copied().collect(),
            eof,
            output: Vec::new(),
            room,
            closed: false,
        }
    }

    #[test]
    fn upload_counts_and_reports() {
        let mut input = header(MODE_UPLOAD, 0).to_vec();
        input.extend(std::iter::repeat_n(7u8, 100_000));
        let mut c = mem(&input, true, usize::MAX);
        let mut s = Session::new();
        let mut buf = vec![0u8; 4096];
        let p = s.drive(&mut c, &mut buf, &[0; 16]).expect("drive");
        assert!(p.done && c.closed);
        assert_eq!(c.output, 100_000u64.to_be_bytes());
    }

    #[test]
    fn download_sends_exactly_and_waits_for_eof() {
        let mut c = mem(&header(MODE_DOWNLOAD, 1000), false, 300);
        let mut s = Session::new();
        let mut buf = vec![0u8; 64];
        let zeros = [0u8; 128];
        let p = s.drive(&mut c, &mut buf, &zeros).expect("drive");
        assert!(!p.done);
        assert_eq!(c.output.len(), 300);
        c.room = usize::MAX;
        s.drive(&mut c, &mut buf, &zeros).expect("drive");
        assert_eq!(c.output.len(), 1000);
        assert!(!c.closed, "server waits for the client's EOF");
        c.eof = true;
        assert!(s.drive(&mut c, &mut buf, &zeros).expect("drive").done);
        assert!(c.closed);
    }

    #[test]
    fn echo_returns_everything_even_with_little_room() {
        let mut input = header(MODE_ECHO, 0).to_vec();
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        input.extend_from_slice(&payload);
        let mut c = mem(&input, true, 10);
        let mut s = Session::new();
        let mut buf = vec![0u8; 64];
        while !s.drive(&mut c, &mut buf, &[]).expect("drive").done {
            c.room += 10;
        }
        assert_eq!(c.output, payload);
    }

    #[test]
    fn unknown_mode_is_an_error() {
        let mut c = mem(&header(b'X', 0), false, 10);
        let mut buf = vec![0u8; 64];
        assert!(Session::new().drive(&mut c, &mut buf, &[]).is_err());
    }
}
