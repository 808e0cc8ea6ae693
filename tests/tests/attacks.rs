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
    // Let the gateways apply every feed event committed so far before any
    // handshake (a PolicyChanged would close every session, SPEC.md §10.5).
    a.caught_up().await;
    b.caught_up().await;
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

/// Two devices holding one key, live on two gateways at once: the second
/// starts its session 2.5 s after the first (so the backend, allowing 2 s
/// for a report's transit, can tell which came first), and the first goes
/// on talking after that (here, its close 3 s later); gateway A's detach
/// report says when it last heard it, so the backend alerts (SPEC.md
/// §10.5). Being open on A alone is no evidence: a device that moved on
/// leaves that too.
#[tokio::test]
async fn a_clone_live_on_two_gateways_is_detected() {
    let (backend, a, b, device) = setup().await;
    let mut on_a = device.run(&a).await;
    on_a.established().await;
    wait_for("session on A", || a.has_session(&device.id).then_some(())).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // The same identity, copied to a second device, attaches elsewhere.
    let mut on_b = device.run(&b).await;
    on_b.established().await;
    wait_for("session on B", || b.has_session(&device.id).then_some(())).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // The first device speaks (its authenticated close) after the second's
    // session began.
    on_a.stop().await;
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

// ---- helpers for attackers that write raw bytes ----------------------------

/// Opens a raw TCP connection to a gateway: the attacker writes what it likes.
async fn raw(gateway: &Gateway) -> tokio::net::TcpStream {
    let addr = gateway.url().trim_start_matches("tcp://").to_string();
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to gateway")
}

/// One fragment on the TCP transport: the two-byte length prefix, then the
/// fragment (SPEC.md §8.4).
fn tcp_fragment(fragment: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; fragment.len() + 2];
    let n = vouch_proto::framing::stream::encode(fragment, &mut out).expect("fragment");
    out.truncate(n);
    out
}

/// A whole message as one fragment (header `START|END`, seq 0).
fn single(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0xC0];
    f.extend_from_slice(msg);
    tcp_fragment(&f)
}

/// Reads until the gateway closes the connection, up to the deadline;
/// returns everything it sent. Panics if it never closes.
async fn until_closed(stream: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let r = tokio::time::timeout(vouch_tests::DEADLINE, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the gateway never closed the link of {what}");
    got
}

/// The resident set of this process (the backend and gateway run in it).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The generic refusal every unauthenticated failure gets (SPEC.md §9).
fn refusal() -> Vec<u8> {
    encode_alert(AlertCode::HandshakeFailed).to_vec()
}

/// Whether the bytes a gateway sent before closing are nothing or one alert
/// (the generic refusal, or `Unsupported` for a version or suite it does not
/// speak, which says nothing about any check).
fn refused_or_closed(got: &[u8]) -> bool {
    got.is_empty()
        || got == single(&refusal())
        || got == single(&encode_alert(AlertCode::Unsupported))
}

// ---- the remaining attack classes ------------------------------------------

#[tokio::test]
async fn a_spoofed_address_gains_nothing() {
    // Addresses are never identity: the attacker shares the victim's network
    // address (here both are 127.0.0.1; on BLE, tests/ble-vm scenario 5 uses
    // the victim's very controller) and everything the victim sent on air.
    let (backend, a, _b, victim) = setup().await;
    let mut live = victim.run(&a).await;
    live.established().await;

    // 1. Its own key, the victim's id: refused, audited as a bad signature on
    //    the victim's id.
    let attacker_key = IdentityKey::from_seed(&[7u8; 32]);
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        victim.id,
        &attacker_key,
        &victim.anchors(),
        Timestamp(0),
        &mut rng(40),
    )
    .expect("start");
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p.poll_transmit(&mut buf).expect("hello");
    let (answer, _) = exchange(&a.url(), &buf[..n]).await;
    assert_eq!(answer, refusal());
    // 2. The victim's own hello, replayed: refused.
    let (_vp, victim_hello) = hello(&victim, 41);
    let (first, _) = exchange(&a.url(), &victim_hello).await;
    assert_ne!(first, refusal(), "the genuine hello is vouched once");
    let (again, _) = exchange(&a.url(), &victim_hello).await;
    assert_eq!(again, refusal(), "and refused when replayed");

    let audit = reasons(&backend.audit_of(&victim.id).await);
    assert!(audit.contains(&"bad_signature".to_string()), "{audit:?}");
    // The replay is caught before the hello is opened, so it names the gateway.
    let replays = backend
        .vouch_audit_of_gateway(&a.key)
        .await
        .iter()
        .filter(|e| e["reason"] == "replay")
        .count();
    assert_eq!(replays, 1);
    // The victim's session is untouched and still its own: a command reaches it.
    assert!(a.has_session(&victim.id));
    a.table
        .sessions()
        .send(victim.id, b"led=on".to_vec())
        .await
        .expect("the victim's session still carries commands");
    live.next_matching(
        "the command",
        |e| matches!(e, vouch_peripheral::Event::Data(d) if d == b"led=on"),
    )
    .await;
    live.stop().await;
}

