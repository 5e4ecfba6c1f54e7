"""Memory accounting for serving a Llama 3 model: weight bytes (bf16 or the paper's FP8 mix) and KV-cache bytes.

The paper serves 405B on one node of 8 x 80 GB H100s [6.2]: in bf16 its weights alone (812 GB) do not fit in
640 GB; with the feed-forward projections of layers 1..124 in FP8 (one byte per weight plus one fp32 scale per
row) they take 487 GB, which leaves room for the KV cache. The KV cache holds one key and one value vector per
layer, KV head and token: ``2 x layers x kv_heads x head_dim x bytes x tokens`` (grouped-query attention with
8 KV heads keeps it small [3.2]).

Everything is computed from the config's shapes alone (no weights needed), so
``memory_plan(Llama3Config.from_preset("llama3-405b"), batch=1, context=131072)`` answers for the 405B model
on a laptop. ``hf-llama3 quantize --memory`` prints it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .fp8 import fp8_layer_ids

GB = 1e9
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a Llama 3 decoder by part (bias-free SwiGLU, RMSNorm, grouped-query attention)."""

    embedding: int
    attention_per_layer: int
    ffn_per_layer: int
    norms_per_layer: int
    final_norm: int
    lm_head: int  # 0 when the output layer is tied to the embedding (Llama 3.2 1B/3B)
    num_layers: int

    @property
    def total(self) -> int:
        per_layer = self.attention_per_layer + self.ffn_per_layer + self.norms_per_layer
        return self.embedding + self.num_layers * per_layer + self.final_norm + self.lm_head


def parameter_counts(config: Any) -> ParameterCounts:
    """Count the parameters of ``config`` (a ``Llama3Config`` or stock ``LlamaConfig``) from its shapes."""
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_dim = config.num_attention_heads * head_dim
    kv_dim = config.num_key_value_heads * head_dim
    return ParameterCounts(
        embedding=vocab * hidden,
        attention_per_layer=hidden * q_dim + 2 * hidden * kv_dim + q_dim * hidden,
        ffn_per_layer=3 * hidden * inter,
        norms_per_layer=2 * hidden,
        final_norm=hidden,
        lm_head=0 if getattr(config, "tie_word_embeddings", False) else vocab * hidden,
        num_layers=config.num_hidden_layers,
    )


def weight_bytes(config: Any, fp8: bool = False, bytes_per_param: int = 2) -> int:
    """Bytes of the weights: every parameter at ``bytes_per_param`` (bf16: 2), or with ``fp8`` the paper's mix.

    In the FP8 mix the gate/up/down projections of every layer but the first and last [6.2] take one byte per
    weight plus one fp32 scale per output row (``gate``/``up``: ``intermediate_size`` rows, ``down``:
    ``hidden_size`` rows); everything else keeps ``bytes_per_param``.
    """
    counts = parameter_counts(config)
    total = counts.total * bytes_per_param
    if fp8:
        layers = len(fp8_layer_ids(config.num_hidden_layers))
        scale_rows = 2 * config.intermediate_size + config.hidden_size
        total += layers * (counts.ffn_per_layer * (1 - bytes_per_param) + scale_rows * 4)
    return total


def kv_cache_bytes(config: Any, batch: int, context: int, bytes_per_value: int = 2) -> int:
    """Bytes of the KV cache for ``batch`` sequences of ``context`` tokens: ``2 x L x kv_heads x head_dim x bytes``
    per token (keys and values of every layer), in bf16 by default."""
    if batch < 0 or context < 0:
        raise ValueError(f"batch and context must be >= 0, got batch={batch}, context={context}.")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * bytes_per_value
    return per_token * batch * context


def memory_plan(
    config: Any, batch: int = 1, context: int = 131072, num_gpus: int = 8, gpu_memory_gb: float = 80.0
) -> dict[str, Any]:
    """Weights (bf16 and FP8) and KV cache for ``batch`` x ``context`` tokens against ``num_gpus`` x
    ``gpu_memory_gb`` (GB = 1e9 bytes), with the headroom left and how many full-context sequences fit.

    Activations, CUDA context and allocator fragmentation are not counted: ``fits`` is a necessary condition.
    """
    if num_gpus < 1 or gpu_memory_gb <= 0:
        raise ValueError(f"num_gpus must be >= 1 and gpu_memory_gb > 0, got {num_gpus} and {gpu_memory_gb}.")
    capacity = int(num_gpus * gpu_memory_gb * GB)
    kv = kv_cache_bytes(config, batch, context)
    kv_per_sequence = kv_cache_bytes(config, 1, context)
    plan: dict[str, Any] = {
        "parameters": parameter_counts(config).total,
        "batch": batch,
        "context": context,
        "kv_cache_bytes_per_token": kv_cache_bytes(config, 1, 1),
        "kv_cache_bytes": kv,
        "capacity_bytes": capacity,
        "num_gpus": num_gpus,
        "gpu_memory_gb": gpu_memory_gb,
    }
    for name, fp8 in (("bf16", False), ("fp8", True)):
        weights = weight_bytes(config, fp8=fp8)
        free = capacity - weights
        plan[name] = {
            "weight_bytes": weights,
            "total_bytes": weights + kv,
            "fits": weights + kv <= capacity,
            "headroom_bytes": capacity - weights - kv,
            "max_sequences_at_context": max(0, free // kv_per_sequence) if kv_per_sequence else None,
        }
    return plan


def format_plan(plan: dict[str, Any]) -> str:
    """A few human-readable lines for :func:`memory_plan`'s result (GB = 1e9 bytes)."""
    lines = [
        f"parameters {plan['parameters'] / 1e9:.2f}B; KV cache {plan['kv_cache_bytes_per_token']:,} bytes/token, "
        f"{plan['kv_cache_bytes'] / GB:.1f} GB for batch {plan['batch']} x {plan['context']:,} tokens; "
        f"capacity {plan['num_gpus']} x {plan['gpu_memory_gb']:g} GB = {plan['capacity_bytes'] / GB:.0f} GB"
    ]
    for name in ("bf16", "fp8"):
        p = plan[name]
        lines.append(
            f"  {name}: weights {p['weight_bytes'] / GB:.1f} GB + KV {plan['kv_cache_bytes'] / GB:.1f} GB = "
            f"{p['total_bytes'] / GB:.1f} GB -> {'fits' if p['fits'] else 'does NOT fit'} "
            f"({p['max_sequences_at_context']} sequences of {plan['context']:,} tokens fit beside the weights)"
        )
    return "\n".join(lines)


__all__ = ["ParameterCounts", "format_plan", "kv_cache_bytes", "memory_plan", "parameter_counts", "weight_bytes"]
