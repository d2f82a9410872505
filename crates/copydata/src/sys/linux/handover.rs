//! Handing a section to an unrelated process over a connected Unix socket.
//!
//! Frame: `CDS1`, a flags byte (bit 0: read-only, bit 1: named), the size as
//! a little-endian `u64`, the name's length as one byte, the name; the
//! descriptor rides along as `SCM_RIGHTS` with the first byte. The receiver
//! treats all of it as untrusted: it checks the frame, that exactly one
//! descriptor came, and that the descriptor is a regular file at least as
//! large as announced.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::fs as rfs;

use super::{Section as SysSection, access_of, kind_of, scm};
use crate::error::HandoverError;
use crate::name::Name;
use crate::section::{Access, Section};

const MAGIC: &[u8; 4] = b"CDS1";
const HEADER: usize = 4 + 1 + 8 + 1;
const FLAG_RO: u8 = 1;
const FLAG_NAMED: u8 = 2;

fn io(e: impl Into<io::Error>) -> HandoverError {
    HandoverError::Io(e.into())
}

/// Sends `section` over the connected Unix socket `socket` (a
/// [`UnixStream`](std::os::unix::net::UnixStream) or any stream socket
/// descriptor). The receiver gets its own descriptor of the same memory with
/// the same access, via [`recv_section`].
///
/// To hand over read-only, send [`Section::read_only`]'s result.
#[doc(alias = "SCM_RIGHTS")]
#[doc(alias = "sendmsg")]
pub fn send_section(socket: impl AsFd, section: &Section) -> Result<(), HandoverError> {
    send_frame(socket, section, None)
}

/// [`send_section`] for a caller that must stay responsive while the peer
/// does not read (a language binding that runs signal handlers): waits for
/// room in the socket in slices of at most `slice`, calling `check` after
/// each one that brought none. An error from `check` ends the call as
/// [`HandoverError::Io`] of that error; if part of the frame went out
/// already, the stream is broken (close the socket). The socket's own send
/// timeout does not apply.
pub fn send_section_checked(
    socket: impl AsFd,
    section: &Section,
    slice: Duration,
    mut check: impl FnMut() -> io::Result<()>,
) -> Result<(), HandoverError> {
    let mut stopped = None;
    let mut check = || check().map_err(|e| stop(&mut stopped, e));
    let sent = send_frame(socket, section, Some(scm::Checked { slice, check: &mut check }));
    stopped.map_or(sent, |e| Err(HandoverError::Io(e)))
}

/// Keeps the error of a caller's check in `stopped`, for the call to end
/// with it as it is (`HandoverError::Io`): whatever its kind, it is not
/// taken for a peer that hung up or a malformed frame on the way out.
fn stop(stopped: &mut Option<io::Error>, e: io::Error) -> io::Error {
    let kind = e.kind();
    *stopped = Some(e);
    io::Error::new(kind, "stopped by the caller's check")
}

fn send_frame(socket: impl AsFd, section: &Section, checked: Option<scm::Checked<'_>>) -> Result<(), HandoverError> {
    let mut frame = Vec::with_capacity(HEADER + crate::MAX_NAME_LEN);
    frame.extend_from_slice(MAGIC);
    let mut flags = 0;
    if section.access() == Access::ReadOnly {
        flags |= FLAG_RO;
    }
    if section.name().is_some() {
        flags |= FLAG_NAMED;
    }
    frame.push(flags);
    frame.extend_from_slice(&section.len().to_le_bytes());
    let name = section.name().unwrap_or("").as_bytes();
    frame.push(name.len() as u8);
    frame.extend_from_slice(name);

    let fd = section.inner().transfer_fd().map_err(HandoverError::Io)?;
    let sent = match checked {
        None => scm::send_with_fds(&socket, &[&frame], &[fd.as_fd()]),
        Some(checked) => scm::send_with_fds_checked(&socket, &[&frame], &[fd.as_fd()], checked),
    };
    sent.map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => HandoverError::PeerClosed,
        _ => HandoverError::Io(e),
    })?;
    Ok(())
}

/// Receives a section sent with [`send_section`] from the connected Unix
/// socket `socket`. Blocks until one arrives (set a read timeout on the
/// socket to bound the wait).
///
/// Everything received is validated; anything unexpected gives
/// [`HandoverError::Malformed`] and closes whatever descriptors came with it.
#[doc(alias = "SCM_RIGHTS")]
#[doc(alias = "recvmsg")]
pub fn recv_section(socket: impl AsFd) -> Result<Section, HandoverError> {
    recv_frame(socket, None)
}

