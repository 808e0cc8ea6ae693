//! Test harness: an in-process backend built from the protocol's backend role
//! (implementing the real gateway's `BackendApi`), the real gateway's TCP
//! server around it, and helpers to wait for events with a deadline.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vouch_gateway::backend_client::{BackendApi, BackendError};
use vouch_gateway::clock::TokioClock;
use vouch_gateway::driver::Context;
use vouch_gateway::metrics::Metrics;
use vouch_gateway::sessions::SessionTable;
use vouch_peripheral::backoff::BackoffConfig;
use vouch_peripheral::{
    Device, DeviceHandle, DriverConfig, DriverError, Event, Events, FileKeyStore, KeyStore,
    SessionInfo, TcpConnector,
};
use vouch_proto::anchor::{AnchorBundle, AnchorSet};
use vouch_proto::error::Refusal;
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::gateway::GatewayConfig;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    FeedBatch, PeripheralInfo, SessionReport, SessionReportAnswer, SessionVerdict, VouchAnswer,
    VouchRequest, Vouched,
};
use vouch_proto::wire::{Hello, Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::Timestamp;

/// How long any test waits for something before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What the backend does with a hello it authenticated.
pub enum Mode {
    /// Vouch as a real backend does.
    Honest,
    /// Sign the vouch with a key the device does not trust, under a key id it
    /// does (a rogue backend behind a rogue gateway).
    RogueSigner(BackendKeys),
    /// Answer with a genuine vouch issued for another peripheral's hello (a
    /// gateway presenting someone else's vouch).
    OtherPeripheral(IdentityKey),
}

/// The backend: registry, revocation, policy (one scope per device), and a
/// switch to take it down.
pub struct Backend {
    /// What every key pair of this backend is drawn from (see [`Backend::future_keys`]).
    seed: u64,
    keys: Mutex<Vec<Arc<BackendKeys>>>,
    pub gateway: IdentityKey,
    registry: Mutex<HashMap<PeripheralId, (PublicKey, Scope)>>,
    revoked: Mutex<HashSet<PeripheralId>>,
    pub down: AtomicBool,
    pub mode: Mutex<Mode>,
    /// Vouch requests that reached the (up) backend.
    pub requests: AtomicUsize,
    /// Of those, the ones refused.
    pub refusals: AtomicUsize,
    pub lifetimes: Mutex<Lifetimes>,
}

impl Backend {
    pub fn new(seed: u64) -> Arc<Self> {
        let mut r = rng(seed);
        let keys = BackendKeys::generate(KeyId(1), &mut r);
        let gateway = IdentityKey::generate(&mut r);
        Arc::new(Self {
            seed,
            keys: Mutex::new(vec![Arc::new(keys)]),
            gateway,
            registry: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            down: AtomicBool::new(false),
            mode: Mutex::new(Mode::Honest),
            requests: AtomicUsize::new(0),
            refusals: AtomicUsize::new(0),
            lifetimes: Mutex::new(Lifetimes {
                session_s: 3600,
                resumption_s: 86_400,
            }),
        })
    }

    /// Key pair `kid` (2 and above) as this backend creates it in advance:
    /// the devices hold a commitment to key 2 from provisioning, key 2's
    /// rotation commits to key 3, and so on (SPEC.md §2.3).
    pub fn future_keys(&self, kid: u8) -> BackendKeys {
        BackendKeys::generate(KeyId(kid), &mut rng(self.seed * 1_000 + u64::from(kid)))
    }

    /// Adds a backend key pair (rotation).
    pub fn add_keys(&self, keys: BackendKeys) -> Arc<BackendKeys> {
        let keys = Arc::new(keys);
        self.keys.lock().unwrap().push(keys.clone());
        keys
    }

    pub fn keys(&self, kid: u8) -> Arc<BackendKeys> {
        self.keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid() == KeyId(kid))
            .cloned()
            .expect("backend key")
    }

    /// The bundle `vouch-backend export-anchor` would write (key id 1).
    pub fn bundle(&self) -> AnchorBundle {
        AnchorBundle::from_anchor_set(&AnchorSet::new(
            self.keys(1).anchor(),
            self.future_keys(2).anchor().digest(),
            0,
        ))
    }

    pub fn enroll(&self, public: PublicKey, scope: Scope) -> PeripheralId {
        let id = PeripheralId::derive(&public);
        self.registry.lock().unwrap().insert(id, (public, scope));
        id
    }

    pub fn revoke(&self, id: PeripheralId) {
        self.revoked.lock().unwrap().insert(id);
    }

    pub fn reinstate(&self, id: PeripheralId) {
        self.revoked.lock().unwrap().remove(&id);
    }

    /// SPEC.md §5.3, as the reference backend logic of `vouch_proto::testing`.
    pub fn answer(&self, req: &VouchRequest) -> VouchAnswer {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let answer = self.vouched(req);
        if answer.is_none() {
            self.refusals.fetch_add(1, Ordering::SeqCst);
        }
        answer.map_or(VouchAnswer::Refused(Refusal::Denied), VouchAnswer::Vouched)
    }

    fn vouched(&self, req: &VouchRequest) -> Option<Vouched> {
        let hello = Hello::peek(&req.hello).ok()?;
        let keys = self
            .keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid() == hello.anchor)
            .cloned()?;
        let opened = open_hello(&req.hello, &keys).ok()?;
        let id = opened.claimed_peripheral();
        if self.revoked.lock().unwrap().contains(&id) {
            return None;
        }
        let (public, scope) = *self.registry.lock().unwrap().get(&id)?;
        let verified = opened.verify(&public).ok()?;
        let grant = VouchGrant {
            gateway_key: self.gateway.public_key(),
            gateway_ephemeral: req.gateway_ephemeral,
            scope,
            lifetimes: *self.lifetimes.lock().unwrap(),
        };
        let info = |id, public_key| PeripheralInfo {
            id,
            public_key,
            group: Some("lab".into()),
            attributes: vec![],
            scope,
        };
        let vouched = match &*self.mode.lock().unwrap() {
            Mode::Honest => Vouched {
                vouch: verified.vouch(&keys, &grant),
                peripheral: info(id, public),
            },
            Mode::RogueSigner(rogue) => Vouched {
                vouch: verified.vouch(rogue, &grant),
                peripheral: info(id, public),
            },
            Mode::OtherPeripheral(other) => {
                // A real, backend-signed vouch, but for another device's
                // hello (and so its TH1 and id).
                let other_id = PeripheralId::derive(&other.public_key());
                let mut hs = PeripheralHandshake::start(
                    &PeripheralConfig::default(),
                    other_id,
                    other,
                    &AnchorSet::new(keys.anchor(), keys.anchor().digest(), 0),
                    Timestamp(0),
                    &mut rng(99),
                )
                .ok()?;
                let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
                let n = hs.poll_transmit(&mut buf)?;
                let theirs = open_hello(&buf[..n], &keys)
                    .ok()?
                    .verify(&other.public_key())
                    .ok()?;
                Vouched {
                    vouch: theirs.vouch(&keys, &grant),
                    peripheral: info(other_id, other.public_key()),
                }
            }
        };
        Some(vouched)
    }
}

