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
//! | `/console/gateways`, `/console/gateways/{key}` (actions: operator) | viewer |
//! | `/console/keys`: the key ring, the anchor new devices get, the instances | viewer |
//! | `/console/audit?action=&peripheral=&gateway=&after=`, `/console/audit/verify` | viewer |
//! | `/console/lockouts` (clear: operator), `/console/policies` (add: operator, remove: admin) | viewer |
//! | `/console/import`: CSV or NDJSON, dry run, the per-row report | operator |

mod pages;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::access::{Caller, Role, TokenHash};
use crate::error::AppError;
use crate::routes::admin::{Manage, Needs, Read, Write};
use crate::store::{now_ms, ConsoleSession};
use crate::AppState;

/// How long a console session lasts at most.
pub const SESSION: Duration = Duration::from_secs(8 * 3600);

/// The session cookie's name.
const COOKIE: &str = "__Host-vouch_console";

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
        .route(
            "/console/gateways/{key}/{action}",
            get(pages::confirm_gateway_action).post(gateway_action),
        )
        .route("/console/keys", get(pages::keys))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/verify", get(pages::audit_verify))
        .route("/console/lockouts", get(pages::lockouts))
        .route("/console/lockouts/clear", post(clear_lockout))
        .route("/console/policies", get(pages::policies).post(add_policy))
        .route("/console/policies/remove", post(remove_policy))
        .route(
            "/console/import",
            get(pages::import_page)
                .post(import)
                .layer(DefaultBodyLimit::max(crate::routes::MAX_ADMIN_BODY)),
        )
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::from_fn(security_headers))
}

/// The largest console form but an import (which may carry 64 MiB, and is
/// read only after its session was found).
const FORM_LIMIT: usize = 16 * 1024;

