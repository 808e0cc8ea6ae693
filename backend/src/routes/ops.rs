//! Operations: `/healthz` (the process answers), `/readyz` (the store
//! answers and the service is not shutting down), `/metrics` (Prometheus text
//! format), `/v1/openapi.json`.
//!
//! The metrics count refusals by cause (`vouch_refusals_total{reason}`), which
//! the answers on the air never reveal (SPEC.md §9): anyone who can send
//! sealed hellos through a gateway and read them could tell a registered id
//! from an unknown one. So on the public listener `/metrics` needs the admin
//! bearer token; the operations listener (`ops_listen`, loopback only,
//! [`ops_router`]) serves it without one, for a local Prometheus agent.
//! `/healthz`, `/readyz` and `/v1/openapi.json` say nothing about the registry.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use vouch_proto::wire::backend::route;

use super::admin::CanRead;
use crate::error::{AppError, ErrorCode};
use crate::AppState;

/// The operations routes of the public listener.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(route::HEALTHZ, get(healthz))
        .route(route::READYZ, get(readyz))
        .route(route::METRICS, get(admin_metrics))
        .route(route::OPENAPI, get(openapi))
}

/// The operations listener's routes: `/healthz`, `/readyz` and `/metrics`,
/// without credentials. Serve it only where the callers are trusted (the
/// binary refuses a non-loopback `ops_listen`).
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route(route::HEALTHZ, get(healthz))
        .route(route::READYZ, get(readyz))
        .route(route::METRICS, get(metrics))
        .fallback(|| async { AppError::not_found("route") })
        .with_state(state)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, AppError> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the service is shutting down",
        ));
    }
    if state.store.ping().await.is_err() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the database does not answer",
        ));
    }
    Ok(axum::Json(json!({ "status": "ready" })))
}

async fn admin_metrics(_: CanRead, state: State<AppState>) -> Response {
    metrics(state).await
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}
