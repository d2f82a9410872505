//! Mailboxes from async code, on the tokio runtime (cargo feature `tokio`).
//!
//! - [`AsyncSender`]: `send` and `post` as futures, and zero-copy loans
//!   ([`AsyncLoan`]). No thread waits for a pending call on Linux;
//!   cancelling is safe.
//! - [`AsyncMailbox`]: a mailbox as a stream of [`Request`]s
//!   ([`futures_core::Stream`], or [`AsyncMailbox::recv`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use copydata::tokio::{AsyncMailbox, AsyncSender};
//! use copydata::{Mailbox, Reply};
//!
//! // The receiving side: every request arrives as a stream item.
//! let mut inbox = AsyncMailbox::new(Mailbox::bind("echo")?)?;
//! tokio::spawn(async move {
//!     while let Some(request) = inbox.recv().await {
//!         let answer = Reply::new(0, request.payload().to_vec());
//!         let _ = request.reply(answer);
//!     }
//! });
//!
//! // The sending side, usually in another process.
//! let mut sender = AsyncSender::connect("echo").await?;
//! let reply = sender.send_timeout(1, b"ping", std::time::Duration::from_secs(2)).await?;
//! assert_eq!(&reply.data[..], b"ping");
//! # Ok(()) }
//! ```
//!
//! # Implementation notes
//!
//! - **Sending, Linux**: a pending call waits in the runtime's reactor. Each
//!   connection has a readiness handle, one end of a Unix socket pair the
//!   receiver creates and hands over at set-up. A sender about to wait raises its parked flag in
//!   the shared region with a distinct value; only for that value does the
//!   receiver write a byte to its end after queueing the reply, so the blocking
//!   fast path pays nothing for it. The connection's socket is watched too:
//!   its hang-up says the receiver died. A look every 100 ms guards against
//!   a lost wake-up, as the blocking path's parked futex does.
//! - **Sending, Windows**: no thread waits for a pending call either. The
//!   call raises its parked flag, looks once more, then registers waits
//!   with the system thread pool (`RegisterWaitForSingleObject`) on the
//!   connection's wake event and on the receiver's process; their callback
//!   wakes the task. A cancelled call unregisters them at once. As on
//!   Linux, a look every 100 ms guards against a lost wake-up. Waiting for
//!   room in a full queue, or for a buffer of the pool, works the same way
//!   on both.
//! - **Set-up** (the first send of a sender, or [`AsyncSender::connect`])
//!   is a short exchange on the socket, run on the blocking pool, bounded by
//!   the connect timeout. A call cancelled during set-up leaves it running
//!   in the background; the sender's next call takes it over (one set-up at
//!   a time per sender, however often calls are cancelled). Once nothing
//!   can take it over (the sender dropped, with a dropped
//!   [`AsyncSender::connect`] future or a task dropped with its runtime),
//!   it ends at once, giving back its blocking thread and its socket (on
//!   Windows, if it has not started yet; one that has, ends by its own
//!   deadline).
//! - **Runtimes**: the runtime needs IO and time enabled
//!   (`Builder::enable_all`). A sender may move between runtimes: a call
//!   made on another runtime than the last one registers the connection
//!   with the new runtime's reactor.
//! - **Cancellation**: dropping a `send` future once its message is
//!   queued (while it waits for the reply) drops its connection, exactly
//!   like a reply's timeout in the blocking [`Sender`](crate::Sender); the
//!   next call sets up a new one, so it can never receive the reply meant
//!   for the abandoned call. Messages the dropped connection had queued
//!   are still handled, but the next call's message goes through the new
//!   connection and may be handled before them: order holds between calls
//!   that complete. A `send` (of bytes or of a loan) dropped, or timed
//!   out, while it still waits for room in a full queue has queued nothing
//!   and keeps the connection, as a post does. A `post` future (of
//!   bytes or of a loan) only ever waits for room, and queues its message
//!   whole, in one step, when it finds some: dropped before it completes,
//!   it has queued nothing, and the connection is kept (a loan's buffer
//!   goes back to the pool); the posts that follow stay in order behind
//!   those already queued. The same holds for the waits of `loan` (for a
//!   buffer) and `flush`. A post dropped while its connection is being
//!   set up leaves the set-up to the next call, as a `send` does. To bound
//!   the wait for room without a future of your own, use
//!   [`AsyncSender::post_timeout`] (or [`AsyncSender::try_post`]); for a
//!   loan, [`AsyncLoan::post_timeout`] (or [`AsyncLoan::try_post`]), which
//!   also hands the loan back, still filled.
//! - **Large payloads**: `send(&[u8])` and `post` copy the payload into
//!   shared memory, and a reply that is not lent is copied out of it, on
//!   the task that makes the call: at memory speed (a few GB/s), 64 MiB
//!   holds its worker thread for tens of milliseconds. From about a
//!   megabyte on, use a loan ([`AsyncSender::loan`], written where and
//!   when the task chooses, sent without a copy) or make the call inside
//!   `tokio::task::block_in_place` on a multi-threaded runtime.
//! - **Receiving**: the handler side of a mailbox sleeps on doorbells in
//!   shared memory (one futex word or event per handler thread, shared by
//!   every connection), which no reactor can watch. [`AsyncMailbox`] runs
//!   one thread per mailbox that takes requests out of shared memory and
//!   hands them to the stream through a channel of one: never a thread per
//!   request or per connection. Replying is non-blocking.
//!
//! Async waits do not spin: use the blocking [`Sender`](crate::Sender) from
//! a dedicated thread where the last microseconds matter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{BindError, SendError, TimeoutStage};
use crate::fast::Bell;
use crate::fast::conn::{Body, CALL, Client, Fail, LentBuf, POST};
use crate::mailbox::{Abort, SenderOptions, connect_client_abortable, failed};
use crate::name::Name;
use crate::{Mailbox, PostLoanError, Reply, Request, Section};

