//! Handing sections to a child process: the parent's
//! `copydata_inheritance_*` and the child's `copydata_inherited_sections`.

use std::ffi::{CString, c_char};

use crate::buffer::to_c_from;
use crate::error::{Error, Status, give_back, guard, guard_value, handle, out_arg};
use crate::section::{Section, give, sections_arg};

/// Sections made ready for a child process that the caller starts itself.
/// Opaque; close it with `copydata_inheritance_close` once the child is
/// started.
pub struct Inheritance {
    inner: copydata::Inheritance,
    /// The token as C reads it.
    token: CString,
}

impl From<copydata::InheritError> for Error {
    fn from(e: copydata::InheritError) -> Error {
        let status = match &e {
            copydata::InheritError::Malformed { .. } => Status::Incompatible,
            copydata::InheritError::Stale { .. } => Status::NotFound,
            copydata::InheritError::AlreadyTaken => Status::Closed,
            copydata::InheritError::Unsupported => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

/// Makes `count` sections ready for a child process (`sections` may be
/// NULL when `count` is 0): duplicates of their handles, read-write or
/// read-only as each section is (`copydata_section_read_only` makes a
/// read-only hand-out), and the token that names them. To pass them:
///
/// 1. set the child's environment variable `COPYDATA_INHERIT_VAR` to
///    `copydata_inheritance_token`;
/// 2. let the child inherit the `copydata_inheritance_handle`s, and
///    nothing else of this process's. Linux: they are descriptors with
///    `FD_CLOEXEC` set; clear it in the child between `fork` and `exec`
///    (`fcntl(fd, F_SETFD, 0)`). Windows: they are inheritable handles
///    while the inheritance lives; call `CreateProcessW` with
///    `bInheritHandles` TRUE, ideally naming exactly these handles in a
///    `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`;
/// 3. close the inheritance once the child is started (on Windows at
///    once: a process another thread creates meanwhile with
///    `bInheritHandles` would inherit the handles too).
///
/// The child takes the sections with `copydata_inherited_sections`.
///
/// # Safety
///
/// `sections` is NULL or points to `count` pointers, each NULL or a live
/// section; `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_inheritance_new(
    sections: *const *const Section,
    count: usize,
    out: *mut *mut Inheritance,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `sections` is NULL or points to `count` pointers, each NULL or
        //   a live section, read only during this call (the contract).
        let refs = unsafe { sections_arg(sections, count) }?;
        let inner = copydata::Inheritance::new(&refs).map_err(|e| {
            let status = if e.kind() == std::io::ErrorKind::Unsupported { Status::Unsupported } else { Status::Io };
            Error::new(status, e)
        })?;
        // A token is digits, letters and punctuation: no NUL.
        let token = CString::new(inner.token()).map_err(|_| Error::new(Status::Io, "the token holds a NUL byte"))?;
        *out = Box::into_raw(Box::new(Inheritance { inner, token }));
        Ok(())
    })
}

/// The value for the child's environment variable `COPYDATA_INHERIT_VAR`:
/// a NUL-terminated string valid until the inheritance is closed; NULL for
/// NULL.
///
/// # Safety
///
/// `inheritance` is NULL or a live inheritance.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_inheritance_token(inheritance: *const Inheritance) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or a live inheritance (this function's contract).
        unsafe { handle(inheritance, "inheritance") }.map_or(std::ptr::null(), |i| i.token.as_ptr())
    })
}

/// How many handles the child must inherit (one per section); 0 for NULL.
///
/// # Safety
///
/// `inheritance` is NULL or a live inheritance.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_inheritance_count(inheritance: *const Inheritance) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or a live inheritance (this function's contract).
        unsafe { handle(inheritance, "inheritance") }.map_or(0, |i| i.inner.len())
    })
}

/// The `index`th handle the child must inherit, in the order of the
/// sections: a descriptor number on Linux, a `HANDLE` value on Windows
/// (cast it with `(HANDLE)`); -1 for NULL or an index out of range. Owned
/// by the inheritance: do not close it.
///
/// # Safety
///
/// `inheritance` is NULL or a live inheritance.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_inheritance_handle(inheritance: *const Inheritance, index: usize) -> isize {
    guard_value(-1, || {
        // SAFETY: NULL or a live inheritance (this function's contract).
        let Ok(inheritance) = (unsafe { handle(inheritance, "inheritance") }) else {
            return -1;
        };
        #[cfg(target_os = "linux")]
        let raw = {
            use std::os::fd::AsRawFd;
            inheritance.inner.fds().nth(index).map(|fd| fd.as_raw_fd() as isize)
        };
        #[cfg(windows)]
        let raw = {
            use std::os::windows::io::AsRawHandle;
            inheritance.inner.handles().nth(index).map(|h| h.as_raw_handle() as isize)
        };
        #[cfg(not(any(target_os = "linux", windows)))]
        let raw = {
            let _ = (inheritance, index);
            None
        };
        raw.unwrap_or(-1)
    })
}

/// Closes this process's duplicates (a child already started keeps its
/// own). NULL does nothing.
///
/// # Safety
///
/// `inheritance` is NULL or a live inheritance, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_inheritance_close(inheritance: *mut Inheritance) {
    // SAFETY: NULL or from `Box::into_raw` in `copydata_inheritance_new`,
    // given back once (this function's contract).
    unsafe { give_back(inheritance) }
}

