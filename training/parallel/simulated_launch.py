"""A launch at the paper's scale simulated on CPU: bytes per GPU before any GPU is touched.

One process plays one rank of the whole world. The default process group is torch's fake one (backend
``"fake"``: collectives return at once, shapes are right, values are not), so ``ParallelDims.build_mesh`` lays out
the real 4D ``DeviceMesh`` of e.g. 8,192 ranks. The model is built under ``torch.device("meta")`` (no storage) and
cut and sharded by the engine's own ``parallelize_llama`` (pipeline split, TP plans, FSDP2 ``fully_shard``); gradients and AdamW's moments are then
allocated on meta like the sharded parameters, as FSDP2 and ``torch.optim.AdamW`` allocate them. Parameters, gradients
and optimizer state are counted from those rank-local (DTensor local) tensors, so they are what the engine
allocates, not a formula. Torch has no tool that does this (its memory tracker needs a CUDA device and real
allocations), hence this module.

What is counted, per rank:
- params: the sharded parameters, fp32. FSDP2's mixed precision keeps the sharded parameters in fp32 (they are
  the master weights) and computes with bf16 copies; there is no separate master copy.
- grads: the sharded gradients FSDP2 leaves after its reduce-scatter, in the sharded parameter dtype (fp32; the
  reduction itself runs in ``reduce_dtype``, fp32 in the recipes [3.3.2]).
- optimizer: AdamW's two moments per local parameter element (fp32, ``zeros_like`` of the sharded parameter).
- gathered: the unsharded compute-dtype (bf16) parameters FSDP2 holds between forward and backward. The recipes
  keep them gathered after the forward (``reshard_after_forward: false`` [3.3.2]), so every FSDP unit of the rank
  stays gathered (over ``dp_shard x cp``; still TP-sharded); with resharding, the root plus two layers (the one
  running and the one prefetched).
- activations: see :func:`activation_bytes`; one micro-batch, then the pipeline schedule's micro-batches in
  flight on this rank, plus the attention mask of the whole local batch.

Activation formula (bytes; after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", section 4, which counts the tensors each op keeps for backward under TP with sequence parallelism; redone
here for the Llama 3 block: RMSNorm, GQA, SwiGLU, no dropout, a flash-style SDPA that keeps no ``s x s`` scores).
With ``b`` micro-batch rows, ``s`` the sequence, ``c = cp``, ``t = tp``, ``T = b s / c`` local tokens, ``p`` the
compute-dtype bytes (2 for bf16), hidden ``h``, FFN ``f``, ``a`` heads, ``k`` = KV heads x head dim, ``V`` vocab:

- one decoder layer, no checkpointing:
  ``T (2 p h + (8 h + 4 p h + 4 a + 8 + 4 p f) / t) + 2 p b s k / t``.
  Each RMSNorm keeps its fp32 input (``4 T h / t``), its normalised bf16 output before the weight (``p T h / t``)
  and the fp32 ``rsqrt`` (``4 T / t``); the all-gathered (sequence-parallel) inputs of q/k/v and of gate/up are kept
  whole (``2 x p T h``: DTensor saves the gathered tensor, unlike Megatron's re-gather in backward); the rotated
  queries and the attention output (``2 p T h / t``); the log-sum-exp (``4 T a / t``); the SwiGLU gate, up, silu
  and product (``4 p T f / t``); and the rotated keys and values after the context-parallel all-gather, which are
  full-sequence (``2 p b s k / t``) [3.3.2].
- with full activation checkpointing each layer keeps only its input, ``p T h / t``, and backward rebuilds one layer
  at a time (one more full layer, counted once).
- first stage: the token ids (``8 T``). Last stage: the final norm as above, the gathered input of the output
  layer (``p T h``), the fp32 log-softmax of the engine's cross-entropy (``4 T V / t``) and the labels (``8 T``).
  RoPE ``cos``/``sin`` (``2 p T d``) once per stage.
- the attention mask of the step's ``R`` local rows: the engine's flex-attention ``BlockMask`` (``mask="block"``,
  ``context_parallel.build_attention_mask``: int32 tables of full and partial 128 x 128 tiles, for the forward
  and the backward, ``16 R (s / 128c) (s / 128)``); or, with ``mask="dense"``, the additive ``[R, 1, s / c, s]``
  mask in the compute dtype the engine built before (``p R s^2 / c``), the CPU-training fallback.

``tests/distributed/test_simulated_launch.py`` checks this formula against the bytes autograd actually keeps
(``saved_tensors_hooks``, as ``benchmarks/parallel_memory.py`` measures) on a small CPU model for TP/CP layouts,
with and without checkpointing and document masks: within 1%.

Pipeline schedules keep several micro-batches alive on a rank: GPipe all of them; 1F1B ``min(N, pp - rank)``;
interleaved 1F1B torch's warm-up count plus one forward (``_get_warmup_ops``). Transient buffers (FSDP's unsharded
gradients of one layer, the logits' gradient, communication buffers, allocator fragmentation) are not counted:
under interleaving each forward in flight is counted at the rank's largest stage (the one with the output
layer, on the last pipeline rank). The figure is an estimate of the peak, not an allocator trace.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.pipelining.schedules import _get_warmup_ops
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._redistribute import clear_redistribute_planner_cache
from torch.distributed.tensor.debug import _clear_sharding_prop_cache
from torch.testing._internal.distributed.fake_pg import FakeStore

from hf_llama3 import Llama3Config, Llama3ForCausalLM

from .dims import ParallelDims, submesh
from .fsdp import DTYPES, FSDPConfig
from .parallelize import parallelize_llama, uses_fsdp
from .pipeline_parallel import stage_ids_for_rank, stage_layer_counts

GB = 10**9
# The H100 80GB HBM3 the paper trains on [3.3.1].
H100_HBM_BYTES = 80 * GB
MASK_KINDS = ("dense", "block")
# flex attention's BlockMask tiles (torch's default block size).
FLEX_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class StageShape:
    """One pipeline stage as built on this rank: its decoder layers and whether it holds the embedding / head."""

    num_layers: int
    is_first: bool
    is_last: bool


@dataclasses.dataclass(frozen=True)
class RankState:
    """What one simulated rank allocates before its first step (bytes), and the shape of its stages."""

    rank: int
    pp_rank: int
    params: int
    grads: int
    optimizer: int
    gathered: int
    stages: tuple[StageShape, ...]
    compute_dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class ActivationBytes:
    """Activation bytes of one micro-batch through one stage (see the module docstring for each term)."""

    layers: int  # kept for backward by the decoder layers (their inputs only, under checkpointing)
    recompute: int  # one decoder layer rebuilt during backward (checkpointing only)
    embedding: int
    head: int
    rope: int

    @property
    def kept(self) -> int:
        """Bytes kept from the forward until the backward of this micro-batch."""
        return self.layers + self.embedding + self.head + self.rope


@dataclasses.dataclass(frozen=True)
class RankMemory:
    """Bytes per GPU of one rank at one sequence length and batch."""

    layout: str
    rank: int
    pp_rank: int
    params: int
    grads: int
    optimizer: int
    gathered: int
    microbatch_activations: int
    in_flight: int
    mask: int
    activations: int

    @property
    def total(self) -> int:
        """Everything counted for this rank."""
        return self.params + self.grads + self.optimizer + self.gathered + self.activations


def layer_activation_bytes(config: Llama3Config, dims: ParallelDims, seq_len: int, rows: int, dtype_bytes: int) -> int:
    """Bytes one decoder layer keeps for backward (no checkpointing) for ``rows`` rows of ``seq_len`` tokens."""
    h, f, t = config.hidden_size, config.intermediate_size, dims.tp
    a = config.num_attention_heads
    kv = config.num_key_value_heads * config.head_dim
    p = dtype_bytes
    tokens = rows * seq_len // dims.cp
    sharded = 8 * h + 4 * p * h + 4 * a + 8 + 4 * p * f
    return tokens * 2 * p * h + tokens * sharded // t + 2 * p * rows * seq_len * kv // t


def activation_bytes(
    config: Llama3Config,
    dims: ParallelDims,
    stage: StageShape,
    seq_len: int,
    rows: int,
    dtype_bytes: int,
    checkpointing: bool,
) -> ActivationBytes:
    """Activation bytes of one micro-batch of ``rows`` x ``seq_len`` through ``stage`` (module docstring formula)."""
    h, t, p = config.hidden_size, dims.tp, dtype_bytes
    tokens = rows * seq_len // dims.cp
    full_layer = layer_activation_bytes(config, dims, seq_len, rows, dtype_bytes)
    per_layer = p * tokens * h // t if checkpointing else full_layer
    norm = tokens * (4 * h + p * h + 4) // t
    head = norm + p * tokens * h + 4 * tokens * config.vocab_size // t + 8 * tokens if stage.is_last else 0
    return ActivationBytes(
        layers=stage.num_layers * per_layer,
        recompute=full_layer if checkpointing else 0,
        embedding=8 * tokens if stage.is_first else 0,
        head=head,
        rope=2 * p * tokens * config.head_dim,
    )


def mask_bytes(dims: ParallelDims, seq_len: int, local_rows: int, dtype_bytes: int, kind: str) -> int:
    """The attention mask of one step's local rows: a flex-attention block mask (int32 counts and indices of full
    and partial 128 x 128 tiles, kv-major for the forward and q-major for the backward), or the dense
    ``[rows, 1, s/cp, s]`` additive mask."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask must be one of {MASK_KINDS}, got {kind!r}.")
    local = seq_len // dims.cp
    if kind == "dense":
        return dtype_bytes * local_rows * local * seq_len
    q_blocks, kv_blocks = math.ceil(local / FLEX_BLOCK), math.ceil(seq_len / FLEX_BLOCK)
    return local_rows * 4 * 4 * (q_blocks + 1) * (kv_blocks + 1)


