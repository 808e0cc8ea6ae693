//! Settings: defaults, then `config.toml` (in the data directory, or
//! `--config FILE`), then environment variables, then command-line flags.
//!
//! Every setting has an environment override named `VOUCH_` + the upper-cased
//! path with `_` between section and key: `listen` → `VOUCH_LISTEN`,
//! `security.lockout_failures` → `VOUCH_SECURITY_LOCKOUT_FAILURES`,
//! `webhook.url` → `VOUCH_WEBHOOK_URL`. Values are parsed as the type of the
//! setting; a malformed value is an error naming the variable, never ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file `init` writes into a new data directory, and the Debian package
/// installs as `/etc/vouch/backend.toml`: every setting with its default,
/// commented out.
pub const TEMPLATE: &str = include_str!("../dist/backend.toml");

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What to do about a peripheral on two gateways at once (SPEC.md §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CloneAction {
    /// Alert (log, audit, metric, webhook) when two sessions heard the
    /// device at once, and allow.
    #[default]
    Alert,
    /// Alert likewise, and keep one live session at a time: refuse a vouch
    /// or attach while an earlier session is open on another gateway, and
    /// an attach found to be a clone at once.
    Refuse,
}

/// All settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Address of the operations listener (plain HTTP: `/metrics`,
    /// `/healthz`, `/readyz` without credentials); loopback only. None by
    /// default: `/metrics` is then served on `listen` to the admin token only.
    pub ops_listen: Option<String>,
    /// `postgres://…` to use PostgreSQL; default SQLite in the data directory.
    pub database_url: Option<String>,
    /// Serve plain HTTP (loopback addresses only).
    pub insecure_http: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Overload protection.
    pub limits: Limits,
    /// Lockout, replay and clone settings.
    pub security: Security,
    /// Audit log: aggregation of repeated refusals, retention.
    pub audit: Audit,
    /// Revocation feed.
    pub feed: Feed,
    /// The key ring across instances.
    pub keys: Keys,
    /// Gateway client certificates.
    pub certificates: Certificates,
    /// Alert webhook.
    pub webhook: Webhook,
    /// The crypto provider of the vouch path and the decoded-key cache.
    pub crypto: Crypto,
}

/// Overload protection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests in flight on the gateway and admin APIs; beyond, 503.
    pub max_concurrent_requests: usize,
    /// Per-request deadline; beyond, 503.
    pub request_timeout_ms: u64,
    /// Longest long-poll of the revocation feed.
    pub feed_wait_max_ms: u64,
    /// Concurrent long-polls; beyond, 503.
    pub max_feed_waiters: usize,
    /// Gateway API requests one gateway may have in flight; beyond, 429
    /// (`gateway_busy`), so that one gateway cannot take every slot.
    pub max_requests_per_gateway: usize,
    /// Feed long-polls one gateway may have waiting; beyond, 429.
    pub max_feed_waiters_per_gateway: usize,
}

/// Security settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// K: credential failures that trigger a lockout.
    pub lockout_failures: u32,
    /// T: the window the failures are counted in, seconds.
    pub lockout_window_s: u64,
    /// How long a lockout lasts, seconds.
    pub lockout_duration_s: u64,
    /// How long a handshake ephemeral stays in the replay cache, seconds.
    pub replay_retention_s: u64,
    /// What a suspected clone triggers.
    pub clone_action: CloneAction,
    /// How long an attachment without a detach counts as live, seconds.
    pub attachment_ttl_s: u64,
    /// Reported times this close count as one moment in clone detection
    /// (SPEC.md §10.5): the slack for a report's transit, which its ages do
    /// not cover, and for the clocks of several instances. Milliseconds.
    pub clone_tolerance_ms: u32,
}

/// Audit log settings (SPEC.md §11.12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Audit {
    /// How many refusals of one kind are written one by one (at once) before
    /// the rest are counted into summary entries; at least 1.
    pub first_per_kind: u32,
    /// How often the counts of repeated refusals are written as summary
    /// entries, seconds.
    pub summary_interval_s: u64,
    /// How many kinds of refusal (action, outcome, reason, actor, subject)
    /// are counted apart in one interval; beyond, new kinds are counted per
    /// action, outcome, reason and gateway.
    pub max_kinds: usize,
    /// Entries older than this are pruned, hourly, behind a signed
    /// checkpoint of the chain; 0 keeps every entry.
    pub retention_s: u64,
}