/// How often a waiting call looks again without a wake-up (a safety net).
const SLICE: Duration = Duration::from_millis(100);

/// A connection to a mailbox for async code; the counterpart of
/// [`Sender`](crate::Sender).
///
/// Messages sent through one `AsyncSender` are handled in order. After a
/// `send` whose reply did not come in time, an error, or a `send` cancelled
/// while it waits for its reply, the connection is dropped and the next
/// call makes a new one: messages queued on the old one may then be handled
/// after the new call's. A message given up on while it waits for room (a
/// [`post_timeout`](Self::post_timeout) or `send_timeout` that times out
/// there, a `post` or `send` future dropped then) sends nothing and keeps
/// the connection.
#[derive(Debug)]
pub struct AsyncSender {
    name: Name,
    options: SenderOptions,
    conn: Option<Conn>,
    /// A set-up under way on the blocking pool, which a cancelled call
    /// left behind: the next call takes it over rather than start another
    /// beside it. Dropping the sender aborts it.
    setup: Option<Setup>,
    made: crate::fork::Made,
}

/// A set-up on the blocking pool, and the means to end it early.
#[derive(Debug)]
struct Setup {
    task: ::tokio::task::JoinHandle<Result<Client, SendError>>,
    abort: Arc<Abort>,
}

impl Drop for AsyncSender {
    /// A set-up under way is of no use to anyone any more (a dropped
    /// `connect` future, or a sender dropped after a call cancelled during
    /// set-up): it ends now rather than at its connect timeout, giving back
    /// its blocking thread and its socket (the receiver sees it go).
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's set-up (see `crate::fork`).
            std::mem::forget(self.setup.take());
            return;
        }
        if let Some(setup) = self.setup.take() {
            setup.abort.abort();
        }
    }
}

