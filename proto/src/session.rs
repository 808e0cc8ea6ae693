//! The established session: per-direction keys, 64-bit counters as nonces, a
//! replay window, rekeying and close (SPEC.md §7). Allocates nothing.
//!
//! A record is `version ‖ 5 ‖ counter (varint) ‖ len (varint) ‖ ciphertext ‖ tag`,
//! sealed with ChaCha20-Poly1305 under the sender's direction key, nonce
//! `0^32 ‖ counter (LE)`, AAD `version ‖ 5 ‖ counter (u64 LE)`. The plaintext is a
//! content-type byte and the content. The counter's upper 32 bits are the key
//! epoch: a sender rekeys by ratcheting its key and jumping to the next epoch.
//!
//! Records that fail authentication, replays and stale records are rejected
//! with an error and leave the session as it was (SPEC.md §7.4): an attacker who
//! can inject bytes cannot make a session accept anything, nor end it.

use crate::anchor::{AnchorUpdate, MAX_ANCHOR_UPDATE_LEN};
use crate::crypto::{self, Secret32, TAG_LEN};
use crate::error::{ApiMisuse, Error, PeerMisbehaved};
use crate::label;
use crate::wire::{Message, MessageType, Scope, MAX_MESSAGE, MAX_RECORD_PAYLOAD, PROTOCOL_VERSION};
use crate::Timestamp;

/// Which side of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The device: sends with the p2g key.
    Peripheral,
    /// The gateway: sends with the g2p key.
    Gateway,
}

/// Why a session was closed (SPEC.md §7.6). Values 0–4 are defined; others are
/// passed through to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseReason(pub u8);

impl CloseReason {
    /// Orderly close, no error.
    pub const NORMAL: CloseReason = CloseReason(0);
    /// The backend revoked the peer.
    pub const REVOKED: CloseReason = CloseReason(1);
    /// The session lifetime ran out.
    pub const EXPIRED: CloseReason = CloseReason(2);
    /// The sender is shutting down.
    pub const SHUTDOWN: CloseReason = CloseReason(3);
    /// The sender saw a protocol error.
    pub const PROTOCOL_ERROR: CloseReason = CloseReason(4);

    /// The reason's name as SPEC.md §7.6 gives it (`normal`, `revoked`,
    /// `expired`, `shutdown`, `protocol_error`), or `None` for a value the
    /// application defines.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NORMAL => "normal",
            Self::REVOKED => "revoked",
            Self::EXPIRED => "expired",
            Self::SHUTDOWN => "shutdown",
            Self::PROTOCOL_ERROR => "protocol_error",
            _ => return None,
        })
    }
}

/// `normal`, …, or `application reason N` for the values SPEC.md leaves to
/// applications.
impl core::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "application reason {}", self.0),
        }
    }
}

/// Content types inside a record (SPEC.md §7.3).
///
/// APPEND ONLY: the values are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ContentType {
    /// Application data.
    Data = 0,
    /// Close, with a one-byte reason.
    Close = 1,
    /// A signed trust-anchor update (gateway → peripheral).
    AnchorUpdate = 2,
}

/// When the sender ratchets its key (SPEC.md §7.5). Local policy, not wire
/// format: the receiver follows whatever epoch the sender uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Records per key before a ratchet (at most 2^32 - 1, the epoch size).
    pub after_records: u64,
    /// Plaintext bytes per key before a ratchet.
    pub after_bytes: u64,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        Self {
            after_records: 1 << 24,
            after_bytes: 1 << 30,
        }
    }
}

/// What an opened record carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Application data.
    Data(&'a [u8]),
    /// The peer closed the session.
    Close(CloseReason),
    /// A trust-anchor update for the peripheral to apply.
    AnchorUpdate(AnchorUpdate),
}

const EPOCH_SHIFT: u32 = 32;
const EPOCH_LOW_MAX: u64 = (1 << EPOCH_SHIFT) - 1;
const WINDOW: u64 = 64;

struct Sender {
    key: Secret32,
    epoch: u32,
    next: u64,
    records: u64,
    bytes: u64,
}

struct Receiver {
    key: Secret32,
    epoch: u32,
    /// Highest counter accepted in this epoch, if any.
    top: Option<u64>,
    /// Bit i set: counter `top - i` was accepted.
    seen: u64,
}

