"""Causal, same-document attention masks as flex-attention block masks, built on the device from document ids.

A packed training row holds several documents and attention stays within each one [3.2]; under context parallelism
[3.3.2] a rank's queries are its load-balanced chunks and its keys the all-gathered sequence. The mask is described by
what it is made of, not by its ``[rows, 1, S_local, S_full]`` elements: the global positions of the local queries,
of the gathered keys, and the document id of every token (all linear in the sequence length). Flex attention
evaluates that rule per tile; the ``BlockMask`` only lists, per tile of 128 queries, which 128-key tiles are
partly or fully visible: int32 tables of ``(S_local / 128) x (S_full / 128)`` per row (16 MiB per 128K row, against
64 GiB for a dense fp32 mask).

Why not ``create_block_mask``: outside ``torch.compile`` it evaluates the rule on the whole ``S x S`` grid before
reducing it to tiles (16 GiB of booleans for one 128K row). Here each tile's visibility follows from the min/max
position and document id of its queries and keys, which is exact for the rule below because a tile is marked full
only when every pair in it passes and empty only when no pair can.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask

# Flex attention's default tile (its kernels' ``BLOCK_SIZE``).
BLOCK_SIZE = 128


class SameDocumentCausal:
    """Flex ``mask_mod``: local query ``q_idx`` sees gathered key ``kv_idx`` when the key's global position is not
    after the query's and both tokens belong to the same document of row ``b``.

    ``q_positions`` ``[S_local]`` and ``kv_positions`` ``[S_kv]`` are global token indices (the CP layout);
    ``document_ids`` ``[rows, S_full]`` on the global index, or ``None`` for a causal-only mask.
    """

    def __init__(
        self, q_positions: torch.Tensor, kv_positions: torch.Tensor, document_ids: torch.Tensor | None
    ) -> None:
        self.q_positions = q_positions
        self.kv_positions = kv_positions
        self.document_ids = document_ids
        # The dense expansion for SDPA where flex attention cannot run, built once per (rows, dtype) for all layers.
        self.dense_cache: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def __call__(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q, kv = self.q_positions[q_idx], self.kv_positions[kv_idx]
        keep = kv <= q
        if self.document_ids is not None:
            keep = keep & (self.document_ids[b, q] == self.document_ids[b, kv])
        return keep

    @functools.cached_property
    def contiguous(self) -> bool:
        """Whether queries and keys are the whole sequence in order (no context parallelism)."""
        n = self.q_positions.numel()
        return (
            n == self.kv_positions.numel()
            and bool((self.q_positions == self.kv_positions).all())
            and bool((self.q_positions == torch.arange(n, device=self.q_positions.device)).all())
        )

    @functools.cached_property
    def varlen(self) -> tuple[torch.Tensor, int]:
        """``varlen_boundaries`` of the document ids, computed once for all layers."""
        if self.document_ids is None:
            raise ValueError("A causal-only rule has no documents to give varlen boundaries for.")
        return varlen_boundaries(self.document_ids)


def single_document_rows(document_ids: torch.Tensor) -> bool:
    """Whether every row of ``document_ids`` ``[rows, seq]`` holds one document (plain causal attention suffices)."""
    return bool((document_ids == document_ids[:, :1]).all())


def _tile_ranges(values: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``values`` ``[..., n]`` over tiles of ``block_size`` along the last dim (the last tile repeats
    the final value as padding, which leaves its min and max unchanged)."""
    n = values.shape[-1]
    tiles = -(-n // block_size)
    index = torch.arange(tiles * block_size, device=values.device).clamp_(max=n - 1)
    tiled = values[..., index].unflatten(-1, (tiles, block_size))
    return tiled.amin(-1), tiled.amax(-1)


def _ordered(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``BlockMask`` tables from a tile map ``[rows, 1, q_tiles, kv_tiles]``: visible-tile counts and indices."""
    counts = visible.sum(-1, dtype=torch.int32)
    indices = torch.argsort(visible.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, indices


def document_block_mask(
    q_positions: torch.Tensor,
    kv_positions: torch.Tensor,
    document_ids: torch.Tensor | None,
    block_size: int = BLOCK_SIZE,
) -> BlockMask:
    """The causal (and, with ``document_ids``, same-document) ``BlockMask`` of ``SameDocumentCausal``, built on the
    device of its inputs. Its batch size is the number of rows of ``document_ids`` (1, broadcast, without them)."""
    q_lo, q_hi = _tile_ranges(q_positions, block_size)
    kv_lo, kv_hi = _tile_ranges(kv_positions, block_size)
    some = (kv_lo[None, :] <= q_hi[:, None])[None]  # [1, q_tiles, kv_tiles]: some key not after some query
    every = (kv_hi[None, :] <= q_lo[:, None])[None]  # every key of the tile is not after every query
    # A tile that holds padding (sequence not a multiple of the tile) is never full: flex applies the rule there.
    if q_positions.numel() % block_size:
        every[:, -1] = False
    if kv_positions.numel() % block_size:
        every[:, :, -1] = False
    if document_ids is not None:
        qd_lo, qd_hi = _tile_ranges(document_ids[:, q_positions], block_size)  # [rows, q_tiles]
        kd_lo, kd_hi = _tile_ranges(document_ids[:, kv_positions], block_size)
        # Same document possible: the tiles' document-id intervals overlap; certain: both hold one, the same.
        some = some & (kd_lo[:, None, :] <= qd_hi[:, :, None]) & (kd_hi[:, None, :] >= qd_lo[:, :, None])
        one_doc = (
            (qd_lo == qd_hi)[:, :, None] & (kd_lo == kd_hi)[:, None, :] & (qd_lo[:, :, None] == kd_lo[:, None, :])
        )
        every = every & one_doc
    partial = (some & ~every)[:, None]
    full = every[:, None]
    kv_num_blocks, kv_indices = _ordered(partial)
    full_kv_num_blocks, full_kv_indices = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num_blocks,
        kv_indices,
        full_kv_num_blocks,
        full_kv_indices,
        BLOCK_SIZE=block_size,
        mask_mod=SameDocumentCausal(q_positions, kv_positions, document_ids),
        seq_lengths=(q_positions.numel(), kv_positions.numel()),
    )


def dense_from_block_mask(block_mask: BlockMask, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive ``[rows, 1, q, kv]`` mask (0 = attend, dtype minimum = masked) that ``block_mask``'s rule
    describes, for the SDPA fallback where flex attention cannot run (backward on CPU)."""
    q_len, kv_len = block_mask.seq_lengths
    device = block_mask.kv_num_blocks.device
    b = torch.arange(rows, device=device)[:, None, None, None]
    q = torch.arange(q_len, device=device)[None, None, :, None]
    kv = torch.arange(kv_len, device=device)[None, None, None, :]
    keep = block_mask.mask_mod(b, torch.zeros_like(b), q, kv).expand(rows, 1, q_len, kv_len)
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep, torch.finfo(dtype).min)


def varlen_boundaries(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``cu_seqlens`` (int32, starts of every document of the flattened ``[rows * seq]`` batch, then the end) and the
    longest document, as flash-attention's varlen kernel takes them."""
    rows, seq = document_ids.shape
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    flat_starts = torch.nonzero(starts.flatten(), as_tuple=True)[0]
    end = torch.tensor([rows * seq], device=document_ids.device)
    cu_seqlens = torch.cat([flat_starts, end]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())
