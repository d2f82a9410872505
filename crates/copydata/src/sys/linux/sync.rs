//! Linux synchronisation objects ([`crate::sync`]): each named object is a
//! copydata object in `/dev/shm` (`copydata.mutex.NAME` and so on, marked
//! with its kind), holding the portable header and, for mutexes, a glibc
//! mutex.
//!
//! **Why glibc's robust mutex.** Noticing that a lock's owner died needs the
//! kernel's help: at a thread's death the kernel walks the thread's
//! *robust list* and marks every futex on it "owner died". Each thread has
//! exactly one such list, and glibc owns it (it registers it at thread
//! start with `set_robust_list` and keeps its own mutexes on it). A
//! hand-made futex mutex could not join that list, and recording the owner's
//! pid to probe later is unreliable (pids are reused). So mutexes here are
//! process-shared, robust, error-checking `pthread_mutex_t`s: an
//! uncontended lock and unlock stay in user space, a contended one sleeps
//! on a futex, and a dead owner's lock is handed to the next locker with
//! `EOWNERDEAD`, which this module turns into "owner died" after making the
//! glibc mutex consistent again at once (the portable layer keeps the
//! "inconsistent" flag itself). The mutex is initialised in the object
//! before it is published under its name, so no process ever sees it
//! uninitialised.
//!
//! Events are a futex word in the header: no kernel call to set an event
//! nobody waits for, or to wait for one that is set.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};
use rustix::thread::futex;

use super::namespace;
use crate::error::{CreateError, ListError, Listing, LockError, OpenError, SyncOpenError, WaitError};
use crate::name::Name;
use crate::section::{Access, Section};
use crate::sync::header::{EVENT_STATE, EVENT_WAITERS, HEADER_LEN, MUTEX_AT, ObjectKind};
use crate::view::ViewMut;

// The glibc mutex fits its slot in the header on every target.
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= HEADER_LEN - MUTEX_AT);

