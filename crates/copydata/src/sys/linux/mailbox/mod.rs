//! Linux mailboxes: a Unix stream socket per mailbox in the per-user runtime
//! directory for lookup, set-up and hand-over of descriptors; messages
//! through the shared region of the fast path ([`crate::fast`]).
//!
//! Binding takes an exclusive `flock` on `NAME.mailbox` (which records the
//! binder's pid): the kernel drops it when the binder dies, so a name left by
//! a crashed process is free for the next `bind`, and `ls` removes what such
//! a process left behind.
//!
//! Set-up: the sender connects and says hello (protocol version, wait
//! strategy); the receiver checks the peer's uid (`SO_PEERCRED`), creates the
//! connection's region (a memfd sealed against shrinking and growing, so no
//! side can truncate it under the other) and sends it back with
//! `SCM_RIGHTS`, together with the mailbox's doorbells (one futex word per
//! handler thread) and the connection's readiness handle (one end of a
//! socket pair, which the receiver signals when the sender has parked, see
//! [`crate::fast::PARKED_ASYNC`]). After that the socket carries only descriptors that go
//! with a message (new pool buffers, sections), and its hang-up tells each
//! side that the other is gone: the receiver's acceptor thread polls every
//! connection for it; a sender parked for longer than [`FIRST_PARK`] sleeps
//! in `poll` on the socket and the readiness handle together, so it learns
//! it at once.
//!
//! Waiting: a handler thread sleeps on its doorbell, a futex word in shared
//! memory (without `FUTEX_PRIVATE_FLAG`: private futexes are keyed by
//! address space); a blocking sender first on a futex word of its
//! connection (for at most [`FIRST_PARK`]), then, like an async sender, on
//! the readiness handle and the socket.

#[cfg(test)]
mod hostile;
mod runtime;
mod wire;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use rustix::thread::futex;

use super::timespec;

use self::wire::{Header, REPLY, REQUEST, STATUS_REFUSED};
use super::scm::{self, Disarmed, FdKind, Patience};
use super::{Kind, Section as SysSection, access_of, kind_of};
use crate::error::{BindError, ListError, Listing, ReplyError, SendError};
use crate::fast::conn::ServerConn;
use crate::fast::region::{PROTOCOL, Region};
use crate::fast::ring::LINE;
use crate::fast::serve::{Dispatch, MAX_WORKERS};
use crate::fast::{Bell, PARKED, PARKED_ASYNC, Park, Wait};
use crate::fork::Made;
use crate::mailbox::{MailboxInfo, MailboxOptions, Peer, Reply};
use crate::name::Name;
use crate::section::Section;
use crate::view::ViewMut;

const HELLO: [u8; 4] = *b"CDH2";
const WELCOME: [u8; 4] = *b"CDA2";
const AUX: [u8; 4] = *b"CDX2";
const SETUP_OK: u8 = 0;
const SETUP_REFUSED: u8 = 1;
const SETUP_INCOMPATIBLE: u8 = 2;
/// Refused for now: the mailbox has as many connections as it takes.
const SETUP_BUSY: u8 = 3;
/// How long the receiver gives a connecting sender to say hello, and either
/// side the other to deliver a message's descriptors.
const PEER_STEP: Duration = Duration::from_secs(2);
/// A parked sender looks at its ring again this often even without a
/// wake-up (a safety net; the receiver's death wakes it at once).
pub(crate) const SLICE: Duration = Duration::from_millis(20);
/// How long a sender's first park of a wait sleeps on the futex word (the
/// cheapest to wake) before it sleeps where the receiver's death wakes it:
/// most replies come well within it, and a receiver that dies meanwhile is
/// noticed within it.
pub(crate) const FIRST_PARK: Duration = Duration::from_millis(1);
const BELLS_LEN: usize = MAX_WORKERS * LINE;

/// Whether `poll` found the peer's end of a socket gone.
fn hung_up(fd: &PollFd<'_>) -> bool {
    fd.revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL)
}

/// Bumps a futex word and wakes one waiter.
fn ring_word(word: &AtomicU32) {
    word.fetch_add(1, Ordering::Release);
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}

/// A section from a received memfd, after checking it carries the shrink and
/// grow seals (so no process can truncate it under a mapping: SIGBUS).
fn sealed_section(fd: OwnedFd, what: &str) -> io::Result<Section> {
    if kind_of(&fd, false) != Kind::Anonymous {
        return Err(wire::bad(format!("the {what} is not a memfd sealed against resizing")));
    }
    let len = rfs::fstat(&fd)?.st_size as u64;
    let access = access_of(&fd)?;
    Ok(Section::from_parts(SysSection::from_fd(fd, len, access, Kind::Anonymous, None), None))
}

// ---------------------------------------------------------------- doorbells

/// The doorbells of a mailbox's handler threads: one futex word per worker
/// in a small memfd that every sender maps. A sender that writes a word
/// instead of ringing it causes a spurious wake-up or makes the worker miss
/// another sender's ring; the worker never sleeps longer than a second at a
/// time, so such a message waits a second at most. The flags that decide
/// whether to ring live in each connection's own region.
#[derive(Debug)]
pub(crate) struct Bells {
    view: ViewMut,
    section: Section,
}

impl Bells {
    fn new() -> io::Result<Bells> {
        let section = Section::anonymous(BELLS_LEN as u64).map_err(io::Error::other)?;
        // Every sender maps it writable: none may seal it for the others.
        section.inner().seal_seals()?;
        let view = section.map_mut(0, BELLS_LEN).map_err(io::Error::other)?;
        Ok(Bells { view, section })
    }

    fn word(&self, w: usize) -> &AtomicU32 {
        self.view.atomic_u32(w * LINE).expect("doorbell inside its section")
    }

    pub(crate) fn ring(&self, w: usize) {
        ring_word(self.word(w));
    }

    pub(crate) fn load(&self, w: usize) -> u32 {
        self.word(w).load(Ordering::Acquire)
    }

