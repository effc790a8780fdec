//! Devices: where frames come from and go to. The sans-IO [`crate::Interface`] never touches
//! them; the [`crate::runner::Runner`] moves frames between a device and an interface.

use crate::time::Duration;
use std::io;

mod mem;
mod tap;

pub use mem::{mem_pair, MemDevice};
pub use tap::TapDevice;

/// A link-layer (Ethernet) device.
///
/// Implementations are non-blocking: `recv` returns `Ok(None)` when no frame is pending, and
/// [`Device::wait`] is the only call that may block.
pub trait Device {
    /// Copy the next received frame into `buf`; `Ok(None)` if none is pending.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Queue one frame for transmission.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Block until a frame may be pending or `timeout` elapses (`None`: no limit).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// The IP MTU of the link (1500 for standard Ethernet).
    fn mtu(&self) -> usize;
    /// Flush any frames batched by `send` (no-op for unbatched devices).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
