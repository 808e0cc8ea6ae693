//! The device driver against the REAL gateway (vouch-gateway's TCP server and
//! per-link drivers) with an in-process backend: first boot, reboot with
//! resumption while the backend is down, revocation, rogue gateways, vouches
//! for someone else, timeouts, and gateway restarts.

mod common;

use std::time::Duration;

use common::{fast_config, next_matching, provisioned, Backend, Gateway, Mode, Running, DEADLINE};
use tokio::sync::oneshot;
use vouch_gateway::sessions::SessionTable;
use vouch_peripheral::{
    Device, DriverConfig, DriverError, Event, FileKeyStore, KeyStore, TcpConnector,
};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::peripheral::TicketSlot;
use vouch_proto::keys::{IdentityKey, KeyId};
use vouch_proto::session::CloseReason;
use vouch_proto::testing::rng;
use vouch_proto::wire::Scope;
use vouch_proto::Error as ProtoError;

const FULL: Scope = Scope(Scope::TELEMETRY.0 | Scope::COMMAND.0);

#[tokio::test]
async fn first_boot_authenticates_sends_telemetry_and_receives_commands() {
    let backend = Backend::new(1);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    let id = provisioned(&backend, tmp.path(), FULL);
    let mut inbound = gw.ctx.table.sessions().subscribe();

    let mut dev = Running::boot(tmp.path(), &gw.url(), 2);
    let s = dev.established().await;
    assert!(!s.resumed, "first boot: full handshake");
    assert_eq!(s.gateway_key, backend.gateway.public_key());
    assert_eq!(s.scope, FULL);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    gw.wait_until("the session in the gateway table", |t| {
        t.sessions().len() == 1
    })
    .await;
    assert_eq!(gw.ctx.table.sessions().list()[0].peripheral, id);
    assert!(
        FileKeyStore::open(tmp.path())
            .unwrap()
            .load_tickets()
            .unwrap()
            .ticket(TicketSlot::Unconfirmed)
            .is_some(),
        "the resumption ticket is on disk"
    );

    // Telemetry reaches the gateway, authenticated as this device.
    for i in 0..3 {
        let msg = format!("{{\"seq\":{i}}}");
        dev.handle.send(msg.clone()).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.peripheral, got.data), (id, msg.into_bytes()));
    }
    // A command from the gateway arrives at the device.
    gw.ctx
        .table
        .sessions()
        .send(id, b"led=on".to_vec())
        .await
        .unwrap();
    assert_eq!(dev.data().await, b"led=on");

    // An orderly shutdown closes the session at the gateway.
    dev.shutdown().await;
    gw.wait_until("the session to end", |t| t.sessions().is_empty())
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn reboot_resumes_without_the_backend_and_falls_back_when_the_ticket_is_gone() {
    let backend = Backend::new(3);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    provisioned(&backend, tmp.path(), FULL);

    let mut dev = Running::boot(tmp.path(), &gw.url(), 4);
    assert!(!dev.established().await.resumed);
    dev.shutdown().await;
    gw.wait_until("the first session to end", |t| {
        t.sessions().is_empty() && t.tickets().len() == 1
    })
    .await;

    // Reboot with the backend down: the stored ticket resumes, no backend.
    backend
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before = backend.requests.load(std::sync::atomic::Ordering::SeqCst);
    let mut dev = Running::boot(tmp.path(), &gw.url(), 5);
    let s = dev.established().await;
    assert!(s.resumed, "resumed after the reboot: {:?}", dev.seen);
    assert_eq!(s.scope, FULL, "a resumption keeps the vouch's scope");
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    dev.handle.send(b"after reboot".to_vec()).await.unwrap();
    dev.shutdown().await;
    gw.wait_until("the resumed session to end", |t| t.sessions().is_empty())
        .await;

    // The gateway lost its tickets (as a restarted gateway daemon does): the
    // device's ResumeHello is rejected and it runs a full handshake at once.
    gw.ctx.table.tickets().forget_all();
    backend
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut dev = Running::boot(tmp.path(), &gw.url(), 6);
    let failure = dev.handshake_failure().await;
    assert!(failure.contains("ResumptionRejected"), "{failure}");
    let s = dev.established().await;
    assert!(!s.resumed);
    let seen = dev.shutdown().await;
    let retries = seen.iter().filter(|e| e.starts_with("Retrying")).count();
    assert_eq!(retries, 0, "no backoff after ResumptionRejected: {seen:#?}");
    gw.stop().await;
}

