"""The checks a model-written solution must pass before it becomes an SFT row [4.3.1].

From the paper: "Static analysis: We run all generated code through a parser and a linter to ensure syntactic
correctness, catching errors such as syntax errors, use of uninitialized variables or non-imported functions, code
style issues, typing errors, and others. Unit test generation and execution: For each problem and solution, we
prompt the model to generate unit tests, executed in a containerized environment together with the solution,
catching run-time execution errors and some semantic errors."

Here the parser is :func:`ast.parse` and the linter is ruff (``ruff check`` on stdin, the rules in ``select``;
the default is flake8's "errors only" set: syntax errors, undefined names, misused ``is``/comparisons). The tests
run in :func:`training.post_data.sandbox.run_python` with the solution beside them as ``solution.py``; top-level
asserts run as the test file is executed and every ``test*`` function it defines is then called. Each failing
check returns a :class:`CheckFailure` whose ``reason`` names the kind (the report counts them) and whose
``feedback`` is what the model sees when it revises (the paper's "stdout, stderr and return code").
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Sequence

from training.post_data.sandbox import SandboxLimits, SandboxResult, run_python

# flake8's "errors only" selection: E9 syntax/IO errors, F63 invalid comparisons, F7 misplaced statements,
# F82 undefined names (the paper's "use of uninitialized variables or non-imported functions").
DEFAULT_LINT_SELECT = ("E9", "F63", "F7", "F82")
SOLUTION_FILE = "solution.py"
FEEDBACK_CHARS = 2000

_HARNESS = """\
import runpy
import solution
_given = {{k: v for k, v in vars(solution).items() if not k.startswith("__")}}
_namespace = runpy.run_path({tests!r}, init_globals=_given, run_name="__main__")
_tests = [f for k, f in _namespace.items() if k.startswith("test") and callable(f)
          and getattr(f, "__module__", None) == "__main__"]
for _test in _tests:
    _test()
f"{{len(_tests)}} test functions passed"
"""
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]+\n(?:    (\S[^\n]*)\n)?')
_WORK_FILES = ("solution.py", "test_solution.py", "test_reference.py")
_WORK_PATH = re.compile(r'"/[^"]*/work/([^"/]+\.py)"')


@dataclasses.dataclass
class CheckFailure:
    """A failed check: ``reason`` (parse_error, lint_error, no_tests, test_failure, runtime_error, timeout, memory,
    output_limit, forbidden, killed; ``reference_`` in front for the problem's own tests), ``detail`` (one line:
    the failing assertion and where), ``feedback`` (the text the model revises with)."""

    reason: str
    detail: str
    feedback: str


def ruff_command() -> list[str] | None:
    """The ruff executable of this environment (its scripts folder first), or None when none is installed."""
    candidate = os.path.join(sysconfig.get_path("scripts"), "ruff")
    if os.access(candidate, os.X_OK):
        return [candidate]
    found = shutil.which("ruff")
    return [found] if found else None


def linter_name(select: Sequence[str]) -> str:
    """What lints, for the report: ``ruff 0.x.y (E9,F63,...)``, or ``none`` when ruff is not installed."""
    command = ruff_command()
    if command is None:
        return "none (ruff not installed: only the parser checks statically)"
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return f"{version} ({','.join(select)})"


def parse_error(source: str, filename: str) -> str | None:
    """``file:line:col: SyntaxError: msg`` when ``source`` does not parse, else None."""
    try:
        ast.parse(source, filename)
    except SyntaxError as error:
        return f"{filename}:{error.lineno}:{error.offset}: SyntaxError: {error.msg}"
    return None


def lint_errors(source: str, filename: str, select: Sequence[str], prelude: str = "") -> list[str]:
    """ruff's findings on ``source`` as ``file:line:col: CODE message`` lines; ``prelude`` (one line, e.g. the
    tests' implicit import of the solution's names) is linted with it and not counted in line numbers."""
    command = ruff_command()
    if command is None or not select:
        return []
    shift = prelude.count("\n")
    options = ["--isolated", "--no-cache", "--output-format", "json", "--select", ",".join(select)]
    completed = subprocess.run(
        [*command, "check", *options, "--stdin-filename", filename, "-"],
        input=prelude + source,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode not in (0, 1):
        raise RuntimeError(f"ruff failed on {filename} (exit {completed.returncode}): {completed.stderr.strip()}")
    findings = json.loads(completed.stdout or "[]")
    return [
        f"{filename}:{f['location']['row'] - shift}:{f['location']['column']}: {f['code'] or 'E999'} {f['message']}"
        for f in findings
    ]


def has_test(source: str) -> bool:
    """Whether test code checks anything: an ``assert`` statement or an ``assert*``/``raises`` call."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name.startswith("assert") or name == "raises":
                return True
    return False


