"""Reruns of ``hf-llama3 sft`` / ``dpo`` / ``reward`` into one output_dir (issue 12, build item 3).

TRL resumes from the newest ``checkpoint-N`` in ``output_dir``; a rerun with another recipe, model or dataset is
refused with one line naming what changed (and nothing in the sandbox touched), the same recipe resumes, and a
finished stage (``final/`` present) says so instead of retraining; more steps after finishing are refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hf_llama3.cli import main as cli_main
from tests.post_training.conftest import tiny_causal_lm, tiny_reward_model

REPO = Path(__file__).resolve().parents[2]
TRAINING = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 1,
    "report_to": "none",
    "bf16": False,
    "use_cpu": True,
    "activation_checkpointing": False,
    "seed": 0,
}
DPO_ROWS = [
    {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "It is London, I believe."}],
    },
    {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]


def _sandbox(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: size, mtime and content (a refused rerun must not write, rewrite or delete)."""
    import hashlib

    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _recipe(tmp_path: Path, name: str, **values) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TRAINING, **values}))
    return str(path)


def _refused(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "another output_dir (--set output_dir=...)" in err
    return err


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer) -> Path:
    """A tiny causal LM with the real tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("base") / "model"
    tiny_causal_lm(0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sft_reruns_refuse_other_recipes_models_and_data_resume_the_same_and_stop_when_finished(
    tmp_path, base, tokenizer, capsys
):
    data = tmp_path / "sft.jsonl"
    shutil.copy(REPO / "recipes" / "tiny" / "post_training" / "sft_user.jsonl", data)
    out = tmp_path / "sft"
    recipe = _recipe(tmp_path, "sft", model_name_or_path=str(base), dataset_path=str(data), output_dir=str(out))
    assert cli_main(["sft", "--config", recipe]) == 0
    assert json.loads((out / "fingerprint.json").read_text())["recipe"]["stage"] == "sft"
    # The run as a kill after its last checkpoint leaves it: checkpoints, no final/ export.
    shutil.rmtree(out / "final")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    capsys.readouterr()

    before = _sandbox(tmp_path)
    err = _refused(capsys, ["sft", "--config", recipe, "--set", "learning_rate=0.01"])
    assert "holds an sft run of another recipe or inputs" in err and "recipe.learning_rate: 0.001 -> 0.01" in err
    assert _sandbox(tmp_path) == before

    other = tmp_path / "other-model"
    tiny_causal_lm(1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    capsys.readouterr()
    before = _sandbox(tmp_path)
    err = _refused(capsys, ["sft", "--config", recipe, "--set", f"model_name_or_path={other}"])
    assert f"recipe.model_name_or_path: {json.dumps(str(base))[:20]}" in err
    assert f"inputs[{base}]: {{" in err and f"inputs[{other}]: (absent) -> {{" in err
    assert _sandbox(tmp_path) == before

    original = data.read_bytes()
    data.write_bytes(original.replace(b"Blue.", b"Green."))
    before = _sandbox(tmp_path)
    err = _refused(capsys, ["sft", "--config", recipe])
    assert f"inputs[{data}]: contents changed" in err
    assert _sandbox(tmp_path) == before
    data.write_bytes(original)

    # Same recipe (where-and-how keys may change): resumes from checkpoint-2, so nothing is retrained or rewritten.
    checkpoints = {k: v for k, v in _sandbox(out).items() if k.startswith("checkpoint-")}
    assert cli_main(["sft", "--config", recipe, "--set", "logging_steps=5", "--set", "save_total_limit=3"]) == 0
    assert (out / "final" / "model.safetensors").is_file()
    assert {k: v for k, v in _sandbox(out).items() if k.startswith("checkpoint-")} == checkpoints
    capsys.readouterr()

    # Finished: the same rerun says so and trains nothing; more steps are refused with the changed key.
    before = _sandbox(tmp_path)
    assert cli_main(["sft", "--config", recipe]) == 0
    err = capsys.readouterr().err.strip()
    assert err == f"{out} holds this sft run, already finished: nothing to train (export in {out / 'final'})."
    assert _sandbox(tmp_path) == before
    err = _refused(capsys, ["sft", "--config", recipe, "--set", "max_steps=4"])
    assert "recipe.max_steps: 2 -> 4" in err and "that run is finished" in err and "never extended" in err
    assert _sandbox(tmp_path) == before


def test_dpo_rerun_with_another_beta_is_refused(tmp_path, base, capsys):
    data = tmp_path / "dpo.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in DPO_ROWS))
    out = tmp_path / "dpo"
    recipe = _recipe(
        tmp_path, "dpo", model_name_or_path=str(base), dataset_path=str(data), output_dir=str(out), max_steps=1
    )
    assert cli_main(["dpo", "--config", recipe]) == 0
    capsys.readouterr()
    before = _sandbox(tmp_path)
    err = _refused(capsys, ["dpo", "--config", recipe, "--set", "beta=0.5"])
    assert "holds a dpo run" in err and "recipe.beta: 0.1 -> 0.5" in err and "that run is finished" in err
    assert _sandbox(tmp_path) == before


def test_reward_rerun_into_an_interrupted_run_with_another_model_is_refused(tmp_path, tokenizer, capsys):
    base = tmp_path / "rm-base"
    tiny_reward_model(0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "reward"
    data = REPO / "recipes" / "tiny" / "post_training" / "preferences.jsonl"
    recipe = _recipe(
        tmp_path, "reward", model_name_or_path=str(base), dataset_path=str(data), output_dir=str(out), max_steps=1
    )
    assert cli_main(["reward", "--config", recipe]) == 0
    shutil.rmtree(out / "final")  # interrupted after checkpoint-1
    tiny_reward_model(1).save_pretrained(base)  # the same folder, other weights
    capsys.readouterr()
    before = _sandbox(tmp_path)
    err = _refused(capsys, ["reward", "--config", recipe])
    assert "holds a reward run" in err and f"inputs[{base}]: contents changed" in err
    assert "finished" not in err
    assert _sandbox(tmp_path) == before
