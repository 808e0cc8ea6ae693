//! The key schedule and the signed statements, in one place (SPEC.md §5, §6).
//!
//! Every label is in [`crate::label`]. Every function here is a formula of the
//! spec; the state machines only call them in order. The derivations are not
//! inlined: each one's frame exists only while it runs, and each is a unit
//! that the firmware's instruction counter can name.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::crypto::{self, Secret32};
use crate::keys::{DhPublic, KeyId, PeripheralId};
use crate::label;
use crate::wire::{Lifetimes, MessageType, ResumptionId, Scope, Suite, PROTOCOL_VERSION};

/// Length of the hello's cleartext prefix: version, type, suite, anchor, `e_P`.
pub(crate) const HELLO_PREFIX_LEN: usize = 4 + 32;

/// The hello's cleartext prefix, byte for byte as it is on the air (SPEC.md §4.3).
pub(crate) fn hello_prefix(suite: Suite, anchor: KeyId, e_p: &DhPublic) -> [u8; HELLO_PREFIX_LEN] {
    let mut p = [0u8; HELLO_PREFIX_LEN];
    p[0] = PROTOCOL_VERSION;
    p[1] = MessageType::Hello as u8;
    p[2] = suite as u8;
    p[3] = anchor.0;
    p[4..].copy_from_slice(&e_p.0);
    p
}

/// Length of the message the peripheral signs.
pub(crate) const HELLO_STATEMENT_LEN: usize =
    label::HELLO_SIGNATURE.len() + HELLO_PREFIX_LEN + 32 + 8;

/// What the peripheral signs (SPEC.md §5.1):
/// `"vouch/1 hello signature" ‖ hello prefix ‖ B_x ‖ peripheral id`.
pub(crate) fn hello_statement(
    prefix: &[u8; HELLO_PREFIX_LEN],
    sealing: &DhPublic,
    id: &PeripheralId,
) -> [u8; HELLO_STATEMENT_LEN] {
    let mut m = [0u8; HELLO_STATEMENT_LEN];
    let l = label::HELLO_SIGNATURE.len();
    m[..l].copy_from_slice(label::HELLO_SIGNATURE);
    m[l..l + HELLO_PREFIX_LEN].copy_from_slice(prefix);
    m[l + HELLO_PREFIX_LEN..l + HELLO_PREFIX_LEN + 32].copy_from_slice(&sealing.0);
    m[l + HELLO_PREFIX_LEN + 32..].copy_from_slice(&id.0);
    m
}

/// `k_seal = HKDF(salt = SHA-256(prefix ‖ B_x), ikm = DH(e_P, B_x), info = "vouch/1 seal")`.
#[inline(never)]
pub(crate) fn seal_key(
    prefix: &[u8; HELLO_PREFIX_LEN],
    sealing: &DhPublic,
    ss: &[u8; 32],
) -> Secret32 {
    let salt = crypto::sha256(&[prefix, &sealing.0]);
    crypto::expand32(&crypto::extract(&salt, &[ss]), label::SEAL)
}

/// `k_resp = HKDF(salt = SHA-256(TH1 ‖ e_G), ikm = DH(e_P, e_G), info = "vouch/1 response")`.
#[inline(never)]
pub(crate) fn response_key(th1: &[u8; 32], e_g: &DhPublic, ss: &[u8; 32]) -> Secret32 {
    let salt = crypto::sha256(&[th1, &e_g.0]);
    crypto::expand32(&crypto::extract(&salt, &[ss]), label::RESPONSE)
}

/// Length of the vouch statement.
pub(crate) const VOUCH_STATEMENT_LEN: usize =
    label::VOUCH_SIGNATURE.len() + 32 + 8 + 32 + 32 + 4 + 4 + 4 + 1;

