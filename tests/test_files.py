"""atomic_write: the old file or the new one, never a part."""
import os
import stat

import pytest

from spectral_edge_fast.files import atomic_write


def test_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"  # the directory is created
    with atomic_write(str(path)) as f:
        f.write("old\n")
    with atomic_write(str(path)) as f:
        f.write("new\n")
        assert path.read_text() == "old\n"  # nothing visible before the block ends
    assert path.read_text() == "new\n"
    assert os.listdir(path.parent) == ["out.txt"]


def test_an_exception_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"complete")
    with pytest.raises(RuntimeError, match="died"):
        with atomic_write(str(path), "wb") as f:
            f.write(b"half")
            raise RuntimeError("died")
    assert path.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_usual_permissions_and_whole_file_modes_only(tmp_path):
    path = tmp_path / "out.txt"
    with atomic_write(str(path)) as f:
        f.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(str(path), "a"):
            pass


def test_a_failed_write_names_the_file(tmp_path, monkeypatch):
    """A full disk fails the write, the flush or the fsync with an error that
    names no file ('[Errno 28] No space left on device'): it now names the
    file being replaced, which keeps its old content."""
    import errno

    path = tmp_path / "report.html"
    path.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*report\.html'") as raised:
        with atomic_write(str(path)) as f:
            f.write("new")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.html"]
