"""Context parallelism the paper's way [3.3.2]: load-balanced sequence chunks and all-gathered keys/values.

The sequence is cut into ``2 * cp`` chunks and CP rank ``i`` holds chunks ``i`` and ``2 * cp - 1 - i``, so every
rank gets the same share of the causal attention work. Each attention layer all-gathers the (small, GQA)
key/value tensors across the CP group and computes attention for its local queries against the whole
sequence, under a causal and document mask on global token indices. The paper prefers this to ring
attention because it supports any mask (document masks included) and GQA keeps the gathered K/V small.

The mask is a flex-attention ``BlockMask`` built on the device from the rank's document ids
(``document_block_mask``: memory linear in the sequence, apart from tables of one entry per 128 x 128 tile); rows
of one document without CP need no mask at all (SDPA's ``is_causal``). The attention picks the kernel:
flash-attention's varlen kernel for packed rows without CP where the ``flash_attn`` package and a CUDA device are
there, compiled flex attention on accelerators, eager flex attention on CPU without gradients, and SDPA with the
mask expanded to a dense one only where flex attention has no backward (CPU training, i.e. the tests).

The attention runs as a function registered in transformers' ``ALL_ATTENTION_FUNCTIONS``
(``config._attn_implementation = ATTENTION_NAME``), so the model code is untouched. torch's own
``context_parallel`` has no CPU rule for SDPA and ``torch.distributed.nn.functional.all_gather`` breaks backward
on gloo sub-groups, hence the small autograd function here.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import is_flash_attn_2_available

from .document_block_mask import (
    SameDocumentCausal,
    dense_from_block_mask,
    document_block_mask,
    single_document_rows,
)

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
    dtype: torch.dtype | None = None,
) -> BlockMask | None:
    """The flex-attention ``BlockMask`` of this CP rank's queries against the gathered keys: causal on global token
    indices, and within-document when ``document_ids`` (global ``[batch, seq_len]``) are given; built on ``device``
    (the document ids are moved there first). ``None`` when plain causal attention on a contiguous sequence
    suffices (no CP, and no row packs more than one document). ``batch_size`` is checked against the document ids;
    without them the mask has batch 1 and broadcasts. ``dtype`` (the compute dtype the dense mask was once built
    in) is accepted from callers of that signature and unused: a block mask holds no scores, and the CPU-training
    fallback expands it in the queries' dtype."""
    if document_ids is not None:
        if tuple(document_ids.shape) != (batch_size, seq_len):
            raise ValueError(
                f"document_ids must be [batch, seq] = [{batch_size}, {seq_len}], got {tuple(document_ids.shape)}."
            )
        document_ids = document_ids.to(device)
        if cp == 1 and single_document_rows(document_ids):
            document_ids = None
    if cp == 1 and document_ids is None:
        return None
    device = document_ids.device if document_ids is not None else device
    return document_block_mask(
        load_balanced_indices(seq_len, cp, cp_rank, device), gathered_indices(seq_len, cp, device), document_ids
    )


def dense_attention_mask(
    seq_len: int,
    cp: int,
    cp_rank: int,
    document_ids: torch.Tensor | None,
    batch_size: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The dense additive ``[batch, 1, local_q, seq_len]`` mask (0 = attend, dtype minimum = masked) that
    ``build_attention_mask`` describes, element by element. Kept as the reference of the block mask in the tests
    and as the anchor of ``benchmarks/attention_mask_memory.py``; training never builds it (its size is the
    square of the sequence)."""
    q_index = load_balanced_indices(seq_len, cp, cp_rank, device)
    kv_index = gathered_indices(seq_len, cp, device)
    mask = (kv_index[None, :] <= q_index[:, None])[None, None].expand(batch_size, 1, -1, -1)
    if document_ids is not None:
        same_doc = document_ids[:, q_index, None] == document_ids[:, None, kv_index]
        mask = mask & same_doc[:, None]
    additive = torch.zeros(mask.shape, dtype=dtype, device=device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


@functools.cache
def _compiled_flex_attention():
    # Flex attention is only fused (tiled, block-sparse, with a backward) when compiled.
    return torch.compile(flex_attention, dynamic=False)


def _flash_varlen(block_mask: BlockMask, query: torch.Tensor) -> tuple | None:
    """``(flash_attn_varlen_func, cu_seqlens, max_len)`` when the varlen kernel applies: packed rows without CP, a
    CUDA device, half precision and the ``flash_attn`` package installed; ``None`` otherwise."""
    rule = block_mask.mask_mod
    if (
        query.device.type != "cuda"
        or query.dtype not in (torch.float16, torch.bfloat16)
        or not isinstance(rule, SameDocumentCausal)
        or rule.document_ids is None
        or not is_flash_attn_2_available()
        or not rule.contiguous
    ):
        return None
    from flash_attn import flash_attn_varlen_func

    return (flash_attn_varlen_func, *rule.varlen)


def _dense_fallback(block_mask: BlockMask, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """The block mask expanded to a dense additive mask, once per mask and dtype (every layer shares it)."""
    rule = block_mask.mask_mod
    cache = rule.dense_cache if isinstance(rule, SameDocumentCausal) else {}
    if (rows, dtype) not in cache:
        cache[(rows, dtype)] = dense_from_block_mask(block_mask, rows, dtype)
    return cache[(rows, dtype)]


def parallel_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: BlockMask | torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cp_group: dist.ProcessGroup | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of local queries ``[b, heads, q, d]`` against K/V gathered over ``cp_group``.

    ``attention_mask`` is the ``BlockMask`` of ``build_attention_mask`` (``None``: causal on a contiguous
    sequence; a dense additive tensor in the compute dtype is accepted too). K/V keep their few GQA heads through
    the gather; the kernels broadcast them to the query heads.
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
        return out.transpose(1, 2).contiguous(), None
    if isinstance(attention_mask, BlockMask):
        needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
        if dropout:
            raise ValueError(f"{ATTENTION_NAME} with a block mask has no attention dropout (Llama uses none).")
        varlen = _flash_varlen(attention_mask, query)
        if varlen is not None:
            flash_attn_varlen_func, cu_seqlens, max_len = varlen
            rows, heads, seq, dim = query.shape
            flat = [t.transpose(1, 2).reshape(rows * seq, t.shape[1], dim) for t in (query, key, value)]
            out = flash_attn_varlen_func(
                *flat, cu_seqlens, cu_seqlens, max_len, max_len, softmax_scale=scaling, causal=True
            )
            return out.view(rows, seq, heads, dim), None
        if query.device.type != "cpu":
            out = _compiled_flex_attention()(
                query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=True
            )
            return out.transpose(1, 2).contiguous(), None
        if not needs_grad:
            out = flex_attention(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        # Flex attention has no backward on CPU: SDPA with the dense expansion (CPU runs are test-sized).
        attention_mask = _dense_fallback(attention_mask, query.shape[0], query.dtype)
    if attention_mask.dtype != query.dtype:
        raise ValueError(
            f"{ATTENTION_NAME} needs a dense mask in the compute dtype {query.dtype}, got {attention_mask.dtype}."
        )
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, dropout_p=dropout, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def register_parallel_attention() -> str:
    """Register ``parallel_attention_forward`` under ``ATTENTION_NAME`` and return the name."""
    ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, parallel_attention_forward)
    return ATTENTION_NAME
