"""The sandbox stops what model-written code must not do and returns what ordinary code produces [4.3.1, 4.3.5].

Every untrusted cell here runs through ``run_python``; short limits keep the file fast.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from training.post_data import sandbox
from training.post_data.sandbox import SandboxLimits, run_python

SHORT = SandboxLimits(cpu_seconds=1, wall_seconds=4, memory_bytes=256 * 2**20, output_bytes=4096)


def test_stdout_stderr_and_last_value_come_back():
    result = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\nx = 20\nx + 22", SHORT)
    assert (result.status, result.stdout, result.stderr, result.value, result.returncode) == (
        "ok",
        "out\n",
        "err\n",
        "42",
        0,
    )
    assert run_python("x = 1", SHORT).value is None


def test_files_are_copied_in_and_written_files_are_readable(tmp_path):
    code = "open('out.txt', 'w').write(open('data/in.txt').read().upper())\nopen('out.txt').read()"
    result = run_python(code, SHORT, files={"data/in.txt": "given"})
    assert (result.status, result.value) == ("ok", "'GIVEN'")
    assert run_python("input() + input()", SHORT, stdin="a\nb\n").value == "'ab'"
    with pytest.raises(ValueError, match="relative path"):
        run_python("1", SHORT, files={"../escape.txt": "x"})


def test_the_work_folder_is_removed_after():
    result = run_python("import os\nos.getcwd()", SHORT)
    work = ast.literal_eval(result.value)
    assert result.ok and not os.path.exists(work)


def test_errors_come_back_with_the_failing_line():
    result = run_python("def check():\n    assert 1 + 1 == 3, 'arithmetic'\ncheck()", SHORT)
    assert result.status == "error" and result.detail == "AssertionError: arithmetic"
    assert "line 2, in check" in result.stderr and "sandbox_child" not in result.stderr
    assert run_python("import sys\nsys.exit(3)", SHORT).status == "error"
    assert run_python("import sys\nsys.exit(0)", SHORT).status == "ok"


@pytest.mark.parametrize("target", ["/etc/passwd", "outside"])
def test_reading_outside_the_work_folder_is_forbidden(tmp_path, target):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    path = "/etc/passwd" if target == "/etc/passwd" else str(secret)
    result = run_python(
        f"try:\n    print(open({path!r}).read())\nexcept BaseException:\n    print('swallowed')", SHORT
    )
    assert result.status == "forbidden" and path in result.detail and result.stdout == ""
    linked = run_python(f"import os\nos.symlink({path!r}, 'link')\nopen('link').read()", SHORT)
    assert linked.status == "forbidden" and path in linked.detail


def test_writing_outside_the_work_folder_is_forbidden(tmp_path):
    target = tmp_path / "written.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')", SHORT)
    assert result.status == "forbidden" and not target.exists()
    assert run_python(f"import os\nos.remove({str(tmp_path)!r})", SHORT).status == "forbidden"


@pytest.mark.parametrize("address", [("127.0.0.1", 80), ("8.8.8.8", 53)])
def test_sockets_are_forbidden(address):
    result = run_python(f"import socket\nsocket.create_connection({address!r}, timeout=1)", SHORT)
    assert result.status == "forbidden" and result.detail.startswith("socket.")


def test_sockets_are_forbidden_without_namespaces(monkeypatch):
    monkeypatch.setattr(sandbox, "network_namespace_command", lambda: ())
    result = run_python("import socket\nsocket.socket().connect(('127.0.0.1', 80))", SHORT)
    assert (result.status, result.isolation) == ("forbidden", "audit-hook")


def test_the_network_namespace_is_used_where_available():
    result = run_python("1", SHORT)
    expected = "namespace+audit-hook" if sandbox.network_namespace_command() else "audit-hook"
    assert result.isolation == expected


def test_fork_bomb_and_processes_are_stopped():
    bomb = run_python("import os\nwhile True:\n    os.fork()", SHORT)
    assert bomb.status == "forbidden" and "os.fork" in bomb.detail
    assert run_python("import subprocess\nsubprocess.run(['true'])", SHORT).status == "forbidden"
    assert run_python("import os\nos.system('true')", SHORT).status == "forbidden"
    allowed = run_python("import subprocess\nsubprocess.run(['true']).returncode", SandboxLimits(processes=1))
    assert (allowed.status, allowed.value) == ("ok", "0")


def test_processes_left_behind_are_killed_when_the_cell_ends(tmp_path):
    limits = SandboxLimits(processes=1, wall_seconds=20)
    result = run_python("import subprocess\nsubprocess.Popen(['sleep', '30']).pid", limits)
    assert result.status == "ok" and result.seconds < limits.wall_seconds
    cmdline = Path(f"/proc/{result.value}/cmdline")
    assert not cmdline.exists() or "sleep" not in cmdline.read_text()  # killed with the group (a zombie has none)


def test_endless_loop_hits_the_cpu_limit():
    result = run_python("while True:\n    pass", SHORT)
    assert result.status == "timeout" and "CPU time limit" in result.detail


def test_sleeping_hits_the_wall_clock_limit():
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=1.5)
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(60)", limits)
    assert result.status == "timeout" and "wall-clock" in result.detail and result.stdout == "started\n"


def test_unbounded_allocation_hits_the_memory_limit():
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", SHORT)
    assert result.status == "memory" and "MemoryError" in result.stderr


def test_output_is_capped():
    result = run_python("while True:\n    print('x' * 100)", SHORT)
    assert result.status == "output_limit" and len(result.stdout) <= SHORT.output_bytes


def test_file_size_is_capped():
    code = "f = open('big', 'wb')\nf.write(b'x' * 5000)\nf.close()"
    result = run_python(code, SandboxLimits(file_bytes=1000))
    assert result.status == "error" and "file size limit" in result.detail


def test_ctypes_loading_is_forbidden_but_numpy_imports():
    result = run_python("import ctypes\nctypes.CDLL('libc.so.6')", SHORT)
    assert result.status == "forbidden" and "ctypes" in result.detail
    numbers = run_python("import numpy as np\nint(np.arange(5).sum())", SHORT)
    assert (numbers.status, numbers.value) == ("ok", "10")


def test_limits_are_checked():
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)