unsafe extern "C" {
    // glibc 2.30 and later: a timed lock against CLOCK_MONOTONIC (the libc
    // crate does not declare it yet; `pthread_mutex_timedlock` would measure
    // the timeout on the wall clock, which may jump).
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// How many times a contended lock is tried before the caller sleeps: a
/// lock held for a short update is often free again within a microsecond.
const SPINS: u32 = 200;

fn sync_error(name: &str, e: CreateError) -> SyncOpenError {
    match e {
        CreateError::OtherOwner { reason, .. } => SyncOpenError::OtherOwner { name: name.into(), reason },
        CreateError::PermissionDenied { source, .. } => SyncOpenError::PermissionDenied { name: name.into(), source },
        CreateError::Unsupported => SyncOpenError::Unsupported,
        CreateError::NoSpace { size, available, .. } => SyncOpenError::NoSpace { name: name.into(), size, available },
        CreateError::InvalidSize { reason, .. } => {
            SyncOpenError::InvalidLayout { name: name.into(), reason: reason.into() }
        }
        CreateError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData => {
            SyncOpenError::WrongKind { name: name.into(), reason: source.to_string() }
        }
        CreateError::Io { source, .. } => SyncOpenError::Io { name: name.into(), source },
        other => SyncOpenError::Io { name: name.into(), source: io::Error::other(other) },
    }
}

fn open_error(name: &str, e: OpenError) -> SyncOpenError {
    match e {
        OpenError::OtherOwner { reason, .. } => SyncOpenError::OtherOwner { name: name.into(), reason },
        OpenError::NotFound { .. } => SyncOpenError::NotFound { name: name.into() },
        OpenError::PermissionDenied { source, .. } => SyncOpenError::PermissionDenied { name: name.into(), source },
        OpenError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData => {
            SyncOpenError::WrongKind { name: name.into(), reason: source.to_string() }
        }
        OpenError::Io { source, .. } => SyncOpenError::Io { name: name.into(), source },
        other => SyncOpenError::Io { name: name.into(), source: io::Error::other(other) },
    }
}

/// Initialises a process-shared, robust, error-checking mutex at `at` in
/// the object `fd` (not yet published).
fn init_mutex(fd: &OwnedFd, at: usize) -> io::Result<()> {
    // SAFETY: a fresh mapping of our own unpublished object, chosen by the
    // kernel (no existing memory is affected); unmapped below.
    let base = unsafe {
        mm::mmap(std::ptr::null_mut(), HEADER_LEN, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd.as_fd(), 0)
    }?;
    let mutex = base.cast::<u8>().wrapping_add(at).cast::<libc::pthread_mutex_t>();
    // SAFETY:
    // - `attr` is initialised by pthread_mutexattr_init before any other use
    //   and destroyed after;
    // - `mutex` points into the mapping, aligned (the slot is at a multiple
    //   of 64 in a page-aligned mapping) and large enough (checked above);
    //   nobody else can reach the object before it is published.
    let rc = unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        let mut rc = libc::pthread_mutexattr_init(attr.as_mut_ptr());
        if rc == 0 {
            rc = libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
            if rc == 0 {
                rc = libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST);
            }
            if rc == 0 {
                rc = libc::pthread_mutexattr_settype(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ERRORCHECK);
            }
            if rc == 0 {
                rc = libc::pthread_mutex_init(mutex, attr.as_ptr());
            }
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        }
        rc
    };
    // SAFETY: exactly the mapping made above, no longer used.
    let _ = unsafe { mm::munmap(base, HEADER_LEN) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Opens (or, with `create`, opens or creates) the object `name` of
/// `kind`, `size` bytes if created. `object` is the derived object name
/// (`copydata.KIND.NAME`); errors name the user's `name`.
pub(crate) fn open_object(
    object: &Name,
    name: &str,
    kind: ObjectKind,
    size: u64,
    create: bool,
) -> Result<(Section, bool), SyncOpenError> {
    let marker = kind.marker().as_bytes();
    let needs_mutex = kind.has_mutex();
    let prepare = |fd: &OwnedFd| if needs_mutex { init_mutex(fd, MUTEX_AT) } else { Ok(()) };
    let (inner, created) = if create {
        namespace::open_or_create_marked(object, size, marker, &crate::SectionOptions::new(), &prepare)
            .map_err(|e| sync_error(name, e))?
    } else {
        (namespace::open_marked(object, Access::ReadWrite, marker, false).map_err(|e| open_error(name, e))?, false)
    };
    Ok((Section::from_parts(inner, Some(object.clone())), created))
}

/// The live synchronisation objects: (kind, object name).
pub(crate) fn list() -> Result<Vec<(&'static str, String)>, ListError> {
    let all = namespace::list_all().map_err(|source| ListError::Io { what: Listing::Objects, source })?;
    Ok(all
        .into_iter()
        .filter_map(|(marker, info)| {
            let kind = ["mutex", "event", "shared"].into_iter().find(|k| k.as_bytes() == marker)?;
            Some((kind, info.name))
        })
        .collect())
}

/// This thread, as [`thread_may_point_into_lock`] needs it: its kernel
/// thread id.
pub(crate) fn lock_holder() -> u64 {
    rustix::thread::gettid().as_raw_nonzero().get() as u64
}

/// Whether the thread `holder` (of this process; from [`lock_holder`]) may
/// still have a lock it took on its robust list, a list glibc keeps in the
/// mutexes themselves: then the mapping of a mutex it holds must not go.
/// True while a thread with that id lives (one that reused the id after
/// it ended only makes this keep a mapping longer).
pub(crate) fn thread_may_point_into_lock(holder: u64) -> bool {
    let Ok(tid) = libc::pid_t::try_from(holder) else { return false };
    // SAFETY: `tgkill` with signal 0 sends nothing; it only checks that the
    // thread exists in this process.
    let alive = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) } == 0;
    alive || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A mutex in an object's header (every call gets the header's view, which
/// keeps the memory mapped).
#[derive(Debug)]
pub(crate) struct RawMutex;

impl RawMutex {
    /// The mutex of the object whose header `header` maps.
    pub(crate) fn attach(_header: &ViewMut, _object: &Name) -> io::Result<RawMutex> {
        Ok(RawMutex)
    }

    fn ptr(header: &ViewMut) -> *mut libc::pthread_mutex_t {
        header.as_mut_ptr().wrapping_add(MUTEX_AT).cast()
    }

