"""``hf-llama3 pretrain``: a minimal pre-training loop on the 4D-parallel engine, resumable, with MFU logging.

    hf-llama3 pretrain --config recipes/tiny/pretrain_parallel.yaml                  # one process
    torchrun --nproc-per-node 4 -m training.parallel.launch --config ... --set parallel.tp=2 ...
    accelerate launch --multi_gpu --num_processes 4 -m training.parallel.launch --config ...   # gloo on CPU

Under ``torchrun``/``accelerate`` the process group comes from the environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``); without them the run is a single process. The loop restarts from ``<output_dir>/checkpoints/
latest`` when it exists, so rerunning the same command after a crash continues where the last complete
checkpoint left off, with the same data. The paper's three-stage recipe (batch/sequence ramps, data mix,
annealing) builds on ``ParallelTrainer`` and is not in this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hf_llama3 import Llama3Config
from hf_llama3.cli import USER_ERRORS
from training.post_cli import load_stage_config, parse_overrides, stage_parser

from .checkpoint import export_hf, latest_checkpoint, load_checkpoint, maybe_inject_fault, save_checkpoint
from .dims import ParallelDims
from .engine import EngineConfig, ParallelTrainer
from .metrics import ThroughputMeter

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainConfig:
    """``hf-llama3 pretrain`` settings (YAML keys; ``--set parallel.tp=2`` style overrides reach nested dicts).

    Args:
        model: A preset name of ``Llama3Config.from_preset``.
        model_overrides: Config fields changed from the preset (e.g. ``vocab_size``).
        parallel: ``ParallelDims`` fields (dp_replicate, dp_shard, cp, tp, pp, pp_schedule, ...).
        fsdp: ``FSDPConfig`` fields.
        optimizer: ``OptimizerConfig`` fields.
        activation_checkpointing: Recompute decoder layers in backward.
        compile: ``torch.compile`` each decoder layer.
        seed: Model-initialisation and synthetic-data seed.
        device: ``cpu`` (gloo) or ``cuda`` (nccl).
        data: ``synthetic`` (random tokens, packed documents) or a ``.npy`` file of token ids (1-D); documents are
            delimited by the model's EOS token and masked from each other [3.2].
        batch_size: Sequences per step (global).
        seq_len: Tokens per sequence.
        steps: Optimizer steps in total (a resumed run stops at the same step).
        output_dir: Checkpoints (``checkpoints/``), metrics (``metrics.jsonl``) and the HF export (``hf/``).
        checkpoint_every: Save every this many steps (0: only at the end).
        keep_last: Checkpoints kept (0: all).
        export_hf: Write a ``save_pretrained`` folder at the end.
        peak_flops: Peak FLOP/s per device for MFU (default: from the GPU's name; none on CPU).
    """

    model: str = "tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    parallel: dict = dataclasses.field(default_factory=dict)
    fsdp: dict = dataclasses.field(default_factory=dict)
    optimizer: dict = dataclasses.field(default_factory=dict)
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    device: str = "cpu"
    data: str = "synthetic"
    batch_size: int = 8
    seq_len: int = 64
    steps: int = 10
    output_dir: str = "pretrain_output"
    checkpoint_every: int = 0
    keep_last: int = 2
    export_hf: bool = True
    peak_flops: float | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.checkpoint_every < 0 or self.keep_last < 0:
            raise ValueError("checkpoint_every and keep_last must be >= 0.")
        if self.data != "synthetic" and not Path(self.data).is_file():
            raise FileNotFoundError(f"data={self.data!r}: not 'synthetic' and no such token file (.npy of token ids).")
        ParallelDims(**self.parallel).validate_batch(self.batch_size, self.seq_len)

    def model_config(self) -> Llama3Config:
        """The model's config: preset plus overrides, validated."""
        return Llama3Config.from_preset(self.model, **self.model_overrides)

    def engine_config(self) -> EngineConfig:
        """The engine's config."""
        return EngineConfig(
            parallel=dict(self.parallel),
            fsdp=dict(self.fsdp),
            optimizer=dict(self.optimizer),
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            seed=self.seed,
            device=self.device,
        )


def documents_from_eos(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Document index of each token of packed rows: a new document starts after every EOS token."""
    starts = torch.zeros_like(input_ids)
    starts[:, 1:] = (input_ids[:, :-1] == eos_token_id).long()
    return starts.cumsum(dim=1)


class TokenBatches:
    """Deterministic global batches by step index, so a resumed run sees exactly the data it would have seen.

    ``synthetic``: uniform random tokens (seeded by ``seed`` and the step) with EOS tokens at ~1/16 of the
    positions. A ``.npy`` file: consecutive ``seq_len`` windows of the token stream, wrapping around.
    """

    def __init__(self, config: PretrainConfig, model_config: Llama3Config):
        self.config = config
        eos = model_config.eos_token_id
        self.eos = eos[0] if isinstance(eos, list) else eos
        self.vocab_size = model_config.vocab_size
        self.tokens = None
        if config.data != "synthetic":
            self.tokens = np.load(config.data, mmap_mode="r")
            if self.tokens.ndim != 1 or self.tokens.shape[0] < config.seq_len:
                raise ValueError(
                    f"{config.data}: expected a 1-D array of at least seq_len={config.seq_len} token ids."
                )

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The global batch of ``step``: ``input_ids`` and ``document_ids``, ``[batch_size, seq_len]``."""
        rows, seq = self.config.batch_size, self.config.seq_len
        if self.tokens is None:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
            input_ids = torch.randint(0, self.vocab_size, (rows, seq), generator=gen)
            input_ids[torch.rand(rows, seq, generator=gen) < 1 / 16] = self.eos
        else:
            windows = self.tokens.shape[0] // seq
            index = [(step * rows + row) % windows for row in range(rows)]
            input_ids = torch.from_numpy(
                np.stack([self.tokens[i * seq : (i + 1) * seq] for i in index]).astype(np.int64)
            )
        return {"input_ids": input_ids, "document_ids": documents_from_eos(input_ids, self.eos)}


def _init_distributed(device: str) -> bool:
    """Join the launcher's process group, or make a one-process group; returns whether it was launched."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if launched:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    else:
        dist.init_process_group("nccl" if device == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    return launched


def pretrain_config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The recipe from ``--config`` and ``--set`` (``--set parallel.tp=2`` updates one field of a nested section)."""
    nested = [pair for pair in args.overrides if "." in pair.partition("=")[0]]
    args.overrides = [pair for pair in args.overrides if pair not in nested]
    config = load_stage_config(PretrainConfig, args)
    for key, value in parse_overrides(nested).items():
        section, _, field = key.partition(".")
        if not isinstance(getattr(config, section, None), dict):
            raise ValueError(f"--set {key}: {section!r} is not a nested section of the pretrain config.")
        getattr(config, section)[field] = value
    config.__post_init__()
    return config


def run(config: PretrainConfig) -> list[dict[str, Any]]:
    """Train (resuming if possible) in an initialised process group; returns rank 0's per-step metrics."""
    model_config = config.model_config()
    output_dir = Path(config.output_dir)
    checkpoints = output_dir / "checkpoints"
    trainer = ParallelTrainer(model_config, config.engine_config())
    data = TokenBatches(config, model_config)
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        load_checkpoint(trainer, latest)
    meter = ThroughputMeter(model_config, config.seq_len, dist.get_world_size(), config.peak_flops)
    rank0 = dist.get_rank() == 0
    history: list[dict[str, Any]] = []
    if rank0:
        output_dir.mkdir(parents=True, exist_ok=True)
    while trainer.step_count < config.steps:
        step = trainer.step_count
        maybe_inject_fault("step", step)
        meter.start()
        loss = trainer.step(data.batch(step))
        metrics = meter.stop(trainer.step_count, loss, config.batch_size * config.seq_len, trainer.last_grad_norm)
        if rank0:
            logger.info(metrics.format())
            history.append(dataclasses.asdict(metrics))
            with open(output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(history[-1]) + "\n")
        if config.checkpoint_every and trainer.step_count % config.checkpoint_every == 0:
            save_checkpoint(trainer, checkpoints, extra={"data_step": trainer.step_count}, keep_last=config.keep_last)
    final = latest_checkpoint(checkpoints)
    if final is None or final.name != f"step_{trainer.step_count:08d}":
        final = save_checkpoint(
            trainer, checkpoints, extra={"data_step": trainer.step_count}, keep_last=config.keep_last
        )
    if config.export_hf and rank0:
        export_hf(final, model_config, output_dir / "hf")
    dist.barrier()
    return history


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-llama3 pretrain`` and ``python -m training.parallel.launch``."""
    parser = stage_parser("pretrain", "Pre-train a Llama 3 model with 4D parallelism (TP, CP, PP, FSDP).")
    config = pretrain_config_from_args(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _init_distributed(config.device)
    if dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run(config)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except USER_ERRORS as error:  # one line per rank, as `hf-llama3` prints it, instead of a traceback
        print(f"training.parallel.launch: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
