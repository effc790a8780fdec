//! An in-memory Ethernet cable between two devices, for tests and benchmarks.

use super::Device;
use crate::time::Duration;
use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};

/// One end of an in-memory cable made by [`mem_pair`].
pub struct MemDevice {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    pending: VecDeque<Vec<u8>>,
    mtu: usize,
}

/// Two devices joined back to back: what one sends, the other receives.
pub fn mem_pair(mtu: usize) -> (MemDevice, MemDevice) {
    let (tx_a, rx_b) = channel();
    let (tx_b, rx_a) = channel();
    (
        MemDevice {
            tx: tx_a,
            rx: rx_a,
            pending: VecDeque::new(),
            mtu,
        },
        MemDevice {
            tx: tx_b,
            rx: rx_b,
            pending: VecDeque::new(),
            mtu,
        },
    )
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
        let _ = self.tx.send(frame.to_vec());
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
