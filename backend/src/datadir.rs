//! The data directory: the backend's keys, its CA, its TLS certificate, the
//! admin token hash and (by default) the SQLite database.
//!
//! | file | content | mode |
//! |---|---|---|
//! | `signing-N.pem` | Ed25519 vouch- and update-signing key of key id N, PKCS#8 PEM (`openssl pkey -in` reads it) | 0600 |
//! | `sealing-N.pem` | X25519 hello-sealing key of key id N, PKCS#8 PEM (RFC 8410, OID 1.3.101.110) | 0600 |
//! | `ca.pem`, `ca-key.pem` | the backend CA (Ed25519) | 0644, 0600 |
//! | `server.pem`, `server-key.pem` | the HTTPS server certificate (Ed25519) | 0644, 0600 |
//! | `admin-token.sha256` | SHA-256 of the admin bearer token, hex; the token itself is printed once by `init` and stored nowhere | 0600 |
//! | `vouch.db` (+ `-wal`, `-shm`) | the SQLite registry (unless `--database-url` points elsewhere) | 0600 |
//! | `config.toml` | optional settings, see [`crate::config`] | 0644 |
//!
//! Every file is written to a temporary name with its final mode, synced, and
//! renamed into place, so a crash leaves either the old state or the new.
//!
//! ## The key ring
//!
//! The backend's key pairs (SPEC.md §2.5) are the `signing-N.pem` /
//! `sealing-N.pem` pairs in the directory, one per key id N (decimal, 0–255).
//! `init` creates key id 1; `vouch-backend keys rotate` adds the next one and
//! `keys purge` removes a retired one (see [`crate::keyring`], which also
//! keeps each key's status in the database). A directory from before key
//! rotation holds exactly key id 1 and is read unchanged: there is nothing to
//! migrate. A key file readable by group or others is refused when it is
//! loaded, whichever key id it holds.

use std::fs;
use vouch_host::fs::{AtomicWrite, FsError};

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::keys::{IdentityKey, KeyId, SealingKey};
use zeroize::Zeroizing;

use crate::pki::{self, CaMaterial};

/// The key id `init` creates.
pub const KEY_ID: KeyId = KeyId(1);

/// File names, relative to the data directory.
pub mod files {
    use vouch_proto::keys::KeyId;

    /// Ed25519 signing key, key id 1 (the one `init` creates).
    pub const SIGNING: &str = "signing-1.pem";
    /// X25519 sealing key, key id 1 (the one `init` creates).
    pub const SEALING: &str = "sealing-1.pem";

    /// The Ed25519 signing key file of key id `kid`.
    pub fn signing(kid: KeyId) -> String {
        format!("signing-{}.pem", kid.0)
    }

    /// The X25519 sealing key file of key id `kid`.
    pub fn sealing(kid: KeyId) -> String {
        format!("sealing-{}.pem", kid.0)
    }

    /// The key id a key file name is for: `signing-N.pem` or
    /// `sealing-N.pem` with N in canonical decimal (no sign, no leading zero).
    pub fn key_id_of(name: &str) -> Option<KeyId> {
        let n = name
            .strip_prefix("signing-")
            .or_else(|| name.strip_prefix("sealing-"))?
            .strip_suffix(".pem")?;
        if n.is_empty()
            || (n.len() > 1 && n.starts_with('0'))
            || !n.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        n.parse::<u8>().ok().map(KeyId)
    }
    /// CA certificate.
    pub const CA: &str = "ca.pem";
    /// CA key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// Server certificate.
    pub const SERVER: &str = "server.pem";
    /// Server key.
    pub const SERVER_KEY: &str = "server-key.pem";
    /// Admin token hash.
    pub const TOKEN: &str = "admin-token.sha256";
    /// SQLite database.
    pub const DB: &str = "vouch.db";
    /// Optional configuration.
    pub const CONFIG: &str = "config.toml";
    /// The web console's CA (ECDSA P-256; operators trust it in their
    /// browsers). Made by `serve` when missing.
    pub const CONSOLE_CA: &str = "console-ca.pem";
    /// The console CA's key.
    pub const CONSOLE_CA_KEY: &str = "console-ca-key.pem";
    /// The console's certificate (the server's names, ECDSA P-256), with
    /// the console CA after it.
    pub const CONSOLE: &str = "console.pem";
    /// The console certificate's key.
    pub const CONSOLE_KEY: &str = "console-key.pem";
    /// Every file `init` creates besides the database and the config.
    pub const IDENTITY: [&str; 7] = [SIGNING, SEALING, CA, CA_KEY, SERVER, SERVER_KEY, TOKEN];
    /// The files of [`IDENTITY`] that stay for the life of the directory
    /// (the key pair of key id 1 may be purged after a rotation).
    pub const FIXED: [&str; 5] = [CA, CA_KEY, SERVER, SERVER_KEY, TOKEN];
}

