//! Message builders the Mobile IPv6 tests share.
#![allow(dead_code)]

use ds_mipv6::wire::{mh_checksum, BindingUpdate, MhMessage};
use ds_mipv6::MhMeta;

/// A Binding Update that asks for an acknowledgement, with neither L nor K and no other flags.
pub fn binding_update(sequence: u16, home_registration: bool, lifetime: u16) -> MhMessage {
    MhMessage::BindingUpdate(BindingUpdate::acked(sequence, home_registration, lifetime))
}

/// The Mobility Header of `packet`, changed by `tamper` and checksummed again (so only its
/// authenticator can tell), with the packet's addresses.
pub fn tampered(packet: &[u8], tamper: impl FnOnce(&mut [u8])) -> (MhMeta, Vec<u8>) {
    let (meta, mh) = MhMeta::from_packet(packet).expect("a mobility header");
    let mut mh = mh.to_vec();
    tamper(&mut mh);
    mh[4..6].fill(0);
    let c = mh_checksum(meta.effective_src(), meta.effective_dst(), &mh);
    mh[4..6].copy_from_slice(&c.to_be_bytes());
    (meta, mh)
}
