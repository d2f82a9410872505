"""Ctrl-C during long waits, and arguments at the edges: unbounded
timeouts, closed, zero-dimensional and non-contiguous buffers, errno."""

import errno
import os
import signal
import socket
import sys
import threading
import time

import pytest

import copydata


class Interrupted(Exception):
    pass


def _interrupted_within(call, after=0.5):
    """Runs `call` with a SIGINT sent after `after` s. Returns (what the
    call raised or returned, how long after the signal its handler ran)."""
    ran = []

    def handler(signum, frame):
        ran.append(time.monotonic())
        raise Interrupted()

    old = signal.signal(signal.SIGINT, handler)
    sent = []
    timer = threading.Timer(after, lambda: (sent.append(time.monotonic()), os.kill(os.getpid(), signal.SIGINT)))
    timer.start()
    try:
        try:
            try:
                outcome = call()
            except BaseException as e:  # noqa: BLE001
                outcome = e
            timer.join()
            time.sleep(0.05)  # (a handler still pending runs here)
        except Interrupted:
            pass  # it ran only once the call was over
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    delay = ran[0] - sent[0] if ran and sent else None
    return outcome, delay


def _hold_one_request(mailbox, held_for, got):
    request = mailbox.recv(timeout=10.0)
    got.append(request)
    time.sleep(held_for)
    request.refuse("late")


@pytest.mark.parametrize("how", ["send", "Sender.send"])
def test_a_send_with_sections_gives_way_to_ctrl_c(name, how):
    # A send that carries sections, without a timeout, to a receiver that
    # holds the message: Ctrl-C is seen at once, not once it answers.
    with copydata.Mailbox(name) as mailbox, copydata.Section.anonymous(4096) as section:
        got = []
        receiver = threading.Thread(target=_hold_one_request, args=(mailbox, 4.0, got))
        receiver.start()
        sender = copydata.Sender(name) if how == "Sender.send" else None
        try:
            if sender is None:
                outcome, delay = _interrupted_within(lambda: copydata.send(name, b"x", sections=[section]))
            else:
                outcome, delay = _interrupted_within(lambda: sender.send(b"x", sections=[section]))
        finally:
            receiver.join(10.0)
            if sender is not None:
                sender.close()
        assert isinstance(outcome, Interrupted) and delay < 1.0, (
            f"the call ended with {outcome!r}; Ctrl-C was handled {delay:.1f} s after it came"
        )


def _handover_interrupted(call, unblock):
    """Runs `call` (a hand-over blocked on its peer) with a SIGINT sent
    after 0.3 s, as `_interrupted_within`; if it is still blocked 8 s
    later, `unblock` ends it (so that a call deaf to Ctrl-C fails the test
    rather than hang it)."""
    fallback = threading.Timer(8.0, unblock)
    fallback.start()
    try:
        outcome, delay = _interrupted_within(call, after=0.3)
    finally:
        fallback.cancel()
        fallback.join()
    assert isinstance(outcome, Interrupted) and delay is not None and delay < 2.0, (
        f"the call ended with {outcome!r}; Ctrl-C was handled {delay} s after it came"
    )


@pytest.mark.parametrize("cut", ["in the header", "in the name"])
def test_recv_section_gives_way_to_ctrl_c_part_way_through_a_frame(cut):
    # A peer that stops part-way through a frame: the read of the rest
    # waits, and Ctrl-C ends that wait too (not only the wait for the
    # frame's first byte).
    a, b = socket.socketpair()
    with a, b:
        if cut == "in the header":
            b.sendall(b"CDS1\x00")
        else:
            # A whole header announcing a 10-byte name, with a descriptor,
            # then only 3 bytes of the name.
            fd = os.memfd_create("copydata-test-py-cut")
            try:
                os.ftruncate(fd, 4096)
                header = b"CDS1" + bytes([2]) + (4096).to_bytes(8, "little") + bytes([10])
                socket.send_fds(b, [header + b"abc"], [fd])
            finally:
                os.close(fd)
        _handover_interrupted(lambda: copydata.recv_section(a), lambda: b.shutdown(socket.SHUT_RDWR))


def _fill(sock):
    """Fills `sock` until it takes no more (its peer never reads); leaves
    it non-blocking."""
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        for _ in range(100_000):
            sock.send(b"x" * 65536)


