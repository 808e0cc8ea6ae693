//! Backend key rotation end to end (SPEC.md §7.7, §10.6): the operator
//! rotates the real backend's key, the real gateway fetches the signed
//! update over HTTPS and delivers it in the device's next session, and the
//! reference device applies it, seals its next hello to the new key and is
//! vouched with it; the retirement of the old key reaches the device the
//! same way.

use serde_json::Value;
use vouch_peripheral::{Event, KeyStore};
use vouch_proto::anchor::AnchorAction;
use vouch_proto::keys::{KeyId, PeripheralId};
use vouch_tests::{wait_for, Backend, Db, Device, Gateway, RunningDevice};

/// The key id of every vouch the backend issued for `id`, oldest first, as
/// its audit log records them (`kid=N` in the detail).
async fn vouching_keys(backend: &Backend, id: &PeripheralId) -> Vec<u8> {
    let mut entries = backend.audit_of(id).await;
    entries.sort_by_key(|e| e["seq"].as_i64());
    entries
        .iter()
        .filter(|e| e["action"] == "vouch" && e["outcome"] == "vouched")
        .map(|e: &Value| {
            let detail = e["detail"].as_str().expect("a vouch detail");
            detail
                .split(' ')
                .find_map(|kv| kv.strip_prefix("kid="))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("no key id in {detail:?}"))
        })
        .collect()
}

/// Waits for the device to apply an update; returns (serial, primary, count).
async fn applied(dev: &mut RunningDevice) -> (u32, KeyId, usize) {
    match dev
        .next_matching("an anchor update applied", |e| {
            matches!(e, Event::AnchorsUpdated { .. })
        })
        .await
    {
        Event::AnchorsUpdated {
            serial,
            primary,
            count,
        } => (serial, primary, count),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_rotation_reaches_the_device_through_the_gateway_and_moves_it_to_the_new_key() {
    rotation(Db::Sqlite).await;
}

#[tokio::test]
async fn a_rotation_reaches_the_device_through_the_gateway_on_postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    rotation(db).await;
}

async fn rotation(db: Db) {
    let backend = Backend::start_on(db).await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let store = device.store();
    let held = || gateway.table.anchor_updates().last_serial();

    // The rule added above reaches the gateway as PolicyChanged, which
    // closes every session: let it land before the device connects.
    gateway.caught_up().await;
    // Provisioned with key 1: its first session is vouched by key 1, and the
    // gateway has nothing to deliver.
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(vouching_keys(&backend, &device.id).await, [1]);
    assert!(gateway.table.anchor_updates().is_empty());

    // The operator rotates to key 2. The gateway fetches the Add over HTTPS.
    let add = backend.rotate_key().await;
    assert_eq!(add.serial, 1);
    assert!(matches!(add.action, AnchorAction::Add(a) if a.kid == KeyId(2)));
    gateway.table.anchor_updates().request_fetch();
    wait_for("the gateway to fetch the Add", || {
        (held() == 1).then_some(())
    })
    .await;

    // The device's next session (a resumption, no backend) brings it the
    // Add; it verifies it with key 1, applies and stores it.
    dev.stop().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(dev.established().await, "resumed");
    assert_eq!(applied(&mut dev).await, (1, KeyId(2), 2));
    let anchors = store.anchors().expect("anchors");
    assert_eq!(anchors.primary().expect("primary").kid, KeyId(2));
    assert_eq!(anchors.serial(), 1);

    // Its next hello is sealed to key 2, and key 2 vouches for it. (Its
    // ticket is gone, as when one runs out: a full handshake.)
    dev.stop().await;
    store.clone().clear_ticket().expect("clear the ticket");
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(vouching_keys(&backend, &device.id).await, [1, 2]);
    // The gateway sends the Add again (it cannot know the device has it);
    // the device refuses it as stale and keeps its anchors.
    dev.next_matching("the stale Add refused", |e| {
        matches!(e, Event::AnchorUpdateRejected(_))
    })
    .await;
    assert_eq!(store.anchors().expect("anchors"), anchors);

    // The operator retires key 1 (signed by key 2); it reaches the device
    // in its next session, which now trusts key 2 alone.
    let retire = backend.retire_key(KeyId(1)).await;
    assert_eq!(
        (retire.serial, retire.action, retire.signer),
        (2, AnchorAction::Retire(KeyId(1)), KeyId(2))
    );
    gateway.table.anchor_updates().request_fetch();
    wait_for("the gateway to fetch the Retire", || {
        (held() == 2).then_some(())
    })
    .await;
    dev.stop().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(dev.established().await, "resumed");
    assert_eq!(applied(&mut dev).await, (2, KeyId(2), 1));
    let anchors = store.anchors().expect("anchors");
    assert_eq!(
        anchors.iter().map(|a| a.kid).collect::<Vec<_>>(),
        [KeyId(2)]
    );

    // Still vouched, by key 2, after the retirement.
    dev.stop().await;
    store.clone().clear_ticket().expect("clear the ticket");
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(vouching_keys(&backend, &device.id).await, [1, 2, 2]);

    // Every update the gateway held went out after every handshake: none
    // after the first, one after each of the next two, two after the last two.
    wait_for("the deliveries counted", || {
        (gateway.metrics.anchor_updates_sent() == 1 + 1 + 2 + 2).then_some(())
    })
    .await;
    dev.stop().await;
}
