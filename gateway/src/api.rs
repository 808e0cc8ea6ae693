//! The local API for applications on the gateway.
//!
//! Served on a Unix socket (mode 0660) rather than a localhost TCP port: a
//! TCP port on loopback is open to every local user and process, while a socket
//! file is governed by file permissions, so sending commands to devices is
//! limited to the `vouch` group. `curl --unix-socket` and every HTTP client
//! library speak it.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/sessions` | JSON list of live sessions |
//! | `GET /v1/messages` | a stream of authenticated application messages, one JSON object per line: `{"peripheral","at_ms","data_b64"}` |
//! | `POST /v1/peripherals/{id}/send` | body: raw bytes to send; 204, or 404 no session, 403 outside the granted scope, 503 busy |
//! | `GET /v1/status` | sessions, tickets, trust-anchor updates held, the client certificate's validity and renewals, counters (what `vouch-gateway status` prints) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | `ok` |

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use vouch_proto::keys::PeripheralId;

use crate::certificate::CertificateWatch;
use crate::clock::{Clock, SystemClock};
use crate::metrics::Metrics;
use crate::sessions::{SendError, SessionTable};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Sessions and tickets.
    pub table: Arc<SessionTable>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// This gateway's public key (hex), for `status`.
    pub gateway_key: String,
    /// Becomes `true` when the daemon shuts down: ends the `/v1/messages` streams,
    /// which would otherwise hold the graceful shutdown for its whole timeout.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The client certificate and its renewals, for `status`; `None`: none
    /// watched.
    pub certificate: Option<Arc<CertificateWatch>>,
}

/// One live session as the API shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// Peripheral id (hex).
    pub peripheral: String,
    /// Session id (hex).
    pub session: String,
    /// Granted scope bits.
    pub scope: u32,
    /// The link's peer (untrusted).
    pub link: String,
    /// Established at: ms on the gateway's monotonic clock, counted from
    /// the daemon's start (SPEC.md §1.3), not a wall-clock time.
    pub since_ms: u64,
    /// Whether it was resumed.
    pub resumed: bool,
    /// The peripheral's group.
    pub group: Option<String>,
}

/// The router (tests call it without a socket).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/sessions", get(sessions))
        .route("/v1/messages", get(messages))
        .route("/v1/peripherals/{id}/send", post(send))
        .with_state(state)
}

/// The metrics-only router for a Prometheus TCP listener.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn views(table: &SessionTable) -> Vec<SessionView> {
    table
        .sessions()
        .list()
        .into_iter()
        .map(|s| SessionView {
            peripheral: s.peripheral.to_string(),
            session: s.session_id.iter().map(|b| format!("{b:02x}")).collect(),
            scope: s.scope.0,
            link: s.link,
            since_ms: s.since.as_millis(),
            resumed: s.resumed,
            group: s.group,
        })
        .collect()
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn sessions(State(s): State<ApiState>) -> Json<Vec<SessionView>> {
    Json(views(&s.table))
}

async fn status(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "gateway_key": s.gateway_key,
        "sessions": views(&s.table),
        "tickets": s.table.tickets().len(),
        "resumption": {
            "suspended": s.table.feed().resumption_suspended(),
            "feed_silent_s": s.table.feed().silent_for().map(|d| d.as_secs()),
            "feed_silence_limit_s": s.table.feed().silence_limit().map(|d| d.as_secs()),
        },
        "backend": backend_view(&s.table),
        "clones_suspected": s.metrics.clones_suspected(),
        "certificate": s.certificate.as_ref().map(|c| c.status(SystemClock.wall())),
        "anchor_updates": {
            "held": s.table.anchor_updates().len(),
            "last_serial": s.table.anchor_updates().last_serial(),
            "sent": s.metrics.anchor_updates_sent(),
        },
        "handshakes": {
            "ok": s.metrics.handshakes("ok"),
            "resumed": s.metrics.handshakes("resumed"),
            "refused": s.metrics.handshakes("refused"),
            "busy": s.metrics.handshakes("busy"),
            "timeout": s.metrics.handshakes("timeout"),
            "failed": s.metrics.handshakes("failed"),
        },
    }))
}

/// The backend as the revocation feed sees it: answering or not (since
/// when, why), and how far the feed is applied.
fn backend_view(table: &SessionTable) -> serde_json::Value {
    let feed = table.feed();
    let down = feed.backend_down();
    serde_json::json!({
        "reachable": down.is_none(),
        "unreachable_for_s": down.as_ref().map(|(d, _)| d.as_secs()),
        "error": down.map(|(_, e)| e),
        "feed_cursor": feed.position(),
        "feed_caught_up_s_ago": feed.silent_for().map(|d| d.as_secs()),
    })
}

async fn messages(State(s): State<ApiState>) -> Response {
    let mut shutdown = s.shutdown.clone();
    let stream = BroadcastStream::new(s.table.sessions().subscribe()).filter_map(|m| {
        // A subscriber that lags loses messages; it is told in-band.
        let line = match m {
            Ok(m) => serde_json::json!({
                "peripheral": m.peripheral.to_string(),
                "at_ms": m.at.as_millis(),
                "data_b64": base64_encode(&m.data),
            }),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                serde_json::json!({ "lagged": n })
            }
        };
        Some(Ok::<_, std::convert::Infallible>(Bytes::from(format!(
            "{line}\n"
        ))))
    });
    let stream = futures::StreamExt::take_until(stream, async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn send(State(s): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(id) = PeripheralId::from_hex(&id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_peripheral_id",
            "peripheral id must be 16 hex digits",
        );
    };
    match s.table.sessions().send(id, body.to_vec()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ SendError::NoSession(_)) => {
            error(StatusCode::NOT_FOUND, "no_session", &e.to_string())
        }
        Err(e @ SendError::OutOfScope(_)) => {
            error(StatusCode::FORBIDDEN, "out_of_scope", &e.to_string())
        }
        Err(e @ SendError::Busy(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "busy", &e.to_string())
        }
        Err(e @ SendError::Failed(_)) => {
            error(StatusCode::BAD_GATEWAY, "send_failed", &e.to_string())
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }
}

#[cfg(test)]
mod router_tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        router(ApiState {
            table: SessionTable::new(10),
            metrics: Arc::new(Metrics::new().unwrap()),
            gateway_key: "k".into(),
            shutdown: tokio::sync::watch::channel(false).1,
            certificate: None,
        })
    }

    async fn post(path: &str) -> (StatusCode, serde_json::Value) {
        let resp = app()
            .oneshot(Request::post(path).body(Body::from("led=on")).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn bad_input_gets_a_clear_error() {
        let (s, v) = post("/v1/peripherals/not-hex/send").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "bad_peripheral_id");
        let (s, v) = post("/v1/peripherals/0011223344556677/send").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "no_session");
        let resp = app()
            .oneshot(Request::get("/v1/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
