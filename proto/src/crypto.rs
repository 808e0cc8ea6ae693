//! The primitives of suite 1 and the key schedule's building blocks
//! (SPEC.md §3). Internal: callers use the handshake and session types.
//!
//! The curve operations and the hash-based building blocks are never inlined
//! (`#[inline(never)]`): on a microcontroller their stack frames (up to a few
//! KiB for a curve operation) must not add up in their callers' frames, and
//! the call costs nothing next to the work. See `peripheral/firmware`.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
#[cfg(feature = "alloc")]
use x25519_dalek::{PublicKey as XPublic, ReusableSecret, SharedSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::PeerMisbehaved;
use crate::keys::DhPublic;

/// Length of an AEAD tag.
pub(crate) const TAG_LEN: usize = 16;

/// A 32-byte symmetric secret. No `Clone`, no `Debug` output, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Secret32(pub(crate) [u8; 32]);

impl core::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret32(..)")
    }
}

/// SHA-256 over the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HKDF-SHA-256 Extract (RFC 5869 §2.2) over the concatenation of `ikm`.
#[inline(never)]
pub(crate) fn extract(salt: &[u8], ikm: &[&[u8]]) -> Hkdf<Sha256> {
    let mut ext = hkdf::HkdfExtract::<Sha256>::new(Some(salt));
    for part in ikm {
        ext.input_ikm(part);
    }
    ext.finalize().1
}

/// HKDF-SHA-256 Expand to 32 bytes.
#[inline(never)]
pub(crate) fn expand32(prk: &Hkdf<Sha256>, label: &[u8]) -> Secret32 {
    let mut out = [0u8; 32];
    // 32 bytes is far below the 255 * 32 limit of HKDF-Expand.
    let _ = prk.expand(label, &mut out);
    Secret32(out)
}

/// HKDF-SHA-256 Expand to `N` bytes (`N` ≤ 64, well within the limit).
pub(crate) fn expand<const N: usize>(prk: &Hkdf<Sha256>, label: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let _ = prk.expand(label, &mut out);
    out
}

/// HKDF-SHA-256 Expand with a key used directly as the PRK (for ratchets).
pub(crate) fn expand_from_key(key: &Secret32, label: &[u8]) -> Secret32 {
    let mut out = [0u8; 32];
    // A 32-byte PRK is exactly HashLen, so from_prk accepts it.
    if let Ok(prk) = Hkdf::<Sha256>::from_prk(&key.0) {
        let _ = prk.expand(label, &mut out);
    }
    Secret32(out)
}

