//! Trust anchors and their rotation (SPEC.md §2.3, §7.7).
//!
//! A peripheral trusts only the backend keys in its [`AnchorSet`]: at most
//! [`MAX_ANCHORS`]. The backend changes that set with an [`AnchorUpdate`]
//! signed by an anchor the peripheral already holds, delivered over an
//! established session. Updates carry a serial so an old one can never be
//! replayed to undo a newer one.

use serde::{Deserialize, Serialize};

use crate::error::{ApiMisuse, Error, PeerMisbehaved};
use crate::keys::{DhPublic, KeyId, PublicKey, Signature};
use crate::label;

/// The most anchors a peripheral holds at once.
pub const MAX_ANCHORS: usize = 4;

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

/// A change to a peripheral's anchors (SPEC.md §7.7).
///
/// APPEND ONLY: the variant order is wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnchorAction {
    /// Trust one more anchor; new hellos seal to it.
    Add(Anchor),
    /// Trust this anchor only (re-homing to another backend).
    Replace(Anchor),
    /// Stop trusting this key. The last anchor cannot be retired.
    Retire(KeyId),
}

/// A signed [`AnchorAction`] (SPEC.md §7.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorUpdate {
    /// Strictly increasing per fleet; the peripheral refuses any serial not above
    /// the last it applied.
    pub serial: u32,
    /// What changes.
    pub action: AnchorAction,
    /// The anchor whose key signed the update.
    pub signer: KeyId,
    /// Ed25519 over `"vouch/1 anchor update" ‖ postcard(serial, action)`.
    pub signature: Signature,
}

/// Room for the update statement: label, serial varint, action.
const STATEMENT_MAX: usize = 21 + 5 + 1 + 1 + 32 + 32;

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

/// The anchors a peripheral trusts, and the serial of the last update applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorSet {
    /// Oldest first; the last one is the primary (hellos seal to it).
    anchors: [Option<Anchor>; MAX_ANCHORS],
    serial: u32,
}

impl AnchorSet {
    /// A set holding one anchor, as provisioned at the factory.
    pub fn new(anchor: Anchor) -> Self {
        let mut anchors = [None; MAX_ANCHORS];
        anchors[0] = Some(anchor);
        Self { anchors, serial: 0 }
    }

    /// A set from several anchors (the last is the primary). At most
    /// [`MAX_ANCHORS`]; `serial` is the last update serial applied.
    pub fn from_anchors(list: &[Anchor], serial: u32) -> Result<Self, ApiMisuse> {
        if list.is_empty() {
            return Err(ApiMisuse::NoAnchor);
        }
        if list.len() > MAX_ANCHORS {
            return Err(ApiMisuse::AnchorSetFull);
        }
        let mut anchors = [None; MAX_ANCHORS];
        for (slot, a) in anchors.iter_mut().zip(list) {
            *slot = Some(*a);
        }
        Ok(Self { anchors, serial })
    }

    /// The anchor with key id `kid`.
    pub fn get(&self, kid: KeyId) -> Option<&Anchor> {
        self.iter().find(|a| a.kid == kid)
    }

    /// The anchor new hellos are sealed to: the most recently added.
    pub fn primary(&self) -> Option<&Anchor> {
        self.iter().last()
    }

