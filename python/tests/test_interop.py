"""Python and Rust (the copydata tool) in separate processes: messages both
ways, and a numpy array over a named section both sides map."""

import hashlib
import json
import re
import threading

import numpy as np

import copydata


def test_python_sends_to_a_rust_mailbox_and_gets_its_reply(cli, name):
    listener = cli("listen", name, "--echo", "--reply-code", "42", "--json", "--count", "2")
    assert json.loads(listener.readline()) == {"ready": name}
    payload = bytes(range(256)) * 3 + "héllo".encode()

    assert copydata.send(name, payload, tag=7, timeout=5.0) == (42, payload)
    # Any bytes-like object goes: here a numpy array, with no timeout.
    array = np.arange(10, dtype=np.int32)
    assert copydata.send(name, array, tag=2**64 - 1) == (42, array.tobytes())

    first, second = (json.loads(listener.readline()) for _ in range(2))
    assert (first["tag"], first["size"]) == (7, len(payload))
    assert first["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (second["tag"], second["size"]) == (2**64 - 1, 40)
    code, _, err = listener.finish()
    assert code == 0, err


def test_python_mailbox_receives_from_a_rust_sender_and_replies(cli, name):
    with copydata.Mailbox(name) as mailbox:
        sender = cli("send", name, "hello from rust", "--tag", "9", "--timeout", "10s")
        request = mailbox.recv(timeout=10.0)
        assert (request.tag, request.data) == (9, b"hello from rust")
        assert request.expects_reply
        assert request.sender_pid == sender.pid
        assert not request.answered
        request.reply(5, b"pong")
        assert request.answered
        code, out, err = sender.finish()
    assert code == 0, err
    assert "pong" in out
    assert re.search(r"\b5\b", out + err), (out, err)


def test_python_mailbox_receives_a_posted_message(cli, name):
    with copydata.Mailbox(name) as mailbox:
        poster = cli("send", name, "note", "--post")
        request = mailbox.recv(timeout=10.0)
        assert (request.data, request.expects_reply) == (b"note", False)
        request.reply(1)  # goes nowhere, and is no error
        code, _, err = poster.finish()
    assert code == 0, err


def test_serve_answers_rust_senders_until_closed(cli, name):
    mailbox = copydata.Mailbox(name)
    seen = []

    def handler(tag, data):
        seen.append((tag, data))
        return tag + 1, data[::-1]

    server = threading.Thread(target=mailbox.serve, args=(handler,))
    server.start()
    try:
        for tag in range(3):
            sender = cli("send", name, f"message {tag}", "--tag", str(tag), "--timeout", "10s")
            code, out, err = sender.finish()
            assert code == 0, err
            assert f"{tag} egassem" in out
            assert re.search(rf"\b{tag + 1}\b", out + err), (out, err)
    finally:
        mailbox.close()
        server.join(timeout=10)
    assert not server.is_alive()
    assert seen == [(t, f"message {t}".encode()) for t in range(3)]


def test_numpy_array_over_a_section_the_rust_side_created(cli, name, tmp_path):
    holder = cli("section", "create", name, "--size", "8KiB", "--hold")
    assert name in holder.readline()
    values = np.linspace(0.0, 1.0, 1024)
    (tmp_path / "in").write_bytes(values.tobytes())
    code, _, err = cli("section", "write", name, "--file", tmp_path / "in").finish()
    assert code == 0, err

    with copydata.Section.open(name) as section:
        assert (section.name, section.size, len(section)) == (name, 8192, 8192)
        array = np.frombuffer(section, dtype=np.float64)  # the shared memory itself
        assert np.array_equal(array, values)
        array *= 2
        # A part of the section at an odd offset, through Section.map.
        tail = np.frombuffer(section.map(8000, 192), dtype=np.uint8)
        tail[:] = 7
        del array, tail

    code, _, err = cli("section", "read", name, "--out", tmp_path / "out").finish()
    assert code == 0, err
    back = (tmp_path / "out").read_bytes()
    expected = bytearray((values * 2).tobytes())
    expected[8000:] = b"\x07" * 192
    assert back == bytes(expected)


def test_rust_reads_a_section_python_created(cli, name, tmp_path):
    with copydata.Section.create(name, 4096) as section:
        matrix = np.frombuffer(section, dtype=np.uint32).reshape(32, 32)
        matrix[:] = np.arange(1024, dtype=np.uint32).reshape(32, 32).T
        code, _, err = cli("section", "read", name, "--out", tmp_path / "out").finish()
        assert code == 0, err
        assert (tmp_path / "out").read_bytes() == matrix.tobytes()
        # And Rust writes into it while Python has it mapped.
        code, _, err = cli("section", "write", name, "abc", "--offset", "4093").finish()
        assert code == 0, err
        assert bytes(section.map(4093)) == b"abc"
        del matrix
    # The last holder is gone: so is the name.
    code, _, _ = cli("section", "read", name).finish()
    assert code != 0