/// Errors of the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Some but not all of the files exist.
    #[error(
        "{dir} is partly initialized (present: {present}; missing: {missing}); \
         refusing to guess: move it away and run init again, or restore the missing files"
    )]
    Partial {
        /// The directory.
        dir: PathBuf,
        /// Files present.
        present: String,
        /// Files missing.
        missing: String,
    },
    /// The directory was never initialized.
    #[error("{0} is not initialized: run `vouch-backend init --data-dir {0}`")]
    NotInitialized(PathBuf),
    /// A key file does not hold a valid key.
    #[error("{0}: not a valid key file")]
    BadKey(PathBuf),
    /// Certificate generation failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A key file is readable by others.
    #[error("{path} has mode {mode:o}; key files must be 0600 (chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// No system randomness.
    #[error("no system randomness")]
    Random,
    /// The directory holds no complete key pair.
    #[error("{0} holds no backend key pair (signing-N.pem with sealing-N.pem)")]
    NoKeys(PathBuf),
    /// One half of a key pair is missing.
    #[error("{present} exists but {missing} does not; restore it or move the other away")]
    HalfKeyPair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `init` did.
#[derive(Debug)]
pub enum InitOutcome {
    /// Everything was created. The admin token is shown once, here.
    Created {
        /// The admin bearer token. Secret: print it once and drop it.
        admin_token: Zeroizing<String>,
    },
    /// The directory was already initialized; nothing changed.
    AlreadyInitialized,
}

/// Initializes `dir`: backend keys (key id 1), CA, server certificate with
/// `localhost`, `127.0.0.1`, `::1` and `extra_sans`, admin token. Idempotent:
/// on an initialized directory it changes nothing; it never overwrites a key.
pub fn init(dir: &Path, extra_sans: &[String]) -> Result<InitOutcome, DataDirError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    // Initialized: the fixed files and at least one key pair (key id 1 may
    // have been purged after a rotation, see the module doc).
    let complete_pair = key_ids(dir)?.into_iter().any(|kid| {
        dir.join(files::signing(kid)).exists() && dir.join(files::sealing(kid)).exists()
    });
    if files::FIXED.iter().all(|f| dir.join(f).exists()) && complete_pair {
        return Ok(InitOutcome::AlreadyInitialized);
    }
    let present: Vec<&str> = files::IDENTITY
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !present.is_empty() {
        let missing: Vec<&str> = files::IDENTITY
            .iter()
            .copied()
            .filter(|f| !present.contains(f))
            .collect();
        return Err(DataDirError::Partial {
            dir: dir.to_owned(),
            present: present.join(", "),
            missing: missing.join(", "),
        });
    }
    let mut rng = os_rng();
    let keys = BackendKeys::generate(KEY_ID, &mut rng);
    // Its committed successor (SPEC.md §2.3): devices are provisioned with a
    // commitment to it, and only it can rotate them.
    let next = BackendKeys::generate(KeyId(KEY_ID.0 + 1), &mut rng);
    let ca = pki::generate_ca()?;
    let (server_pem, server_key) =
        pki::issue_server_cert(&ca, &server_sans(extra_sans), pki::DEFAULT_SERVER_LIFETIME)?;
    let mut token_bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(token_bytes.as_mut()).map_err(|_| DataDirError::Random)?;
    let token = Zeroizing::new(format!("vouch_{}", hex::encode(token_bytes.as_ref())));
    let token_hash = hex::encode(Sha256::digest(token.as_bytes()));

    // Secrets first; the token hash last, so a crash mid-way is detected as
    // partial rather than looking initialized.
    write_key_pair(dir, &next)?;
    write_key_pair(dir, &keys)?;
    write_file(&dir.join(files::CA_KEY), ca.key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join(files::CA), ca.cert_pem.as_bytes(), 0o644)?;
    write_file(&dir.join(files::SERVER_KEY), server_key.as_bytes(), 0o600)?;
    write_file(&dir.join(files::SERVER), server_pem.as_bytes(), 0o644)?;
    write_file(&dir.join(files::TOKEN), token_hash.as_bytes(), 0o600)?;
    if !dir.join(files::CONFIG).exists() {
        write_file(
            &dir.join(files::CONFIG),
            crate::config::TEMPLATE.as_bytes(),
            0o644,
        )?;
    }
    Ok(InitOutcome::Created { admin_token: token })
}

