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

/// A field element: the value `Σ limb[i] · 2^(32·i)` modulo p. `repr(C)`:
/// the assembly multiplication of `arm.rs` returns one.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(super) struct Fe(pub(super) [u32; 8]);

impl Fe {
    pub(super) const ZERO: Fe = Fe([0; 8]);
    pub(super) const ONE: Fe = Fe([1, 0, 0, 0, 0, 0, 0, 0]);
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
        #[cfg(all(target_arch = "arm", target_os = "none"))]
        return super::arm::mul(self, self);
        #[cfg(not(all(target_arch = "arm", target_os = "none")))]
        square(self)
    }
}

/// `a·b + t + c`, which never exceeds 2^64 − 1: the low and the high word
/// (one `UMAAL` on Cortex-M4 and M33).
#[inline(always)]
fn mac(a: u32, b: u32, t: u32, c: u32) -> (u32, u32) {
    let v = u64::from(a) * u64::from(b) + u64::from(t) + u64::from(c);
    (v as u32, (v >> 32) as u32)
}

/// `a + b` with the carry out (0 or 1).
#[inline(always)]
fn adc(a: u32, b: u32) -> (u32, u32) {
    let v = u64::from(a) + u64::from(b);
    (v as u32, (v >> 32) as u32)
}

/// 8 × 8 limb products by operand scanning, written out: every step is
/// [`mac`].
#[inline(never)]
fn mul(a: &Fe, b: &Fe) -> Fe {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a.0;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = b.0;
    let (t0, c) = mac(a0, b0, 0, 0);
    let (t1, c) = mac(a0, b1, 0, c);
    let (t2, c) = mac(a0, b2, 0, c);
    let (t3, c) = mac(a0, b3, 0, c);
    let (t4, c) = mac(a0, b4, 0, c);
    let (t5, c) = mac(a0, b5, 0, c);
    let (t6, c) = mac(a0, b6, 0, c);
    let (t7, c) = mac(a0, b7, 0, c);
    let t8 = c;
    let (t1, c) = mac(a1, b0, t1, 0);
    let (t2, c) = mac(a1, b1, t2, c);
    let (t3, c) = mac(a1, b2, t3, c);
    let (t4, c) = mac(a1, b3, t4, c);
    let (t5, c) = mac(a1, b4, t5, c);
    let (t6, c) = mac(a1, b5, t6, c);
    let (t7, c) = mac(a1, b6, t7, c);
    let (t8, c) = mac(a1, b7, t8, c);
    let t9 = c;
    let (t2, c) = mac(a2, b0, t2, 0);
    let (t3, c) = mac(a2, b1, t3, c);
    let (t4, c) = mac(a2, b2, t4, c);
    let (t5, c) = mac(a2, b3, t5, c);
    let (t6, c) = mac(a2, b4, t6, c);
    let (t7, c) = mac(a2, b5, t7, c);
    let (t8, c) = mac(a2, b6, t8, c);
    let (t9, c) = mac(a2, b7, t9, c);
    let t10 = c;
    let (t3, c) = mac(a3, b0, t3, 0);
    let (t4, c) = mac(a3, b1, t4, c);
    let (t5, c) = mac(a3, b2, t5, c);
    let (t6, c) = mac(a3, b3, t6, c);
    let (t7, c) = mac(a3, b4, t7, c);
    let (t8, c) = mac(a3, b5, t8, c);
    let (t9, c) = mac(a3, b6, t9, c);
    let (t10, c) = mac(a3, b7, t10, c);
    let t11 = c;
    let (t4, c) = mac(a4, b0, t4, 0);
    let (t5, c) = mac(a4, b1, t5, c);
    let (t6, c) = mac(a4, b2, t6, c);
    let (t7, c) = mac(a4, b3, t7, c);
    let (t8, c) = mac(a4, b4, t8, c);
    let (t9, c) = mac(a4, b5, t9, c);
    let (t10, c) = mac(a4, b6, t10, c);
    let (t11, c) = mac(a4, b7, t11, c);
    let t12 = c;
    let (t5, c) = mac(a5, b0, t5, 0);
    let (t6, c) = mac(a5, b1, t6, c);
    let (t7, c) = mac(a5, b2, t7, c);
    let (t8, c) = mac(a5, b3, t8, c);
    let (t9, c) = mac(a5, b4, t9, c);
    let (t10, c) = mac(a5, b5, t10, c);
    let (t11, c) = mac(a5, b6, t11, c);
    let (t12, c) = mac(a5, b7, t12, c);
    let t13 = c;
    let (t6, c) = mac(a6, b0, t6, 0);
    let (t7, c) = mac(a6, b1, t7, c);
    let (t8, c) = mac(a6, b2, t8, c);
    let (t9, c) = mac(a6, b3, t9, c);
    let (t10, c) = mac(a6, b4, t10, c);
    let (t11, c) = mac(a6, b5, t11, c);
    let (t12, c) = mac(a6, b6, t12, c);
    let (t13, c) = mac(a6, b7, t13, c);
    let t14 = c;
    let (t7, c) = mac(a7, b0, t7, 0);
    let (t8, c) = mac(a7, b1, t8, c);
    let (t9, c) = mac(a7, b2, t9, c);
    let (t10, c) = mac(a7, b3, t10, c);
    let (t11, c) = mac(a7, b4, t11, c);
    let (t12, c) = mac(a7, b5, t12, c);
    let (t13, c) = mac(a7, b6, t13, c);
    let (t14, c) = mac(a7, b7, t14, c);
    let t15 = c;
    reduce([
        t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15,
    ])
}

