//! A provider for Cortex-M4 and Cortex-M33 (feature `cortex-m`): X25519,
//! Ed25519 signing and the verification equation on the field arithmetic
//! of `field` (radix 2^32, eight limbs, the limb products being the
//! multiply-accumulates that these cores do in one instruction), in place
//! of curve25519-dalek's radix-2^25.5 arithmetic that is written for no core
//! in particular. It is portable Rust, so the host's tests run the same code
//! (`tests/providers.rs`) that the firmware runs under QEMU, except the
//! field multiplication: on bare-metal Arm that is the Thumb-2 assembly of
//! `arm.rs` (written by `gen_arm.py`), which computes the same limbs as the
//! Rust `field::mul` and is checked equal to it under QEMU by the firmware's
//! `field-check` (`check_field_assembly`, on that target only).
//!
//! What is here:
//!
//! - **X25519** (RFC 7748): the Montgomery ladder (`ladder`), 255 steps of
//!   constant-time conditional swaps, additions and multiplications, then
//!   one inversion by a fixed addition chain.
//! - **Fixed-base multiplication** (`mul_base_point`): `[s]B` from signed
//!   radix-16 digits and 8 tables of 8 affine multiples of B (`table.rs`,
//!   written by `gen_table.py`), 64 constant-time lookups and mixed
//!   additions, 28 doublings. X25519 key generation takes the u-coordinate
//!   of `[k]B` (RFC 7748 §4.1: u = (1 + y)/(1 − y)), which is X25519(k, 9).
//! - **Ed25519 signing** ([`SigningKey`], RFC 8032 §5.1.6): `R = [r]B` by the
//!   fixed-base multiplication; the scalars (`r`, `k`, `S`) are
//!   curve25519-dalek's and SHA-512 is the `sha2` crate's, as in
//!   ed25519-dalek, so the signatures are the same bytes.
//! - **The equation of SPEC.md §3.4 rule 4** (the strict encoding rules
//!   stay in [`verify_strict`](super::verify_strict), before every
//!   provider): `[S]B − [k]A` by a variable-time double-scalar
//!   multiplication (width-5 NAF, twisted Edwards extended coordinates, B's
//!   odd multiples from `table.rs`). Every input of it is public (the key,
//!   the message, the signature).
//!
//! Constant time: the secret-dependent paths (the ladder, the fixed-base
//! multiplication and its digits and lookups, the inversion, the
//! encodings, the field arithmetic) have no branch and no memory index that
//! depends on a secret: the ladder's bit and the table entries are selected
//! by masks (`field::cswap`, `field::cmov`), every table entry is read,
//! the exponent chains are fixed, carries are added as numbers. The
//! Cortex-M4's and M33's multiply instructions take a fixed number of
//! cycles. The verification is variable-time by design, on public data only.

#[cfg(all(target_arch = "arm", target_os = "none"))]
mod arm;
mod field;
mod table;

use curve25519_dalek::scalar::Scalar;
use field::Fe;
use sha2::{Digest, Sha512};
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{CryptoProvider, StrictInput};
use crate::keys::{IdentitySigner, PublicKey, Signature};

/// The Cortex-M provider: the curve operations of this module on its
/// radix-2^32 field arithmetic.
#[derive(Debug, Clone, Copy, Default)]
pub struct CortexM;

impl CryptoProvider for CortexM {
    fn name(&self) -> &'static str {
        "cortex-m"
    }

    fn x25519(&self, secret: &[u8; 32], peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        Some(x25519(secret, peer))
    }

    fn x25519_base(&self, secret: &[u8; 32]) -> [u8; 32] {
        x25519_base(secret)
    }

    fn ed25519_equation(&self, input: &StrictInput<'_>) -> bool {
        equation(input)
    }

    #[cfg(feature = "alloc")]
    fn signing_key(
        &self,
        seed: &[u8; 32],
    ) -> Result<alloc::boxed::Box<dyn super::LoadedSigningKey>, super::ProviderError> {
        Ok(alloc::boxed::Box::new(SigningKey::from_seed(seed)))
    }

    #[cfg(feature = "alloc")]
    fn sealing_key(
        &self,
        secret: &[u8; 32],
    ) -> Result<alloc::boxed::Box<dyn super::LoadedSealingKey>, super::ProviderError> {
        Ok(alloc::boxed::Box::new(Sealing(Zeroizing::new(*secret))))
    }
}

// ---- field helpers ---------------------------------------------------------

/// (A − 2) / 4 = 121665 (RFC 7748 §5).
const A24: u32 = 121_665;
/// `x` squared `n` times.
#[inline(never)]
fn sq_n(x: &Fe, n: u32) -> Fe {
    let mut y = *x;
    for _ in 0..n {
        y = y.squared();
    }
    y
}

