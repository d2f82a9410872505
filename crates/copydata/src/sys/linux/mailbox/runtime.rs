//! The per-user runtime directory where mailboxes live.
//!
//! `$COPYDATA_RUNTIME_DIR` if set, else `$XDG_RUNTIME_DIR/copydata`, else
//! `/tmp/copydata-UID`. The directory is created with mode 0700 and, every
//! time, checked to be a real directory owned by this user and closed to
//! everyone else: otherwise another user could plant or watch mailboxes.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::name::Name;

/// Why the runtime directory cannot be used.
#[derive(Debug)]
pub(crate) struct DirError {
    pub(crate) path: String,
    pub(crate) reason: String,
    /// What kind of failure: a directory that could not be made or looked
    /// at (the OS's kind of error), or not a directory; `None` for one that
    /// is there but not safe (another user's, or open to others).
    pub(crate) kind: Option<std::io::ErrorKind>,
}

impl DirError {
    /// The failure as an I/O error (the path and reason in its text).
    pub(crate) fn to_io(&self) -> std::io::Error {
        let kind = self.kind.unwrap_or(std::io::ErrorKind::PermissionDenied);
        std::io::Error::new(kind, format!("runtime directory {}: {}", self.path, self.reason))
    }
}

pub(crate) fn runtime_dir() -> Result<PathBuf, DirError> {
    let uid = rustix::process::getuid().as_raw();
    let dir = if let Some(d) = std::env::var_os("COPYDATA_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(d)
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute()) {
        x.join("copydata")
    } else {
        PathBuf::from(format!("/tmp/copydata-{uid}"))
    };
    let shown = dir.display().to_string();
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(DirError { path: shown, reason: format!("cannot create it: {e}"), kind: Some(e.kind()) });
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| DirError {
        path: shown.clone(),
        reason: e.to_string(),
        kind: Some(e.kind()),
    })?;
    if !meta.file_type().is_dir() {
        return Err(DirError {
            path: shown,
            reason: "not a directory (or a symbolic link)".into(),
            kind: Some(std::io::ErrorKind::NotADirectory),
        });
    }
    // Another user may have made the directory first (it is a predictable
    // name in a shared /tmp when XDG_RUNTIME_DIR is unset), to watch or
    // block this user's mailboxes: refuse it, and say how to get out.
    const WAY_OUT: &str = "set COPYDATA_RUNTIME_DIR to a directory of your own (mode 0700), or XDG_RUNTIME_DIR";
    if meta.uid() != uid {
        let reason = format!("owned by uid {}, not by this user (uid {uid}); {WAY_OUT}", meta.uid());
        return Err(DirError { path: shown, reason, kind: None });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        let reason = format!(
            "mode {:o} lets other users in; it must be 0700 (chmod 700 it, or {WAY_OUT})",
            meta.permissions().mode() & 0o777
        );
        return Err(DirError { path: shown, reason, kind: None });
    }
    Ok(dir)
}

/// The lock file that holds a bound name (it contains the binder's pid).
pub(crate) fn lock_path(dir: &Path, name: &Name) -> PathBuf {
    dir.join(format!("{name}.mailbox"))
}

/// The socket. Named by a hash of the name, because a socket path must fit
/// in 108 bytes and names may be 200 long.
pub(crate) fn socket_path(dir: &Path, name: &Name) -> PathBuf {
    dir.join(format!(
        "m-{:016x}{:016x}.sock",
        fnv1a(name.as_str(), 0xcbf2_9ce4_8422_2325),
        fnv1a(name.as_str(), 0x6c62_272e_07bb_0142)
    ))
}

/// The abstract socket address (no file: reachable by every user, so each
/// side checks the other's uid) where a mailbox that accepts other users
/// also listens: `copydata/OWNER-UID/m-HASH`.
pub(crate) fn shared_address(owner: u32, name: &Name) -> String {
    format!(
        "copydata/{owner}/m-{:016x}{:016x}",
        fnv1a(name.as_str(), 0xcbf2_9ce4_8422_2325),
        fnv1a(name.as_str(), 0x6c62_272e_07bb_0142)
    )
}

/// FNV-1a: stable across builds and processes (unlike std's hasher).
fn fnv1a(s: &str, basis: u64) -> u64 {
    s.bytes().fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Turns a mailbox file name back into its name.
pub(crate) fn name_of_lock(file: &str) -> Option<Name> {
    Name::new(file.strip_suffix(".mailbox")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_fit_and_differ() {
        let dir = Path::new("/run/user/4294967294/copydata");
        let long = Name::new(&"x".repeat(crate::MAX_NAME_LEN)).unwrap();
        let p = socket_path(dir, &long);
        assert!(p.as_os_str().len() < 108, "{}", p.display());
        assert_ne!(socket_path(dir, &Name::new("a").unwrap()), socket_path(dir, &Name::new("b").unwrap()));
        assert_eq!(name_of_lock("app.x.mailbox").map(|n| n.to_string()), Some("app.x".into()));
        assert!(name_of_lock("m-1.sock").is_none());
    }
}