    /// Sleeps until rung (or the word moved from `seen`), or `timeout`.
    /// Returns `false` on timeout.
    pub(crate) fn wait(&self, w: usize, seen: u32, timeout: Option<Duration>) -> bool {
        let ts = timeout.map(timespec);
        !matches!(futex::wait(self.word(w), futex::Flags::empty(), seen, ts.as_ref()), Err(Errno::TIMEDOUT))
    }
}

/// Plain Win32 senders do not exist here.
#[derive(Debug)]
pub(crate) enum NativeResponder {}

impl NativeResponder {
    pub(crate) fn reply(&self, _reply: Reply) -> Result<(), ReplyError> {
        match *self {}
    }
    pub(crate) fn refuse(&self, _reason: &str) {
        match *self {}
    }
}

// ---------------------------------------------------------------- link

/// What draining a sender's readiness handle found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// At least one signal from the receiver.
    Signalled,
    /// Nothing (a signal already drained, or a spurious readiness).
    Nothing,
    /// The receiver's end is closed: its side of the link is gone.
    Closed,
}

/// One side's hold on a connection: the region, the socket and (sender)
/// the mailbox's doorbells.
#[derive(Debug)]
pub(crate) struct Link {
    region: Region,
    sock: Disarmed<UnixStream>,
    bells: Option<ViewMut>,
    /// The readiness handle: one end each of a socket pair the receiver
    /// made, written (a byte) when the sender waits from an async runtime.
    /// Two sockets, so neither side shares an open description (and its
    /// flags, `O_NONBLOCK` say) with the other; each call says
    /// `MSG_DONTWAIT` anyway.
    notify: Disarmed<OwnedFd>,
}

impl Link {
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The peer's process id: the receiver's is the one that bound the
    /// mailbox (the connection's socket says so); a sender's, the one that
    /// connected.
    pub(crate) fn peer_pid(&self) -> Option<u32> {
        // (0: not a process this pid namespace can name.)
        peer_cred(&*self.sock).ok().and_then(|c| u32::try_from(c.pid).ok()).filter(|&pid| pid != 0)
    }

    fn word(&self, bell: Bell) -> Option<&AtomicU32> {
        match bell {
            Bell::Request => {
                let w = self.region.worker().load(Ordering::Acquire) as usize;
                let bells = self.bells.as_ref()?;
                (w < MAX_WORKERS).then(|| bells.atomic_u32(w * LINE).expect("doorbell inside its section"))
            }
            Bell::Reply => Some(self.region.reply_wake()),
            Bell::Space => Some(self.region.space_wake()),
        }
    }

