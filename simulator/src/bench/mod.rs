//! `vouch-sim bench`: Vouch against what a fleet would otherwise use (issue 8,
//! DESIGN.md §6), measured in one run, in one process, on one machine.
//!
//! What is measured, and how:
//!
//! - **CPU per role.** Every handshake runs in memory on one thread, all its
//!   parties in the same loop. Each party's own calls (building, reading and
//!   writing messages, finishing) are timed with [`Instant`] and summed per
//!   handshake, so every figure is that party's work alone; copying bytes
//!   "on the air" between the parties is not counted. A row reports the
//!   median over all iterations, after a warm-up. On a single thread doing
//!   pure computation, wall time is CPU time except when the scheduler takes
//!   the core away, which the median discards. Vouch's backend figure is
//!   the protocol work of one vouch (open the hello, verify, sign) without
//!   the registry; the registry, HTTPS and storage are in the throughput row.
//! - **Bytes on air.** The real encoded messages (Vouch, EDHOC, Noise) or
//!   every TLS record both ways, counted per flight.
//! - **Backend throughput.** The real backend (HTTPS with TLS 1.3 and the
//!   gateway's client certificate, SQLite, group commit) on its own runtime,
//!   driven over keep-alive connections by a client runtime in the same
//!   process; vouches per second per core divide by the CPU time of the
//!   server's threads only. `--backend-only` measures just this (and the
//!   rustls server it is compared with), `--database-url` on PostgreSQL.
//!   The raw crypto bound is one vouch's primitives in a tight loop on one
//!   thread, timed by that thread's CPU time.
//! - **Peers**, each as its authors ship it, release build, defaults: rustls
//!   0.23 TLS 1.3 with client certificates in every configuration an
//!   operator could pick (ring and aws-lc-rs, rustls's default provider;
//!   Ed25519 and P-256 certificates; X25519 and X25519MLKEM768, rustls's
//!   default key exchange, which ring lacks), full and resumed, in memory
//!   and over loopback TCP; lakers 0.8 EDHOC (method 3, the only one it
//!   implements, cipher suite 2), snow 0.10 Noise IK and XX (25519,
//!   ChaChaPoly, BLAKE2s).
//! - **Against rustls**, every ratio (device CPU, all parties' CPU, bytes,
//!   the backend per core against a rustls server in memory and over TCP)
//!   takes the best rustls configuration measured for that figure, and the
//!   report names it (DESIGN.md §6: compare with every peer's best
//!   configuration, never a weaker one).
//!
//! This is a benchmark, not a test: CI only checks that `--quick` still runs
//! and writes its JSON.

mod backend;
mod edhoc;
mod noise;
mod table;
mod tls;
mod vouch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use table::{render, render_backend};
pub use tls::TcpHandshake;

/// How much to measure.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// A smoke run: few iterations and few vouches (CI, debug builds).
    pub quick: bool,
    /// Handshakes per row (overrides the default of the mode).
    pub iterations: Option<usize>,
    /// Vouches per throughput mode, single and batched (overrides the default).
    pub vouches: Option<usize>,
    /// Where to write the JSON report, if anywhere.
    pub report: Option<PathBuf>,
    /// Only the backend's throughput against its bounds ([`run_backend`]).
    pub backend_only: bool,
    /// The backend's database for the throughput run (PostgreSQL); SQLite in
    /// a temporary directory when `None`.
    pub database_url: Option<String>,
}

impl BenchOptions {
    fn iterations(&self) -> usize {
        self.iterations
            .unwrap_or(if self.quick { 20 } else { 1000 })
            .max(1)
    }

    fn warmup(&self) -> usize {
        (self.iterations() / 10).clamp(1, 100)
    }

    /// Handshakes over loopback TCP per rustls configuration and kind.
    fn tcp_handshakes(&self) -> usize {
        if self.quick {
            64
        } else {
            3000
        }
    }

    fn vouches(&self) -> usize {
        self.vouches
            .unwrap_or(if self.quick { 64 } else { 6000 })
            .max(1)
    }
}

