//! FileKeyStore: permissions, atomic writes, corrupt and missing files,
//! round trips.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use vouch_peripheral::keystore::{FileKeyStore, KeyStore, KeyStoreError, MemoryKeyStore};
use vouch_proto::anchor::{AnchorAction, AnchorBundle, AnchorSet, AnchorUpdate};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::peripheral::{TicketSlot, TicketWallet};
use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId};
use vouch_proto::testing::{rng, Pair};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn generated_key_is_0600_pkcs8_and_reopens_to_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("device");
    let store = FileKeyStore::generate(&dir, None).unwrap();
    assert_eq!(mode(&store.key_path()), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let pem = fs::read_to_string(store.key_path()).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    assert_eq!(
        store.peripheral_id(),
        PeripheralId::derive(&store.public_key())
    );
    let again = FileKeyStore::open(&dir).unwrap();
    assert_eq!(again.public_key(), store.public_key());
    assert_eq!(again.peripheral_id(), store.peripheral_id());
    // Debug output names no key material.
    let dbg = format!("{again:?}");
    assert!(dbg.contains("IdentityKey(..)"), "{dbg}");
    assert!(!dbg.contains(&pem[28..60]));
}

#[test]
fn a_second_keygen_is_refused_and_the_first_key_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let first = FileKeyStore::generate(tmp.path(), None).unwrap();
    let err = FileKeyStore::generate(tmp.path(), None).unwrap_err();
    assert!(matches!(err, KeyStoreError::IdentityExists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to replace it"));
    assert_eq!(
        FileKeyStore::open(tmp.path()).unwrap().public_key(),
        first.public_key()
    );
    assert_eq!(names(tmp.path()), vec!["identity.pem"]);
}

#[test]
fn factory_assigned_id_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let id = PeripheralId::from_hex("00112233aabbccdd").unwrap();
    let store = FileKeyStore::generate(tmp.path(), Some(id)).unwrap();
    assert_eq!(store.peripheral_id(), id);
    assert_eq!(FileKeyStore::open(tmp.path()).unwrap().peripheral_id(), id);
    fs::write(tmp.path().join("peripheral-id"), "zz\n").unwrap();
    assert!(matches!(
        FileKeyStore::open(tmp.path()),
        Err(KeyStoreError::CorruptId { .. })
    ));
}

#[test]
fn missing_key_is_a_clear_error_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let err = FileKeyStore::open(tmp.path()).unwrap_err();
    assert!(matches!(err, KeyStoreError::NoIdentity { .. }), "{err}");
    assert!(err.to_string().contains("no identity key"), "{err}");
    assert!(names(tmp.path()).is_empty(), "nothing was created");
}

#[test]
fn corrupt_key_is_a_clear_error_and_no_new_identity_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileKeyStore::generate(tmp.path(), None).unwrap();
    let path = store.key_path();
    let pem = fs::read(&path).unwrap();
    for (what, bytes) in [
        ("truncated", pem[..pem.len() / 2].to_vec()),
        ("empty", vec![]),
        (
            "garbage",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
        ),
        ("binary", vec![0xff, 0xfe, 0x00]),
    ] {
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = FileKeyStore::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::CorruptKey { .. }),
            "{what}: {err}"
        );
        assert!(
            err.to_string().contains("no new identity was created"),
            "{err}"
        );
        // The corrupt file is left as it was for the operator; still refused
        // by keygen.
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}");
        assert!(matches!(
            FileKeyStore::generate(tmp.path(), None),
            Err(KeyStoreError::IdentityExists { .. })
        ));
    }
}

