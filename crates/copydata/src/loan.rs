//! Zero-copy loans: payloads written and read in place, in shared memory.
//!
//! [`Sender::loan`](crate::Sender::loan) lends a buffer of the connection's
//! pool (mapped once, reused, so its pages are not faulted in again for
//! each message). The sender fills it in place and sends it with
//! [`Loan::send`] or [`Loan::post`], which consume the loan: once sent, the
//! sender's code cannot write it any more. The receiver sees a loaned
//! message through [`Message::loan`](crate::Message::loan) and reads it in
//! place through a [`LoanView`]; the buffer goes back to the pool when the
//! message is dropped. [`Loan::try_post`] and [`Loan::post_timeout`] give
//! the loan back when the queue has no room, to post again later.
//!
//! The pool is bounded (8 buffers per connection and direction, 512 MiB in
//! all; a payload above 256 MiB gets a one-shot section instead). A
//! receiver that holds every buffer (loans it has not handled yet, or
//! messages whose views it keeps) makes the next `loan` wait for one to
//! come back; [`Sender::loan_timeout`](crate::Sender::loan_timeout) and
//! [`Sender::try_loan`](crate::Sender::try_loan) bound that wait, so a
//! stuck receiver cannot hang a sender that asked for a time limit.
//!
//! Replies can be loaned the same way: the handler takes a [`ReplyLoan`]
//! from [`Message::loan_reply`](crate::Message::loan_reply), fills it and
//! answers with [`Reply::loaned`](crate::Reply::loaned); the sender reads it
//! in place through [`Reply::loan`](crate::Reply::loan).
//!
//! # The memory model
//!
//! A pooled buffer cannot be sealed by the kernel (a seal is for ever, and
//! the buffer is written again for the next message). So a *hostile* sender
//! process could still write a loan while the receiver reads it. That is
//! why a [`LoanView`] never hands out `&[u8]`: bytes are copied out
//! ([`read_at`](LoanView::read_at), [`to_vec`](LoanView::to_vec),
//! [`for_each_chunk`](LoanView::for_each_chunk)); what the receiver gets is
//! then private, but a value read twice may differ if the sender cheats.
//! Validate what you read. When the bytes must provably not change, send
//! with [`Sender::send`](crate::Sender::send) instead: small payloads are
//! copied, large ones arrive sealed (Linux) or copied, and
//! [`Message::payload`](crate::Message::payload) is then a plain `&[u8]`.
//! A loaned message's (or reply's) [`Payload`](crate::Payload) can be
//! read as a slice too, for code written for ordinary messages: its bytes
//! are then copied into private memory on first use, a snapshot that never
//! changes afterwards (its [`len`](crate::Payload::len) needs no copy).
//! On Linux the sender's own pool buffers are sealed against writes by the
//! receiver (`F_SEAL_FUTURE_WRITE`), so a receiver cannot write a loan.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{AccessError, SendError};
use crate::fast::conn::{LentBuf, Release, ServerConn};
use crate::fork::Made;
use crate::mailbox::{Reply, Sender};
use crate::view::View;

/// Copies `data` into the lent buffer of `len` bytes at `ptr`, at `offset`
/// (the one bounds check every kind of loan makes).
///
/// # Safety
///
/// `ptr` is valid for writing `len` bytes (a lent buffer, mapped while its
/// loan lives) and no reference to that memory exists.
pub(crate) unsafe fn write_into(ptr: *mut u8, len: usize, offset: usize, data: &[u8]) -> Result<(), AccessError> {
    match offset.checked_add(data.len()) {
        Some(end) if end <= len => {}
        _ => return Err(AccessError::OutOfRange { offset, len: data.len(), view_len: len }),
    }
    // SAFETY:
    // - `offset + data.len() <= len`: inside the lent buffer (the caller's
    //   promise);
    // - `data` is the caller's memory, distinct from the shared buffer;
    // - no reference to the shared memory is formed.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.add(offset), data.len()) };
    Ok(())
}

/// Sets the `len` bytes of the lent buffer at `ptr` to `byte`.
///
/// # Safety
///
/// As for [`write_into`].
pub(crate) unsafe fn fill_with(ptr: *mut u8, len: usize, byte: u8) {
    // SAFETY: `len` bytes at `ptr` are writable (the caller's promise);
    // `write_bytes` forms no reference.
    unsafe { std::ptr::write_bytes(ptr, byte, len) };
}

