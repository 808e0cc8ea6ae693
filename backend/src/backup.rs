//! Online backup and restore of a data directory.
//!
//! A backup is itself a complete data directory: the key files, the CA, the
//! server certificate, the admin token hash and the configuration, copied
//! with their permission bits, plus (on SQLite) a consistent copy of the
//! registry made with `VACUUM INTO` while `serve` keeps running. Restoring
//! is copying it into place; [`restore`] does that and then proves the copy
//! sound: it opens the database (applying the migrations of this version, so
//! a backup from an older version is upgraded here, the same way `serve`
//! would upgrade it) and verifies the audit chain with the CA's checkpoint
//! key.
//!
//! Consistency. The database snapshot is one read transaction: every row of
//! it is from the same instant. The key files are read before and after the
//! snapshot and compared; a `keys rotate` that wrote them in between makes
//! the backup start again, so the files and the rows always agree (the
//! keyring table names the key files). On PostgreSQL the database is not in
//! the backup: `pg_dump` takes it (backend/README.md, "Backup and
//! restore"), and [`restore`] verifies the restored database against the
//! restored files.
//!
//! ```no_run
//! # async fn demo(store: &vouch_backend::store::Store) -> Result<(), vouch_backend::backup::BackupError> {
//! use std::path::Path;
//! let b = vouch_backend::backup::backup(Path::new("/var/lib/vouch-backend"), store,
//!     Path::new("/srv/backups/vouch-2026-12-07")).await?;
//! println!("{} files, database: {:?}", b.files.len(), b.database);
//! # Ok(()) }
//! ```

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use vouch_host::fs::{is_temporary, sync_dir, AtomicWrite, FsError};
use zeroize::Zeroizing;

use crate::datadir::{self, files, DataDir, DataDirError};
use crate::store::{AuditVerdict, CheckpointKey, CheckpointKeyError, Engine, Store, StoreError};

/// How many times the key files may change under a backup before it gives up.
const ATTEMPTS: usize = 3;