def forwards_in_flight(dims: ParallelDims, pp_rank: int, n: int) -> int:
    """Stage forwards whose activations a pipeline rank holds at once when the schedule runs ``n`` micro-batches."""
    if dims.pp == 1:
        return 1
    if dims.pp_schedule == "gpipe":
        return n
    if dims.pp_schedule == "1f1b":
        return min(n, dims.pp - pp_rank)
    # torch's interleaved 1F1B: warm-up forwards, then each steady step runs one forward before its backward.
    warmup = _get_warmup_ops(pp_rank, dims.pp_virtual_stages, dims.pp, dims.pp, n, multiply_factor=2)
    return min(warmup + 1, n * dims.pp_virtual_stages)


@contextmanager
def fake_world(rank: int, world_size: int) -> Iterator[None]:
    """Make this process rank ``rank`` of a fake ``world_size`` process group for the duration."""
    if dist.is_initialized():
        raise RuntimeError("A process group is already initialised: simulate a launch in a process without one.")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
        # DTensor caches sharding propagations and redistribution planners keyed by device mesh, holding the mesh:
        # the fake world's meshes would outlive it and be found again for an equal mesh of a later real world (a
        # forked child included), whose collectives then name the fake groups ("Could not resolve the process
        # group registered under the name ...").
        _clear_sharding_prop_cache()
        clear_redistribute_planner_cache()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _nbytes(tensors) -> int:
    return sum(_local(x).numel() * _local(x).element_size() for x in tensors)


