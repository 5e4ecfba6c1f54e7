"""Making a finished write durable and giving it ordinary permissions.

A rename is atomic but not durable: after a power loss the new name can point at a file whose data never reached the
disk, and a full disk may report its error only at ``fsync``. So the atomic writers fsync every file and folder
before renaming, then the parent folder after it. ``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` folders
0700 (and libraries saving through them, e.g. ``save_pretrained``'s safetensors, leave such files too), which would
leave outputs unreadable to the user's group; :func:`apply_umask_modes` gives them the mode an ordinary
``open``/``mkdir`` would (0644 / 0755 under umask 022).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` sets it process-wide, which
    another thread creating a file at that instant would see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_mode(path: str | os.PathLike, umask: int | None = None) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would have: 0666 (files; 0777 if executable before) or 0777
    (folders), minus the umask."""
    mode = os.lstat(path).st_mode
    base = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
    os.chmod(path, base & ~(current_umask() if umask is None else umask))


def apply_umask_modes(root: str | os.PathLike) -> None:
    """:func:`apply_umask_mode` on ``root`` and everything under it (links left alone): libraries writing through
    their own temporary files (safetensors via ``save_pretrained``) leave 0600 files too."""
    umask = current_umask()
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                apply_umask_mode(path, umask)
    apply_umask_mode(root, umask)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's contents to disk (a folder's fsync makes its entries, e.g. a rename, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some filesystems cannot fsync a folder (EINVAL); the files' own fsyncs still report lost data.
        if not (os.path.isdir(path) and err.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every regular file and folder under ``root`` (``root`` included), children first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_path(path)
        fsync_path(folder)