/// Revocation feed settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Feed {
    /// How often each instance reads the event log's head (for writes by
    /// other instances and the CLI), milliseconds. On PostgreSQL a
    /// LISTEN/NOTIFY wakes it at once; the poll covers notifications lost
    /// while the listening connection reconnects.
    pub poll_ms: u64,
}

/// The key ring across instances (SPEC.md §7.7, "Several instances").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Keys {
    /// Every instance records the keys it serves each second; one that has
    /// not for this long is no longer live: a Rotate is no longer held back
    /// from gateways, nor `keys rotate` refused, because of it. Seconds.
    pub instance_ttl_s: u64,
}

/// The vouch path's cryptography (issue 21): which provider opens hellos
/// and signs vouches, and how many decoded device keys are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Crypto {
    /// `"aws-lc"` (default: aws-lc-rs, about twice as fast) or `"dalek"`.
    /// The answers are the same (`vouch_proto::provider`); only the speed
    /// differs.
    pub provider: CryptoProvider,
    /// Enrolled keys kept decoded (checked and decompressed once, not at
    /// every read and every verification); 0 turns the cache off. About
    /// 250 bytes each; when full, it starts again empty.
    pub decoded_keys: usize,
}

/// A crypto provider of `vouch_proto::provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CryptoProvider {
    /// aws-lc-rs.
    AwsLc,
    /// The dalek crates.
    Dalek,
}

impl CryptoProvider {
    /// The provider itself.
    pub fn provider(self) -> &'static dyn vouch_proto::provider::CryptoProvider {
        match self {
            CryptoProvider::AwsLc => &vouch_proto::provider::AWS_LC,
            CryptoProvider::Dalek => &vouch_proto::provider::DALEK,
        }
    }
}

impl Default for Crypto {
    fn default() -> Self {
        Self {
            provider: CryptoProvider::AwsLc,
            decoded_keys: 65_536,
        }
    }
}

/// Gateway client certificates (issue 19).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Certificates {
    /// How long a gateway client certificate issued at enrollment or
    /// renewal is valid, in days (1 to 3650). Gateways renew theirs over
    /// mutual TLS when a third of it is left (`POST /v1/certificate`).
    pub gateway_lifetime_days: u32,
}

impl Certificates {
    /// The lifetime as a duration.
    pub fn gateway_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.gateway_lifetime_days) * 86_400)
    }
}

impl Default for Certificates {
    fn default() -> Self {
        Self {
            gateway_lifetime_days: 90,
        }
    }
}

/// Alert webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Webhook {
    /// URL to POST alerts to (JSON); none by default.
    pub url: Option<String>,
    /// Timeout of one POST, milliseconds.
    pub timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            ops_listen: None,
            database_url: None,
            insecure_http: false,
            log_format: LogFormat::Text,
            limits: Limits::default(),
            security: Security::default(),
            audit: Audit::default(),
            feed: Feed::default(),
            keys: Keys::default(),
            certificates: Certificates::default(),
            webhook: Webhook::default(),
            crypto: Crypto::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 512,
            request_timeout_ms: 10_000,
            feed_wait_max_ms: 30_000,
            max_feed_waiters: 10_000,
            max_requests_per_gateway: 32,
            max_feed_waiters_per_gateway: 4,
        }
    }
}

impl Default for Security {
    fn default() -> Self {
        Self {
            lockout_failures: 10,
            lockout_window_s: 60,
            lockout_duration_s: 900,
            replay_retention_s: 30 * 86_400,
            clone_action: CloneAction::Alert,
            attachment_ttl_s: 3600,
            clone_tolerance_ms: 2_000,
        }
    }
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            first_per_kind: 32,
            summary_interval_s: 60,
            max_kinds: 4096,
            retention_s: 0,
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        Self { poll_ms: 200 }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self { instance_ttl_s: 10 }
    }
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            url: None,
            timeout_ms: 3000,
        }
    }
}

