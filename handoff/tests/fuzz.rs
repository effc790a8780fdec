//! Foreign input never panics: random bytes into the codec and the message decoder, random
//! bit flips on valid frames always fail authentication.

use ds_handoff::channel::{ClusterSecret, Codec, Handshake, Role};
use ds_handoff::msg::{Message, Offer};
use proptest::prelude::*;

fn pair() -> (Codec, Codec) {
    let s = ClusterSecret::new(b"fuzzing cluster secret").unwrap();
    let (i, hi) = Handshake::new(Role::Initiator, &s).unwrap();
    let (r, hr) = Handshake::new(Role::Responder, &s).unwrap();
    (i.finish(&hr).unwrap(), r.finish(&hi).unwrap())
}

proptest! {
    #[test]
    fn random_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, mut r) = pair();
        r.feed(&bytes);
        // Either waits for more, or fails; never a plaintext, never a panic.
        prop_assert!(!matches!(r.poll_frame(), Ok(Some(_))));
    }

    #[test]
    fn random_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
        let mut v = vec![1u8];
        v.extend_from_slice(&bytes);
        let _ = Message::decode(&v);
    }

    #[test]
    fn any_bit_flip_is_detected(state in proptest::collection::vec(any::<u8>(), 0..300),
                                bit in any::<prop::sample::Index>()) {
        let (mut i, mut r) = pair();
        let m = Message::Offer(Offer { conn_id: 1, state, ticket: None, service: "http".into(), app: None, fence: None, generation: 1, commit_within_us: None });
        let mut f = i.seal_msg(&m).unwrap();
        let b = bit.index(f.len() * 8);
        f[b / 8] ^= 1 << (b % 8);
        r.feed(&f);
        prop_assert!(!matches!(r.poll_msg(), Ok(Some(_))));
    }

    #[test]
    fn honest_frames_round_trip(state in proptest::collection::vec(any::<u8>(), 0..3000),
                                cut in any::<prop::sample::Index>()) {
        let (mut i, mut r) = pair();
        let m = Message::Offer(Offer { conn_id: 9, state, ticket: None, service: "s".into(), app: None, fence: Some(ds_handoff::Fence { view: 3, by: 9 }), generation: 7, commit_within_us: Some(5) });
        let f = i.seal_msg(&m).unwrap();
        let c = cut.index(f.len());
        r.feed(&f[..c]);
        prop_assert!(matches!(r.poll_msg(), Ok(None)));
        r.feed(&f[c..]);
        prop_assert_eq!(r.poll_msg().unwrap(), Some(m));
    }
}
