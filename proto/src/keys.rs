//! Identities and keys (SPEC.md §2).
//!
//! Public values ([`PublicKey`], [`DhPublic`], [`PeripheralId`], [`KeyId`]) are
//! plain data. Secret values ([`IdentityKey`], [`SealingKey`]) are types of their
//! own: no `Clone`, zeroized on drop, and a `Debug` that prints nothing secret.

use core::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;

use crate::label;

/// Identifies one of the backend's key pairs (an Ed25519 signing key and an
/// X25519 sealing key published together as an [`Anchor`](crate::anchor::Anchor)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub u8);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A peripheral's registry identifier: 8 bytes, shown as 16 lowercase hex digits.
///
/// By default derived from the identity key ([`PeripheralId::derive`]), but a
/// factory may assign its own; the backend keeps them unique. The id is only a
/// lookup handle: what authenticates a peripheral is its signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeripheralId(pub [u8; 8]);

impl PeripheralId {
    /// The default id of a peripheral: the first 8 bytes of
    /// SHA-256("vouch/1 peripheral-id" ‖ public key) (SPEC.md §2.2).
    pub fn derive(public: &PublicKey) -> Self {
        let digest = Sha256::new()
            .chain_update(label::PERIPHERAL_ID)
            .chain_update(public.as_bytes())
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }

    /// Parses 16 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 8];
        decode_hex(s, &mut out)?;
        Some(Self(out))
    }
}

impl fmt::Display for PeripheralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for PeripheralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeripheralId({self})")
    }
}

/// An Ed25519 public key (of a peripheral, a gateway or the backend).
///
/// Always a valid curve point: construction checks it (parse, don't validate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Checks that `bytes` are a valid compressed Edwards point and not of
    /// small order (SPEC.md §2.1): a weak key could "sign" anything under
    /// lenient verification, so none is ever accepted as an identity.
    pub fn from_bytes(bytes: [u8; 32]) -> Option<Self> {
        let vk = VerifyingKey::from_bytes(&bytes).ok()?;
        (!vk.is_weak()).then_some(Self(bytes))
    }

    /// The 32 encoded bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A public key a provider derived from a secret key (RFC 8032 §5.1.5):
    /// a valid point of the prime-order subgroup by construction.
    #[cfg(feature = "cortex-m")]
    pub(crate) fn derived(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        decode_hex(s, &mut out)?;
        Self::from_bytes(out)
    }

    /// Verifies a signature with the strict rules of SPEC.md §3.4: canonical
    /// `S`, canonical encodings of `R` and `A` that are not of small order,
    /// the cofactorless equation; on the default provider
    /// ([`provider::verify_strict`](crate::provider::verify_strict) takes
    /// another, with the same answers). Hello signatures have their own rule
    /// (`handshake::hello_signature`).
    pub fn verify_strict(&self, msg: &[u8], sig: &Signature) -> bool {
        crate::provider::verify_strict(&crate::provider::DALEK, &self.0, msg, &sig.0)
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), as openssl writes it.
    #[cfg(feature = "alloc")]
    pub fn to_public_key_pem(&self) -> alloc::string::String {
        use ed25519_dalek::pkcs8::spki::{der::pem::LineEnding, EncodePublicKey};
        // The bytes were validated at construction, so both steps succeed.
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .and_then(|vk| vk.to_public_key_pem(LineEnding::LF).ok())
            .unwrap_or_default()
    }

    /// Parses SubjectPublicKeyInfo PEM.
    #[cfg(feature = "alloc")]
    pub fn from_public_key_pem(pem: &str) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::spki::DecodePublicKey;
        let vk = VerifyingKey::from_public_key_pem(pem).map_err(|_| KeyError::InvalidPem)?;
        Ok(Self(vk.to_bytes()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        Self::from_bytes(bytes).ok_or_else(|| serde::de::Error::custom("invalid Ed25519 point"))
    }
}

/// An X25519 public value: a handshake ephemeral or the backend's sealing key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DhPublic(pub [u8; 32]);

