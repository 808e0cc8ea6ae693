//! The gateway (responder) state machine (SPEC.md §5, §6). Uses `alloc`.
//!
//! ```text
//! ExpectFirst ─Hello─▶ ExpectVouch ──handle_vouch──▶ ExpectFinish ─Finish─▶ Established
//!             └ResumeHello─▶ ExpectTicket ──handle_ticket──┘
//! any error ──▶ Failed (sticky; an Alert is queued unless the peer sent one)
//! ```
//!
//! The machine pauses twice for its caller, through [`GatewayEvent`]s: to ask the
//! backend for a vouch, and to look up a resumption ticket. Both answers come
//! back through `handle_vouch` / `handle_ticket`.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use x25519_dalek::ReusableSecret;

use super::schedule;
use crate::crypto::{self, Secret32};
use crate::error::Refusal;
use crate::error::{AlertCode, ApiMisuse, Error, PeerMisbehaved};
use crate::keys::{DhPublic, PublicKey};
use crate::session::{Role, Session};
use crate::wire::backend::{PeripheralInfo, VouchAnswer, VouchRequest};
use crate::wire::{
    encode_alert, Lifetimes, Mac16, Message, Response, ResumeHello, ResumeResponse, ResumptionId,
    Scope, Vouch, MAX_HANDSHAKE_MESSAGE, MAX_VOUCH_LEN,
};
use crate::Timestamp;

/// Settings of the gateway machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConfig {
    /// This gateway's Ed25519 identity (the key in its TLS client certificate).
    pub gateway_key: PublicKey,
    /// How long to wait for the backend's vouch.
    pub backend_timeout_ms: u64,
    /// How long to wait for the peripheral's Finish.
    pub finish_timeout_ms: u64,
}

impl GatewayConfig {
    /// Defaults for a gateway with identity `gateway_key`.
    pub fn new(gateway_key: PublicKey) -> Self {
        Self {
            gateway_key,
            backend_timeout_ms: super::DEFAULT_BACKEND_TIMEOUT_MS,
            finish_timeout_ms: super::DEFAULT_FINISH_TIMEOUT_MS,
        }
    }
}

/// A resumption ticket as the gateway stores it (SPEC.md §6.1). Holds a
/// secret: zeroized on drop, `Debug` shows no secret.
pub struct GatewayTicket {
    /// The ticket id the peripheral will present.
    pub id: ResumptionId,
    secret: Secret32,
    /// Who the ticket belongs to (as the backend said at the full handshake).
    pub peripheral: PeripheralInfo,
    /// The original vouch's lifetimes.
    pub lifetimes: Lifetimes,
    /// On the gateway's clock: after this the ticket is refused. Set once by the
    /// full handshake; resumptions inherit it and never extend it.
    pub expires_at: Timestamp,
}

// Its secret is a `Secret32`, which zeroizes on drop; the rest is public.
impl zeroize::ZeroizeOnDrop for GatewayTicket {}

impl GatewayTicket {
    /// Rebuilds a ticket from storage (a gateway that persists tickets across
    /// restarts). `secret` is the value [`danger_secret`](Self::danger_secret) returned.
    pub fn from_parts(
        id: ResumptionId,
        secret: [u8; 32],
        peripheral: PeripheralInfo,
        lifetimes: Lifetimes,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            id,
            secret: Secret32(secret),
            peripheral,
            lifetimes,
            expires_at,
        }
    }

    /// The resumption secret, for persistence only.
    pub fn danger_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.secret.0)
    }
}

impl fmt::Debug for GatewayTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayTicket")
            .field("id", &self.id)
            .field("peripheral", &self.peripheral.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the gateway machine needs from its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// Send this to the backend and pass the answer to
    /// [`GatewayHandshake::handle_vouch`].
    NeedVouch(VouchRequest),
    /// Look this ticket up and pass it to [`GatewayHandshake::handle_ticket`].
    NeedTicket(ResumptionId),
}

