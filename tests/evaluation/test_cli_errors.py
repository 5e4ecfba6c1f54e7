"""Bad arguments and bad inputs of `eval` / `scaling-law` end as exit status 2 and a line naming the culprit,
before any model runs [issue 12, finding 8 and the `eval needle` output folder]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.cli import main as cli_main


def _error(capsys) -> str:
    """The stderr of the last command: one line, no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--alpha", "nan"), ("--alpha", "inf"), ("--A", "-inf"), ("--A", "NaN"), ("--compute", "nan"), ("--alpha", "0")],
)
def test_forecast_refuses_non_finite_or_non_positive_numbers(capsys, flag, value):
    args = {"--alpha": "0.53", "--A": "0.29", "--compute": "3.8e25"} | {flag: value}
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["scaling-law", "forecast", *[f"{key}={item}" for key, item in args.items()]])  # "-inf" as a value
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no NaN printed as JSON
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"argument {flag}" in lines[0] and value in lines[0]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_benchmarks_refuses_batch_size_below_one(tmp_path, capsys, value):
    args = ["eval", "benchmarks", "--model", "m", "--output-dir", str(tmp_path), "--batch-size", value]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    assert "argument --batch-size: must be >= 1" in _error(capsys)


@pytest.mark.parametrize("answer", [2, -1, "0", True])
def test_benchmark_answer_out_of_range_is_a_data_error(tmp_path, capsys, answer):
    """An answer that is not an index into its choices used to be scored as a wrong answer."""
    rows = [{"question": "1 plus one is", "choices": ["2", "8"], "answer": 0}]
    rows.append({"question": "2 plus one is", "choices": ["3", "9"], "answer": answer})
    data = tmp_path / "plus_one.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", "benchmarks", "--model", str(tmp_path / "never_loaded"), "--multiple-choice", str(data)]
    assert cli_main([*args, "--output-dir", str(tmp_path / "out")]) == 2
    line = _error(capsys)
    assert f"{data}:2:" in line and "'answer'" in line and "2 choices" in line


@pytest.fixture(scope="module")
def truncated_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truncated")
    torch.manual_seed(0)
    Llama3ForCausalLM(Llama3Config.from_preset("tiny")).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def test_needle_on_truncated_safetensors_names_the_file(truncated_checkpoint, tmp_path, capsys):
    args = ["eval", "needle", "--model", str(truncated_checkpoint), "--lengths", "64", "--output-dir", str(tmp_path)]
    assert cli_main(args) == 2
    line = _error(capsys)
    assert str(truncated_checkpoint / "model.safetensors") in line and "truncated" in line and "again" in line


def test_benchmarks_on_truncated_safetensors_names_the_file(truncated_checkpoint, tmp_path, capsys):
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1}) + "\n")
    args = ["eval", "benchmarks", "--model", str(truncated_checkpoint), "--multiple-choice", str(data)]
    assert cli_main([*args, "--output-dir", str(tmp_path / "out")]) == 2
    assert str(truncated_checkpoint / "model.safetensors") in _error(capsys)


def test_needle_checks_its_output_folder_before_evaluating(tmp_path, capsys):
    """The model path does not exist: had the evaluation started, the error would be about the model."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "needle.json").write_text("{}")
    args = ["eval", "needle", "--model", str(tmp_path / "no_model"), "--lengths", "64", "--output-dir", str(out)]
    assert cli_main(args) == 2
    line = _error(capsys)
    assert "needle.json" in line and "--overwrite" in line
    assert (out / "needle.json").read_text() == "{}"
    assert cli_main([*args, "--overwrite"]) == 2  # now the (missing) model is what stops it
    assert "no_model" in _error(capsys)

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args[-1] = str(a_file)
    assert cli_main(args) == 2
    assert "is a file, not a folder" in _error(capsys)


def test_needle_refuses_an_unwritable_output_folder_first(tmp_path, capsys, monkeypatch):
    """A read-only folder (simulated: the suite may run as root, which writes anywhere) fails before the model."""
    real_write_bytes = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-probe"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    args = ["eval", "needle", "--model", str(tmp_path / "no_model"), "--lengths", "64"]
    assert cli_main([*args, "--output-dir", str(tmp_path / "ro")]) == 2
    line = _error(capsys)
    assert "Permission denied (EACCES)" in line and str(tmp_path / "ro") in line


@pytest.mark.parametrize(
    ("flag", "value"), [("--lengths", "0"), ("--depths", "1.5"), ("--trials", "-3"), ("--min-score", "nan")]
)
def test_needle_refuses_meaningless_numbers(tmp_path, capsys, flag, value):
    args = {"--model": "m", "--lengths": "64", "--output-dir": str(tmp_path)} | {flag: value}
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "needle", *[f"{key}={item}" for key, item in args.items()]])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in _error(capsys)