/// (x^(2^250 − 1), x^11): the common part of the inversion and the square
/// root (the addition chain of curve25519-dalek and ref10).
fn pow22501(x: &Fe) -> (Fe, Fe) {
    let t0 = x.squared(); // 2
    let t1 = &sq_n(&t0, 2) * x; // 9
    let t0 = &t0 * &t1; // 11
    let t2 = t0.squared(); // 22
    let t1 = &t1 * &t2; // 2^5 - 1
    let t1 = &sq_n(&t1, 5) * &t1; // 2^10 - 1
    let t2 = &sq_n(&t1, 10) * &t1; // 2^20 - 1
    let t3 = &sq_n(&t2, 20) * &t2; // 2^40 - 1
    let t2 = &sq_n(&t3, 10) * &t1; // 2^50 - 1
    let t3 = &sq_n(&t2, 50) * &t2; // 2^100 - 1
    let t4 = &sq_n(&t3, 100) * &t3; // 2^200 - 1
    let t5 = &sq_n(&t4, 50) * &t2; // 2^250 - 1
    (t5, t0)
}

/// x^(p − 2) = 1/x (0 for 0), constant time.
#[inline(never)]
fn invert(x: &Fe) -> Fe {
    let (t, x11) = pow22501(x);
    &sq_n(&t, 5) * &x11
}

/// x^((p − 5) / 8), for square roots.
fn pow_p58(x: &Fe) -> Fe {
    let (t, _) = pow22501(x);
    &sq_n(&t, 2) * x
}

/// The canonical encoding (`< p`), little-endian.
fn encode(x: &Fe) -> [u8; 32] {
    x.to_bytes()
}

// ---- X25519 ------------------------------------------------------------------

/// The Montgomery ladder (RFC 7748 §5) over the low 255 bits of `k`:
/// `[k]P` in projective x-only coordinates `(X : Z)`, for the point `P` of
/// u-coordinate `u`. Constant time in `k`.
#[inline(never)]
fn ladder(k: &[u8; 32], u: &Fe) -> [Fe; 2] {
    let mut x2 = Fe::ONE;
    let mut z2 = Fe::ZERO;
    let mut x3 = *u;
    let mut z3 = Fe::ONE;
    let mut swap = Choice::from(0);
    for t in (0..255).rev() {
        let bit = Choice::from((k[t >> 3] >> (t & 7)) & 1);
        swap ^= bit;
        field::cswap(&mut x2, &mut x3, swap);
        field::cswap(&mut z2, &mut z3, swap);
        swap = bit;
        let a = &x2 + &z2;
        let aa = a.squared();
        let b = &x2 - &z2;
        let bb = b.squared();
        let e = &aa - &bb;
        let c = &x3 + &z3;
        let d = &x3 - &z3;
        let da = &d * &a;
        let cb = &c * &b;
        x3 = (&da + &cb).squared();
        z3 = u * &(&da - &cb).squared();
        x2 = &aa * &bb;
        z2 = &e * &(&aa + &field::mul_small(&e, A24));
    }
    field::cswap(&mut x2, &mut x3, swap);
    field::cswap(&mut z2, &mut z3, swap);
    [x2, z2]
}

/// X25519 (RFC 7748 §5): the scalar clamped, the peer's top bit ignored and
/// its u-coordinate reduced modulo p.
fn x25519(secret: &[u8; 32], peer: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new(*secret);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let u = Fe::from_bytes(peer);
    let [x2, z2] = ladder(&k, &u);
    Zeroizing::new(encode(&(&x2 * &invert(&z2))))
}

/// X25519 of the base point (u = 9) by the fixed-base multiplication on
/// the Edwards curve: u = (1 + y)/(1 − y) = (Z + Y)/(Z − Y) of `[k]B`
/// (RFC 7748 §4.1), the same u-coordinate as the ladder's.
fn x25519_base(secret: &[u8; 32]) -> [u8; 32] {
    let mut k = Zeroizing::new(*secret);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let p = mul_base_point(&k);
    encode(&(&(&p.z + &p.y) * &invert(&(&p.z - &p.y))))
}

/// An X25519 static secret loaded into this provider.
#[cfg(feature = "alloc")]
struct Sealing(Zeroizing<[u8; 32]>);

#[cfg(feature = "alloc")]
impl super::LoadedSealingKey for Sealing {
    fn public(&self) -> [u8; 32] {
        x25519_base(&self.0)
    }
    fn x25519(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        Some(x25519(&self.0, peer))
    }
}

