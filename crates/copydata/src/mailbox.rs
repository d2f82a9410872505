//! Mailboxes: `WM_COPYDATA`-style synchronous messages.
//!
//! A process binds a [`Mailbox`] under a name; others [`send`] it a tagged
//! block of bytes (the `COPYDATASTRUCT` of Win32: `dwData` is the tag) and
//! block until its handler has returned a [`Reply`] (a code, like the
//! `LRESULT`, and optional bytes), or until a timeout. Messages from one
//! sender are handled in order; many senders may send at once.
//!
//! ```no_run
//! use copydata::{Mailbox, Reply};
//!
//! // The receiver.
//! let server = Mailbox::bind("my-app")?.serve(|msg| {
//!     println!("tag {} from pid {}: {} bytes", msg.tag(), msg.sender().pid, msg.payload().len());
//!     Reply::new(0, b"thanks".to_vec())
//! });
//!
//! // A sender, in another process.
//! let reply = copydata::send("my-app", 7, b"hello")?;
//! assert_eq!(reply.code, 0);
//! assert_eq!(&reply.data[..], b"thanks");
//! # drop(server);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How messages travel
//!
//! The first send of a [`Sender`] sets up a connection: the receiver creates
//! a shared-memory region for it (a section, handed over as the seed
//! describes: create the mapping, give the peer a handle to it, tell it by
//! message) with a request ring and a reply ring. Every message and reply
//! then travels through that region: small payloads are copied into the
//! ring (and out of it into the receiver's private memory before the
//! handler sees them, so `payload()` never points at bytes a peer can still
//! change); large ones go through buffers of a per-connection pool, mapped
//! once and reused; [`Sender::loan`] lends such a buffer to fill in place
//! (zero copies, see [`crate::loan`]). Each side spins briefly for the other
//! and then sleeps ([`Wait`]), so an idle mailbox uses no CPU.
//!
//! # Portability
//!
//! | | Linux | Windows |
//! |---|---|---|
//! | mailbox | Unix socket in a 0700 per-user runtime directory, name held by an `flock` | message-only window (`HWND_MESSAGE`) whose class is derived from the name |
//! | lookup | the socket's path | `FindWindowExW(HWND_MESSAGE, class)` |
//! | set-up | hello on the socket; the region's memfd (sealed against resizing) back with `SCM_RIGHTS` | `WM_COPYDATA` hello; the receiver pushes the region and its events into the sender with `DuplicateHandle` |
//! | messages | the region's rings | the region's rings |
//! | sleeping and waking | futexes in shared memory; a sender parked for over 1 ms: a socket pair's end, polled with the socket | auto-reset event objects |
//! | a dead peer | the socket's hang-up (the receiver's acceptor polls for it; a sender parked for over 1 ms sleeps on it) | `WaitForMultipleObjects` on the peer's process handle |
//! | buffers and sections with a message | memfds / descriptors over the socket | handle values in the record, duplicated from the connection's process |
//! | peer identity | `SO_PEERCRED` (pid and uid) | the window's process id |
//! | plain Win32 senders | — | real `WM_COPYDATA`, reply code = `LRESULT` |

// Constructors used only by the backends that have mailboxes.
#![cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{BindError, ListError, RecvError, ReplyError, SendError, TimeoutStage};
pub use crate::fast::Wait;
use crate::fast::conn::{Body, CALL, Client, Fail, LentBuf, POST, ServerConn};
use crate::fast::serve::{Dispatch, Next, WorkerState};
use crate::fork::Made;
pub use crate::loan::{Loan, LoanView, ReplyLoan};
use crate::name::Name;
use crate::section::Section;
use crate::sys;
#[cfg(target_os = "linux")]
use crate::view::View;

/// The largest payload a mailbox accepts by default: 4 GiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 4 << 30;

/// Who sent a message: the kernel's `SO_PEERCRED` on Linux, the process of
/// the connection (or, for a plain `WM_COPYDATA`, `GetWindowThreadProcessId`
/// of the window named in `wParam`) on Windows.
#[doc(alias = "SO_PEERCRED")]
#[doc(alias = "GetWindowThreadProcessId")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The sender's process id. From the kernel on Linux (`SO_PEERCRED`)
    /// and for copydata senders on Windows (the process the connection's
    /// handles were pushed into). For a plain Win32 program's `WM_COPYDATA`
    /// it is only *claimed*: it is the process of the window the message
    /// names in `wParam`, and Windows cannot tell who really sent a
    /// message; do not grant anything on it alone.
    pub pid: u32,
    /// The sender's user id (Linux; `None` on Windows).
    pub uid: Option<u32>,
}

/// The bytes of a message or a reply.
///
/// As a slice, always memory no other process can change while the payload
/// lives: bytes copied out of shared memory into this process (up to
/// 256 MiB), or, for larger payloads on Linux, a memfd the sender sealed
/// against writes, read in place. A loaned payload ([`Sender::loan`],
/// [`Reply::loaned`]) is read in place through [`loan`](Self::loan); used
/// as a slice, it is copied into this process's memory on first use (a
/// snapshot: see [`copydata::loan`](crate::loan)), so code written for
/// ordinary payloads gets the bytes either way.
pub struct Payload(Repr);

enum Repr {
    Inline(Vec<u8>),
    /// A reply loan of this (receiving) process, on its way out. (Boxed,
    /// as is `Borrowed`: a payload moves by value through every call and
    /// reply, and should cost a few words to move, not a loan's size.)
    Lent(Box<ReplyLoan>),
    /// A loan received by this process (a loaned message or reply): read
    /// in place through [`Payload::loan`], or as a slice, copied out on
    /// first use.
    Borrowed(Box<Borrowed>),
    /// A view of memory that no process can write any more (Linux: a sealed
    /// memfd; Windows cannot seal a section, so there payloads are copied).
    #[cfg(target_os = "linux")]
    Frozen(View),
}

/// A loan received, and its bytes copied into this process's memory the
/// first time they are asked for as a slice.
struct Borrowed {
    view: LoanView,
    copy: std::sync::OnceLock<Vec<u8>>,
}

impl Payload {
    /// A payload of mapped memory.
    ///
    /// # Safety
    ///
    /// No process may be able to write the view's memory while the payload
    /// lives (for example a memfd with `F_SEAL_WRITE`).
    #[cfg(target_os = "linux")]
    pub(crate) unsafe fn frozen(view: View) -> Payload {
        Payload(Repr::Frozen(view))
    }

    pub(crate) fn borrowed(view: LoanView) -> Payload {
        Payload(Repr::Borrowed(Box::new(Borrowed { view, copy: std::sync::OnceLock::new() })))
    }

    pub(crate) fn reply_loan(&self) -> Option<&ReplyLoan> {
        match &self.0 {
            Repr::Lent(l) => Some(l),
            _ => None,
        }
    }

    /// A loaned payload (a loaned reply, or a loaned message's payload),
    /// read in place without a copy; `None` for ordinary bytes. Such a
    /// payload also dereferences to its bytes, copied into this process's
    /// memory on first use (see [`Payload`]).
    pub fn loan(&self) -> Option<&LoanView> {
        match &self.0 {
            Repr::Borrowed(b) => Some(&b.view),
            _ => None,
        }
    }

