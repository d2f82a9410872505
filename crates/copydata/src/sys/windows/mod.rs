//! Windows backend: file-mapping objects (`CreateFileMappingW`,
//! `OpenFileMappingW`, `MapViewOfFile`), `DuplicateHandle` for read-only
//! hand-outs, inheritance and hand-over.

pub(crate) mod handover;
mod inherit;
pub(crate) mod mailbox;
mod namespace;
#[cfg(feature = "tokio")]
pub(crate) mod readiness;
pub(crate) mod sync;

use std::ffi::{OsStr, c_void};
use std::fs::File;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::sync::Arc;

use windows_sys::Win32::Foundation::{
    DUPLICATE_SAME_ACCESS, DuplicateHandle, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_FILE_INVALID,
    ERROR_FILE_NOT_FOUND, ERROR_INVALID_HANDLE, GetLastError, HANDLE, INVALID_HANDLE_VALUE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_READ, FILE_MAP_WRITE, FlushViewOfFile, MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile,
    OpenFileMappingW, PAGE_READONLY, PAGE_READWRITE, SEC_FILE, SEC_IMAGE, SEC_IMAGE_NO_EXECUTE, SEC_RESERVE,
    UnmapViewOfFile,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};
use windows_sys::Win32::System::Threading::GetCurrentProcess;

use crate::error::{CreateError, MapError, OpenError, ReadOnlyError};
use crate::name::Name;
use crate::section::Access;

pub(crate) use inherit::{Passed, prepare_inheritance, spawn_with_sections, take_inherited};
pub(crate) use namespace::{list, remove};

/// `SECTION_QUERY`: needed to ask a mapping for its size.
pub(crate) const SECTION_QUERY: u32 = 0x0001;

mod ntdll {
    use std::ffi::c_void;
    windows_link::link!("ntdll.dll" "system" fn NtQuerySection(
        section_handle: windows_sys::Win32::Foundation::HANDLE,
        information_class: i32,
        information: *mut c_void,
        length: usize,
        return_length: *mut usize
    ) -> i32);

    /// `SECTION_BASIC_INFORMATION`.
    #[repr(C)]
    pub struct SectionBasicInformation {
        pub base_address: *mut c_void,
        pub allocation_attributes: u32,
        pub maximum_size: i64,
    }
}

/// The last Win32 error as an `io::Error` (the one conversion helper).
fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn is(e: &io::Error, code: u32) -> bool {
    e.raw_os_error() == Some(code as i32)
}

pub(crate) fn wide(s: &str) -> Vec<u16> {
    OsStr::new(s).encode_wide().chain(Some(0)).collect()
}

/// The kernel name of a named section.
pub(crate) fn object_name(name: &Name) -> Vec<u16> {
    wide(&format!("Local\\{name}"))
}

/// Takes ownership of a handle returned by a Win32 call, or the last error.
pub(crate) fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Err(last_error());
    }
    // SAFETY:
    // - `h` is a valid handle just returned by the system to this call;
    // - nothing else holds it, so the `OwnedHandle` is its only owner.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) })
}

pub(crate) fn raw(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

/// The exact size of a mapping (`NtQuerySection`); needs `SECTION_QUERY`.
pub(crate) fn section_size(h: HANDLE) -> io::Result<u64> {
    section_info(h).map(|(size, _)| size)
}

/// The size of a mapping another process made, refused unless every page
/// of it can be read and written as plain bytes: a section only reserved
/// (`SEC_RESERVE`) faults on the first touch of any page its creator did
/// not commit, which would crash this process in the middle of a copy,
/// and an image section (`SEC_IMAGE`) is laid out as a program, not as
/// the bytes announced. Needs `SECTION_QUERY`.
pub(crate) fn foreign_section_size(h: HANDLE) -> io::Result<u64> {
    let (size, attributes) = section_info(h)?;
    if attributes & SEC_RESERVE != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a section reserved but not committed (SEC_RESERVE): its pages may not be there",
        ));
    }
    if attributes & (SEC_IMAGE | SEC_IMAGE_NO_EXECUTE) != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "an image section (SEC_IMAGE), not a data section"));
    }
    Ok(size)
}

