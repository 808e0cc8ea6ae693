//! `export-anchor`: the provisioning bundle a peripheral is flashed with.
//!
//! The format is `vouch_proto::anchor::AnchorBundle` (defined once, in the
//! protocol crate, and read by `vouch-peripheral provision`):
//!
//! ```json
//! { "format": "vouch-anchor-bundle/2", "protocol_version": 1, "suite": 1,
//!   "serial": 1,
//!   "anchor": { "kid": 2, "signing": "<64 hex: Ed25519>", "sealing": "<64 hex: X25519>" },
//!   "next": "<64 hex: the commitment to key 3>" }
//! ```
//!
//! The anchor and commitment are those of a peripheral that applied every
//! anchor update the backend issued (SPEC.md §7.7): the current key and the
//! commitment to the next. `serial` is the serial of the last update, so a
//! newly flashed device starts current: every update a gateway delivers to it
//! later is either stale (skipped without a signature verification) or new.
//! Before any rotation: key id 1, the commitment to key 2, serial 0.

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
        let k: [BackendKeys; 3] = core::array::from_fn(|i| {
            BackendKeys::generate(
                KeyId(i as u8 + 1),
                &mut vouch_proto::testing::rng(3 + i as u64),
            )
        });
        let mut fleet = AnchorSet::new(k[0].anchor(), k[1].anchor().digest(), 0);
        let set = bundle(&fleet).to_anchor_set().unwrap();
        assert_eq!(set, fleet);
        fleet
            .apply(&AnchorUpdate::sign(
                1,
                AnchorAction::Rotate {
                    anchor: k[1].anchor(),
                    next: k[2].anchor().digest(),
                },
                KeyId(2),
                k[1].signing(),
            ))
            .unwrap();
        let set = bundle(&fleet).to_anchor_set().unwrap();
        assert_eq!(set, fleet);
        assert_eq!(set.primary(), &k[1].anchor());
        assert_eq!(set.serial(), 1);
    }
}