// ---- Ed25519 signing -----------------------------------------------------------

// ---- fixed-base multiplication -------------------------------------------------

/// An affine point prepared for mixed additions: (y + x, y − x, 2d·x·y).
#[derive(Clone, Copy)]
struct Niels {
    y_plus_x: Fe,
    y_minus_x: Fe,
    xy2d: Fe,
}

/// The signed radix-16 digits of a scalar below 2^255: 64 digits in
/// −8..=8 with `s = Σ e[i]·16^i`, by arithmetic only.
fn radix16(s: &[u8; 32]) -> [i8; 64] {
    let mut e = [0i8; 64];
    for i in 0..32 {
        e[2 * i] = (s[i] & 15) as i8;
        e[2 * i + 1] = ((s[i] >> 4) & 15) as i8;
    }
    let mut carry = 0i8;
    for digit in e.iter_mut().take(63) {
        *digit += carry;
        carry = (*digit + 8) >> 4;
        *digit -= carry << 4;
    }
    e[63] += carry;
    e
}

/// `digit · T` for the table `T` of `(j + 1)·P`, `digit` in −8..=8, in
/// constant time: every entry is read, the one wanted kept by a mask, and
/// the negation selected by a mask.
fn lookup(table: &[Niels; 8], digit: i8) -> Niels {
    let neg = (digit as u8) >> 7;
    let abs = ((digit as u8) ^ 0u8.wrapping_sub(neg)).wrapping_add(neg);
    let mut t = Niels {
        y_plus_x: Fe::ONE,
        y_minus_x: Fe::ONE,
        xy2d: Fe::ZERO,
    };
    for (j, entry) in table.iter().enumerate() {
        let c = abs.ct_eq(&(j as u8 + 1));
        field::cmov(&mut t.y_plus_x, &entry.y_plus_x, c);
        field::cmov(&mut t.y_minus_x, &entry.y_minus_x, c);
        field::cmov(&mut t.xy2d, &entry.xy2d, c);
    }
    let c = Choice::from(neg);
    let minus_xy2d = -&t.xy2d;
    field::cswap(&mut t.y_plus_x, &mut t.y_minus_x, c);
    field::cmov(&mut t.xy2d, &minus_xy2d, c);
    t
}

/// `[s]B` for `s < 2^255`, in constant time: s = Σ 16^j Σ_k e[8k + j]·16^(8k),
/// so 8 table lookups and mixed additions per j, and 4 doublings between
/// (64 additions, 28 doublings, no branch on s).
#[inline(never)]
fn mul_base_point(s: &[u8; 32]) -> Point {
    // The digits spell out the secret (a nonce, an ephemeral key): wiped
    // when done, as everything here that holds one.
    let e = zeroize::Zeroizing::new(radix16(s));
    let mut acc = Point::NEUTRAL;
    for j in (0..8).rev() {
        if j != 7 {
            for _ in 0..3 {
                acc = acc.double(false);
            }
            acc = acc.double(true);
        }
        for (k, table) in table::BASE_TABLE.iter().enumerate() {
            acc = acc.add_niels(&lookup(table, e[8 * k + j]));
        }
    }
    acc
}

/// The encoding of `[r]B` (Ed25519 signing and public keys).
fn mul_base(r: &Scalar) -> [u8; 32] {
    mul_base_point(r.as_bytes()).encode()
}

/// An Ed25519 identity key (RFC 8032) whose signatures this provider makes:
/// the same signatures as [`IdentityKey`](crate::keys::IdentityKey)
/// (Ed25519 is deterministic), with the point multiplication of this module.
/// Zeroized on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SigningKey {
    /// The secret scalar, reduced modulo L.
    scalar: [u8; 32],
    /// The second half of SHA-512(seed), for the nonces.
    prefix: [u8; 32],
    /// The public key's encoding.
    #[zeroize(skip)]
    public: [u8; 32],
}

impl SigningKey {
    /// Expands an RFC 8032 seed (§5.1.5) and computes its public key.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let h = Zeroizing::new(<[u8; 64]>::from(Sha512::digest(seed)));
        let mut a = Zeroizing::new([0u8; 32]);
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let scalar = Scalar::from_bytes_mod_order(*a);
        let mut prefix = [0u8; 32];
        prefix.copy_from_slice(&h[32..]);
        let public = mul_base(&scalar);
        Self {
            scalar: scalar.to_bytes(),
            prefix,
            public,
        }
    }

    /// Signs `msg` (pure Ed25519, RFC 8032 §5.1.6).
    #[inline(never)]
    pub fn sign(&self, msg: &[u8]) -> Signature {
        let r = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(self.prefix)
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let big_r = mul_base(&r);
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(big_r)
                .chain_update(self.public)
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let mut a = Scalar::from_bytes_mod_order(self.scalar);
        let s = r + k * a;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&big_r);
        out[32..].copy_from_slice(s.as_bytes());
        // The nonce and the secret scalar: `a = (S - r) / k` from the
        // public signature if `r` were read from memory later.
        let mut r = r;
        zeroize::Zeroize::zeroize(&mut r);
        zeroize::Zeroize::zeroize(&mut a);
        Signature(out)
    }
}