/// Whether a mapping is backed by a file (`SEC_FILE`) rather than by the
/// paging file: reading it may fail with `EXCEPTION_IN_PAGE_ERROR` (a file
/// on a network or removable drive gone), which would crash this process in
/// the middle of a copy. Buffers the fast path reads are refused then.
pub(crate) fn is_file_backed(h: HANDLE) -> io::Result<bool> {
    section_info(h).map(|(_, attributes)| attributes & SEC_FILE != 0)
}

/// A mapping's size and allocation attributes (`SEC_*`).
fn section_info(h: HANDLE) -> io::Result<(u64, u32)> {
    let mut info = ntdll::SectionBasicInformation {
        base_address: std::ptr::null_mut(),
        allocation_attributes: 0,
        maximum_size: 0,
    };
    // SAFETY:
    // - `info` is a writable `SECTION_BASIC_INFORMATION` of the given size;
    // - class 0 (`SectionBasicInformation`) writes only that structure;
    // - an invalid or wrong-type handle makes the call fail, nothing else.
    let status = unsafe {
        ntdll::NtQuerySection(
            h,
            0,
            (&raw mut info).cast::<c_void>(),
            size_of::<ntdll::SectionBasicInformation>(),
            std::ptr::null_mut(),
        )
    };
    if status < 0 {
        return Err(io::Error::other(format!("not a section handle (NTSTATUS {status:#x})")));
    }
    let size = u64::try_from(info.maximum_size).map_err(|_| io::Error::other("negative section size"))?;
    Ok((size, info.allocation_attributes))
}

/// Whether a mapping whose kernel size is `size` can be the section of `len`
/// bytes someone announced: Windows keeps pagefile-backed sizes rounded up
/// to a whole page, so the exact size is known only to the creator.
pub(crate) fn size_matches(len: u64, size: u64) -> bool {
    let page = u64::from(system_info().dwPageSize.max(1));
    len > 0 && len <= size && size - len < page
}

/// A security descriptor that grants nobody new access to the object:
/// handles keep what they were created or duplicated with, so a read-only
/// duplicate cannot be re-duplicated with write access. The owner's implicit
/// rights are reduced to reading the descriptor (the OWNER RIGHTS SID).
struct NoNewAccess(*mut c_void);

impl NoNewAccess {
    fn new() -> io::Result<NoNewAccess> {
        let mut sd: *mut c_void = std::ptr::null_mut();
        for sddl in ["D:P(A;;RC;;;OW)", "D:P"] {
            let s = wide(sddl);
            // SAFETY:
            // - `s` is a NUL-terminated UTF-16 string;
            // - `sd` receives a LocalAlloc'ed descriptor, freed in `Drop`.
            let ok = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    s.as_ptr(),
                    SDDL_REVISION_1,
                    &mut sd,
                    std::ptr::null_mut(),
                )
            };
            if ok != 0 {
                return Ok(NoNewAccess(sd));
            }
        }
        Err(last_error())
    }
}

impl Drop for NoNewAccess {
    fn drop(&mut self) {
        // SAFETY: the pointer came from LocalAlloc (via the conversion above)
        // and is freed once.
        unsafe { LocalFree(self.0) };
    }
}

