//! The revocation feed (SPEC.md §10.5): held open to the backend so that a
//! revoked peripheral's live session closes within a second of the admin call.
//!
//! With a state directory the cursor is saved after every batch (after the
//! ticket removals the batch caused), and a restarted gateway resumes the
//! feed from it. Tickets restored from disk are held back until the feed has
//! caught up: polls that do not wait ([`BackendApi::feed_now`]) from the saved
//! cursor until one returns nothing new. If the backend's log is behind the
//! cursor (its database was restored) or it refuses the request, the feed
//! cannot vouch for what happened in between and the restored tickets are
//! discarded.
//!
//! Every answer's time (its `Date`, on the mutually authenticated channel)
//! is checked against the gateway's wall clock
//! ([`TicketBook::check_clock`](crate::sessions::TicketBook::check_clock)): restored tickets are used only once the
//! feed caught up *and* the wall clock agrees with the backend's.
//!
//! The feed starts with polls that do not wait even without restored
//! tickets: the first answer confirms the wall clock at once, and tickets
//! are saved to the state directory only once it has.
//!
//! A gateway that hears nothing from the feed for `limits.feed_silence_s`
//! stops resuming until the feed answers again
//! ([`FeedState::resumption_suspended`](crate::sessions::FeedState::resumption_suspended), SPEC.md §11.5): it cannot know
//! of the revocations made meanwhile. An answer counts once every event up
//! to it is applied (a batch of fewer than [`MAX_FEED_EVENTS`] events).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use vouch_proto::keys::PublicKey;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::backend::{FeedChange, FeedEvent, MAX_FEED_EVENTS};

use crate::backend_client::{BackendApi, BackendError};
use crate::metrics::Metrics;
use crate::retry::Retry;
use crate::sessions::SessionTable;

/// Applies one feed event to the table; returns how many sessions it closed.
///
/// - `PeripheralRevoked`/`PeripheralSuspended`: that peripheral's session is
///   closed and its tickets dropped.
/// - `GatewayRevoked`/`GatewaySuspended` of this gateway: every session and
///   ticket.
/// - `PolicyChanged`: every session and ticket too, since the event does not
///   say whose grant changed ([`SessionTable::policy_changed`]).
pub fn apply(table: &SessionTable, own_key: &PublicKey, event: &FeedEvent) -> usize {
    match &event.change {
        FeedChange::PeripheralRevoked(id) | FeedChange::PeripheralSuspended(id) => {
            table.feed().set_revoked(*id, true);
            let dropped = table.tickets().forget_peripheral(id);
            let closed = usize::from(table.close(id, CloseReason::REVOKED));
            if closed > 0 || dropped > 0 {
                info!(peripheral = %id, seq = event.seq, sessions_closed = closed, tickets_dropped = dropped,
                    "peripheral revoked or suspended: session closed");
            }
            closed
        }
        FeedChange::GatewayRevoked(key) | FeedChange::GatewaySuspended(key) if key == own_key => {
            table.tickets().forget_all();
            let n = table.sessions().close_all(CloseReason::REVOKED);
            warn!(
                seq = event.seq,
                sessions_closed = n,
                "this gateway was revoked or suspended: all sessions closed"
            );
            n
        }
        FeedChange::PeripheralReinstated(id) => {
            table.feed().set_revoked(*id, false);
            0
        }
        FeedChange::PolicyChanged => {
            // The event names no rule, peripheral or gateway: any grant held
            // here may have narrowed or been withdrawn (SPEC.md §10.5).
            let tickets = table.tickets().len();
            let n = table.policy_changed();
            warn!(
                seq = event.seq,
                sessions_closed = n,
                tickets_dropped = tickets,
                "policy changed: every session closed and every ticket dropped, for the backend to judge each peripheral again"
            );
            n
        }
        FeedChange::AnchorUpdates(serial) => {
            // Every backend instance hands out the updates up to `serial`
            // now (SPEC.md §10.6): fetch them rather than wait for the
            // periodic fetch.
            let updates = table.anchor_updates();
            if *serial > updates.last_serial() {
                info!(
                    serial,
                    seq = event.seq,
                    "trust-anchor updates announced on the feed: fetching them"
                );
                updates.request_fetch();
            }
            0
        }
        _ => 0,
    }
}

/// Follows the feed until `shutdown`; reconnects with jittered backoff.
/// Starts after the table's saved cursor ([`TicketBook::feed_cursor`](crate::sessions::TicketBook::feed_cursor)) and
/// catches up first if the table restored tickets (see the module docs).
pub async fn follow<B: BackendApi>(
    backend: B,
    table: Arc<SessionTable>,
    own_key: PublicKey,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut after = table.tickets().feed_cursor();
    let mut catching_up = true;
    table.feed().followed();
    if table.tickets().awaits_feed() {
        info!(
            after,
            "revocation feed: catching up from the saved cursor before restored tickets are used"
        );
    }
    let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        // After a failure the first poll answers at once (no long-poll): the
        // gateway learns without waiting that the backend is back, and what
        // it missed meanwhile.
        let recovering = retry.failures() > 0;
        let poll = async {
            if catching_up || recovering {
                backend.feed_now_dated(after).await
            } else {
                backend.feed_dated(after).await
            }
        };
        tokio::select! {
            r = poll => match r {
                Ok(answer) => {
                    table.feed().backend_answered();
                    let failed = retry.succeeded();
                    if failed > 0 {
                        info!(failed_attempts = failed, cursor = after,
                            "revocation feed: the backend answers again");
                    }
                    let batch = answer.batch;
                    table.tickets().check_clock(answer.server_time);
                    for ev in &batch.events {
                        apply(&table, &own_key, ev);
                        metrics.revocation_applied();
                    }
                    if catching_up && batch.next < after {
                        let n = table.tickets().discard_restored();
                        warn!(cursor = after, backend_next = batch.next, tickets_discarded = n,
                            "the backend's revocation feed is behind the saved cursor (its log was restored): restored tickets discarded");
                        catching_up = false;
                    } else if catching_up && batch.events.is_empty() && batch.next == after {
                        table.tickets().feed_caught_up();
                        catching_up = false;
                    }
                    // The backend's cursor is authoritative: it is below ours
                    // only when its log was restored, and then we must adopt it
                    // or miss every revocation until it catches up.
                    if batch.next != after {
                        table.tickets().record_feed_cursor(batch.next);
                    }
                    after = batch.next;
                    table.feed().set_position(after);
                    // Every event up to this answer is applied (a full batch
                    // may have more behind it): revocations made until now
                    // have reached this gateway.
                    if batch.events.len() < MAX_FEED_EVENTS {
                        table.feed().heard();
                    }
                    metrics.set_resumption_suspended(table.feed().resumption_suspended());
                }
                Err(e) => {
                    if catching_up && matches!(e, BackendError::Refused { .. }) {
                        let n = table.tickets().discard_restored();
                        warn!(error = %e, cursor = after, tickets_discarded = n,
                            "the backend refused to resume the revocation feed: restored tickets discarded");
                        catching_up = false;
                    }
                    let wait = retry.next_delay();
                    table.feed().backend_failed(e.to_string());
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "revocation feed unavailable");
                    metrics.set_resumption_suspended(table.feed().resumption_suspended());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
