//! One way every Vouch binary logs: `tracing` to standard error, filtered
//! by the one variable [`VAR`] (`VOUCH_LOG`, `EnvFilter` syntax:
//! `info`, `vouch_gateway=debug,warn`), as text (coloured only on a
//! terminal) or as one JSON object per line with the same shape everywhere:
//! `timestamp`, `level`, `target`, `message` and the event's fields at the
//! top level, the spans under `spans`.
//!
//! ```no_run
//! use vouch_host::logging::{self, Format};
//! logging::init(Format::Json, "info").expect("VOUCH_LOG is valid");
//! tracing::info!(gateway = "gw-17", "backend reachable again");
//! // {"timestamp":"…","level":"INFO","message":"backend reachable again","gateway":"gw-17","target":"…"}
//! ```

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// The environment variable every binary reads its log filter from.
pub const VAR: &str = "VOUCH_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (see the [module docs](self)).
    Json,
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// [`VAR`] is set to something that is not a filter.
    #[error("{VAR}={value:?} is not a log filter ({reason}); examples: info, debug, vouch_gateway=debug,warn")]
    BadFilter {
        /// The value.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A subscriber was installed already.
    #[error("logging was already initialized")]
    AlreadyInitialized,
}

/// Installs the global subscriber: the filter from [`VAR`], or `default`
/// when it is unset or empty; a malformed value is an error, never ignored.
pub fn init(format: Format, default: &str) -> Result<(), LogError> {
    let filter = filter(std::env::var(VAR).ok().as_deref(), default)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        Format::Json => builder.json().flatten_event(true).try_init(),
        Format::Text => builder.try_init(),
    };
    result.map_err(|_| LogError::AlreadyInitialized)?;
    // Only the first successful `init` gets here: the subscriber is global.
    let _ = INSTALLED.set(format);
    Ok(())
}

/// The format [`init`] installed, if it ran: the one
/// [`report::fatal`](crate::report::fatal) writes a binary's last words in.
pub fn installed() -> Option<Format> {
    INSTALLED.get().copied()
}

static INSTALLED: OnceLock<Format> = OnceLock::new();

/// The filter for a value of [`VAR`] (`None`: unset).
fn filter(value: Option<&str>, default: &str) -> Result<EnvFilter, LogError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    let text = value.unwrap_or(default);
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| LogError::BadFilter {
            value: text.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_or_empty_variable_gives_the_default_and_a_bad_one_is_an_error() {
        assert_eq!(filter(None, "warn").unwrap().to_string(), "warn");
        assert_eq!(filter(Some("  "), "warn").unwrap().to_string(), "warn");
        assert_eq!(
            filter(Some("vouch_gateway=debug"), "warn")
                .unwrap()
                .to_string(),
            "vouch_gateway=debug"
        );
        let e = filter(Some("vouch_gateway=loud"), "info").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("VOUCH_LOG=\"vouch_gateway=loud\""),
            "{e}"
        );
    }
}