/// The server certificate's names: `localhost`, `127.0.0.1`, `::1`, then
/// `extra` (each once).
fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

/// A server certificate [`reissue_server_cert`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertReissued {
    /// Its names (DNS names and IP addresses).
    pub sans: Vec<String>,
    /// Its `notAfter`, milliseconds since the Unix epoch.
    pub not_after_ms: i64,
}

/// Replaces the server certificate of the initialized directory `dir` with
/// one for a fresh key, signed by the same CA (`ca.pem` and `ca-key.pem`
/// are read, never written, so gateways pinning the CA keep trusting the
/// backend), valid for `lifetime`, for `localhost`, `127.0.0.1`, `::1` and
/// `extra_sans`, or, when `extra_sans` is `None`, for the names of the
/// current certificate. `server-key.pem` (0600) and then `server.pem` are
/// each replaced atomically; a crash between the two leaves a key that
/// does not match the certificate, which `serve` refuses to start with
/// (rustls checks the pair) until this is run again. Running `serve`
/// processes keep the old certificate until they restart.
pub fn reissue_server_cert(
    dir: &Path,
    extra_sans: Option<&[String]>,
    lifetime: std::time::Duration,
) -> Result<ServerCertReissued, DataDirError> {
    let data = DataDir::load(dir)?;
    let sans = match extra_sans {
        Some(extra) => server_sans(extra),
        None => {
            let (current, _) = data.server_tls()?;
            pki::server_cert_sans(&current)?
        }
    };
    let (cert_pem, key_pem) = pki::issue_server_cert(&data.ca, &sans, lifetime)?;
    let not_after_ms = pki::not_after_ms(&cert_pem)?;
    for (name, bytes, mode) in [
        (files::SERVER_KEY, key_pem.as_bytes(), 0o600),
        (files::SERVER, cert_pem.as_bytes(), 0o644),
    ] {
        AtomicWrite::new(mode)
            .write(dir, name, bytes)
            .map_err(DataDirError::from)?;
    }
    Ok(ServerCertReissued { sans, not_after_ms })
}

/// How long before its end `serve` renews the console's certificate.
const CONSOLE_RENEW_BEFORE_MS: i64 = 30 * 86_400_000;