impl AsyncSender {
    /// Connects to the mailbox `name` (set-up bounded by
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT)).
    pub async fn connect(name: &str) -> Result<AsyncSender, SendError> {
        Self::connect_with(name, &SenderOptions::default()).await
    }

    /// Connects to the mailbox `name` with options (the wait strategy
    /// applies to the receiving side; an async sender never spins).
    pub async fn connect_with(name: &str, options: &SenderOptions) -> Result<AsyncSender, SendError> {
        let mut s = Self::unconnected(name, options)?;
        s.conn = Some(s.open(None, None).await?);
        Ok(s)
    }

    /// A sender that connects on its first call (a missing mailbox is
    /// reported then).
    pub fn unconnected(name: &str, options: &SenderOptions) -> Result<AsyncSender, SendError> {
        let valid = Name::new(name).map_err(|reason| SendError::InvalidName { name: name.into(), reason })?;
        Ok(AsyncSender {
            name: valid,
            options: options.clone(),
            conn: None,
            setup: None,
            made: crate::fork::Made::here(),
        })
    }

    /// The process id of the receiver this sender is connected to, as
    /// [`Sender::receiver_pid`](crate::Sender::receiver_pid); `None` while
    /// it is not connected or when the system names no pid for it.
    pub fn receiver_pid(&self) -> Option<u32> {
        self.conn.as_ref().and_then(|c| c.client.peer_pid())
    }

    /// Sets up a connection (on the blocking pool), by `deadline`. A set-up
    /// that a cancelled call began is awaited rather than doubled: a call
    /// cancelled again and again against a stalled receiver holds one
    /// blocking thread, not one per call.
    async fn open(&mut self, deadline: Option<Instant>, timeout: Option<Duration>) -> Result<Conn, SendError> {
        let name = || self.name.to_string();
        loop {
            let inherited = self.setup.is_some();
            let setup = match &mut self.setup {
                Some(setup) => &mut setup.task,
                None => {
                    let (name, options) = (self.name.clone(), self.options.clone());
                    let abort = Arc::new(Abort::default());
                    let aborted = abort.clone();
                    let task = ::tokio::task::spawn_blocking(move || {
                        connect_client_abortable(&name, &options, deadline, timeout, Some(&aborted))
                    });
                    &mut self.setup.insert(Setup { task, abort }).task
                }
            };
            let joined = match deadline {
                None => setup.await,
                Some(d) => match ::tokio::time::timeout_at(d.into(), setup).await {
                    Ok(joined) => joined,
                    // (The set-up goes on, for the next call to take over.)
                    Err(_) => {
                        let timeout = timeout.unwrap_or_else(|| d.saturating_duration_since(Instant::now()));
                        return Err(SendError::TimedOut { name: name(), timeout, stage: TimeoutStage::Connecting });
                    }
                },
            };
            self.setup = None;
            let client = joined.map_err(|e| SendError::Io { name: name(), source: std::io::Error::other(e) })?;
            // A set-up an earlier call began may have run out of that call's
            // time, or failed or succeeded a while ago (the receiver since
            // gone or back): its outcome stands only while its connection
            // lives; otherwise this call sets up anew, within its own time.
            let fresh = deadline.is_none_or(|d| Instant::now() < d);
            match client {
                Err(_) if inherited && fresh => {}
                Ok(c) if inherited && fresh && !c.link().alive() => {}
                client => return Conn::new(client?).map_err(|source| SendError::Io { name: name(), source }),
            }
        }
    }

    /// The connection for the next exchange (made now if there is none);
    /// [`settle`](Self::settle) puts it back.
    async fn take_conn(&mut self, deadline: Option<Instant>, timeout: Option<Duration>) -> Result<Conn, SendError> {
        match self.current_conn()? {
            Some(c) => Ok(c),
            None => self.open(deadline, timeout).await,
        }
    }

    /// The connection for the next exchange (made now if there is none),
    /// left in place: for exchanges whose every wait is for room (a post,
    /// a buffer of the pool, a flush), each after an attempt that found
    /// none and queued nothing ([`Conn::until_room`]). Such an exchange
    /// dropped while it waits (its future cancelled) has queued nothing,
    /// and the connection stays, clean;
    /// [`settled`](Self::settled) drops it after a failure that does not
    /// leave it so.
    async fn lease(&mut self, deadline: Option<Instant>, timeout: Option<Duration>) -> Result<&mut Conn, SendError> {
        let conn = self.take_conn(deadline, timeout).await?;
        Ok(self.conn.insert(conn))
    }

    /// The connection there is, left in place (none is made), as
    /// [`current_conn`](Self::current_conn).
    fn here(&mut self) -> Result<Option<&mut Conn>, SendError> {
        if let Some(conn) = self.current_conn()? {
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut())
    }

    /// The connection there is (none is made), watched by the current
    /// runtime's reactor: registered with it anew if the last call ran on
    /// another runtime. Outside a tokio runtime an error, the connection
    /// kept (a wait would panic there).
    fn current_conn(&mut self) -> Result<Option<Conn>, SendError> {
        let here = self.runtime()?;
        match self.conn.take() {
            Some(c) => c
                .on_this_runtime(&here)
                .map(Some)
                .map_err(|source| SendError::Io { name: self.name.to_string(), source }),
            None => Ok(None),
        }
    }

    /// The current tokio runtime; outside one an error (its timers and
    /// reactor would panic there), with nothing changed.
    fn runtime(&self) -> Result<::tokio::runtime::Handle, SendError> {
        ::tokio::runtime::Handle::try_current().map_err(|_| SendError::Io {
            name: self.name.to_string(),
            source: std::io::Error::other("copydata::tokio needs to run inside a tokio runtime"),
        })
    }

    /// Sends and waits for the reply, however long the handler takes (a
    /// receiver that dies gives [`SendError::ReceiverDied`]).
    #[doc(alias = "SendMessage")]
    pub async fn send(&mut self, tag: u64, data: &[u8]) -> Result<Reply, SendError> {
        self.call(tag, data, &[], None).await
    }

    /// Sends and waits at most `timeout` for the reply, set-up included.
    /// A time-out says at which [`TimeoutStage`] the call was when its
    /// time ran out, as for [`Sender::send_timeout`](crate::Sender::send_timeout):
    /// connecting or waiting for room (nothing sent, the connection kept),
    /// or waiting for the reply (the message may still be handled).
    #[doc(alias = "SendMessageTimeout")]
    pub async fn send_timeout(&mut self, tag: u64, data: &[u8], timeout: Duration) -> Result<Reply, SendError> {
        self.call(tag, data, &[], Some(timeout)).await
    }

    /// Sends with sections attached (they arrive as
    /// [`Message::sections`](crate::Message::sections)); `timeout` as in
    /// [`send_timeout`](Self::send_timeout), `None` to wait for as long as
    /// the receiver lives. At most [`MAX_SECTIONS`](crate::MAX_SECTIONS)
    /// go with one message, as for [`Sender`](crate::Sender).
    pub async fn send_with_sections(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        crate::mailbox::check_sections(&self.name, sections)?;
        self.call(tag, data, sections, timeout).await
    }

    /// Posts a notification: no reply is awaited (`PostMessage`). When the
    /// receiver's queue is full the future waits for room; dropped while it
    /// waits, it has sent nothing, and the connection is kept.
    #[doc(alias = "PostMessage")]
    pub async fn post(&mut self, tag: u64, data: &[u8]) -> Result<(), SendError> {
        let conn = self.lease(None, None).await?;
        let result = conn.put(POST, tag, data, &[]).await;
        self.settled(result, None, TimeoutStage::Room, data.len())
    }

    /// Posts, waiting at most `timeout` for room in the queue (and for the
    /// connection's set-up, if it has to be made). A
    /// [`SendError::TimedOut`] comes no sooner than `timeout`; nothing was
    /// sent then, and the connection is kept, so the posts that follow stay
    /// in order behind those already queued (as
    /// [`Sender::post_timeout`](crate::Sender::post_timeout)).
    #[doc(alias = "PostMessage")]
    pub async fn post_timeout(&mut self, tag: u64, data: &[u8], timeout: Duration) -> Result<(), SendError> {
        let attempt = |c: &mut Client| c.put(POST, tag, Body::Bytes(data), &[], false, None);
        self.with_room(data.len(), timeout, TimeoutStage::Room, attempt).await
    }

    /// Runs `attempt` on the connection (made first if there is none) until
    /// it finds room or a buffer, or `timeout` passes: a time-out, no
    /// sooner than `timeout`, has sent nothing and keeps the connection. It
    /// is reported at `stage` (a flush's, or `Room`) once the connection is
    /// there.
    async fn with_room<T>(
        &mut self,
        size: usize,
        timeout: Duration,
        stage: TimeoutStage,
        attempt: impl FnMut(&mut Client) -> Result<T, Fail>,
    ) -> Result<T, SendError> {
        self.runtime()?;
        let started = Instant::now();
        let deadline = started.checked_add(timeout);
        let result = async {
            let conn = self.lease(deadline, Some(timeout)).await?;
            match conn.until_room(deadline, attempt).await {
                Err(Fail::TimedOut) => Err(self.timed_out(Some(timeout), stage)),
                result => self.settled(result, Some(timeout), stage, size),
            }
        }
        .await;
        not_early(result, started, Some(timeout)).await
    }

    /// Posts if the queue has room now, else fails at once with
    /// [`SendError::Full`] (nothing sent, the connection kept). Only the
    /// connection's set-up, when there is none yet, is waited for.
    #[doc(alias = "PostMessage")]
    pub async fn try_post(&mut self, tag: u64, data: &[u8]) -> Result<(), SendError> {
        let result = self.lease(None, None).await?.try_put(POST, tag, data);
        self.settled(result, None, TimeoutStage::Room, data.len())
    }

    /// Waits until the messages posted through this sender so far no longer
    /// need this process, so that it may exit (as
    /// [`Sender::flush`](crate::Sender::flush), which says when that is
    /// at once).
    pub async fn flush(&mut self) -> Result<(), SendError> {
        if let Some(conn) = self.here()? {
            let result = conn.until_room(None, Client::try_settled).await;
            self.settled(result, None, TimeoutStage::Flush, 0)?;
        }
        lingered(None).await;
        Ok(())
    }

    /// Like [`flush`](Self::flush), waiting at most `timeout`; on
    /// [`SendError::TimedOut`] the connection is kept.
    pub async fn flush_timeout(&mut self, timeout: Duration) -> Result<(), SendError> {
        self.runtime()?;
        let deadline = Instant::now().checked_add(timeout);
        if self.conn.is_some() {
            self.with_room(0, timeout, TimeoutStage::Flush, Client::try_settled).await?;
        }
        if lingered(deadline).await { Ok(()) } else { Err(self.timed_out(Some(timeout), TimeoutStage::Flush)) }
    }

    /// Lends a buffer of `len` bytes in shared memory, to fill in place and
    /// send without copying ([`AsyncLoan::send`], [`AsyncLoan::post`]); the
    /// async counterpart of [`Sender::loan`](crate::Sender::loan) (see
    /// [`crate::loan`]). When every buffer of the connection's pool is
    /// lent or still being read by the receiver, the future waits for one.
    pub async fn loan(&mut self, len: usize) -> Result<AsyncLoan<'_>, SendError> {
        let buf = self.lend(len, true).await?;
        Ok(AsyncLoan::new(self, buf, len))
    }

    /// Lends a buffer, waiting at most `timeout` for one of the pool's to
    /// come back (and for the connection's set-up), as
    /// [`Sender::loan_timeout`](crate::Sender::loan_timeout): a
    /// [`SendError::TimedOut`] comes no sooner than `timeout`, nothing was
    /// lent then, and the connection is kept.
    pub async fn loan_timeout(&mut self, len: usize, timeout: Duration) -> Result<AsyncLoan<'_>, SendError> {
        let buf = self.with_room(len, timeout, TimeoutStage::Room, |c| c.lend(len, false, None)).await?;
        Ok(AsyncLoan::new(self, buf, len))
    }

    /// Lends a buffer if the pool has one free now, else fails at once with
    /// [`SendError::Full`] (the connection kept), as
    /// [`Sender::try_loan`](crate::Sender::try_loan). Only the connection's
    /// set-up, when there is none yet, is waited for.
    pub async fn try_loan(&mut self, len: usize) -> Result<AsyncLoan<'_>, SendError> {
        let buf = self.lend(len, false).await?;
        Ok(AsyncLoan::new(self, buf, len))
    }

    /// A buffer of the connection's pool (the connection made first if
    /// there is none), waiting for one to come back if `wait`, else
    /// failing with `Full`.
    async fn lend(&mut self, len: usize, wait: bool) -> Result<LentBuf, SendError> {
        let conn = self.lease(None, None).await?;
        let result = match wait {
            true => conn.until_room(None, |c| c.lend(len, false, None)).await,
            false => conn.client.lend(len, false, None),
        };
        self.settled(result, None, TimeoutStage::Room, len)
    }

    async fn call(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        self.runtime()?;
        let started = Instant::now();
        let deadline = timeout.and_then(|t| started.checked_add(t));
        // How far the exchange got, for a time-out that drops it.
        let mut stage = TimeoutStage::Connecting;
        let exchange = async {
            // Queued with the connection in place: dropped while it waits
            // for room, the call has queued nothing (as a post), and the
            // connection stays, clean.
            let conn = self.lease(deadline, timeout).await?;
            stage = TimeoutStage::Room;
            let queued = conn.put(CALL, tag, data, sections).await;
            if let Err(f) = queued {
                return self.settled(Err(f), timeout, TimeoutStage::Room, data.len());
            }
            // Queued: from here a dropped call takes its connection along,
            // whose late reply must not be taken for a later call's.
            stage = TimeoutStage::Reply;
            let mut conn = self.conn.take().expect("leased above");
            let result = conn.reply().await;
            self.settle(conn, result, timeout, TimeoutStage::Reply, data.len())
        };
        // Past the deadline, the exchange was dropped (with the connection
        // if the call was queued).
        let finished = until(deadline, exchange).await;
        let result = finished.unwrap_or_else(|| Err(self.timed_out(timeout, stage)));
        not_early(result, started, timeout).await
    }

    /// The error for a call or post that ran out of `timeout` at `stage`.
    fn timed_out(&self, timeout: Option<Duration>, stage: TimeoutStage) -> SendError {
        SendError::TimedOut { name: self.name.to_string(), timeout: timeout.unwrap_or_default(), stage }
    }

    /// The outcome of an exchange on the connection left in place
    /// ([`lease`](Self::lease)): dropped after an error that does not leave
    /// it clean. A time-out is reported at `stage`.
    fn settled<T>(
        &mut self,
        result: Result<T, Fail>,
        timeout: Option<Duration>,
        stage: TimeoutStage,
        size: usize,
    ) -> Result<T, SendError> {
        result.map_err(|f| {
            let (error, clean) = failed(&self.name, timeout, stage, size as u64, f);
            if !clean {
                self.conn = None;
            }
            error
        })
    }

    /// Keeps the connection after a success or an error that leaves it
    /// clean; drops it otherwise. A time-out is reported at `stage`.
    fn settle<T>(
        &mut self,
        conn: Conn,
        result: Result<T, Fail>,
        timeout: Option<Duration>,
        stage: TimeoutStage,
        size: usize,
    ) -> Result<T, SendError> {
        match result {
            Ok(t) => {
                self.conn = Some(conn);
                Ok(t)
            }
            Err(f) => {
                let (error, clean) = failed(&self.name, timeout, stage, size as u64, f);
                if clean {
                    self.conn = Some(conn);
                }
                Err(error)
            }
        }
    }
}

