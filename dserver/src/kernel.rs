//! The library's kernel-socket node: a server that accepts clients with the kernel's own
//! sockets hands them to other nodes ([`KernelNode::handoff_socket`]; the connection is
//! frozen with `TCP_REPAIR`) and takes over connections other nodes hand to it, as kernel
//! sockets ([`KernelNode::try_accept`]). Userspace and kernel nodes interoperate: the engine
//! and the protocol are the same.
//!
//! The node attaches the XDP steering program to its interface: it passes the packets of
//! this node's addresses to the kernel (decapsulating the home agent's tunnel) and holds a
//! moving connection's packets until the move is decided. The addresses themselves are the
//! operator's to configure on the kernel (the care-of address on the interface, the DS
//! address on `lo`).

use crate::engine::{Coordinator, HandoffConfig, NodeEvent, NodeStats};
use crate::readiness::Readiness;
use crate::{Error, HandoffReport};
use ds_handoff::Service;
use ds_kernel::{KernelConn, KernelHost};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The XDP steering program attached to a kernel node's interface, passing `addrs` (after
/// decapsulation) to the kernel; the attachment lasts as long as the returned link.
pub fn kernel_steering(
    iface: &str,
    addrs: &[Ipv6Addr],
) -> Result<(ds_xdp::Program, OwnedFd, ds_xdp::Mode), Error> {
    use ds_xdp::maps::{Action, LocalAddr, PROTO_ALL};
    let xdp = |what: String| {
        move |e: ds_xdp::Error| Error::Io {
            what,
            source: std::io::Error::other(e),
        }
    };
    let prog = ds_xdp::Program::load(ds_xdp::Kind::Steer, &ds_xdp::LoadOptions::default())
        .map_err(xdp("loading the XDP steering program (needs root)".into()))?;
    let idx = ds_xdp::loader::ifindex(iface).map_err(xdp(format!("interface {iface}")))?;
    let (link, mode) = prog
        .attach_link(idx, ds_xdp::Mode::Auto)
        .map_err(xdp(format!("attaching the steering program to {iface}")))?;
    for a in addrs {
        let pass = LocalAddr {
            protos: PROTO_ALL,
            action: Action::Pass,
        };
        prog.add_local(*a, pass)
            .map_err(xdp(format!("steering {a}")))?;
    }
    Ok((prog, link, mode))
}

fn sync(r: &mut Readiness, epoch: u64, fds: &[RawFd]) -> Result<(), Error> {
    r.sync(epoch, fds.iter().copied())
        .map_err(|source| Error::Io {
            what: "readiness epoll".into(),
            source,
        })
}

/// A connection another node handed to this one, as a kernel socket.
#[derive(Debug)]
pub struct KernelAccepted {
    /// The connection (blocking, as `accept(2)` gives them).
    pub stream: TcpStream,
    /// The client's end.
    pub peer: SocketAddrV6,
    /// The state its previous node gave with it.
    pub state: Vec<u8>,
}

/// The engine's view of the application over kernel sockets (see `AppService` of the
/// userspace node).
struct SockService<'a> {
    name: &'a str,
    export: &'a mut Option<Vec<u8>>,
    adopted: &'a mut Vec<(TcpStream, SocketAddrV6, Vec<u8>)>,
}

impl Service<KernelConn> for SockService<'_> {
    fn accepts(&self, name: &str) -> bool {
        name == self.name
    }

    fn export(&mut self, _conn: &KernelConn) -> Result<Vec<u8>, String> {
        self.export
            .take()
            .ok_or_else(|| "no application state for this connection".into())
    }

    fn adopt(&mut self, conn: KernelConn, state: &[u8]) -> Result<(), (KernelConn, String)> {
        let (_, remote) = conn.flow();
        match conn.into_socket() {
            Ok(sock) => {
                self.adopted.push((sock, remote, state.to_vec()));
                Ok(())
            }
            Err(c) => Err((c, "not a live socket".into())),
        }
    }
}

/// How a handoff of this node ended.
enum Outcome {
    Moved(Box<HandoffReport>),
    Kept(String),
    Lost(String),
}

/// A member of a distributed server whose connections are kernel sockets (see the module
/// documentation); made by [`crate::Builder::build_kernel`].
pub struct KernelNode {
    core: Coordinator<KernelConn>,
    host: KernelHost,
    service: String,
    export: Option<Vec<u8>>,
    adopted: Vec<(TcpStream, SocketAddrV6, Vec<u8>)>,
    accepted: VecDeque<KernelAccepted>,
    /// The client of the connection leaving now, its outcome, and the socket that came back.
    leaving: Option<SocketAddrV6>,
    outcome: Option<Outcome>,
    returned: Option<TcpStream>,
    fds: Vec<RawFd>,
    poll: ds_stack::device::PollSet,
    readiness: Option<Readiness>,
    // The steering program stays attached while the node lives (declared last: the hold
    // table above uses its maps).
    _link: OwnedFd,
    _prog: ds_xdp::Program,
}

