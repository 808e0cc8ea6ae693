//! The HTTP API.
//!
//! | method, path | auth | body |
//! |---|---|---|
//! | `POST /v1/vouch` | gateway (mTLS) | postcard `VouchRequest` → `VouchAnswer` |
//! | `POST /v1/vouch/batch` | gateway | postcard `VouchBatchRequest` → `VouchBatchAnswer` |
//! | `GET /v1/feed?after=SEQ&wait_ms=MS` | gateway | → postcard `FeedBatch` |
//! | `POST /v1/sessions` | gateway | postcard `SessionReport` → `SessionReportAnswer` |
//! | `GET /v1/anchor-updates?after=SERIAL` | gateway | → postcard `AnchorUpdateBatch` |
//! | `/v1/admin/…` | bearer token of an operator whose role allows it | JSON; see [`admin`], [`operators`] |
//! | `GET /metrics` | bearer token | Prometheus text |
//! | `GET /healthz`, `/readyz`, `/v1/openapi.json` | none | |
//!
//! The operations listener (`ops_listen`, [`ops::ops_router`]) serves
//! `/healthz`, `/readyz` and `/metrics` without credentials, on loopback only.
//!
//! Refusals at the HTTP level (400, 401, 403, 413, 415, 429: no client
//! certificate, an inactive gateway, a body that does not decode or is too
//! large, a gateway over its budget, a wrong admin token) are audited in
//! aggregate ([`audit_refusals`], [`crate::audit`]): the first of a kind in
//! an interval as its own entry `http_refused`, the rest in a summary.
//!
//! Errors are `{"error": {"code", "message"}}` ([`AppError`]). Gateway and
//! admin routes sit behind load shedding (503 + `Retry-After` when
//! `limits.max_concurrent_requests` gateway requests, or [`ADMIN_CONCURRENCY`]
//! admin requests, or [`CONSOLE_CONCURRENCY`] console requests, are in
//! flight: three budgets, so that no one starves the others), a deadline
//! (`limits.request_timeout_ms`, 503) and body limits (64 KiB for postcard,
//! 64 MiB for imports; 413 beyond).

pub mod admin;
pub mod gateway;
pub mod operators;
pub mod ops;

use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::ServiceBuilder;
use vouch_proto::wire::backend::{decode_body, encode_body, CONTENT_TYPE, MAX_BODY};

use crate::error::{AppError, ErrorCode};
use crate::AppState;

/// Admin API requests in flight at once, beyond which they are shed (503):
/// a budget apart from the gateways' (`limits.max_concurrent_requests`).
pub const ADMIN_CONCURRENCY: usize = 64;

/// Console requests in flight at once, beyond which they are shed (503):
/// a budget apart from the gateways' and the admin API's.
pub const CONSOLE_CONCURRENCY: usize = 32;

/// Largest admin request body (bulk imports).
pub const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    let timeout = Duration::from_millis(limits.request_timeout_ms.max(1));
    let overload = |metrics: crate::metrics::Metrics| {
        HandleErrorLayer::new(move |err: BoxError| {
            let metrics = metrics.clone();
            async move {
                if err.is::<tower::timeout::error::Elapsed>() {
                    metrics.overload.with_label_values(&["timeout"]).inc();
                    AppError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Timeout,
                        "the request took too long; retry later",
                    )
                } else {
                    metrics.overload.with_label_values(&["shed"]).inc();
                    AppError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Overloaded,
                        "too many requests in flight; retry later",
                    )
                }
            }
        })
    };
    // One concurrency budget shared by every gateway and admin route: beyond
    // it, requests are shed at once with 503 instead of queueing without
    // bound. (A plain ConcurrencyLimitLayer would give each route its own.)
    let limit =
        tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(state.request_slots.clone());
    let guarded = ServiceBuilder::new()
        .layer(overload(state.metrics.clone()))
        .load_shed()
        .layer(limit)
        .timeout(timeout);

    // The per-gateway budget is the outermost layer: a gateway over it is
    // answered before it takes a global slot or sends its body.
    let gateway_api = gateway::router()
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(guarded.clone())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            gateway::request_budget,
        ));
    // The admin API has a budget of its own too: an operator's revoke must
    // get through while a reconnect storm's vouches and session reports
    // fill the gateways' (the simulator's million-device run had it shed).
    let admin_guard = ServiceBuilder::new()
        .layer(overload(state.metrics.clone()))
        .load_shed()
        .concurrency_limit(ADMIN_CONCURRENCY)
        .timeout(timeout);
    let admin_api = admin::router()
        .merge(operators::router())
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .layer(admin_guard)
        .layer(axum::middleware::from_fn(admin::log_actions));
    // The console has a budget of its own: its login form is read before
    // anyone is known, so slow or large posts there must never take the
    // slots the gateways' vouches need.
    let console_guard = ServiceBuilder::new()
        .layer(overload(state.metrics.clone()))
        .load_shed()
        .concurrency_limit(CONSOLE_CONCURRENCY)
        .timeout(timeout);
    let console = crate::console::router().layer(console_guard);
    // The feed long-poll is bounded by its own semaphore and wait limit, not
    // by the request deadline.
    Router::new()
        .merge(gateway_api)
        .merge(admin_api)
        .merge(console)
        .merge(
            gateway::feed_router().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                gateway::feed_budget,
            )),
        )
        .merge(ops::router())
        .fallback(|| async { AppError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            AppError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this method is not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_refusals,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a handler panicked");
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error",
                )
                .into_response()
            },
        ))
        .with_state(state)
}

