//! Trust-anchor updates through the gateway (SPEC.md §7.7, §10.6): fetched
//! from a fake backend, kept (across restarts with a state directory), and
//! sent to every peripheral after a full handshake and after a resumption,
//! in serial order, one content-type-2 record each.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{
    context, drive_peripheral, future_keys, peripheral_full, run_link_owned, setup, wait_for,
    Capture, Setup, TempDir,
};
use vouch_gateway::anchors::{self, FetchError, Fetched, MAX_HELD_ANCHOR_UPDATES};
use vouch_gateway::backend_client::{BackendApi, BackendError};
use vouch_gateway::clock::TokioClock;
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::state::{StateBinding, StateDir, ANCHORS_FILE};
use vouch_gateway::transport::memory::{pair, MemoryLink};
use vouch_gateway::transport::Link;
use vouch_proto::anchor::{AnchorAction, AnchorUpdate};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::keys::KeyId;
use vouch_proto::session::{Inbound, Session};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{AnchorUpdateBatch, FeedChange, FeedEvent, MAX_ANCHOR_UPDATES};
use vouch_proto::wire::{MessageType, Scope, MAX_MESSAGE};
use vouch_proto::{Error as ProtoError, PeerMisbehaved, Timestamp};

/// A rotation from the fake backend's key 1 to a new key 2, as the backend
/// issues it: `Add(2)` signed by key 1, then `Retire(1)` signed by key 2.
fn rotation(_: &Setup) -> [AnchorUpdate; 2] {
    let [k2, k3, k4] = [future_keys(2), future_keys(3), future_keys(4)];
    let rotate = |serial, to: &BackendKeys, after: &BackendKeys| {
        AnchorUpdate::sign(
            serial,
            AnchorAction::Rotate {
                anchor: to.anchor(),
                next: after.anchor().digest(),
            },
            to.kid(),
            to.signing(),
        )
    };
    [rotate(1, &k2, &k3), rotate(2, &k3, &k4)]
}

/// `n` updates with serials 1..=n. Only their serials matter to the
/// gateway, which never checks a signature (the peripheral does).
fn numbered(s: &Setup, n: u32) -> Vec<AnchorUpdate> {
    let [template, _] = rotation(s);
    (1..=n)
        .map(|serial| AnchorUpdate { serial, ..template })
        .collect()
}

fn serials(updates: &[AnchorUpdate]) -> Vec<u32> {
    updates.iter().map(|u| u.serial).collect()
}

fn held(table: &SessionTable) -> Vec<u32> {
    serials(table.anchor_updates().snapshot().as_deref().unwrap_or(&[]))
}

fn binding(s: &Setup, url: &str) -> StateBinding {
    StateBinding {
        gateway_key: s.ctx.config.gateway_key,
        backend_url: url.into(),
    }
}

/// Reads the next record from the gateway (within a deadline) and opens it
/// on the peripheral's session; returns the anchor update it carries, or
/// panics.
async fn next_anchor_update(link: &mut MemoryLink, session: &mut Session) -> AnchorUpdate {
    let msg = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .expect("a record from the gateway within the deadline")
        .unwrap()
        .expect("a record from the gateway, not a hang-up");
    assert_eq!(msg[1], MessageType::Record as u8, "a session record");
    let mut plain = vec![0u8; MAX_MESSAGE];
    match session.open(Timestamp(0), &msg, &mut plain) {
        Ok(Inbound::AnchorUpdate(u)) => u,
        other => panic!("expected an anchor update (content type 2), got {other:?}"),
    }
}

