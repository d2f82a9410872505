//! The portable section type.

use std::fmt;
use std::fs::File;
use std::io;

use crate::error::{CreateError, ListError, MapError, OpenError, ReadOnlyError, RemoveError};
use crate::name::Name;
use crate::sys;
use crate::view::{View, ViewMut};

/// Whether a section or view may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reading only. A read-only section cannot be mapped writable.
    ReadOnly,
    /// Reading and writing.
    ReadWrite,
}

/// A section of shared memory: the Win32 *file-mapping object*.
///
/// A section is anonymous (only reachable through its handle, which can be
/// passed to a child or another process), named (any process of the same user
/// can open it by name), or backed by a file. It has a fixed size; map any part
/// of it with [`map`](Self::map) or [`map_mut`](Self::map_mut).
///
/// The handle is closed when the `Section` is dropped. A named section lives
/// while any process holds it (a `Section` or a view of it): once every holder
/// is gone, also through a crash or `kill -9`, the name is free again. On
/// Linux the object left behind by a crashed last holder is removed lazily by
/// the next [`create`](Self::create), [`open`](Self::open) or [`list`] that
/// meets it.
///
/// ```
/// use copydata::Section;
///
/// let section = Section::anonymous(4096)?;
/// let view = section.map_mut(100, 5)?;
/// view.write_at(0, b"hello")?;
/// let mut back = [0; 5];
/// section.map(100, 5)?.read_at(0, &mut back)?;
/// assert_eq!(&back, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Portability
///
/// | | Linux | Windows |
/// |---|---|---|
/// | anonymous | `memfd_create`, sealed against resizing | `CreateFileMappingW(INVALID_HANDLE_VALUE)` |
/// | named | `shm_open("/NAME")` object in `/dev/shm`, mode 0600 | `CreateFileMappingW(Local\NAME)` |
/// | file-backed | the file's descriptor | `CreateFileMappingW(file)` |
/// | holders tracked by | a shared `flock` per open description | the kernel's handle count |
/// | read-only hand-out | `F_SEAL_FUTURE_WRITE` + `O_RDONLY` descriptor | handle with `FILE_MAP_READ` only |
///
/// # Implementation notes
///
/// On Linux a named section is created under a hidden temporary name, sized,
/// locked and marked (extended attribute `user.copydata`), and then published
/// with `renameat2(RENAME_NOREPLACE)`, so no process ever sees a half-made
/// section. Objects without the marker (made by other programs) can be
/// opened, but are never removed by the lazy reclaim.
pub struct Section {
    inner: sys::Section,
    name: Option<Name>,
    created: bool,
}

/// A live named section, as reported by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// The section's name.
    pub name: String,
    /// The section's size in bytes.
    pub size: u64,
}

impl Section {
    fn wrap(inner: sys::Section, name: Option<Name>, created: bool) -> Section {
        Section { inner, name, created }
    }

    /// Creates an anonymous section of `size` bytes, zero-filled.
    ///
    /// Only processes that are handed the section (see
    /// [`CommandExt::spawn_with_sections`](crate::CommandExt::spawn_with_sections) and [`crate::os`]) can reach it.
    ///
    /// Windows: `CreateFileMappingW(INVALID_HANDLE_VALUE, ..., NULL)`. Linux:
    /// `memfd_create` + `ftruncate`, then sealed against resizing
    /// (`fcntl(F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)`).
    #[doc(alias = "CreateFileMappingW")]
    #[doc(alias = "memfd_create")]
    #[doc(alias = "ftruncate")]
    pub fn anonymous(size: u64) -> Result<Section, CreateError> {
        check_size(size)?;
        Ok(Self::wrap(sys::Section::anonymous(size)?, None, true))
    }

