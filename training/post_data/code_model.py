"""The model side of code execution feedback [4.3.1]: problems, attempts, and the model that writes them.

The loop (:mod:`training.post_data.code_feedback`) talks to the model only through :class:`CodeModel`: write a
solution, write unit tests for it, revise both with the checker's feedback in context. :class:`EngineCodeModel`
is that interface on a causal LM through the project's generation engines (:mod:`training.generation`, the same
ones rejection sampling uses); tests use a scripted stand-in with known-correct and known-wrong code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
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
    """What the execution-feedback loop asks of the model [4.3.1]; each call takes a batch of problems (one entry
    per problem, answers in the same order), so an engine generates them together."""

    name: str

    def solve(self, problems: Sequence[CodeProblem]) -> list[str]:
        """A solution (Python source) for each problem."""
        ...

    def write_tests(self, problems: Sequence[CodeProblem], solutions: Sequence[str]) -> list[str]:
        """Unit tests (Python source) for each solution; the solution's names are in scope."""
        ...

    def revise(
        self, problems: Sequence[CodeProblem], attempts: Sequence[Attempt], feedback: Sequence[str]
    ) -> list[Attempt]:
        """A revised attempt for each failed one given the checker's feedback (solution, tests or both changed)."""
        ...


def first_block(text: str) -> str:
    """The first code block of a reply ('' when it has none)."""
    blocks = code_blocks(text)
    return blocks[0] if blocks else ""


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

    def reply(self, requests: Sequence[str]) -> list[str]:
        """The model's replies to user messages, generated together by the engine."""
        from hf_llama3 import encode_dialog

        if not requests:
            return []
        prompts = [
            encode_dialog(self.tokenizer, [{"role": "user", "content": r}], add_generation_prompt=True).input_ids
            for r in requests
        ]
        indices = list(range(self.requests, self.requests + len(prompts)))
        self.requests += len(prompts)
        samples = self.engine.generate(prompts, indices, self.settings)
        return [self.tokenizer.decode(sample, skip_special_tokens=True).strip() for [sample] in samples]

    def solve(self, problems: Sequence[CodeProblem]) -> list[str]:
        replies = self.reply([SOLVE_PROMPT.format(prompt=p.prompt) for p in problems])
        return [first_block(reply) for reply in replies]

    def write_tests(self, problems: Sequence[CodeProblem], solutions: Sequence[str]) -> list[str]:
        requests = [TESTS_PROMPT.format(prompt=p.prompt, solution=s) for p, s in zip(problems, solutions)]
        return [first_block(reply) for reply in self.reply(requests)]

    def revise(
        self, problems: Sequence[CodeProblem], attempts: Sequence[Attempt], feedback: Sequence[str]
    ) -> list[Attempt]:
        requests = [
            REVISE_PROMPT.format(prompt=p.prompt, solution=a.solution, tests=a.tests, feedback=f)
            for p, a, f in zip(problems, attempts, feedback)
        ]
        revised = []
        for attempt, reply in zip(attempts, self.reply(requests)):
            blocks = code_blocks(reply)
            revised.append(Attempt(blocks[0], blocks[1] if len(blocks) > 1 else attempt.tests) if blocks else attempt)
        return revised
