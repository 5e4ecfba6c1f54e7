"""``hf-llama3 nanotron-config``: a Nanotron training YAML for our model config and parallel layout.

The input is a model + parallel layout (model preset, ``parallel``, ``optimizer``, batch and sequence sizes, steps),
the same ``model``/``parallel``/``optimizer`` keys as an ``hf-llama3 pretrain`` recipe, so a layout tried on our
engine runs, on a GPU cluster, on Nanotron:

    hf-llama3 nanotron-config --config recipes/tiny/nanotron.yaml --set parallel.tp=2 --output nanotron.yaml
    torchrun --nproc-per-node 8 run_train.py --config-file nanotron.yaml      # in a Nanotron checkout

What cannot be carried over is refused or warned about: Nanotron's Llama has no context parallelism (its main
branch has it only for Qwen2), no interleaved pipeline schedule, ZeRO-1 only (no fully sharded parameters),
a fixed RoPE base of 10000 in the 0.4 release, and no Llama 3.1 rope scaling.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hf_llama3 import Llama3Config
from hf_llama3.checkpoint_io import atomic_output_file
from hf_llama3.recipe_loader import load_recipe
from training.parallel.dims import ParallelDims
from training.parallel.engine import OptimizerConfig
from training.post_cli import stage_parser

from .convert import nanotron_model_config, rope_warnings

logger = logging.getLogger(__name__)

# Our pipeline schedules -> Nanotron's pipeline engines ("afab" = all-forward-all-backward, i.e. GPipe).
_PP_ENGINES = {"gpipe": "afab", "1f1b": "1f1b"}


@dataclasses.dataclass
class NanotronRecipe:
    """What a Nanotron config is made from (YAML keys; ``--set parallel.tp=2`` reaches nested sections).

    Args:
        model: A preset name of ``Llama3Config.from_preset``.
        model_overrides: Config fields changed from the preset (e.g. ``vocab_size``).
        parallel: ``ParallelDims`` fields (dp_replicate, dp_shard, cp, tp, pp, pp_schedule, ...).
        optimizer: ``OptimizerConfig`` fields (AdamW, warmup + cosine).
        seed: Nanotron's run seed.
        batch_size: Sequences per step (global).
        seq_len: Tokens per sequence.
        steps: Optimizer steps in total.
        checkpoint_every: Nanotron's checkpoint interval (0: only at the end).
    """

    model: str = "tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    parallel: dict = dataclasses.field(default_factory=dict, metadata={"schema": ParallelDims})
    optimizer: dict = dataclasses.field(default_factory=dict, metadata={"schema": OptimizerConfig})
    seed: int = 0
    batch_size: int = 8
    seq_len: int = 64
    steps: int = 10
    checkpoint_every: int = 0

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader) before the config is built.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "seed": {"min": 0},
        "batch_size": {"min": 1},
        "seq_len": {"min": 1},
        "steps": {"min": 1},
        "checkpoint_every": {"min": 0},
    }

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0.")
        ParallelDims(**self.parallel).validate_batch(self.batch_size, self.seq_len)

    def model_config(self) -> Llama3Config:
        """The model's config: preset plus overrides, validated."""
        return Llama3Config.from_preset(self.model, **self.model_overrides)


def recipe_from_args(args: argparse.Namespace) -> NanotronRecipe:
    """The layout from ``--config`` and ``--set`` (``--set parallel.tp=2`` updates one field of a nested section)."""
    return load_recipe(NanotronRecipe, args.config, args.overrides)


