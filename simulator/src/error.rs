//! The library's one error type.

use std::path::PathBuf;

/// Why a simulation could not be set up or run.
///
/// Scenario problems name where they are (`file:line:column`) and which
/// field; everything else names the component that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The scenario file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    ReadScenario {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The scenario is not valid TOML or names an unknown or mistyped field.
    #[error("{origin}:{line}:{column}: {message}")]
    Scenario {
        /// The file name or `builtin:NAME`.
        origin: String,
        /// 1-based line of the offending field.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// No built-in scenario has this name and no file has this path.
    #[error("unknown scenario {0:?}: not a built-in (see `vouch-sim list`) and not a file")]
    UnknownScenario(String),
    /// A command-line or scenario setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// The backend could not be set up or answered an admin call wrongly.
    #[error("backend: {0}")]
    Backend(String),
    /// A gateway could not be set up.
    #[error("gateway: {0}")]
    Gateway(String),
    /// Writing the report or the plot failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something did not happen within its deadline.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl Error {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        Error::Backend(e.to_string())
    }
}
