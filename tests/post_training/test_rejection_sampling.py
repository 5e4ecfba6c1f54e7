"""Rejection sampling [4.2.2]: shared-cache sampling matches transformers' generate, is seeded, picks the RM argmax
among finished samples (never a truncated one) and counts what it skipped."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import load_dataset

from tests.post_training.conftest import tiny_causal_lm, tiny_reward_model
from training.generation.prefix_sharing import length_batches, sample_next_token
from training.rejection_sampling import (
    DEFAULT_STOP_IDS,
    RejectionSamplingConfig,
    rejection_sample,
    sample_responses,
    score_samples,
    select_samples,
)

PROMPTS = [[128000, 9906, 1070, 11, 1268, 527], [128000, 40, 1097], [128000, 3923, 374, 279, 4320, 30, 5, 6, 7]]


def _generate(model, prompt, max_new_tokens, eos):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=128004
    )
    return out[0, len(prompt) :].tolist()


def test_greedy_samples_equal_transformers_generate():
    """Batched, left-padded prefill + cache repeated to K samples gives exactly generate's greedy tokens."""
    model = tiny_causal_lm(0)
    ours = sample_responses(model, PROMPTS, num_samples=3, max_new_tokens=6, temperature=0)
    for prompt, samples in zip(PROMPTS, ours):
        expected = _generate(model, prompt, 6, list(DEFAULT_STOP_IDS))
        assert samples == [expected] * 3


def test_samples_stop_at_stop_tokens_and_leave_the_batch():
    model = tiny_causal_lm(0)
    greedy = sample_responses(model, PROMPTS, num_samples=2, max_new_tokens=6, temperature=0)
    stop = greedy[0][0][2]  # the third token of prompt 0 becomes a stop token
    ours = sample_responses(model, PROMPTS, num_samples=2, max_new_tokens=6, temperature=0, stop_ids=[stop])
    assert ours[0] == [greedy[0][0][:3]] * 2
    for prompt, samples in zip(PROMPTS[1:], ours[1:]):  # the other prompts run on after prompt 0's rows left
        assert samples[0] == _generate(model, prompt, 6, [stop])


def test_default_stop_ids_are_the_chat_stop_tokens(tokenizer):
    from hf_llama3 import stop_token_ids

    assert list(DEFAULT_STOP_IDS) == stop_token_ids(tokenizer) == [128001, 128008, 128009]


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_causal_lm(0)
    kwargs = dict(num_samples=4, max_new_tokens=5, temperature=1.0, top_p=0.9)
    first = sample_responses(model, PROMPTS, seed=7, **kwargs)
    assert sample_responses(model, PROMPTS, seed=7, **kwargs) == first
    assert sample_responses(model, PROMPTS, seed=8, **kwargs) != first
    assert len({tuple(s) for s in first[0]}) > 1  # the K samples differ


def test_length_batches_respect_the_admission_budget():
    lengths = [50, 10, 30, 20, 200]
    batches = length_batches(lengths, num_samples=2, max_new_tokens=10, max_batch_tokens=200)
    assert [i for b in batches for i in b] == [1, 3, 2, 0, 4]  # shortest first
    for batch in batches:
        worst = len(batch) * 2 * (max(lengths[i] for i in batch) + 10)
        assert worst <= 200 or len(batch) == 1


def test_scores_equal_separate_reward_model_forwards():
    rm = tiny_reward_model(3)
    samples = [[[11, 12, 128009], [13, 128009], [14, 15, 16, 128009]], [[17, 128009], [18, 19, 128009]]]
    scores = score_samples(rm, PROMPTS[:2], samples, pack_size=2, batch_size=2)  # 3 packed rows: 2 batches
    with torch.no_grad():
        for prompt, prompt_samples, prompt_scores in zip(PROMPTS, samples, scores):
            expected = [rm(input_ids=torch.tensor([prompt + s])).logits.item() for s in prompt_samples]
            assert prompt_scores == pytest.approx(expected, rel=1e-4, abs=1e-5)


def _prompts_file(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": "Tell me a joke."}]},
        {"prompt": [{"role": "user", "content": "What is two plus two?"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "old answer"}]},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prompts


def test_rejection_sample_writes_datasets_trl_reads(tmp_path, tokenizer):
    policy, rm = tiny_causal_lm(0), tiny_reward_model(1)
    prompts = _prompts_file(tmp_path)
    # An untrained model never emits a stop token: every sample is truncated, so the demo setting lets one be chosen.
    config = RejectionSamplingConfig(
        policy_path="unused",
        reward_model_path="unused",
        prompts_path=str(prompts),
        output_dir=str(tmp_path / "rs"),
        num_samples=4,
        max_new_tokens=8,
        temperature=1.0,
        system_prompts=["Be concise."],
        allow_truncated_chosen=True,
    )
    out = rejection_sample(config, policy=policy, reward_model=rm, tokenizer=tokenizer)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(s["samples"]) == 4 for s in samples)
    assert samples[0]["prompt"][0] == {"role": "system", "content": "Be concise."}
    assert samples[2]["prompt"][-1]["role"] == "user"  # the old assistant turn is not part of the prompt
    for record in samples:
        assert record["truncated"] == [True] * 4 and record["stop_reasons"] == ["length"] * 4
        assert record["num_tokens"] == [8] * 4 and record["max_new_tokens"] == 8
        assert record["stop_tokens"] == [None] * 4
        assert record["scores"][record["best"]] == max(record["scores"])  # chosen = RM argmax
        assert record["scores"][record["worst"]] == min(record["scores"])
    preferences = load_dataset("json", data_files=str(out / "preferences.jsonl"), split="train")
    sft = load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    assert len(preferences) == len(sft) == 3
    assert preferences[0]["chosen"] == [{"role": "assistant", "content": samples[0]["samples"][samples[0]["best"]]}]
    assert sft[1]["messages"][-1]["content"] == samples[1]["samples"][samples[1]["best"]]
    again = rejection_sample(config, policy=policy, reward_model=rm, tokenizer=tokenizer)
    assert (again / "samples.jsonl").read_text() == (out / "samples.jsonl").read_text()


