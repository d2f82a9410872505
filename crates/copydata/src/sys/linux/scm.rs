//! Bytes with descriptors over a Unix stream socket (`SCM_RIGHTS`): the one
//! place that builds and takes apart the control messages.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, RecvMsg, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::fork::Made;

/// The most descriptors one message may carry.
pub(crate) const MAX_FDS: usize = 17;

/// Room for the control messages of one read: the most descriptors the
/// kernel passes in one message (`SCM_MAX_FD`, 253) and what else a peer
/// can have it add (credentials, a pidfd, a security label, on a socket
/// whose options the peer sets), since descriptors that find no room are
/// closed by the kernel in the reading thread.
const CONTROL_ROOM: usize = 4096;

/// `SCM_PIDFD`: a pidfd the kernel installs with each read of a socket
/// whose `SO_PASSPIDFD` is set (by the peer, on a socket it handed over).
const SCM_PIDFD: i32 = 4;

/// Sends `parts` as one stream of bytes, `fds` riding with the first byte,
/// waiting for room as the socket says (for ever, or by its send timeout:
/// `WouldBlock`, part of the frame perhaps out). Finishes short writes and
/// goes on after a signal; `SIGPIPE` is never raised.
pub(crate) fn send_with_fds(sock: impl AsFd, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_parts(sock, parts, fds, Wait::InSend)
}

/// Like [`send_with_fds`], but never blocks past `until` (`None`: waits
/// for room as long as the peer holds its end; a peer that stops reading
/// cannot hold the caller beyond its own deadline). Runs out of time as
/// `TimedOut` when nothing was sent (the stream is as it was), as
/// `InvalidData` part-way through the frame (the stream is broken); a peer
/// that hung up is `BrokenPipe`.
pub(crate) fn send_with_fds_until(
    sock: impl AsFd,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    until: Option<Instant>,
) -> io::Result<()> {
    send_parts(sock, parts, fds, Wait::Until(until))
}

/// A wait cut into slices: `check` runs after each slice of at most
/// `slice` that brought no progress, and an error it returns ends the
/// wait with that error (a caller's cancellation: a signal handler that
/// raised, say).
pub(crate) struct Checked<'a> {
    pub(crate) slice: Duration,
    pub(crate) check: &'a mut dyn FnMut() -> io::Result<()>,
}