    /// The number of bytes, without copying a loaned payload.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Borrowed(b) => b.view.len(),
            _ => self.deref().len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, copied into a vector if they are mapped.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Inline(v) => v,
            Repr::Lent(l) => l.bytes().to_vec(),
            Repr::Borrowed(b) => {
                let Borrowed { view, copy } = *b;
                copy.into_inner().unwrap_or_else(|| view.to_vec())
            }
            #[cfg(target_os = "linux")]
            Repr::Frozen(view) => view.to_vec(),
        }
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(v) => v,
            Repr::Lent(l) => l.bytes(),
            Repr::Borrowed(b) => b.copy.get_or_init(|| b.view.to_vec()),
            #[cfg(target_os = "linux")]
            // SAFETY: `frozen`'s contract: nothing can write this memory while
            // the payload (and so the view) lives.
            Repr::Frozen(view) => unsafe { view.as_slice() },
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        Payload(Repr::Inline(v))
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Payload {
        Payload(Repr::Inline(v.to_vec()))
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload(Repr::Inline(Vec::new()))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

/// A received message: the `COPYDATASTRUCT` of Win32, whose `dwData` is
/// [`tag`](Self::tag) and whose `lpData`/`cbData` are
/// [`payload`](Self::payload).
#[doc(alias = "COPYDATASTRUCT")]
#[derive(Debug)]
pub struct Message {
    tag: u64,
    payload: Payload,
    sections: Vec<Section>,
    sender: Peer,
    call: bool,
    /// The connection it came on (fast-path messages), for loaned replies.
    origin: Option<Arc<ServerConn>>,
}

impl Message {
    /// A message from a plain Win32 program (`WM_COPYDATA`).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn new(tag: u64, payload: Payload, sections: Vec<Section>, sender: Peer) -> Message {
        Message { tag, payload, sections, sender, call: true, origin: None }
    }

    /// A message taken off a connection of the fast path (`origin`).
    #[inline]
    pub(crate) fn from_ring(
        tag: u64,
        payload: Payload,
        sections: Vec<Section>,
        sender: Peer,
        call: bool,
        origin: Arc<ServerConn>,
    ) -> Message {
        Message { tag, payload, sections, sender, call, origin: Some(origin) }
    }

    /// Lends a buffer of `len` bytes in shared memory for the reply, to fill
    /// in place and answer with [`Reply::loaned`]: the sender reads it
    /// without a copy ([`Reply::loan`]). The buffer is not cleared: bytes
    /// left unwritten go as they are (an earlier reply's, for example).
    /// Until it is sent or dropped, the buffer is this process's alone,
    /// whatever the sender writes in the shared region. Fails for a posted
    /// message (no reply goes back) and for a message from a plain Win32
    /// program.
    pub fn loan_reply(&self, len: usize) -> Result<ReplyLoan, ReplyError> {
        let unsupported = |what: &str| ReplyError::Io(std::io::Error::new(std::io::ErrorKind::Unsupported, what));
        if !self.call {
            return Err(unsupported("a posted message gets no reply"));
        }
        let conn = self.origin.as_ref().ok_or_else(|| unsupported("the sender cannot take a loaned reply"))?;
        let buf = conn.lend_reply(len).map_err(|e| ReplyError::Io(std::io::Error::other(e)))?;
        Ok(ReplyLoan::new(conn.clone(), buf, len))
    }

    /// The tag (`dwData` in Win32 terms).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The bytes (possibly none). A loaned message's are read in place
    /// through [`loan`](Self::loan); as a slice they are copied out on
    /// first use (see [`Payload`]).
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The payload of a loaned message ([`Sender::loan`]), read in place;
    /// `None` for an ordinary message.
    pub fn loan(&self) -> Option<&LoanView> {
        self.payload.loan()
    }

    /// Whether the sender waits for a reply (`false` for
    /// [`Sender::post`]: the handler's reply is then discarded).
    pub fn expects_reply(&self) -> bool {
        self.call
    }

    /// The sections that came with the message.
    ///
    /// A section arrives as the sender made it, and one backed by a file
    /// ([`Section::from_file`]) is read from that file. Where the file
    /// cannot be read (on a network share or a removable drive that has
    /// gone), touching a view of it ends this process: Windows raises
    /// `EXCEPTION_IN_PAGE_ERROR`, as Linux raises SIGBUS past the end of a
    /// truncated file (see [`Section::is_size_sealed`]). copydata refuses
    /// file-backed memory where it reads the sender's memory itself (the
    /// buffers of pooled payloads, loans and large payloads, the
    /// connection's region), but not in sections, which are shared on
    /// purpose: from a sender you do not trust, refuse those for which
    /// [`Section::is_memory_backed`] is `false`.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Takes the sections out of the message, to keep them.
    pub fn take_sections(&mut self) -> Vec<Section> {
        std::mem::take(&mut self.sections)
    }

    /// Who sent it.
    pub fn sender(&self) -> Peer {
        self.sender
    }

    /// The connection it came on, taken out (once the handler is done).
    pub(crate) fn take_origin(&mut self) -> Option<Arc<ServerConn>> {
        self.origin.take()
    }

    /// Whether the payload is a buffer worth keeping for the next large
    /// message (see `ServerConn::recycle`).
    pub(crate) fn has_large_buffer(&self) -> bool {
        matches!(&self.payload.0, Repr::Inline(v) if v.capacity() > crate::fast::INLINE_MAX)
    }

    /// The payload's buffer, for reuse by the next message.
    pub(crate) fn into_payload_vec(self) -> Option<Vec<u8>> {
        match self.payload.0 {
            Repr::Inline(v) => Some(v),
            _ => None,
        }
    }
}

/// The answer to a message: a code (the `LRESULT`) and optional bytes.
#[derive(Debug, Default)]
pub struct Reply {
    /// The reply code.
    pub code: i64,
    /// The reply bytes.
    pub data: Payload,
}

impl Reply {
    /// A reply with a code and bytes.
    pub fn new(code: i64, data: impl Into<Payload>) -> Reply {
        Reply { code, data: data.into() }
    }

    /// A reply with just a code.
    pub fn code(code: i64) -> Reply {
        Reply { code, data: Payload::default() }
    }

    /// A reply whose bytes are a loan ([`Message::loan_reply`]), filled in
    /// place: the sender reads them in place through [`Reply::loan`].
    pub fn loaned(code: i64, loan: ReplyLoan) -> Reply {
        Reply { code, data: Payload(Repr::Lent(Box::new(loan))) }
    }

    /// The bytes of a loaned reply, read in place (then `data` is empty);
    /// `None` for an ordinary reply. See [`crate::loan`] for why it is a
    /// view and not a slice.
    pub fn loan(&self) -> Option<&LoanView> {
        self.data.loan()
    }
}

/// Who answers a request: a connection of the fast path, or (Windows) a
/// plain `WM_COPYDATA` sender.
pub(crate) enum Responder {
    Ring {
        conn: Arc<ServerConn>,
        /// The worker to wake once answered, so it looks at the connection's
        /// next message (from `recv`; `serve` threads look by themselves).
        poke: Option<(Arc<Dispatch>, u32)>,
    },
    #[allow(dead_code)] // no native senders on Linux
    Native(sys::mailbox::NativeResponder),
}

