//! The gateway's errors: one enum for the library (STYLE.md §3.7).

use crate::backend_client::BackendError;
use crate::transport::LinkError;

/// What can go wrong in the gateway library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The link to a peripheral failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The backend could not be reached or answered badly.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The protocol failed (handshake or session).
    #[error("protocol: {0}")]
    Protocol(#[from] vouch_proto::Error),
    /// The peer disconnected.
    #[error("peer disconnected")]
    Disconnected,
    /// A handshake or session deadline passed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A resumption reached its end after a later attempt with the same
    /// ticket had verified: only the latest may use it (SPEC.md §6.1).
    #[error("resumption superseded by a later attempt with the same ticket")]
    ResumptionSuperseded,
    /// The gateway is at its session limit.
    #[error("session limit reached")]
    AtCapacity,
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state directory cannot be used.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A key could not be parsed.
    #[error("{path}: {source}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        source: vouch_proto::keys::KeyError,
    },
}
