//! Trust anchors and their rotation (SPEC.md §2.3, §7.7).
//!
//! A peripheral trusts exactly one backend key, its **anchor**, and holds a
//! **commitment** to the key that will succeed it: the digest of the next
//! anchor's public keys ([`Anchor::digest`]), fixed when the current anchor
//! was made, while the next private key is kept offline. An [`AnchorSet`] is
//! that pair plus the serial of the last update applied.
//!
//! A rotation is one [`AnchorUpdate`], [`AnchorAction::Rotate`]: it reveals
//! the committed anchor, carries the commitment to the one after it, and is
//! signed by the *new* key. So whoever holds only the current key (for
//! example after stealing it) can neither choose the successor nor sign any
//! update the peripheral accepts, and once the peripheral rotated, the old key
//! can no longer vouch for it: a vouch is accepted only under the anchor the
//! Hello was sealed to, which is always the one anchor held.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, PeerMisbehaved};
use crate::keys::{DhPublic, KeyId, PublicKey, Signature};
use crate::label;

/// One backend key pair as a peripheral knows it (SPEC.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Anchor {
    /// The key id hellos name and vouches carry.
    pub kid: KeyId,
    /// Verifies vouches and anchor updates.
    pub signing: PublicKey,
    /// The X25519 key hellos are sealed to.
    pub sealing: DhPublic,
}

impl Anchor {
    /// The commitment to this anchor (SPEC.md §2.3):
    /// `SHA-256("vouch/1 anchor commitment" ‖ kid ‖ signing ‖ sealing)`.
    /// The anchor before it carries this value, so a rotation can only move
    /// a peripheral to this exact key pair.
    pub fn digest(&self) -> AnchorDigest {
        let mut h = Sha256::new();
        h.update(label::ANCHOR_COMMITMENT);
        h.update([self.kid.0]);
        h.update(self.signing.as_bytes());
        h.update(self.sealing.as_bytes());
        AnchorDigest(h.finalize().into())
    }
}

/// The digest of an anchor's public keys ([`Anchor::digest`]): the
/// commitment to the next anchor. Public; 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AnchorDigest(pub [u8; 32]);

/// A change to a peripheral's anchor (SPEC.md §7.7).
///
/// APPEND ONLY: the variant order is wire format. The first three variants
/// are the actions of the first rotation design, which let any held key sign
/// any change; they are kept so their discriminants are never reused, and a
/// peripheral refuses every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnchorAction {
    /// Reserved (discriminant 0); always refused.
    Add(Anchor),
    /// Reserved (discriminant 1); always refused. Re-homing to another
    /// backend is a [`Rotate`](Self::Rotate) to a key that backend holds.
    Replace(Anchor),
    /// Reserved (discriminant 2); always refused: a rotation retires the
    /// previous anchor by itself.
    Retire(KeyId),
    /// Trust `anchor` instead of the current anchor. Accepted only if
    /// `anchor`'s digest is the commitment the peripheral holds and the new
    /// key signed the update; `next` becomes the commitment to the anchor
    /// after it.
    Rotate {
        /// The committed successor, now the peripheral's anchor.
        anchor: Anchor,
        /// The commitment to the anchor after it.
        next: AnchorDigest,
    },
}

/// A signed [`AnchorAction`] (SPEC.md §7.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorUpdate {
    /// Increasing per fleet; the peripheral refuses any serial not above the
    /// last it applied, before any cryptography.
    pub serial: u32,
    /// What changes.
    pub action: AnchorAction,
    /// The key id of the key that signed the update: for a rotation, the new
    /// anchor's.
    pub signer: KeyId,
    /// Ed25519 over `"vouch/1 anchor update" ‖ postcard(serial, action)`.
    pub signature: Signature,
}

/// The longest encoded [`AnchorUpdate`]: serial varint (5), action tag (1),
/// a rotation's anchor (65) and commitment (32), signer (1), signature (64).
/// Sealed in a record it is at most 199 bytes: one BLE PDU (SPEC.md §4.8).
pub const MAX_ANCHOR_UPDATE_LEN: usize = 5 + 1 + 65 + 32 + 1 + 64;

/// Room for the update statement: label, serial varint, the largest action
/// (a rotation: tag, anchor, digest).
const STATEMENT_MAX: usize = 21 + 5 + 1 + (1 + 32 + 32) + 32;

impl AnchorUpdate {
    /// The bytes the signature covers; returns the buffer and its length.
    pub(crate) fn statement(serial: u32, action: &AnchorAction) -> ([u8; STATEMENT_MAX], usize) {
        let mut buf = [0u8; STATEMENT_MAX];
        let l = label::ANCHOR_UPDATE.len();
        buf[..l].copy_from_slice(label::ANCHOR_UPDATE);
        // The buffer is sized for the largest action, so encoding cannot fail.
        let n = postcard::to_slice(&(serial, action), &mut buf[l..])
            .map(|s| s.len())
            .unwrap_or(0);
        (buf, l + n)
    }

