//! Sections (file mappings) and their views.

use std::ffi::{CString, c_char, c_void};

use crate::error::{Error, Status, array_arg, give_back, guard, guard_value, handle, out_arg, str_arg};

/// Access for `copydata_section_open`, `copydata_section_file` and
/// `copydata_section_map`: reading only (`FILE_MAP_READ`, `PROT_READ`).
pub const COPYDATA_READ_ONLY: u32 = 0;
/// Access for `copydata_section_open`, `copydata_section_file` and
/// `copydata_section_map`: reading and writing (`FILE_MAP_WRITE`,
/// `PROT_READ | PROT_WRITE`).
pub const COPYDATA_READ_WRITE: u32 = 1;

/// A section of shared memory (a Win32 file-mapping object; on Linux a
/// POSIX shared-memory object or a memfd). Opaque; close it with
/// `copydata_section_close`.
pub struct Section {
    pub(crate) inner: copydata::Section,
    /// The name as C reads it, for named sections.
    name: Option<CString>,
}

/// A mapped range of a section (`MapViewOfFile`, `mmap`). Opaque; unmap it
/// with `copydata_view_unmap`. A view stays valid after its section is
/// closed.
pub struct View {
    data: *mut c_void,
    len: usize,
    /// Keeps the memory mapped.
    _mapping: Mapping,
}

enum Mapping {
    ReadOnly(#[allow(dead_code)] copydata::View),
    ReadWrite(#[allow(dead_code)] copydata::ViewMut),
}

pub(crate) fn access_arg(access: u32) -> Result<copydata::Access, Error> {
    match access {
        COPYDATA_READ_ONLY => Ok(copydata::Access::ReadOnly),
        COPYDATA_READ_WRITE => Ok(copydata::Access::ReadWrite),
        other => {
            Err(Error::invalid(format!("access {other} is neither COPYDATA_READ_ONLY (0) nor COPYDATA_READ_WRITE (1)")))
        }
    }
}

pub(crate) fn give(out: &mut *mut Section, inner: copydata::Section) -> Result<(), Error> {
    let name = match inner.name() {
        // Valid names have no NUL (they are checked by the library).
        Some(n) => Some(CString::new(n).map_err(|_| Error::invalid("section name holds a NUL byte"))?),
        None => None,
    };
    *out = Box::into_raw(Box::new(Section { inner, name }));
    Ok(())
}

/// A `sections`, `count` argument pair: the sections' library objects.
/// `sections` may be NULL when `count` is 0.
///
/// # Safety
///
/// `sections` is NULL or points to `count` pointers, each NULL or a live
/// section, none closed for `'a`.
pub(crate) unsafe fn sections_arg<'a>(
    sections: *const *const Section,
    count: usize,
) -> Result<Vec<&'a copydata::Section>, Error> {
    // SAFETY: `sections` is NULL or points to `count` pointers, read only
    // for `'a` (this function's contract).
    let handles = unsafe { array_arg(sections, count, "sections") }?;
    // (Collected as checked, not into `count` slots reserved up front.)
    handles
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            // SAFETY:
            // - each pointer is NULL or a live section, not closed for `'a`
            //   (the contract); it is only read.
            let section =
                unsafe { handle(p, "a section") }.map_err(|_| Error::invalid(format!("sections[{i}] is NULL")))?;
            Ok(&section.inner)
        })
        .collect()
}

/// Creates the named section `name` of `size` bytes, zero-filled, readable
/// and writable (`CreateFileMappingW(Local\name)`, `shm_open("/name",
/// O_CREAT | O_EXCL)`). The section lives while any process holds it.
///
/// Fails with `COPYDATA_STATUS_ALREADY_EXISTS` while a live section has
/// this name, `COPYDATA_STATUS_INVALID_ARGUMENT` for an invalid name or a
/// zero size.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_create(name: *const c_char, size: u64, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string (the contract), read
        //   only during this call.
        let name = unsafe { str_arg(name, "name") }?;
        give(out, copydata::Section::create(name, size)?)
    })
}

/// Opens the live named section `name` (`OpenFileMappingW`, `shm_open`)
/// with `access` `COPYDATA_READ_ONLY` or `COPYDATA_READ_WRITE`. Fails with
/// `COPYDATA_STATUS_NOT_FOUND` if there is none.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_open(name: *const c_char, access: u32, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string (the contract), read
        //   only during this call.
        let name = unsafe { str_arg(name, "name") }?;
        let access = access_arg(access)?;
        give(out, copydata::Section::open_with(name, access)?)
    })
}

