"""Stage 2, long-context pre-training [3.4.2]: one stage per context length, each ending when its gate passes.

The gate: the short-context evaluation loss has recovered to within ``loss_tolerance`` of its value before the
stage ("short-context evaluations have recovered completely"), and needle-in-a-haystack is solved at every depth for
every length up to the stage's ("solves needle in a haystack tasks up to that length"), using
``evaluation.needle.needle_gate``. Every check is logged (``gates.jsonl``) and its needle grid plotted
(``gates/<stage>_step<N>.png``). A stage that reaches ``max_tokens`` without passing ends with a report of why; the
run continues or stops as ``on_gate_fail`` says.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from evaluation.needle import needle_gate
from evaluation.plots import plot_needle_heatmap
from training.parallel.sharded_eval import ShardedCausalLM

from .config import LongContextConfig
from .schedules import cosine_lr
from .state import StepPlan

if TYPE_CHECKING:
    from .runner import Runner

logger = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """A long-context stage ran out of tokens without passing its gate and ``on_gate_fail`` is ``stop``."""


class LongContextStage:
    """Long-context stage ``index`` (0-based) at ``config.seq_lens[index]`` tokens."""

    layout = "long_context"

    def __init__(self, config: LongContextConfig, index: int):
        self.config = config
        self.index = index
        self.seq_len = config.seq_lens[index]
        self.name = f"long_context_{index + 1}_{self.seq_len}"

    def begin(self, run: Runner) -> None:
        """Measure the short-context loss the stage must recover to."""
        run.state.baseline_loss = run.short_context_loss()
        logger.info("%s: short-context loss before the stage %.4f", self.name, run.state.baseline_loss)

    def plan(self, run: Runner) -> StepPlan:
        lr = cosine_lr(run.trainer.step_count, run.optimizer)
        batch_size = self.config.batch_tokens[self.index] // self.seq_len
        return StepPlan(batch_size, self.seq_len, self.config.weights, lr)

    def end_of_step(self, run: Runner) -> bool:
        tokens, cfg = run.state.stage_tokens, self.config
        exhausted = tokens >= cfg.max_tokens
        if tokens < cfg.min_tokens or not (exhausted or run.state.stage_step % cfg.gate_every == 0):
            return False
        record = self.gate(run)
        run.state.gates.append(record)
        if record["passed"]:
            logger.info("%s: gate passed at step %d", self.name, record["step"])
            return True
        if not exhausted:
            return False
        message = f"{self.name}: gate not passed after {tokens} tokens (max_tokens={cfg.max_tokens}): " + "; ".join(
            record["reasons"]
        )
        if cfg.on_gate_fail == "stop":
            run.save()
            raise GateFailed(message + ". Raise long_context.max_tokens, or set on_gate_fail: continue.")
        if run.rank0:
            logger.warning("%s; continuing (on_gate_fail: continue)", message)
        return True

    def gate(self, run: Runner) -> dict[str, Any]:
        """Evaluate the gate on the sharded model (collective) and return the record, identical on every rank."""
        loss = run.short_context_loss()
        limit = run.state.baseline_loss * (1 + self.config.loss_tolerance)
        reasons = [] if loss <= limit else [f"short-context loss {loss:.4f} > {limit:.4f} (not recovered)"]
        needle = None
        if self.config.needle:
            # Every rank generates the same prompts through its shards (greedy); the scores agree on every rank.
            result = needle_gate(
                ShardedCausalLM(run.trainer),
                run.tokenizer,
                lengths=self.config.seq_lens[: self.index + 1],
                depths=self.config.needle_depths,
                trials=self.config.needle_trials,
                min_score=self.config.needle_min_score,
            )
            reasons += [f"needle {r}" for r in result.reasons]
            needle = result.scores.to_dict() | {"records": None}
            if run.rank0:
                plot = run.output_dir / "gates" / f"{self.name}_step{run.trainer.step_count:08d}.png"
                plot.parent.mkdir(parents=True, exist_ok=True)
                plot_needle_heatmap(result.scores, plot, title=f"{self.name} gate")
        record = {
            "stage": self.name,
            "step": run.trainer.step_count,
            "stage_tokens": run.state.stage_tokens,
            "short_loss": loss,
            "baseline_loss": run.state.baseline_loss,
            "needle": needle,
            "passed": not reasons,
            "reasons": reasons,
        }
        if run.rank0:
            with open(run.output_dir / "gates.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record
