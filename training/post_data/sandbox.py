"""Run untrusted Python (model-written code, the code interpreter tool) in a separate, limited process [4.3.1, 4.3.5].

Llama 3 executes model-written code twice in post-training: the solutions and unit tests of the code
execution-feedback loop [4.3.1] and the Python interpreter tool [4.3.5]. Neither may touch the machine that runs
the pipeline. :func:`run_python` runs one cell:

* in a **fresh interpreter** of this venv (``python -I -S``: no user site, no ``PYTHON*`` variables, no current
  folder on ``sys.path``), never a fork of the calling process, started in its own session so that the whole
  process group is killed on timeout or when the output limit is hit;
* in its **own temporary work folder** (``files`` copied in, ``HOME``/``TMPDIR`` pointing there), removed after;
* with **no network**: a new user + network namespace (``unshare -rn``, detected at run time) has only a down
  loopback device; where namespaces are not available the run says so (``SandboxResult.isolation`` is
  ``"audit-hook"``) and only the audit hook below refuses sockets;
* under **rlimits**: CPU seconds (``RLIMIT_CPU``; SIGXCPU ends the process), address space (``RLIMIT_AS``;
  ``MemoryError``), file size (``RLIMIT_FSIZE``), processes (``RLIMIT_NPROC``, where not root), plus a wall-clock
  timeout and a cap on stdout/stderr enforced here;
* with a PEP 578 **audit hook** (:mod:`training.post_data.sandbox_child`) that ends the run as ``forbidden``,
  naming the event, on ``open``/``listdir``/``remove``/... of paths outside the work folder (reading the Python
  installation stays allowed for imports), any ``socket.*`` event, ``fork``/``subprocess.Popen``/``posix_spawn``
  beyond ``SandboxLimits.processes``, any ``exec*``/``os.system``, signals to other processes, ``ctypes``
  loading, ``gc`` object walks and rlimit changes.

What it does not protect against: the audit hook is a tripwire that catches ordinary code (file reads, sockets,
``subprocess``), not a security boundary; CPython code can get around it (e.g. ``_posixsubprocess.fork_exec`` is
not audited, hook state can be reached through frames). The containment is the separate process, its rlimits,
the network namespace and the wall-clock kill. The process still runs as the calling user and can read files that
user can read by means the hook does not see (native extensions already installed), can fill the disk up to many
``file_bytes``-sized files, and a run as root is not bounded by ``RLIMIT_NPROC``. The outcome JSON comes through a
pipe the cell could write to, so a hostile cell can forge its own status. Use a container or VM for code from
untrusted people; this is for model-written code in a training pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "forbidden", "killed")
_CHILD = Path(__file__).with_name("sandbox_child.py")
_FORBIDDEN_EXIT = 86  # training.post_data.sandbox_child.FORBIDDEN_EXIT


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Args:
    cpu_seconds: CPU time (``RLIMIT_CPU``, rounded up to whole seconds); past it the kernel ends the process.
    wall_seconds: wall-clock time; past it the whole process group is killed.
    memory_bytes: address space (``RLIMIT_AS``); allocations past it raise ``MemoryError``.
    output_bytes: stdout and stderr are each kept up to this many bytes; more ends the run as ``output_limit``.
    file_bytes: largest file the cell may write (``RLIMIT_FSIZE``).
    processes: extra processes (fork, subprocess) the cell may start; 0 stops fork bombs at the first fork.
    site_packages: the venv's site-packages on ``sys.path`` (numpy, sympy, ... for the interpreter tool).
    """

    cpu_seconds: float = 10.0
    wall_seconds: float = 20.0
    memory_bytes: int = 512 * 2**20
    output_bytes: int = 64 * 2**10
    file_bytes: int = 10 * 2**20
    processes: int = 0
    site_packages: bool = True

    def __post_init__(self) -> None:
        for key in ("cpu_seconds", "wall_seconds", "memory_bytes", "output_bytes", "file_bytes"):
            if getattr(self, key) <= 0:
                raise ValueError(f"SandboxLimits: {key} must be > 0, got {getattr(self, key)!r}.")
        if self.processes < 0:
            raise ValueError(f"SandboxLimits: processes must be >= 0, got {self.processes!r}.")


@dataclasses.dataclass
class SandboxResult:
    """One cell's outcome.

    status: ``ok`` | ``error`` (an uncaught exception or non-zero exit) | ``timeout`` (CPU or wall clock) |
        ``memory`` | ``output_limit`` | ``forbidden`` (the audit hook refused an event) | ``killed`` (a signal).
    stdout, stderr: the cell's output, each cut at ``output_bytes``; stderr holds the traceback of an error.
    value: ``repr`` of the cell's last expression (like a notebook cell / Llama 3's ``ipython`` tool), or None.
    returncode: the interpreter's exit status (negative: the signal), None when it never started.
    detail: one line saying why (``"CPU time limit 10 s exceeded"``, ``"AssertionError: ..."``).
    isolation: ``"namespace+audit-hook"`` or ``"audit-hook"`` (no network namespace available).
    """

    status: str
    stdout: str
    stderr: str
    value: str | None
    returncode: int | None
    detail: str
    isolation: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@functools.lru_cache(maxsize=1)
