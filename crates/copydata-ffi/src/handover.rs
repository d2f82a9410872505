//! Handing a section to an unrelated running process outside a mailbox
//! (`copydata::os`): over a Unix socket on Linux (`SCM_RIGHTS`), by
//! `DuplicateHandle` on Windows. Each system has its own pair of functions;
//! the other system's pair fails with `COPYDATA_STATUS_UNSUPPORTED`.

use crate::error::{Error, Status, guard, handle, out_arg};
use crate::section::{Section, access_arg, give};

impl From<copydata::HandoverError> for Error {
    fn from(e: copydata::HandoverError) -> Error {
        let status = match &e {
            copydata::HandoverError::Malformed(_) => Status::Incompatible,
            copydata::HandoverError::PeerClosed => Status::ReceiverDied,
            copydata::HandoverError::NoSuchProcess { .. } => Status::NotFound,
            copydata::HandoverError::PermissionDenied(_) => Status::PermissionDenied,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

/// A socket descriptor argument.
///
/// # Safety
///
/// The descriptor, if open, stays open for `'a` (a number that is not open
/// makes the calls on it fail with EBADF).
#[cfg(target_os = "linux")]
unsafe fn socket_arg<'a>(socket: i32) -> Result<std::os::fd::BorrowedFd<'a>, Error> {
    if socket < 0 {
        return Err(Error::invalid(format!("socket {socket} is no descriptor")));
    }
    // SAFETY: not -1; open or not, only used while the caller's contract
    // holds.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) })
}

fn unsupported(what: &str) -> Error {
    Error::new(Status::Unsupported, format!("{what} is not available on this system"))
}

/// Linux: sends `section` over the connected Unix stream socket `socket`
/// (`SCM_RIGHTS`, with a small header naming its size, access and name);
/// the receiver gets its own handle to the same memory, with the same
/// access, from `copydata_section_recv`. Send a
/// `copydata_section_read_only` handle to hand over read-only.
///
/// Fails with `COPYDATA_STATUS_RECEIVER_DIED` when the peer closed the
/// socket, `COPYDATA_STATUS_UNSUPPORTED` off Linux.
///
/// # Safety
///
/// `section` is NULL or a live section; `socket` is a descriptor this
/// process has open (or any number: a closed one fails).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_send(socket: i32, section: *const Section) -> Status {
    guard(|| {
        // SAFETY: NULL or a live section (the contract).
        let section = unsafe { handle(section, "section") }?;
        #[cfg(target_os = "linux")]
        {
            // SAFETY: only used for the duration of this call (the contract).
            let socket = unsafe { socket_arg(socket) }?;
            Ok(copydata::os::linux::send_section(socket, &section.inner)?)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (socket, section);
            Err(unsupported("copydata_section_send"))
        }
    })
}

/// Linux: receives a section sent with `copydata_section_send` (from C,
/// Rust or Python) from the connected Unix stream socket `socket`, and
/// stores it in `*out`. Blocks until one arrives (give the socket a receive
/// timeout, `SO_RCVTIMEO`, to bound the wait). Everything received is
/// checked: anything unexpected fails with `COPYDATA_STATUS_INCOMPATIBLE`
/// and closes what came with it; `COPYDATA_STATUS_RECEIVER_DIED` when the
/// peer closed the socket.
///
/// # Safety
///
/// `socket` is a descriptor this process has open (or any number: a closed
/// one fails); `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_recv(socket: i32, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY: `out` is NULL or valid storage (the contract).
        let out = unsafe { out_arg(out) }?;
        #[cfg(target_os = "linux")]
        {
            // SAFETY: only used for the duration of this call (the contract).
            let socket = unsafe { socket_arg(socket) }?;
            give(out, copydata::os::linux::recv_section(socket)?)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (socket, out);
            Err(unsupported("copydata_section_recv"))
        }
    })
}

/// Windows: duplicates `section`'s handle into the running process `pid`
/// (`DuplicateHandle`), with the section's access (duplicate a
/// `copydata_section_read_only` handle to hand over read-only). Tell that
/// process `*handle` (valid there only) and the section's size and access
/// by any channel; it calls `copydata_section_adopt`. The new handle
/// belongs to that process: if it never adopts it, it stays open there
/// until the process exits.
///
/// Fails with `COPYDATA_STATUS_NOT_FOUND` (no such process),
/// `COPYDATA_STATUS_PERMISSION_DENIED`, `COPYDATA_STATUS_UNSUPPORTED` off
/// Windows.
///
/// # Safety
///
/// `section` is NULL or a live section; `handle` is NULL or points to a
/// writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_duplicate_into(
    section: *const Section,
    pid: u32,
    handle_out: *mut u64,
) -> Status {
    guard(|| {
        // SAFETY: NULL or a writable `uint64_t` (the contract).
        let handle_out = unsafe { handle_out.as_mut() }.ok_or_else(|| Error::invalid("handle is NULL"))?;
        *handle_out = 0;
        // SAFETY: NULL or a live section (the contract).
        let section = unsafe { handle(section, "section") }?;
        #[cfg(windows)]
        {
            *handle_out = copydata::os::windows::duplicate_into(&section.inner, pid)?.handle;
            Ok(())
        }
        #[cfg(not(windows))]
        {
            let _ = (section, pid);
            Err(unsupported("copydata_section_duplicate_into"))
        }
    })
}