/// Why the benchmark could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A Vouch role refused a message of the benchmark's own handshake.
    #[error("vouch: {0}")]
    Proto(#[from] vouch_proto::Error),
    /// rustls refused its configuration or a handshake.
    #[error("rustls: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls could not verify client certificates with this configuration.
    #[error("rustls client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rcgen could not make a certificate.
    #[error("rcgen: {0}")]
    Certificate(#[from] rcgen::Error),
    /// snow refused a pattern or a message.
    #[error("snow: {0}")]
    Noise(#[from] snow::Error),
    /// lakers refused a message.
    #[error("lakers: {0:?}")]
    Edhoc(lakers::EDHOCError),
    /// Setting up or driving the real backend failed.
    #[error("backend ({step}): {source}")]
    Backend {
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing a file, or moving bytes.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The report could not be serialized.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A handshake did not end the way the benchmark expects (for example a
    /// resumption that did not resume): the figures would be wrong.
    #[error("benchmark invariant: {0}")]
    Invariant(&'static str),
}

impl From<lakers::EDHOCError> for BenchError {
    fn from(e: lakers::EDHOCError) -> Self {
        Self::Edhoc(e)
    }
}

/// Everything one run measured; written as the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Where and how it ran.
    pub machine: Machine,
    /// How the figures were taken.
    pub method: Method,
    /// Vouch's own handshakes.
    pub vouch: VouchReport,
    /// The backend over real HTTPS against the raw crypto bound and a rustls
    /// server.
    pub backend: BackendReport,
    /// The handshakes Vouch is compared with.
    pub peers: Peers,
    /// The rustls configurations: measured, not measured, and the best for
    /// each figure.
    pub rustls: RustlsSummary,
    /// Vouch ÷ each peer (below 1: Vouch needs less).
    pub ratios: Ratios,
}

/// The machine and build the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// The command that produced the report.
    pub command: String,
    /// Wall time of the whole run, seconds.
    pub duration_s: f64,
}

/// How the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Method {
    /// Handshakes per row (after `warmup` more that are not counted).
    pub iterations: usize,
    /// Handshakes run first and not counted.
    pub warmup: usize,
    /// How CPU time is taken.
    pub cpu: &'static str,
    /// How bytes are counted.
    pub bytes: &'static str,
}

/// What a handshake gives its parties, so that the numbers are not misread.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Provides {
    /// Both sides authenticated, and by what.
    pub mutual_auth: &'static str,
    /// Whether a third party vouches for a side at handshake time.
    pub third_party: &'static str,
    /// Whose identity is hidden from whom.
    pub identity_hiding: &'static str,
}

/// One message or flight on the air.
#[derive(Debug, Clone, Serialize)]
pub struct Flight {
    /// What it is (for example `Hello` or `flight 2`).
    pub name: String,
    /// `initiator` (the device) or `responder`.
    pub from: &'static str,
    /// Its size.
    pub bytes: usize,
    /// Sent after both sides completed (for example TLS session tickets).
    pub post_handshake: bool,
}

/// Bytes on the air of one handshake.
#[derive(Debug, Clone, Serialize)]
pub struct Bytes {
    /// Every message or flight, in order.
    pub messages: Vec<Flight>,
    /// All of them together.
    pub total: usize,
}

impl Bytes {
    fn new(messages: Vec<Flight>) -> Self {
        let total = messages.iter().map(|m| m.bytes).sum();
        Self { messages, total }
    }

    /// Round trips on the air until both sides hold their keys: flights
    /// before the post-handshake ones, over two.
    fn round_trips(&self) -> f64 {
        let flights = self
            .messages
            .iter()
            .filter(|m| !m.post_handshake)
            .fold((0usize, None), |(n, last), m| {
                if last == Some(m.from) {
                    (n, last)
                } else {
                    (n + 1, Some(m.from))
                }
            })
            .0;
        flights as f64 / 2.0
    }
}

/// CPU time of Vouch's three roles, microseconds (medians).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoleCpu {
    /// The peripheral (the device).
    pub peripheral: f64,
    /// The gateway.
    pub gateway: f64,
    /// The backend's protocol work (zero on resumption).
    pub backend: f64,
    /// All three (median of the per-handshake sums).
    pub total: f64,
}

/// One kind of Vouch handshake.
#[derive(Debug, Clone, Serialize)]
pub struct VouchHandshake {
    /// CPU per role, µs.
    pub cpu_us: RoleCpu,
    /// Bytes on the air between peripheral and gateway.
    pub bytes_on_air: Bytes,
    /// Round trips on the air.
    pub round_trips: f64,
    /// Round trips between gateway and backend.
    pub backend_round_trips: u32,
}

/// Vouch's full handshake (the top-level fields) and resumption.
#[derive(Debug, Clone, Serialize)]
pub struct VouchReport {
    /// The full handshake.
    #[serde(flatten)]
    pub full: VouchHandshake,
    /// Resumption with the same gateway, without the backend.
    pub resumption: VouchHandshake,
    /// What it provides.
    pub provides: Provides,
}

/// CPU of a two-party handshake, µs (medians).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PeerCpu {
    /// The initiator (the device's side: TLS client, EDHOC and Noise initiator).
    pub initiator: f64,
    /// The responder (TLS server).
    pub responder: f64,
    /// Both (median of the per-handshake sums).
    pub total: f64,
}