impl IdentitySigner for SigningKey {
    fn public_key(&self) -> PublicKey {
        PublicKey::derived(self.public)
    }
    fn sign(&self, msg: &[u8]) -> Signature {
        SigningKey::sign(self, msg)
    }
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("cortex_m::SigningKey(..)")
    }
}

#[cfg(feature = "alloc")]
impl super::LoadedSigningKey for SigningKey {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }
    fn sign(&self, msg: &[u8]) -> Signature {
        SigningKey::sign(self, msg)
    }
}

// ---- Ed25519 verification (public data, variable time) ---------------------------

/// A point in extended twisted Edwards coordinates (X : Y : Z : T), x = X/Z,
/// y = Y/Z, T = XY/Z.
#[derive(Clone, Copy)]
struct Point {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// A point prepared for additions: (Y + X, Y − X, 2Z, 2d·T).
#[derive(Clone, Copy)]
struct Cached {
    y_plus_x: Fe,
    y_minus_x: Fe,
    z2: Fe,
    t2d: Fe,
}

impl Point {
    const NEUTRAL: Point = Point {
        x: Fe::ZERO,
        y: Fe::ONE,
        z: Fe::ONE,
        t: Fe::ZERO,
    };

    /// RFC 8032 §5.1.3 decoding of an encoding the strict checks already
    /// accepted (`None` if it is not a point after all).
    fn decode(bytes: &[u8; 32]) -> Option<Point> {
        let y = Fe::from_bytes(bytes);
        let y2 = y.squared();
        let u = &y2 - &Fe::ONE;
        let v = &(&y2 * &Fe::D) + &Fe::ONE;
        let v3 = &v.squared() * &v;
        let v7 = &v3.squared() * &v;
        let mut x = &(&u * &v3) * &pow_p58(&(&u * &v7));
        let vx2 = &v * &x.squared();
        if vx2 != u {
            if vx2 != -&u {
                return None;
            }
            x = &x * &Fe::SQRT_M1;
        }
        if x.parity() != bytes[31] >> 7 {
            x = -&x;
        }
        Some(Point {
            t: &x * &y,
            x,
            y,
            z: Fe::ONE,
        })
    }

    fn neg(&self) -> Point {
        Point {
            x: -&self.x,
            y: self.y,
            z: self.z,
            t: -&self.t,
        }
    }

    fn cached(&self) -> Cached {
        Cached {
            y_plus_x: &self.y + &self.x,
            y_minus_x: &self.y - &self.x,
            z2: &self.z + &self.z,
            t2d: &self.t * &Fe::D2,
        }
    }

    /// 2P (dbl-2008-hwcd, a = −1): with e = 2XY = (X + Y)² − X² − Y²,
    /// h = Y² + X², g = Y² − X², f = 2Z² − g, 2P = (e·f : h·g : g·f : e·h).
    /// `with_t`: whether T is needed (only before an addition).
    fn double(&self, with_t: bool) -> Point {
        let xx = self.x.squared();
        let yy = self.y.squared();
        let zz = self.z.squared();
        let zz2 = &zz + &zz;
        let h = &yy + &xx;
        let g = &yy - &xx;
        let e = &(&self.x + &self.y).squared() - &h;
        let f = &zz2 - &g;
        Point {
            x: &e * &f,
            y: &h * &g,
            z: &g * &f,
            t: if with_t { &e * &h } else { Fe::ZERO },
        }
    }

    /// P + Q (add-2008-hwcd-3, a = −1), or P − Q with `minus`.
    fn add(&self, q: &Cached, minus: bool) -> Point {
        let (qp, qm) = if minus {
            (&q.y_minus_x, &q.y_plus_x)
        } else {
            (&q.y_plus_x, &q.y_minus_x)
        };
        let a = &(&self.y - &self.x) * qm;
        let b = &(&self.y + &self.x) * qp;
        let c = &self.t * &q.t2d;
        let c = if minus { -&c } else { c };
        let d = &self.z * &q.z2;
        let e = &b - &a;
        let f = &d - &c;
        let g = &d + &c;
        let h = &b + &a;
        Point {
            x: &e * &f,
            y: &g * &h,
            z: &f * &g,
            t: &e * &h,
        }
    }

