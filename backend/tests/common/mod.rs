//! Shared test harness: a backend per test on SQLite or on a fresh
//! PostgreSQL database, admin and gateway requests through `oneshot`, and
//! real protocol devices (peripheral and gateway state machines).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Once;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use vouch_backend::config::Config;
use vouch_backend::datadir::{self, DataDir, InitOutcome};
use vouch_backend::store::Store;
use vouch_backend::{app, AppState, ClientIdentity};
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::gateway::{GatewayConfig, GatewayEvent, GatewayHandshake};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, PeripheralId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{encode_body, VouchRequest, CONTENT_TYPE};
use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
use vouch_proto::Timestamp;

pub const PG_SKIP: &str = "PostgreSQL tests SKIPPED: DATABASE_URL not set";

/// Which database a test runs on.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    Postgres {
        admin_url: String,
        url: String,
        name: String,
    },
}

impl Db {
    /// A fresh PostgreSQL database, or `None` (with a loud message) when
    /// `DATABASE_URL` is not set.
    pub async fn postgres() -> Option<Db> {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            static ONCE: Once = Once::new();
            ONCE.call_once(|| {
                // Written to the raw handle, not with eprintln!, so that the
                // test harness's output capture does not swallow it.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "\n=== {PG_SKIP} ===\n");
            });
            println!("{PG_SKIP}");
            return None;
        };
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        let name = format!("vouch_test_{}", hex::encode(b));
        let mut conn = sqlx::AnyConnection::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = replace_db(&admin_url, &name);
        Some(Db::Postgres {
            admin_url,
            url,
            name,
        })
    }

    /// Drops a PostgreSQL test database.
    pub async fn cleanup(&self) {
        if let Db::Postgres {
            admin_url, name, ..
        } = self
        {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::AnyConnection::connect(admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
                conn.close().await.ok();
            }
        }
    }

    pub fn url_for(&self, dir: &std::path::Path) -> String {
        match self {
            Db::Sqlite => datadir::sqlite_url(dir),
            Db::Postgres { url, .. } => url.clone(),
        }
    }
}

/// `postgres://u:p@h:port/db?x` with the database replaced.
pub fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{db}?{q}"),
        None => format!("{host}/{db}"),
    }
}

/// Generates `mod sqlite { #[tokio::test] fn NAME }` and `mod postgres { … }`
/// running `case(db)` on each engine.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::Db::postgres().await {
                        super::$name(db.clone()).await;
                        db.cleanup().await;
                    }
                }
            )*
        }
    };
}

/// A backend for one test.
pub struct Backend {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub router: Router,
    pub token: String,
    pub store: Store,
    pub db: Db,
}

impl Backend {
    pub async fn new(db: &Db) -> Backend {
        Self::with_config(db, Config::default()).await
    }

