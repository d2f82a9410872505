//! Windows synchronisation objects ([`crate::sync`]): each named object is
//! a file mapping `Local\copydata.KIND.NAME` holding the portable header,
//! beside the kernel object that does the work: the mutex
//! `Local\copydata.KIND.NAME.lock` (its `WAIT_ABANDONED` is "owner died")
//! or the event `Local\copydata.event.NAME.event`. Both live while a
//! process holds a handle, like the mapping.
//!
//! A kernel mutex is recursive; a copydata mutex is not (a second guard on
//! the same thread would alias the protected value). The kernel counts a
//! holder's acquisitions (`NtQueryMutant`'s `CurrentCount`: 0 held once,
//! below 0 held again by its holder), so a second lock by the same thread
//! is recognised, undone and refused. That count is the kernel's, of this
//! very mutex: no other process can forge it (ids in the object's memory
//! could be), and it goes with the mutex (a record kept by the thread
//! would outlive a mutex that went with its last handle while held, and
//! refuse the next mutex of that name).

use std::ffi::c_void;
use std::io;
use std::os::windows::io::OwnedHandle;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use windows_sys::Win32::Foundation::{WAIT_ABANDONED, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::Threading::{
    CreateEventW, CreateMutexW, INFINITE, ReleaseMutex, ResetEvent, SetEvent, WaitForSingleObject,
};

use super::{Section as SysSection, owned, raw, wide};
use crate::error::{CreateError, ListError, Listing, LockError, OpenError, SyncOpenError, WaitError};
use crate::name::Name;
use crate::section::Section;
use crate::sync::header::ObjectKind;
use crate::view::ViewMut;

/// This thread, as [`thread_may_point_into_lock`] needs it (nothing).
pub(crate) fn lock_holder() -> u64 {
    0
}

/// Never: a Windows mutex is a kernel object of its own, which no thread
/// reaches through the object's mapping.
pub(crate) fn thread_may_point_into_lock(_holder: u64) -> bool {
    false
}

pub(crate) fn open_object(
    object: &Name,
    name: &str,
    _kind: ObjectKind,
    size: u64,
    create: bool,
) -> Result<(Section, bool), SyncOpenError> {
    let (inner, created) = if create {
        SysSection::open_or_create(object, size, &crate::SectionOptions::new()).map_err(|e| match e {
            CreateError::PermissionDenied { source, .. } => {
                SyncOpenError::PermissionDenied { name: name.into(), source }
            }
            CreateError::Unsupported => SyncOpenError::Unsupported,
            CreateError::NoSpace { size, available, .. } => {
                SyncOpenError::NoSpace { name: name.into(), size, available }
            }
            CreateError::InvalidSize { reason, .. } => {
                SyncOpenError::InvalidLayout { name: name.into(), reason: reason.into() }
            }
            CreateError::Io { source, .. } => SyncOpenError::Io { name: name.into(), source },
            other => SyncOpenError::Io { name: name.into(), source: io::Error::other(other) },
        })?
    } else {
        let s = SysSection::open(object, &crate::SectionOptions::new()).map_err(|e| match e {
            OpenError::NotFound { .. } => SyncOpenError::NotFound { name: name.into() },
            OpenError::PermissionDenied { source, .. } => SyncOpenError::PermissionDenied { name: name.into(), source },
            OpenError::Io { source, .. } => SyncOpenError::Io { name: name.into(), source },
            other => SyncOpenError::Io { name: name.into(), source: io::Error::other(other) },
        })?;
        (s, false)
    };
    Ok((Section::from_parts(inner, Some(object.clone())), created))
}

/// The live synchronisation objects: (kind, object name).
pub(crate) fn list() -> Result<Vec<(&'static str, String)>, ListError> {
    let all = super::namespace::list_all().map_err(|source| ListError::Io { what: Listing::Objects, source })?;
    Ok(all
        .into_iter()
        .filter_map(|info| {
            let kind = ["mutex", "event", "shared"]
                .into_iter()
                .find(|k| info.name.strip_prefix("copydata.").is_some_and(|r| r.starts_with(&format!("{k}."))))?;
            Some((kind, info.name))
        })
        .collect())
}

/// Waits for `h` until `deadline` (`None`: for ever), never returning
/// `WAIT_TIMEOUT` before the deadline (Windows' timers may fire a little
/// early).
fn wait_until(h: &OwnedHandle, deadline: Option<Instant>) -> u32 {
    loop {
        let ms = match deadline {
            None => INFINITE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up: a wait of 0 ms for 0.3 ms left would spin.
                u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(INFINITE - 1).min(INFINITE - 1)
            }
        };
        // SAFETY: waits on a handle this process owns.
        let got = unsafe { WaitForSingleObject(raw(h), ms) };
        if got == WAIT_TIMEOUT && deadline.is_some_and(|d| Instant::now() < d) {
            continue;
        }
        return got;
    }
}

mod ntdll {
    use std::ffi::c_void;
    windows_link::link!("ntdll.dll" "system" fn NtQueryMutant(
        mutant_handle: windows_sys::Win32::Foundation::HANDLE,
        information_class: i32,
        information: *mut c_void,
        length: u32,
        return_length: *mut u32
    ) -> i32);

    /// `MUTANT_BASIC_INFORMATION`.
    #[repr(C)]
    pub struct MutantBasicInformation {
        /// 1 free, 0 held once, below 0 held again by its holder.
        pub current_count: i32,
        pub owned_by_caller: u8,
        pub abandoned_state: u8,
    }
}

