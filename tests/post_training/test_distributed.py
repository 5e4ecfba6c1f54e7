"""Reward, SFT and DPO trainers under torchrun with 2 gloo ranks: both ranks train and stay in sync.

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
