//! Group commit (see the module doc of [`crate::vouch`]): a single writer
//! task makes every pending vouch decision and session report durable in
//! one transaction.
//!
//! If a group's transaction fails while it holds session reports, its
//! parts are tried again on their own (the vouch decisions in one
//! transaction, each report in its own), so that one report that cannot be
//! written costs only its own answer (503, and the gateway retries it), not
//! those of the vouches and reports that happened to share its group.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use vouch_proto::keys::DhPublic;

use super::sessions::{judge, Judged, ReportJob};
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

/// What became of a decision at its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It stands as decided (a vouch's `e_P` recorded for the first time).
    Stands,
    /// Its `e_P` was already recorded: a replay.
    Replay,
    /// A vouch whose peripheral, gateway or policy changed after the reads
    /// it was decided on (an event in the log after its `registry_seq`): it
    /// is not given, and its `e_P` is not recorded (no vouch was given for
    /// it).
    Changed,
}

/// Vouch decisions to commit, and where their fate goes.
struct VouchJob {
    items: Vec<JobItem>,
    /// The event log's head when the registry was read for these decisions;
    /// `None` for entries decided on no registry read (they hold no grant).
    registry_seq: Option<i64>,
    reply: oneshot::Sender<Result<Vec<Fate>, ()>>,
}

/// A session report to judge and commit, where its verdicts go, and its
/// room in the writer's backlog (given back when the job is dropped).
struct ReportReply {
    job: ReportJob,
    reply: oneshot::Sender<Result<Judged, ()>>,
    _slot: ReportSlot,
}

/// Room for one session report's events in the writer's backlog
/// ([`Committer::reserve_report`]): given back when dropped.
pub(crate) struct ReportSlot {
    committer: Committer,
    events: usize,
}

impl ReportSlot {
    /// Judges and records the session report `job` in the next group
    /// commit; returns once its transaction has committed.
    pub(crate) async fn report(self, job: ReportJob) -> Result<Judged, StoreError> {
        let (reply, rx) = oneshot::channel();
        let committer = self.committer.clone();
        let job = Job::Report(Box::new(ReportReply {
            job,
            reply,
            _slot: self,
        }));
        committer.send(job, rx).await
    }
}

impl Drop for ReportSlot {
    fn drop(&mut self) {
        self.committer
            .queued_events
            .fetch_sub(self.events, Ordering::SeqCst);
    }
}

enum Job {
    Vouches(VouchJob),
    Report(Box<ReportReply>),
}

impl Job {
    /// Decisions or reported events it holds.
    fn size(&self) -> usize {
        match self {
            Job::Vouches(v) => v.items.len(),
            Job::Report(r) => r.job.events(),
        }
    }
}

/// The group's outcome: the vouch jobs' fates, the reports' judgments.
type Outcome = (Vec<Vec<Fate>>, Vec<Judged>);

/// The single writer of vouch decisions and session reports (group commit;
/// see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Job>,
    /// Reported events queued for the writer or in its group: the session
    /// reports' backlog.
    queued_events: Arc<AtomicUsize>,
}

/// Most decisions (and reported events) in one group commit.
const MAX_GROUP: usize = 512;

/// The most reported events the writer may have waiting before new session
/// reports are shed (503 `overloaded`; gateways retry them with backoff):
/// a second or two of the writer's work. Without a bound, a fleet's reconnect
/// storm queued reports faster than the one writer judges them, the
/// gateways' requests timed out while they waited, were retried, and the
/// writer judged reports nobody waited for any more (a million devices on
/// 10,000 gateways: 20,000 reports of up to 256 events in flight for
/// minutes).
pub(crate) const MAX_QUEUED_REPORT_EVENTS: usize = 8_192;

