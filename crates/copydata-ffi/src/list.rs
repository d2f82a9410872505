//! What is live: lists of this user's named sections, mailboxes and
//! synchronisation objects (what `copydata ls` shows), and removing a
//! section's name.

use std::ffi::{CString, c_char};

use crate::error::{Error, Status, give_back, guard, guard_value, handle, out_arg, str_arg};

/// `copydata_list_value` of a mutex in `copydata_list_objects`.
pub const COPYDATA_KIND_MUTEX: u64 = 0;
/// `copydata_list_value` of an event in `copydata_list_objects`.
pub const COPYDATA_KIND_EVENT: u64 = 1;
/// `copydata_list_value` of a shared value in `copydata_list_objects`.
pub const COPYDATA_KIND_SHARED: u64 = 2;

/// A list of live objects, each a name and a number (see the function that
/// made it). Opaque; close it with `copydata_list_close`.
pub struct List {
    entries: Vec<(CString, u64)>,
}

impl From<copydata::ListError> for Error {
    fn from(e: copydata::ListError) -> Error {
        let status = match &e {
            copydata::ListError::Unsupported { .. } => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<copydata::RemoveError> for Error {
    fn from(e: copydata::RemoveError) -> Error {
        let status = match &e {
            copydata::RemoveError::InvalidName { .. } => Status::InvalidArgument,
            copydata::RemoveError::NotFound { .. } => Status::NotFound,
            copydata::RemoveError::PermissionDenied { .. } => Status::PermissionDenied,
            copydata::RemoveError::Unsupported => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

/// Stores a list of `entries` in `*out`.
///
/// # Safety
///
/// `out` is NULL or points to storage for a pointer.
unsafe fn list_into(out: *mut *mut List, entries: impl FnOnce() -> Result<Vec<(String, u64)>, Error>) -> Status {
    guard(|| {
        // SAFETY: `out` is NULL or valid storage (the caller's contract).
        let out = unsafe { out_arg(out) }?;
        let entries = entries()?
            .into_iter()
            // Valid names hold no NUL byte (the library checks them).
            .map(|(name, n)| CString::new(name).map(|c| (c, n)).map_err(|_| Error::invalid("a name holds a NUL byte")))
            .collect::<Result<Vec<_>, Error>>()?;
        *out = Box::into_raw(Box::new(List { entries }));
        Ok(())
    })
}

/// Lists this user's live named sections, sorted by name; each entry's
/// value is the section's size in bytes. On Linux, listing also removes
/// what crashed last holders left in `/dev/shm`.
///
/// # Safety
///
/// `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_sections(out: *mut *mut List) -> Status {
    // SAFETY: as this function's contract says.
    unsafe { list_into(out, || Ok(copydata::list()?.into_iter().map(|s| (s.name, s.size)).collect())) }
}

/// Lists this user's live mailboxes, sorted by name; each entry's value is
/// the process id of the process that bound it.
///
/// # Safety
///
/// `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_mailboxes(out: *mut *mut List) -> Status {
    // SAFETY: as this function's contract says.
    unsafe { list_into(out, || Ok(copydata::mailboxes()?.into_iter().map(|m| (m.name, u64::from(m.pid))).collect())) }
}

/// Lists this user's live mutexes, events and shared values; each entry's
/// value is its kind: `COPYDATA_KIND_MUTEX`, `COPYDATA_KIND_EVENT` or
/// `COPYDATA_KIND_SHARED`. A mutex, an event and a shared value may have
/// the same name.
///
/// # Safety
///
/// `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_objects(out: *mut *mut List) -> Status {
    use copydata::sync::ObjectType;
    let kind = |k: ObjectType| match k {
        ObjectType::Mutex => COPYDATA_KIND_MUTEX,
        ObjectType::Event => COPYDATA_KIND_EVENT,
        ObjectType::Shared => COPYDATA_KIND_SHARED,
    };
    // SAFETY: as this function's contract says.
    unsafe { list_into(out, || Ok(copydata::sync::objects()?.into_iter().map(|o| (o.name, kind(o.kind))).collect())) }
}

/// How many entries the list has (0 for NULL).
///
/// # Safety
///
/// `list` is NULL or a live list.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_count(list: *const List) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or a live list (the contract).
        unsafe { handle(list, "list") }.map_or(0, |l| l.entries.len())
    })
}

/// The name of entry `index`, NUL-terminated, valid until the list is
/// closed; NULL for NULL or an index out of range.
///
/// # Safety
///
/// `list` is NULL or a live list.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_name(list: *const List, index: usize) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or a live list (the contract).
        let entry = unsafe { handle(list, "list") }.ok().and_then(|l| l.entries.get(index));
        entry.map_or(std::ptr::null(), |(name, _)| name.as_ptr())
    })
}

