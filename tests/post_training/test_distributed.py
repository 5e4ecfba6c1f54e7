"""Reward, SFT and DPO trainers under torchrun with 2 gloo ranks: both ranks train and stay in sync; SFT and DPO
with the policy sharded by FSDP2 on those ranks give the weights of 1 rank, and the gathered export loads with
``from_pretrained`` (tests/post_training/fsdp2_steps.py: accelerate ignores FSDP on CPU, so FSDP2 is driven directly).

(`accelerate launch --cpu --num_processes 2` silently runs one process, so the launch is torchrun's.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(REPO / "tests/post_training/ddp_worker.py"), str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for stage in ("reward", "sft", "dpo"):
        assert ranks[0]["changed"][stage] and ranks[1]["changed"][stage]
        assert all(math.isfinite(r["losses"][stage]) for r in ranks)
        assert ranks[0]["checksums"][stage] == ranks[1]["checksums"][stage], stage
    from transformers import AutoModelForCausalLM

    from tests.post_training.conftest import tiny_causal_lm

    start = tiny_causal_lm(0).state_dict()
    for stage in ("sft", "dpo"):
        sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp2" / stage / "fsdp2").state_dict()
        one_rank = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp2" / stage / "one_rank").state_dict()
        assert sharded.keys() == one_rank.keys() == start.keys()
        for name, weight in one_rank.items():
            torch.testing.assert_close(sharded[name], weight, rtol=1e-5, atol=1e-6, msg=f"{stage} {name}")
        assert any(not torch.equal(sharded[name], start[name]) for name in start), stage  # it trained
