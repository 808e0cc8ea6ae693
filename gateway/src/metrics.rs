//! Prometheus metrics of the gateway.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::Error;

/// The gateway's counters, gauges and histograms.
pub struct Metrics {
    registry: Registry,
    handshakes: IntCounterVec,
    handshake_seconds: Histogram,
    sessions: IntGauge,
    records_in: IntCounter,
    records_out: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    records_rejected: IntCounter,
    link_errors: IntCounterVec,
    revocations: IntCounter,
    anchor_updates_sent: IntCounter,
    anchor_updates_held: IntGauge,
    anchor_update_serial: IntGauge,
    anchor_update_fetch_failures: IntCounter,
    resumption_suspended: IntGauge,
    clones_suspected: IntCounter,
    certificate_expiry: IntGauge,
    certificate_renewals: IntCounterVec,
    backend_up: IntGaugeVec,
    backend_failovers: IntCounter,
}

impl Metrics {
    /// Registers every metric in a fresh registry. Fails only if a metric
    /// definition is invalid (a programming error caught by the tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("vouch_gateway".into()), None)?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "handshakes_total",
                "Handshakes by outcome (ok, resumed, refused, busy, timeout, failed)",
            ),
            &["outcome"],
        )?;
        let handshake_seconds = Histogram::with_opts(
            HistogramOpts::new("handshake_seconds", "Handshake latency through the gateway")
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
        )?;
        let sessions = IntGauge::new("sessions", "Live sessions")?;
        let records_in = IntCounter::new("records_in_total", "Application records received")?;
        let records_out = IntCounter::new("records_out_total", "Application records sent")?;
        let bytes_in = IntCounter::new("app_bytes_in_total", "Application bytes received")?;
        let bytes_out = IntCounter::new("app_bytes_out_total", "Application bytes sent")?;
        let records_rejected = IntCounter::new(
            "records_rejected_total",
            "Records that failed authentication or replay checks",
        )?;
        let link_errors = IntCounterVec::new(
            Opts::new("link_errors_total", "Link errors by transport"),
            &["transport"],
        )?;
        let revocations = IntCounter::new(
            "revocations_applied_total",
            "Revocation feed events applied",
        )?;
        let anchor_updates_sent = IntCounter::new(
            "anchor_updates_sent_total",
            "Trust-anchor update records sent to peripherals (each held update, after every handshake)",
        )?;
        let anchor_updates_held = IntGauge::new(
            "anchor_updates_held",
            "Trust-anchor updates held for delivery",
        )?;
        let anchor_update_serial = IntGauge::new(
            "anchor_update_serial",
            "Serial of the last trust-anchor update held (0: none)",
        )?;
        let anchor_update_fetch_failures = IntCounter::new(
            "anchor_update_fetch_failures_total",
            "Fetches of trust-anchor updates from the backend that failed",
        )?;
        let resumption_suspended = IntGauge::new(
            "resumption_suspended",
            "1 while resumption is refused because the revocation feed has not answered for limits.feed_silence_s",
        )?;
        let clones_suspected = IntCounter::new(
            "clones_suspected_total",
            "Sessions of one identity live at once on this gateway: an older session spoke after a newer one started",
        )?;
        let certificate_expiry = IntGauge::new(
            "certificate_expiry_timestamp_seconds",
            "When the client certificate in use expires (Unix time, seconds)",
        )?;
        let certificate_renewals = IntCounterVec::new(
            Opts::new(
                "certificate_renewals_total",
                "Client certificate renewals by outcome (ok, failed)",
            ),
            &["outcome"],
        )?;
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "backend_instance_up",
                "1 while the backend instance at `url` answers, 0 from a failure until it answers again",
            ),
            &["url"],
        )?;
        let backend_failovers = IntCounter::new(
            "backend_failovers_total",
            "Times a backend instance stopped answering and requests went to another",
        )?;
        for c in [
            Box::new(handshakes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(handshake_seconds.clone()),
            Box::new(sessions.clone()),
            Box::new(records_in.clone()),
            Box::new(records_out.clone()),
            Box::new(bytes_in.clone()),
            Box::new(bytes_out.clone()),
            Box::new(records_rejected.clone()),
            Box::new(link_errors.clone()),
            Box::new(revocations.clone()),
            Box::new(anchor_updates_sent.clone()),
            Box::new(anchor_updates_held.clone()),
            Box::new(anchor_update_serial.clone()),
            Box::new(anchor_update_fetch_failures.clone()),
            Box::new(resumption_suspended.clone()),
            Box::new(clones_suspected.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(certificate_renewals.clone()),
            Box::new(backend_up.clone()),
            Box::new(backend_failovers.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            handshakes,
            handshake_seconds,
            sessions,
            records_in,
            records_out,
            bytes_in,
            bytes_out,
            records_rejected,
            link_errors,
            revocations,
            anchor_updates_sent,
            anchor_updates_held,
            anchor_update_serial,
            anchor_update_fetch_failures,
            resumption_suspended,
            clones_suspected,
            certificate_expiry,
            certificate_renewals,
            backend_up,
            backend_failovers,
        })
    }

    /// Whether the backend instance at `url` answers.
    pub fn backend_instance_up(&self, url: &str, up: bool) {
        self.backend_up.with_label_values(&[url]).set(i64::from(up));
    }

    /// A backend instance stopped answering; requests go to another.
    pub fn backend_failover(&self) {
        self.backend_failovers.inc();
    }

    /// Failovers so far.
    pub fn backend_failovers(&self) -> u64 {
        self.backend_failovers.get()
    }

    /// A completed handshake.
    pub fn handshake_ok(&self, resumed: bool, latency: Duration) {
        self.handshakes
            .with_label_values(&[if resumed { "resumed" } else { "ok" }])
            .inc();
        self.handshake_seconds.observe(latency.as_secs_f64());
    }

    /// A failed handshake, by category.
    pub fn handshake_failed(&self, e: &Error) {
        let outcome = match e {
            Error::Protocol(vouch_proto::Error::Refused(vouch_proto::error::Refusal::Denied)) => {
                "refused"
            }
            Error::Backend(b) if b.is_unavailable() => "busy",
            Error::Protocol(vouch_proto::Error::Refused(_)) => "busy",
            Error::Timeout(_) | Error::Protocol(vouch_proto::Error::Timeout) => "timeout",
            Error::Disconnected => "disconnected",
            Error::Protocol(vouch_proto::Error::PeerMisbehaved(
                vouch_proto::error::PeerMisbehaved::UnknownTicket,
            )) => "ticket_unknown",
            _ => "failed",
        };
        self.handshakes.with_label_values(&[outcome]).inc();
    }

    /// The number of live sessions changed.
    pub fn sessions_changed(&self, n: usize) {
        self.sessions.set(n as i64);
    }

    /// A record came in.
    pub fn record_in(&self, bytes: usize) {
        self.records_in.inc();
        self.bytes_in.inc_by(bytes as u64);
    }

    /// A record went out.
    pub fn record_out(&self, bytes: usize) {
        self.records_out.inc();
        self.bytes_out.inc_by(bytes as u64);
    }

    /// A record was rejected.
    pub fn record_rejected(&self) {
        self.records_rejected.inc();
    }

    /// A link error on a transport.
    pub fn link_error(&self, transport: &str) {
        self.link_errors.with_label_values(&[transport]).inc();
    }

    /// A revocation event was applied.
    pub fn revocation_applied(&self) {
        self.revocations.inc();
    }

    /// A trust-anchor update record went to a peripheral.
    pub fn anchor_update_sent(&self) {
        self.anchor_updates_sent.inc();
    }

    /// Trust-anchor updates sent so far.
    pub fn anchor_updates_sent(&self) -> u64 {
        self.anchor_updates_sent.get()
    }

    /// The gateway holds `n` trust-anchor updates, the last with `serial`.
    pub fn anchor_updates_held(&self, n: usize, serial: u32) {
        self.anchor_updates_held.set(n as i64);
        self.anchor_update_serial.set(i64::from(serial));
    }

    /// A fetch of trust-anchor updates failed.
    pub fn anchor_update_fetch_failed(&self) {
        self.anchor_update_fetch_failures.inc();
    }

    /// Whether resumption is refused for want of the revocation feed
    /// (SPEC.md §11.5).
    pub fn set_resumption_suspended(&self, suspended: bool) {
        self.resumption_suspended.set(i64::from(suspended));
    }

    /// Whether the last update said resumption is refused.
    pub fn resumption_is_suspended(&self) -> bool {
        self.resumption_suspended.get() != 0
    }

    /// Two sessions of one identity were live at once on this gateway
    /// (SPEC.md §11.6).
    pub fn clone_suspected(&self) {
        self.clones_suspected.inc();
    }

    /// Suspected clones counted so far.
    pub fn clones_suspected(&self) -> u64 {
        self.clones_suspected.get()
    }

    /// The client certificate in use expires at `not_after`.
    pub fn set_certificate_expiry(&self, not_after: crate::clock::WallTime) {
        self.certificate_expiry
            .set(i64::try_from(not_after.0 / 1000).unwrap_or(i64::MAX));
    }

    /// A renewal of the client certificate succeeded or failed.
    pub fn certificate_renewed(&self, ok: bool) {
        self.certificate_renewals
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// Renewals of the client certificate counted with this outcome.
    pub fn certificate_renewals(&self, outcome: &str) -> u64 {
        self.certificate_renewals
            .with_label_values(&[outcome])
            .get()
    }

    /// Handshakes counted with this outcome label (for tests and `status`).
    pub fn handshakes(&self, outcome: &str) -> u64 {
        self.handshakes.with_label_values(&[outcome]).get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