    /// P + Q for an affine Q (madd-2008-hwcd-3, a = −1): complete, so the
    /// neutral element and P = ±Q need no special case.
    fn add_niels(&self, q: &Niels) -> Point {
        let a = &(&self.y - &self.x) * &q.y_minus_x;
        let b = &(&self.y + &self.x) * &q.y_plus_x;
        let c = &self.t * &q.xy2d;
        let d = &self.z + &self.z;
        let e = &b - &a;
        let f = &d - &c;
        let g = &d + &c;
        let h = &b + &a;
        Point {
            x: &e * &f,
            y: &g * &h,
            z: &f * &g,
            t: &e * &h,
        }
    }

    /// The encoding (RFC 8032 §5.1.2).
    fn encode(&self) -> [u8; 32] {
        let zi = invert(&self.z);
        let x = &self.x * &zi;
        let y = &self.y * &zi;
        let mut out = encode(&y);
        out[31] ^= x.parity() << 7;
        out
    }

    /// The odd multiples P, 3P, …, 15P.
    fn odd_multiples(&self) -> [Cached; 8] {
        let p2 = self.double(true).cached();
        let mut table = [self.cached(); 8];
        let mut acc = *self;
        for entry in table.iter_mut().skip(1) {
            acc = acc.add(&p2, false);
            *entry = acc.cached();
        }
        table
    }
}

/// The width-5 non-adjacent form of a scalar below 2^253: digits odd in
/// −15..=15 or zero, at most one non-zero digit in any five consecutive.
fn naf5(s: &[u8; 32]) -> [i8; 256] {
    let mut words = [0u64; 5];
    for (i, w) in words.iter_mut().take(4).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[8 * i..8 * i + 8]);
        *w = u64::from_le_bytes(b);
    }
    let mut naf = [0i8; 256];
    let mut carry = 0u64;
    let mut pos = 0;
    while pos < 256 {
        let (idx, bit) = (pos / 64, pos % 64);
        let bits = if bit < 64 - 5 {
            words[idx] >> bit
        } else {
            (words[idx] >> bit) | (words[idx + 1] << (64 - bit))
        };
        let window = carry + (bits & 31);
        if window & 1 == 0 {
            pos += 1;
            continue;
        }
        if window < 16 {
            carry = 0;
            naf[pos] = window as i8;
        } else {
            carry = 1;
            naf[pos] = window as i8 - 32;
        }
        pos += 5;
    }
    naf
}

/// SPEC.md §3.4 rule 4 on an input whose encodings passed rules 1 to 3:
/// whether `[S]B − [k]A` encodes to `R`, `k = SHA-512(R ‖ A ‖ M) mod L`.
#[inline(never)]
fn equation(input: &StrictInput<'_>) -> bool {
    let Some(a) = Point::decode(input.key()) else {
        return false;
    };
    let sig = input.signature();
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(&sig[..32])
            .chain_update(input.key())
            .chain_update(input.message())
            .finalize()
            .into(),
    );
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    let r = double_scalar_mul(&k, &a.neg(), &s);
    r.encode()[..] == sig[..32]
}

/// `[k]P + [s]B`, variable time (public inputs only).
#[inline(never)]
fn double_scalar_mul(k: &Scalar, p: &Point, s: &[u8; 32]) -> Point {
    let tp = p.odd_multiples();
    let tb = &table::ODD_B;
    let nk = naf5(k.as_bytes());
    let ns = naf5(s);
    let top = (0..256).rev().find(|&i| nk[i] != 0 || ns[i] != 0);
    let Some(top) = top else {
        return Point::NEUTRAL;
    };
    let mut acc = Point::NEUTRAL;
    for i in (0..=top).rev() {
        let need_t = nk[i] != 0 || ns[i] != 0;
        acc = acc.double(need_t);
        for (digit, table) in [(nk[i], &tp), (ns[i], tb)] {
            if digit > 0 {
                acc = acc.add(&table[(digit / 2) as usize], false);
            } else if digit < 0 {
                acc = acc.add(&table[(-digit / 2) as usize], true);
            }
        }
    }
    acc
}

