//! Backend key rotation (SPEC.md §2.3, §7.7) through the router: the real
//! peripheral and gateway state machines, the real `AnchorSet::apply` on the
//! device side, the pre-rotated key ring on disk and in the database, on
//! SQLite and PostgreSQL.

mod common;

use std::os::unix::fs::PermissionsExt;

use axum::http::StatusCode;
use common::{gateway_takes, Backend, Db, Device};
use vouch_backend::config::Config;
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::keyring::{self, KeyRingError, KeyState};
use vouch_backend::store::{AuditVerdict, InstanceRow, Store};
use vouch_backend::AppState;
use vouch_proto::anchor::{AnchorAction, AnchorBundle, AnchorSet, AnchorUpdate};
use vouch_proto::keys::{IdentityKey, KeyId, PublicKey};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{
    decode_body, AnchorUpdateBatch, FeedBatch, FeedChange, Refusal, VouchAnswer, MAX_ANCHOR_UPDATES,
};
use vouch_proto::wire::{Hello, MAX_HANDSHAKE_MESSAGE};
use vouch_proto::{Error, PeerMisbehaved, Timestamp};

on_both!(
    rotation_moves_updated_devices_to_the_new_key_and_keeps_the_others_working,
    a_retired_key_is_served_until_it_is_purged,
    updates_are_served_in_order_after_a_serial_in_bounded_pages,
    an_instance_hands_out_only_updates_for_keys_it_serves,
    the_anchor_updates_route_is_behind_the_gateway_identity_and_budget,
    a_data_directory_from_before_pre_rotation_gains_a_committed_successor,
    a_thief_of_the_current_key_cannot_choose_the_successor,
    a_rotate_is_handed_out_and_announced_only_once_every_live_instance_serves_its_key,
    catch_up_over_three_rotations_with_purges_in_order_strands_no_device,
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

fn force() -> keyring::RotateOptions {
    keyring::RotateOptions { force: true }
}

async fn rotate(b: &Backend) -> AnchorUpdate {
    keyring::rotate(&data(b), &b.store, "test")
        .await
        .expect("rotate")
        .update
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
        anchors.primary().kid,
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
    let provisioned = b.anchors().await;
    assert_eq!(provisioned.primary().kid, KeyId(1));
    assert_eq!(handshake(&b, &gw, &d1, &provisioned, 1).await, Ok(KeyId(1)));

    let rotate = rotate(&b).await;
    assert_eq!(rotate.serial, 1);
    assert_eq!(rotate.signer, KeyId(2), "signed by the key it reveals");
    let AnchorAction::Rotate { anchor: new, next } = rotate.action else {
        panic!("expected Rotate, got {:?}", rotate.action)
    };
    assert_eq!(new.kid, KeyId(2), "the key init committed to");
    assert_eq!(&new.digest(), provisioned.next(), "the committed key");
    // The key after it was created with it, 0600, and is what `next` names.
    for f in [
        datadir::files::signing(KeyId(3)),
        datadir::files::sealing(KeyId(3)),
    ] {
        assert_eq!(mode(&b.dir.path().join(&f)), 0o600, "{f}");
    }
    let key3 = datadir::load_key_pair(b.dir.path(), KeyId(3))
        .expect("load")
        .expect("key 3");
    assert_eq!(next, key3.anchor().digest());
    // The running instance serves key 2 from now on (the background task
    // does this every second; here it is called directly). Key 3, the next
    // one, is not served: nothing is sealed to it yet.
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2]);

    // A device that has not received the update yet seals to key 1 and is
    // vouched by key 1, its anchor.
    assert_eq!(
        handshake(&b, &gw, &d1, &provisioned, 10).await,
        Ok(KeyId(1))
    );

    // The gateway fetches the update; the device applies it with the
    // protocol's own checks, and seals to key 2 from then on.
    let batch = fetch(&b, &gw, 0).await;
    assert_eq!(batch.updates, [rotate]);
    assert_eq!(batch.latest, 1);
    let mut updated = provisioned.clone();
    updated
        .apply(&batch.updates[0])
        .expect("the device applies the Rotate");
    assert_eq!(updated.primary(), &new);
    assert!(
        updated.get(KeyId(1)).is_none(),
        "key 1 is no longer trusted"
    );
    assert_eq!(handshake(&b, &gw, &d1, &updated, 20).await, Ok(KeyId(2)));
    // Replayed, the update is refused and changes nothing.
    let before = updated.clone();
    assert_eq!(
        updated.apply(&rotate),
        Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
    );
    assert_eq!(updated, before);
    // A device flashed from a fresh bundle starts where an updated one is.
    let (s, v) = b.admin("GET", "/v1/admin/anchor", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let bundle: AnchorBundle = serde_json::from_value(v).expect("bundle");
    let flashed = bundle.to_anchor_set().expect("valid bundle");
    assert_eq!(flashed, updated, "export = the anchor of an updated device");
    assert_eq!(handshake(&b, &gw, &d2, &flashed, 30).await, Ok(KeyId(2)));
    // A device that never got the update stays on key 1 until it does.
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
        detail.contains("kid=2") && detail.contains("serial=1") && detail.contains("kid=3"),
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
    let provisioned = b.anchors().await;
    let first = rotate(&b).await;
    let second = rotate(&b).await;
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2, 3], "retired keys are still served");
    let states = |status: &keyring::RingStatus| -> Vec<(u8, KeyState)> {
        status.keys.iter().map(|k| (k.kid, k.state)).collect()
    };
    let status = keyring::status(&data(&b), &b.store).await.expect("status");
    assert_eq!(
        states(&status),
        [
            (1, KeyState::Retired),
            (2, KeyState::Retired),
            (3, KeyState::Current),
            (4, KeyState::Next)
        ]
    );

    // The current key and the next one cannot be purged; an unknown one is
    // an error.
    for (kid, state) in [(3, KeyState::Current), (4, KeyState::Next)] {
        assert!(matches!(
            keyring::purge(b.dir.path(), &b.store, KeyId(kid), "test").await,
            Err(KeyRingError::NotRetired(k, s)) if k == KeyId(kid) && s == state
        ));
    }
    assert!(matches!(
        keyring::purge(b.dir.path(), &b.store, KeyId(7), "test").await,
        Err(KeyRingError::UnknownKey(KeyId(7)))
    ));

    // A device that missed both rotations still seals to key 1 and is
    // vouched: in that session it gets the updates, in order.
    assert_eq!(handshake(&b, &gw, &d1, &provisioned, 1).await, Ok(KeyId(1)));
    let batch = fetch(&b, &gw, 0).await;
    assert_eq!(batch.updates, [first, second]);
    assert_eq!(batch.latest, 2);
    // Out of order, the second is refused (key 3 is not what key 1 committed
    // to)...
    let mut d1_anchors = provisioned.clone();
    assert_eq!(
        d1_anchors.apply(&second),
        Err(Error::PeerMisbehaved(PeerMisbehaved::BadAnchorUpdate))
    );
    assert_eq!(d1_anchors, provisioned, "a refused update changes nothing");
    // ...in order, both apply, and the device is left with key 3.
    for u in &batch.updates {
        d1_anchors.apply(u).expect("in order");
    }
    assert_eq!(d1_anchors.primary().kid, KeyId(3));
    // The first cannot be replayed to undo the second.
    assert_eq!(
        d1_anchors.apply(&first),
        Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
    );
    assert_eq!(handshake(&b, &gw, &d1, &d1_anchors, 2).await, Ok(KeyId(3)));

    // Purge key 1: the private key is deleted, no instance serves it.
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
    assert_eq!(kids(&b), [2, 3]);
    // A device that still knows only key 1 is refused, like any refusal.
    assert_eq!(
        handshake(&b, &gw, &d2, &provisioned, 3).await,
        Err(VouchAnswer::Refused(Refusal::Denied))
    );
    assert_eq!(last_vouch_audit(&b).await["reason"], "unknown_backend_key");
    // The updated one carries on.
    assert_eq!(handshake(&b, &gw, &d1, &d1_anchors, 4).await, Ok(KeyId(3)));
    // The served log still starts at serial 1.
    assert_eq!(fetch(&b, &gw, 0).await.updates, [first, second]);

    // Again: nothing left to do.
    let again = keyring::purge(b.dir.path(), &b.store, KeyId(1), "test")
        .await
        .expect("purge again");
    assert!(!again.newly_purged && !again.files_removed);
    let status = keyring::status(&data(&b), &b.store).await.expect("status");
    assert_eq!(
        states(&status),
        [
            (1, KeyState::Purged),
            (2, KeyState::Retired),
            (3, KeyState::Current),
            (4, KeyState::Next)
        ]
    );
    assert_eq!(status.serial(), 2);
    assert_eq!(b.audit("action=backend_key_purge").await.len(), 1);
    audit_intact(&b).await;
}

