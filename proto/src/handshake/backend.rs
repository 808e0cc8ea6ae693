//! The backend role (SPEC.md §5.2–5.4): open a sealed hello, verify it against
//! the registry entry the caller looked up, issue the vouch. No heap, no
//! storage: lookups are the caller's, between the steps.
//!
//! The order is the spec's, cheap checks before expensive ones:
//!
//! ```text
//! Hello::peek (decode, version, suite)        → caller: key id known? e_P replayed? gateway locked out?
//! open_hello (one X25519, ChaCha20)           → caller: registry lookup of the id, status, policy
//! OpenedHello::verify (one Ed25519 verify)    → caller: record e_P in the replay cache
//! VerifiedHello::vouch (one Ed25519 sign)
//! ```

use core::fmt;

use rand_core::CryptoRng;

use super::schedule;
use crate::anchor::Anchor;
use crate::crypto;
use crate::error::{Error, PeerMisbehaved};
use crate::keys::{DhPublic, IdentityKey, KeyId, PeripheralId, PublicKey, SealingKey, Signature};
use crate::wire::{Hello, Lifetimes, Message, Scope, Vouch};

/// One backend key pair: the Ed25519 key that signs vouches and anchor
/// updates, and the X25519 key hellos are sealed to, under one key id.
pub struct BackendKeys {
    kid: KeyId,
    signing: IdentityKey,
    sealing: SealingKey,
}

// Both its keys zeroize on drop (`IdentityKey`, `SealingKey`).
impl zeroize::ZeroizeOnDrop for BackendKeys {}

impl fmt::Debug for BackendKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl BackendKeys {
    /// Fresh keys.
    pub fn generate<R: CryptoRng + ?Sized>(kid: KeyId, rng: &mut R) -> Self {
        Self {
            kid,
            signing: IdentityKey::generate(rng),
            sealing: SealingKey::generate(rng),
        }
    }

    /// Keys loaded from storage.
    pub fn from_parts(kid: KeyId, signing: IdentityKey, sealing: SealingKey) -> Self {
        Self {
            kid,
            signing,
            sealing,
        }
    }

    /// The key id.
    pub fn kid(&self) -> KeyId {
        self.kid
    }

    /// The signing key (for anchor updates and storage).
    pub fn signing(&self) -> &IdentityKey {
        &self.signing
    }

    /// The sealing key (for storage).
    pub fn sealing(&self) -> &SealingKey {
        &self.sealing
    }

    /// The anchor peripherals are provisioned with.
    pub fn anchor(&self) -> Anchor {
        Anchor {
            kid: self.kid,
            signing: self.signing.public_key(),
            sealing: self.sealing.public(),
        }
    }
}

impl Hello {
    /// Decodes bytes that must be a Hello (the backend's first, cheap step).
    pub fn peek(bytes: &[u8]) -> Result<Hello, Error> {
        match Message::decode(bytes)? {
            Message::Hello(h) => Ok(h),
            other => Err(PeerMisbehaved::UnexpectedMessage {
                got: other.message_type(),
            }
            .into()),
        }
    }
}

/// A hello whose identity the backend has decrypted but not yet verified.
#[derive(Debug)]
pub struct OpenedHello {
    peripheral: PeripheralId,
    ephemeral: DhPublic,
    signature: Signature,
    statement: [u8; schedule::HELLO_STATEMENT_LEN],
    th1: [u8; 32],
}

/// Opens the sealed identity of `hello` (SPEC.md §5.2). `keys` must be the
/// pair the hello names ([`Hello::anchor`]). Costs one X25519.
pub fn open_hello(hello_bytes: &[u8], keys: &BackendKeys) -> Result<OpenedHello, Error> {
    let hello = Hello::peek(hello_bytes)?;
    if hello.anchor != keys.kid {
        return Err(PeerMisbehaved::UnknownBackendKey.into());
    }
    let ss = crypto::contributory(keys.sealing.dh(&hello.ephemeral))?;
    let sealing_pub = keys.sealing.public();
    let prefix = schedule::hello_prefix(hello.suite, hello.anchor, &hello.ephemeral);
    let k_seal = schedule::seal_key(&prefix, &sealing_pub, ss.as_bytes());
    let mut plain = hello.sealed.0;
    crypto::stream_xor(&k_seal, &mut plain);
    let mut id = [0u8; 8];
    id.copy_from_slice(&plain[..8]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&plain[8..]);
    let peripheral = PeripheralId(id);
    Ok(OpenedHello {
        peripheral,
        ephemeral: hello.ephemeral,
        signature: Signature(sig),
        statement: schedule::hello_statement(&prefix, &sealing_pub, &peripheral),
        th1: crypto::sha256(&[hello_bytes]),
    })
}

impl OpenedHello {
    /// The id the hello claims. Not authenticated until [`verify`](Self::verify).
    pub fn claimed_peripheral(&self) -> PeripheralId {
        self.peripheral
    }

    /// The peripheral's ephemeral `e_P` (the replay-cache key).
    pub fn ephemeral(&self) -> DhPublic {
        self.ephemeral
    }

    /// Verifies the signature with the registered key of the claimed id
    /// (strict Ed25519, SPEC.md §3.4).
    pub fn verify(self, registered: &PublicKey) -> Result<VerifiedHello, Error> {
        if !registered.verify_strict(&self.statement, &self.signature) {
            return Err(PeerMisbehaved::BadHelloSignature.into());
        }
        Ok(self.verified())
    }

    fn verified(self) -> VerifiedHello {
        VerifiedHello {
            peripheral: self.peripheral,
            ephemeral: self.ephemeral,
            th1: self.th1,
        }
    }
}

