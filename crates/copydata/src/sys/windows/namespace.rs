//! The session's named sections: the object directory behind `Local\`
//! (`\Sessions\N\BaseNamedObjects`), read with `NtQueryDirectoryObject`.
//!
//! Windows keeps no mark of which program made a mapping, so `list` reports
//! every live section in that directory whose name is a valid copydata name.
//! Names cannot be removed: a mapping's name lives exactly as long as its
//! handles (which also means nothing is ever left behind).

use std::ffi::c_void;
use std::io;

use windows_sys::Win32::Foundation::{HANDLE, UNICODE_STRING};
use windows_sys::Win32::System::Memory::{FILE_MAP_READ, OpenFileMappingW};
use windows_sys::Win32::System::RemoteDesktop::ProcessIdToSessionId;

use super::{SECTION_QUERY, object_name, owned, raw, section_size};
use crate::error::{ListError, Listing, RemoveError};
use crate::name::Name;
use crate::section::SectionInfo;

mod ntdll {
    use std::ffi::c_void;

    use windows_sys::Win32::Foundation::{HANDLE, UNICODE_STRING};

    windows_link::link!("ntdll.dll" "system" fn NtOpenDirectoryObject(
        handle: *mut HANDLE,
        access: u32,
        attributes: *const ObjectAttributes
    ) -> i32);
    windows_link::link!("ntdll.dll" "system" fn NtQueryDirectoryObject(
        handle: HANDLE,
        buffer: *mut c_void,
        length: u32,
        single_entry: u8,
        restart: u8,
        context: *mut u32,
        return_length: *mut u32
    ) -> i32);

    /// `OBJECT_ATTRIBUTES`.
    #[repr(C)]
    pub struct ObjectAttributes {
        pub length: u32,
        pub root_directory: HANDLE,
        pub object_name: *const UNICODE_STRING,
        pub attributes: u32,
        pub security_descriptor: *mut c_void,
        pub security_quality_of_service: *mut c_void,
    }

    /// `OBJECT_DIRECTORY_INFORMATION`.
    #[repr(C)]
    pub struct DirectoryInformation {
        pub name: UNICODE_STRING,
        pub type_name: UNICODE_STRING,
    }

    pub const DIRECTORY_QUERY: u32 = 0x0001;
    pub const OBJ_CASE_INSENSITIVE: u32 = 0x0040;
    pub const STATUS_NO_MORE_ENTRIES: i32 = 0x8000_001A_u32 as i32;
}

fn open_directory(path: &str) -> io::Result<std::os::windows::io::OwnedHandle> {
    let mut wide: Vec<u16> = path.encode_utf16().collect();
    let bytes = (wide.len() * 2) as u16;
    let name = UNICODE_STRING { Length: bytes, MaximumLength: bytes, Buffer: wide.as_mut_ptr() };
    let attributes = ntdll::ObjectAttributes {
        length: size_of::<ntdll::ObjectAttributes>() as u32,
        root_directory: std::ptr::null_mut(),
        object_name: &name,
        attributes: ntdll::OBJ_CASE_INSENSITIVE,
        security_descriptor: std::ptr::null_mut(),
        security_quality_of_service: std::ptr::null_mut(),
    };
    let mut handle: HANDLE = std::ptr::null_mut();
    // SAFETY:
    // - `attributes` and the name it points to (and `wide`, its buffer) live
    //   across the call;
    // - `handle` receives a new handle on success, owned below.
    let status = unsafe { ntdll::NtOpenDirectoryObject(&mut handle, ntdll::DIRECTORY_QUERY, &attributes) };
    if status < 0 {
        return Err(io::Error::other(format!("cannot open {path} (NTSTATUS {status:#x})")));
    }
    owned(handle)
}

/// The names of the objects of type `Section` in `dir`.
fn section_names(dir: HANDLE) -> io::Result<Vec<String>> {
    // 8-byte aligned, room for one entry with long names.
    let mut buffer = vec![0u64; 1024];
    let mut context = 0u32;
    let mut names = Vec::new();
    let mut restart = 1;
    loop {
        let mut returned = 0u32;
        // SAFETY:
        // - `buffer` is writable for the given length and aligned for
        //   OBJECT_DIRECTORY_INFORMATION;
        // - `context` and `returned` are writable u32s.
        let status = unsafe {
            ntdll::NtQueryDirectoryObject(
                dir,
                buffer.as_mut_ptr().cast::<c_void>(),
                (buffer.len() * 8) as u32,
                1,
                restart,
                &mut context,
                &mut returned,
            )
        };
        restart = 0;
        if status == ntdll::STATUS_NO_MORE_ENTRIES {
            return Ok(names);
        }
        if status < 0 {
            return Err(io::Error::other(format!("reading the object directory failed (NTSTATUS {status:#x})")));
        }
        // SAFETY: on success the buffer starts with one
        // OBJECT_DIRECTORY_INFORMATION whose strings point into the buffer.
        let info = unsafe { &*buffer.as_ptr().cast::<ntdll::DirectoryInformation>() };
        let text = |s: &UNICODE_STRING| {
            // SAFETY: `Buffer` holds `Length` bytes of UTF-16 inside `buffer`
            // (or is empty).
            let units = unsafe { std::slice::from_raw_parts(s.Buffer, usize::from(s.Length) / 2) };
            String::from_utf16_lossy(units)
        };
        if !info.name.Buffer.is_null() && !info.type_name.Buffer.is_null() && text(&info.type_name) == "Section" {
            names.push(text(&info.name));
        }
    }
}

/// The live named sections of the session, except copydata's own objects
/// (named `copydata.KIND.NAME`, see [`crate::sync`]).
pub(crate) fn list() -> Result<Vec<SectionInfo>, ListError> {
    let all = list_all().map_err(|source| ListError::Io { what: Listing::Sections, source })?;
    Ok(all.into_iter().filter(|s| !s.name.starts_with("copydata.")).collect())
}

/// Every live named section of the session with a valid copydata name.
pub(crate) fn list_all() -> io::Result<Vec<SectionInfo>> {
    let mut session = 0u32;
    // SAFETY: `session` is a writable u32; the pid is our own.
    if unsafe { ProcessIdToSessionId(std::process::id(), &mut session) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let dir = open_directory(&format!("\\Sessions\\{session}\\BaseNamedObjects"))
        .or_else(|_| open_directory("\\BaseNamedObjects"))?;
    let mut out = Vec::new();
    for name in section_names(raw(&dir))? {
        let Ok(valid) = Name::new(&name) else { continue };
        let n = object_name(&valid);
        // SAFETY: `n` is a NUL-terminated UTF-16 string; the handle is not
        // inheritable and is owned below.
        let h = unsafe { OpenFileMappingW(SECTION_QUERY | FILE_MAP_READ, 0, n.as_ptr()) };
        // Gone since it was listed, or not ours to query: skip it.
        let Ok(h) = owned(h) else { continue };
        if let Ok(size) = section_size(raw(&h)) {
            out.push(SectionInfo { name, size });
        }
    }
    Ok(out)
}

pub(crate) fn remove(_name: &Name) -> Result<(), RemoveError> {
    Err(RemoveError::Unsupported)
}
