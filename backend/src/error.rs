//! HTTP errors. Where each kind of error belongs (after crates.io's
//! `util/errors.rs`):
//!
//! - the storage layer returns [`crate::store::StoreError`], the
//!   PKI [`crate::pki::PkiError`], the data directory
//!   [`crate::datadir::DataDirError`]: typed, matchable;
//! - handlers return [`AppError`], which turns any of them into a response
//!   `{"error": {"code": "stable_code", "message": "..."}}` with a 4xx status
//!   for anything the caller did and 503 for what the service could not do.
//!   The body never carries internal detail (SQL, paths, causes): those go to
//!   the log at `error` level;
//! - `anyhow` appears only in the binary.
//!
//! Refusals to vouch are not errors here: they travel as
//! `VouchAnswer::Refused` inside a 200 answer, uniform by design.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
pub use vouch_proto::wire::backend::ErrorCode;

use crate::registry::RegistryError;
use crate::store::{Conflict, StoreError};

/// Serializes an [`ErrorCode`] as its stable string (for serde's
/// `serialize_with`).
pub fn serialize_code<S: serde::Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code.as_str())
}

/// An error answer of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code. An error answer also carries it in
    /// the response's extensions, for the audit of refusals at the HTTP
    /// level ([`crate::routes`]).
    pub code: ErrorCode,
    /// Human-readable message, safe to show to the caller.
    pub message: String,
}

impl AppError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{what} not found"),
        )
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a valid admin bearer token is required",
        )
    }

    /// 403 `forbidden`: the caller's role is below the one the request needs.
    pub fn forbidden(has: crate::access::Role, needs: crate::access::Role) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("this request needs the role {needs}; the token's operator is a {has}"),
        )
    }

    /// 503 `unavailable` (the store or another dependency failed).
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the service cannot answer right now; retry later",
        )
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for AppError {}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        let mut res = (self.status, axum::Json(body)).into_response();
        res.extensions_mut().insert(self.code);
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<RegistryError> for AppError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid { code, message } => AppError::bad_request(code, message),
            RegistryError::NotFound(what) => AppError::not_found(what),
            RegistryError::Store(e) => e.into(),
            e @ RegistryError::Certificate(_) => {
                tracing::error!(error = %e, "gateway certificate issuing failed");
                AppError::unavailable()
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AppError::not_found("record"),
            StoreError::Conflict(c) => {
                let code = match c {
                    Conflict::PeripheralId => ErrorCode::PeripheralExists,
                    Conflict::PeripheralKey => ErrorCode::PublicKeyInUse,
                    Conflict::Gateway => ErrorCode::GatewayExists,
                    Conflict::Policy => ErrorCode::PolicyExists,
                };
                AppError::new(StatusCode::CONFLICT, code, c.to_string())
            }
            e @ StoreError::NotActive(_) => AppError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::GatewayNotActive,
                e.to_string(),
            ),
            e @ StoreError::InvalidTransition { .. } => AppError::new(
                StatusCode::CONFLICT,
                ErrorCode::InvalidTransition,
                e.to_string(),
            ),
            e @ StoreError::OperatorExists => AppError::new(
                StatusCode::CONFLICT,
                ErrorCode::OperatorExists,
                e.to_string(),
            ),
            e @ StoreError::LastAdmin => {
                AppError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "store failure");
                AppError::unavailable()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_show_no_internal_detail() {
        let e = AppError::from(StoreError::Database(sqlx::Error::Protocol(
            "SELECT secret FROM x".into(),
        )));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.message.contains("SELECT"));
    }
}
