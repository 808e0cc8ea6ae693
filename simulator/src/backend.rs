//! The real backend, in-process or serving HTTPS on loopback, and each
//! gateway's uplink to it.
//!
//! In-process, a gateway's requests go straight into the backend's axum
//! router (`tower::ServiceExt::oneshot`) with the gateway's key attached as
//! the [`ClientIdentity`] the TLS server would have taken from its client
//! certificate; over HTTPS they go through the gateway's own
//! [`HttpBackend`] (reqwest, rustls, the certificate issued at enrollment).
//! Either way every uplink passes through an outage switch, so a scenario
//! can cut a site off its backend.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use vouch_backend::config::{CloneAction, Config};
use vouch_backend::datadir::{self, DataDir, InitOutcome};
use vouch_backend::server::Transport;
use vouch_backend::store::Store;
use vouch_backend::{app, pki, AppState, ClientIdentity};
use vouch_gateway::backend_client::{
    refused, BackendApi, BackendError, HttpBackend, HttpBackendConfig, MAX_IN_FLIGHT,
};
use vouch_proto::keys::{IdentityKey, PublicKey};
use vouch_proto::wire::backend::{
    decode_body, encode_body, route, AnchorUpdateBatch, FeedBatch, SessionReport,
    SessionReportAnswer, VouchAnswer, VouchRequest, CONTENT_TYPE,
};

use crate::error::Error;
use crate::scenario::BackendParams;

/// The backend's request budget in a simulation (see [`SimBackend::start`]).
pub const MAX_REQUESTS: usize = 1 << 16;

/// How gateways reach the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendMode {
    /// The router called in-process (no sockets, no TLS).
    #[default]
    InProc,
    /// The HTTPS service on 127.0.0.1, with mutual TLS.
    Https,
}

impl std::str::FromStr for BackendMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "inproc" => Ok(Self::InProc),
            "https" => Ok(Self::Https),
            _ => Err(Error::Invalid(format!(
                "backend mode {s:?}: expected inproc or https"
            ))),
        }
    }
}

struct HttpsServer {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The running backend.
pub struct SimBackend {
    _dir: tempfile::TempDir,
    state: AppState,
    router: Router,
    token: String,
    ca_pem: String,
    https: Option<HttpsServer>,
    postgres: Option<(String, String)>,
    mode: BackendMode,
    /// The database the instances share.
    url: String,
    /// Every instance's settings.
    config: Config,
    /// Further instances on the same database and data directory, as more
    /// `serve` processes behind one fleet's gateways ([`add_instances`]).
    ///
    /// [`add_instances`]: Self::add_instances
    others: Vec<(AppState, Router)>,
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A temporary directory on tmpfs when there is one: SQLite's fsyncs then
/// cost what they cost on a server with a battery-backed cache, not what a
/// shared VM's disk charges.
fn tempdir() -> Result<tempfile::TempDir, Error> {
    let shm = std::path::Path::new("/dev/shm");
    let r = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("vouch-sim-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("vouch-sim-").tempdir()
    };
    r.map_err(Error::backend)
}

impl SimBackend {
    /// Creates a data directory and a database and starts the backend.
    /// `database_url` is a PostgreSQL server: a fresh database is created on
    /// it for this run and dropped at [`shutdown`](Self::shutdown).
    pub async fn start(
        mode: BackendMode,
        database_url: Option<&str>,
        params: &BackendParams,
    ) -> Result<Self, Error> {
        let dir = tempdir()?;
        let InitOutcome::Created { admin_token } =
            datadir::init(dir.path(), &[]).map_err(Error::backend)?
        else {
            return Err(Error::Backend(
                "fresh data directory already initialized".into(),
            ));
        };
        let data = DataDir::load(dir.path()).map_err(Error::backend)?;
        let ca_pem = data.ca.cert_pem.clone();
        let (url, postgres) = match database_url {
            None => (data.sqlite_url(), None),
            Some(admin) => {
                let (url, name) = fresh_postgres(admin).await?;
                (url, Some((admin.to_string(), name)))
            }
        };
        let mut config = Config::default();
        // The simulator bounds its own concurrency; the backend's load
        // shedding is for real fleets and would turn the simulator's bursts
        // of session reports into spurious refusals.
        config.limits.max_concurrent_requests = MAX_REQUESTS;
        // One long-poll per gateway: a fleet of 10,000 gateways (and the
        // adversaries' beside it) must not meet the default's 10,000.
        config.limits.max_feed_waiters = MAX_REQUESTS;
        if params.clone_action.as_deref() == Some("refuse") {
            config.security.clone_action = CloneAction::Refuse;
        }
        if let Some(k) = params.lockout_failures {
            config.security.lockout_failures = k;
        }
        if let Some(t) = params.clone_tolerance_ms {
            config.security.clone_tolerance_ms = t;
        }
        let (server_tls, server_key) = data.server_tls().map_err(Error::backend)?;
        let store = Store::open(&url).await.map_err(Error::backend)?;
        let state = AppState::new(store, data, config.clone())
            .await
            .map_err(Error::backend)?;
        let router = app(state.clone());
        let https = match mode {
            BackendMode::InProc => None,
            BackendMode::Https => {
                let tls = pki::server_config(
                    &ca_pem,
                    &server_tls,
                    &server_key,
                    None,
                    state.metrics.client_cert_rejections(),
                )
                .map_err(Error::backend)?;
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .map_err(Error::backend)?;
                let port = listener.local_addr().map_err(Error::backend)?.port();
                let (stop, stopped) = oneshot::channel::<()>();
                let r = router.clone();
                let task = tokio::spawn(async move {
                    let _ = vouch_backend::server::serve(
                        listener,
                        r,
                        Transport::Tls(Arc::new(tls)),
                        async move {
                            let _ = stopped.await;
                        },
                    )
                    .await;
                });
                Some(HttpsServer {
                    url: format!("https://127.0.0.1:{port}"),
                    stop,
                    task,
                })
            }
        };
        Ok(Self {
            _dir: dir,
            state,
            router,
            token: admin_token.to_string(),
            ca_pem,
            https,
            postgres,
            mode,
            url,
            config,
            others: Vec::new(),
        })
    }

