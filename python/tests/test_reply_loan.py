"""copydata.ReplyLoan: shared memory lent by a Request for its reply,
written in place through the buffer protocol and read by the sender where
it was written."""

import numpy as np
import pytest

import copydata
from test_mailbox import in_thread


def test_a_reply_is_written_in_place_and_sent(name):
    payload = bytes(i % 251 for i in range(1 << 20))
    with copydata.Mailbox(name) as mailbox:
        answer = in_thread(copydata.send, name, b"ping", tag=1, timeout=10.0)
        request = mailbox.recv(timeout=10.0)
        loan = request.loan_reply(len(payload))
        assert len(loan) == len(payload) and loan.lent
        assert repr(loan) == f"<copydata.ReplyLoan of {len(payload)} bytes>"
        with memoryview(loan) as m:
            assert not m.readonly and m.nbytes == len(payload)
            m[:] = payload
        request.reply(3, loan)
        assert answer() == (3, payload)
        assert request.answered and not loan.lent
        assert repr(loan) == f"<copydata.ReplyLoan of {len(payload)} bytes, sent>"
        # Once sent, the memory is the sender's.
        with pytest.raises(BufferError):
            memoryview(loan)
        loan.close()  # does nothing now
        with pytest.raises(copydata.Error, match="already answered"):
            request.loan_reply(10)

        # Written by numpy, on a Sender kept for many calls.
        with copydata.Sender(name) as sender:
            for n in range(3):
                answer = in_thread(sender.send, b"", tag=2, timeout=10.0)
                request = mailbox.recv(timeout=10.0)
                loan = request.loan_reply(8 * 1000)
                array = np.frombuffer(loan, dtype=np.float64)
                array[:] = np.arange(1000) * n
                del array
                request.reply(n, loan)
                code, data = answer()
                assert code == n
                assert np.array_equal(np.frombuffer(data, dtype=np.float64), np.arange(1000) * n)

        # No bytes at all.
        answer = in_thread(copydata.send, name, b"", timeout=10.0)
        request = mailbox.recv(timeout=10.0)
        loan = request.loan_reply(0)
        assert bytes(memoryview(loan)) == b""
        request.reply(4, loan)
        assert answer() == (4, b"")


def test_a_reply_loan_is_not_sent_while_its_memory_is_held(name):
    with copydata.Mailbox(name) as mailbox:
        answer = in_thread(copydata.send, name, b"ping", timeout=10.0)
        request = mailbox.recv(timeout=10.0)
        loan = request.loan_reply(3)
        m = memoryview(loan)
        m[:] = b"abc"
        with pytest.raises(BufferError, match="held"):
            request.reply(1, loan)
        with pytest.raises(BufferError, match="held"):
            loan.close()
        # Nothing was answered: the request and the loan are as they were.
        assert not request.answered and loan.lent
        m.release()
        request.reply(1, loan)
        assert answer() == (1, b"abc")


def test_a_reply_loan_can_be_given_back(name):
    with copydata.Mailbox(name) as mailbox:
        # Answered with other bytes: the loan stays out until closed.
        answer = in_thread(copydata.send, name, b"ping", timeout=10.0)
        request = mailbox.recv(timeout=10.0)
        loan = request.loan_reply(100)
        request.reply(2, b"plain")
        assert answer() == (2, b"plain")
        assert loan.lent
        loan.close()
        assert not loan.lent
        assert repr(loan) == "<copydata.ReplyLoan of 100 bytes, closed>"

        # A with block gives it back; a closed loan is no reply.
        answer = in_thread(copydata.send, name, b"ping", timeout=10.0)
        request = mailbox.recv(timeout=10.0)
        with request.loan_reply(10) as loan:
            pass
        with pytest.raises(copydata.Error, match="was closed"):
            request.reply(0, loan)
        assert not request.answered
        request.reply(5)
        assert answer() == (5, b"")

        # A posted message gets no reply, so it lends none.
        with copydata.Sender(name) as sender:
            sender.post(b"note", tag=6)
            request = mailbox.recv(timeout=10.0)
            assert not request.expects_reply
            with pytest.raises(copydata.Error, match="posted"):
                request.loan_reply(10)
            request.reply(0)


def test_a_rust_sender_reads_a_reply_python_lent(cli, name):
    text = b"written in place by Python\n" * 200
    with copydata.Mailbox(name) as mailbox:
        sender = cli("send", name, "hello from rust", "--timeout", "10s")
        request = mailbox.recv(timeout=10.0)
        assert request.data == b"hello from rust"
        loan = request.loan_reply(len(text))
        with memoryview(loan) as m:
            m[:] = text
        request.reply(7, loan)
        code, out, err = sender.finish()
    assert code == 0, err
    assert text.decode() in out


def test_a_reply_that_fails_loses_its_loan(name):
    with copydata.Mailbox(name) as mailbox:
        with pytest.raises(copydata.TimedOut):
            # Gone before its reply: it stops waiting, and drops its connection.
            with copydata.Sender(name) as sender:
                answer = in_thread(sender.send, b"ping", timeout=0.2)
                request = mailbox.recv(timeout=10.0)
                answer()
        loan = request.loan_reply(100_000)
        with memoryview(loan) as m:
            m[:5] = b"late!"
        try:
            request.reply(1, loan)
        except copydata.SenderGone:
            assert repr(loan) == "<copydata.ReplyLoan of 100000 bytes, lost with a reply that failed>"
        assert request.answered and not loan.lent
        # The mailbox goes on, its buffers with it.
        for n in range(20):
            answer = in_thread(copydata.send, name, b"", timeout=10.0)
            request = mailbox.recv(timeout=10.0)
            with request.loan_reply(100_000) as loan:
                memoryview(loan)[:1] = bytes([n])
                request.reply(n, loan)
            code, data = answer()
            assert (code, len(data), data[0]) == (n, 100_000, n)


def test_a_loan_of_another_request_is_copied(name):
    with copydata.Mailbox(name) as mailbox:
        first = in_thread(copydata.send, name, b"1", timeout=10.0)
        one = mailbox.recv(timeout=10.0)
        loan = one.loan_reply(6)
        memoryview(loan)[:] = b"shared"
        one.reply(1, b"own")
        assert first() == (1, b"own")
        # Another request, on another connection.
        second = in_thread(copydata.send, name, b"2", timeout=10.0)
        two = mailbox.recv(timeout=10.0)
        two.reply(2, loan)
        assert second() == (2, b"shared")
        assert not loan.lent


FORK_CHILD_REPLY_LOAN = """
import os, sys, copydata
with copydata.Mailbox(sys.argv[1]) as mailbox:
    print("ready", flush=True)
    request = mailbox.recv(timeout=10.0)
    loan = request.loan_reply(6)
    pid = os.fork()
    if pid == 0:
        try:
            # The memory and the request are the parent's: the child can
            # only close the loan.
            try:
                memoryview(loan)
                os._exit(2)
            except BufferError:
                pass
            try:
                request.reply(0, loan)
                os._exit(3)
            except copydata.Error:
                pass
            loan.close()
            del loan
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    memoryview(loan)[:] = b"parent"
    request.reply(os.waitstatus_to_exitcode(status), loan)
"""


def test_a_reply_loan_out_at_fork_can_only_be_closed_in_the_child(python_child, name):
    child = python_child(FORK_CHILD_REPLY_LOAN, name)
    assert child.readline() == "ready"
    assert copydata.send(name, b"ping", timeout=10.0) == (0, b"parent")
    code, _, err = child.finish(timeout=10.0)
    assert code == 0, err
