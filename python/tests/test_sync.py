"""copydata.Mutex, copydata.Shared and copydata.Event across real
processes (the copydata tool and Python children)."""

import signal
import sys
import threading
import time

import numpy as np
import pytest

import copydata


def test_a_mutex_held_by_another_process_is_waited_for(cli, name):
    holder = cli("lock", name, "--hold")
    assert holder.readline() == "acquired"
    m = copydata.Mutex.open(name)
    assert m.name == name
    assert not m.acquire(blocking=False)
    started = time.monotonic()
    assert not m.acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert not m.held_here()
    # Stopped cleanly, the holder unlocks: a waiter gets it.
    holder.signal(signal.SIGTERM)
    assert m.acquire(timeout=10.0)
    assert m.held_here() and not m.owner_died
    m.release()
    assert holder.finish()[0] == 0
    m.close()


HOLD_UNTIL_KILLED = """
import sys, time, copydata
m = copydata.Mutex(sys.argv[1])
assert m.acquire(timeout=10.0)
print("held", flush=True)
time.sleep(60)
"""


def test_a_holder_that_dies_is_reported_until_marked_consistent(python_child, cli, name):
    m = copydata.Mutex(name)
    child = python_child(HOLD_UNTIL_KILLED, name)
    assert child.readline() == "held"
    child.signal(signal.SIGKILL)
    assert m.acquire(timeout=10.0)
    assert m.owner_died
    # Still so for the next holder (the copydata tool) until marked.
    m.release()
    code, out, err = cli("lock", name).finish()
    assert (code, out.strip()) == (0, "acquired (previous owner died)"), err
    with m:
        assert m.owner_died
        m.mark_consistent()
        assert not m.owner_died
    with m:
        assert not m.owner_died
    child.proc.wait(timeout=10.0)  # (see test_a_shared_value_reports_a_holder_that_died)
    m.close()


def test_a_mutex_belongs_to_the_thread_that_took_it(name):
    m = copydata.Mutex(name)
    assert m.acquire()
    with pytest.raises(RuntimeError, match="already holds"):
        m.acquire()
    seen = {}

    def other():
        seen["held_here"] = m.held_here()
        seen["try"] = m.acquire(blocking=False)
        for what, call in [("release", m.release), ("owner_died", lambda: m.owner_died)]:
            try:
                call()
            except RuntimeError as e:
                seen[what] = str(e)
        # Waits for the main thread, then holds it itself.
        seen["wait"] = m.acquire(timeout=10.0)
        seen["then"] = m.held_here()
        m.release()

    thread = threading.Thread(target=other)
    thread.start()
    deadline = time.monotonic() + 10.0
    while "owner_died" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert m.held_here()
    m.release()
    thread.join(10.0)
    assert not thread.is_alive()
    assert (seen["held_here"], seen["try"], seen["wait"], seen["then"]) == (False, False, True, True)
    assert "not held by this thread" in seen["release"]
    assert "does not hold" in seen["owner_died"]
    with pytest.raises(RuntimeError):
        m.release()
    with m:
        assert m.held_here()
    assert not m.held_here()


def test_closing_a_mutex_ends_another_threads_wait_for_it(name):
    m = copydata.Mutex(name)
    assert m.acquire()
    outcome = []

    def waiter():
        try:
            outcome.append(m.acquire(timeout=30.0))
        except copydata.Closed as e:
            outcome.append(e)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    m.close()  # releases this thread's lock: the waiter may take it now
    thread.join(30.0)
    assert not thread.is_alive()
    assert isinstance(outcome[0], copydata.Closed), outcome
    # Not left taken by the closed handle.
    again = copydata.Mutex(name)
    assert again.acquire(blocking=False)
    again.close()


