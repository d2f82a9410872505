//! Linux mailboxes: a Unix stream socket per mailbox in the per-user runtime
//! directory, a connection per sender, one thread per connection.
//!
//! Binding takes an exclusive `flock` on `NAME.mailbox` (which records the
//! binder's pid): the kernel drops it when the binder dies, so a name left by
//! a crashed process is free for the next `bind`, and `ls` removes what such
//! a process left behind.
//!
//! The transport is the socket; the request/reply exchange (`Sender::call`
//! and `serve_connection`) is the only place that knows it, so a
//! shared-memory ring can replace it behind the same types.

mod runtime;
mod wire;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::Shutdown;

use self::wire::{
    FLAG_MEMFD, Header, INLINE_MAX, MAX_SECTIONS, REPLY, REQUEST, STATUS_OK, STATUS_REFUSED, STATUS_TOO_LARGE,
};
use crate::error::{BindError, ListError, ReplyError, SendError};
use crate::mailbox::{MailboxInfo, MailboxOptions, Message, Peer, Reply, Request};
use crate::name::Name;
use crate::section::Section;

/// The receiving side's handle on one request: it writes the answer on the
/// connection itself, then lets the connection's thread read the next
/// request (so one sender's messages stay in order).
pub(crate) struct Responder {
    stream: Arc<UnixStream>,
    seq: u64,
    done: mpsc::SyncSender<()>,
}

impl Responder {
    pub(crate) fn reply(self, reply: Reply) -> Result<(), ReplyError> {
        let written = send_reply(&self.stream, self.seq, &reply);
        let _ = self.done.send(());
        written.map_err(|e| if wire::is_disconnect(&e) { ReplyError::SenderGone } else { ReplyError::Io(e) })
    }

    pub(crate) fn refuse(self, reason: &str) {
        let _ = send_refusal(&*self.stream, self.seq, reason);
        let _ = self.done.send(());
    }
}

struct Shared {
    name: Name,
    uid: u32,
    max_payload: u64,
    closed: AtomicBool,
    /// Every live connection, shut down when the mailbox closes.
    connections: Mutex<Vec<Arc<UnixStream>>>,
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    shared: Arc<Shared>,
    listener: Arc<UnixListener>,
    acceptor: Option<JoinHandle<()>>,
    lock: OwnedFd,
    lock_path: PathBuf,
    socket_path: PathBuf,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("name", &self.name).finish_non_exhaustive()
    }
}

fn dir_error((path, reason): runtime::DirError) -> BindError {
    BindError::RuntimeDir { path, reason }
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
    pub(crate) fn bind(name: &Name, options: &MailboxOptions, tx: mpsc::Sender<Request>) -> Result<Mailbox, BindError> {
        let io = |source: io::Error| BindError::Io { name: name.to_string(), source };
        let dir = runtime::runtime_dir().map_err(dir_error)?;
        let lock_path = runtime::lock_path(&dir, name);
        let socket_path = runtime::socket_path(&dir, name);
        let lock = loop {
            let fd = rfs::open(
                &lock_path,
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
            .map_err(|e| io(e.into()))?;
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
        rfs::ftruncate(&lock, 0).map_err(|e| io(e.into()))?;
        rustix::io::pwrite(&lock, format!("{}\n", std::process::id()).as_bytes(), 0).map_err(|e| io(e.into()))?;
        // We hold the name: whatever socket is there was left by a dead binder.
        let _ = std::fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path).map_err(io)?;
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            name: name.clone(),
            uid: rustix::process::getuid().as_raw(),
            max_payload: options.max(),
            closed: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let (shared, listener) = (shared.clone(), listener.clone());
            std::thread::Builder::new()
                .name(format!("copydata-accept-{name}"))
                .spawn(move || accept_loop(&shared, &listener, tx))
                .map_err(io)?
        };
        Ok(Mailbox { shared, listener, acceptor: Some(acceptor), lock, lock_path, socket_path })
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wakes the blocked accept (Linux returns EINVAL from it).
        let _ = rustix::net::shutdown(&*self.listener, Shutdown::Both);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for c in self.shared.connections.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = rustix::net::shutdown(&*c, Shutdown::Both);
        }
        if same_file(&self.lock_path, &self.lock) {
            let _ = std::fs::remove_file(&self.socket_path);
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener, tx: mpsc::Sender<Request>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) if shared.closed.load(Ordering::SeqCst) => return,
            Err(e) if e.raw_os_error() == Some(Errno::MFILE.raw_os_error()) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(cred) = rustix::net::sockopt::socket_peercred(&stream) else { continue };
        let peer = Peer { pid: cred.pid.as_raw_nonzero().get() as u32, uid: Some(cred.uid.as_raw()) };
        if cred.uid.as_raw() != shared.uid {
            log::warn!(
                "mailbox {}: refused a connection from uid {} (pid {})",
                shared.name,
                cred.uid.as_raw(),
                peer.pid
            );
            let _ = send_refusal(&stream, 0, "the mailbox accepts only its own user");
            continue;
        }
        let stream = Arc::new(stream);
        shared.connections.lock().unwrap_or_else(|e| e.into_inner()).push(stream.clone());
        let (shared2, tx2) = (shared.clone(), tx.clone());
        let spawned = std::thread::Builder::new().name(format!("copydata-conn-{}", peer.pid)).spawn(move || {
            if let Err(reason) = serve_connection(&shared2, &stream, peer, &tx2) {
                log::warn!("mailbox {}: dropped the connection from pid {}: {reason}", shared2.name, peer.pid);
            }
            let _ = rustix::net::shutdown(&*stream, Shutdown::Both);
            shared2.connections.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| !Arc::ptr_eq(c, &stream));
        });
        if spawned.is_err() {
            log::warn!("mailbox {}: out of threads; dropped a connection", shared.name);
        }
    }
}

