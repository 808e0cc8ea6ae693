//! # vouch-host
//!
//! What the host-side crates of Vouch (the gateway, the reference
//! peripheral, the backend) share and must not each write again: files
//! written atomically and durably with the strictest semantics any of them
//! needs, and the check that a file holding a secret is private. The
//! protocol core (`vouch-proto`) stays free of it: it does no I/O.
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
//! | [`fs`] | [`AtomicWrite`](fs::AtomicWrite), [`check_private`](fs::check_private), [`sync_dir`](fs::sync_dir), [`remove_temporaries`](fs::remove_temporaries) |

pub mod fs;
