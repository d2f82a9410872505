"""copydata.Loan: a buffer of shared memory lent by a Sender, written in
place through the buffer protocol and sent without a copy."""

import gc
import io
import threading

import pytest

import copydata


def test_a_loan_is_written_in_place_and_sent(serving, name):
    seen = []

    def handler(tag, data):
        seen.append((tag, data))
        return len(data), data[:4]

    payload = bytes(i % 251 for i in range(1 << 20))
    with serving(name, handler):
        with copydata.Sender(name, timeout=5.0) as sender:
            loan = sender.loan(len(payload), timeout=10.0)
            assert len(loan) == len(payload) and loan.lent
            assert repr(loan) == f"<copydata.Loan of {len(payload)} bytes>"
            with memoryview(loan) as m:
                assert not m.readonly and m.nbytes == len(payload)
                m[:] = payload
            assert loan.send(tag=7, timeout=10.0) == (len(payload), payload[:4])
            assert not loan.lent
            assert repr(loan) == f"<copydata.Loan of {len(payload)} bytes, sent>"
            # Once sent, the memory is not this process's to use.
            with pytest.raises(BufferError):
                memoryview(loan)
            with pytest.raises(copydata.Error, match="was sent"):
                loan.send()
            loan.close()  # does nothing now
            # Filled by a reader straight from a file, then posted.
            with sender.loan(5) as loan:
                assert io.BytesIO(b"hello").readinto(loan) == 5
                loan.post(tag=8)
            # No bytes at all.
            with sender.loan(0) as loan:
                assert bytes(memoryview(loan)) == b""
                assert loan.send(tag=9, timeout=10.0) == (0, b"")
            # The Sender goes on as before.
            assert sender.send(b"after", tag=10, timeout=10.0) == (5, b"afte")
    assert [tag for tag, _ in seen] == [7, 8, 9, 10]
    assert seen[0][1] == payload and seen[1][1] == b"hello" and seen[2][1] == b""


def test_a_loan_is_not_sent_while_its_memory_is_held(serving, name):
    with serving(name, lambda tag, data: (tag, data)):
        with copydata.Sender(name) as sender:
            loan = sender.loan(3)
            m = memoryview(loan)
            m[:] = b"abc"
            with pytest.raises(BufferError, match="held"):
                loan.send(timeout=10.0)
            with pytest.raises(BufferError, match="held"):
                loan.close()
            assert loan.lent
            m.release()
            assert loan.send(tag=1, timeout=10.0) == (1, b"abc")


def test_while_a_loan_is_out_the_senders_other_calls_wait(serving, name):
    seen = []

    def handler(tag, data):
        seen.append(tag)
        return tag, b""

    with serving(name, handler):
        with copydata.Sender(name) as sender:
            loan = sender.loan(10)
            # This thread would wait for itself: refused.
            with pytest.raises(copydata.Error, match="holds a loan"):
                sender.send(b"x", timeout=1.0)
            with pytest.raises(copydata.Error, match="holds a loan"):
                sender.loan(1)
            # Another thread's call waits its turn, within its timeout ...
            errors = []

            def late():
                try:
                    sender.send(b"late", tag=2, timeout=0.2)
                except BaseException as e:  # handed to the test thread
                    errors.append(e)

            t = threading.Thread(target=late)
            t.start()
            t.join(10.0)
            assert len(errors) == 1 and isinstance(errors[0], copydata.TimedOut), errors
            # ... and runs once the loan is sent.
            done = []
            t = threading.Thread(target=lambda: done.append(sender.send(b"next", tag=3, timeout=10.0)))
            t.start()
            assert loan.send(tag=1, timeout=10.0) == (1, b"")
            t.join(10.0)
            assert done == [(3, b"")]
    assert seen == [1, 3]


def test_an_unsent_loan_closed_or_dropped_is_given_back(serving, name):
    with serving(name, lambda tag, data: (tag, data)):
        with copydata.Sender(name) as sender:
            with sender.loan(100) as loan:
                memoryview(loan)[:2] = b"no"
            assert not loan.lent
            assert repr(loan) == "<copydata.Loan of 100 bytes, closed>"
            loan = sender.loan(100)
            del loan
            gc.collect()
            # Far more loans than the pool has buffers: each was given back.
            for i in range(50):
                with sender.loan(1 << 16) as loan:
                    pass
            assert sender.send(b"ok", tag=4, timeout=10.0) == (4, b"ok")


def test_a_loan_posted_into_a_full_queue_stays_out(name):
    with copydata.Mailbox(name) as mailbox, copydata.Sender(name) as sender:
        # Filled with the smallest messages: no room for a loan's either.
        posted = 0
        with pytest.raises(copydata.Full):
            while posted < 100_000:
                sender.try_post(b"", tag=posted)
                posted += 1
        loan = sender.loan(1000, timeout=10.0)
        memoryview(loan)[:] = b"y" * 1000
        with pytest.raises(copydata.Full):
            loan.try_post(tag=posted)
        with pytest.raises(copydata.TimedOut):
            loan.post(tag=posted, timeout=0.2)
        assert loan.lent
        for i in range(posted):
            assert mailbox.recv(timeout=10.0).tag == i
        loan.post(tag=posted, timeout=10.0)
        assert not loan.lent
        request = mailbox.recv(timeout=10.0)
        assert (request.tag, request.data) == (posted, b"y" * 1000)