def nanotron_config(
    recipe: NanotronRecipe,
    schema: str = "main",
    checkpoints_path: str = "checkpoints",
    tokenizer: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The Nanotron YAML document for ``recipe`` and the warnings about what Nanotron will do differently."""
    model_config = recipe.model_config()
    dims = ParallelDims(**recipe.parallel)
    optimizer = OptimizerConfig(**recipe.optimizer)
    dims.validate_model(model_config)
    if dims.cp > 1:
        raise ValueError(
            f"cp={dims.cp}: Nanotron's Llama has no context parallelism (its main branch has it only for Qwen2). "
            "Set parallel.cp=1 for a Nanotron config; use `hf-llama3 pretrain` for long-context CP training."
        )
    if dims.pp_schedule not in _PP_ENGINES:
        raise ValueError(
            f"pp_schedule={dims.pp_schedule!r} has no Nanotron engine (it has 'afab' = gpipe and '1f1b'): "
            "set parallel.pp_schedule to gpipe or 1f1b."
        )
    warnings = rope_warnings(model_config, schema)
    if dims.dp_shard > 1:
        warnings.append(
            "Nanotron shards only optimizer state (ZeRO-1), not parameters: dp_shard becomes plain data parallelism "
            "with zero_stage 1, using more memory per GPU than FSDP."
        )
    dp = dims.dp_replicate * dims.dp_shard
    accumulation = dims.num_microbatches(recipe.batch_size)
    micro_batch = recipe.batch_size // dp // accumulation
    scheduler = dict(
        learning_rate=optimizer.lr,
        lr_warmup_steps=optimizer.warmup_steps,
        lr_warmup_style="linear",
        lr_decay_style="cosine",
        lr_decay_steps=optimizer.decay_steps or max(1, recipe.steps - optimizer.warmup_steps),
        min_decay_lr=optimizer.lr * optimizer.min_lr_ratio,
    )
    adam = dict(
        adam_eps=optimizer.eps,
        adam_beta1=optimizer.betas[0],
        adam_beta2=optimizer.betas[1],
        torch_adam_is_fused=True,
    )
    optimizer_section: dict[str, Any] = dict(
        zero_stage=1 if dims.dp_shard > 1 else 0,
        weight_decay=optimizer.weight_decay,
        clip_grad=1.0,
        accumulate_grad_in_fp32=True,
        learning_rate_scheduler=scheduler,
    )
    if schema == "main":
        optimizer_section["optimizer_factory"] = {"name": "adamW", **adam}
    else:
        optimizer_section.update(adam)
    document = {
        "general": {"project": "hf-llama3", "run": f"{recipe.model}-nanotron", "seed": recipe.seed},
        "parallelism": {
            "dp": dp,
            "pp": dims.pp,
            "tp": dims.tp,
            "pp_engine": _PP_ENGINES[dims.pp_schedule],
            # Sequence parallelism inside TP, as in our engine [3.3.2].
            "tp_mode": "REDUCE_SCATTER",
            "tp_linear_async_communication": True,
            "expert_parallel_size": 1,
        },
        "model": {
            "model_config": nanotron_model_config(model_config, schema, rope_interleaved=schema == "0.4"),
            "init_method": {"std": model_config.initializer_range},
            "dtype": "bfloat16",
            "make_vocab_size_divisible_by": 1,
            "ddp_bucket_cap_mb": 25,
        },
        "tokenizer": {"tokenizer_name_or_path": tokenizer, "tokenizer_max_length": None, "tokenizer_revision": None},
        "checkpoints": {
            "checkpoints_path": checkpoints_path,
            "checkpoint_interval": recipe.checkpoint_every or recipe.steps,
            "save_initial_state": False,
            "resume_checkpoint_path": None,
            "checkpoints_path_is_shared_file_system": False,
        },
        "logging": {"log_level": "info", "log_level_replica": "info", "iteration_step_info_interval": 1},
        "tokens": {
            "sequence_length": recipe.seq_len,
            "train_steps": recipe.steps,
            "micro_batch_size": micro_batch,
            "batch_accumulation_per_replica": accumulation,
            "val_check_interval": -1,
            "limit_val_batches": 0,
            "limit_test_batches": 0,
        },
        "optimizer": optimizer_section,
    }
    return document, warnings


def main(argv: Sequence[str] | None = None) -> int:
    """``hf-llama3 nanotron-config --config RECIPE --output nanotron.yaml [--schema main|0.4]``."""
    parser = stage_parser(
        "nanotron-config", "Write a Nanotron YAML config for a model + parallel layout.", NanotronRecipe
    )
    parser.add_argument("--output", type=Path, required=True, help="YAML file to write")
    parser.add_argument("--schema", choices=["main", "0.4"], default="main", help="Nanotron version targeted")
    parser.add_argument("--checkpoints-path", default="checkpoints", help="Nanotron's checkpoints folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer name or path for Nanotron")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = recipe_from_args(args)
    document, warnings = nanotron_config(recipe, args.schema, args.checkpoints_path, args.tokenizer)
    for message in warnings:
        logger.warning(message)
    with atomic_output_file(args.output) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(document, f, sort_keys=False)
    print(f"wrote {args.output}")
    return 0
