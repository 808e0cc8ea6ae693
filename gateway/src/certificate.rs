//! The gateway's TLS client certificate: what it says (validity, key,
//! issuer), the check at start, and its renewal before it expires.
//!
//! The backend issues short-lived client certificates
//! (`certificates.gateway_lifetime_days`, 90 days by default). [`follow`]
//! renews this gateway's over its existing mutual-TLS channel
//! (`POST /v1/certificate`, SPEC.md §10.8) once less than
//! [`RenewalPolicy::renew_when_left`] of its lifetime is left (a third by
//! default; later by up to a quarter of that, at random, so that gateways
//! enrolled together do not all renew at once). It checks the new
//! certificate as [`check`] checks the one at start, writes it atomically
//! over the configured file (mode 0600), and only then has the backend
//! client use it for new connections ([`BackendApi::use_certificate`]):
//! requests in flight finish on the connections they have. A failed
//! renewal is retried, after a minute, doubling up to an hour.
//!
//! The expiry is visible all along: the metric
//! `vouch_gateway_certificate_expiry_timestamp_seconds`, `vouch-gateway
//! status`, and a WARN line, once a day, from 30 days before it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{error, info, warn};
use vouch_proto::keys::{PublicKey, Signature};
use vouch_proto::wire::backend::CertificateIssued;

use crate::backend_client::{BackendApi, BackendError};
use crate::clock::{Clock, WallTime};
use crate::metrics::Metrics;

/// From how long before its expiry the certificate is warned about.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// The default share of its lifetime left at which the certificate is
/// renewed.
pub const DEFAULT_RENEW_WHEN_LEFT: f64 = 1.0 / 3.0;

/// How often the follower looks at the certificate at most.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How often the expiry warning is repeated.
const WARN_EVERY_MS: u64 = 86_400_000;
/// The first wait after a failed renewal; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between renewal attempts.
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// The Ed25519 algorithm identifier (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// What is wrong with a client certificate, said so that an installer knows
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The file holds no PEM certificate.
    #[error("the client certificate file holds no PEM certificate")]
    NoCertificate,
    /// The certificate is not valid X.509.
    #[error("the client certificate is not a valid X.509 certificate")]
    Malformed,
    /// The CA file holds no Ed25519 CA certificate.
    #[error("the backend CA file ([backend] ca) holds no Ed25519 CA certificate")]
    BadCa,
    /// The certificate's key is not an Ed25519 key.
    #[error(
        "the client certificate's key is not an Ed25519 key: it was not issued for a Vouch gateway"
    )]
    NotEd25519,
    /// The certificate is for another key than this gateway's identity.
    #[error("the client certificate is for key {certificate}, but this gateway's identity key is {identity}: install the certificate the backend issued for this gateway's key (vouch-backend enroll gateway --public-key @identity.pub.pem)")]
    KeyMismatch {
        /// The key in the certificate.
        certificate: PublicKey,
        /// This gateway's identity key.
        identity: PublicKey,
    },
    /// The certificate was not signed by the pinned backend CA.
    #[error("the client certificate was not issued by the pinned backend CA ([backend] ca): it comes from another backend, or the CA file is not this backend's; the backend will refuse it")]
    ForeignCa,
    /// The certificate has expired.
    #[error("the client certificate expired at {}: the backend refuses it; renewal needs a valid one, so ask the operator for a new one (vouch-backend enroll gateway)", format_wall(*not_after))]
    Expired {
        /// Its `notAfter`.
        not_after: WallTime,
    },
    /// The certificate is not valid yet.
    #[error("the client certificate is not valid before {}: this gateway's clock is behind (or the backend's ahead); the backend refuses it until then", format_wall(*not_before))]
    NotYetValid {
        /// Its `notBefore`.
        not_before: WallTime,
    },
}

/// A wall time as RFC 3339 (UTC, seconds).
pub fn format_wall(t: WallTime) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(t.0))
        .to_string()
}

