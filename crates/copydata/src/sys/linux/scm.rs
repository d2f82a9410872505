//! Bytes with descriptors over a Unix stream socket (`SCM_RIGHTS`): the one
//! place that builds and takes apart the control messages.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

/// The most descriptors one message may carry.
pub(crate) const MAX_FDS: usize = 17;

/// Sends `parts` as one stream of bytes, `fds` riding with the first byte.
/// Finishes short writes; `SIGPIPE` is never raised.
pub(crate) fn send_with_fds(sock: impl AsFd, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut sent = rustix::net::sendmsg(&sock, &iov, &mut control, SendFlags::NOSIGNAL)?;
    for part in parts {
        if sent >= part.len() {
            sent -= part.len();
            continue;
        }
        let mut at = sent;
        while at < part.len() {
            at += rustix::net::send(&sock, &part[at..], SendFlags::NOSIGNAL)?;
        }
        sent = 0;
    }
    Ok(())
}

/// How a read waits for bytes that are not queued yet.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Patience {
    /// Not at all: they are known to be queued (`FIONREAD` said so), and
    /// fewer is the peer's fault. (`FIONREAD` also counts an out-of-band
    /// byte that a read skips: a blocking read there would wait for a byte
    /// more, as long as the peer likes.)
    Queued,
    /// As long as the socket's receive timeout lets each call wait.
    Blocking,
    /// Until this instant at most, however many calls it takes.
    Until(Instant),
}

impl Patience {
    /// The flags of one read. Only `Blocking` waits in the read itself
    /// (for all of it); `Until` first waits, by its deadline, for something
    /// to read, then takes what is there.
    fn flags(self, sock: impl AsFd) -> io::Result<RecvFlags> {
        Ok(match self {
            Patience::Queued => RecvFlags::DONTWAIT,
            Patience::Blocking => RecvFlags::WAITALL,
            Patience::Until(deadline) => {
                readable_by(sock, deadline)?;
                RecvFlags::DONTWAIT
            }
        })
    }
}

/// Receives up to `buf.len()` bytes (waiting, per `patience`, for all of
/// them unless the peer closes first) and the descriptors that came with
/// them, close-on-exec. Returns how many bytes arrived. More descriptors
/// than [`MAX_FDS`] is an error (the ones that did arrive are closed).
pub(crate) fn recv_with_fds(sock: impl AsFd, buf: &mut [u8], patience: Patience) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let wait = patience.flags(&sock)?;
    let got = rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC | wait)?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors"));
    }
    Ok((got.bytes, fds))
}

/// Reads exactly `buf.len()` bytes, waiting per `patience`; a peer that
/// closes first is an `UnexpectedEof` error, fewer bytes than `Queued`
/// promised `InvalidData`, a deadline passed `TimedOut`.
pub(crate) fn recv_exact(sock: impl AsFd, buf: &mut [u8], patience: Patience) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let n = match rustix::net::recv(&sock, &mut buf[at..], patience.flags(&sock)?) {
            Ok((n, _)) => n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) if matches!(patience, Patience::Queued) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "fewer bytes queued than announced"));
            }
            Err(Errno::AGAIN) if matches!(patience, Patience::Until(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed mid-frame"));
        }
        at += n;
    }
    Ok(())
}

/// Waits until `sock` is readable (or hung up), `TimedOut` at `deadline`.
fn readable_by(sock: impl AsFd, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let left = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&left)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