fn send_refusal(sock: impl AsFd, seq: u64, reason: &str) -> io::Result<()> {
    let header = Header { magic: REPLY, b0: STATUS_REFUSED, b1: 0, seq, word: 0, len: reason.len() as u64 };
    wire::send_frame(sock, &header, reason.as_bytes(), &[])
}

/// Serves one sender: requests in order, each answered before the next is
/// read. Returns `Err` with the reason when the sender broke the protocol.
fn serve_connection(
    shared: &Shared,
    stream: &Arc<UnixStream>,
    peer: Peer,
    tx: &mpsc::Sender<Request>,
) -> Result<(), String> {
    loop {
        let (header, mut fds) = match wire::recv_header(stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) if wire::is_disconnect(&e) || shared.closed.load(Ordering::SeqCst) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        if header.magic != REQUEST {
            return Err("not a copydata request (bad magic)".into());
        }
        let (flags, sections) = (header.b0, header.b1 as usize);
        if flags & !FLAG_MEMFD != 0 {
            return Err(format!("unknown request flags {flags:#x}"));
        }
        if sections > MAX_SECTIONS {
            return Err(format!("{sections} sections (at most {MAX_SECTIONS})"));
        }
        let memfd = flags & FLAG_MEMFD != 0;
        if fds.len() != sections + usize::from(memfd) {
            return Err(format!("{} descriptors for {sections} sections", fds.len()));
        }
        let payload =
            wire::read_payload(stream, &header, memfd, &mut fds, shared.max_payload).map_err(|e| e.to_string())?;
        let sections = wire::decode_sections(stream, sections, fds).map_err(|e| e.to_string())?;
        if header.len > shared.max_payload {
            let h =
                Header { magic: REPLY, b0: STATUS_TOO_LARGE, b1: 0, seq: header.seq, word: shared.max_payload, len: 0 };
            wire::send_frame(stream, &h, &[], &[]).map_err(|e| e.to_string())?;
            continue;
        }
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let responder = Responder { stream: stream.clone(), seq: header.seq, done: done_tx };
        // If the mailbox is closing, the request is dropped here, which
        // refuses it.
        let _ = tx.send(Request::new(Message::new(header.word, payload, sections, peer), responder));
        if done_rx.recv().is_err() {
            return Ok(());
        }
    }
}

fn send_reply(stream: &UnixStream, seq: u64, reply: &Reply) -> io::Result<()> {
    let data: &[u8] = &reply.data;
    let mut header =
        Header { magic: REPLY, b0: STATUS_OK, b1: 0, seq, word: reply.code as u64, len: data.len() as u64 };
    if data.len() as u64 > INLINE_MAX {
        header.b1 = FLAG_MEMFD;
        let fd = wire::sealed_memfd(data)?;
        wire::send_frame(stream, &header, &[], &[fd.as_fd()])
    } else {
        wire::send_frame(stream, &header, data, &[])
    }
}

/// The sending side: one connection, made lazily and dropped after a
/// timeout or error.
#[derive(Debug)]
pub(crate) struct Sender {
    name: Name,
    path: PathBuf,
    conn: Option<UnixStream>,
    seq: u64,
}

impl Sender {
    pub(crate) fn connect(name: &Name) -> Result<Sender, SendError> {
        // A directory that is not safely ours could hold a planted mailbox:
        // refuse to send there.
        let dir = runtime::runtime_dir().map_err(|(path, reason)| SendError::Refused {
            name: name.to_string(),
            reason: format!("runtime directory {path}: {reason}"),
        })?;
        let mut s = Sender { name: name.clone(), path: runtime::socket_path(&dir, name), conn: None, seq: 0 };
        s.conn = Some(s.open()?);
        Ok(s)
    }

