#!/usr/bin/env python3
"""Writes arm.rs: the Cortex-M provider's field multiplication in Thumb-2
assembly (ARMv7E-M and ARMv8-M Mainline with the DSP extension).

    ./gen_arm.py > arm.rs

The assembly computes exactly what `field::mul` computes in Rust, step for
step: the 64 limb products by operand scanning, each `t + c + a[i]*b[j]`
(one UMAAL), then the reduction `lo + 38*hi`, then the carry times 38, then
the last carry's 38. The generator exists because the registers rotate: row
i of the product keeps the eight partial words t[i..i+8] and its carry in
nine registers, and the register that held t[i] (final once row i has
started) becomes the carry of row i + 1. run.sh checks that arm.rs is this
script's output, and the firmware's `field-check` compares the assembly
with the Rust code limb for limb under QEMU.
"""

# The nine registers of the rotating window: t[k] lives in R[k % 9].
R = ["r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "lr"]
A = "r3"  # a[i] of the current row
B = ("r12", "r0")  # b[j], b[j + 1] (r0 is free once the output pointer is pushed)

lines = []


def op(text, comment=""):
    lines.append((text, comment))


def note(text):
    lines.append(f"    // {text}")


def t(k):
    return R[k % 9]


op("push {{r0, r4-r11, lr}}", "the output pointer, then callee-saved")
op("sub sp, #32", "t[0..8], the low half of the product")
note("Row 0 adds into zeros.")
for r in R:
    op(f"mov {r}, #0")
for i in range(8):
    note(f"Row {i}: t[{i}..{i + 8}] += a[{i}] * b, the carry into t[{i + 8}].")
    c = t(i + 8)
    op(f"ldr {A}, [r1, #{4 * i}]", f"a[{i}]")
    if i > 0:
        op(f"mov {c}, #0", f"{c}: t[{i - 1}] was stored; now the carry")
    for p in range(4):
        j = 2 * p
        op(f"ldrd {B[0]}, {B[1]}, [r2, #{4 * j}]", f"b[{j}], b[{j + 1}]")
        op(f"umaal {t(i + j)}, {c}, {A}, {B[0]}", f"t[{i + j}] + c + a[{i}]*b[{j}]")
        if j == 0:
            op(f"str {t(i)}, [sp, #{4 * i}]", f"t[{i}] is final")
        op(f"umaal {t(i + j + 1)}, {c}, {A}, {B[1]}", f"t[{i + j + 1}] + c + a[{i}]*b[{j + 1}]")
note("t[8..16] are in registers: r = t[0..8] + 38 * t[8..16], carry in r2.")
op("mov r1, #38")
op("mov r2, #0")
out = []
for k in range(8):
    dst = R[7] if k == 0 else t(k + 7)  # t[7]'s register, then each freed high word's
    op(f"ldr {dst}, [sp, #{4 * k}]", f"t[{k}]")
    op(f"umaal {dst}, r2, {t(k + 8)}, r1", f"r[{k}] = t[{k}] + c + 38*t[{k + 8}]")
    out.append(dst)
note("The carry (at most 38) times 38, added in; the carry out of that is")
note("0 or 1, and when it is 1 the sum wrapped below 2^11: adding 38 for it")
note("cannot carry. A mask, not a branch.")
op("mul r2, r2, r1", "c * 38")
op(f"adds {out[0]}, {out[0]}, r2")
for r in out[1:]:
    op(f"adcs {r}, {r}, #0")
op("sbc r2, r2, r2", "0 if the sum carried, else all ones")
op("bic r2, r1, r2", "38 if it carried, else 0")
op(f"add {out[0]}, {out[0]}, r2")
op("ldr r0, [sp, #32]", "the output pointer")
assert out == ["r11", "lr", "r4", "r5", "r6", "r7", "r8", "r9"], out
op(f"strd {out[0]}, {out[1]}, [r0]", "r[0], r[1]")
op("add r0, #8")
op("stm r0, {{r4-r9}}", "r[2..8]")
op("add sp, #36")
op("pop {{r4-r11, pc}}")



def render(line):
    if isinstance(line, str):
        return line
    text, comment = line
    code = f'    "{text}",'
    return f"{code:<40}// {comment}" if comment else code


body = "\n".join(render(line) for line in lines)

print(
    '''\
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
    "the assembly field multiplication needs an M-profile core with UMAAL \\
     (thumbv7em-* or thumbv8m.main-* with the DSP extension)"
);

// The returned `Fe` is what the assembly writes: 32 bytes, word-aligned.
const _: () = assert!(core::mem::size_of::<Fe>() == 32 && core::mem::align_of::<Fe>() == 4);

// Generated, with a comment per instruction aligned by the generator.
#[rustfmt::skip]
core::arch::global_asm!(
    ".pushsection .text.vouch_fe25519_mul,\\"ax\\",%progbits",
    ".syntax unified",
    ".thumb",
    ".arch armv7e-m",
    ".global vouch_fe25519_mul",
    ".type vouch_fe25519_mul, %function",
    ".p2align 2",
    ".thumb_func",
    "vouch_fe25519_mul:",'''
)
print(body)
print(
    '''\
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
}'''
)