impl Responder {
    fn finish(&self) {
        if let Responder::Ring { poke: Some((dispatch, w)), .. } = self {
            dispatch.poke(*w);
        }
    }

    fn reply(self, call: bool, reply: Reply) -> Result<(), ReplyError> {
        let result = match &self {
            Responder::Ring { .. } if !call => Ok(()),
            // The sender hung up (exited, crashed or dropped its sender).
            Responder::Ring { conn, .. } if conn.dead.load(std::sync::atomic::Ordering::Acquire) => {
                Err(ReplyError::SenderGone)
            }
            Responder::Ring { conn, .. } => conn.reply(reply.code, &reply.data).map_err(|reason| {
                log::warn!("dropped the connection from pid {}: {reason}", conn.peer.pid);
                conn.link().shutdown();
                ReplyError::SenderGone
            }),
            Responder::Native(n) => n.reply(reply),
        };
        self.finish();
        result
    }

    fn refuse(self, call: bool, reason: &str) {
        match &self {
            Responder::Ring { .. } if !call => {}
            Responder::Ring { conn, .. } => {
                if conn.refuse(reason).is_err() {
                    conn.link().shutdown();
                }
            }
            Responder::Native(n) => n.refuse(reason),
        }
        self.finish();
    }
}

/// A message waiting for its reply; from [`Mailbox::recv`].
///
/// Dereferences to the [`Message`]. Answer with [`reply`](Self::reply) or
/// [`refuse`](Self::refuse); a request dropped without either is refused.
/// For a posted message ([`Message::expects_reply`] is `false`) both do
/// nothing.
pub struct Request {
    message: Option<Message>,
    responder: Option<Responder>,
    made: Made,
}

impl Request {
    pub(crate) fn new(message: Message, responder: Responder) -> Request {
        Request { message: Some(message), responder: Some(responder), made: Made::here() }
    }

    /// Whether this is a copy in a child made by `fork` (the parent
    /// answers it; see `crate::fork`).
    pub(crate) fn copied_by_fork(&self) -> bool {
        self.made.copied_by_fork()
    }

    /// The message, mutably (to take its sections).
    pub fn message_mut(&mut self) -> &mut Message {
        self.message.as_mut().expect("a request holds its message until answered")
    }

    /// Sends the reply; the sender's `send` returns it (Win32's
    /// `ReplyMessage`, with bytes beside the `LRESULT`).
    #[doc(alias = "ReplyMessage")]
    pub fn reply(mut self, reply: Reply) -> Result<(), ReplyError> {
        let (call, after) = self.settle();
        let result = self.responder.take().expect("a request is answered once").reply(call, reply);
        after.finish();
        result
    }

    /// Refuses the message; the sender gets [`SendError::Refused`].
    pub fn refuse(mut self, reason: &str) {
        let (call, after) = self.settle();
        self.responder.take().expect("a request is answered once").refuse(call, reason);
        after.finish();
    }

    /// Whether the message was a call, and what is left of it once the
    /// answer has gone (see [`AfterAnswer`]).
    fn settle(&mut self) -> (bool, AfterAnswer) {
        let Some(mut message) = self.message.take() else { return (true, AfterAnswer::default()) };
        let call = message.call;
        let after = match message.take_origin() {
            Some(conn) => AfterAnswer::new(message, &conn),
            // (A plain Win32 program's message has no connection.)
            None => AfterAnswer::default(),
        };
        (call, after)
    }
}

/// A message its receiver is done with, kept until its answer has gone:
/// then dropped, and a large payload's buffer given back to its
/// connection for the next message (`ServerConn::recycle`), both off the
/// sender's critical path. A loaned message is dropped at once instead, so
/// that the loan is back with its sender before the sender learns that
/// the exchange is over.
#[derive(Default)]
struct AfterAnswer {
    message: Option<Message>,
    /// Set only for a large payload.
    conn: Option<Arc<ServerConn>>,
}

impl AfterAnswer {
    fn new(message: Message, conn: &Arc<ServerConn>) -> AfterAnswer {
        if message.loan().is_some() {
            return AfterAnswer::default();
        }
        let conn = message.has_large_buffer().then(|| conn.clone());
        AfterAnswer { message: Some(message), conn }
    }

    fn finish(self) {
        if let (Some(conn), Some(v)) = (self.conn, self.message.and_then(Message::into_payload_vec)) {
            conn.recycle(v);
        }
    }
}

impl Deref for Request {
    type Target = Message;
    fn deref(&self) -> &Message {
        self.message.as_ref().expect("a request holds its message until answered")
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent answers it (see `crate::fork`; a loaned payload's
            // release, dropped with the message, holds back too).
            return;
        }
        if let Some(r) = self.responder.take() {
            let (call, after) = self.settle();
            r.refuse(call, "the receiver dropped the message without replying");
            after.finish();
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request").field("message", &self.message).finish_non_exhaustive()
    }
}

/// How a mailbox is bound; see [`Mailbox::bind_with`].
#[derive(Debug, Clone)]
pub struct MailboxOptions {
    max_payload: u64,
    handler_threads: usize,
    max_connections: usize,
    allowed_uids: Vec<u32>,
}

/// The most sections one message carries ([`Sender::send_with_sections`]).
pub const MAX_SECTIONS: usize = crate::fast::conn::MAX_SECTIONS;

/// Refuses more sections than a message carries, before anything is sent
/// (the connection stays as it was).
pub(crate) fn check_sections(name: &Name, sections: &[&Section]) -> Result<(), SendError> {
    if sections.len() > MAX_SECTIONS {
        let why = format!("{} sections: a message carries at most {MAX_SECTIONS}", sections.len());
        return Err(SendError::Io {
            name: name.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        });
    }
    Ok(())
}

/// How many senders may be connected to a mailbox at once unless told
/// otherwise (each connection holds a shared region of about 330 KiB).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

impl Default for MailboxOptions {
    fn default() -> MailboxOptions {
        MailboxOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            handler_threads: 1,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_uids: Vec::new(),
        }
    }
}

impl MailboxOptions {
    /// Default options.
    pub fn new() -> MailboxOptions {
        MailboxOptions::default()
    }

    /// The largest payload accepted (default [`DEFAULT_MAX_PAYLOAD`]); larger
    /// ones are refused with [`SendError::PayloadTooLarge`] before they are
    /// transferred.
    pub fn max_payload(mut self, bytes: u64) -> MailboxOptions {
        self.max_payload = bytes;
        self
    }

    /// How many threads [`Mailbox::serve`] runs the handler on (default 1,
    /// at most 64). Each sender's connection belongs to one of them, so
    /// messages from one sender are still handled in order; a slow handler
    /// call then holds up only the senders of its thread.
    pub fn handler_threads(mut self, threads: usize) -> MailboxOptions {
        self.handler_threads = threads.clamp(1, crate::fast::serve::MAX_WORKERS);
        self
    }

    /// How many senders may be connected at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`], at least 1). A sender beyond the limit is
    /// turned away at set-up ([`SendError::Busy`], naming the limit); the
    /// connected ones are not disturbed. Each connection costs the receiver
    /// a shared region, never a thread.
    pub fn max_connections(mut self, connections: usize) -> MailboxOptions {
        self.max_connections = connections.max(1);
        self
    }

