//! The peripheral (initiator) state machine (SPEC.md §5.1–5.6, §6). No heap.
//!
//! ```text
//! start ──Hello──▶ ExpectResponse ──Response/✓vouch──▶ Established (Finish queued)
//! resume ─ResumeHello─▶ ExpectResumeResponse ──ResumeResponse/✓confirm──▶ Established
//! any error ──▶ Failed (sticky; an Alert is queued unless the peer sent one)
//! ```
//!
//! Cost per full handshake: one X25519 key generation, two X25519 exchanges,
//! one Ed25519 signature, one Ed25519 verification. Per resumption: one key
//! generation and one exchange, no signature.
//!
//! Stack (a microcontroller has a few KiB of it): each curve operation and each
//! step of the key schedule runs in a function of its own that is never
//! inlined (`keygen`, `sign_hello`, `dh`, `seal_identity`, `open_vouch`,
//! `verify_vouch`, `session_secrets`, `queue_finish`, …), so their frames never
//! pile up in one; and a message is handled with the state borrowed in place,
//! never moved out and back. The peak is then the deepest single operation
//! (the signature check) on top of a small frame. `peripheral/firmware`
//! measures it, and the instructions of each of these functions, on Cortex-M.

use core::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schedule;
use crate::anchor::{Anchor, AnchorSet};
use crate::crypto::{self, Secret32, TAG_LEN};
use crate::error::{AlertCode, ApiMisuse, Error, PeerMisbehaved};
use crate::keys::{DhPublic, IdentitySigner, KeyId, PeripheralId, PublicKey, Signature};
use crate::session::{Role, Session};
use crate::wire::{
    encode_alert, Finish, Hello, Lifetimes, Mac16, Message, ResumeHello, ResumptionId, Scope,
    SealedIdentity, Suite, Vouch, MAX_HANDSHAKE_MESSAGE, MAX_VOUCH_LEN, SEALED_IDENTITY_LEN,
};
use crate::Timestamp;

/// Settings of the peripheral machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeripheralConfig {
    /// How long to wait for the gateway's answer before failing with
    /// [`Error::Timeout`].
    pub handshake_timeout_ms: u64,
}

impl Default for PeripheralConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: super::DEFAULT_PERIPHERAL_TIMEOUT_MS,
        }
    }
}

/// What a peripheral keeps to resume with the same gateway (SPEC.md §6.1).
///
/// Holds a secret: zeroized on drop, no `Clone`, `Debug` shows no secret. It
/// is serializable so a key store can persist it across reboots.
#[derive(Serialize, Deserialize)]
pub struct PeripheralTicket {
    /// The gateway this ticket resumes with.
    pub gateway_key: PublicKey,
    /// The ticket id sent in the next ResumeHello.
    pub id: ResumptionId,
    secret: SecretBytes,
    /// The scope of the original vouch (a resumption never widens it).
    pub scope: Scope,
    /// The lifetimes of the original vouch.
    pub lifetimes: Lifetimes,
    /// When the full handshake completed, on this device's clock. After a
    /// reboot the clock restarts and the gateway alone enforces the lifetime.
    pub issued_at: Timestamp,
    /// The anchor whose vouch started this ticket's chain. Once the
    /// peripheral rotated away from it, the ticket is refused (SPEC.md §6.1):
    /// a key the backend rotated away from cannot go on vouching through the
    /// tickets it granted.
    pub anchor: KeyId,
}

// Its secret is a `SecretBytes`, which zeroizes on drop; the rest is public.
impl zeroize::ZeroizeOnDrop for PeripheralTicket {}

impl PeripheralTicket {
    /// Whether the ticket's chain began under the anchor `anchors` holds. A
    /// ticket granted under a vouch of an anchor rotated away from never
    /// resumes (SPEC.md §6.1); [`PeripheralHandshake::resume`] refuses it.
    pub fn is_under(&self, anchors: &AnchorSet) -> bool {
        self.anchor == anchors.primary().kid
    }

