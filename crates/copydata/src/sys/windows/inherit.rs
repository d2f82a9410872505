//! Passing sections to a child: inheritable duplicates that exist only while
//! the child is created, described by a token in `COPYDATA_SECTIONS`.
//!
//! Token: `1;` then one entry per section, separated by `,`:
//! `HANDLE:SIZE:r|w[:NAME]`. The child checks that each handle is an
//! inherited section of exactly that size before taking it.

use std::io;
use std::os::windows::io::{FromRawHandle, OwnedHandle, RawHandle};
use std::process::{Child, Command};

use windows_sys::Win32::Foundation::{GetHandleInformation, HANDLE, HANDLE_FLAG_INHERIT, SetHandleInformation};

use super::{Section, current_process, duplicate, section_size};
use crate::error::InheritError;
use crate::name::Name;
use crate::section::{Access, INHERIT_VAR};

pub(crate) fn spawn_with_sections(cmd: &mut Command, sections: &[(&Section, Option<&Name>)]) -> io::Result<Child> {
    let mut dups = Vec::with_capacity(sections.len());
    let mut entries = Vec::with_capacity(sections.len());
    for (section, name) in sections {
        let h = duplicate(section.handle(), current_process(), 0, true)?;
        // SAFETY: a fresh duplicate in this process, owned by nobody else;
        // closing it after the spawn ends its inheritability here.
        dups.push(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) });
        let rw = if section.access() == Access::ReadWrite { "w" } else { "r" };
        let mut entry = format!("{}:{}:{rw}", h as usize, section.len());
        if let Some(name) = name {
            entry.push(':');
            entry.push_str(name.as_str());
        }
        entries.push(entry);
    }
    cmd.env(INHERIT_VAR, format!("1;{}", entries.join(",")));
    let child = cmd.spawn();
    drop(dups);
    child
}

fn malformed(reason: impl Into<String>) -> InheritError {
    InheritError::Malformed { var: INHERIT_VAR, reason: reason.into() }
}

fn stale(reason: impl Into<String>) -> InheritError {
    InheritError::Stale { var: INHERIT_VAR, reason: reason.into() }
}

struct Entry {
    handle: usize,
    len: u64,
    access: Access,
    name: Option<Name>,
}

fn parse(token: &str) -> Result<Vec<Entry>, InheritError> {
    let rest = token.strip_prefix("1;").ok_or_else(|| malformed("unknown version"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split(',')
        .map(|entry| {
            let mut parts = entry.split(':');
            let handle = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| malformed(format!("bad handle in {entry:?}")))?;
            let len =
                parts.next().and_then(|p| p.parse().ok()).ok_or_else(|| malformed(format!("bad size in {entry:?}")))?;
            let access = match parts.next() {
                Some("r") => Access::ReadOnly,
                Some("w") => Access::ReadWrite,
                _ => return Err(malformed(format!("bad access in {entry:?}"))),
            };
            let name = match parts.next() {
                None => None,
                Some(n) => Some(Name::new(n).map_err(|e| malformed(format!("bad name: {e}")))?),
            };
            if parts.next().is_some() {
                return Err(malformed(format!("extra fields in {entry:?}")));
            }
            Ok(Entry { handle, len, access, name })
        })
        .collect::<Result<Vec<Entry>, InheritError>>()
        .and_then(|entries| {
            for (i, e) in entries.iter().enumerate() {
                if entries[..i].iter().any(|o| o.handle == e.handle) {
                    return Err(malformed("a handle is listed twice"));
                }
            }
            Ok(entries)
        })
}

pub(crate) fn take_inherited(token: &str) -> Result<Vec<(Section, Option<Name>)>, InheritError> {
    let entries = parse(token)?;
    for e in &entries {
        let h = e.handle as HANDLE;
        let mut flags = 0u32;
        // SAFETY: only queries the handle's flags; an invalid value fails.
        let valid = unsafe { GetHandleInformation(h, &mut flags) } != 0;
        if !valid || flags & HANDLE_FLAG_INHERIT == 0 || section_size(h).ok() != Some(e.len) {
            return Err(stale(format!("handle {:#x} is not the section the parent passed", e.handle)));
        }
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        // SAFETY:
        // - the handle was inherited (valid, with the inherit flag) and is a
        //   section of the announced size (checked above);
        // - nothing else in this process owns it: `inherited_sections` hands
        //   the token out once.
        let handle = unsafe { OwnedHandle::from_raw_handle(e.handle as RawHandle) };
        // Stop passing it on to this process's own children.
        // SAFETY: `handle` is valid; only its inherit flag changes.
        if unsafe { SetHandleInformation(e.handle as HANDLE, HANDLE_FLAG_INHERIT, 0) } == 0 {
            return Err(InheritError::Io(io::Error::last_os_error()));
        }
        out.push((Section::from_handle(handle, e.len, e.access), e.name));
    }
    Ok(out)
}