    /// The anchors, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Anchor> {
        self.anchors.iter().flatten()
    }

    /// How many anchors are held.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no anchor is held (never true for a set built by this API).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serial of the last update applied.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Verifies and applies an update (SPEC.md §7.7), checking cheapest
    /// first: the serial must be above the last one applied, the signer must
    /// be held, and the signature must verify strictly. An update the set
    /// already has (a gateway delivers every update it holds, not knowing
    /// which ones a peripheral applied) is thus refused as stale without a
    /// signature verification. On any error the set is unchanged.
    pub fn apply(&mut self, update: &AnchorUpdate) -> Result<(), Error> {
        if update.serial <= self.serial {
            return Err(PeerMisbehaved::StaleAnchorUpdate.into());
        }
        let signer = self
            .get(update.signer)
            .ok_or(PeerMisbehaved::BadAnchorUpdate)?;
        let (buf, n) = AnchorUpdate::statement(update.serial, &update.action);
        if !signer.signing.verify_strict(&buf[..n], &update.signature) {
            return Err(PeerMisbehaved::BadAnchorUpdate.into());
        }
        let mut next = self.clone();
        match update.action {
            AnchorAction::Add(anchor) => {
                // Re-adding a key id replaces the old entry.
                for slot in next.anchors.iter_mut() {
                    if slot.is_some_and(|a| a.kid == anchor.kid) {
                        *slot = None;
                    }
                }
                next.compact();
                let free = next
                    .anchors
                    .iter_mut()
                    .find(|s| s.is_none())
                    .ok_or(ApiMisuse::AnchorSetFull)?;
                *free = Some(anchor);
            }
            AnchorAction::Replace(anchor) => {
                next.anchors = [None; MAX_ANCHORS];
                next.anchors[0] = Some(anchor);
            }
            AnchorAction::Retire(kid) => {
                if next.get(kid).is_none() || next.len() == 1 {
                    return Err(PeerMisbehaved::BadAnchorUpdate.into());
                }
                for slot in next.anchors.iter_mut() {
                    if slot.is_some_and(|a| a.kid == kid) {
                        *slot = None;
                    }
                }
                next.compact();
            }
        }
        next.serial = update.serial;
        *self = next;
        Ok(())
    }

    fn compact(&mut self) {
        let mut out = [None; MAX_ANCHORS];
        for (slot, a) in out.iter_mut().zip(self.anchors.iter().flatten()) {
            *slot = Some(*a);
        }
        self.anchors = out;
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

    #[test]
    fn add_retire_replace_and_stale_serials() {
        let k1 = keys(1);
        let k2 = keys(2);
        let k9 = keys(9);
        let mut set = AnchorSet::new(k1.anchor());

        let add = AnchorUpdate::sign(1, AnchorAction::Add(k2.anchor()), KeyId(1), k1.signing());
        set.apply(&add).unwrap();
        assert_eq!(set.primary().unwrap().kid, KeyId(2));
        assert_eq!(set.len(), 2);

        // Replaying the same update is refused and changes nothing.
        assert_eq!(
            set.apply(&add),
            Err(PeerMisbehaved::StaleAnchorUpdate.into())
        );
        // A stale serial is refused before the signature is looked at (the
        // cheap check first, SPEC.md §7.7): even a forged one is "stale".
        let mut forged_old = add;
        forged_old.signature.0[0] ^= 1;
        assert_eq!(
            set.apply(&forged_old),
            Err(PeerMisbehaved::StaleAnchorUpdate.into())
        );
        let before = set.clone();
        let mut forged_new =
            AnchorUpdate::sign(2, AnchorAction::Add(k9.anchor()), KeyId(2), k2.signing());
        forged_new.signature.0[0] ^= 1;
        assert_eq!(
            set.apply(&forged_new),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );
        assert_eq!(set, before, "a refused update changes nothing");

        let retire = AnchorUpdate::sign(2, AnchorAction::Retire(KeyId(1)), KeyId(2), k2.signing());
        set.apply(&retire).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get(KeyId(1)).is_none());

        // The last anchor cannot be retired.
        let retire2 = AnchorUpdate::sign(3, AnchorAction::Retire(KeyId(2)), KeyId(2), k2.signing());
        assert_eq!(
            set.apply(&retire2),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );

        // An update signed by a key the peripheral does not hold is refused.
        let rogue = AnchorUpdate::sign(
            4,
            AnchorAction::Replace(k9.anchor()),
            KeyId(9),
            k9.signing(),
        );
        assert_eq!(
            set.apply(&rogue),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );
        // So is one that claims a held signer but is signed by another key.
        let forged = AnchorUpdate::sign(
            4,
            AnchorAction::Replace(k9.anchor()),
            KeyId(2),
            k9.signing(),
        );
        assert_eq!(
            set.apply(&forged),
            Err(PeerMisbehaved::BadAnchorUpdate.into())
        );

        let rehome = AnchorUpdate::sign(
            5,
            AnchorAction::Replace(k9.anchor()),
            KeyId(2),
            k2.signing(),
        );
        set.apply(&rehome).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.primary().unwrap().kid, KeyId(9));
        assert_eq!(set.serial(), 5);
    }

    #[test]
    fn full_set_refuses_add() {
        let k: [BackendKeys; 5] = core::array::from_fn(|i| keys(i as u8 + 1));
        let mut set = AnchorSet::new(k[0].anchor());
        for (i, key) in k.iter().enumerate().skip(1).take(3) {
            let u = AnchorUpdate::sign(
                i as u32,
                AnchorAction::Add(key.anchor()),
                KeyId(1),
                k[0].signing(),
            );
            set.apply(&u).unwrap();
        }
        let u = AnchorUpdate::sign(
            9,
            AnchorAction::Add(k[4].anchor()),
            KeyId(1),
            k[0].signing(),
        );
        let before = set.clone();
        assert_eq!(set.apply(&u), Err(ApiMisuse::AnchorSetFull.into()));
        assert_eq!(set, before);
    }
}

#[cfg(feature = "alloc")]
pub use bundle::{AnchorBundle, BundleAnchor, BundleError, BUNDLE_FORMAT};

/// The provisioning bundle a peripheral is flashed with (SPEC.md §2.3): the
/// backend's anchors and the protocol parameters, as JSON-friendly data.
///
/// ```json
/// { "format": "vouch-anchor-bundle/1", "protocol_version": 1, "suite": 1,
///   "serial": 0,
///   "anchors": [ { "kid": 1, "signing": "<64 hex>", "sealing": "<64 hex>" } ] }
/// ```
///
/// The backend writes it (`vouch-backend export-anchor`), the device installs
/// it (`vouch-peripheral provision --anchor FILE`). The type is defined here
/// once; both sides serialize it with serde (JSON).
#[cfg(feature = "alloc")]
mod bundle {
    use alloc::string::String;
    use alloc::vec::Vec;