    /// Linux: also accept senders of the user `uid` (repeatable; by default
    /// a mailbox serves its own user only). The mailbox then listens, besides
    /// its private socket, on the abstract socket `copydata/OWNER-UID/...`,
    /// which senders of other users reach with
    /// [`SenderOptions::owner`]; every connection's user is checked
    /// (`SO_PEERCRED`) and shown in [`Peer::uid`]. The users allowed can
    /// send this mailbox anything, as large as it accepts. Ignored on
    /// Windows, where mailboxes are per login session.
    pub fn allow_uid(mut self, uid: u32) -> MailboxOptions {
        if !self.allowed_uids.contains(&uid) {
            self.allowed_uids.push(uid);
        }
        self
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn allowed_uids(&self) -> &[u32] {
        &self.allowed_uids
    }

    pub(crate) fn max(&self) -> u64 {
        self.max_payload
    }

    pub(crate) fn max_conns(&self) -> usize {
        self.max_connections
    }

    pub(crate) fn threads(&self) -> usize {
        self.handler_threads
    }
}

/// Why a mailbox turns a sender away at its connection limit
/// ([`MailboxOptions::max_connections`]), in the words
/// [`SendError::Busy`] carries: `connected` senders are connected, as many
/// as it takes.
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
pub(crate) fn at_connection_limit(connected: usize) -> String {
    let noun = if connected == 1 { "connection" } else { "connections" };
    format!("it already has {connected} {noun}, its limit (no connection was made)")
}

/// A bound receiving endpoint; unbound on drop.
///
/// Receive with [`recv`](Self::recv) / [`recv_timeout`](Self::recv_timeout)
/// and answer each [`Request`], or hand a handler to
/// [`serve`](Self::serve), which runs it on background threads.
#[derive(Debug)]
pub struct Mailbox {
    inner: sys::mailbox::Mailbox,
    dispatch: Arc<Dispatch>,
    /// (Boxed: a `Mailbox` moves by value, inside `SingleInstance` too.)
    worker: Mutex<Box<WorkerState>>,
    name: Name,
}

impl Mailbox {
    /// Binds `name` for this user. Fails with [`BindError::AlreadyBound`]
    /// while a live process has it; a name left by a crashed process is
    /// taken over.
    ///
    /// On Windows this creates a message-only window (`CreateWindowExW` with
    /// `HWND_MESSAGE`) whose class is derived from the name, guarded by a
    /// named mutex (`CreateMutexW`); on Linux a Unix socket in the per-user
    /// runtime directory, the name held by an exclusive `flock`.
    #[doc(alias = "CreateWindowExW")]
    #[doc(alias = "RegisterClassW")]
    #[doc(alias = "HWND_MESSAGE")]
    #[doc(alias = "flock")]
    pub fn bind(name: &str) -> Result<Mailbox, BindError> {
        Self::bind_with(name, &MailboxOptions::default())
    }

    /// Binds `name` with options.
    pub fn bind_with(name: &str, options: &MailboxOptions) -> Result<Mailbox, BindError> {
        let valid = Name::new(name).map_err(|reason| BindError::InvalidName { name: name.into(), reason })?;
        Self::bind_name(valid, options)
    }

    pub(crate) fn bind_name(name: Name, options: &MailboxOptions) -> Result<Mailbox, BindError> {
        let (inner, dispatch) = sys::mailbox::Mailbox::bind(&name, options)?;
        Ok(Mailbox { inner, dispatch, worker: Mutex::new(Box::default()), name })
    }

    /// Closes the mailbox for receiving: a thread waiting in `recv` (and
    /// every later one) gets [`RecvError::Closed`]. The name stays bound
    /// until the mailbox is dropped.
    pub(crate) fn close(&self) {
        self.dispatch.close();
    }

    /// The mailbox's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    fn next(&self, deadline: Option<Instant>) -> Result<Request, RecvError> {
        // One thread receives at a time; another one waiting here keeps to
        // its own deadline.
        let mut worker = match deadline {
            None => self.worker.lock().unwrap_or_else(|e| e.into_inner()),
            Some(d) => loop {
                match self.worker.try_lock() {
                    Ok(w) => break w,
                    Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) if Instant::now() < d => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(std::sync::TryLockError::WouldBlock) => return Err(RecvError::Timeout),
                }
            },
        };
        match self.dispatch.next(0, &mut worker, deadline) {
            Some(Next::Ring(message)) => {
                let conn = message.origin.clone().expect("a message of the fast path knows its connection");
                let responder = Responder::Ring { conn, poke: Some((self.dispatch.clone(), 0)) };
                Ok(Request::new(message, responder))
            }
            Some(Next::Native(message, responder)) => Ok(Request::new(message, Responder::Native(responder))),
            None if self.dispatch.is_closed() => Err(RecvError::Closed),
            None => Err(RecvError::Timeout),
        }
    }

    /// Waits for the next message (the `GetMessageW` of a window's loop).
    #[doc(alias = "GetMessageW")]
    pub fn recv(&self) -> Result<Request, RecvError> {
        self.next(None)
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request, RecvError> {
        self.next(crate::deadline(timeout))
    }

    /// Runs `handler` for every message on background threads (the window
    /// procedure's `WM_COPYDATA` case, with the `GetMessageW` /
    /// `DispatchMessageW` loop run for you)
    /// ([`MailboxOptions::handler_threads`], default 1), replying with what
    /// it returns, until the returned [`Server`] is dropped. The handler runs
    /// on the thread that takes the message out of shared memory. A handler
    /// that panics refuses that message and goes on serving. With several
    /// threads the handler runs concurrently: keep shared state in atomics
    /// or a `Mutex`.
    #[doc(alias = "DispatchMessageW")]
    #[doc(alias = "WindowProc")]
    pub fn serve<F>(self, handler: F) -> Server
    where
        F: Fn(&mut Message) -> Reply + Send + Sync + 'static,
    {
        self.serve_or_refuse(move |message| Ok(handler(message)))
    }

    /// [`serve`](Self::serve) with a handler that may refuse a message
    /// (`Err(reason)`: the sender gets [`SendError::Refused`] with it).
    pub(crate) fn serve_or_refuse<F>(self, handler: F) -> Server
    where
        F: Fn(&mut Message) -> Result<Reply, String> + Send + Sync + 'static,
    {
        let Mailbox { inner, dispatch, worker, name } = self;
        let handler = Arc::new(handler);
        dispatch.activate_all();
        let first = worker.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut threads = Vec::new();
        let mut first = Some(first);
        for w in 0..dispatch.workers() {
            let (dispatch, handler) = (dispatch.clone(), handler.clone());
            let mut state = if w == 0 { first.take().map(|b| *b).unwrap_or_default() } else { WorkerState::default() };
            let spawned = std::thread::Builder::new().name(format!("copydata-serve-{name}-{w}")).spawn(move || {
                while let Some(next) = dispatch.next(w, &mut state, None) {
                    match next {
                        Next::Ring(mut message) => {
                            let call = message.expects_reply();
                            let answer =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&mut message)));
                            // The handler is done with the message: its
                            // connection moves to the responder (one reference
                            // count per message, not three).
                            let conn = message.take_origin().expect("a message of the fast path knows its connection");
                            let after = AfterAnswer::new(message, &conn);
                            let responder = Responder::Ring { conn, poke: None };
                            match answer {
                                Ok(Ok(reply)) => {
                                    let _ = responder.reply(call, reply);
                                }
                                Ok(Err(reason)) => responder.refuse(call, &reason),
                                Err(_) => responder.refuse(call, "the handler panicked"),
                            }
                            after.finish();
                        }
                        Next::Native(mut message, responder) => {
                            let answer =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&mut message)));
                            match answer {
                                Ok(Ok(reply)) => {
                                    let _ = responder.reply(reply);
                                }
                                Ok(Err(reason)) => responder.refuse(&reason),
                                Err(_) => responder.refuse("the handler panicked"),
                            }
                        }
                    }
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => log::warn!("mailbox {name}: could not start handler thread {w}: {e}"),
            }
        }
        Server { inner: Some(inner), dispatch, threads, name, made: Made::here() }
    }
}