/// The methods that fill a sender's loan in place ([`Loan`], and
/// [`AsyncLoan`](crate::tokio::AsyncLoan)): for a type whose `ptr` and
/// `len` fields are its lent buffer, valid and writable while it lives.
macro_rules! filling_methods {
    () => {
        /// The loan's length in bytes (what the receiver will see).
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether the loan has no bytes.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// A pointer to the first byte, valid for [`len`](Self::len) bytes until
        /// the loan is sent or dropped.
        pub fn as_mut_ptr(&mut self) -> *mut u8 {
            self.ptr
        }

        /// Copies `data` into the loan at `offset`.
        pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), $crate::error::AccessError> {
            // SAFETY: `ptr` is valid for the loan's `len` bytes, mapped while the
            // loan lives; `&mut self` means no reference to them exists.
            unsafe { $crate::loan::write_into(self.ptr, self.len, offset, data) }
        }

        /// Sets every byte of the loan to `byte`.
        pub fn fill(&mut self, byte: u8) {
            // SAFETY: as in `write_at`.
            unsafe { $crate::loan::fill_with(self.ptr, self.len, byte) }
        }

        /// The loan as a mutable byte slice, for filling in place.
        ///
        /// # Safety
        ///
        /// No other process may write the buffer while the slice lives. The
        /// receiver cannot on Linux (its handle is sealed against writes); on
        /// Windows it holds a read-only handle, which a cooperating receiver
        /// cannot turn into write access either. Only a hostile process with
        /// debugging rights over this one could.
        pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
            // SAFETY:
            // - the pointer is valid and writable for `len` bytes while the loan
            //   (and so this borrow) lives;
            // - the caller promises no other writer meanwhile.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
        }
    };
}
#[cfg_attr(not(feature = "tokio"), allow(unused_imports))]
pub(crate) use filling_methods;

/// A buffer in shared memory lent for one message; see the
/// [module docs](self). From [`Sender::loan`](crate::Sender::loan).
///
/// Write it with [`write_at`](Self::write_at), [`fill`](Self::fill) or
/// through [`as_mut_ptr`](Self::as_mut_ptr), then send it. Dropping it
/// unsent gives the buffer back.
pub struct Loan<'a> {
    sender: &'a mut Sender,
    /// `None` once sent.
    buf: Option<LentBuf>,
    /// The start of the buffer (kept apart so accessors need no unwrap).
    ptr: *mut u8,
    len: usize,
    made: Made,
}

// SAFETY: the buffer belongs to the pool of the sender's connection, which
// the `&mut Sender` keeps alive and unused by anything else while the loan
// lives; `ptr` only caches its start, and the loan is its only writer, from
// whichever thread owns it. (So does `AsyncLoan`; the C ABI keeps a loan in
// a handle that C may use from any thread.)
unsafe impl Send for Loan<'_> {}

impl<'a> Loan<'a> {
    pub(crate) fn new(sender: &'a mut Sender, buf: LentBuf, len: usize) -> Loan<'a> {
        let ptr = buf.ptr;
        Loan { sender, buf: Some(buf), ptr, len, made: Made::here() }
    }

    fn take(&mut self) -> LentBuf {
        self.buf.take().expect("a loan is sent once")
    }

    filling_methods!();

    /// Sends the loan and waits for the reply (as [`Sender::send`]).
    pub fn send(mut self, tag: u64) -> Result<Reply, SendError> {
        let buf = self.take();
        self.sender.call_loan(tag, &buf, self.len, None)
    }

    /// Sends the loan and waits at most `timeout` for the reply (as
    /// [`Sender::send_timeout`]). The loan is used up whatever the outcome:
    /// after a time-out at [`TimeoutStage::Room`](crate::TimeoutStage::Room)
    /// nothing was sent, and sending again takes a new loan.
    pub fn send_timeout(mut self, tag: u64, timeout: Duration) -> Result<Reply, SendError> {
        let buf = self.take();
        self.sender.call_loan(tag, &buf, self.len, Some(timeout))
    }

    /// Posts the loan: no reply awaited (as [`Sender::post`]). Waits for
    /// room in the connection's queue as long as it takes. A process that
    /// exits right after posting a loan calls [`Sender::flush`] first (on
    /// Windows the receiver takes the buffer out of the sending process).
    pub fn post(self, tag: u64) -> Result<(), SendError> {
        self.post_with(tag, true, None).map_err(PostLoanError::into_error)
    }

    /// Posts the loan if the connection's queue has room now (as
    /// [`Sender::try_post`]). When it is full, nothing is sent and the loan
    /// comes back, still filled, in the error, with [`SendError::Full`]:
    /// post it again later, or drop it to give the buffer back.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), copydata::SendError> {
    /// let mut sender = copydata::Sender::connect("my-app")?;
    /// let mut loan = sender.loan(1 << 20)?;
    /// loan.fill(7);
    /// loop {
    ///     match loan.try_post(1).map_err(|e| e.into_parts()) {
    ///         Ok(()) => break,
    ///         // Nothing was sent: do something else meanwhile, then try again.
    ///         Err((_, Some(back))) => loan = back,
    ///         Err((error, None)) => return Err(error),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_post(self, tag: u64) -> Result<(), PostLoanError<Loan<'a>>> {
        self.post_with(tag, false, None)
    }