/// One kind of peer handshake.
#[derive(Debug, Clone, Serialize)]
pub struct PeerHandshake {
    /// CPU per side, µs.
    pub cpu_us: PeerCpu,
    /// Bytes both ways.
    pub bytes_on_air: Bytes,
    /// Round trips until both sides hold keys.
    pub round_trips: f64,
    /// The same handshake over loopback TCP (rustls only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHandshake>,
}

/// One peer: its full handshake (the top-level fields) and, where it has
/// one, its resumption.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Short name for tables.
    pub name: String,
    /// What exactly runs.
    pub what: String,
    /// The full handshake.
    #[serde(flatten)]
    pub full: PeerHandshake,
    /// The resumed handshake, where the peer has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<PeerHandshake>,
    /// What it provides.
    pub provides: Provides,
}

/// The peers. In JSON one map by report key: each rustls configuration
/// measured (`rustls_<provider>_<certificates>_<key exchange>`, for example
/// `rustls_aws_lc_rs_ed25519_x25519`), then `lakers_edhoc`, `snow_ik` and
/// `snow_xx`.
#[derive(Debug, Clone)]
pub struct Peers {
    /// rustls TLS 1.3 with client certificates: (report key, report) per
    /// configuration measured, in table order.
    pub rustls: Vec<(String, PeerReport)>,
    /// lakers EDHOC.
    pub lakers_edhoc: PeerReport,
    /// snow Noise IK.
    pub snow_ik: PeerReport,
    /// snow Noise XX.
    pub snow_xx: PeerReport,
}

impl Peers {
    /// The peers with their report keys, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PeerReport)> {
        self.rustls.iter().map(|(k, p)| (k.as_str(), p)).chain([
            ("lakers_edhoc", &self.lakers_edhoc),
            ("snow_ik", &self.snow_ik),
            ("snow_xx", &self.snow_xx),
        ])
    }

    /// The peers other than rustls, with their report keys.
    pub fn others(&self) -> [(&'static str, &PeerReport); 3] {
        [
            ("lakers_edhoc", &self.lakers_edhoc),
            ("snow_ik", &self.snow_ik),
            ("snow_xx", &self.snow_xx),
        ]
    }
}

impl Serialize for Peers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// The best value of one figure among the rustls configurations measured.
#[derive(Debug, Clone, Serialize)]
pub struct Best {
    /// The configuration's report key.
    pub config: String,
    /// Its name in tables.
    pub name: String,
    /// The figure (µs, bytes, or per second).
    pub value: f64,
}

impl Best {
    /// The smallest (`lowest`) or largest value among `candidates`
    /// (report key, name, value); `None` when there are none.
    fn of<'a>(
        candidates: impl IntoIterator<Item = (&'a str, &'a str, f64)>,
        lowest: bool,
    ) -> Option<Best> {
        candidates
            .into_iter()
            .filter(|(_, _, v)| v.is_finite())
            .min_by(|a, b| {
                if lowest {
                    a.2.total_cmp(&b.2)
                } else {
                    b.2.total_cmp(&a.2)
                }
            })
            .map(|(config, name, value)| Best {
                config: config.to_owned(),
                name: name.to_owned(),
                value,
            })
    }
}

/// The best rustls configuration for each figure of one kind of handshake.
#[derive(Debug, Clone, Serialize)]
pub struct BestOf {
    /// The least client (device) CPU, µs.
    pub client_cpu_us: Best,
    /// The least server CPU, µs.
    pub server_cpu_us: Best,
    /// The least CPU of both sides, µs.
    pub total_cpu_us: Best,
    /// The fewest bytes on air.
    pub bytes_on_air: Best,
}

impl BestOf {
    /// The best of `rows` (report key, name, handshake figures).
    fn of(rows: &[(&str, &str, Figures)]) -> Option<Self> {
        let pick = |f: fn(&Figures) -> f64| {
            Best::of(rows.iter().map(|(k, n, fig)| (*k, *n, f(fig))), true)
        };
        Some(Self {
            client_cpu_us: pick(|f| f.client)?,
            server_cpu_us: pick(|f| f.server)?,
            total_cpu_us: pick(|f| f.total)?,
            bytes_on_air: pick(|f| f.bytes)?,
        })
    }
}

/// The figures of one handshake that [`BestOf`] chooses from.
#[derive(Debug, Clone, Copy)]
struct Figures {
    client: f64,
    server: f64,
    total: f64,
    bytes: f64,
}

impl Figures {
    fn in_memory(h: &PeerHandshake) -> Self {
        Self {
            client: h.cpu_us.initiator,
            server: h.cpu_us.responder,
            total: h.cpu_us.total,
            bytes: h.bytes_on_air.total as f64,
        }
    }

    fn tcp(h: &PeerHandshake) -> Option<Self> {
        h.tcp.map(|t| Self {
            client: t.client_cpu_us,
            server: t.server_cpu_us,
            total: t.client_cpu_us + t.server_cpu_us,
            bytes: t.bytes_on_air,
        })
    }
}

