//! The node's control socket: a Unix stream socket that `dsctl` talks to.
//!
//! One request per connection: a JSON line such as `{"cmd":"status"}`, answered by one JSON
//! line, then the node closes. The socket file is made owner-only (mode 0600), so only root or
//! the node's own user can reach it. The node's event loop polls it between rounds and never
//! blocks on a client: requests are bounded in size (4 KiB), clients in number (16) and in time
//! (1 s from connect to a complete request); whatever breaks a bound is counted and dropped.
//!
//! # Example
//! ```no_run
//! use ds_apps::control::ControlSocket;
//! use std::time::Instant;
//! let mut ctl = ControlSocket::bind("/run/dsnode.sock".as_ref())?;
//! loop {
//!     // ... one round of the node's event loop, waking for `ctl.fd()` too ...
//!     ctl.poll(Instant::now(), |req| match req.cmd.as_str() {
//!         "status" => Ok(serde_json::json!({ "up": true })),
//!         other => Err(format!("unknown command {other:?}")),
//!     });
//! #   break;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;
/// How many clients may be connected at once; more are refused at accept.
pub const MAX_CLIENTS: usize = 16;
/// How long a client has from connecting to a complete request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(1);

/// A request from `dsctl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The command: `status`, `conns`, `handoff`, `members` or `drain`.
    pub cmd: String,
    /// `handoff`: the connection, by its client's `[addr]:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    /// `handoff`: the node to move it to, by its control address `[addr]:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl Request {
    /// A request without arguments.
    pub fn new(cmd: &str) -> Self {
        Request {
            cmd: cmd.into(),
            conn: None,
            to: None,
        }
    }
}

/// What went wrong with clients, counted.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ControlStats {
    /// Requests answered (with a result or an error).
    pub answered: u64,
    /// Requests that were not one JSON line of the request shape.
    pub malformed: u64,
    /// Requests longer than [`MAX_REQUEST`].
    pub oversized: u64,
    /// Clients that did not finish their request within [`REQUEST_DEADLINE`].
    pub timed_out: u64,
    /// Clients refused because [`MAX_CLIENTS`] were connected.
    pub refused: u64,
}

struct Client {
    stream: UnixStream,
    since: Instant,
    buf: Vec<u8>,
    /// The answer still to be written, once the request is complete.
    out: Option<(Vec<u8>, usize)>,
}

/// The listening control socket and its clients.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    stats: ControlStats,
}

