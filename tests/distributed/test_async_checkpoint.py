"""Asynchronous DCP saves on 2 gloo ranks (FSDP2): training goes on while a checkpoint is written, the final weights
are bit-equal to a run with synchronous saves, and a rank SIGKILLed while its asynchronous write is in flight
leaves ``latest`` at the previous complete checkpoint; resuming from it ends with the uninterrupted run's weights."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from hf_llama3.cli_errors import RankKilledError
from tests.distributed.harness import OPTIMIZER, make_batch, tiny_config
from tests.pretrain.conftest import ByteTokenizer, small_recipe, write_test_shards
from training.parallel.checkpoint import FAULT_ENV, CheckpointSaver, latest_checkpoint, load_checkpoint
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.parallel.spawn import run_local
from training.post_cli import build_config
from training.pretrain.cli import build_stages
from training.pretrain.config import PretrainRecipe
from training.pretrain.runner import RelaunchNeeded, Runner

TOTAL, EVERY = 4, 2
KILL_AT = 4  # rank 1 dies inside the step-4 save's write window: staged, written in the background, not finalised


def _train(rank: int, folder: Path, asynchronous: bool) -> None:
    """Train to ``TOTAL`` steps from ``folder``'s latest checkpoint (or from scratch), saving every ``EVERY``."""
    trainer = ParallelTrainer(tiny_config(), EngineConfig(parallel=ParallelDims(dp_shard=2), optimizer=OPTIMIZER))
    saver = CheckpointSaver(folder, keep_last=2, asynchronous=asynchronous)
    latest = latest_checkpoint(folder)
    start = load_checkpoint(trainer, latest)["data_step"] if latest is not None else 0
    pointers = []
    for step in range(start, TOTAL):
        trainer.step(make_batch(step))
        saver.poll()
        if trainer.step_count % EVERY == 0:
            saver.save(trainer, extra={"data_step": trainer.step_count})
            latest = latest_checkpoint(folder)
            pointers.append((trainer.step_count, latest.name if latest is not None else None))
    saver.close()
    state = trainer.full_state_dict()
    if rank == 0:
        staging = saver.staging_bytes
        torch.save({"state": state, "pointers": pointers, "staging_bytes": staging}, folder / "result.pt")
    dist.barrier()


def _sync_then_async(rank: int, world_size: int, out_dir: str) -> None:
    for name in ("sync", "async"):
        _train(rank, Path(out_dir) / name, asynchronous=name == "async")


def _resume(rank: int, world_size: int, folder: str) -> None:
    _train(rank, Path(folder), asynchronous=True)


@functools.cache
def _runs() -> Path:
    out = Path(tempfile.mkdtemp(prefix="async_ckpt_"))
    run_local(2, _sync_then_async, str(out))
    return out


@pytest.mark.timeout(300)
def test_async_saves_give_the_weights_of_sync_saves() -> None:
    sync, asynchronous = (torch.load(_runs() / name / "result.pt") for name in ("sync", "async"))
    assert sync["state"].keys() == asynchronous["state"].keys()
    for key, tensor in sync["state"].items():
        assert torch.equal(asynchronous["state"][key], tensor), key
    # A synchronous save is complete on return; an asynchronous one is not yet pointed at (training goes on), at
    # most the one before it is.
    assert sync["pointers"] == [(s, f"step_{s:08d}") for s in range(EVERY, TOTAL + 1, EVERY)]
    for step, name in asynchronous["pointers"]:
        assert name is None or int(name.split("_")[1]) < step
    for name in ("sync", "async"):
        assert latest_checkpoint(_runs() / name).name == f"step_{TOTAL:08d}"
        assert not list((_runs() / name).glob("*.tmp"))
    # The written checkpoints themselves are equal: the staged copy is what was written, not later weights.
    for step in (2, 4):
        directory = f"step_{step:08d}"
        for shard in sorted((_runs() / "sync" / directory).glob("*.distcp")):
            assert shard.read_bytes() == (_runs() / "async" / directory / shard.name).read_bytes(), shard
    # Staging memory: one host copy of rank 0's shards of the weights and AdamW's two moments (plus step counters).
    params = sum(t.numel() for t in sync["state"].values())
    assert 3 * params * 4 / 2 <= asynchronous["staging_bytes"] <= 3 * params * 4 / 2 + 4096


@pytest.mark.timeout(300)
def test_kill_9_during_an_async_save_then_resume_equals_an_uninterrupted_run(monkeypatch) -> None:
    folder = Path(tempfile.mkdtemp(prefix="async_kill_"))
    monkeypatch.setenv(FAULT_ENV, f"async_save:{KILL_AT}:1")
    with pytest.raises(RankKilledError):
        run_local(2, _resume, str(folder))
    monkeypatch.delenv(FAULT_ENV)
    assert latest_checkpoint(folder).name == f"step_{KILL_AT - EVERY:08d}"
    assert (folder / f"step_{KILL_AT:08d}.tmp").is_dir() and not (folder / f"step_{KILL_AT:08d}").exists()

    run_local(2, _resume, str(folder))
    resumed = torch.load(folder / "result.pt")["state"]
    uninterrupted = torch.load(_runs() / "async" / "result.pt")["state"]
    for key, tensor in uninterrupted.items():
        assert torch.equal(resumed[key], tensor), key
    assert latest_checkpoint(folder).name == f"step_{TOTAL:08d}"
    assert not list(folder.glob("*.tmp"))


@pytest.fixture
def one_process_group():
    """A one-process gloo group, as ``hf-llama3 pretrain`` makes without torchrun (destroyed before any fork)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_pretrain_recipe_async_checkpoint_reaches_the_runner(tmp_path, one_process_group) -> None:
    """``async_checkpoint: true`` makes the runner's saves asynchronous; the last checkpoint is complete when ``run``
    returns (the export reads it), and when a stage stops the run to ask for a relaunch."""
    shards = tmp_path / "shards"
    write_test_shards(shards, ByteTokenizer())
    values = yaml.safe_load(small_recipe(tmp_path, shards, tmp_path / "run").read_text())
    values.update(parallel={}, long_context=None, anneal=None)
    recipe = build_config(PretrainRecipe, {**values, "async_checkpoint": True})
    runner = Runner(recipe, build_stages(recipe), recipe.output_dir)
    assert runner.saver.asynchronous
    runner.run()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == f"step_{runner.trainer.step_count:08d}"
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))

    values = yaml.safe_load(small_recipe(tmp_path, shards, tmp_path / "relaunch").read_text())
    values.update(parallel={}, async_checkpoint=True)
    values["long_context"]["parallel"] = {"dp_shard": 2}
    recipe = build_config(PretrainRecipe, values)
    with pytest.raises(RelaunchNeeded):
        Runner(recipe, build_stages(recipe), recipe.output_dir).run()
    assert latest_checkpoint(tmp_path / "relaunch" / "checkpoints").name == "step_00000006"
