//! The rule for hello signatures (SPEC.md §3.4, §5.3 step 6): Ed25519 with
//! the cofactored equation and the strict encoding checks, alone and in
//! batches that give each signature exactly its answer alone.
//!
//! A hello signature `R ‖ S` by key `A` over statement `M` is valid if and
//! only if
//!
//! 1. `S < L`;
//! 2. `A` is the canonical encoding (`y < p`) of a curve point that is not of
//!    small order;
//! 3. `R` is the canonical encoding of a curve point that is not of small
//!    order;
//! 4. `[8][S]B = [8]R + [8][k]A`, with `k = SHA-512(R ‖ A ‖ M) mod L` over the
//!    encodings as received.
//!
//! (A point whose `x` is 0 with the sign bit set is also a non-canonical
//! encoding; the only such points, `(0, ±1)`, are of small order, so rules 2
//! and 3 refuse them without looking at the sign bit.)
//!
//! This is ZIP-215 with the encoding checks of the strict rule added back:
//! every signature an honest signer makes passes both this rule and the
//! cofactorless strict rule, and what this rule accepts beyond the strict
//! one is a signature whose `R` or `A` carries a small-order component,
//! which only the holder of the private key can make and which gains it
//! nothing. Why hellos take this rule and not the strict one: with the
//! cofactor multiplied in, small-order components vanish from the equation,
//! so a batch built from random linear combinations judges every signature
//! as it is judged alone (but for a chance of 2^-128 per batch, see
//! [`verify_batch`]). The cofactorless equation cannot give that: a
//! small-order component of `R` or `A` makes the batch hold or fail with the
//! coefficient, so the batch and the signature alone disagree about half
//! the time or more.
//!
//! Every other signature of the protocol (vouches, anchor updates) is
//! verified alone, with the strict rule of SPEC.md §3.4
//! ([`PublicKey::verify_strict`]).

use core::fmt;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha512};

use crate::keys::{PublicKey, Signature};

/// Verifies a hello signature by the rule of this module (SPEC.md §3.4).
/// No heap; about one double-base scalar multiplication.
pub fn verify(key: &PublicKey, statement: &[u8], signature: &Signature) -> bool {
    verify_encoded(key.as_bytes(), statement, &signature.0)
}

/// [`verify`] on the raw encodings.
fn verify_encoded(key: &[u8; 32], statement: &[u8], signature: &[u8; 64]) -> bool {
    Checked::new(&DecodedKey::from_bytes(key), statement, signature).is_some_and(|c| c.holds())
}

/// A public key decoded once for the hello rule: rule 2 checked, the point
/// kept. A backend keeps one per enrolled device, so that each hello it
/// verifies skips the decompression of the key (a field exponentiation).
/// The answers are those of [`verify`] with the key's bytes.
#[derive(Clone, Copy)]
pub struct DecodedKey {
    bytes: [u8; 32],
    /// `−A`, or `None` if the bytes fail rule 2 (no signature verifies).
    minus_a: Option<EdwardsPoint>,
}

impl DecodedKey {
    /// Decodes and checks `key` (rule 2 of SPEC.md §3.4).
    pub fn new(key: &PublicKey) -> Self {
        Self::from_bytes(key.as_bytes())
    }

    fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            bytes: *key,
            minus_a: strict_point(key).map(|a| -a),
        }
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Whether the key passes rule 2 (a canonical encoding of a point not of
    /// small order); if not, no signature by it verifies.
    pub fn is_strict(&self) -> bool {
        self.minus_a.is_some()
    }

    /// [`verify`] with this key.
    pub fn verify(&self, statement: &[u8], signature: &Signature) -> bool {
        Checked::new(self, statement, &signature.0).is_some_and(|c| c.holds())
    }
}

impl fmt::Debug for DecodedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecodedKey(")?;
        crate::keys::write_hex(f, &self.bytes)?;
        f.write_str(")")
    }
}

