//! # vouch-tests
//!
//! The harness for the system tests: the real backend serving HTTPS on
//! loopback (SQLite in a temporary directory, or a fresh PostgreSQL database
//! when `DATABASE_URL` is set), real gateways (the gateway library's TCP
//! server, its HTTPS backend client with a client certificate), and real
//! devices (the peripheral library's driver over TCP). Every test gets its
//! own ports and directories, so tests run in parallel. Nothing sleeps a fixed
//! time to wait: waits poll a condition until a deadline.
//!
//! ```no_run
//! # async fn demo() {
//! use vouch_tests::{Backend, Gateway, Device};
//! let backend = Backend::start().await;
//! let gateway = Gateway::start(&backend, "site-a").await;
//! let device = Device::enroll(&backend, "meters").await;
//! backend.allow("group:meters", "site:site-a", "telemetry,command").await;
//! let mut running = device.run(&gateway).await;
//! running.established().await;
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vouch_backend::config::Config;
use vouch_backend::datadir::{self, DataDir, InitOutcome};
use vouch_backend::server::Transport;
use vouch_backend::store::Store;
use vouch_backend::{app, pki, AppState};
use vouch_gateway::backend_client::{BackendApi, HttpBackend, HttpBackendConfig};
use vouch_gateway::certificate::{self, CertificateInfo, CertificateWatch, Renewal};
use vouch_gateway::clock::{Clock, SystemClock};
use vouch_gateway::endpoint::{Parts, Settings};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::state::{StateBinding, StateDir};
use vouch_peripheral::{Device as Driver, DriverConfig, Event, MemoryKeyStore, TcpConnector};
use vouch_proto::anchor::AnchorBundle;
use vouch_proto::anchor::AnchorUpdate;
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::keys::{IdentityKey, PeripheralId, PublicKey};

/// How long any wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, or panics naming `what` at the deadline.
pub async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fresh_key() -> IdentityKey {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).expect("OS randomness");
    IdentityKey::from_seed(&seed)
}

/// The database a backend runs on.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite in the data directory.
    Sqlite,
    /// A fresh PostgreSQL database (dropped with the backend's directory).
    Postgres(String),
}

impl Db {
    /// A fresh PostgreSQL database from `DATABASE_URL`, or `None` with a loud
    /// note when it is not set.
    pub async fn postgres() -> Option<Db> {
        let Ok(admin) = std::env::var("DATABASE_URL") else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n=== PostgreSQL tests SKIPPED: DATABASE_URL not set ===\n"
            );
            return None;
        };
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).expect("random");
        let name = format!("vouch_e2e_{}", hex::encode(b));
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let (base, _) = admin
            .rsplit_once('/')
            .expect("DATABASE_URL has a database name");
        Some(Db::Postgres(format!("{base}/{name}")))
    }
}

/// The real backend, serving HTTPS on 127.0.0.1.
pub struct Backend {
    /// Removed with the backend.
    _dir: tempfile::TempDir,
    /// The data directory: the temporary directory, or a directory in it.
    data: std::path::PathBuf,
    db: Db,
    port: u16,
    token: String,
    ca_pem: String,
    admin: reqwest::Client,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>, AppState)>,
    /// The thread of an instance that can be killed
    /// ([`killable_instance`](Backend::killable_instance)): it serves on a
    /// runtime of its own, which [`kill`](Backend::kill) drops whole.
    runtime: Option<Killable>,
}

impl Backend {
    /// A backend on SQLite.
    pub async fn start() -> Self {
        Self::start_on(Db::Sqlite).await
    }

