"""Every post-training recipe names only real config keys and carries the paper's numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from training.averaging import AveragingConfig
from training.dpo import Llama3DPOConfig
from training.rejection_sampling import RejectionSamplingConfig
from training.reward import Llama3RewardConfig
from training.rounds import RoundsConfig
from training.sft import Llama3SFTConfig

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STAGES = {
    "reward": Llama3RewardConfig,
    "rejection_sampling": RejectionSamplingConfig,
    "sft": Llama3SFTConfig,
    "dpo": Llama3DPOConfig,
    "average": AveragingConfig,
    "rounds": RoundsConfig,
}


def _keys(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("size", ["tiny", "llama3-8b"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_recipe_keys_are_config_fields(size, stage):
    recipe = yaml.safe_load((RECIPES / size / f"{stage}.yaml").read_text())
    assert set(recipe) <= _keys(STAGES[stage]), set(recipe) - _keys(STAGES[stage])
    if stage == "rounds":
        for sub in ("reward", "rejection_sampling", "sft", "dpo"):
            assert set(recipe[sub]) <= _keys(STAGES[sub]), (sub, set(recipe[sub]) - _keys(STAGES[sub]))


@pytest.mark.parametrize("stage", ["reward", "sft", "dpo", "rejection_sampling", "average"])
def test_tiny_recipes_build(stage):
    config = STAGES[stage](**yaml.safe_load((RECIPES / "tiny" / f"{stage}.yaml").read_text()))
    if stage == "dpo":
        assert (config.beta, config.learning_rate, config.loss_weights) == (0.1, 1e-5, [1.0, 0.2])
    if stage == "sft":
        assert config.learning_rate == 1e-5 and config.assistant_only_loss


def test_paper_numbers_in_8b_recipes():
    load = lambda name: yaml.safe_load((RECIPES / "llama3-8b" / f"{name}.yaml").read_text())  # noqa: E731
    assert load("rounds")["num_rounds"] == 6  # [4.1.6]
    assert 10 <= load("rejection_sampling")["num_samples"] <= 30  # [4.2.2]
    assert load("sft")["learning_rate"] == 1e-5 and 8500 <= load("sft")["max_steps"] <= 9000  # [4.1.3]
    dpo = load("dpo")
    assert (dpo["learning_rate"], dpo["beta"], dpo["loss_weights"]) == (1e-5, 0.1, [1.0, 0.2])  # [4.1.4]
