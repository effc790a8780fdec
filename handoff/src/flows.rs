//! The home agent's judgement of flow moves (transparent mode): the commit point of a
//! handoff.
//!
//! Donor and acceptor talk over a channel that can fail at any moment, so neither can know
//! for certain what the other did last (an Accept lost with the channel left the connection
//! live at both: the acceptor activated it, the donor resumed it). The home agent decides
//! instead: the flow goes where its table says, and of the two requests one handoff makes for
//! it — the acceptor's [`Message::MoveFlow`], and the reclaim of a donor that gave up before
//! it saw the Accept — the first one the home agent reads wins and the other is refused with
//! `taken`. The acceptor activates only after its move won, the donor resumes only after its
//! reclaim won (or drops its frozen copy when it lost): the connection lives at one node.
//!
//! Requests of one flow are ordered by the handoff's flow generation
//! ([`crate::msg::Offer::generation`]): a request of an older handoff than the last applied is
//! stale. A move says how long it may wait at the home agent (`valid_us`): its acceptor stops
//! waiting for the answer later than that, and a move applied after would steer the client
//! to a node that dropped the connection. A forced reclaim (a donor that got no answer, or
//! whose acceptor commits ahead of its move's answer) outranks both requests of its
//! generation, whatever their order, as every reclaim did before protocol version 7.
//!
//! Pure: the caller keeps the last [`Applied`] per flow, measures how long a request waited
//! (from the channel's receive stamp) and updates its table when told to.
//!
//! ```
//! use ds_handoff::flows::{judge, Applied, Request, Verdict};
//! let acceptor = "fd00::2".parse().unwrap();
//! let donor = "fd00::1".parse().unwrap();
//! let mv = Request { generation: 7, reclaim: false, force: false, to: acceptor, valid_us: None };
//! let back = Request { generation: 7, reclaim: true, force: false, to: donor, valid_us: None };
//! // The move first: it wins, and the donor's reclaim finds the flow taken.
//! assert_eq!(judge(None, &mv, None), Verdict::Apply);
//! let last = Applied::of(&mv);
//! assert_eq!(judge(Some(last), &back, None), Verdict::Taken);
//! ```

use crate::msg::Message;
use std::net::Ipv6Addr;
use std::time::Duration;

/// Which side asks, and how (ordered: within a generation a forced reclaim outranks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The acceptor's move.
    Move,
    /// The donor's reclaim: wins only if first.
    Reclaim,
    /// The donor's forced reclaim: wins over the others of its generation.
    ForcedReclaim,
}

/// A flow-move request as the home agent judges it (the fields of [`Message::MoveFlow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The handoff's flow generation.
    pub generation: u64,
    /// A donor's reclaim.
    pub reclaim: bool,
    /// A forced reclaim.
    pub force: bool,
    /// Where the flow is to go.
    pub to: Ipv6Addr,
    /// A move's validity after its arrival, in microseconds.
    pub valid_us: Option<u64>,
}

impl Request {
    /// The request a [`Message::MoveFlow`] makes (`None` for any other message).
    pub fn of(m: &Message) -> Option<Request> {
        match *m {
            Message::MoveFlow {
                to,
                generation,
                reclaim,
                force,
                valid_us,
                ..
            } => Some(Request {
                generation,
                reclaim,
                force,
                to,
                valid_us,
            }),
            _ => None,
        }
    }

    /// Which side asks, and how.
    pub fn kind(&self) -> Kind {
        match (self.reclaim, self.force) {
            (false, _) => Kind::Move,
            (true, false) => Kind::Reclaim,
            (true, true) => Kind::ForcedReclaim,
        }
    }
}

/// The last request applied to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Its generation.
    pub generation: u64,
    /// Its kind.
    pub kind: Kind,
    /// Where it sent the flow.
    pub to: Ipv6Addr,
}

