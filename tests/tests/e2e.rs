//! End to end over real sockets: the backend serving HTTPS (mutual TLS for
//! the gateway), the gateway's TCP transport, and the device driver.

use std::time::Instant;

use vouch_gateway::sessions::SendError;
use vouch_peripheral::driver::SessionEnd;
use vouch_peripheral::Event;
use vouch_proto::session::CloseReason;
use vouch_tests::{wait_for, Backend, Db, Device, Gateway};

async fn first_session_and_data(db: Db) {
    let backend = Backend::start_on(db).await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;

    let mut inbound = gateway.table.sessions().subscribe();
    let mut dev = device.run(&gateway).await;
    assert!(
        !dev.established().await,
        "the first session is a full handshake"
    );
    wait_for("the gateway's session", || {
        gateway.has_session(&device.id).then_some(())
    })
    .await;

    // Device → gateway.
    dev.handle
        .send(b"t=21.5".to_vec())
        .await
        .expect("telemetry sent");
    let got = tokio::time::timeout(vouch_tests::DEADLINE, inbound.recv())
        .await
        .expect("telemetry arrives")
        .expect("msg");
    assert_eq!(
        (got.peripheral, got.data.as_slice()),
        (device.id, &b"t=21.5"[..])
    );

    // Gateway → device.
    gateway
        .table
        .sessions()
        .send(device.id, b"led=on".to_vec())
        .await
        .expect("command sent");
    let ev = dev
        .next_matching("the command", |e| matches!(e, Event::Data(_)))
        .await;
    assert!(matches!(ev, Event::Data(d) if d == b"led=on"));

    // The backend recorded the vouch.
    let audit = backend.audit_of(&device.id).await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "vouch" && e["outcome"] == "vouched"),
        "audit: {audit:?}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn enrollment_to_first_session_with_data_both_ways_on_sqlite() {
    first_session_and_data(Db::Sqlite).await;
}

#[tokio::test]
async fn enrollment_to_first_session_with_data_both_ways_on_postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    first_session_and_data(db).await;
}

#[tokio::test]
async fn commands_outside_the_granted_scope_are_refused() {
    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry")
        .await;
    let mut dev = device.run(&gateway).await;
    dev.established().await;
    wait_for("session", || gateway.has_session(&device.id).then_some(())).await;
    assert_eq!(
        gateway
            .table
            .sessions()
            .send(device.id, b"unlock".to_vec())
            .await,
        Err(SendError::OutOfScope(device.id))
    );
    dev.stop().await;
}

#[tokio::test]
async fn resumption_while_the_backend_is_down() {
    let mut backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let store = device.store();
    // Let the gateway apply every feed event committed so far before the
    // device connects (a PolicyChanged would close every session, SPEC.md
    // §10.5).
    gateway.caught_up().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await);
    dev.stop().await;
    wait_for("the first session to end", || {
        (!gateway.has_session(&device.id)).then_some(())
    })
    .await;

    backend.stop().await;
    // The same device (same flash) comes back: it resumes without the backend.
    let mut dev = device.run_url(&gateway.url(), store).await;
    assert!(dev.established().await, "resumed without the backend");
    dev.handle.send(b"still here".to_vec()).await.expect("send");
    dev.stop().await;

    // A device that never had a session cannot get one while the backend is down.
    let newcomer = Device::enroll_offline(&device);
    let mut dev = newcomer.run(&gateway).await;
    dev.next_matching("a refusal", |e| matches!(e, Event::HandshakeFailed(_)))
        .await;
    dev.stop().await;
}

