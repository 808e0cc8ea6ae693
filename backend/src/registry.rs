//! The registry's operations, below the HTTP layer: what the admin API
//! ([`crate::routes::admin`]) and the operator CLI (`vouch-backend`) both
//! call, so that the two cannot diverge (backend/README.md, "The CLI opens
//! the store directly").
//!
//! The inputs are the admin API's JSON bodies ([`EnrollPeripheral`],
//! [`EnrollGateway`], [`NewPolicy`]), which the CLI builds from its flags;
//! each parses into what the store enrolls ("parse, don't validate"). The
//! errors are [`RegistryError`]s with a stable [`ErrorCode`]; the admin API
//! answers them as [`crate::error::AppError`]s, and the CLI prints the same
//! code and message.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::backend::ErrorCode;
use vouch_proto::wire::Lifetimes;

use crate::access::{self, NewToken, OperatorRecord, Role, TokenRecord};
use crate::import;
use crate::model::{
    parse_gateway_selector, parse_peripheral_selector, parse_public_key, parse_scope, valid_name,
    GatewayRecord, PolicyRule, Status, Transition,
};
use crate::pki::{CaMaterial, PkiError};
use crate::store::{AuditFilter, CertificateIssue, EnrollOutcome, NewGateway, Store, StoreError};

/// Errors of the registry's operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The input is invalid (400 on the admin API).
    #[error("{message} ({code})")]
    Invalid {
        /// The stable code.
        code: ErrorCode,
        /// What is wrong, safe to show to the caller.
        message: String,
    },
    /// No such thing, such as an unknown lifecycle action (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The store failed or refused the write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway's certificate could not be issued.
    #[error("gateway certificate issuing failed: {0}")]
    Certificate(#[source] PkiError),
}

impl RegistryError {
    /// An invalid input with a stable code.
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Enrolls one peripheral; returns its id and whether it was created.
pub async fn enroll_peripheral(
    store: &Store,
    body: &EnrollPeripheral,
    actor: &str,
) -> Result<(PeripheralId, EnrollOutcome), RegistryError> {
    let new = import::parse_row(body).map_err(|e| RegistryError::invalid(e.code, e.message))?;
    let outcome = store.enroll_peripheral(&new, actor).await?;
    Ok((new.id, outcome))
}

/// Adds a policy rule.
pub async fn add_policy(
    store: &Store,
    body: &NewPolicy,
    actor: &str,
) -> Result<PolicyRule, RegistryError> {
    let (p, g, scope, lifetimes) = body.parse()?;
    Ok(store.add_policy(&p, &g, scope, lifetimes, actor).await?)
}

/// Enroll one peripheral: the admin API's body, the same fields as a bulk
/// import's row ([`import::RawRow`]), validated the same way.
pub use crate::import::RawRow as EnrollPeripheral;

/// Enroll one gateway.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollGateway {
    /// The gateway's Ed25519 identity key: 64 hex digits or SPKI PEM.
    pub public_key: String,
    /// Human name.
    #[serde(default)]
    pub name: Option<String>,
    /// Group.
    #[serde(default)]
    pub group: Option<String>,
    /// Site.
    #[serde(default)]
    pub site: Option<String>,
}

fn opt_name(v: &Option<String>, what: ErrorCode) -> Result<Option<String>, RegistryError> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) if valid_name(s) => Ok(Some(s.to_owned())),
        Some(_) => Err(RegistryError::invalid(
            what,
            "names are 1-128 printable characters",
        )),
    }
}

impl EnrollGateway {
    /// Validates into a store enrollment.
    pub fn parse(&self) -> Result<NewGateway, RegistryError> {
        Ok(NewGateway {
            public_key: parse_public_key(&self.public_key)
                .map_err(|e| RegistryError::invalid(ErrorCode::InvalidPublicKey, e.to_string()))?,
            name: opt_name(&self.name, ErrorCode::InvalidName)?,
            group: opt_name(&self.group, ErrorCode::InvalidGroup)?,
            site: opt_name(&self.site, ErrorCode::InvalidSite)?,
        })
    }
}