#[test]
fn key_readable_by_others_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileKeyStore::generate(tmp.path(), None).unwrap();
    let path = store.key_path();
    for bad in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let err = FileKeyStore::open(tmp.path()).unwrap_err();
        match &err {
            KeyStoreError::InsecurePermissions { mode, .. } => assert_eq!(*mode, bad),
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        assert!(msg.contains(&format!("{bad:03o}")), "{msg}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(FileKeyStore::open(tmp.path()).is_ok(), "owner-only is fine");
}

#[test]
fn anchors_round_trip_as_the_backend_bundle_and_survive_leftover_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = FileKeyStore::generate(tmp.path(), None).unwrap();
    assert!(matches!(
        store.anchors(),
        Err(KeyStoreError::NotProvisioned { .. })
    ));
    let k1 = BackendKeys::generate(KeyId(1), &mut rng(1));
    let k2 = BackendKeys::generate(KeyId(2), &mut rng(2));
    let k3 = BackendKeys::generate(KeyId(3), &mut rng(3));
    let mut set = AnchorSet::new(k1.anchor(), k2.anchor().digest(), 0);
    let bundle = AnchorBundle::from_anchor_set(&set);
    assert_eq!(store.install_bundle(&bundle).unwrap(), set);
    assert_eq!(store.anchors().unwrap(), set);
    // The file is the bundle format itself.
    let on_disk: AnchorBundle =
        serde_json::from_slice(&fs::read(store.anchors_path()).unwrap()).unwrap();
    assert_eq!(on_disk, bundle);

    // A crash left temporaries behind (one of them half-written): loading is
    // unaffected, and the next write still works.
    fs::write(tmp.path().join(".anchors.json.tmp-1-0-0"), b"{\"form").unwrap();
    fs::write(tmp.path().join(".ticket.bin.tmp-1-1-0"), b"\x01").unwrap();
    let update = AnchorUpdate::sign(
        1,
        AnchorAction::Rotate {
            anchor: k2.anchor(),
            next: k3.anchor().digest(),
        },
        KeyId(2),
        k2.signing(),
    );
    set.apply(&update).unwrap();
    store.save_anchors(&set).unwrap();
    let reopened = FileKeyStore::open(tmp.path()).unwrap();
    assert_eq!(reopened.anchors().unwrap(), set);
    assert_eq!(reopened.anchors().unwrap().serial(), 1);
    assert_eq!(reopened.anchors().unwrap().primary().kid, KeyId(2));

    // A corrupt anchor file is an error, not an empty set.
    fs::write(store.anchors_path(), b"{}").unwrap();
    assert!(matches!(
        store.anchors(),
        Err(KeyStoreError::CorruptAnchors { .. })
    ));
    let mut bad = bundle.clone();
    bad.anchor.sealing = "00".into();
    assert!(matches!(
        store.install_bundle(&bad),
        Err(KeyStoreError::InvalidBundle(_))
    ));
}

#[test]
fn ticket_round_trips_at_0600_and_clears() {
    let mut pair = Pair::new(11);
    let (p, _g) = pair.full_handshake().unwrap();
    let ticket_bytes = postcard::to_allocvec(&p.ticket).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut store = FileKeyStore::generate(tmp.path(), None).unwrap();
    assert!(store.load_tickets().unwrap().is_empty());
    let mut wallet = TicketWallet::new();
    wallet.on_established(None, p.ticket);
    store.save_tickets(&wallet).unwrap();
    assert_eq!(mode(&store.ticket_path()), 0o600);
    let loaded = store.load_tickets().unwrap();
    let t = loaded.ticket(TicketSlot::Unconfirmed).unwrap();
    assert!(loaded.ticket(TicketSlot::Confirmed).is_none());
    // The ticket's secret survived too: bytes are identical.
    assert_eq!(postcard::to_allocvec(t).unwrap(), ticket_bytes);
    // Only the tickets, the key and no temporaries are in the directory.
    assert_eq!(names(tmp.path()), vec!["identity.pem", "ticket.bin"]);

    // A ticket file others can read is refused; a corrupt one is an error.
    fs::set_permissions(store.ticket_path(), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        store.load_tickets(),
        Err(KeyStoreError::InsecurePermissions { .. })
    ));
    fs::set_permissions(store.ticket_path(), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(store.ticket_path(), b"\x00\x01").unwrap();
    assert!(matches!(
        store.load_tickets(),
        Err(KeyStoreError::CorruptTicket { .. })
    ));
    // An empty wallet removes the file; again is fine.
    store.save_tickets(&TicketWallet::new()).unwrap();
    assert!(store.load_tickets().unwrap().is_empty());
    assert!(!store.ticket_path().exists());
    store.save_tickets(&TicketWallet::new()).unwrap();
}

#[test]
fn memory_store_shares_state_between_clones() {
    let key = IdentityKey::from_seed(&[9; 32]);
    let public = key.public_key();
    let mut pair = Pair::new(12);
    let (p, _g) = pair.full_handshake().unwrap();
    let mut a = MemoryKeyStore::provisioned(key, pair.anchors.clone());
    let b = a.clone();
    assert_eq!(b.public_key(), public);
    assert_eq!(b.peripheral_id(), PeripheralId::derive(&public));
    let id = p.ticket.id;
    let mut wallet = TicketWallet::new();
    wallet.on_established(None, p.ticket);
    a.save_tickets(&wallet).unwrap();
    assert!(b.has_ticket());
    let loaded = b.load_tickets().unwrap();
    assert_eq!(loaded.ticket(TicketSlot::Unconfirmed).unwrap().id, id);
    a.save_tickets(&TicketWallet::new()).unwrap();
    assert!(!b.has_ticket());
    assert_eq!(b.anchors().unwrap(), pair.anchors);
    assert!(!format!("{a:?}").contains("Identity"), "no key in Debug");
}