async fn updates_are_served_in_order_after_a_serial_in_bounded_pages(db: Db) {
    let (b, gw, d1, _) = setup(&db).await;
    let provisioned = b.anchors().await;
    // 68 rotations: more than one page.
    let last: u32 = 68;
    let mut issued = Vec::new();
    for _ in 1..=last {
        issued.push(rotate(&b).await);
    }
    reload(&b).await;
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
    let current = KeyId(u8::try_from(last + 1).expect("small"));
    assert_eq!(anchors.primary().kid, current);
    assert_eq!(anchors.serial(), last);
    assert_eq!(handshake(&b, &gw, &d1, &anchors, 5).await, Ok(current));
    // Every update again (a gateway delivers all it holds): each is stale.
    for u in &issued {
        assert_eq!(
            anchors.apply(u),
            Err(Error::PeerMisbehaved(PeerMisbehaved::StaleAnchorUpdate))
        );
    }
    // Skipping an update leaves the device unable to take the next (its key
    // is not the one the device holds a commitment to); in order it applies.
    let mut skipping = provisioned.clone();
    assert_eq!(
        skipping.apply(&issued[1]),
        Err(Error::PeerMisbehaved(PeerMisbehaved::BadAnchorUpdate))
    );
    skipping.apply(&issued[0]).expect("the first");
    skipping.apply(&issued[1]).expect("then the second");
}

