//! Group commit (see the module doc of [`crate::vouch`]): a single writer
//! task makes every pending decision durable in one transaction.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use vouch_proto::keys::DhPublic;

use super::Reason;
use crate::audit::{Admit, RefusalTally};
use crate::store::{now_ms, Grant, NewAudit, Store, StoreError};

/// One decision to make durable.
pub(crate) struct JobItem {
    /// `e_P` to record, for a positive decision. If it is already recorded,
    /// the decision becomes a `replay` refusal.
    pub(crate) ephemeral: Option<DhPublic>,
    /// The audit entry.
    pub(crate) audit: NewAudit,
    /// What a vouch granted, recorded with its entry if the decision stands.
    pub(crate) grant: Option<Grant>,
}

struct Job {
    items: Vec<JobItem>,
    reply: oneshot::Sender<Result<Vec<bool>, ()>>,
}

/// The single writer of vouch decisions (group commit; see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Job>,
}

/// Most decisions in one group commit.
const MAX_GROUP: usize = 512;

impl Committer {
    /// Starts the writer task; it ends when every handle is dropped.
    pub(crate) fn spawn(
        store: Store,
        metrics: crate::metrics::Metrics,
        refusals: Arc<RefusalTally>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_committer(store, metrics, refusals, rx));
        Self { tx }
    }

    /// Commits `items`; returns, per item, whether it stands (`false`: its
    /// `e_P` was already recorded, so it is a replay).
    pub(crate) async fn commit(&self, items: Vec<JobItem>) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { items, reply })
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        rx.await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
            .map_err(|()| StoreError::Database(sqlx::Error::WorkerCrashed))
    }
}

async fn run_committer(
    store: Store,
    metrics: crate::metrics::Metrics,
    refusals: Arc<RefusalTally>,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut n = first.items.len();
        let mut jobs = vec![first];
        while n < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.items.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        metrics
            .commit_batch
            .with_label_values::<&str>(&[])
            .observe(n as f64);
        let started = Instant::now();
        match write_group(&store, &refusals, &mut jobs).await {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, decisions = n, "group commit failed; answering 503");
                for job in jobs {
                    let _ = job.reply.send(Err(()));
                }
            }
        }
        tracing::trace!(
            decisions = n,
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
    }
}

async fn write_group(
    store: &Store,
    refusals: &RefusalTally,
    jobs: &mut [Job],
) -> Result<Vec<Vec<bool>>, StoreError> {
    let now = now_ms();
    // Each e_P once; a second copy in the same group is a replay of the first.
    let mut unique = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in jobs.iter().flat_map(|j| j.items.iter()) {
        if let Some(e) = &item.ephemeral {
            if seen.insert(e.0) {
                unique.push(*e);
            }
        }
    }
    let mut tx = store.begin_write().await?;
    let fresh = if unique.is_empty() {
        Default::default()
    } else {
        tx.record_ephemerals(&unique, now).await?
    };
    let mut taken = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    let mut entries = Vec::new();
    // The grants of the vouches that stand, by the index of their entry.
    let mut grants = Vec::new();
    for job in jobs.iter_mut() {
        let mut flags = Vec::with_capacity(job.items.len());
        for item in job.items.iter_mut() {
            let stands = match &item.ephemeral {
                Some(e) => fresh.contains(&e.0) && taken.insert(e.0),
                None => true,
            };
            flags.push(stands);
            if !stands {
                // A replay caught here (the same hello in flight twice) is a
                // refusal like those caught before: counted if repeated.
                item.audit.outcome = "denied".into();
                item.audit.reason = Reason::Replay.code().into();
                item.audit.detail = String::new();
                if refusals.admit(&item.audit, now) == Admit::Counted {
                    continue;
                }
            }
            if let (true, Some(g)) = (stands, item.grant) {
                grants.push((entries.len(), g));
            }
            entries.push(item.audit.clone());
        }
        out.push(flags);
    }
    // The entries take consecutive sequence numbers, the last one `last`.
    let last = tx.audit_many(&entries, now).await?;
    let first = last - (entries.len() as i64 - 1);
    let grants: Vec<(i64, Grant)> = grants
        .into_iter()
        .map(|(i, g)| (first + i as i64, g))
        .collect();
    tx.record_grants(&grants, now).await?;
    tx.commit().await?;
    Ok(out)
}