impl Committer {
    /// Starts the writer task; it ends when every handle is dropped.
    pub(crate) fn spawn(
        store: Store,
        metrics: crate::metrics::Metrics,
        refusals: Arc<RefusalTally>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_committer(store, metrics, refusals, rx));
        Self {
            tx,
            queued_events: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Takes room for a session report of `events` events in the writer's
    /// backlog; `None` when it would go past [`MAX_QUEUED_REPORT_EVENTS`]
    /// (a report alone is always taken). The room is given back when the
    /// report's group is done, or when the slot is dropped unused.
    pub(crate) fn reserve_report(&self, events: usize) -> Option<ReportSlot> {
        let before = self.queued_events.fetch_add(events, Ordering::SeqCst);
        let slot = ReportSlot {
            committer: self.clone(),
            events,
        };
        // Dropped at once when refused: the room goes back.
        (before == 0 || before + events <= MAX_QUEUED_REPORT_EVENTS).then_some(slot)
    }

    /// Commits `items`, decided on the registry as it stood at the event
    /// log's `registry_seq` (read before the registry; `None` for audit
    /// entries decided on no registry read: a grant among them then never
    /// stands); returns each item's [`Fate`].
    pub(crate) async fn commit(
        &self,
        items: Vec<JobItem>,
        registry_seq: Option<i64>,
    ) -> Result<Vec<Fate>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.send(
            Job::Vouches(VouchJob {
                items,
                registry_seq,
                reply,
            }),
            rx,
        )
        .await
    }

    async fn send<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T, ()>>,
    ) -> Result<T, StoreError> {
        self.tx
            .send(job)
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
        let mut n = first.size();
        let mut jobs = vec![first];
        while n < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.size();
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
        let mut vouches = Vec::new();
        let mut reports = Vec::new();
        for job in jobs {
            match job {
                Job::Vouches(v) => vouches.push(v),
                Job::Report(r) => {
                    // Its request is gone (timed out, or its gateway hung
                    // up): the gateway sends these events again, and
                    // judging them now would be work nobody waits for.
                    // Vouch decisions are always written: a refusal's
                    // audit entry is kept whoever waits for it.
                    if !r.reply.is_closed() {
                        reports.push(*r);
                    }
                }
            }
        }
        let report_jobs: Vec<&ReportJob> = reports.iter().map(|r| &r.job).collect();
        match write_group(&store, &refusals, &mut vouches, &report_jobs).await {
            Ok((flags, judged)) => answer(vouches, flags, reports, judged),
            Err(e) if reports.is_empty() || vouches.len() + reports.len() == 1 => {
                tracing::error!(error = %e, decisions = n, "group commit failed; answering 503");
                fail(vouches, reports);
            }
            Err(e) => {
                tracing::warn!(error = %e, decisions = n,
                    "group commit failed; trying its vouch decisions and each session report on their own");
                retry_apart(&store, &refusals, vouches, reports).await;
            }
        }
        tracing::trace!(
            decisions = n,
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
    }
}

/// Sends each job its outcome.
fn answer(
    vouches: Vec<VouchJob>,
    flags: Vec<Vec<Fate>>,
    reports: Vec<ReportReply>,
    judged: Vec<Judged>,
) {
    for (job, r) in vouches.into_iter().zip(flags) {
        let _ = job.reply.send(Ok(r));
    }
    for (job, j) in reports.into_iter().zip(judged) {
        let _ = job.reply.send(Ok(j));
    }
}

/// Tells each job that its group did not commit (answered 503).
fn fail(vouches: Vec<VouchJob>, reports: Vec<ReportReply>) {
    for job in vouches {
        let _ = job.reply.send(Err(()));
    }
    for job in reports {
        let _ = job.reply.send(Err(()));
    }
}

