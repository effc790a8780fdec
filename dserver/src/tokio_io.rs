//! The tokio adapter (feature `tokio`): a [`Node`] driven by a tokio runtime, connections as
//! [`AsyncRead`] + [`AsyncWrite`].
//!
//! A node lives on one thread (its device is not shared), so the adapter is for a
//! current-thread runtime with a [`tokio::task::LocalSet`]: spawn [`AsyncNode::run`] there,
//! then accept and serve connections as tasks of the same set. The driver waits on the
//! node's readiness descriptor and its next deadline, runs the node, and wakes the tasks
//! waiting for it.
//!
//! ```no_run
//! # async fn serve(node: dserver::Node) -> Result<(), dserver::Error> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let node = dserver::tokio_io::AsyncNode::new(node);
//! tokio::task::spawn_local(node.clone().run());
//! loop {
//!     let (mut conn, _state) = node.accept().await?;
//!     tokio::task::spawn_local(async move {
//!         let mut buf = [0u8; 1024];
//!         while let Ok(n) = conn.read(&mut buf).await {
//!             if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # }
//! ```

use crate::{ConnId, Error, Event, HandoffReport, Node};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest the driver sleeps without a deadline (a safety net, not a poll interval).
const IDLE: Duration = Duration::from_millis(100);

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

struct Shared {
    node: Node,
    /// Wakes the driver when a task did something the stack must act on (data written,
    /// receive window opened, a connection closed or handed off).
    kick: Rc<tokio::sync::Notify>,
    /// Tasks waiting for the node to make progress.
    wakers: Vec<Waker>,
    /// Handoff outcomes not yet claimed.
    events: VecDeque<Event>,
}

impl Shared {
    fn kick(&self) {
        self.kick.notify_one();
    }

    fn wait(&mut self, cx: &Context<'_>) {
        if !self.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            self.wakers.push(cx.waker().clone());
        }
    }
}

/// A [`Node`] for tokio (see the module documentation). Clones share the node.
#[derive(Clone)]
pub struct AsyncNode {
    shared: Rc<RefCell<Shared>>,
}

impl std::fmt::Debug for AsyncNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncNode").finish_non_exhaustive()
    }
}

/// Whether `fd` is readable now (a zero-timeout poll).
fn readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; poll only writes `revents`.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

impl AsyncNode {
    /// Wrap `node`.
    pub fn new(node: Node) -> Self {
        AsyncNode {
            shared: Rc::new(RefCell::new(Shared {
                node,
                kick: Rc::new(tokio::sync::Notify::new()),
                wakers: Vec::new(),
                events: VecDeque::new(),
            })),
        }
    }

    /// Drive the node for as long as it serves; spawn it on the same `LocalSet` as the tasks
    /// that use the node. Returns only on a device error.
    pub async fn run(self) -> Result<(), Error> {
        let fd = self.shared.borrow_mut().node.readiness_fd()?;
        // SAFETY: `fd` is the node's readiness descriptor, owned by the node in `self.shared`,
        // which this future holds: it stays open and is not replaced while `afd` lives.
        let afd = unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Io {
                what: "registering with tokio".into(),
                source: e.into(),
            })?;
        let kick = self.shared.borrow().kick.clone();
        loop {
            let wait = self
                .shared
                .borrow()
                .node
                .poll_timeout()
                .map_or(IDLE, |t| t.min(IDLE));
            tokio::select! {
                r = afd.readable() => {
                    if let Ok(mut g) = r {
                        g.clear_ready();
                    }
                }
                _ = kick.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // Edge-triggered: run the node until its descriptor has nothing left, letting the
            // woken tasks run between rounds (a device may stay readable for a while).
            loop {
                let wakers = {
                    let mut s = self.shared.borrow_mut();
                    s.node.poll(Duration::ZERO)?;
                    let evs: Vec<Event> = s.node.take_events().collect();
                    s.events.extend(evs);
                    std::mem::take(&mut s.wakers)
                };
                wakers.into_iter().for_each(Waker::wake);
                tokio::task::yield_now().await;
                if !readable_now(fd) {
                    break;
                }
            }
        }
    }

