//! HTTP/1.1 content service: a request parser and a per-connection state machine.
//!
//! The state machine ([`HttpConn`]) is sans-IO towards the network: bytes received on the
//! connection go in through [`HttpConn::feed`], bytes to send come out of
//! [`HttpConn::poll_transmit`] and are acknowledged with [`HttpConn::advance`]. It only reads
//! files from the document root, in [`CHUNK`]-sized pieces as the caller asks for more output,
//! so a large file never has to fit into the TCP send buffer (or memory) at once.
//!
//! Supported: `GET` and `HEAD` of regular files (RFC 9110 §9.3.1, §9.3.2), persistent
//! connections and pipelining (RFC 9112 §9.3), `Content-Length` framing of responses
//! (RFC 9112 §6.3). Everything else is refused with the proper status: 400, 403, 404, 405, 431,
//! 501 and 505.
//!
//! The request parser is written by hand rather than on `httparse` (which frames the proxy's
//! messages, `crate::exchange`) because a server owes answers that crate cannot give: it
//! refuses `HTTP/1.2`, which RFC 9110 §6.2 says to answer as 1.1; it reports `HTTP/2.0` and
//! `HTTP/11` alike, where the first is a 505 and the second a 400; and it lets bytes above
//! 0x7f into the request target, which RFC 9112 §3.2 does not. The parsed [`Request`] borrows
//! the received bytes, so answering a keep-alive request allocates nothing, an error
//! answer included (`apps/tests/http_alloc.rs`).

use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Largest request head (request line plus header fields) we accept.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// Received bytes we buffer ahead of the request being answered (pipelined requests).
pub const MAX_BUFFERED: usize = 16 * 1024;
/// How much of a file is read at a time.
pub const CHUNK: usize = 64 * 1024;

/// The request method (RFC 9110 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method<'a> {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// A method defined by RFC 9110 or RFC 5789 that this server does not allow (405).
    NotAllowed(&'a str),
    /// Any other method token (501).
    Unknown(&'a str),
}

impl<'a> Method<'a> {
    fn from_token(tok: &'a str) -> Method<'a> {
        // Method names are case-sensitive (RFC 9110 §9.1).
        match tok {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH" => {
                Method::NotAllowed(tok)
            }
            _ => Method::Unknown(tok),
        }
    }

    /// The method as it appeared on the request line.
    pub fn as_str(&self) -> &'a str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::NotAllowed(s) | Method::Unknown(s) => s,
        }
    }
}

/// A parsed request head, borrowing the received bytes it was parsed from (nothing is
/// copied: a keep-alive request costs the parser no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method<'a>,
    /// The request target exactly as sent (visible ASCII, checked).
    pub target: &'a str,
    /// The minor HTTP version (0 or 1; later 1.x versions are treated as 1.1).
    pub minor: u8,
    /// The field lines after the request line, each checked by the parser.
    fields: &'a [u8],
    /// Length of the request body that follows the head (0 when absent).
    pub content_length: u64,
    /// Whether the connection stays open after the response (RFC 9112 §9.3).
    pub keep_alive: bool,
}

impl<'a> Request<'a> {
    /// The header fields in order: each name as sent and its value without the surrounding
    /// whitespace (raw bytes: a value may hold obs-text, RFC 9110 §5.5).
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        field_lines(self.fields).filter_map(|l| split_field(l).ok())
    }

    /// The first value of header `name` (names compare case-insensitively, RFC 9110 §5.1).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// Why a request head was refused; each maps to one response status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed syntax: 400.
    BadRequest(&'static str),
    /// Head over [`MAX_HEAD`] bytes or over [`MAX_HEADERS`] fields: 431.
    HeadTooLarge,
    /// A request feature we do not implement (e.g. `Transfer-Encoding`): 501.
    NotImplemented(&'static str),
    /// An HTTP major version other than 1: 505.
    VersionNotSupported,
}

impl ParseError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::BadRequest(_) => 400,
            ParseError::HeadTooLarge => 431,
            ParseError::NotImplemented(_) => 501,
            ParseError::VersionNotSupported => 505,
        }
    }

    fn detail(&self) -> &'static str {
        match self {
            ParseError::BadRequest(d) | ParseError::NotImplemented(d) => d,
            ParseError::HeadTooLarge => "request head too large",
            ParseError::VersionNotSupported => "only HTTP/1.x is supported",
        }
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Where the head ends: the index just past the empty line, accepting CRLF or bare LF line ends
/// (RFC 9112 §2.2 lets a recipient accept a bare LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') => match buf.get(next + 1) {
                Some(b'\n') => return Some(next + 2),
                Some(_) => {}
                None => return None,
            },
            Some(_) => {}
            None => return None,
        }
        i = next;
    }
    None
}

/// Parse one request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the request (borrowing `buf`) and the
/// number of bytes its head took (any body of `content_length` bytes follows).
///
/// # Examples
///
/// ```
/// use ds_apps::http::{parse_request, Method};
///
/// let buf = b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\nGET /next";
/// let (req, used) = parse_request(buf).unwrap().unwrap();
/// assert_eq!((req.method, req.target, req.keep_alive), (Method::Get, "/index.html", true));
/// assert_eq!(req.header("HOST"), Some(&b"example"[..]));
/// // The next request is not complete yet.
/// assert_eq!(parse_request(&buf[used..]), Ok(None));
/// ```
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, ParseError> {
    // Empty lines before the request line are ignored (RFC 9112 §2.2).
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        if buf[start] == b'\r' && buf.get(start + 1).is_some_and(|&b| b != b'\n') {
            return Err(ParseError::BadRequest("stray CR"));
        }
        start += 1;
    }
    let rest = &buf[start..];
    let end = match head_end(rest) {
        Some(e) => e,
        None if buf.len() > MAX_HEAD => return Err(ParseError::HeadTooLarge),
        None => return Ok(None),
    };
    if end > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = &rest[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = &head[..line_end];
    let (method, target, minor) = parse_request_line(line.strip_suffix(b"\r").unwrap_or(line))?;
    let fields = head.get(line_end + 1..).unwrap_or_default();

    // Every field line is checked, and counted, before any is interpreted.
    for (i, line) in field_lines(fields).enumerate() {
        if i >= MAX_HEADERS {
            return Err(ParseError::HeadTooLarge);
        }
        split_field(line)?;
    }
    let mut content_length: Option<u64> = None;
    let mut hosts = 0;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for line in field_lines(fields) {
        let (name, value) = split_field(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3: an invalid or conflicting Content-Length is unrecoverable.
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(ParseError::BadRequest("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(ParseError::BadRequest("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(ParseError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if minor == 0 {
                // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means broken framing.
                return Err(ParseError::BadRequest("Transfer-Encoding in HTTP/1.0"));
            }
            return Err(ParseError::NotImplemented(
                "request bodies with Transfer-Encoding",
            ));
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for opt in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if opt.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host field gets 400.
    if minor >= 1 && hosts != 1 {
        return Err(ParseError::BadRequest(
            "HTTP/1.1 request needs exactly one Host field",
        ));
    }
    if minor == 0 && hosts > 1 {
        return Err(ParseError::BadRequest("more than one Host field"));
    }
    let keep_alive = if minor >= 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };

    let req = Request {
        method,
        target,
        minor,
        fields,
        content_length: content_length.unwrap_or(0),
        keep_alive,
    };
    Ok(Some((req, start + end)))
}

/// The field lines of a head's header section (after the request line, up to the empty
/// line), line ends (CRLF or bare LF) removed.
fn field_lines(fields: &[u8]) -> impl Iterator<Item = &[u8]> {
    fields
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

/// `method SP request-target SP HTTP-version` (RFC 9112 §3).
fn parse_request_line(line: &[u8]) -> Result<(Method<'_>, &str, u8), ParseError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(m), Some(t), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadRequest("malformed request line"));
    };
    if !is_token(m) {
        return Err(ParseError::BadRequest("malformed method"));
    }
    // The target is visible ASCII (RFC 3986 characters); anything else is a malformed line.
    if t.is_empty() || !t.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::BadRequest("malformed request target"));
    }
    let minor = match v {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Err(ParseError::VersionNotSupported);
            }
            // 1.x for x > 1 is answered as 1.1 (RFC 9110 §6.2).
            (minor - b'0').min(1)
        }
        _ => return Err(ParseError::BadRequest("malformed HTTP version")),
    };
    // Both are ASCII by the checks above, so neither conversion can fail.
    let ascii = |b| std::str::from_utf8(b).map_err(|_| ParseError::BadRequest("not ASCII"));
    Ok((Method::from_token(ascii(m)?), ascii(t)?, minor))
}