/// A buffer in shared memory lent for one message by an [`AsyncSender`];
/// the async counterpart of [`Loan`](crate::loan::Loan), with the same
/// memory model ([`crate::loan`]). From [`AsyncSender::loan`].
///
/// Write it with [`write_at`](Self::write_at), [`fill`](Self::fill) or
/// through [`as_mut_ptr`](Self::as_mut_ptr), then send or post it. Dropping
/// it unsent gives the buffer back; so does a `post` or `send` future
/// dropped while it waits for room in the queue (nothing was queued: the
/// connection is kept). A `send` future dropped once its loan is queued
/// (while it waits for the reply) drops the connection, as for any
/// cancelled `send`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut sender = copydata::tokio::AsyncSender::connect("images").await?;
/// let mut loan = sender.loan(64 << 20).await?;
/// loan.fill(0x7f); // or write_at, or through as_mut_ptr
/// let reply = loan.send(1).await?;
/// # Ok(()) }
/// ```
pub struct AsyncLoan<'a> {
    sender: &'a mut AsyncSender,
    /// `None` once sent.
    buf: Option<LentBuf>,
    /// The start of the buffer (kept apart so accessors need no unwrap).
    ptr: *mut u8,
    len: usize,
    made: crate::fork::Made,
}

// SAFETY: the buffer belongs to the pool of the sender's connection, which
// the `&mut AsyncSender` keeps alive and unused by anything else while the
// loan lives; the loan is its only writer, from whichever thread owns it.
// (A future that sends a loan must be `Send` to be spawned.)
unsafe impl Send for AsyncLoan<'_> {}
// SAFETY: `&AsyncLoan` gives no access to the buffer's bytes.
unsafe impl Sync for AsyncLoan<'_> {}

