"""The model side of code execution feedback [4.3.1]: problems, attempts, and the model that writes them.

The loop (:mod:`training.post_data.code_feedback`) talks to the model only through :class:`CodeModel`: write a
solution, write unit tests for it, revise both with the checker's feedback in context. :class:`EngineCodeModel`
is that interface on a causal LM through the project's generation engines (:mod:`training.generation`, the same
ones rejection sampling uses); tests use a scripted stand-in with known-correct and known-wrong code.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Protocol

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)

SOLVE_PROMPT = (
    "Solve this programming problem in Python. Answer with the complete solution in one ```python code block.\n\n"
    "{prompt}"
)
TESTS_PROMPT = (
    "Write unit tests for this solution of the problem below: plain assert statements or test_* functions that "
    "call the solution's functions (they are already imported). Answer with one ```python code block.\n\n"
    "Problem:\n{prompt}\n\nSolution:\n```python\n{solution}\n```"
)
REVISE_PROMPT = (
    "Your solution to the problem below failed a check. Fix the solution so that it passes; if the unit tests are "
    "wrong, fix them instead. Answer with the corrected solution in a ```python code block and, only if you changed "
    "the tests, the corrected tests in a second ```python code block.\n\n"
    "Problem:\n{prompt}\n\nSolution:\n```python\n{solution}\n```\n\nUnit tests:\n```python\n{tests}\n```\n\n"
    "Feedback:\n{feedback}"
)


@dataclasses.dataclass(frozen=True)
class CodeProblem:
    """One problem: ``id``, the ``prompt`` (problem statement), optional reference ``tests`` (Python with asserts
    or ``test*`` functions, run beside the model's own) and the ``language`` (only ``python`` runs here)."""

    id: str
    prompt: str
    tests: str | None = None
    language: str = "python"


@dataclasses.dataclass(frozen=True)
class Attempt:
    """A solution and the unit tests it is checked with."""

    solution: str
    tests: str


class CodeModel(Protocol):
    """What the execution-feedback loop asks of the model [4.3.1]."""

    name: str

    def solve(self, problem: CodeProblem) -> str:
        """A solution (Python source) for ``problem``."""
        ...

    def write_tests(self, problem: CodeProblem, solution: str) -> str:
        """Unit tests (Python source) for ``solution``; the solution's names are in scope."""
        ...

    def revise(self, problem: CodeProblem, attempt: Attempt, feedback: str) -> Attempt:
        """A revised attempt given the checker's ``feedback`` (the solution, the tests, or both changed)."""
        ...


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a reply; the whole reply when it has no fence (a bare code answer)."""
    blocks = [block.strip("\n") for block in _FENCE.findall(text)]
    return [block for block in blocks if block.strip()] or ([text.strip()] if text.strip() else [])


class EngineCodeModel:
    """:class:`CodeModel` on a causal LM: each request is one user turn in the Llama 3 chat format, answered by a
    :mod:`training.generation` engine (``prefix_sharing`` on CPU, ``continuous_batching`` on CUDA, vLLM)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        *,
        backend: str = "auto",
        max_new_tokens: int = 512,
        temperature: float = 0.6,
        top_p: float = 0.9,
        seed: int = 0,
        max_batch_tokens: int = 65536,
    ) -> None:
        from hf_llama3.chat_format import stop_token_ids
        from training.generation.engine import SamplingSettings, make_engine

        self.name = name
        self.tokenizer = tokenizer
        self.engine = make_engine(backend, model, max_batch_tokens=max_batch_tokens, model_path=name)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.settings = SamplingSettings(
            1, max_new_tokens, temperature, top_p, seed, tuple(stop_token_ids(tokenizer)), pad_id
        )
        self.requests = 0  # each request gets its own seed (the engines seed by prompt index)

    def reply(self, request: str) -> str:
        """The model's reply to one user message."""
        from hf_llama3 import encode_dialog

        ids = encode_dialog(self.tokenizer, [{"role": "user", "content": request}], add_generation_prompt=True)
        [[sample]] = self.engine.generate([ids.input_ids], [self.requests], self.settings)
        self.requests += 1
        return self.tokenizer.decode(sample, skip_special_tokens=True).strip()

    def solve(self, problem: CodeProblem) -> str:
        blocks = code_blocks(self.reply(SOLVE_PROMPT.format(prompt=problem.prompt)))
        return blocks[0] if blocks else ""

    def write_tests(self, problem: CodeProblem, solution: str) -> str:
        blocks = code_blocks(self.reply(TESTS_PROMPT.format(prompt=problem.prompt, solution=solution)))
        return blocks[0] if blocks else ""

    def revise(self, problem: CodeProblem, attempt: Attempt, feedback: str) -> Attempt:
        request = REVISE_PROMPT.format(
            prompt=problem.prompt, solution=attempt.solution, tests=attempt.tests, feedback=feedback
        )
        blocks = code_blocks(self.reply(request))
        if not blocks:
            return attempt
        return Attempt(blocks[0], blocks[1] if len(blocks) > 1 else attempt.tests)
