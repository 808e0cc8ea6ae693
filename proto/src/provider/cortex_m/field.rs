//! Arithmetic modulo p = 2^255 − 19 on eight 32-bit limbs (radix 2^32),
//! for Cortex-M4 and Cortex-M33: every limb product is a 32 × 32 → 64-bit
//! multiply-accumulate (`a·b + c + d` never exceeds 2^64 − 1, which is what
//! the `UMAAL` instruction computes in one cycle), and a multiplication is
//! 64 of them and a reduction by 2^256 ≡ 38.
//!
//! A field element is any 256-bit value: results are kept below 2^256 but
//! not fully reduced; [`Fe::to_bytes`] gives the canonical encoding. Every
//! function here is straight-line: no branch and no memory index depends on
//! a value (carries are added as numbers, selections are `subtle`'s masks),
//! and the Cortex-M4's and M33's multiply instructions take a fixed number
//! of cycles.

use core::ops::{Add, Mul, Neg, Sub};

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// A field element: the value `Σ limb[i] · 2^(32·i)` modulo p.
#[derive(Clone, Copy, Default)]
pub(super) struct Fe(pub(super) [u32; 8]);

impl Fe {
    pub(super) const ZERO: Fe = Fe([0; 8]);
    pub(super) const ONE: Fe = Fe([1, 0, 0, 0, 0, 0, 0, 0]);
    /// The u-coordinate of the X25519 base point.
    pub(super) const NINE: Fe = Fe([9, 0, 0, 0, 0, 0, 0, 0]);
    /// d = −121665/121666, of the Edwards curve.
    pub(super) const D: Fe = Fe([
        0x1359_78a3,
        0x75eb_4dca,
        0x4141_d8ab,
        0x0070_0a4d,
        0x7779_e898,
        0x8cc7_4079,
        0x2b6f_fe73,
        0x5203_6cee,
    ]);
    /// 2d.
    pub(super) const D2: Fe = Fe([
        0x26b2_f159,
        0xebd6_9b94,
        0x8283_b156,
        0x00e0_149a,
        0xeef3_d130,
        0x198e_80f2,
        0x56df_fce7,
        0x2406_d9dc,
    ]);
    /// A square root of −1: 2^((p − 1)/4).
    pub(super) const SQRT_M1: Fe = Fe([
        0x4a0e_a0b0,
        0xc4ee_1b27,
        0xad2f_e478,
        0x2f43_1806,
        0x3dfb_d7a7,
        0x2b4d_0099,
        0x4fc1_df0b,
        0x2b83_2480,
    ]);

