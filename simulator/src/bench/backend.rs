//! The real backend over HTTPS against the raw crypto bound of one vouch: the
//! service (`app` and `server::serve`, TLS 1.3 with the gateway's client
//! certificate, SQLite in a temporary data directory or a fresh PostgreSQL
//! database) on its own Tokio runtime (threads
//! `vouch-srv`), driven over keep-alive connections by a reqwest client on
//! another runtime (threads `vouch-cli`) in this process. Hellos are made
//! before the clock starts. Per core = vouches ÷ the CPU time of the server's
//! threads (runtime workers and SQLite workers) from
//! `/proc/self/task/*/schedstat`; the client's CPU is not counted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use vouch_backend::config::{Config, Crypto, CryptoProvider};
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::model::{GatewaySelector, PeripheralSelector, Status};
use vouch_backend::server::{self, Transport};
use vouch_backend::store::{NewGateway, NewPeripheral, Store};
use vouch_backend::{app, pki, AppState};
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::backend::{open_hello, BackendKeys, VouchGrant};
use vouch_proto::handshake::hello_signature::DecodedKey;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{DhPublic, IdentityKey, PeripheralId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    decode_body, encode_body, VouchAnswer, VouchBatchAnswer, VouchBatchRequest, VouchRequest,
    CONTENT_TYPE,
};
use vouch_proto::wire::{Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::Timestamp;
use zeroize::Zeroizing;

use super::{this_thread_cpu_s, thread_cpu_s, BenchError};

/// Threads whose CPU counts as the server's. (PostgreSQL's own processes
/// are not counted: the figure is the service's CPU, on either engine.)
const SERVER_THREADS: &[&str] = &["vouch-srv", "sqlx-sqlite"];
/// Requests in flight.
const CONCURRENCY: usize = 32;
/// Items per batch request.
const BATCH: usize = 32;
/// Registered peripherals the hellos come from.
const DEVICES: u32 = 256;
const LIFETIMES: Lifetimes = Lifetimes {
    session_s: 3600,
    resumption_s: 86_400,
};

/// One configuration of the vouch path measured by [`measure`] (issue 21's
/// levers, one by one).
#[derive(Debug, Clone, Copy)]
pub(super) struct Lever {
    /// Its name in the report.
    pub(super) name: &'static str,
    /// The backend's `[crypto]` settings.
    pub(super) provider: CryptoProvider,
    /// Decoded keys kept (0: no cache).
    pub(super) decoded_keys: usize,
}

impl Lever {
    /// The configurations measured, each adding one lever to the one
    /// before; the last is the backend's default.
    pub(super) fn all() -> [Lever; 3] {
        let default = Crypto::default();
        [
            Lever {
                name: "dalek, no key cache (before issue 21)",
                provider: CryptoProvider::Dalek,
                decoded_keys: 0,
            },
            Lever {
                name: "+ aws-lc provider",
                provider: default.provider,
                decoded_keys: 0,
            },
            Lever {
                name: "+ decoded-key cache (default)",
                provider: default.provider,
                decoded_keys: default.decoded_keys,
            },
        ]
    }
}

/// One lever's rates.
pub(super) struct LeverRates {
    pub(super) lever: Lever,
    /// The raw crypto bound on this configuration's provider, µs per vouch.
    pub(super) bound_us: f64,
    pub(super) single_per_core: f64,
    pub(super) single_wall: f64,
    pub(super) batched_per_core: f64,
    pub(super) batched_wall: f64,
}

/// What [`measure`] found: every lever, the backend's default last.
pub(super) struct Throughput {
    pub(super) levers: Vec<LeverRates>,
    /// The raw crypto bound of the default configuration (its provider, the
    /// key decoded beforehand): the fastest one vouch's primitives go here.
    pub(super) bound_us: f64,
    pub(super) single_per_core: f64,
    pub(super) single_wall: f64,
    pub(super) batched_per_core: f64,
    pub(super) batched_wall: f64,
    pub(super) concurrency: usize,
    pub(super) batch: usize,
    pub(super) server_threads: usize,
    pub(super) database: &'static str,
}

fn step<E>(step: &'static str) -> impl FnOnce(E) -> BenchError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |e| BenchError::Backend {
        step,
        source: e.into(),
    }
}

struct Fleet {
    devices: Vec<(IdentityKey, PeripheralId)>,
    anchors: AnchorSet,
}

