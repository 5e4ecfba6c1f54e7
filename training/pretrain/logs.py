"""Logs of the pre-training run (rank 0): ``metrics.jsonl``, TensorBoard scalars and a progress bar with tokens/s
and MFU (``training.parallel.metrics``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from hf_llama3 import Llama3Config
from training.parallel.metrics import ThroughputMeter

from .state import StepPlan

logger = logging.getLogger(__name__)


class MetricsLog:
    """One record per step; a no-op on ranks other than 0 (except timing, which every rank may do)."""

    def __init__(
        self,
        output_dir: Path,
        report_to: list[str],
        model_config: Llama3Config,
        peak_flops: float | None,
        enabled: bool,
    ):
        import torch.distributed as dist

        self.enabled = enabled
        self.model_config = model_config
        self.peak_flops = peak_flops
        self.world = dist.get_world_size()
        self.meters: dict[int, ThroughputMeter] = {}
        self.meter: ThroughputMeter | None = None
        self.jsonl = output_dir / "metrics.jsonl" if enabled and "jsonl" in report_to else None
        self.writer = None
        if enabled and "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError(
                    "report_to lists tensorboard but the tensorboard package is missing: "
                    "pip install 'hf-llama3[pretrain]' or drop it from report_to."
                ) from error
            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
        self.bar = tqdm(desc="pre-training", unit="step", disable=not enabled, dynamic_ncols=True)

    def start(self, seq_len: int) -> None:
        """Start timing a step of ``seq_len``-token sequences (FLOPs per token depend on the length)."""
        if seq_len not in self.meters:
            self.meters[seq_len] = ThroughputMeter(self.model_config, seq_len, self.world, self.peak_flops)
        self.meter = self.meters[seq_len]
        self.meter.start()

    def step(
        self,
        step: int,
        stage: str,
        plan: StepPlan,
        loss: float,
        grad_norm: float,
        skipped: bool,
        tokens: int,
        per_source: dict[str, int],
    ) -> None:
        """Record step ``step`` (1-based)."""
        metrics = self.meter.stop(step, loss, plan.batch_size * plan.seq_len, grad_norm)
        if not self.enabled:
            return
        record = {
            "step": step,
            "stage": stage,
            "loss": loss,
            "lr": plan.lr,
            "grad_norm": grad_norm,
            "skipped": skipped,
            "batch_size": plan.batch_size,
            "seq_len": plan.seq_len,
            "tokens": tokens,
            "tokens_per_source": dict(per_source),
            "tokens_per_s_per_device": metrics.tokens_per_s_per_device,
            "mfu": metrics.mfu,
        }
        if self.jsonl is not None:
            with open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "batch_size", "seq_len", "tokens_per_s_per_device"):
                self.writer.add_scalar(f"train/{key}", record[key], step)
            if metrics.mfu is not None:
                self.writer.add_scalar("train/mfu", metrics.mfu, step)
        mfu = f"{100 * metrics.mfu:.1f}%" if metrics.mfu is not None else "n/a"
        self.bar.set_postfix_str(
            f"{stage} loss {loss:.3f} seq {plan.seq_len} tok/s/dev {metrics.tokens_per_s_per_device:,.0f} MFU {mfu}"
        )
        self.bar.update(1)
        logger.debug(metrics.format())

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
