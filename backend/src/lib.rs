//! # vouch-backend
//!
//! The Vouch backend: the registry of peripherals and gateways with their
//! lifecycle and policy, vouch issuing (SPEC.md §5.3–5.4), the revocation
//! feed, clone detection, lockouts, a hash-chained audit log, the admin API
//! and the operator CLI (`vouch-backend`), on SQLite by default and
//! PostgreSQL at scale.
//!
//! ## Layout
//!
//! From the HTTP edge down:
//!
//! - [`app`] builds the whole HTTP service as an axum [`Router`] over an
//!   [`AppState`]; tests drive it with `oneshot`, the binary serves it over
//!   TLS with [`server::serve`]. [`ops_app`] is the loopback operations
//!   listener (`/metrics` without a token).
//! - [`routes`]: the HTTP layer. Gateway API (postcard bodies, mutual TLS),
//!   admin API (JSON, bearer token), operations (`/healthz`, `/readyz`,
//!   `/metrics` with the admin token, `/v1/openapi.json`, [`openapi`]). Every
//!   path is a constant of `vouch_proto::wire::backend::route`, every error
//!   an [`error::AppError`] with a stable `ErrorCode` from the same module.
//! - Services, each taking the parts of the state it uses: [`registry`]
//!   (the registry operations the admin API and the CLI share), [`vouch`]
//!   (the order of checks, uniform refusals, group commit; session reports
//!   and clone detection), [`feed`] (the revocation feed's long-poll),
//!   [`keyring`] (the backend's key pairs, their rotation and the signed
//!   trust-anchor updates, SPEC.md §7.7), [`security`] (lockouts, alerts),
//!   [`audit`] (repeated refusals counted into summary entries, retention).
//! - [`store`]: one storage implementation for SQLite and PostgreSQL, one
//!   file per aggregate.
//! - [`datadir`], [`pki`], [`config`], [`import`], [`anchor`], [`backup`]:
//!   the operator's side. The CLI itself is in the binary (`src/cli/`).
//!
//! ## Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vouch_backend::{app, config::Config, datadir, store::Store, AppState};
//!
//! let dir = std::path::Path::new("/var/lib/vouch");
//! datadir::init(dir, &[])?; // idempotent
//! let data = datadir::DataDir::load(dir)?;
//! let store = Store::open(&data.sqlite_url()).await?;
//! let state = AppState::new(store, data, Config::default()).await?;
//! let router = app(state.clone());
//! // Serve `router` with `vouch_backend::server::serve`, or call it directly:
//! // router.oneshot(request).await
//!
//! // The registry operations the admin API answers, without HTTP:
//! use vouch_backend::registry::{self, NewPolicy};
//! let rule = NewPolicy {
//!     peripheral: "group:meters".into(),
//!     gateway: "site:plant-1".into(),
//!     scope: "telemetry".into(),
//!     session_s: 3600,
//!     resumption_s: 86_400,
//! };
//! registry::add_policy(&state.store, &rule, "operator").await?;
//! # let _ = router; Ok(()) }
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vouch_proto::keys::PublicKey;

pub mod access;
pub mod anchor;
pub mod audit;
pub mod backup;
pub mod budget;
pub mod config;
pub mod console;
pub mod datadir;
pub mod error;
pub mod feed;
mod group_read;
pub mod import;
pub mod keycache;
pub mod keyring;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod pki;
pub mod registry;
pub mod routes;
pub mod security;
pub mod server;
pub mod store;
pub mod vouch;

use crate::config::Config;
use crate::datadir::DataDir;
use crate::feed::FeedNotifier;
use crate::metrics::Metrics;
use crate::pki::CaMaterial;
use crate::security::{Alerter, Lockouts};
use crate::store::{now_ms, CheckpointKey, PruneError, PruneOutcome, Store, StoreError};

/// The TLS client identity of a connection: the Ed25519 key in the client
/// certificate, if one was presented (verified against the backend CA by
/// rustls). The TLS server puts it into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity(pub Option<PublicKey>);

