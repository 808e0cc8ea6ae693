//! Backend key rotation (SPEC.md §7.7) through the router: the real
//! peripheral and gateway state machines, the real `AnchorSet::apply` on the
//! device side, the key ring on disk and in the database, on SQLite and
//! PostgreSQL.

mod common;

use std::os::unix::fs::PermissionsExt;

use axum::http::StatusCode;
use common::{gateway_takes, Backend, Db, Device};
use vouch_backend::config::Config;
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::keyring::{self, KeyRingError, KeyState};
use vouch_backend::store::{AuditVerdict, Store};
use vouch_backend::AppState;
use vouch_proto::anchor::{AnchorAction, AnchorBundle, AnchorSet, AnchorUpdate};
use vouch_proto::keys::{IdentityKey, KeyId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    decode_body, AnchorUpdateBatch, Refusal, VouchAnswer, MAX_ANCHOR_UPDATES,
};
use vouch_proto::wire::{Hello, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::{Error, PeerMisbehaved, Timestamp};

on_both!(
    rotation_moves_updated_devices_to_the_new_key_and_keeps_the_others_working,
    a_retired_key_is_served_until_it_is_purged,
    updates_are_served_in_order_after_a_serial_in_bounded_pages,
    an_instance_hands_out_only_updates_for_keys_it_serves,
    the_anchor_updates_route_is_behind_the_gateway_identity_and_budget,
    a_data_directory_from_before_rotation_works_unchanged,
);

const NOW: Timestamp = Timestamp(1_000);

/// A backend with one gateway allowed everywhere and two enrolled devices.
async fn setup(db: &Db) -> (Backend, IdentityKey, Device, Device) {
    setup_with(db, Config::default()).await
}

async fn setup_with(db: &Db, config: Config) -> (Backend, IdentityKey, Device, Device) {
    let b = Backend::with_config(db, config).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry,command").await;
    let (d1, d2) = (Device::new(1), Device::new(2));
    b.enroll_peripheral(&d1, None).await;
    b.enroll_peripheral(&d2, None).await;
    (b, gw, d1, d2)
}

fn data(b: &Backend) -> DataDir {
    DataDir::load(b.dir.path()).expect("load the data directory")
}

async fn rotate(b: &Backend) -> AnchorUpdate {
    let r = keyring::rotate(&data(b), &b.store, false, "test")
        .await
        .expect("rotate");
    r.update.expect("announced")
}

/// A full handshake of `dev`, holding `anchors`, through `gw` and the
/// backend. `Ok(kid)`: the peripheral established the session, having
/// verified the vouch, signed by key `kid`, with its own anchors.
async fn handshake(
    b: &Backend,
    gw: &IdentityKey,
    dev: &Device,
    anchors: &AnchorSet,
    seed: u64,
) -> Result<KeyId, VouchAnswer> {
    let (mut p, hello) = dev.hello(anchors, seed);
    assert_eq!(
        Hello::peek(&hello).expect("hello").anchor,
        anchors.primary().expect("primary").kid,
        "a hello is sealed to the primary anchor"
    );
    let (mut g, req) = gateway_takes(gw, &hello, seed + 1);
    let (s, bytes) = b.gateway_post(&gw.public_key(), "/v1/vouch", &req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let answer: VouchAnswer = decode_body(&bytes).expect("answer");
    let VouchAnswer::Vouched(v) = &answer else {
        return Err(answer);
    };
    let kid = v.vouch.backend_key;
    g.handle_vouch(NOW, answer)
        .expect("the gateway takes the vouch");
    let response = g.poll_transmit().expect("response");
    p.handle_input(NOW, &response)
        .expect("the peripheral verifies the vouch with the anchor it names");
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = p.poll_transmit(&mut buf).expect("finish");
    g.handle_input(NOW, &buf[..n], &mut rng(seed + 2))
        .expect("finish");
    p.into_established().expect("peripheral established");
    Ok(kid)
}

/// `GET /v1/anchor-updates?after=…` as gateway `gw`.
async fn fetch(b: &Backend, gw: &IdentityKey, after: u32) -> AnchorUpdateBatch {
    let (s, _, bytes) = b
        .raw(
            Some(gw.public_key()),
            "GET",
            &format!("/v1/anchor-updates?after={after}"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    decode_body(&bytes).expect("batch")
}

/// What the instance's background task does every second.
async fn reload(b: &Backend) {
    keyring::reload(&b.state).await.expect("reload");
}

fn kids(b: &Backend) -> Vec<u8> {
    b.state.keys.snapshot().kids().map(|k| k.0).collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

async fn last_vouch_audit(b: &Backend) -> serde_json::Value {
    b.audit("action=vouch")
        .await
        .last()
        .cloned()
        .expect("a vouch audit entry")
}

async fn audit_intact(b: &Backend) {
    assert!(matches!(
        b.store
            .audit_verify(&b.state.checkpoint_key)
            .await
            .expect("verify"),
        AuditVerdict::Intact { .. }
    ));
}

async fn rotation_moves_updated_devices_to_the_new_key_and_keeps_the_others_working(db: Db) {
    let (b, gw, d1, d2) = setup(&db).await;
    let provisioned = b.anchors();
    assert_eq!(handshake(&b, &gw, &d1, &provisioned, 1).await, Ok(KeyId(1)));

    let add = rotate(&b).await;
    assert_eq!(add.serial, 1);
    assert_eq!(add.signer, KeyId(1), "signed by the current key");
    let AnchorAction::Add(new) = add.action else {
        panic!("expected Add, got {:?}", add.action)
    };
    assert_eq!(new.kid, KeyId(2), "the next key id");
    for f in [
        datadir::files::signing(KeyId(2)),
        datadir::files::sealing(KeyId(2)),
    ] {
        assert_eq!(mode(&b.dir.path().join(&f)), 0o600, "{f}");
    }
    // The running instance picks the new key up (the background task does
    // this every second; here it is called directly).
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2]);

    // A device that has not received the update yet seals to key 1 and is
    // vouched by key 1, which it verifies with the anchor it holds.
    assert_eq!(
        handshake(&b, &gw, &d1, &provisioned, 10).await,
        Ok(KeyId(1))
    );

    // The gateway fetches the update; the device applies it with the
    // protocol's own checks, and seals to key 2 from then on.
    let batch = fetch(&b, &gw, 0).await;
    assert_eq!(batch.updates, [add]);
    assert_eq!(batch.latest, 1);
    let mut updated = provisioned.clone();
    updated
        .apply(&batch.updates[0])
        .expect("the device applies the Add");
    assert_eq!(updated.primary(), Some(&new));
    assert_eq!(updated.len(), 2);
    assert_eq!(handshake(&b, &gw, &d1, &updated, 20).await, Ok(KeyId(2)));
    // Replayed, the update is refused and changes nothing.
    let before = updated.clone();
    assert_eq!(
        updated.apply(&add),
        Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
    );
    assert_eq!(updated, before);
    // A device that only knows the new key (flashed from a fresh bundle)
    // is vouched by key 2 as well.
    let (s, v) = b.admin("GET", "/v1/admin/anchor", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let bundle: AnchorBundle = serde_json::from_value(v).expect("bundle");
    let flashed = bundle.to_anchor_set().expect("valid bundle");
    assert_eq!(
        flashed, updated,
        "export = the anchors of an updated device"
    );
    assert_eq!(handshake(&b, &gw, &d2, &flashed, 30).await, Ok(KeyId(2)));
    // A vouch under key 2 means nothing to a device that never got key 2:
    // it stays on key 1 until it applies the update.
    assert_eq!(
        handshake(&b, &gw, &d2, &provisioned, 40).await,
        Ok(KeyId(1))
    );

    // Audited: the genesis registration, the rotation, and the key id of
    // each vouch.
    assert_eq!(b.audit("action=backend_key_genesis").await.len(), 1);
    let rot = b.audit("action=backend_key_rotate").await;
    assert_eq!(rot.len(), 1);
    let detail = rot[0]["detail"].as_str().expect("detail");
    assert!(
        detail.contains("kid=2") && detail.contains("serial=1"),
        "{detail}"
    );
    assert!(!detail.contains("PRIVATE"), "{detail}");
    let vouches: Vec<String> = b
        .audit("action=vouch")
        .await
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        vouches[0].ends_with("kid=1") && vouches[2].ends_with("kid=2"),
        "{vouches:?}"
    );
    audit_intact(&b).await;
}

async fn a_retired_key_is_served_until_it_is_purged(db: Db) {
    let (b, gw, d1, d2) = setup(&db).await;
    let provisioned = b.anchors();
    let add = rotate(&b).await;
    reload(&b).await;

    // The current key (here also the only one devices would be left with)
    // cannot be retired or purged; an unknown one is an error.
    assert!(matches!(
        keyring::retire(&data(&b), &b.store, KeyId(2), "test").await,
        Err(KeyRingError::Current(KeyId(2)))
    ));
    assert!(matches!(
        keyring::purge(b.dir.path(), &b.store, KeyId(2), "test").await,
        Err(KeyRingError::Current(KeyId(2)))
    ));
    assert!(matches!(
        keyring::purge(b.dir.path(), &b.store, KeyId(1), "test").await,
        Err(KeyRingError::StillTrusted(KeyId(1), KeyState::Trusted))
    ));
    assert!(matches!(
        keyring::retire(&data(&b), &b.store, KeyId(7), "test").await,
        Err(KeyRingError::UnknownKey(KeyId(7)))
    ));

    let retire = keyring::retire(&data(&b), &b.store, KeyId(1), "test")
        .await
        .expect("retire key 1");
    assert_eq!(retire.serial, 2);
    assert_eq!(retire.signer, KeyId(2), "signed by the current key");
    assert_eq!(retire.action, AnchorAction::Retire(KeyId(1)));
    assert!(matches!(
        keyring::retire(&data(&b), &b.store, KeyId(1), "test").await,
        Err(KeyRingError::NotTrusted(KeyId(1), KeyState::Retired))
    ));
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2], "a retired key is still served");

    // A device that missed everything still seals to key 1 and is vouched:
    // in that session it gets the updates, in order.
    assert_eq!(handshake(&b, &gw, &d1, &provisioned, 1).await, Ok(KeyId(1)));
    let batch = fetch(&b, &gw, 0).await;
    assert_eq!(batch.updates, [add, retire]);
    assert_eq!(batch.latest, 2);
    // Out of order, the Retire is refused (signed by key 2, not yet held)...
    let mut d1_anchors = provisioned.clone();
    assert_eq!(
        d1_anchors.apply(&retire),
        Err(Error::PeerMisbehaved(PeerMisbehaved::BadAnchorUpdate))
    );
    assert_eq!(d1_anchors, provisioned, "a refused update changes nothing");
    // ...in order, both apply, and the device is left with key 2 alone.
    for u in &batch.updates {
        d1_anchors.apply(u).expect("in order");
    }
    assert_eq!(d1_anchors.iter().map(|a| a.kid.0).collect::<Vec<_>>(), [2]);
    // Once it applied the Retire, the Add cannot be replayed to undo it.
    assert_eq!(
        d1_anchors.apply(&add),
        Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
    );
    assert_eq!(handshake(&b, &gw, &d1, &d1_anchors, 2).await, Ok(KeyId(2)));

    // Purge: the private key is deleted, no instance serves key 1.
    let p = keyring::purge(b.dir.path(), &b.store, KeyId(1), "test")
        .await
        .expect("purge");
    assert!(p.newly_purged && p.files_removed);
    for f in [
        datadir::files::signing(KeyId(1)),
        datadir::files::sealing(KeyId(1)),
    ] {
        assert!(!b.dir.path().join(&f).exists(), "{f} still there");
    }
    reload(&b).await;
    assert_eq!(kids(&b), [2]);
    // A device that still knows only key 1 is refused, like any refusal.
    assert_eq!(
        handshake(&b, &gw, &d2, &provisioned, 3).await,
        Err(VouchAnswer::Refused(Refusal::Denied))
    );
    assert_eq!(last_vouch_audit(&b).await["reason"], "unknown_backend_key");
    // The updated one carries on.
    assert_eq!(handshake(&b, &gw, &d1, &d1_anchors, 4).await, Ok(KeyId(2)));
    // The served log still starts at serial 1: a device that knows the
    // purged key only cannot connect to get it, but one provisioned with a
    // bundle from before the retirement (keys 1 and 2) still can.
    assert_eq!(fetch(&b, &gw, 0).await.updates, [add, retire]);

    // Again: nothing left to do.
    let again = keyring::purge(b.dir.path(), &b.store, KeyId(1), "test")
        .await
        .expect("purge again");
    assert!(!again.newly_purged && !again.files_removed);
    let status = keyring::status(&data(&b), &b.store).await.expect("status");
    let states: Vec<_> = status.keys.iter().map(|k| (k.kid, k.state)).collect();
    assert_eq!(states, [(1, KeyState::Purged), (2, KeyState::Current)]);
    assert_eq!(status.serial(), 2);
    assert_eq!(b.audit("action=backend_key_retire").await.len(), 1);
    assert_eq!(b.audit("action=backend_key_purge").await.len(), 1);

    // A device holds at most 4 anchors: three more rotations fill it, the
    // next is refused before any key is created.
    for _ in 0..3 {
        rotate(&b).await;
    }
    assert_eq!(
        keyring::status(&data(&b), &b.store)
            .await
            .expect("status")
            .fleet
            .len(),
        4
    );
    assert!(matches!(
        keyring::rotate(&data(&b), &b.store, false, "test").await,
        Err(KeyRingError::Full(4))
    ));
    assert!(!b
        .dir
        .path()
        .join(datadir::files::signing(KeyId(6)))
        .exists());
    audit_intact(&b).await;
}

async fn updates_are_served_in_order_after_a_serial_in_bounded_pages(db: Db) {
    let (b, gw, d1, _) = setup(&db).await;
    let provisioned = b.anchors();
    // 34 rotations, each followed by the retirement of the key before it:
    // 68 updates, more than one page.
    let rounds: u32 = 34;
    let mut issued = Vec::new();
    for round in 1..=rounds {
        issued.push(rotate(&b).await);
        let old = KeyId(u8::try_from(round).expect("small"));
        issued.push(
            keyring::retire(&data(&b), &b.store, old, "test")
                .await
                .expect("retire"),
        );
    }
    reload(&b).await;
    let last = 2 * rounds;
    let serials: Vec<u32> = issued.iter().map(|u| u.serial).collect();
    assert_eq!(
        serials,
        (1..=last).collect::<Vec<_>>(),
        "serials 1, 2, 3, …"
    );

    let page = fetch(&b, &gw, 0).await;
    assert_eq!(page.updates.len(), MAX_ANCHOR_UPDATES);
    assert_eq!(page.updates[..], issued[..MAX_ANCHOR_UPDATES]);
    assert_eq!(page.latest, last, "more follow");
    let rest = fetch(&b, &gw, page.updates[MAX_ANCHOR_UPDATES - 1].serial).await;
    assert_eq!(rest.updates[..], issued[MAX_ANCHOR_UPDATES..]);
    assert_eq!(rest.latest, last);
    let from_17 = fetch(&b, &gw, 17).await;
    assert_eq!(from_17.updates[0].serial, 18);
    assert!(fetch(&b, &gw, last).await.updates.is_empty());
    let beyond = fetch(&b, &gw, last + 100).await;
    assert!(beyond.updates.is_empty());
    assert_eq!(beyond.latest, last);

    // A device from the factory applies every page in order and ends where
    // the backend's current key is.
    let mut anchors = provisioned.clone();
    for u in page.updates.iter().chain(&rest.updates) {
        anchors.apply(u).expect("in order");
    }
    let current = KeyId(u8::try_from(rounds + 1).expect("small"));
    assert_eq!(anchors.primary().map(|a| a.kid), Some(current));
    assert_eq!(anchors.len(), 1);
    assert_eq!(anchors.serial(), last);
    assert_eq!(handshake(&b, &gw, &d1, &anchors, 5).await, Ok(current));
    // Every update again (a gateway delivers all it holds): each is stale.
    for u in &issued {
        assert_eq!(
            anchors.apply(u),
            Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
        );
    }
    // Reordered: skipping an update leaves the device unable to verify the
    // next (its signer is a key it never received).
    let mut skipping = provisioned.clone();
    assert_eq!(
        skipping.apply(&issued[2]),
        Err(Error::PeerMisbehaved(PeerMisbehaved::BadAnchorUpdate))
    );
    skipping.apply(&issued[0]).expect("the first");
    skipping
        .apply(&issued[2])
        .expect("then the third: signed by key 2, held");
    // The second (Retire key 1, serial 2) now arrives late: stale.
    assert_eq!(
        skipping.apply(&issued[1]),
        Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
    );
}

async fn an_instance_hands_out_only_updates_for_keys_it_serves(db: Db) {
    let (a, gw, d1, _) = setup(&db).await;
    let provisioned = a.anchors();
    // A second instance on the same database with its own copy of the data
    // directory, taken before the rotation.
    let dir_b = tempfile::tempdir().expect("tempdir");
    for f in datadir::files::IDENTITY {
        let (from, to) = (a.dir.path().join(f), dir_b.path().join(f));
        std::fs::copy(&from, &to).expect("copy");
    }
    let store_b = Store::open(&db.url_for(a.dir.path())).await.expect("store");
    let state_b = AppState::new(
        store_b.clone(),
        DataDir::load(dir_b.path()).expect("load"),
        Config::default(),
    )
    .await
    .expect("state");
    let b = Backend {
        router: vouch_backend::app(state_b.clone()),
        state: state_b,
        store: store_b,
        token: a.token.clone(),
        db: a.db.clone(),
        dir: dir_b,
    };

    // Prepared on A: served where its files are, announced nowhere.
    let prepared = keyring::rotate(&data(&a), &a.store, true, "test")
        .await
        .expect("prepare");
    assert!(prepared.update.is_none() && prepared.created);
    let kid = prepared.anchor.kid;
    assert!(matches!(
        keyring::rotate(&data(&a), &a.store, true, "test").await,
        Err(KeyRingError::AlreadyPrepared(k)) if k == kid
    ));
    reload(&a).await;
    reload(&b).await;
    assert_eq!((kids(&a), kids(&b)), (vec![1, 2], vec![1]));
    for i in [&a, &b] {
        let batch = fetch(i, &gw, 0).await;
        assert!(batch.updates.is_empty() && batch.latest == 0);
    }
    let status = keyring::status(&data(&a), &a.store).await.expect("status");
    assert_eq!(status.keys[1].state, KeyState::Prepared);
    assert_eq!(status.current(), Some(KeyId(1)));
    // `serve` checks its data directory against the database before it
    // starts: a copy of this backend's passes, another backend's does not.
    keyring::check(&data(&b), &a.store)
        .await
        .expect("a copy matches");
    let stranger = tempfile::tempdir().expect("tempdir");
    datadir::init(stranger.path(), &[]).expect("init");
    assert!(matches!(
        keyring::check(&DataDir::load(stranger.path()).expect("load"), &a.store).await,
        Err(KeyRingError::Mismatch { kid: KeyId(1), .. })
    ));

    // Announced: A hands it out; B, which cannot open hellos sealed to
    // key 2, withholds it.
    let announced = keyring::rotate(&data(&a), &a.store, false, "test")
        .await
        .expect("announce");
    assert!(!announced.created, "the prepared key, not a new one");
    assert_eq!(announced.anchor, prepared.anchor);
    let add = announced.update.expect("the Add");
    assert_eq!(fetch(&a, &gw, 0).await.updates, [add]);
    let withheld = fetch(&b, &gw, 0).await;
    assert!(withheld.updates.is_empty(), "{withheld:?}");
    assert_eq!(withheld.latest, 0);
    // B cannot sign the next update: the current key is not in its directory,
    // and it creates nothing trying.
    assert!(matches!(
        keyring::rotate(&data(&b), &b.store, false, "test").await,
        Err(KeyRingError::MissingPrivateKey { kid: k, .. }) if k == kid
    ));
    assert_eq!(
        datadir::key_ids(b.dir.path()).expect("ids"),
        [KeyId(1)],
        "no key files created"
    );
    // (A device updated through A that reaches B is refused there.)
    let mut updated = provisioned.clone();
    updated.apply(&add).expect("apply");
    assert_eq!(handshake(&a, &gw, &d1, &updated, 1).await, Ok(kid));
    assert_eq!(
        handshake(&b, &gw, &d1, &updated, 2).await,
        Err(VouchAnswer::Refused(Refusal::Denied))
    );

    // The operator copies the two files: B serves the key and the update.
    for f in [datadir::files::signing(kid), datadir::files::sealing(kid)] {
        std::fs::copy(a.dir.path().join(&f), b.dir.path().join(&f)).expect("copy");
        assert_eq!(mode(&b.dir.path().join(&f)), 0o600);
    }
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2]);
    assert_eq!(fetch(&b, &gw, 0).await.updates, [add]);
    assert_eq!(handshake(&b, &gw, &d1, &updated, 3).await, Ok(kid));
    b.state.shutdown();
}

