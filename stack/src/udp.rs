//! UDP sockets: bound endpoints with bounded receive queues.

use std::collections::VecDeque;
use std::net::SocketAddrV6;

/// Datagrams queued per socket before new ones are dropped.
pub const UDP_QUEUE: usize = 1024;

/// Emptied datagram buffers a socket keeps for the next datagrams: once warm, receiving
/// allocates nothing.
pub const UDP_SPARE: usize = 64;
/// The largest buffer kept: a datagram of a 1,500-byte link fits; a larger one (reassembled,
/// or from a jumbo link) is allocated and freed, so that spares stay small.
pub const UDP_SPARE_MAX: usize = 2048;

/// One bound UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    /// Local endpoint (address may be unspecified: any of ours).
    pub local: SocketAddrV6,
    /// Received datagrams with their source.
    pub rx: VecDeque<(SocketAddrV6, Vec<u8>)>,
    /// Emptied buffers for the next datagrams, at most [`UDP_SPARE`].
    spare: Vec<Vec<u8>>,
}

impl UdpSocket {
    /// A socket bound to `local`, nothing received.
    pub fn new(local: SocketAddrV6) -> Self {
        UdpSocket {
            local,
            rx: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// A buffer holding a copy of `data`: a spare one when there is one.
    pub(crate) fn buffer_with(&mut self, data: &[u8]) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(data);
        b
    }

    /// Keep a read datagram's buffer for a later one, if it is small and there is room.
    pub(crate) fn recycle(&mut self, b: Vec<u8>) {
        if b.capacity() <= UDP_SPARE_MAX && self.spare.len() < UDP_SPARE {
            self.spare.push(b);
        }
    }
}
