//! Linux backend: memfd and POSIX shared-memory objects, `mmap`, `flock` for
//! holder tracking, `SCM_RIGHTS` for hand-over. All system calls go through
//! rustix, which returns `Result` (no errno juggling here).

pub(crate) mod handover;
mod inherit;
pub(crate) mod mailbox;
mod namespace;
mod scm;
pub(crate) mod sync;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use rustix::fs::{self as rfs, MemfdFlags, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, MsyncFlags, ProtFlags};

use crate::error::{CreateError, MapError, ReadOnlyError};
use crate::section::Access;

pub(crate) use inherit::{Passed, prepare_inheritance, spawn_with_sections, take_inherited};
pub(crate) use namespace::{list, remove};

/// How many `fork`s lie between this process and its line's first: raised
/// in the child of every `fork` by a `pthread_atfork` handler. See
/// `crate::fork`. (`fork` through glibc runs the handler; a raw `clone`
/// or glibc's `_Fork` does not.)
pub(crate) fn forks() -> u32 {
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

static FORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn forked_child() {
    // (Async-signal-safe: an atomic add.)
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

extern "C" fn register_fork_handler() {
    // SAFETY: registers a handler that only adds to an atomic. It fails
    // only for want of memory, which leaves copies in forked children
    // taken for their parent's objects.
    let _ = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
}

/// The handler is registered as the program (or this library) is loaded,
/// before any thread of it runs: registering it later, on first use, could
/// meet a `fork` of another thread under way, and glibc holds the lock
/// `pthread_atfork` takes across `fork`, leaving the child with a
/// registration that never ends.
// SAFETY: `.init_array` entries are functions the loader calls, without
// arguments, before `main` (or at `dlopen`); this one only registers the
// handler, which needs nothing else to be set up.
#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER_FORK_HANDLER: extern "C" fn() = register_fork_handler;

/// A duration as the kernel's `timespec` (for `poll` and futex waits).
pub(crate) fn timespec(d: std::time::Duration) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: d.as_secs() as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

/// What kind of object a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A memfd: sealable.
    Anonymous,
    /// An object in `/dev/shm`: each open description holds a shared `flock`.
    Named,
    /// A regular file.
    File,
}

#[derive(Debug)]
pub(crate) struct Section {
    holder: Arc<Holder>,
    len: u64,
    access: Access,
    kind: Kind,
    /// A writable mapping of the whole section, made just before this process
    /// seals the memfd against new writable mappings (see `read_only`), from
    /// which its later writable views are served.
    keeper: OnceLock<Arc<Mapping>>,
}

/// The descriptor, shared by a section and all views mapped from it. When
/// the last of them is gone and it was a named copydata section, it tries to
/// remove the name (see `namespace::release`).
#[derive(Debug)]
pub(crate) struct Holder {
    fd: OwnedFd,
    name: Option<crate::name::Name>,
    /// The process that opened `fd`. A child forked without exec shares the
    /// open description (and so its `flock`) with this process: when the
    /// child drops its copy, its exclusive-lock test would succeed on the
    /// parent's own lock and unlink a name the parent still holds. Only the
    /// opening process releases the name.
    pid: u32,
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(name) = &self.name
            && std::process::id() == self.pid
        {
            namespace::release(&self.fd, name);
        }
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// How a descriptor may map its object. One open write-only cannot map it
/// at all (`mmap` needs read access): refused here, so that it never makes
/// a section whose every view fails.
fn access_of(fd: impl AsFd) -> io::Result<Access> {
    let fl = rfs::fcntl_getfl(fd)? & OFlags::RWMODE;
    if fl == OFlags::RDONLY {
        Ok(Access::ReadOnly)
    } else if fl == OFlags::RDWR {
        Ok(Access::ReadWrite)
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the descriptor is open write-only; a section needs read access",
        ))
    }
}

/// Classifies a received or inherited descriptor. Our memfds carry the
/// shrink and grow seals from birth; named sections are announced with a name.
pub(crate) fn kind_of(fd: impl AsFd, named: bool) -> Kind {
    let anonymous = rfs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK | SealFlags::GROW));
    match (anonymous, named) {
        (true, _) => Kind::Anonymous,
        (false, true) => Kind::Named,
        (false, false) => Kind::File,
    }
}