/// Windows: takes ownership of a section handle another process duplicated
/// into this one (`copydata_section_duplicate_into`), of `size` bytes, with
/// `access` (`COPYDATA_READ_ONLY` or `COPYDATA_READ_WRITE`: it can only
/// restrict what the handle allows), and stores the section in `*out`. The
/// handle is checked to be a section of that size (rounded up to a page, as
/// the kernel keeps it): `COPYDATA_STATUS_INCOMPATIBLE` otherwise. It is
/// closed with the section. On any failure the handle is not taken: it is
/// still the caller's, to close with `CloseHandle`.
///
/// # Safety
///
/// `handle` is a handle value duplicated into this process for this
/// caller, which nothing else in this process owns or closes; `out` is
/// NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_section_adopt(handle: u64, size: u64, access: u32, out: *mut *mut Section) -> Status {
    guard(|| {
        // SAFETY: `out` is NULL or valid storage (the contract).
        let out = unsafe { out_arg(out) }?;
        let access = access_arg(access)?;
        #[cfg(windows)]
        {
            // SAFETY: the handle was duplicated into this process for this
            // caller, and nothing else here owns it (the contract).
            give(out, unsafe { copydata::os::windows::adopt_section(handle, size, access, None) }?)
        }
        #[cfg(not(windows))]
        {
            let _ = (handle, size, access, out);
            Err(unsupported("copydata_section_adopt"))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::ptr::{null, null_mut};

    use super::*;
    use crate::section::{
        COPYDATA_READ_ONLY, COPYDATA_READ_WRITE, copydata_section_anonymous, copydata_section_close,
        copydata_section_map, copydata_view_data, copydata_view_unmap,
    };
    use crate::test_util::last;

    /// Writes `text` at the start of `s` through a view.
    unsafe fn put(s: *const Section, text: &[u8]) {
        let mut v = null_mut();
        // SAFETY: a live section and out storage; the view is unmapped once.
        unsafe {
            assert_eq!(copydata_section_map(s, 0, text.len(), COPYDATA_READ_WRITE, &mut v), Status::Ok, "{}", last());
            std::ptr::copy_nonoverlapping(text.as_ptr(), copydata_view_data(v).cast(), text.len());
            copydata_view_unmap(v);
        }
    }

    /// The first `n` bytes of `s`.
    unsafe fn get(s: *const Section, n: usize) -> Vec<u8> {
        let mut v = null_mut();
        // SAFETY: as in `put`.
        unsafe {
            assert_eq!(copydata_section_map(s, 0, n, COPYDATA_READ_ONLY, &mut v), Status::Ok, "{}", last());
            let out = std::slice::from_raw_parts(copydata_view_data(v).cast::<u8>(), n).to_vec();
            copydata_view_unmap(v);
            out
        }
    }

    #[test]
    fn a_section_is_handed_over_on_this_system_and_refused_on_the_other() {
        let mut s = null_mut();
        // SAFETY: valid outs; every handle is closed once.
        unsafe {
            assert_eq!(copydata_section_anonymous(4096, &mut s), Status::Ok, "{}", last());
            put(s, b"handed");
            let mut got = null_mut();
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                assert_eq!(copydata_section_send(a.as_raw_fd(), s), Status::Ok, "{}", last());
                assert_eq!(copydata_section_recv(b.as_raw_fd(), &mut got), Status::Ok, "{}", last());
                assert_eq!(get(got, 6), b"handed");
                copydata_section_close(got);
                // Garbage instead of a frame; a closed peer.
                std::io::Write::write_all(&mut &a, b"not a frame!!!").unwrap();
                assert_eq!(copydata_section_recv(b.as_raw_fd(), &mut got), Status::Incompatible);
                assert!(got.is_null());
                drop(a);
                assert_eq!(copydata_section_recv(b.as_raw_fd(), &mut got), Status::ReceiverDied);
                assert_eq!(copydata_section_send(-1, s), Status::InvalidArgument);
                assert_eq!(copydata_section_recv(-5, &mut got), Status::InvalidArgument);
                let mut h = 7;
                assert_eq!(copydata_section_duplicate_into(s, std::process::id(), &mut h), Status::Unsupported);
                assert_eq!(h, 0);
                assert_eq!(copydata_section_adopt(1, 4096, COPYDATA_READ_WRITE, &mut got), Status::Unsupported);
            }
            #[cfg(windows)]
            {
                let mut h = 0;
                assert_eq!(copydata_section_duplicate_into(s, std::process::id(), &mut h), Status::Ok, "{}", last());
                assert_ne!(h, 0);
                // The wrong size is refused (and the handle not taken).
                assert_eq!(copydata_section_adopt(h, 1 << 20, COPYDATA_READ_WRITE, &mut got), Status::Incompatible);
                assert_eq!(copydata_section_adopt(h, 4096, COPYDATA_READ_ONLY, &mut got), Status::Ok, "{}", last());
                assert_eq!(get(got, 6), b"handed");
                let mut v = null_mut();
                assert_eq!(copydata_section_map(got, 0, 1, COPYDATA_READ_WRITE, &mut v), Status::PermissionDenied);
                copydata_section_close(got);
                assert_eq!(copydata_section_duplicate_into(s, u32::MAX - 3, &mut h), Status::NotFound);
                assert_eq!(copydata_section_send(3, s), Status::Unsupported);
                assert_eq!(copydata_section_recv(3, &mut got), Status::Unsupported);
            }
            assert_eq!(copydata_section_send(0, null()), Status::InvalidArgument);
            assert_eq!(copydata_section_adopt(1, 4096, 9, &mut got), Status::InvalidArgument);
            assert_eq!(copydata_section_duplicate_into(s, 1, null_mut()), Status::InvalidArgument);
            let mut h = 0x1234;
            assert_eq!(copydata_section_duplicate_into(null(), 1, &mut h), Status::InvalidArgument);
            assert_eq!(h, 0, "a failure leaves *handle 0");
            copydata_section_close(s);
        }
    }
}