#[tokio::test]
async fn held_updates_are_sent_in_order_after_a_full_handshake_and_after_a_resumption() {
    // Telemetry only: anchor updates need no scope bit (SPEC.md §7.3, §7.7).
    let s = setup(Scope::TELEMETRY);
    let updates = rotation(&s);
    s.backend.anchor_log.lock().unwrap().extend(updates);
    let fetched = anchors::fetch(&s.backend, s.ctx.table.anchor_updates())
        .await
        .unwrap();
    assert_eq!((fetched.added, fetched.latest), (2, 2));
    assert_eq!(held(&s.ctx.table), [1, 2]);

    // A full handshake: both updates follow, in serial order, one record each.
    let (mut p_link, g_link) = pair(247, "p", "g");
    let driver = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 3).await.unwrap();
    assert!(!est.resumed);
    let mut device_anchors = s.anchors.clone();
    for expected in &updates {
        let got = next_anchor_update(&mut p_link, &mut est.session).await;
        assert_eq!(&got, expected);
        device_anchors
            .apply(&got)
            .expect("the peripheral applies them in the order received");
    }
    assert_eq!(device_anchors.primary().kid, KeyId(3));
    assert!(
        device_anchors.get(KeyId(1)).is_none(),
        "key 1 rotated away from"
    );
    assert_eq!(s.ctx.metrics.anchor_updates_sent(), 2);
    assert!(s
        .ctx
        .metrics
        .render()
        .contains("vouch_gateway_anchor_updates_sent_total 2"));
    // And nothing more: the session's own traffic goes on.
    let mut sub = s.ctx.table.sessions().subscribe();
    let mut rec = [0u8; 256];
    let n = est
        .session
        .seal_data(Timestamp(0), b"reading=7", &mut rec)
        .unwrap();
    p_link.send(&rec[..n]).await.unwrap();
    assert_eq!(sub.recv().await.unwrap().data, b"reading=7");
    drop(p_link);
    driver.await.unwrap();

    // A resumption: the same updates again, in order (the gateway cannot
    // know which ones the peripheral applied); the peripheral refuses them
    // as stale, before any signature check.
    let ticket: PeripheralTicket =
        postcard::from_bytes(&postcard::to_allocvec(&est.ticket).unwrap()).unwrap();
    let (mut p_link, g_link) = pair(247, "p", "g");
    let driver = tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 4, s.shutdown.clone()));
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &ticket,
        &s.anchors,
        Timestamp(0),
        &mut rng(5),
    )
    .unwrap();
    drive_peripheral(&mut p, &mut p_link).await.unwrap();
    let mut resumed = p.into_established().unwrap();
    assert!(resumed.resumed);
    for expected in &updates {
        let got = next_anchor_update(&mut p_link, &mut resumed.session).await;
        assert_eq!(&got, expected);
        assert_eq!(
            device_anchors.apply(&got),
            Err(ProtoError::PeerMisbehaved(
                PeerMisbehaved::StaleAnchorUpdate
            ))
        );
    }
    assert_eq!(s.ctx.metrics.anchor_updates_sent(), 4);
    drop(p_link);
    driver.await.unwrap();
}

#[tokio::test]
async fn a_gateway_holding_no_update_sends_none() {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    // The backend has issued none: the fetch finds nothing.
    let fetched = anchors::fetch(&s.backend, s.ctx.table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(fetched.added, 0);
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 3).await.unwrap();
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    // The first record the peripheral gets is the command sent now.
    let table = s.ctx.table.clone();
    let id = s.id;
    let send = tokio::spawn(async move { table.sessions().send(id, b"led=on".to_vec()).await });
    let msg = p_link.recv().await.unwrap().unwrap();
    let mut out = [0u8; 256];
    assert_eq!(
        est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Data(b"led=on")
    );
    send.await.unwrap().unwrap();
    assert_eq!(s.ctx.metrics.anchor_updates_sent(), 0);
}

#[tokio::test]
async fn fetched_updates_persist_across_a_restart_and_only_newer_ones_are_fetched() {
    let tmp = TempDir::new("anchors");
    let s = setup(Scope::TELEMETRY);
    let url = "https://backend.test:8443";
    let dir = StateDir::open(tmp.path()).unwrap();
    let updates = rotation(&s);
    s.backend.anchor_log.lock().unwrap().push(updates[0]);

    let first =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    assert!(first.anchor_updates().is_persistent());
    anchors::fetch(&s.backend, first.anchor_updates())
        .await
        .unwrap();
    assert_eq!(held(&first), [1]);
    let file = tmp.path().join(ANCHORS_FILE);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(first);

    // A new process on the same directory holds the update before asking
    // the backend, which is down: it is delivered all the same.
    s.backend
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let second =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    assert_eq!(held(&second), [1]);
    assert_eq!(
        second.anchor_updates().snapshot().unwrap()[0],
        updates[0],
        "restored exactly as signed"
    );
    assert!(matches!(
        anchors::fetch(&s.backend, second.anchor_updates()).await,
        Err(FetchError::Backend(BackendError::Unavailable(_)))
    ));
    assert_eq!(held(&second), [1], "a failed fetch keeps what is held");

    // The backend is back: the restarted gateway delivers what it restored.
    s.backend
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let ctx = context(&s.backend, s.ctx.config, second.clone(), TokioClock::new());
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(ctx.clone(), g_link, 6, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 7).await.unwrap();
    assert_eq!(
        next_anchor_update(&mut p_link, &mut est.session).await,
        updates[0]
    );

    // The next fetch asks only for what is newer.
    s.backend.anchor_log.lock().unwrap().push(updates[1]);
    s.backend.anchor_requests.lock().unwrap().clear();
    anchors::fetch(&s.backend, second.anchor_updates())
        .await
        .unwrap();
    assert_eq!(*s.backend.anchor_requests.lock().unwrap(), [1]);
    assert_eq!(held(&second), [1, 2]);
    drop(second);
    let third =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    assert_eq!(held(&third), [1, 2]);

    // Saved for another backend: ignored (its serials count that backend's
    // updates), and this backend's are fetched from the start.
    let other = SessionTable::open(
        100,
        &dir,
        &binding(&s, "https://other.test:8443"),
        Arc::new(TokioClock::new()),
    )
    .unwrap();
    assert!(other.anchor_updates().is_empty());

    // A gateway without a state directory keeps them in memory only.
    assert!(!SessionTable::new(10).anchor_updates().is_persistent());
}

