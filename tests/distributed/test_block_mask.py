"""Document masking without dense masks: the flex block mask against the dense-mask reference.

The tile tables are checked tile by tile against the dense mask (eager flex attention ignores them, so only this
and the compiled kernel test them); attention logits of the tiny model through flex attention equal those through
SDPA with the dense mask, without CP in this process and with CP on two real gloo ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from transformers.utils import is_flash_attn_2_available

from hf_llama3 import Llama3ForCausalLM
from tests.distributed.harness import tiny_config
from training.parallel.context_parallel import (
    build_attention_mask,
    dense_attention_mask,
    gathered_indices,
    load_balanced_indices,
    parallel_attention_forward,
    register_parallel_attention,
)
from training.parallel.dims import ParallelDims, submesh
from training.parallel.document_block_mask import dense_from_block_mask, document_block_mask
from training.parallel.spawn import run_local

SEQ = 48


def packed_documents(rows: int, seq: int, seed: int) -> torch.Tensor:
    """Document ids of packed rows: random boundaries, and a last row holding a single document."""
    gen = torch.Generator().manual_seed(seed)
    boundaries = (torch.rand(rows, seq, generator=gen) < 0.1).long()
    boundaries[:, 0] = 0
    boundaries[-1] = 0
    return boundaries.cumsum(dim=1)


def _tiles(mask: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile of a boolean ``[rows, 1, q, kv]`` mask: whether any / every element is visible (padding excluded)."""
    rows, _, q, kv = mask.shape
    qt, kt = -(-q // block), -(-kv // block)
    padded = torch.full((rows, 1, qt * block, kt * block), -1, dtype=torch.int8)
    padded[:, :, :q, :kv] = mask.to(torch.int8)
    tiles = padded.unflatten(2, (qt, block)).unflatten(4, (kt, block)).transpose(3, 4).flatten(-2)
    return (tiles == 1).any(-1), ((tiles == 1) | (tiles == -1)).all(-1) & (tiles == 1).any(-1)


@pytest.mark.parametrize(("seq", "cp", "block"), [(SEQ, 1, 8), (SEQ, 2, 8), (SEQ, 3, 8), (SEQ, 2, 5), (SEQ, 2, 128)])
@pytest.mark.parametrize("with_documents", [True, False])
def test_block_tables_list_exactly_the_visible_tiles(seq: int, cp: int, block: int, with_documents: bool) -> None:
    documents = packed_documents(3, seq, seed=seq + cp) if with_documents else None
    for rank in range(cp):
        q, kv = load_balanced_indices(seq, cp, rank), gathered_indices(seq, cp)
        block_mask = document_block_mask(q, kv, documents, block_size=block)
        reference = dense_attention_mask(seq, cp, rank, documents, batch_size=3)
        torch.testing.assert_close(dense_from_block_mask(block_mask, 3, torch.float32), reference, rtol=0, atol=0)
        any_visible, all_visible = _tiles(reference == 0, block)
        kv_tiles = any_visible.shape[-1]
        partial = _listed_tiles(block_mask.kv_num_blocks, block_mask.kv_indices, kv_tiles)
        full = _listed_tiles(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, kv_tiles)
        listed = (partial | full).expand_as(any_visible)
        assert not (any_visible & ~listed).any()  # every tile with a visible pair is computed
        assert not (partial & full).any()
        # Full tiles skip the rule in the kernel: each must be entirely visible.
        assert not (full.expand_as(all_visible) & ~all_visible).any()
        if (seq // (2 * cp)) % block == 0:
            # Tiles that do not straddle a CP chunk border or the end are listed exactly (no wasted tile).
            assert torch.equal(listed, any_visible)
            if seq % block == 0:
                assert torch.equal(full.expand_as(all_visible), all_visible)


def _listed_tiles(num_blocks: torch.Tensor, indices: torch.Tensor, kv_tiles: int) -> torch.Tensor:
    """The tile map one ``BlockMask`` table pair lists: ``[rows, heads, q_tiles, kv_tiles]`` booleans."""
    listed = torch.arange(indices.shape[-1]) < num_blocks[..., None]
    tiles = torch.zeros(*num_blocks.shape, kv_tiles + 1, dtype=torch.bool)
    return tiles.scatter_(-1, torch.where(listed, indices.long(), kv_tiles), True)[..., :kv_tiles]


def test_no_mask_for_single_document_rows_without_cp() -> None:
    single = torch.zeros(2, SEQ, dtype=torch.long)
    assert build_attention_mask(SEQ, 1, 0, single, 2) is None
    assert build_attention_mask(SEQ, 1, 0, None, 2) is None
    assert build_attention_mask(SEQ, 2, 0, single, 2) is not None  # CP always needs the global-position rule
    assert build_attention_mask(SEQ, 1, 0, packed_documents(2, SEQ, 0), 2).kv_num_blocks.shape[0] == 2
    with pytest.raises(ValueError, match=r"document_ids must be \[batch, seq\]"):
        build_attention_mask(SEQ, 1, 0, single, 3)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs CUDA: compiling flex attention for CPU costs 20-50 s of CI's budget (checked by hand: equal to 7e-7 "
    "at seq 256); the tile tables are checked exactly above",
)
def test_compiled_flex_kernel_with_the_block_tables_equals_dense_attention() -> None:
    # The compiled kernel reads the tile tables (eager flex attention does not), with the default 128-token tiles.
    seq, rows, device = 512, 2, torch.device("cuda")
    documents = (packed_documents(rows, seq, seed=7) // 3).to(device)  # ~30-token documents across tile borders
    block_mask = build_attention_mask(seq, 1, 0, documents, rows, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    query, key, value = (torch.randn(rows, h, seq, 16, generator=gen, device=device) for h in (4, 2, 2))
    with torch.no_grad():
        ours = torch.compile(flex_attention, dynamic=False)(query, key, value, block_mask=block_mask, enable_gqa=True)
    mask = dense_attention_mask(seq, 1, 0, documents, rows, device=device)
    reference = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def _model() -> Llama3ForCausalLM:
    """The tiny model (two layers) with the engine's attention registered."""
    torch.manual_seed(0)
    model = Llama3ForCausalLM(tiny_config(num_hidden_layers=2))
    model.config._attn_implementation = register_parallel_attention()
    return model.eval()


def _flex_and_dense_logits(cp: int, rank: int, cp_group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of this CP rank's tokens of packed rows under the block mask and under the dense reference mask; the
    model's own forward passes either mask (and the CP group) through to the registered attention."""
    model = _model()
    documents = packed_documents(2, SEQ, seed=3)
    index = load_balanced_indices(SEQ, cp, rank)
    tokens = torch.randint(3, 1024, (2, SEQ), generator=torch.Generator().manual_seed(1))[:, index]
    positions = torch.arange(SEQ).expand(2, -1)[:, index]
    masks = (build_attention_mask(SEQ, cp, rank, documents, 2), dense_attention_mask(SEQ, cp, rank, documents, 2))
    with torch.no_grad():
        flex, dense = (
            model(input_ids=tokens, position_ids=positions, attention_mask=mask, cp_group=cp_group).logits
            for mask in masks
        )
    return flex, dense


def test_flex_logits_equal_dense_mask_logits_without_cp() -> None:
    flex, dense = _flex_and_dense_logits(cp=1, rank=0)
    torch.testing.assert_close(flex, dense, rtol=0, atol=1e-5)


def _cp_logits(rank: int, world_size: int, out_dir: str) -> None:
    mesh = ParallelDims(cp=world_size).build_mesh()
    flex, dense = _flex_and_dense_logits(world_size, rank, submesh(mesh, "cp").get_group())
    error = float((flex - dense).abs().max())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"max_abs_diff": error, "shape": list(flex.shape)}))


def test_flex_logits_equal_dense_mask_logits_under_cp(tmp_path: Path) -> None:
    run_local(2, _cp_logits, str(tmp_path))
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["shape"] == [2, SEQ // 2, 1024]
        assert result["max_abs_diff"] <= 1e-5


def test_cpu_training_falls_back_to_one_dense_mask_shared_by_the_layers() -> None:
    # Flex attention has no backward on CPU: training there expands the block mask once and every layer reuses it.
    documents = packed_documents(2, SEQ, seed=5)
    block_mask = build_attention_mask(SEQ, 1, 0, documents, 2)
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, h, SEQ, 4, generator=gen, requires_grad=True) for h in (4, 2, 2))
    ours, _ = parallel_attention_forward(None, query, key, value, block_mask)
    ours.sum().backward()
    reference = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=dense_attention_mask(SEQ, 1, 0, documents, 2), enable_gqa=True
    )
    torch.testing.assert_close(ours, reference.transpose(1, 2), rtol=0, atol=1e-6)
    assert list(block_mask.mask_mod.dense_cache) == [(2, torch.float32)]


@pytest.mark.skipif(
    not (torch.cuda.is_available() and is_flash_attn_2_available()),
    reason="flash-attention's varlen kernel needs CUDA and the flash_attn package (neither is here)",
)
def test_flash_varlen_equals_dense_reference() -> None:
    documents = packed_documents(2, 256, seed=11).cuda()
    block_mask = build_attention_mask(256, 1, 0, documents, 2, device=torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    query, key, value = (
        torch.randn(2, h, 256, 64, generator=gen, device="cuda", dtype=torch.bfloat16) for h in (4, 2, 2)
    )
    ours, _ = parallel_attention_forward(None, query, key, value, block_mask)
    mask = dense_attention_mask(256, 1, 0, documents, 2, device=torch.device("cuda"), dtype=torch.bfloat16)
    reference = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ours, reference.transpose(1, 2), rtol=2e-2, atol=2e-2)
