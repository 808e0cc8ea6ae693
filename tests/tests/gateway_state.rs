//! A gateway with a state directory, restarted, against the real backend
//! over HTTPS: devices resume without a backend round trip, and a device
//! revoked while the gateway was down does not.

use vouch_peripheral::{DriverError, Event, KeyStore};
use vouch_proto::{AlertCode, Error as ProtoError};
use vouch_tests::{wait_for, Backend, Device, Gateway, DEADLINE};

#[tokio::test]
async fn a_restarted_gateway_resumes_its_devices_without_asking_the_backend() {
    let backend = Backend::start().await;
    let mut gateway = Gateway::start_with_state(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let mut dev = device.run(&gateway).await;
    assert!(
        !dev.established().await,
        "the first session is a full handshake"
    );
    wait_for("the ticket", || {
        (gateway.table.tickets().len() == 1).then_some(())
    })
    .await;
    assert_eq!(backend.vouch_audit_of_gateway(&gateway.key).await.len(), 1);

    gateway.restart().await;
    dev.next_matching("the session to end", |e| {
        matches!(e, Event::SessionEnded(_))
    })
    .await;
    // The device reconnects by itself and resumes with the ticket the
    // restarted gateway read back from its state directory.
    assert!(dev.established().await, "resumed after the gateway restart");
    wait_for("the resumed session", || {
        gateway.has_session(&device.id).then_some(())
    })
    .await;
    gateway
        .table
        .sessions()
        .send(device.id, b"after the restart".to_vec())
        .await
        .expect("command after the restart");
    assert_eq!(
        backend.vouch_audit_of_gateway(&gateway.key).await.len(),
        1,
        "the backend vouched once, before the restart"
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_device_revoked_while_its_gateway_was_down_cannot_resume() {
    let backend = Backend::start().await;
    let mut gateway = Gateway::start_with_state(&backend, "plant-1").await;
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
    wait_for("the ticket", || {
        (gateway.table.tickets().len() == 1).then_some(())
    })
    .await;

    // The gateway is down while the operator revokes the device.
    gateway.stop().await;
    backend.peripheral_action(&device.id, "revoke").await;
    gateway.start_again().await;
    assert_eq!(
        gateway.table.tickets().restore_report().map(|r| r.restored),
        Some(1),
        "the ticket was saved"
    );

    // The device comes back with its ticket (same flash): the resumption is
    // refused, and so is the full handshake that follows.
    assert!(
        !store.load_tickets().expect("the device's store").is_empty(),
        "the device still holds its ticket, so it tries to resume"
    );
    let mut dev = device.run_url(&gateway.url(), store).await;
    dev.next_matching("the resumption refused", |e| {
        matches!(
            e,
            Event::HandshakeFailed(DriverError::Protocol(ProtoError::Alert(
                AlertCode::ResumptionRejected
            )))
        )
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let audit = backend.vouch_audit_of_gateway(&gateway.key).await;
        if audit.iter().any(|e| e["outcome"] == "denied") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refused vouch in the audit: {audit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !dev.seen.iter().any(|e| e.starts_with("Established")),
        "the revoked device got a session: {:?}",
        dev.seen
    );
    assert!(!gateway.has_session(&device.id));
    assert_eq!(gateway.table.tickets().len(), 0, "the ticket was deleted");
    dev.stop().await;
}
