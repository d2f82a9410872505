"""copydata.Sender: one connection kept across calls, posts with
backpressure, timeouts, closing, and Ctrl-C."""

import os
import signal
import sys
import threading
import time

import pytest

import copydata


def test_a_sender_keeps_one_connection_and_messages_arrive_in_order(serving, name):
    seen = []

    def handler(tag, data):
        seen.append((tag, data))
        return tag * 2, data.upper()

    with serving(name, handler):
        with copydata.Sender(name, timeout=5.0) as sender:
            assert sender.name == name and not sender.closed
            assert repr(sender) == f'<copydata.Sender to "{name}">'
            for i in range(200):
                if i % 3 == 0:
                    sender.post(b"post %d" % i, tag=i)
                else:
                    assert sender.send(memoryview(b"call %d" % i), tag=i, timeout=10.0) == (2 * i, b"CALL %d" % i)
            # An empty payload is an ordinary message.
            assert sender.send(b"", tag=1000) == (2000, b"")
        assert sender.closed
        with pytest.raises(copydata.Closed):
            sender.send(b"after close")
        sender.close()  # twice is fine
    assert [tag for tag, _ in seen] == list(range(200)) + [1000]
    assert seen[3] == (3, b"post 3")


def test_a_sender_to_a_missing_mailbox_is_not_found(name):
    with pytest.raises(copydata.NotFound):
        copydata.Sender(name, timeout=2.0)
    with pytest.raises(copydata.InvalidName):
        copydata.Sender("a/b")
    with pytest.raises(copydata.InvalidArgument):
        copydata.Sender(name, timeout=-1.0)


def test_timeouts_and_a_full_queue(name):
    with copydata.Mailbox(name) as mailbox:
        with copydata.Sender(name) as sender:
            # Nobody answers: the call times out, no sooner than asked.
            started = time.monotonic()
            with pytest.raises(copydata.TimedOut) as e:
                sender.send(b"anyone?", timeout=0.3)
            assert time.monotonic() - started >= 0.3
            assert e.value.stage == "reply", e.value
            held = mailbox.recv(timeout=10.0)  # the timed-out call
            # Posts queue up while nothing is taken, until the queue is full.
            posted = 0
            with pytest.raises(copydata.Full) as e:
                while posted < 100_000:
                    sender.try_post(b"x" * 1000, tag=posted)
                    posted += 1
            assert isinstance(e.value, BlockingIOError)
            assert posted > 10
            started = time.monotonic()
            with pytest.raises(copydata.TimedOut) as e:
                sender.post(b"y" * 1000, timeout=0.3)  # as large as those that filled it
            assert time.monotonic() - started >= 0.3
            assert e.value.stage == "room", e.value
            # The timed-out call's connection was dropped: its reply finds no one.
            with pytest.raises(copydata.SenderGone):
                held.reply(0)
            # The posts went through, in order, once each.
            for i in range(posted):
                request = mailbox.recv(timeout=10.0)
                assert (request.tag, request.expects_reply) == (i, False)
            # And the connection still works.
            answer = threading.Thread(target=lambda: mailbox.recv(timeout=10.0).reply(5, b"ok"))
            answer.start()
            assert sender.send(b"still there?", timeout=10.0) == (5, b"ok")
            answer.join(10.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGSTOP")
def test_a_time_out_says_what_it_was_waiting_for(cli, name):
    """`TimedOut.stage`: "reply" (the message went out and may still be
    handled), "room" and "connecting" (nothing was sent); None for a
    time-out that is not a send's."""
    listener = cli("listen", name, "--delay", "30s")
    assert listener.readline() == f"ready {name}"
    with copydata.Sender(name, timeout=5.0) as sender:
        # The listener holds the message: no reply in time.
        with pytest.raises(copydata.TimedOut) as e:
            sender.send(b"held", timeout=0.3)
        assert e.value.stage == "reply", e.value
        assert "waiting for the reply of mailbox" in str(e.value)
        # Behind the held message the queue fills: no room in time.
        with pytest.raises(copydata.Full):
            for _ in range(100_000):
                sender.try_post(b"")
        with pytest.raises(copydata.TimedOut) as e:
            sender.post(b"more", timeout=0.3)
        assert e.value.stage == "room", e.value
        assert "waiting for room in the queue of mailbox" in str(e.value)
    # A stopped receiver never completes a set-up.
    listener.signal(signal.SIGSTOP)
    try:
        with pytest.raises(copydata.TimedOut) as e:
            copydata.send(name, b"x", timeout=0.3)
        assert e.value.stage == "connecting", e.value
        assert "connecting to mailbox" in str(e.value)
        with pytest.raises(copydata.TimedOut) as e:
            copydata.Sender(name, timeout=0.3)
        assert e.value.stage == "connecting", e.value
    finally:
        listener.signal(signal.SIGCONT)
    # Other time-outs have no stage.
    with copydata.Mailbox(name + "-recv") as mailbox:
        with pytest.raises(copydata.TimedOut) as e:
            mailbox.recv(timeout=0.05)
        assert e.value.stage is None


def test_receiver_death_is_reported_and_a_new_receiver_is_reached(cli, serving, name):
    listener = cli("listen", name, "--delay", "30s")
    assert listener.readline() == f"ready {name}"
    with copydata.Sender(name, timeout=5.0) as sender:
        # The process that bound the mailbox, as the connection knows it.
        assert sender.receiver_pid == listener.proc.pid
        result = {}

        def call():
            try:
                sender.send(b"x", timeout=20.0)
            except BaseException as e:  # handed to the test thread
                result["error"] = e

        answer = threading.Thread(target=call)
        answer.start()
        time.sleep(0.3)
        listener.proc.kill()
        answer.join(20.0)
        assert isinstance(result.get("error"), copydata.ReceiverDied), result
        assert sender.receiver_pid is None
        listener.finish()
        # A receiver bound again under the name is reached by the same Sender.
        with serving(name, lambda tag, data: (9, data)):
            assert sender.send(b"three", timeout=10.0) == (9, b"three")
            assert sender.receiver_pid == os.getpid()
    assert sender.receiver_pid is None


def test_sections_travel_with_a_senders_message(name):
    with copydata.Mailbox(name) as mailbox, copydata.Section.anonymous(4096) as section:
        section.map()[:5] = b"hello"
        with copydata.Sender(name) as sender:
            got = {}

            def take():
                request = mailbox.recv(timeout=10.0)
                (s,) = request.sections
                got["bytes"] = bytes(s.map()[:5])
                request.reply(1)

            thread = threading.Thread(target=take)
            thread.start()
            assert sender.send(b"look", sections=[section], timeout=10.0) == (1, b"")
            thread.join(10.0)
            assert got["bytes"] == b"hello"


def test_one_sender_shared_by_threads(serving, name):
    with serving(name, lambda tag, data: (tag, data)):
        with copydata.Sender(name) as sender:
            errors = []

            def run(k):
                try:
                    for i in range(100):
                        assert sender.send(b"%d" % i, tag=k, timeout=10.0) == (k, b"%d" % i)
                except BaseException as e:  # handed to the test thread
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30.0)
            assert not errors, errors


