//! Files written so that a crash leaves the old content or the new, never a
//! mix, and secrets nobody else can read.
//!
//! [`AtomicWrite::write`] writes to a temporary file in the target's
//! directory under a name no other writer uses (`.NAME.tmp-PID-N-NANOS`,
//! created with `O_CREAT|O_EXCL` and its final mode, so the secret is never
//! readable by others, not even for an instant), fsyncs it, then renames it
//! over the target, or, for a file that must never be replaced, hard-links
//! it into place (atomic: two writers racing cannot both succeed, where a
//! check for the target followed by a rename could), and fsyncs the
//! directory. Temporary files a crash left behind are removed by
//! [`remove_temporaries`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// What went wrong with a file. Not `non_exhaustive`: each layer maps
/// every variant to its own error, and a new one must be mapped there too.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The operating system refused an operation.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done (`creating`, `renaming into`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The target exists and the write must not replace it.
    #[error("{} already exists; not replacing it", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file holding a secret may be read or written by its group or
    /// others.
    #[error("{} is readable or writable by others (mode {mode:o}); chmod 600 it", path.display())]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl FsError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether a write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Replace it atomically (rename).
    Always,
    /// Fail with [`FsError::Exists`] if it exists (hard link: atomic, and
    /// never clobbers a file another writer put there first).
    Never,
}

/// How to write one file atomically; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct AtomicWrite {
    mode: u32,
    replace: Replace,
    sync_dir: bool,
}

impl AtomicWrite {
    /// A write of a file with permission bits `mode` (0600 for a secret)
    /// that replaces the target and fsyncs the directory.
    pub fn new(mode: u32) -> Self {
        Self {
            mode,
            replace: Replace::Always,
            sync_dir: true,
        }
    }

    /// Never replaces an existing target ([`Replace::Never`]).
    pub fn never_replace(mut self) -> Self {
        self.replace = Replace::Never;
        self
    }

    /// Leaves the directory's fsync to the caller ([`sync_dir`]), who writes
    /// several files and makes them durable together.
    pub fn defer_dir_sync(mut self) -> Self {
        self.sync_dir = false;
        self
    }

    /// Writes `bytes` to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        let target = dir.join(name);
        let tmp = dir.join(temporary_name(name));
        let result = self.write_and_place(&tmp, &target, bytes);
        // After a link (or any failure) the temporary name goes; after a
        // rename it is already gone.
        if result.is_err() || self.replace == Replace::Never {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        if self.sync_dir {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Writes `bytes` to the file at `path` (in its directory, `.` for a
    /// bare name).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), FsError> {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(FsError::Io {
                action: "writing",
                path: path.to_path_buf(),
                source: io::Error::new(ErrorKind::InvalidInput, "not a file name"),
            });
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.write(dir, name, bytes)
    }

    fn write_and_place(&self, tmp: &Path, target: &Path, bytes: &[u8]) -> Result<(), FsError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.mode)
            .open(tmp)
            .map_err(FsError::io("creating", tmp))?;
        f.write_all(bytes).map_err(FsError::io("writing", tmp))?;
        f.sync_all().map_err(FsError::io("syncing", tmp))?;
        drop(f);
        match self.replace {
            Replace::Always => {
                fs::rename(tmp, target).map_err(FsError::io("renaming into", target))
            }
            Replace::Never => match fs::hard_link(tmp, target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(FsError::Exists {
                    path: target.to_path_buf(),
                }),
                Err(source) => Err(FsError::Io {
                    action: "linking into",
                    path: target.to_path_buf(),
                    source,
                }),
            },
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name for `name` that no other writer, in this process or
/// another, uses at the same time.
fn temporary_name(name: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".{name}.tmp-{}-{n}-{nanos}", std::process::id())
}

/// Whether `name` is one of [`AtomicWrite`]'s temporary files
/// (`.NAME.tmp-…`).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Fsyncs a directory: the renames, links and removals in it become durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::io("syncing directory", dir))
}

/// Removes the temporary files ([`is_temporary`]) in `dir` last modified at
/// least `older_than` ago: a writer still using one (another process
/// writing into the same directory) is younger. Best effort: what cannot be
/// removed is logged; returns how many were removed.
pub fn remove_temporaries(dir: &Path, older_than: Duration) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temporary) {
            continue;
        }
        let old_enough = older_than.is_zero()
            || entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= older_than);
        if !old_enough {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                removed += 1;
                tracing::debug!(file = %entry.path().display(), "removed a temporary file a crash left behind");
            }
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a temporary file");
            }
        }
    }
    removed
}

/// Refuses a file holding a secret that its group or others may read or
/// write ([`FsError::NotPrivate`]).
pub fn check_private(path: &Path) -> Result<(), FsError> {
    let meta = fs::metadata(path).map_err(FsError::io("reading", path))?;
    check_private_meta(path, &meta)
}

/// [`check_private`] with metadata the caller already has (of the file it
/// opened, so that the check and the read are of the same file).
pub fn check_private_meta(path: &Path, meta: &fs::Metadata) -> Result<(), FsError> {
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FsError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_atomically_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        AtomicWrite::new(0o600)
            .write(dir.path(), "a", b"one")
            .unwrap();
        AtomicWrite::new(0o600)
            .write(dir.path(), "a", b"two")
            .unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"two");
        let mode = fs::metadata(dir.path().join("a")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(names(dir.path()), vec!["a"]);
    }

    #[test]
    fn never_replace_refuses_an_existing_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let once = AtomicWrite::new(0o600).never_replace();
        once.write(dir.path(), "key", b"first").unwrap();
        let err = once.write(dir.path(), "key", b"second").unwrap_err();
        assert!(matches!(err, FsError::Exists { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join("key")).unwrap(), b"first");
        assert_eq!(names(dir.path()), vec!["key"]);
    }

    #[test]
    fn two_writers_racing_for_a_new_file_cannot_both_win() {
        // The race a check for the target followed by a rename loses: every
        // writer sees no file, and the last rename wins silently.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    AtomicWrite::new(0o600)
                        .never_replace()
                        .write(&path, "key", &[i])
                        .is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(names(dir.path()), vec!["key"]);
    }

    #[test]
    fn a_file_others_may_read_is_not_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        AtomicWrite::new(0o600)
            .write(dir.path(), "key", b"k")
            .unwrap();
        check_private(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            match check_private(&path) {
                Err(FsError::NotPrivate { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_its_own_temporaries_are_removed_and_only_once_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".a.tmp-1-2-3", "b.tmp", "keep"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_temporaries(dir.path(), Duration::from_secs(3600)), 0);
        assert_eq!(remove_temporaries(dir.path(), Duration::ZERO), 1);
        assert_eq!(names(dir.path()), vec!["b.tmp", "keep"]);
    }
}
