//! aws-lc-rs as a provider (feature `aws-lc`): for the backend and the
//! gateway, never the peripheral.
//!
//! Its keys live in aws-lc's `EVP_PKEY` objects, which aws-lc wipes when
//! they are freed (`OPENSSL_free` cleanses every allocation), and which
//! aws-lc-rs never prints.

use alloc::boxed::Box;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

use super::{CryptoProvider, LoadedSealingKey, LoadedSigningKey, ProviderError, StrictInput};
use crate::keys::Signature;

/// aws-lc-rs (AWS-LC): X25519 and Ed25519 in assembly on x86-64 and
/// aarch64.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsLc;

impl CryptoProvider for AwsLc {
    fn name(&self) -> &'static str {
        "aws-lc"
    }

    fn x25519(&self, secret: &[u8; 32], peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let key = agreement::PrivateKey::from_private_key(&X25519, secret).ok()?;
        agree(&key, peer)
    }

    fn ed25519_equation(&self, input: &StrictInput<'_>) -> bool {
        // The encodings are checked (rules 1 to 3): what remains is the
        // cofactorless equation, which AWS-LC's ED25519_verify checks
        // (it recomputes R and compares the encodings).
        signature::UnparsedPublicKey::new(&signature::ED25519, input.key())
            .verify(input.message(), input.signature())
            .is_ok()
    }

    fn signing_key(&self, seed: &[u8; 32]) -> Result<Box<dyn LoadedSigningKey>, ProviderError> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|k| Box::new(Signing(k)) as Box<dyn LoadedSigningKey>)
            .map_err(|_| ProviderError::KeyRejected)
    }

    fn sealing_key(&self, secret: &[u8; 32]) -> Result<Box<dyn LoadedSealingKey>, ProviderError> {
        let key = agreement::PrivateKey::from_private_key(&X25519, secret)
            .map_err(|_| ProviderError::KeyRejected)?;
        let public: [u8; 32] = key
            .compute_public_key()
            .ok()
            .and_then(|p| p.as_ref().try_into().ok())
            .ok_or(ProviderError::KeyRejected)?;
        Ok(Box::new(Sealing { key, public }))
    }
}

/// X25519 with aws-lc-rs: `None` when AWS-LC refuses the share (it refuses
/// an all-zero result, as SPEC.md §3.2 does).
fn agree(key: &agreement::PrivateKey, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    agreement::agree(key, UnparsedPublicKey::new(&X25519, peer), (), |ss| {
        let mut out = Zeroizing::new([0u8; 32]);
        if ss.len() != 32 {
            return Err(());
        }
        out.copy_from_slice(ss);
        Ok(out)
    })
    .ok()
}

struct Signing(Ed25519KeyPair);

impl LoadedSigningKey for Signing {
    fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }
    fn sign(&self, msg: &[u8]) -> Signature {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.0.sign(msg).as_ref());
        Signature(out)
    }
}

struct Sealing {
    key: agreement::PrivateKey,
    public: [u8; 32],
}

impl LoadedSealingKey for Sealing {
    fn public(&self) -> [u8; 32] {
        self.public
    }
    fn x25519(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        agree(&self.key, peer)
    }
}
