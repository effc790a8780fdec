//! An in-memory Ethernet cable between two devices, or a hub joining several, for tests and
//! benchmarks.

use super::Device;
use crate::time::Duration;
use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};

/// One end of an in-memory cable made by [`mem_pair`], or a port of a [`mem_hub`].
pub struct MemDevice {
    /// The other ends.
    tx: Vec<Sender<Vec<u8>>>,
    rx: Receiver<Vec<u8>>,
    pending: VecDeque<Vec<u8>>,
    mtu: usize,
}

/// Two devices joined back to back: what one sends, the other receives.
pub fn mem_pair(mtu: usize) -> (MemDevice, MemDevice) {
    let mut hub = mem_hub(2, mtu).into_iter();
    match (hub.next(), hub.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("a hub of two has two ports"),
    }
}

/// `n` devices on one hub: what one sends, every other receives (an Ethernet segment; each
/// stack keeps the frames for its own MAC address and multicast).
pub fn mem_hub(n: usize, mtu: usize) -> Vec<MemDevice> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| channel()).unzip();
    rxs.into_iter()
        .enumerate()
        .map(|(i, rx)| MemDevice {
            tx: txs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, t)| t.clone())
                .collect(),
            rx,
            pending: VecDeque::new(),
            mtu,
        })
        .collect()
}

impl Device for MemDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let frame = match self.pending.pop_front() {
            Some(f) => f,
            None => match self.rx.try_recv() {
                Ok(f) => f,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "peer device gone",
                    ));
                }
            },
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(Some(n))
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // A vanished peer is a cable pulled out: frames are lost, not an error.
        for tx in &self.tx {
            let _ = tx.send(frame.to_vec());
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        let got = match timeout {
            Some(t) => self.rx.recv_timeout(t),
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(f) => self.pending.push_back(f),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = timeout {
                    std::thread::sleep(t);
                }
            }
        }
        Ok(())
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}