/// A second instance on `a`'s database, with its own data directory: a
/// copy of `a`'s identity files (key 1 among them) and of the key pairs
/// `kids`.
async fn second_instance(a: &Backend, kids: &[u8]) -> Backend {
    let dir_b = tempfile::tempdir().expect("tempdir");
    for f in datadir::files::IDENTITY {
        let (from, to) = (a.dir.path().join(f), dir_b.path().join(f));
        std::fs::copy(&from, &to).expect("copy");
    }
    for &kid in kids {
        copy_key(a, dir_b.path(), KeyId(kid));
    }
    let store_b = Store::open(&a.db.url_for(a.dir.path()))
        .await
        .expect("store");
    let state_b = AppState::new(
        store_b.clone(),
        DataDir::load(dir_b.path()).expect("load"),
        Config::default(),
    )
    .await
    .expect("state");
    Backend {
        router: vouch_backend::app(state_b.clone()),
        state: state_b,
        store: store_b,
        token: a.token.clone(),
        db: a.db.clone(),
        dir: dir_b,
    }
}

/// The operator copies key `kid`'s two files from `a`'s data directory.
fn copy_key(a: &Backend, to: &std::path::Path, kid: KeyId) {
    for f in [datadir::files::signing(kid), datadir::files::sealing(kid)] {
        std::fs::copy(a.dir.path().join(&f), to.join(&f)).expect("copy");
        assert_eq!(mode(&to.join(&f)), 0o600);
    }
}

