//! `init`: create the data directory and the database.

use std::process::ExitCode;

use anyhow::Result;
use vouch_backend::datadir::{self, InitOutcome};

use super::{open_store, Cli};

/// Creates the backend's keys, CA, server certificate, admin token and
/// database (idempotent); prints the admin token once (with `--json`:
/// `{"data_dir", "created", "admin_token"}`, the token `null` when nothing
/// was created).
pub(super) async fn init(cli: &Cli, sans: &[String]) -> Result<ExitCode> {
    let outcome = datadir::init(&cli.data_dir, sans)?;
    let store = open_store(cli).await?;
    store.close().await;
    if cli.json {
        let token = match &outcome {
            InitOutcome::Created { admin_token } => Some(admin_token.as_str()),
            InitOutcome::AlreadyInitialized => None,
        };
        println!(
            "{}",
            serde_json::json!({
                "data_dir": cli.data_dir,
                "created": token.is_some(),
                "admin_token": token,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    match outcome {
        InitOutcome::Created { admin_token } => {
            println!("initialized {}", cli.data_dir.display());
            println!("admin token (shown once; store it in a secret manager):");
            println!("{}", admin_token.as_str());
        }
        InitOutcome::AlreadyInitialized => {
            println!(
                "{} is already initialized; nothing changed",
                cli.data_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