    /// Signs an update with one of the backend's keys.
    pub fn sign(
        serial: u32,
        action: AnchorAction,
        signer: KeyId,
        key: &impl crate::keys::IdentitySigner,
    ) -> Self {
        let (buf, n) = Self::statement(serial, &action);
        AnchorUpdate {
            serial,
            action,
            signer,
            signature: key.sign(&buf[..n]),
        }
    }
}

/// What a peripheral trusts: its anchor, the commitment to the next one, and
/// the serial of the last update applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorSet {
    anchor: Anchor,
    next: AnchorDigest,
    serial: u32,
}

impl AnchorSet {
    /// The set a peripheral is provisioned with: the backend's current anchor,
    /// the commitment to its successor, and the serial of the last update the
    /// backend issued (0 for a new fleet).
    pub fn new(anchor: Anchor, next: AnchorDigest, serial: u32) -> Self {
        Self {
            anchor,
            next,
            serial,
        }
    }

    /// The anchor with key id `kid`, if it is the one held.
    pub fn get(&self, kid: KeyId) -> Option<&Anchor> {
        (self.anchor.kid == kid).then_some(&self.anchor)
    }

    /// The anchor: hellos are sealed to it and only it can vouch.
    pub fn primary(&self) -> &Anchor {
        &self.anchor
    }

    /// The commitment to the next anchor.
    pub fn next(&self) -> &AnchorDigest {
        &self.next
    }

