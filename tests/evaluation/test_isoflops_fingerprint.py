"""Reruns of the IsoFLOPs sweep (issue 12, finding 4): a changed LR range, sequence length or a size that moves
the LR interpolation is refused instead of resuming on (budget, size) alone; the finished results stay."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from hf_llama3.cli import main as cli_main
from training.post_cli import read_yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "isoflops.yaml"


def _sandbox(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _sweep(folder: Path, out: Path, **changes) -> int:
    values = read_yaml(RECIPE) | {"budgets": [3.0e9, 6.0e9], "extrapolate_to": None} | changes
    recipe = folder / f"sweep{len(list(folder.glob('sweep*.yaml')))}.yaml"
    recipe.write_text(yaml.safe_dump(values))
    return cli_main(["scaling-law", "sweep", "--config", str(recipe), "--output-dir", str(out)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-budget x 3-size sweep."""
    folder = tmp_path_factory.mktemp("isoflops_fp")
    assert _sweep(folder, folder / "out") == 0
    assert (folder / "out" / "fingerprint.json").is_file()
    return folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peak_lr_range": [1.0e-3, 3.0e-3]}, "recipe.peak_lr_range: [0.01, 0.03] -> [0.001, 0.003]"),
        ({"seq_len": 16, "val_tokens": 1024}, "recipe.seq_len: 32 -> 16"),
    ],
)
def test_changed_settings_are_refused_and_results_kept(finished, capsys, changes, message):
    before = _sandbox(finished / "out")
    capsys.readouterr()
    assert _sweep(finished, finished / "out", **changes) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "--output-dir" in err
    assert _sandbox(finished / "out") == before


def test_a_size_that_moves_the_lr_of_finished_points_is_refused(finished, capsys):
    sizes = read_yaml(RECIPE)["sizes"] + [
        {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2}
    ]
    before = _sandbox(finished / "out")
    capsys.readouterr()
    assert _sweep(finished, finished / "out", sizes=sizes) == 2
    err = capsys.readouterr().err
    assert "trained with another peak LR" in err and "peak_lr: 0.01 -> " in err
    assert _sandbox(finished / "out") == before