#[tokio::test]
async fn a_damaged_update_file_is_logged_and_ignored_and_fetched_again() {
    let tmp = TempDir::new("anchors-damaged");
    let s = setup(Scope::TELEMETRY);
    let url = "https://backend.test:8443";
    let dir = StateDir::open(tmp.path()).unwrap();
    s.backend.anchor_log.lock().unwrap().extend(rotation(&s));
    let first =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    anchors::fetch(&s.backend, first.anchor_updates())
        .await
        .unwrap();
    drop(first);

    let file = tmp.path().join(ANCHORS_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let logs = Capture::default();
    let table = tracing::subscriber::with_default(logs.subscriber(), || {
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new()))
            .expect("a damaged file is not fatal")
    });
    assert!(table.anchor_updates().is_empty());
    let text = logs.text();
    assert!(
        text.lines().any(
            |l| l.contains("unreadable trust-anchor update file skipped")
                && l.contains(&file.display().to_string())
                && l.contains("checksum mismatch")
        ),
        "no log line for the damaged file in:\n{text}"
    );
    s.backend.anchor_requests.lock().unwrap().clear();
    anchors::fetch(&s.backend, table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(*s.backend.anchor_requests.lock().unwrap(), [0]);
    assert_eq!(held(&table), [1, 2]);
    drop(table);
    let again =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    assert_eq!(held(&again), [1, 2], "the file was written anew");
}

