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
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or
    "wb", ``open_kwargs`` as for :func:`open`); when the block ends without
    an exception, the file is flushed, fsynced and moved onto ``path`` with
    :func:`os.replace`, so a reader, or a crash at any instant, sees the old
    content or the new one. On an exception the temporary file is removed and
    ``path`` stays as it was. Only a process killed inside the block leaves its
    temporary file (``.<name>.<pid>.<random>.tmp``) behind.

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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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


__all__ = ["atomic_write"]
