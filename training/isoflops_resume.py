"""What an IsoFLOPs sweep may resume: finished points only of the same sweep settings and data.

``results.jsonl`` keys finished runs by (budget, size). Alone that key would keep a point trained with another
LR range, sequence length, batch or data after the recipe changed, and fit the mix. So the sweep records its
fingerprint (see :mod:`hf_llama3.run_fingerprint`) in ``<output_dir>/fingerprint.json`` at its first start:
every setting except the grid itself (budgets and sizes may grow: new points are trained, finished ones kept) and
where/how it runs, plus a digest of the training and validation token streams (the data, the tokenizer and
``compact_vocab`` in one). Each finished point must also have the peak LR the current grid gives it: adding a size
outside the old range moves the log-interpolated LR of every size. A mismatch refuses with what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

import numpy as np

from hf_llama3.run_fingerprint import make_fingerprint

# The grid (may grow) and where/how the sweep runs: not part of what a finished point means.
NOT_FINGERPRINTED = ("budgets", "sizes", "output_dir", "device", "num_threads", "extrapolate_to")
FRESH = "use another output folder (--output-dir) for these settings"


def _digest(tokens: np.ndarray) -> dict[str, Any]:
    return {"size": int(tokens.size), "sha256": hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest()}


def sweep_fingerprint(config: Any, data: tuple[np.ndarray, np.ndarray, int]) -> dict[str, Any]:
    """The sweep's settings (``IsoFLOPsConfig`` without the grid) and the digests of its token streams."""
    settings = dataclasses.asdict(config)
    for key in NOT_FINGERPRINTED:
        settings.pop(key, None)
    train, val, vocab_size = data
    inputs = {"train tokens": _digest(train), "validation tokens": _digest(val), "vocabulary": vocab_size}
    return make_fingerprint(settings, inputs)


def check_finished_points(done: list[dict[str, Any]], peak_lrs: dict[str, float], output: str) -> None:
    """Refuse finished points whose recorded peak LR differs from what the current grid gives their size.

    ``peak_lrs`` maps ``json.dumps(size, sort_keys=True)`` to the peak LR the current sizes give it.
    """
    changes = []
    for record in done:
        key = json.dumps(record["size"], sort_keys=True)
        want = peak_lrs.get(key)
        if want is not None and not math.isclose(record["peak_lr"], want, rel_tol=1e-9):
            changes.append(
                f"point C={record['compute']:.3g} size={key}: peak_lr: {record['peak_lr']:.6g} -> {want:.6g}"
            )
    if changes:
        more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise ValueError(
            f"{output} holds sweep points trained with another peak LR (the sizes moved the LR range ends) "
            f"({'; '.join(changes[:3])}{more}): {FRESH}."
        )
