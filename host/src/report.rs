//! An error as a binary prints it: the error and its causes on one line,
//! each said once. Errors of the Vouch crates often carry their cause in
//! their own message (`{path}: {source}`) as well as in `source()`;
//! printing the chain naively says "No such file or directory (os error 2)"
//! twice.
//!
//! ```
//! let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
//! let e = anyhow_like(format!("/etc/x.toml: {io}"), io);
//! assert_eq!(vouch_host::report::one_line(&*e), "/etc/x.toml: no such file");
//! # fn anyhow_like(msg: String, src: std::io::Error) -> Box<dyn std::error::Error> {
//! #     #[derive(Debug)] struct E(String, std::io::Error);
//! #     impl std::fmt::Display for E { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str(&self.0) } }
//! #     impl std::error::Error for E { fn source(&self) -> Option<&(dyn std::error::Error + 'static)> { Some(&self.1) } }
//! #     Box::new(E(msg, src))
//! # }
//! ```

use std::error::Error;

#[cfg(feature = "bin")]
use crate::logging::{self, Format};

/// `e` and its sources joined by `: `, leaving out a cause whose text the
/// line already holds.
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// How a binary says that it stopped on an error: with JSON logs
/// installed ([`logging::init`]), one `ERROR` event `stopped on an error`
/// with the line as its `error` field, so that nothing reaches standard
/// error outside the log format; otherwise `error: <the line>` on standard
/// error.
#[cfg(feature = "bin")]
pub fn fatal(e: &(dyn Error + 'static)) {
    let line = one_line(e);
    if logging::installed() == Some(Format::Json) {
        tracing::error!(error = %line, "stopped on an error");
    } else {
        eprintln!("error: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("{path}: {source}")]
        Io {
            path: String,
            source: std::io::Error,
        },
        #[error("cannot start")]
        Start(#[source] std::io::Error),
    }

    #[test]
    fn a_cause_is_said_once() {
        let io = || std::io::Error::from_raw_os_error(2);
        let e = Outer::Io {
            path: "/x".into(),
            source: io(),
        };
        let line = one_line(&e);
        assert_eq!(line.matches("os error 2").count(), 1, "{line}");
        let line = one_line(&Outer::Start(io()));
        assert!(
            line.starts_with("cannot start: ") && line.ends_with("(os error 2)"),
            "{line}"
        );
    }
}
