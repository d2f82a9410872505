//! Mailboxes where copydata has no backend: every operation fails with an
//! `Unsupported` error. The types exist so the portable code compiles; none
//! is ever constructed.

use std::io;
use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::error::{BindError, ListError, Listing, ReplyError, SendError};
use crate::fast::region::Region;
use crate::fast::serve::Dispatch;
use crate::fast::{Bell, Park, Wait};
use crate::mailbox::{MailboxInfo, MailboxOptions, Reply};
use crate::name::Name;
use crate::section::Section;

/// Never constructed.
#[derive(Debug)]
pub(crate) enum NativeResponder {}

impl NativeResponder {
    pub(crate) fn reply(&self, _reply: Reply) -> Result<(), ReplyError> {
        match *self {}
    }
    pub(crate) fn refuse(&self, _reason: &str) {
        match *self {}
    }
}

/// Never constructed.
#[derive(Debug)]
pub(crate) enum Bells {}

impl Bells {
    pub(crate) fn ring(&self, _w: usize) {
        match *self {}
    }
    pub(crate) fn load(&self, _w: usize) -> u32 {
        match *self {}
    }
    pub(crate) fn wait(&self, _w: usize, _seen: u32, _timeout: Option<Duration>) -> bool {
        match *self {}
    }
}

/// Never constructed.
#[derive(Debug)]
pub(crate) enum Link {}

impl Link {
    pub(crate) fn region(&self) -> &Region {
        match *self {}
    }
    pub(crate) fn peer_pid(&self) -> Option<u32> {
        match *self {}
    }
    pub(crate) fn wake(&self, _bell: Bell) {
        match *self {}
    }
    pub(crate) fn park(&self, _bell: Bell, _seen: u32, _flag: u32, _deadline: Option<Instant>) -> Park {
        match *self {}
    }
    pub(crate) fn shutdown(&self) {
        match *self {}
    }
    pub(crate) const ATTACHMENTS_NEED_SENDER: bool = false;
    pub(crate) fn await_lingering(_deadline: Option<std::time::Instant>) -> bool {
        true
    }
    pub(crate) fn aux_len(_buffer: bool, _sections: &[&Section]) -> usize {
        0
    }
    pub(crate) fn send_aux(&self, _buffer: Option<&Section>, _sections: &[&Section]) -> io::Result<Vec<u8>> {
        match *self {}
    }
    pub(crate) fn recv_aux(
        &self,
        _inline: &[u8],
        _buffer: bool,
        _sections: usize,
    ) -> io::Result<(Option<Section>, Vec<Section>)> {
        match *self {}
    }
    pub(crate) fn oneshot(_data: &[u8]) -> io::Result<Section> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    pub(crate) fn frozen(_section: &Section) -> bool {
        false
    }
}

/// Never constructed.
#[derive(Debug)]
pub(crate) enum Mailbox {}

impl Mailbox {
    pub(crate) fn bind(_name: &Name, _options: &MailboxOptions) -> Result<(Mailbox, Arc<Dispatch>), BindError> {
        Err(BindError::Unsupported)
    }
}

pub(crate) fn connect(
    _name: &Name,
    _wait: Wait,
    _deadline: Instant,
    _owner: Option<u32>,
    _abort: Option<&crate::mailbox::Abort>,
) -> Result<(Link, u64), SendError> {
    Err(SendError::Unsupported)
}

/// Nothing to do: only Windows restricts which process may take the
/// foreground.
pub(crate) fn allow_foreground(_pid: u32) {}

pub(crate) fn list() -> Result<Vec<MailboxInfo>, ListError> {
    Err(ListError::Unsupported { what: Listing::Mailboxes })
}
