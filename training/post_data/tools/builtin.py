"""The Llama 3.1 built-in tools with real implementations, and the registry the loop and ``chat`` build [4.3.5].

- ``code_interpreter``: the cell runs in :func:`training.post_data.sandbox.run_python` (separate interpreter, no
  network, CPU/memory/output/file limits); the ``ipython`` turn carries its stdout, stderr and the value of its last
  expression, or the sandbox's status and reason when it did not finish.
- ``brave_search``: :mod:`training.post_data.tools.search` (local BM25 index, or Brave's API with
  ``BRAVE_SEARCH_API_KEY``).
- ``wolfram_alpha``: :mod:`training.post_data.tools.math_engine` on SymPy, run inside the sandbox (SymPy's parser
  evaluates Python and a query can ask for a huge power), or :class:`WolframAlphaClient` with
  ``WOLFRAM_ALPHA_API_KEY``.

A failure the model should read (a bad query, code that raised, a timeout) is raised as
:class:`~training.post_data.tools.registry.ToolError` and becomes the text of the ``ipython`` turn; the loop records
it as a tool error.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.post_data.tools.registry import Tool, ToolError, ToolRegistry, builtin_tool, load_callable
from training.post_data.tools.search import BraveSearchClient, LocalSearchIndex, SearchBackend, search_answer

WOLFRAM_ENDPOINT = "https://api.wolframalpha.com/v2/query"
WOLFRAM_KEY_VARIABLE = "WOLFRAM_ALPHA_API_KEY"
_MATH_ENGINE = Path(__file__).with_name("math_engine.py")
_MATH_CELL = "import sys\nimport math_engine\nprint(math_engine.answer_json(sys.stdin.read()))\n"


def sandbox_limits(**overrides: Any):
    """The sandbox's default limits with ``overrides`` (``cpu_seconds``, ``wall_seconds``, ``memory_bytes`` ...)."""
    from training.post_data.sandbox import SandboxLimits

    return SandboxLimits(**overrides)


def format_sandbox_result(result: Any) -> str:
    """The ``ipython`` text of a finished cell: ``[stdout]``, ``[stderr]`` and ``[value]`` blocks, as llama-stack's
    code interpreter reports them; raises :class:`ToolError` with the status and reason when the cell failed."""
    blocks = []
    if result.stdout:
        blocks.append(f"[stdout]\n{result.stdout.rstrip()}\n[/stdout]")
    if result.stderr:
        blocks.append(f"[stderr]\n{result.stderr.rstrip()}\n[/stderr]")
    if result.status != "ok":
        raise ToolError("\n".join([f"[{result.status}] {result.detail}".rstrip(), *blocks]))
    if result.value is not None:
        blocks.append(f"[value]\n{result.value}\n[/value]")
    return "\n".join(blocks) or "[no output]"


class CodeInterpreter:
    """``code_interpreter``: one cell per call in a fresh sandboxed interpreter (no state between calls)."""

    def __init__(self, limits: Any = None) -> None:
        self.limits = limits

    def __call__(self, code: str) -> str:
        from training.post_data.sandbox import SandboxLimits, run_python

        return format_sandbox_result(run_python(code, self.limits or SandboxLimits()))


class SympyMath:
    """``wolfram_alpha`` on SymPy: :func:`math_engine.answer_json` in the sandbox, the query on its stdin."""

    def __init__(self, limits: Any = None) -> None:
        self.limits = limits
        self.source = _MATH_ENGINE.read_text(encoding="utf-8")

    def __call__(self, query: str) -> str:
        from training.post_data.sandbox import SandboxLimits, run_python

        result = run_python(
            _MATH_CELL, self.limits or SandboxLimits(), files={"math_engine.py": self.source}, stdin=query
        )
        if result.status != "ok":
            raise ToolError(f"wolfram_alpha: the query did not finish ({result.status}: {result.detail}).")
        text = result.stdout.strip()
        if '"error"' in text and json.loads(text).get("error"):
            raise ToolError(text)
        return text


class WolframAlphaClient:
    """Wolfram Alpha's full-results API (``/v2/query``, ``output=json``); the key from ``WOLFRAM_ALPHA_API_KEY``."""

    def __init__(self, api_key: str | None = None, endpoint: str = WOLFRAM_ENDPOINT, timeout: float = 20.0) -> None:
        self.api_key = api_key or os.environ.get(WOLFRAM_KEY_VARIABLE)
        if not self.api_key:
            raise ValueError(f"wolfram_alpha: no API key; set {WOLFRAM_KEY_VARIABLE} or use math_backend: sympy.")
        self.endpoint, self.timeout = endpoint, timeout

    def __call__(self, query: str) -> str:
        url = f"{self.endpoint}?{urllib.parse.urlencode({'input': query, 'appid': self.api_key, 'output': 'json'})}"
        with urllib.request.urlopen(url, timeout=self.timeout) as response:
            payload = json.loads(response.read().decode("utf-8")).get("queryresult", {})
        if not payload.get("success"):
            raise ToolError(f"wolfram_alpha: no result for {query!r}.")
        pods = [
            {"title": pod.get("title", ""), "text": "\n".join(s.get("plaintext", "") for s in pod.get("subpods", []))}
            for pod in payload.get("pods", [])
        ]
        return json.dumps({"query": query, "pods": pods}, ensure_ascii=False)


def search_tool(backend: SearchBackend, count: int = 3) -> Tool:
    """``brave_search`` over ``backend``."""

    def brave_search(query: str) -> str:
        return search_answer(backend, query, count)

    return builtin_tool("brave_search", brave_search, "Search the web (or the local index) for a query.")


def build_registry(
    names: Sequence[str],
    *,
    search_index: str | None = None,
    search_backend: str = "local",
    math_backend: str = "sympy",
    limits: Any = None,
    tool_prompt_format: str = "json",
    search_results: int = 3,
) -> ToolRegistry:
    """A registry with the named tools: built-in names and ``module:function`` custom tools (schema from the
    function's type hints and docstring). ``search_backend`` is ``local`` (BM25 over ``search_index``) or
    ``brave``; ``math_backend`` is ``sympy`` or ``wolfram``."""
    registry = ToolRegistry(tool_prompt_format=tool_prompt_format)
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name == "code_interpreter":
            interpreter = CodeInterpreter(limits)
            registry.add(builtin_tool(name, interpreter, "Run Python code in a sandbox."))
        elif name == "brave_search":
            if search_backend == "brave":
                backend: SearchBackend = BraveSearchClient()
            elif search_backend == "local":
                if not search_index:
                    raise ValueError(
                        "brave_search: no search index; give search_index (a JSON-lines file of {title, url, text}) "
                        f"or search_backend: brave with {BraveSearchClient.__module__} and BRAVE_SEARCH_API_KEY."
                    )
                backend = LocalSearchIndex.from_jsonl(search_index)
            else:
                raise ValueError(f"search_backend: unknown {search_backend!r}; use local or brave.")
            registry.add(search_tool(backend, search_results))
        elif name == "wolfram_alpha":
            if math_backend == "sympy":
                engine: Any = SympyMath(limits)
            elif math_backend == "wolfram":
                engine = WolframAlphaClient()
            else:
                raise ValueError(f"math_backend: unknown {math_backend!r}; use sympy or wolfram.")
            registry.add(builtin_tool(name, engine, "Answer a math query (solve, integrate, simplify, evaluate)."))
        elif ":" in name:
            registry.add_callable(load_callable(name))
        else:
            raise ValueError(
                f"tool {name!r}: not a built-in tool (code_interpreter, brave_search, wolfram_alpha) nor module:function."
            )
    return registry