/// A failed group, again in parts: the vouch decisions together, each
/// report alone.
async fn retry_apart(
    store: &Store,
    refusals: &RefusalTally,
    mut vouches: Vec<VouchJob>,
    reports: Vec<ReportReply>,
) {
    if !vouches.is_empty() {
        match write_group(store, refusals, &mut vouches, &[]).await {
            Ok((flags, _)) => answer(vouches, flags, Vec::new(), Vec::new()),
            Err(e) => {
                tracing::error!(error = %e, "vouch decisions not committed; answering 503");
                fail(vouches, Vec::new());
            }
        }
    }
    for report in reports {
        match write_group(store, refusals, &mut [], &[&report.job]).await {
            Ok((_, judged)) => answer(Vec::new(), Vec::new(), vec![report], judged),
            Err(e) => {
                tracing::error!(error = %e, "session report not committed; answering 503");
                fail(Vec::new(), vec![report]);
            }
        }
    }
}

/// One transaction: the vouch decisions of `jobs`, then the session
/// reports of `reports`, one after another; committed once.
async fn write_group(
    store: &Store,
    refusals: &RefusalTally,
    jobs: &mut [VouchJob],
    reports: &[&ReportJob],
) -> Result<Outcome, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write().await?;
    // The registry's changes since the oldest reads a grant here was decided
    // on. The write lock is held: a change committed before it is in the
    // log, and one committed after sees the grant (the feed's wake-up of
    // the gateway holding it).
    let since = jobs
        .iter()
        .filter(|j| j.items.iter().any(|i| i.grant.is_some()))
        .filter_map(|j| j.registry_seq)
        .min();
    let changes = match since {
        Some(seq) => tx.registry_changes(seq).await?,
        None => Default::default(),
    };
    let changed: Vec<Vec<bool>> = jobs
        .iter()
        .map(|j| {
            j.items
                .iter()
                .map(|i| {
                    i.grant.as_ref().is_some_and(|g| match j.registry_seq {
                        Some(seq) => changes.overtake(g, seq),
                        // A grant decided on no registry read: never given.
                        None => true,
                    })
                })
                .collect()
        })
        .collect();
    // Each e_P once; a second copy in the same group is a replay of the
    // first. A changed decision's is not recorded.
    let mut unique = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (job, changed) in jobs.iter().zip(&changed) {
        for (item, &changed) in job.items.iter().zip(changed) {
            if let (Some(e), false) = (&item.ephemeral, changed) {
                if seen.insert(e.0) {
                    unique.push(*e);
                }
            }
        }
    }
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
    for (job, changed) in jobs.iter_mut().zip(&changed) {
        let mut fates = Vec::with_capacity(job.items.len());
        for (item, &changed) in job.items.iter_mut().zip(changed) {
            let fate = match &item.ephemeral {
                _ if changed => Fate::Changed,
                Some(e) if !(fresh.contains(&e.0) && taken.insert(e.0)) => Fate::Replay,
                _ => Fate::Stands,
            };
            fates.push(fate);
            if fate != Fate::Stands {
                // A replay caught here (the same hello in flight twice), or
                // a decision the registry overtook, is a refusal like those
                // caught before: counted if repeated.
                let reason = match fate {
                    Fate::Changed => Reason::RegistryChanged,
                    _ => Reason::Replay,
                };
                item.audit.outcome = reason.outcome().into();
                item.audit.reason = reason.code().into();
                item.audit.detail = String::new();
                if refusals.admit(&item.audit, now) == Admit::Counted {
                    continue;
                }
            }
            if let (Fate::Stands, Some(g)) = (fate, item.grant) {
                grants.push((entries.len(), g));
            }
            entries.push(item.audit.clone());
        }
        out.push(fates);
    }
    if !entries.is_empty() {
        // The entries take consecutive sequence numbers, the last one `last`.
        let last = tx.audit_many(&entries, now).await?;
        let first = last - (entries.len() as i64 - 1);
        let grants: Vec<(i64, Grant)> = grants
            .into_iter()
            .map(|(i, g)| (first + i as i64, g))
            .collect();
        tx.record_grants(&grants, now).await?;
    }
    let mut judged = Vec::with_capacity(reports.len());
    let mut report_entries = Vec::new();
    for report in reports {
        let mut j = judge(&mut tx, report).await?;
        report_entries.append(&mut j.entries);
        judged.push(j);
    }
    if !report_entries.is_empty() {
        // The reports' entries, in the order they were judged, timed like
        // the vouch decisions' by the group.
        tx.audit_many(&report_entries, now).await?;
    }
    tx.commit().await?;
    Ok((out, judged))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vouch_proto::keys::{IdentityKey, KeyId, PeripheralId, PublicKey};
    use vouch_proto::wire::Lifetimes;

    use super::*;
    use crate::model::{Status, Transition};
    use crate::store::{NewGateway, NewPeripheral};

    async fn enroll_gateway(store: &Store, seed: u8) -> PublicKey {
        let key = IdentityKey::from_seed(&[seed; 32]).public_key();
        let new = NewGateway {
            public_key: key,
            name: None,
            group: None,
            site: None,
        };
        store.enroll_gateway(&new, "test").await.expect("gateway");
        key
    }

    async fn enroll_peripherals(store: &Store, seeds: std::ops::Range<u8>) -> Vec<PeripheralId> {
        let mut p = Vec::new();
        for seed in seeds {
            let key = IdentityKey::from_seed(&[seed; 32]).public_key();
            let new = NewPeripheral {
                id: PeripheralId::derive(&key),
                public_key: key,
                group: None,
                attributes: BTreeMap::new(),
                status: Status::Active,
            };
            store
                .enroll_peripheral(&new, "test")
                .await
                .expect("peripheral");
            p.push(new.id);
        }
        p
    }

    fn vouch(e: u8, peripheral: PeripheralId, gateway: PublicKey) -> JobItem {
        JobItem {
            ephemeral: Some(DhPublic([e; 32])),
            audit: NewAudit::new("vouch", "vouched", "test")
                .peripheral(&peripheral.to_string())
                .gateway(&gateway.to_string()),
            grant: Some(Grant {
                peripheral,
                gateway,
                lifetimes: Lifetimes {
                    session_s: 60,
                    resumption_s: 60,
                },
                kid: KeyId(1),
            }),
        }
    }

    /// A vouch decided on registry reads made before its peripheral was
    /// revoked, its gateway suspended or the policy changed, and committed
    /// after that change, is not given: the gap between the decision's
    /// reads and its commit (the group commit waits for the writer) would
    /// otherwise let a revocation miss a handshake already in flight at
    /// the backend. Its `e_P` is not recorded (the same hello decided
    /// afresh is not a replay); vouches the change does not concern stand.
    #[tokio::test]
    async fn a_vouch_whose_registry_changed_before_its_commit_is_not_given() {
        let store = Store::open_in_memory().await.expect("store");
        let (gw, gw2) = (
            enroll_gateway(&store, 1).await,
            enroll_gateway(&store, 2).await,
        );
        let p = enroll_peripherals(&store, 10..14).await;
        let committer = Committer::spawn(
            store.clone(),
            crate::metrics::Metrics::new(),
            Arc::new(RefusalTally::new(64, 1_000)),
        );
        let head = || async { store.last_event_seq().await.expect("head") };

        // The decision's reads see the head where the vouch path reads it
        // (an event first, so that it is not 0).
        store
            .transition_peripheral(&p[3], Transition::Suspend, "test")
            .await
            .expect("suspend");
        let read = head().await;
        assert_ne!(read, 0);
        let mut reader = store.reader().await.expect("reader");
        let before = reader.before_crypto(&gw, &[]).await.expect("read");
        drop(reader);
        assert_eq!(before.registry_seq, read);

        // p0 revoked after the reads: its vouch does not stand, p1's does.
        store
            .transition_peripheral(&p[0], Transition::Revoke, "test")
            .await
            .expect("revoke");
        let fates = committer
            .commit(vec![vouch(1, p[0], gw), vouch(2, p[1], gw)], Some(read))
            .await
            .expect("commit");
        assert_eq!(fates, [Fate::Changed, Fate::Stands]);
        assert!(store.last_grant(&p[0], &gw).await.expect("grant").is_none());
        assert!(store.last_grant(&p[1], &gw).await.expect("grant").is_some());
        // Its e_P was not recorded: the same hello, decided after the
        // change, is not a replay.
        let fates = committer
            .commit(vec![vouch(1, p[2], gw)], Some(head().await))
            .await
            .expect("commit");
        assert_eq!(fates, [Fate::Stands]);

        // The gateway suspended after the reads.
        let read = head().await;
        store
            .transition_gateway(&gw2, Transition::Suspend, "test")
            .await
            .expect("suspend");
        let fates = committer
            .commit(vec![vouch(3, p[1], gw2), vouch(4, p[2], gw)], Some(read))
            .await
            .expect("commit");
        assert_eq!(fates, [Fate::Changed, Fate::Stands]);

        // The policy changed after the reads: every vouch decided before
        // it; an entry without a grant stands.
        let read = head().await;
        let mut tx = store.begin_write().await.expect("begin");
        tx.event("policy_changed", "", now_ms())
            .await
            .expect("event");
        tx.commit().await.expect("commit");
        let refusal = JobItem {
            ephemeral: None,
            audit: NewAudit::new("vouch", "denied", "test").reason("policy_denied"),
            grant: None,
        };
        let fates = committer
            .commit(vec![vouch(5, p[1], gw), refusal], Some(read))
            .await
            .expect("commit");
        assert_eq!(fates, [Fate::Changed, Fate::Stands]);
        // Decided after it: stands.
        let fates = committer
            .commit(vec![vouch(6, p[1], gw)], Some(head().await))
            .await
            .expect("commit");
        assert_eq!(fates, [Fate::Stands]);
    }

    /// Jobs of one group decided at different heads: each is checked
    /// against the events after its own head (the group reads the log
    /// from the oldest), and an `e_P` two of them carry goes to the one
    /// that stands, in either order.
    #[tokio::test]
    async fn each_job_of_a_group_is_checked_against_its_own_head() {
        let store = Store::open_in_memory().await.expect("store");
        let gw = enroll_gateway(&store, 1).await;
        let p = enroll_peripherals(&store, 10..13).await;
        store
            .transition_peripheral(&p[2], Transition::Suspend, "test")
            .await
            .expect("suspend");
        let old = store.last_event_seq().await.expect("head");
        store
            .transition_peripheral(&p[0], Transition::Revoke, "test")
            .await
            .expect("revoke");
        let new = store.last_event_seq().await.expect("head");
        let refusals = RefusalTally::new(64, 1_000);
        let job = |items: Vec<JobItem>, seq: i64| VouchJob {
            items,
            registry_seq: Some(seq),
            reply: oneshot::channel().0,
        };
        // The newer job first: reading from the newest head would miss the
        // revocation for the older one.
        let mut jobs = vec![
            job(vec![vouch(30, p[0], gw), vouch(31, p[1], gw)], new),
            job(vec![vouch(32, p[0], gw), vouch(30, p[1], gw)], old),
        ];
        let (fates, _) = write_group(&store, &refusals, &mut jobs, &[])
            .await
            .expect("group");
        assert_eq!(
            fates,
            [[Fate::Stands, Fate::Stands], [Fate::Changed, Fate::Replay]]
        );
        // The overtaken one first: the shared e_P goes to the later job.
        let mut jobs = vec![
            job(vec![vouch(40, p[0], gw)], old),
            job(vec![vouch(40, p[1], gw)], new),
        ];
        let (fates, _) = write_group(&store, &refusals, &mut jobs, &[])
            .await
            .expect("group");
        assert_eq!(fates, [[Fate::Changed], [Fate::Stands]]);
    }

    /// Vouches read, decided and committed as the vouch path does, with a
    /// wait for the writer between, while the operator revokes their
    /// peripherals: in the audit chain no `vouched` entry for a peripheral
    /// comes after its revocation. Returns how many did (0 expected).
    async fn vouches_racing_revocations(store: Store) -> usize {
        use std::sync::atomic::AtomicBool;
        let gw = enroll_gateway(&store, 1).await;
        let p = Arc::new(enroll_peripherals(&store, 100..160).await);
        let committer = Committer::spawn(
            store.clone(),
            crate::metrics::Metrics::new(),
            Arc::new(RefusalTally::new(100_000, 1_000)),
        );
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let (store, committer, p, done) =
                (store.clone(), committer.clone(), p.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut x = w * 7919 + 1;
                let mut n = 0u64;
                while !done.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let pid = p[(x % p.len() as u64) as usize];
                    let mut reader = store.reader().await.expect("reader");
                    let before = reader.before_crypto(&gw, &[]).await.expect("read");
                    let after = reader
                        .after_open(&[pid], &gw, now_ms())
                        .await
                        .expect("read");
                    drop(reader);
                    let active = after
                        .peripherals
                        .get(&pid)
                        .is_some_and(|r| r.status == Status::Active);
                    if !active {
                        continue;
                    }
                    // Waiting for the writer.
                    tokio::time::sleep(std::time::Duration::from_micros(x % 3_000)).await;
                    n += 1;
                    let mut e = [0u8; 32];
                    e[..8].copy_from_slice(&n.to_le_bytes());
                    e[8] = w as u8;
                    let mut item = vouch(0, pid, gw);
                    item.ephemeral = Some(DhPublic(e));
                    committer
                        .commit(vec![item], Some(before.registry_seq))
                        .await
                        .expect("commit");
                }
            }));
        }
        for (i, pid) in p.iter().enumerate() {
            tokio::time::sleep(std::time::Duration::from_millis(3 + i as u64 % 4)).await;
            store
                .transition_peripheral(pid, Transition::Revoke, "operator")
                .await
                .expect("revoke");
        }
        done.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("task");
        }
        let mut late = 0;
        for pid in p.iter() {
            let filter = crate::store::AuditFilter {
                peripheral: Some(pid.to_string()),
                limit: 1_000,
                ..Default::default()
            };
            let entries = store.audit_query(&filter).await.expect("audit");
            let revoked = entries
                .iter()
                .find(|e| e.action == "peripheral_revoke")
                .map(|e| e.seq)
                .expect("revoked");
            late += entries
                .iter()
                .filter(|e| e.action == "vouch" && e.outcome == "vouched" && e.seq > revoked)
                .count();
        }
        late
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_vouch_is_committed_after_its_revocation_on_sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("db").display());
        let store = Store::open(&url).await.expect("open");
        assert_eq!(vouches_racing_revocations(store.clone()).await, 0);
        store.close().await;
    }

    /// On PostgreSQL (`DATABASE_URL`, a database of its own; skipped
    /// without it, as `.ci/run` always sets it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_vouch_is_committed_after_its_revocation_on_postgres() {
        use sqlx::Connection;
        let Ok(server) = std::env::var("DATABASE_URL") else {
            eprintln!("DATABASE_URL is not set: skipped");
            return;
        };
        sqlx::any::install_default_drivers();
        let name = format!("vouch_commit_race_{}", std::process::id());
        let mut admin = sqlx::AnyConnection::connect(&server)
            .await
            .expect("connect");
        let drop_db = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        sqlx::query(&drop_db)
            .execute(&mut admin)
            .await
            .expect("drop");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create");
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        let store = Store::open(&format!("{base}/{name}")).await.expect("open");
        let late = vouches_racing_revocations(store.clone()).await;
        store.close().await;
        sqlx::query(&drop_db)
            .execute(&mut admin)
            .await
            .expect("drop");
        assert_eq!(late, 0);
    }
}
