"""The loop that runs a list of stages on the parallel engine, checkpointed and resumable at any step.

Every step: the stage plans the batch shape, mix and LR; the batch builder cuts the next sequences from the
sources; the engine trains (the spike guard may veto the update); metrics go to ``metrics.jsonl``, TensorBoard and the
progress bar; the stage says whether it is done (long-context gates and annealing snapshots happen there). A
checkpoint holds the engine state plus the :class:`RunState` (data positions, guard, stage counters, gate results),
so rerunning the same command after a crash continues from ``<output_dir>/checkpoints/latest`` with the same data and
ends with the same weights.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from training.parallel.checkpoint import CheckpointSaver, latest_checkpoint, load_checkpoint, maybe_inject_fault
from training.parallel.dims import ParallelDims
from training.parallel.engine import ParallelTrainer
from training.parallel.safe_reader import SafeFileSystemReader
from training.parallel.sharded_eval import held_out_loss

from .batches import BatchBuilder
from .config import PretrainRecipe
from .guard import SpikeGuard
from .logs import MetricsLog
from .long_context import GateFailed
from .state import RunState, StepPlan

logger = logging.getLogger(__name__)


class Stage(Protocol):
    """What the runner needs of a stage (``InitialStage``, ``LongContextStage``, ``AnnealStage``)."""

    name: str
    layout: str

    def begin(self, run: Runner) -> None: ...

    def plan(self, run: Runner) -> StepPlan: ...

    def end_of_step(self, run: Runner) -> bool: ...


class RelaunchNeeded(RuntimeError):
    """The next stage's parallel layout needs another number of processes; the run is checkpointed."""


def read_run_state(checkpoint: Path) -> dict[str, Any]:
    """The caller state (``extra``) saved in a DCP checkpoint, without building a model (collective if launched)."""
    state = {"train": {"step": 0, "extra": ""}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=SafeFileSystemReader(str(checkpoint)))
    return json.loads(state["train"]["extra"])


def load_tokenizer_setting(setting: str | None):
    """``llama3``: the real Llama 3 tokenizer; a folder: ``AutoTokenizer``; ``None``: no tokenizer."""
    if setting is None:
        return None
    if setting == "llama3":
        from hf_llama3 import load_tokenizer

        return load_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(setting)


