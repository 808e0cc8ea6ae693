//! Vouches per second over real HTTPS, against the raw crypto bound of one
//! vouch measured in the same run (DESIGN.md §6: at least 60% of the bound per
//! core).
//!
//! `cargo bench -p vouch-backend --bench vouch_throughput`
//!
//! - **Raw bound**: one vouch's cryptography on one core, in a tight loop:
//!   open the sealed hello (X25519, SHA-256 of the hello, ChaCha20), verify
//!   the peripheral's signature (Ed25519), sign the vouch (Ed25519).
//! - **Served**: the real service (`app` + `server::serve`, TLS 1.3 with the
//!   gateway's client certificate, SQLite in a temporary data directory with
//!   `synchronous=FULL`, group commit) on its own Tokio runtime (threads
//!   `vouch-srv`), driven over keep-alive connections by a concurrent
//!   reqwest client on another runtime (threads `vouch-cli`) in the same
//!   process. Hellos are made before the clock starts.
//! - **Per core**: vouches divided by the CPU seconds the *server's* threads
//!   (runtime workers and the SQLite worker threads) used during the run,
//!   read from `/proc/self/task/*/stat`; the client's CPU is excluded.
//!
//! Environment: `VOUCH_BENCH_N` (vouches per mode, default 6000),
//! `VOUCH_BENCH_CONCURRENCY` (requests in flight, default 32),
//! `VOUCH_BENCH_BATCH` (items per batch request, default 32),
//! `VOUCH_BENCH_DATABASE_URL` (use PostgreSQL instead of SQLite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use vouch_backend::config::Config;
use vouch_backend::datadir::{self, DataDir, InitOutcome};
use vouch_backend::server::{self, Transport};
use vouch_backend::store::{NewGateway, NewPeripheral, Store};
use vouch_backend::{app, pki, AppState};
use vouch_proto::anchor::AnchorSet;
use vouch_proto::handshake::backend::{open_hello, VouchGrant};
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::{DhPublic, IdentityKey, PeripheralId};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    decode_body, encode_body, VouchAnswer, VouchBatchAnswer, VouchBatchRequest, VouchRequest,
    CONTENT_TYPE,
};
use vouch_proto::wire::{Lifetimes, Scope, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::Timestamp;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used so far by this process's threads whose name starts with
/// one of `prefixes`.
fn thread_cpu(prefixes: &[&str]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim().starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command name: state is field 3; utime
        // and stime are fields 14 and 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += ut + st;
        }
    }
    total as f64 / ticks
}

const SERVER_THREADS: &[&str] = &["vouch-srv", "sqlx-sqlite-wor", "sqlx-sqlite"];

struct Fleet {
    devices: Vec<(IdentityKey, PeripheralId)>,
    anchors: AnchorSet,
}

impl Fleet {
    fn hellos(&self, n: usize, seed: u64) -> Vec<VouchRequest> {
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
                )
                .expect("hello");
                let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
                let len = p.poll_transmit(&mut buf).expect("hello bytes");
                VouchRequest {
                    hello: buf[..len].to_vec(),
                    gateway_ephemeral: DhPublic([(i % 251) as u8 + 1; 32]),
                }
            })
            .collect()
    }
}

