//! A sender: one connection to a mailbox, kept for many messages.

use std::ffi::{c_char, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::{Error, Status, bytes_arg, clear_out, give_back, guard, guard_value, handle_mut, out_arg, str_arg};
use crate::mailbox::{call, timeout_arg};
use crate::section::{Section, sections_arg};

/// A connection to one mailbox, kept for many messages (`copydata_send`
/// connects for each). Messages of one sender arrive in order while they
/// go on one connection; after a call that timed out, the next message
/// goes on a new one, and may be handled before messages still queued on
/// the old. Opaque; close it with `copydata_sender_close`. One call at a
/// time per sender.
pub struct Sender {
    /// The buffer lent by `copydata_sender_loan`, until it is sent or
    /// cancelled. It borrows `*inner` (hence `'static`, and a field that
    /// drops first): while it is here, `inner` is used only through it.
    loan: Option<copydata::Loan<'static>>,
    /// Owned (from `Box::into_raw`), freed on drop after the loan: a raw
    /// pointer rather than a `Box`, as the loan holds the only live
    /// reference to it while one is out.
    inner: NonNull<copydata::Sender>,
}

impl Sender {
    fn new(inner: copydata::Sender) -> Sender {
        Sender { loan: None, inner: NonNull::from(Box::leak(Box::new(inner))) }
    }

    /// The connection, for a call that is not about the loan: refused
    /// while a loan is out (the loan holds the connection until then).
    fn idle(&mut self) -> Result<&mut copydata::Sender, Error> {
        if self.loan.is_some() {
            return Err(Error::invalid(
                "this sender has a loan out: send it (copydata_sender_send_loan, copydata_sender_post_loan) or cancel it (copydata_sender_cancel_loan) first",
            ));
        }
        // SAFETY: `inner` is live (owned, freed only on drop), and with no
        // loan out nothing else refers to it; the `&mut self` borrow covers
        // the result's lifetime.
        Ok(unsafe { self.inner.as_mut() })
    }

    /// The loan out, taken to be sent.
    fn take_loan(&mut self) -> Result<copydata::Loan<'static>, Error> {
        self.loan.take().ok_or_else(|| Error::invalid("this sender has no loan out (see copydata_sender_loan)"))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // The loan first: it refers to `*inner`.
        drop(self.loan.take());
        // SAFETY: `inner` came from `Box::leak` in `new`, is freed only here,
        // and nothing refers to it any more (the loan is gone).
        drop(unsafe { Box::from_raw(self.inner.as_ptr()) });
    }
}

/// Connects to the mailbox `name`, waiting at most `timeout_ms` for the
/// receiver to complete the set-up (`COPYDATA_INFINITE`: the default
/// bound, 10 seconds). A sender whose connection was dropped (a time-out,
/// the receiver's death) connects again on its next call, within the
/// same bound, to whichever process has bound the name by then.
///
/// Fails with `COPYDATA_STATUS_NOT_FOUND` (no such mailbox),
/// `COPYDATA_STATUS_TIMED_OUT`, `COPYDATA_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or points to
/// storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_connect(
    name: *const c_char,
    timeout_ms: u32,
    out: *mut *mut Sender,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string, read only during this
        //   call (the contract).
        let name = unsafe { str_arg(name, "name") }?;
        let inner = match timeout_arg(timeout_ms) {
            None => copydata::Sender::connect(name)?,
            Some(t) => copydata::Sender::connect_timeout(name, t)?,
        };
        *out = Box::into_raw(Box::new(Sender::new(inner)));
        Ok(())
    })
}

/// How both sides of a connection wait for each other: spin briefly, then
/// sleep (the default; a quick answer costs no kernel wake-up).
pub const COPYDATA_WAIT_SPIN_THEN_PARK: u32 = 0;
/// How both sides of a connection wait for each other: sleep at once (no
/// CPU spent spinning; every hand-off costs a kernel wake-up).
pub const COPYDATA_WAIT_PARK: u32 = 1;
/// The owner of a mailbox that is this process's own user's (for
/// `copydata_sender_connect_with`).
pub const COPYDATA_OWN_USER: u32 = 0xFFFF_FFFF;

