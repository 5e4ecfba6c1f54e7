"""Attention-mask plus activation bytes per rank at 8K, 32K and 128K tokens: flex block mask vs the old dense mask.

One row packed with documents (random lengths around ``--mean-doc`` tokens), the engine's attention
(``register_parallel_attention``) in a tiny model, so that it runs on a CPU in seconds. Bytes, not time:
- mask, ours: every tensor the ``BlockMask`` of ``build_attention_mask`` holds (tile tables, and the document ids
  and positions its rule reads), built for real on this CPU. The ids and positions are linear in the sequence;
  the four int32 tile tables have one entry per 128 x 128 tile (16 MiB for a 128K row), which is why the total
  grows a little faster than x4 per 4x of sequence once activations are tiny;
- mask, anchor: the dense ``[rows, 1, S_local, S]`` mask the engine built before (``dense_attention_mask``, built
  on the meta device: 64 GiB of fp32 at 128K cannot be allocated here);
- activations: the bytes autograd keeps for backward in one forward + loss (``saved_tensors_hooks``, distinct
  storages, parameters excluded), measured under ``FakeTensorMode`` so that 128K needs no memory. Flex attention
  has no backward on a CPU, so the attention runs as SDPA's fused causal kernel, which keeps what the flex kernel
  keeps (queries, keys, values, output and log-sum-exp; flex keeps the mask's tensors besides, counted above).
  The anchor's dense mask was kept for backward the same way, once for all layers, so both sides add the same
  activation bytes to their mask.

Per CP rank (``--cp``, default 1 and 4) the mask bytes are printed too; activations are for CP 1. The JSON line is
ours vs the anchor at the longest sequence, with ours' growth per 4x of sequence (4.0 = linear).

    python benchmarks/attention_mask_memory.py [--seqs 8192 32768 131072 --cp 1 4]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.cli_types import positive_int
from training.parallel.context_parallel import build_attention_mask, dense_attention_mask, register_parallel_attention
from training.parallel.document_block_mask import SameDocumentCausal


def model_config() -> Llama3Config:
    # Tiny widths (2 layers, hidden 64, 4 query / 2 KV heads of 16) so 128K tokens stay cheap; the masks do not
    # depend on the width, and the activations scale with it linearly.
    return Llama3Config.from_preset(
        "tiny",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def packed_row(seq: int, mean_doc: int) -> torch.Tensor:
    """Document ids ``[1, seq]`` of one row packing documents with random boundaries (mean length ``mean_doc``)."""
    boundaries = (torch.rand(1, seq, generator=torch.Generator().manual_seed(seq)) < 1 / mean_doc).long()
    boundaries[:, 0] = 0
    return boundaries.cumsum(dim=1)


def block_mask_bytes(seq: int, cp: int, cp_rank: int, documents: torch.Tensor) -> int:
    """Bytes of every distinct tensor the block mask of this rank holds or reads."""
    block_mask = build_attention_mask(seq, cp, cp_rank, documents, documents.shape[0])
    rule = block_mask.mask_mod
    if not isinstance(rule, SameDocumentCausal):
        raise TypeError(f"Expected the document rule as the mask_mod, got {type(rule).__name__}.")
    tensors = [t for t in block_mask.as_tuple(flatten=True) if isinstance(t, torch.Tensor)]
    tensors += [rule.q_positions, rule.kv_positions, rule.document_ids]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def dense_mask_bytes(seq: int, cp: int, cp_rank: int, documents: torch.Tensor) -> int:
    """Bytes of the dense mask the engine built before, for the same rank (shape only: built on the meta device)."""
    meta = torch.device("meta")
    mask = dense_attention_mask(seq, cp, cp_rank, documents.to(meta), documents.shape[0], device=meta)
    return mask.numel() * mask.element_size()


def activation_bytes(model: Llama3ForCausalLM, seq: int) -> int:
    """Bytes autograd keeps for backward in one forward + loss over one row of ``seq`` tokens (fake tensors)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.device.type == "meta" or storage.data_ptr() not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    with FakeTensorMode(allow_non_fake_inputs=True):
        tokens = torch.zeros(1, seq, dtype=torch.long)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(input_ids=tokens, position_ids=torch.arange(seq)[None], labels=tokens)
    return sum(saved.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=positive_int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--cp", type=positive_int, nargs="+", default=[1, 4], help="CP degrees for the mask rows")
    parser.add_argument("--mean-doc", type=positive_int, default=2048, help="mean document length in tokens")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Llama3ForCausalLM(model_config())
    model.config._attn_implementation = register_parallel_attention()
    model.train()

    totals: list[tuple[int, int, int]] = []
    for seq in args.seqs:
        documents = packed_row(seq, args.mean_doc)
        activations = activation_bytes(model, seq)
        for cp in args.cp:
            # Every rank holds the same number of queries and keys: rank 0 stands for all.
            ours, anchor = block_mask_bytes(seq, cp, 0, documents), dense_mask_bytes(seq, cp, 0, documents)
            print(
                f"seq {seq:7d} cp {cp}: mask per rank {ours / 2**20:10.3f} MiB (dense {anchor / 2**20:12.1f} MiB)"
                + (f", activations {activations / 2**20:9.1f} MiB" if cp == 1 else ""),
                flush=True,
            )
            if cp == 1:
                totals.append((seq, ours + activations, anchor + activations))
    for seq, ours, anchor in totals:
        print(
            f"seq {seq:7d}: mask + activations {ours / 2**20:10.1f} MiB = {ours / seq:8.1f} B/token "
            f"(dense mask: {anchor / 2**20:12.1f} MiB = {anchor / seq:10.1f} B/token)"
        )
    growth = [round((b[1] / a[1]) / (b[0] / a[0]) * 4, 3) for a, b in itertools.pairwise(totals)]
    seq, ours, anchor = totals[-1]
    print(
        json.dumps(
            {
                "benchmark": "attention_mask_memory",
                "metric": f"attention-mask + activation bytes per rank at {seq} tokens (1 packed row, CP 1), "
                "flex block mask vs dense mask; ours grows x4 per 4x sequence when linear",
                "ours": ours,
                "anchor": anchor,
                "ratio": round(ours / anchor, 6),
                "goal": "<= 1.0",
                "ours_growth_per_4x_sequence": growth,
            }
        )
    )


if __name__ == "__main__":
    main()
