//! # copydata
//!
//! Local inter-process communication in the Win32 tradition, native on Linux
//! and Windows: **sections** (file mappings: shared memory that is anonymous,
//! named, or backed by a file) handed to children by inheritance or to other
//! processes by handle, and **mailboxes**: `WM_COPYDATA`-style synchronous
//! messages with a reply and a timeout (see [`mailbox`]).
//!
//! ```
//! use copydata::Section;
//!
//! // An anonymous section, as CreateFileMapping(INVALID_HANDLE_VALUE, ...).
//! let section = Section::anonymous(64 * 1024)?;
//! // A view at any offset: no alignment needed.
//! let view = section.map_mut(12_345, 11)?;
//! view.write_at(0, b"hello world")?;
//! assert_eq!(section.map(12_345, 11)?.to_vec(), b"hello world");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Named sections are the platform's real named objects: on Linux the POSIX
//! shared-memory object `/NAME` (so `shm_open("/NAME")` in C or
//! `multiprocessing.shared_memory.SharedMemory("NAME")` in Python opens the
//! same memory), on Windows the file mapping `Local\NAME`. A named section
//! lives while any process holds it and disappears once the last holder is
//! gone, even if every holder was killed.
//!
//! - [`Section`]: create, open, map views, make read-only hand-outs.
//! - [`CommandExt`] / [`inherited_sections`]: pass sections to a child.
//! - [`os`]: hand a section to an unrelated running process
//!   (`SCM_RIGHTS` on Linux, `DuplicateHandle` on Windows).
//! - [`list`], [`remove`]: the named sections of this user.
//! - [`Mailbox`], [`send`], [`send_timeout`], [`Sender`]: messages, see
//!   [`mailbox`]; [`mailboxes`] lists the live ones.
//! - [`sync`]: a typed value shared by processes ([`sync::Shared`]), a mutex
//!   that survives its owner's death ([`sync::Mutex`]) and an event
//!   ([`sync::Event`]).
//! - [`SingleInstance`]: a program that runs once; later launches hand the
//!   running one their arguments and get its answer, see [`instance`].
//! - `typed` (cargo feature `serde`): serde types as messages and replies
//!   (`TypedSender`, `Mailbox::serve_typed`), encoded with postcard.
//! - `tokio` (cargo feature `tokio`): `send` and `post` as futures
//!   (`AsyncSender`) and a mailbox as a stream of requests
//!   (`AsyncMailbox`), for the tokio runtime.
//!
//! Every operation has its own error type (in [`error`]) whose variants say
//! what a caller can act on; unexpected OS failures keep the OS error.
//!
//! # Platform support
//!
//! Linux (kernel 5.1 or later) and Windows. On any other OS the crate
//! compiles and every constructor returns an `Unsupported` error.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
mod fast;
mod fork;
#[doc(hidden)]
pub mod fuzz;
mod inherit;
pub mod instance;
pub mod loan;
pub mod mailbox;
mod name;
pub mod os;
mod section;
pub mod sync;
mod sys;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod typed;
mod view;

pub use error::{
    AccessError, BindError, CreateError, HandoverError, InheritError, InstanceError, ListError, Listing, LockError,
    MapError, OpenError, ReadOnlyError, RecvError, RemoveError, ReplyError, SendError, SyncOpenError, TimeoutStage,
    WaitError,
};
pub use inherit::{CommandExt, INHERIT_VAR, Inheritance, inherited_sections};
pub use instance::SingleInstance;
pub use loan::{Loan, LoanView, PostLoanError, ReplyLoan};
pub use mailbox::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_SECTIONS, Mailbox, MailboxInfo, MailboxOptions, Message,
    Payload, Peer, Reply, Request, Sender, SenderOptions, Server, Wait, mailboxes, send, send_timeout,
};
pub use name::{MAX_NAME_LEN, NameError, validate_name};
pub use section::{Access, Section, SectionInfo, SectionOptions, list, remove};
pub use view::{View, ViewMut};

/// A deadline `timeout` from now; `None` (for ever) if the clock cannot
/// represent it (`Duration::MAX` means "wait for ever", not a panic).
pub(crate) fn deadline(timeout: std::time::Duration) -> Option<std::time::Instant> {
    std::time::Instant::now().checked_add(timeout)
}

/// Like [`deadline`], for a wait that needs an instant: one that cannot be
/// represented becomes a century from now.
pub(crate) fn deadline_or_far(timeout: std::time::Duration) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    let now = std::time::Instant::now();
    now.checked_add(timeout).or_else(|| now.checked_add(CENTURY)).unwrap_or(now)
}
