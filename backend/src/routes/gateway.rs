//! The gateway API: postcard bodies over mutual TLS.
//!
//! The gateway is the Ed25519 key of its TLS client certificate
//! ([`ClientIdentity`]); no body field identifies it. A request without a
//! client certificate is refused with 401 `client_certificate_required`. On
//! the vouch endpoints a gateway that is not enrolled and active gets
//! `Refused(Denied)` for every item, like every other refusal (SPEC.md §5.3
//! step 1), with the reason in the audit log; the feed, the session reports
//! the anchor updates and the certificate renewal answer it 403
//! `gateway_not_active` / `gateway_unknown`.

use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use vouch_proto::keys::PublicKey;
use vouch_proto::wire::backend::{
    route, AnchorUpdateBatch, CertificateIssued, CertificateRenewal, FeedBatch, SessionReport,
    SessionReportAnswer, VouchAnswer, VouchBatchAnswer, VouchBatchRequest, VouchRequest, MAX_BATCH,
    MAX_FEED_EVENTS,
};

use super::{decode_error, Postcard, PostcardBytes, Query};
use crate::budget::{BudgetGuard, Kind};
use crate::error::{AppError, ErrorCode};
use crate::model::GatewayRecord;
use crate::store::StoreError;
use crate::vouch::{self, CloneRules, GatewayCheck, Issuer};
use crate::{AppState, ClientIdentity};

/// Header that names the gateway key on plain-HTTP development servers
/// (`--insecure-http`, loopback only). Ignored on TLS servers.
pub const DEV_GATEWAY_HEADER: &str = "x-vouch-dev-gateway-key";

/// Marker the insecure server puts into requests so that
/// [`DEV_GATEWAY_HEADER`] is honoured.
#[derive(Debug, Clone, Copy)]
pub struct InsecureDevIdentity;

/// The authenticated gateway key of a request.
#[derive(Debug, Clone, Copy)]
pub struct GatewayKey(pub PublicKey);

impl<S: Send + Sync> FromRequestParts<S> for GatewayKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        gateway_identity(&parts.extensions, &parts.headers)
            .map(GatewayKey)
            .ok_or_else(|| {
                AppError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::ClientCertificateRequired,
                    "the gateway API requires a client certificate issued by this backend",
                )
            })
    }
}

/// The gateway key a request is authenticated with: its TLS client
/// certificate's, or on an insecure development server the
/// [`DEV_GATEWAY_HEADER`].
pub(crate) fn gateway_identity(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
) -> Option<PublicKey> {
    if let Some(ClientIdentity(Some(key))) = extensions.get::<ClientIdentity>() {
        return Some(*key);
    }
    if extensions.get::<InsecureDevIdentity>().is_some() {
        return headers
            .get(DEV_GATEWAY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(PublicKey::from_hex);
    }
    None
}

/// Vouch, batch vouch, session reports, anchor updates and certificate
/// renewal.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(route::VOUCH, post(vouch_one))
        .route(route::VOUCH_BATCH, post(vouch_batch))
        .route(route::SESSIONS, post(sessions))
        .route(route::ANCHOR_UPDATES, get(anchor_updates))
        .route(route::CERTIFICATE, post(renew_certificate))
}

/// The revocation feed (outside the request deadline).
pub(super) fn feed_router() -> Router<AppState> {
    Router::new().route(route::FEED, get(feed))
}

/// The per-gateway budget of requests in flight ([`crate::budget`]), taken
/// before anything else is done for the request: outside the global
/// concurrency limit, before the body is read, before any database read. A
/// request without a gateway identity passes through (its handler answers
/// 401).
pub(super) async fn request_budget(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    budgeted(&state, Kind::Requests, req, next).await
}

/// [`request_budget`] for the feed's long-polls.
pub(super) async fn feed_budget(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    budgeted(&state, Kind::FeedWaits, req, next).await
}

