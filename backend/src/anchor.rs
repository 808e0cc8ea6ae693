//! `export-anchor`: the provisioning bundle a peripheral is flashed with.
//!
//! The format is `vouch_proto::anchor::AnchorBundle` (defined once, in the
//! protocol crate, and read by `vouch-peripheral provision`):
//!
//! ```json
//! { "format": "vouch-anchor-bundle/1", "protocol_version": 1, "suite": 1,
//!   "serial": 2,
//!   "anchors": [ { "kid": 2, "signing": "<64 hex: Ed25519>", "sealing": "<64 hex: X25519>" } ] }
//! ```
//!
//! The anchors are those of a peripheral that applied every anchor update the
//! backend issued (SPEC.md §7.7), listed oldest first; the last is the
//! primary, the current key, as in `AnchorSet`. `serial` is the serial of the
//! last update, so a newly flashed device starts current: every update a
//! gateway delivers to it later is either stale (skipped without a signature
//! verification) or new. Before any rotation: key id 1 alone, serial 0.

pub use vouch_proto::anchor::AnchorBundle;
use vouch_proto::anchor::AnchorSet;

/// The bundle for the anchor set a fully updated peripheral holds
/// ([`crate::keyring::RingStatus::fleet`]).
pub fn bundle(fleet: &AnchorSet) -> AnchorBundle {
    AnchorBundle::from_anchor_set(fleet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::anchor::{AnchorAction, AnchorUpdate};
    use vouch_proto::handshake::backend::BackendKeys;
    use vouch_proto::keys::KeyId;

    #[test]
    fn the_bundle_installs_as_the_fleet_anchors() {
        let k1 = BackendKeys::generate(KeyId(1), &mut vouch_proto::testing::rng(3));
        let k2 = BackendKeys::generate(KeyId(2), &mut vouch_proto::testing::rng(4));
        let mut fleet = AnchorSet::new(k1.anchor());
        let set = bundle(&fleet).to_anchor_set().unwrap();
        assert_eq!(set.primary(), Some(&k1.anchor()));
        fleet
            .apply(&AnchorUpdate::sign(
                1,
                AnchorAction::Add(k2.anchor()),
                KeyId(1),
                k1.signing(),
            ))
            .unwrap();
        let set = bundle(&fleet).to_anchor_set().unwrap();
        assert_eq!(set, fleet);
        assert_eq!(set.primary(), Some(&k2.anchor()));
        assert_eq!(set.serial(), 1);
    }
}