/// A new policy rule.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    /// `peripheral:ID`, `group:NAME` or `any`.
    pub peripheral: String,
    /// `gateway:KEY`, `group:NAME`, `site:NAME` or `any`.
    pub gateway: String,
    /// `telemetry`, `command`, `appN` (N in 8..31), numbers or `0x…`, joined by `,`.
    pub scope: String,
    /// Session lifetime, seconds (default 3600).
    #[serde(default = "default_session")]
    pub session_s: u32,
    /// Resumption lifetime, seconds (default 86400).
    #[serde(default = "default_resumption")]
    pub resumption_s: u32,
}

fn default_session() -> u32 {
    3600
}

fn default_resumption() -> u32 {
    86_400
}

/// A parsed policy rule.
pub type ParsedPolicy = (
    crate::model::PeripheralSelector,
    crate::model::GatewaySelector,
    vouch_proto::wire::Scope,
    Lifetimes,
);

impl NewPolicy {
    /// Validates.
    pub fn parse(&self) -> Result<ParsedPolicy, RegistryError> {
        let p = parse_peripheral_selector(self.peripheral.trim()).ok_or_else(|| {
            RegistryError::invalid(
                ErrorCode::InvalidSelector,
                "peripheral must be peripheral:ID, group:NAME or any",
            )
        })?;
        let g = parse_gateway_selector(self.gateway.trim()).ok_or_else(|| {
            RegistryError::invalid(
                ErrorCode::InvalidSelector,
                "gateway must be gateway:KEY, group:NAME, site:NAME or any",
            )
        })?;
        let scope = parse_scope(&self.scope).ok_or_else(|| {
            RegistryError::invalid(
                ErrorCode::InvalidScope,
                "scope: telemetry, command, app8..app31 or numbers, comma-separated; bits 2-7 are reserved",
            )
        })?;
        if self.session_s == 0 {
            return Err(RegistryError::invalid(
                ErrorCode::InvalidLifetime,
                "session_s must be positive",
            ));
        }
        Ok((
            p,
            g,
            scope,
            Lifetimes {
                session_s: self.session_s,
                resumption_s: self.resumption_s,
            },
        ))
    }
}

/// Parses a lifecycle verb.
pub fn parse_transition(s: &str) -> Result<Transition, RegistryError> {
    Ok(match s {
        "activate" => Transition::Activate,
        "suspend" => Transition::Suspend,
        "reinstate" => Transition::Reinstate,
        "revoke" => Transition::Revoke,
        _ => {
            return Err(RegistryError::NotFound(
                "action (activate, suspend, reinstate, revoke)",
            ));
        }
    })
}

/// Parses an admin API path or query parameter.
pub fn parse_id(s: &str) -> Result<PeripheralId, RegistryError> {
    PeripheralId::from_hex(s).ok_or_else(|| {
        RegistryError::invalid(ErrorCode::InvalidId, "a peripheral id is 16 hex digits")
    })
}

/// Parses an admin API path or query parameter.
pub fn parse_gateway_key(s: &str) -> Result<PublicKey, RegistryError> {
    PublicKey::from_hex(s).ok_or_else(|| {
        RegistryError::invalid(
            ErrorCode::InvalidPublicKey,
            "a gateway key is 64 hex digits (a valid Ed25519 key)",
        )
    })
}

/// Parses an admin API path or query parameter.
pub fn parse_status(s: &Option<String>) -> Result<Option<Status>, RegistryError> {
    s.as_deref()
        .map(|v| {
            Status::parse(v).ok_or_else(|| {
                RegistryError::invalid(
                    ErrorCode::InvalidStatus,
                    "status: pending, active, suspended, revoked",
                )
            })
        })
        .transpose()
}

/// Parses a time bound: milliseconds since the Unix epoch or RFC 3339.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// The answer to a gateway enrollment: the record, its TLS client
/// certificate (PEM, for the gateway's own key) and the CA to pin.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct GatewayEnrolled {
    /// Created or unchanged.
    pub outcome: EnrollOutcome,
    /// The registry record.
    pub gateway: GatewayRecord,
    /// The client certificate (PEM), signed by the backend CA. A fresh one on
    /// every call, so a gateway that lost its certificate can be re-enrolled.
    pub certificate_pem: String,
    /// The backend CA certificate (PEM): the gateway pins it.
    pub ca_pem: String,
}