WAIT_FOREVER = """
import sys, copydata
sender = copydata.Sender(sys.argv[1])
print("ready", flush=True)
try:
    sender.send(b"no answer ever")
except KeyboardInterrupt:
    # The next call uses a new connection: it gets its own reply.
    print("interrupted", flush=True)
    print(sender.send(b"again", timeout=10.0), flush=True)
"""


def test_ctrl_c_interrupts_a_senders_wait_and_the_next_call_works(python_child, name):
    with copydata.Mailbox(name) as mailbox:
        child = python_child(WAIT_FOREVER, name)
        assert child.readline() == "ready"
        pending = mailbox.recv(timeout=10.0)  # held, never answered
        child.signal(signal.SIGINT)
        assert child.readline() == "interrupted"
        again = mailbox.recv(timeout=10.0)
        assert again.data == b"again"
        again.reply(3, b"fine")
        assert child.readline() == "(3, b'fine')"
        code, _, err = child.finish(timeout=10.0)
        assert code == 0, err
        del pending


def test_a_calls_timeout_counts_its_wait_for_another_threads_call(name):
    with copydata.Mailbox(name) as mailbox, copydata.Sender(name) as sender:
        # Another thread's call is held (nobody answers it for a while).
        replies = []
        first = threading.Thread(target=lambda: replies.append(sender.send(b"held", timeout=10.0)))
        first.start()
        held = mailbox.recv(timeout=10.0)
        started = time.monotonic()
        with pytest.raises(copydata.TimedOut):
            sender.send(b"second", timeout=0.3)
        took = time.monotonic() - started
        assert 0.3 <= took < 3.0, took
        held.reply(4)
        first.join(10.0)
        assert not first.is_alive()
        assert replies == [(4, b"")]


