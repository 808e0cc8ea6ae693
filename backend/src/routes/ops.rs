//! Operations: `/healthz` (the process answers), `/readyz` (the store
//! answers and the service is not shutting down), `/metrics` (Prometheus text
//! format), `/v1/openapi.json`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::error::AppError;
use crate::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, AppError> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is shutting down",
        ));
    }
    if state.store.ping().await.is_err() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database does not answer",
        ));
    }
    Ok(axum::Json(json!({ "status": "ready" })))
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
