//! The gateway ↔ backend bodies (SPEC.md §10), defined once for both sides.
//!
//! Each body travels as `version ‖ postcard(body)` in an HTTPS request or
//! response (`Content-Type: application/vnd.vouch.v1+postcard`). The gateway
//! is identified by its TLS client certificate, never by a field here.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{DhPublic, Scope, Vouch, PROTOCOL_VERSION};
use crate::error::DecodeError;
use crate::keys::{PeripheralId, PublicKey};

/// The most requests one batch may carry.
pub const MAX_BATCH: usize = 64;

/// Largest encoded body the backend accepts or the gateway decodes.
pub const MAX_BODY: usize = 64 * 1024;

/// A gateway asks the backend to vouch for it in one handshake (SPEC.md §10.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchRequest {
    /// The peripheral's Hello, exactly as received.
    pub hello: Vec<u8>,
    /// The gateway's ephemeral for this handshake, `e_G`.
    pub gateway_ephemeral: DhPublic,
}

/// Several [`VouchRequest`]s at once (answered in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchBatchRequest {
    /// At most [`MAX_BATCH`] requests.
    pub items: Vec<VouchRequest>,
}

/// What the backend tells the gateway about an authorized peripheral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeripheralInfo {
    /// Registry id.
    pub id: PeripheralId,
    /// Its identity key.
    pub public_key: PublicKey,
    /// Its group, if it has one.
    pub group: Option<String>,
    /// Free-form attributes from the registry (name, value), sorted by name.
    pub attributes: Vec<(String, String)>,
    /// What this gateway may do with it (equals the vouch's scope).
    pub scope: Scope,
}

/// A positive answer: the vouch for the peripheral, and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouched {
    /// The signed vouch, to be sealed into the Response.
    pub vouch: Vouch,
    /// The authenticated peripheral.
    pub peripheral: PeripheralInfo,
}

pub use crate::error::Refusal;

/// The backend's answer to one [`VouchRequest`].
///
/// APPEND ONLY: the variant order is wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// An answer lives for one request and is moved once; boxing the common
// variant would cost an allocation per vouch for nothing.
#[allow(clippy::large_enum_variant)]
pub enum VouchAnswer {
    /// Vouched.
    Vouched(Vouched),
    /// Refused.
    Refused(Refusal),
}

/// Answers to a [`VouchBatchRequest`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchBatchAnswer {
    /// One answer per request.
    pub items: Vec<VouchAnswer>,
}

/// Encodes a body as `version ‖ postcard(body)`.
pub fn encode_body<T: Serialize>(body: &T) -> Vec<u8> {
    let mut out = alloc::vec![PROTOCOL_VERSION];
    // Serializing these types into a Vec cannot fail.
    if let Ok(bytes) = postcard::to_allocvec(body) {
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes a body, rejecting other versions, oversized input and trailing bytes.
pub fn decode_body<'a, T: Deserialize<'a> + Serialize>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_BODY {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_BODY,
        });
    }
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    super::body_of(rest)
}

// ---------------------------------------------------------------------------
// Appended for the backend service (issue 3): the content type, the
// revocation feed (SPEC.md §10.4) and the gateways' session reports (clone
// detection, SPEC.md §11.6). Same encoding as above: `version ‖ postcard(body)`.
// ---------------------------------------------------------------------------

/// The HTTP content type of every body in this module.
pub const CONTENT_TYPE: &str = "application/vnd.vouch.v1+postcard";

/// The most events one [`FeedBatch`] carries, and the most session events one
/// [`SessionReport`] may carry.
pub const MAX_FEED_EVENTS: usize = 256;

/// One change announced on the revocation feed (SPEC.md §10.4).
///
/// APPEND ONLY: discriminants are wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedChange {
    /// The peripheral was suspended: close its live sessions, delete its
    /// resumption tickets.
    PeripheralSuspended(PeripheralId),
    /// The peripheral was revoked (final): close its live sessions, delete its
    /// resumption tickets.
    PeripheralRevoked(PeripheralId),
    /// A suspended peripheral was reinstated (informational).
    PeripheralReinstated(PeripheralId),
    /// The gateway with this key was suspended.
    GatewaySuspended(PublicKey),
    /// The gateway with this key was revoked (final).
    GatewayRevoked(PublicKey),
    /// A suspended gateway was reinstated (informational).
    GatewayReinstated(PublicKey),
    /// A policy rule was removed: a grant may have shrunk. The event names
    /// no rule, so a gateway closes every session and drops every ticket,
    /// and each peripheral's next handshake is judged under the new policy
    /// (SPEC.md §10.5).
    PolicyChanged,
    /// Every backend instance now hands out the trust-anchor updates up to
    /// this serial (SPEC.md §10.6): a gateway holding fewer fetches them at
    /// once instead of at its next periodic fetch.
    AnchorUpdates(u32),
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Sequence number: strictly increasing in the order the backend committed
    /// the changes, shared by all backend instances.
    pub seq: u64,
    /// When the backend wrote the change, in milliseconds since the Unix epoch
    /// (backend clock; informational).
    pub at_ms: u64,
    /// What changed.
    pub change: FeedChange,
}

