//! Where the device keeps its identity, its trust anchors and its resumption
//! ticket, behind one trait so a secure element or a TPM can stand in for files.
//!
//! - [`KeyStore`]: the trait the driver uses. It never hands out the private
//!   key: [`KeyStore::signer`] returns something that *signs*
//!   ([`IdentitySigner`]).
//! - [`FileKeyStore`]: a directory on a Linux device (PKCS#8 PEM key with mode
//!   0600, the anchor bundle as JSON, the ticket as postcard; every write atomic).
//! - [`MemoryKeyStore`]: in memory, for tests, simulators and examples.
//!
//! A secure element or TPM implementation keeps the key in the chip and
//! implements [`IdentitySigner::sign`] as a call into it; anchors and ticket
//! can stay in files (the ticket holds a secret: keep it 0600, or in the chip's
//! own storage if it has some).

mod file;
mod memory;

use std::path::PathBuf;

use vouch_proto::anchor::{AnchorSet, BundleError};
use vouch_proto::handshake::peripheral::TicketWallet;
use vouch_proto::keys::{IdentitySigner, PeripheralId, PublicKey};

pub use file::FileKeyStore;
pub use memory::{MemoryKeyStore, SharedSigner};

/// What the device keeps across reboots.
///
/// The identity key is created once (on the device) and never leaves the
/// store: the only thing done with it is signing, through [`signer`](Self::signer).
pub trait KeyStore: Send + 'static {
    /// The handle that signs with the identity key.
    type Signer: IdentitySigner + Send + Sync;

    /// Signs with the identity key (SPEC.md §5.1 step 3) without exporting it.
    fn signer(&self) -> &Self::Signer;

    /// The identity's public key.
    fn public_key(&self) -> PublicKey {
        self.signer().public_key()
    }

    /// The registry id (SPEC.md §2.2): derived from the key unless the factory
    /// assigned one.
    fn peripheral_id(&self) -> PeripheralId;

    /// The trust anchors. [`KeyStoreError::NotProvisioned`] when none were
    /// installed.
    fn anchors(&self) -> Result<AnchorSet, KeyStoreError>;

    /// Replaces the trust anchors (provisioning, or an applied anchor update,
    /// SPEC.md §7.7). Atomic: after a crash either the old or the new set is
    /// there.
    fn save_anchors(&mut self, anchors: &AnchorSet) -> Result<(), KeyStoreError>;

    /// The stored resumption tickets (SPEC.md §6.1): an empty wallet when
    /// none are stored.
    fn load_tickets(&self) -> Result<TicketWallet, KeyStoreError>;

    /// Stores the tickets, replacing what was stored; an empty wallet
    /// removes them. Atomic, like every write.
    fn save_tickets(&mut self, tickets: &TicketWallet) -> Result<(), KeyStoreError>;
}

impl From<vouch_host::fs::FsError> for KeyStoreError {
    fn from(e: vouch_host::fs::FsError) -> Self {
        use vouch_host::fs::FsError;
        match e {
            FsError::Exists { path } => Self::IdentityExists { path },
            FsError::NotPrivate { path, mode } => Self::InsecurePermissions { path, mode },
            FsError::Io {
                action,
                path,
                source,
            } => Self::Io {
                action,
                path,
                source,
            },
        }
    }
}

/// Errors of the key store layer.
///
/// Messages name the file and say what to do; none contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`, …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// There is no identity key: the device was never set up. A store never
    /// creates one implicitly.
    #[error("no identity key at {path} (generate one first: `vouch-peripheral keygen --dir DIR`)")]
    NoIdentity {
        /// Where the key was expected.
        path: PathBuf,
    },
    /// An identity key exists; generating another would change who the
    /// device is.
    #[error("an identity key already exists at {path}; refusing to replace it (a device's identity never changes: move the directory aside if you really mean to start over)")]
    IdentityExists {
        /// The existing key.
        path: PathBuf,
    },
    /// The key file is not a valid Ed25519 PKCS#8 PEM key. No new identity is
    /// created in its place.
    #[error("{path} is not a valid Ed25519 PKCS#8 PEM private key (corrupt or truncated?); refusing to continue, and no new identity was created: restore the file from a backup, or re-enroll the device with a new key")]
    CorruptKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key file may be read by other users.
    #[error("{path} is readable by group or others (mode {mode:03o}); refusing to use it: fix with `chmod 600 {path}` (and consider the key compromised if others could read it)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No trust anchors were installed.
    #[error("no trust anchors at {path}: provision the device first (`vouch-peripheral provision --dir DIR --anchor BUNDLE.json`)")]
    NotProvisioned {
        /// Where the anchors were expected.
        path: PathBuf,
    },
    /// The anchor file exists but is not a valid bundle.
    #[error("{path} is not a valid anchor bundle: {reason}")]
    CorruptAnchors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bundle to install is not valid.
    #[error("invalid anchor bundle: {0}")]
    InvalidBundle(#[from] BundleError),
    /// The factory-assigned id file is not 16 hex digits.
    #[error("{path} does not hold a peripheral id (16 hex digits)")]
    CorruptId {
        /// The file.
        path: PathBuf,
    },
    /// The ticket file cannot be decoded (it is then discarded: a full
    /// handshake replaces it).
    #[error("{path} is not a valid resumption ticket")]
    CorruptTicket {
        /// The file.
        path: PathBuf,
    },
    /// The operating system has no randomness to give.
    #[error("no OS randomness to generate a key: {0}")]
    NoRandomness(String),
    /// A value could not be encoded.
    #[error("could not encode {0}")]
    Encode(&'static str),
}
