"""Polyak averaging [3.4.3] and the parallel export on the sharded model: from TP2 x FSDP2, PP2 x FSDP2 and
TP2 x PP2 (4 ranks, the fork of test_sharded_eval), the running average of two states, each rank averaging its own
shards, saved, reloaded and exported by every rank, equals the element-wise mean of the two states (1e-6) and
loads with ``AutoModelForCausalLM``; the trained TP2 x PP2 model exported by every rank loads with
``AutoModelForCausalLM`` and, after ``convert --to llama``, as stock ``LlamaForCausalLM``, with the logits of the
trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_llama3 import Llama3ForCausalLM
from hf_llama3.convert import convert_checkpoint
from tests.distributed.harness import make_batch, tiny_config
from tests.pretrain.test_sharded_eval import EXPORTED, LAYOUTS, results
from training.pretrain.anneal import snapshot_steps
from training.pretrain.config import AnnealConfig


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sharded_polyak_export_is_the_mean_of_the_states(layout: str) -> None:
    result = results()[0][layout]
    exported = AutoModelForCausalLM.from_pretrained(result["polyak"], trust_remote_code=True).state_dict()
    assert set(exported) >= set(result["state"])
    for name, first in result["state"].items():
        expected = (first + result["second"][name]) / 2
        torch.testing.assert_close(exported[name], expected, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # One file per pipeline stage's layers: without PP save_pretrained's single file, with PP2 two and an index.
    folder = Path(result["polyak"])
    files = sorted(path.name for path in folder.glob("*.safetensors"))
    pipeline = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert files == (pipeline if "PP2" in layout else ["model.safetensors"])
    stored = {name for file in files for name in load_file(folder / file)}
    assert stored == set(result["state"])


@pytest.mark.timeout(300)
def test_parallel_export_loads_with_the_trained_logits(tmp_path: Path) -> None:
    result = results()[0][EXPORTED]
    trained = Llama3ForCausalLM(tiny_config())
    trained.load_state_dict(result["second"])  # the weights the 4 ranks held, gathered by the test
    input_ids = make_batch(1)["input_ids"][:2]
    with torch.no_grad():
        expected = trained.eval()(input_ids).logits
        ours = AutoModelForCausalLM.from_pretrained(result["trained"], trust_remote_code=True).eval()
        torch.testing.assert_close(ours(input_ids).logits, expected, rtol=0, atol=1e-5)
        stock_folder = convert_checkpoint(result["trained"], tmp_path / "stock", "llama")
        stock = AutoModelForCausalLM.from_pretrained(stock_folder).eval()
        assert type(stock) is LlamaForCausalLM
        torch.testing.assert_close(stock(input_ids).logits, expected, rtol=0, atol=1e-5)


def test_snapshot_steps_every_average_every_and_the_last() -> None:
    config = AnnealConfig(tokens=7 * 64, seq_len=64, batch_tokens=64, weights={"web": 1.0}, average_every=3)
    assert snapshot_steps(config) == [3, 6, 7]