impl<'a> AsyncLoan<'a> {
    fn new(sender: &'a mut AsyncSender, buf: LentBuf, len: usize) -> AsyncLoan<'a> {
        AsyncLoan { ptr: buf.ptr, buf: Some(buf), len, sender, made: crate::fork::Made::here() }
    }

    crate::loan::filling_methods!();

    /// Sends the loan and waits for the reply (as [`AsyncSender::send`]).
    pub async fn send(self, tag: u64) -> Result<Reply, SendError> {
        self.call(tag, None).await
    }

    /// Sends the loan and waits at most `timeout` for the reply, as
    /// [`AsyncSender::send_timeout`].
    pub async fn send_timeout(self, tag: u64, timeout: Duration) -> Result<Reply, SendError> {
        self.call(tag, Some(timeout)).await
    }

    /// Sends the loan and waits for the reply. While it waits for room in
    /// the queue the buffer stays in the loan: dropped then (or timed out
    /// there), the call has queued nothing, the loan's drop gives the
    /// buffer back and the connection is kept, as for a post. Once queued,
    /// a dropped call takes its connection along, as
    /// [`AsyncSender::send`] does.
    async fn call(mut self, tag: u64, timeout: Option<Duration>) -> Result<Reply, SendError> {
        // (Outside a runtime nothing happens: the loan's drop gives the
        // buffer back, and the connection is kept.)
        self.sender.here()?;
        let started = Instant::now();
        let deadline = timeout.and_then(|t| started.checked_add(t));
        let len = self.len;
        // How far the exchange got, for a time-out that drops it (the
        // connection is there: a loan comes from it).
        let mut stage = TimeoutStage::Room;
        let exchange = async {
            // Without its connection, the buffer's is gone.
            let Some(conn) = self.sender.conn.as_mut() else {
                self.buf = None;
                return Err(SendError::ReceiverDied { name: self.sender.name.to_string() });
            };
            let buf = self.buf.as_ref().expect("a loan is sent once");
            let queued = conn.put_lent(CALL, tag, buf, len, None).await;
            if let Err(f) = queued {
                // Not queued: the buffer is still lent only for lack of
                // room (the loan's drop gives it back); otherwise
                // `put_lent` gave it back.
                if !matches!(f, Fail::Full | Fail::TimedOut) {
                    self.buf = None;
                }
                return self.sender.settled(Err(f), timeout, TimeoutStage::Room, len);
            }
            // Queued: the buffer is the receiver's to read, and from here a
            // dropped call takes its connection along.
            stage = TimeoutStage::Reply;
            self.buf = None;
            let mut conn = self.sender.conn.take().expect("there above");
            let result = conn.reply().await;
            self.sender.settle(conn, result, timeout, TimeoutStage::Reply, len)
        };
        // Past the deadline, the exchange was dropped (with the connection
        // if the call was queued).
        let finished = until(deadline, exchange).await;
        let result = finished.unwrap_or_else(|| Err(self.sender.timed_out(timeout, stage)));
        not_early(result, started, timeout).await
    }

    /// Posts the loan: no reply awaited (as [`AsyncSender::post`]); when the
    /// receiver's queue is full the future waits for room. Dropped while
    /// it waits, it has sent nothing: the buffer goes back, and the
    /// connection is kept.
    pub async fn post(self, tag: u64) -> Result<(), SendError> {
        self.post_until(tag, None, None).await.map_err(|e| e.into_parts().0)
    }

    /// Posts the loan if the connection's queue has room now (as
    /// [`AsyncSender::try_post`]); it never waits, so it is not a future.
    /// When the queue is full, nothing is sent and the loan comes back,
    /// still filled, in the error, with [`SendError::Full`]: post it again
    /// later, or drop it to give the buffer back.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), copydata::SendError> {
    /// let mut sender = copydata::tokio::AsyncSender::connect("frames").await?;
    /// let mut loan = sender.loan(1 << 20).await?;
    /// loan.fill(7);
    /// if let Err(e) = loan.try_post(1) {
    ///     match e.into_parts() {
    ///         // The queue was full: wait for room after all.
    ///         (_, Some(back)) => back.post(1).await?,
    ///         (error, None) => return Err(error),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_post(self, tag: u64) -> Result<(), PostLoanError<Self>> {
        let buf = self.buf.as_ref().expect("a loan is sent once");
        let Some(conn) = self.sender.conn.as_mut() else { return Err(self.gone()) };
        let result = conn.client.put_lent(POST, tag, buf, self.len, false, None);
        self.settle(result, None)
    }