impl Checked<'_> {
    /// Waits until `sock` has one of `events` (or hung up, or failed), in
    /// slices with the check between them.
    fn ready(&mut self, sock: impl AsFd, events: PollFlags) -> io::Result<PollFlags> {
        let slice = super::timespec(self.slice);
        loop {
            let mut fds = [PollFd::new(&sock, events)];
            match rustix::event::poll(&mut fds, Some(&slice)) {
                Ok(n) if n > 0 => return Ok(fds[0].revents()),
                Ok(_) | Err(Errno::INTR) => (self.check)()?,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How [`send_parts`] waits for room.
enum Wait<'a> {
    /// In the send itself, as the socket says.
    InSend,
    /// Sending without waiting, then waiting in [`writable_by`].
    Until(Option<Instant>),
    /// Sending without waiting, then waiting in slices.
    Checked(Checked<'a>),
}

/// Like [`send_with_fds`], but waits for room in slices with a check
/// between them ([`Checked`]): an error of the check ends the send with
/// it, the stream broken if part of the frame is out already. A peer that
/// hung up is `BrokenPipe`.
pub(crate) fn send_with_fds_checked(
    sock: impl AsFd,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    checked: Checked<'_>,
) -> io::Result<()> {
    send_parts(sock, parts, fds, Wait::Checked(checked))
}

/// The three above.
fn send_parts(sock: impl AsFd, parts: &[&[u8]], fds: &[BorrowedFd<'_>], mut wait: Wait<'_>) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let flags = match wait {
        Wait::InSend => SendFlags::NOSIGNAL,
        Wait::Until(_) | Wait::Checked(_) => SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    };
    // No room: wait for it, or (waiting in the send) its time ran out.
    let no_room = |wait: &mut Wait<'_>, begun: bool| match wait {
        Wait::InSend => Err(io::Error::from(io::ErrorKind::WouldBlock)),
        Wait::Until(until) => writable_by(&sock, *until, begun),
        Wait::Checked(checked) => room_or_gone(checked.ready(&sock, PollFlags::OUT)?),
    };
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut pause = Duration::from_millis(1);
    let mut sent = loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        match rustix::net::sendmsg(&sock, &iov, &mut control, flags) {
            Ok(n) => break n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => no_room(&mut wait, false)?,
            // This user has more descriptors in flight on sockets than its
            // limit of open files (the receivers have not taken them yet):
            // as no room, but nothing says when there is some.
            Err(Errno::TOOMANYREFS) if !fds.is_empty() => match &mut wait {
                Wait::Until(until) => fewer_in_flight(&sock, *until, &mut pause)?,
                Wait::Checked(checked) => {
                    fewer_in_flight(&sock, None, &mut pause)?;
                    (checked.check)()?;
                }
                Wait::InSend => return Err(Errno::TOOMANYREFS.into()),
            },
            Err(e) => return Err(e.into()),
        }
    };
    for part in parts {
        if sent >= part.len() {
            sent -= part.len();
            continue;
        }
        let mut at = sent;
        while at < part.len() {
            match rustix::net::send(&sock, &part[at..], flags) {
                Ok(n) => at += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => no_room(&mut wait, true)?,
                Err(e) => return Err(e.into()),
            }
        }
        sent = 0;
    }
    Ok(())
}

/// Waits `pause` (doubled each time, up to 50 ms) before another try at
/// sending descriptors refused with `ETOOMANYREFS`, by `until` at most
/// (`TimedOut` then, logged with its cause: the caller sees only that time
/// ran out); a peer that hangs up meanwhile is `BrokenPipe`.
fn fewer_in_flight(sock: impl AsFd, until: Option<Instant>, pause: &mut Duration) -> io::Result<()> {
    let now = Instant::now();
    let step = match until {
        Some(u) if u <= now => {
            log::warn!(
                "sending descriptors timed out on this user's limit of descriptors in flight \
                 (ETOOMANYREFS, the limit of open files): receivers of this user are not taking \
                 the descriptors sent to them"
            );
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "too many descriptors in flight for this user (ETOOMANYREFS)",
            ));
        }
        Some(u) => (*pause).min(u - now),
        None => *pause,
    };
    *pause = (*pause * 2).min(Duration::from_millis(50));
    let step = super::timespec(step);
    // No events asked for: only a hang-up or an error ends the wait early.
    let mut fds = [PollFd::new(&sock, PollFlags::empty())];
    match rustix::event::poll(&mut fds, Some(&step)) {
        Ok(n) if n > 0 => Err(io::ErrorKind::BrokenPipe.into()),
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `sock` can take more bytes, by `until` (`None`: as long as
/// the peer holds its end). See [`send_with_fds_until`] for the errors;
/// `begun` says whether part of the frame is out already.
fn writable_by(sock: impl AsFd, until: Option<Instant>, begun: bool) -> io::Result<()> {
    loop {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(if begun {
                io::Error::new(io::ErrorKind::InvalidData, "the peer stopped reading part-way through a frame")
            } else {
                io::ErrorKind::TimedOut.into()
            });
        }
        let left = left.map(super::timespec);
        let mut fds = [PollFd::new(&sock, PollFlags::OUT)];
        match rustix::event::poll(&mut fds, left.as_ref()) {
            Ok(n) if n > 0 => return room_or_gone(fds[0].revents()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What `poll` said of a socket waited on for room: room (`Ok`), or the
/// peer gone with none (`BrokenPipe`).
fn room_or_gone(revents: PollFlags) -> io::Result<()> {
    if revents.intersects(PollFlags::HUP | PollFlags::ERR) && !revents.contains(PollFlags::OUT) {
        return Err(io::ErrorKind::BrokenPipe.into());
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
/// than [`MAX_FDS`] is an error.
///
/// Only descriptors of the kinds a peer may hand over are taken: regular
/// files (sections), and Unix stream sockets where `sockets` says so (a
/// connection's readiness handle). Anything else (a TCP socket, a pipe, a
/// device) fails the read; it and the others that came with it are closed
/// on another thread ([`close_elsewhere`]), since closing some of them can
/// block for as long as the peer set up (a TCP socket lingering on unsent
/// data).
pub(crate) fn recv_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    patience: Patience,
    sockets: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let (got, fds) = recvmsg_fds(&sock, buf, patience.flags(&sock)?)?;
    if fds.len() > MAX_FDS {
        close_elsewhere(fds);
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors"));
    }
    // Cut short with room for all a peer can send: the kernel could not
    // install them all in this process, which is out of descriptors (the
    // rest were closed).
    if got.flags.contains(ReturnFlags::CTRUNC) {
        close_elsewhere(fds);
        return Err(Errno::MFILE.into());
    }
    if let Some(kind) = fds.iter().find_map(|fd| unexpected(fd, sockets)) {
        close_elsewhere(fds);
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the peer sent a descriptor of {kind}")));
    }
    Ok((got.bytes, fds))
}

/// One `recvmsg` with room for as many descriptors as the kernel passes.
fn recvmsg_fds(sock: impl AsFd, buf: &mut [u8], flags: RecvFlags) -> rustix::io::Result<(RecvMsg, Vec<OwnedFd>)> {
    // Zeroed, so that what the kernel did not write reads as the end of the
    // control messages below.
    let mut space = [MaybeUninit::new(0u8); CONTROL_ROOM];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC | flags)?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    drop(control);
    // A pidfd (which the parsing above skips) is a descriptor of ours too:
    // taken, so it is closed and not leaked.
    fds.extend(pidfds(&space));
    Ok((got, fds))
}

/// The pidfds among the control messages in `space` (zeroed before the
/// read: a header of length 0 ends them).
fn pidfds(space: &[MaybeUninit<u8>]) -> Vec<OwnedFd> {
    use std::os::fd::FromRawFd;
    const WORD: usize = std::mem::size_of::<usize>();
    // struct cmsghdr: cmsg_len (size_t), cmsg_level (int), cmsg_type
    // (int), then the data, each header at a word boundary.
    let header = WORD + 8;
    let byte = |i: usize| -> u8 {
        // SAFETY: `space` was fully initialised (zeroed) before the read,
        // and the kernel only writes initialised bytes into it.
        unsafe { space[i].assume_init() }
    };
    // The native-endian bytes at `at`, as the kernel laid them out.
    let bytes = |at: usize| -> [u8; WORD] { std::array::from_fn(|i| byte(at + i)) };
    let int = |at: usize| -> i32 { i32::from_ne_bytes(std::array::from_fn(|i| byte(at + i))) };
    let mut out = Vec::new();
    let mut at = 0;
    while at + header <= space.len() {
        let len = usize::from_ne_bytes(bytes(at));
        if len < header || at + len > space.len() {
            break;
        }
        let (level, kind) = (int(at + WORD), int(at + WORD + 4));
        if level == libc::SOL_SOCKET && kind == SCM_PIDFD && len >= header + 4 {
            let fd = int(at + header);
            if fd >= 0 {
                // SAFETY: the kernel installed this descriptor in this
                // process for this read (`SCM_PIDFD`); nothing else owns it.
                out.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        at += len.next_multiple_of(WORD);
    }
    out
}

/// One read of bytes where no descriptors belong: any that came are
/// closed elsewhere ([`close_elsewhere`]), not by the kernel in this
/// thread as a plain read would.
pub(crate) fn recv_discarding(sock: impl AsFd, buf: &mut [u8], flags: RecvFlags) -> rustix::io::Result<usize> {
    let (got, fds) = recvmsg_fds(sock, buf, flags)?;
    close_elsewhere(fds);
    Ok(got.bytes)
}

/// What a descriptor a peer handed over is, as far as this crate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A regular file: memory (a memfd, a file in shared memory) or a file.
    File,
    /// A connected (not listening) Unix stream socket.
    UnixStream,
    /// A listening Unix stream socket.
    UnixListener,
    /// Anything else, or a descriptor `fstat` fails on.
    Other,
}

/// The [`FdKind`] of `fd`.
pub(crate) fn fd_kind(fd: impl AsFd) -> FdKind {
    use rustix::fs::FileType;
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let fd = fd.as_fd();
    match rustix::fs::fstat(fd).map(|st| FileType::from_raw_mode(st.st_mode)) {
        Ok(FileType::RegularFile) => FdKind::File,
        Ok(FileType::Socket)
            if sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
                && sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::STREAM) =>
        {
            match sockopt::socket_acceptconn(fd) {
                Ok(false) => FdKind::UnixStream,
                Ok(true) => FdKind::UnixListener,
                Err(_) => FdKind::Other,
            }
        }
        _ => FdKind::Other,
    }
}

/// What is wrong with a received descriptor's kind (`None`: a regular
/// file, or a Unix stream socket where `sockets` allows one; whether it
/// is connected is for the caller to check, where it matters).
fn unexpected(fd: &OwnedFd, sockets: bool) -> Option<&'static str> {
    match fd_kind(fd) {
        FdKind::File => None,
        FdKind::UnixStream | FdKind::UnixListener if sockets => None,
        FdKind::UnixStream | FdKind::UnixListener => Some("a socket where none belongs"),
        FdKind::Other => Some("another kind than a file or a Unix stream socket"),
    }
}

/// Closes descriptors a peer handed over, on a thread of its own: closing
/// one can block for as long as the peer arranged (a TCP socket with unsent
/// data and `SO_LINGER`, a Unix socket whose queue holds such a socket), and
/// the thread that received them must not wait for that. (Should that
/// thread be impossible to start, they are left open rather than closed
/// here.)
pub(crate) fn close_elsewhere(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    static CLOSER: OnceLock<Option<mpsc::Sender<Vec<OwnedFd>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Vec<OwnedFd>>();
        let spawned = std::thread::Builder::new().name("copydata-closer".into()).spawn(move || {
            for batch in rx {
                for fd in batch {
                    defuse(fd);
                }
            }
        });
        spawned.is_ok().then_some(tx)
    });
    match closer {
        Some(tx) => {
            if let Err(mpsc::SendError(fds)) = tx.send(fds) {
                std::mem::forget(fds);
            }
        }
        None => {
            log::warn!("could not start a thread to close {} descriptors from a peer: left open", fds.len());
            std::mem::forget(fds);
        }
    }
}

/// Closes a descriptor from a peer without waiting on it where that can be
/// helped: a network socket is reset rather than left to linger on unsent
/// data, and a Unix socket is emptied first (its queue may hold such
/// sockets, closed with it), whatever it holds, however deep. A datagram
/// socket that cannot be emptied (its peer writing all along) is left open
/// rather than closed with what it holds.
fn defuse(fd: OwnedFd) {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let mut work = vec![fd];
    while let Some(fd) = work.pop() {
        let is_socket = rustix::fs::fstat(&fd)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket);
        if !is_socket {
            continue;
        }
        if !sockopt::socket_domain(&fd).is_ok_and(|d| d == AddressFamily::UNIX) {
            let _ = sockopt::set_socket_linger(&fd, Some(std::time::Duration::ZERO));
            continue;
        }
        if sockopt::socket_type(&fd).is_ok_and(|t| t == SocketType::STREAM) {
            // After SHUT_RD the queue only shrinks, and an empty read is
            // its end.
            let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Read);
            drain(&fd, |fds| work.extend(fds));
        } else {
            // Messages may be empty here, and the end of the queue reads
            // the same: read until there is nothing (`EAGAIN`), within a
            // bound.
            let mut buf = [0u8; 4096];
            let mut left = 4096;
            loop {
                match recvmsg_fds(&fd, &mut buf, RecvFlags::DONTWAIT) {
                    Ok((_, fds)) => work.extend(fds),
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => break,
                    Err(_) => break,
                }
                left -= 1;
                if left == 0 {
                    std::mem::forget(fd);
                    break;
                }
            }
        }
    }
}