/// Verifies many hello signatures, each `(key, statement, signature)`, and
/// answers each exactly as [`verify`] answers it alone, whatever the others
/// are.
///
/// Each item's encodings are checked first (rules 1 to 3, and the points
/// decoded); an item that fails them is refused and kept out of the batch.
/// The rest are checked with one multiscalar multiplication,
/// `[8](Σ zᵢ([Sᵢ]B − [kᵢ]Aᵢ − Rᵢ)) = 0`, with 128-bit coefficients `zᵢ`
/// derived with SHA-512 from every value of the equation (each `Rᵢ`, `Aᵢ`,
/// `kᵢ` and `Sᵢ`; `Mᵢ` enters only through `kᵢ`), like a Fiat–Shamir
/// challenge: no randomness is needed, and none can be chosen after the
/// coefficients are known. If every item holds alone, the batch holds. If
/// one does not, its `[8]([Sᵢ]B − [kᵢ]Aᵢ − Rᵢ)` is a nonzero point of the
/// prime-order subgroup (multiplying by 8 removed any small-order part),
/// and the sum is zero for at most one value of its `zᵢ` modulo `L` given
/// the others: a chance of at most 2^-128 per batch. If the batch fails,
/// every item in it is verified alone, so one bad signature costs its batch
/// a second pass but never changes another item's answer.
#[cfg(feature = "batch")]
pub fn verify_batch(items: &[(&PublicKey, &[u8], &Signature)]) -> alloc::vec::Vec<bool> {
    use alloc::vec::Vec;
    let keys: Vec<DecodedKey> = items
        .iter()
        .map(|(key, _, _)| DecodedKey::new(key))
        .collect();
    let decoded: Vec<(&DecodedKey, &[u8], &Signature)> = keys
        .iter()
        .zip(items)
        .map(|(key, (_, statement, signature))| (key, *statement, *signature))
        .collect();
    verify_batch_decoded(&decoded)
}

/// [`verify_batch`] with keys decoded beforehand ([`DecodedKey`]): the same
/// answers, without a decompression per key.
#[cfg(feature = "batch")]
pub fn verify_batch_decoded(items: &[(&DecodedKey, &[u8], &Signature)]) -> alloc::vec::Vec<bool> {
    use alloc::vec::Vec;
    let checked: Vec<Option<Checked>> = items
        .iter()
        .map(|(key, statement, signature)| Checked::new(key, statement, &signature.0))
        .collect();
    let batch: Vec<&Checked> = checked.iter().flatten().collect();
    // One item alone is cheaper as a single verification.
    let batch_holds = batch.len() > 1 && batch_holds(&batch);
    checked
        .iter()
        .map(|c| c.as_ref().is_some_and(|c| batch_holds || c.holds()))
        .collect()
}

/// `[8](Σ zᵢ([Sᵢ]B − [kᵢ]Aᵢ − Rᵢ))` is the identity, with the coefficients
/// derived from the items (see [`verify_batch`]).
#[cfg(feature = "batch")]
fn batch_holds(items: &[&Checked]) -> bool {
    use alloc::vec::Vec;
    use core::iter::once;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::traits::VartimeMultiscalarMul;

    let mut transcript = Sha512::new();
    transcript.update(b"vouch/1 hello batch");
    transcript.update((items.len() as u64).to_le_bytes());
    for c in items {
        transcript.update(c.r_bytes);
        transcript.update(c.a_bytes);
        transcript.update(c.k.as_bytes());
        transcript.update(c.s.as_bytes());
    }
    let seed = transcript.finalize();
    // Four 128-bit coefficients from each SHA-512(seed ‖ block).
    let z: Vec<Scalar> = (0..items.len().div_ceil(4) as u64)
        .flat_map(|block| {
            let out: [u8; 64] = Sha512::new()
                .chain_update(seed)
                .chain_update(block.to_le_bytes())
                .finalize()
                .into();
            (0..4).map(move |j| {
                let mut z = [0u8; 32];
                z[..16].copy_from_slice(&out[16 * j..16 * j + 16]);
                Scalar::from_bytes_mod_order(z)
            })
        })
        .take(items.len())
        .collect();
    let b: Scalar = items.iter().zip(&z).map(|(c, z)| z * c.s).sum();
    let sum = EdwardsPoint::vartime_multiscalar_mul(
        once(b)
            .chain(items.iter().zip(&z).map(|(c, z)| z * c.k))
            .chain(z.iter().map(|z| -z)),
        once(&ED25519_BASEPOINT_POINT)
            .chain(items.iter().map(|c| &c.minus_a))
            .chain(items.iter().map(|c| &c.r)),
    );
    sum.mul_by_cofactor().is_identity()
}