    pub(crate) fn wake(&self, bell: Bell) {
        let ring = match (&self.bells, bell) {
            // The sending side rings the handler thread's doorbell.
            (Some(_), _) | (None, Bell::Request) => {
                if let Some(word) = self.word(bell) {
                    ring_word(word);
                }
                return;
            }
            (None, Bell::Reply) => self.region.replies(),
            (None, Bell::Space) => self.region.requests(),
        };
        // The receiving side: a parked sender sleeps on the futex word or on
        // the readiness handle, as its flag says (`park`).
        let flag = if bell == Bell::Reply { ring.cons_parked() } else { ring.prod_parked() };
        match flag.load(Ordering::SeqCst) {
            // Never blocks: a buffer full of signals never drained fails
            // with EAGAIN, and the sender's end is readable all the same.
            PARKED_ASYNC => drop(rustix::net::send(&self.notify, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL)),
            PARKED => {
                if let Some(word) = self.word(bell) {
                    ring_word(word);
                }
            }
            _ => {}
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// The descriptors an async runtime watches for the sending side: the
    /// readiness handle, and the socket (readable on hang-up).
    pub(crate) fn readiness(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.notify.as_fd(), self.sock.as_fd())
    }

    /// Resets the readiness handle after a wake-up, without ever blocking
    /// (`MSG_DONTWAIT`, whatever a hostile receiver does with the socket
    /// pair's other end): what it held.
    pub(crate) fn drain_readiness(&self) -> Drained {
        let mut buf = [0u8; 64];
        let mut found = Drained::Nothing;
        // (Bounded: a receiver writing all along cannot keep this going.)
        for _ in 0..16 {
            match super::scm::recv_discarding(&self.notify, &mut buf, RecvFlags::DONTWAIT) {
                Ok(0) => return Drained::Closed,
                Ok(_) => found = Drained::Signalled,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                // Not a working connection (a receiver could hand over a
                // socket that polls readable for ever and reads nothing):
                // as good as closed, never a reason to look again at once.
                Err(_) => return Drained::Closed,
            }
        }
        found
    }

    /// Whether the peer still holds its end of the socket.
    pub(crate) fn alive(&self) -> bool {
        let mut fds = [PollFd::new(&self.sock, PollFlags::RDHUP)];
        match rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))) {
            Ok(0) => true,
            Ok(_) => !hung_up(&fds[0]),
            Err(_) => true,
        }
    }

    /// The value a sender puts in its parked flag before its `round`-th park
    /// of one wait (from 0): the first sleeps on the futex word, which costs
    /// the least to wake, for at most [`FIRST_PARK`]; the later ones sleep
    /// on the readiness handle together with the socket, which the
    /// receiver's death wakes at once (see [`park`](Self::park)).
    pub(crate) fn park_flag(round: u32) -> u32 {
        if round == 0 { PARKED } else { PARKED_ASYNC }
    }

    /// Sleeps (the sending side) as its parked flag `flag` says:
    /// - `PARKED`: on the futex word (unless it moved from `seen`) for at
    ///   most [`FIRST_PARK`]; a futex cannot tell that its waker died, so
    ///   the caller parks again the other way if nothing came meanwhile;
    /// - `PARKED_ASYNC`: in `poll` until the receiver signals the readiness
    ///   handle, the receiver is gone (its end of the socket hangs up:
    ///   noticed at once, also when it was killed) or a [`SLICE`] passes.
    ///
    /// Either way no longer than `deadline`.
    pub(crate) fn park(&self, bell: Bell, seen: u32, flag: u32, deadline: Option<Instant>) -> Park {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Park::TimedOut;
        }
        if flag == PARKED {
            let Some(word) = self.word(bell) else { return Park::PeerGone };
            let slice = left.map_or(FIRST_PARK, |l| l.min(FIRST_PARK));
            // Woken, timed out or interrupted alike: the caller looks again.
            let _ = futex::wait(word, futex::Flags::empty(), seen, Some(&timespec(slice)));
            return Park::Woken;
        }
        let slice = left.map_or(SLICE, |l| l.min(SLICE));
        let mut fds = [PollFd::new(&self.notify, PollFlags::IN), PollFd::new(&self.sock, PollFlags::RDHUP)];
        match rustix::event::poll(&mut fds, Some(&timespec(slice))) {
            Ok(n) if n > 0 => {
                // A signal meant for an earlier wait may be drained here
                // too: the caller looks at the ring either way. A hang-up
                // or error with nothing to read: the receiver's end is
                // gone (an honest receiver closes it with the link).
                let revents = fds[0].revents();
                let drained = if revents.contains(PollFlags::IN) {
                    self.drain_readiness()
                } else if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
                    Drained::Closed
                } else {
                    Drained::Nothing
                };
                match drained {
                    Drained::Signalled => Park::Woken,
                    // The receiver's end closed with its side of the link.
                    Drained::Closed => Park::PeerGone,
                    Drained::Nothing if hung_up(&fds[1]) => Park::PeerGone,
                    Drained::Nothing => Park::Woken,
                }
            }
            // After a slice (or a signal, or a failed wait), the caller looks
            // at the ring again: a safety net should a wake-up ever be
            // missed.
            _ => Park::Woken,
        }
    }

    /// Closes the connection (the peer sees the hang-up).
    pub(crate) fn shutdown(&self) {
        let _ = rustix::net::shutdown(&self.sock, Shutdown::Both);
    }

    /// Attachments travel in the socket's queue, which keeps them whatever
    /// becomes of the sending process.
    pub(crate) const ATTACHMENTS_NEED_SENDER: bool = false;

    /// Nothing outlives a dropped connection here: at once.
    pub(crate) fn await_lingering(_deadline: Option<Instant>) -> bool {
        true
    }

    /// Attachments travel beside the ring, on the socket.
    pub(crate) fn aux_len(_buffer: bool, _sections: &[&Section]) -> usize {
        0
    }

    /// Sends the attachments on the socket, waiting for room in it by
    /// `until` at most (`None`: as long as the peer lives): `TimedOut` with
    /// nothing sent, any other error with the connection broken.
    pub(crate) fn send_aux(
        &self,
        buffer: Option<&Section>,
        sections: &[&Section],
        until: Option<Instant>,
    ) -> io::Result<Vec<u8>> {
        let (records, section_fds) = wire::encode_sections(sections)?;
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(1 + sections.len());
        let buffer_fd = buffer.map(|b| b.inner().transfer_fd()).transpose()?;
        if let Some(fd) = &buffer_fd {
            fds.push(fd.as_fd());
        }
        fds.extend(section_fds.iter().map(|f| f.as_fd()));
        let header = Header {
            magic: AUX,
            b0: u8::from(buffer.is_some()),
            b1: sections.len() as u8,
            seq: 0,
            word: buffer.map_or(0, |b| b.len()),
            len: records.len() as u64,
        };
        wire::send_frame_until(&self.sock, &header, &records, &fds, until)?;
        Ok(Vec::new())
    }

    pub(crate) fn recv_aux(
        &self,
        inline: &[u8],
        buffer: bool,
        sections: usize,
    ) -> io::Result<(Option<Section>, Vec<Section>)> {
        if !inline.is_empty() {
            return Err(wire::bad("unexpected attachment bytes in the ring"));
        }
        // The peer writes an attachment's whole frame to the socket before
        // it publishes the record that announces it (`Client::put_inner`,
        // `ServerConn::put_reply`), so when the record is seen the frame is
        // queued already. Less is a broken or hostile peer: refused at once,
        // not waited for, since a wait would hold this thread and every other
        // sender it serves.
        let queued = |what: &str, need: u64| -> io::Result<()> {
            let have = rustix::io::ioctl_fionread(&self.sock)?;
            if have < need {
                return Err(wire::bad(format!("{what} is not there ({have} of {need} bytes queued)")));
            }
            Ok(())
        };
        queued("the attachment announced by the record", wire::HEADER as u64)?;
        self.sock.set_read_timeout(Some(PEER_STEP))?;
        let (h, mut fds) =
            wire::recv_header(&self.sock, Patience::Queued, false)?.ok_or_else(|| wire::bad("the peer hung up"))?;
        if h.magic != AUX || h.b0 != u8::from(buffer) || h.b1 as usize != sections {
            return Err(wire::bad("the attachment does not match its record"));
        }
        // The section records are read whole, already queued: a peer that
        // announced fewer bytes than it sends cannot make this thread wait
        // for the rest.
        if h.len > wire::max_section_records(sections) {
            return Err(wire::bad(format!("{} bytes of records for {sections} sections", h.len)));
        }
        queued("the rest of the attachment", h.len)?;
        if fds.len() != usize::from(buffer) + sections {
            return Err(wire::bad(format!("{} descriptors for an attachment", fds.len())));
        }
        let buf = if buffer {
            let s = sealed_section(fds.remove(0), "buffer")?;
            if s.len() != h.word {
                return Err(wire::bad("buffer size differs from its announcement"));
            }
            Some(s)
        } else {
            None
        };
        let mut records = vec![0u8; h.len as usize];
        super::scm::recv_exact(&self.sock, &mut records, Patience::Queued)?;
        let secs = wire::decode_sections(&records, sections, fds)?;
        Ok((buf, secs))
    }

    /// A payload too large for the pool: a memfd sealed against every change,
    /// which the receiver reads in place.
    pub(crate) fn oneshot(data: &[u8]) -> io::Result<Section> {
        let fd = wire::sealed_memfd(data)?;
        sealed_section(fd, "payload")
    }

    /// Whether no process can write the section any more.
    pub(crate) fn frozen(section: &Section) -> bool {
        rfs::fcntl_get_seals(section.inner().fd()).is_ok_and(|s| s.contains(SealFlags::WRITE))
    }
}

