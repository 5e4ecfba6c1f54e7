"""Turning the errors a user can cause into one line for ``hf-llama3 <command>: error: ...``.

:func:`describe_error` returns that line for every anticipated error class (bad input, bad config, full disk,
a damaged checkpoint, a rank that failed) and ``None`` for anything else, which the CLI lets through with its
traceback: an unanticipated error is a bug, and its stack is what a bug report needs. Optional libraries
(yaml, safetensors, torch) are recognised without importing them: the CLI must stay cheap to start.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from huggingface_hub.errors import StrictDataclassError


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 2, no traceback."""


class RankFailedError(CLIError):
    """A spawned rank raised: carries the first failing rank, its exception and its traceback (for debugging)."""

    def __init__(self, rank: int, error_type: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"rank {rank} failed: {error_type}: {message}")
        self.rank, self.error_type, self.message, self.traceback_text = rank, error_type, message, traceback_text


class RankKilledError(CLIError):
    """A spawned rank died without raising (killed by a signal, or exited on its own): it could record nothing.

    SIGKILL is what the kernel's out-of-memory killer sends, so the line says so; rerunning the same command resumes
    from the last checkpoint.
    """

    def __init__(self, rank: int, signal_name: str | None = None, exit_code: int | None = None) -> None:
        if signal_name:
            how = f"was killed by signal {signal_name}"
            if signal_name == "SIGKILL":
                how += " (out of memory? the kernel's OOM killer sends SIGKILL; see `dmesg`)"
        else:
            how = f"exited with status {exit_code} without reporting an error"
        super().__init__(
            f"rank {rank} {how}; the other ranks were stopped: rerun the same command to resume "
            "from the last checkpoint."
        )
        self.rank, self.signal_name, self.exit_code = rank, signal_name, exit_code


# Errors whose message is already written for the user (bad config, bad checkpoint, bad dataset).
USER_ERRORS = (CLIError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, StrictDataclassError)

# errno -> what the user can do about it.
_OS_HINTS = {
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.EROFS: "the filesystem is read-only: choose another output path",
    errno.ENOSPC: "the disk is full: free space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output folder",
    errno.EFBIG: "the file exceeds the size limit of this filesystem or process: choose another output folder",
    errno.EISDIR: "this names a folder where a file is expected: give a file path",
    errno.ENOTDIR: "a part of this path is a file where a folder is expected",
}

# Config construction: a config class (``...Config``, ``...Recipe``, ``...Arguments``) called with keys it does not
# have, or without a required one: what a recipe's keys do when they reach the constructor unchecked.
_CONSTRUCTOR_TYPE_ERROR = re.compile(
    r"(Config|Recipe|Arguments)\w*\.__init__\(\) (got an unexpected keyword|missing \d+ required)"
)


def one_line(text: str) -> str:
    """Collapse a multi-line message into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _is_instance_of(err: BaseException, module_prefix: str, names: set[str]) -> bool:
    """Whether ``err``'s class (or a base) is named ``names`` in a module under ``module_prefix``."""
    return any(cls.__name__ in names and cls.__module__.startswith(module_prefix) for cls in type(err).__mro__)


def describe_os_error(err: OSError) -> str:
    """``path: errno text (ENAME): what to do``, or the message itself for an OSError raised with a sentence."""
    if err.errno is None or err.strerror is None:
        return one_line(str(err))
    # A failed rename names (temp, destination): the destination is the path the user gave.
    path = err.filename2 if err.filename2 is not None else err.filename
    where = repr(str(path)) if path is not None else ""
    name = errno.errorcode.get(err.errno, str(err.errno))
    text = f"{where}: {err.strerror} ({name})" if where else f"{err.strerror} ({name})"
    hint = _OS_HINTS.get(err.errno)
    return f"{text}; {hint}." if hint else text


def _project_frames(err: BaseException) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(err.__traceback__) if "site-packages" not in f.filename]


def _is_config_type_error(err: TypeError) -> bool:
    """A TypeError raised while building a config: bad keys or types from YAML/flags, not a bug in our code."""
    if _CONSTRUCTOR_TYPE_ERROR.search(str(err)):
        return True
    frames = _project_frames(err)
    if not frames:
        return False
    last = frames[-1]
    # Raised inside a config's validation (``__post_init__`` compares a YAML string with a number, say) or in a
    # dataclass's generated ``__init__`` (file "<string>"). A TypeError anywhere else is a bug: keep its traceback.
    return last.name == "__post_init__" or (last.name == "__init__" and last.filename == "<string>")