/// Enrolls a gateway and issues its certificate, valid for `lifetime`
/// (`certificates.gateway_lifetime_days`); its expiry is recorded.
pub async fn enroll_gateway(
    store: &Store,
    ca: &CaMaterial,
    lifetime: Duration,
    body: &EnrollGateway,
    actor: &str,
) -> Result<GatewayEnrolled, RegistryError> {
    let new = body.parse()?;
    let outcome = store.enroll_gateway(&new, actor).await?;
    let cert = crate::pki::issue_gateway_cert(ca, &new.public_key, new.name.as_deref(), lifetime)
        .map_err(RegistryError::Certificate)?;
    store
        .record_gateway_certificate(
            &new.public_key,
            cert.not_after_ms,
            CertificateIssue::Enrollment,
            actor,
        )
        .await?;
    let gateway = store.gateway(&new.public_key).await?;
    Ok(GatewayEnrolled {
        outcome,
        gateway,
        certificate_pem: cert.pem,
        ca_pem: ca.cert_pem.clone(),
    })
}

/// Issues a fresh client certificate to an enrolled, active gateway for its
/// own key (the one it authenticated with), valid for `lifetime`, and
/// records it (expiry, audit entry `gateway_certificate_renew`). A gateway
/// that is not active gets [`StoreError::NotActive`], an unknown one
/// [`StoreError::NotFound`], and no certificate.
pub async fn renew_gateway_certificate(
    store: &Store,
    ca: &CaMaterial,
    lifetime: Duration,
    gateway: &GatewayRecord,
    actor: &str,
) -> Result<crate::pki::GatewayCert, RegistryError> {
    let cert =
        crate::pki::issue_gateway_cert(ca, &gateway.public_key, gateway.name.as_deref(), lifetime)
            .map_err(RegistryError::Certificate)?;
    // Handed out only once recorded: the status is checked again there, in
    // the write transaction.
    store
        .record_gateway_certificate(
            &gateway.public_key,
            cert.not_after_ms,
            CertificateIssue::Renewal,
            actor,
        )
        .await?;
    Ok(cert)
}

/// Builds an audit filter from query strings.
pub fn audit_filter(
    peripheral: Option<String>,
    gateway: Option<String>,
    action: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
    after: Option<i64>,
    limit: u32,
) -> Result<AuditFilter, RegistryError> {
    let time = |s: Option<&str>| {
        s.map(|v| {
            parse_time(v).ok_or_else(|| {
                RegistryError::invalid(
                    ErrorCode::InvalidTime,
                    "times are RFC 3339 (2026-01-31T12:00:00Z) or milliseconds since the epoch",
                )
            })
        })
        .transpose()
    };
    if let Some(p) = &peripheral {
        parse_id(p)?;
    }
    if let Some(g) = &gateway {
        parse_gateway_key(g)?;
    }
    Ok(AuditFilter {
        peripheral,
        gateway,
        action,
        since_ms: time(since)?,
        until_ms: time(until)?,
        after_seq: after,
        limit: limit.clamp(1, crate::store::MAX_PAGE),
    })
}

// ----- operators and tokens ([`crate::access`]) ------------------------------

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<Role, RegistryError> {
    Role::parse(s).ok_or_else(|| {
        RegistryError::invalid(ErrorCode::InvalidRole, "role: viewer, operator or admin")
    })
}

fn check_operator_name(name: &str) -> Result<(), RegistryError> {
    if access::valid_operator_name(name) {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            ErrorCode::InvalidName,
            "an operator name is 1-64 of letters, digits, '.', '_', '-', '@', starting with a letter or digit",
        ))
    }
}

fn fresh_token() -> Result<NewToken, RegistryError> {
    access::generate_token().ok_or(RegistryError::Store(StoreError::TokenIdTaken))
}

/// Adds an operator with a role, and its first token (shown once: only its
/// hash is kept).
pub async fn add_operator(
    store: &Store,
    name: &str,
    role: &str,
    actor: &str,
) -> Result<(OperatorRecord, NewToken), RegistryError> {
    check_operator_name(name)?;
    let role = parse_role(role)?;
    let token = fresh_token()?;
    let op = store
        .add_operator(name, role, &token.id, &token.hash, actor)
        .await?;
    Ok((op, token))
}

/// Creates another token for a present operator (shown once).
pub async fn add_token(
    store: &Store,
    operator: &str,
    actor: &str,
) -> Result<(TokenRecord, NewToken), RegistryError> {
    check_operator_name(operator)?;
    let token = fresh_token()?;
    match store
        .add_token(operator, &token.id, &token.hash, actor)
        .await
    {
        Err(StoreError::NotFound) => Err(RegistryError::NotFound("operator")),
        other => Ok((other?, token)),
    }
}

