//! A node's drain (`dsctl drain`), the bookkeeping both kinds of node share: ask the home
//! agent to send new clients to the peer, wait (bounded) for its answer, then let the node
//! stop accepting and hand every connection off, giving up on one after [`DRAIN_TRIES`]
//! failed handoffs (it finishes here).

use dserver::engine::{Coordinator, NodeEvent};
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

/// Handoffs tried per connection during a drain before it is left to finish here.
pub const DRAIN_TRIES: u32 = 3;

/// How long a drain waits for the home agent to move the binding before the node stops
/// accepting anyway.
pub const REBIND_WAIT: Duration = Duration::from_secs(2);

/// What `dsctl status` says about a drain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainInfo {
    /// Since the drain started, milliseconds.
    pub for_ms: u64,
    /// Connections still here.
    pub remaining: usize,
    /// Connections that failed to move [`DRAIN_TRIES`] times and finish here.
    pub staying: usize,
    /// Whether new clients are still accepted (until the home agent moved the binding).
    pub accepting: bool,
}

/// A drain in progress.
#[derive(Debug)]
pub struct Draining {
    since: Instant,
    /// Since when the home agent's answer to the rebind is awaited.
    rebind: Option<Instant>,
    /// Failed handoffs per client.
    failures: HashMap<SocketAddrV6, u32>,
}

impl Draining {
    /// Start draining through `core`; with `rebind` (the DS address and the peer's care-of
    /// address) the home agent is asked first to send new clients to the peer.
    pub fn start<C: std::fmt::Debug>(
        core: &mut Coordinator<C>,
        rebind: Option<(Ipv6Addr, Ipv6Addr)>,
    ) -> Result<Draining, String> {
        Self::start_with(core.has_peer(), rebind, |home, to| {
            core.rebind(home, to).map_err(|e| e.to_string())
        })
    }

    /// [`Draining::start`] for a node that has peers or not (`has_peer`) and asks the home
    /// agent for the rebind with `ask`.
    pub fn start_with(
        has_peer: bool,
        rebind: Option<(Ipv6Addr, Ipv6Addr)>,
        ask: impl FnOnce(Ipv6Addr, Ipv6Addr) -> Result<(), String>,
    ) -> Result<Draining, String> {
        if !has_peer {
            return Err("this node has no peer to drain to".into());
        }
        let mut waiting = None;
        if let Some((home, to)) = rebind {
            match ask(home, to) {
                Ok(()) => waiting = Some(Instant::now()),
                Err(e) => tracing::warn!("drain: the binding stays (new clients are refused): {e}"),
            }
        }
        Ok(Draining {
            since: Instant::now(),
            rebind: waiting,
            failures: HashMap::new(),
        })
    }

    /// The home agent answered the rebind.
    pub fn rebound(&mut self, ok: bool, detail: &str) {
        if ok {
            tracing::info!("drain: the home agent sends new clients to the peer");
        } else {
            tracing::warn!("drain: the home agent kept the binding: {detail}");
        }
        self.rebind = None;
    }

    /// A handoff of `client`'s connection failed (it is tried again, a few times).
    pub fn kept(&mut self, client: SocketAddrV6) {
        *self.failures.entry(client).or_default() += 1;
    }

    /// Take note of this round's events; true once the node may stop accepting (the home
    /// agent answered the rebind, or there was none, or the wait is over).
    pub fn observe(&mut self, events: &[NodeEvent]) -> bool {
        for e in events {
            match e {
                NodeEvent::Rebound { ok, detail } => self.rebound(*ok, detail),
                NodeEvent::KeptHere { client, .. } => self.kept(*client),
                _ => {}
            }
        }
        self.may_stop_accepting()
    }

    /// True once the node may stop accepting (the home agent answered the rebind, or there
    /// was none, or the wait is over).
    pub fn may_stop_accepting(&mut self) -> bool {
        if let Some(t) = self.rebind {
            if t.elapsed() < REBIND_WAIT {
                return false;
            }
            tracing::warn!("drain: no answer from the home agent about the binding");
            self.rebind = None;
        }
        true
    }

    /// Whether the connection of `client` should still be handed off.
    pub fn may_try(&self, client: SocketAddrV6) -> bool {
        self.failures.get(&client).is_none_or(|n| *n < DRAIN_TRIES)
    }

    /// The progress, with the node's `remaining` connections and whether it still accepts.
    pub fn info(&self, remaining: usize, accepting: bool) -> DrainInfo {
        DrainInfo {
            for_ms: self.since.elapsed().as_millis() as u64,
            remaining,
            staying: self
                .failures
                .values()
                .filter(|n| **n >= DRAIN_TRIES)
                .count(),
            accepting,
        }
    }
}