/// As `copydata_sender_connect`, with the sender's options:
///
/// - `timeout_ms`: the longest the set-up may take, now and on each
///   reconnection (`COPYDATA_INFINITE`: the default bound, 10 seconds).
/// - `wait`: `COPYDATA_WAIT_SPIN_THEN_PARK` or `COPYDATA_WAIT_PARK`, for
///   both sides of the connection.
/// - `max_reply`: the largest reply taken; a larger one fails the call
///   with `COPYDATA_STATUS_INCOMPATIBLE` before anything of it is copied,
///   and drops the connection. 0 for the default, 4 GiB.
/// - `owner_uid`: Linux: the user whose mailbox it is, when another user
///   bound it and allowed this one in (`copydata_mailbox_bind_with`); the
///   connection is refused (`COPYDATA_STATUS_REFUSED`) unless the process
///   listening really runs as that user. `COPYDATA_OWN_USER` for this
///   user's mailbox; ignored on Windows.
///
/// Fails as `copydata_sender_connect`, and with
/// `COPYDATA_STATUS_INVALID_ARGUMENT` for an unknown `wait`.
///
/// # Safety
///
/// As `copydata_sender_connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_connect_with(
    name: *const c_char,
    timeout_ms: u32,
    wait: u32,
    max_reply: u64,
    owner_uid: u32,
    out: *mut *mut Sender,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `name` is NULL or a NUL-terminated string, read only during this
        //   call (the contract).
        let name = unsafe { str_arg(name, "name") }?;
        let wait = match wait {
            COPYDATA_WAIT_SPIN_THEN_PARK => copydata::Wait::SpinThenPark,
            COPYDATA_WAIT_PARK => copydata::Wait::Park,
            other => {
                return Err(Error::invalid(format!(
                    "wait {other} is neither COPYDATA_WAIT_SPIN_THEN_PARK (0) nor COPYDATA_WAIT_PARK (1)"
                )));
            }
        };
        let mut options = copydata::SenderOptions::new().wait(wait);
        if let Some(t) = timeout_arg(timeout_ms) {
            options = options.connect_timeout(t);
        }
        if max_reply != 0 {
            options = options.max_reply(max_reply);
        }
        if owner_uid != COPYDATA_OWN_USER {
            options = options.owner(owner_uid);
        }
        let inner = copydata::Sender::connect_with(name, &options)?;
        *out = Box::into_raw(Box::new(Sender::new(inner)));
        Ok(())
    })
}

/// Sends a message on the sender's connection and waits for its reply, as
/// `copydata_send` does (same arguments after the sender, same outputs and
/// failures). After `COPYDATA_STATUS_TIMED_OUT` for a reply that did not
/// come in time the next call uses a new connection, so it never receives
/// the late reply; one that timed out waiting for room in a full queue
/// sent nothing and keeps the connection.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; `data`
/// is NULL or points to `len` readable bytes; each of `reply_code`,
/// `reply_data`, `reply_len` is NULL or points to writable storage of its
/// type.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, then outputs
pub unsafe extern "C" fn copydata_sender_send(
    sender: *mut Sender,
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
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }?.idle()?;
        Ok(match timeout {
            None => sender.send(tag, data)?,
            Some(t) => sender.send_timeout(tag, data, t)?,
        })
    };
    // SAFETY: the pointers are as `call` needs them (this function's
    // contract).
    unsafe { call(data, len, timeout_ms, reply_code, reply_data, reply_len, send) }
}

/// The most sections one message carries (`copydata_sender_send_sections`).
pub const COPYDATA_MAX_SECTIONS: usize = 16;