@pytest.mark.parametrize("kind", ["Mutex", "Shared"])
def test_a_lock_released_by_close_goes_back_rather_than_to_a_waiter(name, kind):
    # The holder closes while another thread waits, again and again, the
    # close landing at any point of the wait: the waiter always ends with
    # `Closed` and the lock free, never holding a lock of a closed object.
    def make():
        return copydata.Mutex(name) if kind == "Mutex" else copydata.Shared(name, 8)

    probe = make()  # another handle to the same lock, to see it free
    kept = []
    try:
        for round in range(300):
            obj = make()
            assert obj.acquire(timeout=10.0)
            outcome = []
            waiting = threading.Event()

            def waiter():
                waiting.set()
                try:
                    outcome.append(obj.acquire(timeout=10.0))
                except copydata.Closed as e:
                    outcome.append(e)
                if outcome[0] is True:
                    obj.release()  # (so that the next rounds go on)

            thread = threading.Thread(target=waiter)
            thread.start()
            assert waiting.wait(10.0)
            if round % 3:
                time.sleep(0.0005 * (round % 7))
            obj.close()
            thread.join(10.0)
            assert not thread.is_alive()
            if not isinstance(outcome[0], copydata.Closed):
                kept.append((round, outcome[0]))
            # Free: given back, not kept by the closed handle's waiter.
            assert probe.acquire(blocking=False), f"round {round}: the lock was left taken"
            probe.release()
    finally:
        probe.close()
    assert not kept, f"waiters that did not get Closed (round, outcome): {kept}"


def test_mutex_arguments_and_closing(name):
    with pytest.raises(copydata.InvalidName):
        copydata.Mutex("bad/name")
    with pytest.raises(copydata.NotFound):
        copydata.Mutex.open(name)
    m = copydata.Mutex(name)
    with pytest.raises(copydata.InvalidArgument):
        m.acquire(blocking=False, timeout=1.0)
    with pytest.raises(copydata.InvalidArgument):
        m.acquire(timeout=-2.0)
    # -1 is no limit, as for threading.Lock.
    assert m.acquire(timeout=-1)
    m.release()
    assert m.acquire(blocking=False, timeout=-1)
    m.release()
    assert m.acquire(timeout=0.0)
    # Closing releases the lock this thread holds.
    m.close()
    m.close()
    assert repr(m) == f"<copydata.Mutex {name!r}, closed>".replace("'", '"')
    with pytest.raises(copydata.Closed):
        m.acquire()
    again = copydata.Mutex(name)
    assert again.acquire(blocking=False)
    again.close()


