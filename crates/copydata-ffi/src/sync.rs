//! Named mutexes, shared values and events shared by processes
//! (`copydata::sync`): the objects `copydata lock`, `copydata shared` and
//! `copydata event` and the Rust and Python APIs reach by the same names.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use copydata::sync::{ArcMutexGuard, ArcSharedBytesGuard, EventKind, LockError, SharedBytes, SyncOpenError, WaitError};

use crate::error::{Error, Status, give_back, guard, guard_value, handle, opt_str_arg, out_arg, str_arg};
use crate::mailbox::timeout_arg;

/// Kind for `copydata_event_create`: stays set until
/// `copydata_event_reset`, waking every waiter.
pub const COPYDATA_MANUAL_RESET: u32 = 0;
/// Kind for `copydata_event_create`: wakes one waiter and resets itself.
pub const COPYDATA_AUTO_RESET: u32 = 1;

/// A named mutex shared by processes, that survives its owner's death.
/// Opaque; close it with `copydata_mutex_close`.
pub struct Mutex {
    locked: Locked<copydata::sync::Mutex>,
}

/// A named block of bytes shared by processes, initialised once, with a
/// lock. Opaque; close it with `copydata_shared_close`.
pub struct Shared {
    locked: Locked<SharedBytes>,
}

/// What a C handle locks through an `Arc` guard ([`copydata::sync::Mutex`],
/// [`SharedBytes`]).
trait ArcLock: Sized {
    type Guard: ArcGuard;
    /// What the object is called in messages.
    const WHAT: &'static str;
    fn name(&self) -> &str;
    /// Waits as long as it takes.
    fn lock_forever(self: &Arc<Self>) -> Result<Self::Guard, LockError>;
    /// Takes the lock only if it is free now.
    fn lock_now(self: &Arc<Self>) -> Result<Self::Guard, LockError>;
    /// Waits at most `timeout`.
    fn lock_within(self: &Arc<Self>, timeout: std::time::Duration) -> Result<Self::Guard, LockError>;
}

/// A held lock of an [`ArcLock`].
trait ArcGuard {
    fn is_mine(&self) -> bool;
    fn owner_died(&self) -> bool;
    fn mark_consistent(&mut self);
}

impl ArcLock for copydata::sync::Mutex {
    type Guard = ArcMutexGuard;
    const WHAT: &'static str = "mutex";
    fn name(&self) -> &str {
        copydata::sync::Mutex::name(self)
    }
    fn lock_forever(self: &Arc<Self>) -> Result<ArcMutexGuard, LockError> {
        self.lock_arc()
    }
    fn lock_now(self: &Arc<Self>) -> Result<ArcMutexGuard, LockError> {
        self.try_lock_arc()
    }
    fn lock_within(self: &Arc<Self>, timeout: std::time::Duration) -> Result<ArcMutexGuard, LockError> {
        self.lock_arc_timeout(timeout)
    }
}

impl ArcGuard for ArcMutexGuard {
    fn is_mine(&self) -> bool {
        ArcMutexGuard::is_mine(self)
    }
    fn owner_died(&self) -> bool {
        ArcMutexGuard::owner_died(self)
    }
    fn mark_consistent(&mut self) {
        ArcMutexGuard::mark_consistent(self)
    }
}

impl ArcLock for SharedBytes {
    type Guard = ArcSharedBytesGuard;
    const WHAT: &'static str = "shared value";
    fn name(&self) -> &str {
        SharedBytes::name(self)
    }
    fn lock_forever(self: &Arc<Self>) -> Result<ArcSharedBytesGuard, LockError> {
        self.lock_arc()
    }
    fn lock_now(self: &Arc<Self>) -> Result<ArcSharedBytesGuard, LockError> {
        self.try_lock_arc()
    }
    fn lock_within(self: &Arc<Self>, timeout: std::time::Duration) -> Result<ArcSharedBytesGuard, LockError> {
        self.lock_arc_timeout(timeout)
    }
}

impl ArcGuard for ArcSharedBytesGuard {
    fn is_mine(&self) -> bool {
        ArcSharedBytesGuard::is_mine(self)
    }
    fn owner_died(&self) -> bool {
        ArcSharedBytesGuard::owner_died(self)
    }
    fn mark_consistent(&mut self) {
        ArcSharedBytesGuard::mark_consistent(self)
    }
}

/// An object and the lock a thread holds through its handle: the lock
/// belongs to the thread that took it, as the OS mutexes require.
struct Locked<L: ArcLock> {
    inner: Arc<L>,
    held: std::sync::Mutex<Option<L::Guard>>,
}

