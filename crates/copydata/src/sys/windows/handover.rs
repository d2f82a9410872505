//! Handing a section to an unrelated process with `DuplicateHandle`.

use std::os::windows::io::{FromRawHandle, OwnedHandle, RawHandle};

use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER};
use windows_sys::Win32::System::Memory::FILE_MAP_READ;
use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_DUP_HANDLE};

use super::{
    SECTION_QUERY, Section as SysSection, duplicate, duplicate_from, foreign_section_size, owned, raw, size_matches,
};
use crate::error::HandoverError;
use crate::name::Name;
use crate::section::{Access, Section};

/// A section handle duplicated into another process: tell that process these
/// values (by any channel), and it calls [`adopt_section`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicated {
    /// The handle's value, valid in the target process only.
    pub handle: u64,
    /// The section's size in bytes.
    pub len: u64,
    /// The handle's access (that of the section it was duplicated from).
    pub access: Access,
}

/// Duplicates `section`'s handle into the process `pid` (`DuplicateHandle`),
/// with the section's access; pass a [`Section::read_only`] handle to hand
/// over read-only.
///
/// The new handle belongs to the target process from now on: if it never
/// adopts it, it stays open there until that process exits.
#[doc(alias = "DuplicateHandle")]
pub fn duplicate_into(section: &Section, pid: u32) -> Result<Duplicated, HandoverError> {
    let process = open_for_duplication(pid)?;
    let inner = section.inner();
    let value = duplicate(inner.handle(), raw(&process), 0, false).map_err(HandoverError::Io)?;
    Ok(Duplicated { handle: value as usize as u64, len: section.len(), access: section.access() })
}

/// Takes ownership of a section handle another process duplicated into this
/// one with [`duplicate_into`].
///
/// The handle is checked to be a section of `len` bytes (the kernel keeps
/// the size rounded up to a page, so that is what is compared);
/// `access` can only restrict what the handle allows (a write request on a
/// read-only handle fails at [`Section::map_mut`]). On failure the handle
/// is not taken: it is still the caller's, to close with `CloseHandle`.
///
/// # Safety
///
/// `handle` must be a handle value that was duplicated into this process for
/// this caller, and that nothing else in this process owns or closes: it is
/// closed when the returned section is dropped.
pub unsafe fn adopt_section(
    handle: u64,
    len: u64,
    access: Access,
    name: Option<&str>,
) -> Result<Section, HandoverError> {
    let name = name.map(Name::new).transpose().map_err(|e| HandoverError::Malformed(format!("bad name: {e}")))?;
    let raw = usize::try_from(handle).map_err(|_| HandoverError::Malformed("handle out of range".into()))?;
    let size =
        foreign_section_size(raw as _).map_err(|e| HandoverError::Malformed(format!("handle {handle:#x}: {e}")))?;
    if !size_matches(len, size) {
        return Err(HandoverError::Malformed(format!("size {len} does not fit the section of {size} bytes")));
    }
    // SAFETY: the caller guarantees the handle was given to us alone; it was
    // just checked to be a live section.
    let owned = unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) };
    Ok(Section::from_parts(SysSection::from_handle(owned, len, access), name))
}

/// A handle on process `pid` that allows moving handles in and out of it.
fn open_for_duplication(pid: u32) -> Result<OwnedHandle, HandoverError> {
    // SAFETY: opens a process handle by id; no memory is passed.
    let process = unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, pid) };
    owned(process).map_err(|e| match e.raw_os_error().map(|c| c as u32) {
        Some(ERROR_INVALID_PARAMETER) => HandoverError::NoSuchProcess { pid },
        Some(ERROR_ACCESS_DENIED) => HandoverError::PermissionDenied(e),
        _ => HandoverError::Io(e),
    })
}

/// Takes a copy of the section handle `value` of `process` (`DuplicateHandle`
/// out of it; the process handle needs `PROCESS_DUP_HANDLE`), for a message
/// from that process: the handle made is this process's own, so a peer
/// naming a bogus value can at worst reach its own objects, never one this
/// process already owns. A read-only `access` asks for read rights only, so
/// the copy cannot write whatever the peer's handle allows. The result is
/// checked to be a section of `len` bytes.
pub(crate) fn duplicate_out_of(
    process: &OwnedHandle,
    value: u64,
    len: u64,
    access: Access,
    name: Option<&str>,
) -> Result<Section, HandoverError> {
    let name = name.map(Name::new).transpose().map_err(|e| HandoverError::Malformed(format!("bad name: {e}")))?;
    let rights = match access {
        Access::ReadOnly => SECTION_QUERY | FILE_MAP_READ,
        Access::ReadWrite => 0,
    };
    let handle = duplicate_from(raw(process), value, rights)
        .map_err(|e| HandoverError::Malformed(format!("handle {value:#x} of the peer: {e}")))?;
    let size =
        foreign_section_size(raw(&handle)).map_err(|e| HandoverError::Malformed(format!("handle {value:#x}: {e}")))?;
    if !size_matches(len, size) {
        return Err(HandoverError::Malformed(format!("size {len} does not fit the section of {size} bytes")));
    }
    Ok(Section::from_parts(SysSection::from_handle(handle, len, access), name))
}

#[cfg(test)]
mod tests {
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::System::Memory::{CreateFileMappingW, PAGE_READWRITE, SEC_COMMIT, SEC_RESERVE};

    use super::*;
    use crate::sys::current_process;

    /// A handle to a fresh 1 MiB anonymous mapping made with `flags`.
    fn mapping(flags: u32) -> OwnedHandle {
        // SAFETY: an anonymous mapping (no file, no name, default security).
        let h = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                std::ptr::null(),
                PAGE_READWRITE | flags,
                0,
                1 << 20,
                std::ptr::null(),
            )
        };
        owned(h).expect("CreateFileMappingW")
    }

    #[test]
    fn a_section_only_reserved_is_refused_whichever_way_it_comes() {
        let me = open_for_duplication(std::process::id()).unwrap();
        for (flags, ok) in [(0, true), (SEC_COMMIT, true), (SEC_RESERVE, false)] {
            let h = mapping(flags);
            // Pulled out of a peer (here: this very process), as a mailbox does.
            let pulled = duplicate_out_of(&me, raw(&h) as usize as u64, 1 << 20, Access::ReadWrite, None);
            // Pushed into this process and adopted, as the public hand-over does.
            let value = duplicate(raw(&h), current_process(), 0, false).unwrap();
            // SAFETY: `value` was just duplicated for this call alone.
            let adopted = unsafe { adopt_section(value as usize as u64, 1 << 20, Access::ReadWrite, None) };
            for result in [pulled.map(drop), adopted.map(drop)] {
                match (ok, result) {
                    (true, Ok(())) => {}
                    (false, Err(HandoverError::Malformed(m))) => assert!(m.contains("SEC_RESERVE"), "{m}"),
                    (_, other) => panic!("flags {flags:#x}: {other:?}"),
                }
            }
            if !ok {
                // The refused handle was not adopted: close it here.
                // SAFETY: `value` is ours and nothing else owns it.
                drop(unsafe { OwnedHandle::from_raw_handle(value as RawHandle) });
            }
        }
    }
}
