//! The admin API: JSON under `/v1/admin/`, bearer token
//! (`Authorization: Bearer <token printed by init>`).
//!
//! | method, path | does |
//! |---|---|
//! | `GET /v1/admin/peripherals?status=&group=&after=&limit=` | list (cursor: `next_cursor`) |
//! | `POST /v1/admin/peripherals` | enroll one ([`EnrollPeripheral`]) |
//! | `POST /v1/admin/peripherals/import?format=csv\|ndjson&dry_run=` | bulk enroll (body: the file) |
//! | `GET /v1/admin/peripherals/{id}` | show |
//! | `POST /v1/admin/peripherals/{id}/{activate\|suspend\|reinstate\|revoke}` | lifecycle |
//! | `GET /v1/admin/gateways?status=&group=&site=&after=&limit=` | list |
//! | `POST /v1/admin/gateways` | enroll ([`EnrollGateway`]); returns the client certificate |
//! | `GET /v1/admin/gateways/{key}` | show |
//! | `POST /v1/admin/gateways/{key}/{activate\|suspend\|reinstate\|revoke}` | lifecycle |
//! | `GET /v1/admin/policies`, `POST /v1/admin/policies`, `DELETE /v1/admin/policies/{id}` | policy ([`NewPolicy`]) |
//! | `GET /v1/admin/audit?peripheral=&gateway=&action=&since=&until=&after=&limit=` | audit query |
//! | `GET /v1/admin/audit/verify` | recompute the hash chain |
//! | `GET /v1/admin/lockouts`, `DELETE /v1/admin/lockouts/{subject}` | lockouts |
//! | `GET /v1/admin/anchor` | the provisioning bundle ([`crate::anchor`]): the current anchors and serial |
//!
//! Key rotation (`vouch-backend keys …`) has no route here: it writes private
//! keys into the data directory of the host it runs on, so it is a CLI verb
//! on that host ([`crate::keyring`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::backend::route;
use vouch_proto::wire::Lifetimes;

use super::{Json, Query};
use crate::error::{AppError, ErrorCode};
use crate::import::{self, Format, RawRow};
use crate::model::{
    parse_gateway_selector, parse_peripheral_selector, parse_public_key, parse_scope, valid_name,
    GatewayRecord, PeripheralRecord, PolicyRule, Status, Transition,
};
use crate::store::{
    AuditEntry, AuditFilter, EnrollOutcome, GatewayFilter, NewGateway, PeripheralFilter,
};
use crate::AppState;

/// The actor recorded in the audit log for admin API calls.
pub const ACTOR: &str = "admin-api";

/// Proof that the request carries the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match token {
            Some(t) if crate::datadir::token_matches(&state.token_hash, t) => Ok(Admin),
            _ => Err(AppError::unauthorized()),
        }
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            route::admin::PERIPHERALS,
            get(list_peripherals).post(enroll_peripheral),
        )
        .route(route::admin::PERIPHERALS_IMPORT, post(import_peripherals))
        .route(route::admin::PERIPHERAL, get(show_peripheral))
        .route(route::admin::PERIPHERAL_ACTION, post(transition_peripheral))
        .route(
            route::admin::GATEWAYS,
            get(list_gateways).post(enroll_gateway),
        )
        .route(route::admin::GATEWAY, get(show_gateway))
        .route(route::admin::GATEWAY_ACTION, post(transition_gateway))
        .route(route::admin::POLICIES, get(list_policies).post(add_policy))
        .route(route::admin::POLICY, delete(remove_policy))
        .route(route::admin::AUDIT, get(audit))
        .route(route::admin::AUDIT_VERIFY, get(audit_verify))
        .route(route::admin::LOCKOUTS, get(list_lockouts))
        .route(route::admin::LOCKOUT, delete(clear_lockout))
        .route(route::admin::ANCHOR, get(anchor))
}

// ----- inputs, shared with the CLI ------------------------------------------