    /// Takes the lock: `Ok(true)` if its previous owner died holding it.
    /// `deadline` `None` waits for ever; `try_only` does not wait at all.
    pub(crate) fn lock(&self, header: &ViewMut, deadline: Option<Instant>, try_only: bool) -> Result<bool, LockError> {
        let m = Self::ptr(header);
        let outcome = |rc: libc::c_int| -> Option<Result<bool, LockError>> {
            match rc {
                0 => Some(Ok(false)),
                libc::EOWNERDEAD => {
                    // SAFETY: this thread owns `m` now (EOWNERDEAD hands it
                    // over); marking the glibc mutex consistent keeps it
                    // usable, the portable layer keeps the flag.
                    unsafe { libc::pthread_mutex_consistent(m) };
                    Some(Ok(true))
                }
                libc::EBUSY => None,
                libc::EDEADLK => Some(Err(LockError::WouldDeadlock)),
                libc::ETIMEDOUT => Some(Err(LockError::TimedOut)),
                rc => Some(Err(LockError::Io(io::Error::from_raw_os_error(rc)))),
            }
        };
        for i in 0..SPINS {
            // SAFETY: `m` is an initialised process-shared mutex in a mapping
            // that `self` keeps alive.
            if let Some(r) = outcome(unsafe { libc::pthread_mutex_trylock(m) }) {
                return r;
            }
            if try_only {
                return Err(LockError::WouldBlock);
            }
            if i % 16 == 15 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        loop {
            let rc = match deadline {
                // SAFETY: as above.
                None => unsafe { libc::pthread_mutex_lock(m) },
                Some(d) => {
                    let abs = monotonic_deadline(d);
                    // SAFETY: as above; `abs` is a valid timespec.
                    unsafe { pthread_mutex_clocklock(m, libc::CLOCK_MONOTONIC, &abs) }
                }
            };
            match outcome(rc) {
                // Never report a timeout before it has passed.
                Some(Err(LockError::TimedOut)) if deadline.is_some_and(|d| Instant::now() < d) => continue,
                Some(r) => return r,
                // A waiting lock never says busy: the mutex's memory was
                // changed under it (say, by another process). Not retried,
                // which would spin past the deadline.
                None => return Err(LockError::Io(io::Error::from_raw_os_error(libc::EBUSY))),
            }
        }
    }

    pub(crate) fn unlock(&self, header: &ViewMut) {
        // SAFETY: called only by the guard of this thread's lock, while the
        // header stays mapped.
        unsafe { libc::pthread_mutex_unlock(Self::ptr(header)) };
    }
}

/// `deadline` on CLOCK_MONOTONIC (the clock `Instant` uses on Linux).
fn monotonic_deadline(deadline: Instant) -> libc::timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let left = deadline.saturating_duration_since(Instant::now());
    let mut sec = now.tv_sec.saturating_add(left.as_secs() as i64);
    let mut nsec = now.tv_nsec + i64::from(left.subsec_nanos());
    if nsec >= 1_000_000_000 {
        sec = sec.saturating_add(1);
        nsec -= 1_000_000_000;
    }
    libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ }
}

/// An event in an object's header: a futex word and a count of sleepers.
///
/// What the futex word holds depends on the kind:
/// - manual-reset: bit 0 set or not, and above it a count of `set` calls
///   (wrapping), so that a waiter a `set` woke is released even if a
///   `reset` followed before it ran (as `SetEvent` releases every thread
///   waiting at that moment);
/// - auto-reset: how many waits may still be granted. A `set` adds one
///   while that is not more than the sleepers, so each `set` releases one
///   sleeper, and with none asleep (or all of them granted) the event
///   stays set for the next wait, as `SetEvent` does. A sleeper killed
///   while it waits stays counted: later `set`s then grant a wait or two
///   more than Windows would, never fewer.
#[derive(Debug)]
pub(crate) struct RawEvent {
    auto: bool,
}

fn word(header: &ViewMut, at: usize) -> &AtomicU32 {
    header.atomic_u32(at).expect("the header holds the event's words")
}

/// Manual-reset: the `set` bit of the futex word.
const SET: u32 = 1;
/// Manual-reset: one `set` in the count above the bit.
const ONE_SET: u32 = 2;

impl RawEvent {
    pub(crate) fn attach(_header: &ViewMut, _object: &Name, auto: bool) -> io::Result<RawEvent> {
        Ok(RawEvent { auto })
    }