/// Sends a message with `count` sections handed over with it (at most
/// `COPYDATA_MAX_SECTIONS`; `sections` may be NULL when `count` is 0) and
/// waits for the reply, as `copydata_sender_send` does (same timeout,
/// outputs and failures). The receiver gets handles of its own to the
/// same memory (`copydata_request_take_section`; `SCM_RIGHTS` on Linux,
/// `DuplicateHandle` on Windows), with the access the handles have here:
/// hand over a read-only one (`copydata_section_read_only`) so that the
/// receiver cannot write through it (see there for named and file-backed
/// sections). The sections stay this process's too; close them when
/// done, even right after the call.
///
/// From C, an array of `copydata_section *` needs a cast to
/// `const copydata_section *const *`.
///
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` for more than
/// `COPYDATA_MAX_SECTIONS` sections or a NULL among them; nothing is sent.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; `data`
/// is NULL or points to `len` readable bytes; `sections` is NULL or points
/// to `count` pointers, each NULL or a live section, none closed during
/// the call; each of `reply_code`, `reply_data`, `reply_len` is NULL or
/// points to writable storage of its type.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, then outputs
pub unsafe extern "C" fn copydata_sender_send_sections(
    sender: *mut Sender,
    tag: u64,
    data: *const c_void,
    len: usize,
    sections: *const *const Section,
    count: usize,
    timeout_ms: u32,
    reply_code: *mut i64,
    reply_data: *mut *mut c_void,
    reply_len: *mut usize,
) -> Status {
    let send = |data: &[u8], timeout: Option<Duration>| {
        if count > COPYDATA_MAX_SECTIONS {
            return Err(Error::invalid(format!("{count} sections: a message carries at most {COPYDATA_MAX_SECTIONS}")));
        }
        // SAFETY:
        // - `sections` is NULL or points to `count` pointers, each NULL or
        //   a live section, not closed during the call (the contract).
        let refs = unsafe { sections_arg(sections, count) }?;
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }?.idle()?;
        Ok(sender.send_with_sections(tag, data, &refs, timeout)?)
    };
    // SAFETY: the pointers are as `call` needs them (this function's
    // contract).
    unsafe { call(data, len, timeout_ms, reply_code, reply_data, reply_len, send) }
}

/// Posts a message: no reply is awaited (`PostMessageW`). When the
/// receiver's queue is full, waits for room at most `timeout_ms`
/// (`COPYDATA_INFINITE`: as long as it takes); 0 does not wait and fails
/// with `COPYDATA_STATUS_FULL` at once (only a connection that must be
/// made again first is waited for). A post that fails with
/// `COPYDATA_STATUS_FULL` or `COPYDATA_STATUS_TIMED_OUT` sent nothing, and
/// the connection is kept, so later posts stay in order.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; `data`
/// is NULL or points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_post(
    sender: *mut Sender,
    tag: u64,
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }?.idle()?;
        // SAFETY:
        // - `data` is NULL or points to `len` readable bytes, read only
        //   during this call (the contract).
        let data = unsafe { bytes_arg(data, len, "data") }?;
        match timeout_arg(timeout_ms) {
            None => sender.post(tag, data)?,
            Some(t) if t.is_zero() => sender.try_post(tag, data)?,
            Some(t) => sender.post_timeout(tag, data, t)?,
        }
        Ok(())
    })
}

/// The process id of the receiver `sender` is connected to (the process
/// that bound the mailbox, as the connection's set-up checked it: the
/// socket's peer on Linux, the owner of the mailbox's window on Windows),
/// stored in `*pid`: the `GetWindowThreadProcessId` of a `WM_COPYDATA`
/// sender. It names the receiver of the sender's current connection
/// (made by `copydata_sender_connect`, or again by a later call), which
/// may have exited since.
///
/// `*pid` is 0, with `COPYDATA_STATUS_OK`, when there is no receiver to
/// name: the sender is not connected (its connection was dropped by a
/// time-out, an error or the receiver's death, and its next call connects
/// again), or the system does not say who it is (Linux: a receiver in
/// another pid namespace, whose pid means nothing here). 0 is never the
/// pid of a receiver.
///
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` for a NULL `sender` or
/// `pid`, and while the sender has a loan out (`copydata_sender_loan`),
/// as its other calls do; `*pid` is 0 then (unless `pid` is NULL).
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; `pid`
/// is NULL or points to writable storage for a `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_receiver_pid(sender: *mut Sender, pid: *mut u32) -> Status {
    guard(|| {
        // SAFETY:
        // - `pid` is NULL or writable storage for a `u32` (this function's
        //   contract).
        let pid = unsafe { pid.as_mut() }.ok_or_else(|| Error::invalid("pid is NULL"))?;
        *pid = 0;
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }?.idle()?;
        *pid = sender.receiver_pid().unwrap_or(0);
        Ok(())
    })
}

/// Waits until the messages posted through `sender` so far no longer need
/// this process, at most `timeout_ms` (`COPYDATA_INFINITE`: as long as it
/// takes; 0: only looks); `COPYDATA_STATUS_TIMED_OUT` keeps the connection
/// and the posts. A process that exits right after posting flushes first.
///
/// On Windows the receiver takes a large post's buffer (above 16 KiB, or a
/// loan) out of the sending process when it takes the message off its
/// queue: a post still queued when the process exits is lost, so `flush`
/// waits for those, also those of connections this process dropped (after
/// a timeout or an error, or a closed sender). Small posts, and every post
/// on Linux, need nothing of the sender: then it returns at once.
/// `COPYDATA_STATUS_RECEIVER_DIED` says the receiver died with posts still
/// queued: they are lost.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_flush(sender: *mut Sender, timeout_ms: u32) -> Status {
    guard(|| {
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }?.idle()?;
        match timeout_arg(timeout_ms) {
            None => sender.flush()?,
            Some(t) => sender.flush_timeout(t)?,
        }
        Ok(())
    })
}

