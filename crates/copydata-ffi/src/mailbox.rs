//! Messages: sending with a timeout, and a blocking receive/reply loop.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use crate::buffer;
use crate::error::{
    Error, Status, array_arg, bytes_arg, clear_out, give_back, guard, guard_value, handle, handle_mut, opt_str_arg,
    out_arg, str_arg,
};

/// A timeout that never expires (as `INFINITE` in Win32).
pub const COPYDATA_INFINITE: u32 = 0xFFFF_FFFF;

/// A bound mailbox, receiving messages sent to its name. Opaque; close it
/// with `copydata_mailbox_close`.
pub struct Mailbox {
    inner: copydata::Mailbox,
}

/// A received message waiting for its answer. Opaque; answer it with
/// exactly one of `copydata_request_reply`, `copydata_request_reply_loan`
/// or `copydata_request_refuse`, which also free it.
pub struct Request {
    /// The reply buffer lent by `copydata_request_loan_reply`, until the
    /// request is answered (an answer of another kind gives it back
    /// first; so does dropping, this field being first).
    reply_loan: Option<copydata::ReplyLoan>,
    inner: copydata::Request,
    /// The sections that came with the message, until taken
    /// (`copydata_request_take_section`).
    sections: Vec<Option<copydata::Section>>,
    /// A lent message's bytes, copied out once asked for.
    copy: std::sync::OnceLock<Vec<u8>>,
}

impl Request {
    /// The bytes; a lent message's are copied out of the sender's buffer on
    /// first use (and kept), so C reads them like any other. That copy's
    /// size is the sender's choice (up to the mailbox's limit), so it fails
    /// rather than abort when memory runs out.
    fn data(&self) -> Result<&[u8], Error> {
        let Some(view) = self.inner.loan() else { return Ok(self.inner.payload()) };
        if let Some(copy) = self.copy.get() {
            return Ok(copy);
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(view.len()).map_err(|_| {
            let e = std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("no memory for a copy of the lent message's {} bytes", view.len()),
            );
            Error::new(Status::Io, e)
        })?;
        copy.resize(view.len(), 0);
        view.read_at(0, &mut copy).map_err(|e| Error::new(Status::Io, e))?;
        Ok(self.copy.get_or_init(|| copy))
    }
}

pub(crate) fn timeout_arg(ms: u32) -> Option<Duration> {
    (ms != COPYDATA_INFINITE).then(|| Duration::from_millis(ms.into()))
}

/// Sends a message to the mailbox `name` and waits for its reply
/// (`SendMessageTimeoutW(WM_COPYDATA)`): `tag` is the `dwData`, `data` and
/// `len` the bytes (NULL and 0 for none).
///
/// `timeout_ms` bounds the whole exchange, connection included;
/// `COPYDATA_INFINITE` waits as long as the receiver lives (setting up the
/// connection is still bounded, by 10 seconds). On success the reply's
/// code is stored in `*reply_code` and its bytes in `*reply_data` and
/// `*reply_len`: a buffer to free with `copydata_free` (NULL when the reply
/// has no bytes). Each of the three may be NULL if not wanted.
///
/// Fails with `COPYDATA_STATUS_NOT_FOUND` (no such mailbox),
/// `COPYDATA_STATUS_TIMED_OUT` (no reply in time; the message may still be
/// handled, its reply is discarded), `COPYDATA_STATUS_REFUSED`,
/// `COPYDATA_STATUS_RECEIVER_DIED`, `COPYDATA_STATUS_TOO_LARGE`.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `data` is NULL or points to
/// `len` readable bytes; each of `reply_code`, `reply_data`, `reply_len` is
/// NULL or points to writable storage of its type.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, then outputs
pub unsafe extern "C" fn copydata_send(
    name: *const c_char,
    tag: u64,
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
    reply_code: *mut i64,
    reply_data: *mut *mut c_void,
    reply_len: *mut usize,
) -> Status {
    let send = |data: &[u8], timeout: Option<Duration>| {
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string, read only during this
        //   call (the contract).
        let name = unsafe { str_arg(name, "name") }?;
        Ok(match timeout {
            None => copydata::send(name, tag, data)?,
            Some(t) => copydata::send_timeout(name, tag, data, t)?,
        })
    };
    // SAFETY: the pointers are as `call` needs them (this function's
    // contract).
    unsafe { call(data, len, timeout_ms, reply_code, reply_data, reply_len, send) }
}

/// Sends a plain `WM_COPYDATA` to an existing window of any program, found
/// by its class and/or title (`class` or `title` may be NULL, not both;
/// `FindWindowW`, then among message-only windows), and waits at most
/// `timeout_ms` for it to be handled (`SendMessageTimeoutW`;
/// `COPYDATA_INFINITE` as long as it takes). The reply code is the window
/// procedure's `LRESULT`, the reply bytes what it sent back with
/// `WM_COPYDATA` to the window passed as `wParam` while handling the
/// message; outputs as `copydata_send`.
///
/// Windows only: elsewhere it fails with `COPYDATA_STATUS_UNSUPPORTED`.
/// Fails with `COPYDATA_STATUS_NOT_FOUND` when no window matches,
/// `COPYDATA_STATUS_TIMED_OUT` when it was not handled in time.
///
/// # Safety
///
/// `class` and `title` are NULL or NUL-terminated strings; the other
/// pointers as `copydata_send`'s.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, then outputs
pub unsafe extern "C" fn copydata_send_to_window(
    class: *const c_char,
    title: *const c_char,
    tag: u64,
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
    reply_code: *mut i64,
    reply_data: *mut *mut c_void,
    reply_len: *mut usize,
) -> Status {
    let send = |data: &[u8], timeout: Option<Duration>| {
        // SAFETY: NULL or NUL-terminated strings, read only during this
        // call (the contract).
        let (class, title) = unsafe { (opt_str_arg(class, "class")?, opt_str_arg(title, "title")?) };
        if class.is_none() && title.is_none() {
            return Err(Error::invalid("class and title are both NULL"));
        }
        send_to_window(class, title, tag, data, timeout)
    };
    // SAFETY: the pointers are as `call` needs them (this function's
    // contract).
    unsafe { call(data, len, timeout_ms, reply_code, reply_data, reply_len, send) }
}

#[cfg(windows)]
fn send_to_window(
    class: Option<&str>,
    title: Option<&str>,
    tag: u64,
    data: &[u8],
    timeout: Option<Duration>,
) -> Result<copydata::Reply, Error> {
    // (SendMessageTimeoutW's longest wait: about 49 days.)
    let timeout = timeout.unwrap_or(Duration::from_millis(u64::from(u32::MAX - 1)));
    Ok(copydata::os::windows::send_to_window(class, title, tag, data, timeout)?)
}

#[cfg(not(windows))]
fn send_to_window(
    _class: Option<&str>,
    _title: Option<&str>,
    _tag: u64,
    _data: &[u8],
    _timeout: Option<Duration>,
) -> Result<copydata::Reply, Error> {
    Err(Error::new(Status::Unsupported, "windows and WM_COPYDATA exist on Windows only"))
}

