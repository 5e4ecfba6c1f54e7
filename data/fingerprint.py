"""The curation run's fingerprint: a rerun into ``output_dir`` resumes only with the same recipe and inputs.

Curation skips every task whose completion marker exists, so a rerun after the inputs changed would keep the old
shards. ``<output_dir>/fingerprint.json`` (see :mod:`hf_llama3.run_fingerprint`) records, at the first start, the
recipe without where-and-how keys, and the content identity of every input file and of every model or tokenizer
file the recipe names (quality classifiers, tokenizer folder): a SHA-256 for small files, size plus modification
time for large ones. A rerun with another recipe, other input contents or another file list is refused with
what changed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from data.config import CurateConfig
from hf_llama3.run_fingerprint import check_fingerprint, inputs_identity, make_fingerprint

# Where and how fast, not what: changing these keeps the run the same run.
HOW_KEYS = ("output_dir", "workers", "executor")


def recipe_settings(config: CurateConfig) -> dict[str, Any]:
    """The recipe as a dict, without the where-and-how keys."""
    settings = dataclasses.asdict(config)
    for key in HOW_KEYS:
        settings.pop(key, None)
    _drop_caches(settings)
    return settings


def _drop_caches(settings: dict[str, Any]) -> None:
    """Remove cache folders (``url_filter.cache_dir``): where derived files are kept, not what the run reads."""
    for key in [k for k in settings if "cache" in str(k)]:
        settings.pop(key)
    for value in settings.values():
        if isinstance(value, dict):
            _drop_caches(value)


def _named_paths(value: Any, skip: tuple[str, ...] = ("reader",)) -> list[str]:
    """Every string in the recipe (outside ``reader``, whose files are the inputs) that names a file or folder:
    the quality models, the tokenizer folder and the like, whose contents decide the results too."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in skip:
                found += _named_paths(item, ())
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += _named_paths(item, ())
    elif isinstance(value, str) and value and os.path.exists(value):
        found.append(value)
    return found


def curate_fingerprint(config: CurateConfig, files: list[str]) -> dict[str, Any]:
    """Recipe and inputs (input files and the model files the recipe names) of a curation run, JSON-able."""
    settings = recipe_settings(config)
    inputs = inputs_identity([*files, *sorted(set(_named_paths(settings)))])
    return make_fingerprint(settings, inputs)


def check_curate_run(config: CurateConfig, files: list[str]) -> None:
    """Record the run's fingerprint in ``output_dir`` at the first start; refuse a rerun whose fingerprint differs."""
    check_fingerprint(
        Path(config.output_dir),
        curate_fingerprint(config, files),
        what="a curation run",
        fresh="its finished tasks would keep the old results: use another output_dir (--set output_dir=...) "
        "for these settings or inputs",
    )
