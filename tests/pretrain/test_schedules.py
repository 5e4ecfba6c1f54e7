"""Schedules against the paper's numbers [3.4]: ramp shapes by tokens seen, LR values at chosen steps, mix proportions."""

from __future__ import annotations

import math

import pytest

from training.parallel.engine import OptimizerConfig
from training.pretrain.batches import BatchBuilder
from training.pretrain.config import MixPoint, RampPoint
from training.pretrain.schedules import SourceSampler, cosine_lr, linear_to_zero_lr, mix_at, ramp_at

PAPER_RAMP = [  # [3.4.1]
    RampPoint(0, 4_194_304, 4096),
    RampPoint(252_000_000, 8_388_608, 8192),
    RampPoint(2_870_000_000_000, 16_777_216, 8192),
]


@pytest.mark.parametrize(
    ("tokens", "batch_size", "seq_len"),
    [
        (0, 1024, 4096),
        (251_999_999, 1024, 4096),
        (252_000_000, 1024, 8192),
        (1_000_000_000_000, 1024, 8192),
        (2_869_999_999_999, 1024, 8192),
        (2_870_000_000_000, 2048, 8192),
        (15_600_000_000_000, 2048, 8192),
    ],
)
def test_paper_ramp(tokens, batch_size, seq_len):
    point = ramp_at(PAPER_RAMP, tokens)
    assert (point.batch_size, point.seq_len, point.batch_size * point.seq_len) == (
        batch_size,
        seq_len,
        point.batch_tokens,
    )


def test_ramp_drives_the_built_batches_and_keeps_the_data_order(byte_shards):
    """Walking the tokens, every batch has exactly the ramp's shape, and the token stream is the same as one cut in
    another shape: the ramp changes how the stream is cut, never what comes next."""
    ramp = [RampPoint(0, 512, 32), RampPoint(1024, 1024, 64), RampPoint(3072, 2048, 256)]
    builder = BatchBuilder({"all": str(byte_shards)}, eval_sequences=2)
    tokens, seen = 0, []
    while tokens < 8192:
        point = ramp_at(ramp, tokens)
        batch = builder.build(point.batch_size, point.seq_len, {"all": 1.0})
        expected = {0: (16, 32), 512: (16, 32), 1024: (16, 64), 2048: (16, 64), 3072: (8, 256)}
        assert tuple(batch["input_ids"].shape) == expected.get(tokens, (8, 256))
        seen.append(batch["input_ids"].flatten())
        tokens += batch["input_ids"].numel()
    other = BatchBuilder({"all": str(byte_shards)}, eval_sequences=2).build(64, 128, {"all": 1.0})
    assert other["input_ids"].flatten().tolist() == [t for chunk in seen for t in chunk.tolist()][:8192]


def test_paper_lr_schedule():
    """405B: peak 8e-5, 8,000 warmup steps, cosine to 8e-7 over 1.2M steps [3.4.1]."""
    opt = OptimizerConfig(lr=8e-5, warmup_steps=8000, decay_steps=1_192_000, min_lr_ratio=0.01)
    assert cosine_lr(0, opt) == pytest.approx(8e-5 / 8000)
    assert cosine_lr(3999, opt) == pytest.approx(4e-5)
    assert cosine_lr(7999, opt) == pytest.approx(8e-5)
    assert cosine_lr(8000, opt) == pytest.approx(8e-5)
    assert cosine_lr(8000 + 596_000, opt) == pytest.approx(8e-7 + (8e-5 - 8e-7) / 2)
    assert cosine_lr(8000 + 298_000, opt) == pytest.approx(8e-7 + (8e-5 - 8e-7) * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_lr(1_200_000, opt) == pytest.approx(8e-7)
    assert cosine_lr(1_500_000, opt) == pytest.approx(8e-7)


def test_anneal_lr_is_linear_to_zero():
    values = [linear_to_zero_lr(k, 4, 1e-4) for k in range(4)]
    assert values == pytest.approx([1e-4, 7.5e-5, 5e-5, 2.5e-5])
    with pytest.raises(ValueError, match="outside"):
        linear_to_zero_lr(4, 4, 1e-4)


def test_mix_schedule_switches_at_thresholds():
    mix = [MixPoint(0, {"a": 1, "b": 3}), MixPoint(100, {"a": 1, "c": 1})]
    assert mix_at(mix, 99) == {"a": 0.25, "b": 0.75}
    assert mix_at(mix, 100) == {"a": 0.5, "c": 0.5}


@pytest.mark.parametrize("draws", [50, 100, 1000, 12345])
def test_sampler_meets_the_paper_mix(draws):
    weights = {"general": 0.50, "math_reasoning": 0.25, "code": 0.17, "multilingual": 0.08}  # [3.1.2]
    sampler = SourceSampler()
    counts = dict.fromkeys(weights, 0)
    for _ in range(draws):
        counts[sampler.draw(weights)] += 1
    for name, weight in weights.items():
        assert abs(counts[name] - draws * weight) <= 1  # within one sequence, far inside 2%


def test_built_batches_meet_the_mix_by_tokens_and_resume(byte_shards):
    """Category views of one shard folder, drawn under the paper mix: token shares within 2%; a builder restored
    from the state continues with the same batches."""
    weights = {"general": 0.50, "math_reasoning": 0.25, "code": 0.17, "multilingual": 0.08}
    sources = {name: {"path": str(byte_shards), "category": name} for name in weights}
    builder = BatchBuilder(sources, eval_sequences=2)
    for _ in range(10):
        builder.build(10, 64, weights)
    state = builder.state_dict()
    total = sum(builder.tokens_per_source.values())
    for name, weight in weights.items():
        assert abs(builder.tokens_per_source[name] / total - weight) < 0.02
    expected = [builder.build(10, 64, weights)["input_ids"] for _ in range(3)]
    restored = BatchBuilder(sources, eval_sequences=2)
    restored.load_state_dict(state)
    assert all((restored.build(10, 64, weights)["input_ids"] == e).all() for e in expected)
