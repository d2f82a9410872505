//! Named sections: POSIX shared-memory objects in `/dev/shm`, which is what
//! glibc's and musl's `shm_open("/NAME")` open, so other programs see the
//! same objects under the same names.
//!
//! Holders: every open description of a named section holds a shared `flock`
//! on it. The kernel drops the lock when the last descriptor and mapping of
//! that description is gone, which includes the death of the process. A
//! section whose lock can be taken exclusively therefore has no holder left:
//! it is dead, and whoever meets it (create, open, list) unlinks it. Only
//! objects carrying copydata's marker (the extended attribute
//! `user.copydata`, or the sticky bit where tmpfs keeps no extended
//! attributes, before Linux 6.6) are ever reclaimed; other programs'
//! objects are left alone.
//!
//! Creation never exposes a half-made object: it is made under a hidden
//! temporary name, sized, locked and marked, then published with
//! `renameat2(RENAME_NOREPLACE)`. Opening re-checks after locking that the
//! name still refers to the same object, so a concurrent reclaim cannot hand
//! out an unlinked one.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{self as rfs, AtFlags, FlockOperation, Mode, OFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

use super::{Kind, Section, io_err};
use crate::error::{CreateError, ListError, Listing, OpenError, RemoveError};
use crate::name::Name;
use crate::section::{Access, SectionInfo, SectionOptions};

const SHM_DIR: &str = "/dev/shm";
const MARKER: &str = "user.copydata";
const MARKER_VALUE: &[u8] = b"section";
/// The marker values of copydata's objects: sections, and the
/// synchronisation objects of [`crate::sync`] (whose names carry a prefix,
/// `copydata.mutex.` and so on, so they never meet a section's name).
const MARKERS: [&[u8]; 4] = [MARKER_VALUE, b"mutex", b"event", b"shared"];
const TEMP_PREFIX: &str = ".copydata-tmp-";
/// Bound on retries of races with concurrent creators and reclaimers; each
/// retry means another process made progress, so this is never reached in
/// practice.
const MAX_RETRIES: usize = 10_000;

fn shm_dir() -> io::Result<OwnedFd> {
    rfs::open(SHM_DIR, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(io_err)
}

/// The object's copydata marker, if it has one: the extended attribute
/// `user.copydata`, or where the file system keeps no extended attributes
/// (tmpfs before Linux 6.6) the sticky bit (`S_ISVTX`, which Linux
/// ignores on a regular file and programs making shared memory do not
/// set), its kind then told by the name (`copydata.mutex.NAME` and so on
/// are [`crate::sync`]'s objects, anything else a section).
fn marker(fd: impl AsFd, name: &str) -> Option<&'static [u8]> {
    let mut buf = [0u8; 16];
    match rfs::fgetxattr(&fd, MARKER, &mut buf[..]) {
        Ok(n) => MARKERS.into_iter().find(|m| *m == &buf[..n]),
        Err(Errno::OPNOTSUPP) if sticky(&fd) => Some(kind_by_name(name)),
        Err(_) => None,
    }
}

/// Whether the object has the sticky bit, the marker where there are no
/// extended attributes.
fn sticky(fd: impl AsFd) -> bool {
    rfs::fstat(fd).is_ok_and(|st| st.st_mode & Mode::SVTX.bits() != 0)
}

/// The marker a copydata object of this name carries.
fn kind_by_name(name: &str) -> &'static [u8] {
    let kind = name.strip_prefix("copydata.").and_then(|rest| rest.split_once('.')).map(|(kind, _)| kind.as_bytes());
    MARKERS[1..].iter().copied().find(|m| kind == Some(*m)).unwrap_or(MARKER_VALUE)
}