/// A rustls configuration that could not be measured, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotMeasured {
    /// What its report key would be.
    pub config: String,
    /// Its name in tables.
    pub name: String,
    /// Why it cannot run.
    pub why: &'static str,
}

/// The rustls configurations of the run.
#[derive(Debug, Clone, Serialize)]
pub struct RustlsSummary {
    /// Report keys of the configurations measured (in `peers`).
    pub measured: Vec<String>,
    /// The combinations that do not exist.
    pub not_measured: Vec<NotMeasured>,
    /// The best configuration per figure, full handshakes in memory.
    pub best_full: BestOf,
    /// The same, resumed handshakes in memory.
    pub best_resumed: BestOf,
    /// The same, full handshakes over loopback TCP.
    pub best_full_tcp: BestOf,
    /// The same, resumed handshakes over loopback TCP.
    pub best_resumed_tcp: BestOf,
}

impl RustlsSummary {
    fn of(rustls: &[(String, PeerReport)]) -> Result<Self, BenchError> {
        let rows = |pick: fn(&PeerReport) -> Option<Figures>| {
            rustls
                .iter()
                .filter_map(|(k, p)| Some((k.as_str(), p.name.as_str(), pick(p)?)))
                .collect::<Vec<_>>()
        };
        let none = || BenchError::Invariant("no rustls configuration measured");
        Ok(Self {
            measured: rustls.iter().map(|(k, _)| k.clone()).collect(),
            not_measured: tls::TlsConfig::matrix()
                .into_iter()
                .filter_map(|c| {
                    Some(NotMeasured {
                        config: c.key(),
                        name: format!("rustls mTLS {c}"),
                        why: c.unavailable()?,
                    })
                })
                .collect(),
            best_full: BestOf::of(&rows(|p| Some(Figures::in_memory(&p.full)))).ok_or_else(none)?,
            best_resumed: BestOf::of(&rows(|p| p.resumed.as_ref().map(Figures::in_memory)))
                .ok_or_else(none)?,
            best_full_tcp: BestOf::of(&rows(|p| Figures::tcp(&p.full))).ok_or_else(none)?,
            best_resumed_tcp: BestOf::of(&rows(|p| p.resumed.as_ref().and_then(Figures::tcp)))
                .ok_or_else(none)?,
        })
    }
}

/// Vouch ÷ a peer (below 1: Vouch needs less).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratio {
    /// Vouch peripheral CPU ÷ peer initiator CPU.
    pub device_cpu: f64,
    /// Vouch CPU of all three roles ÷ peer CPU of both sides.
    pub total_cpu: f64,
    /// Vouch bytes on air ÷ peer bytes.
    pub bytes_on_air: f64,
}

impl Ratio {
    fn of(vouch: &VouchHandshake, peer: &PeerHandshake) -> Self {
        Self {
            device_cpu: vouch.cpu_us.peripheral / peer.cpu_us.initiator,
            total_cpu: vouch.cpu_us.total / peer.cpu_us.total,
            bytes_on_air: vouch.bytes_on_air.total as f64 / peer.bytes_on_air.total as f64,
        }
    }
}

/// Vouch against one peer, full handshakes and, where the peer has one,
/// resumption against resumption.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PeerRatios {
    /// Full handshake against full handshake.
    #[serde(flatten)]
    pub full: Ratio,
    /// Vouch resumption against the peer's resumption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Ratio>,
}

/// Vouch ÷ the best rustls configuration for one figure.
#[derive(Debug, Clone, Serialize)]
pub struct RatioVs {
    /// Vouch's figure ÷ the configuration's.
    pub ratio: f64,
    /// The configuration's report key.
    pub against: String,
    /// Its name in tables.
    pub against_name: String,
}

impl RatioVs {
    fn of(vouch: f64, best: &Best) -> Self {
        Self {
            ratio: vouch / best.value,
            against: best.config.clone(),
            against_name: best.name.clone(),
        }
    }
}

/// Vouch ÷ rustls, each figure against the rustls configuration best at it.
#[derive(Debug, Clone, Serialize)]
pub struct RatiosVsBest {
    /// Vouch peripheral CPU ÷ the least rustls client CPU.
    pub device_cpu: RatioVs,
    /// Vouch CPU of all three roles ÷ the least rustls CPU of both sides.
    pub total_cpu: RatioVs,
    /// Vouch bytes on air ÷ the fewest rustls bytes.
    pub bytes_on_air: RatioVs,
}

impl RatiosVsBest {
    fn of(vouch: &VouchHandshake, best: &BestOf) -> Self {
        Self {
            device_cpu: RatioVs::of(vouch.cpu_us.peripheral, &best.client_cpu_us),
            total_cpu: RatioVs::of(vouch.cpu_us.total, &best.total_cpu_us),
            bytes_on_air: RatioVs::of(vouch.bytes_on_air.total as f64, &best.bytes_on_air),
        }
    }
}