// ---------------------------------------------------------------- receiving

#[derive(Debug)]
pub(crate) struct Mailbox {
    dispatch: Arc<Dispatch>,
    stop: Arc<OwnedFd>,
    acceptor: Option<JoinHandle<()>>,
    lock: OwnedFd,
    lock_path: PathBuf,
    socket_path: PathBuf,
    made: Made,
}

fn dir_error(e: runtime::DirError) -> BindError {
    BindError::RuntimeDir { path: e.path, reason: e.reason }
}

/// Whether `path` still names the file `fd` is open on.
fn same_file(path: &std::path::Path, fd: impl AsFd) -> bool {
    match (rfs::lstat(path), rfs::fstat(fd)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

fn read_pid(fd: impl AsFd) -> Option<u32> {
    let mut buf = [0u8; 16];
    let n = rustix::io::pread(fd, &mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

impl Mailbox {
    pub(crate) fn bind(name: &Name, options: &MailboxOptions) -> Result<(Mailbox, Arc<Dispatch>), BindError> {
        let io = |source: io::Error| BindError::Io { name: name.to_string(), source };
        let dir = runtime::runtime_dir().map_err(dir_error)?;
        let lock_path = runtime::lock_path(&dir, name);
        let socket_path = runtime::socket_path(&dir, name);
        let lock = loop {
            let fd = open_regular(&lock_path, OFlags::RDWR | OFlags::CREATE).map_err(io)?;
            match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(BindError::AlreadyBound { name: name.to_string(), pid: read_pid(&fd) });
                }
                Err(e) => return Err(io(e.into())),
            }
            // A concurrent `ls` may have removed a stale lock file between our
            // open and our lock: then start over with a fresh one.
            if same_file(&lock_path, &fd) {
                break fd;
            }
        };
        // A bind that fails from here on leaves none of the name's files.
        let started = (|| {
            rfs::ftruncate(&lock, 0).map_err(|e| io(e.into()))?;
            rustix::io::pwrite(&lock, format!("{}\n", std::process::id()).as_bytes(), 0).map_err(|e| io(e.into()))?;
            // We hold the name: whatever socket is there was left by a dead binder.
            let _ = std::fs::remove_file(&socket_path);
            let listener = UnixListener::bind(&socket_path).map_err(io)?;
            std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            // Other users allowed in: an abstract socket they can reach.
            let shared = if options.allowed_uids().is_empty() {
                None
            } else {
                use std::os::linux::net::SocketAddrExt;
                let uid = rustix::process::getuid().as_raw();
                let address = runtime::shared_address(uid, name);
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(address.as_bytes()).map_err(io)?;
                Some(UnixListener::bind_addr(&addr).map_err(|e| {
                    if e.kind() == io::ErrorKind::AddrInUse {
                        io(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("the shared address @{address} is taken by another process"),
                        ))
                    } else {
                        io(e)
                    }
                })?)
            };
            let bells = Bells::new().map_err(io)?;
            let dispatch = Arc::new(Dispatch::new(name.clone(), options.threads(), bells));
            let stop = Arc::new(rustix::event::eventfd(0, EventfdFlags::CLOEXEC).map_err(|e| io(e.into()))?);
            let acceptor = {
                let (dispatch, stop) = (dispatch.clone(), stop.clone());
                let accept = Acceptor {
                    name: name.clone(),
                    uid: rustix::process::getuid().as_raw(),
                    max_payload: options.max(),
                    max_conns: options.max_conns(),
                    allowed: options.allowed_uids().to_vec(),
                    shared,
                    dispatch,
                    listener,
                    stop,
                    conns: Vec::new(),
                    pending: Vec::new(),
                    spare: spare_fd(),
                };
                std::thread::Builder::new()
                    .name(format!("copydata-accept-{name}"))
                    .spawn(move || accept.run())
                    .map_err(io)?
            };
            Ok((dispatch, stop, acceptor))
        })();
        let (dispatch, stop, acceptor) = started.inspect_err(|_| {
            let _ = std::fs::remove_file(&socket_path);
            let _ = std::fs::remove_file(&lock_path);
        })?;
        let mailbox = Mailbox {
            dispatch: dispatch.clone(),
            stop,
            acceptor: Some(acceptor),
            lock,
            lock_path,
            socket_path,
            made: Made::here(),
        };
        Ok((mailbox, dispatch))
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's: its acceptor thread, stop descriptor,
            // connections and name (see `crate::fork`).
            std::mem::forget(self.acceptor.take());
            return;
        }
        self.dispatch.close();
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for c in self.dispatch.take_all() {
            c.hang_up_after_call();
        }
        if same_file(&self.lock_path, &self.lock) {
            let _ = std::fs::remove_file(&self.socket_path);
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

/// The mailbox's background thread: accepts and sets up connections, and
/// watches every connection's socket for the hang-up that says its sender
/// is gone.
struct Acceptor {
    name: Name,
    uid: u32,
    max_payload: u64,
    max_conns: usize,
    /// Other users this mailbox accepts ([`MailboxOptions::allow_uid`]).
    allowed: Vec<u32>,
    /// Their way in: the abstract socket, if any user is allowed.
    shared: Option<UnixListener>,
    dispatch: Arc<Dispatch>,
    listener: UnixListener,
    stop: Arc<OwnedFd>,
    conns: Vec<(Arc<ServerConn>, u32)>,
    /// Accepted connections whose hello has not arrived yet, each with its
    /// deadline: set-up starts only once the hello is there, so a client
    /// that connects and says nothing holds up nobody.
    pending: Vec<Pending>,
    /// A descriptor held in reserve: when the process has none left, the
    /// acceptor gives this one up for an `accept` and refuses the sender
    /// with the reason, rather than leave it in the listen queue until its
    /// connect timeout.
    spare: Option<OwnedFd>,
}

/// A descriptor to hold in reserve (`Acceptor::spare`).
fn spare_fd() -> Option<OwnedFd> {
    rfs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
}

/// A connection waiting for its sender's hello.
struct Pending {
    /// (Emptied before it is closed: the sender writes to it.)
    stream: Disarmed<UnixStream>,
    peer: Peer,
    uid: u32,
    deadline: Instant,
    /// Part of a hello came (a sender writes its hello at once): not
    /// polled for input any more (it stays readable), but looked at again
    /// every [`PARTIAL_LOOK`]; set up once the rest is there, dropped at its
    /// deadline if it never comes.
    partial: bool,
}

/// How often the acceptor looks again at a partial hello.
const PARTIAL_LOOK: Duration = Duration::from_millis(5);

/// The most connections that may wait for their hello at once; a flood of
/// silent ones pushes the oldest out.
const MAX_PENDING: usize = 256;

impl Acceptor {
    fn run(mut self) {
        loop {
            let mut fds = Vec::with_capacity(3 + self.conns.len() + self.pending.len());
            fds.push(PollFd::new(&*self.stop, PollFlags::IN));
            fds.push(PollFd::new(&self.listener, PollFlags::IN));
            // Always a third entry, so connections start at 3.
            fds.push(PollFd::new(self.shared.as_ref().unwrap_or(&self.listener), PollFlags::IN));
            for (c, _) in &self.conns {
                fds.push(PollFd::new(c.link().socket(), PollFlags::RDHUP));
            }
            for p in &self.pending {
                // A partial hello stays readable: polled for a hang-up only.
                fds.push(PollFd::new(&p.stream, if p.partial { PollFlags::empty() } else { PollFlags::IN }));
            }
            let now = Instant::now();
            let timeout = self
                .pending
                .iter()
                .map(|p| if p.partial { p.deadline.min(now + PARTIAL_LOOK) } else { p.deadline })
                .min()
                .map(|d| timespec(d.saturating_duration_since(now)));
            if let Err(e) = rustix::event::poll(&mut fds, timeout.as_ref()) {
                if e == Errno::INTR {
                    continue;
                }
                log::warn!("mailbox {}: poll failed: {e}", self.name);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if self.dispatch.is_closed() || !fds[0].revents().is_empty() {
                return;
            }
            let listener_ready = !fds[1].revents().is_empty();
            let shared_ready = self.shared.is_some() && !fds[2].revents().is_empty();
            let n = self.conns.len();
            let gone: Vec<usize> =
                fds[3..3 + n].iter().enumerate().filter(|(_, f)| !f.revents().is_empty()).map(|(i, _)| i).collect();
            let spoke: Vec<bool> = fds[3 + n..].iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            for i in gone.into_iter().rev() {
                // The worker delivers what the sender left in the ring (and
                // on the socket) before it drops the connection. (`serve`
                // may have moved the connection to another worker since
                // set-up, and the region that names it is the sender's to
                // write: every worker looks.)
                let (conn, _) = self.conns.swap_remove(i);
                conn.dead.store(true, Ordering::Release);
                self.dispatch.poke_all();
            }
            let now = Instant::now();
            let mut waiting = Vec::with_capacity(self.pending.len());
            for (mut p, spoke) in std::mem::take(&mut self.pending).into_iter().zip(spoke) {
                if spoke && !p.partial {
                    match rustix::io::ioctl_fionread(&p.stream) {
                        // The whole hello is there (or the peer hung up, which
                        // set-up notices): set-up reads it at once.
                        Ok(n) if n == 0 || n >= wire::HEADER as u64 => self.set_up_and_add(p.stream, p.peer, p.uid),
                        // Part of it: set-up would wait for the rest, and
                        // every sender behind this one with it.
                        Ok(_) => {
                            p.partial = true;
                            waiting.push(p);
                        }
                        Err(_) => {}
                    }
                } else if spoke {
                    // A partial hello's sender hung up.
                } else if p.partial {
                    match rustix::io::ioctl_fionread(&p.stream) {
                        Ok(n) if n >= wire::HEADER as u64 => self.set_up_and_add(p.stream, p.peer, p.uid),
                        Ok(_) if now < p.deadline => waiting.push(p),
                        _ => log::warn!(
                            "mailbox {}: pid {} sent part of a hello and nothing more for {PEER_STEP:?}",
                            self.name,
                            p.peer.pid
                        ),
                    }
                } else if now >= p.deadline {
                    log::warn!(
                        "mailbox {}: pid {} connected but said nothing for {PEER_STEP:?}",
                        self.name,
                        p.peer.pid
                    );
                } else {
                    waiting.push(p);
                }
            }
            self.pending = waiting;
            if listener_ready {
                self.accept_one(false);
            }
            if shared_ready {
                self.accept_one(true);
            }
        }
    }

    fn accept_one(&mut self, shared: bool) {
        let listener = match (&self.shared, shared) {
            (Some(l), true) => l,
            _ => &self.listener,
        };
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if [Errno::MFILE, Errno::NFILE].iter().any(|n| e.raw_os_error() == Some(n.raw_os_error())) => {
                // Out of descriptors: the sender would wait in the listen
                // queue until its connect timeout. Give up the spare for
                // one accept and tell it why instead (it reads the refusal
                // before the hang-up, whether its hello was read or not).
                match self.spare.take() {
                    Some(spare) => {
                        drop(spare);
                        if let Ok((s, _)) = listener.accept() {
                            let s = Disarmed::new(s);
                            let pid = peer_cred(&*s).map_or(0, |c| c.pid);
                            log::warn!(
                                "mailbox {}: refused a connection from pid {pid}: out of descriptors ({e})",
                                self.name
                            );
                            let reason = format!("the receiver has run out of file descriptors ({e})");
                            let _ = Self::welcome(&s, SETUP_BUSY, &reason, &[], 0);
                            // Closing shuts the sender's writing off: let its
                            // hello (written at once after its connect) come
                            // first, so that it reads the refusal rather than
                            // fail to write (a moment at most).
                            let mut look = [PollFd::new(&*s, PollFlags::IN)];
                            let _ = rustix::event::poll(&mut look, Some(&timespec(Duration::from_millis(100))));
                        }
                    }
                    // No spare (it could not be taken back yet): look again
                    // in a while rather than spin on the ready listener.
                    None => std::thread::sleep(Duration::from_millis(10)),
                }
                self.spare = spare_fd();
                return;
            }
            Err(_) => return,
        };
        let Ok(cred) = peer_cred(&stream) else { return };
        let peer = Peer { pid: cred.pid as u32, uid: Some(cred.uid) };
        if self.pending.len() >= MAX_PENDING {
            let oldest = self.pending.remove(0);
            log::warn!("mailbox {}: too many silent connections; dropped pid {}'s", self.name, oldest.peer.pid);
        }
        let deadline = Instant::now() + PEER_STEP;
        self.pending.push(Pending { stream: Disarmed::new(stream), peer, uid: cred.uid, deadline, partial: false });
    }

    fn set_up_and_add(&mut self, stream: Disarmed<UnixStream>, peer: Peer, uid: u32) {
        match self.set_up(stream, peer, uid) {
            Ok(Some((conn, w))) => {
                self.conns.push((conn.clone(), w));
                self.dispatch.add(w, conn);
            }
            Ok(None) => {}
            Err(reason) => log::warn!("mailbox {}: set-up with pid {} failed: {reason}", self.name, peer.pid),
        }
    }

    fn welcome(stream: &UnixStream, status: u8, reason: &str, fds: &[BorrowedFd<'_>], max: u64) -> io::Result<()> {
        let h =
            Header { magic: WELCOME, b0: status, b1: 0, seq: u64::from(PROTOCOL), word: max, len: reason.len() as u64 };
        // By the same step as the socket's write timeout; with descriptors,
        // also while this user has too many in flight for a moment
        // (ETOOMANYREFS), as a sender's attachments wait.
        wire::send_frame_until(stream, &h, reason.as_bytes(), fds, Some(Instant::now() + PEER_STEP))
    }

    fn set_up(
        &self,
        stream: Disarmed<UnixStream>,
        peer: Peer,
        uid: u32,
    ) -> Result<Option<(Arc<ServerConn>, u32)>, String> {
        stream.set_read_timeout(Some(PEER_STEP)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(PEER_STEP)).map_err(|e| e.to_string())?;
        // (Only once `FIONREAD` said the hello is there: never waited for.)
        let (hello, _fds) = match wire::recv_header(&stream, Patience::Queued, false) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("no hello: {e}")),
        };
        if hello.magic == REQUEST {
            // A sender of protocol 1 (copydata 0.1): tell it in its own terms.
            let reason = format!("incompatible peer: this mailbox speaks copydata protocol {PROTOCOL}, the sender 1");
            let h =
                Header { magic: REPLY, b0: STATUS_REFUSED, b1: 0, seq: hello.seq, word: 0, len: reason.len() as u64 };
            let _ = wire::send_frame(&stream, &h, reason.as_bytes(), &[]);
            return Err(reason);
        }
        if hello.magic != HELLO {
            return Err("not a copydata hello (bad magic)".into());
        }
        if uid != self.uid && !self.allowed.contains(&uid) {
            log::warn!("mailbox {}: refused a connection from uid {uid} (pid {})", self.name, peer.pid);
            let reason = if self.allowed.is_empty() {
                "the mailbox accepts only its own user".to_string()
            } else {
                format!("the mailbox does not accept uid {uid}")
            };
            let _ = Self::welcome(&stream, SETUP_REFUSED, &reason, &[], 0);
            return Ok(None);
        }
        let wait = Wait::from_code(hello.b0);
        if hello.seq != u64::from(PROTOCOL) || wait.is_none() {
            let reason = format!(
                "this mailbox speaks copydata protocol {PROTOCOL}, the sender {} (wait mode {})",
                hello.seq, hello.b0
            );
            let _ = Self::welcome(&stream, SETUP_INCOMPATIBLE, &reason, &[], 0);
            return Err(reason);
        }
        if self.conns.len() >= self.max_conns {
            let reason = crate::mailbox::at_connection_limit(self.conns.len());
            log::warn!("mailbox {}: refused a connection from pid {}: {reason}", self.name, peer.pid);
            let _ = Self::welcome(&stream, SETUP_BUSY, &reason, &[], 0);
            return Ok(None);
        }
        let w = self.dispatch.pick();
        let made = (|| {
            let region = Region::create(w).map_err(|e| format!("creating the region: {e}"))?;
            region.section().inner().seal_seals().map_err(|e| format!("sealing the region: {e}"))?;
            let region_fd = region.section().inner().transfer_fd().map_err(|e| e.to_string())?;
            let bells_fd = self.dispatch.bells().section.inner().transfer_fd().map_err(|e| e.to_string())?;
            let (notify, theirs) = readiness_pair().map_err(|e| format!("creating the readiness handle: {e}"))?;
            Ok::<_, String>((region, region_fd, bells_fd, notify, theirs))
        })();
        // Out of descriptors or memory, say: the sender is told so (busy:
        // a later try may succeed), not left to guess from a closed
        // connection.
        let (region, region_fd, bells_fd, notify, theirs) = made.inspect_err(|reason| {
            let reason = format!("the receiver could not set up the connection: {reason}");
            let _ = Self::welcome(&stream, SETUP_BUSY, &reason, &[], 0);
        })?;
        let fds = [region_fd.as_fd(), bells_fd.as_fd(), theirs.as_fd()];
        match Self::welcome(&stream, SETUP_OK, "", &fds, self.max_payload) {
            Ok(()) => {}
            // The sender gave up meanwhile (its connect timeout ended, or it
            // exited): nothing went wrong here.
            Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
                log::info!("mailbox {}: pid {} left during its set-up", self.name, peer.pid);
                return Ok(None);
            }
            Err(e) => return Err(format!("sending the region: {e}")),
        }
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        let link = Link { region, sock: stream, bells: None, notify: Disarmed::new(notify) };
        let conn = Arc::new(ServerConn::new(link, peer, wait.expect("checked"), self.max_payload));
        Ok(Some((conn, w)))
    }
}

impl Link {
    fn socket(&self) -> &UnixStream {
        &self.sock
    }
}

// ---------------------------------------------------------------- sending

/// Connects to the mailbox `name` and sets up the shared region. Returns
/// the link and the receiver's payload limit.
pub(crate) fn connect(
    name: &Name,
    wait: Wait,
    deadline: Instant,
    owner: Option<u32>,
    abort: Option<&crate::mailbox::Abort>,
) -> Result<(Link, u64), SendError> {
    let shown = || name.to_string();
    let io = |source: io::Error| SendError::Io { name: shown(), source };
    let timed_out =
        || SendError::TimedOut { name: shown(), timeout: Duration::ZERO, stage: crate::TimeoutStage::Connecting };
    let me = rustix::process::getuid().as_raw();
    if let Some(owner) = owner.filter(|&o| o != me) {
        // Another user's mailbox, at its abstract address: anyone could
        // have bound that, so the listener's user is checked.
        let address = runtime::shared_address(owner, name);
        let addr = rustix::net::SocketAddrUnix::new_abstract_name(address.as_bytes()).map_err(|e| io(e.into()))?;
        let sock = connect_until(&addr, deadline, abort).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => timed_out(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => SendError::NoSuchMailbox { name: shown() },
            _ => io(e),
        })?;
        let sock = Disarmed::new(sock);
        let cred = peer_cred(&*sock).map_err(io)?;
        if cred.uid != owner {
            return Err(SendError::Refused {
                name: shown(),
                reason: format!("the address of uid {owner}'s mailbox is held by uid {}", cred.uid),
            });
        }
        return set_up_connection(name, sock, wait, deadline, abort);
    }
    // A directory that is not safely ours could hold a planted mailbox:
    // refuse to send there. One that cannot be made or looked at is an
    // error of this side (no mailbox saw anything).
    let dir = runtime::runtime_dir().map_err(|e| match e.kind {
        None => SendError::Refused { name: shown(), reason: format!("runtime directory {}: {}", e.path, e.reason) },
        Some(_) => io(e.to_io()),
    })?;
    let path = runtime::socket_path(&dir, name);
    let addr = rustix::net::SocketAddrUnix::new(&path).map_err(|e| io(e.into()))?;
    let sock = connect_until(&addr, deadline, abort).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => timed_out(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            // A dead binder's files: remove them while we are here.
            reclaim_if_dead(&dir, name);
            SendError::NoSuchMailbox { name: shown() }
        }
        io::ErrorKind::PermissionDenied => {
            SendError::Refused { name: shown(), reason: format!("permission denied ({e})") }
        }
        _ => io(e),
    })?;
    set_up_connection(name, Disarmed::new(sock), wait, deadline, abort)
}

