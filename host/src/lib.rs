//! # vouch-host
//!
//! What the host-side crates of Vouch (the gateway, the reference
//! peripheral, the backend) share and must not each write again: files
//! written atomically and durably with the strictest semantics any of them
//! needs, the check that a file holding a secret is private, one way to
//! log, the two clocks
//! (monotonic and wall), the [`Link`](link::Link) trait every transport
//! implements and the TCP link (SPEC.md §8.4). The protocol core
//! (`vouch-proto`) stays free of it: it does no I/O.
//!
//! ```
//! use vouch_host::fs::{check_private, AtomicWrite};
//! # let dir = tempfile::tempdir()?;
//! // A key file: mode 0600, never replacing an existing one.
//! AtomicWrite::new(0o600).never_replace().write(dir.path(), "identity.pem", b"...")?;
//! check_private(&dir.path().join("identity.pem"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`parse`](config::parse) a settings file (errors at file:line:column), [`overlay`](config::overlay) the environment's overrides |
//! | [`fs`] | [`AtomicWrite`](fs::AtomicWrite), [`check_private`](fs::check_private), [`sync_dir`](fs::sync_dir), [`remove_temporaries`](fs::remove_temporaries) |
//! | [`cli`] | [`Docs`](cli::Docs): `completions SHELL` and `man`, generated from a binary's clap definition |
//! | [`clock`] | [`Clock`](clock::Clock): monotonic time for deadlines, wall time for what survives a restart |
//! | [`link`] | [`Link`](link::Link), [`LinkError`](link::LinkError), [`push_fragment`](link::push_fragment) |
//! | [`logging`] | [`init`](logging::init): `tracing` to standard error, filtered by `VOUCH_LOG`, text or one JSON shape |
//! | [`report`] | [`one_line`](report::one_line): an error and its causes as a binary prints them, each said once |
//! | [`tcp`] | [`TcpLink`](tcp::TcpLink): the BLE fragments over TCP, each with a two-byte length |
//!
//! `config`, `logging`, `cli` and `report::fatal` are for binaries: the
//! default feature `bin` has them (and clap, toml, tracing-subscriber);
//! a library can leave it out.

#[cfg(feature = "bin")]
pub mod cli;
pub mod clock;
#[cfg(feature = "bin")]
pub mod config;
pub mod fs;
pub mod link;
#[cfg(feature = "bin")]
pub mod logging;
pub mod report;
pub mod tcp;
