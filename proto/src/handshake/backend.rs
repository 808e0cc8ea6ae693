//! The backend role (SPEC.md §5.2–5.4): open a sealed hello, verify it against
//! the registry entry the caller looked up, issue the vouch. No heap, no
//! storage: lookups are the caller's, between the steps.
//!
//! The order is the spec's, cheap checks before expensive ones:
//!
//! ```text
//! Hello::peek (decode, version, suite)        → caller: key id known? e_P replayed? gateway locked out?
//! open_hello (one X25519, ChaCha20)           → caller: registry lookup of the id, status, policy
//! OpenedHello::verify (one hello signature)   → caller: record e_P in the replay cache
//! VerifiedHello::vouch (one Ed25519 sign)
//! ```

use core::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{hello_signature, schedule};
use crate::anchor::Anchor;
use crate::crypto;
use crate::error::{Error, PeerMisbehaved};
use crate::keys::{DhPublic, IdentityKey, KeyId, PeripheralId, PublicKey, SealingKey, Signature};
#[cfg(feature = "alloc")]
use crate::provider::ProviderError;
use crate::provider::{self, CryptoProvider};
use crate::wire::{Hello, Lifetimes, Message, Scope, Vouch};

/// One backend key pair: the Ed25519 key that signs vouches and anchor
/// updates, and the X25519 key hellos are sealed to, under one key id.
pub struct BackendKeys {
    kid: KeyId,
    signing: IdentityKey,
    sealing: SealingKey,
    /// `sealing`'s public key, derived once: every hello's key schedule
    /// binds it (SPEC.md §5.2).
    sealing_public: DhPublic,
    /// The same keys loaded into a provider other than the built-in dalek
    /// path ([`BackendKeys::use_provider`]).
    #[cfg(feature = "alloc")]
    loaded: Option<Loaded>,
}

/// A key pair loaded into a provider.
#[cfg(feature = "alloc")]
struct Loaded {
    provider: &'static dyn CryptoProvider,
    signing: alloc::boxed::Box<dyn crate::provider::LoadedSigningKey>,
    sealing: alloc::boxed::Box<dyn crate::provider::LoadedSealingKey>,
}

// Both its keys zeroize on drop (`IdentityKey`, `SealingKey`), and so do
// their copies loaded into a provider: the dalek provider's are the same
// dalek types; aws-lc's live in `EVP_PKEY` objects, which AWS-LC cleanses
// when it frees them (and aws-lc-rs's X25519 results are `Zeroizing`).
impl zeroize::ZeroizeOnDrop for BackendKeys {}

impl fmt::Debug for BackendKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKeys")
            .field("kid", &self.kid)
            .field("provider", &self.provider().name())
            .finish_non_exhaustive()
    }
}

impl BackendKeys {
    /// Fresh keys.
    pub fn generate<R: CryptoRng + ?Sized>(kid: KeyId, rng: &mut R) -> Self {
        Self::from_parts(kid, IdentityKey::generate(rng), SealingKey::generate(rng))
    }

    /// Keys loaded from storage.
    pub fn from_parts(kid: KeyId, signing: IdentityKey, sealing: SealingKey) -> Self {
        Self {
            kid,
            sealing_public: sealing.public(),
            signing,
            sealing,
            #[cfg(feature = "alloc")]
            loaded: None,
        }
    }

    /// Opens hellos and signs vouches on `provider` from now on (SPEC.md
    /// §5.3 step 4, §5.4): each key is loaded into it once, its public half
    /// checked against the one the dalek crates derive, and its answers to a
    /// fixed question compared with theirs (a signature of a fixed message,
    /// byte for byte: Ed25519 is deterministic; an X25519 with a fixed
    /// share), so a provider that disagrees is never used (on an error the
    /// keys stay on the provider they were on). The answers do not change
    /// with the provider ([`crate::provider`]); the speed does.
    #[cfg(feature = "alloc")]
    pub fn use_provider(
        &mut self,
        provider: &'static dyn CryptoProvider,
    ) -> Result<(), ProviderError> {
        let seed = self.signing.danger_seed();
        let signing = provider.signing_key(&seed)?;
        let sealing = provider.sealing_key(&self.sealing.danger_to_bytes())?;
        if signing.public_key() != *self.signing.public_key().as_bytes()
            || sealing.public() != self.sealing_public.0
        {
            return Err(ProviderError::PublicKeyMismatch);
        }
        // Known answers: the dalek crates' for the same keys.
        const PROBE: &[u8] = b"vouch: provider known-answer test";
        let share: DhPublic = SealingKey::from_bytes([7; 32]).public();
        let theirs = sealing.x25519(&share.0);
        let ours = self.sealing.dh(&share);
        if signing.sign(PROBE) != self.signing.sign(PROBE)
            || theirs.as_deref() != Some(ours.as_bytes())
        {
            return Err(ProviderError::KnownAnswerMismatch);
        }
        self.loaded = Some(Loaded {
            provider,
            signing,
            sealing,
        });
        Ok(())
    }