/// A rogue central during a backend outage (SPEC.md §6.4, issue 15 §2):
/// it answers the device's attempts with a forged ResumeResponse, garbage
/// and an unauthenticated ResumptionRejected. None of it costs the device
/// its ticket, and it then resumes with its genuine gateway, the backend
/// still down.
#[tokio::test]
async fn a_rogue_central_during_a_backend_outage_cannot_cost_the_device_its_ticket() {
    use vouch_peripheral::{Link, TcpLink};
    let backend = Backend::new(21);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    provisioned(&backend, tmp.path(), FULL);
    let mut dev = Running::boot(tmp.path(), &gw.url(), 22);
    assert!(!dev.established().await.resumed);
    dev.shutdown().await;
    gw.wait_until("the first session to end", |t| {
        t.sessions().is_empty() && t.tickets().len() == 1
    })
    .await;
    backend
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let rogue = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue_url = format!("tcp://{}", rogue.local_addr().unwrap());
    let mut forged = vec![1u8, 4];
    forged.extend_from_slice(&[9; 32]);
    forged.extend_from_slice(&[7; 16]);
    let answers = [forged, vec![0xde, 0xad], vec![1, 6, 3]];
    let rogue_task = tokio::spawn(async move {
        for answer in answers {
            let (stream, _) = rogue.accept().await.unwrap();
            let mut link = TcpLink::new(stream, 247, Default::default()).unwrap();
            let _first = tokio::time::timeout(DEADLINE, link.recv()).await;
            link.send(&answer).await.unwrap();
            // Whatever the device sends back (an alert), then hang up.
            let _ = tokio::time::timeout(Duration::from_millis(200), link.recv()).await;
        }
    });
    let mut dev = Running::boot(tmp.path(), &rogue_url, 23);
    for _ in 0..3 {
        dev.handshake_failure().await;
    }
    dev.shutdown().await;
    rogue_task.await.unwrap();
    assert!(
        !FileKeyStore::open(tmp.path())
            .unwrap()
            .load_tickets()
            .unwrap()
            .is_empty(),
        "the ticket is still on disk"
    );

    let before = backend.requests.load(std::sync::atomic::Ordering::SeqCst);
    let mut dev = Running::boot(tmp.path(), &gw.url(), 24);
    let s = dev.established().await;
    assert!(
        s.resumed,
        "resumed with the genuine gateway: {:?}",
        dev.seen
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "without the backend"
    );
    dev.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn revoked_device_gets_no_session_and_backs_off_until_reinstated() {
    let backend = Backend::new(7);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    let id = provisioned(&backend, tmp.path(), FULL);
    backend.revoke(id);

    let mut dev = Running::boot(tmp.path(), &gw.url(), 8);
    for n in 1..=4u32 {
        let failure = dev.handshake_failure().await;
        assert!(
            failure.contains("Alert(HandshakeFailed)"),
            "the gateway only says HandshakeFailed: {failure}"
        );
        let (delay, failures) = dev.retry().await;
        assert_eq!(failures, n);
        let ceiling = Duration::from_millis((20u64 << (n - 1)).min(200));
        assert!(
            delay >= ceiling / 2 && delay <= ceiling,
            "backoff {n}: {delay:?} not in [{:?}, {ceiling:?}]",
            ceiling / 2
        );
        assert!(
            gw.ctx.table.sessions().is_empty(),
            "no session for a revoked device"
        );
    }
    assert!(backend.refusals.load(std::sync::atomic::Ordering::SeqCst) >= 4);

    // Reinstated: the next attempt succeeds.
    backend.reinstate(id);
    let s = dev.established().await;
    assert!(!s.resumed);

    // Revoked again while live: the gateway closes the session (reason
    // revoked) and the device forgets its ticket.
    gw.wait_until("the session in the gateway table", |t| {
        t.sessions().len() == 1
    })
    .await;
    backend.revoke(id);
    assert!(gw.ctx.table.close(&id, CloseReason::REVOKED));
    let end = dev.session_end().await;
    assert!(end.contains("ClosedByGateway(CloseReason(1))"), "{end}");
    assert!(FileKeyStore::open(tmp.path())
        .unwrap()
        .load_tickets()
        .unwrap()
        .is_empty());
    // ...and is refused at its next handshake.
    let failure = dev.handshake_failure().await;
    assert!(failure.contains("Alert(HandshakeFailed)"), "{failure}");
    dev.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn rogue_gateway_vouch_is_rejected_by_the_device() {
    let backend = Backend::new(9);
    // Same key id as the device's anchor, another signing key.
    *backend.mode.lock().unwrap() =
        Mode::RogueSigner(BackendKeys::generate(KeyId(1), &mut rng(10)));
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    provisioned(&backend, tmp.path(), FULL);

    let mut dev = Running::boot(tmp.path(), &gw.url(), 11);
    for _ in 0..2 {
        let failure = dev.handshake_failure().await;
        assert!(failure.contains("BadVouchSignature"), "{failure}");
        dev.retry().await;
    }
    assert!(
        gw.ctx.table.sessions().is_empty(),
        "the gateway got no session"
    );
    assert!(FileKeyStore::open(tmp.path())
        .unwrap()
        .load_tickets()
        .unwrap()
        .is_empty());
    let seen = dev.shutdown().await;
    assert!(
        !seen.iter().any(|e| e.starts_with("Established")),
        "{seen:#?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn gateway_presenting_another_peripherals_vouch_is_rejected() {
    let backend = Backend::new(12);
    let other = IdentityKey::generate(&mut rng(13));
    backend.enroll(other.public_key(), FULL);
    *backend.mode.lock().unwrap() = Mode::OtherPeripheral(other);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    provisioned(&backend, tmp.path(), FULL);

    let mut dev = Running::boot(tmp.path(), &gw.url(), 14);
    let failure = dev.handshake_failure().await;
    assert!(failure.contains("BadVouchSignature"), "{failure}");
    dev.retry().await;
    assert!(gw.ctx.table.sessions().is_empty());
    dev.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn silent_gateway_times_out_and_the_device_retries() {
    // A TCP peer that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let backend = Backend::new(15);
    let tmp = tempfile::tempdir().unwrap();
    provisioned(&backend, tmp.path(), FULL);
    let store = FileKeyStore::open(tmp.path()).unwrap();
    let mut config = fast_config();
    config.handshake_timeout = Duration::from_millis(200);
    let (device, _handle, mut events) = Device::with_rng(
        store,
        TcpConnector::from_url(&format!("tcp://{addr}"), 247).unwrap(),
        config,
        rng(16),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(device.run(async move {
        let _ = stopped.await;
    }));
    let mut seen = Vec::new();
    let failure = next_matching(&mut events, &mut seen, "a timeout", |e| match e {
        Event::HandshakeFailed(DriverError::Protocol(ProtoError::Timeout)) => Some(()),
        _ => None,
    })
    .await;
    let () = failure;
    next_matching(&mut events, &mut seen, "a retry", |e| {
        matches!(e, Event::Retrying { .. }).then_some(())
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    holder.abort();
}

#[tokio::test]
async fn gateway_restarts_are_survived_with_and_without_its_tickets() {
    let backend = Backend::new(17);
    let gw = Gateway::start(&backend).await;
    let addr = gw.addr;
    let url = gw.url();
    let tmp = tempfile::tempdir().unwrap();
    let id = provisioned(&backend, tmp.path(), FULL);
    let mut dev = Running::boot(tmp.path(), &url, 18);
    assert!(!dev.established().await.resumed);
    gw.wait_until("the session in the gateway table", |t| {
        t.sessions().len() == 1
    })
    .await;

    // Restart 1: the gateway stops (closing the session: reason shutdown),
    // stays down for a while, and comes back with its ticket store.
    let table = gw.stop().await;
    let end = dev.session_end().await;
    assert!(end.contains("ClosedByGateway(CloseReason(3))"), "{end}");
    next_matching(
        &mut dev.events,
        &mut dev.seen,
        "a refused connection",
        |e| matches!(e, Event::ConnectFailed(_)).then_some(()),
    )
    .await;
    dev.retry().await;
    let gw = Gateway::start_on(&backend, addr, table).await;
    let s = dev.established().await;
    assert!(
        s.resumed,
        "resumed with the restarted gateway: {:#?}",
        dev.seen
    );
    gw.wait_until("the resumed session", |t| t.sessions().len() == 1)
        .await;
    let mut inbound = gw.ctx.table.sessions().subscribe();
    dev.handle.send(b"still here".to_vec()).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, inbound.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.peripheral, got.data.as_slice()),
        (id, &b"still here"[..])
    );

    // Restart 2: the gateway comes back without tickets (its daemon keeps
    // them in memory): the device falls back to a full handshake.
    gw.stop().await;
    dev.session_end().await;
    let gw = Gateway::start_on(&backend, addr, SessionTable::new(100)).await;
    let failure = dev.handshake_failure().await;
    assert!(failure.contains("ResumptionRejected"), "{failure}");
    let s = dev.established().await;
    assert!(!s.resumed);
    gw.wait_until("the new session", |t| t.sessions().len() == 1)
        .await;
    dev.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn sending_without_a_session_or_without_telemetry_scope_fails_cleanly() {
    let backend = Backend::new(19);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    // The policy grants commands only: the device may not send.
    provisioned(&backend, tmp.path(), Scope::COMMAND);
    let mut dev = Running::boot(tmp.path(), &gw.url(), 20);
    let s = dev.established().await;
    assert_eq!(s.scope, Scope::COMMAND);
    let err = dev.handle.send(b"x".to_vec()).await.unwrap_err();
    assert!(
        matches!(err, DriverError::Protocol(ProtoError::ApiMisuse(_))),
        "{err:?}"
    );
    dev.shutdown().await;

    // With the gateway gone and no session, sends say so at once.
    gw.stop().await;
    let mut dev = Running::boot(tmp.path(), "tcp://127.0.0.1:9", 21);
    dev.retry().await;
    assert!(matches!(
        dev.handle.send(b"x".to_vec()).await,
        Err(DriverError::NotConnected)
    ));
    dev.shutdown().await;
}

#[tokio::test]
async fn an_unprovisioned_device_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    FileKeyStore::generate(tmp.path(), None).unwrap();
    let store = FileKeyStore::open(tmp.path()).unwrap();
    let (device, _h, _e) = Device::with_rng(
        store,
        TcpConnector::from_url("tcp://127.0.0.1:9", 247).unwrap(),
        fast_config(),
        rng(1),
    );
    let err = device.run(std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("no trust anchors"), "{err}");
}

/// Boots a device with `danger_silent` (an attacker, tests only) against `url`.
fn boot_silent(
    dir: &std::path::Path,
    url: &str,
    seed: u64,
) -> (
    vouch_peripheral::Events,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), DriverError>>,
) {
    let config = DriverConfig {
        danger_silent: true,
        ..fast_config()
    };
    let store = FileKeyStore::open(dir).unwrap();
    let connector = TcpConnector::from_url(url, 247).unwrap();
    let (device, _handle, events) = Device::with_rng(store, connector, config, rng(seed));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(device.run(async move {
        let _ = stopped.await;
    }));
    (events, stop, task)
}

/// The next `Connected`; any handshake on the way fails the test.
async fn next_silent_connect(events: &mut vouch_peripheral::Events, seen: &mut Vec<String>) {
    next_matching(events, seen, "a connect", |e| match e {
        Event::Connected { .. } => Some(()),
        Event::Established(_) | Event::HandshakeFailed(_) => {
            panic!("a danger-silent device made a handshake: {e:?}")
        }
        _ => None,
    })
    .await;
}

/// `DriverConfig::danger_silent` (`vouch-peripheral run --danger-silent`,
/// an attacker for tests): the device connects, sends not one byte, holds
/// the link until the other side closes it, and connects again. Against
/// the real gateway it is closed at the first-message deadline (SPEC.md
/// §8.4) and never costs a backend request.
#[tokio::test]
async fn a_danger_silent_device_sends_nothing_and_holds_the_link_until_closed() {
    use tokio::io::AsyncReadExt;
    let backend = Backend::new(23);
    let tmp = tempfile::tempdir().unwrap();
    provisioned(&backend, tmp.path(), FULL);

    // A bare listener: not one byte arrives, and the device does not hang up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let (mut events, stop, task) = boot_silent(tmp.path(), &url, 24);
    let mut seen = Vec::new();
    for round in 0..2 {
        let (mut conn, _) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("the silent device connects (again)")
            .unwrap();
        next_silent_connect(&mut events, &mut seen).await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(1500), conn.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "round {round}: the silent device sent something or hung up: {read:?}"
        );
        // Closing the link makes the device connect again.
        drop(conn);
    }
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the driver stops")
        .unwrap()
        .unwrap();

    // The real gateway closes it at the first-message deadline; it comes back.
    let gw = Gateway::start(&backend).await;
    let (mut events, stop, task) = boot_silent(tmp.path(), &gw.url(), 25);
    for _ in 0..2 {
        next_silent_connect(&mut events, &mut seen).await;
    }
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a silent device costs the backend nothing"
    );
    assert_eq!(gw.ctx.table.sessions().len(), 0);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the driver stops")
        .unwrap()
        .unwrap();
    gw.stop().await;
}
