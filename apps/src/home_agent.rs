//! A Mobile IPv6 home agent on the userspace stack (RFC 6275 §10): authenticated home
//! registration (RFC 4285), proxy Neighbour Discovery for registered home addresses on the home
//! link, IPv6-in-IPv6 tunnelling of intercepted packets to the care-of address, and
//! forwarding of reverse-tunnelled packets. The protocol decisions are `ds_mipv6::ha`; this
//! module wires them to an [`Interface`].

use ds_mipv6::ha::{HaConfig, HaEvent, HomeAgent, MnHaSa};
use ds_stack::hooks::{MhMeta, MobilityHook};
use ds_stack::{Instant, Interface};
use std::collections::HashSet;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, MutexGuard};

struct Shared {
    ha: HomeAgent,
    /// NTP wall time at an instant of the interface clock (RFC 4285 §6 timestamps).
    wall: (u64, Instant),
    /// Events not yet acted on by `service`.
    events: Vec<HaEvent>,
    /// Events acted on, for whoever asks.
    log: Vec<HaEvent>,
    /// The intercepted packet being forwarded, and its tunnelled form: reused from packet to
    /// packet, so that forwarding allocates nothing per packet.
    pkt: Vec<u8>,
    out: Vec<u8>,
}

impl Shared {
    fn wall_at(&self, now: Instant) -> u64 {
        let d = now - self.wall.1;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        self.wall.0.wrapping_add((d.as_secs() << 32) | frac)
    }
}

/// Counters of the forwarding plane.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HaStats {
    /// Packets for home addresses tunnelled to care-of addresses.
    pub tunnelled: u64,
    /// Reverse-tunnelled packets forwarded.
    pub reverse_forwarded: u64,
    /// Intercepted packets with no binding or a spoofed tunnel, dropped.
    pub dropped: u64,
    /// Registrations accepted.
    pub registered: u64,
    /// Registrations refused (forged, replayed, stale).
    pub refused: u64,
}

/// The home agent: install [`HomeAgentNode::hook`] on an interface created with
/// `Config::correspondent = false`, then call [`HomeAgentNode::service`] after each step.
#[derive(Clone)]
pub struct HomeAgentNode {
    sh: Arc<Mutex<Shared>>,
    proxied: Arc<Mutex<HashSet<Ipv6Addr>>>,
    stats: Arc<Mutex<HaStats>>,
}

struct Hook(Arc<Mutex<Shared>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MobilityHook for Hook {
    fn on_mobility_header(
        &mut self,
        now: Instant,
        meta: MhMeta,
        mh: &[u8],
    ) -> Option<Vec<Vec<u8>>> {
        let mut s = lock(&self.0);
        let wall = s.wall_at(now);
        let out = s.ha.on_mobility_header(now, wall, meta, mh);
        tracing::info!(event = ?out.event, "home registration");
        s.events.push(out.event);
        // The home agent runs on one interface: whatever it is, it stays here.
        Some(out.transmit.into_iter().map(|t| t.packet).collect())
    }

    fn on_type2_routing(&mut self, _now: Instant, _dst: Ipv6Addr, _home: Ipv6Addr) -> bool {
        false
    }
}

impl HomeAgentNode {
    /// A home agent at `address` with these MN-HA security associations; `wall_ntp` is the
    /// NTP wall time at `now`.
    pub fn new(
        address: Ipv6Addr,
        sas: Vec<MnHaSa>,
        wall_ntp: u64,
        now: Instant,
    ) -> anyhow::Result<Self> {
        let mut ha = HomeAgent::new(HaConfig::new(address));
        for sa in sas {
            ha.add_sa(sa)?;
        }
        Ok(HomeAgentNode {
            sh: Arc::new(Mutex::new(Shared {
                ha,
                wall: (wall_ntp, now),
                events: Vec::new(),
                log: Vec::new(),
                pkt: Vec::new(),
                out: Vec::new(),
            })),
            proxied: Arc::new(Mutex::new(HashSet::new())),
            stats: Arc::new(Mutex::new(HaStats::default())),
        })
    }

    /// The mobility hook that answers home registrations.
    pub fn hook(&self) -> Box<dyn MobilityHook> {
        Box::new(Hook(self.sh.clone()))
    }

    /// Counters.
    pub fn stats(&self) -> HaStats {
        lock(&self.stats).clone()
    }

    /// Registration events so far (drained).
    pub fn take_events(&self) -> Vec<HaEvent> {
        std::mem::take(&mut lock(&self.sh).log)
    }

    /// The care-of address registered for a home address.
    pub fn care_of(&self, now: Instant, home: Ipv6Addr) -> Option<Ipv6Addr> {
        lock(&self.sh).ha.care_of(now, home)
    }

    /// Keep proxy ND in step with the binding cache, and forward intercepted packets:
    /// tunnel those for home addresses (§10.4.2), forward reverse-tunnelled ones (§10.4.5).
    pub fn service(&self, iface: &mut Interface, now: Instant) {
        let t = now;
        let mut sh = lock(&self.sh);
        sh.ha.poll(t);
        let events = std::mem::take(&mut sh.events);
        let mut proxied = lock(&self.proxied);
        let mut stats = lock(&self.stats);
        for ev in &events {
            match ev {
                HaEvent::Registered { .. } => stats.registered += 1,
                HaEvent::Rejected(_) | HaEvent::Discarded(_) => stats.refused += 1,
                HaEvent::Deregistered(_) => {}
            }
        }
        // Proxy exactly the registered home addresses (RFC 6275 §10.4.1).
        proxied.retain(|&home| {
            let keep = sh.ha.proxy_nd(t, home);
            if !keep {
                iface.set_proxy(now, home, false);
            }
            keep
        });
        for ev in &events {
            if let HaEvent::Registered { home, .. } = ev {
                if sh.ha.proxy_nd(t, *home) && proxied.insert(*home) {
                    iface.set_proxy(now, *home, true);
                }
            }
        }
        let Shared { ha, pkt, out, .. } = &mut *sh;
        while iface.take_intercepted_into(pkt) {
            if pkt.get(6) == Some(&41) {
                match ha.reverse_tunnel(t, pkt) {
                    Some(inner) => {
                        iface.send_ipv6_packet(now, inner);
                        stats.reverse_forwarded += 1;
                    }
                    None => stats.dropped += 1,
                }
            } else {
                match ha.tunnel_into(t, pkt, out) {
                    Some(_) => {
                        iface.send_ipv6_packet(now, out);
                        stats.tunnelled += 1;
                    }
                    None => stats.dropped += 1,
                }
            }
        }
        sh.log.extend(events);
    }
}
