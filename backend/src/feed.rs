//! The revocation feed (SPEC.md §10.4): `GET /v1/feed?after=SEQ&wait_ms=MS`.
//!
//! ## Long-poll, not SSE or WebSocket
//!
//! A gateway asks for the events after the last sequence number it applied.
//! If there are any, they come back at once; otherwise the request waits
//! until one is written or `wait_ms` (at most `limits.feed_wait_max_ms`)
//! passes, and returns an empty batch. The gateway then polls again with the
//! `next` it was given. Why this shape:
//!
//! - every answer is one complete [`FeedBatch`] in the same postcard body
//!   format as the rest of the gateway API (SSE would need base64 inside text
//!   frames; a WebSocket a second framing and its own keep-alive);
//! - resuming after a disconnect is the same request as any other poll
//!   (`after` = last applied seq): nothing is lost between two polls because
//!   the events are rows in the store, not messages in flight;
//! - it rides on the gateway's ordinary keep-alive HTTPS connection and
//!   passes through any proxy or load balancer.
//!
//! The cost is one request per burst of events, which for revocations is
//! nothing.
//!
//! ## Latency across instances
//!
//! Sequence numbers are allocated inside the serialized write transaction
//! (see [`crate::store`]), so they appear in commit order on every instance.
//! A write on this instance wakes its waiting polls immediately. On
//! PostgreSQL, a transaction that appends events also NOTIFYs
//! [`FEED_CHANNEL`](crate::store::FEED_CHANNEL) on commit, and every
//! instance LISTENs: writes by other instances or by the CLI wake its polls
//! within one notification's delivery (a few milliseconds). The event log
//! stays the truth: each instance also reads the log's head every
//! `feed.poll_ms` (200 ms by default), so a notification lost while a
//! listening connection reconnects costs at most that, never an event. On
//! SQLite the poll alone covers the CLI's writes.
//!
//! ## One read for many polls
//!
//! A revocation wakes every gateway's poll at once, and each would read the
//! log: 10,000 gateways, 10,000 identical reads for each wake-up, which is
//! what made revocation slow to reach a large fleet. Polls that need the
//! events after the same cursor share one read (`group_read`), but only
//! a read that started after the poll arrived or was woken: what a poll is
//! answered is the log as it stood at some moment after it asked, as if it
//! had read alone, so a shared read never hides an event committed before
//! the poll asked (on this instance, another, or by the CLI). One read per
//! cursor is in flight; the polls that ask meanwhile share the next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::backend::{FeedBatch, FeedChange, FeedEvent, MAX_FEED_EVENTS};

use crate::group_read::GroupReads;
use crate::store::{now_ms, EventRow, Store, StoreError};

/// The latest event sequence number known to this instance, and the
/// reads of the log its polls share.
#[derive(Debug, Clone)]
pub struct FeedNotifier {
    tx: watch::Sender<i64>,
    /// Reads of the log by cursor, shared by the polls asking meanwhile.
    reads: Arc<GroupReads<i64, (), LogRead, StoreError>>,
}

/// What one read of the log found after a cursor.
#[derive(Debug)]
struct LogRead {
    /// The events after it, oldest first, at most [`MAX_FEED_EVENTS`].
    rows: Vec<EventRow>,
    /// When there were none: the log's newest sequence number.
    last: i64,
}

impl FeedNotifier {
    /// A notifier starting at `seq`.
    pub fn new(seq: i64) -> Self {
        Self {
            tx: watch::channel(seq).0,
            reads: Arc::new(GroupReads::default()),
        }
    }

    /// The events after `after`, read after this call began: shared with
    /// the other polls that ask for the same cursor meanwhile.
    async fn read_after(&self, store: &Store, after: i64) -> Result<Arc<LogRead>, StoreError> {
        let store = store.clone();
        self.reads
            .read(after, (), move |_| async move {
                let rows = store.events_after(after, MAX_FEED_EVENTS as u32).await?;
                let last = if rows.is_empty() {
                    store.last_event_seq().await?
                } else {
                    0
                };
                Ok(LogRead { rows, last })
            })
            .await
            .map_err(StoreError::SharedRead)
    }

    /// Announces that the log reached `seq` (no-op if not newer).
    pub fn advance(&self, seq: i64) {
        self.tx.send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
    }

    /// The latest known sequence number.
    pub fn current(&self) -> i64 {
        *self.tx.borrow()
    }

    /// Waits until the log passes `after`, or `timeout` passes. Returns whether
    /// it did.
    pub async fn wait_past(&self, after: i64, timeout: Duration) -> bool {
        let mut rx = self.tx.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|&s| s > after))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }
}

/// Converts a stored event to its wire form; `None` for kinds gateways do not
/// receive or rows that do not parse.
pub fn to_wire(row: &EventRow) -> Option<FeedEvent> {
    let pid = || PeripheralId::from_hex(&row.subject);
    let gid = || PublicKey::from_hex(&row.subject);
    let change = match row.kind.as_str() {
        "peripheral_suspended" => FeedChange::PeripheralSuspended(pid()?),
        "peripheral_revoked" => FeedChange::PeripheralRevoked(pid()?),
        "peripheral_reinstated" => FeedChange::PeripheralReinstated(pid()?),
        "gateway_suspended" => FeedChange::GatewaySuspended(gid()?),
        "gateway_revoked" => FeedChange::GatewayRevoked(gid()?),
        "gateway_reinstated" => FeedChange::GatewayReinstated(gid()?),
        "policy_changed" => FeedChange::PolicyChanged,
        "anchor_updates" => FeedChange::AnchorUpdates(row.subject.parse().ok()?),
        _ => return None,
    };
    Some(FeedEvent {
        seq: u64::try_from(row.seq).ok()?,
        at_ms: u64::try_from(row.at_ms).unwrap_or(0),
        change,
    })
}

/// Serves one poll: events after `after`, waiting up to `wait` for one.
/// Observes the revocation lag of every event delivered.
pub async fn poll(
    store: &Store,
    notifier: &FeedNotifier,
    after: u64,
    wait: Duration,
    lag: &prometheus::HistogramVec,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<FeedBatch, StoreError> {
    let after_i = i64::try_from(after).unwrap_or(i64::MAX);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let read = notifier.read_after(store, after_i).await?;
        let rows = &read.rows;
        if let Some(last) = rows.last() {
            let now = now_ms();
            let next = u64::try_from(last.seq).unwrap_or(after);
            let events: Vec<FeedEvent> = rows.iter().filter_map(to_wire).collect();
            for e in &events {
                let ms = now.saturating_sub(i64::try_from(e.at_ms).unwrap_or(now));
                lag.with_label_values::<&str>(&[])
                    .observe(ms.max(0) as f64 / 1000.0);
            }
            return Ok(FeedBatch { events, next });
        }
        let last = read.last;
        notifier.advance(last);
        if last < after_i {
            // The gateway is ahead of this log (restored database): resync.
            return Ok(FeedBatch {
                events: Vec::new(),
                next: u64::try_from(last).unwrap_or(0),
            });
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Ok(FeedBatch {
                events: Vec::new(),
                next: after,
            });
        }
        tokio::select! {
            _ = notifier.wait_past(after_i, remaining) => {}
            _ = shutdown.cancelled() => {
                return Ok(FeedBatch { events: Vec::new(), next: after });
            }
        }
    }
}
