//! Vouch on a microcontroller: the peripheral role of `vouch-proto` (no `std`,
//! no heap) runs one full handshake and one resumption against the gateway
//! messages recorded in SPEC.md §12, on a bare-metal Cortex-M under QEMU.
//!
//! With the vectors' fixed inputs (the peripheral's seed, the backend's anchor,
//! and the ephemeral secrets fed through [`FixedRng`]) every byte the
//! peripheral produces is known: the Hello, the Finish, the ResumeHello, the
//! resumption's Finish, the session keys, ids and records. The firmware checks
//! each of them, checks that the Responses of the negative vectors are
//! rejected, and reports through semihosting: one `CHECK` line per comparison,
//! one `STEP` line per measured step, `RESULT PASS` or `RESULT FAIL`, and the
//! exit code.
//!
//! Measurements (read by `run.sh`):
//! - Instructions: `hs_mark` is called right before and right after each step;
//!   the QEMU plugin in `qemu-plugin/` prints the exact guest instruction count
//!   at each call, and also attributes instructions to the protocol's
//!   operations (by their call sites in the ELF).
//! - Stack: before each step the free stack is painted; after it, the deepest
//!   overwritten word gives the step's peak, measured from the top of the
//!   stack (so it includes this firmware's own frames; its long-lived state is
//!   in static RAM, see [`State`]).
//!
//! No heap: there is no global allocator, and `run.sh` builds with
//! `-Zbuild-std=core`, so the `alloc` crate does not exist in this build.
#![no_std]
#![no_main]

use core::convert::Infallible;
use core::hint::black_box;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::{debug, hio};
use vouch_proto::anchor::{Anchor, AnchorDigest, AnchorSet};
use vouch_proto::handshake::peripheral::{
    PeripheralConfig, PeripheralEstablished, PeripheralHandshake, PeripheralTicket,
};
#[cfg(not(feature = "cortex-m"))]
use vouch_proto::keys::IdentityKey;
use vouch_proto::keys::{DhPublic, KeyId, PeripheralId, PublicKey};
use vouch_proto::session::Inbound;
use vouch_proto::wire::{Scope, MAX_HANDSHAKE_MESSAGE};
#[cfg(feature = "cortex-m")]
use vouch_proto::{keys::IdentitySigner as _, provider::cortex_m::SigningKey as IdentityKey};
use vouch_proto::{Error, Timestamp};

#[rustfmt::skip]
mod vectors;
use vectors as v;

/// All parties of the vectors run at this time (SPEC.md §12).
const NOW: Timestamp = Timestamp(1_000);

// ---------------------------------------------------------------------------
// Fixed inputs
// ---------------------------------------------------------------------------

