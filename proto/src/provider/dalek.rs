//! The dalek crates as a provider: the default, and the peripheral's on
//! every host (`no_std`, no heap, no C). The firmware's is `cortex_m`.

use zeroize::Zeroizing;

use super::{CryptoProvider, StrictInput};

/// The dalek crates (curve25519-dalek, x25519-dalek, ed25519-dalek).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dalek;

impl CryptoProvider for Dalek {
    fn name(&self) -> &'static str {
        "dalek"
    }

    fn x25519(&self, secret: &[u8; 32], peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        Some(Zeroizing::new(x25519_dalek::x25519(*secret, *peer)))
    }

    fn x25519_base(&self, secret: &[u8; 32]) -> [u8; 32] {
        // The fixed-base multiplication (with the precomputed tables of the
        // feature `fast`), as x25519-dalek's `PublicKey::from` computes it.
        curve25519_dalek::EdwardsPoint::mul_base_clamped(*secret)
            .to_montgomery()
            .to_bytes()
    }

    fn ed25519_equation(&self, input: &StrictInput<'_>) -> bool {
        input.equation_holds()
    }

    #[cfg(feature = "alloc")]
    fn signing_key(
        &self,
        seed: &[u8; 32],
    ) -> Result<alloc::boxed::Box<dyn super::LoadedSigningKey>, super::ProviderError> {
        Ok(alloc::boxed::Box::new(loaded::Signing(
            ed25519_dalek::SigningKey::from_bytes(seed),
        )))
    }

    #[cfg(feature = "alloc")]
    fn sealing_key(
        &self,
        secret: &[u8; 32],
    ) -> Result<alloc::boxed::Box<dyn super::LoadedSealingKey>, super::ProviderError> {
        Ok(alloc::boxed::Box::new(loaded::Sealing(
            x25519_dalek::StaticSecret::from(*secret),
        )))
    }
}

#[cfg(feature = "alloc")]
mod loaded {
    use ed25519_dalek::Signer as _;
    use zeroize::Zeroizing;

    use crate::keys::Signature;
    use crate::provider::{LoadedSealingKey, LoadedSigningKey};

    /// Zeroized on drop (ed25519-dalek's `zeroize` feature).
    pub(super) struct Signing(pub(super) ed25519_dalek::SigningKey);

    impl LoadedSigningKey for Signing {
        fn public_key(&self) -> [u8; 32] {
            self.0.verifying_key().to_bytes()
        }
        fn sign(&self, msg: &[u8]) -> Signature {
            Signature(self.0.sign(msg).to_bytes())
        }
    }

    /// Zeroized on drop (x25519-dalek's `zeroize` feature).
    pub(super) struct Sealing(pub(super) x25519_dalek::StaticSecret);

    impl LoadedSealingKey for Sealing {
        fn public(&self) -> [u8; 32] {
            x25519_dalek::PublicKey::from(&self.0).to_bytes()
        }
        fn x25519(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
            let ss = self.0.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
            Some(Zeroizing::new(*ss.as_bytes()))
        }
    }
}
