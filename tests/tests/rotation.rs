//! Backend key rotation end to end (SPEC.md §7.7, §10.6): the operator
//! rotates the real backend's key, the real gateway fetches the signed
//! update over HTTPS and delivers it in the device's next session, and the
//! reference device applies it (its held commitment names the new key),
//! seals its next hello to the new key and is vouched with it; the ticket
//! granted under the old key is not resumed; a second rotation reaches it
//! the same way.

use std::time::Duration;

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

/// Waits for the device to apply an update; returns (serial, anchor).
async fn applied(dev: &mut RunningDevice) -> (u32, KeyId) {
    match dev
        .next_matching("an anchor update applied", |e| {
            matches!(e, Event::AnchorsUpdated { .. })
        })
        .await
    {
        Event::AnchorsUpdated { serial, primary } => (serial, primary),
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

    // Let the gateway apply every feed event committed so far before the
    // device connects (a PolicyChanged would close every session, SPEC.md
    // §10.5).
    gateway.caught_up().await;
    // Provisioned with key 1: its first session is vouched by key 1, and the
    // gateway has nothing to deliver.
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(vouching_keys(&backend, &device.id).await, [1]);
    assert!(gateway.table.anchor_updates().is_empty());

    // The operator rotates to key 2, which key 1 committed to. The gateway
    // fetches the Rotate over HTTPS.
    let rotate = backend.rotate_key().await;
    assert_eq!((rotate.serial, rotate.signer), (1, KeyId(2)));
    assert!(matches!(rotate.action, AnchorAction::Rotate { anchor, .. } if anchor.kid == KeyId(2)));
    gateway.table.anchor_updates().request_fetch();
    wait_for("the gateway to fetch the Rotate", || {
        (held() == 1).then_some(())
    })
    .await;

    // The device's next session (a resumption, no backend) brings it the
    // Rotate; it checks it against its commitment and key 2's signature,
    // applies and stores it.
    dev.stop().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(dev.established().await, "resumed");
    assert_eq!(applied(&mut dev).await, (1, KeyId(2)));
    let anchors = store.anchors().expect("anchors");
    assert_eq!(anchors.primary().kid, KeyId(2));
    assert_eq!(anchors.serial(), 1);

    // Its next hello is sealed to key 2, and key 2 vouches for it. Its
    // ticket was granted under key 1, so it is not resumed: a full
    // handshake.
    dev.stop().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(vouching_keys(&backend, &device.id).await, [1, 2]);
    // The gateway sends the Rotate again (it cannot know the device has
    // it); the device refuses it as stale and keeps its anchor.
    dev.next_matching("the stale Rotate refused", |e| {
        matches!(e, Event::AnchorUpdateRejected(_))
    })
    .await;
    assert_eq!(store.anchors().expect("anchors"), anchors);

    // The operator rotates again, to key 3 (signed by key 3); it reaches the
    // device in its next session, which then trusts key 3 alone.
    let rotate = backend.rotate_key().await;
    assert_eq!((rotate.serial, rotate.signer), (2, KeyId(3)));
    gateway.table.anchor_updates().request_fetch();
    wait_for("the gateway to fetch the second Rotate", || {
        (held() == 2).then_some(())
    })
    .await;
    dev.stop().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(dev.established().await, "resumed");
    assert_eq!(applied(&mut dev).await, (2, KeyId(3)));
    let anchors = store.anchors().expect("anchors");
    assert_eq!(anchors.primary().kid, KeyId(3));
    assert!(anchors.get(KeyId(2)).is_none() && anchors.get(KeyId(1)).is_none());

    // Vouched by key 3 from then on.
    dev.stop().await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(vouching_keys(&backend, &device.id).await, [1, 2, 3]);

    // Every update the gateway held went out after every handshake: none
    // after the first, one after each of the next two, two after the last two.
    wait_for("the deliveries counted", || {
        (gateway.metrics.anchor_updates_sent() == 1 + 1 + 2 + 2).then_some(())
    })
    .await;
    dev.stop().await;
}

/// What a rogue gateway saw of one connection.
#[derive(Debug, PartialEq, Eq)]
enum RogueSaw {
    /// The device resumed-hello'd: it offered a ticket.
    ResumeHello,
    /// A full handshake that the device completed with the rogue.
    Established,
    /// A full handshake the device refused (it sent an alert or hung up).
    Refused,
}

/// A rogue gateway (a key of its own, not enrolled) run by a thief of the
/// backend's key 1: it answers Hellos with a vouch signed by key 1 for
/// itself and, in a session, pushes updates signed by key 1 (a rotation to
/// a key of its own, and the first design's Replace at the highest serial).
/// `opener` opens the Hello to learn the device's id: the thief's key 1
/// before the rotation; after it, a stand-in granting the thief the id (an
/// id is no secret), so the test shows what the vouch alone is worth.
async fn rogue_gateway(
    listener: tokio::net::TcpListener,
    stolen: vouch_proto::handshake::backend::BackendKeys,
    opener: vouch_proto::handshake::backend::BackendKeys,
    device_key: vouch_proto::keys::PublicKey,
) -> RogueSaw {
    use vouch_gateway::transport::Link;
    use vouch_proto::anchor::AnchorUpdate;
    use vouch_proto::handshake::backend::{open_hello, VouchGrant};
    use vouch_proto::handshake::gateway::{GatewayConfig, GatewayEvent, GatewayHandshake};
    use vouch_proto::keys::IdentityKey;
    use vouch_proto::testing::rng;
    use vouch_proto::wire::backend::{PeripheralInfo, VouchAnswer, Vouched};
    use vouch_proto::wire::{Lifetimes, MessageType, Scope};
    use vouch_proto::Timestamp;

    let now = Timestamp(1_000);
    let rogue = IdentityKey::from_seed(&[0x66; 32]);
    let (stream, _) = listener.accept().await.expect("the device connects");
    let mut link =
        vouch_gateway::transport::tcp::TcpLink::new(stream, 247, Default::default()).expect("link");
    let first = link.recv().await.expect("link").expect("a first message");
    if first[1] == MessageType::ResumeHello as u8 {
        return RogueSaw::ResumeHello;
    }
    let mut r = rng(0x66);
    let mut g = GatewayHandshake::new(GatewayConfig::new(rogue.public_key()), now);
    g.handle_input(now, &first, &mut r).expect("a Hello");
    let Some(GatewayEvent::NeedVouch(req)) = g.poll_event() else {
        panic!("a Hello asks for a vouch")
    };
    let opened = open_hello(&req.hello, &opener).expect("the thief learns the id");
    let id = opened.claimed_peripheral();
    let verified = opened.verify(&device_key).expect("the device's hello");
    let grant = VouchGrant {
        gateway_key: rogue.public_key(),
        gateway_ephemeral: req.gateway_ephemeral,
        scope: Scope::TELEMETRY.union(Scope::COMMAND),
        lifetimes: Lifetimes {
            session_s: u32::MAX,
            resumption_s: u32::MAX,
        },
    };
    let peripheral = PeripheralInfo {
        id,
        public_key: device_key,
        group: None,
        attributes: Vec::new(),
        scope: grant.scope,
    };
    let vouch = verified.vouch(&stolen, &grant);
    g.handle_vouch(now, VouchAnswer::Vouched(Vouched { vouch, peripheral }))
        .expect("the rogue gateway takes its own vouch");
    let response = g.poll_transmit().expect("a Response");
    link.send(&response).await.expect("send");
    let Ok(Ok(Some(finish))) = tokio::time::timeout(Duration::from_secs(5), link.recv()).await
    else {
        return RogueSaw::Refused;
    };
    if g.handle_input(now, &finish, &mut r).is_err() {
        return RogueSaw::Refused;
    }
    let mut est = g.into_established().expect("established");
    let own = vouch_proto::handshake::backend::BackendKeys::generate(KeyId(9), &mut rng(0x67));
    for update in [
        AnchorUpdate::sign(
            u32::MAX,
            AnchorAction::Rotate {
                anchor: own.anchor(),
                next: own.anchor().digest(),
            },
            KeyId(1),
            stolen.signing(),
        ),
        AnchorUpdate::sign(
            u32::MAX,
            AnchorAction::Replace(own.anchor()),
            KeyId(1),
            stolen.signing(),
        ),
    ] {
        let mut buf = [0u8; 256];
        let n = est
            .session
            .seal_anchor_update(now, &update, &mut buf)
            .expect("seal");
        link.send(&buf[..n]).await.expect("send");
    }
    // Keep the link up until the device goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), link.recv()).await;
    RogueSaw::Established
}

/// The operator's key 1 is stolen; the thief runs a gateway (SPEC.md
/// §11.15). Before the rotation reaches the device the thief can vouch for
/// itself (the stolen key is the device's anchor) but cannot get a key of
/// its own adopted; once the rotation reached the device, the thief
/// completes no handshake and the ticket it granted is not resumed.
#[tokio::test]
async fn a_thief_of_the_rotated_away_key_running_a_gateway_gains_nothing() {
    let backend = Backend::start_on(Db::Sqlite).await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    let store = device.store();
    let provisioned = store.anchors().expect("anchors");
    let stolen = backend.danger_steal_key(KeyId(1));

    // Before the rotation: the rogue completes a handshake, and its updates
    // are refused; the device's anchor and commitment do not change.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue_url = format!("tcp://{}", listener.local_addr().unwrap());
    let opener = backend.danger_steal_key(KeyId(1));
    let rogue = tokio::spawn(rogue_gateway(
        listener,
        backend.danger_steal_key(KeyId(1)),
        opener,
        device.key().public_key(),
    ));
    let mut dev = device.run_url(&rogue_url, store.clone()).await;
    dev.established().await;
    for _ in 0..2 {
        dev.next_matching("a forged update refused", |e| {
            matches!(e, Event::AnchorUpdateRejected(_))
        })
        .await;
    }
    dev.stop().await;
    assert_eq!(rogue.await.unwrap(), RogueSaw::Established);
    assert_eq!(store.anchors().expect("anchors"), provisioned);

    // The operator rotates; the device meets its genuine gateway and takes
    // the rotation.
    backend.rotate_key().await;
    gateway.table.anchor_updates().request_fetch();
    wait_for("the gateway to fetch the Rotate", || {
        (gateway.table.anchor_updates().last_serial() == 1).then_some(())
    })
    .await;
    let mut dev = device.run_url(&gateway.url(), store.clone()).await;
    dev.established().await;
    assert_eq!(applied(&mut dev).await, (1, KeyId(2)));
    dev.stop().await;

    // After it: the device does not offer the rogue the ticket the rogue
    // granted under key 1, and refuses its key-1 vouch.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue_url = format!("tcp://{}", listener.local_addr().unwrap());
    let rogue = tokio::spawn(rogue_gateway(
        listener,
        stolen,
        backend.danger_steal_key(KeyId(2)),
        device.key().public_key(),
    ));
    let mut dev = device.run_url(&rogue_url, store.clone()).await;
    let failure = dev
        .next_matching("the rogue's vouch refused", |e| {
            matches!(e, Event::HandshakeFailed(_))
        })
        .await;
    assert!(
        format!("{failure:?}").contains("UnknownAnchor"),
        "{failure:?}"
    );
    dev.stop().await;
    assert_eq!(rogue.await.unwrap(), RogueSaw::Refused);
    let anchors = store.anchors().expect("anchors");
    assert_eq!(anchors.primary().kid, KeyId(2));
}
