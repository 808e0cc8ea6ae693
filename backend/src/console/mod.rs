//! The web console, served by the backend under `/console/` (issue 18).
//!
//! ## Server-rendered pages, no JavaScript
//!
//! Every page is HTML rendered here with [`maud`] (its `html!` escapes every
//! value it interpolates, so nothing an operator or a device wrote reaches
//! the page as markup), styled by one stylesheet compiled into the binary.
//! There is no script at all: confirmations are pages of their own, forms
//! are plain forms. The build stays Rust-only, nothing is fetched at build
//! or run time, and the Content-Security-Policy can forbid every script.
//!
//! ## Sessions, CSRF, roles
//!
//! - Login takes an operator's API token ([`crate::access`]); the session
//!   lives in the store ([`crate::store::Store::open_console_session`]): the
//!   cookie holds a random id (only its hash is stored), `HttpOnly`,
//!   `Secure`, `SameSite=Strict`, `Path=/console`. A session ends at logout,
//!   after [`SESSION`], or as soon as its token is revoked or its operator
//!   removed (every request checks both).
//! - Every state-changing form carries the session's CSRF token, compared
//!   in constant time; a POST without it, or with another, is refused with
//!   403 before anything is read or written.
//! - Pages show only the actions the operator's role allows, and every
//!   action checks the role again on the server (403 below it).
//!
//! | page | role |
//! |---|---|
//! | `/console` overview: devices by status, gateways online, vouches and alerts | viewer |
//! | `/console/devices?id=&group=&status=&attribute=&after=` search, paged | viewer |
//! | `/console/devices/{id}`: record, last seen, gateway, recent audit, actions | viewer (actions: operator) |
//! | `/console/gateways`, `/console/gateways/{key}` | viewer |
//! | `/console/audit?action=&peripheral=&gateway=&after=`, `/console/audit/verify` | viewer |
//! | `/console/lockouts` (clear: operator), `/console/policies` (add: operator, remove: admin) | viewer |
//! | `/console/import`: CSV or NDJSON, dry run, the per-row report | operator |

mod pages;

use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::access::{Caller, Role, TokenHash};
use crate::error::AppError;
use crate::store::{now_ms, ConsoleSession};
use crate::AppState;

/// How long a console session lasts at most.
pub const SESSION: Duration = Duration::from_secs(8 * 3600);

/// The session cookie's name.
const COOKIE: &str = "vouch_console";

/// How long the overview's counts are reused: counting a million devices by
/// status reads the whole status index, so several operators on the
/// overview, or one reloading it, count once per interval.
const OVERVIEW_FRESH: Duration = Duration::from_secs(5);

/// The overview's counts: devices by status, and the rest.
pub(crate) type Counts = (
    std::collections::BTreeMap<String, i64>,
    crate::store::Overview,
);

/// The counts of the overview, at most [`OVERVIEW_FRESH`] old.
pub(crate) async fn overview_counts(
    state: &AppState,
    now: i64,
    online_after_ms: i64,
) -> Result<Counts, crate::store::StoreError> {
    let lock = || {
        state
            .overview
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some((at, counts)) = lock().as_ref() {
        if at.elapsed() < OVERVIEW_FRESH {
            return Ok(counts.clone());
        }
    }
    let counts = (
        state.store.count_peripherals().await?,
        state.store.overview(now, online_after_ms).await?,
    );
    *lock() = Some((std::time::Instant::now(), counts.clone()));
    Ok(counts)
}

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/devices", get(pages::devices))
        .route("/console/devices/{id}", get(pages::device))
        .route(
            "/console/devices/{id}/{action}",
            get(pages::confirm_device_action).post(device_action),
        )
        .route("/console/gateways", get(pages::gateways))
        .route("/console/gateways/{key}", get(pages::gateway))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/verify", get(pages::audit_verify))
        .route("/console/lockouts", get(pages::lockouts))
        .route("/console/lockouts/clear", post(clear_lockout))
        .route("/console/policies", get(pages::policies).post(add_policy))
        .route("/console/policies/remove", post(remove_policy))
        .route("/console/import", get(pages::import_page).post(import))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Headers on every console answer: no script, no framing, no caching, no
/// sniffing, no referrer.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

/// The logged-in operator of a request.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Who.
    pub caller: Caller,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl Operator {
    /// Whether the operator's role is at least `role`.
    pub fn can(&self, role: Role) -> bool {
        self.caller.role >= role
    }
}

/// Why a console request was not served.
#[derive(Debug)]
pub enum Refused {
    /// No live session: to the login page.
    Login,
    /// A page with a status and a message (403 role or CSRF, 404, 400, 503).
    Page(StatusCode, String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Login => Redirect::to("/console/login").into_response(),
            Refused::Page(status, message) => (
                status,
                Html(pages::message_page(status, &message).into_string()),
            )
                .into_response(),
        }
    }
}