/// Verifies the signatures of many opened hellos at once, each against the
/// key the caller looked up for it; the answers come back in the order of
/// `items`, exactly as [`OpenedHello::verify`] would give them one by one.
///
/// One Ed25519 batch verification covers them all (SPEC.md §5.3), about
/// twice as fast per signature as single verification at 32 hellos. If the
/// batch fails, every signature in it is verified singly with the strict
/// rules, so one bad signature costs its batch a second pass but never
/// changes another item's answer, and a failure takes the same time whatever
/// caused it (an unknown id's dummy key or a wrong signature).
///
/// The batch equation is cofactorless and compares points, not encodings, so
/// on its own it accepts signatures the strict rules refuse: a small-order
/// `R` (for example the identity with `S = k·a`, which meets the equation
/// exactly), a non-canonical encoding of `R` or of the key, or a
/// non-canonical `S` (which makes the whole batch fail). Each item is
/// therefore checked first for what SPEC.md §3.4 refuses by looking at the
/// encodings alone (rules 1 to 3 and the canonical `R` of rule 4: about a
/// fifth of a verification), and an item that fails a check is answered by
/// single strict verification, which refuses it, and kept out of the batch.
/// What remains is what the strict equation and the batch equation judge
/// alike, except when `R` or the key is a point of large order plus one of
/// small order (finding that takes a scalar multiplication per item, which
/// would cost what batching saves): such a signature, which only the holder
/// of the private key can make, passes a batch with probability at most
/// 1/2 where the strict rules refuse it.
#[cfg(feature = "batch")]
pub fn verify_batch(
    items: alloc::vec::Vec<(OpenedHello, &PublicKey)>,
) -> alloc::vec::Vec<Result<VerifiedHello, Error>> {
    use alloc::vec::Vec;
    let batchable: Vec<Option<ed25519_dalek::VerifyingKey>> = items
        .iter()
        .map(|(opened, key)| batchable(&opened.signature, key))
        .collect();
    let in_batch = batchable.iter().filter(|k| k.is_some()).count();
    let batch_holds = in_batch > 1 && {
        let mut keys = Vec::with_capacity(in_batch);
        let mut messages: Vec<&[u8]> = Vec::with_capacity(in_batch);
        let mut signatures = Vec::with_capacity(in_batch);
        for ((opened, _), key) in items.iter().zip(&batchable) {
            if let Some(key) = key {
                keys.push(*key);
                messages.push(&opened.statement[..]);
                signatures.push(ed25519_dalek::Signature::from_bytes(&opened.signature.0));
            }
        }
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    items
        .into_iter()
        .zip(batchable)
        .map(|((opened, key), in_batch)| {
            if batch_holds && in_batch.is_some() {
                Ok(opened.verified())
            } else {
                opened.verify(key)
            }
        })
        .collect()
}

/// The key, decompressed, if a signature under it may go into a batch: it
/// passes every check of SPEC.md §3.4 that looks at the encodings alone, so
/// that the batch equation and the strict equation judge it alike. `None`
/// sends the item to single strict verification.
#[cfg(feature = "batch")]
fn batchable(signature: &Signature, key: &PublicKey) -> Option<ed25519_dalek::VerifyingKey> {
    // Rule 1: S < L. The group order L, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let s = &signature.0[32..];
    if !s.iter().rev().lt(L.iter().rev()) {
        return None;
    }
    // Rule 2: the key decodes, canonically, and is not of small order.
    let key = strict_point(key.verifying_key()?)?;
    // Rule 3 and the canonical R of rule 4.
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature.0[..32]);
    strict_point(ed25519_dalek::VerifyingKey::from_bytes(&r).ok()?)?;
    Some(key)
}

/// The point, if its bytes are its canonical encoding (`y < p`, and no sign
/// bit on `x = 0`) and it is not of small order.
#[cfg(feature = "batch")]
fn strict_point(point: ed25519_dalek::VerifyingKey) -> Option<ed25519_dalek::VerifyingKey> {
    let canonical = point.to_edwards().compress().to_bytes() == point.to_bytes();
    (canonical && !point.is_weak()).then_some(point)
}

/// A hello the backend has authenticated.
#[derive(Debug, Clone)]
pub struct VerifiedHello {
    peripheral: PeripheralId,
    ephemeral: DhPublic,
    th1: [u8; 32],
}

/// What the backend grants a gateway in one vouch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VouchGrant {
    /// The gateway's identity, from its TLS client certificate.
    pub gateway_key: PublicKey,
    /// The ephemeral the gateway sent with the request.
    pub gateway_ephemeral: DhPublic,
    /// What the gateway may do.
    pub scope: Scope,
    /// Session and resumption lifetimes.
    pub lifetimes: Lifetimes,
}

impl VerifiedHello {
    /// The authenticated peripheral.
    pub fn peripheral(&self) -> PeripheralId {
        self.peripheral
    }

    /// The peripheral's ephemeral `e_P`.
    pub fn ephemeral(&self) -> DhPublic {
        self.ephemeral
    }

    /// Signs the vouch (SPEC.md §5.4).
    pub fn vouch(&self, keys: &BackendKeys, grant: &VouchGrant) -> Vouch {
        let statement = schedule::vouch_statement(
            &self.th1,
            &self.peripheral,
            &grant.gateway_ephemeral,
            &grant.gateway_key,
            grant.scope,
            grant.lifetimes,
            keys.kid,
        );
        Vouch {
            gateway_key: grant.gateway_key,
            scope: grant.scope,
            lifetimes: grant.lifetimes,
            backend_key: keys.kid,
            signature: keys.signing.sign(&statement),
        }
    }
}