/// The value of entry `index` (what it is depends on the function that
/// made the list); 0 for NULL or an index out of range.
///
/// # Safety
///
/// `list` is NULL or a live list.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_value(list: *const List, index: usize) -> u64 {
    guard_value(0, || {
        // SAFETY: NULL or a live list (the contract).
        let entry = unsafe { handle(list, "list") }.ok().and_then(|l| l.entries.get(index));
        entry.map_or(0, |&(_, value)| value)
    })
}

/// Frees a list. NULL does nothing.
///
/// # Safety
///
/// `list` is NULL or a live list, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_list_close(list: *mut List) {
    // SAFETY: NULL or from `Box::into_raw` in `list_into`, given back once
    // (the contract).
    unsafe { give_back(list) }
}

/// Removes the name of the named section `name`, like `shm_unlink`:
/// processes that hold it keep their memory, and the name is free for a
/// new section at once. Fails with `COPYDATA_STATUS_NOT_FOUND` if no
/// section has the name, `COPYDATA_STATUS_UNSUPPORTED` on Windows (a named
/// mapping lives exactly as long as its handles).
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_remove(name: *const c_char) -> Status {
    guard(|| {
        // SAFETY: NULL or a NUL-terminated string (the contract), read only
        // during this call.
        let name = unsafe { str_arg(name, "name") }?;
        Ok(copydata::remove(name)?)
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::ptr::{null, null_mut};

    use super::*;
    use crate::section::{copydata_section_close, copydata_section_create};
    use crate::sync::{copydata_mutex_close, copydata_mutex_create};
    use crate::test_util::{last, unique};

    /// The entries of a list made by `make`, as (name, value), then closed.
    fn entries(make: unsafe extern "C" fn(*mut *mut List) -> Status) -> Vec<(String, u64)> {
        let mut list = null_mut();
        // SAFETY: valid out storage; the list is read, then closed once.
        unsafe {
            assert_eq!(make(&mut list), Status::Ok, "{}", last());
            let out = (0..copydata_list_count(list))
                .map(|i| {
                    let name = CStr::from_ptr(copydata_list_name(list, i)).to_str().unwrap().to_owned();
                    (name, copydata_list_value(list, i))
                })
                .collect();
            assert!(copydata_list_name(list, copydata_list_count(list)).is_null());
            assert_eq!(copydata_list_value(list, usize::MAX), 0);
            copydata_list_close(list);
            out
        }
    }

    #[test]
    fn live_objects_are_listed_and_a_name_removed() {
        let name = unique("list");
        let text = name.to_str().unwrap().to_owned();
        // SAFETY: valid names and outs; each handle is closed once.
        unsafe {
            let mut s = null_mut();
            assert_eq!(copydata_section_create(name.as_ptr(), 1234, &mut s), Status::Ok, "{}", last());
            let mut m = null_mut();
            assert_eq!(copydata_mutex_create(name.as_ptr(), &mut m), Status::Ok, "{}", last());
            // (Windows keeps a section's size rounded up to a page.)
            let size = if cfg!(windows) { 4096 } else { 1234 };
            assert!(entries(copydata_list_sections).contains(&(text.clone(), size)));
            assert!(entries(copydata_list_objects).contains(&(text.clone(), COPYDATA_KIND_MUTEX)));
            assert!(entries(copydata_list_mailboxes).iter().all(|(n, _)| *n != text));
            if cfg!(windows) {
                assert_eq!(copydata_section_remove(name.as_ptr()), Status::Unsupported);
            } else {
                assert_eq!(copydata_section_remove(name.as_ptr()), Status::Ok, "{}", last());
                assert!(entries(copydata_list_sections).iter().all(|(n, _)| *n != text));
                assert_eq!(copydata_section_remove(name.as_ptr()), Status::NotFound);
            }
            assert_eq!(copydata_section_remove(c"bad/name".as_ptr()), Status::InvalidArgument);
            assert_eq!(copydata_section_remove(null()), Status::InvalidArgument);
            assert_eq!(copydata_list_sections(null_mut()), Status::InvalidArgument);
            assert_eq!(copydata_list_count(null()), 0);
            assert!(copydata_list_name(null(), 0).is_null());
            copydata_list_close(null_mut());
            copydata_mutex_close(m);
            copydata_section_close(s);
        }
        assert!(entries(copydata_list_objects).iter().all(|(n, _)| *n != text));
    }
}
