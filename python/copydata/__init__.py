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
    """No reply (or no message) in time.

    For a send, post, loan or flush, ``stage`` says what it was waiting
    for, and so whether the message went out: ``"connecting"`` (the
    connection's set-up) and ``"room"`` (room in the receiver's queue, or a
    buffer for a loan) sent nothing, so sending again cannot have it
    handled twice; ``"reply"``: the message was queued and may still be
    handled, its reply discarded; ``"flush"``: the posts stay queued.
    ``None`` for other time-outs (a receive, a lock, an event)."""

    stage: str | None = None


class Refused(Error):
    """The receiver refused the message: its handler raised or refused it,
    or dropped it without replying."""


class Busy(Refused):
    """The mailbox has as many senders connected as it takes, or its
    receiver could not make a connection just now (Linux: out of file
    descriptors or memory): no connection was made and nothing was sent.
    Try again later."""


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
    INHERIT_VAR,
    Event,
    Inheritance,
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
    Shared,
    SharedView,
    View,
    inherited_sections,
    recv_section,
    send,
    send_section,
    send_to_window,
    single_instance,
)

import os as _os  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
from typing import NamedTuple as _NamedTuple  # noqa: E402

from . import _copydata  # noqa: E402
from ._copydata import remove  # noqa: E402


class SectionInfo(_NamedTuple):
    """A live named section: its name and size in bytes."""

    name: str
    size: int


class MailboxInfo(_NamedTuple):
    """A live mailbox: its name and the process that bound it."""

    name: str
    pid: int


class ObjectInfo(_NamedTuple):
    """A live named mutex, event or shared value: its name and kind
    ("mutex", "event" or "shared")."""

    name: str
    kind: str


def sections() -> list[SectionInfo]:
    """This user's live named sections, sorted by name (`copydata ls`).
    On Linux, listing also removes what crashed last holders left in
    /dev/shm."""
    return [SectionInfo(*s) for s in _copydata._sections()]


def mailboxes() -> list[MailboxInfo]:
    """This user's live mailboxes, sorted by name."""
    return [MailboxInfo(*m) for m in _copydata._mailboxes()]


def objects() -> list[ObjectInfo]:
    """This user's live mutexes, events and shared values."""
    return [ObjectInfo(*o) for o in _copydata._objects()]


class Popen(_subprocess.Popen):
    """``subprocess.Popen`` that also hands ``sections`` to the child, which
    takes them with ``copydata.inherited_sections()``: the Win32 way of
    giving a child a file mapping (an inheritable handle and its value in
    the environment). Every other argument is ``subprocess.Popen``'s.

        >>> table = copydata.Section.anonymous(1 << 20)
        >>> memoryview(table)[:5] = b"hello"
        >>> child = copydata.Popen([sys.executable, "worker.py"],
        ...                        sections=[table.read_only()])
        >>> child.wait()

    Only the given sections reach the child, read-write or read-only as each
    handle is (``Section.read_only()`` makes a read-only hand-out; on Linux
    an anonymous section of which one was made can no longer be mapped
    writable by other processes, even through a writable handle), and
    nothing else of this process's: on Linux they go through ``pass_fds``,
    on Windows through ``STARTUPINFO``'s ``handle_list``.
    The child's environment is ``env`` (this process's if None) with
    ``copydata.INHERIT_VAR`` set; with no sections it is set to an empty
    list, so a token this process inherited is not passed on.
    """

    def __init__(self, args, *, sections=(), **kwargs):
        with Inheritance(list(sections)) as passed:
            env = kwargs.pop("env", None)
            env = dict(_os.environ if env is None else env)
            env[INHERIT_VAR] = passed.token
            handles = passed.handles
            if handles and _sys.platform == "win32":
                given = kwargs.get("startupinfo")
                info = given.copy() if given is not None else _subprocess.STARTUPINFO()
                attributes = dict(info.lpAttributeList or {})
                attributes["handle_list"] = list(attributes.get("handle_list", ())) + handles
                info.lpAttributeList = attributes
                kwargs["startupinfo"] = info
            elif handles:
                kwargs["pass_fds"] = tuple(kwargs.get("pass_fds", ())) + tuple(handles)
            super().__init__(args, env=env, **kwargs)

__all__ = [
    "send",
    "send_to_window",
    "Sender",
    "Loan",
    "Mailbox",
    "Request",
    "ReplyLoan",
    "Section",
    "View",
    "Popen",
    "sections",
    "mailboxes",
    "objects",
    "remove",
    "send_section",
    "recv_section",
    "SectionInfo",
    "MailboxInfo",
    "ObjectInfo",
    "Inheritance",
    "inherited_sections",
    "INHERIT_VAR",
    "single_instance",
    "Primary",
    "Secondary",
    "Launch",
    "Mutex",
    "Event",
    "Shared",
    "SharedView",
    "Error",
    "InvalidArgument",
    "InvalidName",
    "TooLarge",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "TimedOut",
    "Refused",
    "Busy",
    "ReceiverDied",
    "SenderGone",
    "Closed",
    "ProtocolError",
    "Full",
]
