"""Type stubs of the native module (re-exported by the copydata package)."""

import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import final

from typing_extensions import Buffer

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
    "single_instance",
    "Primary",
    "Secondary",
    "Launch",
    "Mutex",
    "Event",
    "Shared",
    "SharedView",
    "Inheritance",
    "INHERIT_VAR",
    "inherited_sections",
    "remove",
    "send_section",
    "recv_section",
    "_sections",
    "_mailboxes",
    "_objects",
]

# What a `Mailbox.serve` handler may return: (code, data), a code, data
# (code 0) or None (code 0, no data).
_Reply = tuple[int, Buffer] | int | Buffer | None

def send(
    name: str,
    data: Buffer,
    tag: int = 0,
    timeout: float | None = None,
    sections: list[Section] | None = None,
) -> tuple[int, bytes]:
    """Sends `data` with `tag` (and `sections`) to the mailbox `name` and
    waits for the reply, at most `timeout` seconds (None: the set-up gives
    up after 10 s, then the reply is awaited as long as the receiver
    lives). Returns (code, data)."""

def send_to_window(
    data: Buffer,
    tag: int = 0,
    *,
    class_name: str | None = None,
    title: str | None = None,
    timeout: float | None = None,
) -> tuple[int, bytes]:
    """Sends a plain WM_COPYDATA to another program's window, found by
    class and/or title, and waits at most `timeout` seconds (None: as long
    as it takes). Returns (code, data). Windows only."""

@final
class Sender:
    """A connection to the mailbox `name`, kept for every call (much cheaper
    than `send`, which connects for each message). Messages of one Sender
    arrive in order while they go on one connection. Every wait gives way
    to Ctrl-C; after an interrupted call, or one whose reply did not come
    in time, the next one uses a new connection."""

    def __new__(
        cls,
        name: str,
        timeout: float | None = None,
        *,
        max_reply: int | None = None,
        park: bool = False,
        owner: int | None = None,
    ) -> Sender: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def receiver_pid(self) -> int | None: ...
    def send(
        self,
        data: Buffer,
        tag: int = 0,
        timeout: float | None = None,
        sections: list[Section] | None = None,
    ) -> tuple[int, bytes]:
        """Sends and waits for the reply, at most `timeout` seconds (None: as
        long as the receiver lives). Returns (code, data)."""
    def post(self, data: Buffer, tag: int = 0, timeout: float | None = None) -> None:
        """Posts (no reply awaited); waits for room in a full queue, at most
        `timeout` seconds (None: as long as it takes)."""
    def try_post(self, data: Buffer, tag: int = 0) -> None:
        """Posts if the queue has room now, else raises Full."""
    def flush(self, timeout: float | None = None) -> None:
        """Waits until the posts no longer need this process, at most
        `timeout` seconds; call it before exiting right after a post (on
        Windows a large post is pulled out of the sending process). Raises
        ReceiverDied when the receiver died with posts still queued (they
        are lost)."""
    def loan(self, size: int, timeout: float | None = None) -> Loan:
        """Lends `size` bytes of shared memory to write in place and send
        without a copy; waits at most `timeout` seconds for a free buffer
        (0: raises Full at once when none is free)."""
    def close(self) -> None: ...
    def __enter__(self) -> Sender: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