/// Makes sure the initialized directory `dir` holds a console certificate
/// for the server certificate's names that is valid for another month: the
/// console CA (name-constrained to those names) is made once and again when
/// the names change, the certificate (re)issued when missing, ending within
/// a month, or for other names. A `console.pem` the console CA did not
/// issue (an organisation's certificate) is left as it is. Returns (chain
/// PEM, key PEM).
pub fn ensure_console_cert(dir: &Path) -> Result<(String, Zeroizing<String>), DataDirError> {
    let (server, _) = DataDir::load(dir)?.server_tls()?;
    let sans = pki::server_cert_sans(&server)?;
    let ca_path = dir.join(files::CONSOLE_CA);
    let ca_key_path = dir.join(files::CONSOLE_CA_KEY);
    let cert_path = dir.join(files::CONSOLE);
    let key_path = dir.join(files::CONSOLE_KEY);
    // A console certificate the console CA did not issue (an
    // organisation's own) is the operator's to renew: used as it is.
    let ca_pem = fs::read_to_string(&ca_path).ok();
    if cert_path.exists() && key_path.exists() {
        let chain = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        if !ca_pem
            .as_deref()
            .is_some_and(|ca| chain.contains(ca.trim()))
        {
            return Ok((chain, read_secret(&key_path)?));
        }
    }
    // The CA is constrained to the server's names: new names need a new CA
    // (which operators trust anew).
    let same_names = ca_pem
        .as_deref()
        .and_then(|pem| pki::name_constraints_of(pem).ok())
        .is_some_and(|names| names == sans);
    let ca = if same_names && ca_key_path.exists() {
        CaMaterial {
            cert_pem: fs::read_to_string(&ca_path).map_err(io(&ca_path))?,
            key_pem: read_secret(&ca_key_path)?,
        }
    } else {
        let ca = pki::generate_console_ca(&sans)?;
        for (name, bytes, mode) in [
            (files::CONSOLE_CA_KEY, ca.key_pem.as_bytes(), 0o600),
            (files::CONSOLE_CA, ca.cert_pem.as_bytes(), 0o644),
        ] {
            AtomicWrite::new(mode)
                .write(dir, name, bytes)
                .map_err(DataDirError::from)?;
        }
        ca
    };
    if cert_path.exists() && key_path.exists() {
        let chain = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let fresh = pki::not_after_ms(&chain)
            .is_ok_and(|end| end - crate::store::now_ms() > CONSOLE_RENEW_BEFORE_MS);
        if fresh
            && chain.contains(ca.cert_pem.trim())
            && pki::server_cert_sans(&chain).is_ok_and(|s| s == sans)
        {
            return Ok((chain, read_secret(&key_path)?));
        }
    }
    let (cert, key) = pki::issue_console_cert(&ca, &sans, pki::CONSOLE_LIFETIME)?;
    let chain = format!("{cert}{}", ca.cert_pem);
    for (name, bytes, mode) in [
        (files::CONSOLE_KEY, key.as_bytes(), 0o600),
        (files::CONSOLE, chain.as_bytes(), 0o644),
    ] {
        AtomicWrite::new(mode)
            .write(dir, name, bytes)
            .map_err(DataDirError::from)?;
    }
    Ok((chain, key))
}

/// Writes `data` to `path` atomically and durably with `mode`; never
/// replaces an existing file, not even one another process creates
/// meanwhile ([`AtomicWrite::never_replace`]).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), DataDirError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(DataDirError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    AtomicWrite::new(mode)
        .never_replace()
        .write(dir, name, data)
        .map_err(DataDirError::from)
}

/// Writes the key files of `keys` (`sealing-N.pem`, then `signing-N.pem`,
/// each 0600, atomically). Refuses to overwrite either.
pub fn write_key_pair(dir: &Path, keys: &BackendKeys) -> Result<(), DataDirError> {
    let signing_path = dir.join(files::signing(keys.kid()));
    let signing_pem = keys
        .signing()
        .to_pkcs8_pem()
        .map_err(|_| DataDirError::BadKey(signing_path.clone()))?;
    let sealing_pem = keys
        .sealing()
        .to_pkcs8_pem()
        .map_err(|_| DataDirError::BadKey(dir.join(files::sealing(keys.kid()))))?;
    // The signing file marks a key pair as present (see `key_ids`), so it
    // comes last: a crash in between leaves a lone sealing file, which is
    // never loaded.
    write_file(
        &dir.join(files::sealing(keys.kid())),
        sealing_pem.as_bytes(),
        0o600,
    )?;
    write_file(&signing_path, signing_pem.as_bytes(), 0o600)
}

