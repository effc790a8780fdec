//! Where the HTTP/1.1 messages of a relayed connection begin and end (RFC 9112 §6), so that
//! the proxy knows when a keep-alive connection sits between two exchanges: every request it
//! forwarded answered in full, nothing half sent either way. There (and only there) the
//! connection can move to another node, whose proxy opens its own backend connection for the
//! next request (a drain, issue 10).
//!
//! Sans-IO: the proxy feeds the bytes it writes to the backend ([`Exchange::requests`]) and
//! the bytes it reads from it ([`Exchange::responses`]). Heads are parsed with `httparse`;
//! body lengths follow RFC 9112 §6.3: a response to HEAD, a 1xx, 204 or 304 has none; then
//! `Transfer-Encoding: chunked` (chunk sizes read with `httparse::parse_chunk_size`), then
//! `Content-Length`; a response with neither runs until the backend closes. A connection
//! that cannot be framed (a body until close, an upgrade, a `Connection: close`, a head over
//! [`MAX_HEAD`], garbage) is *pinned*: it stays on this node until it ends.

use std::collections::VecDeque;

/// The longest head framed (the proxy's own limit on request heads is the same).
pub const MAX_HEAD: usize = crate::proxy::MAX_HEAD;
/// Headers parsed per head at most (more: pinned).
const MAX_HEADERS: usize = 64;

/// One direction's framing.
#[derive(Debug)]
enum Framer {
    /// Reading a head (the bytes so far).
    Head(Vec<u8>),
    /// A body of known length: bytes left.
    Body(u64),
    /// A chunked body: reading a chunk-size line (the bytes so far).
    ChunkSize(Vec<u8>),
    /// Chunk data left, then its CRLF (2 more bytes).
    ChunkData(u64),
    /// The trailer section after the last chunk, up to its empty line (the bytes so far).
    Trailer(Vec<u8>),
}

impl Default for Framer {
    fn default() -> Self {
        Framer::Head(Vec::new())
    }
}

/// The exchanges on one relayed connection.
#[derive(Debug, Default)]
pub struct Exchange {
    req: Framer,
    resp: Framer,
    /// Requests forwarded whose response has not ended, oldest first: `true` for HEAD.
    pending: VecDeque<bool>,
    /// Why the connection cannot move (then it never will).
    pinned: Option<&'static str>,
    /// Requests forwarded whole.
    pub requests_done: u64,
    /// Responses relayed whole.
    pub responses_done: u64,
}

