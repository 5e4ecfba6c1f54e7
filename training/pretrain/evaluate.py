"""The held-out loss of every source on a whole ``Llama3ForCausalLM`` in one process (a released or exported model).

During pre-training the same measure runs on the sharded model, every rank taking part and none gathering it
(``training.parallel.sharded_eval.held_out_loss``; tests/pretrain/test_sharded_eval.py checks the two agree).
"""

from __future__ import annotations

import torch

from hf_llama3 import Llama3ForCausalLM


@torch.no_grad()
def eval_loss(model: Llama3ForCausalLM, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean next-token loss on each held-out batch (document-masked), and their mean under ``"mean"``."""
    losses = {
        name: float(model(input_ids=b["input_ids"], document_ids=b["document_ids"], labels=b["input_ids"]).loss)
        for name, b in batches.items()
    }
    losses["mean"] = sum(losses.values()) / len(losses)
    return losses