    pub(crate) fn set(&self, header: &ViewMut) -> io::Result<()> {
        let (state, waiters) = (word(header, EVENT_STATE), word(header, EVENT_WAITERS));
        if self.auto {
            let mut grants = state.load(Ordering::SeqCst);
            loop {
                let sleepers = waiters.load(Ordering::SeqCst);
                // Every sleeper granted and the event set for the next:
                // nothing to add.
                if grants > sleepers {
                    return Ok(());
                }
                // (Saturating: any process of the user can write the word.)
                match state.compare_exchange(grants, grants.saturating_add(1), Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => break,
                    Err(now) => grants = now,
                }
            }
            if waiters.load(Ordering::SeqCst) != 0 {
                futex::wake(state, futex::Flags::empty(), 1)?;
            }
        } else {
            let _ = state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| Some(s.wrapping_add(ONE_SET) | SET));
            if waiters.load(Ordering::SeqCst) != 0 {
                // FUTEX_WAKE takes a signed count: i32::MAX is "everyone".
                futex::wake(state, futex::Flags::empty(), i32::MAX as u32)?;
            }
        }
        Ok(())
    }

    pub(crate) fn reset(&self, header: &ViewMut) -> io::Result<()> {
        let state = word(header, EVENT_STATE);
        if self.auto {
            // Grants for sleepers a `set` already woke stay theirs (those
            // `set`s released them); only the event's own set state goes.
            let _ = state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |grants| {
                Some(grants.min(word(header, EVENT_WAITERS).load(Ordering::SeqCst)))
            });
        } else {
            state.fetch_and(!SET, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Takes the event if it is set (auto-reset: one grant), or, for a
    /// manual-reset event, if it was set since the wait began (`began`:
    /// the word then). `Err` holds the word to sleep on.
    fn take(&self, header: &ViewMut, began: u32) -> Result<(), u32> {
        let state = word(header, EVENT_STATE);
        let mut now = state.load(Ordering::SeqCst);
        if self.auto {
            while now != 0 {
                match state.compare_exchange(now, now - 1, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Ok(()),
                    Err(seen) => now = seen,
                }
            }
            Err(0)
        } else if now & SET != 0 || (now & !SET) != (began & !SET) {
            Ok(())
        } else {
            Err(now)
        }
    }

    /// Waits until the event is set or `deadline` passes. With `between`,
    /// it sleeps at most `slice` at a time and calls `check` between two
    /// sleeps (an error from it ends the wait). What the wait began with is
    /// kept across the sleeps, so a set that comes between two of them ends
    /// it as it would end one long wait (a manual-reset event set and reset
    /// at once included).
    pub(crate) fn wait(
        &self,
        header: &ViewMut,
        deadline: Option<Instant>,
        mut between: crate::sync::Between<'_>,
    ) -> Result<(), WaitError> {
        let began = word(header, EVENT_STATE).load(Ordering::SeqCst);
        let mut slept = false;
        loop {
            let expected = match self.take(header, began) {
                Ok(()) => return Ok(()),
                Err(expected) => expected,
            };
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
                    Some(l) => Some(l),
                    None => return Err(WaitError::TimedOut),
                },
                None => None,
            };
            match between.as_mut() {
                None => self.sleep(header, expected, left)?,
                // After a sleep, `check`, then look again (it may have
                // taken a while): the next sleep follows a look.
                Some((_, check)) if slept => {
                    check().map_err(WaitError::Io)?;
                    slept = false;
                }
                Some((slice, _)) => {
                    self.sleep(header, expected, Some(left.map_or(*slice, |l| l.min(*slice))))?;
                    slept = true;
                }
            }
        }
    }

    /// Sleeps while the futex word is `expected`, at most `left`.
    fn sleep(&self, header: &ViewMut, expected: u32, left: Option<Duration>) -> Result<(), WaitError> {
        let ts = left.map(super::timespec);
        let waiters = word(header, EVENT_WAITERS);
        waiters.fetch_add(1, Ordering::SeqCst);
        // Sleeps only while the word is still what `take` saw: a `set`
        // in between makes the call return at once.
        let r = futex::wait(word(header, EVENT_STATE), futex::Flags::empty(), expected, ts.as_ref());
        waiters.fetch_sub(1, Ordering::SeqCst);
        match r {
            Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => Ok(()),
            Err(e) => Err(WaitError::Io(e.into())),
        }
    }
}
