//! Error types: one per operation, each variant something a caller can act on.
//!
//! Unexpected operating-system failures keep the original [`io::Error`] (and
//! so the raw OS code) as their `source()`. Every error converts into an
//! [`io::Error`] with a matching [`io::ErrorKind`], for callers that just
//! want `?` into `io::Result`.

use std::io;

use crate::NameError;
#[cfg(feature = "serde")]
pub use crate::typed::{DecodeError, EncodeError, TypedRecvError, TypedReplyError, TypedSendError};

/// Creating a section failed: [`Section::create`](crate::Section::create),
/// [`Section::anonymous`](crate::Section::anonymous),
/// [`Section::open_or_create`](crate::Section::open_or_create),
/// [`Section::from_file`](crate::Section::from_file),
/// [`Section::from_path`](crate::Section::from_path).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The name is not a valid copydata name.
    #[error("invalid section name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// The size is zero, or too large for this platform.
    #[error("invalid size {size}: {reason}")]
    InvalidSize {
        /// The requested size in bytes.
        size: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A live section with this name already exists.
    #[error("section {name:?} already exists")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The shared-memory file system has less free space than the section
    /// needs (Linux: `/dev/shm`); touching the memory later would crash.
    #[error("section {name:?}: {size} bytes requested but only {available} are free in the shared-memory file system")]
    NoSpace {
        /// The name asked for.
        name: String,
        /// The requested size in bytes.
        size: u64,
        /// The free space, in bytes.
        available: u64,
    },
    /// The operating system refused access.
    #[error("{object}: permission denied")]
    PermissionDenied {
        /// What was being created (a section name or "anonymous section").
        object: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The section belongs to another user, or other users may write it
    /// (Linux): refused unless [`SectionOptions::allow_other_owner`](crate::SectionOptions::allow_other_owner).
    #[error("section {name:?} is not this user's alone: {reason}")]
    OtherOwner {
        /// The name.
        name: String,
        /// Who owns it or who may write it.
        reason: String,
    },
    /// Sections are not supported on this platform.
    #[error("sections are not supported on this platform")]
    Unsupported,
    /// [`Section::from_path`](crate::Section::from_path): no file has this
    /// path.
    #[error("{}: no such file", path.display())]
    NoSuchFile {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// [`Section::from_path`](crate::Section::from_path): the path is a
    /// directory, a pipe, a device or another object that is not a regular
    /// file.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: std::path::PathBuf,
    },
    /// Any other operating-system error.
    #[error("{object}: {source}")]
    Io {
        /// What was being created.
        object: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Opening a named section failed: [`Section::open`](crate::Section::open),
/// [`Section::open_read_only`](crate::Section::open_read_only).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The name is not a valid copydata name.
    #[error("invalid section name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// No live section has this name.
    #[error("no section named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The section exists but this process may not open it with the asked access.
    #[error("section {name:?}: permission denied")]
    PermissionDenied {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The section belongs to another user, or other users may write it
    /// (Linux): refused unless [`SectionOptions::allow_other_owner`](crate::SectionOptions::allow_other_owner).
    #[error("section {name:?} is not this user's alone: {reason}")]
    OtherOwner {
        /// The name.
        name: String,
        /// Who owns it or who may write it.
        reason: String,
    },
    /// Sections are not supported on this platform.
    #[error("sections are not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("section {name:?}: {source}")]
    Io {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Mapping a view failed: [`Section::map`](crate::Section::map),
/// [`Section::map_mut`](crate::Section::map_mut).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// A view of zero bytes was asked for.
    #[error("a view must be at least one byte long")]
    ZeroLength,
    /// The range does not lie inside the section.
    #[error("range {offset}..{offset}+{len} is outside the section of {size} bytes")]
    OutOfRange {
        /// The requested start.
        offset: u64,
        /// The requested length.
        len: u64,
        /// The section's size.
        size: u64,
    },
    /// A writable view of a read-only section was asked for (or the
    /// operating system refused write access to the handle).
    #[error("the section is read-only")]
    ReadOnly,
    /// A writable view of a writable section whose memory is sealed against
    /// new writable views (Linux: a read-only hand-out of an anonymous
    /// section seals it, see [`Section::read_only`](crate::Section::read_only));
    /// views mapped writable before the hand-out stay writable.
    #[error("the section's memory is sealed against new writable views (a read-only hand-out of it was made)")]
    Sealed,
    /// Any other operating-system error (e.g. out of address space).
    #[error("mapping failed: {0}")]
    Io(#[source] io::Error),
}

/// Reading or writing bytes of a [`View`](crate::View) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The range does not lie inside the view.
    #[error("range {offset}..{offset}+{len} is outside the view of {view_len} bytes")]
    OutOfRange {
        /// The requested start, relative to the view.
        offset: usize,
        /// The requested length.
        len: usize,
        /// The view's length.
        view_len: usize,
    },
    /// An atomic access at an address not aligned to the atomic's size (the
    /// address in memory: a view that starts at an unaligned offset of its
    /// section shifts which view offsets are aligned).
    #[error("offset {offset} of the view is not at an address aligned to {align} bytes")]
    Misaligned {
        /// The requested offset, relative to the view.
        offset: usize,
        /// The required alignment.
        align: usize,
    },
    /// A load asked for an ordering that only stores have
    /// ([`Release`](std::sync::atomic::Ordering::Release),
    /// [`AcqRel`](std::sync::atomic::Ordering::AcqRel)).
    #[error("{0:?} is not an ordering of a load (Relaxed, Acquire or SeqCst are)")]
    LoadOrdering(std::sync::atomic::Ordering),
    /// Not possible on this target (what, in the message).
    #[error("not supported here: {0}")]
    Unsupported(&'static str),
}

/// Making a read-only hand-out failed: [`Section::read_only`](crate::Section::read_only).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadOnlyError {
    /// Sections are not supported on this platform.
    #[error("sections are not supported on this platform")]
    Unsupported,
    /// The operating system refused (e.g. out of descriptors).
    #[error("read-only hand-out failed: {0}")]
    Io(#[source] io::Error),
}

/// Removing a section's name failed: [`remove`](crate::remove).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoveError {
    /// The name is not a valid copydata name.
    #[error("invalid section name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// No section has this name.
    #[error("no section named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The operating system refused.
    #[error("section {name:?}: permission denied")]
    PermissionDenied {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Names cannot be removed explicitly on this platform (Windows: a named
    /// mapping lives exactly as long as its handles).
    #[error("removing a section name is not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("section {name:?}: {source}")]
    Io {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What a listing that failed was listing (see [`ListError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Listing {
    /// Named sections: [`list`](crate::list).
    Sections,
    /// Mailboxes: [`mailboxes`](crate::mailboxes).
    Mailboxes,
    /// Mutexes, events and shared values:
    /// [`sync::objects`](crate::sync::objects).
    Objects,
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listing::Sections => "sections",
            Listing::Mailboxes => "mailboxes",
            Listing::Objects => "synchronisation objects",
        })
    }
}

/// Listing live named objects failed: [`list`](crate::list) (sections),
/// [`mailboxes`](crate::mailboxes) or
/// [`sync::objects`](crate::sync::objects). The error says which
/// ([`ListError::listing`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// Listing this kind of object is not supported on this platform.
    #[error("listing {what} is not supported on this platform")]
    Unsupported {
        /// What was to be listed.
        what: Listing,
    },
    /// The operating system refused or failed (for mailboxes on Linux,
    /// also a runtime directory that cannot be used).
    #[error("listing {what} failed: {source}")]
    Io {
        /// What was being listed.
        what: Listing,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ListError {
    /// What was being listed: sections, mailboxes or synchronisation
    /// objects.
    pub fn listing(&self) -> Listing {
        match self {
            ListError::Unsupported { what } | ListError::Io { what, .. } => *what,
        }
    }
}

/// Taking the sections a parent passed at spawn failed:
/// [`inherited_sections`](crate::inherited_sections).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InheritError {
    /// The environment token is not in copydata's format.
    #[error("malformed {var} token: {reason}")]
    Malformed {
        /// The environment variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The token was meant for another process (for example it was inherited
    /// through an intermediate process that did not pass the sections on), or
    /// the handle it names is not the section the parent passed.
    #[error("stale {var} token: {reason}")]
    Stale {
        /// The environment variable.
        var: &'static str,
        /// Why it does not apply to this process.
        reason: String,
    },
    /// The sections were already taken by an earlier call.
    #[error("the inherited sections were already taken")]
    AlreadyTaken,
    /// Sections are not supported on this platform.
    #[error("sections are not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("taking inherited sections failed: {0}")]
    Io(#[source] io::Error),
}

#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))] // used by the inheriting backends
impl InheritError {
    pub(crate) fn malformed(reason: impl Into<String>) -> InheritError {
        InheritError::Malformed { var: crate::INHERIT_VAR, reason: reason.into() }
    }

    pub(crate) fn stale(reason: impl Into<String>) -> InheritError {
        InheritError::Stale { var: crate::INHERIT_VAR, reason: reason.into() }
    }
}

/// Handing a section to another process failed (see [`crate::os`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// The peer sent something that is not a copydata section hand-over.
    #[error("malformed hand-over: {0}")]
    Malformed(String),
    /// The peer closed the channel before a section arrived.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The target process does not exist (or has exited).
    #[error("no process with id {pid}")]
    NoSuchProcess {
        /// The target's process id.
        pid: u32,
    },
    /// The operating system refused access to the target process.
    #[error("permission denied: {0}")]
    PermissionDenied(#[source] io::Error),
    /// Any other operating-system error.
    #[error("hand-over failed: {0}")]
    Io(#[source] io::Error),
}

/// Implements `From<E> for io::Error`: the OS error itself where there is
/// one, otherwise a new error of the kind the variant stands for.
macro_rules! into_io_error {
    ($ty:ty, |$e:ident| $kind:expr, $($io:pat => $src:expr),* $(,)?) => {
        impl From<$ty> for io::Error {
            fn from($e: $ty) -> io::Error {
                #[allow(unreachable_patterns)]
                match $e {
                    $($io => $src,)*
                    $e => io::Error::new($kind, $e),
                }
            }
        }
    };
}

into_io_error!(CreateError, |e| match &e {
    CreateError::InvalidName { .. } | CreateError::InvalidSize { .. } => io::ErrorKind::InvalidInput,
    CreateError::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
    CreateError::NoSpace { .. } => io::ErrorKind::StorageFull,
    CreateError::Unsupported => io::ErrorKind::Unsupported,
    CreateError::OtherOwner { .. } => io::ErrorKind::PermissionDenied,
    CreateError::NotAFile { .. } => io::ErrorKind::InvalidInput,
    _ => io::ErrorKind::Other,
}, CreateError::Io { source, .. } => source, CreateError::PermissionDenied { source, .. } => source,
    CreateError::NoSuchFile { source, .. } => source);

into_io_error!(OpenError, |e| match &e {
    OpenError::InvalidName { .. } => io::ErrorKind::InvalidInput,
    OpenError::NotFound { .. } => io::ErrorKind::NotFound,
    OpenError::Unsupported => io::ErrorKind::Unsupported,
    OpenError::OtherOwner { .. } => io::ErrorKind::PermissionDenied,
    _ => io::ErrorKind::Other,
}, OpenError::Io { source, .. } => source, OpenError::PermissionDenied { source, .. } => source);

into_io_error!(MapError, |e| match &e {
    MapError::ZeroLength | MapError::OutOfRange { .. } => io::ErrorKind::InvalidInput,
    MapError::ReadOnly | MapError::Sealed => io::ErrorKind::PermissionDenied,
    _ => io::ErrorKind::Other,
}, MapError::Io(source) => source);

into_io_error!(AccessError, |e| io::ErrorKind::InvalidInput,);

into_io_error!(ReadOnlyError, |e| match &e {
    ReadOnlyError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::Other,
}, ReadOnlyError::Io(source) => source);

into_io_error!(RemoveError, |e| match &e {
    RemoveError::InvalidName { .. } => io::ErrorKind::InvalidInput,
    RemoveError::NotFound { .. } => io::ErrorKind::NotFound,
    RemoveError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::Other,
}, RemoveError::Io { source, .. } => source, RemoveError::PermissionDenied { source, .. } => source);

into_io_error!(ListError, |e| io::ErrorKind::Unsupported, ListError::Io { source, .. } => source);

into_io_error!(InheritError, |e| match &e {
    InheritError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::InvalidData,
}, InheritError::Io(source) => source);

into_io_error!(HandoverError, |e| match &e {
    HandoverError::Malformed(_) => io::ErrorKind::InvalidData,
    HandoverError::PeerClosed => io::ErrorKind::UnexpectedEof,
    HandoverError::NoSuchProcess { .. } => io::ErrorKind::NotFound,
    _ => io::ErrorKind::Other,
}, HandoverError::Io(source) => source, HandoverError::PermissionDenied(source) => source);

/// Binding a mailbox failed: [`Mailbox::bind`](crate::Mailbox::bind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The name is not a valid copydata name.
    #[error("invalid mailbox name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// A live process has bound this name.
    #[error("mailbox {name:?} is already bound{}", pid.map(|p| format!(" by process {p}")).unwrap_or_default())]
    AlreadyBound {
        /// The name asked for.
        name: String,
        /// The process that holds it, when known.
        pid: Option<u32>,
    },
    /// The per-user runtime directory is missing and cannot be made, or is
    /// not safe (owned by someone else, or open to other users).
    #[error("runtime directory {path}: {reason}")]
    RuntimeDir {
        /// The directory.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Mailboxes are not supported on this platform.
    #[error("mailboxes are not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("mailbox {name:?}: {source}")]
    Io {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Sending a message failed: [`send`](crate::send), [`Sender`](crate::Sender).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The name is not a valid copydata name.
    #[error("invalid mailbox name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// No live mailbox has this name.
    #[error("no mailbox named {name:?}")]
    NoSuchMailbox {
        /// The name asked for.
        name: String,
    },
    /// The time allowed ran out. `stage` says what was being waited for,
    /// and so whether the message went out: during the connection's set-up
    /// ([`TimeoutStage::Connecting`]) or while waiting for room in the
    /// receiver's queue ([`TimeoutStage::Room`]: a post, a send into a full
    /// queue, a loan waiting for a buffer) nothing was sent, and sending
    /// again cannot have it handled twice; while waiting for the reply
    /// ([`TimeoutStage::Reply`]) the message was queued and may still be
    /// handled, its reply discarded and never taken for the answer to a
    /// later send. [`TimeoutStage::message_sent`] tells the two apart.
    /// On Linux a message that carries descriptors (sections, a new buffer)
    /// also waits while this user has as many descriptors in flight as its
    /// limit of open files (receivers of this user not taking theirs); a
    /// time-out for that reason (stage `Room`: nothing was sent) is logged
    /// (`log::warn!`) with its cause.
    #[error("timed out after {timeout:?} {}", stage.waiting_on(name))]
    TimedOut {
        /// The name.
        name: String,
        /// The time allowed.
        timeout: std::time::Duration,
        /// What was being waited for when the time ran out.
        stage: TimeoutStage,
    },
    /// The receiving process exited, crashed or closed the mailbox before it
    /// replied (or, for a post, while the post waited for room).
    #[error("the receiver of mailbox {name:?} is gone (it exited, crashed or closed the mailbox)")]
    ReceiverDied {
        /// The name.
        name: String,
    },
    /// The payload is larger than the receiver (or this platform) accepts.
    #[error("payload of {size} bytes is too large for mailbox {name:?} (at most {max})")]
    PayloadTooLarge {
        /// The name.
        name: String,
        /// The payload's size.
        size: u64,
        /// The largest accepted size.
        max: u64,
    },
    /// The receiver refused the message (another user, or its handler
    /// refused or dropped it without replying).
    #[error("mailbox {name:?} refused the message: {reason}")]
    Refused {
        /// The name.
        name: String,
        /// Why, as far as it is known.
        reason: String,
    },
    /// The mailbox has as many senders connected as it takes
    /// ([`MailboxOptions::max_connections`](crate::MailboxOptions::max_connections)),
    /// or its process could not make a connection's resources just now
    /// (out of file descriptors or memory): no connection was made and
    /// nothing was sent. A connection frees up
    /// when one of its senders closes; try again later.
    #[error("mailbox {name:?} is busy: {reason}")]
    Busy {
        /// The name.
        name: String,
        /// The receiver's words (its limit).
        reason: String,
    },
    /// The receiver speaks another version of the copydata protocol (or is
    /// not a copydata mailbox at all).
    #[error("mailbox {name:?} is an incompatible peer: {reason}")]
    Incompatible {
        /// The name.
        name: String,
        /// What did not match.
        reason: String,
    },
    /// The receiver broke the protocol (for example it wrote garbage into the
    /// shared region); the connection was dropped.
    #[error("mailbox {name:?} broke the protocol: {reason}")]
    Protocol {
        /// The name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// [`Sender::try_post`](crate::Sender::try_post) found the connection's
    /// queue full, or [`Sender::try_loan`](crate::Sender::try_loan) found
    /// every loan buffer of the connection still lent or held by the
    /// receiver: the receiver has not caught up yet. Nothing was sent.
    #[error("the queue to mailbox {name:?} is full")]
    Full {
        /// The name.
        name: String,
    },
    /// Mailboxes are not supported on this platform.
    #[error("mailboxes are not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("mailbox {name:?}: {source}")]
    Io {
        /// The name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl SendError {
    /// What a [`SendError::TimedOut`] was waiting for when the time ran
    /// out; `None` for every other error.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let mut sender = copydata::Sender::unconnected("jobs", &copydata::SenderOptions::new())?;
    /// let reply = loop {
    ///     match sender.send_timeout(1, b"run job 7", Duration::from_secs(1)) {
    ///         // Nothing went out: sending again cannot run the job twice.
    ///         Err(e) if e.timeout_stage().is_some_and(|s| !s.message_sent()) => continue,
    ///         other => break other?,
    ///     }
    /// };
    /// # Ok::<(), copydata::SendError>(())
    /// ```
    pub fn timeout_stage(&self) -> Option<TimeoutStage> {
        match self {
            SendError::TimedOut { stage, .. } => Some(*stage),
            _ => None,
        }
    }
}

/// What a send was waiting for when its time ran out
/// ([`SendError::TimedOut`]): whether the message had gone out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutStage {
    /// Setting up the connection (the receiver is stopped, wedged or too
    /// busy to answer the set-up): nothing was sent.
    Connecting,
    /// Room in the receiver's queue: a free place in the connection's
    /// queue, a buffer of its pool (a loan, a large payload) or, on Linux,
    /// room for descriptors in flight. The receiver had not caught up;
    /// nothing was sent (nor lent), and the connection is kept.
    Room,
    /// The reply: the message was queued and may still be handled (its
    /// reply is then discarded). Also every time-out of a plain
    /// `WM_COPYDATA` (Windows: `os::windows::send_to_window`),
    /// where `SendMessageTimeoutW` does not say whether the window's
    /// thread took the message before the time ran out.
    Reply,
    /// [`Sender::flush_timeout`](crate::Sender::flush_timeout): the
    /// receiver taking what was posted. The posts were queued and stay so
    /// (they may still be handled); the flush itself sent nothing.
    Flush,
}

impl TimeoutStage {
    /// Whether the message had gone out when the time ran out
    /// ([`Reply`](Self::Reply), [`Flush`](Self::Flush)): it may then still
    /// be handled. `false` ([`Connecting`](Self::Connecting),
    /// [`Room`](Self::Room)): nothing was sent, so sending it again cannot
    /// have it handled twice.
    pub fn message_sent(self) -> bool {
        match self {
            TimeoutStage::Connecting | TimeoutStage::Room => false,
            TimeoutStage::Reply | TimeoutStage::Flush => true,
        }
    }

    /// The end of [`SendError::TimedOut`]'s message: what was waited for,
    /// of the mailbox (or window) `name`.
    fn waiting_on(self, name: &str) -> String {
        match self {
            TimeoutStage::Connecting => format!("connecting to mailbox {name:?}"),
            TimeoutStage::Room => format!("waiting for room in the queue of mailbox {name:?}"),
            TimeoutStage::Reply => format!("waiting for the reply of mailbox {name:?}"),
            TimeoutStage::Flush => format!("waiting for mailbox {name:?} to take what was posted"),
        }
    }
}

impl std::fmt::Display for TimeoutStage {
    /// One word: `connecting`, `room`, `reply` or `flush`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutStage::Connecting => "connecting",
            TimeoutStage::Room => "room",
            TimeoutStage::Reply => "reply",
            TimeoutStage::Flush => "flush",
        })
    }
}

/// Receiving from a mailbox failed: [`Mailbox::recv`](crate::Mailbox::recv).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// No message arrived in time.
    #[error("no message arrived in time")]
    Timeout,
    /// The mailbox is closed.
    #[error("the mailbox is closed")]
    Closed,
}

/// Replying failed: [`Request::reply`](crate::Request::reply).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The sender is gone: it exited, crashed or dropped its connection
    /// (for example after its timeout). (A message taken before its
    /// mailbox was dropped can still be answered: its connection ends once
    /// it is.) `Ok` from a reply means it was
    /// queued for a sender that was there: one that dies at that moment
    /// never reads it, and one that timed out but still holds its
    /// connection discards it.
    #[error("the sender is gone")]
    SenderGone,
    /// Any other operating-system error.
    #[error("replying failed: {0}")]
    Io(#[source] io::Error),
}

into_io_error!(BindError, |e| match &e {
    BindError::InvalidName { .. } => io::ErrorKind::InvalidInput,
    BindError::AlreadyBound { .. } => io::ErrorKind::AddrInUse,
    BindError::RuntimeDir { .. } => io::ErrorKind::PermissionDenied,
    BindError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::Other,
}, BindError::Io { source, .. } => source);

into_io_error!(SendError, |e| match &e {
    SendError::InvalidName { .. } => io::ErrorKind::InvalidInput,
    SendError::NoSuchMailbox { .. } => io::ErrorKind::NotFound,
    SendError::TimedOut { .. } => io::ErrorKind::TimedOut,
    SendError::ReceiverDied { .. } => io::ErrorKind::ConnectionReset,
    SendError::PayloadTooLarge { .. } => io::ErrorKind::InvalidInput,
    SendError::Refused { .. } => io::ErrorKind::PermissionDenied,
    SendError::Busy { .. } => io::ErrorKind::ResourceBusy,
    SendError::Incompatible { .. } => io::ErrorKind::Unsupported,
    SendError::Protocol { .. } => io::ErrorKind::InvalidData,
    SendError::Full { .. } => io::ErrorKind::WouldBlock,
    SendError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::Other,
}, SendError::Io { source, .. } => source);

into_io_error!(RecvError, |e| match &e {
    RecvError::Timeout => io::ErrorKind::TimedOut,
    RecvError::Closed => io::ErrorKind::BrokenPipe,
},);

into_io_error!(ReplyError, |e| io::ErrorKind::BrokenPipe, ReplyError::Io(source) => source);

/// Acquiring a single instance failed:
/// [`SingleInstance::acquire`](crate::instance::SingleInstance::acquire).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// The app id is not a valid copydata name.
    #[error("invalid app id {app_id:?}: {reason}")]
    InvalidAppId {
        /// The refused app id.
        app_id: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// The primary did not take this launch and answer it in time (it is
    /// stopped or hung). The launch may still be handled later.
    #[error("the primary instance of {app_id:?} did not answer within {timeout:?}")]
    TimedOut {
        /// The app id.
        app_id: String,
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// The primary refused the launch (its handler panicked, or the launch
    /// was too large or malformed for it).
    #[error("the primary instance of {app_id:?} refused the launch: {reason}")]
    Refused {
        /// The app id.
        app_id: String,
        /// Why, as far as it is known.
        reason: String,
    },
    /// The primary speaks another version of copydata (or the name is held
    /// by something that is not a copydata instance).
    #[error("the primary instance of {app_id:?} is an incompatible peer: {reason}")]
    Incompatible {
        /// The app id.
        app_id: String,
        /// What did not match.
        reason: String,
    },
    /// The per-user runtime directory is missing and cannot be made, or is
    /// not safe (Linux).
    #[error("runtime directory {path}: {reason}")]
    RuntimeDir {
        /// The directory.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Single instances are not supported on this platform.
    #[error("single instances are not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("instance {app_id:?}: {source}")]
    Io {
        /// The app id.
        app_id: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl InstanceError {
    /// The error for a failed bind other than "already bound".
    pub(crate) fn from_bind(app: &crate::name::Name, e: BindError) -> InstanceError {
        let app_id = app.to_string();
        match e {
            BindError::RuntimeDir { path, reason } => InstanceError::RuntimeDir { path, reason },
            BindError::Unsupported => InstanceError::Unsupported,
            BindError::Io { source, .. } => InstanceError::Io { app_id, source },
            other => InstanceError::Io { app_id, source: io::Error::other(other) },
        }
    }
}

into_io_error!(InstanceError, |e| match &e {
    InstanceError::InvalidAppId { .. } => io::ErrorKind::InvalidInput,
    InstanceError::TimedOut { .. } => io::ErrorKind::TimedOut,
    InstanceError::Refused { .. } | InstanceError::RuntimeDir { .. } => io::ErrorKind::PermissionDenied,
    InstanceError::Incompatible { .. } | InstanceError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::Other,
}, InstanceError::Io { source, .. } => source);

/// Opening or creating a named [`Mutex`](crate::sync::Mutex),
/// [`Event`](crate::sync::Event) or [`Shared`](crate::sync::Shared) value
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncOpenError {
    /// The name is not a valid copydata name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// No process holds an object of this name and kind (or, for a shared
    /// value opened without an initialiser, it is not initialised yet).
    #[error("no object named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is held by an object of another kind (an auto-reset event
    /// opened as manual-reset, say).
    #[error("{name:?} is {reason}")]
    WrongKind {
        /// The name.
        name: String,
        /// What the object is.
        reason: String,
    },
    /// The object belongs to another user, or other users may write it
    /// (Linux): never trusted.
    #[error("{name:?} is not this user's alone: {reason}")]
    OtherOwner {
        /// The name.
        name: String,
        /// Who owns it or who may write it.
        reason: String,
    },
    /// A shared value of this name has another size, alignment or type tag.
    #[error("shared value {name:?} does not match this type: {reason}")]
    LayoutMismatch {
        /// The name.
        name: String,
        /// What differs.
        reason: String,
    },
    /// The OS refused access.
    #[error("{name:?}: permission denied")]
    PermissionDenied {
        /// The name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// [`SharedBytes`](crate::sync::SharedBytes): a size or alignment no
    /// value can have (an alignment that is not a power of two or is above
    /// 4096, a size too large for this process).
    #[error("shared value {name:?}: {reason}")]
    InvalidLayout {
        /// The value's name.
        name: String,
        /// What is wrong with the layout.
        reason: String,
    },
    /// The shared-memory file system has less free space than the object
    /// needs (Linux: `/dev/shm`, for a large shared value).
    #[error("{name:?}: {size} bytes requested but only {available} are free in the shared-memory file system")]
    NoSpace {
        /// The name.
        name: String,
        /// The object's size in bytes.
        size: u64,
        /// The free space, in bytes.
        available: u64,
    },
    /// The initialiser given to
    /// [`SharedBytes::open_or_create_with`](crate::sync::SharedBytes::open_or_create_with)
    /// failed: the value stays uninitialised, for the next opener to
    /// initialise.
    #[error("initialising {name:?} failed: {source}")]
    InitFailed {
        /// The value's name.
        name: String,
        /// The initialiser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Not supported on this platform.
    #[error("synchronisation objects are not supported on this platform")]
    Unsupported,
    /// Any other operating-system error.
    #[error("{name:?}: {source}")]
    Io {
        /// The name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Taking a lock failed: [`Mutex::lock`](crate::sync::Mutex::lock) and
/// friends, [`Shared::lock`](crate::sync::Shared::lock).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock was not free within the timeout.
    #[error("the lock was not free in time")]
    TimedOut,
    /// `try_lock`: the lock is held right now.
    #[error("the lock is held")]
    WouldBlock,
    /// This thread already holds the lock (the mutex is not recursive).
    #[error("this thread already holds the lock")]
    WouldDeadlock,
    /// Any other operating-system error.
    #[error("locking failed: {0}")]
    Io(#[source] io::Error),
}

/// Waiting for an [`Event`](crate::sync::Event) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The event was not set within the timeout.
    #[error("the event was not set in time")]
    TimedOut,
    /// Any other operating-system error.
    #[error("waiting failed: {0}")]
    Io(#[source] io::Error),
}

into_io_error!(SyncOpenError, |e| match &e {
    SyncOpenError::InvalidName { .. } | SyncOpenError::InvalidLayout { .. } => io::ErrorKind::InvalidInput,
    SyncOpenError::NotFound { .. } => io::ErrorKind::NotFound,
    SyncOpenError::WrongKind { .. } | SyncOpenError::LayoutMismatch { .. } => io::ErrorKind::InvalidData,
    SyncOpenError::OtherOwner { .. } => io::ErrorKind::PermissionDenied,
    SyncOpenError::NoSpace { .. } => io::ErrorKind::StorageFull,
    SyncOpenError::Unsupported => io::ErrorKind::Unsupported,
    _ => io::ErrorKind::Other,
}, SyncOpenError::Io { source, .. } => source, SyncOpenError::PermissionDenied { source, .. } => source);

into_io_error!(LockError, |e| match &e {
    LockError::TimedOut => io::ErrorKind::TimedOut,
    LockError::WouldBlock => io::ErrorKind::WouldBlock,
    LockError::WouldDeadlock => io::ErrorKind::Deadlock,
    _ => io::ErrorKind::Other,
}, LockError::Io(source) => source);

into_io_error!(WaitError, |e| match &e {
    WaitError::TimedOut => io::ErrorKind::TimedOut,
    _ => io::ErrorKind::Other,
}, WaitError::Io(source) => source);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_time_out_says_what_it_was_waiting_for() {
        let timeout = std::time::Duration::from_secs(1);
        let at = |stage| SendError::TimedOut { name: "x".into(), timeout, stage };
        let cases = [
            (TimeoutStage::Connecting, "connecting to mailbox \"x\"", false, "connecting"),
            (TimeoutStage::Room, "waiting for room in the queue of mailbox \"x\"", false, "room"),
            (TimeoutStage::Reply, "waiting for the reply of mailbox \"x\"", true, "reply"),
            (TimeoutStage::Flush, "waiting for mailbox \"x\" to take what was posted", true, "flush"),
        ];
        for (stage, waiting, sent, word) in cases {
            let e = at(stage);
            assert_eq!(e.to_string(), format!("timed out after 1s {waiting}"));
            assert_eq!(e.timeout_stage(), Some(stage));
            assert_eq!(stage.message_sent(), sent, "{stage:?}");
            assert_eq!(stage.to_string(), word);
            // An io::Error keeps the kind and the words.
            let io = io::Error::from(e);
            assert_eq!(io.kind(), io::ErrorKind::TimedOut);
            assert_eq!(io.to_string(), format!("timed out after 1s {waiting}"));
        }
        assert_eq!(SendError::Full { name: "x".into() }.timeout_stage(), None);
    }

    #[test]
    fn a_list_error_says_what_was_being_listed() {
        let e = ListError::Io { what: Listing::Mailboxes, source: io::Error::other("/run/x: cannot create it") };
        assert_eq!(e.to_string(), "listing mailboxes failed: /run/x: cannot create it");
        assert_eq!(e.listing(), Listing::Mailboxes);
        // The OS error stays the source (and is what an io::Error keeps).
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()).as_deref(), Some("/run/x: cannot create it"));
        assert_eq!(io::Error::from(e).to_string(), "/run/x: cannot create it");
        let e = ListError::Unsupported { what: Listing::Objects };
        assert_eq!(e.to_string(), "listing synchronisation objects is not supported on this platform");
        assert_eq!(
            ListError::Io { what: Listing::Sections, source: io::Error::other("x") }.listing(),
            Listing::Sections
        );
    }
}
