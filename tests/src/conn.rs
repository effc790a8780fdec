//! Small pieces of connection handling that tests and benchmarks share: dialling from a
//! runner, reading what a userspace connection has, counting a kernel stream to its end.

use ds_stack::device::Device;
use ds_stack::runner::Runner;
use ds_stack::{Error, Interface, TcpHandle};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6};

/// Parse a literal IPv6 address (panics on a typo).
pub fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("literal address")
}

/// The addresses `{net}::{host}` of these hosts.
pub fn ips<const N: usize>(net: &str, hosts: [&str; N]) -> [Ipv6Addr; N] {
    hosts.map(|h| ip(&format!("{net}::{h}")))
}

/// A kernel TCP connection to `to`, retried every 50 ms (each try waits up to a second) while
/// the server is still coming up (attaching its XDP program, announcing its address), at most
/// `tries` times; `None` if none succeeded.
pub fn connect_retrying(to: std::net::SocketAddr, tries: u32) -> Option<std::net::TcpStream> {
    (0..tries).find_map(|_| {
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1))
            .ok()
            .or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                None
            })
    })
}

/// Connect from `from` (an ephemeral port) to `to` on the runner's stack, now.
pub fn dial<D: Device>(rt: &mut Runner<D>, from: Ipv6Addr, to: SocketAddrV6) -> TcpHandle {
    let now = rt.now();
    rt.iface
        .tcp_connect(now, SocketAddrV6::new(from, 0, 0, 0), to)
        .expect("connect")
}

/// One round of a test with two nodes: the serving node's runner waits up to `wait` for
/// frames, the other's only polls. Panics, naming `phase` and the serving stack's counters,
/// once `limit` has passed since `start`.
pub fn step_serving<A: Device, B: Device>(
    serving: &mut Runner<A>,
    other: &mut Runner<B>,
    wait: std::time::Duration,
    (start, limit): (std::time::Instant, std::time::Duration),
    phase: &str,
) {
    assert!(
        start.elapsed() < limit,
        "{phase} timed out: {:?}",
        serving.iface.stats()
    );
    serving.step(wait).expect("step the serving node");
    other
        .step(std::time::Duration::ZERO)
        .expect("step the other node");
}

/// Read everything `h` has now into `into`: the bytes read, or the error (`Error::Eof` at the
/// end of the stream) when nothing was read before it.
pub fn read_available(
    iface: &mut Interface,
    h: TcpHandle,
    into: &mut Vec<u8>,
) -> Result<usize, Error> {
    let mut buf = [0u8; 16384];
    let start = into.len();
    loop {
        match iface.tcp_recv(h, &mut buf) {
            Ok(0) => return Ok(into.len() - start),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if into.len() == start => return Err(e),
            Err(_) => return Ok(into.len() - start),
        }
    }
}

/// Read `r` to its end (or until `limit` bytes), discarding the bytes; returns how many.
pub fn count_to_end(r: &mut impl Read, limit: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    while total < limit {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total)
}

/// Write `len` bytes of `byte` to `w`, 64 KiB at a time.
pub fn write_filler(w: &mut impl Write, len: usize, byte: u8) -> std::io::Result<()> {
    let chunk = vec![byte; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}