/// Installs ring as the process-wide rustls provider (for the few clients
/// that use the default, such as the webhook's). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// The registry.
    pub store: Store,
    /// The backend key pairs this instance serves (vouch signing, hello
    /// sealing), by key id; reloaded as keys are rotated and purged.
    pub keys: keyring::ServedKeys,
    /// The data directory the keys are loaded from (empty for an in-memory
    /// backend, whose one key pair never changes).
    pub data_dir: std::path::PathBuf,
    /// This instance, as it records in the database which keys it serves
    /// ([`keyring`], "Several instances").
    pub instance: keyring::Instance,
    /// The CA, for issuing gateway certificates at enrollment.
    pub ca: CaMaterial,
    /// Settings.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// Lockouts.
    pub lockouts: Lockouts,
    /// Alerts.
    pub alerter: Alerter,
    /// Feed wake-ups.
    pub feed: FeedNotifier,
    /// Bounds concurrent feed long-polls.
    pub feed_waiters: Semaphore,
    /// Bounds what one gateway may have in flight.
    pub gateway_budgets: budget::GatewayBudgets,
    /// The request budget of the gateway and admin APIs
    /// (`limits.max_concurrent_requests`); when none is free, requests are
    /// shed with 503.
    pub request_slots: Arc<Semaphore>,
    pub(crate) committer: vouch::Committer,
    /// Repeated refusals, counted between their summary entries.
    pub(crate) refusals: Arc<audit::RefusalTally>,
    /// Signs and checks the audit log's checkpoint: the CA's key.
    pub checkpoint_key: CheckpointKey,
    /// Feed polls seen since the last flush, by gateway: written to the
    /// store about once a second ([`store::Store::record_polls`]).
    pub(crate) polls:
        std::sync::Mutex<std::collections::HashMap<vouch_proto::keys::PublicKey, i64>>,
    /// The gateway API's checks of the calling gateway: those arriving
    /// together share one read (a revocation's wake-up brings every
    /// gateway's next poll at once).
    pub(crate) gateway_checks: group_read::GroupReads<
        (),
        vouch_proto::keys::PublicKey,
        std::collections::HashMap<
            vouch_proto::keys::PublicKey,
            Result<model::GatewayRecord, store::StoreError>,
        >,
        store::StoreError,
    >,
    /// The console overview's counts and when they were taken
    /// ([`console`]).
    pub(crate) overview: std::sync::Mutex<Option<(std::time::Instant, console::Counts)>>,
    /// Cancelled at shutdown: ends long-polls and background tasks.
    pub shutdown: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Notes that `gateway` polled the revocation feed now.
    pub(crate) fn note_poll(&self, gateway: vouch_proto::keys::PublicKey) {
        self.polls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(gateway, now_ms());
    }

    /// Writes the feed polls noted since the last flush (kept for the next
    /// one if the store fails).
    pub(crate) async fn flush_polls(&self) {
        let polls: Vec<_> = std::mem::take(
            &mut *self
                .polls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if let Err(e) = self.store.record_polls(&polls).await {
            tracing::warn!(error = %e, gateways = polls.len(), "could not record feed polls; kept for the next try");
            let mut kept = self
                .polls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (k, at) in polls {
                let e = kept.entry(k).or_insert(at);
                *e = (*e).max(at);
            }
        }
    }

    /// Builds the state and starts its background tasks (group-commit writer,
    /// event-log poll, lockout refresh, key-ring reload, replay-cache purge).
    /// Needs a Tokio runtime. The tasks stop when [`AppState::shutdown`] is
    /// cancelled.
    ///
    /// The instance serves the key pairs of `data` that the database
    /// registers and has not purged ([`keyring`]); with nothing registered
    /// (no rotation yet), the directory's one key pair. The CA's key signs
    /// the audit log's checkpoints ([`store::CheckpointKey`]): a CA key that
    /// is not the Ed25519 key of the CA certificate fails with
    /// [`StoreError::Corrupt`]`("ca-key.pem")`.
    pub async fn new(store: Store, data: DataDir, config: Config) -> Result<Self, StoreError> {
        install_crypto_provider();
        let DataDir {
            path: data_dir,
            keys,
            more_keys,
            ca,
            token_hash,
        } = data;
        store.key_cache().set_capacity(config.crypto.decoded_keys);
        let ring = keyring::initial_ring(
            &store,
            std::iter::once(keys)
                .chain(more_keys)
                .map(|k| keyring::on_provider(k, &config.crypto))
                .collect(),
            &data_dir,
        )
        .await
        .map_err(|e| match e {
            keyring::KeyRingError::Store(e) => e,
            // `serve` checks the ring before it builds the state
            // (`keyring::check`), and every data directory holds a key and its
            // committed successor (`DataDir::load`, `DataDir::ephemeral`).
            other => {
                tracing::error!(error = %other, "the key ring does not replay");
                StoreError::Corrupt("backend_keys")
            }
        })?;
        // The first start makes `init`'s admin token the first admin's
        // (nothing once any operator exists: `access`).
        if store
            .bootstrap_operators(&access::TokenHash(token_hash))
            .await?
        {
            tracing::info!(
                operator = access::FIRST_ADMIN,
                "the admin token init printed is the first admin's (operators: vouch-backend operators --help)"
            );
        }
        let metrics = Metrics::new();
        let sec = &config.security;
        let lockouts = Lockouts::new(
            sec.lockout_failures,
            Duration::from_secs(sec.lockout_window_s),
            Duration::from_secs(sec.lockout_duration_s),
        );
        lockouts.refresh(store.active_lockouts(now_ms()).await?);
        let alerter = Alerter::new(
            metrics.clone(),
            config.webhook.url.clone(),
            Duration::from_millis(config.webhook.timeout_ms),
        );
        let feed = FeedNotifier::new(store.last_event_seq().await?);
        let refusals = Arc::new(audit::RefusalTally::new(
            config.audit.max_kinds,
            config.audit.first_per_kind,
        ));
        let committer = vouch::Committer::spawn(store.clone(), metrics.clone(), refusals.clone());
        let checkpoint_key = CheckpointKey::from_ca(&ca).map_err(|e| {
            tracing::error!(error = %e, "the CA key cannot sign audit checkpoints");
            StoreError::Corrupt("ca-key.pem")
        })?;
        let state = Self {
            inner: Arc::new(Inner {
                feed_waiters: Semaphore::new(config.limits.max_feed_waiters),
                gateway_budgets: budget::GatewayBudgets::new(
                    config.limits.max_requests_per_gateway,
                    config.limits.max_feed_waiters_per_gateway,
                ),
                request_slots: Arc::new(Semaphore::new(
                    config.limits.max_concurrent_requests.max(1),
                )),
                store,
                keys: keyring::ServedKeys::new(ring),
                instance: keyring::Instance::new(
                    &data_dir,
                    Duration::from_secs(config.keys.instance_ttl_s),
                ),
                data_dir,
                ca,
                config,
                metrics,
                lockouts,
                alerter,
                feed,
                committer,
                refusals,
                checkpoint_key,
                polls: std::sync::Mutex::default(),
                gateway_checks: group_read::GroupReads::default(),
                overview: std::sync::Mutex::new(None),
                shutdown: CancellationToken::new(),
            }),
        };
        // Recorded before it serves anything, so that no other instance hands
        // out a rotation to a key this one lacks.
        keyring::record_start(&state).await?;
        tokio::spawn(background(state.clone()));
        tokio::spawn(listen_for_feed(state.clone()));
        Ok(state)
    }

    /// Stops the background tasks and ends waiting long-polls.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Writes the summary entries of the refusals counted since the last
    /// ones ([`audit`]); returns how many entries. The background task does
    /// this every `audit.summary_interval_s`; call it once more at a
    /// graceful shutdown, after the last request, so that no count is lost.
    pub async fn flush_audit(&self) -> Result<usize, StoreError> {
        self.refusals.flush(&self.store, now_ms()).await
    }

    /// Prunes the audit entries older than `older_than_s` (but never those a
    /// live vouch still needs, [`audit::prune_cutoff`]) behind a checkpoint
    /// signed with the CA's key.
    pub async fn prune_audit(
        &self,
        older_than_s: u64,
        actor: &str,
    ) -> Result<PruneOutcome, PruneError> {
        let (cutoff, _) = audit::prune_cutoff(&self.store, older_than_s, now_ms()).await?;
        self.store
            .audit_prune(cutoff, &self.checkpoint_key, actor)
            .await
    }
}

