//! The kernel host of the handoff engine: standard sockets frozen and restored with
//! `TCP_REPAIR`, the peer's packets held while a connection moves.

use crate::{freeze, inject, restore_repaired, retire, send_queue_len, HoldTable, Repaired};
use ds_handoff::{Host, HostError, Takeover};
use ds_stack::{ConnState, Packets};
use std::net::{SocketAddrV6, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// A connection of the kernel host.
#[derive(Debug)]
pub enum KernelConn {
    /// A live socket.
    Live {
        /// The socket.
        sock: TcpStream,
        /// Its local end.
        local: SocketAddrV6,
        /// Its peer.
        remote: SocketAddrV6,
    },
    /// Its activation failed: the socket is gone.
    Gone {
        /// Its local end.
        local: SocketAddrV6,
        /// Its peer.
        remote: SocketAddrV6,
    },
    /// Restored in repair mode, not yet activated (sends nothing).
    Dormant {
        /// The repaired socket.
        sock: Repaired,
        /// Its local end.
        local: SocketAddrV6,
        /// Its peer.
        remote: SocketAddrV6,
    },
}

impl KernelConn {
    /// A live socket's connection (its ends read from the socket).
    pub fn live(sock: TcpStream) -> std::io::Result<Self> {
        let v6 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V6(v) => Ok(v),
            std::net::SocketAddr::V4(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "IPv4 socket on an IPv6 node",
            )),
        };
        let local = v6(sock.local_addr()?)?;
        let remote = v6(sock.peer_addr()?)?;
        Ok(KernelConn::Live {
            sock,
            local,
            remote,
        })
    }

    /// The connection's ends.
    pub fn flow(&self) -> (SocketAddrV6, SocketAddrV6) {
        match self {
            KernelConn::Live { local, remote, .. }
            | KernelConn::Dormant { local, remote, .. }
            | KernelConn::Gone { local, remote } => (*local, *remote),
        }
    }

    /// The live socket, `Err(self)` when dormant.
    pub fn into_socket(self) -> Result<TcpStream, Self> {
        match self {
            KernelConn::Live { sock, .. } => Ok(sock),
            other => Err(other),
        }
    }
}

/// [`Host`] over the kernel's sockets of this network namespace; the peer's packets of moving
/// connections are held by the node's [`HoldTable`].
pub struct KernelHost {
    holds: HoldTable,
    /// Connections the node serves (for the acceptor's load limit); the node keeps it current.
    pub connections: usize,
}

impl std::fmt::Debug for KernelHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelHost")
            .field("held_flows", &self.holds.len())
            .field("connections", &self.connections)
            .finish()
    }
}

impl KernelHost {
    /// A host holding packets with `holds`.
    pub fn new(holds: HoldTable) -> Self {
        KernelHost {
            holds,
            connections: 0,
        }
    }

    /// The packet hold (its fd belongs in the node's wait set; poll it each round).
    pub fn holds(&mut self) -> &mut HoldTable {
        &mut self.holds
    }

    fn release_flow(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        if !self.holds.is_held(local, remote) {
            // Strays of an earlier hold, if any.
            return self.holds.take(local, remote);
        }
        match self.holds.release(local, remote) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("releasing a hold: {e}");
                Packets::new()
            }
        }
    }

    fn err(e: crate::KernelError) -> HostError {
        HostError::new(e.to_string())
    }
}

impl Host for KernelHost {
    type Conn = KernelConn;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn kind(&self) -> ds_handoff::msg::HostKind {
        ds_handoff::msg::HostKind::Kernel
    }

    fn endpoints(&self, conn: &KernelConn) -> Option<(SocketAddrV6, SocketAddrV6)> {
        Some(conn.flow())
    }

    fn unacknowledged(&mut self, conn: &KernelConn) -> Option<usize> {
        match conn {
            KernelConn::Live { sock, .. } => send_queue_len(sock).ok(),
            KernelConn::Dormant { .. } | KernelConn::Gone { .. } => None,
        }
    }