/// Vouch ÷ the best rustls configurations, in memory.
#[derive(Debug, Clone, Serialize)]
pub struct RustlsRatios {
    /// Full handshake against the best full handshakes.
    pub full: RatiosVsBest,
    /// Resumption against the best resumed handshakes.
    pub resumed: RatiosVsBest,
}

/// Vouch ÷ each peer.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Against rustls: each figure against its best configuration (named).
    pub rustls: RustlsRatios,
    /// Against lakers EDHOC.
    pub lakers_edhoc: PeerRatios,
    /// Against snow Noise IK.
    pub snow_ik: PeerRatios,
    /// Against snow Noise XX.
    pub snow_xx: PeerRatios,
}

impl Ratios {
    fn of(vouch: &VouchReport, peers: &Peers, rustls: &RustlsSummary) -> Self {
        let r = |p: &PeerReport| PeerRatios {
            full: Ratio::of(&vouch.full, &p.full),
            resumed: p
                .resumed
                .as_ref()
                .map(|res| Ratio::of(&vouch.resumption, res)),
        };
        Self {
            rustls: RustlsRatios {
                full: RatiosVsBest::of(&vouch.full, &rustls.best_full),
                resumed: RatiosVsBest::of(&vouch.resumption, &rustls.best_resumed),
            },
            lakers_edhoc: r(&peers.lakers_edhoc),
            snow_ik: r(&peers.snow_ik),
            snow_xx: r(&peers.snow_xx),
        }
    }

    /// The ratios against the peers other than rustls, with their report
    /// keys, in table order.
    pub fn others(&self) -> [(&'static str, &PeerRatios); 3] {
        [
            ("lakers_edhoc", &self.lakers_edhoc),
            ("snow_ik", &self.snow_ik),
            ("snow_xx", &self.snow_xx),
        ]
    }
}

/// The backend over real HTTPS (DESIGN.md §6).
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// Single vouches (one per request) per second per server core.
    pub vouches_per_s: f64,
    /// Batched vouches per second per server core.
    pub vouches_per_s_batched: f64,
    /// Single vouches per second of wall time (all cores).
    pub wall_vouches_per_s: f64,
    /// Batched vouches per second of wall time (all cores).
    pub wall_vouches_per_s_batched: f64,
    /// One vouch's primitives (open, verify, sign) per second on one core.
    pub crypto_bound_per_s: f64,
    /// One vouch's primitives, µs.
    pub crypto_bound_us: f64,
    /// `vouches_per_s / crypto_bound_per_s` (issue 21: ≥ 0.5).
    pub ratio_to_bound: f64,
    /// `vouches_per_s_batched / crypto_bound_per_s` (issue 21: ≥ 0.85).
    pub ratio_to_bound_batched: f64,
    /// Full mutual-TLS handshakes per second per core of a rustls server in
    /// memory (one thread, the server side's CPU): the fastest configuration
    /// measured (the stricter target).
    pub rustls_server_handshakes_per_s: f64,
    /// That configuration's report key.
    pub rustls_server_config: String,
    /// Its name in tables.
    pub rustls_server_config_name: String,
    /// `vouches_per_s / rustls_server_handshakes_per_s` (target ≥ 1.5).
    pub vs_rustls_server: f64,
    /// `vouches_per_s_batched / rustls_server_handshakes_per_s` (target ≥ 1.5).
    pub vs_rustls_server_batched: f64,
    /// Full mutual-TLS handshakes per second per server core of a
    /// tokio-rustls server over loopback TCP (accept, handshake, tickets,
    /// close; server threads' CPU only): the fastest configuration measured.
    pub rustls_server_tcp_handshakes_per_s: f64,
    /// That configuration's report key.
    pub rustls_server_tcp_config: String,
    /// Its name in tables.
    pub rustls_server_tcp_config_name: String,
    /// `vouches_per_s / rustls_server_tcp_handshakes_per_s`.
    pub vs_rustls_server_tcp: f64,
    /// `vouches_per_s_batched / rustls_server_tcp_handshakes_per_s`.
    pub vs_rustls_server_tcp_batched: f64,
    /// Every rustls configuration's server rate, in memory and over TCP.
    pub rustls_servers: Vec<ServerRate>,
    /// The vouch path's levers (issue 21), one by one, each on a backend of
    /// its own in this run: the last is the backend's default, whose
    /// figures are the ones above.
    pub levers: Vec<LeverReport>,
    /// Vouches per mode.
    pub vouches: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Items per batch request.
    pub batch: usize,
    /// Server runtime worker threads.
    pub server_threads: usize,
    /// The backend's database engine in the throughput run.
    pub database: &'static str,
    /// How the rustls server figure was taken.
    pub rustls_server_method: &'static str,
}