impl Fleet {
    fn new(anchors: AnchorSet) -> Self {
        let devices = (0..DEVICES)
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                let k = IdentityKey::from_seed(&seed);
                let id = PeripheralId::derive(&k.public_key());
                (k, id)
            })
            .collect();
        Self { devices, anchors }
    }

    /// `n` fresh hellos from the fleet's devices, as a gateway forwards them.
    fn hellos(&self, n: usize, seed: u64) -> Result<Vec<VouchRequest>, BenchError> {
        let mut r = rng(seed);
        (0..n)
            .map(|i| {
                let (key, id) = &self.devices[i % self.devices.len()];
                let mut p = PeripheralHandshake::start(
                    &PeripheralConfig::default(),
                    *id,
                    key,
                    &self.anchors,
                    Timestamp(0),
                    &mut r,
                )?;
                let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
                let len = p
                    .poll_transmit(&mut buf)
                    .ok_or(BenchError::Invariant("no Hello"))?;
                Ok(VouchRequest {
                    hello: buf[..len].to_vec(),
                    gateway_ephemeral: DhPublic([(i % 251) as u8 + 1; 32]),
                })
            })
            .collect()
    }
}

/// One vouch's primitives in a tight loop on this thread: open the sealed
/// hello (X25519, SHA-256, ChaCha20), verify the peripheral's signature
/// (its key decoded beforehand, as a backend with the decoded-key cache
/// has it), sign the vouch; on the provider `keys` are loaded into.
/// Microseconds of this thread's CPU per vouch.
fn crypto_bound(
    fleet: &Fleet,
    keys: &BackendKeys,
    gateway: PublicKey,
    n: usize,
) -> Result<f64, BenchError> {
    let hellos = fleet.hellos(n, 1)?;
    let registered: Vec<_> = fleet
        .devices
        .iter()
        .map(|(k, _)| DecodedKey::new(&k.public_key()))
        .collect();
    let t = Instant::now();
    let cpu0 = this_thread_cpu_s();
    for (i, req) in hellos.iter().enumerate() {
        let verified =
            open_hello(&req.hello, keys)?.verify_decoded(&registered[i % registered.len()])?;
        let vouch = verified.vouch(
            keys,
            &VouchGrant {
                gateway_key: gateway,
                gateway_ephemeral: req.gateway_ephemeral,
                scope: Scope::TELEMETRY,
                lifetimes: LIFETIMES,
            },
        );
        std::hint::black_box(vouch);
    }
    // CPU time of this thread where Linux tells it (the machine may be
    // shared), wall time otherwise.
    let elapsed = match (cpu0, this_thread_cpu_s()) {
        (Some(a), Some(b)) => b - a,
        _ => t.elapsed().as_secs_f64(),
    };
    Ok(elapsed * 1e6 / n as f64)
}

/// Measures, for every [`Lever`] in turn on a fresh backend, the raw bound
/// on `bound_n` vouches, then `n` single and `n` batched vouches over HTTPS,
/// on SQLite or, given `database_url`, on a fresh database of that
/// PostgreSQL server (dropped afterwards). Must not run inside a Tokio
/// runtime.
pub(super) fn measure(
    n: usize,
    bound_n: usize,
    database_url: Option<&str>,
) -> Result<Throughput, BenchError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut levers = Vec::new();
    let mut postgres_used = false;
    for lever in Lever::all() {
        let (rates, pg) = measure_lever(lever, n, bound_n, database_url, cores)?;
        postgres_used = pg;
        levers.push(rates);
    }
    let default = levers
        .last()
        .ok_or(BenchError::Invariant("no configuration measured"))?;
    Ok(Throughput {
        bound_us: default.bound_us,
        single_per_core: default.single_per_core,
        single_wall: default.single_wall,
        batched_per_core: default.batched_per_core,
        batched_wall: default.batched_wall,
        levers,
        concurrency: CONCURRENCY,
        batch: BATCH,
        server_threads: cores,
        database: if postgres_used {
            "PostgreSQL"
        } else {
            "SQLite"
        },
    })
}