/// The common part of the C functions that send and wait for a reply:
/// clears the outputs, reads `data`, runs `send` with the bytes and the
/// timeout, and stores its reply.
///
/// # Safety
///
/// `data` is NULL or points to `len` readable bytes; each of `reply_code`,
/// `reply_data`, `reply_len` is NULL or points to writable storage of its
/// type; all only for the duration of the call.
#[allow(clippy::too_many_arguments)] // the C functions' arguments, then the call
pub(crate) unsafe fn call(
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
    reply_code: *mut i64,
    reply_data: *mut *mut c_void,
    reply_len: *mut usize,
    send: impl FnOnce(&[u8], Option<Duration>) -> Result<copydata::Reply, Error>,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `reply_code`, `reply_data`, `reply_len` are NULL or point to
        //   writable storage of their type (this function's contract).
        let out = unsafe { ReplyOut::new(reply_code, reply_data, reply_len) };
        // SAFETY:
        // - `data` is NULL or points to `len` readable bytes, read only
        //   during this call (the contract).
        let data = unsafe { bytes_arg(data, len, "data") }?;
        out.store(send(data, timeout_arg(timeout_ms))?)
    })
}

/// Where a send puts the reply: code, bytes and length, each optional.
struct ReplyOut<'a> {
    code: Option<&'a mut i64>,
    data: Option<&'a mut *mut c_void>,
    len: Option<&'a mut usize>,
}

impl<'a> ReplyOut<'a> {
    /// Clears the outputs first, so that a failed call leaves nothing to
    /// free.
    ///
    /// # Safety
    ///
    /// Each pointer is NULL or points to writable storage of its type,
    /// valid for `'a`.
    unsafe fn new(code: *mut i64, data: *mut *mut c_void, len: *mut usize) -> ReplyOut<'a> {
        // SAFETY: NULL (then `as_mut` gives `None`) or writable storage of
        // the type, valid for `'a` (this function's contract).
        let mut out = unsafe { ReplyOut { code: code.as_mut(), data: data.as_mut(), len: len.as_mut() } };
        if let Some(p) = out.data.as_deref_mut() {
            *p = std::ptr::null_mut();
        }
        if let Some(n) = out.len.as_deref_mut() {
            *n = 0;
        }
        out
    }

    /// Stores `reply` (its bytes in a buffer for `copydata_free`: a loaned
    /// reply's copied once, straight out of the receiver's buffer).
    fn store(self, reply: copydata::Reply) -> Result<(), Error> {
        let len = reply.data.len();
        if let Some(p) = self.data {
            *p = match reply.loan() {
                // SAFETY: a loan's pointer is valid for its `len()` bytes
                // while the view lives (here, through the call).
                Some(loan) => unsafe { buffer::to_c_from(loan.as_ptr(), loan.len()) }?,
                None => buffer::to_c(&reply.data)?,
            };
        }
        if let Some(n) = self.len {
            *n = len;
        }
        if let Some(c) = self.code {
            *c = reply.code;
        }
        Ok(())
    }
}

/// Binds the mailbox `name` for this user, to receive messages with
/// `copydata_mailbox_recv` (on Windows a message-only window; on Linux a
/// Unix socket in the user's runtime directory). Fails with
/// `COPYDATA_STATUS_ALREADY_EXISTS` while a live process has bound it.
/// It takes payloads of up to 4 GiB; `copydata_mailbox_bind_limit` sets
/// another limit.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mailbox_bind(name: *const c_char, out: *mut *mut Mailbox) -> Status {
    // SAFETY: this function's contract is the one below.
    unsafe { copydata_mailbox_bind_limit(name, copydata::mailbox::DEFAULT_MAX_PAYLOAD, out) }
}

/// As `copydata_mailbox_bind`, taking payloads of up to `max_payload`
/// bytes: a sender of a larger one fails with `COPYDATA_STATUS_TOO_LARGE`
/// before anything is transferred (0 takes only empty payloads; unlike
/// `copydata_mailbox_bind_with`, where 0 keeps the default). A mailbox of
/// a program that copies what it receives (`copydata_request_data` of a
/// lent message, say) bounds that way what any sender can make it
/// allocate.
///
/// # Safety
///
/// As `copydata_mailbox_bind`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mailbox_bind_limit(
    name: *const c_char,
    max_payload: u64,
    out: *mut *mut Mailbox,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string, read only during this
        //   call (the contract).
        let name = unsafe { str_arg(name, "name") }?;
        let options = copydata::MailboxOptions::new().max_payload(max_payload);
        let inner = copydata::Mailbox::bind_with(name, &options)?;
        *out = Box::into_raw(Box::new(Mailbox { inner }));
        Ok(())
    })
}

/// As `copydata_mailbox_bind`, with the mailbox's options:
///
/// - `max_payload`: the largest payload taken (as
///   `copydata_mailbox_bind_limit`); 0 for the default, 4 GiB.
/// - `max_connections`: how many senders may be connected at once; one
///   more is refused at set-up (`COPYDATA_STATUS_BUSY`, naming the
///   limit) and the connected ones are not disturbed. 0 for the default,
///   512.
/// - `allow_uids`, `allow_count`: Linux: other users whose senders the
///   mailbox also takes (by default only its own user's); they reach it
///   with `copydata_sender_connect_with` naming this user as the owner.
///   Each connection's user is checked by the kernel. NULL and 0 for
///   none; ignored on Windows, where mailboxes are per login session.
///
/// # Safety
///
/// As `copydata_mailbox_bind`; `allow_uids` is NULL or points to
/// `allow_count` readable `uint32_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mailbox_bind_with(
    name: *const c_char,
    max_payload: u64,
    max_connections: u32,
    allow_uids: *const u32,
    allow_count: usize,
    out: *mut *mut Mailbox,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string, read only during this
        //   call (the contract).
        let name = unsafe { str_arg(name, "name") }?;
        // SAFETY:
        // - `allow_uids` is NULL or points to `allow_count` readable items,
        //   read only during this call (the contract).
        let allowed = unsafe { array_arg(allow_uids, allow_count, "allow_uids") }?;
        let mut options = copydata::MailboxOptions::new();
        if max_payload != 0 {
            options = options.max_payload(max_payload);
        }
        if max_connections != 0 {
            options = options.max_connections(max_connections as usize);
        }
        for &uid in allowed {
            options = options.allow_uid(uid);
        }
        let inner = copydata::Mailbox::bind_with(name, &options)?;
        *out = Box::into_raw(Box::new(Mailbox { inner }));
        Ok(())
    })
}

/// Waits at most `timeout_ms` (or, with `COPYDATA_INFINITE`, as long as it
/// takes) for the next message, and stores it in `*out`. The sender waits
/// until it is answered with `copydata_request_reply`,
/// `copydata_request_reply_loan` or `copydata_request_refuse`; messages
/// from one sender arrive in order.
///
/// Fails with `COPYDATA_STATUS_TIMED_OUT` when no message came in time.
/// Several threads may receive from one mailbox at once.
///
/// # Safety
///
/// `mailbox` is NULL or a live mailbox, not closed during the call; `out`
/// is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mailbox_recv(
    mailbox: *const Mailbox,
    timeout_ms: u32,
    out: *mut *mut Request,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `mailbox` is NULL or a live mailbox that stays open during the
        //   call (the contract); receiving takes it shared.
        let mailbox = unsafe { handle(mailbox, "mailbox") }?;
        let mut inner = match timeout_arg(timeout_ms) {
            None => mailbox.inner.recv()?,
            Some(t) => mailbox.inner.recv_timeout(t)?,
        };
        let sections = inner.message_mut().take_sections().into_iter().map(Some).collect();
        *out = Box::into_raw(Box::new(Request { reply_loan: None, inner, sections, copy: std::sync::OnceLock::new() }));
        Ok(())
    })
}

