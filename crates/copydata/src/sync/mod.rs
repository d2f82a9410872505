//! Shared state and cross-process synchronisation: a typed shared value
//! ([`Shared`]), a mutex that survives its owner's death ([`Mutex`]) and an
//! event ([`Event`]), all named and usable from any process of this user.
//!
//! This is the seed's "method two", a DLL's shared data section, done with
//! the synchronisation it lacks:
//!
//! ```no_run
//! use copydata::sync::Shared;
//!
//! // Every process that opens "hits" sees one counter; the first one to
//! // get here runs the initialiser, exactly once.
//! let hits = Shared::<u64>::open_or_create("hits", || 0)?;
//! let mut n = hits.lock()?;
//! if n.owner_died() {
//!     // A process died while it held the lock: check the value, then
//!     n.mark_consistent();
//! }
//! *n += 1;
//! println!("visit number {}", *n);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Owner death
//!
//! If a process dies holding a [`Mutex`] (or a [`Shared`] value's lock),
//! the next locker gets the lock together with an **owner died**
//! indication ([`MutexGuard::owner_died`]), like Windows' `WAIT_ABANDONED`
//! and POSIX's `EOWNERDEAD`. The state it protects may be half-updated; the
//! locker repairs it and calls [`MutexGuard::mark_consistent`]. Until
//! someone does, every later locker is told too: the indication is a flag
//! copydata keeps beside the OS object, so it is never silently dropped
//! (Windows reports `WAIT_ABANDONED` only once; glibc would make an
//! unmarked mutex unusable instead).
//!
//! The indication lives with the object, so it reaches a locker only if
//! some process still held the object open when the owner died. If the
//! owner was its last holder, the object went with it (see "Lifetime and
//! names" below; a Windows mutex does the same), and the next `open_or_create`
//! makes a fresh one with nothing to report: state that must survive
//! every process belongs in a file.
//!
//! A [`MutexGuard`] borrows its mutex and stays on its thread; to keep a
//! held lock in a structure (as language bindings do, locking and
//! unlocking by separate calls), [`Mutex::lock_arc`] gives an
//! [`ArcMutexGuard`] instead.
//!
//! # Bytes of a layout known at run time
//!
//! [`SharedBytes`] is the same object as a [`Shared`] value, opened by
//! size, alignment and type tag instead of a Rust type: what the Python
//! and C bindings use, and a way for them to reach a value a Rust program
//! shares (opened with `T`'s size, alignment and tag).
//!
//! # Lifetime and names
//!
//! Like named sections, these objects live while a process holds them
//! (an open [`Mutex`], [`Event`] or [`Shared`]). The last holder to close
//! one removes it; if the last holder is killed (`kill -9`), the object
//! stays in `/dev/shm` until another process of the user lists objects
//! ([`objects`], [`crate::list`]) or creates or opens one of that name,
//! which removes it. Names follow [`crate::validate_name`]
//! and are scoped per user (Linux) or login session (Windows). A mutex,
//! an event and a shared value may have the same name; they are different
//! objects.
//!
//! | | Linux | Windows |
//! |---|---|---|
//! | object | `/dev/shm/copydata.KIND.NAME`, a copydata object | file mapping `Local\copydata.KIND.NAME` |
//! | mutex | a process-shared robust glibc mutex inside it (user space when uncontended) | kernel mutex `Local\copydata.KIND.NAME.lock` |
//! | owner death | `EOWNERDEAD` (the kernel's robust-futex list) | `WAIT_ABANDONED` |
//! | event | a futex word inside it | kernel event `Local\copydata.event.NAME.event` |
//!
//! All timeouts run on a monotonic clock, and a wait never reports a
//! timeout before its time has passed.
//!
//! # Trust
//!
//! Every process of the user can open these objects writable, and the
//! state of a Linux mutex (glibc's `pthread_mutex_t`, including the links
//! of the holding thread's robust list, which `pthread_mutex_unlock`
//! writes through) lives in that memory. The processes sharing an object
//! must therefore trust each other not to write it except through
//! copydata: a process that truncates the object kills the others with
//! SIGBUS at their next access, and one that scribbles over a held mutex
//! can crash its holder or make it write where it chooses. This is the
//! same trust as a named [`Section`]'s, not the guarantee of a mailbox.
//!
//! A glibc mutex's layout differs between 32- and 64-bit processes, so on
//! Linux a [`Mutex`] or [`Shared`] value is shared between processes of
//! the same word size only.

