//! A policy change reaches live sessions (SPEC.md §10.5), against the real
//! backend: removing the rule that lets a device attach to a gateway closes
//! its live session at once, drops its ticket, and the device is refused at
//! its next handshake.

use std::time::Instant;

use vouch_peripheral::driver::SessionEnd;
use vouch_peripheral::Event;
use vouch_proto::session::CloseReason;
use vouch_tests::{wait_for, Backend, Device, Gateway};

#[tokio::test]
async fn removing_the_policy_rule_closes_the_live_session_and_the_device_is_refused() {
    let backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let mut dev = device.run(&gateway).await;
    dev.established().await;
    wait_for("the session", || {
        gateway.has_session(&device.id).then_some(())
    })
    .await;
    wait_for("the ticket", || {
        (gateway.table.ticket_count() == 1).then_some(())
    })
    .await;

    let (_, rules) = backend.admin("GET", "/v1/admin/policies", None).await;
    let id = rules[0]["id"].as_i64().expect("the rule's id");
    let t0 = Instant::now();
    let (status, v) = backend
        .admin("DELETE", &format!("/v1/admin/policies/{id}"), None)
        .await;
    assert!(
        (200..300).contains(&status),
        "remove the rule: {status} {v}"
    );
    let ev = dev
        .next_matching("the close", |e| {
            matches!(e, Event::SessionEnded(SessionEnd::ClosedByGateway(_)))
        })
        .await;
    println!(
        "the policy change reached the live session in {:?}",
        t0.elapsed()
    );
    assert!(
        matches!(
            ev,
            Event::SessionEnded(SessionEnd::ClosedByGateway(CloseReason::REVOKED))
        ),
        "{ev:?}"
    );
    assert_eq!(gateway.table.ticket_count(), 0, "its ticket is dropped");
    // The backend judges it again, under the policy without the rule.
    dev.next_matching("a refused handshake", |e| {
        matches!(e, Event::HandshakeFailed(_))
    })
    .await;
    assert!(!gateway.has_session(&device.id));
    dev.stop().await;
}