def test_config_validation():
    with pytest.raises(ValueError, match="policy_path is required"):
        RejectionSamplingConfig(reward_model_path="r", prompts_path="p", output_dir="o")
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        RejectionSamplingConfig(
            policy_path="a", reward_model_path="r", prompts_path="p", output_dir="o", num_samples=1
        )


def test_sampler_matches_softmax_and_transformers_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    for top_p in (1.0, 0.8):
        expected = torch.softmax(TopPLogitsWarper(top_p)(None, logits.clone()), dim=-1)[0]
        draws = sample_next_token(logits.expand(20000, -1), 1.0, top_p, generator)
        torch.testing.assert_close(torch.bincount(draws, minlength=5) / len(draws), expected, atol=0.015, rtol=0)
    # A flat distribution whose nucleus is larger than the top-1024 shortcut: the full-sort path, same rule.
    flat = torch.randn(1, 3000, generator=generator) * 0.1
    kept = torch.isfinite(TopPLogitsWarper(0.9)(None, flat.clone()))[0]
    draws = sample_next_token(flat.expand(4000, -1), 1.0, 0.9, generator)
    assert kept[draws].all() and len(draws.unique()) > 1024


def test_a_truncated_sample_is_never_chosen(tmp_path, tokenizer):
    """Planted: the best-scoring sample of prompt 0 hit max_new_tokens; the best finished one is chosen instead."""
    eot = 128009
    dialogs = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    hello, bye, cut = tokenizer.encode(" hello", add_special_tokens=False), [15, 16], [17, 18, 19]
    samples = [
        [[*hello, eot], cut, [*bye, eot]],  # prompt 0: the truncated sample scores highest
        [cut, [*cut[:2], 20]],  # prompt 1: both truncated
    ]
    scores = [[0.5, 2.0, -1.0], [1.0, 0.0]]
    records = select_samples(tokenizer, dialogs, samples, scores, [eot])
    assert records[0]["truncated"] == [False, True, False] and records[0]["stop_tokens"] == [eot, None, eot]
    assert records[0]["best"] == 0 and records[0]["worst"] == 2  # not sample 1 (score 2.0, truncated)
    assert records[0]["best_scoring_truncated"]
    assert "best" not in records[1] and records[1]["skipped"] == "every usable sample is truncated"
    allowed = select_samples(tokenizer, dialogs, samples, scores, [eot], allow_truncated_chosen=True)
    assert allowed[0]["best"] == 1 and allowed[1]["best"] == 0


def test_summary_counts_truncated_samples_and_skipped_prompts(tmp_path, tokenizer):
    """End to end with the default rule: an untrained policy's samples are all truncated, so nothing is chosen."""
    config = RejectionSamplingConfig(
        policy_path="unused",
        reward_model_path="unused",
        prompts_path=str(_prompts_file(tmp_path)),
        output_dir=str(tmp_path / "rs"),
        num_samples=2,
        max_new_tokens=3,
        temperature=1.0,
    )
    out = rejection_sample(config, policy=tiny_causal_lm(0), reward_model=tiny_reward_model(1), tokenizer=tokenizer)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == summary["truncated_samples"] == 6 and summary["stopped_samples"] == 0
    assert summary["prompts_selected"] == summary["truncated_chosen"] == 0
    assert summary["prompts_skipped"] == {"every usable sample is truncated": 3}
    assert summary["best_scoring_sample_truncated"] == 3 and summary["max_new_tokens"] == 3
    assert summary["backend"] == "prefix_sharing" and summary["world_size"] == 1
    assert (out / "sft.jsonl").read_text() == (out / "preferences.jsonl").read_text() == ""


def test_identical_samples_make_no_pair(tokenizer):
    """Greedy decoding gives K identical samples: no chosen == rejected pair is written."""
    eot = 128009
    same = [[15, 16, eot]] * 3
    records = select_samples(tokenizer, [[{"role": "user", "content": "a"}]], [same], [[0.1, 0.2, 0.3]], [eot])
    assert "best" not in records[0] and records[0]["skipped"] == "every usable sample is identical to the best"
