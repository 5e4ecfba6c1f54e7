"""Gradient accumulation: N micro-batches per rank equal one batch of N times the rows.

Each layout trains the harness's 3 steps (packed, document-masked rows on steps 0 and 2; 8, 16 and 8 rows) as
micro-batches of ``micro_batch_size`` rows per data-parallel rank, every rank passing only its own rows
(``step(local=True)``), and must match the single-process run of the whole batch: loss and gradient norm of every
step, every gradient of the first step, and the weights after the AdamW steps, to 1e-5. One fork per world size.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from tests.distributed.harness import OPTIMIZER, STEPS, make_batch, reference_run, tiny_config
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.parallel.spawn import run_local

# world size -> [(name, ParallelDims kwargs)]; micro-batches per step = rows per dp rank / micro_batch_size.
LAYOUTS: dict[int, list[tuple[str, dict]]] = {
    2: [
        ("FSDP2", dict(dp_shard=2, micro_batch_size=1)),  # 4, 8, 4 micro-batches, gradient sync on the last
        ("TP2", dict(tp=2, micro_batch_size=2)),  # 4, 8, 4
        ("CP2", dict(cp=2, micro_batch_size=2)),  # 4, 8, 4
        ("PP2", dict(pp=2, micro_batch_size=1)),  # 8, 16, 8 microbatches of the 1F1B schedule
    ],
    8: [
        (
            "PP2xFSDP2xTP2",
            dict(pp=2, dp_shard=2, tp=2, micro_batch_size=1, pp_schedule="interleaved_1f1b", pp_virtual_stages=2),
        )
    ],
}


def _capture_first_gradients(trainer: ParallelTrainer, grads: dict[str, torch.Tensor]) -> None:
    """Record the whole gradient of every parameter this rank holds at the first step, before clipping (the
    engine clips after the last micro-batch's reduction)."""
    clip = trainer.clip_grad_norm

    def capture(max_norm: float) -> float:
        if trainer.step_count == 0:
            for _, stage in trainer.stages:
                for name, param in stage.named_parameters():
                    grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
                    grads[name] = grad.detach().clone()
        return clip(max_norm)

    trainer.clip_grad_norm = capture


def _train(rank: int, world_size: int, layouts: list[tuple[str, dict]], out_dir: str) -> None:
    for name, dims in layouts:
        trainer = ParallelTrainer(tiny_config(), EngineConfig(parallel=ParallelDims(**dims), optimizer=OPTIMIZER))
        grads: dict[str, torch.Tensor] = {}
        _capture_first_gradients(trainer, grads)
        losses, norms = [], []
        for step in range(STEPS):
            batch = make_batch(step)
            rows = trainer.local_rows(batch["input_ids"].shape[0])
            losses.append(trainer.step({key: value[rows] for key, value in batch.items()}, local=True))
            norms.append(trainer.last_grad_norm)
        state = trainer.full_state_dict()
        torch.save(grads, Path(out_dir) / f"{name}.grads{rank}.pt")  # each pipeline rank holds its own layers
        if rank == 0:
            torch.save({"losses": losses, "norms": norms, "state": state}, Path(out_dir) / f"{name}.pt")
        del trainer
        dist.barrier()


@functools.cache
def _results(world_size: int) -> dict[str, dict]:
    out_dir = tempfile.mkdtemp(prefix=f"accumulation{world_size}_")
    run_local(world_size, _train, LAYOUTS[world_size], out_dir)
    results = {}
    for name, _ in LAYOUTS[world_size]:
        results[name] = torch.load(Path(out_dir) / f"{name}.pt")
        results[name]["grads"] = {}
        for rank in range(world_size):
            results[name]["grads"].update(torch.load(Path(out_dir) / f"{name}.grads{rank}.pt"))
    return results


@functools.cache
def _reference() -> dict:
    """One process, one forward of the whole batch per step (the model's own loss)."""
    norms: list[float] = []
    grads: dict[str, torch.Tensor] = {}
    losses, state = reference_run(tiny_config(), grad_norms=norms, first_grads=grads)
    return {"losses": losses, "norms": norms, "grads": grads, "state": state}


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("world_size", "name"), [(world, name) for world, layouts in LAYOUTS.items() for name, _ in layouts]
)
def test_micro_batches_equal_one_batch(world_size: int, name: str) -> None:
    ref, result = _reference(), _results(world_size)[name]
    for key in ("losses", "norms"):
        torch.testing.assert_close(torch.tensor(result[key]), torch.tensor(ref[key]), rtol=0, atol=1e-5, msg=key)
    assert set(result["grads"]) == set(ref["grads"])
    for kind in ("grads", "state"):
        for key, expected in ref[kind].items():
            torch.testing.assert_close(
                result[kind][key], expected, rtol=0, atol=1e-5, msg=lambda m, k=key, t=kind: f"{t} {k}: {m}"
            )
    assert ref["losses"][-1] != ref["losses"][0]


def test_micro_batch_count_follows_the_batch() -> None:
    """The batch ramp changes the number of micro-batches, never their size; a ragged split is refused."""
    dims = ParallelDims(
        pp=16, tp=8, dp_shard=128, pp_schedule="interleaved_1f1b", pp_virtual_stages=2, micro_batch_size=1
    )
    dims.validate_batch(4_194_304 // 4096, 4096)  # 8 rows per replica: 8 microbatches in one round of 16 stages
    assert [dims.num_microbatches(rows) for rows in (1024, 1024, 2048)] == [8, 8, 16]
    with pytest.raises(ValueError, match="whole number of micro-batches"):
        ParallelDims(dp_shard=2, micro_batch_size=3).validate_batch(8, 32)
    with pytest.raises(ValueError, match="at least pp=4 microbatches"):
        ParallelDims(pp=4, micro_batch_size=2).validate_batch(4, 32)
    with pytest.raises(ValueError, match="Set one of micro_batch_size"):
        ParallelDims(micro_batch_size=1, pp_microbatches=2)
