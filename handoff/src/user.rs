//! The userspace host: connections of a [`ds_stack::Interface`].
//!
//! A [`UserHost`] borrows the interface for one call into the engine (as smoltcp lends its
//! socket set), with the stack's time of the caller's step and a monotonic clock to time the
//! host's operations by.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use ds_stack::mobile::MobileRole;
use ds_stack::{ConnState, Interface, Packets, TcpHandle};

use crate::host::{Host, HostError, Takeover};

/// A monotonic clock: the system's monotonic clock in a real node, simulated time in tests.
pub type Clock = fn() -> std::time::Instant;

/// A connection on the userspace stack.
#[derive(Debug)]
pub enum UserConn {
    /// A live connection.
    Live(TcpHandle),
    /// Thawed and not yet activated: its packets are held by the interface
    /// ([`Interface::tcp_hold`]); the TCB is built at activation.
    Dormant {
        /// The state to thaw.
        state: Box<ConnState>,
        /// An address taken over for this connection alone (given back on discard).
        added: Option<Ipv6Addr>,
    },
}

impl UserConn {
    /// The live connection's handle.
    pub fn handle(&self) -> Option<TcpHandle> {
        match self {
            UserConn::Live(h) => Some(*h),
            UserConn::Dormant { .. } => None,
        }
    }
}

/// [`Host`] over a userspace interface, for one call into the engine. Route-optimised steering
/// drives the interface's own mobile role ([`Interface::mobility_hook_mut`]).
pub struct UserHost<'a> {
    iface: &'a mut Interface,
    now: ds_stack::Instant,
    clock: Clock,
}

impl<'a> UserHost<'a> {
    /// The interface at the stack time `now`, timing operations with `clock`.
    pub fn new(iface: &'a mut Interface, now: ds_stack::Instant, clock: Clock) -> Self {
        UserHost { iface, now, clock }
    }

    fn role(&mut self) -> Result<&mut MobileRole, HostError> {
        self.iface
            .mobility_hook_mut::<MobileRole>()
            .ok_or_else(|| HostError::new("no mobile role on this interface"))
    }

    /// The interface.
    pub fn iface(&mut self) -> &mut Interface {
        self.iface
    }

    fn err(e: ds_stack::Error) -> HostError {
        HostError::new(format!("stack: {e}"))
    }
}

impl Host for UserHost<'_> {
    type Conn = UserConn;

    fn now(&self) -> std::time::Instant {
        (self.clock)()
    }

    fn kind(&self) -> crate::msg::HostKind {
        crate::msg::HostKind::User
    }

    fn endpoints(&self, conn: &UserConn) -> Option<(SocketAddrV6, SocketAddrV6)> {
        match conn {
            UserConn::Live(h) => self.iface.tcp_endpoints(*h),
            UserConn::Dormant { state, .. } => Some((state.local(), state.remote())),
        }
    }

    fn unacknowledged(&mut self, conn: &UserConn) -> Option<usize> {
        let h = conn.handle()?;
        self.iface.tcp_state(h)?;
        Some(self.iface.tcp_send_queued(h))
    }

    fn solicit_ack(&mut self, conn: &UserConn) -> bool {
        conn.handle()
            .is_some_and(|h| self.iface.tcp_solicit_ack(h).unwrap_or(false))
    }

    fn freeze(&mut self, conn: &UserConn) -> Result<ConnState, HostError> {
        let h = conn
            .handle()
            .ok_or_else(|| HostError::new("freeze of a dormant connection"))?;
        self.iface.tcp_freeze(self.now, h).map_err(Self::err)
    }

    fn thaw(&mut self, state: &ConnState, takeover: Takeover) -> Result<UserConn, HostError> {
        state
            .validate()
            .map_err(|e| HostError::new(format!("state: {e}")))?;
        let ip = *state.local().ip();
        let added = match takeover {
            Takeover::None => None,
            Takeover::Address => {
                let had = self.iface.addrs().contains(&ip);
                self.iface.add_addr(ip);
                (!had).then_some(ip)
            }
            Takeover::HomeAddress => {
                self.iface.add_home_addr(ip);
                None
            }
        };
        if let Err(e) = self.iface.tcp_hold(self.now, state.local(), state.remote()) {
            if let Some(a) = added {
                self.iface.remove_addr(a);
            }
            return Err(Self::err(e));
        }
        Ok(UserConn::Dormant {
            state: Box::new(state.clone()),
            added,
        })
    }

    fn activate(&mut self, conn: &mut UserConn, announce: bool) -> Result<(), HostError> {
        let UserConn::Dormant { state, added } = conn else {
            return Ok(());
        };
        let (local, remote) = (state.local(), state.remote());
        // What reached the reserved connection (the donor's forwarding, or this host's own
        // hold when the connection comes back) goes in right after the thaw, before anything
        // newer.
        let held = self.iface.tcp_take_held(local, remote);
        let h = match self.iface.tcp_thaw(self.now, state) {
            Ok(h) => h,
            Err(e) => {
                self.iface.tcp_forget_frozen(local, remote);
                if let Some(a) = added.take() {
                    self.iface.remove_addr(a);
                }
                return Err(Self::err(e));
            }
        };
        for p in &held {
            self.iface.receive_ipv6(self.now, p, None);
        }
        if announce {
            self.iface.announce(self.now);
        }
        *conn = UserConn::Live(h);
        Ok(())
    }

    fn abort(&mut self, conn: UserConn) {
        match conn {
            UserConn::Live(h) => {
                let _ = self.iface.tcp_abort(h);
                self.iface.tcp_release(h);
            }
            UserConn::Dormant { .. } => self.discard(conn),
        }
    }

    fn discard(&mut self, conn: UserConn) {
        match conn {
            UserConn::Live(h) => {
                // Freeze and forget: nothing reaches the client.
                if let Ok(st) = self.iface.tcp_freeze(self.now, h) {
                    self.iface.tcp_forget_frozen(st.local(), st.remote());
                }
            }
            UserConn::Dormant { state, added } => {
                self.iface.tcp_forget_frozen(state.local(), state.remote());
                if let Some(a) = added {
                    self.iface.remove_addr(a);
                }
            }
        }
    }

    fn take_held(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.iface.tcp_take_held(local, remote)
    }

    fn release(&mut self, local: SocketAddrV6, remote: SocketAddrV6) -> Packets {
        self.iface.tcp_forget_frozen(local, remote)
    }

    fn inject(&mut self, packets: Packets) {
        for p in &packets {
            self.iface.receive_ipv6(self.now, p, None);
        }
    }

    fn connection_count(&self) -> usize {
        self.iface.tcp_connection_count()
    }

    fn start_care_of_test(&mut self, client: Ipv6Addr, cookie: u64) -> Result<(), HostError> {
        let now = self.now;
        self.role()?
            .start_care_of_test(now, client, cookie.to_be_bytes());
        Ok(())
    }

    fn has_care_of_token(&self, client: Ipv6Addr) -> bool {
        self.iface
            .mobility_hook::<MobileRole>()
            .is_some_and(|r| r.has_care_of_token_for(self.now, client))
    }

    fn bind(
        &mut self,
        client: Ipv6Addr,
        ticket: &[u8],
        lifetime: Duration,
    ) -> Result<(), HostError> {
        let ticket: ds_mipv6::mn::HomeTicket = postcard::from_bytes(ticket)
            .map_err(|e| HostError::new(format!("home ticket: {e}")))?;
        let now = self.now;
        self.role()?
            .bind(now, &ticket, client, lifetime)
            .map_err(|e| HostError::new(format!("binding update: {e:?}")))
    }
}