/// The square: the 28 cross products `a[i]·a[j]` (i < j) once, doubled,
/// plus the 8 squares `a[i]²`, written out.
#[inline(never)]
fn square(a: &Fe) -> Fe {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a.0;
    let (t1, c) = mac(a0, a1, 0, 0);
    let (t2, c) = mac(a0, a2, 0, c);
    let (t3, c) = mac(a0, a3, 0, c);
    let (t4, c) = mac(a0, a4, 0, c);
    let (t5, c) = mac(a0, a5, 0, c);
    let (t6, c) = mac(a0, a6, 0, c);
    let (t7, c) = mac(a0, a7, 0, c);
    let t8 = c;
    let (t3, c) = mac(a1, a2, t3, 0);
    let (t4, c) = mac(a1, a3, t4, c);
    let (t5, c) = mac(a1, a4, t5, c);
    let (t6, c) = mac(a1, a5, t6, c);
    let (t7, c) = mac(a1, a6, t7, c);
    let (t8, c) = mac(a1, a7, t8, c);
    let t9 = c;
    let (t5, c) = mac(a2, a3, t5, 0);
    let (t6, c) = mac(a2, a4, t6, c);
    let (t7, c) = mac(a2, a5, t7, c);
    let (t8, c) = mac(a2, a6, t8, c);
    let (t9, c) = mac(a2, a7, t9, c);
    let t10 = c;
    let (t7, c) = mac(a3, a4, t7, 0);
    let (t8, c) = mac(a3, a5, t8, c);
    let (t9, c) = mac(a3, a6, t9, c);
    let (t10, c) = mac(a3, a7, t10, c);
    let t11 = c;
    let (t9, c) = mac(a4, a5, t9, 0);
    let (t10, c) = mac(a4, a6, t10, c);
    let (t11, c) = mac(a4, a7, t11, c);
    let t12 = c;
    let (t11, c) = mac(a5, a6, t11, 0);
    let (t12, c) = mac(a5, a7, t12, c);
    let t13 = c;
    let (t13, c) = mac(a6, a7, t13, 0);
    let t14 = c;
    // Doubled (the cross products are below 2^511: no bit is lost).
    let t15 = t14 >> 31;
    let t14 = (t14 << 1) | (t13 >> 31);
    let t13 = (t13 << 1) | (t12 >> 31);
    let t12 = (t12 << 1) | (t11 >> 31);
    let t11 = (t11 << 1) | (t10 >> 31);
    let t10 = (t10 << 1) | (t9 >> 31);
    let t9 = (t9 << 1) | (t8 >> 31);
    let t8 = (t8 << 1) | (t7 >> 31);
    let t7 = (t7 << 1) | (t6 >> 31);
    let t6 = (t6 << 1) | (t5 >> 31);
    let t5 = (t5 << 1) | (t4 >> 31);
    let t4 = (t4 << 1) | (t3 >> 31);
    let t3 = (t3 << 1) | (t2 >> 31);
    let t2 = (t2 << 1) | (t1 >> 31);
    let t1 = t1 << 1;
    // Plus the squares at 2^(64·i).
    let (t0, c) = mac(a0, a0, 0, 0);
    let (t1, c) = adc(t1, c);
    let (t2, c) = mac(a1, a1, t2, c);
    let (t3, c) = adc(t3, c);
    let (t4, c) = mac(a2, a2, t4, c);
    let (t5, c) = adc(t5, c);
    let (t6, c) = mac(a3, a3, t6, c);
    let (t7, c) = adc(t7, c);
    let (t8, c) = mac(a4, a4, t8, c);
    let (t9, c) = adc(t9, c);
    let (t10, c) = mac(a5, a5, t10, c);
    let (t11, c) = adc(t11, c);
    let (t12, c) = mac(a6, a6, t12, c);
    let (t13, c) = adc(t13, c);
    let (t14, c) = mac(a7, a7, t14, c);
    let (t15, c) = adc(t15, c);
    debug_assert_eq!(c, 0);
    reduce([
        t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15,
    ])
}

