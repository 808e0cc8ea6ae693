//! Crypto providers: the implementations of X25519 and Ed25519 the protocol
//! runs on (SPEC.md §3), chosen per role, as rustls's `CryptoProvider` and
//! lakers' `Crypto` trait choose theirs.
//!
//! - [`Dalek`] (the dalek crates) is the default, and the provider of the
//!   peripheral on every host: `no_std`, no heap, no C.
//! - `CortexM` (feature `cortex-m`, module `cortex_m`) is for the
//!   peripheral's firmware on Cortex-M4 and Cortex-M33: X25519, Ed25519
//!   signing and the equation of rule 4 below on field arithmetic written
//!   for those cores (a third of the dalek crates' instructions for
//!   X25519, a third fewer for signing without the dalek tables' 38 KiB;
//!   on bare-metal Arm the field multiplication is Thumb-2 assembly, the
//!   workspace's one module with `unsafe` code).
//!   A bare-metal build (`target_os = "none"`) with the feature runs the
//!   peripheral role on it; elsewhere it is one more provider in [`all`],
//!   tested like the others, and the peripheral keeps the dalek crates.
//! - [`AwsLc`] (aws-lc-rs, feature `aws-lc`) is for the backend and the
//!   gateway, where its X25519 and Ed25519 signing are about twice as fast
//!   on x86-64 and aarch64.
//!
//! ## What a provider may change: speed, never an answer
//!
//! Everything SPEC.md makes normative about the primitives is decided here,
//! once, in front of every provider, so that no input is accepted by one
//! provider and refused by another:
//!
//! - **Ed25519 verification** ([`verify_strict`]): the encoding checks of
//!   SPEC.md §3.4 rules 1 to 3 run in this module ([`StrictInput`]): `S < L`,
//!   `A` and `R` canonical encodings (`y < p`) of points that are not of
//!   small order. Only an input that passes them reaches the provider,
//!   which then checks the cofactorless equation of rule 4 (`[S]B − [k]A`
//!   encodes to the bytes `R`). Generic libraries differ exactly on those
//!   encoding rules (aws-lc, like OpenSSL, accepts `A` = `R` = identity with
//!   `S` = 0 for every message) and agree on the equation.
//! - **X25519** ([`x25519`]): an all-zero result (a low-order peer
//!   share) is refused here (SPEC.md §3.2), whatever the provider returned;
//!   a provider that refuses a share itself (aws-lc refuses the same
//!   all-zero results) is answered the same way.
//! - **Hello signatures** (SPEC.md §3.4 hello rule, §5.3 step 6) are not a
//!   provider operation at all: their cofactored equation and its batches
//!   are curve arithmetic of this crate
//!   ([`hello_signature`](crate::handshake::hello_signature)), the same for
//!   every role.
//!
//! `proto/tests/providers.rs` runs the Wycheproof and SPEC.md §12 vectors
//! and a differential property test (random and adversarial inputs) against
//! every provider built in.
//!
//! ## Keys
//!
//! A backend loads its key pairs into its provider once
//! ([`BackendKeys::use_provider`](crate::handshake::backend::BackendKeys::use_provider),
//! feature `alloc`): the loaded forms ([`LoadedSigningKey`],
//! [`LoadedSealingKey`]) skip the public-key derivation that loading from
//! bytes costs, and are checked against the dalek keys they came from.

#[cfg(feature = "aws-lc")]
mod aws_lc;
#[cfg(feature = "cortex-m")]
pub mod cortex_m;
mod dalek;

use core::fmt;

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

#[cfg(feature = "aws-lc")]
pub use aws_lc::AwsLc;
#[cfg(feature = "cortex-m")]
pub use cortex_m::CortexM;
pub use dalek::Dalek;

use crate::error::PeerMisbehaved;
use crate::handshake::hello_signature::strict_point;
#[cfg(doc)]
use crate::keys::PublicKey;
#[cfg(feature = "alloc")]
use crate::keys::Signature;

/// The default provider: the dalek crates.
pub static DALEK: Dalek = Dalek;

/// The aws-lc-rs provider (feature `aws-lc`).
#[cfg(feature = "aws-lc")]
pub static AWS_LC: AwsLc = AwsLc;

/// The Cortex-M provider (feature `cortex-m`).
#[cfg(feature = "cortex-m")]
pub static CORTEX_M: CortexM = CortexM;