#[tokio::test]
async fn a_vouch_moved_to_another_handshake_peripheral_or_gateway_is_refused() {
    let (backend, a, b, d1) = setup().await;
    let d2 = Device::enroll(&backend, "meters").await;
    // Three genuine handshakes, each vouched by the backend.
    let (mut p1, h1) = hello(&d1, 51);
    let (mut p2, h2) = hello(&d1, 52);
    let (mut p3, h3) = hello(&d2, 53);
    let (r1, _l1) = exchange(&a.url(), &h1).await;
    let (r2, _l2) = exchange(&b.url(), &h2).await;
    let (r3, _l3) = exchange(&a.url(), &h3).await;
    for r in [&r1, &r2, &r3] {
        assert_ne!(r, &refusal(), "each genuine hello is vouched");
    }
    // Each Response delivered where it does not belong.
    assert!(
        p1.handle_input(Timestamp(0), &r2).is_err(),
        "another handshake's vouch, from another gateway"
    );
    assert!(
        p2.handle_input(Timestamp(0), &r3).is_err(),
        "another peripheral's vouch"
    );
    assert!(
        p3.handle_input(Timestamp(0), &r1).is_err(),
        "another peripheral's vouch, same gateway"
    );
    // Nothing was accepted anywhere.
    assert!(!a.has_session(&d1.id) && !a.has_session(&d2.id));
    assert!(!b.has_session(&d1.id));
    // The backend audited one vouch per genuine hello, nothing more.
    let vouched = |audit: &[Value]| {
        audit
            .iter()
            .filter(|e| e["action"] == "vouch" && e["outcome"] == "vouched")
            .count()
    };
    assert_eq!(vouched(&backend.audit_of(&d1.id).await), 2);
    assert_eq!(vouched(&backend.audit_of(&d2.id).await), 1);
}

#[tokio::test]
async fn a_relay_learns_nothing_and_the_device_knows_which_gateway_answered() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The attacker relays the device's traffic to a gateway of its choosing
    // (B, not the A the device's installer had in mind) and records all of it.
    let (_backend, _a, b, device) = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let relay_url = format!("tcp://{}", listener.local_addr().expect("addr"));
    let target = b.url().trim_start_matches("tcp://").to_string();
    let recorded = Arc::new(Mutex::new(Vec::<u8>::new()));
    let rec = recorded.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let (mut ir, mut iw) = inbound.split();
                let (mut or, mut ow) = outbound.split();
                let up = async {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = ir.read(&mut buf).await {
                        if n == 0 || ow.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        rec.lock().expect("lock").extend_from_slice(&buf[..n]);
                    }
                };
                let down = async {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = or.read(&mut buf).await {
                        if n == 0 || iw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        rec.lock().expect("lock").extend_from_slice(&buf[..n]);
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    let mut inbound = b.table.sessions().subscribe();
    let mut live = device.run_url(&relay_url, device.store()).await;
    let vouch_peripheral::Event::Established(info) = live
        .next_matching("a session through the relay", |e| {
            matches!(e, vouch_peripheral::Event::Established(_))
        })
        .await
    else {
        unreachable!("next_matching returns what it matched")
    };
    // Unknown key share: the device learns exactly which gateway was vouched
    // for, whoever carried the bytes.
    assert_eq!(info.gateway_key, b.key);
    let secret_up = b"reading=7734;secret-telemetry".to_vec();
    let secret_down = b"led=on;secret-command".to_vec();
    live.handle.send(secret_up.clone()).await.expect("send");
    let got = tokio::time::timeout(vouch_tests::DEADLINE, inbound.recv())
        .await
        .expect("the gateway gets the telemetry")
        .expect("inbound");
    assert_eq!(got.peripheral, device.id);
    assert_eq!(got.data, secret_up);
    b.table
        .sessions()
        .send(device.id, secret_down.clone())
        .await
        .expect("command");
    live.next_matching(
        "the command",
        |e| matches!(e, vouch_peripheral::Event::Data(d) if d.starts_with(b"led=on;secret")),
    )
    .await;
    // The relay saw every byte, and none of the plaintext.
    let seen = recorded.lock().expect("lock").clone();
    assert!(
        seen.len() > 264,
        "the relay carried the handshake and records"
    );
    for secret in [&secret_up[..], &secret_down[..], b"secret"] {
        assert!(
            !seen.windows(secret.len()).any(|w| w == secret),
            "the relay saw plaintext"
        );
    }
    live.stop().await;
}

#[tokio::test]
async fn tampered_truncated_reordered_oversized_and_downgraded_frames_are_refused() {
    let (backend, a, _b, device) = setup().await;
    let (_p, h) = hello(&device, 61);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut flipped = h.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    cases.push(("a flipped bit in the sealed identity", flipped));
    cases.push(("a truncated hello", h[..h.len() / 2].to_vec()));
    let mut version = h.clone();
    version[0] = version[0].wrapping_add(1);
    cases.push(("another version byte (downgrade)", version));
    let mut suite = h.clone();
    suite[2] = suite[2].wrapping_add(1);
    cases.push(("another suite byte (downgrade)", suite));
    // A Finish where the first message belongs (reordered).
    let (mut p, h2) = hello(&device, 62);
    let (r, _l) = exchange(&a.url(), &h2).await;
    p.handle_input(Timestamp(0), &r).expect("vouched");
    let mut buf = [0u8; 64];
    let n = p.poll_transmit(&mut buf).expect("finish");
    cases.push(("a Finish first (reordered)", buf[..n].to_vec()));
    for (what, bytes) in &cases {
        let mut s = raw(&a).await;
        use tokio::io::AsyncWriteExt;
        s.write_all(&single(bytes)).await.expect("write");
        let answer = until_closed(&mut s, what).await;
        let expected = if what.contains("downgrade") {
            single(&encode_alert(AlertCode::Unsupported))
        } else {
            single(&refusal())
        };
        assert_eq!(
            answer, expected,
            "{what}: one alert, then the link is closed"
        );
    }
    // An oversized fragment: the stream cannot be resynchronised; closed
    // without an answer.
    let mut s = raw(&a).await;
    {
        use tokio::io::AsyncWriteExt;
        s.write_all(&[0xff, 0xff, 0xC0, 1, 2, 3])
            .await
            .expect("write");
    }
    assert!(until_closed(&mut s, "an oversized fragment")
        .await
        .is_empty());
    assert!(!a.has_session(&device.id), "nothing was accepted");
    // The one tampered hello that reached the backend was audited as such
    // (its last byte is in the sealed signature: the seal has no tag of its
    // own, so the flip surfaces as a bad signature on the claimed id).
    let audit = backend.vouch_audit_of_gateway(&a.key).await;
    let reasons: Vec<&str> = audit.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "bad_signature").count(),
        1,
        "{reasons:?}"
    );
}

