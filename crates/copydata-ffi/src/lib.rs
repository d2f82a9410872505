//! # copydata-ffi
//!
//! The C ABI of [copydata]: `WM_COPYDATA`-style messages and
//! file-mapping sections for programs written in C (or any language that
//! calls C). The header, generated from this crate by cbindgen, is
//! `include/copydata.h`; link `libcopydata_ffi.a` (static) or the shared
//! library (`libcopydata_ffi.so`, `copydata_ffi.dll`).
//!
//! ```c
//! #include "copydata.h"
//!
//! int64_t code;
//! void *data;
//! size_t len;
//! copydata_status st = copydata_send("my-app", 7, "hello", 5, 5000, &code, &data, &len);
//! if (st != COPYDATA_STATUS_OK)
//!     fprintf(stderr, "send: %s\n", copydata_last_error());
//! else
//!     copydata_free(data);
//! ```
//!
//! # Conventions
//!
//! - Every fallible function returns a [`Status`] (`COPYDATA_STATUS_OK`,
//!   zero, on success); [`copydata_last_error`] then says why, in words.
//!   Like `errno`, that message is meaningful only right after a call that
//!   failed: a success does not clear it (it may still hold an older
//!   failure's message), and each thread has its own.
//! - Objects are opaque handles made by a `_create`, `_open`, `_file`,
//!   `_anonymous`, `_read_only`, `_bind`, `_connect`, `_acquire`, `_map`,
//!   `_recv` or `_take_section` function and given back to exactly one
//!   matching `_close`, `_unmap`, `_reply`, `_reply_loan`, `_refuse` or
//!   `_answer` function. Closing `NULL` does nothing. On failure a function stores
//!   `NULL` in its `out` argument (except a second [`copydata_sender_loan`]
//!   or [`copydata_request_loan_reply`], and the latter for a posted
//!   message, which leave `*data` where it is).
//! - Names are NUL-terminated UTF-8; lengths are `size_t`; section sizes
//!   and offsets are `uint64_t`.
//! - Timeouts are in milliseconds, [`COPYDATA_INFINITE`] for none (as
//!   `INFINITE` in Win32).
//! - A NULL pointer where an object is required gives
//!   `COPYDATA_STATUS_INVALID_ARGUMENT`, never a crash. No Rust panic
//!   crosses the boundary: it becomes `COPYDATA_STATUS_PANIC` (with the
//!   default `panic = "unwind"`; a build with `panic = "abort"` aborts the
//!   process instead).
//! - Threads: a handle may be used from any thread, not only the one that
//!   made it (only a lock is the thread's: the thread that took a mutex's
//!   or shared value's lock releases it). Functions that take no handle,
//!   and calls on different handles, may run on any number of threads at
//!   once. On one handle, the `const` in a function's signature says the
//!   rule:
//!   - A function that takes the handle as a `const` pointer may run on
//!     several threads at once with the same handle (and with the other
//!     such functions): [`copydata_mailbox_recv`] and
//!     [`copydata_instance_recv`] (each request or launch goes to one of
//!     the threads), every call on a mutex, a shared value or an event
//!     but its `_close` (each thread holds its own lock; an internal lock
//!     guards the handle's record of it), and the calls that leave a
//!     section, a view, a request, a launch, a list or an inheritance as
//!     it is: their getters, [`copydata_section_map`],
//!     [`copydata_section_read_only`] (a lent message's copy that
//!     [`copydata_request_data`] makes is made once, for every thread).
//!     Sections given to a call (`copydata_sender_send_sections`,
//!     `copydata_inheritance_new`) are `const` too.
//!   - A function that takes the handle as a non-`const` pointer needs it
//!     to itself: no other call on that handle may run meanwhile, on any
//!     thread. These are every `copydata_sender_*` function (a sender is
//!     one connection, used one call at a time),
//!     [`copydata_request_take_section`] and
//!     [`copydata_request_loan_reply`], and the functions that give a
//!     handle back (`_close`, `_unmap`, `_reply`, `_reply_loan`, `_refuse`,
//!     `_answer`), after which no thread may use it, nor still be waiting
//!     in it (a `_recv`, a lock, a wait).
//!
//! # Plain Win32 windows
//!
//! On Windows, [`copydata_send_to_window`] sends a plain `WM_COPYDATA` to
//! another program's window, found by class and/or title; a plain program
//! reaches a copydata mailbox with `SendMessage(WM_COPYDATA)` itself.
//!
//! # Zero-copy loans
//!
//! [`copydata_sender_loan`] lends a buffer in shared memory to write in
//! place; [`copydata_sender_send_loan`] or [`copydata_sender_post_loan`]
//! sends it without a copy, [`copydata_sender_cancel_loan`] gives it back.
//! A receiver reads a lent message in place with [`copydata_request_loan`]
//! (bytes a hostile sender could still change: copy out what you check) or
//! as a private copy with [`copydata_request_data`].
//!
//! Replies can be lent too: [`copydata_request_loan_reply`] lends a buffer
//! for the reply, written in place, and [`copydata_request_reply_loan`]
//! answers with it. A Rust sender reads it in place; a C sender's reply
//! bytes are copied once, straight out of it.
//!
//! # Sections with messages
//!
//! [`copydata_sender_send_sections`] hands sections over with a message
//! (up to [`COPYDATA_MAX_SECTIONS`]); the receiver takes a handle of its
//! own to each with [`copydata_request_take_section`]. A read-only handle
//! ([`copydata_section_read_only`]) arrives read-only.
//! [`copydata_section_file`] makes a section of an existing file. A
//! received named or file-backed section can be truncated by whoever may
//! open it: check [`copydata_section_is_size_sealed`] before mapping one
//! from a sender you do not trust, and [`copydata_section_is_memory_backed`]
//! to refuse files whose reads can fail.
//!
//! # What is live
//!
//! [`copydata_list_sections`], [`copydata_list_mailboxes`] and
//! [`copydata_list_objects`] list this user's live objects (as `copydata
//! ls` does): names with a size, a process id or a kind.
//! [`copydata_section_remove`] frees a section's name (`shm_unlink`).
//!
//! # Sections to a running process
//!
//! Outside a mailbox, a section goes to an unrelated running process the
//! way each system allows: on Linux over a connected Unix socket
//! ([`copydata_section_send`], [`copydata_section_recv`]: `SCM_RIGHTS`), on
//! Windows by `DuplicateHandle` ([`copydata_section_duplicate_into`], then
//! the target's [`copydata_section_adopt`] with the value it was told).
//!
//! # Sections for a child process
//!
//! [`copydata_inheritance_new`] makes sections ready for a child that the
//! program starts itself (`fork`/`exec`, `CreateProcessW`): a token to put
//! in the child's environment under `COPYDATA_INHERIT_VAR` and the handles
//! the child must inherit ([`copydata_inheritance_handle`]). The child
//! takes them with [`copydata_inherited_sections`]. Rust parents
//! (`copydata::CommandExt`) and children (`copydata::inherited_sections`)
//! speak the same token. `examples/c/inherit.c` does it on both systems.
//!
//! # Single instance
//!
//! [`copydata_instance_acquire`] makes the first launch of an app id the
//! primary and forwards every later one (arguments, working directory,
//! bytes) to it, returning the primary's answer; the primary takes them
//! with [`copydata_instance_recv`] and answers with
//! [`copydata_launch_answer`].
//!
//! # Mutexes, shared values and events
//!
//! [`copydata_mutex_create`] opens a named mutex shared by processes that
//! survives its owner's death: [`copydata_mutex_lock`] tells the next
//! holder (`*owner_died`) until [`copydata_mutex_mark_consistent`];
//! [`copydata_mutex_unlock`] releases it, on the thread that locked.
//! [`copydata_event_create`] opens a named manual- or auto-reset event
//! ([`copydata_event_set`], [`copydata_event_reset`],
//! [`copydata_event_wait`]). [`copydata_shared_create`] opens a shared
//! value: bytes initialised once across processes, locked like a mutex
//! ([`copydata_shared_lock`], [`copydata_shared_data`]); with the size,
//! alignment and tag of a Rust `Shared<T>` it is that value. These are the
//! objects of `copydata::sync`, `copydata lock`, `copydata shared` and
//! `copydata event`, reached by the same names.