/// The outcome of a completed handshake, gateway side.
#[derive(Debug)]
pub struct GatewayEstablished {
    /// The encrypted session.
    pub session: Session,
    /// The authenticated peripheral, as the backend described it.
    pub peripheral: PeripheralInfo,
    /// The ticket for the peripheral's next resumption: store it.
    pub ticket: GatewayTicket,
    /// For a resumption, the ticket that was used: delete it.
    pub consumed_ticket: Option<ResumptionId>,
}

struct ExpectVouch {
    e: ReusableSecret,
    e_p: DhPublic,
    th1: [u8; 32],
    transcript: Sha256,
}

struct ExpectTicket {
    hello: ResumeHello,
    transcript: Sha256,
}

struct ExpectFinish {
    th2: [u8; 32],
    p2g: Secret32,
    g2p: Secret32,
    resumption: Secret32,
    resumption_id: ResumptionId,
    session_id: [u8; 8],
    peripheral: PeripheralInfo,
    scope: Scope,
    lifetimes: Lifetimes,
    ticket_expires_at: Timestamp,
    consumed_ticket: Option<ResumptionId>,
}

enum State {
    ExpectFirst,
    ExpectVouch(Box<ExpectVouch>),
    ExpectTicket(Box<ExpectTicket>),
    ExpectFinish(Box<ExpectFinish>),
    Established(Box<GatewayEstablished>),
    Failed(Error),
    Taken,
}

/// The gateway's side of one handshake with one peripheral link.
pub struct GatewayHandshake {
    config: GatewayConfig,
    state: State,
    out: Option<Vec<u8>>,
    event: Option<GatewayEvent>,
    deadline: Option<Timestamp>,
}