/// What a client certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Valid from.
    pub not_before: WallTime,
    /// Valid until.
    pub not_after: WallTime,
    /// The Ed25519 key it certifies.
    pub key: PublicKey,
}

fn first_der(pem: &[u8]) -> Result<CertificateDer<'static>, CertificateError> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or(CertificateError::NoCertificate)?
        .map_err(|_| CertificateError::NoCertificate)
}

fn wall_of(t: &x509_parser::time::ASN1Time) -> WallTime {
    WallTime(
        u64::try_from(t.timestamp())
            .unwrap_or(0)
            .saturating_mul(1000),
    )
}

fn ed25519_key(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<PublicKey, CertificateError> {
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(CertificateError::NotEd25519);
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertificateError::NotEd25519)?;
    PublicKey::from_bytes(bytes).ok_or(CertificateError::NotEd25519)
}

impl CertificateInfo {
    /// Reads the first certificate of `pem`.
    pub fn parse(pem: &[u8]) -> Result<Self, CertificateError> {
        let der = first_der(pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|_| CertificateError::Malformed)?;
        Ok(Self {
            not_before: wall_of(&cert.validity().not_before),
            not_after: wall_of(&cert.validity().not_after),
            key: ed25519_key(cert.public_key())?,
        })
    }

    /// How long it is valid in all.
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.not_after.0.saturating_sub(self.not_before.0))
    }

    /// How long it is still valid at `now` (zero once expired).
    pub fn left_at(&self, now: WallTime) -> Duration {
        Duration::from_millis(self.not_after.0.saturating_sub(now.0))
    }

    /// When to renew it: once less than `when_left` of its lifetime is left,
    /// later by `jitter` (0 to 1) times a quarter of that.
    pub fn renew_at(&self, when_left: f64, jitter: f64) -> WallTime {
        let window = self.lifetime().as_millis() as f64 * when_left.clamp(0.0, 1.0);
        let delay = window * 0.25 * jitter.clamp(0.0, 1.0);
        let before_expiry = (window - delay).max(0.0) as u64;
        WallTime(self.not_after.0.saturating_sub(before_expiry))
    }
}

/// Checks a client certificate (PEM) at `now`: that it is for `identity`,
/// was issued by the CA in `ca_pem`, and is valid. Says which is wrong,
/// the first of these that is.
pub fn check(
    cert_pem: &[u8],
    ca_pem: &[u8],
    identity: &PublicKey,
    now: WallTime,
) -> Result<CertificateInfo, CertificateError> {
    let info = CertificateInfo::parse(cert_pem)?;
    if info.key != *identity {
        return Err(CertificateError::KeyMismatch {
            certificate: info.key,
            identity: *identity,
        });
    }
    let ca_der = first_der(ca_pem).map_err(|_| CertificateError::BadCa)?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|_| CertificateError::BadCa)?;
    let ca_key = ed25519_key(ca.public_key()).map_err(|_| CertificateError::BadCa)?;
    let der = first_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| CertificateError::Malformed)?;
    let signature: [u8; 64] = cert
        .signature_value
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertificateError::ForeignCa)?;
    if cert.signature_algorithm.algorithm.to_id_string() != ED25519_OID
        || !ca_key.verify_strict(cert.tbs_certificate.as_ref(), &Signature(signature))
    {
        return Err(CertificateError::ForeignCa);
    }
    if now > info.not_after {
        return Err(CertificateError::Expired {
            not_after: info.not_after,
        });
    }
    if now < info.not_before {
        return Err(CertificateError::NotYetValid {
            not_before: info.not_before,
        });
    }
    Ok(info)
}

/// When and how the certificate is renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// Renew once less than this share of the lifetime is left (0 to 1).
    pub renew_when_left: f64,
    /// Warn from this long before the expiry.
    pub warn_before: Duration,
    /// Look at the certificate at least this often.
    pub check_every: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            renew_when_left: DEFAULT_RENEW_WHEN_LEFT,
            warn_before: WARN_BEFORE,
            check_every: CHECK_EVERY,
        }
    }
}

