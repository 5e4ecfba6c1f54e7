"""The recipe's progress, saved in every checkpoint so a killed run resumes exactly where it was."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class RunState:
    """Where the run stands, beyond the weights, optimizer and RNG state the engine's checkpoint already holds.

    Args:
        stage: Index of the current stage in the run's stage list.
        stage_step: Steps done in the current stage (skipped steps included: their batch is consumed).
        stage_tokens: Tokens consumed in the current stage.
        tokens: Tokens consumed in the whole run (what the ramp and mix schedules of stage 1 read).
        data: ``BatchBuilder.state_dict()``.
        guard: ``SpikeGuard.state_dict()``.
        baseline_loss: Short-context evaluation loss before the current long-context stage.
        start_lr: LR at the start of annealing.
        gates: Every gate check (one dict each).
        snapshots: Annealing snapshots (HF folders) to average.
        finished: All stages done.
    """

    stage: int = 0
    stage_step: int = 0
    stage_tokens: int = 0
    tokens: int = 0
    data: dict = dataclasses.field(default_factory=dict)
    guard: dict = dataclasses.field(default_factory=dict)
    baseline_loss: float | None = None
    start_lr: float | None = None
    gates: list = dataclasses.field(default_factory=list)
    snapshots: list = dataclasses.field(default_factory=list)
    finished: bool = False

    def next_stage(self) -> None:
        """Move to the next stage: its counters and per-stage values start afresh."""
        self.stage += 1
        self.stage_step = self.stage_tokens = 0
        self.baseline_loss = self.start_lr = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunState:
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What the next step trains: ``batch_size`` sequences of ``seq_len`` tokens, drawn under ``weights``, at ``lr``."""

    batch_size: int
    seq_len: int
    weights: dict
    lr: float