/// Takes the sections the parent passed (with `copydata_inheritance_new`,
/// or from Rust with `spawn_with_sections`), in the order it passed them:
/// `*out` becomes an array of `*count` sections, which the caller closes
/// one by one (`copydata_section_close`) and frees with `copydata_free`;
/// NULL and 0 when the parent passed none.
///
/// The sections can be taken once per process: a second call fails with
/// `COPYDATA_STATUS_CLOSED` (also after a first call that failed; when the
/// array cannot be allocated, the sections are closed and lost). Every handle is checked against the token
/// before it is taken: `COPYDATA_STATUS_NOT_FOUND` when the token names
/// handles this process did not inherit (it was passed on by a process in
/// between), `COPYDATA_STATUS_INCOMPATIBLE` for a token not in copydata's
/// format.
///
/// # Safety
///
/// `out` and `count` are NULL or point to storage for a pointer and a
/// `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_inherited_sections(out: *mut *mut *mut Section, count: *mut usize) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `count` is NULL or valid, aligned storage for a `size_t`
        //   (this function's contract).
        let count = unsafe { count.as_mut() }.ok_or_else(|| Error::invalid("count is NULL"))?;
        *count = 0;
        let sections = copydata::inherited_sections()?;
        if sections.is_empty() {
            return Ok(());
        }
        let mut handles: Vec<*mut Section> = Vec::with_capacity(sections.len());
        let close_all = |handles: &[*mut Section]| {
            for &h in handles {
                // SAFETY: made just above by `give`, not handed out.
                unsafe { give_back(h) };
            }
        };
        for section in sections {
            let mut h = std::ptr::null_mut();
            if let Err(e) = give(&mut h, section) {
                close_all(&handles);
                return Err(e);
            }
            handles.push(h);
        }
        let bytes = std::mem::size_of_val(handles.as_slice());
        // SAFETY: `handles` is readable for `bytes` bytes; the copy is
        // aligned for pointers (`to_c_from` aligns to 16 bytes).
        match unsafe { to_c_from(handles.as_ptr().cast(), bytes) } {
            Ok(array) => {
                *out = array.cast();
                *count = handles.len();
                Ok(())
            }
            Err(e) => {
                close_all(&handles);
                Err(e)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::ptr::{null, null_mut};

    use super::*;
    use crate::section::{copydata_section_anonymous, copydata_section_close};
    use crate::test_util::last;

    #[test]
    fn sections_are_made_ready_and_bad_arguments_refused() {
        // SAFETY: every pointer is NULL or made by this library and live.
        unsafe {
            let mut a = null_mut();
            let mut b = null_mut();
            assert_eq!(copydata_section_anonymous(4096, &mut a), Status::Ok, "{}", last());
            assert_eq!(copydata_section_anonymous(100, &mut b), Status::Ok, "{}", last());
            let pass = [a.cast_const(), b.cast_const()];
            let mut inh = null_mut();
            assert_eq!(copydata_inheritance_new(pass.as_ptr(), 2, &mut inh), Status::Ok, "{}", last());
            assert_eq!(copydata_inheritance_count(inh), 2);
            let token = CStr::from_ptr(copydata_inheritance_token(inh)).to_str().unwrap();
            assert!(token.starts_with("1;"), "{token}");
            let (h0, h1) = (copydata_inheritance_handle(inh, 0), copydata_inheritance_handle(inh, 1));
            assert!(h0 > 0 && h1 > 0 && h0 != h1);
            assert_eq!(copydata_inheritance_handle(inh, 2), -1);
            assert!(token.contains(&h0.to_string()) && token.contains(&h1.to_string()), "{token}");
            copydata_inheritance_close(inh);

            let mut empty = null_mut();
            assert_eq!(copydata_inheritance_new(null(), 0, &mut empty), Status::Ok, "{}", last());
            assert_eq!(copydata_inheritance_count(empty), 0);
            assert_eq!(CStr::from_ptr(copydata_inheritance_token(empty)).to_str().unwrap(), "1;");
            copydata_inheritance_close(empty);

            let mut out = std::ptr::dangling_mut::<Inheritance>();
            assert_eq!(copydata_inheritance_new(null(), 1, &mut out), Status::InvalidArgument);
            assert!(out.is_null());
            let holes = [a.cast_const(), null()];
            assert_eq!(copydata_inheritance_new(holes.as_ptr(), 2, &mut out), Status::InvalidArgument);
            assert!(last().contains("sections[1] is NULL"), "{}", last());
            // A count no array can have is refused before anything is read.
            assert_eq!(copydata_inheritance_new(pass.as_ptr(), usize::MAX, &mut out), Status::InvalidArgument);
            assert!(last().contains("no count of sections"), "{}", last());
            assert_eq!(copydata_inheritance_new(pass.as_ptr(), 2, null_mut()), Status::InvalidArgument);
            assert!(copydata_inheritance_token(null()).is_null());
            assert_eq!(copydata_inheritance_count(null()), 0);
            assert_eq!(copydata_inheritance_handle(null(), 0), -1);
            copydata_inheritance_close(null_mut());

            let mut sections = null_mut();
            let mut count = 0;
            assert_eq!(copydata_inherited_sections(null_mut(), &mut count), Status::InvalidArgument);
            assert_eq!(copydata_inherited_sections(&mut sections, null_mut()), Status::InvalidArgument);
            copydata_section_close(a);
            copydata_section_close(b);
        }
    }

    #[test]
    fn the_header_names_the_same_variable() {
        let header = include_str!("../include/copydata.h");
        let define = format!("#define COPYDATA_INHERIT_VAR \"{}\"", copydata::INHERIT_VAR);
        assert!(header.contains(&define), "the header lacks {define}");
    }
}
