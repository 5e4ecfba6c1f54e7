"""One run per output folder for the long runs (issue 12, build item 4): ``pretrain`` and the post-training stages
hold their output folder's lock for the whole run, so a second run into it is refused at once with one line and
touches nothing; a failed pre-training export leaves no ``hf.partial`` behind."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest
import yaml

from hf_llama3.cli import main as cli_main
from hf_llama3.output_lock import OutputLockedError, lock_path, output_lock
from tests.pretrain.conftest import byte_shards  # noqa: F401  (fixture)
from tests.pretrain.test_resume_fingerprint import _one_process_recipe

REPO = Path(__file__).resolve().parents[1]


def _sandbox(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


DATA = {"sft": "sft_user.jsonl", "dpo": "preferences.jsonl", "reward": "preferences.jsonl"}


@pytest.mark.parametrize("stage", ["sft", "dpo", "reward"])
def test_a_second_post_training_run_into_a_busy_folder_is_refused(tmp_path, stage, capsys):
    out = tmp_path / "out"
    (tmp_path / "model").mkdir()  # a checkpoint folder (config only): inputs are checked before the lock is taken
    (tmp_path / "model" / "config.json").write_text("{}")
    recipe = tmp_path / f"{stage}.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tmp_path / "model"),
                "dataset_path": str(REPO / "recipes" / "tiny" / "post_training" / DATA[stage]),
                "output_dir": str(out),
                "max_steps": 1,
                "bf16": False,
                "use_cpu": True,
                "report_to": "none",
            }
        )
    )
    with output_lock(out):  # the first run, still running
        before = _sandbox(tmp_path)
        assert cli_main([stage, "--config", str(recipe)]) == 2
        err = _one_line(capsys)
        assert err == (
            f"hf-llama3 {stage}: error: {out} is in use by another run (lock {lock_path(out)} is held): wait for it to "
            "finish, or write to another output folder."
        )
        assert _sandbox(tmp_path) == before and not out.exists()


def test_a_second_pretrain_run_into_a_busy_folder_is_refused(tmp_path, byte_shards, capsys):  # noqa: F811
    out = tmp_path / "run"
    recipe = _one_process_recipe(tmp_path, byte_shards, out)
    with output_lock(out):
        before = _sandbox(tmp_path)
        assert cli_main(["pretrain", "--config", str(recipe)]) == 2
        assert "is in use by another run" in _one_line(capsys)
        assert _sandbox(tmp_path) == before and not out.exists()


def test_pretrain_holds_the_folder_lock_for_the_whole_run(tmp_path, byte_shards, monkeypatch, capsys):  # noqa: F811
    import training.pretrain.cli as pretrain_cli

    out = tmp_path / "run"
    seen = []

    def run_recipe(recipe):
        with pytest.raises(OutputLockedError), output_lock(out):  # a concurrent run, mid-training
            pass
        seen.append(lock_path(out).is_file())
        return {}

    monkeypatch.setattr(pretrain_cli, "run_recipe", run_recipe)
    assert cli_main(["pretrain", "--config", str(_one_process_recipe(tmp_path, byte_shards, out))]) == 0
    assert seen == [True] and not lock_path(out).exists()  # released (and its file removed) at the end


def test_a_failed_pretrain_export_leaves_no_partial_folder_and_a_rerun_exports(
    tmp_path,
    byte_shards,  # noqa: F811
    monkeypatch,
    capsys,
):
    import training.pretrain.cli as pretrain_cli

    out = tmp_path / "run"
    recipe = _one_process_recipe(tmp_path, byte_shards, out)
    write_model_card = pretrain_cli.write_model_card

    def disk_full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "README.md"))

    monkeypatch.setattr(pretrain_cli, "write_model_card", disk_full)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the training progress bar
    assert last == (
        f"hf-llama3 pretrain: error: '{out / 'hf.partial' / 'README.md'}': No space left on device (ENOSPC); the disk "
        "is full: free space or choose another output folder."
    )
    assert not (out / "hf.partial").exists() and not (out / "hf").exists()

    monkeypatch.setattr(pretrain_cli, "write_model_card", write_model_card)
    assert cli_main(["pretrain", "--config", str(recipe)]) == 0
    assert (out / "hf" / "model.safetensors").is_file() and not (out / "hf.partial").exists()