/// Reads a stream socket until it is empty (or fails), handing what
/// descriptors came to `take`.
fn drain(sock: impl AsFd, mut take: impl FnMut(Vec<OwnedFd>)) {
    let mut buf = [0u8; 4096];
    loop {
        match recvmsg_fds(&sock, &mut buf, RecvFlags::DONTWAIT) {
            Ok((got, fds)) => {
                let done = got.bytes == 0 && fds.is_empty();
                take(fds);
                if done {
                    return;
                }
            }
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Stops the peer writing to `sock` and empties what it queued there,
/// passing the descriptors in it to [`close_elsewhere`]: closing a socket
/// closes what is queued in it, in the closing thread, and a peer decides
/// what that is.
pub(crate) fn disarm(sock: impl AsFd) {
    // (After this the queue only shrinks: the loop below ends.)
    let _ = rustix::net::shutdown(&sock, rustix::net::Shutdown::Read);
    drain(&sock, close_elsewhere);
}

/// Descriptors a peer handed over: those still here when this is dropped
/// (not taken out of `.0`) are closed on another thread
/// ([`close_elsewhere`]).
pub(crate) struct Foreign(pub(crate) Vec<OwnedFd>);

impl Drop for Foreign {
    fn drop(&mut self) {
        close_elsewhere(std::mem::take(&mut self.0));
    }
}

/// A socket a peer writes to, [`disarm`]ed before it is closed (not a copy
/// in a child made by `fork`: the socket is the parent's too, and the
/// parent's alone to stop; see `crate::fork`).
#[derive(Debug)]
pub(crate) struct Disarmed<T: AsFd>(pub(crate) T, Made);

impl<T: AsFd> Disarmed<T> {
    pub(crate) fn new(sock: T) -> Disarmed<T> {
        Disarmed(sock, Made::here())
    }
}

impl<T: AsFd> Drop for Disarmed<T> {
    fn drop(&mut self) {
        if !self.1.copied_by_fork() {
            disarm(&self.0);
        }
    }
}

impl<T: AsFd> std::ops::Deref for Disarmed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: AsFd> AsFd for Disarmed<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Reads exactly `buf.len()` bytes, waiting per `patience`; a peer that
/// closes first is an `UnexpectedEof` error, fewer bytes than `Queued`
/// promised `InvalidData`, a deadline passed `TimedOut`.
pub(crate) fn recv_exact(sock: impl AsFd, buf: &mut [u8], patience: Patience) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        // (With room for descriptors: none belong here, and a plain read
        // would have the kernel close them in this thread.)
        let n = match recvmsg_fds(&sock, &mut buf[at..], patience.flags(&sock)?) {
            Ok((got, fds)) if fds.is_empty() => got.bytes,
            Ok((_, fds)) => {
                close_elsewhere(fds);
                return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors came where none belong"));
            }
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

/// Like [`recv_with_fds`] with [`Patience::Blocking`] (fills `buf`
/// unless the peer closes first, then returns the bytes so far, the
/// descriptors coming with the first of them), but waits in slices with a
/// check between them ([`Checked`]): an error of the check ends the read
/// with it, the stream broken if part of the frame was read already.
/// Descriptors after the first bytes are `InvalidData`.
pub(crate) fn recv_with_fds_checked(
    sock: impl AsFd,
    buf: &mut [u8],
    sockets: bool,
    checked: &mut Checked<'_>,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut at = 0;
    let mut fds = Vec::new();
    while at < buf.len() {
        let got = checked.ready(&sock, PollFlags::IN).and_then(|_| {
            match recv_with_fds(&sock, &mut buf[at..], Patience::Queued, sockets) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
                Ok((_, more)) if at > 0 && !more.is_empty() => {
                    close_elsewhere(more);
                    Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors came where none belong"))
                }
                other => other.map(Some),
            }
        });
        match got {
            Ok(None) => {}
            Ok(Some((0, _))) => break,
            Ok(Some((n, more))) => {
                fds.extend(more);
                at += n;
            }
            Err(e) => {
                close_elsewhere(fds);
                return Err(e);
            }
        }
    }
    Ok((at, fds))
}

/// Like [`recv_exact`] with [`Patience::Blocking`], but waits in slices
/// with a check between them, as [`recv_with_fds_checked`].
pub(crate) fn recv_exact_checked(sock: impl AsFd, buf: &mut [u8], checked: &mut Checked<'_>) -> io::Result<()> {
    let (n, fds) = recv_with_fds_checked(sock, buf, false, checked)?;
    if !fds.is_empty() {
        close_elsewhere(fds);
        return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors came where none belong"));
    }
    if n < buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed mid-frame"));
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
        let left = super::timespec(left);
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&left)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A TCP socket with unsent data stuck behind a zero window, lingering
    /// `linger` on close: (the socket, its peer, which must stay open for
    /// the close to wait).
    pub(crate) fn lingering_tcp(linger: Duration) -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&b, 4096).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
        a.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let mut stalls = 0;
        while stalls < 10 {
            match (&a).write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stalls += 1;
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        rustix::net::sockopt::set_socket_linger(&a, Some(linger)).unwrap();
        (a, b)
    }

    /// Sends `bytes` with up to 253 descriptors (more than the library's
    /// own sends allow), all of them.
    pub(crate) fn send_raw(sock: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let n = rustix::net::sendmsg(&sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL).unwrap();
        assert_eq!(n, bytes.len());
    }

    /// How many descriptors this process has open.
    pub(crate) fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// A socket whose peer set SO_PASSCRED on it: 253 descriptors (the
    /// kernel's most) and the credentials fit in one read's room.
    #[test]
    fn a_full_message_fits_beside_credentials() {
        let (a, b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
        rustix::net::sockopt::set_socket_passcred(&a, true).unwrap();
        let files: Vec<OwnedFd> =
            (0..253).map(|_| rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap()).collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        send_raw(&b, b"q", &fds);
        let mut buf = [0u8; 16];
        let (got, fds) = recvmsg_fds(&a, &mut buf, RecvFlags::DONTWAIT).unwrap();
        eprintln!("passcred: got {} fds, CTRUNC {}", fds.len(), got.flags.contains(ReturnFlags::CTRUNC));
        assert_eq!(fds.len(), 253, "the kernel closed {} in this thread", 253 - fds.len());
    }

    /// SO_PASSPIDFD: each read installs a pidfd, taken and closed with the
    /// rest, not leaked.
    #[test]
    fn pidfds_that_come_with_reads_are_not_leaked() {
        let (a, b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
        let one: libc::c_int = 1;
        // SAFETY: sets an int option on our own socket (76: SO_PASSPIDFD).
        let r = unsafe {
            libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, 76, &one as *const _ as *const libc::c_void, 4)
        };
        if r != 0 {
            eprintln!("skipped: SO_PASSPIDFD not supported by this kernel");
            return;
        }
        let (pr, _pw) = std::io::pipe().unwrap();
        for _ in 0..100 {
            send_raw(&b, b"q", &[pr.as_fd()]);
        }
        let before = open_fds();
        let mut n = 0;
        drain(&a, |fds| n += fds.len());
        let after = open_fds();
        eprintln!("passpidfd: {n} fds taken, open fds {before} -> {after}");
        assert!(after <= before + 5, "{} descriptors leaked", after - before);
    }

    /// A packet socket whose queue holds an empty message and then a
    /// lingering TCP socket: emptied to the end before it is closed, so
    /// closing it does not wait.
    #[test]
    fn an_empty_message_does_not_end_the_emptying() {
        let (x, y) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        let (t, peer) = lingering_tcp(Duration::from_secs(5));
        send_raw(&y, b"", &[]);
        send_raw(&y, b"z", &[t.as_fd()]);
        drop(t);
        let started = Instant::now();
        defuse(x);
        let took = started.elapsed();
        drop((y, peer));
        assert!(took < Duration::from_secs(2), "defuse took {took:?}");
    }

    /// Unix sockets nested six deep around a lingering TCP socket: emptied
    /// however deep, so closing them does not wait.
    #[test]
    fn nested_sockets_are_emptied_however_deep() {
        const NEST: usize = 6;
        let (t, peer) = lingering_tcp(Duration::from_secs(5));
        let mut inner: OwnedFd = t.into();
        let mut keep = Vec::new();
        for _ in 0..NEST {
            let (x, y) =
                rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
            send_raw(&y, b"z", &[inner.as_fd()]);
            keep.push(y);
            inner = x;
        }
        drop(keep);
        let started = Instant::now();
        defuse(inner);
        let took = started.elapsed();
        drop(peer);
        assert!(took < Duration::from_secs(2), "defuse took {took:?}");
    }
}
