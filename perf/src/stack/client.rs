//! The kernel TCP client in namespace P: plain blocking `std::net` sockets at the namespace's
//! default settings. Call these from a thread inside P.

use super::proto::{header, MODE_DOWNLOAD, MODE_ECHO, MODE_UPLOAD};
use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV6, TcpStream};
use std::time::{Duration, Instant};

/// Socket timeouts: a wedged server fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Application write size of the bulk sender.
const CHUNK: usize = 256 << 10;
/// How long to keep retrying a refused or unanswered connect (neighbour discovery, a server
/// that has just started).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// One bulk transfer.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Payload bytes.
    pub bytes: u64,
    /// From the first byte written to the last byte delivered.
    pub seconds: f64,
}

impl Bulk {
    /// Goodput in Gbit/s (10^9 bit/s).
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

pub use ds_apps::sched::{allowed_cpus, pin_to_cpu};

fn connect(addr: SocketAddrV6, cc: Option<&str>) -> Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        match TcpStream::connect_timeout(&SocketAddr::V6(addr), Duration::from_secs(3)) {
            Ok(s) => {
                if let Some(cc) = cc {
                    super::sockopt::set_congestion(&s, cc)?;
                }
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("connect [{}]:{}: {e}; retrying", addr.ip(), addr.port());
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connect [{}]:{}", addr.ip(), addr.port()))
            }
        }
    }
}

/// Wait for the server's FIN after ours.
fn expect_eof(s: &mut TcpStream) -> Result<()> {
    let mut b = [0u8; 16];
    let n = s.read(&mut b).context("waiting for the server's FIN")?;
    ensure!(n == 0, "server sent {n} unexpected bytes");
    Ok(())
}

/// Client → server: write `bytes`, shut down, and wait for the server's count. Timed from the
/// first write to the count's arrival (which follows the server application's last read).
pub fn upload(addr: SocketAddrV6, cc: Option<&str>, bytes: u64) -> Result<Bulk> {
    let mut s = connect(addr, cc)?;
    let chunk = vec![0xa5u8; CHUNK];
    let t0 = Instant::now();
    s.write_all(&header(MODE_UPLOAD, 0))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..n]).context("upload: write")?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .context("upload: server's byte count")?;
    let seconds = t0.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    ensure!(got == bytes, "server read {got} bytes, {bytes} were sent");
    expect_eof(&mut s)?;
    Ok(Bulk { bytes, seconds })
}

/// Server → client: ask for `bytes` and read them all. Timed from the request to the last byte.
pub fn download(addr: SocketAddrV6, cc: Option<&str>, bytes: u64) -> Result<Bulk> {
    let mut s = connect(addr, cc)?;
    let mut buf = vec![0u8; CHUNK];
    let t0 = Instant::now();
    s.write_all(&header(MODE_DOWNLOAD, bytes))?;
    let mut got = 0u64;
    while got < bytes {
        let want = (bytes - got).min(CHUNK as u64) as usize;
        let n = s.read(&mut buf[..want]).context("download: read")?;
        if n == 0 {
            bail!("download: server closed after {got} of {bytes} bytes");
        }
        got += n as u64;
    }
    let seconds = t0.elapsed().as_secs_f64();
    s.shutdown(Shutdown::Write)?;
    expect_eof(&mut s)?;
    Ok(Bulk { bytes, seconds })
}

/// Request/response latencies of one connection, in nanoseconds.
pub struct Echo {
    /// Recorded rounds (after the warm-up).
    pub hist: Histogram<u64>,
}

impl Echo {
    /// A quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }

    /// Mean in microseconds.
    pub fn mean_us(&self) -> f64 {
        self.hist.mean() / 1e3
    }

    /// Largest in microseconds.
    pub fn max_us(&self) -> f64 {
        self.hist.max() as f64 / 1e3
    }
}

/// `warmup + rounds` round trips of `size`-byte messages on one connection with `TCP_NODELAY`;
/// each round writes one request and reads the whole echo before the next. Only the last
/// `rounds` are recorded.
pub fn echo(
    addr: SocketAddrV6,
    cc: Option<&str>,
    size: usize,
    warmup: u32,
    rounds: u32,
) -> Result<Echo> {
    let mut s = connect(addr, cc)?;
    s.set_nodelay(true)?;
    s.write_all(&header(MODE_ECHO, 0))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut req = vec![0u8; size];
    let mut resp = vec![0u8; size];
    for i in 0..warmup + rounds {
        for (j, b) in req.iter_mut().enumerate() {
            *b = (i as usize).wrapping_add(j) as u8;
        }
        let t = Instant::now();
        s.write_all(&req).context("echo: write")?;
        s.read_exact(&mut resp).context("echo: read")?;
        let ns = t.elapsed().as_nanos();
        ensure!(resp == req, "echo: round {i} came back altered");
        if i >= warmup {
            hist.record(u64::try_from(ns).unwrap_or(u64::MAX).max(1))?;
        }
    }
    s.shutdown(Shutdown::Write)?;
    expect_eof(&mut s)?;
    Ok(Echo { hist })
}
