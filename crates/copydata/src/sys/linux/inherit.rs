//! Passing sections to a child: descriptors made inheritable only in the
//! forked child.
//!
//! Token fields (see `crate::inherit`): `FD:DEV:INO`. The child checks that
//! each descriptor is inheritable and open on exactly that object (device and
//! inode) before taking it, so a token that leaked into a grandchild that did
//! not get the descriptors is refused instead of taking over whatever file
//! has that number there.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs as rfs;
use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};

use super::{Section, access_of, kind_of, reopen};
use crate::error::InheritError;
use crate::inherit::{self, number};
use crate::name::Name;
use crate::section::Access;

/// A descriptor passed to a child.
pub(crate) type Passed = OwnedFd;

/// What a child needs from this process to take `sections`: a private
/// descriptor for each (still close-on-exec, at 3 or above so it cannot land
/// on a standard stream number) and the token naming them.
pub(crate) fn prepare_inheritance(sections: &[(&Section, Option<&Name>)]) -> io::Result<(Vec<OwnedFd>, String)> {
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(sections.len());
    let mut entries = Vec::with_capacity(sections.len());
    for (section, name) in sections {
        let fd = section.transfer_fd()?;
        let st = rfs::fstat(&fd)?;
        entries.push(([fd.as_raw_fd().to_string(), st.st_dev.to_string(), st.st_ino.to_string()], *name));
        fds.push(fd);
    }
    Ok((fds, inherit::encode(entries)))
}

pub(crate) fn spawn_with_sections(cmd: &mut Command, sections: &[(&Section, Option<&Name>)]) -> io::Result<Child> {
    let (fds, token) = prepare_inheritance(sections)?;
    cmd.env(crate::INHERIT_VAR, token);
    // The hook stays on the Command and runs at each of its later spawns
    // too (std has no way to remove it): it acts only while `armed`, which
    // is this spawn, so a later child of the same Command gets none of
    // these descriptors (closed by then anyway).
    let armed = Arc::new(AtomicBool::new(true));
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let hook = {
        let armed = armed.clone();
        move || {
            if !armed.load(Ordering::Acquire) {
                return Ok(());
            }
            for &fd in &raw {
                // SAFETY: `fd` is open in the child (see below) and only
                // its flags change.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                fcntl_setfd(fd, FdFlags::empty())?;
            }
            Ok(())
        }
    };
    // SAFETY:
    // - the hook runs in the forked child before exec; it only loads an
    //   atomic and calls fcntl, which are async-signal-safe, and allocates
    //   nothing (`raw` was built before the fork and is only read);
    // - while it is armed (this spawn only: disarmed below, before `fds`
    //   closes them) the descriptors it touches are open in the child: they
    //   were open in the parent at fork time.
    unsafe { cmd.pre_exec(hook) };
    let child = cmd.spawn();
    armed.store(false, Ordering::Release);
    drop(fds);
    // Nor does a later child get the token.
    cmd.env_remove(crate::INHERIT_VAR);
    child
}

/// Takes the descriptor an entry (`FD:DEV:INO`) names, once it is checked
/// to be inheritable and open on that object, and makes it close-on-exec.
fn take_one(fields: &[&str]) -> Result<OwnedFd, InheritError> {
    let fd: RawFd = number(fields[0], "descriptor")?;
    let dev: u64 = number(fields[1], "device")?;
    let ino: u64 = number(fields[2], "inode")?;
    if fd < 3 {
        return Err(InheritError::malformed(format!("descriptor {fd} is a standard stream")));
    }
    // SAFETY: only inspected (flags and status), not owned, while it is not
    // yet known to be ours; an fd that is not open makes the calls fail with
    // EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let inheritable = fcntl_getfd(borrowed).map(|f| !f.contains(FdFlags::CLOEXEC));
    match (inheritable, rfs::fstat(borrowed)) {
        (Ok(true), Ok(st)) if st.st_dev == dev && st.st_ino == ino => {
            // Sections are memfds, /dev/shm objects and files: regular files
            // all. A pipe or socket is no memory to map (and not taken).
            let kind = rfs::FileType::from_raw_mode(st.st_mode);
            if kind != rfs::FileType::RegularFile {
                return Err(InheritError::malformed(format!("descriptor {fd} is a {kind:?}, not a section")));
            }
            // SAFETY:
            // - the descriptor was inherited across exec (it is open and not
            //   close-on-exec, checked above) and refers to the object the
            //   parent named (device and inode checked);
            // - nothing else in this process owns it: std opens no inherited
            //   descriptors, `inherited_sections` hands the token out once,
            //   and an entry naming it again finds it close-on-exec (set
            //   next) and fails above.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            fcntl_setfd(&fd, FdFlags::CLOEXEC).map_err(|e| InheritError::Io(e.into()))?;
            Ok(fd)
        }
        _ => Err(InheritError::stale(format!("descriptor {fd} is not the section the parent passed"))),
    }
}

pub(crate) fn take_inherited(token: &str) -> Result<Vec<(Section, Option<Name>)>, InheritError> {
    let io = |e: rustix::io::Errno| InheritError::Io(e.into());
    // Each descriptor is owned, and made close-on-exec, as soon as it is
    // checked: when a later entry fails, the ones taken so far are closed
    // rather than left open and inheritable, and a descriptor named twice
    // is found close-on-exec the second time (stale), never owned twice.
    // The entries after a failed one that check out are closed too: the
    // sections can be taken only once, so nothing could take them later,
    // and they would pass on to this process's own children.
    let entries = inherit::decode(token)?;
    let mut checked: Vec<(OwnedFd, Option<Name>)> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match take_one(&e.fields) {
            Ok(fd) => checked.push((fd, e.name.clone())),
            Err(err) => {
                for rest in &entries[i + 1..] {
                    drop(take_one(&rest.fields));
                }
                return Err(err);
            }
        }
    }
    let mut out = Vec::with_capacity(checked.len());
    for (fd, name) in checked {
        let st = rfs::fstat(&fd).map_err(io)?;
        let access: Access = access_of(&fd).map_err(InheritError::Io)?;
        let kind = kind_of(&fd, name.is_some());
        // A named section's holder lock belongs to the open description,
        // which a parent that started several children from one set of
        // descriptors gave to all of them: this child takes a description
        // and a share of the lock of its own, so that its dropping the
        // section never takes a sibling's hold for gone.
        let fd = if name.is_some() {
            let own = reopen(&fd, access).map_err(io)?;
            rfs::flock(&own, rfs::FlockOperation::LockShared).map_err(io)?;
            own
        } else {
            fd
        };
        out.push((Section::from_fd(fd, st.st_size as u64, access, kind, name.as_ref()), name));
    }
    Ok(out)
}