    fn open(&self) -> Result<UnixStream, SendError> {
        UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                // A dead binder's files: remove them while we are here.
                if let Some(dir) = self.path.parent() {
                    reclaim_if_dead(dir, &self.name);
                }
                SendError::NoSuchMailbox { name: self.name.to_string() }
            }
            io::ErrorKind::PermissionDenied => {
                SendError::Refused { name: self.name.to_string(), reason: format!("permission denied ({e})") }
            }
            _ => SendError::Io { name: self.name.to_string(), source: e },
        })
    }

    pub(crate) fn call(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.open()?,
        };
        self.seq += 1;
        let result = self.exchange(&conn, tag, data, sections, deadline, timeout);
        // Keep the connection only after a clean exchange: after a timeout a
        // late reply may still come on it, and must never be read as the
        // answer to a later message.
        if result.is_ok() {
            self.conn = Some(conn);
        }
        result
    }

    fn exchange(
        &self,
        conn: &UnixStream,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        let name = || self.name.to_string();
        let io = |source: io::Error| SendError::Io { name: name(), source };
        let timed_out = || SendError::TimedOut { name: name(), timeout: timeout.unwrap_or_default() };
        let remaining = |conn: &UnixStream| -> Result<(), SendError> {
            let left = match deadline {
                None => None,
                Some(d) => {
                    Some(d.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()).ok_or_else(timed_out)?)
                }
            };
            conn.set_read_timeout(left).and_then(|()| conn.set_write_timeout(left)).map_err(io)
        };

        let (records, section_fds) = wire::encode_sections(sections).map_err(io)?;
        let memfd = if data.len() as u64 > INLINE_MAX { Some(wire::sealed_memfd(data).map_err(io)?) } else { None };
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if let Some(fd) = &memfd {
            fds.push(fd.as_fd());
        }
        fds.extend(section_fds.iter().map(|f| f.as_fd()));
        let mut body = Vec::with_capacity(if memfd.is_some() { 0 } else { data.len() } + records.len());
        if memfd.is_none() {
            body.extend_from_slice(data);
        }
        body.extend_from_slice(&records);
        let header = Header {
            magic: REQUEST,
            b0: if memfd.is_some() { FLAG_MEMFD } else { 0 },
            b1: sections.len() as u8,
            seq: self.seq,
            word: tag,
            len: data.len() as u64,
        };
        remaining(conn)?;
        if let Err(e) = wire::send_frame(conn, &header, &body, &fds) {
            if wire::is_timeout(&e) {
                return Err(timed_out());
            }
            if !wire::is_disconnect(&e) {
                return Err(io(e));
            }
            // The receiver closed on us; it may have said why first.
        }
        drop((memfd, section_fds));

        loop {
            remaining(conn)?;
            let (h, mut fds) = match wire::recv_header(conn) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(SendError::ReceiverDied { name: name() }),
                Err(e) if wire::is_timeout(&e) => return Err(timed_out()),
                Err(e) if wire::is_disconnect(&e) => return Err(SendError::ReceiverDied { name: name() }),
                Err(e) => return Err(io(e)),
            };
            if h.magic != REPLY {
                return Err(io(wire::bad("not a copydata reply")));
            }
            let read_err = |e: io::Error| {
                if wire::is_timeout(&e) {
                    timed_out()
                } else if wire::is_disconnect(&e) {
                    SendError::ReceiverDied { name: name() }
                } else {
                    io(e)
                }
            };
            match h.b0 {
                STATUS_REFUSED => {
                    let reason = wire::read_reason(conn, h.len).map_err(read_err)?;
                    return Err(SendError::Refused { name: name(), reason });
                }
                STATUS_TOO_LARGE => {
                    return Err(SendError::PayloadTooLarge { name: name(), size: data.len() as u64, max: h.word });
                }
                STATUS_OK => {}
                other => return Err(io(wire::bad(format!("unknown reply status {other}")))),
            }
            let payload = wire::read_payload(conn, &h, h.b1 & FLAG_MEMFD != 0, &mut fds, u64::MAX).map_err(read_err)?;
            if h.seq != self.seq {
                // Cannot happen on a fresh connection per timed-out send, but
                // never hand out a reply to another message.
                continue;
            }
            return Ok(Reply { code: h.word as i64, data: payload });
        }
    }
}

/// Removes the files of the mailbox `name` if no live process has bound it.
/// Returns the binder's pid if one has.
fn reclaim_if_dead(dir: &std::path::Path, name: &Name) -> Option<u32> {
    let path = runtime::lock_path(dir, name);
    let fd = rfs::open(&path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).ok()?;
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

pub(crate) fn list() -> Result<Vec<MailboxInfo>, ListError> {
    let dir = runtime::runtime_dir()
        .map_err(|(path, reason)| ListError::Io(io::Error::other(format!("{path}: {reason}"))))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(ListError::Io)? {
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
