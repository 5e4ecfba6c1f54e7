"""Model averaging [4.1.5]: the average equals the elementwise mean, for single-file and sharded folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_llama3.cli import main as cli_main
from tests.post_training.conftest import tiny_causal_lm, tiny_reward_model
from training.averaging import INDEX_FILE, AveragingConfig, average_checkpoints


@pytest.fixture(scope="module")
def three_policies(tmp_path_factory):
    """Three tiny policies with different weights: one single-file, two sharded with different shard sizes."""
    root = tmp_path_factory.mktemp("policies")
    models, folders = [], []
    for seed, shard in ((1, None), (2, "20MB"), (3, "45MB")):
        model = tiny_causal_lm(seed)
        folder = root / f"run{seed}"
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(folder, **kwargs)
        models.append(model)
        folders.append(folder)
    assert not (folders[0] / INDEX_FILE).exists()
    assert (folders[1] / INDEX_FILE).exists() and (folders[2] / INDEX_FILE).exists()
    return models, folders


def test_uniform_average_is_elementwise_mean(three_policies, tmp_path):
    models, folders = three_policies
    out = average_checkpoints(folders, tmp_path / "avg")
    averaged = AutoModelForCausalLM.from_pretrained(out)
    states = [m.state_dict() for m in models]
    for name, tensor in averaged.state_dict().items():
        if name.endswith("inv_freq"):
            continue
        expected = torch.stack([s[name] for s in states]).mean(0)
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)
    # The first checkpoint's layout (a single file here) is kept; the provenance is recorded.
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "averaging.json").read_text())["weights"] == pytest.approx([1 / 3] * 3)


def test_weighted_average_of_sharded_folders_keeps_shards(three_policies, tmp_path):
    models, folders = three_policies
    out = average_checkpoints([folders[1], folders[2]], tmp_path / "avg", weights=[3, 1])
    index = json.loads((out / INDEX_FILE).read_text())
    assert index == json.loads((folders[1] / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    merged = {}
    for shard in shards:
        merged.update(load_file(out / shard))
    a, b = models[1].state_dict(), models[2].state_dict()
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, 0.75 * a[name] + 0.25 * b[name], rtol=0, atol=1e-7)


def test_reward_models_average_and_load(tmp_path):
    folders = []
    for seed in (5, 6):
        folder = tmp_path / f"rm{seed}"
        tiny_reward_model(seed).save_pretrained(folder)
        folders.append(folder)
    out = average_checkpoints(folders, tmp_path / "rm_avg")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    expected = (
        load_file(folders[0] / "model.safetensors")["score.weight"]
        + load_file(folders[1] / "model.safetensors")["score.weight"]
    ) / 2
    torch.testing.assert_close(model.score.weight, expected, rtol=0, atol=1e-7)


def test_mismatched_checkpoints_are_rejected(tmp_path):
    from hf_llama3 import Llama3Config, Llama3ForCausalLM

    tiny_causal_lm(0).save_pretrained(tmp_path / "a")
    Llama3ForCausalLM(Llama3Config.from_preset("tiny", intermediate_size=128)).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="different shapes"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither model\.safetensors"):
        average_checkpoints([tmp_path / "a", tmp_path / "empty"], tmp_path / "out")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"checkpoints": ["a"], "output_dir": "o"}, "at least two"),
        ({"checkpoints": ["a", "b"], "output_dir": ""}, "output_dir is required"),
        ({"checkpoints": ["a", "b"], "output_dir": "o", "weights": [1.0]}, "one each"),
        ({"checkpoints": ["a", "b"], "output_dir": "o", "weights": [-1.0, 2.0]}, "non-negative"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AveragingConfig(**kwargs)


def test_cli_average(three_policies, tmp_path, capsys):
    _, folders = three_policies
    recipe = tmp_path / "avg.yaml"
    recipe.write_text(f"checkpoints: [{folders[0]}, {folders[1]}]\noutput_dir: {tmp_path / 'cli_avg'}\n")
    assert cli_main(["average", "--config", str(recipe)]) == 0
    assert (tmp_path / "cli_avg" / "model.safetensors").exists()
    recipe.write_text("checkpoints: [a, b]\noutput_dir: o\nbogus_key: 1\n")
    assert cli_main(["average", "--config", str(recipe)]) == 2
    assert "unknown key(s) ['bogus_key']" in capsys.readouterr().err
