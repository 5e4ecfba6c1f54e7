"""The pre-training run's fingerprint: a rerun into ``output_dir`` resumes only the run that folder holds.

Recorded in ``<output_dir>/fingerprint.json`` at the first start (see :mod:`hf_llama3.run_fingerprint`): the recipe
without the settings that only say where or how (output folder, logging, checkpoint cadence, parallel layout and
device: a checkpoint reshards across layouts), the model shape, and the content identity of the shard folders, the
tokenizer folder and the probe's checkpoint. A rerun whose fingerprint differs is refused before any process starts.

A finished run (every stage done) is never extended: rerunning it with the same recipe says so and leaves ``hf/``
alone; rerunning it with more tokens (or any other change) is refused with what changed. Stretching a finished
schedule would re-enter stages whose LR already decayed to 0, so more tokens means a new run.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from hf_llama3.run_fingerprint import check_fingerprint, inputs_identity, make_fingerprint, read_fingerprint
from training.parallel.checkpoint import latest_checkpoint

from .config import PretrainRecipe

# Where and how, not what: changing these keeps the run the same run.
HOW_KEYS = (
    "output_dir",
    "checkpoint_every",
    "keep_last",
    "async_checkpoint",
    "report_to",
    "peak_flops",
    "device",
    "parallel",
    "fsdp",
    "activation_checkpointing",
    "compile",
    "process_group_timeout_s",
)
STAGE_HOW_KEYS = ("parallel",)  # per-stage layout overrides of long_context / anneal
MODEL_SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
    "rope_parameters",
    "max_position_embeddings",
)
# Shards are many large files: hash the small ones (the manifest), stat the rest.
SHARD_HASH_LIMIT = 2**20


def recipe_settings(recipe: PretrainRecipe) -> dict[str, Any]:
    """The recipe as a dict, without the where-and-how keys."""
    settings = dataclasses.asdict(recipe)
    for key in HOW_KEYS:
        settings.pop(key, None)
    for stage in ("long_context", "anneal"):
        if isinstance(settings.get(stage), dict):
            for key in STAGE_HOW_KEYS:
                settings[stage].pop(key, None)
    return settings


def model_shape(recipe: PretrainRecipe) -> dict[str, Any]:
    """The shape-deciding fields of the recipe's model config."""
    config = recipe.model_config().to_dict()
    return {key: config[key] for key in MODEL_SHAPE_KEYS if key in config}


def input_paths(recipe: PretrainRecipe) -> list[str]:
    """Shard folders, the tokenizer folder (when it is one) and the probe's checkpoint."""
    paths = sorted({str(s if isinstance(s, str) else s["path"]) for s in recipe.sources.values()})
    if recipe.tokenizer is not None and Path(recipe.tokenizer).is_dir():
        paths.append(str(recipe.tokenizer))
    if recipe.mode == "probe" and recipe.probe is not None:
        paths.append(str(Path(recipe.probe.checkpoint) / ".metadata"))
    return paths


def pretrain_fingerprint(recipe: PretrainRecipe) -> dict[str, Any]:
    """Recipe, model shape and inputs of ``recipe``, JSON-able."""
    inputs = inputs_identity(input_paths(recipe), hash_limit=SHARD_HASH_LIMIT)
    return make_fingerprint(recipe_settings(recipe), inputs, model_shape(recipe))


def check_checkpoint_shape(recipe: PretrainRecipe) -> None:
    """Refuse a model that does not fit ``output_dir``'s latest checkpoint, before anything is written.

    This also covers run folders from before fingerprints (no ``fingerprint.json`` to compare with): their first
    rerun records the current fingerprint, which must never be that of a model the checkpoint does not fit.
    """
    import torch

    from hf_llama3 import Llama3ForCausalLM
    from training.parallel.checkpoint_match import check_model_matches

    latest = latest_checkpoint(Path(recipe.output_dir) / "checkpoints")
    if latest is None:
        return
    with torch.device("meta"):  # names and shapes only, no memory
        model = Llama3ForCausalLM(recipe.model_config())
    check_model_matches(latest, model.state_dict())


def finished_run(output_dir: str | Path, stages: int) -> dict[str, Any] | None:
    """The saved run state when ``output_dir``'s latest checkpoint has every one of ``stages`` done, else ``None``."""
    from .runner import read_run_state  # the runner imports the engine: only when there is a checkpoint to read

    latest = latest_checkpoint(Path(output_dir) / "checkpoints")
    if latest is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*process group.*")
        state = read_run_state(latest).get("run", {})
    return state if state.get("stage", 0) >= stages else None


def check_pretrain_run(recipe: PretrainRecipe, stages: int) -> dict[str, Any] | None:
    """Refuse a rerun of another recipe/model/inputs in ``recipe.output_dir``; record the fingerprint at first start.

    Returns the finished run's state when the folder holds this very run, already finished (nothing to train).
    """
    output_dir = Path(recipe.output_dir)
    if read_fingerprint(output_dir) is None:  # nothing to compare with: the checkpoint's shapes decide
        check_checkpoint_shape(recipe)
    finished = finished_run(output_dir, stages) if recipe.mode == "pretrain" else None
    if finished is not None:
        fresh = (
            f"that run is finished ({finished.get('tokens', 0):,} tokens, export in {output_dir / 'hf'}) and a "
            "finished run is never extended: to train with these settings (e.g. more tokens), set another "
            "output_dir (--set output_dir=...)"
        )
    else:
        fresh = "to start afresh with these settings, set another output_dir (--set output_dir=...)"
    check_fingerprint(output_dir, pretrain_fingerprint(recipe), what="a pre-training run", fresh=fresh)
    return finished
