"""Reruns of `hf-llama3 curate` (issue 12, findings 4 and 6): changed input contents behind the same paths are
refused instead of keeping stale shards, and a run where no document survives stops with one line naming the step."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hf_llama3.cli import main as cli_main
from tests.data.test_readers import SAMPLE

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "data" / "sample.yaml"


def _curate(out: Path, inputs: Path, *sets: str) -> int:
    args = ["curate", "--config", str(RECIPE), "--set", f"output_dir={out}", "--set", f"reader.paths=[{inputs}]"]
    return cli_main([*args, *(a for s in sets for a in ("--set", s)), "--log-level", "WARNING"])


def _sandbox(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (compared before and after a refused rerun)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished curation of a copy of the sample corpus (the copy's contents are what the tests change)."""
    root = tmp_path_factory.mktemp("curate_fp")
    inputs = root / "inputs"
    inputs.mkdir()
    for name in ("code.parquet", "damaged.warc.gz", "multilingual.jsonl", "web.warc.gz"):
        shutil.copy2(SAMPLE / name, inputs / name)
    assert _curate(root / "run", inputs) == 0
    assert (root / "run" / "fingerprint.json").is_file()
    return root


def test_changed_input_contents_are_refused_and_keep_the_shards(finished, capsys):
    inputs, out = finished / "inputs", finished / "run"
    original = (inputs / "multilingual.jsonl").read_bytes()
    row = json.dumps({"text": "Ein neuer Absatz über Datenqualität. " * 20, "id": "new"})
    (inputs / "multilingual.jsonl").write_bytes(original + row.encode() + b"\n")
    capsys.readouterr()
    try:
        before = _sandbox(finished)
        assert _curate(out, inputs) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("hf-llama3 curate: error: ")
        assert "multilingual.jsonl]: contents changed" in err and "another output_dir" in err
        assert _sandbox(finished) == before
    finally:
        (inputs / "multilingual.jsonl").write_bytes(original)


def test_an_added_input_file_is_refused(finished, capsys):
    inputs, out = finished / "inputs", finished / "run"
    extra = inputs / "more.jsonl"
    extra.write_text(json.dumps({"text": "more text " * 50, "id": "m"}) + "\n")
    capsys.readouterr()
    try:
        before = _sandbox(finished)
        assert _curate(out, inputs) == 2
        assert "more.jsonl]: (absent) -> " in capsys.readouterr().err
        assert _sandbox(finished) == before
    finally:
        extra.unlink()


def test_same_inputs_and_recipe_resume(finished, capsys):
    """The same command again is a resume: exit 0, nothing rewritten."""
    before = _sandbox(finished / "run" / "shards")
    assert _curate(finished / "run", finished / "inputs") == 0
    assert _sandbox(finished / "run" / "shards") == before


def test_other_settings_are_refused_with_what_changed(finished, capsys):
    before = _sandbox(finished)
    assert _curate(finished / "run", finished / "inputs", "minhash.bands=20") == 2
    assert "recipe.minhash.bands: 14 -> 20" in capsys.readouterr().err
    assert _sandbox(finished) == before


def test_nothing_surviving_names_the_step_in_one_line(tmp_path, capsys):
    """Finding 6: every document filtered out used to crash with ``KeyError: 'LineDeduplicator'``."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": "hi", "id": str(i)}) + "\n" for i in range(3)))
    assert _curate(tmp_path / "out", tmp_path / "in.jsonl") == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]  # progress bars share stderr
    assert len(errors) == 1 and errors[0].startswith("hf-llama3 curate: error: ") and "Traceback" not in err
    assert "no document survived curation stage 'filter'" in err and "dropped the last 3 (" in err
    assert not (tmp_path / "out" / "shards").exists()


def test_dedup_stages_on_no_documents_do_not_crash(tmp_path):
    """The dedup stages on an empty stage-1 output write their statistics (the line dedup step used to raise
    KeyError); the survival check then names the stage."""
    from data.config import load_config
    from data.executors import make_executor
    from data.pipeline import curate_stages
    from data.report import stage_steps, stage_written
    from data.stage_io import write_jsonl_gz
    from data.survival import NothingSurvived, check_survivors

    write_jsonl_gz(tmp_path / "filtered" / "00000.jsonl.gz", [])
    config = load_config(RECIPE, [f"output_dir={tmp_path}", f"reader.paths=[{tmp_path / 'filtered'}]", "tasks=2"])
    for stage in curate_stages(config)[1:]:
        make_executor(config, stage).run()
        if stage.name == "dedup":
            break
    assert stage_written(tmp_path, "dedup") == 0
    with pytest.raises(NothingSurvived, match="stage 'dedup': no document reached this stage"):
        check_survivors("dedup", 0, [stage_steps(tmp_path, "dedup")], "logs/dedup")
