"""The IsoFLOPs sweep runner (training/isoflops.py) end to end on CPU: 3 budgets x 3 sizes, results,
resume, fit and plots [3.2.1]; and the `hf-llama3 scaling-law` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from hf_llama3.cli import main as cli_main
from training.isoflops import IsoFLOPsConfig, run_sweep
from training.post_cli import read_yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "isoflops.yaml"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    values = read_yaml(RECIPE) | {"output_dir": str(tmp_path_factory.mktemp("isoflops"))}
    config = IsoFLOPsConfig(**values)
    return config, run_sweep(config)


def read_results(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]


def test_sweep_trains_every_budget_and_size(sweep):
    config, output = sweep
    results = read_results(output)
    assert len(results) == 9
    for record in results:
        tokens_per_step = config.batch_size * config.seq_len
        # budget / (6N) tokens, rounded to whole steps [3.2.1]
        assert abs(record["tokens"] - record["compute"] / (6 * record["params"])) <= tokens_per_step / 2
        assert config.peak_lr_range[0] - 1e-12 <= record["peak_lr"] <= config.peak_lr_range[1] + 1e-12
    by_size = {}
    for record in results:
        by_size.setdefault(record["params"], []).append((record["compute"], record["loss"]))
    assert len(by_size) == 3
    smallest, largest = min(by_size), max(by_size)
    assert results[[r["params"] for r in results].index(smallest)]["peak_lr"] == pytest.approx(config.peak_lr_range[1])
    assert results[[r["params"] for r in results].index(largest)]["peak_lr"] == pytest.approx(config.peak_lr_range[0])
    # The largest model is undertrained at every budget: more compute lowers its validation loss. (The
    # smallest saturates, which is what gives each budget its minimum.)
    losses = [loss for _, loss in sorted(by_size[largest])]
    assert losses == sorted(losses, reverse=True)


def test_sweep_fits_and_plots(sweep):
    config, output = sweep
    fit = json.loads((output / "fit.json").read_text())
    assert len(fit["budgets"]) + len(fit["skipped_budgets"]) == 3
    assert 0 < fit["power_law"]["alpha"] < 2
    # At least one budget brackets its optimum (an interior minimum, not an extrapolated one).
    assert any(not budget["extrapolated"] for budget in fit["budgets"])
    assert fit["extrapolation"]["compute"] == config.extrapolate_to
    for name in ("isoflops.png", "power_law.png"):
        image = imread(output / name)
        assert image.shape[0] > 200 and image[..., :3].std() > 0.05


def test_sweep_resumes_where_it_stopped(sweep):
    config, output = sweep
    results = output / "results.jsonl"
    before = results.read_text()
    run_sweep(config)  # everything done: nothing is retrained
    assert results.read_text() == before
    # An interrupted sweep (last run missing) trains only that run, and gets the same result (seeded).
    results.write_text("".join(line + "\n" for line in before.splitlines()[:-1]))
    run_sweep(config)
    assert results.read_text() == before


def test_config_errors():
    sizes = [{"hidden_size": 16}] * 3
    with pytest.raises(ValueError, match="at least 2 positive FLOP budgets"):
        IsoFLOPsConfig(budgets=[1e9], sizes=sizes, output_dir="x")
    with pytest.raises(ValueError, match="at least 3 model shapes"):
        IsoFLOPsConfig(budgets=[1e9, 2e9], sizes=sizes[:2], output_dir="x")
    with pytest.raises(ValueError, match="both train_files and val_files"):
        IsoFLOPsConfig(budgets=[1e9, 2e9], sizes=sizes, output_dir="x", train_files=["a.jsonl"])


def test_cli_forecast_and_errors(capsys, tmp_path):
    assert cli_main(["scaling-law", "forecast", "--alpha", "0.53", "--A", "0.29", "--compute", "3.8e25"]) == 0
    point = json.loads(capsys.readouterr().out)
    assert point["tokens"] == pytest.approx(10.46e12, rel=1e-3)
    assert cli_main(["scaling-law", "forecast", "--compute", "3.8e25"]) == 2
    assert "give --alpha and --A" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets: [1.0e+9, 2.0e+9]\nsizes: []\noutput_dir: x\nlearning_rate: 1\n")
    assert cli_main(["scaling-law", "sweep", "--config", str(bad)]) == 2
    assert "unknown key(s) ['learning_rate']" in capsys.readouterr().err
    assert cli_main(["scaling-law", "fit", "--results", str(tmp_path / "none.jsonl"), "--output-dir", "x"]) == 2
