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
//! # Portability
//!
//! | | Linux | Windows |
//! |---|---|---|
//! | mailbox | Unix socket in a 0700 per-user runtime directory, name held by an `flock` | message-only window (`HWND_MESSAGE`) whose class is derived from the name |
//! | lookup | the socket's path | `FindWindowExW(HWND_MESSAGE, class)` |
//! | send / reply | framed request and reply on the connection | `SendMessageTimeoutW(WM_COPYDATA)`; reply bytes come back as a `WM_COPYDATA` to the sender's window |
//! | large payloads | a memfd sealed against writing (`F_SEAL_WRITE`) | a section duplicated into the receiver |
//! | peer identity | `SO_PEERCRED` (pid and uid) | the window's process id |

// Constructors used only by the backends that have mailboxes.
#![cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]

use std::fmt;
use std::ops::Deref;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{BindError, ListError, RecvError, ReplyError, SendError};
use crate::name::Name;
use crate::section::Section;
use crate::sys;
#[cfg(target_os = "linux")]
use crate::view::View;

/// The largest payload a mailbox accepts by default: 4 GiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 4 << 30;

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The sender's process id.
    pub pid: u32,
    /// The sender's user id (Linux; `None` on Windows).
    pub uid: Option<u32>,
}

/// The bytes of a message or a reply.
///
/// Small payloads are copied; large ones are mapped straight from the memory
/// the peer filled, which the kernel keeps from changing (Linux: a memfd
/// sealed against writes), so reading them needs no copy.
pub struct Payload(Repr);

enum Repr {
    Inline(Vec<u8>),
    /// A view of memory that no process can write any more (Linux: a sealed
    /// memfd; Windows cannot seal a section, so there payloads are copied).
    #[cfg(target_os = "linux")]
    Frozen(View),
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

    /// The bytes, copied into a vector if they are mapped.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Inline(v) => v,
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

/// A received message.
#[derive(Debug)]
pub struct Message {
    tag: u64,
    payload: Payload,
    sections: Vec<Section>,
    sender: Peer,
}

impl Message {
    pub(crate) fn new(tag: u64, payload: Payload, sections: Vec<Section>, sender: Peer) -> Message {
        Message { tag, payload, sections, sender }
    }

    /// The tag (`dwData` in Win32 terms).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The bytes (possibly none).
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The sections that came with the message.
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
}

/// A message waiting for its reply; from [`Mailbox::recv`].
///
/// Dereferences to the [`Message`]. Answer with [`reply`](Self::reply) or
/// [`refuse`](Self::refuse); a request dropped without either is refused.
pub struct Request {
    message: Message,
    responder: Option<sys::mailbox::Responder>,
}

impl Request {
    pub(crate) fn new(message: Message, responder: sys::mailbox::Responder) -> Request {
        Request { message, responder: Some(responder) }
    }

    /// The message, mutably (to take its sections).
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// Sends the reply; the sender's `send` returns it.
    pub fn reply(mut self, reply: Reply) -> Result<(), ReplyError> {
        self.responder.take().expect("a request is answered once").reply(reply)
    }

    /// Refuses the message; the sender gets [`SendError::Refused`].
    pub fn refuse(mut self, reason: &str) {
        self.responder.take().expect("a request is answered once").refuse(reason);
    }
}

impl Deref for Request {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(r) = self.responder.take() {
            r.refuse("the receiver dropped the message without replying");
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
}

impl Default for MailboxOptions {
    fn default() -> MailboxOptions {
        MailboxOptions { max_payload: DEFAULT_MAX_PAYLOAD }
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

    pub(crate) fn max(&self) -> u64 {
        self.max_payload
    }
}

/// A bound receiving endpoint; unbound on drop.
///
/// Receive with [`recv`](Self::recv) / [`recv_timeout`](Self::recv_timeout)
/// and answer each [`Request`], or hand a handler to
/// [`serve`](Self::serve), which runs it on a background thread.
#[derive(Debug)]
pub struct Mailbox {
    inner: sys::mailbox::Mailbox,
    rx: mpsc::Receiver<Request>,
    name: Name,
}

impl Mailbox {
    /// Binds `name` for this user. Fails with [`BindError::AlreadyBound`]
    /// while a live process has it; a name left by a crashed process is
    /// taken over.
    pub fn bind(name: &str) -> Result<Mailbox, BindError> {
        Self::bind_with(name, &MailboxOptions::default())
    }

    /// Binds `name` with options.
    pub fn bind_with(name: &str, options: &MailboxOptions) -> Result<Mailbox, BindError> {
        let valid = Name::new(name).map_err(|reason| BindError::InvalidName { name: name.into(), reason })?;
        let (tx, rx) = mpsc::channel();
        let inner = sys::mailbox::Mailbox::bind(&valid, options, tx)?;
        Ok(Mailbox { inner, rx, name: valid })
    }