/// A section over the whole of the existing regular file at `path`, opened
/// for reading (`COPYDATA_READ_ONLY`) or reading and writing
/// (`COPYDATA_READ_WRITE`): `CreateFileMappingW` on the file, `mmap` of
/// its descriptor. Views of it read and write the file. Its size is the
/// file's: size the file first to make a new one (`ftruncate`,
/// `SetEndOfFile`). The path is bytes on Linux (any encoding), UTF-8 on
/// Windows. Another process gets it by the file's name, or handed over
/// with a message (`copydata_sender_send_sections`).
///
/// Fails with `COPYDATA_STATUS_NOT_FOUND` (no such file),
/// `COPYDATA_STATUS_PERMISSION_DENIED` (including `COPYDATA_READ_WRITE` on
/// a file this process may only read), `COPYDATA_STATUS_INVALID_ARGUMENT`
/// (an empty file, one that is not a regular file, such as a directory or
/// a FIFO, an unknown access). On Linux, truncating the file while it is
/// mapped makes access to the cut-off part crash the process (SIGBUS), so
/// keep such files private; Windows refuses to truncate a mapped file.
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_file(path: *const c_char, access: u32, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `path` is NULL or a NUL-terminated string (the contract), read
        //   only during this call.
        let path = unsafe { path_arg(path) }?;
        let access = access_arg(access)?;
        give(out, copydata::Section::from_path(&path, access)?)
    })
}

/// A path argument: bytes on Unix (any encoding), UTF-8 elsewhere.
///
/// # Safety
///
/// `p` is NULL or a NUL-terminated string, valid during the call.
unsafe fn path_arg(p: *const c_char) -> Result<std::path::PathBuf, Error> {
    if p.is_null() {
        return Err(Error::invalid("path is NULL"));
    }
    // SAFETY: not NULL, and NUL-terminated (the contract).
    let path = unsafe { std::ffi::CStr::from_ptr(p) };
    crate::error::os_string(path).map(Into::into).ok_or_else(|| Error::invalid("path is not UTF-8"))
}

/// Whether the section cannot shrink (`copydata::Section::is_size_sealed`):
/// true for anonymous sections on Linux, whose size is sealed, and on
/// Windows, where a mapped section never shrinks. A named or file-backed
/// section received from another process can be truncated by whoever may
/// open its name or file, and touching the cut-off part of a view then
/// crashes this process (SIGBUS): map only what you trust of those, or
/// keep them to programs you trust. False for NULL.
///
/// # Safety
///
/// `section` is NULL or a live section.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_is_size_sealed(section: *const Section) -> bool {
    guard_value(false, || {
        // SAFETY:
        // - `section` is NULL or a live section (this function's contract).
        unsafe { handle(section, "section") }.is_ok_and(|s| s.inner.is_size_sealed())
    })
}

/// Whether the section's pages live in memory
/// (`copydata::Section::is_memory_backed`): anonymous and named sections,
/// and files on a memory file system (Linux: tmpfs, ramfs, hugetlbfs;
/// Windows: the paging file). False for a file on a disk, network or FUSE
/// file system, whose reads can fail and crash the reading process
/// (SIGBUS, `EXCEPTION_IN_PAGE_ERROR`): a receiver can refuse such
/// sections from senders it does not trust. False for NULL.
///
/// # Safety
///
/// `section` is NULL or a live section.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_is_memory_backed(section: *const Section) -> bool {
    guard_value(false, || {
        // SAFETY:
        // - `section` is NULL or a live section (this function's contract).
        unsafe { handle(section, "section") }.is_ok_and(|s| s.inner.is_memory_backed())
    })
}

/// The access this handle has: `COPYDATA_READ_WRITE` or
/// `COPYDATA_READ_ONLY` (a read-only handle cannot map writable views);
/// `COPYDATA_READ_ONLY` for NULL.
///
/// # Safety
///
/// `section` is NULL or a live section.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_access(section: *const Section) -> u32 {
    guard_value(COPYDATA_READ_ONLY, || {
        // SAFETY:
        // - `section` is NULL or a live section (this function's contract).
        match unsafe { handle(section, "section") }.map(|s| s.inner.access()) {
            Ok(copydata::Access::ReadWrite) => COPYDATA_READ_WRITE,
            _ => COPYDATA_READ_ONLY,
        }
    })
}

