"""Issue 12, finding 1 and build items 1 and 4: `--overwrite` / `--clean` delete only folders hf-llama3 created,
never the command's inputs, the working directory, the home folder or a root; temp folders never outlive a failure;
outputs get the umask's permissions; one run per output folder.

Each scenario runs the real CLI in a sandbox (``tmp_path``) and compares a listing of the whole sandbox before and
after, so a test fails if anything outside the command's own output changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_llama3 import Llama3ForCausalLM
from hf_llama3.checkpoint_io import atomic_output_dir, atomic_output_file
from hf_llama3.cli import main as cli_main
from hf_llama3.convert import convert_checkpoint
from hf_llama3.output_folder import (
    MARKER_NAME,
    OutputFolderError,
    check_replaceable,
    create_output_dir,
    refusal_reason,
    remove_output_dir,
)
from hf_llama3.output_lock import OutputLockedError, lock_path, output_lock
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
CORPUS_LINES = ["the quick brown fox jumps over the lazy dog", "def main():\n    return 0", "Llama 3 tokenizers"] * 50


def listing(root: Path) -> dict[str, str]:
    """Every entry under ``root``: folders as ``dir``, links as their target, files as a content hash."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A tiny model in our format, saved once (copied into each sandbox)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "model"
    Llama3ForCausalLM(tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture
def sb1(tmp_path, model_folder) -> Path:
    """Finding 1's first sandbox: a model beside the user's notes and another project."""
    sb = tmp_path / "sb1"
    (sb / "other_project").mkdir(parents=True)
    (sb / "other_project" / "main.py").write_text("print('precious')\n")
    (sb / "notes.txt").write_text("my notes\n")
    (sb / "model").mkdir()
    for f in model_folder.iterdir():
        (sb / "model" / f.name).write_bytes(f.read_bytes())
    return sb


def test_convert_refuses_to_overwrite_the_parent_of_its_source(sb1, tmp_path, capsys):
    before = listing(tmp_path)
    assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), str(sb1), "--overwrite"]) == 2
    err = one_line_error(capsys)
    assert f"refusing to delete {sb1} for --overwrite" in err
    assert "it contains the command's input" in err and "choose a new output folder" in err
    assert listing(tmp_path) == before
    assert (sb1 / "notes.txt").read_text() == "my notes\n" and (sb1 / "other_project" / "main.py").is_file()


def test_convert_refuses_a_folder_it_did_not_create(sb1, tmp_path, capsys):
    before = listing(tmp_path)
    assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), str(sb1 / "other_project"), "--overwrite"]) == 2
    err = one_line_error(capsys)
    assert "not created by hf-llama3" in err and "Remove it yourself" in err
    assert listing(tmp_path) == before


def test_convert_refuses_the_working_directory_and_its_ancestors(sb1, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(sb1 / "other_project")
    before = listing(tmp_path)
    assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), ".", "--overwrite"]) == 2
    assert "it is the working directory" in one_line_error(capsys)
    assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), str(tmp_path), "--overwrite"]) == 2
    assert "it contains the working directory" in one_line_error(capsys)
    assert listing(tmp_path) == before


def test_convert_rerun_into_its_own_output_still_works(sb1, tmp_path, capsys):
    out = tmp_path / "exports" / "llama"
    assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), str(out)]) == 0
    assert (out / MARKER_NAME).is_file()
    (out / "stale.txt").write_text("from the previous run")
    outside = {k: v for k, v in listing(tmp_path).items() if not k.startswith("exports")}
    assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert {k: v for k, v in listing(tmp_path).items() if not k.startswith("exports")} == outside
    assert sorted(p.name for p in out.parent.iterdir()) == ["llama"]  # no temp, old or lock entries left


def test_tokenizer_train_refuses_the_folder_holding_its_corpus(tmp_path, capsys):
    fh = tmp_path / "fh"
    fh.mkdir()
    (fh / "corpus.txt").write_text("\n".join(CORPUS_LINES) + "\n")
    (fh / "unrelated.txt").write_text("keep me\n")
    before = listing(tmp_path)
    args = ["tokenizer", "train", "--input", str(fh / "corpus.txt"), "--output", str(fh), "--overwrite"]
    assert cli_main([*args, "--vocab-size", "300"]) == 2
    err = one_line_error(capsys)
    assert f"refusing to delete {fh} for --overwrite: it contains the command's input" in err
    assert listing(tmp_path) == before


def test_tokenizer_output_permissions_and_rerun(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS_LINES) + "\n")
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--input", str(corpus), "--output", str(out), "--vocab-size", "300"]
    old_umask = os.umask(0o022)
    try:
        assert cli_main(args) == 0
        assert cli_main([*args, "--overwrite"]) == 0  # a folder it created: replaced
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # was 0700 from mkdtemp
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tok"]


