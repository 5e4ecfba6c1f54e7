"""Loss-spike / NaN guard on the real engine: a planted bad batch is skipped without touching the weights or the
AdamW moments, and N bad batches in a row stop the run."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.pretrain.config import SpikeGuardConfig
from training.pretrain.guard import SpikeGuard, TooManyBadBatches


def _batch(step: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(3, 512, (2, 16), generator=gen)}


def _snapshot(trainer: ParallelTrainer) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in trainer.full_state_dict().items()}
    for group in trainer.optimizers[0].state.values():
        state.update({f"opt.{id(group)}.{k}": v.clone() for k, v in group.items() if torch.is_tensor(v)})
    return state


def _plant(trainer: ParallelTrainer, factor: float):
    """A corrupted batch: the logits multiplied by ``factor`` (a loss spike; inf/NaN give NaN gradients), through
    the final norm's output, which the bias-free output projection (applied inside the chunked loss) scales alike."""
    stage = trainer.stages[0][1]
    return stage.model.norm.register_forward_hook(lambda _m, _i, out: out * factor)


@pytest.mark.parametrize("factor", [float("inf"), 50.0])
def test_planted_bad_batch_is_skipped(single_process_group, factor):
    trainer = ParallelTrainer(tiny_config(), EngineConfig(optimizer={"lr": 1e-3, "max_grad_norm": 0}))
    guard = SpikeGuard(trainer, SpikeGuardConfig(window=3, spike_factor=4.0, max_consecutive=3))
    for step in range(4):
        loss = trainer.step(_batch(step))
        assert not guard.after_step(loss, trainer.step_count)
    before = _snapshot(trainer)
    handle = _plant(trainer, factor)
    loss = trainer.step(_batch(99))
    handle.remove()
    assert guard.after_step(loss, trainer.step_count)
    after = _snapshot(trainer)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loss = trainer.step(_batch(4))  # training goes on
    assert not guard.after_step(loss, trainer.step_count)
    assert not all(torch.equal(before[k], v) for k, v in _snapshot(trainer).items())
    assert guard.skipped_total == 1


# Skipping the very first update makes torch warn that the LR scheduler stepped before the optimizer: true, and meant.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler:UserWarning")
def test_stops_after_n_bad_batches_in_a_row(single_process_group):
    trainer = ParallelTrainer(tiny_config(), EngineConfig(optimizer={"lr": 1e-3}))
    guard = SpikeGuard(trainer, SpikeGuardConfig(window=2, max_consecutive=3))
    handle = _plant(trainer, float("nan"))
    for step in range(2):
        assert guard.after_step(trainer.step(_batch(step)), trainer.step_count)
    with pytest.raises(TooManyBadBatches, match="3 bad batches in a row"):
        guard.after_step(trainer.step(_batch(2)), trainer.step_count)
    handle.remove()