/// A read-only handle to the same memory, to hand over
/// (`copydata_sender_send_sections`) so that the receiver cannot write it:
/// for an anonymous section the kernel enforces it (on Linux the section
/// is sealed against new writable mappings, except this process's own). A
/// named or file-backed section stays reachable by its name or path, so
/// whoever may open that may still get write access there.
///
/// # Safety
///
/// `section` is NULL or a live section; `out` is NULL or points to storage
/// for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_read_only(section: *const Section, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `section` is NULL or a live section (the contract).
        let section = unsafe { handle(section, "section") }?;
        let read_only = section.inner.read_only().map_err(|e| match e {
            copydata::ReadOnlyError::Unsupported => Error::new(Status::Unsupported, e),
            other => Error::new(Status::Io, other),
        })?;
        give(out, read_only)
    })
}

/// Creates an anonymous section of `size` bytes, zero-filled
/// (`CreateFileMappingW(INVALID_HANDLE_VALUE)`, `memfd_create`): reachable
/// only through this handle.
///
/// # Safety
///
/// `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_anonymous(size: u64, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        give(out, copydata::Section::anonymous(size)?)
    })
}

/// The section's size in bytes; 0 for NULL.
///
/// On Windows a section opened by name reports its size rounded up to a
/// whole page (4096 bytes); its creator sees the size it asked for.
///
/// # Safety
///
/// `section` is NULL or a live section.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_size(section: *const Section) -> u64 {
    guard_value(0, || {
        // SAFETY:
        // - `section` is NULL or a live section (this function's contract).
        unsafe { handle(section, "section") }.map_or(0, |s| s.inner.len())
    })
}

/// The section's name, or NULL for an anonymous section (and for NULL).
/// The string belongs to the section: valid until it is closed.
///
/// # Safety
///
/// `section` is NULL or a live section.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_name(section: *const Section) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY:
        // - `section` is NULL or a live section (this function's contract).
        let section = unsafe { handle(section, "section") };
        section.ok().and_then(|s| s.name.as_ref()).map_or(std::ptr::null(), |n| n.as_ptr())
    })
}

/// Closes the section (`CloseHandle`, `close`). Views made from it stay
/// mapped until unmapped. NULL does nothing.
///
/// # Safety
///
/// `section` is NULL or a live section, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_close(section: *mut Section) {
    // SAFETY: `section` is NULL or came from `Box::into_raw` in `give`, and
    // is given back once (this function's contract).
    unsafe { give_back(section) }
}