/// Lends a buffer of `len` bytes in shared memory, to fill in place and
/// send without a copy (`copydata_sender_send_loan`,
/// `copydata_sender_post_loan`): its address goes to `*data` (NULL when
/// `len` is 0). The receiver reads the bytes where they are. The buffer
/// stays writable until it is sent or cancelled; once sent, do not touch
/// it: it belongs to the receiver, then to the next loan.
///
/// A sender has at most one loan out; meanwhile its other calls fail with
/// `COPYDATA_STATUS_INVALID_ARGUMENT` (and a second loan leaves `*data`
/// as it is). Buffers come from a pool kept per connection; when the
/// receiver still holds every one of them, this waits for one at most
/// `timeout_ms` (`COPYDATA_INFINITE`: as long as it takes) and then fails
/// with `COPYDATA_STATUS_TIMED_OUT`; 0 does not wait and fails with
/// `COPYDATA_STATUS_FULL` at once (only a connection that must be made
/// again first is waited for, within the connect timeout).
///
/// Fails also with `COPYDATA_STATUS_TOO_LARGE` (above the receiver's
/// limit), `COPYDATA_STATUS_RECEIVER_DIED`, `COPYDATA_STATUS_NOT_FOUND`
/// (a connection made again found no mailbox). On failure `*data` is
/// NULL, except as said above.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; `data`
/// is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_loan(
    sender: *mut Sender,
    len: usize,
    timeout_ms: u32,
    data: *mut *mut c_void,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }.inspect_err(|_| {
            // SAFETY: `data` is NULL or valid storage (the contract).
            unsafe { clear_out(data) }
        })?;
        // (Checked before `data` is cleared: it may hold the address of the
        // loan already out.)
        let inner: *mut copydata::Sender = sender.idle()?;
        // SAFETY:
        // - `data` is NULL or valid storage (this function's contract).
        let data = unsafe { out_arg(data) }?;
        // SAFETY: `inner` is live until `sender` drops, and the loan, kept in
        // `sender.loan` (which drops first), is from now on the only way to
        // it: every other call checks for the loan first (`Sender::idle`).
        let inner: &'static mut copydata::Sender = unsafe { &mut *inner };
        let mut loan = match timeout_arg(timeout_ms) {
            None => inner.loan(len)?,
            Some(t) if t.is_zero() => inner.try_loan(len)?,
            Some(t) => inner.loan_timeout(len, t)?,
        };
        *data = if len == 0 { std::ptr::null_mut() } else { loan.as_mut_ptr().cast() };
        sender.loan = Some(loan);
        Ok(())
    })
}

/// Sends the sender's loan (`copydata_sender_loan`) and waits for the
/// reply, as `copydata_sender_send` does with bytes (same timeout, outputs
/// and failures). The loan is gone afterwards, whatever the outcome.
/// Fails with `COPYDATA_STATUS_INVALID_ARGUMENT` when the sender has no
/// loan out.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; each
/// of `reply_code`, `reply_data`, `reply_len` is NULL or points to writable
/// storage of its type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_send_loan(
    sender: *mut Sender,
    tag: u64,
    timeout_ms: u32,
    reply_code: *mut i64,
    reply_data: *mut *mut c_void,
    reply_len: *mut usize,
) -> Status {
    let send = |_: &[u8], timeout: Option<Duration>| {
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let loan = unsafe { handle_mut(sender, "sender") }?.take_loan()?;
        Ok(match timeout {
            None => loan.send(tag)?,
            Some(t) => loan.send_timeout(tag, t)?,
        })
    };
    // SAFETY: no data; the reply pointers are as `call` needs them (this
    // function's contract).
    unsafe { call(std::ptr::null(), 0, timeout_ms, reply_code, reply_data, reply_len, send) }
}

/// Posts the sender's loan (`copydata_sender_loan`): no reply awaited, as
/// `copydata_sender_post` does with bytes (same timeout). On
/// `COPYDATA_STATUS_FULL` or `COPYDATA_STATUS_TIMED_OUT` nothing was sent
/// and the loan stays out, still filled: post it again, or cancel it.
/// After any other outcome the loan is gone. Fails with
/// `COPYDATA_STATUS_INVALID_ARGUMENT` when the sender has no loan out.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_post_loan(sender: *mut Sender, tag: u64, timeout_ms: u32) -> Status {
    guard(|| {
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        let sender = unsafe { handle_mut(sender, "sender") }?;
        let loan = sender.take_loan()?;
        let posted = match timeout_arg(timeout_ms) {
            None => return Ok(loan.post(tag)?),
            Some(t) if t.is_zero() => loan.try_post(tag),
            Some(t) => loan.post_timeout(tag, t),
        };
        posted.map_err(|e| {
            let (error, back) = e.into_parts();
            sender.loan = back;
            error.into()
        })
    })
}

/// Gives the sender's loan back unsent (the buffer returns to the pool).
/// Does nothing when there is none, or for NULL.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_cancel_loan(sender: *mut Sender) {
    guard_value((), || {
        // SAFETY:
        // - `sender` is NULL or a live sender used by this thread alone
        //   during the call (the contract).
        if let Ok(sender) = unsafe { handle_mut(sender, "sender") } {
            drop(sender.loan.take());
        }
    })
}