    /// Posts the loan, waiting at most `timeout` for room in the
    /// connection's queue (as [`Sender::post_timeout`]). On
    /// [`SendError::TimedOut`], which comes no sooner than `timeout`,
    /// nothing was sent, the connection is kept and the loan comes back,
    /// still filled, in the error.
    pub fn post_timeout(self, tag: u64, timeout: Duration) -> Result<(), PostLoanError<Loan<'a>>> {
        self.post_with(tag, true, Some(timeout))
    }

    fn post_with(mut self, tag: u64, block: bool, timeout: Option<Duration>) -> Result<(), PostLoanError<Loan<'a>>> {
        let buf = self.take();
        match self.sender.post_loan(tag, &buf, self.len, block, timeout) {
            Ok(()) => Ok(()),
            // No room: nothing was queued and the buffer is still lent.
            Err(error @ (SendError::Full { .. } | SendError::TimedOut { .. })) => {
                self.buf = Some(buf);
                Err(PostLoanError::back(error, self))
            }
            // The buffer went back to the pool (or its connection is gone).
            Err(error) => Err(PostLoanError::gone(error)),
        }
    }
}

/// A loan's post that sent nothing: [`Loan::try_post`],
/// [`Loan::post_timeout`], and their async counterparts
/// (`AsyncLoan::try_post`, `AsyncLoan::post_timeout` with the `tokio`
/// feature). `L` is the loan's type. When the queue had no room (`Full`,
/// `TimedOut`), the loan comes back with the error, still filled and lent.
pub struct PostLoanError<L> {
    error: SendError,
    /// Boxed, so that the error stays small on the way back.
    loan: Option<Box<L>>,
}

impl<L> PostLoanError<L> {
    /// Nothing was queued for want of room: `loan` comes back.
    pub(crate) fn back(error: SendError, loan: L) -> PostLoanError<L> {
        PostLoanError { error, loan: Some(Box::new(loan)) }
    }

    /// The buffer went back to the pool (or its connection is gone).
    pub(crate) fn gone(error: SendError) -> PostLoanError<L> {
        PostLoanError { error, loan: None }
    }

    /// What went wrong.
    pub fn error(&self) -> &SendError {
        &self.error
    }

    /// The loan, when nothing was sent for want of room in the queue
    /// ([`SendError::Full`], [`SendError::TimedOut`]); `None` after any
    /// other error (the buffer went back to the pool).
    pub fn into_loan(self) -> Option<L> {
        self.loan.map(|l| *l)
    }

    /// The error, giving the loan (if any) back to the pool.
    pub fn into_error(self) -> SendError {
        self.error
    }

    /// The error and the loan, if it came back.
    pub fn into_parts(self) -> (SendError, Option<L>) {
        (self.error, self.loan.map(|l| *l))
    }
}

impl<L> From<PostLoanError<L>> for SendError {
    fn from(e: PostLoanError<L>) -> SendError {
        e.error
    }
}

impl<L: fmt::Debug> fmt::Debug for PostLoanError<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostLoanError").field("error", &self.error).field("loan", &self.loan).finish()
    }
}

impl<L> fmt::Display for PostLoanError<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<L: fmt::Debug> std::error::Error for PostLoanError<L> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's buffer (see `crate::fork`).
            return;
        }
        if let Some(buf) = self.buf.take() {
            self.sender.cancel_loan(&buf);
        }
    }
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).finish_non_exhaustive()
    }
}

/// A loaned message, read in place; from
/// [`Message::loan`](crate::Message::loan). See the [module docs](self) for
/// why it copies bytes out instead of lending `&[u8]`.
pub struct LoanView {
    view: Option<Arc<View>>,
    len: usize,
    _release: Option<Release>,
}

impl LoanView {
    pub(crate) fn new(view: Option<Arc<View>>, len: usize, release: Option<Release>) -> LoanView {
        LoanView { view, len, _release: release }
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        match offset.checked_add(buf.len()) {
            Some(end) if end <= self.len => {}
            _ => return Err(AccessError::OutOfRange { offset, len: buf.len(), view_len: self.len }),
        }
        match &self.view {
            Some(v) => v.read_at(offset, buf),
            None => Ok(()),
        }
    }