@final
class Loan:
    """Shared memory lent by `Sender.loan`: write it through the buffer
    protocol, release every buffer taken from it, then send or post it (the
    receiver reads it in place). Until then its Sender makes no other call;
    close() gives an unsent loan back."""

    def __len__(self) -> int: ...
    @property
    def lent(self) -> bool: ...
    def send(self, tag: int = 0, timeout: float | None = None) -> tuple[int, bytes]:
        """Sends and waits for the reply; the loan is gone afterwards."""
    def post(self, tag: int = 0, timeout: float | None = None) -> None:
        """Posts; on TimedOut nothing was sent and the loan is still out."""
    def try_post(self, tag: int = 0) -> None:
        """Posts if the queue has room now, else raises Full (the loan stays out)."""
    def close(self) -> None: ...
    def __enter__(self) -> Loan: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class ReplyLoan:
    """Shared memory lent by `Request.loan_reply` for a reply: write it
    through the buffer protocol, release every buffer taken from it, then
    answer with `request.reply(code, loan)` (the sender reads it in place).
    close() gives an unsent loan back."""

    def __len__(self) -> int: ...
    @property
    def lent(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> ReplyLoan: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class Request:
    """A received message, waiting for its answer (reply or refuse, once)."""

    @property
    def tag(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def expects_reply(self) -> bool: ...
    @property
    def sender_pid(self) -> int: ...
    @property
    def sender_uid(self) -> int | None: ...
    @property
    def sections(self) -> list[Section]: ...
    @property
    def answered(self) -> bool: ...
    def reply(self, code: int = 0, data: Buffer | ReplyLoan | None = None) -> None: ...
    def loan_reply(self, size: int) -> ReplyLoan:
        """Lends `size` bytes of shared memory for the reply (see ReplyLoan)."""
    def refuse(self, reason: str = "refused by the receiver") -> None: ...

@final
class Mailbox:
    """A bound mailbox; unbound by close() or at the end of a with block."""

    def __new__(
        cls,
        name: str,
        *,
        max_payload: int | None = None,
        max_connections: int | None = None,
        allow_uids: Sequence[int] | None = None,
    ) -> Mailbox: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def recv(self, timeout: float | None = None) -> Request: ...
    def serve(self, handler: Callable[[int, bytes], _Reply]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Mailbox: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    def __iter__(self) -> Iterator[Request]: ...
    def __next__(self) -> Request: ...

@final
class Section:
    """A section of shared memory (a file-mapping object); supports the
    buffer protocol: memoryview(section), numpy.frombuffer(section)."""

    @staticmethod
    def create(name: str, size: int) -> Section: ...
    @staticmethod
    def open(name: str, *, readonly: bool = False) -> Section: ...
    @staticmethod
    def anonymous(size: int) -> Section: ...
    @staticmethod
    def file(path: str | os.PathLike[str], *, readonly: bool = False) -> Section:
        """A section over the whole of the existing regular file `path`."""
    def read_only(self) -> Section:
        """A handle to the same memory that can only read it, to hand out."""
    @property
    def size_sealed(self) -> bool: ...
    @property
    def memory_backed(self) -> bool: ...
    @property
    def name(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def __len__(self) -> int: ...
    def map(self, offset: int = 0, length: int | None = None) -> memoryview: ...
    def close(self) -> None: ...
    def __enter__(self) -> Section: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class Inheritance:
    """Sections made ready for a child process (what `copydata.Popen` uses):
    put `token` in the child's environment under `INHERIT_VAR`, let it
    inherit `handles` (Linux: `pass_fds`; Windows: `STARTUPINFO`'s
    `handle_list`), then close this."""

    def __new__(cls, sections: Sequence[Section]) -> Inheritance: ...
    @property
    def token(self) -> str: ...
    @property
    def handles(self) -> list[int]: ...
    @property
    def closed(self) -> bool: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Inheritance: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

INHERIT_VAR: str
"""The environment variable that names a child's inherited sections."""

def _sections() -> list[tuple[str, int]]: ...
def _mailboxes() -> list[tuple[str, int]]: ...
def _objects() -> list[tuple[str, str]]: ...
def remove(name: str) -> None:
    """Removes the name of the named section `name` (`shm_unlink`);
    holders keep their memory. Not supported on Windows."""

def send_section(socket: socket.socket | int, section: Section) -> None:
    """Sends `section` over a connected Unix stream socket (Linux)."""

def recv_section(socket: socket.socket | int) -> Section:
    """Receives a section sent with `send_section` (Linux)."""

def inherited_sections() -> list[Section]:
    """Takes the sections the parent passed (`copydata.Popen`), in its
    order; [] if none. A second call raises `copydata.Error`."""

@final
class View:
    """The memory behind a Section.map memoryview."""

    @property
    def offset(self) -> int: ...
    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

def single_instance(
    app_id: str,
    *,
    args: Sequence[str] | None = None,
    data: Buffer | None = None,
    forward_env: Sequence[str] = ...,
    timeout: float | None = ...,
) -> Primary | Secondary:
    """Becomes the primary instance of `app_id` (a Primary), or hands this
    launch (args, default sys.argv[1:]; the working directory; the
    variables named in forward_env; data) to the running primary and
    returns its answer (a Secondary). timeout: 10 seconds unless given."""

@final
class Primary:
    """The running instance: receives later launches until close()."""

    def recv(self, timeout: float | None = None) -> Launch: ...
    @property
    def app_id(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Primary: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    def __iter__(self) -> Iterator[Launch]: ...
    def __next__(self) -> Launch: ...

@final
class Secondary:
    """This launch was handed to the running primary, which answered."""

    @property
    def code(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def primary_pid(self) -> int | None: ...

@final
class Launch:
    """A later launch, handed to the primary; answer it once."""

    @property
    def args(self) -> list[str]: ...
    @property
    def cwd(self) -> Path | None: ...
    @property
    def env(self) -> dict[str, str]: ...
    @property
    def data(self) -> bytes: ...
    @property
    def pid(self) -> int: ...
    @property
    def tag(self) -> int: ...
    @property
    def answered(self) -> bool: ...
    def answer(self, code: int = 0, data: Buffer | None = None) -> None: ...

@final
class Mutex:
    """A named mutex shared by processes, that survives its owner's death
    (the next holder sees `owner_died`). The thread that acquires it
    releases it; it is not recursive."""

    def __new__(cls, name: str) -> Mutex: ...
    @classmethod
    def open(cls, name: str) -> Mutex:
        """The existing mutex `name` (NotFound if no process holds one)."""
    @property
    def name(self) -> str: ...
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Takes the lock: waits as long as it takes (`timeout` None or -1),
        at most `timeout` seconds, or not at all; returns whether it got
        it."""
    def release(self) -> None: ...
    @property
    def owner_died(self) -> bool:
        """A holder died holding the lock, and nobody marked the state
        consistent since (this thread must hold the lock)."""
    def mark_consistent(self) -> None: ...
    def held_here(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Mutex: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

@final
class Shared:
    """A named block of `size` bytes shared by processes, initialised once
    (`init(memoryview)` runs in exactly one of the processes racing to
    create it), with a lock that reports a holder's death. A Rust
    `Shared<T>` with the same size, alignment and tag is the same object."""

    def __new__(
        cls,
        name: str,
        size: int,
        *,
        align: int = 1,
        tag: str = "bytes",
        init: Callable[[memoryview], object] | None = None,
    ) -> Shared: ...
    @classmethod
    def open(cls, name: str, *, tag: str = "bytes") -> Shared:
        """The existing value `name`, of the size it was made with."""
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def align(self) -> int: ...
    def __len__(self) -> int: ...
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...
    @property
    def owner_died(self) -> bool: ...
    def mark_consistent(self) -> None: ...
    def held_here(self) -> bool: ...
    def view(self) -> memoryview:
        """The bytes, writable: use them while holding the lock."""
    def close(self) -> None: ...
    def __enter__(self) -> memoryview: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

@final
class SharedView:
    """The memory behind a `Shared.view()` memoryview."""

    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class Event:
    """A named event shared by processes: manual-reset (stays set until
    reset) or auto-reset (wakes one waiter and resets itself)."""

    def __new__(cls, name: str, auto_reset: bool = False) -> Event: ...
    @classmethod
    def open(cls, name: str) -> Event:
        """The existing event `name` (NotFound if no process holds one)."""
    @property
    def name(self) -> str: ...
    @property
    def auto_reset(self) -> bool: ...
    def set(self) -> None: ...
    def reset(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool:
        """Waits until set, at most `timeout` seconds; returns whether it was."""
    def close(self) -> None: ...
    def __enter__(self) -> Event: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
