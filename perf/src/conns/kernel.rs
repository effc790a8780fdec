//! The baseline of `dsperf conns`: the Linux kernel's TCP, the same exchanges as our stacks.
//!
//! Both ends live in this thread, over IPv6 loopback: `n` client sockets connected to `n`
//! server sockets, the server's in an epoll set as an event-driven server keeps them (mio, a
//! thin layer over epoll). A round is: the clients write one 64-byte request each on up to
//! `batch` distinct connections; the server waits on epoll (without sleeping: something is
//! always ready), reads each readable socket and writes back what it read; the clients read
//! their answers. Loopback hands a segment to its receiver inside the sender's system call
//! (the receive softirq runs as the sender leaves the device layer), so the whole round runs
//! on this thread and its wall time is both ends' work; the benchmark pins it to a core
//! (`taskset`), where anything deferred (a delayed ACK's timer, ksoftirqd) also runs inside
//! the timed window.
//!
//! Segments are counted by the kernel (`TCP_INFO`'s `tcpi_segs_in` and `tcpi_segs_out` of
//! every socket, read before and after a measurement, outside the timing), so the figure is
//! time per segment either end took or sent, as for our stacks both ways. Both ends use
//! `TCP_NODELAY`, as servers do; the kernel's delayed ACKs stay at their defaults.
//!
//! Connections end with a reset (`SO_LINGER` 0 on the clients), so that 100,000 of them leave
//! no `TIME_WAIT` behind for the next count.

use super::{groups, MSG};
use anyhow::{bail, Context, Result};
use mio::net::TcpStream as Server;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Connections per listening port. Each connection takes an ephemeral port of the client's
/// (Linux's default range, 32768–60999, has 28,232) that may be reused towards another
/// destination: a new listener every 20,000 connections keeps 100,000 within the default range.
const PER_LISTENER: usize = 20_000;

/// How long a round may wait for the kernel before the measurement is abandoned.
const STUCK: Duration = Duration::from_secs(10);

/// Descriptors that `n` connections need: both ends, the listeners, and some to spare.
pub fn descriptors(n: usize) -> u64 {
    (2 * n + n / PER_LISTENER + 64) as u64
}

/// One measurement.
pub struct Measured {
    /// Time per segment either end took or sent, ns.
    pub ns_per_packet: f64,
    /// Segments on the wire per exchange.
    pub per_exchange: f64,
    /// Time per exchange, ns.
    pub ns_per_exchange: f64,
}

/// `n` connections of the kernel's TCP, both ends in this process.
pub struct Kernel {
    cli: Vec<TcpStream>,
    srv: Vec<Server>,
    _listeners: Vec<TcpListener>,
    poll: Poll,
    events: Events,
}

impl Kernel {
    /// Open `n` connections over `[::1]`, each accepted as it is made.
    pub fn open(n: usize) -> Result<Kernel> {
        let poll = Poll::new().context("epoll")?;
        let mut listeners: Vec<TcpListener> = Vec::new();
        let mut cli = Vec::with_capacity(n);
        let mut srv = Vec::with_capacity(n);
        let any = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
        for i in 0..n {
            if i % PER_LISTENER == 0 {
                listeners.push(TcpListener::bind(any).context("listen on [::1]")?);
            }
            let Some(l) = listeners.last() else {
                bail!("no listener");
            };
            let to = l.local_addr()?;
            let c = TcpStream::connect(to).with_context(|| format!("connection {i} to {to}"))?;
            let (s, _) = l.accept().context("accept")?;
            for sock in [&c, &s] {
                sock.set_nodelay(true)?;
                sock.set_nonblocking(true)?;
            }
            // Closing sends a reset (RFC 9293 §3.10.7.1, ABORT): no TIME_WAIT afterwards.
            socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO))?;
            let mut s = Server::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .context("epoll_ctl")?;
            cli.push(c);
            srv.push(s);
        }
        Ok(Kernel {
            cli,
            srv,
            _listeners: listeners,
            poll,
            // A round makes at most `batch` (at most 4,096) sockets readable.
            events: Events::with_capacity(4096),
        })
    }

    /// Segments taken and sent by every socket so far.
    fn segments(&self) -> Result<u64> {
        let fds = self
            .cli
            .iter()
            .map(|c| c.as_raw_fd())
            .chain(self.srv.iter().map(|s| s.as_raw_fd()));
        let mut sum = 0u64;
        for fd in fds {
            let i = ds_kernel::tcp_info(fd)?;
            sum += u64::from(i.tcpi_segs_in) + u64::from(i.tcpi_segs_out);
        }
        Ok(sum)
    }

    /// Time one exchange on each connection `picks` names, `batch` per round.
    pub fn measure(
        &mut self,
        batch: usize,
        picks: impl Iterator<Item = usize>,
    ) -> Result<Measured> {
        let before = self.segments()?;
        let req = [0x5a_u8; MSG];
        let mut buf = [0u8; 4096];
        let (mut busy, mut exchanges) = (Duration::ZERO, 0usize);
        let Kernel {
            cli,
            srv,
            poll,
            events,
            ..
        } = self;
        groups(picks, batch, |group| -> Result<()> {
            let t = Instant::now();
            for &i in group {
                let n = (&cli[i]).write(&req).context("client write")?;
                if n != MSG {
                    bail!("client send buffer full ({n} of {MSG} bytes written)");
                }
            }
            // The server: each readable socket read, what it read written back. mio's epoll is
            // edge-triggered; a read shorter than the buffer has emptied the socket, so the
            // server reads again only after a full one, as nginx does: no read that ends in
            // EAGAIN, a system call per request an event-driven server does not make.
            let mut owed = group.len() * MSG;
            while owed > 0 {
                poll.poll(events, Some(Duration::ZERO))
                    .context("epoll_wait")?;
                for ev in events.iter() {
                    let s = &mut srv[ev.token().0];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => bail!("connection {} closed", ev.token().0),
                            Ok(k) => {
                                s.write_all(&buf[..k]).context("server write")?;
                                owed = owed.saturating_sub(k);
                                if k < buf.len() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e).context("server read"),
                        }
                    }
                }
                if owed > 0 && t.elapsed() > STUCK {
                    bail!("the server is owed {owed} bytes after {STUCK:?}");
                }
            }
            for &i in group {
                let mut got = 0;
                while got < MSG {
                    match (&cli[i]).read(&mut buf) {
                        Ok(0) => bail!("connection {i} closed"),
                        Ok(k) => got += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            if t.elapsed() > STUCK {
                                bail!("connection {i}'s answer missing after {STUCK:?}");
                            }
                        }
                        Err(e) => return Err(e).context("client read"),
                    }
                }
            }
            busy += t.elapsed();
            exchanges += group.len();
            Ok(())
        })?;
        let segs = self.segments()?.saturating_sub(before);
        Ok(Measured {
            ns_per_packet: busy.as_nanos() as f64 / segs.max(1) as f64,
            // Each segment on the wire is counted twice: sent by one end, taken by the other.
            per_exchange: segs as f64 / 2.0 / exchanges.max(1) as f64,
            ns_per_exchange: busy.as_nanos() as f64 / exchanges.max(1) as f64,
        })
    }
}