def _safetensors_file(err: BaseException) -> str | None:
    """The ``.safetensors`` path a loader was reading when ``err`` was raised (from the frames' locals)."""
    tb, found = err.__traceback__, None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)) and str(value).endswith(".safetensors"):
                found = str(value)
        tb = tb.tb_next
    return found


def describe_checkpoint_exception(err: BaseException) -> str:
    """torch DCP's ``CheckpointException``: the first failing rank's error, in one line."""
    failures = getattr(err, "failures", None) or {}
    if not failures:
        return f"checkpoint failed: {one_line(err.args[0] if err.args else err)}"
    rank = min(failures)
    failure = failures[rank]
    cause = failure[0] if isinstance(failure, tuple) else failure
    return f"checkpoint failed on rank {rank}: {type(cause).__name__}: {one_line(cause)}"


def describe_yaml_error(err: BaseException) -> str:
    """``file:line:column: YAML syntax error: problem`` (the mark is 0-based in yaml)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or one_line(err)
    context = getattr(err, "context", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
    return f"{where}YAML syntax error: {problem}" + (f" ({context})" if context else "")


def _describe_process_raised(err: BaseException) -> str:
    """torch.multiprocessing's ``ProcessRaisedException``: its message is the child's whole traceback."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    rank = getattr(err, "error_index", "?")
    return f"rank {rank} failed: {lines[-1].strip() if lines else 'unknown error'}"


def describe_error(err: BaseException) -> str | None:
    """The one line to show for an anticipated error, or None to let it through with its traceback."""
    if isinstance(err, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        return None
    if _is_instance_of(err, "torch.distributed.checkpoint", {"CheckpointException"}):
        return describe_checkpoint_exception(err)
    if _is_instance_of(err, "torch.multiprocessing", {"ProcessRaisedException"}):
        return _describe_process_raised(err)
    if "yaml" in sys.modules and isinstance(err, sys.modules["yaml"].YAMLError):
        return describe_yaml_error(err)
    if _is_instance_of(err, "safetensors", {"SafetensorError"}):
        path = _safetensors_file(err)
        where = f"{path}: " if path else ""
        return f"{where}cannot read safetensors ({one_line(err)}); the file is truncated or damaged: copy it again."
    if isinstance(err, OSError):  # read-only folder, full disk, a folder given as a file; our own FileNotFoundErrors
        return describe_os_error(err)
    if isinstance(err, USER_ERRORS):
        return one_line(err)
    if isinstance(err, KeyError):
        key = err.args[0] if err.args else "?"
        return key if isinstance(key, str) and " " in key else f"missing key {key!r}"
    if isinstance(err, TypeError) and _is_config_type_error(err):
        return f"invalid configuration: {one_line(err)}"
    return None


@contextlib.contextmanager
def _one_line_argparse_errors() -> Iterator[None]:
    """argparse prints a usage block above its error; keep the error line alone and point at ``--help`` instead.

    Every command builds its own ``ArgumentParser``, so the method is swapped on the class for the duration of one
    command (and restored), rather than asking each of them to subclass.
    """
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run_entry_point(prog: str, run: Callable[[], int | None]) -> int:
    """Run a command and turn what it raises into the exit status and stderr line the user should see.

    Used by ``hf-llama3`` and by the modules that ``torchrun -m`` starts directly (each rank then prints its own
    line). Anticipated errors become ``<prog>: error: <one line>`` and status 2; anything else is a bug and keeps its
    traceback. ``HF_LLAMA3_DEBUG=1`` keeps the traceback for every error.
    """
    try:
        with _one_line_argparse_errors():
            return int(run() or 0)
    except KeyboardInterrupt:
        # An interrupt is the user's choice, not an error: one line and the shell's status for SIGINT.
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BaseException as err:  # DCP's CheckpointException derives from BaseException
        message = describe_error(err)
        if message is None:
            raise
        if os.environ.get("HF_LLAMA3_DEBUG"):
            if isinstance(err, RankFailedError) and err.traceback_text:
                print(err.traceback_text, file=sys.stderr)  # the failing rank's own stack
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
