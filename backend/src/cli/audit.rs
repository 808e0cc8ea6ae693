//! `audit query`, `audit verify`, `audit prune`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::registry::audit_filter;
use vouch_backend::store::{
    now_ms, AuditEntry, AuditVerdict, CheckpointKey, Rfc3339, Store, MAX_PAGE,
};

use super::{api, open_store, output, Cli, CLI_ACTOR};

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
    let store = open_store(cli).await?;
    let code = match cmd {
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
            let (items, next) = output::collect(
                *limit,
                MAX_PAGE,
                *after,
                |e: &AuditEntry| e.seq,
                |after, limit| {
                    let f = filter(after, limit);
                    let store = &store;
                    async move { store.audit_query(&f?).await.map_err(api) }
                },
            )
            .await?;
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
        AuditCmd::Verify => verify(cli, &store).await?,
        AuditCmd::Prune { older_than } => {
            prune(cli, &store, *older_than).await?;
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

/// One entry as a line of text.
/// One entry as a table row (the gateway key shortened to 16 digits).
fn entry_row(e: &AuditEntry) -> Vec<String> {
    vec![
        e.seq.to_string(),
        e.at.to_string(),
        e.action.clone(),
        e.outcome.clone(),
        output::cell(Some(&e.reason)),
        e.actor.clone(),
        output::cell(e.peripheral.as_deref()),
        output::cell(
            e.gateway
                .as_ref()
                .map(|g| g.chars().take(16).collect::<String>())
                .as_deref(),
        ),
        e.detail.clone(),
    ]
}

/// Recomputes the chain; exit 1 if it is broken.
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

/// Deletes the entries older than `older_than` behind a signed checkpoint.
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
    let o = store.audit_prune(cutoff, &key, CLI_ACTOR).await?;
    println!(
        "pruned {} entries written before {}; checkpoint at entry {}",
        o.pruned,
        Rfc3339(cutoff),
        o.checkpoint_seq
    );
    Ok(())
}
