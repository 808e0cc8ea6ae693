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