/// The sender's side of the set-up, on a connected socket: the hello, then
/// the welcome with the region and the doorbells.
/// (`sock` is emptied before it is closed, on every way out: the receiver
/// writes to it.)
fn set_up_connection(
    name: &Name,
    sock: Disarmed<UnixStream>,
    wait: Wait,
    deadline: Instant,
    abort: Option<&crate::mailbox::Abort>,
) -> Result<(Link, u64), SendError> {
    let shown = || name.to_string();
    let io = |source: io::Error| SendError::Io { name: shown(), source };
    let timed_out =
        || SendError::TimedOut { name: shown(), timeout: Duration::ZERO, stage: crate::TimeoutStage::Connecting };
    // An abort from now on shuts the socket down: every wait below ends at
    // once. (The guard, a local, goes before `sock`, a parameter.)
    let _watched = match abort {
        Some(a) => {
            if !a.watch(sock.as_fd()).map_err(io)? {
                return Err(io(io::ErrorKind::Interrupted.into()));
            }
            Some(Unwatch(a))
        }
        None => None,
    };
    let left = deadline.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()).ok_or_else(timed_out)?;
    sock.set_read_timeout(Some(left)).map_err(io)?;
    sock.set_write_timeout(Some(left)).map_err(io)?;
    let hello = Header { magic: HELLO, b0: wait.code(), b1: 0, seq: u64::from(PROTOCOL), word: 0, len: 0 };
    let step_err = |e: io::Error| {
        if wire::is_timeout(&e) {
            timed_out()
        } else if wire::is_disconnect(&e) {
            SendError::Incompatible {
                name: shown(),
                reason: "the receiver closed the connection during set-up (an older copydata, or it died)".into(),
            }
        } else if e.kind() == io::ErrorKind::InvalidData {
            // What the receiver sent is no set-up (descriptors of a kind
            // it never sends, say).
            SendError::Protocol { name: shown(), reason: e.to_string() }
        } else {
            io(e)
        }
    };
    wire::send_frame(&sock, &hello, &[], &[]).map_err(step_err)?;
    let (h, fds) = wire::recv_header(&sock, Patience::Until(deadline), true)
        .map_err(step_err)?
        .ok_or_else(|| step_err(io::ErrorKind::UnexpectedEof.into()))?;
    // (Whatever is not taken below, on any way out, is closed elsewhere:
    // the readiness handle is a socket the receiver may have filled.)
    let mut fds = super::scm::Foreign(fds);
    if h.magic != WELCOME {
        return Err(SendError::Incompatible {
            name: shown(),
            reason: "the receiver answered set-up with something else".into(),
        });
    }
    match h.b0 {
        SETUP_OK => {}
        SETUP_REFUSED | SETUP_INCOMPATIBLE | SETUP_BUSY => {
            let reason = wire::read_reason(&sock, h.len, deadline).map_err(step_err)?;
            return Err(match h.b0 {
                SETUP_REFUSED => SendError::Refused { name: shown(), reason },
                SETUP_BUSY => SendError::Busy { name: shown(), reason },
                _ => SendError::Incompatible { name: shown(), reason },
            });
        }
        other => {
            return Err(SendError::Incompatible { name: shown(), reason: format!("unknown set-up status {other}") });
        }
    }
    let bad = |reason: String| SendError::Protocol { name: shown(), reason };
    if h.seq != u64::from(PROTOCOL) || fds.0.len() != 3 || h.len != 0 {
        return Err(SendError::Incompatible { name: shown(), reason: format!("set-up of protocol {}", h.seq) });
    }
    // A socket only as the readiness handle: the region and the doorbells
    // are memory (a socket there would be closed here, with what it holds).
    if !fds.0[..2].iter().all(|fd| scm::fd_kind(fd) == FdKind::File) {
        return Err(bad("the region or the doorbells are not memory".into()));
    }
    let notify = Disarmed::new(fds.0.pop().expect("three descriptors"));
    // Connected: not a listening socket.
    if scm::fd_kind(&*notify) != FdKind::UnixStream {
        return Err(bad("the readiness handle is not a Unix stream socket".into()));
    }
    // Connected to the receiver's process, as one end of its socket pair:
    // not a socket that reads as hung up from the start.
    let pid_of = |fd: BorrowedFd<'_>| peer_cred(fd).map(|c| c.pid);
    if !matches!((pid_of(notify.as_fd()), pid_of(sock.as_fd())), (Ok(a), Ok(b)) if a == b) {
        return Err(bad("the readiness handle is not connected to the receiver".into()));
    }
    let bells_fd = fds.0.pop().expect("three descriptors");
    let region =
        sealed_section(fds.0.pop().expect("three descriptors"), "connection region").map_err(|e| bad(e.to_string()))?;
    let region = Region::adopt(region).map_err(bad)?;
    let bells = sealed_section(bells_fd, "doorbell section").map_err(|e| bad(e.to_string()))?;
    if bells.len() != BELLS_LEN as u64 {
        return Err(bad(format!("doorbell section of {} bytes", bells.len())));
    }
    let bells = bells.map_mut(0, BELLS_LEN).map_err(|e| bad(format!("mapping the doorbells: {e}")))?;
    sock.set_read_timeout(None).map_err(io)?;
    sock.set_write_timeout(None).map_err(io)?;
    Ok((Link { region, sock, bells: Some(bells), notify }, h.word))
}

