//! The gateway's configuration: TOML (`--config FILE`), then environment
//! overrides, validated once at startup.
//!
//! Every setting can be overridden by an environment variable named
//! `VOUCH_GATEWAY_` + section + `_` + key, upper-cased:
//! `backend.url` → `VOUCH_GATEWAY_BACKEND_URL`, `limits.max_links` →
//! `VOUCH_GATEWAY_LIMITS_MAX_LINKS`. A value that does not parse as the
//! setting's type is an error that names the variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The example configuration shipped in `gateway/dist/gateway.toml`.
pub const EXAMPLE: &str = include_str!("../dist/gateway.toml");

/// Everything the daemon needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the identity key lives.
    pub identity: IdentityConfig,
    /// How to reach the backend.
    pub backend: BackendConfig,
    /// Which transports serve peripherals.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// The local API for applications on the gateway.
    #[serde(default)]
    pub api: ApiConfig,
    /// What is kept across restarts, and where.
    #[serde(default)]
    pub state: StateConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[identity]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PKCS#8 PEM of the gateway's Ed25519 key (0600), written by `init`.
    pub key: PathBuf,
}

/// `[backend]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL, `https://HOST:PORT`, of a backend with one instance (or
    /// one address in front of several). Set this or
    /// [`urls`](Self::urls), not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Base URLs of a backend's instances (several `vouch-backend serve`
    /// on one PostgreSQL): the gateway prefers them in an order of its own,
    /// chosen at random when it starts, fails over when one stops
    /// answering, and returns to it when it answers again. From the
    /// environment, `VOUCH_GATEWAY_BACKEND_URLS` holds them separated by
    /// commas.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The backend CA certificate (PEM) to pin.
    pub ca: PathBuf,
    /// The client certificate the backend issued at enrollment (PEM).
    pub certificate: PathBuf,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long concurrent vouch requests are gathered into a batch, in ms.
    #[serde(default = "default_batch_window_ms")]
    pub batch_window_ms: u64,
    /// How often the trust-anchor updates are fetched (besides at start), in
    /// seconds: 1 to 3600 (SPEC.md §10.6: at least once an hour).
    #[serde(default = "default_anchor_updates_interval_s")]
    pub anchor_updates_interval_s: u64,
    /// Renew the client certificate once less than this share of its
    /// lifetime is left (0.05 to 0.9).
    #[serde(default = "default_certificate_renew_when_left")]
    pub certificate_renew_when_left: f64,
}

/// `[transport]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// `[transport.tcp]`: peripherals over TCP (development, simulation, CI).
    pub tcp: Option<TcpConfig>,
    /// `[transport.ble]`: peripherals over Bluetooth Low Energy.
    pub ble: Option<BleConfig>,
}

/// `[transport.tcp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The ATT MTU whose fragments the TCP transport carries.
    #[serde(default = "default_att_mtu")]
    pub att_mtu: usize,
}

/// `[transport.ble]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleConfig {
    /// The adapter by name (`hci0`): adapter order is not stable.
    pub adapter: String,
    /// Most concurrent BLE links.
    #[serde(default = "default_ble_links")]
    pub max_links: usize,
    /// The ATT MTU whose fragment size the gateway writes (BlueZ uses long
    /// writes when a peripheral negotiated less).
    #[serde(default = "default_att_mtu")]
    pub att_mtu: usize,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most concurrent links (handshakes and sessions) per transport.
    #[serde(default = "default_max_links")]
    pub max_links: usize,
    /// Close a session after this many seconds without traffic.
    #[serde(default = "default_idle_s")]
    pub idle_timeout_s: u64,
    /// Most resumption tickets kept.
    #[serde(default = "default_max_tickets")]
    pub max_tickets: usize,
    /// A link that sends no whole message within this many milliseconds of
    /// coming up is closed, and when the link cap is reached the link that
    /// waited longest for its first message makes room (SPEC.md §8.4).
    #[serde(default = "default_first_message_ms")]
    pub first_message_ms: u64,
    /// Resumption stops when the revocation feed has not answered for this
    /// many seconds, and starts again when it answers (SPEC.md §11.5): a
    /// peripheral revoked meanwhile would otherwise resume until its
    /// ticket's `resumption_s` ran out. 0: never stop. Default 14400 (4 h).
    #[serde(default = "default_feed_silence_s")]
    pub feed_silence_s: u64,
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The Unix socket of the local API (mode 0660).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Optional TCP address serving only `/metrics` for Prometheus.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The directory that keeps resumption tickets, the revocation feed's
    /// cursor and the BLE devices seen across restarts (created 0700 if
    /// missing; files 0600). Empty: keep them in memory only, and a restart
    /// forgets them.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl StateConfig {
    /// The state directory, or `None` when state is kept in memory only.
    pub fn dir(&self) -> Option<&Path> {
        (!self.dir.as_os_str().is_empty()).then_some(self.dir.as_path())
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_batch_window_ms() -> u64 {
    2
}
fn default_anchor_updates_interval_s() -> u64 {
    crate::anchors::DEFAULT_FETCH_INTERVAL.as_secs()
}
fn default_certificate_renew_when_left() -> f64 {
    crate::certificate::DEFAULT_RENEW_WHEN_LEFT
}
fn default_att_mtu() -> usize {
    247
}
fn default_ble_links() -> usize {
    8
}
fn default_max_links() -> usize {
    1000
}
fn default_idle_s() -> u64 {
    600
}
fn default_first_message_ms() -> u64 {
    crate::serve::slots::DEFAULT_FIRST_MESSAGE.as_millis() as u64
}
fn default_feed_silence_s() -> u64 {
    crate::sessions::DEFAULT_FEED_SILENCE.as_secs()
}
fn default_max_tickets() -> usize {
    100_000
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vouch-gateway")
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/vouch-gateway/api.sock")
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_links: default_max_links(),
            idle_timeout_s: default_idle_s(),
            max_tickets: default_max_tickets(),
            first_message_ms: default_first_message_ms(),
            feed_silence_s: default_feed_silence_s(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            metrics_listen: None,
        }
    }
}