impl Section {
    /// Wraps a descriptor. `name` is given for named sections, whose last
    /// holder in this process removes the name if no other process holds it.
    pub(crate) fn from_fd(
        fd: OwnedFd,
        len: u64,
        access: Access,
        kind: Kind,
        name: Option<&crate::name::Name>,
    ) -> Section {
        let name = if kind == Kind::Named { name.cloned() } else { None };
        Section {
            holder: Arc::new(Holder { fd, name, pid: std::process::id() }),
            len,
            access,
            kind,
            keeper: OnceLock::new(),
        }
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.holder.fd
    }

    pub(crate) fn anonymous(size: u64) -> Result<Section, CreateError> {
        let object = || "anonymous section".to_string();
        let io = |e: Errno| CreateError::Io { object: object(), source: io_err(e) };
        let fd = rfs::memfd_create("copydata", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(io)?;
        rfs::ftruncate(&fd, size).map_err(|e| match e {
            Errno::FBIG | Errno::INVAL => CreateError::InvalidSize { size, reason: "too large for a memfd" },
            e => io(e),
        })?;
        // A fixed size: no holder may shrink the memory under another
        // process's mapping (which would crash it with SIGBUS) or grow it.
        rfs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).map_err(io)?;
        Ok(Section::from_fd(fd, size, Access::ReadWrite, Kind::Anonymous, None))
    }

    pub(crate) fn create(
        name: &crate::name::Name,
        size: u64,
        options: &crate::SectionOptions,
    ) -> Result<Section, CreateError> {
        namespace::create(name, size, options)
    }

    pub(crate) fn open(name: &crate::name::Name, options: &crate::SectionOptions) -> Result<Section, crate::OpenError> {
        namespace::open(name, options)
    }

    pub(crate) fn open_or_create(
        name: &crate::name::Name,
        size: u64,
        options: &crate::SectionOptions,
    ) -> Result<(Section, bool), CreateError> {
        namespace::open_or_create(name, size, options)
    }

