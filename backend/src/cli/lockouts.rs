//! `lockouts list`, `lockouts clear`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;
use vouch_backend::store::{now_ms, Rfc3339};
use vouch_proto::wire::backend::route;

use super::{api, open_target, output, remote, Cli, Target};

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
    let target = open_target(cli).await?;
    let done = lockouts_on(cli, &target, cmd).await;
    target.close().await;
    done.map(|()| ExitCode::SUCCESS)
}

async fn lockouts_on(cli: &Cli, target: &Target, cmd: &LockoutCmd) -> Result<()> {
    match cmd {
        LockoutCmd::List => {
            // (subject, until) as the admin API answers them.
            let listed: Vec<(String, i64)> = match target {
                Target::Local { store, .. } => {
                    store.active_lockouts(now_ms()).await.map_err(api)?
                }
                Target::Remote(admin) => match admin.get(route::admin::LOCKOUTS).await? {
                    Value::Array(items) => items
                        .iter()
                        .filter_map(|v| {
                            Some((v["subject"].as_str()?.to_owned(), v["until_ms"].as_i64()?))
                        })
                        .collect(),
                    _ => anyhow::bail!("the lockout list is not a list"),
                },
            };
            let items: Vec<Value> = listed
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
            })
        }
        LockoutCmd::Clear { subject } => {
            match target {
                Target::Local { store, actor } => {
                    store.clear_lockout(subject, actor).await.map_err(api)?;
                }
                Target::Remote(admin) => {
                    admin
                        .delete(&format!("/v1/admin/lockouts/{}", remote::enc(subject)))
                        .await?;
                }
            }
            output::record(cli.json, &serde_json::json!({ "cleared": subject }))
        }
    }
}
