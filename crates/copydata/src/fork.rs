//! Copies made by `fork`.
//!
//! A child made by `fork` without `exec` gets a copy of everything its
//! parent had: descriptors that share the parent's open descriptions (its
//! sockets, its locks, its wake-up descriptors), the memory they map, but
//! none of its other threads. Dropping such a copy must not act for the
//! parent: not stop its mailbox or remove its name, not hang up its
//! connections, not answer or cancel its calls, and not join threads that
//! do not exist in the child. Every object whose drop would do one of those
//! remembers where it was [`Made`]; a copy in a forked child lets go of
//! what it holds without acting (the child's share of the memory and
//! descriptors goes when the child exits). Windows has no `fork`.
//!
//! Those objects: the Linux mailbox (its acceptor thread, stop descriptor
//! and name), a served mailbox's handler threads (`Server`,
//! `InstanceServer`, `AsyncMailbox`), a request or launch in hand, a
//! connection's sockets (`Disarmed`), loaned buffers and their release
//! (`Loan`, `ReplyLoan`, `AsyncLoan`, `Release`) and an async sender's
//! set-up under way. Named sections do the same by process id (`Holder`).

/// The process an object was made in, as far as `fork` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Made(u32);

impl Made {
    /// In this process.
    pub(crate) fn here() -> Made {
        Made(crate::sys::forks())
    }

    /// Whether this is a copy in a child made by `fork` after the object
    /// was made.
    pub(crate) fn copied_by_fork(self) -> bool {
        crate::sys::forks() != self.0
    }
}