/// Maps `len` bytes of the section starting at `offset`
/// (`MapViewOfFile`, `mmap`), with `access` `COPYDATA_READ_ONLY` or
/// `COPYDATA_READ_WRITE`. The offset needs no alignment: the view starts
/// exactly at that byte. `copydata_view_data` gives its address.
///
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` for a zero length or a
/// range outside the section, `COPYDATA_STATUS_PERMISSION_DENIED` for a
/// writable view of a section opened read-only.
///
/// # Safety
///
/// `section` is NULL or a live section; `out` is NULL or points to storage
/// for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_map(
    section: *const Section,
    offset: u64,
    len: usize,
    access: u32,
    out: *mut *mut View,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `section` is NULL or a live section (the contract).
        let section = unsafe { handle(section, "section") }?;
        let view = match access_arg(access)? {
            copydata::Access::ReadOnly => {
                let v = section.inner.map(offset, len)?;
                View { data: v.as_ptr().cast_mut().cast(), len: v.len(), _mapping: Mapping::ReadOnly(v) }
            }
            copydata::Access::ReadWrite => {
                let v = section.inner.map_mut(offset, len)?;
                View { data: v.as_mut_ptr().cast(), len: v.len(), _mapping: Mapping::ReadWrite(v) }
            }
        };
        *out = Box::into_raw(Box::new(view));
        Ok(())
    })
}

/// The address of the view's first byte; NULL for NULL. Valid for
/// `copydata_view_size` bytes until the view is unmapped; write only
/// through a view mapped `COPYDATA_READ_WRITE`. Other processes may change
/// the bytes at any time: agree with them on who writes when.
///
/// # Safety
///
/// `view` is NULL or a live view.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_view_data(view: *const View) -> *mut c_void {
    guard_value(std::ptr::null_mut(), || {
        // SAFETY:
        // - `view` is NULL or a live view (this function's contract).
        unsafe { handle(view, "view") }.map_or(std::ptr::null_mut(), |v| v.data)
    })
}

/// The view's length in bytes; 0 for NULL.
///
/// # Safety
///
/// `view` is NULL or a live view.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_view_size(view: *const View) -> usize {
    guard_value(0, || {
        // SAFETY:
        // - `view` is NULL or a live view (this function's contract).
        unsafe { handle(view, "view") }.map_or(0, |v| v.len)
    })
}

/// Unmaps the view (`UnmapViewOfFile`, `munmap`); its address must not be
/// used afterwards. NULL does nothing.
///
/// # Safety
///
/// `view` is NULL or a live view, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_view_unmap(view: *mut View) {
    // SAFETY: `view` is NULL or came from `Box::into_raw` in
    // `copydata_section_map`, and is given back once (this function's
    // contract).
    unsafe { give_back(view) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::unique;
    use std::ptr::null_mut;

    #[test]
    fn a_named_section_is_shared_between_handles() {
        let name = unique("named");
        let (mut a, mut b, mut va, mut vb) = (null_mut(), null_mut(), null_mut(), null_mut());
        // SAFETY:
        // - every pointer is a live handle or valid out storage, each handle
        //   is closed once, and the views' bytes are used within their length.
        unsafe {
            assert_eq!(copydata_section_create(name.as_ptr(), 10_000, &mut a), Status::Ok);
            assert_eq!(copydata_section_create(name.as_ptr(), 10_000, &mut b), Status::AlreadyExists);
            assert!(b.is_null());
            assert_eq!(copydata_section_open(name.as_ptr(), COPYDATA_READ_ONLY, &mut b), Status::Ok);
            assert_eq!(copydata_section_size(a), 10_000);
            assert_eq!(std::ffi::CStr::from_ptr(copydata_section_name(b)), name.as_c_str());
            assert_eq!(copydata_section_map(a, 4097, 5, COPYDATA_READ_WRITE, &mut va), Status::Ok);
            assert_eq!(copydata_section_map(b, 4097, 5, COPYDATA_READ_WRITE, &mut vb), Status::PermissionDenied);
            assert_eq!(copydata_section_map(b, 4097, 5, COPYDATA_READ_ONLY, &mut vb), Status::Ok);
            copydata_section_close(a);
            copydata_section_close(b);
            std::ptr::copy_nonoverlapping(b"hello".as_ptr(), copydata_view_data(va).cast(), 5);
            assert_eq!(copydata_view_size(vb), 5);
            assert_eq!(std::slice::from_raw_parts(copydata_view_data(vb).cast::<u8>(), 5), b"hello");
            copydata_view_unmap(va);
            copydata_view_unmap(vb);
            assert_eq!(copydata_section_open(name.as_ptr(), COPYDATA_READ_WRITE, &mut a), Status::NotFound);
        }
    }

    #[test]
    fn bad_arguments_are_refused_not_crashed_on() {
        let name = unique("bad");
        let mut s = null_mut();
        let mut v = null_mut();
        // SAFETY:
        // - NULL and valid pointers only; each handle is closed once.
        unsafe {
            assert_eq!(copydata_section_create(std::ptr::null(), 10, &mut s), Status::InvalidArgument);
            assert_eq!(copydata_section_create(name.as_ptr(), 10, null_mut()), Status::InvalidArgument);
            assert_eq!(copydata_section_create(name.as_ptr(), 0, &mut s), Status::InvalidArgument);
            assert_eq!(copydata_section_create(c"no/slash".as_ptr(), 10, &mut s), Status::InvalidArgument);
            assert_eq!(copydata_section_create(c"\xff".as_ptr(), 10, &mut s), Status::InvalidArgument);
            assert_eq!(copydata_section_open(name.as_ptr(), 2, &mut s), Status::InvalidArgument);
            assert_eq!(
                copydata_section_map(std::ptr::null(), 0, 1, COPYDATA_READ_ONLY, &mut v),
                Status::InvalidArgument
            );
            assert_eq!(copydata_section_anonymous(100, &mut s), Status::Ok);
            assert!(copydata_section_is_memory_backed(s));
            assert!(!copydata_section_is_memory_backed(std::ptr::null()));
            assert!(copydata_section_name(s).is_null());
            assert_eq!(copydata_section_map(s, 0, 0, COPYDATA_READ_ONLY, &mut v), Status::InvalidArgument);
            assert_eq!(copydata_section_map(s, 90, 11, COPYDATA_READ_ONLY, &mut v), Status::InvalidArgument);
            assert_eq!(copydata_section_map(s, u64::MAX, 1, COPYDATA_READ_ONLY, &mut v), Status::InvalidArgument);
            assert_eq!(copydata_section_map(s, 0, 1, 7, &mut v), Status::InvalidArgument);
            assert!(v.is_null());
            assert_eq!(copydata_section_size(std::ptr::null()), 0);
            assert!(copydata_section_name(std::ptr::null()).is_null());
            assert!(copydata_view_data(std::ptr::null()).is_null());
            assert_eq!(copydata_view_size(std::ptr::null()), 0);
            copydata_section_close(s);
            copydata_section_close(null_mut());
            copydata_view_unmap(null_mut());
        }
    }
}