class Runner:
    """Runs ``stages`` of ``recipe`` into ``output_dir``; ``init_checkpoint`` starts a fresh run from a checkpoint's
    weights, optimizer and data positions (the data probe)."""

    def __init__(
        self,
        recipe: PretrainRecipe,
        stages: list[Stage],
        output_dir: str | Path,
        init_checkpoint: str | Path | None = None,
        tokenizer: Any = None,
    ):
        self.recipe = recipe
        self.stages = stages
        self.output_dir = Path(output_dir)
        self.checkpoints = self.output_dir / "checkpoints"
        self.saver = CheckpointSaver(self.checkpoints, recipe.keep_last, asynchronous=recipe.async_checkpoint)
        self.rank0 = dist.get_rank() == 0
        self.model_config = recipe.model_config()
        self.optimizer = recipe.optimizer_config()
        self.tokenizer = tokenizer
        self.builder = BatchBuilder(recipe.sources, recipe.eval_sequences)
        if self.rank0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        latest = latest_checkpoint(self.checkpoints)
        source = latest if latest is not None else init_checkpoint
        saved = read_run_state(Path(source)) if source is not None else {}
        if latest is not None:
            self.state = RunState.from_dict(saved["run"])
        else:
            self.state = RunState()
            if "run" in saved:  # the probe continues the data stream where the checkpoint's run stopped
                self.state.data = saved["run"]["data"]
        self.layout = self.recipe.layout(self.stages[min(self.state.stage, len(stages) - 1)].layout)
        self._build_trainer(source, restore_guard=latest is not None)
        self.log = MetricsLog(self.output_dir, recipe.report_to, self.model_config, recipe.peak_flops, self.rank0)

    def _build_trainer(self, checkpoint: Path | str | None, restore_guard: bool) -> None:
        ParallelDims(**self.layout).validate_world(dist.get_world_size())
        engine = self.recipe.engine_config()
        engine.parallel = ParallelDims(**self.layout)
        self.trainer = ParallelTrainer(self.model_config, engine)
        if checkpoint is not None:
            load_checkpoint(self.trainer, checkpoint)
        self.guard = SpikeGuard(self.trainer, self.recipe.spike)
        if restore_guard and self.state.guard:
            self.guard.load_state_dict(self.state.guard)
        if self.state.data:
            self.builder.load_state_dict(self.state.data)

    def evaluate(self) -> dict[str, float]:
        """Held-out loss at ``eval_seq_len`` of every source and their ``mean``, on every rank, computed on the
        sharded model (collective)."""
        return held_out_loss(self.trainer, self.builder.eval_batches(self.recipe.eval_seq_len))

    def short_context_loss(self) -> float:
        """Mean held-out loss at ``eval_seq_len`` over all sources, on every rank (collective)."""
        return self.evaluate()["mean"]

    def save(self) -> Path:
        """Checkpoint the engine and the run state (collective); with ``async_checkpoint`` the checkpoint is complete
        after ``self.saver.wait()``, or after the next step that finds it written."""
        self.state.data = self.builder.state_dict()
        self.state.guard = self.guard.state_dict()
        return self.saver.save(self.trainer, extra={"run": self.state.to_dict()})

    def _switch_layout(self, stage: Stage) -> None:
        """Rebuild the engine when ``stage`` trains under another layout (same world size), else ask to relaunch."""
        wanted = self.recipe.layout(stage.layout)
        if wanted == self.layout:
            return
        checkpoint = self.save()
        self.saver.wait()
        world = ParallelDims(**wanted).world_size
        if world != dist.get_world_size():
            raise RelaunchNeeded(
                f"stage {stage.name} runs on {world} processes ({wanted}), this launch has {dist.get_world_size()}: "
                f"checkpointed at {checkpoint}; relaunch the same command with {world} processes to continue."
            )
        self.layout = wanted
        self._build_trainer(checkpoint, restore_guard=True)

    def run(self) -> RunState:
        """Train every remaining stage; returns the final state (the same on every rank). The last checkpoint is
        complete on return, or when a stage stops the run (relaunch, failed gate)."""
        try:
            state = self._run_stages()
        except (RelaunchNeeded, GateFailed):
            # Raised by every rank at the same step, after a save: finalise it. Not after other errors, where a
            # peer may be gone and the finalising barrier would hang: `latest` stays at the last complete one.
            self.saver.close()
            raise
        self.saver.close()
        return state

    def _run_stages(self) -> RunState:
        while self.state.stage < len(self.stages):
            stage = self.stages[self.state.stage]
            self._switch_layout(stage)
            if self.state.stage_step == 0:
                stage.begin(self)
            plan = stage.plan(self)
            for optimizer in self.trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = plan.lr
            # This rank reads only its data-parallel rows of the global batch.
            rows = self.trainer.local_rows(plan.batch_size)
            batch = self.builder.build(plan.batch_size, plan.seq_len, plan.weights, rows=rows)
            maybe_inject_fault("step", self.trainer.step_count)
            self.log.start(plan.seq_len)
            loss = self.trainer.step(batch, local=True)
            skipped = self.guard.after_step(loss, self.trainer.step_count)
            tokens = plan.batch_size * plan.seq_len
            self.state.stage_step += 1
            self.state.stage_tokens += tokens
            self.state.tokens += tokens
            self.log.step(
                self.trainer.step_count,
                stage.name,
                plan,
                loss,
                grad_norm=self.guard.last_norm,
                skipped=skipped,
                tokens=self.state.tokens,
                per_source=self.builder.tokens_per_source,
            )
            self.saver.poll()  # an asynchronous save written by every rank becomes `latest`
            done = stage.end_of_step(self)
            if done:
                logger.info("stage %s done after %d steps", stage.name, self.state.stage_step)
                self.state.next_stage()
            if done or self.trainer.step_count % self.recipe.checkpoint_every == 0:
                self.save()
        self.state.finished = True
        self.log.close()
        return self.state
