"""Polyak averaging [3.4.3] of the annealing checkpoints as a running average of the sharded state.

"We average model checkpoints (Polyak (1991) averaging) during annealing to produce the final pre-trained model."
Each rank keeps the uniform mean of its own shards (local tensors of the DTensor parameters under FSDP/TP, the
tensors of its pipeline stages under PP), updated in place at each snapshot (``mean += (x - mean) / n``, in fp32):
the average is never gathered, and costs one fp32 copy of the rank's shards. It is exported like the model
(``training.parallel.hf_export``), and saved beside the run as a DCP folder with the count and the last step it
holds, so a resumed run reloads it (under any layout: DCP reshards) and does not count a replayed snapshot twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor

from .engine import ParallelTrainer
from .hf_export import collective_output_dir
from .safe_reader import SafeFileSystemReader

COUNTS_FILE = "polyak.json"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class ShardedPolyakAverage:
    """The uniform mean of the model states passed to :meth:`update`, as this rank's shards.

    Attributes: ``count`` (states averaged), ``last_step`` (optimizer step of the newest one, -1: none).
    """

    def __init__(self) -> None:
        self.count = 0
        self.last_step = -1
        self.mean: dict[str, torch.Tensor] = {}

    def update(self, trainer: ParallelTrainer) -> bool:
        """Add the trainer's current weights (local, no communication); a step already averaged (replayed after
        a resume) is skipped. Returns whether the state was added."""
        if trainer.step_count <= self.last_step:
            return False
        self.count += 1
        for name, tensor in trainer.model_state().items():
            local = _local(tensor).detach().float()
            if name not in self.mean:
                self.mean[name] = local.clone()
            else:
                self.mean[name].add_(local - self.mean[name], alpha=1.0 / self.count)
        self.last_step = trainer.step_count
        return True

    def state_dict(self, trainer: ParallelTrainer) -> dict[str, torch.Tensor]:
        """The average under the model's names, laid out (and typed) like the trainer's weights."""
        if not self.count:
            raise ValueError("the Polyak average holds no checkpoint yet: the annealing stage took no snapshot.")
        state = {}
        for name, tensor in trainer.model_state().items():
            mean = self.mean[name].to(tensor.dtype)
            if isinstance(tensor, DTensor):
                mean = DTensor.from_local(
                    mean,
                    tensor.device_mesh,
                    tensor.placements,
                    run_check=False,
                    shape=tensor.shape,
                    stride=tensor.stride(),
                )
            state[name] = mean
        return state

    def save(self, trainer: ParallelTrainer, folder: str | Path) -> None:
        """Write the average to ``folder`` (DCP, every rank its shards; replaced atomically; collective)."""
        with collective_output_dir(folder) as tmp:
            dcp.save({"polyak": self.state_dict(trainer)}, checkpoint_id=str(tmp))
            if dist.get_rank() == 0:
                counts = {"count": self.count, "last_step": self.last_step}
                (tmp / COUNTS_FILE).write_text(json.dumps(counts), encoding="utf-8")

    def load(self, trainer: ParallelTrainer, folder: str | Path) -> None:
        """Read an average :meth:`save` wrote, under the trainer's layout (collective)."""
        folder = Path(folder)
        counts = json.loads((folder / COUNTS_FILE).read_text(encoding="utf-8"))
        state = {"polyak": {name: torch.empty_like(t) for name, t in trainer.model_state().items()}}
        dcp.load(state, storage_reader=SafeFileSystemReader(str(folder)))
        self.mean = {name: _local(t).detach().float().clone() for name, t in state["polyak"].items()}
        self.count, self.last_step = counts["count"], counts["last_step"]