def simulate_rank(
    model_config: Llama3Config,
    dims: ParallelDims,
    rank: int,
    fsdp: FSDPConfig | None = None,
    activation_checkpointing: bool = True,
) -> RankState:
    """Build rank ``rank``'s model, gradients and AdamW state on meta tensors in a fake world; count their bytes."""
    fsdp = fsdp or FSDPConfig()
    with fake_world(rank, dims.world_size):
        mesh = dims.build_mesh("cpu")
        with torch.device("meta"):
            model = Llama3ForCausalLM(model_config)
        stages = parallelize_llama(model, dims, mesh, fsdp=fsdp, activation_checkpointing=activation_checkpointing)
        sharded = uses_fsdp(dims, fsdp)
        compute_dtype = DTYPES[fsdp.param_dtype] if sharded else torch.float32
        params = grads = optimizer = gathered = 0
        for _, stage in stages:
            parameters = list(stage.parameters())
            # FSDP2 leaves sharded gradients in the sharded parameter's dtype; AdamW's first step allocates
            # exp_avg and exp_avg_sq as zeros_like(parameter) (torch.optim.adamw._init_group). Allocated here the
            # same way rather than by a meta AdamW step, which costs seconds of DTensor dispatch per rank.
            grad_tensors = [torch.zeros_like(p) for p in parameters]
            moments = [torch.zeros_like(p) for p in parameters for _ in ("exp_avg", "exp_avg_sq")]
            params += _nbytes(parameters)
            grads += _nbytes(grad_tensors)
            optimizer += _nbytes(moments)
            if sharded:
                gathered += _gathered_bytes(stage, dims, fsdp, compute_dtype)
        shapes = tuple(StageShape(len(stage.layer_ids), stage.is_first, stage.is_last) for _, stage in stages)
        pp_rank = submesh(mesh, "pp").get_local_rank()
    return RankState(rank, pp_rank, params, grads, optimizer, gathered, shapes, compute_dtype)