async fn an_instance_hands_out_only_updates_for_keys_it_serves(db: Db) {
    let (a, gw, d1, _) = setup(&db).await;
    let provisioned = a.anchors().await;
    // A second instance on the same database with its own copy of the data
    // directory, taken before the rotation, without the next key's files
    // (kept offline, or not copied yet).
    let b = second_instance(&a, &[]).await;
    let status = keyring::status(&data(&a), &a.store).await.expect("status");
    assert_eq!(status.keys[1].state, KeyState::Next);
    assert_eq!(status.current(), KeyId(1));
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

    // B cannot rotate: the next key is not in its directory, and it creates
    // nothing trying.
    assert!(matches!(
        keyring::rotate(&data(&b), &b.store, "test").await,
        Err(KeyRingError::MissingPrivateKey { kid: KeyId(2), .. })
    ));
    assert_eq!(
        datadir::key_ids(b.dir.path()).expect("ids"),
        [KeyId(1)],
        "no key files created"
    );
    // A rotates (forced: B lacks the key). B, which cannot open hellos
    // sealed to key 2, withholds the update, and so does A, since a device
    // updated through A may next reach B.
    let rotate = keyring::rotate_with(&data(&a), &a.store, "test", force())
        .await
        .expect("forced rotation")
        .update;
    reload(&a).await;
    reload(&b).await;
    assert_eq!((kids(&a), kids(&b)), (vec![1, 2], vec![1]));
    for instance in [&a, &b] {
        let withheld = fetch(instance, &gw, 0).await;
        assert!(withheld.updates.is_empty(), "{withheld:?}");
        assert_eq!(withheld.latest, 0);
    }
    // (A device updated anyway, here by hand, is refused by B.)
    let mut updated = provisioned.clone();
    updated.apply(&rotate).expect("apply");
    assert_eq!(handshake(&a, &gw, &d1, &updated, 1).await, Ok(KeyId(2)));
    assert_eq!(
        handshake(&b, &gw, &d1, &updated, 2).await,
        Err(VouchAnswer::Refused(Refusal::Denied))
    );

    // The operator copies the two files: B serves the key, and both hand
    // the update out.
    let kid = KeyId(2);
    copy_key(&a, b.dir.path(), kid);
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2]);
    assert_eq!(fetch(&b, &gw, 0).await.updates, [rotate]);
    assert_eq!(fetch(&a, &gw, 0).await.updates, [rotate]);
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

async fn a_data_directory_from_before_pre_rotation_gains_a_committed_successor(db: Db) {
    // A data directory as `init` made it before pre-rotated anchors: one key
    // pair, nothing registered.
    let dir = tempfile::tempdir().expect("tempdir");
    datadir::init(dir.path(), &[]).expect("init");
    assert!(datadir::remove_key_pair(dir.path(), KeyId(2)).expect("remove"));
    let store = Store::open(&db.url_for(dir.path())).await.expect("store");
    let mut data = DataDir::load(dir.path()).expect("load");
    assert!(matches!(
        keyring::status(&data, &store).await,
        Err(KeyRingError::BadGenesis)
    ));
    // `serve`, `export-anchor` and `keys` register the ring first: key 2 is
    // created as key 1's committed successor (0600), once.
    assert!(keyring::register(&mut data, &store, "test")
        .await
        .expect("register"));
    assert!(!keyring::register(&mut data, &store, "test")
        .await
        .expect("again"));
    assert_eq!(
        mode(&dir.path().join(datadir::files::signing(KeyId(2)))),
        0o600
    );
    let status = keyring::status(&data, &store).await.expect("status");
    assert!(status.registered);
    assert_eq!(status.current(), KeyId(1));
    assert_eq!(status.serial(), 0);
    let states: Vec<_> = status.keys.iter().map(|k| (k.kid, k.state)).collect();
    assert_eq!(states, [(1, KeyState::Current), (2, KeyState::Next)]);
    let key2 = data.key_pair(KeyId(2)).expect("key 2 loaded");
    assert_eq!(status.fleet.next(), &key2.anchor().digest());
    // A fresh directory is registered the same way, with the key 2 `init`
    // made, without creating another. (On a database of its own: the one
    // above holds the first directory's ring.)
    let fresh = tempfile::tempdir().expect("tempdir");
    datadir::init(fresh.path(), &[]).expect("init");
    let fresh_store = Store::open(&Db::Sqlite.url_for(fresh.path()))
        .await
        .expect("store");
    let mut fresh_data = DataDir::load(fresh.path()).expect("load");
    let unregistered = keyring::status(&fresh_data, &fresh_store)
        .await
        .expect("status");
    assert!(!unregistered.registered);
    keyring::register(&mut fresh_data, &fresh_store, "test")
        .await
        .expect("register");
    assert_eq!(
        keyring::status(&fresh_data, &fresh_store)
            .await
            .expect("status")
            .fleet,
        unregistered.fleet,
        "registering changes nothing a device is provisioned with"
    );
    assert_eq!(
        datadir::key_ids(fresh.path()).expect("ids"),
        [KeyId(1), KeyId(2)]
    );
    // A key file readable by others stops the directory from loading.
    let path = dir.path().join(datadir::files::SIGNING);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(matches!(
        DataDir::load(dir.path()),
        Err(datadir::DataDirError::Permissions { .. })
    ));
}