/// Unbinds the mailbox: the name is free again, and senders waiting for a
/// reply get `COPYDATA_STATUS_RECEIVER_DIED`. Requests still held remain
/// valid to answer or refuse. NULL does nothing.
///
/// # Safety
///
/// `mailbox` is NULL or a live mailbox that no other thread is using; it
/// must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_mailbox_close(mailbox: *mut Mailbox) {
    // SAFETY: `mailbox` is NULL or came from `Box::into_raw` in
    // `copydata_mailbox_bind`, and is given back once, with no other thread
    // using it (this function's contract).
    unsafe { give_back(mailbox) }
}

/// The message's tag (`dwData`); 0 for NULL.
///
/// # Safety
///
/// `request` is NULL or a live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_tag(request: *const Request) -> u64 {
    guard_value(0, || {
        // SAFETY:
        // - `request` is NULL or a live request (this function's contract).
        unsafe { handle(request, "request") }.map_or(0, |r| r.inner.tag())
    })
}

/// The message's bytes: their address, with their count stored in `*len`
/// (if `len` is not NULL). The bytes belong to the request and are valid
/// until it is answered; the address may be NULL when there are none.
/// A lent message's bytes (see `copydata_request_loan`) are copied out of
/// the sender's buffer the first time they are asked for here: a copy
/// that no one else can change. When there is no memory for that copy,
/// this returns NULL with a count of 0 and sets the last error
/// (`copydata_last_error`, which a success does not clear: tell that from
/// an empty message by the length `copydata_request_loan` gives);
/// `copydata_request_loan` still reads the bytes in place
/// (`copydata_mailbox_bind_limit` bounds their size).
///
/// # Safety
///
/// `request` is NULL or a live request; `len` is NULL or points to
/// writable storage for a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_data(request: *const Request, len: *mut usize) -> *const c_void {
    let (mut data, mut count) = (std::ptr::null(), 0);
    // (The status is not returned; a failure leaves its message as the
    // last error.)
    let _ = guard(|| {
        // SAFETY:
        // - `request` is NULL or a live request (this function's contract).
        if let Ok(r) = unsafe { handle(request, "request") } {
            let bytes = r.data()?;
            count = bytes.len();
            if !bytes.is_empty() {
                data = bytes.as_ptr().cast();
            }
        }
        Ok(())
    });
    // SAFETY:
    // - `len` is NULL or writable storage for a `usize` (the contract).
    if let Some(n) = unsafe { len.as_mut() } {
        *n = count;
    }
    data
}

/// The bytes of a message the sender lent (`copydata_sender_loan`, or a
/// Rust `Sender::loan`), read in place without a copy: their address, with
/// their count stored in `*len` (if `len` is not NULL). NULL and 0 for a
/// message that was not lent (use `copydata_request_data`), for a lent
/// message of no bytes, and for a NULL `request`.
///
/// The address stays valid until the request is answered. The memory is
/// the sender's buffer, mapped read-only here: an honest sender no longer
/// writes it, but a hostile one still can while you read. Copy out what
/// you check before you use it (or call `copydata_request_data`, which
/// copies once for you).
///
/// # Safety
///
/// `request` is NULL or a live request; `len` is NULL or points to
/// writable storage for a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_loan(request: *const Request, len: *mut usize) -> *const c_void {
    guard_value(std::ptr::null(), || {
        // SAFETY:
        // - `request` is NULL or a live request (this function's contract).
        let loan = unsafe { handle(request, "request") }.ok().and_then(|r| r.inner.loan());
        // SAFETY:
        // - `len` is NULL or writable storage for a `usize` (the contract).
        if let Some(n) = unsafe { len.as_mut() } {
            *n = loan.map_or(0, |l| l.len());
        }
        loan.filter(|l| !l.is_empty()).map_or(std::ptr::null(), |l| l.as_ptr().cast())
    })
}

/// How many sections came with the message
/// (`copydata_sender_send_sections`); 0 for NULL.
///
/// # Safety
///
/// `request` is NULL or a live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_section_count(request: *const Request) -> usize {
    guard_value(0, || {
        // SAFETY:
        // - `request` is NULL or a live request (this function's contract).
        unsafe { handle(request, "request") }.map_or(0, |r| r.sections.len())
    })
}

