"""Stage 3, annealing [3.4.3]: LR linearly to 0, upsampled high-quality data, Polyak-averaged checkpoints.

Every ``average_every`` steps (and at the last step) the model's state is a snapshot: each rank adds its shards to
the running Polyak average (``training.parallel.polyak``; of the newest ``average_last`` snapshots when set), which
is saved under ``<output_dir>/<stage>/average`` (DCP) so a resumed run continues it. The final export writes that
average as a Hugging Face folder, every rank writing its shards (``training.parallel.hf_export``). No rank ever
gathers the model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from training.parallel.polyak import ShardedPolyakAverage

from .config import AnnealConfig
from .schedules import cosine_lr, linear_to_zero_lr
from .state import StepPlan

if TYPE_CHECKING:
    from .runner import Runner

logger = logging.getLogger(__name__)


def snapshot_steps(config: AnnealConfig) -> list[int]:
    """The stage steps (1-based) that are snapshots: every ``average_every`` and the last."""
    return sorted({*range(config.average_every, config.steps + 1, config.average_every), config.steps})


class AnnealStage:
    """Anneals for ``config.steps`` steps from the LR the previous stage ended at (``weights`` may override the mix,
    as the data probe does)."""

    layout = "anneal"

    def __init__(self, config: AnnealConfig, weights: dict[str, float] | None = None, name: str = "anneal"):
        self.config = config
        self.weights = weights if weights is not None else config.weights
        self.name = name
        self.average = ShardedPolyakAverage()

    def begin(self, run: Runner) -> None:
        run.state.start_lr = cosine_lr(run.trainer.step_count, run.optimizer)
        logger.info("%s: LR %.3g -> 0 over %d steps", self.name, run.state.start_lr, self.config.steps)

    def plan(self, run: Runner) -> StepPlan:
        lr = linear_to_zero_lr(run.state.stage_step, self.config.steps, run.state.start_lr)
        batch_size = self.config.batch_tokens // self.config.seq_len
        return StepPlan(batch_size, self.config.seq_len, self.weights, lr)

    def end_of_step(self, run: Runner) -> bool:
        done = run.state.stage_step >= self.config.steps
        steps = snapshot_steps(self.config)
        if run.state.stage_step not in steps:
            return done
        label = f"{self.name}/step_{run.trainer.step_count:08d}"
        folder = run.output_dir / self.name / "average"
        if self.average.count == 0 and run.state.snapshots:
            self.average.load(run.trainer, folder)  # resumed after a snapshot: continue the saved average
        averaged = (
            not self.config.average_last or steps.index(run.state.stage_step) >= len(steps) - self.config.average_last
        )
        if averaged and self.average.update(run.trainer):
            self.average.save(run.trainer, folder)
        if averaged and label not in run.state.snapshots:
            run.state.snapshots.append(label)
        return done

    def averaged_state(self, run: Runner) -> dict:
        """The Polyak average laid out like ``run.trainer``'s weights (loaded from disk after a resume)."""
        folder = run.output_dir / self.name / "average"
        if self.average.count == 0:
            self.average.load(run.trainer, folder)
        return self.average.state_dict(run.trainer)