/// What the backend signs (SPEC.md §5.4), fixed layout, integers little-endian:
/// `"vouch/1 vouch signature" ‖ TH1 ‖ peripheral id ‖ e_G ‖ G ‖ scope ‖
/// session lifetime ‖ resumption lifetime ‖ key id`.
pub(crate) fn vouch_statement(
    th1: &[u8; 32],
    peripheral: &PeripheralId,
    e_g: &DhPublic,
    gateway_key: &crate::keys::PublicKey,
    scope: Scope,
    lifetimes: Lifetimes,
    backend_key: KeyId,
) -> [u8; VOUCH_STATEMENT_LEN] {
    let mut m = [0u8; VOUCH_STATEMENT_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        m[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(label::VOUCH_SIGNATURE);
    put(th1);
    put(&peripheral.0);
    put(&e_g.0);
    put(gateway_key.as_bytes());
    put(&scope.0.to_le_bytes());
    put(&lifetimes.session_s.to_le_bytes());
    put(&lifetimes.resumption_s.to_le_bytes());
    put(&[backend_key.0]);
    m
}

/// The secrets of an established session (SPEC.md §5.6).
pub(crate) struct SessionSecrets {
    pub(crate) p2g: Secret32,
    pub(crate) g2p: Secret32,
    pub(crate) resumption: Secret32,
    pub(crate) resumption_id: ResumptionId,
    pub(crate) session_id: [u8; 8],
}

/// `PRK = HKDF-Extract(salt = TH2, ikm)`, then one Expand per label.
/// `ikm` is `DH(e_P, e_G)` for a full handshake and `RS ‖ DH(e_P', e_G')` for a
/// resumption.
#[inline(never)]
pub(crate) fn session_secrets(th2: &[u8; 32], ikm: &[&[u8]]) -> SessionSecrets {
    let prk: Hkdf<Sha256> = crypto::extract(th2, ikm);
    SessionSecrets {
        p2g: crypto::expand32(&prk, label::P2G),
        g2p: crypto::expand32(&prk, label::G2P),
        resumption: crypto::expand32(&prk, label::RESUMPTION),
        resumption_id: ResumptionId(crypto::expand(&prk, label::RESUMPTION_ID)),
        session_id: crypto::expand(&prk, label::SESSION_ID),
    }
}

/// The AAD of the Finish: version, type, TH2 (SPEC.md §4.5).
pub(crate) fn finish_aad(th2: &[u8; 32]) -> [u8; 34] {
    let mut a = [0u8; 34];
    a[0] = PROTOCOL_VERSION;
    a[1] = MessageType::Finish as u8;
    a[2..].copy_from_slice(th2);
    a
}

/// Length of the ResumeHello prefix the binder covers: version, type, suite,
/// ticket, ephemeral.
pub(crate) const RESUME_PREFIX_LEN: usize = 3 + 16 + 32;

/// The ResumeHello's prefix, as on the air (SPEC.md §6.2).
pub(crate) fn resume_prefix(
    suite: Suite,
    ticket: &ResumptionId,
    e_p: &DhPublic,
) -> [u8; RESUME_PREFIX_LEN] {
    let mut p = [0u8; RESUME_PREFIX_LEN];
    p[0] = PROTOCOL_VERSION;
    p[1] = MessageType::ResumeHello as u8;
    p[2] = suite as u8;
    p[3..19].copy_from_slice(&ticket.0);
    p[19..].copy_from_slice(&e_p.0);
    p
}

/// `binder = HMAC(HKDF-Expand(RS, "vouch/1 binder"), prefix)[..16]`.
#[inline(never)]
pub(crate) fn binder(rs: &Secret32, prefix: &[u8; RESUME_PREFIX_LEN]) -> [u8; 16] {
    let k = crypto::expand_from_key(rs, label::BINDER);
    crypto::hmac16(&k, &[prefix])
}

/// `confirm = HMAC(HKDF(salt = THr, ikm = RS ‖ DH, info = "vouch/1 resume confirm"), THr)[..16]`,
/// with `THr = SHA-256(ResumeHello ‖ e_G')`.
#[inline(never)]
pub(crate) fn resume_confirm(rs: &Secret32, ss: &[u8; 32], thr: &[u8; 32]) -> [u8; 16] {
    let k = crypto::expand32(&crypto::extract(thr, &[&rs.0, ss]), label::RESUME_CONFIRM);
    crypto::hmac16(&k, &[thr])
}