/// One signature whose encodings pass rules 1 to 3, decoded: what the
/// equation of rule 4 needs.
struct Checked {
    /// `−A`, so that `[S]B + [k](−A)` is one double-base multiplication.
    minus_a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    /// `SHA-512(R ‖ A ‖ M) mod L`.
    k: Scalar,
    #[cfg(feature = "batch")]
    a_bytes: [u8; 32],
    #[cfg(feature = "batch")]
    r_bytes: [u8; 32],
}

impl Checked {
    fn new(key: &DecodedKey, statement: &[u8], signature: &[u8; 64]) -> Option<Self> {
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&signature[..32]);
        let mut s = [0u8; 32];
        s.copy_from_slice(&signature[32..]);
        // Rule 1.
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
        // Rules 2 and 3.
        let minus_a = key.minus_a?;
        let r = strict_point(&r_bytes)?;
        let hram: [u8; 64] = Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key.bytes)
            .chain_update(statement)
            .finalize()
            .into();
        Some(Self {
            minus_a,
            r,
            s,
            k: Scalar::from_bytes_mod_order_wide(&hram),
            #[cfg(feature = "batch")]
            a_bytes: key.bytes,
            #[cfg(feature = "batch")]
            r_bytes,
        })
    }

    /// Rule 4: `[8]([S]B − [k]A − R)` is the identity.
    fn holds(&self) -> bool {
        let sb_minus_ka =
            EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &self.minus_a, &self.s);
        (sb_minus_ka - self.r).mul_by_cofactor().is_identity()
    }
}

/// The point, if `bytes` are its canonical encoding and it is not of small
/// order (SPEC.md §3.4 rules 2 and 3; also the strict rule's check,
/// [`crate::provider::verify_strict`]).
pub(crate) fn strict_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !canonical_y(bytes) {
        return None;
    }
    let point = CompressedEdwardsY(*bytes).decompress()?;
    (!point.is_small_order()).then_some(point)
}