/// Marks an object being made as copydata's, of the kind `marker`: by the
/// extended attribute, or where there are none by the sticky bit beside
/// the `mode` bits (see [`marker`]). Whether it took the sticky bit (the
/// kind then told by the name).
fn mark(fd: impl AsFd, marker: &[u8], mode: u32) -> rustix::io::Result<bool> {
    match rfs::fsetxattr(&fd, MARKER, marker, XattrFlags::empty()) {
        Ok(()) => Ok(false),
        Err(Errno::OPNOTSUPP) => rfs::fchmod(&fd, Mode::from_raw_mode(mode) | Mode::SVTX).map(|()| true),
        Err(e) => Err(e),
    }
}

/// Whether the object is one of copydata's (so it may be reclaimed).
fn is_marked(fd: impl AsFd, name: &str) -> bool {
    marker(fd, name).is_some()
}

/// Whether `name` in `dir` still refers to the object `fd` is open on.
fn same_object(dir: &OwnedFd, name: &str, fd: impl AsFd) -> bool {
    match (rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW), rfs::fstat(fd)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether the object is this user's: only those are ever reclaimed
/// (unlinked), listed or trusted by default.
fn is_ours(fd: impl AsFd) -> bool {
    rfs::fstat(fd).is_ok_and(|st| st.st_uid == euid())
}

/// Why an object may not be trusted without
/// [`SectionOptions::allow_other_owner`]: another owner, or write access for
/// group or others.
fn distrust(st: &rfs::Stat) -> Option<String> {
    let me = euid();
    if st.st_uid != me {
        return Some(format!("owned by uid {}, not by this user (uid {me})", st.st_uid));
    }
    let mode = st.st_mode & 0o777;
    if mode & 0o022 != 0 {
        return Some(format!("mode {mode:o} lets other users write it"));
    }
    None
}

/// Unlinks `name` if it is a copydata object without holders. Returns whether
/// it did.
fn reclaim_if_dead(dir: &OwnedFd, name: &str) -> bool {
    let Ok(fd) =
        rfs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::empty())
    else {
        return false;
    };
    if !is_marked(&fd, name) || !is_ours(&fd) {
        return false;
    }
    reclaim_locked(dir, name, &fd)
}

fn reclaim_locked(dir: &OwnedFd, name: &str, fd: &OwnedFd) -> bool {
    if rfs::flock(fd, FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    // Holding the exclusive lock, nobody can become a holder of this object;
    // unlink it only if the name still means it.
    same_object(dir, name, fd) && rfs::unlinkat(dir, name, AtFlags::empty()).is_ok()
}

/// Removes the temporary object `name` if its creator died before
/// publishing it (a creator holds its temporary object locked). Only this
/// user's.
fn reclaim_temporary(dir: &OwnedFd, name: &str) {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if let Ok(fd) = rfs::openat(dir, name, flags, Mode::empty())
        && is_ours(&fd)
    {
        reclaim_locked(dir, name, &fd);
    }
}

/// Removes every temporary object left by a creator that died before
/// publishing it, so such leftovers do not wait for the next `ls`.
fn reclaim_temporaries(dir: &OwnedFd) {
    let Ok(entries) = std::fs::read_dir(SHM_DIR) else { return };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str().filter(|n| n.starts_with(TEMP_PREFIX)) {
            reclaim_temporary(dir, name);
        }
    }
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{TEMP_PREFIX}{}-{n}-{nanos}", rustix::process::getpid().as_raw_nonzero())
}

pub(crate) fn create(name: &Name, size: u64, options: &SectionOptions) -> Result<Section, CreateError> {
    create_marked(name, size, MARKER_VALUE, options, &|_| Ok(()))
}