mod buffer;
mod error;
mod handover;
mod inherit;
mod instance;
mod list;
mod mailbox;
mod section;
mod sender;
mod sync;
#[cfg(test)]
mod test_util;

pub use buffer::copydata_free;
pub use error::{Status, TimeoutStage, copydata_last_error, copydata_last_timeout_stage, copydata_status_name};
pub use handover::{
    copydata_section_adopt, copydata_section_duplicate_into, copydata_section_recv, copydata_section_send,
};
pub use inherit::{
    Inheritance, copydata_inheritance_close, copydata_inheritance_count, copydata_inheritance_handle,
    copydata_inheritance_new, copydata_inheritance_token, copydata_inherited_sections,
};
pub use instance::{
    COPYDATA_LAUNCH_TAG, Instance, Launch, copydata_instance_acquire, copydata_instance_acquire_env,
    copydata_instance_close, copydata_instance_recv, copydata_launch_answer, copydata_launch_arg, copydata_launch_argc,
    copydata_launch_cwd, copydata_launch_data, copydata_launch_env, copydata_launch_env_count,
    copydata_launch_env_name, copydata_launch_pid, copydata_launch_tag,
};
pub use list::{
    COPYDATA_KIND_EVENT, COPYDATA_KIND_MUTEX, COPYDATA_KIND_SHARED, List, copydata_list_close, copydata_list_count,
    copydata_list_mailboxes, copydata_list_name, copydata_list_objects, copydata_list_sections, copydata_list_value,
    copydata_section_remove,
};
pub use mailbox::{
    COPYDATA_INFINITE, Mailbox, Request, copydata_mailbox_bind, copydata_mailbox_bind_limit,
    copydata_mailbox_bind_with, copydata_mailbox_close, copydata_mailbox_recv, copydata_request_data,
    copydata_request_expects_reply, copydata_request_loan, copydata_request_loan_reply, copydata_request_refuse,
    copydata_request_reply, copydata_request_reply_loan, copydata_request_section_count, copydata_request_sender_pid,
    copydata_request_tag, copydata_request_take_section, copydata_send, copydata_send_to_window,
};
pub use section::{
    COPYDATA_READ_ONLY, COPYDATA_READ_WRITE, Section, View, copydata_section_access, copydata_section_anonymous,
    copydata_section_close, copydata_section_create, copydata_section_file, copydata_section_is_memory_backed,
    copydata_section_is_size_sealed, copydata_section_map, copydata_section_name, copydata_section_open,
    copydata_section_read_only, copydata_section_size, copydata_view_data, copydata_view_size, copydata_view_unmap,
};
pub use sender::{
    COPYDATA_MAX_SECTIONS, COPYDATA_OWN_USER, COPYDATA_WAIT_PARK, COPYDATA_WAIT_SPIN_THEN_PARK, Sender,
    copydata_sender_cancel_loan, copydata_sender_close, copydata_sender_connect, copydata_sender_connect_with,
    copydata_sender_flush, copydata_sender_loan, copydata_sender_post, copydata_sender_post_loan,
    copydata_sender_receiver_pid, copydata_sender_send, copydata_sender_send_loan, copydata_sender_send_sections,
};
pub use sync::{
    COPYDATA_AUTO_RESET, COPYDATA_MANUAL_RESET, Event, Mutex, Shared, SharedInit, copydata_event_close,
    copydata_event_create, copydata_event_kind, copydata_event_open, copydata_event_reset, copydata_event_set,
    copydata_event_wait, copydata_mutex_close, copydata_mutex_create, copydata_mutex_lock,
    copydata_mutex_mark_consistent, copydata_mutex_open, copydata_mutex_unlock, copydata_shared_close,
    copydata_shared_create, copydata_shared_data, copydata_shared_lock, copydata_shared_mark_consistent,
    copydata_shared_open, copydata_shared_size, copydata_shared_unlock,
};