// The Cortex-M provider is constant-time only where 32×32→64 multiplication
// is (Cortex-M4/M7/M33/M55: UMULL/UMLAL/UMAAL in fixed cycles). On a
// Cortex-M0/M3, or a bare-metal target whose multiply is a library loop,
// its timing would tell the secret: such a build is refused.
#[cfg(all(
    feature = "cortex-m",
    target_os = "none",
    not(all(target_arch = "arm", target_feature = "dsp"))
))]
compile_error!(
    "the cortex-m provider needs a core whose long multiplication runs in constant time \
     (Cortex-M4/M7/M33/M55, targets thumbv7em-* and thumbv8m.main-* with DSP); build this \
     target without the feature (the dalek crates then run the peripheral)"
);

/// The peripheral role's provider: [`CortexM`] in a bare-metal build
/// (`target_os = "none"`) with the feature `cortex-m`, the dalek crates
/// everywhere else (the host's peripheral too, whatever its features).
#[cfg(all(feature = "cortex-m", target_os = "none"))]
pub(crate) static PERIPHERAL: &CortexM = &CORTEX_M;
/// The peripheral role's provider: `CortexM` in a bare-metal build
/// (`target_os = "none"`) with the feature `cortex-m`, the dalek crates
/// everywhere else (the host's peripheral too, whatever its features).
#[cfg(not(all(feature = "cortex-m", target_os = "none")))]
pub(crate) static PERIPHERAL: &Dalek = &DALEK;

/// Every provider this build holds, the default first: what the tests and
/// benchmarks run against.
pub fn all() -> &'static [&'static dyn CryptoProvider] {
    ALL
}

static ALL: &[&dyn CryptoProvider] = &[
    &DALEK,
    #[cfg(feature = "aws-lc")]
    &AWS_LC,
    #[cfg(feature = "cortex-m")]
    &CORTEX_M,
];

/// An implementation of the primitives of suite 1 whose answers can differ
/// between libraries (SPEC.md §3.2, §3.4). See the [module
/// documentation](self) for what stays in this crate.
pub trait CryptoProvider: fmt::Debug + Send + Sync {
    /// A short name for reports and logs (`"dalek"`, `"aws-lc"`).
    fn name(&self) -> &'static str;

    /// X25519 (RFC 7748) of a 32-byte secret (clamped by the function) and a
    /// peer's u-coordinate (its top bit ignored). `None` if the
    /// implementation refuses the peer share; the protocol then refuses an
    /// all-zero result as well, whatever the provider ([`x25519`]).
    fn x25519(&self, secret: &[u8; 32], peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>>;

    /// The X25519 public value of a 32-byte secret: X25519 with the base
    /// point u = 9 (RFC 7748 §6.1), which a provider may compute by a
    /// faster fixed-base method. Never all zeros (the clamped scalar is not
    /// a multiple of the base point's order).
    fn x25519_base(&self, secret: &[u8; 32]) -> [u8; 32] {
        let mut nine = [0u8; 32];
        nine[0] = 9;
        self.x25519(secret, &nine).map_or([0u8; 32], |p| *p)
    }

    /// The cofactorless Ed25519 equation of SPEC.md §3.4 rule 4 on an input
    /// whose encodings [`StrictInput`] checked: whether `[S]B − [k]A`, with
    /// `k = SHA-512(R ‖ A ‖ M) mod L`, encodes to the bytes `R`. Called only
    /// through [`verify_strict`].
    fn ed25519_equation(&self, input: &StrictInput<'_>) -> bool;

    /// Loads an Ed25519 signing key from its RFC 8032 seed.
    #[cfg(feature = "alloc")]
    fn signing_key(
        &self,
        seed: &[u8; 32],
    ) -> Result<alloc::boxed::Box<dyn LoadedSigningKey>, ProviderError>;

    /// Loads an X25519 static secret (the backend's sealing key).
    #[cfg(feature = "alloc")]
    fn sealing_key(
        &self,
        secret: &[u8; 32],
    ) -> Result<alloc::boxed::Box<dyn LoadedSealingKey>, ProviderError>;
}

/// An Ed25519 signing key loaded into a provider. Its secret is the
/// provider's to hold and to wipe when dropped; it is never printed.
#[cfg(feature = "alloc")]
pub trait LoadedSigningKey: Send + Sync {
    /// The public key (RFC 8032 §5.1.5).
    fn public_key(&self) -> [u8; 32];
    /// Signs `msg` (pure Ed25519, RFC 8032 §5.1.6: deterministic, so every
    /// provider makes the same signature).
    fn sign(&self, msg: &[u8]) -> Signature;
}

/// An X25519 static secret loaded into a provider. Its secret is the
/// provider's to hold and to wipe when dropped; it is never printed.
#[cfg(feature = "alloc")]
pub trait LoadedSealingKey: Send + Sync {
    /// The public value.
    fn public(&self) -> [u8; 32];
    /// X25519 with a peer share, as [`CryptoProvider::x25519`] (the
    /// protocol refuses an all-zero result, as [`x25519`] does).
    fn x25519(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>>;
}

/// Why a provider could not load a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider's library refused the key bytes.
    #[error("the crypto provider refused the key")]
    KeyRejected,
    /// The loaded key's public half differs from the one the dalek crates
    /// derive from the same secret: the provider is broken, and its keys are
    /// not used.
    #[error("the crypto provider derives another public key than the dalek crates")]
    PublicKeyMismatch,
    /// The loaded keys' answers to a fixed question (a signature, which
    /// Ed25519 makes deterministic; an X25519 with a fixed share) differ
    /// from the dalek crates': the provider is broken, and its keys are not
    /// used.
    #[error("the crypto provider's signature or key exchange differs from the dalek crates'")]
    KnownAnswerMismatch,
}

/// An Ed25519 signature whose encodings passed SPEC.md §3.4 rules 1 to 3,
/// with what the equation of rule 4 needs. Made only by [`verify_strict`].
pub struct StrictInput<'a> {
    key: &'a [u8; 32],
    signature: &'a [u8; 64],
    message: &'a [u8],
    /// `−A`, decoded.
    minus_a: EdwardsPoint,
    /// `S`, below `L`.
    s: Scalar,
}

impl<'a> StrictInput<'a> {
    /// Rules 1 to 3 of SPEC.md §3.4: `S < L`; `A` and `R` canonical
    /// encodings of points that are not of small order.
    fn check(key: &'a [u8; 32], message: &'a [u8], signature: &'a [u8; 64]) -> Option<Self> {
        let mut s = [0u8; 32];
        s.copy_from_slice(&signature[32..]);
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
        let a = strict_point(key)?;
        let mut r = [0u8; 32];
        r.copy_from_slice(&signature[..32]);
        strict_point(&r)?;
        Some(Self {
            key,
            signature,
            message,
            minus_a: -a,
            s,
        })
    }

