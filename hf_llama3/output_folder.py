"""Ownership of output folders: which folders ``--overwrite`` / ``--clean`` may delete.

A command deletes a folder only if this project created it and it holds nothing the user cares about beyond the
command's own output. "Created by this project" is recorded by a marker file, :data:`MARKER_NAME`, written into a
folder when a command creates it (a small JSON: the command and the time). Even a marked folder is refused when it
is, or contains, the command's own inputs, the working directory, the home folder, a filesystem root or a mount
point: those are never an output to throw away, whatever a marker says (a marker can be copied along with a folder).
An empty folder (no marker needed) may be replaced: nothing is lost.

Refusals are :class:`OutputFolderError` (a ``ValueError``): the CLI prints them as one line and exits with 2.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

MARKER_NAME = ".hf-llama3-output"

PathLike = str | os.PathLike


class OutputFolderError(ValueError):
    """An output folder the command will not delete or replace; the message says why and what to do."""


def _command_line() -> str:
    """The running command for the marker, e.g. ``hf-llama3 convert`` (no arguments: they may hold secrets)."""
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:2]]
    return " ".join(argv)


def write_marker(folder: PathLike, command: str | None = None) -> Path:
    """Mark ``folder`` as created by this project (``command`` defaults to the running command's name)."""
    marker = Path(folder) / MARKER_NAME
    record = {
        "created_by": "hf-llama3",
        "command": command or _command_line(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    marker.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return marker


def is_marked(folder: PathLike) -> bool:
    """Whether ``folder`` carries this project's marker (a regular file, not a link planted to point elsewhere)."""
    marker = Path(folder) / MARKER_NAME
    return marker.is_file() and not marker.is_symlink()


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (both absolute)."""
    return path == folder or folder in path.parents


def _forms(path: PathLike) -> tuple[Path, Path]:
    """A path as written (absolute, ``..`` folded) and with symbolic links resolved: a folder is checked both ways,
    since deleting it removes what lies under either spelling."""
    return Path(os.path.abspath(path)), Path(path).resolve()


def refusal_reason(folder: PathLike, inputs: Iterable[PathLike] = ()) -> str | None:
    """Why the existing ``folder`` must not be deleted, or ``None`` if it is this project's own output (or empty).

    Protected folders (roots, mount points, home, working directory, the inputs and their ancestors) are checked
    before the marker, so the message names the real danger.
    """
    folder = Path(folder)
    if folder.is_symlink():
        return "it is a symbolic link (deleting through it would remove another folder's contents)"
    if not folder.is_dir():
        return "it is a file, not a folder this project wrote"
    spelled, resolved = _forms(folder)
    if resolved.parent == resolved or spelled.parent == spelled:
        return "it is a filesystem root"
    if os.path.ismount(resolved):
        return "it is a mount point"
    protected = []
    for what, where in (("your home folder", Path.home), ("the working directory", Path.cwd)):
        try:
            protected.append((what, where()))
        except (RuntimeError, OSError):  # no HOME / no passwd entry; a deleted working directory
            continue
    protected += [(f"the command's input {p}", Path(p)) for p in inputs]
    for what, path in protected:
        for inner in _forms(path):
            for outer in (spelled, resolved):
                if _inside(inner, outer):
                    return f"it is {what}" if inner == outer else f"it contains {what}"
    # An empty folder holds nothing to lose (a step runner may create the folder its writer then fills).
    if not is_marked(folder) and any(folder.iterdir()):
        return f"it was not created by hf-llama3 (no {MARKER_NAME} marker inside)"
    return None


def check_replaceable(folder: PathLike, inputs: Iterable[PathLike] = (), option: str = "--overwrite") -> None:
    """Raise :class:`OutputFolderError` unless ``folder`` is absent or may be deleted by ``option``."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    reason = refusal_reason(folder, inputs)
    if reason is not None:
        raise OutputFolderError(
            f"refusing to delete {folder} for {option}: {reason}. Remove it yourself if it is yours to throw away, "
            "or choose a new output folder."
        )


def remove_output_dir(folder: PathLike, inputs: Iterable[PathLike] = (), option: str = "--clean") -> None:
    """Delete ``folder`` (if present) after :func:`check_replaceable` allowed it."""
    check_replaceable(folder, inputs, option)
    if Path(folder).exists():
        shutil.rmtree(folder)


def create_output_dir(folder: PathLike, command: str | None = None) -> Path:
    """Create ``folder`` (and parents) and mark it as ours; an existing folder is used as it is, never marked,
    since marking someone else's folder would later let ``--clean`` delete it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise
        return folder
    write_marker(folder, command)
    return folder
