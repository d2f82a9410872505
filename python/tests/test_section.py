"""Sections from Python: the buffer protocol, views' lifetimes, errors."""

import gc
import os

import numpy as np
import pytest

import copydata


def test_anonymous_section_through_memoryview_and_numpy():
    with copydata.Section.anonymous(4096) as section:
        assert (section.name, section.size, section.readonly) == (None, 4096, False)
        view = memoryview(section)
        assert (view.nbytes, view.readonly, view.format, view.obj) == (4096, False, "B", section)
        view[100:105] = b"hello"
        assert bytes(section.map(100, 5)) == b"hello"
        # numpy over the same memory, at an offset that needs no alignment.
        words = np.frombuffer(section.map(1, 8), dtype=np.uint32)
        words[:] = [0xDEADBEEF, 1]
        assert bytes(view[1:9]) == bytes.fromhex("efbeadde01000000")
        view.release()
        del words


def test_named_section_is_shared_between_handles(name):
    with copydata.Section.create(name, 1000) as a, copydata.Section.open(name) as b:
        assert repr(a) == f'Section("{name}", 1000 bytes)'
        np.frombuffer(a, dtype=np.uint8)[:] = 9
        assert bytes(memoryview(b)) == b"\x09" * 1000
        with pytest.raises(copydata.AlreadyExists) as e:
            copydata.Section.create(name, 10)
        assert isinstance(e.value, FileExistsError)
    with pytest.raises(copydata.NotFound) as e:
        copydata.Section.open(name)
    assert isinstance(e.value, FileNotFoundError)


def test_read_only_section_gives_read_only_buffers(name):
    with copydata.Section.create(name, 64) as section:
        memoryview(section)[:3] = b"abc"
        with copydata.Section.open(name, readonly=True) as ro:
            assert ro.readonly
            view = memoryview(ro)
            assert view.readonly and bytes(view[:3]) == b"abc"
            with pytest.raises(TypeError):
                view[0] = 1
            assert not np.frombuffer(ro, dtype=np.uint8).flags.writeable
            assert ro.map(1, 2).readonly
            view.release()


def test_buffers_outlive_close_and_keep_the_section_alive(name):
    section = copydata.Section.create(name, 4096)
    whole = np.frombuffer(section, dtype=np.int64)
    part = section.map(4000)
    whole[:] = 5
    section.close()
    assert section.closed
    # Both still map the memory, and hold the name.
    assert whole.sum() == 5 * 512
    part[:8] = b"\x01" * 8
    assert whole[500] == 0x0101010101010101
    with copydata.Section.open(name) as again:
        assert bytes(again.map(4000, 8)) == b"\x01" * 8
    del whole
    part.release()
    gc.collect()
    # The last holder is gone: so is the name.
    with pytest.raises(copydata.NotFound):
        copydata.Section.open(name)


def test_a_closed_section_exports_nothing():
    section = copydata.Section.anonymous(10)
    section.close()
    section.close()  # twice is fine
    with pytest.raises(copydata.Closed):
        section.map()
    with pytest.raises(copydata.Closed):
        memoryview(section)


def test_bad_sizes_and_ranges():
    with pytest.raises(copydata.InvalidArgument) as e:
        copydata.Section.anonymous(0)
    assert isinstance(e.value, ValueError)
    with copydata.Section.anonymous(100) as section:
        for offset, length in [(0, 101), (100, 1), (50, 0), (2**63, 1)]:
            with pytest.raises(copydata.InvalidArgument):
                section.map(offset, length)
        with pytest.raises(copydata.InvalidArgument):
            section.map(101)
        assert len(section.map(99)) == 1