    /// The public key's 32 bytes.
    pub fn key(&self) -> &[u8; 32] {
        self.key
    }

    /// The signature's 64 bytes, `R ‖ S`.
    pub fn signature(&self) -> &[u8; 64] {
        self.signature
    }

    /// The signed message.
    pub fn message(&self) -> &[u8] {
        self.message
    }

    /// The equation of rule 4 with the curve arithmetic of this crate (what
    /// [`Dalek`] answers; ed25519-dalek's `verify_strict` computes the same).
    fn equation_holds(&self) -> bool {
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(&self.signature[..32])
                .chain_update(self.key)
                .chain_update(self.message)
                .finalize()
                .into(),
        );
        let r = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &self.minus_a, &self.s);
        r.compress().as_bytes()[..] == self.signature[..32]
    }
}

/// Verifies `signature` (`R ‖ S`) by the key encoded as `key` over
/// `message` with the strict rule of SPEC.md §3.4 (rules 1 to 4), on
/// `provider`: the encoding checks here, the equation by the provider.
/// Every provider gives the same answer. ([`PublicKey::verify_strict`] is
/// this on the default provider.)
pub fn verify_strict(
    provider: &dyn CryptoProvider,
    key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> bool {
    StrictInput::check(key, message, signature)
        .is_some_and(|input| provider.ed25519_equation(&input))
}

/// SPEC.md §3.2: refuses a Diffie–Hellman result of all zeros (compared in
/// constant time), and a share the provider refused.
pub(crate) fn contributory(
    shared: Option<Zeroizing<[u8; 32]>>,
) -> Result<Zeroizing<[u8; 32]>, PeerMisbehaved> {
    match shared {
        Some(ss) if !crate::crypto::all_zero(&ss) => Ok(ss),
        _ => Err(PeerMisbehaved::WeakKeyShare),
    }
}

/// X25519 on `provider` with the check of SPEC.md §3.2: what every role's
/// Diffie–Hellman answers, whatever the provider. For tests and tools; the
/// handshakes call it with their own key types.
pub fn x25519(
    provider: &dyn CryptoProvider,
    secret: &[u8; 32],
    peer: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, PeerMisbehaved> {
    contributory(provider.x25519(secret, peer))
}