pub(crate) mod header;
mod shared;

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The `bytemuck` crate, whose `Pod` and `Zeroable` a [`Shared`] value
/// implements: derive them with `#[bytemuck(crate =
/// "copydata::sync::bytemuck")]` to need no dependency of your own (see
/// [`Shared`]).
pub use bytemuck;

use self::header::{EVENT_KIND, HEADER_LEN, INCONSISTENT, ObjectKind};
pub use self::shared::{ArcSharedBytesGuard, AtomicValue, Shared, SharedBytes, SharedBytesGuard, SharedGuard};
use crate::error::ListError;
pub use crate::error::{LockError, SyncOpenError, WaitError};
use crate::name::Name;
use crate::section::Section;
use crate::sys;
use crate::view::ViewMut;

/// A mapping failure as an `io::Error` that keeps the OS error (its code
/// stays readable with `raw_os_error`, e.g. ENOMEM for a full address space).
pub(crate) fn map_error(e: crate::error::MapError, what: &str) -> io::Error {
    match e {
        crate::error::MapError::Io(source) => source,
        other => io::Error::other(format!("mapping {what}: {other}")),
    }
}

/// An opened named object: its section and a view of its header.
#[derive(Debug)]
pub(crate) struct Object {
    header: ViewMut,
    // Holds the object (a named section lives while it is held).
    _section: Section,
    name: Name,
    object: Name,
}

impl Object {
    /// Opens (`create`: or creates, `size` bytes) the object `name` of
    /// `kind` and claims its kind in the header.
    pub(crate) fn open(name: &str, kind: ObjectKind, size: u64, create: bool) -> Result<Object, SyncOpenError> {
        let valid = Name::new(name).map_err(|reason| SyncOpenError::InvalidName { name: name.into(), reason })?;
        let object = Name::sync_object(kind.marker(), &valid);
        let (section, _created) = sys::sync::open_object(&object, name, kind, size.max(HEADER_LEN as u64), create)?;
        if section.len() < HEADER_LEN as u64 {
            return Err(SyncOpenError::WrongKind {
                name: name.into(),
                reason: format!("an object of {} bytes, too small to be a copydata {}", section.len(), kind.marker()),
            });
        }
        let header = section
            .map_mut(0, HEADER_LEN)
            .map_err(|e| SyncOpenError::Io { name: name.into(), source: map_error(e, "its header") })?;
        header::claim_kind(&header, kind).map_err(|reason| SyncOpenError::WrongKind { name: name.into(), reason })?;
        Ok(Object { header, _section: section, name: valid, object })
    }

    pub(crate) fn section(&self) -> &Section {
        &self._section
    }

    fn io(&self, source: io::Error) -> SyncOpenError {
        SyncOpenError::Io { name: self.name.to_string(), source }
    }
}

/// An object's lock: the OS mutex plus copydata's "inconsistent" flag.
#[derive(Debug)]
pub(crate) struct Lock {
    obj: Object,
    raw: sys::sync::RawMutex,
    /// The thread that took the lock through this opening and has not
    /// unlocked it ([`sys::sync::lock_holder`]; 0 for none): a guard left
    /// by `mem::forget`, or an Arc guard's.
    holder: std::sync::atomic::AtomicU64,
}

impl Lock {
    pub(crate) fn new(obj: Object) -> Result<Lock, SyncOpenError> {
        let raw = sys::sync::RawMutex::attach(&obj.header, &obj.object).map_err(|e| obj.io(e))?;
        Ok(Lock { obj, raw, holder: std::sync::atomic::AtomicU64::new(0) })
    }

    pub(crate) fn object(&self) -> &Object {
        &self.obj
    }