fn main() {
    let n = env("VOUCH_BENCH_N", 6000);
    let concurrency = env("VOUCH_BENCH_CONCURRENCY", 32);
    let batch = env("VOUCH_BENCH_BATCH", 32).clamp(1, 64);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let dir = tempfile::tempdir().expect("tempdir");
    let _token = match datadir::init(dir.path(), &[]).expect("init") {
        InitOutcome::Created { admin_token } => admin_token,
        InitOutcome::AlreadyInitialized => unreachable!(),
    };
    let srv = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("vouch-srv")
        .enable_all()
        .build()
        .expect("server runtime");
    let cli = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("vouch-cli")
        .enable_all()
        .build()
        .expect("client runtime");

    let gw = IdentityKey::from_seed(&[200; 32]);
    let data = DataDir::load(dir.path()).expect("load");
    let anchors = AnchorSet::new(data.keys.anchor());
    let keys_for_bound = DataDir::load(dir.path()).expect("load").keys;
    let ca_pem = data.ca.cert_pem.clone();
    let cert_pem = pki::issue_gateway_cert(&data.ca, &gw.public_key(), None).expect("cert");
    let url = std::env::var("VOUCH_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| datadir::sqlite_url(dir.path()));

    // Registry: 256 peripherals, one gateway, one rule.
    let devices: Vec<(IdentityKey, PeripheralId)> = (0..256u32)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let k = IdentityKey::from_seed(&seed);
            let id = PeripheralId::derive(&k.public_key());
            (k, id)
        })
        .collect();
    let (state, addr) = srv.block_on(async {
        let store = Store::open(&url).await.expect("store");
        let mut tx = store.begin_write().await.expect("tx");
        for (k, id) in &devices {
            tx.enroll_peripheral(
                &NewPeripheral {
                    id: *id,
                    public_key: k.public_key(),
                    group: Some("bench".into()),
                    attributes: [("model".to_owned(), "b1".to_owned())].into(),
                    status: vouch_backend::model::Status::Active,
                },
                "bench",
            )
            .await
            .expect("enroll");
        }
        tx.commit().await.expect("commit");
        store
            .enroll_gateway(
                &NewGateway {
                    public_key: gw.public_key(),
                    name: Some("bench".into()),
                    group: None,
                    site: None,
                },
                "bench",
            )
            .await
            .expect("gateway");
        store
            .add_policy(
                &vouch_backend::model::PeripheralSelector::Any,
                &vouch_backend::model::GatewaySelector::Any,
                Scope::TELEMETRY,
                Lifetimes {
                    session_s: 3600,
                    resumption_s: 86_400,
                },
                "bench",
            )
            .await
            .expect("policy");
        let mut config = Config::default();
        config.limits.max_concurrent_requests = 4096;
        config.security.lockout_failures = u32::MAX;
        let state = AppState::new(store, data, config).await.expect("state");
        let (cert, key) = DataDir::load(dir.path()).unwrap().server_tls().unwrap();
        let tls = pki::server_config(&ca_pem, &cert, &key).expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app(state.clone());
        tokio::spawn(server::serve(
            listener,
            router,
            Transport::Tls(Arc::new(tls)),
            std::future::pending(),
        ));
        (state, addr)
    });
    let fleet = Fleet { devices, anchors };

    // ---- raw crypto bound, one core --------------------------------------
    let bound_n = 2000.min(n);
    let bound_hellos = fleet.hellos(bound_n, 1);
    let registered: Vec<_> = fleet.devices.iter().map(|(k, _)| k.public_key()).collect();
    let t = Instant::now();
    for (i, req) in bound_hellos.iter().enumerate() {
        let opened = open_hello(&req.hello, &keys_for_bound).expect("open");
        let verified = opened
            .verify(&registered[i % registered.len()])
            .expect("verify");
        let v = verified.vouch(
            &keys_for_bound,
            &VouchGrant {
                gateway_key: gw.public_key(),
                gateway_ephemeral: req.gateway_ephemeral,
                scope: Scope::TELEMETRY,
                lifetimes: Lifetimes {
                    session_s: 3600,
                    resumption_s: 86_400,
                },
            },
        );
        std::hint::black_box(v);
    }
    let raw_us = t.elapsed().as_secs_f64() * 1e6 / bound_n as f64;
    let bound = 1e6 / raw_us;

    // ---- served over HTTPS ------------------------------------------------
    let client = {
        let cfg =
            pki::client_config(&ca_pem, Some((&cert_pem, &gw.to_pkcs8_pem().unwrap()))).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let base = format!("https://127.0.0.1:{}", addr.port());

    println!("vouch throughput: {cores} cores, {n} vouches per mode, {concurrency} requests in flight, batches of {batch}");
    println!("raw crypto bound (1 core): {raw_us:.1} µs per vouch = {bound:.0} vouches/s");
    for (mode, per_req) in [("single", 1usize), ("batched", batch)] {
        let hellos = fleet.hellos(n, if per_req == 1 { 2 } else { 3 });
        let requests: Vec<Vec<VouchRequest>> = hellos.chunks(per_req).map(<[_]>::to_vec).collect();
        // Warm up the connection pool.
        cli.block_on(async {
            for _ in 0..concurrency {
                let _ = client.get(format!("{base}/healthz")).send().await;
            }
        });
        let cpu0 = thread_cpu(SERVER_THREADS);
        let t = Instant::now();
        let vouched = cli.block_on(run(&client, &base, requests, concurrency));
        let wall = t.elapsed().as_secs_f64();
        let cpu = thread_cpu(SERVER_THREADS) - cpu0;
        assert_eq!(vouched, n, "every vouch must succeed");
        let rate = n as f64 / wall;
        let per_core = n as f64 / cpu.max(1e-9);
        println!(
            "{mode:>8}: {rate:>7.0} vouches/s wall ({:.1} µs/vouch); server CPU {cpu:.2} s → {per_core:.0} vouches/s per core = {:.0}% of the bound",
            wall * 1e6 / n as f64,
            100.0 * per_core / bound
        );
    }
    state.shutdown();
}

async fn run(
    client: &reqwest::Client,
    base: &str,
    requests: Vec<Vec<VouchRequest>>,
    concurrency: usize,
) -> usize {
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let client = client.clone();
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            loop {
                let Some(items) = queue.lock().unwrap().pop() else {
                    break;
                };
                if items.len() == 1 {
                    let res = client
                        .post(format!("{base}/v1/vouch"))
                        .header("content-type", CONTENT_TYPE)
                        .body(encode_body(&items[0]))
                        .send()
                        .await
                        .expect("vouch");
                    let a: VouchAnswer = decode_body(&res.bytes().await.unwrap()).expect("answer");
                    ok += usize::from(matches!(a, VouchAnswer::Vouched(_)));
                } else {
                    let res = client
                        .post(format!("{base}/v1/vouch/batch"))
                        .header("content-type", CONTENT_TYPE)
                        .body(encode_body(&VouchBatchRequest { items }))
                        .send()
                        .await
                        .expect("vouch");
                    let a: VouchBatchAnswer =
                        decode_body(&res.bytes().await.unwrap()).expect("answer");
                    ok += a
                        .items
                        .iter()
                        .filter(|a| matches!(a, VouchAnswer::Vouched(_)))
                        .count();
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}
