//! `lockouts list`, `lockouts clear`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use vouch_backend::store::{now_ms, Rfc3339};

use super::{api, open_store, Cli, CLI_ACTOR};

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
            for (s, until) in store.active_lockouts(now_ms()).await.map_err(api)? {
                println!("{s}  until {}", Rfc3339(until));
            }
        }
        LockoutCmd::Clear { subject } => {
            store.clear_lockout(subject, CLI_ACTOR).await.map_err(api)?;
            println!("cleared {subject}");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
