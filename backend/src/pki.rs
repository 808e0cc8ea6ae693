//! The backend's small PKI (rcgen) and TLS configuration (rustls, ring
//! provider, TLS 1.3 only).
//!
//! The backend is its own certificate authority. Its CA signs the server
//! certificate and, at enrollment, each gateway's client certificate. A
//! gateway's certificate carries the gateway's own Ed25519 identity key (the
//! backend never sees the private half): the key in the certificate *is* the
//! gateway's identity, so the TLS layer authenticates exactly the key the
//! vouch binds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, PKCS_ED25519,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use vouch_proto::keys::PublicKey;

/// Errors of certificate issuing and TLS setup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file does not hold what it should.
    #[error("invalid PEM in {0}")]
    Pem(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A random serial number could not be drawn.
    #[error("no system randomness")]
    Random,
}

/// The crypto provider for everything TLS here: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA key and certificate, as PEM.
pub struct CaMaterial {
    /// The CA certificate.
    pub cert_pem: String,
    /// The CA private key (PKCS#8). Secret.
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

/// The default lifetime of a gateway client certificate
/// (`certificates.gateway_lifetime_days`): the gateway renews it itself,
/// long before it ends.
pub const DEFAULT_GATEWAY_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(90 * 86_400);

/// The default lifetime of the server certificate, at `init` and
/// `server-cert reissue`.
pub const DEFAULT_SERVER_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 86_400);

/// How far back a certificate's `notBefore` is set, for clocks a little
/// behind the backend's.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// Sets the validity to `[now - BACKDATE, now + lifetime]`.
fn validity(params: &mut CertificateParams, lifetime: std::time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    let lifetime = time::Duration::try_from(lifetime).unwrap_or(time::Duration::MAX);
    params.not_before = now - BACKDATE;
    params.not_after = now.saturating_add(lifetime);
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| PkiError::Random)?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&b))
}

/// A fresh Ed25519 key for a certificate, and its PEM: PKCS#8 v1 (RFC 8410
/// §7), which OpenSSL 3 reads; rcgen (through ring) would write the v2 form
/// with the public key appended, which it refuses.
fn new_key() -> Result<(KeyPair, zeroize::Zeroizing<String>), PkiError> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|_| PkiError::Random)?;
    let pem = vouch_proto::keys::IdentityKey::from_seed(&seed)
        .to_pkcs8_pem()
        .map_err(|_| PkiError::Pem("a new key"))?;
    let key = KeyPair::from_pem(&pem)?;
    Ok((key, pem))
}

/// Creates a fresh Ed25519 CA.
pub fn generate_ca() -> Result<CaMaterial, PkiError> {
    let (key, key_pem) = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Vouch backend CA");
    ca_extensions(&mut params)?;
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem,
    })
}

/// Creates a fresh ECDSA P-256 CA for the web console's certificate: what
/// browsers verify (none verifies Ed25519 in TLS). Operators who open the
/// console trust it in their browser, or give the console their own
/// certificate. It is name-constrained to `names` (the server's DNS names
/// and IP addresses): browsers that trust it accept from it certificates
/// for those names only, so its key cannot be used to intercept anything
/// else an operator's browser opens.
pub fn generate_console_ca(names: &[String]) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Vouch console CA");
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => rcgen::GeneralSubtree::DnsName(n.clone()),
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    ca_extensions(&mut params)?;
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// The console certificate's lifetime (browsers refuse longer ones from
/// public CAs; `serve` renews it when a month is left).
pub const CONSOLE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(397 * 86_400);

/// Issues the web console's certificate: ECDSA P-256, the server
/// certificate's names, signed by the console CA. Returns (certificate PEM,
/// key PEM).
pub fn issue_console_cert(
    console_ca: &CaMaterial,
    sans: &[String],
    lifetime: std::time::Duration,
) -> Result<(String, zeroize::Zeroizing<String>), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert =
        server_params("Vouch console", sans, lifetime)?.signed_by(&key, &issuer(console_ca)?)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// The parameters of a TLS server certificate: `common_name`, the DNS names