    /// Creates a named section of `size` bytes, zero-filled. Fails with
    /// [`CreateError::AlreadyExists`] while a live section has this name.
    ///
    /// Windows: `CreateFileMappingW` with the name `Local\NAME` (an existing
    /// mapping of that name is an error here, not opened). Linux:
    /// `shm_open("/NAME")` + `ftruncate`, published only once complete.
    #[doc(alias = "CreateFileMappingW")]
    #[doc(alias = "shm_open")]
    #[doc(alias = "ftruncate")]
    pub fn create(name: &str, size: u64) -> Result<Section, CreateError> {
        Self::create_with(name, size, &SectionOptions::new())
    }

    /// [`create`](Self::create) with options (permission bits for other
    /// users, see [`SectionOptions::mode`]).
    pub fn create_with(name: &str, size: u64, options: &SectionOptions) -> Result<Section, CreateError> {
        let name = Name::section(name).map_err(|reason| CreateError::InvalidName { name: name.into(), reason })?;
        check_size(size)?;
        let inner = sys::Section::create(&name, size, options)?;
        Ok(Self::wrap(inner, Some(name), true))
    }

    /// Opens the live named section `name` for reading and writing. Fails with
    /// [`OpenError::NotFound`] if there is none.
    #[doc(alias = "OpenFileMappingW")]
    #[doc(alias = "shm_open")]
    pub fn open(name: &str) -> Result<Section, OpenError> {
        Self::open_with(name, Access::ReadWrite)
    }

    /// Opens the live named section `name` for reading only.
    pub fn open_read_only(name: &str) -> Result<Section, OpenError> {
        Self::open_with(name, Access::ReadOnly)
    }

    /// Opens the live named section `name` with the given access.
    pub fn open_with(name: &str, access: Access) -> Result<Section, OpenError> {
        Self::open_with_options(name, &SectionOptions::new().access(access))
    }

    /// Opens the live named section `name` with options (the access, and
    /// whether a section of another user is acceptable, see
    /// [`SectionOptions::allow_other_owner`]).
    pub fn open_with_options(name: &str, options: &SectionOptions) -> Result<Section, OpenError> {
        let name = Name::section(name).map_err(|reason| OpenError::InvalidName { name: name.into(), reason })?;
        let inner = sys::Section::open(&name, options)?;
        Ok(Self::wrap(inner, Some(name), false))
    }

    /// Opens the named section if it is live, otherwise creates it with
    /// `size` bytes. An existing section keeps its own size (see
    /// [`len`](Self::len)); [`was_created`](Self::was_created) tells which
    /// happened. Race-free: of many processes calling this at once, exactly
    /// one creates.
    ///
    /// This is what `CreateFileMappingW` with a name does on Windows (it
    /// opens an existing mapping and reports `ERROR_ALREADY_EXISTS`: here
    /// `was_created()` is `false`), and `shm_open(O_CREAT)` without
    /// `O_EXCL` on Linux.
    #[doc(alias = "CreateFileMappingW")]
    #[doc(alias = "ERROR_ALREADY_EXISTS")]
    #[doc(alias = "O_CREAT")]
    pub fn open_or_create(name: &str, size: u64) -> Result<Section, CreateError> {
        Self::open_or_create_with(name, size, &SectionOptions::new())
    }

    /// [`open_or_create`](Self::open_or_create) with options.
    pub fn open_or_create_with(name: &str, size: u64, options: &SectionOptions) -> Result<Section, CreateError> {
        let name = Name::section(name).map_err(|reason| CreateError::InvalidName { name: name.into(), reason })?;
        check_size(size)?;
        let (inner, created) = sys::Section::open_or_create(&name, size, options)?;
        Ok(Self::wrap(inner, Some(name), created))
    }