    /// Starts `n` more instances of the backend on the same database and
    /// data directory (in-process routers). Several instances agree through
    /// the database: on PostgreSQL a revocation written by one wakes the
    /// others' feeds by LISTEN/NOTIFY; on SQLite, by their poll of the log.
    pub async fn add_instances(&mut self, n: usize) -> Result<(), Error> {
        if n > 0 && self.mode == BackendMode::Https {
            return Err(Error::Invalid(
                "several backend instances are simulated in-process: use --backend inproc".into(),
            ));
        }
        for _ in 0..n {
            let store = Store::open(&self.url).await.map_err(Error::backend)?;
            let data = DataDir::load(self._dir.path()).map_err(Error::backend)?;
            let state = AppState::new(store, data, self.config.clone())
                .await
                .map_err(Error::backend)?;
            let router = app(state.clone());
            self.others.push((state, router));
        }
        Ok(())
    }

    /// How many instances serve (1 + [`add_instances`](Self::add_instances)).
    pub fn instances(&self) -> usize {
        1 + self.others.len()
    }

    /// [`uplink`](Self::uplink) to instance `i` (0: the first; the others
    /// in-process only).
    pub fn uplink_to(
        &self,
        i: usize,
        key: &IdentityKey,
        cert_pem: Option<&str>,
    ) -> Result<Uplink, Error> {
        let Some(i) = i.checked_sub(1) else {
            return self.uplink(key, cert_pem);
        };
        let (_, router) = self
            .others
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("no backend instance {}", i + 1)))?;
        let (up, _) = watch::channel(true);
        Ok(Uplink {
            inner: Arc::new(Inner::InProc {
                router: router.clone(),
                key: key.public_key(),
                slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            }),
            up: Arc::new(up),
        })
    }

    /// The backend's shared state (metrics, store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The operator rotates the backend key (`keys rotate`): the real
    /// key ring's rotation in the run's data directory, which reveals the
    /// committed key, signs the `Rotate` with it and commits to a new one
    /// (SPEC.md §7.7); then the ring is reloaded so the new key is served at
    /// once, as every instance does within a second.
    pub async fn rotate_key(&self) -> Result<vouch_backend::keyring::Rotation, Error> {
        let data = DataDir::load(&self.state.data_dir).map_err(Error::backend)?;
        let rotation = vouch_backend::keyring::rotate(&data, &self.state.store, "vouch-sim")
            .await
            .map_err(Error::backend)?;
        vouch_backend::keyring::reload(&self.state)
            .await
            .map_err(Error::backend)?;
        Ok(rotation)
    }

    /// Backend key pair `kid` as its files in the data directory hold it:
    /// what a thief of the backend host's disk has (attacks only).
    pub fn danger_steal_key(
        &self,
        kid: vouch_proto::keys::KeyId,
    ) -> Result<vouch_proto::handshake::backend::BackendKeys, Error> {
        datadir::load_key_pair(&self.state.data_dir, kid)
            .map_err(Error::backend)?
            .ok_or_else(|| Error::Backend(format!("no key pair {kid} in the data directory")))
    }

