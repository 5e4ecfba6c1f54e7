"""Run fingerprints: what a run folder holds, so a rerun resumes only the run it started.

Every command that resumes (``pretrain``, ``curate``, the IsoFLOPs sweep, post-training ``rounds``) records, at its
first start, a fingerprint of what decides its results in ``<run folder>/fingerprint.json``:

- ``recipe``: the settings that change results (the caller drops the ones that only say where or how fast);
- ``model``: the model shape, when there is one;
- ``inputs``: each input file's content identity: a SHA-256 for files up to ``HASH_LIMIT`` bytes, size plus
  modification time (ns) for larger ones, so fingerprinting a terabyte of shards costs one ``stat`` per file.

A rerun computes the fingerprint again; when it differs it refuses with one line naming every change
(``key: old -> new``) and how to start fresh, instead of silently mixing old results with new settings.
This module is standard library only: ``hf_llama3`` must import alone, and ``data`` and ``training`` both use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hf_llama3.checkpoint_io import atomic_output_file

logger = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
VERSION = 1
# Files up to this size are hashed (content identity survives a copy or a touch); larger ones use size + mtime.
HASH_LIMIT = 16 * 2**20
# The refusal lists this many changes, then says how many more there are (one line, readable).
MAX_LISTED = 8


def file_identity(path: str | Path, hash_limit: int = HASH_LIMIT) -> dict[str, Any]:
    """A file's content identity: ``{"size", "sha256"}`` up to ``hash_limit`` bytes, else ``{"size", "mtime_ns"}``."""
    stat = os.stat(path)
    if stat.st_size > hash_limit:
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return {"size": stat.st_size, "sha256": digest.hexdigest()}


def inputs_identity(paths: Iterable[str | Path], hash_limit: int = HASH_LIMIT) -> dict[str, Any]:
    """Content identity of every file under ``paths`` (files, or folders walked in sorted order), keyed by path.

    Hidden files and ``__pycache__`` are skipped (they do not feed a run); a missing path is recorded as
    ``"missing"`` so that it appearing later is a change too. ``hash_limit`` lowers the hashing threshold for
    inputs made of many large files (training shards: their small manifest is hashed, the shards are stat'ed).
    """
    identities: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                parts = child.relative_to(path).parts
                if child.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in parts):
                    identities[str(child)] = file_identity(child, hash_limit)
        elif path.is_file():
            identities[str(path)] = file_identity(path, hash_limit)
        else:
            identities[str(path)] = "missing"
    return identities


def make_fingerprint(
    recipe: Mapping[str, Any], inputs: Mapping[str, Any], model: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-able fingerprint of a run (round-tripped through JSON so it compares equal to the stored one)."""
    payload = {"version": VERSION, "recipe": dict(recipe), "model": dict(model or {}), "inputs": dict(inputs)}
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}`` (lists stay leaves: they are compared whole)."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _short(value: Any, limit: int = 60) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ABSENT = object()


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every leaf that differs; an input file's change is one entry per file."""
    changes = []
    for section in ("recipe", "model", "inputs"):
        before, after = old.get(section, {}), new.get(section, {})
        if section == "inputs":  # paths contain dots: compare per file, not per flattened key
            flat_old = {f"inputs[{k}]": v for k, v in before.items()}
            flat_new = {f"inputs[{k}]": v for k, v in after.items()}
        else:
            flat_old, flat_new = _flatten(before, section), _flatten(after, section)
        for key in sorted(set(flat_old) | set(flat_new)):
            a, b = flat_old.get(key, _ABSENT), flat_new.get(key, _ABSENT)
            if a != b:
                if section == "inputs" and a is not _ABSENT and b is not _ABSENT:
                    changes.append(f"{key}: contents changed")
                else:
                    changes.append(f"{key}: {_short(a)} -> {_short(b)}")
    if old.get("version") != new.get("version"):
        changes.append(f"version: {old.get('version')} -> {new.get('version')}")
    return changes


def write_fingerprint(folder: str | Path, fingerprint: Mapping[str, Any]) -> Path:
    """Write ``fingerprint.json`` atomically (temp file in the same folder, fsync, rename, the umask's mode)."""
    path = Path(folder) / FINGERPRINT
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_fingerprint(folder: str | Path) -> dict[str, Any] | None:
    """The stored fingerprint, or ``None`` when the folder has none."""
    path = Path(folder) / FINGERPRINT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); move it away and rerun to record this run anew."
        ) from None


def check_fingerprint(
    folder: str | Path,
    fingerprint: Mapping[str, Any],
    *,
    what: str = "a run",
    fresh: str = "use another output folder",
) -> None:
    """Record ``fingerprint`` in ``folder`` on the first start; on a rerun, refuse one that differs.

    Raises ``ValueError`` (one line): ``<folder> holds <what> of another recipe or inputs: k: a -> b, ...;
    <fresh>``. ``fresh`` says how to start anew (another output folder, or the flag that does so).
    """
    stored = read_fingerprint(folder)
    current = make_fingerprint(fingerprint.get("recipe", {}), fingerprint.get("inputs", {}), fingerprint.get("model"))
    if stored is None:
        write_fingerprint(folder, current)
        return
    changes = differences(stored, current)
    if not changes:
        return
    listed = "; ".join(changes[:MAX_LISTED])
    if len(changes) > MAX_LISTED:
        listed += f"; and {len(changes) - MAX_LISTED} more"
    raise ValueError(
        f"{folder} holds {what} of another recipe or inputs, which a rerun there would resume ({listed}): {fresh}."
    )