async fn a_thief_of_the_current_key_cannot_choose_the_successor(db: Db) {
    // Key 1 is stolen. With it the thief signs updates of every kind, at
    // every serial; a device refuses all of them, and the operator's
    // rotation still moves it to key 2, which the thief never held.
    let (b, gw, d1, _) = setup(&db).await;
    let provisioned = b.anchors().await;
    let stolen = datadir::load_key_pair(b.dir.path(), KeyId(1))
        .expect("load")
        .expect("key 1");
    let own = vouch_proto::handshake::backend::BackendKeys::generate(KeyId(9), &mut rng(9));
    let mut device = provisioned.clone();
    for (serial, action) in [
        (
            1,
            AnchorAction::Rotate {
                anchor: own.anchor(),
                next: own.anchor().digest(),
            },
        ),
        (u32::MAX, AnchorAction::Replace(own.anchor())),
        (1, AnchorAction::Add(own.anchor())),
        (2, AnchorAction::Retire(KeyId(1))),
    ] {
        for signer in [KeyId(1), KeyId(2), KeyId(9)] {
            let forged = AnchorUpdate::sign(serial, action, signer, stolen.signing());
            assert_eq!(
                device.apply(&forged),
                Err(Error::PeerMisbehaved(PeerMisbehaved::BadAnchorUpdate)),
                "{forged:?}"
            );
        }
    }
    assert_eq!(device, provisioned, "nothing changed, no serial consumed");
    // The operator rotates; the device takes it.
    let rotate = rotate(&b).await;
    reload(&b).await;
    device.apply(&rotate).expect("the genuine rotation");
    assert_eq!(handshake(&b, &gw, &d1, &device, 1).await, Ok(KeyId(2)));
}

/// `GET /v1/feed?after=…&wait_ms=…` as gateway `gw`, on a router of its own
/// (so that a long-poll can wait in a task of its own).
async fn feed_poll(router: axum::Router, gw: PublicKey, after: u64, wait_ms: u64) -> FeedBatch {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = axum::http::Request::get(format!("/v1/feed?after={after}&wait_ms={wait_ms}"))
        .body(axum::body::Body::empty())
        .expect("request");
    req.extensions_mut()
        .insert(vouch_backend::ClientIdentity(Some(gw)));
    let res = router.oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    decode_body(&bytes).expect("feed batch")
}

/// The serials the feed batch announces anchor updates up to.
fn announced(batch: &FeedBatch) -> Vec<u32> {
    batch
        .events
        .iter()
        .filter_map(|e| match e.change {
            FeedChange::AnchorUpdates(serial) => Some(serial),
            _ => None,
        })
        .collect()
}

