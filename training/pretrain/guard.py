"""Loss-spike and NaN handling: skip the update of a bad batch, stop after too many in a row.

The engine runs forward, backward, clipping and the optimizer step inside ``ParallelTrainer.step``. The guard sits
between backward and the update: it wraps each optimizer's ``step`` so that, before any parameter or AdamW moment
changes, it reads the global gradient norm the engine measured before clipping (over every data, tensor, context
and pipeline shard). A norm that is not finite (a NaN/inf loss) or above ``spike_factor`` times the mean of the last
``window`` accepted norms (a spike) skips the update on every rank alike, since all ranks see the same global norm;
the batch is dropped.
"""

from __future__ import annotations

import functools
import logging
import math

from training.parallel.engine import ParallelTrainer

from .config import SpikeGuardConfig

logger = logging.getLogger(__name__)


class TooManyBadBatches(RuntimeError):
    """Raised after ``max_consecutive`` skipped steps in a row."""


class SpikeGuard:
    """Installs itself on ``trainer``'s optimizers; call :meth:`after_step` after every ``trainer.step``."""

    def __init__(self, trainer: ParallelTrainer, config: SpikeGuardConfig):
        self.trainer = trainer
        self.config = config
        self.history: list[float] = []
        self.consecutive = 0
        self.skipped_total = 0
        self._decided_for: int | None = None
        self._skip = False
        self.last_norm = 0.0
        for optimizer in trainer.optimizers:
            optimizer.step = self._wrap(optimizer.step)

    def _decide(self) -> None:
        norm = self.trainer.last_grad_norm
        if norm is None:  # clipping is off (optimizer.max_grad_norm: 0): measure without clipping
            norm = self.trainer.clip_grad_norm(math.inf)
        self.last_norm = float(norm)
        mean = sum(self.history) / len(self.history) if len(self.history) >= self.config.window else None
        spike = mean is not None and self.last_norm > self.config.spike_factor * mean
        self._skip = not math.isfinite(self.last_norm) or spike
        self._decided_for = self.trainer.step_count

    def _wrap(self, step):
        @functools.wraps(step)  # keeps the LR scheduler's marker on the wrapped step
        def guarded_step(*args, **kwargs):
            if self._decided_for != self.trainer.step_count:
                self._decide()
            if self._skip:
                return None
            return step(*args, **kwargs)

        return guarded_step

    def after_step(self, loss: float, step: int) -> bool:
        """Bookkeeping after ``trainer.step`` returned ``loss`` for (1-based) ``step``; returns whether it was
        skipped. Raises :class:`TooManyBadBatches` after ``max_consecutive`` skips in a row."""
        skipped = self._skip
        if skipped:
            self.consecutive += 1
            self.skipped_total += 1
            reason = "non-finite gradients" if not math.isfinite(self.last_norm) else "gradient-norm spike"
            logger.warning(
                "step %d: %s (norm %.4g, loss %.4g): update skipped, batch dropped (%d in a row)",
                step,
                reason,
                self.last_norm,
                loss,
                self.consecutive,
            )
            if self.consecutive >= self.config.max_consecutive:
                raise TooManyBadBatches(
                    f"{self.consecutive} bad batches in a row up to step {step} (last: {reason}, gradient norm "
                    f"{self.last_norm:.4g}, loss {loss:.4g}). Stopping: lower the learning rate, check the data around "
                    "this step, or rerun to resume from the last checkpoint."
                )
        else:
            self.consecutive = 0
            self.history = [*self.history, self.last_norm][-self.config.window :]
        self._decided_for = None
        return skipped

    def state_dict(self) -> dict:
        return {"history": list(self.history), "consecutive": self.consecutive, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(x) for x in state["history"]]
        self.consecutive = int(state["consecutive"])
        self.skipped_total = int(state["skipped_total"])