/// The answer to a feed long-poll `GET /v1/feed?after=SEQ`: the events after
/// `SEQ`, oldest first (at most [`MAX_FEED_EVENTS`]), or none if the wait
/// ended first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBatch {
    /// The events.
    pub events: Vec<FeedEvent>,
    /// The `after` to send with the next poll. Never below the `after` sent,
    /// except when the backend's log is behind the gateway's cursor (a
    /// restored database): then it is the backend's last sequence number and
    /// the gateway should adopt it.
    pub next: u64,
}

/// What happened to a session on a gateway.
///
/// APPEND ONLY: discriminants are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEventKind {
    /// A session with the peripheral was established (full handshake or
    /// resumption).
    Attached,
    /// The session ended (closed, expired, link lost).
    Detached,
    /// This session (`session_id`) was superseded by a newer session of the
    /// same peripheral on the same gateway and then delivered an
    /// authenticated record: two holders of the key were live at once, a
    /// suspected clone (SPEC.md §10.5, §11.6). A genuine device that
    /// reconnected never speaks on its old, dead link.
    Concurrent,
}

/// A gateway reports one session change (SPEC.md §11.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// The peripheral, as the backend named it in the vouch answer.
    pub peripheral: PeripheralId,
    /// Attached or detached.
    pub kind: SessionEventKind,
    /// The session's non-secret id (`Session::id`), for correlating logs.
    pub session_id: [u8; 8],
}

/// Several session events at once (`POST /v1/sessions`), at most
/// [`MAX_FEED_EVENTS`], answered in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// The events, oldest first.
    pub events: Vec<SessionEvent>,
    /// Appended (SPEC.md §10.5): when each event's session started and last
    /// heard its peripheral, as ages at the moment the report is sent, one
    /// per event in the same order. Empty in a report from a gateway that
    /// predates it (decoded by [`SessionReport::decode`]).
    pub times: Vec<EventTimes>,
}

/// When a reported session started and when it last heard its peripheral,
/// as milliseconds before the report was sent, measured on the gateway's
/// monotonic clock (SPEC.md §10.5). Ages rather than times: the backend
/// subtracts them from its own clock at arrival, so no clock is compared
/// with another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTimes {
    /// Since the session was established.
    pub started_ms_ago: u32,
    /// Since the session's last authenticated message from the peripheral
    /// (its establishment if none came after).
    pub heard_ms_ago: u32,
}

/// [`SessionReport`] as gateways sent it before [`SessionReport::times`].
#[derive(Serialize, Deserialize)]
struct SessionReportWithoutTimes {
    events: Vec<SessionEvent>,
}

impl SessionReport {
    /// Decodes a `POST /v1/sessions` body of either form: with
    /// [`times`](Self::times), or without (a gateway that predates it; the
    /// times are then empty). Otherwise as [`decode_body`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match decode_body::<SessionReport>(bytes) {
            Ok(report) => Ok(report),
            Err(e @ (DecodeError::TooLarge { .. } | DecodeError::UnsupportedVersion(_))) => Err(e),
            Err(e) => decode_body::<SessionReportWithoutTimes>(bytes)
                .map(|old| SessionReport {
                    events: old.events,
                    times: Vec::new(),
                })
                .map_err(|_| e),
        }
    }
}

/// The backend's verdict on one reported session event.
///
/// APPEND ONLY: discriminants are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionVerdict {
    /// Recorded.
    Accepted,
    /// Recorded, but the peripheral is live on another gateway too: a clone
    /// is suspected and an alert was raised. The session may continue.
    CloneSuspected,
    /// The session must be closed: the peripheral is not active, or it is live
    /// on another gateway and the policy refuses a second one.
    Refused,
}

/// Answers to a [`SessionReport`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReportAnswer {
    /// One verdict per event.
    pub items: Vec<SessionVerdict>,
}

// ---------------------------------------------------------------------------
// Appended for backend key rotation: the signed trust-anchor updates a
// gateway fetches from the backend and delivers to peripherals in session
// (SPEC.md §7.7, §10.6). Same encoding as above: `version ‖ postcard(body)`.
// ---------------------------------------------------------------------------

use crate::anchor::AnchorUpdate;

/// The most updates one [`AnchorUpdateBatch`] carries.
pub const MAX_ANCHOR_UPDATES: usize = 64;

/// The answer to `GET /v1/anchor-updates?after=SERIAL` (SPEC.md §10.6): the
/// anchor updates the backend issued with a serial above `SERIAL`, in serial
/// order, at most [`MAX_ANCHOR_UPDATES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorUpdateBatch {
    /// The updates, oldest (lowest serial) first. Each is exactly what the
    /// backend signed; the gateway forwards it unchanged in a record of
    /// content type 2 (SPEC.md §7.3).
    pub updates: Vec<AnchorUpdate>,
    /// The serial of the last update this backend serves now (0 if none).
    /// If it is above the serial of the last update in `updates`, more
    /// follow: ask again with `after` = that serial.
    pub latest: u32,
}