/// A mailbox served by background handler threads; see [`Mailbox::serve`].
/// Dropping it unbinds the mailbox and waits for the handlers to finish.
#[derive(Debug)]
pub struct Server {
    inner: Option<sys::mailbox::Mailbox>,
    dispatch: Arc<Dispatch>,
    threads: Vec<JoinHandle<()>>,
    name: Name,
    made: Made,
}

impl Server {
    /// The mailbox's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's handler threads (see `crate::fork`).
            std::mem::forget(std::mem::take(&mut self.threads));
            return;
        }
        self.dispatch.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Unbinding closes every connection.
        self.inner = None;
    }
}

/// How a [`Sender`] connects; see [`Sender::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct SenderOptions {
    wait: Wait,
    connect_timeout: Option<Duration>,
    owner: Option<u32>,
    max_reply: Option<u64>,
}

impl SenderOptions {
    /// Default options: [`Wait::SpinThenPark`], set-up bounded by
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new() -> SenderOptions {
        SenderOptions::default()
    }

    /// How both sides of the connection wait for each other.
    pub fn wait(mut self, wait: Wait) -> SenderOptions {
        self.wait = wait;
        self
    }

    /// Linux: the mailbox belongs to the user `uid`, who allowed this user
    /// in ([`MailboxOptions::allow_uid`]). The connection is refused
    /// ([`SendError::Refused`]) unless the process listening there really
    /// runs as `uid` (checked with `SO_PEERCRED`), so another user cannot
    /// pose as the mailbox. Ignored on Windows.
    pub fn owner(mut self, uid: u32) -> SenderOptions {
        self.owner = Some(uid);
        self
    }

    /// The largest reply accepted (default [`DEFAULT_MAX_PAYLOAD`]): a
    /// larger one fails the call with [`SendError::Protocol`] and the
    /// connection is dropped, before anything of it is mapped or copied,
    /// so a receiver cannot make this process take more memory than that.
    pub fn max_reply(mut self, bytes: u64) -> SenderOptions {
        self.max_reply = Some(bytes);
        self
    }

    /// The longest a connection's set-up may take (a receiver that is
    /// stopped or wedged gives [`SendError::TimedOut`] after it, at
    /// [`TimeoutStage::Connecting`]: nothing was sent).
    pub fn connect_timeout(mut self, timeout: Duration) -> SenderOptions {
        self.connect_timeout = Some(timeout);
        self
    }
}

/// How long setting up a connection may take unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a mailbox, reusable for many sends (no lookup per send).
///
/// The first send sets up a shared-memory region with the receiver; every
/// later message and reply travels through it. Messages sent through one
/// `Sender` are handled in order. After a call whose reply did not come in
/// time, or an error that leaves the connection unusable, the connection is
/// dropped and the next send makes a new one, so a late reply can never be
/// taken for the answer to a later message (the messages still queued on
/// the old one may then be handled after the new one's). A message that
/// timed out waiting for room in a full queue (a post, or a call) queued
/// nothing: the connection is kept.
///
/// Dropping a sender does not wait: the posts it queued are still
/// delivered, as long as this process lives until they no longer need it
/// ([`flush`](Self::flush) waits for that).
#[derive(Debug)]
pub struct Sender {
    name: Name,
    options: SenderOptions,
    client: Option<Client>,
}

/// Names a failed exchange with the mailbox `name`, and says whether the
/// connection is still clean: refused before anything was queued (too
/// large, queue full), or the refusal was the reply. Any other failure
/// leaves the connection unusable: the caller drops it. A time-out is
/// reported at `stage`, what the exchange was waiting for.
pub(crate) fn failed(
    name: &Name,
    timeout: Option<Duration>,
    stage: TimeoutStage,
    size: u64,
    f: Fail,
) -> (SendError, bool) {
    let name = name.to_string();
    match f {
        Fail::TooLarge { max } => (SendError::PayloadTooLarge { name, size, max }, true),
        Fail::Full => (SendError::Full { name }, true),
        Fail::Refused(reason) => (SendError::Refused { name, reason }, true),
        Fail::TimedOut => (SendError::TimedOut { name, timeout: timeout.unwrap_or_default(), stage }, false),
        Fail::PeerGone => (SendError::ReceiverDied { name }, false),
        Fail::Broken(reason) => (SendError::Protocol { name, reason }, false),
        Fail::Io(source) => (SendError::Io { name, source }, false),
    }
}

impl Sender {
    /// Connects to the mailbox `name` (set-up bounded by
    /// [`DEFAULT_CONNECT_TIMEOUT`]). On Windows the mailbox's window is
    /// found with `FindWindowExW(HWND_MESSAGE, class)`; on Linux its socket
    /// is connected (`connect`) in the runtime directory.
    #[doc(alias = "FindWindowW")]
    #[doc(alias = "FindWindowExW")]
    pub fn connect(name: &str) -> Result<Sender, SendError> {
        Self::connect_with(name, &SenderOptions::default())
    }

    /// Connects to the mailbox `name`, giving up after `timeout` if the
    /// receiver does not complete the set-up (it is stopped or wedged).
    pub fn connect_timeout(name: &str, timeout: Duration) -> Result<Sender, SendError> {
        Self::connect_with(name, &SenderOptions::default().connect_timeout(timeout))
    }

    /// Connects to the mailbox `name` with options.
    pub fn connect_with(name: &str, options: &SenderOptions) -> Result<Sender, SendError> {
        let mut s = Self::unconnected(name, options)?;
        let deadline = crate::deadline(options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
        s.client = Some(s.open(deadline, options.connect_timeout)?);
        Ok(s)
    }

    /// A sender to the mailbox `name` that connects on its first call (as
    /// it connects again after a dropped connection), within that call's
    /// timeout and the options' connect timeout: nothing blocks here, and a
    /// missing mailbox is reported by the first call. Only the name is
    /// checked now.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), copydata::SendError> {
    /// # use std::time::Duration;
    /// let mut sender = copydata::Sender::unconnected("my-app", &copydata::SenderOptions::new())?;
    /// // Set-up and the call, both within 100 ms.
    /// let reply = sender.send_timeout(1, b"hello", Duration::from_millis(100))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn unconnected(name: &str, options: &SenderOptions) -> Result<Sender, SendError> {
        let valid = Name::new(name).map_err(|reason| SendError::InvalidName { name: name.into(), reason })?;
        Ok(Sender::of_name(valid, options.clone()))
    }