/// [`measure`] for one configuration, on a backend of its own; also
/// returns whether it ran on PostgreSQL.
fn measure_lever(
    lever: Lever,
    n: usize,
    bound_n: usize,
    database_url: Option<&str>,
    cores: usize,
) -> Result<(LeverRates, bool), BenchError> {
    let dir = tempfile::tempdir()?;
    datadir::init(dir.path(), &[]).map_err(step("init the data directory"))?;
    let srv = runtime(cores, "vouch-srv")?;
    let cli = runtime(cores, "vouch-cli")?;

    let gateway = IdentityKey::from_seed(&[200; 32]);
    let mut m = Material::load(dir.path(), &gateway)?;
    m.bound_keys
        .use_provider(lever.provider.provider())
        .map_err(step("load the keys into the provider"))?;
    let postgres = match database_url {
        Some(admin) => Some((
            admin,
            srv.block_on(crate::backend::fresh_postgres(admin))
                .map_err(step("create the PostgreSQL database"))?,
        )),
        None => None,
    };
    let url = match &postgres {
        Some((_, (url, _))) => url.clone(),
        None => datadir::sqlite_url(dir.path()),
    };

    let crypto = Crypto {
        provider: lever.provider,
        decoded_keys: lever.decoded_keys,
    };
    let (state, addr, stop) = srv.block_on(async {
        let store = registry(&url, &m.fleet, gateway.public_key()).await?;
        serve(store, m.data, &m.ca_pem, &m.server_tls, crypto).await
    })?;

    let bound_us = crypto_bound(
        &m.fleet,
        &m.bound_keys,
        gateway.public_key(),
        bound_n.max(1),
    )?;

    let client = client(&m.ca_pem, &m.cert_pem, &gateway)?;
    let base = format!("https://127.0.0.1:{}", addr.port());
    let mut rates = Vec::new();
    for (per_request, seed) in [(1usize, 2u64), (BATCH, 3)] {
        let hellos = m.fleet.hellos(n, seed)?;
        let requests: Vec<Vec<VouchRequest>> =
            hellos.chunks(per_request).map(<[_]>::to_vec).collect();
        rates.push(rate(&cli, &client, &base, requests, n)?);
    }

    state.shutdown();
    let _ = stop.send(());
    if let Some((admin, (_, name))) = &postgres {
        srv.block_on(async {
            state.store.close().await;
            crate::backend::drop_postgres(admin, name).await;
        });
    }
    drop(cli);
    drop(srv);
    Ok((
        LeverRates {
            lever,
            bound_us,
            single_per_core: rates[0].0,
            single_wall: rates[0].1,
            batched_per_core: rates[1].0,
            batched_wall: rates[1].1,
        },
        postgres.is_some(),
    ))
}

/// What a fresh data directory gives the benchmark: the service's own
/// material, the fleet provisioned with its anchor, the backend keys again
/// for the raw bound, and the TLS material of both ends.
struct Material {
    data: DataDir,
    fleet: Fleet,
    bound_keys: BackendKeys,
    ca_pem: String,
    /// The gateway's client certificate.
    cert_pem: String,
    /// The server's certificate and key.
    server_tls: (String, Zeroizing<String>),
}

impl Material {
    fn load(dir: &Path, gateway: &IdentityKey) -> Result<Self, BenchError> {
        let data = DataDir::load(dir).map_err(step("load the data directory"))?;
        // The commitment plays no part in a Hello.
        let fleet = Fleet::new(AnchorSet::new(
            data.keys.anchor(),
            data.keys.anchor().digest(),
            0,
        ));
        let bound_keys = DataDir::load(dir)
            .map_err(step("load the data directory"))?
            .keys;
        let ca_pem = data.ca.cert_pem.clone();
        let cert_pem = pki::issue_gateway_cert(
            &data.ca,
            &gateway.public_key(),
            None,
            pki::DEFAULT_GATEWAY_LIFETIME,
        )
        .map_err(step("issue the gateway certificate"))?
        .pem;
        let server_tls = data.server_tls().map_err(step("server TLS files"))?;
        Ok(Material {
            data,
            fleet,
            bound_keys,
            ca_pem,
            cert_pem,
            server_tls,
        })
    }
}

/// A multi-threaded runtime of `cores` workers named `name`.
fn runtime(cores: usize, name: &str) -> Result<tokio::runtime::Runtime, BenchError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// The store at `url` with the fleet's devices, the gateway and one policy
/// letting any peripheral talk to any gateway.
async fn registry(url: &str, fleet: &Fleet, gateway: PublicKey) -> Result<Store, BenchError> {
    let store = Store::open(url).await.map_err(step("open the store"))?;
    let mut tx = store.begin_write().await.map_err(step("enroll"))?;
    for (k, id) in &fleet.devices {
        tx.enroll_peripheral(
            &NewPeripheral {
                id: *id,
                public_key: k.public_key(),
                group: Some("bench".into()),
                attributes: [("model".to_owned(), "b1".to_owned())].into(),
                status: Status::Active,
            },
            "bench",
        )
        .await
        .map_err(step("enroll a peripheral"))?;
    }
    tx.commit().await.map_err(step("enroll"))?;
    store
        .enroll_gateway(
            &NewGateway {
                public_key: gateway,
                name: Some("bench".into()),
                group: None,
                site: None,
            },
            "bench",
        )
        .await
        .map_err(step("enroll the gateway"))?;
    store
        .add_policy(
            &PeripheralSelector::Any,
            &GatewaySelector::Any,
            Scope::TELEMETRY,
            LIFETIMES,
            "bench",
        )
        .await
        .map_err(step("add the policy"))?;
    Ok(store)
}