def _gathered_bytes(stage: torch.nn.Module, dims: ParallelDims, fsdp: FSDPConfig, dtype: torch.dtype) -> int:
    """Compute-dtype bytes of the FSDP units held unsharded (over dp_shard x cp) between forward and backward."""
    shards = dims.dp_shard * dims.cp
    element = torch.empty((), dtype=dtype).element_size()

    def unsharded(module: torch.nn.Module, recurse: bool = True) -> int:
        return sum(_local(p).numel() for p in module.parameters(recurse=recurse)) * shards * element

    layers = [unsharded(layer) for layer in stage.model.layers.values()]
    root = unsharded(stage) - sum(layers)
    if not fsdp.reshard_after_forward:
        return root + sum(layers)
    return root + sum(sorted(layers)[-2:])


def _layout_name(dims: ParallelDims) -> str:
    parts = [f"TP{dims.tp}", f"CP{dims.cp}", f"PP{dims.pp}"]
    dp = f"DP{dims.dp_shard}" if dims.dp_replicate == 1 else f"DP{dims.dp_replicate}x{dims.dp_shard}"
    return " ".join([*parts, dp]) + f" ({dims.world_size:,} GPUs)"


def forward_rows(dims: ParallelDims, local_rows: int) -> int:
    """Rows per forward the engine runs for ``local_rows`` per data-parallel rank: ``micro_batch_size`` when the
    layout sets it, else the local batch split into ``pp_microbatches``."""
    if dims.micro_batch_size is not None:
        return dims.micro_batch_size
    return max(1, local_rows // dims.num_microbatches(local_rows * dims.dp))


def simulate_launch(
    model_config: Llama3Config,
    dims: ParallelDims,
    seq_len: int,
    local_rows: int,
    microbatch_rows: int = 1,
    fsdp: FSDPConfig | None = None,
    activation_checkpointing: bool = True,
    mask: str = "block",
    states: list[RankState] | None = None,
) -> list[RankMemory]:
    """Bytes per GPU of every pipeline rank (TP, CP and DP ranks of one pipeline rank hold the same bytes).

    Args:
        local_rows: Sequences per data-parallel rank per optimizer step (the attention mask covers them all).
        microbatch_rows: Rows of one micro-batch (one forward); the step accumulates ``local_rows / microbatch_rows``
            of them, which also feed the pipeline schedule (the engine's ``ParallelDims.micro_batch_size``; see
            :func:`forward_rows` for a layout that sets ``pp_microbatches`` instead).
        states: ``simulate_rank`` results to reuse for another sequence length (the model does not change).
    """
    dims.validate_model(model_config)
    if seq_len % (2 * dims.cp) or (seq_len // dims.cp) % dims.tp:
        raise ValueError(f"seq_len {seq_len} does not split over cp={dims.cp} x tp={dims.tp} (see validate_batch).")
    if microbatch_rows < 1 or local_rows % microbatch_rows:
        raise ValueError(
            f"microbatch_rows={microbatch_rows} must divide the {local_rows} rows of a data-parallel rank."
        )
    if states is None:
        states = simulate_ranks(model_config, dims, fsdp, activation_checkpointing)
    reports = []
    for state in states:
        p = torch.empty((), dtype=state.compute_dtype).element_size()
        per_stage = [
            activation_bytes(model_config, dims, s, seq_len, microbatch_rows, p, activation_checkpointing)
            for s in state.stages
        ]
        in_flight = forwards_in_flight(dims, state.pp_rank, max(local_rows // microbatch_rows, dims.pp))
        step_mask = mask_bytes(dims, seq_len, local_rows, p, mask)
        # Interleaved: the forwards in flight run the rank's stages in turn; the largest bounds each of them.
        kept = max(a.kept for a in per_stage) if len(per_stage) > 1 else per_stage[0].kept
        activations = in_flight * kept + max(a.recompute for a in per_stage) + step_mask
        reports.append(
            RankMemory(
                layout=_layout_name(dims),
                rank=state.rank,
                pp_rank=state.pp_rank,
                params=state.params,
                grads=state.grads,
                optimizer=state.optimizer,
                gathered=state.gathered,
                microbatch_activations=sum(a.kept for a in per_stage) + max(a.recompute for a in per_stage),
                in_flight=in_flight,
                mask=step_mask,
                activations=activations,
            )
        )
    return reports


def simulate_ranks(
    model_config: Llama3Config,
    dims: ParallelDims,
    fsdp: FSDPConfig | None = None,
    activation_checkpointing: bool = True,
) -> list[RankState]:
    """A ``RankState`` per pipeline rank (its first rank in mesh order dp, pp, cp, tp: ``pp_rank * cp * tp``).

    Pipeline ranks whose stages have the same layer counts and ends build the same tensors, so one of each kind
    is simulated (3 builds instead of 16 for the 405B layouts)."""
    counts = stage_layer_counts(model_config.num_hidden_layers, dims.num_stages, dims.pp_balance)
    built: dict[tuple[StageShape, ...], RankState] = {}
    states = []
    for pp_rank in range(dims.pp):
        shape = tuple(
            StageShape(counts[i], i == 0, i == dims.num_stages - 1) for i in stage_ids_for_rank(pp_rank, dims)
        )
        rank = pp_rank * dims.cp * dims.tp
        if shape not in built:
            built[shape] = simulate_rank(model_config, dims, rank, fsdp, activation_checkpointing)
        states.append(dataclasses.replace(built[shape], rank=rank, pp_rank=pp_rank))
    return states


TABLE_HEADER = (
    f"{'stage':<18} {'layout':<34} {'seq':>7} {'mb':>3} {'rank':>5} {'params':>7} {'grads':>7} {'optim':>7} "
    f"{'gathered':>8} {'act/mb':>7} {'x':>3} {'mask':>7} {'act':>7} {'total':>7}"
)


def table_row(stage: str, seq_len: int, microbatch_rows: int, report: RankMemory) -> str:
    """One line of the dry-run table, in GB (10^9 bytes)."""

    def gb(value: int) -> str:
        return f"{value / GB:7.2f}"

    r = report
    return (
        f"{stage:<18} {r.layout:<34} {seq_len:>7} {microbatch_rows:>3} {r.rank:>5} {gb(r.params)} {gb(r.grads)} "
        f"{gb(r.optimizer)} {gb(r.gathered):>8} {gb(r.microbatch_activations)} {r.in_flight:>3} {gb(r.mask)} "
        f"{gb(r.activations)} {gb(r.total)}"
    )


def worst(reports: list[RankMemory]) -> RankMemory:
    """The rank with the largest total (the one that decides whether the layout fits)."""
    return max(reports, key=lambda r: r.total)


def shortfall(report: RankMemory, hbm_bytes: int, where: str) -> str | None:
    """A one-line refusal naming the rank, its total and the missing bytes, or ``None`` when it fits."""
    if report.total <= hbm_bytes:
        return None
    largest = max(
        ("parameters", report.params),
        ("gradients", report.grads),
        ("optimizer state", report.optimizer),
        ("gathered bf16 parameters", report.gathered),
        ("activations", report.activations - report.mask),
        ("attention mask", report.mask),
        key=lambda item: item[1],
    )
    return (
        f"{where}: {report.layout} needs {report.total / GB:.1f} GB on rank {report.rank} (pp rank {report.pp_rank}), "
        f"{(report.total - hbm_bytes) / GB:.1f} GB more than the {hbm_bytes / GB:.0f} GB of HBM (largest part: "
        f"{largest[0]}, {largest[1] / GB:.1f} GB): raise tp/pp/dp_shard or lower the micro-batch."
    )