def defined_names(source: str) -> list[str]:
    """The names a module defines at its top level (what the tests get from the solution)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name != "*")
        else:
            for target in ast.walk(node):
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    names.add(target.id)
    return sorted(name for name in names if not name.startswith("__"))


def static_failure(solution: str, tests: str, select: Sequence[str]) -> CheckFailure | None:
    """Parse and lint the solution and its tests; the first failure, or None when both are clean."""
    for source, filename in ((solution, SOLUTION_FILE), (tests, "test_solution.py")):
        error = parse_error(source, filename)
        if error:
            return CheckFailure("parse_error", error, f"The parser rejected the code:\n{error}")
    findings = lint_errors(solution, SOLUTION_FILE, select)
    names = defined_names(solution)
    prelude = f"from solution import {', '.join(names)}  # noqa\n" if names else ""
    findings += lint_errors(tests, "test_solution.py", select, prelude=prelude)
    if findings:
        text = "\n".join(findings)
        return CheckFailure("lint_error", findings[0], f"The linter reported:\n{text}")
    if not has_test(tests):
        return CheckFailure("no_tests", "the tests assert nothing", "The unit tests contain no assertion.")
    return None


def failing_line(stderr: str) -> str:
    """``file:line: source`` of the innermost frame of the traceback in ``stderr`` ('' when there is none)."""
    frames = _FRAME.findall(stderr)
    own = [frame for frame in frames if frame[0].endswith(".py") and os.path.basename(frame[0]) in _WORK_FILES]
    if not (own or frames):
        return ""
    filename, line, source = (own or frames)[-1]
    return f"{os.path.basename(filename)}:{line}: {source.strip()}"


def _failure(result: SandboxResult, prefix: str) -> CheckFailure:
    stderr = _WORK_PATH.sub(r'"\1"', result.stderr)
    if result.status == "error":
        reason = "test_failure" if result.detail.startswith("AssertionError") else "runtime_error"
        where = failing_line(stderr)
        detail = f"{result.detail} at {where}" if where else result.detail
    else:
        reason, detail = result.status, result.detail
    feedback = (
        f"Running the {'reference ' if prefix else ''}unit tests failed ({reason}: {detail}).\n"
        f"return code: {result.returncode}\nstdout:\n{result.stdout[-FEEDBACK_CHARS:]}\n"
        f"stderr:\n{stderr[-FEEDBACK_CHARS:]}"
    )
    return CheckFailure(prefix + reason, detail, feedback)


def run_tests(solution: str, tests: str, limits: SandboxLimits, reference: bool = False) -> CheckFailure | None:
    """Run ``tests`` against ``solution`` in the sandbox; the failure, or None when every test passed."""
    test_file = "test_reference.py" if reference else "test_solution.py"
    result = run_python(_HARNESS.format(tests=test_file), limits, files={SOLUTION_FILE: solution, test_file: tests})
    if result.ok:
        return None
    return _failure(result, "reference_" if reference else "")