/// and IP addresses of `sans`, server authentication only, valid for
/// `lifetime`.
fn server_params(
    common_name: &str,
    sans: &[String],
    lifetime: std::time::Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    validity(&mut params, lifetime);
    Ok(params)
}

/// Chooses the server's certificate by what the client verifies: the
/// Ed25519 chain of the backend CA for clients that offer Ed25519 (gateways,
/// the CLI, curl and OpenSSL), the console's ECDSA P-256 chain for those
/// that do not (browsers).
#[derive(Debug)]
struct BySignatureScheme {
    ed25519: Arc<rustls::sign::CertifiedKey>,
    ecdsa: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for BySignatureScheme {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let ed25519 = hello
            .signature_schemes()
            .contains(&rustls::SignatureScheme::ED25519);
        match (&self.ecdsa, ed25519) {
            (Some(ecdsa), false) => Some(ecdsa.clone()),
            _ => Some(self.ed25519.clone()),
        }
    }
}

fn certified(
    provider: &rustls::crypto::CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
    what: &'static str,
) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| PkiError::Pem(what))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
        chain, key, provider,
    )?))
}

/// What every CA of the backend's is: a root that signs leaves only
/// (path length 0), with a random serial, valid for 30 years.
fn ca_extensions(params: &mut CertificateParams) -> Result<(), PkiError> {
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    validity(params, std::time::Duration::from_secs(30 * 365 * 86_400));
    Ok(())
}

fn issuer(ca: &CaMaterial) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

/// Issues the server certificate: a fresh Ed25519 key, the given DNS names and
/// IP addresses as SANs, valid for `lifetime`. Returns (certificate PEM, key
/// PEM).
pub fn issue_server_cert(
    ca: &CaMaterial,
    sans: &[String],
    lifetime: std::time::Duration,
) -> Result<(String, zeroize::Zeroizing<String>), PkiError> {
    let (key, key_pem) = new_key()?;
    let cert = server_params("Vouch backend", sans, lifetime)?.signed_by(&key, &issuer(ca)?)?;
    Ok((cert.pem(), key_pem))
}

/// A gateway's Ed25519 public key, for rcgen.
struct GatewaySpki([u8; 32]);

impl PublicKeyData for GatewaySpki {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// A gateway client certificate just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCert {
    /// The certificate, PEM.
    pub pem: String,
    /// Its `notAfter`, milliseconds since the Unix epoch.
    pub not_after_ms: i64,
}

/// Issues a gateway's TLS client certificate for its Ed25519 identity key,
/// valid from an hour ago for `lifetime`.
pub fn issue_gateway_cert(
    ca: &CaMaterial,
    gateway: &PublicKey,
    name: Option<&str>,
    lifetime: std::time::Duration,
) -> Result<GatewayCert, PkiError> {
    let now = std::time::SystemTime::now();
    issue_gateway_cert_between(
        ca,
        gateway,
        name,
        now - BACKDATE.unsigned_abs(),
        now + lifetime,
    )
}

/// [`issue_gateway_cert`] with an explicit validity period (whole seconds):
/// for tests of certificates that expired or are not valid yet.
pub fn issue_gateway_cert_between(
    ca: &CaMaterial,
    gateway: &PublicKey,
    name: Option<&str>,
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> Result<GatewayCert, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let hex = gateway.to_string();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("vouch gateway {}", name.unwrap_or(&hex[..16])),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let not_after_ms = params.not_after.unix_timestamp().saturating_mul(1000);
    let cert = params.signed_by(&GatewaySpki(*gateway.as_bytes()), &issuer(ca)?)?;
    Ok(GatewayCert {
        pem: cert.pem(),
        not_after_ms,
    })
}

/// The Ed25519 key in a certificate's SubjectPublicKeyInfo, if it has one.
pub fn ed25519_key_of(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return None;
    }
    let bytes: [u8; 32] = spki.subject_public_key.data.as_ref().try_into().ok()?;
    PublicKey::from_bytes(bytes)
}