/// A POST a browser says came from another site (`Sec-Fetch-Site`), or
/// whose `Origin` is not this host, is refused before anything is read:
/// the login form included, which has no session to carry a CSRF token
/// (login CSRF). Behind the CSRF token of every other form, a second layer.
async fn same_origin_posts(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST {
        let h = req.headers();
        let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let cross_site = site.is_some_and(|s| s != "same-origin" && s != "none");
        // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in Host.
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        // `Origin: null` is what a browser sends when it will not say (a
        // sandboxed frame, some referrer policies): trusted only with the
        // browser's own word that the post is same-origin.
        let foreign_origin = h
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| {
                if o == "null" {
                    return site != Some("same-origin");
                }
                let authority = o.split_once("://").map_or(o, |(_, a)| a);
                host.is_none_or(|host| authority != host)
            });
        if cross_site || foreign_origin {
            tracing::warn!(
                sec_fetch_site = site.unwrap_or("-"),
                origin = h
                    .get(header::ORIGIN)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                host = host.unwrap_or("-"),
                "console: a form posted from another site refused"
            );
            return Refused::Page(
                StatusCode::FORBIDDEN,
                "a form posted from another site is refused (csrf)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Headers on every console answer: no script, no framing, no caching, no
/// sniffing, no referrer to other sites.
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

/// The session cookie's value, if the request has exactly one (two of the
/// name, one of them planted by a sibling site, are no session at all).
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v);
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    Some(value).filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
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

/// The logged-in operator of a state-changing request, with at least the
/// role `N` needs, found from the request's headers alone: a request
/// without a live session or below the role is refused before its body is
/// read. The form's CSRF token is checked after, by `Session::csrf`.
#[derive(Debug)]
pub struct Session<N: Needs> {
    op: Operator,
    need: std::marker::PhantomData<N>,
}

impl<N: Needs + Send + Sync> axum::extract::FromRequestParts<AppState> for Session<N> {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Refused> {
        Ok(Self {
            op: operator(state, &parts.headers, N::ROLE).await?,
            need: std::marker::PhantomData,
        })
    }
}

impl<N: Needs> Session<N> {
    /// The operator, once the form's CSRF token is the session's (compared
    /// in constant time; an empty one never matches).
    fn csrf(self, token: &str) -> Result<Operator, Refused> {
        if token.is_empty() || !bool::from(self.op.csrf.as_bytes().ct_eq(token.as_bytes())) {
            return Err(Refused::Page(
                StatusCode::FORBIDDEN,
                "this form is stale or did not come from the console (CSRF check failed): reload the page and try again (csrf)".into(),
            ));
        }
        Ok(self.op)
    }
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
        "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
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
    who: Session<Read>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Refused> {
    who.csrf(&f.csrf)?;
    if let Some(id) = session_cookie(&headers) {
        state
            .store
            .close_console_session(&TokenHash::of(id))
            .await?;
    }
    let clear = format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0");
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
    who: Session<Write>,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, Refused> {
    let op = who.csrf(&f.csrf)?;
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

/// Suspend, reinstate or revoke a gateway, after its confirmation page.
async fn gateway_action(
    State(state): State<AppState>,
    who: Session<Write>,
    Path((key, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, Refused> {
    let op = who.csrf(&f.csrf)?;
    let key = crate::registry::parse_gateway_key(&key)?;
    let t = pages::device_transition(&action)?;
    if f.confirmed != "yes" {
        return Ok(Redirect::to(&format!("/console/gateways/{key}/{action}")).into_response());
    }
    state
        .store
        .transition_gateway(&key, t, &op.caller.actor())
        .await?;
    state.feed.advance(state.store.last_event_seq().await?);
    Ok(Redirect::to(&format!("/console/gateways/{key}?done={action}")).into_response())
}

#[derive(Debug, Deserialize)]
struct LockoutForm {
    #[serde(default)]
    csrf: String,
    subject: String,
}

async fn clear_lockout(
    State(state): State<AppState>,
    who: Session<Write>,
    Form(f): Form<LockoutForm>,
) -> Result<Response, Refused> {
    let op = who.csrf(&f.csrf)?;
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
    who: Session<Write>,
    Form(f): Form<PolicyForm>,
) -> Result<Response, Refused> {
    let op = who.csrf(&f.csrf)?;
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
    who: Session<Manage>,
    Form(f): Form<RemovePolicyForm>,
) -> Result<Response, Refused> {
    let op = who.csrf(&f.csrf)?;
    state.store.remove_policy(f.id, &op.caller.actor()).await?;
    state.feed.advance(state.store.last_event_seq().await?);
    Ok(Redirect::to("/console/policies").into_response())
}

/// An import form's fields (multipart: a file, or rows pasted).
#[derive(Debug, Default)]
struct ImportForm {
    csrf: String,
    format: String,
    dry_run: bool,
    rows: Vec<u8>,
}

async fn read_import_form(mut m: axum::extract::Multipart) -> Result<ImportForm, Refused> {
    let bad = |what: &str| Refused::Page(StatusCode::BAD_REQUEST, format!("{what} (bad_body)"));
    let mut f = ImportForm::default();
    while let Some(field) = m
        .next_field()
        .await
        .map_err(|_| bad("the form did not arrive whole"))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|_| bad("the form did not arrive whole"))?;
        match name.as_str() {
            "csrf" => f.csrf = String::from_utf8_lossy(&bytes).into_owned(),
            "format" => f.format = String::from_utf8_lossy(&bytes).into_owned(),
            "dry_run" => f.dry_run = true,
            // The file wins over the text area when both are given.
            "file" if !bytes.is_empty() => f.rows = bytes.to_vec(),
            "rows" if f.rows.is_empty() => f.rows = bytes.to_vec(),
            _ => {}
        }
    }
    Ok(f)
}

async fn import(
    State(state): State<AppState>,
    who: Session<Write>,
    m: axum::extract::Multipart,
) -> Result<Response, Refused> {
    let f = read_import_form(m).await?;
    let op = who.csrf(&f.csrf)?;
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
    let rows = crate::import::read_rows(f.rows.as_slice(), format).map_err(|_| {
        Refused::Page(
            StatusCode::BAD_REQUEST,
            "the rows are not readable text (bad_body)".into(),
        )
    })?;
    let mut reports = Vec::with_capacity(rows.len());
    let summary = crate::import::run(
        &state.store,
        rows,
        f.dry_run,
        500,
        &op.caller.actor(),
        |r| reports.extend_from_slice(r),
    )
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