    /// The provider these keys open hellos and sign vouches on.
    pub fn provider(&self) -> &'static dyn CryptoProvider {
        #[cfg(feature = "alloc")]
        if let Some(loaded) = &self.loaded {
            return loaded.provider;
        }
        &crate::provider::DALEK
    }

    /// `X25519(b_x, e_P)`, refused if all zeros (SPEC.md §5.3 step 4).
    fn open_share(&self, e_p: &DhPublic) -> Result<Zeroizing<[u8; 32]>, PeerMisbehaved> {
        #[cfg(feature = "alloc")]
        if let Some(loaded) = &self.loaded {
            return provider::contributory(loaded.sealing.x25519(&e_p.0));
        }
        provider::contributory(Some(Zeroizing::new(*self.sealing.dh(e_p).as_bytes())))
    }

    /// Signs a vouch statement (SPEC.md §5.4).
    fn sign(&self, statement: &[u8]) -> Signature {
        #[cfg(feature = "alloc")]
        if let Some(loaded) = &self.loaded {
            return loaded.signing.sign(statement);
        }
        self.signing.sign(statement)
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
            sealing: self.sealing_public,
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
    let ss = keys.open_share(&hello.ephemeral)?;
    let sealing_pub = keys.sealing_public;
    let prefix = schedule::hello_prefix(hello.suite, hello.anchor, &hello.ephemeral);
    let k_seal = schedule::seal_key(&prefix, &sealing_pub, &ss);
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

    /// Verifies the signature with the registered key of the claimed id,
    /// by the hello rule of SPEC.md §3.4 ([`hello_signature`]).
    pub fn verify(self, registered: &PublicKey) -> Result<VerifiedHello, Error> {
        if !hello_signature::verify(registered, &self.statement, &self.signature) {
            return Err(PeerMisbehaved::BadHelloSignature.into());
        }
        Ok(self.verified())
    }

    /// [`verify`](Self::verify) with the registered key decoded beforehand
    /// ([`hello_signature::DecodedKey`]): the same answer.
    pub fn verify_decoded(
        self,
        registered: &hello_signature::DecodedKey,
    ) -> Result<VerifiedHello, Error> {
        if !registered.verify(&self.statement, &self.signature) {
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
/// One batch verification covers them all (SPEC.md §5.3 step 6,
/// [`hello_signature::verify_batch`]): the hello rule's equation is the
/// cofactored one, so the batch judges each signature as it is judged alone
/// (but for a chance of 2^-128 per batch), small-order components of `R` or
/// of a key included, and the encoding checks run on each item before it.
/// If the batch fails, every signature in it is verified alone, so one bad
/// signature costs its batch a second pass but never changes another item's
/// answer, and a failure takes the same time whatever caused it (an unknown
/// id's dummy key or a wrong signature).
#[cfg(feature = "batch")]
pub fn verify_batch(
    items: alloc::vec::Vec<(OpenedHello, &PublicKey)>,
) -> alloc::vec::Vec<Result<VerifiedHello, Error>> {
    use alloc::vec::Vec;
    let keys: Vec<hello_signature::DecodedKey> = items
        .iter()
        .map(|(_, key)| hello_signature::DecodedKey::new(key))
        .collect();
    verify_batch_decoded(
        items
            .into_iter()
            .zip(&keys)
            .map(|((opened, _), key)| (opened, key))
            .collect(),
    )
}

/// [`verify_batch`] with the keys decoded beforehand
/// ([`hello_signature::DecodedKey`], which a backend caches per enrolled
/// device): the same answers.
#[cfg(feature = "batch")]
pub fn verify_batch_decoded(
    items: alloc::vec::Vec<(OpenedHello, &hello_signature::DecodedKey)>,
) -> alloc::vec::Vec<Result<VerifiedHello, Error>> {
    use alloc::vec::Vec;
    let signatures: Vec<(&hello_signature::DecodedKey, &[u8], &Signature)> = items
        .iter()
        .map(|(opened, key)| (*key, &opened.statement[..], &opened.signature))
        .collect();
    let answers = hello_signature::verify_batch_decoded(&signatures);
    items
        .into_iter()
        .zip(answers)
        .map(|((opened, _), valid)| {
            if valid {
                Ok(opened.verified())
            } else {
                Err(PeerMisbehaved::BadHelloSignature.into())
            }
        })
        .collect()
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
            signature: keys.sign(&statement),
        }
    }
}
