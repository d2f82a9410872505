"""Mailboxes from Python: errors, serve's reply conventions, closing, and
waits that release the GIL and give way to Ctrl-C."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import copydata


def in_thread(fn, *args, **kwargs):
    """Runs fn on a thread; returns a function that joins it (bounded) and
    returns its result or raises its exception."""
    result = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()

    def join(timeout=10.0):
        thread.join(timeout)
        assert not thread.is_alive(), f"{fn} did not return within {timeout} s"
        if "error" in result:
            raise result["error"]
        return result["value"]

    return join


def test_send_to_a_missing_mailbox_is_not_found(name):
    with pytest.raises(copydata.NotFound) as e:
        copydata.send(name, b"x", timeout=2.0)
    assert isinstance(e.value, FileNotFoundError)
    assert isinstance(e.value, copydata.Error)
    assert name in str(e.value)


def test_invalid_names_are_value_errors():
    for bad in ["", "a/b", ".hidden", "x" * 201]:
        with pytest.raises(copydata.InvalidName) as e:
            copydata.send(bad, b"x")
        assert isinstance(e.value, ValueError)
        with pytest.raises(copydata.InvalidName):
            copydata.Mailbox(bad)
        with pytest.raises(copydata.InvalidName):
            copydata.Section.create(bad, 10)


def test_bad_arguments_are_refused(name):
    with pytest.raises(copydata.InvalidArgument):
        copydata.send(name, b"x", timeout=-1.0)
    with pytest.raises(ValueError):
        copydata.send(name, b"x", timeout=float("nan"))
    with pytest.raises(TypeError):
        copydata.send(name, "text is not bytes")
    with pytest.raises(OverflowError):
        copydata.send(name, b"x", tag=-1)


def test_a_name_is_bound_once(name):
    with copydata.Mailbox(name) as mailbox:
        assert mailbox.name == name
        with pytest.raises(copydata.AlreadyExists) as e:
            copydata.Mailbox(name)
        assert isinstance(e.value, FileExistsError)
    # close() frees the name at once.
    assert mailbox.closed
    copydata.Mailbox(name).close()


def test_recv_times_out_after_the_timeout(name):
    with copydata.Mailbox(name) as mailbox:
        started = time.monotonic()
        with pytest.raises(copydata.TimedOut) as e:
            mailbox.recv(timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert isinstance(e.value, TimeoutError)
        # timeout=0 polls.
        with pytest.raises(copydata.TimedOut):
            mailbox.recv(timeout=0)


def test_send_times_out_when_nobody_answers(name):
    with copydata.Mailbox(name):
        started = time.monotonic()
        with pytest.raises(copydata.TimedOut):
            copydata.send(name, b"anyone?", timeout=0.3)
        assert time.monotonic() - started >= 0.3


def test_request_reply_and_refuse_between_threads(name):
    # Both sides in one process: works only because the waits release the GIL.
    with copydata.Mailbox(name) as mailbox:
        answer = in_thread(copydata.send, name, b"ping", tag=3, timeout=10.0)
        request = mailbox.recv(timeout=10.0)
        assert repr(request).startswith("Request(tag=3, 4 bytes")
        request.reply(7, bytearray(b"pong"))
        assert answer() == (7, b"pong")
        with pytest.raises(copydata.Error):
            request.reply(0)

        answer = in_thread(copydata.send, name, b"ping", timeout=10.0)
        mailbox.recv(timeout=10.0).refuse("not today")
        with pytest.raises(copydata.Refused, match="not today"):
            answer()

        # A request dropped unanswered is refused too.
        answer = in_thread(copydata.send, name, b"ping", timeout=10.0)
        mailbox.recv(timeout=10.0)
        with pytest.raises(copydata.Refused):
            answer()


def test_serve_reply_conventions_and_failing_handlers(name, monkeypatch):
    reported = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append(u.exc_value))

    def handler(tag, data):
        if tag == 0:
            return (5, b"pair")
        if tag == 1:
            return 6
        if tag == 2:
            return b"bytes only"
        if tag == 3:
            return None
        if tag == 4:
            return "a str is no reply"
        if tag >= 2**63:
            # A tag does not fit a reply code (64 signed bits).
            return tag if tag % 2 else (tag, b"")
        raise ValueError(f"no tag {tag}")

    with copydata.Mailbox(name) as mailbox:
        serving = in_thread(mailbox.serve, handler)
        assert copydata.send(name, b"", tag=0, timeout=10.0) == (5, b"pair")
        assert copydata.send(name, b"", tag=1, timeout=10.0) == (6, b"")
        assert copydata.send(name, b"", tag=2, timeout=10.0) == (0, b"bytes only")
        assert copydata.send(name, b"", tag=3, timeout=10.0) == (0, b"")
        with pytest.raises(copydata.Refused, match="TypeError"):
            copydata.send(name, b"", tag=4, timeout=10.0)
        with pytest.raises(copydata.Refused, match="no tag 9"):
            copydata.send(name, b"", tag=9, timeout=10.0)
        for tag in (2**63, 2**64 - 1):
            with pytest.raises(copydata.Refused, match=r"OverflowError: a reply code goes from -2\*\*63"):
                copydata.send(name, b"", tag=tag, timeout=10.0)
        # Still serving after the failures.
        assert copydata.send(name, b"", tag=1, timeout=10.0) == (6, b"")
        mailbox.close()
        assert serving() is None
    assert [type(e) for e in reported] == [TypeError, ValueError, OverflowError, OverflowError]


def test_sections_travel_with_a_message(name):
    with copydata.Mailbox(name) as mailbox, copydata.Section.anonymous(4096) as section:
        memoryview(section)[:5] = b"hello"
        answer = in_thread(copydata.send, name, b"see attached", timeout=10.0, sections=[section])
        request = mailbox.recv(timeout=10.0)
        [received] = request.sections
        assert (received.name, received.size) == (None, 4096)
        view = received.map(0, 5)
        assert bytes(view) == b"hello"
        view[:] = b"HELLO"  # the same memory
        request.reply(0)
        assert answer() == (0, b"")
        assert bytes(section.map(0, 5)) == b"HELLO"
        view.release()
        received.close()


def test_a_section_held_by_a_send_still_gives_out_its_memory(name):
    # The send holds its own reference to the section's handle: other
    # threads may still take and release buffers of it, and close it (the
    # handle is closed once the send is over).
    with copydata.Mailbox(name) as mailbox, copydata.Section.anonymous(4096) as section:
        answer = in_thread(copydata.send, name, b"see attached", timeout=10.0, sections=[section])
        request = mailbox.recv(timeout=10.0)  # the send waits for the reply now
        view = memoryview(section)
        view[:2] = b"ok"
        view.release()
        section.close()
        assert section.closed
        [received] = request.sections
        assert bytes(received.map(0, 2)) == b"ok"
        received.close()
        request.reply(0)
        assert answer() == (0, b"")
    assert section.closed


def test_close_from_the_handler_ends_serve(name):
    mailbox = copydata.Mailbox(name)

    def handler(tag, data):
        mailbox.close()
        return 1

    serving = in_thread(mailbox.serve, handler)
    # A message taken before the close is still answered.
    assert copydata.send(name, b"stop", timeout=10.0) == (1, b"")
    serving()
    assert mailbox.closed


def test_close_wakes_a_waiting_recv_and_iteration_ends(name):
    mailbox = copydata.Mailbox(name)
    waiting = in_thread(mailbox.recv)
    time.sleep(0.2)
    mailbox.close()
    with pytest.raises(copydata.Closed):
        waiting()
    with pytest.raises(copydata.Closed):
        mailbox.recv(timeout=1)
    assert list(mailbox) == []


def test_iterating_a_mailbox(name):
    with copydata.Mailbox(name) as mailbox:
        answer = in_thread(copydata.send, name, b"ab", tag=4, timeout=10.0)
        for request in mailbox:
            request.reply(request.tag, request.data * 2)
            break
        assert answer() == (4, b"abab")


def test_receiver_death_is_reported(cli, name):
    listener = cli("listen", name, "--delay", "30s")
    assert listener.readline() == f"ready {name}"
    answer = in_thread(copydata.send, name, b"x", timeout=20.0)
    time.sleep(0.3)
    listener.proc.kill()
    with pytest.raises(copydata.ReceiverDied) as e:
        answer()
    assert isinstance(e.value, ConnectionResetError)
    listener.finish()
    # The name the killed process left is taken over (and removed by close).
    copydata.Mailbox(name).close()


def test_payload_above_the_receivers_limit_is_too_large(name):
    with copydata.Mailbox(name, max_payload=16):
        with pytest.raises(copydata.TooLarge) as e:
            copydata.send(name, bytes(17), timeout=5.0)
        assert isinstance(e.value, ValueError)


WAIT_FOREVER = """
import sys, copydata
what, name = sys.argv[1], sys.argv[2]
if what == "recv":
    mailbox = copydata.Mailbox(name)
    print("ready", flush=True)
    mailbox.recv()