/// The names (DNS names and IP addresses) in the first certificate of
/// `cert_pem`'s subjectAltName.
pub fn server_cert_sans(cert_pem: &str) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let certs = certs_from_pem(cert_pem, "server.pem")?;
    let der = certs.first().ok_or(PkiError::Pem("server.pem"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| PkiError::Pem("server.pem"))?;
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The names a CA certificate is constrained to (its permitted DNS names
/// and single IP addresses), in order.
pub fn name_constraints_of(cert_pem: &str) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let certs = certs_from_pem(cert_pem, "console-ca.pem")?;
    let der = certs.first().ok_or(PkiError::Pem("console-ca.pem"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| PkiError::Pem("console-ca.pem"))?;
    let Ok(Some(nc)) = parsed.name_constraints() else {
        return Ok(Vec::new());
    };
    Ok(nc
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .filter_map(|t| match &t.base {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                8 => <[u8; 4]>::try_from(&b[..4])
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                32 => <[u8; 16]>::try_from(&b[..16])
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The `notAfter` of the first certificate in `cert_pem`, milliseconds
/// since the Unix epoch.
pub fn not_after_ms(cert_pem: &str) -> Result<i64, PkiError> {
    let certs = certs_from_pem(cert_pem, "certificate")?;
    let der = certs.first().ok_or(PkiError::Pem("certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| PkiError::Pem("certificate"))?;
    Ok(parsed.validity().not_after.timestamp().saturating_mul(1000))
}

/// The Ed25519 public key of the CA certificate `ca_pem` (the first
/// certificate in it).
pub fn ca_public_key(ca_pem: &str) -> Result<PublicKey, PkiError> {
    let certs = certs_from_pem(ca_pem, "ca.pem")?;
    certs
        .first()
        .and_then(ed25519_key_of)
        .ok_or(PkiError::Pem("ca.pem"))
}

fn certs_from_pem(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| PkiError::Pem(what))?;
    if certs.is_empty() {
        return Err(PkiError::Pem(what));
    }
    Ok(certs)
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "ca.pem")? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// The server's TLS configuration: TLS 1.3 only, ring, ALPN h2 and
/// http/1.1, client certificates from our CA verified when presented and
/// optional at the TLS layer (admin and operations routes do not need one; the
/// gateway routes refuse requests without one). Every client certificate
/// the TLS layer refuses is counted and logged by `rejections`.
///
/// With `console` (the console's certificate chain and key PEM), clients
/// that do not verify Ed25519, browsers, get that ECDSA P-256 chain instead
/// ([`issue_console_cert`]).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    console: Option<(&str, &str)>,
    rejections: ClientCertRejections,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()?;
    let verifier = Arc::new(CountingVerifier { inner, rejections });
    let mut chain = certs_from_pem(cert_pem, "server.pem")?;
    chain.extend(certs_from_pem(ca_pem, "ca.pem")?);
    let resolver = BySignatureScheme {
        ed25519: certified(&provider, chain, key_pem, "server-key.pem")?,
        ecdsa: console
            .map(|(chain_pem, key_pem)| {
                certified(
                    &provider,
                    certs_from_pem(chain_pem, "console.pem")?,
                    key_pem,
                    "console-key.pem",
                )
            })
            .transpose()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Why the TLS layer refused a client certificate: the `reason` label of
/// `vouch_client_certificates_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// Past its `notAfter`: the gateway did not renew it in time.
    Expired,
    /// Before its `notBefore`: the gateway's or the backend's clock is off.
    NotYetValid,
    /// Not issued by this backend's CA: an unknown issuer, or a signature
    /// that does not verify with the CA's key (another backend's CA, whose
    /// name is the same, or a forgery).
    UnknownCa,
    /// The client's handshake signature does not verify with its
    /// certificate's key: the client's key is not the certificate's.
    KeyMismatch,
    /// Not for client authentication (wrong key usage or purpose).
    WrongPurpose,
    /// Malformed, or refused for another reason.
    Invalid,
}

impl RejectReason {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::UnknownCa => "unknown_ca",
            RejectReason::KeyMismatch => "key_mismatch",
            RejectReason::WrongPurpose => "wrong_purpose",
            RejectReason::Invalid => "invalid",
        }
    }

    /// What an operator reads in the log.
    fn describe(self) -> &'static str {
        match self {
            RejectReason::Expired => "the client certificate has expired (the gateway did not renew it: look at its log)",
            RejectReason::NotYetValid => "the client certificate is not valid yet (a clock is wrong)",
            RejectReason::UnknownCa => "the client certificate was not issued by this backend's CA (another backend's, or forged)",
            RejectReason::KeyMismatch => "the client's key does not match its certificate",
            RejectReason::WrongPurpose => "the certificate is not for client authentication",
            RejectReason::Invalid => "the client certificate is malformed or unacceptable",
        }
    }

    /// The reason of an error of the certificate's verification (not of the
    /// handshake signature: that is [`RejectReason::KeyMismatch`]).
    pub fn of(e: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } => RejectReason::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => RejectReason::NotYetValid,
                #[allow(deprecated)]
                C::UnknownIssuer | C::BadSignature => RejectReason::UnknownCa,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => RejectReason::WrongPurpose,
                _ => RejectReason::Invalid,
            },
            _ => RejectReason::Invalid,
        }
    }
}

/// How often at most one line per [`RejectReason`] is logged.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts the client certificates the TLS layer refuses by
/// [`RejectReason`] (every one), and logs them at WARN, at most one line
/// per reason every 10 s with how many were not logged since. Before this,
/// a gateway with an expired certificate left no trace on the backend.
/// Cheap to clone; clones share the counts.
#[derive(Clone, Debug)]
pub struct ClientCertRejections {
    counter: prometheus::IntCounterVec,
    last_logged: Arc<Mutex<HashMap<RejectReason, (Instant, u64)>>>,
}

impl ClientCertRejections {
    /// Counting into `counter` (label `reason`).
    pub fn new(counter: prometheus::IntCounterVec) -> Self {
        Self {
            counter,
            last_logged: Arc::default(),
        }
    }

    /// Counts and (rate-limited) logs one refused certificate.
    pub fn record(&self, reason: RejectReason, cert: &CertificateDer<'_>) {
        self.counter.with_label_values(&[reason.as_str()]).inc();
        let Some(suppressed) = self.log_now(reason, Instant::now()) else {
            return;
        };
        let key = ed25519_key_of(cert).map(|k| k.to_string());
        tracing::warn!(
            reason = reason.as_str(),
            gateway_key = key.as_deref().unwrap_or("-"),
            suppressed,
            "rejected a client certificate: {}",
            reason.describe()
        );
    }
}

impl ClientCertRejections {
    /// Whether a refusal for `reason` at `now` is logged, and if so how many
    /// were not since the last line: the first of a reason is, then none
    /// until [`REJECTION_LOG_EVERY`] after the last line.
    fn log_now(&self, reason: RejectReason, now: Instant) -> Option<u64> {
        let mut map = self
            .last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get_mut(&reason) {
            None => {
                map.insert(reason, (now, 0));
                Some(0)
            }
            Some((last, suppressed)) if now.duration_since(*last) < REJECTION_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some(entry) => Some(std::mem::replace(entry, (now, 0)).1),
        }
    }
}

/// The client-certificate verifier with every refusal recorded in
/// [`ClientCertRejections`]; the decisions are the inner verifier's.
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rejections: ClientCertRejections,
}