    pub(crate) fn from_file(file: &File, access: Access) -> Result<Section, CreateError> {
        let object = || "file-backed section".to_string();
        let io = |e: io::Error| match e.kind() {
            io::ErrorKind::PermissionDenied => CreateError::PermissionDenied { object: object(), source: e },
            _ => CreateError::Io { object: object(), source: e },
        };
        let fd = rustix::io::fcntl_dupfd_cloexec(file, 0).map_err(|e| io(io_err(e)))?;
        let opened = access_of(&fd).map_err(io)?;
        if access == Access::ReadWrite && opened == Access::ReadOnly {
            return Err(io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the file is open read-only but a writable section was asked for",
            )));
        }
        // A read-only section of a file open for writing holds a read-only
        // descriptor of its own: the one it hands to other processes (and
        // its `AsFd`) must not carry write access.
        let fd = if access == Access::ReadOnly && opened == Access::ReadWrite {
            reopen(&fd, Access::ReadOnly).map_err(|e| io(io_err(e)))?
        } else {
            fd
        };
        let st = rfs::fstat(&fd).map_err(|e| io(io_err(e)))?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Err(io(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let size = st.st_size as u64;
        if size == 0 {
            return Err(CreateError::InvalidSize { size, reason: "the file is empty" });
        }
        Ok(Section::from_fd(fd, size, access, Kind::File, None))
    }

    /// A close-on-exec descriptor (numbered 3 or above) to give another
    /// process. For a named section it is a new open description holding its
    /// own share of the holder lock: `flock` locks belong to descriptions, so
    /// a description shared between processes would let one of them, closing
    /// it, take the others for gone (see `namespace::release`).
    pub(crate) fn transfer_fd(&self) -> io::Result<OwnedFd> {
        if self.kind != Kind::Named {
            return Ok(rustix::io::fcntl_dupfd_cloexec(self.fd(), 3)?);
        }
        let fresh = reopen(self.fd(), self.access)?;
        rfs::flock(&fresh, rfs::FlockOperation::LockShared)?;
        Ok(rustix::io::fcntl_dupfd_cloexec(&fresh, 3)?)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn size_sealed(&self) -> bool {
        rfs::fcntl_get_seals(self.fd()).is_ok_and(|s| s.contains(SealFlags::SHRINK))
    }

    /// Whether the pages live in memory: on tmpfs (memfds, /dev/shm),
    /// ramfs or hugetlbfs, where a read cannot fail with an I/O error.
    pub(crate) fn memory_backed(&self) -> bool {
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        const RAMFS_MAGIC: u64 = 0x8584_58f6;
        const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
        // (`f_type`'s integer type differs between architectures.)
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        rfs::fstatfs(self.fd()).is_ok_and(|s| matches!(s.f_type as u64, TMPFS_MAGIC | RAMFS_MAGIC | HUGETLBFS_MAGIC))
    }

    pub(crate) fn access(&self) -> Access {
        self.access
    }

    /// Forbids any further seal (`F_SEAL_SEAL`), for a memfd shared
    /// writable with peers that must not seal it (against new writable
    /// mappings, say) for everyone else.
    pub(crate) fn seal_seals(&self) -> io::Result<()> {
        rfs::fcntl_add_seals(self.fd(), SealFlags::SEAL).map_err(io_err)
    }

    pub(crate) fn read_only(&self) -> Result<Section, ReadOnlyError> {
        let io = |e: Errno| ReadOnlyError::Io(io_err(e));
        // Memory that no name or path reaches (an anonymous section, but
        // also a memfd made elsewhere or an unlinked file): a holder of an
        // `O_RDONLY` descriptor could reopen it writable through
        // `/proc/self/fd`, so only a seal keeps the hand-out read-only.
        let unlinked = self.kind == Kind::Anonymous || rfs::fstat(self.fd()).map_err(io)?.st_nlink == 0;
        if unlinked {
            let unsealable = || {
                ReadOnlyError::Io(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the memory cannot be sealed against writes (a memfd made without sealing, or an unlinked \
                     file), so a holder could reopen a read-only descriptor writable",
                ))
            };
            // (An anonymous section has its size sealed from the start; a
            // memfd made elsewhere gets that seal here too: its holders must
            // not resize it under the others.)
            let wanted = SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW;
            let sealed = |s: SealFlags| {
                s.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE)
                    && s.contains(SealFlags::SHRINK | SealFlags::GROW)
            };
            let seals = match rfs::fcntl_get_seals(self.fd()) {
                Ok(seals) => seals,
                // Not a memfd: seals are unknown to it.
                Err(Errno::INVAL) => return Err(unsealable()),
                Err(e) => return Err(io(e)),
            };
            if !sealed(seals) {
                // Known to be sealable before anything is mapped for it.
                if seals.contains(SealFlags::SEAL) {
                    return Err(unsealable());
                }
                // Keep write access for this process before the seal forbids
                // new writable mappings (kept only once the seals are on).
                let mut keeper = None;
                if self.access == Access::ReadWrite && self.keeper.get().is_none() {
                    // (A section larger than the address space cannot be
                    // kept mapped whole: a 32-bit process.)
                    let len = usize::try_from(self.len).map_err(|_| {
                        ReadOnlyError::Io(io::Error::new(
                            io::ErrorKind::OutOfMemory,
                            "the section is larger than this process can map at once",
                        ))
                    })?;
                    let whole = map_fd(&self.holder, 0, len, Access::ReadWrite).map_err(|e| match e {
                        MapError::Io(e) => ReadOnlyError::Io(e),
                        other => ReadOnlyError::Io(io::Error::other(other)),
                    })?;
                    keeper = Some(whole.0);
                }
                match rfs::fcntl_add_seals(self.fd(), wanted) {
                    // Sealed meanwhile (by a hand-out elsewhere), or held
                    // read-only here: fine as long as the seals are there.
                    Ok(()) | Err(Errno::PERM) => {}
                    Err(e) => return Err(io(e)),
                }
                if !sealed(rfs::fcntl_get_seals(self.fd()).map_err(io)?) {
                    return Err(unsealable());
                }
                if let Some(keeper) = keeper {
                    let _ = self.keeper.set(Arc::new(keeper));
                }
            }
        }
        let fd = reopen(self.fd(), Access::ReadOnly).map_err(io)?;
        if self.kind == Kind::Named {
            // A new open description: it must hold its own share of the lock
            // to count as a holder.
            rfs::flock(&fd, rfs::FlockOperation::LockShared).map_err(io)?;
        }
        Ok(Section::from_fd(fd, self.len, Access::ReadOnly, self.kind, self.holder.name.as_ref()))
    }

    pub(crate) fn map(&self, offset: u64, len: usize, access: Access) -> Result<(Arc<Mapping>, usize), MapError> {
        if access == Access::ReadWrite
            && let Some(keeper) = self.keeper.get()
        {
            return Ok((keeper.clone(), offset as usize));
        }
        let (map, start) = map_fd(&self.holder, offset, len, access)?;
        Ok((Arc::new(map), start))
    }
}

