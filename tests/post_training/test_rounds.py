"""Iterative rounds [4.1.6]: the tiny recipe (with its post-data steps) completes 2 rounds and resumes after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.post_training.conftest import tiny_causal_lm
from training.rounds_post_data import rooted

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, tokenizer) -> Path:
    base = tmp_path / "base"
    tiny_causal_lm(0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    recipe = yaml.safe_load((REPO / "recipes/tiny/rounds.yaml").read_text())
    recipe["preference_path"] = str(REPO / recipe["preference_path"])
    prompts = (REPO / recipe["prompts_path"]).read_text().splitlines()[:4]  # 4 prompts keep the test short
    (tmp_path / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    recipe["prompts_path"] = str(tmp_path / "prompts.jsonl")
    recipe["sft_extra_paths"] = [str(REPO / p) for p in recipe["sft_extra_paths"]]
    recipe["post_data"] = [rooted(entry, REPO) for entry in recipe["post_data"]]
    recipe |= {"base_model": str(base), "output_dir": str(tmp_path / "rounds")}
    recipe["rejection_sampling"]["max_new_tokens"] = 8
    for stage in ("reward", "sft", "dpo"):
        recipe[stage]["max_steps"] = 2
    recipe["eval_max_new_tokens"] = 8
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(config: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hf_llama3.cli", "rounds", "--config", str(config)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_rounds_complete_and_resume_after_kill(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _recipe(tmp_path, tokenizer)
    out = tmp_path / "rounds"
    first = _cli(config)
    marker = out / "round_0" / "sft" / "DONE"
    deadline = time.time() + 400
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert marker.exists(), first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    reward_done = (out / "round_0" / "reward" / "DONE").stat().st_mtime
    curate_done = (out / "round_0" / "post_data" / "curate" / "DONE").stat().st_mtime

    second = _cli(config)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log[-3000:]
    assert (out / "round_0" / "reward" / "DONE").stat().st_mtime == reward_done  # finished steps are not redone
    assert (out / "round_0" / "post_data" / "curate" / "DONE").stat().st_mtime == curate_done
    for r in (0, 1):  # each round's SFT trained on the curated samples with the user's rows and long-context rows
        post = out / f"round_{r}" / "post_data"
        curated = [json.loads(line) for line in (post / "curate" / "rows.jsonl").read_text().splitlines()]
        mixed = [json.loads(line) for line in (post / "long-context" / "rows.jsonl").read_text().splitlines()]
        assert curated and all("curation" in row for row in curated)
        assert sum("long_context" in row for row in mixed) == 1 and len(mixed) == len(curated) + 4 + 1
        assert json.loads((out / f"round_{r}" / "sft" / "final" / "data_summary.json").read_text()) == {
            "rows": len(mixed)
        }
    summary = json.loads((out / "summary.json").read_text())
    assert [row["round"] for row in summary] == [0, 1]
    assert all(0.0 <= row["win_rate_vs_previous"] <= 1.0 for row in summary)
    # Round 1's reward model sees the 10 seed rows plus round 0's new pairs (one per prompt with 2 usable samples).
    assert 10 < summary[0]["preference_pairs"] <= 10 + 4
    assert (out / "rounds.png").stat().st_size > 0 and "| 1 |" in (out / "summary.md").read_text()
    # The round-0 policy is the average of the two DPO seeds [4.1.5]; exported models load with the Auto classes.
    assert json.loads((out / "round_0" / "policy" / "averaging.json").read_text())["weights"] == [0.5, 0.5]
    policy = AutoModelForCausalLM.from_pretrained(out / "round_1" / "policy")
    AutoModelForSequenceClassification.from_pretrained(out / "round_1" / "reward" / "final")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = policy.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3 or generated[0, -1].item() in (
        128001,
        128008,
        128009,
    )
