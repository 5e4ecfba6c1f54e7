"""The whole recipe on 2 CPU processes (FSDP for stage 1, context parallelism for long context and annealing):
the tiny recipe with the real tokenizer end to end, kill -9 in every stage then resume to identical weights, the
annealing data probe, and layout switches that reproduce one process.

``hf-llama3 pretrain`` forks its 2 ranks from this test process (``training.parallel.spawn``); a killed run's
SIGKILLed rank ends the launch with one line naming the rank and the signal (exit status 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_llama3.cli import main as cli_main
from training.parallel.checkpoint import FAULT_ENV

from .conftest import CATEGORIES, RECIPES, small_recipe, write_test_shards

pytestmark = pytest.mark.slow


def _sources(folder: Path) -> str:
    return yaml.safe_dump({c: {"path": str(folder), "category": c} for c in CATEGORIES}, default_flow_style=True)


def _pretrain(*args: str) -> None:
    assert cli_main(["pretrain", *args]) == 0


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_recipe_runs_all_three_stages(tmp_path):
    from hf_llama3 import load_tokenizer

    shards = tmp_path / "shards"
    write_test_shards(shards, load_tokenizer(), seq_len=512, documents=400)
    out = tmp_path / "run"
    argv = ["pretrain", "--config", str(RECIPES / "tiny" / "pretrain.yaml"), "--set", f"output_dir={out}"]
    argv += ["--set", f"sources={_sources(shards)}", "--set", "initial.tokens=10240"]
    argv += ["--set", "long_context.max_tokens=2048", "--set", "anneal.tokens=4096", "--set", "anneal.average_every=1"]
    _pretrain(*argv[1:])

    steps = _records(out / "metrics.jsonl")
    stages = [r["stage"] for r in steps]
    assert stages == ["initial"] * 7 + ["long_context_1_256", "long_context_2_512", "anneal", "anneal"]
    shapes = [(r["batch_size"], r["seq_len"]) for r in steps]
    assert shapes == [(16, 64)] * 4 + [(16, 128)] * 3 + [(8, 256), (4, 512), (4, 512), (4, 512)]
    initial = [r["loss"] for r in steps if r["stage"] == "initial"]
    assert initial[-1] < initial[0] - 0.5, initial  # the loss falls in stage 1
    assert not any(r["skipped"] for r in steps)

    gates = _records(out / "gates.jsonl")
    assert [g["stage"] for g in gates] == ["long_context_1_256", "long_context_2_512"]
    for gate in gates:  # passed, or a report naming every failing check
        assert gate["passed"] or all("needle length" in r or "short-context loss" in r for r in gate["reasons"])
        assert gate["needle"]["lengths"][-1] == int(gate["stage"].rsplit("_", 1)[1])
    assert len(list((out / "gates").glob("*.png"))) == 2
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    export = out / "hf"
    # The Polyak average of both annealing steps, kept sharded (tests/pretrain/test_polyak.py checks the mean).
    assert json.loads((out / "anneal" / "average" / "polyak.json").read_text())["count"] == 2
    assert load_file(export / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    assert model.config.vocab_size == 128256
    card = (export / "README.md").read_text()
    assert "## Recipe" in card and "long_context_2_512" in card
    assert (export / "tokenizer.json").is_file()


def test_kill_in_every_stage_then_resume_gives_identical_weights(tmp_path, byte_shards, monkeypatch, capsys):
    reference = small_recipe(tmp_path, byte_shards, tmp_path / "reference")
    _pretrain("--config", str(reference))
    steps = _records(tmp_path / "reference" / "metrics.jsonl")
    first = {}
    for index, record in enumerate(steps):
        first.setdefault(record["stage"].split("_")[0], index)
    kills = [first["initial"] + 3, first["long"], first["anneal"] + 1]  # 0-based step indices, one per stage

    resumed = small_recipe(tmp_path, byte_shards, tmp_path / "resumed")
    for step, rank in zip(kills, [1, 0, 1]):
        monkeypatch.setenv(FAULT_ENV, f"step:{step}:{rank}")
        capsys.readouterr()
        assert cli_main(["pretrain", "--config", str(resumed)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"hf-llama3 pretrain: error: rank {rank} was killed by signal SIGKILL (out of memory?")
        assert not (tmp_path / "resumed" / "hf").exists()
    monkeypatch.delenv(FAULT_ENV)
    _pretrain("--config", str(resumed))

    want = load_file(tmp_path / "reference" / "hf" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "hf" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    reference_steps = [(r["stage"], r["loss"]) for r in steps]
    resumed_steps = {(r["stage"], r["step"]): r["loss"] for r in _records(tmp_path / "resumed" / "metrics.jsonl")}
    assert [resumed_steps[(stage, i + 1)] for i, (stage, _) in enumerate(reference_steps)] == [
        loss for _, loss in reference_steps
    ]

    # Annealing as a data probe [3.1.3] from the reference run's last checkpoint: 30% code, 70% default mix.
    checkpoint = (
        tmp_path
        / "reference"
        / "checkpoints"
        / (tmp_path / "reference" / "checkpoints" / "latest").read_text().strip()
    )
    probe = yaml.safe_load(reference.read_text())
    probe.update(
        mode="probe",
        probe={"checkpoint": str(checkpoint), "source": "code", "weight": 0.3},
        output_dir=str(tmp_path / "probe"),
    )
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(probe))
    _pretrain("--config", str(tmp_path / "probe.yaml"))
    report = json.loads((tmp_path / "probe" / "probe_report.json").read_text())
    assert set(report["delta"]) == set(report["before"]) and "mean" in report["delta"]
    assert report["candidate"]["weights"]["code"] == pytest.approx(0.3 + 0.7 * 0.30)
    for arm in ("control", "candidate"):
        records = _records(tmp_path / "probe" / "probe" / arm / "metrics.jsonl")
        assert [r["stage"] for r in records] == ["anneal", "anneal"]
        assert records[0]["step"] == int(checkpoint.name.split("_")[1]) + 1  # continues from the checkpoint


def test_layout_switches_reproduce_one_process(tmp_path, byte_shards):
    """PP2 for stage 1, TP2 for long context, FSDP2 for annealing (two ranks, two in-place layout switches) trains
    the same model as one process: losses and final weights agree to float rounding."""
    results = {}
    for name, layouts in {
        # The forked run first: this process then trains in-process (tqdm threads etc.) only after it.
        "switching": ({"pp": 2, "pp_microbatches": 2}, {"tp": 2}, {"dp_shard": 2}),
        "single": ({}, None, None),
    }.items():
        path = small_recipe(tmp_path, byte_shards, tmp_path / name)
        recipe = yaml.safe_load(path.read_text())
        recipe["parallel"], recipe["long_context"]["parallel"], recipe["anneal"]["parallel"] = layouts
        path.write_text(yaml.safe_dump(recipe))
        _pretrain("--config", str(path))
        losses = [r["loss"] for r in _records(tmp_path / name / "metrics.jsonl")]
        results[name] = losses, load_file(tmp_path / name / "hf" / "model.safetensors")
    (losses_a, weights_a), (losses_b, weights_b) = results.values()
    assert losses_a == pytest.approx(losses_b, abs=1e-5)
    for key, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[key], tensor, rtol=0, atol=1e-5)