    fn freeze(&mut self, conn: &KernelConn) -> Result<ConnState, HostError> {
        let KernelConn::Live {
            sock,
            local,
            remote,
        } = conn
        else {
            return Err(HostError::new("freeze of a dormant connection"));
        };
        // The hold goes in before the freeze: from then on the socket sees none of the
        // peer's packets, so the state and the held packets are everything the peer sent.
        self.holds.hold(*local, *remote).map_err(Self::err)?;
        match freeze(sock) {
            // In repair mode the socket's close (when the engine drops it) is silent; it
            // leaves the connection table now, so a thaw back here can take the 4-tuple.
            Ok(st) => {
                if let Err(e) = retire(sock) {
                    tracing::warn!("retiring a frozen socket: {e}");
                }
                Ok(st)
            }
            Err(e) => {
                // Nothing left the node: what was held goes to the live socket.
                let held = self.release_flow(*local, *remote);
                if let Err(e) = inject(&held) {
                    tracing::error!("releasing held packets: {e}");
                }
                Err(Self::err(e))
            }
        }
    }

    fn thaw(&mut self, state: &ConnState, takeover: Takeover) -> Result<KernelConn, HostError> {
        if takeover == Takeover::HomeAddress {
            return Err(HostError::new(
                "the kernel host serves no home address away from home",
            ));
        }
        // Takeover::Address: the kernel node has the DS address configured already.
        let sock = restore_repaired(state).map_err(Self::err)?;
        Ok(KernelConn::Dormant {
            sock,
            local: state.local(),
            remote: state.remote(),
        })
    }

    fn activate(&mut self, conn: &mut KernelConn, _announce: bool) -> Result<(), HostError> {
        let (local, remote) = conn.flow();
        let taken = std::mem::replace(conn, KernelConn::Gone { local, remote });
        let KernelConn::Dormant { sock, .. } = taken else {
            *conn = taken;
            return Ok(());
        };
        // Packets this host held for the flow (the connection came back here, or its handoff
        // failed) reach the socket first, before it sends (no window probe then: its answer
        // would overtake them); the hold sits on the link, so injected packets (through `lo`)
        // are not held again. Then the hold goes and what it caught meanwhile follows.
        let held = self.holds.take(local, remote);
        let (sock, _) = sock.activate(&held).map_err(Self::err)?;
        *conn = KernelConn::Live {
            sock,
            local,
            remote,
        };
        let rest = self.release_flow(local, remote);
        inject(&rest).map_err(Self::err)?;
        Ok(())
    }

    fn abort(&mut self, conn: KernelConn) {
        if let KernelConn::Live { sock, .. } = conn {
            // SO_LINGER with a zero timeout: the close sends a RST (RFC 9293 §3.10.7.1 ABORT).
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            if let Err(e) = crate::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger,
                "SO_LINGER",
            ) {
                tracing::warn!("abort: {e}");
            }
        }
    }

    fn discard(&mut self, conn: KernelConn) {
        match conn {
            // Still in repair mode: dropping it closes it silently.
            KernelConn::Dormant { .. } | KernelConn::Gone { .. } => {}
            KernelConn::Live { sock, .. } => {
                // Into repair mode first, so the close is silent.
                match freeze(&sock) {
                    Ok(_) => {
                        if let Err(e) = retire(&sock) {
                            tracing::warn!("retiring a restored socket: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("taking a restored socket back: {e}"),
                }
            }
        }
    }

    fn take_held(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.holds.take(local, remote)
    }

    fn release(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.release_flow(local, remote)
    }

    fn inject(&mut self, packets: Packets) {
        if let Err(e) = inject(&packets) {
            tracing::warn!("injecting forwarded packets: {e}");
        }
    }

    fn connection_count(&self) -> usize {
        self.connections
    }
}
