//! The attack matrix against the assembled system (DESIGN.md §4): each test
//! asserts that nothing was accepted and that the backend's audit log (or its
//! alerts) recorded what happened. Protocol-layer attacks (tampering,
//! reflection, downgrade, low-order points, swapped vouches) are also covered
//! one level down in `proto/tests/attacks.rs` and `proto/tests/tamper.rs`.

use serde_json::Value;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake};
use vouch_proto::keys::IdentityKey;
use vouch_proto::testing::rng;
use vouch_proto::wire::{encode_alert, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::{AlertCode, Timestamp};
use vouch_tests::{exchange, wait_for, Backend, Device, Gateway};

fn hello(device: &Device, seed: u64) -> (PeripheralHandshake, Vec<u8>) {
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        device.id,
        &device.key(),
        &device.anchors(),
        Timestamp(0),
        &mut rng(seed),
    )
    .expect("start");
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p.poll_transmit(&mut buf).expect("hello");
    (p, buf[..n].to_vec())
}

fn reasons(audit: &[Value]) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e["action"] == "vouch")
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn setup() -> (Backend, Gateway, Gateway, Device) {
    let backend = Backend::start().await;
    let a = Gateway::start(&backend, "plant-1").await;
    let b = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    (backend, a, b, device)
}

#[tokio::test]
async fn replayed_hello_to_the_same_and_to_another_gateway_is_refused_and_audited() {
    let (backend, a, b, device) = setup().await;
    let (mut p, h) = hello(&device, 1);
    let (resp, _link) = exchange(&a.url(), &h).await;
    p.handle_input(Timestamp(0), &resp)
        .expect("the genuine hello is vouched");

    let refused = encode_alert(AlertCode::HandshakeFailed).to_vec();
    for gw in [&a, &b] {
        let (answer, _) = exchange(&gw.url(), &h).await;
        assert_eq!(answer, refused, "a replayed hello gets a generic refusal");
    }
    // The replay is caught before the hello is opened (cheap check first), so
    // the entries name the gateways, not the (still sealed) peripheral.
    let (s, v) = backend
        .admin("GET", "/v1/admin/audit?action=vouch", None)
        .await;
    assert_eq!(s, 200);
    let entries = v["items"].as_array().cloned().unwrap_or_default();
    let replays: Vec<_> = entries.iter().filter(|e| e["reason"] == "replay").collect();
    assert_eq!(replays.len(), 2, "{entries:?}");
    assert_eq!(replays[0]["gateway"], a.key.to_string());
    assert_eq!(replays[1]["gateway"], b.key.to_string());
    assert!(!a.has_session(&device.id) && !b.has_session(&device.id));
}

#[tokio::test]
async fn a_gateway_enrolled_but_not_associated_gets_no_vouch() {
    let (backend, _a, _b, device) = setup().await;
    let elsewhere = Gateway::start(&backend, "plant-2").await;
    let (_p, h) = hello(&device, 2);
    let (answer, _) = exchange(&elsewhere.url(), &h).await;
    assert_eq!(answer, encode_alert(AlertCode::HandshakeFailed).to_vec());
    assert!(reasons(&backend.audit_of(&device.id).await).contains(&"policy_denied".to_string()));
    assert!(!elsewhere.has_session(&device.id));
}

#[tokio::test]
async fn unknown_and_known_but_wrong_identities_get_identical_answers() {
    let (backend, a, _b, device) = setup().await;
    // An identity the backend never enrolled.
    let stranger = Device::enroll_offline(&device);
    let (_p, h_unknown) = hello(&stranger, 3);
    // An impostor: claims the enrolled id, signs with its own key.
    let impostor_key = IdentityKey::from_seed(&[9u8; 32]);
    let mut imp = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        device.id,
        &impostor_key,
        &device.anchors(),
        Timestamp(0),
        &mut rng(4),
    )
    .expect("start");
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = imp.poll_transmit(&mut buf).expect("hello");
    let (a_unknown, _) = exchange(&a.url(), &h_unknown).await;
    let (a_impostor, _) = exchange(&a.url(), &buf[..n]).await;
    assert_eq!(
        a_unknown, a_impostor,
        "the answers must not tell the two apart"
    );
    assert_eq!(a_unknown, encode_alert(AlertCode::HandshakeFailed).to_vec());
    // The audit log tells them apart.
    assert!(
        reasons(&backend.audit_of(&stranger.id).await).contains(&"unknown_peripheral".to_string())
    );
    assert!(reasons(&backend.audit_of(&device.id).await).contains(&"bad_signature".to_string()));
}

