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

/// The paths of the backend's HTTP routes, defined once for the backend's
/// router and the gateway's client. Path parameters are written `{name}`
/// (the router's and OpenAPI's syntax).
pub mod route {
    /// `POST`: one [`VouchRequest`](super::VouchRequest) → [`VouchAnswer`](super::VouchAnswer).
    pub const VOUCH: &str = "/v1/vouch";
    /// `POST`: a [`VouchBatchRequest`](super::VouchBatchRequest) → [`VouchBatchAnswer`](super::VouchBatchAnswer).
    pub const VOUCH_BATCH: &str = "/v1/vouch/batch";
    /// `GET ?after=SEQ&wait_ms=MS`: the revocation feed's long-poll → [`FeedBatch`](super::FeedBatch).
    pub const FEED: &str = "/v1/feed";
    /// `POST`: a [`SessionReport`](super::SessionReport) → [`SessionReportAnswer`](super::SessionReportAnswer).
    pub const SESSIONS: &str = "/v1/sessions";
    /// `GET ?after=SERIAL`: the signed trust-anchor updates → [`AnchorUpdateBatch`](super::AnchorUpdateBatch).
    pub const ANCHOR_UPDATES: &str = "/v1/anchor-updates";
    /// `POST`: a [`CertificateRenewal`](super::CertificateRenewal) → [`CertificateIssued`](super::CertificateIssued):
    /// a fresh client certificate for the calling gateway's own key.
    pub const CERTIFICATE: &str = "/v1/certificate";
    /// `GET`: the OpenAPI document.
    pub const OPENAPI: &str = "/v1/openapi.json";
    /// `GET`: the process answers.
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: the store answers and the service is not shutting down.
    pub const READYZ: &str = "/readyz";
    /// `GET`: Prometheus metrics.
    pub const METRICS: &str = "/metrics";

    /// The admin API (JSON, bearer token).
    pub mod admin {
        /// `GET` list, `POST` enroll.
        pub const PERIPHERALS: &str = "/v1/admin/peripherals";
        /// `POST ?format=csv|ndjson&dry_run=`: bulk enroll.
        pub const PERIPHERALS_IMPORT: &str = "/v1/admin/peripherals/import";
        /// `GET`: one peripheral.
        pub const PERIPHERAL: &str = "/v1/admin/peripherals/{id}";
        /// `POST`: activate, suspend, reinstate or revoke a peripheral.
        pub const PERIPHERAL_ACTION: &str = "/v1/admin/peripherals/{id}/{action}";
        /// `GET` list, `POST` enroll.
        pub const GATEWAYS: &str = "/v1/admin/gateways";
        /// `GET`: one gateway.
        pub const GATEWAY: &str = "/v1/admin/gateways/{key}";
        /// `POST`: activate, suspend, reinstate or revoke a gateway.
        pub const GATEWAY_ACTION: &str = "/v1/admin/gateways/{key}/{action}";
        /// `GET` list, `POST` add.
        pub const POLICIES: &str = "/v1/admin/policies";
        /// `DELETE`: remove one rule.
        pub const POLICY: &str = "/v1/admin/policies/{id}";
        /// `GET`: audit query.
        pub const AUDIT: &str = "/v1/admin/audit";
        /// `GET`: recompute the audit hash chain.
        pub const AUDIT_VERIFY: &str = "/v1/admin/audit/verify";
        /// `GET`: lockouts in force.
        pub const LOCKOUTS: &str = "/v1/admin/lockouts";
        /// `DELETE`: lift one lockout.
        pub const LOCKOUT: &str = "/v1/admin/lockouts/{subject}";
        /// `GET`: the provisioning bundle.
        pub const ANCHOR: &str = "/v1/admin/anchor";
        /// `GET`: who the presented token belongs to, and its role.
        pub const WHOAMI: &str = "/v1/admin/whoami";
        /// `GET`: list operators; `POST`: add one (and its first token).
        pub const OPERATORS: &str = "/v1/admin/operators";
        /// `DELETE`: remove an operator (every token of it stops working).
        pub const OPERATOR: &str = "/v1/admin/operators/{name}";
        /// `GET`: list API tokens (`?operator=`); `POST`: create one.
        pub const TOKENS: &str = "/v1/admin/tokens";
        /// `DELETE`: revoke a token.
        pub const TOKEN: &str = "/v1/admin/tokens/{id}";
        /// `POST`: rotate a token (a new secret under a new id; the old one
        /// stops working).
        pub const TOKEN_ROTATE: &str = "/v1/admin/tokens/{id}/rotate";
    }
}

