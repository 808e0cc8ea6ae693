//! The run's report: JSON (documented in `simulator/README.md`) and the
//! summary table.

use std::collections::BTreeMap;

use serde::Serialize;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Peripherals in the fleet.
    pub peripherals: usize,
    /// Gateways in the fleet.
    pub gateways: usize,
    /// `inproc` or `https`.
    pub backend_mode: String,
    /// `sqlite` or `postgresql`.
    pub database: String,
    /// Honest full handshakes and resumptions together.
    pub handshakes: Handshakes,
    /// Resumptions (also counted in `handshakes`).
    pub resumptions: Resumptions,
    /// Modelled latency of successful full handshakes, ms (virtual time).
    pub latency_ms: Percentiles,
    /// Modelled latency of successful resumptions, ms.
    pub resumption_latency_ms: Percentiles,
    /// Bytes on the air.
    pub bytes_on_air: BytesOnAir,
    /// The link model's counters.
    pub link: LinkCounters,
    /// The backend's side.
    pub backend: BackendFigures,
    /// Per attack class run.
    pub attacks: BTreeMap<String, AttackTally>,
    /// Admin call to live session closed, ms (wall clock), where revocation
    /// was exercised.
    pub revocation_ms: Option<Percentiles>,
    /// Of those, the revocations whose session was on a gateway of another
    /// backend instance than the one the operator called (`--backend-instances`
    /// above 1): how fast instances tell each other.
    pub revocation_other_instance_ms: Option<Percentiles>,
    /// Of `revocation_ms`, the admin call itself (its wait behind the calls
    /// side by side included): the rest is the feed reaching the gateway.
    pub revocation_call_ms: Option<Percentiles>,
    /// Honest handshakes that failed for no fault the scenario injected.
    pub honest_rejected: u64,
    /// Most live sessions at once.
    pub sessions_peak: usize,
    /// Length of the timeline, virtual seconds.
    pub virtual_s: f64,
    /// Wall-clock seconds of the run (setup included).
    pub wall_s: f64,
    /// Honest handshakes per wall-clock second of the connect phases.
    pub handshakes_per_s: f64,
    /// Peak resident memory of the process, MiB (Linux; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// The backend's load over the run, one sample a second (wall clock).
    pub backend_load: Vec<LoadSample>,
}

/// The backend's load at one moment of the run (wall clock).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// What the run was doing (the timeline's event, or setup).
    pub phase: String,
    /// Honest handshakes finished so far.
    pub handshakes: u64,
    /// Vouches issued so far.
    pub vouches: u64,
    /// Vouches per second since the previous sample.
    pub vouches_per_s: f64,
    /// Gateway API requests in the backend at that moment (vouches,
    /// session reports, feed polls).
    pub requests_in_flight: usize,
    /// Gateways' revocation-feed polls waiting in the backend.
    pub feed_waiters: i64,
    /// Resident memory of the process, MiB.
    pub rss_mib: f64,
}

/// Resident memory of the process now, MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    status_kib("VmRSS:").map_or(0.0, |kb| round2(kb / 1024.0))
}

fn status_kib(field: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
}

/// Handshake counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Handshakes {
    /// Completed (full or resumed).
    pub ok: u64,
    /// Failed, for any reason.
    pub failed: u64,
    /// Failed but excused by an injected fault (outage, radio drops) or
    /// expected (the device or its gateway was revoked).
    pub excused: u64,
    /// Full handshakes completed.
    pub full_ok: u64,
}

/// Resumption counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resumptions {
    /// Completed.
    pub ok: u64,
    /// Tickets the gateway rejected (the device then ran a full handshake).
    pub rejected: u64,
}

/// Distribution summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `v` (sorted here), rounded to 0.01.
    pub fn of(v: &mut [f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            round2(v[i])
        };
        Self {
            count: v.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: round2(v[v.len() - 1]),
        }
    }
}

/// Rounds to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Bytes on air.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BytesOnAir {
    /// Per successful full handshake: link-layer bytes (headers, CRCs,
    /// acknowledgements and retransmissions included).
    pub per_handshake: f64,
    /// Per successful resumption.
    pub per_resumption: f64,
    /// Vouch message bytes per full handshake (before framing).
    pub message_bytes_per_handshake: f64,
    /// Every handshake byte the fleet put on the air.
    pub total: u64,
}

/// Link model counters over every honest attempt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkCounters {
    /// Vouch fragments (ATT writes and notifications).
    pub fragments: u64,
    /// Link-layer packets.
    pub packets: u64,
    /// Retransmitted link-layer packets.
    pub retransmissions: u64,
    /// Connections the model dropped.
    pub disconnects: u64,
    /// The per-gateway link cap (`[link] max_links`; 0: none).
    pub max_links: usize,
    /// Most links any gateway's real central held at once, in the run's
    /// connect phases (at most `max_links`; varies from run to run).
    pub peak_links: usize,
    /// Most links any gateway held at once in the modelled (virtual) time
    /// line of the connect phases (at most `max_links`).
    pub peak_links_modelled: usize,
    /// Connections that waited for a free link.
    pub queued: u64,
    /// Modelled wait for a free link of the connections that waited, ms
    /// (included in `latency_ms` and `resumption_latency_ms`).
    pub queue_wait_ms: Percentiles,
}

