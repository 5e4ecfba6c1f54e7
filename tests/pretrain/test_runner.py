"""Runner behaviour in one process: a stage whose layout needs more processes checkpoints and asks for a relaunch,
and the resumed run state names where it stopped."""

from __future__ import annotations

import json

import pytest
import yaml

from training.post_cli import build_config
from training.pretrain.cli import build_stages
from training.pretrain.config import PretrainRecipe
from training.pretrain.runner import RelaunchNeeded, Runner, read_run_state

from .conftest import small_recipe


def test_layout_with_another_world_size_asks_for_a_relaunch(tmp_path, byte_shards, single_process_group):
    values = yaml.safe_load(small_recipe(tmp_path, byte_shards, tmp_path / "run").read_text())
    values["parallel"], values["long_context"]["parallel"] = {}, {"dp_shard": 2}
    recipe = build_config(PretrainRecipe, values)
    runner = Runner(recipe, build_stages(recipe), recipe.output_dir)
    with pytest.raises(RelaunchNeeded, match=r"long_context_1_128 runs on 2 processes .* relaunch the same command"):
        runner.run()
    state = read_run_state(tmp_path / "run" / "checkpoints" / "step_00000006")["run"]
    assert (state["stage"], state["stage_step"], state["tokens"]) == (1, 0, 2048)


def test_runner_skips_a_planted_bad_batch_and_logs_it(tmp_path, byte_shards, single_process_group):
    values = yaml.safe_load(small_recipe(tmp_path, byte_shards, tmp_path / "run").read_text())
    values["long_context"]["parallel"] = values["anneal"]["parallel"] = None
    values["parallel"], values["spike"] = {}, {"window": 2, "max_consecutive": 2}
    recipe = build_config(PretrainRecipe, values)
    runner = Runner(recipe, build_stages(recipe), recipe.output_dir)
    bad_step = 4
    # The final norm's output feeds the output projection (applied inside the chunked loss).
    runner.trainer.stages[0][1].model.norm.register_forward_hook(
        lambda _m, _i, out: out * float("nan") if runner.trainer.step_count == bad_step else out
    )
    state = runner.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["skipped"]] == [bad_step + 1]
    assert records[bad_step]["loss"] != records[bad_step]["loss"]  # NaN, logged
    assert all(r["loss"] == r["loss"] for i, r in enumerate(records) if i != bad_step)
    assert state.finished and runner.guard.skipped_total == 1
    assert state.tokens == sum(r["batch_size"] * r["seq_len"] for r in records)  # the bad batch was consumed
