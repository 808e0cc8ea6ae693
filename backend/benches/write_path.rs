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
//! `cargo bench -p vouch-backend --bench write_path` (a measurement, not a
//! test: it asserts nothing about time).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::Db;
use vouch_backend::store::{now_ms, NewAudit, Store};

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
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = vouch_backend::datadir::sqlite_url(dir.path());
        run("SQLite (synchronous=FULL, WAL)", &url).await;
        if let Some(db) = Db::postgres().await {
            run("PostgreSQL (local, fsync on)", &db.url_for(dir.path())).await;
            db.cleanup().await;
        }
    });
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
