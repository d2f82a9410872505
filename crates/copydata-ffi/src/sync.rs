//! Named mutexes and events shared by processes (`copydata::sync`): the
//! objects `copydata lock` and `copydata event` and the Rust and Python
//! APIs reach by the same names.

use std::ffi::c_char;
use std::sync::Arc;

use copydata::sync::{ArcMutexGuard, EventKind, LockError, SyncOpenError, WaitError};

use crate::error::{Error, Status, give_back, guard, handle, out_arg, str_arg};
use crate::mailbox::timeout_arg;

/// Kind for `copydata_event_create`: stays set until
/// `copydata_event_reset`, waking every waiter.
pub const COPYDATA_MANUAL_RESET: u32 = 0;
/// Kind for `copydata_event_create`: wakes one waiter and resets itself.
pub const COPYDATA_AUTO_RESET: u32 = 1;

/// A named mutex shared by processes, that survives its owner's death.
/// Opaque; close it with `copydata_mutex_close`.
pub struct Mutex {
    inner: Arc<copydata::sync::Mutex>,
    /// The lock, while a thread holds it through this handle.
    held: std::sync::Mutex<Option<ArcMutexGuard>>,
}

/// A named event shared by processes. Opaque; close it with
/// `copydata_event_close`.
pub struct Event {
    inner: copydata::sync::Event,
}

impl From<SyncOpenError> for Error {
    fn from(e: SyncOpenError) -> Error {
        let status = match &e {
            SyncOpenError::InvalidName { .. } => Status::InvalidArgument,
            SyncOpenError::NotFound { .. } => Status::NotFound,
            // Another kind of object, or another kind of event, has the name.
            SyncOpenError::WrongKind { .. } | SyncOpenError::LayoutMismatch { .. } => Status::AlreadyExists,
            SyncOpenError::PermissionDenied { .. } | SyncOpenError::OtherOwner { .. } => Status::PermissionDenied,
            SyncOpenError::Unsupported => Status::Unsupported,
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

impl Mutex {
    fn held(&self) -> std::sync::MutexGuard<'_, Option<ArcMutexGuard>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the lock the calling thread holds.
    fn with_mine(&self, f: impl FnOnce(&mut ArcMutexGuard)) -> Result<(), Error> {
        match self.held().as_mut() {
            Some(g) if g.is_mine() => {
                f(g);
                Ok(())
            }
            _ => Err(Error::invalid(format!("this thread does not hold mutex {:?}", self.inner.name()))),
        }
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
        Mutex { inner: Arc::new(inner), held: std::sync::Mutex::new(None) }
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
        if m.held().as_ref().is_some_and(ArcMutexGuard::is_mine) {
            return Err(LockError::WouldDeadlock.into());
        }
        let guard = match timeout_arg(timeout_ms) {
            None => m.inner.lock_arc()?,
            Some(t) if t.is_zero() => m.inner.try_lock_arc()?,
            Some(t) => m.inner.lock_arc_timeout(t)?,
        };
        let died = guard.owner_died();
        *m.held() = Some(guard);
        // SAFETY:
        // - `owner_died` is NULL or points to a writable `int` (the
        //   contract).
        if let Some(out) = unsafe { owner_died.as_mut() } {
            *out = died.into();
        }
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
        let m = unsafe { handle(mutex, "mutex") }?;
        let mut held = m.held();
        match held.as_ref() {
            Some(g) if g.is_mine() => {
                drop(held.take());
                Ok(())
            }
            _ => Err(Error::invalid(format!("this thread does not hold mutex {:?}", m.inner.name()))),
        }
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
        let m = unsafe { handle(mutex, "mutex") }?;
        m.with_mine(ArcMutexGuard::mark_consistent)
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
            return guard(|| {
                // SAFETY: `out` is NULL or valid storage (the contract).
                unsafe { out_arg(out) }?;
                Err(Error::invalid(bad))
            });
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