def test_live_objects_are_listed_and_a_name_removed(name, serving):
    with copydata.Section.create(name, 1234) as section:
        assert copydata.SectionInfo(name, 1234) in copydata.sections()
        listed = [s for s in copydata.sections() if s.name == name]
        assert listed[0].size == 1234 and listed[0].name == name
        copydata.remove(name)
        assert name not in [s.name for s in copydata.sections()]
        # The holder keeps its memory; the name is free for a new section.
        memoryview(section)[:2] = b"ok"
        with copydata.Section.create(name, 10) as again:
            assert again.size == 10
        with pytest.raises(copydata.NotFound):
            copydata.remove(name)
    with pytest.raises(copydata.InvalidName):
        copydata.remove("bad/name")
    with serving(name, lambda tag, data: None):
        assert [(m.name, m.pid) for m in copydata.mailboxes() if m.name == name] == [(name, os.getpid())]
    assert name not in [m.name for m in copydata.mailboxes()]
    with copydata.Mutex(name), copydata.Event(name), copydata.Shared(name, 8):
        kinds = sorted(o.kind for o in copydata.objects() if o.name == name)
        assert kinds == ["event", "mutex", "shared"]
    assert name not in [o.name for o in copydata.objects()]


RECEIVE_OVER_SOCKET = """
import socket, sys, copydata
sock = socket.socket(fileno=int(sys.argv[1]))
rw = copydata.recv_section(sock)
ro = copydata.recv_section(sock)
print(bytes(rw.map(0, 6)).decode(), bytes(ro.map(0, 6)).decode(), rw.readonly, ro.readonly, flush=True)
rw.map(0, 6)[:] = b"child!"
try:
    ro.map(0, 1)[0] = 1
except TypeError:
    print("read-only holds", flush=True)
try:
    copydata.recv_section(sock)
except copydata.ReceiverDied:
    print("peer closed", flush=True)
"""


def test_a_section_is_handed_to_a_running_process_over_a_socket():
    import socket
    import subprocess
    import sys

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with copydata.Section.anonymous(4096) as rw, copydata.Section.anonymous(4096) as secret:
        memoryview(rw)[:6] = b"hello!"
        memoryview(secret)[:6] = b"secret"
        child = subprocess.Popen(
            [sys.executable, "-c", RECEIVE_OVER_SOCKET, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdout=subprocess.PIPE,
            text=True,
        )
        theirs.close()
        try:
            copydata.send_section(mine, rw)
            copydata.send_section(mine.fileno(), secret.read_only())
            assert child.stdout.readline().split() == ["hello!", "secret", "False", "True"]
            assert child.stdout.readline().strip() == "read-only holds"
            mine.close()
            assert child.stdout.readline().strip() == "peer closed"
            assert child.wait(timeout=30) == 0
        finally:
            child.kill()
            child.wait()
        assert bytes(memoryview(rw)[:6]) == b"child!"
        assert bytes(memoryview(secret)[:6]) == b"secret"
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"not a frame!!!")
        with pytest.raises(copydata.ProtocolError):
            copydata.recv_section(b)
    with pytest.raises(copydata.InvalidArgument):
        copydata.recv_section(a)  # closed: fileno() is -1
    # A number that is no open descriptor: the OSError of EBADF.
    import errno
    import resource

    with pytest.raises(OSError) as e:
        copydata.recv_section(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1)
    assert e.value.errno == errno.EBADF


def test_an_os_error_keeps_its_errno(tmp_path):
    import errno

    with pytest.raises(copydata.Error) as e:
        copydata.Section.file(tmp_path / "missing" / "x")
    cause = e.value.__cause__
    assert isinstance(cause, FileNotFoundError), repr(cause)
    assert cause.errno == errno.ENOENT and cause.strerror


def test_recv_section_keeps_to_the_sockets_timeout_and_gives_way_to_ctrl_c():
    import signal
    import socket
    import threading
    import time

    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.3)
        started = time.monotonic()
        with pytest.raises(copydata.TimedOut):
            copydata.recv_section(a)
        assert 0.25 <= time.monotonic() - started < 5
        a.settimeout(None)
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            copydata.recv_section(a)
        timer.join()
        # Still usable afterwards: a section sent now arrives.
        with copydata.Section.anonymous(4096) as s:
            copydata.send_section(b, s)
            with copydata.recv_section(a) as got:
                assert got.size == 4096
