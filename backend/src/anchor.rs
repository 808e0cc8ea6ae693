//! `export-anchor`: the provisioning bundle a peripheral is flashed with.
//!
//! The format is `vouch_proto::anchor::AnchorBundle` (defined once, in the
//! protocol crate, and read by `vouch-peripheral provision`):
//!
//! ```json
//! { "format": "vouch-anchor-bundle/1", "protocol_version": 1, "suite": 1,
//!   "serial": 0,
//!   "anchors": [ { "kid": 1, "signing": "<64 hex: Ed25519>", "sealing": "<64 hex: X25519>" } ] }
//! ```
//!
//! The anchors are listed oldest first; the last is the primary, as in
//! `AnchorSet`. `serial` is the last anchor-update serial the device starts
//! from.

pub use vouch_proto::anchor::AnchorBundle;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::backend::BackendKeys;

/// The bundle for the backend's keys.
pub fn bundle(keys: &BackendKeys) -> AnchorBundle {
    AnchorBundle::from_anchor_set(&AnchorSet::new(keys.anchor()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::keys::KeyId;

    #[test]
    fn the_bundle_installs_as_the_backend_anchor() {
        let keys = BackendKeys::generate(KeyId(1), &mut vouch_proto::testing::rng(3));
        let set = bundle(&keys).to_anchor_set().unwrap();
        assert_eq!(set.primary(), Some(&keys.anchor()));
    }
}
