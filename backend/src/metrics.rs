//! Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `vouch_answers_total` | counter | `outcome` = vouched, denied, busy |
//! | `vouch_refusals_total` | counter | `reason` (the audit reason) |
//! | `vouch_request_duration_seconds` | histogram | `endpoint` = single, batch |
//! | `vouch_lockouts_total` | counter | `kind` = gateway, peripheral |
//! | `vouch_alerts_total` | counter | `alert` = lockout, clone_suspected, unvouched_session |
//! | `vouch_revocation_lag_seconds` | histogram | — (event written → delivered to a feed subscriber) |
//! | `vouch_feed_waiters` | gauge | — |
//! | `vouch_overload_total` | counter | `kind` = shed, timeout, gateway_budget |
//! | `vouch_store_commit_batch_size` | histogram | — (vouch decisions and session-report events per group commit) |
//! | `vouch_client_certificates_rejected_total` | counter | `reason` = expired, not_yet_valid, unknown_ca, key_mismatch, wrong_purpose, invalid ([`crate::pki::RejectReason`]) |
//! | `vouch_gateway_certificates_issued_total` | counter | `kind` = enrollment, renewal |

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The service's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Answers by outcome.
    pub answers: IntCounterVec,
    /// Refusals by reason.
    pub refusals: IntCounterVec,
    /// Request latency.
    pub duration: HistogramVec,
    /// Lockouts by kind.
    pub lockouts: IntCounterVec,
    /// Alerts by kind.
    pub alerts: IntCounterVec,
    /// Revocation lag.
    pub revocation_lag: HistogramVec,
    /// Feed long-polls in progress.
    pub feed_waiters: IntGauge,
    /// Requests turned away under overload.
    pub overload: IntCounterVec,
    /// Group-commit sizes.
    pub commit_batch: HistogramVec,
    /// Hello signatures verified (SPEC.md §5.3 step 6): one per opened
    /// hello, also for unknown and inactive ids (against a dummy key), so
    /// this counts opened hellos whatever the verdict.
    pub hello_verifications: IntCounter,
    /// Client certificates the TLS layer refused, by reason.
    pub client_certificates_rejected: IntCounterVec,
    /// Gateway client certificates issued, by kind.
    pub gateway_certificates_issued: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        // The names and label sets are constants, so construction cannot fail;
        // a failure would be a programming error caught by the tests.
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|_| unreachable_metric(name));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .unwrap_or_else(|_| unreachable_metric(name));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let answers = counter("vouch_answers_total", "Vouch answers by outcome", "outcome");
        let refusals = counter(
            "vouch_refusals_total",
            "Vouch refusals by audit reason",
            "reason",
        );
        let duration = histogram(
            "vouch_request_duration_seconds",
            "Latency of vouch requests",
            &["endpoint"],
            vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        );
        let lockouts = counter("vouch_lockouts_total", "Lockouts by kind", "kind");
        let alerts = counter("vouch_alerts_total", "Alerts raised by kind", "alert");
        let revocation_lag = histogram(
            "vouch_revocation_lag_seconds",
            "Time from a revocation event being written to its delivery to a feed subscriber",
            &[],
            vec![0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0],
        );
        let feed_waiters = IntGauge::new(
            "vouch_feed_waiters",
            "Revocation-feed long-polls in progress",
        )
        .unwrap_or_else(|_| unreachable_metric("vouch_feed_waiters"));
        let _ = registry.register(Box::new(feed_waiters.clone()));
        let overload = counter(
            "vouch_overload_total",
            "Requests turned away under overload",
            "kind",
        );
        let commit_batch = histogram(
            "vouch_store_commit_batch_size",
            "Vouch decisions and reported session events per group commit",
            &[],
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
        );
        let hello_verifications = IntCounter::new(
            "vouch_hello_verifications_total",
            "Hello signatures verified, one per opened hello whatever its id",
        )
        .unwrap_or_else(|_| unreachable_metric("vouch_hello_verifications_total"));
        let _ = registry.register(Box::new(hello_verifications.clone()));
        let client_certificates_rejected = counter(
            "vouch_client_certificates_rejected_total",
            "Client certificates refused in the TLS handshake, by reason",
            "reason",
        );
        let gateway_certificates_issued = counter(
            "vouch_gateway_certificates_issued_total",
            "Gateway client certificates issued, at enrollment or renewal",
            "kind",
        );
        Self {
            client_certificates_rejected,
            gateway_certificates_issued,
            registry,
            hello_verifications,
            answers,
            refusals,
            duration,
            lockouts,
            alerts,
            revocation_lag,
            feed_waiters,
            overload,
            commit_batch,
        }
    }

    /// What the TLS server counts refused client certificates with
    /// ([`crate::pki::server_config`]).
    pub fn client_cert_rejections(&self) -> crate::pki::ClientCertRejections {
        crate::pki::ClientCertRejections::new(self.client_certificates_rejected.clone())
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[allow(clippy::panic)]
fn unreachable_metric(name: &str) -> ! {
    panic!("metric {name} has an invalid definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed() {
        let m = Metrics::new();
        m.answers.with_label_values(&["vouched"]).inc();
        m.refusals.with_label_values(&["replay"]).inc();
        m.duration.with_label_values(&["single"]).observe(0.001);
        m.lockouts.with_label_values(&["gateway"]).inc();
        m.alerts.with_label_values(&["lockout"]).inc();
        m.revocation_lag.with_label_values::<&str>(&[]).observe(0.1);
        m.overload.with_label_values(&["shed"]).inc();
        m.commit_batch.with_label_values::<&str>(&[]).observe(3.0);
        m.client_certificates_rejected
            .with_label_values(&["expired"])
            .inc();
        m.gateway_certificates_issued
            .with_label_values(&["renewal"])
            .inc();
        let text = m.render();
        for name in [
            "vouch_answers_total",
            "vouch_refusals_total",
            "vouch_request_duration_seconds",
            "vouch_lockouts_total",
            "vouch_alerts_total",
            "vouch_revocation_lag_seconds",
            "vouch_feed_waiters",
            "vouch_overload_total",
            "vouch_store_commit_batch_size",
            "vouch_client_certificates_rejected_total",
            "vouch_gateway_certificates_issued_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
