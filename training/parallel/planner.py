"""The paper's memory consumption estimator and performance-projection tool [3.3.2]: which layouts fit, how fast.

For a model, a sequence length, a global batch in tokens and a number of GPUs of one kind, every layout the engine
accepts is enumerated: TP (within a node, dividing the KV heads), CP, PP with interleaved 1F1B and its virtual
stages, FSDP over the rest, rows per micro-batch (the paper's tunable N follows [3.3.2]) and activation
checkpointing (off or full; the engine's per-op ``selective`` mode has no activation formula in
``simulated_launch`` yet, so it is not planned). Each is checked with ``ParallelDims``' own validation.

Memory per GPU is ``simulated_launch.simulate_launch``, the accounting of ``pretrain --dry-run``; only the rank
states it starts from (bytes of sharded parameters, gradients, AdamW moments and gathered bf16 parameters) are
counted here from the parameter shapes instead of by building the rank's model on meta tensors, because that build
costs seconds per layout and a plan weighs thousands. ``analytic_rank_states`` is checked equal to
``simulate_ranks`` in the tests, and the layouts a plan prints are recounted with ``simulate_ranks`` itself.
Step time and MFU come from :mod:`training.parallel.step_time`.
"""

from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path

import torch
import yaml

from hf_llama3 import Llama3Config
from hf_llama3.checkpoint_io import atomic_output_file
from hf_llama3.memory import parameter_counts
from hf_llama3.recipe_loader import build, read_yaml

from .dims import ParallelDims
from .fsdp import DTYPES, FSDPConfig
from .gpu_specs import GB, GPUSpec
from .parallelize import uses_fsdp
from .pipeline_parallel import stage_ids_for_rank, stage_layer_counts
from .simulated_launch import RankMemory, RankState, StageShape, simulate_launch, simulate_ranks, worst
from .step_time import StepTime, project_step