    /// Copies the whole payload into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.read_at(0, &mut out).expect("the whole payload is in range");
        out
    }

    /// Calls `f` with consecutive private copies of the payload, `chunk`
    /// bytes at a time (the last may be shorter), for example to checksum
    /// it.
    ///
    /// A chunk of 4 KiB (one page) is a good default: the copy stays in the
    /// L1 cache until `f` has read it, so the whole pass costs about what
    /// reading the payload in place would. Larger chunks spill out of L1
    /// and make the copy and `f` each pay for memory: on a 2-vCPU AMD EPYC
    /// machine, summing 64 MiB took 2.7 ms through 4 KiB chunks and
    /// 4.5-6.6 ms through 64 KiB ones, against 2.45 ms in place.
    ///
    /// ```no_run
    /// # fn f(msg: &copydata::Message) {
    /// if let Some(loan) = msg.loan() {
    ///     let mut sum = 0u64;
    ///     loan.for_each_chunk(4096, |c| sum += c.iter().map(|&b| u64::from(b)).sum::<u64>());
    /// }
    /// # }
    /// ```
    pub fn for_each_chunk(&self, chunk: usize, mut f: impl FnMut(&[u8])) {
        let chunk = chunk.clamp(1, self.len.max(1));
        let mut buf = vec![0u8; chunk];
        let mut at = 0;
        while at < self.len {
            let n = chunk.min(self.len - at);
            self.read_at(at, &mut buf[..n]).expect("in range");
            f(&buf[..n]);
            at += n;
        }
    }

    /// A pointer to the first byte, valid while the view lives. Another
    /// process may write there (see the [module docs](self)).
    pub fn as_ptr(&self) -> *const u8 {
        self.view.as_ref().map_or(std::ptr::null(), |v| v.as_ptr())
    }
}

impl fmt::Debug for LoanView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoanView({} bytes)", self.len)
    }
}

/// A buffer of the receiver's pool lent for one loaned reply; from
/// [`Message::loan_reply`](crate::Message::loan_reply). Fill it in place and
/// answer with [`Reply::loaned`](crate::Reply::loaned): the sender reads it
/// in place through [`Reply::loan`](crate::Reply::loan), no copy on either
/// side. Dropping it unsent gives the buffer back.
pub struct ReplyLoan {
    conn: Arc<ServerConn>,
    buf: LentBuf,
    len: usize,
    sent: AtomicBool,
    made: Made,
}

impl ReplyLoan {
    pub(crate) fn new(conn: Arc<ServerConn>, buf: LentBuf, len: usize) -> ReplyLoan {
        ReplyLoan { conn, buf, len, sent: AtomicBool::new(false), made: Made::here() }
    }

    pub(crate) fn buf(&self) -> &LentBuf {
        &self.buf
    }

    pub(crate) fn is_of(&self, conn: &Arc<ServerConn>) -> bool {
        Arc::ptr_eq(&self.conn, conn)
    }

    pub(crate) fn mark_sent(&self) {
        self.sent.store(true, Ordering::Relaxed);
    }

    /// The loan's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the loan has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer to the first byte, valid for [`len`](Self::len) bytes while
    /// the loan lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.buf.ptr
    }

    /// Copies `data` into the loan at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        // SAFETY: the buffer holds the loan's `len` bytes, which the
        // connection's pool keeps mapped while the loan lives; `&mut self`
        // means no reference to them exists (`bytes` borrows `&self`).
        unsafe { write_into(self.buf.ptr, self.len, offset, data) }
    }

    /// Sets every byte of the loan to `byte`.
    pub fn fill(&mut self, byte: u8) {
        // SAFETY: as in `write_at`.
        unsafe { fill_with(self.buf.ptr, self.len, byte) }
    }

    /// The bytes written so far, for the receiver's own use.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY:
        // - the pointer is valid for `len` bytes while the loan lives;
        // - only this process writes the buffer (the sender holds a
        //   read-only handle: sealed against writes on Linux, read-only
        //   access on Windows), and it does not while `&self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.buf.ptr, self.len) }
    }
}

// SAFETY: the buffer belongs to the connection's pool (kept alive by the
// `Arc`); a `ReplyLoan` is the only writer, from whichever thread owns it.
unsafe impl Send for ReplyLoan {}
// SAFETY: `&ReplyLoan` only reads (see `bytes`).
unsafe impl Sync for ReplyLoan {}

impl Drop for ReplyLoan {
    fn drop(&mut self) {
        if !self.sent.load(Ordering::Relaxed) && !self.made.copied_by_fork() {
            self.conn.cancel_reply(&self.buf);
        }
    }
}

impl fmt::Debug for ReplyLoan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyLoan({} bytes)", self.len)
    }
}