    /// The mailbox's name.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The largest payload the mailbox takes ([`MailboxOptions::max_payload`]
    /// on the receiving side), as it said when the connection was made;
    /// `None` while this sender is not connected (a send connects again).
    /// A larger payload fails with [`SendError::PayloadTooLarge`] before
    /// anything is sent; knowing the limit first spares making it.
    pub fn max_payload(&self) -> Option<u64> {
        self.client.as_ref().map(Client::max_payload)
    }

    /// The process id of the receiver this sender is connected to (the
    /// process that bound the mailbox, as the connection's set-up checked
    /// it: the socket's peer on Linux, the owner of the mailbox's window on
    /// Windows); `None` while this sender is not connected, and on Linux
    /// when the receiver runs in a pid namespace this process cannot see
    /// (the kernel names no pid then). The `GetWindowThreadProcessId` of a
    /// `WM_COPYDATA` sender.
    ///
    /// ```no_run
    /// let mut sender = copydata::Sender::connect("viewer")?;
    /// sender.send(1, b"open")?;
    /// println!("handled by pid {:?}", sender.receiver_pid());
    /// # Ok::<(), copydata::SendError>(())
    /// ```
    #[doc(alias = "GetWindowThreadProcessId")]
    pub fn receiver_pid(&self) -> Option<u32> {
        self.client.as_ref().and_then(Client::peer_pid)
    }

    /// A sender for an already validated name, connected by its first send.
    pub(crate) fn of_name(name: Name, options: SenderOptions) -> Sender {
        Sender { name, options, client: None }
    }

    fn open(&self, deadline: Option<Instant>, timeout: Option<Duration>) -> Result<Client, SendError> {
        connect_client(&self.name, &self.options, deadline, timeout)
    }

    /// Runs `f`, which queues nothing unless it succeeds (a post, a loan),
    /// on the connection (made first if needed); drops the connection if
    /// `f` fails, except for errors that leave it clean.
    #[inline(always)]
    fn with_client<T>(
        &mut self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
        size: u64,
        f: impl FnOnce(&mut Client) -> Result<T, Fail>,
    ) -> Result<T, SendError> {
        let result = f(self.connected(deadline, timeout)?);
        result.map_err(|f| self.drop_unless_clean(timeout, TimeoutStage::Room, size, f))
    }

