//! Live TCP handoff between distributed-server nodes: a sans-IO engine over pluggable hosts
//! and services.
//!
//! * [`Donor`] and [`Acceptor`]: the handoff engine, state machines in quinn-proto's shape.
//!   Fed `(now, input)`, they drive the connection's [`Host`] and the application's
//!   [`Service`] (both passed per call), queue [`Message`]s for the caller to send, and say
//!   when to call again. They read no clock, touch no socket and make no timed wait or
//!   blocking call; the caller's event loop owns the sockets (e.g. [`Channel`]s) and the
//!   clock.
//! * [`host`]: the [`Host`] trait (freeze, thaw dormant, activate, hold and forward packets,
//!   route-optimisation steps) and the [`Service`] trait (export and adopt the application's
//!   per-connection state). [`UserHost`] is the userspace stack's host; `ds-kernel` has the
//!   kernel sockets' (`TCP_REPAIR`).
//! * [`channel`]: the donor↔acceptor control channel — a sans-IO codec (hello, HKDF-SHA256 key
//!   schedule, ChaCha20-Poly1305 frames with implicit per-direction counters) and a thin
//!   non-blocking transport over [`std::net::TcpStream`].
//! * [`msg`]: the versioned protocol messages (Prepare, Offer, Accept, Refuse, Activated,
//!   Abort, Forward; MoveFlow and FlowMoved with the home agent).
//! * [`drain`]: the drain policy (freeze at once, or once the send buffer is acknowledged).
//! * [`report`]: the seven phases of seed Table 1 and the one-line JSON [`HandoffReport`].
//!
//! One handoff, driven by hand (a node's loop does the same for many):
//!
//! ```no_run
//! use ds_handoff::{Donor, DonorConfig, DonorOutcome, Drain, Host, Service, Message};
//! use std::time::{Duration, Instant};
//! # fn run<H: Host, S: Service<H::Conn>>(host: &mut H, svc: &mut S, conn: H::Conn,
//! #     send: &mut dyn FnMut(Message), recv: &mut dyn FnMut() -> Option<Message>,
//! #     clock: &dyn Fn() -> Instant) {
//! let mut cfg = DonorConfig::new(1, "http");
//! cfg.drain = Drain::UntilAcked { deadline: Duration::from_millis(100) };
//! // `clock` is the event loop's: the monotonic clock in a node, simulated time in a test.
//! let Ok(mut donor) = Donor::start(clock(), conn, cfg, host, svc) else { return };
//! loop {
//!     // ... the caller's loop: step the host, wait until donor.poll_timeout() or input ...
//!     let now = clock();
//!     while let Some(msg) = recv() {
//!         donor.handle(now, msg, host, svc);
//!     }
//!     donor.poll(now, host, svc);
//!     while let Some(msg) = donor.poll_transmit() {
//!         send(msg);
//!     }
//!     match donor.poll_outcome() {
//!         Some(DonorOutcome::Moved { report, .. }) => println!("{}", report.to_json_line()),
//!         Some(other) => eprintln!("{other:?}"),
//!         None => {}
//!     }
//!     if donor.is_done() {
//!         break;
//!     }
//! }
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acceptor;
pub mod channel;
pub mod donor;
pub mod drain;
pub mod flows;
pub mod gate;
pub mod host;
pub mod msg;
pub mod report;
pub mod user;

pub use acceptor::{Acceptor, AcceptorConfig, AcceptorEvent, Dest, Steering, Violation};
pub use channel::{
    Channel, ChannelError, ClusterSecret, Codec, Handshake, Role, MAX_BACKLOG, MESSAGES_PER_TURN,
};
pub use donor::{Donor, DonorConfig, DonorOutcome, MAX_FORWARD};
pub use drain::Drain;
pub use gate::{ChannelGate, GateLimits, GateStats};
pub use host::{Host, HostError, Service, Takeover};
pub use msg::{AcceptorTimes, Fence, Message, Offer, RefuseReason, RECLAIM_ID};
pub use report::{HandoffReport, Mode, Phase, PhaseTimes};
pub use user::{Clock, UserConn, UserHost};

/// Why a handoff did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// Control channel failure.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The control channel to the peer broke (as the caller saw it).
    #[error("control channel lost: {0}")]
    ChannelLost(String),
    /// The host refused an operation (freeze, thaw).
    #[error("host: {0}")]
    Host(#[from] HostError),
    /// The service could not export or adopt the connection's state.
    #[error("service: {0}")]
    Service(String),
    /// The acceptor refused.
    #[error("refused by the acceptor: {0:?}")]
    Refused(RefuseReason),
    /// No reply in time.
    #[error("no reply from the acceptor in time")]
    Timeout,
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The acceptor accepted, then did not confirm activation: the connection is not thawed
    /// back here (it may run there).
    #[error("acceptor accepted but did not confirm activation: {0}")]
    InDoubt(String),
    /// The connection closed before it could be frozen.
    #[error("connection gone before the freeze")]
    Gone,
}