/// The kernel mutex's count (`NtQueryMutant`): 1 free, 0 held once, below
/// 0 held again by its holder.
fn mutant_count(h: &OwnedHandle) -> io::Result<i32> {
    let mut info = ntdll::MutantBasicInformation { current_count: 1, owned_by_caller: 0, abandoned_state: 0 };
    // SAFETY:
    // - `info` is a writable `MUTANT_BASIC_INFORMATION` of the given size;
    // - class 0 (`MutantBasicInformation`) writes only that structure;
    // - the handle is our own mutex's, opened with every access.
    let status = unsafe {
        ntdll::NtQueryMutant(
            raw(h),
            0,
            (&raw mut info).cast::<c_void>(),
            size_of::<ntdll::MutantBasicInformation>() as u32,
            std::ptr::null_mut(),
        )
    };
    if status < 0 {
        return Err(io::Error::other(format!("querying the mutex failed (NTSTATUS {status:#x})")));
    }
    Ok(info.current_count)
}

/// The kernel mutex of an object.
#[derive(Debug)]
pub(crate) struct RawMutex {
    handle: OwnedHandle,
}

impl RawMutex {
    pub(crate) fn attach(_header: &ViewMut, object: &Name) -> io::Result<RawMutex> {
        let n = wide(&format!("Local\\{object}.lock"));
        // SAFETY: default security, not inheritable, not initially owned;
        // the name outlives the call.
        let handle = owned(unsafe { CreateMutexW(std::ptr::null(), 0, n.as_ptr()) })?;
        Ok(RawMutex { handle })
    }

    pub(crate) fn lock(&self, _header: &ViewMut, deadline: Option<Instant>, try_only: bool) -> Result<bool, LockError> {
        let got = if try_only {
            // SAFETY: waits on our own handle without blocking.
            unsafe { WaitForSingleObject(raw(&self.handle), 0) }
        } else {
            wait_until(&self.handle, deadline)
        };
        let died = match got {
            WAIT_OBJECT_0 => false,
            WAIT_ABANDONED => true,
            WAIT_TIMEOUT if try_only => return Err(LockError::WouldBlock),
            WAIT_TIMEOUT => return Err(LockError::TimedOut),
            _ => return Err(LockError::Io(io::Error::last_os_error())),
        };
        // A recursive acquisition: this thread held it already. (Never
        // after an owner died: the mutex was that other thread's.)
        let recursive = if died { Ok(false) } else { mutant_count(&self.handle).map(|count| count < 0) };
        if !matches!(recursive, Ok(false)) {
            // SAFETY: undoes the acquisition this thread just made.
            unsafe { ReleaseMutex(raw(&self.handle)) };
            return Err(match recursive {
                Err(e) => LockError::Io(e),
                _ => LockError::WouldDeadlock,
            });
        }
        Ok(died)
    }

    pub(crate) fn unlock(&self, _header: &ViewMut) {
        // SAFETY: called only by the guard of this thread's lock.
        unsafe { ReleaseMutex(raw(&self.handle)) };
    }
}

/// The kernel event of an event object. A manual-reset event also counts
/// its sets in the header's state word (unused otherwise on Windows), so
/// that a wait in slices ([`RawEvent::wait`]) sees a set that came
/// between two of them, even one reset at once.
#[derive(Debug)]
pub(crate) struct RawEvent {
    handle: OwnedHandle,
    auto: bool,
}

impl RawEvent {
    pub(crate) fn attach(_header: &ViewMut, object: &Name, auto: bool) -> io::Result<RawEvent> {
        let n = wide(&format!("Local\\{object}.event"));
        // SAFETY: default security, not inheritable, initially unset; the
        // name outlives the call. Every opener asks for the kind recorded in
        // the header, so the kernel object always has it.
        let handle = owned(unsafe { CreateEventW(std::ptr::null(), i32::from(!auto), 0, n.as_ptr()) })?;
        Ok(RawEvent { handle, auto })
    }

    /// The count of a manual-reset event's sets.
    fn sets(header: &ViewMut) -> &AtomicU32 {
        crate::sync::header::u32_at(header, crate::sync::header::EVENT_STATE)
    }

    pub(crate) fn set(&self, header: &ViewMut) -> io::Result<()> {
        if !self.auto {
            Self::sets(header).fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: our own event handle.
        if unsafe { SetEvent(raw(&self.handle)) } == 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    pub(crate) fn reset(&self, _header: &ViewMut) -> io::Result<()> {
        // SAFETY: our own event handle.
        if unsafe { ResetEvent(raw(&self.handle)) } == 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits until the event is set or `deadline` passes. With `between`,
    /// it waits at most `slice` at a time and calls `check` between two
    /// waits (an error from it ends the wait). A set of a manual-reset event
    /// by copydata between two waits ends it, as it would end one long
    /// wait, even if a reset followed at once (an auto-reset event stays
    /// set for the next wait anyway).
    pub(crate) fn wait(
        &self,
        header: &ViewMut,
        deadline: Option<Instant>,
        mut between: crate::sync::Between<'_>,
    ) -> Result<(), WaitError> {
        let began = Self::sets(header).load(Ordering::SeqCst);
        loop {
            let until = match &between {
                None => deadline,
                Some((slice, _)) => {
                    let end = Instant::now().checked_add(*slice);
                    match (deadline, end) {
                        (Some(d), Some(e)) => Some(d.min(e)),
                        (d, e) => d.or(e),
                    }
                }
            };
            match wait_until(&self.handle, until) {
                WAIT_OBJECT_0 => return Ok(()),
                WAIT_TIMEOUT => {}
                _ => return Err(WaitError::Io(io::Error::last_os_error())),
            }
            if !self.auto && Self::sets(header).load(Ordering::SeqCst) != began {
                return Ok(());
            }
            // (`wait_until` returns a timeout only once its time is up.)
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(WaitError::TimedOut);
            }
            if let Some((_, check)) = between.as_mut() {
                check().map_err(WaitError::Io)?;
            }
        }
    }
}