    pub async fn with_config(db: &Db, config: Config) -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = match datadir::init(dir.path(), &[]).expect("init") {
            InitOutcome::Created { admin_token } => admin_token.to_string(),
            InitOutcome::AlreadyInitialized => panic!("fresh dir"),
        };
        let data = DataDir::load(dir.path()).expect("load");
        let store = Store::open(&db.url_for(dir.path()))
            .await
            .expect("open store");
        let state = AppState::new(store.clone(), data, config)
            .await
            .expect("state");
        let router = app(state.clone());
        Backend {
            dir,
            state,
            router,
            token,
            store,
            db: db.clone(),
        }
    }

    /// The anchor set a device is provisioned with now (`export-anchor`):
    /// before any rotation, the data directory's key 1 and the commitment
    /// to key 2.
    pub async fn anchors(&self) -> AnchorSet {
        vouch_backend::keyring::fleet(&self.state.store)
            .await
            .expect("the registered key ring")
    }

    /// An admin request with the init (first admin's) token; returns status
    /// and JSON (or Null).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.admin_as(&self.token, method, path, body).await
    }

    /// An admin request with `token`.
    pub async fn admin_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send_json(req.body(body).expect("request")).await
    }

    pub async fn send_json(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, v)
    }

    /// The Prometheus text of `/metrics`, read with the admin token (it counts
    /// refusals by cause, so it is not public: issue 16).
    pub async fn metrics(&self) -> Vec<u8> {
        let req = Request::get("/metrics")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Body::empty())
            .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }

    /// A raw request with an optional gateway identity; returns status,
    /// content type and body bytes.
    pub async fn raw(
        &self,
        identity: Option<PublicKey>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let mut req = req.body(Body::from(body)).expect("request");
        req.extensions_mut().insert(ClientIdentity(identity));
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let ct = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, ct, bytes.to_vec())
    }

    /// POSTs a postcard body as gateway `key`.
    pub async fn gateway_post<T: serde::Serialize>(
        &self,
        key: &PublicKey,
        path: &str,
        body: &T,
    ) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self
            .raw(
                Some(*key),
                "POST",
                path,
                Some(CONTENT_TYPE),
                encode_body(body),
            )
            .await;
        (s, b)
    }

    /// Enrolls a peripheral through the admin API.
    pub async fn enroll_peripheral(&self, dev: &Device, group: Option<&str>) {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/admin/peripherals",
                Some(serde_json::json!({
                    "public_key": dev.key.public_key().to_string(),
                    "group": group,
                    "attributes": {"model": "m1"},
                })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Enrolls a gateway through the admin API; returns its certificate PEM.
    pub async fn enroll_gateway(&self, gw: &IdentityKey, site: Option<&str>) -> String {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/admin/gateways",
                Some(serde_json::json!({
                    "public_key": gw.public_key().to_string(),
                    "name": "gw",
                    "site": site,
                })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["certificate_pem"].as_str().expect("cert").to_owned()
    }

    /// Adds a policy rule through the admin API.
    pub async fn allow(&self, peripheral: &str, gateway: &str, scope: &str) {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/admin/policies",
                Some(serde_json::json!({
                    "peripheral": peripheral, "gateway": gateway, "scope": scope,
                })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// The audit entries about a peripheral with this action.
    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let (s, v) = self
            .admin("GET", &format!("/v1/admin/audit?{query}&limit=1000"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

/// A peripheral with its own key.
pub struct Device {
    pub key: IdentityKey,
    pub id: PeripheralId,
}

impl Device {
    pub fn new(seed: u8) -> Device {
        let key = IdentityKey::from_seed(&[seed; 32]);
        let id = PeripheralId::derive(&key.public_key());
        Device { key, id }
    }

    /// Starts a handshake; returns the machine and the Hello bytes.
    pub fn hello(&self, anchors: &AnchorSet, seed: u64) -> (PeripheralHandshake, Vec<u8>) {
        self.hello_as(self.id, anchors, seed)
    }

    /// A hello claiming `id` but signed with this device's key.
    pub fn hello_as(
        &self,
        id: PeripheralId,
        anchors: &AnchorSet,
        seed: u64,
    ) -> (PeripheralHandshake, Vec<u8>) {
        let mut r = rng(seed);
        let mut p = PeripheralHandshake::start(
            &PeripheralConfig::default(),
            id,
            &self.key,
            anchors,
            Timestamp(1_000),
            &mut r,
        )
        .expect("start");
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = p.poll_transmit(&mut buf).expect("hello");
        (p, buf[..n].to_vec())
    }
}

/// A gateway's handshake for one hello: returns the machine (waiting for the
/// vouch) and the request to forward.
pub fn gateway_takes(
    gw: &IdentityKey,
    hello: &[u8],
    seed: u64,
) -> (GatewayHandshake, VouchRequest) {
    let mut g = GatewayHandshake::new(GatewayConfig::new(gw.public_key()), Timestamp(1_000));
    g.handle_input(Timestamp(1_000), hello, &mut rng(seed))
        .expect("gateway takes hello");
    match g.poll_event() {
        Some(GatewayEvent::NeedVouch(req)) => (g, req),
        other => panic!("expected NeedVouch, got {other:?}"),
    }
}

/// Polls `f` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