    /// The little-endian value of `bytes` with bit 255 cleared (RFC 7748
    /// §5 and RFC 8032 §5.1.3 both ignore or separately read that bit).
    pub(super) fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let mut l = [0u32; 8];
        for (i, limb) in l.iter_mut().enumerate() {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[4 * i..4 * i + 4]);
            *limb = u32::from_le_bytes(w);
        }
        l[7] &= 0x7fff_ffff;
        Fe(l)
    }

    /// The canonical encoding: the value reduced below p, little-endian.
    pub(super) fn to_bytes(self) -> [u8; 32] {
        let mut r = self.0;
        // Fold bit 255: 2^255 ≡ 19. Then r < 2^255 + 19.
        let top = r[7] >> 31;
        r[7] &= 0x7fff_ffff;
        let mut c = u64::from(top) * 19;
        for limb in r.iter_mut() {
            let v = u64::from(*limb) + c;
            *limb = v as u32;
            c = v >> 32;
        }
        // r ≥ p exactly when r + 19 reaches 2^255; then r − p = r + 19 − 2^255.
        let mut s = [0u32; 8];
        let mut c = 19u64;
        for (si, ri) in s.iter_mut().zip(r.iter()) {
            let v = u64::from(*ri) + c;
            *si = v as u32;
            c = v >> 32;
        }
        let ge = Choice::from((s[7] >> 31) as u8);
        s[7] &= 0x7fff_ffff;
        let mut out = [0u8; 32];
        for i in 0..8 {
            let limb = u32::conditional_select(&r[i], &s[i], ge);
            out[4 * i..4 * i + 4].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// The low bit of the canonical value ("negative" in RFC 8032).
    pub(super) fn parity(&self) -> u8 {
        self.to_bytes()[0] & 1
    }

    /// The square.
    pub(super) fn squared(&self) -> Fe {
        square(self)
    }
}

/// A 512-bit product reduced below 2^256: `lo + 38·hi`, then the carry
/// (≤ 38) times 38 again, then once more if that wrapped (only possible
/// when the result is below 38², so the last addition cannot carry).
#[inline(always)]
fn reduce(t: &[u32; 16]) -> Fe {
    let mut r = [0u32; 8];
    let mut c = 0u64;
    for i in 0..8 {
        let v = u64::from(t[i + 8]) * 38 + u64::from(t[i]) + c;
        r[i] = v as u32;
        c = v >> 32;
    }
    carry_in(r, c * 38)
}

/// `r + c` for `c < 2^32·39` folded below 2^256 (2^256 ≡ 38).
#[inline(always)]
fn carry_in(mut r: [u32; 8], c: u64) -> Fe {
    let mut c = c;
    for limb in r.iter_mut() {
        let v = u64::from(*limb) + c;
        *limb = v as u32;
        c = v >> 32;
    }
    // c is 0 or 1; when 1, r is now below 38·39, so this cannot carry.
    r[0] = r[0].wrapping_add((c as u32) * 38);
    Fe(r)
}

/// 8 × 8 limb products by operand scanning: each step is a·b + t + carry.
#[inline(never)]
fn mul(a: &Fe, b: &Fe) -> Fe {
    let (a, b) = (&a.0, &b.0);
    let mut t = [0u32; 16];
    for i in 0..8 {
        let ai = u64::from(a[i]);
        let mut c = 0u64;
        for j in 0..8 {
            let v = ai * u64::from(b[j]) + u64::from(t[i + j]) + c;
            t[i + j] = v as u32;
            c = v >> 32;
        }
        t[i + 8] = c as u32;
    }
    reduce(&t)
}

/// The square: the 28 cross products once, doubled, plus the 8 squares.
#[inline(never)]
fn square(a: &Fe) -> Fe {
    let a = &a.0;
    let mut t = [0u32; 16];
    for i in 0..7 {
        let ai = u64::from(a[i]);
        let mut c = 0u64;
        for j in i + 1..8 {
            let v = ai * u64::from(a[j]) + u64::from(t[i + j]) + c;
            t[i + j] = v as u32;
            c = v >> 32;
        }
        t[i + 8] = c as u32;
    }
    // Double the cross products (t < 2^511, so no bit is lost), then add the
    // squares a[i]² at 2^(64·i).
    let mut top = 0u32;
    for limb in t.iter_mut() {
        let v = (*limb << 1) | top;
        top = *limb >> 31;
        *limb = v;
    }
    let mut c = 0u64;
    for i in 0..8 {
        let ai = u64::from(a[i]);
        let sq = ai * ai;
        let v = u64::from(t[2 * i]) + (sq & 0xffff_ffff) + c;
        t[2 * i] = v as u32;
        let v = u64::from(t[2 * i + 1]) + (sq >> 32) + (v >> 32);
        t[2 * i + 1] = v as u32;
        c = v >> 32;
    }
    reduce(&t)
}

#[inline(never)]
fn add(a: &Fe, b: &Fe) -> Fe {
    let mut r = [0u32; 8];
    let mut c = 0u64;
    for i in 0..8 {
        let v = u64::from(a.0[i]) + u64::from(b.0[i]) + c;
        r[i] = v as u32;
        c = v >> 32;
    }
    carry_in(r, c * 38)
}

#[inline(never)]
fn sub(a: &Fe, b: &Fe) -> Fe {
    let mut r = [0u32; 8];
    let mut borrow = 0i64;
    for i in 0..8 {
        let v = i64::from(a.0[i]) - i64::from(b.0[i]) + borrow;
        r[i] = v as u32;
        borrow = v >> 32; // 0 or −1
    }
    // A borrow added 2^256 ≡ 38: take 38 away, and once more if that
    // borrowed too (then r was below 38 and is now at least 2^256 − 38, so
    // the last subtraction cannot borrow).
    let mut b = borrow * 38;
    for limb in r.iter_mut() {
        let v = i64::from(*limb) + b;
        *limb = v as u32;
        b = v >> 32;
    }
    r[0] = r[0].wrapping_sub(((-b) as u32) * 38);
    Fe(r)
}

impl Add<&Fe> for &Fe {
    type Output = Fe;
    fn add(self, other: &Fe) -> Fe {
        add(self, other)
    }
}

impl Sub<&Fe> for &Fe {
    type Output = Fe;
    fn sub(self, other: &Fe) -> Fe {
        sub(self, other)
    }
}

impl Mul<&Fe> for &Fe {
    type Output = Fe;
    fn mul(self, other: &Fe) -> Fe {
        mul(self, other)
    }
}

impl Neg for &Fe {
    type Output = Fe;
    fn neg(self) -> Fe {
        sub(&Fe::ZERO, self)
    }
}

impl ConditionallySelectable for Fe {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        let mut r = [0u32; 8];
        for (i, limb) in r.iter_mut().enumerate() {
            *limb = u32::conditional_select(&a.0[i], &b.0[i], choice);
        }
        Fe(r)
    }
}

impl ConstantTimeEq for Fe {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.to_bytes().ct_eq(&other.to_bytes())
    }
}

impl PartialEq for Fe {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.ct_eq(other))
    }
}
