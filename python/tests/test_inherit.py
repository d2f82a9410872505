"""Sections handed to a child process (copydata.Popen and
inherited_sections), read-only hand-outs and file-backed sections."""

import os
import subprocess
import sys
import textwrap

import pytest

import copydata

# The child's side: takes its sections, reports each (name, size, whether
# read-only, the text at its start), writes into the writable ones and
# checks that the read-only ones refuse writing.
REPORT = textwrap.dedent(
    """
    import os, copydata
    sections = copydata.inherited_sections()
    for i, s in enumerate(sections):
        text = bytes(s.map(0, 32)).split(b"\\0")[0].decode()
        print(i, s.name or "-", s.size, "ro" if s.readonly else "rw", text, flush=True)
        view = memoryview(s)
        if s.readonly:
            assert view.readonly
            try:
                s.map(0, 1)[0] = 1
            except TypeError:
                pass
            else:
                raise SystemExit("a read-only section took a write")
        else:
            view[:32] = f"child {os.getpid()} wrote {i}".encode().ljust(32, b"\\0")
        view.release()
    try:
        copydata.inherited_sections()
    except copydata.Error as e:
        print("again:", e, flush=True)
    """
)


def put(section, text):
    section.map(0, 32)[:] = text.encode().ljust(32, b"\0")


def text(section):
    return bytes(section.map(0, 32)).split(b"\0")[0].decode()


def run_child(script, **kwargs):
    child = copydata.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    try:
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    return out.splitlines(), child.pid


def test_popen_passes_exactly_the_given_sections(name):
    with (
        copydata.Section.anonymous(4096) as anon,
        copydata.Section.create(name, 8192) as named,
        copydata.Section.anonymous(4096) as secret,
        copydata.Section.anonymous(4096) as kept,
    ):
        put(anon, "anon")
        put(named, "named")
        put(secret, "secret")
        frozen = secret.read_only()
        assert frozen.readonly and not secret.readonly
        lines, pid = run_child(REPORT, sections=[anon, named, frozen])
        assert lines == [
            "0 - 4096 rw anon",
            f"1 {name} 8192 rw named",
            "2 - 4096 ro secret",
            "again: the inherited sections were already taken",
        ]
        assert text(anon) == f"child {pid} wrote 0"
        assert text(named) == f"child {pid} wrote 1"
        assert text(secret) == "secret"
        # Only the given sections went: the child holds nothing else of ours.
        assert kept.size == 4096
        frozen.close()


def test_popen_keeps_its_other_arguments(tmp_path):
    with copydata.Section.anonymous(100) as section:
        put(section, "piped")
        script = "import sys, copydata; [s] = copydata.inherited_sections(); sys.stdout.write(sys.stdin.read() + bytes(s.map(0, 5)).decode() + open('f').read())"
        (tmp_path / "f").write_text("!")
        child = copydata.Popen(
            [sys.executable, "-c", script],
            sections=[section],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tmp_path,
            env={**os.environ, "EXTRA": "1"},
            text=True,
        )
        out, _ = child.communicate("in:", timeout=60)
        assert (out, child.returncode) == ("in:piped!", 0)


def test_a_child_given_no_sections_takes_none():
    script = "import copydata; print(copydata.inherited_sections())"
    lines, _ = run_child(script, env={**os.environ, copydata.INHERIT_VAR: "1;3:4:5"})
    # Popen without sections sets an empty list, so a token in the
    # environment it was given (or inherited) does not reach the child.
    assert lines == ["[]"]
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert plain.stdout.splitlines() == ["[]"]


def test_a_token_passed_on_without_its_handles_is_refused():
    # A grandchild started with plain subprocess inherits the environment
    # (and so the token) but not the handles: it must refuse the token.
    grandchild = textwrap.dedent(
        """
        import copydata
        try:
            copydata.inherited_sections()
        except copydata.Error as e:
            print("refused:", e)
        """
    )
    script = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    with copydata.Section.anonymous(4096) as section:
        lines, _ = run_child(script, sections=[section])
    assert len(lines) == 1 and lines[0].startswith("refused: stale COPYDATA_SECTIONS token"), lines


def test_inheritance_for_another_way_of_starting_processes():
    with copydata.Section.anonymous(4096) as section, copydata.Inheritance([section]) as passed:
        put(section, "by hand")
        assert len(passed) == 1 and len(passed.handles) == 1
        assert passed.token.startswith("1;")
        script = "import copydata; [s] = copydata.inherited_sections(); print(bytes(s.map(0, 7)).decode())"
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, copydata.INHERIT_VAR: passed.token},
            pass_fds=passed.handles,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout.splitlines() == ["by hand"], out.stderr
    assert passed.closed and repr(passed) == "Inheritance(closed)"
    with pytest.raises(copydata.Closed):
        passed.token
    closed = copydata.Section.anonymous(10)
    closed.close()
    with pytest.raises(copydata.Closed):
        copydata.Inheritance([closed])
    with pytest.raises(TypeError):
        copydata.Inheritance([b"not a section"])


def test_a_read_only_hand_out_sees_later_writes():
    with copydata.Section.anonymous(4096) as section:
        frozen = section.read_only()
        put(section, "later")
        assert text(frozen) == "later"
        with pytest.raises(TypeError):
            memoryview(frozen)[0] = 1
        again = frozen.read_only()
        assert again.readonly
        with pytest.raises(TypeError):
            again.map(0, 1)[0] = 1
        again.close()
        frozen.close()
        with pytest.raises(copydata.Closed):
            frozen.read_only()


def test_a_file_backed_section(tmp_path):
    path = tmp_path / "table.bin"
    path.write_bytes(b"." * 10_000)
    with copydata.Section.file(path) as section:
        assert (section.name, section.size, section.readonly) == (None, 10_000, False)
        section.map(9_000, 4)[:] = b"PATH"
    assert path.read_bytes()[9_000:9_004] == b"PATH"
    with copydata.Section.file(str(path), readonly=True) as section:
        assert section.readonly and bytes(section.map(9_000, 4)) == b"PATH"
    with pytest.raises(copydata.NotFound) as e:
        copydata.Section.file(tmp_path / "missing")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(copydata.InvalidArgument, match="not a regular file"):
        copydata.Section.file(tmp_path)
    (tmp_path / "empty").touch()
    with pytest.raises(copydata.InvalidArgument, match="empty"):
        copydata.Section.file(tmp_path / "empty")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(copydata.InvalidArgument, match="not a regular file"):
        copydata.Section.file(tmp_path / "fifo")


def test_size_sealing_is_reported(name):
    with copydata.Section.anonymous(4096) as anon, copydata.Section.create(name, 4096) as named:
        assert anon.size_sealed
        assert not named.size_sealed


def test_memory_backing_is_reported(name, tmp_path):
    with copydata.Section.anonymous(4096) as anon, copydata.Section.create(name, 4096) as named:
        assert anon.memory_backed and named.memory_backed
    path = tmp_path / "data"
    path.write_bytes(b"x" * 4096)
    fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    with copydata.Section.file(path) as f:
        assert f.memory_backed == (fs_type in ("tmpfs", "ramfs", "hugetlbfs"))