/// Enroll one peripheral.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollPeripheral {
    /// 16 hex digits; default derived from the key.
    #[serde(default)]
    pub id: Option<String>,
    /// 64 hex digits or SPKI PEM.
    pub public_key: String,
    /// Group.
    #[serde(default)]
    pub group: Option<String>,
    /// Attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// `active` (default) or `pending`.
    #[serde(default)]
    pub status: Option<String>,
}

impl EnrollPeripheral {
    /// Validates into a store enrollment.
    pub fn parse(&self) -> Result<crate::store::NewPeripheral, AppError> {
        import::parse_row(&RawRow {
            id: self.id.clone(),
            public_key: self.public_key.clone(),
            group: self.group.clone(),
            attributes: self.attributes.clone(),
            status: self.status.clone(),
        })
        .map_err(|e| AppError::bad_request(e.code, e.message))
    }
}

/// Enroll one gateway.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

fn opt_name(v: &Option<String>, what: ErrorCode) -> Result<Option<String>, AppError> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) if valid_name(s) => Ok(Some(s.to_owned())),
        Some(_) => Err(AppError::bad_request(
            what,
            "names are 1-128 printable characters",
        )),
    }
}

impl EnrollGateway {
    /// Validates into a store enrollment.
    pub fn parse(&self) -> Result<NewGateway, AppError> {
        Ok(NewGateway {
            public_key: parse_public_key(&self.public_key)
                .map_err(|e| AppError::bad_request(ErrorCode::InvalidPublicKey, e.to_string()))?,
            name: opt_name(&self.name, ErrorCode::InvalidName)?,
            group: opt_name(&self.group, ErrorCode::InvalidGroup)?,
            site: opt_name(&self.site, ErrorCode::InvalidSite)?,
        })
    }
}

