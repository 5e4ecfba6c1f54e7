"""Stage 1, initial pre-training [3.4.1]: warmup + cosine LR, batch/sequence ramp and data mix by tokens seen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import InitialConfig
from .schedules import cosine_lr, mix_at, ramp_at
from .state import StepPlan

if TYPE_CHECKING:
    from .runner import Runner


class InitialStage:
    """Trains ``config.tokens`` tokens; the ramp and the mix read the tokens seen so far."""

    name = "initial"
    layout = "initial"

    def __init__(self, config: InitialConfig):
        self.config = config

    def begin(self, run: Runner) -> None:
        """Nothing to measure before stage 1."""

    def plan(self, run: Runner) -> StepPlan:
        shape = ramp_at(self.config.ramp, run.state.stage_tokens)
        weights = mix_at(self.config.mix, run.state.stage_tokens)
        return StepPlan(shape.batch_size, shape.seq_len, weights, cosine_lr(run.trainer.step_count, run.optimizer))

    def end_of_step(self, run: Runner) -> bool:
        return run.state.stage_tokens >= self.config.tokens