def test_send_section_gives_way_to_ctrl_c_while_the_peer_does_not_read():
    a, b = socket.socketpair()
    with a, b, copydata.Section.anonymous(4096) as section:
        _fill(a)
        a.setblocking(True)
        _handover_interrupted(lambda: copydata.send_section(a, section), lambda: b.shutdown(socket.SHUT_RDWR))


@pytest.mark.parametrize("timeout", [0.0, 0.3])
def test_send_section_keeps_to_the_sockets_timeout(timeout):
    # A peer that does not read: a socket with a timeout (0: non-blocking)
    # gives up after it, as recv_section does, rather than wait for the
    # peer as long as it likes.
    a, b = socket.socketpair()
    with a, b, copydata.Section.anonymous(4096) as section:
        _fill(a)
        a.settimeout(timeout)
        fallback = threading.Timer(8.0, lambda: b.shutdown(socket.SHUT_RDWR))
        fallback.start()
        started = time.monotonic()
        try:
            with pytest.raises(copydata.TimedOut):
                copydata.send_section(a, section)
        finally:
            fallback.cancel()
            fallback.join()
        assert timeout <= time.monotonic() - started < timeout + 4.0


class _DuckSocket:
    """What recv_section accepts: fileno() and gettimeout()."""

    def __init__(self, sock, timeout):
        self._sock, self._timeout = sock, timeout

    def fileno(self):
        return self._sock.fileno()

    def gettimeout(self):
        return self._timeout


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_recv_section_with_an_unbounded_timeout_does_not_panic(timeout):
    # A socket-like object whose timeout is unbounded (inf, or too large
    # for a duration) means no limit, not a PanicException.
    a, b = socket.socketpair()
    with a, b, copydata.Section.anonymous(4096) as s:
        copydata.send_section(b, s)
        with copydata.recv_section(_DuckSocket(a, timeout)) as got:
            assert got.size == 4096


def test_an_os_error_class_carries_the_errno_itself(tmp_path):
    # NotFound, PermissionDenied and the other OSError subclasses carry the
    # errno themselves, as well as on their cause.
    with pytest.raises(FileNotFoundError) as e:
        copydata.Section.file(tmp_path / "missing" / "x")
    assert e.value.__cause__.errno == errno.ENOENT
    assert e.value.errno == errno.ENOENT


def test_a_buffer_error_is_not_reported_as_not_bytes_like():
    # A closed section as the payload says it is closed, not that it is
    # not bytes-like.
    section = copydata.Section.anonymous(16)
    section.close()
    with pytest.raises(copydata.Closed):
        copydata.send("copydata-test-py-no-such-mailbox", section, timeout=0.1)


SLOW_INIT = """
import sys, time, copydata
def init(view):
    print("initialising", flush=True)
    time.sleep(5)
copydata.Shared(sys.argv[1], 16, init=init)
"""


def test_waiting_for_another_processs_initialiser_gives_way_to_ctrl_c(python_child, name):
    # Shared() waiting for another process's initialiser gives way to
    # Ctrl-C.
    child = python_child(SLOW_INIT, name)
    try:
        assert child.readline() == "initialising"
        outcome, delay = _interrupted_within(lambda: copydata.Shared(name, 16))
    finally:
        child.signal(signal.SIGKILL)
    assert isinstance(outcome, Interrupted) and delay < 1.0, (
        f"the call ended with {outcome!r}; Ctrl-C was handled {delay:.1f} s after it came"
    )


def test_zero_dimensional_and_non_contiguous_buffers(serving, name):
    # A zero-dimensional buffer (a numpy scalar or 0-d array) is bytes-like,
    # as Python's own consumers take it; a non-contiguous one raises
    # BufferError, as Python does.
    np = pytest.importorskip("numpy")
    with serving(name, lambda tag, data: (0, data)):
        assert copydata.send(name, np.float64(1.5), timeout=10.0) == (0, np.float64(1.5).tobytes())
        assert copydata.send(name, np.array(7, dtype=np.int32), timeout=10.0) == (0, np.int32(7).tobytes())
        with pytest.raises(BufferError):
            copydata.send(name, memoryview(b"abcdef")[::2], timeout=10.0)


def test_send_to_window_needs_a_target_and_windows():

    with pytest.raises(copydata.InvalidArgument, match="class_name"):
        copydata.send_to_window(b"x")
    if sys.platform != "win32":
        with pytest.raises(copydata.Error, match="Windows only"):
            copydata.send_to_window(b"x", 1, class_name="Notepad", timeout=1.0)
