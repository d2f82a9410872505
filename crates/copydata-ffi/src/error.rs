//! Status codes, the thread's last error message (and a send time-out's
//! stage), and the guard every exported function runs its body under.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char, c_void};
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use copydata::{BindError, CreateError, InstanceError, MapError, OpenError, RecvError, ReplyError, SendError};

/// What a function did: `COPYDATA_STATUS_OK` (zero) or why it failed.
///
/// `copydata_last_error()` gives the details in words. New codes may be
/// added; treat an unknown one like `COPYDATA_STATUS_IO`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A NULL pointer where one is required, a name that is not a valid
    /// copydata name (or not UTF-8), a zero size, a range outside the
    /// section, an unknown access value.
    InvalidArgument = 1,
    /// No section or mailbox has this name.
    NotFound = 2,
    /// A live section has this name, or a live process has bound this
    /// mailbox.
    AlreadyExists = 3,
    /// No reply (or no message) arrived in time. For a send, post, loan or
    /// flush, `copydata_last_timeout_stage()` says what it was waiting for,
    /// and so whether the message went out.
    TimedOut = 4,
    /// The receiver refused the message (its handler refused it, or it
    /// serves other users only).
    Refused = 5,
    /// The receiving process exited, crashed or closed its mailbox before
    /// it replied.
    ReceiverDied = 6,
    /// The sender is gone (timed out, exited or crashed) before the reply.
    SenderGone = 7,
    /// The operating system refused access, a section belongs to another
    /// user, or a writable view of a read-only section was asked for.
    PermissionDenied = 8,
    /// The payload is larger than the receiver accepts, or a size is too
    /// large for this platform.
    TooLarge = 9,
    /// The shared-memory file system has too little free space.
    NoSpace = 10,
    /// The mailbox is closed.
    Closed = 11,
    /// The peer speaks another version of the protocol, or broke it.
    Incompatible = 12,
    /// Any other operating-system error.
    Io = 13,
    /// Not supported on this platform.
    Unsupported = 14,
    /// A bug inside the library (a Rust panic), caught at the boundary.
    Panic = 15,
    /// No room now, for a call that was not to wait: the receiver's queue
    /// is full (a post), or it holds every buffer of the connection's pool
    /// (a loan). It has not caught up yet; nothing was sent or lent.
    Full = 16,
    /// The mailbox has as many senders connected as it takes, or its
    /// receiver could not make a connection just now (Linux: out of file
    /// descriptors or memory): no connection was made, nothing was sent.
    /// Try again later.
    Busy = 17,
}

impl Status {
    const ALL: [Status; 18] = [
        Status::Ok,
        Status::InvalidArgument,
        Status::NotFound,
        Status::AlreadyExists,
        Status::TimedOut,
        Status::Refused,
        Status::ReceiverDied,
        Status::SenderGone,
        Status::PermissionDenied,
        Status::TooLarge,
        Status::NoSpace,
        Status::Closed,
        Status::Incompatible,
        Status::Io,
        Status::Unsupported,
        Status::Panic,
        Status::Full,
        Status::Busy,
    ];

    /// The name C code uses for the code.
    fn name(self) -> &'static CStr {
        match self {
            Status::Ok => c"COPYDATA_STATUS_OK",
            Status::InvalidArgument => c"COPYDATA_STATUS_INVALID_ARGUMENT",
            Status::NotFound => c"COPYDATA_STATUS_NOT_FOUND",
            Status::AlreadyExists => c"COPYDATA_STATUS_ALREADY_EXISTS",
            Status::TimedOut => c"COPYDATA_STATUS_TIMED_OUT",
            Status::Refused => c"COPYDATA_STATUS_REFUSED",
            Status::ReceiverDied => c"COPYDATA_STATUS_RECEIVER_DIED",
            Status::SenderGone => c"COPYDATA_STATUS_SENDER_GONE",
            Status::PermissionDenied => c"COPYDATA_STATUS_PERMISSION_DENIED",
            Status::TooLarge => c"COPYDATA_STATUS_TOO_LARGE",
            Status::NoSpace => c"COPYDATA_STATUS_NO_SPACE",
            Status::Closed => c"COPYDATA_STATUS_CLOSED",
            Status::Incompatible => c"COPYDATA_STATUS_INCOMPATIBLE",
            Status::Io => c"COPYDATA_STATUS_IO",
            Status::Unsupported => c"COPYDATA_STATUS_UNSUPPORTED",
            Status::Panic => c"COPYDATA_STATUS_PANIC",
            Status::Full => c"COPYDATA_STATUS_FULL",
            Status::Busy => c"COPYDATA_STATUS_BUSY",
        }
    }
}

