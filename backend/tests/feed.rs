//! The revocation feed across instances on one PostgreSQL database: a change
//! committed on one wakes the polls waiting on another through LISTEN /
//! NOTIFY, not at that instance's next poll of the event log.

mod common;

use std::time::Duration;

use common::{Backend, Db, Device};
use vouch_backend::config::Config;
use vouch_backend::datadir::DataDir;
use vouch_backend::store::Store;
use vouch_backend::AppState;
use vouch_proto::keys::IdentityKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_wakes_the_feed_of_another_at_once() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let a = Backend::new(&db).await;
    // Instance B: the same database and data directory, reading the event
    // log's head only once a minute: only a notification can wake it sooner.
    let mut config = Config::default();
    config.feed.poll_ms = 60_000;
    let store = Store::open(&db.url_for(a.dir.path()))
        .await
        .expect("open the store");
    let data = DataDir::load(a.dir.path()).expect("load the data directory");
    let b = AppState::new(store, data, config)
        .await
        .expect("instance B");
    let dev = Device::new(41);
    a.enroll_peripheral(&dev, None).await;
    // B's first read of the log's head (at its start) is behind it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = b.feed.current();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.feed.wait_past(before, Duration::from_secs(10)).await }
    });
    let (status, body) = a
        .admin(
            "POST",
            &format!("/v1/admin/peripherals/{}/revoke", dev.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        waiting.await.expect("the waiting poll"),
        "instance B's feed did not wake within 10 s of a revocation on instance A \
         (its own poll of the log is a minute apart)"
    );
    b.shutdown();
    a.state.shutdown();
    db.cleanup().await;
}

/// Polls of one cursor share their read of the event log, but only a read
/// that started after the poll asked: none may be answered from a read
/// made before an event it should see was committed. 24 pollers keep
/// asking (without waiting) from cursors they hold while revocations are
/// committed one after another, most of them from the same cursor at the
/// same moment; each answer must carry every event committed before its
/// poll began (the log's head read just before asking), on both engines.
async fn a_shared_read_of_the_feed_never_hides_an_event_committed_before_the_poll(db: Db) {
    let b = Backend::new(&db).await;
    let devices: Vec<Device> = (0..40u8).map(|i| Device::new(100 + i)).collect();
    for d in &devices {
        b.enroll_peripheral(d, None).await;
    }
    let start = b.state.store.last_event_seq().await.expect("head");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for _ in 0..24 {
        let (state, done) = (b.state.clone(), done.clone());
        pollers.push(tokio::spawn(async move {
            let mut cursor = u64::try_from(start).expect("seq");
            let mut answers = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || answers < 5 {
                let head = state.store.last_event_seq().await.expect("head");
                let batch = vouch_backend::feed::poll(
                    &state.store,
                    &state.feed,
                    cursor,
                    Duration::ZERO,
                    &state.metrics.revocation_lag,
                    &state.shutdown,
                )
                .await
                .expect("poll");
                assert!(
                    i64::try_from(batch.next).expect("seq") >= head,
                    "a poll from {cursor} that began with the log at {head} was answered up to {}",
                    batch.next
                );
                cursor = batch.next;
                answers += 1;
                tokio::task::yield_now().await;
            }
            answers
        }));
    }
    for d in &devices {
        let (status, body) = b
            .admin(
                "POST",
                &format!("/v1/admin/peripherals/{}/revoke", d.id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in pollers {
        assert!(p.await.expect("poller") >= 5);
    }
    b.state.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_read_of_the_feed_never_hides_an_event_on_sqlite() {
    a_shared_read_of_the_feed_never_hides_an_event_committed_before_the_poll(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_read_of_the_feed_never_hides_an_event_on_postgres() {
    if let Some(db) = Db::postgres().await {
        a_shared_read_of_the_feed_never_hides_an_event_committed_before_the_poll(db.clone()).await;
        db.cleanup().await;
    }
}

/// Gateway checks share one read of the gateways they name; each request
/// is still judged by its own gateway's row alone: the active ones served,
/// a suspended one refused, and one whose row is unreadable fails by itself
/// (503, as a store failure) without failing the others that shared its read.
async fn gateway_checks_that_share_a_read_judge_each_gateway_by_its_own_row(db: Db) {
    let b = Backend::new(&db).await;
    let gateways: Vec<IdentityKey> = (0..24u8)
        .map(|i| IdentityKey::from_seed(&[150 + i; 32]))
        .collect();
    for g in &gateways {
        b.enroll_gateway(g, None).await;
    }
    let suspended = gateways[3].public_key();
    let (status, body) = b
        .admin(
            "POST",
            &format!("/v1/admin/gateways/{suspended}/suspend"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let corrupt = gateways[5].public_key();
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&db.url_for(b.dir.path()))
        .await
        .expect("connect");
    sqlx::query(&format!(
        "UPDATE gateways SET status = 'bogus' WHERE public_key = '{corrupt}'"
    ))
    .execute(&mut conn)
    .await
    .expect("corrupt the row");
    // Three rounds of every gateway asking at once, so that checks share reads.
    for _ in 0..3 {
        let mut asks = tokio::task::JoinSet::new();
        for g in &gateways {
            let (router, key) = (b.router.clone(), g.public_key());
            asks.spawn(async move {
                let mut req = axum::http::Request::builder()
                    .uri("/v1/feed?wait_ms=0")
                    .body(axum::body::Body::empty())
                    .expect("request");
                req.extensions_mut()
                    .insert(vouch_backend::ClientIdentity(Some(key)));
                let res = tower::ServiceExt::oneshot(router, req)
                    .await
                    .expect("infallible");
                (key, res.status().as_u16())
            });
        }
        while let Some(r) = asks.join_next().await {
            let (key, status) = r.expect("request task");
            let want = if key == suspended {
                403
            } else if key == corrupt {
                503
            } else {
                200
            };
            assert_eq!(status, want, "gateway {key}");
        }
    }
    b.state.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_checks_that_share_a_read_judge_each_gateway_by_its_own_row_on_sqlite() {
    gateway_checks_that_share_a_read_judge_each_gateway_by_its_own_row(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_checks_that_share_a_read_judge_each_gateway_by_its_own_row_on_postgres() {
    if let Some(db) = Db::postgres().await {
        gateway_checks_that_share_a_read_judge_each_gateway_by_its_own_row(db.clone()).await;
        db.cleanup().await;
    }
}
