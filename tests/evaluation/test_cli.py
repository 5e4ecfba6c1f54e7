"""`hf-llama3 eval {needle,contamination,benchmarks}` and `scaling-law {fit,downstream}` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.cli import main as cli_main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    Llama3ForCausalLM(Llama3Config.from_preset("tiny")).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_eval_needle_writes_heatmap_and_fails_the_gate(checkpoint, tmp_path, capsys):
    args = ["eval", "needle", "--model", str(checkpoint), "--lengths", "64", "128", "--depths", "0", "1"]
    assert cli_main([*args, "--output-dir", str(tmp_path)]) == 1  # a random model does not pass the gate
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] is False and len(summary["reasons"]) == 4
    report = json.loads((tmp_path / "needle.json").read_text())
    assert np.array(report["scores"]).shape == (2, 2)
    assert imread(tmp_path / "needle.png").shape[0] > 100


def test_eval_needle_refuses_a_checkpoint_that_is_not_ours(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert cli_main(["eval", "needle", "--model", str(tmp_path), "--lengths", "64", "--output-dir", "x"]) == 2
    assert "model_type 'bert'" in capsys.readouterr().err


def test_eval_contamination(tmp_path, capsys, humaneval_prompts, reference_docs):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"text": p} for p in humaneval_prompts[:5]])
    shard = write_jsonl(
        tmp_path / "shard.jsonl", [{"text": d} for d in reference_docs[:50]] + [{"text": humaneval_prompts[3]}]
    )
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"score": s} for s in (0, 0, 0, 1, 0)])
    out = tmp_path / "report.json"
    assert (
        cli_main(
            ["eval", "contamination", "--eval", bench, "--train", shard, "--scores", scores, "--output", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert [e["index"] for e in report["examples"] if e["contaminated"]] == [3]
    assert report["score_split"]["contaminated"] == 1.0 and report["score_split"]["clean"] == 0.0
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert cli_main(["eval", "contamination", "--eval", empty, "--train", shard, "--output", str(out)]) == 2
    assert "evaluation set is empty" in capsys.readouterr().err


def test_eval_benchmarks(checkpoint, tmp_path, capsys):
    rows = [{"question": f"{i} plus one is", "choices": [str(i + 1), str(i + 7)], "answer": 0} for i in range(4)]
    mc = write_jsonl(tmp_path / "plus_one.jsonl", rows)
    assert (
        cli_main(
            ["eval", "benchmarks", "--model", str(checkpoint), "--multiple-choice", mc, "--output-dir", str(tmp_path)]
        )
        == 0
    )
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert 0.0 <= result["metrics"]["plus_one"]["acc,none"] <= 1.0
    assert len(result["per_example"]["plus_one"]["acc"]) == 4
    assert cli_main(["eval", "benchmarks", "--model", str(checkpoint), "--output-dir", str(tmp_path)]) == 2
    assert "no tasks" in capsys.readouterr().err


def test_scaling_law_fit_and_downstream(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for compute in (1e18, 1e19, 1e20):
        optimum = 0.3 * compute**0.5
        for offset in (-0.6, -0.3, 0.0, 0.3, 0.6):
            tokens = optimum * 10**offset
            rows.append(
                {
                    "compute": compute,
                    "params": compute / (6 * tokens),
                    "tokens": tokens,
                    "loss": 2 + 0.2 * offset**2 + rng.normal(0, 1e-4),
                }
            )
    results = write_jsonl(tmp_path / "results.jsonl", rows)
    assert (
        cli_main(
            ["scaling-law", "fit", "--results", results, "--output-dir", str(tmp_path), "--extrapolate-to", "1e22"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["alpha"] == pytest.approx(0.5, abs=0.01)
    assert {"fit.json", "isoflops.png", "power_law.png"} <= {p.name for p in tmp_path.iterdir()}

    compute = np.logspace(19, 22, 6)
    sig_nll = np.linspace(0.3, 1.5, 8)
    points = {
        "compute": compute.tolist(),
        "nll": (-0.1 * np.log10(compute) + 3.0).tolist(),
        "sigmoid_nll": sig_nll.tolist(),
        "sigmoid_accuracy": (0.25 + 0.7 / (1 + np.exp(5 * (sig_nll - 0.9)))).tolist(),
        "chance": 0.25,
    }
    (tmp_path / "points.json").write_text(json.dumps(points))
    args = ["scaling-law", "downstream", "--input", str(tmp_path / "points.json"), "--output-dir", str(tmp_path)]
    assert cli_main([*args, "--compute", "3.8e25"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["nll"] == pytest.approx(-0.1 * np.log10(3.8e25) + 3.0, abs=1e-6)
    assert imread(tmp_path / "forecast.png").shape[0] > 100
    del points["sigmoid_nll"]
    (tmp_path / "points.json").write_text(json.dumps(points))
    assert cli_main(args) == 2
    assert "lacks ['sigmoid_nll']" in capsys.readouterr().err