/// What went wrong with a backup or a restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The source is not an initialized data directory.
    #[error("{} is not an initialized data directory (no {})", .0.display(), files::TOKEN)]
    NotInitialized(PathBuf),
    /// The destination exists: a backup or a restore never writes over
    /// anything.
    #[error("{} already exists; a backup or restore never overwrites: choose a new path, or move it away", .0.display())]
    Exists(PathBuf),
    /// The destination is inside the directory being backed up.
    #[error("{} is inside the data directory {}; put backups elsewhere (the package makes /var/backups/vouch-backend)", dest.display(), data_dir.display())]
    Inside {
        /// The destination.
        dest: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The source holds something a data directory does not (a directory, a
    /// socket, a symlink): refusing to leave it out silently.
    #[error("{} is not a regular file; a data directory holds only files: move it out of the directory", .0.display())]
    Unexpected(PathBuf),
    /// A file or directory could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file could not be written atomically.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The restored directory does not load (a key file is missing or
    /// unreadable).
    #[error("the restored directory does not load: {0}")]
    DataDir(#[from] DataDirError),
    /// The database could not be copied, opened or read.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The CA certificate does not give the audit checkpoint key.
    #[error("the CA certificate: {0}")]
    CheckpointKey(#[from] CheckpointKeyError),
    /// The backup holds no registry and no database was named: its
    /// registry is in PostgreSQL.
    #[error("{} holds no registry (vouch.db): it is the backup of a PostgreSQL deployment; restore the database with pg_restore and pass --database-url", .0.display())]
    NoRegistry(PathBuf),
    /// The source looks like a live data directory: its SQLite write-ahead
    /// log holds commits the database file alone does not.
    #[error("{} has a non-empty write-ahead log (vouch.db-wal): it is a live data directory, not a backup; take one with `vouch-backend backup` and restore that", .0.display())]
    LiveDirectory(PathBuf),
    /// The database named for the restore holds no audit entry: it is not
    /// this backup's registry (a served one has at least the key ring's
    /// genesis).
    #[error("the database named for the restore of {} is empty: it is not this backup's registry (wrong --database-url, or pg_restore not run?)", .0.display())]
    EmptyRegistry(PathBuf),
    /// The key files kept changing during the backup.
    #[error("the key files changed during the backup {ATTEMPTS} times in a row (a key rotation running?); run it again")]
    Unstable,
    /// The restored audit chain does not verify.
    #[error("the restored audit chain is broken at entry {seq}: {problem} (checked in {}, removed: nothing was restored)", dir.display())]
    AuditBroken {
        /// The restored directory.
        dir: PathBuf,
        /// The first entry that does not check out.
        seq: i64,
        /// What is wrong with it.
        problem: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Where the registry of a backup is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "engine")]
pub enum BackupDatabase {
    /// In the backup, `vouch.db`, this many bytes.
    Sqlite {
        /// Size of the copy.
        bytes: u64,
    },
    /// PostgreSQL: not in the backup; `pg_dump` takes it.
    Postgres,
}

/// A finished backup.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    /// The backup directory.
    pub path: PathBuf,
    /// The files copied from the data directory (the database aside), by name.
    pub files: Vec<String>,
    /// The registry.
    pub database: BackupDatabase,
}

/// A finished restore.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The restored data directory.
    pub path: PathBuf,
    /// The files copied, by name.
    pub files: Vec<String>,
    /// Audit entries verified.
    pub audit_entries: i64,
    /// The audit chain's head hash (hex).
    pub audit_head: String,
}

/// One file of a data directory, read whole.
struct Snapshot {
    name: String,
    mode: u32,
    bytes: Zeroizing<Vec<u8>>,
}

/// Backs up the data directory `data_dir`, whose registry `store` serves,
/// into the new directory `dest` while the backend keeps serving. See the
/// [module docs](self).
pub async fn backup(data_dir: &Path, store: &Store, dest: &Path) -> Result<Backup, BackupError> {
    if !datadir::is_initialized(data_dir) {
        return Err(BackupError::NotInitialized(data_dir.to_owned()));
    }
    refuse_existing(dest)?;
    refuse_inside(data_dir, dest)?;
    let staging = staging_dir(dest)?;
    let result = fill_backup(data_dir, store, &staging).await;
    let result = match result {
        Ok(backup) => place(&staging, dest).map(|()| backup),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    let (files, database) = result?;
    Ok(Backup {
        path: dest.to_owned(),
        files,
        database,
    })
}

async fn fill_backup(
    data_dir: &Path,
    store: &Store,
    staging: &Path,
) -> Result<(Vec<String>, BackupDatabase), BackupError> {
    for _ in 0..ATTEMPTS {
        let before = read_files(data_dir)?;
        let database = match store.engine() {
            Engine::Sqlite => {
                let db = staging.join(files::DB);
                // A previous attempt's copy: VACUUM INTO refuses to overwrite.
                let _ = fs::remove_file(&db);
                store.snapshot_into(&db).await?;
                fs::set_permissions(&db, fs::Permissions::from_mode(0o600))
                    .map_err(io("setting the mode of", &db))?;
                fs::File::open(&db)
                    .and_then(|f| f.sync_all())
                    .map_err(io("syncing", &db))?;
                let bytes = fs::metadata(&db).map_err(io("reading", &db))?.len();
                BackupDatabase::Sqlite { bytes }
            }
            Engine::Postgres => BackupDatabase::Postgres,
        };
        let after = read_files(data_dir)?;
        if same(&before, &after) {
            write_files(staging, &after)?;
            return Ok((after.into_iter().map(|s| s.name).collect(), database));
        }
        tracing::warn!("the key files changed during the backup; starting again");
    }
    Err(BackupError::Unstable)
}

/// Restores the backup `from` into the new data directory `to`, then opens
/// its registry (the SQLite copy in it, or `database_url` where `pg_restore`
/// put the PostgreSQL dump), which applies this version's migrations, and
/// verifies the audit chain, all in a staging directory: only a restore
/// that verified takes the name `to`. A broken chain, an empty registry, a
/// backup without its registry, or a live data directory (a non-empty
/// write-ahead log) is an error, and nothing is left behind.
pub async fn restore(
    from: &Path,
    to: &Path,
    database_url: Option<&str>,
) -> Result<Restored, BackupError> {
    if !datadir::is_initialized(from) {
        return Err(BackupError::NotInitialized(from.to_owned()));
    }
    refuse_existing(to)?;
    let mut snapshot = read_files(from)?;
    let db = from.join(files::DB);
    let wal = from.join(format!("{}-wal", files::DB));
    if fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(BackupError::LiveDirectory(from.to_owned()));
    }
    match (database_url, db.exists()) {
        (None, false) => return Err(BackupError::NoRegistry(from.to_owned())),
        (None, true) => {
            let bytes = Zeroizing::new(fs::read(&db).map_err(io("reading", &db))?);
            snapshot.push(Snapshot {
                name: files::DB.to_owned(),
                mode: 0o600,
                bytes,
            });
        }
        (Some(_), _) => {}
    }
    // Everything is checked in the staging directory; only a restore that
    // verified takes the name `to`.
    let staging = staging_dir(to)?;
    let result = match write_files(&staging, &snapshot) {
        Ok(()) => verify(&staging, database_url).await,
        Err(e) => Err(e),
    };
    let (entries, head) = match result.and_then(|v| place(&staging, to).map(|()| v)) {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    Ok(Restored {
        path: to.to_owned(),
        files: snapshot.into_iter().map(|s| s.name).collect(),
        audit_entries: entries,
        audit_head: head,
    })
}

/// Opens the registry of the data directory `dir` (migrating it) and
/// verifies its audit chain; returns the entries and the head.
async fn verify(dir: &Path, database_url: Option<&str>) -> Result<(i64, String), BackupError> {
    let data = DataDir::load(dir)?;
    let url = database_url.map_or_else(|| data.sqlite_url(), str::to_owned);
    let store = Store::open(&url).await?;
    let key = CheckpointKey::from_ca_cert(&data.ca.cert_pem)?;
    let verdict = store.audit_verify(&key).await;
    store.close().await;
    match verdict? {
        // The backup's own SQLite file may be empty (taken before the first
        // `serve`); a database named apart from it is another matter.
        AuditVerdict::Intact { entries, .. } if entries == 0 && database_url.is_some() => {
            Err(BackupError::EmptyRegistry(dir.to_owned()))
        }
        AuditVerdict::Intact { entries, head, .. } => Ok((entries, head)),
        AuditVerdict::Broken { seq, problem } => Err(BackupError::AuditBroken {
            dir: dir.to_owned(),
            seq,
            problem,
        }),
    }
}

fn refuse_existing(path: &Path) -> Result<(), BackupError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(BackupError::Exists(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("checking", path)(e)),
    }
}

/// Refuses a destination inside the data directory: the backup would
/// copy itself, and the directory would hold what it must not.
fn refuse_inside(data_dir: &Path, dest: &Path) -> Result<(), BackupError> {
    let data = fs::canonicalize(data_dir).map_err(io("resolving", data_dir))?;
    let parent = parent_of(dest);
    let parent = fs::canonicalize(parent).map_err(io("resolving", parent))?;
    if parent.starts_with(&data) {
        return Err(BackupError::Inside {
            dest: dest.to_owned(),
            data_dir: data_dir.to_owned(),
        });
    }
    Ok(())
}

/// A private directory beside `dest` to fill before it takes `dest`'s name.
fn staging_dir(dest: &Path) -> Result<PathBuf, BackupError> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".to_owned());
    let parent = parent_of(dest);
    let prefix = format!(".{name}.partial-");
    remove_abandoned(parent, &prefix);
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io("creating", &staging))?;
    Ok(staging)
}