/// `field-name ":" OWS field-value OWS` (RFC 9112 §5): the name as sent and the value
/// without its surrounding whitespace.
fn split_field(line: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        // RFC 9112 §5.2: obsolete line folding may be rejected with 400.
        return Err(ParseError::BadRequest("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ParseError::BadRequest("field without colon"))?;
    let name = &line[..colon];
    // No whitespace is allowed between the name and the colon (RFC 9112 §5.1).
    if !is_token(name) {
        return Err(ParseError::BadRequest("malformed field name"));
    }
    let value = line[colon + 1..].trim_ascii();
    if value
        .iter()
        .any(|&b| b == b'\r' || b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(ParseError::BadRequest("invalid character in field value"));
    }
    Ok((name, value))
}

/// Turn a request target into a safe relative path below the document root.
///
/// Accepts origin-form (`/a/b?q`) and absolute-form (`http://host/a/b`, RFC 9112 §3.2.2);
/// drops the query, percent-decodes (RFC 3986 §2.1), skips empty and `.` segments, and refuses
/// `..`, encoded slashes and NUL bytes, so the result can never name anything outside the
/// root. The segments are decoded straight into the path's one buffer.
///
/// # Examples
///
/// ```
/// use ds_apps::http::sanitize_target;
/// use std::path::Path;
///
/// assert_eq!(sanitize_target("/a//b/./c%20d?q=1").unwrap(), Path::new("a/b/c d"));
/// assert!(sanitize_target("/a/%2e%2e/b").is_err());
/// ```
pub fn sanitize_target(target: &str) -> Result<PathBuf, &'static str> {
    let mut out = Vec::new();
    sanitize_target_into(target, &mut out)?;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// [`sanitize_target`] into `out` (cleared first), so a connection reuses one buffer.
fn sanitize_target_into(target: &str, out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
    {
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    } else {
        return Err("request target is not a path");
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    out.reserve(path.len());
    for raw in path.split('/') {
        // Where this segment starts in `out`: after a separator when one came before.
        let mark = out.len();
        if mark > 0 {
            out.push(b'/');
        }
        let start = out.len();
        percent_decode_into(raw.as_bytes(), out).ok_or("malformed percent-encoding")?;
        let seg = &out[start..];
        if seg.is_empty() || seg == b"." {
            out.truncate(mark);
            continue;
        }
        if seg == b".." {
            return Err("'..' in path");
        }
        if seg.contains(&b'/') || seg.contains(&0) {
            return Err("encoded '/' or NUL in path");
        }
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Append `s` percent-decoded to `out`; `None` for a `%` not followed by two hex digits
/// (written by hand: the `percent-encoding` crate passes malformed escapes through, and a
/// server must refuse them rather than guess).
fn percent_decode_into(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = hex_val(*s.get(i + 1)?)?;
            let lo = hex_val(*s.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The reason phrase for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The status for a file that could not be opened: 404 when it is not there (or not a
/// regular file below the root), 403 when it may not be read, 503 when the server is out of
/// a resource (descriptors, memory: the client may try again), 500 otherwise.
fn open_error_status(e: &io::Error) -> u16 {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => 404,
        Some(libc::EACCES | libc::EPERM) => 403,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EAGAIN) => 503,
        Some(_) => 500,
        None => match e.kind() {
            io::ErrorKind::NotFound => 404,
            io::ErrorKind::PermissionDenied => 403,
            io::ErrorKind::OutOfMemory => 503,
            _ => 500,
        },
    }
}

/// A media type from the file name's extension (compared without regard to case, with no
/// copy of the name: this runs per request).
pub fn content_type(path: &Path) -> &'static str {
    const TYPES: [(&[&str], &str); 10] = [
        (&["html", "htm"], "text/html; charset=utf-8"),
        (&["txt", "md"], "text/plain; charset=utf-8"),
        (&["css"], "text/css"),
        (&["js"], "text/javascript"),
        (&["json"], "application/json"),
        (&["png"], "image/png"),
        (&["jpg", "jpeg"], "image/jpeg"),
        (&["gif"], "image/gif"),
        (&["svg"], "image/svg+xml"),
        (&["pdf"], "application/pdf"),
    ];
    let Some(ext) = path.extension().map(|e| e.as_bytes()) else {
        return "application/octet-stream";
    };
    TYPES
        .iter()
        .find(|(exts, _)| exts.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(ext)))
        .map_or("application/octet-stream", |(_, t)| t)
}

/// The current second's [`http_date`], formatted once per second per thread (every response
/// carries one) and written into `out`.
fn write_date_now(out: &mut Vec<u8>) {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let wday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{wday}, {day:02} {mon} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// Counters of one connection (or, summed, of a server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpStats {
    /// Requests answered (any status).
    pub requests: u64,
    /// Responses with a 2xx status.
    pub status_2xx: u64,
    /// Responses with a 4xx status.
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    pub status_5xx: u64,
    /// Response bytes handed to TCP (heads and bodies).
    pub bytes_sent: u64,
}

impl HttpStats {
    /// Add another set of counters to this one.
    pub fn add(&mut self, other: &HttpStats) {
        self.requests += other.requests;
        self.status_2xx += other.status_2xx;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.bytes_sent += other.bytes_sent;
    }

    fn count(&mut self, status: u16) {
        self.requests += 1;
        match status {
            200..=299 => self.status_2xx += 1,
            400..=499 => self.status_4xx += 1,
            _ => self.status_5xx += 1,
        }
    }
}

/// A document root: its canonical path and an open handle on the directory. Every request's
/// file is opened below it with one `openat2(RESOLVE_BENEATH)` (Linux 5.6, `openat2(2)`): the
/// kernel refuses `..` and symbolic links that lead out of the root, so no path is resolved in
/// userspace per request (`canonicalize` costs a `readlink` per path component, and was half
/// of the server's CPU time under load). An absolute symbolic link, which `RESOLVE_BENEATH`
/// refuses even when it points inside the root, takes the slow path: resolve, then check.
///
/// With an open-file cache ([`DocRoot::open_with_cache`]) a file once opened is served from
/// its open handle, without a system call but the read, until [`OpenFileCache::valid`] has
/// passed.
#[derive(Debug)]
pub struct DocRoot {
    path: PathBuf,
    dir: std::os::fd::OwnedFd,
    /// Files kept open; `None` without a cache. A mutex, not a cell, so that the root can be
    /// shared; each server opens its own root, so no other thread waits on it.
    cache: Option<std::sync::Mutex<FileCache>>,
}

/// The open-file cache of a document root: off by default, as nginx's `open_file_cache` is.
///
/// A cached file is served from the handle opened first, at the length it had then. One
/// replaced or removed is served as it was; one changed in place is read as it is now (one
/// that shrank cuts its response short, as it would without the cache, and leaves the
/// cache). Changes are seen once `valid` has passed since the file was opened, when it is
/// opened again by name: the same trade as nginx's `open_file_cache_valid`. Expired entries
/// are closed within about `valid` of expiring (on the next open past it, or the server's
/// sweep), so a removed file's space is not held longer. Failed opens are not cached, and
/// drop what was. A zero `valid` would cache nothing: it turns the cache off, as `max` 0 does.
///
/// Each entry holds a file descriptor: a server keeps up to `max` open besides its own
/// (`dsnode` checks its `RLIMIT_NOFILE` for them when it starts).
///
/// ```
/// use ds_apps::http::{DocRoot, OpenFileCache};
/// use std::time::Duration;
///
/// let cache = OpenFileCache { max: 1000, valid: Duration::from_secs(1) };
/// let root = DocRoot::open_with_cache(&std::env::temp_dir(), cache).unwrap();
/// assert!(root.path().is_absolute());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileCache {
    /// Most files kept open; 0 turns the cache off. When it is full, the expired entries go
    /// first, then the less recently used half (amortised: one scan per `max / 2` opens).
    pub max: usize,
    /// How long a file is served from its open handle before it is looked up by name again.
    pub valid: Duration,
}

impl Default for OpenFileCache {
    /// Off (`max` 0); 1 s valid once turned on.
    fn default() -> Self {
        OpenFileCache {
            max: 0,
            valid: Duration::from_secs(1),
        }
    }
}

/// What a document root's open-file cache did ([`DocRoot::open_file_stats`]); zeros without
/// a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpenFileStats {
    /// Files held open now.
    pub files: u64,
    /// Requests served from a held file.
    pub hits: u64,
    /// Files opened by name for the cache (first requests, and after `valid`).
    pub opens: u64,
}

impl OpenFileCache {
    /// Whether files are cached at all.
    pub fn is_on(&self) -> bool {
        self.max > 0 && !self.valid.is_zero()
    }
}

#[derive(Debug)]
struct FileCache {
    cfg: OpenFileCache,
    /// By the path asked for (relative to the root).
    files: std::collections::HashMap<PathBuf, CachedFile>,
    /// When the expired entries were last closed.
    expired_at: Instant,
    /// Counters: `files` is read from the map when asked.
    stats: OpenFileStats,
}

#[derive(Debug)]
struct CachedFile {
    file: Arc<File>,
    len: u64,
    /// The path named a directory: its `index.html` was opened.
    index: bool,
    opened: Instant,
    used: Instant,
}

impl CachedFile {
    /// Still served from its handle: opened less than `valid` before `now`.
    fn fresh(&self, now: Instant, valid: Duration) -> bool {
        now.saturating_duration_since(self.opened) < valid
    }
}

impl FileCache {
    /// Lock `m`. A poisoned lock is taken as it is: the cache holds only handles, lengths and
    /// times, and a panic elsewhere leaves none of them half-written.
    fn lock(m: &std::sync::Mutex<FileCache>) -> std::sync::MutexGuard<'_, FileCache> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Close the expired entries, at most once per `valid`.
    fn expire(&mut self, now: Instant) {
        if now.saturating_duration_since(self.expired_at) >= self.cfg.valid {
            self.drop_expired(now);
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        let valid = self.cfg.valid;
        self.expired_at = now;
        self.files.retain(|_, f| f.fresh(now, valid));
    }

    /// Room for one more entry: the expired ones out, then the less recently used half.
    fn make_room(&mut self, now: Instant) {
        if self.files.len() < self.cfg.max {
            return;
        }
        self.drop_expired(now);
        if self.files.len() < self.cfg.max {
            return;
        }
        let mut used: Vec<Instant> = self.files.values().map(|f| f.used).collect();
        let mid = used.len() / 2;
        let (_, &mut median, _) = used.select_nth_unstable(mid);
        self.files.retain(|_, f| f.used > median);
    }
}

/// A file being served: its own handle, or the open-file cache's.
#[derive(Debug)]
enum Opened {
    Own(File),
    Shared(Arc<File>),
}

impl Opened {
    fn file(&self) -> &File {
        match self {
            Opened::Own(f) => f,
            Opened::Shared(f) => f,
        }
    }
}

impl DocRoot {
    /// Open the directory `path` as a document root, without an open-file cache.
    pub fn open(path: &Path) -> io::Result<Arc<DocRoot>> {
        Self::open_with_cache(path, OpenFileCache::default())
    }

    /// Open the directory `path` as a document root that keeps files open as `cache` says.
    pub fn open_with_cache(path: &Path, cache: OpenFileCache) -> io::Result<Arc<DocRoot>> {
        use rustix::fs::{Mode, OFlags};
        let path = std::fs::canonicalize(path)?;
        let dir = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let cache = cache.is_on().then(|| {
            std::sync::Mutex::new(FileCache {
                cfg: cache,
                files: std::collections::HashMap::new(),
                expired_at: Instant::now(),
                stats: OpenFileStats::default(),
            })
        });
        Ok(Arc::new(DocRoot { path, dir, cache }))
    }

    /// The canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `rel` (plain names only), or its `index.html` when it is a directory, if it is a
    /// regular file inside the root; returns the file and its length, `rel` then the path
    /// served, relative to the root (`index.html` pushed onto a directory's). From the
    /// open-file cache when there is one. On failure `rel` is as it was: the caller keeps the
    /// buffer, so a request answered with an error allocates no path for the next.
    fn open_file(&self, rel: &mut PathBuf) -> io::Result<(Opened, u64)> {
        self.open_file_at(rel, Instant::now)
    }

    /// [`DocRoot::open_file`] at `now()` (the cache's clock, read only when there is a cache;
    /// tests give their own).
    fn open_file_at(
        &self,
        rel: &mut PathBuf,
        now: impl FnOnce() -> Instant,
    ) -> io::Result<(Opened, u64)> {
        let Some(cache) = &self.cache else {
            let (file, len, _) = self.open_fresh(rel)?;
            return Ok((Opened::Own(file), len));
        };
        let now = now();
        {
            let mut guard = FileCache::lock(cache);
            let c = &mut *guard;
            c.expire(now);
            if let Some(f) = c.files.get_mut(rel.as_path()) {
                if f.fresh(now, c.cfg.valid) {
                    f.used = now;
                    c.stats.hits += 1;
                    let (file, len) = (Opened::Shared(f.file.clone()), f.len);
                    if f.index {
                        // In the path's own buffer: its room is kept from request to request.
                        rel.push("index.html");
                    }
                    return Ok((file, len));
                }
            }
        }
        // Opened without the lock held (nothing else waits on it, but a slow disk should
        // not hold it either). A failed open drops what was cached for the path.
        let opened = self.open_fresh(rel);
        let mut c = FileCache::lock(cache);
        let (file, len, index) = match opened {
            Ok(o) => o,
            Err(e) => {
                c.files.remove(rel.as_path());
                return Err(e);
            }
        };
        let mut key = rel.clone();
        if index {
            key.pop();
        }
        let file = Arc::new(file);
        c.stats.opens += 1;
        c.files.remove(&key);
        c.make_room(now);
        c.files.insert(
            key,
            CachedFile {
                file: file.clone(),
                len,
                index,
                opened: now,
                used: now,
            },
        );
        Ok((Opened::Shared(file), len))
    }

    /// Close the cache's expired entries (at most once per its `valid`): a server that gets
    /// no requests calls this now and then, so that a removed file is not held open.
    pub fn expire_cached(&self) {
        if let Some(mut c) = self.locked_cache() {
            c.expire(Instant::now());
        }
    }

    /// What the open-file cache did so far (zeros without one).
    pub fn open_file_stats(&self) -> OpenFileStats {
        self.locked_cache()
            .map_or_else(OpenFileStats::default, |c| OpenFileStats {
                files: c.files.len() as u64,
                ..c.stats
            })
    }

    /// Drop `file` from the cache: it no longer reads as it did when it was opened.
    fn forget(&self, file: &Arc<File>) {
        if let Some(mut c) = self.locked_cache() {
            c.files.retain(|_, f| !Arc::ptr_eq(&f.file, file));
        }
    }

    /// The open-file cache, locked; `None` without one.
    fn locked_cache(&self) -> Option<std::sync::MutexGuard<'_, FileCache>> {
        self.cache.as_ref().map(FileCache::lock)
    }

    /// [`DocRoot::open_file`] by name, past any cache; also says whether `index.html` was
    /// pushed onto `rel` (a directory's).
    fn open_fresh(&self, rel: &mut PathBuf) -> io::Result<(File, u64, bool)> {
        let (file, meta) = self.open_beneath(rel)?;
        if meta.is_dir() {
            rel.push("index.html");
            let opened = self
                .open_beneath(rel)
                .and_then(|(file, meta)| regular(file, &meta));
            if opened.is_err() {
                rel.pop();
            }
            return opened.map(|(file, len)| (file, len, true));
        }
        regular(file, &meta).map(|(file, len)| (file, len, false))
    }

    fn open_beneath(&self, rel: &Path) -> io::Result<(File, std::fs::Metadata)> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let name = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below as not
        // a regular file); regular files ignore the flag.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.dir, name, flags, Mode::empty(), resolve) {
            Ok(fd) => {
                let file = File::from(fd);
                let meta = file.metadata()?;
                Ok((file, meta))
            }
            // EXDEV: an absolute symbolic link or `..` leading out; ENOSYS: a kernel before
            // 5.6. Resolve in userspace and check the result.
            Err(e) if e == rustix::io::Errno::XDEV || e == rustix::io::Errno::NOSYS => {
                let real = std::fs::canonicalize(self.path.join(rel))?;
                if !real.starts_with(&self.path) {
                    return Err(io::ErrorKind::NotFound.into());
                }
                let meta = std::fs::metadata(&real)?;
                if !meta.is_file() && !meta.is_dir() {
                    return Err(io::ErrorKind::NotFound.into());
                }
                let file = File::open(&real)?;
                let meta = file.metadata()?;
                Ok((file, meta))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Only regular files are served: a FIFO or a device could block or never end.
fn regular(file: File, meta: &std::fs::Metadata) -> io::Result<(File, u64)> {
    if !meta.is_file() {
        return Err(io::ErrorKind::NotFound.into());
    }
    Ok((file, meta.len()))
}

struct FileBody {
    /// Read at `offset` (`pread`): a cached handle is shared, so its position is not ours.
    file: Opened,
    /// The file's path relative to the root, so another node can reopen it.
    rel: PathBuf,
    /// The file position: bytes of the file read so far.
    offset: u64,
    remaining: u64,
}

/// Version byte in front of an encoded [`HttpConnState`]; bump on any layout change.
/// 2: [`BodyState::sample`].
const STATE_VERSION: u8 = 2;

/// Bytes of the file on each side of a handed-over body's splice point that both nodes
/// digest ([`BodyState::sample`]).
const SAMPLE_SIDE: u64 = 512;

/// A digest of `file`'s bytes within [`SAMPLE_SIDE`] of `at`, the file being `len` bytes
/// long: those before, which the client already has from the exporting node's copy, and
/// those after, which the importing node's copy is to send. SHA-256 (truncated to 64 bits)
/// rather than a hasher of the standard library, whose output may change between Rust
/// releases, and nodes need not run one build.
fn splice_sample(file: &File, at: u64, len: u64) -> io::Result<u64> {
    let start = at.saturating_sub(SAMPLE_SIDE).min(len);
    let end = at.saturating_add(SAMPLE_SIDE).min(len);
    let mut buf = [0u8; 2 * SAMPLE_SIDE as usize];
    let n = end.saturating_sub(start) as usize;
    file.read_exact_at(&mut buf[..n], start)?;
    let d = ring::digest::digest(&ring::digest::SHA256, &buf[..n]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    Ok(u64::from_le_bytes(first))
}

/// The unsent part of a file body, as it travels in an [`HttpConnState`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BodyState {
    /// The file's path relative to the document root (raw bytes: paths need not be UTF-8).
    pub path: Vec<u8>,
    /// Where in the file reading continues.
    pub offset: u64,
    /// Bytes of the file still to be read and sent from `offset` on.
    pub remaining: u64,
    /// A digest of the exporting node's file around `offset` (up to 512 bytes each side):
    /// the importing node's copy must give the same, so that a same-length file of other
    /// content is refused rather than spliced onto what the client already has. A sample, not
    /// a proof: two versions that differ only elsewhere still pass.
    pub sample: u64,
}

/// Everything needed to continue an [`HttpConn`] on another node with the same document root.
///
/// Produced by [`HttpConn::export`], consumed by [`HttpConn::import`]. The unsent output
/// already read from the file travels as bytes; the rest of the body travels as a file
/// position, so the state stays small (at most [`MAX_BUFFERED`] input plus about one
/// [`CHUNK`] of output) whatever the file size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpConnState {
    /// Received bytes not yet parsed (pipelined requests).
    pub inbuf: Vec<u8>,
    /// Response bytes produced but not yet handed to TCP.
    pub out: Vec<u8>,
    /// The rest of the current response's file body, if any.
    pub body: Option<BodyState>,
    /// No further request will be answered.
    pub done: bool,
    /// The peer has finished sending.
    pub eof: bool,
    /// The connection's counters on the exporting node. Informational only:
    /// [`HttpConn::import`] starts from zero counters, so that a server summing the stats of
    /// the connections it exported and of those it imported counts every byte once.
    pub stats: HttpStats,
}

/// Why an encoded [`HttpConnState`] could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum HttpStateError {
    /// No bytes at all.
    #[error("empty HTTP connection state")]
    Empty,
    /// Encoded by an incompatible version.
    #[error("HTTP connection state version {0}, expected {STATE_VERSION}")]
    Version(u8),
    /// Not a valid encoding.
    #[error("malformed HTTP connection state: {0}")]
    Malformed(#[from] postcard::Error),
    /// Valid, but followed by unexpected bytes.
    #[error("{0} trailing bytes after the HTTP connection state")]
    Trailing(usize),
}

impl HttpConnState {
    /// Serialize: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing into a growable Vec only fails for types postcard cannot represent,
        // and every field here is a plain integer, bool or byte string.
        postcard::to_extend(self, vec![STATE_VERSION])
            .expect("HttpConnState is always serializable")
    }

    /// Parse what [`HttpConnState::encode`] produced. Never panics on arbitrary input.
    pub fn decode(b: &[u8]) -> Result<Self, HttpStateError> {
        let (&version, rest) = b.split_first().ok_or(HttpStateError::Empty)?;
        if version != STATE_VERSION {
            return Err(HttpStateError::Version(version));
        }
        let (st, tail) = postcard::take_from_bytes::<HttpConnState>(rest)?;
        if !tail.is_empty() {
            return Err(HttpStateError::Trailing(tail.len()));
        }
        Ok(st)
    }
}

/// One HTTP/1.1 server connection.
pub struct HttpConn {
    root: Arc<DocRoot>,
    /// Received bytes not yet parsed.
    inbuf: Vec<u8>,
    /// Bytes ready to send, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// `out` holds a chunk read from the body's file (not a head): on export its unsent part
    /// travels as a file offset instead of as bytes, keeping the state small.
    out_from_body: bool,
    /// The rest of the current response's body.
    body: Option<FileBody>,
    /// No further request will be answered (close requested, error, or end of input).
    done: bool,
    /// The peer has finished sending.
    eof: bool,
    stats: HttpStats,
    /// A name for logs.
    label: String,
    /// The buffer of the last body's path, kept for the next request's (a keep-alive
    /// request then allocates nothing).
    spare_path: PathBuf,
}

impl HttpConn {
    /// A connection serving files below `root`; `label` names the connection in logs.
    pub fn new(root: Arc<DocRoot>, label: String) -> Self {
        HttpConn {
            root,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            out_from_body: false,
            body: None,
            done: false,
            eof: false,
            stats: HttpStats::default(),
            label,
            spare_path: PathBuf::new(),
        }
    }

    /// Whether the connection wants more input now (false while enough is buffered, and after
    /// the peer's end of input). After the last response input is accepted and discarded.
    pub fn wants_input(&self) -> bool {
        !self.eof && (self.done || self.inbuf.len() < MAX_BUFFERED)
    }

    /// How many more bytes [`HttpConn::feed`] would like at most.
    pub fn input_room(&self) -> usize {
        if self.done {
            MAX_BUFFERED
        } else {
            MAX_BUFFERED.saturating_sub(self.inbuf.len())
        }
    }

    /// Bytes received from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        self.inbuf.extend_from_slice(data);
    }

    /// The peer sent FIN: requests already buffered are still answered.
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Stop answering further requests (idle timeout, shutdown); the response in progress, if
    /// any, is still completed.
    pub fn finish(&mut self) {
        self.done = true;
        self.inbuf.clear();
    }

    /// This connection's counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// The state needed to continue this connection elsewhere (see [`HttpConn::import`]).
    ///
    /// Takes a snapshot; this connection is unchanged and should be dropped once the state
    /// has been handed over.
    pub fn export(&self) -> io::Result<HttpConnState> {
        let unsent = &self.out[self.out_pos.min(self.out.len())..];
        // Unsent bytes of a body chunk are re-read from the file on the other side.
        let rewind = if self.out_from_body && self.body.is_some() {
            unsent.len() as u64
        } else {
            0
        };
        let body = match &self.body {
            None => None,
            Some(b) => {
                let (offset, remaining) = (b.offset - rewind, b.remaining + rewind);
                Some(BodyState {
                    path: b.rel.as_os_str().as_bytes().to_vec(),
                    offset,
                    remaining,
                    sample: splice_sample(b.file.file(), offset, offset + remaining)?,
                })
            }
        };
        Ok(HttpConnState {
            inbuf: self.inbuf.clone(),
            out: if rewind > 0 {
                Vec::new()
            } else {
                unsent.to_vec()
            },
            body,
            done: self.done,
            eof: self.eof,
            stats: self.stats,
        })
    }

    /// Continue a connection exported by [`HttpConn::export`], serving files below `root`
    /// with the same content as the exporting node's.
    ///
    /// The file of a body in progress is reopened below `root` (it may not lead out of it),
    /// positioned at the exported offset and must still hold at least the remaining bytes.
    /// The counters start from zero (see [`HttpConnState::stats`]).
    pub fn import(root: Arc<DocRoot>, label: String, st: HttpConnState) -> io::Result<HttpConn> {
        let body = match st.body {
            None => None,
            Some(b) => Some(Self::reopen_body(&root, b)?),
        };
        Ok(HttpConn {
            root,
            inbuf: st.inbuf,
            out: st.out,
            out_pos: 0,
            out_from_body: false,
            body,
            done: st.done,
            eof: st.eof,
            stats: HttpStats::default(),
            label,
            spare_path: PathBuf::new(),
        })
    }

    fn reopen_body(root: &DocRoot, b: BodyState) -> io::Result<FileBody> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&b.path));
        // Only plain names: no absolute path, `..` or `.` that could name something else.
        if rel.as_os_str().is_empty()
            || !rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid("body path is not a plain relative path"));
        }
        // By name, past any open-file cache: the length must be the file's now.
        let mut served = rel.clone();
        let (file, len, index) = root.open_fresh(&mut served)?;
        if index {
            return Err(invalid("body path names a directory"));
        }
        let end = b
            .offset
            .checked_add(b.remaining)
            .ok_or_else(|| invalid("body offset overflows"))?;
        // A response is a whole file, so its end is the file's length when it began: a file
        // of any other length now is another version (the head promised `end` bytes, and the
        // client would get the start of one version and the rest of another).
        if len != end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} has {len} bytes, the response is of {end}",
                    rel.display()
                ),
            ));
        }
        if splice_sample(&file, b.offset, len)? != b.sample {
            return Err(invalid(
                "the file's bytes around the handover point differ: another version",
            ));
        }
        Ok(FileBody {
            file: Opened::Own(file),
            rel,
            offset: b.offset,
            remaining: b.remaining,
        })
    }

    /// The body cannot be read as its head promised: the connection ends, and a cached
    /// handle that reads so is dropped from the cache (the next request opens the file anew).
    fn drop_failed_body(&mut self) {
        if let Some(FileBody {
            file: Opened::Shared(f),
            ..
        }) = self.body.take()
        {
            self.root.forget(&f);
        }
        self.done = true;
    }

    /// Whether part of a request head is buffered and nothing is being answered: the client
    /// is (still) sending a request (the server bounds how long that may take).
    pub fn awaiting_head(&self) -> bool {
        !self.done && !self.is_busy() && !self.inbuf.is_empty()
    }

    /// Over the server's connection limit: answer 503 before any request and close (RFC 9110
    /// §15.6.4).
    pub fn refuse_overloaded(&mut self) {
        self.error_response(503, "too many connections, try again later", false, false);
        self.finish();
    }

    /// The request head did not arrive in time: answer 408 and close (RFC 9110 §15.5.9).
    pub fn time_out_request(&mut self) {
        self.inbuf.clear();
        self.error_response(408, "the request took too long to arrive", false, false);
        self.finish();
    }

    /// Whether what [`HttpConn::poll_transmit`] gives now is a piece of a file body (not a
    /// head or an error response): a server short of buffer space holds those back first.
    pub fn sending_body(&self) -> bool {
        self.out_from_body
    }

    /// Whether a response is partly sent.
    pub fn is_busy(&self) -> bool {
        self.out_pos < self.out.len() || self.body.is_some()
    }

    /// Everything has been sent and no further request will be answered: close the
    /// connection (send FIN).
    pub fn is_finished(&self) -> bool {
        if self.is_busy() {
            return false;
        }
        if self.done {
            return true;
        }
        // At end of input, answer what is complete first; a partial request is dropped.
        self.eof && matches!(parse_request(&self.inbuf), Ok(None))
    }

    /// The next bytes to send (empty when there is nothing to send now). Reads the next part
    /// of a file body or answers the next buffered request when the previous output is gone.
    ///
    /// An error means a response could not be completed after its head promised a length:
    /// the connection must be aborted.
    pub fn poll_transmit(&mut self) -> io::Result<&[u8]> {
        while self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            self.out_from_body = false;
            if let Some(body) = &mut self.body {
                if body.remaining == 0 {
                    if let Some(done) = self.body.take() {
                        self.spare_path = done.rel;
                    }
                    continue;
                }
                let want = usize::try_from(body.remaining)
                    .unwrap_or(usize::MAX)
                    .min(CHUNK);
                self.out.resize(want, 0);
                let n = match body.file.file().read_at(&mut self.out[..want], body.offset) {
                    Ok(n) => n,
                    // A signal came first: read again (0 here would read as a shrunk file).
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        self.out.clear();
                        continue;
                    }
                    Err(e) => {
                        self.out.clear();
                        self.drop_failed_body();
                        return Err(e);
                    }
                };
                if n == 0 {
                    self.out.clear();
                    self.drop_failed_body();
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ));
                }
                self.out.truncate(n);
                self.out_from_body = true;
                body.offset += n as u64;
                body.remaining -= n as u64;
            } else if !self.next_request() {
                break;
            }
        }
        Ok(&self.out[self.out_pos..])
    }

    /// `n` bytes of [`HttpConn::poll_transmit`]'s output were sent.
    pub fn advance(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        self.stats.bytes_sent += n as u64;
    }

    /// Parse and answer the next buffered request; false when there is none.
    fn next_request(&mut self) -> bool {
        if self.done {
            return false;
        }
        // The parsed request borrows the received bytes while it is answered, so they are
        // moved out of the connection for that time (a move, not a copy) and put back after.
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let answered = match parse_request(&inbuf) {
            Ok(None) => false,
            Ok(Some((mut req, used))) => {
                // We serve no method that takes a body: discard it when it is all here. When
                // it is not (it may never come, e.g. after `Expect: 100-continue`), the end of
                // the body cannot be known without waiting, so answer and close (RFC 9110
                // §10.1.1, RFC 9112 §9.3).
                let len = usize::try_from(req.content_length).unwrap_or(usize::MAX);
                let consumed = if len <= inbuf.len() - used {
                    used + len
                } else {
                    req.keep_alive = false;
                    used
                };
                self.respond(&req);
                inbuf.drain(..consumed);
                true
            }
            Err(e) => {
                tracing::debug!(conn = %self.label, status = e.status(), "bad request: {}", e.detail());
                self.error_response(e.status(), e.detail(), false, false);
                self.finish();
                true
            }
        };
        // What `finish` would have cleared while the bytes were out.
        if self.done {
            inbuf.clear();
        }
        self.inbuf = inbuf;
        answered
    }

    fn respond(&mut self, req: &Request<'_>) {
        let head_only = req.method == Method::Head;
        let status = match &req.method {
            Method::Get | Method::Head => self.serve_file(req, head_only),
            Method::NotAllowed(_) => {
                self.error_response(
                    405,
                    "only GET and HEAD are allowed",
                    req.keep_alive,
                    head_only,
                );
                405
            }
            Method::Unknown(_) => {
                self.error_response(501, "method not implemented", req.keep_alive, head_only);
                501
            }
        };
        tracing::debug!(
            conn = %self.label,
            method = req.method.as_str(),
            target = %req.target,
            status,
            "request"
        );
        if !req.keep_alive {
            self.finish();
        }
    }

    /// Answer GET/HEAD for `req.target`; returns the status sent.
    fn serve_file(&mut self, req: &Request<'_>, head_only: bool) -> u16 {
        // The path of the body sent last is reused for this one's.
        let mut buf = std::mem::take(&mut self.spare_path)
            .into_os_string()
            .into_vec();
        let mut rel = match sanitize_target_into(req.target, &mut buf) {
            Ok(()) => PathBuf::from(std::ffi::OsString::from_vec(buf)),
            Err(why) => {
                self.spare_path = PathBuf::from(std::ffi::OsString::from_vec(buf));
                self.error_response(400, why, req.keep_alive, head_only);
                return 400;
            }
        };
        match self.root.open_file(&mut rel) {
            Ok((file, len)) => {
                let headers = [("Content-Type", content_type(&rel))];
                self.head(200, &headers, len, req.keep_alive);
                if !head_only && len > 0 {
                    self.body = Some(FileBody {
                        file,
                        rel,
                        offset: 0,
                        remaining: len,
                    });
                } else {
                    self.spare_path = rel;
                }
                self.stats.count(200);
                200
            }
            Err(e) => {
                self.spare_path = rel;
                let status = open_error_status(&e);
                if status >= 500 {
                    tracing::warn!(conn = %self.label, status, "cannot open a file: {e}");
                }
                self.error_response(status, reason(status), req.keep_alive, head_only);
                status
            }
        }
    }

    /// Queue a response head, written straight into the output buffer.
    fn head(&mut self, status: u16, extra: &[(&str, &str)], len: u64, keep_alive: bool) {
        use std::io::Write as _;
        let h = &mut self.out;
        // Writing into a Vec cannot fail.
        let _ = write!(h, "HTTP/1.1 {} {}\r\nDate: ", status, reason(status));
        write_date_now(h);
        h.extend_from_slice(b"\r\nServer: dsnode\r\n");
        for (name, value) in extra {
            let _ = write!(h, "{name}: {value}\r\n");
        }
        let _ = write!(h, "Content-Length: {len}\r\n");
        let conn = if keep_alive { "keep-alive" } else { "close" };
        let _ = write!(h, "Connection: {conn}\r\n\r\n");
    }

    /// Queue a complete error response with a short plain-text body, "`status` `reason`:
    /// `detail`", written straight into the output buffer (no allocation: a client that asks
    /// only for what is not there costs no more than one that is served).
    fn error_response(&mut self, status: u16, detail: &str, keep_alive: bool, head_only: bool) {
        use std::io::Write as _;
        let text = ("Content-Type", "text/plain; charset=utf-8");
        let extra: &[(&str, &str)] = if status == 405 {
            &[text, ("Allow", "GET, HEAD")]
        } else {
            &[text]
        };
        let why = reason(status);
        // A three-digit status, a space, the reason, ": ", the detail and a newline.
        let len = 3 + 1 + why.len() + 2 + detail.len() + 1;
        self.head(status, extra, len as u64, keep_alive);
        if !head_only {
            let before = self.out.len();
            // Writing into a Vec cannot fail.
            let _ = writeln!(self.out, "{status:03} {why}: {detail}");
            debug_assert_eq!(self.out.len() - before, len, "the body is as long as said");
        }
        if status >= 400 {
            self.stats.count(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn parse_ok(s: &str) -> (Request<'_>, usize) {
        match parse_request(s.as_bytes()) {
            Ok(Some(r)) => r,
            other => panic!("expected a request from {s:?}, got {other:?}"),
        }
    }

    fn parse_err(s: &str) -> ParseError {
        match parse_request(s.as_bytes()) {
            Err(e) => e,
            other => panic!("expected an error from {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn open_errors_map_to_the_right_status() {
        // Finding 3 of issue 12: "too many open files" was answered 404.
        let os = io::Error::from_raw_os_error;
        assert_eq!(open_error_status(&os(libc::EMFILE)), 503);
        assert_eq!(open_error_status(&os(libc::ENFILE)), 503);
        assert_eq!(open_error_status(&os(libc::ENOMEM)), 503);
        assert_eq!(open_error_status(&os(libc::ENOENT)), 404);
        assert_eq!(open_error_status(&os(libc::ENOTDIR)), 404);
        assert_eq!(open_error_status(&os(libc::EACCES)), 403);
        assert_eq!(open_error_status(&os(libc::EIO)), 500);
        assert_eq!(open_error_status(&io::ErrorKind::NotFound.into()), 404);
    }

    #[test]
    fn simple_get() {
        let s = "GET /file HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n";
        let (r, used) = parse_ok(s);
        assert_eq!(used, s.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, "/file");
        assert_eq!(r.minor, 1);
        assert!(r.keep_alive);
        assert_eq!(r.header("user-agent"), Some(&b"t"[..]));
        assert_eq!(r.header("User-Agent"), r.header("user-agent"));
        assert_eq!(
            r.headers().collect::<Vec<_>>(),
            [(&b"Host"[..], &b"x"[..]), (&b"User-Agent"[..], &b"t"[..])]
        );
        assert_eq!(r.content_length, 0);
    }

    #[test]
    fn incomplete_heads_need_more() {
        let full = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for i in 0..full.len() {
            assert_eq!(parse_request(&full.as_bytes()[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let s = "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let (r1, used) = parse_ok(s);
        assert_eq!(r1.method, Method::Head);
        let (r2, used2) = parse_ok(&s[used..]);
        assert_eq!(r2.target, "/b");
        assert_eq!(used + used2, s.len());
    }

    #[test]
    fn bare_lf_and_leading_empty_lines() {
        let (r, used) = parse_ok("\r\n\nGET / HTTP/1.0\nHost: x\n\n");
        assert_eq!(r.minor, 0);
        assert_eq!(used, 27);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !parse_ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!parse_ok("GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            parse_ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !parse_ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade, CLOSE\r\n\r\n")
                .0
                .keep_alive
        );
        // HTTP/1.2 is answered as 1.1.
        assert_eq!(parse_ok("GET / HTTP/1.2\r\nHost: x\r\n\r\n").0.minor, 1);
    }

    #[test]
    fn methods() {
        assert_eq!(
            parse_ok("POST / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
            Method::NotAllowed("POST")
        );
        assert_eq!(
            parse_ok("BREW / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
            Method::Unknown("BREW")
        );
        // Methods are case-sensitive.
        assert_eq!(
            parse_ok("get / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
            Method::Unknown("get")
        );
    }

    #[test]
    fn malformed_request_lines() {
        for s in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            "GET / HTTP/11\r\nHost: x\r\n\r\n",
            "GET / http/1.1\r\nHost: x\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
            "\r\n",
        ] {
            if s == "\r\n" {
                assert_eq!(parse_request(s.as_bytes()), Ok(None));
                continue;
            }
            assert_eq!(parse_err(s).status(), 400, "{s:?}");
        }
        assert_eq!(
            parse_err("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            ParseError::VersionNotSupported
        );
    }

    #[test]
    fn malformed_fields() {
        for s in [
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nA: b\x00c\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse_err(s).status(), 400, "{s:?}");
        }
        assert_eq!(
            parse_err("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").status(),
            501
        );
        let (r, _) =
            parse_ok("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.content_length, 5);
    }

    /// Every field is checked and counted before any is interpreted: a malformed field or one
    /// too many wins over a `Transfer-Encoding` (501) before it.
    #[test]
    fn fields_are_checked_before_they_are_interpreted() {
        let te = "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n";
        assert_eq!(parse_err(&format!("{te}Bad Field\r\n\r\n")).status(), 400);
        let mut many = String::from(te);
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        assert_eq!(parse_err(&format!("{many}\r\n")), ParseError::HeadTooLarge);
        // Exactly MAX_HEADERS fields are taken.
        let mut full = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 1..MAX_HEADERS {
            full.push_str(&format!("X-{i}: y\r\n"));
        }
        full.push_str("\r\n");
        assert_eq!(parse_ok(&full).0.headers().count(), MAX_HEADERS);
    }

    /// `Connection` is a list of tokens separated by commas and optional whitespace, which is
    /// space and tab only (RFC 9110 §5.6.1, §5.6.3): a token followed by a non-breaking space
    /// is another token. (The parser before a662b06 trimmed any Unicode whitespace.)
    #[test]
    fn connection_tokens_are_trimmed_of_spaces_and_tabs_only() {
        let with = |v: &[u8]| {
            let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: ".to_vec();
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n\r\n");
            parse_request(&req).unwrap().unwrap().0.keep_alive
        };
        assert!(!with(b"\t close \t"));
        assert!(!with(b"upgrade,close"));
        assert!(with(b"close\xc2\xa0"));
        assert!(with(b"closed"));
    }

    #[test]
    fn oversized_heads() {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        while s.len() <= MAX_HEAD {
            s.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        // Too large before the head is even complete.
        assert_eq!(parse_err(&s), ParseError::HeadTooLarge);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_err(&many), ParseError::HeadTooLarge);
    }

    #[test]
    fn target_sanitising() {
        // The path's segments, split where the sanitiser put separators.
        let segs = |t: &str| {
            sanitize_target(t).map(|p| {
                let raw = p.into_os_string().into_vec();
                raw.split(|&b| b == b'/')
                    .filter(|_| !raw.is_empty())
                    .map(|s| String::from_utf8(s.to_vec()).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(segs("/"), Ok(vec![]));
        assert_eq!(
            segs("/a//b/./c?x=../y#z"),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(segs("/with%20space"), Ok(vec!["with space".into()]));
        assert_eq!(
            segs("http://[fd00::1]/x/y"),
            Ok(vec!["x".into(), "y".into()])
        );
        assert_eq!(segs("HTTP://host"), Ok(vec![]));
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/%2E%2E",
            "/a%2fb",
            "/a%00",
            "/%zz",
            "/%4",
            "*",
            "x/y",
        ] {
            assert!(sanitize_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_types_from_the_extension_in_any_case() {
        for (name, want) in [
            ("a/index.html", "text/html; charset=utf-8"),
            ("INDEX.HTM", "text/html; charset=utf-8"),
            ("x.JpEg", "image/jpeg"),
            ("notes.md", "text/plain; charset=utf-8"),
            ("data.bin", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
            (".html", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), want, "{name}");
        }
    }

    #[test]
    fn date_format() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_825_600);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 12:00:00 GMT");
    }

    /// A scratch document root, removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("ds-apps-http-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Root(std::fs::canonicalize(&dir).unwrap())
        }

        fn doc(&self) -> Arc<DocRoot> {
            DocRoot::open(&self.0).unwrap()
        }

        fn write(&self, name: &str, data: &[u8]) {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::File::create(path)
                .unwrap()
                .write_all(data)
                .unwrap();
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Drain all output, taking at most `step` bytes at a time.
    fn drain(c: &mut HttpConn, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = c.poll_transmit().unwrap();
            if chunk.is_empty() {
                return out;
            }
            let n = chunk.len().min(step);
            out.extend_from_slice(&chunk[..n]);
            c.advance(n);
        }
    }

    /// Split a byte stream of responses into (status, headers, body) triples.
    fn responses(mut data: &[u8], head_only: &[bool]) -> Vec<(u16, String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while !data.is_empty() {
            let end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8(data[..end].to_vec()).unwrap();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            let blen = if head_only.get(i).copied().unwrap_or(false) {
                0
            } else {
                len
            };
            out.push((status, head, data[end..end + blen].to_vec()));
            data = &data[end + blen..];
            i += 1;
        }
        out
    }

    #[test]
    fn serves_files_and_errors_over_one_connection() {
        let root = Root::new("serve");
        root.write("index.html", b"<h1>hi</h1>");
        root.write("sub/data.bin", &[7u8; 1000]);
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /sub/data.bin HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /missing HTTP/1.1\r\nHost: x\r\n\r\n\
              DELETE /sub/data.bin HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /sub/data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
              GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let out = drain(&mut c, 100);
        let rs = responses(&out, &[false, true]);
        assert_eq!(rs.len(), 5);
        assert_eq!(rs[0].0, 200);
        assert!(rs[0].1.contains("Content-Type: text/html"));
        assert_eq!(rs[0].2, b"<h1>hi</h1>");
        assert_eq!(rs[1].0, 200);
        assert!(rs[1].1.contains("Content-Length: 1000\r\n"));
        assert_eq!(rs[2].0, 404);
        assert_eq!(rs[3].0, 405);
        assert!(rs[3].1.contains("Allow: GET, HEAD\r\n"));
        assert!(rs[3].1.contains("Connection: keep-alive\r\n"));
        assert_eq!(rs[4].0, 200);
        assert!(rs[4].1.contains("Connection: close\r\n"));
        assert_eq!(rs[4].2, vec![7u8; 1000]);
        assert!(c.is_finished());
        assert_eq!(c.stats().requests, 5);
        assert_eq!(c.stats().status_2xx, 3);
        assert_eq!(c.stats().status_4xx, 2);
        assert_eq!(c.stats().bytes_sent, out.len() as u64);
    }

    /// One GET on a fresh connection: status and body.
    fn get(root: &Arc<DocRoot>, target: &str) -> (u16, String, Vec<u8>) {
        let mut c = HttpConn::new(root.clone(), "t".into());
        c.feed(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        responses(&drain(&mut c, 1 << 20), &[]).remove(0)
    }

    fn cached(root: &Root, max: usize, valid: Duration) -> Arc<DocRoot> {
        DocRoot::open_with_cache(&root.0, OpenFileCache { max, valid }).unwrap()
    }

    fn cache_len(root: &DocRoot) -> usize {
        root.cache.as_ref().unwrap().lock().unwrap().files.len()
    }

    #[test]
    fn cached_files_are_served_from_their_handle_until_they_expire() {
        let root = Root::new("cache");
        root.write("a.txt", b"first");
        root.write("dir/index.html", b"<p>index</p>");
        let plain = root.doc();
        let hour = Duration::from_secs(3600);
        let kept = cached(&root, 16, hour);
        // A cache whose entries are valid for no time would only churn: it is off.
        assert!(cached(&root, 16, Duration::ZERO).cache.is_none());
        assert!(cached(&root, 0, hour).cache.is_none());
        let t = Instant::now();
        let brief = cached(&root, 16, Duration::from_secs(10));
        for r in [&plain, &kept] {
            assert_eq!(get(r, "/a.txt").2, b"first");
            assert_eq!(get(r, "/dir/").2, b"<p>index</p>");
        }
        assert_eq!(open_at(&brief, "a.txt", t), b"first");
        assert_eq!(
            open_at(&brief, "dir", t + Duration::from_secs(1)),
            b"<p>index</p>"
        );
        // Replaced (a new file renamed over it) and removed: the long-lived cache still serves
        // what it opened, the others open by name and see the change.
        std::fs::write(root.0.join("a.new"), b"second").unwrap();
        std::fs::rename(root.0.join("a.new"), root.0.join("a.txt")).unwrap();
        std::fs::remove_file(root.0.join("dir/index.html")).unwrap();
        assert_eq!(get(&kept, "/a.txt").2, b"first");
        let (status, head, body) = get(&kept, "/dir/");
        assert_eq!((status, body.as_slice()), (200, &b"<p>index</p>"[..]));
        assert!(head.contains("Content-Type: text/html"), "{head}");
        assert_eq!(get(&plain, "/a.txt").2, b"second");
        assert_eq!(get(&plain, "/dir/").0, 404);
        // Still valid at 5 s; at 10.2 s opened by name again. A failed open is not cached,
        // and drops what was (at 11.5 s `dir` has expired, before the next sweep is due).
        let ms = Duration::from_millis;
        assert_eq!(open_at(&brief, "a.txt", t + ms(5000)), b"first");
        assert_eq!(open_at(&brief, "a.txt", t + ms(10_200)), b"second");
        assert_eq!(cache_len(&brief), 2);
        let gone = brief.open_file_at(&mut PathBuf::from("dir"), || t + ms(11_500));
        assert_eq!(gone.err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        assert_eq!(cache_len(&brief), 1);
        assert_eq!(cache_len(&kept), 2);
        // Counted: `kept` opened two files and served the next two requests from them.
        let st = kept.open_file_stats();
        assert_eq!((st.files, st.opens, st.hits), (2, 2, 2));
        assert_eq!(plain.open_file_stats(), OpenFileStats::default());
    }

    /// Open `name` through the root's cache at `t`; the first bytes of what it reads.
    fn open_at(doc: &DocRoot, name: &str, t: Instant) -> Vec<u8> {
        let (f, len) = doc.open_file_at(&mut PathBuf::from(name), || t).unwrap();
        let mut buf = vec![0; len as usize];
        let n = f.file().read_at(&mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    }

    fn cached_names(doc: &DocRoot) -> Vec<String> {
        let c = doc.cache.as_ref().unwrap().lock().unwrap();
        let mut v: Vec<String> = c.files.keys().map(|p| p.display().to_string()).collect();
        v.sort();
        v
    }

    /// When full, the expired entries go first, then the less recently used half; an
    /// entry expires `valid` after it was opened, however often it is used meanwhile.
    #[test]
    fn the_cache_drops_expired_then_least_recently_used_entries() {
        let root = Root::new("cache-order");
        for n in ["a", "b", "c", "d", "e"] {
            root.write(n, n.as_bytes());
        }
        let t = Instant::now();
        let s = Duration::from_secs;
        // Least recently used: `a` opened first but used last survives; b, c, d go.
        let doc = cached(&root, 4, s(3600));
        for (i, n) in ["a", "b", "c", "d"].into_iter().enumerate() {
            open_at(&doc, n, t + s(i as u64));
        }
        open_at(&doc, "a", t + s(4));
        open_at(&doc, "e", t + s(5));
        assert_eq!(cached_names(&doc), ["a", "e"]);
        // Expired first: when `c` needs room, `a` (used most recently, but opened over `valid`
        // ago) goes and `b` stays. The periodic expiry ran at 10.2 s, too early for `a`.
        let ms = Duration::from_millis;
        let doc = cached(&root, 2, s(10));
        open_at(&doc, "a", t + ms(1500));
        open_at(&doc, "b", t + ms(3000));
        open_at(&doc, "b", t + ms(10_200));
        open_at(&doc, "a", t + ms(11_000));
        assert_eq!(cached_names(&doc), ["a", "b"]);
        open_at(&doc, "c", t + ms(12_000));
        assert_eq!(cached_names(&doc), ["b", "c"]);
        // Expiry counts from the open, not the last use: hits every 3 s do not keep a
        // replaced file's old handle past `valid`.
        // (The periodic expiry runs at 10.2 s, before `a` expires at 11 s.)
        let doc = cached(&root, 8, s(10));
        assert_eq!(open_at(&doc, "a", t + s(1)), b"a");
        std::fs::write(root.0.join("a.new"), b"new a").unwrap();
        std::fs::rename(root.0.join("a.new"), root.0.join("a")).unwrap();
        for at in [4000, 10_200, 10_800] {
            assert_eq!(open_at(&doc, "a", t + ms(at)), b"a", "hit at {at} ms");
        }
        assert_eq!(open_at(&doc, "a", t + ms(11_500)), b"new a");
        // The root's own sweep closes expired entries nobody asks for again.
        let doc = cached(&root, 8, Duration::from_millis(1));
        open_at(&doc, "b", Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        doc.expire_cached();
        assert!(cached_names(&doc).is_empty());
    }

    /// A cached file that shrank cuts the response it was promised to (as without a cache)
    /// and leaves the cache: the next request gets the file as it is now.
    #[test]
    fn a_cached_file_that_shrank_leaves_the_cache() {
        let root = Root::new("cache-shrink");
        let data = noise(3 * CHUNK);
        root.write("big", &data);
        let doc = cached(&root, 8, Duration::from_secs(3600));
        let mut c = HttpConn::new(doc.clone(), "t".into());
        c.feed(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(take(&mut c, 1000, 1000).len(), 1000);
        std::fs::OpenOptions::new()
            .write(true)
            .open(root.0.join("big"))
            .unwrap()
            .set_len(10)
            .unwrap();
        let failed = loop {
            match c.poll_transmit() {
                Ok([]) => break false,
                Ok(chunk) => {
                    let n = chunk.len();
                    c.advance(n);
                }
                Err(e) => break e.kind() == io::ErrorKind::UnexpectedEof,
            }
        };
        assert!(failed, "the response must end with an error");
        assert!(cached_names(&doc).is_empty());
        assert_eq!(get(&doc, "/big").2, data[..10]);
    }

    /// A response from a cached root hands over to another cached root.
    #[test]
    fn a_cached_body_hands_over_to_a_cached_root() {
        let data = noise(2 * CHUNK + 17);
        let (a, b) = (Root::new("cache-ho-a"), Root::new("cache-ho-b"));
        for r in [&a, &b] {
            r.write("f", &data);
        }
        let hour = Duration::from_secs(3600);
        let (da, db) = (cached(&a, 8, hour), cached(&b, 8, hour));
        // The importing side has the file cached already.
        assert_eq!(get(&db, "/f").2, data);
        let mut c = HttpConn::new(da, "t".into());
        c.feed(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
        let first = take(&mut c, CHUNK + 5, 1460);
        let st = HttpConnState::decode(&c.export().unwrap().encode()).unwrap();
        let mut d = HttpConn::import(db, "imported".into(), st).unwrap();
        let all = [first, drain(&mut d, 4096)].concat();
        assert_eq!(responses(&all, &[])[0].2, data);
    }

    #[test]
    fn the_cache_keeps_at_most_its_size_and_streams_at_any_offset() {
        let root = Root::new("cache-bound");
        for i in 0..10 {
            root.write(&format!("f{i}"), format!("file {i}").as_bytes());
        }
        let doc = cached(&root, 4, Duration::from_secs(3600));
        for round in 0..3 {
            for i in 0..10 {
                assert_eq!(
                    get(&doc, &format!("/f{i}")).2,
                    format!("file {i}").as_bytes()
                );
                assert!(cache_len(&doc) <= 4, "round {round}, file {i}");
            }
        }
        // Two connections read one cached handle at their own offsets (pread).
        let data: Vec<u8> = (0..(2 * CHUNK + 7)).map(|i| (i % 253) as u8).collect();
        root.write("big", &data);
        let mut a = HttpConn::new(doc.clone(), "a".into());
        let mut b = HttpConn::new(doc.clone(), "b".into());
        for c in [&mut a, &mut b] {
            c.feed(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        let (mut out_a, mut out_b) = (take(&mut a, 1000, 1000), Vec::new());
        for _ in 0..4 {
            out_b.extend(take(&mut b, CHUNK / 2 + 3, 4096));
            out_a.extend(take(&mut a, CHUNK / 3, 512));
        }
        out_a.extend(drain(&mut a, 1 << 20));
        out_b.extend(drain(&mut b, 1 << 20));
        for out in [out_a, out_b] {
            assert_eq!(responses(&out, &[])[0].2, data);
        }
    }

    #[test]
    fn large_file_streams_in_chunks() {
        let root = Root::new("large");
        let data: Vec<u8> = (0..(3 * CHUNK + 123))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        root.write("big", &data);
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
        // Output never holds more than one chunk (plus a head) at a time.
        assert!(c.poll_transmit().unwrap().len() < 1024);
        let out = drain(&mut c, 1460);
        let rs = responses(&out, &[]);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].2, data);
        assert!(!c.is_finished(), "keep-alive connection stays open");
        c.feed_eof();
        assert!(c.is_finished());
    }

    #[test]
    fn request_split_across_reads_and_body_skipped() {
        let root = Root::new("split");
        root.write("a", b"A");
        let mut c = HttpConn::new(root.doc(), "t".into());
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        // The first response is produced (and not yet sent) while the rest trickles in.
        for b in req.chunks(3) {
            c.feed(b);
            let _ = c.poll_transmit().unwrap();
        }
        let out = drain(&mut c, usize::MAX);
        let rs = responses(&out, &[]);
        assert_eq!(rs.len(), 3);
        assert!(rs.iter().all(|r| r.0 == 200 && r.2 == b"A"));
        assert!(!c.is_finished());
    }

    #[test]
    fn incomplete_body_answers_then_closes() {
        let root = Root::new("body");
        root.write("a", b"A");
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
        );
        let rs = responses(&drain(&mut c, usize::MAX), &[]);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].0, 405);
        assert!(rs[0].1.contains("Connection: close\r\n"));
        assert!(c.is_finished());
    }

    #[test]
    fn traversal_and_symlinks_cannot_leave_root() {
        let root = Root::new("trav");
        let outside = Root::new("trav-outside");
        outside.write("secret", b"s");
        std::os::unix::fs::symlink(outside.0.join("secret"), root.0.join("link")).unwrap();
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET /../trav-outside/secret HTTP/1.1\r\nHost: x\r\n\r\nGET /link HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = drain(&mut c, usize::MAX);
        let rs = responses(&out, &[]);
        assert_eq!(rs[0].0, 400);
        assert_eq!(rs[1].0, 404);
    }

    /// Links that stay inside the root are followed (relative ones by the kernel's
    /// RESOLVE_BENEATH, absolute ones by the slow path); a relative link out, a directory link
    /// out and a FIFO are not served.
    #[test]
    fn links_inside_the_root_are_served_and_special_files_are_not() {
        let root = Root::new("links");
        let outside = Root::new("links-outside");
        outside.write("secret", b"s");
        root.write("a.txt", b"inside");
        std::fs::create_dir(root.0.join("sub")).unwrap();
        std::os::unix::fs::symlink("../a.txt", root.0.join("sub/rel")).unwrap();
        std::os::unix::fs::symlink(root.0.join("a.txt"), root.0.join("abs")).unwrap();
        std::os::unix::fs::symlink("../links-outside/secret", root.0.join("relout")).unwrap();
        std::os::unix::fs::symlink(&outside.0, root.0.join("dirout")).unwrap();
        let fifo = std::ffi::CString::new(root.0.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let mut c = HttpConn::new(root.doc(), "t".into());
        for t in [
            "/sub/rel",
            "/abs",
            "/relout",
            "/dirout/secret",
            "/fifo",
            "/sub",
        ] {
            c.feed(format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        let out = drain(&mut c, usize::MAX);
        let rs = responses(&out, &[]);
        let got: Vec<u16> = rs.iter().map(|r| r.0).collect();
        assert_eq!(got, vec![200, 200, 404, 404, 404, 404]);
        assert_eq!(rs[0].2, b"inside");
        assert_eq!(rs[1].2, b"inside");
    }

    #[test]
    fn bad_request_closes() {
        let root = Root::new("bad");
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET / HTTP/1.1\r\nHost : x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = drain(&mut c, usize::MAX);
        let rs = responses(&out, &[]);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].0, 400);
        assert!(rs[0].1.contains("Connection: close\r\n"));
        assert!(c.is_finished());
    }

    /// After the last response (asked for by `Connection: close`, or after a 400) nothing
    /// that followed is kept, not even for a handoff.
    #[test]
    fn nothing_is_kept_after_the_last_response() {
        let root = Root::new("after-close");
        root.write("a", b"a");
        for first in [
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
        ] {
            let mut c = HttpConn::new(root.doc(), "t".into());
            c.feed(format!("{first}GET /a HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            assert_eq!(responses(&drain(&mut c, usize::MAX), &[]).len(), 1);
            assert!(c.export().unwrap().inbuf.is_empty(), "{first:?}");
            assert!(c.is_finished());
        }
    }

    /// A body that ends exactly where the received bytes end is discarded whole: the
    /// connection stays open for the next request.
    #[test]
    fn a_body_ending_with_the_input_keeps_the_connection() {
        let root = Root::new("body-edge");
        root.write("a", b"A");
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        let rs = responses(&drain(&mut c, usize::MAX), &[]);
        assert!(
            rs[0].1.contains("Connection: keep-alive\r\n"),
            "{}",
            rs[0].1
        );
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        let rs = responses(&drain(&mut c, usize::MAX), &[]);
        assert_eq!((rs.len(), rs[0].0, rs[0].2.as_slice()), (1, 200, &b"A"[..]));
        assert!(!c.is_finished());
    }

    #[test]
    fn partial_request_at_eof_is_dropped() {
        let root = Root::new("eof");
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET / HTTP/1.1\r\nHo");
        c.feed_eof();
        assert!(drain(&mut c, usize::MAX).is_empty());
        assert!(c.is_finished());
        assert!(!c.wants_input());
    }

    /// 1 MiB of pseudo-random bytes (xorshift), so a misplaced offset cannot go unnoticed.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Take exactly `n` bytes of output (fewer only if the connection runs dry).
    fn take(c: &mut HttpConn, n: usize, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let chunk = c.poll_transmit().unwrap();
            if chunk.is_empty() {
                break;
            }
            let k = chunk.len().min(step).min(n - out.len());
            out.extend_from_slice(&chunk[..k]);
            c.advance(k);
        }
        out
    }

    /// Move a connection through export, encode, decode and import onto `root`.
    fn hand_over(c: &HttpConn, root: &Root) -> HttpConn {
        let st = c.export().unwrap();
        let bytes = st.encode();
        let back = HttpConnState::decode(&bytes).unwrap();
        assert_eq!(back, st);
        HttpConn::import(root.doc(), "imported".into(), back).unwrap()
    }

    #[test]
    fn export_mid_body_continues_on_another_root() {
        let data = noise(1 << 20);
        let (a, b) = (Root::new("ho-a"), Root::new("ho-b"));
        for r in [&a, &b] {
            r.write("dir/big.bin", &data);
            r.write("small.txt", b"small");
        }
        let mut c = HttpConn::new(a.doc(), "t".into());
        // The second, pipelined request is still unparsed input at the handoff.
        c.feed(b"GET /dir/big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        // Stop inside a chunk, so part of the chunk read from the file is still unsent.
        let first = take(&mut c, 300_007, 1460);
        assert_eq!(first.len(), 300_007);
        let st = c.export().unwrap();
        // The unsent part of the chunk travels as a file offset, not as bytes.
        assert!(st.out.is_empty() && !st.inbuf.is_empty());
        let body = st.body.clone().unwrap();
        assert_eq!(body.path, b"dir/big.bin");
        assert_eq!(body.offset + body.remaining, data.len() as u64);
        assert_eq!(st.stats.bytes_sent, 300_007);

        let mut d = hand_over(&c, &b);
        drop(c);
        let second = drain(&mut d, 1000);
        assert!(d.is_finished());
        assert_eq!(
            d.stats().bytes_sent,
            second.len() as u64,
            "counts from zero"
        );
        let all = [first, second].concat();
        let rs = responses(&all, &[]);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].0, 200);
        assert!(rs[0].2 == data, "body differs");
        assert_eq!(rs[1].2, b"small");
        let total: usize = rs.iter().map(|r| r.1.len() + r.2.len()).sum();
        assert_eq!(total, all.len(), "no byte lost or duplicated");
    }

    #[test]
    fn export_with_unsent_head_bytes() {
        let data = noise(100_000);
        let root = Root::new("ho-head");
        root.write("f", &data);
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
        let first = take(&mut c, 10, usize::MAX);
        let st = c.export().unwrap();
        // Only the rest of the head is queued: the body has not been read yet.
        assert!(st.out.ends_with(b"\r\n\r\n"));
        assert_eq!(
            st.body.as_ref().map(|b| (b.offset, b.remaining)),
            Some((0, 100_000))
        );
        let mut d = hand_over(&c, &root);
        let all = [first, drain(&mut d, 4096)].concat();
        let rs = responses(&all, &[]);
        assert_eq!(rs.len(), 1);
        assert!(rs[0].1.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(rs[0].2 == data);
        assert!(!d.is_finished(), "still a keep-alive connection");
    }

    #[test]
    fn export_between_requests() {
        let root = Root::new("ho-idle");
        root.write("a", b"A");
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTT");
        let first = drain(&mut c, usize::MAX);
        c.feed_eof();
        let st = c.export().unwrap();
        assert_eq!((st.out.len(), st.body.is_none(), st.eof), (0, true, true));
        let mut d = hand_over(&c, &root);
        assert!(drain(&mut d, usize::MAX).is_empty());
        assert!(d.is_finished(), "partial request dropped at EOF");
        assert_eq!(responses(&first, &[]).len(), 1);
    }

    #[test]
    fn garbage_state_is_refused() {
        let root = Root::new("ho-garbage");
        root.write("f", &noise(200_000));
        let mut c = HttpConn::new(root.doc(), "t".into());
        c.feed(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
        take(&mut c, 1000, usize::MAX);
        let good = c.export().unwrap().encode();
        assert!(matches!(
            HttpConnState::decode(&[]),
            Err(HttpStateError::Empty)
        ));
        let mut wrong = good.clone();
        wrong[0] = 99;
        assert!(matches!(
            HttpConnState::decode(&wrong),
            Err(HttpStateError::Version(99))
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            HttpConnState::decode(&long),
            Err(HttpStateError::Trailing(1))
        ));
        for n in 0..good.len() {
            assert!(HttpConnState::decode(&good[..n]).is_err(), "prefix {n}");
        }
        assert!(HttpConnState::decode(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn import_refuses_paths_leaving_the_root_and_short_files() {
        let root = Root::new("ho-esc");
        let outside = Root::new("ho-esc-outside");
        outside.write("secret", &[1u8; 100]);
        root.write("f", &[2u8; 100]);
        std::os::unix::fs::symlink(outside.0.join("secret"), root.0.join("link")).unwrap();
        // The sample of the file as it is now, where it can be taken.
        let state = |path: &[u8], offset: u64, remaining: u64| HttpConnState {
            inbuf: Vec::new(),
            out: Vec::new(),
            body: Some(BodyState {
                path: path.to_vec(),
                offset,
                remaining,
                sample: File::open(root.0.join(std::ffi::OsStr::from_bytes(path)))
                    .ok()
                    .and_then(|f| splice_sample(&f, offset, offset.saturating_add(remaining)).ok())
                    .unwrap_or(0),
            }),
            done: false,
            eof: false,
            stats: HttpStats::default(),
        };
        let escape = format!(
            "../{}/secret",
            outside.0.file_name().unwrap().to_string_lossy()
        );
        let abs = outside.0.join("secret");
        for p in [
            escape.as_bytes(),
            abs.as_os_str().as_bytes(),
            b"link",
            b"",
            b"./f",
            b"missing",
            b".",
        ] {
            let r = HttpConn::import(root.doc(), "t".into(), state(p, 0, 10));
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(p));
        }
        // The file must still hold offset + remaining bytes.
        let short = HttpConn::import(root.doc(), "t".into(), state(b"f", 50, 51));
        assert_eq!(
            short.err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
        // And no more: a response is a whole file, so a longer one is another version.
        let other = HttpConn::import(root.doc(), "t".into(), state(b"f", 10, 50));
        assert_eq!(
            other.err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
        assert!(HttpConn::import(root.doc(), "t".into(), state(b"f", 1, u64::MAX)).is_err());
        let mut ok = HttpConn::import(root.doc(), "t".into(), state(b"f", 50, 50)).unwrap();
        assert_eq!(drain(&mut ok, usize::MAX), vec![2u8; 50]);
        // Nor another version of the same length: the bytes around the handover point differ.
        let exported = state(b"f", 50, 50);
        root.write("f", &[3u8; 100]);
        let other = HttpConn::import(root.doc(), "t".into(), exported);
        assert_eq!(
            other.err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData)
        );
        // The sample is 512 bytes each side: a version that differs only farther away still
        // passes (what is left to a digest of the whole file).
        let mut big = vec![5u8; 4096];
        root.write("big", &big);
        let exported = state(b"big", 2048, 2048);
        big[0] = 6;
        big[4095] = 6;
        root.write("big", &big);
        assert!(HttpConn::import(root.doc(), "t".into(), exported.clone()).is_ok());
        big[1536] = 6;
        root.write("big", &big);
        assert!(HttpConn::import(root.doc(), "t".into(), exported).is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes never panic the parser, and whatever it accepts it consumed.
            #[test]
            fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
                if let Ok(Some((_, used))) = parse_request(&data) {
                    prop_assert!(used <= data.len());
                }
            }

            /// A valid request parses the same wherever the input stops growing.
            #[test]
            fn prefixes_need_more_then_parse(
                path in "/[a-z0-9._-]{0,20}",
                extra in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..5),
            ) {
                let mut req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
                for (n, v) in &extra {
                    if n.eq_ignore_ascii_case("host") || n.eq_ignore_ascii_case("content-length")
                        || n.eq_ignore_ascii_case("transfer-encoding")
                    {
                        continue;
                    }
                    req.push_str(&format!("{n}: {v}\r\n"));
                }
                req.push_str("\r\n");
                let bytes = req.as_bytes();
                for i in 0..bytes.len() {
                    prop_assert_eq!(parse_request(&bytes[..i]), Ok(None));
                }
                let (r, used) = parse_request(bytes).unwrap().unwrap();
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(r.target, path);
            }

            /// Decoding arbitrary bytes never panics.
            #[test]
            fn state_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = HttpConnState::decode(&data);
                let mut v = vec![1u8];
                v.extend_from_slice(&data);
                let _ = HttpConnState::decode(&v);
            }

            /// Sanitised targets never contain a segment that could climb out of the root.
            #[test]
            fn sanitised_segments_are_plain(target in "/[a-z./%0-9A-F]{0,40}") {
                if let Ok(path) = sanitize_target(&target) {
                    let raw = path.as_os_str().as_bytes();
                    prop_assert!(!raw.starts_with(b"/") && !raw.contains(&0));
                    if !raw.is_empty() {
                        for s in raw.split(|&b| b == b'/') {
                            prop_assert!(!s.is_empty() && s != b"." && s != b"..");
                        }
                    }
                    // Every component is a plain name: nothing that climbs or restarts.
                    prop_assert!(path
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_))));
                }
            }
        }
    }
}