/// Errors of configuration loading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A setting is out of its range.
    #[error("{setting}: {message}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file (at a line and column) or an environment variable does not
    /// hold these settings.
    #[error(transparent)]
    Settings(#[from] vouch_host::config::ConfigError),
}

/// Environment variables with the prefix that are not settings (they belong
/// to the CLI).
const NOT_SETTINGS: [&str; 4] = [
    "VOUCH_DATA_DIR",
    "VOUCH_ADMIN_TOKEN",
    "VOUCH_CONFIG",
    "VOUCH_LOG",
];

impl Config {
    /// Defaults overlaid by `path` if it exists (a missing file is not an
    /// error unless `required`).
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Ok(vouch_host::config::parse(
            &path.display().to_string(),
            &text,
        )?)
    }

    /// Checks the settings whose range the type does not bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let days = self.certificates.gateway_lifetime_days;
        if !(1..=3650).contains(&days) {
            return Err(ConfigError::Invalid {
                setting: "certificates.gateway_lifetime_days",
                message: format!("must be 1..=3650 (got {days})"),
            });
        }
        Ok(())
    }

    /// Applies `VOUCH_*` overrides from `vars` (normally `std::env::vars()`);
    /// the variables of the CLI (`VOUCH_DATA_DIR`, `VOUCH_LOG`, …) and of the other
    /// programs (`VOUCH_GATEWAY_*`, `VOUCH_PERIPHERAL_*`, sharing one
    /// machine's environment) are not backend settings.
    pub fn apply_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let others = |name: &str| {
            NOT_SETTINGS.contains(&name)
                || name.starts_with("VOUCH_GATEWAY_")
                || name.starts_with("VOUCH_PERIPHERAL_")
        };
        let which = vouch_host::config::Overlay::new("VOUCH_").ignoring(&others);
        Ok(vouch_host::config::overlay(self, vars, &which)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_bad_file_is_named_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:8443\"\n\n[security]\nlockout_failures = \"ten\"\n",
        )
        .unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:4:20: ", path.display())), "{e}");
        assert!(e.contains("lockout_failures"), "{e}");
    }

    #[test]
    fn template_parses_to_the_defaults() {
        let c: Config = toml::from_str(TEMPLATE).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn environment_overrides_file() {
        let c: Config =
            toml::from_str("listen = \"0.0.0.0:1\"\n[security]\nlockout_failures = 3\n").unwrap();
        let c = c
            .apply_env(env(&[
                ("VOUCH_LISTEN", "127.0.0.1:9"),
                ("VOUCH_SECURITY_LOCKOUT_WINDOW_S", "5"),
                ("VOUCH_SECURITY_CLONE_ACTION", "refuse"),
                ("VOUCH_AUDIT_RETENTION_S", "7776000"),
                ("VOUCH_WEBHOOK_URL", "http://127.0.0.1:1/h"),
                ("VOUCH_DATABASE_URL", "postgres://x/y"),
                ("VOUCH_ADMIN_TOKEN", "ignored"),
                ("PATH", "/bin"),
            ]))
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.security.lockout_failures, 3);
        assert_eq!(c.security.lockout_window_s, 5);
        assert_eq!(c.security.clone_action, CloneAction::Refuse);
        assert_eq!(c.audit.retention_s, 90 * 86_400);
        assert_eq!(c.webhook.url.as_deref(), Some("http://127.0.0.1:1/h"));
        assert_eq!(c.database_url.as_deref(), Some("postgres://x/y"));
    }

    #[test]
    fn bad_environment_values_are_errors() {
        for (k, v) in [
            ("VOUCH_SECURITY_LOCKOUT_FAILURES", "many"),
            ("VOUCH_NO_SUCH_THING", "1"),
            ("VOUCH_SECURITY_CLONE_ACTION", "explode"),
            ("VOUCH_INSECURE_HTTP", "perhaps"),
        ] {
            assert!(
                Config::default().apply_env(env(&[(k, v)])).is_err(),
                "{k}={v} accepted"
            );
        }
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
