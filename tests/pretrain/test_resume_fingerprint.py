"""Reruns into a pre-training run folder (issue 12, finding 3): another model shape or more tokens is refused with
what changed, a finished run says so, and the good ``hf/`` export is never replaced; checkpoints load strictly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from hf_llama3 import Llama3Config
from hf_llama3.cli import main as cli_main
from training.parallel.checkpoint import export_hf, latest_checkpoint

from .conftest import small_recipe


def _one_process_recipe(tmp_path: Path, shards: Path, output: Path, **changes) -> Path:
    """The small recipe on one process, stage 1 only (seconds), an 8-layer model; ``changes`` update it."""
    path = small_recipe(tmp_path, shards, output)
    values = yaml.safe_load(path.read_text())
    values.update(parallel={}, long_context=None, anneal=None)
    values["model_overrides"]["num_hidden_layers"] = 8
    for key, value in changes.items():
        section, _, field = key.rpartition(".")
        (values[section] if section else values)[field] = value
    path = tmp_path / f"{output.name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _sandbox(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (the listing compared before and after a refused rerun)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def finished_run(tmp_path, byte_shards, capsys):
    """A finished 8-layer run in ``tmp_path/run`` with its ``hf/`` export."""
    out = tmp_path / "run"
    assert cli_main(["pretrain", "--config", str(_one_process_recipe(tmp_path, byte_shards, out))]) == 0
    assert json.loads((out / "hf" / "config.json").read_text())["num_hidden_layers"] == 8
    assert (out / "fingerprint.json").is_file()
    capsys.readouterr()
    return out


def test_rerun_with_another_model_shape_is_refused_and_keeps_the_export(tmp_path, byte_shards, finished_run, capsys):
    recipe = _one_process_recipe(tmp_path, byte_shards, finished_run, **{"model_overrides.num_hidden_layers": 4})
    before = _sandbox(tmp_path)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.num_hidden_layers: 8 -> 4" in err and "another output_dir" in err
    assert _sandbox(tmp_path) == before
    assert json.loads((finished_run / "hf" / "config.json").read_text())["num_hidden_layers"] == 8


def test_finished_run_with_more_tokens_says_it_is_finished(tmp_path, byte_shards, finished_run, capsys):
    recipe = _one_process_recipe(tmp_path, byte_shards, finished_run, **{"initial.tokens": 4096})
    before = _sandbox(tmp_path)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "initial.tokens: 2048 -> 4096" in err and "is finished" in err and "never extended" in err
    assert _sandbox(tmp_path) == before


def test_finished_run_rerun_as_is_trains_nothing_and_keeps_the_export(tmp_path, byte_shards, finished_run, capsys):
    recipe = _one_process_recipe(tmp_path, byte_shards, finished_run)
    before = _sandbox(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in (finished_run / "hf").iterdir()}
    assert cli_main(["pretrain", "--config", str(recipe)]) == 0
    assert "already finished: nothing to train" in capsys.readouterr().err
    assert _sandbox(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in (finished_run / "hf").iterdir()} == stamps


def test_run_folder_without_fingerprint_still_refuses_another_shape(tmp_path, byte_shards, finished_run, capsys):
    """A folder from before fingerprints: the checkpoint's own shapes refuse the 4-layer model, nothing recorded."""
    (finished_run / "fingerprint.json").unlink()
    recipe = _one_process_recipe(tmp_path, byte_shards, finished_run, **{"model_overrides.num_hidden_layers": 4})
    before = _sandbox(tmp_path)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "unexpected model.layers.4." in err
    assert _sandbox(tmp_path) == before


def test_export_loads_strictly(tmp_path, finished_run):
    """``export_hf`` of an 8-layer checkpoint into a 4-layer or a wider model fails in one line; nothing written."""
    checkpoint = latest_checkpoint(finished_run / "checkpoints")
    shape = dict(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with pytest.raises(ValueError, match=r"unexpected model\.layers\.4\..*in all"):
        export_hf(checkpoint, Llama3Config.from_preset("tiny", num_hidden_layers=4, **shape), tmp_path / "x")
    with pytest.raises(ValueError, match=r"missing model\.layers\.8\."):
        export_hf(checkpoint, Llama3Config.from_preset("tiny", num_hidden_layers=9, **shape), tmp_path / "x")
    with pytest.raises(ValueError, match=r"shape checkpoint vs model: .*\[512, 64\] vs \[512, 128\]"):
        wide = Llama3Config.from_preset("tiny", num_hidden_layers=8, hidden_size=128, **shape)
        export_hf(checkpoint, wide, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_changed_shards_are_refused(tmp_path, byte_shards, capsys):
    """Same recipe, other shard contents behind the same path: the run there is not resumed on them."""
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(byte_shards, shards)
    out = tmp_path / "run"
    recipe = _one_process_recipe(tmp_path, shards, out)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 0
    manifest = shards / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # same path, other contents
    before = _sandbox(out)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 2
    assert "manifest.json]: contents changed" in capsys.readouterr().err
    assert _sandbox(out) == before