    /// The connection, made first if there is none.
    fn connected(&mut self, deadline: Option<Instant>, timeout: Option<Duration>) -> Result<&mut Client, SendError> {
        if self.client.is_none() {
            self.client = Some(self.open(deadline, timeout)?);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// The error for `f` of a wait that queues nothing (for room or a
    /// buffer: a post, a loan, a call's `put`; a flush, `stage`
    /// [`Flush`](TimeoutStage::Flush)). Such a wait times out before
    /// anything is queued: the connection is clean then and kept; other
    /// failures are as for any message.
    fn unsent_failed(&mut self, timeout: Option<Duration>, stage: TimeoutStage, size: u64, f: Fail) -> SendError {
        match f {
            Fail::TimedOut => {
                SendError::TimedOut { name: self.name.to_string(), timeout: timeout.unwrap_or_default(), stage }
            }
            f => self.drop_unless_clean(timeout, stage, size, f),
        }
    }

    /// The error for `f` (a time-out at `stage`); drops the connection
    /// unless `f` leaves it clean.
    fn drop_unless_clean(&mut self, timeout: Option<Duration>, stage: TimeoutStage, size: u64, f: Fail) -> SendError {
        let (error, clean) = failed(&self.name, timeout, stage, size, f);
        if !clean {
            self.client = None;
        }
        error
    }

    #[inline(always)]
    fn call(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        self.timed(timeout, |s, deadline| {
            s.put_and_wait(deadline, timeout, data.len() as u64, |c| {
                c.put(CALL, tag, Body::Bytes(data), sections, true, deadline)
            })
        })
    }

    /// A call on the connection (made first if there is none): `put`
    /// queues it, then the reply is awaited. A `put` that fails has queued
    /// nothing, so its time-out (waiting for room or a buffer) leaves the
    /// connection clean and kept, as a post's does: the messages queued
    /// before stay ahead of the next ones. A reply that does not come in
    /// time drops the connection (its late reply must not be taken for a
    /// later call's).
    #[inline(always)]
    fn put_and_wait(
        &mut self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
        size: u64,
        put: impl FnOnce(&mut Client) -> Result<(), Fail>,
    ) -> Result<Reply, SendError> {
        let c = self.connected(deadline, timeout)?;
        if let Err(f) = put(c) {
            return Err(self.unsent_failed(timeout, TimeoutStage::Room, size, f));
        }
        let reply = self.client.as_mut().expect("connected above").reply(deadline);
        reply.map_err(|f| self.drop_unless_clean(timeout, TimeoutStage::Reply, size, f))
    }

    /// Runs a call with the deadline `timeout` sets (none: the clock is not
    /// read), and makes sure a `TimedOut` is not returned before `timeout`.
    #[inline(always)]
    fn timed<T>(
        &mut self,
        timeout: Option<Duration>,
        call: impl FnOnce(&mut Sender, Option<Instant>) -> Result<T, SendError>,
    ) -> Result<T, SendError> {
        let started = timeout.map(|_| Instant::now());
        let deadline = timeout.and_then(|t| started.and_then(|s| s.checked_add(t)));
        let result = call(self, deadline);
        if let (Err(SendError::TimedOut { .. }), Some(t), Some(started)) = (&result, timeout, started) {
            // Some systems' timers fire a little early; a caller may rely on
            // the full time having passed.
            if let Some(rest) = t.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        result
    }

    /// Sends and waits for the reply, however long the handler takes (a
    /// receiver that dies gives [`SendError::ReceiverDied`] at once): the
    /// `SendMessageW(WM_COPYDATA)` of Win32.
    #[doc(alias = "SendMessage")]
    #[doc(alias = "SendMessageW")]
    #[doc(alias = "WM_COPYDATA")]
    pub fn send(&mut self, tag: u64, data: &[u8]) -> Result<Reply, SendError> {
        self.call(tag, data, &[], None)
    }

    /// Sends and waits at most `timeout` for the reply (set-up included, if
    /// the connection has to be made). A [`SendError::TimedOut`] is never
    /// returned before `timeout` has passed, and a reply that is already
    /// there is returned even if the time is up: a zero timeout on a
    /// connected sender still sends the message, and gets its reply if the
    /// handler answers while the sender takes its first look (tens of
    /// microseconds). A sender that must first connect cannot do so in zero
    /// time, and times out without sending. `Duration::MAX` waits for ever.
    /// The error's [`TimeoutStage`] says whether the message went out:
    /// not while connecting or waiting for room in a full queue (the
    /// connection is then kept), but while waiting for the reply it was
    /// queued and may still be handled. The
    /// `SendMessageTimeoutW(WM_COPYDATA)` of Win32.
    #[doc(alias = "SendMessageTimeout")]
    #[doc(alias = "SendMessageTimeoutW")]
    pub fn send_timeout(&mut self, tag: u64, data: &[u8], timeout: Duration) -> Result<Reply, SendError> {
        self.call(tag, data, &[], Some(timeout))
    }

    /// Sends with sections attached (they arrive as [`Message::sections`]);
    /// `timeout` as in [`send_timeout`](Self::send_timeout), `None` to wait
    /// for as long as the receiver lives. At most [`MAX_SECTIONS`] go with
    /// one message: more is an [`InvalidInput`](std::io::ErrorKind::InvalidInput)
    /// [`SendError::Io`], and nothing is sent.
    pub fn send_with_sections(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        check_sections(&self.name, sections)?;
        self.call(tag, data, sections, timeout)
    }

    /// Posts a notification: no reply is awaited (`PostMessageW`). The
    /// receiver's handler sees it like any message
    /// ([`Message::expects_reply`] is `false`) and its reply is discarded.
    /// Posts queue up in shared memory; when the queue is full, `post` waits
    /// for the receiver to catch up (it never buffers without bound). A
    /// receiver that dies while a post waits for room gives
    /// [`SendError::ReceiverDied`]; posts queued before its death are lost,
    /// which the next [`send`](Self::send) or [`flush`](Self::flush)
    /// reports the same way. A process that exits right after posting
    /// flushes first.
    #[doc(alias = "PostMessage")]
    #[doc(alias = "PostMessageW")]
    pub fn post(&mut self, tag: u64, data: &[u8]) -> Result<(), SendError> {
        self.with_client(None, None, data.len() as u64, |c| c.put(POST, tag, Body::Bytes(data), &[], true, None))
    }

    /// Posts, waiting at most `timeout` for room in the queue (and for the
    /// connection's set-up, if it has to be made). A
    /// [`SendError::TimedOut`] comes no sooner than `timeout`, at
    /// [`TimeoutStage::Room`] (or [`Connecting`](TimeoutStage::Connecting));
    /// nothing was sent then, and the connection is kept, so the posts that
    /// follow stay in order behind those already queued.
    pub fn post_timeout(&mut self, tag: u64, data: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.timed(Some(timeout), |s, deadline| {
            let result = s.connected(deadline, Some(timeout))?.put(POST, tag, Body::Bytes(data), &[], true, deadline);
            result.map_err(|f| s.unsent_failed(Some(timeout), TimeoutStage::Room, data.len() as u64, f))
        })
    }

    /// Posts if the queue has room now, else fails at once with
    /// [`SendError::Full`] (nothing sent, the connection kept).
    pub fn try_post(&mut self, tag: u64, data: &[u8]) -> Result<(), SendError> {
        self.with_client(None, None, data.len() as u64, |c| c.put(POST, tag, Body::Bytes(data), &[], false, None))
    }

    /// Waits until the messages posted through this sender so far no
    /// longer need this process, as long as it takes: then the process may
    /// exit without losing them. A process that exits right after posting
    /// flushes first.
    ///
    /// A post's bytes are in the receiver's queue once `post` returns, but
    /// on Windows a large post's buffer (a payload above 16 KiB, a
    /// [`Loan`]) stays in the sending process until the receiver takes the
    /// message off its queue and pulls the buffer out of it: there `flush`
    /// waits for the receiver to take such posts. Small posts, and every
    /// post on Linux (whose queue keeps all a message needs), need nothing
    /// of the sender, so `flush` returns at once; it never waits for a
    /// handler to run. A receiver that died with posts of this sender still
    /// queued gives [`SendError::ReceiverDied`]: they are lost. Besides this sender's connection it
    /// waits for the connections this process dropped (any sender's: after
    /// a timeout, an error, or a dropped `Sender`, also while this flush
    /// waits) whose posts still need it: a thread of this process keeps
    /// those for the receiver until it has taken them, closed the
    /// connection or died, at most 30 s each.
    ///
    /// ```no_run
    /// let mut sender = copydata::Sender::connect("indexer")?;
    /// sender.post(1, &vec![7u8; 1 << 20])?;
    /// sender.flush_timeout(std::time::Duration::from_secs(5))?;
    /// // Safe to exit now: the post no longer needs this process.
    /// # Ok::<(), copydata::SendError>(())
    /// ```
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.flush_until(None)
    }

    /// Like [`flush`](Self::flush), waiting at most `timeout`. On
    /// [`SendError::TimedOut`] (at [`TimeoutStage::Flush`]) the connection
    /// is kept: the posts stay queued (and are lost if this process exits
    /// before the receiver takes them).
    pub fn flush_timeout(&mut self, timeout: Duration) -> Result<(), SendError> {
        self.flush_until(Some(timeout))
    }

    fn flush_until(&mut self, timeout: Option<Duration>) -> Result<(), SendError> {
        self.timed(timeout, |s, deadline| {
            if let Some(c) = s.client.as_mut() {
                let result = c.settled(deadline);
                result.map_err(|f| s.unsent_failed(timeout, TimeoutStage::Flush, 0, f))?;
            }
            if sys::mailbox::Link::await_lingering(deadline) {
                Ok(())
            } else {
                Err(s.unsent_failed(timeout, TimeoutStage::Flush, 0, Fail::TimedOut))
            }
        })
    }

    /// Lends a buffer of `len` bytes in shared memory, to fill in place and
    /// send without copying ([`Loan::send`], [`Loan::post`]); see
    /// [`crate::loan`]. The connection's pool holds a few buffers (8); when
    /// all are lent or still held by the receiver (loans it has not handled
    /// yet, or whose views it keeps), `loan` waits for one to come back, as
    /// long as it takes: [`loan_timeout`](Self::loan_timeout) and
    /// [`try_loan`](Self::try_loan) bound the wait.
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        let buf = self.with_client(None, None, len as u64, |c| c.lend(len, true, None))?;
        Ok(Loan::new(self, buf, len))
    }

    /// Lends a buffer, waiting at most `timeout` for one of the pool's to
    /// come back (and for the connection's set-up, if it has to be made). A
    /// [`SendError::TimedOut`] comes no sooner than `timeout`, at
    /// [`TimeoutStage::Room`] (or [`Connecting`](TimeoutStage::Connecting));
    /// nothing was lent or sent then, and the connection is kept.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), copydata::SendError> {
    /// # use std::time::Duration;
    /// let mut sender = copydata::Sender::connect("frames")?;
    /// match sender.loan_timeout(8 << 20, Duration::from_millis(50)) {
    ///     Ok(mut loan) => {
    ///         loan.fill(0);
    ///         loan.post(1)?;
    ///     }
    ///     // The receiver still holds every buffer: drop this frame.
    ///     Err(copydata::SendError::TimedOut { .. }) => {}
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn loan_timeout(&mut self, len: usize, timeout: Duration) -> Result<Loan<'_>, SendError> {
        let buf = self.timed(Some(timeout), |s, deadline| {
            let result = s.connected(deadline, Some(timeout))?.lend(len, true, deadline);
            result.map_err(|f| s.unsent_failed(Some(timeout), TimeoutStage::Room, len as u64, f))
        })?;
        Ok(Loan::new(self, buf, len))
    }