/// A 512-bit product reduced below 2^256: `lo + 38·hi` (each step a
/// [`mac`]; the carry out is at most 38), then that carry times 38.
#[inline(always)]
fn reduce(t: [u32; 16]) -> Fe {
    let [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15] = t;
    let (r0, c) = mac(t8, 38, t0, 0);
    let (r1, c) = mac(t9, 38, t1, c);
    let (r2, c) = mac(t10, 38, t2, c);
    let (r3, c) = mac(t11, 38, t3, c);
    let (r4, c) = mac(t12, 38, t4, c);
    let (r5, c) = mac(t13, 38, t5, c);
    let (r6, c) = mac(t14, 38, t6, c);
    let (r7, c) = mac(t15, 38, t7, c);
    carry_in([r0, r1, r2, r3, r4, r5, r6, r7], c * 38)
}

/// `r + c` for `c < 2^22` folded below 2^256 (2^256 ≡ 38): the carry out
/// of the top limb is 0 or 1, and when it is 1 the sum wrapped to below
/// 2^22, so adding 38 for it cannot carry.
#[inline(always)]
fn carry_in(r: [u32; 8], c: u32) -> Fe {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = r;
    let (r0, c) = adc(r0, c);
    let (r1, c) = adc(r1, c);
    let (r2, c) = adc(r2, c);
    let (r3, c) = adc(r3, c);
    let (r4, c) = adc(r4, c);
    let (r5, c) = adc(r5, c);
    let (r6, c) = adc(r6, c);
    let (r7, c) = adc(r7, c);
    let r0 = r0.wrapping_add(c * 38);
    Fe([r0, r1, r2, r3, r4, r5, r6, r7])
}

#[inline(never)]
fn add(a: &Fe, b: &Fe) -> Fe {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a.0;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = b.0;
    let c = 0u64;
    let v = u64::from(a0) + u64::from(b0) + c;
    let (r0, c) = (v as u32, v >> 32);
    let v = u64::from(a1) + u64::from(b1) + c;
    let (r1, c) = (v as u32, v >> 32);
    let v = u64::from(a2) + u64::from(b2) + c;
    let (r2, c) = (v as u32, v >> 32);
    let v = u64::from(a3) + u64::from(b3) + c;
    let (r3, c) = (v as u32, v >> 32);
    let v = u64::from(a4) + u64::from(b4) + c;
    let (r4, c) = (v as u32, v >> 32);
    let v = u64::from(a5) + u64::from(b5) + c;
    let (r5, c) = (v as u32, v >> 32);
    let v = u64::from(a6) + u64::from(b6) + c;
    let (r6, c) = (v as u32, v >> 32);
    let v = u64::from(a7) + u64::from(b7) + c;
    let (r7, c) = (v as u32, v >> 32);
    carry_in([r0, r1, r2, r3, r4, r5, r6, r7], (c as u32) * 38)
}