/// What a send, post, loan or flush that failed with
/// `COPYDATA_STATUS_TIMED_OUT` was waiting for when its time ran out, as
/// `copydata_last_timeout_stage()` tells it: whether the message went out.
/// New stages may be added; treat an unknown one like
/// `COPYDATA_TIMEOUT_STAGE_REPLY` (the message may have gone out).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutStage {
    /// The last failure on this thread was not the time-out of a send (a
    /// receive's, a lock's, another error), or none failed yet.
    None = 0,
    /// Setting up the connection: nothing was sent; sending again cannot
    /// have the message handled twice.
    Connecting = 1,
    /// Room in the receiver's queue (a post, a send into a full queue), or
    /// a buffer of the connection's pool (a loan): nothing was sent or
    /// lent, and the connection is kept.
    Room = 2,
    /// The reply: the message was queued and may still be handled (its
    /// reply is then discarded).
    Reply = 3,
    /// `copydata_sender_flush`: the receiver taking what was posted. The
    /// posts stay queued and may still be handled.
    Flush = 4,
}

impl From<copydata::TimeoutStage> for TimeoutStage {
    fn from(stage: copydata::TimeoutStage) -> TimeoutStage {
        match stage {
            copydata::TimeoutStage::Connecting => TimeoutStage::Connecting,
            copydata::TimeoutStage::Room => TimeoutStage::Room,
            copydata::TimeoutStage::Flush => TimeoutStage::Flush,
            // (And any later stage: the cautious answer, the message may
            // have gone out.)
            _ => TimeoutStage::Reply,
        }
    }
}

/// A failure on its way to C: the code, the message and, for a send's
/// time-out, its stage.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) status: Status,
    message: String,
    stage: TimeoutStage,
}

impl Error {
    pub(crate) fn new(status: Status, message: impl Display) -> Error {
        Error { status, message: message.to_string(), stage: TimeoutStage::None }
    }

    pub(crate) fn invalid(message: impl Display) -> Error {
        Error::new(Status::InvalidArgument, message)
    }
}