impl fmt::Debug for GatewayHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::ExpectFirst => "ExpectFirst",
            State::ExpectVouch(_) => "ExpectVouch",
            State::ExpectTicket(_) => "ExpectTicket",
            State::ExpectFinish(_) => "ExpectFinish",
            State::Established(_) => "Established",
            State::Failed(_) => "Failed",
            State::Taken => "Taken",
        };
        f.debug_struct("GatewayHandshake")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl GatewayHandshake {
    /// A machine waiting for a peripheral's first message. `now` starts the
    /// first-message deadline (the finish timeout).
    pub fn new(config: GatewayConfig, now: Timestamp) -> Self {
        Self {
            config,
            state: State::ExpectFirst,
            out: None,
            event: None,
            deadline: Some(now.add_millis(config.finish_timeout_ms)),
        }
    }

    /// The next message to send to the peripheral.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.take()
    }

    /// The next request for the caller.
    pub fn poll_event(&mut self) -> Option<GatewayEvent> {
        self.event.take()
    }

    /// The deadline of the current wait.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            State::Established(_) | State::Failed(_) | State::Taken => None,
            _ => self.deadline,
        }
    }

    /// Fails with [`Error::Timeout`] once the deadline has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            let busy = matches!(self.state, State::ExpectVouch(_));
            self.fail(
                Error::Timeout,
                if busy { Some(AlertCode::Busy) } else { None },
            );
        }
    }

    /// Whether the handshake completed.
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

    /// Takes the established session out.
    pub fn into_established(self) -> Result<GatewayEstablished, Error> {
        match self.state {
            State::Established(est) => Ok(*est),
            State::Failed(e) => Err(e),
            _ => Err(ApiMisuse::WrongState.into()),
        }
    }

    /// Handles one message from the peripheral.
    pub fn handle_input<R: CryptoRng + ?Sized>(
        &mut self,
        now: Timestamp,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<(), Error> {
        self.step(|this, state| {
            let msg = Message::decode(bytes)?;
            match (state, msg) {
                (State::ExpectFirst, Message::Hello(hello)) => {
                    let e = ReusableSecret::random_from_rng(rng);
                    let e_g = crypto::public_of(&e);
                    let mut transcript = Sha256::new();
                    transcript.update(bytes);
                    this.event = Some(GatewayEvent::NeedVouch(VouchRequest {
                        hello: bytes.to_vec(),
                        gateway_ephemeral: e_g,
                    }));
                    this.deadline = Some(now.add_millis(this.config.backend_timeout_ms));
                    Ok(State::ExpectVouch(Box::new(ExpectVouch {
                        e,
                        e_p: hello.ephemeral,
                        th1: crypto::sha256(&[bytes]),
                        transcript,
                    })))
                }
                (State::ExpectFirst, Message::ResumeHello(hello)) => {
                    let mut transcript = Sha256::new();
                    transcript.update(bytes);
                    this.event = Some(GatewayEvent::NeedTicket(hello.ticket));
                    Ok(State::ExpectTicket(Box::new(ExpectTicket {
                        hello,
                        transcript,
                    })))
                }
                (State::ExpectFinish(s), Message::Finish(fin)) => {
                    let mut empty = [0u8; 0];
                    if !crypto::aead_open(
                        &s.p2g,
                        0,
                        &[&schedule::finish_aad(&s.th2)],
                        &mut empty,
                        &fin.tag.0,
                    ) {
                        return Err(PeerMisbehaved::BadFinish.into());
                    }
                    let s = *s;
                    let session = Session::new(
                        Role::Gateway,
                        s.p2g,
                        s.g2p,
                        s.scope,
                        s.session_id,
                        now.add_secs(s.lifetimes.session_s),
                    );
                    let ticket = GatewayTicket {
                        id: s.resumption_id,
                        secret: s.resumption,
                        peripheral: s.peripheral.clone(),
                        lifetimes: s.lifetimes,
                        expires_at: s.ticket_expires_at,
                    };
                    this.deadline = None;
                    Ok(State::Established(Box::new(GatewayEstablished {
                        session,
                        peripheral: s.peripheral,
                        ticket,
                        consumed_ticket: s.consumed_ticket,
                    })))
                }
                (State::Established(est), _) => {
                    this.state = State::Established(est);
                    Err(ApiMisuse::WrongState.into())
                }
                (_, Message::Alert(a)) => Err(Error::Alert(a.code)),
                (_, other) => Err(PeerMisbehaved::UnexpectedMessage {
                    got: other.message_type(),
                }
                .into()),
            }
        })
    }

    /// Handles the backend's answer to [`GatewayEvent::NeedVouch`].
    pub fn handle_vouch(&mut self, now: Timestamp, answer: VouchAnswer) -> Result<(), Error> {
        self.step(|this, state| {
            let State::ExpectVouch(s) = state else {
                return Err(ApiMisuse::WrongState.into());
            };
            let vouched = match answer {
                VouchAnswer::Vouched(v) => v,
                VouchAnswer::Refused(r) => return Err(Error::Refused(r)),
            };
            let vouch: Vouch = vouched.vouch;
            if vouch.gateway_key != this.config.gateway_key
                || vouched.peripheral.scope != vouch.scope
            {
                return Err(PeerMisbehaved::VouchMismatch.into());
            }
            let ss = crypto::dh(&s.e, &s.e_p)?;
            let e_g = crypto::public_of(&s.e);
            let k_resp = schedule::response_key(&s.th1, &e_g, ss.as_bytes());
            let mut body = [0u8; MAX_VOUCH_LEN];
            let n = postcard::to_slice(&vouch, &mut body)
                .map_err(|_| PeerMisbehaved::MalformedVouch)?
                .len();
            crypto::stream_xor(&k_resp, &mut body[..n]);
            let response = Message::Response(Response {
                ephemeral: e_g,
                sealed_vouch: &body[..n],
            });
            let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];
            let len = response.encode(&mut out)?;
            let mut transcript = s.transcript;
            transcript.update(&out[..len]);
            let th2: [u8; 32] = transcript.finalize().into();
            let secrets = schedule::session_secrets(&th2, &[ss.as_bytes()]);
            this.out = Some(out[..len].to_vec());
            this.deadline = Some(now.add_millis(this.config.finish_timeout_ms));
            Ok(State::ExpectFinish(Box::new(ExpectFinish {
                th2,
                p2g: secrets.p2g,
                g2p: secrets.g2p,
                resumption: secrets.resumption,
                resumption_id: secrets.resumption_id,
                session_id: secrets.session_id,
                scope: vouch.scope,
                lifetimes: vouch.lifetimes,
                ticket_expires_at: now.add_secs(vouch.lifetimes.resumption_s),
                peripheral: vouched.peripheral,
                consumed_ticket: None,
            })))
        })
    }

    /// Handles the caller's ticket lookup for [`GatewayEvent::NeedTicket`]
    /// (`None` if no such ticket is stored). Checks expiry and the binder before
    /// any Diffie–Hellman.
    pub fn handle_ticket<R: CryptoRng + ?Sized>(
        &mut self,
        now: Timestamp,
        ticket: Option<&GatewayTicket>,
        rng: &mut R,
    ) -> Result<(), Error> {
        self.step(|this, state| {
            let State::ExpectTicket(s) = state else {
                return Err(ApiMisuse::WrongState.into());
            };
            let ticket = ticket.ok_or(PeerMisbehaved::UnknownTicket)?;
            if ticket.id != s.hello.ticket || now >= ticket.expires_at {
                return Err(PeerMisbehaved::UnknownTicket.into());
            }
            let prefix =
                schedule::resume_prefix(s.hello.suite, &s.hello.ticket, &s.hello.ephemeral);
            let binder = schedule::binder(&ticket.secret, &prefix);
            if !crypto::ct_eq(&binder, &s.hello.binder.0) {
                return Err(PeerMisbehaved::BadBinder.into());
            }
            let e = ReusableSecret::random_from_rng(rng);
            let e_g = crypto::public_of(&e);
            let ss = crypto::dh(&e, &s.hello.ephemeral)?;
            let mut thr = s.transcript.clone();
            thr.update(e_g.as_bytes());
            let thr: [u8; 32] = thr.finalize().into();
            let confirm = schedule::resume_confirm(&ticket.secret, ss.as_bytes(), &thr);
            let msg = Message::ResumeResponse(ResumeResponse {
                ephemeral: e_g,
                confirm: Mac16(confirm),
            });
            let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];
            let len = msg.encode(&mut out)?;
            let mut transcript = s.transcript;
            transcript.update(&out[..len]);
            let th2: [u8; 32] = transcript.finalize().into();
            let secrets = schedule::session_secrets(&th2, &[&ticket.secret.0, ss.as_bytes()]);
            this.out = Some(out[..len].to_vec());
            this.deadline = Some(now.add_millis(this.config.finish_timeout_ms));
            Ok(State::ExpectFinish(Box::new(ExpectFinish {
                th2,
                p2g: secrets.p2g,
                g2p: secrets.g2p,
                resumption: secrets.resumption,
                resumption_id: secrets.resumption_id,
                session_id: secrets.session_id,
                scope: ticket.peripheral.scope,
                lifetimes: ticket.lifetimes,
                ticket_expires_at: ticket.expires_at,
                peripheral: ticket.peripheral.clone(),
                consumed_ticket: Some(ticket.id),
            })))
        })
    }

    /// Runs one transition with sticky errors and alert queueing.
    fn step(
        &mut self,
        f: impl FnOnce(&mut Self, State) -> Result<State, Error>,
    ) -> Result<(), Error> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let state = core::mem::replace(&mut self.state, State::Taken);
        match f(self, state) {
            Ok(next) => {
                self.state = next;
                Ok(())
            }
            Err(e) if matches!(self.state, State::Established(_)) => Err(e),
            Err(e) => {
                let alert = match &e {
                    Error::Alert(_) => None,
                    Error::Refused(Refusal::Busy) | Error::Timeout => Some(AlertCode::Busy),
                    other => Some(AlertCode::from(other)),
                };
                self.fail(e.clone(), alert);
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: Error, alert: Option<AlertCode>) {
        self.state = State::Failed(e);
        self.event = None;
        self.out = alert.map(|code| encode_alert(code).to_vec());
    }
}
