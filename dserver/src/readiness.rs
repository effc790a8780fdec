//! One descriptor that turns readable when a node has input: an epoll set holding the
//! device's descriptors and the handoff engine's control sockets, kept in step with them.
//! A server with its own event loop adds this one descriptor to its own epoll set.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug)]
pub(crate) struct Readiness {
    epoll: OwnedFd,
    registered: HashSet<RawFd>,
    scratch: HashSet<RawFd>,
    /// The channel epoch of the last registration (see [`Readiness::sync`]).
    epoch: Option<u64>,
}

impl Readiness {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Readiness {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            registered: HashSet::new(),
            scratch: HashSet::new(),
            epoch: None,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Watch exactly `fds` from now on. `epoch` changes whenever a descriptor was opened
    /// (the engine's [`crate::engine::Coordinator::channel_epoch`]): with the same epoch and
    /// the same set nothing changed and no system call is made. Otherwise every descriptor is
    /// added again, since a closed one left the set by itself (epoll forgets closed files) and
    /// its number may be reused by a new one.
    pub(crate) fn sync(&mut self, epoch: u64, fds: impl Iterator<Item = RawFd>) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend(fds);
        if self.epoch == Some(epoch) && self.scratch == self.registered {
            return Ok(());
        }
        self.epoch = Some(epoch);
        for &fd in &self.scratch {
            match self.ctl(libc::EPOLL_CTL_ADD, fd) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        for &fd in self.registered.difference(&self.scratch) {
            // Gone or closed: either way it must not be watched; ENOENT/EBADF are fine.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd);
        }
        std::mem::swap(&mut self.registered, &mut self.scratch);
        Ok(())
    }
}
