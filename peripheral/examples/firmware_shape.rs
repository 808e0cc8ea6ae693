//! The shape of Vouch in microcontroller firmware: `vouch-proto` alone,
//! `no_std`, no heap.
//!
//! This crate's driver (`vouch_peripheral::Device`) needs `std` and tokio. A
//! microcontroller has neither: it has a BLE stack that calls back on GATT
//! writes and subscriptions, a flash region, a hardware RNG and a millisecond
//! tick. This file is the glue between those and the protocol machine, and
//! nothing else: [`Firmware`] owns the handshake, the session and the
//! reassembly buffer (all fixed-size, about 2 KiB in all), and calls a
//! [`Platform`] the firmware implements for everything that touches hardware.
//!
//! What runs where:
//!
//! | piece | in firmware | here |
//! |---|---|---|
//! | protocol (handshake, session, framing) | `vouch-proto`, `default-features = false` | same code |
//! | BLE stack (GATT server, SPEC.md §8.5) | the vendor's (SoftDevice, NimBLE, Zephyr…) | not present: [`Platform::notify`] is its notification call |
//! | identity key | flash or a secure element, behind `IdentitySigner` | any `IdentitySigner` |
//! | anchors and ticket storage | flash pages | [`Platform::store_anchors`], [`Platform::store_tickets`] |
//! | randomness | hardware TRNG seeding a `ChaCha20Rng` | the caller's `CryptoRng` |
//! | clock | a monotonic millisecond tick (no wall clock needed) | the caller's `Timestamp` |
//!
//! It builds on the host as a `#![no_std]` library (`cargo build -p
//! vouch-peripheral --example firmware_shape`), and `tests/firmware_shape.rs`
//! drives it against the protocol's gateway and backend roles at ATT MTU 23.
//! Because this package enables `std` in `vouch-proto`, that build cannot
//! prove the code needs nothing more than `default-features = false`; the
//! README shows the standalone build that does (a crate with only
//! `vouch-proto = { default-features = false }`, `postcard` and `rand_core`,
//! including this file), and the sizes it measured for Cortex-M4.
#![cfg_attr(not(test), no_std)]
#![allow(dead_code)]

use rand_core::CryptoRng;
use vouch_proto::anchor::AnchorSet;
use vouch_proto::framing::{Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT};
use vouch_proto::handshake::peripheral::{
    NextHandshake, PeripheralConfig, PeripheralHandshake, TicketSlot, TicketWallet,
};
use vouch_proto::keys::{IdentitySigner, PeripheralId};
use vouch_proto::session::{CloseReason, Inbound, Session};
use vouch_proto::wire::{Scope, MAX_HANDSHAKE_MESSAGE, MAX_MESSAGE};
use vouch_proto::{AlertCode, Error, Timestamp};

/// What the firmware provides: the BLE notification call, flash writes, and
/// the application's handling of data.
pub trait Platform {
    /// Sends one fragment as a notification on the Outbox characteristic.
    fn notify(&mut self, fragment: &[u8]);
    /// Persists the resumption tickets (flash) after every change.
    /// `postcard::to_slice` into a 256-byte buffer serializes them; they
    /// hold secrets.
    fn store_tickets(&mut self, tickets: &TicketWallet);
    /// Persists the trust anchors after an update (flash).
    fn store_anchors(&mut self, anchors: &AnchorSet);
    /// Application data from the gateway, with the granted scope (the
    /// application checks its own bits 8–31).
    fn on_data(&mut self, data: &[u8], scope: Scope);
    /// The session is up (`true`) or gone (`false`).
    fn on_session(&mut self, up: bool);
}

// No heap: the state is as large as its largest variant (the handshake,
// ~720 bytes) by design; boxing would need an allocator.
#[allow(clippy::large_enum_variant)]
enum State {
    /// No gateway subscribed.
    Idle,
    /// Hello or ResumeHello sent; waiting for the answer.
    Handshaking {
        hs: PeripheralHandshake,
        resuming: Option<TicketSlot>,
    },
    /// The session is up.
    Established { session: Session },
}

/// What went wrong, for the firmware's log and retry logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The handshake failed; retry after a backoff (SPEC.md §6.4).
    Handshake(Error),
    /// The gateway rejected the ticket (an unauthenticated alert: the
    /// ticket is kept); start again at once, with the other ticket or a full
    /// handshake.
    ResumptionRejected,
}

