//! Upgrades (backend/README.md, "Upgrades"): the data directory an earlier
//! version left (`tests/fixtures/previous/`, made by
//! `tests/fixtures/make-previous.sh` from that version's binaries running
//! the README's walkthrough) is opened by this version: its migrations run,
//! the audit chain still verifies, the registry keeps every device's
//! status, the vouches written before the upgrade still count (their grants
//! are backfilled from the audit log), and the device and gateway enrolled
//! then authenticate with the keys and certificate they already hold.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vouch_peripheral::FileKeyStore;
use vouch_tests::{run_device, Backend, Db, Gateway};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/previous")
}

fn read(name: &str) -> String {
    let path = fixture().join(name);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A copy of a fixture directory with the modes a real one has (git keeps
/// only the executable bit): secrets 0600.
fn private_copy(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        fs::copy(entry.path(), &target).expect("copy");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

#[tokio::test]
async fn the_previous_versions_data_directory_upgrades_and_its_devices_still_authenticate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let old = tmp.path().join("backend");
    private_copy(&fixture().join("backend"), &old);

    // `restore` opens the registry, which applies this version's migrations,
    // and verifies the audit chain before anything serves.
    let (backend, restored) = Backend::from_backup(&old, Db::Sqlite, &read("admin-token")).await;
    assert!(restored.audit_entries >= 8, "{restored:?}");
    let (s, verdict) = backend.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(
        (s, &verdict["result"]),
        (200, &"intact".into()),
        "{verdict}"
    );

    for (file, status) in [
        ("peripheral-active", "active"),
        ("peripheral-suspended", "suspended"),
        ("peripheral-revoked", "revoked"),
    ] {
        let id = read(file);
        let (s, v) = backend
            .admin("GET", &format!("/v1/admin/peripherals/{id}"), None)
            .await;
        assert_eq!((s, &v["status"]), (200, &status.into()), "{file}: {v}");
    }

    // The grants of the vouches made before the upgrade were backfilled.
    use sqlx::Connection;
    let mut db = sqlx::AnyConnection::connect(&backend.database_url())
        .await
        .expect("open the registry");
    let grants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vouch_grants")
        .fetch_one(&mut db)
        .await
        .expect("count grants");
    db.close().await.expect("close");
    assert_eq!(grants, 3, "one grant per device that made a handshake");

    // The gateway and the device enrolled by the earlier version, with the
    // keys they hold: a full handshake (the device has no ticket), vouched
    // for by the upgraded backend.
    let gateway = Gateway::start_with_identity(
        &backend,
        &read("gateway/identity.pem"),
        &read("gateway/client.pem"),
    )
    .await;
    let before = backend.vouch_audit_of_gateway(&gateway.key).await.len();
    assert_eq!(before, 3, "the earlier version's vouches are in the log");
    let device_dir = tmp.path().join("peripheral");
    private_copy(&fixture().join("peripheral"), &device_dir);
    let store = FileKeyStore::open(&device_dir).expect("the device's key store");
    gateway.caught_up().await;
    let mut dev = run_device(&gateway.url(), store).await;
    assert!(!dev.established().await, "a full handshake");
    assert_eq!(
        backend.vouch_audit_of_gateway(&gateway.key).await.len(),
        before + 1
    );
    dev.stop().await;
}
