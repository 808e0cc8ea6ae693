//! The field multiplication in Thumb-2 assembly, for the Cortex-M4 and
//! Cortex-M33 (written by `gen_arm.py`; do not edit by hand).
//!
//! This is the workspace's one module with `unsafe` code: the assembly and
//! the call into it. The assembly computes the same limbs as `field::mul`,
//! step for step (see `gen_arm.py`), and the firmware's `field-check`
//! (`peripheral/firmware/run.sh`) checks, under QEMU on both cores, that its
//! products and squares equal the Rust code's limb for limb and that it
//! gives back r4–r11 and the stack pointer as it found them.
//!
//! What it relies on, and why it holds:
//! - The core has `UMAAL` (ARMv7E-M, or ARMv8-M Mainline with the DSP
//!   extension) and is M-profile: the build is refused below otherwise.
//! - It reads eight words at `a` and at `b` and writes eight at `r` (the
//!   returned `Fe`), all word-aligned (`LDRD` and `STM` need that). `r` is
//!   written only after the last read of `a` and `b`, so it may be either.
//! - It follows the procedure call standard (AAPCS): r4–r11 and lr are saved
//!   and restored, the stack pointer comes back where it was, nothing is
//!   stored below it, and it calls nothing. It uses r9 as a general
//!   register (saved and restored), so it is not for a build that keeps r9
//!   as its static base (`relocation-model=rwpi`), and r7 (the frame
//!   pointer in Thumb code), so a backtrace cannot walk through it.
//! - Constant time: no branch, and every load and store is at a fixed offset
//!   of `a`, `b`, `r` or the stack. `UMAAL`, `MUL` and the additions take a
//!   fixed number of cycles on these cores.
//!
//! The assembly switches the assembler to `armv7e-m` (module assembly of a
//! thumbv8m.main build does not assume the DSP extension even when the
//! core has it; the instructions are encoded the same in both). It does not
//! switch back: assembly in another crate of the same build that needs
//! ARMv8-M instructions says its own `.arch`.

#![allow(unsafe_code)]
#![deny(improper_ctypes)]

use super::field::Fe;

#[cfg(not(all(
    target_feature = "dsp",
    target_feature = "thumb2",
    target_feature = "mclass",
    target_endian = "little"
)))]
compile_error!(
    "the assembly field multiplication needs an M-profile core with UMAAL \
     (thumbv7em-* or thumbv8m.main-* with the DSP extension)"
);

// The returned `Fe` is what the assembly writes: 32 bytes, word-aligned.
const _: () = assert!(core::mem::size_of::<Fe>() == 32 && core::mem::align_of::<Fe>() == 4);