impl<L: ArcLock> Locked<L> {
    fn new(inner: L) -> Locked<L> {
        Locked { inner: Arc::new(inner), held: std::sync::Mutex::new(None) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<L::Guard>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn not_mine(&self) -> Error {
        Error::invalid(format!("this thread does not hold {} {:?}", L::WHAT, self.inner.name()))
    }

    /// Takes the lock for the calling thread; whether its owner died.
    fn lock(&self, timeout_ms: u32) -> Result<bool, Error> {
        if self.held().as_ref().is_some_and(ArcGuard::is_mine) {
            return Err(LockError::WouldDeadlock.into());
        }
        let guard = match timeout_arg(timeout_ms) {
            None => self.inner.lock_forever()?,
            Some(t) if t.is_zero() => self.inner.lock_now()?,
            Some(t) => self.inner.lock_within(t)?,
        };
        let died = guard.owner_died();
        *self.held() = Some(guard);
        Ok(died)
    }

    fn unlock(&self) -> Result<(), Error> {
        let mut held = self.held();
        match held.as_ref() {
            Some(g) if g.is_mine() => {
                drop(held.take());
                Ok(())
            }
            _ => Err(self.not_mine()),
        }
    }

    fn mark_consistent(&self) -> Result<(), Error> {
        match self.held().as_mut() {
            Some(g) if g.is_mine() => {
                g.mark_consistent();
                Ok(())
            }
            _ => Err(self.not_mine()),
        }
    }
}

/// Stores 1 in `*out` (if not NULL) when `died`, else 0.
///
/// # Safety
///
/// `out` is NULL or points to a writable `int`.
unsafe fn tell_owner_died(out: *mut c_int, died: bool) {
    // SAFETY: NULL or a writable `int` (this function's contract).
    if let Some(out) = unsafe { out.as_mut() } {
        *out = died.into();
    }
}

/// A named event shared by processes. Opaque; close it with
/// `copydata_event_close`.
pub struct Event {
    inner: copydata::sync::Event,
}

impl From<SyncOpenError> for Error {
    fn from(e: SyncOpenError) -> Error {
        let status = match &e {
            SyncOpenError::InvalidName { .. } | SyncOpenError::InvalidLayout { .. } => Status::InvalidArgument,
            SyncOpenError::NotFound { .. } => Status::NotFound,
            // Another kind of object, or another kind of event, has the name.
            SyncOpenError::WrongKind { .. } | SyncOpenError::LayoutMismatch { .. } => Status::AlreadyExists,
            SyncOpenError::PermissionDenied { .. } | SyncOpenError::OtherOwner { .. } => Status::PermissionDenied,
            SyncOpenError::InitFailed { .. } => Status::Refused,
            SyncOpenError::Unsupported => Status::Unsupported,
            SyncOpenError::NoSpace { .. } => Status::NoSpace,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<LockError> for Error {
    fn from(e: LockError) -> Error {
        let status = match &e {
            // Not free in time, or (timeout 0) not free now.
            LockError::TimedOut | LockError::WouldBlock => Status::TimedOut,
            LockError::WouldDeadlock => Status::InvalidArgument,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<WaitError> for Error {
    fn from(e: WaitError) -> Error {
        let status = match &e {
            WaitError::TimedOut => Status::TimedOut,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

/// Opens (`create`: or creates) the named object `name` with `open` and
/// stores its handle in `*out`.
///
/// # Safety
///
/// As the exported functions that call it: `name` is NULL or a
/// NUL-terminated string; `out` is NULL or points to storage for a pointer.
unsafe fn open_into<T, O>(
    name: *const c_char,
    out: *mut *mut T,
    open: impl FnOnce(&str) -> Result<O, SyncOpenError>,
    wrap: impl FnOnce(O) -> T,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (the caller's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string (the caller's
        //   contract), read only during this call.
        let name = unsafe { str_arg(name, "name") }?;
        *out = Box::into_raw(Box::new(wrap(open(name)?)));
        Ok(())
    })
}

/// Opens the mutex `name`, creating it (unlocked) if no process holds one
/// (`CreateMutexW`; on Linux a robust, process-shared mutex in shared
/// memory). The mutex lives while any process holds it.
///
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` for an invalid name.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mutex_create(name: *const c_char, out: *mut *mut Mutex) -> Status {
    // SAFETY: the pointers are as `open_into` needs (this function's
    // contract).
    unsafe { open_into(name, out, copydata::sync::Mutex::open_or_create, Mutex::new) }
}

/// Opens the existing mutex `name` (`OpenMutexW`): fails with
/// `COPYDATA_STATUS_NOT_FOUND` if no process holds one.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mutex_open(name: *const c_char, out: *mut *mut Mutex) -> Status {
    // SAFETY: as `copydata_mutex_create`.
    unsafe { open_into(name, out, copydata::sync::Mutex::open, Mutex::new) }
}

impl Mutex {
    fn new(inner: copydata::sync::Mutex) -> Mutex {
        Mutex { locked: Locked::new(inner) }
    }
}

/// Takes the lock for the calling thread, waiting at most `timeout_ms`
/// (`COPYDATA_INFINITE`: as long as it takes; 0: only if it is free now):
/// `WaitForSingleObject` / `pthread_mutex_lock`. The same thread unlocks it
/// with `copydata_mutex_unlock`. Other threads may wait on the same handle
/// meanwhile.
///
/// `*owner_died` (if `owner_died` is not NULL) is set to 1 when a holder
/// died while holding the lock and nobody has called
/// `copydata_mutex_mark_consistent` since (the state it protects may be
/// half-updated: repair it, then mark it), else 0. It stays 1 for every
/// locker until someone marks it.
///
/// Fails with `COPYDATA_STATUS_TIMED_OUT` (not free in time) or
/// `COPYDATA_STATUS_INVALID_ARGUMENT` (this thread holds it already: it is
/// not recursive).
///
/// # Safety
///
/// `mutex` is NULL or a live mutex handle; `owner_died` is NULL or points
/// to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mutex_lock(
    mutex: *const Mutex,
    timeout_ms: u32,
    owner_died: *mut std::ffi::c_int,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `mutex` is NULL or a live mutex handle (the contract); it is
        //   only read through a shared reference.
        let m = unsafe { handle(mutex, "mutex") }?;
        let died = m.locked.lock(timeout_ms)?;
        // SAFETY: `owner_died` is NULL or points to a writable `int` (the
        // contract).
        unsafe { tell_owner_died(owner_died, died) };
        Ok(())
    })
}

/// Releases the lock the calling thread holds (`ReleaseMutex` /
/// `pthread_mutex_unlock`). Fails with `COPYDATA_STATUS_INVALID_ARGUMENT`
/// if this thread does not hold it.
///
/// # Safety
///
/// `mutex` is NULL or a live mutex handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mutex_unlock(mutex: *const Mutex) -> Status {
    guard(|| {
        // SAFETY: as in `copydata_mutex_lock`.
        unsafe { handle(mutex, "mutex") }?.locked.unlock()
    })
}

/// Declares the state the mutex protects consistent again, after a holder
/// died and the caller repaired it; the calling thread must hold the lock
/// (`COPYDATA_STATUS_INVALID_ARGUMENT` otherwise).
///
/// # Safety
///
/// `mutex` is NULL or a live mutex handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mutex_mark_consistent(mutex: *const Mutex) -> Status {
    guard(|| {
        // SAFETY: as in `copydata_mutex_lock`.
        unsafe { handle(mutex, "mutex") }?.locked.mark_consistent()
    })
}

/// Closes a mutex handle, releasing the lock if the calling thread holds
/// it through this handle; the mutex is gone once no process holds it.
/// NULL does nothing.
///
/// # Safety
///
/// `mutex` is NULL or a live mutex handle, closed once, that no other
/// thread is using (nor waiting on).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mutex_close(mutex: *mut Mutex) {
    // SAFETY: as this function's contract says.
    unsafe { give_back(mutex) }
}

/// The initialiser of `copydata_shared_create`: fills the `size` bytes at
/// `data` (zeros at first) and returns 0, or returns anything else to
/// fail (the value is then not made). `context` is the caller's. It must
/// return normally: a C++ exception thrown through it, or a `longjmp` out
/// of it, is undefined behaviour (it would cross Rust frames that hold the
/// value's lock).
pub type SharedInit = Option<unsafe extern "C" fn(data: *mut c_void, size: usize, context: *mut c_void) -> c_int>;

/// Opens the shared value `name`, creating it if no process holds one: a
/// block of `size` bytes aligned to `align` (a power of two, at most 4096)
/// with the type tag `tag` (NULL: "bytes"). When this call creates it,
/// `init` (unless NULL) fills the zeroed bytes, exactly once across all the
/// processes racing to create the value, under its lock; nobody sees the
/// bytes before it returns. The value lives while any process holds it.
/// A Rust `copydata::sync::Shared<T>` of the same size, alignment and tag
/// is the same object (so is Python's `copydata.Shared`).
///
/// Fails with `COPYDATA_STATUS_ALREADY_EXISTS` when the value (or another
/// kind of object) has the name with another size, alignment or tag,
/// `COPYDATA_STATUS_REFUSED` when `init` returned non-zero (the next
/// opener initialises the value), `COPYDATA_STATUS_INVALID_ARGUMENT` for
/// an invalid name, an alignment that is not a power of two up to 4096 or
/// a size too large to map, `COPYDATA_STATUS_NO_SPACE` when the
/// shared-memory file system has less room than `size` (Linux: `/dev/shm`).
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string, `tag` too; `init` is NULL or
/// a function safe to call with the value's bytes and `context`; `out` is
/// NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_create(
    name: *const c_char,
    size: usize,
    align: usize,
    tag: *const c_char,
    init: SharedInit,
    context: *mut c_void,
    out: *mut *mut Shared,
) -> Status {
    // SAFETY: `tag` is NULL or a NUL-terminated string (the contract).
    let tag = match unsafe { tag_arg(tag) } {
        Ok(tag) => tag,
        Err(e) => return fail_into(out, e),
    };
    let open = |name: &str| {
        SharedBytes::open_or_create_with(name, size, align, tag, |bytes| {
            let Some(init) = init else { return Ok(()) };
            // SAFETY: `bytes` is the value's, writable and ours alone while
            // this runs; `init` may be called with it and `context` (the
            // contract).
            match unsafe { init(bytes.as_mut_ptr().cast(), bytes.len(), context) } {
                0 => Ok(()),
                code => Err(format!("the initialiser returned {code}")),
            }
        })
    };
    // SAFETY: the pointers are as `open_into` needs (this function's
    // contract).
    unsafe { open_into(name, out, open, |inner| Shared { locked: Locked::new(inner) }) }
}

/// Opens the existing shared value `name`, of whatever size and alignment
/// it was made with, if its tag is `tag` (NULL: "bytes"): fails with
/// `COPYDATA_STATUS_NOT_FOUND` if no process holds it (or it is not
/// initialised yet), `COPYDATA_STATUS_ALREADY_EXISTS` for another tag.
///
/// # Safety
///
/// `name` and `tag` are NULL or NUL-terminated strings; `out` is NULL or
/// points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_open(
    name: *const c_char,
    tag: *const c_char,
    out: *mut *mut Shared,
) -> Status {
    // SAFETY: `tag` is NULL or a NUL-terminated string (the contract).
    let tag = match unsafe { tag_arg(tag) } {
        Ok(tag) => tag,
        Err(e) => return fail_into(out, e),
    };
    // SAFETY: as `copydata_shared_create`.
    unsafe { open_into(name, out, |n| SharedBytes::open(n, tag), |inner| Shared { locked: Locked::new(inner) }) }
}

/// A tag argument: NULL means "bytes".
///
/// # Safety
///
/// `tag` is NULL or a NUL-terminated string, valid for `'a`.
unsafe fn tag_arg<'a>(tag: *const c_char) -> Result<&'a str, Error> {
    // SAFETY: NULL or a NUL-terminated string (the contract).
    Ok(unsafe { opt_str_arg(tag, "tag") }?.unwrap_or("bytes"))
}

/// Fails an opener with `e` before it opens anything, setting `*out` to
/// NULL as every opener does.
fn fail_into<T>(out: *mut *mut T, e: Error) -> Status {
    guard(|| {
        // SAFETY: `out` is NULL or valid storage (the caller's contract).
        unsafe { out_arg(out) }?;
        Err(e)
    })
}

/// The value's size in bytes (0 for NULL).
///
/// # Safety
///
/// `shared` is NULL or a live shared-value handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_size(shared: *const Shared) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or a live handle (the contract).
        unsafe { handle(shared, "shared value") }.map_or(0, |s| s.locked.inner.len())
    })
}

/// The address of the value's bytes (NULL for NULL), valid until the
/// handle is closed. Other processes change them under the lock: read and
/// write them while holding it (`copydata_shared_lock`).
///
/// # Safety
///
/// `shared` is NULL or a live shared-value handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_data(shared: *const Shared) -> *mut c_void {
    guard_value(std::ptr::null_mut(), || {
        // SAFETY: NULL or a live handle (the contract).
        unsafe { handle(shared, "shared value") }.map_or(std::ptr::null_mut(), |s| s.locked.inner.as_ptr().cast())
    })
}

/// Takes the value's lock for the calling thread, as `copydata_mutex_lock`
/// (the same timeouts, errors and `*owner_died` report: a holder died and
/// the bytes may be half-changed).
///
/// # Safety
///
/// `shared` is NULL or a live shared-value handle; `owner_died` is NULL or
/// points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_lock(
    shared: *const Shared,
    timeout_ms: u32,
    owner_died: *mut c_int,
) -> Status {
    guard(|| {
        // SAFETY: NULL or a live handle (the contract), only read.
        let died = unsafe { handle(shared, "shared value") }?.locked.lock(timeout_ms)?;
        // SAFETY: NULL or a writable `int` (the contract).
        unsafe { tell_owner_died(owner_died, died) };
        Ok(())
    })
}

/// Releases the lock the calling thread holds, as `copydata_mutex_unlock`.
///
/// # Safety
///
/// `shared` is NULL or a live shared-value handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_unlock(shared: *const Shared) -> Status {
    guard(|| {
        // SAFETY: NULL or a live handle (the contract).
        unsafe { handle(shared, "shared value") }?.locked.unlock()
    })
}

/// Declares the value consistent again after a holder died and the caller
/// repaired it; the calling thread must hold the lock.
///
/// # Safety
///
/// `shared` is NULL or a live shared-value handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_mark_consistent(shared: *const Shared) -> Status {
    guard(|| {
        // SAFETY: NULL or a live handle (the contract).
        unsafe { handle(shared, "shared value") }?.locked.mark_consistent()
    })
}

/// Closes a shared-value handle, releasing the lock if the calling thread
/// holds it through this handle; the value is gone once no process holds
/// it. NULL does nothing.
///
/// # Safety
///
/// `shared` is NULL or a live shared-value handle, closed once, that no
/// other thread is using; its `copydata_shared_data` is not used
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_shared_close(shared: *mut Shared) {
    // SAFETY: as this function's contract says.
    unsafe { give_back(shared) }
}

/// Opens the event `name`, creating it unset if no process holds one
/// (`CreateEventW`): `kind` is `COPYDATA_MANUAL_RESET` (stays set until
/// reset, waking every waiter) or `COPYDATA_AUTO_RESET` (wakes one waiter
/// and resets itself).
///
/// Fails with `COPYDATA_STATUS_ALREADY_EXISTS` when an event of the other
/// kind has the name (`copydata_event_open` takes either),
/// `COPYDATA_STATUS_INVALID_ARGUMENT` for an invalid name or kind.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_create(name: *const c_char, kind: u32, out: *mut *mut Event) -> Status {
    let kind = match kind {
        COPYDATA_MANUAL_RESET => EventKind::ManualReset,
        COPYDATA_AUTO_RESET => EventKind::AutoReset,
        other => {
            let bad = format!("event kind {other} is neither COPYDATA_MANUAL_RESET (0) nor COPYDATA_AUTO_RESET (1)");
            return fail_into(out, Error::invalid(bad));
        }
    };
    // SAFETY: the pointers are as `open_into` needs (this function's
    // contract).
    unsafe { open_into(name, out, |n| copydata::sync::Event::open_or_create(n, kind), |inner| Event { inner }) }
}

/// Opens the existing event `name` (`OpenEventW`), of either kind: fails
/// with `COPYDATA_STATUS_NOT_FOUND` if no process holds one.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_open(name: *const c_char, out: *mut *mut Event) -> Status {
    // SAFETY: as `copydata_event_create`.
    unsafe { open_into(name, out, copydata::sync::Event::open, |inner| Event { inner }) }
}

/// The event's kind: `COPYDATA_MANUAL_RESET` or `COPYDATA_AUTO_RESET`
/// (`COPYDATA_MANUAL_RESET` for NULL).
///
/// # Safety
///
/// `event` is NULL or a live event handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_kind(event: *const Event) -> u32 {
    // SAFETY: `event` is NULL or a live event handle (the contract).
    match unsafe { event.as_ref() }.map(|e| e.inner.kind()) {
        Some(EventKind::AutoReset) => COPYDATA_AUTO_RESET,
        _ => COPYDATA_MANUAL_RESET,
    }
}