    pub(crate) fn acquire(&self, deadline: Option<Instant>, try_only: bool) -> Result<RawGuard<'_>, LockError> {
        let died = self.raw.lock(&self.obj.header, deadline, try_only)?;
        self.holder.store(sys::sync::lock_holder(), Ordering::Relaxed);
        if died {
            self.inconsistent().store(1, Ordering::SeqCst);
        }
        Ok(RawGuard { lock: self, _not_send: PhantomData })
    }

    /// copydata's "owner died, not repaired yet" flag.
    fn inconsistent(&self) -> &std::sync::atomic::AtomicU32 {
        header::u32_at(&self.obj.header, INCONSISTENT)
    }

    /// Unlocks; only the thread that locked may.
    fn unlock(&self) {
        self.holder.store(0, Ordering::Relaxed);
        self.raw.unlock(&self.obj.header);
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // A guard leaked with `mem::forget` leaves the lock held; on Linux
        // the holding thread's robust list, which glibc keeps inside the
        // mutexes it holds, then still points into this mapping, and the
        // thread's next lock anywhere would write through it: if that
        // thread still lives, keep the mapping for the process's life.
        // (Only for a lock taken through this opening: the same object
        // opened again in this process and locked there is no reason to
        // keep this one.)
        let holder = *self.holder.get_mut();
        if holder != 0 && sys::sync::thread_may_point_into_lock(holder) {
            self.obj.header.keep_mapped_for_ever();
        }
    }
}

/// A held lock; released on drop. Not `Send`: the thread that locked must
/// unlock (both OS mutexes require it).
pub(crate) struct RawGuard<'a> {
    lock: &'a Lock,
    _not_send: PhantomData<*const ()>,
}

impl RawGuard<'_> {
    pub(crate) fn owner_died(&self) -> bool {
        self.lock.inconsistent().load(Ordering::SeqCst) != 0
    }

    pub(crate) fn mark_consistent(&mut self) {
        self.lock.inconsistent().store(0, Ordering::SeqCst);
    }
}

impl Drop for RawGuard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

/// A named mutex shared by processes, that survives its owner's death.
///
/// ```no_run
/// use std::time::Duration;
/// use copydata::sync::Mutex;
///
/// let m = Mutex::open_or_create("config-writer")?;
/// let mut guard = m.lock_timeout(Duration::from_secs(5))?;
/// if guard.owner_died() {
///     // Someone died mid-update: repair what the lock protects, then
///     guard.mark_consistent();
/// }
/// // ... update the shared state ...
/// drop(guard); // unlocks
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Locking it again on a thread that holds it fails with
/// [`LockError::WouldDeadlock`] (it is not recursive).
#[derive(Debug)]
pub struct Mutex {
    lock: Lock,
}

impl Mutex {
    /// Opens the mutex `name`, creating it (unlocked) if no process holds
    /// one (`CreateMutexW` on Windows; on Linux a robust, process-shared
    /// glibc mutex, `pthread_mutex_init` with `PTHREAD_PROCESS_SHARED` and
    /// `PTHREAD_MUTEX_ROBUST`, in a shared object).
    #[doc(alias = "CreateMutexW")]
    #[doc(alias = "pthread_mutex_init")]
    #[doc(alias = "PTHREAD_PROCESS_SHARED")]
    pub fn open_or_create(name: &str) -> Result<Mutex, SyncOpenError> {
        Self::with(name, true)
    }

    /// Opens the existing mutex `name` ([`SyncOpenError::NotFound`] if no
    /// process holds one), like `OpenMutexW`.
    #[doc(alias = "OpenMutexW")]
    pub fn open(name: &str) -> Result<Mutex, SyncOpenError> {
        Self::with(name, false)
    }

    fn with(name: &str, create: bool) -> Result<Mutex, SyncOpenError> {
        let obj = Object::open(name, ObjectKind::Mutex, HEADER_LEN as u64, create)?;
        Ok(Mutex { lock: Lock::new(obj)? })
    }

    /// The mutex's name.
    pub fn name(&self) -> &str {
        self.lock.obj.name.as_str()
    }