fn split(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

#[derive(Debug)]
pub(crate) struct Section {
    /// Shared with every view, so a view keeps a named section's name alive
    /// as on Linux (Windows itself drops the name with the last handle, even
    /// while views remain).
    handle: Arc<OwnedHandle>,
    len: u64,
    access: Access,
}

impl Section {
    pub(crate) fn from_handle(handle: OwnedHandle, len: u64, access: Access) -> Section {
        Section { handle: Arc::new(handle), len, access }
    }

    pub(crate) fn handle(&self) -> HANDLE {
        raw(&self.handle)
    }

    pub(crate) fn borrow(&self) -> std::os::windows::io::BorrowedHandle<'_> {
        use std::os::windows::io::AsHandle;
        self.handle.as_handle()
    }

    pub(crate) fn anonymous(size: u64) -> Result<Section, CreateError> {
        let io = |source| CreateError::Io { object: "anonymous section".into(), source };
        let sd = NoNewAccess::new().map_err(io)?;
        let sa = SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: sd.0,
            bInheritHandle: 0,
        };
        let (hi, lo) = split(size);
        // SAFETY:
        // - INVALID_HANDLE_VALUE asks for a pagefile-backed mapping;
        // - `sa` and the descriptor it points to outlive the call;
        // - a null name makes it anonymous.
        let h = unsafe { CreateFileMappingW(INVALID_HANDLE_VALUE, &sa, PAGE_READWRITE, hi, lo, std::ptr::null()) };
        let handle = owned(h).map_err(io)?;
        Ok(Section::from_handle(handle, size, Access::ReadWrite))
    }

    /// `CreateFileMappingW` on `Local\NAME`: returns the handle and whether
    /// the object already existed.
    fn create_or_open(name: &Name, size: u64) -> Result<(Section, bool), CreateError> {
        let n = object_name(name);
        let (hi, lo) = split(size);
        // SAFETY:
        // - INVALID_HANDLE_VALUE asks for a pagefile-backed mapping;
        // - null attributes: default security, not inheritable;
        // - `n` is a NUL-terminated UTF-16 string that outlives the call.
        let h =
            unsafe { CreateFileMappingW(INVALID_HANDLE_VALUE, std::ptr::null(), PAGE_READWRITE, hi, lo, n.as_ptr()) };
        // SAFETY: reads this thread's last-error value, set by the call above.
        let existed = unsafe { GetLastError() } == ERROR_ALREADY_EXISTS;
        let handle = owned(h).map_err(|e| {
            if is(&e, ERROR_INVALID_HANDLE) {
                // The name belongs to another kind of object (a mutex, ...).
                CreateError::AlreadyExists { name: name.to_string() }
            } else if is(&e, ERROR_ACCESS_DENIED) {
                CreateError::PermissionDenied { object: name.to_string(), source: e }
            } else {
                CreateError::Io { object: name.to_string(), source: e }
            }
        })?;
        let len = if existed {
            foreign_section_size(raw(&handle)).map_err(|source| CreateError::Io { object: name.to_string(), source })?
        } else {
            size
        };
        Ok((Section::from_handle(handle, len, Access::ReadWrite), existed))
    }

    pub(crate) fn create(name: &Name, size: u64, _options: &crate::SectionOptions) -> Result<Section, CreateError> {
        match Self::create_or_open(name, size)? {
            (_, true) => Err(CreateError::AlreadyExists { name: name.to_string() }),
            (s, false) => Ok(s),
        }
    }

    pub(crate) fn open_or_create(
        name: &Name,
        size: u64,
        _options: &crate::SectionOptions,
    ) -> Result<(Section, bool), CreateError> {
        let (s, existed) = Self::create_or_open(name, size)?;
        Ok((s, !existed))
    }

    pub(crate) fn open(name: &Name, options: &crate::SectionOptions) -> Result<Section, OpenError> {
        let access = options.access_mode();
        let n = object_name(name);
        let rights = SECTION_QUERY
            | match access {
                Access::ReadOnly => FILE_MAP_READ,
                Access::ReadWrite => FILE_MAP_READ | FILE_MAP_WRITE,
            };
        // SAFETY: `n` is a NUL-terminated UTF-16 string that outlives the call;
        // the handle is not inheritable.
        let h = unsafe { OpenFileMappingW(rights, 0, n.as_ptr()) };
        let handle = owned(h).map_err(|e| {
            if is(&e, ERROR_FILE_NOT_FOUND) || is(&e, ERROR_INVALID_HANDLE) {
                OpenError::NotFound { name: name.to_string() }
            } else if is(&e, ERROR_ACCESS_DENIED) {
                OpenError::PermissionDenied { name: name.to_string(), source: e }
            } else {
                OpenError::Io { name: name.to_string(), source: e }
            }
        })?;
        let len =
            foreign_section_size(raw(&handle)).map_err(|source| OpenError::Io { name: name.to_string(), source })?;
        Ok(Section::from_handle(handle, len, access))
    }

    pub(crate) fn from_file(file: &File, access: Access) -> Result<Section, CreateError> {
        let io = |source: io::Error| match source.kind() {
            io::ErrorKind::PermissionDenied => {
                CreateError::PermissionDenied { object: "file-backed section".into(), source }
            }
            _ => CreateError::Io { object: "file-backed section".into(), source },
        };
        let size = file.metadata().map_err(io)?.len();
        if size == 0 {
            return Err(CreateError::InvalidSize { size, reason: "the file is empty" });
        }
        let protect = match access {
            Access::ReadOnly => PAGE_READONLY,
            Access::ReadWrite => PAGE_READWRITE,
        };
        // SAFETY:
        // - `file`'s handle is valid for the call (borrowed);
        // - size 0/0 means "the file's current size"; null name: anonymous;
        // - the mapping holds its own reference to the file.
        let h = unsafe {
            CreateFileMappingW(file.as_raw_handle() as HANDLE, std::ptr::null(), protect, 0, 0, std::ptr::null())
        };
        let handle = owned(h).map_err(|e| {
            if is(&e, ERROR_FILE_INVALID) {
                CreateError::InvalidSize { size, reason: "the file is empty" }
            } else {
                io(e)
            }
        })?;
        Ok(Section::from_handle(handle, size, access))
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// A mapped section cannot be made smaller on Windows (a file under a
    /// mapping cannot be truncated: `ERROR_USER_MAPPED_FILE`).
    pub(crate) fn size_sealed(&self) -> bool {
        true
    }

    /// Whether the pages live in memory (the paging file) rather than in a
    /// file (`SEC_FILE`); `false` when the handle cannot be asked (it lacks
    /// `SECTION_QUERY`).
    pub(crate) fn memory_backed(&self) -> bool {
        is_file_backed(self.handle()).is_ok_and(|file| !file)
    }

    pub(crate) fn access(&self) -> Access {
        self.access
    }

    pub(crate) fn read_only(&self) -> Result<Section, ReadOnlyError> {
        let h = duplicate(self.handle(), current_process(), SECTION_QUERY | FILE_MAP_READ, false)
            .map_err(ReadOnlyError::Io)?;
        // SAFETY: the duplicate is a fresh handle in this process, owned by nobody else.
        let handle = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
        Ok(Section::from_handle(handle, self.len, Access::ReadOnly))
    }

    pub(crate) fn map(&self, offset: u64, len: usize, access: Access) -> Result<(Arc<Mapping>, usize), MapError> {
        let gran = granularity();
        let aligned = offset - offset % gran;
        let start = (offset - aligned) as usize;
        let map_len = start.checked_add(len).ok_or(MapError::OutOfRange { offset, len: len as u64, size: u64::MAX })?;
        let (hi, lo) = split(aligned);
        let rights = match access {
            Access::ReadOnly => FILE_MAP_READ,
            Access::ReadWrite => FILE_MAP_WRITE,
        };
        // SAFETY:
        // - the handle is a live mapping owned by `self`;
        // - the range was checked against the section's size by the caller;
        // - the view is only accessed through `Mapping`'s raw pointers.
        let view = unsafe { MapViewOfFile(self.handle(), rights, hi, lo, map_len) };
        if view.Value.is_null() {
            let e = last_error();
            return Err(if is(&e, ERROR_ACCESS_DENIED) && access == Access::ReadWrite {
                MapError::ReadOnly
            } else {
                MapError::Io(e)
            });
        }
        Ok((Arc::new(Mapping { base: view.Value.cast(), len: map_len, _handle: self.handle.clone() }), start))
    }
}

