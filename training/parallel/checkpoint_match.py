"""Strict checkpoint loading: a checkpoint must hold exactly the model it is loaded into.

DCP loads only the keys the caller asks for, so a 4-layer model reads the first 4 layers of an 8-layer checkpoint
without a word, and ``set_model_state_dict(strict=False)`` hides the rest. Before loading, the checkpoint's own
metadata (tensor names and global shapes) is compared with the model's: a missing key, an unexpected key or a
shape mismatch fails with one line that names the first few, before any weight is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from .safe_reader import SafeFileSystemReader

# Model tensors are flattened under this prefix in the DCP metadata (``{"model": {...}}`` in the saved state).
_PREFIX = "model."
_SHOWN = 3


def saved_model_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> global shape of every model tensor in the checkpoint (read through the safe unpickler)."""
    metadata = SafeFileSystemReader(str(path)).read_metadata()
    return {
        key[len(_PREFIX) :]: tuple(getattr(item, "size", ()))
        for key, item in metadata.state_dict_metadata.items()
        if key.startswith(_PREFIX)
    }


def _local_shapes(model_state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    # A DTensor's .shape is the global shape, which is what DCP records.
    return {name: tuple(value.shape) for name, value in model_state.items() if hasattr(value, "shape")}


def _examples(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def wanted_shapes(model_state: dict[str, Any], distributed: bool = False) -> dict[str, tuple[int, ...]]:
    """Name -> global shape of the model's tensors; with ``distributed``, of every rank's share (pipeline stages
    split the names), gathered so that every rank reaches the same verdict (no rank left waiting in a collective)."""
    local = _local_shapes(model_state)
    if not (distributed and dist.is_initialized() and dist.get_world_size() > 1):
        return local
    parts: list[dict[str, tuple[int, ...]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return {name: shape for part in parts for name, shape in (part or {}).items()}


def shape_problems(saved: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches between a checkpoint and a model, a few of each named."""
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    mismatched = sorted(
        f"{name} {list(saved[name])} vs {list(shape)}"
        for name, shape in wanted.items()
        if name in saved and saved[name] and saved[name] != shape
    )
    problems = []
    if missing:
        problems.append(f"missing {_examples(missing)}")
    if unexpected:
        problems.append(f"unexpected {_examples(unexpected)}")
    if mismatched:
        problems.append(f"shape checkpoint vs model: {_examples(mismatched)}")
    return problems


def check_model_matches(path: str | Path, model_state: dict[str, Any], distributed: bool = False) -> None:
    """Raise ``ValueError`` unless the checkpoint at ``path`` holds exactly ``model_state``'s tensors and shapes.

    ``distributed``: ``model_state`` is this rank's share (see :func:`wanted_shapes`).
    """
    problems = shape_problems(saved_model_shapes(path), wanted_shapes(model_state, distributed))
    if problems:
        raise ValueError(
            f"checkpoint {path} does not fit this model (another model shape?): {'; '.join(problems)}. "
            "Load it with the recipe that wrote it, or start fresh in another output_dir."
        )