def network_namespace_command() -> tuple[str, ...]:
    """``("unshare", "-rn", "--")`` when user + network namespaces work here, else ``()`` (checked once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    try:
        probe = subprocess.run([unshare, "-rn", "--", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (unshare, "-rn", "--") if probe.returncode == 0 else ()


def _read_roots(site_packages: bool) -> tuple[list[str], list[str]]:
    """(folders the cell may read for imports, site-packages folders to put on its ``sys.path``)."""
    paths = sysconfig.get_paths()
    stdlib = [paths["stdlib"], paths["platstdlib"]]
    dynload = os.path.join(paths["stdlib"], "lib-dynload")
    site = [paths["purelib"], paths["platlib"]] if site_packages else []
    roots = [os.path.realpath(p) for p in [*stdlib, dynload, *site] if os.path.isdir(p)]
    return sorted(set(roots)), list(dict.fromkeys(os.path.realpath(p) for p in site if os.path.isdir(p)))


def _copy_files(work: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"run_python: file name {name!r} must be a relative path inside the work folder.")
        target = work.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _collect(process: subprocess.Popen, result_read: int, limits: SandboxLimits) -> tuple[dict, bytes, bytes, str]:
    """Read stdout, stderr and the result pipe until the cell ends; returns (outcome, out, err, stopped_by)."""
    selector = selectors.DefaultSelector()
    buffers = {"out": bytearray(), "err": bytearray(), "result": bytearray()}
    selector.register(process.stdout, selectors.EVENT_READ, "out")
    selector.register(process.stderr, selectors.EVENT_READ, "err")
    selector.register(result_read, selectors.EVENT_READ, "result")
    deadline = time.monotonic() + limits.wall_seconds
    stopped_by = ""
    drain_until = None  # once the interpreter has exited: what its leftover processes still hold open is drained
    while selector.get_map():
        if drain_until is None and process.poll() is not None:
            _kill_group(process)
            drain_until = time.monotonic() + 1.0
        left = (drain_until if drain_until is not None else deadline) - time.monotonic()
        if left <= 0:
            stopped_by = "" if drain_until is not None else "wall"
            break
        for key, _ in selector.select(timeout=min(left, 0.5)):
            fd = key.fd
            chunk = os.read(fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buffer = buffers[key.data]
            buffer.extend(chunk)
            if key.data != "result" and len(buffer) > limits.output_bytes:
                stopped_by = f"output:{'stdout' if key.data == 'out' else 'stderr'}"
        if stopped_by:
            break
    if stopped_by:
        _kill_group(process)
    selector.close()
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()) + 5)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.wait()
        stopped_by = stopped_by or "wall"
    _kill_group(process)  # anything the cell left behind in its group
    outcome: dict = {}
    if buffers["result"]:
        try:
            outcome = json.loads(buffers["result"].decode("utf-8", "replace"))
        except json.JSONDecodeError:
            outcome = {}
    return outcome, bytes(buffers["out"]), bytes(buffers["err"]), stopped_by


def _classify(outcome: dict, returncode: int | None, stopped_by: str, limits: SandboxLimits) -> tuple[str, str]:
    if stopped_by == "wall":
        return "timeout", f"wall-clock limit {limits.wall_seconds:g} s exceeded"
    if stopped_by.startswith("output:"):
        return "output_limit", f"{stopped_by.split(':')[1]} exceeded {limits.output_bytes} bytes"
    if outcome.get("status") in STATUSES:
        return outcome["status"], str(outcome.get("detail", ""))
    if returncode is not None and returncode < 0:
        signum = -returncode
        if signum == signal.SIGXCPU:
            return "timeout", f"CPU time limit {limits.cpu_seconds:g} s exceeded"
        if signum == signal.SIGXFSZ:
            return "error", f"file size limit {limits.file_bytes} bytes exceeded"
        return "killed", f"ended by signal {signal.Signals(signum).name}"
    if returncode == _FORBIDDEN_EXIT:
        return "forbidden", "the audit hook refused an event"
    return ("ok", "") if returncode == 0 else ("error", f"interpreter exited with status {returncode}")


def run_python(
    code: str,
    limits: SandboxLimits = SandboxLimits(),
    files: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> SandboxResult:
    """Run ``code`` as one cell in the sandbox; ``files`` (relative name -> text) are copied into its work folder."""
    namespace = network_namespace_command()
    isolation = "namespace+audit-hook" if namespace else "audit-hook"
    read_roots, site_dirs = _read_roots(limits.site_packages)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf-llama3-sandbox-") as root:
        control = Path(root, "control")
        work = Path(root, "work")
        control.mkdir()
        work.mkdir()
        _copy_files(work, files or {})
        cell_path = control / "cell.py"
        cell_path.write_text(code, encoding="utf-8")
        stdin_path = None
        if stdin is not None:
            stdin_path = control / "stdin.txt"
            stdin_path.write_text(stdin, encoding="utf-8")
        result_read, result_write = os.pipe()
        config = {
            "result_fd": result_write,
            "cell_path": str(cell_path),
            "stdin_path": str(stdin_path) if stdin_path else None,
            "work_dir": str(work),
            "read_roots": read_roots,
            "extra_sys_path": site_dirs,
            "limits": {**dataclasses.asdict(limits), "nproc": limits.processes + 1},
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": str(work),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        command = [*namespace, sys.executable, "-I", "-S", "-B", str(_CHILD), json.dumps(config)]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=env,
                pass_fds=(result_write,),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            os.close(result_read)
            os.close(result_write)
            return SandboxResult("killed", "", "", None, None, f"could not start the sandbox: {error}", isolation)
        os.close(result_write)
        try:
            outcome, out, err, stopped_by = _collect(process, result_read, limits)
        finally:
            os.close(result_read)
            _kill_group(process)
            if process.poll() is None:
                process.wait()
    status, detail = _classify(outcome, process.returncode, stopped_by, limits)
    return SandboxResult(
        status=status,
        stdout=out[: limits.output_bytes].decode("utf-8", "replace"),
        stderr=err[: limits.output_bytes].decode("utf-8", "replace"),
        value=outcome.get("value"),
        returncode=process.returncode,
        detail=detail,
        isolation=isolation,
        seconds=round(time.monotonic() - started, 3),
    )
