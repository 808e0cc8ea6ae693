//! `audit query`, `audit verify`, `audit prune`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::registry::audit_filter;
use vouch_backend::store::{now_ms, AuditEntry, AuditVerdict, CheckpointKey, Rfc3339, Store};

use super::{api, open_store, Cli, CLI_ACTOR};

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
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
            json,
        } => {
            let f = audit_filter(
                peripheral.clone(),
                gateway.clone(),
                action.clone(),
                since.as_deref(),
                until.as_deref(),
                *after,
                *limit,
            )
            .map_err(api)?;
            let items = store.audit_query(&f).await.map_err(api)?;
            for e in &items {
                if *json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    print_entry(e);
                }
            }
            if items.len() == *limit as usize {
                if let Some(last) = items.last() {
                    eprintln!("next page: --after {}", last.seq);
                }
            }
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
fn print_entry(e: &AuditEntry) {
    println!(
        "{:>8}  {}  {:<18} {:<8} {:<22} {:<26} peripheral={} gateway={} {}",
        e.seq,
        e.at,
        e.action,
        e.outcome,
        e.reason,
        e.actor.chars().take(26).collect::<String>(),
        e.peripheral.as_deref().unwrap_or("-"),
        e.gateway
            .as_deref()
            .map(|g| &g[..g.len().min(16)])
            .unwrap_or("-"),
        e.detail
    );
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
    println!("{}", serde_json::to_string(&verdict)?);
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
