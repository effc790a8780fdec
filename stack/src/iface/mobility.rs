//! Mobile IPv6 (RFC 6275) in the data path: the Home Address option and type 2 routing header
//! on input, route optimisation on output, Mobility Header dispatch, proxying and interception.

use super::*;

/// The mobility view of a received packet: addresses as on the wire and the home address
/// carried by a Home Address option or a type 2 routing header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mobility {
    pub(super) src: Ipv6Addr,
    pub(super) dst: Ipv6Addr,
    pub(super) hao: Option<Ipv6Addr>,
    pub(super) rh2: Option<Ipv6Addr>,
}

/// Intercepted packets held for the application at most.
pub(super) const MAX_INTERCEPTED: usize = 4096;

/// What output route optimisation did to a frame.
pub(super) enum MobilityOut {
    Unchanged,
    /// Headers added; the frame now goes to this address.
    Rewritten(Ipv6Addr),
    /// With the added headers it would exceed the link MTU.
    TooBig {
        peer: Ipv6Addr,
        mtu: usize,
    },
}

/// RFC 6275 §6.4: a type 2 routing header is 24 octets; so is our Home Address option header.
pub(super) const MOBILITY_EXT_LEN: usize = 24;

impl Interface {
    /// Install the Mobile IPv6 hook.
    pub fn set_mobility_hook(&mut self, hook: Box<dyn MobilityHook>) {
        self.hook = Some(hook);
    }

    /// Proxy an address on the link (a home agent for a registered home address, RFC 6275
    /// §10.4.1): answer Neighbour Solicitations for it and hand packets for it to the
    /// application ([`Interface::take_intercepted`]) instead of delivering them. Turning it
    /// on announces the address (unsolicited NA with override) so neighbours switch to us.
    pub fn set_proxy(&mut self, now: Instant, a: Ipv6Addr, on: bool) {
        if on {
            if !self.proxied.contains(&a) {
                self.proxied.push(a);
                self.announce_one(now, a);
            }
        } else {
            self.proxied.retain(|x| *x != a);
        }
    }

    /// The next intercepted IPv6 packet: one for a proxied address, or an IPv6-in-IPv6 packet
    /// addressed to us whose inner packet is for someone else (a reverse tunnel).
    pub fn take_intercepted(&mut self) -> Option<Vec<u8>> {
        self.intercepted.pop_front()
    }

    pub(super) fn intercept(&mut self, pkt: &[u8]) {
        if self.intercepted.len() >= MAX_INTERCEPTED {
            self.stats.intercept_drops += 1;
            return;
        }
        self.stats.intercepted += 1;
        self.intercepted.push_back(pkt.to_vec());
    }

    /// Serve a home address away from home (the mobile-node role, RFC 6275 §11): connections
    /// may use it as their local address and packets for it are accepted (normally via a type
    /// 2 routing header), but it is not claimed on the link with Neighbour Advertisements.
    pub fn add_home_addr(&mut self, a: Ipv6Addr) {
        if !self.home_addrs.contains(&a) {
            self.home_addrs.push(a);
        }
    }

    /// Stop serving a home address.
    pub fn remove_home_addr(&mut self, a: Ipv6Addr) {
        self.home_addrs.retain(|x| *x != a);
    }

    pub(super) fn accept_hao(&mut self, now: Instant, mob: &Mobility, home: Ipv6Addr) -> bool {
        let t = now;
        if let Some(cn) = self.cn.as_mut() {
            match cn.check_hao(t, mob.dst, mob.src, home, false) {
                HaoCheck::Accept => return true,
                HaoCheck::Reject(be) => {
                    // Perhaps a binding of the node's own mobile role (hook) covers it.
                    if let Some(h) = self.hook.as_mut() {
                        if h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept {
                            return true;
                        }
                    }
                    if let Some(be) = be {
                        self.send_ipv6_packet(now, &be.packet);
                    }
                    return false;
                }
            }
        }
        self.hook
            .as_mut()
            .is_some_and(|h| h.on_home_address_option(now, mob.src, home) == HaoVerdict::Accept)
    }

    /// RFC 6275 §9.2: a Mobility Header for us. The correspondent role answers what is its
    /// (HoTI, CoTI, BU); the rest (HoT, CoT, BA, BE, BRR) goes to the node's mobile role.
    pub(super) fn receive_mobility_header(
        &mut self,
        now: Instant,
        mh: &[u8],
        mob: &Mobility,
        whole: &[u8],
    ) {
        let meta = MhMeta {
            src: mob.src,
            dst: mob.dst,
            hao: mob.hao,
            rh2: mob.rh2,
        };
        let mut handled = false;
        if let Some(cn) = self.cn.as_mut() {
            let out = cn.on_mobility_header(now, meta, mh);
            handled = !matches!(out.event, CnEvent::Ignored);
            tracing::debug!(event = ?out.event, "mobility header (correspondent)");
            if let CnEvent::BindingUpdated { home, .. } = &out.event {
                // Packets to it now carry a routing header: make room for it.
                let cur = self.pmtu.get(home).map(|p| p.0).unwrap_or(self.cfg.mtu);
                let home = *home;
                self.set_path_mtu(now, home, cur.min(self.cfg.mtu - MOBILITY_EXT_LEN));
            }
            for t in out.transmit {
                self.send_ipv6_packet(now, &t.packet);
            }
        }
        if !handled {
            match self.hook.as_mut() {
                Some(h) => {
                    for r in h.on_mobility_header(now, meta, mh) {
                        self.send_ipv6_packet(now, &r);
                    }
                }
                None if self.cn.is_none() => {
                    // RFC 6275 §6.1.1 / RFC 8200: Mobility Header not implemented here.
                    self.stats.rx_bad_exthdr += 1;
                    self.param_problem(now, whole, 1, 6);
                    return;
                }
                None => {}
            }
        }
        self.stats.mobility_rx += 1;
    }

