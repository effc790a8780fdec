//! The seed's UDP echo service (its server-access-latency experiment, §3.2.1): every datagram
//! sent to the service's address comes back to its sender, from the address it was sent to.

use ds_stack::{Instant, Interface, UdpHandle};
use std::net::SocketAddrV6;

/// Datagrams echoed per [`UdpEcho::poll`] at most, so that a flood cannot hold the node's loop.
const PER_POLL: usize = 256;

/// Counters of the echo service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EchoStats {
    /// Datagrams sent back.
    pub echoed: u64,
    /// Datagrams that could not be sent back.
    pub failed: u64,
}

/// A UDP echo service on one address and port of an interface.
#[derive(Debug)]
pub struct UdpEcho {
    socket: UdpHandle,
    buf: Vec<u8>,
    stats: EchoStats,
}

impl UdpEcho {
    /// Serve echo on `local` (an address of the interface: replies come from it).
    pub fn bind(iface: &mut Interface, local: SocketAddrV6) -> anyhow::Result<Self> {
        let socket = iface
            .udp_bind(local)
            .map_err(|e| anyhow::anyhow!("UDP echo on {local}: {e}"))?;
        Ok(UdpEcho {
            socket,
            buf: vec![0; 65536],
            stats: EchoStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> EchoStats {
        self.stats
    }

    /// Echo what arrived (bounded per call).
    pub fn poll(&mut self, iface: &mut Interface, now: Instant) {
        for _ in 0..PER_POLL {
            let Ok(Some((n, from))) = iface.udp_recv_from(self.socket, &mut self.buf) else {
                return;
            };
            match iface.udp_send_to(now, self.socket, &self.buf[..n], from) {
                Ok(()) => self.stats.echoed += 1,
                Err(e) => {
                    self.stats.failed += 1;
                    tracing::debug!(%from, "echo not sent: {e}");
                }
            }
        }
    }
}