// Generated, with a comment per instruction aligned by the generator.
#[rustfmt::skip]
core::arch::global_asm!(
    ".pushsection .text.vouch_fe25519_mul,\"ax\",%progbits",
    ".syntax unified",
    ".thumb",
    ".arch armv7e-m",
    ".global vouch_fe25519_mul",
    ".type vouch_fe25519_mul, %function",
    ".p2align 2",
    ".thumb_func",
    "vouch_fe25519_mul:",
    "push {{r0, r4-r11, lr}}",          // the output pointer, then callee-saved
    "sub sp, #32",                      // t[0..8], the low half of the product
    // Row 0 adds into zeros.
    "mov r4, #0",
    "mov r5, #0",
    "mov r6, #0",
    "mov r7, #0",
    "mov r8, #0",
    "mov r9, #0",
    "mov r10, #0",
    "mov r11, #0",
    "mov lr, #0",
    // Row 0: t[0..8] += a[0] * b, the carry into t[8].
    "ldr r3, [r1, #0]",                 // a[0]
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r4, lr, r3, r12",            // t[0] + c + a[0]*b[0]
    "str r4, [sp, #0]",                 // t[0] is final
    "umaal r5, lr, r3, r0",             // t[1] + c + a[0]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r6, lr, r3, r12",            // t[2] + c + a[0]*b[2]
    "umaal r7, lr, r3, r0",             // t[3] + c + a[0]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r8, lr, r3, r12",            // t[4] + c + a[0]*b[4]
    "umaal r9, lr, r3, r0",             // t[5] + c + a[0]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r10, lr, r3, r12",           // t[6] + c + a[0]*b[6]
    "umaal r11, lr, r3, r0",            // t[7] + c + a[0]*b[7]
    // Row 1: t[1..9] += a[1] * b, the carry into t[9].
    "ldr r3, [r1, #4]",                 // a[1]
    "mov r4, #0",                       // r4: t[0] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r5, r4, r3, r12",            // t[1] + c + a[1]*b[0]
    "str r5, [sp, #4]",                 // t[1] is final
    "umaal r6, r4, r3, r0",             // t[2] + c + a[1]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r7, r4, r3, r12",            // t[3] + c + a[1]*b[2]
    "umaal r8, r4, r3, r0",             // t[4] + c + a[1]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r9, r4, r3, r12",            // t[5] + c + a[1]*b[4]
    "umaal r10, r4, r3, r0",            // t[6] + c + a[1]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r11, r4, r3, r12",           // t[7] + c + a[1]*b[6]
    "umaal lr, r4, r3, r0",             // t[8] + c + a[1]*b[7]
    // Row 2: t[2..10] += a[2] * b, the carry into t[10].
    "ldr r3, [r1, #8]",                 // a[2]
    "mov r5, #0",                       // r5: t[1] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r6, r5, r3, r12",            // t[2] + c + a[2]*b[0]
    "str r6, [sp, #8]",                 // t[2] is final
    "umaal r7, r5, r3, r0",             // t[3] + c + a[2]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r8, r5, r3, r12",            // t[4] + c + a[2]*b[2]
    "umaal r9, r5, r3, r0",             // t[5] + c + a[2]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r10, r5, r3, r12",           // t[6] + c + a[2]*b[4]
    "umaal r11, r5, r3, r0",            // t[7] + c + a[2]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal lr, r5, r3, r12",            // t[8] + c + a[2]*b[6]
    "umaal r4, r5, r3, r0",             // t[9] + c + a[2]*b[7]
    // Row 3: t[3..11] += a[3] * b, the carry into t[11].
    "ldr r3, [r1, #12]",                // a[3]
    "mov r6, #0",                       // r6: t[2] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r7, r6, r3, r12",            // t[3] + c + a[3]*b[0]
    "str r7, [sp, #12]",                // t[3] is final
    "umaal r8, r6, r3, r0",             // t[4] + c + a[3]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r9, r6, r3, r12",            // t[5] + c + a[3]*b[2]
    "umaal r10, r6, r3, r0",            // t[6] + c + a[3]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r11, r6, r3, r12",           // t[7] + c + a[3]*b[4]
    "umaal lr, r6, r3, r0",             // t[8] + c + a[3]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r4, r6, r3, r12",            // t[9] + c + a[3]*b[6]
    "umaal r5, r6, r3, r0",             // t[10] + c + a[3]*b[7]
    // Row 4: t[4..12] += a[4] * b, the carry into t[12].
    "ldr r3, [r1, #16]",                // a[4]
    "mov r7, #0",                       // r7: t[3] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r8, r7, r3, r12",            // t[4] + c + a[4]*b[0]
    "str r8, [sp, #16]",                // t[4] is final
    "umaal r9, r7, r3, r0",             // t[5] + c + a[4]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r10, r7, r3, r12",           // t[6] + c + a[4]*b[2]
    "umaal r11, r7, r3, r0",            // t[7] + c + a[4]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal lr, r7, r3, r12",            // t[8] + c + a[4]*b[4]
    "umaal r4, r7, r3, r0",             // t[9] + c + a[4]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r5, r7, r3, r12",            // t[10] + c + a[4]*b[6]
    "umaal r6, r7, r3, r0",             // t[11] + c + a[4]*b[7]
    // Row 5: t[5..13] += a[5] * b, the carry into t[13].
    "ldr r3, [r1, #20]",                // a[5]
    "mov r8, #0",                       // r8: t[4] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r9, r8, r3, r12",            // t[5] + c + a[5]*b[0]
    "str r9, [sp, #20]",                // t[5] is final
    "umaal r10, r8, r3, r0",            // t[6] + c + a[5]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r11, r8, r3, r12",           // t[7] + c + a[5]*b[2]
    "umaal lr, r8, r3, r0",             // t[8] + c + a[5]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r4, r8, r3, r12",            // t[9] + c + a[5]*b[4]
    "umaal r5, r8, r3, r0",             // t[10] + c + a[5]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r6, r8, r3, r12",            // t[11] + c + a[5]*b[6]
    "umaal r7, r8, r3, r0",             // t[12] + c + a[5]*b[7]
    // Row 6: t[6..14] += a[6] * b, the carry into t[14].
    "ldr r3, [r1, #24]",                // a[6]
    "mov r9, #0",                       // r9: t[5] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r10, r9, r3, r12",           // t[6] + c + a[6]*b[0]
    "str r10, [sp, #24]",               // t[6] is final
    "umaal r11, r9, r3, r0",            // t[7] + c + a[6]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal lr, r9, r3, r12",            // t[8] + c + a[6]*b[2]
    "umaal r4, r9, r3, r0",             // t[9] + c + a[6]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r5, r9, r3, r12",            // t[10] + c + a[6]*b[4]
    "umaal r6, r9, r3, r0",             // t[11] + c + a[6]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r7, r9, r3, r12",            // t[12] + c + a[6]*b[6]
    "umaal r8, r9, r3, r0",             // t[13] + c + a[6]*b[7]
    // Row 7: t[7..15] += a[7] * b, the carry into t[15].
    "ldr r3, [r1, #28]",                // a[7]
    "mov r10, #0",                      // r10: t[6] was stored; now the carry
    "ldrd r12, r0, [r2, #0]",           // b[0], b[1]
    "umaal r11, r10, r3, r12",          // t[7] + c + a[7]*b[0]
    "str r11, [sp, #28]",               // t[7] is final
    "umaal lr, r10, r3, r0",            // t[8] + c + a[7]*b[1]
    "ldrd r12, r0, [r2, #8]",           // b[2], b[3]
    "umaal r4, r10, r3, r12",           // t[9] + c + a[7]*b[2]
    "umaal r5, r10, r3, r0",            // t[10] + c + a[7]*b[3]
    "ldrd r12, r0, [r2, #16]",          // b[4], b[5]
    "umaal r6, r10, r3, r12",           // t[11] + c + a[7]*b[4]
    "umaal r7, r10, r3, r0",            // t[12] + c + a[7]*b[5]
    "ldrd r12, r0, [r2, #24]",          // b[6], b[7]
    "umaal r8, r10, r3, r12",           // t[13] + c + a[7]*b[6]
    "umaal r9, r10, r3, r0",            // t[14] + c + a[7]*b[7]
    // t[8..16] are in registers: r = t[0..8] + 38 * t[8..16], carry in r2.
    "mov r1, #38",
    "mov r2, #0",
    "ldr r11, [sp, #0]",                // t[0]
    "umaal r11, r2, lr, r1",            // r[0] = t[0] + c + 38*t[8]
    "ldr lr, [sp, #4]",                 // t[1]
    "umaal lr, r2, r4, r1",             // r[1] = t[1] + c + 38*t[9]
    "ldr r4, [sp, #8]",                 // t[2]
    "umaal r4, r2, r5, r1",             // r[2] = t[2] + c + 38*t[10]
    "ldr r5, [sp, #12]",                // t[3]
    "umaal r5, r2, r6, r1",             // r[3] = t[3] + c + 38*t[11]
    "ldr r6, [sp, #16]",                // t[4]
    "umaal r6, r2, r7, r1",             // r[4] = t[4] + c + 38*t[12]
    "ldr r7, [sp, #20]",                // t[5]
    "umaal r7, r2, r8, r1",             // r[5] = t[5] + c + 38*t[13]
    "ldr r8, [sp, #24]",                // t[6]
    "umaal r8, r2, r9, r1",             // r[6] = t[6] + c + 38*t[14]
    "ldr r9, [sp, #28]",                // t[7]
    "umaal r9, r2, r10, r1",            // r[7] = t[7] + c + 38*t[15]
    // The carry (at most 38) times 38, added in; the carry out of that is
    // 0 or 1, and when it is 1 the sum wrapped below 2^11: adding 38 for it
    // cannot carry. A mask, not a branch.
    "mul r2, r2, r1",                   // c * 38
    "adds r11, r11, r2",
    "adcs lr, lr, #0",
    "adcs r4, r4, #0",
    "adcs r5, r5, #0",
    "adcs r6, r6, #0",
    "adcs r7, r7, #0",
    "adcs r8, r8, #0",
    "adcs r9, r9, #0",
    "sbc r2, r2, r2",                   // 0 if the sum carried, else all ones
    "bic r2, r1, r2",                   // 38 if it carried, else 0
    "add r11, r11, r2",
    "ldr r0, [sp, #32]",                // the output pointer
    "strd r11, lr, [r0]",               // r[0], r[1]
    "add r0, #8",
    "stm r0, {{r4-r9}}",                // r[2..8]
    "add sp, #36",
    "pop {{r4-r11, pc}}",
    ".size vouch_fe25519_mul, . - vouch_fe25519_mul",
    ".popsection",
);

extern "C" {
    /// `a · b`, reduced below 2^256 as `field::mul` reduces it. `Fe` is a
    /// `repr(C)` struct of 32 bytes, so the procedure call standard returns
    /// it in memory: the caller passes where to write it in r0, before `a`
    /// (r1) and `b` (r2), and the caller's own result is written in place.
    fn vouch_fe25519_mul(a: &[u32; 8], b: &[u32; 8]) -> Fe;
}

/// `a · b` modulo p, below 2^256: the same limbs as `field::mul`.
#[inline(always)]
pub(super) fn mul(a: &Fe, b: &Fe) -> Fe {
    // SAFETY: the core has UMAAL (the build is refused otherwise, above);
    // `a` and `b` are live, word-aligned `[u32; 8]`s and the result is a
    // 32-byte, word-aligned `repr(C)` struct of the caller's (asserted
    // above); the function reads and writes only those 24 words and its own
    // stack frame, writes the result after its last read of `a` and `b`, and
    // keeps to the procedure call standard (see the module's docs; checked
    // under QEMU by the firmware's `field-check`).
    unsafe { vouch_fe25519_mul(&a.0, &b.0) }
}
