//! The audit log under a replay flood (issue 16, item 4; SPEC.md §11.12).
//!
//! One captured hello, vouched once, then replayed 100,000 times through the
//! gateway route `POST /v1/vouch` (the real router, one request after
//! another), then the summaries written as at a graceful shutdown. Prints
//! the audit entries and the database bytes the flood added, and, for
//! comparison, what the same 100,000 refusals add written one entry each,
//! as before the change. On SQLite (the data directory's file, WAL
//! checkpointed before each measurement) and, with `DATABASE_URL`, on a
//! fresh PostgreSQL database (`pg_total_relation_size('audit_log')`).
//!
//! `cargo bench -p vouch-backend --bench audit_flood` (a measurement, not a
//! test: it asserts nothing about time).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use axum::http::StatusCode;
use common::{gateway_takes, Backend, Db, Device};
use sqlx::{Connection, Row};
use vouch_backend::store::{now_ms, NewAudit};
use vouch_proto::keys::IdentityKey;
use vouch_proto::wire::backend::{decode_body, VouchAnswer, VouchRequest};

const REPLAYS: usize = 100_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run(&Db::Sqlite).await;
        if let Some(db) = Db::postgres().await {
            run(&db).await;
            db.cleanup().await;
        }
    });
}

/// Audit entries and bytes the database holds for them.
async fn measure(b: &Backend) -> (i64, i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&b.db.url_for(b.dir.path()))
        .await
        .expect("connect");
    let entries: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    let bytes = match b.db {
        Db::Sqlite => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await
                .expect("checkpoint");
            let path = b.dir.path().join("vouch.db");
            i64::try_from(std::fs::metadata(&path).expect("db file").len()).expect("size")
        }
        Db::Postgres { .. } => {
            sqlx::query("VACUUM audit_log")
                .execute(&mut conn)
                .await
                .expect("vacuum");
            sqlx::query("SELECT pg_total_relation_size('audit_log') AS n")
                .fetch_one(&mut conn)
                .await
                .expect("size")
                .try_get("n")
                .expect("n")
        }
    };
    conn.close().await.ok();
    (entries, bytes)
}

async fn vouch(b: &Backend, gw: &IdentityKey, req: &VouchRequest) -> VouchAnswer {
    let (s, bytes) = b.gateway_post(&gw.public_key(), "/v1/vouch", req).await;
    assert_eq!(s, StatusCode::OK);
    decode_body::<VouchAnswer>(&bytes).expect("answer")
}

async fn run(db: &Db) {
    let engine = match db {
        Db::Sqlite => "SQLite",
        Db::Postgres { .. } => "PostgreSQL",
    };
    let b = Backend::new(db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry").await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let (_, hello) = dev.hello(&b.anchors().await, 1);
    let (_, req) = gateway_takes(&gw, &hello, 2);
    assert!(matches!(
        vouch(&b, &gw, &req).await,
        VouchAnswer::Vouched(_)
    ));
    let (entries0, bytes0) = measure(&b).await;

    let started = Instant::now();
    for _ in 0..REPLAYS {
        assert!(!matches!(
            vouch(&b, &gw, &req).await,
            VouchAnswer::Vouched(_)
        ));
    }
    let elapsed = started.elapsed();
    let summaries = b.state.flush_audit().await.expect("flush");
    let (entries1, bytes1) = measure(&b).await;
    println!(
        "{engine}: {REPLAYS} replays of one hello through POST /v1/vouch in {:.1} s: \
         +{} audit entries ({} summary), +{} bytes",
        elapsed.as_secs_f64(),
        entries1 - entries0,
        summaries,
        bytes1 - bytes0
    );
    b.state.shutdown();

    // The same refusals written one entry each, as before the change.
    let base = Backend::new(db).await;
    let (e0, by0) = measure(&base).await;
    let entry = NewAudit::new("vouch", "denied", &format!("gateway:{}", gw.public_key()))
        .reason("replay")
        .gateway(&gw.public_key().to_string());
    for _ in 0..REPLAYS / 5_000 {
        let mut tx = base.store.begin_write().await.expect("write");
        tx.audit_many(&vec![entry.clone(); 5_000], now_ms())
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
    let (e1, by1) = measure(&base).await;
    println!(
        "{engine}: baseline, one entry per refusal: +{} audit entries, +{} bytes",
        e1 - e0,
        by1 - by0
    );
    base.state.shutdown();
}
