//! Live TCP handoff between distributed-server nodes (issue 5, part 1).
//!
//! * [`channel`]: the donor↔acceptor control channel — a sans-IO codec (hello, HKDF-SHA256 key
//!   schedule, ChaCha20-Poly1305 frames with implicit per-direction counters) and a thin
//!   non-blocking transport over [`std::net::TcpStream`].
//! * [`msg`]: the versioned protocol messages (Offer, Accept, Refuse, Activated, Abort).
//! * [`drain`]: the drain policy (freeze at once, or once the send buffer is acknowledged).
//! * [`report`]: the seven phases of seed Table 1 and the one-line JSON [`HandoffReport`].
//! * [`driver`]: poll-driven donor and acceptor for the userspace path (`ds_stack`).
//!
//! Nothing here blocks except the channel handshake; the donor and acceptor are polled by the
//! caller's loop together with its [`ds_stack::Interface`].
//!
//! ```no_run
//! use ds_handoff::{Channel, ClusterSecret, Donor, DonorConfig, DonorOutcome, Drain};
//! use std::time::Duration;
//! # fn run(iface: &mut ds_stack::Interface, conn: ds_stack::TcpHandle, now: ds_stack::Instant)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let secret = ClusterSecret::new(b"at least sixteen bytes of cluster secret")?;
//! let mut chan = Channel::connect("[fd00::2]:7000".parse()?, &secret, Duration::from_secs(1))?;
//! let mut cfg = DonorConfig::new(1, "http");
//! cfg.drain = Drain::UntilAcked { deadline: Duration::from_millis(100) };
//! let mut donor = Donor::start(conn, cfg, now);
//! loop {
//!     // ... step the interface (receive, poll, transmit) ...
//!     match donor.poll(&mut chan, iface, now)? {
//!         None => continue,
//!         Some(DonorOutcome::Moved { report, .. }) => println!("{}", report.to_json_line()),
//!         Some(DonorOutcome::Resumed { cause, .. }) => eprintln!("kept here: {cause}"),
//!     }
//!     break;
//! }
//! # Ok(()) }
//! ```
//!
//! The acceptor side is an [`Acceptor`] polled on the channel returned by
//! [`Channel::accept`]; see `tests/e2e.rs` for both sides driven against a simulated LAN.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod drain;
pub mod driver;
pub mod msg;
pub mod report;

pub use channel::{Channel, ChannelError, ClusterSecret, Codec, Handshake, Role};
pub use drain::{Drain, DrainEnd, DrainGate};
pub use driver::{
    forward_held, forward_packets, Acceptor, AcceptorConfig, AcceptorEvent, Donor, DonorConfig,
    DonorOutcome, HandoffError, Takeover,
};
pub use msg::{Message, Offer, RefuseReason};
pub use report::{HandoffReport, Mode, Phase, PhaseTimes};