    /// Makes a section backed by `file`, of the file's current length. Writes
    /// through a view reach the file. The file must be open for reading (and
    /// for writing, with [`Access::ReadWrite`]); the section keeps its own
    /// handle, so `file` may be closed afterwards.
    ///
    /// Truncating the file while it is mapped makes access to the cut-off
    /// part crash the accessing process (SIGBUS on Linux); keep such files
    /// private to your application.
    ///
    /// Windows: `CreateFileMappingW` on the file's handle. Linux: the file's
    /// descriptor (duplicated), mapped with `mmap(MAP_SHARED)`.
    #[doc(alias = "CreateFileMappingW")]
    pub fn from_file(file: &File, access: Access) -> Result<Section, CreateError> {
        Ok(Self::wrap(sys::Section::from_file(file, access)?, None, true))
    }

    /// Opens the file at `path` (for reading, and for writing with
    /// [`Access::ReadWrite`]) and makes a section backed by it, of the
    /// file's current length: [`from_file`](Self::from_file) for a path.
    ///
    /// Refuses what is not a regular file ([`CreateError::NotAFile`]: a
    /// directory, a device, a FIFO, which it never waits on) and an empty
    /// file ([`CreateError::InvalidSize`]: size it first, for example with
    /// [`File::set_len`]); a missing file is [`CreateError::NoSuchFile`].
    ///
    /// ```no_run
    /// use copydata::{Access, Section};
    ///
    /// std::fs::File::create("table.bin")?.set_len(1 << 20)?;
    /// let section = Section::from_path("table.bin", Access::ReadWrite)?;
    /// section.map_mut(0, 4)?.write_at(0, b"head")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_path(path: impl AsRef<std::path::Path>, access: Access) -> Result<Section, CreateError> {
        let path = path.as_ref();
        let not_a_file = || CreateError::NotAFile { path: path.to_owned() };
        // Windows cannot open a directory as a file and says "access
        // denied": told apart first (and checked again once open).
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(not_a_file());
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(access == Access::ReadWrite);
        // Opening a FIFO would wait for a writer: fail at once instead (the
        // check below refuses it). The flag only affects the open: mapping
        // ignores it.
        // (Nor may a terminal swapped in after the check become this
        // process's controlling terminal.)
        #[cfg(target_os = "linux")]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = options.open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CreateError::NoSuchFile { path: path.to_owned(), source },
            io::ErrorKind::PermissionDenied => {
                CreateError::PermissionDenied { object: path.display().to_string(), source }
            }
            io::ErrorKind::IsADirectory => not_a_file(),
            _ => CreateError::Io { object: path.display().to_string(), source },
        })?;
        let meta = file.metadata().map_err(|source| CreateError::Io { object: path.display().to_string(), source })?;
        if !meta.is_file() {
            return Err(not_a_file());
        }
        if meta.len() == 0 {
            return Err(CreateError::InvalidSize { size: 0, reason: "the file is empty: size it before mapping it" });
        }
        Section::from_file(&file, access)
    }

    /// The section's size in bytes.
    ///
    /// # Platform notes
    ///
    /// Windows keeps the size of a memory-backed section rounded up to a
    /// whole page (4 KiB), so there a section opened by name or received from
    /// another process reports that rounded size; its creator sees the size it
    /// asked for. On Linux sizes are exact everywhere.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Whether the section has no bytes: never for one made here (sizes
    /// start at one byte), but a file-backed section inherited or received
    /// after another program truncated its file to nothing can be empty
    /// (and every view of it is out of range).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The section's name, for named sections.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(Name::as_str)
    }

    /// Whether this handle may map writable views.
    pub fn access(&self) -> Access {
        self.inner.access()
    }

    /// Whether no process can shrink the section any more, so reading any
    /// part of a view of it can never fault.
    ///
    /// `true` for anonymous sections on Linux (memfds sealed against
    /// shrinking and growing, checked on receipt) and for every section on
    /// Windows (a mapped section cannot be made smaller there). `false` for
    /// named and file-backed sections on Linux, and for a descriptor a peer
    /// sent that is not sealed: a process holding such a section (or its
    /// file) can truncate it, and this process then dies with SIGBUS when it
    /// touches the cut-off part of a view. Sections received from processes
    /// you do not trust should be size-sealed; copydata flags them rather
    /// than refuse them, because named and file-backed sections, which
    /// cannot be sealed, are shared on purpose all the time.
    ///
    /// On Linux this reads the descriptor's seals (`fcntl(F_GET_SEALS)`) and
    /// looks for `F_SEAL_SHRINK`.
    #[doc(alias = "F_GET_SEALS")]
    #[doc(alias = "F_SEAL_SHRINK")]
    pub fn is_size_sealed(&self) -> bool {
        self.inner.size_sealed()
    }

    /// `true` when the section's pages live in memory, so that reading them
    /// cannot fail: anonymous and named sections, and files on a memory file
    /// system (Linux: tmpfs, ramfs, hugetlbfs; Windows: sections backed by
    /// the paging file). `false` for a file on a disk, network or FUSE file
    /// system (`SEC_FILE` on Windows): there a read the file system cannot
    /// serve (a network share gone, a FUSE server that stopped) kills the
    /// process with `SIGBUS` or `EXCEPTION_IN_PAGE_ERROR`, and on Linux
    /// closing it may block. A receiver that takes sections from peers it
    /// does not trust can refuse such sections with this.
    ///
    /// ```no_run
    /// # fn f(msg: &copydata::Message) {
    /// for s in msg.sections() {
    ///     if !s.is_memory_backed() {
    ///         eprintln!("refused a section backed by a file");
    ///         return;
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// On Linux this is `fstatfs`'s file-system type; on Windows
    /// `NtQuerySection`'s `SEC_FILE` (a handle without `SECTION_QUERY`
    /// access, which copydata never makes, counts as backed by a file).
    #[doc(alias = "fstatfs")]
    #[doc(alias = "SEC_FILE")]
    pub fn is_memory_backed(&self) -> bool {
        self.inner.memory_backed()
    }

    /// `true` if this call's constructor made the object (always `true` for
    /// anonymous and file-backed sections; for
    /// [`open_or_create`](Self::open_or_create), whether it created).
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// Returns a read-only handle to the same memory, to pass to a child or
    /// another process. Its holder cannot map it writable, resize it, or
    /// upgrade it back to write access.
    ///
    /// For anonymous sections the guarantee is enforced by the kernel
    /// (Linux: `F_SEAL_FUTURE_WRITE`, `F_SEAL_SHRINK`, `F_SEAL_GROW` seals
    /// added with `fcntl(F_ADD_SEALS)` and an `O_RDONLY` descriptor; Windows:
    /// a handle duplicated with `DuplicateHandle` and `FILE_MAP_READ` only). A named or file-backed section remains
    /// reachable by its name or path, so whoever may open that may still get
    /// write access there.
    ///
    /// On Linux, memory that no name or path reaches any more (a memfd made
    /// by other code and wrapped with [`from_file`](Self::from_file), an
    /// unlinked file) is sealed like an anonymous section, size included,
    /// since a holder could otherwise reopen its read-only descriptor
    /// writable through `/proc`. Where that is impossible (a memfd made
    /// without `MFD_ALLOW_SEALING`, a file that is not a memfd) the call
    /// fails with [`ReadOnlyError::Io`] of kind
    /// [`Unsupported`](std::io::ErrorKind::Unsupported).
    ///
    /// # Platform notes
    ///
    /// On Linux the write seal applies to the memory itself: after the first
    /// read-only hand-out of an anonymous section, new writable views can only
    /// come from processes that already had one. This process keeps a
    /// writable mapping of the whole section for its own later
    /// [`map_mut`](Self::map_mut) calls, so here nothing changes. Another
    /// process given the writable section afterwards (a child, a hand-over)
    /// gets [`MapError::Sealed`] from `map_mut`: give a process that must
    /// write the section before making read-only hand-outs of it, or share
    /// a named section instead.
    #[doc(alias = "DuplicateHandle")]
    #[doc(alias = "F_SEAL_FUTURE_WRITE")]
    #[doc(alias = "F_ADD_SEALS")]
    pub fn read_only(&self) -> Result<Section, ReadOnlyError> {
        Ok(Self::wrap(self.inner.read_only()?, self.name.clone(), false))
    }

    /// Maps `len` bytes starting at `offset` for reading. The offset needs no
    /// alignment: the view starts exactly at the requested byte.
    ///
    /// Reading a view of a section that is not
    /// [size-sealed](Self::is_size_sealed) crashes this process (SIGBUS) if
    /// another holder has truncated the section below the part read.
    ///
    /// Windows: `MapViewOfFile(FILE_MAP_READ)`; Linux:
    /// `mmap(PROT_READ, MAP_SHARED)`, both from the allocation boundary below
    /// `offset`. The system chooses the address (there is no
    /// `MapViewOfFileEx` base address or `MAP_FIXED`), and a view's
    /// protection is fixed when it is mapped (no `mprotect` /
    /// `VirtualProtect`): to write, map the range with
    /// [`map_mut`](Self::map_mut). The view is unmapped when dropped.
    #[doc(alias = "MapViewOfFile")]
    #[doc(alias = "MapViewOfFileEx")]
    #[doc(alias = "mmap")]
    #[doc(alias = "mprotect")]
    #[doc(alias = "VirtualProtect")]
    pub fn map(&self, offset: u64, len: usize) -> Result<View, MapError> {
        let (map, start) = self.map_raw(offset, len, Access::ReadOnly)?;
        Ok(View::new(map, start, len, offset))
    }

    /// Maps `len` bytes starting at `offset` for reading and writing. Fails
    /// with [`MapError::ReadOnly`] on a read-only section.
    ///
    /// Windows: `MapViewOfFile(FILE_MAP_WRITE)`; Linux:
    /// `mmap(PROT_READ | PROT_WRITE, MAP_SHARED)`.
    #[doc(alias = "MapViewOfFile")]
    #[doc(alias = "mmap")]
    pub fn map_mut(&self, offset: u64, len: usize) -> Result<ViewMut, MapError> {
        let (map, start) = self.map_raw(offset, len, Access::ReadWrite)?;
        Ok(ViewMut::new(View::new(map, start, len, offset)))
    }

    fn map_raw(
        &self,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<(std::sync::Arc<sys::Mapping>, usize), MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        let size = self.len();
        let in_range = offset.checked_add(len as u64).is_some_and(|end| end <= size);
        if !in_range {
            return Err(MapError::OutOfRange { offset, len: len as u64, size });
        }
        if access == Access::ReadWrite && self.access() == Access::ReadOnly {
            return Err(MapError::ReadOnly);
        }
        self.inner.map(offset, len, access)
    }

    pub(crate) fn inner(&self) -> &sys::Section {
        &self.inner
    }

    pub(crate) fn name_ref(&self) -> Option<&Name> {
        self.name.as_ref()
    }

    pub(crate) fn from_parts(inner: sys::Section, name: Option<Name>) -> Section {
        Self::wrap(inner, name, false)
    }
}

