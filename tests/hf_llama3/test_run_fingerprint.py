"""The shared run fingerprint (hf_llama3/run_fingerprint.py): recorded atomically at the first start, compared on
every rerun, refusals in one line with ``key: old -> new`` and how to start fresh."""

from __future__ import annotations

import json
import os

import pytest

from hf_llama3 import run_fingerprint as rf


def test_first_start_records_and_same_rerun_passes(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello")
    fingerprint = rf.make_fingerprint({"lr": 1e-3, "stage": {"tokens": 10}}, rf.inputs_identity([data]), {"layers": 8})
    rf.check_fingerprint(tmp_path / "run", fingerprint)
    stored = json.loads((tmp_path / "run" / rf.FINGERPRINT).read_text())
    assert stored["inputs"][str(data)]["sha256"] and stored["model"] == {"layers": 8}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [rf.FINGERPRINT]  # no temp file left
    rf.check_fingerprint(tmp_path / "run", fingerprint)  # the same run again: fine


def test_written_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = rf.write_fingerprint(tmp_path, rf.make_fingerprint({}, {}))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_mismatch_lists_every_change_in_one_line(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello")
    rf.check_fingerprint(
        tmp_path, rf.make_fingerprint({"stage": {"tokens": 10}}, rf.inputs_identity([data]), {"n": 8})
    )
    data.write_text("HELLO")  # same size, other contents
    new = rf.make_fingerprint({"stage": {"tokens": 20}, "extra": True}, rf.inputs_identity([data]), {"n": 4})
    with pytest.raises(ValueError) as error:
        rf.check_fingerprint(tmp_path, new, what="a demo run", fresh="use another output folder")
    message = str(error.value)
    assert "\n" not in message and message.endswith(": use another output folder.")
    for change in ("recipe.stage.tokens: 10 -> 20", "recipe.extra: (absent) -> true", "model.n: 8 -> 4"):
        assert change in message
    assert f"inputs[{data}]: contents changed" in message


def test_large_files_are_identified_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(rf, "HASH_LIMIT", 4)
    big = tmp_path / "big.bin"
    big.write_bytes(b"0123456789")
    identity = rf.file_identity(big, hash_limit=4)
    assert set(identity) == {"size", "mtime_ns"} and identity["size"] == 10
    assert set(rf.file_identity(big)) == {"size", "sha256"}  # the default limit hashes small files


def test_folders_missing_paths_and_hidden_files(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    (tmp_path / "in" / ".hidden").write_text("x")
    identities = rf.inputs_identity([tmp_path / "in", tmp_path / "gone.txt"])
    assert list(identities) == [str(tmp_path / "in" / "a.txt"), str(tmp_path / "gone.txt")]
    assert identities[str(tmp_path / "gone.txt")] == "missing"


def test_a_corrupt_fingerprint_is_a_one_line_error(tmp_path):
    (tmp_path / rf.FINGERPRINT).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        rf.check_fingerprint(tmp_path, rf.make_fingerprint({}, {}))