impl Config {
    /// Reads `path`, applies the environment, and validates.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.into(),
            source,
        })?;
        Self::parse_from(&path.display().to_string(), &text, std::env::vars()).map_err(|e| {
            // A file error names the file, line and column itself.
            let e = e.to_string();
            let origin = path.display().to_string();
            Error::Config(if e.starts_with(&origin) {
                e
            } else {
                format!("{origin}: {e}")
            })
        })
    }

    /// Parses TOML text and applies `env` overrides (`VOUCH_GATEWAY_*`).
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        Self::parse_from("configuration", text, env).map_err(|e| e.to_string())
    }

    fn parse_from(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let parsed: Config = vouch_host::config::parse(origin, text)?;
        let which = vouch_host::config::Overlay::new("VOUCH_GATEWAY_");
        let config = vouch_host::config::overlay(parsed, env, &which)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        match (&self.backend.url, self.backend.urls.is_empty()) {
            (Some(_), false) => {
                return Err(
                    "backend.url and backend.urls are both set: set url for one backend instance or urls for several, not both"
                        .into(),
                )
            }
            (None, true) => {
                return Err(
                    "no backend: set backend.url (one instance) or backend.urls (several)".into(),
                )
            }
            _ => {}
        }
        let urls = self.backend_urls();
        let mut seen = Vec::with_capacity(urls.len());
        for url in &urls {
            let instance = check_backend_url(url)?;
            if seen.contains(&instance) {
                return Err(format!(
                    "backend.urls names the instance of {url:?} twice (URLs are compared by scheme, host and port)"
                ));
            }
            seen.push(instance);
        }
        if !(1..=3600).contains(&self.backend.anchor_updates_interval_s) {
            return Err(format!(
                "backend.anchor_updates_interval_s must be 1..=3600: trust-anchor updates are fetched at least hourly (got {})",
                self.backend.anchor_updates_interval_s
            ));
        }
        if !(0.05..=0.9).contains(&self.backend.certificate_renew_when_left) {
            return Err(format!(
                "backend.certificate_renew_when_left must be 0.05..=0.9: the share of the certificate's lifetime left when it is renewed (got {})",
                self.backend.certificate_renew_when_left
            ));
        }
        if let Some(tcp) = &self.transport.tcp {
            if !(23..=517).contains(&tcp.att_mtu) {
                return Err(format!(
                    "transport.tcp.att_mtu must be 23..=517 (got {})",
                    tcp.att_mtu
                ));
            }
        }
        if self.transport.tcp.is_none() && self.transport.ble.is_none() {
            return Err("no transport: configure [transport.tcp] or [transport.ble]".into());
        }
        if self.limits.max_links == 0 {
            return Err("limits.max_links must be at least 1".into());
        }
        if let Some(ble) = &self.transport.ble {
            if ble.max_links == 0 {
                return Err(
                    "transport.ble.max_links must be at least 1: with none, no device is ever connected"
                        .into(),
                );
            }
        }
        if !(100..=10_000).contains(&self.limits.first_message_ms) {
            return Err(format!(
                "limits.first_message_ms must be 100..=10000: below the handshake deadline (got {})",
                self.limits.first_message_ms
            ));
        }
        if self.limits.feed_silence_s != 0 && self.limits.feed_silence_s < 60 {
            return Err(format!(
                "limits.feed_silence_s must be 0 (never stop resuming) or at least 60: the feed's long poll and its retries take tens of seconds (got {})",
                self.limits.feed_silence_s
            ));
        }
        Ok(())
    }

    /// The backend's base URLs: `backend.url`, or `backend.urls`, with no
    /// trailing `/`.
    pub fn backend_urls(&self) -> Vec<String> {
        self.backend
            .url
            .iter()
            .chain(&self.backend.urls)
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect()
    }

    /// What the state directory's tickets and feed cursor are kept for: the
    /// first of the backend's URLs names the backend (its instances share
    /// one event log, so the cursor counts the same at each). Adding or
    /// removing another instance keeps the state; changing the first starts
    /// afresh.
    pub fn state_backend_name(&self) -> String {
        // As written: state saved before there were several URLs was kept
        // for `backend.url` exactly.
        self.backend
            .url
            .iter()
            .chain(&self.backend.urls)
            .next()
            .cloned()
            .unwrap_or_default()
    }

    /// How long the revocation feed may stay silent before resumption
    /// stops; `None`: never.
    pub fn feed_silence_limit(&self) -> Option<Duration> {
        (self.limits.feed_silence_s != 0).then(|| Duration::from_secs(self.limits.feed_silence_s))
    }

    /// How long a new link may take to send its first message.
    pub fn first_message_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.first_message_ms)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_s)
    }

    /// When and how the client certificate is renewed.
    pub fn renewal_policy(&self) -> crate::certificate::RenewalPolicy {
        crate::certificate::RenewalPolicy {
            renew_when_left: self.backend.certificate_renew_when_left,
            ..crate::certificate::RenewalPolicy::default()
        }
    }

    /// How often trust-anchor updates are fetched.
    pub fn anchor_updates_interval(&self) -> Duration {
        Duration::from_secs(self.backend.anchor_updates_interval_s)
    }
}

