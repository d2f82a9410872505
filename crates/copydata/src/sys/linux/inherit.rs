//! Passing sections to a child: descriptors made inheritable only in the
//! forked child, described by a token in `COPYDATA_SECTIONS`.
//!
//! Token: `1;` then one entry per section, separated by `,`:
//! `FD:DEV:INO[:NAME]`. The child checks that each descriptor is open on
//! exactly that object (device and inode) before taking it, so a token that
//! leaked into a grandchild that did not get the descriptors is refused
//! instead of taking over whatever file has that number there.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::Arc;

use rustix::fs as rfs;
use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};

use super::{Section, access_of, kind_of};
use crate::error::InheritError;
use crate::name::Name;
use crate::section::INHERIT_VAR;

pub(crate) fn spawn_with_sections(cmd: &mut Command, sections: &[(&Section, Option<&Name>)]) -> io::Result<Child> {
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(sections.len());
    let mut entries = Vec::with_capacity(sections.len());
    for (section, name) in sections {
        // A private descriptor (still close-on-exec here), at 3 or above so
        // it cannot land on a standard stream number.
        let fd = section.transfer_fd()?;
        let st = rfs::fstat(&fd)?;
        let mut entry = format!("{}:{}:{}", fd.as_raw_fd(), st.st_dev, st.st_ino);
        if let Some(name) = name {
            entry.push(':');
            entry.push_str(name.as_str());
        }
        entries.push(entry);
        fds.push(fd);
    }
    cmd.env(INHERIT_VAR, format!("1;{}", entries.join(",")));
    // The duplicates must stay open for as long as the Command may spawn
    // (the hook runs at every spawn), so the closure owns them.
    let fds = Arc::new(fds);
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let hook = move || {
        let _keep = &fds;
        for &fd in &raw {
            // SAFETY: `fd` is open in the child (see below) and only its
            // flags change.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            fcntl_setfd(fd, FdFlags::empty())?;
        }
        Ok(())
    };
    // SAFETY:
    // - the hook runs in the forked child before exec; it only calls fcntl,
    //   which is async-signal-safe, and allocates nothing (`raw` was built
    //   before the fork and is only read);
    // - the descriptors it touches are open in the child: they were open in
    //   the parent at fork time, owned by `fds`, which the closure keeps alive.
    unsafe { cmd.pre_exec(hook) };
    cmd.spawn()
}

fn malformed(reason: impl Into<String>) -> InheritError {
    InheritError::Malformed { var: INHERIT_VAR, reason: reason.into() }
}

fn stale(reason: impl Into<String>) -> InheritError {
    InheritError::Stale { var: INHERIT_VAR, reason: reason.into() }
}

struct Entry {
    fd: RawFd,
    dev: u64,
    ino: u64,
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
            let mut num = |what: &str| -> Result<u64, InheritError> {
                parts.next().and_then(|p| p.parse().ok()).ok_or_else(|| malformed(format!("bad {what} in {entry:?}")))
            };
            let fd = num("descriptor")?;
            let dev = num("device")?;
            let ino = num("inode")?;
            let fd =
                RawFd::try_from(fd).ok().filter(|&fd| fd >= 3).ok_or_else(|| malformed("descriptor out of range"))?;
            let name = match parts.next() {
                None => None,
                Some(n) => Some(Name::new(n).map_err(|e| malformed(format!("bad name: {e}")))?),
            };
            if parts.next().is_some() {
                return Err(malformed(format!("extra fields in {entry:?}")));
            }
            Ok(Entry { fd, dev, ino, name })
        })
        .collect::<Result<Vec<Entry>, InheritError>>()
        .and_then(|entries| {
            for (i, e) in entries.iter().enumerate() {
                if entries[..i].iter().any(|o| o.fd == e.fd) {
                    return Err(malformed("a descriptor is listed twice"));
                }
            }
            Ok(entries)
        })
}

pub(crate) fn take_inherited(token: &str) -> Result<Vec<(Section, Option<Name>)>, InheritError> {
    let entries = parse(token)?;
    for e in &entries {
        // SAFETY: only inspected (flags and status), not owned, while it is
        // not yet known to be ours.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(e.fd) };
        let inheritable = fcntl_getfd(fd).map(|f| !f.contains(FdFlags::CLOEXEC));
        match (inheritable, rfs::fstat(fd)) {
            (Ok(true), Ok(st)) if st.st_dev == e.dev && st.st_ino == e.ino => {}
            _ => {
                return Err(stale(format!("descriptor {} is not the section the parent passed", e.fd)));
            }
        }
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        // SAFETY:
        // - the descriptor was inherited across exec (it is open and not
        //   close-on-exec, checked above) and refers to the object the parent
        //   named (device and inode checked);
        // - nothing else in this process owns it: std opens no inherited
        //   descriptors, and `inherited_sections` hands the token out once.
        let fd = unsafe { OwnedFd::from_raw_fd(e.fd) };
        fcntl_setfd(&fd, FdFlags::CLOEXEC).map_err(|e| InheritError::Io(e.into()))?;
        let st = rfs::fstat(&fd).map_err(|e| InheritError::Io(e.into()))?;
        let access = access_of(&fd).map_err(InheritError::Io)?;
        let kind = kind_of(&fd, e.name.is_some());
        out.push((Section::from_fd(fd, st.st_size as u64, access, kind, e.name.as_ref()), e.name));
    }
    Ok(out)
}