/// The peer's credentials (`SO_PEERCRED`), pid 0 where the peer's process
/// is not in this pid namespace (a sender in a container, say): rustix's
/// `UCred` cannot hold that (its pid is non-zero).
fn peer_cred(fd: impl AsFd) -> io::Result<libc::ucred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a `ucred` and `len` its size, as SO_PEERCRED writes.
    let rc = unsafe {
        libc::getsockopt(fd.as_fd().as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    };
    if rc == 0 { Ok(cred) } else { Err(io::Error::last_os_error()) }
}

/// Forgets the socket of an abortable set-up when the set-up ends.
struct Unwatch<'a>(&'a crate::mailbox::Abort);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.unwatch();
    }
}

/// A connection's readiness handle: a Unix stream socket pair, this
/// side's end non-blocking, the other end for the sender.
fn readiness_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (mine, theirs) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    rustix::fs::fcntl_setfl(&mine, OFlags::NONBLOCK)?;
    Ok((mine, theirs))
}

/// Connects to the socket at `addr`, retrying while its backlog is full
/// (a stopped or swamped receiver) until `deadline`: a plain blocking
/// `connect` would wait for ever there. `WouldBlock` when the time is up.
fn connect_until(
    addr: &rustix::net::SocketAddrUnix,
    deadline: Instant,
    abort: Option<&crate::mailbox::Abort>,
) -> io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let mut pause = Duration::from_micros(100);
    loop {
        // (Each pause is 20 ms at most: an abort is seen that soon.)
        if abort.is_some_and(crate::mailbox::Abort::aborted) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        match rustix::net::connect(&fd, addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            // A Unix socket's non-blocking connect fails with EAGAIN while
            // the listener's queue is full.
            Err(Errno::AGAIN) if Instant::now() < deadline => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens an existing file of the runtime directory without blocking (a FIFO
/// planted there would block a plain open) and only if it is a regular
/// file; anything else is an error naming what it is.
fn open_regular(path: &std::path::Path, flags: OFlags) -> io::Result<OwnedFd> {
    let fd = rfs::open(path, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::RUSR | Mode::WUSR)?;
    let st = rfs::fstat(&fd)?;
    let kind = rfs::FileType::from_raw_mode(st.st_mode);
    if kind != rfs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is a {kind:?}, not a copydata mailbox file", path.display()),
        ));
    }
    // The directory is this user's alone (checked), so only a privileged
    // process could have put another user's file here: never trust it.
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is owned by uid {}, not by this user (uid {me}); not a copydata mailbox file",
                path.display(),
                st.st_uid
            ),
        ));
    }
    Ok(fd)
}