# The paper's FSDP settings: bf16 compute copies, fp32 gradient reduction, parameters kept after forward [3.3.2].
PAPER_FSDP = FSDPConfig(param_dtype="bfloat16", reduce_dtype="float32", reshard_after_forward=False)
CHECKPOINTING = ("none", "full")
VIRTUAL_STAGES = (1, 2, 4, 8)
# Rows per micro-batch tried: the paper runs one 8K or 128K sequence per forward; more only help small models.
MICRO_BATCH_SIZES = (1, 2, 4, 8)
# HBM kept free for what the accounting leaves out: transient buffers (a layer's unsharded gradients, the logits'
# gradient), NCCL's buffers, the CUDA context and allocator fragmentation (see simulated_launch's docstring).
HEADROOM = 0.1
LAYOUT_KEYS = ("tp", "cp", "pp", "dp", "v", "mbs", "ac")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One layout with its memory (worst pipeline rank) and projected step."""

    dims: ParallelDims
    activation_checkpointing: str
    memory: RankMemory
    time: StepTime
    budget_bytes: int

    @property
    def fits(self) -> bool:
        """Whether the worst rank's counted bytes fit the GPU's memory less the headroom."""
        return self.memory.total <= self.budget_bytes

    @property
    def name(self) -> str:
        """``tp=8,cp=1,pp=16,dp=64,v=2,mbs=1,ac=full``: the ``--layout`` spelling."""
        d = self.dims
        return (
            f"tp={d.tp},cp={d.cp},pp={d.pp},dp={d.dp_shard},v={d.pp_virtual_stages},"
            f"mbs={d.micro_batch_size},ac={self.activation_checkpointing}"
        )


def config_snapshot(config: Llama3Config) -> types.SimpleNamespace:
    """The config's values as plain attributes: reading a ``PretrainedConfig`` attribute costs microseconds (its
    ``__getattribute__`` hooks), and weighing thousands of layouts reads them millions of times."""
    return types.SimpleNamespace(**config.to_dict())


def _layer_shapes(config: Llama3Config, tp: int) -> list[tuple[int, int]]:
    """(dim 0, other elements) of each TP-local parameter of one decoder layer (Megatron column/row split)."""
    h, f = config.hidden_size, config.intermediate_size
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    attention = [(q // tp, h), (kv // tp, h), (kv // tp, h), (h, q // tp)]
    mlp = [(f // tp, h), (f // tp, h), (h, f // tp)]
    norms = [(h, 1), (h, 1)]
    return attention + mlp + norms


def _root_shapes(config: Llama3Config, stage: StageShape, tp: int) -> list[tuple[int, int]]:
    """The stage root's own parameters: embedding (vocab rows split by TP) first, final norm and head last."""
    h, v = config.hidden_size, config.vocab_size
    shapes = [(v // tp, h)] if stage.is_first else []
    return shapes + ([(h, 1), (v // tp, h)] if stage.is_last else [])


def analytic_rank_states(config: Llama3Config, dims: ParallelDims, fsdp: FSDPConfig) -> list[RankState]:
    """``simulate_ranks``' result counted from parameter shapes: FSDP2 cuts each TP-local tensor's dim 0 into
    ``dp_shard x cp`` chunks (the counted rank holds the first, largest one); AdamW keeps two moments per element."""
    if config.attention_bias or config.mlp_bias or config.tie_word_embeddings:
        raise ValueError("The planner counts untied, bias-free Llama 3 layers (attention_bias/mlp_bias off).")
    dims.validate_model(config)
    sharded = uses_fsdp(dims, fsdp)
    shards = dims.dp_shard * dims.cp if sharded else 1
    compute_dtype = DTYPES[fsdp.param_dtype] if sharded else torch.float32
    element = torch.empty((), dtype=compute_dtype).element_size()
    counts = stage_layer_counts(config.num_hidden_layers, dims.num_stages, dims.pp_balance)

    def local(shapes: list[tuple[int, int]]) -> int:
        return sum(math.ceil(rows / shards) * rest for rows, rest in shapes)

    layer = local(_layer_shapes(config, dims.tp))
    states = []
    for pp_rank in range(dims.pp):
        ids = stage_ids_for_rank(pp_rank, dims)
        stages = tuple(StageShape(counts[i], i == 0, i == dims.num_stages - 1) for i in ids)
        roots = [local(_root_shapes(config, s, dims.tp)) for s in stages]
        elements = sum(roots) + layer * sum(s.num_layers for s in stages)
        gathered = 0
        if sharded:
            kept = [min(2, s.num_layers) if fsdp.reshard_after_forward else s.num_layers for s in stages]
            gathered = (sum(roots) + layer * sum(kept)) * shards * element
        fp32 = 4 * elements
        states.append(
            RankState(pp_rank * dims.cp * dims.tp, pp_rank, fp32, fp32, 2 * fp32, gathered, stages, compute_dtype)
        )
    return states


def evaluate(
    config: Llama3Config,
    dims: ParallelDims,
    seq_len: int,
    batch_tokens: int,
    gpu: GPUSpec,
    activation_checkpointing: str,
    fsdp: FSDPConfig = PAPER_FSDP,
    exact: bool = False,
    headroom: float = HEADROOM,
    states: list[RankState] | None = None,
) -> Candidate:
    """Memory and projected step of one layout (``exact``: rank states from ``simulate_ranks``' meta build); it
    fits when the worst rank's bytes are at most ``1 - headroom`` of the HBM. ``states``: rank states to reuse
    (they depend on the degrees only, not on micro-batches or checkpointing)."""
    if activation_checkpointing not in CHECKPOINTING:
        raise ValueError(f"activation checkpointing must be one of {CHECKPOINTING}, got {activation_checkpointing!r}.")
    if batch_tokens % seq_len:
        raise ValueError(f"The batch of {batch_tokens} tokens is not a whole number of {seq_len}-token sequences.")
    rows = batch_tokens // seq_len
    dims.validate_model(config)
    dims.validate_batch(rows, seq_len)
    checkpointing = activation_checkpointing == "full"
    if states is None:
        states = (simulate_ranks if exact else analytic_rank_states)(config, dims, fsdp)
    local_rows = rows // dims.dp
    reports = simulate_launch(
        config,
        dims,
        seq_len,
        local_rows,
        dims.micro_batch_size or local_rows // dims.num_microbatches(rows),
        fsdp=fsdp,
        activation_checkpointing=checkpointing,
        states=states,
    )
    busiest = max(states, key=lambda s: sum(stage.num_layers for stage in s.stages))
    rank_layers = sum(stage.num_layers for stage in busiest.stages)
    shards = dims.dp_shard * dims.cp if uses_fsdp(dims, fsdp) else 1
    time = project_step(
        config,
        dims,
        seq_len,
        batch_tokens,
        gpu,
        activation_checkpointing,
        rank_layers=rank_layers,
        rank_elements=busiest.params // 4 * shards,
        fsdp_units=rank_layers + len(busiest.stages),
    )
    budget = int(gpu.hbm_bytes * (1 - headroom))
    return Candidate(dims, activation_checkpointing, worst(reports), time, budget)


def layout_dims(tp: int, cp: int, pp: int, dp: int, v: int = 1, mbs: int = 1) -> ParallelDims:
    """The ``ParallelDims`` of a planned layout: FSDP over ``dp``, interleaved 1F1B when pipelined [3.3.2]."""
    schedule = "interleaved_1f1b" if pp > 1 else "1f1b"
    return ParallelDims(
        dp_shard=dp, cp=cp, tp=tp, pp=pp, pp_schedule=schedule, pp_virtual_stages=v, micro_batch_size=mbs
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_layouts(
    config: Llama3Config, num_gpus: int, seq_len: int, batch_tokens: int, gpu: GPUSpec, headroom: float = HEADROOM
) -> list[Candidate]:
    """Every layout of ``num_gpus`` the engine accepts for this model and batch, fastest projected step first
    (those that do not fit the HBM included, marked by ``fits``)."""
    rows = batch_tokens // seq_len
    config = config_snapshot(config)
    counts = parameter_counts(config)
    heads = math.gcd(config.num_attention_heads, config.num_key_value_heads)
    found = []
    for tp in (t for t in _divisors(gpu.gpus_per_node) if heads % t == 0 and num_gpus % t == 0):
        for cp in (c for c in _divisors(num_gpus // tp) if c & (c - 1) == 0):
            for pp in _divisors(num_gpus // tp // cp):
                dp = num_gpus // tp // cp // pp
                if rows % dp or pp > counts.num_layers:
                    continue
                for v in VIRTUAL_STAGES if pp > 1 else (1,):
                    states = None
                    for mbs in (m for m in MICRO_BATCH_SIZES if (rows // dp) % m == 0):
                        try:
                            dims = layout_dims(tp, cp, pp, dp, v, mbs)
                            states = states or analytic_rank_states(config, dims, PAPER_FSDP)
                            for ac in CHECKPOINTING:
                                candidate = evaluate(
                                    config, dims, seq_len, batch_tokens, gpu, ac, headroom=headroom, states=states
                                )
                                found.append(candidate)
                        except ValueError:
                            continue  # a split the engine refuses (heads, layers, sequence chunks, micro-batches)
    return sorted(found, key=lambda c: c.time.step)


def parse_layout(text: str) -> tuple[ParallelDims, str]:
    """``tp=8,cp=1,pp=16,dp=64[,v=2][,mbs=1][,ac=full]`` -> (dims, checkpointing); one-line errors."""
    values: dict[str, str] = {"v": "1", "mbs": "1", "ac": "full"}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in LAYOUT_KEYS:
            raise ValueError(f"--layout {text!r}: {part!r} is not one of {'/'.join(LAYOUT_KEYS)}=<value>.")
        values[key] = value.strip()
    missing = [k for k in ("tp", "cp", "pp", "dp") if k not in values]
    if missing:
        raise ValueError(f"--layout {text!r} misses {', '.join(missing)}: give e.g. tp=8,cp=1,pp=16,dp=64.")
    try:
        numbers = {k: int(values[k]) for k in LAYOUT_KEYS if k != "ac"}
    except ValueError:
        raise ValueError(f"--layout {text!r}: tp, cp, pp, dp, v and mbs must be integers.") from None
    return layout_dims(**numbers), values["ac"]


def parallel_section(candidate: Candidate) -> dict:
    """The recipe keys of ``candidate``: ``parallel:`` (``ParallelDims``), ``fsdp:`` and ``activation_checkpointing``."""
    d = candidate.dims
    parallel = {
        "tp": d.tp,
        "cp": d.cp,
        "pp": d.pp,
        "dp_shard": d.dp_shard,
        "pp_schedule": d.pp_schedule,
        "pp_virtual_stages": d.pp_virtual_stages,
        "pp_balance": d.pp_balance,
        "micro_batch_size": d.micro_batch_size,
    }
    return {
        "parallel": parallel,
        "fsdp": dataclasses.asdict(PAPER_FSDP),
        "activation_checkpointing": candidate.activation_checkpointing == "full",
    }


def set_flags(candidate: Candidate) -> str:
    """The same keys as ``--set`` flags for ``hf-llama3 pretrain`` / ``training.pretrain.cli`` (YAML flow values)."""
    section = parallel_section(candidate)
    parallel = yaml.safe_dump(section["parallel"], default_flow_style=True, sort_keys=False, width=10**6).strip()
    fsdp = yaml.safe_dump(section["fsdp"], default_flow_style=True, sort_keys=False, width=10**6).strip()
    checkpointing = str(section["activation_checkpointing"]).lower()
    return f"--set parallel='{parallel}' --set fsdp='{fsdp}' --set activation_checkpointing={checkpointing}"


def write_recipe_section(path: str | Path, candidate: Candidate, header: str) -> None:
    """Write ``parallel_section`` as YAML (atomically; ``header`` as a comment line), then load its ``parallel:``
    back through the recipe loader to prove the engine accepts it."""
    text = f"# {header}\n" + yaml.safe_dump(parallel_section(candidate), sort_keys=False)
    with atomic_output_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        build(ParallelDims, read_yaml(tmp)["parallel"], source=str(path), where="parallel")


TABLE_HEADER = (
    f"{'layout':<44} {'fits':>4} {'GB/GPU':>7} {'params':>7} {'gathrd':>7} {'act':>7} {'step s':>7} "
    f"{'compute':>7} {'bubble':>6} {'TP s':>6} {'CP s':>6} {'FSDP s':>6} {'TFLOP/s':>7} {'MFU':>6}"
)


def table_row(candidate: Candidate) -> str:
    """One planner line: GB are 10^9 bytes; seconds per optimizer step; FSDP is its exposed part."""
    m, t = candidate.memory, candidate.time
    state = (m.params + m.grads + m.optimizer) / GB
    return (
        f"{candidate.name:<44} {'yes' if candidate.fits else 'no':>4} {m.total / GB:7.1f} {state:7.1f} "
        f"{m.gathered / GB:7.1f} {m.activations / GB:7.1f} {t.step:7.2f} {t.compute:7.2f} {t.bubble:6.1%} "
        f"{t.tp:6.2f} {t.cp:6.2f} {t.fsdp_exposed:6.2f} {t.tflops_per_gpu:7.0f} {t.mfu:6.1%}"
    )
