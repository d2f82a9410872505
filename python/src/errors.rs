//! copydata's error types as Python exceptions.
//!
//! The exception classes are defined in Python (`copydata/__init__.py`), so
//! that they can derive from both `copydata.Error` and the matching built-in
//! (`TimeoutError`, `FileNotFoundError`, `ValueError`, ...); they are looked
//! up by name when an error is raised. The message is the Rust error's, and
//! an operating-system error behind it becomes the exception's `__cause__`
//! (an `OSError` with its `errno`).

use std::error::Error as StdError;
use std::io;

use copydata::sync::{LockError, SyncOpenError, WaitError};
use copydata::{
    BindError, CreateError, HandoverError, InheritError, InstanceError, ListError, MapError, OpenError, ReadOnlyError,
    RecvError, RemoveError, ReplyError, SendError,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The exception classes of the `copydata` package.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Error,
    InvalidArgument,
    InvalidName,
    TooLarge,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    TimedOut,
    Refused,
    ReceiverDied,
    SenderGone,
    Closed,
    ProtocolError,
    Full,
    Busy,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::Error => "Error",
            Kind::InvalidArgument => "InvalidArgument",
            Kind::InvalidName => "InvalidName",
            Kind::TooLarge => "TooLarge",
            Kind::NotFound => "NotFound",
            Kind::AlreadyExists => "AlreadyExists",
            Kind::PermissionDenied => "PermissionDenied",
            Kind::TimedOut => "TimedOut",
            Kind::Refused => "Refused",
            Kind::ReceiverDied => "ReceiverDied",
            Kind::SenderGone => "SenderGone",
            Kind::Closed => "Closed",
            Kind::ProtocolError => "ProtocolError",
            Kind::Full => "Full",
            Kind::Busy => "Busy",
        }
    }
}

/// A `copydata.<kind>` exception with `message`.
pub(crate) fn raise(py: Python<'_>, kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    let class = py
        .import("copydata")
        .and_then(|m| m.getattr(kind.class_name()))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        // Only if the package itself is broken.
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// A `copydata.<kind>` exception for `err`, with the OS error found among
/// its sources as the `__cause__`.
fn convert(py: Python<'_>, kind: Kind, err: &(dyn StdError + 'static)) -> PyErr {
    let exception = raise(py, kind, err.to_string());
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(os) = e.downcast_ref::<io::Error>() {
            let cause = match os.raw_os_error() {
                Some(code) => {
                    // An `OSError` subclass (`NotFound`, `PermissionDenied`,
                    // ...) carries the errno itself too, as Python's own do;
                    // `strerror` stays unset, so the message is unchanged.
                    let value = exception.value(py);
                    if value.is_instance_of::<pyo3::exceptions::PyOSError>() {
                        let _ = value.setattr("errno", code);
                    }
                    os_error(code)
                }
                None => PyErr::from(io::Error::new(os.kind(), os.to_string())),
            };
            exception.set_cause(py, Some(cause));
            break;
        }
        source = e.source();
    }
    exception
}

/// The `OSError` of an OS error code, built as Python builds its own: with
/// `errno` and `strerror` (on Windows `winerror`), so that Python picks the
/// subclass (`FileNotFoundError`, ...).
pub(crate) fn os_error(code: i32) -> PyErr {
    let text = io::Error::from_raw_os_error(code).to_string();
    let strerror = text.split(" (os error").next().unwrap_or(&text).to_owned();
    #[cfg(windows)]
    return pyo3::exceptions::PyOSError::new_err((0, strerror, None::<String>, code));
    #[cfg(not(windows))]
    pyo3::exceptions::PyOSError::new_err((code, strerror))
}

/// The exception for `e`; a time-out's says, in its `stage` attribute,
/// what it was waiting for (`"connecting"`, `"room"`, `"reply"` or
/// `"flush"`).
pub(crate) fn send_error(py: Python<'_>, e: SendError) -> PyErr {
    let kind = match &e {
        SendError::InvalidName { .. } => Kind::InvalidName,
        SendError::NoSuchMailbox { .. } => Kind::NotFound,
        SendError::TimedOut { .. } => Kind::TimedOut,
        SendError::ReceiverDied { .. } => Kind::ReceiverDied,
        SendError::PayloadTooLarge { .. } => Kind::TooLarge,
        SendError::Refused { .. } => Kind::Refused,
        SendError::Busy { .. } => Kind::Busy,
        SendError::Incompatible { .. } | SendError::Protocol { .. } => Kind::ProtocolError,
        SendError::Full { .. } => Kind::Full,
        _ => Kind::Error,
    };
    let exception = convert(py, kind, &e);
    if let Some(stage) = e.timeout_stage() {
        let _ = exception.value(py).setattr("stage", stage.to_string());
    }
    exception
}