impl DhPublic {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DhPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DhPublic(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(")?;
        write_hex(f, &self.0[..8])?;
        f.write_str("..)")
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// Something that signs with an Ed25519 identity key without handing it out:
/// an [`IdentityKey`] in memory, or a secure element, a TPM or an HSM behind
/// the same trait.
pub trait IdentitySigner {
    /// The public half of the identity.
    fn public_key(&self) -> PublicKey;
    /// Signs `msg` (pure Ed25519, RFC 8032).
    fn sign(&self, msg: &[u8]) -> Signature;
}

/// An Ed25519 identity key held in memory. Zeroized on drop; never printed.
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    /// Generates a fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// Builds the key from its 32-byte RFC 8032 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }

    /// The 32-byte seed, to load the key into a crypto provider. Zeroized
    /// on drop.
    #[cfg(feature = "alloc")]
    pub(crate) fn danger_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`, RFC 8410 §7: the
    /// 32-byte seed, no public key), which `openssl pkey` (OpenSSL 3) and
    /// Python's `cryptography` read; they refuse the v2 form with the public
    /// key appended. The returned string is zeroized on drop.
    #[cfg(feature = "alloc")]
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<alloc::string::String>, KeyError> {
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, KeypairBytes};
        use zeroize::Zeroize;
        let mut v1 = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        let pem = v1.to_pkcs8_pem(LineEnding::LF);
        v1.secret_key.zeroize();
        pem.map_err(|_| KeyError::Encode)
    }

    /// Parses PKCS#8 PEM (v1 or v2, as openssl writes Ed25519 keys).
    #[cfg(feature = "alloc")]
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|_| KeyError::InvalidPem)
    }
}

impl IdentitySigner for IdentityKey {
    fn public_key(&self) -> PublicKey {
        IdentityKey::public_key(self)
    }
    fn sign(&self, msg: &[u8]) -> Signature {
        IdentityKey::sign(self, msg)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityKey(..)")
    }
}

// Both keys zeroize on drop: the dalek types they wrap do (their `zeroize`
// features), which this checks at compile time; the markers say so to
// callers, and `proto/tests/secrets.rs` asserts them.
const _: () = {
    fn zeroized<T: zeroize::ZeroizeOnDrop>() {}
    let _ = zeroized::<SigningKey>;
    let _ = zeroized::<StaticSecret>;
};
impl zeroize::ZeroizeOnDrop for IdentityKey {}
impl zeroize::ZeroizeOnDrop for SealingKey {}

/// id-X25519 (RFC 8410).
#[cfg(feature = "alloc")]
const X25519_OID: ed25519_dalek::pkcs8::ObjectIdentifier =
    ed25519_dalek::pkcs8::ObjectIdentifier::new_unwrap("1.3.101.110");

/// The backend's X25519 static key that opens sealed hellos (SPEC.md §5.1).
/// Zeroized on drop; never printed.
pub struct SealingKey(StaticSecret);

impl SealingKey {
    /// Generates a fresh key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(StaticSecret::random_from_rng(rng))
    }

    /// Builds the key from 32 secret bytes (clamped by X25519 when used).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// The 32 secret bytes, for storage by the backend. Zeroized on drop.
    pub fn danger_to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public value published in the anchor.
    pub fn public(&self) -> DhPublic {
        DhPublic(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// PKCS#8 v1 PEM of the key (RFC 8410: algorithm id-X25519,
    /// 1.3.101.110, the 32 secret bytes as a CurvePrivateKey), as `openssl
    /// pkey` writes and reads X25519 keys. Zeroized on drop.
    #[cfg(feature = "alloc")]
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<alloc::string::String>, KeyError> {
        use ed25519_dalek::pkcs8::spki::der::{pem::LineEnding, Encode};
        use ed25519_dalek::pkcs8::spki::AlgorithmIdentifierRef;
        use ed25519_dalek::pkcs8::{OctetStringRef, PrivateKeyInfoRef, SecretDocument};
        let secret = self.danger_to_bytes();
        let curve_key = OctetStringRef::new(&secret[..]).map_err(|_| KeyError::Encode)?;
        let inner = zeroize::Zeroizing::new(curve_key.to_der().map_err(|_| KeyError::Encode)?);
        let info = PrivateKeyInfoRef::new(
            AlgorithmIdentifierRef {
                oid: X25519_OID,
                parameters: None,
            },
            OctetStringRef::new(&inner).map_err(|_| KeyError::Encode)?,
        );
        SecretDocument::encode_msg(&info)
            .and_then(|doc| doc.to_pem("PRIVATE KEY", LineEnding::LF))
            .map_err(|_| KeyError::Encode)
    }

    /// Parses a PKCS#8 PEM X25519 key (v1, or v2 with the public key, which
    /// must be this key's), as [`to_pkcs8_pem`](Self::to_pkcs8_pem) and
    /// `openssl genpkey -algorithm x25519` write it; anything else is
    /// [`KeyError::InvalidPem`].
    #[cfg(feature = "alloc")]
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::spki::der::Decode;
        use ed25519_dalek::pkcs8::{OctetStringRef, PrivateKeyInfoRef, SecretDocument};
        let (label, doc) = SecretDocument::from_pem(pem).map_err(|_| KeyError::InvalidPem)?;
        if label != "PRIVATE KEY" {
            return Err(KeyError::InvalidPem);
        }
        let info: PrivateKeyInfoRef<'_> = doc.decode_msg().map_err(|_| KeyError::InvalidPem)?;
        if info.algorithm.oid != X25519_OID || info.algorithm.parameters.is_some() {
            return Err(KeyError::InvalidPem);
        }
        let curve_key = <&OctetStringRef>::from_der(info.private_key.as_bytes())
            .map_err(|_| KeyError::InvalidPem)?;
        let bytes: [u8; 32] = curve_key
            .as_bytes()
            .try_into()
            .map_err(|_| KeyError::InvalidPem)?;
        let key = Self::from_bytes(bytes);
        // A v2 file also holds the public key: it must be this key's (a file
        // that disagrees with itself is damaged or forged, never guessed at).
        if let Some(public) = &info.public_key {
            if public.as_bytes() != Some(key.public().as_bytes().as_slice()) {
                return Err(KeyError::InvalidPem);
            }
        }
        Ok(key)
    }

    pub(crate) fn dh(&self, peer: &DhPublic) -> x25519_dalek::SharedSecret {
        self.0
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0))
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// Errors of key import and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM is not a PKCS#8 / SPKI key of the expected algorithm
    /// (Ed25519 for identities, X25519 for sealing keys).
    #[error("not a valid PKCS#8 or SPKI PEM key of the expected algorithm")]
    InvalidPem,
    /// The key could not be encoded.
    #[error("key encoding failed")]
    Encode,
}

pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

pub(crate) fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return None;
    }
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secret_material() {
        let seed = [7u8; 32];
        let key = IdentityKey::from_seed(&seed);
        let dbg = alloc::format!("{key:?}");
        assert_eq!(dbg, "IdentityKey(..)");
        let sk = SealingKey::from_bytes([9u8; 32]);
        assert_eq!(alloc::format!("{sk:?}"), "SealingKey(..)");
    }

    #[test]
    fn small_order_keys_are_not_identities() {
        // The identity point and a point of order 8 are valid encodings.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(VerifyingKey::from_bytes(&identity).is_ok());
        assert_eq!(PublicKey::from_bytes(identity), None);
        assert_eq!(PublicKey::from_bytes([0u8; 32]), None);
        let real = IdentityKey::from_seed(&[2u8; 32]).public_key();
        assert_eq!(PublicKey::from_bytes(*real.as_bytes()), Some(real));
    }

    #[test]
    fn peripheral_id_hex_round_trip() {
        let key = IdentityKey::from_seed(&[1u8; 32]);
        let id = PeripheralId::derive(&key.public_key());
        let s = alloc::format!("{id}");
        assert_eq!(s.len(), 16);
        assert_eq!(PeripheralId::from_hex(&s), Some(id));
        assert_eq!(PeripheralId::from_hex("zz"), None);
    }

    /// RFC 8410 §7, the form OpenSSL 3 reads: `SEQUENCE { INTEGER 0,
    /// SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }`
    /// (48 bytes), with no `[1]` public key (version 1, which OpenSSL 3
    /// refuses as "unsupported").
    #[test]
    fn pkcs8_pem_is_version_1_without_the_public_key() {
        use ed25519_dalek::pkcs8::spki::der::pem;
        let key = IdentityKey::from_seed(&[3u8; 32]);
        let pem_text = key.to_pkcs8_pem().unwrap();
        let (label, der) = pem::decode_vec(pem_text.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        let mut expected = alloc::vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        expected.extend_from_slice(&[3u8; 32]);
        assert_eq!(der, expected);
    }

    /// The X25519 form of RFC 8410 §7 (OID 1.3.101.110), what `openssl
    /// genpkey -algorithm x25519` writes; an Ed25519 key is not one.
    #[test]
    fn sealing_key_pkcs8_pem_is_rfc_8410_and_round_trips() {
        use ed25519_dalek::pkcs8::spki::der::pem;
        let key = SealingKey::from_bytes([5u8; 32]);
        let pem_text = key.to_pkcs8_pem().unwrap();
        let (label, der) = pem::decode_vec(pem_text.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        let mut expected = alloc::vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22,
            0x04, 0x20,
        ];
        expected.extend_from_slice(&[5u8; 32]);
        assert_eq!(der, expected);
        assert_eq!(
            SealingKey::from_pkcs8_pem(&pem_text).unwrap().public(),
            key.public()
        );
        let ed = IdentityKey::from_seed(&[5u8; 32]).to_pkcs8_pem().unwrap();
        assert!(matches!(
            SealingKey::from_pkcs8_pem(&ed),
            Err(KeyError::InvalidPem)
        ));
        assert!(SealingKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }

    /// A version 2 file (RFC 5958, the public key in `[1]`) is read when
    /// its public key is the private key's, and refused when it is not, for
    /// both key types.
    #[test]
    fn a_version_2_file_whose_public_key_is_another_keys_is_refused() {
        use ed25519_dalek::pkcs8::spki::der::pem::{self, LineEnding};
        fn v2(oid_last: u8, seed: &[u8; 32], public: &[u8; 32]) -> alloc::string::String {
            let mut der = alloc::vec![
                0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, oid_last, 0x04,
                0x22, 0x04, 0x20,
            ];
            der.extend_from_slice(seed);
            der.extend_from_slice(&[0x81, 0x21, 0x00]);
            der.extend_from_slice(public);
            pem::encode_string("PRIVATE KEY", LineEnding::LF, &der).unwrap()
        }
        let seed = [7u8; 32];
        let other = [8u8; 32];

        let sealing = SealingKey::from_bytes(seed);
        let good = v2(0x6e, &seed, sealing.public().as_bytes());
        assert_eq!(
            SealingKey::from_pkcs8_pem(&good).unwrap().public(),
            sealing.public()
        );
        let wrong = SealingKey::from_bytes(other).public();
        assert!(matches!(
            SealingKey::from_pkcs8_pem(&v2(0x6e, &seed, wrong.as_bytes())),
            Err(KeyError::InvalidPem)
        ));

        let identity = IdentityKey::from_seed(&seed);
        let good = v2(0x70, &seed, identity.public_key().as_bytes());
        assert_eq!(
            IdentityKey::from_pkcs8_pem(&good).unwrap().public_key(),
            identity.public_key()
        );
        let wrong = IdentityKey::from_seed(&other).public_key();
        assert!(matches!(
            IdentityKey::from_pkcs8_pem(&v2(0x70, &seed, wrong.as_bytes())),
            Err(KeyError::InvalidPem)
        ));
    }

    #[test]
    fn pkcs8_pem_round_trip() {
        let key = IdentityKey::from_seed(&[3u8; 32]);
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = IdentityKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let spki = key.public_key().to_public_key_pem();
        assert_eq!(
            PublicKey::from_public_key_pem(&spki).unwrap(),
            key.public_key()
        );
        assert_eq!(
            IdentityKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .err(),
            Some(KeyError::InvalidPem)
        );
    }
}