impl From<CreateError> for Error {
    fn from(e: CreateError) -> Error {
        let status = match &e {
            CreateError::InvalidName { .. } => Status::InvalidArgument,
            // A zero size is the caller's mistake; one too large for the
            // platform is a size problem.
            CreateError::InvalidSize { size: 0, .. } => Status::InvalidArgument,
            CreateError::InvalidSize { .. } => Status::TooLarge,
            CreateError::AlreadyExists { .. } => Status::AlreadyExists,
            CreateError::NoSuchFile { .. } => Status::NotFound,
            CreateError::NotAFile { .. } => Status::InvalidArgument,
            CreateError::NoSpace { .. } => Status::NoSpace,
            CreateError::PermissionDenied { .. } | CreateError::OtherOwner { .. } => Status::PermissionDenied,
            CreateError::Unsupported => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Error {
        let status = match &e {
            OpenError::InvalidName { .. } => Status::InvalidArgument,
            OpenError::NotFound { .. } => Status::NotFound,
            OpenError::PermissionDenied { .. } | OpenError::OtherOwner { .. } => Status::PermissionDenied,
            OpenError::Unsupported => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<MapError> for Error {
    fn from(e: MapError) -> Error {
        let status = match &e {
            MapError::ZeroLength | MapError::OutOfRange { .. } => Status::InvalidArgument,
            MapError::ReadOnly | MapError::Sealed => Status::PermissionDenied,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        let status = match &e {
            SendError::InvalidName { .. } => Status::InvalidArgument,
            SendError::NoSuchMailbox { .. } => Status::NotFound,
            SendError::TimedOut { .. } => Status::TimedOut,
            SendError::ReceiverDied { .. } => Status::ReceiverDied,
            SendError::PayloadTooLarge { .. } => Status::TooLarge,
            SendError::Refused { .. } => Status::Refused,
            SendError::Busy { .. } => Status::Busy,
            SendError::Incompatible { .. } | SendError::Protocol { .. } => Status::Incompatible,
            SendError::Unsupported => Status::Unsupported,
            SendError::Full { .. } => Status::Full,
            _ => Status::Io,
        };
        let stage = e.timeout_stage().map_or(TimeoutStage::None, TimeoutStage::from);
        Error { stage, ..Error::new(status, e) }
    }
}

impl From<BindError> for Error {
    fn from(e: BindError) -> Error {
        let status = match &e {
            BindError::InvalidName { .. } => Status::InvalidArgument,
            BindError::AlreadyBound { .. } => Status::AlreadyExists,
            BindError::RuntimeDir { .. } => Status::PermissionDenied,
            BindError::Unsupported => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Error {
        let status = match e {
            RecvError::Timeout => Status::TimedOut,
            RecvError::Closed => Status::Closed,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<InstanceError> for Error {
    fn from(e: InstanceError) -> Error {
        let status = match &e {
            InstanceError::InvalidAppId { .. } => Status::InvalidArgument,
            InstanceError::TimedOut { .. } => Status::TimedOut,
            InstanceError::Refused { .. } => Status::Refused,
            InstanceError::Incompatible { .. } => Status::Incompatible,
            InstanceError::RuntimeDir { .. } => Status::PermissionDenied,
            InstanceError::Unsupported => Status::Unsupported,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

impl From<ReplyError> for Error {
    fn from(e: ReplyError) -> Error {
        let status = match &e {
            ReplyError::SenderGone => Status::SenderGone,
            _ => Status::Io,
        };
        Error::new(status, e)
    }
}

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// The stage of this thread's last failed call, if a send's time-out.
    static LAST_STAGE: Cell<TimeoutStage> = const { Cell::new(TimeoutStage::None) };
}

fn set_last_error(message: &str, stage: TimeoutStage) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // During thread teardown the slots may be gone; the code still says
    // what happened.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(text);
        }
    });
    let _ = LAST_STAGE.try_with(|slot| slot.set(stage));
}

/// Runs an exported function's body: its error, or a panic, becomes a
/// status code and the thread's last error message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Error>) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message, e.stage);
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown panic");
            set_last_error(&format!("internal error in copydata (please report it): {what}"), TimeoutStage::None);
            // Dropping the payload could panic in turn (a payload type with a
            // panicking destructor); only then is that second payload kept.
            if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(panic))) {
                std::mem::forget(again);
            }
            Status::Panic
        }
    }
}

/// [`guard`] for a function that returns a value instead of a status:
/// `fallback` when the body panics.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    let mut value = None;
    guard(|| {
        value = Some(body());
        Ok(())
    });
    value.unwrap_or(fallback)
}

/// The message of the last call on this thread that failed, in UTF-8: what
/// went wrong and with which object (for example `no mailbox named
/// "my-app"`). An empty string when no call has failed on this thread.
///
/// Like `errno`, it is meaningful only right after a call that failed: one
/// that returned a status other than `COPYDATA_STATUS_OK` (a function that
/// returns a value instead sets it only where its description says so, as
/// `copydata_request_data` does, or on `COPYDATA_STATUS_PANIC`'s internal
/// error). Successful calls leave it unchanged, so after a success it may
/// still hold an older failure's message: do not read it to learn whether
/// a call failed. Each thread has its own; a failure on one thread never
/// changes another's.
///
/// The string belongs to the library; it stays valid until the next failing
/// call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn copydata_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|slot| slot.try_borrow().ok().and_then(|s| s.as_ref().map(|s| s.as_ptr())))
            .ok()
            .flatten()
            .unwrap_or(c"".as_ptr())
    })
}

/// What the last call on this thread that failed was waiting for, when it
/// was a send, post, loan or flush that failed with
/// `COPYDATA_STATUS_TIMED_OUT`: whether the message went out. A time-out
/// while connecting (`COPYDATA_TIMEOUT_STAGE_CONNECTING`) or while waiting
/// for room in the receiver's queue (`COPYDATA_TIMEOUT_STAGE_ROOM`) sent
/// nothing, so sending again cannot have the message handled twice; one
/// while waiting for the reply (`COPYDATA_TIMEOUT_STAGE_REPLY`) left the
/// message queued, and it may still be handled.
/// `COPYDATA_TIMEOUT_STAGE_NONE` after any other failure (a receive's or a
/// lock's time-out included) or when no call has failed on this thread.
///
/// Like `copydata_last_error()`, meaningful only right after a call that
/// failed, and per thread; successful calls leave it unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn copydata_last_timeout_stage() -> TimeoutStage {
    guard_value(TimeoutStage::None, || LAST_STAGE.try_with(Cell::get).unwrap_or(TimeoutStage::None))
}

