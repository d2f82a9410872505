"""Local inter-process communication in the Win32 tradition.

WM_COPYDATA-style messages (send a tagged block of bytes to a named mailbox
of another process and wait for its reply) and shared-memory sections
(file-mapping objects, reachable by name and wrapped by numpy without a
copy), on Linux and Windows. Python bindings of the copydata Rust crate.

    >>> import copydata
    >>> with copydata.Mailbox("my-app") as mailbox:     # the receiver
    ...     ...                                        # mailbox.serve(handler)
    >>> code, data = copydata.send("my-app", b"hello", tag=7, timeout=2.0)

Every error is a ``copydata.Error``; each kind is also the matching built-in
exception (``TimedOut`` is a ``TimeoutError``, ``NotFound`` a
``FileNotFoundError``, ``InvalidName`` a ``ValueError``, ...).
"""


class Error(Exception):
    """Base class of every copydata error."""


class InvalidArgument(Error, ValueError):
    """An argument copydata refuses: a size of zero, a range outside a
    section, a negative timeout."""


class InvalidName(InvalidArgument):
    """The name is not a copydata name: 1 to 200 ASCII letters, digits,
    '.', '_' and '-', not starting with '.'."""


class TooLarge(InvalidArgument):
    """The payload is larger than the receiving mailbox accepts."""


class NotFound(Error, FileNotFoundError):
    """No live mailbox or section has this name."""


class AlreadyExists(Error, FileExistsError):
    """A live section has this name, or a live process has bound this
    mailbox."""


class PermissionDenied(Error, PermissionError):
    """The operating system refused access, the object belongs to another
    user, or a read-only section was to be written."""


class TimedOut(Error, TimeoutError):
    """No reply (or no message) in time. A message that timed out may still
    be handled; its reply is discarded."""


class Refused(Error):
    """The receiver refused the message: its handler raised or refused it,
    or dropped it without replying."""


class ReceiverDied(Error, ConnectionResetError):
    """The receiving process exited, crashed or closed its mailbox before it
    replied."""


class SenderGone(Error, ConnectionResetError):
    """A reply found no one waiting: the sender timed out, exited or
    crashed."""


class Full(Error, BlockingIOError):
    """The receiver's queue has no room now (``Sender.try_post``): it has
    not caught up yet. Nothing was sent."""


class Closed(Error):
    """The mailbox or section was closed."""


class ProtocolError(Error):
    """The peer is not a compatible copydata process, or broke the
    protocol."""


from ._copydata import (  # noqa: E402
    Event,
    Launch,
    Loan,
    Mailbox,
    Mutex,
    Primary,
    ReplyLoan,
    Request,
    Secondary,
    Section,
    Sender,
    View,
    send,
    single_instance,
)

__all__ = [
    "send",
    "Sender",
    "Loan",
    "Mailbox",
    "Request",
    "ReplyLoan",
    "Section",
    "View",
    "single_instance",
    "Primary",
    "Secondary",
    "Launch",
    "Mutex",
    "Event",
    "Error",
    "InvalidArgument",
    "InvalidName",
    "TooLarge",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "TimedOut",
    "Refused",
    "ReceiverDied",
    "SenderGone",
    "Closed",
    "ProtocolError",
    "Full",
]
