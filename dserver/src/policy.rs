//! Distribution policies: which node serves a client (the seed's Gecko policies).

use std::net::SocketAddr;

/// Where a client is to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On this node.
    Here,
    /// On the node whose control channel listens at this address.
    Node(SocketAddr),
}

/// The application's placement function: from a request's first bytes to its node.
pub type PlaceFn = Box<dyn FnMut(&[u8]) -> Placement + Send>;

/// How [`crate::Node::place`] chooses the node that serves a client, from the first bytes of
/// its request.
pub enum Policy {
    /// Every client stays on the node it reached (the contact node).
    Local,
    /// This node, then each peer in turn.
    RoundRobin,
    /// The node serving the fewest connections: this node's own count and the loads the
    /// peers reported ([`crate::Node::set_peer_loads`], e.g. from the membership), each
    /// raised by the clients placed on it since its last report; ties go round robin.
    LeastConnections,
    /// The application decides from the first request bytes (content-aware distribution,
    /// the seed's "client-specific processing").
    Callback(PlaceFn),
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Local => "Local",
            Policy::RoundRobin => "RoundRobin",
            Policy::LeastConnections => "LeastConnections",
            Policy::Callback(_) => "Callback(..)",
        })
    }
}

/// A policy with its position (round robin).
#[derive(Debug)]
pub(crate) struct Chooser {
    policy: Policy,
    next: usize,
    /// Reported loads (load, report stamp), and the clients placed on each peer since.
    loads: std::collections::BTreeMap<SocketAddr, (u32, u64, u32)>,
}

impl Chooser {
    pub(crate) fn new(policy: Policy) -> Self {
        Chooser {
            policy,
            next: 0,
            loads: std::collections::BTreeMap::new(),
        }
    }

    /// Load reports `(peer, load, stamp)`; a report with a new stamp replaces the clients
    /// counted as placed on that peer since the previous one (peers not named keep theirs).
    pub(crate) fn set_loads(&mut self, loads: &[(SocketAddr, u32, u64)]) {
        for (a, l, stamp) in loads {
            let e = self.loads.entry(*a).or_insert((0, u64::MAX, 0));
            if e.1 != *stamp {
                *e = (*l, *stamp, 0);
            }
        }
    }

    /// The placement of a client whose request begins with `first`, among this node (serving
    /// `here` connections) and `peers`.
    pub(crate) fn place(&mut self, first: &[u8], peers: &[SocketAddr], here: usize) -> Placement {
        if let Policy::LeastConnections = self.policy {
            let n = peers.len() + 1;
            let load =
                |i: usize, loads: &std::collections::BTreeMap<SocketAddr, (u32, u64, u32)>| {
                    if i == 0 {
                        here as u64
                    } else {
                        loads
                            .get(&peers[i - 1])
                            .map_or(0, |(l, _, p)| u64::from(*l) + u64::from(*p))
                    }
                };
            // Scan from the round-robin position so ties rotate.
            let start = self.next % n;
            let best = (0..n)
                .map(|k| (start + k) % n)
                .min_by_key(|&i| load(i, &self.loads))
                .unwrap_or(0);
            self.next = (best + 1) % n;
            return match best {
                0 => Placement::Here,
                i => {
                    let e = self.loads.entry(peers[i - 1]).or_insert((0, u64::MAX, 0));
                    e.2 = e.2.saturating_add(1);
                    Placement::Node(peers[i - 1])
                }
            };
        }
        match &mut self.policy {
            Policy::Local => Placement::Here,
            Policy::RoundRobin => {
                let n = peers.len() + 1;
                let i = self.next % n;
                self.next = (i + 1) % n;
                match i {
                    0 => Placement::Here,
                    i => Placement::Node(peers[i - 1]),
                }
            }
            Policy::Callback(f) => f(first),
            Policy::LeastConnections => Placement::Here,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_connections_goes_to_the_least_loaded_and_counts_its_placements() {
        let a: SocketAddr = "[fd00::1]:7000".parse().unwrap();
        let b: SocketAddr = "[fd00::2]:7000".parse().unwrap();
        let mut c = Chooser::new(Policy::LeastConnections);
        c.set_loads(&[(a, 5, 1), (b, 2, 1)]);
        // This node serves 4: b (2) takes two clients, then b and this node tie at 4.
        assert_eq!(c.place(b"", &[a, b], 4), Placement::Node(b));
        assert_eq!(c.place(b"", &[a, b], 4), Placement::Node(b));
        assert_eq!(c.place(b"", &[a, b], 4), Placement::Here);
        // This node now serves 9: b (4 with its placements), then a (5) and b tie.
        assert_eq!(c.place(b"", &[a, b], 9), Placement::Node(b));
        assert_eq!(c.place(b"", &[a, b], 9), Placement::Node(a));
        // The same report again changes nothing; a new one from b replaces what was placed
        // on it.
        // (b: 2 reported + 3 placed = 5, a: 5 + 1 = 6.)
        c.set_loads(&[(b, 2, 1)]);
        assert_eq!(c.place(b"", &[a, b], 9), Placement::Node(b));
        // (b: 6, a: 6; a new report says b serves none.)
        c.set_loads(&[(b, 0, 2)]);
        assert_eq!(c.place(b"", &[a, b], 9), Placement::Node(b));
    }

    #[test]
    fn round_robin_cycles_over_this_node_and_the_peers() {
        let p: SocketAddr = "[fd00::2]:7000".parse().unwrap();
        let q: SocketAddr = "[fd00::3]:7000".parse().unwrap();
        let mut c = Chooser::new(Policy::RoundRobin);
        let got: Vec<_> = (0..6).map(|_| c.place(b"", &[p, q], 0)).collect();
        use Placement::*;
        assert_eq!(got, [Here, Node(p), Node(q), Here, Node(p), Node(q)]);
        let mut alone = Chooser::new(Policy::RoundRobin);
        assert_eq!(alone.place(b"", &[], 0), Here);
        assert_eq!(alone.place(b"", &[], 0), Here);
    }

    #[test]
    fn callback_sees_the_first_bytes() {
        let p: SocketAddr = "[fd00::2]:7000".parse().unwrap();
        let mut c = Chooser::new(Policy::Callback(Box::new(move |first| {
            if first.starts_with(b"GET /video") {
                Placement::Node(p)
            } else {
                Placement::Here
            }
        })));
        assert_eq!(
            c.place(b"GET /video/1 HTTP/1.1\r\n", &[p], 0),
            Placement::Node(p)
        );
        assert_eq!(
            c.place(b"GET /index.html HTTP/1.1\r\n", &[p], 0),
            Placement::Here
        );
        assert_eq!(
            Chooser::new(Policy::Local).place(b"x", &[p], 0),
            Placement::Here
        );
    }
}