impl Receiver {
    fn check(&self, counter: u64) -> Result<(), PeerMisbehaved> {
        match self.top {
            None => Ok(()),
            Some(top) if counter > top => Ok(()),
            Some(top) => {
                let back = top - counter;
                if back >= WINDOW || self.seen & (1 << back) != 0 {
                    Err(PeerMisbehaved::ReplayedRecord)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn mark(&mut self, counter: u64) {
        match self.top {
            Some(top) if counter <= top => self.seen |= 1 << (top - counter),
            Some(top) => {
                let shift = counter - top;
                self.seen = if shift >= WINDOW {
                    1
                } else {
                    (self.seen << shift) | 1
                };
                self.top = Some(counter);
            }
            None => {
                self.seen = 1;
                self.top = Some(counter);
            }
        }
    }
}

/// An established session (SPEC.md §7). The same type serves both roles.
pub struct Session {
    role: Role,
    scope: Scope,
    id: [u8; 8],
    expires_at: Timestamp,
    policy: RekeyPolicy,
    send: Sender,
    recv: Receiver,
    closed: bool,
}

// Its keys are `Secret32`s, which zeroize on drop; nothing else it holds is
// secret.
impl zeroize::ZeroizeOnDrop for Session {}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("send_epoch", &self.send.epoch)
            .field("recv_epoch", &self.recv.epoch)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Builds a session from the handshake's secrets. The peripheral's counter 0
    /// was spent on the Finish, so it sends from 1 and the gateway has seen 0.
    pub(crate) fn new(
        role: Role,
        p2g: Secret32,
        g2p: Secret32,
        scope: Scope,
        id: [u8; 8],
        expires_at: Timestamp,
    ) -> Self {
        let (send_key, recv_key) = match role {
            Role::Peripheral => (p2g, g2p),
            Role::Gateway => (g2p, p2g),
        };
        let mut recv = Receiver {
            key: recv_key,
            epoch: 0,
            top: None,
            seen: 0,
        };
        let send_next = match role {
            Role::Peripheral => 1,
            Role::Gateway => {
                recv.mark(0);
                0
            }
        };
        Session {
            role,
            scope,
            id,
            expires_at,
            policy: RekeyPolicy::default(),
            send: Sender {
                key: send_key,
                epoch: 0,
                next: send_next,
                records: 0,
                bytes: 0,
            },
            recv,
            closed: false,
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The scope the backend granted the gateway.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// A non-secret id of this session, equal on both sides (for logs).
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// When the session's lifetime ends.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// The next deadline this session needs a call at: its expiry.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (!self.closed).then_some(self.expires_at)
    }

    /// Whether the session was closed (by either side) or expired.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The current send and receive key epochs (for tests and metrics).
    pub fn epochs(&self) -> (u32, u32) {
        (self.send.epoch, self.recv.epoch)
    }

    /// Sets when this side ratchets its sending key.
    pub fn set_rekey_policy(&mut self, policy: RekeyPolicy) {
        self.policy = policy;
    }

    /// Ratchets the sending key now: the next record uses the next epoch
    /// (SPEC.md §7.5). A no-op if nothing was sent in the current epoch, so a
    /// sender never moves two epochs past what its peer has seen (a receiver
    /// follows only one epoch at a time).
    pub fn rekey(&mut self) -> Result<(), Error> {
        if self.send.records == 0 && self.send.epoch > 0 {
            return Ok(());
        }
        if self.send.epoch == u32::MAX {
            return Err(ApiMisuse::CountersExhausted.into());
        }
        let next = crypto::expand_from_key(&self.send.key, label::REKEY);
        self.send.key = next;
        self.send.epoch += 1;
        self.send.next = (self.send.epoch as u64) << EPOCH_SHIFT;
        self.send.records = 0;
        self.send.bytes = 0;
        Ok(())
    }

    /// Seals application data into `out`, returning the record's length.
    ///
    /// The peripheral may send only with [`Scope::TELEMETRY`], the gateway only
    /// with [`Scope::COMMAND`] (SPEC.md §7.3).
    pub fn seal_data(
        &mut self,
        now: Timestamp,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let needed = match self.role {
            Role::Peripheral => Scope::TELEMETRY,
            Role::Gateway => Scope::COMMAND,
        };
        if !self.scope.contains(needed) {
            return Err(ApiMisuse::OutOfScope.into());
        }
        self.seal(now, ContentType::Data, &[payload], out)
    }

    /// Seals a close record and closes the session for sending and receiving.
    pub fn seal_close(
        &mut self,
        now: Timestamp,
        reason: CloseReason,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let n = self.seal_inner(now, ContentType::Close, &[&[reason.0]], out, true)?;
        self.closed = true;
        Ok(n)
    }

    /// Seals a trust-anchor update (gateway → peripheral only).
    pub fn seal_anchor_update(
        &mut self,
        now: Timestamp,
        update: &AnchorUpdate,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if self.role != Role::Gateway {
            return Err(ApiMisuse::WrongState.into());
        }
        let mut buf = [0u8; MAX_ANCHOR_UPDATE_LEN];
        let enc = postcard::to_slice(update, &mut buf).map_err(|_| ApiMisuse::BufferTooSmall {
            need: MAX_ANCHOR_UPDATE_LEN,
            have: MAX_ANCHOR_UPDATE_LEN,
        })?;
        let n = enc.len();
        self.seal(now, ContentType::AnchorUpdate, &[&buf[..n]], out)
    }

    fn seal(
        &mut self,
        now: Timestamp,
        ct: ContentType,
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        self.seal_inner(now, ct, parts, out, false)
    }

    fn seal_inner(
        &mut self,
        now: Timestamp,
        ct: ContentType,
        parts: &[&[u8]],
        out: &mut [u8],
        even_if_expired: bool,
    ) -> Result<usize, Error> {
        if self.closed {
            return Err(Error::SessionClosed);
        }
        if now >= self.expires_at && !even_if_expired {
            return Err(Error::SessionExpired);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_RECORD_PAYLOAD {
            return Err(ApiMisuse::PayloadTooLarge {
                len,
                max: MAX_RECORD_PAYLOAD,
            }
            .into());
        }
        let low = self.send.next & EPOCH_LOW_MAX;
        if self.send.records >= self.policy.after_records.min(EPOCH_LOW_MAX)
            || self.send.bytes >= self.policy.after_bytes
            || low == EPOCH_LOW_MAX
        {
            self.rekey()?;
        }
        let counter = self.send.next;
        let sealed_len = 1 + len + TAG_LEN;
        let mut header = [0u8; 2 + 10 + 3];
        header[0] = PROTOCOL_VERSION;
        header[1] = MessageType::Record as u8;
        let mut h = 2;
        h += write_varint(counter, &mut header[h..]);
        h += write_varint(sealed_len as u64, &mut header[h..]);
        let total = h + sealed_len;
        if out.len() < total {
            return Err(ApiMisuse::BufferTooSmall {
                need: total,
                have: out.len(),
            }
            .into());
        }
        out[..h].copy_from_slice(&header[..h]);
        let body = &mut out[h..h + 1 + len];
        body[0] = ct as u8;
        let mut at = 1;
        for p in parts {
            body[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let tag = crypto::aead_seal(&self.send.key, counter, &[&record_aad(counter)], body);
        out[h + 1 + len..total].copy_from_slice(&tag);
        self.send.next += 1;
        self.send.records += 1;
        self.send.bytes += len as u64;
        Ok(total)
    }

    /// Opens a record into `out` (which needs room for the ciphertext).
    ///
    /// On error the session is unchanged, except for [`Error::SessionExpired`],
    /// after which it is closed. A record that would move the peer more than one
    /// epoch ahead is refused before any key is derived.
    pub fn open<'o>(
        &mut self,
        now: Timestamp,
        msg: &[u8],
        out: &'o mut [u8],
    ) -> Result<Inbound<'o>, Error> {
        if self.closed {
            return Err(Error::SessionClosed);
        }
        if now >= self.expires_at {
            self.closed = true;
            return Err(Error::SessionExpired);
        }
        let record = match Message::decode(msg)? {
            Message::Record(r) => r,
            Message::Alert(a) => return Err(Error::Alert(a.code)),
            other => {
                return Err(PeerMisbehaved::UnexpectedMessage {
                    got: other.message_type(),
                }
                .into());
            }
        };
        let counter = record.counter;
        let epoch = (counter >> EPOCH_SHIFT) as u32;
        let next_key;
        let key = if epoch == self.recv.epoch {
            self.recv.check(counter)?;
            next_key = None;
            &self.recv.key
        } else if epoch.checked_sub(self.recv.epoch) == Some(1) {
            next_key = Some(crypto::expand_from_key(&self.recv.key, label::REKEY));
            next_key.as_ref().unwrap_or(&self.recv.key)
        } else if epoch < self.recv.epoch {
            return Err(PeerMisbehaved::ReplayedRecord.into());
        } else {
            return Err(PeerMisbehaved::BadRecord.into());
        };
        let (ct, tag) = record.sealed.split_at(record.sealed.len() - TAG_LEN);
        if out.len() < ct.len() {
            return Err(ApiMisuse::BufferTooSmall {
                need: ct.len(),
                have: out.len(),
            }
            .into());
        }
        let plain = &mut out[..ct.len()];
        plain.copy_from_slice(ct);
        if !crypto::aead_open(key, counter, &[&record_aad(counter)], plain, tag) {
            plain.fill(0);
            return Err(PeerMisbehaved::BadRecord.into());
        }
        // Authentic: commit the epoch change and the replay window.
        if let Some(k) = next_key {
            self.recv.key = k;
            self.recv.epoch = epoch;
            self.recv.top = None;
            self.recv.seen = 0;
        }
        self.recv.mark(counter);
        let (&content_type, content) = out[..ct.len()]
            .split_first()
            .ok_or(PeerMisbehaved::BadRecord)?;
        match content_type {
            t if t == ContentType::Data as u8 => {
                let needed = match self.role {
                    Role::Peripheral => Scope::COMMAND,
                    Role::Gateway => Scope::TELEMETRY,
                };
                if !self.scope.contains(needed) {
                    return Err(PeerMisbehaved::OutOfScope.into());
                }
                Ok(Inbound::Data(content))
            }
            t if t == ContentType::Close as u8 => match content {
                [reason] => {
                    self.closed = true;
                    Ok(Inbound::Close(CloseReason(*reason)))
                }
                _ => Err(crate::DecodeError::Malformed.into()),
            },
            t if t == ContentType::AnchorUpdate as u8 && self.role == Role::Peripheral => {
                let update: AnchorUpdate = crate::wire::body_of(content)?;
                Ok(Inbound::AnchorUpdate(update))
            }
            _ => Err(crate::DecodeError::Malformed.into()),
        }
    }

    /// Checks the session's deadline: past its expiry the session closes.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if now >= self.expires_at {
            self.closed = true;
        }
    }

    /// Exports this side's current sending and receiving keys.
    ///
    /// For test vectors and interoperability debugging only: anyone holding these
    /// can read and forge the session.
    pub fn danger_export_keys(&self) -> ([u8; 32], [u8; 32]) {
        (self.send.key.0, self.recv.key.0)
    }
}

/// `version ‖ 5 ‖ counter (u64 LE)`.
fn record_aad(counter: u64) -> [u8; 10] {
    let mut a = [0u8; 10];
    a[0] = PROTOCOL_VERSION;
    a[1] = MessageType::Record as u8;
    a[2..].copy_from_slice(&counter.to_le_bytes());
    a
}

/// Writes a postcard (LEB128) varint, returning its length. `out` must hold 10.
fn write_varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = b;
            return i + 1;
        }
        out[i] = b | 0x80;
        i += 1;
    }
}

