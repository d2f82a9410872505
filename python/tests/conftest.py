"""Fixtures: the `copydata` command-line tool as the Rust peer, unique object
names, child processes that never outlive their test, and a watchdog."""

import contextlib
import faulthandler
import itertools
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import copydata

REPO = pathlib.Path(__file__).resolve().parents[2]

# Every blocking step of a test is bounded; this bounds a whole test, in case
# something still hangs: the process dumps every thread's stack and exits.
WATCHDOG_SECONDS = 120

_counter = itertools.count()


@pytest.fixture(autouse=True, scope="session")
def sigint_raises_keyboard_interrupt():
    """The Ctrl-C tests need SIGINT to raise KeyboardInterrupt, here and in
    the children. A suite started with SIGINT ignored (`nohup ... &`, or `&`
    in a shell without job control) would have every one of them hang until
    the watchdog ends the run; a handler, unlike an ignored signal, is not
    inherited across exec, so the children get the default back too."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def copydata_bin():
    """The `copydata` tool built from this repository (COPYDATA_BIN, or
    target/debug/copydata as `cargo build` or `cargo test` leaves it)."""
    path = pathlib.Path(os.environ.get("COPYDATA_BIN", REPO / "target" / "debug" / "copydata"))
    if not path.is_file():
        pytest.fail(f"the copydata tool is not built: {path} is missing (run `cargo build -p copydata-cli`)")
    return str(path)


@pytest.fixture
def name():
    """A name no other test (or earlier run) uses; the prefix is the one the
    test script checks for leftovers."""
    return f"copydata-test-py-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


class Child:
    """A child process with its standard output read line by line, each read
    bounded by a timeout."""

    def __init__(self, args, **kwargs):
        self.args = args
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
        )
        self._buffer = b""

    @property
    def pid(self):
        return self.proc.pid

    def readline(self, timeout=10.0):
        """The next line of standard output, without its newline."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no line from {self.args} within {timeout} s")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")
                    raise EOFError(f"{self.args} closed its output; stderr: {err}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def finish(self, timeout=10.0):
        """Waits for the exit; returns (code, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self._buffer + out).decode(errors="replace"), err.decode(errors="replace")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def spawn():
    """Starts child processes; each is stopped (SIGTERM, then SIGKILL) when
    the test ends, whatever happened."""
    children = []

    def start(*args, **kwargs):
        child = Child([str(a) for a in args], **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


@pytest.fixture
def cli(copydata_bin, spawn):
    """Starts the copydata tool with arguments."""
    return lambda *args: spawn(copydata_bin, *args)


@pytest.fixture
def python_child(spawn):
    """Starts a Python script in a child process (this interpreter)."""
    return lambda script, *args: spawn(sys.executable, "-c", script, *args)


@contextlib.contextmanager
def _serving(name, handler):
    with copydata.Mailbox(name) as mailbox:
        thread = threading.Thread(target=mailbox.serve, args=(handler,))
        thread.start()
        try:
            yield mailbox
        finally:
            mailbox.close()
            thread.join(10.0)
    assert not thread.is_alive(), "serve() did not return once the mailbox closed"


@pytest.fixture
def serving():
    """`with serving(name, handler) as mailbox:` binds `name` and answers
    every message with `handler(tag, data)` on a thread until the block
    ends (then the mailbox is closed and the thread joined)."""
    return _serving
