//! The revocation feed (SPEC.md §10.5): held open to the backend so that a
//! revoked peripheral's live session closes within a second of the admin call.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use vouch_proto::keys::PublicKey;
use vouch_proto::session::CloseReason;
use vouch_proto::wire::backend::{FeedChange, FeedEvent};

use crate::backend_client::BackendApi;
use crate::metrics::Metrics;
use crate::sessions::SessionTable;

/// Applies one feed event to the table; returns how many sessions it closed.
pub fn apply(table: &SessionTable, own_key: &PublicKey, event: &FeedEvent) -> usize {
    match &event.change {
        FeedChange::PeripheralRevoked(id) | FeedChange::PeripheralSuspended(id) => {
            table.set_revoked(*id, true);
            let dropped = table.forget_tickets_of(id);
            let closed = usize::from(table.close(id, CloseReason::REVOKED));
            if closed > 0 || dropped > 0 {
                info!(peripheral = %id, seq = event.seq, sessions_closed = closed, tickets_dropped = dropped,
                    "peripheral revoked or suspended: session closed");
            }
            closed
        }
        FeedChange::GatewayRevoked(key) | FeedChange::GatewaySuspended(key) if key == own_key => {
            table.forget_all_tickets();
            let n = table.close_all(CloseReason::REVOKED);
            warn!(
                seq = event.seq,
                sessions_closed = n,
                "this gateway was revoked or suspended: all sessions closed"
            );
            n
        }
        FeedChange::PeripheralReinstated(id) => {
            table.set_revoked(*id, false);
            0
        }
        _ => 0,
    }
}

/// Follows the feed until `shutdown`; reconnects with jittered backoff.
pub async fn follow<B: BackendApi>(
    backend: B,
    table: Arc<SessionTable>,
    own_key: PublicKey,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut after = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        tokio::select! {
            r = backend.feed(after) => match r {
                Ok(batch) => {
                    backoff = Duration::from_millis(250);
                    for ev in &batch.events {
                        apply(&table, &own_key, ev);
                        metrics.revocation_applied();
                    }
                    // The backend's cursor is authoritative: it is below ours
                    // only when its log was restored, and then we must adopt it
                    // or miss every revocation until it catches up.
                    after = batch.next;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "revocation feed unavailable");
                    let jitter = Duration::from_millis(u64::from(rand_jitter()) % (backoff.as_millis() as u64 / 2 + 1));
                    tokio::select! {
                        () = tokio::time::sleep(backoff + jitter) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn rand_jitter() -> u32 {
    let mut b = [0u8; 4];
    // Jitter only spreads reconnects; without OS randomness it is simply zero.
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}