impl ClientCertVerifier for CountingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| self.rejections.record(RejectReason::of(e), end_entity))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .inspect_err(|_| self.rejections.record(RejectReason::KeyMismatch, cert))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|_| self.rejections.record(RejectReason::KeyMismatch, cert))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration that trusts only the backend CA (the pinned CA of
/// DESIGN.md §5) and, if given, authenticates with a gateway certificate and
/// its Ed25519 key (PKCS#8 PEM). For gateways, the CLI and tests.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = certs_from_pem(cert_pem, "gateway certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|_| PkiError::Pem("gateway key"))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::keys::IdentityKey;

    #[test]
    fn rejections_are_all_counted_and_logged_once_per_reason_every_ten_seconds() {
        let metrics = crate::metrics::Metrics::new();
        let r = metrics.client_cert_rejections();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(r.log_now(RejectReason::Expired, at(0)), Some(0));
        assert_eq!(r.log_now(RejectReason::Expired, at(1)), None);
        assert_eq!(r.log_now(RejectReason::Expired, at(9)), None);
        // Another reason has its own line.
        assert_eq!(r.log_now(RejectReason::UnknownCa, at(9)), Some(0));
        // Ten seconds after the last line: one line, with the two not logged.
        assert_eq!(r.log_now(RejectReason::Expired, at(10)), Some(2));
        assert_eq!(r.log_now(RejectReason::Expired, at(11)), None);
        let der = CertificateDer::from(vec![0u8; 4]);
        for _ in 0..3 {
            r.record(RejectReason::KeyMismatch, &der);
        }
        assert_eq!(
            metrics
                .client_certificates_rejected
                .with_label_values(&["key_mismatch"])
                .get(),
            3
        );
    }

    #[test]
    fn gateway_certificate_carries_the_gateway_key() {
        let ca = generate_ca().unwrap();
        let gw = IdentityKey::from_seed(&[5; 32]);
        let lifetime = std::time::Duration::from_secs(90 * 86_400);
        let issued = issue_gateway_cert(&ca, &gw.public_key(), Some("gw-1"), lifetime).unwrap();
        let pem = issued.pem;
        let der = certs_from_pem(&pem, "t").unwrap().remove(0);
        // The lifetime is honoured: notAfter is 90 days from now.
        assert_eq!(not_after_ms(&pem).unwrap(), issued.not_after_ms);
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let days = (issued.not_after_ms - now_ms) as f64 / 86_400_000.0;
        assert!((89.99..=90.01).contains(&days), "{days} days");
        assert_eq!(ed25519_key_of(&der), Some(gw.public_key()));
        // And the client side accepts the pair (key parsed by rustls/ring).
        let key_pem = gw.to_pkcs8_pem().unwrap();
        client_config(&ca.cert_pem, Some((&pem, &key_pem))).unwrap();
        let (spem, skey) =
            issue_server_cert(&ca, &["localhost".into(), "127.0.0.1".into()], lifetime).unwrap();
        assert_eq!(server_cert_sans(&spem).unwrap(), ["localhost", "127.0.0.1"]);
        server_config(
            &ca.cert_pem,
            &spem,
            &skey,
            None,
            crate::metrics::Metrics::new().client_cert_rejections(),
        )
        .unwrap();
        // With the console's ECDSA chain beside it; a key that is not the
        // certificate's is refused.
        let console_ca = generate_console_ca(&["localhost".into()]).unwrap();
        let (cpem, ckey) =
            issue_console_cert(&console_ca, &["localhost".into()], CONSOLE_LIFETIME).unwrap();
        assert_eq!(server_cert_sans(&cpem).unwrap(), ["localhost"]);
        let chain = format!("{cpem}{}", console_ca.cert_pem);
        let rejections = || crate::metrics::Metrics::new().client_cert_rejections();
        server_config(
            &ca.cert_pem,
            &spem,
            &skey,
            Some((&chain, &ckey)),
            rejections(),
        )
        .unwrap();
        assert!(server_config(
            &ca.cert_pem,
            &spem,
            &skey,
            Some((&chain, &skey)),
            rejections()
        )
        .is_err());
        // The console CA vouches for the server's names only: a certificate
        // it signs for another name does not verify.
        let names = ["vouch.example".to_owned(), "127.0.0.1".to_owned()];
        let console_ca = generate_console_ca(&names).unwrap();
        assert_eq!(name_constraints_of(&console_ca.cert_pem).unwrap(), names);
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs_from_pem(&console_ca.cert_pem, "ca").unwrap());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let check = |name: &str| {
            let (pem, _) =
                issue_console_cert(&console_ca, &[name.to_owned()], CONSOLE_LIFETIME).unwrap();
            let leaf = certs_from_pem(&pem, "leaf").unwrap().remove(0);
            let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &server, &[], rustls::pki_types::UnixTime::now())
                .is_ok()
        };
        assert!(check("vouch.example"));
        assert!(check("127.0.0.1"));
        assert!(
            !check("bank.example"),
            "the console CA must not vouch for other names"
        );
        assert!(!check("10.0.0.1"));
    }
}