/// The real gateway's view of the backend.
pub struct Api(pub Arc<Backend>);

impl BackendApi for Api {
    async fn vouch(&self, req: VouchRequest) -> Result<VouchAnswer, BackendError> {
        if self.0.down.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("connection refused".into()));
        }
        Ok(self.0.answer(&req))
    }

    async fn report(&self, report: SessionReport) -> Result<SessionReportAnswer, BackendError> {
        if self.0.down.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("connection refused".into()));
        }
        Ok(SessionReportAnswer {
            items: vec![SessionVerdict::Accepted; report.events.len()],
        })
    }

    async fn feed(&self, _after: u64) -> Result<FeedBatch, BackendError> {
        std::future::pending().await
    }
}

/// The real gateway (vouch-gateway's TCP server and drivers) on loopback.
pub struct Gateway {
    pub ctx: Arc<Context<Api, TokioClock>>,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    endpoint: Arc<vouch_gateway::endpoint::Gateway<Api, TokioClock>>,
}

impl Gateway {
    /// A gateway on a fresh port with a fresh session table.
    pub async fn start(backend: &Arc<Backend>) -> Self {
        Self::start_on(
            backend,
            "127.0.0.1:0".parse().unwrap(),
            SessionTable::new(100),
        )
        .await
    }

    /// A gateway on `addr`, with `table` (the same table keeps the tickets
    /// across a restart).
    pub async fn start_on(
        backend: &Arc<Backend>,
        addr: SocketAddr,
        table: Arc<SessionTable>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let ctx = Arc::new(Context {
            config: GatewayConfig::new(backend.gateway.public_key()),
            backend: Api(backend.clone()),
            clock: TokioClock::new(),
            table,
            metrics: Arc::new(Metrics::new().unwrap()),
            idle_timeout: Duration::from_secs(600),
        });
        let (stop, shutdown) = watch::channel(false);
        let endpoint = vouch_gateway::endpoint::Gateway::with_context(
            ctx.clone(),
            vouch_gateway::endpoint::SWEEP_EVERY,
            shutdown,
        );
        let task = tokio::spawn(vouch_gateway::serve::tcp::serve_tcp(
            endpoint.clone(),
            listener,
            16,
            247,
        ));
        Self {
            ctx,
            addr,
            stop,
            task,
            endpoint,
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Stops the server; every session is closed (reason shutdown).
    pub async fn stop(self) -> Arc<SessionTable> {
        self.stop.send(true).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
        tokio::time::timeout(DEADLINE, self.endpoint.closed())
            .await
            .expect("sessions close");
        self.ctx.table.clone()
    }

    /// Waits until `f` holds of the session table.
    pub async fn wait_until(&self, what: &str, f: impl Fn(&SessionTable) -> bool) {
        wait_until(what, || f(&self.ctx.table)).await
    }
}

/// Polls `f` until it holds, failing after [`DEADLINE`]. For state that has
/// no event to wait on (the gateway's table); polled, not slept on.
pub async fn wait_until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Driver settings for tests: short backoff and handshake timeout.
pub fn fast_config() -> DriverConfig {
    DriverConfig {
        handshake_timeout: Duration::from_secs(5),
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        stable_after: Duration::from_secs(30),
        close_timeout: Duration::from_secs(1),
        danger_silent: false,
    }
}

/// Waits for the first event that `pick` accepts (others are kept in `seen`).
pub async fn next_matching<T>(
    events: &mut Events,
    seen: &mut Vec<String>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.recv().await {
            let picked = pick(&ev);
            seen.push(format!("{ev:?}"));
            if let Some(t) = picked {
                return Some(t);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the driver stopped before {what}; events: {seen:#?}"),
        Err(_) => panic!("timed out waiting for {what}; events: {seen:#?}"),
    }
}

/// A provisioned device directory, enrolled in `backend`.
pub fn provisioned(backend: &Backend, dir: &std::path::Path, scope: Scope) -> PeripheralId {
    let mut store = FileKeyStore::generate(dir, None).unwrap();
    store.install_bundle(&backend.bundle()).unwrap();
    backend.enroll(store.public_key(), scope)
}

pub struct Running {
    pub handle: DeviceHandle,
    pub events: Events,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DriverError>>,
    pub seen: Vec<String>,
}

impl Running {
    /// Boots a device from its directory (as after a power cycle).
    pub fn boot(dir: &std::path::Path, url: &str, seed: u64) -> Self {
        let store = FileKeyStore::open(dir).unwrap();
        let connector = TcpConnector::from_url(url, 247).unwrap();
        let (device, handle, events) = Device::with_rng(store, connector, fast_config(), rng(seed));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(device.run(async move {
            let _ = stopped.await;
        }));
        Self {
            handle,
            events,
            stop: Some(stop),
            task,
            seen: Vec::new(),
        }
    }

    pub async fn established(&mut self) -> SessionInfo {
        next_matching(&mut self.events, &mut self.seen, "a session", |e| match e {
            Event::Established(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    pub async fn data(&mut self) -> Vec<u8> {
        next_matching(&mut self.events, &mut self.seen, "data", |e| match e {
            Event::Data(d) => Some(d.clone()),
            _ => None,
        })
        .await
    }

    pub async fn session_end(&mut self) -> String {
        next_matching(
            &mut self.events,
            &mut self.seen,
            "the session's end",
            |e| match e {
                Event::SessionEnded(end) => Some(format!("{end:?}")),
                _ => None,
            },
        )
        .await
    }

    pub async fn handshake_failure(&mut self) -> String {
        next_matching(
            &mut self.events,
            &mut self.seen,
            "a failed handshake",
            |e| match e {
                Event::HandshakeFailed(err) => Some(format!("{err:?}")),
                _ => None,
            },
        )
        .await
    }

    pub async fn retry(&mut self) -> (Duration, u32) {
        next_matching(&mut self.events, &mut self.seen, "a retry", |e| match e {
            Event::Retrying { delay, failures } => Some((*delay, *failures)),
            _ => None,
        })
        .await
    }

    /// Shuts the device down (close record, reason shutdown) and waits.
    pub async fn shutdown(mut self) -> Vec<String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("driver stops")
            .unwrap()
            .unwrap();
        while let Ok(ev) = self.events.try_recv() {
            self.seen.push(format!("{ev:?}"));
        }
        self.seen
    }
}
