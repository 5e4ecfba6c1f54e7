"""`hf-llama3 guard` argument errors: one line on stderr, exit status 2 (no training needed)."""

from __future__ import annotations

from hf_llama3.cli import main


def test_guard_usage_and_config_errors(tmp_path, capsys):
    assert main(["guard"]) == 2
    assert main(["guard", "train", "--synthetic", "10", "--output-dir", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-llama3 guard: error: model_name_or_path is required")
    assert main(["guard", "train", "--model", str(tmp_path), "--output-dir", str(tmp_path / "g")]) == 2
    assert "Give dataset_path" in capsys.readouterr().err
    assert main(["guard", "classify", "--model", str(tmp_path / "nowhere"), "--text", "hi"]) == 2
    assert "is not a model folder (no config.json)" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
