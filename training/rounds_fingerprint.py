"""The post-training rounds' fingerprint: a rerun skips finished steps only of the same recipe and inputs.

Every step of :mod:`training.rounds` is skipped when its ``DONE`` marker exists, so a rerun after the base model,
the prompts or the preference data changed (or after a stage's settings changed) would keep the old reward
models and policies. ``<output_dir>/fingerprint.json`` (see :mod:`hf_llama3.run_fingerprint`) records at the
first start the recipe and the content identity of every input file and of the base model folder; a rerun that
differs is refused with what changed. ``num_rounds`` is not part of it: raising it continues a finished run with
more rounds (each new round builds on the last), lowering it reports the rounds already there. The ``post_data`` steps
count with their settings (a step's YAML file by its contents) and the files they read
(:mod:`training.rounds_post_data`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hf_llama3.run_fingerprint import check_fingerprint, inputs_identity, make_fingerprint
from training.rounds_post_data import fingerprint_inputs, fingerprint_settings

# Where, how far and how verbosely, not what: changing these keeps the run the same run.
HOW_KEYS = ("output_dir", "num_rounds")
STAGE_HOW_KEYS = ("report_to", "logging_steps", "use_cpu", "dataloader_num_workers")
STAGES = ("reward", "rejection_sampling", "sft", "dpo")


def rounds_settings(config: Any) -> dict[str, Any]:
    """The ``RoundsConfig`` as a dict without where-and-how keys (top level and each stage's overrides)."""
    settings = dataclasses.asdict(config)
    for key in HOW_KEYS:
        settings.pop(key, None)
    for stage in STAGES:
        for key in STAGE_HOW_KEYS:
            settings.get(stage, {}).pop(key, None)
    # Absent when there are none, so runs recorded before post_data existed still resume.
    settings.pop("post_data", None)
    if config.post_data:
        settings["post_data"] = fingerprint_settings(config.post_data)
    return settings


def rounds_inputs(config: Any) -> list[str]:
    """The base model folder and every data file the recipe names."""
    paths = [config.base_model, config.prompts_path, config.preference_path, *config.sft_extra_paths]
    paths += [p for p in [config.eval_prompts_path, *config.annotation_paths] if p]
    paths += fingerprint_inputs(config.post_data)
    return [str(Path(p)) for p in paths]


def check_rounds_run(config: Any) -> None:
    """Record the fingerprint in ``output_dir`` on the first start; refuse a rerun whose fingerprint differs."""
    fingerprint = make_fingerprint(rounds_settings(config), inputs_identity(rounds_inputs(config)))
    check_fingerprint(
        config.output_dir,
        fingerprint,
        what="a post-training rounds run",
        fresh="its finished steps would be kept: use another output_dir (--set output_dir=...) for these "
        "settings or inputs",
    )
