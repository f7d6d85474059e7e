"""Files that survive a crash.

Every file the project writes is either appended to, one whole record per
write that reaches the operating system at once, or replaced whole through
:func:`atomic_write`: a killed process leaves the old file or the new one,
never a part of either.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import threading
from typing import IO, Dict, Iterator, List

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is the user's to ensure
    fcntl = None


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or
    "wb", ``open_kwargs`` as for :func:`open`); when the block ends without
    an exception, the file is flushed, fsynced and moved onto ``path`` with
    :func:`os.replace`, so a reader, or a crash at any instant, sees the old
    content or the new one. On an exception the temporary file is removed and
    ``path`` stays as it was. Only a process killed inside the block leaves its
    temporary file (``.<name>.<pid>.<random>.tmp``) behind. An ``OSError``
    that names no file (a full disk) is raised again naming ``path``.

    The parent directory is created if needed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open, not mkstemp: the new file gets the usual permissions (0666 less the umask), not 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # a full disk fails write, flush or fsync naming no file
            raise type(exc)(exc.errno, exc.strerror, path) from exc
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


LOCK_FILE = ".writer.lock"
# directory -> [lock file descriptor, holders in this process]
_held: Dict[str, List[int]] = {}
_held_guard = threading.Lock()


def claim_dir(directory: str) -> None:
    """Claim ``directory`` for this process's writers: the first claim takes
    an exclusive advisory lock on ``directory/.writer.lock``, later claims in
    this process share it (a monitor's JSONL and CSV sinks write into one
    directory). Two processes appending to the same record files would
    interleave and truncate each other's records; the second is refused
    instead.

    Raises:
        RuntimeError: another process holds ``directory``, named with its pid.
    """
    key = os.path.realpath(directory)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            return
        os.makedirs(key, exist_ok=True)
        fd = os.open(os.path.join(key, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RuntimeError(f"{directory} is being written by another process (pid {owner}): two writers "
                                   "would interleave and truncate each other's records; give this run another "
                                   "directory (log_dir=, --out), or stop the other process") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[key] = [fd, 1]


def release_dir(directory: str) -> None:
    """Undo one :func:`claim_dir`; the last one in this process frees the lock."""
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            os.close(entry[0])  # closing the descriptor drops the flock


__all__ = ["atomic_write", "claim_dir", "release_dir"]
