//! A sender: one connection to a mailbox, kept for many messages.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use crate::error::{Status, bytes_arg, give_back, guard, handle_mut, out_arg, str_arg};
use crate::mailbox::{call, timeout_arg};

/// A connection to one mailbox, kept for many messages (`copydata_send`
/// connects for each). Messages of one sender arrive in order while they
/// go on one connection; after a call that timed out, the next message
/// goes on a new one, and may be handled before messages still queued on
/// the old. Opaque; close it with `copydata_sender_close`. One call at a
/// time per sender.
pub struct Sender {
    inner: copydata::Sender,
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
        *out = Box::into_raw(Box::new(Sender { inner }));
        Ok(())
    })
}

/// Sends a message on the sender's connection and waits for its reply, as
/// `copydata_send` does (same arguments after the sender, same outputs and
/// failures). After `COPYDATA_STATUS_TIMED_OUT` the next call uses a new
/// connection, so it never receives the late reply.
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
        let sender = unsafe { handle_mut(sender, "sender") }?;
        Ok(match timeout {
            None => sender.inner.send(tag, data)?,
            Some(t) => sender.inner.send_timeout(tag, data, t)?,
        })
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
        let sender = unsafe { handle_mut(sender, "sender") }?;
        // SAFETY:
        // - `data` is NULL or points to `len` readable bytes, read only
        //   during this call (the contract).
        let data = unsafe { bytes_arg(data, len, "data") }?;
        match timeout_arg(timeout_ms) {
            None => sender.inner.post(tag, data)?,
            Some(t) if t.is_zero() => sender.inner.try_post(tag, data)?,
            Some(t) => sender.inner.post_timeout(tag, data, t)?,
        }
        Ok(())
    })
}

/// Closes the sender's connection (messages posted before are still
/// delivered). NULL does nothing.
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
