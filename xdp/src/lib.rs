//! XDP programs and the AF_XDP device of Distributed Servers.
//!
//! - [`loader`]: the BPF programs (`bpf/steer.bpf.c`, `bpf/tunnel.bpf.c`, compiled by clang
//!   through libbpf-cargo skeletons at build time), pinned maps under `/sys/fs/bpf/ds/<iface>/`,
//!   native/generic attachment, `BPF_PROG_TEST_RUN`.
//! - [`hold`]: the steering program's held flows and the reader of its ring of held packets.
//! - [`maps`]: byte-exact mirrors of the map keys and values.
//! - [`xsk`]: AF_XDP sockets (UMEM, fill/completion/RX/TX rings) over the kernel ABI.
//! - [`device`]: [`device::AfXdpDevice`], a `ds_stack::device::Device` over AF_XDP.
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod device;
pub mod gso_tx;
pub mod hold;
pub mod loader;
pub mod maps;
pub mod xsk;

/// The generated libbpf-rs skeletons.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    non_camel_case_types,
    dead_code
)]
pub(crate) mod skel {
    pub mod steer {
        include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
    }
    pub mod tunnel {
        include!(concat!(env!("OUT_DIR"), "/tunnel.skel.rs"));
    }
}

pub use loader::{Kind, LoadOptions, Mode, Program};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libbpf operation failed.
    #[error("{0}: {1}")]
    Bpf(&'static str, #[source] libbpf_rs::Error),
    /// A system call failed.
    #[error("{0}: {1}")]
    Os(&'static str, #[source] std::io::Error),
    /// No such interface.
    #[error("no interface {0:?}")]
    NoInterface(String),
    /// Bad argument or inconsistent state.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn bpf(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> Error {
        move |e| Error::Bpf(what, e)
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Os(_, io) => io,
            other => std::io::Error::other(other.to_string()),
        }
    }
}