/// For the firmware's `field-check` (not an API): compares the assembly
/// field multiplication with the Rust code it replaces, limb for limb, on
/// edge operands and `rounds` generated pairs. Returns (products compared,
/// mismatches).
#[doc(hidden)]
#[cfg(all(target_arch = "arm", target_os = "none"))]
pub fn check_field_assembly(rounds: u32) -> (u32, u32) {
    field::check_assembly(rounds)
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::EdwardsPoint;

    use super::*;

    /// Deterministic inputs (xorshift64).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn bytes(&mut self) -> [u8; 32] {
            let mut b = [0u8; 32];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&self.next().to_le_bytes());
            }
            b
        }

        fn scalar(&mut self) -> Scalar {
            Scalar::from_bytes_mod_order(self.bytes())
        }

        /// A field element whose limbs are mostly the values where a carry
        /// can go missing: 0, 1, 2^31 − 1, 2^31, 2^32 − 1, 2^32 − 19.
        fn edgy(&mut self) -> Fe {
            let mut l = [0u32; 8];
            for x in l.iter_mut() {
                let r = self.next();
                *x = match r % 8 {
                    0 => 0,
                    1 => 1,
                    2 => 0x7fff_ffff,
                    3 => 0x8000_0000,
                    4 => 0xffff_ffff,
                    5 => 0xffff_ffed,
                    _ => (r >> 32) as u32,
                };
            }
            Fe(l)
        }
    }

    // ---- a reference: schoolbook integers, reduced modulo p at the end ----

    fn int_add(a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = 0u64;
        for i in 0..a.len().max(b.len()) {
            let v = u64::from(*a.get(i).unwrap_or(&0)) + u64::from(*b.get(i).unwrap_or(&0)) + c;
            out.push(v as u32);
            c = v >> 32;
        }
        out.push(c as u32);
        out
    }

    fn int_mul(a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut out = vec![0u32; a.len() + b.len()];
        for (i, &x) in a.iter().enumerate() {
            let mut c = 0u64;
            for (j, &y) in b.iter().enumerate() {
                let v = u64::from(x) * u64::from(y) + u64::from(out[i + j]) + c;
                out[i + j] = v as u32;
                c = v >> 32;
            }
            out[i + b.len()] = c as u32;
        }
        out
    }

    /// `a − b` for `a ≥ b`.
    fn int_sub(a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut w = 0i64;
        for (i, &x) in a.iter().enumerate() {
            let v = i64::from(x) - i64::from(*b.get(i).unwrap_or(&0)) + w;
            out.push(v as u32);
            w = v >> 32;
        }
        assert_eq!(w, 0);
        out
    }

    const P: [u32; 8] = [
        0xffff_ffed,
        0xffff_ffff,
        0xffff_ffff,
        0xffff_ffff,
        0xffff_ffff,
        0xffff_ffff,
        0xffff_ffff,
        0x7fff_ffff,
    ];

    fn int_ge(a: &[u32], b: &[u32]) -> bool {
        for i in (0..a.len().max(b.len())).rev() {
            let (x, y) = (*a.get(i).unwrap_or(&0), *b.get(i).unwrap_or(&0));
            if x != y {
                return x > y;
            }
        }
        true
    }

    /// The canonical encoding of `x mod p`, the slow way.
    fn int_mod_p(x: Vec<u32>) -> [u8; 32] {
        let mut x = x;
        while x.len() > 8 && x[8..].iter().any(|&w| w != 0) {
            let (lo, hi) = x.split_at(8);
            x = int_add(lo, &int_mul(hi, &[38]));
        }
        x.truncate(8);
        while int_ge(&x, &P) {
            x = int_sub(&x, &P);
        }
        let mut out = [0u8; 32];
        for (i, w) in x.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    fn check_field_ops(a: &Fe, b: &Fe) {
        let (x, y) = (&a.0[..], &b.0[..]);
        assert_eq!(
            (a * b).to_bytes(),
            int_mod_p(int_mul(x, y)),
            "{:08x?} * {:08x?}",
            a.0,
            b.0
        );
        assert_eq!(
            a.squared().to_bytes(),
            int_mod_p(int_mul(x, x)),
            "{:08x?}²",
            a.0
        );
        assert_eq!(
            (a + b).to_bytes(),
            int_mod_p(int_add(x, y)),
            "{:08x?} + {:08x?}",
            a.0,
            b.0
        );
        // a − b ≡ a + 3p − b, and 3p > 2^256 > b.
        let p3 = int_mul(&P, &[3]);
        assert_eq!(
            (a - b).to_bytes(),
            int_mod_p(int_add(x, &int_sub(&p3, y))),
            "{:08x?} - {:08x?}",
            a.0,
            b.0
        );
        assert_eq!(
            field::mul_small(a, 121_665).to_bytes(),
            int_mod_p(int_mul(x, &[121_665]))
        );
    }

    #[test]
    fn field_arithmetic_equals_the_schoolbook_reference() {
        let mut g = Gen(0x243f_6a88_85a3_08d3);
        for a in &field::SPECIAL {
            for b in &field::SPECIAL {
                check_field_ops(a, b);
            }
        }
        for _ in 0..20_000 {
            let (a, b) = (g.edgy(), g.edgy());
            check_field_ops(&a, &b);
            let (a, b) = (Fe::from_bytes(&g.bytes()), g.edgy());
            check_field_ops(&a, &b);
        }
    }

    /// The last two special operands, times 2^255, make the reduction's
    /// last carry (its `lo + 38·hi + c·38` passes 2^256), which random
    /// operands almost never do: the firmware's check of the assembly
    /// relies on them for that path.
    #[test]
    fn the_special_operands_reach_the_last_carry_of_the_reduction() {
        let two_255 = &field::SPECIAL[6];
        assert_eq!(two_255.0, [0, 0, 0, 0, 0, 0, 0, 0x8000_0000]);
        for b in &field::SPECIAL[7..] {
            let t = int_mul(&two_255.0, &b.0);
            let (lo, hi) = t.split_at(8);
            // First pass: lo + 38·hi, its carry word c (at most 38).
            let first = int_add(lo, &int_mul(hi, &[38]));
            let c = first[8..]
                .iter()
                .rev()
                .fold(0u64, |acc, &w| acc << 32 | u64::from(w));
            assert!((1..=38).contains(&c), "{c}");
            // Second: the low 256 bits plus 38·c must pass 2^256 again.
            let second = int_add(&first[..8], &[c as u32 * 38]);
            assert_eq!(second[8], 1, "{:08x?}", b.0);
        }
    }

    #[test]
    fn canonical_encoding_and_selection() {
        let mut g = Gen(7);
        for _ in 0..2_000 {
            let a = g.edgy();
            assert_eq!(a.to_bytes(), int_mod_p(a.0.to_vec()));
            let (mut x, mut y) = (a, g.edgy());
            let (x0, y0) = (x.0, y.0);
            field::cswap(&mut x, &mut y, Choice::from(0));
            assert_eq!((x.0, y.0), (x0, y0));
            field::cswap(&mut x, &mut y, Choice::from(1));
            assert_eq!((x.0, y.0), (y0, x0));
            field::cmov(&mut x, &Fe(x0), Choice::from(1));
            assert_eq!(x.0, x0);
        }
        assert_eq!(invert(&Fe::ZERO).to_bytes(), [0u8; 32]);
    }

    /// The table is `gen_table.py`'s: every entry recomputed with
    /// curve25519-dalek.
    #[test]
    fn the_base_table_holds_the_base_point_multiples() {
        let two_inv = invert(&(&Fe::ONE + &Fe::ONE));
        for (k, row) in table::BASE_TABLE.iter().enumerate() {
            let mut step = [0u8; 32];
            step[(32 * k) / 8] = 1; // 16^(8k) = 2^(32k)
            let base = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(step));
            for (j, n) in row.iter().enumerate() {
                let want = base * Scalar::from(j as u64 + 1);
                let x = &(&n.y_plus_x - &n.y_minus_x) * &two_inv;
                let y = &(&n.y_plus_x + &n.y_minus_x) * &two_inv;
                let mut enc = y.to_bytes();
                enc[31] ^= x.parity() << 7;
                assert_eq!(enc, want.compress().to_bytes(), "entry {k}, {j}");
                assert_eq!(n.xy2d.to_bytes(), (&(&Fe::D2 * &x) * &y).to_bytes());
            }
        }
    }

    #[test]
    fn the_odd_multiples_of_b_are_the_verifications_table() {
        // The table's entries have z = 1, the computed ones do not: compare
        // each coordinate over 2z (the cached form's third coordinate).
        let b = Point::decode(&ED25519_BASEPOINT_POINT.compress().to_bytes());
        let computed = b.map(|b| b.odd_multiples());
        assert!(computed.is_some());
        for (c, t) in computed.iter().flatten().zip(table::ODD_B.iter()) {
            assert_eq!(t.z2.to_bytes(), (&Fe::ONE + &Fe::ONE).to_bytes());
            for (x, y) in [
                (&c.y_plus_x, &t.y_plus_x),
                (&c.y_minus_x, &t.y_minus_x),
                (&c.t2d, &t.t2d),
            ] {
                assert_eq!((x * &t.z2).to_bytes(), (y * &c.z2).to_bytes());
            }
        }
    }

    #[test]
    fn fixed_base_multiplication_equals_dalek() {
        let mut g = Gen(11);
        let mut cases = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, -Scalar::from(2u8)];
        for _ in 0..200 {
            cases.push(g.scalar());
        }
        for s in cases {
            assert_eq!(
                mul_base(&s),
                EdwardsPoint::mul_base(&s).compress().to_bytes()
            );
        }
        // Unreduced scalars below 2^255, as X25519's clamped ones.
        for _ in 0..100 {
            let mut s = g.bytes();
            s[31] &= 0x7f;
            let want = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(s));
            assert_eq!(mul_base_point(&s).encode(), want.compress().to_bytes());
        }
    }

    #[test]
    fn x25519_equals_x25519_dalek() {
        let mut g = Gen(13);
        let mut nine = [0u8; 32];
        nine[0] = 9;
        for i in 0..200 {
            let k = g.bytes();
            let mut u = g.bytes();
            if i % 4 == 0 {
                // A u-coordinate at or above p (not reduced), top bit set.
                u = [0xff; 32];
                u[0] = 0xed + (i as u8 % 18);
            }
            assert_eq!(
                *x25519(&k, &u),
                x25519_dalek::x25519(k, u),
                "k {k:02x?} u {u:02x?}"
            );
            let public = x25519_dalek::x25519(k, nine);
            assert_eq!(x25519_base(&k), public);
            assert_eq!(*x25519(&k, &nine), public);
        }
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    /// Vectors from the RFCs, independent of the dalek crates the other
    /// tests compare with; and scalars at the edges of the radix-16
    /// recoding (runs of -8, the largest and smallest clamped values).
    #[test]
    fn rfc_vectors_and_edge_scalars() {
        // RFC 7748 §5.2, both vectors (the second's u has bit 255 set).
        for (k, u, out) in [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ] {
            assert_eq!(*x25519(&hex32(k), &hex32(u)), hex32(out));
        }
        // RFC 7748 §5.2, the iterated test: 1,000 ladders on the outputs.
        let (mut k, mut u) = ([0u8; 32], [0u8; 32]);
        k[0] = 9;
        u[0] = 9;
        for i in 1..=1000 {
            let next = *x25519(&k, &u);
            u = k;
            k = next;
            if i == 1 {
                assert_eq!(
                    k,
                    hex32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            hex32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
        // RFC 8032 §7.1, TEST 1.
        let key = SigningKey::from_seed(&hex32(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ));
        assert_eq!(
            key.public,
            hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(
            hex::encode(key.sign(b"").0),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        // Edge scalars through the fixed-base multiplication and X25519.
        let mut nine = [0u8; 32];
        nine[0] = 9;
        let mut runs = [0x88u8; 32];
        runs[31] = 0x78;
        let mut smallest = [0u8; 32];
        smallest[31] = 0x40;
        for s in [
            [0xffu8; 32],
            runs,
            [0x77; 32],
            smallest,
            [0u8; 32],
            [0x7f; 32],
        ] {
            assert_eq!(x25519_base(&s), x25519_dalek::x25519(s, nine), "{s:02x?}");
            let mut reduced = s;
            reduced[31] &= 0x7f;
            assert_eq!(
                mul_base_point(&reduced).encode(),
                curve25519_dalek::EdwardsPoint::mul_base(
                    &curve25519_dalek::Scalar::from_bytes_mod_order(reduced)
                )
                .compress()
                .to_bytes(),
                "{reduced:02x?}"
            );
        }
    }

    #[test]
    fn signatures_equal_ed25519_dalek_s() {
        use ed25519_dalek::Signer as _;
        let mut g = Gen(17);
        for n in 0..100 {
            let seed = g.bytes();
            let msg: Vec<u8> = (0..n * 3).map(|_| g.next() as u8).collect();
            let ours = SigningKey::from_seed(&seed);
            let theirs = ed25519_dalek::SigningKey::from_bytes(&seed);
            assert_eq!(ours.public, theirs.verifying_key().to_bytes());
            assert_eq!(ours.sign(&msg).0, theirs.sign(&msg).to_bytes());
        }
    }

    #[test]
    fn double_scalar_multiplication_equals_dalek() {
        let mut g = Gen(19);
        for i in 0..200 {
            let (k, s) = (g.scalar(), g.scalar());
            // Points of every order the strict rules let through: prime
            // order, and with a torsion component.
            let a = EdwardsPoint::mul_base(&g.scalar()) + EIGHT_TORSION[i % 8];
            let want = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &a, &s);
            let ours = Point::decode(&a.compress().to_bytes())
                .map(|p| double_scalar_mul(&k, &p, s.as_bytes()));
            assert_eq!(ours.map(|p| p.encode()), Some(want.compress().to_bytes()));
        }
    }
}
