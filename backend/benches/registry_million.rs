//! A registry of a million (issue 20, item 2): how long a bulk import of
//! `VOUCH_BENCH_ROWS` peripherals (default 1,000,000) takes, and how fast
//! the operator's reads are at that size: the first page of `list`, a page
//! deep in the cursor order, a page of one group, a page by status, one
//! device by id, the counts by status.
//!
//! For each database (SQLite in a file; with `DATABASE_URL`, a fresh
//! PostgreSQL database): the rows are NDJSON as the factory line hands them
//! over (1,000 groups, an attribute each), read by `import::read_rows` and
//! written by `import::run` in batches of 1,000, as `vouch-backend import`
//! does. Each read is timed over 20 repetitions (median and max). The
//! figures are in backend/README.md ("A registry of a million").
//!
//! `cargo bench -p vouch-backend --bench registry_million` (a measurement,
//! not a test: it asserts only that the import enrolled every row).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Db;
use vouch_backend::import::{self, Format};
use vouch_backend::model::Status;
use vouch_backend::store::{PeripheralFilter, Store};
use vouch_proto::keys::{IdentityKey, PeripheralId};

/// Rows per import transaction.
const BATCH: usize = 1_000;
/// Groups the fleet is spread over.
const GROUPS: usize = 1_000;
/// Repetitions of each read.
const REPEAT: usize = 20;

fn main() {
    let rows: usize = std::env::var("VOUCH_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let started = Instant::now();
    let (ndjson, ids) = factory_rows(rows);
    println!(
        "{rows} rows generated ({} MiB of NDJSON) in {:.1} s",
        ndjson.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = vouch_backend::datadir::sqlite_url(dir.path());
        run("SQLite (synchronous=FULL, WAL)", &url, &ndjson, &ids).await;
        if let Some(db) = Db::postgres().await {
            run(
                "PostgreSQL (local, fsync on)",
                &db.url_for(dir.path()),
                &ndjson,
                &ids,
            )
            .await;
            db.cleanup().await;
        }
    });
}

/// `n` rows of NDJSON with distinct keys (derived from the row number), and
/// the ids they enroll as.
fn factory_rows(n: usize) -> (Vec<u8>, Vec<PeripheralId>) {
    let mut out = Vec::with_capacity(n * 140);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        seed[31] = 0x5a;
        let public = IdentityKey::from_seed(&seed).public_key();
        ids.push(PeripheralId::derive(&public));
        out.extend_from_slice(
            format!(
                "{{\"public_key\":\"{public}\",\"group\":\"line-{}\",\"attributes\":{{\"serial\":\"{i}\"}}}}\n",
                i % GROUPS
            )
            .as_bytes(),
        );
    }
    (out, ids)
}

async fn run(name: &str, url: &str, ndjson: &[u8], ids: &[PeripheralId]) {
    let store = Store::open(url).await.expect("open");
    println!("\n{name}");
    let started = Instant::now();
    let parsed = import::read_rows(ndjson, Format::Ndjson).expect("rows");
    let read = started.elapsed();
    let summary = import::run(&store, parsed, false, BATCH, "bench", |_| {})
        .await
        .expect("import");
    let took = started.elapsed();
    assert_eq!(
        (summary.created, summary.errors),
        (ids.len(), 0),
        "every row enrolled"
    );
    println!(
        "import: {} rows in {:.1} s ({:.0} rows/s; parsing {:.1} s), batches of {BATCH}",
        ids.len(),
        took.as_secs_f64(),
        ids.len() as f64 / took.as_secs_f64(),
        read.as_secs_f64()
    );
    let mut sorted: Vec<PeripheralId> = ids.to_vec();
    sorted.sort_by_key(|id| id.to_string());
    let middle = sorted[sorted.len() / 2];
    println!("| read | rows | median | max |");
    println!("|---|---:|---:|---:|");
    let page = |status, group: Option<&str>, after| PeripheralFilter {
        attribute: None,
        status,
        group: group.map(str::to_owned),
        after,
        limit: 100,
    };
    time("list, first page", || async {
        store
            .list_peripherals(&page(None, None, None))
            .await
            .expect("list")
            .len()
    })
    .await;
    time("list, a page after the middle id", || async {
        store
            .list_peripherals(&page(None, None, Some(middle)))
            .await
            .expect("list")
            .len()
    })
    .await;
    time("list --group (1 of 1,000 groups)", || async {
        store
            .list_peripherals(&page(None, Some("line-417"), None))
            .await
            .expect("list")
            .len()
    })
    .await;
    time("list --status active", || async {
        store
            .list_peripherals(&page(Some(Status::Active), None, None))
            .await
            .expect("list")
            .len()
    })
    .await;
    time("list --status suspended (none)", || async {
        store
            .list_peripherals(&page(Some(Status::Suspended), None, None))
            .await
            .expect("list")
            .len()
    })
    .await;
    let mut k = 0usize;
    time("show one device by id", || {
        k = (k + 7919) % ids.len();
        let id = ids[k];
        let store = &store;
        async move {
            store.peripheral(&id).await.expect("show");
            1
        }
    })
    .await;
    time("count by status", || async {
        store
            .count_peripherals()
            .await
            .expect("count")
            .values()
            .sum::<i64>() as usize
    })
    .await;
    store.close().await;
}

async fn time<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times: Vec<Duration> = Vec::with_capacity(REPEAT);
    let mut rows = 0;
    for _ in 0..REPEAT {
        let t = Instant::now();
        rows = f().await;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "| {what} | {rows} | {:.2} ms | {:.2} ms |",
        times[REPEAT / 2].as_secs_f64() * 1e3,
        times[REPEAT - 1].as_secs_f64() * 1e3
    );
}