/// Takes the section at `index` (from 0) out of the message: a section of
/// this process's own, to map and to close with `copydata_section_close`,
/// valid after the request is answered. Sections not taken are closed
/// with the request. The access is the one the sender handed over
/// (`copydata_section_access`).
///
/// A sender you do not trust could truncate a named or file-backed
/// section under your views, and touching the cut-off part then crashes
/// this process (SIGBUS on Linux): check `copydata_section_is_size_sealed`
/// before mapping such a section. A file-backed section whose file cannot
/// be read (on a network share or a drive that has gone) crashes the
/// process that touches its views too (`EXCEPTION_IN_PAGE_ERROR` on
/// Windows): `copydata_section_is_memory_backed` tells them apart.
///
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` for an index out of
/// range or a section already taken.
///
/// # Safety
///
/// `request` is NULL or a live request that no other thread is using;
/// `out` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_take_section(
    request: *mut Request,
    index: usize,
    out: *mut *mut crate::section::Section,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `request` is NULL or a live request used by this thread alone
        //   during the call (the contract).
        let request = unsafe { handle_mut(request, "request") }?;
        let count = request.sections.len();
        let slot = request
            .sections
            .get_mut(index)
            .ok_or_else(|| Error::invalid(format!("section {index} of a message that came with {count}")))?;
        let section = slot.take().ok_or_else(|| Error::invalid(format!("section {index} was taken already")))?;
        crate::section::give(out, section)
    })
}

/// The process id of the message's sender; 0 for NULL. (For a plain Win32
/// program's `WM_COPYDATA` it is only the process the message claims.)
///
/// # Safety
///
/// `request` is NULL or a live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_sender_pid(request: *const Request) -> u32 {
    guard_value(0, || {
        // SAFETY:
        // - `request` is NULL or a live request (this function's contract).
        unsafe { handle(request, "request") }.map_or(0, |r| r.inner.sender().pid)
    })
}

/// Whether the sender waits for a reply (false for a posted message, whose
/// reply is discarded); false for NULL.
///
/// # Safety
///
/// `request` is NULL or a live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_expects_reply(request: *const Request) -> bool {
    guard_value(false, || {
        // SAFETY:
        // - `request` is NULL or a live request (this function's contract).
        unsafe { handle(request, "request") }.is_ok_and(|r| r.inner.expects_reply())
    })
}

/// Answers the request with `code` (the sender's reply code, the
/// `LRESULT`) and `len` bytes at `data` (NULL and 0 for none), and frees
/// it: `request` must not be used afterwards, whatever the result. A reply
/// loan still out (`copydata_request_loan_reply`) is given back unsent.
///
/// Fails with `COPYDATA_STATUS_SENDER_GONE` when the sender stopped
/// waiting (it timed out, exited or crashed). NULL `data` with a non-zero
/// `len` fails with `COPYDATA_STATUS_INVALID_ARGUMENT`; the request is
/// freed all the same, and its sender refused.
///
/// # Safety
///
/// `request` is NULL or a live request, not used afterwards; `data` is NULL
/// or points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_reply(
    request: *mut Request,
    code: i64,
    data: *const c_void,
    len: usize,
) -> Status {
    guard(|| {
        if request.is_null() {
            return Err(Error::invalid("request is NULL"));
        }
        // SAFETY:
        // - `request` came from `Box::into_raw` in `copydata_mailbox_recv`
        //   and is given back once (this function's contract). Taken before
        //   anything can fail, so it is freed (refused) on every path.
        let request = unsafe { Box::from_raw(request) };
        // SAFETY:
        // - `data` is NULL or points to `len` readable bytes, read only
        //   during this call (the contract).
        let data = unsafe { bytes_arg(data, len, "data") }?;
        // The bytes are copied first: they may be those of the reply loan
        // itself, or of a lent message, which go back below.
        let reply = copydata::Reply::new(code, data);
        // A reply loan still out goes back to the pool unsent.
        drop(request.reply_loan);
        request.inner.reply(reply)?;
        Ok(())
    })
}

/// Lends a buffer of `len` bytes in shared memory for the request's reply,
/// to fill in place and answer with `copydata_request_reply_loan`: the
/// sender reads it where it is (a Rust sender without a copy; a C sender
/// gets it copied once into its reply buffer). Its address goes to
/// `*data` (NULL when `len` is 0); it stays writable until the request is
/// answered. Never waits: when every buffer of the connection's pool is
/// out, the reply gets a buffer of its own.
///
/// The buffer is not cleared: bytes left unwritten go to the sender as
/// they are (an earlier reply's, for example).
///
/// A request has at most one reply loan: a second call fails with
/// `COPYDATA_STATUS_INVALID_ARGUMENT` and leaves `*data` as it is. So does
/// a posted message, whose reply no one reads. A plain Win32 program's
/// `WM_COPYDATA`, which has no shared memory to read a loan from, fails
/// with `COPYDATA_STATUS_UNSUPPORTED`; a `len` above `PTRDIFF_MAX` with
/// `COPYDATA_STATUS_TOO_LARGE`. On any other failure (those included)
/// `*data` is NULL. Answering the request another way
/// (`copydata_request_reply`, `copydata_request_refuse`) gives the loan
/// back unsent.
///
/// # Safety
///
/// `request` is NULL or a live request that no other thread is using;
/// `data` is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_loan_reply(
    request: *mut Request,
    len: usize,
    data: *mut *mut c_void,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `request` is NULL or a live request used by this thread alone
        //   during the call (the contract).
        let request = unsafe { handle_mut(request, "request") }.inspect_err(|_| {
            // SAFETY: `data` is NULL or valid storage (the contract).
            unsafe { clear_out(data) }
        })?;
        // (Both checked before `data` is cleared, which they leave as it is:
        // it may hold the address of the loan already out.)
        if request.reply_loan.is_some() {
            return Err(Error::invalid(
                "this request has a reply loan out already: answer it with copydata_request_reply_loan",
            ));
        }
        if !request.inner.expects_reply() {
            return Err(Error::invalid("a posted message gets no reply, so it cannot lend one"));
        }
        // SAFETY:
        // - `data` is NULL or valid storage (this function's contract).
        let data = unsafe { out_arg(data) }?;
        // No buffer that large can exist, let alone reach the sender.
        if isize::try_from(len).is_err() {
            return Err(Error::new(Status::TooLarge, format!("a reply loan of {len} bytes: larger than memory")));
        }
        let mut loan = request.inner.loan_reply(len).map_err(|e| match e {
            copydata::ReplyError::Io(io) if io.kind() == std::io::ErrorKind::Unsupported => {
                Error::new(Status::Unsupported, io)
            }
            other => Error::from(other),
        })?;
        *data = if len == 0 { std::ptr::null_mut() } else { loan.as_mut_ptr().cast() };
        request.reply_loan = Some(loan);
        Ok(())
    })
}

/// Answers the request with `code` and the reply buffer lent by
/// `copydata_request_loan_reply`, as filled so far, and frees the request:
/// `request` must not be used afterwards, whatever the result (nor the
/// buffer).
///
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` when the request has no
/// reply loan out (it is then refused), and with
/// `COPYDATA_STATUS_SENDER_GONE` when the sender stopped waiting.
///
/// # Safety
///
/// `request` is NULL or a live request, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_reply_loan(request: *mut Request, code: i64) -> Status {
    guard(|| {
        if request.is_null() {
            return Err(Error::invalid("request is NULL"));
        }
        // SAFETY:
        // - `request` came from `Box::into_raw` in `copydata_mailbox_recv`
        //   and is given back once (this function's contract). Taken before
        //   anything can fail, so it is freed (refused) on every path.
        let mut request = unsafe { Box::from_raw(request) };
        let loan = request.reply_loan.take().ok_or_else(|| {
            Error::invalid("this request has no reply loan out (see copydata_request_loan_reply); it was refused")
        })?;
        request.inner.reply(copydata::Reply::loaned(code, loan))?;
        Ok(())
    })
}

