//! `backup`, `restore`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vouch_backend::backup::{self, BackupDatabase};

use super::{open_store, Cli};

/// Long help of `backup`.
pub(super) const BACKUP_HELP: &str = "Copy the data directory into the new directory TO while the \
backend keeps serving: the keys, the CA, the server certificate, the admin token hash and the \
configuration with their permissions, and, on SQLite, a consistent copy of the registry (VACUUM \
INTO: one read transaction). The backup is itself a data directory; bring it back with `restore`.\n\n\
On PostgreSQL the registry is not in the backup: take it with `pg_dump --format=custom` right after \
(backend/README.md, \"Backup and restore\").";

/// Long help of `restore`.
pub(super) const RESTORE_HELP: &str = "Copy the backup FROM into the new data directory \
--data-dir, open its registry (applying this version's migrations, as `serve` would), and verify \
the audit chain against the restored CA, all before the directory takes its name. Exit 1 if the \
chain is broken or the registry is empty (nothing is left behind). With --database-url, the registry is the PostgreSQL database `pg_restore` \
filled, and only the files are copied.";

/// `backup`.
#[derive(Args, Debug)]
pub(super) struct BackupArgs {
    /// The new backup directory (must not exist).
    #[arg(long)]
    to: PathBuf,
}

/// `restore`.
#[derive(Args, Debug)]
pub(super) struct RestoreArgs {
    /// The backup directory (`vouch-backend backup --to`).
    #[arg(long)]
    from: PathBuf,
}

/// Backs the data directory up while `serve` may be running.
pub(super) async fn backup(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    let result = backup::backup(&cli.data_dir, &store, &args.to).await;
    store.close().await;
    let b = result?;
    if cli.json {
        println!("{}", serde_json::to_string(&b)?);
        return Ok(ExitCode::SUCCESS);
    }
    match b.database {
        BackupDatabase::Sqlite { bytes } => println!(
            "backed up {} to {}: {} files and the registry ({bytes} bytes)",
            cli.data_dir.display(),
            b.path.display(),
            b.files.len()
        ),
        BackupDatabase::Postgres => {
            println!(
                "backed up {} to {}: {} files",
                cli.data_dir.display(),
                b.path.display(),
                b.files.len()
            );
            println!(
                "the registry is in PostgreSQL and not in this backup: \
                 pg_dump --format=custom --file=FILE DATABASE_URL (backend/README.md)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Restores a backup into a new data directory and verifies it.
pub(super) async fn restore(cli: &Cli, args: &RestoreArgs) -> Result<ExitCode> {
    match backup::restore(&args.from, &cli.data_dir, cli.database_url.as_deref()).await {
        Ok(r) if cli.json => println!("{}", serde_json::to_string(&r)?),
        Ok(r) => println!(
            "restored {} into {}: {} files; audit chain intact ({} entries, head {})",
            args.from.display(),
            r.path.display(),
            r.files.len(),
            r.audit_entries,
            r.audit_head
        ),
        Err(
            e @ (backup::BackupError::AuditBroken { .. } | backup::BackupError::EmptyRegistry(_)),
        ) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}