async fn a_rotate_is_handed_out_and_announced_only_once_every_live_instance_serves_its_key(db: Db) {
    let (a, gw, d1, d2) = setup(&db).await;
    let provisioned = a.anchors().await;
    // Instance B has key 1 but not the committed key 2 (not copied yet).
    let b = second_instance(&a, &[]).await;
    let status = keyring::status(&data(&a), &a.store).await.expect("status");
    let live: Vec<&str> = status.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(live, [&a.state.instance.id, &b.state.instance.id]);
    assert_eq!(
        status.instances[1]
            .holds
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [1]
    );
    // An instance that stopped without a word, long ago, counts for nothing.
    let now = vouch_backend::store::now_ms();
    a.store
        .record_instance(&InstanceRow {
            id: "crashed".into(),
            host: "gone:/var/lib/vouch".into(),
            started_ms: now - 100_000,
            seen_ms: now - 60_000,
            live_until_ms: now - 50_000,
            serves: [1].into(),
            holds: [1].into(),
        })
        .await
        .expect("record");

    // `keys rotate` refuses, naming B, and creates nothing.
    match keyring::rotate(&data(&a), &a.store, "test").await {
        Err(KeyRingError::InstancesLackKey { kid, instances }) => {
            assert_eq!(kid, KeyId(2));
            assert_eq!(instances.len(), 1, "{instances:?}");
            assert!(instances[0].contains(&b.state.instance.id), "{instances:?}");
            assert!(
                instances[0].contains(&b.state.instance.host),
                "{instances:?}"
            );
        }
        other => panic!("expected InstancesLackKey, got {other:?}"),
    }
    assert_eq!(
        datadir::key_ids(a.dir.path()).expect("ids"),
        [KeyId(1), KeyId(2)]
    );
    let status = keyring::status(&data(&a), &a.store).await.expect("status");
    assert_eq!(status.serial(), 0, "nothing issued");

    // Forced, it is issued, and both instances reload (each does so every
    // second in the background): A serves key 2, B cannot.
    let cursor = feed_poll(a.router.clone(), gw.public_key(), 0, 0)
        .await
        .next;
    let first = keyring::rotate_with(&data(&a), &a.store, "test", force())
        .await
        .expect("forced rotation")
        .update;
    reload(&a).await;
    reload(&b).await;
    assert_eq!((kids(&a), kids(&b)), (vec![1, 2], vec![1]));
    // No instance hands it out, and the feed does not announce it.
    for instance in [&a, &b] {
        let batch = fetch(instance, &gw, 0).await;
        assert!(batch.updates.is_empty(), "{batch:?}");
        assert_eq!(batch.latest, 0);
    }
    let status = keyring::status(&data(&a), &a.store).await.expect("status");
    assert_eq!((status.serial(), status.handed_out), (1, 0));
    let quiet = feed_poll(a.router.clone(), gw.public_key(), cursor, 0).await;
    assert_eq!(announced(&quiet), [] as [u32; 0], "{quiet:?}");
    // Devices keep working on key 1 through either instance meanwhile.
    assert_eq!(handshake(&a, &gw, &d1, &provisioned, 1).await, Ok(KeyId(1)));
    assert_eq!(handshake(&b, &gw, &d1, &provisioned, 2).await, Ok(KeyId(1)));

    // A gateway waits on A's feed; the key reaches B; B serves it; the
    // gateway is told at once.
    let waiting = tokio::spawn(feed_poll(a.router.clone(), gw.public_key(), cursor, 30_000));
    copy_key(&a, b.dir.path(), KeyId(2));
    reload(&b).await;
    assert_eq!(kids(&b), [1, 2]);
    let told = waiting.await.expect("feed poll");
    assert_eq!(announced(&told), [1], "{told:?}");
    // Announced once, whoever reloads next.
    reload(&a).await;
    reload(&b).await;
    let all = feed_poll(b.router.clone(), gw.public_key(), cursor, 0).await;
    assert_eq!(announced(&all), [1], "{all:?}");
    assert_eq!(b.audit("action=anchor_updates_announced").await.len(), 1);
    // Both hand it out now, and a device that applies it is served by both.
    for instance in [&a, &b] {
        let batch = fetch(instance, &gw, 0).await;
        assert_eq!((batch.updates, batch.latest), (vec![first], 1));
    }
    let mut updated = provisioned.clone();
    updated.apply(&first).expect("apply");
    assert_eq!(handshake(&b, &gw, &d1, &updated, 3).await, Ok(KeyId(2)));
    assert_eq!(handshake(&a, &gw, &d1, &updated, 4).await, Ok(KeyId(2)));

    // The next rotation: B already holds the committed key 3, so `keys
    // rotate` goes ahead unforced, and once both serve it (within a second)
    // it is handed out and announced.
    copy_key(&a, b.dir.path(), KeyId(3));
    reload(&b).await;
    let second = rotate(&a).await;
    reload(&a).await;
    reload(&b).await;
    for instance in [&a, &b] {
        assert_eq!(fetch(instance, &gw, 0).await.updates, [first, second]);
    }
    let all = feed_poll(a.router.clone(), gw.public_key(), cursor, 0).await;
    assert_eq!(announced(&all), [1, 2], "{all:?}");
    updated.apply(&second).expect("apply");
    assert_eq!(handshake(&b, &gw, &d2, &updated, 5).await, Ok(KeyId(3)));
    audit_intact(&a).await;
    b.state.shutdown();
}

