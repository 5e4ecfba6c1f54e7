"""Polyak averaging of the annealing snapshots: the export is the exact mean of the snapshots and loads with
``AutoModelForCausalLM``."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_llama3 import Llama3ForCausalLM
from tests.conftest import tiny_config
from training.pretrain.anneal import polyak_average


def test_polyak_average_is_the_mean(tmp_path):
    folders, states = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        model = Llama3ForCausalLM(tiny_config())
        model.save_pretrained(tmp_path / f"step_{seed}")
        folders.append(tmp_path / f"step_{seed}")
        states.append(model.state_dict())
    out = polyak_average(folders, tmp_path / "avg")
    averaged = load_file(out / "model.safetensors")
    for name, tensor in averaged.items():
        expected = torch.stack([s[name] for s in states]).mean(0)
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)
    last_two = load_file(polyak_average(folders, tmp_path / "avg2", last=2) / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(last_two[name], (states[1][name] + states[2][name]) / 2, rtol=0, atol=1e-7)
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    torch.testing.assert_close(loaded.state_dict()[name], averaged[name])