/// The section's descriptor (a memfd, a `/dev/shm` object or a file). Dropping
/// the `Section` closes it; duplicate it to keep it longer.
#[cfg(target_os = "linux")]
impl std::os::fd::AsFd for Section {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self.inner.fd())
    }
}

/// The file-mapping handle. Dropping the `Section` closes it.
#[cfg(windows)]
impl std::os::windows::io::AsHandle for Section {
    fn as_handle(&self) -> std::os::windows::io::BorrowedHandle<'_> {
        self.inner.borrow()
    }
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("access", &self.access())
            .finish_non_exhaustive()
    }
}

fn check_size(size: u64) -> Result<(), CreateError> {
    if size == 0 {
        return Err(CreateError::InvalidSize { size, reason: "a section must be at least one byte" });
    }
    if size > isize::MAX as u64 {
        return Err(CreateError::InvalidSize { size, reason: "larger than the address space" });
    }
    Ok(())
}

/// Removes the name of a named section, like `shm_unlink`. Processes that
/// hold it keep their memory; the name is free for a new section at once.
/// The names under which copydata's locks, events and shared values live
/// (starting with `copydata.`) are not sections' and are refused, as
/// [`Section::create`] refuses them: [`RemoveError::InvalidName`] with
/// [`NameError::Reserved`](crate::NameError::Reserved).
///
/// # Platform notes
///
/// Windows has no such operation (a named mapping lives exactly as long as its
/// handles), so there this returns [`RemoveError::Unsupported`].
#[doc(alias = "shm_unlink")]
pub fn remove(name: &str) -> Result<(), RemoveError> {
    let valid = Name::section(name).map_err(|reason| RemoveError::InvalidName { name: name.into(), reason })?;
    sys::remove(&valid)
}

