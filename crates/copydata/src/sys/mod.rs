//! Operating-system backends.
//!
//! Exactly one backend is compiled: `linux`, `windows`, or `unsupported`
//! (every constructor fails with an `Unsupported` error, so the crate builds
//! everywhere). Each backend provides, under these names:
//!
//! - `struct Section`: owns one OS section object (fd or handle), closed on
//!   drop, `Send + Sync`, with
//!   - `anonymous(size: u64) -> Result<Section, CreateError>`
//!   - `create(name: &Name, size: u64, options: &SectionOptions) -> Result<Section, CreateError>`:
//!     fails with `AlreadyExists` while a live section has the name
//!   - `open(name: &Name, options: &SectionOptions) -> Result<Section, OpenError>`:
//!     refuses another user's object unless the options allow it
//!   - `open_or_create(name: &Name, size: u64, options: &SectionOptions) -> Result<(Section, bool), CreateError>`
//!     (`true` when this call created it)
//!   - `from_file(file: &File, access: Access) -> Result<Section, CreateError>`
//!   - `len(&self) -> u64`, `access(&self) -> Access`, `size_sealed(&self) -> bool`
//!   - `read_only(&self) -> Result<Section, ReadOnlyError>`: a handle the
//!     holder cannot turn back into write access
//!   - `map(&self, offset: u64, len: usize, access: Access) -> Result<(Arc<Mapping>, usize), MapError>`:
//!     a mapping containing the range and where the range starts inside it;
//!     the caller has already checked the range against `len()` and the access
//!     against `access()`
//! - `struct Mapping`: a mapped range, unmapped on drop, `Send + Sync`, with
//!   `ptr(&self) -> *mut u8`, `len(&self) -> usize` and `flush(&self, start, len) -> io::Result<()>`.
//! - `remove(name: &Name) -> Result<(), RemoveError>`
//! - `list() -> Result<Vec<SectionInfo>, ListError>`
//! - `spawn_with_sections(cmd: &mut Command, sections: &[(&Section, Option<&Name>)]) -> io::Result<Child>`:
//!   passes the sections (and nothing else) to the child and sets
//!   [`INHERIT_VAR`](crate::INHERIT_VAR) to a token describing them
//! - `prepare_inheritance(sections: &[(&Section, Option<&Name>)]) -> io::Result<(Vec<OwnedFd or OwnedHandle>, String)>`:
//!   what `spawn_with_sections` does before spawning: duplicates to pass
//!   (Linux: close-on-exec; Windows: inheritable while they live) and the token
//! - `take_inherited(token: &str) -> Result<Vec<(Section, Option<Name>)>, InheritError>`:
//!   the child's side; validates every entry before taking ownership.
//!
//! The `mailbox` module of each backend provides the per-OS half of the
//! fast path (see [`crate::fast`] for the portable half and the exact
//! contract of `Link`):
//!
//! - `Mailbox::bind(name, options) -> Result<(Mailbox, Arc<Dispatch>), BindError>`:
//!   holds the name, accepts senders, sets up each connection's region and
//!   hands the connection to the `Dispatch`; tells the `Dispatch` when a
//!   sender is gone; dropping it closes every connection;
//! - `connect(name, wait, deadline) -> Result<(Link, u64), SendError>`: the
//!   sender's side of the set-up (the receiver's payload limit with it);
//! - `Link`: parking and waking, the peer's liveness, and the hand-over of
//!   buffers and sections that go with a message;
//! - `Bells`: the receiver's doorbells, one per handler thread;
//! - `NativeResponder`: answers a message from a plain Win32 program
//!   (uninhabited where there are none);
//! - `allow_foreground(pid)`: lets `pid` take the foreground (Windows'
//!   `AllowSetForegroundWindow`; nothing elsewhere);
//! - `list()`.
//!
//! The `sync` module of each backend provides the per-OS half of
//! [`crate::sync`] (the portable header is in `crate::sync::header`):
//!
//! - `open_object(object, name, kind, size, create) -> Result<(Section, bool), SyncOpenError>`:
//!   the named object `object` (`copydata.KIND.NAME`), created zero-filled
//!   (Linux: with its mutex initialised) before anyone can open it;
//! - `RawMutex` (`attach`, `lock(header, deadline, try_only) -> Result<owner_died, LockError>`, `unlock`);
//! - `RawEvent` (`attach`, `set`, `reset`, `wait(header, deadline,
//!   between)`: with `between`, one wait in slices with a check between
//!   them that still sees a set made between two);
//! - `list()`: (kind, object name) of the live objects.
//!
//! Platform-specific extras (hand-over to unrelated processes) are public
//! through [`crate::os`].

#[cfg(target_os = "linux")]
pub(crate) mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(windows)]
pub(crate) mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

#[cfg(not(any(target_os = "linux", windows)))]
mod unsupported;
#[cfg(not(any(target_os = "linux", windows)))]
pub(crate) use unsupported::*;

/// Mailboxes on platforms without a backend for them.
#[cfg(not(any(target_os = "linux", windows)))]
#[path = "unsupported_mailbox.rs"]
pub(crate) mod mailbox;