def test_demo_clean_refuses_the_home_folder(tmp_path):
    """``demo --output-dir <HOME> --clean`` in a subprocess whose HOME is a sandbox folder."""
    home = tmp_path / "home"
    (home / "documents").mkdir(parents=True)
    (home / "documents" / "thesis.tex").write_text("years of work\n")
    (home / ".bashrc").write_text("export PATH\n")
    before = listing(tmp_path)
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_llama3.cli", "demo", "--output-dir", str(home), "--clean"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert f"refusing to delete {home} for --clean: it is your home folder" in err
    assert listing(tmp_path) == before


def test_demo_clean_refuses_an_unmarked_folder_and_cleans_its_own(tmp_path, capsys):
    from training.demo import run_demo

    folder = tmp_path / "old_demo"
    folder.mkdir()
    (folder / "results.txt").write_text("written before markers existed\n")
    before = listing(tmp_path)
    with pytest.raises(OutputFolderError, match="not created by hf-llama3"):
        run_demo(folder, clean=True)
    assert listing(tmp_path) == before
    # What `demo --clean` does to a folder an earlier demo created: removed, then created and marked again.
    ours = create_output_dir(tmp_path / "demo_output", command="hf-llama3 demo")
    (ours / "tiny-model").mkdir()
    remove_output_dir(ours, option="--clean")
    assert not ours.exists()


def test_roots_and_mount_points_are_never_replaceable(tmp_path):
    assert refusal_reason("/") == "it is a filesystem root"
    marked = create_output_dir(tmp_path / "marked")
    assert refusal_reason(marked) is None
    assert "contains the command's input" in refusal_reason(marked, inputs=[marked / "data.txt"])
    assert refusal_reason(marked, inputs=[marked]) == f"it is the command's input {marked}"
    link = tmp_path / "link"
    link.symlink_to(marked, target_is_directory=True)
    assert "symbolic link" in refusal_reason(link)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        check_replaceable(tmp_path / "file")
    # An empty folder holds nothing to lose (a step runner creates the folder its writer fills), unless protected.
    (tmp_path / "empty").mkdir()
    assert refusal_reason(tmp_path / "empty") is None
    assert refusal_reason(tmp_path / "empty", inputs=[tmp_path / "empty"]) is not None
    # An existing folder is used, never marked: marking it would later let --clean delete it.
    (tmp_path / "users").mkdir()
    create_output_dir(tmp_path / "users")
    assert not (tmp_path / "users" / MARKER_NAME).exists()


def test_failed_rename_leaves_no_temp_folder_and_keeps_the_old_output(sb1, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert_checkpoint(sb1 / "model", out, "llama")
    before = listing(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".out.tmp-") or Path(src).name.startswith(".fresh.tmp-"):  # the final rename
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(sb1 / "model", out, "llama", overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert listing(tmp_path) == before  # no .tmp-*, .old-* or lock entries; the previous output is back
    with pytest.raises(OSError, match="No space left"):
        monkeypatch.setattr(os, "replace", failing_replace)
        convert_checkpoint(sb1 / "model", tmp_path / "fresh", "llama")
    monkeypatch.setattr(os, "replace", real_replace)
    assert listing(tmp_path) == before


def test_error_in_the_writer_leaves_nothing(tmp_path):
    before = listing(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), atomic_output_file(tmp_path / "out.json") as tmp:
        tmp.write_text("{")
        raise RuntimeError("boom")
    assert listing(tmp_path) == before


def test_atomic_outputs_follow_the_umask(sb1, tmp_path):
    old_umask = os.umask(0o022)
    try:
        convert_checkpoint(sb1 / "model", tmp_path / "llama", "llama")
        with atomic_output_file(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
        os.umask(0o027)
        with atomic_output_file(tmp_path / "private.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "llama").stat().st_mode) == 0o755
    for path in (tmp_path / "llama").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644  # mkstemp made it 0600
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o640


def test_truncated_safetensors_is_never_installed(tmp_path):
    from hf_llama3.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match="truncated"), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "model.safetensors").write_bytes((100).to_bytes(8, "little") + b"{}")
    assert list(tmp_path.iterdir()) == []


def test_second_writer_into_a_locked_output_is_refused(sb1, tmp_path, capsys):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputLockedError), output_lock(out):
            pass
        assert cli_main(["convert", "--to", "llama", str(sb1 / "model"), str(out)]) == 2
        assert f"{out} is in use by another run" in one_line_error(capsys)
    assert not out.exists() and not lock_path(out).exists()
    with output_lock(out):  # released: free again
        pass


def test_nested_writer_may_replace_its_staging_folder(sb1, tmp_path):
    """The guard export and round averaging fill a staging folder with another atomic writer (overwrite=True)."""
    before = listing(tmp_path)
    with atomic_output_dir(tmp_path / "guard", overwrite=True) as staging:
        convert_checkpoint(sb1 / "model", staging, "llama", overwrite=True)
        (staging / "guard.json").write_text("{}")
    names = {p.name for p in (tmp_path / "guard").iterdir()}
    assert {"model.safetensors", "config.json", "guard.json", MARKER_NAME} <= names
    after = listing(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("guard")} == before