/// Full mutual-TLS handshakes per second per core of a rustls server in one
/// configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ServerRate {
    /// The configuration's report key.
    pub config: String,
    /// Its name in tables.
    pub name: String,
    /// In memory: `1e6 /` the server side's median CPU per full handshake.
    pub in_memory_per_s: f64,
    /// Over loopback TCP, per CPU second of the server's threads.
    pub tcp_per_s: f64,
}

/// Accumulates the time of one party's calls within one handshake.
#[derive(Debug, Default, Clone, Copy)]
struct Stopwatch(Duration);

impl Stopwatch {
    /// Runs `f`, adding its duration.
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0 += t.elapsed();
        out
    }

    fn us(self) -> f64 {
        self.0.as_secs_f64() * 1e6
    }
}

/// Per-iteration times of `N` parties; medians per party and of the sums.
#[derive(Debug)]
struct Samples<const N: usize> {
    rows: Vec<[f64; N]>,
}

impl<const N: usize> Samples<N> {
    fn with_capacity(n: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, parties: [Stopwatch; N]) {
        self.rows.push(parties.map(Stopwatch::us));
    }

    fn median_of(&self, party: usize) -> f64 {
        median(self.rows.iter().map(|r| r[party]).collect())
    }

    fn median_total(&self) -> f64 {
        median(self.rows.iter().map(|r| r.iter().sum()).collect())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// CPU seconds used so far by the calling thread, if Linux tells.
fn this_thread_cpu_s() -> Option<f64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|ns| ns as f64 / 1e9)
}

/// CPU seconds used so far by this process's threads whose name starts with
/// one of `prefixes` (nanosecond run time from `schedstat`).
fn thread_cpu_s(prefixes: &[&str]) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ns = 0u64;
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim().starts_with(p)) {
            continue;
        }
        ns += std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

fn machine(command: String, duration_s: f64) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        command,
        duration_s,
    }
}

/// Runs the whole benchmark on a thread of its own (it starts Tokio runtimes
/// for the backend, which cannot nest in the caller's), prints progress to
/// stderr, writes the JSON report if asked, and returns the report.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vouch-bench".into())
        .spawn(move || {
            let _ = tx.send(run_blocking(&opts));
        })?;
    rx.await
        .map_err(|_| BenchError::Invariant("the benchmark thread panicked"))?
}