/// Every stable error code the backend answers with, in its JSON error form
/// `{"error": {"code": "…", "message": "…"}}` (and, for the last four, in an
/// import's per-row report). The strings are API: a code is never renamed or
/// reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `bad_body`: The request body could not be read (400).
    BadBody,
    /// `body_too_large`: The request body exceeds the route's limit (413).
    BodyTooLarge,
    /// `malformed_body`: A postcard body does not decode, or its parts do not match (400).
    MalformedBody,
    /// `unsupported_media_type`: The body's content type is not the route's (415).
    UnsupportedMediaType,
    /// `invalid_json`: A JSON body is not valid JSON or not of the expected shape (400).
    InvalidJson,
    /// `invalid_query`: The query parameters are invalid or missing (400).
    InvalidQuery,
    /// `not_found`: No such route, record or action (404).
    NotFound,
    /// `method_not_allowed`: The route does not take this method (405).
    MethodNotAllowed,
    /// `unauthorized`: The admin bearer token is missing or wrong (401).
    Unauthorized,
    /// `client_certificate_required`: A gateway route was called without a gateway client certificate (401).
    ClientCertificateRequired,
    /// `gateway_unknown`: The client certificate's key is not an enrolled gateway (403).
    GatewayUnknown,
    /// `gateway_not_active`: The gateway is pending, suspended or revoked (403).
    GatewayNotActive,
    /// `gateway_busy`: The gateway has too many requests in flight (429, `Retry-After`).
    GatewayBusy,
    /// `batch_too_large`: A batch or report holds more items than allowed (400).
    BatchTooLarge,
    /// `overloaded`: Too many requests or feed subscribers in flight (503, `Retry-After`).
    Overloaded,
    /// `timeout`: The request exceeded its deadline (503, `Retry-After`).
    Timeout,
    /// `unavailable`: The store or another dependency failed (503, `Retry-After`).
    Unavailable,
    /// `shutting_down`: The service is shutting down (`/readyz`, 503).
    ShuttingDown,
    /// `store_unavailable`: The database does not answer (`/readyz`, 503).
    StoreUnavailable,
    /// `internal`: A handler failed unexpectedly (500).
    Internal,
    /// `invalid_id`: A peripheral id is not 16 hex digits, or a policy id not a number (400).
    InvalidId,
    /// `invalid_public_key`: A public key is not a valid Ed25519 key in hex or SPKI PEM (400).
    InvalidPublicKey,
    /// `invalid_name`: A gateway name is not 1-128 printable characters (400).
    InvalidName,
    /// `invalid_group`: A group name is not 1-128 printable characters (400).
    InvalidGroup,
    /// `invalid_site`: A site name is not 1-128 printable characters (400).
    InvalidSite,
    /// `invalid_attribute`: An attribute name or value is too long or not printable, or there are too many (400).
    InvalidAttribute,
    /// `invalid_status`: A status is not one of the allowed ones (400).
    InvalidStatus,
    /// `invalid_selector`: A policy selector is not of the form `kind:VALUE` or `any` (400).
    InvalidSelector,
    /// `invalid_scope`: A scope names an unknown or reserved bit (400).
    InvalidScope,
    /// `invalid_lifetime`: A policy lifetime is out of range (400).
    InvalidLifetime,
    /// `invalid_time`: A time bound is neither RFC 3339 nor milliseconds since the epoch (400).
    InvalidTime,
    /// `peripheral_exists`: The peripheral id is enrolled with other data (409).
    PeripheralExists,
    /// `public_key_in_use`: The public key is enrolled under another id (409).
    PublicKeyInUse,
    /// `gateway_exists`: The gateway key is enrolled with other data (409).
    GatewayExists,
    /// `policy_exists`: The same policy rule exists already (409).
    PolicyExists,
    /// `invalid_transition`: The lifecycle transition is not allowed from the record's status (409).
    InvalidTransition,
    /// `invalid_row`: An import row is not a valid row object (import reports only).
    InvalidRow,
    /// `invalid_csv`: An import's CSV is malformed (import reports only).
    InvalidCsv,
    /// `conflict`: An import row conflicts with the registry otherwise (import reports only).
    Conflict,
    /// `invalid_utf8`: An import row is not valid UTF-8 (import reports only).
    InvalidUtf8,
    /// `forbidden`: The operator's role does not allow this request (403).
    Forbidden,
    /// `invalid_role`: Not a role: `viewer`, `operator` or `admin` (400).
    InvalidRole,
    /// `operator_exists`: An operator of this name exists or existed (409).
    OperatorExists,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadBody,
        ErrorCode::BodyTooLarge,
        ErrorCode::MalformedBody,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidQuery,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::ClientCertificateRequired,
        ErrorCode::GatewayUnknown,
        ErrorCode::GatewayNotActive,
        ErrorCode::GatewayBusy,
        ErrorCode::BatchTooLarge,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::StoreUnavailable,
        ErrorCode::Internal,
        ErrorCode::InvalidId,
        ErrorCode::InvalidPublicKey,
        ErrorCode::InvalidName,
        ErrorCode::InvalidGroup,
        ErrorCode::InvalidSite,
        ErrorCode::InvalidAttribute,
        ErrorCode::InvalidStatus,
        ErrorCode::InvalidSelector,
        ErrorCode::InvalidScope,
        ErrorCode::InvalidLifetime,
        ErrorCode::InvalidTime,
        ErrorCode::PeripheralExists,
        ErrorCode::PublicKeyInUse,
        ErrorCode::GatewayExists,
        ErrorCode::PolicyExists,
        ErrorCode::InvalidTransition,
        ErrorCode::InvalidRow,
        ErrorCode::InvalidCsv,
        ErrorCode::Conflict,
        ErrorCode::InvalidUtf8,
        ErrorCode::Forbidden,
        ErrorCode::InvalidRole,
        ErrorCode::OperatorExists,
    ];

    /// The stable string.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadBody => "bad_body",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ClientCertificateRequired => "client_certificate_required",
            ErrorCode::GatewayUnknown => "gateway_unknown",
            ErrorCode::GatewayNotActive => "gateway_not_active",
            ErrorCode::GatewayBusy => "gateway_busy",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidPublicKey => "invalid_public_key",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidGroup => "invalid_group",
            ErrorCode::InvalidSite => "invalid_site",
            ErrorCode::InvalidAttribute => "invalid_attribute",
            ErrorCode::InvalidStatus => "invalid_status",
            ErrorCode::InvalidSelector => "invalid_selector",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidLifetime => "invalid_lifetime",
            ErrorCode::InvalidTime => "invalid_time",
            ErrorCode::PeripheralExists => "peripheral_exists",
            ErrorCode::PublicKeyInUse => "public_key_in_use",
            ErrorCode::GatewayExists => "gateway_exists",
            ErrorCode::PolicyExists => "policy_exists",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::InvalidRow => "invalid_row",
            ErrorCode::InvalidCsv => "invalid_csv",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidRole => "invalid_role",
            ErrorCode::OperatorExists => "operator_exists",
        }
    }

    /// The code with this stable string, if there is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the stable string (`code == "invalid_id"`).
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

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

// ---------------------------------------------------------------------------
// Client-certificate renewal (SPEC.md §10.8). Same encoding as above.
// ---------------------------------------------------------------------------

/// A gateway asks for a fresh client certificate (`POST /v1/certificate`,
/// SPEC.md §10.8). It names nothing: the certificate is for the key of the
/// client certificate the request is authenticated with, so a gateway can
/// only ever renew its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRenewal;

/// The backend's answer to a [`CertificateRenewal`]: the new certificate,
/// for the same Ed25519 identity key, signed by the same CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateIssued {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// Its `notAfter`, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_parses_back_and_is_unique() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert!(ErrorCode::ALL[..i].iter().all(|o| o.as_str() != c.as_str()));
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn routes_are_absolute_and_versioned() {
        for r in [
            route::VOUCH,
            route::VOUCH_BATCH,
            route::FEED,
            route::SESSIONS,
            route::ANCHOR_UPDATES,
            route::CERTIFICATE,
            route::OPENAPI,
            route::admin::PERIPHERALS,
            route::admin::ANCHOR,
        ] {
            assert!(r.starts_with("/v1/"), "{r}");
        }
    }
}