/// Lists this user's live named sections, sorted by name.
///
/// # Platform notes
///
/// On Linux it lists the sections made by copydata (marked objects in
/// `/dev/shm`) and removes those whose every holder has died. On Windows it
/// lists every live section with a valid copydata name in the session's
/// `Local\` namespace (`NtQueryDirectoryObject`; Windows records no maker),
/// with sizes rounded up to a page.
#[doc(alias = "NtQueryDirectoryObject")]
pub fn list() -> Result<Vec<SectionInfo>, ListError> {
    let mut all = sys::list()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// How a named section is created or opened: [`Section::create_with`],
/// [`Section::open_with_options`], [`Section::open_or_create_with`].
///
/// By default a named section is this user's alone: created with mode 0600
/// on Linux, and a `/dev/shm` object that another user owns, or that group
/// or others may write, is refused when opened ([`OpenError::OtherOwner`]).
/// Otherwise another user could plant an object under the name you are
/// about to use: read what you write, feed you data, and truncate it under
/// your views so that reading them crashes your process (SIGBUS).
///
/// Sharing with other users is deliberate: the creator grants access with
/// [`mode`](Self::mode), the opener accepts the other owner with
/// [`allow_other_owner`](Self::allow_other_owner), and both accept those
/// risks from each other. On Windows, `Local\` names are per login session
/// already; both options are ignored there.
#[derive(Debug, Clone)]
pub struct SectionOptions {
    access: Access,
    mode: u32,
    other_owners: bool,
}

impl Default for SectionOptions {
    fn default() -> SectionOptions {
        SectionOptions { access: Access::ReadWrite, mode: 0o600, other_owners: false }
    }
}

impl SectionOptions {
    /// Read-write, mode 0600, this user's sections only.
    pub fn new() -> SectionOptions {
        SectionOptions::default()
    }

    /// The access to open with (default read-write).
    pub fn access(mut self, access: Access) -> SectionOptions {
        self.access = access;
        self
    }

    /// Linux: the permission bits of a section this call creates (default
    /// 0o600; only the 0o777 bits count). 0o660, say, lets the group open it
    /// (with [`allow_other_owner`](Self::allow_other_owner)) and write it.
    pub fn mode(mut self, mode: u32) -> SectionOptions {
        self.mode = mode & 0o777;
        self
    }

    /// Linux: accept a section owned by another user, or one that group or
    /// others may write. Only for sections shared on purpose: their owner
    /// (and whoever may write them) can read and change everything in them
    /// and can shrink them so that reading this process's views crashes it.
    pub fn allow_other_owner(mut self, allow: bool) -> SectionOptions {
        self.other_owners = allow;
        self
    }

    pub(crate) fn access_mode(&self) -> Access {
        self.access
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn mode_bits(&self) -> u32 {
        self.mode
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn other_owners(&self) -> bool {
        self.other_owners
    }
}
