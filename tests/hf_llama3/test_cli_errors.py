"""One line on stderr, exit status 2 and no traceback for every anticipated error class [issue 12, finding 8].

Each error is raised by a real library call where one is cheap (yaml, safetensors, DCP, a forked rank, a
dataclass), from inside a stand-in command the dispatcher runs exactly as it runs the real ones.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_llama3 import cli
from hf_llama3.cli_errors import describe_error

# What the stand-in command raises; set by each test.
_TO_RAISE: list = []


def _raise_command(argv: list[str]) -> int:
    """Stand-in for a stage's ``main``: runs the callable a test put in ``_TO_RAISE``."""
    _TO_RAISE[0]()
    return 0


@pytest.fixture
def run_raising(monkeypatch, capsys):
    """``run_raising(fn)`` -> (exit status, stderr lines) of ``hf-llama3 boom`` where the command calls ``fn``."""
    monkeypatch.setitem(cli.COMMANDS, "boom", (f"{__name__}:_raise_command", "test"))
    monkeypatch.delenv("HF_LLAMA3_DEBUG", raising=False)

    def run(fn):
        _TO_RAISE[:] = [fn]
        status = cli.main(["boom"])
        return status, capsys.readouterr().err.splitlines()

    return run


def _raiser(err: BaseException):
    def fn():
        raise err

    return fn


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/ro/out.json"),
            "'/ro/out.json': Permission denied (EACCES)",
        ),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "read-only"),
        (OSError(errno.ENOSPC, "No space left on device", "/full/shard.bin"), "'/full/shard.bin'"),
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (OSError(errno.EFBIG, "File too large", "/big/x"), "size limit"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "out"), "'out': Is a directory (EISDIR)"),
        (OSError("Can't load tokenizer for 'x'"), "Can't load tokenizer for 'x'"),
        (KeyError("LineDeduplicator"), "missing key 'LineDeduplicator'"),
    ],
)
def test_os_and_key_errors_are_one_line(run_raising, err, expected):
    status, lines = run_raising(_raiser(err))
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("hf-llama3 boom: error: ") and expected in lines[0]


def test_real_is_a_directory_error_names_the_destination(run_raising, tmp_path):
    """``--output`` given a folder: the rename of the atomic write fails; the user's path is named, not the temp."""
    from evaluation.io import write_json

    (tmp_path / "report.json").mkdir()
    status, lines = run_raising(lambda: write_json(tmp_path / "report.json", {"a": 1}))
    assert status == 2 and len(lines) == 1
    assert f"'{tmp_path / 'report.json'}': Is a directory (EISDIR)" in lines[0] and ".tmp" not in lines[0]


@dataclass
class _Config:
    lr: float
    steps: int = 1

    def __post_init__(self):
        if self.lr <= 0:  # a YAML string here raises TypeError: '<=' not supported between 'str' and 'int'
            raise ValueError("lr must be > 0")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"lr": 1e-3, "stpes": 2}, "unexpected keyword argument 'stpes'"),
        ({}, "missing 1 required"),
        ({"lr": "1e-3"}, "not supported"),
    ],
)
def test_type_errors_from_config_construction(run_raising, kwargs, expected):
    status, lines = run_raising(lambda: _Config(**kwargs))
    assert status == 2 and len(lines) == 1
    assert "invalid configuration" in lines[0] and expected in lines[0]


def test_yaml_syntax_error_has_file_line_and_column(run_raising, tmp_path):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  layers: 4\n  heads: [8, 16\nlr: 3e-4\n")

    def load():
        with open(recipe) as handle:
            yaml.safe_load(handle)

    status, lines = run_raising(load)
    assert status == 2 and len(lines) == 1
    assert f"{recipe}:4:" in lines[0] and "YAML syntax error" in lines[0]


def test_truncated_safetensors_names_the_file(run_raising, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:1000])
    status, lines = run_raising(lambda: load_file(path))
    assert status == 2 and len(lines) == 1
    assert str(path) in lines[0] and "truncated or damaged" in lines[0]