/// Removes the files of the mailbox `name` if no live process has bound it.
/// Returns the binder's pid if one has.
fn reclaim_if_dead(dir: &std::path::Path, name: &Name) -> Option<u32> {
    let path = runtime::lock_path(dir, name);
    let fd = match open_regular(&path, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(e) => {
            if e.kind() == io::ErrorKind::InvalidData {
                log::warn!("skipping {e}");
            }
            return None;
        }
    };
    if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
        // Nobody holds it: left by a dead binder. Clean up under the lock.
        if same_file(&path, &fd) {
            let _ = std::fs::remove_file(runtime::socket_path(dir, name));
            let _ = std::fs::remove_file(&path);
        }
        return None;
    }
    Some(read_pid(&fd).unwrap_or(0))
}

/// Nothing to do: only Windows restricts which process may take the
/// foreground.
pub(crate) fn allow_foreground(_pid: u32) {}

pub(crate) fn list() -> Result<Vec<MailboxInfo>, ListError> {
    let failed = |source| ListError::Io { what: Listing::Mailboxes, source };
    let dir = runtime::runtime_dir().map_err(|e| failed(e.to_io()))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(failed)? {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().and_then(runtime::name_of_lock) else { continue };
        if let Some(pid) = reclaim_if_dead(&dir, &name) {
            out.push(MailboxInfo { name: name.to_string(), pid });
        }
    }
    Ok(out)
}

pub(crate) fn socket_path_of(name: &str) -> Option<PathBuf> {
    let name = Name::new(name).ok()?;
    Some(runtime::socket_path(&runtime::runtime_dir().ok()?, &name))
}