/// Sets the event (`SetEvent`): wakes its waiters, in every process (one
/// waiter, for an auto-reset event).
///
/// # Safety
///
/// `event` is NULL or a live event handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_set(event: *const Event) -> Status {
    guard(|| {
        // SAFETY: `event` is NULL or a live event handle (the contract).
        let e = unsafe { handle(event, "event") }?;
        e.inner.set().map_err(|err| Error::new(Status::Io, format!("setting event {:?}: {err}", e.inner.name())))
    })
}

/// Resets the event to unset (`ResetEvent`).
///
/// # Safety
///
/// `event` is NULL or a live event handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_reset(event: *const Event) -> Status {
    guard(|| {
        // SAFETY: `event` is NULL or a live event handle (the contract).
        let e = unsafe { handle(event, "event") }?;
        e.inner.reset().map_err(|err| Error::new(Status::Io, format!("resetting event {:?}: {err}", e.inner.name())))
    })
}

/// Waits until the event is set, at most `timeout_ms` (`COPYDATA_INFINITE`:
/// as long as it takes; 0: only looks): `WaitForSingleObject`. Fails with
/// `COPYDATA_STATUS_TIMED_OUT`. Several threads may wait on one handle.
///
/// # Safety
///
/// `event` is NULL or a live event handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_wait(event: *const Event, timeout_ms: u32) -> Status {
    guard(|| {
        // SAFETY: `event` is NULL or a live event handle (the contract).
        let e = unsafe { handle(event, "event") }?;
        match timeout_arg(timeout_ms) {
            None => e.inner.wait()?,
            Some(t) => e.inner.wait_timeout(t)?,
        }
        Ok(())
    })
}