async fn catch_up_over_three_rotations_with_purges_in_order_strands_no_device(db: Db) {
    let (a, gw, d1, d2) = setup(&db).await;
    let provisioned = a.anchors().await;
    let b = second_instance(&a, &[2]).await;
    // Three rotations, the operator copying each new committed key to B
    // before the next.
    let mut issued = Vec::new();
    for created in 3..=5 {
        issued.push(rotate(&a).await);
        copy_key(&a, b.dir.path(), KeyId(created));
        reload(&a).await;
        reload(&b).await;
    }
    assert_eq!((kids(&a), kids(&b)), (vec![1, 2, 3, 4], vec![1, 2, 3, 4]));
    for instance in [&a, &b] {
        assert_eq!(fetch(instance, &gw, 0).await.updates, issued);
    }

    // Key 2 or 3 cannot be purged while key 1 is served: a device on key 1
    // catches up through them.
    for kid in [2, 3] {
        match keyring::purge(a.dir.path(), &a.store, KeyId(kid), "test").await {
            Err(KeyRingError::OlderKeyServed { kid: k, older }) => {
                assert_eq!((k, older), (KeyId(kid), KeyId(1)));
            }
            other => panic!("purge {kid}: expected OlderKeyServed, got {other:?}"),
        }
        assert!(a
            .dir
            .path()
            .join(datadir::files::signing(KeyId(kid)))
            .exists());
    }
    // Device 1, on key 1, reaches B; its session ends after the first
    // update: it is left on key 2.
    assert_eq!(handshake(&b, &gw, &d1, &provisioned, 1).await, Ok(KeyId(1)));
    let mut d1_anchors = provisioned.clone();
    d1_anchors.apply(&issued[0]).expect("the first update");
    assert_eq!(d1_anchors.primary().kid, KeyId(2));

    // The operator purges the oldest key, 1 (device 2 never came back).
    keyring::purge(a.dir.path(), &a.store, KeyId(1), "test")
        .await
        .expect("purge 1");
    assert!(matches!(
        keyring::purge(a.dir.path(), &a.store, KeyId(3), "test").await,
        Err(KeyRingError::OlderKeyServed {
            kid: KeyId(3),
            older: KeyId(2)
        })
    ));
    reload(&a).await;
    reload(&b).await;
    // B still has key 1's files, but serves it no more.
    assert!(b
        .dir
        .path()
        .join(datadir::files::signing(KeyId(1)))
        .exists());
    assert_eq!((kids(&a), kids(&b)), (vec![2, 3, 4], vec![2, 3, 4]));
    // Device 1, on key 2, is vouched through A, where it catches up, cut
    // off once more, then through B to the current key.
    assert_eq!(handshake(&a, &gw, &d1, &d1_anchors, 2).await, Ok(KeyId(2)));
    d1_anchors.apply(&issued[1]).expect("the second update");
    assert_eq!(handshake(&b, &gw, &d1, &d1_anchors, 3).await, Ok(KeyId(3)));
    d1_anchors.apply(&issued[2]).expect("the third update");
    assert_eq!(handshake(&a, &gw, &d1, &d1_anchors, 4).await, Ok(KeyId(4)));
    // Device 2, on the purged key 1, is refused: provisioned again.
    assert_eq!(
        handshake(&b, &gw, &d2, &provisioned, 5).await,
        Err(VouchAnswer::Refused(Refusal::Denied))
    );

    // In order, 2 and 3 go; the updates are still handed out in full (a
    // gateway delivers every one; the device refuses the stale ones).
    for kid in [2, 3] {
        keyring::purge(a.dir.path(), &a.store, KeyId(kid), "test")
            .await
            .expect("purge in order");
    }
    reload(&a).await;
    reload(&b).await;
    assert_eq!((kids(&a), kids(&b)), (vec![4], vec![4]));
    for instance in [&a, &b] {
        assert_eq!(fetch(instance, &gw, 0).await.updates, issued);
    }
    assert_eq!(handshake(&b, &gw, &d1, &d1_anchors, 6).await, Ok(KeyId(4)));
    assert_eq!(a.audit("action=backend_key_purge").await.len(), 3);
    audit_intact(&a).await;
    b.state.shutdown();
}