    /// Waits for the lock, however long it takes
    /// (`WaitForSingleObject(INFINITE)` / `pthread_mutex_lock`).
    #[doc(alias = "WaitForSingleObject")]
    #[doc(alias = "pthread_mutex_lock")]
    pub fn lock(&self) -> Result<MutexGuard<'_>, LockError> {
        self.lock.acquire(None, false).map(MutexGuard)
    }

    /// Takes the lock if it is free now, else [`LockError::WouldBlock`]
    /// (`WaitForSingleObject(0)` / `pthread_mutex_trylock`).
    #[doc(alias = "pthread_mutex_trylock")]
    pub fn try_lock(&self) -> Result<MutexGuard<'_>, LockError> {
        self.lock.acquire(None, true).map(MutexGuard)
    }

    /// Waits at most `timeout` for the lock ([`LockError::TimedOut`], never
    /// before `timeout` has passed): `WaitForSingleObject(ms)` on Windows,
    /// `pthread_mutex_clocklock(CLOCK_MONOTONIC)` on Linux (the
    /// `pthread_mutex_timedlock` that a change of the wall clock cannot
    /// stretch or cut short).
    #[doc(alias = "WaitForSingleObject")]
    #[doc(alias = "pthread_mutex_timedlock")]
    #[doc(alias = "pthread_mutex_clocklock")]
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_>, LockError> {
        self.lock.acquire(crate::deadline(timeout), false).map(MutexGuard)
    }
}

impl Mutex {
    /// Waits for the lock, however long it takes, and returns a guard that
    /// holds the mutex through an `Arc` (see [`ArcMutexGuard`]: one that
    /// can be stored and moved, for code that locks and unlocks in
    /// separate calls).
    pub fn lock_arc(self: &Arc<Self>) -> Result<ArcMutexGuard, LockError> {
        self.acquire_arc(None, false)
    }

    /// [`try_lock`](Self::try_lock), with an [`ArcMutexGuard`].
    pub fn try_lock_arc(self: &Arc<Self>) -> Result<ArcMutexGuard, LockError> {
        self.acquire_arc(None, true)
    }

    /// [`lock_timeout`](Self::lock_timeout), with an [`ArcMutexGuard`].
    pub fn lock_arc_timeout(self: &Arc<Self>, timeout: Duration) -> Result<ArcMutexGuard, LockError> {
        self.acquire_arc(crate::deadline(timeout), false)
    }

    fn acquire_arc(self: &Arc<Self>, deadline: Option<Instant>, try_only: bool) -> Result<ArcMutexGuard, LockError> {
        // The lock stays taken when the guard goes: `ArcMutexGuard` unlocks.
        std::mem::forget(self.lock.acquire(deadline, try_only)?);
        Ok(ArcMutexGuard { mutex: self.clone(), holder: Holder::here() })
    }
}

/// A held [`Mutex`] that keeps its mutex alive through an `Arc`, and
/// that may be stored in a structure and moved to other threads (a
/// [`MutexGuard`] may not): for code that locks and unlocks by separate
/// calls, as language bindings do. From [`Mutex::lock_arc`].
///
/// Only the thread that locked may unlock (both OS mutexes require it):
/// dropped on that thread, in that process, it unlocks. Dropped on another
/// thread, or in a child made by `fork`, it leaves the lock with the
/// thread that took it; the OS releases it when that thread ends, and the
/// next locker is told its owner died. (If that thread still runs, on
/// Linux the mutex then stays open in this process for as long as it
/// lives, since the thread keeps a pointer into it until it ends; on
/// Windows the guard closes its handle like any other, and a mutex goes
/// with its last handle, whoever owns it.) [`is_mine`](Self::is_mine) says
/// where a drop would unlock.
///
/// ```no_run
/// use std::sync::Arc;
/// use copydata::sync::{ArcMutexGuard, Mutex};
///
/// struct Session {
///     held: Option<ArcMutexGuard>,
/// }
///
/// let m = Arc::new(Mutex::open_or_create("config-writer")?);
/// let mut session = Session { held: Some(m.lock_arc()?) };
/// // ... later, on the same thread:
/// session.held = None; // unlocks
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArcMutexGuard {
    mutex: Arc<Mutex>,
    holder: Holder,
}

/// The thread (and process) that took a lock an Arc guard keeps: the only
/// place where dropping the guard may unlock.
#[derive(Debug)]
pub(crate) struct Holder {
    thread: std::thread::ThreadId,
    pid: u32,
    /// The backend's name for the thread (Linux: its kernel thread id).
    os_thread: u64,
}

impl Holder {
    pub(crate) fn here() -> Holder {
        Holder { thread: std::thread::current().id(), pid: std::process::id(), os_thread: sys::sync::lock_holder() }
    }