    /// A backend on `db`.
    pub async fn start_on(db: Db) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let InitOutcome::Created { admin_token } = datadir::init(dir.path(), &[]).expect("init")
        else {
            panic!("fresh directory already initialized");
        };
        let data = DataDir::load(dir.path()).expect("load data dir");
        let ca_pem = data.ca.cert_pem.clone();
        vouch_backend::install_crypto_provider();
        let tls = pki::client_config(&ca_pem, None).expect("client config");
        let admin = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("admin client");
        let mut b = Backend {
            data: dir.path().to_owned(),
            _dir: dir,
            db,
            port: 0,
            token: admin_token.to_string(),
            ca_pem,
            admin,
            running: None,
            runtime: None,
        };
        b.serve().await;
        b
    }

    /// A second backend instance on the same data and database (several
    /// `serve` processes on one PostgreSQL).
    pub async fn second_instance(&self) -> Self {
        let mut b = self.copy_unstarted();
        b.serve().await;
        b
    }

    /// Another instance on a copy of this one's data directory and the same
    /// database, not serving yet.
    fn copy_unstarted(&self) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&self.data, dir.path());
        Backend {
            data: dir.path().to_owned(),
            _dir: dir,
            db: self.db.clone(),
            port: 0,
            token: self.token.clone(),
            ca_pem: self.ca_pem.clone(),
            admin: self.admin.clone(),
            running: None,
            runtime: None,
        }
    }

    /// A second instance on the same data and database, like
    /// [`second_instance`](Self::second_instance), serving on a runtime of
    /// its own so that [`kill`](Self::kill) can end it as a crash would:
    /// every connection and request dropped mid-way, nothing drained. Only
    /// its URL and its counters are for the test; admin calls go to another
    /// instance.
    pub async fn killable_instance(&self) -> Self {
        let mut b = self.copy_unstarted();
        b.revive().await;
        b
    }

    /// Kills a [`killable_instance`](Self::killable_instance): its runtime
    /// is dropped with every task on it (listener, connections, requests in
    /// flight, its database connections).
    pub fn kill(&mut self) {
        let k = self.runtime.take().expect("a killable instance that runs");
        // Nothing is stopped in order: the tasks are dropped where they are.
        self.running = None;
        let _ = k.kill.send(());
        let _ = k.thread.join();
    }

    /// Starts a killed [`killable_instance`](Self::killable_instance)
    /// again, on the same port, on a fresh runtime in a thread of its own.
    pub async fn revive(&mut self) {
        assert!(self.runtime.is_none(), "the instance runs");
        let (data, db, port) = (self.data.clone(), self.db.clone(), self.port);
        let (started_tx, started) = oneshot::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let serving = rt.block_on(async {
                // The killed runtime may hold its port a moment longer.
                let start = tokio::time::Instant::now();
                loop {
                    match serve_on(&data, &db, port).await {
                        Ok(serving) => return serving,
                        Err(e) => {
                            assert!(start.elapsed() < DEADLINE, "bind backend: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
            let _ = started_tx.send(serving);
            // Serves until killed (or the test's end drops the sender).
            let _ = killed.recv();
            rt.shutdown_background();
        });
        let (port, running) = started.await.expect("the instance starts");
        self.port = port;
        self.running = Some(running);
        self.runtime = Some(Killable { kill, thread });
    }

    /// Vouch answers this instance gave since it started, by outcome
    /// (`vouched`, `denied`, `busy`).
    pub fn vouch_answers(&self, outcome: &str) -> u64 {
        self.state()
            .metrics
            .answers
            .with_label_values(&[outcome])
            .get()
    }

    /// `vouch-backend backup --to dest` while this backend serves.
    pub async fn backup(&self, dest: &Path) -> vouch_backend::backup::Backup {
        let (_, _, state) = self.running.as_ref().expect("the backend is running");
        vouch_backend::backup::backup(&self.data, &state.store, dest)
            .await
            .expect("backup")
    }

    /// `vouch-backend restore --from backup` into a new data directory on
    /// `db` (for PostgreSQL, a database `pg_restore` filled), then serves
    /// it. Panics if the restore fails, its audit chain included.
    pub async fn restored(&self, backup: &Path, db: Db) -> (Self, vouch_backend::backup::Restored) {
        Self::from_backup(backup, db, &self.token).await
    }

    /// Like [`restored`](Self::restored), from any data directory or backup
    /// (one an earlier version wrote, say), whose admin token is `token`.
    pub async fn from_backup(
        backup: &Path,
        db: Db,
        token: &str,
    ) -> (Self, vouch_backend::backup::Restored) {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let url = match &db {
            Db::Sqlite => None,
            Db::Postgres(u) => Some(u.as_str()),
        };
        let restored = vouch_backend::backup::restore(backup, &data, url)
            .await
            .expect("restore");
        let ca_pem = DataDir::load(&data).expect("load data dir").ca.cert_pem;
        vouch_backend::install_crypto_provider();
        let tls = pki::client_config(&ca_pem, None).expect("client config");
        let admin = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("admin client");
        let mut b = Backend {
            data,
            _dir: dir,
            db,
            port: 0,
            token: token.to_owned(),
            ca_pem,
            admin,
            running: None,
            runtime: None,
        };
        b.serve().await;
        (b, restored)
    }

    /// The database URL of this backend.
    pub fn database_url(&self) -> String {
        match &self.db {
            Db::Sqlite => datadir::sqlite_url(&self.data),
            Db::Postgres(u) => u.clone(),
        }
    }

    async fn serve(&mut self) {
        let (port, running) = serve_on(&self.data, &self.db, self.port)
            .await
            .expect("bind backend");
        self.port = port;
        self.running = Some(running);
    }

    /// Stops serving (in-flight requests drain); the data stays.
    pub async fn stop(&mut self) {
        if let Some((stop, task, state)) = self.running.take() {
            let _ = stop.send(());
            let _ = task.await;
            state.store.close().await;
        }
    }

    /// Serves again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.serve().await;
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA gateways pin.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// One admin API call; returns the status and the JSON body.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url());
        let mut req = match method {
            "GET" => self.admin.get(url),
            "DELETE" => self.admin.delete(url),
            _ => self.admin.post(url),
        }
        .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// Enrolls a gateway key; returns its client certificate.
    pub async fn enroll_gateway(&self, key: &PublicKey, site: &str) -> String {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/admin/gateways",
                Some(json!({"public_key": key.to_string(), "site": site})),
            )
            .await;
        assert!(s == 201 || s == 200, "enroll gateway: {s} {v}");
        v["certificate_pem"]
            .as_str()
            .expect("certificate_pem")
            .to_string()
    }

    /// Enrolls a peripheral key in `group`.
    pub async fn enroll_peripheral(&self, key: &PublicKey, group: &str) -> PeripheralId {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/admin/peripherals",
                Some(json!({"public_key": key.to_string(), "group": group})),
            )
            .await;
        assert!(s == 201 || s == 200, "enroll peripheral: {s} {v}");
        PeripheralId::derive(key)
    }

    /// Adds a policy rule.
    pub async fn allow(&self, peripheral: &str, gateway: &str, scope: &str) {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/admin/policies",
                Some(json!({"peripheral": peripheral, "gateway": gateway, "scope": scope})),
            )
            .await;
        assert!(s == 201 || s == 200, "policy: {s} {v}");
    }

    /// Runs a lifecycle action (`suspend`, `reinstate`, `revoke`) on a peripheral.
    pub async fn peripheral_action(&self, id: &PeripheralId, action: &str) {
        let (s, v) = self
            .admin(
                "POST",
                &format!("/v1/admin/peripherals/{id}/{action}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{action} {id}: {v}");
    }

    /// Runs a lifecycle action on a gateway.
    pub async fn gateway_action(&self, key: &PublicKey, action: &str) {
        let (s, v) = self
            .admin("POST", &format!("/v1/admin/gateways/{key}/{action}"), None)
            .await;
        assert_eq!(s, 200, "{action} gateway: {v}");
    }

    /// `vouch-backend keys rotate` on this backend's data and database:
    /// reveals the committed next key with a `Rotate` signed by it and
    /// creates the key after it (SPEC.md §7.7). Then reloads the running
    /// instance's key ring, as its background task does within a second, so
    /// that the instance serves the new key and hands its `Rotate` to
    /// gateways at once.
    pub async fn rotate_key(&self) -> AnchorUpdate {
        let state = self.state();
        let data = DataDir::load(&self.data).expect("load data dir");
        let rotation = vouch_backend::keyring::rotate(&data, &state.store, "test")
            .await
            .expect("rotate");
        vouch_backend::keyring::reload(state)
            .await
            .expect("reload the key ring");
        rotation.update
    }

    /// Backend key pair `kid` as its files in the data directory hold it:
    /// what a thief of that host's disk has (attack tests).
    pub fn danger_steal_key(&self, kid: vouch_proto::keys::KeyId) -> BackendKeys {
        datadir::load_key_pair(&self.data, kid)
            .expect("read the key files")
            .expect("the key pair is in the data directory")
    }

    /// The backend CA with its private key, as the data directory holds it:
    /// to issue certificates the backend would not (expired ones, for the
    /// tests of what a gateway says about them).
    pub fn danger_ca(&self) -> pki::CaMaterial {
        DataDir::load(&self.data)
            .expect("load the data directory")
            .ca
    }

    fn state(&self) -> &AppState {
        let (_, _, state) = self.running.as_ref().expect("the backend is running");
        state
    }

    /// The anchor bundle devices are provisioned with.
    pub async fn anchor(&self) -> AnchorBundle {
        let (s, v) = self.admin("GET", "/v1/admin/anchor", None).await;
        assert_eq!(s, 200, "anchor: {v}");
        serde_json::from_value(v).expect("anchor bundle")
    }

    /// Vouch decisions the backend audited for requests from a gateway.
    pub async fn vouch_audit_of_gateway(&self, key: &PublicKey) -> Vec<Value> {
        let (s, v) = self
            .admin(
                "GET",
                &format!("/v1/admin/audit?gateway={key}&action=vouch&limit=1000"),
                None,
            )
            .await;
        assert_eq!(s, 200, "audit: {v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Audit entries about a peripheral.
    pub async fn audit_of(&self, id: &PeripheralId) -> Vec<Value> {
        let (s, v) = self
            .admin(
                "GET",
                &format!("/v1/admin/audit?peripheral={id}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(s, 200, "audit: {v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some((stop, task, state)) = self.running.take() {
            let _ = stop.send(());
            task.abort();
            state.shutdown();
        }
        if let Some(k) = self.runtime.take() {
            let _ = k.kill.send(());
        }
    }
}

/// A backend instance serving in a thread of its own, until `kill` says.
struct Killable {
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// A serving backend: its stop signal, its server task, its state.
type Serving = (oneshot::Sender<()>, JoinHandle<()>, AppState);

/// Serves the data directory `data` on `db` at 127.0.0.1:`port` (0: any),
/// on the runtime this runs on; returns the port. Fails only if the port
/// cannot be bound.
async fn serve_on(data_dir: &Path, db: &Db, port: u16) -> std::io::Result<(u16, Serving)> {
    let data = DataDir::load(data_dir).expect("load data dir");
    let (cert, key) = data.server_tls().expect("server TLS");
    let ca_pem = data.ca.cert_pem.clone();
    let url = match db {
        Db::Sqlite => data.sqlite_url(),
        Db::Postgres(u) => u.clone(),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    let store = Store::open(&url).await.expect("open store");
    let state = AppState::new(store, data, Config::default())
        .await
        .expect("state");
    let tls = pki::server_config(
        &ca_pem,
        &cert,
        &key,
        None,
        state.metrics.client_cert_rejections(),
    )
    .expect("server config");
    let (stop, stopped) = oneshot::channel::<()>();
    let router = app(state.clone());
    let st = state.clone();
    let task = tokio::spawn(async move {
        let _ = vouch_backend::server::serve(
            listener,
            router,
            Transport::Tls(Arc::new(tls)),
            async move {
                let _ = stopped.await;
                st.shutdown();
            },
        )
        .await;
    });
    Ok((port, (stop, task, state)))
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if path.is_file()
            && !path.extension().is_some_and(|e| {
                e.to_str()
                    .is_some_and(|e| e.starts_with("sqlite") || e == "db")
            })
        {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

/// The gateway endpoint as the daemon runs it.
type TestGateway = vouch_gateway::endpoint::Gateway<HttpBackend, SystemClock>;

/// A real gateway: the TCP server, the HTTPS backend client, the revocation
/// feed, the trust-anchor updates (fetched at start and at
/// [`AnchorUpdates::request_fetch`](vouch_gateway::anchors::AnchorUpdates::request_fetch),
/// delivered after every handshake).
pub struct Gateway {
    /// Its identity.
    pub key: PublicKey,
    key_pem: zeroize::Zeroizing<String>,
    cert_pem: String,
    ca_pem: String,
    /// The backend instances it knows, in its order of preference.
    backend_urls: Vec<String>,
    port: u16,
    /// Its session table (sessions, inbound messages, sending).
    pub table: Arc<SessionTable>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    running: Option<(watch::Sender<bool>, Arc<TestGateway>, JoinHandle<()>)>,
    /// Its backend client while it runs.
    client: Option<HttpBackend>,
    /// Its client certificate, renewed as the daemon renews it (not before
    /// two thirds of its lifetime: in a test, only when asked to,
    /// [`renew_certificate`](Self::renew_certificate)).
    renewal: Option<Renewal>,
    /// Its state directory (`[state] dir`), for a gateway that keeps its
    /// tickets across restarts.
    state: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Creates a gateway identity, enrolls it at `site`, and starts it.
    pub async fn start(backend: &Backend, site: &str) -> Self {
        let url = backend.url();
        Self::start_with_backend_url(backend, site, &url).await
    }

    /// Like [`start`](Self::start), but talking to the backend instance at
    /// `url` (another instance on the same database).
    pub async fn start_with_backend_url(backend: &Backend, site: &str, url: &str) -> Self {
        Self::start_inner(backend, site, &[url.to_owned()], false).await
    }

    /// Like [`start`](Self::start), knowing the backend instances at
    /// `urls` (on one database) and preferring them in that order (the
    /// daemon shuffles them; here the test chooses).
    pub async fn start_with_backend_urls(backend: &Backend, site: &str, urls: &[String]) -> Self {
        Self::start_inner(backend, site, urls, false).await
    }

    /// The backend instance its next request goes to.
    pub fn backend_in_use(&self) -> Option<String> {
        self.client.as_ref().and_then(HttpBackend::in_use)
    }

    /// Like [`start`](Self::start), with a state directory: tickets and the
    /// revocation feed's cursor survive [`restart`](Self::restart), as with
    /// the daemon's `[state] dir`.
    pub async fn start_with_state(backend: &Backend, site: &str) -> Self {
        let url = backend.url();
        Self::start_inner(backend, site, &[url], true).await
    }

    /// A gateway enrolled before (an earlier version's, say): its identity
    /// key and client certificate (PEM), talking to `backend`.
    pub async fn start_with_identity(backend: &Backend, key_pem: &str, cert_pem: &str) -> Self {
        let key = IdentityKey::from_pkcs8_pem(key_pem).expect("identity key PEM");
        Self::build(backend, key, cert_pem.to_owned(), &[backend.url()], false).await
    }

    async fn start_inner(backend: &Backend, site: &str, urls: &[String], persistent: bool) -> Self {
        let key = fresh_key();
        let cert_pem = backend.enroll_gateway(&key.public_key(), site).await;
        Self::build(backend, key, cert_pem, urls, persistent).await
    }

    async fn build(
        backend: &Backend,
        key: IdentityKey,
        cert_pem: String,
        urls: &[String],
        persistent: bool,
    ) -> Self {
        let mut g = Gateway {
            key: key.public_key(),
            key_pem: key.to_pkcs8_pem().expect("pem"),
            cert_pem,
            ca_pem: backend.ca_pem().to_string(),
            backend_urls: urls.to_vec(),
            port: 0,
            table: SessionTable::new(10_000),
            metrics: Arc::new(Metrics::new().expect("metrics")),
            running: None,
            client: None,
            renewal: None,
            state: persistent.then(|| tempfile::tempdir().expect("tempdir")),
        };
        g.serve().await;
        g
    }

    async fn serve(&mut self) {
        // A new process on the same directory, when there is one.
        let dir = self
            .state
            .as_ref()
            .map(|dir| StateDir::open(dir.path()).expect("state directory"));
        let backend = HttpBackend::new(HttpBackendConfig {
            urls: self.backend_urls.clone(),
            shuffle: false,
            metrics: Some(self.metrics.clone()),
            ca_pem: self.ca_pem.as_bytes().to_vec(),
            cert_pem: self.cert_pem.as_bytes().to_vec(),
            key_pem: zeroize::Zeroizing::new(self.key_pem.as_bytes().to_vec()),
            request_timeout: Duration::from_secs(5),
            feed_timeout: Duration::from_secs(40),
            batch_window: Duration::from_millis(2),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(500),
        })
        .expect("backend client");
        self.client = Some(backend.clone());
        let info = certificate::check(
            self.cert_pem.as_bytes(),
            self.ca_pem.as_bytes(),
            &self.key,
            SystemClock.wall(),
        )
        .expect("the enrolled certificate");
        let renewal = Renewal {
            watch: CertificateWatch::new(info),
            file: None,
            ca_pem: self.ca_pem.as_bytes().to_vec(),
            identity: self.key,
            policy: certificate::RenewalPolicy::default(),
        };
        self.renewal = Some(renewal.clone());
        let (stop, shutdown) = watch::channel(false);
        let gateway = vouch_gateway::endpoint::Gateway::start(
            Parts {
                key: self.key,
                backend,
                clock: SystemClock,
                metrics: self.metrics.clone(),
                state: dir.as_ref().map(|dir| {
                    let binding = StateBinding {
                        gateway_key: self.key,
                        backend_url: self.backend_urls.first().cloned().unwrap_or_default(),
                    };
                    (dir, binding)
                }),
                settings: Settings {
                    max_tickets: 10_000,
                    idle_timeout: Duration::from_secs(600),
                    ..Settings::default()
                },
                certificate: Some(renewal),
            },
            shutdown,
        )
        .expect("open the state directory");
        self.table = gateway.table().clone();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind gateway");
        self.port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn({
            let gateway = gateway.clone();
            async move {
                let _ = vouch_gateway::serve::tcp::serve_tcp(gateway, listener, 1000, 247).await;
            }
        });
        self.running = Some((stop, gateway, server));
    }

    /// Waits until this gateway has applied every revocation-feed event the
    /// backend committed so far. A policy rule removed after the gateway
    /// started closes every session and drops every ticket when the gateway
    /// hears of it (SPEC.md §10.5); a device started before then would have
    /// its first session closed.
    pub async fn caught_up(&self) {
        let Some(client) = self.client.as_ref().filter(|_| self.running.is_some()) else {
            return;
        };
        let mut head = self.table.feed().position();
        while let Ok(batch) = client.feed_now(head).await {
            if batch.next <= head {
                break;
            }
            head = batch.next;
        }
        wait_for("the gateway to apply the feed", || {
            (self.table.feed().position() >= head).then_some(())
        })
        .await;
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Stops the gateway: sessions are closed (reason shutdown); tickets are
    /// lost with the process, unless it has a state directory
    /// ([`start_with_state`](Self::start_with_state)), where the last writes
    /// are flushed first.
    pub async fn stop(&mut self) {
        if let Some((stop, gateway, server)) = self.running.take() {
            let _ = stop.send(true);
            let _ = server.await;
            gateway.closed().await;
        }
        self.table.tickets().flush().await;
        self.table = SessionTable::new(10_000);
    }

    /// Starts a stopped gateway again on the same port (a new process; with
    /// a state directory it restores what the last one saved).
    pub async fn start_again(&mut self) {
        assert!(self.running.is_none(), "the gateway is running");
        self.serve().await;
    }

    /// Stops and starts again on the same port (a process restart).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.serve().await;
    }

    /// Renews the client certificate now, as the daemon does when its
    /// threshold is reached ([`certificate::renew`]): over mutual TLS, then
    /// the running gateway's backend client uses it for new connections.
    pub async fn renew_certificate(&self) -> Result<CertificateInfo, certificate::RenewalError> {
        let (Some(client), Some(renewal)) = (self.client.as_ref(), self.renewal.as_ref()) else {
            panic!("the gateway is not running");
        };
        let info = certificate::renew(client, renewal, SystemClock.wall()).await?;
        Ok(info)
    }

    /// The client certificate in use (what `vouch-gateway status` shows).
    pub fn certificate(&self) -> CertificateInfo {
        self.renewal
            .as_ref()
            .map(|r| r.watch.info())
            .expect("the gateway has run")
    }

    /// Stops and starts again on the same port, talking to `backend` (a
    /// backend restored from a backup, on the same CA) with the same
    /// identity and client certificate.
    pub async fn move_to(&mut self, backend: &Backend) {
        self.stop().await;
        self.backend_urls = vec![backend.url()];
        self.ca_pem = backend.ca_pem().to_string();
        self.serve().await;
    }

    /// Live sessions with `id`.
    pub fn has_session(&self, id: &PeripheralId) -> bool {
        self.table
            .sessions()
            .list()
            .iter()
            .any(|s| &s.peripheral == id)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some((stop, _gateway, server)) = self.running.take() {
            // The gateway's own tasks end with the shutdown signal.
            let _ = stop.send(true);
            server.abort();
        }
    }
}

/// A device identity enrolled in the backend and provisioned with its anchor.
pub struct Device {
    key_seed: [u8; 32],
    /// Its registry id.
    pub id: PeripheralId,
    anchor: AnchorBundle,
}

impl Device {
    /// Creates an identity, enrolls it in `group`, provisions the anchor.
    pub async fn enroll(backend: &Backend, group: &str) -> Self {
        let mut key_seed = [0u8; 32];
        getrandom::fill(&mut key_seed).expect("random");
        let key = IdentityKey::from_seed(&key_seed);
        let id = backend.enroll_peripheral(&key.public_key(), group).await;
        Device {
            key_seed,
            id,
            anchor: backend.anchor().await,
        }
    }

    /// A device identity the backend has never seen, with the same anchor.
    pub fn enroll_offline(like: &Device) -> Self {
        let mut key_seed = [0u8; 32];
        getrandom::fill(&mut key_seed).expect("random");
        let id = PeripheralId::derive(&IdentityKey::from_seed(&key_seed).public_key());
        Device {
            key_seed,
            id,
            anchor: like.anchor.clone(),
        }
    }

    /// Starts the device's driver against `gateway` (TCP).
    pub async fn run(&self, gateway: &Gateway) -> RunningDevice {
        gateway.caught_up().await;
        self.run_url(&gateway.url(), self.store()).await
    }

    /// A fresh in-memory key store with this identity and anchor (clones of
    /// one store share their state, like the same flash across reboots).
    pub fn store(&self) -> MemoryKeyStore {
        MemoryKeyStore::provisioned(
            IdentityKey::from_seed(&self.key_seed),
            self.anchor.to_anchor_set().expect("anchors"),
        )
    }

    /// Starts the driver with a given key store (to keep tickets across runs).
    pub async fn run_url(&self, url: &str, store: MemoryKeyStore) -> RunningDevice {
        run_device(url, store).await
    }
}

/// Starts a device driver with any key store (a
/// [`FileKeyStore`](vouch_peripheral::FileKeyStore) a device left on disk,
/// say) against the gateway at `url`.
pub async fn run_device<K>(url: &str, store: K) -> RunningDevice
where
    K: vouch_peripheral::KeyStore + Send + 'static,
{
    let connector = TcpConnector::from_url(url, 247).expect("connector");
    let config = DriverConfig::default();
    let (driver, handle, events) = Driver::new(store, connector, config).expect("device");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = driver
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    RunningDevice {
        handle,
        events,
        stop: Some(stop),
        task: Some(task),
        seen: Vec::new(),
    }
}

/// A running device driver.
pub struct RunningDevice {
    /// Sends application data.
    pub handle: vouch_peripheral::DeviceHandle,
    events: vouch_peripheral::Events,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Every event seen so far (as text, for failure messages).
    pub seen: Vec<String>,
}

impl RunningDevice {
    /// Waits for the next event matching `pred`, up to the deadline.
    pub async fn next_matching(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let r = tokio::time::timeout(DEADLINE, async {
            loop {
                let ev = self.events.recv().await.expect("device events ended");
                self.seen.push(format!("{ev:?}"));
                if pred(&ev) {
                    return ev;
                }
            }
        })
        .await;
        match r {
            Ok(ev) => ev,
            Err(_) => panic!("timed out waiting for {what}; events: {:?}", self.seen),
        }
    }

    /// Waits for an established session; returns whether it was resumed.
    pub async fn established(&mut self) -> bool {
        match self
            .next_matching("a session", |e| matches!(e, Event::Established(_)))
            .await
        {
            Event::Established(s) => s.resumed,
            _ => unreachable!(),
        }
    }

    /// Stops the driver (close with reason shutdown).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Device {
    /// The secret seed of this device's identity key, for tests that check
    /// it never appears anywhere it should not.
    pub fn danger_secret_seed(&self) -> [u8; 32] {
        self.key_seed
    }

    /// This device's identity key (tests that build raw handshakes).
    pub fn key(&self) -> IdentityKey {
        IdentityKey::from_seed(&self.key_seed)
    }

    /// The anchors it was provisioned with.
    pub fn anchors(&self) -> vouch_proto::anchor::AnchorSet {
        self.anchor.to_anchor_set().expect("anchors")
    }
}

/// Sends `first` (a Hello or ResumeHello) to the gateway at `url` on a fresh
/// TCP connection and returns the gateway's answer (a Response or an Alert),
/// keeping the link so the caller can go on.
pub async fn exchange(
    url: &str,
    first: &[u8],
) -> (Vec<u8>, vouch_gateway::transport::tcp::TcpLink) {
    use vouch_gateway::transport::Link;
    let addr = url.trim_start_matches("tcp://");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to gateway");
    let mut link =
        vouch_gateway::transport::tcp::TcpLink::new(stream, 247, Default::default()).expect("link");
    link.send(first).await.expect("send");
    let answer = tokio::time::timeout(DEADLINE, link.recv())
        .await
        .expect("the gateway answers")
        .expect("link")
        .expect("an answer, not a hang-up");
    (answer, link)
}