impl From<AppError> for Refused {
    fn from(e: AppError) -> Self {
        Refused::Page(e.status, format!("{} ({})", e.message, e.code))
    }
}

impl From<crate::store::StoreError> for Refused {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::from(e).into()
    }
}

impl From<crate::registry::RegistryError> for Refused {
    fn from(e: crate::registry::RegistryError) -> Self {
        AppError::from(e).into()
    }
}

/// The session cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The operator logged in on this request, with at least `role`.
pub(crate) async fn operator(
    state: &AppState,
    headers: &HeaderMap,
    role: Role,
) -> Result<Operator, Refused> {
    let id = session_cookie(headers).ok_or(Refused::Login)?;
    let session: ConsoleSession = state
        .store
        .console_session(&TokenHash::of(id), now_ms())
        .await?
        .ok_or(Refused::Login)?;
    if session.caller.role < role {
        return Err(AppError::forbidden(session.caller.role, role).into());
    }
    Ok(Operator {
        caller: session.caller,
        csrf: session.csrf,
    })
}

/// The operator of a state-changing request: a live session with `role`,
/// and the form's CSRF token equal to the session's.
async fn acting(
    state: &AppState,
    headers: &HeaderMap,
    role: Role,
    csrf: &str,
) -> Result<Operator, Refused> {
    let op = operator(state, headers, role).await?;
    if !bool::from(op.csrf.as_bytes().ct_eq(csrf.as_bytes())) || csrf.is_empty() {
        return Err(Refused::Page(
            StatusCode::FORBIDDEN,
            "this form is stale or did not come from the console (CSRF check failed): reload the page and try again (csrf)".into(),
        ));
    }
    Ok(op)
}

fn random_hex() -> Result<String, Refused> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|_| Refused::Page(StatusCode::SERVICE_UNAVAILABLE, "no randomness".into()))?;
    Ok(hex::encode(b))
}

async fn login_page() -> Html<String> {
    Html(pages::login(None).into_string())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    Form(f): Form<LoginForm>,
) -> Result<Response, Refused> {
    let Some(caller) = state.store.authenticate(f.token.trim()).await? else {
        return Ok((
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("That is not a live operator token.")).into_string()),
        )
            .into_response());
    };
    let id = random_hex()?;
    let csrf = random_hex()?;
    let expires = now_ms() + SESSION.as_millis() as i64;
    state
        .store
        .open_console_session(&TokenHash::of(&id), &caller, &csrf, expires)
        .await?;
    tracing::info!(operator = %caller.name, "console login");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/console; Max-Age={}",
        SESSION.as_secs()
    );
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/console".to_owned()),
        ],
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Refused> {
    acting(&state, &headers, Role::Viewer, &f.csrf).await?;
    if let Some(id) = session_cookie(&headers) {
        state
            .store
            .close_console_session(&TokenHash::of(id))
            .await?;
    }
    let clear = format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/console; Max-Age=0");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, clear),
            (header::LOCATION, "/console/login".to_owned()),
        ],
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirmed: String,
}