def test_an_event_wakes_waiters_in_other_processes(cli, name):
    ev = copydata.Event(name)
    assert not ev.auto_reset
    assert not ev.wait(timeout=0)
    started = time.monotonic()
    assert not ev.wait(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    waiter = cli("event", name, "wait", "--timeout", "30s")
    ev.set()
    assert waiter.readline() == "set"
    # Manual-reset: it stays set until reset, here or by the tool.
    assert ev.wait(timeout=0)
    assert cli("event", name, "reset").finish()[0] == 0
    assert not ev.wait(timeout=0)
    assert cli("event", name, "set").finish()[0] == 0
    assert ev.wait(timeout=10.0)
    ev.close()


def test_an_auto_reset_event_wakes_one_waiter(name):
    with pytest.raises(copydata.NotFound):
        copydata.Event.open(name)
    with copydata.Event(name, auto_reset=True) as ev:
        other = copydata.Event.open(name)
        assert other.auto_reset
        # An existing event of the other kind is refused.
        with pytest.raises(copydata.Error, match="auto-reset event, not manual-reset"):
            copydata.Event(name)
        assert "auto-reset" in repr(ev)
        ev.set()
        assert other.wait(timeout=10.0)
        assert not other.wait(timeout=0), "it reset itself"
        other.close()
    with pytest.raises(copydata.Closed):
        ev.set()
    with pytest.raises(copydata.InvalidName):
        copydata.Event("bad/name")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGALRM")
def test_a_wait_sees_a_set_and_reset_made_between_its_slices(name):
    # The signal handler runs between two of the wait's slices and sets and
    # at once resets the event (as another process could at that moment):
    # the wait is one wait, so it ends, where a loop of short waits would
    # miss the set and run to its timeout.
    with copydata.Event(name) as ev:
        other = copydata.Event.open(name)

        def pulse(signum, frame):
            other.set()
            other.reset()

        previous = signal.signal(signal.SIGALRM, pulse)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            started = time.monotonic()
            assert ev.wait(timeout=10.0)
            assert time.monotonic() - started < 5.0
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert not ev.wait(timeout=0), "it was reset"
        other.close()


def test_closing_an_event_ends_another_threads_wait(name):
    ev = copydata.Event(name)
    got = []
    waiter = threading.Thread(target=lambda: got.append(_wait_or_error(ev)))
    waiter.start()
    time.sleep(0.2)
    ev.close()
    waiter.join(timeout=10.0)
    assert not waiter.is_alive()
    assert got == ["Closed"]


def _wait_or_error(ev):
    try:
        return ev.wait(timeout=30.0)
    except copydata.Error as e:
        return type(e).__name__


WAIT_INTERRUPTED = """
import sys, copydata
ev = copydata.Event(sys.argv[1])
m = copydata.Mutex(sys.argv[2])
for what, wait in [("event", ev.wait), ("mutex", m.acquire)]:
    print("waiting", what, flush=True)
    try:
        wait()
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_ctrl_c_interrupts_waits(python_child, name):
    m = copydata.Mutex(name + "-m")
    assert m.acquire()
    child = python_child(WAIT_INTERRUPTED, name, name + "-m")
    for what in ["event", "mutex"]:
        assert child.readline() == f"waiting {what}"
        time.sleep(0.2)
        child.signal(signal.SIGINT)
        assert child.readline() == "interrupted"
    assert child.finish()[0] == 0
    m.release()
    m.close()


# ---------------------------------------------------------------- Shared

COUNTER_TAG = "copydata.counter.u64"


def test_a_shared_value_is_the_rust_counter_of_the_copydata_tool(cli, name):
    holder = cli("shared", "incr", name, "--times", "5", "--hold")
    assert holder.readline() == "5"
    shared = copydata.Shared.open(name, tag=COUNTER_TAG)
    assert (shared.name, shared.size, shared.align, len(shared)) == (name, 8, 8, 8)
    with shared as value:
        assert shared.held_here() and not shared.owner_died
        assert int.from_bytes(value, "little") == 5
        value[:] = (6).to_bytes(8, "little")
    assert not shared.held_here()
    code, out, err = cli("shared", "get", name).finish()
    assert (code, out.strip()) == (0, "6"), err
    # The same object opened by layout: another size or tag is refused.
    same = copydata.Shared(name, 8, align=8, tag=COUNTER_TAG)
    with same as value:
        assert int.from_bytes(value, "little") == 6
    for size, align, tag in [(16, 8, COUNTER_TAG), (8, 4, COUNTER_TAG), (8, 8, "another")]:
        with pytest.raises(copydata.Error, match="does not match"):
            copydata.Shared(name, size, align=align, tag=tag)
    holder.signal(signal.SIGTERM)
    assert holder.finish()[0] == 0
    same.close()
    shared.close()
    assert repr(shared) == f'<copydata.Shared "{name}", 8 bytes, closed>'
    with pytest.raises(copydata.Closed):
        shared.view()
    # A view keeps the value mapped (and held) until it is released.
    assert int.from_bytes(value, "little") == 6
    del value
    with pytest.raises(copydata.NotFound):
        copydata.Shared.open(name, tag=COUNTER_TAG)


RACE_TO_CREATE = """
import sys, time, copydata
name, runs_name = sys.argv[1], sys.argv[2]
runs = copydata.Shared(runs_name, 8)
go = copydata.Event(name + "-go")
def init(value):
    with runs as n:
        n[0] += 1
    time.sleep(0.2)
    value[:5] = b"ready"
print("up", flush=True)
assert go.wait(timeout=30.0)
shared = copydata.Shared(name, 64, tag="race", init=init)
with shared as value:
    print(bytes(value[:5]).decode(), flush=True)
"""


def test_racing_creators_initialise_once(spawn, name):
    runs = copydata.Shared(name + "-runs", 8)
    go = copydata.Event(name + "-go")
    kids = [spawn(sys.executable, "-c", RACE_TO_CREATE, name, name + "-runs") for _ in range(6)]
    for kid in kids:
        assert kid.readline() == "up"
    go.set()
    for kid in kids:
        assert kid.readline(timeout=30.0) == "ready"
    with runs as n:
        assert n[0] == 1, "the initialiser ran more than once"
    for kid in kids:
        assert kid.finish()[0] == 0
    # Gone with its last holder (or, if the last ones left together,
    # reclaimed by this open).
    with pytest.raises(copydata.NotFound):
        copydata.Shared.open(name, tag="race")
    runs.close()
    go.close()


def test_a_failing_initialiser_creates_nothing(name):
    def fails(value):
        value[0] = 9
        raise ValueError("no config")

    with pytest.raises(ValueError, match="no config"):
        copydata.Shared(name, 16, init=fails)
    with pytest.raises(copydata.NotFound):
        copydata.Shared.open(name)

    kept = []

    def keeps(value):
        kept.append(np.frombuffer(value, dtype=np.uint8))
        kept[0][:2] = [ord("o"), ord("k")]

    shared = copydata.Shared(name, 16, init=keeps)
    # What the initialiser kept is its own memory, written into the value
    # once it returned; later changes to it go nowhere.
    kept[0][:] = 1
    with shared as value:
        assert bytes(value) == b"ok" + bytes(14), "zeros, then the initialiser's bytes"
        words = np.frombuffer(value, dtype=np.uint64)
        words[1] = 7
        del words
    assert shared.view()[8] == 7
    shared.close()


HOLD_SHARED_UNTIL_KILLED = """
import sys, time, copydata
s = copydata.Shared(sys.argv[1], 16)
assert s.acquire(timeout=10.0)
s.view()[0] = 1
print("held", flush=True)
time.sleep(60)
"""


def test_a_shared_value_reports_a_holder_that_died(python_child, name):
    shared = copydata.Shared(name, 16)
    child = python_child(HOLD_SHARED_UNTIL_KILLED, name)
    assert child.readline() == "held"
    assert not shared.acquire(blocking=False)
    child.signal(signal.SIGKILL)
    assert shared.acquire(timeout=10.0)
    assert shared.owner_died
    assert shared.view()[0] == 1, "the half-made change is there to repair"
    shared.mark_consistent()
    shared.release()
    with pytest.raises(RuntimeError):
        shared.release()
    with pytest.raises(RuntimeError):
        shared.owner_died
    # The lock is free once the holder's thread is gone, a moment before
    # its process has let go of the value: wait, so that this close is the
    # last holder's and removes it.
    child.proc.wait(timeout=10.0)
    shared.close()


def test_threads_racing_to_create_a_value_do_not_block_each_other(name):
    # One thread initialises slowly (sleeping, so the other runs); the
    # other waits for the value's lock without holding up the interpreter.
    runs = []

    def slow(value):
        runs.append(threading.get_ident())
        time.sleep(0.3)
        value[:4] = b"slow"

    made = {}

    def create(key):
        made[key] = copydata.Shared(name, 8, init=slow)

    threads = [threading.Thread(target=create, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30.0)
    assert not any(t.is_alive() for t in threads), "a creator is stuck"
    assert len(runs) == 1
    for shared in made.values():
        with shared as value:
            assert bytes(value[:4]) == b"slow"
        shared.close()


def test_layouts_no_value_can_have_are_refused(name):
    for size, align in [(8, 3), (8, 0), (8, 8192), (2**64 - 1, 8)]:
        with pytest.raises(copydata.InvalidArgument):
            copydata.Shared(name, size, align=align)
    with pytest.raises(OverflowError):
        copydata.Shared(name, -1)
