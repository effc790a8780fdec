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
    /// The application decides from the first request bytes (content-aware distribution,
    /// the seed's "client-specific processing").
    Callback(PlaceFn),
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Local => "Local",
            Policy::RoundRobin => "RoundRobin",
            Policy::Callback(_) => "Callback(..)",
        })
    }
}

/// A policy with its position (round robin).
#[derive(Debug)]
pub(crate) struct Chooser {
    policy: Policy,
    next: usize,
}

impl Chooser {
    pub(crate) fn new(policy: Policy) -> Self {
        Chooser { policy, next: 0 }
    }

    /// The placement of a client whose request begins with `first`, among this node and
    /// `peers`.
    pub(crate) fn place(&mut self, first: &[u8], peers: &[SocketAddr]) -> Placement {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_over_this_node_and_the_peers() {
        let p: SocketAddr = "[fd00::2]:7000".parse().unwrap();
        let q: SocketAddr = "[fd00::3]:7000".parse().unwrap();
        let mut c = Chooser::new(Policy::RoundRobin);
        let got: Vec<_> = (0..6).map(|_| c.place(b"", &[p, q])).collect();
        use Placement::*;
        assert_eq!(got, [Here, Node(p), Node(q), Here, Node(p), Node(q)]);
        let mut alone = Chooser::new(Policy::RoundRobin);
        assert_eq!(alone.place(b"", &[]), Here);
        assert_eq!(alone.place(b"", &[]), Here);
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
            c.place(b"GET /video/1 HTTP/1.1\r\n", &[p]),
            Placement::Node(p)
        );
        assert_eq!(
            c.place(b"GET /index.html HTTP/1.1\r\n", &[p]),
            Placement::Here
        );
        assert_eq!(
            Chooser::new(Policy::Local).place(b"x", &[p]),
            Placement::Here
        );
    }
}