def test_a_signal_handler_cannot_use_the_sender_its_thread_waits_on(name):
    with copydata.Mailbox(name) as mailbox, copydata.Sender(name) as sender:

        def handler(signum, frame):
            sender.post(b"from the handler")

        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(copydata.Error, match="in progress on this thread"):
                sender.send(b"held", timeout=10.0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert mailbox.recv(timeout=10.0).data == b"held"
        # The sender goes on, on a new connection.
        sender.post(b"after")
        assert mailbox.recv(timeout=10.0).data == b"after"


FORK_CHILD_POSTS = """
import os, sys, copydata
sender = copydata.Sender(sys.argv[1])
sender.post(b"parent")
pid = os.fork()
if pid == 0:
    try:
        sender.post(b"child")
        sender.close()
        os._exit(0)
    except BaseException:
        os._exit(1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
sender.post(b"parent again")
sender.close()
"""


def test_a_sender_inherited_through_fork_works_in_the_child(python_child, name):
    with copydata.Mailbox(name) as mailbox:
        child = python_child(FORK_CHILD_POSTS, name)
        assert child.readline() == "child 0"
        got = sorted(mailbox.recv(timeout=10.0).data for _ in range(3))
        assert got == [b"child", b"parent", b"parent again"]
        code, _, err = child.finish(timeout=10.0)
        assert code == 0, err


FLUSH_AND_EXIT = """
import os, sys, copydata
sender = copydata.Sender(sys.argv[1])
sender.post(b"a" * 100_000, tag=1)
with sender.loan(200_000) as loan:
    memoryview(loan)[:] = b"b" * 200_000
    loan.post(tag=2)
sender.flush(timeout=30.0)
print("flushed", flush=True)
os._exit(0)  # at once: nothing may be left to do
"""


def test_posts_flushed_before_an_exit_arrive_whole(python_child, name):
    with copydata.Mailbox(name) as mailbox:
        # Nothing is taken until the child has gone (on Linux the posts need
        # nothing of it: flush returns at once).
        child = python_child(FLUSH_AND_EXIT, name)
        assert child.readline(timeout=30.0) == "flushed"
        assert child.finish()[0] == 0
        got = [(r.tag, r.data) for r in (mailbox.recv(timeout=10.0) for _ in range(2))]
        assert got == [(1, b"a" * 100_000), (2, b"b" * 200_000)]
        with copydata.Sender(name) as sender:
            sender.flush(timeout=0.0)  # nothing posted yet
            sender.post(b"small", tag=3)
            sender.flush(timeout=0.0)  # a small post needs nothing of the sender
            assert mailbox.recv(timeout=10.0).tag == 3


def test_a_reply_above_max_reply_is_refused(serving, name):
    with serving(name, lambda tag, data: (0, bytes(tag))):
        with copydata.Sender(name, timeout=5.0, max_reply=100) as sender:
            assert sender.send(b"", tag=100, timeout=10.0) == (0, bytes(100))
            with pytest.raises(copydata.ProtocolError):
                sender.send(b"", tag=101, timeout=10.0)
            # The next call connects again and is served.
            assert sender.send(b"", tag=5, timeout=10.0) == (0, bytes(5))


def test_a_post_with_no_time_goes_out_when_there_is_room(serving, name):
    seen = []
    with serving(name, lambda tag, data: seen.append(data)):
        with copydata.Sender(name, timeout=5.0) as sender:
            sender.send(b"warm-up", timeout=10.0)
            sender.post(b"a", timeout=0)
            loan = sender.loan(1)
            memoryview(loan)[:] = b"b"
            loan.post(timeout=0)
            sender.send(b"after", timeout=10.0)
    assert seen == [b"warm-up", b"a", b"b", b"after"]


def test_sender_and_mailbox_options(name):
    with copydata.Mailbox(name, max_connections=1, allow_uids=[4_000_000]) as mailbox:
        thread = threading.Thread(target=mailbox.serve, args=(lambda tag, data: (tag, data),))
        thread.start()
        try:
            # Both sides sleep at once: slower, but every call is answered.
            with copydata.Sender(name, timeout=5.0, park=True) as parked:
                for i in range(20):
                    assert parked.send(b"p", tag=i, timeout=10.0) == (i, b"p")
                # The mailbox takes one connection at a time.
                with pytest.raises(copydata.Busy, match="it already has 1 connection, its limit"):
                    copydata.Sender(name, timeout=5.0)
        finally:
            mailbox.close()
            thread.join(10.0)
    assert not thread.is_alive()
    # Another user's mailbox of that name: nobody of that user bound it.
    if sys.platform == "linux":
        with pytest.raises(copydata.NotFound):
            copydata.Sender(name, timeout=2.0, owner=4_000_001)