/// Loads the key pair of `kid` from `dir`; `None` if neither of its files
/// exists. Refuses key files readable by group or others, and a pair with
/// one half missing.
pub fn load_key_pair(dir: &Path, kid: KeyId) -> Result<Option<BackendKeys>, DataDirError> {
    let signing_path = dir.join(files::signing(kid));
    let sealing_path = dir.join(files::sealing(kid));
    match (signing_path.exists(), sealing_path.exists()) {
        (false, false) => return Ok(None),
        (true, false) => {
            return Err(DataDirError::HalfKeyPair {
                present: signing_path,
                missing: sealing_path,
            })
        }
        (false, true) => {
            // The sealing half is written first and removed last, so a lone
            // sealing file is a rotation or a purge interrupted between the
            // two files (a crash, a full disk). That key was never announced,
            // or was being purged: skip it rather than refuse to start.
            tracing::warn!(
                path = %sealing_path.display(),
                "a sealing key without its signing key (an interrupted rotation or purge) is ignored"
            );
            return Ok(None);
        }
        (true, true) => {}
    }
    let signing = IdentityKey::from_pkcs8_pem(&read_secret(&signing_path)?)
        .map_err(|_| DataDirError::BadKey(signing_path.clone()))?;
    let sealing = SealingKey::from_pkcs8_pem(&read_secret(&sealing_path)?)
        .map_err(|_| DataDirError::BadKey(sealing_path.clone()))?;
    Ok(Some(BackendKeys::from_parts(kid, signing, sealing)))
}

/// Deletes the key files of `kid` (both halves, whichever exist); returns
/// whether there was anything to delete. The directory entry is synced.
pub fn remove_key_pair(dir: &Path, kid: KeyId) -> Result<bool, DataDirError> {
    let mut removed = false;
    for name in [files::signing(kid), files::sealing(kid)] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataDirError::Io { path, source: e }),
        }
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(removed)
}

/// The key ids that have a key file (either half) in `dir`, ascending.
pub fn key_ids(dir: &Path) -> Result<Vec<KeyId>, DataDirError> {
    let mut out = std::collections::BTreeSet::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        if let Some(kid) = entry.file_name().to_str().and_then(files::key_id_of) {
            out.insert(kid.0);
        }
    }
    Ok(out.into_iter().map(KeyId).collect())
}

/// The loaded contents of an initialized data directory.
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// The key pair with the lowest key id in the directory. For a
    /// directory fresh from `init` that is key id 1, the anchor peripherals
    /// are provisioned with until the first rotation. The backend serves
    /// every key pair of the ring ([`DataDir::key_pairs`]), not only this
    /// one; which one is current is kept in the database
    /// ([`crate::keyring`]).
    pub keys: BackendKeys,
    /// The directory's other key pairs, by ascending key id (empty until a
    /// rotation).
    pub more_keys: Vec<BackendKeys>,
    /// The CA.
    pub ca: CaMaterial,
    /// SHA-256 of the admin token.
    pub token_hash: [u8; 32],
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("path", &self.path)
            .field(
                "kids",
                &self.key_pairs().map(BackendKeys::kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn read_secret(path: &Path) -> Result<Zeroizing<String>, DataDirError> {
    vouch_host::fs::check_private(path)?;
    Ok(Zeroizing::new(fs::read_to_string(path).map_err(io(path))?))
}

impl From<FsError> for DataDirError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Io { path, source, .. } => Self::Io { path, source },
            FsError::Exists { path } => Self::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite",
                ),
            },
            FsError::NotPrivate { path, mode } => Self::Permissions { path, mode },
        }
    }
}

impl DataDir {
    /// Loads an initialized data directory, with every key pair in it.
    pub fn load(dir: &Path) -> Result<Self, DataDirError> {
        if !is_initialized(dir) {
            return Err(DataDirError::NotInitialized(dir.to_owned()));
        }
        let mut pairs = Vec::new();
        for kid in key_ids(dir)? {
            if let Some(pair) = load_key_pair(dir, kid)? {
                pairs.push(pair);
            }
        }
        if pairs.is_empty() {
            return Err(DataDirError::NoKeys(dir.to_owned()));
        }
        let keys = pairs.remove(0);
        let ca_path = dir.join(files::CA);
        let ca = CaMaterial {
            cert_pem: fs::read_to_string(&ca_path).map_err(io(&ca_path))?,
            key_pem: read_secret(&dir.join(files::CA_KEY))?,
        };
        let token_path = dir.join(files::TOKEN);
        let token_hex = read_secret(&token_path)?;
        let mut token_hash = [0u8; 32];
        hex::decode_to_slice(token_hex.trim(), &mut token_hash)
            .map_err(|_| DataDirError::BadKey(token_path))?;
        Ok(Self {
            path: dir.to_owned(),
            keys,
            more_keys: pairs,
            ca,
            token_hash,
        })
    }