    /// The mailbox's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Waits for the next message.
    pub fn recv(&self) -> Result<Request, RecvError> {
        self.rx.recv().map_err(|_| RecvError::Closed)
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request, RecvError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => RecvError::Timeout,
            mpsc::RecvTimeoutError::Disconnected => RecvError::Closed,
        })
    }

    /// Runs `handler` for every message on a background thread, replying
    /// with what it returns, until the returned [`Server`] is dropped. A
    /// handler that panics refuses that message and goes on serving.
    pub fn serve<F>(self, mut handler: F) -> Server
    where
        F: FnMut(&mut Message) -> Reply + Send + 'static,
    {
        let Mailbox { inner, rx, name } = self;
        let thread = std::thread::Builder::new()
            .name(format!("copydata-serve-{name}"))
            .spawn(move || {
                for mut request in rx {
                    let answer =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request.message_mut())));
                    match answer {
                        Ok(reply) => {
                            let _ = request.reply(reply);
                        }
                        Err(_) => request.refuse("the handler panicked"),
                    }
                }
            })
            .expect("spawning the serve thread");
        Server { inner: Some(inner), thread: Some(thread), name }
    }
}

/// A mailbox served by a background handler; see [`Mailbox::serve`].
/// Dropping it unbinds the mailbox and waits for the handler to finish.
#[derive(Debug)]
pub struct Server {
    inner: Option<sys::mailbox::Mailbox>,
    thread: Option<JoinHandle<()>>,
    name: Name,
}

impl Server {
    /// The mailbox's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Unbinding closes every connection, which ends the request stream.
        self.inner = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection to a mailbox, reusable for many sends (no lookup per send).
///
/// Messages sent through one `Sender` are handled in order. After a timeout
/// the connection is dropped and the next send makes a new one, so a late
/// reply can never be taken for the answer to a later message.
#[derive(Debug)]
pub struct Sender {
    inner: sys::mailbox::Sender,
}

impl Sender {
    /// Connects to the mailbox `name`.
    pub fn connect(name: &str) -> Result<Sender, SendError> {
        let valid = Name::new(name).map_err(|reason| SendError::InvalidName { name: name.into(), reason })?;
        Ok(Sender { inner: sys::mailbox::Sender::connect(&valid)? })
    }

    /// Sends and waits for the reply, however long the handler takes (a
    /// receiver that dies gives [`SendError::ReceiverDied`] at once).
    pub fn send(&mut self, tag: u64, data: &[u8]) -> Result<Reply, SendError> {
        self.call(tag, data, &[], None)
    }

    /// Sends and waits at most `timeout` for the reply. A
    /// [`SendError::TimedOut`] is never returned before `timeout` has passed.
    pub fn send_timeout(&mut self, tag: u64, data: &[u8], timeout: Duration) -> Result<Reply, SendError> {
        self.call(tag, data, &[], Some(timeout))
    }

    fn call(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        let started = std::time::Instant::now();
        let result = self.inner.call(tag, data, sections, timeout);
        if let (Err(SendError::TimedOut { .. }), Some(t)) = (&result, timeout) {
            // Some systems' timers fire a little early; a caller may rely on
            // the full time having passed.
            if let Some(rest) = t.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        result
    }

    /// Sends with sections attached (they arrive as [`Message::sections`]);
    /// `timeout` as in [`send_timeout`](Self::send_timeout), `None` to wait
    /// for as long as the receiver lives.
    pub fn send_with_sections(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        self.call(tag, data, sections, timeout)
    }
}

/// Sends a message to the mailbox `name` and waits for the reply
/// (`SendMessage(WM_COPYDATA)`).
#[doc(alias = "SendMessage")]
#[doc(alias = "WM_COPYDATA")]
pub fn send(name: &str, tag: u64, data: &[u8]) -> Result<Reply, SendError> {
    Sender::connect(name)?.send(tag, data)
}

/// Sends a message to the mailbox `name` and waits at most `timeout` for the
/// reply (`SendMessageTimeout(WM_COPYDATA)`).
#[doc(alias = "SendMessageTimeout")]
pub fn send_timeout(name: &str, tag: u64, data: &[u8], timeout: Duration) -> Result<Reply, SendError> {
    Sender::connect(name)?.send_timeout(tag, data, timeout)
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
/// crashed processes left behind).
pub fn mailboxes() -> Result<Vec<MailboxInfo>, ListError> {
    let mut all = sys::mailbox::list()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}
