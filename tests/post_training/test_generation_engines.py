"""Generation engines of rejection sampling [4.2.2]: every backend's greedy samples equal ``generate``'s, stop
tokens are kept, seeded runs repeat, ``auto`` picks by device, and 2 data-parallel ranks give 1 rank's output."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.post_training.conftest import tiny_causal_lm, tiny_reward_model
from training.generation.engine import make_engine, resolve_backend, resolve_device
from training.parallel.spawn import run_local
from training.rejection_sampling import RejectionSamplingConfig, rejection_sample, sample_responses

PROMPTS = [[128000, 9906, 1070, 11, 1268, 527], [128000, 40, 1097], [128000, 3923, 374, 279, 4320, 30, 5, 6, 7]]


def _generate(model, prompt, max_new_tokens, eos):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=128004
    )
    return out[0, len(prompt) :].tolist()


def test_continuous_batching_greedy_equals_generate_and_keeps_stop_tokens():
    model = tiny_causal_lm(0)
    greedy = sample_responses(model, PROMPTS, 2, 6, temperature=0, backend="continuous_batching")
    for prompt, samples in zip(PROMPTS, greedy):
        assert samples == [_generate(model, prompt, 6, [128009])] * 2
    stop = greedy[0][0][2]  # the third token of prompt 0 becomes a stop token
    stopped = sample_responses(model, PROMPTS, 2, 6, temperature=0, stop_ids=[stop], backend="continuous_batching")
    assert stopped[0] == [greedy[0][0][:3]] * 2  # ends with the stop token, like the prefix-sharing sampler
    assert stopped == sample_responses(model, PROMPTS, 2, 6, temperature=0, stop_ids=[stop], backend="prefix_sharing")


def test_continuous_batching_sampling_is_seeded():
    model = tiny_causal_lm(0)
    kwargs = dict(num_samples=3, max_new_tokens=4, temperature=1.0, top_p=0.9, backend="continuous_batching")
    first = sample_responses(model, PROMPTS, seed=5, **kwargs)
    assert [len(s) for s in first] == [3, 3, 3] and all(len(x) == 4 for s in first for x in s)
    assert sample_responses(model, PROMPTS, seed=5, **kwargs) == first
    assert len({tuple(s) for s in first[0]}) > 1  # the K forked samples differ


def test_auto_backend_and_device_choices():
    assert resolve_backend("auto", torch.device("cpu")) == "prefix_sharing"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "continuous_batching"
    assert resolve_device("cpu") == torch.device("cpu")
    assert make_engine("auto", tiny_causal_lm(0)).name == "prefix_sharing"  # the model is on CPU
    with pytest.raises(ValueError, match="generation_backend: unknown 'hf'"):
        resolve_backend("hf", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="device: cuda was asked for but torch sees no GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_without_vllm_is_a_one_line_error():
    with pytest.raises(ValueError, match="needs the vllm package") as err:
        make_engine("vllm", model_path="unused")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vLLM and a GPU"
)
def test_vllm_greedy_equals_generate(tmp_path):
    model = tiny_causal_lm(0)
    model.save_pretrained(tmp_path / "policy")
    engine = make_engine("vllm", model_path=str(tmp_path / "policy"), vllm={"gpu_memory_utilization": 0.3})
    greedy = sample_responses(None, PROMPTS, 2, 6, temperature=0, engine=engine)
    assert greedy == [[_generate(model, p, 6, [128001, 128008, 128009])] * 2 for p in PROMPTS]


def _config(tmp_path, name: str) -> RejectionSamplingConfig:
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?"} for i in range(5)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return RejectionSamplingConfig(
        policy_path="unused",
        reward_model_path="unused",
        prompts_path=str(tmp_path / "prompts.jsonl"),
        output_dir=str(tmp_path / name),
        num_samples=3,
        max_new_tokens=4,
        temperature=1.0,
        seed=3,
        allow_truncated_chosen=True,
    )


def _rank_run(rank: int, world_size: int, config, tokenizer) -> None:
    rejection_sample(config, policy=tiny_causal_lm(0), reward_model=tiny_reward_model(1), tokenizer=tokenizer)


def _records(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_two_data_parallel_ranks_give_the_one_rank_output(tmp_path, tokenizer):
    """Prompts sharded over 2 gloo ranks, merged in prompt order on rank 0: the same samples as one rank."""
    one = rejection_sample(
        _config(tmp_path, "one"), policy=tiny_causal_lm(0), reward_model=tiny_reward_model(1), tokenizer=tokenizer
    )
    run_local(2, _rank_run, _config(tmp_path, "two"), tokenizer)
    two = tmp_path / "two"
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    single, sharded = _records(one), _records(two)
    assert [r["index"] for r in sharded] == list(range(5))
    assert [r["samples"] for r in sharded] == [r["samples"] for r in single]
    assert len({s for r in single for s in r["samples"]}) > 5  # sampled, not greedy: the per-prompt seeds matter
    for a, b in zip(single, sharded):
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-5)
        assert (b["best"], b["worst"]) == (a["best"], a["worst"])
    assert (two / "sft.jsonl").read_text() == (one / "sft.jsonl").read_text()