/// Closes the sender's connection (messages posted before are still
/// delivered); a loan still out is given back unsent. NULL does nothing.
///
/// # Safety
///
/// `sender` is NULL or a live sender that no other thread is using; it
/// must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_sender_close(sender: *mut Sender) {
    // SAFETY: `sender` is NULL or came from `Box::into_raw` in
    // `copydata_sender_connect`, and is given back once, with no other
    // thread using it (this function's contract).
    unsafe { give_back(sender) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{TimeoutStage, copydata_last_timeout_stage};
    use crate::mailbox::{
        COPYDATA_INFINITE, Mailbox, copydata_mailbox_bind, copydata_mailbox_close, copydata_mailbox_recv,
        copydata_request_data, copydata_request_loan, copydata_request_reply, copydata_request_tag, copydata_send,
    };
    use crate::test_util::{last, unique};
    use std::ptr::{null, null_mut};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// What the receiving side saw of one message.
    struct Seen {
        tag: u64,
        /// Whether `copydata_request_loan` gave the bytes in place.
        lent: bool,
        bytes: Vec<u8>,
    }

    /// Serves `mailbox` through the C functions once `go` says so: answers
    /// each message with its length, reads lent bytes in place (checking
    /// that `copydata_request_data` gives the same), until tag 0.
    fn serve(mailbox: usize, go: std::sync::mpsc::Receiver<()>) -> std::thread::JoinHandle<Vec<Seen>> {
        std::thread::spawn(move || {
            let mailbox = mailbox as *const Mailbox;
            go.recv().unwrap();
            let mut seen = Vec::new();
            loop {
                let mut req = null_mut();
                // SAFETY:
                // - `mailbox` stays open until this thread is joined; each
                //   request is answered once and not used afterwards; the
                //   byte ranges are the ones the request gives.
                let one = unsafe {
                    assert_eq!(copydata_mailbox_recv(mailbox, 10_000, &mut req), Status::Ok, "{}", last());
                    let tag = copydata_request_tag(req);
                    let (mut len, mut copied_len) = (99, 99);
                    let p = copydata_request_loan(req, &mut len);
                    let copied = copydata_request_data(req, &mut copied_len);
                    let slice = |p: *const c_void, len: usize| {
                        if len == 0 { Vec::new() } else { std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec() }
                    };
                    let bytes = slice(copied, copied_len);
                    if !p.is_null() {
                        assert!(slice(p, len) == bytes, "tag {tag}: the bytes in place differ from the copy");
                        assert_ne!(p, copied, "the copy is a copy");
                    } else {
                        assert_eq!(len, 0);
                    }
                    assert_eq!(copydata_request_reply(req, bytes.len() as i64, null(), 0), Status::Ok);
                    Seen { tag, lent: !p.is_null(), bytes }
                };
                let tag = one.tag;
                seen.push(one);
                if tag == 0 {
                    return seen;
                }
            }
        })
    }

    /// `copydata_mailbox_bind_with` and `copydata_sender_connect_with`: a
    /// mailbox limited to one connection refuses a second sender; a sender
    /// in park mode talks to it; a sender's reply limit refuses a larger
    /// reply; an unknown wait mode is refused; on Linux, another user's
    /// mailbox that nobody has bound is not found.
    #[test]
    fn options_from_c() {
        use crate::mailbox::{copydata_mailbox_bind_with, copydata_request_reply};
        use std::sync::atomic::{AtomicBool, Ordering};

        let name = unique("options");
        let mut mailbox = null_mut();
        let allowed = [4_000_000u32];
        // SAFETY: a valid name, array and out storage.
        let st = unsafe { copydata_mailbox_bind_with(name.as_ptr(), 0, 1, allowed.as_ptr(), 1, &mut mailbox) };
        assert_eq!(st, Status::Ok, "{}", last());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let server = std::thread::spawn({
            let (mailbox, stop) = (mailbox as usize, stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut req = null_mut();
                    // SAFETY: the mailbox stays open until this thread is
                    // joined; each request is answered once.
                    unsafe {
                        if copydata_mailbox_recv(mailbox as *const Mailbox, 100, &mut req) == Status::Ok {
                            let reply = c"12345678";
                            assert_eq!(copydata_request_reply(req, 8, reply.as_ptr().cast(), 8), Status::Ok);
                        }
                    }
                }
            }
        });
        let connect = |wait: u32, max_reply: u64, owner: u32| {
            let mut sender = null_mut();
            // SAFETY: a valid name and out storage.
            let st = unsafe { copydata_sender_connect_with(name.as_ptr(), 5000, wait, max_reply, owner, &mut sender) };
            (st, sender)
        };
        let send = |sender: *mut Sender| {
            let mut code = 0;
            // SAFETY: a live sender used by this thread only; no outputs
            // but the code.
            let st = unsafe {
                copydata_sender_send(sender, 1, c"x".as_ptr().cast(), 1, 5000, &mut code, null_mut(), null_mut())
            };
            (st, code)
        };
        let (st, parked) = connect(COPYDATA_WAIT_PARK, 0, COPYDATA_OWN_USER);
        assert_eq!(st, Status::Ok, "{}", last());
        assert_eq!(send(parked), (Status::Ok, 8), "{}", last());
        // The limit of one connection.
        let (st, second) = connect(COPYDATA_WAIT_SPIN_THEN_PARK, 0, COPYDATA_OWN_USER);
        assert_eq!((st, second), (Status::Busy, null_mut()), "{}", last());
        // SAFETY: closed once, not used afterwards.
        unsafe { copydata_sender_close(parked) };
        // A reply larger than the sender takes (once the receiver has seen
        // the first connection go).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let limited = loop {
            match connect(COPYDATA_WAIT_SPIN_THEN_PARK, 4, COPYDATA_OWN_USER) {
                (Status::Ok, s) => break s,
                (Status::Busy, _) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                (other, _) => panic!("{other:?}: {}", last()),
            }
        };
        assert_eq!(send(limited).0, Status::Incompatible, "{}", last());
        // SAFETY: closed once, not used afterwards.
        unsafe { copydata_sender_close(limited) };
        let (st, none) = connect(7, 0, COPYDATA_OWN_USER);
        assert_eq!((st, none), (Status::InvalidArgument, null_mut()));
        assert!(last().contains("wait 7"), "{}", last());
        if cfg!(target_os = "linux") {
            // Nobody of that user has bound the name.
            let (st, none) = connect(COPYDATA_WAIT_SPIN_THEN_PARK, 0, 4_000_001);
            assert_eq!((st, none), (Status::NotFound, null_mut()), "{}", last());
        }
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        // SAFETY: closed once, no other user.
        unsafe { copydata_mailbox_close(mailbox) };
    }

    #[test]
    fn a_loan_is_filled_in_place_sent_and_read_in_place() {
        let name = unique("loan");
        let mut mailbox = null_mut();
        // SAFETY:
        // - valid name and out storage.
        assert_eq!(unsafe { copydata_mailbox_bind(name.as_ptr(), &mut mailbox) }, Status::Ok);
        let (go_tx, go) = std::sync::mpsc::channel();
        let server = serve(mailbox as usize, go);
        let mut sender = null_mut();
        let big = pattern(1 << 20);
        let mut posted = 0;
        // SAFETY:
        // - valid names, byte ranges and out storage; the sender is used by
        //   this thread only and closed once; each lent buffer is written
        //   only within its length, before it is sent.
        unsafe {
            assert_eq!(copydata_sender_connect(name.as_ptr(), 5000, &mut sender), Status::Ok, "{}", last());
            // No loan out: nothing to send, nothing to cancel.
            assert_eq!(
                copydata_sender_send_loan(sender, 1, 5000, null_mut(), null_mut(), null_mut()),
                Status::InvalidArgument
            );
            assert!(last().contains("no loan out"), "{}", last());
            assert_eq!(copydata_sender_post_loan(sender, 1, 5000), Status::InvalidArgument);
            copydata_sender_cancel_loan(sender);

            // The receiver does not take messages yet: fill its queue.
            loop {
                match copydata_sender_post(sender, 1, c"p".as_ptr().cast(), 1, 0) {
                    Status::Ok => posted += 1,
                    Status::Full => break,
                    other => panic!("post: {other:?} {}", last()),
                }
                assert!(posted < 1_000_000, "the queue never filled");
            }
            // Nothing taken yet, but small posts need nothing of this
            // process: a flush returns at once.
            assert_eq!(copydata_sender_flush(sender, 0), Status::Ok, "{}", last());
            assert_eq!(copydata_sender_flush(null_mut(), 0), Status::InvalidArgument);
            let mut p = null_mut();
            assert_eq!(copydata_sender_loan(sender, big.len(), 5000, &mut p), Status::Ok, "{}", last());
            std::ptr::copy_nonoverlapping(big.as_ptr(), p.cast::<u8>(), big.len());
            // While the loan is out, the sender's other calls are refused.
            let mut again = null_mut();
            assert_eq!(copydata_sender_loan(sender, 1, 5000, &mut again), Status::InvalidArgument);
            assert!(again.is_null());
            assert!(last().contains("loan out"), "{}", last());
            assert_eq!(
                copydata_sender_send(sender, 1, null(), 0, 5000, null_mut(), null_mut(), null_mut()),
                Status::InvalidArgument
            );
            assert_eq!(copydata_sender_post(sender, 1, null(), 0, 5000), Status::InvalidArgument);
            // No room: nothing sent, the loan stays out, still filled.
            assert_eq!(copydata_sender_post_loan(sender, 2, 0), Status::Full);
            assert_eq!(copydata_sender_post_loan(sender, 2, 50), Status::TimedOut);
            assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Room, "{}", last());
            go_tx.send(()).unwrap();
            assert_eq!(copydata_sender_post_loan(sender, 2, COPYDATA_INFINITE), Status::Ok, "{}", last());
            assert_eq!(copydata_sender_flush(sender, COPYDATA_INFINITE), Status::Ok, "{}", last());
            assert_eq!(
                copydata_sender_post_loan(sender, 2, 0),
                Status::InvalidArgument,
                "the loan is gone once posted"
            );

            // A loan sent, answered with its length.
            assert_eq!(copydata_sender_loan(sender, 3000, COPYDATA_INFINITE, &mut p), Status::Ok, "{}", last());
            std::ptr::copy_nonoverlapping(big.as_ptr(), p.cast::<u8>(), 3000);
            let mut code = 0;
            assert_eq!(copydata_sender_send_loan(sender, 3, 5000, &mut code, null_mut(), null_mut()), Status::Ok);
            assert_eq!(code, 3000);
            // Cancelled: the next loan and call go ahead.
            assert_eq!(copydata_sender_loan(sender, 10, 0, &mut p), Status::Ok, "{}", last());
            copydata_sender_cancel_loan(sender);
            assert_eq!(copydata_sender_loan(sender, 0, 5000, &mut p), Status::Ok, "{}", last());
            assert!(p.is_null(), "no bytes, no address");
            assert_eq!(copydata_sender_send_loan(sender, 4, 5000, &mut code, null_mut(), null_mut()), Status::Ok);
            assert_eq!(code, 0);
            assert_eq!(
                copydata_sender_send(sender, 5, c"x".as_ptr().cast(), 1, 5000, &mut code, null_mut(), null_mut()),
                Status::Ok
            );
            assert_eq!(code, 1);
            // Closing with a loan out gives it back unsent.
            assert_eq!(copydata_sender_loan(sender, 10, 5000, &mut p), Status::Ok, "{}", last());
            copydata_sender_close(sender);
            assert_eq!(
                copydata_send(name.as_ptr(), 0, null(), 0, 5000, null_mut(), null_mut(), null_mut()),
                Status::Ok
            );
        }
        let seen = server.join().unwrap();
        // SAFETY:
        // - the mailbox is live, its serving thread joined; closed once.
        unsafe { copydata_mailbox_close(mailbox) };
        let posts = seen.iter().take_while(|s| s.tag == 1).count();
        assert_eq!(posts, posted);
        assert!(seen[..posts].iter().all(|s| !s.lent && s.bytes == b"p"));
        let rest: Vec<_> = seen[posts..].iter().map(|s| (s.tag, s.lent, s.bytes.len())).collect();
        assert_eq!(rest, [(2, true, big.len()), (3, true, 3000), (4, false, 0), (5, false, 1), (0, false, 0)]);
        assert!(seen[posts].bytes == big);
        assert!(seen[posts + 1].bytes[..] == big[..3000]);
    }

    #[test]
    fn a_loan_waits_for_a_buffer_only_as_long_as_asked() {
        let name = unique("pool");
        let (mut mailbox, mut sender) = (null_mut(), null_mut());
        let len = 100_000;
        let mut held = 0;
        // SAFETY:
        // - valid names and out storage; the sender and the mailbox are used
        //   by this thread only and closed once; each lent buffer is written
        //   only within its length, before it is posted; each request is
        //   answered once.
        unsafe {
            assert_eq!(copydata_mailbox_bind(name.as_ptr(), &mut mailbox), Status::Ok);
            assert_eq!(copydata_sender_connect(name.as_ptr(), 5000, &mut sender), Status::Ok, "{}", last());
            // A second loan is refused, and leaves the first one's address.
            let mut p = null_mut();
            assert_eq!(copydata_sender_loan(sender, len, 0, &mut p), Status::Ok, "{}", last());
            let first = p;
            assert_eq!(copydata_sender_loan(sender, len, 0, &mut p), Status::InvalidArgument);
            assert_eq!(p, first);
            copydata_sender_cancel_loan(sender);
            // Nothing is taken: posted loans keep their buffers until the
            // pool has none left.
            loop {
                match copydata_sender_loan(sender, len, 0, &mut p) {
                    Status::Ok => {
                        std::ptr::write_bytes(p.cast::<u8>(), held as u8, len);
                        assert_eq!(
                            copydata_sender_post_loan(sender, held, COPYDATA_INFINITE),
                            Status::Ok,
                            "{}",
                            last()
                        );
                        held += 1;
                    }
                    Status::Full => break,
                    other => panic!("loan: {other:?} {}", last()),
                }
                assert!(held < 64, "the pool never ran out");
            }
            assert!(p.is_null());
            let started = std::time::Instant::now();
            assert_eq!(copydata_sender_loan(sender, len, 100, &mut p), Status::TimedOut);
            assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Room, "{}", last());
            assert!(started.elapsed() >= Duration::from_millis(100));
            // The receiver catches up: buffers come back.
            for i in 0..held {
                let mut req = null_mut();
                assert_eq!(copydata_mailbox_recv(mailbox, 10_000, &mut req), Status::Ok, "{}", last());
                assert_eq!(copydata_request_tag(req), i);
                let mut n = 0;
                let at = copydata_request_loan(req, &mut n);
                assert!(!at.is_null() && n == len);
                assert_eq!(*at.cast::<u8>().add(len - 1), i as u8);
                assert_eq!(copydata_request_reply(req, 0, null(), 0), Status::Ok);
            }
            assert_eq!(copydata_sender_loan(sender, len, 10_000, &mut p), Status::Ok, "{}", last());
            copydata_sender_close(sender);
            copydata_mailbox_close(mailbox);
        }
        assert!(held >= 2, "only {held} loans before the pool ran out");
    }

    /// `copydata_sender_receiver_pid`: the mailbox's process once
    /// connected, refused while a loan is out, 0 once the connection was
    /// dropped (a time-out), and NULL arguments refused. (The C example's
    /// test checks it across processes.)
    #[test]
    fn the_receiver_pid_is_the_mailbox_process() {
        let name = unique("receiver-pid");
        let (mut mailbox, mut sender) = (null_mut(), null_mut());
        // SAFETY:
        // - valid names, out storage and pid storage; the sender and the
        //   mailbox are used by this thread only and closed once; the loan
        //   is not written.
        unsafe {
            let mut pid = 77;
            assert_eq!(copydata_sender_receiver_pid(null_mut(), &mut pid), Status::InvalidArgument);
            assert_eq!(pid, 0, "a failure stores 0");
            assert_eq!(copydata_mailbox_bind(name.as_ptr(), &mut mailbox), Status::Ok, "{}", last());
            assert_eq!(copydata_sender_connect(name.as_ptr(), 5000, &mut sender), Status::Ok, "{}", last());
            assert_eq!(copydata_sender_receiver_pid(sender, null_mut()), Status::InvalidArgument);
            assert!(last().contains("pid is NULL"), "{}", last());
            pid = 77;
            assert_eq!(copydata_sender_receiver_pid(sender, &mut pid), Status::Ok, "{}", last());
            assert_eq!(pid, std::process::id());
            // While a loan is out, as the sender's other calls.
            let mut p = null_mut();
            assert_eq!(copydata_sender_loan(sender, 10, 5000, &mut p), Status::Ok, "{}", last());
            pid = 77;
            assert_eq!(copydata_sender_receiver_pid(sender, &mut pid), Status::InvalidArgument);
            assert_eq!(pid, 0);
            assert!(last().contains("loan out"), "{}", last());
            copydata_sender_cancel_loan(sender);
            assert_eq!(copydata_sender_receiver_pid(sender, &mut pid), Status::Ok, "{}", last());
            assert_eq!(pid, std::process::id());
            // Nobody takes the call: it times out and drops the connection.
            assert_eq!(
                copydata_sender_send(sender, 1, null(), 0, 50, null_mut(), null_mut(), null_mut()),
                Status::TimedOut
            );
            assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Reply, "{}", last());
            assert!(last().contains("waiting for the reply"), "{}", last());
            pid = 77;
            assert_eq!(copydata_sender_receiver_pid(sender, &mut pid), Status::Ok, "{}", last());
            assert_eq!(pid, 0, "no connection, no receiver");
            copydata_sender_close(sender);
            copydata_mailbox_close(mailbox);
        }
    }

    #[test]
    fn loan_calls_refuse_null() {
        let mut p = std::ptr::dangling_mut();
        // SAFETY:
        // - NULL handles and valid out storage only.
        unsafe {
            assert_eq!(copydata_sender_loan(null_mut(), 1, 0, &mut p), Status::InvalidArgument);
            assert!(p.is_null(), "a failure leaves *data NULL");
            assert_eq!(
                copydata_sender_send_loan(null_mut(), 1, 0, null_mut(), null_mut(), null_mut()),
                Status::InvalidArgument
            );
            assert_eq!(copydata_sender_post_loan(null_mut(), 1, 0), Status::InvalidArgument);
            copydata_sender_cancel_loan(null_mut());
            let mut len = 5;
            assert!(copydata_request_loan(null(), &mut len).is_null());
            assert_eq!(len, 0);
        }
    }
}