/// Decodes hex at compile time (for the vectors).
pub(crate) const fn unhex<const N: usize>(s: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let s = s.as_bytes();
    assert!(s.len() == 2 * N, "hex length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nibble(s[2 * i]) << 4) | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// "Randomness" that is one fixed 32-byte secret: an X25519 ephemeral secret
/// of the vectors. Asking for more than it holds fails the run, so a change in
/// how much randomness the handshake draws cannot go unnoticed.
struct FixedRng {
    bytes: [u8; 32],
    used: usize,
}

impl FixedRng {
    fn new(bytes: [u8; 32]) -> Self {
        Self { bytes, used: 0 }
    }
}

impl rand_core::TryRng for FixedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let end = self.used + dst.len();
        if end > self.bytes.len() {
            fail(b"FixedRng exhausted: the handshake drew more randomness than the vectors hold");
        }
        dst.copy_from_slice(&self.bytes[self.used..end]);
        self.used = end;
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FixedRng {}

// ---------------------------------------------------------------------------
// Output through semihosting, without core::fmt (it would cost flash)
// ---------------------------------------------------------------------------

fn put(bytes: &[u8]) {
    // Opened once: each open takes a file handle on the host.
    static mut STDOUT: Option<hio::HostStream> = None;
    // SAFETY: one thread and no interrupts, so nothing else uses STDOUT
    // while this reference lives.
    let stdout = unsafe { &mut *core::ptr::addr_of_mut!(STDOUT) };
    if stdout.is_none() {
        *stdout = hio::hstdout().ok();
    }
    if let Some(out) = stdout {
        let _ = out.write_all(bytes);
    }
}

/// Up to 10 decimal digits.
fn put_u32(mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&buf[i..]);
}

fn put_hex(bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for chunk in bytes.chunks(32) {
        let mut buf = [0u8; 64];
        for (i, b) in chunk.iter().enumerate() {
            buf[2 * i] = DIGITS[(b >> 4) as usize];
            buf[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        put(&buf[..2 * chunk.len()]);
    }
}

fn fail(why: &[u8]) -> ! {
    put(b"FATAL ");
    put(why);
    put(b"\nRESULT FAIL\n");
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Tallies the comparisons with the vectors.
struct Checks {
    failed: u32,
    passed: u32,
}

impl Checks {
    /// `CHECK <name> ok`, or `CHECK <name> FAIL got <hex> want <hex>`.
    fn bytes(&mut self, name: &[u8], got: &[u8], want: &[u8]) {
        put(b"CHECK ");
        put(name);
        if got == want {
            self.passed += 1;
            put(b" ok\n");
        } else {
            self.failed += 1;
            put(b" FAIL got ");
            put_hex(got);
            put(b" want ");
            put_hex(want);
            put(b"\n");
        }
    }

    fn that(&mut self, name: &[u8], ok: bool) {
        self.bytes(name, &[u8::from(ok)], &[1]);
    }
}

// ---------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------

/// The QEMU plugin prints the guest instruction count each time this runs.
#[inline(never)]
#[no_mangle]
pub extern "C" fn hs_mark(id: u32) {
    black_box(id);
}

extern "C" {
    // From cortex-m-rt's link.x: the stack grows down from `_stack_start`
    // (the top of RAM) towards `_stack_end` (the end of .bss).
    static _stack_start: u32;
    static _stack_end: u32;
}

const PAINT: u32 = 0xCCCC_CCCC;

fn stack_top() -> usize {
    core::ptr::addr_of!(_stack_start) as usize
}

fn stack_bottom() -> usize {
    core::ptr::addr_of!(_stack_end) as usize
}

fn sp() -> usize {
    cortex_m::register::msp::read() as usize
}

/// Paints the free stack, below this function's own frame.
#[inline(never)]
fn paint_stack() {
    let below = sp() - 16;
    let mut p = stack_bottom();
    while p < below {
        // SAFETY: between the end of .bss and the stack pointer: unused stack,
        // and nothing else runs (no interrupts are enabled).
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of stack used since the last paint, measured from the top.
#[inline(never)]
fn stack_peak() -> usize {
    let mut p = stack_bottom();
    // SAFETY: reads of the stack region only.
    while p < stack_top() && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    stack_top() - p
}

/// Runs one measured step: paints the stack, brackets `f` with `hs_mark`, and
/// prints `STEP <name> stack=<peak from top> caller=<depth at the call>`.
/// `run.sh` pairs the n-th STEP line with the n-th pair of marks.
#[inline(always)]
fn step<T>(id: u32, name: &[u8], f: impl FnOnce() -> T) -> T {
    paint_stack();
    let caller = stack_top() - sp();
    hs_mark(id);
    let r = f();
    hs_mark(id);
    black_box(&r);
    let peak = stack_peak();
    put(b"STEP ");
    put(name);
    put(b" stack=");
    put_u32(peak as u32);
    put(b" caller=");
    put_u32(caller as u32);
    put(b"\n");
    r
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// What a firmware keeps between steps. It lives in static RAM, as in a real
/// firmware (a connection's state outlives any one call), so the stack holds
/// only the work of each step.
struct State {
    /// Loaded from flash at boot.
    device: Option<Provisioned>,
    /// The handshake in progress.
    handshake: Option<PeripheralHandshake>,
    /// The session it established.
    session: Option<PeripheralEstablished>,
}

/// What a firmware loads from flash at boot.
struct Provisioned {
    /// Signs with the Cortex-M provider (feature `cortex-m`) or with
    /// ed25519-dalek: the same signatures (Ed25519 is deterministic).
    key: IdentityKey,
    id: PeripheralId,
    anchors: AnchorSet,
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns this into a `&'static mut` (it runs once).
    static mut STATE: State = State {
        device: None,
        handshake: None,
        session: None,
    };
    put(b"vouch-firmware: peripheral role of vouch-proto, SPEC.md section 12 vectors\n");
    let mut checks = Checks {
        failed: 0,
        passed: 0,
    };
    run(&mut checks, STATE);
    put(b"SIZE PeripheralHandshake=");
    put_u32(core::mem::size_of::<PeripheralHandshake>() as u32);
    put(b" PeripheralEstablished=");
    put_u32(core::mem::size_of::<PeripheralEstablished>() as u32);
    put(b" Provisioned=");
    put_u32(core::mem::size_of::<Provisioned>() as u32);
    put(b"\nCHECKS passed=");
    put_u32(checks.passed);
    put(b" failed=");
    put_u32(checks.failed);
    put(b"\n");
    if checks.failed == 0 && checks.passed > 0 {
        put(b"RESULT PASS\n");
        debug::exit(debug::EXIT_SUCCESS);
    } else {
        put(b"RESULT FAIL\n");
        debug::exit(debug::EXIT_FAILURE);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

#[inline(never)]
fn run(c: &mut Checks, st: &mut State) {
    let config = PeripheralConfig::default();
    boot(c, &mut st.device);
    let Some(dev) = &st.device else {
        fail(b"not provisioned");
    };
    full_handshake(c, &config, dev, &mut st.handshake, &mut st.session);
    resumption(c, &config, dev, &mut st.handshake, &mut st.session);
    negative_responses(c, &config, dev, &mut st.handshake);
}

// The steps, each in a frame of its own (vouch-proto code is inlined into
// these, not into their callers), writing their result where it is kept.

#[inline(never)]
fn boot_key(seed: &[u8; 32]) -> IdentityKey {
    IdentityKey::from_seed(seed)
}

#[inline(never)]
fn full_start(
    slot: &mut Option<PeripheralHandshake>,
    config: &PeripheralConfig,
    dev: &Provisioned,
    rng: &mut FixedRng,
) -> Result<(), Error> {
    *slot = None;
    *slot = Some(PeripheralHandshake::start(
        config,
        dev.id,
        &dev.key,
        &dev.anchors,
        NOW,
        rng,
    )?);
    Ok(())
}

#[inline(never)]
fn resume_start(
    slot: &mut Option<PeripheralHandshake>,
    config: &PeripheralConfig,
    ticket: PeripheralTicket,
    anchors: &AnchorSet,
    rng: &mut FixedRng,
) -> Result<(), Error> {
    *slot = None;
    *slot = Some(PeripheralHandshake::resume(config, &ticket, anchors, NOW, rng)?);
    Ok(())
}

#[inline(never)]
fn handle(slot: &mut Option<PeripheralHandshake>, msg: &[u8]) -> Result<(), Error> {
    match slot {
        Some(hs) => hs.handle_input(NOW, msg),
        None => fail(b"no handshake"),
    }
}

/// Sends the queued message: copies it out, and compares it with the vector.
fn sent(c: &mut Checks, name: &[u8], slot: &mut Option<PeripheralHandshake>, want: &[u8]) {
    let mut tx = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = slot
        .as_mut()
        .and_then(|hs| hs.poll_transmit(&mut tx))
        .unwrap_or(0);
    c.bytes(name, &tx[..n], want);
}

/// Moves the established session out of the finished handshake.
#[inline(never)]
fn established(
    hs: &mut Option<PeripheralHandshake>,
    session: &mut Option<PeripheralEstablished>,
) -> &'static [u8] {
    *session = None;
    match hs.take().map(PeripheralHandshake::into_established) {
        Some(Ok(est)) => {
            *session = Some(est);
            b""
        }
        _ => b"not established",
    }
}

/// Boot, once: the identity key from its seed (which computes the public key,
/// a fixed-base multiplication) and the anchor, as a firmware loads them.
#[inline(never)]
fn boot(c: &mut Checks, slot: &mut Option<Provisioned>) {
    let key = step(1, b"boot.identity_key", || {
        boot_key(&black_box(v::PERIPHERAL_SEED))
    });
    let Some(signing) = PublicKey::from_bytes(v::BACKEND_SIGNING_PUBLIC) else {
        fail(b"the vector anchor's signing key does not parse");
    };
    let anchor = Anchor {
        kid: KeyId(v::BACKEND_KEY_ID),
        signing,
        sealing: DhPublic(v::BACKEND_SEALING_PUBLIC),
    };
    let public = key.public_key();
    c.bytes(
        b"derived.peripheral_public",
        public.as_bytes(),
        &v::PERIPHERAL_PUBLIC,
    );
    let id = PeripheralId::derive(&public);
    c.bytes(b"derived.peripheral_id", &id.0, &v::PERIPHERAL_ID);
    *slot = Some(Provisioned {
        key,
        id,
        anchors: AnchorSet::new(anchor, AnchorDigest(v::ANCHOR_COMMITMENT_1), 0),
    });
}

/// The full handshake (SPEC.md §5) and the first record each way.
#[inline(never)]
fn full_handshake(
    c: &mut Checks,
    config: &PeripheralConfig,
    dev: &Provisioned,
    hs: &mut Option<PeripheralHandshake>,
    session: &mut Option<PeripheralEstablished>,
) {
    let mut rng = FixedRng::new(v::E_P_SECRET);
    let r = step(2, b"full.hello", || full_start(hs, config, dev, &mut rng));
    c.that(b"full.started", r.is_ok());
    sent(c, b"full.hello", hs, &v::FULL_HELLO);
    c.that(b"full.randomness_used", rng.used == 32);

    let r = step(3, b"full.response", || handle(hs, &v::FULL_RESPONSE));
    c.that(b"full.response_accepted", r.is_ok());
    sent(c, b"full.finish", hs, &v::FULL_FINISH);
    c.bytes(b"full.established", established(hs, session), b"");
    let Some(est) = session else {
        return;
    };
    check_established(c, b"full", est, &v::FULL_KEY_P2G, &v::FULL_KEY_G2P);
    c.bytes(b"full.session_id", &est.session.id(), &v::FULL_SESSION_ID);
    c.bytes(
        b"full.resumption_id",
        &est.ticket.id.0,
        &v::FULL_RESUMPTION_ID,
    );
    c.bytes(
        b"full.gateway_key",
        est.gateway_key.as_bytes(),
        &v::GATEWAY_PUBLIC,
    );
    c.that(b"full.scope", est.scope == Scope(v::SCOPE));
    c.that(
        b"full.lifetimes",
        est.lifetimes.session_s == v::SESSION_LIFETIME_S
            && est.lifetimes.resumption_s == v::RESUMPTION_LIFETIME_S,
    );
    c.that(b"full.not_resumed", !est.resumed);
    records(c, est);
}

/// The resumption (SPEC.md §6) with the ticket of the full handshake.
#[inline(never)]
fn resumption(
    c: &mut Checks,
    config: &PeripheralConfig,
    dev: &Provisioned,
    hs: &mut Option<PeripheralHandshake>,
    session: &mut Option<PeripheralEstablished>,
) {
    let Some(full) = session.take() else {
        c.that(b"resume.ticket", false);
        return;
    };
    let mut rng = FixedRng::new(v::RESUME_E_P_SECRET);
    let ticket = full.ticket;
    let r = step(4, b"resume.hello", || {
        resume_start(hs, config, ticket, &dev.anchors, &mut rng)
    });
    c.that(b"resume.started", r.is_ok());
    sent(c, b"resume.resume_hello", hs, &v::RESUME_HELLO);
    c.that(b"resume.randomness_used", rng.used == 32);

    let r = step(5, b"resume.response", || handle(hs, &v::RESUME_RESPONSE));
    c.that(b"resume.response_accepted", r.is_ok());
    sent(c, b"resume.finish", hs, &v::RESUME_FINISH);
    c.bytes(b"resume.established", established(hs, session), b"");
    let Some(est) = session else {
        return;
    };
    check_established(c, b"resume", est, &v::RESUME_KEY_P2G, &v::RESUME_KEY_G2P);
    c.bytes(
        b"resume.next_resumption_id",
        &est.ticket.id.0,
        &v::RESUME_NEXT_RESUMPTION_ID,
    );
    c.that(b"resume.resumed", est.resumed);
    c.that(b"resume.scope", est.scope == Scope(v::SCOPE));
}

/// The session keys, as `Session::danger_export_keys` gives them: the
/// peripheral sends with p2g and receives with g2p.
fn check_established(
    c: &mut Checks,
    which: &[u8],
    est: &PeripheralEstablished,
    p2g: &[u8; 32],
    g2p: &[u8; 32],
) {
    let (send, recv) = est.session.danger_export_keys();
    put(b"KEYS ");
    put(which);
    put(b" p2g=");
    put_hex(&send);
    put(b" g2p=");
    put_hex(&recv);
    put(b"\n");
    c.bytes(b"keys.p2g", &send, p2g);
    c.bytes(b"keys.g2p", &recv, g2p);
}

/// The first record each way (SPEC.md §12): the peripheral's, sealed at
/// counter 1, and the gateway's, opened at counter 0.
#[inline(never)]
fn records(c: &mut Checks, est: &mut PeripheralEstablished) {
    let mut rec = [0u8; 64];
    let n = est
        .session
        .seal_data(NOW, &v::RECORD_P2G_PLAINTEXT, &mut rec)
        .unwrap_or(0);
    c.bytes(
        b"full.record_p2g_counter_1",
        &rec[..n],
        &v::RECORD_P2G_COUNTER_1,
    );
    let mut plain = [0u8; 64];
    let got = match est.session.open(NOW, &v::RECORD_G2P_COUNTER_0, &mut plain) {
        Ok(Inbound::Data(d)) => d,
        _ => &[],
    };
    c.bytes(b"full.record_g2p_counter_0", got, &v::RECORD_G2P_PLAINTEXT);
}

/// Every `peripheral_response` negative vector: a peripheral that sent the
/// vector Hello must reject it as the Response.
#[inline(never)]
fn negative_responses(
    c: &mut Checks,
    config: &PeripheralConfig,
    dev: &Provisioned,
    hs: &mut Option<PeripheralHandshake>,
) {
    for (name, input) in v::NEGATIVE_RESPONSES {
        let mut rng = FixedRng::new(v::E_P_SECRET);
        if full_start(hs, config, dev, &mut rng).is_err() {
            fail(b"PeripheralHandshake::start failed");
        }
        let rejected =
            handle(hs, input).is_err() && !hs.as_ref().is_some_and(|h| h.is_established());
        put(b"CHECK negative.");
        put(name.as_bytes());
        if rejected {
            c.passed += 1;
            put(b" rejected ok\n");
        } else {
            c.failed += 1;
            put(b" ACCEPTED FAIL\n");
        }
    }
}

#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    fail(b"HardFault");
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(b"panic");
}
