"""Worker for test_distributed.py: each post-training trainer takes 2 steps under torchrun (gloo, 2 ranks), then
SFT and DPO take 2 steps with the policy sharded by FSDP2 (tests/post_training/fsdp2_steps.py).

Every rank writes ``rank<r>.json`` with the world size, a checksum of each trained model's parameters and whether
they changed; the test compares the ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(out: Path) -> None:
    from hf_llama3 import load_tokenizer
    from tests.post_training.conftest import PREFERENCE_ROWS, tiny_causal_lm, tiny_reward_model, trainer_args
    from tests.post_training.test_dpo import ROWS as DPO_ROWS
    from tests.post_training.test_sft import DIALOGS
    from training.dpo import Llama3DPOConfig, Llama3DPOTrainer
    from training.reward import Llama3RewardConfig, Llama3RewardTrainer
    from training.sft import Llama3SFTConfig, make_trainer

    tokenizer = load_tokenizer()
    common = {"per_device_train_batch_size": 1, "max_steps": 2, "ddp_backend": "gloo", "max_length": 256}
    trainers = {
        "reward": lambda: Llama3RewardTrainer(
            model=tiny_reward_model(0),
            args=Llama3RewardConfig(**trainer_args(out / "reward", **common)),
            train_dataset=Dataset.from_list(PREFERENCE_ROWS),
            processing_class=tokenizer,
        ),
        "sft": lambda: make_trainer(
            Llama3SFTConfig(**trainer_args(out / "sft", **common)),
            tiny_causal_lm(0),
            tokenizer,
            Dataset.from_list([{"messages": d} for d in DIALOGS]),
        ),
        "dpo": lambda: Llama3DPOTrainer(
            model=tiny_causal_lm(0),
            args=Llama3DPOConfig(**trainer_args(out / "dpo", **common)),
            train_dataset=Dataset.from_list(DPO_ROWS * 2),
            processing_class=tokenizer,
        ),
    }
    report = {"checksums": {}, "changed": {}, "losses": {}}
    for name, build in trainers.items():
        trainer = build()
        before = _checksum(trainer.model)
        result = trainer.train()
        report["checksums"][name] = _checksum(trainer.model)
        report["changed"][name] = report["checksums"][name] != before
        report["losses"][name] = result.training_loss
    report["world_size"] = dist.get_world_size()  # the trainers' accelerator set up the gloo group
    from tests.post_training.fsdp2_steps import train_sharded

    train_sharded(out / "fsdp2", tokenizer)  # in the same launch: one torchrun start for both checks
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.manual_seed(0)
    main(Path(sys.argv[1]))