    /// Which database engine it runs on.
    pub fn database(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgresql"
        } else {
            "sqlite"
        }
    }

    /// One admin API call (JSON, bearer token), in-process.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Error> {
        let body = body.map(|b| b.to_string().into_bytes());
        self.admin_raw(method, path, "application/json", body).await
    }

    /// One admin API call with a raw body.
    pub async fn admin_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value), Error> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .extension(ClientIdentity(None))
            .body(body.map_or_else(Body::empty, Body::from))
            .map_err(Error::backend)?;
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(Error::backend)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(Error::backend)?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// [`admin_ok`](Self::admin_ok) as a future of its own, to run
    /// beside others (the operator's calls are independent of each other).
    pub fn admin_ok_owned(
        &self,
        method: Method,
        path: String,
        what: &'static str,
    ) -> impl std::future::Future<Output = Result<Value, Error>> + Send + 'static {
        let (router, token) = (self.router.clone(), self.token.clone());
        async move {
            // Shed (503, 429) while the backend is loaded: the operator's
            // tool tries again, for up to a minute.
            let started = std::time::Instant::now();
            loop {
                let req = Request::builder()
                    .method(method.clone())
                    .uri(&path)
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .extension(ClientIdentity(None))
                    .body(Body::empty())
                    .map_err(Error::backend)?;
                let resp = router.clone().oneshot(req).await.map_err(Error::backend)?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(Error::backend)?
                    .to_bytes();
                let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if (200..300).contains(&status) {
                    return Ok(v);
                }
                if !matches!(status, 429 | 503) || started.elapsed() > Duration::from_secs(60) {
                    return Err(Error::Backend(format!("{what}: HTTP {status} {v}")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// An admin call that must succeed (2xx); `what` names it in the error.
    pub async fn admin_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, Error> {
        let (s, v) = self.admin(method, path, body).await?;
        if (200..300).contains(&s) {
            Ok(v)
        } else {
            Err(Error::Backend(format!("{what}: HTTP {s} {v}")))
        }
    }

    /// Enrolls a gateway at `site`; returns its client certificate.
    pub async fn enroll_gateway(&self, key: &PublicKey, site: &str) -> Result<String, Error> {
        let v = self
            .admin_ok(
                Method::POST,
                route::admin::GATEWAYS,
                Some(serde_json::json!({"public_key": key.to_string(), "site": site})),
                "enroll gateway",
            )
            .await?;
        v["certificate_pem"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Backend("enroll gateway: no certificate_pem".into()))
    }

    /// The uplink of a gateway with identity `key` (and, over HTTPS, the
    /// client certificate `cert_pem` issued at enrollment). Not enrolled
    /// gateways get an in-process uplink whatever the mode: their requests
    /// arrive past TLS, a strictly stronger position than a real rogue's.
    pub fn uplink(&self, key: &IdentityKey, cert_pem: Option<&str>) -> Result<Uplink, Error> {
        let (up, _) = watch::channel(true);
        let inner = match (&self.https, cert_pem) {
            (Some(h), Some(cert)) => {
                let pem = key
                    .to_pkcs8_pem()
                    .map_err(|e| Error::Gateway(e.to_string()))?;
                let http = HttpBackend::new(HttpBackendConfig {
                    urls: vec![h.url.clone()],
                    shuffle: false,
                    metrics: None,
                    ca_pem: self.ca_pem.as_bytes().to_vec(),
                    cert_pem: cert.as_bytes().to_vec(),
                    key_pem: zeroize::Zeroizing::new(pem.as_bytes().to_vec()),
                    request_timeout: Duration::from_secs(10),
                    feed_timeout: Duration::from_secs(40),
                    batch_window: Duration::from_millis(2),
                    breaker_threshold: 1000,
                    breaker_cooldown: Duration::from_millis(100),
                })
                .map_err(|e| Error::Gateway(e.to_string()))?;
                Inner::Https(http)
            }
            _ => Inner::InProc {
                router: self.router.clone(),
                key: key.public_key(),
                slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            },
        };
        Ok(Uplink {
            inner: Arc::new(inner),
            up: Arc::new(up),
        })
    }

    /// Stops serving, stops the background tasks, drops a PostgreSQL
    /// database created for the run.
    pub async fn shutdown(self) {
        for (state, _) in &self.others {
            state.shutdown();
            state.store.close().await;
        }
        self.state.shutdown();
        if let Some(h) = self.https {
            let _ = h.stop.send(());
            let _ = h.task.await;
        }
        self.state.store.close().await;
        if let Some((admin, name)) = self.postgres {
            drop_postgres(&admin, &name).await;
        }
    }
}

/// Drops the database `name` made by [`fresh_postgres`] (best effort).
pub(crate) async fn drop_postgres(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::AnyConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}

/// A new, empty database on the PostgreSQL server of `admin` (a URL the
/// server accepts `CREATE DATABASE` from): its URL and its name.
pub(crate) async fn fresh_postgres(admin: &str) -> Result<(String, String), Error> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut b = [0u8; 6];
    getrandom_fill(&mut b);
    let name = format!("vouch_sim_{}", hex::encode(b));
    let mut conn = sqlx::AnyConnection::connect(admin)
        .await
        .map_err(|e| Error::Backend(format!("--database-url: {e}")))?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .map_err(|e| Error::Backend(format!("create database {name}: {e}")))?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or_else(|| Error::Invalid("--database-url needs a database name".into()))?;
    Ok((format!("{base}/{name}"), name))
}

/// A name for a temporary database: it only has to differ between
/// concurrent runs, so the clock's nanoseconds and the process id do.
fn getrandom_fill(b: &mut [u8]) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let x = t ^ (u128::from(std::process::id()) << 64);
    for (i, v) in b.iter_mut().enumerate() {
        *v = (x >> (8 * i)) as u8;
    }
}

enum Inner {
    /// The router called directly; like the real client, at most
    /// [`MAX_IN_FLIGHT`] vouch and report requests at once per gateway.
    InProc {
        router: Router,
        key: PublicKey,
        slots: Arc<tokio::sync::Semaphore>,
    },
    Https(HttpBackend),
}

/// One gateway's uplink: the real backend behind an outage switch.
#[derive(Clone)]
pub struct Uplink {
    inner: Arc<Inner>,
    up: Arc<watch::Sender<bool>>,
}

impl Uplink {
    /// Cuts the uplink (`false`) or restores it (`true`).
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Whether the uplink is up.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    fn check(&self) -> Result<(), BackendError> {
        if self.is_up() {
            Ok(())
        } else {
            Err(BackendError::Unavailable(
                "uplink down (simulated outage)".into(),
            ))
        }
    }
}

impl Inner {
    async fn call<R: serde::de::DeserializeOwned + serde::Serialize>(
        router: &Router,
        key: &PublicKey,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<R, BackendError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .extension(ClientIdentity(Some(*key)));
        if body.is_some() {
            b = b.header("content-type", CONTENT_TYPE);
        }
        let req = b
            .body(body.map_or_else(Body::empty, Body::from))
            .map_err(|e| BackendError::Malformed(e.to_string()))?;
        let resp = router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| BackendError::Unavailable(e.to_string()))?
            .to_bytes();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(BackendError::Unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(refused(status.as_u16(), &bytes));
        }
        decode_body::<R>(&bytes).map_err(|e| BackendError::Malformed(e.to_string()))
    }
}

impl BackendApi for Uplink {
    async fn vouch(&self, req: VouchRequest) -> Result<VouchAnswer, BackendError> {
        self.check()?;
        match &*self.inner {
            Inner::InProc { router, key, slots } => {
                let _permit = slots
                    .acquire()
                    .await
                    .map_err(|_| BackendError::Unavailable("uplink stopped".into()))?;
                Box::pin(Inner::call(
                    router,
                    key,
                    Method::POST,
                    route::VOUCH,
                    Some(encode_body(&req)),
                ))
                .await
            }
            Inner::Https(h) => h.vouch(req).await,
        }
    }

    async fn report(&self, report: SessionReport) -> Result<SessionReportAnswer, BackendError> {
        self.check()?;
        match &*self.inner {
            Inner::InProc { router, key, slots } => {
                let _permit = slots
                    .acquire()
                    .await
                    .map_err(|_| BackendError::Unavailable("uplink stopped".into()))?;
                Box::pin(Inner::call(
                    router,
                    key,
                    Method::POST,
                    route::SESSIONS,
                    Some(encode_body(&report)),
                ))
                .await
            }
            Inner::Https(h) => h.report(report).await,
        }
    }

    async fn feed(&self, after: u64) -> Result<FeedBatch, BackendError> {
        // A dead uplink hangs the long-poll until it comes back.
        let mut rx = self.up.subscribe();
        let _ = rx.wait_for(|up| *up).await;
        match &*self.inner {
            Inner::InProc { router, key, .. } => {
                Box::pin(Inner::call(
                    router,
                    key,
                    Method::GET,
                    &format!("{}?after={after}", route::FEED),
                    None,
                ))
                .await
            }
            Inner::Https(h) => h.feed(after).await,
        }
    }

    async fn anchor_updates(&self, after: u32) -> Result<AnchorUpdateBatch, BackendError> {
        self.check()?;
        match &*self.inner {
            Inner::InProc { router, key, .. } => {
                Box::pin(Inner::call(
                    router,
                    key,
                    Method::GET,
                    &format!("{}?after={after}", route::ANCHOR_UPDATES),
                    None,
                ))
                .await
            }
            Inner::Https(h) => h.anchor_updates(after).await,
        }
    }
}