fn system_info() -> SYSTEM_INFO {
    // SAFETY: an all-zero SYSTEM_INFO is a valid value for this plain C struct.
    let mut info: SYSTEM_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a writable SYSTEM_INFO.
    unsafe { GetSystemInfo(&mut info) };
    info
}

fn granularity() -> u64 {
    u64::from(system_info().dwAllocationGranularity.max(1))
}

pub(crate) fn current_process() -> HANDLE {
    // SAFETY: returns a pseudo-handle; no preconditions.
    unsafe { GetCurrentProcess() }
}

/// `DuplicateHandle` from this process into `target` (a process handle).
/// `rights == 0` keeps the same access. Returns the value valid in `target`.
pub(crate) fn duplicate(h: HANDLE, target: HANDLE, rights: u32, inherit: bool) -> io::Result<HANDLE> {
    let mut out: HANDLE = std::ptr::null_mut();
    let options = if rights == 0 { DUPLICATE_SAME_ACCESS } else { 0 };
    // SAFETY:
    // - `h` is a live handle of this process and `target` a process handle
    //   with PROCESS_DUP_HANDLE (or the current-process pseudo-handle);
    // - `out` is a writable HANDLE.
    let ok = unsafe { DuplicateHandle(current_process(), h, target, &mut out, rights, inherit.into(), options) };
    if ok == 0 { Err(last_error()) } else { Ok(out) }
}