/// The backend URL must be `https://`, or plain `http://` to a loopback
/// host (SPEC.md §10.2: plaintext only on loopback, only when asked for).
/// The URL is parsed, never matched by prefix: `http://127.0.0.1.evil.example`
/// and `http://127.0.0.1@evil.example` name a remote host. Credentials in the
/// URL are refused too: the gateway authenticates with its certificate, and
/// a user part is more likely a disguise than a setting.
///
/// Nothing may follow the host and port: a query or a fragment would end up
/// in logs and metric labels, and the API's paths are the backend's own.
/// Returns the instance the URL names (scheme, lowercase host, port), by
/// which two spellings of one instance are found.
fn check_backend_url(raw: &str) -> Result<(String, String, u16), String> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| format!("backend.url is not a URL ({e}): {raw:?}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "backend.url must not carry a user name or password (got {raw:?})"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
        return Err(format!(
            "backend.url is scheme, host and port only: no path, query or fragment (got {raw:?})"
        ));
    }
    let instance = (
        url.scheme().to_owned(),
        url.host_str().unwrap_or_default().to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or(0),
    );
    match url.scheme() {
        "https" if url.host().is_some() => Ok(instance),
        "http" if url.host().as_ref().is_some_and(is_loopback) => Ok(instance),
        "http" => Err(format!(
            "backend.url may be plain http:// only to a loopback host (127.0.0.0/8, [::1], localhost); use https:// (got {raw:?})"
        )),
        _ => Err(format!("backend.url must be https:// (got {raw:?})")),
    }
}