/// [`recv_section`] for a caller that must stay responsive while nothing
/// arrives, or a peer stops part-way through a frame (a language binding
/// that runs signal handlers): waits in slices of at most `slice`, calling
/// `check` after each one that brought nothing. An error from `check` ends
/// the call as [`HandoverError::Io`] of that error; if part of a frame was
/// read already, the stream is broken (close the socket). The socket's own
/// receive timeout does not apply.
pub fn recv_section_checked(
    socket: impl AsFd,
    slice: Duration,
    mut check: impl FnMut() -> io::Result<()>,
) -> Result<Section, HandoverError> {
    let mut stopped = None;
    let mut check = || check().map_err(|e| stop(&mut stopped, e));
    let received = recv_frame(socket, Some(scm::Checked { slice, check: &mut check }));
    stopped.map_or(received, |e| Err(HandoverError::Io(e)))
}

fn recv_frame(socket: impl AsFd, mut checked: Option<scm::Checked<'_>>) -> Result<Section, HandoverError> {
    let mut header = [0u8; HEADER];
    let received = match checked.as_mut() {
        None => scm::recv_with_fds(&socket, &mut header, scm::Patience::Blocking, false),
        Some(checked) => scm::recv_with_fds_checked(&socket, &mut header, false, checked),
    };
    let (bytes, fds) = received.map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => HandoverError::Malformed(e.to_string()),
        _ => HandoverError::Io(e),
    })?;
    if bytes == 0 && fds.is_empty() {
        return Err(HandoverError::PeerClosed);
    }
    if bytes < HEADER {
        // With MSG_WAITALL a short read means the peer closed mid-frame.
        return Err(HandoverError::Malformed(format!("short header ({bytes} bytes)")));
    }
    if &header[..4] != MAGIC {
        return Err(HandoverError::Malformed("bad magic".into()));
    }
    let flags = header[4];
    if flags & !(FLAG_RO | FLAG_NAMED) != 0 {
        return Err(HandoverError::Malformed(format!("unknown flags {flags:#x}")));
    }
    let len = u64::from_le_bytes(header[5..13].try_into().expect("8 bytes"));
    let name_len = header[13] as usize;
    let mut name = vec![0u8; name_len];
    if name_len > 0 {
        let received = match checked.as_mut() {
            None => scm::recv_exact(&socket, &mut name, scm::Patience::Blocking),
            Some(checked) => scm::recv_exact_checked(&socket, &mut name, checked),
        };
        received.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => HandoverError::Malformed("short name".into()),
            // (Descriptors with the name's bytes, say.)
            io::ErrorKind::InvalidData => HandoverError::Malformed(e.to_string()),
            _ => io(e),
        })?;
    }
    let fd = match <[OwnedFd; 1]>::try_from(fds) {
        Ok([fd]) => fd,
        Err(v) => {
            return Err(HandoverError::Malformed(format!("{} descriptors instead of 1", v.len())));
        }
    };
    let name = match (flags & FLAG_NAMED != 0, name_len) {
        (false, 0) => None,
        (true, n) if n > 0 => {
            let s = std::str::from_utf8(&name).map_err(|_| HandoverError::Malformed("name is not UTF-8".into()))?;
            Some(Name::new(s).map_err(|e| HandoverError::Malformed(format!("bad name: {e}")))?)
        }
        _ => {
            return Err(HandoverError::Malformed("name flag and name disagree".into()));
        }
    };
    let st = rfs::fstat(&fd).map_err(io)?;
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
        return Err(HandoverError::Malformed("the descriptor is not a section".into()));
    }
    if len == 0 || len > st.st_size as u64 {
        return Err(HandoverError::Malformed(format!("size {len} does not fit the object of {} bytes", st.st_size)));
    }
    // The descriptor's own mode decides; the flag can only restrict it.
    let mut access = access_of(&fd).map_err(HandoverError::Io)?;
    if flags & FLAG_RO != 0 {
        access = Access::ReadOnly;
    }
    let kind = kind_of(&fd, name.is_some());
    Ok(Section::from_parts(SysSection::from_fd(fd, len, access, kind, name.as_ref()), name))
}