    /// A copy for a resumption attempt (the secret is copied into a value
    /// that zeroizes it in turn).
    fn duplicate(&self) -> Self {
        Self {
            gateway_key: self.gateway_key,
            id: self.id,
            secret: SecretBytes(self.secret.0),
            scope: self.scope,
            lifetimes: self.lifetimes,
            issued_at: self.issued_at,
            anchor: self.anchor,
        }
    }

    /// Whether the resumption lifetime has passed on this device's clock.
    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.issued_at.add_secs(self.lifetimes.resumption_s)
    }
}

impl fmt::Debug for PeripheralTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeripheralTicket")
            .field("gateway_key", &self.gateway_key)
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("lifetimes", &self.lifetimes)
            .field("issued_at", &self.issued_at)
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

/// Which of a [`TicketWallet`]'s two tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketSlot {
    /// The ticket the gateway is known to hold.
    Confirmed,
    /// The ticket of the last handshake, until the gateway proves it stored it.
    Unconfirmed,
}

/// What to do next, per [`TicketWallet::choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHandshake {
    /// Resume with the ticket in this slot.
    Resume(TicketSlot),
    /// Run a full handshake.
    Full,
}

/// The peripheral's resumption tickets and every decision about them
/// (SPEC.md §6.1, §6.4), made here once so that the host driver and firmware
/// cannot disagree. No heap; serializable, so a key store persists it whole.
///
/// The rules:
/// - Nothing unauthenticated costs a ticket. A failed resumption attempt
///   (an alert, garbage, a confirmation that does not verify, a timeout) only
///   makes the next attempt use the other ticket, then a full handshake;
///   both tickets stay. Anyone on the air can send those answers, so a rogue
///   central cannot cut a device off from its gateway during a backend outage.
/// - The Finish is never acknowledged (SPEC.md §6.1): a new ticket is kept
///   *unconfirmed*, beside the one it came from, until the gateway's first
///   authenticated record of that session proves the gateway completed the
///   handshake and stored the new ticket ([`on_gateway_record`](Self::on_gateway_record)).
///   A lost Finish thus costs nothing: the previous ticket still resumes.
/// - A ticket goes when it expires, when its anchor is rotated away from
///   ([`PeripheralTicket::is_under`]), when an authenticated event shows the
///   gateway no longer holds it (a completed resumption with the other one,
///   a confirmed successor), or when the gateway closes the session as
///   revoked ([`clear`](Self::clear)).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TicketWallet {
    confirmed: Option<PeripheralTicket>,
    unconfirmed: Option<PeripheralTicket>,
    /// Slots whose resumption failed since the last success (bit 0:
    /// confirmed, bit 1: unconfirmed). Not persisted: after a reboot both are
    /// tried again.
    #[serde(skip)]
    failed: u8,
}

impl TicketSlot {
    fn bit(self) -> u8 {
        match self {
            TicketSlot::Confirmed => 1,
            TicketSlot::Unconfirmed => 2,
        }
    }
}

impl TicketWallet {
    /// A wallet without tickets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no ticket is held.
    pub fn is_empty(&self) -> bool {
        self.confirmed.is_none() && self.unconfirmed.is_none()
    }

    /// The ticket in `slot`.
    pub fn ticket(&self, slot: TicketSlot) -> Option<&PeripheralTicket> {
        match slot {
            TicketSlot::Confirmed => self.confirmed.as_ref(),
            TicketSlot::Unconfirmed => self.unconfirmed.as_ref(),
        }
    }

    /// Drops the tickets that can no longer resume: granted under another
    /// anchor than `anchors` holds, or, when `now` is on the clock the
    /// tickets' `issued_at` was taken on (the device has not rebooted since),
    /// expired. Returns whether anything was dropped.
    pub fn prune(&mut self, anchors: &AnchorSet, now: Option<Timestamp>) -> bool {
        let mut changed = false;
        for slot in [&mut self.confirmed, &mut self.unconfirmed] {
            let dead = slot
                .as_ref()
                .is_some_and(|t| !t.is_under(anchors) || now.is_some_and(|n| t.expired(n)));
            if dead {
                *slot = None;
                changed = true;
            }
        }
        changed
    }