async fn budgeted(state: &AppState, kind: Kind, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let key = GatewayKey::from_request_parts(&mut parts, state).await;
    let req = Request::from_parts(parts, body);
    let Ok(GatewayKey(key)) = key else {
        return next.run(req).await;
    };
    match take_budget(state, &key, kind) {
        Ok(_unit) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// One unit of the gateway's budget of `kind`, or 429 `gateway_busy`.
fn take_budget(state: &AppState, key: &PublicKey, kind: Kind) -> Result<BudgetGuard, AppError> {
    state.gateway_budgets.try_take(*key, kind).ok_or_else(|| {
        state
            .metrics
            .overload
            .with_label_values(&["gateway_budget"])
            .inc();
        tracing::warn!(gateway = %key, budget = kind.label(),
            "a gateway exceeded its budget of requests in flight: answered 429");
        AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::GatewayBusy,
            "this gateway has too many requests in flight; retry later",
        )
    })
}

async fn vouch_one(
    State(state): State<AppState>,
    GatewayKey(key): GatewayKey,
    Postcard(req): Postcard<VouchRequest>,
) -> Result<Postcard<VouchAnswer>, AppError> {
    let started = Instant::now();
    let mut answers = vouch::vouch_batch(issuer(&state), &key, std::slice::from_ref(&req)).await?;
    state
        .metrics
        .duration
        .with_label_values(&["single"])
        .observe(started.elapsed().as_secs_f64());
    let answer = answers.pop().ok_or_else(AppError::unavailable)?;
    Ok(Postcard(answer))
}

async fn vouch_batch(
    State(state): State<AppState>,
    GatewayKey(key): GatewayKey,
    Postcard(req): Postcard<VouchBatchRequest>,
) -> Result<Postcard<VouchBatchAnswer>, AppError> {
    if req.items.len() > MAX_BATCH {
        return Err(AppError::bad_request(
            ErrorCode::BatchTooLarge,
            format!("a batch holds at most {MAX_BATCH} requests"),
        ));
    }
    let started = Instant::now();
    let items = vouch::vouch_batch(issuer(&state), &key, &req.items).await?;
    state
        .metrics
        .duration
        .with_label_values(&["batch"])
        .observe(started.elapsed().as_secs_f64());
    Ok(Postcard(VouchBatchAnswer { items }))
}

/// The parts of the state vouch issuing uses.
fn issuer(state: &AppState) -> Issuer<'_> {
    Issuer {
        store: &state.store,
        keys: &state.keys,
        security: &state.config.security,
        lockouts: &state.lockouts,
        metrics: &state.metrics,
        alerter: &state.alerter,
        refusals: &state.refusals,
        committer: &state.committer,
    }
}

/// An active gateway, or 403.
async fn active_gateway(state: &AppState, key: &PublicKey) -> Result<GatewayRecord, AppError> {
    // One read for the checks that arrive together, begun after this one.
    let store = state.store.clone();
    let found = state
        .gateway_checks
        .read((), *key, move |keys| async move {
            store.gateways_by_key(&keys).await
        })
        .await
        .map_err(StoreError::SharedRead)?;
    let record = match found.get(key) {
        Some(Ok(g)) => Some(g.clone()),
        // Its row alone is unreadable: this request fails as a lone read did.
        Some(Err(_)) => return Err(StoreError::Corrupt("gateways").into()),
        None => None,
    };
    match vouch::judge_gateway(record) {
        GatewayCheck::Active(g) => Ok(g),
        // Step 1 refuses only these two (`vouch::judge_gateway`).
        GatewayCheck::Refused(r) => Err(AppError::new(
            StatusCode::FORBIDDEN,
            match r {
                vouch::Reason::GatewayUnknown => ErrorCode::GatewayUnknown,
                _ => ErrorCode::GatewayNotActive,
            },
            "this gateway is not enrolled and active",
        )),
    }
}

