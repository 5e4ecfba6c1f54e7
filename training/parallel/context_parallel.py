"""Context parallelism the paper's way [3.3.2]: load-balanced sequence chunks and all-gathered keys/values.

The sequence is cut into ``2 * cp`` chunks and CP rank ``i`` holds chunks ``i`` and ``2 * cp - 1 - i``, so every
rank gets the same share of the causal attention work. Each attention layer all-gathers the (small, GQA)
key/value tensors across the CP group and computes attention for its local queries against the whole
sequence, under a causal and document mask built from global token indices. The paper prefers this to ring
attention because it supports any mask (document masks included) and GQA keeps the gathered K/V small.

The attention runs as a function registered in transformers' ``ALL_ATTENTION_FUNCTIONS``
(``config._attn_implementation = ATTENTION_NAME``), so the model code is untouched. torch's own
``context_parallel`` has no CPU rule for SDPA and ``torch.distributed.nn.functional.all_gather`` breaks backward
on gloo sub-groups, hence the small autograd function here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION_NAME = "hf_llama3_parallel"


def load_balanced_indices(seq_len: int, cp: int, cp_rank: int, device: torch.device | None = None) -> torch.Tensor:
    """Global token indices held by ``cp_rank``: chunk ``cp_rank`` then chunk ``2 * cp - 1 - cp_rank``."""
    if seq_len % (2 * cp):
        raise ValueError(f"Sequence length {seq_len} must be divisible by 2 * cp = {2 * cp}.")
    chunk = seq_len // (2 * cp)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    second_start = (2 * cp - 1 - cp_rank) * chunk
    second = torch.arange(second_start, second_start + chunk, device=device)
    return torch.cat([first, second]) if cp > 1 else torch.arange(seq_len, device=device)


def gathered_indices(seq_len: int, cp: int, device: torch.device | None = None) -> torch.Tensor:
    """Global token indices of the K/V sequence after the all-gather (rank-major order)."""
    return torch.cat([load_balanced_indices(seq_len, cp, rank, device) for rank in range(cp)])


class _AllGatherSequence(torch.autograd.Function):
    """All-gather along ``dim`` in rank order; backward sums the gradient over the group and keeps this rank's block."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        ctx.rank, ctx.block = dist.get_rank(group), tensor.shape[dim]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(ctx.dim, ctx.rank * ctx.block, ctx.block), None, None


def all_gather_sequence(tensor: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    """Differentiable all-gather of ``tensor`` along ``dim`` over ``group`` (works on gloo sub-groups)."""
    return _AllGatherSequence.apply(tensor, group, dim)


def build_attention_mask(
    seq_len: int,
    cp: int,
    cp_rank: int,
    document_ids: torch.Tensor | None,
    batch_size: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """Additive ``[batch, 1, local_q, seq_len]`` mask (0 = attend, dtype minimum = masked) for this CP rank's
    queries against the gathered keys: causal on global token indices, and within-document when ``document_ids``
    (global ``[batch, seq_len]``) are given. ``None`` when plain causal attention on a contiguous sequence
    suffices. Built once per step in the compute ``dtype``: SDPA would otherwise convert a boolean mask to a
    new float tensor in every layer and keep each copy for backward."""
    if cp == 1 and document_ids is None:
        return None
    q_index = load_balanced_indices(seq_len, cp, cp_rank, device)
    kv_index = gathered_indices(seq_len, cp, device)
    mask = (kv_index[None, :] <= q_index[:, None])[None, None].expand(batch_size, 1, -1, -1)
    if document_ids is not None:
        same_doc = document_ids[:, q_index, None] == document_ids[:, None, kv_index]
        mask = mask & same_doc[:, None]
    additive = torch.zeros(mask.shape, dtype=dtype, device=device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


def parallel_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cp_group: dist.ProcessGroup | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of local queries ``[b, heads, q, d]`` against K/V gathered over ``cp_group``.

    ``attention_mask`` is the additive mask of ``build_attention_mask`` (``None``: causal on a contiguous
    sequence). K/V keep their few GQA heads through the gather; SDPA broadcasts them to the query heads.
    """
    if cp_group is not None:
        key = all_gather_sequence(key, cp_group, dim=2)
        value = all_gather_sequence(value, cp_group, dim=2)
    if attention_mask is None:
        if query.shape[2] != key.shape[2]:
            raise ValueError("Context-parallel attention needs the mask of build_attention_mask.")
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=True
        )
    else:
        if attention_mask.dtype != query.dtype:
            raise ValueError(
                f"{ATTENTION_NAME} needs the mask in the compute dtype {query.dtype}, got {attention_mask.dtype}: "
                "pass dtype= to build_attention_mask."
            )
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, dropout_p=dropout, enable_gqa=True
        )
    return out.transpose(1, 2).contiguous(), None


def register_parallel_attention() -> str:
    """Register ``parallel_attention_forward`` under ``ATTENTION_NAME`` and return the name."""
    ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, parallel_attention_forward)
    return ATTENTION_NAME