/// The name of a status code as a static string (`"COPYDATA_STATUS_TIMED_OUT"`),
/// or `"COPYDATA_STATUS_UNKNOWN"` for a value that is not a code. Never NULL;
/// do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn copydata_status_name(status: i32) -> *const c_char {
    guard_value(c"COPYDATA_STATUS_UNKNOWN".as_ptr(), || {
        Status::ALL
            .iter()
            .find(|s| **s as i32 == status)
            .map_or(c"COPYDATA_STATUS_UNKNOWN".as_ptr(), |s| s.name().as_ptr())
    })
}

/// The longest byte range a C caller may hand in (Rust slices are limited
/// to `isize::MAX` bytes).
const MAX_SLICE: usize = isize::MAX as usize;

/// The OS string a C string stands for: its bytes on Unix (any encoding),
/// its UTF-8 elsewhere (`None` if it is not UTF-8).
pub(crate) fn os_string(arg: &std::ffi::CStr) -> Option<std::ffi::OsString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Some(std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned())
    }
    #[cfg(not(unix))]
    {
        arg.to_str().ok().map(Into::into)
    }
}

/// A NUL-terminated UTF-8 argument.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY:
    // - `p` is not NULL (checked above) and, by this function's contract,
    //   points to a NUL-terminated string valid for `'a`.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// A `(pointer, length)` argument; NULL is fine for no bytes.
///
/// # Safety
///
/// `p` is NULL or points to `len` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn bytes_arg<'a>(p: *const c_void, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL but its length is {len}")));
    }
    if len > MAX_SLICE {
        return Err(Error::new(Status::TooLarge, format!("{what}: {len} bytes is more than any buffer can hold")));
    }
    // SAFETY:
    // - `p` is not NULL (checked above) and points to `len` readable bytes
    //   valid for `'a` (this function's contract).
    // - `len <= isize::MAX` (checked above).
    // - `u8` has no alignment requirement and every bit pattern is valid.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// An array argument: `count` items at `p` (which may be NULL when `count`
/// is 0); `what` names it in errors. A count no array can have fails
/// (`COPYDATA_STATUS_INVALID_ARGUMENT`) rather than be read.
///
/// # Safety
///
/// `p` is NULL or points to `count` readable items valid for `'a`.
pub(crate) unsafe fn array_arg<'a, T>(p: *const T, count: usize, what: &str) -> Result<&'a [T], Error> {
    if count == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL but its count is {count}")));
    }
    if count > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Error::invalid(format!("{count} is no count of {what}")));
    }
    // SAFETY:
    // - `p` is not NULL (checked above) and points to `count` items valid
    //   for `'a` (this function's contract), so aligned and within one
    //   allocation;
    // - their size is at most `isize::MAX` bytes (checked above).
    Ok(unsafe { std::slice::from_raw_parts(p, count) })
}

/// An optional string argument: `None` for NULL.
///
/// # Safety
///
/// `p` is NULL or a NUL-terminated string, valid for `'a`.
pub(crate) unsafe fn opt_str_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, so a NUL-terminated string (the contract).
    unsafe { str_arg(p, what) }.map(Some)
}