    /// The serial of the last update applied.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Verifies and applies an update (SPEC.md §7.7), cheapest check first:
    /// the serial must be above the last one applied (an update the set
    /// already has is thus refused as stale with no cryptography: gateways
    /// deliver every update they hold); the action must be a rotation, named
    /// as signed by the anchor it introduces, whose digest is the held
    /// commitment; and the new key's signature must verify strictly. On any
    /// error the set is unchanged.
    pub fn apply(&mut self, update: &AnchorUpdate) -> Result<(), Error> {
        if update.serial <= self.serial {
            return Err(PeerMisbehaved::StaleAnchorUpdate.into());
        }
        let AnchorAction::Rotate { anchor, next } = update.action else {
            return Err(PeerMisbehaved::BadAnchorUpdate.into());
        };
        if update.signer != anchor.kid || anchor.digest() != self.next {
            return Err(PeerMisbehaved::BadAnchorUpdate.into());
        }
        let (buf, n) = AnchorUpdate::statement(update.serial, &update.action);
        if !anchor.signing.verify_strict(&buf[..n], &update.signature) {
            return Err(PeerMisbehaved::BadAnchorUpdate.into());
        }
        *self = Self {
            anchor,
            next,
            serial: update.serial,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::backend::BackendKeys;
    use crate::testing::rng;

    fn keys(kid: u8) -> BackendKeys {
        BackendKeys::generate(KeyId(kid), &mut rng(kid as u64))
    }

    /// The rotation from `from`'s successor `to`, committing to `after`.
    fn rotate(serial: u32, to: &BackendKeys, after: &BackendKeys) -> AnchorUpdate {
        let action = AnchorAction::Rotate {
            anchor: to.anchor(),
            next: after.anchor().digest(),
        };
        AnchorUpdate::sign(serial, action, to.kid(), to.signing())
    }

    #[test]
    fn a_rotation_moves_to_the_committed_key_and_the_old_key_loses_all_authority() {
        let [k1, k2, k3] = [keys(1), keys(2), keys(3)];
        let mut set = AnchorSet::new(k1.anchor(), k2.anchor().digest(), 0);
        set.apply(&rotate(1, &k2, &k3)).unwrap();
        assert_eq!(set.primary(), &k2.anchor());
        assert_eq!(set.next(), &k3.anchor().digest());
        assert!(set.get(KeyId(1)).is_none(), "the old anchor is gone");

        // Replayed: stale, before any cryptography (the signature is broken
        // and still the answer is "stale").
        let mut replay = rotate(1, &k2, &k3);
        replay.signature.0[0] ^= 1;
        assert_eq!(
            set.apply(&replay),
            Err(PeerMisbehaved::StaleAnchorUpdate.into())
        );

        // The old key signs anything, at any serial: refused, nothing changes.
        let before = set.clone();
        let k9 = keys(9);
        for action in [
            AnchorAction::Rotate {
                anchor: k9.anchor(),
                next: k9.anchor().digest(),
            },
            AnchorAction::Rotate {
                anchor: k1.anchor(),
                next: k9.anchor().digest(),
            },
            AnchorAction::Add(k9.anchor()),
            AnchorAction::Replace(k9.anchor()),
            AnchorAction::Retire(KeyId(2)),
        ] {
            for signer in [KeyId(1), KeyId(9)] {
                let forged = AnchorUpdate::sign(u32::MAX, action, signer, k1.signing());
                assert_eq!(
                    set.apply(&forged),
                    Err(PeerMisbehaved::BadAnchorUpdate.into())
                );
            }
        }
        assert_eq!(set, before, "a refused update changes nothing");
        assert_eq!(set.serial(), 1, "no forgery consumed the serial space");

        // The legitimate next rotation still applies.
        let k4 = keys(4);
        set.apply(&rotate(2, &k3, &k4)).unwrap();
        assert_eq!(set.primary(), &k3.anchor());
    }

    #[test]
    fn the_current_key_cannot_choose_the_successor() {
        // An attacker holding k2 (current) signs a rotation to its own key
        // k9, and another naming k3 (the committed successor) as signer but
        // with k3's anchor swapped for its own keys.
        let [k1, k2, k3, k9] = [keys(1), keys(2), keys(3), keys(9)];
        let mut set = AnchorSet::new(k2.anchor(), k3.anchor().digest(), 7);
        let before = set.clone();
        let own = AnchorUpdate::sign(
            8,
            AnchorAction::Rotate {
                anchor: k9.anchor(),
                next: k9.anchor().digest(),
            },
            KeyId(9),
            k9.signing(),
        );
        assert_eq!(set.apply(&own), Err(PeerMisbehaved::BadAnchorUpdate.into()));
        // The committed successor's public keys, but signed by k2: refused
        // (the new key must sign).
        let unsigned = AnchorUpdate::sign(
            8,
            AnchorAction::Rotate {
                anchor: k3.anchor(),
                next: k9.anchor().digest(),
            },
            KeyId(3),
            k2.signing(),
        );
        assert_eq!(
            set.apply(&unsigned),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );
        // A signer field that does not name the new anchor.
        let mut misnamed = rotate(8, &k3, &k1);
        misnamed.signer = KeyId(2);
        assert_eq!(
            set.apply(&misnamed),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );
        assert_eq!(set, before);
    }

    #[test]
    fn catch_up_over_several_missed_rotations() {
        let k: [BackendKeys; 5] = core::array::from_fn(|i| keys(i as u8 + 1));
        let mut set = AnchorSet::new(k[0].anchor(), k[1].anchor().digest(), 0);
        let log: [AnchorUpdate; 3] =
            core::array::from_fn(|i| rotate(i as u32 + 1, &k[i + 1], &k[i + 2]));
        // Out of order: refused until the one before it arrived.
        assert_eq!(
            set.apply(&log[1]),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );
        for u in &log {
            set.apply(u).unwrap();
        }
        assert_eq!(set.primary(), &k[3].anchor());
        assert_eq!(set.serial(), 3);
        // Delivered again in full (as gateways do): every one is stale.
        for u in &log {
            assert_eq!(set.apply(u), Err(PeerMisbehaved::StaleAnchorUpdate.into()));
        }
    }
}

#[cfg(feature = "alloc")]
pub use bundle::{AnchorBundle, BundleAnchor, BundleError, BUNDLE_FORMAT};

/// The provisioning bundle a peripheral is flashed with (SPEC.md §2.3): the
/// backend's current anchor, the commitment to its successor and the
/// protocol parameters, as JSON-friendly data.
///
/// ```json
/// { "format": "vouch-anchor-bundle/2", "protocol_version": 1, "suite": 1,
///   "serial": 0,
///   "anchor": { "kid": 1, "signing": "<64 hex>", "sealing": "<64 hex>" },
///   "next": "<64 hex>" }
/// ```
///
/// The backend writes it (`vouch-backend export-anchor`), the device installs
/// it (`vouch-peripheral provision --anchor FILE`). The type is defined here
/// once; both sides serialize it with serde (JSON). Bundles of format 1 had no
/// commitment, so a device provisioned from one could be moved to any key by
/// whoever held one of its anchors; they are refused, and such a device is
/// provisioned again from a current bundle.
#[cfg(feature = "alloc")]
mod bundle {
    use alloc::string::String;

    use serde::{Deserialize, Serialize};

    use super::{Anchor, AnchorDigest, AnchorSet};
    use crate::keys::{decode_hex, DhPublic, KeyId, PublicKey};
    use crate::wire::{Suite, PROTOCOL_VERSION};

    /// The value of [`AnchorBundle::format`].
    pub const BUNDLE_FORMAT: &str = "vouch-anchor-bundle/2";

    /// See the module documentation.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AnchorBundle {
        /// Always [`BUNDLE_FORMAT`].
        pub format: String,
        /// The protocol version the device will speak.
        pub protocol_version: u8,
        /// The suite.
        pub suite: u8,
        /// The anchor-update serial the device starts from.
        pub serial: u32,
        /// The anchor: hellos seal to it, it alone vouches.
        pub anchor: BundleAnchor,
        /// The commitment to the next anchor ([`Anchor::digest`]), 64 hex digits.
        pub next: String,
    }

    /// One anchor of a bundle, keys in hex.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BundleAnchor {
        /// Key id.
        pub kid: u8,
        /// Ed25519 public key, 64 hex digits.
        pub signing: String,
        /// X25519 public key, 64 hex digits.
        pub sealing: String,
    }