#[tokio::test]
async fn a_latest_below_what_is_held_drops_the_updates_above_it() {
    let tmp = TempDir::new("anchors-latest");
    let s = setup(Scope::TELEMETRY);
    let url = "https://backend.test:8443";
    let dir = StateDir::open(tmp.path()).unwrap();
    s.backend.anchor_log.lock().unwrap().extend(numbered(&s, 4));
    let table =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    anchors::fetch(&s.backend, table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(held(&table), [1, 2, 3, 4]);

    // The gateway now reaches an instance that hands out only up to 2 (it
    // does not serve the key serial 3 adds yet): 3 and 4 are dropped, on
    // disk too, and no longer delivered.
    *s.backend.anchor_latest.lock().unwrap() = Some(2);
    let fetched = anchors::fetch(&s.backend, table.anchor_updates())
        .await
        .unwrap();
    assert_eq!((fetched.dropped, fetched.latest, fetched.added), (2, 2, 0));
    assert_eq!(held(&table), [1, 2]);
    let restarted =
        SessionTable::open(100, &dir, &binding(&s, url), Arc::new(TokioClock::new())).unwrap();
    assert_eq!(held(&restarted), [1, 2]);
    let ctx = context(&s.backend, s.ctx.config, table.clone(), TokioClock::new());
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(ctx.clone(), g_link, 8, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 9).await.unwrap();
    for serial in [1, 2] {
        let u = next_anchor_update(&mut p_link, &mut est.session).await;
        assert_eq!(u.serial, serial);
    }
    wait_for("both updates counted", || {
        ctx.metrics.anchor_updates_sent() == 2
    })
    .await;

    // A backend restored from a backup that issued none: every one goes.
    *s.backend.anchor_latest.lock().unwrap() = Some(0);
    anchors::fetch(&s.backend, table.anchor_updates())
        .await
        .unwrap();
    assert!(table.anchor_updates().is_empty());
    // Once the instance serves the newest key, they come back.
    *s.backend.anchor_latest.lock().unwrap() = None;
    anchors::fetch(&s.backend, table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(held(&table), [1, 2, 3, 4]);
}

#[tokio::test]
async fn updates_are_fetched_page_after_page_past_the_64_of_one_answer() {
    let s = setup(Scope::TELEMETRY);
    let n = 150u32;
    s.backend.anchor_log.lock().unwrap().extend(numbered(&s, n));
    let fetched = anchors::fetch(&s.backend, s.ctx.table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(
        fetched,
        Fetched {
            pages: 3,
            added: n as usize,
            dropped: 0,
            refused: 0,
            latest: n,
        }
    );
    assert_eq!(
        *s.backend.anchor_requests.lock().unwrap(),
        [0, MAX_ANCHOR_UPDATES as u32, 2 * MAX_ANCHOR_UPDATES as u32]
    );
    assert_eq!(held(&s.ctx.table), (1..=n).collect::<Vec<_>>());

    // Every one reaches a peripheral after its handshake, in order.
    let (mut p_link, g_link) = pair(247, "p", "g");
    tokio::spawn(run_link_owned(s.ctx.clone(), g_link, 2, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 3).await.unwrap();
    for serial in 1..=n {
        let u = next_anchor_update(&mut p_link, &mut est.session).await;
        assert_eq!(u.serial, serial);
    }
}

#[tokio::test]
async fn follow_fetches_at_start_and_when_asked() {
    let s = setup(Scope::TELEMETRY);
    s.backend
        .anchor_log
        .lock()
        .unwrap()
        .extend(numbered(&s, 70));
    let updates = s.ctx.table.anchor_updates().clone();
    let follower = tokio::spawn(anchors::follow(
        s.backend.clone(),
        updates.clone(),
        anchors::DEFAULT_FETCH_INTERVAL,
        s.ctx.metrics.clone(),
        s.shutdown.clone(),
    ));
    wait_for("the fetch at start", || updates.len() == 70).await;
    wait_for("the gauge", || {
        s.ctx
            .metrics
            .render()
            .contains("vouch_gateway_anchor_update_serial 70")
    })
    .await;
    // An hour is long: a request brings a new update at once.
    let [template, _] = rotation(&s);
    s.backend.anchor_log.lock().unwrap().push(AnchorUpdate {
        serial: 71,
        ..template
    });
    updates.request_fetch();
    wait_for("the requested fetch", || updates.last_serial() == 71).await;
    assert_eq!(
        *s.backend.anchor_requests.lock().unwrap(),
        [0, 64, 70],
        "from the last serial held"
    );
    s.shutdown_tx.send(true).unwrap();
    follower.await.unwrap();
}

#[tokio::test]
async fn an_anchor_update_announced_on_the_feed_is_fetched_at_once() {
    let s = setup(Scope::TELEMETRY);
    let updates = s.ctx.table.anchor_updates().clone();
    // The periodic fetch is an hour away: only the feed can bring the
    // update sooner.
    let fetcher = tokio::spawn(anchors::follow(
        s.backend.clone(),
        updates.clone(),
        anchors::DEFAULT_FETCH_INTERVAL,
        s.ctx.metrics.clone(),
        s.shutdown.clone(),
    ));
    let feed = tokio::spawn(vouch_gateway::revocation::follow(
        s.backend.clone(),
        s.ctx.table.clone(),
        s.ctx.config.gateway_key,
        s.ctx.metrics.clone(),
        s.shutdown.clone(),
    ));
    wait_for("the fetch at start", || {
        *s.backend.anchor_requests.lock().unwrap() == [0]
    })
    .await;
    let [first, second] = rotation(&s);
    s.backend.anchor_log.lock().unwrap().push(first);
    let announce = |seq, serial| FeedEvent {
        seq,
        at_ms: 0,
        change: FeedChange::AnchorUpdates(serial),
    };
    s.feed_tx.send(announce(1, 1)).await.unwrap();
    wait_for("the update announced on the feed", || {
        updates.last_serial() == 1
    })
    .await;
    // An announcement of what the gateway holds costs nothing; the next
    // one brings the next update.
    s.feed_tx.send(announce(2, 1)).await.unwrap();
    s.backend.anchor_log.lock().unwrap().push(second);
    s.feed_tx.send(announce(3, 2)).await.unwrap();
    wait_for("the second update", || updates.last_serial() == 2).await;
    assert_eq!(*s.backend.anchor_requests.lock().unwrap(), [0, 0, 1]);
    s.shutdown_tx.send(true).unwrap();
    fetcher.await.unwrap();
    feed.abort();
}

#[tokio::test]
async fn no_more_than_the_bound_is_held_and_the_excess_is_refused_with_an_error() {
    let s = setup(Scope::TELEMETRY);
    let n = MAX_HELD_ANCHOR_UPDATES as u32 + 10;
    s.backend.anchor_log.lock().unwrap().extend(numbered(&s, n));
    let logs = Capture::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let fetched = anchors::fetch(&s.backend, s.ctx.table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(fetched.added, MAX_HELD_ANCHOR_UPDATES);
    assert!(fetched.refused > 0);
    assert_eq!(s.ctx.table.anchor_updates().len(), MAX_HELD_ANCHOR_UPDATES);
    assert!(
        logs.text()
            .lines()
            .any(|l| l.contains("ERROR")
                && l.contains("holds the most trust-anchor updates it keeps")),
        "{}",
        logs.text()
    );
    // Asking again changes nothing.
    let again = anchors::fetch(&s.backend, s.ctx.table.anchor_updates())
        .await
        .unwrap();
    assert_eq!(again.added, 0);
    assert_eq!(
        s.ctx.table.anchor_updates().last_serial(),
        MAX_HELD_ANCHOR_UPDATES as u32
    );
}

/// A backend whose answer breaks SPEC.md §10.6.
struct Inconsistent(AnchorUpdateBatch);

impl BackendApi for Inconsistent {
    async fn vouch(
        &self,
        _: vouch_proto::wire::backend::VouchRequest,
    ) -> Result<vouch_proto::wire::backend::VouchAnswer, BackendError> {
        Err(BackendError::Unavailable("not here".into()))
    }
    async fn report(
        &self,
        _: vouch_proto::wire::backend::SessionReport,
    ) -> Result<vouch_proto::wire::backend::SessionReportAnswer, BackendError> {
        Err(BackendError::Unavailable("not here".into()))
    }
    async fn feed(&self, _: u64) -> Result<vouch_proto::wire::backend::FeedBatch, BackendError> {
        std::future::pending().await
    }
    async fn anchor_updates(&self, _after: u32) -> Result<AnchorUpdateBatch, BackendError> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn an_inconsistent_answer_is_refused_whole() {
    let s = setup(Scope::TELEMETRY);
    let updates = numbered(&s, 3);
    let table = SessionTable::new(10);
    let good = Inconsistent(AnchorUpdateBatch {
        updates: updates[..1].to_vec(),
        latest: 1,
    });
    anchors::fetch(&good, table.anchor_updates()).await.unwrap();
    for (updates, latest) in [
        (vec![updates[2], updates[1]], 3), // out of order
        (vec![updates[0], updates[1]], 2), // a serial already held
        (vec![updates[1]], 1),             // above latest
        (vec![], 3),                       // more announced, none sent
    ] {
        let bad = Inconsistent(AnchorUpdateBatch { updates, latest });
        assert!(matches!(
            anchors::fetch(&bad, table.anchor_updates()).await,
            Err(FetchError::BadAnswer(_))
        ));
        assert_eq!(held(&table), [1]);
    }
}

#[tokio::test]
async fn a_backend_without_anchor_updates_is_not_asked_again() {
    /// The trait's default: no anchor updates offered.
    struct Plain;
    impl BackendApi for Plain {
        async fn vouch(
            &self,
            _: vouch_proto::wire::backend::VouchRequest,
        ) -> Result<vouch_proto::wire::backend::VouchAnswer, BackendError> {
            Err(BackendError::Unavailable("not here".into()))
        }
        async fn report(
            &self,
            _: vouch_proto::wire::backend::SessionReport,
        ) -> Result<vouch_proto::wire::backend::SessionReportAnswer, BackendError> {
            Err(BackendError::Unavailable("not here".into()))
        }
        async fn feed(
            &self,
            _: u64,
        ) -> Result<vouch_proto::wire::backend::FeedBatch, BackendError> {
            std::future::pending().await
        }
    }
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(vouch_gateway::metrics::Metrics::new().unwrap());
    // Returns by itself instead of retrying forever.
    tokio::time::timeout(
        Duration::from_secs(5),
        anchors::follow(
            Plain,
            SessionTable::new(1).anchor_updates().clone(),
            anchors::DEFAULT_FETCH_INTERVAL,
            metrics,
            shutdown,
        ),
    )
    .await
    .expect("follow returns when the backend offers no anchor updates");
}
