"""Stage 3, annealing [3.4.3]: LR linearly to 0, upsampled high-quality data, Polyak-averaged checkpoints.

Every ``average_every`` steps (and at the last step) rank 0 writes the gathered model as a Hugging Face folder under
``<output_dir>/anneal/step_<N>``; at the end those snapshots are averaged with the post-training averaging code
(``training.averaging.average_checkpoints``, one shard in memory at a time) into the final model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hf_llama3.checkpoint_io import atomic_output_dir
from training.averaging import average_checkpoints

from .config import AnnealConfig
from .schedules import cosine_lr, linear_to_zero_lr
from .state import StepPlan

if TYPE_CHECKING:
    from .runner import Runner

logger = logging.getLogger(__name__)


class AnnealStage:
    """Anneals for ``config.steps`` steps from the LR the previous stage ended at (``weights`` may override the mix,
    as the data probe does)."""

    layout = "anneal"

    def __init__(self, config: AnnealConfig, weights: dict[str, float] | None = None, name: str = "anneal"):
        self.config = config
        self.weights = weights if weights is not None else config.weights
        self.name = name

    def begin(self, run: Runner) -> None:
        run.state.start_lr = cosine_lr(run.trainer.step_count, run.optimizer)
        logger.info("%s: LR %.3g -> 0 over %d steps", self.name, run.state.start_lr, self.config.steps)

    def plan(self, run: Runner) -> StepPlan:
        lr = linear_to_zero_lr(run.state.stage_step, self.config.steps, run.state.start_lr)
        batch_size = self.config.batch_tokens // self.config.seq_len
        return StepPlan(batch_size, self.config.seq_len, self.weights, lr)

    def end_of_step(self, run: Runner) -> bool:
        done = run.state.stage_step >= self.config.steps
        if done or run.state.stage_step % self.config.average_every == 0:
            folder = run.output_dir / self.name / f"step_{run.trainer.step_count:08d}"
            model = run.gathered()
            if model is not None:
                with atomic_output_dir(folder, overwrite=True) as tmp:
                    model.save_pretrained(tmp)
            if str(folder) not in run.state.snapshots:
                run.state.snapshots.append(str(folder))
        return done


def polyak_average(snapshots: Sequence[str | Path], output_dir: str | Path, last: int = 0) -> Path:
    """The uniform average of the (newest ``last``, 0: all) annealing snapshots, written to ``output_dir``."""
    chosen = list(snapshots)[-last:] if last else list(snapshots)
    if not chosen:
        raise ValueError("no annealing snapshots to average: the annealing stage did not run.")
    # One snapshot averages to itself; average_checkpoints handles one folder like many.
    return average_checkpoints(chosen, output_dir, overwrite=True)
