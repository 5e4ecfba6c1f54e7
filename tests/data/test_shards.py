"""Packed shards with the real Llama 3 tokenizer: boundaries, mix proportions, exact resume, datatrove's reader,
and a few training steps of our model on them."""

import random

import numpy as np
import pytest
import torch
import wordfreq

from data.mix import PAPER_MIX, MixConfig, category_of, plan_mix
from data.shards import PackedShardReader, ShardConfig, write_shards

VOCAB = [w for w in wordfreq.top_n_list("en", 5000) if w.isalpha()]


@pytest.fixture(scope="module")
def tokenizer():
    from hf_llama3 import load_tokenizer

    return load_tokenizer()


def corpus(seed=0):
    """Documents of the four paper categories with very different amounts of text."""
    rng = random.Random(seed)
    texts, cats = [], []
    for category, n_docs in (("general", 60), ("math_reasoning", 15), ("code", 30), ("multilingual", 40)):
        for i in range(n_docs):
            words = rng.choices(VOCAB, k=rng.randint(20, 300))
            texts.append(f"{category} document {i}: " + " ".join(words) + ".")
            cats.append(category)
    return texts, cats


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    texts, cats = corpus()
    manifest = write_shards(
        texts,
        cats,
        tokenizer,
        out,
        MixConfig(max_epochs=3.0, seed=7),
        ShardConfig(seq_len=256, sequences_per_shard=16),
    )
    return out, manifest, texts, cats


def test_manifest_and_mix_within_two_percent(shards):
    out, manifest, _, _ = shards
    assert manifest["sequences"] > 32 and len(manifest["shards"]) > 2
    reader = PackedShardReader(out, verify=True)
    counts = dict.fromkeys(PAPER_MIX, 0)
    for sample in reader:
        assert len(sample["input_ids"]) == 256 and sum(sample["doc_lengths"]) == 256
        for category, length in zip(sample["categories"], sample["doc_lengths"]):
            counts[category] += length
    total = sum(counts.values())
    for category, weight in PAPER_MIX.items():
        assert abs(counts[category] / total - weight) <= 0.02, (category, counts[category] / total)


def test_document_boundaries_are_intact(shards, tokenizer):
    out, manifest, texts, _ = shards
    reader = PackedShardReader(out)
    eos = manifest["eos_token_id"]
    by_text = {tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"]): t for t in texts}
    whole = 0
    for sample in reader:
        ids, pos = sample["input_ids"], sample["position_ids"]
        start = 0
        for length in sample["doc_lengths"]:
            piece = ids[start : start + length]
            assert pos[start] == 0 and list(pos[start : start + length]) == list(range(length))
            if piece[-1] == eos and pos[start] == 0 and start > 0:
                decoded = tokenizer.decode(piece[:-1])
                # a piece that starts and ends inside this row is a document (or its cut head, for the last
                # piece of a category) and must be a prefix of a real document
                assert any(t.startswith(decoded) for t in by_text), decoded[:80]
                whole += decoded in by_text
            start += length
        assert (
            sample["document_ids"] == np.repeat(np.arange(len(sample["doc_lengths"])), sample["doc_lengths"])
        ).all()
    assert whole > 50


def test_reader_resumes_at_an_exact_sample(shards):
    out, _, _, _ = shards
    full = [s["input_ids"] for s in PackedShardReader(out)]
    reader = PackedShardReader(out)
    it = iter(reader)
    for _ in range(21):
        next(it)
    state = reader.state_dict()
    assert state == {"sample": 21}
    resumed = PackedShardReader(out)
    resumed.load_state_dict(state)
    rest = [s["input_ids"] for s in resumed]
    assert len(rest) == len(full) - 21
    assert all((a == b).all() for a, b in zip(rest, full[21:]))
    with pytest.raises(ValueError, match="outside"):
        PackedShardReader(out, start_sample=10**6)


def test_datatrove_reads_the_exported_token_files(shards):
    from datatrove.utils.dataset import DatatroveFileDataset

    out, manifest, _, _ = shards
    ds = DatatroveFileDataset(
        str(out / "datatrove" / "000_tokens.ds"), seq_len=255, token_size=4, return_positions=True
    )
    ours = np.concatenate([np.load(out / s["tokens"]).reshape(-1) for s in manifest["shards"]])
    assert len(ds) == len(ours) // 256
    for i in (0, 1, len(ds) - 1):
        sample = ds[i]
        assert (sample["input_ids"].numpy() == ours[i * 256 : (i + 1) * 256]).all()
        mine = PackedShardReader(out)[i]["position_ids"]
        assert (sample["positions"].numpy() == mine).all()  # same document boundaries


def test_shards_feed_a_training_loop(shards):
    from hf_llama3 import Llama3Config, Llama3ForCausalLM

    out, _, _, _ = shards
    torch.manual_seed(0)
    model = Llama3ForCausalLM(Llama3Config.from_preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    reader = PackedShardReader(out)
    batch = [reader[i] for i in range(2)]
    inputs = torch.tensor(np.stack([b["input_ids"] for b in batch]))
    documents = torch.tensor(np.stack([b["document_ids"] for b in batch]))
    positions = torch.tensor(np.stack([b["position_ids"] for b in batch]))
    losses = []
    for _ in range(4):
        loss = model(input_ids=inputs, labels=inputs, document_ids=documents, position_ids=positions).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_mix_planner_paper_and_annealing_mixes():
    available = {"general": 1000, "math_reasoning": 100, "code": 1000, "multilingual": 1000}
    plan = plan_mix(available, MixConfig())
    assert plan == {"general": 200, "math_reasoning": 100, "code": 68, "multilingual": 32}  # math limits: T=400
    anneal = MixConfig(anneal_sources=["*/new/*"], max_epochs=10)
    weights = anneal.target_weights()
    assert weights["anneal"] == pytest.approx(0.3) and weights["general"] == pytest.approx(0.35)
    assert category_of({"source": "/data/new/a.jsonl"}, anneal) == "anneal"
    assert category_of({"domain": "code", "lang": "en"}) == "code"
    assert category_of({"domain": "general", "lang": "de"}) == "multilingual"
    assert category_of({"domain": "math", "lang": "en"}) == "math_reasoning"
    with pytest.raises(ValueError, match="no tokens"):
        plan_mix({"general": 10}, MixConfig())
    with pytest.raises(ValueError, match="max_epochs"):
        plan_mix(available, MixConfig(total_tokens=10_000))
