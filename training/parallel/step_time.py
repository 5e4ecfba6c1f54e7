"""Projected step time and MFU of a parallel layout: compute, pipeline bubble, TP/CP/FSDP communication.

The paper chose its layouts with "a performance-projection tool" [3.3.2] that it does not publish; this is one
built from first principles, so every term is a formula stated here and pinned by ``tests/distributed/test_planner.py``.

FLOPs per trained token (``N``: parameters without the input embedding, a lookup; ``L`` layers, hidden ``h``,
sequence ``s``): ``6 N`` for the matmuls (forward 2, backward 4 [3.2.1]) plus ``6 L h s`` for causal attention
(``Q K^T`` and ``A V`` cost ``4 s h`` per token and layer in the forward, halved by the causal mask, times 3 for
the backward). These are the MFU numerator. Full activation checkpointing recomputes each decoder layer's forward,
``2 N_layers + 2 L h s`` more per token, which the GPUs run but MFU does not credit.

Per step and GPU (all ranks advance together, so one GPU's time is the step's):
- compute: hardware FLOPs / (world x bf16 peak x matmul efficiency);
- pipeline bubble: interleaved 1F1B idles ``(pp - 1) / (v m)`` of the busy time (``v`` virtual stages, ``m``
  micro-batches per step); 1F1B and GPipe are ``v = 1``;
- TP: sequence parallelism all-gathers and reduce-scatters the ``[rows, s/cp, h]`` bf16 activations twice each per
  layer in the forward, again in the backward and in a checkpointed recompute; a ring moves ``(n-1)/n`` of the
  gathered tensor per GPU. Not overlapped (each layer waits for them);
- CP: the forward all-gathers K and V of the whole sequence (``2 rows s k / tp`` bf16, ``k`` = KV heads x head
  dim) [3.3.2], the backward reduce-scatters their gradients; not overlapped (attention needs them first);
- FSDP: one bf16 all-gather of the rank's parameters per step (kept gathered, ``reshard_after_forward: false``
  [3.3.2]) and one fp32 reduce-scatter of its gradients [3.3.2], over ``dp_shard x cp`` ranks. Prefetched and
  overlapped with compute: exposed are the first unit's all-gather, the last unit's reduce-scatter and any excess
  over the compute time;
- pipeline point-to-point sends are asynchronous [3.3.2] and small; not counted.

A group runs over NVLink when its ranks share a node: ranks are numbered TP innermost, then CP, PP, DP [3.3.2], so
a group of ``n`` ranks ``stride`` apart fits when ``n x stride <= gpus_per_node``; otherwise at the inter-node rate.
The step is ``(compute + TP + CP) (1 + bubble) + exposed FSDP``.
"""

from __future__ import annotations

import dataclasses

from hf_llama3 import Llama3Config
from hf_llama3.memory import parameter_counts

from .dims import ParallelDims
from .gpu_specs import GPUSpec

BF16_BYTES = 2
FP32_BYTES = 4


def model_flops_per_token(config: Llama3Config, seq_len: int) -> int:
    """``6 N + 6 L h s``: matmul and causal-attention FLOPs of training one token (the MFU numerator)."""
    counts = parameter_counts(config)
    matmul_params = counts.total - counts.embedding
    return 6 * matmul_params + 6 * config.num_hidden_layers * config.hidden_size * seq_len


def recompute_flops_per_token(config: Llama3Config, seq_len: int, activation_checkpointing: str) -> int:
    """FLOPs of the forward that full checkpointing runs again: ``2 N_layers + 2 L h s`` (0 without)."""
    if activation_checkpointing != "full":
        return 0
    counts = parameter_counts(config)
    layers = counts.total - counts.embedding - counts.lm_head - counts.final_norm
    return 2 * layers + 2 * config.num_hidden_layers * config.hidden_size * seq_len


def bubble_fraction(dims: ParallelDims, microbatches: int) -> float:
    """Idle share of the pipeline relative to its busy time: ``(pp - 1) / (v m)``."""
    if dims.pp == 1:
        return 0.0
    return (dims.pp - 1) / (dims.pp_virtual_stages * microbatches)


def ring_bytes(gathered_bytes: float, ranks: int) -> float:
    """Bytes each GPU sends in a ring all-gather or reduce-scatter whose gathered tensor is ``gathered_bytes``."""
    return gathered_bytes * (ranks - 1) / ranks


def group_bandwidth(ranks: int, stride: int, gpu: GPUSpec) -> float:
    """NVLink bandwidth if ``ranks`` ranks ``stride`` apart share a node, else the inter-node one."""
    return gpu.intra_node_bandwidth if ranks * stride <= gpu.gpus_per_node else gpu.inter_node_bandwidth