    /// Route optimisation on output (RFC 6275 §9.3.2 and §11.3.1): a packet to a home address
    /// bound at our correspondent goes to the care-of address with a type 2 routing header; a
    /// packet from a home address our mobile role serves away from home goes out from the
    /// care-of address with a Home Address option. Upper-layer checksums keep the home
    /// addresses (RFC 8200 §8.1, RFC 6275 §6.3), so only headers change. Returns the new
    /// IPv6 destination when it changed.
    pub(super) fn mobility_out(&mut self, now: Instant, buf: &mut Vec<u8>) -> MobilityOut {
        self.mobility_rewrite(now, buf)
            .unwrap_or(MobilityOut::Unchanged)
    }

    pub(super) fn mobility_rewrite(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
    ) -> Option<MobilityOut> {
        if buf.len() < ETH_HDR + IP6_HDR {
            return None;
        }
        let ip = &buf[ETH_HDR..];
        let nh = ip[6];
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
        if dst.is_multicast() || dst.segments()[0] & 0xffc0 == 0xfe80 {
            return None;
        }
        let upper = &ip[IP6_HDR..];
        // Only upper-layer packets we built (no Mobility Header, §6.1; no Neighbour Discovery).
        let flow = match nh {
            6 | 17 if upper.len() >= 4 => Some(FlowKey {
                next_header: nh,
                local_port: u16::from_be_bytes([upper[0], upper[1]]),
                remote_port: u16::from_be_bytes([upper[2], upper[3]]),
            }),
            58 if upper.first().is_some_and(|t| !(133..=137).contains(t)) => None,
            _ => return None,
        };
        let t = now;
        let care_of = self
            .cn
            .as_mut()
            .and_then(|cn| cn.route_out(t, dst, flow))
            .map(|r| r.care_of);
        let from = self
            .hook
            .as_mut()
            .and_then(|h| h.outgoing_from_home(now, src, dst));
        if care_of.is_none() && from.is_none() {
            return None;
        }
        let mut ext = Vec::with_capacity(2 * MOBILITY_EXT_LEN);
        let mut first_nh = nh;
        if let Some(coa) = from {
            // RFC 6275 §6.3: Destination Options header with PadN then the Home Address option
            // (alignment 8n+6).
            let mut d = vec![first_nh, 2, 1, 2, 0, 0, 201, 16];
            d.extend_from_slice(&src.octets());
            first_nh = 60;
            ext = d;
            buf[ETH_HDR + 8..ETH_HDR + 24].copy_from_slice(&coa.octets());
        }
        if let Some(coa) = care_of {
            // RFC 6275 §6.4: type 2 routing header, one segment left, carrying the home address;
            // it precedes the destination options (RFC 8200 §4.1 order).
            let mut r = vec![first_nh, 2, 2, 1, 0, 0, 0, 0];
            r.extend_from_slice(&dst.octets());
            r.extend_from_slice(&ext);
            ext = r;
            first_nh = 43;
            buf[ETH_HDR + 24..ETH_HDR + 40].copy_from_slice(&coa.octets());
        }
        if buf.len() - ETH_HDR + ext.len() > self.cfg.mtu {
            // The connection's peer is the IPv6 destination as built (home address or
            // correspondent): that is the path MTU entry TCP looks up.
            return Some(MobilityOut::TooBig {
                peer: dst,
                mtu: self.cfg.mtu - ext.len(),
            });
        }
        let plen = u16::from_be_bytes([buf[ETH_HDR + 4], buf[ETH_HDR + 5]]) as usize + ext.len();
        buf[ETH_HDR + 4..ETH_HDR + 6].copy_from_slice(&(plen.min(65535) as u16).to_be_bytes());
        buf[ETH_HDR + 6] = first_nh;
        let at = ETH_HDR + IP6_HDR;
        buf.splice(at..at, ext);
        Some(MobilityOut::Rewritten(care_of.unwrap_or(dst)))
    }

    /// The correspondent node's binding cache entry for a home address (diagnostics, tests).
    pub fn correspondent(&self) -> Option<&Correspondent> {
        self.cn.as_ref()
    }
}
