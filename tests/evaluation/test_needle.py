"""Needle-in-a-haystack [3.4.2]: a model that cannot retrieve scores ~0, a copying oracle scores 1, the
gate reports failing cells, the heatmap renders."""

from __future__ import annotations

import re

import pytest
import torch
from matplotlib.image import imread
from transformers import LlamaConfig, LlamaForCausalLM

from evaluation.needle import NeedleConfig, build_haystack, build_prompt, default_corpus, needle_gate, run_needle
from evaluation.plots import plot_needle_heatmap
from hf_llama3 import Llama3Config, Llama3ForCausalLM


class CopyingOracle:
    """A retrieval oracle with the `generate` interface: it reads the question's key at the end of its prompt
    and copies that needle's value from the text it can see. ``window`` limits it to the last tokens, like
    a model whose usable context is shorter than the prompt."""

    def __init__(self, tokenizer, window: int | None = None) -> None:
        self.tokenizer, self.window = tokenizer, window

    def generate(self, input_ids, attention_mask=None, max_new_tokens=16, **kwargs):
        ids = input_ids[0].tolist()
        text = self.tokenizer.decode(ids[-self.window :] if self.window else ids, skip_special_tokens=True)
        key = re.findall(r"special magic number for (\S+) mentioned", text)[-1]
        match = re.search(rf"special magic number for {re.escape(key)} is (\d+)\.", text)
        answer = f" {match.group(1)}." if match else " I do not know."
        new = self.tokenizer.encode(answer, add_special_tokens=False)[:max_new_tokens]
        return torch.tensor([ids + new])


@pytest.fixture(scope="module")
def corpus():
    return default_corpus()


def test_prompt_is_exact_length_and_holds_the_needles(tokenizer, corpus):
    tok = tokenizer
    haystack = build_haystack(tok, corpus, 1000)
    needles = [("amber-falcon", "1234567"), ("jade-comet", "7654321")]
    for depth in (0.0, 0.5, 1.0):
        prompt = build_prompt(tok, haystack, 300, depth, needles, "jade-comet")
        assert len(prompt) == 300 and prompt[0] == tok.bos_token_id
        text = tok.decode(prompt, skip_special_tokens=True)
        assert "The special magic number for amber-falcon is 1234567." in text
        assert text.endswith("Answer: The special magic number for jade-comet is")
        needle_at = text.index("amber-falcon is") / text.index("Question:")
        assert needle_at == pytest.approx(depth, abs=0.1)
    with pytest.raises(ValueError, match="too short to hold the needles"):
        build_prompt(tok, haystack, 20, 0.5, needles, "jade-comet")


def test_oracle_scores_one_and_passes_the_gate(tokenizer, corpus, tmp_path):
    gate = needle_gate(CopyingOracle(tokenizer), tokenizer, [128, 256, 512], corpus=corpus)
    assert gate.passed and gate.reasons == []
    assert gate.scores.scores.shape == (3, 5) and gate.scores.mean_score == 1.0
    path = plot_needle_heatmap(gate.scores, tmp_path / "needle.png")
    image = imread(path)
    assert image.shape[0] > 100 and image[..., :3].std() > 0.05


def test_short_window_fails_deep_needles_with_reasons(tokenizer, corpus):
    oracle = CopyingOracle(tokenizer, window=200)
    gate = needle_gate(oracle, tokenizer, [128, 512], depths=[0.0, 0.5, 1.0], corpus=corpus)
    assert not gate.passed
    assert gate.scores.scores.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert gate.reasons == [
        "length 512 depth 0.00: retrieved 0% < required 100%",
        "length 512 depth 0.50: retrieved 0% < required 100%",
    ]


def test_multi_needle(tokenizer, corpus):
    config = dict(num_needles=4, num_queried=2, trials=2)
    perfect = needle_gate(CopyingOracle(tokenizer), tokenizer, [400], [0.0, 0.5], corpus, **config)
    assert perfect.passed and len(perfect.scores.records) == 2 * 2 * 2
    assert len({r["value"] for r in perfect.scores.records}) == 8  # fresh values per trial and query
    # With the needles spread from depth 0 to the end, a 200-token window sees only the later ones.
    partial = needle_gate(CopyingOracle(tokenizer, window=200), tokenizer, [400], [0.0], corpus, **config)
    assert 0.0 < partial.scores.mean_score < 1.0
    assert not partial.passed


def test_untrained_model_scores_near_zero(tokenizer, corpus):
    torch.manual_seed(0)
    model = Llama3ForCausalLM(Llama3Config.from_preset("tiny")).train()  # as the long-context stage hands it over
    result = run_needle(model, tokenizer, NeedleConfig(lengths=[64, 160], depths=[0.0, 0.5, 1.0]), corpus)
    assert model.training  # handed back in training mode
    assert result.scores.shape == (2, 3)
    assert result.mean_score == 0.0
    assert all(len(r["generated"]) > 0 for r in result.records)  # it did generate, just not the needle


def test_bad_input_is_rejected(tokenizer, corpus):
    foreign = LlamaForCausalLM(
        LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="does not belong to this model"):
        run_needle(foreign, tokenizer, NeedleConfig(lengths=[64]), corpus)
    short = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
        )
    )
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        run_needle(short, tokenizer, NeedleConfig(lengths=[64, 256]), corpus)
    with pytest.raises(ValueError, match="haystack corpus is empty"):
        run_needle(CopyingOracle(tokenizer), tokenizer, NeedleConfig(lengths=[64]), ["", "  "])
    with pytest.raises(ValueError, match="depths must be fractions"):
        NeedleConfig(lengths=[64], depths=[1.5])
    with pytest.raises(ValueError, match="num_queried"):
        NeedleConfig(lengths=[64], num_needles=2, num_queried=3)