/// A new open description of the same object, through `/proc/self/fd` (a
/// dup would share the description, its access mode and its lock).
pub(crate) fn reopen(fd: &OwnedFd, access: Access) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mode = match access {
        Access::ReadOnly => OFlags::RDONLY,
        Access::ReadWrite => OFlags::RDWR,
    };
    rfs::open(path.as_str(), mode | OFlags::CLOEXEC, rfs::Mode::empty())
}

/// Maps `len` bytes at `offset`, aligning the start down to a page boundary.
/// Returns the mapping and where the requested byte lies in it.
fn map_fd(holder: &Arc<Holder>, offset: u64, len: usize, access: Access) -> Result<(Mapping, usize), MapError> {
    let page = rustix::param::page_size() as u64;
    let aligned = offset - offset % page;
    let start = (offset - aligned) as usize;
    let map_len = start.checked_add(len).ok_or(MapError::OutOfRange { offset, len: len as u64, size: u64::MAX })?;
    let prot = match access {
        Access::ReadOnly => ProtFlags::READ,
        Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
    };
    // SAFETY:
    // - a null hint lets the kernel choose a fresh address range, so no
    //   existing memory (and no Rust reference into it) is affected;
    // - the result is only accessed through `Mapping`, which exposes raw
    //   pointers, never references.
    let ptr = unsafe { mm::mmap(std::ptr::null_mut(), map_len, prot, MapFlags::SHARED, &holder.fd, aligned) }.map_err(
        |e| match e {
            // EACCES: descriptor not open for writing; EPERM: a write-sealed
            // memfd (or a security module's refusal, which keeps its code).
            Errno::ACCESS if access == Access::ReadWrite => MapError::ReadOnly,
            Errno::PERM
                if access == Access::ReadWrite
                    && rfs::fcntl_get_seals(&holder.fd)
                        .is_ok_and(|s| s.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE)) =>
            {
                MapError::Sealed
            }
            e => MapError::Io(io_err(e)),
        },
    )?;
    Ok((Mapping { ptr: ptr.cast(), len: map_len, _holder: holder.clone() }, start))
}

/// A mapped range, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// A view keeps its section's descriptor (and so its holder lock) open.
    _holder: Arc<Holder>,
}

// SAFETY:
// - the mapping is plain shared memory owned by this value; it is not tied to
//   the thread that made it, and all access goes through raw pointers, atomics
//   and copies, which are as thread-safe as they are process-safe.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`; `&Mapping` only hands out raw pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn flush(&self, start: usize, len: usize) -> io::Result<()> {
        let page = rustix::param::page_size();
        let aligned = start - start % page;
        // SAFETY:
        // - `aligned..start + len` lies inside this live mapping (the view
        //   range is inside it, and the mapping starts page-aligned);
        // - msync does not change the memory's contents.
        unsafe { mm::msync(self.ptr.add(aligned).cast(), start - aligned + len, MsyncFlags::SYNC) }.map_err(io_err)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY:
        // - `ptr`/`len` are exactly what mmap returned and nothing else unmaps
        //   them;
        // - every view referring to this mapping holds an `Arc` to it, so none
        //   is left when it is dropped.
        let _ = unsafe { mm::munmap(self.ptr.cast(), self.len) };
    }
}
