"""Fixtures of the pre-training recipe tests: a one-process gloo group and tiny packed shards."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture
def single_process_group():
    """A one-process gloo group (what ``hf-llama3 pretrain`` makes without torchrun), destroyed afterwards."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class ByteTokenizer:
    """A 512-id byte tokenizer for tests that need no real vocabulary (EOS 2; ids 3..258 are the bytes)."""

    eos_token_id = 2
    name_or_path = "bytes"

    def encode(self, text: str) -> list[int]:
        return [3 + b for b in text.encode("utf-8")]


def write_test_shards(folder, tokenizer, seq_len: int = 256, documents: int = 240, total_tokens: int | None = None):
    """Packed shards of the pydoc corpus (offline), documents dealt round robin to the paper's four mix categories."""
    from data.mix import PAPER_MIX, MixConfig
    from data.shards import ShardConfig, write_shards
    from evaluation.needle import default_corpus

    texts = default_corpus()[:documents]
    categories = [list(PAPER_MIX)[i % 4] for i in range(len(texts))]
    mix = MixConfig(weights=dict(PAPER_MIX), max_epochs=4, total_tokens=total_tokens)
    shard_config = ShardConfig(seq_len=seq_len, sequences_per_shard=32, datatrove_export=False)
    return write_shards(texts, categories, tokenizer, folder, mix, shard_config)


@pytest.fixture(scope="session")
def byte_shards(tmp_path_factory):
    """Shards of the byte tokenizer (vocab 512)."""
    folder = tmp_path_factory.mktemp("byte_shards")
    write_test_shards(folder, ByteTokenizer())
    return folder
