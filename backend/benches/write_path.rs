//! The write path's ceiling (issue 20, item 3): every write transaction of
//! every backend instance takes the one audit-head row first
//! ([`Store::begin_write`]), so write transactions are serialized across
//! the whole deployment. How many per second does that allow, and how many
//! audit entries (one per vouch decision) per second when each transaction
//! carries a group commit's worth of them?
//!
//! For each database (SQLite in a file; with `DATABASE_URL`, a fresh
//! PostgreSQL database), W concurrent writers (as W backend instances'
//! committers would be) each loop: begin_write (lock the head row), append
//! E audit entries chained to the head, commit. Printed: transactions per
//! second and entries per second, measured over three seconds after a
//! warm-up. backend/README.md ("The write path's
//! ceiling") has the figures and the arithmetic.
//!
//! Then the session reports themselves, through the real router (`POST
//! /v1/sessions`, as gateways send them: one event per report): C
//! concurrent reporters (spread over 8 gateways, each reporter one device
//! that its gateway holds a live vouch for) each loop: attach a new
//! session, detach it. Printed: reports per second and the mean latency of
//! one report (which is acknowledged only once its transaction committed).
//!
//! `cargo bench -p vouch-backend --bench write_path` (a measurement, not a
//! test: it asserts nothing about time). `-- reports` measures only the
//! session reports.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use common::{gateway_takes, Backend, Db, Device};
use vouch_backend::store::{now_ms, NewAudit, Store};
use vouch_proto::keys::IdentityKey;
use vouch_proto::wire::backend::{
    decode_body, route, EventTimes, SessionEvent, SessionEventKind, SessionReport,
    SessionReportAnswer, SessionVerdict, VouchAnswer,
};

/// Concurrent writers.
const WRITERS: [usize; 3] = [1, 4, 16];
/// Audit entries per transaction: one, a busy group commit, the largest
/// group commit (`MAX_GROUP` in `vouch/commit.rs`).
const ENTRIES: [usize; 3] = [1, 64, 512];
/// How long each configuration is measured.
const MEASURE: std::time::Duration = std::time::Duration::from_secs(3);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let only_reports = std::env::args().any(|a| a == "reports");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = vouch_backend::datadir::sqlite_url(dir.path());
        if !only_reports {
            run("SQLite (synchronous=FULL, WAL)", &url).await;
        }
        reports("SQLite (synchronous=FULL, WAL)", &Db::Sqlite).await;
        if let Some(db) = Db::postgres().await {
            if !only_reports {
                run("PostgreSQL (local, fsync on)", &db.url_for(dir.path())).await;
            }
            reports("PostgreSQL (local, fsync on)", &db).await;
            db.cleanup().await;
        }
    });
}

/// Gateways reporting, and devices per gateway.
const REPORT_GATEWAYS: usize = 8;
const DEVICES_PER_GATEWAY: usize = 16;
/// Concurrent reporters.
const REPORTERS: [usize; 4] = [1, 16, 64, 128];

/// Session reports through `POST /v1/sessions` (see the module doc).
async fn reports(name: &str, db: &Db) {
    let b = Arc::new(Backend::new(db).await);
    b.allow("any", "any", "telemetry").await;
    let anchors = b.anchors().await;
    // Each device vouched for through its gateway: its attaches count.
    let mut devices = Vec::new();
    for g in 0..REPORT_GATEWAYS {
        let gw = IdentityKey::from_seed(&[200 + g as u8; 32]);
        b.enroll_gateway(&gw, None).await;
        for d in 0..DEVICES_PER_GATEWAY {
            let n = g * DEVICES_PER_GATEWAY + d;
            let dev = Device::new(1 + n as u8);
            b.enroll_peripheral(&dev, None).await;
            let (_, hello) = dev.hello(&anchors, n as u64);
            let (_, req) = gateway_takes(&gw, &hello, 10_000 + n as u64);
            let (s, body) = b.gateway_post(&gw.public_key(), route::VOUCH, &req).await;
            assert_eq!(s, StatusCode::OK);
            assert!(matches!(
                decode_body::<VouchAnswer>(&body),
                Ok(VouchAnswer::Vouched(_))
            ));
            devices.push((gw.public_key(), dev.id));
        }
    }
    let devices = Arc::new(devices);
    println!(
        "\n{name}: session reports through POST /v1/sessions (one event each; attach, detach)"
    );
    println!("| reporters | reports/s | mean report latency |");
    println!("|---:|---:|---:|");
    for reporters in REPORTERS {
        report_storm(
            &b,
            &devices,
            reporters,
            std::time::Duration::from_millis(300),
            1,
        )
        .await;
        let (elapsed, done) = report_storm(&b, &devices, reporters, MEASURE, 1).await;
        let secs = elapsed.as_secs_f64();
        println!(
            "| {reporters} | {:.0} | {:.2} ms |",
            done as f64 / secs,
            secs * 1000.0 * reporters as f64 / done as f64
        );
    }
    // A gateway sends the events that waited behind its reports in flight
    // together (vouch-gateway's `reports.rs`): the same storm, E events a
    // report.
    println!(
        "\n{name}: the same with E events a report (E sessions attached, then detached), 16 reporters"
    );
    println!("| events per report | events/s | mean report latency |");
    println!("|---:|---:|---:|");
    for per_report in [1, 8, 32] {
        let (elapsed, done) = report_storm(&b, &devices, 16, MEASURE, per_report).await;
        let secs = elapsed.as_secs_f64();
        println!(
            "| {per_report} | {:.0} | {:.2} ms |",
            done as f64 / secs,
            secs * 1000.0 * 16.0 * per_report as f64 / done as f64
        );
    }
    b.state.shutdown();
}

