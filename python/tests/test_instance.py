"""copydata.single_instance: the first launch of an app id is the primary,
later ones hand it their arguments and get its answer."""

import os
import pathlib
import sys

import pytest

import copydata
from test_mailbox import in_thread

LAUNCH = """
import sys, copydata
app, *args = sys.argv[1:]
result = copydata.single_instance(app, data=b"payload", forward_env=["COPYDATA_TEST_VAR", "COPYDATA_UNSET_VAR"], timeout=10.0)
print(type(result).__name__, result.code, result.data.decode(), flush=True)
sys.exit(result.code)
"""


def test_a_later_launch_hands_its_arguments_to_the_primary(python_child, name, tmp_path, monkeypatch):
    with copydata.single_instance(name, timeout=5.0) as primary:
        assert isinstance(primary, copydata.Primary) and not primary.closed
        monkeypatch.setenv("COPYDATA_TEST_VAR", "forwarded")
        monkeypatch.chdir(tmp_path)
        # sys.argv[1:] of the child: the app id, then its arguments.
        child = python_child(LAUNCH, name, "one", "two words", "caf\u00e9")
        launch = primary.recv(timeout=10.0)
        assert launch.args == [name, "one", "two words", "caf\u00e9"]
        assert isinstance(launch.cwd, pathlib.Path) and os.path.samefile(launch.cwd, tmp_path)
        assert launch.env == {"COPYDATA_TEST_VAR": "forwarded"}
        assert (launch.data, launch.pid, launch.answered) == (b"payload", child.pid, False)
        assert repr(launch).startswith(f"<copydata.Launch pid={child.pid} ")
        launch.answer(3, b"opened")
        assert launch.answered
        with pytest.raises(copydata.Error, match="already answered"):
            launch.answer()
        assert child.readline() == "Secondary 3 opened"
        code, _, err = child.finish()
        assert code == 3, err
        with pytest.raises(copydata.TimedOut):
            primary.recv(timeout=0.1)
    assert primary.closed
    with pytest.raises(copydata.Closed):
        primary.recv(timeout=0.1)


def test_the_next_launch_takes_over_a_closed_primary(name):
    primary = copydata.single_instance(name, args=[])
    primary.close()
    again = copydata.single_instance(name, args=[])
    assert isinstance(again, copydata.Primary)
    again.close()


def test_a_primary_that_does_not_answer_times_the_launch_out(python_child, name):
    with copydata.single_instance(name, args=[]) as primary:
        assert isinstance(primary, copydata.Primary)
        script = "import sys, copydata\ncopydata.single_instance(sys.argv[1], args=['x'], timeout=2.0)"
        child = python_child(script, name)
        launch = primary.recv(timeout=10.0)  # taken, not answered
        code, _, err = child.finish(timeout=10.0)
        assert code != 0 and "TimedOut" in err, err
        with pytest.raises(copydata.SenderGone):
            launch.answer(1)
    with pytest.raises(copydata.InvalidName):
        copydata.single_instance("not a name!", args=[])
    with pytest.raises(copydata.InvalidArgument):
        copydata.single_instance(name, args=[], timeout=-1.0)


def test_a_dropped_launch_is_answered_with_zero(python_child, name):
    with copydata.single_instance(name, args=[]) as primary:
        child = python_child(LAUNCH, name)
        primary.recv(timeout=10.0)  # dropped at once
        assert child.readline() == "Secondary 0 "
        code, _, err = child.finish()
        assert code == 0, err


def test_iterating_a_primary_and_raw_arguments(python_child, name):
    with copydata.single_instance(name, args=[]) as primary:
        assert primary.app_id == name and repr(primary) == f'<copydata.Primary "{name}">'
        children = [python_child(LAUNCH, name, str(i)) for i in range(3)]
        seen = []
        for launch in primary:
            seen.append(launch.args[1])
            launch.answer(len(seen))
            if len(seen) == 3:
                break
        assert sorted(seen) == ["0", "1", "2"]
        # Bytes that are no text arrive as they were (surrogate escapes).
        raw = os.fsdecode(b"caf\xe9")
        answer = in_thread(copydata.single_instance, name, args=[raw], timeout=10.0)
        launch = primary.recv(timeout=10.0)
        assert launch.args == [raw] and os.fsencode(launch.args[0]) == b"caf\xe9"
        launch.answer(5, b"raw")
        secondary = answer()
        assert (secondary.code, secondary.data, secondary.primary_pid) == (5, b"raw", os.getpid())
        assert repr(secondary) == "<copydata.Secondary code=5 3 bytes>"
        for child in children:
            code, _, err = child.finish()
            assert 1 <= code <= 3, err

FORK_CHILD_PRIMARY = """
import os, sys, copydata
primary = copydata.single_instance(sys.argv[1], args=[])
pid = os.fork()
if pid == 0:
    # The child lets go of the parent's primary; the parent stays it.
    primary.close()
    os._exit(0)
os.waitpid(pid, 0)
print("ready", flush=True)
launch = primary.recv(timeout=10.0)
launch.answer(len(launch.args))
primary.close()
"""


def test_a_child_made_by_fork_leaves_the_parents_primary_alone(python_child, name):
    parent = python_child(FORK_CHILD_PRIMARY, name)
    assert parent.readline() == "ready"
    secondary = copydata.single_instance(name, args=["a", "b"], timeout=10.0)
    assert isinstance(secondary, copydata.Secondary) and secondary.code == 2
    code, _, err = parent.finish(timeout=10.0)
    assert code == 0, err
