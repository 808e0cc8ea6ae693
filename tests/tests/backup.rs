//! Backup and restore (backend/README.md, "Backup and restore"): a backup
//! taken while the backend serves and writes, restored elsewhere, has an
//! intact audit chain, and a device enrolled before the backup still
//! authenticates through its gateway against the restored backend. On
//! SQLite the backup holds the registry; on PostgreSQL `pg_dump` and
//! `pg_restore` carry it, as the README's procedure says.

use std::path::Path;
use std::process::Command;

use vouch_backend::backup::BackupDatabase;
use vouch_tests::{Backend, Db, Device, Gateway};

#[tokio::test]
async fn a_backup_taken_while_serving_restores_elsewhere_and_its_devices_still_authenticate() {
    backup_and_restore(Db::Sqlite).await;
}

#[tokio::test]
async fn on_postgres_the_files_backup_and_pg_dump_restore_elsewhere_and_devices_still_authenticate()
{
    let Some(db) = Db::postgres().await else {
        return;
    };
    backup_and_restore(db).await;
}

async fn backup_and_restore(db: Db) {
    let postgres = matches!(db, Db::Postgres(_));
    let backend = Backend::start_on(db).await;
    let mut gateway = Gateway::start(&backend, "plant-1").await;
    let device = Device::enroll(&backend, "meters").await;
    backend
        .allow("group:meters", "site:plant-1", "telemetry")
        .await;
    gateway.caught_up().await;
    let mut dev = device.run(&gateway).await;
    assert!(!dev.established().await, "a full handshake");
    dev.stop().await;

    let mut before = Vec::new();
    for _ in 0..10 {
        before.push(Device::enroll(&backend, "meters").await.id);
    }

    // The backup runs while the backend keeps writing: enrollments, each an
    // audit entry, go on beside it.
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("backup");
    let writes = async {
        for _ in 0..20 {
            Device::enroll(&backend, "meters").await;
        }
    };
    let ((), backup) = tokio::join!(writes, backend.backup(&dest));
    match (&backup.database, postgres) {
        (BackupDatabase::Sqlite { bytes }, false) => assert!(*bytes > 0),
        (BackupDatabase::Postgres, true) => {}
        (other, _) => panic!("unexpected database in the backup: {other:?}"),
    }
    let target = if postgres {
        let dump = dir.path().join("registry.dump");
        pg(
            "pg_dump",
            &["--format=custom", "--no-owner", "--file"],
            &dump,
            &backend.database_url(),
        );
        let Some(fresh) = Db::postgres().await else {
            unreachable!("DATABASE_URL was set a moment ago")
        };
        let Db::Postgres(url) = &fresh else {
            unreachable!()
        };
        pg("pg_restore", &["--no-owner", "--dbname", url], &dump, "");
        fresh
    } else {
        Db::Sqlite
    };

    // Elsewhere: a new directory (and, on PostgreSQL, a new database); the
    // restore verified the audit chain before serving.
    let (restored, report) = backend.restored(&dest, target).await;
    assert!(report.audit_entries > 10, "{report:?}");
    let (s, verdict) = restored.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(s, 200, "{verdict}");
    assert_eq!(verdict["result"], "intact", "{verdict}");
    for id in &before {
        let (s, v) = restored
            .admin("GET", &format!("/v1/admin/peripherals/{id}"), None)
            .await;
        assert_eq!(s, 200, "{id} enrolled before the backup is restored: {v}");
    }

    // The gateway keeps its identity and certificate (the CA is the
    // backup's); it lost its tickets with the restart, so the device makes a
    // full handshake, vouched for by the restored backend.
    gateway.move_to(&restored).await;
    let vouches = restored.vouch_audit_of_gateway(&gateway.key).await.len();
    let mut dev = device.run(&gateway).await;
    assert!(
        !dev.established().await,
        "a full handshake, not a resumption"
    );
    assert_eq!(
        restored.vouch_audit_of_gateway(&gateway.key).await.len(),
        vouches + 1,
        "the restored backend vouched"
    );
    dev.stop().await;
}

/// Runs `tool ARGS FILE [URL]` (pg_dump writes FILE from URL; pg_restore
/// reads FILE into the database its arguments name).
fn pg(tool: &str, args: &[&str], file: &Path, url: &str) {
    let mut cmd = Command::new(tool);
    cmd.args(args).arg(file);
    if !url.is_empty() {
        cmd.arg(url);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{tool} (PostgreSQL's client tools): {e}"));
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
