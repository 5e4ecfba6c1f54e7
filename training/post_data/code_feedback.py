"""``hf-llama3 post-data code``: code SFT rows checked by execution feedback [4.3.1].

From the paper: "Synthetic data generation: execution feedback. ... Problem description generation ... Solution
generation: we prompt Llama 3 to solve each problem in a given programming language. ... Correctness analysis:
After generating a solution, it is crucial to recognize that its correctness is not guaranteed ... Static
analysis ... Unit test generation and execution ... Error feedback and iterative self-correction: When a solution
fails at any step, we prompt the model to revise it. The prompt included the original problem description, the
faulty solution, and feedback from the parser/linter/tester (stdout, stderr/ and return code). After a unit test
execution failure, the model could either fix the code to pass the existing tests or modify its unit tests to
accommodate the generated code. Only dialogs that pass all these checks are included in the final dataset, used
for supervised finetuning (SFT). Notably, we observed that about 20% of solutions were initially incorrect but
self-corrected."

Problems come from a file (the paper's problem-description generation is upstream of this step; its rows are
``prompt`` (or ``problem``), optional ``id``, reference ``tests`` and ``language``). For each problem the model
(:class:`~training.post_data.code_model.CodeModel`) writes a solution and unit tests; the parser, the linter and
the tests (:mod:`training.post_data.code_checks`, run in :mod:`training.post_data.sandbox`) check them; a failure
goes back to the model with the feedback, up to ``max_revisions`` times. Reference tests, when a problem has
them, must pass as well (the model may rewrite its own tests, not these). Passing solutions become SFT rows (a
user turn with the problem, the assistant turn with the solution, and a ``code_feedback`` column saying how many
revisions it took); the report lists every dropped problem with the reason and the failing check.

    hf-llama3 post-data code --config recipes/tiny/code.yaml
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from hf_llama3.recipe_loader import bounds
from training.post_data.code_checks import DEFAULT_LINT_SELECT, CheckFailure, linter_name, run_tests, static_failure
from training.post_data.code_model import Attempt, CodeModel, CodeProblem
from training.post_data.sandbox import SandboxLimits

LANGUAGES = ("python",)


@dataclasses.dataclass
class CodeFeedbackConfig:
    """Args:
    problems_path: the problems (``.jsonl``/``.json``/``.parquet``): ``prompt`` (or ``problem``) and optionally
        ``id``, reference ``tests`` (Python asserts or ``test*`` functions) and ``language`` (``python``).
    output_path: the kept SFT rows (``.jsonl``); the report goes beside it as ``<name>.report.json``.
    model_path: the causal LM that writes solutions, tests and revisions.
    tokenizer_path: tokenizer folder; None: the model's folder, else the real Llama 3 tokenizer.
    max_revisions: how many times a failing solution goes back to the model with the feedback.
    lint_select: ruff rule codes a solution must be clean of (the tests with the solution's names in scope).
    sandbox: limits of each test run (CPU and wall seconds, memory, output, file size, processes).
    check_workers: how many attempts are checked at once (each check runs its own sandbox processes).
    generation_backend: ``auto`` (``prefix_sharing`` on CPU, ``continuous_batching`` on CUDA) or a named engine.
    max_new_tokens: longest solution, test file or revision.
    temperature: sampling temperature (0: greedy).
    top_p: nucleus sampling share.
    max_batch_tokens: the prefix-sharing engine's token budget per forward.
    seed: sampling seed.
    device: where the model generates: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    problems_path: str = ""
    output_path: str = ""
    model_path: str = ""
    tokenizer_path: str | None = None
    # [4.3.1] "When a solution fails at any step, we prompt the model to revise it"; the paper gives no bound.
    max_revisions: int = dataclasses.field(default=2, metadata=bounds("", min=0))
    # [4.3.1] "syntax errors, use of uninitialized variables or non-imported functions" (flake8's error set).
    lint_select: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_LINT_SELECT))
    # [4.3.1] "executed in a containerized environment": see training.post_data.sandbox for what is contained.
    sandbox: SandboxLimits = dataclasses.field(default_factory=SandboxLimits)
    check_workers: int = dataclasses.field(default=2, metadata=bounds("", min=1))
    generation_backend: Literal["auto", "prefix_sharing", "continuous_batching", "vllm"] = "auto"
    max_new_tokens: int = dataclasses.field(default=1024, metadata=bounds("", min=1))
    temperature: float = dataclasses.field(default=0.6, metadata=bounds("", min=0))
    top_p: float = dataclasses.field(default=0.9, metadata=bounds("", gt=0, max=1))
    max_batch_tokens: int = dataclasses.field(default=65536, metadata=bounds("", min=1))
    seed: int = dataclasses.field(default=0, metadata=bounds("", min=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("problems_path", "output_path", "model_path"):
            if not getattr(self, key):
                raise ValueError(f"code: {key} is not set; give it in the recipe or with --set {key}=...")


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def read_problems(path: str) -> list[CodeProblem]:
    """The problems of a file; a row without a prompt, or with tests that are not text, is refused with file, row
    and field."""
    from training.post_rows import load_rows

    problems = []
    seen: dict[str, int] = {}
    for number, row in enumerate(load_rows(path).to_list()):
        prompt = row.get("prompt") or row.get("problem")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: row {number}: field 'prompt' (or 'problem') must be the problem's text.")
        tests = row.get("tests")
        if tests is not None and not isinstance(tests, str):
            raise ValueError(f"{path}: row {number}: field 'tests' must be Python source (a string) or absent.")
        language = str(row.get("language") or "python").lower()
        problem_id = str(number if row.get("id") is None else row["id"])
        if problem_id in seen:
            raise ValueError(f"{path}: row {number}: field 'id' {problem_id!r} repeats row {seen[problem_id]}.")
        seen[problem_id] = number
        problems.append(CodeProblem(problem_id, prompt, tests, language))
    if not problems:
        raise ValueError(f"{path}: no problems; give one JSON row with 'prompt' per line.")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# The loop


def check(attempt: Attempt, problem: CodeProblem, config: CodeFeedbackConfig) -> CheckFailure | None:
    """Every check in order [4.3.1]: parse and lint, the model's tests, the problem's reference tests."""
    if not attempt.solution.strip():
        return CheckFailure("no_code", "the model wrote no code", "The answer contained no Python code.")
    failure = static_failure(attempt.solution, attempt.tests, config.lint_select)
    if failure is None:
        failure = run_tests(attempt.solution, attempt.tests, config.sandbox)
    if failure is None and problem.tests:
        failure = run_tests(attempt.solution, problem.tests, config.sandbox, reference=True)
    return failure


def sft_row(problem: CodeProblem, attempt: Attempt, revisions: int, model_name: str) -> dict[str, Any]:
    """An SFT row: the problem as the user turn, the passing solution as the assistant turn, and how it was made."""
    answer = f"```python\n{attempt.solution.strip()}\n```"
    meta = {"problem": problem.id, "revisions": revisions, "tests": attempt.tests, "model": model_name}
    return {
        "messages": [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": answer}],
        "code_feedback": meta,
    }


def check_all(
    attempts: Sequence[Attempt], problems: Sequence[CodeProblem], config: CodeFeedbackConfig
) -> list[CheckFailure | None]:
    """:func:`check` of each attempt, ``config.check_workers`` sandboxes at a time."""
    if config.check_workers == 1 or len(attempts) < 2:
        return [check(a, p, config) for a, p in zip(attempts, problems)]
    with concurrent.futures.ThreadPoolExecutor(config.check_workers) as pool:
        return list(pool.map(lambda pair: check(pair[0], pair[1], config), zip(attempts, problems)))


def solve_with_feedback(
    problems: Sequence[CodeProblem], model: CodeModel, config: CodeFeedbackConfig
) -> list[tuple[Attempt | None, list[dict[str, Any]]]]:
    """For each problem, the passing attempt (None when the revisions ran out) and every failed check on the way.

    Rounds over the whole batch: the model writes every solution, then every test file; all are checked; the
    failing ones go back to the model together with their feedback [4.3.1], up to ``max_revisions`` rounds.
    """
    solutions = model.solve(problems)
    attempts = [Attempt(s, t) for s, t in zip(solutions, model.write_tests(problems, solutions))]
    passed: list[Attempt | None] = [None] * len(problems)
    histories: list[list[dict[str, Any]]] = [[] for _ in problems]
    pending = list(range(len(problems)))
    for revision in range(config.max_revisions + 1):
        failures = check_all([attempts[i] for i in pending], [problems[i] for i in pending], config)
        failed = []
        for i, failure in zip(pending, failures):
            if failure is None:
                passed[i] = attempts[i]
                continue
            histories[i].append({"revision": revision, "reason": failure.reason, "detail": failure.detail})
            failed.append((i, failure.feedback))
        pending = [i for i, _ in failed]
        if not pending or revision == config.max_revisions:
            break
        revised = model.revise([problems[i] for i in pending], [attempts[i] for i in pending], [f for _, f in failed])
        for i, attempt in zip(pending, revised):
            attempts[i] = attempt
    return list(zip(passed, histories))


def execution_feedback(
    problems: list[CodeProblem], model: CodeModel, config: CodeFeedbackConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The kept SFT rows (in problem order) and the report of what was kept, dropped and why [4.3.1]."""
    runnable = [p for p in problems if p.language in LANGUAGES]
    outcomes = dict(zip((p.id for p in runnable), solve_with_feedback(runnable, model, config)))
    rows: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for problem in problems:
        if problem.id not in outcomes:
            why = f"language {problem.language!r} does not run here ({', '.join(LANGUAGES)} only)"
            dropped.append({"problem": problem.id, "reason": "unsupported_language", "detail": why, "history": []})
            continue
        attempt, history = outcomes[problem.id]
        if attempt is None:
            last = history[-1]
            dropped.append(
                {"problem": problem.id, "reason": last["reason"], "detail": last["detail"], "history": history}
            )
            continue
        rows.append(sft_row(problem, attempt, len(history), model.name))
        kept.append({"problem": problem.id, "revisions": len(history), "history": history})
    self_corrected = sum(k["revisions"] > 0 for k in kept)
    report = {
        "problems": len(problems),
        "rows_kept": len(rows),
        # [4.3.1] "about 20% of solutions were initially incorrect but self-corrected".
        "self_corrected": self_corrected,
        "self_corrected_share": self_corrected / len(rows) if rows else 0.0,
        "model": model.name,
        "linter": linter_name(config.lint_select),
        "max_revisions": config.max_revisions,
        "sandbox": dataclasses.asdict(config.sandbox),
        "dropped_reasons": dict(collections.Counter(d["reason"] for d in dropped)),
        "kept": kept,
        "dropped": dropped,
    }
    return rows, report


# ----------------------------------------------------------------------------------------------------------------
# The step


def run(config: CodeFeedbackConfig) -> dict[str, Any]:
    """Run the step from its config: read the problems, load the model, run the loop, write rows and report."""
    from training.post_data.code_model import EngineCodeModel
    from training.post_data.curate import load_causal_lm, report_path, torch_device, write_jsonl, write_report

    problems = read_problems(config.problems_path)  # before the model loads
    model, tokenizer = load_causal_lm(config.model_path, config.tokenizer_path, torch_device(config.device))
    code_model = EngineCodeModel(
        model.eval(),
        tokenizer,
        config.model_path,
        backend=config.generation_backend,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        max_batch_tokens=config.max_batch_tokens,
    )
    rows, report = execution_feedback(problems, code_model, config)
    write_jsonl(config.output_path, rows)
    write_report(report_path(config.output_path), report)
    return report


def summary(report: dict[str, Any]) -> str:
    """The line ``hf-llama3 post-data code`` prints: the kept and dropped counts."""
    return (
        f"code: kept {report['rows_kept']} of {report['problems']} problems "
        f"({report['self_corrected']} self-corrected), dropped {report['dropped_reasons']}"
    )
