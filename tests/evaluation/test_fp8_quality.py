"""The paper's FP8 quality checks [6.2]: KL / top-1 / perplexity and reward-score distributions, FP8 vs bf16."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluation.fp8_quality import check_folders, compare, ks_statistic, next_token_comparison, read_prompts
from hf_llama3 import Llama3ForSequenceClassification
from hf_llama3.cli import main as cli_main
from hf_llama3.fp8_loader import load_fp8_model
from hf_llama3.quantize import quantize_fp8_checkpoint
from tests.conftest import tiny_config
from tests.hf_llama3.fp8_models import peaked_tiny_model, save_bf16

# Thresholds for the tiny random model (measured: KL about 0.007 nats, top-1 0.96, perplexity +2%).
MAX_KL = 0.03
MIN_TOP1 = 0.9
MAX_PPL_CHANGE = 0.06


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fp8q")
    model = peaked_tiny_model(num_layers=5)
    src = save_bf16(model, root / "bf16")
    quantize_fp8_checkpoint(src, root / "fp8")
    torch.manual_seed(1)
    starts = torch.tensor([[5], [9], [77], [300]])
    with torch.no_grad():  # text the bf16 model itself finds likely, so perplexity means something
        samples = model.float().generate(starts, do_sample=True, max_new_tokens=19, min_new_tokens=19)
    model.to(torch.bfloat16)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in samples.tolist()))
    torch.manual_seed(2)
    reward = Llama3ForSequenceClassification(tiny_config(num_hidden_layers=1, num_labels=1, initializer_range=0.2))
    reward.save_pretrained(root / "rm")
    return {"root": root, "src": src, "fp8": root / "fp8", "prompts": prompts, "rm": root / "rm", "model": model}


def test_identical_models_give_zero_kl_and_identical_score_distributions(setup):
    model = setup["model"].float()
    rm = Llama3ForSequenceClassification.from_pretrained(setup["rm"]).eval()
    report = compare(model, model, read_prompts(setup["prompts"])[:2], reward_model=rm, max_new_tokens=2)
    setup["model"].to(torch.bfloat16)
    assert report["next_token"]["kl_max"] < 1e-9 and report["next_token"]["top1_agreement"] == 1.0
    assert report["next_token"]["perplexity_ratio"] == pytest.approx(1.0)
    assert report["reward"]["ks_statistic"] == 0.0 and report["reward"]["mean_difference"] == 0.0


def test_fp8_export_is_close_to_bf16_and_a_broken_export_is_caught(setup, tmp_path):
    report = check_folders(setup["src"], setup["fp8"], setup["prompts"], reward_model=setup["rm"], max_new_tokens=2)
    nt = report["next_token"]
    assert nt["positions"] == 4 * 20
    assert 0 < nt["kl_mean"] < MAX_KL and nt["top1_agreement"] >= MIN_TOP1, nt
    assert nt["perplexity_reference"] < 10  # the prompts are the model's own samples
    assert abs(nt["perplexity_ratio"] - 1) < MAX_PPL_CHANGE
    reward = report["reward"]
    assert reward["reference"]["n"] == reward["quantized"]["n"] == 4
    assert 0.0 <= reward["ks_statistic"] <= 1.0 and set(report["summary"]) >= {"kl_mean", "reward_ks_statistic"}

    broken = tmp_path / "broken"  # one wrong row scale per FP8 matrix of layer 2, as a bad export would have
    shutil.copytree(setup["fp8"], broken)
    tensors = load_file(broken / "model.safetensors")
    for name in tensors:
        if name.startswith("model.layers.2.") and name.endswith("weight_scale"):
            tensors[name] = tensors[name] * 2.0
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    reference = setup["model"].float()
    bad = next_token_comparison(reference, load_fp8_model(broken, dtype=torch.float32), read_prompts(setup["prompts"]))
    setup["model"].to(torch.bfloat16)
    assert bad["kl_mean"] > 5 * nt["kl_mean"] and bad["kl_mean"] > MAX_KL


def test_ks_statistic_by_hand():
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([1, 2], [3, 4]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5


def test_quantize_cli_writes_the_quality_report_into_the_export(setup, capsys):
    out = setup["root"] / "checked"
    args = ["quantize", "--fp8", str(setup["src"]), str(out), "--check", str(setup["prompts"])]
    assert cli_main([*args, "--reward-model", str(setup["rm"]), "--max-new-tokens", "2"]) == 0
    assert "quality: " in capsys.readouterr().out
    quality = json.loads((out / "fp8_quality.json").read_text())
    assert quality["summary"]["kl_mean"] < MAX_KL and quality["reward"]["max_new_tokens"] == 2
    assert json.loads((out / "quantization_report.json").read_text())["quality"] == quality["summary"]
    assert quality["setup"]["quantized"] == str(out)


def test_bad_prompts_stop_before_anything_is_written(setup, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2, 3]}\nnot json\n')
    args = ["quantize", "--fp8", str(setup["src"]), str(tmp_path / "out"), "--check", str(bad)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2 is not JSON" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "hello"}\n')
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        read_prompts(text, setup["src"])
    with pytest.raises(FileNotFoundError):
        read_prompts(Path(tmp_path / "missing.jsonl"))
