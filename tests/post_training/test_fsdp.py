"""Sharded post-training: SFT and DPO with the policy sharded by FSDP2 over 2 CPU ranks (gloo) give the weights
of 1 rank, and the gathered export loads with ``from_pretrained``; ``sharding: fsdp2`` is refused where accelerate
would silently fall back to DDP (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.post_training.conftest import tiny_causal_lm, trainer_args
from training.sft import Llama3SFTConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fsdp2_two_ranks_equal_one_rank_and_export_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(REPO / "tests/post_training/fsdp_worker.py"), str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["world_size"] for r in (0, 1)] == [2, 2]
    start = tiny_causal_lm(0).state_dict()
    for stage in ("sft", "dpo"):
        sharded = AutoModelForCausalLM.from_pretrained(tmp_path / stage / "fsdp2").state_dict()
        one_rank = AutoModelForCausalLM.from_pretrained(tmp_path / stage / "one_rank").state_dict()
        assert sharded.keys() == one_rank.keys() == start.keys()
        for name, weight in one_rank.items():
            torch.testing.assert_close(sharded[name], weight, rtol=1e-5, atol=1e-6, msg=f"{stage} {name}")
        assert any(not torch.equal(sharded[name], start[name]) for name in start), stage  # it trained


def test_fsdp2_setting_is_refused_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="sharding: fsdp2 needs accelerators"):
        Llama3SFTConfig(**trainer_args(tmp_path, sharding="fsdp2"))
    with pytest.raises(ValueError, match="sharding: fsdp2 with use_peft"):
        Llama3SFTConfig(**trainer_args(tmp_path, sharding="fsdp2", use_peft=True))