/// Creates a copydata object of the kind `marker`; `prepare` fills it in
/// before it is published under `name`, so nobody ever sees it unprepared.
pub(crate) fn create_marked(
    name: &Name,
    size: u64,
    marker: &[u8],
    options: &SectionOptions,
    prepare: &dyn Fn(&OwnedFd) -> io::Result<()>,
) -> Result<Section, CreateError> {
    let obj = || name.to_string();
    let io = |e: io::Error| match e.kind() {
        io::ErrorKind::PermissionDenied => CreateError::PermissionDenied { object: obj(), source: e },
        _ => CreateError::Io { object: obj(), source: e },
    };
    let dir = shm_dir().map_err(io)?;
    reclaim_temporaries(&dir);
    let vfs = rfs::fstatvfs(&dir).map_err(|e| io(io_err(e)))?;
    let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    // A file system of no blocks at all sets no limit (a tmpfs mounted with
    // `size=0`, a ramfs): only memory bounds it.
    if vfs.f_blocks != 0 && size > available {
        return Err(CreateError::NoSpace { name: obj(), size, available });
    }
    for _ in 0..MAX_RETRIES {
        let temp = temp_name();
        let fd = rfs::openat(
            &dir,
            temp.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| io(io_err(e)))?;
        let prepared = (|| {
            rfs::flock(&fd, FlockOperation::LockShared)?;
            // Exactly the asked-for bits, whatever the umask.
            rfs::fchmod(&fd, Mode::from_raw_mode(options.mode_bits()))?;
            rfs::ftruncate(&fd, size)?;
            mark(&fd, marker, options.mode_bits())
        })();
        let prepared = match prepared {
            // Marked by the sticky bit, the kind is told by the name: one that
            // says another kind (a section named `copydata.mutex.X`) would be
            // taken for that kind's object by every later look.
            Ok(true) if kind_by_name(name.as_str()) != marker => {
                let named = String::from_utf8_lossy(kind_by_name(name.as_str()));
                Err(io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "where /dev/shm keeps no extended attributes (Linux before 6.6), names of the form \
                         copydata.{named}.NAME are copydata's {named} objects"
                    ),
                )))
            }
            Ok(_) => prepare(&fd).map_err(|e| CreateError::Io { object: obj(), source: e }),
            Err(Errno::FBIG | Errno::INVAL) => Err(CreateError::InvalidSize { size, reason: "too large for /dev/shm" }),
            Err(e) => Err(io(io_err(e))),
        };
        if let Err(e) = prepared {
            let _ = rfs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
            return Err(e);
        }
        match rfs::renameat_with(&dir, temp.as_str(), &dir, name.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {
                return Ok(Section::from_fd(fd, size, Access::ReadWrite, Kind::Named, Some(name)));
            }
            Err(Errno::EXIST) => {
                let _ = rfs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
                if !reclaim_if_dead(&dir, name.as_str()) {
                    match rfs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if st.st_uid != euid() => {
                            return Err(CreateError::OtherOwner {
                                name: obj(),
                                reason: format!("another user (uid {}) has an object of this name", st.st_uid),
                            });
                        }
                        Ok(_) => return Err(CreateError::AlreadyExists { name: obj() }),
                        Err(_) => {}
                    }
                }
                // The old object was dead and is gone now: try again.
            }
            // A lister took our temporary object for a crashed creator's
            // leftover (it had not been locked yet): make a new one.
            Err(Errno::NOENT) => {}
            Err(e) => {
                let _ = rfs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
                return Err(io(io_err(e)));
            }
        }
    }
    Err(io(io::Error::other("gave up after too many concurrent changes to the name")))
}

pub(crate) fn open(name: &Name, options: &SectionOptions) -> Result<Section, OpenError> {
    open_marked(name, options.access_mode(), MARKER_VALUE, options.other_owners())
}