#[tokio::test]
async fn revoking_a_peripheral_closes_its_live_session() {
    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let mut dev = device.run(&gateway).await;
    dev.established().await;
    wait_for("session", || gateway.has_session(&device.id).then_some(())).await;

    let t0 = Instant::now();
    backend.peripheral_action(&device.id, "revoke").await;
    let ev = dev
        .next_matching("the revocation close", |e| {
            matches!(e, Event::SessionEnded(SessionEnd::ClosedByGateway(_)))
        })
        .await;
    let latency = t0.elapsed();
    assert!(
        matches!(
            ev,
            Event::SessionEnded(SessionEnd::ClosedByGateway(CloseReason::REVOKED))
        ),
        "{ev:?}"
    );
    println!("revocation reached the live session in {latency:?}");
    // And it cannot come back: the next handshake is refused.
    dev.next_matching("a refused handshake", |e| {
        matches!(e, Event::HandshakeFailed(_))
    })
    .await;
    assert!(!gateway.has_session(&device.id));
    let audit = backend.audit_of(&device.id).await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "vouch" && e["outcome"] == "denied"),
        "the refusal is audited: {audit:?}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn revoking_a_gateway_closes_its_sessions() {
    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry")
        .await;
    let mut dev = device.run(&gateway).await;
    dev.established().await;
    backend.gateway_action(&gateway.key, "revoke").await;
    let ev = dev
        .next_matching("the close", |e| {
            matches!(e, Event::SessionEnded(SessionEnd::ClosedByGateway(_)))
        })
        .await;
    assert!(
        matches!(
            ev,
            Event::SessionEnded(SessionEnd::ClosedByGateway(CloseReason::REVOKED))
        ),
        "{ev:?}"
    );
    dev.next_matching("a refused handshake", |e| {
        matches!(e, Event::HandshakeFailed(_))
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn backend_restart_keeps_sessions_and_serves_new_peripherals() {
    let mut backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let a = Device::enroll(&backend, "meters").await;
    let b = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let mut dev_a = a.run(&gateway).await;
    dev_a.established().await;

    backend.restart().await;
    // The live session never needed the backend.
    dev_a
        .handle
        .send(b"across the restart".to_vec())
        .await
        .expect("send");
    // A new peripheral gets a full handshake from the restarted backend.
    let mut dev_b = b.run(&gateway).await;
    assert!(!dev_b.established().await);
    dev_a.stop().await;
    dev_b.stop().await;
}

#[tokio::test]
async fn gateway_restart_is_survived() {
    let backend = Backend::start().await;
    let mut gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let mut dev = device.run(&gateway).await;
    dev.established().await;

    gateway.restart().await;
    dev.next_matching("the session to end", |e| {
        matches!(e, Event::SessionEnded(_))
    })
    .await;
    // The device reconnects by itself; the restarted gateway lost its
    // tickets, so this is a full handshake through the backend.
    dev.established().await;
    wait_for("the new session", || {
        gateway.has_session(&device.id).then_some(())
    })
    .await;
    gateway
        .table
        .sessions()
        .send(device.id, b"hello again".to_vec())
        .await
        .expect("command after restart");
    dev.stop().await;
}

#[tokio::test]
async fn two_backend_instances_on_one_postgres_act_as_one() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let a = Backend::start_on(db).await;
    let b = a.second_instance().await;
    // The gateway talks to instance B; the operator revokes through instance A.
    let gateway = Gateway::start(&a, "plant-1").await;
    let gateway_b = Gateway::start_with_backend_url(&a, "plant-2", &b.url()).await;
    let device = Device::enroll(&a, "meters").await;
    a.allow("group:meters", "any", "telemetry").await;
    let mut dev = device.run(&gateway_b).await;
    dev.established().await;
    a.peripheral_action(&device.id, "revoke").await;
    // Instance B's feed carries the revocation to its gateway...
    dev.next_matching("the close", |e| {
        matches!(e, Event::SessionEnded(SessionEnd::ClosedByGateway(_)))
    })
    .await;
    // ...and B refuses the next vouch.
    dev.next_matching("a refused handshake", |e| {
        matches!(e, Event::HandshakeFailed(_))
    })
    .await;
    drop(gateway);
    dev.stop().await;
}

/// Rekeying (SPEC.md §7.5) through the real gateway: a device that ratchets
/// its sending key every two records (its local policy) is followed by the
/// gateway through every epoch, and the other direction carries on.
#[tokio::test]
async fn a_rekeying_device_is_followed_through_every_epoch() {
    use vouch_gateway::transport::Link;
    use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
    use vouch_proto::session::{Inbound, RekeyPolicy};
    use vouch_proto::testing::rng;
    use vouch_proto::wire::MAX_HANDSHAKE_MESSAGE;
    use vouch_proto::Timestamp;

    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        device.id,
        &device.key(),
        &device.anchors(),
        Timestamp(0),
        &mut rng(70),
    )
    .expect("start");
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p.poll_transmit(&mut buf).expect("hello");
    let (response, mut link) = vouch_tests::exchange(&gateway.url(), &buf[..n]).await;
    p.handle_input(Timestamp(0), &response).expect("vouched");
    let n = p.poll_transmit(&mut buf).expect("finish");
    let mut inbound = gateway.table.sessions().subscribe();
    link.send(&buf[..n]).await.expect("finish");
    let mut est = p.into_established().expect("established");
    wait_for("the session", || {
        gateway.has_session(&device.id).then_some(())
    })
    .await;

    est.session.set_rekey_policy(RekeyPolicy {
        after_records: 2,
        after_bytes: u64::MAX,
    });
    let mut record = [0u8; 512];
    for i in 0..7u8 {
        let n = est
            .session
            .seal_data(Timestamp(0), &[i; 12], &mut record)
            .expect("seal");
        link.send(&record[..n]).await.expect("send");
        let got = tokio::time::timeout(vouch_tests::DEADLINE, inbound.recv())
            .await
            .expect("the gateway delivers it")
            .expect("inbound");
        assert_eq!(got.data, vec![i; 12], "record {i}");
    }
    assert_eq!(
        est.session.epochs().0,
        3,
        "7 records at 2 per key: epochs 0..=3"
    );
    gateway
        .table
        .sessions()
        .send(device.id, b"led=on".to_vec())
        .await
        .expect("command");
    let msg = tokio::time::timeout(vouch_tests::DEADLINE, link.recv())
        .await
        .expect("the command arrives")
        .expect("link")
        .expect("a message");
    let mut out = [0u8; 512];
    assert_eq!(
        est.session
            .open(Timestamp(0), &msg, &mut out)
            .expect("open"),
        Inbound::Data(&b"led=on"[..])
    );
}