    /// Posts the loan, waiting at most `timeout` for room in the
    /// connection's queue (as [`AsyncSender::post_timeout`]). On
    /// [`SendError::TimedOut`], which comes no sooner than `timeout`,
    /// nothing was sent, the connection is kept and the loan comes back,
    /// still filled, in the error. Dropping the future before it is first
    /// polled gives the buffer back; dropping it while it waits for room
    /// gives the buffer back too, and keeps the connection: nothing was
    /// queued.
    pub async fn post_timeout(self, tag: u64, timeout: Duration) -> Result<(), PostLoanError<Self>> {
        let deadline = Instant::now().checked_add(timeout);
        self.post_until(tag, deadline, Some(timeout)).await
    }

    /// Posts the loan, waiting for room until `deadline` (`None`: for as
    /// long as it takes). The buffer stays in the loan and the connection
    /// in the sender while the post waits: dropped then, the loan gives the
    /// buffer back to the connection, which is clean (only a full queue was
    /// waited on, nothing queued).
    async fn post_until(
        self,
        tag: u64,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<(), PostLoanError<Self>> {
        if let Err(e) = self.sender.here() {
            // No runtime: nothing happened, the loan comes back.
            return Err(if self.sender.conn.is_some() { PostLoanError::back(e, self) } else { self.gone() });
        }
        let Some(conn) = self.sender.conn.as_mut() else { return Err(self.gone()) };
        let buf = self.buf.as_ref().expect("a loan is sent once");
        let result = conn.put_lent(POST, tag, buf, self.len, deadline).await;
        self.settle(result, timeout)
    }

    /// The outcome of a post that may hand the loan back: when the queue
    /// had no room, nothing was queued and the buffer is still lent.
    fn settle(mut self, result: Result<(), Fail>, timeout: Option<Duration>) -> Result<(), PostLoanError<Self>> {
        let error = match result {
            Err(Fail::TimedOut) => self.sender.timed_out(timeout, TimeoutStage::Room),
            Err(Fail::Full) => SendError::Full { name: self.sender.name.to_string() },
            // Sent, or failed with the buffer given back: the loan is done.
            other => {
                self.buf = None;
                return self.sender.settled(other, timeout, TimeoutStage::Room, self.len).map_err(PostLoanError::gone);
            }
        };
        Err(PostLoanError::back(error, self))
    }

    /// The error when the sender has no connection: the buffer's went with it.
    fn gone(&self) -> PostLoanError<Self> {
        PostLoanError::gone(SendError::ReceiverDied { name: self.sender.name.to_string() })
    }
}

impl Drop for AsyncLoan<'_> {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's buffer (see `crate::fork`).
            return;
        }
        if let (Some(buf), Some(conn)) = (self.buf.take(), self.sender.conn.as_mut()) {
            conn.cancel(&buf);
        }
    }
}

impl std::fmt::Debug for AsyncLoan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsyncLoan({} bytes)", self.len)
    }
}

/// Runs `exchange` until it completes (`Some`) or `deadline` passes
/// (`None`: it is dropped then).
async fn until<T>(deadline: Option<Instant>, exchange: impl std::future::Future<Output = T>) -> Option<T> {
    match deadline {
        Some(d) => ::tokio::time::timeout_at(d.into(), exchange).await.ok(),
        None => Some(exchange.await),
    }
}

/// `result`, after waiting out the rest of `timeout` from `started` if it
/// is a time-out that came early (some timers fire a little early, and a
/// caller may rely on the full time having passed). With no `timeout`,
/// `result` as it is.
async fn not_early<T>(
    result: Result<T, SendError>,
    started: Instant,
    timeout: Option<Duration>,
) -> Result<T, SendError> {
    if let Err(SendError::TimedOut { .. }) = &result
        && let Some(end) = timeout.and_then(|t| started.checked_add(t))
    {
        ::tokio::time::sleep_until(end.into()).await;
    }
    result
}

/// Sends a message to the mailbox `name` and waits for the reply.
#[doc(alias = "SendMessage")]
pub async fn send(name: &str, tag: u64, data: &[u8]) -> Result<Reply, SendError> {
    AsyncSender::unconnected(name, &SenderOptions::default())?.send(tag, data).await
}

/// Sends a message to the mailbox `name` and waits at most `timeout` for the
/// reply, set-up included.
#[doc(alias = "SendMessageTimeout")]
pub async fn send_timeout(name: &str, tag: u64, data: &[u8], timeout: Duration) -> Result<Reply, SendError> {
    AsyncSender::unconnected(name, &SenderOptions::new().connect_timeout(timeout))?
        .send_timeout(tag, data, timeout)
        .await
}

// ---------------------------------------------------------------- Linux