    use serde::{Deserialize, Serialize};

    use super::{Anchor, AnchorSet, MAX_ANCHORS};
    use crate::keys::{decode_hex, DhPublic, KeyId, PublicKey};
    use crate::wire::{Suite, PROTOCOL_VERSION};

    /// The value of [`AnchorBundle::format`].
    pub const BUNDLE_FORMAT: &str = "vouch-anchor-bundle/1";

    /// See the module documentation.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AnchorBundle {
        /// Always [`BUNDLE_FORMAT`].
        pub format: String,
        /// The protocol version the device will speak.
        pub protocol_version: u8,
        /// The suite.
        pub suite: u8,
        /// The anchor-update serial the device starts from.
        pub serial: u32,
        /// The anchors, oldest first; the last is the primary.
        pub anchors: Vec<BundleAnchor>,
    }

    /// One anchor of a bundle, keys in hex.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        #[error("not a Vouch anchor bundle (format {0:?})")]
        Format(String),
        /// The bundle is for a protocol version or suite this build does not speak.
        #[error("bundle is for protocol version {version}, suite {suite}; this build speaks version 1, suite 1")]
        Unsupported {
            /// The bundle's version.
            version: u8,
            /// The bundle's suite.
            suite: u8,
        },
        /// No anchors, or more than a device holds.
        #[error("a bundle holds 1 to {max} anchors, this one holds {got}")]
        Count {
            /// How many it holds.
            got: usize,
            /// The limit.
            max: usize,
        },
        /// An anchor key is not valid hex or not a valid key.
        #[error("anchor {kid}: invalid {field} key")]
        Key {
            /// The anchor's key id.
            kid: u8,
            /// `signing` or `sealing`.
            field: &'static str,
        },
        /// Two anchors share a key id.
        #[error("key id {0} appears twice")]
        DuplicateKid(u8),
    }

    impl AnchorBundle {
        /// The bundle of an anchor set.
        pub fn from_anchor_set(set: &AnchorSet) -> Self {
            Self {
                format: BUNDLE_FORMAT.into(),
                protocol_version: PROTOCOL_VERSION,
                suite: Suite::Ed25519X25519ChaCha20Poly1305 as u8,
                serial: set.serial(),
                anchors: set
                    .iter()
                    .map(|a| BundleAnchor {
                        kid: a.kid.0,
                        signing: alloc::format!("{}", a.signing),
                        sealing: a
                            .sealing
                            .0
                            .iter()
                            .map(|b| alloc::format!("{b:02x}"))
                            .collect(),
                    })
                    .collect(),
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
            if self.anchors.is_empty() || self.anchors.len() > MAX_ANCHORS {
                return Err(BundleError::Count {
                    got: self.anchors.len(),
                    max: MAX_ANCHORS,
                });
            }
            let mut anchors = Vec::with_capacity(self.anchors.len());
            for a in &self.anchors {
                if anchors.iter().any(|x: &Anchor| x.kid.0 == a.kid) {
                    return Err(BundleError::DuplicateKid(a.kid));
                }
                let signing = PublicKey::from_hex(&a.signing).ok_or(BundleError::Key {
                    kid: a.kid,
                    field: "signing",
                })?;
                let mut sealing = [0u8; 32];
                decode_hex(&a.sealing, &mut sealing).ok_or(BundleError::Key {
                    kid: a.kid,
                    field: "sealing",
                })?;
                anchors.push(Anchor {
                    kid: KeyId(a.kid),
                    signing,
                    sealing: DhPublic(sealing),
                });
            }
            AnchorSet::from_anchors(&anchors, self.serial).map_err(|_| BundleError::Count {
                got: self.anchors.len(),
                max: MAX_ANCHORS,
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::handshake::backend::BackendKeys;

        #[test]
        fn bundle_round_trip_and_validation() {
            let k = BackendKeys::generate(KeyId(3), &mut crate::testing::rng(3));
            let set = AnchorSet::new(k.anchor());
            let b = AnchorBundle::from_anchor_set(&set);
            assert_eq!(b.to_anchor_set().unwrap(), set);
            let mut bad = b.clone();
            bad.anchors[0].signing = "zz".into();
            assert_eq!(
                bad.to_anchor_set(),
                Err(BundleError::Key {
                    kid: 3,
                    field: "signing"
                })
            );
            let mut bad = b.clone();
            bad.format = "x".into();
            assert!(matches!(bad.to_anchor_set(), Err(BundleError::Format(_))));
            let mut bad = b.clone();
            bad.anchors.push(bad.anchors[0].clone());
            assert_eq!(bad.to_anchor_set(), Err(BundleError::DuplicateKid(3)));
            let mut bad = b;
            bad.protocol_version = 2;
            assert!(matches!(
                bad.to_anchor_set(),
                Err(BundleError::Unsupported { .. })
            ));
        }
    }
}
