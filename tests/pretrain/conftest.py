"""Fixtures of the pre-training recipe tests: a one-process gloo group and tiny packed shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CATEGORIES = ("general", "math_reasoning", "code", "multilingual")


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


def small_recipe(tmp_path: Path, shards: Path, output: Path) -> Path:
    """The tiny recipe at vocab 512 without the tokenizer: 6 + 2 + 2 steps in seconds."""
    recipe = yaml.safe_load((RECIPES / "tiny" / "pretrain.yaml").read_text())
    recipe.update(
        model_overrides={"vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        sources={c: {"path": str(shards), "category": c} for c in CATEGORIES},
        tokenizer=None,
        eval_seq_len=64,
        output_dir=str(output),
        checkpoint_every=2,
        report_to=["jsonl"],
    )
    recipe["initial"].update(
        tokens=2048,
        ramp=[
            {"after_tokens": 0, "batch_tokens": 256, "seq_len": 32},
            {"after_tokens": 1024, "batch_tokens": 512, "seq_len": 64},
        ],
    )
    recipe["long_context"].update(seq_lens=[128, 256], batch_tokens=512, min_tokens=512, max_tokens=1024, needle=False)
    recipe["anneal"].update(tokens=1024, seq_len=256, batch_tokens=512, average_every=1)
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
