//! Test harness: the fake backend of `vouch_gateway::testing` (the
//! protocol's backend role behind the real gateway's `BackendApi`), the real
//! gateway's TCP server around it, and helpers to wait for events with a
//! deadline.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vouch_gateway::clock::TokioClock;
use vouch_gateway::driver::Context;
use vouch_gateway::metrics::Metrics;
use vouch_gateway::sessions::SessionTable;
use vouch_peripheral::backoff::BackoffConfig;
use vouch_peripheral::{
    Device, DeviceHandle, DriverConfig, DriverError, Event, Events, FileKeyStore, KeyStore,
    SessionInfo, TcpConnector,
};
use vouch_proto::handshake::gateway::GatewayConfig;
use vouch_proto::keys::PeripheralId;
use vouch_proto::testing::rng;
use vouch_proto::wire::Scope;

/// How long any test waits for something before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[allow(unused_imports)]
pub use vouch_gateway::testing::Mode;

/// The backend: registry, revocation, policy (one scope per device), and a
/// switch to take it down.
pub type Backend = vouch_gateway::testing::FakeBackend;

/// The real gateway's view of the backend.
pub type Api = Arc<Backend>;

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
            backend: backend.clone(),
            clock: TokioClock::new(),
            table,
            metrics: Arc::new(Metrics::new().unwrap()),
            idle_timeout: Duration::from_secs(600),
            reports: Default::default(),
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