impl ControlSocket {
    /// Listen on `path`, mode 0600. A socket file left by a node that is gone is replaced; one
    /// that a live node answers on is an error (`AddrInUse`), as is any other kind of file.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    ErrorKind::AddrInUse,
                    format!("{}: another node is listening there", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
            stats: ControlStats::default(),
        })
    }

    /// The descriptors to wait on for readability: the listener and every client.
    pub fn fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.listener.as_raw_fd());
        out.extend(self.clients.iter().map(|c| c.stream.as_raw_fd()));
    }

    /// The counters.
    pub fn stats(&self) -> ControlStats {
        self.stats
    }

    /// Accept clients, read their requests, answer complete ones with `answer` and drop the
    /// ones that break a bound. Never blocks.
    pub fn poll(
        &mut self,
        now: Instant,
        mut answer: impl FnMut(&Request) -> Result<serde_json::Value, String>,
    ) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        self.stats.refused += 1;
                        continue;
                    }
                    self.clients.push(Client {
                        stream,
                        since: now,
                        buf: Vec::new(),
                        out: None,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // WouldBlock, or a transient accept error: try again next round.
                Err(_) => break,
            }
        }
        let stats = &mut self.stats;
        self.clients
            .retain_mut(|c| Self::serve(c, now, stats, &mut answer));
    }

    /// Whether a client that connected at `since` may keep waiting; counts it when not.
    fn within_deadline(since: Instant, now: Instant, stats: &mut ControlStats) -> bool {
        let ok = now.saturating_duration_since(since) <= REQUEST_DEADLINE;
        if !ok {
            stats.timed_out += 1;
        }
        ok
    }

    /// Advance one client; false when it is done with (answered or dropped).
    fn serve(
        c: &mut Client,
        now: Instant,
        stats: &mut ControlStats,
        answer: &mut impl FnMut(&Request) -> Result<serde_json::Value, String>,
    ) -> bool {
        if c.out.is_none() {
            let mut chunk = [0u8; 1024];
            loop {
                match c.stream.read(&mut chunk) {
                    // The client closed its side: what came is the whole request.
                    Ok(0) => break,
                    Ok(n) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        if c.buf.len() > MAX_REQUEST {
                            stats.oversized += 1;
                            return false;
                        }
                        if c.buf.contains(&b'\n') {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        return Self::within_deadline(c.since, now, stats);
                    }
                    Err(_) => return false,
                }
            }
            let line = c.buf.split(|b| *b == b'\n').next().unwrap_or_default();
            let reply = match serde_json::from_slice::<Request>(line) {
                Ok(req) => {
                    stats.answered += 1;
                    match answer(&req) {
                        Ok(v) => serde_json::json!({ "ok": v }),
                        Err(e) => serde_json::json!({ "error": e }),
                    }
                }
                Err(e) => {
                    stats.malformed += 1;
                    serde_json::json!({ "error": format!("malformed request: {e}") })
                }
            };
            let mut bytes = reply.to_string().into_bytes();
            bytes.push(b'\n');
            c.out = Some((bytes, 0));
        }
        let Some((bytes, at)) = c.out.as_mut() else {
            return false;
        };
        while *at < bytes.len() {
            match c.stream.write(&bytes[*at..]) {
                Ok(0) => return false,
                Ok(n) => *at += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A client that stops reading its answer is dropped at the deadline too.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Self::within_deadline(c.since, now, stats);
                }
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Send one request to the node listening on `path` and return its answer: the `ok` value,
/// or the node's error as `Err`. Blocks up to `timeout` for each read and write (a CLI call).
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| format!("sending: {e}"))?;
    let mut reply = Vec::new();
    // The node answers with one line and closes; bound what we take from it all the same.
    s.take(1 << 20)
        .read_to_end(&mut reply)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let mut v: serde_json::Value =
        serde_json::from_slice(&reply).map_err(|e| format!("the node's answer: {e}"))?;
    match (v.get_mut("ok").map(serde_json::Value::take), v.get("error")) {
        (Some(ok), _) => Ok(ok),
        (None, Some(e)) => Err(e.as_str().unwrap_or("error").to_string()),
        (None, None) => Err(format!("unexpected answer {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ds-ctl-{tag}-{}.sock", std::process::id()))
    }

    /// Poll `ctl` on a thread-free loop until `done` says so (the client runs on a thread).
    fn serve_until(ctl: &mut ControlSocket, done: &std::sync::atomic::AtomicBool) {
        let t = Instant::now();
        while !done.load(std::sync::atomic::Ordering::SeqCst)
            && t.elapsed() < Duration::from_secs(5)
        {
            ctl.poll(Instant::now(), |r| match r.cmd.as_str() {
                "status" => Ok(serde_json::json!({ "node": "test" })),
                c => Err(format!("unknown command {c:?}")),
            });
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn answers_status_and_errors_and_is_owner_only() {
        let path = sock("status");
        let mut ctl = ControlSocket::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, d) = (path.clone(), done.clone());
        let client = std::thread::spawn(move || {
            let ok = request(&p, &Request::new("status"), Duration::from_secs(2));
            let err = request(&p, &Request::new("nope"), Duration::from_secs(2));
            d.store(true, std::sync::atomic::Ordering::SeqCst);
            (ok, err)
        });
        serve_until(&mut ctl, &done);
        let (ok, err) = client.join().expect("client");
        assert_eq!(ok, Ok(serde_json::json!({ "node": "test" })));
        assert_eq!(err, Err("unknown command \"nope\"".into()));
        assert_eq!(ctl.stats().answered, 2);
        drop(ctl);
        assert!(!path.exists(), "the socket file goes with the node");
    }

    #[test]
    fn malformed_oversized_and_silent_clients_are_dropped() {
        let path = sock("hostile");
        let mut ctl = ControlSocket::bind(&path).expect("bind");
        let mut garbage = UnixStream::connect(&path).expect("connect");
        garbage.write_all(b"{not json\n").expect("write");
        let mut big = UnixStream::connect(&path).expect("connect");
        let _ = big.set_nonblocking(true);
        let _ = big.write(&[b'x'; MAX_REQUEST + 100]);
        let _silent = UnixStream::connect(&path).expect("connect");
        let t0 = Instant::now();
        for i in 0..20 {
            ctl.poll(t0 + Duration::from_millis(100 * i), |_| {
                Ok(serde_json::Value::Null)
            });
        }
        ctl.poll(t0 + REQUEST_DEADLINE * 3, |_| Ok(serde_json::Value::Null));
        let s = ctl.stats();
        assert_eq!((s.malformed, s.oversized, s.timed_out), (1, 1, 1), "{s:?}");
        assert!(ctl.clients.is_empty());
        let mut reply = String::new();
        garbage.read_to_string(&mut reply).expect("read");
        assert!(reply.contains("malformed request"), "{reply}");
    }

    #[test]
    fn a_live_socket_is_not_taken_over_a_stale_one_is() {
        let live = sock("live");
        let ctl = ControlSocket::bind(&live).expect("bind");
        let again = ControlSocket::bind(&live).err().map(|e| e.kind());
        assert_eq!(again, Some(ErrorKind::AddrInUse));
        drop(ctl);
        // A socket file nobody listens on (a node that was killed) is replaced.
        let stale = sock("stale");
        drop(UnixListener::bind(&stale).expect("bind"));
        assert!(stale.exists());
        drop(ControlSocket::bind(&stale).expect("stale socket replaced"));
        // Anything else is left alone.
        let file = sock("file");
        std::fs::write(&file, b"x").expect("write");
        let e = ControlSocket::bind(&file).err().map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::AlreadyExists));
        let _ = std::fs::remove_file(&file);
    }
}
