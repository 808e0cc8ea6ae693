//! The admin API: JSON under `/v1/admin/`, bearer token
//! (`Authorization: Bearer <token printed by init>`).
//!
//! | method, path | does |
//! |---|---|
//! | `GET /v1/admin/peripherals?status=&group=&attribute=NAME=VALUE&after=&limit=` | list (cursor: `next_cursor`) |
//! | `POST /v1/admin/peripherals` | enroll one ([`EnrollPeripheral`]) |
//! | `POST /v1/admin/peripherals/import?format=csv\|ndjson&dry_run=` | bulk enroll (body: the file) |
//! | `GET /v1/admin/peripherals/{id}` | show, with where it was last seen ([`registry::PeripheralView`]) |
//! | `POST /v1/admin/peripherals/{id}/{activate\|suspend\|reinstate\|revoke}` | lifecycle |
//! | `GET /v1/admin/gateways?status=&group=&site=&after=&limit=` | list |
//! | `POST /v1/admin/gateways` | enroll ([`EnrollGateway`]); returns the client certificate |
//! | `GET /v1/admin/gateways/{key}` | show, with its online state and live sessions ([`registry::GatewayView`]) |
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

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use vouch_proto::wire::backend::route;

use super::{Json, Query};
use crate::access::{Caller, Role};
use crate::error::{AppError, ErrorCode};
use crate::import::{self, Format};
use crate::model::{GatewayRecord, PeripheralRecord, PolicyRule};
use crate::registry::{
    self, audit_filter, parse_gateway_key, parse_id, parse_status, parse_transition, EnrollGateway,
    EnrollPeripheral, NewPolicy,
};
use crate::store::{AuditEntry, EnrollOutcome, GatewayFilter, PeripheralFilter};
use crate::AppState;

/// What a route needs of its caller: the weakest [`Role`] allowed.
pub trait Needs {
    /// The role.
    const ROLE: Role;
}

/// Reading anything: [`Role::Viewer`] and above.
#[derive(Debug)]
pub struct Read;
impl Needs for Read {
    const ROLE: Role = Role::Viewer;
}

/// Changing the registry: [`Role::Operator`] and above.
#[derive(Debug)]
pub struct Write;
impl Needs for Write {
    const ROLE: Role = Role::Operator;
}

/// Managing operators, tokens and policy removal: [`Role::Admin`].
#[derive(Debug)]
pub struct Manage;
impl Needs for Manage {
    const ROLE: Role = Role::Admin;
}

/// Proof that the request carries a live operator token whose role allows
/// `N`: 401 `unauthorized` without one, 403 `forbidden` below the role.
/// Every admin handler takes one, so the role a route needs is in its
/// signature.
#[derive(Debug)]
pub struct Authorized<N: Needs> {
    /// Who is asking.
    pub caller: Caller,
    need: std::marker::PhantomData<N>,
}

impl<N: Needs> Authorized<N> {
    /// The actor the caller's writes record in the audit log.
    pub fn actor(&self) -> String {
        self.caller.actor()
    }
}

/// A viewer or above.
pub type CanRead = Authorized<Read>;
/// An operator or above.
pub type CanWrite = Authorized<Write>;
/// An admin.
pub type CanManage = Authorized<Manage>;

/// The bearer token of a request, if it has one.
pub(super) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl<N: Needs + Send + Sync> FromRequestParts<AppState> for Authorized<N> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(parts).ok_or_else(AppError::unauthorized)?;
        let caller = state
            .store
            .authenticate(token)
            .await?
            .ok_or_else(AppError::unauthorized)?;
        if caller.role < N::ROLE {
            return Err(AppError::forbidden(caller.role, N::ROLE));
        }
        Ok(Self {
            caller,
            need: std::marker::PhantomData,
        })
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

/// Logs every admin action that changed something (a request other than
/// `GET` that succeeded) at INFO: who acted is in the audit log, what was
/// done is here too, for the operator reading the service's log.
pub(super) async fn log_actions(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    if method != axum::http::Method::GET
        && method != axum::http::Method::HEAD
        && res.status().is_success()
    {
        tracing::info!(%method, %path, status = res.status().as_u16(), "admin action");
    }
    res
}

/// A page of results.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

// ----- peripherals ---------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    group: Option<String>,
    /// `NAME=VALUE` (peripherals).
    attribute: Option<String>,
    site: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

const DEFAULT_PAGE: u32 = 100;