/// PostgreSQL: wakes this instance's waiting feed polls as soon as any
/// instance (or the CLI) commits a revocation-feed event, through LISTEN /
/// NOTIFY ([`store::FEED_CHANNEL`]). The event log stays the truth, and the
/// poll of it in [`background`] stays too: a notification lost while this
/// connection is down costs at most one `feed.poll_ms`, never an event.
/// Returns at once on SQLite.
async fn listen_for_feed(state: AppState) {
    const RETRY_MAX: Duration = Duration::from_secs(30);
    let mut retry = Duration::from_millis(500);
    loop {
        let listener = tokio::select! {
            l = state.store.feed_listener() => l,
            _ = state.shutdown.cancelled() => return,
        };
        let mut listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = retry.as_millis() as u64,
                    "cannot LISTEN for revocation-feed notifications; the poll of the event log (feed.poll_ms) still sees every event");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    _ = state.shutdown.cancelled() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = Duration::from_millis(500);
        tracing::info!(
            channel = store::FEED_CHANNEL,
            "listening for revocation-feed notifications"
        );
        // Whatever was committed while this connection was being made.
        feed_head(&state).await;
        loop {
            tokio::select! {
                n = listener.next() => match n {
                    Ok(()) => feed_head(&state).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "the revocation-feed LISTEN connection failed; reconnecting");
                        break;
                    }
                },
                _ = state.shutdown.cancelled() => return,
            }
        }
    }
}