/// The protocol side of a firmware: one GATT connection at a time.
pub struct Firmware<S> {
    signer: S,
    id: PeripheralId,
    anchors: AnchorSet,
    /// Every decision about the tickets is the wallet's (SPEC.md §6.4), as
    /// in the host driver.
    tickets: TicketWallet,
    att_mtu: usize,
    state: State,
    reassembler: Reassembler<MAX_MESSAGE>,
}

impl<S: IdentitySigner> Firmware<S> {
    /// Built once at boot from flash: identity, id, anchors and tickets.
    pub fn new(signer: S, id: PeripheralId, anchors: AnchorSet, tickets: TicketWallet) -> Self {
        Self {
            signer,
            id,
            anchors,
            tickets,
            att_mtu: 23,
            state: State::Idle,
            reassembler: Reassembler::new(ReassemblyLimits::default()),
        }
    }

    /// Whether a session is up.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// The gateway subscribed to Outbox (SPEC.md §8.5): send the Hello, or a
    /// ResumeHello when the wallet holds a usable ticket.
    pub fn on_subscribed<R: CryptoRng + ?Sized>(
        &mut self,
        now: Timestamp,
        att_mtu: usize,
        rng: &mut R,
        platform: &mut impl Platform,
    ) -> Result<(), Failure> {
        self.att_mtu = att_mtu;
        self.reassembler.reset();
        let config = PeripheralConfig::default();
        // Tickets granted under an anchor rotated away from never resume.
        // (Expiry is the gateway's to judge: `now` restarts at every boot.)
        if self.tickets.prune(&self.anchors, None) {
            platform.store_tickets(&self.tickets);
        }
        let resuming = match self.tickets.choose() {
            NextHandshake::Resume(slot) => Some(slot),
            NextHandshake::Full => None,
        };
        let ticket = resuming.and_then(|slot| self.tickets.ticket(slot));
        let hs = match ticket {
            Some(t) => PeripheralHandshake::resume(&config, t, &self.anchors, now, rng),
            None => {
                PeripheralHandshake::start(&config, self.id, &self.signer, &self.anchors, now, rng)
            }
        };
        let mut hs = hs.map_err(Failure::Handshake)?;
        send_queued(&mut hs, self.att_mtu, platform);
        self.state = State::Handshaking { hs, resuming };
        Ok(())
    }

    /// The gateway wrote one fragment to Inbox.
    ///
    /// The message is handled where the reassembler holds it (no copy), and
    /// the state changes in place: on a microcontroller every moved
    /// kilobyte is stack.
    pub fn on_write(
        &mut self,
        now: Timestamp,
        fragment: &[u8],
        platform: &mut impl Platform,
    ) -> Result<(), Failure> {
        let Self {
            reassembler,
            state,
            anchors,
            tickets,
            att_mtu,
            ..
        } = self;
        // A partial message past its deadline is dropped first, so this
        // fragment is judged on its own (SPEC.md §8.3).
        reassembler.handle_timeout(now);
        let msg = match reassembler.push(now, fragment) {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(()),
            // A framing error drops the partial message; the link goes on.
            Err(_) => return Ok(()),
        };
        match state {
            State::Idle => Ok(()),
            State::Handshaking { hs, resuming } => {
                let result = hs.handle_input(now, msg);
                send_queued(hs, *att_mtu, platform);
                match result {
                    Err(e) => {
                        // Nothing unauthenticated costs a ticket: the next
                        // attempt uses the other one, then a full handshake.
                        if let Some(slot) = *resuming {
                            tickets.on_failed(slot);
                        }
                        let rejected = matches!(e, Error::Alert(AlertCode::ResumptionRejected));
                        let retry_now = rejected && resuming.is_some();
                        *state = State::Idle;
                        Err(if retry_now {
                            Failure::ResumptionRejected
                        } else {
                            Failure::Handshake(e)
                        })
                    }
                    Ok(()) if hs.is_established() => {
                        let State::Handshaking { hs, resuming } =
                            core::mem::replace(state, State::Idle)
                        else {
                            return Ok(());
                        };
                        let est = hs.into_established().map_err(Failure::Handshake)?;
                        tickets.on_established(resuming, est.ticket);
                        platform.store_tickets(tickets);
                        *state = State::Established {
                            session: est.session,
                        };
                        platform.on_session(true);
                        Ok(())
                    }
                    Ok(()) => Ok(()),
                }
            }
            State::Established { session } => {
                if !open_record(session, anchors, tickets, now, msg, platform) {
                    *state = State::Idle;
                    platform.on_session(false);
                }
                Ok(())
            }
        }
    }