/// Removes the staging directories `PREFIX<pid>` in `parent` whose process
/// is gone (killed before it could clean up): they hold copies of the
/// private keys. One whose process still runs (`/proc/<pid>`) is left alone.
fn remove_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(dir = %entry.path().display(), "removed the staging directory of a backup or restore that was killed")
            }
            Err(e) => {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove the staging directory of a killed backup or restore")
            }
        }
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Gives the filled staging directory its final name, durably.
fn place(staging: &Path, dest: &Path) -> Result<(), BackupError> {
    sync_dir(staging)?;
    // Checked again right before the rename, which would replace an empty
    // directory made there in the meantime.
    refuse_existing(dest)?;
    fs::rename(staging, dest).map_err(io("renaming into", dest))?;
    sync_dir(parent_of(dest))?;
    Ok(())
}

/// Every file of a data directory but the database, sorted by name.
fn read_files(dir: &Path) -> Result<Vec<Snapshot>, BackupError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temporary(&name) || is_database(&name) {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if !meta.is_file() {
            return Err(BackupError::Unexpected(path));
        }
        let bytes = Zeroizing::new(fs::read(&path).map_err(io("reading", &path))?);
        out.push(Snapshot {
            name,
            mode: meta.permissions().mode() & 0o777,
            bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The SQLite database and its write-ahead log and shared-memory files.
fn is_database(name: &str) -> bool {
    name.strip_prefix(files::DB)
        .is_some_and(|rest| matches!(rest, "" | "-wal" | "-shm" | "-journal"))
}

fn same(a: &[Snapshot], b: &[Snapshot]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.mode == y.mode && *x.bytes == *y.bytes)
}

fn write_files(dir: &Path, snapshot: &[Snapshot]) -> Result<(), BackupError> {
    for file in snapshot {
        AtomicWrite::new(file.mode)
            .never_replace()
            .defer_dir_sync()
            .write(dir, &file.name, &file.bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_files_are_recognised_and_nothing_else() {
        for name in [
            "vouch.db",
            "vouch.db-wal",
            "vouch.db-shm",
            "vouch.db-journal",
        ] {
            assert!(is_database(name), "{name}");
        }
        for name in ["vouch.db.bak", "vouch.dbx", "config.toml", "ca.pem"] {
            assert!(!is_database(name), "{name}");
        }
    }

    #[tokio::test]
    async fn a_backup_never_overwrites_and_refuses_what_it_would_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        datadir::init(&data, &[]).unwrap();
        let store = Store::open(&datadir::sqlite_url(&data)).await.unwrap();

        let existing = dir.path().join("existing");
        fs::create_dir(&existing).unwrap();
        assert!(matches!(
            backup(&data, &store, &existing).await,
            Err(BackupError::Exists(_))
        ));

        fs::create_dir(data.join("stray")).unwrap();
        let dest = dir.path().join("b1");
        assert!(matches!(
            backup(&data, &store, &dest).await,
            Err(BackupError::Unexpected(p)) if p.ends_with("stray")
        ));
        assert!(!dest.exists(), "a failed backup leaves nothing behind");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");

        fs::remove_dir(data.join("stray")).unwrap();
        let b = backup(&data, &store, &dest).await.unwrap();
        assert!(matches!(b.database, BackupDatabase::Sqlite { bytes } if bytes > 0));
        for name in files::FIXED {
            let mode = fs::metadata(dest.join(name)).unwrap().permissions().mode() & 0o777;
            let orig = fs::metadata(data.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, orig, "{name}");
        }
        let db_mode = fs::metadata(dest.join(files::DB))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(db_mode, 0o600);
        let dir_mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        store.close().await;

        // A backup restores; the restore leaves nothing behind when it refuses.
        let restored = dir.path().join("r1");
        restore(&dest, &restored, None).await.unwrap();
        assert!(restored.join(files::CA_KEY).exists());
        let pg_style = dir.path().join("pg-style");
        fs::create_dir(&pg_style).unwrap();
        for f in files::FIXED.iter().chain(&[files::SIGNING, files::SEALING]) {
            fs::copy(dest.join(f), pg_style.join(f)).unwrap();
        }
        let to = dir.path().join("r2");
        assert!(matches!(
            restore(&pg_style, &to, None).await,
            Err(BackupError::NoRegistry(_))
        ));
        fs::write(data.join("vouch.db-wal"), b"not empty").unwrap();
        assert!(matches!(
            restore(&data, &to, None).await,
            Err(BackupError::LiveDirectory(_))
        ));
        assert!(!to.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// A backup killed mid-way leaves its staging directory (with copies of
    /// the keys); the next one to the same name removes it, unless its
    /// process still runs.
    #[test]
    fn a_killed_backups_staging_directory_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("nightly");
        // Beyond any pid_max (at most 2^22): no such process.
        let dead = dir.path().join(".nightly.partial-4294967290");
        let live = dir.path().join(".nightly.partial-1");
        let other = dir.path().join(".weekly.partial-4294967290");
        for d in [&dead, &live, &other] {
            fs::create_dir(d).unwrap();
            fs::write(d.join(files::CA_KEY), b"key").unwrap();
        }
        let staging = staging_dir(&dest).unwrap();
        assert!(
            !dead.exists(),
            "the killed backup's copy of the keys is gone"
        );
        assert!(live.exists() && other.exists());
        assert!(staging.exists());
    }
}