    pub(crate) fn is_current(&self) -> bool {
        self.thread == std::thread::current().id() && self.pid == std::process::id()
    }

    /// Whether the thread that took the lock may still point into the
    /// object's mapping (Linux: a live thread keeps the mutexes it holds
    /// on its robust list, inside them), so that the mapping must be kept.
    pub(crate) fn may_point_into(&self) -> bool {
        self.pid == std::process::id() && sys::sync::thread_may_point_into_lock(self.os_thread)
    }

    /// What an Arc guard dropped where it cannot unlock does with the
    /// object: keeps it for this process's life if the thread holding the
    /// lock may still point into it (otherwise the thread's later robust
    /// list updates, and the owner-died report at its end, would hit a
    /// mapping that is gone).
    pub(crate) fn keep_if_pointed_into<T>(&self, object: &Arc<T>) {
        if self.may_point_into() {
            std::mem::forget(object.clone());
        }
    }
}

impl ArcMutexGuard {
    /// The mutex this guard holds.
    pub fn mutex(&self) -> &Arc<Mutex> {
        &self.mutex
    }

    /// Whether this is the thread (and the process) that locked: where
    /// dropping the guard unlocks.
    pub fn is_mine(&self) -> bool {
        self.holder.is_current()
    }

    /// As [`MutexGuard::owner_died`].
    pub fn owner_died(&self) -> bool {
        self.mutex.lock.inconsistent().load(Ordering::SeqCst) != 0
    }

    /// As [`MutexGuard::mark_consistent`].
    pub fn mark_consistent(&mut self) {
        self.mutex.lock.inconsistent().store(0, Ordering::SeqCst);
    }
}

impl Drop for ArcMutexGuard {
    fn drop(&mut self) {
        if self.is_mine() {
            self.mutex.lock.unlock();
        } else {
            self.holder.keep_if_pointed_into(&self.mutex);
        }
    }
}

impl fmt::Debug for ArcMutexGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArcMutexGuard")
            .field("name", &self.mutex.name())
            .field("owner_died", &self.owner_died())
            .field("mine", &self.is_mine())
            .finish()
    }
}

/// A held [`Mutex`]; unlocks on drop (`ReleaseMutex` /
/// `pthread_mutex_unlock`).
#[doc(alias = "ReleaseMutex")]
#[doc(alias = "pthread_mutex_unlock")]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MutexGuard<'a>(RawGuard<'a>);

impl MutexGuard<'_> {
    /// Whether a holder of this mutex died while holding it and nobody has
    /// marked the protected state consistent since. Stays `true` for every
    /// locker until someone calls [`mark_consistent`](Self::mark_consistent).
    /// The lock reported `WAIT_ABANDONED` (Windows) or `EOWNERDEAD` (Linux).
    #[doc(alias = "WAIT_ABANDONED")]
    #[doc(alias = "EOWNERDEAD")]
    pub fn owner_died(&self) -> bool {
        self.0.owner_died()
    }

    /// Declares the protected state consistent again (after repairing it);
    /// on Linux `pthread_mutex_consistent`.
    #[doc(alias = "pthread_mutex_consistent")]
    pub fn mark_consistent(&mut self) {
        self.0.mark_consistent();
    }
}

impl fmt::Debug for MutexGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard").field("owner_died", &self.owner_died()).finish()
    }
}

/// How an [`Event`] behaves once set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Stays set, waking every waiter, until [`Event::reset`].
    ManualReset,
    /// Wakes one waiter and resets itself; stays set until one waits.
    AutoReset,
}

impl EventKind {
    fn code(self) -> u32 {
        match self {
            EventKind::ManualReset => 1,
            EventKind::AutoReset => 2,
        }
    }

    fn from_code(code: u32) -> Option<EventKind> {
        match code {
            1 => Some(EventKind::ManualReset),
            2 => Some(EventKind::AutoReset),
            _ => None,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::ManualReset => "manual-reset",
            EventKind::AutoReset => "auto-reset",
        })
    }
}

