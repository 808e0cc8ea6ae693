//! `lockouts list`, `lockouts clear`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use vouch_backend::store::{now_ms, Rfc3339};

use super::{api, open_store, output, Cli, CLI_ACTOR};

#[derive(Subcommand, Debug)]
pub(super) enum LockoutCmd {
    /// List lockouts in force.
    List,
    /// Lift one (`gateway:KEY` or `peripheral:ID`).
    Clear {
        /// The subject.
        subject: String,
    },
}

/// Lists or lifts lockouts.
pub(super) async fn lockouts(cli: &Cli, cmd: &LockoutCmd) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    match cmd {
        LockoutCmd::List => {
            let items: Vec<serde_json::Value> = store
                .active_lockouts(now_ms())
                .await
                .map_err(api)?
                .into_iter()
                .map(|(subject, until)| {
                    serde_json::json!({ "subject": subject, "until": Rfc3339(until).to_string() })
                })
                .collect();
            output::page(cli.json, &items, None, &["subject", "until"], |v| {
                vec![
                    v["subject"].as_str().unwrap_or("-").to_owned(),
                    v["until"].as_str().unwrap_or("-").to_owned(),
                ]
            })?;
        }
        LockoutCmd::Clear { subject } => {
            store.clear_lockout(subject, CLI_ACTOR).await.map_err(api)?;
            output::record(cli.json, &serde_json::json!({ "cleared": subject }))?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