/// [`run`] on the calling thread, which must not be inside a Tokio runtime.
pub fn run_blocking(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let t0 = Instant::now();
    let n = opts.iterations();
    let warmup = opts.warmup();
    let progress = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    progress(&format!("vouch: {n} full handshakes and {n} resumptions"));
    let vouch = vouch::measure(n, warmup)?;
    let tcp_n = opts.tcp_handshakes();
    let mut rustls = Vec::new();
    for config in tls::TlsConfig::matrix() {
        if config.unavailable().is_some() {
            continue;
        }
        progress(&format!(
            "rustls ({config}): mutual TLS 1.3, {n} full and {n} resumed in memory, \
             {tcp_n} of each over loopback TCP"
        ));
        let mut peer = tls::measure(config, n, warmup)?;
        peer.full.tcp = Some(tls::measure_tcp(
            config,
            rustls::HandshakeKind::Full,
            tcp_n,
        )?);
        if let Some(resumed) = &mut peer.resumed {
            resumed.tcp = Some(tls::measure_tcp(
                config,
                rustls::HandshakeKind::Resumed,
                tcp_n,
            )?);
        }
        rustls.push((config.key(), peer));
    }
    progress("lakers: EDHOC");
    let lakers_edhoc = edhoc::measure(n, warmup)?;
    progress("snow: Noise IK and XX");
    let snow_ik = noise::measure(noise::Pattern::Ik, n, warmup)?;
    let snow_xx = noise::measure(noise::Pattern::Xx, n, warmup)?;
    let peers = Peers {
        rustls,
        lakers_edhoc,
        snow_ik,
        snow_xx,
    };
    let summary = RustlsSummary::of(&peers.rustls)?;
    let servers = peers
        .rustls
        .iter()
        .map(|(key, p)| ServerRate {
            config: key.clone(),
            name: p.name.clone(),
            in_memory_per_s: 1e6 / p.full.cpu_us.responder,
            tcp_per_s: p.full.tcp.map_or(f64::NAN, |t| t.server_handshakes_per_s),
        })
        .collect();
    let backend = measure_backend(opts, &progress, servers)?;

    let ratios = Ratios::of(&vouch, &peers, &summary);
    let command = command_line();
    let report = BenchReport {
        machine: machine(command, t0.elapsed().as_secs_f64()),
        method: Method {
            iterations: n,
            warmup,
            cpu: "per party: the sum of the wall time of its own calls in one handshake \
                  (std::time::Instant), all parties in one thread in memory; median over \
                  the iterations",
            bytes: "Vouch, EDHOC, Noise: encoded messages; TLS: every record both ways, \
                    including the session tickets rustls sends after the handshake (over \
                    TCP also the server's close_notify), counted per flight in memory and \
                    on the client's socket over TCP",
        },
        vouch,
        backend,
        peers,
        rustls: summary,
        ratios,
    };
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        progress(&format!("report written to {}", path.display()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(from: &'static str, bytes: usize, post_handshake: bool) -> Flight {
        Flight {
            name: String::new(),
            from,
            bytes,
            post_handshake,
        }
    }

    #[test]
    fn round_trips_count_direction_changes_before_the_post_handshake_flights() {
        let tls = Bytes::new(vec![
            flight("initiator", 242, false),
            flight("responder", 727, false),
            flight("initiator", 483, false),
            flight("responder", 184, true),
        ]);
        assert_eq!(tls.total, 1636);
        assert_eq!(tls.round_trips(), 1.5);
        let ik = Bytes::new(vec![
            flight("initiator", 96, false),
            flight("responder", 48, false),
        ]);
        assert_eq!(ik.round_trips(), 1.0);
    }

    #[test]
    fn the_rustls_matrix_is_every_provider_certificate_and_key_exchange() {
        let all = tls::TlsConfig::matrix();
        assert_eq!(all.len(), 8);
        let keys: std::collections::BTreeSet<String> = all.iter().map(|c| c.key()).collect();
        assert_eq!(keys.len(), 8, "report keys are unique");
        // ring has no ML-KEM; every other combination runs.
        let missing: Vec<String> = all
            .iter()
            .filter(|c| c.unavailable().is_some())
            .map(|c| c.key())
            .collect();
        assert_eq!(
            missing,
            [
                "rustls_ring_ed25519_x25519mlkem768",
                "rustls_ring_p256_x25519mlkem768"
            ]
        );
        assert!(keys.contains("rustls_aws_lc_rs_ed25519_x25519mlkem768"));
    }

    #[test]
    fn best_takes_the_lowest_or_highest_and_the_first_of_equals() {
        let rows = [
            ("a", "A", 3.0),
            ("b", "B", 1.0),
            ("c", "C", 1.0),
            ("d", "D", f64::NAN),
        ];
        let low = Best::of(rows, true).map(|b| (b.config, b.value));
        assert_eq!(low, Some(("b".to_owned(), 1.0)));
        let high = Best::of(rows, false).map(|b| (b.config, b.value));
        assert_eq!(high, Some(("a".to_owned(), 3.0)));
        assert!(Best::of([], true).is_none());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}

/// The backend over HTTPS against the raw crypto bound and the fastest of
/// the rustls `servers` measured, in memory and over TCP.
fn measure_backend(
    opts: &BenchOptions,
    progress: &dyn Fn(&str),
    servers: Vec<ServerRate>,
) -> Result<BackendReport, BenchError> {
    let vouches = opts.vouches();
    progress(&format!(
        "backend, for each of {} configurations: raw crypto bound, then {vouches} vouches \
         single and batched over HTTPS",
        backend::Lever::all().len()
    ));
    let throughput = backend::measure(
        vouches,
        if opts.quick { 50 } else { 2000 },
        opts.database_url.as_deref(),
    )?;
    let fastest = |rate: fn(&ServerRate) -> f64| {
        Best::of(
            servers
                .iter()
                .map(|s| (s.config.as_str(), s.name.as_str(), rate(s))),
            false,
        )
        .ok_or(BenchError::Invariant("no rustls server rate measured"))
    };
    let mem = fastest(|s| s.in_memory_per_s)?;
    let tcp = fastest(|s| s.tcp_per_s)?;
    Ok(BackendReport {
        vouches_per_s: throughput.single_per_core,
        vouches_per_s_batched: throughput.batched_per_core,
        wall_vouches_per_s: throughput.single_wall,
        wall_vouches_per_s_batched: throughput.batched_wall,
        crypto_bound_per_s: 1e6 / throughput.bound_us,
        crypto_bound_us: throughput.bound_us,
        ratio_to_bound: throughput.single_per_core * throughput.bound_us / 1e6,
        ratio_to_bound_batched: throughput.batched_per_core * throughput.bound_us / 1e6,
        rustls_server_handshakes_per_s: mem.value,
        vs_rustls_server: throughput.single_per_core / mem.value,
        vs_rustls_server_batched: throughput.batched_per_core / mem.value,
        rustls_server_config: mem.config,
        rustls_server_config_name: mem.name,
        rustls_server_tcp_handshakes_per_s: tcp.value,
        vs_rustls_server_tcp: throughput.single_per_core / tcp.value,
        vs_rustls_server_tcp_batched: throughput.batched_per_core / tcp.value,
        rustls_server_tcp_config: tcp.config,
        rustls_server_tcp_config_name: tcp.name,
        levers: throughput
            .levers
            .iter()
            .map(|l| LeverReport {
                name: l.lever.name,
                provider: l.lever.provider.provider().name(),
                decoded_keys: l.lever.decoded_keys,
                crypto_bound_us: l.bound_us,
                vouches_per_s: l.single_per_core,
                vouches_per_s_batched: l.batched_per_core,
                ratio_to_bound: l.single_per_core * throughput.bound_us / 1e6,
                ratio_to_bound_batched: l.batched_per_core * throughput.bound_us / 1e6,
                vs_rustls_server_tcp_batched: l.batched_per_core / tcp.value,
            })
            .collect(),
        rustls_servers: servers,
        vouches,
        concurrency: throughput.concurrency,
        batch: throughput.batch,
        server_threads: throughput.server_threads,
        database: throughput.database,
        rustls_server_method: "in memory: one thread, the server side's CPU per full handshake \
             (ServerConnection::new, read_tls, process_new_packets, write_tls), median; no \
             TCP, no HTTP. Over TCP: a tokio-rustls server accepting fresh connections on \
             loopback (handshake, its tickets, close), per CPU second of its own threads",
    })
}

/// One configuration of the vouch path (issue 21's levers).
#[derive(Debug, Clone, Serialize)]
pub struct LeverReport {
    /// What it adds to the one before.
    pub name: &'static str,
    /// The backend's `crypto.provider`.
    pub provider: &'static str,
    /// The backend's `crypto.decoded_keys`.
    pub decoded_keys: usize,
    /// The raw crypto bound on its provider, µs per vouch.
    pub crypto_bound_us: f64,
    /// Single vouches per second per server core.
    pub vouches_per_s: f64,
    /// Batched vouches per second per server core.
    pub vouches_per_s_batched: f64,
    /// `vouches_per_s` ÷ the default configuration's bound.
    pub ratio_to_bound: f64,
    /// `vouches_per_s_batched` ÷ the default configuration's bound.
    pub ratio_to_bound_batched: f64,
    /// `vouches_per_s_batched` ÷ the fastest rustls server over TCP.
    pub vs_rustls_server_tcp_batched: f64,
}

/// What `--backend-only` measures: the backend's throughput and its bounds.
#[derive(Debug, Clone, Serialize)]
pub struct BackendOnlyReport {
    /// Where and how it ran.
    pub machine: Machine,
    /// The backend over real HTTPS against the raw crypto bound and a rustls
    /// server.
    pub backend: BackendReport,
}

/// Only the backend: the raw crypto bound, single and batched vouches over
/// HTTPS, and the rustls servers they are compared with (every
/// configuration, full handshakes: `iterations` in memory, and over TCP). Runs on a thread of
/// its own, like [`run`]; writes the JSON report if asked.
pub async fn run_backend(opts: BenchOptions) -> Result<BackendOnlyReport, BenchError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vouch-bench".into())
        .spawn(move || {
            let t0 = Instant::now();
            let progress = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
            let result = (|| {
                let (n, warmup) = (opts.iterations(), opts.warmup());
                let tcp_n = opts.tcp_handshakes();
                let mut servers = Vec::new();
                for config in tls::TlsConfig::matrix() {
                    if config.unavailable().is_some() {
                        continue;
                    }
                    progress(&format!(
                        "rustls server ({config}): full mTLS handshakes, {n} in memory, \
                         {tcp_n} over loopback TCP"
                    ));
                    let peer = tls::measure(config, n, warmup)?;
                    let tcp = tls::measure_tcp(config, rustls::HandshakeKind::Full, tcp_n)?;
                    servers.push(ServerRate {
                        config: config.key(),
                        name: peer.name,
                        in_memory_per_s: 1e6 / peer.full.cpu_us.responder,
                        tcp_per_s: tcp.server_handshakes_per_s,
                    });
                }
                let backend = measure_backend(&opts, &progress, servers)?;
                let report = BackendOnlyReport {
                    machine: machine(command_line(), t0.elapsed().as_secs_f64()),
                    backend,
                };
                if let Some(path) = &opts.report {
                    std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
                    progress(&format!("report written to {}", path.display()));
                }
                Ok(report)
            })();
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| BenchError::Invariant("the benchmark thread panicked"))?
}

/// The program by its name, not the build directory it ran from, and its
/// arguments.
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| match i {
            0 => std::path::Path::new(&a)
                .file_name()
                .map_or(a.clone(), |n| n.to_string_lossy().into_owned()),
            _ => a,
        })
        .collect::<Vec<_>>()
        .join(" ")
}