/// `DuplicateHandle` out of `process` (a process handle with
/// `PROCESS_DUP_HANDLE`): a new handle of this process, with `rights` (0:
/// the same access), on what `value` names *in that process*. A bogus
/// value makes the call fail or reaches one of that process's own objects;
/// it never names a handle this process already owns.
pub(crate) fn duplicate_from(process: HANDLE, value: u64, rights: u32) -> io::Result<OwnedHandle> {
    let value =
        usize::try_from(value).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "handle out of range"))?;
    let options = if rights == 0 { DUPLICATE_SAME_ACCESS } else { 0 };
    let mut out: HANDLE = std::ptr::null_mut();
    // SAFETY:
    // - `process` is a live process handle (with PROCESS_DUP_HANDLE, or the
    //   call fails); `value` is only interpreted in that process;
    // - `out` is a writable HANDLE that receives a new handle of this
    //   process, owned below and by nothing else.
    let ok = unsafe { DuplicateHandle(process, value as HANDLE, current_process(), &mut out, rights, 0, options) };
    if ok == 0 { Err(last_error()) } else { owned(out) }
}

/// A mapped view, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
    _handle: Arc<OwnedHandle>,
}

// SAFETY:
// - a view is plain shared memory owned by this value, not tied to a thread;
//   all access goes through raw pointers, atomics and copies.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`; `&Mapping` only hands out raw pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.base
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn flush(&self, start: usize, len: usize) -> io::Result<()> {
        // SAFETY: `start..start + len` lies inside this live view.
        let ok = unsafe { FlushViewOfFile(self.base.add(start).cast(), len) };
        if ok == 0 { Err(last_error()) } else { Ok(()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY:
        // - `base` is the address MapViewOfFile returned, unmapped only here;
        // - no view refers to this mapping any more (they hold an `Arc`).
        unsafe { UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS { Value: self.base.cast() }) };
    }
}

/// `fork`s since this process's line first used copydata: none here (see
/// `crate::fork`).
pub(crate) fn forks() -> u32 {
    0
}
