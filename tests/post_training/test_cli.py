"""The stage subcommands chained as a user runs them: reward -> rejection-sample -> sft -> dpo, from the tiny recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_llama3.cli import main as cli_main
from tests.post_training.conftest import tiny_causal_lm

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, stage: str, **overrides) -> str:
    values = yaml.safe_load((REPO / "recipes" / "tiny" / f"{stage}.yaml").read_text())
    for key in ("dataset_path", "prompts_path"):
        if key in values and values[key].startswith("recipes/"):
            values[key] = str(REPO / values[key])
    if "extra_dataset_paths" in values:
        values["extra_dataset_paths"] = [str(REPO / p) for p in values["extra_dataset_paths"]]
    values |= {"max_steps": 1, **overrides} if "max_steps" in values else overrides
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.slow
def test_stage_commands_chain(tmp_path, tokenizer, capsys):
    base = tmp_path / "base"
    tiny_causal_lm(0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    rm, rs, sft, dpo = (tmp_path / name for name in ("rm", "rs", "sft", "dpo"))
    assert (
        cli_main(["reward", "--config", _recipe(tmp_path, "reward", model_name_or_path=str(base), output_dir=str(rm))])
        == 0
    )
    rs_recipe = _recipe(
        tmp_path, "rejection_sampling", policy_path=str(base), reward_model_path=str(rm / "final"), output_dir=str(rs)
    )
    assert cli_main(["rejection-sample", "--config", rs_recipe, "--set", "max_new_tokens=4"]) == 0
    sft_recipe = _recipe(
        tmp_path, "sft", model_name_or_path=str(base), dataset_path=str(rs / "sft.jsonl"), output_dir=str(sft)
    )
    assert cli_main(["sft", "--config", sft_recipe]) == 0
    dpo_recipe = _recipe(
        tmp_path,
        "dpo",
        model_name_or_path=str(sft / "final"),
        dataset_path=str(rs / "preferences.jsonl"),
        output_dir=str(dpo),
    )
    assert cli_main(["dpo", "--config", dpo_recipe, "--set", "use_peft=true", "--set", "lora_r=4"]) == 0
    for folder in (rm, sft, dpo):
        assert (folder / "final" / "model.safetensors").exists() and (folder / "final" / "tokenizer.json").exists()
    # Each stage's export carries its data summary: what the hygiene rules [4.2.1] kept and dropped, per file.
    rm_summary = json.loads((rm / "final" / "data_summary.json").read_text())
    assert {"rows_read", "dropped_weak_preference", "dropped_similar_rows", "rows_kept"} <= set(*rm_summary.values())
    dpo_summary = json.loads((dpo / "final" / "data_summary.json").read_text())[str(rs / "preferences.jsonl")]
    assert dpo_summary["pairs"] + dpo_summary["dropped_similar_rows"] == dpo_summary["rows_read"]
    assert len((rs / "preferences.jsonl").read_text().splitlines()) == 12
    assert json.loads((rs / "samples.jsonl").read_text().splitlines()[0])["prompt"][0]["role"] == "system"


def test_stage_errors_exit_2(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "dataset_path: nowhere.jsonl\nmodel_name_or_path: x\noutput_dir: o\nbf16: false\nuse_cpu: true\n"
    )
    assert cli_main(["dpo", "--config", str(recipe), "--set", "beta_typo=1"]) == 2
    assert "unknown key(s) ['beta_typo']" in capsys.readouterr().err
    assert cli_main(["rejection-sample", "--set", "policy_path=a"]) == 2
    assert "reward_model_path is required" in capsys.readouterr().err