/// 127.0.0.0/8, `::1` (and `::ffff:127.x.y.z`), or the name `localhost`.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        // The URL parser lower-cases domains.
        url::Host::Domain(d) => *d == "localhost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_naming_one_instance_twice_or_carrying_more_are_refused() {
        let with = |u: &str| {
            EXAMPLE.replace(
                "url = \"https://backend.example.net:8443\"",
                &format!("urls = [{u}]"),
            )
        };
        for u in [
            r#""https://B1.example.net:8443", "https://b1.example.net:8443""#,
            r#""https://b1.example.net", "https://b1.example.net:443""#,
            r#""https://b1.example.net:8443/?token=s3cret""#,
            r#""https://b1.example.net:8443/#x""#,
            r#""https://b1.example.net:8443/api""#,
        ] {
            assert!(Config::parse(&with(u), Vec::new()).is_err(), "{u}");
        }
        let ok = with(r#""https://b1.example.net:8443", "https://b2.example.net:8443/""#);
        assert!(Config::parse(&ok, Vec::new()).is_ok());
    }

    #[test]
    fn a_ble_transport_with_no_links_is_refused() {
        let text = format!("{EXAMPLE}\n[transport.ble]\nadapter = \"hci0\"\nmax_links = 0\n");
        let err = Config::parse(&text, Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("transport.ble.max_links must be at least 1"),
            "{err}"
        );
        let text = format!("{EXAMPLE}\n[transport.ble]\nadapter = \"hci0\"\nmax_links = 1\n");
        assert!(Config::parse(&text, Vec::new()).is_ok());
    }

    #[test]
    fn example_parses_and_env_overrides_apply() {
        let c = Config::parse(EXAMPLE, Vec::new()).unwrap();
        assert_eq!(c.limits.max_links, 1000);
        let env = vec![
            (
                "VOUCH_GATEWAY_BACKEND_URL".to_string(),
                "https://b.example:9443".to_string(),
            ),
            (
                "VOUCH_GATEWAY_LIMITS_MAX_LINKS".to_string(),
                "12".to_string(),
            ),
            (
                "VOUCH_GATEWAY_TRANSPORT_TCP_ATT_MTU".to_string(),
                "23".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::parse(EXAMPLE, env).unwrap();
        assert_eq!(c.backend_urls(), ["https://b.example:9443"]);
        assert_eq!(c.limits.max_links, 12);
        assert_eq!(c.transport.tcp.unwrap().att_mtu, 23);
    }

    #[test]
    fn the_state_directory_defaults_and_can_be_overridden_or_turned_off() {
        let c = Config::parse(EXAMPLE, Vec::new()).unwrap();
        assert_eq!(c.state.dir(), Some(Path::new("/var/lib/vouch-gateway")));
        // A configuration written before [state] existed gets the default.
        let without: String = EXAMPLE
            .lines()
            .filter(|l| !l.starts_with("[state]") && !l.starts_with("dir ="))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&without, Vec::new()).unwrap();
        assert_eq!(c.state.dir(), Some(Path::new("/var/lib/vouch-gateway")));
        let env = |v: &str| vec![("VOUCH_GATEWAY_STATE_DIR".to_string(), v.to_string())];
        let c = Config::parse(&without, env("/srv/vg")).unwrap();
        assert_eq!(c.state.dir(), Some(Path::new("/srv/vg")));
        let c = Config::parse(EXAMPLE, env("")).unwrap();
        assert_eq!(c.state.dir(), None, "empty: memory only");
    }

    #[test]
    fn the_feed_silence_limit_defaults_to_four_hours_can_be_overridden_and_is_bounded() {
        let c = Config::parse(EXAMPLE, Vec::new()).unwrap();
        assert_eq!(c.feed_silence_limit(), Some(Duration::from_secs(4 * 3600)));
        let without: String = EXAMPLE
            .lines()
            .filter(|l| !l.starts_with("feed_silence_s"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&without, Vec::new()).unwrap();
        assert_eq!(
            c.feed_silence_limit(),
            Some(crate::sessions::DEFAULT_FEED_SILENCE)
        );
        let env = |v: &str| {
            vec![(
                "VOUCH_GATEWAY_LIMITS_FEED_SILENCE_S".to_string(),
                v.to_string(),
            )]
        };
        let c = Config::parse(EXAMPLE, env("600")).unwrap();
        assert_eq!(c.feed_silence_limit(), Some(Duration::from_secs(600)));
        let c = Config::parse(EXAMPLE, env("0")).unwrap();
        assert_eq!(c.feed_silence_limit(), None, "0: never stop resuming");
        let e = Config::parse(EXAMPLE, env("59")).unwrap_err();
        assert!(e.contains("feed_silence_s"), "{e}");
    }

    #[test]
    fn the_anchor_update_interval_defaults_to_an_hour_and_is_bounded() {
        let c = Config::parse(EXAMPLE, Vec::new()).unwrap();
        assert_eq!(c.anchor_updates_interval(), Duration::from_secs(3600));
        // A configuration written before the setting existed gets the default.
        let without: String = EXAMPLE
            .lines()
            .filter(|l| !l.starts_with("anchor_updates_interval_s"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(without, EXAMPLE);
        let c = Config::parse(&without, Vec::new()).unwrap();
        assert_eq!(c.backend.anchor_updates_interval_s, 3600);
        let env = |v: &str| {
            vec![(
                "VOUCH_GATEWAY_BACKEND_ANCHOR_UPDATES_INTERVAL_S".to_string(),
                v.to_string(),
            )]
        };
        let c = Config::parse(EXAMPLE, env("600")).unwrap();
        assert_eq!(c.anchor_updates_interval(), Duration::from_secs(600));
        for bad in ["0", "3601"] {
            let e = Config::parse(EXAMPLE, env(bad)).unwrap_err();
            assert!(e.contains("backend.anchor_updates_interval_s"), "{e}");
        }
    }

    #[test]
    fn plain_http_is_accepted_only_to_a_loopback_host() {
        let with_url = |url: &str| {
            Config::parse(
                EXAMPLE,
                vec![("VOUCH_GATEWAY_BACKEND_URL".to_string(), url.to_string())],
            )
        };
        for hostile in [
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1.evil.example:8080",
            "http://127.0.0.1@evil.example",
            "http://127.0.0.1:8080@evil.example",
            "http://127.0.0.1:x@evil.example",
            "http://localhost.evil.example",
            "http://evil.example/127.0.0.1",
            "http://evil.example?http://127.0.0.1",
            "http://evil.example#127.0.0.1",
            "http://10.0.0.1",
            "http://[::2]",
            "http://0.0.0.0",
            "http://user@127.0.0.1",
            "https://user:secret@backend.example",
            "ftp://127.0.0.1",
            "127.0.0.1:8080",
        ] {
            let e = with_url(hostile).expect_err(hostile);
            assert!(e.contains("backend.url"), "{hostile}: {e}");
        }
        for good in [
            "https://backend.example:9443",
            "https://127.0.0.1.evil.example",
            "http://127.0.0.1:8080",
            "http://127.0.0.1",
            "http://127.8.9.10:1/",
            "http://[::1]:8080",
            "http://localhost:8080",
            "http://LOCALHOST:8080",
        ] {
            assert!(with_url(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn several_backend_urls_from_the_file_or_the_environment_each_checked() {
        let one = Config::parse(EXAMPLE, Vec::new()).unwrap();
        assert_eq!(one.backend_urls(), ["https://backend.example.net:8443"]);
        assert_eq!(one.state_backend_name(), "https://backend.example.net:8443");
        let several = EXAMPLE.replace(
            "url = \"https://backend.example.net:8443\"",
            "urls = [\"https://b1.example.net:8443\", \"https://b2.example.net:8443/\"]",
        );
        let c = Config::parse(&several, Vec::new()).unwrap();
        assert_eq!(
            c.backend_urls(),
            ["https://b1.example.net:8443", "https://b2.example.net:8443"]
        );
        assert_eq!(c.state_backend_name(), "https://b1.example.net:8443");
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::parse(
            &several,
            env(
                "VOUCH_GATEWAY_BACKEND_URLS",
                "https://x.example, http://127.0.0.1:9",
            ),
        )
        .unwrap();
        assert_eq!(
            c.backend_urls(),
            ["https://x.example", "http://127.0.0.1:9"]
        );
        // Every URL is checked as one is.
        let e = Config::parse(
            &several,
            env(
                "VOUCH_GATEWAY_BACKEND_URLS",
                "https://x.example,http://10.0.0.1",
            ),
        )
        .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = Config::parse(
            &several,
            env(
                "VOUCH_GATEWAY_BACKEND_URLS",
                "https://x.example,https://x.example/",
            ),
        )
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // Both, or neither: said so.
        let e = Config::parse(
            EXAMPLE,
            env("VOUCH_GATEWAY_BACKEND_URLS", "https://x.example"),
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = Config::parse(
            &several,
            env("VOUCH_GATEWAY_BACKEND_URL", "https://x.example"),
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let none = EXAMPLE.replace("url = \"https://backend.example.net:8443\"", "");
        let e = Config::parse(&none, Vec::new()).unwrap_err();
        assert!(e.contains("no backend"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let env = vec![(
            "VOUCH_GATEWAY_LIMITS_MAX_LINKS".to_string(),
            "lots".to_string(),
        )];
        let e = Config::parse(EXAMPLE, env).unwrap_err();
        assert!(
            e.contains("VOUCH_GATEWAY_LIMITS_MAX_LINKS") && e.contains("not an integer"),
            "{e}"
        );
        let env = vec![("VOUCH_GATEWAY_NOPE".to_string(), "1".to_string())];
        assert!(Config::parse(EXAMPLE, env)
            .unwrap_err()
            .contains("no such setting"));
        let e = Config::parse("[identity]\nkey = 1\n", Vec::new()).unwrap_err();
        assert!(e.contains("key"), "{e}");
        let text = EXAMPLE.replace("https://", "ftp://");
        assert!(Config::parse(&text, Vec::new())
            .unwrap_err()
            .contains("backend.url"));
    }
}