const _: () = assert!(MAX_MESSAGE >= MAX_RECORD_PAYLOAD + 2 + 10 + 2 + 1 + TAG_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Pair;

    fn pair() -> (Session, Session, Timestamp) {
        let mut pair = Pair::new(3);
        let (p, g) = pair.full_handshake().unwrap();
        (p.session, g.session, pair.now)
    }

    #[test]
    fn data_both_ways_and_replay_rejected() {
        let (mut p, mut g, now) = pair();
        let mut rec = [0u8; 256];
        let mut out = [0u8; 256];
        let n = p.seal_data(now, b"hello", &mut rec).unwrap();
        assert_eq!(
            g.open(now, &rec[..n], &mut out).unwrap(),
            Inbound::Data(b"hello")
        );
        // The same record again is a replay.
        assert_eq!(
            g.open(now, &rec[..n], &mut out),
            Err(PeerMisbehaved::ReplayedRecord.into())
        );
        let n = g.seal_data(now, b"cmd", &mut rec).unwrap();
        assert_eq!(
            p.open(now, &rec[..n], &mut out).unwrap(),
            Inbound::Data(b"cmd")
        );
    }

    #[test]
    fn reflection_of_own_record_fails() {
        let (mut p, _g, now) = pair();
        let mut rec = [0u8; 256];
        let mut out = [0u8; 256];
        let n = p.seal_data(now, b"x", &mut rec).unwrap();
        assert_eq!(
            p.open(now, &rec[..n], &mut out),
            Err(PeerMisbehaved::BadRecord.into())
        );
    }

    #[test]
    fn reordering_within_window_is_accepted_once() {
        let (mut p, mut g, now) = pair();
        let mut recs = [[0u8; 64]; 3];
        let mut lens = [0; 3];
        for i in 0..3 {
            lens[i] = p.seal_data(now, &[i as u8], &mut recs[i]).unwrap();
        }
        let mut out = [0u8; 64];
        for i in [2, 0, 1] {
            assert_eq!(
                g.open(now, &recs[i][..lens[i]], &mut out).unwrap(),
                Inbound::Data(&[i as u8][..])
            );
        }
        for i in 0..3 {
            assert!(g.open(now, &recs[i][..lens[i]], &mut out).is_err());
        }
    }

    #[test]
    fn rekey_moves_epoch_and_old_epoch_is_refused() {
        let (mut p, mut g, now) = pair();
        let mut rec = [0u8; 64];
        let mut old = [0u8; 64];
        let mut out = [0u8; 64];
        let n_old = p.seal_data(now, b"a", &mut old).unwrap();
        p.rekey().unwrap();
        let n = p.seal_data(now, b"b", &mut rec).unwrap();
        assert_eq!(
            g.open(now, &rec[..n], &mut out).unwrap(),
            Inbound::Data(b"b")
        );
        assert_eq!(g.epochs().1, 1);
        // A record of the previous epoch arriving late is refused.
        assert_eq!(
            g.open(now, &old[..n_old], &mut out),
            Err(PeerMisbehaved::ReplayedRecord.into())
        );
        // Keys really changed: the old key is gone on both sides.
        assert_ne!(p.danger_export_keys().0, [0u8; 32]);
    }

    #[test]
    fn automatic_rekey_by_record_count() {
        let (mut p, mut g, now) = pair();
        p.set_rekey_policy(RekeyPolicy {
            after_records: 2,
            after_bytes: u64::MAX,
        });
        let mut rec = [0u8; 64];
        let mut out = [0u8; 64];
        for i in 0..7u8 {
            let n = p.seal_data(now, &[i], &mut rec).unwrap();
            assert_eq!(
                g.open(now, &rec[..n], &mut out).unwrap(),
                Inbound::Data(&[i][..])
            );
        }
        assert_eq!(p.epochs().0, 3);
        assert_eq!(g.epochs().1, 3);
    }

    #[test]
    fn rekeying_twice_without_sending_moves_one_epoch() {
        let (mut p, mut g, now) = pair();
        p.rekey().unwrap();
        p.rekey().unwrap();
        assert_eq!(p.epochs().0, 1);
        let mut rec = [0u8; 64];
        let mut out = [0u8; 64];
        let n = p.seal_data(now, b"y", &mut rec).unwrap();
        assert_eq!(
            g.open(now, &rec[..n], &mut out).unwrap(),
            Inbound::Data(b"y")
        );
    }

    #[test]
    fn skipping_two_epochs_is_refused_without_work() {
        let (mut p, mut g, now) = pair();
        let mut rec = [0u8; 64];
        let mut out = [0u8; 64];
        p.rekey().unwrap();
        // A record of epoch 1 that never arrives...
        p.seal_data(now, b"lost", &mut rec).unwrap();
        p.rekey().unwrap();
        // ...so this one is two epochs ahead of the receiver.
        let n = p.seal_data(now, b"z", &mut rec).unwrap();
        assert_eq!(
            g.open(now, &rec[..n], &mut out),
            Err(PeerMisbehaved::BadRecord.into())
        );
        assert_eq!(g.epochs().1, 0);
    }

    #[test]
    fn close_ends_both_sides() {
        let (mut p, mut g, now) = pair();
        let mut rec = [0u8; 64];
        let mut out = [0u8; 64];
        let n = g.seal_close(now, CloseReason::REVOKED, &mut rec).unwrap();
        assert!(g.is_closed());
        assert_eq!(
            p.open(now, &rec[..n], &mut out).unwrap(),
            Inbound::Close(CloseReason::REVOKED)
        );
        assert!(p.is_closed());
        assert_eq!(p.seal_data(now, b"x", &mut rec), Err(Error::SessionClosed));
    }

    #[test]
    fn expiry_closes() {
        let (mut p, _g, now) = pair();
        let later = p.expires_at();
        let mut rec = [0u8; 64];
        assert!(p.seal_data(now, b"x", &mut rec).is_ok());
        assert_eq!(
            p.seal_data(later, b"x", &mut rec),
            Err(Error::SessionExpired)
        );
    }

    #[test]
    fn varint_matches_postcard() {
        for v in [0u64, 1, 127, 128, 300, 1 << 32, u64::MAX] {
            let mut a = [0u8; 10];
            let n = write_varint(v, &mut a);
            let mut b = [0u8; 10];
            let enc = postcard::to_slice(&v, &mut b).unwrap();
            assert_eq!(&a[..n], enc);
        }
    }
}