def test_a_loan_cannot_be_sent_once_its_sender_is_closed(serving, name):
    with serving(name, lambda tag, data: (tag, data)):
        sender = copydata.Sender(name)
        loan = sender.loan(4)
        memoryview(loan)[:] = b"late"
        sender.close()
        with pytest.raises(copydata.Closed):
            loan.send(timeout=10.0)
        assert not loan.lent
        assert repr(loan) == "<copydata.Loan of 4 bytes, closed with its Sender>"


def test_no_time_left_keeps_the_loan(serving, name):
    with serving(name, lambda tag, data: (tag, data)):
        with copydata.Sender(name) as sender:
            loan = sender.loan(2)
            memoryview(loan)[:] = b"ok"
            with pytest.raises(copydata.TimedOut):
                loan.send(tag=1, timeout=0)
            assert loan.lent
            assert loan.send(tag=1, timeout=10.0) == (1, b"ok")


def test_a_loan_waits_for_a_buffer_only_as_long_as_asked(name):
    with copydata.Mailbox(name) as mailbox, copydata.Sender(name) as sender:
        # Nothing is taken: posted loans keep their buffers until the pool
        # has none left.
        held = 0
        with pytest.raises(copydata.Full):
            while held < 64:
                with sender.loan(100_000, timeout=0) as loan:
                    loan.post(tag=held)
                held += 1
        assert held >= 2
        with pytest.raises(copydata.TimedOut):
            sender.loan(100_000, timeout=0.1)
        for i in range(held):
            request = mailbox.recv(timeout=10.0)
            assert (request.tag, len(request.data)) == (i, 100_000)
            request.reply(0)
        with sender.loan(100_000, timeout=10.0) as loan:
            assert loan.lent


def test_a_with_block_that_raises_is_not_hidden_by_a_held_buffer(name):
    with copydata.Mailbox(name) as mailbox, copydata.Sender(name) as sender:
        with pytest.raises(ZeroDivisionError):
            with sender.loan(8) as loan:
                m = memoryview(loan)
                1 / 0
        assert loan.lent  # m still holds it
        m.release()
        loan.close()
        with pytest.raises(copydata.TimedOut):  # the Sender goes on (nobody answers)
            sender.send(b"x", timeout=0.1)
        del mailbox


FORK_CHILD_LOAN = """
import os, sys, copydata
sender = copydata.Sender(sys.argv[1])
loan = sender.loan(6)
memoryview(loan)[:] = b"parent"
pid = os.fork()
if pid == 0:
    try:
        # The memory is the parent's: the child can only close the loan.
        try:
            memoryview(loan)
            os._exit(2)
        except BufferError:
            pass
        try:
            loan.send(timeout=5.0)
            os._exit(3)
        except copydata.Error:
            pass
        loan.close()
        # Then the Sender works, on a connection of the child's.
        sender.post(b"child", timeout=5.0)
        sender.close()
        os._exit(0)
    except BaseException:
        os._exit(1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
loan.post(timeout=5.0)
sender.close()
"""


def test_a_loan_out_at_fork_can_only_be_closed_in_the_child(python_child, name):
    with copydata.Mailbox(name) as mailbox:
        child = python_child(FORK_CHILD_LOAN, name)
        assert child.readline() == "child 0"
        got = sorted(mailbox.recv(timeout=10.0).data for _ in range(2))
        assert got == [b"child", b"parent"]
        code, _, err = child.finish(timeout=10.0)
        assert code == 0, err


LOAN_WAITS_FOREVER = """
import sys, copydata
sender = copydata.Sender(sys.argv[1])
loan = sender.loan(5)
memoryview(loan)[:] = b"never"
print("ready", flush=True)
try:
    loan.send()
except KeyboardInterrupt:
    # The loan went with the interrupted call: its memory is not ours now.
    try:
        memoryview(loan)
    except BufferError:
        print("interrupted", repr(loan), flush=True)
    # The next call uses a new connection: it gets its own reply.
    print(sender.send(b"again", timeout=10.0), flush=True)
"""


def test_ctrl_c_interrupts_a_loans_send_and_the_sender_goes_on(python_child, name):
    import signal

    with copydata.Mailbox(name) as mailbox:
        child = python_child(LOAN_WAITS_FOREVER, name)
        assert child.readline() == "ready"
        pending = mailbox.recv(timeout=10.0)  # held, never answered
        assert pending.data == b"never"
        child.signal(signal.SIGINT)
        assert child.readline() == "interrupted <copydata.Loan of 5 bytes, lost with an interrupted call>"
        again = mailbox.recv(timeout=10.0)
        assert again.data == b"again"
        again.reply(3, b"fine")
        assert child.readline() == "(3, b'fine')"
        code, _, err = child.finish(timeout=10.0)
        assert code == 0, err
        del pending