/// Suspend, reinstate or revoke a device, after its confirmation page.
async fn device_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, Refused> {
    let op = acting(&state, &headers, Role::Operator, &f.csrf).await?;
    let id = crate::registry::parse_id(&id)?;
    let t = pages::device_transition(&action)?;
    if f.confirmed != "yes" {
        return Ok(Redirect::to(&format!("/console/devices/{id}/{action}")).into_response());
    }
    state
        .store
        .transition_peripheral(&id, t, &op.caller.actor())
        .await?;
    state.feed.advance(state.store.last_event_seq().await?);
    Ok(Redirect::to(&format!("/console/devices/{id}?done={action}")).into_response())
}

#[derive(Debug, Deserialize)]
struct LockoutForm {
    #[serde(default)]
    csrf: String,
    subject: String,
}

async fn clear_lockout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LockoutForm>,
) -> Result<Response, Refused> {
    let op = acting(&state, &headers, Role::Operator, &f.csrf).await?;
    state
        .store
        .clear_lockout(&f.subject, &op.caller.actor())
        .await?;
    state
        .lockouts
        .refresh(state.store.active_lockouts(now_ms()).await?);
    Ok(Redirect::to("/console/lockouts").into_response())
}

#[derive(Debug, Deserialize)]
struct PolicyForm {
    #[serde(default)]
    csrf: String,
    peripheral: String,
    gateway: String,
    scope: String,
    session_s: u32,
    resumption_s: u32,
}

async fn add_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<PolicyForm>,
) -> Result<Response, Refused> {
    let op = acting(&state, &headers, Role::Operator, &f.csrf).await?;
    let rule = crate::registry::NewPolicy {
        peripheral: f.peripheral,
        gateway: f.gateway,
        scope: f.scope,
        session_s: f.session_s,
        resumption_s: f.resumption_s,
    };
    crate::registry::add_policy(&state.store, &rule, &op.caller.actor()).await?;
    Ok(Redirect::to("/console/policies").into_response())
}

#[derive(Debug, Deserialize)]
struct RemovePolicyForm {
    #[serde(default)]
    csrf: String,
    id: i64,
}

async fn remove_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<RemovePolicyForm>,
) -> Result<Response, Refused> {
    let op = acting(&state, &headers, Role::Admin, &f.csrf).await?;
    state.store.remove_policy(f.id, &op.caller.actor()).await?;
    state.feed.advance(state.store.last_event_seq().await?);
    Ok(Redirect::to("/console/policies").into_response())
}

#[derive(Debug, Deserialize)]
struct ImportForm {
    #[serde(default)]
    csrf: String,
    format: String,
    #[serde(default)]
    dry_run: Option<String>,
    rows: String,
}

async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ImportForm>,
) -> Result<Response, Refused> {
    let op = acting(&state, &headers, Role::Operator, &f.csrf).await?;
    let format = match f.format.as_str() {
        "csv" => crate::import::Format::Csv,
        "ndjson" => crate::import::Format::Ndjson,
        _ => {
            return Err(Refused::Page(
                StatusCode::BAD_REQUEST,
                "format: csv or ndjson (invalid_query)".into(),
            ))
        }
    };
    let dry_run = f.dry_run.is_some();
    let rows = crate::import::read_rows(f.rows.as_bytes(), format).map_err(|_| {
        Refused::Page(
            StatusCode::BAD_REQUEST,
            "the rows are not readable text (bad_body)".into(),
        )
    })?;
    let mut reports = Vec::with_capacity(rows.len());
    let summary = crate::import::run(&state.store, rows, dry_run, 500, &op.caller.actor(), |r| {
        reports.extend_from_slice(r)
    })
    .await?;
    Ok(Html(pages::import_result(&op, &summary, &reports).into_string()).into_response())
}

/// Query strings of the list pages: every field optional, unknown ones
/// ignored (a bookmarked page of an older console still opens).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    pub(crate) id: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) attribute: Option<String>,
    pub(crate) site: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) peripheral: Option<String>,
    pub(crate) gateway: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) done: Option<String>,
}

/// `Query<ListParams>` that answers a page, not JSON, for a bad query.
pub(crate) type Params = Query<ListParams>;