/// Opens a copydata object of the kind `marker` (or another program's
/// unmarked object); an object of another copydata kind is refused.
pub(crate) fn open_marked(
    name: &Name,
    access: Access,
    marker_value: &[u8],
    other_owners: bool,
) -> Result<Section, OpenError> {
    let n = || name.to_string();
    let io = |e: io::Error| match e.kind() {
        io::ErrorKind::PermissionDenied => OpenError::PermissionDenied { name: n(), source: e },
        _ => OpenError::Io { name: n(), source: e },
    };
    let dir = shm_dir().map_err(io)?;
    let mode = match access {
        Access::ReadOnly => OFlags::RDONLY,
        Access::ReadWrite => OFlags::RDWR,
    };
    for _ in 0..MAX_RETRIES {
        let fd = match rfs::openat(
            &dir,
            name.as_str(),
            mode | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(OpenError::NotFound { name: n() }),
            Err(e) => return Err(io(io_err(e))),
        };
        let st = rfs::fstat(&fd).map_err(|e| io(io_err(e)))?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Err(io(io::Error::new(io::ErrorKind::InvalidData, "not a shared-memory object")));
        }
        // Checked before anything else is done with it: another user's
        // object is neither trusted nor reclaimed.
        if let Some(reason) = distrust(&st)
            && !other_owners
        {
            return Err(OpenError::OtherOwner { name: n(), reason });
        }
        if let Some(m) = marker(&fd, name.as_str()).filter(|m| *m != marker_value) {
            let (found, wanted) = (String::from_utf8_lossy(m), String::from_utf8_lossy(marker_value));
            return Err(io(io::Error::new(io::ErrorKind::InvalidData, format!("a copydata {found}, not a {wanted}"))));
        }
        // A synchronisation object holds state copydata prepared before it
        // published it (a robust, process-shared glibc mutex): a file of
        // that name copydata did not make has none of it (zero bytes are a
        // private, non-robust mutex), and must not be used as one.
        if marker_value != MARKER_VALUE && marker(&fd, name.as_str()).is_none() {
            let wanted = String::from_utf8_lossy(marker_value);
            return Err(io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a copydata {wanted} (a file of that name that copydata did not make)"),
            )));
        }
        match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                if is_marked(&fd, name.as_str()) && st.st_uid == euid() {
                    // A copydata section without holders is dead.
                    if same_object(&dir, name.as_str(), &fd) {
                        let _ = rfs::unlinkat(&dir, name.as_str(), AtFlags::empty());
                    }
                    return Err(OpenError::NotFound { name: n() });
                }
                // Another program's object: from now on we hold it.
                if rfs::flock(&fd, FlockOperation::NonBlockingLockShared).is_err() {
                    continue;
                }
            }
            Err(Errno::WOULDBLOCK) => {
                if rfs::flock(&fd, FlockOperation::NonBlockingLockShared).is_err() {
                    // A reclaimer holds it exclusively right now.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            Err(e) => return Err(io(io_err(e))),
        }
        if !same_object(&dir, name.as_str(), &fd) {
            continue;
        }
        // Re-read the size now that we hold it (a creator sizes the object
        // before publishing, but a foreign program may have resized it).
        let st = rfs::fstat(&fd).map_err(|e| io(io_err(e)))?;
        return Ok(Section::from_fd(fd, st.st_size as u64, access, Kind::Named, Some(name)));
    }
    Err(io(io::Error::other("gave up after too many concurrent changes to the name")))
}

pub(crate) fn open_or_create(name: &Name, size: u64, options: &SectionOptions) -> Result<(Section, bool), CreateError> {
    open_or_create_marked(name, size, MARKER_VALUE, options, &|_| Ok(()))
}

/// [`open_or_create`] for a copydata object of the kind `marker`, prepared
/// by `prepare` if this call creates it.
pub(crate) fn open_or_create_marked(
    name: &Name,
    size: u64,
    marker: &[u8],
    options: &SectionOptions,
    prepare: &dyn Fn(&OwnedFd) -> io::Result<()>,
) -> Result<(Section, bool), CreateError> {
    for _ in 0..MAX_RETRIES {
        match create_marked(name, size, marker, options, prepare) {
            Ok(s) => return Ok((s, true)),
            Err(CreateError::AlreadyExists { .. }) => {}
            Err(CreateError::OtherOwner { .. }) if options.other_owners() => {}
            Err(e) => return Err(e),
        }
        match open_marked(name, Access::ReadWrite, marker, options.other_owners()) {
            Ok(s) => return Ok((s, false)),
            Err(OpenError::NotFound { .. }) => continue,
            Err(OpenError::PermissionDenied { name, source }) => {
                return Err(CreateError::PermissionDenied { object: name, source });
            }
            Err(OpenError::OtherOwner { name, reason }) => return Err(CreateError::OtherOwner { name, reason }),
            Err(OpenError::Io { name, source }) => {
                return Err(CreateError::Io { object: name, source });
            }
            Err(e) => {
                return Err(CreateError::Io { object: name.to_string(), source: io::Error::other(e.to_string()) });
            }
        }
    }
    Err(CreateError::Io {
        object: name.to_string(),
        source: io::Error::other("gave up after too many concurrent changes to the name"),
    })
}

