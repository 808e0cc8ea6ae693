//! The check of vouch-proto's field multiplication in assembly (the
//! Cortex-M provider's `arm.rs`), under QEMU:
//!
//! - the assembly and the Rust code it replaces multiply the same operands,
//!   edge cases and 100,000 generated pairs, and must agree limb for limb;
//! - a probe calls the assembly with marked values in r4–r11 and checks
//!   that they, and the stack pointer, come back unchanged (the procedure
//!   call standard; a limb comparison cannot see a register it forgot to
//!   save, and QEMU would not fault on it).
//!
//! Prints `FIELD compared N wrong M`, `ABI clobbered 0x…` and `RESULT PASS`
//! or `RESULT FAIL` through semihosting; `run.sh` runs it for every build
//! of the provider.
#![no_std]
#![no_main]

use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::{debug, hprintln};

/// Generated pairs, besides every pair of the edge operands.
const ROUNDS: u32 = 100_000;

// vouch_abi_probe(r, a, b): puts a marker in each of r4–r11, calls
// vouch_fe25519_mul(r, a, b) (the arguments pass through in r0–r2), and
// returns a mask with bit n set if rn came back changed (bit 13: the stack
// pointer).
core::arch::global_asm!(
    ".pushsection .bss.vouch_abi_probe_sp,\"aw\",%nobits",
    ".p2align 2",
    "vouch_abi_probe_sp: .space 4",
    ".popsection",
    ".pushsection .text.vouch_abi_probe,\"ax\",%progbits",
    ".global vouch_abi_probe",
    ".type vouch_abi_probe, %function",
    ".p2align 2",
    ".thumb_func",
    "vouch_abi_probe:",
    "push {{r4-r11, lr}}",
    "ldr r4, =0x40404041",
    "ldr r5, =0x50505051",
    "ldr r6, =0x60606061",
    "ldr r7, =0x70707071",
    "ldr r8, =0x80808081",
    "ldr r9, =0x90909091",
    "ldr r10, =0xa0a0a0a1",
    "ldr r11, =0xb0b0b0b1",
    "ldr r3, =vouch_abi_probe_sp",
    "mov r12, sp",
    "str r12, [r3]",
    "bl vouch_fe25519_mul",
    "movs r0, #0",
    "ldr r3, =0x40404041",
    "cmp r4, r3",
    "it ne",
    "orrne r0, r0, #(1 << 4)",
    "ldr r3, =0x50505051",
    "cmp r5, r3",
    "it ne",
    "orrne r0, r0, #(1 << 5)",
    "ldr r3, =0x60606061",
    "cmp r6, r3",
    "it ne",
    "orrne r0, r0, #(1 << 6)",
    "ldr r3, =0x70707071",
    "cmp r7, r3",
    "it ne",
    "orrne r0, r0, #(1 << 7)",
    "ldr r3, =0x80808081",
    "cmp r8, r3",
    "it ne",
    "orrne r0, r0, #(1 << 8)",
    "ldr r3, =0x90909091",
    "cmp r9, r3",
    "it ne",
    "orrne r0, r0, #(1 << 9)",
    "ldr r3, =0xa0a0a0a1",
    "cmp r10, r3",
    "it ne",
    "orrne r0, r0, #(1 << 10)",
    "ldr r3, =0xb0b0b0b1",
    "cmp r11, r3",
    "it ne",
    "orrne r0, r0, #(1 << 11)",
    "ldr r3, =vouch_abi_probe_sp",
    "ldr r3, [r3]",
    "mov r12, sp",
    "cmp r3, r12",
    "it ne",
    "orrne r0, r0, #(1 << 13)",
    "pop {{r4-r11, pc}}",
    ".ltorg",
    ".size vouch_abi_probe, . - vouch_abi_probe",
    ".popsection",
);

extern "C" {
    fn vouch_abi_probe(r: *mut [u32; 8], a: *const [u32; 8], b: *const [u32; 8]) -> u32;
}

/// The registers and stack pointer the assembly failed to give back (a
/// mask by register number; 0 when it kept to the procedure call standard),
/// and the product it wrote.
fn abi_probe() -> (u32, [u32; 8]) {
    let a = [0x8000_0000u32, 1, 0xffff_ffff, 7, 0x1234_5678, 0, 0xffff_ffed, 0x7fff_ffff];
    let b = [3u32, 0xffff_ffff, 0x8000_0000, 0, 9, 0xdead_beef, 1, 0x4000_0000];
    let mut r = [0u32; 8];
    // SAFETY: the probe passes its three pointers, to live and word-aligned
    // `[u32; 8]`s, to vouch_fe25519_mul in the registers the procedure call
    // standard puts them in, and keeps to that standard itself.
    let clobbered = unsafe { vouch_abi_probe(&mut r, &a, &b) };
    (clobbered, r)
}

#[entry]
fn main() -> ! {
    // The probe first: a register the assembly fails to give back could
    // break the Rust code that calls it next.
    let (clobbered, product) = abi_probe();
    hprintln!("ABI clobbered {:#x}", clobbered);
    let (compared, wrong) = vouch_proto::provider::cortex_m::check_field_assembly(ROUNDS);
    hprintln!("FIELD compared {} wrong {}", compared, wrong);
    if clobbered == 0 && product != [0; 8] && wrong == 0 && compared > 2 * ROUNDS {
        hprintln!("RESULT PASS");
        debug::exit(debug::EXIT_SUCCESS);
    } else {
        hprintln!("RESULT FAIL");
        debug::exit(debug::EXIT_FAILURE);
    }
    loop {}
}

/// A fault (an unaligned `LDRD`, a bad return) fails the run instead of
/// hanging it.
#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    hprintln!("RESULT FAIL (HardFault)");
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    hprintln!("RESULT FAIL (panic)");
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}