/// `reporters` concurrent reporters, each one device on its gateway,
/// attaching and detaching sessions for `time`, `per_report` sessions in
/// each report; the time taken and the events answered.
async fn report_storm(
    b: &Arc<Backend>,
    devices: &Arc<
        Vec<(
            vouch_proto::keys::PublicKey,
            vouch_proto::keys::PeripheralId,
        )>,
    >,
    reporters: usize,
    time: std::time::Duration,
    per_report: usize,
) -> (std::time::Duration, usize) {
    static SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let start = Instant::now();
    let deadline = start + time;
    let mut tasks = Vec::new();
    for r in 0..reporters {
        let b = b.clone();
        let devices = devices.clone();
        tasks.push(tokio::spawn(async move {
            // Reporter r is device r (round the gateways first).
            let n = (r % REPORT_GATEWAYS) * DEVICES_PER_GATEWAY
                + (r / REPORT_GATEWAYS) % DEVICES_PER_GATEWAY;
            let (gw, peripheral) = devices[n];
            let mut done = 0;
            while Instant::now() < deadline {
                let sessions: Vec<[u8; 8]> = (0..per_report)
                    .map(|_| {
                        SESSION
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            .to_be_bytes()
                    })
                    .collect();
                for kind in [SessionEventKind::Attached, SessionEventKind::Detached] {
                    let report = SessionReport {
                        events: sessions
                            .iter()
                            .map(|&session_id| SessionEvent {
                                peripheral,
                                kind,
                                session_id,
                            })
                            .collect(),
                        times: vec![
                            EventTimes {
                                started_ms_ago: 5,
                                heard_ms_ago: 1,
                            };
                            per_report
                        ],
                    };
                    let (s, body) = b.gateway_post(&gw, route::SESSIONS, &report).await;
                    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                    let answer: SessionReportAnswer = decode_body(&body).expect("answer");
                    assert_eq!(answer.items, vec![SessionVerdict::Accepted; per_report]);
                    done += per_report;
                }
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("reporter");
    }
    (start.elapsed(), done)
}

async fn run(name: &str, url: &str) {
    let store = Store::open(url).await.expect("open");
    println!("\n{name}");
    println!("| writers | entries/tx | tx/s | entries/s | mean tx latency |");
    println!("|---:|---:|---:|---:|---:|");
    for entries in ENTRIES {
        for writers in WRITERS {
            // Warm-up: the pool's connections, the statements.
            measure(
                &store,
                writers,
                entries,
                std::time::Duration::from_millis(300),
            )
            .await;
            let (elapsed, done) = measure(&store, writers, entries, MEASURE).await;
            let secs = elapsed.as_secs_f64();
            println!(
                "| {writers} | {entries} | {:.0} | {:.0} | {:.2} ms |",
                done as f64 / secs,
                (done * entries) as f64 / secs,
                secs * 1000.0 * writers as f64 / done as f64
            );
        }
    }
    store.close().await;
}

/// Transactions of `entries` entries each, by `writers` concurrent writers,
/// for `time`; the time they took and how many committed.
async fn measure(
    store: &Store,
    writers: usize,
    entries: usize,
    time: std::time::Duration,
) -> (std::time::Duration, usize) {
    let batch: Arc<Vec<NewAudit>> = Arc::new(
        (0..entries)
            .map(|i| {
                let mut e = NewAudit::new("vouch", "vouched", "bench");
                e.peripheral = Some(format!("{i:016x}"));
                e.detail = "scope=1 session_s=3600 resumption_s=86400 kid=1".into();
                e
            })
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + time;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let batch = batch.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while Instant::now() < deadline {
                let mut tx = store.begin_write().await.expect("begin");
                tx.audit_many(&batch, now_ms()).await.expect("append");
                tx.commit().await.expect("commit");
                done += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("writer");
    }
    (start.elapsed(), done)
}
