"""One run per output folder: a non-blocking ``flock`` on a lock file beside the folder.

Two runs writing one output race (one replaces or deletes the other's files), so the second refuses at once with a
one-line error instead of waiting or interleaving. The lock file sits beside the output (``.<name>.lock``), not
inside it, because atomic writers replace the whole folder; it is removed on release. A process that dies releases
its lock with its file descriptors, so a crash never leaves a folder locked (a stale lock *file* may remain; it is
harmless and reused).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class OutputLockedError(ValueError):
    """Another run holds the output folder's lock; the message names the folder and the lock file."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output``: ``.<name>.lock`` in the same parent folder."""
    output = Path(os.path.abspath(output))
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``output`` for the block; raise :class:`OutputLockedError` at once if another run has it."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLockedError(
                    f"{output} is in use by another run (lock {path} is held): wait for it to finish, or write to "
                    "another output folder."
                ) from None
            raise
        # The holder before us unlinks the file before releasing it; if we locked that unlinked file, the path now
        # names another file (or none) and our lock excludes nobody: try again on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a user looking at the file
        yield path
    finally:
        # Unlink while still holding the lock (see above), then release by closing.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
