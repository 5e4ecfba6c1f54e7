"""JSON output shared by the evaluation modules, written atomically (hf_llama3.checkpoint_io.atomic_output_file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hf_llama3.checkpoint_io import atomic_output_file


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically and return the path."""
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def prepare_output_dir(folder: str | os.PathLike, outputs: list[str], overwrite: bool = False) -> Path:
    """Check an output folder before a long evaluation runs, not after: create it, refuse to replace ``outputs``
    already there without ``overwrite``, and prove it is writable with a probe file (permissions, read-only
    filesystems; ``os.access`` says yes to root on a read-only mount)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--output-dir {folder} is a file, not a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    existing = [name for name in outputs if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder} already holds {', '.join(existing)}: pass --overwrite to replace them, or choose another "
            "--output-dir."
        )
    probe = folder / f".write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder
