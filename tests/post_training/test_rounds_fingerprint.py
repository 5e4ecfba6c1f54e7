"""Reruns of `hf-llama3 rounds` (issue 12, build item 3): finished steps are skipped only for the same recipe and
inputs; changed prompts or stage settings are refused with what changed, and more rounds continue the run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from hf_llama3.cli import main as cli_main
from training.post_cli import build_config
from training.rounds import RoundsConfig
from training.rounds_fingerprint import check_rounds_run

from .test_rounds import _recipe


def _sandbox(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _started_run(tmp_path: Path, tokenizer) -> tuple[Path, dict]:
    """The tiny rounds recipe with its fingerprint recorded and a finished step (as a killed first run leaves it)."""
    path = _recipe(tmp_path, tokenizer)
    values = yaml.safe_load(path.read_text())
    check_rounds_run(build_config(RoundsConfig, dict(values)))
    done = tmp_path / "rounds" / "round_0" / "reward"
    done.mkdir(parents=True)
    (done / "DONE").write_text("ok\n")
    return path, values


def test_changed_prompts_are_refused_before_anything_runs(tmp_path, tokenizer, capsys):
    path, values = _started_run(tmp_path, tokenizer)
    prompts = Path(values["prompts_path"])
    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "A new prompt?"}) + "\n")
    before = _sandbox(tmp_path / "rounds")
    assert cli_main(["rounds", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hf-llama3 rounds: error: ") and "prompts.jsonl]: contents changed" in err
    assert "another output_dir" in err
    assert _sandbox(tmp_path / "rounds") == before


def test_changed_stage_settings_are_refused(tmp_path, tokenizer, capsys):
    path, _ = _started_run(tmp_path, tokenizer)
    before = _sandbox(tmp_path / "rounds")
    assert cli_main(["rounds", "--config", str(path), "--set", "dpo_seeds=[0]"]) == 2
    assert "recipe.dpo_seeds: [0, 1] -> [0]" in capsys.readouterr().err
    assert _sandbox(tmp_path / "rounds") == before


def test_more_rounds_or_another_log_setting_continue_the_run(tmp_path, tokenizer):
    _, values = _started_run(tmp_path, tokenizer)
    values["num_rounds"] = 5
    values["sft"]["logging_steps"] = 7
    check_rounds_run(build_config(RoundsConfig, values))  # no error: same run, continued


def test_changed_post_data_settings_or_documents_are_refused(tmp_path, tokenizer, capsys):
    path = _recipe(tmp_path, tokenizer)
    values = yaml.safe_load(path.read_text())
    documents = tmp_path / "documents.jsonl"  # the long-context step's documents, read by every round
    documents.write_text(Path(values["post_data"][1]["config"]["documents_path"]).read_text())
    values["post_data"][1]["config"]["documents_path"] = str(documents)
    path.write_text(yaml.safe_dump(values))
    check_rounds_run(build_config(RoundsConfig, dict(values)))
    before = _sandbox(tmp_path / "rounds")
    capsys.readouterr()
    assert cli_main(["rounds", "--config", str(path), "--set", "post_data.0.config.dedup_threshold=0.8"]) == 2
    assert "recipe.post_data.curate.config.dedup_threshold: 0.9 -> 0.8" in capsys.readouterr().err
    documents.write_text(documents.read_text() + json.dumps({"id": "new", "text": "A new document."}) + "\n")
    assert cli_main(["rounds", "--config", str(path)]) == 2
    assert "documents.jsonl]: contents changed" in capsys.readouterr().err
    assert _sandbox(tmp_path / "rounds") == before


def test_a_step_recipe_file_counts_by_its_contents(tmp_path, tokenizer):
    _, values = _started_run(tmp_path, tokenizer)
    long_context = values["post_data"][1]
    recipe = tmp_path / "long_context.yaml"
    recipe.write_text(yaml.safe_dump(long_context["config"]))
    long_context["config"] = str(recipe)  # the same settings from a file: still the same run
    check_rounds_run(build_config(RoundsConfig, values))
    recipe.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "chunk_tokens": 32}))
    with pytest.raises(ValueError, match=r"recipe.post_data.long-context.config.chunk_tokens: 64 -> 32"):
        check_rounds_run(build_config(RoundsConfig, values))
