//! Per-gateway budgets: how many requests, and how many feed long-polls, one
//! gateway may have in flight at once (`limits.max_requests_per_gateway`,
//! `limits.max_feed_waiters_per_gateway`).
//!
//! The global limits (`max_concurrent_requests`, `max_feed_waiters`) protect
//! the backend; these protect the other gateways from one that floods, be it
//! compromised or broken: without them a single gateway could take every
//! global slot and every other gateway's devices would be told `Busy`. A
//! request beyond its gateway's budget is answered 429 `gateway_busy` with
//! `Retry-After` at once, before any work. The budget also bounds what one
//! gateway can make the backend compute before a lockout it triggers takes
//! effect: at most `max_requests_per_gateway` × `MAX_BATCH` hellos are
//! already past the lockout check when it lands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vouch_proto::keys::PublicKey;

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Vouch, batch vouch and session-report requests.
    Requests,
    /// Revocation-feed long-polls.
    FeedWaits,
}

impl Kind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::FeedWaits => "feed_waits",
        }
    }
}

/// The in-flight counts of every gateway that has something in flight.
#[derive(Debug)]
pub struct GatewayBudgets {
    in_flight: Arc<Mutex<HashMap<(PublicKey, Kind), usize>>>,
    max_requests: usize,
    max_feed_waits: usize,
}

impl GatewayBudgets {
    /// Budgets of `max_requests` requests and `max_feed_waits` long-polls
    /// per gateway (each at least 1).
    pub fn new(max_requests: usize, max_feed_waits: usize) -> Self {
        Self {
            in_flight: Arc::default(),
            max_requests: max_requests.max(1),
            max_feed_waits: max_feed_waits.max(1),
        }
    }

    /// Takes one unit of `gateway`'s `kind` budget, or `None` if it is spent.
    /// The unit comes back when the returned guard drops.
    pub fn try_take(&self, gateway: PublicKey, kind: Kind) -> Option<BudgetGuard> {
        let max = match kind {
            Kind::Requests => self.max_requests,
            Kind::FeedWaits => self.max_feed_waits,
        };
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry((gateway, kind)).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(BudgetGuard {
            in_flight: self.in_flight.clone(),
            key: (gateway, kind),
        })
    }

    /// How many of `gateway`'s `kind` are in flight now.
    pub fn in_flight(&self, gateway: &PublicKey, kind: Kind) -> usize {
        let map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(*gateway, kind)).copied().unwrap_or(0)
    }
}

/// One unit of a gateway's budget, returned on drop. The map holds only
/// gateways with something in flight, so its size is bounded by the global
/// limits.
#[derive(Debug)]
pub struct BudgetGuard {
    in_flight: Arc<Mutex<HashMap<(PublicKey, Kind), usize>>>,
    key: (PublicKey, Kind),
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::keys::IdentityKey;

    #[test]
    fn a_spent_budget_refuses_until_a_unit_comes_back() {
        let b = GatewayBudgets::new(2, 1);
        let g = IdentityKey::from_seed(&[1; 32]).public_key();
        let other = IdentityKey::from_seed(&[2; 32]).public_key();
        let first = b.try_take(g, Kind::Requests).expect("first");
        let _second = b.try_take(g, Kind::Requests).expect("second");
        assert!(b.try_take(g, Kind::Requests).is_none());
        // Other gateways and the other kind are unaffected.
        assert!(b.try_take(other, Kind::Requests).is_some());
        let _feed = b.try_take(g, Kind::FeedWaits).expect("feed");
        assert!(b.try_take(g, Kind::FeedWaits).is_none());
        drop(first);
        assert_eq!(b.in_flight(&g, Kind::Requests), 1);
        assert!(b.try_take(g, Kind::Requests).is_some());
    }

    #[test]
    fn idle_gateways_leave_no_entry() {
        let b = GatewayBudgets::new(4, 4);
        let g = IdentityKey::from_seed(&[1; 32]).public_key();
        drop(b.try_take(g, Kind::Requests));
        assert!(b.in_flight.lock().expect("lock").is_empty());
    }
}