async fn sessions(
    State(state): State<AppState>,
    GatewayKey(key): GatewayKey,
    PostcardBytes(body): PostcardBytes,
) -> Result<Postcard<SessionReportAnswer>, AppError> {
    // With the events' times, or without (a gateway that predates them).
    let report = SessionReport::decode(&body).map_err(decode_error)?;
    if report.events.len() > MAX_FEED_EVENTS {
        return Err(AppError::bad_request(
            ErrorCode::BatchTooLarge,
            format!("a report holds at most {MAX_FEED_EVENTS} events"),
        ));
    }
    if !report.times.is_empty() && report.times.len() != report.events.len() {
        return Err(AppError::bad_request(
            ErrorCode::MalformedBody,
            format!(
                "a report carries one times entry per event, or none ({} events, {} times)",
                report.events.len(),
                report.times.len()
            ),
        ));
    }
    let gateway = active_gateway(&state, &key).await?;
    let Some(slot) = state.committer.reserve_report(report.events.len()) else {
        state.metrics.overload.with_label_values(&["shed"]).inc();
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "the writer has a backlog of session reports; retry later",
        ));
    };
    let items = vouch::report_sessions(
        &state.store,
        &state.alerter,
        CloneRules::new(&state.config.security),
        &gateway,
        &report.events,
        &report.times,
        slot,
    )
    .await?;
    Ok(Postcard(SessionReportAnswer { items }))
}

/// Anchor-updates query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct AnchorUpdatesQuery {
    /// The serial of the last update the gateway holds (0 for all).
    #[serde(default)]
    after: u32,
}

/// The signed trust-anchor updates after a serial, for the gateway to deliver
/// to peripherals in session (SPEC.md §7.7, §10.6). Behind the gateway's
/// budget like the other gateway routes.
async fn anchor_updates(
    State(state): State<AppState>,
    GatewayKey(key): GatewayKey,
    Query(q): Query<AnchorUpdatesQuery>,
) -> Result<Postcard<AnchorUpdateBatch>, AppError> {
    active_gateway(&state, &key).await?;
    let batch = crate::keyring::updates_for_gateways(&state.store, &state.keys, q.after).await?;
    Ok(Postcard(batch))
}

/// A fresh client certificate for the calling gateway (SPEC.md §10.8): for
/// the key of the certificate the request came with (a gateway can renew
/// only its own), from the same CA, valid for
/// `certificates.gateway_lifetime_days`. Only an enrolled, active gateway
/// gets one (403 `gateway_unknown` / `gateway_not_active` otherwise, checked
/// again in the transaction that records it); every renewal is in the
/// audit log (`gateway_certificate_renew`, with the new expiry).
async fn renew_certificate(
    State(state): State<AppState>,
    GatewayKey(key): GatewayKey,
    Postcard(CertificateRenewal): Postcard<CertificateRenewal>,
) -> Result<Postcard<CertificateIssued>, AppError> {
    let gateway = active_gateway(&state, &key).await?;
    let cert = crate::registry::renew_gateway_certificate(
        &state.store,
        &state.ca,
        state.config.certificates.gateway_lifetime(),
        &gateway,
        "gateway",
    )
    .await?;
    state
        .metrics
        .gateway_certificates_issued
        .with_label_values(&["renewal"])
        .inc();
    tracing::info!(gateway = %key, not_after_ms = cert.not_after_ms, "gateway certificate renewed");
    Ok(Postcard(CertificateIssued {
        certificate_pem: cert.pem,
        not_after_ms: u64::try_from(cert.not_after_ms).unwrap_or(0),
    }))
}

/// Feed query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct FeedQuery {
    /// Last sequence number applied (0 for everything).
    #[serde(default)]
    after: u64,
    /// How long to wait for an event, ms (capped by `limits.feed_wait_max_ms`).
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn feed(
    State(state): State<AppState>,
    GatewayKey(key): GatewayKey,
    Query(q): Query<FeedQuery>,
) -> Result<Postcard<FeedBatch>, AppError> {
    active_gateway(&state, &key).await?;
    state.note_poll(key);
    let Ok(_permit) = state.feed_waiters.try_acquire() else {
        state.metrics.overload.with_label_values(&["shed"]).inc();
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many feed subscribers; retry later",
        ));
    };
    state.metrics.feed_waiters.inc();
    let max = state.config.limits.feed_wait_max_ms;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(max).min(max));
    let result = crate::feed::poll(
        &state.store,
        &state.feed,
        q.after,
        wait,
        &state.metrics.revocation_lag,
        &state.shutdown,
    )
    .await;
    state.metrics.feed_waiters.dec();
    Ok(Postcard(result?))
}