#[tokio::test]
async fn floods_of_hellos_and_fragments_are_bounded_and_honest_devices_get_through() {
    use tokio::io::AsyncWriteExt;
    let (backend, a, _b, device) = setup().await;
    let stranger = Device::enroll_offline(&device);
    let before = rss_bytes();
    let mut flood = Vec::new();
    for i in 0..60u64 {
        let mut s = raw(&a).await;
        match i % 3 {
            // A hello from an identity the backend has never seen.
            0 => {
                let (_p, h) = hello(&stranger, 1_000 + i);
                s.write_all(&single(&h)).await.expect("write");
            }
            // Garbage in a well-formed frame.
            1 => {
                s.write_all(&single(&[0x5a; 100])).await.expect("write");
            }
            // The start of a large message that never finishes (fragment flood).
            _ => {
                let mut f = vec![0x80, 0x00, 0x02]; // START, length 512
                f.extend_from_slice(&[0u8; 60]);
                s.write_all(&tcp_fragment(&f)).await.expect("write");
                for seq in 1..8u8 {
                    let mut f = vec![seq];
                    f.extend_from_slice(&[0u8; 60]);
                    s.write_all(&tcp_fragment(&f)).await.expect("write");
                }
            }
        }
        flood.push(s);
    }
    // Meanwhile the honest device comes up.
    let mut live = device.run(&a).await;
    live.established().await;
    // Every flooding link is answered with the generic refusal or closed.
    for (i, s) in flood.iter_mut().enumerate() {
        let got = until_closed(s, &format!("flood link {i}")).await;
        assert!(refused_or_closed(&got), "flood link {i} got {got:02x?}");
    }
    // Nothing was accepted; the only session is the honest device's.
    let sessions = a.table.sessions().list();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].peripheral, device.id);
    // The backend saw and audited the hellos it was asked about.
    let unknown = backend
        .vouch_audit_of_gateway(&a.key)
        .await
        .iter()
        .filter(|e| e["reason"] == "unknown_peripheral")
        .count();
    assert_eq!(unknown, 20, "each unknown hello is audited");
    // Memory stays bounded: 60 hostile links cost far less than a megabyte
    // each (the reassembly buffer is bounded; a finished link frees it).
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 60 << 20,
        "RSS grew by {grown} bytes during the flood"
    );
    live.stop().await;
}

#[tokio::test]
async fn slow_peers_are_dropped_without_holding_the_gateway() {
    use tokio::io::AsyncWriteExt;
    let (_backend, a, _b, device) = setup().await;
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut s = raw(&a).await;
        if i % 2 == 1 {
            // Half a hello, then silence.
            let (_p, h) = hello(&device, 2_000 + i);
            let mut f = vec![0x80];
            f.extend_from_slice(&(h.len() as u16).to_le_bytes());
            f.extend_from_slice(&h[..20]);
            s.write_all(&tcp_fragment(&f)).await.expect("write");
        }
        slow.push(s);
    }
    let mut live = device.run(&a).await;
    live.established().await;
    // Each slow peer is cut off by a deadline (the reassembly timeout or the
    // handshake's, both 10 s), never held open.
    for (i, s) in slow.iter_mut().enumerate() {
        let got = until_closed(s, &format!("slow peer {i}")).await;
        assert!(refused_or_closed(&got), "{got:02x?}");
    }
    assert_eq!(a.table.sessions().list().len(), 1);
    live.stop().await;
}
