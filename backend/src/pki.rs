//! The backend's small PKI (rcgen) and TLS configuration (rustls, ring
//! provider, TLS 1.3 only).
//!
//! The backend is its own certificate authority. Its CA signs the server
//! certificate and, at enrollment, each gateway's client certificate. A
//! gateway's certificate carries the gateway's own Ed25519 identity key (the
//! backend never sees the private half): the key in the certificate *is* the
//! gateway's identity, so the TLS layer authenticates exactly the key the
//! vouch binds.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, PKCS_ED25519,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

fn validity(params: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * years);
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
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    validity(&mut params, 30);
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem,
    })
}

fn issuer(ca: &CaMaterial) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

/// Issues the server certificate: a fresh Ed25519 key, the given DNS names and
/// IP addresses as SANs. Returns (certificate PEM, key PEM).
pub fn issue_server_cert(
    ca: &CaMaterial,
    sans: &[String],
) -> Result<(String, zeroize::Zeroizing<String>), PkiError> {
    let (key, key_pem) = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Vouch backend");
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
    validity(&mut params, 10);
    let cert = params.signed_by(&key, &issuer(ca)?)?;
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

/// Issues a gateway's TLS client certificate for its Ed25519 identity key.
pub fn issue_gateway_cert(
    ca: &CaMaterial,
    gateway: &PublicKey,
    name: Option<&str>,
) -> Result<String, PkiError> {
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
    validity(&mut params, 10);
    let cert = params.signed_by(&GatewaySpki(*gateway.as_bytes()), &issuer(ca)?)?;
    Ok(cert.pem())
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
/// gateway routes refuse requests without one).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()?;
    let mut chain = certs_from_pem(cert_pem, "server.pem")?;
    chain.extend(certs_from_pem(ca_pem, "ca.pem")?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| PkiError::Pem("server-key.pem"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
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
    fn gateway_certificate_carries_the_gateway_key() {
        let ca = generate_ca().unwrap();
        let gw = IdentityKey::from_seed(&[5; 32]);
        let pem = issue_gateway_cert(&ca, &gw.public_key(), Some("gw-1")).unwrap();
        let der = certs_from_pem(&pem, "t").unwrap().remove(0);
        assert_eq!(ed25519_key_of(&der), Some(gw.public_key()));
        // And the client side accepts the pair (key parsed by rustls/ring).
        let key_pem = gw.to_pkcs8_pem().unwrap();
        client_config(&ca.cert_pem, Some((&pem, &key_pem))).unwrap();
        let (spem, skey) =
            issue_server_cert(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        server_config(&ca.cert_pem, &spem, &skey).unwrap();
    }
}