else:
    print("ready", flush=True)
    copydata.send(name, b"no answer ever")
"""


@pytest.mark.parametrize("what", ["recv", "send"])
def test_ctrl_c_interrupts_a_wait_without_timeout(python_child, name, what):
    holder = copydata.Mailbox(name) if what == "send" else None
    try:
        child = python_child(WAIT_FOREVER, what, name)
        assert child.readline() == "ready"
        if holder is not None:
            pending = holder.recv(timeout=10.0)  # held, never answered
        else:
            time.sleep(0.2)  # let it block
        child.signal(signal.SIGINT)
        code, _, err = child.finish(timeout=10.0)
        assert code != 0
        assert "KeyboardInterrupt" in err
    finally:
        if holder is not None:
            holder.close()
    if holder is not None:
        del pending


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the runtime directory is Linux's")
def test_mailboxes_with_an_unusable_runtime_directory_says_so(tmp_path):
    """copydata.mailboxes() with a runtime directory it cannot make: the
    error says that listing mailboxes failed, and names the directory."""
    missing = tmp_path / "missing" / "runtime"
    script = "import copydata\ntry:\n    copydata.mailboxes()\nexcept copydata.Error as e:\n    print(e)\n"
    env = dict(os.environ, COPYDATA_RUNTIME_DIR=str(missing))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("listing mailboxes failed: "), out.stdout
    assert str(missing) in out.stdout, out.stdout
    assert not missing.exists()