/// A named event shared by processes (`CreateEventW`): set it in one,
/// wake waiters in others. On Linux it is a futex word in shared memory
/// (`futex(FUTEX_WAIT)` / `futex(FUTEX_WAKE)`).
///
/// ```no_run
/// use std::time::Duration;
/// use copydata::sync::{Event, EventKind};
///
/// let ready = Event::open_or_create("data-ready", EventKind::ManualReset)?;
/// // In one process:
/// ready.set()?;
/// // In another:
/// ready.wait_timeout(Duration::from_secs(5))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[doc(alias = "futex")]
pub struct Event {
    obj: Object,
    raw: sys::sync::RawEvent,
    kind: EventKind,
}

impl Event {
    /// Opens the event `name`, creating it unset if no process holds one
    /// (`CreateEventW`). An existing event of the other kind is refused
    /// ([`SyncOpenError::WrongKind`]).
    #[doc(alias = "CreateEventW")]
    pub fn open_or_create(name: &str, kind: EventKind) -> Result<Event, SyncOpenError> {
        let obj = Object::open(name, ObjectKind::Event, HEADER_LEN as u64, true)?;
        header::claim_u32(&obj.header, EVENT_KIND, kind.code()).map_err(|found| SyncOpenError::WrongKind {
            name: name.into(),
            reason: match EventKind::from_code(found) {
                Some(k @ EventKind::AutoReset) => format!("an {k} event, not {kind}"),
                Some(k) => format!("a {k} event, not {kind}"),
                None => format!("an event of unknown kind ({found}), not {kind}"),
            },
        })?;
        Self::attach(obj, kind)
    }

    /// Opens the existing event `name`, whatever its kind (`OpenEventW`).
    #[doc(alias = "OpenEventW")]
    pub fn open(name: &str) -> Result<Event, SyncOpenError> {
        let obj = Object::open(name, ObjectKind::Event, HEADER_LEN as u64, false)?;
        let code = header::u32_at(&obj.header, EVENT_KIND).load(Ordering::Acquire);
        // Its creator has not recorded the kind yet (or died first: then
        // the next `open_or_create` records its own): not made yet. Taking
        // a kind here could contradict a creator still at work.
        if code == 0 {
            return Err(SyncOpenError::NotFound { name: name.into() });
        }
        let kind = EventKind::from_code(code).ok_or_else(|| SyncOpenError::WrongKind {
            name: name.into(),
            reason: format!("an event of unknown kind {code}"),
        })?;
        Self::attach(obj, kind)
    }

    fn attach(obj: Object, kind: EventKind) -> Result<Event, SyncOpenError> {
        let raw = sys::sync::RawEvent::attach(&obj.header, &obj.object, kind == EventKind::AutoReset)
            .map_err(|e| obj.io(e))?;
        Ok(Event { obj, raw, kind })
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        self.obj.name.as_str()
    }

    /// Manual- or auto-reset.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Sets the event: wakes every waiter (manual-reset) or one
    /// (auto-reset). `SetEvent` on Windows, `futex(FUTEX_WAKE)` on Linux.
    ///
    /// As `SetEvent`, on both systems: each set of an auto-reset event
    /// releases one waiter, and with none waiting the event stays set for
    /// the next wait (sets beyond that are not counted); a set of a
    /// manual-reset event releases every thread waiting at that moment,
    /// even if a [`reset`](Self::reset) follows at once.
    #[doc(alias = "SetEvent")]
    #[doc(alias = "FUTEX_WAKE")]
    pub fn set(&self) -> io::Result<()> {
        self.raw.set(&self.obj.header)
    }

    /// Resets the event to unset (`ResetEvent`).
    #[doc(alias = "ResetEvent")]
    pub fn reset(&self) -> io::Result<()> {
        self.raw.reset(&self.obj.header)
    }

    /// Waits until the event is set (an auto-reset event is reset again by
    /// this wait): `WaitForSingleObject(INFINITE)` on Windows,
    /// `futex(FUTEX_WAIT)` on Linux.
    #[doc(alias = "WaitForSingleObject")]
    #[doc(alias = "FUTEX_WAIT")]
    pub fn wait(&self) -> Result<(), WaitError> {
        self.raw.wait(&self.obj.header, None, None)
    }