/// Rotates a token: a new one for the same operator, the old one revoked,
/// in one transaction. Returns the new token (shown once).
pub async fn rotate_token(
    store: &Store,
    id: &str,
    actor: &str,
) -> Result<(TokenRecord, NewToken), RegistryError> {
    let token = fresh_token()?;
    match store
        .revoke_token(id, Some((&token.id, &token.hash)), actor)
        .await
    {
        Err(StoreError::NotFound) => Err(RegistryError::NotFound("live token")),
        other => {
            let operator = other?;
            let record = TokenRecord {
                id: token.id.clone(),
                operator,
                created_ms: crate::store::now_ms(),
                revoked_ms: None,
            };
            Ok((record, token))
        }
    }
}

/// Revokes a token.
pub async fn revoke_token(store: &Store, id: &str, actor: &str) -> Result<(), RegistryError> {
    match store.revoke_token(id, None, actor).await {
        Err(StoreError::NotFound) => Err(RegistryError::NotFound("live token")),
        other => other.map(drop).map_err(Into::into),
    }
}

/// Removes an operator (its tokens stop working; the name stays taken).
pub async fn remove_operator(store: &Store, name: &str, actor: &str) -> Result<(), RegistryError> {
    match store.remove_operator(name, actor).await {
        Err(StoreError::NotFound) => Err(RegistryError::NotFound("operator")),
        other => other.map_err(Into::into),
    }
}

// ----- fleet visibility -------------------------------------------------------

/// A peripheral as `show` presents it: its record, and where it was last
/// seen.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PeripheralView {
    /// The record.
    #[serde(flatten)]
    pub record: crate::model::PeripheralRecord,
    /// Last seen, the gateway it is on now, the gateway of its last vouch.
    #[serde(flatten)]
    pub presence: crate::store::Presence,
}

/// One peripheral, with where it was last seen.
pub async fn peripheral_view(
    store: &Store,
    id: &PeripheralId,
) -> Result<PeripheralView, RegistryError> {
    let record = match store.peripheral(id).await {
        Err(StoreError::NotFound) => return Err(RegistryError::NotFound("peripheral")),
        other => other?,
    };
    let presence = store.presence(id, crate::store::now_ms()).await?;
    Ok(PeripheralView { record, presence })
}

/// A gateway as `show` presents it: its record, whether it is online and
/// its live sessions.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct GatewayView {
    /// The record (its `last_poll_ms` included).
    #[serde(flatten)]
    pub record: GatewayRecord,
    /// It polled the revocation feed within `online_within` (a gateway
    /// polls again as each long-poll ends).
    pub online: bool,
    /// Sessions its reports say are live.
    pub live_sessions: i64,
}

/// How recently a gateway must have polled the feed to count as online:
/// the longest wait of one long-poll (`limits.feed_wait_max_ms`) and 30 s.
pub fn online_within(feed_wait_max_ms: u64) -> Duration {
    Duration::from_millis(feed_wait_max_ms.saturating_add(30_000))
}

/// One gateway, with its online state and live sessions.
pub async fn gateway_view(
    store: &Store,
    key: &PublicKey,
    online_within: Duration,
) -> Result<GatewayView, RegistryError> {
    let record = match store.gateway(key).await {
        Err(StoreError::NotFound) => return Err(RegistryError::NotFound("gateway")),
        other => other?,
    };
    let now = crate::store::now_ms();
    let window = i64::try_from(online_within.as_millis()).unwrap_or(i64::MAX);
    let online = record
        .last_poll_ms
        .is_some_and(|at| now.saturating_sub(at) <= window);
    let live_sessions = store.live_sessions(key, now).await?;
    Ok(GatewayView {
        record,
        online,
        live_sessions,
    })
}

/// Parses an attribute filter, `NAME=VALUE`.
pub fn parse_attribute_filter(s: &str) -> Result<(String, String), RegistryError> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() => Ok((n.to_owned(), v.to_owned())),
        _ => Err(RegistryError::invalid(
            ErrorCode::InvalidAttribute,
            "an attribute filter is NAME=VALUE",
        )),
    }
}
