"""The shard streams: category views take exactly that category's pieces, held-out rows never train, documents
are masked at EOS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.shards import PackedShardReader
from training.pretrain.batches import BatchBuilder, SourceStream


def test_category_stream_is_that_category_in_order(byte_shards):
    reader = PackedShardReader(byte_shards)
    stream = SourceStream("code", {"path": str(byte_shards), "category": "code"}, eval_sequences=2)
    expected = []
    for index in range(len(reader) - 2):
        sample = reader[index]
        start = 0
        for length, category in zip(sample["doc_lengths"], sample["categories"]):
            if category == "code":
                expected.extend(sample["input_ids"][start : start + length].tolist())
            start += length
    assert stream.size == len(expected)
    assert stream.take(len(expected)).tolist() == expected
    assert stream.take(10).tolist() == expected[:10]  # the next epoch starts over


def test_eval_rows_are_held_out(byte_shards):
    stream = SourceStream("all", str(byte_shards), eval_sequences=3)
    reader = PackedShardReader(byte_shards)
    assert stream.size == (len(reader) - 3) * reader.seq_len
    held_out = stream.eval_rows(64)
    assert held_out.shape == (3, 64)
    assert np.array_equal(held_out[-1], reader[len(reader) - 1]["input_ids"][:64])


def test_document_ids_restart_after_eos(byte_shards):
    builder = BatchBuilder({"all": str(byte_shards)}, eval_sequences=2)
    batch = builder.build(4, 256, {"all": 1.0})
    ids, docs = batch["input_ids"], batch["document_ids"]
    eos = ids[:, :-1] == 2
    assert ((docs[:, 1:] - docs[:, :-1]) == eos.long()).all()


def test_errors_name_the_problem(byte_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="hf-llama3 curate"):
        SourceStream("x", str(tmp_path), eval_sequences=1)
    with pytest.raises(ValueError, match="no category 'poetry'"):
        SourceStream("x", {"path": str(byte_shards), "category": "poetry"}, eval_sequences=1)
    with pytest.raises(ValueError, match="not enough to hold out"):
        SourceStream("x", str(byte_shards), eval_sequences=10_000)


def test_each_rank_reads_its_rows_of_the_same_global_batch(byte_shards):
    """Rank r of 4 gets rows r*2..r*2+1 of the global batch, and every stream ends where the global build left it
    (the next batch, and a resume under another layout, see the same data)."""
    sources = {"code": {"path": str(byte_shards), "category": "code"}, "all": str(byte_shards)}
    weights = {"code": 0.5, "all": 0.5}
    whole = BatchBuilder(sources, eval_sequences=2)
    expected = [whole.build(8, 100, weights) for _ in range(40)]  # several epochs of the small code category
    for rank in range(4):
        mine = BatchBuilder(sources, eval_sequences=2)
        rows = slice(2 * rank, 2 * rank + 2)
        for batch in expected:
            got = mine.build(8, 100, weights, rows=rows)
            assert all(torch.equal(got[key], batch[key][rows]) for key in batch)
        assert mine.state_dict() == whole.state_dict()