    /// Seals and sends application data (needs `TELEMETRY`).
    pub fn send(
        &mut self,
        now: Timestamp,
        data: &[u8],
        platform: &mut impl Platform,
    ) -> Result<(), Error> {
        let State::Established { session } = &mut self.state else {
            return Err(Error::SessionClosed);
        };
        let mut record = [0u8; MAX_MESSAGE];
        let n = session.seal_data(now, data, &mut record)?;
        notify_message(&record[..n], self.att_mtu, platform);
        Ok(())
    }

    /// Closes the session (e.g. before sleeping).
    pub fn close(&mut self, now: Timestamp, reason: CloseReason, platform: &mut impl Platform) {
        if let State::Established { session } = &mut self.state {
            let mut record = [0u8; 32];
            if let Ok(n) = session.seal_close(now, reason, &mut record) {
                notify_message(&record[..n], self.att_mtu, platform);
            }
            platform.on_session(false);
        }
        self.state = State::Idle;
    }

    /// When to call [`on_timer`](Self::on_timer) next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let proto = match &self.state {
            State::Idle => None,
            State::Handshaking { hs, .. } => hs.poll_timeout(),
            State::Established { session } => session.poll_timeout(),
        };
        match (proto, self.reassembler.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired.
    pub fn on_timer(
        &mut self,
        now: Timestamp,
        platform: &mut impl Platform,
    ) -> Result<(), Failure> {
        self.reassembler.handle_timeout(now);
        match &mut self.state {
            State::Handshaking { hs, .. } => {
                hs.handle_timeout(now);
                if let Some(e) = hs.error() {
                    let e = e.clone();
                    self.state = State::Idle;
                    return Err(Failure::Handshake(e));
                }
            }
            State::Established { session } => {
                session.handle_timeout(now);
                if session.is_closed() {
                    self.close(now, CloseReason::EXPIRED, platform);
                }
            }
            State::Idle => {}
        }
        Ok(())
    }
}

/// Opens one record; returns whether the session goes on. Its own frame
/// (with the 1 KiB plaintext buffer) exists only while a record is opened.
#[inline(never)]
fn open_record(
    session: &mut Session,
    anchors: &mut AnchorSet,
    tickets: &mut TicketWallet,
    now: Timestamp,
    msg: &[u8],
    platform: &mut impl Platform,
) -> bool {
    let mut plain = [0u8; MAX_MESSAGE];
    let opened = session.open(now, msg, &mut plain);
    // The gateway's first authenticated record: it completed the handshake
    // and holds the new ticket (SPEC.md §6.1).
    if opened.is_ok() && tickets.on_gateway_record() {
        platform.store_tickets(tickets);
    }
    match opened {
        Ok(Inbound::Data(d)) => platform.on_data(d, session.scope()),
        Ok(Inbound::Close(CloseReason::REVOKED)) => {
            // The gateway deleted its side of the ticket (SPEC.md §10.4).
            tickets.clear();
            platform.store_tickets(tickets);
            return false;
        }
        Ok(Inbound::Close(_)) | Err(Error::SessionExpired) => return false,
        Ok(Inbound::AnchorUpdate(u)) => {
            // Verified against the anchors held; stored only if applied.
            if anchors.apply(&u).is_ok() {
                platform.store_anchors(anchors);
            }
        }
        // A bad record is dropped; the session goes on (SPEC.md §7.4).
        Err(_) => {}
    }
    true
}

fn send_queued(hs: &mut PeripheralHandshake, att_mtu: usize, platform: &mut impl Platform) {
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    while let Some(n) = hs.poll_transmit(&mut buf) {
        notify_message(&buf[..n], att_mtu, platform);
    }
}

fn notify_message(msg: &[u8], att_mtu: usize, platform: &mut impl Platform) {
    let Ok(mut fragments) = Fragmenter::new(msg, att_mtu) else {
        return;
    };
    let mut frag = [0u8; MAX_FRAGMENT];
    while let Some(n) = fragments.next_into(&mut frag) {
        platform.notify(&frag[..n]);
    }
}