async fn list_peripherals(
    _: CanRead,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<PeripheralRecord>>, AppError> {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, crate::store::MAX_PAGE);
    let filter = PeripheralFilter {
        attribute: q
            .attribute
            .as_deref()
            .map(registry::parse_attribute_filter)
            .transpose()?,
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
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct Enrolled<T> {
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
    who: CanWrite,
    State(state): State<AppState>,
    Json(body): Json<EnrollPeripheral>,
) -> Result<Response, AppError> {
    let (id, outcome) = registry::enroll_peripheral(&state.store, &body, &who.actor()).await?;
    let record = state.store.peripheral(&id).await?;
    Ok((created_or_ok(outcome), Json(Enrolled { outcome, record })).into_response())
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    format: Option<Format>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct ImportAnswer {
    summary: import::Summary,
    rows: Vec<import::RowReport>,
}

async fn import_peripherals(
    who: CanWrite,
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
    let summary = import::run(&state.store, rows, q.dry_run, 500, &who.actor(), |r| {
        reports.extend_from_slice(r)
    })
    .await?;
    Ok(Json(ImportAnswer {
        summary,
        rows: reports,
    }))
}

async fn show_peripheral(
    _: CanRead,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<registry::PeripheralView>, AppError> {
    let id = parse_id(&id)?;
    Ok(Json(registry::peripheral_view(&state.store, &id).await?))
}

async fn transition_peripheral(
    who: CanWrite,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<PeripheralRecord>, AppError> {
    let id = parse_id(&id)?;
    let t = parse_transition(&action)?;
    match state
        .store
        .transition_peripheral(&id, t, &who.actor())
        .await
    {
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
    _: CanRead,
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

async fn enroll_gateway(
    who: CanWrite,
    State(state): State<AppState>,
    Json(body): Json<EnrollGateway>,
) -> Result<Response, AppError> {
    let answer = registry::enroll_gateway(
        &state.store,
        &state.ca,
        state.config.certificates.gateway_lifetime(),
        &body,
        &who.actor(),
    )
    .await?;
    state
        .metrics
        .gateway_certificates_issued
        .with_label_values(&["enrollment"])
        .inc();
    Ok((created_or_ok(answer.outcome), Json(answer)).into_response())
}

async fn show_gateway(
    _: CanRead,
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<registry::GatewayView>, AppError> {
    let key = parse_gateway_key(&key)?;
    let within = registry::online_within(state.config.limits.feed_wait_max_ms);
    Ok(Json(
        registry::gateway_view(&state.store, &key, within).await?,
    ))
}

async fn transition_gateway(
    who: CanWrite,
    State(state): State<AppState>,
    Path((key, action)): Path<(String, String)>,
) -> Result<Json<GatewayRecord>, AppError> {
    let key = parse_gateway_key(&key)?;
    let t = parse_transition(&action)?;
    match state.store.transition_gateway(&key, t, &who.actor()).await {
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
    _: CanRead,
    State(state): State<AppState>,
) -> Result<Json<Vec<PolicyRule>>, AppError> {
    Ok(Json(state.store.list_policies().await?))
}

async fn add_policy(
    who: CanWrite,
    State(state): State<AppState>,
    Json(body): Json<NewPolicy>,
) -> Result<Response, AppError> {
    let rule = registry::add_policy(&state.store, &body, &who.actor()).await?;
    state.feed.advance(state.store.last_event_seq().await?);
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn remove_policy(
    who: CanManage,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_request(ErrorCode::InvalidId, "a policy id is a number"))?;
    match state.store.remove_policy(id, &who.actor()).await {
        Err(crate::store::StoreError::NotFound) => Err(AppError::not_found("policy")),
        other => {
            other?;
            state.feed.advance(state.store.last_event_seq().await?);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

// ----- audit ----------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    peripheral: Option<String>,
    gateway: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn audit(
    _: CanRead,
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
    _: CanRead,
    State(state): State<AppState>,
) -> Result<Json<crate::store::AuditVerdict>, AppError> {
    Ok(Json(state.store.audit_verify(&state.checkpoint_key).await?))
}

// ----- lockouts, anchor -------------------------------------------------------

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct Lockout {
    subject: String,
    until_ms: i64,
}

async fn list_lockouts(
    _: CanRead,
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
    who: CanWrite,
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> Result<StatusCode, AppError> {
    match state.store.clear_lockout(&subject, &who.actor()).await {
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
    _: CanRead,
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
