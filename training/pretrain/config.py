"""The pre-training recipe as dataclasses, one per stage [3.4], validated on construction.

A YAML recipe (``recipes/<size>/pretrain.yaml``) maps one to one onto :class:`PretrainRecipe`; nested sections
become the stage dataclasses below and unknown keys are rejected with the list of valid ones. Token counts are
global (all data-parallel ranks together); a "step" is one optimizer update on one global batch.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from hf_llama3 import Llama3Config
from hf_llama3.recipe_loader import bounds, build
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, FSDPConfig, OptimizerConfig

REPORT_TO = ("jsonl", "tensorboard")
GATE_FAIL_ACTIONS = ("continue", "stop")


def _section(cls: type, value: Any, name: str) -> Any:
    """A nested recipe section: the dataclass itself, or a dict of its fields (the shared recipe loader checks it).

    The loader already builds sections from YAML; this covers code that constructs a recipe from plain dicts.
    """
    return build(cls, value, source="", where=name)


def _check_weights(weights: dict[str, float], name: str) -> dict[str, float]:
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{name} must map source names to non-negative weights, not all zero; got {weights}.")
    return {str(k): float(v) for k, v in weights.items()}


@dataclasses.dataclass
class RampPoint:
    """From ``after_tokens`` tokens seen on, each step trains ``batch_tokens`` tokens as sequences of ``seq_len``.

    The paper: 4M tokens of 4096-token sequences, 8M of 8192 after 252M tokens, 16M after 2.87T [3.4.1].
    """

    after_tokens: int = dataclasses.field(metadata=bounds("tokens seen before this point applies", min=0))
    batch_tokens: int = dataclasses.field(metadata=bounds("tokens per global batch (a multiple of seq_len)", min=1))
    seq_len: int = dataclasses.field(metadata=bounds("sequence length", min=2))

    def __post_init__(self) -> None:
        if self.after_tokens < 0 or self.seq_len < 2 or self.batch_tokens < self.seq_len:
            raise ValueError(f"ramp point {self}: need after_tokens >= 0, seq_len >= 2, batch_tokens >= seq_len.")
        if self.batch_tokens % self.seq_len:
            raise ValueError(
                f"ramp point {self}: batch_tokens must be a multiple of seq_len (whole sequences per step)."
            )

    @property
    def batch_size(self) -> int:
        """Sequences per global batch."""
        return self.batch_tokens // self.seq_len


@dataclasses.dataclass
class MixPoint:
    """From ``after_tokens`` tokens seen on, sequences are drawn from the sources in proportion to ``weights``
    ("we adjust the mix of pre-training data during training" [3.4.1])."""

    after_tokens: int = dataclasses.field(metadata=bounds("tokens seen before this mix applies", min=0))
    weights: dict[str, float] = dataclasses.field(
        metadata=bounds("source name -> weight (non-negative, not all zero)", min=0)
    )

    def __post_init__(self) -> None:
        if self.after_tokens < 0:
            raise ValueError(f"mix point after_tokens must be >= 0, got {self.after_tokens}.")
        self.weights = _check_weights(self.weights, "mix point weights")


def _points(cls: type, values: list, name: str) -> list:
    points = [_section(cls, v, f"{name}[{i}]") for i, v in enumerate(values)]
    if not points or points[0].after_tokens != 0:
        raise ValueError(f"{name} needs a first entry with after_tokens: 0.")
    if any(b.after_tokens <= a.after_tokens for a, b in itertools.pairwise(points)):
        raise ValueError(f"{name} entries must have strictly increasing after_tokens.")
    return points


@dataclasses.dataclass
class InitialConfig:
    """Stage 1, initial pre-training [3.4.1]: AdamW with warmup and cosine decay (``PretrainRecipe.optimizer``),
    batch-size and sequence-length ramp, data-mix schedule.

    Args:
        tokens: Tokens trained in this stage (the paper's 405B: ~15.6T minus the long-context and annealing tokens).
        ramp: ``RampPoint`` list by tokens seen; the first has ``after_tokens: 0``.
        mix: ``MixPoint`` list by tokens seen; weights name entries of ``PretrainRecipe.sources``.
    """

    tokens: int = dataclasses.field(metadata=bounds("tokens trained in this stage", min=1))
    ramp: list[RampPoint] = dataclasses.field(metadata=bounds("batch-size and sequence-length ramp by tokens seen"))
    mix: list[MixPoint] = dataclasses.field(metadata=bounds("data-mix schedule by tokens seen"))

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"initial.tokens must be >= 1, got {self.tokens}.")
        self.ramp = _points(RampPoint, self.ramp, "initial.ramp")
        self.mix = _points(MixPoint, self.mix, "initial.mix")


@dataclasses.dataclass
class LongContextConfig:
    """Stage 2, long-context pre-training in ``len(seq_lens)`` gated stages [3.4.2].

    Each stage trains at least ``min_tokens`` and at most ``max_tokens``; from ``min_tokens`` on, every
    ``gate_every`` steps (and at ``max_tokens``) the gate checks that the short-context evaluation loss has recovered
    to within ``loss_tolerance`` (relative) of its value before the stage and that needle-in-a-haystack is solved at
    every depth up to the stage's length. The paper does not publish the lengths; "6 stages from 8K to 128K over
    about 800B tokens" is what it says.

    Args:
        seq_lens: Context length of each stage, increasing.
        batch_tokens: Tokens per step, one number or one per stage, each a multiple of its stage's length (the paper
            gives no long-context batch size).
        min_tokens: Tokens before the first gate check of a stage.
        max_tokens: Token budget of a stage; reaching it without passing ends the stage with a report.
        gate_every: Steps between gate checks once ``min_tokens`` are done.
        loss_tolerance: The short-context loss must be at most ``(1 + loss_tolerance)`` times its pre-stage value.
        needle: Run needle-in-a-haystack in the gate (needs ``PretrainRecipe.tokenizer``).
        needle_depths: Needle depths (fractions of the haystack).
        needle_trials: Prompts per (length, depth) cell.
        needle_min_score: Score every cell must reach (1.0: solved).
        on_gate_fail: ``continue`` to the next stage with the failure logged, or ``stop`` the run with the report.
        weights: Data mix of the long-context stages (source -> weight).
        parallel: ``ParallelDims`` fields for this stage (default: the recipe's); the paper trains 128K contexts with
            TP8 CP16 PP16 DP4 on 16,384 GPUs [Table 4]. A layout with another world size makes the run checkpoint and
            exit at the stage boundary, asking for a relaunch with that many processes.
    """

    seq_lens: list[int] = dataclasses.field(metadata=bounds(min=2))
    batch_tokens: int | list[int] = dataclasses.field(metadata=bounds(min=1))
    min_tokens: int = dataclasses.field(metadata=bounds(min=1))
    max_tokens: int = dataclasses.field(metadata=bounds(min=1))
    weights: dict[str, float] = dataclasses.field(metadata=bounds(min=0))
    gate_every: int = dataclasses.field(default=1, metadata=bounds(min=1))
    loss_tolerance: float = dataclasses.field(default=0.02, metadata=bounds(min=0))
    needle: bool = True
    needle_depths: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata=bounds(min=0, max=1)
    )
    needle_trials: int = dataclasses.field(default=1, metadata=bounds(min=1))
    needle_min_score: float = dataclasses.field(default=1.0, metadata=bounds(min=0, max=1))
    on_gate_fail: str = "continue"
    parallel: dict | None = dataclasses.field(default=None, metadata={"schema": ParallelDims})

    def __post_init__(self) -> None:
        self.seq_lens = [int(n) for n in self.seq_lens]
        if any(b <= a for a, b in itertools.pairwise(self.seq_lens)) or min(self.seq_lens, default=0) < 2:
            raise ValueError(f"long_context.seq_lens must be increasing lengths >= 2, got {self.seq_lens}.")
        if isinstance(self.batch_tokens, int):
            self.batch_tokens = [self.batch_tokens] * len(self.seq_lens)
        self.batch_tokens = [int(b) for b in self.batch_tokens]
        if len(self.batch_tokens) != len(self.seq_lens):
            raise ValueError("long_context.batch_tokens needs one number, or one per entry of seq_lens.")
        for length, batch_tokens in zip(self.seq_lens, self.batch_tokens):
            RampPoint(0, batch_tokens, length)  # whole sequences per step
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError("long_context needs 0 < min_tokens <= max_tokens.")
        if self.gate_every < 1 or self.loss_tolerance < 0 or self.needle_trials < 1:
            raise ValueError("long_context needs gate_every >= 1, loss_tolerance >= 0 and needle_trials >= 1.")
        if self.on_gate_fail not in GATE_FAIL_ACTIONS:
            raise ValueError(
                f"long_context.on_gate_fail must be one of {GATE_FAIL_ACTIONS}, got {self.on_gate_fail!r}."
            )
        self.weights = _check_weights(self.weights, "long_context.weights")


@dataclasses.dataclass
class AnnealConfig:
    """Stage 3, annealing [3.4.3]: the LR falls linearly to 0 over ``tokens``, high-quality sources upsampled through
    ``weights``, and the final model is the (Polyak) average of the checkpoints taken during annealing.

    Args:
        tokens: Token budget (paper: the last 40M tokens, at 128K context).
        seq_len: Context length.
        batch_tokens: Tokens per step.
        weights: Data mix (source -> weight).
        average_every: Steps between the checkpoints that are averaged (the last step always is one).
        average_last: Average only the newest this many (0: all).
        parallel: ``ParallelDims`` fields for this stage (default: the recipe's).
    """

    tokens: int = dataclasses.field(metadata=bounds(min=1))
    seq_len: int = dataclasses.field(metadata=bounds(min=2))
    batch_tokens: int = dataclasses.field(metadata=bounds(min=1))
    weights: dict[str, float] = dataclasses.field(metadata=bounds(min=0))
    average_every: int = dataclasses.field(default=1, metadata=bounds(min=1))
    average_last: int = dataclasses.field(default=0, metadata=bounds(min=0))
    parallel: dict | None = dataclasses.field(default=None, metadata={"schema": ParallelDims})

    def __post_init__(self) -> None:
        RampPoint(0, self.batch_tokens, self.seq_len)
        if self.tokens < self.batch_tokens:
            raise ValueError(f"anneal.tokens={self.tokens} must cover at least one step of {self.batch_tokens}.")
        if self.average_every < 1 or self.average_last < 0:
            raise ValueError("anneal needs average_every >= 1 and average_last >= 0.")
        self.weights = _check_weights(self.weights, "anneal.weights")

    @property
    def steps(self) -> int:
        """Optimizer steps of the annealing stage."""
        return self.tokens // self.batch_tokens


@dataclasses.dataclass
class ProbeConfig:
    """Annealing as a data probe [3.1.3]: from ``checkpoint``, anneal twice (default mix; and ``weight`` of the
    candidate ``source`` with the default mix scaled to the rest) and report the evaluation delta.

    Args:
        checkpoint: A DCP checkpoint folder of a pre-training run (``<output_dir>/checkpoints/step_N``).
        source: The candidate dataset, a name in ``PretrainRecipe.sources``.
        weight: Its share of the annealing mix (paper: 30% new data, 70% default mix).
    """

    checkpoint: str
    source: str
    weight: float = dataclasses.field(default=0.30, metadata=bounds(gt=0, lt=1))

    def __post_init__(self) -> None:
        if not 0 < self.weight < 1:
            raise ValueError(f"probe.weight must be in (0, 1), got {self.weight}.")
        if not (Path(self.checkpoint) / ".metadata").is_file():
            raise FileNotFoundError(
                f"probe.checkpoint={self.checkpoint!r} is not a DCP checkpoint folder (.metadata)."
            )


@dataclasses.dataclass
class SpikeGuardConfig:
    """Loss-spike and NaN handling: a step whose global gradient norm is not finite, or above ``spike_factor`` times
    the mean of the last ``window`` accepted steps, is skipped (no update; the batch is dropped) and logged; after
    ``max_consecutive`` skips in a row the run stops with a message. Clipping is the engine's
    (``optimizer.max_grad_norm``).
    """

    window: int = dataclasses.field(
        default=20, metadata=bounds("accepted steps in the running mean of gradient norms", min=1)
    )
    spike_factor: float = dataclasses.field(
        default=6.0, metadata=bounds("skip a step whose gradient norm exceeds this times the mean", gt=1)
    )
    max_consecutive: int = dataclasses.field(
        default=5, metadata=bounds("stop the run after this many skipped steps in a row", min=1)
    )

    def __post_init__(self) -> None:
        if self.window < 1 or self.spike_factor <= 1 or self.max_consecutive < 1:
            raise ValueError("spike needs window >= 1, spike_factor > 1 and max_consecutive >= 1.")


@dataclasses.dataclass
class PretrainRecipe:
    """``hf-llama3 pretrain --config recipes/<size>/pretrain.yaml``: the three-stage recipe [3.4].

    Args:
        model: ``Llama3Config.from_preset`` name; ``model_overrides`` changes fields.
        parallel: ``ParallelDims`` fields (Table 4 layouts in the 405B recipe).
        fsdp: ``FSDPConfig`` fields.
        optimizer: ``OptimizerConfig`` fields: AdamW, warmup and cosine decay by step, used by stages 1 and 2.
        activation_checkpointing: ``false``, ``true``/``full`` (recompute each decoder layer) or ``selective``
            (per-op: matmul and attention outputs kept, the rest recomputed).
        sources: Data source name -> folder of packed shards (``hf-llama3 curate`` output, ``manifest.json``), or
            ``{path: folder, category: name}`` for one mix category of a folder.
        eval_sequences: Sequences held out at the end of each source for the short-context evaluation loss.
        eval_seq_len: Length of the evaluation sequences (the short context).
        tokenizer: ``llama3`` (the real tokenizer), a tokenizer folder, or null (no needle test, no tokenizer export).
        initial, long_context, anneal: The three stages; ``long_context`` and ``anneal`` may be null (no stage 2,
            no stage 3: the run ends after stage 1 and exports its last checkpoint).
        spike: ``SpikeGuardConfig`` fields.
        mode: ``pretrain`` (the three stages) or ``probe`` (annealing as a data probe, needs ``probe``).
        probe: ``ProbeConfig`` fields.
        output_dir: Checkpoints, logs, gate reports, annealing snapshots and the final ``hf/`` export.
        checkpoint_every: Steps between checkpoints (stage ends are always checkpointed).
        keep_last: Checkpoints kept.
        async_checkpoint: Write checkpoints in the background while training goes on (``dcp.async_save``; one
            host copy of the rank's shards of weights and optimizer state, pinned on CUDA); ``latest`` moves only
            once every rank's write has completed. Default false (synchronous saves). Not in the paper.
        report_to: ``jsonl`` (``metrics.jsonl``) and/or ``tensorboard`` (``tensorboard/``).
        peak_flops: Peak FLOP/s per device for MFU (default from the GPU name; none on CPU).
        init_from: A Hugging Face folder (safetensors) to start from instead of a random initialisation:
            continued pre-training of a released checkpoint; ``model``/``model_overrides`` must match its
            ``config.json``. Each rank reads only its shards.
        process_group_timeout_s: Seconds a collective may wait before the process group aborts (default: torch's,
            10 minutes on NCCL); see ``training.parallel.distributed`` for the NCCL flight recorder that names the
            rank and collective of a hang. Not in the paper.
    """

    sources: dict[str, str | dict[str, str]]
    initial: InitialConfig
    anneal: AnnealConfig | None = None
    long_context: LongContextConfig | None = None
    model: str = "tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    parallel: dict = dataclasses.field(default_factory=dict, metadata={"schema": ParallelDims})
    fsdp: dict = dataclasses.field(default_factory=dict, metadata={"schema": FSDPConfig})
    optimizer: dict = dataclasses.field(default_factory=dict, metadata={"schema": OptimizerConfig})
    activation_checkpointing: bool | str = False
    compile: bool = False
    seed: int = dataclasses.field(default=0, metadata=bounds(min=0))
    init_from: str | None = None
    device: str = "cpu"
    eval_sequences: int = dataclasses.field(default=2, metadata=bounds(min=1))
    eval_seq_len: int = dataclasses.field(default=256, metadata=bounds(min=2))
    tokenizer: str | None = "llama3"
    spike: SpikeGuardConfig = dataclasses.field(default_factory=SpikeGuardConfig)
    mode: str = "pretrain"
    probe: ProbeConfig | None = None
    output_dir: str = "pretrain_output"
    checkpoint_every: int = dataclasses.field(default=50, metadata=bounds(min=1))
    keep_last: int = dataclasses.field(default=2, metadata=bounds(min=0))
    async_checkpoint: bool = False
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["jsonl", "tensorboard"])
    peak_flops: float | None = dataclasses.field(default=None, metadata=bounds(gt=0))
    process_group_timeout_s: float | None = dataclasses.field(
        default=None, metadata=bounds("seconds a collective may wait before the run aborts", gt=0)
    )

    def __post_init__(self) -> None:
        for name, source in self.sources.items():
            if not (isinstance(source, str) or (isinstance(source, dict) and set(source) <= {"path", "category"})):
                raise ValueError(
                    f"sources.{name} must be a shard folder or {{path: ..., category: ...}}, got {source!r}."
                )
        self.initial = _section(InitialConfig, self.initial, "initial")
        if self.anneal is not None:
            self.anneal = _section(AnnealConfig, self.anneal, "anneal")
        if self.long_context is not None:
            self.long_context = _section(LongContextConfig, self.long_context, "long_context")
        self.spike = _section(SpikeGuardConfig, self.spike, "spike")
        if self.mode not in ("pretrain", "probe"):
            raise ValueError(f"mode must be 'pretrain' or 'probe', got {self.mode!r}.")
        if self.mode == "probe":
            if self.anneal is None:
                raise ValueError("mode: probe anneals: it needs an anneal section.")
            if self.probe is None:
                raise ValueError("mode: probe needs a probe section (checkpoint, source, weight).")
            self.probe = _section(ProbeConfig, self.probe, "probe")
            if self.probe.source not in self.sources:
                raise ValueError(
                    f"probe.source={self.probe.source!r} is not one of the sources {sorted(self.sources)}."
                )
        unknown_report = sorted(set(self.report_to) - set(REPORT_TO))
        if unknown_report:
            raise ValueError(f"report_to entries {unknown_report} are not supported; choose from {REPORT_TO}.")
        if self.eval_sequences < 1 or self.eval_seq_len < 2 or self.checkpoint_every < 1 or self.keep_last < 0:
            raise ValueError("need eval_sequences >= 1, eval_seq_len >= 2, checkpoint_every >= 1, keep_last >= 0.")
        named = [w for p in self.initial.mix for w in p.weights]
        named += list(self.anneal.weights) if self.anneal else []
        named += list(self.long_context.weights) if self.long_context else []
        missing = sorted(set(named) - set(self.sources))
        if missing:
            raise ValueError(f"the mix names sources {missing} that are not in sources {sorted(self.sources)}.")
        self.engine_config()  # validates parallel / fsdp / optimizer fields
        model_config = self.model_config()
        for length, batch_tokens, layout in self.batch_shapes():
            dims = ParallelDims(**layout)
            dims.validate_batch(batch_tokens // length, length)
            dims.validate_model(model_config)

    def layout(self, stage: str) -> dict:
        """The ``ParallelDims`` fields of ``stage`` (``initial``, ``long_context`` or ``anneal``)."""
        override = getattr(getattr(self, stage), "parallel", None)
        return dict(self.parallel if override is None else override)

    def batch_shapes(self) -> list[tuple[int, int, dict]]:
        """Every (seq_len, batch_tokens, layout) the recipe trains with."""
        shapes = [(p.seq_len, p.batch_tokens, self.layout("initial")) for p in self.initial.ramp]
        if self.long_context is not None:
            lc = self.long_context
            shapes += [(n, b, self.layout("long_context")) for n, b in zip(lc.seq_lens, lc.batch_tokens)]
        if self.anneal is not None:
            shapes.append((self.anneal.seq_len, self.anneal.batch_tokens, self.layout("anneal")))
        return shapes

    def model_config(self) -> Llama3Config:
        """The model: preset plus overrides."""
        return Llama3Config.from_preset(self.model, **self.model_overrides)

    def optimizer_config(self) -> OptimizerConfig:
        """AdamW and the warmup + cosine schedule [3.4.1]."""
        return OptimizerConfig(**self.optimizer)

    def engine_config(self, stage: str = "initial") -> EngineConfig:
        """The parallel engine's config for ``stage``."""
        return EngineConfig(
            parallel=self.layout(stage),
            fsdp=dict(self.fsdp),
            optimizer=dict(self.optimizer),
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            seed=self.seed,
            init_from=self.init_from,
            device=self.device,
        )