/// Refuses the request: the sender's `copydata_send` fails with
/// `COPYDATA_STATUS_REFUSED`, and `reason` (NULL for a default) becomes its
/// error message. Frees the request (and gives back a reply loan still
/// out); NULL does nothing.
///
/// # Safety
///
/// `request` is NULL or a live request, not used afterwards; `reason` is
/// NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_request_refuse(request: *mut Request, reason: *const c_char) {
    guard_value((), || {
        if request.is_null() {
            return;
        }
        // SAFETY:
        // - `request` came from `Box::into_raw` in `copydata_mailbox_recv`
        //   and is given back once (this function's contract).
        let request = unsafe { Box::from_raw(request) };
        // Copied first: the reason may lie in the reply loan or in a lent
        // message, both given back before it is read otherwise.
        let reason = if reason.is_null() {
            "refused by the receiver".to_owned()
        } else {
            // SAFETY:
            // - `reason` is not NULL and is a NUL-terminated string (the
            //   contract), read only during this call.
            unsafe { std::ffi::CStr::from_ptr(reason) }.to_string_lossy().into_owned()
        };
        drop(request.reply_loan);
        request.inner.refuse(&reason);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copydata_free;
    use crate::test_util::{last, unique};
    use std::ptr::{null, null_mut};

    /// A plain window of a C program (the Windows tests' C peer, named in
    /// `COPYDATA_C_PEER`), found by its class: the reply code is its
    /// `LRESULT`, the bytes what it sent back. Elsewhere: unsupported.
    #[test]
    fn a_plain_window_is_sent_to_by_its_class() {
        let (mut code, mut data, mut len) = (0i64, null_mut(), 0usize);
        // SAFETY: NULL strings and valid outputs.
        let st = unsafe { copydata_send_to_window(null(), null(), 0, null(), 0, 100, &mut code, &mut data, &mut len) };
        assert_eq!(st, Status::InvalidArgument);
        let class = unique("CopydataFfiPeer");
        if cfg!(not(windows)) {
            // SAFETY: a valid string and outputs.
            let st = unsafe {
                copydata_send_to_window(class.as_ptr(), null(), 0, null(), 0, 100, &mut code, &mut data, &mut len)
            };
            assert_eq!(st, Status::Unsupported);
            return;
        }
        let Ok(peer) = std::env::var("COPYDATA_C_PEER") else {
            assert!(std::env::var_os("COPYDATA_REQUIRE_EXAMPLES").is_none(), "COPYDATA_C_PEER is not set");
            eprintln!("skipped: COPYDATA_C_PEER is not set (scripts/test.sh builds the C peer)");
            return;
        };
        /// Ends the peer even if the test fails half-way.
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = KillOnDrop(
            std::process::Command::new(peer)
                .args(["serve", class.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("starting the C peer"),
        );
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.0.stdout.take().unwrap()), &mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        // SAFETY: a valid class, bytes and outputs; the reply is freed once.
        unsafe {
            let st = copydata_send_to_window(
                class.as_ptr(),
                null(),
                5,
                c"abc".as_ptr().cast(),
                3,
                30_000,
                &mut code,
                &mut data,
                &mut len,
            );
            assert_eq!(st, Status::Ok, "{}", last());
            assert_eq!((code, std::slice::from_raw_parts(data.cast::<u8>(), len)), (1005, &b"C got 3 bytes"[..]));
            copydata_free(data);
            let st = copydata_send_to_window(
                c"NoSuchClassAnywhere".as_ptr(),
                null(),
                0,
                null(),
                0,
                1000,
                &mut code,
                null_mut(),
                null_mut(),
            );
            assert_eq!(st, Status::NotFound);
            // Tag 999 ends the peer.
            copydata_send_to_window(class.as_ptr(), null(), 999, null(), 0, 30_000, null_mut(), null_mut(), null_mut());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.0.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the C peer did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A mailbox bound with a limit refuses a larger payload at the sender,
    /// and takes one at the limit.
    #[test]
    fn a_bound_limit_refuses_larger_payloads() {
        let name = unique("limit");
        let mut mailbox = null_mut();
        // SAFETY: a valid name and out storage.
        assert_eq!(unsafe { copydata_mailbox_bind_limit(name.as_ptr(), 4, &mut mailbox) }, Status::Ok, "{}", last());
        let shared = mailbox as usize;
        let server = std::thread::spawn(move || {
            let mut req = null_mut();
            // SAFETY: the mailbox stays open until this thread is joined;
            // the request is answered once.
            unsafe {
                assert_eq!(copydata_mailbox_recv(shared as *const Mailbox, 10_000, &mut req), Status::Ok);
                let mut len = 0;
                copydata_request_data(req, &mut len);
                assert_eq!(copydata_request_reply(req, len as i64, null(), 0), Status::Ok);
            }
        });
        let mut code = 0i64;
        // SAFETY: valid names, byte ranges and out storage.
        unsafe {
            let st =
                copydata_send(name.as_ptr(), 1, c"12345".as_ptr().cast(), 5, 10_000, &mut code, null_mut(), null_mut());
            assert_eq!(st, Status::TooLarge, "{}", last());
            let st =
                copydata_send(name.as_ptr(), 1, c"1234".as_ptr().cast(), 4, 10_000, &mut code, null_mut(), null_mut());
            assert_eq!((st, code), (Status::Ok, 4), "{}", last());
        }
        server.join().unwrap();
        // SAFETY: closed once, no other user.
        unsafe { copydata_mailbox_close(mailbox) };
    }

    /// One thread serves the mailbox through the C functions (reversing
    /// the bytes, refusing tag 13) while this one sends through them.
    #[test]
    fn send_and_the_receive_loop_talk_to_each_other() {
        let name = unique("mb");
        let mut mailbox = null_mut();
        // SAFETY:
        // - valid name and out storage.
        assert_eq!(unsafe { copydata_mailbox_bind(name.as_ptr(), &mut mailbox) }, Status::Ok);
        let mut again = null_mut();
        // SAFETY:
        // - as above.
        assert_eq!(unsafe { copydata_mailbox_bind(name.as_ptr(), &mut again) }, Status::AlreadyExists);
        let shared = mailbox as usize;
        let server = std::thread::spawn(move || {
            let mailbox = shared as *const Mailbox;
            let mut served = 0;
            loop {
                let mut req = null_mut();
                // SAFETY:
                // - `mailbox` stays open until this thread is joined; each
                //   request is answered once and not used afterwards.
                let tag = unsafe {
                    match copydata_mailbox_recv(mailbox, 10_000, &mut req) {
                        Status::Ok => {}
                        other => panic!("recv: {other:?} {}", last()),
                    }
                    let tag = copydata_request_tag(req);
                    assert!(copydata_request_expects_reply(req));
                    assert_eq!(copydata_request_sender_pid(req), std::process::id());
                    if tag == 13 {
                        copydata_request_refuse(req, c"unlucky".as_ptr());
                        continue;
                    }
                    let mut len = 99;
                    let p = copydata_request_data(req, &mut len);
                    let mut bytes =
                        if len == 0 { Vec::new() } else { std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec() };
                    bytes.reverse();
                    assert_eq!(
                        copydata_request_reply(req, tag as i64 * 10, bytes.as_ptr().cast(), bytes.len()),
                        Status::Ok
                    );
                    tag
                };
                served += 1;
                if tag == 0 {
                    return served;
                }
            }
        });
        let (mut code, mut data, mut len) = (0i64, null_mut(), 0usize);
        // SAFETY:
        // - valid names, byte ranges and out storage; each reply buffer is
        //   freed once.
        unsafe {
            assert_eq!(
                copydata_send(name.as_ptr(), 4, c"abc".as_ptr().cast(), 3, 5000, &mut code, &mut data, &mut len),
                Status::Ok
            );
            assert_eq!((code, len), (40, 3));
            assert_eq!(std::slice::from_raw_parts(data.cast::<u8>(), len), b"cba");
            copydata_free(data);
            assert_eq!(
                copydata_send(name.as_ptr(), 13, null(), 0, COPYDATA_INFINITE, &mut code, &mut data, &mut len),
                Status::Refused
            );
            assert!(last().contains("unlucky"), "{}", last());
            assert!(data.is_null());
            // Only the code wanted; the empty reply gives no buffer.
            assert_eq!(copydata_send(name.as_ptr(), 5, null(), 0, 5000, &mut code, null_mut(), null_mut()), Status::Ok);
            assert_eq!(code, 50);
            assert_eq!(
                copydata_send(name.as_ptr(), 5, null(), 3, 5000, &mut code, null_mut(), null_mut()),
                Status::InvalidArgument
            );
            assert_eq!(
                copydata_send(name.as_ptr(), 0, c"x".as_ptr().cast(), 1, 5000, null_mut(), &mut data, &mut len),
                Status::Ok
            );
            assert_eq!(len, 1);
            copydata_free(data);
        }
        assert_eq!(server.join().unwrap(), 3);
        let mut req = null_mut();
        // SAFETY:
        // - the mailbox is live and used by this thread only; closed once.
        unsafe {
            assert_eq!(copydata_mailbox_recv(mailbox, 50, &mut req), Status::TimedOut);
            assert!(req.is_null());
            copydata_mailbox_close(mailbox);
        }
        let missing = unique("missing");
        // SAFETY:
        // - valid name, no outputs.
        let status = unsafe { copydata_send(missing.as_ptr(), 1, null(), 0, 1000, null_mut(), null_mut(), null_mut()) };
        assert_eq!(status, Status::NotFound, "{}", last());
        assert!(last().contains(missing.to_str().unwrap()), "{}", last());
    }

    #[test]
    fn null_handles_are_refused() {
        let (mut mailbox, mut req) = (null_mut(), null_mut());
        // SAFETY:
        // - NULL handles and valid out storage only.
        unsafe {
            assert_eq!(copydata_mailbox_bind(null(), &mut mailbox), Status::InvalidArgument);
            assert_eq!(copydata_mailbox_recv(null(), 0, &mut req), Status::InvalidArgument);
            assert_eq!(copydata_request_reply(null_mut(), 0, null(), 0), Status::InvalidArgument);
            assert_eq!(
                copydata_send(null(), 0, null(), 0, 0, null_mut(), null_mut(), null_mut()),
                Status::InvalidArgument
            );
            copydata_request_refuse(null_mut(), null());
            copydata_mailbox_close(null_mut());
            assert_eq!(copydata_request_tag(null()), 0);
            let mut len = 5;
            assert!(copydata_request_data(null(), &mut len).is_null());
            assert_eq!(len, 0);
            assert_eq!(copydata_request_sender_pid(null()), 0);
            assert!(!copydata_request_expects_reply(null()));
            let mut data = std::ptr::dangling_mut();
            assert_eq!(copydata_request_loan_reply(null_mut(), 8, &mut data), Status::InvalidArgument);
            assert!(data.is_null(), "a failure leaves *data NULL");
            assert_eq!(copydata_request_reply_loan(null_mut(), 0), Status::InvalidArgument);
            assert_eq!(copydata_request_section_count(null()), 0);
            let mut section = null_mut();
            assert_eq!(copydata_request_take_section(null_mut(), 0, &mut section), Status::InvalidArgument);
            assert!(section.is_null());
        }
    }

    /// The byte at `i` of the loaned replies.
    fn pattern(i: usize) -> u8 {
        (i % 251) as u8
    }

    const LENT: usize = 100_000;

    /// Serves `mailbox` through the C functions until tag 0, answering
    /// each tag with a reply loan used one way or another; returns how many
    /// messages it answered.
    ///
    /// # Safety
    ///
    /// `mailbox` stays open until the function returns.
    unsafe fn serve_with_reply_loans(mailbox: *const Mailbox) -> usize {
        let mut served = 0;
        loop {
            let mut req = null_mut();
            // SAFETY:
            // - `mailbox` is open (this function's contract); each request is
            //   answered once and not used afterwards, and each lent address
            //   is written only within the loan's length before the answer.
            unsafe {
                assert_eq!(copydata_mailbox_recv(mailbox, 10_000, &mut req), Status::Ok, "{}", last());
                let tag = copydata_request_tag(req);
                served += 1;
                let mut data: *mut c_void = null_mut();
                match tag {
                    0 => {
                        assert_eq!(copydata_request_reply(req, 0, null(), 0), Status::Ok);
                        return served;
                    }
                    // A loan filled in place, and a second one refused.
                    1 => {
                        assert_eq!(copydata_request_loan_reply(req, LENT, &mut data), Status::Ok, "{}", last());
                        assert!(!data.is_null());
                        let bytes = std::slice::from_raw_parts_mut(data.cast::<u8>(), LENT);
                        for (i, b) in bytes.iter_mut().enumerate() {
                            *b = pattern(i);
                        }
                        let mut again = data;
                        assert_eq!(copydata_request_loan_reply(req, 10, &mut again), Status::InvalidArgument);
                        assert_eq!(again, data, "a refused second loan leaves *data as it was");
                        assert!(last().contains("already"), "{}", last());
                        assert_eq!(copydata_request_reply_loan(req, 7), Status::Ok, "{}", last());
                    }
                    // An empty loan.
                    2 => {
                        data = std::ptr::dangling_mut();
                        assert_eq!(copydata_request_loan_reply(req, 0, &mut data), Status::Ok, "{}", last());
                        assert!(data.is_null());
                        assert_eq!(copydata_request_reply_loan(req, 8), Status::Ok, "{}", last());
                    }
                    // A loan given back by a plain reply (after one too
                    // large to exist).
                    3 => {
                        data = std::ptr::dangling_mut();
                        assert_eq!(copydata_request_loan_reply(req, usize::MAX, &mut data), Status::TooLarge);
                        assert!(data.is_null());
                        assert_eq!(copydata_request_loan_reply(req, 10, &mut data), Status::Ok, "{}", last());
                        assert_eq!(copydata_request_reply(req, 9, c"plain".as_ptr().cast(), 5), Status::Ok);
                    }
                    // No loan out: refused.
                    4 => {
                        assert_eq!(copydata_request_reply_loan(req, 10), Status::InvalidArgument);
                        assert!(last().contains("no reply loan"), "{}", last());
                    }
                    // A loan given back by a refusal.
                    5 => {
                        assert_eq!(copydata_request_loan_reply(req, 10, &mut data), Status::Ok, "{}", last());
                        copydata_request_refuse(req, c"lent, then refused".as_ptr());
                    }
                    // A posted message lends no reply.
                    6 => {
                        assert!(!copydata_request_expects_reply(req));
                        let mut kept = std::ptr::dangling_mut::<c_void>();
                        assert_eq!(copydata_request_loan_reply(req, 10, &mut kept), Status::InvalidArgument);
                        assert!(last().contains("posted"), "{}", last());
                        assert_eq!(kept, std::ptr::dangling_mut(), "a posted message leaves *data as it was");
                        assert_eq!(copydata_request_reply(req, 0, null(), 0), Status::Ok);
                    }
                    other => panic!("unexpected tag {other}"),
                }
            }
        }
    }

    #[test]
    fn a_reply_is_lent_filled_in_place_and_read_by_the_sender() {
        use crate::sender::{
            copydata_sender_close, copydata_sender_connect, copydata_sender_post, copydata_sender_send,
        };
        let name = unique("replyloan");
        let mut mailbox = null_mut();
        // SAFETY:
        // - valid name and out storage.
        assert_eq!(unsafe { copydata_mailbox_bind(name.as_ptr(), &mut mailbox) }, Status::Ok);
        let shared = mailbox as usize;
        // SAFETY: the mailbox is closed only after this thread is joined.
        let server = std::thread::spawn(move || unsafe { serve_with_reply_loans(shared as *const Mailbox) });
        let want: Vec<u8> = (0..LENT).map(pattern).collect();

        // A Rust sender reads the loaned reply in place.
        let mut rust = copydata::Sender::connect(name.to_str().unwrap()).unwrap();
        for _ in 0..3 {
            let reply = rust.send(1, b"").unwrap();
            assert_eq!(reply.code, 7);
            let loan = reply.loan().expect("a loaned reply");
            assert_eq!(loan.to_vec(), want);
        }
        drop(rust);

        let mut sender = null_mut();
        // SAFETY:
        // - valid name and out storage; `sender` is used by this thread
        //   alone, closed once; each reply buffer is freed once.
        unsafe {
            assert_eq!(copydata_sender_connect(name.as_ptr(), 5000, &mut sender), Status::Ok, "{}", last());
            let send = |tag: u64| {
                let (mut code, mut data, mut len) = (0i64, null_mut(), 0usize);
                let status = copydata_sender_send(sender, tag, null(), 0, 5000, &mut code, &mut data, &mut len);
                let bytes = if data.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(data.cast::<u8>(), len).to_vec()
                };
                copydata_free(data);
                (status, code, bytes)
            };
            // Over and over, so pooled buffers come back and are lent again.
            for _ in 0..20 {
                let (status, code, bytes) = send(1);
                assert_eq!((status, code), (Status::Ok, 7), "{}", last());
                assert!(bytes == want, "a loaned reply of {} bytes came back wrong", bytes.len());
            }
            assert_eq!(send(2), (Status::Ok, 8, Vec::new()));
            assert_eq!(send(3), (Status::Ok, 9, b"plain".to_vec()));
            let (status, _, _) = send(4);
            assert_eq!(status, Status::Refused, "{}", last());
            let (status, _, _) = send(5);
            assert_eq!(status, Status::Refused);
            assert!(last().contains("lent, then refused"), "{}", last());
            assert_eq!(copydata_sender_post(sender, 6, null(), 0, 5000), Status::Ok, "{}", last());
            assert_eq!(send(0).0, Status::Ok);
            copydata_sender_close(sender);
        }
        assert_eq!(server.join().unwrap(), 3 + 20 + 6);
        // SAFETY:
        // - the mailbox came from `copydata_mailbox_bind`, closed once.
        unsafe { copydata_mailbox_close(mailbox) };
    }

    /// `copydata_request_reply` and `copydata_request_refuse` may be given
    /// bytes in the request's own reply loan (filled, then answered another
    /// way): they are read before the loan goes back. The sender keeps the
    /// pool's buffers (it holds its loaned replies), so these loans are
    /// one-shot sections, unmapped when given back.
    #[test]
    fn an_answer_may_quote_the_reply_loan_it_gives_back() {
        const LENT: usize = 70_000;
        const KEPT: usize = 12;
        let name = unique("quote");
        let mut mailbox = null_mut();
        // SAFETY: a valid name and out storage.
        assert_eq!(unsafe { copydata_mailbox_bind(name.as_ptr(), &mut mailbox) }, Status::Ok);
        let shared = mailbox as usize;
        let server = std::thread::spawn(move || {
            let mailbox = shared as *const Mailbox;
            for i in 0..KEPT + 2 {
                let mut req = null_mut();
                let mut data = null_mut();
                // SAFETY: the mailbox stays open until this thread is joined;
                // each request is answered once; the lent buffer is written
                // within its length while the request is unanswered.
                unsafe {
                    assert_eq!(copydata_mailbox_recv(mailbox, 10_000, &mut req), Status::Ok, "{}", last());
                    assert_eq!(copydata_request_loan_reply(req, LENT, &mut data), Status::Ok, "{}", last());
                    std::ptr::write_bytes(data.cast::<u8>(), b'q', LENT);
                    if i < KEPT {
                        assert_eq!(copydata_request_reply_loan(req, 0), Status::Ok, "{}", last());
                    } else if i == KEPT {
                        assert_eq!(copydata_request_reply(req, 1, data, LENT), Status::Ok, "{}", last());
                    } else {
                        *data.cast::<u8>().add(10) = 0;
                        copydata_request_refuse(req, data.cast());
                    }
                }
            }
        });
        let mut sender = copydata::Sender::connect(name.to_str().unwrap()).unwrap();
        // Loaned replies held here keep their buffers out of the pool.
        let kept: Vec<_> = (0..KEPT).map(|_| sender.send(0, b"").unwrap()).collect();
        let quoted = sender.send(0, b"").unwrap();
        assert_eq!(quoted.code, 1);
        assert!(quoted.data.len() == LENT && quoted.data.iter().all(|&b| b == b'q'));
        let refused = sender.send(0, b"").unwrap_err();
        assert!(refused.to_string().contains("qqqqqqqqqq"), "{refused}");
        drop(kept);
        server.join().unwrap();
        // SAFETY: closed once, its serving thread joined.
        unsafe { copydata_mailbox_close(mailbox) };
    }

    /// Maps `len` bytes of `section` at offset 0 with `access`.
    ///
    /// # Safety
    ///
    /// `section` is a live section.
    unsafe fn map(section: *const crate::Section, len: usize, access: u32) -> Result<*mut crate::View, Status> {
        let mut view = null_mut();
        // SAFETY: a live section (the contract) and valid out storage.
        match unsafe { crate::copydata_section_map(section, 0, len, access, &mut view) } {
            Status::Ok => Ok(view),
            other => Err(other),
        }
    }

    /// Sections go with a message: an anonymous one, a named one handed
    /// over read-only, and one over a file; the receiver takes each once
    /// and writes where the handle allows it, the sender sees the writes.
    #[test]
    fn sections_travel_with_a_message() {
        use crate::section::{
            COPYDATA_READ_ONLY, COPYDATA_READ_WRITE, copydata_section_access, copydata_section_anonymous,
            copydata_section_close, copydata_section_create, copydata_section_file, copydata_section_is_size_sealed,
            copydata_section_open, copydata_view_data, copydata_view_unmap,
        };
        use crate::sender::{
            COPYDATA_MAX_SECTIONS, copydata_sender_close, copydata_sender_connect, copydata_sender_send_sections,
        };
        let name = unique("sections");
        let named = unique("named");
        let path = std::env::temp_dir().join(format!("{}.file", name.to_str().unwrap()));
        std::fs::write(&path, vec![b'.'; 10_000]).unwrap();
        let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let mut mailbox = null_mut();
        // SAFETY:
        // - valid names, paths and out storage; every handle is used by one
        //   thread at a time and closed once; views are written within
        //   their length while mapped.
        unsafe {
            assert_eq!(copydata_mailbox_bind(name.as_ptr(), &mut mailbox), Status::Ok);
            let (mut anon, mut created, mut read_only, mut file) = (null_mut(), null_mut(), null_mut(), null_mut());
            assert_eq!(copydata_section_anonymous(4096, &mut anon), Status::Ok);
            assert_eq!(copydata_section_create(named.as_ptr(), 8192, &mut created), Status::Ok);
            assert_eq!(copydata_section_open(named.as_ptr(), COPYDATA_READ_ONLY, &mut read_only), Status::Ok);
            assert_eq!(copydata_section_file(cpath.as_ptr(), COPYDATA_READ_WRITE, &mut file), Status::Ok, "{}", last());
            let anon_view = map(anon, 4096, COPYDATA_READ_WRITE).unwrap();
            let created_view = map(created, 8192, COPYDATA_READ_WRITE).unwrap();
            copydata_view_data(anon_view).cast::<u8>().copy_from(b"anon".as_ptr(), 4);
            copydata_view_data(created_view).cast::<u8>().copy_from(b"named".as_ptr(), 5);

            let shared = mailbox as usize;
            let server = std::thread::spawn(move || {
                let mailbox = shared as *const Mailbox;
                let mut req = null_mut();
                // First a message with none.
                assert_eq!(copydata_mailbox_recv(mailbox, 10_000, &mut req), Status::Ok, "{}", last());
                assert_eq!(copydata_request_section_count(req), 0);
                let mut none = null_mut();
                assert_eq!(copydata_request_take_section(req, 0, &mut none), Status::InvalidArgument);
                assert_eq!(copydata_request_reply(req, 0, null(), 0), Status::Ok);
                assert_eq!(copydata_mailbox_recv(mailbox, 10_000, &mut req), Status::Ok, "{}", last());
                assert_eq!(copydata_request_section_count(req), 3);
                let mut got = [null_mut(); 3];
                for (i, out) in got.iter_mut().enumerate() {
                    assert_eq!(copydata_request_take_section(req, i, out), Status::Ok, "{}", last());
                }
                let mut again = null_mut();
                assert_eq!(copydata_request_take_section(req, 0, &mut again), Status::InvalidArgument);
                assert!(last().contains("taken already"), "{}", last());
                assert_eq!(copydata_request_take_section(req, 3, &mut again), Status::InvalidArgument);
                assert!(again.is_null());
                // Answered first: taken sections stay the receiver's.
                assert_eq!(copydata_request_reply(req, 0, null(), 0), Status::Ok);
                // What each handle may do: anonymous sections cannot shrink,
                // on Windows none can.
                assert_eq!(
                    got.map(|s| (copydata_section_access(s), copydata_section_is_size_sealed(s))),
                    [
                        (COPYDATA_READ_WRITE, true),
                        (COPYDATA_READ_ONLY, cfg!(windows)),
                        (COPYDATA_READ_WRITE, cfg!(windows))
                    ]
                );
                let read = |view: *mut crate::View, n: usize| {
                    std::slice::from_raw_parts(copydata_view_data(view).cast::<u8>(), n).to_vec()
                };
                // The anonymous section: read and written.
                let v = map(got[0], 4096, COPYDATA_READ_WRITE).unwrap();
                assert_eq!(read(v, 4), b"anon");
                copydata_view_data(v).cast::<u8>().copy_from(b"ANON".as_ptr(), 4);
                copydata_view_unmap(v);
                // The named one came read-only: no writable view of it.
                assert_eq!(map(got[1], 8192, COPYDATA_READ_WRITE).unwrap_err(), Status::PermissionDenied);
                let v = map(got[1], 8192, COPYDATA_READ_ONLY).unwrap();
                assert_eq!(read(v, 5), b"named");
                copydata_view_unmap(v);
                // The file: written through.
                let v = map(got[2], 10_000, COPYDATA_READ_WRITE).unwrap();
                assert_eq!(read(v, 10_000), vec![b'.'; 10_000]);
                copydata_view_data(v).cast::<u8>().copy_from(b"FILE".as_ptr(), 4);
                copydata_view_unmap(v);
                for s in got {
                    copydata_section_close(s);
                }
            });

            let mut sender = null_mut();
            assert_eq!(copydata_sender_connect(name.as_ptr(), 5000, &mut sender), Status::Ok, "{}", last());
            // Refused before anything is sent.
            let too_many = [anon.cast_const(); COPYDATA_MAX_SECTIONS + 1];
            let send = |sections: *const *const crate::Section, count| {
                let mut code = -1;
                let status = copydata_sender_send_sections(
                    sender,
                    1,
                    c"x".as_ptr().cast(),
                    1,
                    sections,
                    count,
                    10_000,
                    &mut code,
                    null_mut(),
                    null_mut(),
                );
                (status, code)
            };
            assert_eq!(send(too_many.as_ptr(), too_many.len()).0, Status::InvalidArgument);
            assert_eq!(send(null(), 1).0, Status::InvalidArgument);
            assert_eq!(send([anon.cast_const(), null()].as_ptr(), 2).0, Status::InvalidArgument);
            assert!(last().contains("sections[1]"), "{}", last());
            assert_eq!(send(null(), 0), (Status::Ok, 0), "{}", last());
            let three = [anon.cast_const(), read_only.cast_const(), file.cast_const()];
            assert_eq!(send(three.as_ptr(), 3), (Status::Ok, 0), "{}", last());
            server.join().unwrap();
            assert_eq!(std::slice::from_raw_parts(copydata_view_data(anon_view).cast::<u8>(), 4), b"ANON");
            copydata_sender_close(sender);
            copydata_view_unmap(anon_view);
            copydata_view_unmap(created_view);
            for s in [anon, created, read_only, file] {
                copydata_section_close(s);
            }
            copydata_mailbox_close(mailbox);
        }
        assert_eq!(&std::fs::read(&path).unwrap()[..5], b"FILE.");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_section_limit_is_the_librarys() {
        assert_eq!(crate::COPYDATA_MAX_SECTIONS, copydata::MAX_SECTIONS);
    }

    #[test]
    fn a_file_section_needs_a_file_with_bytes() {
        use crate::section::{COPYDATA_READ_ONLY, copydata_section_file};
        let dir = std::env::temp_dir();
        let missing = std::ffi::CString::new(dir.join("copydata-no-such-file").to_str().unwrap()).unwrap();
        let empty_path = dir.join(format!("copydata-test-ffi-empty-{}", std::process::id()));
        std::fs::write(&empty_path, b"").unwrap();
        let empty = std::ffi::CString::new(empty_path.to_str().unwrap()).unwrap();
        let mut out = null_mut();
        // SAFETY:
        // - valid paths and out storage; nothing is made.
        unsafe {
            assert_eq!(copydata_section_file(missing.as_ptr(), COPYDATA_READ_ONLY, &mut out), Status::NotFound);
            assert_eq!(copydata_section_file(empty.as_ptr(), COPYDATA_READ_ONLY, &mut out), Status::InvalidArgument);
            assert!(last().contains("empty"), "{}", last());
            assert_eq!(copydata_section_file(empty.as_ptr(), 7, &mut out), Status::InvalidArgument);
            assert_eq!(copydata_section_file(null(), COPYDATA_READ_ONLY, &mut out), Status::InvalidArgument);
            // A directory is no file to map.
            let dir = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            assert_eq!(copydata_section_file(dir.as_ptr(), COPYDATA_READ_ONLY, &mut out), Status::InvalidArgument);
            assert!(out.is_null());
        }
        let _ = std::fs::remove_file(&empty_path);
    }

    /// A FIFO is refused at once (opening it would wait for a writer), and
    /// a path need not be UTF-8 on Linux.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_section_takes_any_path_and_no_fifo() {
        use crate::section::{COPYDATA_READ_ONLY, COPYDATA_READ_WRITE, copydata_section_close, copydata_section_file};
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir();
        let fifo = dir.join(format!("copydata-test-ffi-fifo-{}", std::process::id()));
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
        let cfifo = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = null_mut();
            // SAFETY: a valid path and out storage.
            let status = unsafe { copydata_section_file(cfifo.as_ptr(), COPYDATA_READ_ONLY, &mut out) };
            let _ = tx.send((status, out.is_null(), last()));
        });
        let (status, null, why) =
            rx.recv_timeout(std::time::Duration::from_secs(10)).expect("opening a FIFO waited for a writer");
        assert_eq!((status, null), (Status::InvalidArgument, true), "{why}");
        assert!(why.contains("not a regular file"), "{why}");
        let _ = std::fs::remove_file(&fifo);

        let mut raw = dir.as_os_str().as_bytes().to_vec();
        raw.extend_from_slice(b"/copydata-test-ffi-");
        raw.push(0xff); // not UTF-8
        raw.extend_from_slice(format!("-{}", std::process::id()).as_bytes());
        let odd = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
        std::fs::write(&odd, b"bytes").unwrap();
        let codd = std::ffi::CString::new(raw).unwrap();
        let mut out = null_mut();
        // SAFETY: a valid path and out storage; the section is closed once.
        unsafe {
            assert_eq!(copydata_section_file(codd.as_ptr(), COPYDATA_READ_WRITE, &mut out), Status::Ok, "{}", last());
            assert_eq!(crate::copydata_section_size(out), 5);
            copydata_section_close(out);
        }
        let _ = std::fs::remove_file(&odd);
    }

    /// A read-only handle to hand over: it maps no writable view.
    #[test]
    fn a_read_only_handle_maps_no_writable_view() {
        use crate::section::{
            COPYDATA_READ_ONLY, COPYDATA_READ_WRITE, copydata_section_access, copydata_section_anonymous,
            copydata_section_close, copydata_section_read_only,
        };
        let (mut rw, mut ro) = (null_mut(), null_mut());
        // SAFETY: valid out storage; each section is closed once.
        unsafe {
            assert_eq!(copydata_section_anonymous(4096, &mut rw), Status::Ok);
            assert_eq!(copydata_section_read_only(rw, &mut ro), Status::Ok, "{}", last());
            assert_eq!(
                (copydata_section_access(rw), copydata_section_access(ro)),
                (COPYDATA_READ_WRITE, COPYDATA_READ_ONLY)
            );
            assert_eq!(map(ro, 4096, COPYDATA_READ_WRITE).unwrap_err(), Status::PermissionDenied);
            crate::copydata_view_unmap(map(ro, 4096, COPYDATA_READ_ONLY).unwrap());
            // The original keeps its writable views.
            crate::copydata_view_unmap(map(rw, 4096, COPYDATA_READ_WRITE).unwrap());
            let mut none = null_mut();
            assert_eq!(copydata_section_read_only(null(), &mut none), Status::InvalidArgument);
            assert_eq!(copydata_section_access(null()), COPYDATA_READ_ONLY);
            copydata_section_close(ro);
            copydata_section_close(rw);
        }
    }
}
