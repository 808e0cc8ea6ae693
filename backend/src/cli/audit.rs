//! `audit query`, `audit verify`, `audit prune`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::registry::audit_filter;
use vouch_backend::store::{
    now_ms, AuditEntry, AuditVerdict, CheckpointKey, Rfc3339, Store, MAX_PAGE,
};

use serde_json::Value;
use vouch_proto::wire::backend::route;

use super::{api, local_actor, open_target, output, remote, Cli, Target};

#[derive(Subcommand, Debug)]
pub(super) enum AuditCmd {
    /// Print entries (oldest first).
    Query {
        /// Only about this peripheral.
        #[arg(long)]
        peripheral: Option<String>,
        /// Only about this gateway.
        #[arg(long)]
        gateway: Option<String>,
        /// Only this action (vouch, peripheral_revoke, lockout, …).
        #[arg(long)]
        action: Option<String>,
        /// At or after (RFC 3339 or ms since the epoch).
        #[arg(long)]
        since: Option<String>,
        /// Before (RFC 3339 or ms since the epoch).
        #[arg(long)]
        until: Option<String>,
        /// After this sequence number (cursor).
        #[arg(long)]
        after: Option<i64>,
        /// Most entries to print (read page after page; when more remain,
        /// the cursor of the next page is printed on standard error, and
        /// with --json as `next_cursor`).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Recompute the hash chain (from the signed checkpoint if entries were
    /// pruned, checked with ca.pem); exit 1 and name the first broken link if
    /// it is broken.
    Verify,
    /// Delete the entries older than an age, keeping a checkpoint of the
    /// chain signed with the CA key (ca-key.pem), so that `audit verify`
    /// still proves the rest. Entries a live vouch still needs (the longest
    /// lifetime a policy grants, plus 120 s) are kept. Refuses if the
    /// entries to delete do not verify.
    Prune {
        /// Age, e.g. `90d`, `12h`, `3600s` (humantime).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
    },
}

/// Queries, verifies or prunes the audit log.
pub(super) async fn audit(cli: &Cli, cmd: &AuditCmd) -> Result<ExitCode> {
    let target = open_target(cli).await?;
    let done = audit_on(cli, &target, cmd).await;
    target.close().await;
    done
}

async fn audit_on(cli: &Cli, target: &Target, cmd: &AuditCmd) -> Result<ExitCode> {
    Ok(match cmd {
        AuditCmd::Query {
            peripheral,
            gateway,
            action,
            since,
            until,
            after,
            limit,
        } => {
            let filter = |after: Option<i64>, limit: u32| {
                audit_filter(
                    peripheral.clone(),
                    gateway.clone(),
                    action.clone(),
                    since.as_deref(),
                    until.as_deref(),
                    after,
                    limit,
                )
                .map_err(api)
            };
            // Bad filters are refused before anything is read.
            filter(*after, 1)?;
            let (items, next) = match target {
                Target::Local { store, .. } => {
                    let (items, next) = output::collect(
                        *limit,
                        MAX_PAGE,
                        *after,
                        |e: &AuditEntry| e.seq,
                        |after, limit| {
                            let f = filter(after, limit);
                            async move { store.audit_query(&f?).await.map_err(api) }
                        },
                    )
                    .await?;
                    (super::registry::values(&items)?, next)
                }
                Target::Remote(admin) => {
                    let q = [
                        ("peripheral", peripheral.clone()),
                        ("gateway", gateway.clone()),
                        ("action", action.clone()),
                        ("since", since.clone()),
                        ("until", until.clone()),
                    ];
                    output::collect(
                        *limit,
                        MAX_PAGE,
                        *after,
                        |e: &Value| e["seq"].as_i64().unwrap_or(i64::MAX),
                        |after, limit| {
                            let mut q = q.to_vec();
                            q.push(("after", after.map(|a| a.to_string())));
                            q.push(("limit", Some(limit.to_string())));
                            let path = format!("{}{}", route::admin::AUDIT, remote::query(&q));
                            async move {
                                match admin.get(&path).await?["items"].take() {
                                    Value::Array(items) => Ok(items),
                                    _ => anyhow::bail!("the audit answered a page without items"),
                                }
                            }
                        },
                    )
                    .await?
                }
            };
            output::page(
                cli.json,
                &items,
                next.map(|c| c.to_string()),
                &[
                    "seq",
                    "time",
                    "action",
                    "outcome",
                    "reason",
                    "actor",
                    "peripheral",
                    "gateway",
                    "detail",
                ],
                entry_row,
            )?;
            ExitCode::SUCCESS
        }
        AuditCmd::Verify => match target {
            Target::Local { store, .. } => verify(cli, store).await?,
            Target::Remote(admin) => {
                // The backend checks its chain with its own CA key; the
                // verdict is as trustworthy as that backend.
                let verdict = admin.get(route::admin::AUDIT_VERIFY).await?;
                output::record(cli.json, &verdict)?;
                if verdict["result"] == "intact" {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
        },
        AuditCmd::Prune { older_than } => match target {
            Target::Local { store, .. } => {
                prune(cli, store, *older_than).await?;
                ExitCode::SUCCESS
            }
            Target::Remote(_) => anyhow::bail!("audit prune works on the backend's host only"),
        },
    })
}

/// A table row of an audit entry, as the admin API writes it.
fn entry_row(e: &Value) -> Vec<String> {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    vec![
        e["seq"].to_string(),
        s("at"),
        s("action"),
        s("outcome"),
        output::cell(e["reason"].as_str()),
        s("actor"),
        output::cell(e["peripheral"].as_str()),
        output::cell(
            e["gateway"]
                .as_str()
                .map(|g| g.chars().take(16).collect::<String>())
                .as_deref(),
        ),
        s("detail"),
    ]
}

async fn verify(cli: &Cli, store: &Store) -> Result<ExitCode> {
    // The checkpoint is checked with the CA certificate of the data
    // directory, never with anything from the database.
    let ca = cli.data_dir.join(datadir::files::CA);
    let pem =
        std::fs::read_to_string(&ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let key = CheckpointKey::from_ca_cert(&pem)?;
    let verdict = store.audit_verify(&key).await.map_err(api)?;
    output::record(cli.json, &verdict)?;
    Ok(match verdict {
        AuditVerdict::Intact { .. } => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

async fn prune(cli: &Cli, store: &Store, older_than: std::time::Duration) -> Result<()> {
    let data = DataDir::load(&cli.data_dir)?;
    let key = CheckpointKey::from_ca(&data.ca)?;
    let (cutoff, raised) =
        vouch_backend::audit::prune_cutoff(store, older_than.as_secs(), now_ms())
            .await
            .map_err(api)?;
    if raised {
        eprintln!(
            "note: keeping the entries a live vouch may still need (the longest \
             lifetime a policy grants, plus 120 s)"
        );
    }
    let o = store.audit_prune(cutoff, &key, &local_actor()).await?;
    println!(
        "pruned {} entries written before {}; checkpoint at entry {}",
        o.pruned,
        Rfc3339(cutoff),
        o.checkpoint_seq
    );
    Ok(())
}
