//! UDP sockets: bound endpoints with bounded receive queues.

use std::collections::VecDeque;
use std::net::SocketAddrV6;

/// Datagrams queued per socket before new ones are dropped.
pub const UDP_QUEUE: usize = 1024;

/// One bound UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    /// Local endpoint (address may be unspecified: any of ours).
    pub local: SocketAddrV6,
    /// Received datagrams with their source.
    pub rx: VecDeque<(SocketAddrV6, Vec<u8>)>,
}