/// Audits the refusals answered at the HTTP level, in aggregate: the entry
/// `http_refused` with the status as outcome, the error code as reason, the
/// gateway if the request carries a gateway identity, and the method and
/// route template (never the raw path, which the caller chooses) as detail.
/// The first of a kind in an interval is written before the answer leaves;
/// the rest are counted ([`crate::audit`]).
pub async fn audit_refusals(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let gateway = gateway::gateway_identity(req.extensions(), req.headers());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("-", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let res = next.run(req).await;
    let status = res.status();
    if !matches!(status.as_u16(), 400 | 401 | 403 | 413 | 415 | 429) {
        return res;
    }
    let code = res
        .extensions()
        .get::<ErrorCode>()
        .map_or("http_error", |c| c.as_str());
    let actor = gateway.map_or_else(|| "anonymous".to_owned(), |g| format!("gateway:{g}"));
    let mut entry = crate::store::NewAudit::new("http_refused", status.as_str(), &actor)
        .reason(code)
        .detail(&format!("{method} {route}"));
    if let Some(g) = gateway {
        entry = entry.gateway(&g.to_string());
    }
    if state.refusals.admit(&entry, crate::store::now_ms()) == crate::audit::Admit::Write {
        let item = crate::vouch::JobItem {
            ephemeral: None,
            audit: entry,
            grant: None,
        };
        if let Err(e) = state.committer.commit(vec![item], None).await {
            tracing::warn!(error = %e, "could not audit a refusal");
        }
    }
    res
}

/// A postcard body (`application/vnd.vouch.v1+postcard`, `version ‖ postcard`).
#[derive(Debug, Clone)]
pub struct Postcard<T>(pub T);

fn body_error(e: BytesRejection) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            "the request body exceeds the limit",
        )
    } else {
        AppError::bad_request(ErrorCode::BadBody, "the request body could not be read")
    }
}

fn content_type_is(parts_ct: Option<&HeaderValue>, want: &str) -> bool {
    parts_ct
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

impl<S: Send + Sync, T: DeserializeOwned + Serialize> FromRequest<S> for Postcard<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let PostcardBytes(bytes) = PostcardBytes::from_request(req, state).await?;
        decode_body::<T>(&bytes).map(Postcard).map_err(decode_error)
    }
}

/// A postcard body's bytes, its content type checked, not yet decoded: for
/// a body that decodes in more than one form (`SessionReport::decode`).
#[derive(Debug, Clone)]
pub struct PostcardBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for PostcardBytes {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        if !content_type_is(req.headers().get(header::CONTENT_TYPE), CONTENT_TYPE) {
            return Err(AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                format!("the body must be {CONTENT_TYPE}"),
            ));
        }
        Bytes::from_request(req, state)
            .await
            .map(PostcardBytes)
            .map_err(body_error)
    }
}

/// The answer to a postcard body that does not decode: 413 if it is over
/// the limit, else 400 `malformed_body`.
pub fn decode_error(e: vouch_proto::DecodeError) -> AppError {
    match e {
        vouch_proto::DecodeError::TooLarge { .. } => AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            "the request body exceeds the limit",
        ),
        e => AppError::bad_request(
            ErrorCode::MalformedBody,
            format!("the body does not decode: {e}"),
        ),
    }
}

impl<T: Serialize> IntoResponse for Postcard<T> {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            encode_body(&self.0),
        )
            .into_response()
    }
}

/// A JSON body whose rejections are [`AppError`]s with stable codes.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(body_error(e)),
            Err(JsonRejection::JsonDataError(e)) => Err(AppError::bad_request(
                ErrorCode::InvalidJson,
                format!(
                    "the JSON does not match the expected shape: {}",
                    e.body_text()
                ),
            )),
            Err(_) => Err(AppError::bad_request(
                ErrorCode::InvalidJson,
                "the body is not valid JSON",
            )),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters whose rejections are [`AppError`]s.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(AppError::bad_request(
                ErrorCode::InvalidQuery,
                format!("invalid query parameters: {}", e.body_text()),
            )),
            Err(_) => Err(AppError::bad_request(
                ErrorCode::InvalidQuery,
                "invalid query parameters",
            )),
        }
    }
}
