//! Mailboxes where copydata has no backend: every operation fails with an
//! `Unsupported` error.

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{BindError, ListError, ReplyError, SendError};
use crate::mailbox::{MailboxInfo, MailboxOptions, Reply, Request};
use crate::name::Name;
use crate::section::Section;

/// Never constructed.
pub(crate) struct Responder {
    _private: (),
}

impl Responder {
    pub(crate) fn reply(self, _reply: Reply) -> Result<(), ReplyError> {
        unreachable!("no mailbox exists on this platform")
    }

    pub(crate) fn refuse(self, _reason: &str) {
        unreachable!("no mailbox exists on this platform")
    }
}

/// Never constructed.
#[derive(Debug)]
pub(crate) struct Mailbox {
    _private: (),
}

impl Mailbox {
    pub(crate) fn bind(
        _name: &Name,
        _options: &MailboxOptions,
        _tx: mpsc::Sender<Request>,
    ) -> Result<Mailbox, BindError> {
        Err(BindError::Unsupported)
    }
}

/// Never constructed.
#[derive(Debug)]
pub(crate) struct Sender {
    _private: (),
}

impl Sender {
    pub(crate) fn connect(_name: &Name) -> Result<Sender, SendError> {
        Err(SendError::Unsupported)
    }

    pub(crate) fn call(
        &mut self,
        _tag: u64,
        _data: &[u8],
        _sections: &[&Section],
        _timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        unreachable!("no mailbox exists on this platform")
    }
}

pub(crate) fn list() -> Result<Vec<MailboxInfo>, ListError> {
    Err(ListError::Unsupported)
}