/// Starts the service on `store` (no request limit that matters, no
/// lockout) over TLS on a loopback port; returns its state, its address
/// and the sender that stops it. Runs on the server's runtime.
async fn serve(
    store: Store,
    data: DataDir,
    ca_pem: &str,
    (server_cert, server_key): &(String, Zeroizing<String>),
    crypto: Crypto,
) -> Result<(AppState, SocketAddr, oneshot::Sender<()>), BenchError> {
    let mut config = Config {
        crypto,
        ..Config::default()
    };
    config.limits.max_concurrent_requests = 4096;
    config.security.lockout_failures = u32::MAX;
    let state = AppState::new(store, data, config)
        .await
        .map_err(step("start the service"))?;
    let tls = pki::server_config(
        ca_pem,
        server_cert,
        server_key,
        None,
        state.metrics.client_cert_rejections(),
    )
    .map_err(step("server TLS configuration"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(
        listener,
        app(state.clone()),
        Transport::Tls(Arc::new(tls)),
        async {
            let _ = stopped.await;
        },
    ));
    Ok((state, addr, stop))
}

/// The gateway's HTTPS client: its certificate for mutual TLS, keep-alive
/// connections for every request in flight.
fn client(
    ca_pem: &str,
    cert_pem: &str,
    gateway: &IdentityKey,
) -> Result<reqwest::Client, BenchError> {
    let key_pem = gateway
        .to_pkcs8_pem()
        .map_err(step("the gateway key as PEM"))?;
    let tls = pki::client_config(ca_pem, Some((cert_pem, &key_pem)))
        .map_err(step("client TLS configuration"))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(CONCURRENCY)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(step("HTTP client"))
}

/// Sends `requests` (`n` vouches in all) on the client's runtime; returns
/// vouches per second of the server's CPU and per wall-clock second.
fn rate(
    cli: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    requests: Vec<Vec<VouchRequest>>,
    n: usize,
) -> Result<(f64, f64), BenchError> {
    // Open the keep-alive connections before the clock starts.
    cli.block_on(async {
        let mut warm = Vec::new();
        for _ in 0..CONCURRENCY {
            warm.push(client.get(format!("{base}/healthz")).send());
        }
        for w in warm {
            let _ = w.await;
        }
    });
    let cpu0 = thread_cpu_s(SERVER_THREADS);
    let t = Instant::now();
    let vouched = cli.block_on(drive(client, base, requests))?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = thread_cpu_s(SERVER_THREADS) - cpu0;
    if vouched != n {
        return Err(BenchError::Invariant("the backend refused a vouch"));
    }
    Ok((n as f64 / cpu.max(1e-9), n as f64 / wall))
}

/// Sends every request with `CONCURRENCY` in flight; returns how many
/// vouches came back.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    requests: Vec<Vec<VouchRequest>>,
) -> Result<usize, BenchError> {
    let queue = Arc::new(Mutex::new(requests));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let queue = queue.clone();
        let client = client.clone();
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            loop {
                let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                let Some(mut items) = next else {
                    break;
                };
                if items.len() == 1 {
                    let item = items.pop().ok_or(BenchError::Invariant("empty request"))?;
                    let body = client
                        .post(format!("{base}/v1/vouch"))
                        .header("content-type", CONTENT_TYPE)
                        .body(encode_body(&item))
                        .send()
                        .await
                        .map_err(step("send a vouch request"))?
                        .bytes()
                        .await
                        .map_err(step("read a vouch answer"))?;
                    let answer: VouchAnswer =
                        decode_body(&body).map_err(|_| BenchError::Invariant("bad answer"))?;
                    ok += usize::from(matches!(answer, VouchAnswer::Vouched(_)));
                } else {
                    let body = client
                        .post(format!("{base}/v1/vouch/batch"))
                        .header("content-type", CONTENT_TYPE)
                        .body(encode_body(&VouchBatchRequest { items }))
                        .send()
                        .await
                        .map_err(step("send a batch request"))?
                        .bytes()
                        .await
                        .map_err(step("read a batch answer"))?;
                    let answer: VouchBatchAnswer =
                        decode_body(&body).map_err(|_| BenchError::Invariant("bad answer"))?;
                    ok += answer
                        .items
                        .iter()
                        .filter(|a| matches!(a, VouchAnswer::Vouched(_)))
                        .count();
                }
            }
            Ok::<usize, BenchError>(ok)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t
            .await
            .map_err(|_| BenchError::Invariant("a client task panicked"))??;
    }
    Ok(total)
}