    /// Lends a buffer if the pool has one free now, else fails at once with
    /// [`SendError::Full`] (the connection kept). Only the connection's
    /// set-up, when there is none yet, is waited for.
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        let buf = self.with_client(None, None, len as u64, |c| c.lend(len, false, None))?;
        Ok(Loan::new(self, buf, len))
    }

    pub(crate) fn call_loan(
        &mut self,
        tag: u64,
        buf: &LentBuf,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        if self.client.is_none() {
            // The connection the buffer came from is gone.
            return Err(SendError::ReceiverDied { name: self.name.to_string() });
        }
        self.timed(timeout, |s, deadline| {
            s.put_and_wait(deadline, timeout, len as u64, |c| {
                c.put(CALL, tag, Body::Lent(buf, len), &[], true, deadline)
            })
        })
    }

    pub(crate) fn cancel_loan(&mut self, buf: &LentBuf) {
        if let Some(c) = &mut self.client {
            c.cancel(buf);
        }
    }

    /// Posts a loan of this sender's connection: waiting for room for ever
    /// (`block` and no `timeout`), at most `timeout`, or not at all. On
    /// `Full` and `TimedOut` nothing was sent and the loan is still lent
    /// (see `Client::put_lent`); on any other error it is given back.
    pub(crate) fn post_loan(
        &mut self,
        tag: u64,
        buf: &LentBuf,
        len: usize,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<(), SendError> {
        self.timed(timeout, |s, deadline| {
            // Without its connection, the buffer's is gone.
            let Some(c) = s.client.as_mut() else { return Err(SendError::ReceiverDied { name: s.name.to_string() }) };
            let result = c.put_lent(POST, tag, buf, len, block, deadline);
            result.map_err(|f| s.unsent_failed(timeout, TimeoutStage::Room, len as u64, f))
        })
    }
}

/// Ends a connection set-up early, from another thread: for an async
/// set-up (`copydata::tokio`) whose sender is gone, which no call would
/// take over. Linux: the set-up's socket is shut down, which ends its
/// waits at once; elsewhere a set-up not started yet is not started.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) struct Abort {
    state: Mutex<AbortState>,
}

#[derive(Debug, Default)]
struct AbortState {
    aborted: bool,
    /// Linux: a duplicate of the socket of the set-up under way.
    #[cfg(target_os = "linux")]
    sock: Option<std::os::fd::OwnedFd>,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl Abort {
    fn state(&self) -> std::sync::MutexGuard<'_, AbortState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the set-up: at once where it waits, or before it starts.
    /// Never blocks (a shutdown, no close).
    pub(crate) fn abort(&self) {
        let mut st = self.state();
        st.aborted = true;
        #[cfg(target_os = "linux")]
        if let Some(sock) = &st.sock {
            let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
        }
    }

    pub(crate) fn aborted(&self) -> bool {
        self.state().aborted
    }

    /// Linux: the set-up's socket, to shut down if it is aborted; `false`
    /// if it already was. [`unwatch`](Self::unwatch) before the socket is
    /// closed, so the duplicate is never its last descriptor (closing that
    /// would close what the receiver queued in it, on this thread).
    #[cfg(target_os = "linux")]
    pub(crate) fn watch(&self, sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<bool> {
        let mut st = self.state();
        if st.aborted {
            return Ok(false);
        }
        st.sock = Some(sock.try_clone_to_owned()?);
        Ok(true)
    }

    /// Linux: forgets the socket (see [`watch`](Self::watch)).
    #[cfg(target_os = "linux")]
    pub(crate) fn unwatch(&self) {
        let sock = self.state().sock.take();
        drop(sock);
    }
}

/// Sets up a connection to `name`: bounded by the options' connect timeout
/// and by `deadline` (the caller's whole budget, reported as `timeout`).
pub(crate) fn connect_client(
    name: &Name,
    options: &SenderOptions,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
) -> Result<Client, SendError> {
    connect_client_abortable(name, options, deadline, timeout, None)
}

/// [`connect_client`] that another thread can end early through `abort`
/// (an async set-up whose sender is gone, which no call would take over).
pub(crate) fn connect_client_abortable(
    name: &Name,
    options: &SenderOptions,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    abort: Option<&Abort>,
) -> Result<Client, SendError> {
    let budget = options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let setup = match deadline {
        Some(d) => d.min(crate::deadline_or_far(budget)),
        None => crate::deadline_or_far(budget),
    };
    let abandoned = || SendError::Io {
        name: name.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::Interrupted, "set-up abandoned: its sender is gone"),
    };
    if abort.is_some_and(Abort::aborted) {
        return Err(abandoned());
    }
    let connected = sys::mailbox::connect(name, options.wait, setup, options.owner, abort);
    if connected.is_err() && abort.is_some_and(Abort::aborted) {
        return Err(abandoned());
    }
    let (link, max) = connected.map_err(|e| match e {
        SendError::TimedOut { name, .. } => SendError::TimedOut {
            name,
            timeout: timeout.or(options.connect_timeout).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            stage: TimeoutStage::Connecting,
        },
        other => other,
    })?;
    Ok(Client::new(link, options.wait, max).with_max_reply(options.max_reply.unwrap_or(DEFAULT_MAX_PAYLOAD)))
}

/// Sends a message to the mailbox `name` and waits for the reply
/// (`SendMessageW(WM_COPYDATA)`): the connection's set-up gives up after
/// [`DEFAULT_CONNECT_TIMEOUT`] (a stopped receiver), then the reply is
/// awaited as long as the receiver lives.
#[doc(alias = "SendMessage")]
#[doc(alias = "SendMessageW")]
#[doc(alias = "WM_COPYDATA")]
pub fn send(name: &str, tag: u64, data: &[u8]) -> Result<Reply, SendError> {
    Sender::connect(name)?.send(tag, data)
}

/// Sends a message to the mailbox `name` and waits at most `timeout` for the
/// reply, set-up included (`SendMessageTimeoutW(WM_COPYDATA)`). A new
/// connection is made for the call, so a zero timeout always times out
/// (see [`Sender::send_timeout`]). A time-out says at which
/// [`TimeoutStage`] it came: whether the message went out.
#[doc(alias = "SendMessageTimeout")]
#[doc(alias = "SendMessageTimeoutW")]
pub fn send_timeout(name: &str, tag: u64, data: &[u8], timeout: Duration) -> Result<Reply, SendError> {
    let started = Instant::now();
    // A time-out is reported with the whole timeout, at its own stage.
    let whole = |e| match e {
        SendError::TimedOut { name, stage, .. } => SendError::TimedOut { name, timeout, stage },
        other => other,
    };
    let mut sender = Sender::connect_with(name, &SenderOptions::new().connect_timeout(timeout)).map_err(whole)?;
    let left = timeout.saturating_sub(started.elapsed());
    if left.is_zero() {
        // Connected just as the time ran out: nothing was sent.
        return Err(SendError::TimedOut { name: name.to_string(), timeout, stage: TimeoutStage::Connecting });
    }
    sender.send_timeout(tag, data, left).map_err(whole)
}

/// A live mailbox, as reported by [`mailboxes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// The mailbox's name.
    pub name: String,
    /// The process that has bound it.
    pub pid: u32,
}

/// Lists this user's live mailboxes, sorted by name (on Linux, removing what
/// crashed processes left behind). On Windows this walks the message-only
/// windows (`FindWindowExW(HWND_MESSAGE)` in a loop, the `EnumWindows` of
/// windows that `EnumWindows` does not list).
#[doc(alias = "EnumWindows")]
pub fn mailboxes() -> Result<Vec<MailboxInfo>, ListError> {
    let mut all = sys::mailbox::list()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}
