//! Brute-force lockouts and alerts.
//!
//! A real device never presents a bad credential, so repeated failures are
//! attacks, and they are detected per subject:
//!
//! - **The claimed peripheral id**: a hello that opens but names an unknown
//!   peripheral or carries a bad signature counts against the id it claimed
//!   (a replay, an unknown backend key or a seal that does not open names no
//!   id: they are refused before the id is read). K failures within T
//!   seconds lock the id: an
//!   audit entry, an alert, a metric. The lock does **not** refuse the id's
//!   hellos: anyone can seal any id to the backend, so refusing a locked id
//!   would let an attacker shut a genuine device out everywhere, and answering
//!   a locked id differently would tell a radio observer which id a hello
//!   holds. A genuine device's valid signature still gets its vouch; the
//!   attacker's guesses keep getting the same `Denied` as before.
//! - **The gateway**: only failures an honest gateway never causes count
//!   against it (a body that is not a hello; an honest gateway decodes the
//!   hello before forwarding it). Failures from the radio side do not: the
//!   gateway relays them without being able to check them. A locked gateway's
//!   requests are answered `Refused(Busy)` before any crypto.
//!
//! Decisions that are not credential failures (a suspended or revoked device,
//! a policy refusal, a clone refusal) do not count: they are the registry
//! working, not someone guessing.
//!
//! Failure counting is per instance (a sliding window in memory); the lockouts
//! themselves are written to the shared store and every instance refreshes
//! its view of them with the feed poll, so a lockout triggered on one instance
//! holds on all of them. With N instances an attacker gets at most N·K tries
//! per window before the first lockout.
//!
//! Every lockout and every suspected clone raises an [`Alert`]: a log line at
//! WARN with the stable field `alert=<kind>`, an audit entry, a metric, and, if
//! configured, a JSON POST to the webhook.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::Metrics;

/// A subject that can be locked out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A gateway, by key (hex).
    Gateway(String),
    /// A claimed peripheral id (hex).
    Peripheral(String),
}

impl Subject {
    /// The stored form: `gateway:<hex>` or `peripheral:<hex>`.
    pub fn key(&self) -> String {
        match self {
            Subject::Gateway(k) => format!("gateway:{k}"),
            Subject::Peripheral(k) => format!("peripheral:{k}"),
        }
    }

    /// `gateway` or `peripheral`.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Gateway(_) => "gateway",
            Subject::Peripheral(_) => "peripheral",
        }
    }
}

/// Failure counting and the local view of lockouts.
#[derive(Debug)]
pub struct Lockouts {
    max_failures: usize,
    window_ms: i64,
    duration_ms: i64,
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
    active: Mutex<HashMap<String, i64>>,
}

impl Lockouts {
    /// K failures within `window` lock a subject out for `duration`.
    pub fn new(max_failures: u32, window: Duration, duration: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1) as usize,
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            duration_ms: i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
            failures: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `subject` is locked out at `now`.
    pub fn is_locked(&self, subject: &Subject, now: i64) -> bool {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.get(&subject.key()).is_some_and(|&until| until > now)
    }

    /// Counts one failure. Returns the lockout's end if this failure reaches
    /// the threshold (and the subject was not locked already).
    pub fn record_failure(&self, subject: &Subject, now: i64) -> Option<i64> {
        if self.is_locked(subject, now) {
            return None;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound memory under a flood of distinct claimed ids: forget subjects
        // whose failures all left the window.
        if failures.len() > 100_000 {
            let horizon = now - self.window_ms;
            failures.retain(|_, q| q.back().is_some_and(|&t| t > horizon));
        }
        let q = failures.entry(subject.key()).or_default();
        q.push_back(now);
        while q.front().is_some_and(|&t| t <= now - self.window_ms) {
            q.pop_front();
        }
        if q.len() >= self.max_failures {
            q.clear();
            let until = now.saturating_add(self.duration_ms);
            self.set_locked(subject.key(), until);
            Some(until)
        } else {
            None
        }
    }

    /// Records a lockout (from this instance or from the shared store).
    pub fn set_locked(&self, key: String, until: i64) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let e = active.entry(key).or_insert(until);
        *e = (*e).max(until);
    }

    /// Replaces the local view with the store's lockouts in force.
    pub fn refresh(&self, from_store: Vec<(String, i64)>) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.clear();
        active.extend(from_store);
    }
}

/// An alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Stable kind: `lockout`, `clone_suspected`, `unvouched_session`.
    pub alert: &'static str,
    /// Peripheral concerned.
    pub peripheral: Option<String>,
    /// Gateway concerned.
    pub gateway: Option<String>,
    /// Human-readable detail.
    pub detail: String,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

/// Raises alerts: log, metric, webhook. (The audit entry is written by the
/// caller, inside the transaction that made the decision.)
#[derive(Debug, Clone)]
pub struct Alerter {
    metrics: Metrics,
    webhook: Option<(reqwest::Client, String)>,
}

impl Alerter {
    /// An alerter posting to `webhook_url` if given.
    pub fn new(metrics: Metrics, webhook_url: Option<String>, timeout: Duration) -> Self {
        // reqwest verifies webhook servers with the platform trust store
        // through the process-wide ring provider (installed by `AppState::new`).
        crate::install_crypto_provider();
        let webhook =
            webhook_url.and_then(
                |url| match reqwest::Client::builder().timeout(timeout).build() {
                    Ok(client) => Some((client, url)),
                    Err(e) => {
                        tracing::error!(error = %e, "alert webhook disabled: no HTTP client");
                        None
                    }
                },
            );
        Self { metrics, webhook }
    }

    /// Raises `alert`.
    pub fn raise(&self, alert: Alert) {
        self.metrics.alerts.with_label_values(&[alert.alert]).inc();
        tracing::warn!(
            alert = alert.alert,
            peripheral = alert.peripheral.as_deref().unwrap_or(""),
            gateway = alert.gateway.as_deref().unwrap_or(""),
            detail = %alert.detail,
            "security alert"
        );
        if let Some((client, url)) = &self.webhook {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                match client.post(&url).json(&alert).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::error!(status = %r.status(), "alert webhook refused the alert")
                    }
                    Err(e) => tracing::error!(error = %e, "alert webhook unreachable"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_failures_within_t_lock_out() {
        let l = Lockouts::new(3, Duration::from_secs(10), Duration::from_secs(60));
        let s = Subject::Gateway("ab".into());
        assert_eq!(l.record_failure(&s, 1_000), None);
        assert_eq!(l.record_failure(&s, 2_000), None);
        assert!(!l.is_locked(&s, 2_000));
        assert_eq!(l.record_failure(&s, 3_000), Some(63_000));
        assert!(l.is_locked(&s, 3_001));
        assert!(!l.is_locked(&s, 63_000));
        // Failures spread wider than the window never lock.
        let t = Subject::Peripheral("cd".into());
        for i in 0..10 {
            assert_eq!(l.record_failure(&t, i * 6_000), None);
        }
    }
}
