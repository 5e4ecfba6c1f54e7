"""Bad inputs to the post-training stages through ``hf-llama3 <stage>``: one line naming the file, row and field,
exit status 2, and no output folder (empty file, malformed JSON line, missing checkpoint, unknown role, a file in
another stage's format)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_llama3 import Llama3Config
from hf_llama3.cli import main as cli_main

PREFERENCE = {
    "prompt": [{"role": "user", "content": "Name a planet."}],
    "chosen": [{"role": "assistant", "content": "Mars."}],
    "rejected": [{"role": "assistant", "content": "A banana."}],
}
DIALOG = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# stage, file content (rows; a str is written as-is), what the one line must say ({data} is the file's path)
CASES = {
    "empty_file": ("reward", [], "{data}: the file is empty"),
    "malformed_json_line": (
        "dpo",
        [DIALOG, '{"messages": [{"role": "user", "content": "Hi"}'],
        "{data}: line 2: malformed JSON",
    ),
    "unknown_role_sft": (
        "sft",
        [DIALOG, {"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}],
        "{data}: 1 bad row(s): row 1: messages: message 0 has unknown role 'robot'",
    ),
    "unknown_role_dpo": (
        "dpo",
        [PREFERENCE, {**PREFERENCE, "prompt": [{"role": "customer", "content": "Hi"}]}],
        "{data}: 1 bad row(s): row 1: prompt: message 0 has unknown role 'customer'",
    ),
    "sft_rows_to_dpo": ("dpo", [DIALOG], "{data}: columns ['messages'] are not preference rows (these are SFT rows"),
    "preference_rows_to_sft": ("sft", [PREFERENCE], "(these are preference rows: give them to `hf-llama3 dpo`"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A model folder with only its config: every error below is raised before any weight loads."""
    folder = tmp_path_factory.mktemp("model")
    Llama3Config.from_preset("tiny").save_pretrained(folder)
    return folder


def _run(stage: str, tmp_path: Path, capsys, **values) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    recipe = {"output_dir": str(out), "bf16": False, "use_cpu": True, "report_to": "none", **values}
    sets = [f"--set={key}={json.dumps(value)}" for key, value in recipe.items()]
    status = cli_main([stage, *sets])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # Library warnings may print too; the command's own report is the one line it starts.
    return status, "\n".join(line for line in err.splitlines() if line.startswith("hf-llama3 ")), out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_line_exit_2_nothing_written(case, tmp_path, capsys, checkpoint, monkeypatch):
    monkeypatch.delenv("HF_LLAMA3_DEBUG", raising=False)
    stage, rows, expected = CASES[case]
    data = _jsonl(tmp_path / "data.jsonl", rows)
    status, err, out = _run(stage, tmp_path, capsys, model_name_or_path=str(checkpoint), dataset_path=str(data))
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hf-llama3 {stage}: error: "), err
    assert expected.format(data=data) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("stage", ["reward", "sft", "dpo"])
def test_missing_checkpoint_names_the_folder(stage, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_LLAMA3_DEBUG", raising=False)
    data = _jsonl(tmp_path / "data.jsonl", [DIALOG if stage == "sft" else PREFERENCE])
    missing = tmp_path / "runs" / "sft" / "final"
    status, err, out = _run(stage, tmp_path, capsys, model_name_or_path=str(missing), dataset_path=str(data))
    assert status == 2
    assert err.strip() == (
        f"hf-llama3 {stage}: error: model_name_or_path: checkpoint folder {str(missing)!r} does not exist; "
        "give the folder of a saved model."
    )
    assert "Repo id" not in err and not out.exists()