/// The certificate in use and its renewals, shared with the local API
/// (`vouch-gateway status`).
#[derive(Debug)]
pub struct CertificateWatch {
    inner: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    info: CertificateInfo,
    renewals: u64,
    next_renewal: Option<WallTime>,
    last_error: Option<String>,
}

impl CertificateWatch {
    /// Watching the certificate `info` describes.
    pub fn new(info: CertificateInfo) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(WatchState {
                info,
                renewals: 0,
                next_renewal: None,
                last_error: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The certificate in use.
    pub fn info(&self) -> CertificateInfo {
        self.lock().info
    }

    /// Renewals so far.
    pub fn renewals(&self) -> u64 {
        self.lock().renewals
    }

    /// Why the last renewal failed, if it did (cleared by a success).
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// What `vouch-gateway status` shows, at `now`.
    pub fn status(&self, now: WallTime) -> serde_json::Value {
        let s = self.lock();
        serde_json::json!({
            "not_before": format_wall(s.info.not_before),
            "not_after": format_wall(s.info.not_after),
            "not_after_ms": s.info.not_after.0,
            "expires_in_s": s.info.left_at(now).as_secs(),
            "expired": now > s.info.not_after,
            "renewal_from": s.next_renewal.map(format_wall),
            "renewals": s.renewals,
            "last_renewal_error": s.last_error,
        })
    }
}

/// What [`follow`] renews, and where it keeps the certificate.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The certificate in use.
    pub watch: Arc<CertificateWatch>,
    /// The file the certificate is kept in (`[backend] certificate`);
    /// `None`: in memory only.
    pub file: Option<PathBuf>,
    /// The pinned backend CA (PEM): a new certificate must come from it.
    pub ca_pem: Vec<u8>,
    /// This gateway's identity key: a new certificate must be for it.
    pub identity: PublicKey,
    /// When to renew.
    pub policy: RenewalPolicy,
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// The backend did not issue one.
    #[error("the backend did not renew the certificate: {0}")]
    Backend(#[from] BackendError),
    /// What it issued is not usable.
    #[error("the renewed certificate is not usable: {0}")]
    Certificate(#[from] CertificateError),
    /// It could not be written.
    #[error("the renewed certificate could not be written to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: vouch_host::fs::FsError,
    },
}

/// Renews the certificate once: asks the backend, checks what it issued,
/// writes it, then uses it.
pub async fn renew<B: BackendApi>(
    backend: &B,
    renewal: &Renewal,
    now: WallTime,
) -> Result<CertificateInfo, RenewalError> {
    let CertificateIssued {
        certificate_pem, ..
    } = backend.renew_certificate().await?;
    let pem = certificate_pem.as_bytes();
    let info = check(pem, &renewal.ca_pem, &renewal.identity, now)?;
    if let Some(path) = &renewal.file {
        vouch_host::fs::AtomicWrite::new(0o600)
            .write_file(path, pem)
            .map_err(|source| RenewalError::Write {
                path: path.clone(),
                source,
            })?;
    }
    backend.use_certificate(pem)?;
    let mut s = renewal.watch.lock();
    s.info = info;
    s.renewals += 1;
    s.last_error = None;
    Ok(info)
}

/// A uniform draw from `[0, 1)` from the operating system, for the jitter;
/// 0.5 if there is no randomness.
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// Keeps the certificate renewed (see the [module docs](self)) until
/// `shutdown` turns `true`; on a backend that offers no renewal, it only
/// watches the expiry.
pub async fn follow<B: BackendApi, C: Clock>(
    backend: B,
    renewal: Renewal,
    clock: C,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let policy = renewal.policy;
    let mut spread = jitter();
    let mut retry = crate::retry::Retry::new(FIRST_RETRY, MAX_RETRY);
    let mut warned_at: Option<WallTime> = None;
    let mut renewing = true;
    // A certificate due for renewal right after it was renewed (a backend
    // whose clock or lifetime is off) is renewed again only after a
    // growing wait, never in a tight loop.
    let mut just_renewed = false;
    loop {
        let now = clock.wall();
        let info = renewal.watch.info();
        metrics.set_certificate_expiry(info.not_after);
        let renew_at = info.renew_at(policy.renew_when_left, spread);
        renewal.watch.lock().next_renewal = renewing.then_some(renew_at);
        let left = info.left_at(now);
        if left <= policy.warn_before
            && warned_at.is_none_or(|w| now.0.saturating_sub(w.0) >= WARN_EVERY_MS)
        {
            warned_at = Some(now);
            let last_error = renewal.watch.last_error();
            let last_error = last_error.as_deref().unwrap_or("-");
            if left.is_zero() {
                error!(expired = %format_wall(info.not_after), last_renewal_error = last_error,
                    "the gateway's client certificate has expired: the backend refuses this gateway until the operator enrolls it again");
            } else {
                warn!(
                    expires = %format_wall(info.not_after),
                    days_left = left.as_secs() / 86_400,
                    renewal_from = %format_wall(renew_at),
                    last_renewal_error = last_error,
                    "the gateway's client certificate expires in {} days; without it the backend refuses this gateway",
                    left.as_secs() / 86_400
                );
            }
        }
        let due = renewing && now >= renew_at;
        let wait = if due && just_renewed {
            just_renewed = false;
            let wait = retry.next_delay();
            warn!(not_after = %format_wall(info.not_after), retry_in_s = wait.as_secs(),
                "the renewed client certificate is due for renewal already: the backend's clock or its certificates.gateway_lifetime_days is off");
            wait
        } else if due {
            let result = tokio::select! {
                r = renew(&backend, &renewal, now) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(new) => {
                    metrics.certificate_renewed(true);
                    info!(
                        not_after = %format_wall(new.not_after),
                        file = %renewal.file.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string()),
                        "client certificate renewed; new connections use it"
                    );
                    spread = jitter();
                    warned_at = None;
                    just_renewed = true;
                    continue;
                }
                Err(RenewalError::Backend(BackendError::Unsupported(what))) => {
                    info!("this backend offers no {what}: the certificate is only watched");
                    renewing = false;
                    policy.check_every
                }
                Err(e) => {
                    metrics.certificate_renewed(false);
                    let wait = retry.next_delay();
                    warn!(error = %e, retry_in_s = wait.as_secs(),
                        expires = %format_wall(info.not_after),
                        "client certificate renewal failed; retrying");
                    renewal.watch.lock().last_error = Some(e.to_string());
                    wait
                }
            }
        } else if renewing {
            if std::mem::take(&mut just_renewed) {
                // The renewal held: the next failure starts from the first step.
                retry.succeeded();
            }
            policy
                .check_every
                .min(Duration::from_millis(renew_at.0.saturating_sub(now.0)))
        } else {
            policy.check_every
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_before: u64, not_after: u64) -> CertificateInfo {
        CertificateInfo {
            not_before: WallTime(not_before),
            not_after: WallTime(not_after),
            key: vouch_proto::keys::IdentityKey::from_seed(&[1; 32]).public_key(),
        }
    }

    #[test]
    fn renewal_starts_when_the_share_left_falls_below_the_threshold_and_jitter_only_delays_it() {
        let day = 86_400_000;
        let c = info(0, 90 * day);
        assert_eq!(c.renew_at(1.0 / 3.0, 0.0), WallTime(60 * day));
        // Jitter: up to a quarter of the window later, never earlier.
        let latest = c.renew_at(1.0 / 3.0, 1.0);
        assert_eq!(latest, WallTime(60 * day + 30 * day / 4));
        for j in [0.1, 0.5, 0.9] {
            let t = c.renew_at(1.0 / 3.0, j);
            assert!(WallTime(60 * day) <= t && t <= latest);
        }
        assert_eq!(c.left_at(WallTime(100 * day)), Duration::ZERO);
    }

    #[test]
    fn jitter_is_in_the_unit_interval() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