#[tokio::test]
async fn brute_force_against_one_identity_is_detected_without_locking_the_genuine_device_out() {
    let (backend, a, _b, device) = setup().await;
    let impostor_key = IdentityKey::from_seed(&[7u8; 32]);
    // A genuine device never presents a bad credential: twelve do.
    for i in 0..12u64 {
        let mut imp = PeripheralHandshake::start(
            &PeripheralConfig::default(),
            device.id,
            &impostor_key,
            &device.anchors(),
            Timestamp(0),
            &mut rng(100 + i),
        )
        .expect("start");
        let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = imp.poll_transmit(&mut buf).expect("hello");
        // Every guess gets the same generic refusal, before and after the lock.
        assert_eq!(
            exchange(&a.url(), &buf[..n]).await.0,
            encode_alert(AlertCode::HandshakeFailed).to_vec()
        );
    }
    // The brute force was detected: a lockout of the claimed id, audited.
    let (s, v) = backend
        .admin("GET", "/v1/admin/audit?action=lockout", None)
        .await;
    assert_eq!(s, 200);
    let locks = v["items"].as_array().cloned().unwrap_or_default();
    assert!(
        locks
            .iter()
            .any(|e| e["peripheral"] == device.id.to_string()),
        "lockout audited: {v}"
    );
    // Neither the gateway that relayed the guesses nor the genuine device is
    // shut out: the real device still authenticates through the same gateway.
    assert!(
        !locks.iter().any(|e| e["gateway"] == a.key.to_string()),
        "{v}"
    );
    let (mut p, genuine) = hello(&device, 200);
    let (answer, _) = exchange(&a.url(), &genuine).await;
    p.handle_input(Timestamp(0), &answer)
        .expect("the genuine device is vouched");
}

#[tokio::test]
async fn a_clone_live_on_two_gateways_is_detected() {
    let (backend, a, b, device) = setup().await;
    let mut on_a = device.run(&a).await;
    on_a.established().await;
    wait_for("session on A", || a.has_session(&device.id).then_some(())).await;
    // The same identity, copied to a second device, attaches elsewhere.
    let mut on_b = device.run(&b).await;
    on_b.established().await;
    let found = tokio::time::timeout(vouch_tests::DEADLINE, async {
        loop {
            let (_, v) = backend
                .admin("GET", "/v1/admin/audit?action=clone_alert", None)
                .await;
            if v["items"].as_array().is_some_and(|a| !a.is_empty()) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the backend audits the clone");
    assert!(
        found.to_string().contains(&device.id.to_string()),
        "{found}"
    );
    on_a.stop().await;
    on_b.stop().await;
}

#[tokio::test]
async fn a_rogue_device_answer_never_establishes_a_session() {
    // A peripheral that cannot produce the Finish (it replays one from another
    // handshake) never gets a session at the gateway.
    let (_backend, a, _b, device) = setup().await;
    let (mut p1, h1) = hello(&device, 5);
    let (r1, mut link1) = exchange(&a.url(), &h1).await;
    p1.handle_input(Timestamp(0), &r1).expect("vouched");
    let mut buf = [0u8; 64];
    let n = p1.poll_transmit(&mut buf).expect("finish");
    let finish_of_1 = buf[..n].to_vec();
    let (_p2, h2) = hello(&device, 6);
    let (_r2, mut link2) = exchange(&a.url(), &h2).await;
    use vouch_gateway::transport::Link;
    link2.send(&finish_of_1).await.expect("send");
    let answer = link2.recv().await.expect("link");
    assert_eq!(
        answer,
        Some(encode_alert(AlertCode::HandshakeFailed).to_vec())
    );
    // The genuine one completes.
    link1.send(&finish_of_1).await.expect("send");
    wait_for("the genuine session", || {
        a.has_session(&device.id).then_some(())
    })
    .await;
}