/// Reads the event log's head and wakes the polls waiting before it.
async fn feed_head(state: &AppState) {
    match state.store.last_event_seq().await {
        Ok(seq) => state.feed.advance(seq),
        Err(e) => tracing::warn!(error = %e, "event-log read failed"),
    }
}

/// The periodic work of one instance.
async fn background(state: AppState) {
    let poll = Duration::from_millis(state.config.feed.poll_ms.max(10));
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let ticks_per_s = (1000 / poll.as_millis().max(1)).max(1) as u64;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                if let Err(e) = keyring::forget(&state).await {
                    tracing::warn!(error = %e, "could not delete this instance's record; \
                        rotations wait for it until it expires");
                }
                return;
            }
            _ = tick.tick() => {}
        }
        n += 1;
        match state.store.last_event_seq().await {
            Ok(seq) => state.feed.advance(seq),
            Err(e) => tracing::warn!(error = %e, "event-log poll failed"),
        }
        if n.is_multiple_of(ticks_per_s) {
            state.flush_polls().await;
            match state.store.active_lockouts(now_ms()).await {
                Ok(l) => state.lockouts.refresh(l),
                Err(e) => tracing::warn!(error = %e, "lockout refresh failed"),
            }
            if let Err(e) = keyring::reload(&state).await {
                tracing::warn!(error = %e, "key ring reload failed");
            }
        }
        let summary_s = state.config.audit.summary_interval_s.max(1);
        if n.is_multiple_of(ticks_per_s * summary_s) {
            match state.flush_audit().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(summaries = n, "repeated refusals summarized"),
                Err(e) => tracing::warn!(error = %e, "audit summary failed; counts kept"),
            }
        }
        let retention_s = state.config.audit.retention_s;
        if retention_s > 0 && n.is_multiple_of(ticks_per_s * 3600) {
            match state.prune_audit(retention_s, "system").await {
                Ok(o) if o.pruned > 0 => {
                    tracing::info!(
                        pruned = o.pruned,
                        checkpoint = o.checkpoint_seq,
                        "audit log pruned"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "audit prune failed"),
            }
        }
        if n.is_multiple_of(ticks_per_s * 60) {
            let now = now_ms();
            let retention = i64::try_from(state.config.security.replay_retention_s)
                .unwrap_or(i64::MAX / 2000)
                .saturating_mul(1000);
            match state.store.purge(now.saturating_sub(retention), now).await {
                Ok(purged) if purged > 0 => tracing::info!(purged, "replay cache purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    }
}

/// The whole HTTP service. See [`routes`] for the endpoints.
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// The operations listener's service (`ops_listen`): `/healthz`, `/readyz`
/// and `/metrics` without credentials. Serve it on loopback only.
pub fn ops_app(state: AppState) -> Router {
    routes::ops::ops_router(state)
}