    /// Every key pair of the directory, by ascending key id.
    pub fn key_pairs(&self) -> impl Iterator<Item = &BackendKeys> {
        std::iter::once(&self.keys).chain(&self.more_keys)
    }

    /// The key pair of `kid`, if the directory holds it.
    pub fn key_pair(&self, kid: KeyId) -> Option<&BackendKeys> {
        self.key_pairs().find(|k| k.kid() == kid)
    }

    /// Backend state that lives only in memory, for simulations and tests:
    /// the given keys, their committed successor (a fresh key pair with the
    /// next key id; an in-memory backend cannot rotate, having no directory
    /// to keep keys in), a fresh CA, a fresh admin token (returned). Nothing is
    /// written; [`server_tls`](Self::server_tls) is not available.
    pub fn ephemeral(keys: BackendKeys) -> Result<(Self, Zeroizing<String>), DataDirError> {
        let next = BackendKeys::generate(KeyId(keys.kid().0.wrapping_add(1)), &mut os_rng());
        let ca = pki::generate_ca()?;
        let mut token_bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(token_bytes.as_mut()).map_err(|_| DataDirError::Random)?;
        let token = Zeroizing::new(format!("vouch_{}", hex::encode(token_bytes.as_ref())));
        let token_hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        Ok((
            Self {
                path: PathBuf::new(),
                keys,
                more_keys: vec![next],
                ca,
                token_hash,
            },
            token,
        ))
    }

    /// The server certificate and key PEM.
    pub fn server_tls(&self) -> Result<(String, Zeroizing<String>), DataDirError> {
        let cert_path = self.path.join(files::SERVER);
        let cert = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = read_secret(&self.path.join(files::SERVER_KEY))?;
        Ok((cert, key))
    }

    /// The default SQLite URL of this directory.
    pub fn sqlite_url(&self) -> String {
        sqlite_url(&self.path)
    }
}

/// Whether `dir` was initialized: `init` writes the admin token hash last.
pub fn is_initialized(dir: &Path) -> bool {
    dir.join(files::TOKEN).exists()
}

/// The SQLite URL of the database in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join(files::DB).display())
}

/// The admin token check: SHA-256 of the presented token against the stored
/// hash, in constant time.
pub fn token_matches(stored_hash: &[u8; 32], presented: &str) -> bool {
    let h = Sha256::digest(presented.as_bytes());
    bool::from(h.as_slice().ct_eq(stored_hash))
}