#[cfg(test)]
mod tests {
    /// What the handles wrap may move between threads (C uses a handle from
    /// any thread), and what several threads use at once (`copydata_mailbox_recv`,
    /// `copydata_instance_recv`, the locks and waits of the sync objects,
    /// the calls that read a handle through a `const` pointer) may be
    /// shared, as the crate's documentation and the header say.
    #[test]
    fn handles_may_move_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<copydata::Section>();
        send::<copydata::View>();
        send::<copydata::ViewMut>();
        send::<copydata::Request>();
        send::<copydata::ReplyLoan>();
        send::<copydata::Sender>();
        send::<copydata::Loan<'static>>();
        send::<copydata::Inheritance>();
        send::<copydata::instance::Launch>();
        send::<copydata::sync::ArcMutexGuard>();
        send::<copydata::sync::ArcSharedBytesGuard>();
        sync::<copydata::Mailbox>();
        sync::<copydata::instance::Primary>();
        sync::<copydata::sync::Mutex>();
        sync::<copydata::sync::SharedBytes>();
        sync::<copydata::sync::Event>();
        // The handles whose functions take them as `const` pointers, as C
        // sees them (a view's are two plain fields, read only).
        sync::<crate::Section>();
        sync::<crate::Mailbox>();
        sync::<crate::Request>();
        sync::<crate::Instance>();
        sync::<crate::Launch>();
        sync::<crate::List>();
        sync::<crate::Inheritance>();
        sync::<crate::Mutex>();
        sync::<crate::Shared>();
        sync::<crate::Event>();
    }
}
