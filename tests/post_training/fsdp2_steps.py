"""SFT and DPO steps with the policy sharded by FSDP2 over the ranks of ddp_worker.py (2 gloo ranks, torchrun).

accelerate runs FSDP only on accelerators: on CPU it silently falls back to DDP (``AcceleratorState`` sets the FSDP
plugin for multi-GPU/NPU/XPU... types only), so on CPU the stage configs refuse ``sharding: fsdp2`` and this worker
drives FSDP2 (``torch.distributed.fsdp.fully_shard``, one unit per decoder layer, then the root) directly, with the
stages' own rows, collators and losses (``Trainer.compute_loss`` of our SFT and DPO trainers, the DPO reference kept
whole). Each rank takes one row of a 2-row global batch; an unsharded copy is also trained on both rows (the
1-rank run, its gradient the mean of the two rows' as under data parallelism). The sharded weights are gathered
into one full state dict, saved with ``save_pretrained`` by rank 0, and test_distributed.py reloads them with
``from_pretrained`` and compares them to the 1-rank weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset

STEPS, LR = 2, 1e-3


def _trainers(out: Path, tokenizer):
    from tests.post_training.conftest import tiny_causal_lm, trainer_args
    from tests.post_training.test_dpo import ROWS as DPO_ROWS
    from tests.post_training.test_sft import DIALOGS
    from training.dpo import Llama3DPOConfig, Llama3DPOTrainer
    from training.sft import Llama3SFTConfig, make_trainer

    common = {"per_device_train_batch_size": 1, "max_length": 128}
    sft = make_trainer(
        Llama3SFTConfig(**trainer_args(out / "sft", packing=False, **common)),
        tiny_causal_lm(0),
        tokenizer,
        Dataset.from_list([{"messages": d} for d in DIALOGS[:2]]),
    )
    dpo = Llama3DPOTrainer(
        model=tiny_causal_lm(0),
        args=Llama3DPOConfig(**trainer_args(out / "dpo", **common)),
        train_dataset=Dataset.from_list(DPO_ROWS),
        processing_class=tokenizer,
    )
    return {"sft": sft, "dpo": dpo}


def _step(trainer, model, optimizer, rows: list[int]) -> None:
    """One optimizer step on the mean loss of ``rows`` (one row per forward, as each rank sees one)."""
    optimizer.zero_grad()
    for index in rows:
        batch = trainer.data_collator([trainer.train_dataset[index]])
        (trainer.compute_loss(model, batch) / len(rows)).backward()
    optimizer.step()


def train_sharded(out: Path, tokenizer) -> None:
    """Write ``out/<stage>/fsdp2`` (2 ranks, sharded) and ``out/<stage>/one_rank`` for SFT and DPO."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    rank = dist.get_rank()
    for name, trainer in _trainers(out, tokenizer).items():
        reference = copy.deepcopy(trainer.model).train()
        sharded = trainer.model.train()
        for layer in sharded.model.layers:
            fully_shard(layer)
        fully_shard(sharded)
        optimizer = torch.optim.AdamW(sharded.parameters(), lr=LR)
        for _ in range(STEPS):
            _step(trainer, sharded, optimizer, [rank])  # FSDP2 averages the gradients over the 2 ranks
        full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # The 1-rank run, on every rank: the losses gather their metrics across ranks, so all must take part.
        optimizer = torch.optim.AdamW(reference.parameters(), lr=LR)
        for _ in range(STEPS):
            _step(trainer, reference, optimizer, [0, 1])
        if rank == 0:
            sharded.save_pretrained(out / name / "fsdp2", state_dict=full)
            reference.save_pretrained(out / name / "one_rank")
        dist.barrier()