    /// The next connection (a new client, or one handed over by another node, with the
    /// state it came with).
    pub async fn accept(&self) -> Result<(AsyncConn, Option<Vec<u8>>), Error> {
        std::future::poll_fn(|cx| {
            let mut s = self.shared.borrow_mut();
            match s.node.try_accept() {
                Some(a) => Poll::Ready(Ok((
                    AsyncConn {
                        shared: self.shared.clone(),
                        id: a.conn,
                        peer: a.peer,
                        gone: false,
                    },
                    a.state,
                ))),
                None => {
                    s.wait(cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Hand `conn` to the node at `to` with the application's `state` and wait for the
    /// outcome: the report, or the error and the connection, which continues here.
    pub async fn handoff(
        &self,
        mut conn: AsyncConn,
        to: SocketAddr,
        state: Vec<u8>,
    ) -> Result<HandoffReport, (Option<AsyncConn>, Error)> {
        let id = conn.id;
        {
            let mut s = self.shared.borrow_mut();
            if let Err(e) = s.node.start_handoff(id, to, state) {
                drop(s);
                return Err((Some(conn), e));
            }
            s.kick();
        }
        let ev = std::future::poll_fn(|cx| {
            let mut s = self.shared.borrow_mut();
            let pos = s.events.iter().position(|e| e.conn() == Some(id));
            match pos.and_then(|i| s.events.remove(i)) {
                Some(e) => Poll::Ready(e),
                None => {
                    s.wait(cx);
                    Poll::Pending
                }
            }
        })
        .await;
        match ev {
            Event::HandedOff { report, .. } => {
                conn.gone = true;
                Ok(*report)
            }
            Event::KeptHere { cause, .. } => Err((Some(conn), Error::Handoff { conn: id, cause })),
            Event::Lost { cause, .. } => {
                conn.gone = true;
                Err((None, Error::Handoff { conn: id, cause }))
            }
            Event::Declined { .. }
            | Event::Rebound { .. }
            | Event::Bound { .. }
            | Event::SteerRefused { .. } => {
                unreachable!("not matched above")
            }
        }
    }

    /// Run `f` with the node (its counters, its policy, its peers).
    pub fn with_node<T>(&self, f: impl FnOnce(&mut Node) -> T) -> T {
        f(&mut self.shared.borrow_mut().node)
    }
}

/// A connection of an [`AsyncNode`]: [`AsyncRead`] + [`AsyncWrite`]. Shutting it down closes
/// it (a FIN follows what was written; nothing more can be read), as does dropping it.
pub struct AsyncConn {
    shared: Rc<RefCell<Shared>>,
    id: ConnId,
    peer: SocketAddrV6,
    /// Closed or moved: nothing to close on drop.
    gone: bool,
}

impl std::fmt::Debug for AsyncConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncConn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncConn {
    /// The connection's id on its node.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The client's end.
    pub fn peer_addr(&self) -> SocketAddrV6 {
        self.peer
    }
}

impl AsyncRead for AsyncConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        match s.node.read(self.id, buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                // Reading opens the receive window: the stack may owe a window update.
                s.kick();
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.wait(cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for AsyncConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.shared.borrow_mut();
        match s.node.write(self.id, buf) {
            Ok(n) => {
                s.kick();
                Poll::Ready(Ok(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.wait(cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The stack sends on its own; there is nothing held back here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.gone {
            self.gone = true;
            let id = self.id;
            let mut s = self.shared.borrow_mut();
            s.node.close(id)?;
            s.kick();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for AsyncConn {
    fn drop(&mut self) {
        if !self.gone {
            if let Ok(mut s) = self.shared.try_borrow_mut() {
                let _ = s.node.close(self.id);
                s.kick();
            }
        }
    }
}