/// Closes an event handle; the event is gone once no process holds it.
/// NULL does nothing.
///
/// # Safety
///
/// `event` is NULL or a live event handle, closed once, that no other
/// thread is using (nor waiting on).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_event_close(event: *mut Event) {
    // SAFETY: as this function's contract says.
    unsafe { give_back(event) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::COPYDATA_INFINITE;
    use crate::test_util::{last, unique};
    use std::ffi::c_int;
    use std::ptr::{null, null_mut};

    /// A mutex handle, made with `copydata_mutex_create`.
    fn mutex(name: &std::ffi::CStr) -> *mut Mutex {
        let mut m = null_mut();
        // SAFETY: a valid name and out storage.
        assert_eq!(unsafe { copydata_mutex_create(name.as_ptr(), &mut m) }, Status::Ok, "{}", last());
        m
    }

    /// The initialiser of the tests' shared values: writes the `u64` at
    /// `context` at the start, or fails if it is 0.
    unsafe extern "C" fn put_context(data: *mut c_void, size: usize, context: *mut c_void) -> c_int {
        // SAFETY: the tests pass a pointer to a `u64`.
        let v = unsafe { *context.cast::<u64>() };
        if v == 0 || size < 8 {
            return 5;
        }
        // SAFETY: `data` holds `size` >= 8 writable bytes, aligned to 8 (the
        // tests ask for that alignment).
        unsafe { data.cast::<u64>().write(v) };
        0
    }

    #[test]
    fn a_shared_value_is_initialised_once_and_locked_like_a_mutex() {
        let name = unique("shared");
        // SAFETY: valid names, tags, functions and outs; each handle is
        // used until it is closed, the second thread on its own handle.
        unsafe {
            let mut s = null_mut();
            let mut zero = 0u64;
            let ctx = (&raw mut zero).cast();
            let init = Some(put_context as unsafe extern "C" fn(*mut c_void, usize, *mut c_void) -> c_int);
            // A failing initialiser makes nothing.
            assert_eq!(
                copydata_shared_create(name.as_ptr(), 16, 8, c"pair".as_ptr(), init, ctx, &mut s),
                Status::Refused
            );
            assert!(s.is_null() && last().contains("returned 5"), "{}", last());
            assert_eq!(copydata_shared_open(name.as_ptr(), c"pair".as_ptr(), &mut s), Status::NotFound);
            let mut seven = 7u64;
            let ctx = (&raw mut seven).cast();
            assert_eq!(copydata_shared_create(name.as_ptr(), 16, 8, c"pair".as_ptr(), init, ctx, &mut s), Status::Ok);
            assert_eq!(copydata_shared_size(s), 16);
            // Opened again: no second initialisation.
            let mut again = null_mut();
            let mut eight = 8u64;
            let ctx8 = (&raw mut eight).cast();
            assert_eq!(
                copydata_shared_create(name.as_ptr(), 16, 8, c"pair".as_ptr(), init, ctx8, &mut again),
                Status::Ok
            );
            let mut died: c_int = 9;
            assert_eq!(copydata_shared_lock(again, COPYDATA_INFINITE, &mut died), Status::Ok);
            assert_eq!(died, 0);
            assert_eq!(copydata_shared_data(again).cast::<u64>().read(), 7);
            copydata_shared_data(again).cast::<u64>().add(1).write(42);
            assert_eq!(copydata_shared_lock(again, 0, null_mut()), Status::InvalidArgument, "not recursive");
            // Another thread waits on its own handle, then sees the write.
            let addr = s as usize;
            let other = std::thread::spawn(move || {
                let s = addr as *const Shared;
                let busy = copydata_shared_lock(s, 0, null_mut());
                let got = copydata_shared_lock(s, 10_000, null_mut());
                let seen = copydata_shared_data(s).cast::<u64>().add(1).read();
                let unlocked = copydata_shared_unlock(s);
                (busy, got, seen, unlocked)
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(copydata_shared_mark_consistent(again), Status::Ok);
            assert_eq!(copydata_shared_unlock(again), Status::Ok);
            assert_eq!(other.join().unwrap(), (Status::TimedOut, Status::Ok, 42, Status::Ok));
            assert_eq!(copydata_shared_unlock(again), Status::InvalidArgument);
            assert_eq!(copydata_shared_mark_consistent(again), Status::InvalidArgument);
            // Another layout or tag is refused; open takes the layout.
            let mut bad = null_mut();
            for (size, align, tag) in [(8, 8, c"pair"), (16, 4, c"pair"), (16, 8, c"other")] {
                let st = copydata_shared_create(name.as_ptr(), size, align, tag.as_ptr(), None, null_mut(), &mut bad);
                assert_eq!(st, Status::AlreadyExists, "{size} {align} {tag:?}");
                assert!(bad.is_null());
            }
            let mut opened = null_mut();
            assert_eq!(copydata_shared_open(name.as_ptr(), c"pair".as_ptr(), &mut opened), Status::Ok);
            assert_eq!(copydata_shared_size(opened), 16);
            copydata_shared_close(opened);
            // NULL tag: "bytes"; bad arguments.
            let plain = unique("shared-plain");
            let mut p = null_mut();
            assert_eq!(copydata_shared_create(plain.as_ptr(), 3, 1, null(), None, null_mut(), &mut p), Status::Ok);
            assert_eq!(copydata_shared_open(plain.as_ptr(), c"bytes".as_ptr(), &mut bad), Status::Ok);
            copydata_shared_close(bad);
            copydata_shared_close(p);
            assert_eq!(
                copydata_shared_create(c"bad/name".as_ptr(), 8, 8, null(), None, null_mut(), &mut bad),
                Status::InvalidArgument
            );
            for (size, align) in [(8, 3), (8, 0), (8, 8192), (usize::MAX, 8)] {
                let st = copydata_shared_create(plain.as_ptr(), size, align, null(), None, null_mut(), &mut bad);
                assert_eq!(st, Status::InvalidArgument, "{size} {align}: {}", last());
            }
            assert_eq!(copydata_shared_lock(null(), 0, null_mut()), Status::InvalidArgument);
            assert_eq!(copydata_shared_size(null()), 0);
            assert!(copydata_shared_data(null()).is_null());
            copydata_shared_close(null_mut());
            copydata_shared_close(again);
            copydata_shared_close(s);
        }
    }

    #[test]
    fn a_mutex_is_locked_and_unlocked_by_one_thread_and_reports_a_dead_owner() {
        let name = unique("mutex");
        let m = mutex(&name);
        let mut died: c_int = 7;
        // SAFETY: `m` is live until closed at the end; the other threads
        // use their own handles (or this one, shared, as allowed); the
        // names and outs are valid.
        unsafe {
            let mut missing = null_mut();
            let absent = unique("absent");
            assert_eq!(copydata_mutex_open(absent.as_ptr(), &mut missing), Status::NotFound);
            assert!(missing.is_null());
            assert_eq!(copydata_mutex_create(c"bad/name".as_ptr(), &mut missing), Status::InvalidArgument);
            assert_eq!(copydata_mutex_lock(null(), 0, null_mut()), Status::InvalidArgument);

            assert_eq!(copydata_mutex_lock(m, COPYDATA_INFINITE, &mut died), Status::Ok, "{}", last());
            assert_eq!(died, 0);
            assert_eq!(copydata_mutex_lock(m, 0, null_mut()), Status::InvalidArgument, "not recursive");
            assert!(last().contains("already holds"), "{}", last());
            // Another thread, through the same handle and through one of its
            // own: not free, and not its to unlock.
            let shared = m as usize;
            let name2 = name.clone();
            let other = std::thread::spawn(move || {
                let m = shared as *const Mutex;
                let own = mutex(&name2);
                let r = (
                    copydata_mutex_lock(m, 0, null_mut()),
                    copydata_mutex_lock(own, 50, null_mut()),
                    copydata_mutex_unlock(m),
                    copydata_mutex_mark_consistent(m),
                );
                copydata_mutex_close(own);
                r
            });
            let r = other.join().unwrap();
            assert_eq!(r, (Status::TimedOut, Status::TimedOut, Status::InvalidArgument, Status::InvalidArgument));
            assert_eq!(copydata_mutex_unlock(m), Status::Ok, "{}", last());
            assert_eq!(copydata_mutex_unlock(m), Status::InvalidArgument, "unlocked already");

            // A thread that ends holding it: the next locker is told.
            let name3 = name.clone();
            let left = std::thread::spawn(move || {
                let own = mutex(&name3);
                assert_eq!(copydata_mutex_lock(own, COPYDATA_INFINITE, null_mut()), Status::Ok);
                // Closed while held by this thread: that unlocks cleanly.
                copydata_mutex_close(own);
                let again = mutex(&name3);
                assert_eq!(copydata_mutex_lock(again, COPYDATA_INFINITE, null_mut()), Status::Ok);
                // Still locked as the thread ends.
                again as usize
            })
            .join()
            .unwrap();
            assert_eq!(copydata_mutex_lock(m, 30_000, &mut died), Status::Ok, "{}", last());
            assert_eq!(died, 1);
            // Closed on another thread than its locker's: no unlock there.
            copydata_mutex_close(left as *mut Mutex);
            assert_eq!(copydata_mutex_unlock(m), Status::Ok);
            assert_eq!(copydata_mutex_lock(m, 0, &mut died), Status::Ok);
            assert_eq!(died, 1, "still, until marked");
            assert_eq!(copydata_mutex_mark_consistent(m), Status::Ok);
            assert_eq!(copydata_mutex_unlock(m), Status::Ok);
            assert_eq!(copydata_mutex_lock(m, 0, &mut died), Status::Ok);
            assert_eq!(died, 0);
            // Closing while holding it unlocks.
            copydata_mutex_close(m);
            let m = mutex(&name);
            assert_eq!(copydata_mutex_lock(m, 0, null_mut()), Status::Ok, "{}", last());
            copydata_mutex_close(m);
            copydata_mutex_close(null_mut());
        }
    }

    #[test]
    fn events_wake_waiters_manual_and_auto() {
        let (manual, auto) = (unique("manual"), unique("auto"));
        let (mut e, mut a, mut other) = (null_mut(), null_mut(), null_mut());
        // SAFETY: valid names and out storage; the handles are live until
        // closed at the end; the waiting thread uses its own handle.
        unsafe {
            assert_eq!(copydata_event_open(manual.as_ptr(), &mut e), Status::NotFound);
            assert_eq!(copydata_event_create(manual.as_ptr(), 2, &mut e), Status::InvalidArgument);
            assert!(last().contains("event kind 2"), "{}", last());
            assert_eq!(copydata_event_create(manual.as_ptr(), COPYDATA_MANUAL_RESET, &mut e), Status::Ok);
            assert_eq!(copydata_event_kind(e), COPYDATA_MANUAL_RESET);
            assert_eq!(copydata_event_wait(e, 0), Status::TimedOut);
            assert_eq!(copydata_event_wait(e, 50), Status::TimedOut);
            let name = manual.clone();
            let waiter = std::thread::spawn(move || {
                let mut mine = null_mut();
                assert_eq!(copydata_event_open(name.as_ptr(), &mut mine), Status::Ok);
                let r = copydata_event_wait(mine, 30_000);
                copydata_event_close(mine);
                r
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(copydata_event_set(e), Status::Ok);
            assert_eq!(waiter.join().unwrap(), Status::Ok);
            assert_eq!(copydata_event_wait(e, 0), Status::Ok, "manual-reset: still set");
            assert_eq!(copydata_event_reset(e), Status::Ok);
            assert_eq!(copydata_event_wait(e, 0), Status::TimedOut);
            // The name is a manual-reset event's.
            assert_eq!(copydata_event_create(manual.as_ptr(), COPYDATA_AUTO_RESET, &mut other), Status::AlreadyExists);
            assert!(other.is_null());

            assert_eq!(copydata_event_create(auto.as_ptr(), COPYDATA_AUTO_RESET, &mut a), Status::Ok);
            assert_eq!(copydata_event_open(auto.as_ptr(), &mut other), Status::Ok);
            assert_eq!(copydata_event_kind(other), COPYDATA_AUTO_RESET);
            assert_eq!(copydata_event_set(a), Status::Ok);
            assert_eq!(copydata_event_wait(other, COPYDATA_INFINITE), Status::Ok);
            assert_eq!(copydata_event_wait(a, 0), Status::TimedOut, "auto-reset: reset by the wake");
            assert_eq!(copydata_event_set(null()), Status::InvalidArgument);
            assert_eq!(copydata_event_kind(null()), COPYDATA_MANUAL_RESET);
            copydata_event_close(other);
            copydata_event_close(a);
            copydata_event_close(e);
            copydata_event_close(null_mut());
        }
    }
}