impl Applied {
    /// What is recorded once `r` was applied.
    pub fn of(r: &Request) -> Applied {
        Applied {
            generation: r.generation,
            kind: r.kind(),
            to: r.to,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Point the flow at `to` (and record it).
    Apply,
    /// Refused: the other side of the same handoff won (or a forced reclaim of it came).
    Taken,
    /// Refused: a newer handoff's request was applied.
    Stale,
    /// Refused: a move read later than it was valid (its acceptor gave up on it).
    Expired,
}

/// Judge `req` given the flow's `last` applied request and how long `req` waited at the
/// home agent (`None`: not known, no limit applies).
pub fn judge(last: Option<Applied>, req: &Request, waited: Option<Duration>) -> Verdict {
    let kind = req.kind();
    if kind == Kind::Move {
        if let (Some(valid), Some(waited)) = (req.valid_us, waited) {
            if waited > Duration::from_micros(valid) {
                return Verdict::Expired;
            }
        }
    }
    let Some(last) = last else {
        return Verdict::Apply;
    };
    if last == Applied::of(req) {
        // The same request again (a resend after a lost answer): the same answer.
        return Verdict::Apply;
    }
    match last.generation.cmp(&req.generation) {
        std::cmp::Ordering::Less => Verdict::Apply,
        std::cmp::Ordering::Greater => Verdict::Stale,
        std::cmp::Ordering::Equal if kind == Kind::ForcedReclaim && last.kind < kind => {
            Verdict::Apply
        }
        std::cmp::Ordering::Equal => Verdict::Taken,
    }
}

/// The answer to the request `conn_id` judged `v` (`Apply` answered once it was applied).
pub fn answer(conn_id: u64, v: Verdict, last: Option<Applied>) -> Message {
    let last_gen = last.map_or(0, |l| l.generation);
    let (ok, taken, detail) = match v {
        Verdict::Apply => (true, false, String::new()),
        Verdict::Taken => (
            false,
            true,
            format!("taken: the flow's generation {last_gen} went elsewhere first"),
        ),
        Verdict::Stale => (
            false,
            true,
            format!("stale: the flow has the newer generation {last_gen}"),
        ),
        Verdict::Expired => (false, false, "expired: read after its validity".to_string()),
    };
    Message::FlowMoved {
        conn_id,
        ok,
        taken,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(generation: u64, kind: Kind, to: &str) -> Request {
        Request {
            generation,
            reclaim: kind != Kind::Move,
            force: kind == Kind::ForcedReclaim,
            to: to.parse().unwrap(),
            valid_us: (kind == Kind::Move).then_some(1000),
        }
    }

    #[test]
    fn the_first_of_a_generation_wins_and_a_forced_reclaim_outranks() {
        let mv = req(5, Kind::Move, "fd00::2");
        let back = req(5, Kind::Reclaim, "fd00::1");
        let forced = req(5, Kind::ForcedReclaim, "fd00::1");
        // Either order: the first wins.
        assert_eq!(judge(None, &mv, None), Verdict::Apply);
        assert_eq!(judge(Some(Applied::of(&mv)), &back, None), Verdict::Taken);
        assert_eq!(judge(Some(Applied::of(&back)), &mv, None), Verdict::Taken);
        // A repeat is answered as the first time.
        assert_eq!(judge(Some(Applied::of(&mv)), &mv, None), Verdict::Apply);
        // A forced reclaim outranks the move (and the reclaim), not itself repeated.
        assert_eq!(judge(Some(Applied::of(&mv)), &forced, None), Verdict::Apply);
        assert_eq!(
            judge(Some(Applied::of(&back)), &forced, None),
            Verdict::Apply
        );
        assert_eq!(judge(Some(Applied::of(&forced)), &mv, None), Verdict::Taken);
        assert_eq!(
            judge(Some(Applied::of(&forced)), &forced, None),
            Verdict::Apply
        );
        // Older generations are stale, newer ones apply.
        let next = req(6, Kind::Move, "fd00::3");
        assert_eq!(
            judge(Some(Applied::of(&next)), &forced, None),
            Verdict::Stale
        );
        assert_eq!(
            judge(Some(Applied::of(&forced)), &next, None),
            Verdict::Apply
        );
    }

    #[test]
    fn a_move_read_after_its_validity_is_refused() {
        let mv = req(5, Kind::Move, "fd00::2");
        let ms = Duration::from_millis;
        assert_eq!(judge(None, &mv, Some(ms(1))), Verdict::Apply);
        assert_eq!(judge(None, &mv, Some(ms(2))), Verdict::Expired);
        assert_eq!(judge(None, &mv, None), Verdict::Apply, "no stamp, no limit");
        // Reclaims have no validity.
        let back = req(5, Kind::Reclaim, "fd00::1");
        assert_eq!(judge(None, &back, Some(ms(60_000))), Verdict::Apply);
        match answer(3, Verdict::Expired, None) {
            Message::FlowMoved { ok, taken, .. } => assert!(!ok && !taken),
            m => panic!("{m:?}"),
        }
    }
}