/// A handle argument.
///
/// # Safety
///
/// `p` is NULL or a live handle of type `T` made by this library, not used
/// mutably elsewhere for `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Error> {
    // SAFETY:
    // - `p` is NULL (then `as_ref` gives `None`) or a live, properly aligned
    //   `T` from `Box::into_raw` (this function's contract).
    unsafe { p.as_ref() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// The object behind a handle, for a call that changes it.
///
/// # Safety
///
/// `p` is NULL or a live `T` from `Box::into_raw`, used by no one else for
/// `'a`.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Error> {
    // SAFETY:
    // - `p` is NULL (then `as_mut` gives `None`) or a live, properly aligned
    //   `T` from `Box::into_raw`, not used elsewhere meanwhile (this
    //   function's contract).
    unsafe { p.as_mut() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// Gives back a handle made by `Box::into_raw` (closing its object); NULL
/// does nothing. A panic in the object's `Drop` stays on this side.
///
/// # Safety
///
/// `p` is NULL or a live `T` from `Box::into_raw`, given back once, with
/// no other thread using it; it is not used afterwards.
pub(crate) unsafe fn give_back<T>(p: *mut T) {
    guard_value((), || {
        if !p.is_null() {
            // SAFETY: as this function's contract says.
            drop(unsafe { Box::from_raw(p) });
        }
    })
}

/// Sets `*out` to NULL unless `out` is NULL: for a call that fails before
/// it gets to [`out_arg`].
///
/// # Safety
///
/// As for [`out_arg`].
pub(crate) unsafe fn clear_out<T>(out: *mut *mut T) {
    // SAFETY: NULL or writable storage for a pointer (the contract).
    if let Some(out) = unsafe { out.as_mut() } {
        *out = std::ptr::null_mut();
    }
}

/// An `out` argument, set to NULL at once so that it is NULL on failure.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for a pointer, valid for
/// `'a`.
pub(crate) unsafe fn out_arg<'a, T>(out: *mut *mut T) -> Result<&'a mut *mut T, Error> {
    // SAFETY:
    // - `out` is NULL (then `as_mut` gives `None`) or points to writable,
    //   aligned storage for a pointer, valid for `'a` (this function's
    //   contract).
    let out = unsafe { out.as_mut() }.ok_or_else(|| Error::invalid("the out argument is NULL"))?;
    *out = std::ptr::null_mut();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_util::last;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("deliberate test panic"));
        assert_eq!(status, Status::Panic);
        assert!(last().contains("deliberate test panic"), "{}", last());
        assert_eq!(guard_value(7, || panic!("again")), 7);
    }

    #[test]
    fn an_error_sets_the_message_and_success_keeps_it() {
        assert_eq!(guard(|| Err(Error::new(Status::NotFound, "nothing here"))), Status::NotFound);
        assert_eq!(guard(|| Ok(())), Status::Ok);
        assert_eq!(last(), "nothing here");
        assert_eq!(guard(|| Err(Error::invalid("nul\0inside"))), Status::InvalidArgument);
        assert_eq!(last(), "nul\\0inside");
    }

    #[test]
    fn a_send_time_out_leaves_its_stage_and_other_failures_none() {
        let timed_out = |stage| SendError::TimedOut { name: "m".into(), timeout: Duration::from_millis(5), stage };
        let status = guard(|| Err(timed_out(copydata::TimeoutStage::Room).into()));
        assert_eq!(status, Status::TimedOut);
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Room);
        assert_eq!(last(), "timed out after 5ms waiting for room in the queue of mailbox \"m\"");
        // A success leaves it, as it leaves the message.
        assert_eq!(guard(|| Ok(())), Status::Ok);
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Room);
        guard(|| Err(timed_out(copydata::TimeoutStage::Reply).into()));
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Reply);
        guard(|| Err(timed_out(copydata::TimeoutStage::Connecting).into()));
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Connecting);
        guard(|| Err(timed_out(copydata::TimeoutStage::Flush).into()));
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Flush);
        // Another failure, a time-out of another kind included, is none.
        assert_eq!(guard(|| Err(RecvError::Timeout.into())), Status::TimedOut);
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::None);
        guard(|| Err(timed_out(copydata::TimeoutStage::Reply).into()));
        guard(|| Err(SendError::NoSuchMailbox { name: "m".into() }.into()));
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::None);
        // Another thread's stage is its own.
        guard(|| Err(timed_out(copydata::TimeoutStage::Reply).into()));
        std::thread::spawn(|| assert_eq!(copydata_last_timeout_stage(), TimeoutStage::None)).join().unwrap();
        assert_eq!(copydata_last_timeout_stage(), TimeoutStage::Reply);
    }

    #[test]
    fn every_status_has_its_name() {
        for s in Status::ALL {
            // SAFETY:
            // - `copydata_status_name` returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(copydata_status_name(s as i32)) };
            assert!(name.to_str().unwrap().starts_with("COPYDATA_STATUS_"));
            assert_eq!(Status::ALL[s as usize], s);
        }
        for bad in [-1, Status::ALL.len() as i32, i32::MAX] {
            // SAFETY:
            // - as above.
            let name = unsafe { CStr::from_ptr(copydata_status_name(bad)) };
            assert_eq!(name.to_str().unwrap(), "COPYDATA_STATUS_UNKNOWN");
        }
    }
}