/// A new policy rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub fn parse(&self) -> Result<ParsedPolicy, AppError> {
        let p = parse_peripheral_selector(self.peripheral.trim()).ok_or_else(|| {
            AppError::bad_request(
                ErrorCode::InvalidSelector,
                "peripheral must be peripheral:ID, group:NAME or any",
            )
        })?;
        let g = parse_gateway_selector(self.gateway.trim()).ok_or_else(|| {
            AppError::bad_request(
                ErrorCode::InvalidSelector,
                "gateway must be gateway:KEY, group:NAME, site:NAME or any",
            )
        })?;
        let scope = parse_scope(&self.scope).ok_or_else(|| {
            AppError::bad_request(
                ErrorCode::InvalidScope,
                "scope: telemetry, command, app8..app31 or numbers, comma-separated; bits 2-7 are reserved",
            )
        })?;
        if self.session_s == 0 {
            return Err(AppError::bad_request(
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
pub fn parse_transition(s: &str) -> Result<Transition, AppError> {
    Ok(match s {
        "activate" => Transition::Activate,
        "suspend" => Transition::Suspend,
        "reinstate" => Transition::Reinstate,
        "revoke" => Transition::Revoke,
        _ => {
            return Err(AppError::not_found(
                "action (activate, suspend, reinstate, revoke)",
            ));
        }
    })
}

fn parse_id(s: &str) -> Result<PeripheralId, AppError> {
    PeripheralId::from_hex(s).ok_or_else(|| {
        AppError::bad_request(ErrorCode::InvalidId, "a peripheral id is 16 hex digits")
    })
}

fn parse_gateway_key(s: &str) -> Result<PublicKey, AppError> {
    PublicKey::from_hex(s).ok_or_else(|| {
        AppError::bad_request(
            ErrorCode::InvalidPublicKey,
            "a gateway key is 64 hex digits (a valid Ed25519 key)",
        )
    })
}

fn parse_status(s: &Option<String>) -> Result<Option<Status>, AppError> {
    s.as_deref()
        .map(|v| {
            Status::parse(v).ok_or_else(|| {
                AppError::bad_request(
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

/// A page of results.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

// ----- peripherals ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    group: Option<String>,
    site: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

const DEFAULT_PAGE: u32 = 100;

async fn list_peripherals(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<PeripheralRecord>>, AppError> {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, crate::store::MAX_PAGE);
    let filter = PeripheralFilter {
        status: parse_status(&q.status)?,
        group: q.group,
        after: q.after.as_deref().map(parse_id).transpose()?,
        limit,
    };
    let items = state.store.list_peripherals(&filter).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|p| p.id.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// The answer to an enrollment.
#[derive(Debug, Serialize)]
struct Enrolled<T> {
    outcome: EnrollOutcome,
    #[serde(flatten)]
    record: T,
}

fn created_or_ok(outcome: EnrollOutcome) -> StatusCode {
    match outcome {
        EnrollOutcome::Created => StatusCode::CREATED,
        EnrollOutcome::Unchanged => StatusCode::OK,
    }
}

async fn enroll_peripheral(
    _: Admin,
    State(state): State<AppState>,
    Json(body): Json<EnrollPeripheral>,
) -> Result<Response, AppError> {
    let new = body.parse()?;
    let outcome = state.store.enroll_peripheral(&new, ACTOR).await?;
    let record = state.store.peripheral(&new.id).await?;
    Ok((created_or_ok(outcome), Json(Enrolled { outcome, record })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    format: Option<Format>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct ImportAnswer {
    summary: import::Summary,
    rows: Vec<import::RowReport>,
}

async fn import_peripherals(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Json<ImportAnswer>, AppError> {
    let format = q.format.ok_or_else(|| {
        AppError::bad_request(
            ErrorCode::InvalidQuery,
            "format=csv or format=ndjson is required",
        )
    })?;
    let rows = import::read_rows(body.as_ref(), format)
        .map_err(|_| AppError::bad_request(ErrorCode::BadBody, "the body is not readable text"))?;
    let mut reports = Vec::with_capacity(rows.len());
    let summary = import::run(&state.store, rows, q.dry_run, 500, ACTOR, |r| {
        reports.extend_from_slice(r)
    })
    .await?;
    Ok(Json(ImportAnswer {
        summary,
        rows: reports,
    }))
}

async fn show_peripheral(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PeripheralRecord>, AppError> {
    let id = parse_id(&id)?;
    match state.store.peripheral(&id).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("peripheral")),
        other => Ok(Json(other?)),
    }
}

async fn transition_peripheral(
    _: Admin,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<PeripheralRecord>, AppError> {
    let id = parse_id(&id)?;
    let t = parse_transition(&action)?;
    match state.store.transition_peripheral(&id, t, ACTOR).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("peripheral")),
        other => {
            let rec = other?;
            state.feed.advance(state.store.last_event_seq().await?);
            Ok(Json(rec))
        }
    }
}

// ----- gateways -------------------------------------------------------------

async fn list_gateways(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<GatewayRecord>>, AppError> {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, crate::store::MAX_PAGE);
    let filter = GatewayFilter {
        status: parse_status(&q.status)?,
        group: q.group,
        site: q.site,
        after: q.after.as_deref().map(parse_gateway_key).transpose()?,
        limit,
    };
    let items = state.store.list_gateways(&filter).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|g| g.public_key.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// The answer to a gateway enrollment: the record, its TLS client
/// certificate (PEM, for the gateway's own key) and the CA to pin.
#[derive(Debug, Serialize)]
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

/// Enrolls a gateway and issues its certificate (shared with the CLI).
pub async fn enroll_gateway_with_cert(
    store: &crate::store::Store,
    ca: &crate::pki::CaMaterial,
    body: &EnrollGateway,
    actor: &str,
) -> Result<GatewayEnrolled, AppError> {
    let new = body.parse()?;
    let outcome = store.enroll_gateway(&new, actor).await?;
    let gateway = store.gateway(&new.public_key).await?;
    let certificate_pem = crate::pki::issue_gateway_cert(ca, &new.public_key, new.name.as_deref())
        .map_err(|e| {
            tracing::error!(error = %e, "gateway certificate issuing failed");
            AppError::unavailable()
        })?;
    Ok(GatewayEnrolled {
        outcome,
        gateway,
        certificate_pem,
        ca_pem: ca.cert_pem.clone(),
    })
}

async fn enroll_gateway(
    _: Admin,
    State(state): State<AppState>,
    Json(body): Json<EnrollGateway>,
) -> Result<Response, AppError> {
    let answer = enroll_gateway_with_cert(&state.store, &state.ca, &body, ACTOR).await?;
    Ok((created_or_ok(answer.outcome), Json(answer)).into_response())
}

async fn show_gateway(
    _: Admin,
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<GatewayRecord>, AppError> {
    let key = parse_gateway_key(&key)?;
    match state.store.gateway(&key).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("gateway")),
        other => Ok(Json(other?)),
    }
}

async fn transition_gateway(
    _: Admin,
    State(state): State<AppState>,
    Path((key, action)): Path<(String, String)>,
) -> Result<Json<GatewayRecord>, AppError> {
    let key = parse_gateway_key(&key)?;
    let t = parse_transition(&action)?;
    match state.store.transition_gateway(&key, t, ACTOR).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("gateway")),
        other => {
            let rec = other?;
            state.feed.advance(state.store.last_event_seq().await?);
            Ok(Json(rec))
        }
    }
}

// ----- policy ---------------------------------------------------------------

async fn list_policies(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Vec<PolicyRule>>, AppError> {
    Ok(Json(state.store.list_policies().await?))
}

async fn add_policy(
    _: Admin,
    State(state): State<AppState>,
    Json(body): Json<NewPolicy>,
) -> Result<Response, AppError> {
    let (p, g, scope, lifetimes) = body.parse()?;
    let rule = state
        .store
        .add_policy(&p, &g, scope, lifetimes, ACTOR)
        .await?;
    state.feed.advance(state.store.last_event_seq().await?);
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn remove_policy(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_request(ErrorCode::InvalidId, "a policy id is a number"))?;
    match state.store.remove_policy(id, ACTOR).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("policy")),
        other => {
            other?;
            state.feed.advance(state.store.last_event_seq().await?);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

// ----- audit ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    peripheral: Option<String>,
    gateway: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// Builds an audit filter from query strings (shared with the CLI).
pub fn audit_filter(
    peripheral: Option<String>,
    gateway: Option<String>,
    action: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
    after: Option<i64>,
    limit: u32,
) -> Result<AuditFilter, AppError> {
    let time = |s: Option<&str>| {
        s.map(|v| {
            parse_time(v).ok_or_else(|| {
                AppError::bad_request(
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

async fn audit(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, AppError> {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, crate::store::MAX_PAGE);
    let filter = audit_filter(
        q.peripheral,
        q.gateway,
        q.action,
        q.since.as_deref(),
        q.until.as_deref(),
        q.after,
        limit,
    )?;
    let items = state.store.audit_query(&filter).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

async fn audit_verify(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<crate::store::AuditVerdict>, AppError> {
    Ok(Json(state.store.audit_verify(&state.checkpoint_key).await?))
}

// ----- lockouts, anchor -------------------------------------------------------

#[derive(Debug, Serialize)]
struct Lockout {
    subject: String,
    until_ms: i64,
}

async fn list_lockouts(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Vec<Lockout>>, AppError> {
    let now = crate::store::now_ms();
    Ok(Json(
        state
            .store
            .active_lockouts(now)
            .await?
            .into_iter()
            .map(|(subject, until_ms)| Lockout { subject, until_ms })
            .collect(),
    ))
}

async fn clear_lockout(
    _: Admin,
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> Result<StatusCode, AppError> {
    match state.store.clear_lockout(&subject, ACTOR).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("lockout")),
        other => {
            other?;
            state
                .lockouts
                .refresh(state.store.active_lockouts(crate::store::now_ms()).await?);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

async fn anchor(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<crate::anchor::AnchorBundle>, AppError> {
    match crate::keyring::fleet(&state.store).await {
        Ok(fleet) => Ok(Json(crate::anchor::bundle(&fleet))),
        Err(crate::keyring::KeyRingError::Store(e)) => Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot compute the anchors to provision");
            Err(AppError::unavailable())
        }
    }
}