async fn the_anchor_updates_route_is_behind_the_gateway_identity_and_budget(db: Db) {
    use vouch_backend::budget::Kind;
    let mut config = Config::default();
    config.limits.max_requests_per_gateway = 1;
    let (b, gw, _, _) = setup_with(&db, config).await;
    rotate(&b).await;
    reload(&b).await;
    let get = |who: Option<PublicKey>, query: &'static str| {
        let b = &b;
        async move {
            let (s, _, body) = b
                .raw(
                    who,
                    "GET",
                    &format!("/v1/anchor-updates{query}"),
                    None,
                    Vec::new(),
                )
                .await;
            (s, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (s, body) = get(None, "?after=0").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("client_certificate_required"));
    let (s, body) = get(
        Some(IdentityKey::from_seed(&[7; 32]).public_key()),
        "?after=0",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("gateway_unknown"));
    let (s, body) = get(Some(gw.public_key()), "?after=minus-one").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("invalid_query"));
    // No query: everything.
    let (s, _) = get(Some(gw.public_key()), "").await;
    assert_eq!(s, StatusCode::OK);

    // Over its budget: 429 at once.
    let held = b
        .state
        .gateway_budgets
        .try_take(gw.public_key(), Kind::Requests)
        .expect("budget");
    let (s, body) = get(Some(gw.public_key()), "?after=0").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("gateway_busy"));
    drop(held);
    assert_eq!(fetch(&b, &gw, 0).await.updates.len(), 1);

    // Suspended: 403.
    let (s, v) = b
        .admin(
            "POST",
            &format!("/v1/admin/gateways/{}/suspend", gw.public_key()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, body) = get(Some(gw.public_key()), "?after=0").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("gateway_not_active"));
}

