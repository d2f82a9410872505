//! Passing sections to a child: inheritable duplicates that exist while the
//! child is created (`spawn_with_sections`), or while the caller's
//! `Inheritance` lives.
//!
//! Token fields (see `crate::inherit`): `HANDLE:SIZE:r|w`. The child checks
//! that each handle is an inherited section of that size (as the kernel
//! keeps it: rounded up to a page) before taking it.

use std::io;
use std::os::windows::io::{FromRawHandle, OwnedHandle, RawHandle};
use std::process::{Child, Command};

use windows_sys::Win32::Foundation::{GetHandleInformation, HANDLE, HANDLE_FLAG_INHERIT, SetHandleInformation};

use super::{Section, current_process, duplicate, foreign_section_size, size_matches};
use crate::error::InheritError;
use crate::inherit::{self, number};
use crate::name::Name;
use crate::section::Access;

/// A handle passed to a child.
pub(crate) type Passed = OwnedHandle;

/// What a child needs from this process to take `sections`: an
/// inheritable duplicate of each handle (`DuplicateHandle` with
/// `bInheritHandle`, so it carries `HANDLE_FLAG_INHERIT`; closing it ends
/// its inheritability here) and the token naming them.
pub(crate) fn prepare_inheritance(sections: &[(&Section, Option<&Name>)]) -> io::Result<(Vec<OwnedHandle>, String)> {
    let mut dups = Vec::with_capacity(sections.len());
    let mut entries = Vec::with_capacity(sections.len());
    for (section, name) in sections {
        let h = duplicate(section.handle(), current_process(), 0, true)?;
        // SAFETY: a fresh duplicate in this process, owned by nobody else.
        dups.push(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) });
        let rw = if section.access() == Access::ReadWrite { "w" } else { "r" };
        entries.push(([(h as usize).to_string(), section.len().to_string(), rw.to_string()], *name));
    }
    Ok((dups, inherit::encode(entries)))
}

pub(crate) fn spawn_with_sections(cmd: &mut Command, sections: &[(&Section, Option<&Name>)]) -> io::Result<Child> {
    let (dups, token) = prepare_inheritance(sections)?;
    cmd.env(crate::INHERIT_VAR, token);
    // std creates the process with `bInheritHandles = TRUE`; the duplicates
    // stop being inheritable when they are closed right after.
    let child = cmd.spawn();
    drop(dups);
    // A later child of the same Command gets neither the handles (closed)
    // nor the token.
    cmd.env_remove(crate::INHERIT_VAR);
    child
}

/// Takes the handle an entry (`HANDLE:SIZE:ACCESS`) names, once it is
/// checked to be an inheritable section of that size, and makes it
/// non-inheritable.
fn take_one(fields: &[&str]) -> Result<(OwnedHandle, u64, Access), InheritError> {
    let handle: usize = number(fields[0], "handle")?;
    let len: u64 = number(fields[1], "size")?;
    let access = match fields[2] {
        "r" => Access::ReadOnly,
        "w" => Access::ReadWrite,
        other => return Err(InheritError::malformed(format!("bad access {other:?}"))),
    };
    let h = handle as HANDLE;
    let mut flags = 0u32;
    // SAFETY: only queries the handle's flags; an invalid value fails.
    let valid = unsafe { GetHandleInformation(h, &mut flags) } != 0;
    if !valid || flags & HANDLE_FLAG_INHERIT == 0 || !foreign_section_size(h).is_ok_and(|size| size_matches(len, size))
    {
        return Err(InheritError::stale(format!("handle {handle:#x} is not the section the parent passed")));
    }
    // SAFETY:
    // - the handle was inherited (valid, with the inherit flag) and is a
    //   section of the announced size (checked above);
    // - nothing else in this process owns it: `inherited_sections` hands the
    //   token out once, and an entry naming it again finds its inherit flag
    //   cleared (next) and fails above.
    let owned = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
    // Stop passing it on to this process's own children.
    // SAFETY: `handle` is valid; only its inherit flag changes.
    if unsafe { SetHandleInformation(handle as HANDLE, HANDLE_FLAG_INHERIT, 0) } == 0 {
        return Err(InheritError::Io(io::Error::last_os_error()));
    }
    Ok((owned, len, access))
}

pub(crate) fn take_inherited(token: &str) -> Result<Vec<(Section, Option<Name>)>, InheritError> {
    // Each handle is owned, and made non-inheritable, as soon as it is
    // checked: when a later entry fails, the ones taken so far are closed,
    // not left inheritable. The entries after a failed one that check out
    // are closed too: the sections can be taken only once, so nothing could
    // take them later, and they would pass on to this process's children.
    let entries = inherit::decode(token)?;
    let mut checked = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match take_one(&e.fields) {
            Ok((owned, len, access)) => checked.push((owned, len, access, e.name.clone())),
            Err(err) => {
                for rest in &entries[i + 1..] {
                    drop(take_one(&rest.fields));
                }
                return Err(err);
            }
        }
    }
    Ok(checked.into_iter().map(|(owned, len, access, name)| (Section::from_handle(owned, len, access), name)).collect())
}
