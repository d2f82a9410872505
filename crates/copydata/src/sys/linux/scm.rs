//! Bytes with descriptors over a Unix stream socket (`SCM_RIGHTS`): the one
//! place that builds and takes apart the control messages.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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

/// Receives up to `buf.len()` bytes (waiting for all of them unless the peer
/// closes first) and the descriptors that came with them, close-on-exec.
/// Returns how many bytes arrived. More descriptors than [`MAX_FDS`] is an
/// error (the ones that did arrive are closed).
pub(crate) fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
    )?;
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

/// Reads exactly `buf.len()` bytes; a peer that closes first is an
/// `UnexpectedEof` error.
pub(crate) fn recv_exact(sock: impl AsFd, buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let (n, _) = rustix::net::recv(&sock, &mut buf[at..], RecvFlags::WAITALL)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed mid-frame"));
        }
        at += n;
    }
    Ok(())
}