/// Called when this process closes its last descriptor and view of a named
/// section: if no other process holds it either, the name goes now rather
/// than at the next lazy reclaim. Other programs' objects are left alone.
pub(crate) fn release(fd: &OwnedFd, name: &Name) {
    if !is_marked(fd, name.as_str()) || !is_ours(fd) {
        return;
    }
    // Converting our shared lock to an exclusive one succeeds only if no other
    // open description (in any process) holds the section.
    if rfs::flock(fd, FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    if let Ok(dir) = shm_dir()
        && same_object(&dir, name.as_str(), fd)
    {
        let _ = rfs::unlinkat(&dir, name.as_str(), AtFlags::empty());
    }
}

pub(crate) fn remove(name: &Name) -> Result<(), RemoveError> {
    let n = || name.to_string();
    let dir = shm_dir().map_err(|source| RemoveError::Io { name: n(), source })?;
    // A copydata lock, event or shared value lives under a name of its
    // own (`copydata.mutex.NAME`, ...): it is no section, and freeing its
    // name would let a second one be made beside the live one.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if let Ok(fd) = rfs::openat(&dir, name.as_str(), flags, Mode::empty())
        && marker(&fd, name.as_str()).is_some_and(|m| m != MARKER_VALUE)
    {
        return Err(RemoveError::NotFound { name: n() });
    }
    // Another user's object is never removed (nor listed): the sticky bit
    // of /dev/shm says so for everyone but root, this for root too.
    if let Ok(st) = rfs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            let why = format!("it belongs to uid {}: another user's object is never removed", st.st_uid);
            return Err(RemoveError::PermissionDenied {
                name: n(),
                source: io::Error::new(io::ErrorKind::PermissionDenied, why),
            });
        }
    }
    match rfs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(RemoveError::NotFound { name: n() }),
        Err(e @ (Errno::ACCESS | Errno::PERM)) => Err(RemoveError::PermissionDenied { name: n(), source: io_err(e) }),
        Err(e) => Err(RemoveError::Io { name: n(), source: io_err(e) }),
    }
}

pub(crate) fn list() -> Result<Vec<SectionInfo>, ListError> {
    let all = list_all().map_err(|source| ListError::Io { what: Listing::Sections, source })?;
    Ok(all.into_iter().filter(|(m, _)| *m == MARKER_VALUE).map(|(_, info)| info).collect())
}

/// Every live copydata object with its marker (reclaiming dead ones).
pub(crate) fn list_all() -> io::Result<Vec<(&'static [u8], SectionInfo)>> {
    let dir = shm_dir()?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        if name.starts_with(TEMP_PREFIX) {
            reclaim_temporary(&dir, &name);
            continue;
        }
        if crate::validate_name(&name).is_err() {
            continue;
        }
        let Ok(fd) = rfs::openat(&dir, name.as_str(), flags, Mode::empty()) else {
            continue;
        };
        let Some(kind) = marker(&fd, &name) else {
            continue;
        };
        // Another user's objects are not this user's to list or reclaim.
        if !is_ours(&fd) {
            continue;
        }
        if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
            // No holder: dead. Unlink it if the name still means it.
            if same_object(&dir, &name, &fd) {
                let _ = rfs::unlinkat(&dir, name.as_str(), AtFlags::empty());
            }
            continue;
        }
        if let Ok(st) = rfs::fstat(&fd) {
            out.push((kind, SectionInfo { name, size: st.st_size as u64 }));
        }
    }
    Ok(out)
}