async fn a_data_directory_from_before_rotation_works_unchanged(db: Db) {
    // `init` as before key rotation: one key pair, nothing registered.
    let (b, gw, d1, _) = setup(&db).await;
    let status = keyring::status(&data(&b), &b.store).await.expect("status");
    assert!(!status.registered);
    assert_eq!(status.current(), Some(KeyId(1)));
    assert_eq!(status.serial(), 0);
    assert_eq!(status.keys.len(), 1);
    assert!(status.keys[0].private_key_here);
    assert_eq!(kids(&b), [1]);
    reload(&b).await;
    assert_eq!(kids(&b), [1]);
    assert_eq!(handshake(&b, &gw, &d1, &b.anchors(), 1).await, Ok(KeyId(1)));
    let batch = fetch(&b, &gw, 0).await;
    assert!(batch.updates.is_empty() && batch.latest == 0);
    // Reading the ring wrote nothing: no key audit entries, no rows.
    assert!(b.store.key_rows().await.expect("rows").is_empty());
    assert!(b.audit("action=backend_key_genesis").await.is_empty());
    // Retiring or purging the only key is refused before anything is written.
    assert!(matches!(
        keyring::retire(&data(&b), &b.store, KeyId(1), "test").await,
        Err(KeyRingError::Current(KeyId(1)))
    ));
    assert!(matches!(
        keyring::purge(b.dir.path(), &b.store, KeyId(1), "test").await,
        Err(KeyRingError::Current(KeyId(1)))
    ));
    assert!(b.store.key_rows().await.expect("rows").is_empty());
    // A key file readable by others stops the directory from loading.
    let path = b.dir.path().join(datadir::files::SIGNING);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(matches!(
        DataDir::load(b.dir.path()),
        Err(datadir::DataDirError::Permissions { .. })
    ));
}
