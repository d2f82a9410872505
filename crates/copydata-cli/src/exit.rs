//! Exit codes, shared by every subcommand, and the mapping from library
//! errors to them.

use std::io;

use copydata::sync::{LockError, SyncOpenError, WaitError};
use copydata::{
    AccessError, BindError, CreateError, HandoverError, InheritError, InstanceError, MapError, NameError, OpenError,
    RemoveError, SendError,
};

pub const OK: u8 = 0;
pub const OTHER: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const TIMED_OUT: u8 = 4;
pub const PEER_DIED: u8 = 5;
pub const EXISTS: u8 = 6;
pub const REFUSED: u8 = 7;
pub const BUSY: u8 = 8;
/// Interrupted (Ctrl-C, SIGTERM, console close) before the command was
/// done: 128 + SIGINT, as the shell reports an interrupted command.
pub const INTERRUPTED: u8 = 130;

pub const HELP: &str = "\
Exit codes:
  0  ok
  1  other error
  2  usage error or invalid argument (bad name, size, range)
  3  no such object
  4  timed out
  5  peer died (killed, crashed or exited before replying)
  6  already exists
  7  refused or permission denied (including another user's object,
     writing a read-only object,
     another user's mailbox, a payload larger than the receiver takes,
     a receiver speaking another protocol version, and a message the
     receiver dropped unanswered, as one stopped while handling it does)
  8  busy: the mailbox has as many senders connected as it takes,
     or its receiver is out of descriptors or memory just now
     (try again later)
  130  interrupted before it was done: by Ctrl-C, and a lock, event,
     shared or demo command also by SIGTERM or console close (it lets go
     of its objects first, and demo stops its child processes, so nothing
     is left behind); a holder (--hold), listen and an instance primary
     stop with 0 instead

Output that stops being read (`| head -1`) ends a command quietly with 0.";

/// An error that is just the text the command words itself.
macro_rules! worded_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}
pub(crate) use worded_error;

worded_error!(
    /// A timeout the command words itself (exit code [`TIMED_OUT`]).
    TimedOut
);
worded_error!(
    /// A usage error found after parsing (a bad combination of arguments).
    Usage
);

/// The exit code for an error: the first error in the chain that has one.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(code) = code_of(cause) {
            return code;
        }
    }
    OTHER
}

fn code_of(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if e.is::<Usage>() || e.is::<NameError>() || e.is::<AccessError>() {
        return Some(USAGE);
    }
    if e.is::<TimedOut>() {
        return Some(TIMED_OUT);
    }
    if let Some(e) = e.downcast_ref::<OpenError>() {
        return Some(match e {
            OpenError::InvalidName { .. } => USAGE,
            OpenError::NotFound { .. } => NOT_FOUND,
            OpenError::PermissionDenied { .. } | OpenError::OtherOwner { .. } => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<CreateError>() {
        return Some(match e {
            CreateError::InvalidName { .. } | CreateError::InvalidSize { .. } => USAGE,
            CreateError::AlreadyExists { .. } => EXISTS,
            CreateError::PermissionDenied { .. } | CreateError::OtherOwner { .. } => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<MapError>() {
        return Some(match e {
            MapError::ZeroLength | MapError::OutOfRange { .. } => USAGE,
            MapError::ReadOnly | MapError::Sealed => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<RemoveError>() {
        return Some(match e {
            RemoveError::InvalidName { .. } => USAGE,
            RemoveError::NotFound { .. } => NOT_FOUND,
            RemoveError::PermissionDenied { .. } => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<HandoverError>() {
        return Some(match e {
            HandoverError::PeerClosed => PEER_DIED,
            HandoverError::NoSuchProcess { .. } => NOT_FOUND,
            HandoverError::PermissionDenied(_) => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<SendError>() {
        return Some(match e {
            SendError::InvalidName { .. } => USAGE,
            SendError::NoSuchMailbox { .. } => NOT_FOUND,
            SendError::TimedOut { .. } => TIMED_OUT,
            SendError::ReceiverDied { .. } => PEER_DIED,
            SendError::Busy { .. } => BUSY,
            SendError::Refused { .. } | SendError::PayloadTooLarge { .. } | SendError::Incompatible { .. } => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<BindError>() {
        return Some(match e {
            BindError::InvalidName { .. } => USAGE,
            BindError::AlreadyBound { .. } => EXISTS,
            BindError::RuntimeDir { .. } => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<InstanceError>() {
        return Some(match e {
            InstanceError::InvalidAppId { .. } => USAGE,
            InstanceError::TimedOut { .. } => TIMED_OUT,
            InstanceError::Refused { .. } | InstanceError::Incompatible { .. } | InstanceError::RuntimeDir { .. } => {
                REFUSED
            }
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<SyncOpenError>() {
        return Some(match e {
            SyncOpenError::InvalidName { .. } => USAGE,
            SyncOpenError::NotFound { .. } => NOT_FOUND,
            SyncOpenError::WrongKind { .. } | SyncOpenError::LayoutMismatch { .. } => REFUSED,
            SyncOpenError::PermissionDenied { .. } | SyncOpenError::OtherOwner { .. } => REFUSED,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<LockError>() {
        return Some(match e {
            LockError::TimedOut | LockError::WouldBlock => TIMED_OUT,
            _ => OTHER,
        });
    }
    if let Some(e) = e.downcast_ref::<WaitError>() {
        return Some(match e {
            WaitError::TimedOut => TIMED_OUT,
            _ => OTHER,
        });
    }
    if e.is::<InheritError>() {
        return Some(OTHER);
    }
    if let Some(e) = e.downcast_ref::<io::Error>() {
        return match e.kind() {
            io::ErrorKind::NotFound => Some(NOT_FOUND),
            io::ErrorKind::PermissionDenied => Some(REFUSED),
            io::ErrorKind::AlreadyExists => Some(EXISTS),
            io::ErrorKind::TimedOut => Some(TIMED_OUT),
            _ => None,
        };
    }
    None
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// The whole chain on one line: "context: cause: cause".
/// What to do about an error, when the command line has a way out (with a
/// leading space), or nothing.
pub fn hint(e: &anyhow::Error) -> &'static str {
    if e.chain().any(|c| matches!(c.downcast_ref::<OpenError>(), Some(OpenError::OtherOwner { .. }))) {
        " (to accept it anyway, pass --allow-other-owner)"
    } else {
        ""
    }
}

pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        // Library errors often repeat their source in their own message.
        if parts.iter().any(|p| p.contains(&s)) {
            continue;
        }
        // ... or only its words: "x: permission denied" then "Permission
        // denied (os error 13)" reads "x: permission denied (os error 13)".
        if let Some((words, code)) = s.split_once(" (os error ")
            && let Some(last) = parts.last_mut()
            && last.to_lowercase().ends_with(&words.to_lowercase())
        {
            last.push_str(&format!(" (os error {code}"));
            continue;
        }
        parts.push(s);
    }
    parts.join(": ").replace('\n', " ")
}

// (Unix: the codes are errno values, whose texts the test knows.)
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_each_cause_once() {
        let denied = anyhow::Error::new(io::Error::from_raw_os_error(13)).context("section \"x\": permission denied");
        let text = one_line(&denied);
        assert!(text.starts_with("section \"x\": permission denied (os error 13"), "{text}");
        assert_eq!(text.matches("ermission denied").count(), 1, "{text}");
        let missing = anyhow::Error::new(io::Error::from_raw_os_error(2)).context("reading f");
        assert_eq!(one_line(&missing), format!("reading f: {}", io::Error::from_raw_os_error(2)));
    }
}