/// The backend's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendFigures {
    /// Vouches issued (backend metric `vouch_answers_total{outcome="vouched"}`).
    pub vouches: u64,
    /// Vouches per wall-clock second of the connect phases.
    pub vouches_per_s: f64,
    /// Refusals by audit reason (backend metric).
    pub refusals: BTreeMap<String, u64>,
    /// Alerts raised (lockouts, clones).
    pub alerts: BTreeMap<String, u64>,
}

/// One attack class's outcome.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AttackTally {
    /// What the adversary tried.
    pub attempts: u64,
    /// Attempts that got anything: a session, a vouch used, a record accepted.
    pub accepted: u64,
    /// Alerts the backend raised meanwhile (lockouts, clone alerts).
    pub detected: u64,
}

impl Report {
    /// The part of the report that depends only on the scenario, the size
    /// and the seed: wall-clock figures and the machine's memory left out.
    pub fn deterministic(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in [
                "wall_s",
                "handshakes_per_s",
                "peak_rss_mib",
                "backend_mode",
                "backend_load",
            ] {
                o.remove(k);
            }
            if let Some(l) = o.get_mut("link").and_then(|l| l.as_object_mut()) {
                l.remove("peak_links");
            }
            for k in [
                "revocation_ms",
                "revocation_other_instance_ms",
                "revocation_call_ms",
            ] {
                if let Some(r) = o.get_mut(k).and_then(|r| r.as_object_mut()) {
                    r.retain(|k, _| k == "count");
                }
            }
            if let Some(b) = o.get_mut("backend").and_then(|b| b.as_object_mut()) {
                b.remove("vouches_per_s");
            }
        }
        v
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}): {} peripherals, {} gateways, backend {} on {}",
            self.scenario,
            self.seed,
            self.peripherals,
            self.gateways,
            self.backend_mode,
            self.database
        );
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<34} {v}");
        };
        let h = &self.handshakes;
        row(
            &mut s,
            "handshakes ok / failed (excused)",
            format!("{} / {} ({})", h.ok, h.failed, h.excused),
        );
        row(
            &mut s,
            "full / resumed / tickets rejected",
            format!(
                "{} / {} / {}",
                h.full_ok, self.resumptions.ok, self.resumptions.rejected
            ),
        );
        row(
            &mut s,
            "latency ms p50 / p90 / p99 (model)",
            format!(
                "{} / {} / {}",
                self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99
            ),
        );
        row(
            &mut s,
            "resumption ms p50 / p99 (model)",
            format!(
                "{} / {}",
                self.resumption_latency_ms.p50, self.resumption_latency_ms.p99
            ),
        );
        row(
            &mut s,
            "bytes on air / handshake, resumption",
            format!(
                "{} ({} message bytes), {}",
                self.bytes_on_air.per_handshake,
                self.bytes_on_air.message_bytes_per_handshake,
                self.bytes_on_air.per_resumption
            ),
        );
        row(
            &mut s,
            "LL packets / retransmitted / drops",
            format!(
                "{} / {} / {}",
                self.link.packets, self.link.retransmissions, self.link.disconnects
            ),
        );
        if self.link.max_links > 0 {
            row(
                &mut s,
                "links cap / peak (model, real) / queued",
                format!(
                    "{} / {}, {} / {} (wait ms p50 {} p99 {})",
                    self.link.max_links,
                    self.link.peak_links_modelled,
                    self.link.peak_links,
                    self.link.queued,
                    self.link.queue_wait_ms.p50,
                    self.link.queue_wait_ms.p99
                ),
            );
        }
        row(
            &mut s,
            "backend vouches (per s, wall)",
            format!(
                "{} ({:.0}/s)",
                self.backend.vouches, self.backend.vouches_per_s
            ),
        );
        if let Some(r) = &self.revocation_ms {
            row(
                &mut s,
                "revocation ms p50 / p99 / max (wall)",
                format!("{} / {} / {} over {}", r.p50, r.p99, r.max, r.count),
            );
        }
        if let Some(r) = &self.revocation_other_instance_ms {
            row(
                &mut s,
                "  of which at another instance",
                format!("{} / {} / {} over {}", r.p50, r.p99, r.max, r.count),
            );
        }
        if let Some(r) = &self.revocation_call_ms {
            row(
                &mut s,
                "  the admin call alone",
                format!("{} / {} / {} over {}", r.p50, r.p99, r.max, r.count),
            );
        }
        for (k, a) in &self.attacks {
            row(
                &mut s,
                &format!("attack {k}"),
                format!(
                    "attempts {} accepted {} detected {}",
                    a.attempts, a.accepted, a.detected
                ),
            );
        }
        row(&mut s, "honest rejected", self.honest_rejected.to_string());
        row(
            &mut s,
            "peak sessions / virtual s",
            format!("{} / {:.1}", self.sessions_peak, self.virtual_s),
        );
        row(
            &mut s,
            "wall s / handshakes per s / RSS MiB",
            format!(
                "{:.2} / {:.0} / {:.0}",
                self.wall_s, self.handshakes_per_s, self.peak_rss_mib
            ),
        );
        s
    }
}

/// Peak resident set size of this process, MiB (`VmHWM`), 0 if unknown.
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:").map_or(0.0, |kb| round2(kb / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }
}
