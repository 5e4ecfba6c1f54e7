"""Every recipe YAML parses into its dataclasses, with the paper's numbers where the paper gives them [3.4, Table 4]."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.parallel.dims import ParallelDims
from training.post_cli import build_config, read_yaml
from training.pretrain.config import PretrainRecipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SIZES = ["tiny", "llama3-8b", "llama3-70b", "llama3-405b"]


def _recipe(size: str, **changes) -> PretrainRecipe:
    values = read_yaml(RECIPES / size / "pretrain.yaml")
    values.update(changes)
    return build_config(PretrainRecipe, values, source=size)


@pytest.mark.parametrize("size", SIZES)
def test_recipe_parses(size):
    recipe = _recipe(size)
    assert recipe.initial.ramp[0].after_tokens == 0
    assert recipe.anneal.steps >= 1
    assert recipe.long_context.seq_lens == sorted(recipe.long_context.seq_lens)


@pytest.mark.parametrize(("size", "lr", "layers"), [("llama3-8b", 3e-4, 32), ("llama3-70b", 1.5e-4, 80)])
def test_peak_lr_and_shape(size, lr, layers):
    recipe = _recipe(size)
    assert recipe.optimizer_config().lr == lr  # [Table 3]
    assert recipe.model_config().num_hidden_layers == layers


def test_405b_is_the_paper():
    recipe = _recipe("llama3-405b")
    model = recipe.model_config()
    assert (model.num_hidden_layers, model.hidden_size, model.intermediate_size) == (126, 16384, 53248)
    opt = recipe.optimizer_config()  # [3.4.1]
    assert (opt.lr, opt.warmup_steps, opt.warmup_steps + opt.decay_steps) == (8e-5, 8000, 1_200_000)
    assert opt.lr * opt.min_lr_ratio == pytest.approx(8e-7)
    ramp = [(p.after_tokens, p.batch_tokens, p.seq_len) for p in recipe.initial.ramp]
    assert ramp == [(0, 4 * 2**20, 4096), (252_000_000, 8 * 2**20, 8192), (2_870_000_000_000, 16 * 2**20, 8192)]
    first = recipe.initial.mix[0].weights
    assert first == {"general": 0.50, "math_reasoning": 0.25, "code": 0.17, "multilingual": 0.08}  # [3.1.2]
    stage1 = ParallelDims(**recipe.layout("initial"))  # [Table 4]
    assert (stage1.tp, stage1.cp, stage1.pp, stage1.dp, stage1.world_size) == (8, 1, 16, 64, 8192)
    long = ParallelDims(**recipe.layout("long_context"))
    assert (long.tp, long.cp, long.pp, long.dp) == (8, 16, 16, 4)
    lc = recipe.long_context  # [3.4.2] 6 stages up to 128K, ~800B tokens
    assert len(lc.seq_lens) == 6 and lc.seq_lens[-1] == 131072 and lc.seq_lens[0] > 8192
    assert 6 * lc.max_tokens == pytest.approx(800e9, rel=0.01)
    assert (recipe.anneal.tokens, recipe.anneal.seq_len) == (40_000_000, 131072)  # [3.4.3]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bogus": 1}, r"unknown key\(s\) \['bogus'\]"),
        ({"initial": {"tokens": 10, "ramp": [], "mix": []}}, "first entry with after_tokens: 0"),
        ({"report_to": ["wandb"]}, "not supported"),
        ({"mode": "probe"}, "needs a probe section"),
    ],
)
def test_bad_recipes_say_why(changes, message):
    with pytest.raises(ValueError, match=message):
        _recipe("tiny", **changes)


def test_bad_sections_say_why():
    values = read_yaml(RECIPES / "tiny" / "pretrain.yaml")
    values["initial"]["ramp"][1]["batch_tokens"] = 2000
    with pytest.raises(ValueError, match="multiple of seq_len"):
        build_config(PretrainRecipe, values)
    values = read_yaml(RECIPES / "tiny" / "pretrain.yaml")
    values["anneal"]["weights"] = {"poetry": 1.0}
    with pytest.raises(ValueError, match=r"sources \['poetry'\]"):
        build_config(PretrainRecipe, values)
    values = read_yaml(RECIPES / "tiny" / "pretrain.yaml")
    values["long_context"]["parallel"] = {"cp": 3}
    with pytest.raises(ValueError, match="divisible by 2 \\* cp"):
        build_config(PretrainRecipe, values)
