"""`train-quality fasttext` writes a model only when it is complete, and `curate` refuses a cut-short one
[issue 12, finding 5]. A full disk is simulated with a file-size limit (RLIMIT_FSIZE): Python ignores SIGXFSZ, so
fastText's writes fail with EFBIG exactly as they fail with ENOSPC, and its save returns as if nothing happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.fasttext_io import check_file, load_checked
from data.quality import QualityConfig, train_fasttext_classifier
from hf_llama3.cli import main as cli_main
from tests.data.test_quality import prose_docs, spam_docs

BUCKETS = "100000"  # a ~40 MB model instead of fastText's ~800 MB (fewer buckets: diverges now and then)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("quality_inputs")
    paths = []
    for name, texts in (("pos.jsonl", prose_docs()[:100]), ("neg.jsonl", spam_docs(100))):
        path = folder / name
        path.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts)))
        paths.append(str(path))
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("quality_model") / "quality.bin"
    train_fasttext_classifier(prose_docs()[:100], spam_docs(100), path, epochs=2, buckets=int(BUCKETS))
    return path


def _train_args(inputs, output) -> list[str]:
    positives, negatives = inputs
    return ["train-quality", "fasttext", "--positives", positives, "--negatives", negatives, "--output", str(output)]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_written_model_passes_the_check_and_loads(model_path):
    check_file(model_path)
    assert {"__label__hq", "__label__lq"} == set(load_checked(model_path).get_labels())


@pytest.mark.parametrize("keep", [0, 10, 1000, "half", "all_but_one"])
def test_truncated_model_is_refused_naming_the_file(model_path, tmp_path, keep):
    data = model_path.read_bytes()
    cut = {"half": len(data) // 2, "all_but_one": len(data) - 1}.get(keep, keep)
    damaged = tmp_path / "quality.bin"
    damaged.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=f"{damaged} is truncated"):
        check_file(damaged)
    with pytest.raises(ValueError, match="truncated"):
        load_checked(damaged)
    # what `curate` builds from a recipe's `quality.fasttext_model`: refused before any document is read
    with pytest.raises(ValueError, match=f"{damaged} is truncated"):
        QualityConfig(fasttext_model=str(damaged))


def test_full_disk_is_reported_and_nothing_is_kept(inputs, tmp_path):
    """Under a 2 MB file-size limit the ~40 MB model cannot be written: exit 2, one line, no file left behind."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))\n"
        "from hf_llama3.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    output = tmp_path / "out" / "quality.bin"
    args = [*_train_args(inputs, output), "--buckets", BUCKETS, "--epochs", "2"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("hf-llama3 train-quality: error: could not write") and str(output) in lines[0]
    assert "disk full" in lines[0] and result.stdout == ""  # no success line
    assert list(output.parent.iterdir()) == []  # neither the model nor its temporary file


def test_existing_model_is_kept_without_overwrite(inputs, model_path, tmp_path, capsys):
    output = tmp_path / "quality.bin"
    output.write_bytes(model_path.read_bytes())
    before = output.read_bytes()
    args = [*_train_args(inputs, output), "--buckets", BUCKETS, "--epochs", "2"]
    assert cli_main(args) == 2
    line = _error(capsys)
    assert str(output) in line and "--overwrite" in line
    assert output.read_bytes() == before
    assert cli_main([*args, "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(output)
    check_file(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quality.bin"]  # no temporary file left


def test_output_that_is_a_folder_is_refused(inputs, tmp_path, capsys):
    assert cli_main([*_train_args(inputs, tmp_path), "--buckets", BUCKETS]) == 2
    line = _error(capsys)
    assert str(tmp_path) in line and "is a folder" in line


@pytest.mark.parametrize("epochs", ["0", "-3", "two"])
def test_epochs_must_be_a_positive_integer(inputs, tmp_path, capsys, epochs):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*_train_args(inputs, tmp_path / "q.bin"), f"--epochs={epochs}"])
    assert exit_info.value.code == 2
    assert "argument --epochs" in _error(capsys)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        train_fasttext_classifier(["a b c"], ["d e f"], tmp_path / "q.bin", epochs=0)
    assert not (tmp_path / "q.bin").exists()


def test_curate_refuses_a_truncated_quality_model_before_reading(model_path, tmp_path, capsys):
    """The recipe's ``quality.fasttext_model`` cut short: one line naming it, and no output folder created."""
    damaged = tmp_path / "quality.bin"
    damaged.write_bytes(model_path.read_bytes()[:5000])
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "data" / "sample.yaml"
    args = ["curate", "--config", str(recipe), "--set", f"quality.fasttext_model={damaged}"]
    assert cli_main([*args, "--set", f"output_dir={tmp_path / 'out'}"]) == 2
    line = _error(capsys)
    assert f"{damaged} is truncated" in line
    assert not (tmp_path / "out").exists()


def test_divergence_retries_at_smaller_learning_rates():
    """fastText's "Encountered NaN" is retried at the next learning rate; diverging at all of them is one error."""
    from data.quality import FASTTEXT_LEARNING_RATES, _train_supervised

    class Diverging:  # stands in for the fasttext module: diverges above lr `stable`
        def __init__(self, stable: float):
            self.stable, self.tried = stable, []

        def train_supervised(self, **kwargs):
            self.tried.append(kwargs["lr"])
            if kwargs["lr"] > self.stable:
                raise RuntimeError("Encountered NaN.")
            return "model"

    once = Diverging(stable=0.25)
    assert _train_supervised(once, "train.txt", 2, 0, 100) == "model" and once.tried == [0.5, 0.25]
    always = Diverging(stable=0.0)
    with pytest.raises(ValueError, match="diverged at every learning rate"):
        _train_supervised(always, "train.txt", 2, 0, 100)
    assert always.tried == list(FASTTEXT_LEARNING_RATES)