def tp_bytes_per_step(
    config: Llama3Config, dims: ParallelDims, seq_len: int, local_rows: int, layers: int, activation_checkpointing: str
) -> float:
    """Bytes a GPU sends for sequence-parallel collectives in one step: 4 per layer and pass over ``layers``."""
    passes = 3 if activation_checkpointing == "full" else 2
    gathered = local_rows * (seq_len // dims.cp) * config.hidden_size * BF16_BYTES
    return 4 * passes * layers * ring_bytes(gathered, dims.tp)


def cp_bytes_per_step(
    config: Llama3Config, dims: ParallelDims, seq_len: int, local_rows: int, layers: int, activation_checkpointing: str
) -> float:
    """Bytes a GPU sends for context-parallel K/V all-gathers (and their gradients' reduce-scatters) in one step."""
    passes = 3 if activation_checkpointing == "full" else 2
    kv = config.num_key_value_heads * config.head_dim // dims.tp
    gathered = 2 * local_rows * seq_len * kv * BF16_BYTES
    return passes * layers * ring_bytes(gathered, dims.cp)


def fsdp_bytes_per_step(dims: ParallelDims, rank_elements: int) -> float:
    """Bytes a GPU sends per step: bf16 all-gather plus fp32 reduce-scatter of its ``rank_elements`` (TP-local)."""
    shards = dims.dp_shard * dims.cp
    return ring_bytes(rank_elements * (BF16_BYTES + FP32_BYTES), shards)


@dataclasses.dataclass(frozen=True)
class StepTime:
    """One step's projection (seconds) and its MFU."""

    model_flops: float
    hardware_flops: float
    compute: float
    bubble: float
    tp: float
    cp: float
    fsdp: float
    fsdp_exposed: float
    world_size: int
    peak_flops: float

    @property
    def step(self) -> float:
        """Projected seconds per optimizer step."""
        return (self.compute + self.tp + self.cp) * (1 + self.bubble) + self.fsdp_exposed

    @property
    def mfu(self) -> float:
        """Model FLOPs per second over the world's bf16 peak."""
        return self.model_flops / (self.world_size * self.peak_flops * self.step)

    @property
    def tflops_per_gpu(self) -> float:
        """Model TFLOP/s per GPU (Table 4's column)."""
        return self.model_flops / self.world_size / self.step / 1e12


def project_step(
    config: Llama3Config,
    dims: ParallelDims,
    seq_len: int,
    batch_tokens: int,
    gpu: GPUSpec,
    activation_checkpointing: str,
    rank_layers: int,
    rank_elements: int,
    fsdp_units: int,
) -> StepTime:
    """Project one optimizer step of ``batch_tokens`` tokens (see the module docstring).

    Args:
        rank_layers: Decoder layers on the busiest pipeline rank.
        rank_elements: TP-local parameter elements of that rank (what FSDP gathers and reduces).
        fsdp_units: FSDP units on that rank (its layers plus the stage roots).
    """
    world = dims.world_size
    local_rows = batch_tokens // seq_len // dims.dp
    microbatches = dims.num_microbatches(batch_tokens // seq_len)
    model = model_flops_per_token(config, seq_len) * batch_tokens
    hardware = model + recompute_flops_per_token(config, seq_len, activation_checkpointing) * batch_tokens
    compute = hardware / world / (gpu.bf16_flops * gpu.matmul_efficiency)
    tp = cp = fsdp = 0.0
    if dims.tp > 1:
        tp_bw = group_bandwidth(dims.tp, 1, gpu)
        tp = tp_bytes_per_step(config, dims, seq_len, local_rows, rank_layers, activation_checkpointing) / tp_bw
    if dims.cp > 1:
        cp_bw = group_bandwidth(dims.cp, dims.tp, gpu)
        cp = cp_bytes_per_step(config, dims, seq_len, local_rows, rank_layers, activation_checkpointing) / cp_bw
    shards = dims.dp_shard * dims.cp
    if shards > 1:
        # The FSDP group (dp_shard x cp) spans a node only when there is no dp_shard stride to jump.
        fsdp_bw = group_bandwidth(shards, dims.tp * (dims.pp if dims.dp_shard > 1 else 1), gpu)
        fsdp = fsdp_bytes_per_step(dims, rank_elements) / fsdp_bw
    exposed = fsdp / fsdp_units + max(0.0, fsdp - compute)
    return StepTime(
        model_flops=model,
        hardware_flops=hardware,
        compute=compute,
        bubble=bubble_fraction(dims, microbatches),
        tp=tp,
        cp=cp,
        fsdp=fsdp,
        fsdp_exposed=exposed,
        world_size=world,
        peak_flops=gpu.bf16_flops,
    )
