"""Schedules of the pre-training recipe [3.4]: learning rate by step, batch/sequence ramp and data mix by tokens
seen, and the deterministic source sampler that realises a mix sequence by sequence.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from training.parallel.engine import OptimizerConfig

from .config import MixPoint, RampPoint


def cosine_lr(step: int, optimizer: OptimizerConfig) -> float:
    """LR of stages 1 and 2 at optimizer step ``step`` (0-based): linear warmup to the peak, cosine decay to
    ``peak * min_lr_ratio`` over ``decay_steps`` [3.4.1: 8e-5, 8,000 warmup steps, cosine to 8e-7 over 1.2M steps]."""
    return optimizer.lr * optimizer.lr_factor(step)


def linear_to_zero_lr(step: int, total_steps: int, start_lr: float) -> float:
    """LR of annealing step ``step`` of ``total_steps``: from ``start_lr`` linearly down, reaching 0 after the last
    step [3.4.3: "linearly annealed the learning rate to 0"]."""
    if not 0 <= step < total_steps:
        raise ValueError(f"annealing step {step} is outside 0..{total_steps - 1}.")
    return start_lr * (1 - step / total_steps)


def _at(points: Sequence, tokens_seen: int):
    if tokens_seen < 0:
        raise ValueError(f"tokens_seen must be >= 0, got {tokens_seen}.")
    return points[bisect.bisect_right([p.after_tokens for p in points], tokens_seen) - 1]


def ramp_at(ramp: Sequence[RampPoint], tokens_seen: int) -> RampPoint:
    """The batch shape in force once ``tokens_seen`` tokens have been trained (the last point at or below it)."""
    return _at(ramp, tokens_seen)


def mix_at(mix: Sequence[MixPoint], tokens_seen: int) -> dict[str, float]:
    """The normalised source weights in force once ``tokens_seen`` tokens have been trained."""
    weights = _at(mix, tokens_seen).weights
    total = sum(weights.values())
    return {name: w / total for name, w in sorted(weights.items()) if w > 0}


class SourceSampler:
    """Which source each sequence comes from, deterministically and exactly in proportion to the weights.

    Smooth weighted round robin: every draw adds each source's weight to its credit, picks the source with the most
    credit and takes one from it. After ``n`` draws with fixed weights each source has been picked within one of
    ``n * weight`` times, with no randomness to drift from; the credits are the whole state (JSON, resumable).
    """

    def __init__(self) -> None:
        self.credits: dict[str, float] = {}

    def draw(self, weights: dict[str, float]) -> str:
        """The source of the next sequence under normalised ``weights``."""
        for name in list(self.credits):
            if name not in weights:
                del self.credits[name]  # a source dropped from the mix starts from zero if it returns
        for name, weight in weights.items():
            self.credits[name] = self.credits.get(name, 0.0) + weight
        choice = max(sorted(self.credits), key=lambda name: self.credits[name])
        self.credits[choice] -= 1.0
        return choice

    def state_dict(self) -> dict:
        return {"credits": dict(self.credits)}

    def load_state_dict(self, state: dict) -> None:
        self.credits = {k: float(v) for k, v in state["credits"].items()}