    /// Waits at most `timeout` ([`WaitError::TimedOut`], never before
    /// `timeout` has passed): `WaitForSingleObject(ms)` /
    /// `futex(FUTEX_WAIT)` with a timeout.
    #[doc(alias = "WaitForSingleObject")]
    #[doc(alias = "FUTEX_WAIT")]
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), WaitError> {
        self.raw.wait(&self.obj.header, crate::deadline(timeout), None)
    }

    /// Waits as [`wait_timeout`](Self::wait_timeout) (`timeout` `None`: as
    /// [`wait`](Self::wait)), for a caller that must stay responsive
    /// meanwhile (a tool that stops on Ctrl-C, a language binding that runs
    /// signal handlers): it sleeps at most `slice` at a time and calls
    /// `check` between two sleeps; an error from `check` ends the wait as
    /// [`WaitError::Io`] of that error.
    ///
    /// It is one wait, not a loop of short ones: a set that comes while
    /// `check` runs ends it, also a set of a manual-reset event followed at
    /// once by a reset, which a loop of `wait_timeout(slice)` calls could
    /// miss between two of them. (On Windows this holds for sets made
    /// through copydata; a program that sets the kernel event directly is
    /// seen during the sleeps.)
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// use copydata::sync::{Event, EventKind};
    ///
    /// static STOP: AtomicBool = AtomicBool::new(false);
    /// let ready = Event::open_or_create("ready", EventKind::ManualReset)?;
    /// ready.wait_checked(None, Duration::from_millis(50), || {
    ///     if STOP.load(Ordering::Relaxed) {
    ///         Err(std::io::Error::from(std::io::ErrorKind::Interrupted))
    ///     } else {
    ///         Ok(())
    ///     }
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_checked(
        &self,
        timeout: Option<Duration>,
        slice: Duration,
        mut check: impl FnMut() -> io::Result<()>,
    ) -> Result<(), WaitError> {
        let deadline = timeout.and_then(crate::deadline);
        let slice = slice.max(Duration::from_millis(1));
        self.raw.wait(&self.obj.header, deadline, Some((slice, &mut check)))
    }
}

/// What a wait in slices does between two of them (see
/// [`Event::wait_checked`]): the longest sleep, and the check to call.
pub(crate) type Between<'a> = Option<(Duration, &'a mut dyn FnMut() -> io::Result<()>)>;

/// Which kind of object an [`ObjectInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    /// A [`Mutex`].
    Mutex,
    /// An [`Event`].
    Event,
    /// A [`Shared`] value.
    Shared,
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectType::Mutex => "mutex",
            ObjectType::Event => "event",
            ObjectType::Shared => "shared",
        })
    }
}

/// A live named synchronisation object, as reported by [`objects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ObjectType,
}

/// The live mutexes, events and shared values of this user (Linux) or
/// session (Windows). On Linux, listing also removes what crashed last
/// holders left in `/dev/shm`.
pub fn objects() -> Result<Vec<ObjectInfo>, ListError> {
    let mut out = Vec::new();
    for (marker, object) in sys::sync::list()? {
        let kind = match marker {
            "mutex" => ObjectType::Mutex,
            "event" => ObjectType::Event,
            "shared" => ObjectType::Shared,
            _ => continue,
        };
        let prefix = format!("copydata.{marker}.");
        if let Some(name) = object.strip_prefix(&prefix).filter(|n| crate::validate_name(n).is_ok()) {
            out.push(ObjectInfo { name: name.to_owned(), kind });
        }
    }
    out.sort_by(|a, b| (&a.name, a.kind as u8).cmp(&(&b.name, b.kind as u8)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event whose creator has not recorded its kind yet: `open` says
    /// it is not there rather than taking a kind the creator may contradict,
    /// and the creator then records its own.
    #[test]
    fn an_event_without_its_kind_yet_is_not_found() {
        let name = format!("copydata-unit-event-kind-{}", std::process::id());
        // The creator has published the object, not yet its kind.
        let _creator = Object::open(&name, ObjectKind::Event, HEADER_LEN as u64, true).unwrap();
        let opened = Event::open(&name);
        assert!(matches!(opened, Err(SyncOpenError::NotFound { .. })), "{opened:?}");
        let made = Event::open_or_create(&name, EventKind::AutoReset).unwrap();
        assert_eq!(made.kind(), EventKind::AutoReset);
        assert_eq!(Event::open(&name).unwrap().kind(), EventKind::AutoReset);
    }
}