/// HMAC-SHA-256 truncated to 16 bytes.
#[inline(never)]
pub(crate) fn hmac16(key: &Secret32, parts: &[&[u8]]) -> [u8; 16] {
    // HMAC pads a key shorter than the block with zeros (RFC 2104 §2), so a
    // 32-byte key zero-extended to the 64-byte block is the same key, and this
    // constructor cannot fail.
    let mut block = zeroize::Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(&key.0);
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new(&(*block).into());
    for p in parts {
        mac.update(p);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Constant-time equality of two byte strings of equal length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// ChaCha20 (RFC 8439) keystream XOR with an all-zero nonce. Only for keys that
/// are used exactly once (SPEC.md §3.3).
#[inline(never)]
pub(crate) fn stream_xor(key: &Secret32, buf: &mut [u8]) {
    let mut cipher = chacha20::ChaCha20::new(&key.0.into(), &[0u8; 12].into());
    cipher.apply_keystream(buf);
}

/// The 96-bit AEAD nonce for a 64-bit record counter (SPEC.md §7.2).
pub(crate) fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// ChaCha20-Poly1305 seal in place; returns the tag.
#[inline(never)]
pub(crate) fn aead_seal(
    key: &Secret32,
    counter: u64,
    aad: &[&[u8]],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    let cipher = ChaCha20Poly1305::new(&key.0.into());
    let aad = AadBuf::new(aad);
    let n = nonce(counter);
    // Encryption of a buffer this small cannot fail (the only error is a length
    // beyond 2^38 bytes).
    cipher
        .encrypt_inout_detached(&n.into(), aad.as_slice(), buf.into())
        .map(Into::into)
        .unwrap_or([0u8; TAG_LEN])
}

/// ChaCha20-Poly1305 open in place. On failure the buffer content is unspecified.
#[inline(never)]
pub(crate) fn aead_open(
    key: &Secret32,
    counter: u64,
    aad: &[&[u8]],
    buf: &mut [u8],
    tag: &[u8],
) -> bool {
    let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
        return false;
    };
    let cipher = ChaCha20Poly1305::new(&key.0.into());
    let aad = AadBuf::new(aad);
    let n = nonce(counter);
    cipher
        .decrypt_inout_detached(&n.into(), aad.as_slice(), buf.into(), &tag.into())
        .is_ok()
}

/// AAD is at most a header and a transcript hash: concatenate it on the stack.
struct AadBuf {
    buf: [u8; 64],
    len: usize,
}

impl AadBuf {
    fn new(parts: &[&[u8]]) -> Self {
        let mut buf = [0u8; 64];
        let mut len = 0;
        for p in parts {
            let end = (len + p.len()).min(64);
            buf[len..end].copy_from_slice(&p[..end - len]);
            len = end;
        }
        debug_assert!(parts.iter().map(|p| p.len()).sum::<usize>() <= 64);
        Self { buf, len }
    }
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// X25519 with a check that the result is contributory: a low-order peer value
/// would make the shared secret all zeros (SPEC.md §3.2). The gateway's
/// path (the peripheral's is [`dh_peripheral`]); the check is the
/// providers' one ([`all_zero`]).
#[cfg(feature = "alloc")]
#[inline(never)]
pub(crate) fn dh(secret: &ReusableSecret, peer: &DhPublic) -> Result<SharedSecret, PeerMisbehaved> {
    let ss = secret.diffie_hellman(&XPublic::from(peer.0));
    if all_zero(ss.as_bytes()) {
        Err(PeerMisbehaved::WeakKeyShare)
    } else {
        Ok(ss)
    }
}

/// Whether a Diffie–Hellman result is all zeros (SPEC.md §3.2), in
/// constant time: the one check every X25519 of the protocol goes through.
pub(crate) fn all_zero(ss: &[u8; 32]) -> bool {
    bool::from(ss.ct_eq(&[0u8; 32]))
}

/// The public value of an ephemeral secret (the gateway's).
#[cfg(feature = "alloc")]
#[inline(never)]
pub(crate) fn public_of(secret: &ReusableSecret) -> DhPublic {
    DhPublic(XPublic::from(secret).to_bytes())
}

/// The peripheral's ephemeral X25519 secret: 32 random bytes, clamped by
/// X25519 itself (RFC 7748 §5). No `Clone`, no `Debug` output, zeroized on
/// drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Ephemeral([u8; 32]);

/// A Diffie–Hellman result that passed the check of SPEC.md §3.2.
/// Zeroized on drop.
pub(crate) struct Shared(zeroize::Zeroizing<[u8; 32]>);

impl Shared {
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The peripheral's fresh X25519 key pair from `rng` (32 bytes drawn, as
/// x25519-dalek draws them), on the peripheral's provider
/// ([`provider::PERIPHERAL`](crate::provider::PERIPHERAL)).
#[inline(never)]
pub(crate) fn keygen_peripheral<R: CryptoRng + ?Sized>(rng: &mut R) -> (Ephemeral, DhPublic) {
    use crate::provider::CryptoProvider as _;
    let mut secret = Ephemeral([0u8; 32]);
    rng.fill_bytes(&mut secret.0);
    let public = DhPublic(crate::provider::PERIPHERAL.x25519_base(&secret.0));
    (secret, public)
}

/// X25519 on the peripheral's provider, with the check of SPEC.md §3.2.
#[inline(never)]
pub(crate) fn dh_peripheral(secret: &Ephemeral, peer: &DhPublic) -> Result<Shared, PeerMisbehaved> {
    use crate::provider::CryptoProvider as _;
    crate::provider::contributory(crate::provider::PERIPHERAL.x25519(&secret.0, &peer.0))
        .map(Shared)
}
