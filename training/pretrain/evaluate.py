"""Evaluation during pre-training: the whole model gathered from its shards, and the held-out loss.

The gate of each long-context stage [3.4.2] and the annealing snapshots need the unsharded model: every rank
gathers it (``ParallelTrainer.full_state_dict``, a collective), rank 0 evaluates and broadcasts the result. That
fits the CPU recipes and single-node GPU runs; at 70B/405B scale the gate belongs in a separate evaluation job
reading the DCP checkpoint (``training.parallel.checkpoint.export_hf``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from training.parallel.engine import ParallelTrainer


def gathered_model(trainer: ParallelTrainer, model_config: Llama3Config) -> Llama3ForCausalLM | None:
    """The full model on rank 0 in eval mode (``None`` elsewhere); collective."""
    state = trainer.full_state_dict()
    if dist.get_rank() != 0:
        return None
    model = Llama3ForCausalLM(model_config)
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def eval_loss(model: Llama3ForCausalLM, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean next-token loss on each held-out batch (document-masked), and their mean under ``"mean"``."""
    losses = {
        name: float(model(input_ids=b["input_ids"], document_ids=b["document_ids"], labels=b["input_ids"]).loss)
        for name, b in batches.items()
    }
    losses["mean"] = sum(losses.values()) / len(losses)
    return losses


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