class _Payload:
    """Unpickling this would create ``marker``: what a crafted DCP ``.metadata`` can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_refused_dcp_metadata_is_one_line(run_raising, tmp_path):
    """DCP raises CheckpointException, a BaseException; the first failure is printed, the payload never runs."""
    import torch
    import torch.distributed.checkpoint as dcp

    from training.parallel.safe_reader import SafeFileSystemReader

    marker = tmp_path / "pwned"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))

    def load():
        dcp.load({"w": torch.zeros(2)}, storage_reader=SafeFileSystemReader(tmp_path / "ckpt"))

    status, lines = run_raising(load)
    assert status == 2 and len(lines) == 1, lines
    assert "checkpoint failed on rank 0" in lines[0] and "refusing to load it" in lines[0]
    assert not marker.exists()


def test_checkpoint_exception_reports_the_lowest_failing_rank():
    from torch.distributed.checkpoint.api import CheckpointException

    err = CheckpointException("load", {3: (RuntimeError("later"), None), 1: (ValueError("bad\nshape"), None)})
    assert describe_error(err) == "checkpoint failed on rank 1: ValueError: bad shape"


def test_keyboard_interrupt_exits_130(run_raising):
    status, lines = run_raising(_raiser(KeyboardInterrupt()))
    assert status == 130 and lines == ["hf-llama3 boom: interrupted"]


def test_unanticipated_errors_keep_their_traceback(run_raising):
    with pytest.raises(AttributeError):
        run_raising(_raiser(AttributeError("'NoneType' object has no attribute 'x'")))
    with pytest.raises(TypeError):  # a TypeError outside config construction is a bug
        run_raising(lambda: len(5))

    class Helper:
        def __init__(self) -> None:
            pass

    with pytest.raises(TypeError):  # a wrong call of a class that is not a config is a bug too
        run_raising(lambda: Helper(steps=1))


def test_debug_env_keeps_the_traceback(run_raising, monkeypatch):
    monkeypatch.setenv("HF_LLAMA3_DEBUG", "1")
    with pytest.raises(PermissionError):
        run_raising(_raiser(PermissionError(errno.EACCES, "Permission denied", "/ro")))


_SPAWN_SCRIPT = """
import sys, time
import torch
from hf_llama3 import cli
from training.parallel.spawn import run_local

def fails_on_rank_1(rank, world_size):
    torch.distributed.barrier()  # the group is fully up, as in a real run
    if rank == 1:
        raise ValueError("shard 7 has 3 tokens, the batch needs 8")
    time.sleep(30)  # rank 0 would wait in a collective; the launcher stops it

def command(argv):
    run_local(2, fails_on_rank_1)
    return 0

cli.COMMANDS["boom"] = ("__main__:command", "test")
sys.exit(cli.main(["boom"]))
"""


def test_error_in_a_spawned_rank_is_one_line_naming_the_rank():
    """torch.multiprocessing would print the child's stack inside its own (a ~100-line report)."""
    result = subprocess.run([sys.executable, "-c", _SPAWN_SCRIPT], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0] == "hf-llama3 boom: error: rank 1 failed: ValueError: shard 7 has 3 tokens, the batch needs 8"


def test_a_rank_killed_by_a_signal_is_one_line_naming_the_rank_and_the_signal():
    """A SIGKILLed rank (the OOM killer's signal) records nothing; torch would raise ProcessExitedException."""
    script = _SPAWN_SCRIPT.replace(
        'raise ValueError("shard 7 has 3 tokens, the batch needs 8")', "os.kill(os.getpid(), signal.SIGKILL)"
    ).replace("import sys, time", "import os, signal, sys, time")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [
        "hf-llama3 boom: error: rank 1 was killed by signal SIGKILL (out of memory? the kernel's OOM killer sends "
        "SIGKILL; see `dmesg`); the other ranks were stopped: rerun the same command to resume from the last "
        "checkpoint."
    ], result.stderr


def test_a_rank_started_by_torchrun_prints_one_line_naming_itself(tmp_path):
    """``torchrun -m training.pretrain.cli``: each failing rank prints the line `hf-llama3` would, with its rank."""
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2"}
    missing = tmp_path / "missing.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "training.pretrain.cli", "--config", str(missing)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("training.pretrain.cli (rank 1): error: ") and str(missing) in lines[0]
