"""Opt-in run of transformers' own test mixins (see test_transformers_common.py).

The repository runs pytest with ``--strict-markers``; transformers' test files use their own markers
(``generate``, ``torch_compile_test``, ``is_fsdp_test``, ...), registered by transformers' root conftest, which is not
loaded here.
When ``TRANSFORMERS_TESTS_DIR`` is set, register every marker those files use so that they import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_BUILTIN_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings", "timeout"}
_MARK_RE = re.compile(r"\bmark\.([A-Za-z_]\w*)")


def _upstream_marker_names(tests_dir: Path) -> set[str]:
    files = [*tests_dir.glob("*.py"), *tests_dir.glob("generation/*.py"), *tests_dir.glob("exporters/*.py")]
    try:  # the `is_*_test` decorators of transformers.testing_utils add markers too
        import importlib.util

        spec = importlib.util.find_spec("transformers.testing_utils")
        if spec is not None and spec.origin:
            files.append(Path(spec.origin))
    except ImportError:
        pass
    names: set[str] = set()
    for path in files:
        try:
            names.update(_MARK_RE.findall(path.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return names - _BUILTIN_MARKS


def pytest_configure(config):
    tests_dir = os.environ.get("TRANSFORMERS_TESTS_DIR")
    if not tests_dir or not Path(tests_dir).is_dir():
        return
    for name in sorted(_upstream_marker_names(Path(tests_dir))):
        config.addinivalue_line("markers", f"{name}: transformers test marker (tests/upstream opt-in run)")