pub(crate) fn bind_error(py: Python<'_>, e: BindError) -> PyErr {
    let kind = match &e {
        BindError::InvalidName { .. } => Kind::InvalidName,
        BindError::AlreadyBound { .. } => Kind::AlreadyExists,
        BindError::RuntimeDir { .. } => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn recv_error(py: Python<'_>, e: RecvError) -> PyErr {
    let kind = match e {
        RecvError::Timeout => Kind::TimedOut,
        _ => Kind::Closed,
    };
    convert(py, kind, &e)
}

pub(crate) fn reply_error(py: Python<'_>, e: ReplyError) -> PyErr {
    let kind = match &e {
        ReplyError::SenderGone => Kind::SenderGone,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn create_error(py: Python<'_>, e: CreateError) -> PyErr {
    let kind = match &e {
        CreateError::InvalidName { .. } => Kind::InvalidName,
        CreateError::InvalidSize { .. } => Kind::InvalidArgument,
        CreateError::AlreadyExists { .. } => Kind::AlreadyExists,
        CreateError::NoSuchFile { .. } => Kind::NotFound,
        CreateError::NotAFile { .. } => Kind::InvalidArgument,
        CreateError::PermissionDenied { .. } | CreateError::OtherOwner { .. } => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn open_error(py: Python<'_>, e: OpenError) -> PyErr {
    let kind = match &e {
        OpenError::InvalidName { .. } => Kind::InvalidName,
        OpenError::NotFound { .. } => Kind::NotFound,
        OpenError::PermissionDenied { .. } | OpenError::OtherOwner { .. } => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // (the hand-over is Linux only)
pub(crate) fn handover_error(py: Python<'_>, e: HandoverError) -> PyErr {
    let kind = match &e {
        HandoverError::Malformed(_) => Kind::ProtocolError,
        HandoverError::PeerClosed => Kind::ReceiverDied,
        HandoverError::NoSuchProcess { .. } => Kind::NotFound,
        HandoverError::PermissionDenied(_) => Kind::PermissionDenied,
        // The socket's receive timeout passed (or a non-blocking socket
        // had no more of a section yet).
        HandoverError::Io(io) if io.kind() == io::ErrorKind::WouldBlock => Kind::TimedOut,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn list_error(py: Python<'_>, e: ListError) -> PyErr {
    convert(py, Kind::Error, &e)
}

pub(crate) fn remove_error(py: Python<'_>, e: RemoveError) -> PyErr {
    let kind = match &e {
        RemoveError::InvalidName { .. } => Kind::InvalidName,
        RemoveError::NotFound { .. } => Kind::NotFound,
        RemoveError::PermissionDenied { .. } => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn read_only_error(py: Python<'_>, e: ReadOnlyError) -> PyErr {
    convert(py, Kind::Error, &e)
}

/// Every way of failing to take inherited sections is `copydata.Error`:
/// the message says which (malformed or stale token, taken already).
pub(crate) fn inherit_error(py: Python<'_>, e: InheritError) -> PyErr {
    convert(py, Kind::Error, &e)
}

pub(crate) fn map_error(py: Python<'_>, e: MapError) -> PyErr {
    let kind = match &e {
        MapError::ZeroLength | MapError::OutOfRange { .. } => Kind::InvalidArgument,
        MapError::ReadOnly | MapError::Sealed => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn instance_error(py: Python<'_>, e: InstanceError) -> PyErr {
    let kind = match &e {
        InstanceError::InvalidAppId { .. } => Kind::InvalidName,
        InstanceError::TimedOut { .. } => Kind::TimedOut,
        InstanceError::Refused { .. } => Kind::Refused,
        InstanceError::Incompatible { .. } => Kind::ProtocolError,
        InstanceError::RuntimeDir { .. } => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn sync_open_error(py: Python<'_>, e: SyncOpenError) -> PyErr {
    let kind = match &e {
        SyncOpenError::InvalidName { .. } => Kind::InvalidName,
        SyncOpenError::InvalidLayout { .. } => Kind::InvalidArgument,
        SyncOpenError::NotFound { .. } => Kind::NotFound,
        SyncOpenError::PermissionDenied { .. } | SyncOpenError::OtherOwner { .. } => Kind::PermissionDenied,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn lock_error(py: Python<'_>, e: LockError) -> PyErr {
    let kind = match &e {
        LockError::TimedOut => Kind::TimedOut,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

pub(crate) fn wait_error(py: Python<'_>, e: WaitError) -> PyErr {
    let kind = match &e {
        WaitError::TimedOut => Kind::TimedOut,
        _ => Kind::Error,
    };
    convert(py, kind, &e)
}

/// An operating-system error of an operation that has no error type of
/// its own (setting an event).
pub(crate) fn io_error(py: Python<'_>, e: io::Error) -> PyErr {
    convert(py, Kind::Error, &e)
}