impl std::fmt::Debug for KernelNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelNode")
            .field("service", &self.service)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl KernelNode {
    pub(crate) fn new(
        iface: &str,
        addrs: &[Ipv6Addr],
        mut cfg: HandoffConfig,
    ) -> Result<KernelNode, Error> {
        let (prog, link, mode) = kernel_steering(iface, addrs)?;
        let holds =
            ds_kernel::HoldTable::new(&prog, ds_kernel::HoldLimits::default()).map_err(|e| {
                Error::Io {
                    what: "the packet hold".into(),
                    source: std::io::Error::other(e),
                }
            })?;
        let mut core = Coordinator::new(&mut cfg)?;
        if let Err(e) = core.connect_peer() {
            tracing::info!("peer not reachable yet: {e}");
        }
        tracing::info!(%iface, xdp = ?mode, "kernel node up");
        Ok(KernelNode {
            core,
            host: KernelHost::new(holds),
            service: cfg.service,
            export: None,
            adopted: Vec::new(),
            accepted: VecDeque::new(),
            leaving: None,
            outcome: None,
            returned: None,
            fds: Vec::new(),
            poll: ds_stack::device::PollSet::default(),
            readiness: None,
            _link: link,
            _prog: prog,
        })
    }

    /// Wait up to `timeout` for control messages or held packets, then process them
    /// (offers from other nodes, the handoff in progress).
    pub fn poll(&mut self, timeout: Duration) -> Result<(), Error> {
        // While a drain runs, the client's ACKs it waits for wake nothing here: look often.
        let idle = if self.core.handing_off() {
            timeout.min(Duration::from_micros(50))
        } else {
            timeout
        };
        let wait = self.core.max_wait(Instant::now(), idle);
        self.collect_fds();
        if !wait.is_zero() {
            self.poll.clear();
            for fd in &self.fds {
                self.poll.add(*fd);
            }
            self.poll.wait(Some(wait)).map_err(|source| Error::Io {
                what: "waiting".into(),
                source,
            })?;
        }
        self.host.holds().poll();
        let mut svc = SockService {
            name: &self.service,
            export: &mut self.export,
            adopted: &mut self.adopted,
        };
        self.core.poll(Instant::now(), &mut self.host, &mut svc);
        self.sort_out();
        self.collect_fds();
        if let Some(r) = self.readiness.as_mut() {
            sync(r, self.core.channel_epoch(), &self.fds)?;
        }
        Ok(())
    }

    fn collect_fds(&mut self) {
        self.fds.clear();
        self.core.wait_fds(&mut self.fds);
        self.fds.push(self.host.holds().fd().as_raw_fd());
    }

    /// Arrivals, the socket of a failed handoff, and the engine's events.
    fn sort_out(&mut self) {
        for (stream, peer, state) in std::mem::take(&mut self.adopted) {
            if self.leaving == Some(peer) {
                self.returned = Some(stream);
            } else {
                self.accepted.push_back(KernelAccepted {
                    stream,
                    peer,
                    state,
                });
            }
        }
        for ev in self.core.take_events() {
            let (client, outcome) = match ev {
                NodeEvent::HandedOff { report, client, .. } => {
                    (Some(client), Outcome::Moved(Box::new(report)))
                }
                NodeEvent::KeptHere { client, cause } => (Some(client), Outcome::Kept(cause)),
                NodeEvent::Failed { cause } => (self.leaving, Outcome::Lost(cause)),
                NodeEvent::Declined { cause } => {
                    tracing::info!("an offer was declined here: {cause}");
                    continue;
                }
                NodeEvent::Adopted { .. }
                | NodeEvent::Bound { .. }
                | NodeEvent::SteerRefused { .. }
                | NodeEvent::Rebound { .. } => continue,
            };
            if client.is_some() && client == self.leaving {
                self.outcome = Some(outcome);
            }
        }
    }

    /// The next connection another node handed to this one, if there is one.
    pub fn try_accept(&mut self) -> Option<KernelAccepted> {
        self.accepted.pop_front()
    }

    /// Hand the connection of `sock` (a kernel TCP socket this server accepted) to the node
    /// whose control address is `to`, with the application's `state`; wait for the outcome.
    /// The report when it moved (the socket is gone from here); otherwise the error and the
    /// socket, when the connection continues here (it may be a new socket for the same
    /// connection).
    ///
    /// ```no_run
    /// # fn f() -> Result<(), dserver::Error> {
    /// use dserver::{Device, Node};
    /// let peer = "[fd00:1::12]:7000".parse().unwrap();
    /// let mut kn = Node::builder()
    ///     .ds_addr("fd00:80::80".parse().unwrap())
    ///     .care_of("fd00:1::1".parse().unwrap())
    ///     .device(Device::Kernel { iface: "eth0".into() })
    ///     .secret_file("/etc/dserver/secret")
    ///     .peer(peer)
    ///     .build_kernel()?;
    /// let listener = std::net::TcpListener::bind("[::]:80")?;
    /// let (sock, _) = listener.accept()?;
    /// match kn.handoff_socket(sock, peer, b"application state".to_vec()) {
    ///     Ok(report) => println!("moved in {} µs", report.total_us),
    ///     Err((Some(sock), e)) => { let _ = (sock, e); } // serve it here
    ///     Err((None, e)) => eprintln!("lost: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn handoff_socket(
        &mut self,
        sock: TcpStream,
        to: SocketAddr,
        state: Vec<u8>,
    ) -> Result<HandoffReport, (Option<TcpStream>, Error)> {
        let refuse = |sock, cause: String| {
            Err((
                Some(sock),
                Error::Handoff {
                    conn: crate::ConnId(0),
                    cause,
                },
            ))
        };
        if self.core.peer() != Some(to) {
            return refuse(sock, format!("{to} is not a peer of this node"));
        }
        if self.leaving.is_some() || self.core.handing_off() {
            return refuse(sock, "another handoff is in progress".into());
        }
        let ends = sock.local_addr().and_then(|_| sock.peer_addr());
        if let Err(e) = ends {
            return refuse(sock, format!("not a connected socket: {e}"));
        }
        // The engine freezes nothing for a peer whose control channel is not up (a hung peer
        // never completes it): this call blocks anyway, so it brings the channel up first
        // (for `CHANNEL_WAIT` at most).
        loop {
            match self.core.peer_ready(Instant::now(), to) {
                Ok(true) => break,
                Ok(false) => {
                    if let Err(e) = self.poll(Duration::from_millis(1)) {
                        tracing::warn!("while connecting to the peer: {e}");
                    }
                }
                Err(why) => return refuse(sock, why),
            }
        }
        let conn = match KernelConn::live(sock) {
            Ok(c) => c,
            Err(e) => return Err((None, e.into())),
        };
        let (_, client) = conn.flow();
        self.export = Some(state);
        let mut svc = SockService {
            name: &self.service,
            export: &mut self.export,
            adopted: &mut self.adopted,
        };
        if let Err(conn) = self
            .core
            .hand_off(Instant::now(), conn, None, &mut self.host, &mut svc)
        {
            self.export = None;
            let sock = conn.into_socket().ok();
            let cause = "the handoff could not start (peer unreachable?)".to_string();
            return match sock {
                Some(s) => refuse(s, cause),
                None => Err((
                    None,
                    Error::Handoff {
                        conn: crate::ConnId(0),
                        cause,
                    },
                )),
            };
        }
        self.leaving = Some(client);
        let outcome = loop {
            if let Err(e) = self.poll(Duration::from_millis(1)) {
                tracing::warn!("while handing off: {e}");
            }
            if let Some(o) = self.outcome.take() {
                break o;
            }
        };
        self.leaving = None;
        let returned = self.returned.take();
        let err = |cause| Error::Handoff {
            conn: crate::ConnId(0),
            cause,
        };
        match outcome {
            Outcome::Moved(r) => Ok(*r),
            Outcome::Kept(cause) => Err((returned, err(cause))),
            Outcome::Lost(cause) => Err((None, err(cause))),
        }
    }

    /// Handoff counters.
    pub fn stats(&self) -> NodeStats {
        self.core.stats()
    }

    /// A descriptor that turns readable when the node has input (see
    /// [`crate::Node::readiness_fd`]).
    pub fn readiness_fd(&mut self) -> Result<RawFd, Error> {
        if self.readiness.is_none() {
            let mut r = Readiness::new()?;
            self.collect_fds();
            sync(&mut r, self.core.channel_epoch(), &self.fds)?;
            self.readiness = Some(r);
        }
        Ok(self.readiness.as_ref().map(Readiness::fd).unwrap_or(-1))
    }

    /// The longest the caller may wait before the next [`KernelNode::poll`] when nothing is
    /// readable; `None`: no deadline.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let far = Duration::from_secs(3600);
        Some(self.core.max_wait(Instant::now(), far)).filter(|d| *d < far)
    }
}
