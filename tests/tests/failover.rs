//! Gateways that know several backend instances (SPEC.md §10.2; issue 20):
//! two instances on one PostgreSQL, one of them killed as a crash would
//! kill it (its runtime dropped with every connection and request in
//! flight). Every device's handshake completes (devices retry, as they do
//! after any `Busy`), revocations reach the sessions made through the dead
//! instance through the living one, and a gateway returns to an instance
//! that answers again. PostgreSQL only: several instances share one
//! database, which SQLite is not for; without `DATABASE_URL` these tests
//! say they were skipped.

use vouch_peripheral::driver::SessionEnd;
use vouch_peripheral::Event;
use vouch_tests::{wait_for, Backend, Db, Device, Gateway, RunningDevice};

/// Devices per gateway that are live before the kill, and that start
/// handshaking together right as it happens.
const LIVE: usize = 8;
const STORM: usize = 16;
const GATEWAYS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_backend_instances_under_load_loses_no_handshake_and_no_revocation() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let a = Backend::start_on(db).await;
    let mut b = a.killable_instance().await;
    a.allow("group:meters", "any", "telemetry").await;
    // Every gateway prefers B: the kill takes all their traffic away.
    let urls = [b.url(), a.url()];
    let mut gateways = Vec::new();
    for g in 0..GATEWAYS {
        gateways.push(Gateway::start_with_backend_urls(&a, &format!("plant-{g}"), &urls).await);
    }
    let mut live: Vec<(Device, RunningDevice)> = Vec::new();
    for g in &gateways {
        for _ in 0..LIVE {
            let device = Device::enroll(&a, "meters").await;
            let running = device.run(g).await;
            live.push((device, running));
        }
    }
    for (_, running) in &mut live {
        running.established().await;
    }
    assert!(
        gateways.iter().all(|g| g.backend_in_use() == Some(b.url())),
        "the gateways talk to B"
    );
    let vouched_by_b = b.vouch_answers("vouched");
    assert_eq!(vouched_by_b, (GATEWAYS * LIVE) as u64, "B vouched for them");

    // A storm of handshakes, and B dies in its midst.
    let mut storm_devices = Vec::new();
    for _ in 0..GATEWAYS * STORM {
        storm_devices.push(Device::enroll(&a, "meters").await);
    }
    for g in &gateways {
        g.caught_up().await;
    }
    let mut storm = Vec::new();
    for (i, device) in storm_devices.iter().enumerate() {
        let g = &gateways[i % GATEWAYS];
        storm.push(device.run_url(&g.url(), device.store()).await);
    }
    // Kill B with vouches in flight (the first of the storm answered).
    wait_for("the storm to reach B", || {
        (b.vouch_answers("vouched") > vouched_by_b).then_some(())
    })
    .await;
    b.kill();
    for running in &mut storm {
        running.established().await;
    }
    for g in &gateways {
        assert_eq!(g.backend_in_use(), Some(a.url()), "failed over to A");
        assert!(g.metrics.backend_failovers() >= 1);
    }
    // No hello B may have judged was resent to A, where it would be a
    // replay (SPEC.md §10.2): A refused nothing.
    assert_eq!(
        a.vouch_answers("denied"),
        0,
        "A refused a hello: a vouch B may have judged was resent"
    );

    // Revocations made at A reach sessions B vouched for, on every gateway,
    // through A's feed.
    for (device, running) in live.iter_mut().step_by(LIVE) {
        a.peripheral_action(&device.id, "revoke").await;
        running
            .next_matching("the revoked session's close", |e| {
                matches!(e, Event::SessionEnded(SessionEnd::ClosedByGateway(_)))
            })
            .await;
    }
    for (device, _) in live.iter().skip(1).step_by(LIVE) {
        assert!(
            gateways.iter().any(|g| g.has_session(&device.id)),
            "a device not revoked keeps its session"
        );
    }
    for running in storm {
        running.stop().await;
    }
    for (_, running) in live {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_returns_to_a_backend_instance_that_answers_again() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let a = Backend::start_on(db).await;
    let mut b = a.killable_instance().await;
    a.allow("group:meters", "any", "telemetry").await;
    let gateway = Gateway::start_with_backend_urls(&a, "plant-1", &[b.url(), a.url()]).await;

    let first = Device::enroll(&a, "meters").await;
    let mut running = first.run(&gateway).await;
    running.established().await;
    assert_eq!(b.vouch_answers("vouched"), 1, "B, preferred, vouched");

    b.kill();
    let second = Device::enroll(&a, "meters").await;
    let mut second_running = second.run(&gateway).await;
    second_running.established().await;
    assert_eq!(a.vouch_answers("vouched"), 1, "A vouched while B was dead");
    assert_eq!(gateway.backend_in_use(), Some(a.url()));

    // B comes back (on the same port): the gateway's probe finds it, and
    // its requests return to it.
    b.revive().await;
    wait_for("the gateway to return to B", || {
        (gateway.backend_in_use() == Some(b.url())).then_some(())
    })
    .await;
    let third = Device::enroll(&a, "meters").await;
    let mut third_running = third.run(&gateway).await;
    third_running.established().await;
    assert_eq!(b.vouch_answers("vouched"), 1, "B, revived, vouched");
    assert_eq!(a.vouch_answers("vouched"), 1, "and A did not");
    for r in [running, second_running, third_running] {
        r.stop().await;
    }
}
