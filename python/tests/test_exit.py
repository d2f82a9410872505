"""What a process still has open when its interpreter exits is closed then:
no file of its names is left in /dev/shm or the runtime directory."""

import os
import pathlib
import shutil
import sys
import tempfile

import pytest

# Opens one object of each kind that holds a name, keeps them referenced
# (module globals, daemon threads waiting on them) and exits without
# closing any.
LEFT_OPEN = """
import os, sys, threading, copydata
base = sys.argv[1]

mailbox = copydata.Mailbox(base + "-mailbox")
primary = copydata.single_instance(base + "-app", args=[], timeout=10.0)
assert isinstance(primary, copydata.Primary)
section = copydata.Section.create(base + "-section", 4096)
with memoryview(section) as view:
    view[0] = 1
other = copydata.Section.open(base + "-section")
mutex = copydata.Mutex(base + "-mutex")
assert mutex.acquire(timeout=10.0)  # held by this (the main) thread
shared = copydata.Shared(base + "-shared", 8)
assert shared.acquire(timeout=10.0)
event = copydata.Event(base + "-event")

def wait(what, call):
    ready.release()
    try:
        call()
    except copydata.Closed:
        pass

ready = threading.Semaphore(0)
waits = [
    ("mailbox", lambda: mailbox.recv()),
    ("primary", lambda: primary.recv()),
    ("mutex", lambda: copydata.Mutex(base + "-mutex").acquire()),
    ("shared", lambda: shared.acquire()),
    ("event", lambda: event.wait()),
]
for what, call in waits:
    threading.Thread(target=wait, args=(what, call), daemon=True).start()
for _ in waits:
    assert ready.acquire(timeout=10.0)
print("open", flush=True)
"""


@pytest.fixture
def runtime():
    """A runtime directory of mailboxes of its own (short: a socket's path
    must fit in 108 bytes), removed afterwards."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="cd-rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _left(base, runtime):
    shm = [n for n in os.listdir("/dev/shm") if base in n]
    return shm + [str(p) for p in runtime.iterdir()]


def _exits_leaving_nothing(spawn, script, name, runtime, says):
    """Runs `script` in a child Python with its own runtime directory:
    its first line is `says`, it exits on its own with 0 and no traceback,
    and nothing of `name` is left in /dev/shm or that directory."""
    env = dict(os.environ, COPYDATA_RUNTIME_DIR=str(runtime))
    child = spawn(sys.executable, "-c", script, name, env=env)
    assert child.readline() == says
    code, out, err = child.finish(timeout=30.0)
    assert code == 0, err
    assert "Traceback" not in err, err
    assert _left(name, runtime) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names are files on Linux")
def test_objects_left_open_are_closed_at_exit(spawn, name, runtime):
    # It exits on its own, promptly (nothing at exit waits for the
    # threads still blocked in copydata calls).
    _exits_leaving_nothing(spawn, LEFT_OPEN, name, runtime, "open")


# A child made by fork exits (running atexit) while its parent still uses
# what it had opened before the fork: the parent's objects stay open.
FORK_EXIT = """
import os, sys, copydata
base = sys.argv[1]
mailbox = copydata.Mailbox(base + "-mailbox")
mutex = copydata.Mutex(base + "-mutex")
section = copydata.Section.create(base + "-section", 4096)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # runs the child's atexit hooks
assert os.waitpid(pid, 0)[1] == 0
assert base + "-mailbox" in [m.name for m in copydata.mailboxes()]
copydata.Mutex.open(base + "-mutex").close()
copydata.Section.open(base + "-section").close()
print("still open", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_a_forked_child_exiting_leaves_its_parents_objects_open(spawn, name, runtime):
    _exits_leaving_nothing(spawn, FORK_EXIT, name, runtime, "still open")


# A child made by fork while its parent holds a request exits normally,
# its interpreter dropping its copy of the request: the parent still
# answers it, and the caller gets that answer (the child's copy used to
# refuse it for the parent).
FORK_WITH_A_REQUEST = """
import os, sys, threading, copydata
name = sys.argv[1] + "-held"
mailbox = copydata.Mailbox(name)
got = []
caller = threading.Thread(target=lambda: got.append(copydata.send(name, b"held", tag=4, timeout=30)))
caller.start()
request = mailbox.recv(timeout=10)
pid = os.fork()
if pid == 0:
    sys.exit(0)
assert os.waitpid(pid, 0)[1] == 0
request.reply(40 + request.tag)
caller.join()
print("answered", got[0][0], flush=True)
mailbox.close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_a_forked_child_leaves_its_parents_request_to_the_parent(spawn, name, runtime):
    _exits_leaving_nothing(spawn, FORK_WITH_A_REQUEST, name, runtime, "answered 44")


# A daemon thread still waiting in a hand-over when the interpreter exits,
# the interpreter letting go of the GIL while it finalizes (a finalizer
# that sleeps): the thread that wants the GIL back meanwhile must not take
# the process down with it.
HANDOVER_AT_EXIT = """
import socket, sys, threading, time, copydata

class SlowFinalizer:
    def __del__(self):
        for _ in range(20):
            time.sleep(0.01)

slow = SlowFinalizer()
a, b = socket.socketpair()
how = sys.argv[1]
section = copydata.Section.anonymous(4096)
if how == "send_section":
    a.setblocking(False)
    try:
        while True:
            a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    a.setblocking(True)
elif how == "recv_section part-way":
    b.sendall(b"CDS1")
started = threading.Event()

def wait():
    started.set()
    if how == "send_section":
        copydata.send_section(a, section)
    else:
        copydata.recv_section(a)

threading.Thread(target=wait, daemon=True).start()
assert started.wait(10.0)
time.sleep(0.1)
print("exiting", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="send_section is Linux only")
@pytest.mark.parametrize(
    "how, runs",
    [("recv_section", 10), ("recv_section part-way", 3), ("send_section", 3)],
)
def test_a_daemon_thread_in_a_hand_over_at_exit_does_not_crash_it(spawn, how, runs):
    # (Several runs: whether the thread comes back for the GIL while the
    # interpreter finalizes is a matter of timing.)
    children = [spawn(sys.executable, "-c", HANDOVER_AT_EXIT, how) for _ in range(runs)]
    for child in children:
        assert child.readline() == "exiting"
    outcomes = [child.finish(timeout=30.0) for child in children]
    failed = [(code, err) for code, _, err in outcomes if code != 0]
    assert not failed, f"{len(failed)} of {runs} runs failed (exit code, stderr): {failed[:3]}"