    /// The next handshake: the newest ticket not yet failed since the last
    /// success, then the other, then a full handshake (after which both are
    /// tried again).
    pub fn choose(&mut self) -> NextHandshake {
        for slot in [TicketSlot::Unconfirmed, TicketSlot::Confirmed] {
            if self.ticket(slot).is_some() && self.failed & slot.bit() == 0 {
                return NextHandshake::Resume(slot);
            }
        }
        self.failed = 0;
        NextHandshake::Full
    }

    /// A resumption attempt with `slot` failed, for whatever reason: the next
    /// attempt uses the other ticket or a full handshake. No ticket is
    /// dropped (see the type's documentation).
    pub fn on_failed(&mut self, slot: TicketSlot) {
        self.failed |= slot.bit();
    }

    /// A handshake completed (its Finish sent) and produced `ticket`. After a
    /// full handshake the previous confirmed ticket stays as the fallback;
    /// after a resumption with `resumed`, that ticket is the fallback (the
    /// gateway still holds it if the Finish was lost) and the other one is
    /// dropped (the gateway holds one ticket per peripheral, and it just
    /// proved it holds `resumed`).
    pub fn on_established(&mut self, resumed: Option<TicketSlot>, ticket: PeripheralTicket) {
        match resumed {
            None => {
                if self.confirmed.is_none() {
                    self.confirmed = self.unconfirmed.take();
                }
            }
            Some(TicketSlot::Unconfirmed) => self.confirmed = self.unconfirmed.take(),
            Some(TicketSlot::Confirmed) => {}
        }
        self.unconfirmed = Some(ticket);
        self.failed = 0;
    }

    /// The gateway's first authenticated record of the session arrived: it
    /// completed the handshake, so it holds the new ticket and no longer the
    /// one before. Returns whether the wallet changed.
    pub fn on_gateway_record(&mut self) -> bool {
        match self.unconfirmed.take() {
            Some(t) => {
                self.confirmed = Some(t);
                true
            }
            None => false,
        }
    }

    /// Drops every ticket (the gateway closed the session as revoked and
    /// deleted its side, SPEC.md §10.4).
    pub fn clear(&mut self) {
        self.confirmed = None;
        self.unconfirmed = None;
        self.failed = 0;
    }
}

/// A secret that can be serialized (for ticket persistence). Zeroized on drop.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop, Serialize, Deserialize)]
struct SecretBytes([u8; 32]);

impl SecretBytes {
    fn as_secret(&self) -> Secret32 {
        Secret32(self.0)
    }
}

/// The outcome of a completed handshake, peripheral side.
#[derive(Debug)]
pub struct PeripheralEstablished {
    /// The encrypted session.
    pub session: Session,
    /// The gateway the backend vouched for.
    pub gateway_key: PublicKey,
    /// What the gateway may do.
    pub scope: Scope,
    /// The lifetimes the backend granted.
    pub lifetimes: Lifetimes,
    /// The ticket for the next resumption with this gateway.
    pub ticket: PeripheralTicket,
    /// Whether this was a resumption.
    pub resumed: bool,
}

struct ExpectResponse {
    e: crypto::Ephemeral,
    id: PeripheralId,
    th1: [u8; 32],
    transcript: Sha256,
    /// The anchor the Hello was sealed to: the only key whose vouch counts.
    anchor: Anchor,
}

struct ExpectResumeResponse {
    e: crypto::Ephemeral,
    ticket: PeripheralTicket,
    transcript: Sha256,
}

enum State {
    ExpectResponse(ExpectResponse),
    ExpectResumeResponse(ExpectResumeResponse),
    Established(PeripheralEstablished),
    Failed(Error),
}