/// One connection, watched by the runtime's reactor.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Conn {
    client: Client,
    /// A duplicate of the readiness handle (this end of a socket pair).
    notify: ::tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// A duplicate of the connection's socket, readable on hang-up.
    hangup: ::tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// The runtime whose reactor watches the two: another one's tasks would
    /// never hear from it (nor from a runtime that was dropped).
    runtime: ::tokio::runtime::Id,
}

#[cfg(target_os = "linux")]
use crate::sys::mailbox::Drained;

/// The parked flag's value for a wait in the runtime: the receiver then
/// writes the readiness handle, not the futex.
#[cfg(target_os = "linux")]
const PARKED_HERE: u32 = crate::fast::PARKED_ASYNC;

#[cfg(target_os = "linux")]
impl Conn {
    fn new(client: Client) -> std::io::Result<Conn> {
        use ::tokio::io::Interest;
        use ::tokio::io::unix::AsyncFd;
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other("copydata::tokio needs to run inside a tokio runtime"));
        }
        let (notify, sock) = client.link().readiness();
        let (notify, sock) = (notify.try_clone_to_owned()?, sock.try_clone_to_owned()?);
        // SAFETY:
        // - each `OwnedFd` is a fresh duplicate owned by its `AsyncFd`: it
        //   stays open on the same description until the `AsyncFd` drops,
        //   and `as_raw_fd` always returns that descriptor;
        // - a runtime is current (checked above).
        let notify =
            unsafe { AsyncFd::register_with_interest(notify, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        // SAFETY: as above, for the socket's duplicate.
        let hangup =
            unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Conn { client, notify, hangup, runtime: ::tokio::runtime::Handle::current().id() })
    }

    /// The connection, watched by the reactor of `here`, the current
    /// runtime (registered with it anew if it was made on another runtime).
    fn on_this_runtime(self, here: &::tokio::runtime::Handle) -> std::io::Result<Conn> {
        if here.id() != self.runtime { Conn::new(self.client) } else { Ok(self) }
    }

    /// Waits until the readiness handle or the socket says to look again, or
    /// a slice has passed, then lowers the parked flag for `bell`. The
    /// caller raised the flag (`PARKED_ASYNC`) and looked once more before
    /// calling. `Err(PeerGone)` once the receiver has hung up. Dropped
    /// while it waits, it lowers the flag too.
    async fn wait(&mut self, bell: Bell, deadline: Option<Instant>) -> Result<(), Fail> {
        let parked = Parked(&self.client, bell);
        let slice = Instant::now() + SLICE;
        let woken = ::tokio::time::timeout_at(
            deadline.map_or(slice, |d| d.min(slice)).into(),
            std::future::poll_fn(|cx| {
                match self.notify.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut g)) => {
                        let drained = self.client.link().drain_readiness();
                        g.clear_ready();
                        return Poll::Ready(Ok(drained));
                    }
                    // The reactor is gone (its runtime was dropped).
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                match self.hangup.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut g)) => {
                        g.clear_ready();
                        Poll::Ready(Ok(Drained::Nothing))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }),
        )
        .await;
        drop(parked);
        match woken {
            Ok(Ok(Drained::Signalled)) => Ok(()),
            // The receiver's end of the readiness pair is closed: its side
            // of the link is gone (also when its process lingers on), and
            // the handle would read as ready for ever.
            Ok(Ok(Drained::Closed)) => Err(Fail::PeerGone),
            Ok(Err(e)) => Err(Fail::Io(e)),
            _ if self.client.link().alive() => Ok(()),
            _ => Err(Fail::PeerGone),
        }
    }
}

// ---------------------------------------------------------------- elsewhere

/// One connection; its waits are registered with the system thread pool.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
struct Conn {
    client: Client,
}

/// The parked flag's value: the receiver sets the wake event for any.
#[cfg(not(target_os = "linux"))]
const PARKED_HERE: u32 = crate::fast::PARKED;

#[cfg(not(target_os = "linux"))]
impl Conn {
    fn new(client: Client) -> std::io::Result<Conn> {
        Ok(Conn { client })
    }

    /// The connection (its waits are the system thread pool's, whatever
    /// the runtime).
    fn on_this_runtime(self, _here: &::tokio::runtime::Handle) -> std::io::Result<Conn> {
        Ok(self)
    }

    /// Waits until the connection's wake event or the receiver's process is
    /// signalled, or a slice has passed (or `deadline`), then lowers the
    /// parked flag for `bell`. The caller raised the flag and looked once
    /// more before calling. `Err(PeerGone)` once the receiver is gone.
    /// Dropped while it waits, it lowers the flag too.
    async fn wait(&mut self, bell: Bell, deadline: Option<Instant>) -> Result<(), Fail> {
        let parked = Parked(&self.client, bell);
        let slice = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE));
        #[cfg(windows)]
        let waited = {
            let objects = self.client.link().wait_objects();
            // SAFETY: the handles are the connection's, which `self` keeps
            // open while this future borrows it.
            unsafe { crate::sys::readiness::any_signalled(&objects, slice) }.await
        };
        // (No other platform has mailboxes: nothing connects there.)
        #[cfg(not(windows))]
        let waited = Ok::<(), std::io::Error>(::tokio::time::sleep(slice).await);
        drop(parked);
        waited.map_err(Fail::Io)?;
        if self.client.link().alive() { Ok(()) } else { Err(Fail::PeerGone) }
    }
}

// ---------------------------------------------------------------- both

/// This side's parked flag for a bell, raised for a wait in the runtime:
/// lowered when the wait ends, and when its future is dropped while it
/// waits (a cancelled post keeps its connection, which must not go on
/// asking the receiver for wake-ups nobody waits for).
struct Parked<'a>(&'a Client, Bell);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.set_parked(self.1, 0);
    }
}