/// `a − b`: a borrow out of the top limb added 2^256 ≡ 38, so 38 is taken
/// away, and once more if that borrowed too (then the difference was below
/// 38 and is now at least 2^256 − 38, so the last subtraction cannot borrow).
#[inline(never)]
fn sub(a: &Fe, b: &Fe) -> Fe {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a.0;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = b.0;
    let borrow = 0i64;
    let v = i64::from(a0) - i64::from(b0) + borrow;
    let (r0, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a1) - i64::from(b1) + borrow;
    let (r1, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a2) - i64::from(b2) + borrow;
    let (r2, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a3) - i64::from(b3) + borrow;
    let (r3, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a4) - i64::from(b4) + borrow;
    let (r4, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a5) - i64::from(b5) + borrow;
    let (r5, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a6) - i64::from(b6) + borrow;
    let (r6, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let v = i64::from(a7) - i64::from(b7) + borrow;
    let (r7, borrow) = (v as u32, v >> 32); // borrow: 0 or −1
    let b = borrow * 38;
    let v = i64::from(r0) + b;
    let (r0, b) = (v as u32, v >> 32);
    let v = i64::from(r1) + b;
    let (r1, b) = (v as u32, v >> 32);
    let v = i64::from(r2) + b;
    let (r2, b) = (v as u32, v >> 32);
    let v = i64::from(r3) + b;
    let (r3, b) = (v as u32, v >> 32);
    let v = i64::from(r4) + b;
    let (r4, b) = (v as u32, v >> 32);
    let v = i64::from(r5) + b;
    let (r5, b) = (v as u32, v >> 32);
    let v = i64::from(r6) + b;
    let (r6, b) = (v as u32, v >> 32);
    let v = i64::from(r7) + b;
    let (r7, b) = (v as u32, v >> 32);
    let r0 = r0.wrapping_sub(((-b) as u32) * 38);
    Fe([r0, r1, r2, r3, r4, r5, r6, r7])
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

/// On a bare-metal Arm build the multiplication and the square are the
/// assembly of `arm.rs` (the same limbs as [`mul`], in about half the
/// instructions); elsewhere, the Rust code here.
impl Mul<&Fe> for &Fe {
    type Output = Fe;
    fn mul(self, other: &Fe) -> Fe {
        #[cfg(all(target_arch = "arm", target_os = "none"))]
        return super::arm::mul(self, other);
        #[cfg(not(all(target_arch = "arm", target_os = "none")))]
        mul(self, other)
    }
}

impl Neg for &Fe {
    type Output = Fe;
    fn neg(self) -> Fe {
        sub(&Fe::ZERO, self)
    }
}

/// Swaps `a` and `b` when `choice` is set: a mask, never a branch (written
/// out: a loop costs more than the work at opt-level `z`).
pub(super) fn cswap(a: &mut Fe, b: &mut Fe, choice: Choice) {
    let mask = 0u32.wrapping_sub(u32::from(choice.unwrap_u8()));
    let (x, y) = (&mut a.0, &mut b.0);
    let t = mask & (x[0] ^ y[0]);
    x[0] ^= t;
    y[0] ^= t;
    let t = mask & (x[1] ^ y[1]);
    x[1] ^= t;
    y[1] ^= t;
    let t = mask & (x[2] ^ y[2]);
    x[2] ^= t;
    y[2] ^= t;
    let t = mask & (x[3] ^ y[3]);
    x[3] ^= t;
    y[3] ^= t;
    let t = mask & (x[4] ^ y[4]);
    x[4] ^= t;
    y[4] ^= t;
    let t = mask & (x[5] ^ y[5]);
    x[5] ^= t;
    y[5] ^= t;
    let t = mask & (x[6] ^ y[6]);
    x[6] ^= t;
    y[6] ^= t;
    let t = mask & (x[7] ^ y[7]);
    x[7] ^= t;
    y[7] ^= t;
}

/// Replaces `a` by `b` when `choice` is set: a mask, never a branch.
pub(super) fn cmov(a: &mut Fe, b: &Fe, choice: Choice) {
    let mask = 0u32.wrapping_sub(u32::from(choice.unwrap_u8()));
    let (x, y) = (&mut a.0, &b.0);
    x[0] ^= mask & (x[0] ^ y[0]);
    x[1] ^= mask & (x[1] ^ y[1]);
    x[2] ^= mask & (x[2] ^ y[2]);
    x[3] ^= mask & (x[3] ^ y[3]);
    x[4] ^= mask & (x[4] ^ y[4]);
    x[5] ^= mask & (x[5] ^ y[5]);
    x[6] ^= mask & (x[6] ^ y[6]);
    x[7] ^= mask & (x[7] ^ y[7]);
}

/// `a · k` for a small constant `k` (below 2^16): eight [`mac`]s and the
/// fold of the top word.
#[inline(never)]
pub(super) fn mul_small(a: &Fe, k: u32) -> Fe {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a.0;
    let (r0, c) = mac(a0, k, 0, 0);
    let (r1, c) = mac(a1, k, 0, c);
    let (r2, c) = mac(a2, k, 0, c);
    let (r3, c) = mac(a3, k, 0, c);
    let (r4, c) = mac(a4, k, 0, c);
    let (r5, c) = mac(a5, k, 0, c);
    let (r6, c) = mac(a6, k, 0, c);
    let (r7, c) = mac(a7, k, 0, c);
    // c < 2^16: c · 38 < 2^22.
    carry_in([r0, r1, r2, r3, r4, r5, r6, r7], c * 38)
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

/// Operands whose products reach the corners of the reduction, for the
/// tests here and the firmware's `field-check` of the assembly: the pair on
/// which the assembly multiplication of the `salty` crate loses a carry
/// (2^255 + 0x10d times p + 1), p, p + 1, 2^256 − 1, 0, 1, and two numbers
/// `b` for which 2^255 · b makes the last carry of [`reduce`] (the one
/// folded in as 38).
#[cfg(any(test, all(target_arch = "arm", target_os = "none")))]
pub(super) const SPECIAL: [Fe; 9] = [
    Fe([0x10d, 0, 0, 0, 0, 0, 0, 0x8000_0000]),
    Fe([0xffff_ffee, !0, !0, !0, !0, !0, !0, 0x7fff_ffff]),
    Fe([0xffff_ffed, !0, !0, !0, !0, !0, !0, 0x7fff_ffff]),
    Fe([!0; 8]),
    Fe::ZERO,
    Fe::ONE,
    Fe([0, 0, 0, 0, 0, 0, 0, 0x8000_0000]),
    Fe([
        0x35e5_0d79,
        0x5e50_d794,
        0xe50d_7943,
        0x50d7_9435,
        0x0d79_435e,
        0xd794_35e5,
        0x7943_5e50,
        0x1435_e50d,
    ]),
    Fe([
        0x435e_50d7,
        0x35e5_0d79,
        0x5e50_d794,
        0xe50d_7943,
        0x50d7_9435,
        0x0d79_435e,
        0xd794_35e5,
        0xf943_5e50,
    ]),
];

/// Compares the assembly multiplication with the Rust one (and the
/// assembly square with the Rust [`square`]), limb for limb: every pair of
/// [`SPECIAL`] operands, then `rounds` pairs from a xorshift generator whose
/// limbs are, one time in two, 0, 1, 2^31 − 1, 2^31, 2^32 − 19 or
/// 2^32 − 1 (where carries go wrong). Returns (products compared,
/// mismatches).
#[cfg(all(target_arch = "arm", target_os = "none"))]
pub(super) fn check_assembly(rounds: u32) -> (u32, u32) {
    fn same(x: &Fe, y: &Fe) -> bool {
        x.0 == y.0
    }
    let (mut compared, mut wrong) = (0u32, 0u32);
    let mut one = |a: &Fe, b: &Fe| {
        compared += 2;
        wrong += u32::from(!same(&super::arm::mul(a, b), &mul(a, b)));
        wrong += u32::from(!same(&a.squared(), &square(a)));
    };
    for a in &SPECIAL {
        for b in &SPECIAL {
            one(a, b);
        }
    }
    let mut state = 0x9e37_79b9u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    const EDGES: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffed, 0xffff_ffff];
    let mut operand = || {
        let mut l = [0u32; 8];
        for x in l.iter_mut() {
            let r = next();
            *x = if r & 1 == 0 {
                EDGES[(r >> 1) as usize % EDGES.len()]
            } else {
                next()
            };
        }
        Fe(l)
    };
    for _ in 0..rounds {
        let (a, b) = (operand(), operand());
        one(&a, &b);
    }
    (compared, wrong)
}