/// What a head says about its body.
enum Length {
    None,
    Fixed(u64),
    Chunked,
    UntilClose,
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(v: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(v)
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// RFC 9112 §6.3 items 3–6 for the headers of a message (`close`: what a message without
/// either header means: until close for a response, no body for a request).
fn body_length(headers: &[httparse::Header<'_>], close: Length) -> Result<Length, &'static str> {
    if let Some(te) = header(headers, "transfer-encoding") {
        // Chunked must be the final coding; anything else cannot be framed here.
        let last = String::from_utf8_lossy(te)
            .rsplit(',')
            .next()
            .map(|t| t.trim().to_ascii_lowercase());
        return match last.as_deref() {
            Some("chunked") => Ok(Length::Chunked),
            _ => Err("a transfer coding other than chunked"),
        };
    }
    match header(headers, "content-length") {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Length::Fixed)
            .ok_or("a bad Content-Length"),
        None => Ok(close),
    }
}

impl Exchange {
    /// A connection with nothing exchanged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Between two exchanges: every request forwarded has been answered whole, and no message
    /// is half way in either direction.
    pub fn idle(&self) -> bool {
        self.pinned.is_none()
            && self.pending.is_empty()
            && matches!(&self.req, Framer::Head(b) if b.is_empty())
            && matches!(&self.resp, Framer::Head(b) if b.is_empty())
    }

    /// Why the connection must stay here, if it must.
    pub fn pinned(&self) -> Option<&'static str> {
        self.pinned
    }

    fn pin(&mut self, why: &'static str) {
        if self.pinned.is_none() {
            self.pinned = Some(why);
        }
    }

    /// Bytes forwarded from the client to the backend.
    pub fn requests(&mut self, mut b: &[u8]) {
        while !b.is_empty() && self.pinned.is_none() {
            let used = match std::mem::take(&mut self.req) {
                Framer::Head(mut head) => {
                    let (n, next) = self.head(&mut head, b, true);
                    self.req = next.unwrap_or(Framer::Head(head));
                    n
                }
                other => {
                    let (n, next, done) = body_step(other, b);
                    if done {
                        self.requests_done += 1;
                    }
                    self.req = next;
                    n
                }
            };
            b = &b[used..];
        }
    }

    /// Bytes read from the backend (relayed to the client).
    pub fn responses(&mut self, mut b: &[u8]) {
        while !b.is_empty() && self.pinned.is_none() {
            let used = match std::mem::take(&mut self.resp) {
                Framer::Head(mut head) => {
                    let (n, next) = self.head(&mut head, b, false);
                    self.resp = next.unwrap_or(Framer::Head(head));
                    n
                }
                other => {
                    let (n, next, done) = body_step(other, b);
                    if done {
                        self.response_ended();
                    }
                    self.resp = next;
                    n
                }
            };
            b = &b[used..];
        }
    }

    fn response_ended(&mut self) {
        self.pending.pop_front();
        self.responses_done += 1;
    }

    /// Add `b` to a head in progress; once it is whole, the framer for what follows it (the
    /// body, or the next head). Returns the bytes of `b` used.
    fn head(&mut self, head: &mut Vec<u8>, b: &[u8], request: bool) -> (usize, Option<Framer>) {
        let before = head.len();
        // A head that arrives whole (the usual case) is parsed where it lies: only a partial
        // one is kept, so a response's body is not copied here.
        let parsed = if before == 0 {
            parse_head(b, request)
        } else {
            head.extend_from_slice(b);
            parse_head(head, request)
        };
        match parsed {
            Ok(None) => {
                if before == 0 {
                    head.extend_from_slice(&b[..b.len().min(MAX_HEAD + 1)]);
                }
                if head.len() > MAX_HEAD {
                    self.pin("a head over the limit");
                }
                (b.len(), None)
            }
            Err(_) => {
                self.pin("a head that does not parse");
                (b.len(), None)
            }
            Ok(Some(Head {
                len: n,
                body: len,
                close,
                is_head,
                code,
            })) => {
                let used = n - before;
                if close {
                    self.pin("the connection closes after this exchange");
                }
                if let Some(h) = is_head {
                    self.pending.push_back(h);
                }
                let len = match code {
                    // An interim response: the final one follows (no body, not the end).
                    Some(c) if (100..200).contains(&c) => return (used, Some(Framer::default())),
                    Some(204 | 304) => Ok(Length::None),
                    Some(_) if self.pending.front() == Some(&true) => Ok(Length::None),
                    _ => len,
                };
                let next = match len {
                    Ok(Length::None) | Ok(Length::Fixed(0)) => {
                        if request {
                            self.requests_done += 1;
                        } else {
                            self.response_ended();
                        }
                        Framer::default()
                    }
                    Ok(Length::Fixed(k)) => Framer::Body(k),
                    Ok(Length::Chunked) => Framer::ChunkSize(Vec::new()),
                    Ok(Length::UntilClose) => {
                        self.pin("a body that runs until the backend closes");
                        Framer::default()
                    }
                    Err(why) => {
                        self.pin(why);
                        Framer::default()
                    }
                };
                (used, Some(next))
            }
        }
    }
}

/// A whole head, as far as framing cares.
struct Head {
    /// Its length.
    len: usize,
    /// Its body's length (RFC 9112 §6.3), or why it cannot be framed.
    body: Result<Length, &'static str>,
    /// The connection ends after this exchange (or becomes something else than HTTP).
    close: bool,
    /// A request: whether it is a HEAD request.
    is_head: Option<bool>,
    /// A response: its status code.
    code: Option<u16>,
}

/// Parse the head at the start of `b`: `Ok(None)` while it is incomplete.
fn parse_head(b: &[u8], request: bool) -> Result<Option<Head>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let closes =
        |h: &[httparse::Header<'_>]| header(h, "connection").is_some_and(|v| has_token(v, "close"));
    if request {
        let mut r = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = r.parse(b)? else {
            return Ok(None);
        };
        Ok(Some(Head {
            len,
            body: body_length(r.headers, Length::None),
            close: closes(r.headers)
                || r.version == Some(0)
                || header(r.headers, "upgrade").is_some()
                || r.method == Some("CONNECT"),
            is_head: Some(r.method == Some("HEAD")),
            code: None,
        }))
    } else {
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = r.parse(b)? else {
            return Ok(None);
        };
        let code = r.code.unwrap_or(0);
        // An HTTP/1.0 response keeps the connection only when it says keep-alive.
        let keeps = header(r.headers, "connection").is_some_and(|v| has_token(v, "keep-alive"));
        Ok(Some(Head {
            len,
            body: body_length(r.headers, Length::UntilClose),
            close: closes(r.headers) || (r.version == Some(0) && !keeps) || code == 101,
            is_head: None,
            code: Some(code),
        }))
    }
}

/// One step through a body: bytes used, the next state, and whether the message ended.
fn body_step(f: Framer, b: &[u8]) -> (usize, Framer, bool) {
    match f {
        Framer::Body(left) => {
            let n = (left.min(b.len() as u64)) as usize;
            let left = left - n as u64;
            if left == 0 {
                (n, Framer::default(), true)
            } else {
                (n, Framer::Body(left), false)
            }
        }
        Framer::ChunkSize(mut line) => {
            let before = line.len();
            line.extend_from_slice(b);
            match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((n, 0))) => {
                    (n - before, Framer::Trailer(Vec::new()), false)
                }
                Ok(httparse::Status::Complete((n, size))) => match size.checked_add(2) {
                    Some(left) => (n - before, Framer::ChunkData(left), false),
                    // A chunk no one can send: never ends (the pending response pins it).
                    None => (b.len(), Framer::Body(u64::MAX), false),
                },
                Ok(httparse::Status::Partial) if line.len() <= 1024 => {
                    (b.len(), Framer::ChunkSize(line), false)
                }
                // A chunk-size line that does not parse: the stream cannot be framed; treat
                // the rest as never ending (the caller's connection stays pinned by its
                // pending response).
                _ => (b.len(), Framer::Body(u64::MAX), false),
            }
        }
        Framer::ChunkData(left) => {
            let n = (left.min(b.len() as u64)) as usize;
            let left = left - n as u64;
            if left == 0 {
                (n, Framer::ChunkSize(Vec::new()), false)
            } else {
                (n, Framer::ChunkData(left), false)
            }
        }
        Framer::Trailer(mut t) => {
            // Lines until an empty one: the first CRLF at a line start ends the message.
            for (i, &c) in b.iter().enumerate() {
                t.push(c);
                if t.ends_with(b"\r\n") {
                    if t.len() == 2 {
                        return (i + 1, Framer::default(), true);
                    }
                    t.clear();
                } else if t.len() > MAX_HEAD {
                    return (b.len(), Framer::Body(u64::MAX), false);
                }
            }
            (b.len(), Framer::Trailer(t), false)
        }
        Framer::Head(h) => (0, Framer::Head(h), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut Exchange, req: &[u8], resp: &[u8]) {
        // Byte by byte and whole: the same result.
        for b in req.chunks(1) {
            e.requests(b);
        }
        for b in resp.chunks(1) {
            e.responses(b);
        }
    }

    #[test]
    fn keep_alive_exchanges_end_at_their_boundaries() {
        let mut e = Exchange::new();
        assert!(e.idle());
        e.requests(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!e.idle(), "a request waits for its response");
        e.responses(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel");
        assert!(!e.idle(), "a body half way");
        e.responses(b"lo");
        assert!(e.idle());
        // Pipelined, a POST with a body, a chunked answer with a trailer, a HEAD whose
        // response has a Content-Length but no body, a 100-continue, a 304.
        feed(
            &mut e,
            b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcHEAD /h HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nT: v\r\n\r\n",
        );
        assert!(!e.idle(), "the 304 is still to come");
        e.responses(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n");
        assert!(e.idle(), "{e:?}");
        assert_eq!((e.requests_done, e.responses_done), (5, 5));
        // A chunked request body.
        e.requests(b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        e.responses(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(e.idle());
        assert_eq!(e.pinned(), None);
    }

    #[test]
    fn what_cannot_be_framed_pins_the_connection() {
        for (req, resp) in [
            (
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                &b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..],
            ),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", b""),
            (b"GET / HTTP/1.0\r\n\r\n", b""),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            ),
            (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", b""),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            ),
            (b"\x16\x03\x01 not http\r\n\r\n", b""),
        ] {
            let mut e = Exchange::new();
            feed(&mut e, req, resp);
            assert!(e.pinned().is_some() && !e.idle(), "{req:?} {resp:?}");
        }
        let mut e = Exchange::new();
        e.requests(&vec![b'a'; MAX_HEAD + 10]);
        assert!(e.pinned().is_some());
        // A chunk size at the top of the range neither overflows nor ever ends.
        let mut e = Exchange::new();
        e.requests(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\nabc");
        assert!(!e.idle());
    }
}