/// Waits until no connection this process dropped still keeps attachments
/// for its receiver (Windows: a connection dropped by a cancelled or timed
/// out call, whose receiver pulls them out of this process later), as the
/// blocking `flush` does, by `deadline` at most (`false` then). Looks
/// every 10 ms; on Linux nothing outlives a connection, and this returns at
/// once.
async fn lingered(deadline: Option<Instant>) -> bool {
    loop {
        if crate::sys::mailbox::Link::await_lingering(Some(Instant::now())) {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        ::tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Conn {
    /// Gives back a loan that was not sent.
    fn cancel(&mut self, buf: &LentBuf) {
        self.client.cancel(buf);
    }

    /// Runs `attempt` until it finds room (anything but `Fail::Full`),
    /// waiting in between for the receiver to make some, or until
    /// `deadline` (then `Fail::TimedOut`). Each attempt runs whole, without
    /// a wait, and one that finds no room has queued nothing of its message
    /// and leaves the connection clean (`Full`): dropped while it waits,
    /// this future leaves the connection as clean as it found it.
    async fn until_room<T>(
        &mut self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(&mut Client) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        loop {
            match attempt(&mut self.client) {
                Err(Fail::Full) => {}
                other => return other,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Fail::TimedOut);
            }
            // Raise the flag, then look once more: room made after the flag
            // is up signals the waiter.
            self.client.set_parked(Bell::Space, PARKED_HERE);
            match attempt(&mut self.client) {
                Err(Fail::Full) => self.wait(Bell::Space, deadline).await?,
                other => {
                    self.client.set_parked(Bell::Space, 0);
                    return other;
                }
            }
        }
    }

    async fn reply(&mut self) -> Result<Reply, Fail> {
        loop {
            if let Some(r) = self.client.try_reply()? {
                return Ok(r);
            }
            self.client.set_parked(Bell::Reply, PARKED_HERE);
            if let Some(r) = self.client.try_reply()? {
                self.client.set_parked(Bell::Reply, 0);
                return Ok(r);
            }
            if let Err(e) = self.wait(Bell::Reply, None).await {
                // Whatever the receiver queued before it died still counts.
                return self.client.try_reply()?.ok_or(e);
            }
        }
    }

    /// Queues a message, waiting for room for as long as it takes.
    async fn put(&mut self, kind: u32, tag: u64, data: &[u8], sections: &[&Section]) -> Result<(), Fail> {
        self.until_room(None, |c| c.put(kind, tag, Body::Bytes(data), sections, false, None)).await
    }

    /// Queues a loan, waiting for room for as long as it takes or until
    /// `deadline`. On `Fail::TimedOut` nothing was queued and the buffer is
    /// still lent; a failure of the attempt gives it back, and one of the
    /// wait (the receiver gone) leaves the connection to be dropped, and
    /// the buffer with it.
    async fn put_lent(
        &mut self,
        kind: u32,
        tag: u64,
        buf: &LentBuf,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<(), Fail> {
        self.until_room(deadline, |c| c.put_lent(kind, tag, buf, len, false, None)).await
    }

    /// Queues a message if there is room now (`Fail::Full` if not).
    fn try_put(&mut self, kind: u32, tag: u64, data: &[u8]) -> Result<(), Fail> {
        self.client.put(kind, tag, Body::Bytes(data), &[], false, None)
    }
}

// ---------------------------------------------------------------- receiving

/// A mailbox as a stream of requests, for async code.
///
/// Made from a bound [`Mailbox`]; each item is a [`Request`] to answer with
/// [`Request::reply`] (which does not block). Requests from one sender
/// arrive in order, the next one after the previous one was answered.
/// Dropping the stream unbinds the mailbox.
#[derive(Debug)]
pub struct AsyncMailbox {
    name: String,
    rx: Option<::tokio::sync::mpsc::Receiver<Request>>,
    mailbox: Arc<Mailbox>,
    thread: Option<JoinHandle<()>>,
    made: crate::fork::Made,
}

impl AsyncMailbox {
    /// Starts handing the mailbox's requests to this stream (one thread per
    /// mailbox takes them out of shared memory).
    pub fn new(mailbox: Mailbox) -> Result<AsyncMailbox, BindError> {
        let name = mailbox.name().to_string();
        let mailbox = Arc::new(mailbox);
        let (tx, rx) = ::tokio::sync::mpsc::channel(1);
        let feeder = mailbox.clone();
        let thread = std::thread::Builder::new()
            .name(format!("copydata-async-{name}"))
            .spawn(move || {
                while let Ok(request) = feeder.recv() {
                    // The stream is gone: the request is refused as it drops.
                    if tx.blocking_send(request).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| BindError::Io { name: name.clone(), source })?;
        Ok(AsyncMailbox { name, rx: Some(rx), mailbox, thread: Some(thread), made: crate::fork::Made::here() })
    }

    /// Binds `name` and makes a stream of it.
    pub fn bind(name: &str) -> Result<AsyncMailbox, BindError> {
        AsyncMailbox::new(Mailbox::bind(name)?)
    }

    /// The mailbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next request (`None` once the mailbox is closed).
    pub async fn recv(&mut self) -> Option<Request> {
        self.rx.as_mut()?.recv().await
    }
}

impl futures_core::Stream for AsyncMailbox {
    type Item = Request;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        match self.get_mut().rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for AsyncMailbox {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's thread; the requests queued are the parent's to
            // answer (see `crate::fork`).
            std::mem::forget(self.thread.take());
            std::mem::forget(self.rx.take());
            return;
        }
        // Requests still queued are refused as they drop; the thread's next
        // hand-over fails, and `close` ends its wait.
        self.rx = None;
        self.mailbox.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