/// `y < p = 2^255 − 19`, with `y` the encoding less its top (sign) bit. The
/// encodings with `y ≥ p` are exactly `ed…ff7f` to `ff…ff7f`, with or
/// without the sign bit.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f == 0x7f;
    let middle = bytes[1..31].iter().all(|&b| b == 0xff);
    !(top && middle && bytes[0] >= 0xed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKey;

    /// SPEC.md §3.4 rule 2, checked on the encodings themselves (no
    /// signature can test it: a valid one under a non-canonical A needs A's
    /// discrete logarithm, and a non-canonical R never equals the encoding
    /// the equation recomputes): every `y = p + k` encoding (with and
    /// without the sign bit) is refused, among them points of large order
    /// that a decoder reducing `y` modulo `p` accepts, while the canonical
    /// encoding of the same point is accepted.
    #[test]
    fn non_canonical_encodings_are_refused_even_of_large_order_points() {
        let mut large = 0;
        for k in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut y = [0xffu8; 32];
                y[0] = 0xed + k;
                y[31] = 0x7f | sign;
                assert!(strict_point(&y).is_none(), "y = p + {k}, sign {sign:#x}");
                if let Some(point) = CompressedEdwardsY(y).decompress() {
                    if !point.is_small_order() {
                        large += 1;
                        assert!(strict_point(point.compress().as_bytes()).is_some());
                    }
                }
            }
        }
        assert!(
            large > 0,
            "some y = p + k decodes (mod p) to a point of large order"
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// The secret scalar of `IdentityKey::from_seed(seed)` (RFC 8032 §5.1.5).
    fn secret_scalar(seed: &[u8; 32]) -> Scalar {
        let h: [u8; 64] = Sha512::digest(seed).into();
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        Scalar::from_bytes_mod_order(a)
    }

    /// `R` given by its encoding, `S = k·a`: then `[S]B − [k]A = 0`, and
    /// when `R` is of small order the cofactored equation holds, so only
    /// the encoding checks can refuse the signature.
    fn with_r(r: [u8; 32], key: &[u8; 32], a: &Scalar, m: &[u8]) -> [u8; 64] {
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r)
                .chain_update(key)
                .chain_update(m)
                .finalize()
                .into(),
        );
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice((k * a).as_bytes());
        sig
    }

    #[test]
    fn non_canonical_and_small_order_encodings_are_refused() {
        let seed = [7u8; 32];
        let key = IdentityKey::from_seed(&seed);
        let a_bytes = *key.public_key().as_bytes();
        let a = secret_scalar(&seed);
        let m = b"a hello statement";
        let honest = key.sign(m).0;
        assert!(verify_encoded(&a_bytes, m, &honest));

        // Small-order R, canonical and not: the cofactored equation holds
        // for each, only rule 3 refuses them.
        let identity = hex32("0100000000000000000000000000000000000000000000000000000000000000");
        let small_order_r = [
            identity,
            // The identity with y = p + 1.
            hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            // The identity with the sign bit of x = 0 set.
            hex32("0100000000000000000000000000000000000000000000000000000000000080"),
            // (0, −1), order 2, and the same with the sign bit of x = 0 set.
            hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
            // Order 4 (y = 0), and y = p (not canonical, the same point).
            hex32("0000000000000000000000000000000000000000000000000000000000000000"),
            hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            // Order 8.
            hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        ];
        for r in small_order_r {
            let sig = with_r(r, &a_bytes, &a, m);
            let point = CompressedEdwardsY(r).decompress().unwrap();
            assert!(point.is_small_order());
            let ck = Checked {
                minus_a: -CompressedEdwardsY(a_bytes).decompress().unwrap(),
                r: point,
                s: Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap(),
                k: Scalar::from_bytes_mod_order_wide(
                    &Sha512::new()
                        .chain_update(r)
                        .chain_update(a_bytes)
                        .chain_update(m)
                        .finalize()
                        .into(),
                ),
                #[cfg(feature = "batch")]
                a_bytes,
                #[cfg(feature = "batch")]
                r_bytes: r,
            };
            assert!(ck.holds(), "the equation alone accepts R = {r:02x?}");
            assert!(!verify_encoded(&a_bytes, m, &sig), "R = {r:02x?}");
        }

        // S ≥ L: S + L is the same scalar, refused by rule 1.
        let mut s_plus_l = honest;
        let l = Scalar::ZERO - Scalar::ONE; // L − 1
        let mut carry = 1u16; // + 1 below makes it L
        for (s, l) in s_plus_l[32..].iter_mut().zip(l.as_bytes()) {
            let t = u16::from(*s) + u16::from(*l) + carry;
            *s = t as u8;
            carry = t >> 8;
        }
        assert!(!verify_encoded(&a_bytes, m, &s_plus_l));
        // S with the top bits set.
        let mut s_high = honest;
        s_high[63] |= 0xe0;
        assert!(!verify_encoded(&a_bytes, m, &s_high));

        // A non-canonical R of large order (y = p + 5): refused before any
        // arithmetic.
        let y5 = hex32("f2ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        assert!(!CompressedEdwardsY(y5)
            .decompress()
            .unwrap()
            .is_small_order());
        assert!(!canonical_y(&y5));
        let mut sig = honest;
        sig[..32].copy_from_slice(&y5);
        assert!(!verify_encoded(&a_bytes, m, &sig));

        // Keys: a small-order A with R = the identity and S = 0 meets the
        // equation for every message; so does a non-canonical encoding of
        // the identity. Both are refused by rule 2.
        let mut zero_sig = [0u8; 64];
        zero_sig[..32].copy_from_slice(&identity);
        for key in [
            identity,
            hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            small_order_r[7],
        ] {
            assert!(!verify_encoded(&key, m, &zero_sig), "A = {key:02x?}");
        }
        // A non-canonical key of large order.
        assert!(!verify_encoded(&y5, m, &honest));

        // Every encoding with y ≥ p, and the first with y < p.
        let mut y = [0xffu8; 32];
        y[31] = 0x7f;
        for low in 0xed..=0xff {
            y[0] = low;
            assert!(!canonical_y(&y));
            y[31] = 0xff;
            assert!(!canonical_y(&y));
            y[31] = 0x7f;
        }
        y[0] = 0xec;
        assert!(canonical_y(&y));
        y[0] = 0xed;
        y[30] = 0xfe;
        assert!(canonical_y(&y));
    }

    #[cfg(feature = "batch")]
    #[test]
    fn an_empty_or_one_item_batch_answers_as_alone() {
        let key = IdentityKey::from_seed(&[3; 32]);
        let pk = key.public_key();
        let sig = key.sign(b"m");
        assert!(verify_batch(&[]).is_empty());
        assert_eq!(verify_batch(&[(&pk, b"m", &sig)]), [true]);
        assert_eq!(verify_batch(&[(&pk, b"n", &sig)]), [false]);
        assert_eq!(
            verify_batch(&[(&pk, b"m", &sig), (&pk, b"n", &sig), (&pk, b"m", &sig)]),
            [true, false, true]
        );
    }
}