/// The operating system's RNG as a `rand_core` `CryptoRng` (it panics if the
/// OS RNG ever fails, which on Linux it does not once the system has booted:
/// continuing with predictable keys would be worse than stopping).
pub(crate) fn os_rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn init_is_idempotent_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = init(dir.path(), &["vouch.example".into()]).unwrap();
        let InitOutcome::Created { admin_token } = out else {
            panic!("expected a fresh init")
        };
        let before: Vec<_> = files::IDENTITY
            .iter()
            .map(|f| fs::read(dir.path().join(f)).unwrap())
            .collect();
        assert!(matches!(
            init(dir.path(), &[]).unwrap(),
            InitOutcome::AlreadyInitialized
        ));
        let after: Vec<_> = files::IDENTITY
            .iter()
            .map(|f| fs::read(dir.path().join(f)).unwrap())
            .collect();
        assert_eq!(before, after, "re-running init changed a file");
        for f in [
            files::SIGNING,
            files::SEALING,
            files::CA_KEY,
            files::SERVER_KEY,
            files::TOKEN,
        ] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let dd = DataDir::load(dir.path()).unwrap();
        assert!(token_matches(&dd.token_hash, &admin_token));
        assert!(!token_matches(&dd.token_hash, "vouch_wrong"));
        // The token never lands on disk.
        for f in files::IDENTITY {
            let s = fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(!s.contains(admin_token.as_str()));
        }
        // The sealing key round-trips.
        let pem = dd.keys.sealing().to_pkcs8_pem().unwrap();
        assert_eq!(
            SealingKey::from_pkcs8_pem(&pem).unwrap().public(),
            dd.keys.sealing().public()
        );
    }

    #[test]
    fn partial_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[]).unwrap();
        // No complete key pair left (`init` writes key 1 and its committed
        // successor, key 2).
        fs::remove_file(dir.path().join(files::SEALING)).unwrap();
        fs::remove_file(dir.path().join(files::sealing(KeyId(2)))).unwrap();
        let err = init(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, DataDirError::Partial { .. }), "{err}");
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[]).unwrap();
        let p = dir.path().join(files::SIGNING);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            DataDir::load(dir.path()),
            Err(DataDirError::Permissions { .. })
        ));
    }

    #[test]
    fn key_pairs_of_the_ring_are_private_checked_and_all_loaded() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[]).unwrap();
        let k3 = BackendKeys::generate(KeyId(3), &mut vouch_proto::testing::rng(2));
        write_key_pair(dir.path(), &k3).unwrap();
        for f in [files::signing(KeyId(3)), files::sealing(KeyId(3))] {
            let mode = fs::metadata(dir.path().join(&f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        // Never overwritten.
        assert!(write_key_pair(dir.path(), &k3).is_err());
        let dd = DataDir::load(dir.path()).unwrap();
        let kids: Vec<u8> = dd.key_pairs().map(|k| k.kid().0).collect();
        assert_eq!(kids, [1, 2, 3], "init wrote keys 1 and 2");
        assert_eq!(dd.keys.kid(), KeyId(1));
        assert_eq!(dd.key_pair(KeyId(3)).unwrap().anchor(), k3.anchor());
        assert!(!format!("{dd:?}").contains("PRIVATE"));

        // A loose mode on a rotated key is refused like on key 1.
        let p = dir.path().join(files::sealing(KeyId(3)));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(
            DataDir::load(dir.path()),
            Err(DataDirError::Permissions { .. })
        ));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();

        // Keys 1 and 2 purged: still initialized, key 3 is the lowest.
        assert!(remove_key_pair(dir.path(), KeyId(1)).unwrap());
        assert!(!remove_key_pair(dir.path(), KeyId(1)).unwrap());
        assert!(remove_key_pair(dir.path(), KeyId(2)).unwrap());
        assert!(matches!(
            init(dir.path(), &[]).unwrap(),
            InitOutcome::AlreadyInitialized
        ));
        let dd = DataDir::load(dir.path()).unwrap();
        assert_eq!(dd.keys.kid(), KeyId(3));
        assert!(dd.more_keys.is_empty());

        // A lone sealing file (a rotation or purge interrupted between its
        // two files) is ignored: the backend still starts.
        let lone = dir.path().join(files::sealing(KeyId(9)));
        fs::copy(dir.path().join(files::sealing(KeyId(3))), &lone).unwrap();
        fs::set_permissions(&lone, fs::Permissions::from_mode(0o600)).unwrap();
        let dd = DataDir::load(dir.path()).unwrap();
        assert_eq!(dd.keys.kid(), KeyId(3));
        assert!(dd.more_keys.is_empty());

        // A signing key without its sealing half is an error, not a silently
        // missing key.
        fs::remove_file(dir.path().join(files::sealing(KeyId(3)))).unwrap();
        assert!(matches!(
            DataDir::load(dir.path()),
            Err(DataDirError::HalfKeyPair { .. })
        ));
    }

    #[test]
    fn key_file_names_parse_canonically() {
        assert_eq!(files::key_id_of("signing-1.pem"), Some(KeyId(1)));
        assert_eq!(files::key_id_of("sealing-255.pem"), Some(KeyId(255)));
        assert_eq!(files::key_id_of("signing-0.pem"), Some(KeyId(0)));
        for bad in [
            "signing-01.pem",
            "signing-256.pem",
            "signing-.pem",
            "signing-+1.pem",
            "signing-1.pem.tmp",
            "ca-key.pem",
            "server-key.pem",
        ] {
            assert_eq!(files::key_id_of(bad), None, "{bad}");
        }
        assert_eq!(files::key_id_of(&files::signing(KeyId(7))), Some(KeyId(7)));
    }
}