/// The peripheral's handshake (SPEC.md §5). Drive it with
/// [`handle_input`](Self::handle_input), [`poll_transmit`](Self::poll_transmit)
/// and [`poll_timeout`](Self::poll_timeout)/[`handle_timeout`](Self::handle_timeout).
pub struct PeripheralHandshake {
    state: State,
    out: [u8; MAX_HANDSHAKE_MESSAGE],
    out_len: usize,
    deadline: Timestamp,
}

impl fmt::Debug for PeripheralHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::ExpectResponse(_) => "ExpectResponse",
            State::ExpectResumeResponse(_) => "ExpectResumeResponse",
            State::Established(_) => "Established",
            State::Failed(_) => "Failed",
        };
        f.debug_struct("PeripheralHandshake")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl PeripheralHandshake {
    /// Starts a full handshake: builds the Hello (SPEC.md §5.1), sealed to the
    /// primary anchor. The Hello is then ready in [`poll_transmit`](Self::poll_transmit).
    pub fn start<S, R>(
        config: &PeripheralConfig,
        id: PeripheralId,
        signer: &S,
        anchors: &AnchorSet,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Self, Error>
    where
        S: IdentitySigner + ?Sized,
        R: CryptoRng + ?Sized,
    {
        let anchor = *anchors.primary();
        let (e, e_pub) = crypto::keygen_peripheral(rng);
        let suite = Suite::Ed25519X25519ChaCha20Poly1305;
        let prefix = schedule::hello_prefix(suite, anchor.kid, &e_pub);

        let signature = sign_hello(signer, &prefix, &anchor.sealing, &id);
        let ss = crypto::dh_peripheral(&e, &anchor.sealing)?;
        let sealed = seal_identity(&prefix, &anchor.sealing, ss.as_bytes(), &id, &signature);

        let hello = Message::Hello(Hello {
            suite,
            anchor: anchor.kid,
            ephemeral: e_pub,
            sealed: SealedIdentity(sealed),
        });
        let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];
        let out_len = hello.encode(&mut out)?;
        debug_assert_eq!(out[..schedule::HELLO_PREFIX_LEN], prefix);
        let mut transcript = Sha256::new();
        transcript.update(&out[..out_len]);
        // TH1 = H(Hello): the running transcript so far (the Hello is hashed once).
        let th1: [u8; 32] = transcript.clone().finalize().into();
        Ok(Self {
            state: State::ExpectResponse(ExpectResponse {
                e,
                id,
                th1,
                transcript,
                anchor,
            }),
            out,
            out_len,
            deadline: now.add_millis(config.handshake_timeout_ms),
        })
    }

    /// Starts a resumption with the gateway that issued `ticket` (SPEC.md §6.2).
    /// The caller keeps the ticket: what becomes of it after the attempt is
    /// [`TicketWallet`]'s decision (SPEC.md §6.4), and the next one arrives
    /// with the established session. Fails with
    /// [`ApiMisuse::TicketOfOldAnchor`] if the ticket's chain began under
    /// another anchor than the one `anchors` holds (SPEC.md §6.1).
    pub fn resume<R: CryptoRng + ?Sized>(
        config: &PeripheralConfig,
        ticket: &PeripheralTicket,
        anchors: &AnchorSet,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Self, Error> {
        if !ticket.is_under(anchors) {
            return Err(ApiMisuse::TicketOfOldAnchor.into());
        }
        let ticket = ticket.duplicate();
        let (e, e_pub) = crypto::keygen_peripheral(rng);
        let suite = Suite::Ed25519X25519ChaCha20Poly1305;
        let prefix = schedule::resume_prefix(suite, &ticket.id, &e_pub);
        let binder = schedule::binder(&ticket.secret.as_secret(), &prefix);
        let msg = Message::ResumeHello(ResumeHello {
            suite,
            ticket: ticket.id,
            ephemeral: e_pub,
            binder: Mac16(binder),
        });
        let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];
        let out_len = msg.encode(&mut out)?;
        let mut transcript = Sha256::new();
        transcript.update(&out[..out_len]);
        Ok(Self {
            state: State::ExpectResumeResponse(ExpectResumeResponse {
                e,
                ticket,
                transcript,
            }),
            out,
            out_len,
            deadline: now.add_millis(config.handshake_timeout_ms),
        })
    }

    /// Copies the next message to send into `buf` and returns its length.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.out_len == 0 || buf.len() < self.out_len {
            return None;
        }
        let n = self.out_len;
        buf[..n].copy_from_slice(&self.out[..n]);
        self.out_len = 0;
        Some(n)
    }

    /// The deadline of the current wait, if the machine is waiting.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        matches!(
            self.state,
            State::ExpectResponse(_) | State::ExpectResumeResponse(_)
        )
        .then_some(self.deadline)
    }

    /// Fails the handshake with [`Error::Timeout`] if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.state = State::Failed(Error::Timeout);
        }
    }

    /// Handles one message from the gateway.
    pub fn handle_input(&mut self, now: Timestamp, bytes: &[u8]) -> Result<(), Error> {
        // Two steps, so that what is on the stack while the curve operations
        // run is only what they need. First the message is checked against the
        // waiting state, which is read where it is (moving a few hundred bytes
        // of state out and back costs as much stack); then, in a frame of its
        // own, the key schedule runs and the established state replaces the
        // waiting one in place.
        let checked = match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Established(_) => return Err(ApiMisuse::WrongState.into()),
            State::ExpectResponse(s) => check_response(s, bytes),
            State::ExpectResumeResponse(s) => check_resume_response(s, bytes),
        };
        match checked.and_then(|checked| self.establish(now, bytes, checked)) {
            Ok(()) => Ok(()),
            Err(e) => {
                if !matches!(e, Error::Alert(_)) {
                    let alert = encode_alert(AlertCode::from(&e));
                    self.out[..alert.len()].copy_from_slice(&alert);
                    self.out_len = alert.len();
                }
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Whether the handshake has completed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// The error the machine failed with, if it failed.
    pub fn error(&self) -> Option<&Error> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Takes the established session out of the machine (after the Finish has
    /// been polled out). Fails if the handshake is not complete.
    pub fn into_established(self) -> Result<PeripheralEstablished, Error> {
        match self.state {
            State::Established(est) => Ok(est),
            State::Failed(e) => Err(e),
            _ => Err(ApiMisuse::WrongState.into()),
        }
    }

    /// The second step of [`handle_input`](Self::handle_input), once the
    /// answer passed every check: the key schedule (SPEC.md §5.6 step 6,
    /// §6.3), the Finish, and the established state in place of the waiting one.
    #[inline(never)]
    fn establish(&mut self, now: Timestamp, bytes: &[u8], checked: Checked) -> Result<(), Error> {
        let est = match (&self.state, checked) {
            (State::ExpectResponse(s), Checked::Response { vouch, ss }) => {
                let th2 = transcript_with(&s.transcript, bytes);
                let secrets = schedule::session_secrets(&th2, &[ss.as_bytes()]);
                self.out_len = queue_finish(&mut self.out, &secrets.p2g, &th2)?;
                PeripheralEstablished {
                    session: Session::new(
                        Role::Peripheral,
                        secrets.p2g,
                        secrets.g2p,
                        vouch.scope,
                        secrets.session_id,
                        now.add_secs(vouch.lifetimes.session_s),
                    ),
                    gateway_key: vouch.gateway_key,
                    scope: vouch.scope,
                    lifetimes: vouch.lifetimes,
                    ticket: PeripheralTicket {
                        gateway_key: vouch.gateway_key,
                        id: secrets.resumption_id,
                        secret: SecretBytes(secrets.resumption.0),
                        scope: vouch.scope,
                        lifetimes: vouch.lifetimes,
                        issued_at: now,
                        anchor: vouch.backend_key,
                    },
                    resumed: false,
                }
            }
            (State::ExpectResumeResponse(s), Checked::ResumeResponse { ss }) => {
                let th2 = transcript_with(&s.transcript, bytes);
                let rs = s.ticket.secret.as_secret();
                let secrets = schedule::session_secrets(&th2, &[&rs.0, ss.as_bytes()]);
                self.out_len = queue_finish(&mut self.out, &secrets.p2g, &th2)?;
                let t = &s.ticket;
                // A resumed session ends no later than the original resumption
                // lifetime allows; the session lifetime restarts.
                PeripheralEstablished {
                    session: Session::new(
                        Role::Peripheral,
                        secrets.p2g,
                        secrets.g2p,
                        t.scope,
                        secrets.session_id,
                        now.add_secs(t.lifetimes.session_s),
                    ),
                    gateway_key: t.gateway_key,
                    scope: t.scope,
                    lifetimes: t.lifetimes,
                    ticket: PeripheralTicket {
                        gateway_key: t.gateway_key,
                        id: secrets.resumption_id,
                        secret: SecretBytes(secrets.resumption.0),
                        scope: t.scope,
                        lifetimes: t.lifetimes,
                        issued_at: t.issued_at,
                        anchor: t.anchor,
                    },
                    resumed: true,
                }
            }
            _ => return Err(ApiMisuse::WrongState.into()),
        };
        self.state = State::Established(est);
        Ok(())
    }
}

/// What a gateway's answer left once it passed every check.
enum Checked {
    /// A Response: the verified vouch and `DH(e_p, e_G)`.
    Response { vouch: Vouch, ss: crypto::Shared },
    /// A ResumeResponse with a valid confirmation: `DH(e_p', e_G')`.
    ResumeResponse { ss: crypto::Shared },
}

/// The checks of a Response (SPEC.md §5.6 steps 1–5), in the order of the
/// spec, cheap ones first. Changes nothing.
fn check_response(s: &ExpectResponse, bytes: &[u8]) -> Result<Checked, Error> {
    let response = match Message::decode(bytes)? {
        Message::Response(r) => r,
        Message::Alert(a) => return Err(Error::Alert(a.code)),
        other => {
            return Err(PeerMisbehaved::UnexpectedMessage {
                got: other.message_type(),
            }
            .into())
        }
    };
    // Cheap checks first: the encrypted vouch must have a plausible size.
    if response.sealed_vouch.len() > MAX_VOUCH_LEN {
        return Err(PeerMisbehaved::MalformedVouch.into());
    }
    let e_g = response.ephemeral;
    let ss = crypto::dh_peripheral(&s.e, &e_g)?;
    let vouch = open_vouch(&s.th1, &e_g, ss.as_bytes(), response.sealed_vouch)?;
    verify_vouch(s, &e_g, &vouch)?;
    Ok(Checked::Response { vouch, ss })
}

/// The checks of a ResumeResponse (SPEC.md §6.3): the exchange and the
/// gateway's confirmation. Changes nothing.
fn check_resume_response(s: &ExpectResumeResponse, bytes: &[u8]) -> Result<Checked, Error> {
    let rr = match Message::decode(bytes)? {
        Message::ResumeResponse(r) => r,
        Message::Alert(a) => return Err(Error::Alert(a.code)),
        other => {
            return Err(PeerMisbehaved::UnexpectedMessage {
                got: other.message_type(),
            }
            .into())
        }
    };
    let ss = crypto::dh_peripheral(&s.e, &rr.ephemeral)?;
    let mut thr = s.transcript.clone();
    thr.update(rr.ephemeral.as_bytes());
    let thr: [u8; 32] = thr.finalize().into();
    let expect = schedule::resume_confirm(&s.ticket.secret.as_secret(), ss.as_bytes(), &thr);
    if !crypto::ct_eq(&expect, &rr.confirm.0) {
        return Err(PeerMisbehaved::BadResumeConfirm.into());
    }
    Ok(Checked::ResumeResponse { ss })
}

/// `TH2`: the transcript so far, then the gateway's answer.
fn transcript_with(transcript: &Sha256, answer: &[u8]) -> [u8; 32] {
    let mut t = transcript.clone();
    t.update(answer);
    t.finalize().into()
}

// The operations of the handshake, one function each and never inlined: each
// frame exists only while its operation runs (instead of all of them at once
// in the caller's), and each is a symbol that the firmware's instruction
// counter attributes instructions to.

/// `sig_P` over the hello statement (SPEC.md §5.1 step 3).
#[inline(never)]
fn sign_hello<S: IdentitySigner + ?Sized>(
    signer: &S,
    prefix: &[u8; schedule::HELLO_PREFIX_LEN],
    sealing: &DhPublic,
    id: &PeripheralId,
) -> Signature {
    signer.sign(&schedule::hello_statement(prefix, sealing, id))
}

/// `sealed = ChaCha20(k_seal, id_P ‖ sig_P)` (SPEC.md §5.1 steps 5–6).
#[inline(never)]
fn seal_identity(
    prefix: &[u8; schedule::HELLO_PREFIX_LEN],
    sealing: &DhPublic,
    ss: &[u8; 32],
    id: &PeripheralId,
    signature: &Signature,
) -> [u8; SEALED_IDENTITY_LEN] {
    let k_seal = schedule::seal_key(prefix, sealing, ss);
    let mut sealed = [0u8; SEALED_IDENTITY_LEN];
    sealed[..8].copy_from_slice(&id.0);
    sealed[8..].copy_from_slice(&signature.0);
    crypto::stream_xor(&k_seal, &mut sealed);
    sealed
}

/// Derives `k_resp`, decrypts the vouch body and decodes it, with no trailing
/// bytes (SPEC.md §5.6 step 3). The caller has checked the length.
#[inline(never)]
fn open_vouch(
    th1: &[u8; 32],
    e_g: &DhPublic,
    ss: &[u8; 32],
    sealed: &[u8],
) -> Result<Vouch, Error> {
    let n = sealed.len();
    let k_resp = schedule::response_key(th1, e_g, ss);
    let mut body = [0u8; MAX_VOUCH_LEN];
    body[..n].copy_from_slice(sealed);
    crypto::stream_xor(&k_resp, &mut body[..n]);
    crate::wire::body_of(&body[..n]).map_err(|_| PeerMisbehaved::MalformedVouch.into())
}

/// Checks that the vouch names the anchor the Hello was sealed to, and
/// verifies its signature over the statement rebuilt from this handshake
/// (SPEC.md §5.6 steps 4–5, §3.4).
#[inline(never)]
fn verify_vouch(s: &ExpectResponse, e_g: &DhPublic, vouch: &Vouch) -> Result<(), Error> {
    let anchor = &s.anchor;
    if vouch.backend_key != anchor.kid {
        return Err(PeerMisbehaved::UnknownAnchor.into());
    }
    let statement = schedule::vouch_statement(
        &s.th1,
        &s.id,
        e_g,
        &vouch.gateway_key,
        vouch.scope,
        vouch.lifetimes,
        vouch.backend_key,
    );
    // SPEC.md §3.4 strict verification on the peripheral's provider.
    if !crate::provider::verify_strict(
        crate::provider::PERIPHERAL,
        anchor.signing.as_bytes(),
        &statement,
        &vouch.signature.0,
    ) {
        return Err(PeerMisbehaved::BadVouchSignature.into());
    }
    Ok(())
}

/// Writes the Finish (SPEC.md §4.5) into `out`; returns its length.
#[inline(never)]
fn queue_finish(
    out: &mut [u8; MAX_HANDSHAKE_MESSAGE],
    p2g: &Secret32,
    th2: &[u8; 32],
) -> Result<usize, Error> {
    let mut empty = [0u8; 0];
    let tag = crypto::aead_seal(p2g, 0, &[&schedule::finish_aad(th2)], &mut empty);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&tag);
    Message::Finish(Finish { tag: Mac16(t) })
        .encode(out)
        .map_err(Error::from)
}
