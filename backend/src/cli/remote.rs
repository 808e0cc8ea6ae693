//! The CLI over the network: `--url https://HOST:8443` runs a registry verb
//! through the admin API instead of opening the store. The token is the
//! operator's (`--token-file`, or `VOUCH_TOKEN`); the server's certificate
//! must chain to the backend CA given with `--ca-cert` (the `ca.pem` of the
//! backend's data directory), and to nothing else: the same pinning as a
//! gateway's. Errors are the API's stable code and message, printed as the
//! local mode prints the same error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use zeroize::Zeroizing;

/// A connection to a backend's admin API.
pub(crate) struct Admin {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Zeroizing<String>,
    /// The pinned CA file, as given (enrollment answers name it).
    pub(super) ca_path: PathBuf,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// How long one admin request may take (an import of a large file included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

impl Admin {
    /// Connects to `url` with the token and the pinned CA. Nothing is sent
    /// until the first request.
    pub(super) fn new(url: &str, token: Zeroizing<String>, ca_path: &Path) -> Result<Self> {
        let base = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
        if base.scheme() != "https" {
            bail!("--url must be https:// (the admin token must not cross the network in clear)");
        }
        if !base.username().is_empty() || base.password().is_some() {
            bail!(
                "--url must not carry credentials; give the token with --token-file or VOUCH_TOKEN"
            );
        }
        if base.host_str().is_none() {
            bail!("--url {url:?} names no host");
        }
        let pem = std::fs::read_to_string(ca_path)
            .with_context(|| format!("cannot read the backend CA {}", ca_path.display()))?;
        let tls = vouch_backend::pki::client_config(&pem, None)
            .with_context(|| format!("{} is not a CA certificate (PEM)", ca_path.display()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // The backend never redirects; a redirect would carry the
            // token and the body somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot set up the HTTPS client")?;
        Ok(Self {
            http,
            base,
            token: token_checked(token)?,
            ca_path: ca_path.to_owned(),
        })
    }

    fn url(&self, path_and_query: &str) -> Result<reqwest::Url> {
        self.base
            .join(path_and_query)
            .with_context(|| format!("bad request path {path_and_query:?}"))
    }

    /// Sends a request; answers the JSON body (`Null` for none), or the
    /// API's error as "message (code)".
    pub(super) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Body>,
    ) -> Result<Value> {
        let url = self.url(path_and_query)?;
        let mut req = self
            .http
            .request(method, url.clone())
            .bearer_auth(self.token.as_str());
        match body {
            Some(Body::Json(v)) => req = req.json(&v),
            Some(Body::Bytes(b, ct)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, ct)
                    .body(b.to_vec())
            }
            None => {}
        }
        let res = req.send().await.map_err(|e| connect_error(&e, &url))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("{url} answered {status} with a body that is not JSON"));
        }
        Err(api_error(status, &bytes))
    }

    /// `GET`.
    pub(super) async fn get(&self, path_and_query: &str) -> Result<Value> {
        self.send(Method::GET, path_and_query, None).await
    }

    /// `POST` with a JSON body (or none).
    pub(super) async fn post(&self, path: &str, body: Option<Value>) -> Result<Value> {
        self.send(Method::POST, path, body.map(Body::Json)).await
    }

    /// `DELETE`.
    pub(super) async fn delete(&self, path: &str) -> Result<Value> {
        self.send(Method::DELETE, path, None).await
    }
}

/// A request body.
pub(super) enum Body {
    /// JSON.
    Json(Value),
    /// Raw bytes with a content type (imports).
    Bytes(Arc<[u8]>, &'static str),
}

/// The token as read: trimmed, and refused early if it does not look like
/// one (a path or a PEM given by mistake would otherwise travel as a
/// bearer token).
fn token_checked(token: Zeroizing<String>) -> Result<Zeroizing<String>> {
    let t = Zeroizing::new(token.trim().to_owned());
    if vouch_backend::access::token_id(&t).is_none() {
        bail!("the token is not a Vouch API token (vouch_…): check --token-file or VOUCH_TOKEN");
    }
    Ok(t)
}

/// Reads the token: `--token-file` (which must not be readable by others),
/// else `VOUCH_TOKEN`.
pub(super) fn read_token(file: Option<&Path>) -> Result<Zeroizing<String>> {
    if let Some(p) = file {
        vouch_host::fs::check_private(p)
            .with_context(|| format!("the token file {}", p.display()))?;
        let t = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the token file {}", p.display()))?;
        return Ok(Zeroizing::new(t));
    }
    match std::env::var("VOUCH_TOKEN") {
        Ok(t) => Ok(Zeroizing::new(t)),
        Err(_) => bail!("--url needs a token: --token-file FILE (mode 0600) or VOUCH_TOKEN"),
    }
}

/// A transport failure, said for a person.
fn connect_error(e: &reqwest::Error, url: &reqwest::Url) -> anyhow::Error {
    let mut chain = String::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        chain.push_str(&format!(": {s}"));
        src = s.source();
    }
    if chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate") {
        return anyhow!(
            "{url}: the server's certificate is not from the pinned backend CA (--ca-cert){chain}"
        );
    }
    anyhow!("cannot reach {url}{chain}")
}

/// The API's error body as the local mode prints the same error.
fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (v["error"]["message"].as_str(), v["error"]["code"].as_str()) {
        (Some(message), Some(code)) => anyhow!("{message} ({code})"),
        _ => anyhow!(
            "the backend answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    }
}

/// Percent-encodes one path segment or query value.
pub(super) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string of the pairs whose value is given: `?a=1&b=x`, or empty.
pub(super) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_segments_are_encoded() {
        assert_eq!(enc("a b/c?d&e=f%"), "a%20b%2Fc%3Fd%26e%3Df%25");
        assert_eq!(
            query(&[
                ("group", Some("x&y".into())),
                ("status", None),
                ("limit", Some("5".into()))
            ]),
            "?group=x%26y&limit=5"
        );
        assert_eq!(query(&[("a", None)]), "");
    }

    #[test]
    fn an_error_body_reads_as_the_local_error() {
        let e = api_error(
            StatusCode::FORBIDDEN,
            br#"{"error":{"code":"forbidden","message":"needs operator"}}"#,
        );
        assert_eq!(e.to_string(), "needs operator (forbidden)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert!(e.to_string().contains("502"), "{e}");
    }

    #[test]
    fn urls_must_be_https_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let t = || Zeroizing::new(format!("vouch_{}", "a".repeat(64)));
        for (url, says) in [
            ("http://h:8443", "https"),
            ("https://u:p@h:8443", "credentials"),
            ("not a url", "--url"),
        ] {
            let e = Admin::new(url, t(), &ca).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{url}: {e:#}");
        }
        let e = Admin::new("https://h:8443", t(), &ca).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the backend CA"),
            "{e:#}"
        );
        std::fs::write(&ca, "not pem").unwrap();
        let e =
            Admin::new("https://h:8443", Zeroizing::new("/etc/passwd".into()), &ca).unwrap_err();
        assert!(format!("{e:#}").contains("not a CA") || format!("{e:#}").contains("token"));
    }
}
