"""``hf-llama3 pretrain`` under real launchers, on a recipe with only stage 1 (the engine-only run). torchrun: one
rank is SIGKILLed in the middle of writing a checkpoint, torchrun tears the job down, the same command is rerun and
resumes from the last complete checkpoint; the exported weights equal those of an uninterrupted single-process run.
``accelerate launch --multi_gpu`` on CPU runs the same loop over gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hf_llama3 import Llama3ForCausalLM
from hf_llama3.cli import main as cli_main
from tests.distributed.harness import OPTIMIZER, TINY_OVERRIDES, tiny_config
from tests.pretrain.conftest import ByteTokenizer, write_test_shards
from training.parallel.checkpoint import FAULT_ENV, latest_checkpoint
from training.parallel.deferred_init import init_weights_by_name

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Packed shards of the byte tokenizer (ids < 259, EOS 2: inside the tiny model's 1024-token vocabulary)."""
    folder = tmp_path_factory.mktemp("shards")
    write_test_shards(folder, ByteTokenizer())
    return folder


def _recipe(path: Path, output_dir: Path, parallel: dict, shards: Path, steps: int = 6) -> Path:
    """Stage 1 only, one shape (4 sequences of 32 tokens per step), ``steps`` steps."""
    recipe = dict(
        model="tiny",
        model_overrides=TINY_OVERRIDES,
        parallel=parallel,
        optimizer=dict(
            lr=OPTIMIZER.lr,
            eps=OPTIMIZER.eps,
            weight_decay=OPTIMIZER.weight_decay,
            warmup_steps=OPTIMIZER.warmup_steps,
            decay_steps=4,
        ),
        sources={"general": str(shards)},
        tokenizer=None,
        eval_seq_len=32,
        initial=dict(
            tokens=steps * 4 * 32,
            ramp=[{"after_tokens": 0, "batch_tokens": 4 * 32, "seq_len": 32}],
            mix=[{"after_tokens": 0, "weights": {"general": 1.0}}],
        ),
        checkpoint_every=2,
        keep_last=3,
        report_to=["jsonl"],
        output_dir=str(output_dir),
    )
    path.write_text(yaml.safe_dump(recipe))
    return path


def _torchrun(recipe: Path, nproc: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", "-m", "training.pretrain.cli"]
    return _run([*command, "--config", str(recipe)], env)


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_during_save_then_resume_equals_uninterrupted_run(tmp_path: Path, shards: Path) -> None:
    # Ground truth: one process, no interruption, through the CLI entry point.
    reference_dir = tmp_path / "reference"
    assert cli_main(["pretrain", "--config", str(_recipe(tmp_path / "ref.yaml", reference_dir, {}, shards))]) == 0

    run_dir = tmp_path / "run"
    recipe = _recipe(tmp_path / "run.yaml", run_dir, {"dp_shard": 2}, shards)
    crashed = _torchrun(recipe, 2, env={FAULT_ENV: "save:4:1"})
    assert crashed.returncode != 0, crashed.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    # The kill hit the step-4 save after the shards were written: that folder stays a .tmp, `latest` is step 2.
    assert latest_checkpoint(checkpoints).name == "step_00000002"
    assert (checkpoints / "step_00000004.tmp").is_dir()
    assert not (run_dir / "hf").exists()

    resumed = _torchrun(recipe, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Loaded checkpoint" in resumed.stderr and "at step 2" in resumed.stderr
    assert latest_checkpoint(checkpoints).name == "step_00000006"
    assert not list(checkpoints.glob("*.tmp"))

    ours = Llama3ForCausalLM.from_pretrained(run_dir / "hf").state_dict()
    reference = Llama3ForCausalLM.from_pretrained(reference_dir / "hf").state_dict()
    for key, tensor in reference.items():
        torch.testing.assert_close(ours[key], tensor, rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    initial_model = Llama3ForCausalLM(tiny_config())  # the engine's initialisation: training moved away from it
    init_weights_by_name(initial_model, initial_model._init_weights, seed=0)
    initial = initial_model.state_dict()
    assert max((ours[key] - initial[key]).abs().max() for key in ours) > 1e-3


def _losses(output_dir: Path) -> list[float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_accelerate_launch_multi_gpu_on_cpu_runs_context_parallel(tmp_path: Path, shards: Path) -> None:
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    three_steps = ["--set", f"initial.tokens={3 * 4 * 32}"]
    assert (
        cli_main(
            ["pretrain", "--config", str(_recipe(tmp_path / "ref.yaml", reference_dir, {}, shards)), *three_steps]
        )
        == 0
    )
    recipe = _recipe(tmp_path / "run.yaml", run_dir, {"cp": 2}, shards)
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "-m", "training.pretrain.cli"]
    result = _run([*command, "--config", str(recipe), *three_steps])
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(_losses(run_dir)), torch.tensor(_losses(reference_dir)), rtol=0, atol=1e-5)
