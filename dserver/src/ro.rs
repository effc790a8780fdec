//! Route-optimised steering on the userspace stack, the donor's and the acceptor's
//! bookkeeping around the engine: the home keygen ticket that leaves with a connection
//! (RFC 6275 §5.2.5), the binding a connection had here released once it left (§11.7.2),
//! and the acceptor's Binding Update acknowledged (handoff phase 6). The node's mobile role
//! ([`MobileRole`]) is the interface's mobility hook; this drives it through the interface.

use crate::engine::{Coordinator, NodeEvent};
use ds_stack::mobile::MobileRole;
use ds_stack::{Instant as StackInstant, Interface};
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

/// How long a route-optimised donor waits for the home test before keeping the connection.
pub const TICKET_WAIT: Duration = Duration::from_secs(2);

/// What goes with a connection that is to leave.
#[derive(Debug)]
pub enum Ticket {
    /// Encoded, ready to go with the offer.
    Ready(Vec<u8>),
    /// The home test runs: try again later.
    Wait,
    /// None to be had: the connection stays.
    Missing(&'static str),
}

/// A route-optimised node's donor state: the home test in progress and the bindings of the
/// connections leaving.
#[derive(Debug, Default)]
pub struct RouteOptimisation {
    /// Cookie of the last home test (RFC 6275 §6.1.3).
    cookie: u64,
    /// Since when the connection about to leave waits for its home keygen token.
    wait: Option<Instant>,
    /// Connections leaving, by client, with the binding sequence they had here.
    leaving: HashMap<Ipv6Addr, u16>,
}

impl RouteOptimisation {
    /// What goes with a connection of `c` that is to leave (RFC 6275 §5.2.5): the home keygen
    /// token and the next sequence number. At home without a token for `c`, the home test is
    /// started and the caller asked to wait (bounded by [`TICKET_WAIT`]).
    ///
    /// `opened`: when the connection was accepted here (`None` if it came from another node,
    /// with its own ticket). A token obtained before then is not used: the correspondent may
    /// have restarted in between (a new client program on a userspace stack is a new
    /// correspondent with new keys, RFC 6275 §5.2.7), and a Binding Update built from it would
    /// be silently discarded (§9.5.1), leaving the moved connection unreachable. The home
    /// test runs once per connection; later handoffs of it reuse the token.
    pub fn ticket(
        &mut self,
        iface: &mut Interface,
        now: StackInstant,
        mono: Instant,
        c: SocketAddrV6,
        opened: Option<StackInstant>,
    ) -> Ticket {
        let Some(role) = iface.mobility_hook_mut::<MobileRole>() else {
            return Ticket::Missing("no mobile role on this node");
        };
        if let Some(t) = role.ticket_for(now, *c.ip(), opened) {
            self.wait = None;
            if let Some(seq) = role.binding_sequence(*c.ip()) {
                self.leaving.insert(*c.ip(), seq);
            }
            return match postcard::to_allocvec(&t) {
                Ok(b) => Ticket::Ready(b),
                Err(_) => Ticket::Missing("the home keygen ticket does not encode"),
            };
        }
        if !role.is_at_home() {
            // Away from home a node only has the token that came with the connection;
            // without it (expired) the connection stays.
            return Ticket::Missing("no home keygen ticket for the correspondent");
        }
        // No home keygen token for this connection yet: run the home test (the token lives for
        // minutes, §5.2.7, so later handoffs of this connection need none) and wait for it,
        // bounded.
        if self.wait.is_none() {
            self.cookie = self.cookie.wrapping_add(1);
            role.start_home_test(now, *c.ip(), self.cookie.to_be_bytes());
        }
        let since = *self.wait.get_or_insert(mono);
        if mono.saturating_duration_since(since) < TICKET_WAIT {
            return Ticket::Wait;
        }
        self.wait = None;
        Ticket::Missing("no home keygen token (the home test did not answer)")
    }

    /// Take note of this round's engine events: a connection that left has its new node
    /// speak for the home address towards the client; no refreshes of the binding it had
    /// here (RFC 6275 §11.7.2).
    pub fn observe(&mut self, iface: &mut Interface, events: &[NodeEvent]) {
        let Some(role) = iface.mobility_hook_mut::<MobileRole>() else {
            return;
        };
        for e in events {
            if let NodeEvent::HandedOff { client, .. } | NodeEvent::KeptHere { client, .. } = e {
                if let Some(seq) = self.leaving.remove(client.ip()) {
                    if matches!(e, NodeEvent::HandedOff { .. }) {
                        role.release(*client.ip(), seq);
                    }
                }
            }
        }
    }

    /// Acceptor: once the correspondent acknowledged the Binding Update the engine sent, a
    /// [`NodeEvent::Bound`] (binding management, phase 6, ends there).
    pub fn watch_binding<C: std::fmt::Debug>(
        core: &mut Coordinator<C>,
        iface: &Interface,
        now: StackInstant,
    ) {
        let (Some((client, at)), Some(role)) = (core.bu_sent, iface.mobility_hook::<MobileRole>())
        else {
            return;
        };
        if role.acknowledged_for(now, client) {
            core.bu_sent = None;
            core.push_event(NodeEvent::Bound {
                client,
                after: at.elapsed(),
            });
        }
    }
}
