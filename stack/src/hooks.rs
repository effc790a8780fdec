//! Extension points for Mobile IPv6 (`mipv6/`): the Home Address destination option, the type 2
//! routing header and the Mobility Header reach the stack through this trait, so the stack needs
//! no reshaping when mobility arrives. Without a hook the stack behaves as a node that does not
//! implement RFC 6275.

use crate::time::Instant;
pub use ds_mipv6::MhMeta;
use std::net::Ipv6Addr;

/// What to do with a packet carrying a Home Address option (RFC 6275 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaoVerdict {
    /// Accept it: upper layers see the home address as the source (RFC 6275 §9.3.1).
    Accept,
    /// No valid binding: drop it (the hook may queue a Binding Error).
    Reject,
}

/// Typed access to a hook the interface owns ([`crate::Interface::mobility_hook_mut`]);
/// implemented for every `'static` type.
pub trait AsAny {
    /// `self` as `Any`.
    fn as_any(&self) -> &dyn std::any::Any;
    /// `self` as mutable `Any`.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Mobility processing plugged into an [`crate::Interface`]. The interface owns it; its owner
/// drives it through the interface, so nothing on the data path is shared behind a lock.
pub trait MobilityHook: Send + AsAny {
    /// A Mobility Header (IPv6 next header 135) addressed to us that the interface's own
    /// correspondent role did not take (HoT, CoT, BA, BE, BRR: the mobile-node side). `meta`
    /// has the addresses as on the wire and the packet's HAO / RH2; `mh` starts at the MH.
    /// Return IPv6 packets (without link header) to send in answer, or `None` when nothing
    /// here expected the message (no test, Binding Update or registration it answers): an
    /// interface with siblings then passes it on, since a sibling serving another receive
    /// queue may be the one that asked (`Interface::set_siblings`).
    fn on_mobility_header(&mut self, now: Instant, meta: MhMeta, mh: &[u8])
        -> Option<Vec<Vec<u8>>>;

    /// A packet from care-of address `src` carrying Home Address option `home`. By default
    /// refused: accepting HAOs is the correspondent's job (RFC 6275 §9.3.1), which the
    /// interface does itself.
    fn on_home_address_option(
        &mut self,
        _now: Instant,
        _src: Ipv6Addr,
        _home: Ipv6Addr,
    ) -> HaoVerdict {
        HaoVerdict::Reject
    }

    /// A type 2 routing header: the packet came to our care-of address `dst` for home address
    /// `home`. Return true if `home` is ours to accept (RFC 6275 §9.3.2 / §11.3.3).
    fn on_type2_routing(&mut self, now: Instant, dst: Ipv6Addr, home: Ipv6Addr) -> bool;

    /// Outgoing: a packet from `src` to `dst`. If `src` is a home address this node serves
    /// away from home towards `dst` (the mobile-node role), return the care-of address to
    /// send from; the stack adds the Home Address option (RFC 6275 §11.3.1).
    fn outgoing_from_home(
        &mut self,
        _now: Instant,
        _src: Ipv6Addr,
        _dst: Ipv6Addr,
    ) -> Option<Ipv6Addr> {
        None
    }

    /// Timers: packets to send now (retransmissions, queued signalling).
    fn poll(&mut self, _now: Instant) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// When [`MobilityHook::poll`] next has work.
    fn poll_at(&self) -> Option<Instant> {
        None
    }

    /// Signalling queued since the last poll (a Binding Update asked for as a connection
    /// arrives): the interface sends it at its next transmit, ahead of the connections' data.
    /// Asked at every transmit, so it must be cheap (no scan of per-peer state).
    fn has_queued(&self) -> bool {
        false
    }
}
