//! The seed's UDP echo service (its server-access-latency experiment, §3.2.1): every datagram
//! sent to the service's address comes back to its sender, from the address it was sent to.
//!
//! Written once, against [`Datagrams`]: the library's [`dserver::Node`] (proxy mode) and the
//! stack's own interface (the file server's node) both provide it.

use ds_stack::{Interface, UdpHandle};
use std::net::SocketAddrV6;

/// Datagrams echoed per [`UdpEcho::poll`] at most, so that a flood cannot hold the node's loop.
const PER_POLL: usize = 256;

/// What the echo service needs of a node: receive a datagram on a socket, send one.
pub trait Datagrams {
    /// A bound socket.
    type Socket: Copy;
    /// The next datagram on `s` (length, sender), if one waits.
    fn recv_from(&mut self, s: Self::Socket, buf: &mut [u8]) -> Option<(usize, SocketAddrV6)>;
    /// Send `data` from `s` to `to`.
    fn send_to(&mut self, s: Self::Socket, data: &[u8], to: SocketAddrV6) -> Result<(), String>;
}

impl Datagrams for dserver::Node {
    type Socket = dserver::UdpSocketId;

    fn recv_from(&mut self, s: Self::Socket, buf: &mut [u8]) -> Option<(usize, SocketAddrV6)> {
        self.udp_recv_from(s, buf)
    }

    fn send_to(&mut self, s: Self::Socket, data: &[u8], to: SocketAddrV6) -> Result<(), String> {
        self.udp_send_to(s, data, to).map_err(|e| e.to_string())
    }
}

impl Datagrams for Interface {
    type Socket = UdpHandle;

    fn recv_from(&mut self, s: UdpHandle, buf: &mut [u8]) -> Option<(usize, SocketAddrV6)> {
        self.udp_recv_from(s, buf).ok().flatten()
    }

    fn send_to(&mut self, s: UdpHandle, data: &[u8], to: SocketAddrV6) -> Result<(), String> {
        // The interface's own latest time: the caller stepped it just before.
        let now = self.now();
        self.udp_send_to(now, s, data, to)
            .map_err(|e| e.to_string())
    }
}

/// Counters of the echo service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EchoStats {
    /// Datagrams sent back.
    pub echoed: u64,
    /// Datagrams that could not be sent back.
    pub failed: u64,
}

/// A UDP echo service on one bound socket.
#[derive(Debug)]
pub struct UdpEcho<S> {
    socket: S,
    buf: Vec<u8>,
    stats: EchoStats,
}

impl UdpEcho<UdpHandle> {
    /// Serve echo on `local` of a stack's interface (an address of it: replies come from it).
    pub fn bind(iface: &mut Interface, local: SocketAddrV6) -> anyhow::Result<Self> {
        let socket = iface
            .udp_bind(local)
            .map_err(|e| anyhow::anyhow!("UDP echo on {local}: {e}"))?;
        Ok(UdpEcho::new(socket))
    }
}

impl<S: Copy> UdpEcho<S> {
    /// Serve echo on the bound `socket`.
    pub fn new(socket: S) -> Self {
        UdpEcho {
            socket,
            buf: vec![0; 65536],
            stats: EchoStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> EchoStats {
        self.stats
    }

    /// Echo what arrived (bounded per call).
    pub fn poll<D: Datagrams<Socket = S>>(&mut self, node: &mut D) {
        for _ in 0..PER_POLL {
            let Some((n, from)) = node.recv_from(self.socket, &mut self.buf) else {
                return;
            };
            match node.send_to(self.socket, &self.buf[..n], from) {
                Ok(()) => self.stats.echoed += 1,
                Err(e) => {
                    self.stats.failed += 1;
                    tracing::debug!(%from, "echo not sent: {e}");
                }
            }
        }
    }
}
