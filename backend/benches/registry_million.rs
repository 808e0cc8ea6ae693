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
//! Then the pages an operator opens, through the whole router as `serve`
//! runs it (authentication, the console's session, rendering or JSON),
//! timed over 40 repetitions each (median, p95, max): the console's
//! overview, device search by group, status and attribute, a device's page,
//! the audit log, and the admin API's list and show (issue 18's 200 ms p95).
//!
//! `cargo bench -p vouch-backend --bench registry_million` (a measurement,
//! not a test: it asserts only that the import enrolled every row and that
//! every page answered 200).

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
        vouch_backend::datadir::init(dir.path(), &[]).expect("init");
        let url = vouch_backend::datadir::sqlite_url(dir.path());
        run("SQLite (synchronous=FULL, WAL)", &url, &ndjson, &ids).await;
        pages(dir.path(), &url, &ids).await;
        if let Some(db) = Db::postgres().await {
            let url = db.url_for(dir.path());
            run("PostgreSQL (local, fsync on)", &url, &ndjson, &ids).await;
            pages(dir.path(), &url, &ids).await;
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

/// Repetitions of each page.
const PAGE_REPEAT: usize = 40;

/// The console's and the admin API's pages through the router, logged in.
async fn pages(dir: &std::path::Path, url: &str, ids: &[PeripheralId]) {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let store = Store::open(url).await.expect("open");
    let data = vouch_backend::datadir::DataDir::load(dir).expect("data dir");
    let token = vouch_backend::access::generate_token().expect("token");
    // The bench's own admin: a token it knows (init's was printed and lost).
    let state = vouch_backend::AppState::new(store.clone(), data, Default::default())
        .await
        .expect("state");
    let name = format!("bench-{}", &token.id[..6]);
    store
        .add_operator(
            &name,
            vouch_backend::access::Role::Admin,
            &token.id,
            &token.hash,
            "bench",
        )
        .await
        .expect("operator");
    let router = vouch_backend::app(state.clone());
    let login = Request::post("/console/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={}", token.token.as_str())))
        .expect("request");
    let res = router.clone().oneshot(login).await.expect("login");
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "console login");
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let id = ids[ids.len() / 3];
    let bearer = format!("Bearer {}", token.token.as_str());
    let pages = [
        ("console: overview", "/console".to_owned()),
        (
            "console: devices, first page",
            "/console/devices".to_owned(),
        ),
        (
            "console: devices of a group",
            "/console/devices?group=line-417".to_owned(),
        ),
        (
            "console: devices by status",
            "/console/devices?status=active".to_owned(),
        ),
        (
            "console: devices by attribute",
            format!("/console/devices?attribute=serial%3D{}", ids.len() / 2),
        ),
        ("console: search by id", format!("/console/devices?id={id}")),
        ("console: a device", format!("/console/devices/{id}")),
        ("console: gateways", "/console/gateways".to_owned()),
        ("console: audit log", "/console/audit".to_owned()),
        (
            "console: a device's audit",
            format!("/console/audit?peripheral={id}"),
        ),
        (
            "API: list peripherals",
            "/v1/admin/peripherals?limit=100".to_owned(),
        ),
        (
            "API: list by attribute",
            format!("/v1/admin/peripherals?attribute=serial%3D{}", ids.len() / 2),
        ),
        (
            "API: show a peripheral",
            format!("/v1/admin/peripherals/{id}"),
        ),
        (
            "API: audit query",
            format!("/v1/admin/audit?peripheral={id}"),
        ),
    ];
    println!("\n| page ({} devices) | median | p95 | max |", ids.len());
    println!("|---|---:|---:|---:|");
    for (what, path) in pages {
        let mut times: Vec<Duration> = Vec::with_capacity(PAGE_REPEAT);
        for _ in 0..PAGE_REPEAT {
            let mut req = Request::get(path.as_str());
            req = if path.starts_with("/console") {
                req.header(header::COOKIE, cookie.as_str())
            } else {
                req.header(header::AUTHORIZATION, bearer.as_str())
            };
            let t = Instant::now();
            let res = router
                .clone()
                .oneshot(req.body(Body::empty()).expect("request"))
                .await
                .expect("answer");
            let status = res.status();
            let _ = res.into_body().collect().await.expect("body");
            times.push(t.elapsed());
            assert_eq!(status, StatusCode::OK, "{what}: {path}");
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(times[PAGE_REPEAT / 2]),
            ms(times[PAGE_REPEAT * 95 / 100]),
            ms(times[PAGE_REPEAT - 1])
        );
    }
    state.shutdown.cancel();
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