    /// Why a bundle cannot be installed.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[non_exhaustive]
    pub enum BundleError {
        /// `format` is not [`BUNDLE_FORMAT`].
        #[error("not a Vouch anchor bundle of format {BUNDLE_FORMAT:?} (format {0:?}; a format-1 bundle has no rotation commitment: export a new one with `vouch-backend export-anchor`)")]
        Format(String),
        /// The bundle is for a protocol version or suite this build does not speak.
        #[error("bundle is for protocol version {version}, suite {suite}; this build speaks version 1, suite 1")]
        Unsupported {
            /// The bundle's version.
            version: u8,
            /// The bundle's suite.
            suite: u8,
        },
        /// An anchor key is not valid hex or not a valid key.
        #[error("anchor {kid}: invalid {field} key")]
        Key {
            /// The anchor's key id.
            kid: u8,
            /// `signing` or `sealing`.
            field: &'static str,
        },
        /// `next` is not 64 hex digits.
        #[error("invalid next-anchor commitment (64 hex digits expected)")]
        Next,
    }

    impl AnchorBundle {
        /// The bundle of an anchor set.
        pub fn from_anchor_set(set: &AnchorSet) -> Self {
            let a = set.primary();
            Self {
                format: BUNDLE_FORMAT.into(),
                protocol_version: PROTOCOL_VERSION,
                suite: Suite::Ed25519X25519ChaCha20Poly1305 as u8,
                serial: set.serial(),
                anchor: BundleAnchor {
                    kid: a.kid.0,
                    signing: alloc::format!("{}", a.signing),
                    sealing: hex(&a.sealing.0),
                },
                next: hex(&set.next().0),
            }
        }

        /// Checks everything and builds the anchor set.
        pub fn to_anchor_set(&self) -> Result<AnchorSet, BundleError> {
            if self.format != BUNDLE_FORMAT {
                return Err(BundleError::Format(self.format.clone()));
            }
            if self.protocol_version != PROTOCOL_VERSION || Suite::from_u8(self.suite).is_none() {
                return Err(BundleError::Unsupported {
                    version: self.protocol_version,
                    suite: self.suite,
                });
            }
            let a = &self.anchor;
            let signing = PublicKey::from_hex(&a.signing).ok_or(BundleError::Key {
                kid: a.kid,
                field: "signing",
            })?;
            let mut sealing = [0u8; 32];
            decode_hex(&a.sealing, &mut sealing).ok_or(BundleError::Key {
                kid: a.kid,
                field: "sealing",
            })?;
            let mut next = [0u8; 32];
            decode_hex(&self.next, &mut next).ok_or(BundleError::Next)?;
            let anchor = Anchor {
                kid: KeyId(a.kid),
                signing,
                sealing: DhPublic(sealing),
            };
            Ok(AnchorSet::new(anchor, AnchorDigest(next), self.serial))
        }
    }

    fn hex(bytes: &[u8; 32]) -> String {
        bytes.iter().map(|b| alloc::format!("{b:02x}")).collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::handshake::backend::BackendKeys;

        #[test]
        fn bundle_round_trip_and_validation() {
            let k = BackendKeys::generate(KeyId(3), &mut crate::testing::rng(3));
            let n = BackendKeys::generate(KeyId(4), &mut crate::testing::rng(4));
            let set = AnchorSet::new(k.anchor(), n.anchor().digest(), 5);
            let b = AnchorBundle::from_anchor_set(&set);
            assert_eq!(b.to_anchor_set().unwrap(), set);
            let mut bad = b.clone();
            bad.anchor.signing = "zz".into();
            assert_eq!(
                bad.to_anchor_set(),
                Err(BundleError::Key {
                    kid: 3,
                    field: "signing"
                })
            );
            let mut bad = b.clone();
            bad.next = "00".into();
            assert_eq!(bad.to_anchor_set(), Err(BundleError::Next));
            let mut bad = b.clone();
            bad.format = "vouch-anchor-bundle/1".into();
            assert!(matches!(bad.to_anchor_set(), Err(BundleError::Format(_))));
            let mut bad = b;
            bad.protocol_version = 2;
            assert!(matches!(
                bad.to_anchor_set(),
                Err(BundleError::Unsupported { .. })
            ));
        }
    }
}
